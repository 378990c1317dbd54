//! Repeated warnings logged by episode, the one rule for every "this keeps happening" line.
//!
//! An episode starts at the first occurrence after a quiet interval and is logged at once;
//! while it lasts, further occurrences are counted and logged at most once per interval, each
//! line carrying the count since the previous one; it ends only after a whole quiet interval
//! without an occurrence. (Ending an episode at the first good event — one on-time poll
//! between overruns — turned 100 overloaded devices into 6,455 warnings in 75 s.)

use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Episode {
    quiet: Duration,
    last: Option<Instant>,
    logged: Option<Instant>,
    pending: u64,
}

impl Episode {
    /// `quiet`: how long without an occurrence ends an episode, and the least time between
    /// two lines within one.
    pub fn new(quiet: Duration) -> Self {
        Episode {
            quiet,
            last: None,
            logged: None,
            pending: 0,
        }
    }

    /// `n` occurrences at `now`: `Some(count since the last line)` when a line is due.
    pub fn hit(&mut self, n: u64, now: Instant) -> Option<u64> {
        self.pending = self.pending.saturating_add(n);
        let fresh = self
            .last
            .is_none_or(|l| now.saturating_duration_since(l) >= self.quiet);
        self.last = Some(now);
        let due = fresh
            || self
                .logged
                .is_none_or(|t| now.saturating_duration_since(t) >= self.quiet);
        if !due {
            return None;
        }
        self.logged = Some(now);
        Some(std::mem::take(&mut self.pending))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flapping_condition_is_a_line_a_minute() {
        let t0 = Instant::now();
        let mut e = Episode::new(Duration::from_secs(60));
        // An overrun every other poll at 20 ms for 75 s (good polls in between).
        let mut lines = Vec::new();
        for i in 0..3750u64 {
            if i % 2 == 0 {
                if let Some(n) = e.hit(1, t0 + Duration::from_millis(i * 20)) {
                    lines.push(n);
                }
            }
        }
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(lines[0], 1, "the first occurrence at once");
        assert_eq!(
            lines.iter().sum::<u64>(),
            1 + 1500,
            "counts add up to what was seen"
        );
        // A quiet minute ends the episode: the next one is logged at once.
        let later = t0 + Duration::from_secs(75 + 61);
        assert_eq!(e.hit(3, later), Some(3 + 374));
    }
}
