//! The gateway's own operations, asked for by the platform, end to end: the `fieldgate` binary,
//! a real mosquitto, a real Modbus server and a test platform. IoTDA (commands without an
//! object device, or addressed to the gateway) and ThingsBoard (RPCs on the gateway's own
//! topic, `gateway_` names): each allowed operation answered, a disallowed one refused, logs
//! holding the lines just produced, `config_get` redacted, `config_apply` refusing a broken
//! config with positions (nothing changed), applying a good one (a new child appears on the
//! platform), and rolling back one that points the uplink at a dead broker (the gateway comes
//! back on the old one and reports `config_status`), `restart` exiting 79 after a clean stop.
//! No secret in any answer.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value as Json};

const SECRET: &str = "s3cret-value-never-shown";

/// The answer to IoTDA command `rid`, once it came.
fn iotda_answer(p: &TestPlatform, rid: &str) -> Option<Json> {
    p.messages()
        .into_iter()
        .find(|m| {
            m.topic
                .ends_with(&format!("/commands/response/request_id={rid}"))
        })
        .map(|m| m.json)
}

fn ask_iotda(p: &TestPlatform, rid: &str, name: &str, paras: Json) -> Json {
    p.send(
        &format!("$oc/devices/gw/sys/commands/request_id={rid}"),
        json!({"command_name": name, "paras": paras})
            .to_string()
            .as_bytes(),
    );
    let mut got = None;
    wait_until(
        Duration::from_secs(15),
        &format!("answer to {name}"),
        || {
            got = iotda_answer(p, rid);
            got.is_some()
        },
    );
    got.unwrap_or_default()
}

#[test]
fn iotda_operations_config_apply_and_rollback() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let broker = Mosquitto::start(dir.path());
    let p = TestPlatform::start(broker.port, "gw");
    let sim = meter_sim();
    let platform = format!(
        "dialect = \"iotda\"\nhost = \"127.0.0.1\"\nport = {}\ntls = false\ndevice_id = \"gw\"\nsecret = \"{SECRET}\"",
        broker.port
    );
    let cfg = meter_config(dir.path(), &platform, sim.port);
    let remote = "\n[remote]\nallow = [\"ping\", \"status\", \"logs\", \"config_get\", \"config_apply\", \"restart_bus\"]\nrollback_after = \"10s\"\n";
    let base = std::fs::read_to_string(&cfg).unwrap_or_default() + remote;
    std::fs::write(&cfg, &base).unwrap_or_else(|e| panic!("{e}"));
    let gw = Gateway::start(&cfg);
    wait_until(Duration::from_secs(20), "children reporting", || {
        p.reports().iter().any(|(d, _)| d == "energy-meter_m1")
    });

    // Health as the gateway's own telemetry (service "gateway", every report_interval).
    let own = |key: &str| -> Option<u64> {
        p.messages()
            .iter()
            .rev()
            .filter(|m| m.topic == "$oc/devices/gw/sys/properties/report")
            .find_map(|m| m.json["services"][0]["properties"][key].as_u64())
    };
    wait_until(
        Duration::from_secs(20),
        "bus activity in the health report",
        || own("bus.plant.polls").unwrap_or(0) > 0,
    );
    for key in [
        "rss_kib",
        "cpu_ms",
        "queue_oldest_age_s",
        "dropped_full",
        "connects",
        "requests_done",
        "requests_failed",
        "children_offline",
        "bus.plant.poll_errors",
        "bus.plant.overruns",
    ] {
        assert!(own(key).is_some(), "{key} in the gateway's own report");
    }
    assert!(own("rss_kib").unwrap_or(0) > 1000, "RSS in KiB");
    assert_eq!(own("connects"), Some(1));

    let pong = ask_iotda(&p, "1", "ping", json!({}));
    assert_eq!(pong["result_code"], 0, "{pong}");
    assert_eq!(pong["paras"]["pong"], true, "{pong}");
    let no = ask_iotda(&p, "2", "restart", json!({}));
    assert_eq!(no["result_code"], 8, "not in allow: {no}");
    assert!(no["paras"]["message"]
        .as_str()
        .unwrap_or_default()
        .contains("[remote] allow"));
    let unknown = ask_iotda(&p, "3", "format_disk", json!({}));
    assert_eq!(unknown["result_code"], 8, "{unknown}");

    let status = ask_iotda(&p, "4", "status", json!({}));
    let kids = status["paras"]["children"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(kids.iter().any(|c| c["node_id"] == "m1"), "{status}");
    let logs = ask_iotda(&p, "5", "logs", json!({"lines": 50}));
    let lines: Vec<String> = logs["paras"]["lines"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l.as_str().map(str::to_string))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("platform operation") && l.contains("ping")),
        "the lines just produced: {lines:#?}"
    );
    let bad_logs = ask_iotda(&p, "6", "logs", json!({"lines": 100000}));
    assert_eq!(bad_logs["result_code"], 4, "{bad_logs}");
    let got = ask_iotda(&p, "7", "config_get", json!({}));
    let toml_text = got["paras"]["toml"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        toml_text.contains("<redacted>") && toml_text.contains("[remote]"),
        "{got}"
    );

    // A broken config: refused with positions, nothing changed.
    let broken = base.replace("poll = \"100ms\"", "poll = \"soon\"");
    let r = ask_iotda(&p, "8", "config_apply", json!({"toml": broken}));
    assert_eq!(r["result_code"], 4, "{r}");
    let why = r["paras"]["message"].as_str().unwrap_or_default();
    let line = broken
        .lines()
        .position(|l| l.contains("\"soon\""))
        .map_or(0, |i| i + 1);
    assert!(
        why.contains(&format!("{line}:8: device[0]")) && why.contains("not a duration"),
        "line:column of each problem: {why}"
    );
    assert_eq!(
        std::fs::read_to_string(&cfg).unwrap_or_default(),
        base,
        "file untouched"
    );

    // A good one: a third meter appears on the platform.
    let more = base.clone()
        + "\n[[device]]\nnode_id = \"m3\"\nbus = \"plant\"\nprofile = \"meter\"\nunit = 3\npoll = \"100ms\"\n";
    let r = ask_iotda(&p, "9", "config_apply", json!({"toml": more}));
    assert_eq!(r["result_code"], 0, "{r}");
    wait_until(Duration::from_secs(20), "the new child reporting", || {
        p.reports().iter().any(|(d, _)| d == "energy-meter_m3")
    });
    assert_eq!(std::fs::read_to_string(&cfg).unwrap_or_default(), more);
    let bus = ask_iotda(&p, "10", "restart_bus", json!({"bus": "plant"}));
    assert_eq!(bus["result_code"], 0, "{bus}");

    // One that points the uplink at a dead broker: rolled back after 10 s, reported.
    let dead = free_port();
    let lost = more.replace(
        &format!("port = {}", broker.port),
        &format!("port = {dead}"),
    );
    let r = ask_iotda(&p, "11", "config_apply", json!({"toml": lost}));
    assert_eq!(r["result_code"], 0, "{r}");
    wait_until(Duration::from_secs(40), "rolled back and reported", || {
        p.messages().iter().any(|m| {
            m.topic == "$oc/devices/gw/sys/properties/report"
                && m.json.to_string().contains("rolled back")
        })
    });
    assert_eq!(
        std::fs::read_to_string(&cfg).unwrap_or_default(),
        more,
        "the previous file is back"
    );
    let again = ask_iotda(&p, "12", "ping", json!({}));
    assert_eq!(
        again["result_code"], 0,
        "answered on the old broker again: {again}"
    );

    // No secret in anything the gateway said (the platform's own requests carried it).
    for m in p
        .messages()
        .into_iter()
        .filter(|m| !m.topic.contains("/commands/request_id="))
    {
        assert!(
            !String::from_utf8_lossy(&m.raw).contains(SECRET),
            "secret in {}",
            m.topic
        );
    }
    drop(gw);
}

#[test]
fn thingsboard_gateway_rpcs() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let broker = Mosquitto::start(dir.path());
    let p = TestPlatform::start_on(broker.port, "gw", "v1/#");
    let sim = meter_sim();
    let platform = format!(
        "dialect = \"thingsboard\"\nhost = \"127.0.0.1\"\nport = {}\ntls = false\ndevice_id = \"gw\"\nsecret = \"{SECRET}\"",
        broker.port
    );
    let cfg = meter_config(dir.path(), &platform, sim.port);
    let text = std::fs::read_to_string(&cfg).unwrap_or_default()
        + "\n[remote]\nallow = [\"ping\", \"logs\", \"status\", \"restart\"]\n";
    std::fs::write(&cfg, text).unwrap_or_else(|e| panic!("{e}"));
    let gw = Gateway::start(&cfg);
    wait_until(Duration::from_secs(20), "telemetry", || {
        p.messages()
            .iter()
            .any(|m| m.topic == "v1/gateway/telemetry")
    });
    let ask = |id: u32, method: &str, params: Json| -> Json {
        p.send(
            &format!("v1/devices/me/rpc/request/{id}"),
            json!({"method": method, "params": params})
                .to_string()
                .as_bytes(),
        );
        let topic = format!("v1/devices/me/rpc/response/{id}");
        let mut got = None;
        wait_until(Duration::from_secs(15), method, || {
            got = p
                .messages()
                .into_iter()
                .find(|m| m.topic == topic)
                .map(|m| m.json);
            got.is_some()
        });
        got.unwrap_or_default()
    };
    let pong = ask(1, "gateway_ping", json!({}));
    assert_eq!(pong["code"], 200, "{pong}");
    assert_eq!(pong["resp"]["pong"], true, "{pong}");
    let refused = ask(2, "gateway_config_get", json!({}));
    assert_ne!(refused["code"], 200, "{refused}");
    assert!(refused.to_string().contains("not allowed"), "{refused}");
    let logs = ask(3, "logs", json!({"lines": 20, "level": "info"}));
    assert!(
        logs["resp"]["lines"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|l| l
                .as_str()
                .unwrap_or_default()
                .contains("gateway_config_get")
                || l.as_str().unwrap_or_default().contains("config_get")),
        "{logs}"
    );
    let status = ask(4, "gateway_status", json!({}));
    assert!(status["resp"]["children"].is_array(), "{status}");
    for m in p.messages() {
        assert!(
            !String::from_utf8_lossy(&m.raw).contains(SECRET),
            "{}",
            m.topic
        );
    }
    // `restart`: answered, then a clean stop with the status systemd restarts on (79).
    let mut gw = gw;
    let r = ask(5, "gateway_restart", json!({}));
    assert_eq!(r["resp"]["restarting"], true, "{r}");
    wait_until(Duration::from_secs(20), "the daemon exits", || {
        !gw.running()
    });
    let code = gw.child.wait().ok().and_then(|s| s.code());
    assert_eq!(code, Some(79), "{}", gw.log().join("\n"));
}

/// OceanConnect: a `cloudReq` without `deviceId` (or with the gateway's) is an operation;
/// answered by `deviceRsp` with the result as `body`.
#[test]
fn oceanconnect_cloud_requests_to_the_gateway() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let broker = Mosquitto::start(dir.path());
    let p = TestPlatform::start_on(broker.port, "gw_oc", "/huawei/v1/devices/gw_oc/#");
    let sim = meter_sim();
    let cfg = meter_config(
        dir.path(),
        &format!(
            "dialect = \"oceanconnect\"\nhost = \"127.0.0.1\"\nport = {}\ntls = false\ndevice_id = \"gw_oc\"\nsecret = \"{SECRET}\"",
            broker.port
        ),
        sim.port,
    );
    let text = std::fs::read_to_string(&cfg).unwrap_or_default()
        + "\n[remote]\nallow = [\"ping\", \"config_get\"]\n";
    std::fs::write(&cfg, text).unwrap_or_else(|e| panic!("{e}"));
    let gw = Gateway::start(&cfg);
    let data = "/huawei/v1/devices/gw_oc/data/json";
    wait_until(Duration::from_secs(20), "data", || {
        p.messages().iter().any(|m| m.topic == data)
    });
    let ask = |mid: u64, cmd: &str, device: Option<&str>| -> Json {
        let mut req = json!({"msgType": "cloudReq", "serviceId": "gateway", "mid": mid, "cmd": cmd, "paras": {}});
        if let Some(d) = device {
            req["deviceId"] = json!(d);
        }
        p.send(
            "/huawei/v1/devices/gw_oc/command/json",
            req.to_string().as_bytes(),
        );
        let mut got = None;
        wait_until(Duration::from_secs(15), cmd, || {
            got = p
                .messages()
                .into_iter()
                .find(|m| {
                    m.topic == data && m.json["msgType"] == "deviceRsp" && m.json["mid"] == mid
                })
                .map(|m| m.json);
            got.is_some()
        });
        got.unwrap_or_default()
    };
    let pong = ask(7001, "ping", None);
    assert_eq!(
        (pong["errcode"].as_u64(), pong["body"]["pong"].as_bool()),
        (Some(0), Some(true)),
        "{pong}"
    );
    let own = ask(7002, "config_get", Some("gw_oc"));
    assert_eq!(own["errcode"], 0, "{own}");
    assert!(!own.to_string().contains(SECRET), "{own}");
    let refused = ask(7003, "logs", None);
    assert_eq!(refused["errcode"], 8, "{refused}");
    drop(gw);
}

/// AllThingsTalk: a command to a gateway asset named after an operation runs it; the
/// result is that asset's new state (`{"value":…,"at":…}`).
#[test]
fn allthingstalk_gateway_asset_commands() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let broker = Mosquitto::start(dir.path());
    let p = TestPlatform::start_on(broker.port, "gw-att", "client/acc1/out/#");
    let sim = meter_sim();
    let cfg = meter_config(
        dir.path(),
        &format!(
            "dialect = \"allthingstalk\"\nhost = \"127.0.0.1\"\nport = {}\ntls = false\ndevice_id = \"gw-att\"\naccount = \"acc1\"\nsecret = \"{SECRET}\"",
            broker.port
        ),
        sim.port,
    );
    let text = std::fs::read_to_string(&cfg).unwrap_or_default()
        + "\n[remote]\nallow = [\"ping\", \"logs\"]\n";
    std::fs::write(&cfg, text).unwrap_or_else(|e| panic!("{e}"));
    let gw = Gateway::start(&cfg);
    let out = "client/acc1/out/gateway/gw-att";
    wait_until(Duration::from_secs(20), "states", || {
        p.messages()
            .iter()
            .any(|m| m.topic.starts_with(&format!("{out}/device/")))
    });
    let ask = |asset: &str, value: &str| -> Json {
        let before = p.messages().len();
        p.send(
            &format!("client/acc1/in/gateway/gw-att/asset/{asset}/command"),
            value.as_bytes(),
        );
        let topic = format!("{out}/asset/{asset}/state");
        let mut got = None;
        wait_until(Duration::from_secs(15), asset, || {
            got = p.messages()[before..]
                .iter()
                .find(|m| m.topic == topic)
                .map(|m| m.json.clone());
            got.is_some()
        });
        got.unwrap_or_default()
    };
    let pong = ask("ping", "true");
    assert_eq!(pong["value"]["pong"], true, "{pong}");
    assert!(
        pong["at"].as_str().unwrap_or_default().ends_with('Z'),
        "{pong}"
    );
    let logs = ask("logs", r#"{"value": {"lines": 5}}"#);
    assert!(
        logs["value"]["lines"]
            .as_array()
            .is_some_and(|l| l.len() <= 5),
        "{logs}"
    );
    let refused = ask("status", "true");
    assert!(
        refused["value"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("not allowed"),
        "{refused}"
    );
    drop(gw);
}

/// Sparkplug: `Node Control/Restart Bus` and `Node Control/Reboot` in an NCMD (born in the
/// NBIRTH) run `restart_bus` and `restart`; Sparkplug commands have no answer, so the effect
/// and the log show it. Not allowed: logged as refused, nothing happens.
#[test]
fn sparkplug_node_control() {
    use fieldgate::uplink::dialect::sparkplug::{metric, Payload, REBOOT, RESTART_BUS};
    use fieldgate_driver::Value;
    use prost::Message;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let broker = Mosquitto::start(dir.path());
    let p = TestPlatform::start_on(broker.port, "host", "spBv1.0/#");
    let sim = meter_sim();
    let cfg = meter_config(
        dir.path(),
        &format!(
            "dialect = \"sparkplug\"\nhost = \"127.0.0.1\"\nport = {}\ntls = false\ndevice_id = \"gw1\"\ngroup_id = \"G\"\nsecret = \"{SECRET}\"",
            broker.port
        ),
        sim.port,
    );
    let text = std::fs::read_to_string(&cfg).unwrap_or_default()
        + "\n[remote]\nallow = [\"restart_bus\"]\n";
    std::fs::write(&cfg, &text).unwrap_or_else(|e| panic!("{e}"));
    let mut gw = Gateway::start(&cfg);
    wait_until(Duration::from_secs(20), "NBIRTH", || {
        p.raw().iter().any(|(t, _)| t == "spBv1.0/G/NBIRTH/gw1")
    });
    let nbirth = p
        .raw()
        .into_iter()
        .find(|(t, _)| t == "spBv1.0/G/NBIRTH/gw1")
        .and_then(|(_, b)| Payload::decode(b.as_slice()).ok())
        .unwrap_or_default();
    for name in [REBOOT, RESTART_BUS] {
        assert!(
            nbirth
                .metrics
                .iter()
                .any(|m| m.name.as_deref() == Some(name)),
            "{name} born in the NBIRTH"
        );
    }
    let ncmd = |name: &str, v: Value| {
        let pl = Payload {
            timestamp: Some(1),
            metrics: vec![metric(name, &v, 1)],
            ..Default::default()
        };
        p.send("spBv1.0/G/NCMD/gw1", &pl.encode_to_vec());
    };
    ncmd(RESTART_BUS, Value::Text("plant".into()));
    wait_until(Duration::from_secs(10), "the bus restarted", || {
        gw.count(&["bus restarted on the platform's request"]) == 1
    });
    ncmd(REBOOT, Value::Bool(true));
    wait_until(Duration::from_secs(10), "refused", || {
        gw.count(&["platform operation refused", "restart"]) >= 1
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(gw.running(), "`restart` is not in allow");
    drop(gw);
}
