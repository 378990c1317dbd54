//! Delivery bookkeeping of one MQTT session, with no I/O (the shape of rumqttc's `state.rs`):
//! which queued records each publish carries, which packet id the client gave it, how many
//! publishes are outstanding, and what an acknowledgement delivers.
//!
//! Two kinds of proof that the broker has a message:
//! - a QoS 1 publish is proven by its PUBACK;
//! - a QoS 0 publish (Sparkplug's `qos = 0`, as its specification asks) has no answer of its
//!   own. A broker reads one connection's packets in order, so the answer to a round trip sent
//!   after it — a SUBSCRIBE of an already subscribed topic and its SUBACK, a *barrier* —
//!   proves the broker has read every publish sent before that SUBSCRIBE. Every SUBSCRIBE the
//!   session sends is such a barrier, the ones after CONNACK included.
//!
//! The rules it keeps, model-tested in `tests/delivery_model.rs`:
//! - a record is reported delivered only by the PUBACK of a message that carried it, or by the
//!   SUBACK of a barrier numbered after the QoS 0 message that carried it;
//! - at most `window` data messages and `limit` messages in all are outstanding; data
//!   messages are requested only while fewer than `window_bytes` of data payload are
//!   outstanding (one is always allowed), so the payloads waiting for acknowledgement stay
//!   below `window_bytes` plus one message however large `window × max_packet` is; at most
//!   `MAX_BARRIERS` barriers besides the subscriptions made after CONNACK, so the MQTT
//!   client's request channel (built with room to spare) never fills and a full local queue
//!   never ends a session;
//! - a QoS 0 message never waits without a barrier on its way: whenever `needs_barrier` says
//!   so the session sends one, and every SUBACK gives it another chance;
//! - a lost connection forgets every outstanding message: its records are still in the store
//!   (taken, not deleted) and the queue reader hands them out again, oldest first.
//!
//! The client numbers publishes and subscribes in the order they were requested, so requests
//! wait in a FIFO until their `Outgoing::Publish(pkid)` / `Outgoing::Subscribe(pkid)` event
//! names them.

use std::collections::{HashMap, VecDeque};

/// Barriers outstanding at most (requested or numbered, SUBACK not yet in): one covering what
/// is on its way while the next batch is written.
pub const MAX_BARRIERS: usize = 2;

/// One publish as the session asked for it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Msg {
    /// Queued records this message completes: deleted when it is acknowledged. A record split
    /// across several messages is carried by the last one.
    pub records: Vec<u64>,
    /// Counts against the data window (queued records), not only the overall limit.
    pub data: bool,
    /// Published at QoS 0: proven by the next barrier, not by a PUBACK.
    pub qos0: bool,
    /// Payload bytes (counted against `window_bytes` for data messages).
    pub bytes: usize,
}

/// What the client reported that the bookkeeping cannot explain. Logged; never fatal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unexpected {
    #[error("the MQTT client numbered publish {0} that fieldgate did not request")]
    Unrequested(u16),
    #[error("the MQTT client numbered publish {0} twice before its PUBACK")]
    Reused(u16),
    #[error("the MQTT client numbered subscribe {0} that fieldgate did not request")]
    UnrequestedSubscribe(u16),
    #[error("the MQTT client numbered subscribe {0} twice before its SUBACK")]
    ReusedSubscribe(u16),
}

/// A request waiting for the client to number it.
#[derive(Debug)]
enum Pending {
    Publish(Msg),
    Barrier,
}

#[derive(Debug)]
pub struct Delivery {
    window: usize,
    limit: usize,
    window_bytes: usize,
    fifo: VecDeque<Pending>,
    /// QoS 1 publishes awaiting their PUBACK.
    by_pkid: HashMap<u16, Msg>,
    /// QoS 0 publishes written, awaiting a barrier numbered after them.
    written: Vec<Msg>,
    /// Barriers awaiting their SUBACK, with the QoS 0 publishes each proves.
    barriers: HashMap<u16, Vec<Msg>>,
    /// QoS 0 publishes requested since the last barrier was requested.
    unbarriered: usize,
    /// Barriers requested and not yet answered.
    barriers_out: usize,
    data_out: usize,
    all_out: usize,
    /// Payload bytes of the outstanding data messages.
    data_bytes_out: usize,
}

impl Delivery {
    /// `window`: data messages outstanding at most; `limit`: all messages (≥ window; what the
    /// MQTT client is built to hold).
    pub fn new(window: usize, limit: usize) -> Self {
        Delivery {
            window: window.max(1),
            limit: limit.max(window).max(1),
            window_bytes: usize::MAX,
            fifo: VecDeque::new(),
            by_pkid: HashMap::new(),
            written: Vec::new(),
            barriers: HashMap::new(),
            unbarriered: 0,
            barriers_out: 0,
            data_out: 0,
            all_out: 0,
            data_bytes_out: 0,
        }
    }

    /// Data messages are requested only while fewer than `bytes` of data payload are
    /// outstanding (one message is always allowed). Unbounded unless set.
    pub fn with_window_bytes(mut self, bytes: usize) -> Self {
        self.window_bytes = bytes.max(1);
        self
    }

    /// May a data message be requested now?
    pub fn data_room(&self) -> bool {
        self.data_out < self.window
            && self.all_out < self.limit
            && (self.data_out == 0 || self.data_bytes_out < self.window_bytes)
    }

    /// Payload bytes of the outstanding data messages.
    pub fn outstanding_bytes(&self) -> usize {
        self.data_bytes_out
    }

    /// May any message (a reply, a status, an announcement) be requested now? Data leaves the
    /// last `limit - window` places to these, so answers never wait behind bulk data.
    pub fn room(&self) -> bool {
        self.all_out < self.limit
    }

    /// Outstanding messages: (data, all). A QoS 0 message is outstanding until its barrier is
    /// answered; barriers themselves are not counted (`barriers`).
    pub fn outstanding(&self) -> (usize, usize) {
        (self.data_out, self.all_out)
    }

    /// Records carried by outstanding messages.
    pub fn unacked_records(&self) -> usize {
        let pending = self.fifo.iter().filter_map(|p| match p {
            Pending::Publish(m) => Some(m),
            Pending::Barrier => None,
        });
        pending
            .chain(self.by_pkid.values())
            .chain(self.written.iter())
            .chain(self.barriers.values().flatten())
            .map(|m| m.records.len())
            .sum()
    }

    /// The session handed the client this publish.
    pub fn requested(&mut self, msg: Msg) {
        if msg.data {
            self.data_out += 1;
            self.data_bytes_out = self.data_bytes_out.saturating_add(msg.bytes);
        }
        if msg.qos0 {
            self.unbarriered += 1;
        }
        self.all_out += 1;
        self.fifo.push_back(Pending::Publish(msg));
    }

    /// Barriers requested and not yet answered.
    pub fn barriers(&self) -> usize {
        self.barriers_out
    }

    /// Should the session send a barrier now? QoS 0 publishes were requested after the last
    /// one, and fewer than `MAX_BARRIERS` are on their way (when one comes back, this is
    /// asked again).
    pub fn needs_barrier(&self) -> bool {
        self.unbarriered > 0 && self.barriers_out < MAX_BARRIERS
    }

    /// The session handed the client a SUBSCRIBE: a barrier for what was requested before it.
    pub fn barrier_requested(&mut self) {
        self.unbarriered = 0;
        self.barriers_out += 1;
        self.fifo.push_back(Pending::Barrier);
    }

    /// The client sent the oldest requested publish as `pkid` (0 for QoS 0).
    pub fn numbered(&mut self, pkid: u16) -> Result<(), Unexpected> {
        let msg = match self.fifo.pop_front() {
            Some(Pending::Publish(m)) => m,
            Some(Pending::Barrier) => {
                // Keep the order: the barrier still waits for its own number.
                self.fifo.push_front(Pending::Barrier);
                return Err(Unexpected::Unrequested(pkid));
            }
            None => return Err(Unexpected::Unrequested(pkid)),
        };
        if msg.qos0 {
            self.written.push(msg);
            return Ok(());
        }
        match self.by_pkid.insert(pkid, msg) {
            // Keep the newer; the older one's records stay taken until the next session.
            Some(_) => Err(Unexpected::Reused(pkid)),
            None => Ok(()),
        }
    }

    /// The client sent the oldest requested SUBSCRIBE as `pkid`: it proves every QoS 0
    /// publish written before it once its SUBACK comes.
    pub fn subscribe_numbered(&mut self, pkid: u16) -> Result<(), Unexpected> {
        match self.fifo.front() {
            Some(Pending::Barrier) => {
                self.fifo.pop_front();
            }
            _ => return Err(Unexpected::UnrequestedSubscribe(pkid)),
        }
        let proves = std::mem::take(&mut self.written);
        match self.barriers.insert(pkid, proves) {
            Some(older) => {
                // Keep the newer; the older one's records stay taken until the next session.
                self.release(&older);
                self.barriers_out = self.barriers_out.saturating_sub(1);
                Err(Unexpected::ReusedSubscribe(pkid))
            }
            None => Ok(()),
        }
    }

    /// The broker acknowledged publish `pkid`: the records it completes, if it was ours.
    pub fn acked(&mut self, pkid: u16) -> Option<Vec<u64>> {
        let msg = self.by_pkid.remove(&pkid)?;
        self.release(std::slice::from_ref(&msg));
        Some(msg.records)
    }

    /// The broker answered subscribe `pkid`: the records of every QoS 0 publish it proves,
    /// if it was ours.
    pub fn subscribe_acked(&mut self, pkid: u16) -> Option<Vec<u64>> {
        let proves = self.barriers.remove(&pkid)?;
        self.barriers_out = self.barriers_out.saturating_sub(1);
        self.release(&proves);
        Some(proves.into_iter().flat_map(|m| m.records).collect())
    }

    /// Give back the places `msgs` held.
    fn release(&mut self, msgs: &[Msg]) {
        for m in msgs {
            if m.data {
                self.data_out = self.data_out.saturating_sub(1);
                self.data_bytes_out = self.data_bytes_out.saturating_sub(m.bytes);
            }
            self.all_out = self.all_out.saturating_sub(1);
        }
    }

    /// The connection is gone: forget every outstanding message and return how many records
    /// they carried (they will be sent again).
    pub fn reset(&mut self) -> usize {
        let n = self.unacked_records();
        self.fifo.clear();
        self.by_pkid.clear();
        self.written.clear();
        self.barriers.clear();
        self.unbarriered = 0;
        self.barriers_out = 0;
        self.data_out = 0;
        self.all_out = 0;
        self.data_bytes_out = 0;
        n
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_deliver_what_the_numbered_message_carried() {
        let mut d = Delivery::new(2, 4);
        d.requested(Msg {
            records: vec![1, 2],
            data: true,
            qos0: false,
            bytes: 0,
        });
        d.requested(Msg::default());
        assert_eq!(d.outstanding(), (1, 2));
        assert_eq!(d.acked(7), None, "not numbered yet");
        assert_eq!(d.numbered(7), Ok(()));
        assert_eq!(d.numbered(8), Ok(()));
        assert_eq!(d.numbered(9), Err(Unexpected::Unrequested(9)));
        assert_eq!(d.acked(8), Some(vec![]));
        assert_eq!(d.acked(7), Some(vec![1, 2]));
        assert_eq!(d.acked(7), None, "a second PUBACK delivers nothing");
        assert_eq!(d.outstanding(), (0, 0));
    }

    #[test]
    fn data_waits_while_its_bytes_are_outstanding_but_one_message_always_goes() {
        let data = |bytes| Msg {
            records: vec![1],
            data: true,
            qos0: false,
            bytes,
        };
        let mut d = Delivery::new(8, 16).with_window_bytes(1000);
        // A message larger than the whole budget goes alone.
        assert!(d.data_room());
        d.requested(data(5000));
        assert!(!d.data_room(), "5,000 bytes outstanding");
        assert!(d.room(), "answers are not held by data bytes");
        assert_eq!(d.numbered(1), Ok(()));
        assert!(d.acked(1).is_some());
        assert_eq!(d.outstanding_bytes(), 0);
        // Small ones until the budget is reached: 400 + 400 + 400 (the one that crosses it).
        for _ in 0..3 {
            assert!(d.data_room());
            d.requested(data(400));
        }
        assert!(!d.data_room());
        assert_eq!(d.outstanding_bytes(), 1200);
        assert_eq!(d.numbered(2), Ok(()));
        assert!(d.acked(2).is_some());
        assert!(d.data_room(), "800 outstanding: room again");
        d.reset();
        assert_eq!(d.outstanding_bytes(), 0);
    }

    #[test]
    fn data_leaves_room_for_answers() {
        let mut d = Delivery::new(2, 3);
        for _ in 0..2 {
            assert!(d.data_room());
            d.requested(Msg {
                records: vec![1],
                data: true,
                qos0: false,
                bytes: 0,
            });
        }
        assert!(!d.data_room());
        assert!(d.room(), "a reply still fits");
        d.requested(Msg::default());
        assert!(!d.room());
        assert_eq!(d.unacked_records(), 2);
        assert_eq!(d.reset(), 2);
        assert!(d.data_room());
    }

    fn qos0(records: Vec<u64>) -> Msg {
        Msg {
            records,
            data: true,
            qos0: true,
            bytes: 0,
        }
    }

    #[test]
    fn qos0_is_delivered_by_the_barrier_numbered_after_it() {
        let mut d = Delivery::new(4, 8);
        d.requested(qos0(vec![1]));
        d.requested(qos0(vec![2, 3]));
        assert!(d.needs_barrier());
        d.barrier_requested();
        assert!(!d.needs_barrier(), "one barrier covers both");
        d.requested(qos0(vec![4]));
        assert!(d.needs_barrier(), "a second barrier for what came after");
        d.barrier_requested();
        d.requested(qos0(vec![5]));
        assert!(!d.needs_barrier(), "at most two barriers on their way");
        assert_eq!(d.outstanding(), (4, 4));
        assert_eq!(d.numbered(0), Ok(()));
        assert_eq!(
            d.subscribe_numbered(3),
            Err(Unexpected::UnrequestedSubscribe(3)),
            "message 2 is still before the barrier"
        );
        assert_eq!(d.numbered(0), Ok(()));
        assert_eq!(d.subscribe_numbered(3), Ok(()));
        assert_eq!(d.numbered(0), Ok(()));
        assert_eq!(d.subscribe_numbered(4), Ok(()));
        assert_eq!(d.numbered(0), Ok(()));
        assert_eq!(d.acked(3), None, "a SUBACK is not a PUBACK");
        assert_eq!(d.subscribe_acked(4), Some(vec![4]));
        assert_eq!(d.subscribe_acked(3), Some(vec![1, 2, 3]));
        assert_eq!(
            d.subscribe_acked(3),
            None,
            "a repeated SUBACK delivers nothing"
        );
        assert_eq!(
            d.outstanding(),
            (1, 1),
            "message 5 waits for the next barrier"
        );
        assert!(d.needs_barrier());
        assert_eq!(d.unacked_records(), 1);
    }

    #[test]
    fn a_subscribe_before_any_publish_proves_nothing_and_a_reset_forgets_all() {
        let mut d = Delivery::new(4, 8);
        d.barrier_requested();
        d.requested(qos0(vec![7]));
        d.requested(Msg {
            records: vec![8],
            data: true,
            qos0: false,
            bytes: 0,
        });
        assert_eq!(d.numbered(0), Err(Unexpected::Unrequested(0)), "order kept");
        assert_eq!(d.subscribe_numbered(1), Ok(()));
        assert_eq!(d.numbered(0), Ok(()));
        assert_eq!(d.numbered(2), Ok(()));
        assert_eq!(d.subscribe_acked(1), Some(vec![]));
        assert_eq!(d.acked(2), Some(vec![8]));
        assert_eq!(d.outstanding(), (1, 1));
        assert_eq!(d.reset(), 1);
        assert_eq!(
            (d.outstanding(), d.barriers(), d.needs_barrier()),
            ((0, 0), 0, false)
        );
    }
}
