//! Pacing and backpressure, through the binary and mosquitto, with Sparkplug (one DDATA per
//! reading, so messages and readings count alike):
//! - replay pacing applies to the backlog queued before a connection, not to live data: with
//!   `replay_rate = 5` two meters polled every 100 ms still deliver ~20 readings/s once the
//!   backlog is out;
//! - when delivery is slower than collection (a 600 ms link, one publish in flight), the queue
//!   grows, `fieldgate status` says `falling_behind`, and one log line says so — not one per
//!   sample.

mod common;

use std::time::{Duration, Instant};

use common::*;
use fieldgate::uplink::dialect::sparkplug::{MetricValue, Payload};
use prost::Message;

fn ddata(p: &TestPlatform) -> usize {
    p.raw()
        .into_iter()
        .filter(|(t, _)| t.starts_with("spBv1.0/Plant1/DDATA/"))
        .filter(|(_, b)| {
            Payload::decode(b.as_slice()).is_ok_and(|p| {
                p.metrics.iter().any(|m| {
                    m.name.as_deref() == Some("counter")
                        && matches!(m.value, Some(MetricValue::Long(_)))
                })
            })
        })
        .count()
}

#[test]
fn live_data_is_not_paced() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let broker = Mosquitto::start(dir.path());
    let p = TestPlatform::start_on(broker.port, "host", "spBv1.0/#");
    let sim = meter_sim();
    let cfg = meter_config(
        dir.path(),
        &format!(
            "dialect = \"sparkplug\"\nhost = \"127.0.0.1\"\nport = {}\ntls = false\ndevice_id = \"gw1\"\ngroup_id = \"Plant1\"\nsecret = \"pw\"\nreplay_rate = 5",
            broker.port
        ),
        sim.port,
    );
    let _gw = Gateway::start(&cfg);
    wait_until(Duration::from_secs(20), "data flowing", || ddata(&p) >= 10);
    // Whatever was queued before the CONNACK is out by now; measure the live rate.
    std::thread::sleep(Duration::from_secs(2));
    let (n0, t0) = (ddata(&p), Instant::now());
    std::thread::sleep(Duration::from_secs(5));
    let rate = (ddata(&p) - n0) as f64 / t0.elapsed().as_secs_f64();
    println!("live DDATA at replay_rate = 5: {rate:.1}/s (two meters every 100 ms)");
    assert!(
        rate > 12.0,
        "live data flows at the collection rate, not the replay rate: {rate:.1}/s"
    );
    let s = status(&cfg);
    assert_eq!(s["queue"]["falling_behind"], false, "{s}");
    // A healthy store never held the drivers back; its slowest commit is shown.
    assert_eq!(s["queue"]["drivers_waited"], 0, "{s}");
    assert!(s["queue"]["slowest_commit_ms"].is_u64(), "{s}");
}

#[test]
fn falling_behind_is_said_once() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let broker = Mosquitto::start(dir.path());
    let relay = Relay::start(broker.port, Duration::from_millis(300));
    let _p = TestPlatform::start_on(broker.port, "host", "spBv1.0/#");
    let sim = meter_sim();
    let cfg = meter_config(
        dir.path(),
        &format!(
            "dialect = \"sparkplug\"\nhost = \"127.0.0.1\"\nport = {}\ntls = false\ndevice_id = \"gw1\"\ngroup_id = \"Plant1\"\nsecret = \"pw\"\ninflight = 1",
            relay.port
        ),
        sim.port,
    );
    let gw = Gateway::start(&cfg);
    wait_until(Duration::from_secs(40), "falling behind reported", || {
        status(&cfg)["queue"]["falling_behind"] == true
    });
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(
        gw.count(&["delivery is slower than collection"]),
        1,
        "one line per episode"
    );
    let s = status(&cfg);
    assert_eq!(s["uplink"]["connects"], 1, "the session stays up: {s}");
    assert!(s["queue"]["records"].as_u64().unwrap_or(0) > 100, "{s}");
}
