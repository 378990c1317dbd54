//! Recovery after a broker outage, with the default reconnect settings (`reconnect_min` 1 s,
//! `reconnect_max` 6 s: the first retry after the loss within [0, 5 s], then [¾d, d]).
//!
//! 1. One gateway (IoTDA, two meters polled every 100 ms, nothing tuned): the broker is
//!    stopped for FG_OUTAGE_S seconds (20) and started again, FG_OUTAGE_RUNS times (3). Prints
//!    the seconds from the broker listening again to the first record it acknowledges.
//! 2. A fleet: FG_FLEET gateway processes (200; ThingsBoard, one child each) reach one
//!    mosquitto through a relay that timestamps every connection; the broker is stopped for
//!    FG_FLEET_OUTAGE_S seconds (30). Prints the connection attempts per second during the
//!    outage and the ones the broker took after it returned, the busiest second against a
//!    quarter of the fleet, and the time until every gateway's queue is empty again.
//!
//! Run: `cargo bench --bench outage` (FG_FLEET=0 skips the fleet). Asserts nothing about time.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn delivered(cfg: &Path) -> u64 {
    status(cfg)["queue"]["delivered"].as_u64().unwrap_or(0)
}

fn single(dir: &Path) {
    let outage = env("FG_OUTAGE_S", 20);
    let runs = env("FG_OUTAGE_RUNS", 3);
    let mut broker = Mosquitto::start(dir);
    let _platform = TestPlatform::start(broker.port, "gw_outage");
    let sim = meter_sim();
    let cfg = dir.join("outage.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[gateway]
runtime_dir = "{d}/run"
[platform]
dialect = "iotda"
host = "127.0.0.1"
port = {port}
tls = false
device_id = "gw_outage"
secret = "s"
[store]
path = "{d}/fg.db"
[[bus]]
name = "plant"
driver = "modbus-tcp"
endpoint = "127.0.0.1:{modbus}"
[profile.meter]
product_id = "energy-meter"
[[profile.meter.point]]
property = "counter"
address = "holding:100"
type = "u32"
[[device]]
node_id = "m1"
bus = "plant"
profile = "meter"
unit = 1
poll = "100ms"
[[device]]
node_id = "m2"
bus = "plant"
profile = "meter"
unit = 2
poll = "100ms"
"#,
            d = dir.display(),
            port = broker.port,
            modbus = sim.port
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let _gw = Gateway::start(&cfg);
    wait_until(Duration::from_secs(30), "first deliveries", || {
        delivered(&cfg) > 20
    });
    println!("one gateway, default settings, broker stopped for {outage} s:");
    let mut took = Vec::new();
    for run in 1..=runs {
        broker.stop();
        std::thread::sleep(Duration::from_millis(500));
        let before = delivered(&cfg);
        std::thread::sleep(Duration::from_secs(outage).saturating_sub(Duration::from_millis(500)));
        broker.restart();
        let back = Instant::now();
        wait_until(Duration::from_secs(60), "deliveries again", || {
            delivered(&cfg) > before
        });
        let s = back.elapsed().as_secs_f64();
        println!("  run {run}: data acknowledged again {s:.2} s after the broker returned");
        took.push(s);
        // Let the backlog drain before the next outage.
        std::thread::sleep(Duration::from_secs(3));
    }
    let mean = took.iter().sum::<f64>() / took.len().max(1) as f64;
    let max = took.iter().copied().fold(0.0, f64::max);
    println!("  mean {mean:.2} s, max {max:.2} s");
}

fn fleet_config(dir: &Path, i: usize, port: u16, modbus: u16) -> PathBuf {
    let cfg = dir.join(format!("gw{i}.toml"));
    std::fs::write(
        &cfg,
        format!(
            r#"
[gateway]
runtime_dir = "{d}/run{i}"
[platform]
dialect = "thingsboard"
host = "127.0.0.1"
port = {port}
tls = false
device_id = "fleet-{i}"
secret = "token-{i}"
[store]
path = "{d}/gw{i}.db"
[[bus]]
name = "plant"
driver = "modbus-tcp"
endpoint = "127.0.0.1:{modbus}"
[profile.meter]
[[profile.meter.point]]
property = "counter"
address = "holding:100"
type = "u32"
[[device]]
node_id = "m{i}"
bus = "plant"
profile = "meter"
unit = 1
poll = "1s"
"#,
            d = dir.display(),
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    cfg
}

fn per_second(
    attempts: &[(Instant, bool)],
    from: Instant,
    to: Instant,
    reached: bool,
) -> Vec<usize> {
    let secs = to.saturating_duration_since(from).as_secs() as usize + 1;
    let mut out = vec![0; secs];
    for (t, ok) in attempts {
        if *t >= from && *t < to && *ok == reached {
            out[t.duration_since(from).as_secs() as usize] += 1;
        }
    }
    out
}

fn fleet(dir: &Path) {
    let n = env("FG_FLEET", 200) as usize;
    if n == 0 {
        return;
    }
    let outage = env("FG_FLEET_OUTAGE_S", 30);
    let mut broker = Mosquitto::start(dir);
    let relay = Relay::start(broker.port, Duration::ZERO);
    let sim = meter_sim();
    let cfgs: Vec<PathBuf> = (0..n)
        .map(|i| fleet_config(dir, i, relay.port, sim.port))
        .collect();
    let gws: Vec<Gateway> = cfgs.iter().map(|c| Gateway::start(c)).collect();
    wait_until(
        Duration::from_secs(120),
        "the whole fleet delivering",
        || cfgs.iter().all(|c| delivered(c) > 0),
    );
    broker.stop();
    let down = Instant::now();
    std::thread::sleep(Duration::from_secs(outage));
    broker.restart();
    let back = Instant::now();
    wait_until(Duration::from_secs(300), "every backlog drained", || {
        cfgs.iter().all(|c| {
            let s = status(c);
            s["uplink"]["connected"] == true && s["queue"]["records"].as_u64().unwrap_or(99) <= 2
        })
    });
    let drained = back.elapsed().as_secs_f64();
    let attempts = relay.attempts.lock().map(|a| a.clone()).unwrap_or_default();
    let during = per_second(&attempts, down, back, false);
    let after = per_second(&attempts, back, back + Duration::from_secs(15), true);
    let quarter = n / 4;
    println!("fleet of {n} gateways, broker stopped for {outage} s:");
    println!(
        "  attempts per second while it was down: {:?} (busiest {})",
        during,
        during.iter().max().unwrap_or(&0)
    );
    println!("  connections the broker took per second after it returned: {after:?}");
    println!(
        "  busiest second {} against a quarter of the fleet {quarter}; every backlog drained {drained:.1} s after the broker returned",
        after.iter().max().unwrap_or(&0)
    );
    drop(gws);
}

fn main() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let one = dir.path().join("one");
    let many = dir.path().join("fleet");
    for d in [&one, &many] {
        std::fs::create_dir_all(d).unwrap_or_else(|e| panic!("{e}"));
    }
    single(&one);
    fleet(&many);
}
