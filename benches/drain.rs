//! Drain rate: a 100,000-record backlog (10 children) already in the store when fieldgate
//! starts, delivered to a local mosquitto at QoS 1 with replay pacing off — next to a bare
//! rumqttc publisher sending the same number of messages of the same size, QoS 1, with the same
//! in-flight window, through the same broker in the same run (the ceiling). Prints figures.
//! Run: `cargo bench --bench drain` (FG_BENCH_RECORDS to change the backlog).
//! `FG_BENCH_SPARKPLUG_QOS=0` (or `1`): the same backlog through the Sparkplug dialect at that
//! QoS, without a subscriber — QoS 0 records leave the queue on a barrier's SUBACK.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::*;
use fieldgate::queue::Record;
use fieldgate::registry::Persisted;
use fieldgate::store::{Limits, Store};
use fieldgate_driver::{Report, Value};
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};

const CHILDREN: u64 = 10;

fn main() {
    let n: u64 = std::env::var("FG_BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let broker = Mosquitto::start(dir.path());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));

    // The backlog, written through the store the daemon uses, children already confirmed.
    let db = dir.path().join("fg.db");
    rt.block_on(async {
        let store = Store::open(
            &db,
            Limits {
                max_bytes: 1 << 40,
                ..Limits::default()
            },
            false,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        for c in 0..CHILDREN {
            let p = Persisted {
                node_id: format!("d{c}"),
                device_id: Some(format!("p_d{c}")),
                product_id: "p".into(),
                platform_deleted: false,
            };
            store.save_child(p).await.unwrap_or_else(|e| panic!("{e}"));
        }
        for chunk in 0..n / 1000 {
            let rows = (0..1000)
                .map(|i| {
                    let k = chunk * 1000 + i;
                    Record::Report(Report {
                        child: format!("d{}", k % CHILDREN),
                        service: "data".into(),
                        properties: fieldgate_driver::Properties::from([
                            ("counter".into(), Value::UInt(k)),
                            ("voltage".into(), Value::Float(230.5)),
                        ]),
                        ts_ms: fieldgate_driver::now_ms(),
                    })
                    .encode()
                })
                .collect();
            store.append(rows).await.unwrap_or_else(|e| panic!("{e}"));
        }
    });
    std::thread::sleep(Duration::from_millis(300));

    let mut devices = String::new();
    for c in 0..CHILDREN {
        devices += &format!(
            "[[device]]\nnode_id = \"d{c}\"\nbus = \"a\"\nprofile = \"p\"\npoll = \"1h\"\n"
        );
    }
    let sparkplug = std::env::var("FG_BENCH_SPARKPLUG_QOS").ok();
    let dialect = match &sparkplug {
        Some(q) => format!("dialect = \"sparkplug\"\ngroup_id = \"G\"\nqos = {q}"),
        None => "dialect = \"iotda\"".to_string(),
    };
    let cfg = dir.path().join("drain.toml");
    std::fs::write(
        &cfg,
        format!(
            "[gateway]\nruntime_dir = \"{d}/run\"\n[platform]\n{dialect}\nhost = \"127.0.0.1\"\nport = {}\ntls = false\ndevice_id = \"gw_drain\"\nsecret = \"s\"\nreplay_rate = 0\nreplay_bytes_rate = 0\n[store]\npath = \"{}\"\nmax_bytes = \"1GiB\"\n[[bus]]\nname = \"a\"\ndriver = \"modbus-tcp\"\nendpoint = \"127.0.0.1:1\"\n[profile.p]\n[[profile.p.point]]\nproperty = \"v\"\naddress = \"holding:0\"\n{devices}",
            broker.port,
            db.display(),
            d = dir.path().display()
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    // FG_BENCH_NO_SUBSCRIBER=1: no platform subscriber (children are confirmed in the store).
    let platform = (std::env::var_os("FG_BENCH_NO_SUBSCRIBER").is_none() && sparkplug.is_none())
        .then(|| TestPlatform::start(broker.port, "gw_drain"));
    let t = Instant::now();
    let gw = Gateway::start(&cfg);
    // Like the baseline: done when the broker has acknowledged every record (`delivered`).
    // The first acknowledged record splits start-up (opening and checking the store file,
    // connecting) from the drain itself.
    let cfg_s = cfg.to_string_lossy().to_string();
    let mut first: Option<(f64, u64)> = None;
    wait_until(Duration::from_secs(600), "backlog acknowledged", || {
        let (_, out, _) = fieldgate(&["status", "--json", "-c", &cfg_s]);
        let delivered = serde_json::from_str::<serde_json::Value>(&out)
            .ok()
            .and_then(|j| j["queue"]["delivered"].as_u64())
            .unwrap_or(0);
        if first.is_none() && delivered > 0 {
            first = Some((t.elapsed().as_secs_f64(), delivered));
        }
        delivered >= n
    });
    let fg_s = t.elapsed().as_secs_f64();
    let (start_s, at_start) = first.unwrap_or((0.0, 0));
    let steady = (n - at_start) as f64 / (fg_s - start_s).max(1e-3);
    println!(
        "  fieldgate start-up (process start → first ack) {start_s:.2} s; drain after it {steady:.0} records/s"
    );
    let Some(platform) = platform else {
        println!(
            "fieldgate alone (no subscriber): {n} records acked in {fg_s:.2} s = {:.0} records/s",
            n as f64 / fg_s
        );
        return;
    };
    wait_until(
        Duration::from_secs(600),
        "subscriber received everything",
        || platform.reports().len() as u64 >= n,
    );
    let msgs: Vec<usize> = platform
        .messages()
        .iter()
        .filter(|m| m.topic.ends_with("/properties/report"))
        .map(|m| m.json.to_string().len())
        .collect();
    drop(gw);
    let avg = msgs.iter().sum::<usize>() / msgs.len().max(1);

    // The ceiling: the same number of messages of the same size from a bare client.
    let base_s = rt.block_on(async {
        let mut o = MqttOptions::new("bare-publisher", "127.0.0.1", broker.port);
        o.set_inflight(32);
        o.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut ev) = AsyncClient::new(o, 64);
        let payload = vec![b'x'; avg];
        let count = msgs.len();
        let t = Instant::now();
        let sender = tokio::spawn(async move {
            for _ in 0..count {
                let _ = client
                    .publish(
                        "$oc/devices/gw_drain/sys/gateway/sub_devices/properties/report",
                        QoS::AtLeastOnce,
                        false,
                        payload.clone(),
                    )
                    .await;
            }
        });
        let mut acked = 0;
        while acked < count {
            match ev.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
                Ok(Event::Outgoing(Outgoing::Publish(_))) | Ok(_) => {}
                Err(e) => panic!("{e}"),
            }
        }
        let _ = sender.await;
        t.elapsed().as_secs_f64()
    });
    println!(
        "drain of a {n}-record backlog to a local mosquitto, QoS 1 ({} messages of ~{avg} B)",
        msgs.len()
    );
    println!(
        "  fieldgate (process start → acked)  {fg_s:>6.2} s  {:>8.0} records/s  {:>6.0} messages/s",
        n as f64 / fg_s,
        msgs.len() as f64 / fg_s
    );
    println!("  bare rumqttc publisher, same msgs  {base_s:>6.2} s  {:>8.0} records/s  {:>6.0} messages/s", n as f64 / base_s, msgs.len() as f64 / base_s);
}
