//! The driver contract: the only thing a fieldgate driver and the daemon share.
//!
//! A driver owns one *bus* (a TCP endpoint, a serial port, a BLE adapter, a child process) and
//! every child device on it. The daemon builds it from configuration and runs it as one task
//! with a [`DriverContext`]: the driver pushes [`Event`]s (readings and status changes) into a
//! channel bounded by messages and by points ([`Events`]) — so a slow store applies
//! back-pressure instead of growing memory — and
//! answers each [`CommandRequest`] it receives with a [`CommandOutcome`] before the request's
//! deadline. Nothing in here knows about MQTT, SQLite or any platform.

mod deadline;
mod episode;
mod events;
mod health;
pub mod params;
mod properties;
mod schedule;
#[cfg(feature = "testing")]
pub mod testing;

pub use deadline::Deadline;
pub use episode::Episode;
pub use events::{events, Events, EventsRx, TrySendError};
pub use health::{named, send_reports, send_status, Health, SkipCounters};
pub use params::{DeclaredCommand, ParamError, ParamKind, ParamSpec, Pattern};
pub use properties::Properties;
pub use schedule::Schedule;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};

/// A typed value read from (or to be written to) a device point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Value {
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Text(String),
}

impl Value {
    /// The value as JSON, the form every platform dialect starts from.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Bool(b) => serde_json::Value::Bool(*b),
            Value::Int(i) => serde_json::Value::from(*i),
            Value::UInt(u) => serde_json::Value::from(*u),
            Value::Float(f) => serde_json::Number::from_f64(*f)
                .map(serde_json::Value::Number)
                .unwrap_or(serde_json::Value::Null),
            Value::Text(s) => serde_json::Value::String(s.clone()),
        }
    }

    /// Append the value as JSON text — the same text `to_json()` would print, without
    /// building a `serde_json::Value` (the uplink's hot path).
    pub fn write_json(&self, out: &mut Vec<u8>) {
        use std::io::Write;
        // Writing to a Vec cannot fail.
        let _ = match self {
            Value::Bool(b) => out.write_all(if *b { b"true" } else { b"false" }),
            Value::Int(i) => out.write_all(itoa::Buffer::new().format(*i).as_bytes()),
            Value::UInt(u) => out.write_all(itoa::Buffer::new().format(*u).as_bytes()),
            Value::Float(f) if f.is_finite() => {
                serde_json::to_writer(&mut *out, f).map_err(std::io::Error::other)
            }
            Value::Float(_) => out.write_all(b"null"),
            Value::Text(s) => serde_json::to_writer(&mut *out, s).map_err(std::io::Error::other),
        };
    }
}

/// Append `s` as a JSON string (quoted, escaped as serde_json escapes: control characters,
/// `"` and `\`). A name needs no escape, mostly: then it is copied as it is.
pub fn write_json_str(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

/// A property's name in a report. Shared, not copied: a driver makes each of its names once
/// and every reading hands out the same one (a reference count, not an allocation per point).
pub type Name = std::sync::Arc<str>;

/// One sample of one service of one child: the unit the queue stores and the uplink sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The child's node id (stable, chosen in the config).
    pub child: String,
    /// The platform service (group of properties) this sample belongs to.
    pub service: String,
    /// Property name → value, in a stable order.
    pub properties: Properties,
    /// When the sample was taken, milliseconds since the Unix epoch (UTC).
    pub ts_ms: u64,
}

/// A change of a child's health as its driver sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceStatus {
    pub child: String,
    pub online: bool,
    /// Why (for OFFLINE: timeout, connection refused, exception code …); for the operator.
    pub reason: String,
    pub ts_ms: u64,
}

/// What a driver produces.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Report(Report),
    Status(DeviceStatus),
    /// Running totals of what the bus skipped (noise, bad frames, malformed lines), for
    /// `fieldgate status`; not queued. Sent when they change, at most about once a second.
    Counters {
        bus: String,
        counters: BTreeMap<String, u64>,
    },
}

/// A request from the platform, already resolved to one child and checked against its profile
/// by the router: the driver only executes it.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Write these properties of this service.
    SetProperties {
        child: String,
        service: String,
        properties: BTreeMap<String, Value>,
    },
    /// Read the current values of one service (or all services when `service` is `None`).
    GetProperties {
        child: String,
        service: Option<String>,
    },
    /// A named command declared in the child's profile.
    Invoke {
        child: String,
        service: String,
        name: String,
        params: BTreeMap<String, Value>,
    },
}

impl Command {
    pub fn child(&self) -> &str {
        match self {
            Command::SetProperties { child, .. }
            | Command::GetProperties { child, .. }
            | Command::Invoke { child, .. } => child,
        }
    }
}

/// The answer to a command.
#[derive(Debug, Clone, PartialEq)]
pub enum CommandOutcome {
    /// Done; the values read back or returned, per service.
    Done(BTreeMap<String, BTreeMap<String, Value>>),
    /// Refused or failed, with a stable machine code and a message for humans.
    Failed { code: ErrorCode, message: String },
}

/// Why a command failed. Dialects map these to their platform's result codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    UnknownChild,
    UnknownPoint,
    NotWritable,
    BadValue,
    Offline,
    Timeout,
    DeviceError,
    Unsupported,
    Busy,
}

/// A command travelling to a driver, with where to put the answer and when it stops mattering.
#[derive(Debug)]
pub struct CommandRequest {
    pub command: Command,
    pub deadline: Instant,
    pub reply: oneshot::Sender<CommandOutcome>,
}

/// Everything a running driver gets from the daemon.
#[derive(Debug)]
pub struct DriverContext {
    /// Where readings and status changes go. Bounded by messages and by points:
    /// `send().await` waits when the store lags.
    pub events: Events,
    /// Commands for this bus's children.
    pub commands: mpsc::Receiver<CommandRequest>,
    /// Becomes `true` when the driver must stop (shutdown or reload).
    pub shutdown: watch::Receiver<bool>,
}

/// A driver failure the supervisor can act on (restart with backoff, report).
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("driver configuration: {0}")]
    Config(String),
    #[error("driver I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("the daemon side of the driver channels is gone")]
    ChannelClosed,
}

/// The future a driver runs as.
pub type DriverFuture = Pin<Box<dyn Future<Output = Result<(), DriverError>> + Send>>;

/// A driver instance for one bus.
pub trait Driver: Send {
    /// The bus name from the config, for logs and status.
    fn bus(&self) -> &str;
    /// Run until `ctx.shutdown` turns true. Must not return early on device errors: those
    /// become OFFLINE statuses; an `Err` means the bus itself cannot run.
    fn run(self: Box<Self>, ctx: DriverContext) -> DriverFuture;
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as u64
}

/// Longest property or service name, in bytes.
pub const MAX_NAME: usize = 128;

/// Why `name` cannot be a property or service name, if it cannot. Names end up in JSON, in
/// MQTT topics (AllThingsTalk assets) and in terminals, so one rule holds for every driver and
/// dialect: 1–128 bytes, no MQTT wildcard or level separator (`+`, `#`, `/`), no control
/// Text from outside (a driver program's log line, a device's reason, a platform's message)
/// with its control characters escaped (`\n`, `\u{1b}`): it cannot forge a log line or drive
/// an admin's terminal.
pub fn escape_controls(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// characters (NUL included).
pub fn name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("is empty")
    } else if name.len() > MAX_NAME {
        Some("is longer than 128 bytes")
    } else if name.contains(['+', '#', '/']) {
        Some("contains `+`, `#` or `/`, which cannot appear in an MQTT topic level")
    } else if name.chars().any(char::is_control) {
        Some("contains a control character")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(name_problem("temp_1.avg"), None);
        assert_eq!(name_problem("Temperatur °C"), None);
        for bad in ["", "temp/#+", "a+b", "a#", "x/y", "nul\0", "tab\t"] {
            assert!(name_problem(bad).is_some(), "{bad:?}");
        }
        assert!(name_problem(&"x".repeat(129)).is_some());
    }

    #[test]
    fn written_json_is_what_to_json_prints() {
        for v in [
            Value::Bool(true),
            Value::Bool(false),
            Value::Int(i64::MIN),
            Value::Int(i64::MAX),
            Value::Int(0),
            Value::UInt(u64::MAX),
            Value::UInt(0),
            Value::Float(-230.5),
            Value::Float(1e300),
            Value::Float(0.1),
            Value::Float(-0.0),
            Value::Float(f64::NAN),
            Value::Float(f64::INFINITY),
            Value::Text("a \"q\" \\ \u{1} ü".into()),
        ] {
            let mut out = Vec::new();
            v.write_json(&mut out);
            assert_eq!(
                String::from_utf8_lossy(&out),
                v.to_json().to_string(),
                "{v:?}"
            );
        }
    }

    #[test]
    fn written_strings_are_what_serde_json_prints() {
        for s in [
            "",
            "p01",
            "a b",
            "q\"",
            "back\\slash",
            "\u{1}",
            "\u{1f}",
            "\u{7f}",
            "ü✓",
            "\n",
        ] {
            let mut out = Vec::new();
            write_json_str(&mut out, s);
            assert_eq!(
                String::from_utf8_lossy(&out),
                serde_json::to_string(s).unwrap_or_default(),
                "{s:?}"
            );
        }
    }

    #[test]
    fn value_json_forms() {
        assert_eq!(Value::Int(-3).to_json(), serde_json::json!(-3));
        assert_eq!(Value::Float(1.5).to_json(), serde_json::json!(1.5));
        assert_eq!(Value::Float(f64::NAN).to_json(), serde_json::Value::Null);
        assert_eq!(Value::Bool(true).to_json(), serde_json::json!(true));
        assert_eq!(Value::Text("a".into()).to_json(), serde_json::json!("a"));
    }
}
