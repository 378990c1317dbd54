//! The serial-instrument bus task over socat pseudo-terminal pairs, with a scripted
//! instrument on the far end: a scale asked for its weight (between good answers it sends
//! noise, overlong lines, bad checksums and partial frames), a GPS and a weather station
//! streaming unprompted on one line, and a command template with a parameter.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fieldgate_driver::testing::{reports, start, statuses};
use fieldgate_driver::{
    Command, CommandOutcome, DeclaredCommand, Event, ParamKind, ParamSpec, Value,
};
use fieldgate_serial::frame::Framing;
use fieldgate_serial::parse::{Checksum, Extract, FieldSpec, FieldType, Source};
use fieldgate_serial::testing::PtyPair;
use fieldgate_serial::{
    AsciiBus, AsciiDevice, Instrument, Parity, PortSettings, SerialAsciiDriver, TemplateCommand,
};
use regex::Regex;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

fn settings(path: &Path) -> PortSettings {
    PortSettings {
        path: path.display().to_string(),
        baud: 9600,
        parity: Parity::None,
        data_bits: 8,
        stop_bits: 1,
    }
}

fn bus(path: &Path) -> AsciiBus {
    AsciiBus {
        name: "com1".into(),
        port: settings(path),
        framing: Framing::Terminator(b"\r\n".to_vec()),
        max_frame: 64,
        timeout: Duration::from_millis(150),
        offline_after: 2,
        reconnect_min: Duration::from_millis(50),
        reconnect_max: Duration::from_millis(200),
    }
}

fn re(s: &str) -> Regex {
    Regex::new(s).unwrap_or_else(|e| panic!("{e}"))
}

fn field(prop: &str, source: Source, kind: FieldType) -> FieldSpec {
    FieldSpec {
        service: "s".into(),
        property: prop.into(),
        source,
        kind,
        scale: None,
        offset: None,
    }
}

fn scale_instrument() -> Instrument {
    Instrument {
        request: Some(b"SI\r\n".to_vec()),
        matcher: None,
        checksum: Some(Checksum::Xor8),
        extract: Extract::Regex(re(r"^(?P<st>ST|US),GS,(?P<w>[-+0-9. ]+)kg,")),
        fields: vec![
            field("status", Source::Name("st".into()), FieldType::Text),
            FieldSpec {
                scale: Some(1000.0),
                ..field("grams", Source::Name("w".into()), FieldType::Float)
            },
        ],
        stale_after: Duration::from_secs(60),
        commands: vec![TemplateCommand {
            decl: DeclaredCommand {
                service: "s".into(),
                name: "zero_band".into(),
                params: vec![ParamSpec {
                    name: "band".into(),
                    kind: ParamKind::Int {
                        min: Some(0),
                        max: Some(9),
                    },
                }],
            },
            template: "Z{band}\r\n".into(),
            expect: Some(re("^(OK|ERR)")),
        }],
    }
}

fn xor(s: &str) -> String {
    format!("{s}{:02X}", s.bytes().fold(0u8, |a, b| a ^ b))
}

/// The scale's declared command `name` with its parameters.
fn invoke(child: &str, name: &str, params: BTreeMap<String, Value>) -> Command {
    Command::Invoke {
        child: child.into(),
        service: "s".into(),
        name: name.into(),
        params,
    }
}

#[tokio::test]
async fn a_scale_is_asked_and_junk_on_the_line_never_becomes_a_value() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let pty = PtyPair::new(dir.path());
    let port = fieldgate_serial::open(&settings(&pty.a)).unwrap_or_else(|e| panic!("{e}"));
    let received = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen = received.clone();
    // The scripted scale: the n-th request gets the n-th behaviour, cycling.
    tokio::spawn(async move {
        let (r, mut w) = tokio::io::split(port);
        let mut lines = BufReader::new(r).lines();
        let mut n = 0u32;
        while let Ok(Some(line)) = lines.next_line().await {
            let line = line.trim_end_matches('\r').to_string();
            if let Ok(mut s) = seen.lock() {
                s.push(line.clone());
            }
            if line.starts_with('Z') {
                let _ = w.write_all(b"OK\r\n").await;
                continue;
            }
            n += 1;
            let reply: Vec<u8> = match n % 6 {
                // noise before a good answer: the answer still counts
                1 => [
                    b"\x00\xff".as_slice(),
                    xor("ST,GS,+0012.345kg,").as_bytes(),
                    b"\r\n",
                ]
                .concat(),
                // a bad checksum: no value
                2 => b"ST,GS,+9999.999kg,00\r\n".to_vec(),
                // an overlong line, then a good answer
                3 => [
                    vec![b'#'; 200],
                    b"\r\n".to_vec(),
                    xor("US,GS,-0000.500kg,").into_bytes(),
                    b"\r\n".to_vec(),
                ]
                .concat(),
                // half a frame, then silence: timeout with "incomplete"
                4 => b"ST,GS,+00".to_vec(),
                // not a number
                5 => [xor("ST,GS,++kg,").as_bytes(), b"\r\n"].concat(),
                _ => [xor("ST,GS,+0001.000kg,").as_bytes(), b"\r\n"].concat(),
            };
            let _ = w.write_all(&reply).await;
        }
    });
    let driver = SerialAsciiDriver::new(
        bus(&pty.b),
        vec![AsciiDevice {
            node_id: "scale".into(),
            poll: Duration::from_millis(100),
            instrument: Arc::new(scale_instrument()),
        }],
    );
    let r = start(driver);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let ok = r
        .ask(
            invoke(
                "scale",
                "zero_band",
                BTreeMap::from([("band".to_string(), Value::Int(7))]),
            ),
            Duration::from_secs(2),
        )
        .await;
    let ev = r.finish().await;

    let rs = reports(&ev, "scale");
    assert!(rs.len() >= 6, "{} reports", rs.len());
    for r in &rs {
        let g = &r.properties["grams"];
        assert!(
            [
                Value::Float(12345.0),
                Value::Float(-500.0),
                Value::Float(1000.0)
            ]
            .contains(g),
            "only values from valid frames: {g:?}"
        );
    }
    assert!(rs
        .iter()
        .any(|r| r.properties["status"] == Value::Text("US".into())));
    // Two bad exchanges in a row (4 then 5) take it OFFLINE (offline_after = 2); it comes back.
    let st = statuses(&ev, "scale");
    assert!(
        st.iter()
            .any(|(on, why)| !on && why.contains("not a number")),
        "{st:?}"
    );
    assert!(
        st.windows(2).all(|w| w[0].0 != w[1].0),
        "transitions only: {st:?}"
    );
    assert!(st.last().is_some_and(|s| s.0) || st.len() >= 3, "{st:?}");
    match ok {
        CommandOutcome::Done(v) => assert_eq!(v["s"]["reply"], Value::Text("OK".into())),
        other => panic!("{other:?}"),
    }
    let got = received.lock().map(|v| v.clone()).unwrap_or_default();
    assert!(
        got.iter().any(|l| l == "Z7"),
        "the template reached the wire: {got:?}"
    );
    assert!(got.iter().filter(|l| *l == "SI").count() >= 10);
    // What was skipped is counted for `fieldgate status`.
    let last = ev.iter().rev().find_map(|e| match e {
        Event::Counters { bus, counters } if bus == "com1" => Some(counters.clone()),
        _ => None,
    });
    let c = last.unwrap_or_else(|| panic!("no counters event"));
    assert!(c["overlong_frames"] >= 1, "{c:?}");
    assert!(c["bad_frames"] >= 2, "{c:?}");
}

#[tokio::test]
async fn stream_instruments_share_a_line_and_go_offline_when_silent() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let pty = PtyPair::new(dir.path());
    let mut port = fieldgate_serial::open(&settings(&pty.a)).unwrap_or_else(|e| panic!("{e}"));
    let gps = Instrument {
        request: None,
        matcher: Some(re(r"^\$GPGGA,")),
        checksum: Some(Checksum::Nmea),
        extract: Extract::Split(",".into()),
        fields: vec![
            field("sats", Source::Index(7), FieldType::Int),
            field("altitude", Source::Index(9), FieldType::Float),
        ],
        stale_after: Duration::from_millis(600),
        commands: Vec::new(),
    };
    let ws = Instrument {
        request: None,
        matcher: Some(re("^WS,")),
        checksum: None,
        extract: Extract::Regex(re(r"^WS,T=(?P<t>-?[0-9.]+),H=(?P<h>[0-9]+)$")),
        fields: vec![
            field("temperature", Source::Name("t".into()), FieldType::Float),
            field("humidity", Source::Name("h".into()), FieldType::Int),
        ],
        stale_after: Duration::from_secs(30),
        commands: Vec::new(),
    };
    let driver = SerialAsciiDriver::new(
        bus(&pty.b),
        vec![
            AsciiDevice {
                node_id: "gps".into(),
                poll: Duration::ZERO,
                instrument: Arc::new(gps),
            },
            AsciiDevice {
                node_id: "ws".into(),
                poll: Duration::from_millis(300),
                instrument: Arc::new(ws),
            },
        ],
    );
    let r = start(driver);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let good = b"$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47\r\n";
    let corrupt = b"$GPGGA,123519,4807.038,N,01131.000,E,1,09,0.9,999.9,M,46.9,M,,*47\r\n";
    for i in 0..20 {
        let mut chunk: Vec<u8> = if i % 4 == 3 {
            corrupt.to_vec()
        } else {
            good.to_vec()
        };
        chunk.extend_from_slice(format!("WS,T=21.{i},H=40\r\n").as_bytes());
        if i % 5 == 0 {
            chunk.extend_from_slice(b"\xfe\xfe line noise\r\n");
        }
        let _ = port.write_all(&chunk).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Then the line goes quiet: the GPS (600 ms staleness) goes OFFLINE, the station (30 s) not.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let ev = r.finish().await;

    let g = reports(&ev, "gps");
    assert_eq!(g.len(), 15, "every good GGA sentence, no corrupt one");
    assert!(g.iter().all(|r| r.properties["sats"] == Value::Int(8)
        && r.properties["altitude"] == Value::Float(545.4)));
    let w = reports(&ev, "ws");
    // 20 frames over ~1 s, at most one report per 300 ms
    assert!((3..=5).contains(&w.len()), "{} station reports", w.len());
    assert_eq!(w[0].properties["humidity"], Value::Int(40));
    let gs = statuses(&ev, "gps");
    assert_eq!(gs.first().map(|s| s.0), Some(true));
    assert!(
        gs.iter()
            .any(|(on, why)| !on && why.contains("no valid frame")),
        "{gs:?}"
    );
    assert_eq!(statuses(&ev, "ws"), vec![(true, String::new())]);
}

#[tokio::test]
async fn a_missing_port_is_the_offline_reason_and_the_driver_keeps_running() {
    let driver = SerialAsciiDriver::new(
        bus(Path::new("/dev/fieldgate-no-such-port")),
        vec![AsciiDevice {
            node_id: "scale".into(),
            poll: Duration::from_millis(100),
            instrument: Arc::new(scale_instrument()),
        }],
    );
    let r = start(driver);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let refused = r
        .ask(
            invoke("scale", "zero_band", BTreeMap::new()),
            Duration::from_secs(2),
        )
        .await;
    let ev = r.finish().await;
    let st = statuses(&ev, "scale");
    assert_eq!(st.len(), 1, "{st:?}");
    assert!(
        !st[0].0 && st[0].1.contains("fieldgate-no-such-port"),
        "{st:?}"
    );
    assert!(matches!(refused, CommandOutcome::Failed { .. }));
}
