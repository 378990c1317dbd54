//! Slow links: the gateway reaches mosquitto through a relay that delays every byte (300 ms
//! and 600 ms round trip, plain and TLS). It must connect with exactly one CONNECT, deliver
//! every reading in order, and answer a command — where the old session loop cancelled its
//! own handshake every 250 ms and never connected at all.

mod common;

use std::time::Duration;

use common::*;

fn slow_link(rtt_ms: u64, tls: bool) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let d = dir.path();
    let tls_port = free_port();
    let extra = if tls {
        make_pki(d);
        format!(
            "listener {tls_port} 127.0.0.1\ncafile {0}/ca.pem\ncertfile {0}/server.pem\nkeyfile {0}/server.key\n",
            d.display()
        )
    } else {
        String::new()
    };
    let broker = Mosquitto::start_with(d, &extra);
    let relay = Relay::start(
        if tls { tls_port } else { broker.port },
        Duration::from_millis(rtt_ms / 2),
    );
    let platform = TestPlatform::start(broker.port, "gw_slow");
    let sim = meter_sim();
    let tls_lines = if tls {
        format!("tls = true\nca_file = \"{}/ca.pem\"", d.display())
    } else {
        "tls = false".to_string()
    };
    let cfg = meter_config(
        d,
        &format!(
            "dialect = \"iotda\"\nhost = \"127.0.0.1\"\nport = {}\n{tls_lines}\ndevice_id = \"gw_slow\"\nsecret = \"s\"",
            relay.port
        ),
        sim.port,
    );
    let mut gw = Gateway::start(&cfg);
    wait_until(Duration::from_secs(30), "readings of both meters", || {
        let r = platform.reports();
        ["energy-meter_m1", "energy-meter_m2"]
            .iter()
            .all(|id| r.iter().filter(|(d, _)| d == id).count() >= 5)
    });
    // A command crosses the slow link both ways and is answered.
    let answer = platform.ask(
        "commands",
        "slow-1",
        br#"{"object_device_id":"energy-meter_m1","service_id":"energy","command_name":"set_limit","paras":{"value":42.5}}"#,
    );
    assert_eq!(answer["result_code"], 0, "{answer}");
    // Readings arrive in order per meter, none missing between the first and last seen.
    for id in ["energy-meter_m1", "energy-meter_m2"] {
        let counters: Vec<u64> = platform
            .reports()
            .iter()
            .filter(|(d, _)| d == id)
            .filter_map(|(_, s)| s["properties"]["counter"].as_u64())
            .collect();
        assert!(
            counters.windows(2).all(|w| w[0] < w[1]),
            "{id} in order: {counters:?}"
        );
    }
    assert_eq!(
        relay.connections(),
        1,
        "one connection through the relay: {:?}",
        gw.log()
    );
    if !tls {
        assert_eq!(relay.connects(), 1, "exactly one CONNECT");
    }
    assert_eq!(gw.count(&["platform connected"]), 1);
    assert_eq!(gw.count(&["cannot connect"]), 0, "{:?}", gw.log());
    assert_eq!(gw.terminate(), Some(0));
}

#[test]
fn plain_300ms_round_trip() {
    slow_link(300, false);
}

#[test]
fn plain_600ms_round_trip() {
    slow_link(600, false);
}

#[test]
fn tls_300ms_round_trip() {
    slow_link(300, true);
}

#[test]
fn tls_600ms_round_trip() {
    slow_link(600, true);
}
