//! The one embedded database file: the queue and the registry, in SQLite (WAL mode).
//!
//! A single thread owns the connection — the one writer — and serves requests from a bounded
//! channel, so async tasks never block on disk. Appends arrive already batched by the queue's
//! group commit and are written in one transaction. If the file is not a database or fails its
//! integrity check at start (SQLITE_NOTADB, SQLITE_CORRUPT), it is moved aside
//! (`*.corrupt-<unix time>`), logged loudly, and a fresh store is created: a gateway keeps
//! collecting rather than crash-looping. Any other failure to open it (permissions, a read-only
//! file or file system, a full disk) leaves the file alone: the daemon exits naming the path and
//! the fix (exit 73 for access, 74 for other I/O).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;

use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info, warn};

use crate::registry::Persisted;
use crate::report::Base;

mod bounded;
mod clock;
use bounded::Bounded;
pub use bounded::{Appended, Dropped, Limits, KIND_TELEMETRY};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("store file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the store thread has stopped")]
    Closed,
    #[error("disk full")]
    Full,
    /// The file exists but cannot be used as it is; it is left alone.
    #[error("cannot use the store {path}: {source}. {hint}")]
    Unusable {
        path: PathBuf,
        source: rusqlite::Error,
        hint: String,
        /// Access (ownership, permissions, read-only) rather than other I/O.
        access: bool,
    },
}

impl StoreError {
    /// Whether the file itself is damaged (not a database, or corrupt): the only case in which
    /// it is moved aside.
    fn is_corrupt(&self) -> bool {
        matches!(self, StoreError::Sqlite(rusqlite::Error::SqliteFailure(f, _))
            if matches!(f.code, rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase))
    }

    /// A store that cannot be opened for a reason only the operator can fix (ownership,
    /// permissions, a read-only path): `run` exits EX_CANTCREAT rather than EX_IOERR.
    pub fn is_access(&self) -> bool {
        matches!(self, StoreError::Unusable { access: true, .. })
    }
}

/// One queued record as stored: sequence number, kind, child, and the encoded body.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub seq: u64,
    pub kind: u8,
    pub child: String,
    pub body: Vec<u8>,
}

/// A record to append (seq is assigned by the store).
#[derive(Debug, Clone)]
pub struct NewRow {
    pub kind: u8,
    pub child: String,
    /// Sample time (ms since the epoch). A record's age for `max_age` is its age at enqueue
    /// by this time, plus the queue time since (see `clock.rs`): immune to clock steps.
    pub ts_ms: u64,
    pub body: Vec<u8>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Depth {
    pub records: u64,
    pub bytes: u64,
    pub oldest_seq: Option<u64>,
    pub newest_seq: Option<u64>,
}

enum Req {
    /// Shared with the caller, who keeps them for a retry without copying every body.
    Append(
        Arc<[NewRow]>,
        Arc<[Base]>,
        oneshot::Sender<Result<Appended, StoreError>>,
    ),
    Bases(oneshot::Sender<Result<Vec<Base>, StoreError>>),
    KeepBases(Vec<String>, oneshot::Sender<Result<(), StoreError>>),
    Scan(u64, usize, oneshot::Sender<Result<Vec<Row>, StoreError>>),
    Take(u64, Want, oneshot::Sender<Result<Vec<Row>, StoreError>>),
    Release(Option<Vec<u64>>, oneshot::Sender<Result<(), StoreError>>),
    Delete(Vec<u64>, oneshot::Sender<Result<(), StoreError>>),
    Depth(oneshot::Sender<Result<Depth, StoreError>>),
    GetMeta(String, oneshot::Sender<Result<Option<String>, StoreError>>),
    SetMeta(String, String, oneshot::Sender<Result<(), StoreError>>),
    Children(oneshot::Sender<Result<Vec<Persisted>, StoreError>>),
    SaveChild(Persisted, oneshot::Sender<Result<(), StoreError>>),
    ForgetChild(String, oneshot::Sender<Result<(), StoreError>>),
}

/// A cheap, cloneable handle to the store thread.
#[derive(Clone)]
pub struct Store {
    tx: mpsc::Sender<Req>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS queue (
    seq   INTEGER PRIMARY KEY AUTOINCREMENT,
    kind  INTEGER NOT NULL,
    child TEXT NOT NULL,
    ts    INTEGER NOT NULL DEFAULT 0,
    body  BLOB NOT NULL
);
-- No index on kind: every append and delete would maintain a second B-tree; the bounds
-- find telemetry by walking the primary key, and priority rows are dropped only past their
-- own bound.
DROP INDEX IF EXISTS queue_kind;
CREATE TABLE IF NOT EXISTS registry (
    node_id          TEXT PRIMARY KEY,
    device_id        TEXT,
    product_id       TEXT NOT NULL DEFAULT '',
    platform_deleted INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS report_base (
    child    TEXT NOT NULL,
    service  TEXT NOT NULL,
    property TEXT NOT NULL,
    value    TEXT NOT NULL,
    ts       INTEGER NOT NULL,
    rule     INTEGER NOT NULL,
    PRIMARY KEY (child, service, property)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
";

/// SQLite's page cache per connection, in KiB (as `PRAGMA cache_size`, negative = KiB).
const PAGE_CACHE_KIB: i64 = -512;

fn open_conn(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    // Before any pragma: another process (a `fieldgate status` reading, a backup) may hold a
    // lock for a moment.
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    // SQLite silently falls back to read-only for a file it may not write (owned by root after
    // `sudo fieldgate run`): nothing could be queued, so refuse now.
    if conn.is_readonly(rusqlite::MAIN_DB)? {
        return Err(StoreError::Sqlite(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_READONLY),
            Some("the file can only be opened read-only".into()),
        )));
    }
    // auto_vacuum must be chosen before the first table exists; it lets a drained queue give
    // its pages back (incremental_vacuum) instead of keeping the file at its high-water mark.
    conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    // The queue appends at one end and reads at the other: a small page cache serves both, and
    // the kernel's file cache holds the rest. SQLite's default (2 MB) only grows the heap.
    conn.pragma_update(None, "cache_size", PAGE_CACHE_KIB)?;
    // The plan of a statement never depends on the values bound to it. Without this, a bound
    // `LIMIT ?` makes SQLite prepare the queue's read again on every use (about 47,000
    // instructions each time, a sixth of the daemon's work at 10,000 points/s).
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    let ok: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
    if ok != "ok" {
        return Err(StoreError::Sqlite(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
            Some(format!("quick_check: {ok}")),
        )));
    }
    conn.execute_batch(SCHEMA)?;
    // Files from 0.1 development builds lack the newer columns.
    let has_ts: bool = conn.query_row(
        "SELECT COUNT(*) > 0 FROM pragma_table_info('queue') WHERE name = 'ts'",
        [],
        |r| r.get(0),
    )?;
    if !has_ts {
        conn.execute_batch("ALTER TABLE queue ADD COLUMN ts INTEGER NOT NULL DEFAULT 0")?;
    }
    for (col, ddl) in [
        (
            "product_id",
            "ALTER TABLE registry ADD COLUMN product_id TEXT NOT NULL DEFAULT ''",
        ),
        (
            "platform_deleted",
            "ALTER TABLE registry ADD COLUMN platform_deleted INTEGER NOT NULL DEFAULT 0",
        ),
    ] {
        let has: bool = conn.query_row(
            "SELECT COUNT(*) > 0 FROM pragma_table_info('registry') WHERE name = ?1",
            [col],
            |r| r.get(0),
        )?;
        if !has {
            conn.execute_batch(ddl)?;
        }
    }
    Ok(conn)
}

/// Open the store at `path`, or move a broken file aside and start fresh.
fn open_or_recover(path: &Path) -> Result<Connection, StoreError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    match open_conn(path) {
        Ok(c) => Ok(c),
        Err(e) if !e.is_corrupt() => Err(unusable(path, e)),
        Err(e) => {
            let stamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let aside = PathBuf::from(format!("{}.corrupt-{stamp}", path.display()));
            error!(path = %path.display(), moved_to = %aside.display(), error = %e,
                "STORE UNREADABLE: moving it aside and starting with an empty store; its records are not sent");
            std::fs::rename(path, &aside).map_err(|source| StoreError::Io {
                path: path.to_path_buf(),
                source,
            })?;
            for ext in ["-wal", "-shm"] {
                let side = PathBuf::from(format!("{}{ext}", path.display()));
                if side.exists() {
                    let _ = std::fs::rename(&side, format!("{}{ext}", aside.display()));
                }
            }
            open_conn(path)
        }
    }
}

/// Name the path and the likely fix for a store that cannot be opened but is not damaged.
fn unusable(path: &Path, e: StoreError) -> StoreError {
    use rusqlite::ErrorCode as C;
    use std::os::unix::fs::MetadataExt;
    let source = match e {
        StoreError::Sqlite(s) => s,
        other => return other,
    };
    let code = source.sqlite_error_code();
    let access = matches!(
        code,
        Some(
            C::ReadOnly | C::CannotOpen | C::PermissionDenied | C::AuthorizationForStatementDenied
        )
    );
    let me = std::fs::metadata("/proc/self").map(|m| m.uid()).ok();
    let owner = std::fs::metadata(path).map(|m| m.uid()).ok();
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let hint = match (access, owner, me) {
        (true, Some(o), Some(m)) if o != m => format!(
            "It is owned by uid {o} but fieldgate runs as uid {m} (was it run once with sudo?): \
             give it back with `sudo chown -R fieldgate:fieldgate {}`, or point store.path elsewhere",
            dir.display()
        ),
        (true, ..) => format!(
            "Make {} and its directory writable by the user fieldgate runs as, or point \
             store.path elsewhere; the file was left as it is",
            path.display()
        ),
        (false, ..) if code == Some(C::DiskFull) => {
            format!("Free space on the file system of {}", dir.display())
        }
        (false, ..) => "The file was left as it is; fix the cause and start again".into(),
    };
    StoreError::Unusable {
        path: path.to_path_buf(),
        source,
        hint,
        access,
    }
}

impl Store {
    /// Open (or recover) the store and start its thread.
    pub fn open(path: &Path, limits: Limits, synchronous_full: bool) -> Result<Store, StoreError> {
        let conn = open_or_recover(path)?;
        conn.pragma_update(
            None,
            "synchronous",
            if synchronous_full { "FULL" } else { "NORMAL" },
        )?;
        let bounded = Bounded::new(&conn, limits)?;
        info!(path = %path.display(), records = bounded.records, bytes = bounded.bytes, "store open");
        let (tx, rx) = mpsc::channel(256);
        thread::Builder::new()
            .name("fieldgate-store".into())
            .spawn(move || serve(conn, bounded, rx))
            .map_err(|source| StoreError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Store { tx })
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Req,
    ) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(make(tx))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Append rows in one transaction, then apply the bounds; returns the last sequence number
    /// assigned and what the bounds dropped.
    pub async fn append(&self, rows: Vec<NewRow>) -> Result<Appended, StoreError> {
        self.call(|tx| Req::Append(rows.into(), Arc::from([]), tx))
            .await
    }

    /// `append`, and in the same transaction the report stage's comparison bases that go
    /// with these records (so a base is never ahead of or behind what was queued).
    /// Both are shared, not copied: a caller that retries sends the same ones again.
    pub async fn append_with(
        &self,
        rows: impl Into<Arc<[NewRow]>>,
        bases: impl Into<Arc<[Base]>>,
    ) -> Result<Appended, StoreError> {
        self.call(|tx| Req::Append(rows.into(), bases.into(), tx))
            .await
    }

    /// The report stage's comparison bases kept by the last run.
    pub async fn bases(&self) -> Result<Vec<Base>, StoreError> {
        self.call(Req::Bases).await
    }

    /// Forget the bases of every child not in `children` (removed from the config).
    pub async fn keep_bases(&self, children: Vec<String>) -> Result<(), StoreError> {
        self.call(|tx| Req::KeepBases(children, tx)).await
    }

    /// Up to `limit` rows with `seq > after`, oldest first.
    pub async fn scan(&self, after: u64, limit: usize) -> Result<Vec<Row>, StoreError> {
        self.call(|tx| Req::Scan(after, limit, tx)).await
    }

    /// Like `scan`, but passes over rows already taken and marks the ones it returns as taken:
    /// the queue's bounds never drop a taken row until it is deleted (acknowledged) or released.
    pub async fn take(&self, after: u64, want: Want) -> Result<Vec<Row>, StoreError> {
        self.call(|tx| Req::Take(after, want, tx)).await
    }

    /// Start a `take` without waiting for it (read-ahead); None when the store is busy.
    pub fn take_ahead(
        &self,
        after: u64,
        want: Want,
    ) -> Option<oneshot::Receiver<Result<Vec<Row>, StoreError>>> {
        let (tx, rx) = oneshot::channel();
        self.tx.try_send(Req::Take(after, want, tx)).ok()?;
        Some(rx)
    }

    /// Queue a `delete` without waiting for it; the rows come back when the store is busy.
    /// Requests are served in order, so a later `take` never sees these rows.
    #[allow(clippy::type_complexity)]
    pub fn delete_later(
        &self,
        seqs: Vec<u64>,
    ) -> Result<oneshot::Receiver<Result<(), StoreError>>, Vec<u64>> {
        let (tx, rx) = oneshot::channel();
        match self.tx.try_send(Req::Delete(seqs, tx)) {
            Ok(()) => Ok(rx),
            Err(e) => match e.into_inner() {
                Req::Delete(seqs, _) => Err(seqs),
                _ => Err(Vec::new()),
            },
        }
    }

    /// Give taken rows back to the bounds (`None`: every taken row, after a connection loss).
    pub async fn release(&self, seqs: Option<Vec<u64>>) -> Result<(), StoreError> {
        self.call(|tx| Req::Release(seqs, tx)).await
    }

    /// Delete rows (acknowledged, or dropped with a counted reason); their marks go too.
    pub async fn delete(&self, seqs: Vec<u64>) -> Result<(), StoreError> {
        self.call(|tx| Req::Delete(seqs, tx)).await
    }

    pub async fn depth(&self) -> Result<Depth, StoreError> {
        self.call(Req::Depth).await
    }

    pub async fn get_meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        let key = key.to_string();
        self.call(|tx| Req::GetMeta(key, tx)).await
    }

    pub async fn set_meta(&self, key: &str, value: String) -> Result<(), StoreError> {
        let key = key.to_string();
        self.call(|tx| Req::SetMeta(key, value, tx)).await
    }

    /// What is remembered of every child.
    pub async fn children(&self) -> Result<Vec<Persisted>, StoreError> {
        self.call(Req::Children).await
    }

    pub async fn save_child(&self, p: Persisted) -> Result<(), StoreError> {
        self.call(|tx| Req::SaveChild(p, tx)).await
    }

    pub async fn forget_child(&self, node_id: &str) -> Result<(), StoreError> {
        let node = node_id.to_string();
        self.call(|tx| Req::ForgetChild(node, tx)).await
    }
}

/// Every kept base; a row that no longer decodes is skipped (that property is reported again).
fn load_bases(conn: &Connection) -> Result<Vec<Base>, StoreError> {
    let mut stmt =
        conn.prepare("SELECT child, service, property, value, ts, rule FROM report_base")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, i64>(4)?,
            r.get::<_, i64>(5)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (child, service, property, value, ts, rule) = row?;
        let Ok(value) = serde_json::from_str(&value) else {
            continue;
        };
        out.push(Base {
            child,
            service,
            property,
            value,
            ts_ms: u64::try_from(ts).unwrap_or(0),
            rule: u64::from_ne_bytes(rule.to_ne_bytes()),
        });
    }
    Ok(out)
}

fn serve(mut conn: Connection, mut q: Bounded, mut rx: mpsc::Receiver<Req>) {
    let mut deletes_since_vacuum = 0usize;
    while let Some(req) = rx.blocking_recv() {
        match req {
            Req::Append(rows, bases, tx) => {
                let _ = tx.send(q.append(&mut conn, &rows, &bases));
            }
            Req::Bases(tx) => {
                let _ = tx.send(load_bases(&conn));
            }
            Req::KeepBases(children, tx) => {
                let keep = serde_json::to_string(&children).unwrap_or_else(|_| "[]".into());
                let r = conn
                    .execute(
                        "DELETE FROM report_base WHERE child NOT IN (SELECT value FROM json_each(?1))",
                        [keep],
                    )
                    .map(|_| ())
                    .map_err(StoreError::from);
                let _ = tx.send(r);
            }
            Req::Scan(after, limit, tx) => {
                let _ = tx.send(scan(&conn, after, limit));
            }
            Req::Take(after, want, tx) => {
                let _ = tx.send(take(&conn, &mut q, after, want));
            }
            Req::Release(seqs, tx) => {
                match seqs {
                    Some(seqs) => {
                        for s in seqs {
                            q.marked.remove(&s);
                        }
                    }
                    None => q.marked.clear(),
                }
                let _ = tx.send(Ok(()));
            }
            Req::Delete(seqs, tx) => {
                deletes_since_vacuum += seqs.len();
                let r = q.delete(&mut conn, &seqs);
                // Give freed pages back to the file system as the queue drains: every 100,000
                // deletions, and whenever the queue becomes empty with more than
                // `VACUUM_FREE_PAGES` free. Not for less: a live queue empties many times a
                // second, its few free pages are reused by the next readings, and a vacuum
                // moves pages, which makes SQLite prepare every statement again.
                if deletes_since_vacuum >= 100_000
                    || (q.records == 0
                        && deletes_since_vacuum > 0
                        && free_pages(&conn) > VACUUM_FREE_PAGES)
                {
                    deletes_since_vacuum = 0;
                    if let Err(e) = incremental_vacuum(&conn) {
                        warn!(error = %e, "incremental vacuum failed");
                    }
                }
                let _ = tx.send(r);
            }
            Req::Depth(tx) => {
                let _ = tx.send(depth(&conn, &q));
            }
            Req::GetMeta(k, tx) => {
                let r = conn
                    .query_row("SELECT value FROM meta WHERE key = ?1", [k], |r| r.get(0))
                    .optional()
                    .map_err(StoreError::from);
                let _ = tx.send(r);
            }
            Req::SetMeta(k, v, tx) => {
                let r = conn
                    .execute("INSERT INTO meta(key, value) VALUES(?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value", [k, v])
                    .map(|_| ())
                    .map_err(StoreError::from);
                let _ = tx.send(r);
            }
            Req::Children(tx) => {
                let _ = tx.send(children(&conn));
            }
            Req::SaveChild(p, tx) => {
                let r = conn
                    .execute(
                        "INSERT INTO registry(node_id, device_id, product_id, platform_deleted) VALUES(?1, ?2, ?3, ?4)
                         ON CONFLICT(node_id) DO UPDATE SET device_id = excluded.device_id,
                           product_id = excluded.product_id, platform_deleted = excluded.platform_deleted",
                        params![p.node_id, p.device_id, p.product_id, p.platform_deleted],
                    )
                    .map(|_| ())
                    .map_err(StoreError::from);
                let _ = tx.send(r);
            }
            Req::ForgetChild(node, tx) => {
                let r = conn
                    .execute("DELETE FROM registry WHERE node_id = ?1", [node])
                    .map(|_| ())
                    .map_err(StoreError::from);
                let _ = tx.send(r);
            }
        }
    }
    // All handles dropped: checkpoint so the next start opens a compact file.
    let _ = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)");
}

fn scan(conn: &Connection, after: u64, limit: usize) -> Result<Vec<Row>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, kind, child, body FROM queue WHERE seq > ?1 ORDER BY seq LIMIT ?2",
    )?;
    let rows = stmt
        .query_map(params![after as i64, limit as i64], |r| {
            Ok(Row {
                seq: r.get::<_, i64>(0)? as u64,
                kind: r.get(1)?,
                child: r.get(2)?,
                body: r.get(3)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

const TAKE: &str = "SELECT seq, kind, body FROM queue WHERE seq > ?1 ORDER BY seq LIMIT ?2";

/// How much one `take` returns at most: `rows`, and bodies of `bytes` together (the row that
/// reaches `bytes` is the last; the first row is returned whatever its size). The bytes bound
/// keeps a read of wide readings (a backlog of 100-point readings) from holding ten times
/// what a read of narrow ones holds once decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Want {
    pub rows: usize,
    pub bytes: usize,
}

impl Want {
    /// Up to `rows` rows, whatever their size.
    pub fn rows(rows: usize) -> Self {
        Want {
            rows,
            bytes: usize::MAX,
        }
    }
}

/// Unmarked rows after `after`, as many as `want` allows, marked as they are returned
/// (`child` is left empty: the body carries it).
fn take(
    conn: &Connection,
    q: &mut Bounded,
    after: u64,
    want: Want,
) -> Result<Vec<Row>, StoreError> {
    let mut out = Vec::with_capacity(want.rows.min(4096));
    let mut bytes = 0usize;
    let mut from = after;
    let mut stmt = conn.prepare_cached(TAKE)?;
    'reads: while out.len() < want.rows {
        let asked = want.rows - out.len();
        let mut rows = stmt.query(params![from as i64, asked as i64])?;
        let mut read = 0;
        while let Some(r) = rows.next()? {
            read += 1;
            let seq = r.get::<_, i64>(0)? as u64;
            from = seq;
            if q.marked.contains_key(&seq) {
                continue;
            }
            let kind: u8 = r.get(1)?;
            let body: Vec<u8> = r.get(2)?;
            q.marked.insert(seq, (kind, body.len() as u64));
            bytes = bytes.saturating_add(body.len());
            out.push(Row {
                seq,
                kind,
                child: String::new(),
                body,
            });
            if bytes >= want.bytes {
                break 'reads;
            }
        }
        if read < asked {
            break;
        }
    }
    Ok(out)
}

/// Free pages a drained queue keeps for the next readings (256 KiB of 4 KiB pages).
const VACUUM_FREE_PAGES: i64 = 64;

/// Pages on the file's free list (0 when it cannot be read: then no vacuum).
fn free_pages(conn: &Connection) -> i64 {
    conn.prepare_cached("PRAGMA freelist_count")
        .and_then(|mut s| s.query_row([], |r| r.get(0)))
        .unwrap_or(0)
}

/// `PRAGMA incremental_vacuum` frees one page per step: step it to the end (rusqlite's
/// `execute_batch` would stop after the first page).
fn incremental_vacuum(conn: &Connection) -> Result<(), StoreError> {
    let mut stmt = conn.prepare("PRAGMA incremental_vacuum")?;
    let mut rows = stmt.query([])?;
    while rows.next()?.is_some() {}
    Ok(())
}

fn depth(conn: &Connection, q: &Bounded) -> Result<Depth, StoreError> {
    // Two statements: SQLite answers a lone MIN or MAX from the primary key in one step, but
    // scans the whole table for both in one query.
    let oldest: Option<i64> = conn
        .prepare_cached("SELECT MIN(seq) FROM queue")?
        .query_row([], |r| r.get(0))?;
    let newest: Option<i64> = conn
        .prepare_cached("SELECT MAX(seq) FROM queue")?
        .query_row([], |r| r.get(0))?;
    Ok(Depth {
        records: q.records,
        bytes: q.bytes,
        oldest_seq: oldest.map(|s| s as u64),
        newest_seq: newest.map(|s| s as u64),
    })
}

fn children(conn: &Connection) -> Result<Vec<Persisted>, StoreError> {
    let mut stmt =
        conn.prepare("SELECT node_id, device_id, product_id, platform_deleted FROM registry")?;
    let rows = stmt
        .query_map([], |r| {
            Ok(Persisted {
                node_id: r.get(0)?,
                device_id: r.get(1)?,
                product_id: r.get(2)?,
                platform_deleted: r.get(3)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reading_the_queue_never_prepares_its_statement_again() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let conn = open_conn(&dir.path().join("q.db")).unwrap_or_else(|e| panic!("{e}"));
        let mut q = Bounded::new(&conn, Limits::default()).unwrap_or_else(|e| panic!("{e}"));
        for n in 0..20 {
            conn.execute(
                "INSERT INTO queue(kind, child, ts, body) VALUES(1, 'a', 0, ?1)",
                [vec![n; 4]],
            )
            .unwrap_or_else(|e| panic!("{e}"));
        }
        // Different limits and starting points, as the reader asks.
        let mut seen = 0;
        for (after, limit) in [(0, 3), (3, 5), (8, 2), (10, 100)] {
            seen += take(&conn, &mut q, after, Want::rows(limit))
                .unwrap_or_else(|e| panic!("{e}"))
                .len();
        }
        assert_eq!(seen, 20);
        let again = conn
            .prepare_cached(TAKE)
            .map(|s| s.get_status(rusqlite::StatementStatus::RePrepare))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(again, 0, "prepared again {again} times");
    }

    #[test]
    fn a_take_stops_at_its_bytes_and_always_returns_a_row() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let conn = open_conn(&dir.path().join("q.db")).unwrap_or_else(|e| panic!("{e}"));
        let mut q = Bounded::new(&conn, Limits::default()).unwrap_or_else(|e| panic!("{e}"));
        // Bodies of 100, 10, 100, 1,000 and 10 bytes.
        for len in [100usize, 10, 100, 1000, 10] {
            conn.execute(
                "INSERT INTO queue(kind, child, ts, body) VALUES(1, 'a', 0, ?1)",
                [vec![7u8; len]],
            )
            .unwrap_or_else(|e| panic!("{e}"));
        }
        let mut seqs = |after, rows, bytes| -> Vec<u64> {
            take(&conn, &mut q, after, Want { rows, bytes })
                .unwrap_or_else(|e| panic!("{e}"))
                .iter()
                .map(|r| r.seq)
                .collect()
        };
        // 100 + 10 reach 110: the row that reaches the bound is the last.
        assert_eq!(seqs(0, 10, 110), [1, 2]);
        // A row larger than the whole bound still goes, alone.
        assert_eq!(seqs(2, 10, 50), [3]);
        assert_eq!(seqs(3, 10, 50), [4]);
        // The rows bound holds as before; marked rows are passed over and count nothing.
        assert_eq!(seqs(0, 1, usize::MAX), [5]);
        assert!(seqs(0, 10, 1).is_empty());
    }

    fn row(child: &str, n: u8) -> NewRow {
        NewRow {
            kind: 1,
            child: child.into(),
            ts_ms: fieldgate_driver::now_ms(),
            body: vec![n; 10],
        }
    }

    #[tokio::test]
    async fn report_bases_go_with_their_records_and_survive_reopen() {
        use crate::report::Base;
        use fieldgate_driver::Value;
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("q.db");
        let base = |child: &str, v: Value, rule: u64| Base {
            child: child.into(),
            service: "s".into(),
            property: "p".into(),
            value: v,
            ts_ms: 7,
            rule,
        };
        {
            let s = Store::open(&path, Limits::default(), false).unwrap_or_else(|e| panic!("{e}"));
            s.append_with(vec![row("a", 1)], vec![base("a", Value::Float(1.5), 1)])
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            // The newer base of the same property replaces it; u64::MAX survives as a rule.
            s.append_with(
                vec![row("a", 2)],
                vec![
                    base("a", Value::UInt(u64::MAX), u64::MAX),
                    base("gone", Value::Bool(true), 3),
                ],
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
            s.keep_bases(vec!["a".into()])
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let s = Store::open(&path, Limits::default(), false).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            s.bases().await.unwrap_or_default(),
            vec![base("a", Value::UInt(u64::MAX), u64::MAX)]
        );
        assert_eq!(s.depth().await.unwrap_or_default().records, 2);
    }

    #[tokio::test]
    async fn append_scan_delete_survive_reopen() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("q.db");
        {
            let s = Store::open(&path, Limits::default(), false).unwrap_or_else(|e| panic!("{e}"));
            let last = s
                .append(vec![row("a", 1), row("b", 2), row("a", 3)])
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(last.last_seq, 3);
            s.delete(vec![2]).await.unwrap_or_else(|e| panic!("{e}"));
            s.save_child(Persisted {
                node_id: "a".into(),
                device_id: Some("prod_a".into()),
                product_id: "prod".into(),
                platform_deleted: false,
            })
            .await
            .unwrap_or_else(|e| panic!("{e}"));
            s.save_child(Persisted {
                node_id: "z".into(),
                device_id: None,
                product_id: "prod".into(),
                platform_deleted: false,
            })
            .await
            .unwrap_or_else(|e| panic!("{e}"));
            s.forget_child("z").await.unwrap_or_else(|e| panic!("{e}"));
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let s = Store::open(&path, Limits::default(), false).unwrap_or_else(|e| panic!("{e}"));
        let rows = s.scan(0, 10).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(rows.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 3]);
        assert_eq!(rows[1].body, vec![3; 10]);
        assert_eq!(s.scan(1, 10).await.unwrap_or_default().len(), 1);
        assert_eq!(
            s.children().await.unwrap_or_default(),
            vec![Persisted {
                node_id: "a".into(),
                device_id: Some("prod_a".into()),
                product_id: "prod".into(),
                platform_deleted: false
            }]
        );
        let d = s.depth().await.unwrap_or_default();
        assert_eq!((d.records, d.bytes, d.oldest_seq), (2, 20, Some(1)));
        // sequence numbers never go back, even after the newest row was deleted
        s.delete(vec![3]).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            s.append(vec![row("c", 4)])
                .await
                .map(|a| a.last_seq)
                .unwrap_or(0),
            4
        );
    }

    #[tokio::test]
    async fn a_garbage_file_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("q.db");
        std::fs::write(&path, vec![0x5a; 8192]).unwrap_or_else(|e| panic!("{e}"));
        let s = Store::open(&path, Limits::default(), false).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            s.append(vec![row("a", 1)])
                .await
                .map(|a| a.last_seq)
                .unwrap_or(0),
            1
        );
        let aside: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap_or_else(|e| panic!("{e}"))
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".corrupt-"))
            .collect();
        assert_eq!(aside.len(), 1);
    }

    #[tokio::test]
    async fn a_drained_queue_gives_its_space_back() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("q.db");
        let s = Store::open(&path, Limits::default(), false).unwrap_or_else(|e| panic!("{e}"));
        for b in 0..5u8 {
            let rows = (0..1000)
                .map(|_| NewRow {
                    kind: 1,
                    child: "c".into(),
                    ts_ms: fieldgate_driver::now_ms(),
                    body: vec![b; 200],
                })
                .collect();
            s.append(rows).await.unwrap_or_else(|e| panic!("{e}"));
        }
        let seqs: Vec<u64> = s
            .scan(0, 10_000)
            .await
            .unwrap_or_default()
            .iter()
            .map(|r| r.seq)
            .collect();
        assert_eq!(seqs.len(), 5000);
        s.delete(seqs).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.depth().await.map(|d| d.records).unwrap_or(1), 0);
        let c = Connection::open(&path).unwrap_or_else(|e| panic!("{e}"));
        let free: i64 = c
            .query_row("PRAGMA freelist_count", [], |r| r.get(0))
            .unwrap_or(-1);
        let pages: i64 = c
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .unwrap_or(-1);
        assert_eq!(free, 0, "freed pages returned to the file system");
        assert!(
            pages < 20,
            "the file is back near its idle size: {pages} pages"
        );
    }
}
