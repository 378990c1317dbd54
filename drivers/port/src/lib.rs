//! Serial port settings as the config and the CLI name them (baud, parity, data and stop
//! bits), the line timing Modbus RTU derives from them, and opening a port with tokio-serial.
//! A room of its own so the Modbus driver shares it with the serial-instrument driver without
//! depending on that driver's regex and checksum code.

use std::time::Duration;

use tokio_serial::{DataBits, FlowControl, SerialPortBuilderExt, SerialStream, StopBits};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parity {
    None,
    Even,
    Odd,
}

/// Settings that cannot describe a serial line; one variant per rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    #[error("unknown parity `{0}` (none, even, odd)")]
    Parity(String),
    #[error("baud {0} is out of range (50..=4000000)")]
    Baud(u32),
    #[error("data bits {0} must be 5..=8")]
    DataBits(u8),
    #[error("stop bits {0} must be 1 or 2")]
    StopBits(u8),
}

impl Parity {
    pub fn parse(s: &str) -> Result<Self, SettingsError> {
        match s {
            "none" | "N" | "n" => Ok(Parity::None),
            "even" | "E" | "e" => Ok(Parity::Even),
            "odd" | "O" | "o" => Ok(Parity::Odd),
            other => Err(SettingsError::Parity(other.to_string())),
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
    pub fn validate(&self) -> Result<(), SettingsError> {
        if !(50..=4_000_000).contains(&self.baud) {
            return Err(SettingsError::Baud(self.baud));
        }
        if !(5..=8).contains(&self.data_bits) {
            return Err(SettingsError::DataBits(self.data_bits));
        }
        if !(1..=2).contains(&self.stop_bits) {
            return Err(SettingsError::StopBits(self.stop_bits));
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
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error("cannot open {path}: {source}")]
    Open {
        path: String,
        source: tokio_serial::Error,
    },
}

pub fn open(s: &PortSettings) -> Result<SerialStream, PortError> {
    s.validate()?;
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
        assert_eq!(bad.validate(), Err(SettingsError::DataBits(9)));
        assert!(bad
            .validate()
            .is_err_and(|e| e.to_string().contains("data bits")));
        assert_eq!(
            Parity::parse("mark"),
            Err(SettingsError::Parity("mark".into()))
        );
    }
}
