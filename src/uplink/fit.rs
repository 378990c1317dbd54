//! Fitting queued records onto the wire: every message the dialect packs is checked against
//! MQTT's rules (a topic without wildcards or NUL, at most 65,535 bytes) and `max_packet`
//! before the client sees it. A batch too large is packed again with fewer records; a single
//! record too large is split by property across messages; what still cannot be sent (one value
//! larger than a packet, a name that makes an invalid topic) is reported as unsendable, so one
//! bad record never blocks the queue behind it. Pure apart from the dialect's own counters.

use fieldgate_driver::Report;

use super::dialect::{Dialect, Out};
use crate::queue::reader::Sendable;
use crate::queue::Record;

/// Bytes the dialect leaves under `max_packet` for the topic and MQTT headers.
pub const HEADROOM: usize = 512;

/// What one call made of the leading records.
#[derive(Debug, Default)]
pub struct Fitted {
    /// Messages to publish, in order; the last one completes `carried`.
    pub messages: Vec<Out>,
    /// Records these messages deliver (deleted on the last message's PUBACK).
    pub carried: Vec<u64>,
    /// Records consumed from the front of the input (carried, unsendable or needing nothing).
    pub consumed: usize,
    /// Records this platform has no message for (e.g. statuses on AllThingsTalk): done.
    pub done: Vec<u64>,
    /// Whole records that can never be sent.
    pub unsendable: Vec<u64>,
    /// Single properties dropped from records that were otherwise sent.
    pub dropped_parts: usize,
    /// Why the last unsendable record or part was refused.
    pub reason: Option<String>,
}

/// Why one message cannot go on the wire, if it cannot.
pub fn refuse(o: &Out, max_packet: usize) -> Option<String> {
    if o.topic.is_empty() || o.topic.contains(['+', '#', '\0']) {
        return Some(format!(
            "topic {:?} is not a valid MQTT topic (empty, or contains +, # or NUL)",
            truncate(&o.topic)
        ));
    }
    if o.topic.len() > usize::from(u16::MAX) {
        return Some(format!(
            "topic of {} bytes (MQTT allows 65535)",
            o.topic.len()
        ));
    }
    let size = packet_size(o);
    (size > max_packet).then(|| format!("message of {size} bytes exceeds max_packet {max_packet}"))
}

/// The size of a QoS 1 PUBLISH packet carrying `o`.
pub fn packet_size(o: &Out) -> usize {
    let remaining = 2 + o.topic.len() + 2 + o.payload.len();
    let varint = match remaining {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    };
    1 + varint + remaining
}

fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

/// Pack the leading records (of one kind) into messages that fit.
pub fn fit(d: &mut dyn Dialect, recs: &[Sendable], max_packet: usize, now_ms: u64) -> Fitted {
    let budget = max_packet.saturating_sub(HEADROOM);
    let mut take = recs.len();
    while take > 0 {
        let (outs, n) = d.pack(&recs[..take], budget, now_ms);
        let n = n.clamp(1, take);
        let seqs: Vec<u64> = recs[..n].iter().map(|r| r.0).collect();
        if outs.is_empty() {
            // Nothing this platform carries (e.g. statuses on AllThingsTalk): done.
            return Fitted {
                consumed: n,
                done: seqs,
                ..Fitted::default()
            };
        }
        if outs.iter().all(|o| refuse(o, max_packet).is_none()) {
            return Fitted {
                messages: outs,
                carried: seqs,
                consumed: n,
                ..Fitted::default()
            };
        }
        if n == 1 {
            break;
        }
        take = n / 2;
    }
    // The first record alone does not fit: split it by property.
    let mut f = Fitted {
        consumed: 1,
        ..Fitted::default()
    };
    let Some(first) = recs.first() else {
        return Fitted::default();
    };
    split(d, first, max_packet, budget, now_ms, &mut f);
    if f.messages.is_empty() {
        f.unsendable.push(first.0);
        f.dropped_parts = 0;
    } else {
        f.carried.push(first.0);
    }
    f
}

/// Send `rec` as messages of as many properties as fit; drop single properties that never do.
fn split(
    d: &mut dyn Dialect,
    rec: &Sendable,
    max_packet: usize,
    budget: usize,
    now_ms: u64,
    f: &mut Fitted,
) {
    let (outs, _) = d.pack(std::slice::from_ref(rec), budget, now_ms);
    let refused = outs.iter().find_map(|o| refuse(o, max_packet));
    let Some(why) = refused else {
        f.messages.extend(outs);
        return;
    };
    match &rec.2 {
        Record::Report(r) if r.properties.len() > 1 => {
            let mid = r.properties.len() / 2;
            let (a, b): (Vec<_>, Vec<_>) =
                r.properties.iter().enumerate().partition(|(i, _)| *i < mid);
            for half in [a, b] {
                let part = Report {
                    child: r.child.clone(),
                    service: r.service.clone(),
                    properties: half
                        .into_iter()
                        .map(|(_, (k, v))| (k.clone(), v.clone()))
                        .collect(),
                    ts_ms: r.ts_ms,
                };
                split(
                    d,
                    &(rec.0, rec.1.clone(), Record::Report(part)),
                    max_packet,
                    budget,
                    now_ms,
                    f,
                );
            }
        }
        _ => {
            f.dropped_parts += 1;
            f.reason = Some(why);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::uplink::dialect::allthingstalk::AllThingsTalk;
    use crate::uplink::dialect::iotda::IotDa;
    use fieldgate_driver::{Name, Value};

    fn report(seq: u64, props: &[(&str, Value)]) -> Sendable {
        (
            seq,
            format!("dev{seq}"),
            Record::Report(Report {
                child: "c".into(),
                service: "s".into(),
                properties: props
                    .iter()
                    .map(|(k, v)| (Name::from(*k), v.clone()))
                    .collect(),
                ts_ms: 1,
            }),
        )
    }

    #[test]
    fn a_large_record_is_split_by_property() {
        let mut d = IotDa::new("gw", false);
        let props: Vec<(String, Value)> = (0..120)
            .map(|i| {
                (
                    format!("point_with_a_long_name_{i:03}"),
                    Value::Float(1234.5678),
                )
            })
            .collect();
        let refs: Vec<(&str, Value)> = props.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        let recs = vec![report(1, &refs), report(2, &[("x", Value::UInt(1))])];
        let f = fit(&mut d, &recs, 4096, 0);
        assert_eq!(f.consumed, 1);
        assert_eq!(f.carried, vec![1]);
        assert!(
            f.messages.len() > 1,
            "split into {} messages",
            f.messages.len()
        );
        assert!(f.messages.iter().all(|m| packet_size(m) <= 4096));
        let sent: usize = f
            .messages
            .iter()
            .map(|m| {
                String::from_utf8_lossy(&m.payload)
                    .matches("point_with")
                    .count()
            })
            .sum();
        assert_eq!(sent, 120, "every property sent once");
        // The next record goes normally.
        let f = fit(&mut d, &recs[1..], 4096, 0);
        assert_eq!((f.consumed, f.carried.clone()), (1, vec![2]));
    }

    #[test]
    fn one_value_larger_than_a_packet_is_unsendable() {
        let mut d = IotDa::new("gw", false);
        let big = Value::Text("x".repeat(10_000));
        let f = fit(&mut d, &[report(1, &[("blob", big.clone())])], 4096, 0);
        assert_eq!(f.unsendable, vec![1]);
        assert!(f.messages.is_empty() && f.carried.is_empty());
        // Alongside a good property: the good one is sent, the part counted.
        let f = fit(
            &mut d,
            &[report(2, &[("blob", big), ("ok", Value::UInt(3))])],
            4096,
            0,
        );
        assert_eq!((f.carried.clone(), f.dropped_parts), (vec![2], 1));
        assert!(f.reason.is_some_and(|r| r.contains("max_packet")));
    }

    #[test]
    fn a_name_that_makes_no_topic_is_unsendable() {
        let mut d = AllThingsTalk::new("acc", "gw");
        let f = fit(
            &mut d,
            &[report(
                1,
                &[("temp/#+", Value::Float(1.0)), ("ok", Value::Float(2.0))],
            )],
            65_536,
            0,
        );
        assert_eq!(f.carried, vec![1]);
        assert_eq!(f.dropped_parts, 1);
        assert_eq!(f.messages.len(), 1);
        let f = fit(
            &mut d,
            &[report(2, &[("a+b", Value::Float(1.0))])],
            65_536,
            0,
        );
        assert_eq!(f.unsendable, vec![2]);
    }

    #[test]
    fn packet_sizes() {
        let o = Out::new("ab", vec![0u8; 10]);
        assert_eq!(packet_size(&o), 1 + 1 + 2 + 2 + 2 + 10);
        let o = Out::new("ab", vec![0u8; 200]);
        assert_eq!(packet_size(&o), 1 + 2 + 2 + 2 + 2 + 200);
        assert!(refuse(&Out::new("", vec![]), 4096).is_some());
        assert!(refuse(&Out::new("a\0b", vec![]), 4096).is_some());
    }
}
