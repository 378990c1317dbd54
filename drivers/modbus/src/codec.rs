//! Decoding raw registers and bits into typed values (and back, for writes).
//!
//! Registers are assembled into a big-endian byte string honouring the point's word order
//! (which register holds the most significant word) and byte order (which byte of a register
//! comes first), then read as the point's type; scale and offset turn the raw number into
//! engineering units. A value that is not a finite number (a NaN float from a device that has
//! no reading) is an error, never a value sent to the platform.

use fieldgate_driver::Value;

use crate::point::{DataType, Order, PointSpec};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CodecError {
    #[error("expected {expected} registers, got {got}")]
    Short { expected: usize, got: usize },
    #[error("value is not a finite number")]
    NotFinite,
    #[error("string is not valid UTF-8")]
    BadText,
    #[error("value {0} does not fit the point's type")]
    OutOfRange(String),
}

fn ordered_bytes(regs: &[u16], byte_order: Order, word_order: Order) -> Vec<u8> {
    let mut words: Vec<u16> = regs.to_vec();
    if word_order == Order::Little {
        words.reverse();
    }
    let mut out = Vec::with_capacity(words.len() * 2);
    for w in words {
        let [hi, lo] = w.to_be_bytes();
        match byte_order {
            Order::Big => out.extend_from_slice(&[hi, lo]),
            Order::Little => out.extend_from_slice(&[lo, hi]),
        }
    }
    out
}

fn be<const N: usize>(b: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&b[..N]);
    a
}

/// Decode a register-table point from exactly its registers.
pub fn decode_registers(p: &PointSpec, regs: &[u16]) -> Result<Value, CodecError> {
    let need = usize::from(p.dtype.width());
    if regs.len() < need {
        return Err(CodecError::Short {
            expected: need,
            got: regs.len(),
        });
    }
    let regs = &regs[..need];
    let b = ordered_bytes(regs, p.byte_order, p.word_order);
    let raw = match p.dtype {
        DataType::Bool => Value::Bool(regs[0] >> p.bit.unwrap_or(0) & 1 == 1),
        DataType::String { .. } => {
            // Text runs in register order; only the byte order inside a register applies.
            let bytes = ordered_bytes(regs, p.byte_order, Order::Big);
            let s = std::str::from_utf8(&bytes).map_err(|_| CodecError::BadText)?;
            Value::Text(s.trim_end_matches(['\0', ' ']).to_string())
        }
        DataType::U16 => Value::UInt(u16::from_be_bytes(be(&b)).into()),
        DataType::I16 => Value::Int(i16::from_be_bytes(be(&b)).into()),
        DataType::U32 => Value::UInt(u32::from_be_bytes(be(&b)).into()),
        DataType::I32 => Value::Int(i32::from_be_bytes(be(&b)).into()),
        DataType::U64 => Value::UInt(u64::from_be_bytes(be(&b))),
        DataType::I64 => Value::Int(i64::from_be_bytes(be(&b))),
        DataType::F32 => Value::Float(f32::from_be_bytes(be(&b)).into()),
        DataType::F64 => Value::Float(f64::from_be_bytes(be(&b))),
    };
    scale(p, raw)
}

fn as_f64(v: &Value) -> f64 {
    match v {
        Value::Int(i) => *i as f64,
        Value::UInt(u) => *u as f64,
        Value::Float(f) => *f,
        Value::Bool(b) => f64::from(u8::from(*b)),
        Value::Text(_) => f64::NAN,
    }
}

fn scale(p: &PointSpec, raw: Value) -> Result<Value, CodecError> {
    let v = if p.scale.is_some() || p.offset.is_some() {
        let x = as_f64(&raw) * p.scale.unwrap_or(1.0) + p.offset.unwrap_or(0.0);
        // Round away binary noise from decimal scales (0.1 * 2305 = 230.50000000000003).
        Value::Float((x * 1e9).round() / 1e9)
    } else {
        raw
    };
    if let Value::Float(f) = v {
        if !f.is_finite() {
            return Err(CodecError::NotFinite);
        }
    }
    Ok(v)
}

/// Encode an engineering value for a writable register point (inverse scaling, type range,
/// byte and word order) into the registers to write.
pub fn encode_registers(p: &PointSpec, v: &Value) -> Result<Vec<u16>, CodecError> {
    if let DataType::String { len } = p.dtype {
        let Value::Text(s) = v else {
            return Err(CodecError::OutOfRange(format!("{v:?}")));
        };
        let mut bytes = s.as_bytes().to_vec();
        if bytes.len() > usize::from(len) * 2 {
            return Err(CodecError::OutOfRange(format!("{} bytes", bytes.len())));
        }
        bytes.resize(usize::from(len) * 2, 0);
        return Ok(words_from(&bytes, p.byte_order, Order::Big));
    }
    let x = as_f64(v);
    if !x.is_finite() {
        return Err(CodecError::NotFinite);
    }
    let raw = (x - p.offset.unwrap_or(0.0)) / p.scale.unwrap_or(1.0);
    let int = |lo: f64, hi: f64| -> Result<i128, CodecError> {
        let r = raw.round();
        if r < lo || r > hi {
            Err(CodecError::OutOfRange(format!("{x}")))
        } else {
            Ok(r as i128)
        }
    };
    let bytes: Vec<u8> = match p.dtype {
        DataType::U16 => (int(0.0, 65535.0)? as u16).to_be_bytes().to_vec(),
        DataType::I16 => (int(-32768.0, 32767.0)? as i16).to_be_bytes().to_vec(),
        DataType::U32 => (int(0.0, u32::MAX as f64)? as u32).to_be_bytes().to_vec(),
        DataType::I32 => (int(i32::MIN as f64, i32::MAX as f64)? as i32)
            .to_be_bytes()
            .to_vec(),
        DataType::U64 => (int(0.0, u64::MAX as f64)? as u64).to_be_bytes().to_vec(),
        DataType::I64 => (int(i64::MIN as f64, i64::MAX as f64)? as i64)
            .to_be_bytes()
            .to_vec(),
        DataType::F32 => (raw as f32).to_be_bytes().to_vec(),
        DataType::F64 => raw.to_be_bytes().to_vec(),
        DataType::Bool | DataType::String { .. } => {
            return Err(CodecError::OutOfRange(
                "bool points are written as coils".into(),
            ))
        }
    };
    Ok(words_from(&bytes, p.byte_order, p.word_order))
}

fn words_from(bytes: &[u8], byte_order: Order, word_order: Order) -> Vec<u16> {
    let mut words: Vec<u16> = bytes
        .chunks(2)
        .map(|c| match byte_order {
            Order::Big => u16::from_be_bytes([c[0], c[1]]),
            Order::Little => u16::from_le_bytes([c[0], c[1]]),
        })
        .collect();
    if word_order == Order::Little {
        words.reverse();
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::point::point;

    #[test]
    fn integer_types_and_orders() {
        let mut p = point("holding:0", "u32");
        assert_eq!(
            decode_registers(&p, &[0x0001, 0x0002]),
            Ok(Value::UInt(0x0001_0002))
        );
        p.word_order = Order::Little;
        assert_eq!(
            decode_registers(&p, &[0x0001, 0x0002]),
            Ok(Value::UInt(0x0002_0001))
        );
        p.byte_order = Order::Little;
        assert_eq!(
            decode_registers(&p, &[0x0001, 0x0002]),
            Ok(Value::UInt(0x0200_0100))
        );
        let p = point("holding:0", "i16");
        assert_eq!(decode_registers(&p, &[0xFFFE]), Ok(Value::Int(-2)));
        let p = point("holding:0", "i64");
        assert_eq!(
            decode_registers(&p, &[0xFFFF, 0xFFFF, 0xFFFF, 0xFFFD]),
            Ok(Value::Int(-3))
        );
        let p = point("holding:0", "u64");
        assert_eq!(decode_registers(&p, &[0, 0, 1, 0]), Ok(Value::UInt(65536)));
    }

    #[test]
    fn floats_in_all_four_layouts() {
        // 230.5f32 = 0x43668000
        let cases = [
            (Order::Big, Order::Big, [0x4366, 0x8000]),       // ABCD
            (Order::Big, Order::Little, [0x8000, 0x4366]),    // CDAB
            (Order::Little, Order::Big, [0x6643, 0x0080]),    // BADC
            (Order::Little, Order::Little, [0x0080, 0x6643]), // DCBA
        ];
        for (bo, wo, regs) in cases {
            let mut p = point("holding:0", "f32");
            p.byte_order = bo;
            p.word_order = wo;
            assert_eq!(
                decode_registers(&p, &regs),
                Ok(Value::Float(230.5)),
                "{bo:?} {wo:?}"
            );
            assert_eq!(
                encode_registers(&p, &Value::Float(230.5)),
                Ok(regs.to_vec())
            );
        }
    }

    #[test]
    fn nan_never_becomes_a_value() {
        let p = point("holding:0", "f32");
        assert_eq!(
            decode_registers(&p, &[0x7FC0, 0x0000]),
            Err(CodecError::NotFinite)
        );
    }

    #[test]
    fn scale_and_offset() {
        let mut p = point("input:0", "u16");
        p.scale = Some(0.1);
        assert_eq!(decode_registers(&p, &[2305]), Ok(Value::Float(230.5)));
        p.offset = Some(-40.0);
        assert_eq!(decode_registers(&p, &[650]), Ok(Value::Float(25.0)));
        // inverse for writes
        let mut w = point("holding:0", "i16");
        w.scale = Some(0.1);
        assert_eq!(
            encode_registers(&w, &Value::Float(-12.3)),
            Ok(vec![(-123i16) as u16])
        );
        assert!(encode_registers(&w, &Value::Float(4000.0)).is_err());
    }

    #[test]
    fn strings_and_bits() {
        let p = point("holding:0", "string"); // length 4 in the helper
        assert_eq!(
            decode_registers(&p, &[0x4142, 0x4344, 0x4500, 0x0000]),
            Ok(Value::Text("ABCDE".into()))
        );
        assert_eq!(
            decode_registers(&p, &[0xFFFE, 0, 0, 0]),
            Err(CodecError::BadText)
        );
        let mut b = point("holding:0", "bool");
        b.bit = Some(3);
        assert_eq!(decode_registers(&b, &[0b1000]), Ok(Value::Bool(true)));
        assert_eq!(decode_registers(&b, &[0b0111]), Ok(Value::Bool(false)));
    }

    #[test]
    fn short_input_is_an_error() {
        let p = point("holding:0", "u32");
        assert_eq!(
            decode_registers(&p, &[1]),
            Err(CodecError::Short {
                expected: 2,
                got: 1
            })
        );
    }
}
