//! Store-and-forward on top of the store: records, encoding, and group commit.
//!
//! Drivers' events arrive on one bounded channel; each reading passes the report stage
//! (`report`: strategies, deadbands, aggregation — what of it becomes a record), and the
//! ingest task gathers whatever arrives within the commit window (or up to a batch limit) and
//! appends it in one transaction — many appends, one flush, the stage's comparison bases in
//! the same transaction — then wakes the uplink. The registry (latest values for `status`,
//! property gets and command read-backs) sees every polled value, reported or not. A record leaves the queue only when the uplink
//! has the broker's PUBACK for the message that carried it. Records are stored
//! dialect-neutral (versioned body, no platform ids), so a change of dialect strands nothing.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use fieldgate_driver::{DeviceStatus, Event, EventsRx, Report};
use serde::{Deserialize, Serialize};
use std::sync::atomic::Ordering;
use tokio::sync::{watch, Notify};
use tracing::{error, info, warn};

pub mod reader;
mod wire;
pub use wire::Names;

pub use wire::BodyError;

use crate::metrics::{Metrics, Streak};
use crate::registry::Registry;
use crate::report::{ChildRules, Keep, Stage};
use crate::store::{NewRow, Row, Store, StoreError, KIND_TELEMETRY};

pub const KIND_REPORT: u8 = 1;
pub const KIND_STATUS: u8 = 2;
// Reports are the telemetry the store drops first when full.
const _: () = assert!(KIND_REPORT == KIND_TELEMETRY);
/// Body format versions. v1 (JSON) is still read; v2 (compact binary, `wire`) is written. A
/// body of any other version is counted as `corrupt`, never a crash.
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
        let (kind, body, ts_ms) = match self {
            Record::Report(r) => (KIND_REPORT, wire::encode_report(r), r.ts_ms),
            Record::Status(s) => (KIND_STATUS, wire::encode_status(s), s.ts_ms),
        };
        NewRow {
            kind,
            child: self.child().to_string(),
            ts_ms,
            body,
        }
    }

    pub fn decode(row: &Row) -> Result<Record, BodyError> {
        Record::decode_with(row, &mut Names::default())
    }

    /// `decode`, sharing property names with the records decoded before it (the reader's
    /// cache: no allocation per name while the names repeat).
    pub fn decode_with(row: &Row, names: &mut Names) -> Result<Record, BodyError> {
        let Some((&v, rest)) = row.body.split_first() else {
            return Err(BodyError::Empty);
        };
        match (v, row.kind) {
            (wire::V2, KIND_REPORT) => wire::decode_report(rest, names).map(Record::Report),
            (wire::V2, KIND_STATUS) => wire::decode_status(rest).map(Record::Status),
            (BODY_V1, KIND_REPORT) => serde_json::from_slice(rest)
                .map(Record::Report)
                .map_err(|e| BodyError::Json(e.to_string())),
            (BODY_V1, KIND_STATUS) => serde_json::from_slice(rest)
                .map(Record::Status)
                .map_err(|e| BodyError::Json(e.to_string())),
            (BODY_V1 | wire::V2, k) => Err(BodyError::Kind(k)),
            (v, _) => Err(BodyError::Version(v)),
        }
    }
}

/// Most records committed in one transaction.
const MAX_BATCH: usize = 2048;
/// Most points (properties of readings; a status counts one) held for one commit: a batch of
/// wide readings is committed early rather than held in memory for the whole window (2048
/// readings of 100 points would be 10 MB).
const MAX_BATCH_POINTS: usize = 16_384;
/// How often open aggregation windows are looked at.
const TICK: Duration = Duration::from_secs(1);

/// The report rules of every configured child (one config generation).
pub type RuleSet = std::collections::HashMap<String, Arc<ChildRules>>;

/// One batch: the records to queue, and the polled readings the registry must see.
#[derive(Default)]
struct Batch {
    /// To queue; `true`: also a polled reading (the registry's latest values).
    records: Vec<(Record, bool)>,
    /// Polled readings not queued whole (filtered by the report stage).
    polled: Vec<Report>,
    /// Points taken since the last commit.
    points: usize,
}

impl Batch {
    fn len(&self) -> usize {
        self.records.len() + self.polled.len()
    }

    /// Enough for one commit: by records, or by points.
    fn full(&self) -> bool {
        self.len() >= MAX_BATCH || self.points >= MAX_BATCH_POINTS
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Take events from drivers, pass readings through the report stage, commit them in groups,
/// wake the uplink. `rules` changes with every reload.
#[allow(clippy::too_many_arguments)]
pub async fn ingest(
    mut events: EventsRx,
    store: Store,
    registry: Arc<Mutex<Registry>>,
    commit_interval: Duration,
    wake: Arc<Notify>,
    metrics: Arc<Metrics>,
    mut rules: watch::Receiver<Arc<RuleSet>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut episodes = Episodes::default();
    let mut slow = fieldgate_driver::Episode::new(SLOW_COMMIT_QUIET);
    let mut batch = Batch::default();
    let mut stage = Stage::new();
    match store.bases().await {
        Ok(b) => stage.restore(b),
        Err(e) => {
            warn!(error = %e, "cannot read the report stage's last reported values: every value is reported once more")
        }
    }
    let current = rules.borrow_and_update().clone();
    set_rules(&mut stage, &store, &current, &mut batch).await;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            ev = events.recv() => match ev {
                Some(ev) => take(ev, &mut batch, &mut stage, &metrics),
                None => break,
            },
            Ok(()) = rules.changed() => {
                let current = rules.borrow_and_update().clone();
                set_rules(&mut stage, &store, &current, &mut batch).await;
            }
            _ = tick.tick() => {
                for r in stage.tick(fieldgate_driver::now_ms()) {
                    batch.records.push((Record::Report(r), false));
                }
            }
            _ = shutdown.changed() => break,
        }
        if batch.is_empty() {
            continue;
        }
        let deadline = tokio::time::Instant::now() + commit_interval;
        while !batch.full() {
            tokio::select! {
                ev = events.recv() => match ev {
                    Some(ev) => take(ev, &mut batch, &mut stage, &metrics),
                    None => break,
                },
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        let began = std::time::Instant::now();
        commit(
            &store,
            &registry,
            &metrics,
            &mut episodes,
            &mut batch,
            &mut stage,
            &wake,
        )
        .await;
        note_commit(began.elapsed(), &events, &metrics, &mut slow);
    }
    // Shutdown: take what is still in the channel, close the open windows, commit, stop.
    while let Some(ev) = events.try_recv() {
        take(ev, &mut batch, &mut stage, &metrics);
    }
    for r in stage.finish() {
        batch.records.push((Record::Report(r), false));
    }
    if !batch.is_empty() {
        let began = std::time::Instant::now();
        commit(
            &store,
            &registry,
            &metrics,
            &mut episodes,
            &mut batch,
            &mut stage,
            &wake,
        )
        .await;
        note_commit(began.elapsed(), &events, &metrics, &mut slow);
    }
}

/// A commit that takes this long is logged: drivers may be waiting on it meanwhile.
const SLOW_COMMIT: Duration = Duration::from_secs(1);
/// Slow commits are logged at most once per this interval, with their count.
const SLOW_COMMIT_QUIET: Duration = Duration::from_secs(60);

/// Keep the figures of the way in for `status` (the slowest commit, how often drivers waited
/// for room); say so when the store is slow.
fn note_commit(
    took: Duration,
    events: &EventsRx,
    metrics: &Metrics,
    slow: &mut fieldgate_driver::Episode,
) {
    let ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX);
    metrics.commit_max_ms.fetch_max(ms, Ordering::Relaxed);
    metrics
        .drivers_waited
        .store(events.waits(), Ordering::Relaxed);
    if took >= SLOW_COMMIT {
        if let Some(count) = slow.hit(1, std::time::Instant::now()) {
            warn!(
                took_ms = ms,
                slow_commits = count,
                waiting_points = events.points(),
                "the store is slow to commit: drivers wait for room meanwhile (held back, not dropped)"
            );
        }
    }
}

/// A config generation's rules: windows open under the old ones are closed into `batch`;
/// bases of children no longer configured are forgotten, in the store too.
async fn set_rules(stage: &mut Stage, store: &Store, rules: &RuleSet, batch: &mut Batch) {
    for r in stage.set_rules(rules.clone()) {
        batch.records.push((Record::Report(r), false));
    }
    if let Err(e) = store.keep_bases(rules.keys().cloned().collect()).await {
        warn!(error = %e, "cannot forget the report bases of removed children");
    }
}

/// Queue readings (through the report stage) and statuses; keep counters for `status`.
fn take(ev: Event, batch: &mut Batch, stage: &mut Stage, metrics: &Metrics) {
    match ev {
        Event::Report(r) => {
            batch.points = batch.points.saturating_add(r.properties.len());
            let mut closed = Vec::new();
            let keep = stage.report(&r, &mut closed);
            for w in closed {
                batch.records.push((Record::Report(w), false));
            }
            match keep {
                Keep::All => batch.records.push((Record::Report(r), true)),
                Keep::Nothing => batch.polled.push(r),
                Keep::Some(properties) => {
                    batch.records.push((
                        Record::Report(Report {
                            child: r.child.clone(),
                            service: r.service.clone(),
                            properties,
                            ts_ms: r.ts_ms,
                        }),
                        false,
                    ));
                    batch.polled.push(r);
                }
            }
        }
        Event::Status(s) => {
            batch.points = batch.points.saturating_add(1);
            // A window cut by OFFLINE goes before the status.
            for w in stage.status(&s.child, s.online) {
                batch.records.push((Record::Report(w), false));
            }
            batch.records.push((Record::Status(s), true));
        }
        Event::Counters { bus, counters } => {
            if let Ok(mut m) = metrics.bus_counters.lock() {
                m.insert(bus, counters);
            }
        }
    }
}

/// One "dropping" episode per reason: logged when it starts and when it ends, never per record.
#[derive(Default)]
pub struct Episodes {
    full: Streak,
    expired: Streak,
    store_error: Streak,
}

impl Episodes {
    fn note(
        episode: &mut Streak,
        n: u64,
        counter: &std::sync::atomic::AtomicU64,
        start: impl FnOnce(),
    ) {
        if n == 0 {
            return;
        }
        counter.fetch_add(n, Ordering::Relaxed);
        if episode.add(n) {
            start();
        }
    }

    fn end(episode: &mut Streak, what: &str) {
        let dropped = episode.end();
        if dropped > 0 {
            info!(dropped, "{what}: episode over");
        }
    }
}

async fn commit(
    store: &Store,
    registry: &Arc<Mutex<Registry>>,
    metrics: &Metrics,
    ep: &mut Episodes,
    batch: &mut Batch,
    stage: &mut Stage,
    wake: &Notify,
) {
    let rows: Arc<[NewRow]> = batch.records.iter().map(|(r, _)| r.encode()).collect();
    let bases: Arc<[crate::report::Base]> = stage.take_bases().into();
    let n = rows.len() as u64;
    let mut delay = Duration::from_millis(100);
    let mut attempts = 0;
    loop {
        attempts += 1;
        if rows.is_empty() && bases.is_empty() {
            break;
        }
        match store.append_with(rows.clone(), bases.clone()).await {
            Ok(a) => {
                Episodes::note(&mut ep.full, a.dropped.full, &metrics.dropped_full, || {
                    warn!(dropped = a.dropped.full, "queue at max_bytes: dropping the oldest telemetry (status changes are kept); counted as `full`")
                });
                if a.dropped.full == 0 {
                    Episodes::end(&mut ep.full, "queue full");
                }
                Episodes::note(
                    &mut ep.expired,
                    a.dropped.expired,
                    &metrics.dropped_expired,
                    || {
                        warn!(
                            dropped = a.dropped.expired,
                            "queued records older than max_age dropped; counted as `expired`"
                        )
                    },
                );
                if a.dropped.expired == 0 {
                    Episodes::end(&mut ep.expired, "expiry");
                }
                Episodes::end(&mut ep.store_error, "store errors");
                break;
            }
            Err(StoreError::Full) => {
                Episodes::note(&mut ep.full, n, &metrics.dropped_full, || {
                    error!(records = n, "DISK FULL: new readings cannot be stored and are dropped (counted as `full`) until space returns")
                });
                break;
            }
            Err(e) if attempts < 4 => {
                warn!(error = %e, records = n, attempt = attempts, "queue append failed; retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(e) => {
                Episodes::note(
                    &mut ep.store_error,
                    n,
                    &metrics.dropped_store_error,
                    || error!(error = %e, records = n, "the store keeps failing: dropping readings (counted as `store_error`)"),
                );
                break;
            }
        }
    }
    // Statuses and last values stay true for the operator even when the disk is full; every
    // polled value counts, reported or not.
    if let Ok(mut reg) = registry.lock() {
        for (r, polled) in batch.records.iter() {
            match r {
                Record::Status(s) => reg.set_status(&s.child, s.online, &s.reason),
                Record::Report(r) if *polled => reg.record(r),
                Record::Report(_) => {}
            }
        }
        for r in &batch.polled {
            reg.record(r);
        }
        let touched = batch
            .records
            .iter()
            .map(|(r, _)| r.child())
            .chain(batch.polled.iter().map(|r| r.child.as_str()));
        let mut last = "";
        for child in touched {
            if child != last {
                reg.set_report_counts(child, stage.counts(child));
                last = child;
            }
        }
    }
    let queued = !batch.records.is_empty();
    batch.records.clear();
    batch.polled.clear();
    batch.points = 0;
    if queued {
        wake.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fieldgate_driver::Name;

    fn wide(n: u64, points: u32) -> Event {
        Event::Report(Report {
            child: "m".into(),
            service: "s".into(),
            properties: (0..points)
                .map(|p| {
                    (
                        Name::from(format!("p{p:04}")),
                        fieldgate_driver::Value::UInt(n),
                    )
                })
                .collect(),
            ts_ms: fieldgate_driver::now_ms() + n,
        })
    }

    /// A running ingest: its task, its stop sender and its rules' sender (kept alive).
    type Running = (
        tokio::task::JoinHandle<()>,
        watch::Sender<bool>,
        watch::Sender<Arc<RuleSet>>,
    );
    /// The ingest on `store` with no report rules and a `window` commit interval; stop it by
    /// sending `true` on the returned stop sender.
    fn start_ingest(
        rx: EventsRx,
        store: &Store,
        window: Duration,
        metrics: Arc<Metrics>,
    ) -> Running {
        let (rules_tx, rules) = watch::channel(Arc::new(RuleSet::new()));
        let (stop_tx, stop) = watch::channel(false);
        let task = tokio::spawn(ingest(
            rx,
            store.clone(),
            Arc::new(Mutex::new(Registry::new(&[]))),
            window,
            Arc::new(Notify::new()),
            metrics,
            rules,
            stop,
        ));
        (task, stop_tx, rules_tx)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stalled_store_holds_drivers_back_and_loses_nothing() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("q.db");
        let store = Store::open(&path, Default::default(), false).unwrap_or_else(|e| panic!("{e}"));
        // Room for 64 messages but 2,000 points.
        let (tx, rx) = fieldgate_driver::events(64, 2000);
        let metrics = Arc::new(Metrics::default());
        let (task, stop_tx, _rules_tx) =
            start_ingest(rx, &store, Duration::from_millis(20), metrics.clone());
        // The ingest is under way once a first status is queued (its start reads and writes
        // the store too). Then a neighbour holds the database's write lock for 1.5 s: the next
        // commit waits.
        let online = Event::Status(DeviceStatus {
            child: "m".into(),
            online: true,
            reason: String::new(),
            ts_ms: fieldgate_driver::now_ms(),
        });
        assert!(tx.send(online).await.is_ok());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while store.depth().await.map(|d| d.records).unwrap_or(0) < 1 {
            assert!(tokio::time::Instant::now() < deadline, "the status queued");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (locked_tx, locked) = std::sync::mpsc::channel();
        let neighbour = std::thread::spawn(move || {
            let c = rusqlite::Connection::open(&path).unwrap_or_else(|e| panic!("{e}"));
            c.execute_batch("BEGIN IMMEDIATE")
                .unwrap_or_else(|e| panic!("{e}"));
            let _ = locked_tx.send(());
            std::thread::sleep(Duration::from_millis(1500));
            c.execute_batch("COMMIT").unwrap_or_else(|e| panic!("{e}"));
        });
        let _ = locked.recv();
        // The first reading goes into the stalled commit; two more fill the channel's
        // points, and the fourth waits until the store takes again.
        let sent = std::time::Instant::now();
        for n in 0..4 {
            assert!(tx.send(wide(n, 1000)).await.is_ok());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            sent.elapsed() >= Duration::from_millis(1000),
            "the fourth reading waited for the store: {:?}",
            sent.elapsed()
        );
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while store.depth().await.map(|d| d.records).unwrap_or(0) < 5 {
            assert!(tokio::time::Instant::now() < deadline, "all of them queued");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = stop_tx.send(true);
        assert!(tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .is_ok());
        let _ = neighbour.join();
        assert!(metrics.drivers_waited.load(Ordering::Relaxed) >= 1);
        assert!(
            metrics.commit_max_ms.load(Ordering::Relaxed) >= 1000,
            "{}",
            metrics.commit_max_ms.load(Ordering::Relaxed)
        );
        assert_eq!(store.depth().await.map(|d| d.records).ok(), Some(5));
    }

    #[tokio::test]
    async fn wide_readings_are_committed_before_the_window_ends() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = Store::open(&dir.path().join("q.db"), Default::default(), false)
            .unwrap_or_else(|e| panic!("{e}"));
        let (tx, rx) = fieldgate_driver::events(64, 1 << 20);
        // A 10 s window: only the points bound can commit within the test.
        let (task, stop_tx, _rules_tx) = start_ingest(
            rx,
            &store,
            Duration::from_secs(10),
            Arc::new(Metrics::default()),
        );
        // 17 readings of 1,000 points pass the 16,384-point bound; 17 records would not fill
        // a batch of 2,048.
        for n in 0..17 {
            assert!(tx.send(wide(n, 1000)).await.is_ok());
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let mut queued = 0;
        while tokio::time::Instant::now() < deadline {
            queued = store.depth().await.map(|d| d.records).unwrap_or(0);
            if queued > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            (16..=17).contains(&queued),
            "committed early, by points: {queued} records"
        );
        let _ = stop_tx.send(true);
        assert!(tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .is_ok());
        // Stopping commits the rest.
        assert_eq!(store.depth().await.map(|d| d.records).ok(), Some(17));
    }

    #[test]
    fn records_round_trip_and_bad_bodies_are_errors() {
        let r = Record::Report(Report {
            child: "m1".into(),
            service: "s".into(),
            properties: fieldgate_driver::Properties::from([(
                "v".into(),
                fieldgate_driver::Value::Float(1.5),
            )]),
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
        assert_eq!(Record::decode(&bad), Err(BodyError::Version(9)));
        bad.body = vec![];
        assert!(Record::decode(&bad).is_err());
        let mut bad = stored;
        bad.body.truncate(5);
        assert!(Record::decode(&bad).is_err());
    }

    fn row_of(r: &Record) -> Row {
        let n = r.encode();
        Row {
            seq: 1,
            kind: n.kind,
            child: n.child,
            body: n.body,
        }
    }

    #[test]
    fn every_value_type_round_trips_and_v1_is_still_read() {
        use fieldgate_driver::Value;
        let r = Record::Report(Report {
            child: "meter-ü".into(),
            service: "energy".into(),
            properties: fieldgate_driver::Properties::from([
                ("b".into(), Value::Bool(true)),
                ("f".into(), Value::Bool(false)),
                ("i".into(), Value::Int(i64::MIN)),
                ("j".into(), Value::Int(-1)),
                ("u".into(), Value::UInt(u64::MAX)),
                ("x".into(), Value::Float(-230.5)),
                ("t".into(), Value::Text("ABC ✓".into())),
            ]),
            ts_ms: 1_795_316_215_224,
        });
        assert_eq!(Record::decode(&row_of(&r)), Ok(r.clone()));
        let s = Record::Status(DeviceStatus {
            child: "m".into(),
            online: false,
            reason: "timeout after 1s".into(),
            ts_ms: 5,
        });
        assert_eq!(Record::decode(&row_of(&s)), Ok(s));
        // A body written by 0.1 development builds (v1, JSON) is still read.
        let Record::Report(rep) = &r else {
            unreachable!()
        };
        let mut v1 = vec![1u8];
        v1.extend(serde_json::to_vec(rep).unwrap_or_default());
        let json_len = v1.len();
        assert_eq!(
            Record::decode(&Row {
                seq: 1,
                kind: KIND_REPORT,
                child: "c".into(),
                body: v1
            }),
            Ok(r.clone())
        );
        let v2_len = row_of(&r).body.len();
        assert!(
            v2_len * 2 < json_len,
            "v2 is compact: {v2_len} bytes vs {json_len} as JSON"
        );
    }

    #[test]
    fn decoded_names_are_shared_while_they_repeat_and_right_when_they_do_not() {
        use fieldgate_driver::Value;
        let rep = |names: &[&str]| {
            Record::Report(Report {
                child: "m".into(),
                service: "s".into(),
                properties: names
                    .iter()
                    .map(|n| (Name::from(*n), Value::UInt(1)))
                    .collect(),
                ts_ms: 1,
            })
        };
        let props = |r: &Record| match r {
            Record::Report(r) => r.properties.keys().cloned().collect::<Vec<_>>(),
            Record::Status(_) => Vec::new(),
        };
        let mut names = Names::default();
        let a = rep(&["p1", "p2", "p3"]);
        let first = Record::decode_with(&row_of(&a), &mut names);
        let again = Record::decode_with(&row_of(&a), &mut names);
        assert_eq!(first.as_ref(), Ok(&a));
        assert_eq!(again.as_ref(), Ok(&a));
        let (first, again) = (
            props(&first.unwrap_or(a.clone())),
            props(&again.unwrap_or(a)),
        );
        assert!(
            first.iter().zip(&again).all(|(x, y)| Arc::ptr_eq(x, y)),
            "the second record's names are the first one's"
        );
        // Other names at the same positions (another profile): decoded as they are.
        let b = rep(&["p1", "q2", "q3", "q4"]);
        let got = Record::decode_with(&row_of(&b), &mut names);
        assert_eq!(got.as_ref(), Ok(&b));
        let got = props(&got.unwrap_or(b));
        assert!(Arc::ptr_eq(&got[0], &first[0]), "an unchanged name is kept");
        assert!(!Arc::ptr_eq(&got[1], &first[1]));
        // A record with more names than are kept still decodes whole.
        let many: Vec<String> = (0..Names::MAX + 10).map(|i| format!("n{i:05}")).collect();
        let many = rep(&many.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(
            Record::decode_with(&row_of(&many), &mut names),
            Ok(many.clone())
        );
        assert_eq!(Record::decode_with(&row_of(&many), &mut names), Ok(many));
        // A name that is not UTF-8 is refused, whatever was kept at its position.
        let mut bad = row_of(&rep(&["p1", "zz"]));
        let at = bad.body.windows(2).position(|w| w == b"zz").unwrap_or(0);
        bad.body[at] = 0xff;
        assert_eq!(
            Record::decode_with(&bad, &mut names),
            Err(BodyError::NotUtf8)
        );
    }
}
