//! The walking skeleton end to end: two Modbus TCP servers → the `fieldgate` binary → a real
//! mosquitto → a test platform that answers like Huawei IoTDA. Covers child add, statuses,
//! decoded and scaled values, a broker outage with no reading lost, a Modbus server outage
//! (one OFFLINE, neighbours unaffected, back ONLINE), hostile platform messages, and a
//! property set that writes the Modbus register.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use serde_json::Value as Json;

fn config(dir: &std::path::Path, mqtt: u16, pa: u16, pb: u16) -> std::path::PathBuf {
    let text = format!(
        r#"
[gateway]
name = "e2e"
runtime_dir = "{dir}"

[platform]
dialect = "iotda"
host = "127.0.0.1"
port = {mqtt}
device_id = "gw_e2e"
secret = "e2e-secret"
tls = false
reconnect_min = "200ms"
reconnect_max = "1s"

[store]
path = "{dir}/fg.db"
commit_interval = "20ms"

{buses}
[profile.meter]
product_id = "meter"
service = "energy"

[[profile.meter.point]]
property = "voltage"
address = "input:0"
type = "i32"
word_order = "little"
scale = 0.1

[[profile.meter.point]]
property = "counter"
address = "holding:100"
type = "u32"

[[profile.meter.point]]
property = "demand_limit"
service = "control"
address = "holding:4"
scale = 0.1
writable = true
min = 0.0
max = 500.0

[[profile.meter.point]]
property = "mode"
service = "control"
address = "holding:5"

[[device]]
node_id = "m1"
bus = "a"
profile = "meter"
unit = 1
poll = "100ms"

[[device]]
node_id = "m2"
bus = "b"
profile = "meter"
unit = 1
poll = "100ms"
"#,
        dir = dir.display(),
        buses = modbus_bus("a", pa) + &modbus_bus("b", pb),
    );
    let path = dir.join("fieldgate.toml");
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
    path
}

fn sim(voltage_raw: u16) -> ModbusSim {
    let s = SimState {
        counter_at: Some(100),
        ..Default::default()
    };
    if let Ok(mut i) = s.input.lock() {
        i.insert((1, 0), voltage_raw);
        i.insert((1, 1), 0);
    }
    if let Ok(mut h) = s.holding.lock() {
        h.insert((1, 4), 1000);
        h.insert((1, 5), 7);
    }
    ModbusSim::new(s)
}

/// Counter values reported for one child, in arrival order.
fn counters(p: &TestPlatform, dev: &str) -> Vec<u64> {
    p.reports()
        .into_iter()
        .filter(|(d, s)| d == dev && s["service_id"] == "energy")
        .filter_map(|(_, s)| s["properties"]["counter"].as_u64())
        .collect()
}

/// Every value from the first to the last arrived (duplicates allowed), and first arrivals
/// are in increasing order.
fn assert_complete_and_ordered(vals: &[u64], what: &str) {
    let mut seen = BTreeSet::new();
    let mut last_new = 0;
    for &v in vals {
        if seen.insert(v) {
            assert!(
                v > last_new,
                "{what}: {v} arrived after {last_new} (order broken): {vals:?}"
            );
            last_new = v;
        }
    }
    let (lo, hi) = (
        *seen.iter().next().unwrap_or(&0),
        *seen.iter().last().unwrap_or(&0),
    );
    let missing: Vec<u64> = (lo..=hi).filter(|v| !seen.contains(v)).collect();
    assert!(missing.is_empty(), "{what}: readings lost: {missing:?}");
}

fn count_status(p: &TestPlatform, dev: &str, status: &str) -> usize {
    p.statuses()
        .iter()
        .filter(|(d, s)| d == dev && s == status)
        .count()
}

#[test]
fn modbus_to_iotda_end_to_end() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut broker = Mosquitto::start(dir.path());
    let platform = TestPlatform::start(broker.port, "gw_e2e");
    let sim_a = sim(2305); // 230.5 V
    let mut sim_b = sim(4000); // 400.0 V
    let cfg = config(dir.path(), broker.port, sim_a.port, sim_b.port);
    let mut gw = Gateway::start(&cfg);

    // --- children are added, go ONLINE, and report decoded, scaled values under platform ids
    let t = Duration::from_secs(20);
    wait_until(t, "add_sub_device_request for both children", || {
        platform.messages().iter().any(|m| {
            m.json["services"][0]["event_type"] == "add_sub_device_request"
                && m.json["services"][0]["paras"]["devices"]
                    .as_array()
                    .is_some_and(|d| d.len() == 2)
        })
    });
    wait_until(t, "both children ONLINE", || {
        count_status(&platform, "meter_m1", "ONLINE") >= 1
            && count_status(&platform, "meter_m2", "ONLINE") >= 1
    });
    wait_until(t, "reports from both children", || {
        counters(&platform, "meter_m1").len() >= 5 && counters(&platform, "meter_m2").len() >= 5
    });
    let reports = platform.reports();
    let (_, m1) = reports
        .iter()
        .find(|(d, s)| d == "meter_m1" && s["service_id"] == "energy")
        .cloned()
        .unwrap_or_default();
    assert_eq!(m1["properties"]["voltage"], Json::from(230.5), "{m1}");
    let (_, m2) = reports
        .iter()
        .find(|(d, s)| d == "meter_m2" && s["service_id"] == "energy")
        .cloned()
        .unwrap_or_default();
    assert_eq!(m2["properties"]["voltage"], Json::from(400.0), "{m2}");
    let (_, ctl) = reports
        .iter()
        .find(|(d, s)| d == "meter_m1" && s["service_id"] == "control")
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        ctl["properties"]["demand_limit"],
        Json::from(100.0),
        "{ctl}"
    );
    assert_eq!(ctl["properties"]["mode"], Json::from(7), "{ctl}");
    let et = m1["event_time"].as_str().unwrap_or_default();
    // yyyy-MM-dd'T'HH:mm:ss.SSS'Z': the reading's own millisecond.
    assert!(
        et.len() == 24
            && et.ends_with('Z')
            && et.as_bytes()[10] == b'T'
            && et.as_bytes()[19] == b'.',
        "event_time {et}"
    );
    let stamps: Vec<String> = platform
        .reports()
        .iter()
        .filter(|(d, s)| d == "meter_m1" && s["service_id"] == "energy")
        .filter_map(|(_, s)| s["event_time"].as_str().map(str::to_string))
        .collect();
    let mut distinct = stamps.clone();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        stamps.len(),
        "no two polls share a time: {stamps:?}"
    );
    assert!(
        reports
            .iter()
            .all(|(d, _)| d == "meter_m1" || d == "meter_m2"),
        "reports only under platform ids"
    );

    // --- broker outage: every reading taken while it was down arrives afterwards, in order
    broker.stop();
    std::thread::sleep(Duration::from_secs(3));
    let taken_during = sim_a
        .state
        .counters
        .lock()
        .map(|c| c.get(&1).copied().unwrap_or(0))
        .unwrap_or(0) as u64;
    broker.restart();
    wait_until(
        Duration::from_secs(30),
        "backlog delivered after the outage",
        || {
            counters(&platform, "meter_m1")
                .iter()
                .max()
                .copied()
                .unwrap_or(0)
                > taken_during + 5
        },
    );
    let c1 = counters(&platform, "meter_m1");
    assert_complete_and_ordered(&c1, "m1 across the broker outage");
    assert!(
        c1.len() as u64 >= taken_during,
        "m1 readings before and during the outage all arrived"
    );
    assert_complete_and_ordered(
        &counters(&platform, "meter_m2"),
        "m2 across the broker outage",
    );

    // --- Modbus server outage: one OFFLINE (status and log line), the neighbour keeps reporting
    let offline_logs_before = gw.count(&["device OFFLINE", "m2"]);
    assert_eq!(offline_logs_before, 0);
    sim_b.stop();
    wait_until(Duration::from_secs(10), "m2 OFFLINE", || {
        count_status(&platform, "meter_m2", "OFFLINE") == 1
    });
    let m1_before = counters(&platform, "meter_m1").len();
    // m1 (another bus) keeps reporting while m2 is down; wait long enough for m2 to have
    // failed several more polls, so a second OFFLINE would have shown up.
    wait_until(
        Duration::from_secs(10),
        "m1 reporting while m2 is down",
        || counters(&platform, "meter_m1").len() >= m1_before + 8,
    );
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(
        count_status(&platform, "meter_m2", "OFFLINE"),
        1,
        "exactly one OFFLINE status"
    );
    assert_eq!(
        count_status(&platform, "meter_m1", "OFFLINE"),
        0,
        "m1 unaffected"
    );
    assert_eq!(
        gw.count(&["device OFFLINE", "m2"]),
        1,
        "exactly one OFFLINE log line:\n{}",
        gw.log().join("\n")
    );
    let online_before = count_status(&platform, "meter_m2", "ONLINE");
    sim_b.start();
    wait_until(Duration::from_secs(10), "m2 back ONLINE", || {
        count_status(&platform, "meter_m2", "ONLINE") > online_before
    });

    // --- hostile platform messages are logged and ignored; a request with an id is answered
    platform.send(&platform.topic("events/down"), b"\x00\xffnot json at all");
    platform.send(&platform.topic("events/down"), br#"{"services":[{"event_type":"add_sub_device_response","paras":{"successful_devices":"nope"}}]}"#);
    platform.send(&platform.topic("commands/request_id=bad1"), b"{not json");
    wait_until(
        Duration::from_secs(5),
        "answer to the malformed command",
        || {
            !platform
                .responses("commands/response/request_id=bad1")
                .is_empty()
        },
    );
    let r = &platform.responses("commands/response/request_id=bad1")[0];
    assert_ne!(r["result_code"], Json::from(0), "{r}");
    assert!(gw.running(), "daemon survived hostile messages");
    // Exactly the three we sent: our own echoed responses must never be taken as requests
    // (answering them would loop).
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        status(&cfg)["inbound_rejected"],
        3,
        "{}",
        gw.log().join("\n")
    );
    // Logged by episode: the first at once, the others counted.
    assert_eq!(
        gw.count(&["ignoring malformed platform message"]),
        1,
        "{}",
        gw.log().join("\n")
    );
    let n = counters(&platform, "meter_m1").len();
    wait_until(Duration::from_secs(5), "reports continue", || {
        counters(&platform, "meter_m1").len() > n + 3
    });

    // --- property set reaches the register (inverse scaling); a read-only point is refused
    let set = r#"{"object_device_id":"meter_m1","services":[{"service_id":"control","properties":{"demand_limit":123.4}}]}"#;
    let r = platform.ask("properties/set", "s1", set.as_bytes());
    assert_eq!(r["result_code"], Json::from(0));
    assert_eq!(
        sim_a
            .state
            .holding
            .lock()
            .map(|h| h.get(&(1, 4)).copied())
            .unwrap_or_default(),
        Some(1234)
    );
    let ro = r#"{"object_device_id":"meter_m1","services":[{"service_id":"control","properties":{"mode":1}}]}"#;
    let r = platform.ask("properties/set", "s2", ro.as_bytes());
    assert_eq!(r["result_code"], Json::from(3));
    let writes = sim_a
        .state
        .writes
        .lock()
        .map(|w| w.clone())
        .unwrap_or_default();
    assert_eq!(writes, vec![(1, 4)], "only the writable point was written");

    // --- graceful stop
    assert_eq!(gw.terminate(), Some(0), "{}", gw.log().join("\n"));
}

fn add_requests(p: &TestPlatform) -> usize {
    p.messages()
        .iter()
        .filter(|m| m.json["services"][0]["event_type"] == "add_sub_device_request")
        .count()
}

#[test]
fn restart_sends_what_was_queued_and_keeps_platform_ids() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut broker = Mosquitto::start(dir.path());
    let platform = TestPlatform::start(broker.port, "gw_e2e");
    let sim_a = sim(2305);
    let sim_b = sim(4000);
    let cfg = config(dir.path(), broker.port, sim_a.port, sim_b.port);

    let mut gw = Gateway::start(&cfg);
    wait_until(Duration::from_secs(20), "first reports", || {
        counters(&platform, "meter_m1").len() >= 3
    });
    assert_eq!(add_requests(&platform), 1);

    // Readings taken while the broker is down are only in the queue when the gateway stops.
    broker.stop();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(gw.terminate(), Some(0), "{}", gw.log().join("\n"));
    let taken = sim_a
        .state
        .counters
        .lock()
        .map(|c| c.get(&1).copied().unwrap_or(0))
        .unwrap_or(0) as u64;
    let delivered_before = counters(&platform, "meter_m1")
        .iter()
        .max()
        .copied()
        .unwrap_or(0);
    assert!(
        taken > delivered_before + 10,
        "the outage left readings queued ({delivered_before} delivered, {taken} taken)"
    );

    broker.restart();
    let gw2 = Gateway::start(&cfg);
    wait_until(
        Duration::from_secs(20),
        "queued readings from the first run",
        || {
            counters(&platform, "meter_m1")
                .iter()
                .max()
                .copied()
                .unwrap_or(0)
                > taken + 3
        },
    );
    assert_complete_and_ordered(
        &counters(&platform, "meter_m1"),
        "m1 across a gateway restart",
    );
    assert!(
        gw2.count(&["queue holds records from before the restart"]) == 1,
        "{}",
        gw2.log().join("\n")
    );
    assert_eq!(
        add_requests(&platform),
        1,
        "platform ids were persisted: no second add request"
    );
}
