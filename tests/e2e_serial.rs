//! Serial instruments end to end: the `fieldgate` binary with a serial-ascii bus on one end of a
//! socat pty pair and a scripted scale (a thread) on the other, a real mosquitto and the test
//! platform. Weights reach the platform as reports; a platform command fills its template and
//! reaches the wire; hostile parameters (out of range, line-break injection, unknown names) are
//! refused with their codes and never reach the wire; the scale going silent is one OFFLINE.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use serde_json::json;

#[test]
fn a_serial_scale_reports_and_takes_commands_through_the_platform() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let pty = PtyPair::new(dir.path());
    let broker = Mosquitto::start(dir.path());
    let platform = TestPlatform::start(broker.port, "gw_ser");

    // The scale: answers "SI" with its weight, "PT n" with an ack; goes silent on request.
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let silent = Arc::new(AtomicBool::new(false));
    {
        let (lines, silent) = (lines.clone(), silent.clone());
        let path = pty.a.clone();
        std::thread::spawn(move || {
            let Ok(f) = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
            else {
                return;
            };
            let Ok(mut w) = f.try_clone() else { return };
            let mut r = BufReader::new(f);
            let mut n = 0u32;
            let mut line = String::new();
            while r.read_line(&mut line).is_ok_and(|k| k > 0) {
                let l = line.trim_end().to_string();
                line.clear();
                if let Ok(mut v) = lines.lock() {
                    v.push(l.clone());
                }
                if silent.load(Ordering::SeqCst) {
                    continue;
                }
                let reply = if l == "SI" {
                    n += 1;
                    // Once, an overlong line of noise ahead of the answer.
                    let noise = if n == 3 {
                        format!("{}\r\n", "#".repeat(300))
                    } else {
                        String::new()
                    };
                    format!("{noise}ST,GS,{:+09.3}kg\r\n", 10.0 + f64::from(n % 5))
                } else if let Some(v) = l.strip_prefix("PT ") {
                    format!("PT A {v}\r\n")
                } else {
                    "ERR\r\n".to_string()
                };
                let _ = w.write_all(reply.as_bytes());
            }
        });
    }

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
device_id = "gw_ser"
secret = "s"

[store]
path = "{dir}/fg.db"

[[bus]]
name = "com"
driver = "serial-ascii"
port = "{tty}"
baud = 9600
terminator = "\r\n"
timeout = "300ms"
offline_after = 2

[profile.scale]
product_id = "scale"
service = "weight"
request = "SI\r\n"
regex = '^(?P<status>ST|US),GS,(?P<kg>[-+0-9.]+)kg$'

[[profile.scale.field]]
property = "kg"

[[profile.scale.field]]
property = "status"
type = "string"

[[profile.scale.command]]
name = "preset_tare"
send = "PT {{grams}}\r\n"
params = [{{ name = "grams", type = "int", min = 0, max = 50000 }}]
expect = "^PT A"

[[profile.scale.command]]
name = "label"
send = "LB {{text}}\r\n"
params = [{{ name = "text", type = "string", max_len = 8 }}]

[[device]]
node_id = "s1"
bus = "com"
profile = "scale"
poll = "200ms"
"#,
            dir = dir.path().display(),
            mqtt = broker.port,
            tty = pty.b.display(),
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let (code, out, err) = fieldgate(&["check", "-c", &cfg.to_string_lossy()]);
    assert_eq!(code, 0, "{out}{err}");
    let mut gw = Gateway::start(&cfg);

    wait_until(Duration::from_secs(20), "weights reported", || {
        platform
            .reports()
            .iter()
            .filter(|(d, s)| d == "scale_s1" && s["service_id"] == "weight")
            .count()
            >= 5
    });
    for (_, s) in platform.reports().iter().filter(|(d, _)| d == "scale_s1") {
        let kg = s["properties"]["kg"].as_f64().unwrap_or(-1.0);
        assert!((10.0..=14.0).contains(&kg), "{s}");
        assert_eq!(s["properties"]["status"], "ST");
    }

    let r = platform.ask("commands", "t1", br#"{"object_device_id":"scale_s1","service_id":"weight","command_name":"preset_tare","paras":{"grams":1250}}"#);
    assert_eq!(r["result_code"], json!(0), "{r}");
    assert_eq!(r["paras"]["reply"], json!("PT A 1250"), "{r}");

    let hostile = [
        (r#"{"grams":50001}"#, "preset_tare"),
        (r#"{"grams":"12"}"#, "preset_tare"),
        (r#"{"grams":1.5}"#, "preset_tare"),
        (r#"{}"#, "preset_tare"),
        (r#"{"grams":1,"more":2}"#, "preset_tare"),
        (r#"{"text":"A\r\nSI"}"#, "label"),
        (r#"{"text":"123456789"}"#, "label"),
        (r#"{"text":"ok"}"#, "no_such_command"),
    ];
    for (i, (paras, name)) in hostile.iter().enumerate() {
        let body = format!(
            r#"{{"object_device_id":"scale_s1","service_id":"weight","command_name":"{name}","paras":{paras}}}"#
        );
        let r = platform.ask("commands", &format!("h{i}"), body.as_bytes());
        assert_ne!(r["result_code"], json!(0), "{paras} must be refused: {r}");
    }
    let r = platform.ask("commands", "l1", br#"{"object_device_id":"scale_s1","service_id":"weight","command_name":"label","paras":{"text":"LOT 7"}}"#);
    assert_eq!(r["result_code"], json!(0), "{r}");
    std::thread::sleep(Duration::from_millis(300));
    let wire = lines.lock().map(|v| v.clone()).unwrap_or_default();
    let commands: Vec<&String> = wire.iter().filter(|l| *l != "SI").collect();
    assert_eq!(
        commands,
        vec!["PT 1250", "LB LOT 7"],
        "only valid commands reached the wire"
    );

    silent.store(true, Ordering::SeqCst);
    wait_until(Duration::from_secs(10), "OFFLINE", || {
        platform
            .statuses()
            .iter()
            .any(|(d, s)| d == "scale_s1" && s == "OFFLINE")
    });
    std::thread::sleep(Duration::from_millis(800));
    let offline = platform
        .statuses()
        .iter()
        .filter(|(d, s)| d == "scale_s1" && s == "OFFLINE")
        .count();
    assert_eq!(offline, 1, "one OFFLINE, not one per poll");
    assert_eq!(
        gw.count(&["device OFFLINE", "timeout"]),
        1,
        "{:?}",
        gw.log()
    );
    // The skipped noise shows in `fieldgate status`.
    let cfg_s = cfg.to_string_lossy().to_string();
    wait_until(Duration::from_secs(5), "skipped frames in status", || {
        let (_, out, _) = fieldgate(&["status", "--json", "-c", &cfg_s]);
        serde_json::from_str::<serde_json::Value>(&out)
            .ok()
            .and_then(|j| j["buses"][0]["skipped"]["overlong_frames"].as_u64())
            .is_some_and(|n| n >= 1)
    });
    let (_, text, _) = fieldgate(&["status", "-c", &cfg_s]);
    assert!(
        text.contains("skipped:") && text.contains("overlong_frames=1"),
        "{text}"
    );
    assert_eq!(gw.terminate(), Some(0));
}

/// A printable terminator (`;`) is a framing byte a text parameter could carry: `check` warns
/// about the template, a value containing it is refused with the bad-value code before it
/// reaches the wire (it would have put a second command there), and a declared `pattern`
/// refuses what it does not match.
#[test]
fn framing_bytes_never_reach_the_wire_inside_a_parameter() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let pty = PtyPair::new(dir.path());
    let broker = Mosquitto::start(dir.path());
    let platform = TestPlatform::start(broker.port, "gw_semi");

    // The instrument: commands end with `;`; it answers "SI" with a weight.
    let wire = Arc::new(Mutex::new(Vec::<String>::new()));
    {
        let wire = wire.clone();
        let path = pty.a.clone();
        std::thread::spawn(move || {
            let Ok(f) = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
            else {
                return;
            };
            let Ok(mut w) = f.try_clone() else { return };
            let mut r = BufReader::new(f);
            let mut cmd = Vec::new();
            while r.read_until(b';', &mut cmd).is_ok_and(|k| k > 0) {
                let c = String::from_utf8_lossy(&cmd)
                    .trim_end_matches(';')
                    .to_string();
                cmd.clear();
                if let Ok(mut v) = wire.lock() {
                    v.push(c.clone());
                }
                let reply = if c == "SI" { "ST,+1.000kg;" } else { "0;" };
                let _ = w.write_all(reply.as_bytes());
            }
        });
    }

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
device_id = "gw_semi"
secret = "s"

[store]
path = "{dir}/fg.db"

[[bus]]
name = "com"
driver = "serial-ascii"
port = "{tty}"
terminator = ";"
timeout = "300ms"

[profile.scale]
product_id = "scale"
service = "weight"
request = "SI;"
regex = '^ST,(?P<kg>[-+0-9.]+)kg$'

[[profile.scale.field]]
property = "kg"

[[profile.scale.command]]
name = "label"
send = "LBL {{text}};"
params = [{{ name = "text", type = "string", max_len = 16 }}]

[[profile.scale.command]]
name = "lot"
send = "LOT {{code}};"
params = [{{ name = "code", type = "string", pattern = "[A-Z0-9]{{1,8}}" }}]

[[device]]
node_id = "s1"
bus = "com"
profile = "scale"
poll = "200ms"
"#,
            dir = dir.path().display(),
            mqtt = broker.port,
            tty = pty.b.display(),
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let (code, out, err) = fieldgate(&["check", "-c", &cfg.to_string_lossy()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        err.contains("warning") && err.contains("`text`") && err.contains("\";\""),
        "check warns about the template: {err}"
    );
    assert!(
        !err.contains("`code`"),
        "a parameter with a pattern is not warned about: {err}"
    );

    let mut gw = Gateway::start(&cfg);
    wait_until(Duration::from_secs(20), "weights reported", || {
        platform.reports().iter().any(|(d, _)| d == "scale_s1")
    });
    let ask = |id: &str, name: &str, paras: &str| {
        let body = format!(
            r#"{{"object_device_id":"scale_s1","service_id":"weight","command_name":"{name}","paras":{paras}}}"#
        );
        platform.ask("commands", id, body.as_bytes())
    };
    let r = ask("c1", "label", r#"{"text":"A;ZERO"}"#);
    assert_eq!(r["result_code"], json!(4), "{r}");
    let r = ask("c2", "lot", r#"{"code":"a;b"}"#);
    assert_eq!(r["result_code"], json!(4), "{r}");
    let r = ask("c3", "lot", r#"{"code":"LOT77"}"#);
    assert_eq!(r["result_code"], json!(0), "{r}");
    let r = ask("c4", "label", r#"{"text":"A B"}"#);
    assert_eq!(r["result_code"], json!(0), "{r}");
    std::thread::sleep(Duration::from_millis(300));
    let sent: Vec<String> = wire
        .lock()
        .map(|v| v.iter().filter(|c| *c != "SI").cloned().collect())
        .unwrap_or_default();
    assert_eq!(
        sent,
        vec!["LOT LOT77", "LBL A B"],
        "only whole, valid commands"
    );
    assert_eq!(gw.terminate(), Some(0));
}
