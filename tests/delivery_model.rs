//! Model test of the delivery state machine (`uplink::delivery`): random sequences of fill,
//! publish numbering, PUBACKs in and out of order, session messages, batched deletes,
//! disconnects and reconnects drive `Delivery` beside a queue kept the way the queue reader
//! keeps it (cursor, taken marks, acknowledged-then-deleted). After every step:
//! - a record is deleted only after the PUBACK of a message that carried it;
//! - the data window and the overall limit are never exceeded;
//! - nothing is sent twice in one session;
//! - after a reconnect every unacknowledged record of a child is sent again before anything
//!   newer of the same child.
//!
//! And at the end, with the link left up, every record is delivered.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use fieldgate::uplink::delivery::{Delivery, Msg};
use proptest::prelude::*;

const WINDOW: usize = 4;
const LIMIT: usize = 6;
const CHILDREN: u64 = 3;

#[derive(Debug, Clone)]
enum Op {
    /// Read up to n records and publish them in messages of up to `per` records.
    Fill(usize, usize),
    /// A session message (an answer, a status).
    Control,
    /// The client numbers the oldest requested publish.
    Number,
    /// The broker acknowledges the k-th outstanding numbered publish (modulo).
    Ack(usize),
    /// Acknowledged records are deleted.
    Flush,
    /// New readings are queued.
    Append(usize),
    /// The connection drops; the next session starts.
    Disconnect,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1usize..12, 1usize..4).prop_map(|(n, p)| Op::Fill(n, p)),
        1 => Just(Op::Control),
        5 => Just(Op::Number),
        5 => (0usize..8).prop_map(Op::Ack),
        1 => Just(Op::Flush),
        1 => (1usize..6).prop_map(Op::Append),
        1 => Just(Op::Disconnect),
    ]
}

struct World {
    d: Delivery,
    /// The queue: seq → child.
    queue: BTreeMap<u64, u64>,
    next: u64,
    /// Taken (in flight or acknowledged, not yet deleted).
    marked: BTreeSet<u64>,
    acked: Vec<u64>,
    cursor: u64,
    /// What the model knows each requested publish carries, in request order.
    requested: VecDeque<(Vec<u64>, bool)>,
    /// Numbered publishes: pkid → (records, data).
    numbered: BTreeMap<u16, (Vec<u64>, bool)>,
    next_pkid: u16,
    /// Records sent in this session.
    sent: BTreeSet<u64>,
    /// Every record ever acknowledged.
    delivered: BTreeSet<u64>,
}

impl World {
    fn new(n: u64) -> Self {
        let mut w = World {
            d: Delivery::new(WINDOW, LIMIT),
            queue: BTreeMap::new(),
            next: 0,
            marked: BTreeSet::new(),
            acked: Vec::new(),
            cursor: 0,
            requested: VecDeque::new(),
            numbered: BTreeMap::new(),
            next_pkid: 0,
            sent: BTreeSet::new(),
            delivered: BTreeSet::new(),
        };
        w.append(n as usize);
        w
    }

    fn append(&mut self, n: usize) {
        for _ in 0..n {
            self.next += 1;
            self.queue.insert(self.next, self.next % CHILDREN);
        }
    }

    fn fill(&mut self, n: usize, per: usize) -> Result<(), TestCaseError> {
        let rows: Vec<u64> = self
            .queue
            .range(self.cursor + 1..)
            .map(|(s, _)| *s)
            .filter(|s| !self.marked.contains(s))
            .take(n)
            .collect();
        let mut i = 0;
        while i < rows.len() {
            if !self.d.data_room() {
                // Unsent: released, cursor back before the first.
                self.cursor = self.cursor.min(rows[i] - 1);
                return Ok(());
            }
            let batch: Vec<u64> = rows[i..rows.len().min(i + per)].to_vec();
            for s in &batch {
                let child = self.queue[s];
                // Everything older of this child is acknowledged or already sent this session.
                let older_unsent = self.queue.range(..*s).find(|(o, c)| {
                    **c == child && !self.sent.contains(*o) && !self.acked.contains(*o)
                });
                prop_assert!(
                    older_unsent.is_none(),
                    "record {} of child {} sent before older {:?}",
                    s,
                    child,
                    older_unsent
                );
                prop_assert!(self.sent.insert(*s), "record {} sent twice in a session", s);
                self.marked.insert(*s);
            }
            self.d.requested(Msg {
                records: batch.clone(),
                data: true,
            });
            self.requested.push_back((batch.clone(), true));
            self.cursor = self.cursor.max(*batch.last().unwrap_or(&0));
            i += batch.len();
        }
        Ok(())
    }

    fn check(&self) -> Result<(), TestCaseError> {
        let (data, all) = self.d.outstanding();
        let model_data = self
            .requested
            .iter()
            .chain(self.numbered.values())
            .filter(|(_, d)| *d)
            .count();
        let model_all = self.requested.len() + self.numbered.len();
        prop_assert_eq!((data, all), (model_data, model_all));
        prop_assert!(data <= WINDOW && all <= LIMIT, "window {}/{}", data, all);
        Ok(())
    }
}

fn run(n: u64, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut w = World::new(n);
    for op in ops {
        match op {
            Op::Fill(n, per) => w.fill(n, per)?,
            Op::Control => {
                if w.d.room() {
                    w.d.requested(Msg::default());
                    w.requested.push_back((Vec::new(), false));
                }
            }
            Op::Number => {
                if let Some(m) = w.requested.pop_front() {
                    // Like rumqttc: the next free packet id.
                    loop {
                        w.next_pkid = w.next_pkid.wrapping_add(1).max(1);
                        if !w.numbered.contains_key(&w.next_pkid) {
                            break;
                        }
                    }
                    prop_assert_eq!(w.d.numbered(w.next_pkid), Ok(()));
                    w.numbered.insert(w.next_pkid, m);
                }
            }
            Op::Ack(k) => {
                if w.numbered.is_empty() {
                    continue;
                }
                let pkid = *w.numbered.keys().nth(k % w.numbered.len()).unwrap_or(&0);
                let (records, _) = w.numbered.remove(&pkid).unwrap_or_default();
                let got = w.d.acked(pkid);
                prop_assert_eq!(got.as_ref(), Some(&records), "PUBACK {}", pkid);
                prop_assert_eq!(w.d.acked(pkid), None, "a repeated PUBACK delivers nothing");
                w.acked.extend(records.iter().copied());
                w.delivered.extend(records);
            }
            Op::Flush => {
                for s in std::mem::take(&mut w.acked) {
                    prop_assert!(w.delivered.contains(&s), "deleting {} never acked", s);
                    w.queue.remove(&s);
                    w.marked.remove(&s);
                }
            }
            Op::Append(n) => w.append(n),
            Op::Disconnect => {
                let unacked = w.d.reset();
                let model_unacked: usize = w
                    .requested
                    .iter()
                    .chain(w.numbered.values())
                    .map(|(r, _)| r.len())
                    .sum();
                prop_assert_eq!(unacked, model_unacked);
                // The reader's reset: delete what was acked, release the rest, start over.
                for s in std::mem::take(&mut w.acked) {
                    w.queue.remove(&s);
                }
                w.marked.clear();
                w.cursor = 0;
                w.requested.clear();
                w.numbered.clear();
                w.sent.clear();
            }
        }
        w.check()?;
    }
    // Leave the link up: everything left is delivered.
    for _ in 0..10_000 {
        if w.queue.is_empty() {
            break;
        }
        w.fill(8, 3)?;
        while let Some(m) = w.requested.pop_front() {
            w.next_pkid = w.next_pkid.wrapping_add(1).max(1);
            prop_assert_eq!(w.d.numbered(w.next_pkid), Ok(()));
            w.numbered.insert(w.next_pkid, m);
        }
        let pkids: Vec<u16> = w.numbered.keys().copied().collect();
        for p in pkids {
            let (records, _) = w.numbered.remove(&p).unwrap_or_default();
            prop_assert_eq!(w.d.acked(p), Some(records.clone()));
            w.delivered.extend(records.iter().copied());
            for s in records {
                w.queue.remove(&s);
                w.marked.remove(&s);
            }
        }
        for s in std::mem::take(&mut w.acked) {
            w.queue.remove(&s);
            w.marked.remove(&s);
        }
        w.check()?;
    }
    prop_assert!(w.queue.is_empty(), "left undelivered: {:?}", w.queue);
    let all: BTreeSet<u64> = (1..=w.next).collect();
    prop_assert_eq!(w.delivered, all);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn delivery_keeps_its_promises(n in 0u64..40, ops in prop::collection::vec(op(), 1..80)) {
        run(n, ops)?;
    }
}
