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

/// A name in the config this crate does not know, or an address or UUID it cannot read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("unknown characteristic type `{0}` (u8, i8, u16, i16, u32, i32, f32, bool, string)")]
    CharType(String),
    #[error("unknown advertisement format `{0}` (auto, bthome, ruuvi, atc)")]
    Format(String),
    #[error("`{0}` is not a UUID (16-bit `2a6e` or 128-bit `0000….-…`)")]
    Uuid(String),
    #[error("`{0}` is not a Bluetooth address (AA:BB:CC:DD:EE:FF)")]
    Address(String),
}

/// A characteristic value that cannot be read as, or written from, its declared type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CharError {
    #[error("`{property}`: {got} bytes, {kind:?} needs {need}")]
    Short {
        property: String,
        got: usize,
        kind: CharType,
        need: usize,
    },
    #[error("`{0}`: not UTF-8")]
    NotUtf8(String),
    #[error("`{0}`: not a finite number")]
    NotFinite(String),
    #[error("{0} is not a whole number in range")]
    NotWhole(String),
    #[error("{0} does not fit {1:?}")]
    DoesNotFit(String, CharType),
    #[error("{0} is not a number")]
    NotANumber(String),
    #[error("{0} is not text")]
    NotText(String),
}

impl CharType {
    pub fn parse(s: &str) -> Result<Self, SpecError> {
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
            other => return Err(SpecError::CharType(other.to_string())),
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
pub fn uuid(s: &str) -> Result<String, SpecError> {
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
        Err(SpecError::Uuid(s.to_string()))
    }
}

/// Check and normalise a device address.
pub fn address(s: &str) -> Result<String, SpecError> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
    {
        Ok(s.to_ascii_uppercase())
    } else {
        Err(SpecError::Address(s.to_string()))
    }
}

/// Decode a characteristic value (little-endian, as GATT numbers are).
pub fn decode_char(c: &GattChar, raw: &[u8]) -> Result<Value, CharError> {
    if let Some(w) = c.kind.width() {
        if raw.len() < w {
            return Err(CharError::Short {
                property: c.property.clone(),
                got: raw.len(),
                kind: c.kind,
                need: w,
            });
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
                .map_err(|_| CharError::NotUtf8(c.property.clone()))
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
        return Err(CharError::NotFinite(c.property.clone()));
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

/// Encode a (checked) command value for a characteristic. Whole numbers are converted exactly
/// (`try_from`), never wrapped or saturated; an f32 must still be finite after the cast.
pub fn encode_char(kind: CharType, v: &Value) -> Result<Vec<u8>, CharError> {
    let int = || -> Result<i128, CharError> {
        match v {
            Value::Int(i) => Ok(i128::from(*i)),
            Value::UInt(u) => Ok(i128::from(*u)),
            Value::Bool(b) => Ok(i128::from(*b)),
            // Strictly inside ±2^64 every whole f64 is exact in i128.
            Value::Float(f) if f.fract() == 0.0 && f.abs() < 18_446_744_073_709_551_616.0 => {
                Ok(*f as i128)
            }
            other => Err(CharError::NotWhole(format!("{other:?}"))),
        }
    };
    fn fit<T: TryFrom<i128>>(i: i128, kind: CharType) -> Result<T, CharError> {
        T::try_from(i).map_err(|_| CharError::DoesNotFit(i.to_string(), kind))
    }
    Ok(match kind {
        CharType::Bool | CharType::U8 => vec![fit::<u8>(int()?, kind)?],
        CharType::I8 => fit::<i8>(int()?, kind)?.to_le_bytes().to_vec(),
        CharType::U16 => fit::<u16>(int()?, kind)?.to_le_bytes().to_vec(),
        CharType::I16 => fit::<i16>(int()?, kind)?.to_le_bytes().to_vec(),
        CharType::U32 => fit::<u32>(int()?, kind)?.to_le_bytes().to_vec(),
        CharType::I32 => fit::<i32>(int()?, kind)?.to_le_bytes().to_vec(),
        CharType::F32 => {
            let x = match v {
                Value::Float(f) => *f,
                Value::Int(i) => *i as f64,
                Value::UInt(u) => *u as f64,
                other => return Err(CharError::NotANumber(format!("{other:?}"))),
            };
            let f = x as f32;
            if !f.is_finite() {
                return Err(CharError::DoesNotFit(x.to_string(), CharType::F32));
            }
            f.to_le_bytes().to_vec()
        }
        CharType::Text => match v {
            Value::Text(s) => s.as_bytes().to_vec(),
            other => return Err(CharError::NotText(format!("{other:?}"))),
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
        assert_eq!(uuid("12345"), Err(SpecError::Uuid("12345".into())));
        assert!(uuid("6e400001-b5a3-f393-e0a9-e50e24dcca9e").is_ok());
        assert_eq!(address("a4:c1:38:00:11:22"), Ok("A4:C1:38:00:11:22".into()));
        assert_eq!(
            address("a4:c1:38"),
            Err(SpecError::Address("a4:c1:38".into()))
        );
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
        assert_eq!(
            encode_char(CharType::U8, &Value::Int(300)),
            Err(CharError::DoesNotFit("300".into(), CharType::U8))
        );
        assert_eq!(encode_char(CharType::I8, &Value::Int(-1)), Ok(vec![0xFF]));
    }

    /// Every characteristic type against its edges: limits exact, one beyond refused,
    /// non-finite and huge values refused rather than wrapped or saturated.
    #[test]
    fn writes_at_the_edges_of_every_type() {
        use Value::{Bool, Float, Int, UInt};
        let ok: &[(CharType, Value, &[u8])] = &[
            (CharType::Bool, Bool(true), &[1]),
            (CharType::U8, UInt(255), &[255]),
            (CharType::I8, Int(-128), &[0x80]),
            (CharType::U16, UInt(65535), &[0xFF, 0xFF]),
            (CharType::I16, Int(-32768), &[0, 0x80]),
            (CharType::U32, UInt(u64::from(u32::MAX)), &[0xFF; 4]),
            (CharType::I32, Int(i64::from(i32::MIN)), &[0, 0, 0, 0x80]),
            (CharType::U16, Float(-0.0), &[0, 0]),
            (
                CharType::F32,
                Float(f64::from(f32::MAX)),
                &[0xFF, 0xFF, 0x7F, 0x7F],
            ),
            (CharType::F32, Float(-0.0), &[0, 0, 0, 0x80]),
        ];
        for (kind, v, want) in ok {
            assert_eq!(encode_char(*kind, v), Ok(want.to_vec()), "{kind:?} {v:?}");
        }
        let next_up = |f: f64| f64::from_bits(f.to_bits() + 1);
        let refused: &[(CharType, Value)] = &[
            (CharType::Bool, Int(256)),
            (CharType::U8, Int(-1)),
            (CharType::I8, Int(128)),
            (CharType::U16, UInt(65536)),
            (CharType::I16, Int(32768)),
            (CharType::U32, UInt(u64::from(u32::MAX) + 1)),
            (CharType::I32, Int(i64::from(i32::MAX) + 1)),
            (CharType::U32, UInt(u64::MAX)),
            (CharType::I32, Float(1e300)),
            (CharType::U16, Float(1.5)),
            (CharType::F32, Float(1e300)),
            (CharType::F32, Float(-1e300)),
            (CharType::F32, Float(next_up(f64::from(f32::MAX)) * 2.0)),
        ];
        for (kind, v) in refused {
            assert!(encode_char(*kind, v).is_err(), "{kind:?} {v:?}");
        }
        for kind in [
            CharType::U8,
            CharType::I8,
            CharType::U16,
            CharType::I16,
            CharType::U32,
            CharType::I32,
            CharType::F32,
        ] {
            for v in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
                assert!(encode_char(kind, &Float(v)).is_err(), "{kind:?} {v}");
            }
        }
    }
}
