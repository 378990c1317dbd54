//! AllThingsTalk's gateway protocol as the seed clients speak it (`att_iot_gateway`,
//! SmartLiving; PROTOCOLS.md §3.2): MQTT client id = the first 23 characters of the gateway
//! id, username `{account}:{account}`, password the account's client key (`secret`). Each
//! child property is an asset: its state goes up on
//! `client/{account}/out/gateway/{gw}/device/{node}/asset/{property}/state` as
//! `"{epoch seconds}|{value}"`, the gateway's own on `…/gateway/{gw}/asset/{name}/state`.
//! Commands come down on `client/{account}/in/gateway/{gw}/device/{node}/asset/{asset}/command`
//! (raw value); the seed subscribes with `…/{gw}/#/command`, which is not a valid MQTT filter,
//! so fieldgate subscribes `client/{account}/in/gateway/{gw}/#` and matches the suffix. A
//! command writes the point named like the asset; on success the new state is published back
//! as confirmation (the platform has no other acknowledgement). The protocol has no
//! ONLINE/OFFLINE: statuses are not sent. Devices and assets are provisioned through the
//! platform's HTTP API, which fieldgate does not call (the issue leaves it optional): create
//! them in the platform (or with the seed's tools) with the node ids and property names.

use std::collections::BTreeMap;
use std::sync::Arc;

use fieldgate_driver::{CommandOutcome, Value};
use serde_json::Value as Json;

use super::{ChildView, Connect, Inbound, Out, ParseError};
use crate::command::{Reply, Request};
use crate::queue::Record;

pub const MAX_INBOUND: usize = 16 * 1024;

pub struct AllThingsTalk {
    account: String,
    gateway: String,
}

impl AllThingsTalk {
    pub fn new(account: &str, gateway: &str) -> Self {
        AllThingsTalk {
            account: account.to_string(),
            gateway: gateway.to_string(),
        }
    }

    fn out(&self) -> String {
        format!("client/{}/out/gateway/{}", self.account, self.gateway)
    }

    fn in_prefix(&self) -> String {
        format!("client/{}/in/gateway/{}/", self.account, self.gateway)
    }

    pub fn state_topic(&self, device: Option<&str>, asset: &str) -> String {
        match device {
            Some(d) => format!("{}/device/{d}/asset/{asset}/state", self.out()),
            None => format!("{}/asset/{asset}/state", self.out()),
        }
    }
}

/// `"{epoch seconds}|{value}"`, the seed's scalar form (booleans as true/false).
pub fn scalar(ts_ms: u64, v: &Value) -> String {
    let text = match v {
        Value::Bool(b) => b.to_string(),
        Value::Int(i) => i.to_string(),
        Value::UInt(u) => u.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Text(s) => s.clone(),
    };
    format!("{}|{text}", ts_ms / 1000)
}

/// A command's raw value: JSON when it parses (numbers, true/false, "strings", {"value":…}),
/// else the text itself.
fn command_value(payload: &[u8]) -> Option<Json> {
    let text = std::str::from_utf8(payload).ok()?.trim();
    Some(match serde_json::from_str::<Json>(text) {
        Ok(Json::Object(mut m)) if m.contains_key("value") => {
            m.remove("value").unwrap_or(Json::Null)
        }
        Ok(v) => v,
        Err(_) => Json::String(text.to_string()),
    })
}

impl super::Dialect for AllThingsTalk {
    fn connect(&mut self, secret: &str, _now_ms: u64) -> Connect {
        Connect {
            client_id: self.gateway.chars().take(23).collect(),
            username: format!("{0}:{0}", self.account),
            password: secret.to_string(),
            will: None,
        }
    }

    fn subscriptions(&self) -> Vec<String> {
        vec![format!("{}#", self.in_prefix())]
    }

    fn assigns_ids(&self) -> bool {
        false
    }

    fn on_connect(&mut self, _children: &[ChildView], _version: i64, _now_ms: u64) -> Vec<Out> {
        Vec::new()
    }

    fn add(&mut self, _children: &[ChildView], _now_ms: u64) -> Vec<Out> {
        Vec::new()
    }

    fn delete(&mut self, _device_ids: &[String], _now_ms: u64) -> Vec<Out> {
        Vec::new()
    }

    fn batch_limit(&self) -> usize {
        1
    }

    fn pack(
        &mut self,
        recs: &[(u64, String, Record)],
        _max_bytes: usize,
        _now_ms: u64,
    ) -> (Vec<Out>, usize) {
        match recs.first() {
            Some((_, dev, Record::Report(r))) => (
                r.properties
                    .iter()
                    .map(|(k, v)| Out::new(self.state_topic(Some(dev), k), scalar(r.ts_ms, v)))
                    .collect(),
                1,
            ),
            // No ONLINE/OFFLINE in this protocol.
            _ => (Vec::new(), 1),
        }
    }

    fn own(&mut self, props: &BTreeMap<String, Value>, now_ms: u64) -> Vec<Out> {
        props
            .iter()
            .map(|(k, v)| Out::new(self.state_topic(None, k), scalar(now_ms, v)))
            .collect()
    }

    fn parse(&mut self, topic: &str, payload: &[u8]) -> Result<Inbound, ParseError> {
        let Some(rest) = topic.strip_prefix(self.in_prefix().as_str()) else {
            return Err(ParseError::new(format!("unexpected topic `{topic}`")));
        };
        if payload.len() > MAX_INBOUND {
            return Err(ParseError::new(format!(
                "payload of {} bytes exceeds {MAX_INBOUND}",
                payload.len()
            )));
        }
        let parts: Vec<&str> = rest.split('/').collect();
        let (device, asset) = match parts.as_slice() {
            ["device", d, "asset", a, "command"] => (Some(d.to_string()), a.to_string()),
            ["asset", a, "command"] => (None, a.to_string()),
            _ => return Ok(Inbound::Ignored(format!("not a command: {rest}"))),
        };
        if asset.is_empty() || device.as_deref() == Some("") {
            return Err(ParseError::new("command topic without a device or asset"));
        }
        let value =
            command_value(payload).ok_or_else(|| ParseError::new("command value is not UTF-8"))?;
        if device.is_none() && crate::config::OPERATIONS.contains(&asset.as_str()) {
            // A gateway asset named after one of its own operations: run it; the result is the
            // asset's new state, as a complex value (`{"value":…,"at":…}`).
            let topic = self.state_topic(None, &asset);
            let paras = match value {
                Json::Object(m) => Json::Object(m),
                Json::Null => Json::Object(serde_json::Map::new()),
                other => serde_json::json!({ "value": other }),
            };
            return Ok(Inbound::Operation {
                request_id: format!("att-{}", fieldgate_driver::now_ms()),
                name: asset,
                paras,
                respond: Arc::new(move |r| {
                    let value = match r {
                        Ok(result) => result.clone(),
                        Err((code, message)) => {
                            serde_json::json!({"error": format!("{code:?}"), "message": message})
                        }
                    };
                    let (y, mo, d, h, mi, sec, _) = super::utc(fieldgate_driver::now_ms());
                    let at = format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{sec:02}Z");
                    Some(Reply {
                        topic: topic.clone(),
                        payload: serde_json::json!({"value": value, "at": at})
                            .to_string()
                            .into_bytes(),
                    })
                }),
            });
        }
        let confirm = {
            let topic = self.state_topic(device.as_deref(), &asset);
            let asset = asset.clone();
            Arc::new(move |o: &CommandOutcome| match o {
                // The new state is the confirmation the platform expects.
                CommandOutcome::Done(by_service) => {
                    let v = by_service.values().find_map(|p| p.get(&asset))?;
                    Some(Reply {
                        topic: topic.clone(),
                        payload: scalar(fieldgate_driver::now_ms(), v).into_bytes(),
                    })
                }
                CommandOutcome::Failed { message, .. } => {
                    tracing::warn!(asset = %asset, reason = %message, "AllThingsTalk command not executed");
                    None
                }
            })
        };
        Ok(Inbound::Request {
            request: Request::Set {
                request_id: format!("att-{}", fieldgate_driver::now_ms()),
                device_id: device,
                services: vec![(String::new(), serde_json::Map::from_iter([(asset, value)]))],
            },
            respond: confirm,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::uplink::dialect::Dialect;
    use fieldgate_driver::Report;
    use serde_json::json;

    fn att() -> AllThingsTalk {
        AllThingsTalk::new("acc1", "gateway-0123456789abcdefghij")
    }

    #[test]
    fn identity_and_asset_states_as_the_seed_sends_them() {
        let mut a = att();
        let c = a.connect("client-key", 0);
        assert_eq!(
            c.client_id, "gateway-0123456789abcde",
            "first 23 characters"
        );
        assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("acc1:acc1", "client-key")
        );
        assert_eq!(
            a.subscriptions(),
            vec!["client/acc1/in/gateway/gateway-0123456789abcdefghij/#"]
        );
        let recs = vec![(
            1,
            "m1".to_string(),
            Record::Report(Report {
                child: "m1".into(),
                service: "energy".into(),
                properties: fieldgate_driver::Properties::from([
                    ("power".into(), Value::Float(1.5)),
                    ("on".into(), Value::Bool(true)),
                ]),
                ts_ms: 1_700_000_000_123,
            }),
        )];
        let (outs, n) = a.pack(&recs, 4096, 0);
        assert_eq!(n, 1);
        let got: Vec<(String, String)> = outs
            .iter()
            .map(|o| {
                (
                    o.topic.clone(),
                    String::from_utf8_lossy(&o.payload).to_string(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("client/acc1/out/gateway/gateway-0123456789abcdefghij/device/m1/asset/on/state".into(), "1700000000|true".into()),
                ("client/acc1/out/gateway/gateway-0123456789abcdefghij/device/m1/asset/power/state".into(), "1700000000|1.5".into()),
            ]
        );
        let own = a.own(
            &BTreeMap::from([("uptime_s".to_string(), Value::UInt(9))]),
            1_700_000_000_000,
        );
        assert_eq!(
            own[0].topic,
            "client/acc1/out/gateway/gateway-0123456789abcdefghij/asset/uptime_s/state"
        );
        let st = vec![(
            2,
            "m1".to_string(),
            Record::Status(fieldgate_driver::DeviceStatus {
                child: "m1".into(),
                online: true,
                reason: String::new(),
                ts_ms: 0,
            }),
        )];
        assert_eq!(
            a.pack(&st, 4096, 0),
            (Vec::new(), 1),
            "no statuses in this protocol"
        );
    }

    #[test]
    fn commands_match_the_suffix_and_confirm_with_the_new_state() {
        let mut a = att();
        let t = "client/acc1/in/gateway/gateway-0123456789abcdefghij/device/m1/asset/demand_limit/command";
        for (payload, want) in [
            (&b"42.5"[..], json!(42.5)),
            (b"true", json!(true)),
            (br#"{"value":7}"#, json!(7)),
            (b"on", json!("on")),
        ] {
            let Ok(Inbound::Request {
                request:
                    Request::Set {
                        device_id,
                        services,
                        ..
                    },
                ..
            }) = a.parse(t, payload)
            else {
                panic!("not a set")
            };
            assert_eq!(device_id.as_deref(), Some("m1"));
            assert_eq!(services[0].1["demand_limit"], want);
        }
        let Ok(Inbound::Request { respond, .. }) = a.parse(t, b"42.5") else {
            panic!()
        };
        let r = respond(&CommandOutcome::Done(BTreeMap::from([(
            "energy".to_string(),
            BTreeMap::from([("demand_limit".to_string(), Value::Float(42.5))]),
        )])))
        .unwrap_or_else(|| panic!("an answer"));
        assert_eq!(r.topic, "client/acc1/out/gateway/gateway-0123456789abcdefghij/device/m1/asset/demand_limit/state");
        assert!(String::from_utf8_lossy(&r.payload).ends_with("|42.5"));
        let gw_asset = "client/acc1/in/gateway/gateway-0123456789abcdefghij/asset/reboot/command";
        assert!(matches!(
            a.parse(gw_asset, b"true"),
            Ok(Inbound::Request {
                request: Request::Set {
                    device_id: None,
                    ..
                },
                ..
            })
        ));
        assert!(matches!(
            a.parse(
                "client/acc1/in/gateway/gateway-0123456789abcdefghij/device/m1/asset/x/feed",
                b"1"
            ),
            Ok(Inbound::Ignored(_))
        ));
        assert!(a
            .parse("client/other/in/gateway/g/device/m1/asset/x/command", b"1")
            .is_err());
        assert!(a.parse(t, b"\xff\xfe").is_err());
    }
}
