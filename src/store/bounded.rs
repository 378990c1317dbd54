//! The queue table with its bounds, as run by the store thread.
//!
//! Running totals (records, bytes, bytes of priority rows) are kept in memory so bounds cost
//! nothing per append. When `max_bytes` is exceeded, the oldest *telemetry* rows go first;
//! priority rows (status changes, anything not telemetry) have their own smaller bound and are
//! dropped only past it, so an outage never costs the platform the knowledge of which devices
//! were down. Rows older than `max_age` expire. Every dropped row is counted by reason and
//! returned to the caller, which logs once per episode — never silently.

use std::time::{Duration, Instant};

use rusqlite::{params, Connection};

use super::{NewRow, StoreError};

/// Rows of this kind are telemetry: dropped first when the queue is full.
pub const KIND_TELEMETRY: u8 = 1;

/// The bounds of the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// All rows together, bytes of record bodies.
    pub max_bytes: u64,
    /// Priority (non-telemetry) rows alone.
    pub max_priority_bytes: u64,
    /// Rows older than this (by sample time) are dropped as `expired`.
    pub max_age: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 256 << 20,
            max_priority_bytes: 16 << 20,
            max_age: Duration::from_secs(7 * 86_400),
        }
    }
}

/// Rows dropped by one operation, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dropped {
    pub full: u64,
    pub expired: u64,
}

impl Dropped {
    pub fn any(&self) -> bool {
        self.full + self.expired > 0
    }
}

/// The result of an append.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Appended {
    pub last_seq: u64,
    pub dropped: Dropped,
}

pub struct Bounded {
    limits: Limits,
    pub records: u64,
    pub bytes: u64,
    priority_bytes: u64,
    last_expiry: Option<Instant>,
}

fn is_full(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::DiskFull)
}

pub fn classify(e: rusqlite::Error) -> StoreError {
    if is_full(&e) {
        StoreError::Full
    } else {
        StoreError::Sqlite(e)
    }
}

impl Bounded {
    pub fn new(conn: &Connection, limits: Limits) -> Result<Self, StoreError> {
        let (records, bytes, priority_bytes) = conn.query_row(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(body)), 0), COALESCE(SUM(CASE WHEN kind != ?1 THEN LENGTH(body) ELSE 0 END), 0) FROM queue",
            [KIND_TELEMETRY],
            |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64, r.get::<_, i64>(2)? as u64)),
        )?;
        Ok(Bounded {
            limits,
            records,
            bytes,
            priority_bytes,
            last_expiry: None,
        })
    }

    fn account(&mut self, kind: u8, len: u64, sign: i8) {
        let apply = |v: &mut u64| {
            *v = if sign > 0 {
                v.saturating_add(len)
            } else {
                v.saturating_sub(len)
            };
        };
        apply(&mut self.bytes);
        if kind != KIND_TELEMETRY {
            apply(&mut self.priority_bytes);
        }
        self.records = if sign > 0 {
            self.records + 1
        } else {
            self.records.saturating_sub(1)
        };
    }

    pub fn append(
        &mut self,
        conn: &mut Connection,
        rows: &[NewRow],
    ) -> Result<Appended, StoreError> {
        let tx = conn.transaction().map_err(classify)?;
        {
            let mut stmt = tx
                .prepare_cached("INSERT INTO queue(kind, child, ts, body) VALUES(?1, ?2, ?3, ?4)")
                .map_err(classify)?;
            for r in rows {
                stmt.execute(params![r.kind, r.child, r.ts_ms as i64, r.body])
                    .map_err(classify)?;
            }
        }
        let last_seq = tx.last_insert_rowid() as u64;
        tx.commit().map_err(classify)?;
        for r in rows {
            self.account(r.kind, r.body.len() as u64, 1);
        }
        let dropped = self.enforce(conn, fieldgate_driver::now_ms())?;
        Ok(Appended { last_seq, dropped })
    }

    /// Delete acknowledged rows.
    pub fn delete(&mut self, conn: &mut Connection, seqs: &[u64]) -> Result<(), StoreError> {
        let tx = conn.transaction()?;
        let mut gone = Vec::with_capacity(seqs.len());
        {
            let mut stmt =
                tx.prepare_cached("DELETE FROM queue WHERE seq = ?1 RETURNING kind, LENGTH(body)")?;
            for s in seqs {
                let mut rows = stmt.query([*s as i64])?;
                if let Some(r) = rows.next()? {
                    gone.push((r.get::<_, u8>(0)?, r.get::<_, i64>(1)? as u64));
                }
            }
        }
        tx.commit()?;
        for (kind, len) in gone {
            self.account(kind, len, -1);
        }
        Ok(())
    }

    /// Drop the oldest rows of a class (`telemetry` or priority) until `over()` is false.
    fn drop_oldest(
        &mut self,
        conn: &mut Connection,
        telemetry: bool,
        over: impl Fn(&Self) -> bool,
    ) -> Result<u64, StoreError> {
        let mut n = 0;
        let sql = if telemetry {
            "SELECT seq, kind, LENGTH(body) FROM queue WHERE kind = ?1 ORDER BY seq LIMIT 256"
        } else {
            "SELECT seq, kind, LENGTH(body) FROM queue WHERE kind != ?1 ORDER BY seq LIMIT 256"
        };
        while over(self) {
            let batch: Vec<(i64, u8, i64)> = conn
                .prepare_cached(sql)?
                .query_map([KIND_TELEMETRY], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<Result<_, _>>()?;
            if batch.is_empty() {
                break;
            }
            let tx = conn.transaction()?;
            {
                let mut del = tx.prepare_cached("DELETE FROM queue WHERE seq = ?1")?;
                for (seq, kind, len) in batch {
                    if !over(self) {
                        break;
                    }
                    del.execute([seq])?;
                    self.account(kind, len as u64, -1);
                    n += 1;
                }
            }
            tx.commit()?;
        }
        Ok(n)
    }

    /// Drop the leading rows older than `max_age`. Rows are in sample-time order by sequence
    /// (near enough: a batch is committed within the commit window), so this reads a few rows
    /// by primary key and stops at the first one still young.
    fn expire(&mut self, conn: &mut Connection, now_ms: u64) -> Result<u64, StoreError> {
        let cutoff = now_ms.saturating_sub(self.limits.max_age.as_millis() as u64) as i64;
        let mut n = 0;
        loop {
            let batch: Vec<(i64, u8, i64, i64)> = conn
                .prepare_cached(
                    "SELECT seq, kind, LENGTH(body), ts FROM queue ORDER BY seq LIMIT 256",
                )?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
                .collect::<Result<_, _>>()?;
            let old: Vec<_> = batch.iter().take_while(|r| r.3 < cutoff).copied().collect();
            if old.is_empty() {
                return Ok(n);
            }
            let tx = conn.transaction()?;
            {
                let mut del = tx.prepare_cached("DELETE FROM queue WHERE seq = ?1")?;
                for (seq, kind, len, _) in &old {
                    del.execute([*seq])?;
                    self.account(*kind, *len as u64, -1);
                    n += 1;
                }
            }
            tx.commit()?;
            if old.len() < batch.len() {
                return Ok(n);
            }
        }
    }

    /// Apply the bounds: expiry (at most once a second), then bytes.
    pub fn enforce(&mut self, conn: &mut Connection, now_ms: u64) -> Result<Dropped, StoreError> {
        let mut d = Dropped::default();
        if self
            .last_expiry
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
        {
            self.last_expiry = Some(Instant::now());
            d.expired = self.expire(conn, now_ms)?;
        }
        let (max, max_prio) = (self.limits.max_bytes, self.limits.max_priority_bytes);
        d.full += self.drop_oldest(conn, false, |b| b.priority_bytes > max_prio)?;
        d.full += self.drop_oldest(conn, true, |b| b.bytes > max)?;
        // Only priority rows left and still too many bytes: the oldest of those go too.
        d.full += self.drop_oldest(conn, false, |b| b.bytes > max)?;
        Ok(d)
    }
}
