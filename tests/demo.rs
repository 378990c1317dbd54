//! `fieldgate demo` as a process: with nothing but the binary, children are added, go ONLINE,
//! values are reported, a property set sent to its embedded broker is executed and answered,
//! and `--for` stops it cleanly with exit code 0.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{Client, MqttOptions, QoS};

fn wait_for(lines: &Mutex<Vec<String>>, what: &str, timeout: Duration) -> String {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if let Some(l) = lines
            .lock()
            .ok()
            .and_then(|l| l.iter().find(|l| l.contains(what)).cloned())
        {
            return l;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "demo never printed {what:?}:\n{}",
        lines.lock().map(|l| l.join("\n")).unwrap_or_default()
    );
}

#[test]
fn demo_runs_with_nothing_installed_and_answers_a_command() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_fieldgate"))
        .args(["demo", "--for", "6s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let lines = Arc::new(Mutex::new(Vec::new()));
    let (sink, out) = (lines.clone(), child.stdout.take());
    std::thread::spawn(move || {
        let Some(out) = out else { return };
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Ok(mut l) = sink.lock() {
                l.push(line);
            }
        }
    });

    let t = Duration::from_secs(10);
    let broker = wait_for(&lines, "broker   127.0.0.1:", t);
    let port: u16 = broker
        .rsplit(':')
        .next()
        .and_then(|p| p.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    assert!(port > 0, "{broker}");
    wait_for(
        &lines,
        "platform assigns demo_meter_meter-1, demo_meter_meter-2, demo_room_room-1",
        t,
    );
    wait_for(&lines, "status   demo_meter_meter-1 ONLINE", t);
    let report = wait_for(&lines, "report   demo_meter_meter-1 energy:", t);
    assert!(
        report.contains("voltage=") && report.contains("current=") && report.contains("energy="),
        "{report}"
    );
    wait_for(&lines, "report   demo_room_room-1 climate:", t);

    // A platform command through the demo's own broker reaches the simulated meter.
    let (client, mut conn) = Client::new(MqttOptions::new("demo-test", "127.0.0.1", port), 10);
    client
        .publish(
            "$oc/devices/demo-gw/sys/properties/set/request_id=t1",
            QoS::AtLeastOnce,
            false,
            r#"{"object_device_id":"demo_meter_meter-1","services":[{"service_id":"control","properties":{"demand_limit":42.5}}]}"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    client
        .publish(
            "$oc/devices/demo-gw/sys/properties/get/request_id=t2",
            QoS::AtLeastOnce,
            false,
            r#"{"object_device_id":"demo_meter_meter-1","service_id":"control"}"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    for ev in conn.iter().take(6) {
        if ev.is_err() {
            break;
        }
    }
    let resp = wait_for(&lines, "response properties/set/response/request_id=t1", t);
    assert!(resp.contains(r#""result_code":0"#), "{resp}");
    // Read back from the simulated device: the register now holds the written value.
    let got = wait_for(&lines, "response properties/get/response/request_id=t2", t);
    assert!(got.contains(r#""demand_limit":42.5"#), "{got}");

    let status = child.wait().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(status.code(), Some(0));
    wait_for(&lines, "demo stopped", Duration::from_secs(2));
}
