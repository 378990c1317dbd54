//! TLS to the broker: server verification is on. A gateway trusting the wrong CA refuses the
//! broker's certificate and sends nothing; with the right `ca_file` it delivers.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

fn openssl(dir: &Path, args: &[&str]) {
    let st = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("openssl: {e}"));
    assert!(
        st.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&st.stderr)
    );
}

/// A CA, a server certificate for 127.0.0.1 signed by it, and an unrelated CA.
fn make_pki(dir: &Path) {
    for ca in ["ca", "other-ca"] {
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN={ca}"),
                "-keyout",
                &format!("{ca}.key"),
                "-out",
                &format!("{ca}.pem"),
            ],
        );
    }
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    );
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            "-out",
            "server.pem",
        ],
    );
}

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
