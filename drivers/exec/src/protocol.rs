//! The exec-driver protocol: one JSON object per line in each direction. Messages from the
//! program are untrusted: every line is parsed into [`FromDriver`] with its values checked
//! (scalars only, finite numbers, known children), and anything else is a [`LineError`] that
//! the bus task counts and skips.

use std::collections::BTreeMap;

use fieldgate_driver::Value;
use serde::Deserialize;
use serde_json::{json, Value as Json};

/// What the program may send.
#[derive(Debug, Clone, PartialEq)]
pub enum FromDriver {
    Report {
        child: String,
        service: String,
        properties: BTreeMap<String, Value>,
        ts_ms: Option<u64>,
    },
    Status {
        child: String,
        online: bool,
        reason: String,
    },
    Result {
        id: String,
        outcome: Result<BTreeMap<String, BTreeMap<String, Value>>, (String, String)>,
    },
    Log {
        level: String,
        message: String,
    },
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LineError {
    #[error("not JSON: {0}")]
    Json(String),
    #[error("unknown message type `{0}`")]
    Type(String),
    #[error("missing or wrong field `{0}`")]
    Field(&'static str),
    #[error("unknown child `{0}`")]
    Child(String),
    #[error("property `{0}`: only numbers, booleans and strings are values")]
    Value(String),
    #[error("name `{0}` {1}")]
    Name(String, &'static str),
    #[error("line longer than {0} bytes")]
    TooLong(usize),
    #[error("the child already reported {0} distinct properties; new names are dropped")]
    TooManyProperties(usize),
}

#[derive(Deserialize)]
struct Raw {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    child: Option<String>,
    #[serde(default)]
    service: Option<String>,
    #[serde(default)]
    properties: Option<serde_json::Map<String, Json>>,
    #[serde(default)]
    ts: Option<u64>,
    #[serde(default)]
    online: Option<bool>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    ok: Option<bool>,
    #[serde(default)]
    values: Option<serde_json::Map<String, Json>>,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    level: Option<String>,
}

/// Longest text value accepted from a program.
const MAX_TEXT: usize = 1024;

fn value(name: &str, v: &Json) -> Result<Value, LineError> {
    match v {
        Json::Bool(b) => Ok(Value::Bool(*b)),
        Json::Number(n) => {
            if let Some(u) = n.as_u64() {
                Ok(Value::UInt(u))
            } else if let Some(i) = n.as_i64() {
                Ok(Value::Int(i))
            } else {
                n.as_f64()
                    .filter(|f| f.is_finite())
                    .map(Value::Float)
                    .ok_or_else(|| LineError::Value(name.into()))
            }
        }
        Json::String(s) if s.len() <= MAX_TEXT => Ok(Value::Text(s.clone())),
        _ => Err(LineError::Value(name.into())),
    }
}

fn props(m: &serde_json::Map<String, Json>) -> Result<BTreeMap<String, Value>, LineError> {
    m.iter()
        .map(|(k, v)| Ok((name(k)?, value(k, v)?)))
        .collect()
}

/// A property or service name, checked like the config checks its own.
fn name(n: &str) -> Result<String, LineError> {
    match fieldgate_driver::name_problem(n) {
        None => Ok(n.to_string()),
        Some(why) => Err(LineError::Name(n.chars().take(40).collect(), why)),
    }
}

/// Parse and check one line from the program.
pub fn parse_line(line: &[u8], known: &dyn Fn(&str) -> bool) -> Result<FromDriver, LineError> {
    let raw: Raw = serde_json::from_slice(line).map_err(|e| LineError::Json(e.to_string()))?;
    let child = |c: Option<String>| -> Result<String, LineError> {
        let c = c.ok_or(LineError::Field("child"))?;
        if known(&c) {
            Ok(c)
        } else {
            Err(LineError::Child(c))
        }
    };
    match raw.kind.as_str() {
        "report" => {
            let p = raw.properties.ok_or(LineError::Field("properties"))?;
            if p.is_empty() {
                return Err(LineError::Field("properties"));
            }
            Ok(FromDriver::Report {
                child: child(raw.child)?,
                service: name(raw.service.as_deref().unwrap_or("data"))?,
                properties: props(&p)?,
                ts_ms: raw.ts,
            })
        }
        "status" => Ok(FromDriver::Status {
            child: child(raw.child)?,
            online: raw.online.ok_or(LineError::Field("online"))?,
            reason: raw.reason.unwrap_or_default(),
        }),
        "result" => {
            let id = raw.id.ok_or(LineError::Field("id"))?;
            let outcome = if raw.ok.ok_or(LineError::Field("ok"))? {
                let mut out = BTreeMap::new();
                for (svc, v) in raw.values.unwrap_or_default() {
                    let Json::Object(m) = v else {
                        return Err(LineError::Field("values"));
                    };
                    out.insert(name(&svc)?, props(&m)?);
                }
                Ok(out)
            } else {
                Err((
                    raw.code.unwrap_or_else(|| "device_error".into()),
                    raw.message.unwrap_or_default(),
                ))
            };
            Ok(FromDriver::Result { id, outcome })
        }
        "log" => Ok(FromDriver::Log {
            level: raw.level.unwrap_or_else(|| "info".into()),
            message: raw.message.ok_or(LineError::Field("message"))?,
        }),
        other => Err(LineError::Type(other.chars().take(40).collect())),
    }
}

/// The first line fieldgate sends: the bus and its children with their options.
pub fn start_line(bus: &str, devices: &[(String, Json)]) -> String {
    let devices: Vec<Json> = devices
        .iter()
        .map(|(n, o)| json!({"node_id": n, "options": o}))
        .collect();
    json!({"type": "start", "bus": bus, "devices": devices}).to_string()
}

pub fn value_json(v: &Value) -> Json {
    v.to_json()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known(c: &str) -> bool {
        c == "t1"
    }

    #[test]
    fn good_lines() {
        let r = parse_line(
            br#"{"type":"report","child":"t1","service":"env","properties":{"t":21.5,"n":3,"ok":true,"s":"x"},"ts":1700000000000}"#,
            &known,
        );
        match r {
            Ok(FromDriver::Report {
                properties, ts_ms, ..
            }) => {
                assert_eq!(properties["t"], Value::Float(21.5));
                assert_eq!(properties["n"], Value::UInt(3));
                assert_eq!(ts_ms, Some(1_700_000_000_000));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse_line(br#"{"type":"result","id":"4","ok":false,"code":"busy","message":"m"}"#, &known),
            Ok(FromDriver::Result { outcome: Err((c, _)), .. }) if c == "busy"
        ));
    }

    #[test]
    fn bad_lines_say_why() {
        for (line, want) in [
            (&b"not json"[..], "not JSON"),
            (br#"{"type":"hello"}"#, "unknown message type"),
            (
                br#"{"type":"report","child":"x","properties":{"t":1}}"#,
                "unknown child `x`",
            ),
            (
                br#"{"type":"report","child":"t1","properties":{"t":[1]}}"#,
                "property `t`",
            ),
            (
                br#"{"type":"report","child":"t1","properties":{}}"#,
                "properties",
            ),
            (br#"{"type":"report","properties":{"t":1}}"#, "`child`"),
            (
                br#"{"type":"report","child":"t1","properties":{"temp/#+":1}}"#,
                "name `temp/#+`",
            ),
            (
                br#"{"type":"report","child":"t1","service":"a+b","properties":{"t":1}}"#,
                "name `a+b`",
            ),
            (br#"{"type":"status","child":"t1"}"#, "`online`"),
            (br#"{"type":"result","ok":true}"#, "`id`"),
            (
                br#"{"type":"report","child":"t1","properties":{"t":1e999}}"#,
                "not JSON",
            ),
        ] {
            let e = parse_line(line, &known)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(e.contains(want), "{}: {e}", String::from_utf8_lossy(line));
        }
    }
}
