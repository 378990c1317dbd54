//! Byte sizes in the config: a whole number of bytes, or a string such as `"256MiB"`,
//! `"64 KiB"`, `"1GB"` (binary KiB/MiB/GiB and decimal kB/MB/GB).

use std::fmt;

use serde::{de, Deserialize, Deserializer};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Size(pub u64);

/// Why a text is not a size; one variant per cause, each naming the text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error("`{0}` is not a size (e.g. 256MiB, 64KiB, 1GB)")]
    NotASize(String),
    #[error("unknown size unit `{unit}` in `{text}` (B, KiB, MiB, GiB, kB, MB, GB)")]
    UnknownUnit { unit: String, text: String },
    #[error("`{0}` is too large")]
    TooLarge(String),
}

impl Size {
    pub fn parse(s: &str) -> Result<u64, SizeError> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let n: u64 = t[..split]
            .parse()
            .map_err(|_| SizeError::NotASize(s.to_string()))?;
        let mult: u64 = match t[split..].trim() {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "kB" | "KB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            u => {
                return Err(SizeError::UnknownUnit {
                    unit: u.to_string(),
                    text: s.to_string(),
                })
            }
        };
        n.checked_mul(mult)
            .ok_or_else(|| SizeError::TooLarge(s.to_string()))
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Size;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size in bytes, or a string such as \"256MiB\"")
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Size, E> {
                u64::try_from(n)
                    .map(Size)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Size, E> {
                Ok(Size(n))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Size, E> {
                Size::parse(s).map(Size).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::{Size, SizeError};

    #[test]
    fn forms() {
        assert_eq!(Size::parse("256MiB"), Ok(256 << 20));
        assert_eq!(Size::parse("64 KiB"), Ok(64 << 10));
        assert_eq!(Size::parse("1GB"), Ok(1_000_000_000));
        assert_eq!(Size::parse("4096"), Ok(4096));
        assert_eq!(Size::parse("lots"), Err(SizeError::NotASize("lots".into())));
        assert_eq!(
            Size::parse("5 TB"),
            Err(SizeError::UnknownUnit {
                unit: "TB".into(),
                text: "5 TB".into()
            })
        );
        assert_eq!(
            Size::parse("99999999999GB"),
            Err(SizeError::TooLarge("99999999999GB".into()))
        );
    }
}
