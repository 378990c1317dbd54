//! Human durations in the config: `"500ms"`, `"1s"`, `"2m"`, `"1h"`, `"7d"`, or a combination
//! such as `"1m30s"`. A bare number is refused: a gateway config is read by people in a hurry,
//! and `timeout = 5` is ambiguous. No duration may exceed [`MAX`] (ten years): larger ones
//! are refused by `check` rather than overflowing an `Instant` or a millisecond count later.

use std::fmt;
use std::time::Duration;

use serde::{de, Deserialize, Deserializer};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub Duration);

/// The longest duration any key accepts: ten years (3650 days).
pub const MAX: Duration = Duration::from_secs(3650 * 86_400);

/// Why a text is not a duration; one variant per cause, each naming the text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("empty duration")]
    Empty,
    #[error("`{0}` is not a duration (use e.g. 500ms, 1s, 2m, 1h, 7d)")]
    NotADuration(String),
    #[error("`{0}`: number too large")]
    NumberTooLarge(String),
    #[error("`{0}` needs a unit (ms, s, m, h, d)")]
    NoUnit(String),
    #[error("unknown unit `{unit}` in `{text}` (use ms, s, m, h, d)")]
    UnknownUnit { unit: String, text: String },
    #[error("`{0}` is longer than any setting allows (at most 3650d)")]
    TooLong(String),
}

impl Dur {
    pub fn parse(s: &str) -> Result<Duration, DurationError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(DurationError::Empty);
        }
        let mut total = Duration::ZERO;
        let mut rest = s;
        while !rest.is_empty() {
            let digits = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            if digits == 0 {
                return Err(DurationError::NotADuration(s.to_string()));
            }
            let n: u64 = rest[..digits]
                .parse()
                .map_err(|_| DurationError::NumberTooLarge(s.to_string()))?;
            rest = &rest[digits..];
            let unit_len = rest
                .find(|c: char| c.is_ascii_digit())
                .unwrap_or(rest.len());
            let unit = &rest[..unit_len];
            rest = &rest[unit_len..];
            let d = match unit {
                "ms" => Duration::from_millis(n),
                "s" => Duration::from_secs(n),
                "m" | "min" => Duration::from_secs(n.saturating_mul(60)),
                "h" => Duration::from_secs(n.saturating_mul(3600)),
                "d" => Duration::from_secs(n.saturating_mul(86400)),
                "" => return Err(DurationError::NoUnit(s.to_string())),
                u => {
                    return Err(DurationError::UnknownUnit {
                        unit: u.to_string(),
                        text: s.to_string(),
                    })
                }
            };
            total = total.saturating_add(d);
            if total > MAX {
                return Err(DurationError::TooLong(s.to_string()));
            }
        }
        Ok(total)
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string such as \"500ms\", \"1s\", \"2m\"")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Dur, E> {
                Dur::parse(s).map(Dur).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        assert_eq!(Dur::parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(Dur::parse("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(Dur::parse("7d"), Ok(Duration::from_secs(7 * 86400)));
        assert_eq!(Dur::parse("5"), Err(DurationError::NoUnit("5".into())));
        assert_eq!(
            Dur::parse("fast"),
            Err(DurationError::NotADuration("fast".into()))
        );
        assert!(DurationError::NoUnit("5".into())
            .to_string()
            .contains("needs a unit"));
        assert_eq!(Dur::parse("3650d"), Ok(MAX));
        for huge in [
            "18446744073709551615s",
            "18446744073709552s",
            "3651d",
            "3650d1ms",
        ] {
            assert!(
                Dur::parse(huge).is_err_and(|e| e.to_string().contains("at most 3650d")),
                "{huge}"
            );
        }
        assert_eq!(
            Dur::parse("3 weeks"),
            Err(DurationError::UnknownUnit {
                unit: " weeks".into(),
                text: "3 weeks".into()
            })
        );
    }
}
