//! The stored record format, version 2: compact binary, dialect-neutral.
//!
//! `[2][kind-specific fields]`, strings as varint length + UTF-8, integers as LEB128 varints
//! (signed ones zigzagged), floats as 8 little-endian bytes, values tagged. Decoding checks
//! every length against what is left and rejects trailing bytes, so a damaged or foreign body
//! is an error (counted as `corrupt`), never a panic or a wrong value.

use fieldgate_driver::{DeviceStatus, Name, Properties, Report, Value};

pub const V2: u8 = 2;

fn varint(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

fn string(out: &mut Vec<u8>, s: &str) {
    varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Bool(false) => out.push(0),
        Value::Bool(true) => out.push(1),
        Value::Int(i) => {
            out.push(2);
            varint(out, ((i << 1) ^ (i >> 63)) as u64);
        }
        Value::UInt(u) => {
            out.push(3);
            varint(out, *u);
        }
        Value::Float(f) => {
            out.push(4);
            out.extend_from_slice(&f.to_le_bytes());
        }
        Value::Text(s) => {
            out.push(5);
            string(out, s);
        }
    }
}

pub fn encode_report(r: &Report) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + r.properties.len() * 16);
    out.push(V2);
    string(&mut out, &r.child);
    string(&mut out, &r.service);
    varint(&mut out, r.ts_ms);
    varint(&mut out, r.properties.len() as u64);
    for (k, v) in &r.properties {
        string(&mut out, k);
        value(&mut out, v);
    }
    out
}

pub fn encode_status(s: &DeviceStatus) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + s.reason.len());
    out.push(V2);
    string(&mut out, &s.child);
    out.push(u8::from(s.online));
    string(&mut out, &s.reason);
    varint(&mut out, s.ts_ms);
    out
}

/// Why a stored body cannot be read; one variant per cause. The record is then counted as
/// `corrupt`, never a crash.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("empty body")]
    Empty,
    #[error("truncated")]
    Truncated,
    #[error("varint overflow")]
    VarintOverflow,
    #[error("varint too long")]
    VarintTooLong,
    #[error("length overflow")]
    LengthOverflow,
    #[error("string runs past the end")]
    StringPastEnd,
    #[error("string is not UTF-8")]
    NotUtf8,
    #[error("truncated float")]
    TruncatedFloat,
    #[error("unknown value tag {0}")]
    ValueTag(u8),
    #[error("{0} trailing bytes")]
    Trailing(usize),
    #[error("property count runs past the end")]
    CountPastEnd,
    #[error("bad online flag {0}")]
    OnlineFlag(u8),
    #[error("unknown record kind {0}")]
    Kind(u8),
    #[error("unknown body version {0}")]
    Version(u8),
    #[error("JSON body (v1): {0}")]
    Json(String),
}

struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, BodyError> {
        let (&x, rest) = self.b.split_first().ok_or(BodyError::Truncated)?;
        self.b = rest;
        Ok(x)
    }

    fn varint(&mut self) -> Result<u64, BodyError> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f)
                .checked_shl(shift)
                .ok_or(BodyError::VarintOverflow)?;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(BodyError::VarintTooLong)
    }

    /// A string's bytes, not yet checked to be UTF-8.
    fn bytes(&mut self) -> Result<&'a [u8], BodyError> {
        let n = usize::try_from(self.varint()?).map_err(|_| BodyError::LengthOverflow)?;
        if n > self.b.len() {
            return Err(BodyError::StringPastEnd);
        }
        let (s, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(s)
    }

    fn string(&mut self) -> Result<String, BodyError> {
        let b = self.bytes()?;
        std::str::from_utf8(b)
            .map(str::to_string)
            .map_err(|_| BodyError::NotUtf8)
    }

    fn value(&mut self) -> Result<Value, BodyError> {
        Ok(match self.byte()? {
            0 => Value::Bool(false),
            1 => Value::Bool(true),
            2 => {
                let z = self.varint()?;
                Value::Int(((z >> 1) as i64) ^ -((z & 1) as i64))
            }
            3 => Value::UInt(self.varint()?),
            4 => {
                if self.b.len() < 8 {
                    return Err(BodyError::TruncatedFloat);
                }
                let (f, rest) = self.b.split_at(8);
                self.b = rest;
                let mut a = [0u8; 8];
                a.copy_from_slice(f);
                Value::Float(f64::from_le_bytes(a))
            }
            5 => Value::Text(self.string()?),
            t => return Err(BodyError::ValueTag(t)),
        })
    }

    fn done(&self) -> Result<(), BodyError> {
        if self.b.is_empty() {
            Ok(())
        } else {
            Err(BodyError::Trailing(self.b.len()))
        }
    }
}

/// The property names of recent records, by position: records of one profile repeat the
/// same names in the same order, so a decoded name that matches the one last seen at its
/// position is shared instead of allocated again. Bounded: positions past `MAX` are not kept.
#[derive(Debug, Default)]
pub struct Names(Vec<Name>);

impl Names {
    pub const MAX: usize = 4096;

    /// The name `b` spells; bytes equal to a kept name's are UTF-8 already, so only a name
    /// not seen at `at` before is checked.
    fn get(&mut self, at: usize, b: &[u8]) -> Result<Name, BodyError> {
        if let Some(n) = self.0.get(at).filter(|n| n.as_bytes() == b) {
            return Ok(n.clone());
        }
        let n = Name::from(std::str::from_utf8(b).map_err(|_| BodyError::NotUtf8)?);
        if let Some(slot) = self.0.get_mut(at) {
            *slot = n.clone();
        } else if at == self.0.len() && at < Self::MAX {
            self.0.push(n.clone());
        }
        Ok(n)
    }
}

/// Decode a v2 report body (after the version byte), sharing names with the records decoded
/// before it.
pub fn decode_report(b: &[u8], names: &mut Names) -> Result<Report, BodyError> {
    let mut r = Reader { b };
    let child = r.string()?;
    let service = r.string()?;
    let ts_ms = r.varint()?;
    let n = r.varint()?;
    // Each property needs at least two bytes: refuse counts the body cannot hold.
    if n > r.b.len() as u64 {
        return Err(BodyError::CountPastEnd);
    }
    // Written from sorted properties: taken as they are (checked, not searched per key).
    let mut list = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
    for i in 0..n {
        let k = names.get(usize::try_from(i).unwrap_or(usize::MAX), r.bytes()?)?;
        let v = r.value()?;
        list.push((k, v));
    }
    let properties = Properties::from_sorted(list);
    r.done()?;
    Ok(Report {
        child,
        service,
        properties,
        ts_ms,
    })
}

/// Decode a v2 status body (after the version byte).
pub fn decode_status(b: &[u8]) -> Result<DeviceStatus, BodyError> {
    let mut r = Reader { b };
    let child = r.string()?;
    let online = match r.byte()? {
        0 => false,
        1 => true,
        x => return Err(BodyError::OnlineFlag(x)),
    };
    let reason = r.string()?;
    let ts_ms = r.varint()?;
    r.done()?;
    Ok(DeviceStatus {
        child,
        online,
        reason,
        ts_ms,
    })
}
