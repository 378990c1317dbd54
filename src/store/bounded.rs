//! The queue table with its bounds, as run by the store thread.
//!
//! Running totals (records, bytes, bytes of priority rows) are kept in memory so bounds cost
//! nothing per append. When `max_bytes` is exceeded, the oldest *telemetry* rows go first;
//! priority rows (status changes, anything not telemetry) have their own smaller bound and are
//! dropped only past it, so an outage never costs the platform the knowledge of which devices
//! were down. Rows older than `max_age` expire, measured in queue time (`clock.rs`), so a step
//! of the wall clock never expires anything by itself. Every dropped row is counted by reason and
//! returned to the caller, which logs once per episode — never silently.
//!
//! Rows the uplink has taken (sent and unacknowledged, or acknowledged and waiting for their batched delete)
//! are *marked*: the bounds and expiry pass over them, so a row the platform may already have
//! is never dropped and counted as lost. Marks live in memory only; a restart sends them again.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, OptionalExtension};
use tracing::warn;

use super::clock::QueueClock;
use super::{NewRow, StoreError};
use crate::report::Base;

/// The `meta` key holding the queue clock's offset (ms) across restarts.
const CLOCK_OFFSET: &str = "queue_clock_offset_ms";

/// Rows of this kind are telemetry: dropped first when the queue is full.
pub const KIND_TELEMETRY: u8 = 1;

pub use crate::config::Limits;

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
    /// Queue time (what the `ts` column holds and `max_age` is measured in), and the monotonic
    /// origin of its observations.
    clock: QueueClock,
    since: Instant,
    /// Rows taken by the uplink and not yet deleted or released, with their kind and body
    /// length (so deleting them needs no read back).
    pub marked: Marks,
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
        let offset = conn
            .query_row(
                "SELECT value FROM meta WHERE key = ?1",
                [CLOCK_OFFSET],
                |r| r.get::<_, String>(0),
            )
            .optional()?
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or(0);
        let newest = conn
            .query_row("SELECT ts FROM queue ORDER BY seq DESC LIMIT 1", [], |r| {
                r.get::<_, i64>(0)
            })
            .optional()?
            .and_then(|t| u64::try_from(t).ok());
        let clock = QueueClock::resume(offset, newest, fieldgate_driver::now_ms());
        Ok(Bounded {
            limits,
            records,
            bytes,
            priority_bytes,
            last_expiry: None,
            clock,
            since: Instant::now(),
            marked: Marks::default(),
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
        bases: &[Base],
    ) -> Result<Appended, StoreError> {
        let wall = fieldgate_driver::now_ms();
        let now = self.queue_now(conn, wall);
        let tx = conn.transaction().map_err(classify)?;
        {
            let mut stmt = tx
                .prepare_cached("INSERT INTO queue(kind, child, ts, body) VALUES(?1, ?2, ?3, ?4)")
                .map_err(classify)?;
            for r in rows {
                // Its age so far (a reading may arrive old), carried over into queue time.
                let ts = now.saturating_sub(wall.saturating_sub(r.ts_ms));
                stmt.execute(params![
                    r.kind,
                    r.child,
                    i64::try_from(ts).unwrap_or(i64::MAX),
                    r.body
                ])
                .map_err(classify)?;
            }
        }
        let last_seq = tx.last_insert_rowid() as u64;
        if !bases.is_empty() {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT INTO report_base(child, service, property, value, ts, rule)
                     VALUES(?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT(child, service, property) DO UPDATE SET
                       value = excluded.value, ts = excluded.ts, rule = excluded.rule",
                )
                .map_err(classify)?;
            for b in bases {
                let value = serde_json::to_string(&b.value).unwrap_or_default();
                stmt.execute(params![
                    b.child,
                    b.service,
                    b.property,
                    value,
                    i64::try_from(b.ts_ms).unwrap_or(i64::MAX),
                    i64::from_ne_bytes(b.rule.to_ne_bytes())
                ])
                .map_err(classify)?;
            }
        }
        tx.commit().map_err(classify)?;
        for r in rows {
            self.account(r.kind, r.body.len() as u64, 1);
        }
        let dropped = self.enforce(conn, now)?;
        Ok(Appended { last_seq, dropped })
    }

    /// Delete rows, one statement per run of consecutive sequence numbers, all in one
    /// transaction; their marks go with them. Taken rows are accounted from their marks; others
    /// (tests, rows never taken) are read back as they go.
    pub fn delete(&mut self, conn: &mut Connection, seqs: &[u64]) -> Result<(), StoreError> {
        let mut known = Vec::with_capacity(seqs.len());
        let mut unknown = Vec::new();
        for s in seqs {
            if self.marked.contains_key(s) {
                known.push(*s);
            } else {
                unknown.push(*s);
            }
        }
        known.sort_unstable();
        known.dedup();
        unknown.sort_unstable();
        unknown.dedup();
        let tx = conn.transaction()?;
        let mut gone = Vec::with_capacity(unknown.len());
        {
            let mut plain = tx.prepare_cached("DELETE FROM queue WHERE seq >= ?1 AND seq <= ?2")?;
            for (lo, hi) in runs(&known) {
                plain.execute([lo as i64, hi as i64])?;
            }
            let mut stmt = tx.prepare_cached(
                "DELETE FROM queue WHERE seq >= ?1 AND seq <= ?2 RETURNING kind, LENGTH(body)",
            )?;
            for (lo, hi) in runs(&unknown) {
                let mut rows = stmt.query([lo as i64, hi as i64])?;
                while let Some(r) = rows.next()? {
                    gone.push((r.get::<_, u8>(0)?, r.get::<_, i64>(1)? as u64));
                }
            }
        }
        tx.commit()?;
        for s in &known {
            if let Some(k) = self.marked.remove(s) {
                gone.push(k);
            }
        }
        for (kind, len) in gone {
            self.account(kind, len, -1);
        }
        Ok(())
    }

    /// Drop the oldest unmarked rows of a class (`telemetry` or priority) until `over()` is
    /// false.
    fn drop_oldest(
        &mut self,
        conn: &mut Connection,
        telemetry: bool,
        over: impl Fn(&Self) -> bool,
    ) -> Result<u64, StoreError> {
        let mut n = 0;
        let sql = if telemetry {
            "SELECT seq, kind, LENGTH(body) FROM queue WHERE kind = ?1 AND seq > ?2 ORDER BY seq LIMIT 256"
        } else {
            "SELECT seq, kind, LENGTH(body) FROM queue WHERE kind != ?1 AND seq > ?2 ORDER BY seq LIMIT 256"
        };
        let mut after = 0i64;
        while over(self) {
            let batch: Vec<(i64, u8, i64)> = conn
                .prepare_cached(sql)?
                .query_map(params![KIND_TELEMETRY, after], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })?
                .collect::<Result<_, _>>()?;
            let Some(last) = batch.last().map(|b| b.0) else {
                break;
            };
            after = last;
            let tx = conn.transaction()?;
            {
                let mut del = tx.prepare_cached("DELETE FROM queue WHERE seq = ?1")?;
                for (seq, kind, len) in batch {
                    if !over(self) {
                        break;
                    }
                    if self.marked.contains_key(&(seq as u64)) {
                        continue;
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
        let age_ms = u64::try_from(self.limits.max_age.as_millis()).unwrap_or(u64::MAX);
        let cutoff = i64::try_from(now_ms.saturating_sub(age_ms)).unwrap_or(i64::MAX);
        let mut n = 0;
        let mut after = 0i64;
        loop {
            let batch: Vec<(i64, u8, i64, i64)> = conn
                .prepare_cached(
                    "SELECT seq, kind, LENGTH(body), ts FROM queue WHERE seq > ?1 ORDER BY seq LIMIT 256",
                )?
                .query_map([after], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
                .collect::<Result<_, _>>()?;
            let old: Vec<_> = batch.iter().take_while(|r| r.3 < cutoff).copied().collect();
            if old.is_empty() {
                return Ok(n);
            }
            after = old.last().map_or(after, |r| r.0);
            let tx = conn.transaction()?;
            {
                let mut del = tx.prepare_cached("DELETE FROM queue WHERE seq = ?1")?;
                for (seq, kind, len, _) in &old {
                    // Taken by the uplink: it may be delivered already; its ack decides.
                    if self.marked.contains_key(&(*seq as u64)) {
                        continue;
                    }
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

    /// Queue time now, given the wall clock: a step is logged once and its offset kept in the
    /// store, so a restart continues it.
    fn queue_now(&mut self, conn: &Connection, wall_ms: u64) -> u64 {
        let mono = u64::try_from(self.since.elapsed().as_millis()).unwrap_or(u64::MAX);
        let r = self.clock.observe(wall_ms, mono);
        if let Some(step) = r.step_ms {
            warn!(
                step_s = step / 1000,
                "the wall clock stepped; queued records keep their age (max_age counts queue time)"
            );
            if let Err(e) = conn.execute(
                "INSERT INTO meta(key, value) VALUES(?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                params![CLOCK_OFFSET, self.clock.offset_ms().to_string()],
            ) {
                warn!(error = %e, "cannot keep the clock offset; a restart measures ages by the wall clock");
            }
        }
        r.now_ms
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

/// Sequence numbers are already well spread integers: a multiplicative hash is enough, and
/// costs a fraction of SipHash on a path taken for every row sent and deleted.
#[derive(Default)]
pub struct SeqHasher(u64);

impl Hasher for SeqHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// Taken rows: sequence number → (kind, body length), and the highest one taken (rows above it
/// cannot be marked, so most reads need no lookup at all).
#[derive(Default)]
pub struct Marks {
    map: HashMap<u64, (u8, u64), BuildHasherDefault<SeqHasher>>,
    highest: u64,
}

impl Marks {
    pub fn contains_key(&self, seq: &u64) -> bool {
        *seq <= self.highest && self.map.contains_key(seq)
    }

    pub fn insert(&mut self, seq: u64, v: (u8, u64)) -> Option<(u8, u64)> {
        self.highest = self.highest.max(seq);
        self.map.insert(seq, v)
    }

    pub fn remove(&mut self, seq: &u64) -> Option<(u8, u64)> {
        if *seq > self.highest {
            return None;
        }
        let v = self.map.remove(seq);
        if self.map.is_empty() {
            self.highest = 0;
        }
        v
    }

    pub fn clear(&mut self) {
        self.map.clear();
        self.highest = 0;
    }
}

/// Runs of consecutive numbers in a sorted, deduplicated list, as inclusive ranges.
fn runs(sorted: &[u64]) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &s in sorted {
        match out.last_mut() {
            Some((_, hi)) if hi.checked_add(1) == Some(s) => *hi = s,
            _ => out.push((s, s)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::runs;

    #[test]
    fn runs_of_sequence_numbers() {
        assert_eq!(runs(&[]), vec![]);
        assert_eq!(runs(&[1, 2, 3, 5, 7, 8]), vec![(1, 3), (5, 5), (7, 8)]);
        assert_eq!(
            runs(&[u64::MAX - 1, u64::MAX]),
            vec![(u64::MAX - 1, u64::MAX)]
        );
    }
}
