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

    /// Take one message of `len` bytes, or say how long to wait before trying again.
    /// A message larger than a second's worth of bytes passes once the bucket is full.
    pub fn take(&mut self, len: usize, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        let need_b = (len as f64).min(self.bytes_per_s);
        let short_m = if self.msgs_per_s > 0.0 {
            (1.0 - self.msgs).max(0.0) / self.msgs_per_s
        } else {
            0.0
        };
        let short_b = if self.bytes_per_s > 0.0 {
            (need_b - self.bytes).max(0.0) / self.bytes_per_s
        } else {
            0.0
        };
        let wait = short_m.max(short_b);
        if wait > 0.0 {
            return Err(Duration::from_secs_f64(wait).max(Duration::from_millis(1)));
        }
        if self.msgs_per_s > 0.0 {
            self.msgs -= 1.0;
        }
        if self.bytes_per_s > 0.0 {
            self.bytes -= need_b;
        }
        Ok(())
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
            assert!(p.take(100, t0).is_ok(), "a second's burst");
        }
        let wait = p.take(100, t0).expect_err("bucket empty");
        assert!(
            wait >= Duration::from_millis(99) && wait <= Duration::from_millis(101),
            "{wait:?}"
        );
        assert!(p.take(100, t0 + Duration::from_millis(100)).is_ok());
    }

    #[test]
    fn bytes_limit_and_oversize_messages() {
        let t0 = Instant::now();
        let mut p = Pace::new(0, 1000);
        assert!(p.take(600, t0).is_ok());
        assert!(p.take(600, t0).is_err());
        // a 5000-byte message waits for a full bucket, then passes
        let mut q = Pace::new(0, 1000);
        assert!(q.take(5000, t0).is_ok());
        assert!(q.take(1, t0).is_err());
        assert!(Pace::new(0, 0).take(usize::MAX, t0).is_ok(), "unlimited");
    }
}
