//! The binary's command line: `check` on every shipped config, exit code 78 for bad configs
//! (both `check` and `run`, so systemd does not restart-loop), and messages with positions.

mod common;

use std::path::Path;

use common::fieldgate;

#[test]
fn every_shipped_config_passes_check() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut n = 0;
    for e in std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{e}"))
        .filter_map(Result::ok)
    {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "toml") {
            let (code, out, err) = fieldgate(&["check", "-c", &p.to_string_lossy()]);
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            if !cfg!(feature = "ble") && text.contains("driver = \"ble\"") {
                // A build without the feature refuses BLE buses, and says why.
                assert_eq!(code, 78, "{}: {out}{err}", p.display());
                assert!(err.contains("built without BLE support"), "{err}");
                continue;
            }
            assert_eq!(code, 0, "{}: {out}{err}", p.display());
            assert!(out.contains("OK"), "{out}");
            n += 1;
        }
    }
    assert!(n >= 1, "no configs found in {}", dir.display());
}

#[test]
fn bad_config_exits_78_with_positions_for_check_and_run() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let p = dir.path().join("bad.toml");
    std::fs::write(
        &p,
        "[platform]\ndialect = \"iotda\"\nhost = \"h\"\ndevice_id = \"g\"\nsecret = \"s\"\n\n[[device]]\nnode_id = \"m1\"\nbus = \"nope\"\nprofile = \"p\"\nunit = 999\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let path = p.to_string_lossy().to_string();
    let (code, _, err) = fieldgate(&["check", "-c", &path]);
    assert_eq!(code, 78, "{err}");
    assert!(
        err.contains(&format!(
            "{path}:11:8: device[0]: invalid value: integer `999`, expected u8"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!("{path}:9:7: device[0].bus: no bus named `nope`")),
        "{err}"
    );
    assert!(err.contains("3 problem(s)"), "{err}");
    let (code, _, err) = fieldgate(&["run", "-c", &path]);
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("refusing to start"), "{err}");
    let (code, _, err) = fieldgate(&["check", "-c", "/nonexistent/fieldgate.toml"]);
    assert_eq!(code, 78);
    assert!(err.contains("cannot read"), "{err}");
}

#[test]
fn version_and_help() {
    let (code, out, _) = fieldgate(&["--version"]);
    assert_eq!(code, 0);
    assert_eq!(
        out.trim(),
        format!("fieldgate {}", env!("CARGO_PKG_VERSION"))
    );
    let (code, out, _) = fieldgate(&["--help"]);
    assert_eq!(code, 0);
    for sub in ["run", "check"] {
        assert!(out.contains(sub), "{out}");
    }
}
