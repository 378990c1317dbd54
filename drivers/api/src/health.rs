//! Device health: the one rule every driver follows for ONLINE/OFFLINE.
//!
//! A device goes ONLINE on its first good exchange and OFFLINE after `offline_after`
//! consecutive failures, keeping the last failure's reason. Only *transitions* produce a
//! status event (and a log line in the driver), so a device that stays dead does not flood
//! the queue or the journal.

use tracing::{info, warn};

use std::collections::BTreeMap;

use crate::{now_ms, DeviceStatus, DriverError, Event, Events, Name, Properties, Report, Value};

/// Running totals of what a bus skipped (noise, bad frames, malformed lines) on their way to
/// `fieldgate status`: sent when they changed, at most about once a second, never waiting on
/// the daemon (a missed update is followed by the next).
#[derive(Debug, Default)]
pub struct SkipCounters {
    /// The total last sent, and when.
    sent: (u64, Option<std::time::Instant>),
}

impl SkipCounters {
    /// When the changed `total` may next be sent; `None` while it has not changed.
    pub fn due(&self, total: u64) -> Option<std::time::Instant> {
        if total == self.sent.0 {
            return None;
        }
        Some(self.sent.1.map_or_else(std::time::Instant::now, |t| {
            t + std::time::Duration::from_secs(1)
        }))
    }

    /// Send `counters` (whose sum is `total`) if they are due.
    pub fn send(
        &mut self,
        events: &Events,
        bus: &str,
        total: u64,
        counters: impl FnOnce() -> BTreeMap<String, u64>,
    ) {
        if self
            .due(total)
            .is_none_or(|d| std::time::Instant::now() < d)
        {
            return;
        }
        let sent = events.try_send(Event::Counters {
            bus: bus.to_string(),
            counters: counters(),
        });
        if sent.is_ok() {
            self.sent = (total, Some(std::time::Instant::now()));
        }
    }
}

/// Hand one sample of `child` to the daemon: one report per service (services without a
/// property are skipped), all stamped `ts_ms`. Every driver sends its readings through here.
pub async fn send_reports(
    events: &Events,
    child: &str,
    by_service: impl IntoIterator<Item = (String, Properties)>,
    ts_ms: u64,
) -> Result<(), DriverError> {
    for (service, properties) in by_service {
        if properties.is_empty() {
            continue;
        }
        events
            .send(Event::Report(Report {
                child: child.to_string(),
                service,
                properties,
                ts_ms,
            }))
            .await?;
    }
    Ok(())
}

/// Names made for one reading (drivers whose names come with each reading, not from a fixed
/// point list).
pub fn named(
    by_service: BTreeMap<String, BTreeMap<String, Value>>,
) -> impl Iterator<Item = (String, Properties)> {
    by_service.into_iter().map(|(service, properties)| {
        let properties = properties
            .into_iter()
            .map(|(k, v)| (Name::from(k), v))
            .collect();
        (service, properties)
    })
}

/// Publish a status transition (if there is one) with its one log line; `failures` is the
/// streak behind an OFFLINE, where the driver counts one.
pub async fn send_status(
    events: &Events,
    bus: &str,
    st: Option<DeviceStatus>,
    failures: Option<u32>,
) -> Result<(), DriverError> {
    let Some(st) = st else { return Ok(()) };
    if st.online {
        info!(bus = %bus, device = %st.child, "device ONLINE");
    } else {
        warn!(bus = %bus, device = %st.child, reason = %st.reason, failures = ?failures, "device OFFLINE");
    }
    events.send(Event::Status(st)).await
}

#[derive(Debug, Clone)]
pub struct Health {
    child: String,
    offline_after: u32,
    online: Option<bool>,
    streak: u32,
    reason: String,
}

impl Health {
    pub fn new(child: impl Into<String>, offline_after: u32) -> Self {
        Self {
            child: child.into(),
            offline_after: offline_after.max(1),
            online: None,
            streak: 0,
            reason: String::new(),
        }
    }

    /// `Some(true)` online, `Some(false)` offline, `None` not yet decided.
    pub fn online(&self) -> Option<bool> {
        self.online
    }

    /// Consecutive failures so far.
    pub fn streak(&self) -> u32 {
        self.streak
    }

    /// The last failure reason (empty when none yet).
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// A good exchange. Returns the status to publish if this is a transition.
    pub fn success(&mut self) -> Option<DeviceStatus> {
        self.streak = 0;
        if self.online == Some(true) {
            return None;
        }
        self.online = Some(true);
        Some(DeviceStatus {
            child: self.child.clone(),
            online: true,
            reason: String::new(),
            ts_ms: now_ms(),
        })
    }

    /// A failed exchange with its reason. Returns the status to publish on the transition.
    pub fn failure(&mut self, reason: impl Into<String>) -> Option<DeviceStatus> {
        self.streak = self.streak.saturating_add(1);
        self.reason = reason.into();
        if self.online == Some(false) || self.streak < self.offline_after {
            return None;
        }
        self.online = Some(false);
        Some(DeviceStatus {
            child: self.child.clone(),
            online: false,
            reason: self.reason.clone(),
            ts_ms: now_ms(),
        })
    }

    /// A failure that needs no confirmation (a stream device silent past its staleness
    /// timeout): OFFLINE now, whatever the streak.
    pub fn offline_now(&mut self, reason: impl Into<String>) -> Option<DeviceStatus> {
        self.streak = self.streak.max(self.offline_after - 1);
        self.failure(reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn skip_counters_go_when_changed_at_most_once_a_second() {
        let (tx, mut rx) = crate::events(8, 1024);
        let mut c = SkipCounters::default();
        let one = || BTreeMap::from([("bad".to_string(), 1)]);
        assert_eq!(c.due(0), None, "nothing changed");
        c.send(&tx, "b", 1, one);
        assert!(matches!(rx.try_recv(), Some(Event::Counters { .. })));
        c.send(&tx, "b", 2, one);
        assert!(rx.try_recv().is_none(), "not again within a second");
        assert!(c.due(2).is_some_and(|d| d > std::time::Instant::now()));
        assert_eq!(c.due(1), None, "the total sent is not due again");
    }

    #[tokio::test]
    async fn reports_go_one_per_service_and_empty_ones_not_at_all() {
        let (tx, mut rx) = crate::events(8, 1024);
        let v = |i| Properties::from([(Name::from("p"), Value::Int(i))]);
        let sample = [
            ("a".to_string(), v(1)),
            ("empty".to_string(), Properties::new()),
            ("b".to_string(), v(2)),
        ];
        assert!(send_reports(&tx, "m1", sample, 42).await.is_ok());
        let mut got = Vec::new();
        while let Some(Event::Report(r)) = rx.try_recv() {
            got.push((r.child, r.service, r.ts_ms));
        }
        assert_eq!(
            got,
            [("m1".into(), "a".into(), 42), ("m1".into(), "b".into(), 42)]
        );
        drop(rx);
        assert!(matches!(
            send_reports(&tx, "m1", [("a".to_string(), v(1))], 1).await,
            Err(DriverError::ChannelClosed)
        ));
    }

    #[test]
    fn transitions_only() {
        let mut h = Health::new("m1", 3);
        assert!(h.failure("timeout").is_none());
        assert!(h.failure("timeout").is_none());
        let s = h
            .failure("connection refused")
            .expect("third failure goes OFFLINE");
        assert!(!s.online);
        assert_eq!(s.reason, "connection refused");
        assert!(
            h.failure("timeout").is_none(),
            "already OFFLINE: no second status"
        );
        let s = h.success().expect("first success goes ONLINE");
        assert!(s.online);
        assert!(h.success().is_none());
        assert!(h.failure("x").is_none(), "streak restarts after a success");
    }

    #[test]
    fn first_success_is_a_transition() {
        let mut h = Health::new("m1", 1);
        assert!(h.success().is_some());
        assert!(h.failure("t").is_some());
    }

    #[test]
    fn staleness_goes_offline_at_once_and_only_once() {
        let mut h = Health::new("m1", 3);
        assert!(h.success().is_some());
        let s = h.offline_now("no frame for 30s");
        assert!(s.is_some_and(|s| !s.online && s.reason == "no frame for 30s"));
        assert!(h.offline_now("no frame for 30s").is_none());
    }
}
