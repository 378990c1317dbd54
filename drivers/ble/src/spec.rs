//! What the config tells the BLE bus task: the adapter, and each device by address — either an
//! advertisement sensor (a decoder format) or a GATT device (characteristics to read or
//! subscribe to, and characteristics the platform may write through declared commands).
//! Plain data, built without BlueZ, so the config checker needs no D-Bus.

use std::time::Duration;

use fieldgate_driver::{DeclaredCommand, Value};

use crate::decode::Format;

#[derive(Debug, Clone, PartialEq)]
pub struct BleBus {
    pub name: String,
    /// `hci0`…; default: BlueZ's default adapter.
    pub adapter: Option<String>,
    /// GATT exchanges (connect, read, write) are abandoned after this long.
    pub timeout: Duration,
    pub offline_after: u32,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CharType {
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    F32,
    Bool,
    Text,
}

impl CharType {
    pub fn parse(s: &str) -> Result<Self, String> {
        Ok(match s {
            "u8" => CharType::U8,
            "i8" => CharType::I8,
            "u16" => CharType::U16,
            "i16" => CharType::I16,
            "u32" => CharType::U32,
            "i32" => CharType::I32,
            "f32" => CharType::F32,
            "bool" => CharType::Bool,
            "string" => CharType::Text,
            other => {
                return Err(format!(
                    "unknown characteristic type `{other}` (u8, i8, u16, i16, u32, i32, f32, bool, string)"
                ))
            }
        })
    }

    fn width(self) -> Option<usize> {
        match self {
            CharType::U8 | CharType::I8 | CharType::Bool => Some(1),
            CharType::U16 | CharType::I16 => Some(2),
            CharType::U32 | CharType::I32 | CharType::F32 => Some(4),
            CharType::Text => None,
        }
    }
}

/// A characteristic read on the poll period, or subscribed to (`notify`).
#[derive(Debug, Clone, PartialEq)]
pub struct GattChar {
    pub service: String,
    pub property: String,
    /// Characteristic UUID, lower-case 128-bit form.
    pub uuid: String,
    pub kind: CharType,
    pub scale: Option<f64>,
    pub offset: Option<f64>,
    pub notify: bool,
}

/// A declared command that writes its `value` parameter to a characteristic.
#[derive(Debug, Clone, PartialEq)]
pub struct GattCommand {
    pub decl: DeclaredCommand,
    pub uuid: String,
    pub kind: CharType,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    Advert {
        format: Format,
    },
    Gatt {
        chars: Vec<GattChar>,
        commands: Vec<GattCommand>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct BleDevice {
    pub node_id: String,
    /// `AA:BB:CC:DD:EE:FF`, upper case.
    pub address: String,
    /// Platform service the advertisement values are reported under.
    pub service: String,
    pub kind: Kind,
    /// Adverts: at most one report per period (only when values changed). GATT: read period.
    pub poll: Duration,
    /// Adverts: OFFLINE after this long without one.
    pub stale_after: Duration,
}

/// Expand a 16-bit UUID (`"2a6e"`, `"0x2A6E"`) or check a 128-bit one; lower-case result.
pub fn uuid(s: &str) -> Result<String, String> {
    let t = s.trim().trim_start_matches("0x").to_ascii_lowercase();
    if t.len() == 4 && t.chars().all(|c| c.is_ascii_hexdigit()) {
        return Ok(format!("0000{t}-0000-1000-8000-00805f9b34fb"));
    }
    let parts: Vec<&str> = t.split('-').collect();
    let ok = parts.iter().map(|p| p.len()).collect::<Vec<_>>() == [8, 4, 4, 4, 12]
        && t.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
    if ok {
        Ok(t)
    } else {
        Err(format!(
            "`{s}` is not a UUID (16-bit `2a6e` or 128-bit `0000….-…`)"
        ))
    }
}

/// Check and normalise a device address.
pub fn address(s: &str) -> Result<String, String> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
    {
        Ok(s.to_ascii_uppercase())
    } else {
        Err(format!(
            "`{s}` is not a Bluetooth address (AA:BB:CC:DD:EE:FF)"
        ))
    }
}

/// Decode a characteristic value (little-endian, as GATT numbers are).
pub fn decode_char(c: &GattChar, raw: &[u8]) -> Result<Value, String> {
    if let Some(w) = c.kind.width() {
        if raw.len() < w {
            return Err(format!(
                "`{}`: {} bytes, {:?} needs {w}",
                c.property,
                raw.len(),
                c.kind
            ));
        }
    }
    let le = |n: usize| {
        let mut b = [0u8; 4];
        b[..n].copy_from_slice(&raw[..n]);
        u32::from_le_bytes(b)
    };
    let x: f64 = match c.kind {
        CharType::Bool => return Ok(Value::Bool(raw[0] != 0)),
        CharType::Text => {
            return String::from_utf8(raw.to_vec())
                .map(|s| Value::Text(s.trim_end_matches('\0').to_string()))
                .map_err(|_| format!("`{}`: not UTF-8", c.property))
        }
        CharType::U8 => f64::from(raw[0]),
        CharType::I8 => f64::from(raw[0] as i8),
        CharType::U16 => f64::from(le(2)),
        CharType::I16 => f64::from(le(2) as u16 as i16),
        CharType::U32 => f64::from(le(4)),
        CharType::I32 => f64::from(le(4) as i32),
        CharType::F32 => f64::from(f32::from_bits(le(4))),
    };
    if !x.is_finite() {
        return Err(format!("`{}`: not a finite number", c.property));
    }
    Ok(match (c.scale, c.offset) {
        (None, None) if c.kind != CharType::F32 => {
            if x >= 0.0 {
                Value::UInt(x as u64)
            } else {
                Value::Int(x as i64)
            }
        }
        (s, o) => Value::Float(((x * s.unwrap_or(1.0) + o.unwrap_or(0.0)) * 1e9).round() / 1e9),
    })
}

/// Encode a (checked) command value for a characteristic.
pub fn encode_char(kind: CharType, v: &Value) -> Result<Vec<u8>, String> {
    let int = || -> Result<i64, String> {
        match v {
            Value::Int(i) => Ok(*i),
            Value::UInt(u) => i64::try_from(*u).map_err(|_| "too large".to_string()),
            Value::Bool(b) => Ok(i64::from(*b)),
            Value::Float(f) if f.fract() == 0.0 => Ok(*f as i64),
            other => Err(format!("{other:?} is not a whole number")),
        }
    };
    let fits = |i: i64, lo: i64, hi: i64| {
        if (lo..=hi).contains(&i) {
            Ok(i)
        } else {
            Err(format!("{i} does not fit {kind:?}"))
        }
    };
    Ok(match kind {
        CharType::Bool | CharType::U8 => vec![fits(int()?, 0, 255)? as u8],
        CharType::I8 => vec![fits(int()?, -128, 127)? as i8 as u8],
        CharType::U16 => (fits(int()?, 0, 65535)? as u16).to_le_bytes().to_vec(),
        CharType::I16 => (fits(int()?, -32768, 32767)? as i16).to_le_bytes().to_vec(),
        CharType::U32 => (fits(int()?, 0, i64::from(u32::MAX))? as u32)
            .to_le_bytes()
            .to_vec(),
        CharType::I32 => (fits(int()?, i64::from(i32::MIN), i64::from(i32::MAX))? as i32)
            .to_le_bytes()
            .to_vec(),
        CharType::F32 => match v {
            Value::Float(f) => (*f as f32).to_le_bytes().to_vec(),
            _ => (int()? as f32).to_le_bytes().to_vec(),
        },
        CharType::Text => match v {
            Value::Text(s) => s.as_bytes().to_vec(),
            other => return Err(format!("{other:?} is not text")),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_and_addresses() {
        assert_eq!(
            uuid("2A6E"),
            Ok("00002a6e-0000-1000-8000-00805f9b34fb".into())
        );
        assert!(uuid("12345").is_err());
        assert!(uuid("6e400001-b5a3-f393-e0a9-e50e24dcca9e").is_ok());
        assert_eq!(address("a4:c1:38:00:11:22"), Ok("A4:C1:38:00:11:22".into()));
        assert!(address("a4:c1:38").is_err());
    }

    #[test]
    fn characteristic_values_round_trip() {
        let c = GattChar {
            service: "s".into(),
            property: "t".into(),
            uuid: String::new(),
            kind: CharType::I16,
            scale: Some(0.01),
            offset: None,
            notify: false,
        };
        // org.bluetooth.characteristic.temperature: sint16, 0.01 °C
        assert_eq!(decode_char(&c, &[0x1A, 0xFE]), Ok(Value::Float(-4.86)));
        assert!(decode_char(&c, &[1]).is_err());
        assert_eq!(
            encode_char(CharType::U16, &Value::UInt(513)),
            Ok(vec![1, 2])
        );
        assert!(encode_char(CharType::U8, &Value::Int(300)).is_err());
        assert_eq!(encode_char(CharType::I8, &Value::Int(-1)), Ok(vec![0xFF]));
    }
}
