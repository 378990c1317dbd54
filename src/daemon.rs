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

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch, Notify};
use tracing::{error, info, warn};

use crate::config::{self, Config, ConfigError};
use crate::metrics::Metrics;
use crate::registry::{Registry, Spec};
use crate::router::Router;
use crate::store::{Store, StoreError};
use crate::supervisor::{PollRuntime, Supervisor};
use crate::uplink::{Uplink, UplinkEvent};
use crate::{control, queue, service};

/// Events waiting between drivers and the store at most (back-pressure beyond this)…
const EVENT_QUEUE: usize = 4096;
/// … and the points they hold together (a reading's properties; about 50 bytes each): 4,096
/// readings of 100 points would be 20 MB.
const EVENT_POINTS: u32 = 16_384;
/// What a graceful stop may take beyond the slowest bus's stop: the uplink's close (the last
/// PUBACKs, the OFFLINE statuses) and the store's last commit.
const STOP_MARGIN: Duration = Duration::from_secs(3);

/// The exit status of a `restart` asked for by the platform: a clean stop, then systemd starts
/// the daemon again (`RestartForceExitStatus=79` in the unit).
pub const EXIT_RESTART: u8 = 79;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("the platform asked for a restart")]
    RestartRequested,
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
                .points()
                .iter()
                .filter(|p| p.writable)
                .map(|p| (p.service.clone(), p.property.clone()))
                .collect(),
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

    let (events_tx, events_rx) = fieldgate_driver::events(EVENT_QUEUE, EVENT_POINTS);
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
    let router = Router::new(cfg.platform.command_timeout, metrics.clone());
    // The bus tasks get a thread of their own; without one they share the main workers.
    let poll_rt = match PollRuntime::start() {
        Ok(p) => Some(p),
        Err(e) => {
            warn!(error = %e, "cannot start the drivers' thread; buses share the main workers");
            None
        }
    };
    let mut sup = Supervisor::new(events_tx, router.clone());
    if let Some(p) = &poll_rt {
        sup = sup.on(p.handle());
    }
    let excluded = registry
        .lock()
        .map(|r| r.platform_deleted())
        .unwrap_or_default();
    sup.apply(&cfg, &excluded).await;
    seed_bus_counters(&cfg, &metrics);
    let watchdog = tokio::spawn(service::watchdog(
        metrics.clone(),
        registry.clone(),
        store.clone(),
    ));
    let trimmer = tokio::spawn(crate::memory::keep_trimmed(crate::memory::TRIM_EVERY));
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
    let started = std::time::Instant::now();
    let spawn_uplink = |cfg: &Config| {
        let (stop_tx, stop_rx) = watch::channel(false);
        let handle = tokio::spawn(
            Uplink {
                dialect: crate::uplink::dialect::for_platform(&cfg.platform),
                platform: cfg.platform.clone(),
                store: store.clone(),
                registry: registry.clone(),
                metrics: metrics.clone(),
                router: router.clone(),
                wake: wake.clone(),
                reconcile: reconcile.clone(),
                events: uplink_tx.clone(),
                report_interval: cfg.gateway.report_interval,
                started,
                shutdown: stop_rx,
                logs: Default::default(),
            }
            .run(),
        );
        (handle, stop_tx)
    };
    let mut uplink = spawn_uplink(&cfg);
    let mut cfg_text = config_path
        .as_deref()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .unwrap_or_default();
    let status_source = control::StatusSource {
        cfg: status_cfg.subscribe(),
        metrics: metrics.clone(),
        registry: registry.clone(),
        store: store.clone(),
        started,
    };
    let mut pending: Option<Pending> = None;
    let mut restart = false;

    service::ready();
    info!(status = %service::summary(&metrics, &registry, None), "fieldgate ready");
    tokio::pin!(stop);
    loop {
        // A new config is switched to here (SIGHUP, `config_apply`, a rollback).
        let mut next: Option<(Config, String)> = None;
        tokio::select! {
            _ = &mut stop => break,
            sig = signals.next() => match sig {
                service::Signal::Stop => break,
                service::Signal::Reload => {
                    service::reloading();
                    if let Some(new) = reload(config_path.as_deref(), &cfg) {
                        let text = config_path
                            .as_deref()
                            .and_then(|p| std::fs::read_to_string(p).ok())
                            .unwrap_or_default();
                        next = Some((new, text));
                    }
                    service::ready();
                }
            },
            Some(ev) = uplink_rx.recv() => match ev {
                UplinkEvent::ChildDeleted(node) => {
                    info!(node_id = %node, "stopping the polling of a child the platform deleted");
                    let excluded = registry.lock().map(|r| r.platform_deleted()).unwrap_or_default();
                    sup.apply(&cfg, &excluded).await;
                }
                UplinkEvent::Operation(asked) => {
                    let ctx = OpContext {
                        cfg: &cfg,
                        cfg_text: &cfg_text,
                        config_path: config_path.as_deref(),
                        status: &status_source,
                        started,
                    };
                    let (result, then) = operation(&asked, ctx, &mut sup).await;
                    match &result {
                        Ok(_) => info!(request_id = %asked.request_id, operation = %asked.name, "platform operation done"),
                        Err((code, why)) => warn!(request_id = %asked.request_id, operation = %asked.name, code = ?code, reason = %why, "platform operation refused"),
                    }
                    asked.answer(&result).await;
                    match then {
                        Then::Nothing => {}
                        Then::Restart => {
                            restart = true;
                            break;
                        }
                        Then::Apply { cfg: new, text, previous } => {
                            pending = Some(Pending {
                                deadline: tokio::time::Instant::now() + new.remote.rollback_after,
                                previous: *previous,
                                previous_text: cfg_text.clone(),
                                connects_at: metrics.connects.load(std::sync::atomic::Ordering::Relaxed),
                                platform_changed: new.platform != cfg.platform,
                            });
                            set_note(&metrics, "config applied; waiting for the uplink to connect");
                            next = Some((*new, text));
                        }
                    }
                }
            },
            _ = tokio::time::sleep(Duration::from_secs(1)), if pending.is_some() => {
                if let Some(p) = pending.take() {
                    match settle(&p, &metrics) {
                        Settled::Confirmed => {
                            info!("the applied config is confirmed: the uplink is connected");
                            set_note(&metrics, "config applied and confirmed");
                        }
                        Settled::Waiting => pending = Some(p),
                        Settled::RollBack => {
                            error!(rollback_after = ?cfg.remote.rollback_after, "the uplink did not connect with the applied config: restoring the previous one");
                            if let Some(path) = config_path.as_deref() {
                                if let Err(e) = write_atomically(path, &p.previous_text) {
                                    error!(error = %e, path = %path.display(), "cannot restore the previous config file");
                                }
                            }
                            set_note(&metrics, &format!("config rolled back: the uplink did not connect within {}s", cfg.remote.rollback_after.as_secs()));
                            next = Some((p.previous, p.previous_text));
                        }
                    }
                }
            }
        }
        if let Some((new, text)) = next {
            let platform_changed = new.platform != cfg.platform;
            cfg = new;
            cfg_text = text;
            apply(&cfg, &registry, &store, &mut sup).await;
            seed_bus_counters(&cfg, &metrics);
            rules_tx.send_replace(Arc::new(rule_set(&cfg)));
            status_cfg.send_replace(Arc::new(cfg.clone()));
            if platform_changed {
                info!(host = %cfg.platform.host, port = cfg.platform.port, "[platform] changed: the uplink starts a new session with it");
                let _ = uplink.1.send(true);
                let _ = tokio::time::timeout(Duration::from_secs(5), &mut uplink.0).await;
                uplink = spawn_uplink(&cfg);
            } else {
                reconcile.notify_one();
            }
        }
    }
    service::stopping();
    watchdog.abort();
    trimmer.abort();
    control.abort();
    control::cleanup(&runtime_dir);
    info!("stopping");
    let _ = uplink.1.send(true);
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
        drop(poll_rt);
        let _ = ingest.await;
        let _ = uplink.0.await;
    };
    if tokio::time::timeout(grace, stop).await.is_err() {
        warn!(grace = ?grace, "graceful stop took too long; exiting anyway (the queue is committed)");
    }
    drop(store);
    info!("stopped");
    if restart {
        return Err(RunError::RestartRequested);
    }
    Ok(())
}

/// A config applied by `config_apply`, on probation until the uplink connects with it.
struct Pending {
    deadline: tokio::time::Instant,
    previous: Config,
    previous_text: String,
    /// `connects` when it was applied: a new session must follow a changed [platform].
    connects_at: u64,
    platform_changed: bool,
}

enum Settled {
    Confirmed,
    Waiting,
    RollBack,
}

fn settle(p: &Pending, metrics: &Metrics) -> Settled {
    use std::sync::atomic::Ordering;
    let connected = metrics.uplink_connected.load(Ordering::Relaxed)
        && (!p.platform_changed || metrics.connects.load(Ordering::Relaxed) > p.connects_at);
    if connected {
        Settled::Confirmed
    } else if tokio::time::Instant::now() >= p.deadline {
        Settled::RollBack
    } else {
        Settled::Waiting
    }
}

/// What the gateway reports about the last remote config change (own property
/// `config_status`).
fn set_note(metrics: &Metrics, note: &str) {
    if let Ok(mut n) = metrics.remote_note.lock() {
        *n = note.to_string();
    }
}

/// Replace `path` by `text` atomically (a temporary file beside it, then a rename).
fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("toml.new");
    std::fs::write(&tmp, text)?;
    if let Ok(m) = std::fs::metadata(path) {
        let _ = std::fs::set_permissions(&tmp, m.permissions());
    }
    std::fs::rename(&tmp, path)
}

/// What the daemon needs to run an operation.
struct OpContext<'a> {
    cfg: &'a Config,
    cfg_text: &'a str,
    config_path: Option<&'a Path>,
    status: &'a control::StatusSource,
    started: std::time::Instant,
}

/// What follows an answered operation.
enum Then {
    Nothing,
    Restart,
    Apply {
        cfg: Box<Config>,
        text: String,
        previous: Box<Config>,
    },
}

/// Run one of the gateway's own operations (`remote`), if `[remote] allow` lists it.
async fn operation(
    asked: &crate::remote::Asked,
    ctx: OpContext<'_>,
    sup: &mut Supervisor,
) -> (crate::uplink::dialect::OpResult, Then) {
    use fieldgate_driver::ErrorCode;
    use serde_json::json;
    let name = asked.name.as_str();
    if !crate::config::OPERATIONS.contains(&name) {
        return (
            Err((
                ErrorCode::Unsupported,
                format!(
                    "no gateway operation `{}` (known: {})",
                    fieldgate_driver::escape_controls(name),
                    crate::config::OPERATIONS.join(", ")
                ),
            )),
            Then::Nothing,
        );
    }
    if !ctx.cfg.remote.allows(name) {
        return (
            Err((
                ErrorCode::Unsupported,
                format!(
                    "operation `{name}` is not allowed on this gateway (list it in [remote] allow)"
                ),
            )),
            Then::Nothing,
        );
    }
    let result = match name {
        "ping" => Ok(json!({
            "pong": true,
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_s": ctx.started.elapsed().as_secs(),
        })),
        "status" => {
            let capped = crate::remote::cap_status(ctx.status.snapshot().await);
            crate::memory::give_back_soon();
            Ok(capped)
        }
        "logs" => crate::remote::logs(&asked.paras),
        "config_get" => Ok(json!({
            "path": ctx.config_path.map(|p| p.display().to_string()),
            "toml": crate::remote::redact(ctx.cfg_text),
        })),
        "restart_bus" => match asked.paras.get("bus").and_then(serde_json::Value::as_str) {
            Some(bus) if sup.restart_bus(bus).await => Ok(json!({"restarted": bus})),
            Some(bus) => Err((
                ErrorCode::BadValue,
                format!("no bus named `{}`", fieldgate_driver::escape_controls(bus)),
            )),
            None => Err((ErrorCode::BadValue, "restart_bus needs `bus`".into())),
        },
        "restart" => return (Ok(json!({"restarting": true})), Then::Restart),
        "config_apply" => {
            let Some(path) = ctx.config_path else {
                return (
                    Err((
                        ErrorCode::Unsupported,
                        "this gateway runs without a config file".into(),
                    )),
                    Then::Nothing,
                );
            };
            let text = match crate::remote::config_text(&asked.paras) {
                Ok(t) => t,
                Err(e) => return (Err(e), Then::Nothing),
            };
            let new = match config::parse(&text, path) {
                Ok(c) => c,
                Err(e) => return (Err(crate::remote::refused(&e)), Then::Nothing),
            };
            if new.store != ctx.cfg.store || new.gateway.runtime_dir != ctx.cfg.gateway.runtime_dir
            {
                return (
                    Err((
                        ErrorCode::BadValue,
                        "[store] and runtime_dir cannot change remotely (they need a restart at the cabinet)".into(),
                    )),
                    Then::Nothing,
                );
            }
            if let Err(e) = write_atomically(path, &text) {
                return (
                    Err((
                        ErrorCode::DeviceError,
                        format!("cannot write {}: {e}", path.display()),
                    )),
                    Then::Nothing,
                );
            }
            let rollback = new.remote.rollback_after.as_secs();
            return (
                Ok(json!({"applied": true, "rollback_after_s": rollback})),
                Then::Apply {
                    cfg: Box::new(new),
                    text,
                    previous: Box::new(ctx.cfg.clone()),
                },
            );
        }
        _ => Err((
            ErrorCode::Unsupported,
            format!("operation `{name}` is not implemented"),
        )),
    };
    (result, Then::Nothing)
}

/// Every Modbus bus's activity counters exist from the start (zeros), so the gateway's own
/// telemetry names them from its first report (a Sparkplug NBIRTH must); buses no longer
/// configured are forgotten.
fn seed_bus_counters(cfg: &Config, metrics: &Metrics) {
    use crate::config::BusKind;
    if let Ok(mut m) = metrics.bus_counters.lock() {
        m.retain(|bus, _| cfg.buses.iter().any(|b| &b.name == bus));
        for b in &cfg.buses {
            if matches!(
                b.kind,
                BusKind::ModbusTcp { .. } | BusKind::ModbusRtu { .. }
            ) {
                let c = m.entry(b.name.clone()).or_default();
                for key in control::ACTIVITY {
                    c.entry(key.to_string()).or_insert(0);
                }
            }
        }
    }
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
    // The store and logging are set up once; changing them needs a restart. A changed
    // [platform] starts a new uplink session now.
    if new.store != running.store || new.gateway.runtime_dir != running.gateway.runtime_dir {
        warn!("[store] or runtime_dir changed: those take effect at the next restart; the rest is applied now");
        new.store = running.store.clone();
        new.gateway.runtime_dir = running.gateway.runtime_dir.clone();
    }
    Some(new)
}

/// Reconcile the registry, the store, the buses and the routes with a new config.
async fn apply(cfg: &Config, registry: &Mutex<Registry>, store: &Store, sup: &mut Supervisor) {
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
    info!(added = ?changes.added, removed = ?changes.removed, replaced = ?changes.replaced, buses_restarted = ?touched, "config reloaded");
}
