//! Store-and-forward on top of the store: records, encoding, and group commit.
//!
//! Drivers' events arrive on one bounded channel; the ingest task gathers whatever arrives
//! within the commit window (or up to a batch limit) and appends it in one transaction — many
//! appends, one flush — then wakes the uplink. A record leaves the queue only when the uplink
//! has the broker's PUBACK for the message that carried it. Records are stored
//! dialect-neutral (versioned body, no platform ids), so a change of dialect strands nothing.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use fieldgate_driver::{DeviceStatus, Event, Report};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch, Notify};
use tracing::{error, warn};

use crate::registry::Registry;
use crate::store::{NewRow, Row, Store};

pub const KIND_REPORT: u8 = 1;
pub const KIND_STATUS: u8 = 2;
/// Body format version; a body from another version is counted as corrupt, never a crash.
const BODY_V1: u8 = 1;

/// A queued record, decoded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Record {
    Report(Report),
    Status(DeviceStatus),
}

impl Record {
    pub fn child(&self) -> &str {
        match self {
            Record::Report(r) => &r.child,
            Record::Status(s) => &s.child,
        }
    }

    pub fn encode(&self) -> NewRow {
        let (kind, json) = match self {
            Record::Report(r) => (KIND_REPORT, serde_json::to_vec(r)),
            Record::Status(s) => (KIND_STATUS, serde_json::to_vec(s)),
        };
        let mut body = vec![BODY_V1];
        // Serialising these plain structs cannot fail; an empty body would decode as corrupt.
        body.extend(json.unwrap_or_default());
        NewRow {
            kind,
            child: self.child().to_string(),
            body,
        }
    }

    pub fn decode(row: &Row) -> Result<Record, String> {
        let Some((&v, json)) = row.body.split_first() else {
            return Err("empty body".into());
        };
        if v != BODY_V1 {
            return Err(format!("unknown body version {v}"));
        }
        match row.kind {
            KIND_REPORT => serde_json::from_slice(json)
                .map(Record::Report)
                .map_err(|e| e.to_string()),
            KIND_STATUS => serde_json::from_slice(json)
                .map(Record::Status)
                .map_err(|e| e.to_string()),
            k => Err(format!("unknown record kind {k}")),
        }
    }
}

/// Most records committed in one transaction.
const MAX_BATCH: usize = 2048;

/// Take events from drivers, commit them in groups, wake the uplink.
pub async fn ingest(
    mut events: mpsc::Receiver<Event>,
    store: Store,
    registry: Arc<Mutex<Registry>>,
    commit_interval: Duration,
    wake: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut batch: Vec<Record> = Vec::with_capacity(256);
    loop {
        let first = tokio::select! {
            ev = events.recv() => ev,
            _ = shutdown.changed() => None,
        };
        let Some(first) = first else { break };
        batch.push(to_record(first));
        let deadline = tokio::time::Instant::now() + commit_interval;
        while batch.len() < MAX_BATCH {
            tokio::select! {
                ev = events.recv() => match ev {
                    Some(ev) => batch.push(to_record(ev)),
                    None => break,
                },
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        commit(&store, &registry, &mut batch, &wake).await;
    }
    // Shutdown: take what is still in the channel, commit it, then stop.
    while let Ok(ev) = events.try_recv() {
        batch.push(to_record(ev));
    }
    if !batch.is_empty() {
        commit(&store, &registry, &mut batch, &wake).await;
    }
}

fn to_record(ev: Event) -> Record {
    match ev {
        Event::Report(r) => Record::Report(r),
        Event::Status(s) => Record::Status(s),
    }
}

async fn commit(
    store: &Store,
    registry: &Arc<Mutex<Registry>>,
    batch: &mut Vec<Record>,
    wake: &Notify,
) {
    let rows: Vec<NewRow> = batch.iter().map(Record::encode).collect();
    let mut delay = Duration::from_millis(100);
    loop {
        match store.append(rows.clone()).await {
            Ok(_) => break,
            Err(e) => {
                // Keep the batch and retry: drivers block on the bounded channel meanwhile,
                // which is the back-pressure we want rather than dropping silently.
                error!(error = %e, records = rows.len(), "queue append failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
                if delay >= Duration::from_secs(5) {
                    warn!(records = rows.len(), "store still failing");
                }
            }
        }
    }
    if let Ok(mut reg) = registry.lock() {
        for r in batch.iter() {
            match r {
                Record::Status(s) => reg.set_status(&s.child, s.online, &s.reason),
                Record::Report(r) => reg.record(r),
            }
        }
    }
    batch.clear();
    wake.notify_one();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn records_round_trip_and_bad_bodies_are_errors() {
        let r = Record::Report(Report {
            child: "m1".into(),
            service: "s".into(),
            properties: BTreeMap::from([("v".into(), fieldgate_driver::Value::Float(1.5))]),
            ts_ms: 7,
        });
        let row = r.encode();
        let stored = Row {
            seq: 1,
            kind: row.kind,
            child: row.child,
            body: row.body,
        };
        assert_eq!(Record::decode(&stored), Ok(r));
        let mut bad = stored.clone();
        bad.body[0] = 9;
        assert!(Record::decode(&bad).unwrap_err().contains("version"));
        bad.body = vec![];
        assert!(Record::decode(&bad).is_err());
        let mut bad = stored;
        bad.body.truncate(5);
        assert!(Record::decode(&bad).is_err());
    }
}
