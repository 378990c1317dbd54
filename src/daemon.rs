//! `fieldgate run`: wire the rooms together, run until SIGTERM/SIGINT, reload on SIGHUP.
//!
//! Order of start: config (refuse to start on any problem), logging, store (recovering a bad
//! file), registry (persisted platform ids), then the queue's ingest, the uplink, and the bus
//! tasks. A reload re-reads the config: a bad one is refused with every problem logged and the
//! running config kept; a good one is reconciled — new children added on the platform, removed
//! ones deleted there, and only the buses whose settings or devices changed restarted, so the
//! other children are polled without a gap. Order of stop: drivers first, then the ingest
//! commits what they produced, then the uplink waits briefly for outstanding acknowledgements
//! and disconnects cleanly.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch, Notify};
use tracing::{error, info, warn};

use crate::config::{self, Config, ConfigError};
use crate::metrics::Metrics;
use crate::registry::{Registry, Spec};
use crate::router::{Router, Target};
use crate::store::{Store, StoreError};
use crate::supervisor::Supervisor;
use crate::uplink::{Uplink, UplinkEvent};
use crate::{control, queue, service};

/// Events waiting between drivers and the store at most (back-pressure beyond this).
const EVENT_QUEUE: usize = 4096;
/// What a graceful stop may take beyond the slowest bus's stop: the uplink's close (the last
/// PUBACKs, the OFFLINE statuses) and the store's last commit.
const STOP_MARGIN: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    AlreadyRunning(#[from] crate::instance::LockError),
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
    rt.block_on(serve(cfg, Some(path.to_path_buf()), std::future::pending()))
}

fn specs(cfg: &Config) -> Vec<Spec> {
    cfg.devices
        .iter()
        .map(|d| Spec {
            node_id: d.node_id.clone(),
            name: d.name.clone(),
            product_id: d.product_id.clone(),
            bus: d.bus.clone(),
            writable: d
                .points
                .iter()
                .filter(|p| p.writable)
                .map(|p| (p.service.clone(), p.property.clone()))
                .collect(),
        })
        .collect()
}

fn targets(cfg: &Config, sup: &Supervisor) -> HashMap<String, Target> {
    cfg.devices
        .iter()
        .filter_map(|d| {
            Some((
                d.node_id.clone(),
                Target {
                    bus: sup.commands(&d.bus)?,
                    points: d.points.clone(),
                    commands: d.commands.clone(),
                    declared: d.declared.clone(),
                },
            ))
        })
        .collect()
}

/// Run the gateway until `stop` completes or SIGTERM/SIGINT arrives; SIGHUP reloads
/// `config_path` (when there is one). Then stop gracefully.
pub async fn serve(
    mut cfg: Config,
    config_path: Option<PathBuf>,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), RunError> {
    info!(version = env!("CARGO_PKG_VERSION"), gateway = %cfg.gateway.name, buses = cfg.buses.len(), devices = cfg.devices.len(), "fieldgate starting");
    let mut signals = service::Signals::new()?;
    let _instance = crate::instance::acquire(&cfg.store.path)?;
    let store = Store::open(
        &cfg.store.path,
        cfg.store.limits,
        cfg.store.synchronous_full,
    )?;
    let mut registry = Registry::new(&specs(&cfg));
    registry.restore(store.children().await?);
    let registry = Arc::new(Mutex::new(registry));
    let metrics = Arc::new(Metrics::default());
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let wake = Arc::new(Notify::new());
    let reconcile = Arc::new(Notify::new());
    for w in cfg.warnings() {
        warn!(warning = %w, "config");
    }
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
    let (rules_tx, rules_rx) = watch::channel(Arc::new(rule_set(&cfg)));
    let ingest = tokio::spawn(queue::ingest(
        events_rx,
        store.clone(),
        registry.clone(),
        cfg.store.commit_interval,
        wake.clone(),
        metrics.clone(),
        rules_rx,
        never_rx,
    ));
    let mut sup = Supervisor::new(events_tx);
    let excluded = registry
        .lock()
        .map(|r| r.platform_deleted())
        .unwrap_or_default();
    sup.apply(&cfg, &excluded).await;
    let router = Router::new(cfg.platform.command_timeout, metrics.clone());
    router.update(targets(&cfg, &sup));
    let watchdog = tokio::spawn(service::supervise(
        metrics.clone(),
        registry.clone(),
        store.clone(),
    ));
    let runtime_dir = cfg.gateway.runtime_dir.clone();
    let (status_cfg, status_cfg_rx) = tokio::sync::watch::channel(Arc::new(cfg.clone()));
    let control = tokio::spawn(control::serve(
        runtime_dir.clone(),
        control::StatusSource {
            cfg: status_cfg_rx,
            metrics: metrics.clone(),
            registry: registry.clone(),
            store: store.clone(),
            started: std::time::Instant::now(),
        },
    ));
    let (uplink_tx, mut uplink_rx) = mpsc::channel(64);
    let uplink = tokio::spawn(
        Uplink {
            dialect: crate::uplink::dialect::for_platform(&cfg.platform),
            platform: cfg.platform.clone(),
            store: store.clone(),
            registry: registry.clone(),
            metrics: metrics.clone(),
            router: router.clone(),
            wake,
            reconcile: reconcile.clone(),
            events: uplink_tx,
            report_interval: cfg.gateway.report_interval,
            started: std::time::Instant::now(),
            shutdown: shutdown_rx.clone(),
            logs: Default::default(),
        }
        .run(),
    );

    service::ready();
    info!(status = %service::summary(&metrics, &registry, None), "fieldgate ready");
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            sig = signals.next() => match sig {
                service::Signal::Stop => break,
                service::Signal::Reload => {
                    service::reloading();
                    if let Some(new) = reload(config_path.as_deref(), &cfg) {
                        cfg = new;
                        apply(&cfg, &registry, &store, &mut sup, &router).await;
                        rules_tx.send_replace(Arc::new(rule_set(&cfg)));
                        status_cfg.send_replace(Arc::new(cfg.clone()));
                        reconcile.notify_one();
                    }
                    service::ready();
                }
            },
            Some(UplinkEvent::ChildDeleted(node)) = uplink_rx.recv() => {
                info!(node_id = %node, "stopping the polling of a child the platform deleted");
                let excluded = registry.lock().map(|r| r.platform_deleted()).unwrap_or_default();
                sup.apply(&cfg, &excluded).await;
                router.update(targets(&cfg, &sup));
            }
        }
    }
    service::stopping();
    watchdog.abort();
    control.abort();
    control::cleanup(&runtime_dir);
    info!("stopping");
    let _ = shutdown_tx.send(true);
    // Buses stop at once, each within its own wait (exec: stop_grace + 2 s, others 5 s); the
    // unit's TimeoutStopSec (30 s) is above the largest this can be (20 s + 2 s + 3 s).
    let grace = cfg
        .buses
        .iter()
        .map(crate::supervisor::stop_wait)
        .max()
        .unwrap_or_default()
        + STOP_MARGIN;
    let stop = async {
        sup.stop_all().await;
        drop(sup);
        let _ = ingest.await;
        let _ = uplink.await;
    };
    if tokio::time::timeout(grace, stop).await.is_err() {
        warn!(grace = ?grace, "graceful stop took too long; exiting anyway (the queue is committed)");
    }
    drop(store);
    info!("stopped");
    Ok(())
}

/// Each configured child's report rules.
fn rule_set(cfg: &Config) -> queue::RuleSet {
    cfg.devices
        .iter()
        .map(|d| (d.node_id.clone(), d.report.clone()))
        .collect()
}

/// Read the config again. `None` (with every reason logged) keeps the running one.
fn reload(path: Option<&Path>, running: &Config) -> Option<Config> {
    let Some(path) = path else {
        warn!("SIGHUP: no config file to reload");
        return None;
    };
    let mut new = match config::load(path) {
        Ok(c) => c,
        Err(e) => {
            for d in &e.diagnostics {
                error!(file = %path.display(), line = d.line, column = d.column, key = %d.path, "{}", d.message);
            }
            error!(
                problems = e.diagnostics.len(),
                "reload refused: the new config has problems; still running the old one"
            );
            return None;
        }
    };
    // The MQTT session, store and logging are set up once; changing them needs a restart.
    if new.platform != running.platform
        || new.store != running.store
        || new.gateway.runtime_dir != running.gateway.runtime_dir
    {
        warn!("[platform], [store] or runtime_dir changed: those take effect at the next restart; the rest is applied now");
        new.platform = running.platform.clone();
        new.store = running.store.clone();
        new.gateway.runtime_dir = running.gateway.runtime_dir.clone();
    }
    Some(new)
}

/// Reconcile the registry, the store, the buses and the routes with a new config.
async fn apply(
    cfg: &Config,
    registry: &Mutex<Registry>,
    store: &Store,
    sup: &mut Supervisor,
    router: &Router,
) {
    let (changes, excluded, forget) = match registry.lock() {
        Ok(mut r) => {
            let ch = r.apply(&specs(cfg));
            // A removed child that still has a platform id keeps its row until the platform
            // confirms the deletion; the others are forgotten now.
            let forget: Vec<String> = ch
                .removed
                .iter()
                .filter(|n| !r.deleting_node(n))
                .cloned()
                .collect();
            (ch, r.platform_deleted(), forget)
        }
        Err(_) => {
            error!("registry lock poisoned; reload not applied");
            return;
        }
    };
    for node in &forget {
        if let Err(e) = store.forget_child(node).await {
            warn!(node_id = %node, error = %e, "cannot forget a removed child in the store");
        }
    }
    let touched = sup.apply(cfg, &excluded).await;
    router.update(targets(cfg, sup));
    info!(added = ?changes.added, removed = ?changes.removed, replaced = ?changes.replaced, buses_restarted = ?touched, "config reloaded");
}
