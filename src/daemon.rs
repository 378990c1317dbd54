//! `fieldgate run`: wire the rooms together and run until SIGTERM/SIGINT.
//!
//! Order of start: config (refuse to start on any problem), logging, store (recovering a bad
//! file), registry (persisted platform ids), then the queue's ingest, the uplink, and the bus
//! tasks. Order of stop: drivers first, then the ingest commits what they produced, then the
//! uplink waits briefly for outstanding acknowledgements and disconnects cleanly.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch, Notify};
use tracing::{error, info, warn};

use crate::config::{self, Config, ConfigError};
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::router::Router;
use crate::store::{Store, StoreError};
use crate::uplink::Uplink;
use crate::{control, queue, service, supervisor};

/// Events waiting between drivers and the store at most (back-pressure beyond this).
const EVENT_QUEUE: usize = 4096;
/// How long a command may take before it is answered with a timeout (the platform waits 20 s).
const COMMAND_DEADLINE: Duration = Duration::from_secs(10);
/// How long a graceful stop may take.
const STOP_GRACE: Duration = Duration::from_secs(8);

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("runtime: {0}")]
    Runtime(#[from] std::io::Error),
}

pub fn run(path: &Path) -> Result<(), RunError> {
    let cfg = config::load(path)?;
    service::init_logging(&cfg.gateway.log_level, cfg.gateway.log_target);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(serve(cfg, wait_for_stop()))
}

/// Run the gateway until `stop` completes, then stop gracefully.
pub async fn serve(
    cfg: Config,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), RunError> {
    info!(version = env!("CARGO_PKG_VERSION"), gateway = %cfg.gateway.name, buses = cfg.buses.len(), devices = cfg.devices.len(), "fieldgate starting");
    let store = Store::open(&cfg.store.path)?;
    let mut registry = Registry::new(
        cfg.devices
            .iter()
            .map(|d| (d.node_id.as_str(), d.name.as_str(), d.product_id.as_str())),
    );
    for (node, dev) in store.device_ids().await? {
        registry.confirm(&node, &dev);
    }
    for d in &cfg.devices {
        registry.set_bus(&d.node_id, &d.bus);
    }
    let registry = Arc::new(Mutex::new(registry));
    let metrics = Arc::new(Metrics::default());
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let wake = Arc::new(Notify::new());
    // A queue left over from the last run is sent first.
    if let Ok(d) = store.depth().await {
        if d.records > 0 {
            info!(
                records = d.records,
                bytes = d.bytes,
                "queue holds records from before the restart; they are sent first"
            );
        }
    }

    let (events_tx, events_rx) = mpsc::channel(EVENT_QUEUE);
    // The ingest stops when every driver has dropped its sender, so it commits their last words.
    let (_never_tx, never_rx) = watch::channel(false);
    let ingest = tokio::spawn(queue::ingest(
        events_rx,
        store.clone(),
        registry.clone(),
        cfg.store.commit_interval,
        wake.clone(),
        never_rx,
    ));
    let sup = supervisor::start(&cfg, events_tx, shutdown_rx.clone());
    let watchdog = tokio::spawn(service::supervise(
        metrics.clone(),
        registry.clone(),
        store.clone(),
    ));
    let runtime_dir = cfg.gateway.runtime_dir.clone();
    let control = tokio::spawn(control::serve(
        runtime_dir.clone(),
        control::StatusSource {
            cfg: Arc::new(cfg.clone()),
            metrics: metrics.clone(),
            registry: registry.clone(),
            store: store.clone(),
            started: std::time::Instant::now(),
        },
    ));
    let router = Router::new(
        cfg.devices
            .iter()
            .filter_map(|d| {
                Some((
                    d.node_id.clone(),
                    sup.commands.get(&d.bus)?.clone(),
                    d.points.clone(),
                ))
            })
            .collect(),
        COMMAND_DEADLINE,
        metrics.clone(),
    );
    let uplink = tokio::spawn(
        Uplink {
            platform: cfg.platform.clone(),
            store: store.clone(),
            registry: registry.clone(),
            metrics: metrics.clone(),
            router,
            wake,
            shutdown: shutdown_rx.clone(),
        }
        .run(),
    );

    service::ready();
    info!(status = %service::summary(&metrics, &registry, None), "fieldgate ready");
    stop.await;
    service::stopping();
    watchdog.abort();
    control.abort();
    control::cleanup(&runtime_dir);
    info!("stopping");
    let _ = shutdown_tx.send(true);
    let stop = async {
        for h in sup.handles {
            let _ = h.await;
        }
        let _ = ingest.await;
        let _ = uplink.await;
    };
    if tokio::time::timeout(STOP_GRACE, stop).await.is_err() {
        warn!(grace = ?STOP_GRACE, "graceful stop took too long; exiting anyway (the queue is committed)");
    }
    drop(store);
    info!("stopped");
    Ok(())
}

/// Until SIGTERM or SIGINT. SIGHUP is acknowledged to systemd (RELOADING=1 … READY=1) and
/// logged: live reload is not implemented yet, so a changed config needs a restart.
pub async fn wait_for_stop() {
    let mut signals = match service::Signals::new() {
        Ok(s) => s,
        Err(e) => {
            error!(error = %e, "cannot install signal handlers; stopping on Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    while signals.next().await == service::Signal::Reload {
        service::reloading();
        warn!("SIGHUP: live reload is not implemented yet; restart the service to apply config changes");
        service::ready();
    }
}
