//! Model-based property test of the store-and-forward queue: random sequences of append
//! (telemetry and status rows of random sizes), take, ack, reopen and crash-before-commit run
//! against the real SQLite store, and after every step its contents, order, depth and drop
//! counts must equal a plain in-memory model with the documented policy: oldest telemetry goes
//! first when `max_bytes` is exceeded, status rows have their own bound, nothing else is lost.
//! Rows the uplink has taken (in flight or acknowledged, not yet deleted) are never dropped by
//! the bounds, so the drop counters count only what the platform never got.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use fieldgate::store::{Limits, NewRow, Store, Want, KIND_TELEMETRY};
use proptest::prelude::*;

const STATUS: u8 = 2;

#[derive(Debug, Clone)]
enum Op {
    /// Rows as (is_status, child, body length).
    Append(Vec<(bool, u8, usize)>),
    Take(usize),
    /// The uplink takes (marks) the oldest n unmarked rows, stopping at the row whose body
    /// brings what it took to the byte bound (at least one row).
    Mark(usize, usize),
    /// A connection loss: every mark released.
    Release,
    /// Ack the rows at these positions of what is present (modulo its length).
    Ack(Vec<usize>),
    Reopen,
    CrashBeforeCommit(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => prop::collection::vec((prop::bool::weighted(0.2), 0u8..4, 1usize..120), 1..12).prop_map(Op::Append),
        2 => (1usize..20).prop_map(Op::Take),
        2 => (1usize..20, prop_oneof![Just(usize::MAX), 1usize..400]).prop_map(|(n, b)| Op::Mark(n, b)),
        1 => Just(Op::Release),
        2 => prop::collection::vec(any::<usize>(), 1..8).prop_map(Op::Ack),
        1 => Just(Op::Reopen),
        1 => (1usize..5).prop_map(Op::CrashBeforeCommit),
    ]
}

#[derive(Default)]
struct Model {
    rows: BTreeMap<u64, (u8, Vec<u8>)>,
    next_seq: u64,
    dropped_full: u64,
    marked: BTreeSet<u64>,
}

impl Model {
    fn bytes(&self, only_priority: bool) -> u64 {
        self.rows
            .values()
            .filter(|(k, _)| !only_priority || *k != KIND_TELEMETRY)
            .map(|(_, b)| b.len() as u64)
            .sum()
    }

    fn drop_oldest(&mut self, telemetry: bool, over: impl Fn(&Model) -> bool) {
        while over(self) {
            let Some(seq) = self
                .rows
                .iter()
                .find(|(s, (k, _))| (*k == KIND_TELEMETRY) == telemetry && !self.marked.contains(s))
                .map(|(s, _)| *s)
            else {
                return;
            };
            self.rows.remove(&seq);
            self.dropped_full += 1;
        }
    }

    fn append(&mut self, rows: &[NewRow], l: &Limits) {
        for r in rows {
            self.next_seq += 1;
            self.rows.insert(self.next_seq, (r.kind, r.body.clone()));
        }
        self.drop_oldest(false, |m| m.bytes(true) > l.max_priority_bytes);
        self.drop_oldest(true, |m| m.bytes(false) > l.max_bytes);
        self.drop_oldest(false, |m| m.bytes(false) > l.max_bytes);
    }
}

fn rows(spec: &[(bool, u8, usize)], salt: u64) -> Vec<NewRow> {
    spec.iter()
        .enumerate()
        .map(|(i, (status, child, len))| NewRow {
            kind: if *status { STATUS } else { KIND_TELEMETRY },
            child: format!("c{child}"),
            ts_ms: fieldgate_driver::now_ms(),
            body: (0..*len)
                .map(|j| (salt as usize + i * 31 + j) as u8)
                .collect(),
        })
        .collect()
}

fn run(ops: Vec<Op>, dir: &Path) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let limits = Limits {
        max_bytes: 1500,
        max_priority_bytes: 400,
        max_age: Duration::from_secs(86_400),
    };
    let path = dir.join("q.db");
    let open = || Store::open(&path, limits, false).map_err(|e| TestCaseError::fail(e.to_string()));
    let mut store = open()?;
    let mut model = Model::default();
    let mut dropped_full = 0;
    for (step, op) in ops.into_iter().enumerate() {
        match op {
            Op::Append(spec) => {
                let rows = rows(&spec, step as u64);
                model.append(&rows, &limits);
                let a = rt
                    .block_on(store.append(rows))
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                dropped_full += a.dropped.full;
                // Over a bound only with taken rows: every untaken row of that class is gone.
                let untaken = |priority_only: bool| {
                    model.rows.iter().any(|(s, (k, _))| {
                        !model.marked.contains(s) && (!priority_only || *k != KIND_TELEMETRY)
                    })
                };
                prop_assert!(model.bytes(false) <= limits.max_bytes || !untaken(false));
                prop_assert!(model.bytes(true) <= limits.max_priority_bytes || !untaken(true));
                prop_assert_eq!(
                    a.last_seq,
                    model.next_seq,
                    "sequence numbers at step {}",
                    step
                );
            }
            Op::Take(n) => {
                let got = rt
                    .block_on(store.scan(0, n))
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                let want: Vec<u64> = model.rows.keys().take(n).copied().collect();
                prop_assert_eq!(
                    got.iter().map(|r| r.seq).collect::<Vec<_>>(),
                    want,
                    "take {} at step {}",
                    n,
                    step
                );
            }
            Op::Mark(n, bytes) => {
                let got = rt
                    .block_on(store.take(0, Want { rows: n, bytes }))
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                let mut want: Vec<u64> = Vec::new();
                let mut taken = 0usize;
                for (s, (_, body)) in &model.rows {
                    if want.len() >= n || taken >= bytes {
                        break;
                    }
                    if !model.marked.contains(s) {
                        want.push(*s);
                        taken += body.len();
                    }
                }
                model.marked.extend(want.iter().copied());
                prop_assert_eq!(
                    got.iter().map(|r| r.seq).collect::<Vec<_>>(),
                    want,
                    "mark {} at step {}",
                    n,
                    step
                );
            }
            Op::Release => {
                model.marked.clear();
                rt.block_on(store.release(None))
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
            }
            Op::Ack(picks) => {
                let present: Vec<u64> = model.rows.keys().copied().collect();
                if present.is_empty() {
                    continue;
                }
                let seqs: Vec<u64> = picks.iter().map(|p| present[p % present.len()]).collect();
                for s in &seqs {
                    model.rows.remove(s);
                    model.marked.remove(s);
                }
                rt.block_on(store.delete(seqs))
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
            }
            Op::Reopen => {
                drop(store);
                model.marked.clear();
                // The store thread finishes its queue and closes the file when the handle goes.
                std::thread::sleep(Duration::from_millis(20));
                store = open()?;
            }
            Op::CrashBeforeCommit(n) => {
                // Another writer dies mid-transaction: nothing of it may appear.
                let c = rusqlite::Connection::open(&path)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                c.busy_timeout(Duration::from_secs(5))
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                c.execute_batch("BEGIN IMMEDIATE")
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                for i in 0..n {
                    c.execute(
                        "INSERT INTO queue(kind, child, ts, body) VALUES(1, 'ghost', 0, ?1)",
                        [vec![i as u8; 10]],
                    )
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                }
                drop(c); // no COMMIT: rolled back like a process killed before it
            }
        }
        // After every step the whole queue equals the model, in order.
        let all = rt
            .block_on(store.scan(0, 100_000))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let got: Vec<(u64, u8, Vec<u8>)> =
            all.into_iter().map(|r| (r.seq, r.kind, r.body)).collect();
        let want: Vec<(u64, u8, Vec<u8>)> = model
            .rows
            .iter()
            .map(|(s, (k, b))| (*s, *k, b.clone()))
            .collect();
        prop_assert_eq!(&got, &want, "contents after step {}", step);
        let d = rt
            .block_on(store.depth())
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(
            (d.records, d.bytes),
            (want.len() as u64, model.bytes(false)),
            "depth after step {}",
            step
        );
        prop_assert_eq!(
            dropped_full,
            model.dropped_full,
            "drops counted after step {}",
            step
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn the_store_behaves_like_the_model(ops in prop::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
        run(ops, dir.path())?;
    }
}

#[test]
fn expired_rows_are_dropped_and_counted() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let limits = Limits {
        max_bytes: 1 << 20,
        max_priority_bytes: 1 << 16,
        max_age: Duration::from_secs(3600),
    };
    let store =
        Store::open(&dir.path().join("q.db"), limits, false).unwrap_or_else(|e| panic!("{e}"));
    let now = fieldgate_driver::now_ms();
    let mut old = rows(&[(false, 1, 10), (true, 1, 10), (false, 2, 10)], 1);
    for r in &mut old {
        r.ts_ms = now - 2 * 3600 * 1000;
    }
    let a = rt
        .block_on(store.append(old))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(a.dropped.expired, 3, "all three were older than max_age");
    let a = rt
        .block_on(store.append(rows(&[(false, 1, 10)], 2)))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(a.dropped.expired, 0);
    assert_eq!(
        rt.block_on(store.depth()).map(|d| d.records).unwrap_or(0),
        1
    );
}

fn value() -> impl Strategy<Value = fieldgate_driver::Value> {
    use fieldgate_driver::Value;
    prop_oneof![
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::Int),
        any::<u64>().prop_map(Value::UInt),
        any::<f64>()
            .prop_filter("NaN != NaN", |f| !f.is_nan())
            .prop_map(Value::Float),
        "\\PC{0,20}".prop_map(Value::Text),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn stored_records_round_trip(child in "\\PC{0,30}", service in "\\PC{0,20}", ts in any::<u64>(), props in prop::collection::btree_map("\\PC{0,12}", value(), 0..8)) {
        use fieldgate::queue::Record;
        let r = Record::Report(fieldgate_driver::Report { child, service, properties: props.into_iter().map(|(k, v)| (k.into(), v)).collect(), ts_ms: ts });
        let n = r.encode();
        let row = fieldgate::store::Row { seq: 1, kind: n.kind, child: n.child, body: n.body };
        prop_assert_eq!(Record::decode(&row), Ok(r));
    }

    #[test]
    fn damaged_bodies_are_errors_not_panics(kind in 0u8..4, body in prop::collection::vec(any::<u8>(), 0..200)) {
        let row = fieldgate::store::Row { seq: 1, kind, child: "c".into(), body };
        let _ = fieldgate::queue::Record::decode(&row);
    }
}
