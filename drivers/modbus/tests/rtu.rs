//! The Modbus RTU bus task over pseudo-terminal pairs (socat) against real peers: tokio-modbus's
//! RTU server in-process (with units that answer late, answer with exceptions or stay silent),
//! a raw responder that garbles CRCs, and Debian's pymodbus as an independent implementation.
//! Register N of unit U always holds N + 1000·U, so any reply given to the wrong request shows
//! up as a wrong value.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::process::{Command as Process, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fieldgate_driver::testing::{reports, run_for, start, statuses};
use fieldgate_driver::{Command, CommandOutcome, Event, Value};
use fieldgate_modbus::point::parse_location;
use fieldgate_modbus::{BusSpec, DataType, DeviceSpec, ModbusDriver, Order, PointSpec, Transport};
use fieldgate_serial::testing::PtyPair;
use fieldgate_serial::{Parity, PortSettings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_modbus::prelude::*;

fn settings(path: &Path) -> PortSettings {
    PortSettings {
        path: path.display().to_string(),
        baud: 115_200,
        parity: Parity::None,
        data_bits: 8,
        stop_bits: 1,
    }
}

/// The in-process RTU server's behaviour.
#[derive(Default)]
struct Sim {
    /// Units that never answer.
    silent: Vec<u8>,
    /// Every 4th read of this address is answered `late_by` after arrival, `late_count` times.
    late_addr: u16,
    late_by: Duration,
    late_count: AtomicU32,
    reads: AtomicU32,
    /// How many late replies were actually sent.
    late_sent: Arc<AtomicU32>,
}

type Reply = Pin<Box<dyn Future<Output = Result<Option<Response>, ExceptionCode>> + Send>>;

impl tokio_modbus::server::Service for Sim {
    type Request = SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = Reply;

    fn call(&self, req: Self::Request) -> Self::Future {
        let unit = req.slave;
        if self.silent.contains(&unit) {
            return Box::pin(async { Ok(None) });
        }
        match req.request {
            Request::ReadHoldingRegisters(addr, cnt) if addr < 1000 => {
                let regs: Vec<u16> = (addr..addr + cnt)
                    .map(|a| a + 1000 * u16::from(unit))
                    .collect();
                let late = addr == self.late_addr
                    && self.reads.fetch_add(1, Ordering::SeqCst) % 4 == 2
                    && self
                        .late_count
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                        .is_ok();
                let delay = if late { self.late_by } else { Duration::ZERO };
                let sent = self.late_sent.clone();
                Box::pin(async move {
                    if late {
                        tokio::time::sleep(delay).await;
                        sent.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(Some(Response::ReadHoldingRegisters(regs)))
                })
            }
            Request::ReadHoldingRegisters(..) => {
                Box::pin(async { Err(ExceptionCode::IllegalDataAddress) })
            }
            _ => Box::pin(async { Err(ExceptionCode::IllegalFunction) }),
        }
    }
}

fn serve(path: &Path, sim: Sim) {
    let stream = fieldgate_serial::open(&settings(path)).unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(async move {
        let _ = tokio_modbus::server::rtu::Server::new(stream)
            .serve_forever(sim)
            .await;
    });
}

fn point(prop: &str, loc: &str) -> PointSpec {
    let (table, address) = parse_location(loc).unwrap_or_else(|e| panic!("{e}"));
    PointSpec::new("s", prop, table, address, DataType::U16)
}

fn device(node: &str, unit: u8, poll_ms: u64, points: Vec<PointSpec>) -> DeviceSpec {
    DeviceSpec {
        node_id: node.into(),
        unit,
        poll: Duration::from_millis(poll_ms),
        points: Arc::from(points),
        max_gap: 8,
        commands: Arc::from(Vec::new()),
        turnaround: Duration::ZERO,
    }
}

fn bus(path: &Path, timeout_ms: u64, settle_ms: u64) -> BusSpec {
    BusSpec {
        name: "rs485".into(),
        transport: Transport::Rtu {
            port: settings(path),
            settle: Duration::from_millis(settle_ms),
        },
        timeout: Duration::from_millis(timeout_ms),
        offline_after: 2,
        reconnect_min: Duration::from_millis(50),
        reconnect_max: Duration::from_millis(200),
        max_backoff: Duration::from_millis(800),
    }
}

/// Every reported value must be the one its register holds: N + 1000·unit.
fn assert_truthful(ev: &[Event], child: &str, unit: u16, addresses: &BTreeMap<&str, u16>) -> usize {
    let rs = reports(ev, child);
    for r in &rs {
        for (prop, v) in &r.properties {
            let want = addresses[&**prop] + 1000 * unit;
            assert_eq!(
                v,
                &Value::UInt(u64::from(want)),
                "{child}.{prop} reported a value from another request"
            );
        }
    }
    rs.len()
}

#[tokio::test]
async fn units_share_one_port_and_a_dead_one_does_not_starve_its_neighbours() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let pty = PtyPair::new(dir.path());
    serve(
        &pty.a,
        Sim {
            silent: vec![5],
            ..Sim::default()
        },
    );
    let driver = ModbusDriver::new(
        bus(&pty.b, 100, 100),
        vec![
            device(
                "m1",
                1,
                200,
                vec![point("a", "holding:10"), point("b", "holding:777")],
            ),
            device("m2", 2, 200, vec![point("a", "holding:10")]),
            device("dead", 5, 200, vec![point("a", "holding:10")]),
            device("bad", 3, 200, vec![point("a", "holding:5000")]),
        ],
    );
    let ev = run_for(driver, Duration::from_secs(4)).await;

    let addrs = BTreeMap::from([("a", 10), ("b", 777)]);
    let n1 = assert_truthful(&ev, "m1", 1, &addrs);
    let n2 = assert_truthful(&ev, "m2", 2, &addrs);
    assert!(n1 >= 10 && n2 >= 10, "both live units report: {n1} {n2}");
    assert_eq!(statuses(&ev, "m1"), vec![(true, String::new())]);

    let dead = statuses(&ev, "dead");
    assert_eq!(dead.len(), 1, "one OFFLINE, no flapping: {dead:?}");
    assert!(!dead[0].0 && dead[0].1.contains("timeout"), "{dead:?}");
    let bad = statuses(&ev, "bad");
    assert!(
        bad.len() == 1 && !bad[0].0 && bad[0].1.contains("illegal data address"),
        "an exception is the reason: {bad:?}"
    );

    // The dead unit is backed off: m1 keeps its 200 ms period within one failed exchange
    // (timeout 100 ms + settle 100 ms), with a margin for a loaded machine.
    let ts: Vec<u64> = reports(&ev, "m1").iter().map(|r| r.ts_ms).collect();
    let worst = ts.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
    println!("m1: {} reports, worst interval {worst} ms", ts.len());
    assert!(
        worst <= 200 + 200 + 250,
        "m1 starved: worst interval {worst} ms"
    );
}

#[tokio::test]
async fn a_late_reply_is_never_taken_as_the_answer_to_the_next_request() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let pty = PtyPair::new(dir.path());
    let late_sent = Arc::new(AtomicU32::new(0));
    // Five reads of address 777 are answered 80 ms after the 100 ms timeout. The request that
    // follows has the same unit, function and count, so only the line discipline (settle,
    // flush, reopen) keeps the late reply from answering it.
    serve(
        &pty.a,
        Sim {
            late_addr: 777,
            late_by: Duration::from_millis(180),
            late_count: AtomicU32::new(5),
            late_sent: late_sent.clone(),
            ..Sim::default()
        },
    );
    let driver = ModbusDriver::new(
        bus(&pty.b, 100, 150),
        vec![device(
            "m1",
            1,
            50,
            vec![point("a", "holding:10"), point("b", "holding:777")],
        )],
    );
    let ev = run_for(driver, Duration::from_secs(3)).await;
    let n = assert_truthful(&ev, "m1", 1, &BTreeMap::from([("a", 10), ("b", 777)]));
    assert_eq!(
        late_sent.load(Ordering::SeqCst),
        5,
        "the simulator did answer late"
    );
    assert!(
        n >= 10,
        "polling recovered after the late replies: {n} reports"
    );
}

/// Answers every 8-byte request with a reply whose CRC is wrong.
async fn garbler(path: &Path) {
    let mut port = fieldgate_serial::open(&settings(path)).unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(async move {
        let mut buf = [0u8; 8];
        while port.read_exact(&mut buf).await.is_ok() {
            let reply = [buf[0], 0x03, 0x02, 0x00, 0x2A, 0xDE, 0xAD];
            if port.write_all(&reply).await.is_err() {
                break;
            }
        }
    });
}

#[tokio::test]
async fn crc_errors_become_the_offline_reason_and_no_value() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let pty = PtyPair::new(dir.path());
    garbler(&pty.a).await;
    let driver = ModbusDriver::new(
        bus(&pty.b, 100, 20),
        vec![device("m1", 1, 100, vec![point("a", "holding:10")])],
    );
    let ev = run_for(driver, Duration::from_millis(1500)).await;
    assert!(
        reports(&ev, "m1").is_empty(),
        "no value from a garbled line"
    );
    let st = statuses(&ev, "m1");
    assert_eq!(st.len(), 1, "{st:?}");
    assert!(!st[0].0 && st[0].1.contains("bad CRC"), "{st:?}");
}

#[tokio::test]
async fn wire_compatible_with_pymodbus() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let pty = PtyPair::new(dir.path());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pymodbus_rtu_server.py");
    let mut server = Process::new("/usr/bin/python3")
        .arg(&script)
        .arg(&pty.a)
        .arg("115200")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("python3: {e}"));
    // It prints "serving" once its imports worked (apt-get install python3-pymodbus python3-serial-asyncio).
    let mut out = server.stdout.take().unwrap_or_else(|| panic!("no stdout"));
    let mut line = [0u8; 7];
    let ok = std::io::Read::read_exact(&mut out, &mut line).is_ok() && &line == b"serving";
    if !ok {
        let _ = server.kill();
        panic!("pymodbus server did not start (apt-get install python3-pymodbus python3-serial-asyncio)");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut u32p = point("wide", "holding:20");
    u32p.dtype = DataType::U32;
    u32p.word_order = Order::Big;
    let mut setp = point("setpoint", "holding:50");
    setp.writable = true;
    let mut coil = point("odd", "coil:3");
    coil.dtype = DataType::Bool;
    let driver = ModbusDriver::new(
        bus(&pty.b, 300, 100),
        vec![
            device(
                "p1",
                1,
                100,
                vec![point("a", "holding:10"), u32p, coil, setp],
            ),
            device("p2", 2, 100, vec![point("a", "holding:10")]),
        ],
    );
    let r = start(driver);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let outcome = r
        .ask(
            Command::SetProperties {
                child: "p1".into(),
                service: "s".into(),
                properties: BTreeMap::from([("setpoint".to_string(), Value::UInt(4321))]),
            },
            Duration::from_secs(3),
        )
        .await;
    // Time for the next polls (every 100 ms) to read the written value back.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ev = r.finish().await;
    let _ = server.kill();
    let _ = server.wait();

    let p1 = reports(&ev, "p1");
    assert!(!p1.is_empty(), "pymodbus unit 1 read");
    let first = &p1[0].properties;
    assert_eq!(first["a"], Value::UInt(1010));
    // Registers 20, 21 = 1020, 1021 big-endian words.
    assert_eq!(first["wide"], Value::UInt((1020u64 << 16) | 1021));
    assert_eq!(first["odd"], Value::Bool(true));
    assert_eq!(reports(&ev, "p2")[0].properties["a"], Value::UInt(2010));
    match outcome {
        CommandOutcome::Done(v) => {
            assert_eq!(
                v["s"]["setpoint"],
                Value::UInt(4321),
                "read back after write"
            )
        }
        other => panic!("write through pymodbus: {other:?}"),
    }
    assert!(
        p1.iter()
            .any(|r| r.properties.get("setpoint") == Some(&Value::UInt(4321))),
        "the written value is polled afterwards"
    );
}
