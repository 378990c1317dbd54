//! Sparkplug B edge-node rules, each tested explicitly (no headless TCK is installable here;
//! see PROTOCOLS.md §4.5): topics, the will, NBIRTH/DBIRTH contents, seq, report by exception,
//! DDEATH, rebirth, DCMD, and the protobuf wire format itself.

use std::collections::BTreeMap;

use fieldgate_driver::{DeviceStatus, Report, Value};
use prost::Message;

use super::*;
use crate::uplink::dialect::{ChildView, Dialect, Inbound};

fn sp() -> Sparkplug {
    // As if the store said the next CONNECT is the 42nd bdSeq.
    let mut s = Sparkplug::new("Plant 1", "gw-7");
    s.restore("42");
    s
}

fn decode(o: &Out) -> Payload {
    Payload::decode(o.payload.as_slice()).unwrap_or_default()
}

fn names(p: &Payload) -> Vec<String> {
    p.metrics.iter().filter_map(|m| m.name.clone()).collect()
}

fn child(node: &str) -> ChildView {
    ChildView {
        node_id: node.into(),
        device_id: Some(node.into()),
        product_id: "meter".into(),
        name: node.into(),
        online: Some(true),
        ..Default::default()
    }
}

fn report(dev: &str, props: &[(&str, Value)]) -> (u64, String, Record) {
    (
        1,
        dev.to_string(),
        Record::Report(Report {
            child: dev.into(),
            service: "s".into(),
            properties: props
                .iter()
                .map(|(k, v)| ((*k).into(), v.clone()))
                .collect(),
            ts_ms: 1_700_000_000_000,
        }),
    )
}

#[test]
fn the_protobuf_wire_format_matches_the_spec_field_numbers() {
    // Payload{timestamp=1: 1, metrics=2: [Metric{name=1:"a", datatype=4: 4 (Int64),
    // long_value=11: 5}], seq=3: 0}, encoded by hand.
    let p = Payload {
        timestamp: Some(1),
        metrics: vec![Metric {
            name: Some("a".into()),
            datatype: Some(datatype::INT64),
            value: Some(MetricValue::Long(5)),
            ..Default::default()
        }],
        seq: Some(0),
        ..Default::default()
    };
    let want = [
        0x08, 0x01, // timestamp
        0x12, 0x07, // metrics, 7 bytes
        0x0a, 0x01, b'a', // name
        0x20, 0x04, // datatype
        0x58, 0x05, // long_value (field 11, varint)
        0x18, 0x00, // seq
    ];
    assert_eq!(p.encode_to_vec(), want);
    assert_eq!(Payload::decode(&want[..]).ok(), Some(p));
    // Double (13, fixed64) and boolean (14) and string (15).
    let m = metric("x", &Value::Float(1.5), 0);
    assert_eq!(
        (m.datatype, m.value),
        (Some(datatype::DOUBLE), Some(MetricValue::Double(1.5)))
    );
    assert_eq!(
        metric("x", &Value::Int(-2), 0).value,
        Some(MetricValue::Long(u64::MAX - 1))
    );
    assert_eq!(
        metric("x", &Value::Bool(true), 0).datatype,
        Some(datatype::BOOLEAN)
    );
    assert_eq!(
        metric("x", &Value::Text("t".into()), 0).datatype,
        Some(datatype::STRING)
    );
}

#[test]
fn connect_will_and_births() {
    let mut s = sp();
    let c = s.connect("pw", 1000);
    assert_eq!(
        (
            c.client_id.as_str(),
            c.username.as_str(),
            c.password.as_str()
        ),
        ("Plant 1-gw-7", "gw-7", "pw")
    );
    let will = c.will.unwrap_or_else(|| panic!("an NDEATH will"));
    assert_eq!(will.topic, "spBv1.0/Plant 1/NDEATH/gw-7");
    let w = decode(&will);
    assert_eq!(names(&w), vec!["bdSeq"], "the will holds only bdSeq");
    assert_eq!(w.metrics[0].value, Some(MetricValue::Long(42)));
    assert_eq!(w.seq, None, "NDEATH has no seq");
    assert_eq!(
        s.subscriptions(),
        vec!["spBv1.0/Plant 1/NCMD/gw-7", "spBv1.0/Plant 1/DCMD/gw-7/+"]
    );

    // Children with committed values (possibly still queued) are born with them.
    let out = s.on_connect(
        &[
            ChildView {
                latest: vec![("s".into(), "v".into(), Value::UInt(230))],
                latest_ts_ms: Some(1500),
                ..child("m1")
            },
            ChildView {
                online: Some(false),
                ..child("m2")
            },
        ],
        0,
        2000,
    );
    assert_eq!(out.len(), 2, "NBIRTH, and a DBIRTH for the live child only");
    assert_eq!(out[0].topic, "spBv1.0/Plant 1/NBIRTH/gw-7");
    let nb = decode(&out[0]);
    assert_eq!(nb.seq, Some(0), "NBIRTH seq is 0");
    assert_eq!(
        nb.metrics[0].value,
        Some(MetricValue::Long(42)),
        "same bdSeq as the will"
    );
    assert!(names(&nb).contains(&REBIRTH.to_string()));
    let rebirth = nb
        .metrics
        .iter()
        .find(|m| m.name.as_deref() == Some(REBIRTH));
    assert_eq!(
        rebirth.and_then(|m| m.value.clone()),
        Some(MetricValue::Boolean(false))
    );
    assert!(
        names(&nb).contains(&"uptime_s".to_string()),
        "node metrics are born"
    );
    assert_eq!(out[1].topic, "spBv1.0/Plant 1/DBIRTH/gw-7/m1");
    let db = decode(&out[1]);
    assert_eq!(
        (db.seq, names(&db)),
        (Some(1), vec!["v".to_string()]),
        "every known metric"
    );
    assert_eq!(db.metrics[0].datatype, Some(datatype::UINT64));
    assert_eq!(
        db.metrics[0].timestamp,
        Some(1500),
        "its reading's own time, not the birth's"
    );
    // A new connection increments bdSeq.
    let w2 = decode(&s.connect("pw", 3000).will.unwrap_or_else(|| panic!()));
    assert_eq!(w2.metrics[0].value, Some(MetricValue::Long(43)));
}

#[test]
fn data_by_exception_rebirth_on_new_metrics_death_and_seq_wrap() {
    let mut s = sp();
    s.connect("pw", 0);
    let _ = s.on_connect(&[], 0, 0);
    // First values of a child: DBIRTH (it was never born).
    let (o, _) = s.pack(
        &[report(
            "m1",
            &[("a", Value::UInt(1)), ("b", Value::UInt(2))],
        )],
        4096,
        0,
    );
    assert_eq!(o[0].topic, "spBv1.0/Plant 1/DBIRTH/gw-7/m1");
    assert_eq!(decode(&o[0]).seq, Some(1));
    // What the report stage passed (by exception is its `on_change`): sent as it is.
    let (o, _) = s.pack(
        &[report(
            "m1",
            &[("a", Value::UInt(1)), ("b", Value::UInt(3))],
        )],
        4096,
        0,
    );
    assert_eq!(o[0].topic, "spBv1.0/Plant 1/DDATA/gw-7/m1");
    let d = decode(&o[0]);
    assert_eq!(
        (names(&d), d.seq),
        (vec!["a".to_string(), "b".to_string()], Some(2))
    );
    assert_eq!(d.metrics[0].datatype, None, "DDATA repeats no datatype");
    // An unchanged value the stage passed (a `period` heartbeat) is sent too.
    let mut beat = report("m1", &[("a", Value::UInt(1))]);
    if let Record::Report(r) = &mut beat.2 {
        r.ts_ms += 60_000;
    }
    let (o, _) = s.pack(&[beat], 4096, 0);
    assert_eq!(names(&decode(&o[0])), vec!["a".to_string()]);
    // A metric never born: DBIRTH again with all of them.
    let (o, _) = s.pack(&[report("m1", &[("c", Value::Bool(true))])], 4096, 0);
    assert_eq!(o[0].topic, "spBv1.0/Plant 1/DBIRTH/gw-7/m1");
    assert_eq!(names(&decode(&o[0])), vec!["a", "b", "c"]);
    // OFFLINE: DDEATH once; ONLINE again: DBIRTH.
    let st = |online| {
        (
            9,
            "m1".to_string(),
            Record::Status(DeviceStatus {
                child: "m1".into(),
                online,
                reason: String::new(),
                ts_ms: 5,
            }),
        )
    };
    let (o, _) = s.pack(&[st(false)], 4096, 0);
    assert_eq!(o[0].topic, "spBv1.0/Plant 1/DDEATH/gw-7/m1");
    assert!(s.pack(&[st(false)], 4096, 0).0.is_empty(), "one DDEATH");
    let (o, _) = s.pack(&[st(true)], 4096, 0);
    assert_eq!(o[0].topic, "spBv1.0/Plant 1/DBIRTH/gw-7/m1");
    // seq wraps 255 → 0 across all node messages.
    let mut last = 0;
    for i in 0..300u64 {
        let (o, _) = s.pack(&[report("m1", &[("a", Value::UInt(100 + i))])], 4096, 0);
        last = decode(&o[0]).seq.unwrap_or(999);
        assert!(last <= 255);
    }
    // seq 0..=6 went to NBIRTH, DBIRTH, DDATA, DDATA, DBIRTH, DDEATH, DBIRTH; then 300 DDATA.
    assert_eq!(last, (7 + 299) % 256, "wrapped");
    // Own metrics by exception as NDATA; unknown ones are not sent.
    let o = s.own(
        &BTreeMap::from([
            ("uptime_s".to_string(), Value::UInt(7)),
            ("new".to_string(), Value::UInt(1)),
        ]),
        0,
    );
    assert_eq!(o[0].topic, "spBv1.0/Plant 1/NDATA/gw-7");
    assert_eq!(names(&decode(&o[0])), vec!["uptime_s"]);
}

#[test]
fn ncmd_rebirth_and_dcmd_writes() {
    let mut s = sp();
    let cmd = |metrics: Vec<Metric>| {
        Payload {
            timestamp: Some(1),
            metrics,
            ..Default::default()
        }
        .encode_to_vec()
    };
    let rb = cmd(vec![Metric {
        name: Some(REBIRTH.into()),
        datatype: Some(datatype::BOOLEAN),
        value: Some(MetricValue::Boolean(true)),
        ..Default::default()
    }]);
    assert!(matches!(
        s.parse("spBv1.0/Plant 1/NCMD/gw-7", &rb),
        Ok(Inbound::Rebirth)
    ));
    // Node control as the gateway's own operations (no answer: Sparkplug has none).
    let reboot = cmd(vec![Metric {
        name: Some("Node Control/Reboot".into()),
        value: Some(MetricValue::Boolean(true)),
        ..Default::default()
    }]);
    let Ok(Inbound::Operation { name, respond, .. }) =
        s.parse("spBv1.0/Plant 1/NCMD/gw-7", &reboot)
    else {
        panic!("an operation")
    };
    assert_eq!(name, "restart");
    assert!(respond(&Ok(serde_json::Value::Null)).is_none());
    let bus = cmd(vec![Metric {
        name: Some(RESTART_BUS.into()),
        value: Some(MetricValue::String("plant".into())),
        ..Default::default()
    }]);
    let Ok(Inbound::Operation { name, paras, .. }) = s.parse("spBv1.0/Plant 1/NCMD/gw-7", &bus)
    else {
        panic!("an operation")
    };
    assert_eq!(
        (name.as_str(), paras["bus"].as_str()),
        ("restart_bus", Some("plant"))
    );
    let other = cmd(vec![Metric {
        name: Some("Node Control/Next Server".into()),
        value: Some(MetricValue::Boolean(true)),
        ..Default::default()
    }]);
    assert!(matches!(
        s.parse("spBv1.0/Plant 1/NCMD/gw-7", &other),
        Ok(Inbound::Ignored(_))
    ));
    let w = cmd(vec![
        metric("demand_limit", &Value::Float(42.5), 1),
        Metric {
            name: Some("mode".into()),
            datatype: Some(datatype::INT16),
            value: Some(MetricValue::Int(0xFFFF)),
            ..Default::default()
        },
    ]);
    let Ok(Inbound::Request {
        request:
            Request::Set {
                device_id,
                services,
                ..
            },
        ..
    }) = s.parse("spBv1.0/Plant 1/DCMD/gw-7/m1", &w)
    else {
        panic!("not a write")
    };
    assert_eq!(device_id.as_deref(), Some("m1"));
    assert_eq!(services[0].1["demand_limit"], serde_json::json!(42.5));
    assert_eq!(
        services[0].1["mode"],
        serde_json::json!(-1),
        "Int16 sign-extended"
    );
    assert!(
        s.parse("spBv1.0/Plant 1/DCMD/gw-7/m1", b"\xff\xff\xff")
            .is_err(),
        "not protobuf"
    );
    let no_name = cmd(vec![Metric {
        alias: Some(3),
        value: Some(MetricValue::Long(1)),
        ..Default::default()
    }]);
    assert!(
        s.parse("spBv1.0/Plant 1/DCMD/gw-7/m1", &no_name).is_err(),
        "an alias never born"
    );
    assert!(s.parse("spBv1.0/Plant 2/DCMD/gw-7/m1", &w).is_err());
}

/// Google's protobuf (`protoc`, Debian's protobuf-compiler) with the spec's .proto decodes
/// what we encode and encodes what we decode — an independent check of the wire format.
#[test]
fn protoc_with_the_specs_proto_agrees_with_our_messages() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let proto_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data");
    let protoc = |args: &[&str], input: &[u8]| -> Vec<u8> {
        let mut child = Command::new("protoc")
            .arg(format!("--proto_path={proto_dir}"))
            .args(args)
            .arg("sparkplug_b.proto")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("protoc (apt-get install protobuf-compiler): {e}"));
        if let Some(mut i) = child.stdin.take() {
            let _ = i.write_all(input);
        }
        let out = child.wait_with_output().unwrap_or_else(|e| panic!("{e}"));
        assert!(
            out.status.success(),
            "protoc: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    let mut s = sp();
    s.connect("pw", 0);
    let m1 = ChildView {
        latest: vec![
            ("s".into(), "v".into(), Value::Float(230.5)),
            ("s".into(), "on".into(), Value::Bool(true)),
            ("s".into(), "t".into(), Value::Int(-3)),
        ],
        latest_ts_ms: Some(1_700_000_000_000),
        ..child("m1")
    };
    let births = s.on_connect(&[m1], 0, 1_700_000_000_000);
    let text = String::from_utf8_lossy(&protoc(
        &["--decode=org.eclipse.tahu.protobuf.Payload"],
        &births[0].payload,
    ))
    .to_string();
    for want in [
        "timestamp: 1700000000000",
        "seq: 0",
        "name: \"bdSeq\"",
        "datatype: 4",
        "long_value: 42",
        "name: \"Node Control/Rebirth\"",
        "boolean_value: false",
    ] {
        assert!(
            text.contains(want),
            "NBIRTH as protoc reads it lacks {want:?}:\n{text}"
        );
    }
    let text = String::from_utf8_lossy(&protoc(
        &["--decode=org.eclipse.tahu.protobuf.Payload"],
        &births[1].payload,
    ))
    .to_string();
    for want in [
        "seq: 1",
        "name: \"v\"",
        "datatype: 10",
        "double_value: 230.5",
        "name: \"on\"",
        "boolean_value: true",
        "name: \"t\"",
        "long_value: 18446744073709551613",
    ] {
        assert!(
            text.contains(want),
            "DBIRTH as protoc reads it lacks {want:?}:\n{text}"
        );
    }
    // A DCMD written by protoc from text, parsed by us.
    let dcmd = protoc(
        &["--encode=org.eclipse.tahu.protobuf.Payload"],
        b"timestamp: 1 metrics { name: \"demand_limit\" datatype: 9 float_value: 42.5 } metrics { name: \"mode\" datatype: 3 int_value: 7 }",
    );
    let Ok(Inbound::Request {
        request: Request::Set { services, .. },
        ..
    }) = s.parse("spBv1.0/Plant 1/DCMD/gw-7/m1", &dcmd)
    else {
        panic!("protoc's DCMD not understood")
    };
    assert_eq!(services[0].1["demand_limit"], serde_json::json!(42.5));
    assert_eq!(services[0].1["mode"], serde_json::json!(7));
}

/// bdSeq: 0 on a fresh store, +1 per CONNECT that reached the broker (an attempt that failed
/// before sending one takes its number back), wrapping 255 → 0, continued across restarts
/// through `state`/`restore`.
#[test]
fn bdseq_counts_the_connects_the_broker_saw() {
    let bd = |c: Connect| {
        decode(&c.will.unwrap_or_else(|| panic!("a will"))).metrics[0]
            .value
            .clone()
    };
    let mut s = Sparkplug::new("g", "n");
    assert_eq!(
        bd(s.connect("pw", 0)),
        Some(MetricValue::Long(0)),
        "fresh: 0"
    );
    s.connect_unsent();
    assert_eq!(
        bd(s.connect("pw", 0)),
        Some(MetricValue::Long(0)),
        "the refused TCP attempt sent no CONNECT"
    );
    assert_eq!(bd(s.connect("pw", 0)), Some(MetricValue::Long(1)));
    let kept = s.state().unwrap_or_else(|| panic!("kept"));
    assert_eq!(kept, (BDSEQ_KEY, "2".to_string()));
    // A restart continues where the last run stopped.
    let mut t = Sparkplug::new("g", "n");
    t.restore(&kept.1);
    assert_eq!(bd(t.connect("pw", 0)), Some(MetricValue::Long(2)));
    let mut w = Sparkplug::new("g", "n");
    w.restore("255");
    assert_eq!(bd(w.connect("pw", 0)), Some(MetricValue::Long(255)));
    assert_eq!(bd(w.connect("pw", 0)), Some(MetricValue::Long(0)), "wraps");
    w.restore("garbage");
    assert_eq!(
        bd(w.connect("pw", 0)),
        Some(MetricValue::Long(1)),
        "ignored"
    );
}

/// Birth order and history: NBIRTH carries the node metrics as primed; a child without values
/// is not born (no empty DBIRTH); a child with values is born with them at their own time;
/// queued readings older than that are historical DDATA; later ones go by exception.
#[test]
fn births_wait_for_values_and_the_backlog_is_history() {
    let mut s = sp();
    s.connect("pw", 0);
    s.prime_own(&BTreeMap::from([(
        "children_total".to_string(),
        Value::UInt(2),
    )]));
    let out = s.on_connect(&[child("m1")], 0, 5_000);
    assert_eq!(out.len(), 1, "NBIRTH only: m1 has no values yet");
    let nb = decode(&out[0]);
    let total = nb
        .metrics
        .iter()
        .find(|m| m.name.as_deref() == Some("children_total"))
        .and_then(|m| m.value.clone());
    assert_eq!(total, Some(MetricValue::Long(2)), "as primed, not 0");
    // A reconnect after an outage: m1's newest committed reading (t = 9000) is in its birth.
    let m1 = ChildView {
        latest: vec![
            ("s".into(), "a".into(), Value::UInt(9)),
            ("s".into(), "b".into(), Value::UInt(90)),
        ],
        latest_ts_ms: Some(9_000),
        ..child("m1")
    };
    let out = s.on_connect(&[m1], 0, 10_000);
    assert_eq!(out.len(), 2);
    let db = decode(&out[1]);
    assert_eq!(db.seq, Some(1), "DBIRTH right after NBIRTH");
    assert!(db.metrics.iter().all(|m| m.timestamp == Some(9_000)));
    // The backlog: older readings are history, every metric, flagged, no datatype.
    let old = |a: u64, ts: u64| {
        let mut r = report("m1", &[("a", Value::UInt(a)), ("b", Value::UInt(90))]);
        if let Record::Report(rep) = &mut r.2 {
            rep.ts_ms = ts;
        }
        r
    };
    let (o, _) = s.pack(&[old(7, 7_000)], 4096, 10_001);
    assert_eq!(o.len(), 1);
    assert_eq!(o[0].topic, "spBv1.0/Plant 1/DDATA/gw-7/m1");
    let d = decode(&o[0]);
    assert_eq!(names(&d), vec!["a", "b"], "all of it, not by exception");
    assert!(d.metrics.iter().all(|m| m.is_historical == Some(true)
        && m.timestamp == Some(7_000)
        && m.datatype.is_none()));
    // The reading the birth carried: nothing new.
    assert!(s.pack(&[old(9, 9_000)], 4096, 10_002).0.is_empty());
    // Live again: not historical.
    let (o, _) = s.pack(&[old(10, 11_000)], 4096, 11_001);
    let d = decode(&o[0]);
    assert_eq!(names(&d), vec!["a", "b"]);
    assert_eq!(d.metrics[0].is_historical, None);
    // An ONLINE status for a child with no values yet births nothing.
    let st = (
        3,
        "m9".to_string(),
        Record::Status(DeviceStatus {
            child: "m9".into(),
            online: true,
            reason: String::new(),
            ts_ms: 5,
        }),
    );
    assert!(s.pack(&[st], 4096, 0).0.is_empty(), "no empty DBIRTH");
}

/// Primary Host awareness: with `primary_host_id`, the STATE topic is subscribed; nothing is
/// born and data is held until the host says `online`; offline holds again (and un-births);
/// a stale STATE (older timestamp) changes nothing; a reconnect waits for a fresh STATE.
#[test]
fn the_primary_host_gates_births_and_data() {
    let mut s = Sparkplug::new("g", "n").primary_host(Some("scada".into()));
    s.connect("pw", 0);
    assert!(s
        .subscriptions()
        .contains(&"spBv1.0/STATE/scada".to_string()));
    assert!(s.held());
    assert!(
        s.on_connect(&[child("m1")], 0, 0).is_empty(),
        "no NBIRTH yet"
    );
    assert!(
        s.own(
            &BTreeMap::from([("uptime_s".to_string(), Value::UInt(9))]),
            0
        )
        .is_empty(),
        "no NDATA before the birth"
    );
    let state = |online: bool, ts: u64| format!(r#"{{"online":{online},"timestamp":{ts}}}"#);
    assert!(matches!(
        s.parse("spBv1.0/STATE/scada", state(true, 100).as_bytes()),
        Ok(Inbound::Rebirth)
    ));
    assert!(!s.held());
    let births = s.on_connect(&[child("m1")], 0, 0);
    assert_eq!(births[0].topic, "spBv1.0/g/NBIRTH/n");
    assert!(matches!(
        s.parse("spBv1.0/STATE/scada", state(true, 101).as_bytes()),
        Ok(Inbound::Ignored(_))
    ));
    assert!(matches!(
        s.parse("spBv1.0/STATE/scada", state(false, 50).as_bytes()),
        Ok(Inbound::Ignored(_))
    ));
    assert!(!s.held(), "a stale offline is ignored");
    let _ = s.parse("spBv1.0/STATE/scada", state(false, 200).as_bytes());
    assert!(s.held());
    assert!(s
        .parse("spBv1.0/STATE/scada", b"{\"online\":\"yes\"}")
        .is_err());
    assert!(matches!(
        s.parse("spBv1.0/STATE/scada", state(true, 300).as_bytes()),
        Ok(Inbound::Rebirth)
    ));
    // A new session waits for a fresh STATE (the retained one, same timestamp, is enough).
    s.connect("pw", 0);
    assert!(s.held());
    assert!(matches!(
        s.parse("spBv1.0/STATE/scada", state(true, 300).as_bytes()),
        Ok(Inbound::Rebirth)
    ));
    // Without a Primary Host nothing waits.
    let plain = sp();
    assert!(!plain.held());
    assert_eq!(plain.subscriptions().len(), 2);
}

/// Aliases (`aliases = true`): births carry name and alias, unique across the node; DDATA and
/// NDATA carry only the alias; DCMD and NCMD by alias reach the metric born with it.
#[test]
fn aliases_in_births_data_and_commands() {
    let mut s = Sparkplug::new("g", "n").aliases(true);
    s.connect("pw", 0);
    let m1 = ChildView {
        latest: vec![
            ("s".into(), "a".into(), Value::UInt(1)),
            ("s".into(), "b".into(), Value::UInt(2)),
        ],
        latest_ts_ms: Some(5),
        ..child("m1")
    };
    let out = s.on_connect(&[m1], 0, 10);
    let nb = decode(&out[0]);
    let db = decode(&out[1]);
    let mut aliases: Vec<u64> = nb
        .metrics
        .iter()
        .chain(&db.metrics)
        .filter(|m| m.name.as_deref() != Some("bdSeq"))
        .map(|m| {
            assert!(m.name.is_some(), "births name every metric");
            m.alias.unwrap_or_else(|| panic!("and alias it: {m:?}"))
        })
        .collect();
    let n = aliases.len();
    aliases.sort_unstable();
    aliases.dedup();
    assert_eq!(aliases.len(), n, "unique across the node");
    let alias_of = |p: &Payload, name: &str| {
        p.metrics
            .iter()
            .find(|m| m.name.as_deref() == Some(name))
            .and_then(|m| m.alias)
    };
    let b = alias_of(&db, "b");
    let (o, _) = s.pack(&[report("m1", &[("b", Value::UInt(3))])], 4096, 11);
    let d = decode(&o[0]);
    assert_eq!(
        (d.metrics[0].name.clone(), d.metrics[0].alias),
        (None, b),
        "DDATA by alias only"
    );
    let o = s.own(
        &BTreeMap::from([("uptime_s".to_string(), Value::UInt(7))]),
        12,
    );
    let nd = decode(&o[0]);
    assert_eq!(nd.metrics[0].name, None);
    assert_eq!(nd.metrics[0].alias, alias_of(&nb, "uptime_s"));
    // Commands by alias.
    let cmd = |metrics: Vec<Metric>| {
        Payload {
            timestamp: Some(1),
            metrics,
            ..Default::default()
        }
        .encode_to_vec()
    };
    let w = cmd(vec![Metric {
        alias: b,
        value: Some(MetricValue::Long(9)),
        ..Default::default()
    }]);
    let Ok(Inbound::Request {
        request: Request::Set { services, .. },
        ..
    }) = s.parse("spBv1.0/g/DCMD/n/m1", &w)
    else {
        panic!("not a write")
    };
    assert_eq!(services[0].1["b"], serde_json::json!(9));
    let rb = cmd(vec![Metric {
        alias: alias_of(&nb, REBIRTH),
        value: Some(MetricValue::Boolean(true)),
        ..Default::default()
    }]);
    assert!(matches!(
        s.parse("spBv1.0/g/NCMD/n", &rb),
        Ok(Inbound::Rebirth)
    ));
    let unknown = cmd(vec![Metric {
        alias: Some(999),
        value: Some(MetricValue::Long(1)),
        ..Default::default()
    }]);
    assert!(s.parse("spBv1.0/g/DCMD/n/m1", &unknown).is_err());
}
