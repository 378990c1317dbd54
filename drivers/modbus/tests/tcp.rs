//! The Modbus TCP bus task against real peers on loopback: a tokio-modbus server that answers
//! (and raises exceptions for unmapped addresses) and a peer that accepts but never answers.
//! Checks decoded reports, OFFLINE reasons, and that one bad device does not stop its neighbour.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use fieldgate_driver::{Driver, DriverContext, Event, Value};
use fieldgate_modbus::point::parse_location;
use fieldgate_modbus::{BusSpec, DataType, DeviceSpec, ModbusDriver, Order, PointSpec, Transport};
use tokio::sync::{mpsc, watch};
use tokio_modbus::prelude::*;
use tokio_modbus::server::tcp::Server;

struct Sim;

impl tokio_modbus::server::Service for Sim {
    type Request = SlaveRequest<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = std::future::Ready<Result<Response, ExceptionCode>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        std::future::ready(match req.request {
            // Unit 9 is a gateway whose target does not answer.
            _ if req.slave == 9 => Err(ExceptionCode::GatewayTargetDevice),
            Request::ReadHoldingRegisters(addr, cnt) if addr < 1000 => {
                // f32 230.5 in CDAB order at 0..=1, then the register number.
                Ok(Response::ReadHoldingRegisters(
                    (addr..addr + cnt)
                        .map(|a| match a {
                            0 => 0x8000,
                            1 => 0x4366,
                            a => a,
                        })
                        .collect(),
                ))
            }
            Request::ReadHoldingRegisters(..) => Err(ExceptionCode::IllegalDataAddress),
            _ => Err(ExceptionCode::IllegalFunction),
        })
    }
}

async fn server() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let port = l.local_addr().map(|a| a.port()).unwrap_or(0);
    tokio::spawn(async move {
        let on_connected = |stream, _| async move { Ok(Some((Sim, stream))) };
        let _ = Server::new(l).serve(&on_connected, |_| {}).await;
    });
    port
}

/// Accepts connections and never answers.
async fn silent() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let port = l.local_addr().map(|a| a.port()).unwrap_or(0);
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    port
}

fn point(prop: &str, loc: &str, dtype: DataType) -> PointSpec {
    let (table, address) = parse_location(loc).unwrap_or_else(|e| panic!("{e}"));
    PointSpec {
        service: "s".into(),
        property: prop.into(),
        table,
        address,
        dtype,
        bit: None,
        byte_order: Order::Big,
        word_order: Order::Little,
        scale: None,
        offset: None,
        writable: false,
        min: None,
        max: None,
    }
}

fn device(node: &str, unit: u8, points: Vec<PointSpec>) -> DeviceSpec {
    DeviceSpec {
        node_id: node.into(),
        unit,
        poll: Duration::from_millis(50),
        points: Arc::from(points),
        max_gap: 8,
        commands: Arc::from(Vec::new()),
        turnaround: Duration::ZERO,
    }
}

fn bus(port: u16) -> BusSpec {
    BusSpec {
        name: "t".into(),
        transport: Transport::Tcp(format!("127.0.0.1:{port}")),
        timeout: Duration::from_millis(200),
        offline_after: 2,
        reconnect_min: Duration::from_millis(50),
        reconnect_max: Duration::from_millis(200),
        max_backoff: Duration::from_millis(200),
    }
}

/// Run a driver for `d`, collecting its events.
async fn collect(driver: ModbusDriver, d: Duration) -> Vec<Event> {
    let (tx, mut rx) = fieldgate_driver::events(1024, 1 << 20);
    let (_cmd_tx, cmd_rx) = mpsc::channel(1);
    let (stop_tx, stop_rx) = watch::channel(false);
    let task = tokio::spawn(Box::new(driver).run(DriverContext {
        events: tx,
        commands: cmd_rx,
        shutdown: stop_rx,
    }));
    tokio::time::sleep(d).await;
    let _ = stop_tx.send(true);
    let r = tokio::time::timeout(Duration::from_secs(2), task).await;
    assert!(
        matches!(r, Ok(Ok(Ok(())))),
        "driver stops cleanly on shutdown: {r:?}"
    );
    let mut out = Vec::new();
    while let Some(e) = rx.try_recv() {
        out.push(e);
    }
    out
}

fn statuses(ev: &[Event], child: &str) -> Vec<(bool, String)> {
    ev.iter()
        .filter_map(|e| match e {
            Event::Status(s) if s.child == child => Some((s.online, s.reason.clone())),
            _ => None,
        })
        .collect()
}

fn reports(ev: &[Event], child: &str) -> Vec<BTreeMap<String, Value>> {
    ev.iter()
        .filter_map(|e| match e {
            Event::Report(r) if r.child == child => Some(
                r.properties
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.clone()))
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn exceptions_become_the_offline_reason_and_neighbours_keep_reporting() {
    let port = server().await;
    let driver = ModbusDriver::new(
        bus(port),
        vec![
            device(
                "good",
                1,
                vec![
                    point("v", "holding:0", DataType::F32),
                    point("r7", "holding:7", DataType::U16),
                ],
            ),
            device(
                "unmapped",
                1,
                vec![point("x", "holding:1000", DataType::U16)],
            ),
            device("behind-gw", 9, vec![point("y", "holding:0", DataType::U16)]),
        ],
    );
    let ev = collect(driver, Duration::from_millis(800)).await;

    let good = reports(&ev, "good");
    assert!(
        good.len() >= 10,
        "good device kept its 50 ms schedule: {} reports",
        good.len()
    );
    assert_eq!(good[0].get("v"), Some(&Value::Float(230.5)));
    assert_eq!(good[0].get("r7"), Some(&Value::UInt(7)));
    assert_eq!(statuses(&ev, "good"), vec![(true, String::new())]);

    assert_eq!(
        statuses(&ev, "unmapped"),
        vec![(false, "exception illegal data address (0x02)".to_string())]
    );
    assert!(reports(&ev, "unmapped").is_empty());
    let gw = statuses(&ev, "behind-gw");
    assert_eq!(gw.len(), 1, "one status per transition: {gw:?}");
    assert!(
        gw[0]
            .1
            .contains("gateway target device failed to respond (0x0b)"),
        "{gw:?}"
    );
}

#[tokio::test]
async fn a_silent_peer_times_out_and_refused_connections_are_named() {
    let port = silent().await;
    let driver = ModbusDriver::new(
        bus(port),
        vec![device(
            "mute",
            1,
            vec![point("v", "holding:0", DataType::U16)],
        )],
    );
    let ev = collect(driver, Duration::from_millis(1200)).await;
    assert_eq!(
        statuses(&ev, "mute"),
        vec![(false, "timeout after 200ms".to_string())]
    );

    // Nothing listens on this port any more.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        l.local_addr().map(|a| a.port()).unwrap_or(0)
    };
    let driver = ModbusDriver::new(
        bus(closed),
        vec![device(
            "gone",
            1,
            vec![point("v", "holding:0", DataType::U16)],
        )],
    );
    let ev = collect(driver, Duration::from_millis(600)).await;
    assert_eq!(
        statuses(&ev, "gone"),
        vec![(false, "connect: connection refused".to_string())]
    );
}

#[tokio::test]
async fn status_comes_before_the_first_report_and_every_poll_reports() {
    let port = server().await;
    let driver = ModbusDriver::new(
        bus(port),
        vec![device(
            "d",
            1,
            vec![point("r7", "holding:7", DataType::U16)],
        )],
    );
    let ev = collect(driver, Duration::from_millis(520)).await;
    assert!(
        matches!(ev.first(), Some(Event::Status(s)) if s.online),
        "ONLINE first: {:?}",
        ev.first()
    );
    // 50 ms period over ~520 ms: at most 11 slots, each good poll a report (not only the first;
    // the lower bound is loose: a loaded machine may skip slots, counted as overruns).
    let n = reports(&ev, "d").len();
    assert!(
        (4..=12).contains(&n),
        "{n} reports in 520 ms at a 50 ms period"
    );
    // Every report names its property with the device's one name, not a copy per poll.
    let names: Vec<_> = ev
        .iter()
        .filter_map(|e| match e {
            Event::Report(r) => r.properties.keys().next().cloned(),
            _ => None,
        })
        .collect();
    assert!(names.len() >= 2);
    assert!(
        names.iter().all(|k| std::sync::Arc::ptr_eq(k, &names[0])),
        "property names are shared between reports"
    );
}
