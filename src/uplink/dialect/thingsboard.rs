//! ThingsBoard's gateway MQTT API (PROTOCOLS.md §2).
//!
//! The gateway is a ThingsBoard device with "Is gateway" on; it connects with its access token
//! as the MQTT username (`[platform] secret`/`secret_file`; password empty) and speaks for its
//! children by name — fieldgate uses each child's node id as its ThingsBoard device name and
//! its product id as the device type. Children are announced with `v1/gateway/connect` (again
//! for every live child after each reconnect: the server drops child sessions with the
//! gateway's) and an OFFLINE child with `v1/gateway/disconnect`; telemetry is batched on
//! `v1/gateway/telemetry` with `ts` in ms; RPCs arrive on `v1/gateway/rpc` and are answered
//! with the same `id`; after every (re)connect each child's writable points are asked for as
//! shared attributes (`v1/gateway/attributes/request`, so setpoints changed while the gateway
//! was away are applied); shared-attribute updates and attribute responses (`value` or
//! `values`) become property writes; `gateway_device_deleted`/`gateway_device_renamed` arrive as
//! persistent RPCs on the gateway's own RPC topic and are acknowledged. Every payload is built
//! with serde_json (valid JSON by construction: the server closes the whole gateway connection
//! on a bad message). Telemetry and attribute keys are property names (ThingsBoard has no
//! services), or `service.property` with `keys = "service.property"`.

use std::collections::BTreeMap;
use std::sync::Arc;

use fieldgate_driver::{CommandOutcome, Value};
use serde_json::{json, Map, Value as Json};

use super::{log_only, ChildView, Connect, Inbound, Out, ParseError, Respond};
use crate::command::{Reply, Request};
use crate::queue::Record;

pub const CONNECT: &str = "v1/gateway/connect";
pub const DISCONNECT: &str = "v1/gateway/disconnect";
pub const TELEMETRY: &str = "v1/gateway/telemetry";
pub const ATTRIBUTES: &str = "v1/gateway/attributes";
pub const ATTRIBUTES_RESPONSE: &str = "v1/gateway/attributes/response";
pub const ATTRIBUTES_REQUEST: &str = "v1/gateway/attributes/request";
/// Attribute requests remembered (id → keys) until answered; the oldest go beyond this.
const MAX_PENDING_ATTRIBUTES: usize = 4096;
pub const RPC: &str = "v1/gateway/rpc";
pub const OWN_TELEMETRY: &str = "v1/devices/me/telemetry";
pub const OWN_RPC_REQUEST: &str = "v1/devices/me/rpc/request/";
pub const OWN_RPC_RESPONSE: &str = "v1/devices/me/rpc/response/";
/// Children per telemetry message at most.
pub const MAX_TELEMETRY_DEVICES: usize = 100;
/// Inbound payloads larger than this are refused before parsing.
pub const MAX_INBOUND: usize = 64 * 1024;

/// How the gateway device authenticates (PROTOCOLS.md §2.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    /// The access token is the MQTT username, the password is empty.
    Token,
    /// Basic MQTT credentials: client id, username, and the secret as password.
    Basic { username: String },
    /// X.509: the client certificate identifies the device; no MQTT credentials.
    X509,
}

pub struct ThingsBoard {
    client_id: String,
    auth: Auth,
    /// Shared-attribute requests sent and not yet answered: id → the keys asked for (an
    /// older server answers a one-result request with a bare `value`).
    attr_requests: BTreeMap<u64, Vec<String>>,
    next_attr_id: u64,
    /// Keys are `service.property` (config `keys`), not bare property names.
    service_keys: bool,
}

impl ThingsBoard {
    /// `client_id`: the MQTT client id (the config's `device_id`).
    pub fn new(client_id: &str, auth: Auth) -> Self {
        ThingsBoard {
            client_id: client_id.to_string(),
            auth,
            attr_requests: BTreeMap::new(),
            next_attr_id: 1,
            service_keys: false,
        }
    }

    /// Name keys `service.property` (config `keys = "service.property"`).
    pub fn service_keys(mut self, on: bool) -> Self {
        self.service_keys = on;
        self
    }

    fn key(&self, service: &str, property: &str) -> String {
        if self.service_keys {
            format!("{service}.{property}")
        } else {
            property.to_string()
        }
    }

    /// `{"ts":…,"values":{…}}` for one reading, written directly: the same text serde_json
    /// prints for it (keys sorted, non-finite floats as null), without building it first.
    fn entry(&self, r: &fieldgate_driver::Report) -> Vec<u8> {
        let mut out = Vec::with_capacity(32 + r.properties.len() * 24);
        out.extend_from_slice(b"{\"ts\":");
        out.extend_from_slice(itoa::Buffer::new().format(r.ts_ms).as_bytes());
        out.extend_from_slice(b",\"values\":{");
        // `service.property` keys share their prefix: they sort like the properties.
        for (i, (k, v)) in r.properties.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            if self.service_keys {
                fieldgate_driver::write_json_str(&mut out, &self.key(&r.service, k));
            } else {
                fieldgate_driver::write_json_str(&mut out, k);
            }
            out.push(b':');
            v.write_json(&mut out);
        }
        out.extend_from_slice(b"}}");
        out
    }

    /// The platform's keys as one write: bare property names (the router finds each one's
    /// point), or `service.property`, all of one service.
    fn write_of(&self, props: Map<String, Json>) -> Vec<(String, Map<String, Json>)> {
        if !self.service_keys {
            return vec![(String::new(), props)];
        }
        let mut by_service: BTreeMap<String, Map<String, Json>> = BTreeMap::new();
        for (k, v) in props {
            let (svc, prop) = k.split_once('.').unwrap_or(("", k.as_str()));
            by_service
                .entry(svc.to_string())
                .or_default()
                .insert(prop.to_string(), v);
        }
        by_service.into_iter().collect()
    }

    /// Ask for a child's shared attributes that name writable points: setpoints changed on
    /// the server while the gateway was away arrive in the response and are written.
    fn attribute_request(&mut self, device: &str, writable: &[(String, String)]) -> Out {
        let keys: Vec<String> = writable.iter().map(|(s, p)| self.key(s, p)).collect();
        let keys = keys.as_slice();
        let id = self.next_attr_id;
        self.next_attr_id += 1;
        self.attr_requests.insert(id, keys.to_vec());
        while self.attr_requests.len() > MAX_PENDING_ATTRIBUTES {
            self.attr_requests.pop_first();
        }
        let body = match keys {
            [one] => json!({"id": id, "device": device, "client": false, "key": one}),
            many => json!({"id": id, "device": device, "client": false, "keys": many}),
        };
        Out::new(ATTRIBUTES_REQUEST, body.to_string())
    }
}

pub fn connect_msg(device: &str, kind: &str) -> Out {
    Out::new(CONNECT, json!({"device": device, "type": kind}).to_string())
}

pub fn disconnect_msg(device: &str) -> Out {
    Out::new(DISCONNECT, json!({"device": device}).to_string())
}

fn values(p: &BTreeMap<String, Value>) -> Map<String, Json> {
    p.iter().map(|(k, v)| (k.clone(), v.to_json())).collect()
}

/// The RPC answer: `{"device","id","data":{"success":true,…values}}` or success false + error.
/// The answer to one of the gateway's own RPCs: ThingsBoard's service-RPC shape,
/// `{"code":200,"resp":…}`, or an error with its code.
pub fn operation_response(r: &super::OpResult) -> Vec<u8> {
    match r {
        Ok(result) => json!({"code": 200, "resp": result}),
        Err((code, message)) => {
            json!({"code": 400, "error": format!("{code:?}"), "message": message})
        }
    }
    .to_string()
    .into_bytes()
}

pub fn rpc_response(device: &str, id: &Json, o: &CommandOutcome) -> Vec<u8> {
    let data = match o {
        CommandOutcome::Done(by_service) => {
            let mut m = Map::new();
            m.insert("success".into(), Json::Bool(true));
            for props in by_service.values() {
                m.extend(values(props));
            }
            Json::Object(m)
        }
        CommandOutcome::Failed { code, message } => {
            json!({"success": false, "error": message, "code": format!("{code:?}")})
        }
    };
    json!({"device": device, "id": id, "data": data})
        .to_string()
        .into_bytes()
}

impl super::Dialect for ThingsBoard {
    fn connect(&mut self, secret: &str, _now_ms: u64) -> Connect {
        let (username, password) = match &self.auth {
            Auth::Token => (secret.to_string(), String::new()),
            Auth::Basic { username } => (username.clone(), secret.to_string()),
            Auth::X509 => (String::new(), String::new()),
        };
        Connect {
            client_id: self.client_id.clone(),
            username,
            password,
            will: None,
        }
    }

    fn subscriptions(&self) -> Vec<String> {
        vec![
            ATTRIBUTES.into(),
            ATTRIBUTES_RESPONSE.into(),
            RPC.into(),
            format!("{OWN_RPC_REQUEST}+"),
        ]
    }

    fn assigns_ids(&self) -> bool {
        false
    }

    fn on_connect(&mut self, children: &[ChildView], _version: i64, _now_ms: u64) -> Vec<Out> {
        let mut out: Vec<Out> = children
            .iter()
            .filter(|c| c.online == Some(true))
            .filter_map(|c| Some(connect_msg(c.device_id.as_deref()?, &c.product_id)))
            .collect();
        // After every (re)connect: the shared attributes of each child's writable points.
        for c in children {
            if let (Some(dev), false) = (c.device_id.as_deref(), c.writable.is_empty()) {
                out.push(self.attribute_request(dev, &c.writable));
            }
        }
        out
    }

    fn add(&mut self, children: &[ChildView], _now_ms: u64) -> Vec<Out> {
        let mut out: Vec<Out> = children
            .iter()
            .map(|c| connect_msg(&c.node_id, &c.product_id))
            .collect();
        // Client-side attributes: what the gateway knows about each child.
        let attrs: Map<String, Json> = children
            .iter()
            .map(|c| {
                (
                    c.node_id.clone(),
                    json!({"name": c.name, "product_id": c.product_id, "gateway": "fieldgate"}),
                )
            })
            .collect();
        if !attrs.is_empty() {
            out.push(Out::new(ATTRIBUTES, Json::Object(attrs).to_string()));
        }
        out
    }

    fn delete(&mut self, device_ids: &[String], _now_ms: u64) -> Vec<Out> {
        // No gateway topic deletes a device: stop speaking for it.
        device_ids.iter().map(|d| disconnect_msg(d)).collect()
    }

    fn batch_limit(&self) -> usize {
        MAX_TELEMETRY_DEVICES
    }

    fn pack(
        &mut self,
        recs: &[(u64, String, Record)],
        max_bytes: usize,
        _now_ms: u64,
    ) -> (Vec<Out>, usize) {
        if let Some((_, dev, Record::Status(st))) = recs.first() {
            // connect/disconnect name one device each.
            // No type: the device exists already (announced with its type when added).
            let out = if st.online {
                Out::new(CONNECT, json!({"device": dev}).to_string())
            } else {
                disconnect_msg(dev)
            };
            return (vec![out], 1);
        }
        // Entries serialised once, straight from the values (no intermediate JSON tree),
        // grouped by device in the order serde_json writes an object's keys (sorted).
        let mut body: BTreeMap<&str, Vec<Vec<u8>>> = BTreeMap::new();
        let mut size = 2;
        let mut n = 0;
        for (_, dev, r) in recs {
            let Record::Report(r) = r else { break };
            let entry = self.entry(r);
            let add = entry.len() + dev.len() + 8;
            if n > 0
                && (size + add > max_bytes
                    || (!body.contains_key(dev.as_str()) && body.len() >= MAX_TELEMETRY_DEVICES))
            {
                break;
            }
            size += add;
            n += 1;
            body.entry(dev.as_str()).or_default().push(entry);
        }
        let mut out = Vec::with_capacity(size + 16);
        out.push(b'{');
        for (i, (dev, entries)) in body.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            fieldgate_driver::write_json_str(&mut out, dev);
            out.extend_from_slice(b":[");
            out.extend_from_slice(&entries.join(&b','));
            out.push(b']');
        }
        out.push(b'}');
        (vec![Out::new(TELEMETRY, out)], n.max(1))
    }

    fn own(&mut self, props: &BTreeMap<String, Value>, _now_ms: u64) -> Vec<Out> {
        vec![Out::new(
            OWN_TELEMETRY,
            Json::Object(values(props)).to_string(),
        )]
    }

    fn parse(&mut self, topic: &str, payload: &[u8]) -> Result<Inbound, ParseError> {
        if payload.len() > MAX_INBOUND {
            return Err(ParseError::new(format!(
                "payload of {} bytes exceeds {MAX_INBOUND}",
                payload.len()
            )));
        }
        let body: Json = serde_json::from_slice(payload)
            .map_err(|e| ParseError::new(format!("malformed JSON: {e}")))?;
        let s = |v: &Json, k: &str| v.get(k).and_then(Json::as_str).map(str::to_string);
        match topic {
            RPC => {
                // Our own answers come back on this topic (MQTT 3.1.1 has no "no local"): they
                // carry `id` at the top, requests inside `data`.
                if body.get("id").is_some() {
                    return Ok(Inbound::Ignored("echo of our own RPC response".into()));
                }
                let device =
                    s(&body, "device").ok_or_else(|| ParseError::new("RPC without `device`"))?;
                let data = body.get("data").cloned().unwrap_or(Json::Null);
                let id = data.get("id").cloned().unwrap_or(Json::Null);
                let responder: Respond = {
                    let (device, id) = (device.clone(), id.clone());
                    Arc::new(move |o| {
                        Some(Reply {
                            topic: RPC.into(),
                            payload: rpc_response(&device, &id, o),
                        })
                    })
                };
                if !(id.is_u64() || id.is_i64() || id.is_string()) {
                    // Nothing to answer it with.
                    return Err(ParseError::new("RPC without a numeric `id`"));
                }
                let Some(method) = s(&data, "method") else {
                    return Err(ParseError {
                        message: "RPC without `method`".into(),
                        respond: Some(responder),
                    });
                };
                // A scalar `params` is the command's value (`{"method":"setLimit","params":42}`).
                let paras = match data.get("params") {
                    Some(Json::Object(m)) => Json::Object(m.clone()),
                    None | Some(Json::Null) => Json::Null,
                    Some(v) => json!({"value": v}),
                };
                Ok(Inbound::Request {
                    request: Request::Command {
                        request_id: id.to_string(),
                        device_id: Some(device),
                        service: None,
                        name: method,
                        paras,
                    },
                    respond: responder,
                })
            }
            ATTRIBUTES if body.get("device").is_none() => {
                // Our own client attributes (`{"<device>":{…}}`), echoed back to us.
                Ok(Inbound::Ignored("echo of our client attributes".into()))
            }
            ATTRIBUTES | ATTRIBUTES_RESPONSE => {
                let device = s(&body, "device")
                    .ok_or_else(|| ParseError::new("attributes without `device`"))?;
                // Update: {"device","data":{k:v,"deleted":[…]}}; response: "value" (one key,
                // named by our request) or "values".
                let mut props: Map<String, Json> =
                    match (body.get("data"), body.get("values"), body.get("value")) {
                        (Some(Json::Object(d)), _, _) => d.clone(),
                        (_, Some(Json::Object(v)), _) => v.clone(),
                        (_, _, Some(v)) => {
                            // The key: named in the answer, or the one our request asked for.
                            let asked = body
                                .get("id")
                                .and_then(Json::as_u64)
                                .and_then(|id| self.attr_requests.get(&id))
                                .and_then(|keys| match keys.as_slice() {
                                    [one] => Some(one.clone()),
                                    _ => None,
                                });
                            match s(&body, "key").or(asked) {
                                Some(k) => Map::from_iter([(k, v.clone())]),
                                None => {
                                    return Ok(Inbound::Ignored(
                                        "single attribute value without its key".into(),
                                    ))
                                }
                            }
                        }
                        _ if topic == ATTRIBUTES_RESPONSE => {
                            // None of the asked attributes is set on the server.
                            Map::new()
                        }
                        _ => {
                            return Err(ParseError::new(
                                "attributes without `data`, `values` or `value`",
                            ))
                        }
                    };
                if topic == ATTRIBUTES_RESPONSE {
                    if let Some(id) = body.get("id").and_then(Json::as_u64) {
                        self.attr_requests.remove(&id);
                    }
                }
                props.remove("deleted");
                if props.is_empty() {
                    return Ok(Inbound::Ignored("attribute deletion only".into()));
                }
                let rid = format!("attr-{}", fieldgate_driver::now_ms());
                let name = device.clone();
                Ok(Inbound::Request {
                    request: Request::Set {
                        request_id: rid,
                        device_id: Some(device),
                        // ThingsBoard has no services: the router finds each property's point
                        // (or, with `service.property` keys, the service is in the key).
                        services: self.write_of(props),
                    },
                    // Attribute updates are not acknowledged; a failed write is logged.
                    respond: log_only("shared attribute update", name),
                })
            }
            t if t.starts_with(OWN_RPC_REQUEST) => {
                let id = &t[OWN_RPC_REQUEST.len()..];
                let ack = |ok: bool, why: &str| Reply {
                    topic: format!("{OWN_RPC_RESPONSE}{id}"),
                    payload: if ok {
                        json!({"success": true})
                    } else {
                        json!({"success": false, "error": why})
                    }
                    .to_string()
                    .into_bytes(),
                };
                match s(&body, "method").as_deref() {
                    Some("gateway_device_deleted") => {
                        let dev = s(&body, "params").ok_or_else(|| {
                            ParseError::new("gateway_device_deleted without a device name")
                        })?;
                        Ok(Inbound::Notified {
                            inbound: Box::new(Inbound::Deleted {
                                device_ids: vec![dev],
                                version: None,
                            }),
                            ack: ack(true, ""),
                        })
                    }
                    Some("gateway_device_renamed") => {
                        let (from, to) = body
                            .get("params")
                            .and_then(Json::as_object)
                            .and_then(|m| m.iter().next())
                            .and_then(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                            .ok_or_else(|| {
                                ParseError::new("gateway_device_renamed without {old: new}")
                            })?;
                        Ok(Inbound::Notified {
                            inbound: Box::new(Inbound::Renamed { from, to }),
                            ack: ack(true, ""),
                        })
                    }
                    Some(method) => {
                        // The gateway's own operations, by the names ThingsBoard's gateway UI
                        // offers (`gateway_ping`, …) or by ours.
                        let name = method
                            .strip_prefix("gateway_")
                            .unwrap_or(method)
                            .to_string();
                        let topic = format!("{OWN_RPC_RESPONSE}{id}");
                        Ok(Inbound::Operation {
                            request_id: id.to_string(),
                            name,
                            paras: body.get("params").cloned().unwrap_or(Json::Null),
                            respond: std::sync::Arc::new(move |r| {
                                Some(Reply {
                                    topic: topic.clone(),
                                    payload: operation_response(r),
                                })
                            }),
                        })
                    }
                    None => Ok(Inbound::Notified {
                        inbound: Box::new(Inbound::Ignored("gateway RPC without a method".into())),
                        ack: ack(false, "no method"),
                    }),
                }
            }
            other => Err(ParseError::new(format!("unexpected topic `{other}`"))),
        }
    }
}

#[cfg(test)]
mod tests;
