//! Platform dialects: pure translation between domain events and (topic, payload), one file per
//! platform. No I/O here, so every message can be tested byte for byte against the platform's
//! documentation. The uplink drives a session through the [`Dialect`] trait — identity, what to
//! send after each CONNACK, child add/delete, packing queued records into messages, the
//! gateway's own properties, and parsing inbound messages into dialect-neutral [`Inbound`]
//! events and router [`Request`]s, each with a [`Respond`] that answers it in the platform's
//! words. Shared helpers (UTC calendar formatting) live in this file.

pub mod allthingstalk;
pub mod iotda;
pub mod oceanconnect;
pub mod sparkplug;
pub mod thingsboard;

use std::collections::BTreeMap;
use std::sync::Arc;

use fieldgate_driver::{CommandOutcome, Value};

use crate::command::{Reply, Request};
use crate::config::Platform;
use crate::queue::Record;

/// One message to publish (QoS 1 unless the dialect says otherwise).
#[derive(Debug, Clone, PartialEq)]
pub struct Out {
    pub topic: String,
    pub payload: Vec<u8>,
}

impl Out {
    pub fn new(topic: impl Into<String>, payload: impl Into<Vec<u8>>) -> Self {
        Out {
            topic: topic.into(),
            payload: payload.into(),
        }
    }
}

/// The MQTT identity of one connection attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct Connect {
    pub client_id: String,
    pub username: String,
    pub password: String,
    /// The last will, if the platform uses one.
    pub will: Option<Out>,
}

/// A configured child as the dialect needs to see it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ChildView {
    pub node_id: String,
    /// The platform's id, once known.
    pub device_id: Option<String>,
    pub product_id: String,
    pub name: String,
    pub online: Option<bool>,
    /// Its newest committed values (service, property, value) — possibly not yet delivered —
    /// and the time of the reading that brought the newest of them.
    pub latest: Vec<(String, String, Value)>,
    pub latest_ts_ms: Option<u64>,
    /// (service, property) the platform may write.
    pub writable: Vec<(String, String)>,
}

pub use crate::command::Respond;

/// For requests the platform expects no answer to: a failure is logged, nothing is sent.
pub fn log_only(what: &'static str, device: String) -> Respond {
    Arc::new(move |o| {
        if let CommandOutcome::Failed { message, .. } = o {
            tracing::warn!(device = %device, reason = %message, "{what} not executed");
        }
        None
    })
}

#[derive(Debug, Clone, PartialEq)]
pub struct Failed {
    pub id: String,
    pub error_code: String,
    pub error_msg: String,
}

/// What an inbound message means, whatever the platform.
pub enum Inbound {
    /// Children the platform now knows, node id → platform id.
    Added {
        devices: Vec<(String, String)>,
        failed: Vec<Failed>,
        version: Option<i64>,
    },
    /// Children the platform deleted on its own, by platform id.
    Deleted {
        device_ids: Vec<String>,
        version: Option<i64>,
    },
    /// Answer to our delete request.
    DeleteResult {
        deleted: Vec<String>,
        failed: Vec<Failed>,
    },
    /// Status update answer; only failures matter.
    StatusResult { failed: Vec<Failed> },
    /// A request for a child, to route to its driver and answer with `respond`.
    Request { request: Request, respond: Respond },
    /// One of the gateway's own operations (`ping`, `status`, `logs`, …; `remote`), to run if
    /// `[remote] allow` lists it and answer with `respond`.
    Operation {
        request_id: String,
        name: String,
        paras: serde_json::Value,
        respond: OpRespond,
    },
    /// The platform renamed a child (logged: the config owns names).
    Renamed { from: String, to: String },
    /// The platform asks for every birth certificate again (Sparkplug rebirth).
    Rebirth,
    /// A platform notification that wants an acknowledgement, and what it says.
    Notified { inbound: Box<Inbound>, ack: Reply },
    /// Understood but nothing to do.
    Ignored(String),
}

/// The outcome of one of the gateway's own operations: its result, or why not.
pub type OpResult = Result<serde_json::Value, (fieldgate_driver::ErrorCode, String)>;

/// Answers one gateway operation in the dialect's words.
pub type OpRespond = std::sync::Arc<dyn Fn(&OpResult) -> Option<Reply> + Send + Sync>;

/// An inbound message that could not be read; `respond` answers it when it was a request.
pub struct ParseError {
    pub message: String,
    pub respond: Option<Respond>,
}

impl ParseError {
    pub fn new(message: impl Into<String>) -> Self {
        ParseError {
            message: message.into(),
            respond: None,
        }
    }
}

/// One platform's protocol, as the uplink uses it. Implementations are pure apart from their
/// own counters (event ids, sequence numbers).
pub trait Dialect: Send + Sync {
    /// Client id, credentials and will for a connection attempt at `now_ms`.
    fn connect(&mut self, secret: &str, now_ms: u64) -> Connect;
    /// Topic filters to subscribe after every CONNACK.
    fn subscriptions(&self) -> Vec<String>;
    /// Does the platform assign child ids in answer to an add request (IoTDA)? Otherwise a
    /// child is known by its node id as soon as it is announced.
    fn assigns_ids(&self) -> bool;
    /// After each CONNACK, before the queue drains: sync requests, status replay, announcements.
    fn on_connect(&mut self, children: &[ChildView], version: i64, now_ms: u64) -> Vec<Out>;
    /// Ask the platform to add (or announce) these children.
    fn add(&mut self, children: &[ChildView], now_ms: u64) -> Vec<Out>;
    /// Ask the platform to delete (or forget) these children, by platform id.
    fn delete(&mut self, device_ids: &[String], now_ms: u64) -> Vec<Out>;
    /// Records one message carries at most (sizes store scans).
    fn batch_limit(&self) -> usize;
    /// Pack the leading records (same kind, in order; ids are platform ids) into messages —
    /// usually one; none when the platform has no such message (the records are then done) —
    /// within `max_bytes` where possible. Returns them and how many records they carry (≥ 1).
    fn pack(
        &mut self,
        recs: &[(u64, String, Record)],
        max_bytes: usize,
        now_ms: u64,
    ) -> (Vec<Out>, usize);
    /// The gateway's own properties.
    fn own(&mut self, props: &BTreeMap<String, Value>, now_ms: u64) -> Vec<Out>;
    /// Parse one inbound message on our subscriptions.
    fn parse(&mut self, topic: &str, payload: &[u8]) -> Result<Inbound, ParseError>;
    /// Messages to publish before a deliberate disconnect (a clean DISCONNECT does not fire
    /// the will).
    fn on_shutdown(&mut self, _now_ms: u64) -> Vec<Out> {
        Vec::new()
    }
    /// Data must wait (queued, durably): Sparkplug while its Primary Host is not online. The
    /// session keeps running; packing resumes when this turns false.
    fn held(&self) -> bool {
        false
    }
    /// The gateway's own properties as they are now, just before `on_connect`: births carry
    /// them. Nothing is sent.
    fn prime_own(&mut self, _props: &BTreeMap<String, Value>) {}
    /// The last attempt ended before its CONNECT could reach the broker (DNS, TCP or TLS
    /// failed): a dialect that counts CONNECTs (Sparkplug's bdSeq) takes the count back.
    fn connect_unsent(&mut self) {}
    /// State the dialect keeps in the store across restarts (meta key and value).
    fn state(&self) -> Option<(&'static str, String)> {
        None
    }
    /// Restore the `state` kept by a previous run, at start.
    fn restore(&mut self, _value: &str) {}
    /// Where the platform's sub-device version is persisted (IoTDA), if it has one.
    fn version_key(&self) -> Option<&'static str> {
        None
    }
    /// Publish at QoS 0 (Sparkplug's `qos = 0`) instead of QoS 1. Each message is then proven
    /// by the SUBACK of a later SUBSCRIBE of `barrier_topic` (see `uplink::delivery`); the
    /// goodbye messages of `on_shutdown` stay QoS 1.
    fn qos0(&self) -> bool {
        false
    }
    /// An already subscribed topic that may be subscribed again at any time without effect
    /// (nothing retained on it): the barrier of QoS 0 publishes.
    fn barrier_topic(&self) -> Option<String> {
        None
    }
}

/// The dialect the config names.
pub fn for_platform(p: &Platform) -> Box<dyn Dialect> {
    match p.dialect {
        crate::config::Dialect::Iotda => {
            Box::new(iotda::IotDa::new(&p.device_id, p.check_timestamp))
        }
        crate::config::Dialect::ThingsBoard => {
            let auth = match (&p.username, &p.client_auth) {
                (Some(u), _) => thingsboard::Auth::Basic {
                    username: u.clone(),
                },
                (None, Some(_)) => thingsboard::Auth::X509,
                (None, None) => thingsboard::Auth::Token,
            };
            Box::new(thingsboard::ThingsBoard::new(&p.device_id, auth).service_keys(p.service_keys))
        }
        crate::config::Dialect::AllThingsTalk => {
            Box::new(allthingstalk::AllThingsTalk::new(&p.account, &p.device_id))
        }
        crate::config::Dialect::Sparkplug => Box::new(
            sparkplug::Sparkplug::new(&p.group_id, &p.device_id)
                .primary_host(p.primary_host_id.clone())
                .aliases(p.aliases)
                .at_qos0(p.qos == 0),
        ),
        crate::config::Dialect::OceanConnect => Box::new(oceanconnect::OceanConnect::new(
            &p.device_id,
            p.check_timestamp,
        )),
    }
}

/// UTC calendar fields of a Unix time in milliseconds: (year, month, day, hour, minute, second, ms).
pub fn utc(ts_ms: u64) -> (i64, u32, u32, u32, u32, u32, u32) {
    let secs = (ts_ms / 1000) as i64;
    let ms = (ts_ms % 1000) as u32;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400) as u32;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = if m <= 2 { y + 1 } else { y };
    (y, m, d, rem / 3600, rem % 3600 / 60, rem % 60, ms)
}

#[cfg(test)]
mod tests {
    use super::utc;

    #[test]
    fn calendar() {
        assert_eq!(utc(0), (1970, 1, 1, 0, 0, 0, 0));
        // 2025-04-14T01:02:03.456Z
        assert_eq!(utc(1_744_592_523_456), (2025, 4, 14, 1, 2, 3, 456));
        // leap day 2024-02-29T23:59:59Z
        assert_eq!(utc(1_709_251_199_000), (2024, 2, 29, 23, 59, 59, 0));
    }
}
