//! TLS to the broker: server verification is on. A gateway trusting the wrong CA refuses the
//! broker's certificate and sends nothing; with the right `ca_file` it delivers.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

fn config(dir: &Path, port: u16, ca: &str, modbus: u16) -> std::path::PathBuf {
    let text = format!(
        r#"
[gateway]
runtime_dir = "{dir}/{ca}.run"

[platform]
dialect = "iotda"
host = "127.0.0.1"
port = {port}
tls = true
ca_file = "{dir}/{ca}"
device_id = "gw_tls"
secret = "tls-secret"
reconnect_min = "200ms"
reconnect_max = "500ms"

[store]
path = "{dir}/{ca}.db"

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
    let path = dir.join(format!("{ca}.toml"));
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
    path
}

#[test]
fn tls_verifies_the_broker_certificate() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let d = dir.path();
    make_pki(d);
    let tls_port = free_port();
    let broker = Mosquitto::start_with(
        d,
        &format!("listener {tls_port} 127.0.0.1\ncafile {0}/ca.pem\ncertfile {0}/server.pem\nkeyfile {0}/server.key\n", d.display()),
    );
    let platform = TestPlatform::start(broker.port, "gw_tls");
    let sim = ModbusSim::new(SimState::default());

    // Wrong trust anchor: the handshake fails, nothing is delivered, and the log says why.
    let mut wrong = Gateway::start(&config(d, tls_port, "other-ca.pem", sim.port));
    wait_until(
        Duration::from_secs(10),
        "certificate refusal in the log",
        || wrong.count(&["cannot connect to the platform", "certificate"]) >= 1,
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        platform.messages().is_empty(),
        "nothing may be sent to an unverified broker"
    );
    wrong.terminate();

    // The right CA: connected and delivering.
    let mut right = Gateway::start(&config(d, tls_port, "ca.pem", sim.port));
    wait_until(Duration::from_secs(15), "reports over TLS", || {
        !platform.reports().is_empty()
    });
    assert_eq!(platform.reports()[0].0, "p_d1");
    assert_eq!(right.terminate(), Some(0));
}

/// A client certificate for the gateway, signed by the CA.
fn make_client_cert(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=gw-x509",
            "-keyout",
            "client.key",
            "-out",
            "client.csr",
        ],
    );
    // Extensions make it an X.509 v3 certificate (rustls refuses v1 ones).
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n")
        .unwrap_or_else(|e| panic!("{e}"));
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "client.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "client.ext",
            "-out",
            "client.pem",
        ],
    );
}

/// Mutual TLS (ThingsBoard's X.509 device credentials): a broker that requires a client
/// certificate refuses a gateway without one and accepts it with `client_cert`/`client_key`.
#[test]
fn mutual_tls_with_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let d = dir.path();
    make_pki(d);
    make_client_cert(d);
    let tls_port = free_port();
    let broker = Mosquitto::start_with(
        d,
        &format!("listener {tls_port} 127.0.0.1\ncafile {0}/ca.pem\ncertfile {0}/server.pem\nkeyfile {0}/server.key\nrequire_certificate true\n", d.display()),
    );
    let platform = TestPlatform::start_on(broker.port, "gw-x509", "v1/#");
    let sim = meter_sim();
    let platform_lines = |extra: &str| {
        format!(
            "dialect = \"thingsboard\"\nhost = \"127.0.0.1\"\nport = {tls_port}\ntls = true\nca_file = \"{0}/ca.pem\"\ndevice_id = \"gw-x509\"\nsecret = \"unused\"\n{extra}",
            d.display()
        )
    };
    let no_cert = d.join("no-cert");
    std::fs::create_dir_all(&no_cert).unwrap_or_else(|e| panic!("{e}"));
    let mut refused = Gateway::start(&meter_config(&no_cert, &platform_lines(""), sim.port));
    wait_until(
        Duration::from_secs(10),
        "refused without a certificate",
        || refused.count(&["cannot connect to the platform"]) >= 1,
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(platform.messages().is_empty());
    refused.terminate();

    let with_cert = d.join("with-cert");
    std::fs::create_dir_all(&with_cert).unwrap_or_else(|e| panic!("{e}"));
    let lines = platform_lines(&format!(
        "client_cert = \"{0}/client.pem\"\nclient_key = \"{0}/client.key\"",
        d.display()
    ));
    let mut gw = Gateway::start(&meter_config(&with_cert, &lines, sim.port));
    wait_until(Duration::from_secs(15), "telemetry over mutual TLS", || {
        platform
            .messages()
            .iter()
            .any(|m| m.topic == "v1/gateway/telemetry")
    });
    assert_eq!(gw.terminate(), Some(0));
    // The private key never reaches the log.
    let key = std::fs::read_to_string(d.join("client.key")).unwrap_or_default();
    let key_line = key.lines().nth(1).unwrap_or("-");
    assert_eq!(gw.count(&[key_line]), 0);
}
