//! BLE through the binary, against BlueZ's D-Bus API simulated by python-dbusmock (no radio
//! here; see `fieldgate_ble::testing`): `fieldgate ble scan` lists and decodes what it hears,
//! and the daemon with a `ble` bus, a real mosquitto and the test platform reports decoded
//! advertisements and executes a platform command as a GATT write.
#![cfg(feature = "ble")]

mod common;

use std::time::Duration;

use common::*;
use fieldgate_ble::testing::MockBluez;
use serde_json::json;

/// One mock per process (libdbus caches the bus address), so both scenarios run in one test.
#[test]
fn ble_scan_and_the_daemon_against_dbusmock() {
    let mut m = MockBluez::start();
    m.cmd("device hci0 A4:C1:38:00:00:01 bthome-th");
    m.cmd("device hci0 C0:FF:EE:00:00:02 Ruuvi");
    m.cmd("device hci0 11:22:33:44:55:66 phone");
    m.cmd("sd A4:C1:38:00:00:01 fcd2 4002C40903BF13");
    m.cmd("md C0:FF:EE:00:00:02 0499 0512FC5394C37C0004FFFC040CAC364200CDCBB8334C884F");
    m.cmd("md 11:22:33:44:55:66 004c 0215");

    // The probe, as an engineer runs it.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fieldgate"))
        .args(["ble", "scan", "--adapter", "hci0", "--for", "2s"])
        .env("DBUS_SYSTEM_BUS_ADDRESS", &m.address)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("3 device(s) heard on hci0"), "{text}");
    assert!(
        text.contains("A4:C1:38:00:00:01") && text.contains("temperature=25.0"),
        "{text}"
    );
    assert!(text.contains("pressure=100044"), "{text}");
    assert!(
        text.contains("no known format (service data [], manufacturer [004c])"),
        "{text}"
    );

    // The daemon.
    let addr = "D0:00:00:00:00:0A";
    m.cmd(&format!("device hci0 {addr} valve"));
    m.cmd(&format!(
        "gatt {addr} 0010 0011 6e400003-b5a3-f393-e0a9-e50e24dcca9e 00"
    ));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let broker = Mosquitto::start(dir.path());
    let platform = TestPlatform::start(broker.port, "gw_ble");
    let cfg = dir.path().join("fieldgate.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[gateway]
runtime_dir = "{dir}/run"

[platform]
dialect = "iotda"
host = "127.0.0.1"
port = {mqtt}
tls = false
device_id = "gw_ble"
secret = "s"

[store]
path = "{dir}/fg.db"

[[bus]]
name = "radio"
driver = "ble"
adapter = "hci0"
timeout = "3s"

[profile.th]
kind = "ble"
product_id = "th"
service = "env"
format = "bthome"
stale_after = "10m"

[profile.valve]
kind = "ble"
product_id = "valve"
service = "valve"

[[profile.valve.command]]
name = "set_position"
characteristic = "6e400003-b5a3-f393-e0a9-e50e24dcca9e"
type = "u8"
min = 0
max = 100

[[device]]
node_id = "th1"
bus = "radio"
profile = "th"
address = "a4:c1:38:00:00:01"
poll = "1s"

[[device]]
node_id = "v1"
bus = "radio"
profile = "valve"
address = "{addr}"
"#,
            dir = dir.path().display(),
            mqtt = broker.port,
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let mut gw = Gateway::start_with_env(&cfg, &[("DBUS_SYSTEM_BUS_ADDRESS", &m.address)]);
    wait_until(Duration::from_secs(20), "a decoded advertisement", || {
        platform.reports().iter().any(|(d, s)| {
            d == "th_th1"
                && s["service_id"] == "env"
                && s["properties"]["temperature"] == json!(25.0)
        })
    });
    m.cmd("sd A4:C1:38:00:00:01 fcd2 40025E0A03BF13");
    wait_until(Duration::from_secs(10), "the changed temperature", || {
        platform
            .reports()
            .iter()
            .any(|(d, s)| d == "th_th1" && s["properties"]["temperature"] == json!(26.54))
    });
    let r = platform.ask("commands", "b1", br#"{"object_device_id":"valve_v1","service_id":"valve","command_name":"set_position","paras":{"value":40}}"#);
    assert_eq!(r["result_code"], json!(0), "{r}");
    assert_eq!(m.cmd(&format!("value {addr} 0010 0011")), "28");
    let r = platform.ask("commands", "b2", br#"{"object_device_id":"valve_v1","service_id":"valve","command_name":"set_position","paras":{"value":101}}"#);
    assert_ne!(r["result_code"], json!(0), "out of range: {r}");
    assert_eq!(
        m.cmd(&format!("value {addr} 0010 0011")),
        "28",
        "nothing written"
    );
    assert_eq!(gw.terminate(), Some(0));
}
