//! The supervisor: builds one driver per configured bus, runs each as its own task, and
//! restarts a bus task that fails with exponential backoff — one broken bus never stops the
//! others or the daemon. Each bus gets a bounded command channel, which the router uses.

use std::collections::BTreeMap;
use std::time::Duration;

use fieldgate_driver::{CommandOutcome, CommandRequest, Driver, DriverContext, ErrorCode, Event};
use fieldgate_modbus::{BusSpec, DeviceSpec, ModbusTcpDriver};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{error, warn};

use crate::config::{BusKind, Config};

/// Commands waiting for one bus at most.
const COMMAND_QUEUE: usize = 16;

pub struct Supervisor {
    pub handles: Vec<JoinHandle<()>>,
    /// Bus name → its command channel.
    pub commands: BTreeMap<String, mpsc::Sender<CommandRequest>>,
}

fn build(cfg: &Config, bus: &crate::config::Bus) -> Box<dyn Driver> {
    let devices: Vec<DeviceSpec> = cfg
        .devices
        .iter()
        .filter(|d| d.bus == bus.name)
        .map(|d| DeviceSpec {
            node_id: d.node_id.clone(),
            unit: d.unit,
            poll: d.poll,
            points: d.points.clone(),
            max_gap: d.max_gap,
        })
        .collect();
    match &bus.kind {
        BusKind::ModbusTcp { endpoint } => Box::new(ModbusTcpDriver::new(
            BusSpec {
                name: bus.name.clone(),
                endpoint: endpoint.clone(),
                timeout: bus.timeout,
                offline_after: bus.offline_after,
                reconnect_min: bus.reconnect_min,
                reconnect_max: bus.reconnect_max,
                max_backoff: bus.max_backoff,
            },
            devices,
        )),
    }
}

pub fn start(
    cfg: &Config,
    events: mpsc::Sender<Event>,
    shutdown: watch::Receiver<bool>,
) -> Supervisor {
    let mut handles = Vec::new();
    let mut commands = BTreeMap::new();
    for bus in &cfg.buses {
        let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_QUEUE);
        commands.insert(bus.name.clone(), cmd_tx);
        let (cfg, bus, events, shutdown) =
            (cfg.clone(), bus.clone(), events.clone(), shutdown.clone());
        handles.push(tokio::spawn(supervise(cfg, bus, events, cmd_rx, shutdown)));
    }
    Supervisor { handles, commands }
}

/// Run one bus, restarting it on failure. Commands reach the driver through a forwarder, so the
/// router's channel outlives any one run of the driver.
async fn supervise(
    cfg: Config,
    bus: crate::config::Bus,
    events: mpsc::Sender<Event>,
    mut outer: mpsc::Receiver<CommandRequest>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_secs(1);
    loop {
        let (inner_tx, inner_rx) = mpsc::channel(COMMAND_QUEUE);
        let ctx = DriverContext {
            events: events.clone(),
            commands: inner_rx,
            shutdown: shutdown.clone(),
        };
        let mut task = tokio::spawn(build(&cfg, &bus).run(ctx));
        let result = loop {
            tokio::select! {
                r = &mut task => break r,
                Some(req) = outer.recv() => forward(&inner_tx, req),
            }
        };
        if *shutdown.borrow() {
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
            _ = shutdown.changed() => break,
        }
        backoff = (backoff * 2).min(Duration::from_secs(60));
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
