//! ThingsBoard messages byte for byte against PROTOCOLS.md §2 (from the server's
//! AbstractGatewaySessionHandler/JsonConverter and the Python gateway SDK).

use std::collections::BTreeMap;

use fieldgate_driver::{CommandOutcome, DeviceStatus, ErrorCode, Report, Value};
use serde_json::json;

use super::*;
use crate::uplink::dialect::{ChildView, Dialect, Inbound};

fn child(node: &str, online: Option<bool>) -> ChildView {
    ChildView {
        node_id: node.into(),
        device_id: Some(node.into()),
        product_id: "thermostat".into(),
        name: node.into(),
        online,
        ..Default::default()
    }
}

fn text(o: &Out) -> (&str, String) {
    (
        o.topic.as_str(),
        String::from_utf8_lossy(&o.payload).to_string(),
    )
}

#[test]
fn identity_subscriptions_and_session_replay() {
    let mut tb = ThingsBoard::new("gw-7", Auth::Token);
    let c = tb.connect("A1_TEST_TOKEN", 0);
    assert_eq!(
        (
            c.client_id.as_str(),
            c.username.as_str(),
            c.password.as_str()
        ),
        ("gw-7", "A1_TEST_TOKEN", "")
    );
    assert_eq!(
        tb.subscriptions(),
        vec![
            "v1/gateway/attributes",
            "v1/gateway/attributes/response",
            "v1/gateway/rpc",
            "v1/devices/me/rpc/request/+"
        ]
    );
    assert!(!tb.assigns_ids());
    // Basic MQTT credentials, and X.509 (no credentials: the certificate identifies it).
    let c = ThingsBoard::new(
        "gw-7",
        Auth::Basic {
            username: "gw-user".into(),
        },
    )
    .connect("pw", 0);
    assert_eq!(
        (
            c.client_id.as_str(),
            c.username.as_str(),
            c.password.as_str()
        ),
        ("gw-7", "gw-user", "pw")
    );
    let c = ThingsBoard::new("gw-7", Auth::X509).connect("ignored", 0);
    assert_eq!((c.username.as_str(), c.password.as_str()), ("", ""));
    // After every CONNACK: connect again for every live child (the server dropped them).
    let out = tb.on_connect(
        &[
            child("Device A", Some(true)),
            child("Device B", Some(false)),
            child("C", None),
        ],
        0,
        0,
    );
    assert_eq!(out.len(), 1);
    assert_eq!(
        text(&out[0]),
        (
            "v1/gateway/connect",
            r#"{"device":"Device A","type":"thermostat"}"#.into()
        )
    );
    let add = tb.add(&[child("Device A", None)], 0);
    assert_eq!(
        text(&add[0]),
        (
            "v1/gateway/connect",
            r#"{"device":"Device A","type":"thermostat"}"#.into()
        )
    );
    assert_eq!(
        text(&add[1]),
        (
            "v1/gateway/attributes",
            r#"{"Device A":{"gateway":"fieldgate","name":"Device A","product_id":"thermostat"}}"#
                .into()
        )
    );
    // …which the broker echoes back to us: not an update.
    assert!(matches!(
        tb.parse(ATTRIBUTES, &add[1].payload),
        Ok(Inbound::Ignored(_))
    ));
    let del = tb.delete(&["Device A".to_string()], 0);
    assert_eq!(
        text(&del[0]),
        ("v1/gateway/disconnect", r#"{"device":"Device A"}"#.into())
    );
}

fn report(child: &str, ts: u64, props: &[(&str, Value)]) -> Record {
    Record::Report(Report {
        child: child.into(),
        service: "s".into(),
        properties: props
            .iter()
            .map(|(k, v)| ((*k).into(), v.clone()))
            .collect(),
        ts_ms: ts,
    })
}

#[test]
fn telemetry_is_batched_per_device_with_ms_timestamps() {
    let mut tb = ThingsBoard::new("gw", Auth::Token);
    let recs = vec![
        (
            1,
            "Device A".to_string(),
            report("a", 1_483_228_800_000, &[("temperature", Value::UInt(42))]),
        ),
        (
            2,
            "Device B".to_string(),
            report("b", 1_483_228_800_500, &[("humidity", Value::Float(55.5))]),
        ),
        (
            3,
            "Device A".to_string(),
            report("a", 1_483_228_801_000, &[("temperature", Value::UInt(43))]),
        ),
        (
            4,
            "Device A".to_string(),
            Record::Status(DeviceStatus {
                child: "a".into(),
                online: false,
                reason: "x".into(),
                ts_ms: 0,
            }),
        ),
    ];
    let (out, n) = tb.pack(&recs, 65536, 0);
    let out = &out[0];
    assert_eq!(n, 3, "stops at the status");
    assert_eq!(out.topic, "v1/gateway/telemetry");
    let body: serde_json::Value = serde_json::from_slice(&out.payload).unwrap_or_default();
    assert_eq!(
        body,
        json!({
            "Device A": [{"ts": 1_483_228_800_000u64, "values": {"temperature": 42}},
                         {"ts": 1_483_228_801_000u64, "values": {"temperature": 43}}],
            "Device B": [{"ts": 1_483_228_800_500u64, "values": {"humidity": 55.5}}]
        })
    );
    // The documented single-device form, byte for byte.
    let (out, _) = tb.pack(&recs[..1], 65536, 0);
    assert_eq!(
        String::from_utf8_lossy(&out[0].payload),
        r#"{"Device A":[{"ts":1483228800000,"values":{"temperature":42}}]}"#
    );
    // Statuses: OFFLINE disconnects, ONLINE connects (one device per message).
    let (out, n) = tb.pack(&recs[3..], 65536, 0);
    assert_eq!(
        (text(&out[0]), n),
        (
            ("v1/gateway/disconnect", r#"{"device":"Device A"}"#.into()),
            1
        )
    );
    // A size bound splits the batch but always carries at least one record.
    let (_, n) = tb.pack(&recs, 80, 0);
    assert_eq!(n, 1);
    // Own telemetry.
    let own = tb.own(
        &BTreeMap::from([("uptime_s".to_string(), Value::UInt(5))]),
        0,
    );
    assert_eq!(
        text(&own[0]),
        ("v1/devices/me/telemetry", r#"{"uptime_s":5}"#.into())
    );
}

#[test]
fn rpc_is_routed_and_answered_with_the_same_id() {
    let mut tb = ThingsBoard::new("gw", Auth::Token);
    let m = tb.parse(
        RPC,
        br#"{"device":"Device A","data":{"id":42,"method":"setTemp","params":{"t":21}}}"#,
    );
    let Ok(Inbound::Request { request, respond }) = m else {
        panic!("not a request")
    };
    assert_eq!(
        request,
        Request::Command {
            request_id: "42".into(),
            device_id: Some("Device A".into()),
            service: None,
            name: "setTemp".into(),
            paras: json!({"t": 21}),
        }
    );
    let ok = respond(&CommandOutcome::Done(BTreeMap::from([(
        "s".to_string(),
        BTreeMap::from([("t".to_string(), Value::UInt(21))]),
    )])))
    .unwrap_or_else(|| panic!("an answer"));
    assert_eq!(ok.topic, "v1/gateway/rpc");
    assert_eq!(
        String::from_utf8_lossy(&ok.payload),
        r#"{"data":{"success":true,"t":21},"device":"Device A","id":42}"#
    );
    let bad = respond(&CommandOutcome::Failed {
        code: ErrorCode::Offline,
        message: "device is OFFLINE".into(),
    })
    .unwrap_or_else(|| panic!("an answer"));
    let v: serde_json::Value = serde_json::from_slice(&bad.payload).unwrap_or_default();
    assert_eq!(
        v,
        json!({"device": "Device A", "id": 42, "data": {"success": false, "error": "device is OFFLINE", "code": "Offline"}})
    );
    // A scalar params is the value.
    let Ok(Inbound::Request {
        request: Request::Command { paras, .. },
        ..
    }) = tb.parse(
        RPC,
        br#"{"device":"A","data":{"id":1,"method":"set_limit","params":42.5}}"#,
    )
    else {
        panic!("scalar params")
    };
    assert_eq!(paras, json!({"value": 42.5}));
    // Malformed RPCs are refused, and still answered when they carry an id.
    let e = tb.parse(RPC, br#"{"device":"A","data":{"id":7}}"#).err();
    assert!(e
        .as_ref()
        .is_some_and(|e| e.message.contains("method") && e.respond.is_some()));
    assert!(tb
        .parse(RPC, br#"{"device":"A","data":{"method":"m"}}"#)
        .is_err_and(|e| e.respond.is_none()));
    // Our own answer, echoed back by the broker, is not a request (no answer loop).
    assert!(matches!(
        tb.parse(RPC, &ok.payload),
        Ok(Inbound::Ignored(_))
    ));
    assert!(matches!(
        tb.parse(RPC, &bad.payload),
        Ok(Inbound::Ignored(_))
    ));
    assert!(tb.parse(RPC, b"{nope").is_err());
    assert!(tb.parse(RPC, br#"{"data":{"id":1,"method":"m"}}"#).is_err());
    assert!(tb.parse("v1/other", b"{}").is_err());
    assert!(tb.parse(RPC, &vec![b' '; MAX_INBOUND + 1]).is_err());
}

#[test]
fn attribute_updates_and_both_response_forms_become_writes() {
    let mut tb = ThingsBoard::new("gw", Auth::Token);
    let set = |m: Result<Inbound, super::super::ParseError>| match m {
        Ok(Inbound::Request {
            request:
                Request::Set {
                    device_id,
                    services,
                    ..
                },
            ..
        }) => (device_id, services),
        _ => panic!("not a set"),
    };
    let (dev, services) = set(tb.parse(
        ATTRIBUTES,
        br#"{"device":"Device A","data":{"targetTemp":21,"deleted":["old"]}}"#,
    ));
    assert_eq!(dev.as_deref(), Some("Device A"));
    assert_eq!(
        services,
        vec![(
            String::new(),
            serde_json::Map::from_iter([("targetTemp".to_string(), json!(21))])
        )]
    );
    let (_, services) = set(tb.parse(
        ATTRIBUTES_RESPONSE,
        br#"{"id":1,"device":"Device A","values":{"a":1,"b":2}}"#,
    ));
    assert_eq!(services[0].1.len(), 2);
    let (_, services) = set(tb.parse(
        ATTRIBUTES_RESPONSE,
        br#"{"id":1,"device":"Device A","key":"a","value":1}"#,
    ));
    assert_eq!(services[0].1["a"], json!(1));
    assert!(matches!(
        tb.parse(ATTRIBUTES, br#"{"device":"A","data":{"deleted":["x"]}}"#),
        Ok(Inbound::Ignored(_))
    ));
    assert!(tb
        .parse(ATTRIBUTES_RESPONSE, br#"{"data":{"a":1}}"#)
        .is_err());
}

/// After every (re)connect each child's writable points are asked for as shared attributes;
/// the answer — `values`, a bare `value` (older servers, one key) or nothing set — becomes a
/// write of what the server holds.
#[test]
fn shared_attributes_are_requested_after_every_connect() {
    let mut tb = ThingsBoard::new("gw", Auth::Token);
    let out = tb.on_connect(
        &[
            ChildView {
                writable: vec![("hvac".into(), "setpoint".into())],
                ..child("t1", Some(true))
            },
            ChildView {
                writable: vec![("s".into(), "a".into()), ("s".into(), "b".into())],
                ..child("t2", Some(false))
            },
            child("t3", Some(true)),
        ],
        0,
        0,
    );
    let requests: Vec<(&str, String)> = out
        .iter()
        .map(text)
        .filter(|(t, _)| *t == ATTRIBUTES_REQUEST)
        .collect();
    assert_eq!(
        requests,
        vec![
            (
                ATTRIBUTES_REQUEST,
                r#"{"client":false,"device":"t1","id":1,"key":"setpoint"}"#.to_string()
            ),
            (
                ATTRIBUTES_REQUEST,
                r#"{"client":false,"device":"t2","id":2,"keys":["a","b"]}"#.to_string()
            ),
        ],
        "offline children too (a setpoint waits for them); none without writable points"
    );
    // An older server answers the one-key request with a bare value.
    let Ok(Inbound::Request {
        request:
            Request::Set {
                device_id,
                services,
                ..
            },
        ..
    }) = tb.parse(
        ATTRIBUTES_RESPONSE,
        br#"{"id":1,"device":"t1","value":22.5}"#,
    )
    else {
        panic!("not a write")
    };
    assert_eq!(device_id.as_deref(), Some("t1"));
    assert_eq!(services[0].1["setpoint"], json!(22.5));
    // Nothing set on the server: nothing to write, nothing malformed.
    assert!(matches!(
        tb.parse(ATTRIBUTES_RESPONSE, br#"{"id":2,"device":"t2"}"#),
        Ok(Inbound::Ignored(_))
    ));
    // An answer to no request of ours, bare value: ignored, never guessed.
    assert!(matches!(
        tb.parse(ATTRIBUTES_RESPONSE, br#"{"id":99,"device":"t2","value":1}"#),
        Ok(Inbound::Ignored(_))
    ));
}

#[test]
fn deletion_and_renaming_notifications_are_acknowledged() {
    let mut tb = ThingsBoard::new("gw", Auth::Token);
    let Ok(Inbound::Notified { inbound, ack }) = tb.parse(
        "v1/devices/me/rpc/request/15",
        br#"{"method":"gateway_device_deleted","params":"Device A"}"#,
    ) else {
        panic!("not a notification")
    };
    assert!(
        matches!(*inbound, Inbound::Deleted { ref device_ids, .. } if device_ids == &["Device A".to_string()])
    );
    assert_eq!(
        (
            ack.topic.as_str(),
            String::from_utf8_lossy(&ack.payload).to_string()
        ),
        (
            "v1/devices/me/rpc/response/15",
            r#"{"success":true}"#.into()
        )
    );
    let Ok(Inbound::Notified { inbound, .. }) = tb.parse(
        "v1/devices/me/rpc/request/16",
        br#"{"method":"gateway_device_renamed","params":{"Old name":"New name"}}"#,
    ) else {
        panic!("not a notification")
    };
    assert!(
        matches!(*inbound, Inbound::Renamed { ref from, ref to } if from == "Old name" && to == "New name")
    );
    // Any other method is one of the gateway's own operations (`gateway_` prefix optional),
    // answered in ThingsBoard's service-RPC shape; the daemon decides whether it may run.
    let Ok(Inbound::Operation {
        name,
        paras,
        respond,
        ..
    }) = tb.parse(
        "v1/devices/me/rpc/request/17",
        br#"{"method":"gateway_logs","params":{"lines":5}}"#,
    )
    else {
        panic!("an operation")
    };
    assert_eq!((name.as_str(), paras["lines"].as_u64()), ("logs", Some(5)));
    let ok = respond(&Ok(serde_json::json!("pong"))).unwrap_or_else(|| panic!("answered"));
    assert_eq!(ok.topic, "v1/devices/me/rpc/response/17");
    assert_eq!(
        String::from_utf8_lossy(&ok.payload),
        r#"{"code":200,"resp":"pong"}"#
    );
    let refused = respond(&Err((
        fieldgate_driver::ErrorCode::Unsupported,
        "not allowed".into(),
    )))
    .unwrap_or_else(|| panic!("answered"));
    assert!(String::from_utf8_lossy(&refused.payload).contains("not allowed"));
}

/// `keys = "service.property"`: telemetry, attribute requests and attribute writes name the
/// service, so profiles whose services share property names stay apart.
#[test]
fn service_keys_name_the_service() {
    let mut tb = ThingsBoard::new("gw", Auth::Token).service_keys(true);
    let recs = vec![(
        1,
        "m1".to_string(),
        report("m1", 5, &[("v", Value::UInt(1))]),
    )];
    let (out, _) = tb.pack(&recs, 65536, 0);
    let (_, body) = text(&out[0]);
    let j: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    let service = j["m1"][0]["values"]
        .as_object()
        .and_then(|m| m.keys().next().cloned())
        .unwrap_or_default();
    assert!(service.ends_with(".v") && service.len() > 2, "{body}");
    let out = tb.on_connect(
        &[ChildView {
            writable: vec![("hvac".into(), "setpoint".into())],
            ..child("t1", Some(true))
        }],
        0,
        0,
    );
    assert!(out
        .iter()
        .map(text)
        .any(|(t, b)| t == ATTRIBUTES_REQUEST && b.contains(r#""key":"hvac.setpoint""#)));
    let Ok(Inbound::Request {
        request: Request::Set { services, .. },
        ..
    }) = tb.parse(
        ATTRIBUTES,
        br#"{"device":"t1","data":{"hvac.setpoint":21}}"#,
    )
    else {
        panic!("not a write")
    };
    assert_eq!(services.len(), 1);
    assert_eq!(services[0].0, "hvac");
    assert_eq!(services[0].1["setpoint"], json!(21));
}

mod direct_writer {
    //! The telemetry body is written directly from the values; it must be the very text
    //! serde_json prints for the same object (escapes, floats, NaN as null, key order).
    use super::*;
    use proptest::prelude::*;

    fn value() -> impl Strategy<Value = Value> {
        prop_oneof![
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::Int),
            any::<u64>().prop_map(Value::UInt),
            any::<f64>().prop_map(Value::Float),
            "\\PC{0,8}|[\"\\\\\u{0}-\u{1f}]{0,3}".prop_map(Value::Text),
        ]
    }

    fn expected(tb: &ThingsBoard, recs: &[(u64, String, Record)]) -> String {
        let mut body = Map::new();
        for (_, dev, r) in recs {
            let Record::Report(r) = r else { continue };
            let vals: Map<String, Json> = r
                .properties
                .iter()
                .map(|(k, v)| (tb.key(&r.service, k), v.to_json()))
                .collect();
            if let Json::Array(list) = body
                .entry(dev.clone())
                .or_insert_with(|| Json::Array(Vec::new()))
            {
                list.push(json!({"ts": r.ts_ms, "values": vals}));
            }
        }
        Json::Object(body).to_string()
    }

    proptest! {
        #[test]
        fn telemetry_is_what_serde_json_prints(
            recs in proptest::collection::vec(
                ("[ab\"é\\\\]{1,3}", any::<u64>(), "[a-z.\"\\-]{1,3}",
                 proptest::collection::btree_map("[a-z0-9\" \\\\\u{1}-]{1,4}", value(), 1..6)),
                1..6),
            service_keys in any::<bool>(),
        ) {
            let mut tb = ThingsBoard::new("gw", Auth::Token);
            tb.service_keys = service_keys;
            let recs: Vec<(u64, String, Record)> = recs
                .into_iter()
                .enumerate()
                .map(|(i, (dev, ts, service, properties))| {
                    let properties = properties.into_iter().map(|(k, v)| (k.into(), v)).collect();
                    (i as u64, dev, Record::Report(Report { child: "c".into(), service, properties, ts_ms: ts }))
                })
                .collect();
            let (out, n) = tb.pack(&recs, 1 << 20, 0);
            prop_assert_eq!(n, recs.len());
            prop_assert_eq!(String::from_utf8_lossy(&out[0].payload), expected(&tb, &recs));
        }
    }
}
