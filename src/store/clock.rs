//! Queue time: what `max_age` is measured in. It is the wall clock with its steps taken out.
//!
//! A gateway without a real-time clock boots at an old time and has NTP step it forward —
//! by days, even years — once the network is up. Measured by the wall clock, every queued
//! record would look that much older and expire at once. Queue time follows the monotonic
//! clock between observations: a wall-clock jump of more than [`STEP`] beyond what the
//! monotonic clock saw is a step, and is added to an offset instead of to the records' age.
//! The offset is kept in the store, so a restart continues it; a restart whose wall clock is
//! behind the newest queued record continues from that record instead (nothing gets younger
//! than it was). A wall clock that is right when the daemon starts — after days switched off,
//! say — is trusted: that downtime counts towards `max_age`, as it should.
//!
//! No I/O here: the store feeds it readings of both clocks, so the rules are tested directly.

use std::time::Duration;

/// A wall-clock change this much larger (or smaller) than the monotonic clock's is a step.
pub const STEP: Duration = Duration::from_secs(10);

/// Queue time: wall clock minus the steps seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueClock {
    /// Sum of the steps seen (ms); queue time = wall − offset.
    offset_ms: i64,
    /// The last observation: wall clock (ms since the epoch) and monotonic clock (ms).
    last: Option<(u64, u64)>,
}

/// One reading of the queue clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reading {
    /// Queue time, ms.
    pub now_ms: u64,
    /// A step seen at this observation (ms, signed), if any.
    pub step_ms: Option<i64>,
}

impl QueueClock {
    /// Start with the offset kept from the last run, and the newest queue time any queued
    /// record carries (queue time never starts behind it).
    pub fn resume(offset_ms: i64, newest_ms: Option<u64>, wall_ms: u64) -> Self {
        let mut c = QueueClock {
            offset_ms,
            last: None,
        };
        if let Some(newest) = newest_ms {
            let now = c.at(wall_ms);
            if now < newest {
                // The wall clock is behind records written before: it was set back while the
                // daemon was down (or it booted at an old time). Continue from the newest.
                let offset = i128::from(wall_ms) - i128::from(newest);
                c.offset_ms = i64::try_from(offset).unwrap_or(i64::MIN);
            }
        }
        c
    }

    /// The offset to keep across restarts.
    pub fn offset_ms(&self) -> i64 {
        self.offset_ms
    }

    fn at(&self, wall_ms: u64) -> u64 {
        let q = i128::from(wall_ms) - i128::from(self.offset_ms);
        u64::try_from(q.max(0)).unwrap_or(u64::MAX)
    }

    /// Observe both clocks now; a step since the last observation moves the offset.
    pub fn observe(&mut self, wall_ms: u64, mono_ms: u64) -> Reading {
        let mut step_ms = None;
        if let Some((wall0, mono0)) = self.last {
            let wall_delta = i128::from(wall_ms) - i128::from(wall0);
            let mono_delta = i128::from(mono_ms.saturating_sub(mono0));
            let step = wall_delta - mono_delta;
            if step.unsigned_abs() > STEP.as_millis() {
                let step =
                    i64::try_from(step).unwrap_or(if step > 0 { i64::MAX } else { i64::MIN });
                self.offset_ms = self.offset_ms.saturating_add(step);
                step_ms = Some(step);
            }
        }
        self.last = Some((wall_ms, mono_ms));
        Reading {
            now_ms: self.at(wall_ms),
            step_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86_400_000;

    #[test]
    fn follows_the_wall_clock_while_it_runs_true() {
        let mut c = QueueClock::resume(0, None, 1_000);
        assert_eq!(c.observe(1_000, 0).now_ms, 1_000);
        assert_eq!(c.observe(61_000, 60_000).now_ms, 61_000);
        // NTP slewing and small adjustments are not steps.
        assert_eq!(c.observe(125_000, 120_000).now_ms, 125_000);
        assert_eq!(c.offset_ms(), 0);
    }

    #[test]
    fn a_forward_step_does_not_age_the_queue() {
        let boot = 1_000 * DAY;
        let mut c = QueueClock::resume(0, None, boot);
        let enq = c.observe(boot, 0).now_ms;
        // 30 days forward while one second passes.
        let r = c.observe(boot + 30 * DAY + 1_000, 1_000);
        assert_eq!(r.step_ms, Some(i64::try_from(30 * DAY).unwrap_or(0)));
        assert_eq!(r.now_ms - enq, 1_000, "one second old, not thirty days");
        // And time goes on from there.
        assert_eq!(
            c.observe(boot + 30 * DAY + 61_000, 61_000).now_ms - enq,
            61_000
        );
    }

    #[test]
    fn a_backward_step_does_not_rejuvenate_the_queue() {
        let mut c = QueueClock::resume(0, None, 100 * DAY);
        let enq = c.observe(100 * DAY, 0).now_ms;
        let r = c.observe(40 * DAY + 5_000, 5_000);
        assert!(r.step_ms.is_some_and(|s| s < 0));
        assert_eq!(r.now_ms - enq, 5_000);
    }

    #[test]
    fn a_restart_keeps_the_offset_and_never_goes_behind_the_newest_record() {
        let mut c = QueueClock::resume(0, None, 10 * DAY);
        c.observe(10 * DAY, 0);
        c.observe(50 * DAY, 1_000);
        let kept = c.offset_ms();
        // Restart with the wall clock right: the offset still applies.
        let mut d = QueueClock::resume(kept, Some(10 * DAY + 1_000), 50 * DAY + 3_000);
        assert_eq!(d.observe(50 * DAY + 3_000, 7).now_ms, 10 * DAY + 4_000);
        // Restart at an older wall time (no RTC): queue time continues from the newest record.
        let mut e = QueueClock::resume(kept, Some(10 * DAY + 3_000), 2 * DAY);
        assert_eq!(e.observe(2 * DAY, 0).now_ms, 10 * DAY + 3_000);
    }

    #[test]
    fn extreme_readings_saturate_instead_of_overflowing() {
        let mut c = QueueClock::resume(i64::MIN, Some(u64::MAX), 0);
        c.observe(u64::MAX, 0);
        c.observe(0, u64::MAX);
        c.observe(u64::MAX, 1);
        let _ = c.observe(0, 0).now_ms;
    }
}
