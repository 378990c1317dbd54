//! 1,000 children on one gateway, for every dialect: five Modbus TCP servers (one per bus, 200
//! units each) with a 10-point profile polled every 5 s. Every child is added or announced and
//! reports; the broker is stopped for 30 s; after it returns every reading is delivered (each
//! child's counter values are contiguous from its first reading to its last, first deliveries
//! in order) with exactly one reconnect. Replay is paced at 5,000 messages/s (AllThingsTalk
//! sends one message per property: 60,000 for the backlog). The old session dropped itself whenever its request
//! channel filled, which hundreds of children's births, statuses or per-asset publishes did.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use fieldgate::uplink::dialect::sparkplug::{MetricValue, Payload};
use prost::Message;

const BUSES: usize = 5;
const UNITS: u8 = 200;
const OUTAGE: Duration = Duration::from_secs(30);

fn children() -> Vec<String> {
    (0..BUSES)
        .flat_map(|b| (1..=UNITS).map(move |u| format!("c{b}u{u}")))
        .collect()
}

fn config(dir: &Path, platform: &str, sims: &[ModbusSim]) -> PathBuf {
    let mut text = format!(
        "[gateway]\nruntime_dir = \"{d}/run\"\n[platform]\n{platform}\nreconnect_min = \"500ms\"\nreplay_rate = 5000\n[store]\npath = \"{d}/fg.db\"\n",
        d = dir.display()
    );
    for (b, sim) in sims.iter().enumerate() {
        text += &format!(
            "[[bus]]\nname = \"b{b}\"\ndriver = \"modbus-tcp\"\nendpoint = \"127.0.0.1:{}\"\n",
            sim.port
        );
    }
    text += "[profile.meter10]\nproduct_id = \"meter10\"\nservice = \"energy\"\n[[profile.meter10.point]]\nproperty = \"counter\"\naddress = \"holding:100\"\ntype = \"u32\"\n";
    for p in 1..10 {
        text += &format!(
            "[[profile.meter10.point]]\nproperty = \"p{p}\"\naddress = \"holding:{}\"\n",
            101 + p
        );
    }
    for b in 0..BUSES {
        for u in 1..=UNITS {
            text += &format!(
                "[[device]]\nnode_id = \"c{b}u{u}\"\nbus = \"b{b}\"\nprofile = \"meter10\"\nunit = {u}\npoll = \"5s\"\n"
            );
        }
    }
    let path = dir.join("scale.toml");
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
    path
}

type Counters = HashMap<String, Vec<u64>>;

fn iotda(p: &TestPlatform) -> Counters {
    let mut out = Counters::new();
    for (dev, svc) in p.reports() {
        if let (Some(child), Some(c)) = (
            dev.strip_prefix("meter10_"),
            svc["properties"]["counter"].as_u64(),
        ) {
            out.entry(child.to_string()).or_default().push(c);
        }
    }
    out
}

fn thingsboard(p: &TestPlatform) -> Counters {
    let mut out = Counters::new();
    for m in p.messages() {
        if m.topic != "v1/gateway/telemetry" {
            continue;
        }
        for (dev, list) in m.json.as_object().into_iter().flatten() {
            for e in list.as_array().into_iter().flatten() {
                if let Some(c) = e["values"]["counter"].as_u64() {
                    out.entry(dev.clone()).or_default().push(c);
                }
            }
        }
    }
    out
}

/// A Sparkplug host orders by metric timestamp: after a reconnect the DBIRTH carries the
/// newest reading and the backlog follows as `is_historical` DDATA, older than the birth.
fn sparkplug(p: &TestPlatform) -> Counters {
    let mut timed: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
    for (t, b) in p.raw() {
        let parts: Vec<&str> = t.split('/').collect();
        if parts.len() != 5 || !(parts[2] == "DDATA" || parts[2] == "DBIRTH") {
            continue;
        }
        let Ok(payload) = Payload::decode(b.as_slice()) else {
            continue;
        };
        for m in payload.metrics {
            if m.name.as_deref() == Some("counter") {
                if let Some(MetricValue::Long(c)) = m.value {
                    timed
                        .entry(parts[4].to_string())
                        .or_default()
                        .push((m.timestamp.unwrap_or(0), c));
                }
            }
        }
    }
    timed
        .into_iter()
        .map(|(child, mut v)| {
            v.sort_by_key(|(ts, _)| *ts);
            (child, v.into_iter().map(|(_, c)| c).collect())
        })
        .collect()
}

fn allthingstalk(p: &TestPlatform) -> Counters {
    let mut out = Counters::new();
    for (t, b) in p.raw() {
        let Some(rest) = t.strip_prefix("client/acc1/out/gateway/gw-scale/device/") else {
            continue;
        };
        let Some(dev) = rest.strip_suffix("/asset/counter/state") else {
            continue;
        };
        let s = String::from_utf8_lossy(&b);
        if let Some(c) = s.split_once('|').and_then(|(_, v)| v.parse().ok()) {
            out.entry(dev.to_string()).or_default().push(c);
        }
    }
    out
}

fn oceanconnect(p: &TestPlatform) -> Counters {
    let mut out = Counters::new();
    for m in p.messages() {
        if m.json["msgType"] != "deviceReq" {
            continue;
        }
        for e in m.json["data"].as_array().into_iter().flatten() {
            if let (Some(dev), Some(c)) =
                (e["deviceId"].as_str(), e["serviceData"]["counter"].as_u64())
            {
                out.entry(dev.to_string()).or_default().push(c);
            }
        }
    }
    out
}

/// Every child's values contiguous from 1 to its last (nothing lost), first deliveries in
/// order (repeats after a reconnect are allowed: at-least-once).
fn complete_and_ordered(all: &Counters) -> Result<(), String> {
    for child in children() {
        let Some(v) = all.get(&child) else {
            return Err(format!("{child}: nothing delivered"));
        };
        let mut seen = BTreeSet::new();
        let mut last = 0;
        for &c in v {
            if seen.insert(c) {
                if c <= last {
                    return Err(format!("{child}: {c} delivered after {last}"));
                }
                last = c;
            }
        }
        let max = *seen.iter().next_back().unwrap_or(&0);
        if seen.len() as u64 != max || seen.iter().next() != Some(&1) {
            let missing: Vec<u64> = (1..=max).filter(|c| !seen.contains(c)).take(10).collect();
            return Err(format!("{child}: missing {missing:?} of 1..={max}"));
        }
    }
    Ok(())
}

fn wait(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    panic!("timed out after {timeout:?} waiting for: {what}");
}

fn scale(platform: &str, filter: &str, gw_id: &str, counters: fn(&TestPlatform) -> Counters) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let d = dir.path();
    let mut broker = Mosquitto::start(d);
    let p = if filter.is_empty() {
        TestPlatform::start(broker.port, gw_id)
    } else {
        TestPlatform::start_on(broker.port, gw_id, filter)
    };
    let sims: Vec<ModbusSim> = (0..BUSES)
        .map(|_| {
            ModbusSim::new(SimState {
                counter_at: Some(100),
                ..Default::default()
            })
        })
        .collect();
    let cfg = config(
        d,
        &format!(
            "{platform}\nhost = \"127.0.0.1\"\nport = {}\ntls = false",
            broker.port
        ),
        &sims,
    );
    let (code, out, err) = fieldgate(&["check", "-c", &cfg.to_string_lossy()]);
    assert_eq!(code, 0, "{out}{err}");
    let gw = Gateway::start(&cfg);
    wait(Duration::from_secs(90), "every child reporting", || {
        let c = counters(&p);
        children()
            .iter()
            .all(|ch| c.get(ch).is_some_and(|v| v.len() >= 2))
    });
    broker.stop();
    std::thread::sleep(OUTAGE);
    broker.restart();
    let back = Instant::now();
    // Every reading taken up to the restart is delivered, and the queue is back to live data.
    let taken: Vec<HashMap<u8, u32>> = sims
        .iter()
        .map(|s| {
            s.state
                .counters
                .lock()
                .map(|c| c.clone())
                .unwrap_or_default()
        })
        .collect();
    wait(Duration::from_secs(120), "the backlog delivered", || {
        let c = counters(&p);
        children().iter().all(|ch| {
            let (b, u) = ch[1..].split_once('u').unwrap_or(("0", "0"));
            let b: usize = b.parse().unwrap_or(0);
            let u: u8 = u.parse().unwrap_or(0);
            let want = u64::from(taken[b].get(&u).copied().unwrap_or(0));
            c.get(ch).is_some_and(|v| v.iter().any(|&x| x >= want))
        }) && complete_and_ordered(&c).is_ok()
        // (A Sparkplug birth carries the newest reading before the older backlog arrives as
        // history: the newest alone does not mean the backlog is in.)
    });
    let drained = back.elapsed();
    let s = status(&cfg);
    println!(
        "{gw_id}: 1,000 children, {OUTAGE:?} outage, backlog delivered {drained:?} after the broker returned; status: connects {}, delivered {}",
        s["uplink"]["connects"], s["queue"]["delivered"]
    );
    if let Err(e) = complete_and_ordered(&counters(&p)) {
        panic!("{e}");
    }
    assert_eq!(
        s["uplink"]["connects"], 2,
        "one reconnect, after the outage: {s}"
    );
    assert_eq!(s["queue"]["dropped"]["unsendable"], 0, "{s}");
    assert_eq!(
        gw.count(&["platform connection lost"]),
        1,
        "{:?}",
        gw.log()
            .iter()
            .filter(|l| l.contains("lost"))
            .collect::<Vec<_>>()
    );
}

#[test]
fn iotda_with_1000_children() {
    scale(
        "dialect = \"iotda\"\ndevice_id = \"gw_scale\"\nsecret = \"s\"",
        "",
        "gw_scale",
        iotda,
    );
}

#[test]
fn thingsboard_with_1000_children() {
    scale(
        "dialect = \"thingsboard\"\ndevice_id = \"gw-scale\"\nsecret = \"token\"",
        "v1/#",
        "gw-scale",
        thingsboard,
    );
}

#[test]
fn sparkplug_with_1000_children() {
    scale(
        "dialect = \"sparkplug\"\ndevice_id = \"gw1\"\ngroup_id = \"Plant1\"\nsecret = \"pw\"",
        "spBv1.0/#",
        "gw1",
        sparkplug,
    );
}

#[test]
fn allthingstalk_with_1000_children() {
    scale(
        "dialect = \"allthingstalk\"\ndevice_id = \"gw-scale\"\naccount = \"acc1\"\nsecret = \"key\"",
        "client/acc1/out/#",
        "gw-scale",
        allthingstalk,
    );
}

#[test]
fn oceanconnect_with_1000_children() {
    scale(
        "dialect = \"oceanconnect\"\ndevice_id = \"gw_oc\"\nsecret = \"s\"",
        "/huawei/v1/devices/gw_oc/#",
        "gw_oc",
        oceanconnect,
    );
}
