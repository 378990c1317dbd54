//! Report strategies end to end: the `fieldgate` binary polls a real Modbus server whose
//! registers follow a scripted curve, and delivers through a real mosquitto to a test platform
//! (ThingsBoard's gateway API: every value with its reading's ms timestamp). Per strategy the
//! platform receives exactly what the rule implies: `on_change` with a deadband the values that
//! moved beyond it from the last *reported* one; `on_change_or_period` a heartbeat at least
//! every period and never sooner without a change; `aggregate` one record per window, stamped
//! at its end; `always` every poll. A restart keeps the comparison base (no resend of an
//! unchanged value), and `fieldgate status` shows values taken against reported.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use serde_json::Value as Json;

/// (ts, values) received per child, in arrival order.
fn telemetry(p: &TestPlatform) -> BTreeMap<String, Vec<(u64, Json)>> {
    let mut out: BTreeMap<String, Vec<(u64, Json)>> = BTreeMap::new();
    for m in p.messages() {
        if m.topic != "v1/gateway/telemetry" {
            continue;
        }
        let Some(obj) = m.json.as_object() else {
            continue;
        };
        for (dev, rows) in obj {
            for row in rows.as_array().into_iter().flatten() {
                out.entry(dev.clone())
                    .or_default()
                    .push((row["ts"].as_u64().unwrap_or(0), row["values"].clone()));
            }
        }
    }
    out
}

fn values_of(p: &TestPlatform, dev: &str, key: &str) -> Vec<f64> {
    telemetry(p)
        .get(dev)
        .into_iter()
        .flatten()
        .filter_map(|(_, v)| v[key].as_f64())
        .collect()
}

fn set(sim: &ModbusSim, unit: u8, raw: u16) {
    if let Ok(mut h) = sim.state.holding.lock() {
        h.insert((unit, 0), raw);
    }
}

const DEVICES: &str = r#"
[[bus]]
name = "plant"
driver = "modbus-tcp"
endpoint = "127.0.0.1:PORT"
timeout = "1s"

[profile.meter]
product_id = "meter"
service = "energy"

[[profile.meter.point]]
property = "level"
address = "holding:0"
type = "u16"

[[device]]
node_id = "changes"
bus = "plant"
profile = "meter"
unit = 1
poll = "100ms"
report = "on_change"
deadband = 10.0

[[device]]
node_id = "heartbeat"
bus = "plant"
profile = "meter"
unit = 2
poll = "100ms"
report = "on_change_or_period"
period = "2s"
deadband = 5.0

[[device]]
node_id = "windows"
bus = "plant"
profile = "meter"
unit = 3
poll = "100ms"
aggregate = ["avg", "min", "max", "count"]
window = "1s"

[[device]]
node_id = "every"
bus = "plant"
profile = "meter"
unit = 4
poll = "100ms"
"#;

#[test]
fn each_strategy_reports_exactly_what_its_rule_implies() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let broker = Mosquitto::start(dir.path());
    let p = TestPlatform::start_on(broker.port, "gw", "v1/gateway/#");
    let sim = ModbusSim::new(SimState::default());
    for unit in 1..=4 {
        set(&sim, unit, 100);
    }
    let cfg = write_config(
        dir.path(),
        "fieldgate.toml",
        &format!(
            "dialect = \"thingsboard\"\nhost = \"127.0.0.1\"\nport = {}\ntls = false\ndevice_id = \"gw\"\nsecret = \"token\"\nreconnect_min = \"200ms\"",
            broker.port
        ),
        &DEVICES.replace("PORT", &sim.port.to_string()),
    );
    let (code, out, err) = fieldgate(&["check", "-c", &cfg.to_string_lossy()]);
    assert_eq!(code, 0, "{out}{err}");
    let mut gw = Gateway::start(&cfg);
    wait_until(Duration::from_secs(20), "first values", || {
        ["changes", "heartbeat", "every"]
            .iter()
            .all(|d| !values_of(&p, d, "level").is_empty())
    });

    // The curve of `changes` (deadband 10): each value held for several polls.
    // 100 is reported (first); 105 is within the band; 112 is 12 from 100; 110 is 2 from
    // 112; 120 is exactly 10 from 110 but only 8 from 112 (the last reported); 123 is 11
    // beyond it; 115 and 114 drift back within the band; 112 is 11 below 123.
    for raw in [105u16, 112, 110, 120, 123, 115, 114, 112] {
        set(&sim, 1, raw);
        std::thread::sleep(Duration::from_millis(400));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        values_of(&p, "changes", "level"),
        vec![100.0, 112.0, 123.0, 112.0],
        "on_change, deadband 10: beyond the band from the last reported value"
    );

    // `heartbeat` (deadband 5, period 2 s) held at 10.0 all along: one value at least every
    // 2 s, never two within 2 s.
    let beats: Vec<u64> = telemetry(&p)["heartbeat"].iter().map(|(t, _)| *t).collect();
    assert!(beats.len() >= 2, "{beats:?}");
    for w in beats.windows(2) {
        let gap = w[1] - w[0];
        assert!(
            (2_000..3_000).contains(&gap),
            "heartbeat gaps are the period (plus the next poll, late on a loaded machine): {beats:?}"
        );
    }

    // `windows`: one record per 1 s window, stamped at its end, with the functions asked for.
    let wins = telemetry(&p)["windows"].clone();
    assert!(wins.len() >= 2, "{wins:?}");
    for (ts, v) in &wins {
        assert_eq!(ts % 1000, 0, "stamped at a window's end: {ts}");
        assert_eq!(v["level_avg"].as_f64(), Some(100.0), "{v}");
        assert_eq!(v["level_min"].as_f64(), Some(100.0), "{v}");
        assert_eq!(v["level_max"].as_f64(), Some(100.0), "{v}");
        assert!(v.get("level").is_none(), "the raw value is not sent: {v}");
    }
    let full: Vec<u64> = wins[1..]
        .iter()
        .filter_map(|(_, v)| v["level_count"].as_u64())
        .collect();
    assert!(
        full.iter().all(|c| (4..=11).contains(c)),
        "a full 1 s window holds about 10 polls (fewer when a loaded machine skips slots): {full:?}"
    );

    // `always`: every poll (about 10 a second).
    let every = values_of(&p, "every", "level").len();
    assert!(every >= 25, "always: every poll reported ({every})");

    // Status: taken against reported, per child.
    let s = status(&cfg);
    let child = |id: &str| {
        s["children"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["node_id"] == id)
            .cloned()
            .unwrap_or_default()
    };
    let c = child("changes");
    assert!(
        c["values"]["taken"].as_u64().unwrap_or(0) > 20 && c["values"]["reported"] == 4,
        "{c}"
    );
    let e = child("every");
    assert_eq!(e["values"]["taken"], e["values"]["reported"], "{e}");
    assert_eq!(
        c["last_values"]["energy.level"].as_f64(),
        Some(112.0),
        "status shows the latest polled value"
    );

    // A restart keeps the comparison base: the unchanged 112 is not sent again…
    assert_eq!(gw.terminate(), Some(0));
    let before = values_of(&p, "changes", "level").len();
    let gw = Gateway::start(&cfg);
    wait_until(Duration::from_secs(20), "polling again", || {
        values_of(&p, "every", "level").len() > every + 10
    });
    assert_eq!(
        values_of(&p, "changes", "level").len(),
        before,
        "no resend after a restart"
    );
    // …and a change beyond the band from it is.
    set(&sim, 1, 125);
    wait_until(Duration::from_secs(10), "125 reported", || {
        values_of(&p, "changes", "level").last() == Some(&125.0)
    });
    drop(gw);
}

/// A window spanning an OFFLINE gap is cut at the gap: the readings before it arrive as one
/// record stamped at the last of them, and the OFFLINE status after it.
#[test]
fn an_offline_gap_cuts_the_open_window() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let broker = Mosquitto::start(dir.path());
    let p = TestPlatform::start_on(broker.port, "gw", "v1/gateway/#");
    let mut sim = ModbusSim::new(SimState::default());
    set(&sim, 3, 70);
    let cfg = write_config(
        dir.path(),
        "fieldgate.toml",
        &format!(
            "dialect = \"thingsboard\"\nhost = \"127.0.0.1\"\nport = {}\ntls = false\ndevice_id = \"gw\"\nsecret = \"token\"",
            broker.port
        ),
        &DEVICES
            .replace("PORT", &sim.port.to_string())
            .replace("window = \"1s\"", "window = \"1h\"")
            .replace("timeout = \"1s\"", "timeout = \"200ms\"\noffline_after = 1"),
    );
    let gw = Gateway::start(&cfg);
    wait_until(Duration::from_secs(20), "polling", || {
        !values_of(&p, "every", "level").is_empty()
    });
    std::thread::sleep(Duration::from_millis(1000));
    assert!(
        !telemetry(&p).contains_key("windows"),
        "an hour's window is still open"
    );
    sim.stop();
    wait_until(Duration::from_secs(20), "the cut window", || {
        telemetry(&p).contains_key("windows")
    });
    let (ts, v) = telemetry(&p)["windows"][0].clone();
    assert!(
        ts % 3_600_000 != 0,
        "stamped at its last reading, not the hour"
    );
    assert_eq!(v["level_avg"].as_f64(), Some(70.0), "{v}");
    assert!(v["level_count"].as_u64().unwrap_or(0) >= 5, "{v}");
    let order: Vec<String> = p
        .messages()
        .iter()
        .filter(|m| {
            (m.topic == "v1/gateway/telemetry" && m.json.get("windows").is_some())
                || (m.topic == "v1/gateway/disconnect" && m.json["device"] == "windows")
        })
        .map(|m| m.topic.clone())
        .collect();
    assert_eq!(
        order.first().map(String::as_str),
        Some("v1/gateway/telemetry"),
        "the window before the OFFLINE: {order:?}"
    );
    drop(gw);
}
