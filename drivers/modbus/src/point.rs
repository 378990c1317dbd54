//! The point model: where a value lives on a Modbus device and how its bits become a typed value.
//!
//! A point names its table and 0-based protocol address (`holding:0` is the first holding
//! register, often documented as 40001), its data type, byte and word order, and the scale and
//! offset applied after decoding. Parsing and validation live here so that the daemon's config
//! checker and the driver agree on one definition; both return plain messages that the config
//! layer decorates with file, line and column.

use std::fmt;

use fieldgate_driver::{ErrorCode, Value};
use serde_json::Value as Json;

/// The four Modbus data tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    Coil,
    Discrete,
    Input,
    Holding,
}

impl Table {
    pub fn is_bits(self) -> bool {
        matches!(self, Table::Coil | Table::Discrete)
    }
    /// The most items one read request may ask for in this table.
    pub fn max_read(self) -> u16 {
        if self.is_bits() {
            2000
        } else {
            125
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Table::Coil => "coil",
            Table::Discrete => "discrete",
            Table::Input => "input",
            Table::Holding => "holding",
        }
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A point's address, type or order as the config writes it, refused; one variant per cause.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PointError {
    #[error("address `{0}` must be `table:number`, e.g. `holding:0` (tables: coil, discrete, input, holding)")]
    NoTable(String),
    #[error("unknown Modbus table `{0}` (expected coil, discrete, input or holding)")]
    UnknownTable(String),
    #[error("address `{0}` is not a whole number")]
    NotANumber(String),
    #[error("address {0} is out of range (0..=65535, 0-based protocol address)")]
    AddressRange(u32),
    #[error("string length {0} registers is out of range (1..=125)")]
    StringLength(u16),
    #[error("type `string` needs `length` (in registers)")]
    StringNeedsLength,
    #[error(
        "unknown type `{0}` (expected bool, u16, i16, u32, i32, u64, i64, f32, f64 or string)"
    )]
    UnknownType(String),
    #[error("unknown order `{0}` (expected big or little)")]
    UnknownOrder(String),
}

/// Parse `table:address`, e.g. `holding:0`, `input:30`, `coil:3`, `discrete:7`.
pub fn parse_location(s: &str) -> Result<(Table, u16), PointError> {
    let (t, a) = s
        .split_once(':')
        .ok_or_else(|| PointError::NoTable(s.to_string()))?;
    let table = match t.trim() {
        "coil" | "coils" => Table::Coil,
        "discrete" | "discrete_input" => Table::Discrete,
        "input" | "input_register" => Table::Input,
        "holding" | "holding_register" => Table::Holding,
        other => return Err(PointError::UnknownTable(other.to_string())),
    };
    let a = a.trim();
    let addr: u32 = a
        .parse()
        .map_err(|_| PointError::NotANumber(a.to_string()))?;
    let addr = u16::try_from(addr).map_err(|_| PointError::AddressRange(addr))?;
    Ok((table, addr))
}

/// How the raw bits are interpreted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataType {
    Bool,
    U16,
    I16,
    U32,
    I32,
    U64,
    I64,
    F32,
    F64,
    /// ASCII/UTF-8 text in `len` registers (two bytes each), NULs and trailing spaces trimmed.
    String {
        len: u16,
    },
}

impl DataType {
    pub fn parse(s: &str, len: Option<u16>) -> Result<Self, PointError> {
        Ok(match s {
            "bool" | "bit" => DataType::Bool,
            "u16" => DataType::U16,
            "i16" => DataType::I16,
            "u32" => DataType::U32,
            "i32" => DataType::I32,
            "u64" => DataType::U64,
            "i64" => DataType::I64,
            "f32" => DataType::F32,
            "f64" => DataType::F64,
            "string" => match len {
                Some(len) if (1..=125).contains(&len) => DataType::String { len },
                Some(len) => return Err(PointError::StringLength(len)),
                None => return Err(PointError::StringNeedsLength),
            },
            other => return Err(PointError::UnknownType(other.to_string())),
        })
    }

    /// Registers (or bits, for `Bool` in a bit table) the value occupies.
    pub fn width(self) -> u16 {
        match self {
            DataType::Bool | DataType::U16 | DataType::I16 => 1,
            DataType::U32 | DataType::I32 | DataType::F32 => 2,
            DataType::U64 | DataType::I64 | DataType::F64 => 4,
            DataType::String { len } => len,
        }
    }

    pub fn is_numeric(self) -> bool {
        !matches!(self, DataType::Bool | DataType::String { .. })
    }
}

/// Byte order inside one 16-bit register, and word order across registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Order {
    #[default]
    Big,
    Little,
}

impl Order {
    pub fn parse(s: &str) -> Result<Self, PointError> {
        match s {
            "big" => Ok(Order::Big),
            "little" => Ok(Order::Little),
            other => Err(PointError::UnknownOrder(other.to_string())),
        }
    }
}

/// One configured point of a device profile, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct PointSpec {
    pub service: String,
    pub property: String,
    pub table: Table,
    pub address: u16,
    pub dtype: DataType,
    /// For `Bool` in a register table: which bit (0 = least significant).
    pub bit: Option<u8>,
    pub byte_order: Order,
    pub word_order: Order,
    pub scale: Option<f64>,
    pub offset: Option<f64>,
    pub writable: bool,
    /// Allowed range for writes, in engineering units.
    pub min: Option<f64>,
    pub max: Option<f64>,
}

impl PointSpec {
    /// A read-only point with big-endian orders and no scaling; set the rest as needed.
    pub fn new(
        service: impl Into<String>,
        property: impl Into<String>,
        table: Table,
        address: u16,
        dtype: DataType,
    ) -> Self {
        PointSpec {
            service: service.into(),
            property: property.into(),
            table,
            address,
            dtype,
            bit: None,
            byte_order: Order::Big,
            word_order: Order::Big,
            scale: None,
            offset: None,
            writable: false,
            min: None,
            max: None,
        }
    }

    /// Items (registers or bits) this point occupies in its table.
    pub fn width(&self) -> u16 {
        if self.table.is_bits() {
            1
        } else {
            self.dtype.width()
        }
    }

    /// The last address this point touches.
    pub fn end(&self) -> u32 {
        u32::from(self.address) + u32::from(self.width()) - 1
    }

    /// Check that the type fits the table, the value fits the address space, and the
    /// options make sense together. Returns every problem found.
    pub fn validate(&self) -> Vec<String> {
        let mut errs = Vec::new();
        if self.table.is_bits() && self.dtype != DataType::Bool {
            errs.push(format!(
                "a {} holds single bits: type must be `bool`, not `{}`",
                self.table,
                type_name(self.dtype)
            ));
        }
        if self.end() > 65535 {
            errs.push(format!(
                "{} registers starting at {} run past the last address 65535",
                self.width(),
                self.address
            ));
        }
        match (self.dtype, self.bit, self.table.is_bits()) {
            (DataType::Bool, None, false) => {
                errs.push("a `bool` in a register table needs `bit` (0..=15)".into())
            }
            (DataType::Bool, Some(b), false) if b > 15 => {
                errs.push(format!("bit {b} is out of range (0..=15)"))
            }
            (DataType::Bool, Some(_), true) => {
                errs.push(format!("`bit` does not apply to a {}", self.table))
            }
            (t, Some(_), _) if t != DataType::Bool => {
                errs.push("`bit` only applies to type `bool`".into())
            }
            _ => {}
        }
        if (self.scale.is_some() || self.offset.is_some()) && !self.dtype.is_numeric() {
            errs.push(format!(
                "`scale`/`offset` need a numeric type, not `{}`",
                type_name(self.dtype)
            ));
        }
        if self.scale == Some(0.0) {
            errs.push("`scale` must not be 0 (writes divide by it)".into());
        }
        for (key, v) in [
            ("scale", self.scale),
            ("offset", self.offset),
            ("min", self.min),
            ("max", self.max),
        ] {
            if v.is_some_and(|v| !v.is_finite()) {
                errs.push(format!(
                    "`{key}` must be a finite number (nan and inf would disable checks or write garbage)"
                ));
            }
        }
        if let (Some(lo), Some(hi)) = (self.min, self.max) {
            if lo > hi {
                errs.push(format!("`min` {lo} is above `max` {hi}"));
            }
        }
        if self.writable && self.table.is_bits() && self.table != Table::Coil {
            errs.push(
                "discrete inputs are read-only; only coils and holding registers can be writable"
                    .into(),
            );
        }
        if self.writable && self.table == Table::Input {
            errs.push(
                "input registers are read-only; only coils and holding registers can be writable"
                    .into(),
            );
        }
        if let (Some(lo), Some(hi)) = (self.min, self.max) {
            if lo > hi {
                errs.push(format!("`min` {lo} is greater than `max` {hi}"));
            }
        }
        errs
    }
}

/// A command declared in a profile: the platform's `service`/`name` writes one point, with a
/// fixed value or the value the platform sends. Declared commands may write points that are
/// not `writable` for property set — declaring them is the explicit permission.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandSpec {
    pub service: String,
    pub name: String,
    /// Index of the target point in the device's point list.
    pub point: usize,
    /// The value to write; `None` = the platform's `paras.value`.
    pub value: Option<fieldgate_driver::Value>,
}

pub fn type_name(t: DataType) -> &'static str {
    match t {
        DataType::Bool => "bool",
        DataType::U16 => "u16",
        DataType::I16 => "i16",
        DataType::U32 => "u32",
        DataType::I32 => "i32",
        DataType::U64 => "u64",
        DataType::I64 => "i64",
        DataType::F32 => "f32",
        DataType::F64 => "f64",
        DataType::String { .. } => "string",
    }
}

/// Check a platform value against a point before anything touches the bus.
pub fn check_value(p: &PointSpec, v: &Json) -> Result<Value, (ErrorCode, String)> {
    if !p.writable {
        return Err((
            ErrorCode::NotWritable,
            format!("point `{}` is read-only", p.property),
        ));
    }
    coerce(p, v)
}

/// Type- and range-check a platform value for a point (without the `writable` gate, which
/// declared commands do not need).
pub fn coerce(p: &PointSpec, v: &Json) -> Result<Value, (ErrorCode, String)> {
    let name = &p.property;
    let bad = |why: String| (ErrorCode::BadValue, format!("`{name}`: {why}"));
    if p.table == Table::Coil || p.dtype == DataType::Bool {
        return match v {
            Json::Bool(b) => Ok(Value::Bool(*b)),
            Json::Number(n) if n.as_u64() == Some(0) || n.as_u64() == Some(1) => {
                Ok(Value::Bool(n.as_u64() == Some(1)))
            }
            _ => Err(bad(format!("expected true/false, got {v}"))),
        };
    }
    if let DataType::String { len } = p.dtype {
        return match v {
            Json::String(s) if s.len() <= usize::from(len) * 2 => Ok(Value::Text(s.clone())),
            Json::String(_) => Err(bad(format!(
                "text longer than {} bytes",
                usize::from(len) * 2
            ))),
            _ => Err(bad(format!("expected text, got {v}"))),
        };
    }
    let x = match v {
        Json::Number(n) => n.as_f64().ok_or_else(|| bad("not a number".into()))?,
        _ => return Err(bad(format!("expected a number, got {v}"))),
    };
    if !x.is_finite() {
        return Err(bad("not a finite number".into()));
    }
    if p.min.is_some_and(|m| x < m) || p.max.is_some_and(|m| x > m) {
        return Err(bad(format!(
            "{x} is outside the allowed range {}..={}",
            fmt_opt(p.min),
            fmt_opt(p.max)
        )));
    }
    // The type's own range (after inverse scaling) is checked by the codec, before the write.
    // Whole numbers stay exact: u64::MAX has no f64.
    Ok(match v {
        Json::Number(n) if n.is_u64() => n.as_u64().map_or(Value::Float(x), Value::UInt),
        Json::Number(n) if n.is_i64() => n.as_i64().map_or(Value::Float(x), Value::Int),
        _ => Value::Float(x),
    })
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map(|x| x.to_string()).unwrap_or_default()
}

#[cfg(test)]
pub(crate) fn point(loc: &str, ty: &str) -> PointSpec {
    let (table, address) = parse_location(loc).unwrap_or_else(|e| panic!("{e}"));
    let dtype = DataType::parse(ty, Some(4)).unwrap_or_else(|e| panic!("{e}"));
    PointSpec::new("s", format!("{loc}/{ty}"), table, address, dtype)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse_and_reject() {
        assert_eq!(parse_location("holding:0"), Ok((Table::Holding, 0)));
        assert_eq!(parse_location("coil:65535"), Ok((Table::Coil, 65535)));
        assert_eq!(
            parse_location("holding:65536"),
            Err(PointError::AddressRange(65536))
        );
        assert_eq!(
            parse_location("holding"),
            Err(PointError::NoTable("holding".into()))
        );
        assert_eq!(
            parse_location("register:1"),
            Err(PointError::UnknownTable("register".into()))
        );
        assert_eq!(
            parse_location("input:-1"),
            Err(PointError::NotANumber("-1".into()))
        );
        assert!(PointError::AddressRange(65536)
            .to_string()
            .contains("out of range"));
        assert_eq!(
            DataType::parse("string", None),
            Err(PointError::StringNeedsLength)
        );
        assert_eq!(
            DataType::parse("string", Some(126)),
            Err(PointError::StringLength(126))
        );
        assert_eq!(
            Order::parse("middle"),
            Err(PointError::UnknownOrder("middle".into()))
        );
    }

    #[test]
    fn validation_catches_misfits() {
        let p = point("coil:1", "f32");
        assert!(p.validate()[0].contains("single bits"));
        let p = point("holding:65534", "u32");
        assert!(p.validate().is_empty());
        let p = point("holding:65535", "u32");
        assert!(p.validate()[0].contains("past the last address"));
        let p = point("holding:0", "bool");
        assert!(p.validate()[0].contains("needs `bit`"));
        let mut p = point("input:0", "u16");
        p.writable = true;
        assert!(p.validate()[0].contains("read-only"));
        let mut p = point("holding:0", "string");
        p.scale = Some(2.0);
        assert!(p.validate()[0].contains("numeric"));
    }

    #[test]
    fn string_needs_length() {
        assert!(DataType::parse("string", None).is_err());
        assert!(DataType::parse("string", Some(200)).is_err());
        assert_eq!(
            DataType::parse("string", Some(8)),
            Ok(DataType::String { len: 8 })
        );
        assert_eq!(
            DataType::parse("float", None),
            Err(PointError::UnknownType("float".into()))
        );
    }
}
