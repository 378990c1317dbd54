//! The OceanConnect legacy dialect end to end: the `fieldgate` binary, a real mosquitto, a real
//! Modbus server and a test platform on `/huawei/v1/devices/{id}/…`. Readings arrive as
//! `deviceReq` service data (with each child's id), a 3 s broker outage loses nothing and is
//! followed by the children's `$status` replay, and a `cloudReq` command executes a Modbus
//! write and is answered with `deviceRsp` carrying its `mid`.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value as Json};

const DATA: &str = "/huawei/v1/devices/gw_oc/data/json";
const COMMAND: &str = "/huawei/v1/devices/gw_oc/command/json";

fn device_reqs(p: &TestPlatform) -> Vec<Json> {
    p.messages()
        .into_iter()
        .filter(|m| m.topic == DATA && m.json["msgType"] == "deviceReq")
        .flat_map(|m| m.json["data"].as_array().cloned().unwrap_or_default())
        .collect()
}

fn counters(p: &TestPlatform, dev: &str) -> Vec<u64> {
    device_reqs(p)
        .iter()
        .filter(|e| e["deviceId"] == dev && e["serviceId"] == "energy")
        .filter_map(|e| e["serviceData"]["counter"].as_u64())
        .collect()
}

fn statuses(p: &TestPlatform, dev: &str) -> usize {
    device_reqs(p)
        .iter()
        .filter(|e| {
            e["deviceId"] == dev
                && e["serviceId"] == "$status"
                && e["serviceData"]["online"] == json!(true)
        })
        .count()
}

fn rsp(p: &TestPlatform, mid: u64) -> Option<Json> {
    p.messages()
        .into_iter()
        .find(|m| m.topic == DATA && m.json["msgType"] == "deviceRsp" && m.json["mid"] == mid)
        .map(|m| m.json)
}

#[test]
fn oceanconnect_end_to_end() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut broker = Mosquitto::start(dir.path());
    let p = TestPlatform::start_on(broker.port, "gw_oc", "/huawei/v1/devices/gw_oc/#");
    let sim = meter_sim();
    let cfg = meter_config(
        dir.path(),
        &format!(
            "dialect = \"oceanconnect\"\nhost = \"127.0.0.1\"\nport = {}\ntls = false\ndevice_id = \"gw_oc\"\nsecret = \"s\"",
            broker.port
        ),
        sim.port,
    );
    let mut gw = Gateway::start(&cfg);
    wait_until(
        Duration::from_secs(20),
        "service data from both children",
        || counters(&p, "m1").len() >= 5 && counters(&p, "m2").len() >= 5,
    );
    let e = device_reqs(&p)
        .into_iter()
        .find(|e| e["deviceId"] == "m1")
        .unwrap_or_default();
    assert!(
        e["eventTime"]
            .as_str()
            .is_some_and(|t| t.len() == 16 && t.ends_with('Z')),
        "{e}"
    );
    assert!(statuses(&p, "m1") >= 1, "ONLINE reported");

    let before = statuses(&p, "m1");
    broker.stop();
    std::thread::sleep(Duration::from_secs(3));
    broker.restart();
    wait_until(
        Duration::from_secs(20),
        "statuses replayed after the reconnect",
        || statuses(&p, "m1") > before,
    );
    wait_until(Duration::from_secs(20), "the backlog", || {
        counters(&p, "m1").len() > 40
    });
    let mut c = counters(&p, "m1");
    c.sort_unstable();
    c.dedup();
    assert!(
        c.windows(2).all(|w| w[1] == w[0] + 1),
        "readings lost across the outage"
    );

    p.send(COMMAND, br#"{"msgType":"cloudReq","serviceId":"energy","mid":2016,"cmd":"set_limit","paras":{"value":42.5},"deviceId":"m1"}"#);
    wait_until(Duration::from_secs(10), "deviceRsp", || {
        rsp(&p, 2016).is_some()
    });
    let r = rsp(&p, 2016).unwrap_or_default();
    assert_eq!(r["errcode"], json!(0), "{r}");
    assert_eq!(r["body"]["demand_limit"], json!(42.5), "{r}");
    assert_eq!(
        sim.state
            .holding
            .lock()
            .ok()
            .and_then(|h| h.get(&(1, 4)).copied()),
        Some(425)
    );
    p.send(COMMAND, br#"{"msgType":"cloudReq","serviceId":"energy","mid":2017,"cmd":"set_limit","paras":{"value":9999},"deviceId":"m1"}"#);
    wait_until(Duration::from_secs(10), "refusal", || {
        rsp(&p, 2017).is_some()
    });
    assert_ne!(rsp(&p, 2017).unwrap_or_default()["errcode"], json!(0));
    assert_eq!(
        sim.state
            .holding
            .lock()
            .ok()
            .and_then(|h| h.get(&(1, 4)).copied()),
        Some(425)
    );
    assert_eq!(gw.terminate(), Some(0));
}
