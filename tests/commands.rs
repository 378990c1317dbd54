//! Child lifecycle and commands end to end (real mosquitto, real Modbus servers, the binary):
//! declared commands and property set/get reach the registers and are answered with the
//! read-back value; an OFFLINE child fails fast; a hung write answers with a timeout before the
//! platform's deadline; a corpus of hostile requests is refused with the documented codes and
//! never touches the bus; a config reload adds and deletes children without stopping the
//! others; a platform delete stops polling; a reconnect replays statuses, sync and pending adds.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value as Json};

const PROFILE: &str = r#"
[profile.meter]
product_id = "meter"
service = "energy"

[[profile.meter.point]]
property = "voltage"
address = "input:0"

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

[[profile.meter.point]]
property = "reset"
service = "control"
address = "holding:6"

[[profile.meter.point]]
property = "relay"
service = "control"
address = "coil:0"
writable = true

[[profile.meter.point]]
property = "total"
service = "control"
address = "holding:20"
type = "u64"
writable = true

[[profile.meter.point]]
property = "trim"
service = "control"
address = "holding:30"
type = "f32"
writable = true

[[profile.meter.command]]
name = "set_limit"
service = "control"
point = "demand_limit"

[[profile.meter.command]]
name = "reset_counter"
service = "control"
point = "reset"
value = 1

[[profile.meter.command]]
name = "relay_on"
service = "control"
point = "relay"
value = true
"#;

fn device(node: &str, bus: &str, unit: u8) -> String {
    format!("\n[[device]]\nnode_id = \"{node}\"\nbus = \"{bus}\"\nprofile = \"meter\"\nunit = {unit}\npoll = \"100ms\"\n")
}

fn write_config(dir: &Path, mqtt: u16, pa: u16, pb: u16, devices: &str) -> PathBuf {
    let text = format!(
        r#"
[gateway]
runtime_dir = "{dir}/run"
report_interval = "1s"

[platform]
dialect = "iotda"
host = "127.0.0.1"
port = {mqtt}
tls = false
device_id = "gw_cmd"
secret = "s"
reconnect_min = "200ms"
reconnect_max = "1s"

[store]
path = "{dir}/fg.db"

{buses}{PROFILE}{devices}"#,
        dir = dir.display(),
        buses = modbus_bus("a", pa) + &modbus_bus("b", pb),
    );
    let path = dir.join("fieldgate.toml");
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
    path
}

fn sim() -> ModbusSim {
    let s = SimState {
        counter_at: Some(100),
        ..Default::default()
    };
    if let Ok(mut h) = s.holding.lock() {
        h.insert((1, 4), 1000);
        h.insert((1, 5), 7);
    }
    ModbusSim::new(s)
}

fn statuses(p: &TestPlatform, dev: &str, st: &str) -> usize {
    p.statuses()
        .iter()
        .filter(|(d, s)| d == dev && s == st)
        .count()
}

fn counters(p: &TestPlatform, dev: &str) -> Vec<u64> {
    p.reports()
        .into_iter()
        .filter(|(d, s)| d == dev && s["service_id"] == "energy")
        .filter_map(|(_, s)| s["properties"]["counter"].as_u64())
        .collect()
}

fn events(p: &TestPlatform, event_type: &str) -> Vec<Json> {
    p.messages()
        .into_iter()
        .flat_map(|m| m.json["services"].as_array().cloned().unwrap_or_default())
        .filter(|s| s["event_type"] == event_type)
        .collect()
}

fn started(
    dir: &Path,
    devices: &str,
) -> (
    Mosquitto,
    TestPlatform,
    ModbusSim,
    ModbusSim,
    PathBuf,
    Gateway,
) {
    let broker = Mosquitto::start(dir);
    let platform = TestPlatform::start(broker.port, "gw_cmd");
    let (a, b) = (sim(), sim());
    let cfg = write_config(dir, broker.port, a.port, b.port, devices);
    let gw = Gateway::start(&cfg);
    (broker, platform, a, b, cfg, gw)
}

#[test]
fn commands_reach_the_registers_and_hostile_requests_never_do() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (_broker, p, sim_a, mut sim_b, _cfg, mut gw) =
        started(dir.path(), &(device("m1", "a", 1) + &device("m2", "b", 1)));
    wait_until(Duration::from_secs(20), "both children ONLINE", || {
        statuses(&p, "meter_m1", "ONLINE") > 0 && statuses(&p, "meter_m2", "ONLINE") > 0
    });
    let reg = |unit: u8, a: u16| {
        sim_a
            .state
            .holding
            .lock()
            .ok()
            .and_then(|h| h.get(&(unit, a)).copied())
    };

    // Declared commands: a fixed value on a read-only point, a platform value, a coil.
    let r = p.ask("commands", "c1", br#"{"object_device_id":"meter_m1","service_id":"control","command_name":"reset_counter","paras":{}}"#);
    assert_eq!(
        (r["result_code"].clone(), r["paras"]["reset"].clone()),
        (json!(0), json!(1)),
        "{r}"
    );
    assert_eq!(reg(1, 6), Some(1));
    let r = p.ask(
        "commands",
        "c2",
        br#"{"object_device_id":"meter_m1","command_name":"set_limit","paras":{"value":42}}"#,
    );
    assert_eq!(
        (r["result_code"].clone(), r["paras"]["demand_limit"].clone()),
        (json!(0), json!(42.0)),
        "{r}"
    );
    assert_eq!(reg(1, 4), Some(420), "inverse scaling: 42 / 0.1");
    let r = p.ask("commands", "c3", br#"{"object_device_id":"meter_m1","service_id":"control","command_name":"relay_on","paras":{}}"#);
    assert_eq!(r["result_code"], 0, "{r}");
    assert_eq!(
        sim_a
            .state
            .coils
            .lock()
            .ok()
            .and_then(|c| c.get(&(1, 0)).copied()),
        Some(true)
    );

    // Property set and get round trip.
    let r = p.ask("properties/set", "s1", br#"{"object_device_id":"meter_m1","services":[{"service_id":"control","properties":{"relay":false,"demand_limit":12.5}}]}"#);
    assert_eq!(r["result_code"], 0, "{r}");
    let r = p.ask(
        "properties/get",
        "g1",
        br#"{"object_device_id":"meter_m1","service_id":"control"}"#,
    );
    let props = &r["services"][0]["properties"];
    assert_eq!(
        (
            props["relay"].clone(),
            props["demand_limit"].clone(),
            props["mode"].clone()
        ),
        (json!(false), json!(12.5), json!(7)),
        "{r}"
    );

    // Values at the edges of their type: u64::MAX goes through exactly; 2^64 and an f32
    // beyond f32::MAX are refused with the bad-value code, never wrapped or saturated.
    let r = p.ask("properties/set", "e1", br#"{"object_device_id":"meter_m1","services":[{"service_id":"control","properties":{"total":18446744073709551615}}]}"#);
    assert_eq!(r["result_code"], 0, "{r}");
    let regs: Vec<Option<u16>> = (20..24).map(|a| reg(1, a)).collect();
    assert_eq!(regs, vec![Some(0xFFFF); 4]);
    for (i, body) in [
        r#"{"total":18446744073709551616}"#,
        r#"{"total":-1}"#,
        r#"{"trim":1e300}"#,
        r#"{"trim":-3.5e38}"#,
    ]
    .iter()
    .enumerate()
    {
        let r = p.ask(
            "properties/set",
            &format!("e{}", i + 2),
            format!(r#"{{"object_device_id":"meter_m1","services":[{{"service_id":"control","properties":{body}}}]}}"#).as_bytes(),
        );
        assert_eq!(r["result_code"], 4, "{body}: {r}");
    }
    assert_eq!((20..24).map(|a| reg(1, a)).collect::<Vec<_>>(), regs);
    assert_eq!(
        (reg(1, 30), reg(1, 31)),
        (None, None),
        "no f32 write happened"
    );

    // A hung write answers with the timeout code long before the platform's 20 s.
    sim_a.state.silent_writes.store(true, Ordering::SeqCst);
    let t0 = Instant::now();
    let r = p.ask(
        "commands",
        "t1",
        br#"{"object_device_id":"meter_m1","command_name":"set_limit","paras":{"value":10}}"#,
    );
    assert_eq!(r["result_code"], 6, "timeout code: {r}");
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "answered in {:?}",
        t0.elapsed()
    );
    sim_a.state.silent_writes.store(false, Ordering::SeqCst);

    // A command to an OFFLINE child fails fast with its own code.
    sim_b.stop();
    wait_until(Duration::from_secs(10), "m2 OFFLINE", || {
        statuses(&p, "meter_m2", "OFFLINE") > 0
    });
    let t0 = Instant::now();
    let r = p.ask(
        "commands",
        "o1",
        br#"{"object_device_id":"meter_m2","command_name":"set_limit","paras":{"value":10}}"#,
    );
    assert_eq!(r["result_code"], 5, "offline code: {r}");
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "failed fast: {:?}",
        t0.elapsed()
    );

    // The hostile corpus: every request refused with the documented code, no bus write.
    let writes_before = sim_a.state.writes.lock().map(|w| w.len()).unwrap_or(0);
    let huge = format!(
        r#"{{"object_device_id":"meter_m1","command_name":"set_limit","paras":{{"value":1,"pad":"{}"}}}}"#,
        "x".repeat(70_000)
    );
    let corpus: Vec<(&str, String, i64)> = vec![
        ("commands", "{".into(), 4),
        ("commands", "[]".into(), 4),
        ("commands", r#"{"object_device_id":"meter_m1","paras":{}}"#.into(), 4),
        ("commands", r#"{"object_device_id":"nope","command_name":"set_limit","paras":{"value":1}}"#.into(), 1),
        ("commands", r#"{"command_name":"set_limit","paras":{"value":1}}"#.into(), 8),
        ("commands", r#"{"object_device_id":"meter_m1","command_name":"format_disk","paras":{}}"#.into(), 8),
        ("commands", r#"{"object_device_id":"meter_m1","command_name":"set_limit","paras":{}}"#.into(), 4),
        ("commands", r#"{"object_device_id":"meter_m1","command_name":"set_limit","paras":{"value":"abc"}}"#.into(), 4),
        ("commands", r#"{"object_device_id":"meter_m1","command_name":"set_limit","paras":{"value":9999}}"#.into(), 4),
        ("commands", r#"{"object_device_id":"meter_m1","command_name":"set_limit","paras":{"value":-1}}"#.into(), 4),
        ("commands", r#"{"object_device_id":"meter_m1","command_name":"set_limit","paras":{"value":true}}"#.into(), 4),
        ("commands", r#"{"object_device_id":5,"command_name":"set_limit","paras":{"value":1}}"#.into(), 8),
        ("commands", huge, 4),
        ("properties/set", r#"{"object_device_id":"meter_m1","services":[{"service_id":"control","properties":{"mode":1}}]}"#.into(), 3),
        ("properties/set", r#"{"object_device_id":"meter_m1","services":[{"service_id":"control","properties":{"foo":1}}]}"#.into(), 2),
        ("properties/set", r#"{"object_device_id":"meter_m1","services":[{"service_id":"nope","properties":{"relay":true}}]}"#.into(), 2),
        ("properties/set", r#"{"object_device_id":"meter_m1","services":[{"service_id":"control","properties":{"relay":true}},{"service_id":"energy","properties":{"voltage":1}}]}"#.into(), 8),
        ("properties/set", r#"{"object_device_id":"meter_m1","services":[{"service_id":"control","properties":{}}]}"#.into(), 4),
        ("properties/set", r#"{"object_device_id":"meter_m1","services":[{"service_id":"control","properties":{"demand_limit":"12"}}]}"#.into(), 4),
        ("properties/set", r#"{"object_device_id":"meter_m1","services":[{"service_id":"control","properties":{"demand_limit":1e999}}]}"#.into(), 4),
        ("properties/set", r#"{"object_device_id":"meter_m1","services":[{"service_id":"control","properties":{"relay":2}}]}"#.into(), 4),
        ("properties/set", r#"{"object_device_id":"meter_m1","services":{"service_id":"control"}}"#.into(), 4),
        ("properties/set", r#"{"object_device_id":"ghost","services":[{"service_id":"control","properties":{"relay":true}}]}"#.into(), 1),
        ("properties/set", r#"{"object_device_id":"meter_m1","services":[{"service_id":"energy","properties":{"voltage":230}}]}"#.into(), 3),
        ("properties/get", r#"{"object_device_id":"meter_m1","service_id":"nope"}"#.into(), 2),
    ];
    assert!(corpus.len() >= 20);
    for (i, (kind, body, code)) in corpus.iter().enumerate() {
        let r = p.ask(kind, &format!("h{i}"), body.as_bytes());
        assert_eq!(
            r["result_code"],
            json!(code),
            "corpus #{i} ({kind} {}): {r}",
            &body[..body.len().min(120)]
        );
    }
    p.send(&p.topic("events/down"), b"\xff\xfe garbage");
    p.send(&p.topic("commands/request_id="), b"{}");
    std::thread::sleep(Duration::from_millis(300));
    let writes_after = sim_a.state.writes.lock().map(|w| w.len()).unwrap_or(0);
    assert_eq!(
        writes_after, writes_before,
        "no hostile request reached the bus"
    );
    // A burst of refusals is one line per kind (by episode), not one line per request.
    for kind in [
        "platform request refused",
        "ignoring malformed platform message",
    ] {
        assert!(gw.count(&[kind]) <= 1, "{kind}: {}", gw.log().join("\n"));
    }
    assert!(gw.running(), "{}", gw.log().join("\n"));
    let n = counters(&p, "meter_m1").len();
    wait_until(Duration::from_secs(5), "m1 still reporting", || {
        counters(&p, "meter_m1").len() > n + 3
    });

    // The gateway's own properties arrive on its own topic.
    let own: Vec<Msg> = p
        .messages()
        .into_iter()
        .filter(|m| m.topic == "$oc/devices/gw_cmd/sys/properties/report")
        .collect();
    assert!(own.len() >= 2, "at connect and every report_interval");
    let props = &own[0].json["services"][0]["properties"];
    assert_eq!(props["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(props["children_total"], 2);
    assert_eq!(gw.terminate(), Some(0));
}

#[test]
fn reload_adds_and_deletes_children_without_stopping_the_others() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (_broker, p, sim_a, sim_b, cfg, gw) =
        started(dir.path(), &(device("m1", "a", 1) + &device("m2", "b", 1)));
    wait_until(Duration::from_secs(20), "both reporting", || {
        counters(&p, "meter_m1").len() > 3 && counters(&p, "meter_m2").len() > 3
    });
    let _ = (&sim_a, &sim_b);

    // Remove m2, add m3 on the same bus; m1's bus is untouched.
    write_config(
        dir.path(),
        _broker.port,
        sim_a.port,
        sim_b.port,
        &(device("m1", "a", 1) + &device("m3", "b", 2)),
    );
    let m1_before = counters(&p, "meter_m1").len();
    gw.signal(1);
    wait_until(
        Duration::from_secs(15),
        "delete of m2 and add of m3",
        || {
            events(&p, "delete_sub_device_request")
                .iter()
                .any(|e| e["paras"]["devices"] == json!(["meter_m2"]))
                && events(&p, "add_sub_device_request")
                    .iter()
                    .any(|e| e["paras"]["devices"][0]["node_id"] == "m3")
        },
    );
    wait_until(Duration::from_secs(15), "m3 reporting", || {
        counters(&p, "meter_m3").len() > 3
    });
    let adds = events(&p, "add_sub_device_request");
    assert_eq!(
        adds.len(),
        2,
        "one add at start (m1, m2), one for m3: {adds:?}"
    );
    assert_eq!(
        adds[1]["paras"]["devices"].as_array().map(Vec::len),
        Some(1)
    );
    assert_eq!(events(&p, "delete_sub_device_request").len(), 1);
    assert!(
        gw.count(&["config reloaded"]) == 1,
        "{}",
        gw.log().join("\n")
    );
    assert_eq!(
        gw.count(&["restarting it", "bus=a"]),
        0,
        "m1's bus was not restarted:\n{}",
        gw.log().join("\n")
    );
    assert_eq!(gw.count(&["restarting it", "bus=b"]), 1);
    // m1 never stopped: it keeps reporting and every one of its readings arrived, in order.
    wait_until(
        Duration::from_secs(5),
        "m1 reporting after the reload",
        || counters(&p, "meter_m1").len() > m1_before + 5,
    );
    let c1 = counters(&p, "meter_m1");
    let mut sorted = c1.clone();
    sorted.dedup();
    assert!(
        sorted.windows(2).all(|w| w[1] == w[0] + 1),
        "m1 readings contiguous: {c1:?}"
    );
    // m2 is gone: no new reports once the deletion went through.
    std::thread::sleep(Duration::from_millis(500));
    let m2 = counters(&p, "meter_m2").len();
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(counters(&p, "meter_m2").len(), m2, "m2 no longer reported");

    // A broken config is refused as a whole; the running one stays.
    std::fs::write(&cfg, "[platform\nthis is not toml").unwrap_or_else(|e| panic!("{e}"));
    gw.signal(1);
    wait_until(Duration::from_secs(5), "refusal logged", || {
        gw.count(&["reload refused"]) == 1
    });
    let n = counters(&p, "meter_m1").len();
    wait_until(Duration::from_secs(5), "m1 still reporting", || {
        counters(&p, "meter_m1").len() > n + 3
    });
}

#[test]
fn platform_delete_stops_polling_and_reconnect_replays_state() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (mut broker, p, _a, _b, _cfg, gw) =
        started(dir.path(), &(device("m1", "a", 1) + &device("m2", "b", 1)));
    // The platform is slow to answer adds: nothing is confirmed before the broker restarts.
    p.answer_adds.store(false, Ordering::SeqCst);
    wait_until(Duration::from_secs(10), "first add request", || {
        !events(&p, "add_sub_device_request").is_empty()
    });
    broker.restart();
    p.answer_adds.store(true, Ordering::SeqCst);
    wait_until(
        Duration::from_secs(20),
        "pending adds completed after the reconnect",
        || counters(&p, "meter_m1").len() > 2 && counters(&p, "meter_m2").len() > 2,
    );
    assert!(
        events(&p, "add_sub_device_request").len() >= 2,
        "adds re-sent after the reconnect"
    );
    assert!(
        events(&p, "sub_device_sync_request").len() >= 2,
        "sync request after every connect"
    );

    // After another reconnect the platform gets every child's status again.
    let online = statuses(&p, "meter_m1", "ONLINE");
    broker.restart();
    wait_until(Duration::from_secs(20), "statuses replayed", || {
        statuses(&p, "meter_m1", "ONLINE") > online
    });

    // The platform deletes m1: it stops being polled and is not added again.
    let adds = events(&p, "add_sub_device_request").len();
    p.send(
        &p.topic("events/down"),
        br#"{"services":[{"service_id":"$sub_device_manager","event_type":"delete_sub_device_notify","paras":{"devices":[{"node_id":"m1","device_id":"meter_m1"}],"version":7}}]}"#,
    );
    wait_until(Duration::from_secs(10), "polling stopped", || {
        gw.count(&["stopping the polling", "m1"]) == 1
    });
    std::thread::sleep(Duration::from_millis(400));
    let n = counters(&p, "meter_m1").len();
    let m2 = counters(&p, "meter_m2").len();
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(counters(&p, "meter_m1").len(), n, "no more m1 reports");
    wait_until(Duration::from_secs(10), "m2 unaffected", || {
        counters(&p, "meter_m2").len() > m2 + 5
    });
    assert_eq!(
        events(&p, "add_sub_device_request").len(),
        adds,
        "m1 is not added again"
    );
}
