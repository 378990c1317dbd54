//! The read half of the queue: what the uplink takes from the store, in order.
//!
//! The reader owns the cursor (the highest sequence number handed out or passed over), decodes
//! rows, drops the ones that can never be sent with a counted reason (`corrupt`, `orphan`,
//! `unsendable`), and keeps the store's marks on taken rows right: a row it hands out stays marked
//! until its PUBACK deletes it, or until the connection is lost and the row is released to be
//! sent again. Acknowledged rows are deleted in batches (one transaction per many acks); until
//! then they stay marked, so no scan sends them again and no bound drops them.
//!
//! While the uplink packs one read, the next is already being taken by the store thread
//! (read-ahead): a read-ahead that no longer starts at the cursor (a rewind, unsent records)
//! is released unread.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use tracing::warn;

use crate::metrics::Metrics;
use crate::queue::{Names, Record};
use crate::registry::Registry;
use crate::store::{Row, Store, StoreError, Want};
use tokio::sync::oneshot;

/// Acknowledged records deleted in one transaction at most (also flushed on every beat).
pub const ACK_BATCH: usize = 4096;
/// Stored bodies one read holds at most, whatever the rows asked for. A 100-point reading is
/// about 700 bytes stored and 5 KB decoded: 2,048 of them (a backlog after a hiccup) would
/// be 10 MB in memory at once, this bound about 0.5 MB (91 readings, 9,100 points: at
/// 100,000 points/s, 11 reads a second).
pub const READ_BYTES: usize = 64 * 1024;

/// A record ready to send: sequence number, the child's platform id, the record.
pub type Sendable = (u64, String, Record);

pub struct Reader {
    store: Store,
    metrics: Arc<Metrics>,
    cursor: u64,
    acked: Vec<u64>,
    ahead: Option<Ahead>,
    /// Deletes queued at the store and not yet confirmed.
    deleting: Vec<oneshot::Receiver<Result<(), StoreError>>>,
    /// Property names shared between the records it decodes.
    names: Names,
}

/// A take already asked of the store.
struct Ahead {
    after: u64,
    want: Want,
    rows: oneshot::Receiver<Result<Vec<Row>, StoreError>>,
}

/// One read: sendable records in order, and whether the store may hold more after them.
pub struct Taken {
    pub records: Vec<Sendable>,
    pub more: bool,
}

impl Reader {
    pub fn new(store: Store, metrics: Arc<Metrics>) -> Self {
        Reader {
            store,
            metrics,
            cursor: 0,
            acked: Vec::new(),
            ahead: None,
            deleting: Vec::new(),
            names: Names::default(),
        }
    }

    /// Start again from the oldest record not taken (a child was confirmed, a reload).
    pub fn rewind(&mut self) {
        self.cursor = 0;
    }

    /// Take up to `rows` rows after the cursor, [`READ_BYTES`] of stored bodies at most.
    /// Records of children the platform has not confirmed yet are passed over and left
    /// unmarked (read again after `rewind`).
    pub async fn next(
        &mut self,
        rows: usize,
        registry: &Mutex<Registry>,
    ) -> Result<Taken, StoreError> {
        let want = Want {
            rows,
            bytes: READ_BYTES,
        };
        let (got, asked) = match self.ahead.take() {
            Some(a) if a.after == self.cursor => {
                let got = a.rows.await.map_err(|_| StoreError::Closed)??;
                (got, a.want)
            }
            stale => {
                if let Some(a) = stale {
                    // Read for another cursor: give its rows back.
                    if let Ok(Ok(rows)) = a.rows.await {
                        let seqs: Vec<u64> = rows.iter().map(|r| r.seq).collect();
                        if !seqs.is_empty() {
                            self.store.release(Some(seqs)).await?;
                        }
                    }
                }
                (self.store.take(self.cursor, want).await?, want)
            }
        };
        let more = got.len() >= asked.rows
            || got.iter().map(|r| r.body.len()).sum::<usize>() >= asked.bytes;
        let Some(last) = got.last().map(|r| r.seq) else {
            return Ok(Taken {
                records: Vec::new(),
                more: false,
            });
        };
        let mut records = Vec::with_capacity(got.len());
        let mut gone = Vec::new();
        let mut waiting = Vec::new();
        // Decoded before the registry is locked: the ingest takes the same lock per batch.
        let decoded: Vec<_> = got
            .into_iter()
            .map(|row| {
                let rec = Record::decode_with(&row, &mut self.names);
                (row, rec)
            })
            .collect();
        {
            let reg = registry.lock().unwrap_or_else(|p| p.into_inner());
            for (row, rec) in decoded {
                match rec {
                    Err(e) => {
                        warn!(seq = row.seq, error = %e, "dropping unreadable queue record (counted as `corrupt`)");
                        self.metrics.dropped_corrupt.fetch_add(1, Ordering::Relaxed);
                        gone.push(row.seq);
                    }
                    Ok(rec) if !reg.contains(rec.child()) => {
                        warn!(seq = row.seq, child = %rec.child(), "dropping queued record of a child no longer configured (counted as `orphan`)");
                        self.metrics.dropped_orphan.fetch_add(1, Ordering::Relaxed);
                        gone.push(row.seq);
                    }
                    Ok(rec) => match reg.device_id(rec.child()) {
                        Some(dev) => records.push((row.seq, dev.to_string(), rec)),
                        // A child not yet confirmed by the platform waits; its order holds.
                        None => waiting.push(row.seq),
                    },
                }
            }
        }
        self.cursor = self.cursor.max(last);
        if !gone.is_empty() {
            self.store.delete(gone).await?;
        }
        if !waiting.is_empty() {
            self.store.release(Some(waiting)).await?;
        }
        if more {
            self.ahead = self
                .store
                .take_ahead(self.cursor, want)
                .map(|rows_rx| Ahead {
                    after: self.cursor,
                    want,
                    rows: rows_rx,
                });
        }
        Ok(Taken { records, more })
    }

    /// These taken records were not sent after all (window full, paced): release them and
    /// move the cursor back before the first, so they are read again in order.
    pub async fn unsent(&mut self, records: &[Sendable]) -> Result<(), StoreError> {
        let Some(first) = records.first().map(|r| r.0) else {
            return Ok(());
        };
        self.cursor = self.cursor.min(first.saturating_sub(1));
        self.store
            .release(Some(records.iter().map(|r| r.0).collect()))
            .await
    }

    /// Records the broker acknowledged; deleted by `flush`, at the latest at `ACK_BATCH`.
    pub async fn acked(&mut self, seqs: Vec<u64>) -> Result<(), StoreError> {
        self.metrics
            .delivered
            .fetch_add(seqs.len() as u64, Ordering::Relaxed);
        self.acked.extend(seqs);
        if self.acked.len() >= ACK_BATCH {
            self.flush().await?;
        }
        Ok(())
    }

    /// Delete every acknowledged record: queued at the store without waiting (the session
    /// goes on sending meanwhile); an earlier delete's failure is returned here.
    pub async fn flush(&mut self) -> Result<(), StoreError> {
        let mut failed = None;
        self.deleting.retain_mut(|rx| match rx.try_recv() {
            Ok(Ok(())) => false,
            Ok(Err(e)) => {
                failed.get_or_insert(e);
                false
            }
            Err(oneshot::error::TryRecvError::Empty) => true,
            Err(oneshot::error::TryRecvError::Closed) => {
                failed.get_or_insert(StoreError::Closed);
                false
            }
        });
        if !self.acked.is_empty() {
            let batch = std::mem::take(&mut self.acked);
            match self.store.delete_later(batch) {
                Ok(rx) => self.deleting.push(rx),
                Err(batch) => self.store.delete(batch).await?,
            }
        }
        failed.map_or(Ok(()), Err)
    }

    /// Flush, and wait until every queued delete is done.
    pub async fn finish(&mut self) -> Result<(), StoreError> {
        let mut r = self.flush().await;
        for rx in std::mem::take(&mut self.deleting) {
            let done = rx.await.map_err(|_| StoreError::Closed).and_then(|r| r);
            if r.is_ok() {
                r = done;
            }
        }
        r
    }

    /// Records that need no message on this platform (e.g. statuses where it has none): done.
    pub async fn done(&mut self, seqs: Vec<u64>) -> Result<(), StoreError> {
        self.store.delete(seqs).await
    }

    /// Records that can never be sent (too large even alone, a name that makes no valid
    /// topic): removed and counted as `unsendable`.
    pub async fn unsendable(&mut self, seqs: Vec<u64>) -> Result<(), StoreError> {
        self.metrics
            .dropped_unsendable
            .fetch_add(seqs.len() as u64, Ordering::Relaxed);
        self.store.delete(seqs).await
    }

    /// The connection is gone: delete what was acknowledged, release everything else that was
    /// taken, and start again from the oldest record.
    pub async fn reset(&mut self) -> Result<(), StoreError> {
        // A read-ahead is taken before the release below (one queue, in order): released too.
        self.ahead = None;
        let flushed = self.finish().await;
        self.cursor = 0;
        self.store.release(None).await?;
        flushed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Spec;
    use fieldgate_driver::{Name, Report, Value};

    #[tokio::test]
    async fn a_backlog_of_wide_readings_is_read_in_bounded_pieces_and_whole() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = Store::open(&dir.path().join("q.db"), Default::default(), false)
            .unwrap_or_else(|e| panic!("{e}"));
        let mut registry = Registry::new(&[Spec {
            node_id: "m".into(),
            name: "m".into(),
            product_id: "p".into(),
            bus: "b".into(),
            writable: Vec::new(),
        }]);
        registry.confirm("m", "dev-m");
        let registry = Mutex::new(registry);
        // 1,000 readings of 100 points: an outage's backlog.
        let names: Vec<Name> = (0..100).map(|p| Name::from(format!("p{p:03}"))).collect();
        let rows: Vec<_> = (0..1000u64)
            .map(|n| {
                Record::Report(Report {
                    child: "m".into(),
                    service: "s".into(),
                    properties: names
                        .iter()
                        .map(|k| (k.clone(), Value::Float(n as f64 + 0.5)))
                        .collect(),
                    ts_ms: fieldgate_driver::now_ms() + n,
                })
                .encode()
            })
            .collect();
        let stored: usize = rows.iter().map(|r| r.body.len()).sum();
        assert!(stored > 2 * READ_BYTES, "{stored} bytes stored");
        store.append(rows).await.unwrap_or_else(|e| panic!("{e}"));
        let mut reader = Reader::new(store.clone(), Arc::new(Metrics::default()));
        let mut seen = Vec::new();
        let mut reads = 0;
        loop {
            let taken = reader
                .next(2048, &registry)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            if taken.records.is_empty() {
                break;
            }
            reads += 1;
            let bytes: usize = taken
                .records
                .iter()
                .map(|(_, _, r)| r.encode().body.len())
                .sum();
            let one = taken.records[0].2.encode().body.len();
            assert!(
                bytes < READ_BYTES + one,
                "read {reads}: {bytes} bytes of stored bodies"
            );
            seen.extend(taken.records.iter().map(|(seq, _, _)| *seq));
            // Only the last read may say there is nothing more.
            if !taken.more {
                break;
            }
        }
        assert!(reads >= 3, "{reads} reads");
        assert_eq!(
            seen,
            (1..=1000).collect::<Vec<u64>>(),
            "every record, in order"
        );
    }
}
