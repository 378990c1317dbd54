//! Command round trip: platform publishes a property set → fieldgate checks it, writes the
//! Modbus register, reads it back → the response reaches the platform. Measured sequentially
//! over a few thousand commands on loopback, next to a baseline measured in the same run: a
//! bare MQTT request/response through the same mosquitto (the ceiling any gateway can reach).
//! Prints figures; asserts nothing about time.  Run: `cargo bench --bench command_rtt`

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};

const N: usize = 2000;

fn percentiles(name: &str, mut v: Vec<Duration>) {
    v.sort();
    let p = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize].as_secs_f64() * 1000.0;
    println!(
        "{name:<34} n={:<5} p50 {:>6.2} ms  p90 {:>6.2} ms  p99 {:>6.2} ms  max {:>6.2} ms",
        v.len(),
        p(0.5),
        p(0.9),
        p(0.99),
        p(1.0)
    );
}

/// A client whose incoming publishes arrive on a channel.
fn client(port: u16, id: &str, subscribe: &str) -> (Client, mpsc::Receiver<(String, Vec<u8>)>) {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    let (c, mut conn) = Client::new(o, 100);
    let mut net = conn.eventloop.network_options();
    net.set_tcp_nodelay(true);
    conn.eventloop.set_network_options(net);
    c.subscribe(subscribe, QoS::AtLeastOnce)
        .unwrap_or_else(|e| panic!("{e}"));
    let (tx, rx) = mpsc::channel();
    let (ready_tx, ready_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for ev in conn.iter() {
            match ev {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = ready_tx.send(());
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if tx.send((p.topic.to_string(), p.payload.to_vec())).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    });
    let _ = ready_rx.recv_timeout(Duration::from_secs(5));
    (c, rx)
}

fn main() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let broker = Mosquitto::start(dir.path());

    // Baseline: request/response between two plain MQTT clients through the same broker.
    let (echo, echo_rx) = client(broker.port, "bench-echo", "bench/req");
    std::thread::spawn(move || {
        while let Ok((_, payload)) = echo_rx.recv() {
            let _ = echo.publish("bench/resp", QoS::AtLeastOnce, false, payload);
        }
    });
    let (asker, resp_rx) = client(broker.port, "bench-asker", "bench/resp");
    let mut base = Vec::with_capacity(N);
    for i in 0..N {
        let t = Instant::now();
        asker
            .publish("bench/req", QoS::AtLeastOnce, false, i.to_string())
            .unwrap_or_else(|e| panic!("{e}"));
        while let Ok((_, p)) = resp_rx.recv_timeout(Duration::from_secs(5)) {
            if p == i.to_string().as_bytes() {
                break;
            }
        }
        base.push(t.elapsed());
    }

    // fieldgate: property set → Modbus write + read-back → response.
    let sim = ModbusSim::new(SimState::default());
    let cfg = dir.path().join("bench.toml");
    std::fs::write(
        &cfg,
        format!(
            "[gateway]\nruntime_dir = \"{d}/run\"\n[platform]\ndialect = \"iotda\"\nhost = \"127.0.0.1\"\nport = {}\ntls = false\ndevice_id = \"gw_bench\"\nsecret = \"s\"\n[store]\npath = \"{d}/fg.db\"\n[[bus]]\nname = \"a\"\ndriver = \"modbus-tcp\"\nendpoint = \"127.0.0.1:{}\"\n[profile.p]\n[[profile.p.point]]\nproperty = \"sp\"\naddress = \"holding:0\"\nwritable = true\n[[device]]\nnode_id = \"d\"\nbus = \"a\"\nprofile = \"p\"\npoll = \"1s\"\n",
            broker.port,
            sim.port,
            d = dir.path().display()
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let platform = TestPlatform::start(broker.port, "gw_bench");
    let gw = Gateway::start(&cfg);
    wait_until(Duration::from_secs(20), "child confirmed", || {
        !platform.reports().is_empty()
    });
    let (cmd, rx) = client(
        broker.port,
        "bench-platform",
        "$oc/devices/gw_bench/sys/properties/set/response/#",
    );
    let mut rtt = Vec::with_capacity(N);
    let mut failed = 0;
    for i in 0..N {
        let body = format!(
            r#"{{"object_device_id":"p_d","services":[{{"service_id":"data","properties":{{"sp":{}}}}}]}}"#,
            i % 1000
        );
        let t = Instant::now();
        cmd.publish(
            format!("$oc/devices/gw_bench/sys/properties/set/request_id=b{i}"),
            QoS::AtLeastOnce,
            false,
            body,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let want = format!("request_id=b{i}");
        loop {
            match rx.recv_timeout(Duration::from_secs(15)) {
                Ok((topic, p)) if topic.ends_with(&want) => {
                    if !String::from_utf8_lossy(&p).contains(r#""result_code":0"#) {
                        failed += 1;
                    }
                    break;
                }
                Ok(_) => {}
                Err(_) => {
                    failed += 1;
                    break;
                }
            }
        }
        rtt.push(t.elapsed());
    }
    drop(gw);
    println!(
        "command round trip on loopback ({} CPUs)",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    percentiles("baseline: bare MQTT request/response", base);
    percentiles("fieldgate: set → Modbus write → ack", rtt);
    println!("failed or unanswered: {failed}");
}
