//! The exec bus task driving real programs: the documented example (`examples/thermostat.py`)
//! through the whole protocol — start with options, statuses, reports, get, a command with a
//! parameter, an unsupported command, a crash on request and the restart after it, a clean stop
//! — and a misbehaving program whose garbage, overlong, unknown-child and non-scalar lines are
//! skipped while its one good line gets through, and which is killed when it ignores `stop`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use fieldgate_driver::testing::{start, statuses, values};
use fieldgate_driver::{Command, CommandOutcome, ErrorCode, Event, Value};
use fieldgate_exec::{ExecBus, ExecDevice, ExecDriver};
use serde_json::json;

fn bus(argv: Vec<String>) -> ExecBus {
    ExecBus {
        name: "ext".into(),
        argv,
        env: Vec::new(),
        working_dir: None,
        restart_min: Duration::from_millis(200),
        restart_max: Duration::from_secs(2),
        max_line: 4096,
        max_properties: fieldgate_exec::DEFAULT_MAX_PROPERTIES,
        stop_grace: Duration::from_millis(800),
    }
}

fn invoke(child: &str, name: &str, params: BTreeMap<String, Value>) -> Command {
    Command::Invoke {
        child: child.into(),
        service: "thermostat".into(),
        name: name.into(),
        params,
    }
}

#[tokio::test]
async fn the_documented_example_through_the_whole_protocol() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/thermostat.py");
    let driver = ExecDriver::new(
        bus(vec!["python3".into(), script.display().to_string()]),
        vec![
            ExecDevice {
                node_id: "t1".into(),
                options: json!({"interval": 0.1, "setpoint": 21.0, "start": 18.0}),
            },
            ExecDevice {
                node_id: "t2".into(),
                options: json!({"interval": 0.1}),
            },
        ],
    );
    let mut r = start(driver);
    r.until("both ONLINE and reporting", |ev| {
        values(ev, "t1").len() >= 3 && values(ev, "t2").len() >= 3
    })
    .await;
    assert_eq!(
        values(&r.seen, "t1")[0]["setpoint"],
        Value::Float(21.0),
        "options reached the program"
    );

    let got = r
        .ask(
            Command::GetProperties {
                child: "t1".into(),
                service: None,
            },
            Duration::from_secs(2),
        )
        .await;
    assert!(
        matches!(&got, CommandOutcome::Done(v) if v["thermostat"].contains_key("temperature")),
        "{got:?}"
    );
    let set = r
        .ask(
            invoke(
                "t1",
                "set_setpoint",
                BTreeMap::from([("value".to_string(), Value::Float(25.5))]),
            ),
            Duration::from_secs(2),
        )
        .await;
    assert_eq!(
        set,
        CommandOutcome::Done(BTreeMap::from([(
            "thermostat".to_string(),
            BTreeMap::from([("setpoint".to_string(), Value::Float(25.5))])
        )]))
    );
    let nope = r
        .ask(
            invoke("t1", "explode", BTreeMap::new()),
            Duration::from_secs(2),
        )
        .await;
    assert!(
        matches!(
            nope,
            CommandOutcome::Failed {
                code: ErrorCode::Unsupported,
                ..
            }
        ),
        "{nope:?}"
    );

    // Crash on request: the command fails, both children go OFFLINE with the exit status, the
    // program is restarted and they come back.
    let crash = r
        .ask(
            invoke("t1", "crash", BTreeMap::new()),
            Duration::from_secs(2),
        )
        .await;
    assert!(matches!(crash, CommandOutcome::Failed { .. }), "{crash:?}");
    r.until("OFFLINE after the crash", |ev| {
        statuses(ev, "t1")
            .iter()
            .any(|(on, why)| !on && why.contains("exited with status 3"))
    })
    .await;
    let before = values(&r.seen, "t1").len();
    r.until("ONLINE again after the restart", |ev| {
        statuses(ev, "t1").last().is_some_and(|s| s.0) && values(ev, "t1").len() > before + 2
    })
    .await;
    // The restarted program starts from its options again.
    assert_eq!(
        values(&r.seen, "t1").last().map(|p| p["setpoint"].clone()),
        Some(Value::Float(21.0))
    );

    let t0 = Instant::now();
    let ev = r.finish().await;
    let took = t0.elapsed();
    assert!(
        took < Duration::from_millis(700),
        "the example exits on `stop` without being killed: {took:?}"
    );
    for c in ["t1", "t2"] {
        let st = statuses(&ev, c);
        assert_eq!(
            st.iter().map(|s| s.0).collect::<Vec<_>>(),
            vec![true, false, true],
            "{c}: {st:?}"
        );
    }
}

#[tokio::test]
async fn protocol_breaches_are_skipped_and_a_stubborn_program_is_killed() {
    let program = r#"
import sys, time
sys.stdin.readline()
print("hello, not json")
print('{"type":"report","child":"t1","properties":{"t":' + "1" * 10000 + '}}')
print('{"type":"report","child":"ghost","properties":{"t":1}}')
print('{"type":"report","child":"t1","properties":{"t":{"nested":1}}}')
print('{"type":"launch","child":"t1"}')
print('{"type":"report","child":"t1","properties":{"t":7}}', flush=True)
print("stderr chatter", file=sys.stderr, flush=True)
while True:
    time.sleep(1)   # ignores stop and a closed stdin
"#;
    let driver = ExecDriver::new(
        bus(vec!["python3".into(), "-c".into(), program.into()]),
        vec![ExecDevice {
            node_id: "t1".into(),
            options: json!(null),
        }],
    );
    let mut r = start(driver);
    r.until("the one good report", |ev| !values(ev, "t1").is_empty())
        .await;
    // Counter updates go out at most once a second: give the last one time to follow.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let t0 = Instant::now();
    let ev = r.finish().await;
    let took = t0.elapsed();
    assert_eq!(
        values(&ev, "t1"),
        vec![BTreeMap::from([("t".to_string(), Value::UInt(7))])]
    );
    let bad = ev.iter().rev().find_map(|e| match e {
        Event::Counters { counters, .. } => counters.get("bad_lines").copied(),
        _ => None,
    });
    assert_eq!(
        bad,
        Some(5),
        "five protocol breaches counted for `fieldgate status`"
    );
    assert_eq!(
        statuses(&ev, "t1"),
        vec![(true, String::new())],
        "a report brings the child ONLINE"
    );
    assert!(
        took >= Duration::from_millis(700) && took < Duration::from_secs(3),
        "killed after the 800 ms grace: {took:?}"
    );
}

#[tokio::test]
async fn a_program_that_cannot_start_is_the_offline_reason() {
    let driver = ExecDriver::new(
        bus(vec!["/nonexistent/fieldgate-driver".into()]),
        vec![ExecDevice {
            node_id: "t1".into(),
            options: json!(null),
        }],
    );
    let mut r = start(driver);
    r.until("OFFLINE", |ev| !statuses(ev, "t1").is_empty())
        .await;
    let refused = r
        .ask(invoke("t1", "x", BTreeMap::new()), Duration::from_secs(2))
        .await;
    let ev = r.finish().await;
    let st = statuses(&ev, "t1");
    assert_eq!(st.len(), 1, "once, not per retry: {st:?}");
    assert!(
        st[0]
            .1
            .contains("cannot start `/nonexistent/fieldgate-driver`"),
        "{st:?}"
    );
    assert!(matches!(
        refused,
        CommandOutcome::Failed {
            code: ErrorCode::Offline,
            ..
        }
    ));
}
