//! The gateway's own operations, asked for by the platform (`[remote] allow`): `ping`,
//! `status`, `logs`, `config_get`, `config_apply`, `restart_bus`, `restart`. Dialects parse a
//! request addressed to the gateway itself into an [`Asked`]; the daemon, which owns the
//! config, the buses and the uplink, runs it. What needs no daemon state lives here: reading
//! the parameters, the `logs` query, the redaction of the config text, and the size caps that
//! keep every answer within one MQTT message.

use serde_json::{json, Value as Json};
use tokio::sync::mpsc;
use tracing::Level;

use crate::command::Reply;
use crate::uplink::dialect::{OpRespond, OpResult};
use fieldgate_driver::ErrorCode;

/// Bytes of an answer's result at most (status, logs, config): well inside any platform's
/// message limit.
pub const MAX_RESULT: usize = 48 * 1024;
/// Log lines one `logs` answer returns at most, and by default.
pub const MAX_LOG_LINES: usize = 500;
pub const DEFAULT_LOG_LINES: usize = 100;

/// One operation the platform asked for, with how to answer it.
pub struct Asked {
    /// The platform's id of the request (logged with the outcome).
    pub request_id: String,
    pub name: String,
    pub paras: Json,
    pub respond: OpRespond,
    pub reply: mpsc::Sender<Reply>,
}

impl std::fmt::Debug for Asked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Asked")
            .field("request_id", &self.request_id)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Asked {
    /// Send the answer (dropped when the session has gone: the platform asks again).
    pub async fn answer(&self, r: &OpResult) {
        if let Some(reply) = (self.respond)(r) {
            let _ = self.reply.send(reply).await;
        }
    }
}

fn bad(message: impl Into<String>) -> (ErrorCode, String) {
    (ErrorCode::BadValue, message.into())
}

/// `logs`: `{"lines": N (≤ 500, default 100), "level": "info", "since_ms": T}` → the daemon's
/// recent lines, oldest first, capped to `MAX_RESULT` bytes (the oldest dropped first).
pub fn logs(paras: &Json) -> OpResult {
    let n = match paras.get("lines") {
        None | Some(Json::Null) => DEFAULT_LOG_LINES,
        Some(v) => match v.as_u64() {
            Some(n) if (1..=MAX_LOG_LINES as u64).contains(&n) => n as usize,
            _ => return Err(bad(format!("`lines` must be 1..={MAX_LOG_LINES}"))),
        },
    };
    let level = match paras.get("level").and_then(Json::as_str) {
        None => Level::INFO,
        Some(l) => l
            .parse::<Level>()
            .map_err(|_| bad("`level` must be error, warn, info, debug or trace"))?,
    };
    let since = match paras.get("since_ms") {
        None | Some(Json::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .ok_or_else(|| bad("`since_ms` must be a time in ms since the epoch"))?,
        ),
    };
    let lines = crate::logring::tail(n, level, since);
    let mut out: Vec<String> = lines
        .iter()
        .map(|l| {
            let (_, _, _, h, mi, s, ms) = crate::uplink::dialect::utc(l.ts_ms);
            format!("{h:02}:{mi:02}:{s:02}.{ms:03} {}", l.text)
        })
        .collect();
    // The oldest lines go first when the answer would be too large.
    let mut size: usize = out.iter().map(|l| l.len() + 4).sum();
    let mut drop = 0;
    while size > MAX_RESULT && drop < out.len() {
        size -= out[drop].len() + 4;
        drop += 1;
    }
    let truncated = drop > 0;
    out.drain(..drop);
    Ok(json!({"lines": out, "count": out.len(), "truncated": truncated}))
}

/// `status` capped to `MAX_RESULT`: the children's latest values go first, then children
/// from the end; `truncated` says so.
pub fn cap_status(mut status: Json) -> Json {
    let size = |j: &Json| j.to_string().len();
    if size(&status) <= MAX_RESULT {
        return status;
    }
    if let Some(children) = status.get_mut("children").and_then(Json::as_array_mut) {
        for c in children.iter_mut() {
            if let Some(o) = c.as_object_mut() {
                o.remove("last_values");
            }
        }
    }
    while size(&status) > MAX_RESULT {
        let popped = status
            .get_mut("children")
            .and_then(Json::as_array_mut)
            .and_then(Vec::pop);
        if popped.is_none() {
            break;
        }
    }
    if let Some(o) = status.as_object_mut() {
        o.insert("truncated".into(), Json::Bool(true));
    }
    status
}

/// The config text with every secret replaced: inline `secret`s and exec programs'
/// environment values (they often carry credentials). Paths (`secret_file`) stay.
pub fn redact(text: &str) -> String {
    fn walk(v: &mut toml::Value, under_env: bool) {
        match v {
            toml::Value::Table(t) => {
                for (k, val) in t.iter_mut() {
                    if k == "secret" || under_env {
                        *val = toml::Value::String("<redacted>".into());
                    } else {
                        walk(val, k == "env");
                    }
                }
            }
            toml::Value::Array(a) => {
                for val in a.iter_mut() {
                    walk(val, false);
                }
            }
            _ => {}
        }
    }
    match text.parse::<toml::Table>() {
        Ok(t) => {
            let mut v = toml::Value::Table(t);
            walk(&mut v, false);
            toml::to_string(&v).unwrap_or_else(|_| "# (cannot be shown)\n".into())
        }
        Err(_) => "# (cannot be shown)\n".into(),
    }
}

/// The `toml` text of a `config_apply`.
pub fn config_text(paras: &Json) -> Result<String, (ErrorCode, String)> {
    match paras.get("toml").and_then(Json::as_str) {
        Some(t) if t.len() <= 1 << 20 => Ok(t.to_string()),
        Some(_) => Err(bad("the config is larger than 1 MiB")),
        None => Err(bad(
            "config_apply needs `toml`: the whole new config file as a string",
        )),
    }
}

/// A refused config: every problem with its position, as `check` prints them.
pub fn refused(e: &crate::config::ConfigError) -> (ErrorCode, String) {
    let lines: Vec<String> = e
        .diagnostics
        .iter()
        .map(|d| format!("{}:{}: {}: {}", d.line, d.column, d.path, d.message))
        .collect();
    bad(format!(
        "config refused, nothing changed ({} problem{}): {}",
        lines.len(),
        if lines.len() == 1 { "" } else { "s" },
        lines.join("; ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_leaves_no_secret() {
        let text = r#"
[platform]
dialect = "iotda"
host = "h"
device_id = "gw"
secret = "hunter2"
secret_file = "/etc/fieldgate/secret"

[[bus]]
name = "x"
driver = "exec"
command = ["/usr/bin/prog"]
env = { API_TOKEN = "tok-123", MODE = "a" }
"#;
        let r = redact(text);
        assert!(!r.contains("hunter2") && !r.contains("tok-123"), "{r}");
        assert!(
            r.contains("/etc/fieldgate/secret") && r.contains("/usr/bin/prog"),
            "{r}"
        );
        assert_eq!(redact("not = [toml"), "# (cannot be shown)\n");
    }

    #[test]
    fn logs_parameters_are_checked() {
        assert!(logs(&json!({"lines": 0})).is_err());
        assert!(logs(&json!({"lines": 501})).is_err());
        assert!(logs(&json!({"level": "loud"})).is_err());
        assert!(logs(&json!({"since_ms": "yesterday"})).is_err());
        let ok = logs(&json!({})).unwrap_or_else(|e| panic!("{e:?}"));
        assert!(ok["lines"].is_array());
    }

    #[test]
    fn a_large_status_is_capped() {
        let children: Vec<Json> = (0..2000)
            .map(|i| json!({"node_id": format!("c{i}"), "last_values": {"x": "y".repeat(100)}}))
            .collect();
        let s = cap_status(json!({"children": children}));
        assert!(s.to_string().len() <= MAX_RESULT);
        assert_eq!(s["truncated"], true);
        let small = json!({"children": []});
        assert_eq!(cap_status(small.clone()), small);
    }
}
