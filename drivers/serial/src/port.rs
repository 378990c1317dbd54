//! Port settings (baud, parity, data and stop bits) and opening a port.

use std::time::Duration;

use tokio_serial::{DataBits, FlowControl, SerialPortBuilderExt, SerialStream, StopBits};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parity {
    None,
    Even,
    Odd,
}

impl Parity {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "none" | "N" | "n" => Ok(Parity::None),
            "even" | "E" | "e" => Ok(Parity::Even),
            "odd" | "O" | "o" => Ok(Parity::Odd),
            other => Err(format!("unknown parity `{other}` (none, even, odd)")),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSettings {
    pub path: String,
    pub baud: u32,
    pub parity: Parity,
    pub data_bits: u8,
    pub stop_bits: u8,
}

impl PortSettings {
    /// Check the numbers before touching the device.
    pub fn validate(&self) -> Result<(), String> {
        if !(50..=4_000_000).contains(&self.baud) {
            return Err(format!("baud {} is out of range (50..=4000000)", self.baud));
        }
        if !(5..=8).contains(&self.data_bits) {
            return Err(format!("data bits {} must be 5..=8", self.data_bits));
        }
        if !(1..=2).contains(&self.stop_bits) {
            return Err(format!("stop bits {} must be 1 or 2", self.stop_bits));
        }
        Ok(())
    }

    /// Bits on the wire per character: start + data + parity + stop.
    pub fn bits_per_char(&self) -> u32 {
        1 + u32::from(self.data_bits)
            + u32::from(self.parity != Parity::None)
            + u32::from(self.stop_bits)
    }

    /// The time of `chars` characters on the line.
    pub fn char_time(&self, chars: f64) -> Duration {
        Duration::from_secs_f64(chars * f64::from(self.bits_per_char()) / f64::from(self.baud))
    }

    /// The Modbus RTU inter-frame silence: 3.5 character times, fixed at 1.75 ms above 19200 baud.
    pub fn frame_gap(&self) -> Duration {
        if self.baud > 19_200 {
            Duration::from_micros(1750)
        } else {
            self.char_time(3.5)
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PortError {
    #[error("{0}")]
    Settings(String),
    #[error("cannot open {path}: {source}")]
    Open {
        path: String,
        source: tokio_serial::Error,
    },
}

pub fn open(s: &PortSettings) -> Result<SerialStream, PortError> {
    s.validate().map_err(PortError::Settings)?;
    let data_bits = match s.data_bits {
        5 => DataBits::Five,
        6 => DataBits::Six,
        7 => DataBits::Seven,
        _ => DataBits::Eight,
    };
    let parity = match s.parity {
        Parity::None => tokio_serial::Parity::None,
        Parity::Even => tokio_serial::Parity::Even,
        Parity::Odd => tokio_serial::Parity::Odd,
    };
    let stop_bits = if s.stop_bits == 2 {
        StopBits::Two
    } else {
        StopBits::One
    };
    tokio_serial::new(&s.path, s.baud)
        .data_bits(data_bits)
        .parity(parity)
        .stop_bits(stop_bits)
        .flow_control(FlowControl::None)
        .open_native_async()
        .map_err(|source| PortError::Open {
            path: s.path.clone(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(baud: u32, parity: Parity) -> PortSettings {
        PortSettings {
            path: "/dev/null".into(),
            baud,
            parity,
            data_bits: 8,
            stop_bits: 1,
        }
    }

    #[test]
    fn timing() {
        // 9600 8N1: 10 bits per char, 3.5 chars = 3.646 ms
        assert_eq!(s(9600, Parity::None).frame_gap().as_micros(), 3645);
        // 8E1: 11 bits
        assert_eq!(s(9600, Parity::Even).bits_per_char(), 11);
        assert_eq!(
            s(115_200, Parity::None).frame_gap(),
            Duration::from_micros(1750)
        );
    }

    #[test]
    fn validation() {
        assert!(s(9600, Parity::None).validate().is_ok());
        assert!(s(10, Parity::None).validate().is_err());
        let mut bad = s(9600, Parity::None);
        bad.data_bits = 9;
        assert!(bad.validate().unwrap_err().contains("data bits"));
        assert!(Parity::parse("mark").is_err());
    }
}
