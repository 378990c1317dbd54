//! Declared commands with typed parameters, for drivers whose commands are not point writes
//! (serial instruments' command templates, external drivers). The profile declares each
//! command's parameters; the daemon checks every platform value against them before anything
//! reaches a driver, so a driver only ever sees values it was told to expect.

use std::collections::BTreeMap;

use serde_json::Value as Json;

use crate::Value;

/// Why a declaration or a platform's parameter was refused; one variant per cause. The text is
/// what the platform's answer says.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ParamError {
    #[error("not a valid regex: {0}")]
    Regex(String),
    #[error("unknown parameter type `{0}` (int, float, bool, string)")]
    UnknownType(String),
    #[error("`{0}` must be a whole number, got {1}")]
    NotWhole(String, String),
    #[error("`{name}` = {value} is outside {range}")]
    OutOfRange {
        name: String,
        value: String,
        range: String,
    },
    #[error("`{0}` must be a finite number")]
    NotFinite(String),
    #[error("`{0}` is longer than {1} characters")]
    TooLong(String, usize),
    #[error("`{0}` must be printable ASCII")]
    NotPrintable(String),
    #[error("`{0}` must match `{1}`")]
    NoMatch(String, String),
    #[error("`{0}` must be {1}, got {2}")]
    WrongType(String, &'static str, String),
    #[error("parameters must be an object, got {0}")]
    NotAnObject(String),
    #[error("command `{0}` has no parameter `{1}`")]
    Unknown(String, String),
    #[error("command `{0}` needs `{1}`")]
    Missing(String, String),
}

/// The type and bounds of one parameter.
#[derive(Debug, Clone, PartialEq)]
pub enum ParamKind {
    Int {
        min: Option<i64>,
        max: Option<i64>,
    },
    Float {
        min: Option<f64>,
        max: Option<f64>,
    },
    Bool,
    /// Printable ASCII only (it ends up on a wire), at most `max_len` characters, and the
    /// whole value matching `pattern` when one is declared.
    Text {
        max_len: usize,
        pattern: Option<Pattern>,
    },
}

/// A declared text parameter's pattern: a regex the *whole* value must match.
#[derive(Debug, Clone)]
pub struct Pattern(regex::Regex);

impl Pattern {
    /// Compile `src` anchored at both ends (`^(?:src)$`).
    pub fn new(src: &str) -> Result<Self, ParamError> {
        regex::Regex::new(&format!("^(?:{src})$"))
            .map(Pattern)
            .map_err(|e| ParamError::Regex(e.to_string()))
    }

    pub fn is_match(&self, s: &str) -> bool {
        self.0.is_match(s)
    }

    /// The pattern as declared (without the anchors).
    pub fn as_str(&self) -> &str {
        let s = self.0.as_str();
        s.strip_prefix("^(?:")
            .and_then(|s| s.strip_suffix(")$"))
            .unwrap_or(s)
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ParamSpec {
    pub name: String,
    pub kind: ParamKind,
}

/// A command a profile declares: the platform may invoke `service.name` with these parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct DeclaredCommand {
    pub service: String,
    pub name: String,
    pub params: Vec<ParamSpec>,
}

impl ParamKind {
    pub fn parse(s: &str) -> Result<Self, ParamError> {
        Ok(match s {
            "int" => ParamKind::Int {
                min: None,
                max: None,
            },
            "float" => ParamKind::Float {
                min: None,
                max: None,
            },
            "bool" => ParamKind::Bool,
            "string" => ParamKind::Text {
                max_len: 32,
                pattern: None,
            },
            other => return Err(ParamError::UnknownType(other.to_string())),
        })
    }
}

impl ParamSpec {
    /// Check one platform value; the error says why in words for the platform's answer.
    pub fn check(&self, v: &Json) -> Result<Value, ParamError> {
        let name = &self.name;
        let outside = |value: String, range: String| ParamError::OutOfRange {
            name: name.clone(),
            value,
            range,
        };
        match (&self.kind, v) {
            (ParamKind::Bool, Json::Bool(b)) => Ok(Value::Bool(*b)),
            (ParamKind::Int { min, max }, Json::Number(n)) => {
                let i = n
                    .as_i64()
                    .ok_or_else(|| ParamError::NotWhole(name.clone(), n.to_string()))?;
                if min.is_some_and(|m| i < m) || max.is_some_and(|m| i > m) {
                    return Err(outside(i.to_string(), range(min, max)));
                }
                Ok(Value::Int(i))
            }
            (ParamKind::Float { min, max }, Json::Number(n)) => {
                let f = n
                    .as_f64()
                    .filter(|f| f.is_finite())
                    .ok_or_else(|| ParamError::NotFinite(name.clone()))?;
                if min.is_some_and(|m| f < m) || max.is_some_and(|m| f > m) {
                    return Err(outside(f.to_string(), range(min, max)));
                }
                Ok(Value::Float(f))
            }
            (ParamKind::Text { max_len, pattern }, Json::String(s)) => {
                if s.len() > *max_len {
                    return Err(ParamError::TooLong(name.clone(), *max_len));
                }
                if !s.bytes().all(|b| (0x20..0x7f).contains(&b)) {
                    return Err(ParamError::NotPrintable(name.clone()));
                }
                if let Some(p) = pattern.as_ref().filter(|p| !p.is_match(s)) {
                    return Err(ParamError::NoMatch(name.clone(), p.as_str().to_string()));
                }
                Ok(Value::Text(s.clone()))
            }
            (kind, other) => Err(ParamError::WrongType(
                name.clone(),
                kind_name(kind),
                other.to_string(),
            )),
        }
    }
}

impl DeclaredCommand {
    /// Check the platform's parameters (a JSON object, or null for none): every declared one
    /// present and valid, nothing else.
    pub fn check(&self, paras: &Json) -> Result<BTreeMap<String, Value>, ParamError> {
        let empty = serde_json::Map::new();
        let paras = match paras {
            Json::Object(m) => m,
            Json::Null => &empty,
            other => return Err(ParamError::NotAnObject(other.to_string())),
        };
        if let Some(extra) = paras
            .keys()
            .find(|k| !self.params.iter().any(|p| &p.name == *k))
        {
            return Err(ParamError::Unknown(self.name.clone(), extra.clone()));
        }
        let mut out = BTreeMap::new();
        for p in &self.params {
            let v = paras
                .get(&p.name)
                .ok_or_else(|| ParamError::Missing(self.name.clone(), p.name.clone()))?;
            out.insert(p.name.clone(), p.check(v)?);
        }
        Ok(out)
    }
}

fn kind_name(k: &ParamKind) -> &'static str {
    match k {
        ParamKind::Int { .. } => "a whole number",
        ParamKind::Float { .. } => "a number",
        ParamKind::Bool => "true or false",
        ParamKind::Text { .. } => "a string",
    }
}

fn range<T: std::fmt::Display>(min: &Option<T>, max: &Option<T>) -> String {
    let show = |v: &Option<T>| v.as_ref().map(|v| v.to_string()).unwrap_or_default();
    format!("{}..{}", show(min), show(max))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cmd() -> DeclaredCommand {
        DeclaredCommand {
            service: "s".into(),
            name: "zero".into(),
            params: vec![
                ParamSpec {
                    name: "band".into(),
                    kind: ParamKind::Int {
                        min: Some(0),
                        max: Some(100),
                    },
                },
                ParamSpec {
                    name: "label".into(),
                    kind: ParamKind::Text {
                        max_len: 8,
                        pattern: Some(Pattern::new("[A-Z0-9]*").unwrap_or_else(|e| panic!("{e}"))),
                    },
                },
            ],
        }
    }

    fn paras(v: Json) -> Json {
        v
    }

    #[test]
    fn values_are_checked_against_the_declaration() {
        let c = cmd();
        let ok = c.check(&paras(json!({"band": 7, "label": "A1"})));
        assert_eq!(
            ok,
            Ok(BTreeMap::from([
                ("band".to_string(), Value::Int(7)),
                ("label".to_string(), Value::Text("A1".into()))
            ]))
        );
        for (bad, why) in [
            (json!({"band": 101, "label": "x"}), "outside 0..100"),
            (json!({"band": 1.5, "label": "x"}), "whole number"),
            (json!({"band": "1", "label": "x"}), "must be a whole number"),
            (json!({"label": "x"}), "needs `band`"),
            (
                json!({"band": 1, "label": "x", "more": 1}),
                "no parameter `more`",
            ),
            (json!({"band": 1, "label": "x\r\nT"}), "printable ASCII"),
            (json!({"band": 1, "label": "123456789"}), "longer than 8"),
            (
                json!({"band": 1, "label": "A;ZERO"}),
                "must match `[A-Z0-9]*`",
            ),
            (json!({"band": 1, "label": "a1"}), "must match"),
        ] {
            let e = c
                .check(&paras(bad.clone()))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(e.contains(why), "{bad}: {e}");
        }
        let f = ParamSpec {
            name: "f".into(),
            kind: ParamKind::Float {
                min: None,
                max: Some(1.0),
            },
        };
        assert_eq!(
            f.check(&json!(2.0)),
            Err(ParamError::OutOfRange {
                name: "f".into(),
                value: "2".into(),
                range: "..1".into()
            })
        );
        assert_eq!(
            c.check(&json!([1])),
            Err(ParamError::NotAnObject("[1]".into()))
        );
        let none = DeclaredCommand {
            params: Vec::new(),
            ..cmd()
        };
        assert_eq!(none.check(&Json::Null), Ok(BTreeMap::new()));
        assert_eq!(f.check(&json!(0.5)), Ok(Value::Float(0.5)));
    }
}
