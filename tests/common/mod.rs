//! Real peers for integration tests: a mosquitto broker on a free loopback port, in-process
//! Modbus TCP servers (tokio-modbus) that can be killed and brought back, a test platform that
//! answers like Huawei IoTDA, and the `fieldgate` binary as a child process with its log lines
//! captured. Everything binds to 127.0.0.1 and is stopped on drop.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{json, Value as Json};
use tokio_modbus::prelude::*;
use tokio_modbus::server::tcp::Server;

/// Run the `fieldgate` binary to completion: (exit code, stdout, stderr).
pub fn fieldgate(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_fieldgate"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// `fieldgate status --json -c CFG`, parsed (Null when the daemon does not answer).
pub fn status(cfg: &Path) -> Json {
    let (_, out, _) = fieldgate(&["status", "--json", "-c", &cfg.to_string_lossy()]);
    serde_json::from_str(&out).unwrap_or(Json::Null)
}

pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

/// Wait until `f` is true or panic with `what` after `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out after {timeout:?} waiting for: {what}");
}

fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

// ---------------------------------------------------------------------------------------------
/// A mosquitto broker we started, with persistence so queued QoS 1 messages for the test
/// platform's session survive a restart.
pub struct Mosquitto {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
    extra: String,
}

impl Mosquitto {
    pub fn start(dir: &Path) -> Self {
        Self::start_with(dir, "")
    }

    /// Start with extra configuration lines (e.g. a TLS listener) after the plain listener.
    pub fn start_with(dir: &Path, extra: &str) -> Self {
        // The port is chosen before mosquitto binds it; if something took it meanwhile,
        // mosquitto exits at once: try another.
        for _ in 0..5 {
            let mut m = Mosquitto {
                port: free_port(),
                dir: dir.to_path_buf(),
                child: None,
                extra: extra.to_string(),
            };
            if m.try_launch() {
                return m;
            }
        }
        panic!("mosquitto would not start on any free port");
    }

    /// Start and wait until *this* mosquitto says it runs and the port answers: another
    /// test's listener that took the port meanwhile must not pass for ours (ours then exits
    /// with "Address already in use").
    fn try_launch(&mut self) -> bool {
        let runs = self.runs();
        self.spawn();
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if let Some(c) = self.child.as_mut() {
                if matches!(c.try_wait(), Ok(Some(_))) {
                    self.child = None;
                    return false;
                }
            }
            if self.runs() > runs && port_open(self.port) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    fn launch(&mut self) {
        let runs = self.runs();
        self.spawn();
        let port = self.port;
        wait_until(Duration::from_secs(10), "mosquitto listening", || {
            self.runs() > runs && port_open(port)
        });
    }

    /// The broker's own log (connections, drops: "Outgoing messages are being dropped").
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("mosquitto.log")).unwrap_or_default()
    }

    /// How many times a mosquitto logged that it runs in this directory.
    fn runs(&self) -> usize {
        self.log()
            .lines()
            .filter(|l| l.contains(" running"))
            .count()
    }

    fn spawn(&mut self) {
        let conf = self.dir.join("mosquitto.conf");
        let body = format!(
            "user {}\nper_listener_settings false\nallow_anonymous true\nset_tcp_nodelay true\npersistence true\npersistence_location {}/\nautosave_interval 1\nmax_queued_messages 100000\nqueue_qos0_messages true\nlog_dest file {}/mosquitto.log\nlog_type error\nlog_type warning\nlog_type notice\nlog_type information\nconnection_messages true\nlistener {} 127.0.0.1\n{}\n",
            current_user(),
            self.dir.display(),
            self.dir.display(),
            self.port,
            self.extra
        );
        std::fs::write(&conf, body).unwrap_or_else(|e| panic!("{e}"));
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start mosquitto (apt-get install mosquitto): {e}"));
        self.child = Some(child);
    }

    /// Stop with SIGTERM (mosquitto saves its persistence file) and wait for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            send_signal(c.id(), 15);
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    /// The broker's process id (benchmarks read its CPU time).
    #[allow(dead_code)]
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Mosquitto started as root drops to the `mosquitto` user, which cannot read our temp dir
/// (persistence, TLS keys): tell it to stay whoever runs the tests.
fn current_user() -> String {
    Command::new("id")
        .arg("-un")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "root".into())
}

fn send_signal(pid: u32, sig: i32) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

// ---------------------------------------------------------------------------------------------
/// Register and coil contents of a simulated device, shared with the test.
#[derive(Default)]
pub struct SimState {
    pub holding: Mutex<HashMap<(u8, u16), u16>>,
    pub input: Mutex<HashMap<(u8, u16), u16>>,
    pub coils: Mutex<HashMap<(u8, u16), bool>>,
    /// Holding address whose u32 value (this and the next register) counts reads, per unit.
    pub counter_at: Option<u16>,
    pub counters: Mutex<HashMap<u8, u32>>,
    /// Write requests seen, as (unit, address).
    pub writes: Mutex<Vec<(u8, u16)>>,
    /// When set, only these unit ids answer; others get exception 0x0B, like a TCP gateway.
    pub only_units: Option<Vec<u8>>,
    /// When true, write requests are recorded but never answered (a device that hangs).
    pub silent_writes: std::sync::atomic::AtomicBool,
    /// When set, when every request arrived, by (client port, unit): one device's polls.
    pub arrivals: Option<Mutex<Arrivals>>,
}

/// Request arrival times by (client port, unit).
pub type Arrivals = HashMap<(u16, u8), Vec<Instant>>;

/// One client connection's view of the simulator (its port tells devices of different buses
/// with the same unit id apart).
#[derive(Clone)]
struct SimService(Arc<SimState>, u16);

impl tokio_modbus::server::Service for SimService {
    type Request = SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = std::future::Ready<Result<Option<Response>, ExceptionCode>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        if let Some(a) = &self.0.arrivals {
            if let Ok(mut a) = a.lock() {
                a.entry((self.1, req.slave))
                    .or_default()
                    .push(Instant::now());
            }
        }
        let is_write = matches!(
            req.request,
            Request::WriteSingleCoil(..)
                | Request::WriteSingleRegister(..)
                | Request::WriteMultipleRegisters(..)
                | Request::WriteMultipleCoils(..)
        );
        if is_write
            && self
                .0
                .silent_writes
                .load(std::sync::atomic::Ordering::SeqCst)
        {
            if let Ok(mut w) = self.0.writes.lock() {
                w.push((req.slave, 0xffff));
            }
            return std::future::ready(Ok(None));
        }
        std::future::ready(self.handle(req.slave, req.request).map(Some))
    }
}

impl SimService {
    fn handle(&self, unit: u8, req: Request<'static>) -> Result<Response, ExceptionCode> {
        let s = &self.0;
        if s.only_units.as_ref().is_some_and(|u| !u.contains(&unit)) {
            return Err(ExceptionCode::GatewayTargetDevice);
        }
        match req {
            Request::ReadHoldingRegisters(addr, cnt) => {
                let mut h = s.holding.lock().map_err(poisoned)?;
                if let Some(at) = s.counter_at {
                    if (addr..addr.saturating_add(cnt)).contains(&at) {
                        let mut c = s.counters.lock().map_err(poisoned)?;
                        let n = c.entry(unit).or_insert(0);
                        *n += 1;
                        h.insert((unit, at), (*n >> 16) as u16);
                        h.insert((unit, at + 1), (*n & 0xffff) as u16);
                    }
                }
                Ok(Response::ReadHoldingRegisters(
                    (0..cnt)
                        .map(|i| *h.get(&(unit, addr + i)).unwrap_or(&0))
                        .collect(),
                ))
            }
            Request::ReadInputRegisters(addr, cnt) => {
                let r = s.input.lock().map_err(poisoned)?;
                Ok(Response::ReadInputRegisters(
                    (0..cnt)
                        .map(|i| *r.get(&(unit, addr + i)).unwrap_or(&0))
                        .collect(),
                ))
            }
            Request::ReadCoils(addr, cnt) => {
                let c = s.coils.lock().map_err(poisoned)?;
                Ok(Response::ReadCoils(
                    (0..cnt)
                        .map(|i| *c.get(&(unit, addr + i)).unwrap_or(&false))
                        .collect(),
                ))
            }
            Request::WriteSingleCoil(addr, v) => {
                s.writes.lock().map_err(poisoned)?.push((unit, addr));
                s.coils.lock().map_err(poisoned)?.insert((unit, addr), v);
                Ok(Response::WriteSingleCoil(addr, v))
            }
            Request::WriteSingleRegister(addr, v) => {
                s.writes.lock().map_err(poisoned)?.push((unit, addr));
                s.holding.lock().map_err(poisoned)?.insert((unit, addr), v);
                Ok(Response::WriteSingleRegister(addr, v))
            }
            Request::WriteMultipleRegisters(addr, words) => {
                s.writes.lock().map_err(poisoned)?.push((unit, addr));
                let mut h = s.holding.lock().map_err(poisoned)?;
                for (i, w) in words.iter().enumerate() {
                    h.insert((unit, addr + i as u16), *w);
                }
                Ok(Response::WriteMultipleRegisters(addr, words.len() as u16))
            }
            _ => Err(ExceptionCode::IllegalFunction),
        }
    }
}

fn poisoned<T>(_: T) -> ExceptionCode {
    ExceptionCode::ServerDeviceFailure
}

/// A Modbus TCP server on its own runtime: `stop()` drops the runtime, closing every
/// connection at once, like pulling the cable; `start()` brings it back on the same port.
pub struct ModbusSim {
    pub port: u16,
    pub state: Arc<SimState>,
    rt: Option<tokio::runtime::Runtime>,
}

impl ModbusSim {
    pub fn new(state: SimState) -> Self {
        // Bind first and keep the listener: a port chosen and bound later can be taken meanwhile.
        let listener =
            StdListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind modbus: {e}"));
        let port = listener
            .local_addr()
            .map(|a| a.port())
            .unwrap_or_else(|e| panic!("{e}"));
        let mut s = ModbusSim {
            port,
            state: Arc::new(state),
            rt: None,
        };
        s.serve(listener);
        s
    }

    /// Bring a stopped server back on the same port.
    pub fn start(&mut self) {
        let listener = StdListener::bind(("127.0.0.1", self.port))
            .unwrap_or_else(|e| panic!("bind modbus {}: {e}", self.port));
        self.serve(listener);
    }

    fn serve(&mut self, listener: StdListener) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        listener
            .set_nonblocking(true)
            .unwrap_or_else(|e| panic!("{e}"));
        let state = self.state.clone();
        rt.spawn(async move {
            let Ok(l) = tokio::net::TcpListener::from_std(listener) else {
                return;
            };
            let server = Server::new(l);
            let on_connected = |stream, addr: std::net::SocketAddr| {
                let svc = SimService(state.clone(), addr.port());
                async move { Ok(Some((svc, stream))) }
            };
            let _ = server.serve(&on_connected, |_e| {}).await;
        });
        self.rt = Some(rt);
    }

    pub fn stop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for ModbusSim {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------------------------------------
/// A message the test platform received.
#[derive(Debug, Clone)]
pub struct Msg {
    pub topic: String,
    pub json: Json,
    pub raw: Vec<u8>,
    /// The QoS it arrived with: the lower of the publisher's and the subscription's (1).
    pub qos: u8,
}

/// A test platform: subscribes to everything under the gateway's topics with a persistent
/// session, records what arrives, and answers `add_sub_device_request` like IoTDA does
/// (device id = `{product_id}_{node_id}`).
pub struct TestPlatform {
    pub received: Arc<Mutex<Vec<Msg>>>,
    /// While false, add requests are recorded but not answered (a platform that is slow).
    pub answer_adds: Arc<std::sync::atomic::AtomicBool>,
    pub client: AsyncClient,
    /// CONNACKs the platform's own client received: more than one means it was away for a
    /// while, and QoS 0 messages published meanwhile were not for it.
    pub sessions: Arc<std::sync::atomic::AtomicUsize>,
    rt: tokio::runtime::Runtime,
    gw: String,
}

impl TestPlatform {
    pub fn start(port: u16, gw: &str) -> Self {
        Self::start_on(port, gw, &format!("$oc/devices/{gw}/sys/#"))
    }

    /// A platform that records everything under `filter` (another dialect's topics).
    pub fn start_on(port: u16, gw: &str, filter: &str) -> Self {
        let filter = filter.to_string();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        let mut o = MqttOptions::new(format!("test-platform-{gw}"), "127.0.0.1", port);
        o.set_clean_session(false);
        o.set_keep_alive(Duration::from_secs(5));
        o.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut ev) = AsyncClient::new(o, 1000);
        let received = Arc::new(Mutex::new(Vec::new()));
        let (rec, c2, gw_s) = (received.clone(), client.clone(), gw.to_string());
        let answer_adds = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let answer2 = answer_adds.clone();
        let subscribed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sub2 = subscribed.clone();
        let sessions = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let sessions2 = sessions.clone();
        rt.spawn(async move {
            loop {
                match ev.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        sessions2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let _ = c2.subscribe(filter.clone(), QoS::AtLeastOnce).await;
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        sub2.store(true, std::sync::atomic::Ordering::SeqCst)
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let json: Json = serde_json::from_slice(&p.payload).unwrap_or(Json::Null);
                        if p.topic.ends_with("/sys/events/up") {
                            let adds = answer2.load(std::sync::atomic::Ordering::SeqCst);
                            answer_sub_device_requests(&c2, &gw_s, &json, adds).await;
                        }
                        if let Ok(mut r) = rec.lock() {
                            r.push(Msg {
                                topic: p.topic.to_string(),
                                json,
                                raw: p.payload.to_vec(),
                                qos: p.qos as u8,
                            });
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        });
        wait_until(Duration::from_secs(10), "test platform subscribed", || {
            subscribed.load(std::sync::atomic::Ordering::SeqCst)
        });
        TestPlatform {
            received,
            answer_adds,
            client,
            sessions,
            rt,
            gw: gw.to_string(),
        }
    }

    pub fn messages(&self) -> Vec<Msg> {
        self.received.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// (topic, payload bytes) of everything received, for non-JSON payloads.
    pub fn raw(&self) -> Vec<(String, Vec<u8>)> {
        self.messages()
            .into_iter()
            .map(|m| (m.topic, m.raw))
            .collect()
    }

    /// Publish to the gateway (as the platform would).
    pub fn send(&self, topic: &str, payload: &[u8]) {
        let (c, t, p) = (self.client.clone(), topic.to_string(), payload.to_vec());
        self.rt
            .block_on(async move { c.publish(t, QoS::AtLeastOnce, false, p).await })
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Publish with the retain flag (a Sparkplug host's STATE).
    #[allow(dead_code)]
    pub fn send_retained(&self, topic: &str, payload: &[u8]) {
        let (c, t, p) = (self.client.clone(), topic.to_string(), payload.to_vec());
        self.rt
            .block_on(async move { c.publish(t, QoS::AtLeastOnce, true, p).await })
            .unwrap_or_else(|e| panic!("{e}"));
    }

    pub fn topic(&self, rest: &str) -> String {
        format!("$oc/devices/{}/sys/{rest}", self.gw)
    }

    /// Every (device_id, service entry) reported so far, in arrival order.
    pub fn reports(&self) -> Vec<(String, Json)> {
        let mut out = Vec::new();
        for m in self.messages() {
            if !m.topic.ends_with("/gateway/sub_devices/properties/report") {
                continue;
            }
            for d in m.json["devices"].as_array().into_iter().flatten() {
                let id = d["device_id"].as_str().unwrap_or_default().to_string();
                for s in d["services"].as_array().into_iter().flatten() {
                    out.push((id.clone(), s.clone()));
                }
            }
        }
        out
    }

    /// Every (device_id, status) in `sub_device_update_status` events, in arrival order.
    pub fn statuses(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for m in self.messages() {
            for s in m.json["services"].as_array().into_iter().flatten() {
                if s["event_type"] == "sub_device_update_status" {
                    for d in s["paras"]["device_statuses"]
                        .as_array()
                        .into_iter()
                        .flatten()
                    {
                        out.push((
                            d["device_id"].as_str().unwrap_or_default().into(),
                            d["status"].as_str().unwrap_or_default().into(),
                        ));
                    }
                }
            }
        }
        out
    }

    /// Responses on a response topic ending with `suffix`.
    pub fn responses(&self, suffix: &str) -> Vec<Json> {
        self.messages()
            .into_iter()
            .filter(|m| m.topic.ends_with(suffix))
            .map(|m| m.json)
            .collect()
    }

    /// Send a request (`{kind}/request_id={rid}`) and wait for its response.
    pub fn ask(&self, kind: &str, rid: &str, body: &[u8]) -> Json {
        self.send(&self.topic(&format!("{kind}/request_id={rid}")), body);
        let suffix = format!("{kind}/response/request_id={rid}");
        wait_until(
            Duration::from_secs(15),
            &format!("response to {rid}"),
            || !self.responses(&suffix).is_empty(),
        );
        self.responses(&suffix).remove(0)
    }
}

/// Answer add and delete requests like IoTDA (device id = `{product_id}_{node_id}`).
async fn answer_sub_device_requests(c: &AsyncClient, gw: &str, req: &Json, adds: bool) {
    for s in req["services"].as_array().into_iter().flatten() {
        let (event_type, paras) = match s["event_type"].as_str() {
            Some("add_sub_device_request") if adds => {
                let ok: Vec<Json> = s["paras"]["devices"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|d| {
                        let (node, product) = (d["node_id"].as_str().unwrap_or_default(), d["product_id"].as_str().unwrap_or_default());
                        json!({"node_id": node, "product_id": product, "device_id": format!("{product}_{node}"), "status": "INACTIVE"})
                    })
                    .collect();
                (
                    "add_sub_device_response",
                    json!({"successful_devices": ok, "failed_devices": []}),
                )
            }
            Some("delete_sub_device_request") => (
                "delete_sub_device_response",
                json!({"successful_devices": s["paras"]["devices"], "failed_devices": []}),
            ),
            _ => continue,
        };
        let resp = json!({"object_device_id": gw, "services": [{
            "service_id": "$sub_device_manager", "event_type": event_type,
            "event_time": "20240101T000000Z", "event_id": s["event_id"], "paras": paras
        }]});
        let _ = c
            .publish(
                format!("$oc/devices/{gw}/sys/events/down"),
                QoS::AtLeastOnce,
                false,
                resp.to_string(),
            )
            .await;
    }
}

// ---------------------------------------------------------------------------------------------
/// The `fieldgate` binary running a config, with stderr captured line by line.
pub struct Gateway {
    pub child: Child,
    pub lines: Arc<Mutex<Vec<String>>>,
}

impl Gateway {
    pub fn start(config: &Path) -> Self {
        Self::start_with_env(config, &[])
    }

    pub fn start_with_env(config: &Path, env: &[(&str, &str)]) -> Self {
        Self::start_under(config, env, &[])
    }

    /// Start the daemon as the last argument of `tool` (e.g. valgrind and its options), or on
    /// its own when `tool` is empty.
    pub fn start_under(config: &Path, env: &[(&str, &str)], tool: &[&str]) -> Self {
        // FG_BIN: another build of the daemon (a benchmark's baseline from an older commit).
        let bin = std::env::var_os("FG_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_fieldgate")));
        let mut cmd = match tool.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        let mut child = cmd
            .args(["run", "-c"])
            .arg(config)
            .env(
                "RUST_LOG",
                std::env::var("FG_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start fieldgate: {e}"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (l2, err) = (lines.clone(), child.stderr.take());
        std::thread::spawn(move || {
            let Some(err) = err else { return };
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if std::env::var_os("FG_TEST_ECHO").is_some() {
                    eprintln!("fieldgate| {line}");
                }
                if let Ok(mut l) = l2.lock() {
                    l.push(line);
                }
            }
        });
        Gateway { child, lines }
    }

    pub fn log(&self) -> Vec<String> {
        self.lines.lock().map(|l| l.clone()).unwrap_or_default()
    }

    pub fn count(&self, all: &[&str]) -> usize {
        self.log()
            .iter()
            .filter(|l| all.iter().all(|w| l.contains(w)))
            .count()
    }

    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn signal(&self, sig: i32) {
        send_signal(self.child.id(), sig);
    }

    pub fn terminate(&mut self) -> Option<i32> {
        send_signal(self.child.id(), 15);
        self.child.wait().ok().and_then(|s| s.code())
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
/// Two linked pseudo-terminals from socat (shared with the driver crates' tests).
#[allow(unused_imports)]
pub use fieldgate_serial::testing::PtyPair;

/// Write `dir/name`: a gateway with its runtime dir and store under `dir`, the `[platform]`
/// lines given, and the rest (buses, profiles, devices) as given.
/// A `[[bus]]` of a Modbus TCP server on loopback, with the short timings the tests use: a
/// failed device goes OFFLINE after 2 polls, a lost server is tried again within 0.5 s.
#[allow(dead_code)]
pub fn modbus_bus(name: &str, port: u16) -> String {
    format!(
        "\n[[bus]]\nname = \"{name}\"\ndriver = \"modbus-tcp\"\nendpoint = \"127.0.0.1:{port}\"\ntimeout = \"1s\"\noffline_after = 2\nreconnect_min = \"100ms\"\nreconnect_max = \"500ms\"\nmax_backoff = \"300ms\"\n"
    )
}

pub fn write_config(dir: &Path, name: &str, platform: &str, rest: &str) -> PathBuf {
    let path = dir.join(name);
    let d = dir.display();
    std::fs::write(
        &path,
        format!(
            "[gateway]\nruntime_dir = \"{d}/run\"\n\n[platform]\n{platform}\n\n[store]\npath = \"{d}/fg.db\"\n\n{rest}"
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    path
}

/// A config with two meters (units 1 and 2, a `counter` at holding:100 and a writable
/// `demand_limit` at holding:4 with a `set_limit` command) on one Modbus TCP bus, polled every
/// 100 ms, and the `[platform]` lines given (dialect, host, port, identity).
pub fn meter_config(dir: &Path, platform: &str, modbus: u16) -> PathBuf {
    let path = dir.join("fieldgate.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[gateway]
runtime_dir = "{dir}/run"
report_interval = "1s"

[platform]
{platform}
reconnect_min = "200ms"
reconnect_max = "1s"

[store]
path = "{dir}/fg.db"

[[bus]]
name = "plant"
driver = "modbus-tcp"
endpoint = "127.0.0.1:{modbus}"
timeout = "1s"

[profile.meter]
product_id = "energy-meter"
service = "energy"

[[profile.meter.point]]
property = "counter"
address = "holding:100"
type = "u32"

[[profile.meter.point]]
property = "demand_limit"
address = "holding:4"
scale = 0.1
writable = true
min = 0.0
max = 500.0

[[profile.meter.command]]
name = "set_limit"
point = "demand_limit"

[[device]]
node_id = "m1"
bus = "plant"
profile = "meter"
unit = 1
poll = "100ms"

[[device]]
node_id = "m2"
bus = "plant"
profile = "meter"
unit = 2
poll = "100ms"
"#,
            dir = dir.display()
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    path
}

/// The simulator the meter configs expect: a counter at holding:100, demand limits of 100.0.
pub fn meter_sim() -> ModbusSim {
    let sim = ModbusSim::new(SimState {
        counter_at: Some(100),
        ..Default::default()
    });
    if let Ok(mut h) = sim.state.holding.lock() {
        h.insert((1, 4), 1000);
        h.insert((2, 4), 1000);
    }
    sim
}

// ---------------------------------------------------------------------------------------------
pub fn openssl(dir: &Path, args: &[&str]) {
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
pub fn make_pki(dir: &Path) {
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

// ---------------------------------------------------------------------------------------------
/// A TCP relay between the gateway and the broker that delays every byte by `one_way` in each
/// direction (a slow link: round trip = 2 × one_way, bandwidth unlimited), and counts the
/// connections made through it and the MQTT CONNECT packets that opened them. It can also
/// stall the way up (bytes from the gateway are read and held, not forwarded) and cut every
/// connection, dropping what it holds: bytes the gateway wrote that never reached the broker.
pub struct Relay {
    pub port: u16,
    pub connections: Arc<std::sync::atomic::AtomicUsize>,
    pub connects: Arc<std::sync::atomic::AtomicUsize>,
    /// Every connection: when it was accepted, and whether the broker took it.
    pub attempts: Arc<Mutex<Vec<(Instant, bool)>>>,
    stalled: Arc<std::sync::atomic::AtomicBool>,
    cut: tokio::sync::watch::Sender<u64>,
    rt: Option<tokio::runtime::Runtime>,
}

impl Relay {
    pub fn start(target: u16, one_way: Duration) -> Self {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap_or_else(|e| panic!("{e}"));
        let port = listener
            .local_addr()
            .map(|a| a.port())
            .unwrap_or_else(|e| panic!("{e}"));
        let connections = Arc::new(AtomicUsize::new(0));
        let connects = Arc::new(AtomicUsize::new(0));
        let attempts = Arc::new(Mutex::new(Vec::new()));
        let stalled = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (cut, cut_rx) = tokio::sync::watch::channel(0u64);
        let (c1, c2, a1) = (connections.clone(), connects.clone(), attempts.clone());
        let st = stalled.clone();
        rt.spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                c1.fetch_add(1, Ordering::SeqCst);
                let (c2, a1) = (c2.clone(), a1.clone());
                let (st, mut cut_up) = (st.clone(), cut_rx.clone());
                cut_up.mark_unchanged();
                let cut_down = cut_up.clone();
                let at = Instant::now();
                tokio::spawn(async move {
                    let up = tokio::net::TcpStream::connect(("127.0.0.1", target)).await;
                    if let Ok(mut a) = a1.lock() {
                        a.push((at, up.is_ok()));
                    }
                    let Ok(outbound) = up else {
                        return;
                    };
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    let (ri, wi) = inbound.into_split();
                    let (ro, wo) = outbound.into_split();
                    let up = tokio::spawn(delayed(ri, wo, one_way, Some(c2), Some(st), cut_up));
                    let down = tokio::spawn(delayed(ro, wi, one_way, None, None, cut_down));
                    let _ = tokio::join!(up, down);
                });
            }
        });
        Relay {
            port,
            connections,
            connects,
            attempts,
            stalled,
            cut,
            rt: Some(rt),
        }
    }

    /// Hold every byte from the gateway (`true`) or forward again (`false`).
    #[allow(dead_code)]
    pub fn stall(&self, on: bool) {
        self.stalled.store(on, std::sync::atomic::Ordering::SeqCst);
    }

    /// Close every connection now, dropping what is held or delayed.
    #[allow(dead_code)]
    pub fn cut(&self) {
        self.cut.send_modify(|g| *g += 1);
    }

    pub fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Connections whose first byte was an MQTT CONNECT (0x10).
    pub fn connects(&self) -> usize {
        self.connects.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// Copy `r` to `w`, each chunk delivered `delay` after it was read, in order; held while
/// `stalled`; both ends dropped (unsent bytes lost) when `cut` changes.
async fn delayed(
    mut r: tokio::net::tcp::OwnedReadHalf,
    mut w: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
    connects: Option<Arc<std::sync::atomic::AtomicUsize>>,
    stalled: Option<Arc<std::sync::atomic::AtomicBool>>,
    mut cut: tokio::sync::watch::Receiver<u64>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let mut cut_w = cut.clone();
    let cut_seen = cut.clone();
    let writer = tokio::spawn(async move {
        let write = async {
            while let Some((at, bytes)) = rx.recv().await {
                tokio::time::sleep_until(at).await;
                while stalled
                    .as_ref()
                    .is_some_and(|s| s.load(std::sync::atomic::Ordering::SeqCst))
                {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                // A cut drops what was held, even when the stall ends at the same moment.
                if cut_seen.has_changed().unwrap_or(true) {
                    return false;
                }
                if w.write_all(&bytes).await.is_err() {
                    return false;
                }
            }
            true
        };
        tokio::select! {
            clean = write => if clean { let _ = w.shutdown().await; },
            _ = cut_w.changed() => {}
        }
    });
    let mut buf = vec![0u8; 64 * 1024];
    let mut first = true;
    loop {
        let read = tokio::select! {
            read = r.read(&mut buf) => read,
            _ = cut.changed() => break,
        };
        match read {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if first {
                    first = false;
                    if buf[0] == 0x10 {
                        if let Some(c) = &connects {
                            c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        }
                    }
                }
                if tx
                    .send((tokio::time::Instant::now() + delay, buf[..n].to_vec()))
                    .is_err()
                {
                    break;
                }
            }
        }
    }
    drop(tx);
    let _ = writer.await;
}
