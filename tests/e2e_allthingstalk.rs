//! The AllThingsTalk dialect end to end: the `fieldgate` binary, a real mosquitto, a real
//! Modbus server and a test platform on the seed's `client/{account}/…/gateway/{gw}/…` topics.
//! Asset states arrive as `epoch|value`, a 3 s broker outage loses nothing (the command
//! subscription is renewed), and an asset command writes the register and is confirmed by the
//! new state.

mod common;

use std::time::Duration;

use common::*;

const OUT: &str = "client/acc1/out/gateway/gw-att";
const IN: &str = "client/acc1/in/gateway/gw-att";

fn states(p: &TestPlatform, dev: &str, asset: &str) -> Vec<String> {
    let topic = format!("{OUT}/device/{dev}/asset/{asset}/state");
    p.raw()
        .into_iter()
        .filter(|(t, _)| *t == topic)
        .map(|(_, b)| String::from_utf8_lossy(&b).to_string())
        .collect()
}

fn counters(p: &TestPlatform, dev: &str) -> Vec<u64> {
    states(p, dev, "counter")
        .iter()
        .filter_map(|s| s.split_once('|').and_then(|(_, v)| v.parse().ok()))
        .collect()
}

#[test]
fn allthingstalk_end_to_end() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut broker = Mosquitto::start(dir.path());
    let p = TestPlatform::start_on(broker.port, "gw-att", "client/acc1/out/#");
    let sim = meter_sim();
    let cfg = meter_config(
        dir.path(),
        &format!(
            "dialect = \"allthingstalk\"\nhost = \"127.0.0.1\"\nport = {}\ntls = false\ndevice_id = \"gw-att\"\naccount = \"acc1\"\nsecret = \"client-key\"",
            broker.port
        ),
        sim.port,
    );
    let mut gw = Gateway::start(&cfg);
    wait_until(
        Duration::from_secs(20),
        "asset states from both children",
        || counters(&p, "m1").len() >= 5 && counters(&p, "m2").len() >= 5,
    );
    let s = &states(&p, "m1", "counter")[0];
    let epoch: u64 = s
        .split_once('|')
        .and_then(|(e, _)| e.parse().ok())
        .unwrap_or(0);
    assert!(
        epoch > 1_600_000_000 && epoch < 10_000_000_000,
        "epoch seconds: {s}"
    );
    wait_until(Duration::from_secs(10), "the gateway's own assets", || {
        p.raw()
            .iter()
            .any(|(t, _)| *t == format!("{OUT}/asset/uptime_s/state"))
    });

    broker.stop();
    std::thread::sleep(Duration::from_secs(3));
    broker.restart();
    let n = counters(&p, "m1").len();
    wait_until(Duration::from_secs(20), "the backlog", || {
        counters(&p, "m1").len() > n + 30
    });
    let mut c = counters(&p, "m1");
    c.sort_unstable();
    c.dedup();
    assert!(
        c.windows(2).all(|w| w[1] == w[0] + 1),
        "readings lost across the outage"
    );

    // A command after the reconnect: the subscription was renewed.
    p.send(
        &format!("{IN}/device/m1/asset/demand_limit/command"),
        b"42.5",
    );
    wait_until(Duration::from_secs(10), "the register written", || {
        sim.state
            .holding
            .lock()
            .ok()
            .and_then(|h| h.get(&(1, 4)).copied())
            == Some(425)
    });
    wait_until(Duration::from_secs(10), "the confirming state", || {
        states(&p, "m1", "demand_limit")
            .iter()
            .any(|s| s.ends_with("|42.5"))
    });
    p.send(
        &format!("{IN}/device/m1/asset/demand_limit/command"),
        b"9999",
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        sim.state
            .holding
            .lock()
            .ok()
            .and_then(|h| h.get(&(1, 4)).copied()),
        Some(425),
        "out of range not written"
    );
    assert_eq!(gw.terminate(), Some(0));
    assert_eq!(
        gw.count(&["client-key"]),
        0,
        "the client key is never logged"
    );
}
