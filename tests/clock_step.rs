//! A gateway without a real-time clock has NTP step its wall clock forward once the network is
//! up. The binary runs under libfaketime (its wall clock only; the machine's is untouched, the
//! monotonic clock is real) with a Modbus server and no reachable broker, so readings queue up;
//! then its clock jumps 30 days forward. With `max_age = "1h"`, nothing may expire for that
//! step alone — the queue keeps its records — and the step is logged.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;

fn libfaketime() -> Option<PathBuf> {
    let dirs = std::fs::read_dir("/usr/lib").ok()?;
    dirs.flatten()
        .map(|d| d.path().join("faketime/libfaketime.so.1"))
        .find(|p| p.exists())
}

#[test]
fn a_forward_clock_step_expires_nothing() {
    let Some(lib) = libfaketime() else {
        panic!("libfaketime is not installed (.ci/run installs it)");
    };
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let sim = ModbusSim::new(SimState::default());
    let cfg = write_config(
        dir.path(),
        "fieldgate.toml",
        &format!(
            "dialect = \"iotda\"\nhost = \"127.0.0.1\"\nport = {}\ntls = false\ndevice_id = \"gw_clock\"\nsecret = \"s\"",
            free_port()
        ),
        // Still inside [store]: the bound under test.
        &format!(
            "max_age = \"1h\"\n\n[[bus]]\nname = \"a\"\ndriver = \"modbus-tcp\"\nendpoint = \"127.0.0.1:{}\"\n\n[profile.p]\n[[profile.p.point]]\nproperty = \"v\"\naddress = \"holding:0\"\n\n[[device]]\nnode_id = \"d1\"\nbus = \"a\"\nprofile = \"p\"\npoll = \"100ms\"\n",
            sim.port
        ),
    );
    let stamp = dir.path().join("faketime");
    std::fs::write(&stamp, "+0\n").unwrap_or_else(|e| panic!("{e}"));
    let lib = lib.display().to_string();
    let stamp_s = stamp.display().to_string();
    let mut gw = Gateway::start_with_env(
        &cfg,
        &[
            ("LD_PRELOAD", lib.as_str()),
            ("FAKETIME_TIMESTAMP_FILE", stamp_s.as_str()),
            ("FAKETIME_NO_CACHE", "1"),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ],
    );
    let records = || status(&cfg)["queue"]["records"].as_u64().unwrap_or(0);
    wait_until(Duration::from_secs(20), "readings queued", || {
        records() >= 20
    });
    let before = records();

    std::fs::write(&stamp, "+30d\n").unwrap_or_else(|e| panic!("{e}"));
    wait_until(Duration::from_secs(10), "the step noticed", || {
        gw.count(&["wall clock stepped"]) > 0
    });
    // Expiry runs at most once a second, on appends: give it several chances.
    std::thread::sleep(Duration::from_secs(3));
    let st = status(&cfg);
    assert_eq!(st["queue"]["dropped"]["expired"], 0, "{st}");
    assert!(
        records() > before,
        "the queue kept everything and grew: {st}"
    );
    assert!(gw.running());
    assert_eq!(gw.terminate(), Some(0));
}
