//! The Sparkplug B dialect end to end: the `fieldgate` binary as an edge node, a real
//! mosquitto, a real Modbus server and a test host application decoding the protobuf
//! payloads. NBIRTH (seq 0, bdSeq) then a DBIRTH per child, DDATA by exception with seq
//! continuing, a broker outage with every counter value delivered and the births repeated, a
//! DCMD writing a register (seen in the next DDATA), a rebirth on NCMD with the same bdSeq,
//! and — when the gateway is killed — the broker publishing its NDEATH will with that bdSeq.

mod common;

use std::time::Duration;

use common::*;
use fieldgate::uplink::dialect::sparkplug::{metric, MetricValue, Payload, REBIRTH};
use fieldgate_driver::Value;
use prost::Message;

const G: &str = "spBv1.0/Plant1";

fn payloads(p: &TestPlatform, topic: &str) -> Vec<Payload> {
    p.raw()
        .into_iter()
        .filter(|(t, _)| t == topic)
        .filter_map(|(_, b)| Payload::decode(b.as_slice()).ok())
        .collect()
}

fn value(p: &Payload, name: &str) -> Option<MetricValue> {
    p.metrics
        .iter()
        .find(|m| m.name.as_deref() == Some(name))
        .and_then(|m| m.value.clone())
}

fn bd_seq(p: &Payload) -> Option<MetricValue> {
    value(p, "bdSeq")
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn counters(p: &TestPlatform, dev: &str) -> Vec<u64> {
    let mut out = Vec::new();
    for (t, b) in p.raw() {
        if t == format!("{G}/DBIRTH/gw1/{dev}") || t == format!("{G}/DDATA/gw1/{dev}") {
            if let Some(MetricValue::Long(c)) = Payload::decode(b.as_slice())
                .ok()
                .and_then(|p| value(&p, "counter"))
            {
                out.push(c);
            }
        }
    }
    out
}

#[test]
fn sparkplug_edge_node_end_to_end() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut broker = Mosquitto::start(dir.path());
    let p = TestPlatform::start_on(broker.port, "host", "spBv1.0/#");
    let sim = meter_sim();
    let cfg = meter_config(
        dir.path(),
        &format!(
            "dialect = \"sparkplug\"\nhost = \"127.0.0.1\"\nport = {}\ntls = false\ndevice_id = \"gw1\"\ngroup_id = \"Plant1\"\nsecret = \"pw\"",
            broker.port
        ),
        sim.port,
    );
    let (code, out, err) = fieldgate(&["check", "-c", &cfg.to_string_lossy()]);
    assert_eq!(code, 0, "{out}{err}");
    let gw = Gateway::start(&cfg);

    wait_until(Duration::from_secs(20), "births and data", || {
        !payloads(&p, &format!("{G}/NBIRTH/gw1")).is_empty()
            && !payloads(&p, &format!("{G}/DBIRTH/gw1/m1")).is_empty()
            && counters(&p, "m1").len() >= 5
            && counters(&p, "m2").len() >= 5
    });
    let nb = payloads(&p, &format!("{G}/NBIRTH/gw1")).remove(0);
    assert_eq!(nb.seq, Some(0));
    assert_eq!(value(&nb, REBIRTH), Some(MetricValue::Boolean(false)));
    let first_bd = bd_seq(&nb);
    assert_eq!(
        first_bd,
        Some(MetricValue::Long(0)),
        "a fresh store starts at 0"
    );
    assert_eq!(
        value(&nb, "children_total"),
        Some(MetricValue::Long(2)),
        "NBIRTH carries the node metrics as they are at birth"
    );
    let db = payloads(&p, &format!("{G}/DBIRTH/gw1/m1")).remove(0);
    assert!(
        db.metrics.iter().all(|m| m.datatype.is_some()),
        "every metric with its datatype"
    );
    // Birth order: the DBIRTHs follow the NBIRTH directly (seq 1 and 2), each with metrics;
    // nothing for a child before it has values, and no NDATA correcting the NBIRTH.
    let first: Vec<(String, Payload)> = p
        .raw()
        .into_iter()
        .filter(|(t, _)| t.starts_with(G) && !t.contains("CMD/"))
        .filter_map(|(t, b)| Payload::decode(b.as_slice()).ok().map(|p| (t, p)))
        .take(3)
        .collect();
    let kinds: Vec<(&str, Option<u64>)> = first
        .iter()
        .map(|(t, p)| (t.split('/').nth(2).unwrap_or(""), p.seq))
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("NBIRTH", Some(0)),
            ("DBIRTH", Some(1)),
            ("DBIRTH", Some(2))
        ],
        "{first:?}"
    );
    assert!(
        first.iter().all(|(_, p)| !p.metrics.is_empty()),
        "no empty birth"
    );
    let ddata = payloads(&p, &format!("{G}/DDATA/gw1/m1"));
    assert!(
        ddata
            .iter()
            .flat_map(|d| &d.metrics)
            .all(|m| m.datatype.is_none()),
        "DDATA repeats no datatype"
    );
    // seq continues across node messages, 0..=255.
    let seqs: Vec<u64> = p
        .raw()
        .into_iter()
        .filter(|(t, _)| t.starts_with(G) && !t.contains("/NDEATH/") && !t.contains("CMD/"))
        .filter_map(|(_, b)| Payload::decode(b.as_slice()).ok().and_then(|p| p.seq))
        .take(20)
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == (w[0] + 1) % 256),
        "{seqs:?}"
    );

    // Outage: the births are repeated with a new bdSeq, nothing is lost.
    broker.stop();
    std::thread::sleep(Duration::from_secs(3));
    broker.restart();
    wait_until(
        Duration::from_secs(20),
        "a new NBIRTH after the reconnect",
        || payloads(&p, &format!("{G}/NBIRTH/gw1")).len() >= 2,
    );
    let n = counters(&p, "m1").len();
    wait_until(Duration::from_secs(20), "the backlog", || {
        counters(&p, "m1").len() > n + 20
    });
    let mut c = counters(&p, "m1");
    c.sort_unstable();
    c.dedup();
    assert!(
        c.windows(2).all(|w| w[1] == w[0] + 1),
        "readings lost across the outage"
    );
    let births = payloads(&p, &format!("{G}/NBIRTH/gw1"));
    let bd = births.last().and_then(bd_seq);
    assert_eq!(
        bd,
        Some(MetricValue::Long(1)),
        "+1: the refused attempts during the outage sent no CONNECT"
    );
    // The backlog is history: the DBIRTH after the reconnect carries the newest readings at
    // their own time, and what was queued before them arrives flagged `is_historical`.
    let historical = payloads(&p, &format!("{G}/DDATA/gw1/m1"))
        .iter()
        .filter(|d| d.metrics.iter().any(|m| m.is_historical == Some(true)))
        .count();
    assert!(historical >= 5, "{historical} historical DDATA");
    let reborn = payloads(&p, &format!("{G}/DBIRTH/gw1/m1"));
    let reborn = reborn.last().unwrap_or_else(|| panic!("a DBIRTH"));
    assert!(
        reborn
            .metrics
            .iter()
            .all(|m| m.timestamp < reborn.timestamp),
        "the birth's values keep their own (older) timestamps"
    );
    // No stray NDEATH: each will the broker published (mosquitto sends them when it shuts
    // down) belongs to a session that was born.
    let born: Vec<Option<MetricValue>> = births.iter().map(bd_seq).collect();
    for death in payloads(&p, &format!("{G}/NDEATH/gw1")) {
        assert!(
            born.contains(&bd_seq(&death)),
            "NDEATH {:?} matches no NBIRTH {born:?}",
            bd_seq(&death)
        );
    }

    // DCMD: a write, visible in the next DDATA.
    let dcmd = Payload {
        timestamp: Some(fieldgate_driver::now_ms()),
        metrics: vec![metric(
            "demand_limit",
            &Value::Float(42.5),
            fieldgate_driver::now_ms(),
        )],
        ..Default::default()
    };
    p.send(&format!("{G}/DCMD/gw1/m1"), &dcmd.encode_to_vec());
    wait_until(Duration::from_secs(10), "the register written", || {
        sim.state
            .holding
            .lock()
            .ok()
            .and_then(|h| h.get(&(1, 4)).copied())
            == Some(425)
    });
    wait_until(
        Duration::from_secs(10),
        "the new value by exception",
        || {
            payloads(&p, &format!("{G}/DDATA/gw1/m1"))
                .iter()
                .any(|d| value(d, "demand_limit") == Some(MetricValue::Double(42.5)))
        },
    );

    // Rebirth: NBIRTH again, same bdSeq (no new session).
    let nbirths = payloads(&p, &format!("{G}/NBIRTH/gw1")).len();
    let rebirth = Payload {
        timestamp: Some(1),
        metrics: vec![metric(REBIRTH, &Value::Bool(true), 1)],
        ..Default::default()
    };
    p.send(&format!("{G}/NCMD/gw1"), &rebirth.encode_to_vec());
    wait_until(Duration::from_secs(10), "the rebirth", || {
        payloads(&p, &format!("{G}/NBIRTH/gw1")).len() > nbirths
    });
    let again = payloads(&p, &format!("{G}/NBIRTH/gw1"));
    assert_eq!(again.last().and_then(bd_seq), bd);
    assert_eq!(again.last().and_then(|b| b.seq), Some(0));

    // Killed: the broker publishes the will, with the session's bdSeq. (The session lost in
    // the outage may have left its own NDEATH earlier, with its own bdSeq.)
    let deaths = payloads(&p, &format!("{G}/NDEATH/gw1")).len();
    gw.signal(9);
    wait_until(Duration::from_secs(10), "NDEATH", || {
        payloads(&p, &format!("{G}/NDEATH/gw1")).len() > deaths
    });
    let death = payloads(&p, &format!("{G}/NDEATH/gw1")).pop();
    assert_eq!(
        death.as_ref().and_then(bd_seq),
        bd,
        "NDEATH matches the birth"
    );
    drop(gw);

    // A graceful stop (SIGTERM) disconnects cleanly, which fires no will: the node publishes
    // NDEATH itself first, with the bdSeq of its birth.
    let mut gw = Gateway::start(&cfg);
    let births_before = payloads(&p, &format!("{G}/NBIRTH/gw1")).len();
    wait_until(Duration::from_secs(20), "born again", || {
        payloads(&p, &format!("{G}/NBIRTH/gw1")).len() > births_before
    });
    let bd = payloads(&p, &format!("{G}/NBIRTH/gw1"))
        .last()
        .and_then(bd_seq);
    assert_eq!(
        bd,
        Some(MetricValue::Long(2)),
        "a restart continues the sequence kept in the store"
    );
    let deaths = payloads(&p, &format!("{G}/NDEATH/gw1")).len();
    assert_eq!(gw.terminate(), Some(0));
    wait_until(Duration::from_secs(10), "NDEATH on a graceful stop", || {
        payloads(&p, &format!("{G}/NDEATH/gw1")).len() > deaths
    });
    let death = payloads(&p, &format!("{G}/NDEATH/gw1")).pop();
    assert_eq!(death.as_ref().and_then(bd_seq), bd);
}

/// With `primary_host_id`, the edge node waits for the host: no birth and no data before its
/// STATE says online (readings queue durably meanwhile), births then the backlog when it
/// does, nothing while it is offline again, a rebirth when it returns — and every reading
/// delivered in the end.
#[test]
fn a_primary_host_gates_births_and_data() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let broker = Mosquitto::start(dir.path());
    let p = TestPlatform::start_on(broker.port, "scada", "spBv1.0/#");
    let sim = meter_sim();
    let cfg = meter_config(
        dir.path(),
        &format!(
            "dialect = \"sparkplug\"\nhost = \"127.0.0.1\"\nport = {}\ntls = false\ndevice_id = \"gw1\"\ngroup_id = \"Plant1\"\nsecret = \"pw\"\nprimary_host_id = \"scada\"",
            broker.port
        ),
        sim.port,
    );
    let mut gw = Gateway::start(&cfg);
    let queued = || status(&cfg)["queue"]["records"].as_u64().unwrap_or(0);
    wait_until(Duration::from_secs(20), "readings queued", || {
        queued() >= 10
    });
    assert!(
        status(&cfg)["uplink"]["connected"] == true,
        "connected, but waiting"
    );
    let node = |kind: &str| payloads(&p, &format!("{G}/{kind}/gw1"));
    assert!(
        node("NBIRTH").is_empty(),
        "no birth before the host is online"
    );
    assert!(counters(&p, "m1").is_empty(), "no data either");

    let state = |online: bool| {
        format!(
            r#"{{"online":{online},"timestamp":{}}}"#,
            fieldgate_driver::now_ms()
        )
    };
    p.send_retained("spBv1.0/STATE/scada", state(true).as_bytes());
    wait_until(Duration::from_secs(10), "born, then the backlog", || {
        node("NBIRTH").len() == 1 && counters(&p, "m1").len() > 10
    });

    p.send_retained("spBv1.0/STATE/scada", state(false).as_bytes());
    std::thread::sleep(Duration::from_millis(500));
    let n = counters(&p, "m1").len();
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        counters(&p, "m1").len() <= n + 1,
        "no data while the host is offline"
    );
    assert!(queued() >= 10, "it waits in the queue");

    p.send_retained("spBv1.0/STATE/scada", state(true).as_bytes());
    wait_until(Duration::from_secs(10), "a rebirth", || {
        node("NBIRTH").len() == 2
    });
    let m = counters(&p, "m1").len();
    wait_until(Duration::from_secs(20), "the held readings", || {
        counters(&p, "m1").len() > m + 15
    });
    let mut c = counters(&p, "m1");
    c.sort_unstable();
    c.dedup();
    assert!(
        c.windows(2).all(|w| w[1] == w[0] + 1) && c.first() == Some(&1),
        "every reading delivered: {c:?}"
    );
    assert_eq!(gw.terminate(), Some(0));
}

/// QoS 0 (the specification's, and the default) without giving up the queue's promise: births
/// and data arrive at QoS 0, and a reading leaves the queue only when the SUBACK of a SUBSCRIBE
/// sent after it proves the broker read it. Three times the link stalls (what the gateway
/// writes is held) and is then cut, losing every byte held: each counter value still arrives.
/// With `qos = 1` the same messages arrive at QoS 1.
#[test]
fn qos0_loses_nothing_when_the_link_swallows_what_was_written() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let broker = Mosquitto::start(dir.path());
    let p = TestPlatform::start_on(broker.port, "host", "spBv1.0/#");
    let relay = Relay::start(broker.port, Duration::from_millis(2));
    let sim = meter_sim();
    let platform = |qos: &str| {
        format!(
            "dialect = \"sparkplug\"\nhost = \"127.0.0.1\"\nport = {}\ntls = false\ndevice_id = \"gw1\"\ngroup_id = \"Plant1\"\nsecret = \"pw\"{qos}",
            relay.port
        )
    };
    let cfg = meter_config(dir.path(), &platform(""), sim.port);
    let mut gw = Gateway::start(&cfg);
    wait_until(Duration::from_secs(20), "data flowing", || {
        counters(&p, "m1").len() >= 5 && counters(&p, "m2").len() >= 5
    });
    for round in 0..3 {
        let before = counters(&p, "m1").len();
        let connects = relay.connects();
        relay.stall(true);
        // 10 polls per second per meter: readings written into the stalled link.
        std::thread::sleep(Duration::from_millis(800));
        relay.cut();
        relay.stall(false);
        wait_until(Duration::from_secs(20), "reconnected and flowing", || {
            relay.connects() > connects && counters(&p, "m1").len() > before + 10
        });
        println!("round {round}: {} connects", relay.connects());
    }
    let taken: u64 = sim
        .state
        .counters
        .lock()
        .map(|c| c.get(&1).map(|n| u64::from(*n)).unwrap_or(0))
        .unwrap_or(0);
    wait_until(Duration::from_secs(30), "every reading up to now", || {
        counters(&p, "m1").iter().any(|c| *c >= taken)
    });
    for dev in ["m1", "m2"] {
        let mut c = counters(&p, dev);
        c.sort_unstable();
        c.dedup();
        let gaps: Vec<&[u64]> = c.windows(2).filter(|w| w[1] != w[0] + 1).collect();
        assert!(
            gaps.is_empty(),
            "{dev}: readings lost at {gaps:?}; the observing platform had {} session(s); gateway log:\n{}\nbroker log:\n{}",
            p.sessions.load(std::sync::atomic::Ordering::SeqCst),
            tail(&gw.log().join("\n"), 60),
            tail(&broker.log(), 40)
        );
    }
    let qos_of = |kind: &str| -> Vec<u8> {
        p.messages()
            .iter()
            .filter(|m| m.topic.split('/').nth(2) == Some(kind))
            .map(|m| m.qos)
            .collect()
    };
    for kind in ["NBIRTH", "DBIRTH", "DDATA"] {
        let q = qos_of(kind);
        assert!(
            !q.is_empty() && q.iter().all(|q| *q == 0),
            "{kind} at QoS 0: {q:?}"
        );
    }
    assert_eq!(gw.terminate(), Some(0));
    assert!(
        qos_of("NDEATH").iter().all(|q| *q == 1),
        "NDEATH stays QoS 1"
    );

    // `qos = 1`: births and data acknowledged one by one.
    let cfg = meter_config(dir.path(), &platform("\nqos = 1"), sim.port);
    let seen = p.messages().len();
    let gw = Gateway::start(&cfg);
    wait_until(Duration::from_secs(20), "data at QoS 1", || {
        p.messages()[seen..]
            .iter()
            .any(|m| m.topic.contains("/DDATA/"))
    });
    let q: Vec<u8> = p.messages()[seen..]
        .iter()
        .filter(|m| m.topic.contains("BIRTH/") || m.topic.contains("/DDATA/"))
        .map(|m| m.qos)
        .collect();
    assert!(q.iter().all(|q| *q == 1), "{q:?}");
    drop(gw);
}
