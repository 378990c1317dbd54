//! Turning one frame from an instrument into typed properties: optional checksum check (NMEA
//! XOR, XOR-8, SUM-8, CRC-16/MODBUS as trailing hex), field extraction by regex captures or by
//! delimiter split, and conversion with scale and offset. Every failure is a [`FrameError`]
//! naming what was wrong; nothing from a bad frame becomes a value.

use std::collections::BTreeMap;

use fieldgate_driver::Value;
use regex::Regex;

/// Checksum carried at the end of the frame, as hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checksum {
    /// `$BODY*HH`: XOR of the bytes between `$`/`!` and `*`.
    Nmea,
    /// Two hex digits: XOR of all bytes before them.
    Xor8,
    /// Two hex digits: sum modulo 256 of all bytes before them.
    Sum8,
    /// Four hex digits: CRC-16/MODBUS of all bytes before them.
    Crc16,
}

/// A field or checksum name the config gives that this crate does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("unknown checksum `{0}` (nmea, xor8, sum8, crc16)")]
    Checksum(String),
    #[error("unknown field type `{0}` (float, int, bool, string)")]
    FieldType(String),
}

impl Checksum {
    pub fn parse(s: &str) -> Result<Self, SpecError> {
        match s {
            "nmea" => Ok(Checksum::Nmea),
            "xor8" => Ok(Checksum::Xor8),
            "sum8" => Ok(Checksum::Sum8),
            "crc16" => Ok(Checksum::Crc16),
            other => Err(SpecError::Checksum(other.to_string())),
        }
    }

    /// Check the frame; return it without the checksum (and for NMEA without `*HH`).
    pub fn verify<'a>(&self, frame: &'a [u8]) -> Result<&'a [u8], FrameError> {
        let digits = match self {
            Checksum::Crc16 => 4,
            _ => 2,
        };
        let (body, hex, summed) = match self {
            Checksum::Nmea => {
                let star = frame
                    .iter()
                    .rposition(|&b| b == b'*')
                    .ok_or(FrameError::Checksum("no `*` checksum".into()))?;
                let start = usize::from(matches!(frame.first(), Some(b'$' | b'!')));
                (&frame[..star], &frame[star + 1..], &frame[start..star])
            }
            _ => {
                let cut = frame.len().checked_sub(digits).ok_or(FrameError::Checksum(
                    "frame shorter than its checksum".into(),
                ))?;
                (&frame[..cut], &frame[cut..], &frame[..cut])
            }
        };
        let text = std::str::from_utf8(hex).ok().filter(|h| h.len() == digits);
        let Some(got) = text.and_then(|h| u16::from_str_radix(h, 16).ok()) else {
            return Err(FrameError::Checksum(format!(
                "checksum `{}` is not {digits} hex digits",
                String::from_utf8_lossy(hex)
            )));
        };
        let want = match self {
            Checksum::Nmea | Checksum::Xor8 => u16::from(summed.iter().fold(0u8, |a, b| a ^ b)),
            Checksum::Sum8 => u16::from(summed.iter().fold(0u8, |a, b| a.wrapping_add(*b))),
            Checksum::Crc16 => CRC16.checksum(summed),
        };
        if got != want {
            return Err(FrameError::Checksum(format!(
                "checksum mismatch: frame says {got:0digits$X}, computed {want:0digits$X}"
            )));
        }
        Ok(body)
    }
}

const CRC16: crc::Crc<u16> = crc::Crc::<u16>::new(&crc::CRC_16_MODBUS);

/// How fields are found in a frame's text.
#[derive(Debug, Clone)]
pub enum Extract {
    /// Captures of a regex that must match the frame; fields name a group or its number.
    Regex(Regex),
    /// The frame split on this delimiter; fields give a 0-based index.
    Split(String),
}

/// Where a field's text comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// A regex named group.
    Name(String),
    /// A regex group number (1-based, 0 = whole match) or split index (0-based).
    Index(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    Float,
    Int,
    Bool,
    Text,
}

impl FieldType {
    pub fn parse(s: &str) -> Result<Self, SpecError> {
        match s {
            "float" => Ok(FieldType::Float),
            "int" => Ok(FieldType::Int),
            "bool" => Ok(FieldType::Bool),
            "string" => Ok(FieldType::Text),
            other => Err(SpecError::FieldType(other.to_string())),
        }
    }
}

#[derive(Debug, Clone)]
pub struct FieldSpec {
    pub service: String,
    pub property: String,
    pub source: Source,
    pub kind: FieldType,
    pub scale: Option<f64>,
    pub offset: Option<f64>,
}

/// Why a frame gave no values.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FrameError {
    #[error("{0}")]
    Checksum(String),
    #[error("frame is not ASCII text")]
    NotText,
    #[error("frame does not match the pattern")]
    NoMatch,
    #[error("field `{0}` is missing from the frame")]
    Missing(String),
    #[error("field `{0}`: `{1}` is not a {2}")]
    BadField(String, String, &'static str),
}

/// Parse one frame into `service → property → value`.
pub fn parse_frame(
    frame: &[u8],
    checksum: Option<Checksum>,
    extract: &Extract,
    fields: &[FieldSpec],
) -> Result<BTreeMap<String, BTreeMap<String, Value>>, FrameError> {
    let body = match checksum {
        Some(c) => c.verify(frame)?,
        None => frame,
    };
    let text = std::str::from_utf8(body)
        .ok()
        .filter(|t| t.bytes().all(|b| b == b'\t' || (0x20..0x7f).contains(&b)))
        .ok_or(FrameError::NotText)?;
    let mut out: BTreeMap<String, BTreeMap<String, Value>> = BTreeMap::new();
    match extract {
        Extract::Regex(re) => {
            let caps = re.captures(text).ok_or(FrameError::NoMatch)?;
            for f in fields {
                let m = match &f.source {
                    Source::Name(n) => caps.name(n),
                    Source::Index(i) => caps.get(*i),
                };
                let raw = m
                    .map(|m| m.as_str())
                    .ok_or_else(|| FrameError::Missing(f.property.clone()))?;
                out.entry(f.service.clone())
                    .or_default()
                    .insert(f.property.clone(), convert(f, raw)?);
            }
        }
        Extract::Split(d) => {
            let parts: Vec<&str> = text.split(d.as_str()).collect();
            for f in fields {
                let raw = match &f.source {
                    Source::Index(i) => parts.get(*i).copied(),
                    Source::Name(_) => None,
                }
                .ok_or_else(|| FrameError::Missing(f.property.clone()))?;
                out.entry(f.service.clone())
                    .or_default()
                    .insert(f.property.clone(), convert(f, raw)?);
            }
        }
    }
    Ok(out)
}

fn convert(f: &FieldSpec, raw: &str) -> Result<Value, FrameError> {
    let t = raw.trim();
    let bad = |what| FrameError::BadField(f.property.clone(), t.to_string(), what);
    let scaled = |x: f64| x * f.scale.unwrap_or(1.0) + f.offset.unwrap_or(0.0);
    match f.kind {
        FieldType::Text => Ok(Value::Text(t.to_string())),
        FieldType::Bool => match t.to_ascii_lowercase().as_str() {
            "1" | "true" | "on" | "yes" | "y" | "t" => Ok(Value::Bool(true)),
            "0" | "false" | "off" | "no" | "n" | "f" => Ok(Value::Bool(false)),
            _ => Err(bad("boolean")),
        },
        FieldType::Int => {
            // "+0012" and "-7" are common; so is a leading plus sign.
            let i: i64 = t
                .trim_start_matches('+')
                .parse()
                .map_err(|_| bad("whole number"))?;
            if f.scale.is_some() || f.offset.is_some() {
                Ok(Value::Float(scaled(i as f64)))
            } else {
                Ok(Value::Int(i))
            }
        }
        FieldType::Float => {
            let x: f64 = t
                .trim_start_matches('+')
                .parse()
                .map_err(|_| bad("number"))?;
            let v = scaled(x);
            if v.is_finite() {
                Ok(Value::Float(v))
            } else {
                Err(bad("finite number"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(prop: &str, source: Source, kind: FieldType) -> FieldSpec {
        FieldSpec {
            service: "s".into(),
            property: prop.into(),
            source,
            kind,
            scale: None,
            offset: None,
        }
    }

    #[test]
    fn nmea_checksum_of_a_published_sentence() {
        // The classic GGA example sentence with its checksum 47.
        let s = b"$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47";
        let body = Checksum::Nmea.verify(s).unwrap_or_else(|e| panic!("{e}"));
        assert!(body.ends_with(b",M,,"));
        let mut bad = s.to_vec();
        bad[10] = b'9';
        let e = Checksum::Nmea.verify(&bad).err();
        assert!(matches!(e, Some(FrameError::Checksum(m)) if m.contains("mismatch")));
        assert!(Checksum::Nmea.verify(b"$GPGGA,1").is_err(), "no checksum");
        assert!(Checksum::Nmea.verify(b"$GPGGA,1*G1").is_err(), "not hex");
    }

    #[test]
    fn trailing_hex_checksums() {
        // CRC-16/MODBUS of "123456789" is 0x4B37 (the catalogue's check value).
        assert!(Checksum::Crc16.verify(b"1234567894B37").is_ok());
        assert!(Checksum::Crc16.verify(b"1234567894B38").is_err());
        // XOR of "AB" = 0x03, SUM = 0x83
        assert!(Checksum::Xor8.verify(b"AB03").is_ok());
        assert!(Checksum::Sum8.verify(b"AB83").is_ok());
        assert!(Checksum::Sum8.verify(b"AB03").is_err());
        assert!(Checksum::Xor8.verify(b"A").is_err());
    }

    #[test]
    fn regex_and_split_extraction_with_scaling() {
        let re = Regex::new(r"^(?P<status>ST|US),GS,(?P<w>[-+ 0-9.]+)kg$")
            .unwrap_or_else(|e| panic!("{e}"));
        let fields = vec![
            field("stable", Source::Name("status".into()), FieldType::Text),
            FieldSpec {
                scale: Some(1000.0),
                ..field("grams", Source::Name("w".into()), FieldType::Float)
            },
        ];
        let v = parse_frame(
            b"ST,GS,+0012.345kg",
            None,
            &Extract::Regex(re.clone()),
            &fields,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(v["s"]["stable"], Value::Text("ST".into()));
        assert_eq!(v["s"]["grams"], Value::Float(12345.0));
        assert_eq!(
            parse_frame(b"ST,GS,++kg", None, &Extract::Regex(re.clone()), &fields).err(),
            Some(FrameError::BadField("grams".into(), "++".into(), "number"))
        );
        assert_eq!(
            parse_frame(b"hello", None, &Extract::Regex(re), &fields).err(),
            Some(FrameError::NoMatch)
        );

        let fields = vec![
            field("time", Source::Index(1), FieldType::Text),
            field("sats", Source::Index(7), FieldType::Int),
            field("alt", Source::Index(9), FieldType::Float),
        ];
        let s = b"$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47";
        let v = parse_frame(
            s,
            Some(Checksum::Nmea),
            &Extract::Split(",".into()),
            &fields,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(v["s"]["sats"], Value::Int(8));
        assert_eq!(v["s"]["alt"], Value::Float(545.4));
        let short = b"$GPGGA,1*";
        assert!(parse_frame(short, None, &Extract::Split(",".into()), &fields).is_err());
        assert_eq!(
            parse_frame(b"a,\xff\xfe", None, &Extract::Split(",".into()), &fields).err(),
            Some(FrameError::NotText)
        );
    }
}
