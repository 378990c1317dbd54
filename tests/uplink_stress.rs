//! The session under pressure, through the binary, mosquitto and a Modbus server:
//! - a burst of 3,000 platform requests: the session stays up, every request is answered (a
//!   result or "busy"), and the device sees exactly the writes answered as done;
//! - a request whose id would make an answer topic no broker accepts is refused unanswered,
//!   and the session stays up;
//! - a profile whose full report is larger than `max_packet`: `check` warns, every report is
//!   split by property across messages, and every property arrives.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn a_burst_of_requests_is_answered_and_the_session_stays_up() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let d = dir.path();
    let broker = Mosquitto::start(d);
    let platform = TestPlatform::start(broker.port, "gw_burst");
    let sim = meter_sim();
    let cfg = meter_config(
        d,
        &format!(
            "dialect = \"iotda\"\nhost = \"127.0.0.1\"\nport = {}\ntls = false\ndevice_id = \"gw_burst\"\nsecret = \"s\"",
            broker.port
        ),
        sim.port,
    );
    let mut gw = Gateway::start(&cfg);
    wait_until(Duration::from_secs(20), "first readings", || {
        platform.reports().len() >= 4
    });

    // An id that fills the request topic to MQTT's limit: its answer topic would be longer.
    let prefix = platform.topic("properties/set/request_id=");
    let long = "x".repeat(65_535 - prefix.len());
    platform.send(
        &format!("{prefix}{long}"),
        br#"{"object_device_id":"energy-meter_m1","services":[{"service_id":"energy","properties":{"demand_limit":1.0}}]}"#,
    );

    const N: usize = 3000;
    let t = Instant::now();
    for i in 0..N {
        let node = if i % 2 == 0 { "m1" } else { "m2" };
        let v = (i % 500) as f64 / 2.0;
        let body = format!(
            r#"{{"object_device_id":"energy-meter_{node}","services":[{{"service_id":"energy","properties":{{"demand_limit":{v}}}}}]}}"#
        );
        platform.send(
            &platform.topic(&format!("properties/set/request_id=b{i}")),
            body.as_bytes(),
        );
    }
    let sent_in = t.elapsed();
    let answers = || -> HashMap<String, i64> {
        platform
            .messages()
            .into_iter()
            .filter_map(|m| {
                let rid = m
                    .topic
                    .split("properties/set/response/request_id=")
                    .nth(1)?;
                Some((
                    rid.to_string(),
                    m.json["result_code"].as_i64().unwrap_or(-1),
                ))
            })
            .collect()
    };
    wait_until(Duration::from_secs(60), "every request answered", || {
        let a = answers();
        (0..N).all(|i| a.contains_key(&format!("b{i}")))
    });
    let a = answers();
    let done = (0..N)
        .filter(|i| a.get(&format!("b{i}")) == Some(&0))
        .count();
    let busy = N - done;
    println!("{N} requests sent in {sent_in:?}: {done} done, {busy} refused (busy)");
    std::thread::sleep(Duration::from_millis(500));
    let writes = sim
        .state
        .writes
        .lock()
        .map(|w| w.iter().filter(|(_, addr)| *addr == 4).count())
        .unwrap_or(0);
    assert_eq!(
        writes, done,
        "the device saw exactly the writes answered as done"
    );
    assert!(done > 0, "some writes went through");
    assert!(
        !a.keys().any(|k| k.len() > 1000),
        "the oversize id was never echoed"
    );
    let s = status(&cfg);
    assert_eq!(s["uplink"]["connects"], 1, "the session stayed up: {s}");
    assert_eq!(gw.count(&["platform connection lost"]), 0);
    assert!(s["inbound_rejected"].as_u64().unwrap_or(0) >= 1, "{s}");
    // Readings still flow afterwards.
    let n = platform.reports().len();
    wait_until(Duration::from_secs(10), "readings continue", || {
        platform.reports().len() > n + 4
    });
    assert_eq!(gw.terminate(), Some(0));
}

#[test]
fn a_report_larger_than_max_packet_is_split_by_property() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let d = dir.path();
    let broker = Mosquitto::start(d);
    let platform = TestPlatform::start(broker.port, "gw_big");
    let sim = ModbusSim::new(SimState::default());
    let mut points = String::new();
    for i in 0..120 {
        points += &format!(
            "[[profile.wide.point]]\nproperty = \"point_with_a_long_name_{i:03}\"\naddress = \"holding:{i}\"\n"
        );
    }
    let cfg = write_config(
        d,
        "big.toml",
        &format!(
            "dialect = \"iotda\"\nhost = \"127.0.0.1\"\nport = {}\ntls = false\ndevice_id = \"gw_big\"\nsecret = \"s\"\nmax_packet = 4096",
            broker.port
        ),
        &format!(
            r#"[[bus]]
name = "a"
driver = "modbus-tcp"
endpoint = "127.0.0.1:{modbus}"

[profile.wide]
product_id = "wide"
{points}
[[device]]
node_id = "w1"
bus = "a"
profile = "wide"
poll = "200ms"
"#,
            modbus = sim.port,
        ),
    );
    let (code, _, err) = fieldgate(&["check", "-c", &cfg.to_string_lossy()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("warning") && err.contains("split"),
        "check warns: {err}"
    );
    let mut gw = Gateway::start(&cfg);
    wait_until(Duration::from_secs(20), "several full readings", || {
        let names: std::collections::BTreeSet<String> = platform
            .reports()
            .iter()
            .flat_map(|(_, s)| {
                s["properties"]
                    .as_object()
                    .map(|m| m.keys().cloned().collect::<Vec<_>>())
                    .unwrap_or_default()
            })
            .collect();
        names.len() == 120 && platform.reports().len() >= 6
    });
    for m in platform.raw() {
        assert!(m.1.len() < 4096, "every message fits: {} bytes", m.1.len());
    }
    let s = status(&cfg);
    assert_eq!(s["queue"]["dropped"]["unsendable"], 0, "{s}");
    assert_eq!(s["uplink"]["connects"], 1, "{s}");
    assert_eq!(gw.terminate(), Some(0));
}

/// An exec program reports 30,000 properties in one line (larger than `max_packet`), then a
/// property named `temp/#+` (refused by the protocol), then ordinary readings: the big report
/// arrives split by property, the bad name is skipped and counted, and the readings behind
/// both flow.
#[test]
fn an_oversize_exec_report_and_a_bad_name_do_not_block_the_queue() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let d = dir.path();
    let script = d.join("flood.py");
    std::fs::write(
        &script,
        r#"import json, sys, time
start = json.loads(sys.stdin.readline())
def send(m):
    sys.stdout.write(json.dumps(m) + "\n"); sys.stdout.flush()
send({"type": "status", "child": "big", "online": True})
send({"type": "report", "child": "big", "properties": {f"p{i:05}": i for i in range(30000)}})
send({"type": "report", "child": "big", "properties": {"temp/#+": 1.0}})
n = 0
while True:
    n += 1
    send({"type": "report", "child": "big", "properties": {"n": n}})
    time.sleep(0.1)
"#,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let broker = Mosquitto::start(d);
    let platform = TestPlatform::start(broker.port, "gw_flood");
    let cfg = write_config(
        d,
        "flood.toml",
        &format!(
            "dialect = \"iotda\"\nhost = \"127.0.0.1\"\nport = {}\ntls = false\ndevice_id = \"gw_flood\"\nsecret = \"s\"",
            broker.port
        ),
        &format!(
            r#"[[bus]]
name = "x"
driver = "exec"
command = ["python3", "{script}"]
max_line = 1048576
max_properties = 30001

[profile.flood]
kind = "exec"
product_id = "flood"

[[device]]
node_id = "big"
bus = "x"
profile = "flood"
"#,
            script = script.display(),
        ),
    );
    let gw = Gateway::start(&cfg);
    let names = || -> std::collections::BTreeSet<String> {
        platform
            .reports()
            .iter()
            .flat_map(|(_, s)| {
                s["properties"]
                    .as_object()
                    .map(|m| m.keys().cloned().collect::<Vec<_>>())
                    .unwrap_or_default()
            })
            .collect()
    };
    wait_until(
        Duration::from_secs(60),
        "the big report and readings after it",
        || {
            let n = names();
            n.iter().filter(|k| k.starts_with('p')).count() == 30_000 && n.contains("n")
        },
    );
    let big_messages = platform
        .raw()
        .iter()
        .filter(|(t, b)| t.ends_with("/properties/report") && b.len() > 100_000)
        .count();
    assert!(big_messages >= 2, "split across {big_messages} messages");
    assert!(
        !names().contains("temp/#+"),
        "the bad name never reaches a topic or payload"
    );
    let s = status(&cfg);
    assert_eq!(s["uplink"]["connects"], 1, "{s}");
    assert_eq!(s["queue"]["dropped"]["unsendable"], 0, "{s}");
    wait_until(Duration::from_secs(10), "the refused line counted", || {
        status(&cfg)["buses"][0]["skipped"]["bad_lines"].as_u64() == Some(1)
    });
    assert!(
        gw.count(&["temp/#+"]) >= 1,
        "the refusal names the property"
    );
    drop(gw);
}

/// An exec program as a bad neighbour: thousands of `log` and stderr lines (one forging a log
/// line with `\n`), and 3,000 invented property names. The daemon logs at most 20 of its lines
/// a minute (plus one saying the rest are suppressed), escapes control characters, keeps
/// `max_properties` names per child (the rest dropped and counted), and the readings flow.
#[test]
fn a_flooding_driver_program_is_bounded() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let d = dir.path();
    let script = d.join("noisy.py");
    std::fs::write(
        &script,
        r#"import json, sys, time
start = json.loads(sys.stdin.readline())
def send(m):
    sys.stdout.write(json.dumps(m) + "\n")
send({"type": "status", "child": "c", "online": True})
send({"type": "report", "child": "c", "properties": {"n": 0}})
send({"type": "log", "level": "error", "message": "x\nFORGED ERROR fieldgate: all good"})
for i in range(5000):
    send({"type": "log", "level": "error", "message": f"spam {i}"})
    sys.stderr.write(f"stderr spam {i}\n")
for i in range(3000):
    send({"type": "report", "child": "c", "properties": {f"p{i}": i}})
sys.stdout.flush(); sys.stderr.flush()
n = 0
while True:
    n += 1
    send({"type": "report", "child": "c", "properties": {"n": n}})
    sys.stdout.flush()
    time.sleep(0.1)
"#,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let broker = Mosquitto::start(d);
    let platform = TestPlatform::start(broker.port, "gw_noisy");
    let cfg = write_config(
        d,
        "noisy.toml",
        &format!(
            "dialect = \"iotda\"\nhost = \"127.0.0.1\"\nport = {}\ntls = false\ndevice_id = \"gw_noisy\"\nsecret = \"s\"",
            broker.port
        ),
        &format!(
            r#"[[bus]]
name = "x"
driver = "exec"
command = ["python3", "{script}"]
max_properties = 100

[profile.noisy]
kind = "exec"
product_id = "noisy"

[[device]]
node_id = "c"
bus = "x"
profile = "noisy"
"#,
            script = script.display(),
        ),
    );
    let gw = Gateway::start(&cfg);
    let last_n = || {
        platform
            .reports()
            .iter()
            .filter_map(|(_, s)| s["properties"]["n"].as_u64())
            .max()
            .unwrap_or(0)
    };
    wait_until(Duration::from_secs(30), "readings after the flood", || {
        last_n() >= 5
    });
    let names: std::collections::BTreeSet<String> = platform
        .reports()
        .iter()
        .flat_map(|(_, s)| {
            s["properties"]
                .as_object()
                .map(|m| m.keys().cloned().collect::<Vec<_>>())
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(
        names.iter().filter(|k| k.starts_with('p')).count(),
        99,
        "max_properties = 100, `n` included"
    );
    let log = gw.log();
    let from_program = log.iter().filter(|l| l.contains("driver program")).count();
    assert!(
        (20..=23).contains(&from_program),
        "{from_program} lines from the program: {:?}",
        &log[..log.len().min(40)]
    );
    assert!(
        !log.iter().any(|l| l.starts_with("FORGED")),
        "a line break in a message never starts a log line"
    );
    assert!(log.iter().any(|l| l.contains(r"x\nFORGED")), "escaped");
    let s = status(&cfg);
    assert!(s.to_string().len() < 64 * 1024, "status stays small");
    assert!(
        s["buses"][0]["skipped"]["bad_lines"].as_u64().unwrap_or(0) >= 1,
        "{s}"
    );
    drop(gw);
}
