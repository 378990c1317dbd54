//! Model test of the delivery state machine (`uplink::delivery`): random sequences of fill
//! at QoS 1 and QoS 0, barriers (SUBSCRIBEs), publish and subscribe numbering, PUBACKs and
//! SUBACKs in and out of order, session messages, batched deletes, disconnects and
//! reconnects drive `Delivery` beside a queue kept the way the queue reader keeps it
//! (cursor, taken marks, acknowledged-then-deleted). After every step:
//! - a record is deleted only after the PUBACK of a message that carried it, or the SUBACK of
//!   a barrier the client numbered after the QoS 0 message that carried it;
//! - a QoS 0 message requested after the last barrier is never left without one: either
//!   `needs_barrier` says so or `MAX_BARRIERS` are on their way;
//! - the data window and the overall limit are never exceeded, nor the window's bytes by more
//!   than the last message requested;
//! - nothing is sent twice in one session;
//! - after a reconnect every unacknowledged record of a child is sent again before anything
//!   newer of the same child.
//!
//! And at the end, with the link left up, every record is delivered.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use fieldgate::uplink::delivery::{Delivery, Msg, MAX_BARRIERS};
use proptest::prelude::*;

const WINDOW: usize = 4;
const LIMIT: usize = 6;
/// Payload bytes outstanding before data waits; a record is 1–40 bytes in a message.
const WINDOW_BYTES: usize = 60;
/// The largest message `Fill` makes (3 records of 40 bytes).
const MAX_MESSAGE: usize = 120;
const CHILDREN: u64 = 3;

#[derive(Debug, Clone)]
enum Op {
    /// Read up to n records and publish them in messages of up to `per` records of `size`
    /// bytes each, at QoS 0 when the flag is set.
    Fill(usize, usize, bool, usize),
    /// The session sends a barrier if `needs_barrier` says so.
    Barrier,
    /// A session message (an answer, a status).
    Control,
    /// The client numbers the oldest requested publish or subscribe.
    Number,
    /// The broker acknowledges the k-th outstanding numbered publish or subscribe (modulo).
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
        4 => (1usize..12, 1usize..4, any::<bool>(), 1usize..=40).prop_map(|(n, p, q, b)| Op::Fill(n, p, q, b)),
        2 => Just(Op::Barrier),
        1 => Just(Op::Control),
        5 => Just(Op::Number),
        5 => (0usize..8).prop_map(Op::Ack),
        1 => Just(Op::Flush),
        1 => (1usize..6).prop_map(Op::Append),
        1 => Just(Op::Disconnect),
    ]
}

/// One requested publish as the model knows it.
#[derive(Debug, Clone, Default)]
struct Req {
    records: Vec<u64>,
    data: bool,
    qos0: bool,
    bytes: usize,
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
    /// What the model knows each requested publish carries, in request order; `None` is a
    /// barrier.
    requested: VecDeque<Option<Req>>,
    /// Numbered QoS 1 publishes: pkid → (records, data).
    numbered: BTreeMap<u16, Req>,
    /// QoS 0 publishes written, not yet behind a numbered barrier.
    written: Vec<Req>,
    /// Numbered barriers: pkid → the QoS 0 publishes written before them.
    barriers: BTreeMap<u16, Vec<Req>>,
    /// QoS 0 publishes requested after the last barrier.
    unbarriered: usize,
    next_pkid: u16,
    /// Records sent in this session.
    sent: BTreeSet<u64>,
    /// Every record ever acknowledged.
    delivered: BTreeSet<u64>,
}

impl World {
    fn new(n: u64) -> Self {
        let mut w = World {
            d: Delivery::new(WINDOW, LIMIT).with_window_bytes(WINDOW_BYTES),
            queue: BTreeMap::new(),
            next: 0,
            marked: BTreeSet::new(),
            acked: Vec::new(),
            cursor: 0,
            requested: VecDeque::new(),
            numbered: BTreeMap::new(),
            written: Vec::new(),
            barriers: BTreeMap::new(),
            unbarriered: 0,
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

    fn fill(&mut self, n: usize, per: usize, qos0: bool, size: usize) -> Result<(), TestCaseError> {
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
            let bytes = batch.len() * size;
            self.d.requested(Msg {
                records: batch.clone(),
                data: true,
                qos0,
                bytes,
            });
            self.request(Req {
                records: batch.clone(),
                data: true,
                qos0,
                bytes,
            });
            self.cursor = self.cursor.max(*batch.last().unwrap_or(&0));
            i += batch.len();
        }
        Ok(())
    }

    fn request(&mut self, r: Req) {
        if r.qos0 {
            self.unbarriered += 1;
        }
        self.requested.push_back(Some(r));
    }

    fn barrier(&mut self) {
        if self.d.needs_barrier() {
            self.d.barrier_requested();
            self.requested.push_back(None);
            self.unbarriered = 0;
        }
    }

    /// A packet id free among unanswered publishes and subscribes (rumqttc numbers both from
    /// one counter).
    fn pkid(&mut self) -> u16 {
        loop {
            self.next_pkid = self.next_pkid.wrapping_add(1).max(1);
            if !self.numbered.contains_key(&self.next_pkid)
                && !self.barriers.contains_key(&self.next_pkid)
            {
                return self.next_pkid;
            }
        }
    }

    /// The client numbers the oldest request.
    fn number(&mut self) -> Result<(), TestCaseError> {
        match self.requested.pop_front() {
            Some(Some(r)) if r.qos0 => {
                prop_assert_eq!(self.d.numbered(0), Ok(()));
                self.written.push(r);
            }
            Some(Some(r)) => {
                let p = self.pkid();
                prop_assert_eq!(self.d.numbered(p), Ok(()));
                self.numbered.insert(p, r);
            }
            Some(None) => {
                let p = self.pkid();
                prop_assert_eq!(self.d.subscribe_numbered(p), Ok(()));
                let proves = std::mem::take(&mut self.written);
                self.barriers.insert(p, proves);
            }
            None => {}
        }
        Ok(())
    }

    /// The broker answers `pkid` (a publish or a subscribe).
    fn answer(&mut self, pkid: u16) -> Result<(), TestCaseError> {
        let records: Vec<u64> = if let Some(r) = self.numbered.remove(&pkid) {
            prop_assert_eq!(
                self.d.subscribe_acked(pkid),
                None,
                "a PUBACK is not a SUBACK"
            );
            let got = self.d.acked(pkid);
            prop_assert_eq!(got.as_ref(), Some(&r.records), "PUBACK {}", pkid);
            prop_assert_eq!(
                self.d.acked(pkid),
                None,
                "a repeated PUBACK delivers nothing"
            );
            r.records
        } else if let Some(proves) = self.barriers.remove(&pkid) {
            prop_assert_eq!(self.d.acked(pkid), None, "a SUBACK is not a PUBACK");
            let want: Vec<u64> = proves.into_iter().flat_map(|r| r.records).collect();
            let got = self.d.subscribe_acked(pkid);
            prop_assert_eq!(got.as_ref(), Some(&want), "SUBACK {}", pkid);
            prop_assert_eq!(self.d.subscribe_acked(pkid), None);
            want
        } else {
            return Ok(());
        };
        self.acked.extend(records.iter().copied());
        self.delivered.extend(records);
        Ok(())
    }

    fn outstanding(&self) -> impl Iterator<Item = &Req> {
        self.requested
            .iter()
            .flatten()
            .chain(self.numbered.values())
            .chain(self.written.iter())
            .chain(self.barriers.values().flatten())
    }

    fn check(&self) -> Result<(), TestCaseError> {
        let (data, all) = self.d.outstanding();
        let model_data = self.outstanding().filter(|r| r.data).count();
        let model_all = self.outstanding().count();
        prop_assert_eq!((data, all), (model_data, model_all));
        prop_assert!(data <= WINDOW && all <= LIMIT, "window {}/{}", data, all);
        let model_bytes: usize = self.outstanding().filter(|r| r.data).map(|r| r.bytes).sum();
        prop_assert_eq!(self.d.outstanding_bytes(), model_bytes);
        prop_assert!(
            model_bytes < WINDOW_BYTES + MAX_MESSAGE,
            "{} bytes outstanding",
            model_bytes
        );
        let barriers = self.requested.iter().filter(|r| r.is_none()).count() + self.barriers.len();
        prop_assert_eq!(self.d.barriers(), barriers);
        prop_assert!(barriers <= MAX_BARRIERS);
        if self.unbarriered > 0 {
            prop_assert!(
                self.d.needs_barrier() || barriers == MAX_BARRIERS,
                "{} QoS 0 messages without a barrier on its way",
                self.unbarriered
            );
        }
        Ok(())
    }
}

fn run(n: u64, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut w = World::new(n);
    for op in ops {
        match op {
            Op::Fill(n, per, qos0, size) => w.fill(n, per, qos0, size)?,
            Op::Barrier => w.barrier(),
            Op::Control => {
                if w.d.room() {
                    w.d.requested(Msg::default());
                    w.request(Req::default());
                }
            }
            Op::Number => w.number()?,
            Op::Ack(k) => {
                let pkids: Vec<u16> = w
                    .numbered
                    .keys()
                    .chain(w.barriers.keys())
                    .copied()
                    .collect();
                if pkids.is_empty() {
                    continue;
                }
                w.answer(pkids[k % pkids.len()])?;
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
                let model_unacked: usize = w.outstanding().map(|r| r.records.len()).sum();
                prop_assert_eq!(unacked, model_unacked);
                // The reader's reset: delete what was acked, release the rest, start over.
                for s in std::mem::take(&mut w.acked) {
                    w.queue.remove(&s);
                }
                w.marked.clear();
                w.cursor = 0;
                w.requested.clear();
                w.numbered.clear();
                w.written.clear();
                w.barriers.clear();
                w.unbarriered = 0;
                w.sent.clear();
            }
        }
        w.check()?;
    }
    // Leave the link up, the session sending a barrier whenever it is told to: everything
    // left is delivered.
    for round in 0..10_000u64 {
        if w.queue.is_empty() && w.outstanding().count() == 0 {
            break;
        }
        w.fill(8, 3, round % 2 == 0, 40)?;
        w.barrier();
        while !w.requested.is_empty() {
            w.number()?;
        }
        let pkids: Vec<u16> = w
            .numbered
            .keys()
            .chain(w.barriers.keys())
            .copied()
            .collect();
        for p in pkids {
            w.answer(p)?;
            w.barrier();
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
