//! Pacing of data publishes: a token bucket per messages and per bytes, one second deep. After
//! an outage the backlog drains at the configured rate, oldest first, instead of flattening the
//! broker and the platform; new readings keep being queued meanwhile.

use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Pace {
    msgs_per_s: f64,
    bytes_per_s: f64,
    msgs: f64,
    bytes: f64,
    last: Instant,
}

impl Pace {
    /// Rates of 0 mean unlimited.
    pub fn new(msgs_per_s: u32, bytes_per_s: u64) -> Self {
        let (m, b) = (f64::from(msgs_per_s), bytes_per_s as f64);
        Pace {
            msgs_per_s: m,
            bytes_per_s: b,
            msgs: m,
            bytes: b,
            last: Instant::now(),
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.msgs = (self.msgs + dt * self.msgs_per_s).min(self.msgs_per_s);
        self.bytes = (self.bytes + dt * self.bytes_per_s).min(self.bytes_per_s);
    }

    /// How long until one more message may go (None: now). Check before packing, so a
    /// message once packed is always sent (dialects number their messages).
    pub fn wait(&mut self, now: Instant) -> Option<Duration> {
        self.refill(now);
        let short_m = if self.msgs_per_s > 0.0 {
            (1.0 - self.msgs).max(0.0) / self.msgs_per_s
        } else {
            0.0
        };
        // Bytes may run into debt by one message; the next one waits until it is paid.
        let short_b = if self.bytes_per_s > 0.0 {
            (-self.bytes).max(0.0) / self.bytes_per_s
        } else {
            0.0
        };
        let wait = short_m.max(short_b);
        (wait > 0.0).then(|| Duration::from_secs_f64(wait).max(Duration::from_millis(1)))
    }

    /// Charge `msgs` sent messages of `len` bytes in all (the balance may go into debt; the
    /// next `wait` says how long it takes to pay).
    pub fn charge(&mut self, msgs: usize, len: usize) {
        if self.msgs_per_s > 0.0 {
            self.msgs -= msgs as f64;
        }
        if self.bytes_per_s > 0.0 {
            self.bytes -= (len as f64).min(self.bytes_per_s * msgs.max(1) as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_and_burst() {
        let t0 = Instant::now();
        let mut p = Pace::new(10, 0);
        for _ in 0..10 {
            assert_eq!(p.wait(t0), None, "a second's burst");
            p.charge(1, 100);
        }
        let wait = p.wait(t0).unwrap_or_default();
        assert!(
            wait >= Duration::from_millis(99) && wait <= Duration::from_millis(101),
            "{wait:?}"
        );
        assert_eq!(p.wait(t0 + Duration::from_millis(100)), None);
        // Ten messages at once (one per property): a second's worth.
        let mut q = Pace::new(10, 0);
        q.charge(10, 1000);
        assert!(q.wait(t0).is_some_and(|w| w >= Duration::from_millis(99)));
    }

    #[test]
    fn bytes_limit_and_oversize_messages() {
        let t0 = Instant::now();
        let mut p = Pace::new(0, 1000);
        assert_eq!(p.wait(t0), None);
        p.charge(1, 600);
        assert_eq!(p.wait(t0), None, "400 bytes left: one more may go");
        p.charge(1, 600);
        let w = p.wait(t0).unwrap_or_default();
        assert!(
            w >= Duration::from_millis(199),
            "in debt by 200 bytes: {w:?}"
        );
        // a 5000-byte message costs at most a second's worth
        let mut q = Pace::new(0, 1000);
        q.charge(1, 5000);
        assert_eq!(q.wait(t0), None, "the full bucket paid for it");
        q.charge(1, 5000);
        let w = q.wait(t0).unwrap_or_default();
        assert!(w >= Duration::from_millis(999), "{w:?}");
        assert_eq!(q.wait(t0 + Duration::from_millis(1001)), None);
        let mut u = Pace::new(0, 0);
        u.charge(1, usize::MAX);
        assert_eq!(u.wait(t0), None, "unlimited");
    }
}
