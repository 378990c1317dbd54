//! Huawei OceanConnect's legacy MQTT interface (the seed's AgentLite document §8.2,
//! PROTOCOLS.md §1 "legacy"): the gateway connects as a directly connected device with the
//! same CONNECT authentication as IoTDA (client id `{id}_0_{0|1}_{YYYYMMDDHH}`, HMAC-SHA256
//! password), reports `{"msgType":"deviceReq","data":[{serviceId, serviceData, eventTime}]}` on
//! `/huawei/v1/devices/{id}/data/json`, receives `{"msgType":"cloudReq","serviceId","cmd",
//! "paras","mid"}` on `/huawei/v1/devices/{id}/command/json` and answers
//! `{"msgType":"deviceRsp","mid","errcode","body"}`.
//!
//! The interface has no sub-devices. UNCONFIRMED, and read the safest way: each child's entry
//! carries an extra `"deviceId": "<node id>"` (a platform that does not know the field still
//! gets standard service data), a child's ONLINE/OFFLINE is reported as service `$status`
//! with `{"online": bool}`, and a command with a `deviceId` goes to that child (without one it
//! is for the gateway itself, which takes none). Adding and deleting children were HTTP calls
//! in the legacy platform: nothing is sent for them, children are known by their node ids.

use std::collections::BTreeMap;
use std::sync::Arc;

use fieldgate_driver::{CommandOutcome, Value};
use serde_json::{json, Map, Value as Json};

use super::iotda::{client_id, event_time, hour_stamp, password, result_code};
use super::{ChildView, Connect, Inbound, Out, ParseError, Respond};
use crate::command::{Reply, Request};
use crate::queue::Record;

/// Service data entries per message at most (the IoTDA batch limit, kept for the legacy API).
pub const MAX_ENTRIES: usize = 100;
pub const MAX_INBOUND: usize = 64 * 1024;

pub struct OceanConnect {
    id: String,
    check_timestamp: bool,
    data: String,
    command: String,
}

impl OceanConnect {
    pub fn new(device_id: &str, check_timestamp: bool) -> Self {
        OceanConnect {
            id: device_id.to_string(),
            check_timestamp,
            data: format!("/huawei/v1/devices/{device_id}/data/json"),
            command: format!("/huawei/v1/devices/{device_id}/command/json"),
        }
    }

    fn entry(
        &self,
        child: Option<&str>,
        service: &str,
        data: Map<String, Json>,
        ts_ms: u64,
    ) -> Json {
        let mut e = Map::new();
        if let Some(c) = child {
            e.insert("deviceId".into(), json!(c));
        }
        e.insert("serviceId".into(), json!(service));
        e.insert("serviceData".into(), Json::Object(data));
        e.insert("eventTime".into(), json!(event_time(ts_ms)));
        Json::Object(e)
    }

    fn device_req(&self, entries: Vec<Json>) -> Out {
        Out::new(
            self.data.clone(),
            json!({"msgType": "deviceReq", "data": entries}).to_string(),
        )
    }
}

/// The command answer: `errcode` 0 on success (IoTDA's result codes otherwise), `body` the
/// values read back or the reason.
pub fn device_rsp(mid: &Json, o: &CommandOutcome) -> Vec<u8> {
    operation_rsp(
        mid,
        &match o {
            CommandOutcome::Done(by_service) => {
                let mut m = Map::new();
                for props in by_service.values() {
                    m.extend(props.iter().map(|(k, v)| (k.clone(), v.to_json())));
                }
                Ok(Json::Object(m))
            }
            CommandOutcome::Failed { code, message } => Err((*code, message.clone())),
        },
    )
}

/// `deviceRsp`: the result as `body` (a child's command: the values read back; one of the
/// gateway's own operations: its result).
pub fn operation_rsp(mid: &Json, r: &super::OpResult) -> Vec<u8> {
    let (code, body) = match r {
        Ok(result) => (0, result.clone()),
        Err((code, message)) => (result_code(*code), json!({"result": message})),
    };
    json!({"msgType": "deviceRsp", "mid": mid, "errcode": code, "body": body})
        .to_string()
        .into_bytes()
}

impl super::Dialect for OceanConnect {
    fn connect(&mut self, secret: &str, now_ms: u64) -> Connect {
        let hour = hour_stamp(now_ms);
        Connect {
            client_id: client_id(&self.id, self.check_timestamp, &hour),
            username: self.id.clone(),
            password: password(secret, &hour),
            will: None,
        }
    }

    fn subscriptions(&self) -> Vec<String> {
        vec![self.command.clone()]
    }

    fn assigns_ids(&self) -> bool {
        false
    }

    fn on_connect(&mut self, children: &[ChildView], _version: i64, now_ms: u64) -> Vec<Out> {
        // Replay every known child's status.
        let entries: Vec<Json> = children
            .iter()
            .filter_map(|c| {
                let online = c.online?;
                Some(self.entry(
                    Some(c.device_id.as_deref()?),
                    "$status",
                    Map::from_iter([("online".to_string(), json!(online))]),
                    now_ms,
                ))
            })
            .collect();
        entries
            .chunks(MAX_ENTRIES)
            .map(|c| self.device_req(c.to_vec()))
            .collect()
    }

    fn add(&mut self, _children: &[ChildView], _now_ms: u64) -> Vec<Out> {
        Vec::new()
    }

    fn delete(&mut self, _device_ids: &[String], _now_ms: u64) -> Vec<Out> {
        Vec::new()
    }

    fn batch_limit(&self) -> usize {
        MAX_ENTRIES
    }

    fn pack(
        &mut self,
        recs: &[(u64, String, Record)],
        max_bytes: usize,
        _now_ms: u64,
    ) -> (Vec<Out>, usize) {
        let mut entries = Vec::new();
        let mut size = 40;
        for (_, dev, r) in recs.iter().take(MAX_ENTRIES) {
            let e = match r {
                Record::Report(r) => self.entry(
                    Some(dev),
                    &r.service,
                    r.properties
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_json()))
                        .collect(),
                    r.ts_ms,
                ),
                Record::Status(st) => self.entry(
                    Some(dev),
                    "$status",
                    Map::from_iter([("online".to_string(), json!(st.online))]),
                    st.ts_ms,
                ),
            };
            let add = e.to_string().len() + 1;
            if !entries.is_empty() && size + add > max_bytes {
                break;
            }
            size += add;
            entries.push(e);
        }
        let n = entries.len().max(1);
        (vec![self.device_req(entries)], n)
    }

    fn own(&mut self, props: &BTreeMap<String, Value>, now_ms: u64) -> Vec<Out> {
        let data = props
            .iter()
            .map(|(k, v)| (k.clone(), v.to_json()))
            .collect();
        vec![self.device_req(vec![self.entry(None, "gateway", data, now_ms)])]
    }

    fn parse(&mut self, topic: &str, payload: &[u8]) -> Result<Inbound, ParseError> {
        if topic != self.command {
            return Err(ParseError::new(format!("unexpected topic `{topic}`")));
        }
        if payload.len() > MAX_INBOUND {
            return Err(ParseError::new(format!(
                "payload of {} bytes exceeds {MAX_INBOUND}",
                payload.len()
            )));
        }
        let body: Json = serde_json::from_slice(payload)
            .map_err(|e| ParseError::new(format!("malformed JSON: {e}")))?;
        let mid = body.get("mid").cloned().unwrap_or(Json::Null);
        let respond: Option<Respond> = mid.is_u64().then(|| {
            let (topic, mid) = (self.data.clone(), mid.clone());
            Arc::new(move |o: &CommandOutcome| {
                Some(Reply {
                    topic: topic.clone(),
                    payload: device_rsp(&mid, o),
                })
            }) as Respond
        });
        let refuse = |why: &str| ParseError {
            message: why.to_string(),
            respond: respond.clone(),
        };
        if body.get("msgType").and_then(Json::as_str) != Some("cloudReq") {
            return Ok(Inbound::Ignored("not a cloudReq".into()));
        }
        let Some(respond) = respond.clone() else {
            return Err(ParseError::new("cloudReq without a numeric `mid`"));
        };
        let cmd = body
            .get("cmd")
            .and_then(Json::as_str)
            .ok_or_else(|| refuse("missing `cmd`"))?;
        let service = body
            .get("serviceId")
            .and_then(Json::as_str)
            .ok_or_else(|| refuse("missing `serviceId`"))?;
        let paras = body.get("paras").cloned().unwrap_or(Json::Null);
        if !(paras.is_object() || paras.is_null()) {
            return Err(refuse("`paras` must be an object"));
        }
        let device = body.get("deviceId").and_then(Json::as_str);
        if device.is_none_or(|d| d == self.id) {
            // For the gateway itself: one of its own operations, named by `cmd`.
            let (topic, mid2) = (self.data.clone(), mid.clone());
            return Ok(Inbound::Operation {
                request_id: mid.to_string(),
                name: cmd.to_string(),
                paras,
                respond: Arc::new(move |r| {
                    Some(Reply {
                        topic: topic.clone(),
                        payload: operation_rsp(&mid2, r),
                    })
                }),
            });
        }
        Ok(Inbound::Request {
            request: Request::Command {
                request_id: mid.to_string(),
                device_id: body
                    .get("deviceId")
                    .and_then(Json::as_str)
                    .map(str::to_string),
                service: Some(service.to_string()),
                name: cmd.to_string(),
                paras,
            },
            respond,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::uplink::dialect::Dialect;
    use fieldgate_driver::{ErrorCode, Report};

    #[test]
    fn connect_is_iotdas_and_reports_are_device_req() {
        let mut oc = OceanConnect::new("5f8a_gw", false);
        // 2018-07-24 17:56:20 UTC, the document's example hour.
        let c = oc.connect("s3cret", 1_532_454_980_000);
        assert_eq!(c.client_id, "5f8a_gw_0_0_2018072417");
        assert_eq!(c.username, "5f8a_gw");
        assert_eq!(c.password, password("s3cret", "2018072417"));
        assert_eq!(
            oc.subscriptions(),
            vec!["/huawei/v1/devices/5f8a_gw/command/json"]
        );
        let recs = vec![(
            1,
            "meter-1".to_string(),
            Record::Report(Report {
                child: "meter-1".into(),
                service: "Battery".into(),
                properties: fieldgate_driver::Properties::from([(
                    "batteryLevel".into(),
                    Value::UInt(75),
                )]),
                ts_ms: 1_462_277_740_000,
            }),
        )];
        let (out, n) = oc.pack(&recs, 65536, 0);
        assert_eq!(n, 1);
        assert_eq!(out[0].topic, "/huawei/v1/devices/5f8a_gw/data/json");
        // The document's Battery example, plus the child's id.
        assert_eq!(
            String::from_utf8_lossy(&out[0].payload),
            r#"{"data":[{"deviceId":"meter-1","eventTime":"20160503T121540Z","serviceData":{"batteryLevel":75},"serviceId":"Battery"}],"msgType":"deviceReq"}"#
        );
        let own = oc.own(
            &BTreeMap::from([("uptime_s".to_string(), Value::UInt(1))]),
            1_462_277_740_000,
        );
        assert!(String::from_utf8_lossy(&own[0].payload).contains(r#""serviceId":"gateway""#));
        assert!(oc.add(&[], 0).is_empty() && !oc.assigns_ids());
    }

    #[test]
    fn cloud_req_becomes_a_command_answered_with_device_rsp() {
        let mut oc = OceanConnect::new("gw", false);
        let t = "/huawei/v1/devices/gw/command/json";
        let m = oc.parse(t, br#"{"msgType":"cloudReq","serviceId":"WaterMeter","mid":2016,"cmd":"SET_LIMIT","paras":{"value":4},"deviceId":"meter-1"}"#);
        let Ok(Inbound::Request { request, respond }) = m else {
            panic!("not a request")
        };
        assert_eq!(
            request,
            Request::Command {
                request_id: "2016".into(),
                device_id: Some("meter-1".into()),
                service: Some("WaterMeter".into()),
                name: "SET_LIMIT".into(),
                paras: json!({"value": 4}),
            }
        );
        let ok = respond(&CommandOutcome::Done(BTreeMap::from([(
            "WaterMeter".to_string(),
            BTreeMap::from([("value".to_string(), Value::UInt(4))]),
        )])))
        .unwrap_or_else(|| panic!("an answer"));
        assert_eq!(ok.topic, "/huawei/v1/devices/gw/data/json");
        assert_eq!(
            String::from_utf8_lossy(&ok.payload),
            r#"{"body":{"value":4},"errcode":0,"mid":2016,"msgType":"deviceRsp"}"#
        );
        let bad = respond(&CommandOutcome::Failed {
            code: ErrorCode::Offline,
            message: "down".into(),
        })
        .unwrap_or_else(|| panic!("an answer"));
        assert!(String::from_utf8_lossy(&bad.payload)
            .contains(&format!(r#""errcode":{}"#, result_code(ErrorCode::Offline))));
        // Malformed: answered when it has a mid, refused otherwise.
        let e = oc
            .parse(t, br#"{"msgType":"cloudReq","mid":7,"serviceId":"s"}"#)
            .err();
        assert!(e.is_some_and(|e| e.message.contains("cmd") && e.respond.is_some()));
        assert!(oc
            .parse(t, br#"{"msgType":"cloudReq","cmd":"x","serviceId":"s"}"#)
            .is_err_and(|e| e.respond.is_none()));
        assert!(matches!(
            oc.parse(t, br#"{"msgType":"deviceRsp","mid":1}"#),
            Ok(Inbound::Ignored(_))
        ));
        assert!(oc.parse("/other", b"{}").is_err());
        assert!(oc.parse(t, b"[").is_err());
    }
}
