//! Counters every part of the daemon updates and the status API reads: deliveries, drops by
//! reason (never silent), rejected platform messages, and the uplink's state.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

#[derive(Debug, Default)]
pub struct Metrics {
    pub uplink_connected: AtomicBool,
    /// Incremented by the uplink loop at least twice a second while it is alive (watchdog).
    pub uplink_beat: AtomicU64,
    pub uplink_error: Mutex<String>,
    /// The outcome of the last remote config change (`config_status`), empty before one.
    pub remote_note: Mutex<String>,
    /// When the uplink last connected or disconnected (ms since the epoch; 0 = never).
    pub uplink_since_ms: AtomicU64,
    /// Platform requests handed to drivers and not yet answered.
    pub commands_in_flight: AtomicU64,
    pub connects: AtomicU64,
    /// Records in the queue, as of the last status refresh.
    pub queue_records: AtomicU64,
    /// Age of the oldest queued record in seconds, as of the last status refresh.
    pub queue_oldest_age_s: AtomicU64,
    /// Platform requests for children answered done, and refused or failed (busy included).
    pub requests_done: AtomicU64,
    pub requests_failed: AtomicU64,
    /// Records acknowledged by the broker and removed from the queue.
    pub delivered: AtomicU64,
    /// Records dropped because the queue was at `max_bytes` (oldest telemetry first) or the
    /// disk was full.
    pub dropped_full: AtomicU64,
    /// Records dropped because they were older than `max_age`.
    pub dropped_expired: AtomicU64,
    /// Records dropped because the store kept failing to write them (not a full disk).
    pub dropped_store_error: AtomicU64,
    /// Records dropped because their stored body could not be read.
    pub dropped_corrupt: AtomicU64,
    /// Records dropped because their child is no longer configured.
    pub dropped_orphan: AtomicU64,
    /// Records (or single properties split from one) that could never be sent: larger than
    /// `max_packet` even alone, or a name that makes no valid MQTT topic.
    pub dropped_unsendable: AtomicU64,
    /// Platform messages that could not be understood.
    pub inbound_rejected: AtomicU64,
    /// Platform requests answered "busy" because too many were already being handled.
    pub requests_busy: AtomicU64,
    /// Answers that could not be published (the connection was lost before they went out, or
    /// a topic the platform gave was unusable).
    pub replies_dropped: AtomicU64,
    /// Connection attempts made (each one CONNECT at most).
    pub connect_attempts: AtomicU64,
    /// The queue has been growing while connected: delivery is slower than collection.
    pub falling_behind: AtomicBool,
    /// Times a driver waited for room in the channel to the store (the store was behind):
    /// held back, nothing dropped.
    pub drivers_waited: AtomicU64,
    /// The slowest group commit since start, in milliseconds.
    pub commit_max_ms: AtomicU64,
    /// What each bus skipped (noise, bad frames, malformed lines), as the driver last said.
    pub bus_counters:
        Mutex<std::collections::BTreeMap<String, std::collections::BTreeMap<String, u64>>>,
}

impl Metrics {
    /// Record the uplink state; `uplink_since_ms` moves only on a change.
    pub fn set_connected(&self, up: bool) {
        if self.uplink_connected.swap(up, Ordering::Relaxed) != up
            || self.uplink_since_ms.load(Ordering::Relaxed) == 0
        {
            self.uplink_since_ms
                .store(fieldgate_driver::now_ms(), Ordering::Relaxed);
        }
    }
}

/// Once-per-episode logging of one kind of trouble: the caller logs when a streak starts, the
/// occurrences are counted, and the count is said when the streak ends (the next success).
/// For conditions that flap without a clear end, `fieldgate_driver::Episode` ends on a quiet
/// interval instead.
#[derive(Debug, Default)]
pub struct Streak {
    count: u64,
}

impl Streak {
    /// Add `n` occurrences; true when they start a streak.
    pub fn add(&mut self, n: u64) -> bool {
        let first = self.count == 0 && n > 0;
        self.count = self.count.saturating_add(n);
        first
    }

    /// One occurrence; true when it starts a streak.
    pub fn hit(&mut self) -> bool {
        self.add(1)
    }

    /// End the streak: how many occurrences it had (0: there was none).
    pub fn end(&mut self) -> u64 {
        std::mem::take(&mut self.count)
    }
}

/// A repeated warning shared between tasks, logged by episode (`fieldgate_driver::Episode`,
/// quiet interval [`QUIET`]): the first occurrence at once, then at most one line a minute
/// with the count since the last, ended only by a quiet minute. Every occurrence can still go
/// to `debug`.
#[derive(Debug)]
pub struct Repeated(std::sync::Mutex<fieldgate_driver::Episode>);

/// The quiet interval of every [`Repeated`] warning.
pub const QUIET: std::time::Duration = std::time::Duration::from_secs(60);

impl Default for Repeated {
    fn default() -> Self {
        Repeated(std::sync::Mutex::new(fieldgate_driver::Episode::new(QUIET)))
    }
}

impl Repeated {
    /// One occurrence now: `Some(count since the last line)` when a line is due.
    pub fn hit(&self) -> Option<u64> {
        self.0
            .lock()
            .ok()
            .and_then(|mut e| e.hit(1, std::time::Instant::now()))
    }
}

#[cfg(test)]
mod tests {
    use super::Streak;

    #[test]
    fn a_streak_starts_once_and_says_its_count() {
        let mut s = Streak::default();
        assert!(!s.add(0), "nothing happened");
        assert!(s.hit());
        assert!(!s.add(4));
        assert_eq!(s.end(), 5);
        assert_eq!(s.end(), 0);
        assert!(s.hit(), "a new streak");
    }
}
