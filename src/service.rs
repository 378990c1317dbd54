//! systemd integration: the notify protocol, the watchdog, signals, and where logs go.
//!
//! READY=1 is sent once the config is loaded and the store is open; STATUS= carries a one-line
//! summary refreshed every few seconds; WATCHDOG=1 is sent only while the uplink loop keeps
//! beating and the store thread answers, so a hung uplink or store lets systemd restart us;
//! RELOADING=1 brackets a SIGHUP, STOPPING=1 starts a graceful stop. Logs go to the journal
//! (with fields such as BUS, DEVICE, NODE_ID) when systemd connected stderr to it, and to
//! human-readable lines otherwise. All of it is a no-op outside systemd.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{debug, error, warn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::store::Store;

pub use crate::config::LogTarget;

fn filter(default_level: &str) -> EnvFilter {
    let f = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    // Dependencies' internals stay quiet even at `RUST_LOG=trace`: their packet dumps are noise
    // for an engineer at the cabinet, and nothing of theirs may ever carry credentials.
    ["rumqttc=info", "rustls=info", "tokio_modbus=info"]
        .iter()
        .filter_map(|d| d.parse().ok())
        .fold(f, |f, d| f.add_directive(d))
}

/// Install the global logger. Safe to call more than once (later calls do nothing).
pub fn init_logging(default_level: &str, target: LogTarget) {
    let journal = match target {
        LogTarget::Journald => true,
        LogTarget::Stderr => false,
        LogTarget::Auto => std::env::var_os("JOURNAL_STREAM").is_some(),
    };
    if journal {
        match tracing_journald::layer() {
            Ok(layer) => {
                let _ = tracing_subscriber::registry()
                    .with(filter(default_level))
                    .with(layer.with_field_prefix(None))
                    .with(crate::logring::LogRing)
                    .try_init();
                return;
            }
            Err(e) => eprintln!("fieldgate: journald unavailable ({e}); logging to stderr"),
        }
    }
    // Colours only for a person at a terminal, never in pipes, files or the journal.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none();
    let _ = tracing_subscriber::registry()
        .with(filter(default_level))
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_target(false)
                .with_ansi(ansi),
        )
        .with(crate::logring::LogRing)
        .try_init();
}

/// This process's resident memory (KiB) and CPU time used so far (ms, user + system), from
/// /proc; zeros where it cannot be read. /proc reports CPU in USER_HZ, 100 per second on
/// Linux whatever the kernel's own tick.
pub fn process_usage() -> (u64, u64) {
    let rss = crate::memory::rss_kib();
    // Fields after the command name (which may hold spaces): state is the 3rd field, utime
    // and stime the 14th and 15th.
    let cpu = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest = s.get(s.rfind(')')? + 2..)?;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
            Some(ticks * 10)
        })
        .unwrap_or(0);
    (rss, cpu)
}

fn notify(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        debug!(error = %e, "sd_notify failed");
    }
}

pub fn ready() {
    notify(&[NotifyState::Ready]);
}

pub fn stopping() {
    notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

pub fn reloading() {
    notify(&[NotifyState::Reloading]);
}

/// What the daemon should do after a signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Stop,
    Reload,
}

/// SIGTERM/SIGINT stop, SIGHUP reloads. (SIGHUP must be handled: its default kills.)
pub struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn new() -> std::io::Result<Self> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    pub async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.term.recv() => Signal::Stop,
            _ = self.int.recv() => Signal::Stop,
            _ = self.hup.recv() => Signal::Reload,
        }
    }
}

/// The one-line summary for STATUS= and the logs.
pub fn summary(metrics: &Metrics, registry: &Mutex<Registry>, queued: Option<u64>) -> String {
    let up = if metrics.uplink_connected.load(Ordering::Relaxed) {
        "uplink connected"
    } else {
        "uplink down"
    };
    let (online, total) = registry
        .lock()
        .map(|r| {
            (
                r.children().filter(|c| c.online == Some(true)).count(),
                r.children().count(),
            )
        })
        .unwrap_or((0, 0));
    let q = queued.map_or_else(|| "queue ?".to_string(), |n| format!("queue {n}"));
    format!("{up} · {q} · {online}/{total} children online")
}

/// Refresh STATUS= and, when systemd asked for a watchdog, ping it while the daemon is alive:
/// the uplink's beat counter moved and the store thread answered within the period.
pub async fn watchdog(metrics: Arc<Metrics>, registry: Arc<Mutex<Registry>>, store: Store) {
    let watchdog = sd_notify::watchdog_enabled();
    let every = watchdog.map_or(Duration::from_secs(5), |w| {
        (w / 3).max(Duration::from_millis(200))
    });
    let mut last_beat = metrics.uplink_beat.load(Ordering::Relaxed);
    let mut complained = false;
    loop {
        tokio::time::sleep(every).await;
        let queued = match tokio::time::timeout(every, store.depth()).await {
            Ok(Ok(d)) => {
                metrics.queue_records.store(d.records, Ordering::Relaxed);
                let age =
                    crate::control::oldest_age_s(&store, d.oldest_seq, fieldgate_driver::now_ms())
                        .await
                        .unwrap_or(0);
                metrics.queue_oldest_age_s.store(age, Ordering::Relaxed);
                Some(d.records)
            }
            _ => None,
        };
        let status = summary(&metrics, &registry, queued);
        let beat = metrics.uplink_beat.load(Ordering::Relaxed);
        let uplink_alive = beat != last_beat;
        last_beat = beat;
        let healthy = queued.is_some() && uplink_alive;
        if watchdog.is_some() {
            if healthy {
                complained = false;
                notify(&[NotifyState::Watchdog, NotifyState::Status(&status)]);
                continue;
            }
            if !complained {
                error!(
                    store_answers = queued.is_some(),
                    uplink_alive, "not feeding the watchdog: a main loop is stuck"
                );
                complained = true;
            }
        } else if !healthy && !complained {
            warn!(
                store_answers = queued.is_some(),
                uplink_alive, "a main loop looks stuck"
            );
            complained = true;
        }
        notify(&[NotifyState::Status(&status)]);
    }
}
