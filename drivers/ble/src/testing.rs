//! Test support, not used by the daemon: BlueZ's D-Bus API simulated by python-dbusmock's
//! `bluez5` template on a private D-Bus daemon (there is no Bluetooth in CI), driven through
//! `tests/bluez_ctl.py`. Starting it points this process's system bus at the private one
//! (`DBUS_SYSTEM_BUS_ADDRESS`); libdbus reads that once per process, so use one per process.
//! Needs the Debian packages `dbus` and `python3-dbusmock`. Panics are its error reporting.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command as Process, Stdio};
use std::time::{Duration, Instant};

pub struct MockBluez {
    /// The private bus, for child processes (`DBUS_SYSTEM_BUS_ADDRESS`).
    pub address: String,
    daemon: Child,
    mock: Child,
    ctl: Child,
    ctl_in: ChildStdin,
    ctl_out: BufReader<ChildStdout>,
}

impl MockBluez {
    pub fn start() -> Self {
        let mut daemon = Process::new("dbus-daemon")
            .args(["--session", "--nofork", "--print-address=1"])
            .stderr(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("dbus-daemon (apt-get install dbus): {e}"));
        let mut line = String::new();
        let out = daemon.stdout.take().unwrap_or_else(|| panic!("stdout"));
        BufReader::new(out)
            .read_line(&mut line)
            .unwrap_or_else(|e| panic!("{e}"));
        let addr = line.trim().to_string();
        assert!(addr.starts_with("unix:"), "dbus-daemon address: {addr:?}");
        std::env::set_var("DBUS_SYSTEM_BUS_ADDRESS", &addr);
        let mock = Process::new("/usr/bin/python3")
            .args(["-m", "dbusmock", "--template", "bluez5", "-s"])
            .env("DBUS_SYSTEM_BUS_ADDRESS", &addr)
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("python3-dbusmock: {e}"));
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/bluez_ctl.py");
        let mut ctl = Process::new("/usr/bin/python3")
            .arg(script)
            .env("DBUS_SYSTEM_BUS_ADDRESS", &addr)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("python3: {e}"));
        let ctl_in = ctl.stdin.take().unwrap_or_else(|| panic!("stdin"));
        let ctl_out = BufReader::new(ctl.stdout.take().unwrap_or_else(|| panic!("stdout")));
        let mut m = MockBluez {
            address: addr.clone(),
            daemon,
            mock,
            ctl,
            ctl_in,
            ctl_out,
        };
        // The mock owns org.bluez once its template loaded.
        let t0 = Instant::now();
        loop {
            let r = m.try_cmd("adapter hci0");
            if r.starts_with("ok") {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(15),
                "dbusmock never came up: {r}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        m
    }

    pub fn try_cmd(&mut self, c: &str) -> String {
        let _ = writeln!(self.ctl_in, "{c}");
        let _ = self.ctl_in.flush();
        let mut line = String::new();
        let _ = self.ctl_out.read_line(&mut line);
        line.trim().to_string()
    }

    pub fn cmd(&mut self, c: &str) -> String {
        let r = self.try_cmd(c);
        assert!(r.starts_with("ok"), "{c}: {r}");
        r.trim_start_matches("ok").trim().to_string()
    }
}

impl Drop for MockBluez {
    fn drop(&mut self) {
        for p in [&mut self.ctl, &mut self.mock, &mut self.daemon] {
            let _ = p.kill();
            let _ = p.wait();
        }
    }
}
