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

/// `regs` as bytes in the point's byte and word order, written to `out` (two bytes per
/// register; `out` is exactly that long).
fn ordered_into(regs: &[u16], byte_order: Order, word_order: Order, out: &mut [u8]) {
    let n = regs.len();
    for (i, w) in regs.iter().enumerate() {
        let at = match word_order {
            Order::Big => i,
            Order::Little => n - 1 - i,
        };
        let [hi, lo] = w.to_be_bytes();
        let pair = match byte_order {
            Order::Big => [hi, lo],
            Order::Little => [lo, hi],
        };
        out[2 * at..2 * at + 2].copy_from_slice(&pair);
    }
}

fn ordered_bytes(regs: &[u16], byte_order: Order, word_order: Order) -> Vec<u8> {
    let mut out = vec![0u8; regs.len() * 2];
    ordered_into(regs, byte_order, word_order, &mut out);
    out
}

fn be<const N: usize>(b: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    if let Some(src) = b.get(..N) {
        a.copy_from_slice(src);
    }
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
    // Numbers are at most four registers: their bytes stay on the stack (this runs for every
    // polled point).
    let mut buf = [0u8; 8];
    let b: &[u8] = match buf.get_mut(..need * 2) {
        Some(b) if !matches!(p.dtype, DataType::String { .. }) => {
            ordered_into(regs, p.byte_order, p.word_order, b);
            b
        }
        _ => &[],
    };
    let raw = match p.dtype {
        DataType::Bool => Value::Bool(regs[0] >> p.bit.unwrap_or(0) & 1 == 1),
        DataType::String { .. } => {
            // Text runs in register order; only the byte order inside a register applies.
            let bytes = ordered_bytes(regs, p.byte_order, Order::Big);
            let s = std::str::from_utf8(&bytes).map_err(|_| CodecError::BadText)?;
            Value::Text(s.trim_end_matches(['\0', ' ']).to_string())
        }
        DataType::U16 => Value::UInt(u16::from_be_bytes(be(b)).into()),
        DataType::I16 => Value::Int(i16::from_be_bytes(be(b)).into()),
        DataType::U32 => Value::UInt(u32::from_be_bytes(be(b)).into()),
        DataType::I32 => Value::Int(i32::from_be_bytes(be(b)).into()),
        DataType::U64 => Value::UInt(u64::from_be_bytes(be(b))),
        DataType::I64 => Value::Int(i64::from_be_bytes(be(b))),
        DataType::F32 => Value::Float(f32::from_be_bytes(be(b)).into()),
        DataType::F64 => Value::Float(f64::from_be_bytes(be(b))),
    };
    scale(p, raw)
}

/// 2^64, exactly representable; the exclusive bound of every integer register type.
const TWO_POW_64: f64 = 18_446_744_073_709_551_616.0;

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
    if !raw.is_finite() {
        return Err(CodecError::NotFinite);
    }
    let out_of_range = || CodecError::OutOfRange(format!("{x}"));
    // The register value as an exact integer: whole numbers without scaling are taken as they
    // are (u64::MAX has no exact f64); anything else is rounded and must lie strictly inside
    // ±2^64, where every f64 is a whole number that i128 holds exactly.
    let int = || -> Result<i128, CodecError> {
        match (v, p.scale.is_none() && p.offset.is_none()) {
            (Value::Int(i), true) => Ok(i128::from(*i)),
            (Value::UInt(u), true) => Ok(i128::from(*u)),
            _ => {
                let r = raw.round();
                if r > -TWO_POW_64 && r < TWO_POW_64 {
                    Ok(r as i128)
                } else {
                    Err(out_of_range())
                }
            }
        }
    };
    let bytes: Vec<u8> = match p.dtype {
        DataType::U16 => u16::try_from(int()?)
            .map_err(|_| out_of_range())?
            .to_be_bytes()
            .to_vec(),
        DataType::I16 => i16::try_from(int()?)
            .map_err(|_| out_of_range())?
            .to_be_bytes()
            .to_vec(),
        DataType::U32 => u32::try_from(int()?)
            .map_err(|_| out_of_range())?
            .to_be_bytes()
            .to_vec(),
        DataType::I32 => i32::try_from(int()?)
            .map_err(|_| out_of_range())?
            .to_be_bytes()
            .to_vec(),
        DataType::U64 => u64::try_from(int()?)
            .map_err(|_| out_of_range())?
            .to_be_bytes()
            .to_vec(),
        DataType::I64 => i64::try_from(int()?)
            .map_err(|_| out_of_range())?
            .to_be_bytes()
            .to_vec(),
        DataType::F32 => {
            // The cast saturates to ±inf above f32::MAX: finite in f64 is not enough.
            let f = raw as f32;
            if !f.is_finite() {
                return Err(out_of_range());
            }
            f.to_be_bytes().to_vec()
        }
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

    /// Every register type against its edges: the limits go through exactly, one step beyond
    /// them, non-finite values and values far out of range are refused, never wrapped,
    /// truncated or saturated.
    #[test]
    fn writes_at_the_edges_of_every_type() {
        fn regs(dtype: &str, v: Value) -> Result<Vec<u16>, CodecError> {
            encode_registers(&point("holding:0", dtype), &v)
        }
        use Value::{Float, Int, UInt};
        let next_up = |f: f64| f64::from_bits(f.to_bits() + 1);
        let ok: &[(&str, Value, &[u16])] = &[
            ("u16", UInt(0), &[0]),
            ("u16", UInt(65535), &[0xFFFF]),
            ("u16", Float(-0.0), &[0]),
            ("i16", Int(-32768), &[0x8000]),
            ("i16", Int(32767), &[0x7FFF]),
            ("u32", UInt(u64::from(u32::MAX)), &[0xFFFF, 0xFFFF]),
            ("i32", Int(i64::from(i32::MIN)), &[0x8000, 0]),
            ("u64", UInt(u64::MAX), &[0xFFFF; 4]),
            (
                "u64",
                Float(TWO_POW_64 - 2048.0),
                &[0xFFFF, 0xFFFF, 0xFFFF, 0xF800],
            ),
            ("i64", Int(i64::MIN), &[0x8000, 0, 0, 0]),
            ("i64", Int(i64::MAX), &[0x7FFF, 0xFFFF, 0xFFFF, 0xFFFF]),
            ("i64", Float(-(2f64.powi(63))), &[0x8000, 0, 0, 0]),
            ("i64", Float(-0.0), &[0, 0, 0, 0]),
            ("f32", Float(f64::from(f32::MAX)), &[0x7F7F, 0xFFFF]),
            ("f32", Float(-0.0), &[0x8000, 0]),
            ("f64", Float(1e300), &[0x7E37, 0xE43C, 0x8800, 0x759C]),
        ];
        for (dtype, v, want) in ok {
            assert_eq!(regs(dtype, v.clone()), Ok(want.to_vec()), "{dtype} {v:?}");
        }
        let refused: &[(&str, Value)] = &[
            ("u16", UInt(65536)),
            ("u16", Int(-1)),
            ("u16", Float(-0.6)),
            ("i16", Int(32768)),
            ("i16", Int(-32769)),
            ("u32", UInt(u64::from(u32::MAX) + 1)),
            ("i32", Int(i64::from(i32::MAX) + 1)),
            ("u64", Float(TWO_POW_64)),
            ("u64", Float(next_up(TWO_POW_64))),
            ("u64", Int(-1)),
            ("i64", Float(2f64.powi(63))),
            ("i64", UInt(u64::MAX)),
            ("f32", Float(1e300)),
            ("f32", Float(next_up(f64::from(f32::MAX)) * 2.0)),
            ("f32", Float(-1e300)),
        ];
        for (dtype, v) in refused {
            assert!(
                matches!(regs(dtype, v.clone()), Err(CodecError::OutOfRange(_))),
                "{dtype} {v:?} gave {:?}",
                regs(dtype, v.clone())
            );
        }
        for dtype in ["u16", "i16", "u32", "i32", "u64", "i64", "f32", "f64"] {
            for v in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
                assert_eq!(
                    regs(dtype, Float(v)),
                    Err(CodecError::NotFinite),
                    "{dtype} {v}"
                );
            }
            let huge = regs(dtype, Float(1e300));
            assert!(
                dtype == "f64" || huge.is_err(),
                "{dtype} 1e300 gave {huge:?}"
            );
        }
        // A scale that takes a value beyond f64 is refused, not written as inf.
        let mut p = point("holding:0", "f64");
        p.scale = Some(1e-300);
        assert_eq!(
            encode_registers(&p, &Float(1e300)),
            Err(CodecError::NotFinite)
        );
    }
}
