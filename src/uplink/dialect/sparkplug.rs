//! Eclipse Sparkplug B 3.0, the gateway as an edge node (PROTOCOLS.md §4).
//!
//! Topics `spBv1.0/{group}/{TYPE}/{edge node}[/{device}]`, protobuf payloads (the messages
//! below are written from the spec's field numbers for prost; unknown fields such as metadata,
//! datasets and templates are skipped when decoding). Each CONNECT carries an NDEATH will whose
//! only metric is `bdSeq`, incremented per connection; after CONNACK the node publishes NBIRTH
//! (seq 0, the same `bdSeq`, `Node Control/Rebirth` = false and the gateway's own metrics),
//! then one DBIRTH per confirmed child with every metric known for it. Readings go out by
//! exception as DDATA (only metrics whose value changed; a metric never born makes the child
//! DBIRTH again first); a child going OFFLINE is a DDEATH and coming back a DBIRTH; `seq` runs
//! 0–255 across every node message of a session. `Node Control/Rebirth` in an NCMD repeats the
//! births without a new session; DCMD metrics write the points of the same name (no ack: the
//! new value shows in the next DDATA). A graceful stop publishes NDEATH before DISCONNECT
//! (a clean disconnect does not fire the will).
//!
//! Deviations, on purpose: births and data are published with QoS 1 (the spec says 0) so the
//! store-and-forward queue deletes a reading only once the broker has it — subscribers see no
//! difference. With `aliases = true` births carry each metric's name and alias (unique across
//! the node, stable for the process) and data only the alias; commands by alias or name.

use std::collections::{BTreeMap, HashMap, HashSet};

use fieldgate_driver::{Name, Value};
use prost::Message;
use serde_json::Value as Json;

use super::{log_only, ChildView, Connect, Inbound, Out, ParseError};
use crate::command::Request;
use crate::queue::Record;

pub const NAMESPACE: &str = "spBv1.0";
pub const REBIRTH: &str = "Node Control/Rebirth";
/// The spec's node restart command: the gateway's `restart` operation.
pub const REBOOT: &str = "Node Control/Reboot";
/// A custom node command: restart one bus (String value: its name), the `restart_bus`
/// operation.
pub const RESTART_BUS: &str = "Node Control/Restart Bus";
pub const MAX_INBOUND: usize = 256 * 1024;

/// `org.eclipse.tahu.protobuf.Payload`.
#[derive(Clone, PartialEq, Message)]
pub struct Payload {
    #[prost(uint64, optional, tag = "1")]
    pub timestamp: Option<u64>,
    #[prost(message, repeated, tag = "2")]
    pub metrics: Vec<Metric>,
    #[prost(uint64, optional, tag = "3")]
    pub seq: Option<u64>,
    #[prost(string, optional, tag = "4")]
    pub uuid: Option<String>,
    #[prost(bytes = "vec", optional, tag = "5")]
    pub body: Option<Vec<u8>>,
}

/// `Payload.Metric` (metadata, properties, datasets and templates not used).
#[derive(Clone, PartialEq, Message)]
pub struct Metric {
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    #[prost(uint64, optional, tag = "2")]
    pub alias: Option<u64>,
    #[prost(uint64, optional, tag = "3")]
    pub timestamp: Option<u64>,
    #[prost(uint32, optional, tag = "4")]
    pub datatype: Option<u32>,
    #[prost(bool, optional, tag = "5")]
    pub is_historical: Option<bool>,
    #[prost(bool, optional, tag = "6")]
    pub is_transient: Option<bool>,
    #[prost(bool, optional, tag = "7")]
    pub is_null: Option<bool>,
    #[prost(oneof = "MetricValue", tags = "10, 11, 12, 13, 14, 15, 16")]
    pub value: Option<MetricValue>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum MetricValue {
    #[prost(uint32, tag = "10")]
    Int(u32),
    #[prost(uint64, tag = "11")]
    Long(u64),
    #[prost(float, tag = "12")]
    Float(f32),
    #[prost(double, tag = "13")]
    Double(f64),
    #[prost(bool, tag = "14")]
    Boolean(bool),
    #[prost(string, tag = "15")]
    String(String),
    #[prost(bytes = "vec", tag = "16")]
    Bytes(Vec<u8>),
}

/// Sparkplug data types (spec ch.6).
pub mod datatype {
    pub const INT8: u32 = 1;
    pub const INT16: u32 = 2;
    pub const INT32: u32 = 3;
    pub const INT64: u32 = 4;
    pub const UINT8: u32 = 5;
    pub const UINT16: u32 = 6;
    pub const UINT32: u32 = 7;
    pub const UINT64: u32 = 8;
    pub const FLOAT: u32 = 9;
    pub const DOUBLE: u32 = 10;
    pub const BOOLEAN: u32 = 11;
    pub const STRING: u32 = 12;
    pub const TEXT: u32 = 14;
}

/// A metric for one of our values: Int64, UInt64, Double, Boolean or String.
pub fn metric(name: &str, v: &Value, ts_ms: u64) -> Metric {
    let (dt, value) = match v {
        Value::Int(i) => (datatype::INT64, MetricValue::Long(*i as u64)),
        Value::UInt(u) => (datatype::UINT64, MetricValue::Long(*u)),
        Value::Float(f) => (datatype::DOUBLE, MetricValue::Double(*f)),
        Value::Bool(b) => (datatype::BOOLEAN, MetricValue::Boolean(*b)),
        Value::Text(s) => (datatype::STRING, MetricValue::String(s.clone())),
    };
    Metric {
        name: Some(name.to_string()),
        timestamp: Some(ts_ms),
        datatype: Some(dt),
        value: Some(value),
        ..Default::default()
    }
}

/// A metric's value as JSON for the router (writes are checked there against the point).
pub fn metric_json(m: &Metric) -> Option<Json> {
    let dt = m.datatype.unwrap_or(0);
    Some(match m.value.as_ref()? {
        MetricValue::Int(i) => match dt {
            datatype::INT8 => Json::from(*i as u8 as i8),
            datatype::INT16 => Json::from(*i as u16 as i16),
            datatype::INT32 => Json::from(*i as i32),
            _ => Json::from(*i),
        },
        MetricValue::Long(l) if dt == datatype::INT64 => Json::from(*l as i64),
        MetricValue::Long(l) => Json::from(*l),
        MetricValue::Float(f) => serde_json::Number::from_f64(f64::from(*f)).map(Json::Number)?,
        MetricValue::Double(d) => serde_json::Number::from_f64(*d).map(Json::Number)?,
        MetricValue::Boolean(b) => Json::Bool(*b),
        MetricValue::String(s) => Json::String(s.clone()),
        MetricValue::Bytes(_) => return None,
    })
}

pub struct Sparkplug {
    group: String,
    node: String,
    /// bdSeq of the current (or last) CONNECT: its will and NBIRTH carry it.
    bd_seq: u8,
    /// bdSeq of the next CONNECT: 0 on a fresh store, then +1 per CONNECT that reached the
    /// broker, wrapping 255 → 0; kept in the store across restarts.
    next_bd: u8,
    seq: u8,
    /// Last value of every metric of every child, with its reading's time (platform id →
    /// name → (value, ms)).
    known: HashMap<String, BTreeMap<Name, (Value, u64)>>,
    /// Children born (DBIRTH) in this session.
    born: HashSet<String>,
    /// Per child: the time of the newest reading its DBIRTH carried. Queued readings older
    /// than that go out as historical DDATA.
    born_at: HashMap<String, u64>,
    /// The gateway's own metrics, as last reported.
    own: BTreeMap<String, Value>,
    /// Metric aliases (config `aliases`): births carry name and alias, data only the alias.
    aliases: bool,
    /// The alias of each (device — "" for the node —, metric name), stable for the process,
    /// unique across the node; and back, for commands by alias.
    alias_of: HashMap<String, HashMap<String, u64>>,
    name_of: HashMap<(String, u64), String>,
    /// The Primary Host whose STATE gates births and data (config `primary_host_id`).
    primary_host: Option<String>,
    /// It said `online: true` in this session, and the timestamp of its last STATE.
    host_online: bool,
    host_ts: u64,
    /// Births, data and DDEATH at QoS 0 (config `qos = 0`, the specification's).
    qos0: bool,
}

/// The store key of the next CONNECT's bdSeq.
pub const BDSEQ_KEY: &str = "sparkplug_next_bdseq";

/// A metric for DATA messages: no datatype (the spec: NDATA/DDATA SHOULD NOT repeat what the
/// birth declared).
fn data_metric(name: &str, v: &Value, ts_ms: u64) -> Metric {
    Metric {
        datatype: None,
        ..metric(name, v, ts_ms)
    }
}

impl Sparkplug {
    pub fn new(group: &str, node: &str) -> Self {
        Sparkplug {
            group: group.to_string(),
            node: node.to_string(),
            bd_seq: 0,
            next_bd: 0,
            seq: 0,
            known: HashMap::new(),
            born: HashSet::new(),
            born_at: HashMap::new(),
            // The gateway's own metrics (the uplink's report_own), so NBIRTH always has them.
            own: BTreeMap::from([
                (
                    "version".to_string(),
                    Value::Text(env!("CARGO_PKG_VERSION").into()),
                ),
                ("uptime_s".to_string(), Value::UInt(0)),
                ("queue_records".to_string(), Value::UInt(0)),
                ("children_online".to_string(), Value::UInt(0)),
                ("children_total".to_string(), Value::UInt(0)),
            ]),
            aliases: false,
            alias_of: HashMap::new(),
            name_of: HashMap::new(),
            primary_host: None,
            host_online: false,
            host_ts: 0,
            qos0: false,
        }
    }

    /// Publish births, data and DDEATH at QoS 0, as the specification asks.
    pub fn at_qos0(mut self, on: bool) -> Self {
        self.qos0 = on;
        self
    }

    /// Use metric aliases (births: name and alias; data: alias only).
    pub fn aliases(mut self, on: bool) -> Self {
        self.aliases = on;
        self
    }

    fn alias(&mut self, scope: &str, name: &str) -> u64 {
        // Looked up without building a key: this runs for every metric of every DATA message.
        if let Some(a) = self.alias_of.get(scope).and_then(|m| m.get(name)) {
            return *a;
        }
        // Unique across the node and all its devices.
        let a = u64::try_from(self.name_of.len()).unwrap_or(u64::MAX);
        self.alias_of
            .entry(scope.to_string())
            .or_default()
            .insert(name.to_string(), a);
        self.name_of
            .insert((scope.to_string(), a), name.to_string());
        a
    }

    /// A metric for a birth: name, datatype, and the alias when aliases are on.
    fn birth_metric(&mut self, scope: &str, name: &str, v: &Value, ts_ms: u64) -> Metric {
        let alias = self.aliases.then(|| self.alias(scope, name));
        Metric {
            alias,
            ..metric(name, v, ts_ms)
        }
    }

    /// A metric for NDATA/DDATA: no datatype; only the alias when aliases are on.
    fn data(&mut self, scope: &str, name: &str, v: &Value, ts_ms: u64) -> Metric {
        let m = data_metric(name, v, ts_ms);
        if self.aliases {
            Metric {
                alias: Some(self.alias(scope, name)),
                name: None,
                ..m
            }
        } else {
            m
        }
    }

    /// The name a command metric means: its name, or the name its alias was born with.
    fn command_name(&self, scope: &str, m: &Metric) -> Option<String> {
        m.name.clone().or_else(|| {
            m.alias
                .and_then(|a| self.name_of.get(&(scope.to_string(), a)).cloned())
        })
    }

    /// Wait for this Primary Host's STATE `online` before births and data.
    pub fn primary_host(mut self, host: Option<String>) -> Self {
        self.primary_host = host;
        self
    }

    fn state_topic(&self) -> Option<String> {
        self.primary_host
            .as_ref()
            .map(|h| format!("{NAMESPACE}/STATE/{h}"))
    }

    /// A STATE message (3.0 form: `{"online":bool,"timestamp":ms}`): an older timestamp than
    /// the last one seen is stale (a retained message overtaken) and ignored.
    fn host_state(&mut self, payload: &[u8]) -> Result<Inbound, ParseError> {
        let j: Json = serde_json::from_slice(payload)
            .map_err(|e| ParseError::new(format!("STATE is not JSON: {e}")))?;
        let online = j
            .get("online")
            .and_then(Json::as_bool)
            .ok_or_else(|| ParseError::new("STATE without a boolean `online`"))?;
        let ts = j.get("timestamp").and_then(Json::as_u64).unwrap_or(0);
        if ts < self.host_ts {
            return Ok(Inbound::Ignored("stale Primary Host STATE".into()));
        }
        self.host_ts = ts;
        match (online, self.host_online) {
            (true, false) => {
                self.host_online = true;
                // Born now: NBIRTH, DBIRTHs, then what was queued while the host was away.
                Ok(Inbound::Rebirth)
            }
            (false, true) => {
                self.host_online = false;
                self.born.clear();
                Ok(Inbound::Ignored(
                    "Primary Host offline: data waits in the queue".into(),
                ))
            }
            _ => Ok(Inbound::Ignored("Primary Host STATE unchanged".into())),
        }
    }

    pub fn topic(&self, kind: &str, device: Option<&str>) -> String {
        match device {
            Some(d) => format!("{NAMESPACE}/{}/{kind}/{}/{d}", self.group, self.node),
            None => format!("{NAMESPACE}/{}/{kind}/{}", self.group, self.node),
        }
    }

    fn next_seq(&mut self) -> u64 {
        let s = self.seq;
        self.seq = self.seq.wrapping_add(1);
        u64::from(s)
    }

    fn message(
        &mut self,
        kind: &str,
        device: Option<&str>,
        metrics: Vec<Metric>,
        now_ms: u64,
    ) -> Out {
        let p = Payload {
            timestamp: Some(now_ms),
            metrics,
            seq: Some(self.next_seq()),
            ..Default::default()
        };
        Out::new(self.topic(kind, device), p.encode_to_vec())
    }

    fn bd_seq_metric(&self, now_ms: u64) -> Metric {
        Metric {
            name: Some("bdSeq".into()),
            timestamp: Some(now_ms),
            datatype: Some(datatype::INT64),
            value: Some(MetricValue::Long(u64::from(self.bd_seq))),
            ..Default::default()
        }
    }

    /// DBIRTH with every known metric, each with its own reading's time; none while nothing
    /// is known (a child is born with its first values).
    fn dbirth(&mut self, device: &str, now_ms: u64) -> Option<Out> {
        let known: Vec<(Name, Value, u64)> = self
            .known
            .get(device)
            .filter(|m| !m.is_empty())?
            .iter()
            .map(|(k, (v, t))| (k.clone(), v.clone(), *t))
            .collect();
        let newest = known.iter().map(|(_, _, t)| *t).max().unwrap_or(0);
        let metrics: Vec<Metric> = known
            .iter()
            .map(|(k, v, t)| self.birth_metric(device, k, v, *t))
            .collect();
        self.born.insert(device.to_string());
        self.born_at.insert(device.to_string(), newest);
        Some(self.message("DBIRTH", Some(device), metrics, now_ms))
    }

    /// NBIRTH and every live child's DBIRTH (after CONNACK, or on a rebirth request). A
    /// child's birth carries its newest committed values (from the registry, possibly still
    /// queued) with their own timestamps.
    fn births(&mut self, children: &[ChildView], now_ms: u64) -> Vec<Out> {
        self.seq = 0;
        self.born.clear();
        self.born_at.clear();
        let mut metrics = vec![
            self.bd_seq_metric(now_ms),
            self.birth_metric("", REBIRTH, &Value::Bool(false), now_ms),
            self.birth_metric("", REBOOT, &Value::Bool(false), now_ms),
            self.birth_metric("", RESTART_BUS, &Value::Text(String::new()), now_ms),
        ];
        let own: Vec<(String, Value)> = self
            .own
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (k, v) in own {
            metrics.push(self.birth_metric("", &k, &v, now_ms));
        }
        let mut out = vec![self.message("NBIRTH", None, metrics, now_ms)];
        for c in children {
            let (Some(dev), Some(true)) = (&c.device_id, c.online) else {
                continue;
            };
            let ts = c.latest_ts_ms.unwrap_or(now_ms);
            let known = self.known.entry(dev.clone()).or_default();
            for (_, prop, v) in &c.latest {
                if known.get(prop.as_str()).is_none_or(|(_, t)| *t <= ts) {
                    known.insert(Name::from(prop.as_str()), (v.clone(), ts));
                }
            }
            out.extend(self.dbirth(dev, now_ms));
        }
        out
    }

    fn report(&mut self, dev: &str, r: &fieldgate_driver::Report, now_ms: u64) -> Vec<Out> {
        let historical =
            self.born.contains(dev) && self.born_at.get(dev).is_some_and(|t| r.ts_ms < *t);
        if historical {
            // Queued before a birth that carried newer values: history, every metric sent
            // and flagged, the current values left as born.
            let known = self.known.entry(dev.to_string()).or_default();
            let mut unborn = false;
            for (k, v) in &r.properties {
                if !known.contains_key(k) {
                    known.insert(k.clone(), (v.clone(), r.ts_ms));
                    unborn = true;
                }
            }
            let mut out = Vec::new();
            if unborn {
                // DDATA may only name born metrics: birth again, then the history.
                let at = self.born_at.get(dev).copied();
                out.extend(self.dbirth(dev, now_ms));
                if let Some(t) = at {
                    self.born_at.insert(dev.to_string(), t);
                }
            }
            let metrics = r
                .properties
                .iter()
                .map(|(k, v)| Metric {
                    is_historical: Some(true),
                    ..self.data(dev, k, v, r.ts_ms)
                })
                .collect();
            out.push(self.message("DDATA", Some(dev), metrics, now_ms));
            return out;
        }
        // The very reading the birth carried (its newest): already sent.
        if self.born_at.get(dev) == Some(&r.ts_ms)
            && self.known.get(dev).is_some_and(|known| {
                r.properties
                    .iter()
                    .all(|(k, v)| known.get(k).is_some_and(|(x, _)| x == v))
            })
        {
            return Vec::new();
        }
        // One pass: remember each value, note what was never born. What to send was decided
        // by the report stage (report by exception is its `on_change`, the default here): a
        // record that reached the dialect is sent, heartbeats included.
        let known = self.known.entry(dev.to_string()).or_default();
        let mut new_metric = false;
        for (k, v) in &r.properties {
            new_metric |= known.insert(k.clone(), (v.clone(), r.ts_ms)).is_none();
        }
        if new_metric || !self.born.contains(dev) {
            // Every metric must have been born: (re)birth the device with all of them.
            return self.dbirth(dev, now_ms).into_iter().collect();
        }
        let metrics: Vec<Metric> = r
            .properties
            .iter()
            .map(|(k, v)| self.data(dev, k, v, r.ts_ms))
            .collect();
        vec![self.message("DDATA", Some(dev), metrics, now_ms)]
    }
}

impl super::Dialect for Sparkplug {
    fn connect(&mut self, secret: &str, now_ms: u64) -> Connect {
        // A new session waits for the Primary Host's STATE again (its retained one comes
        // right after the subscription).
        self.host_online = false;
        self.bd_seq = self.next_bd;
        self.next_bd = self.bd_seq.wrapping_add(1);
        let will = Payload {
            timestamp: Some(now_ms),
            metrics: vec![self.bd_seq_metric(now_ms)],
            ..Default::default()
        };
        Connect {
            client_id: format!("{}-{}", self.group, self.node),
            username: self.node.clone(),
            password: secret.to_string(),
            will: Some(Out::new(self.topic("NDEATH", None), will.encode_to_vec())),
        }
    }

    fn connect_unsent(&mut self) {
        // The broker never saw that CONNECT: the next one uses its bdSeq.
        self.next_bd = self.bd_seq;
    }

    fn state(&self) -> Option<(&'static str, String)> {
        Some((BDSEQ_KEY, self.next_bd.to_string()))
    }

    fn restore(&mut self, value: &str) {
        if let Ok(n) = value.trim().parse::<u8>() {
            self.next_bd = n;
        }
    }

    fn prime_own(&mut self, props: &BTreeMap<String, Value>) {
        for (k, v) in props {
            self.own.insert(k.clone(), v.clone());
        }
    }

    fn subscriptions(&self) -> Vec<String> {
        let mut subs = vec![self.topic("NCMD", None), self.topic("DCMD", Some("+"))];
        subs.extend(self.state_topic());
        subs
    }

    fn held(&self) -> bool {
        self.primary_host.is_some() && !self.host_online
    }

    fn qos0(&self) -> bool {
        self.qos0
    }

    /// NCMD: the spec forbids retaining it, so subscribing again delivers nothing (STATE is
    /// retained and would be).
    fn barrier_topic(&self) -> Option<String> {
        Some(self.topic("NCMD", None))
    }

    fn on_shutdown(&mut self, now_ms: u64) -> Vec<Out> {
        // Intentional shutdown: NDEATH (bdSeq only, no seq), then DISCONNECT.
        let p = Payload {
            timestamp: Some(now_ms),
            metrics: vec![self.bd_seq_metric(now_ms)],
            ..Default::default()
        };
        vec![Out::new(self.topic("NDEATH", None), p.encode_to_vec())]
    }

    fn assigns_ids(&self) -> bool {
        false
    }

    fn on_connect(&mut self, children: &[ChildView], _version: i64, now_ms: u64) -> Vec<Out> {
        if self.held() {
            // No birth before the Primary Host says it is online (its STATE, usually
            // retained, arrives after the subscription).
            self.seq = 0;
            self.born.clear();
            return Vec::new();
        }
        self.births(children, now_ms)
    }

    fn add(&mut self, _children: &[ChildView], _now_ms: u64) -> Vec<Out> {
        // A child is born (DBIRTH) with its first values.
        Vec::new()
    }

    fn delete(&mut self, device_ids: &[String], now_ms: u64) -> Vec<Out> {
        let mut out = Vec::new();
        for d in device_ids {
            self.known.remove(d);
            self.born_at.remove(d);
            if self.born.remove(d) {
                out.push(self.message("DDEATH", Some(d), Vec::new(), now_ms));
            }
        }
        // Children that left give their room back (a hash map keeps its largest size).
        self.known.shrink_to_fit();
        self.born_at.shrink_to_fit();
        self.born.shrink_to_fit();
        out
    }

    fn batch_limit(&self) -> usize {
        1
    }

    fn pack(
        &mut self,
        recs: &[(u64, String, Record)],
        _max_bytes: usize,
        now_ms: u64,
    ) -> (Vec<Out>, usize) {
        let Some((_, dev, rec)) = recs.first() else {
            return (Vec::new(), 1);
        };
        match rec {
            Record::Status(st) if !st.online => {
                if self.born.remove(dev) {
                    (
                        vec![self.message("DDEATH", Some(dev), Vec::new(), st.ts_ms.max(1))],
                        1,
                    )
                } else {
                    (Vec::new(), 1)
                }
            }
            Record::Status(_) => {
                if self.born.contains(dev) {
                    (Vec::new(), 1)
                } else {
                    // Born again with what is known; a child never heard from waits for its
                    // first reading.
                    (self.dbirth(dev, now_ms).into_iter().collect(), 1)
                }
            }
            Record::Report(r) => (self.report(dev, r, now_ms), 1),
        }
    }

    fn own(&mut self, props: &BTreeMap<String, Value>, now_ms: u64) -> Vec<Out> {
        // NDATA may only carry metrics the NBIRTH had: unknown ones wait for the next birth.
        let changed: Vec<(&String, &Value)> = props
            .iter()
            .filter(|(k, v)| self.own.get(*k).is_some_and(|old| old != *v))
            .collect();
        let changed: Vec<Metric> = changed
            .into_iter()
            .map(|(k, v)| self.data("", k, v, now_ms))
            .collect();
        for (k, v) in props {
            if let Some(slot) = self.own.get_mut(k) {
                *slot = v.clone();
            }
        }
        if changed.is_empty() || self.held() {
            return Vec::new();
        }
        vec![self.message("NDATA", None, changed, now_ms)]
    }

    fn parse(&mut self, topic: &str, payload: &[u8]) -> Result<Inbound, ParseError> {
        if payload.len() > MAX_INBOUND {
            return Err(ParseError::new(format!(
                "payload of {} bytes exceeds {MAX_INBOUND}",
                payload.len()
            )));
        }
        if self.state_topic().as_deref() == Some(topic) {
            return self.host_state(payload);
        }
        let p = Payload::decode(payload)
            .map_err(|e| ParseError::new(format!("not a Sparkplug B payload: {e}")))?;
        if topic == self.topic("NCMD", None) {
            let rebirth = p.metrics.iter().any(|m| {
                self.command_name("", m).as_deref() == Some(REBIRTH)
                    && m.value == Some(MetricValue::Boolean(true))
            });
            if rebirth {
                return Ok(Inbound::Rebirth);
            }
            // Node control as the gateway's own operations. Sparkplug commands have no
            // answer: the operation's effect is what a host sees (and it is logged).
            let op = p.metrics.iter().find_map(|m| {
                match (self.command_name("", m).as_deref(), &m.value) {
                    (Some(REBOOT), Some(MetricValue::Boolean(true))) => {
                        Some(("restart", Json::Object(serde_json::Map::new())))
                    }
                    (Some(RESTART_BUS), Some(MetricValue::String(bus))) => {
                        Some(("restart_bus", serde_json::json!({ "bus": bus })))
                    }
                    _ => None,
                }
            });
            return Ok(match op {
                Some((name, paras)) => Inbound::Operation {
                    request_id: format!("ncmd-{}", p.seq.unwrap_or(0)),
                    name: name.to_string(),
                    paras,
                    respond: std::sync::Arc::new(|_| None),
                },
                None => Inbound::Ignored("NCMD without a known node control".into()),
            });
        }
        let prefix = format!("{}/", self.topic("DCMD", None));
        let Some(device) = topic
            .strip_prefix(prefix.as_str())
            .filter(|d| !d.is_empty() && !d.contains('/'))
        else {
            return Err(ParseError::new(format!("unexpected topic `{topic}`")));
        };
        let mut props = serde_json::Map::new();
        for m in &p.metrics {
            let name = self
                .command_name(device, m)
                .ok_or_else(|| ParseError::new("DCMD metric without a name or a known alias"))?;
            let v = metric_json(m).ok_or_else(|| {
                ParseError::new(format!("DCMD metric `{name}` has no usable value"))
            })?;
            props.insert(name, v);
        }
        if props.is_empty() {
            return Ok(Inbound::Ignored("DCMD without metrics".into()));
        }
        let dev = device.to_string();
        Ok(Inbound::Request {
            request: Request::Set {
                request_id: format!("dcmd-{}", fieldgate_driver::now_ms()),
                device_id: Some(dev.clone()),
                services: vec![(String::new(), props)],
            },
            // No acknowledgement in Sparkplug: the new value shows in the next DDATA.
            respond: log_only("Sparkplug DCMD", dev),
        })
    }
}

#[cfg(test)]
mod tests;
