//! Process-level service behaviour: the systemd notify protocol (READY, STATUS, WATCHDOG,
//! RELOADING, STOPPING) over a real NOTIFY_SOCKET, graceful stop on SIGTERM, and secrets that
//! never reach the logs even at trace level; one instance per store; a store the daemon may not
//! write is left alone and named.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

fn config(dir: &Path, mqtt: u16, modbus: u16, secret: &str) -> std::path::PathBuf {
    let text = format!(
        r#"
[gateway]
runtime_dir = "{dir}/run"

[platform]
dialect = "iotda"
host = "127.0.0.1"
port = {mqtt}
tls = false
device_id = "gw_svc"
secret_file = "{dir}/secret"
reconnect_min = "200ms"
reconnect_max = "1s"

[store]
path = "{dir}/state/fg.db"

[[bus]]
name = "a"
driver = "modbus-tcp"
endpoint = "127.0.0.1:{modbus}"

[profile.p]
[[profile.p.point]]
property = "v"
address = "holding:0"

[[device]]
node_id = "d1"
bus = "a"
profile = "p"
poll = "100ms"
"#,
        dir = dir.display()
    );
    std::fs::write(dir.join("secret"), format!("{secret}\n")).unwrap_or_else(|e| panic!("{e}"));
    let path = dir.join("fieldgate.toml");
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
    path
}

/// Listen on a notify socket; every datagram is one message (`READY=1`, `STATUS=…` lines).
fn listen(path: &Path) -> Arc<Mutex<Vec<String>>> {
    let sock = UnixDatagram::bind(path).unwrap_or_else(|e| panic!("{e}"));
    let got = Arc::new(Mutex::new(Vec::new()));
    let g2 = got.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).to_string();
            if let Ok(mut g) = g2.lock() {
                g.extend(msg.lines().map(str::to_string));
            }
        }
    });
    got
}

fn seen(got: &Mutex<Vec<String>>) -> Vec<String> {
    got.lock().map(|g| g.clone()).unwrap_or_default()
}

#[test]
fn notify_protocol_watchdog_reload_and_graceful_stop() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let broker = Mosquitto::start(dir.path());
    let sim = ModbusSim::new(SimState::default());
    let cfg = config(dir.path(), broker.port, sim.port, "svc-secret");
    let notify = dir.path().join("notify.sock");
    let got = listen(&notify);
    let notify_s = notify.to_string_lossy().to_string();
    let mut gw = Gateway::start_with_env(
        &cfg,
        &[("NOTIFY_SOCKET", &notify_s), ("WATCHDOG_USEC", "1500000")],
    );

    let t = Duration::from_secs(10);
    wait_until(t, "READY=1", || seen(&got).iter().any(|m| m == "READY=1"));
    assert!(
        dir.path().join("state/fg.db").exists(),
        "READY only after the store is open"
    );
    wait_until(t, "two WATCHDOG=1 pings", || {
        seen(&got).iter().filter(|m| *m == "WATCHDOG=1").count() >= 2
    });
    wait_until(t, "STATUS= with the summary", || {
        seen(&got).iter().any(|m| {
            m.starts_with("STATUS=uplink connected · queue ") && m.ends_with("1/1 children online")
        })
    });

    gw.signal(1); // SIGHUP
    wait_until(t, "RELOADING=1 then READY=1", || {
        let s = seen(&got);
        s.iter()
            .position(|m| m == "RELOADING=1")
            .is_some_and(|i| s[i..].iter().any(|m| m == "READY=1"))
    });
    assert!(gw.running(), "SIGHUP must not kill the daemon");

    let started = std::time::Instant::now();
    assert_eq!(gw.terminate(), Some(0), "{}", gw.log().join("\n"));
    assert!(
        started.elapsed() < Duration::from_secs(9),
        "graceful stop is bounded"
    );
    assert!(seen(&got).iter().any(|m| m == "STOPPING=1"));
    assert!(gw.count(&["stopped"]) >= 1, "{}", gw.log().join("\n"));
}

#[test]
fn secrets_never_reach_the_logs_even_at_trace() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let broker = Mosquitto::start(dir.path());
    let platform = TestPlatform::start(broker.port, "gw_svc");
    let sim = ModbusSim::new(SimState::default());
    let secret = "Sup3r-Secret-do-not-log";
    let cfg = config(dir.path(), broker.port, sim.port, secret);
    let mut gw = Gateway::start_with_env(&cfg, &[("RUST_LOG", "trace")]);
    wait_until(
        Duration::from_secs(15),
        "data delivered (so the password was used)",
        || !platform.reports().is_empty(),
    );
    gw.terminate();
    let log = gw.log().join("\n");
    assert!(
        log.contains("TRACE") || log.contains("DEBUG"),
        "the test must really run at trace level"
    );
    let hour = fieldgate::uplink::dialect::iotda::hour_stamp(fieldgate_driver::now_ms());
    let password = fieldgate::uplink::dialect::iotda::password(secret, &hour);
    assert!(!log.contains(secret), "secret in the log");
    assert!(!log.contains(&password), "MQTT password in the log");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fieldgate"))
        .args(["check", "-c"])
        .arg(&cfg)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains(secret)
            && !String::from_utf8_lossy(&out.stderr).contains(secret)
    );
}

#[test]
fn status_works_while_the_uplink_is_down() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let sim = ModbusSim::new(SimState::default());
    if let Ok(mut h) = sim.state.holding.lock() {
        h.insert((1, 0), 4321);
    }
    let nobody = free_port(); // no broker listens here
    let cfg = config(dir.path(), nobody, sim.port, "s");
    let mut gw = Gateway::start(&cfg);
    let status = |json: bool| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_fieldgate"));
        c.args(["status", "-c"]).arg(&cfg);
        if json {
            c.arg("--json");
        }
        let out = c.output().unwrap_or_else(|e| panic!("{e}"));
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    wait_until(Duration::from_secs(10), "a queued reading", || {
        let (code, out, _) = status(true);
        code == Some(0)
            && serde_json::from_str::<serde_json::Value>(&out)
                .is_ok_and(|j| j["queue"]["records"].as_u64().unwrap_or(0) >= 2)
    });
    let (_, out, _) = status(true);
    let j: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(j["uplink"]["connected"], false, "{j}");
    assert!(
        j["uplink"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("refused")),
        "{j}"
    );
    assert_eq!(j["children"][0]["node_id"], "d1");
    assert_eq!(j["children"][0]["status"], "ONLINE");
    assert_eq!(j["children"][0]["bus"], "a");
    assert_eq!(j["children"][0]["last_values"]["data.v"], 4321);
    assert!(j["queue"]["oldest_age_s"].as_u64().is_some(), "{j}");
    assert_eq!(j["queue"]["dropped"]["corrupt"], 0);
    // The daemon's own resident memory, as the kernel counts it (a live process has some).
    assert!(j["rss_kib"].as_u64().is_some_and(|k| k > 1024), "{j}");

    let (code, text, _) = status(false);
    assert_eq!(code, Some(0));
    assert!(
        text.lines()
            .next()
            .is_some_and(|l| l.contains(" · rss ") && l.ends_with(" MB")),
        "{text}"
    );
    assert!(text.contains("uplink    DOWN"), "{text}");
    assert!(text.contains("children  1/1 online"), "{text}");
    assert!(
        text.contains("d1") && text.contains("data.v=4321"),
        "{text}"
    );

    let sock = dir.path().join("run/fieldgate.sock");
    let mode = std::fs::metadata(&sock)
        .map(|m| m.permissions().mode() & 0o777)
        .unwrap_or(0);
    assert_eq!(mode, 0o660, "control socket is root + group only");
    assert_eq!(gw.terminate(), Some(0));
    assert!(!sock.exists(), "socket removed at a clean stop");
    let (code, _, err) = status(false);
    assert_eq!(code, Some(1));
    assert!(err.contains("cannot reach the daemon"), "{err}");
}

/// One daemon per store: a second `run` on the same config exits 75 (EX_TEMPFAIL) naming the
/// first one's pid, and the first keeps running with its control socket.
#[test]
fn a_second_instance_on_one_store_is_refused() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let sim = ModbusSim::new(SimState::default());
    let cfg = config(dir.path(), free_port(), sim.port, "s");
    let mut first = Gateway::start(&cfg);
    wait_until(
        Duration::from_secs(10),
        "the first instance answering",
        || status(&cfg)["children"][0]["node_id"] == "d1",
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fieldgate"))
        .args(["run", "-c"])
        .arg(&cfg)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(75), "{err}");
    assert!(
        err.contains(&format!("pid {}", first.child.id())),
        "names the holder: {err}"
    );
    assert!(first.running());
    assert_eq!(
        status(&cfg)["children"][0]["node_id"],
        "d1",
        "the first one's control socket is still there"
    );
    assert_eq!(first.terminate(), Some(0));
}

/// A store another user owns (someone ran `sudo fieldgate run` once) is not corruption: the
/// daemon exits 73 (EX_CANTCREAT) naming the path and the fix, and the file, its queue and its
/// platform ids stay where they are — no `.corrupt-*` rename, no restart loop of renames.
#[test]
fn a_store_it_may_not_write_is_named_and_left_alone() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let sim = ModbusSim::new(SimState::default());
    let cfg = config(dir.path(), free_port(), sim.port, "s");
    let mut first = Gateway::start(&cfg);
    wait_until(Duration::from_secs(10), "the store in use", || {
        status(&cfg)["children"][0]["node_id"] == "d1"
    });
    assert_eq!(first.terminate(), Some(0));
    let db = dir.path().join("state/fg.db");
    let before = std::fs::read(&db).unwrap_or_else(|e| panic!("{e}"));
    let chmod = |p: &Path, mode: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    };
    let root = std::fs::metadata("/proc/self").map(|m| m.uid()).ok() == Some(0);
    let mut cmd = if root {
        // Run as nobody against root's files, as after `sudo fieldgate run`.
        for (p, mode) in [
            (dir.path().to_path_buf(), 0o755),
            (dir.path().join("state"), 0o777),
            (dir.path().join("run"), 0o777),
            (dir.path().join("secret"), 0o644),
            (cfg.clone(), 0o644),
        ] {
            chmod(&p, mode);
        }
        let _ = std::fs::remove_file(dir.path().join("state/fg.db.lock"));
        let mut c = std::process::Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(env!("CARGO_BIN_EXE_fieldgate"));
        c
    } else {
        chmod(&db, 0o444);
        std::process::Command::new(env!("CARGO_BIN_EXE_fieldgate"))
    };
    let mut child = cmd
        .args(["run", "-c"])
        .arg(&cfg)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let t0 = std::time::Instant::now();
    let code = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st.code(),
            _ if t0.elapsed() > Duration::from_secs(20) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("still running after 20 s: it started on something");
            }
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    assert_eq!(code, Some(73), "{err}");
    assert!(
        err.contains(&db.display().to_string()),
        "names the path: {err}"
    );
    if root {
        assert!(
            err.contains("sudo chown -R fieldgate:fieldgate"),
            "names the fix: {err}"
        );
    }
    let aside: Vec<String> = std::fs::read_dir(dir.path().join("state"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("corrupt"))
        .collect();
    assert!(aside.is_empty(), "nothing moved aside: {aside:?}");
    assert_eq!(
        std::fs::read(&db).ok(),
        Some(before),
        "the file is untouched"
    );
}

/// `fieldgate status` describes the config the daemon runs, not the one it started with: after
/// a SIGHUP that added a bus, the bus is listed.
#[test]
fn status_follows_a_reload() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let sim = ModbusSim::new(SimState::default());
    let cfg = config(dir.path(), free_port(), sim.port, "s");
    let mut gw = Gateway::start(&cfg);
    let buses = || -> Vec<String> {
        status(&cfg)["buses"]
            .as_array()
            .map(|b| {
                b.iter()
                    .filter_map(|b| b["name"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    wait_until(Duration::from_secs(10), "status answering", || {
        buses() == ["a"]
    });
    let mut text = std::fs::read_to_string(&cfg).unwrap_or_else(|e| panic!("{e}"));
    text.push_str(&format!(
        "\n[[bus]]\nname = \"second\"\ndriver = \"modbus-tcp\"\nendpoint = \"127.0.0.1:{}\"\n",
        sim.port
    ));
    std::fs::write(&cfg, text).unwrap_or_else(|e| panic!("{e}"));
    gw.signal(1);
    wait_until(Duration::from_secs(10), "the new bus in status", || {
        buses() == ["a", "second"]
    });
    assert_eq!(gw.terminate(), Some(0));
}

/// Local users are neighbours too: a request without a newline is cut at 1 KiB and refused,
/// and 100 idle connections (each dropped after 1 s without a request) delay `fieldgate status`
/// by a few seconds — they never end the accept loop.
#[test]
fn the_control_socket_bounds_its_clients() {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let sim = ModbusSim::new(SimState::default());
    let cfg = config(dir.path(), free_port(), sim.port, "s");
    let mut gw = Gateway::start(&cfg);
    let socket = dir.path().join("run").join("fieldgate.sock");
    wait_until(Duration::from_secs(10), "the daemon answering", || {
        status(&cfg)["children"][0]["node_id"] == "d1"
    });

    let mut flood = UnixStream::connect(&socket).unwrap_or_else(|e| panic!("{e}"));
    flood
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap_or_else(|e| panic!("{e}"));
    let junk = vec![b'x'; 2 << 20];
    // The daemon stops reading after 1 KiB; the rest may not fit in the socket buffer.
    let _ = flood.set_write_timeout(Some(Duration::from_secs(2)));
    let _ = flood.write_all(&junk);
    let mut answer = String::new();
    let _ = flood.read_to_string(&mut answer);
    assert!(answer.contains("longer than 1024 bytes"), "{answer:?}");

    let idle: Vec<UnixStream> = (0..100)
        .filter_map(|_| UnixStream::connect(&socket).ok())
        .collect();
    assert_eq!(idle.len(), 100);
    let t = std::time::Instant::now();
    wait_until(
        Duration::from_secs(15),
        "status despite idle clients",
        || status(&cfg)["children"][0]["node_id"] == "d1",
    );
    println!(
        "status answered {:?} after 100 idle connections",
        t.elapsed()
    );
    drop(idle);
    assert!(gw.running());
    assert_eq!(gw.terminate(), Some(0));
}
