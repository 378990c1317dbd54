//! Fixed-rate scheduling for pollers.
//!
//! A device polled every second is polled at t0, t0+1s, t0+2s … whatever a poll takes: the
//! period does not stretch. When a poll runs past one or more later slots, those slots are
//! skipped and counted as overruns (reported by the driver), never silently merged.

use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Schedule {
    period: Duration,
    next: Instant,
    overruns: u64,
}

impl Schedule {
    pub fn new(period: Duration, first: Instant) -> Self {
        Self {
            period: period.max(Duration::from_millis(1)),
            next: first,
            overruns: 0,
        }
    }

    /// When the next poll is due.
    pub fn due(&self) -> Instant {
        self.next
    }

    pub fn period(&self) -> Duration {
        self.period
    }

    /// Total slots skipped so far.
    pub fn overruns(&self) -> u64 {
        self.overruns
    }

    /// The poll of the current slot finished at `now`: move to the next slot not yet past and
    /// return how many slots were skipped.
    pub fn advance(&mut self, now: Instant) -> u64 {
        self.next += self.period;
        if self.next > now {
            return 0;
        }
        let behind = now.duration_since(self.next).as_nanos() / self.period.as_nanos();
        let missed = behind as u64 + 1;
        self.next += self.period * (missed as u32);
        self.overruns += missed;
        missed
    }

    /// Delay the next slot to at least `at` (backoff of a failing device); the fixed rate
    /// resumes from there.
    pub fn defer_until(&mut self, at: Instant) {
        if at > self.next {
            self.next = at;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn period_does_not_stretch() {
        let t0 = Instant::now();
        let p = Duration::from_millis(100);
        let mut s = Schedule::new(p, t0);
        // a poll that took 30 ms: next slot is still t0+100
        assert_eq!(s.advance(t0 + Duration::from_millis(30)), 0);
        assert_eq!(s.due(), t0 + p);
        // a poll that ran until t0+350: slots 200 and 300 skipped, next is 400
        assert_eq!(s.advance(t0 + Duration::from_millis(350)), 2);
        assert_eq!(s.due(), t0 + Duration::from_millis(400));
        assert_eq!(s.overruns(), 2);
    }

    #[test]
    fn finishing_exactly_on_a_slot_counts_it_missed() {
        let t0 = Instant::now();
        let p = Duration::from_millis(100);
        let mut s = Schedule::new(p, t0);
        assert_eq!(s.advance(t0 + p), 1);
        assert_eq!(s.due(), t0 + 2 * p);
    }
}
