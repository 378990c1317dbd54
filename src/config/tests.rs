use super::*;

const GOOD: &str = r#"
[gateway]
name = "cabinet-7"

[platform]
dialect = "iotda"
host = "127.0.0.1"
port = 1883
device_id = "gw_1"
secret = "s3cret"

[store]
path = "/var/lib/fieldgate/fg.db"

[[bus]]
name = "plant"
driver = "modbus-tcp"
endpoint = "127.0.0.1:502"

[profile.meter]
product_id = "prod"
service = "energy"

[[profile.meter.point]]
property = "voltage"
address = "input:0"
type = "u16"
scale = 0.1

[[device]]
node_id = "m1"
bus = "plant"
profile = "meter"
unit = 1
poll = "1s"
"#;

fn errors(src: &str) -> Vec<Diagnostic> {
    match parse(src, Path::new("t.toml")) {
        Ok(_) => panic!("config was accepted:\n{src}"),
        Err(e) => e.diagnostics,
    }
}

/// Replace `from` (which must occur in GOOD) with `to` and return the one diagnostic.
fn one(from: &str, to: &str) -> Diagnostic {
    assert!(GOOD.contains(from), "corpus base lacks {from:?}");
    let src = GOOD.replacen(from, to, 1);
    let d = errors(&src);
    assert_eq!(d.len(), 1, "expected exactly one problem, got {d:#?}");
    d.into_iter().next().unwrap_or_else(|| unreachable!())
}

fn line_of(src: &str, needle: &str) -> usize {
    src.lines()
        .position(|l| l.contains(needle))
        .map(|i| i + 1)
        .unwrap_or(0)
}

#[test]
fn a_runtime_dir_too_long_for_the_socket_is_refused() {
    let long = format!("/run/{}", "d".repeat(90));
    let text = GOOD.replace(
        "name = \"cabinet-7\"",
        &format!("name = \"cabinet-7\"\nruntime_dir = \"{long}\""),
    );
    let e = parse(&text, Path::new("t.toml"))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        e.contains("gateway.runtime_dir") && e.contains("control socket"),
        "{e}"
    );
}

#[test]
fn secret_files_readable_by_everyone_are_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "s").unwrap_or_else(|e| panic!("{e}"));
    let text = GOOD.replace(
        "secret = \"s3cret\"",
        &format!("secret_file = \"{}\"\ntls = false", secret.display()),
    );
    let warned = |mode: u32| {
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(mode))
            .unwrap_or_else(|e| panic!("{e}"));
        parse(&text, Path::new("t.toml"))
            .map(|c| c.warnings())
            .unwrap_or_else(|e| panic!("{e}"))
    };
    assert!(warned(0o644)
        .iter()
        .any(|w| w.contains("readable by every user")));
    assert!(warned(0o640).is_empty(), "{:?}", warned(0o640));
    std::fs::remove_file(&secret).unwrap_or_else(|e| panic!("{e}"));
    assert!(warned_missing(&text)
        .iter()
        .any(|w| w.contains("secret_file")));
}

fn warned_missing(text: &str) -> Vec<String> {
    parse(text, Path::new("t.toml"))
        .map(|c| c.warnings())
        .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn good_config_parses_with_defaults() {
    let c = parse(GOOD, Path::new("t.toml")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.platform.port, 1883);
    assert!(
        c.platform.tls,
        "TLS unless explicitly turned off, even on port 1883"
    );
    assert!(c.warnings().is_empty(), "{:?}", c.warnings());
    // Paths the packaged unit cannot keep are warned about.
    for (path, words) in [
        ("/opt/fieldgate/q.db", "read-only under the packaged unit"),
        ("/tmp/q.db", "private /tmp"),
    ] {
        let w = parse(
            &GOOD.replace("/var/lib/fieldgate/fg.db", path),
            Path::new("t.toml"),
        )
        .map(|c| c.warnings())
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            w.iter()
                .any(|w| w.contains("store.path") && w.contains(words)),
            "{path}: {w:?}"
        );
    }
    let plain = parse(
        &GOOD.replace("port = 1883", "port = 1883\ntls = false"),
        Path::new("t.toml"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(!plain.platform.tls);
    assert!(
        plain.warnings().is_empty(),
        "plain MQTT to loopback is not warned about"
    );
    let remote = parse(
        &GOOD
            .replace("host = \"127.0.0.1\"", "host = \"broker.example\"")
            .replace("port = 1883", "port = 1883\ntls = false"),
        Path::new("t.toml"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        remote.warnings().iter().any(|w| w.contains("unencrypted")),
        "{:?}",
        remote.warnings()
    );
    assert_eq!(c.platform.keepalive, Duration::from_secs(120));
    assert_eq!(c.devices[0].product_id, "prod");
    assert_eq!(c.devices[0].points()[0].service, "energy");
    assert_eq!(c.buses[0].offline_after, 3);
    assert_eq!(c.store.commit_interval, Duration::from_millis(50));
}

#[test]
fn secrets_do_not_debug_print() {
    let c = parse(GOOD, Path::new("t.toml")).unwrap_or_else(|e| panic!("{e}"));
    let dbg = format!("{c:?}");
    assert!(!dbg.contains("s3cret"), "{dbg}");
}

#[test]
fn corpus_each_mistake_gets_a_precise_message() {
    // (replace, with, expected path, expected words in the message, text on the reported line)
    let cases: &[(&str, &str, &str, &str, &str)] = &[
        (
            "secret = \"s3cret\"",
            "secret = \"s3cret\"\ninflight_bytes = \"1KiB\"",
            "platform.inflight_bytes",
            "between 4KiB and 1GiB",
            "inflight_bytes = \"1KiB\"",
        ),
        (
            "secret = \"s3cret\"",
            "secret = \"s3cret\"\ninflight_bytes = \"2GiB\"",
            "platform.inflight_bytes",
            "between 4KiB and 1GiB",
            "inflight_bytes = \"2GiB\"",
        ),
        (
            "scale = 0.1",
            "scale = nan",
            "profile.meter.point[0].address",
            "`scale` must be a finite number",
            "address = \"input:0\"",
        ),
        (
            "device_id = \"gw_1\"",
            "device_id = \"gw/#+\"",
            "platform.device_id",
            "part of MQTT topics",
            "device_id = \"gw/#+\"",
        ),
        (
            "poll = \"1s\"",
            "poll = \"18446744073709551615s\"",
            "device[0]",
            "at most 3650d",
            "poll = \"18446744073709551615s\"",
        ),
        (
            "property = \"voltage\"",
            "property = \"temp/#+\"",
            "profile.meter.point[0].property",
            "cannot appear in an MQTT topic level",
            "property = \"temp/#+\"",
        ),
        (
            "unit = 1\n",
            "unit = 300\n",
            "device[0]",
            "expected u8",
            "unit = 300",
        ),
        (
            "unit = 1\n",
            "unit = \"one\"\n",
            "device[0]",
            "invalid type",
            "unit = \"one\"",
        ),
        (
            "poll = \"1s\"",
            "poll = \"fast\"",
            "device[0]",
            "not a duration",
            "poll = \"fast\"",
        ),
        (
            "poll = \"1s\"",
            "pol = \"1s\"",
            "device[0]",
            "unknown field `pol`",
            "pol = \"1s\"",
        ),
        (
            "bus = \"plant\"",
            "bus = \"plnt\"",
            "device[0].bus",
            "no bus named `plnt` (defined: plant)",
            "bus = \"plnt\"",
        ),
        (
            "profile = \"meter\"",
            "profile = \"metr\"",
            "device[0].profile",
            "no profile named `metr`",
            "profile = \"metr\"",
        ),
        (
            "address = \"input:0\"",
            "address = \"input:70000\"",
            "profile.meter.point[0].address",
            "out of range",
            "input:70000",
        ),
        (
            "address = \"input:0\"",
            "address = \"coil:3\"",
            "profile.meter.point[0].address",
            "single bits",
            "coil:3",
        ),
        (
            "type = \"u16\"",
            "type = \"u16\"\nlength = 1\nbit = 3",
            "profile.meter.point[0].address",
            "`bit` only applies",
            "address",
        ),
        (
            "address = \"input:0\"\ntype = \"u16\"",
            "address = \"input:65535\"\ntype = \"f32\"",
            "profile.meter.point[0].address",
            "past the last address",
            "input:65535",
        ),
        (
            "type = \"u16\"",
            "type = \"float\"",
            "profile.meter.point[0].type",
            "unknown type `float`",
            "type = \"float\"",
        ),
        (
            "address = \"input:0\"",
            "address = \"register0\"",
            "profile.meter.point[0].address",
            "table:number",
            "register0",
        ),
        (
            "dialect = \"iotda\"",
            "dialect = \"iot-da\"",
            "platform.dialect",
            "unknown dialect",
            "iot-da",
        ),
        (
            "endpoint = \"127.0.0.1:502\"",
            "endpoint = \"127.0.0.1\"",
            "bus[0].endpoint",
            "host:port",
            "endpoint",
        ),
        (
            "driver = \"modbus-tcp\"",
            "driver = \"modbus-udp\"",
            "bus[0].driver",
            "unknown driver",
            "modbus-udp",
        ),
        (
            "secret = \"s3cret\"",
            "",
            "platform",
            "missing `secret_file`",
            "device_id",
        ),
        (
            "secret = \"s3cret\"",
            "secret = \"a\"\nsecret_file = \"/x\"",
            "platform.secret_file",
            "not both",
            "secret_file",
        ),
        (
            "device_id = \"gw_1\"\n",
            "",
            "platform",
            "missing field `device_id`",
            "[platform]",
        ),
        ("[store]", "[stor]", "stor", "unknown section", "[stor]"),
        (
            "host = \"127.0.0.1\"",
            "host = \"127.0.0.1\"\nkeepalive = \"5s\"",
            "platform.keepalive",
            "between 30s and 1200s",
            "keepalive",
        ),
        (
            "poll = \"1s\"",
            "poll = \"1ms\"",
            "device[0].poll",
            "at least 10ms",
            "poll",
        ),
        (
            "[gateway]",
            "[gateway]\nlog_level = \"loud\"",
            "gateway.log_level",
            "unknown level",
            "log_level",
        ),
        (
            "node_id = \"m1\"",
            "node_id = \"m 1\"",
            "device[0].node_id",
            "must be 1–64 characters",
            "node_id",
        ),
    ];
    for (from, to, path, words, on_line) in cases {
        let d = one(from, to);
        let src = GOOD.replacen(from, to, 1);
        assert_eq!(&d.path, path, "case {to:?}: {d:?}");
        assert!(
            d.message.contains(words),
            "case {to:?}: message {:?} lacks {words:?}",
            d.message
        );
        assert_eq!(
            d.line,
            line_of(&src, on_line),
            "case {to:?}: wrong line in {d:?}"
        );
        assert!(d.column >= 1);
    }
}

#[test]
fn duplicates_are_reported_at_the_second_occurrence() {
    let src =
        format!("{GOOD}\n[[device]]\nnode_id = \"m1\"\nbus = \"plant\"\nprofile = \"meter\"\n");
    let d = errors(&src);
    assert_eq!(d.len(), 1, "{d:?}");
    assert!(d[0].message.contains("duplicate node_id `m1`"));
    assert_eq!(d[0].line, src.lines().count() - 2);

    let src =
        format!("{GOOD}\n[[bus]]\nname = \"plant\"\ndriver = \"modbus-tcp\"\nendpoint = \"h:1\"\n");
    assert!(errors(&src)[0].message.contains("duplicate bus name"));

    let src = GOOD.replace(
        "scale = 0.1",
        "scale = 0.1\n[[profile.meter.point]]\nproperty = \"voltage\"\naddress = \"input:1\"",
    );
    assert!(errors(&src)[0]
        .message
        .contains("duplicate property `energy.voltage`"));
}

#[test]
fn every_problem_is_reported_not_just_the_first() {
    let src = GOOD
        .replace("unit = 1\n", "unit = 300\n")
        .replace("dialect = \"iotda\"", "dialect = \"nope\"")
        .replace("address = \"input:0\"", "address = \"coil:1\"");
    let d = errors(&src);
    assert_eq!(d.len(), 3, "{d:#?}");
    // sorted by position in the file
    assert!(d.windows(2).all(|w| w[0].line <= w[1].line));
}

#[test]
fn syntax_errors_have_positions() {
    let d = errors("[platform\nhost = 1\n");
    assert_eq!(d[0].path, "(syntax)");
    assert_eq!(d[0].line, 1);
}

#[test]
fn display_is_file_line_column() {
    let e = parse(
        &GOOD.replace("unit = 1\n", "unit = 300\n"),
        Path::new("/etc/fg.toml"),
    )
    .err();
    let text = e.map(|e| e.to_string()).unwrap_or_default();
    let line = line_of(GOOD, "unit = 1");
    assert!(
        text.starts_with(&format!("/etc/fg.toml:{line}:8: device[0]: ")),
        "{text}"
    );
}

#[test]
fn several_bad_keys_in_one_table_are_all_reported() {
    let src = GOOD
        .replace("unit = 1\n", "unit = 300\ncolour = \"red\"\n")
        .replace("poll = \"1s\"", "poll = \"soon\"");
    let d = errors(&src);
    let msgs: Vec<&str> = d.iter().map(|d| d.message.as_str()).collect();
    assert_eq!(d.len(), 3, "{msgs:?}");
    assert!(msgs.iter().any(|m| m.contains("expected u8")), "{msgs:?}");
    assert!(
        msgs.iter().any(|m| m.contains("unknown field `colour`")),
        "{msgs:?}"
    );
    assert!(
        msgs.iter().any(|m| m.contains("not a duration")),
        "{msgs:?}"
    );
}

#[test]
fn command_timeout_stays_under_the_platform_deadline() {
    let d = one(
        "host = \"127.0.0.1\"",
        "host = \"127.0.0.1\"\ncommand_timeout = \"30s\"",
    );
    assert_eq!(d.path, "platform.command_timeout");
    assert!(d.message.contains("under 20s"), "{d:?}");
    let c = parse(
        &GOOD.replace(
            "host = \"127.0.0.1\"",
            "host = \"127.0.0.1\"\ncommand_timeout = \"2s\"",
        ),
        Path::new("t.toml"),
    );
    assert_eq!(
        c.map(|c| c.platform.command_timeout).ok(),
        Some(Duration::from_secs(2))
    );
}

/// GOOD with its bus turned into an RTU line.
fn rtu(extra_bus: &str, extra_device: &str) -> String {
    GOOD.replace(
        "driver = \"modbus-tcp\"\nendpoint = \"127.0.0.1:502\"",
        &format!("driver = \"modbus-rtu\"\nport = \"/dev/ttyUSB0\"\nbaud = 19200\nparity = \"even\"\n{extra_bus}"),
    )
    .replace("poll = \"1s\"", &format!("poll = \"1s\"\n{extra_device}"))
}

#[test]
fn modbus_rtu_buses() {
    let c = parse(
        &rtu("settle = \"300ms\"", "turnaround = \"5ms\""),
        Path::new("t.toml"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    match &c.buses[0].kind {
        BusKind::ModbusRtu { port, settle } => {
            assert_eq!(port.path, "/dev/ttyUSB0");
            assert_eq!(port.baud, 19200);
            assert_eq!(port.parity, Parity::Even);
            assert_eq!((port.data_bits, port.stop_bits), (8, 1));
            assert_eq!(*settle, Duration::from_millis(300));
        }
        other => panic!("{other:?}"),
    }
    assert!(
        matches!(&c.devices[0].kind, DeviceKind::Modbus { turnaround, .. } if *turnaround == Duration::from_millis(5))
    );
    // settle defaults to the timeout
    let c = parse(&rtu("timeout = \"400ms\"", ""), Path::new("t.toml"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        matches!(&c.buses[0].kind, BusKind::ModbusRtu { settle, .. } if *settle == Duration::from_millis(400))
    );

    let cases = [
        ("baud = 19200", "baud = 7", "bus[0].baud", "out of range"),
        (
            "parity = \"even\"",
            "parity = \"mark\"",
            "bus[0].parity",
            "unknown parity",
        ),
        (
            "parity = \"even\"",
            "parity = \"even\"\ndata_bits = 9",
            "bus[0].data_bits",
            "5..=8",
        ),
        (
            "parity = \"even\"",
            "parity = \"even\"\nstop_bits = 3",
            "bus[0].stop_bits",
            "1 or 2",
        ),
        (
            "port = \"/dev/ttyUSB0\"",
            "port = \"ttyUSB0\"",
            "bus[0].port",
            "absolute",
        ),
        (
            "port = \"/dev/ttyUSB0\"\n",
            "",
            "bus[0].port",
            "needs `port",
        ),
        (
            "parity = \"even\"",
            "parity = \"even\"\nendpoint = \"h:1\"",
            "bus[0].endpoint",
            "uses `port`",
        ),
        ("unit = 1", "unit = 0", "device[0].unit", "1..=247"),
        (
            "poll = \"1s\"",
            "poll = \"1s\"\nturnaround = \"2s\"",
            "device[0].turnaround",
            "at most 1s",
        ),
        (
            "parity = \"even\"",
            "parity = \"even\"\nsettle = \"1min\"",
            "bus[0].settle",
            "at most 10s",
        ),
    ];
    let base = rtu("", "");
    for (from, to, path, words) in cases {
        assert!(base.contains(from), "{from}");
        let src = base.replacen(from, to, 1);
        let d = errors(&src);
        assert_eq!(d.len(), 1, "case {to:?}: {d:#?}");
        assert_eq!(d[0].path, path, "case {to:?}");
        assert!(
            d[0].message.contains(words),
            "case {to:?}: {}",
            d[0].message
        );
    }
}

const ASCII: &str = r#"
[platform]
dialect = "iotda"
host = "127.0.0.1"
device_id = "gw_1"
secret = "s3cret"

[[bus]]
name = "com"
driver = "serial-ascii"
port = "/dev/ttyS0"
terminator = "\r\n"

[profile.scale]
request = "SI\r\n"
regex = '^S(?P<st>[ T]),(?P<w>[-+0-9.]+)kg'
checksum = "xor8"

[[profile.scale.field]]
property = "weight"
capture = "w"

[[profile.scale.command]]
name = "preset"
send = "PT {grams}\r\n"
params = [{ name = "grams", type = "int", min = 0, max = 100 }]
expect = "^PT A"

[[device]]
node_id = "s1"
bus = "com"
profile = "scale"
poll = "1s"
"#;

#[test]
fn serial_instrument_profiles() {
    let c = parse(ASCII, Path::new("t.toml")).unwrap_or_else(|e| panic!("{e}"));
    let d = &c.devices[0];
    let ins = match &d.kind {
        DeviceKind::Ascii { instrument, .. } => instrument.0.clone(),
        other => panic!("ascii: {other:?}"),
    };
    assert_eq!(ins.request.as_deref(), Some(b"SI\r\n".as_slice()));
    assert_eq!(
        ins.fields[0].source,
        fieldgate_serial::parse::Source::Name("w".into())
    );
    assert_eq!(d.declared().len(), 1);
    assert_eq!(d.declared()[0].params[0].name, "grams");
    assert!(
        matches!(&c.buses[0].kind, BusKind::SerialAscii { framing: Framing::Terminator(t), max_frame: 256, .. } if t == b"\r\n")
    );

    let cases = [
        (
            "capture = \"w\"",
            "capture = \"x\"",
            "profile.scale.field[0].capture",
            "no group `x`",
        ),
        (
            "capture = \"w\"",
            "index = 1",
            "profile.scale.field[0].index",
            "take a `capture`",
        ),
        (
            "(?P<w>[-+0-9.]+)kg'",
            "(?P<w>[-+0-9.]+kg'",
            "profile.scale.regex",
            "bad regex",
        ),
        (
            "checksum = \"xor8\"",
            "checksum = \"md5\"",
            "profile.scale.checksum",
            "unknown checksum",
        ),
        (
            "send = \"PT {grams}\\r\\n\"",
            "send = \"PT {gram}\\r\\n\"",
            "profile.scale.command[0].send",
            "placeholder `{gram}`",
        ),
        (
            "send = \"PT {grams}\\r\\n\"",
            "send = \"PT\\r\\n\"",
            "profile.scale.command[0].send",
            "not used",
        ),
        (
            "type = \"int\", min",
            "type = \"long\", min",
            "profile.scale.command[0].params[0].type",
            "unknown parameter type",
        ),
        (
            "expect = \"^PT A\"",
            "expect = \"(\"",
            "profile.scale.command[0].expect",
            "bad regex",
        ),
        (
            "terminator = \"\\r\\n\"",
            "terminator = \"\\r\\n\"\nlength = 8",
            "bus[0].terminator",
            "one framing",
        ),
        (
            "terminator = \"\\r\\n\"",
            "start = \"\\u0002\"",
            "bus[0].start",
            "go together",
        ),
        (
            "terminator = \"\\r\\n\"",
            "max_frame = 2",
            "bus[0].max_frame",
            "8..=65536",
        ),
        (
            "checksum = \"xor8\"",
            "checksum = \"xor8\"\nsplit = \",\"",
            "profile.scale.regex",
            "not both",
        ),
        (
            "checksum = \"xor8\"",
            "checksum = \"xor8\"\nstale_after = \"1ms\"",
            "profile.scale.stale_after",
            "at least 100ms",
        ),
        (
            "capture = \"w\"",
            "capture = \"w\"\ntype = \"decimal\"",
            "profile.scale.field[0].type",
            "unknown field type",
        ),
        (
            "capture = \"w\"",
            "capture = \"w\"\ncolour = 1",
            "profile.scale.field[0]",
            "unknown field `colour`",
        ),
    ];
    for (from, to, path, words) in cases {
        assert!(ASCII.contains(from), "{from}");
        let src = ASCII.replacen(from, to, 1);
        let d = errors(&src);
        assert_eq!(d.len(), 1, "case {to:?}: {d:#?}");
        assert_eq!(d[0].path, path, "case {to:?}: {d:?}");
        assert!(
            d[0].message.contains(words),
            "case {to:?}: {}",
            d[0].message
        );
        assert!(d[0].line > 1, "case {to:?} has a position: {d:?}");
    }

    // A Modbus profile on a serial-ascii bus, and the other way round.
    let d = errors(&format!(
        "{GOOD}\n[[device]]\nnode_id = \"x\"\nbus = \"plant\"\nprofile = \"scale\"\n{}",
        &ASCII[ASCII.find("[profile.scale]").unwrap_or(0)..ASCII.find("[[device]]").unwrap_or(0)]
    ));
    assert!(
        d.iter()
            .any(|d| d.message.contains("describes a serial instrument")),
        "{d:#?}"
    );
}

const EXEC: &str = r#"
[platform]
dialect = "iotda"
host = "127.0.0.1"
device_id = "gw_1"
secret = "s3cret"

[[bus]]
name = "ext"
driver = "exec"
command = ["/usr/bin/python3", "/opt/drv.py"]
env = { A = "1" }
stop_grace = "1s"

[profile.thermo]
kind = "exec"
product_id = "thermo"

[[profile.thermo.command]]
name = "set"
params = [{ name = "value", type = "float", min = 5.0, max = 30.0 }]

[[device]]
node_id = "t1"
bus = "ext"
profile = "thermo"
options = { interval = 5 }
"#;

#[test]
fn exec_buses_and_profiles() {
    let c = parse(EXEC, Path::new("t.toml")).unwrap_or_else(|e| panic!("{e}"));
    match &c.buses[0].kind {
        BusKind::Exec(e) => {
            assert_eq!(e.argv, vec!["/usr/bin/python3", "/opt/drv.py"]);
            assert_eq!(e.env, vec![("A".to_string(), "1".to_string())]);
            assert_eq!(e.stop_grace, Duration::from_secs(1));
            assert_eq!(e.max_line, 65536);
        }
        other => panic!("{other:?}"),
    }
    assert!(
        matches!(&c.devices[0].kind, DeviceKind::Exec { options, .. } if *options == serde_json::json!({"interval": 5}))
    );
    assert_eq!(c.devices[0].declared()[0].name, "set");
    let cases = [
        (
            "command = [\"/usr/bin/python3\", \"/opt/drv.py\"]\n",
            "",
            "bus[0].command",
            "needs `command",
        ),
        (
            "command = [\"/usr/bin/python3\", \"/opt/drv.py\"]",
            "command = []",
            "bus[0].command",
            "at least the program",
        ),
        (
            "command = [\"/usr/bin/python3\", \"/opt/drv.py\"]",
            "command = \"/usr/bin/python3 x\"",
            "bus[0]",
            "expected a sequence",
        ),
        (
            "stop_grace = \"1s\"",
            "stop_grace = \"21s\"",
            "bus[0].stop_grace",
            "at most 20s",
        ),
        (
            "stop_grace = \"1s\"",
            "max_properties = 0",
            "bus[0].max_properties",
            "1..100000",
        ),
        (
            "type = \"float\"",
            "type = \"float\", pattern = \"[0-9]+\"",
            "profile.thermo.command[0].params[0].pattern",
            "only `string` parameters",
        ),
        (
            "stop_grace = \"1s\"",
            "max_line = 10",
            "bus[0].max_line",
            "256 bytes",
        ),
        (
            "kind = \"exec\"",
            "kind = \"plugin\"",
            "profile.thermo.kind",
            "kind must be",
        ),
        (
            "type = \"float\"",
            "type = \"double\"",
            "profile.thermo.command[0].params[0].type",
            "unknown parameter type",
        ),
        (
            "kind = \"exec\"",
            "kind = \"modbus\"",
            "device[0].profile",
            "describes a Modbus point map",
        ),
    ];
    for (from, to, path, words) in cases {
        assert!(EXEC.contains(from), "{from}");
        let src = EXEC.replacen(from, to, 1);
        let d = errors(&src);
        assert!(!d.is_empty(), "case {to:?}");
        assert!(
            d.iter()
                .any(|d| d.path == path && d.message.contains(words)),
            "case {to:?}: {d:#?}"
        );
    }
    // options only on exec devices
    let d = errors(&GOOD.replace("poll = \"1s\"", "poll = \"1s\"\noptions = { a = 1 }"));
    assert!(d.iter().any(|d| d.path == "device[0].options"), "{d:#?}");
}

#[cfg(feature = "ble")]
#[test]
fn ble_buses_and_profiles() {
    let base = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/ble.toml"))
        .unwrap_or_default();
    let c = parse(&base, Path::new("ble.toml")).unwrap_or_else(|e| panic!("{e}"));
    let valve = c
        .devices
        .iter()
        .find(|d| d.node_id == "valve-1")
        .and_then(|d| match &d.kind {
            DeviceKind::Ble { device, .. } => Some(device.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("valve"));
    match &valve.kind {
        fieldgate_ble::Kind::Gatt { chars, commands } => {
            assert_eq!(chars[0].uuid, "00002a6e-0000-1000-8000-00805f9b34fb");
            assert!(chars[1].notify);
            assert_eq!(commands[0].decl.name, "set_position");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(c.buses[0].timeout, Duration::from_secs(10));
    let cases = [
        (
            "address = \"A4:C1:38:12:34:56\"",
            "address = \"A4:C1:38\"",
            "device[0].address",
            "not a Bluetooth address",
        ),
        (
            "address = \"A4:C1:38:12:34:56\"\n",
            "",
            "device[0].address",
            "needs `address",
        ),
        (
            "format = \"auto\"",
            "format = \"eddystone\"",
            "profile.thermometer.format",
            "unknown advertisement format",
        ),
        (
            "uuid = \"2a6e\"",
            "uuid = \"2a6e0\"",
            "profile.valve.characteristic[0].uuid",
            "not a UUID",
        ),
        (
            "type = \"i16\"",
            "type = \"i24\"",
            "profile.valve.characteristic[0].type",
            "unknown characteristic type",
        ),
        (
            "stale_after = \"5m\"",
            "stale_after = \"10ms\"",
            "profile.thermometer.stale_after",
            "at least 1s",
        ),
        (
            "kind = \"ble\"\nproduct_id = \"valve\"",
            "kind = \"ble\"\nproduct_id = \"valve\"\nformat = \"auto\"",
            "profile.valve.format",
            "advertisement sensors",
        ),
    ];
    for (from, to, path, words) in cases {
        assert!(base.contains(from), "{from}");
        let d = errors(&base.replacen(from, to, 1));
        assert!(
            d.iter()
                .any(|d| d.path == path && d.message.contains(words)),
            "case {to:?}: {d:#?}"
        );
    }
}

#[test]
fn dialects_and_their_identity_keys() {
    for d in ["thingsboard", "oceanconnect"] {
        let c = parse(
            &GOOD.replace("dialect = \"iotda\"", &format!("dialect = \"{d}\"")),
            Path::new("t.toml"),
        );
        assert!(c.is_ok(), "{d}: {:?}", c.err());
    }
    let att = GOOD.replace("dialect = \"iotda\"", "dialect = \"allthingstalk\"");
    let d = errors(&att);
    assert!(d.iter().any(|d| d.path == "platform.account" && d.message.contains("client id of the account")), "{d:#?}");
    let c = parse(
        &att.replace(
            "device_id = \"gw_1\"",
            "device_id = \"gw_1\"\naccount = \"acc\"",
        ),
        Path::new("t.toml"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (c.platform.dialect, c.platform.account.as_str()),
        (Dialect::AllThingsTalk, "acc")
    );
    let d = errors(&GOOD.replace(
        "device_id = \"gw_1\"",
        "device_id = \"gw_1\"\naccount = \"acc\"",
    ));
    assert!(
        d.iter().any(
            |d| d.path == "platform.account" && d.message.contains("for dialect allthingstalk")
        ),
        "{d:#?}"
    );
}

#[test]
fn sparkplug_needs_a_group_and_clean_ids() {
    let sp = GOOD.replace("dialect = \"iotda\"", "dialect = \"sparkplug\"");
    assert!(errors(&sp).iter().any(|d| d.path == "platform.group_id"));
    let with = |extra: &str, id: &str| {
        sp.replace(
            "device_id = \"gw_1\"",
            &format!("device_id = \"{id}\"\n{extra}"),
        )
    };
    assert!(errors(&with("group_id = \"a/b\"", "gw_1"))
        .iter()
        .any(|d| d.path == "platform.group_id"));
    assert!(errors(&with("group_id = \"G\"", "gw+1"))
        .iter()
        .any(|d| d.path == "platform.device_id"));
    let c = parse(&with("group_id = \"G\"", "gw_1"), Path::new("t.toml"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.platform.group_id, "G");
    assert!(errors(&GOOD.replace(
        "device_id = \"gw_1\"",
        "device_id = \"gw_1\"\ngroup_id = \"G\""
    ))
    .iter()
    .any(|d| d.path == "platform.group_id" && d.message.contains("for dialect sparkplug")));
}

#[test]
fn client_certificates_and_basic_credentials() {
    let tb = GOOD.replace("dialect = \"iotda\"", "dialect = \"thingsboard\"");
    let c = parse(
        &tb.replace(
            "device_id = \"gw_1\"",
            "device_id = \"gw_1\"\nusername = \"u\"\nclient_cert = \"/c.pem\"\nclient_key = \"/k.pem\"\ntls = true",
        ),
        Path::new("t.toml"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.platform.username.as_deref(), Some("u"));
    assert_eq!(
        c.platform.client_auth,
        Some((PathBuf::from("/c.pem"), PathBuf::from("/k.pem")))
    );
    let d = errors(&tb.replace(
        "device_id = \"gw_1\"",
        "device_id = \"gw_1\"\nclient_cert = \"/c.pem\"",
    ));
    assert!(d
        .iter()
        .any(|d| d.path == "platform.client_cert" && d.message.contains("go together")));
    let d = errors(&GOOD.replace(
        "device_id = \"gw_1\"",
        "device_id = \"gw_1\"\nusername = \"u\"",
    ));
    assert!(d.iter().any(|d| d.path == "platform.username"));
}

#[test]
fn thingsboard_keys_are_property_or_service_property() {
    let tb = GOOD.replace("dialect = \"iotda\"", "dialect = \"thingsboard\"");
    let with = |keys: &str| {
        tb.replace(
            "secret = \"s3cret\"",
            &format!("secret = \"t\"\nkeys = {keys}"),
        )
    };
    let c =
        parse(&with("\"service.property\""), Path::new("t.toml")).unwrap_or_else(|e| panic!("{e}"));
    assert!(c.platform.service_keys);
    let c = parse(&with("\"property\""), Path::new("t.toml")).unwrap_or_else(|e| panic!("{e}"));
    assert!(!c.platform.service_keys);
    let d = errors(&with("\"svc:prop\""));
    assert!(d
        .iter()
        .any(|d| d.path == "platform.keys" && d.message.contains("service.property")));
    let d = errors(&GOOD.replace(
        "secret = \"s3cret\"",
        "secret = \"s3cret\"\nkeys = \"property\"",
    ));
    assert!(d
        .iter()
        .any(|d| d.path == "platform.keys" && d.message.contains("thingsboard")));
}

#[test]
fn sparkplug_only_options() {
    for (line, key) in [
        ("aliases = true", "platform.aliases"),
        ("primary_host_id = \"scada\"", "platform.primary_host_id"),
        ("qos = 0", "platform.qos"),
    ] {
        let d = errors(&GOOD.replace(
            "secret = \"s3cret\"",
            &format!("secret = \"s3cret\"\n{line}"),
        ));
        assert!(
            d.iter()
                .any(|d| d.path == key && d.message.contains("sparkplug")),
            "{d:?}"
        );
    }
    let sp = GOOD
        .replace(
            "dialect = \"iotda\"",
            "dialect = \"sparkplug\"\ngroup_id = \"G\"",
        )
        .replace(
            "secret = \"s3cret\"",
            "secret = \"s\"\naliases = true\nprimary_host_id = \"scada\"",
        );
    let c = parse(&sp, Path::new("t.toml")).unwrap_or_else(|e| panic!("{e}"));
    assert!(c.platform.aliases);
    assert_eq!(c.platform.primary_host_id.as_deref(), Some("scada"));
    assert_eq!(c.platform.qos, 0, "the specification's QoS by default");
    let one = sp.replace("aliases = true", "aliases = true\nqos = 1");
    let c = parse(&one, Path::new("t.toml")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.platform.qos, 1);
    let d = errors(&sp.replace("aliases = true", "aliases = true\nqos = 2"));
    assert!(
        d.iter()
            .any(|d| d.path == "platform.qos" && d.line > 0 && d.message.contains("0")),
        "{d:?}"
    );
    let iotda = parse(GOOD, Path::new("t.toml")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(iotda.platform.qos, 1, "other dialects publish at QoS 1");
    let d = errors(&sp.replace("\"scada\"", "\"a/b\""));
    assert!(
        d.iter().any(|d| d.path == "platform.primary_host_id"),
        "{d:?}"
    );
}

/// `config/example.toml` spells out the defaults: they must be the ones the code uses.
#[test]
fn the_example_config_states_the_real_defaults() {
    let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/config/example.toml"));
    let c = load(path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.gateway.report_interval, defaults::REPORT_INTERVAL);
    assert_eq!(c.gateway.runtime_dir, Path::new(defaults::RUNTIME_DIR));
    assert_eq!(c.platform.keepalive, defaults::KEEPALIVE);
    assert_eq!(c.platform.data_window, defaults::INFLIGHT);
    assert_eq!(
        c.platform.data_window_bytes as u64,
        defaults::INFLIGHT_BYTES
    );
    assert_eq!(c.platform.max_packet, defaults::MAX_PACKET);
    assert_eq!(c.platform.command_timeout, defaults::COMMAND_TIMEOUT);
    assert_eq!(c.store.commit_interval, defaults::COMMIT_INTERVAL);
    assert_eq!(c.store.path, Path::new(defaults::STORE_PATH));
    assert_eq!(c.store.limits, Limits::default());
    // [gateway] states the default strategy; the profile, a point and a device override it.
    use crate::report::{Agg, Strategy};
    assert_eq!(defaults::REPORT_STRATEGY, Strategy::Always);
    let r = &c.devices[0].report;
    let v = r.rule("energy", "voltage_l1");
    assert_eq!(
        (v.strategy, v.deadband_percent, v.period),
        (
            Strategy::OnChangeOrPeriod,
            0.5,
            Some(Duration::from_secs(900))
        )
    );
    assert_eq!(
        r.rule("energy", "power").aggregate,
        vec![Agg::Avg, Agg::Min, Agg::Max]
    );
    let e = r.rule("energy", "energy_import");
    assert_eq!((e.deadband, e.deadband_percent), (0.1, 0.0));
    let pump = c
        .devices
        .iter()
        .find(|d| d.node_id == "meter-pump-room")
        .map(|d| d.report.default.period);
    assert_eq!(pump, Some(Some(Duration::from_secs(300))));
}

#[test]
fn report_rules_merge_gateway_profile_device_point() {
    use crate::report::{Agg, Strategy};
    let src = GOOD
        .replace(
            "name = \"cabinet-7\"",
            "name = \"cabinet-7\"\nreport = \"on_change_or_period\"\nperiod = \"15m\"\ndeadband = 1.0",
        )
        .replace(
            "service = \"energy\"\n",
            "service = \"energy\"\ndeadband = 2.0\n",
        )
        .replace(
            "scale = 0.1\n",
            "scale = 0.1\ndeadband_percent = 0.5\nmin = 0.0\nmax = 500.0\n\n[[profile.meter.point]]\nproperty = \"power\"\naddress = \"input:1\"\naggregate = [\"avg\", \"max\"]\nwindow = \"1m\"\n",
        )
        .replace("poll = \"1s\"", "poll = \"1s\"\nperiod = \"5m\"");
    let c = parse(&src, Path::new("t.toml")).unwrap_or_else(|e| panic!("{e}"));
    let r = &c.devices[0].report;
    // The device: gateway's strategy, profile's deadband, its own period.
    assert_eq!(r.default.strategy, Strategy::OnChangeOrPeriod);
    assert_eq!(r.default.deadband, 2.0);
    assert_eq!(r.default.period, Some(Duration::from_secs(300)));
    // A point over its device: its percent of its declared span.
    let v = r.rule("energy", "voltage");
    assert_eq!(
        (v.deadband, v.deadband_percent, v.span, v.period),
        (2.0, 0.5, Some(500.0), Some(Duration::from_secs(300)))
    );
    let p = r.rule("energy", "power");
    assert_eq!(p.aggregate, vec![Agg::Avg, Agg::Max]);
    assert_eq!(p.window, Duration::from_secs(60));
    // Nothing set anywhere: every reading, as before.
    let plain = parse(GOOD, Path::new("t.toml")).unwrap_or_else(|e| panic!("{e}"));
    assert!(plain.devices[0].report.passes_all());
    // Sparkplug reports by exception unless told otherwise.
    let sp = GOOD.replace(
        "dialect = \"iotda\"",
        "dialect = \"sparkplug\"\ngroup_id = \"G\"",
    );
    let c = parse(&sp, Path::new("t.toml")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.devices[0].report.default.strategy, Strategy::OnChange);
}

#[test]
fn report_rule_mistakes_are_found_where_they_are_written() {
    for (from, to, key, needle) in [
        (
            "poll = \"1s\"",
            "poll = \"1s\"\nreport = \"sometimes\"",
            "device[0].report",
            "report = \"sometimes\"",
        ),
        (
            "scale = 0.1",
            "scale = 0.1\ndeadband = -1.0",
            "profile.meter.point[0].deadband",
            "deadband = -1.0",
        ),
        (
            "service = \"energy\"",
            "service = \"energy\"\ndeadband_percent = 150.0",
            "profile.meter.deadband_percent",
            "deadband_percent",
        ),
        (
            "name = \"cabinet-7\"",
            "name = \"cabinet-7\"\nreport = \"period\"",
            "gateway.report",
            "report = \"period\"",
        ),
        (
            "scale = 0.1",
            "scale = 0.1\naggregate = [\"avg\"]",
            "profile.meter.point[0].aggregate",
            "aggregate",
        ),
        (
            "scale = 0.1",
            "scale = 0.1\nwindow = \"10s\"",
            "profile.meter.point[0].window",
            "window",
        ),
        (
            "scale = 0.1",
            "scale = 0.1\naggregate = [\"avg\", \"median\"]\nwindow = \"10s\"",
            "profile.meter.point[0].aggregate",
            "median",
        ),
        (
            "poll = \"1s\"",
            "poll = \"1s\"\nperiod = \"0s\"\nreport = \"period\"",
            "device[0].period",
            "period = \"0s\"",
        ),
    ] {
        let src = GOOD.replacen(from, to, 1);
        let d = errors(&src);
        assert_eq!(d.len(), 1, "{to}: {d:#?}");
        assert_eq!(d[0].path, key, "{to}: {d:#?}");
        assert_eq!(d[0].line, line_of(&src, needle), "{to}: {d:#?}");
    }
    // A key of another level's table is still an unknown key where it does not belong.
    let d = errors(&GOOD.replace("secret = \"s3cret\"", "secret = \"s3cret\"\ndeadband = 1.0"));
    assert!(d.iter().any(|d| d.path == "platform"), "{d:#?}");
}

#[test]
fn remote_operations_are_off_unless_listed() {
    let c = parse(GOOD, Path::new("t.toml")).unwrap_or_else(|e| panic!("{e}"));
    assert!(c.remote.allow.is_empty());
    assert_eq!(c.remote.rollback_after, defaults::ROLLBACK_AFTER);
    let on = format!(
        "{GOOD}\n[remote]\nallow = [\"ping\", \"config_apply\"]\nrollback_after = \"30s\"\n"
    );
    let c = parse(&on, Path::new("t.toml")).unwrap_or_else(|e| panic!("{e}"));
    assert!(c.remote.allows("ping") && !c.remote.allows("restart"));
    assert_eq!(c.remote.rollback_after, Duration::from_secs(30));
    for (bad, key) in [
        ("allow = [\"format_disk\"]", "remote.allow"),
        ("rollback_after = \"1s\"", "remote.rollback_after"),
        ("allow_all = true", "remote"),
    ] {
        let src = format!("{GOOD}\n[remote]\n{bad}\n");
        let d = errors(&src);
        assert_eq!(d.len(), 1, "{d:#?}");
        assert_eq!(d[0].path, key);
        assert_eq!(d[0].line, line_of(&src, bad));
    }
}
