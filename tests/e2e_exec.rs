//! External drivers end to end: the `fieldgate` binary runs the documented example program
//! (`drivers/exec/examples/thermostat.py`) on an exec bus, with a real mosquitto and the test
//! platform. Readings reach the platform; a platform command with a checked parameter reaches
//! the program and its result comes back; an out-of-range one never does; SIGTERM stops the
//! program with the gateway (no process left behind), and so does a SIGKILL of the daemon.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

/// Processes whose command line mentions `needle`.
fn processes_with(needle: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(needle) {
                out.push(cmd);
            }
        }
    }
    out
}

#[test]
fn an_external_driver_program_reports_and_takes_commands() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    // A private copy, so the process check below only sees this test's program.
    let script = dir.path().join("thermostat-under-test.py");
    std::fs::copy(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("drivers/exec/examples/thermostat.py"),
        &script,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let broker = Mosquitto::start(dir.path());
    let platform = TestPlatform::start(broker.port, "gw_exec");
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
device_id = "gw_exec"
secret = "s"

[store]
path = "{dir}/fg.db"

[[bus]]
name = "ext"
driver = "exec"
command = ["python3", "{script}"]
stop_grace = "3s"

[profile.thermo]
kind = "exec"
product_id = "thermo"
service = "thermostat"

[[profile.thermo.command]]
name = "set_setpoint"
params = [{{ name = "value", type = "float", min = 5.0, max = 30.0 }}]

[[device]]
node_id = "office"
bus = "ext"
profile = "thermo"
options = {{ interval = 0.2, setpoint = 21.0 }}
"#,
            dir = dir.path().display(),
            mqtt = broker.port,
            script = script.display(),
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let mut gw = Gateway::start(&cfg);

    wait_until(Duration::from_secs(20), "thermostat readings", || {
        platform
            .reports()
            .iter()
            .filter(|(d, s)| d == "thermo_office" && s["service_id"] == "thermostat")
            .count()
            >= 3
    });
    assert!(platform
        .statuses()
        .iter()
        .any(|(d, s)| d == "thermo_office" && s == "ONLINE"));

    let r = platform.ask("commands", "s1", br#"{"object_device_id":"thermo_office","service_id":"thermostat","command_name":"set_setpoint","paras":{"value":24.5}}"#);
    assert_eq!(r["result_code"], json!(0), "{r}");
    assert_eq!(r["paras"]["setpoint"], json!(24.5), "{r}");
    wait_until(Duration::from_secs(10), "the new setpoint reported", || {
        platform
            .reports()
            .iter()
            .any(|(d, s)| d == "thermo_office" && s["properties"]["setpoint"] == json!(24.5))
    });
    // IoTDA property gets always name a service; an exec child answers for it.
    let r = platform.ask(
        "properties/get",
        "g1",
        br#"{"object_device_id":"thermo_office","service_id":"thermostat"}"#,
    );
    assert_eq!(
        r["services"][0]["properties"]["setpoint"],
        json!(24.5),
        "{r}"
    );
    let r = platform.ask("commands", "s2", br#"{"object_device_id":"thermo_office","service_id":"thermostat","command_name":"set_setpoint","paras":{"value":99}}"#);
    assert_ne!(r["result_code"], json!(0), "out of range is refused: {r}");
    std::thread::sleep(Duration::from_millis(600));
    assert!(
        !platform
            .reports()
            .iter()
            .any(|(d, s)| d == "thermo_office" && s["properties"]["setpoint"] == json!(99.0)),
        "the refused value never reached the program"
    );

    let needle = script.display().to_string();
    assert_eq!(processes_with(&needle).len(), 1, "the program runs once");
    assert_eq!(gw.terminate(), Some(0));
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        processes_with(&needle).is_empty(),
        "the program stops with the gateway"
    );
}

/// A gateway (IoTDA to a port nobody listens on) with one exec bus running `command` (a TOML
/// array) and one exec child `one`; `bus_extra` adds lines to the bus table.
fn one_program(
    dir: &std::path::Path,
    gw: &str,
    command: &str,
    bus_extra: &str,
) -> std::path::PathBuf {
    write_config(
        dir,
        "fieldgate.toml",
        &format!("dialect = \"iotda\"\nhost = \"127.0.0.1\"\nport = 9\ntls = false\ndevice_id = \"{gw}\"\nsecret = \"s\""),
        &format!(
            "[[bus]]\nname = \"ext\"\ndriver = \"exec\"\ncommand = {command}\n{bus_extra}\n\n[profile.thing]\nkind = \"exec\"\nproduct_id = \"thing\"\n\n[[device]]\nnode_id = \"one\"\nbus = \"ext\"\nprofile = \"thing\"\n"
        ),
    )
}

/// Outside systemd nobody else cleans up: a SIGKILLed daemon takes its program with it, even
/// one that never reads its stdin (so never sees it close) and ignores SIGTERM.
#[test]
fn a_killed_daemon_takes_its_driver_programs_with_it() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let marker = dir.path().join("stubborn-driver");
    let cfg = one_program(
        dir.path(),
        "gw_kill",
        &format!(
            r#"["python3", "-c", "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nwhile True: time.sleep(1)", "{}"]"#,
            marker.display()
        ),
        "",
    );
    let needle = marker.display().to_string();
    let mut gw = Gateway::start(&cfg);
    wait_until(Duration::from_secs(20), "the program running", || {
        processes_with(&needle).len() == 1
    });
    gw.signal(9);
    wait_until(
        Duration::from_secs(5),
        "the program gone after SIGKILL",
        || processes_with(&needle).is_empty(),
    );
    // (The program can go a moment before the daemon's last threads are.)
    wait_until(Duration::from_secs(5), "the daemon gone", || !gw.running());
}

/// The limits are one story: a program that needs 9 s to shut down after `stop` gets them when
/// `stop_grace = "12s"` (the bus waits stop_grace + 2 s, the daemon the slowest bus + 3 s),
/// and the daemon then exits cleanly — well inside the unit's 30 s.
#[test]
fn a_long_stop_grace_is_honoured_end_to_end() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let done = dir.path().join("shut-down-cleanly");
    let script = dir.path().join("slow-stop.py");
    std::fs::write(
        &script,
        format!(
            r#"import json, sys, time
start = json.loads(sys.stdin.readline())
print(json.dumps({{"type": "status", "child": "one", "online": True}}), flush=True)
for line in sys.stdin:
    if json.loads(line).get("type") == "stop":
        time.sleep(9)
        open("{done}", "w").write("ok")
        sys.exit(0)
"#,
            done = done.display()
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let cfg = one_program(
        dir.path(),
        "gw_slow",
        &format!(r#"["python3", "{}"]"#, script.display()),
        "stop_grace = \"12s\"",
    );
    let mut gw = Gateway::start(&cfg);
    wait_until(Duration::from_secs(20), "the program running", || {
        processes_with(&script.display().to_string()).len() == 1
    });
    std::thread::sleep(Duration::from_millis(500));
    let t0 = std::time::Instant::now();
    assert_eq!(gw.terminate(), Some(0), "{:?}", gw.log());
    let took = t0.elapsed();
    assert!(
        done.exists(),
        "the program finished its own shutdown (took {took:?}): {:?}",
        gw.log()
    );
    assert!(took < Duration::from_secs(15), "{took:?}");
}
