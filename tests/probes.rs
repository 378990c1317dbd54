//! Field probes as the engineer runs them: `fieldgate modbus read` decodes what the daemon
//! would see, `fieldgate modbus scan` finds the unit ids that answer.

mod common;

use common::*;

#[test]
fn modbus_read_decodes_and_scan_finds_units() {
    let sim = ModbusSim::new(SimState {
        only_units: Some(vec![1, 3]),
        ..Default::default()
    });
    if let Ok(mut h) = sim.state.holding.lock() {
        h.insert((1, 0), 0x8000);
        h.insert((1, 1), 0x4366);
    }
    let ep = format!("127.0.0.1:{}", sim.port);

    let (code, out, err) = fieldgate(&[
        "modbus",
        "read",
        "--endpoint",
        &ep,
        "--unit",
        "1",
        "--address",
        "holding:0",
        "--type",
        "f32",
        "--word-order",
        "little",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("0x8000") && out.contains("0x4366"), "{out}");
    assert!(
        out.contains("as f32 (bytes big, words little): 230.5"),
        "{out}"
    );

    let (code, _, err) = fieldgate(&[
        "modbus",
        "read",
        "--endpoint",
        &ep,
        "--unit",
        "2",
        "--address",
        "holding:0",
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("exception GatewayTargetDevice (0x0b)"),
        "{err}"
    );

    let (code, out, err) = fieldgate(&["modbus", "scan", "--endpoint", &ep, "--units", "1-4"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("2 of 4 unit ids answer"), "{out}");
    assert!(
        out.contains("unit   1  answers") && out.contains("unit   3  answers"),
        "{out}"
    );
    assert!(out.contains("unit   2  exception"), "{out}");

    let closed = free_port();
    let (code, _, err) = fieldgate(&[
        "modbus",
        "read",
        "--endpoint",
        &format!("127.0.0.1:{closed}"),
        "--address",
        "holding:0",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("refused"), "{err}");
    let (code, _, err) = fieldgate(&[
        "modbus",
        "read",
        "--endpoint",
        &ep,
        "--address",
        "register:1",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("unknown Modbus table `register`"), "{err}");
}

#[test]
fn serial_sniff_shows_frames_split_on_silence() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let pty = PtyPair::new(dir.path());
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_fieldgate"))
        .args(["serial", "sniff", "--port"])
        .arg(&pty.a)
        .args(["--baud", "9600", "--gap", "20ms", "--for", "2s"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    std::thread::sleep(std::time::Duration::from_millis(500));
    let mut other_end = std::fs::OpenOptions::new()
        .write(true)
        .open(&pty.b)
        .unwrap_or_else(|e| panic!("{e}"));
    other_end
        .write_all(b"\x01\x03\x00\x00\x00\x02\xc4\x0b")
        .unwrap_or_else(|e| panic!("{e}"));
    std::thread::sleep(std::time::Duration::from_millis(300));
    other_end
        .write_all(b"ST,GS,+0012.34kg\r\n")
        .unwrap_or_else(|e| panic!("{e}"));
    let out = child.wait_with_output().unwrap_or_else(|e| panic!("{e}"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let frames: Vec<&str> = text.lines().filter(|l| l.contains(" B  ")).collect();
    assert_eq!(frames.len(), 2, "{text}");
    assert!(
        frames[0].contains("8 B  01 03 00 00 00 02 c4 0b  |........|"),
        "{text}"
    );
    assert!(
        frames[1].contains("18 B  ") && frames[1].contains("|ST,GS,+0012.34kg..|"),
        "{text}"
    );
}

/// The same probes over Modbus RTU, against Debian's pymodbus on the far end of a pty pair.
#[test]
fn modbus_rtu_read_and_scan_against_pymodbus() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let pty = PtyPair::new(dir.path());
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("drivers/modbus/tests/pymodbus_rtu_server.py");
    let mut server = std::process::Command::new("/usr/bin/python3")
        .arg(&script)
        .arg(&pty.a)
        .arg("38400")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("python3: {e}"));
    let mut out = server.stdout.take().unwrap_or_else(|| panic!("stdout"));
    let mut first = [0u8; 7];
    let started = std::io::Read::read_exact(&mut out, &mut first).is_ok();
    if !started {
        let _ = server.kill();
        panic!("pymodbus server did not start (apt-get install python3-pymodbus python3-serial-asyncio)");
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    let port = pty.b.to_string_lossy().to_string();
    let line = ["--port", port.as_str(), "--baud", "38400"];

    let mut args = vec!["modbus", "read"];
    args.extend(line);
    args.extend([
        "--unit",
        "2",
        "--address",
        "holding:20",
        "--type",
        "u32",
        "--count",
        "2",
    ]);
    let (code, read_out, err) = fieldgate(&args);

    let mut args = vec!["modbus", "scan"];
    args.extend(line);
    args.extend(["--units", "1-4", "--timeout", "150ms"]);
    let (scan_code, scan_out, scan_err) = fieldgate(&args);
    let _ = server.kill();
    let _ = server.wait();

    assert_eq!(code, 0, "{read_out}{err}");
    assert!(
        read_out.contains("38400/8N1 unit 2 holding:20"),
        "{read_out}"
    );
    // registers 2020, 2021 → (2020 << 16) | 2021
    assert!(
        read_out.contains(&((2020u64 << 16) | 2021).to_string()),
        "{read_out}"
    );
    assert_eq!(scan_code, 0, "{scan_out}{scan_err}");
    assert!(scan_out.contains("2 of 4 unit ids answer"), "{scan_out}");
    assert!(
        scan_out.contains("unit   1  answers") && scan_out.contains("unit   2  answers"),
        "{scan_out}"
    );
}
