//! The BLE bus task against BlueZ's D-Bus API as python-dbusmock's `bluez5` template provides
//! it, on a private D-Bus daemon the test starts (there is no Bluetooth in this kernel). What
//! is real: the D-Bus traffic, bluer, the discovery and property-change flow, the decoders and
//! the driver. What is simulated: the adapter and the sensors (advertisement data and GATT
//! objects are set through dbusmock). Nothing here has been run against a radio.

use std::collections::BTreeMap;
use std::time::Duration;

use fieldgate_ble::driver::BleDriver;
use fieldgate_ble::spec::{uuid, CharType};
use fieldgate_ble::testing::MockBluez;
use fieldgate_ble::{BleBus, BleDevice, Format, GattChar, GattCommand, Kind};
use fieldgate_driver::testing::{start, statuses, values};
use fieldgate_driver::{
    Command, CommandOutcome, DeclaredCommand, Event, ParamKind, ParamSpec, Value,
};

/// libdbus reads the system bus address once per process, so one mock serves every scenario
/// of this test binary: they run in one test, one after the other.
#[tokio::test]
async fn bluez_through_dbusmock() {
    let mut m = MockBluez::start();
    advertisement_sensors_are_decoded_reported_on_change_and_go_stale(&mut m).await;
    gatt_devices_are_read_subscribed_to_and_written(&mut m).await;
}

fn bus() -> BleBus {
    BleBus {
        name: "ble".into(),
        adapter: Some("hci0".into()),
        timeout: Duration::from_secs(2),
        offline_after: 2,
        reconnect_min: Duration::from_millis(200),
        reconnect_max: Duration::from_secs(1),
    }
}

fn advert(node: &str, addr: &str, format: Format, stale_ms: u64) -> BleDevice {
    BleDevice {
        node_id: node.into(),
        address: addr.into(),
        service: "env".into(),
        kind: Kind::Advert { format },
        poll: Duration::from_millis(100),
        stale_after: Duration::from_millis(stale_ms),
    }
}

const BTHOME: &str = "A4:C1:38:00:00:01";
const RUUVI: &str = "C0:FF:EE:00:00:02";
const ATC: &str = "A4:C1:38:00:00:03";

async fn advertisement_sensors_are_decoded_reported_on_change_and_go_stale(m: &mut MockBluez) {
    for (a, n) in [
        (BTHOME, "bthome"),
        (RUUVI, "Ruuvi 884F"),
        (ATC, "ATC_000003"),
        ("11:22:33:44:55:66", "phone"),
    ] {
        m.cmd(&format!("device hci0 {a} {n}"));
    }
    m.cmd(&format!("sd {BTHOME} fcd2 4002C40903BF13"));
    m.cmd(&format!(
        "md {RUUVI} 0499 0512FC5394C37C0004FFFC040CAC364200CDCBB8334C884F"
    ));
    m.cmd(&format!("sd {ATC} 181a A4C13800000300EA38590B8907"));
    let mut r = start(BleDriver::new(
        bus(),
        vec![
            advert("th1", BTHOME, Format::Auto, 1500),
            advert("ruuvi", RUUVI, Format::Ruuvi, 60_000),
            advert("atc", ATC, Format::Atc, 60_000),
        ],
    ));
    r.until("all three decoded", |ev| {
        ["th1", "ruuvi", "atc"]
            .iter()
            .all(|c| !values(ev, c).is_empty())
    })
    .await;
    assert_eq!(values(&r.seen, "th1")[0]["temperature"], Value::Float(25.0));
    assert_eq!(values(&r.seen, "th1")[0]["humidity"], Value::Float(50.55));
    assert_eq!(
        values(&r.seen, "ruuvi")[0]["pressure"],
        Value::UInt(100_044)
    );
    assert_eq!(values(&r.seen, "atc")[0]["temperature"], Value::Float(23.4));

    // A new temperature is reported; the same advertisement again is not.
    m.cmd(&format!("sd {BTHOME} fcd2 40025E0A03BF13"));
    r.until("the new temperature", |ev| {
        values(ev, "th1")
            .iter()
            .any(|p| p["temperature"] == Value::Float(26.54))
    })
    .await;
    for _ in 0..3 {
        m.cmd(&format!("sd {BTHOME} fcd2 40025E0A03BF13"));
    }
    r.settle(Duration::from_millis(400)).await;
    assert_eq!(
        values(&r.seen, "th1").len(),
        2,
        "unchanged values are not reported again"
    );

    // Encrypted frames are never values; two in a row take the sensor OFFLINE.
    m.cmd(&format!("sd {BTHOME} fcd2 4102C409"));
    m.cmd(&format!("sd {BTHOME} fcd2 4102C40A"));
    r.until("OFFLINE on undecodable frames", |ev| {
        statuses(ev, "th1")
            .iter()
            .any(|(on, why)| !on && why.contains("encrypted"))
    })
    .await;
    m.cmd(&format!("sd {BTHOME} fcd2 4002C40903BF13"));
    r.until("ONLINE again", |ev| {
        statuses(ev, "th1").last().is_some_and(|s| s.0)
    })
    .await;

    // Silence: after 1.5 s without an advertisement it goes OFFLINE, once.
    r.until("stale", |ev| {
        statuses(ev, "th1")
            .iter()
            .any(|(on, why)| !on && why.contains("no advertisement"))
    })
    .await;
    r.settle(Duration::from_millis(600)).await;
    let ev = r.finish().await;
    let th = statuses(&ev, "th1");
    assert_eq!(
        th.iter().map(|s| s.0).collect::<Vec<_>>(),
        vec![true, false, true, false],
        "{th:?}"
    );
    assert!(values(&ev, "th1")
        .iter()
        .all(|p| p.contains_key("temperature")));
    assert_eq!(statuses(&ev, "ruuvi"), vec![(true, String::new())]);
    assert!(ev.iter().all(|e| match e {
        Event::Report(r) => r.child != "phone",
        _ => true,
    }));
}

async fn gatt_devices_are_read_subscribed_to_and_written(m: &mut MockBluez) {
    let addr = "D0:00:00:00:00:0A";
    m.cmd(&format!("device hci0 {addr} sensor"));
    let temp = uuid("2a6e").unwrap_or_default();
    let count = uuid("6e400002-b5a3-f393-e0a9-e50e24dcca9e").unwrap_or_default();
    let led = uuid("6e400003-b5a3-f393-e0a9-e50e24dcca9e").unwrap_or_default();
    m.cmd(&format!("gatt {addr} 0010 0011 {temp} 1AFE"));
    m.cmd(&format!("gatt {addr} 0010 0012 {count} 05"));
    m.cmd(&format!("gatt {addr} 0010 0013 {led} 00"));
    let ch = |property: &str, uuid: &str, kind, scale, notify| GattChar {
        service: "env".into(),
        property: property.into(),
        uuid: uuid.into(),
        kind,
        scale,
        offset: None,
        notify,
    };
    let dev = BleDevice {
        node_id: "g1".into(),
        address: addr.into(),
        service: "env".into(),
        kind: Kind::Gatt {
            chars: vec![
                ch("temperature", &temp, CharType::I16, Some(0.01), false),
                ch("count", &count, CharType::U8, None, true),
            ],
            commands: vec![GattCommand {
                decl: DeclaredCommand {
                    service: "env".into(),
                    name: "set_led".into(),
                    params: vec![ParamSpec {
                        name: "value".into(),
                        kind: ParamKind::Int {
                            min: Some(0),
                            max: Some(255),
                        },
                    }],
                },
                uuid: led.clone(),
                kind: CharType::U8,
            }],
        },
        poll: Duration::from_millis(200),
        stale_after: Duration::from_secs(60),
    };
    let mut r = start(BleDriver::new(bus(), vec![dev]));
    r.until("a read", |ev| {
        values(ev, "g1")
            .iter()
            .any(|p| p.get("temperature") == Some(&Value::Float(-4.86)))
    })
    .await;
    m.cmd(&format!("notify {addr} 0010 0012 2A"));
    r.until("a notification", |ev| {
        values(ev, "g1")
            .iter()
            .any(|p| p.get("count") == Some(&Value::UInt(42)))
    })
    .await;
    let outcome = r
        .ask(
            Command::Invoke {
                child: "g1".into(),
                service: "env".into(),
                name: "set_led".into(),
                params: BTreeMap::from([("value".to_string(), Value::Int(200))]),
            },
            Duration::from_secs(3),
        )
        .await;
    assert!(matches!(outcome, CommandOutcome::Done(_)), "{outcome:?}");
    assert_eq!(
        m.cmd(&format!("value {addr} 0010 0013")),
        "c8",
        "the write reached the characteristic"
    );
    let ev = r.finish().await;
    assert_eq!(statuses(&ev, "g1"), vec![(true, String::new())]);
}
