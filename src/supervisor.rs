//! The supervisor: one driver task per configured bus, restarted with backoff when it fails —
//! one broken bus never stops the others or the daemon. Applying a new config restarts only
//! the buses whose settings or devices changed; the others keep polling without a gap. Each bus
//! has a bounded command channel. The supervisor is the one source of what a child may be
//! asked: after every change of the running buses it hands the router each polled child's
//! route (its bus's channel, points, commands), so no caller has to remember to.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use fieldgate_driver::{CommandOutcome, CommandRequest, Driver, DriverContext, ErrorCode, Events};
use fieldgate_exec::{ExecDevice, ExecDriver};
use fieldgate_modbus::{BusSpec, DeviceSpec, ModbusDriver, Transport};
use fieldgate_serial::{AsciiBus, AsciiDevice, SerialAsciiDriver};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::config::{Bus, BusKind, Config, Device, DeviceKind};
use crate::router::{Router, Target};

/// Commands waiting for one bus at most.
const COMMAND_QUEUE: usize = 16;

struct Running {
    /// What the bus runs with; a different value means a restart.
    spec: (Bus, Vec<Device>),
    stop: watch::Sender<bool>,
    handle: JoinHandle<()>,
    commands: mpsc::Sender<CommandRequest>,
}

pub struct Supervisor {
    events: Events,
    buses: BTreeMap<String, Running>,
    router: Router,
    /// Where the bus tasks run (see [`PollRuntime`]); the current runtime unless told.
    drivers: tokio::runtime::Handle,
}

/// The drivers' own runtime, on a thread of its own: a poll whose time has come does not wait
/// behind the uplink's packing or the queue's commits on the main workers, so each device's
/// period holds (the soak benchmark measures it). Dropping it stops the thread; the bus tasks
/// are stopped before that.
pub struct PollRuntime {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl PollRuntime {
    pub fn start() -> std::io::Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = rt.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("fieldgate-poll".into())
            .spawn(move || {
                rt.block_on(async {
                    let _ = stopped.await;
                });
                rt.shutdown_timeout(std::time::Duration::from_secs(1));
            })?;
        Ok(PollRuntime {
            handle,
            stop: Some(stop),
        })
    }

    pub fn handle(&self) -> tokio::runtime::Handle {
        self.handle.clone()
    }
}

impl Drop for PollRuntime {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

#[cfg(feature = "ble")]
fn ble_driver(bus: &Bus, adapter: Option<String>, devices: &[Device]) -> Box<dyn Driver> {
    let spec = fieldgate_ble::BleBus {
        name: bus.name.clone(),
        adapter,
        timeout: bus.timeout,
        offline_after: bus.offline_after,
        reconnect_min: bus.reconnect_min,
        reconnect_max: bus.reconnect_max,
    };
    let devices = devices
        .iter()
        .filter_map(|d| match &d.kind {
            DeviceKind::Ble { device, .. } => Some(device.clone()),
            _ => None,
        })
        .collect();
    Box::new(fieldgate_ble::driver::BleDriver::new(spec, devices))
}

/// Unreachable in practice: the config refuses `ble` buses in a build without the feature.
#[cfg(not(feature = "ble"))]
fn ble_driver(bus: &Bus, _adapter: Option<String>, _devices: &[Device]) -> Box<dyn Driver> {
    struct NoBle(String);
    impl Driver for NoBle {
        fn bus(&self) -> &str {
            &self.0
        }
        fn run(self: Box<Self>, _ctx: DriverContext) -> fieldgate_driver::DriverFuture {
            Box::pin(async {
                Err(fieldgate_driver::DriverError::Config(
                    "built without BLE support".into(),
                ))
            })
        }
    }
    Box::new(NoBle(bus.name.clone()))
}

fn build(bus: &Bus, devices_cfg: &[Device]) -> Box<dyn Driver> {
    let devices: Vec<DeviceSpec> = devices_cfg
        .iter()
        .filter_map(|d| match &d.kind {
            DeviceKind::Modbus {
                unit,
                turnaround,
                points,
                max_gap,
                commands,
            } => Some(DeviceSpec {
                node_id: d.node_id.clone(),
                unit: *unit,
                poll: d.poll,
                points: points.clone(),
                max_gap: *max_gap,
                commands: commands.clone(),
                turnaround: *turnaround,
            }),
            _ => None,
        })
        .collect();
    let transport = match &bus.kind {
        BusKind::ModbusTcp { endpoint } => Transport::Tcp(endpoint.clone()),
        BusKind::ModbusRtu { port, settle } => Transport::Rtu {
            port: port.clone(),
            settle: *settle,
        },
        BusKind::Ble { adapter } => return ble_driver(bus, adapter.clone(), devices_cfg),
        BusKind::Exec(e) => {
            let devices = devices_cfg
                .iter()
                .filter_map(|d| match &d.kind {
                    DeviceKind::Exec { options, .. } => Some(ExecDevice {
                        node_id: d.node_id.clone(),
                        options: options.clone(),
                    }),
                    _ => None,
                })
                .collect();
            return Box::new(ExecDriver::new(e.clone(), devices));
        }
        BusKind::SerialAscii {
            port,
            framing,
            max_frame,
        } => {
            let devices = devices_cfg
                .iter()
                .filter_map(|d| match &d.kind {
                    DeviceKind::Ascii { instrument, .. } => Some(AsciiDevice {
                        node_id: d.node_id.clone(),
                        poll: d.poll,
                        instrument: instrument.0.clone(),
                    }),
                    _ => None,
                })
                .collect();
            return Box::new(SerialAsciiDriver::new(
                AsciiBus {
                    name: bus.name.clone(),
                    port: port.clone(),
                    framing: framing.clone(),
                    max_frame: *max_frame,
                    timeout: bus.timeout,
                    offline_after: bus.offline_after,
                    reconnect_min: bus.reconnect_min,
                    reconnect_max: bus.reconnect_max,
                },
                devices,
            ));
        }
    };
    Box::new(ModbusDriver::new(
        BusSpec {
            name: bus.name.clone(),
            transport,
            timeout: bus.timeout,
            offline_after: bus.offline_after,
            reconnect_min: bus.reconnect_min,
            reconnect_max: bus.reconnect_max,
            max_backoff: bus.max_backoff,
        },
        devices,
    ))
}

impl Supervisor {
    pub fn new(events: Events, router: Router) -> Self {
        Supervisor {
            events,
            buses: BTreeMap::new(),
            router,
            drivers: tokio::runtime::Handle::current(),
        }
    }

    /// Run the bus tasks on `drivers` (a [`PollRuntime`]'s) instead of the current runtime.
    pub fn on(mut self, drivers: tokio::runtime::Handle) -> Self {
        self.drivers = drivers;
        self
    }

    /// Hand the router the route of every child polled now: the children of the running
    /// buses, with their bus's command channel. A child removed, or deleted by the platform,
    /// has no route (the router answers it is not polled).
    fn sync_routes(&self) {
        let routes: std::collections::HashMap<String, Target> = self
            .buses
            .values()
            .flat_map(|r| {
                r.spec.1.iter().map(|d| {
                    (
                        d.node_id.clone(),
                        Target {
                            bus: r.commands.clone(),
                            points: d.points(),
                            commands: d.commands(),
                            declared: d.declared(),
                        },
                    )
                })
            })
            .collect();
        self.router.update(routes);
    }

    /// Make the running buses match `cfg`, leaving out `excluded` children (deleted by the
    /// platform). Returns the names of the buses that were started, restarted or stopped.
    pub async fn apply(&mut self, cfg: &Config, excluded: &BTreeSet<String>) -> Vec<String> {
        let mut touched = Vec::new();
        let wanted: BTreeMap<&str, (Bus, Vec<Device>)> = cfg
            .buses
            .iter()
            .map(|b| {
                let devs = cfg
                    .devices
                    .iter()
                    .filter(|d| d.bus == b.name && !excluded.contains(&d.node_id))
                    .cloned()
                    .collect();
                (b.name.as_str(), (b.clone(), devs))
            })
            .collect();
        let gone: Vec<String> = self
            .buses
            .keys()
            .filter(|n| !wanted.contains_key(n.as_str()))
            .cloned()
            .collect();
        for name in gone {
            if let Some(r) = self.buses.remove(&name) {
                stop(r).await;
                info!(bus = %name, "bus removed");
                touched.push(name);
            }
        }
        for (name, spec) in wanted {
            match self.buses.get(name) {
                Some(r) if r.spec == spec => continue,
                Some(_) => {
                    if let Some(r) = self.buses.remove(name) {
                        stop(r).await;
                        info!(bus = %name, "bus settings or devices changed; restarting it");
                        self.start(spec);
                    }
                }
                None => self.start(spec),
            }
            touched.push(name.to_string());
        }
        self.sync_routes();
        touched
    }

    /// Start a bus with a fresh command channel (the daemon re-reads `commands` after apply).
    fn start(&mut self, spec: (Bus, Vec<Device>)) {
        let (stop_tx, stop_rx) = watch::channel(false);
        let (commands, cmd_rx) = mpsc::channel(COMMAND_QUEUE);
        let handle = self.drivers.spawn(supervise(
            spec.0.clone(),
            spec.1.clone(),
            self.events.clone(),
            cmd_rx,
            stop_rx,
        ));
        self.buses.insert(
            spec.0.name.clone(),
            Running {
                spec,
                stop: stop_tx,
                handle,
                commands,
            },
        );
    }

    /// Stop a running bus and start it again with the same settings and devices (the
    /// platform's `restart_bus`). False when no bus has that name.
    pub async fn restart_bus(&mut self, name: &str) -> bool {
        let Some(r) = self.buses.remove(name) else {
            return false;
        };
        let spec = r.spec.clone();
        stop(r).await;
        info!(bus = %name, "bus restarted on the platform's request");
        self.start(spec);
        self.sync_routes();
        true
    }

    /// The command channel of a bus.
    pub fn commands(&self, bus: &str) -> Option<mpsc::Sender<CommandRequest>> {
        self.buses.get(bus).map(|r| r.commands.clone())
    }

    /// Stop every bus at once and wait for them (their last events are in the channel); each
    /// is aborted after its [`stop_wait`].
    pub async fn stop_all(&mut self) {
        let stopping: Vec<JoinHandle<()>> = std::mem::take(&mut self.buses)
            .into_values()
            .map(|r| tokio::spawn(stop(r)))
            .collect();
        for s in stopping {
            let _ = s.await;
        }
    }
}

/// Extra time a bus task gets beyond its driver program's `stop_grace` (exec) to report its
/// children OFFLINE and end.
const STOP_MARGIN: Duration = Duration::from_secs(2);
/// How long a bus without a program of its own (Modbus, serial, BLE) gets to stop.
const STOP_WAIT: Duration = Duration::from_secs(5);

/// How long a bus may take to stop before it is aborted: an exec bus its program's
/// `stop_grace` plus [`STOP_MARGIN`], any other [`STOP_WAIT`].
pub fn stop_wait(bus: &Bus) -> Duration {
    match &bus.kind {
        BusKind::Exec(e) => e.stop_grace + STOP_MARGIN,
        _ => STOP_WAIT,
    }
}

async fn stop(r: Running) {
    let _ = r.stop.send(true);
    let wait = stop_wait(&r.spec.0);
    let abort = r.handle.abort_handle();
    if tokio::time::timeout(wait, r.handle).await.is_err() {
        abort.abort();
        warn!(bus = %r.spec.0.name, wait = ?wait, "bus task did not stop in time; aborted");
    }
}

/// Run one bus, restarting it on failure. Commands reach the driver through a forwarder, so
/// the channel the router holds outlives any one run of the driver.
async fn supervise(
    bus: Bus,
    devices: Vec<Device>,
    events: Events,
    mut outer: mpsc::Receiver<CommandRequest>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_secs(1);
    loop {
        let (inner_tx, inner_rx) = mpsc::channel(COMMAND_QUEUE);
        let ctx = DriverContext {
            events: events.clone(),
            commands: inner_rx,
            shutdown: stop.clone(),
        };
        let mut task = tokio::spawn(build(&bus, &devices).run(ctx));
        let result = loop {
            tokio::select! {
                r = &mut task => break r,
                Some(req) = outer.recv() => forward(&inner_tx, req),
            }
        };
        if *stop.borrow() {
            break;
        }
        match result {
            Ok(Ok(())) => warn!(bus = %bus.name, "bus task ended; restarting"),
            Ok(Err(e)) => {
                error!(bus = %bus.name, error = %e, retry_in = ?backoff, "bus task failed; restarting")
            }
            Err(e) => {
                error!(bus = %bus.name, error = %e, retry_in = ?backoff, "bus task panicked; restarting")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => break,
        }
        backoff = (backoff * 2).min(Duration::from_secs(60));
    }
    // Anything still waiting is answered, not left to time out.
    outer.close();
    while let Ok(req) = outer.try_recv() {
        let _ = req.reply.send(CommandOutcome::Failed {
            code: ErrorCode::Busy,
            message: "the bus is restarting".into(),
        });
    }
}

fn forward(inner: &mpsc::Sender<CommandRequest>, req: CommandRequest) {
    if let Err(e) = inner.try_send(req) {
        let (req, code, msg) = match e {
            mpsc::error::TrySendError::Full(r) => {
                (r, ErrorCode::Busy, "the bus has too many commands waiting")
            }
            mpsc::error::TrySendError::Closed(r) => {
                (r, ErrorCode::DeviceError, "the bus task is restarting")
            }
        };
        let _ = req.reply.send(CommandOutcome::Failed {
            code,
            message: msg.into(),
        });
    }
}

#[cfg(test)]
mod tests {
    //! The supervisor as the one source of routes: only changed buses restart, every change
    //! hands the router exactly the children that are polled now.
    use super::*;

    #[tokio::test]
    async fn bus_tasks_run_on_the_poll_thread_until_it_is_dropped() {
        let rt = PollRuntime::start().unwrap_or_else(|e| panic!("{e}"));
        let on = rt
            .handle()
            .spawn(async { std::thread::current().name().map(str::to_string) })
            .await
            .ok()
            .flatten();
        assert_eq!(on.as_deref(), Some("fieldgate-poll"));
        let h = rt.handle();
        drop(rt);
        // The thread ends: its runtime refuses new work soon after.
        let gone = async {
            loop {
                if h.spawn(async {}).await.is_err() {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        };
        assert!(
            tokio::time::timeout(std::time::Duration::from_secs(5), gone)
                .await
                .is_ok(),
            "the poll thread stops when dropped"
        );
    }
    use std::path::Path;

    fn cfg(extra: &str) -> Config {
        let text = format!(
            r#"
[platform]
dialect = "iotda"
host = "127.0.0.1"
device_id = "gw"
secret = "s"
tls = false

[[bus]]
name = "a"
driver = "modbus-tcp"
endpoint = "127.0.0.1:1"

[[bus]]
name = "b"
driver = "modbus-tcp"
endpoint = "127.0.0.1:1"

[profile.p]
[[profile.p.point]]
property = "v"
address = "holding:0"

[[device]]
node_id = "m1"
bus = "a"
profile = "p"

[[device]]
node_id = "m2"
bus = "b"
profile = "p"
{extra}
"#
        );
        crate::config::parse(&text, Path::new("t.toml")).unwrap_or_else(|e| panic!("{e}"))
    }

    #[tokio::test]
    async fn only_changed_buses_restart_and_routes_follow_every_change() {
        let (tx, _rx) = fieldgate_driver::events(64, 1024);
        let router = Router::new(
            Duration::from_secs(1),
            std::sync::Arc::new(crate::metrics::Metrics::default()),
        );
        let mut sup = Supervisor::new(tx, router.clone());
        let none = BTreeSet::new();
        let c = cfg("");
        assert_eq!(sup.apply(&c, &none).await, vec!["a", "b"]);
        assert_eq!(router.routed(), vec!["m1", "m2"]);
        assert!(sup.apply(&c, &none).await.is_empty(), "nothing changed");
        // A third child on bus b: only b restarts; the route appears.
        let more = cfg("[[device]]\nnode_id = \"m3\"\nbus = \"b\"\nprofile = \"p\"\n");
        assert_eq!(sup.apply(&more, &none).await, vec!["b"]);
        assert_eq!(router.routed(), vec!["m1", "m2", "m3"]);
        // A child the platform deleted is not polled and has no route.
        let deleted = BTreeSet::from(["m2".to_string()]);
        assert_eq!(sup.apply(&more, &deleted).await, vec!["b"]);
        assert_eq!(router.routed(), vec!["m1", "m3"]);
        // restart_bus: an unknown bus is refused; a known one keeps its routes.
        assert!(!sup.restart_bus("nope").await);
        assert!(sup.restart_bus("a").await);
        assert_eq!(router.routed(), vec!["m1", "m3"]);
        sup.stop_all().await;
    }
}
