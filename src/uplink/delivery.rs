//! Delivery bookkeeping of one MQTT session, with no I/O (the shape of rumqttc's `state.rs`):
//! which queued records each publish carries, which packet id the client gave it, how many
//! publishes are outstanding, and what a PUBACK delivers.
//!
//! The rules it keeps, model-tested in `tests/delivery_model.rs`:
//! - a record is reported delivered only by the PUBACK of a message that carried it;
//! - at most `window` data messages and `limit` messages in all are outstanding, so the MQTT
//!   client's request channel never fills and a full local queue never ends a session;
//! - a lost connection forgets every outstanding message: its records are still in the store
//!   (taken, not deleted) and the queue reader hands them out again, oldest first.
//!
//! The client numbers publishes in the order they were requested, so requests wait in a FIFO
//! until their `Outgoing::Publish(pkid)` event names them.

use std::collections::{HashMap, VecDeque};

/// One publish as the session asked for it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Msg {
    /// Queued records this message completes: deleted when it is acknowledged. A record split
    /// across several messages is carried by the last one.
    pub records: Vec<u64>,
    /// Counts against the data window (queued records), not only the overall limit.
    pub data: bool,
}

/// What the client reported that the bookkeeping cannot explain. Logged; never fatal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unexpected {
    #[error("the MQTT client numbered publish {0} that fieldgate did not request")]
    Unrequested(u16),
    #[error("the MQTT client numbered publish {0} twice before its PUBACK")]
    Reused(u16),
}

#[derive(Debug)]
pub struct Delivery {
    window: usize,
    limit: usize,
    fifo: VecDeque<Msg>,
    by_pkid: HashMap<u16, Msg>,
    data_out: usize,
    all_out: usize,
}

impl Delivery {
    /// `window`: data messages outstanding at most; `limit`: all messages (≥ window; what the
    /// MQTT client is built to hold).
    pub fn new(window: usize, limit: usize) -> Self {
        Delivery {
            window: window.max(1),
            limit: limit.max(window).max(1),
            fifo: VecDeque::new(),
            by_pkid: HashMap::new(),
            data_out: 0,
            all_out: 0,
        }
    }

    /// May a data message be requested now?
    pub fn data_room(&self) -> bool {
        self.data_out < self.window && self.all_out < self.limit
    }

    /// May any message (a reply, a status, an announcement) be requested now? Data leaves the
    /// last `limit - window` places to these, so answers never wait behind bulk data.
    pub fn room(&self) -> bool {
        self.all_out < self.limit
    }

    /// Outstanding messages: (data, all).
    pub fn outstanding(&self) -> (usize, usize) {
        (self.data_out, self.all_out)
    }

    /// Records carried by outstanding messages.
    pub fn unacked_records(&self) -> usize {
        self.fifo
            .iter()
            .chain(self.by_pkid.values())
            .map(|m| m.records.len())
            .sum()
    }

    /// The session handed the client this publish.
    pub fn requested(&mut self, msg: Msg) {
        if msg.data {
            self.data_out += 1;
        }
        self.all_out += 1;
        self.fifo.push_back(msg);
    }

    /// The client sent the oldest requested publish as `pkid`.
    pub fn numbered(&mut self, pkid: u16) -> Result<(), Unexpected> {
        let Some(msg) = self.fifo.pop_front() else {
            return Err(Unexpected::Unrequested(pkid));
        };
        match self.by_pkid.insert(pkid, msg) {
            // Keep the newer; the older one's records stay taken until the next session.
            Some(_) => Err(Unexpected::Reused(pkid)),
            None => Ok(()),
        }
    }

    /// The broker acknowledged `pkid`: the records it completes, if it was ours.
    pub fn acked(&mut self, pkid: u16) -> Option<Vec<u64>> {
        let msg = self.by_pkid.remove(&pkid)?;
        if msg.data {
            self.data_out = self.data_out.saturating_sub(1);
        }
        self.all_out = self.all_out.saturating_sub(1);
        Some(msg.records)
    }

    /// The connection is gone: forget every outstanding message and return how many records
    /// they carried (they will be sent again).
    pub fn reset(&mut self) -> usize {
        let n = self.unacked_records();
        self.fifo.clear();
        self.by_pkid.clear();
        self.data_out = 0;
        self.all_out = 0;
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
    fn data_leaves_room_for_answers() {
        let mut d = Delivery::new(2, 3);
        for _ in 0..2 {
            assert!(d.data_room());
            d.requested(Msg {
                records: vec![1],
                data: true,
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
}
