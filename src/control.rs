//! The local control socket behind `fieldgate status`.
//!
//! A unix socket in the runtime directory (mode 0660: root and the fieldgate group) answers one
//! request per connection — a line `status` — with one JSON document: uplink state and last
//! error, queue depth/bytes/oldest age/drops, every child with its bus, status, reason, last
//! values and their age, and commands in flight. It never waits for the uplink, so it works
//! while the platform is unreachable. The same file holds the client side and the
//! human-readable rendering used by the CLI.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fieldgate_driver::now_ms;
use serde_json::{json, Value as Json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader as TokioBufReader};
use tokio::net::UnixListener;
use tracing::{info, warn};

use crate::config::{BusKind, Config};
use crate::metrics::Metrics;
use crate::queue::Record;
use crate::registry::Registry;
use crate::store::Store;

pub const SOCKET_NAME: &str = "fieldgate.sock";

/// Everything the status answer is built from.
#[derive(Clone)]
pub struct StatusSource {
    /// The running config: replaced on every reload that was applied.
    pub cfg: tokio::sync::watch::Receiver<Arc<Config>>,
    pub metrics: Arc<Metrics>,
    pub registry: Arc<Mutex<Registry>>,
    pub store: Store,
    pub started: Instant,
}

impl StatusSource {
    pub async fn snapshot(&self) -> Json {
        let now = now_ms();
        let cfg: Arc<Config> = self.cfg.borrow().clone();
        let m = &self.metrics;
        let depth = tokio::time::timeout(Duration::from_secs(2), self.store.depth())
            .await
            .ok()
            .and_then(Result::ok);
        let oldest_age_s = oldest_age_s(&self.store, depth.and_then(|d| d.oldest_seq), now).await;
        let since = m.uplink_since_ms.load(Ordering::Relaxed);
        let children: Vec<Json> = self
            .registry
            .lock()
            .map(|r| {
                r.children()
                    .map(|c| {
                        json!({
                            "node_id": c.node_id,
                            "device_id": c.device_id,
                            "bus": c.bus,
                            "status": match c.online { Some(true) => "ONLINE", Some(false) => "OFFLINE", None => "UNKNOWN" },
                            "reason": c.reason,
                            "platform_error": c.platform_error,
                            "platform_deleted": c.platform_deleted,
                            "last_values": c.last_values.iter().flat_map(|(svc, props)| props.iter().map(move |(prop, v)| (format!("{svc}.{prop}"), v.to_json()))).collect::<serde_json::Map<_, _>>(),
                            "last_report_age_s": c.last_report_ms.map(|t| now.saturating_sub(t) as f64 / 1000.0),
                            "values": {"taken": c.report_counts.taken, "reported": c.report_counts.reported},
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        let counters = self
            .metrics
            .bus_counters
            .lock()
            .map(|c| c.clone())
            .unwrap_or_default();
        let buses: Vec<Json> = cfg
            .buses
            .iter()
            .map(|b| (b, match &b.kind {
                BusKind::ModbusTcp { endpoint } => {
                    json!({"name": b.name, "driver": "modbus-tcp", "endpoint": endpoint})
                }
                BusKind::Ble { adapter } => {
                    json!({"name": b.name, "driver": "ble", "endpoint": adapter.as_deref().unwrap_or("default adapter")})
                }
                BusKind::Exec(e) => {
                    json!({"name": b.name, "driver": "exec", "endpoint": e.argv.first()})
                }
                BusKind::SerialAscii { port, .. } => {
                    json!({"name": b.name, "driver": "serial-ascii", "endpoint": port.path,
                           "baud": port.baud})
                }
                BusKind::ModbusRtu { port, .. } => {
                    json!({"name": b.name, "driver": "modbus-rtu", "endpoint": port.path,
                           "baud": port.baud})
                }
            }))
            .map(|(b, mut j)| {
                if let (Some(c), Json::Object(m)) = (counters.get(&b.name), &mut j) {
                    // What the bus did (polls, failed polls, overruns) apart from what it
                    // skipped (noise, bad frames, malformed lines).
                    let (activity, skipped): (Vec<_>, Vec<_>) =
                        c.iter().partition(|(k, _)| ACTIVITY.contains(&k.as_str()));
                    if !activity.is_empty() {
                        m.insert(
                            "activity".into(),
                            json!(activity.into_iter().collect::<BTreeMap<_, _>>()),
                        );
                    }
                    if !skipped.is_empty() {
                        m.insert(
                            "skipped".into(),
                            json!(skipped.into_iter().collect::<BTreeMap<_, _>>()),
                        );
                    }
                }
                j
            })
            .collect();
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "gateway": cfg.gateway.name,
            "uptime_s": self.started.elapsed().as_secs(),
            "rss_kib": crate::memory::rss_kib(),
            "uplink": {
                "connected": m.uplink_connected.load(Ordering::Relaxed),
                "host": cfg.platform.host,
                "port": cfg.platform.port,
                "device_id": cfg.platform.device_id,
                "since_age_s": (since > 0).then(|| now.saturating_sub(since) / 1000),
                "last_error": m.uplink_error.lock().map(|e| e.clone()).unwrap_or_default(),
                "connects": m.connects.load(Ordering::Relaxed),
                "connect_attempts": m.connect_attempts.load(Ordering::Relaxed),
            },
            "queue": {
                "records": depth.map(|d| d.records),
                "bytes": depth.map(|d| d.bytes),
                "oldest_age_s": oldest_age_s,
                "delivered": m.delivered.load(Ordering::Relaxed),
                "falling_behind": m.falling_behind.load(Ordering::Relaxed),
                "drivers_waited": m.drivers_waited.load(Ordering::Relaxed),
                "slowest_commit_ms": m.commit_max_ms.load(Ordering::Relaxed),
                "dropped": {
                    "full": m.dropped_full.load(Ordering::Relaxed),
                    "expired": m.dropped_expired.load(Ordering::Relaxed),
                    "store_error": m.dropped_store_error.load(Ordering::Relaxed),
                    "corrupt": m.dropped_corrupt.load(Ordering::Relaxed),
                    "orphan": m.dropped_orphan.load(Ordering::Relaxed),
                    "unsendable": m.dropped_unsendable.load(Ordering::Relaxed),
                },
            },
            "inbound_rejected": m.inbound_rejected.load(Ordering::Relaxed),
            "commands_in_flight": m.commands_in_flight.load(Ordering::Relaxed),
            "requests_busy": m.requests_busy.load(Ordering::Relaxed),
            "replies_dropped": m.replies_dropped.load(Ordering::Relaxed),
            "buses": buses,
            "children": children,
        })
    }
}

/// Longest request line a client may send.
const MAX_REQUEST: u64 = 1024;
/// Clients served at once; more wait in the kernel's backlog until one is done.
const MAX_CLIENTS: usize = 64;
/// How long one client may hold a connection (request and answer together).
const CLIENT_TIME: Duration = Duration::from_secs(5);
/// How long a client may take to send its request line (`fieldgate status` sends it at once).
const REQUEST_TIME: Duration = Duration::from_secs(1);

/// Serve the control socket until the task is dropped. Local users are neighbours too: a
/// request is at most `MAX_REQUEST` bytes, at most `MAX_CLIENTS` are served at once, each for
/// at most `CLIENT_TIME`, and a failing `accept` (out of file descriptors) is retried, never
/// the end of the socket.
/// Bus counters that say what a bus did (`activity`), not what it skipped.
pub const ACTIVITY: &[&str] = &["polls", "poll_errors", "overruns"];

/// Age in seconds of the queued record `oldest_seq` (the oldest), read from the store.
pub async fn oldest_age_s(store: &Store, oldest_seq: Option<u64>, now: u64) -> Option<u64> {
    let seq = oldest_seq?;
    match tokio::time::timeout(Duration::from_secs(2), store.scan(seq - 1, 1)).await {
        Ok(Ok(rows)) => rows.first().and_then(|r| Record::decode(r).ok()).map(|r| {
            let ts = match &r {
                Record::Report(r) => r.ts_ms,
                Record::Status(s) => s.ts_ms,
            };
            now.saturating_sub(ts) / 1000
        }),
        _ => None,
    }
}

pub async fn serve(dir: PathBuf, source: StatusSource) {
    let path = dir.join(SOCKET_NAME);
    if let Err(e) = std::fs::create_dir_all(&dir) {
        warn!(dir = %dir.display(), error = %e, "cannot create the runtime directory; `fieldgate status` will not work");
        return;
    }
    // Bound under a temporary name, restricted, then moved into place: the socket is never
    // reachable under its real name with the process umask's permissions.
    let staging = dir.join(format!(".{SOCKET_NAME}.{}", std::process::id()));
    let _ = std::fs::remove_file(&staging);
    let listener = match UnixListener::bind(&staging) {
        Ok(l) => l,
        Err(e) => {
            warn!(path = %path.display(), error = %e, "cannot open the control socket; `fieldgate status` will not work");
            return;
        }
    };
    if let Err(e) = std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o660))
        .and_then(|()| std::fs::rename(&staging, &path))
    {
        warn!(path = %path.display(), error = %e, "cannot put the control socket in place; `fieldgate status` will not work");
        let _ = std::fs::remove_file(&staging);
        return;
    }
    info!(path = %path.display(), "control socket ready");
    let clients = Arc::new(tokio::sync::Semaphore::new(MAX_CLIENTS));
    let mut failing = 0u64;
    loop {
        let Ok(permit) = clients.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => {
                if failing > 0 {
                    info!(failures = failing, "control socket accepts again");
                    failing = 0;
                }
                stream
            }
            Err(e) => {
                failing += 1;
                if failing == 1 {
                    warn!(error = %e, "control socket cannot accept (retrying)");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let source = source.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ = tokio::time::timeout(CLIENT_TIME, answer(stream, source)).await;
        });
    }
}

/// Read one request line (bounded) and answer it.
async fn answer(stream: tokio::net::UnixStream, source: StatusSource) {
    let (rd, mut wr) = stream.into_split();
    let mut line = String::new();
    let mut rd = TokioBufReader::new(rd.take(MAX_REQUEST));
    let read = match tokio::time::timeout(REQUEST_TIME, rd.read_line(&mut line)).await {
        Ok(r) => r,
        Err(_) => return,
    };
    let answer = match read {
        Ok(_) if !line.ends_with('\n') && line.len() as u64 >= MAX_REQUEST => {
            json!({"error": format!("request longer than {MAX_REQUEST} bytes")})
        }
        Ok(_) => match line.trim() {
            "status" => source.snapshot().await,
            other => json!({"error": format!(
                "unknown request `{}` (try `status`)",
                escape_controls(&other.chars().take(64).collect::<String>())
            )}),
        },
        Err(_) => return,
    };
    let _ = wr.write_all(format!("{answer}\n").as_bytes()).await;
    drop(answer);
    crate::memory::give_back_soon();
}

/// Remove the socket file at a clean stop.
pub fn cleanup(dir: &Path) {
    let _ = std::fs::remove_file(dir.join(SOCKET_NAME));
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the daemon at {path}: {source} (is fieldgate running? are you in the fieldgate group?)")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("talking to the daemon: {0}")]
    Io(#[from] std::io::Error),
    #[error("unreadable answer from the daemon: {0}")]
    Json(#[from] serde_json::Error),
}

/// Ask a running daemon for its status.
pub fn query(socket: &Path) -> Result<Json, ClientError> {
    let mut s =
        std::os::unix::net::UnixStream::connect(socket).map_err(|source| ClientError::Connect {
            path: socket.to_path_buf(),
            source,
        })?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(b"status\n")?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    Ok(serde_json::from_str(&line)?)
}

fn age(s: Option<f64>) -> String {
    match s {
        None => "never".into(),
        Some(s) if s < 60.0 => format!("{s:.1}s ago"),
        Some(s) if s < 3600.0 => format!("{:.0}m ago", s / 60.0),
        Some(s) => format!("{:.1}h ago", s / 3600.0),
    }
}

/// The status as lines for a person at the cabinet.
pub fn render(j: &Json) -> String {
    let mut out = Vec::new();
    let up = &j["uplink"];
    out.push(format!(
        "fieldgate {} · gateway {} · up {}s · rss {:.1} MB",
        j["version"].as_str().unwrap_or("?"),
        j["gateway"].as_str().unwrap_or("?"),
        j["uptime_s"],
        j["rss_kib"].as_f64().unwrap_or(0.0) / 1024.0
    ));
    let state = if up["connected"] == true {
        "connected"
    } else {
        "DOWN"
    };
    let err = up["last_error"]
        .as_str()
        .filter(|e| !e.is_empty())
        .unwrap_or("-");
    out.push(format!(
        "uplink    {state} to {}:{} as {} (since {}, {} connects) · last error: {err}",
        up["host"].as_str().unwrap_or("?"),
        up["port"],
        up["device_id"].as_str().unwrap_or("?"),
        age(up["since_age_s"].as_f64()),
        up["connects"]
    ));
    let q = &j["queue"];
    out.push(format!(
        "queue     {} records, {} bytes, oldest {} · delivered {} · dropped: full {}, expired {}, store_error {}, corrupt {}, orphan {}, unsendable {}{}{}",
        q["records"],
        q["bytes"],
        q["oldest_age_s"]
            .as_u64()
            .map_or("-".into(), |s| format!("{s}s")),
        q["delivered"],
        q["dropped"]["full"],
        q["dropped"]["expired"],
        q["dropped"]["store_error"],
        q["dropped"]["corrupt"],
        q["dropped"]["orphan"],
        q["dropped"]["unsendable"],
        if q["falling_behind"] == true {
            " · FALLING BEHIND (delivery slower than collection)"
        } else {
            ""
        },
        match q["drivers_waited"].as_u64() {
            Some(n) if n > 0 => format!(
                " · drivers waited for the store {n} times (slowest commit {} ms)",
                q["slowest_commit_ms"]
            ),
            _ => String::new(),
        }
    ));
    for b in j["buses"].as_array().into_iter().flatten() {
        let skipped = b["skipped"]
            .as_object()
            .filter(|m| m.values().any(|v| v.as_u64().unwrap_or(0) > 0))
            .map(|m| {
                let parts: Vec<String> = m.iter().map(|(k, v)| format!("{k}={v}")).collect();
                format!(" · skipped: {}", parts.join(" "))
            })
            .unwrap_or_default();
        let activity = b["activity"]
            .as_object()
            .map(|m| {
                format!(
                    " · polls {} · failed {} · overruns {}",
                    m.get("polls").and_then(Json::as_u64).unwrap_or(0),
                    m.get("poll_errors").and_then(Json::as_u64).unwrap_or(0),
                    m.get("overruns").and_then(Json::as_u64).unwrap_or(0)
                )
            })
            .unwrap_or_default();
        out.push(format!(
            "bus       {} ({} {}){activity}{skipped}",
            b["name"].as_str().unwrap_or("?"),
            b["driver"].as_str().unwrap_or("?"),
            b["endpoint"].as_str().unwrap_or("?")
        ));
    }
    let children = j["children"].as_array().cloned().unwrap_or_default();
    let online = children.iter().filter(|c| c["status"] == "ONLINE").count();
    out.push(format!(
        "children  {online}/{} online · commands in flight {}",
        children.len(),
        j["commands_in_flight"]
    ));
    for c in &children {
        let vals = c["last_values"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        let mut reason = c["reason"]
            .as_str()
            .filter(|r| !r.is_empty())
            .map(|r| format!(" ({r})"))
            .unwrap_or_default();
        if let Some(e) = c["platform_error"].as_str() {
            reason.push_str(&format!(" [platform refused: {e}]"));
        }
        if c["platform_deleted"] == true {
            reason.push_str(" [deleted by the platform: not polled]");
        }
        let (taken, reported) = (
            c["values"]["taken"].as_u64().unwrap_or(0),
            c["values"]["reported"].as_u64().unwrap_or(0),
        );
        out.push(format!(
            "  {:<16} {:<8}{reason} bus {} · device {} · last {} · reported {reported}/{taken} values · {vals}",
            c["node_id"].as_str().unwrap_or("?"),
            c["status"].as_str().unwrap_or("?"),
            c["bus"].as_str().unwrap_or("?"),
            c["device_id"].as_str().unwrap_or("(not yet added)"),
            age(c["last_report_age_s"].as_f64()),
        ));
    }
    // Names, reasons and values come from devices, driver programs and the platform: never
    // let their control characters (terminal escapes, forged line breaks) reach the terminal.
    out.iter()
        .map(|l| escape_controls(l))
        .collect::<Vec<_>>()
        .join("\n")
}

pub use fieldgate_driver::escape_controls;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untrusted_text_cannot_drive_the_terminal() {
        let j = json!({
            "version": "0", "gateway": "gw\u{1b}[2J", "uptime_s": 1,
            "uplink": {"connected": false, "host": "h", "port": 1, "device_id": "d",
                       "last_error": "boom\nFAKE LINE", "connects": 0},
            "queue": {"records": 0, "bytes": 0, "delivered": 0, "dropped": {}},
            "buses": [],
            "children": [{"node_id": "m1", "status": "OFFLINE",
                          "reason": "\u{1b}]0;owned\u{7}\u{1b}[2J", "bus": "b"}],
        });
        let text = render(&j);
        assert!(
            !text.chars().any(|c| c.is_control() && c != '\n'),
            "{text:?}"
        );
        assert!(text.contains("\\u{1b}]0;owned\\u{7}"), "{text}");
        assert!(
            !text.lines().any(|l| l.starts_with("FAKE")),
            "no forged line: {text}"
        );
        assert_eq!(escape_controls("plain ü"), "plain ü");
    }

    #[test]
    fn drivers_held_back_by_the_store_are_said_only_when_they_were() {
        let with = |waited: u64| {
            let j = json!({
                "version": "0", "gateway": "gw", "uptime_s": 1,
                "uplink": {"connected": true, "host": "h", "port": 1, "device_id": "d",
                           "last_error": "", "connects": 1},
                "queue": {"records": 0, "bytes": 0, "delivered": 0, "dropped": {},
                          "drivers_waited": waited, "slowest_commit_ms": 1234},
                "buses": [], "children": [],
            });
            render(&j)
        };
        assert!(!with(0).contains("waited"), "{}", with(0));
        assert!(
            with(7).contains("drivers waited for the store 7 times (slowest commit 1234 ms)"),
            "{}",
            with(7)
        );
    }
}
