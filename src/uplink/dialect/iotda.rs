//! Huawei Cloud IoTDA, gateway side (PROTOCOLS.md §1).
//!
//! The gateway connects as itself (client id `{device_id}_0_{0|1}_{YYYYMMDDHH}`, password the
//! HMAC-SHA256 of the device secret keyed by that UTC hour) and speaks for its children inside
//! payloads: `$sub_device_manager` events on `sys/events/up|down` for add/delete/status,
//! batched property reports on `sys/gateway/sub_devices/properties/report`, and commands on
//! `sys/commands/request_id={id}`. Everything here is a pure function of its inputs.

use std::collections::BTreeMap;

use fieldgate_driver::{CommandOutcome, ErrorCode, Report, Value};
use serde::Deserialize;
use serde_json::{json, Map, Value as Json};

use std::sync::Arc;

use super::{utc, ChildView, Connect, Out, ParseError, Respond};
use crate::command::{Reply, Request};
use crate::queue::Record;

/// IoTDA's documented limits.
pub const MAX_REPORT_DEVICES: usize = 100;
pub const MAX_STATUS_DEVICES: usize = 100;
pub const MAX_ADD_DEVICES: usize = 50;
/// The C SDK's limit of services per device in one report.
pub const MAX_SERVICES_PER_DEVICE: usize = 10;
/// Inbound payloads larger than this are refused before parsing.
pub const MAX_INBOUND: usize = 64 * 1024;

/// `YYYYMMDDHH` of a Unix time in ms, UTC.
pub fn hour_stamp(ts_ms: u64) -> String {
    let (y, mo, d, h, ..) = utc(ts_ms);
    format!("{y:04}{mo:02}{d:02}{h:02}")
}

/// `yyyyMMdd'T'HHmmss'Z'`, the documented `event_time` (events: statuses, add and delete).
pub fn event_time(ts_ms: u64) -> String {
    let (y, mo, d, h, mi, s, _) = utc(ts_ms);
    format!("{y:04}{mo:02}{d:02}T{h:02}{mi:02}{s:02}Z")
}

/// `yyyy-MM-dd'T'HH:mm:ss.SSS'Z'`, the `event_time` IoTDA also accepts for property reports:
/// readings keep their milliseconds (two polls within a second stay two moments).
pub fn event_time_ms(ts_ms: u64) -> String {
    let (y, mo, d, h, mi, s, ms) = utc(ts_ms);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{ms:03}Z")
}

pub fn client_id(device_id: &str, check_timestamp: bool, hour: &str) -> String {
    format!("{device_id}_0_{}_{hour}", u8::from(check_timestamp))
}

/// Lowercase hex HMAC-SHA256 with key = the hour stamp, message = the secret.
pub fn password(secret: &str, hour: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, hour.as_bytes());
    let tag = ring::hmac::sign(&key, secret.as_bytes());
    tag.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

pub struct Topics {
    pub events_up: String,
    pub report: String,
    pub own_report: String,
    pub subscriptions: Vec<String>,
    prefix: String,
}

impl Topics {
    pub fn new(gw: &str) -> Self {
        let prefix = format!("$oc/devices/{gw}/sys");
        Topics {
            events_up: format!("{prefix}/events/up"),
            report: format!("{prefix}/gateway/sub_devices/properties/report"),
            own_report: format!("{prefix}/properties/report"),
            subscriptions: vec![
                format!("{prefix}/events/down"),
                format!("{prefix}/commands/#"),
                format!("{prefix}/properties/set/#"),
                format!("{prefix}/properties/get/#"),
                format!("{prefix}/messages/down"),
            ],
            prefix,
        }
    }

    pub fn command_response(&self, request_id: &str) -> String {
        format!("{}/commands/response/request_id={request_id}", self.prefix)
    }
    pub fn set_response(&self, request_id: &str) -> String {
        format!(
            "{}/properties/set/response/request_id={request_id}",
            self.prefix
        )
    }
    pub fn get_response(&self, request_id: &str) -> String {
        format!(
            "{}/properties/get/response/request_id={request_id}",
            self.prefix
        )
    }
}

fn props_json(p: &BTreeMap<String, Value>) -> Json {
    Json::Object(p.iter().map(|(k, v)| (k.clone(), v.to_json())).collect())
}

/// Builds one batched property report, keeping per-device order and IoTDA's limits.
#[derive(Default)]
pub struct ReportBatch {
    /// Device id (already JSON-quoted) and its services, each already serialised once.
    devices: Vec<(Vec<u8>, Vec<Vec<u8>>)>,
    bytes: usize,
    /// The last event time written, by millisecond: consecutive records often share it.
    stamp: Option<(u64, String)>,
}

impl ReportBatch {
    /// `{"event_time":…,"properties":{…},"service_id":…}`, keys in the order serde_json
    /// writes an object (sorted), as the tests pin; written directly, not through `Value`s.
    fn service(&mut self, r: &Report) -> Vec<u8> {
        let stamp = match &self.stamp {
            Some((s, t)) if *s == r.ts_ms => t,
            _ => &self.stamp.insert((r.ts_ms, event_time_ms(r.ts_ms))).1,
        };
        let mut out = Vec::with_capacity(64 + r.properties.len() * 24);
        out.extend_from_slice(br#"{"event_time":""#);
        out.extend_from_slice(stamp.as_bytes());
        out.extend_from_slice(br#"","properties":{"#);
        for (i, (k, v)) in r.properties.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            fieldgate_driver::write_json_str(&mut out, k);
            out.push(b':');
            v.write_json(&mut out);
        }
        out.extend_from_slice(br#"},"service_id":"#);
        fieldgate_driver::write_json_str(&mut out, &r.service);
        out.push(b'}');
        out
    }

    /// Try to add one report for `device_id`; false when it does not fit (then send this batch).
    pub fn push(&mut self, device_id: &str, r: &Report, max_bytes: usize) -> bool {
        let svc = self.service(r);
        let mut quoted = Vec::with_capacity(device_id.len() + 2);
        fieldgate_driver::write_json_str(&mut quoted, device_id);
        // Reports of one device usually follow each other: look from the end.
        let pos = self.devices.iter().rposition(|(d, _)| *d == quoted);
        let extra = svc.len() + 1 + if pos.is_none() { quoted.len() + 30 } else { 0 };
        if !self.devices.is_empty() && self.bytes + extra + 16 > max_bytes {
            return false;
        }
        match pos {
            Some(i) if self.devices[i].1.len() < MAX_SERVICES_PER_DEVICE => {
                self.devices[i].1.push(svc)
            }
            Some(_) => return false,
            None if self.devices.len() < MAX_REPORT_DEVICES => {
                self.devices.push((quoted, vec![svc]))
            }
            None => return false,
        }
        self.bytes += extra;
        true
    }

    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// `{"devices":[{"device_id":…,"services":[…]}]}`, assembled from the pieces.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.bytes + 32);
        out.extend_from_slice(br#"{"devices":["#);
        for (i, (d, services)) in self.devices.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(br#"{"device_id":"#);
            out.extend_from_slice(d);
            out.extend_from_slice(br#","services":["#);
            out.extend_from_slice(&services.join(&b','));
            out.extend_from_slice(b"]}");
        }
        out.extend_from_slice(b"]}");
        out
    }
}

fn sub_device_event(event_type: &str, paras: Json, event_id: Option<&str>, ts_ms: u64) -> Vec<u8> {
    let mut svc = Map::new();
    svc.insert("service_id".into(), json!("$sub_device_manager"));
    svc.insert("event_type".into(), json!(event_type));
    svc.insert("event_time".into(), json!(event_time(ts_ms)));
    if let Some(id) = event_id {
        svc.insert("event_id".into(), json!(id));
    }
    svc.insert("paras".into(), paras);
    json!({ "services": [Json::Object(svc)] })
        .to_string()
        .into_bytes()
}

/// `sub_device_update_status` for up to [`MAX_STATUS_DEVICES`] children.
pub fn encode_statuses(statuses: &[(String, bool)], ts_ms: u64) -> Vec<u8> {
    let list: Vec<Json> = statuses
        .iter()
        .map(|(d, online)| json!({"device_id": d, "status": if *online { "ONLINE" } else { "OFFLINE" }}))
        .collect();
    sub_device_event(
        "sub_device_update_status",
        json!({ "device_statuses": list }),
        None,
        ts_ms,
    )
}

/// A child to add on the platform.
pub struct NewChild<'a> {
    pub node_id: &'a str,
    pub product_id: &'a str,
    pub name: &'a str,
}

/// `add_sub_device_request` for up to [`MAX_ADD_DEVICES`] children.
pub fn encode_add(children: &[NewChild<'_>], event_id: &str, ts_ms: u64) -> Vec<u8> {
    let list: Vec<Json> = children
        .iter()
        .map(|c| json!({"node_id": c.node_id, "product_id": c.product_id, "name": c.name}))
        .collect();
    sub_device_event(
        "add_sub_device_request",
        json!({ "devices": list }),
        Some(event_id),
        ts_ms,
    )
}

/// `delete_sub_device_request` for up to [`MAX_ADD_DEVICES`] platform device ids.
pub fn encode_delete(device_ids: &[String], event_id: &str, ts_ms: u64) -> Vec<u8> {
    sub_device_event(
        "delete_sub_device_request",
        json!({ "devices": device_ids }),
        Some(event_id),
        ts_ms,
    )
}

/// The gateway's own properties on `sys/properties/report` (service id `gateway`).
pub fn encode_own_properties(props: &BTreeMap<String, Value>, ts_ms: u64) -> Vec<u8> {
    json!({"services": [{"service_id": "gateway", "properties": props_json(props), "event_time": event_time(ts_ms)}]})
        .to_string()
        .into_bytes()
}

/// `sub_device_sync_request` with the last stored notify version.
pub fn encode_sync(version: i64, ts_ms: u64) -> Vec<u8> {
    sub_device_event(
        "sub_device_sync_request",
        json!({ "version": version }),
        None,
        ts_ms,
    )
}

/// What the platform sent, understood.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    /// Children the platform now knows, node id → device id (add response or add notify).
    Added {
        devices: Vec<(String, String)>,
        failed: Vec<Failed>,
        version: Option<i64>,
    },
    /// Children the platform deleted (delete notify), by device id.
    Deleted {
        device_ids: Vec<String>,
        version: Option<i64>,
    },
    /// Answer to our delete request: platform ids deleted, and refusals.
    DeleteResult {
        deleted: Vec<String>,
        failed: Vec<Failed>,
    },
    /// Status update answer; only failures matter to us.
    StatusResult { failed: Vec<Failed> },
    /// A command for a child (or the gateway when `object_device_id` is absent).
    Command {
        request_id: String,
        object_device_id: Option<String>,
        service_id: Option<String>,
        command_name: String,
        paras: Json,
    },
    PropertySet {
        request_id: String,
        object_device_id: Option<String>,
        services: Vec<(String, Map<String, Json>)>,
    },
    PropertyGet {
        request_id: String,
        object_device_id: Option<String>,
        service_id: Option<String>,
    },
    /// Understood but nothing to do (e.g. an event type we do not use).
    Ignored(String),
}

pub use super::Failed;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum InboundError {
    #[error("payload of {0} bytes exceeds the {MAX_INBOUND}-byte limit")]
    TooLarge(usize),
    #[error("unexpected topic `{0}`")]
    Topic(String),
    #[error("malformed JSON: {0}")]
    Json(String),
    #[error("missing or invalid field `{0}`")]
    Field(&'static str),
}

/// Our own responses live under the request subscriptions (`commands/#` matches
/// `commands/response/…`) and MQTT 3.1.1 echoes them back to us.
fn is_response(topic: &str) -> bool {
    topic.contains("/response/request_id=")
}

/// The request id of a *request* topic, if it has one (so even a malformed request is
/// answered). Never for a response topic: answering our own echoed response would loop.
pub fn request_id(topic: &str) -> Option<&str> {
    if is_response(topic) {
        return None;
    }
    topic
        .rsplit_once("/request_id=")
        .map(|(_, id)| id)
        .filter(|id| !id.is_empty() && !id.contains('/'))
}

#[derive(Deserialize)]
struct EventsDown {
    services: Vec<EventSvc>,
}

#[derive(Deserialize)]
struct EventSvc {
    #[serde(default)]
    service_id: Option<String>,
    event_type: String,
    #[serde(default)]
    paras: Json,
}

fn failed_list(v: &Json, id_key: &str) -> Vec<Failed> {
    let s = |x: &Json, k: &str| -> String {
        match x.get(k) {
            Some(Json::String(s)) => s.clone(),
            Some(other) if !other.is_null() => other.to_string(),
            _ => String::new(),
        }
    };
    v.get("failed_devices")
        .and_then(Json::as_array)
        .map(|a| {
            a.iter()
                .map(|f| Failed {
                    id: s(f, id_key),
                    error_code: s(f, "error_code"),
                    error_msg: s(f, "error_msg"),
                })
                .collect()
        })
        .unwrap_or_default()
}

fn added(list: Option<&Json>) -> Result<Vec<(String, String)>, InboundError> {
    let Some(list) = list else {
        return Ok(Vec::new());
    };
    let arr = list.as_array().ok_or(InboundError::Field("devices"))?;
    arr.iter()
        .map(|d| {
            let node = d
                .get("node_id")
                .and_then(Json::as_str)
                .ok_or(InboundError::Field("node_id"))?;
            let dev = d
                .get("device_id")
                .and_then(Json::as_str)
                .ok_or(InboundError::Field("device_id"))?;
            Ok((node.to_string(), dev.to_string()))
        })
        .collect()
}

/// Parse one inbound message on one of our subscriptions.
pub fn parse(topics: &Topics, topic: &str, payload: &[u8]) -> Result<Inbound, InboundError> {
    if payload.len() > MAX_INBOUND {
        return Err(InboundError::TooLarge(payload.len()));
    }
    let rest = topic
        .strip_prefix(topics.prefix.as_str())
        .ok_or_else(|| InboundError::Topic(topic.into()))?;
    if is_response(rest) {
        return Ok(Inbound::Ignored("echo of our own response".into()));
    }
    let body: Json =
        serde_json::from_slice(payload).map_err(|e| InboundError::Json(e.to_string()))?;
    if !body.is_object() {
        return Err(InboundError::Json("expected a JSON object".into()));
    }
    let obj_dev = || {
        body.get("object_device_id")
            .and_then(Json::as_str)
            .map(str::to_string)
    };
    if rest == "/events/down" {
        let ev: EventsDown =
            serde_json::from_value(body.clone()).map_err(|e| InboundError::Json(e.to_string()))?;
        let Some(svc) = ev.services.into_iter().next() else {
            return Err(InboundError::Field("services"));
        };
        if svc
            .service_id
            .as_deref()
            .is_some_and(|s| s != "$sub_device_manager")
        {
            return Ok(Inbound::Ignored(format!(
                "service {}",
                svc.service_id.unwrap_or_default()
            )));
        }
        let p = &svc.paras;
        let version = p.get("version").and_then(Json::as_i64);
        return match svc.event_type.as_str() {
            "add_sub_device_response" => Ok(Inbound::Added {
                devices: added(p.get("successful_devices"))?,
                failed: failed_list(p, "node_id"),
                version: None,
            }),
            "add_sub_device_notify" => Ok(Inbound::Added {
                devices: added(p.get("devices"))?,
                failed: Vec::new(),
                version,
            }),
            "delete_sub_device_notify" => {
                let arr = p
                    .get("devices")
                    .and_then(Json::as_array)
                    .ok_or(InboundError::Field("devices"))?;
                let ids = arr
                    .iter()
                    .filter_map(|d| {
                        d.get("device_id")
                            .and_then(Json::as_str)
                            .map(str::to_string)
                    })
                    .collect();
                Ok(Inbound::Deleted {
                    device_ids: ids,
                    version,
                })
            }
            "delete_sub_device_response" => {
                let ok = p
                    .get("successful_devices")
                    .and_then(Json::as_array)
                    .ok_or(InboundError::Field("successful_devices"))?;
                let deleted = ok
                    .iter()
                    .filter_map(|d| {
                        d.as_str()
                            .or_else(|| d.get("device_id").and_then(Json::as_str))
                            .map(str::to_string)
                    })
                    .collect();
                Ok(Inbound::DeleteResult {
                    deleted,
                    failed: failed_list(p, "device_id"),
                })
            }
            "sub_device_update_status_response" => Ok(Inbound::StatusResult {
                failed: failed_list(p, "device_id"),
            }),
            other => Ok(Inbound::Ignored(format!("event {other}"))),
        };
    }
    let rid = || {
        request_id(topic)
            .map(str::to_string)
            .ok_or(InboundError::Field("request_id"))
    };
    if rest.starts_with("/commands/request_id=") {
        let name = body
            .get("command_name")
            .and_then(Json::as_str)
            .ok_or(InboundError::Field("command_name"))?;
        return Ok(Inbound::Command {
            request_id: rid()?,
            object_device_id: obj_dev(),
            service_id: body
                .get("service_id")
                .and_then(Json::as_str)
                .map(str::to_string),
            command_name: name.to_string(),
            paras: body.get("paras").cloned().unwrap_or(Json::Null),
        });
    }
    if rest.starts_with("/properties/set/request_id=") {
        let arr = body
            .get("services")
            .and_then(Json::as_array)
            .ok_or(InboundError::Field("services"))?;
        let mut services = Vec::new();
        for s in arr {
            let id = s
                .get("service_id")
                .and_then(Json::as_str)
                .ok_or(InboundError::Field("service_id"))?;
            let props = s
                .get("properties")
                .and_then(Json::as_object)
                .ok_or(InboundError::Field("properties"))?;
            services.push((id.to_string(), props.clone()));
        }
        return Ok(Inbound::PropertySet {
            request_id: rid()?,
            object_device_id: obj_dev(),
            services,
        });
    }
    if rest.starts_with("/properties/get/request_id=") {
        return Ok(Inbound::PropertyGet {
            request_id: rid()?,
            object_device_id: obj_dev(),
            service_id: body
                .get("service_id")
                .and_then(Json::as_str)
                .map(str::to_string),
        });
    }
    if rest == "/messages/down" {
        return Ok(Inbound::Ignored("message down".into()));
    }
    Err(InboundError::Topic(topic.into()))
}

/// IoTDA `result_code` for a failure (0 is success; the platform treats any other as failure).
pub fn result_code(code: ErrorCode) -> i64 {
    match code {
        ErrorCode::UnknownChild => 1,
        ErrorCode::UnknownPoint => 2,
        ErrorCode::NotWritable => 3,
        ErrorCode::BadValue => 4,
        ErrorCode::Offline => 5,
        ErrorCode::Timeout => 6,
        ErrorCode::DeviceError => 7,
        ErrorCode::Unsupported => 8,
        ErrorCode::Busy => 9,
    }
}

fn code_name(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::UnknownChild => "unknown_child",
        ErrorCode::UnknownPoint => "unknown_point",
        ErrorCode::NotWritable => "not_writable",
        ErrorCode::BadValue => "bad_value",
        ErrorCode::Offline => "offline",
        ErrorCode::Timeout => "timeout",
        ErrorCode::DeviceError => "device_error",
        ErrorCode::Unsupported => "unsupported",
        ErrorCode::Busy => "busy",
    }
}

fn flatten(out: &BTreeMap<String, BTreeMap<String, Value>>) -> Json {
    let mut m = Map::new();
    for props in out.values() {
        for (k, v) in props {
            m.insert(k.clone(), v.to_json());
        }
    }
    Json::Object(m)
}

/// Body of `commands/response`.
pub fn command_response(o: &CommandOutcome) -> Vec<u8> {
    operation_response(&match o {
        CommandOutcome::Done(out) => Ok(flatten(out)),
        CommandOutcome::Failed { code, message } => Err((*code, message.clone())),
    })
}

/// Body of `properties/set/response`.
pub fn set_response(o: &CommandOutcome) -> Vec<u8> {
    match o {
        CommandOutcome::Done(_) => json!({"result_code": 0, "result_desc": "success"}),
        CommandOutcome::Failed { code, message } => json!({"result_code": result_code(*code), "result_desc": format!("{}: {message}", code_name(*code))}),
    }
    .to_string()
    .into_bytes()
}

/// Body of a command response: the result as `paras` (a child's command: the values read
/// back; one of the gateway's own operations: its result).
pub fn operation_response(r: &super::OpResult) -> Vec<u8> {
    match r {
        Ok(result) => {
            json!({"result_code": 0, "response_name": "COMMAND_RESPONSE", "paras": result})
        }
        Err((code, message)) => json!({
            "result_code": result_code(*code),
            "response_name": "COMMAND_RESPONSE",
            "paras": {"error": code_name(*code), "message": message},
        }),
    }
    .to_string()
    .into_bytes()
}

/// Body of `properties/get/response`.
pub fn get_response(o: &CommandOutcome, ts_ms: u64) -> Vec<u8> {
    match o {
        CommandOutcome::Done(out) => {
            let services: Vec<Json> = out
                .iter()
                .map(|(s, p)| json!({"service_id": s, "properties": props_json(p), "event_time": event_time_ms(ts_ms)}))
                .collect();
            json!({ "services": services })
        }
        CommandOutcome::Failed { code, message } => json!({"result_code": result_code(*code), "result_desc": format!("{}: {message}", code_name(*code))}),
    }
    .to_string()
    .into_bytes()
}

/// IoTDA through the [`Dialect`](super::Dialect) trait.
pub struct IotDa {
    gw: String,
    check_timestamp: bool,
    topics: Arc<Topics>,
    event_seq: u64,
}

impl IotDa {
    pub fn new(gw: &str, check_timestamp: bool) -> Self {
        IotDa {
            gw: gw.to_string(),
            check_timestamp,
            topics: Arc::new(Topics::new(gw)),
            event_seq: 0,
        }
    }

    fn event_id(&mut self, what: &str, now_ms: u64) -> String {
        self.event_seq += 1;
        format!("fg-{what}-{now_ms}-{}", self.event_seq)
    }

    /// The answer to a request on `topic`, in IoTDA's words.
    fn responder(&self, topic: &str, request_id: &str) -> Respond {
        let topics = self.topics.clone();
        let rid = request_id.to_string();
        if topic.contains("/properties/set/") {
            Arc::new(move |o| {
                Some(Reply {
                    topic: topics.set_response(&rid),
                    payload: set_response(o),
                })
            })
        } else if topic.contains("/properties/get/") {
            Arc::new(move |o| {
                Some(Reply {
                    topic: topics.get_response(&rid),
                    payload: get_response(o, fieldgate_driver::now_ms()),
                })
            })
        } else {
            Arc::new(move |o| {
                Some(Reply {
                    topic: topics.command_response(&rid),
                    payload: command_response(o),
                })
            })
        }
    }
}

impl super::Dialect for IotDa {
    fn connect(&mut self, secret: &str, now_ms: u64) -> Connect {
        let hour = hour_stamp(now_ms);
        Connect {
            client_id: client_id(&self.gw, self.check_timestamp, &hour),
            username: self.gw.clone(),
            password: password(secret, &hour),
            will: None,
        }
    }

    fn subscriptions(&self) -> Vec<String> {
        self.topics.subscriptions.clone()
    }

    fn assigns_ids(&self) -> bool {
        true
    }

    fn on_connect(&mut self, children: &[ChildView], version: i64, now_ms: u64) -> Vec<Out> {
        // Notifies sent while we were away are not delivered: ask for them. Then every
        // confirmed child's current status (the platform may have marked them offline).
        let mut out = vec![Out::new(
            self.topics.events_up.clone(),
            encode_sync(version, now_ms),
        )];
        let list: Vec<(String, bool)> = children
            .iter()
            .filter_map(|c| Some((c.device_id.clone()?, c.online?)))
            .collect();
        for chunk in list.chunks(MAX_STATUS_DEVICES) {
            out.push(Out::new(
                self.topics.events_up.clone(),
                encode_statuses(chunk, now_ms),
            ));
        }
        out
    }

    fn add(&mut self, children: &[ChildView], now_ms: u64) -> Vec<Out> {
        let mut out = Vec::new();
        for chunk in children.chunks(MAX_ADD_DEVICES) {
            let list: Vec<NewChild<'_>> = chunk
                .iter()
                .map(|c| NewChild {
                    node_id: &c.node_id,
                    product_id: &c.product_id,
                    name: &c.name,
                })
                .collect();
            let id = self.event_id("add", now_ms);
            out.push(Out::new(
                self.topics.events_up.clone(),
                encode_add(&list, &id, now_ms),
            ));
        }
        out
    }

    fn delete(&mut self, device_ids: &[String], now_ms: u64) -> Vec<Out> {
        let mut out = Vec::new();
        for chunk in device_ids.chunks(MAX_ADD_DEVICES) {
            let id = self.event_id("del", now_ms);
            out.push(Out::new(
                self.topics.events_up.clone(),
                encode_delete(chunk, &id, now_ms),
            ));
        }
        out
    }

    fn batch_limit(&self) -> usize {
        MAX_REPORT_DEVICES
    }

    fn pack(
        &mut self,
        recs: &[(u64, String, Record)],
        max_bytes: usize,
        now_ms: u64,
    ) -> (Vec<Out>, usize) {
        match recs.first() {
            Some((_, _, Record::Status(_))) => {
                let list: Vec<(String, bool)> = recs
                    .iter()
                    .take(MAX_STATUS_DEVICES)
                    .map_while(|(_, dev, r)| match r {
                        Record::Status(st) => Some((dev.clone(), st.online)),
                        Record::Report(_) => None,
                    })
                    .collect();
                let n = list.len();
                (
                    vec![Out::new(
                        self.topics.events_up.clone(),
                        encode_statuses(&list, now_ms),
                    )],
                    n,
                )
            }
            _ => {
                let mut batch = ReportBatch::default();
                let mut n = 0;
                for (_, dev, r) in recs {
                    let Record::Report(r) = r else { break };
                    if !batch.push(dev, r, max_bytes) {
                        break;
                    }
                    n += 1;
                }
                (
                    vec![Out::new(self.topics.report.clone(), batch.encode())],
                    n.max(1),
                )
            }
        }
    }

    fn own(&mut self, props: &BTreeMap<String, Value>, now_ms: u64) -> Vec<Out> {
        vec![Out::new(
            self.topics.own_report.clone(),
            encode_own_properties(props, now_ms),
        )]
    }

    fn parse(&mut self, topic: &str, payload: &[u8]) -> Result<super::Inbound, ParseError> {
        let msg = match parse(&self.topics, topic, payload) {
            Ok(m) => m,
            Err(e) => {
                return Err(ParseError {
                    message: e.to_string(),
                    respond: request_id(topic).map(|rid| self.responder(topic, rid)),
                })
            }
        };
        Ok(match msg {
            Inbound::Added {
                devices,
                failed,
                version,
            } => super::Inbound::Added {
                devices,
                failed,
                version,
            },
            Inbound::Deleted {
                device_ids,
                version,
            } => super::Inbound::Deleted {
                device_ids,
                version,
            },
            Inbound::DeleteResult { deleted, failed } => {
                super::Inbound::DeleteResult { deleted, failed }
            }
            Inbound::StatusResult { failed } => super::Inbound::StatusResult { failed },
            Inbound::Ignored(what) => super::Inbound::Ignored(what),
            // A command for the gateway itself (no object device, or ours): an operation.
            Inbound::Command {
                request_id,
                object_device_id,
                command_name,
                paras,
                ..
            } if object_device_id.as_deref().is_none_or(|d| d == self.gw) => {
                let topics = self.topics.clone();
                let rid = request_id.clone();
                super::Inbound::Operation {
                    request_id,
                    name: command_name,
                    paras,
                    respond: Arc::new(move |r| {
                        Some(Reply {
                            topic: topics.command_response(&rid),
                            payload: operation_response(r),
                        })
                    }),
                }
            }
            req @ (Inbound::Command { .. }
            | Inbound::PropertySet { .. }
            | Inbound::PropertyGet { .. }) => {
                let respond = self.responder(topic, request_id(topic).unwrap_or_default());
                match request(req) {
                    Some(request) => super::Inbound::Request { request, respond },
                    None => super::Inbound::Ignored("not a request".into()),
                }
            }
        })
    }

    fn version_key(&self) -> Option<&'static str> {
        Some("iotda.version")
    }
}

/// A request the router understands, from IoTDA's own message.
pub fn request(m: Inbound) -> Option<Request> {
    Some(match m {
        Inbound::Command {
            request_id,
            object_device_id,
            service_id,
            command_name,
            paras,
        } => Request::Command {
            request_id,
            device_id: object_device_id,
            service: service_id,
            name: command_name,
            paras,
        },
        Inbound::PropertySet {
            request_id,
            object_device_id,
            services,
        } => Request::Set {
            request_id,
            device_id: object_device_id,
            services,
        },
        Inbound::PropertyGet {
            request_id,
            object_device_id,
            service_id,
        } => Request::Get {
            request_id,
            device_id: object_device_id,
            service: service_id,
        },
        _ => return None,
    })
}

#[cfg(test)]
mod tests;
