//! The ThingsBoard dialect end to end: the `fieldgate` binary, a real mosquitto, a real Modbus
//! server and a test platform speaking ThingsBoard's gateway API. Children are announced with
//! `v1/gateway/connect`, telemetry arrives with ms timestamps, a 3 s broker outage loses
//! nothing and is followed by a connect for every live child, an RPC executes a Modbus write
//! and is answered with its id, a shared-attribute update writes a register, and a
//! `gateway_device_deleted` notification is acknowledged and stops polling that child.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value as Json};

fn on(p: &TestPlatform, topic: &str) -> Vec<Json> {
    p.messages()
        .into_iter()
        .filter(|m| m.topic == topic)
        .map(|m| m.json)
        .collect()
}

fn connects(p: &TestPlatform, dev: &str) -> usize {
    on(p, "v1/gateway/connect")
        .iter()
        .filter(|j| j["device"] == dev)
        .count()
}

/// Every counter value of `dev`, in arrival order.
fn counters(p: &TestPlatform, dev: &str) -> Vec<u64> {
    on(p, "v1/gateway/telemetry")
        .iter()
        .flat_map(|j| j[dev].as_array().cloned().unwrap_or_default())
        .filter_map(|e| e["values"]["counter"].as_u64())
        .collect()
}

#[test]
fn thingsboard_gateway_end_to_end() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut broker = Mosquitto::start(dir.path());
    let p = TestPlatform::start_on(broker.port, "gw-tb", "v1/#");
    let sim = meter_sim();
    let cfg = meter_config(
        dir.path(),
        &format!(
            r#"dialect = "thingsboard"
host = "127.0.0.1"
port = {}
tls = false
# ThingsBoard: device_id is the MQTT client id, the secret is the gateway's access token.
device_id = "gw-tb"
secret = "TB_GATEWAY_TOKEN""#,
            broker.port
        ),
        sim.port,
    );
    let (code, out, err) = fieldgate(&["check", "-c", &cfg.to_string_lossy()]);
    assert_eq!(code, 0, "{out}{err}");
    let mut gw = Gateway::start(&cfg);

    wait_until(
        Duration::from_secs(20),
        "children announced and reporting",
        || {
            connects(&p, "m1") >= 1
                && counters(&p, "m1").len() >= 5
                && counters(&p, "m2").len() >= 5
        },
    );
    let first = &on(&p, "v1/gateway/connect")[0];
    assert_eq!(first["type"], "energy-meter", "{first}");
    let t = on(&p, "v1/gateway/telemetry");
    let ts = t[0]
        .as_object()
        .and_then(|m| m.values().next())
        .map(|l| l[0]["ts"].clone());
    assert!(
        ts.and_then(|t| t.as_u64())
            .is_some_and(|t| t > 1_600_000_000_000),
        "ts in ms: {}",
        t[0]
    );
    assert!(
        !on(&p, "v1/devices/me/telemetry").is_empty(),
        "the gateway's own telemetry"
    );

    // Outage: nothing read meanwhile is lost, and every live child is connected again.
    let before = connects(&p, "m1");
    broker.stop();
    std::thread::sleep(Duration::from_secs(3));
    broker.restart();
    wait_until(
        Duration::from_secs(20),
        "reconnected and announced again",
        || connects(&p, "m1") > before,
    );
    wait_until(Duration::from_secs(20), "the backlog delivered", || {
        let c = counters(&p, "m1");
        c.len() > 40
    });
    // After the reconnect the gateway asks for the writable points' shared attributes; a
    // setpoint changed on the server while it was away (here: answered by the old form, a bare
    // `value` for the one key asked) is written to the device.
    let request = || {
        on(&p, "v1/gateway/attributes/request")
            .into_iter()
            .rev()
            .find(|j| j["device"] == "m1")
    };
    wait_until(Duration::from_secs(10), "the attribute request", || {
        request().is_some()
    });
    let asked = request().unwrap_or_default();
    assert_eq!(
        (asked["key"].clone(), asked["client"].clone()),
        (json!("demand_limit"), json!(false)),
        "{asked}"
    );
    p.send(
        "v1/gateway/attributes/response",
        json!({"id": asked["id"], "device": "m1", "value": 33.5})
            .to_string()
            .as_bytes(),
    );
    wait_until(
        Duration::from_secs(10),
        "the server's setpoint written",
        || {
            sim.state
                .holding
                .lock()
                .ok()
                .and_then(|h| h.get(&(1, 4)).copied())
                == Some(335)
        },
    );
    let mut c = counters(&p, "m1");
    c.sort_unstable();
    c.dedup();
    let gaps: Vec<(u64, u64)> = c
        .windows(2)
        .filter(|w| w[1] != w[0] + 1)
        .map(|w| (w[0], w[1]))
        .collect();
    assert!(gaps.is_empty(), "readings lost across the outage: {gaps:?}");

    // An RPC: a Modbus write, answered on v1/gateway/rpc with the same id.
    p.send(
        "v1/gateway/rpc",
        br#"{"device":"m1","data":{"id":7,"method":"set_limit","params":42.5}}"#,
    );
    wait_until(Duration::from_secs(10), "the RPC answered", || {
        on(&p, "v1/gateway/rpc").iter().any(|j| {
            j["id"] == 7
                && j.get("data").is_some()
                && j["device"] == "m1"
                && j["data"].get("success").is_some()
        })
    });
    let answer = on(&p, "v1/gateway/rpc")
        .into_iter()
        .find(|j| j["id"] == 7 && j["data"].get("success").is_some());
    assert_eq!(
        answer.as_ref().map(|a| a["data"]["success"].clone()),
        Some(json!(true)),
        "{answer:?}"
    );
    let reg = |unit: u8| {
        sim.state
            .holding
            .lock()
            .ok()
            .and_then(|h| h.get(&(unit, 4)).copied())
    };
    assert_eq!(reg(1), Some(425));
    // Out of range: refused, nothing written.
    p.send(
        "v1/gateway/rpc",
        br#"{"device":"m1","data":{"id":8,"method":"set_limit","params":900}}"#,
    );
    wait_until(Duration::from_secs(10), "the refusal", || {
        on(&p, "v1/gateway/rpc")
            .iter()
            .any(|j| j["id"] == 8 && j["data"]["success"] == json!(false))
    });
    assert_eq!(reg(1), Some(425));

    // A shared attribute update writes the point.
    p.send(
        "v1/gateway/attributes",
        br#"{"device":"m2","data":{"demand_limit":12.5}}"#,
    );
    wait_until(Duration::from_secs(10), "the attribute written", || {
        reg(2) == Some(125)
    });

    // The admin deletes m2: acknowledged, and m2 is no longer polled.
    p.send(
        "v1/devices/me/rpc/request/31",
        br#"{"method":"gateway_device_deleted","params":"m2"}"#,
    );
    wait_until(Duration::from_secs(10), "the deletion acknowledged", || {
        !on(&p, "v1/devices/me/rpc/response/31").is_empty()
    });
    std::thread::sleep(Duration::from_millis(500));
    let n = counters(&p, "m2").len();
    std::thread::sleep(Duration::from_millis(800));
    assert!(
        counters(&p, "m2").len() <= n + 1,
        "m2 still polled after its deletion"
    );
    assert!(counters(&p, "m1").len() > 40);
    // Our answers echo back to us on v1/gateway/rpc: they must not be taken for requests.
    assert_eq!(
        gw.count(&["malformed platform message"]),
        0,
        "{:?}",
        gw.log()
    );
    assert_eq!(
        on(&p, "v1/gateway/rpc").len(),
        2 + 2,
        "two requests, two answers, no loop"
    );
    assert_eq!(gw.terminate(), Some(0));
    // The token is the MQTT username: it must never reach the log.
    assert_eq!(gw.count(&["TB_GATEWAY_TOKEN"]), 0);
}
