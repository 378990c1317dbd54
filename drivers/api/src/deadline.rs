//! Poll deadlines that keep their period exactly. tokio's timer counts whole milliseconds and
//! its reactor rounds each wait up from *whenever it parks*, so a wake-up lands anywhere in the
//! millisecond after its deadline and a 100 ms poll period wanders by up to 1 % from one poll
//! to the next. A bus here keeps one Linux timerfd armed at an absolute instant: its deadline
//! rounded up to a fixed, process-wide grid of [`GRID`]. The rounding is the same for every
//! poll of a device (its deadlines are a whole number of steps apart), so its period is kept to
//! the microsecond; and buses whose deadlines fall in the same step share one wake-up, as they
//! did on tokio's timer. Where no timerfd can be made (not Linux, out of file descriptors),
//! tokio's timer stands in, once logged.

use std::time::{Duration, Instant};

/// The step of the wake-up grid: deadlines within one step wake together, at its end.
pub const GRID: Duration = Duration::from_millis(1);

/// One bus's wake-up: re-armed by every [`Deadline::sleep_until`], so dropping a sleep that
/// lost a `select!` (a command arrived first) and sleeping again is always correct.
#[derive(Debug)]
pub struct Deadline {
    #[cfg(target_os = "linux")]
    fd: Option<tokio::io::unix::AsyncFd<linux::Fd>>,
}

impl Deadline {
    /// A deadline for the calling runtime (the timerfd is registered with its reactor).
    pub fn new() -> Self {
        Deadline {
            #[cfg(target_os = "linux")]
            fd: linux::Fd::new(),
        }
    }

    /// Whether wake-ups are on the fixed grid (a timerfd) rather than on tokio's ticks.
    pub fn is_exact(&self) -> bool {
        #[cfg(target_os = "linux")]
        {
            self.fd.is_some()
        }
        #[cfg(not(target_os = "linux"))]
        {
            false
        }
    }

    /// Sleep until `at` rounded up to the grid (at once if `at` has passed). Cancel-safe.
    pub async fn sleep_until(&mut self, at: Instant) {
        if at <= Instant::now() {
            return;
        }
        #[cfg(target_os = "linux")]
        if let Some(fd) = &self.fd {
            match linux::sleep_until(fd, at).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "timerfd failed; polls wake on tokio's millisecond timer from now on");
                    self.fd = None;
                }
            }
        }
        tokio::time::sleep_until(at.into()).await;
    }
}

impl Default for Deadline {
    fn default() -> Self {
        Self::new()
    }
}

/// How far past `origin` the first grid point at or after `at` lies.
fn on_grid(origin: Instant, at: Instant) -> Duration {
    let since = at.saturating_duration_since(origin).as_nanos();
    let step = GRID.as_nanos();
    let rounded = since.div_ceil(step).saturating_mul(step);
    Duration::from_nanos(u64::try_from(rounded).unwrap_or(u64::MAX))
}

#[cfg(target_os = "linux")]
mod linux {
    use std::os::fd::{AsFd, AsRawFd, RawFd};
    use std::sync::OnceLock;
    use std::time::Instant;

    use nix::sys::time::TimeSpec;
    use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
    use nix::time::{clock_gettime, ClockId as Clock};
    use tokio::io::unix::AsyncFd;
    use tokio::io::Interest;

    /// The grid's origin: one `Instant` and the same moment on CLOCK_MONOTONIC (the clock
    /// `Instant` reads on Linux), read back to back, so an `Instant` maps to an absolute expiry.
    fn origin() -> std::io::Result<(Instant, TimeSpec)> {
        static ORIGIN: OnceLock<Option<(Instant, TimeSpec)>> = OnceLock::new();
        ORIGIN
            .get_or_init(|| {
                let at = Instant::now();
                clock_gettime(Clock::CLOCK_MONOTONIC)
                    .ok()
                    .map(|ts| (at, ts))
            })
            .ok_or_else(|| std::io::Error::other("CLOCK_MONOTONIC cannot be read"))
    }

    /// A non-blocking CLOCK_MONOTONIC timerfd.
    #[derive(Debug)]
    pub struct Fd(TimerFd);

    impl AsRawFd for Fd {
        fn as_raw_fd(&self) -> RawFd {
            self.0.as_fd().as_raw_fd()
        }
    }

    impl Fd {
        pub fn new() -> Option<AsyncFd<Fd>> {
            let made = origin()
                .and_then(|_| {
                    TimerFd::new(
                        ClockId::CLOCK_MONOTONIC,
                        TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
                    )
                    .map_err(std::io::Error::from)
                })
                .and_then(|t| {
                    // SAFETY: `Fd` owns the timerfd for as long as the AsyncFd holds it and
                    // always answers the same descriptor.
                    unsafe { AsyncFd::register_with_interest(Fd(t), Interest::READABLE) }
                        .map_err(std::io::Error::from)
                });
            match made {
                Ok(fd) => Some(fd),
                Err(e) => {
                    tracing::warn!(error = %e, "no timerfd; polls wake on tokio's millisecond timer");
                    None
                }
            }
        }
    }

    pub async fn sleep_until(fd: &AsyncFd<Fd>, at: Instant) -> std::io::Result<()> {
        let (o_at, o_ts) = origin()?;
        let expiry = o_ts + TimeSpec::from_duration(super::on_grid(o_at, at));
        // Arming resets any expiry not yet read, so a wake-up left over from a sleep that lost
        // a select! cannot end this one early. An absolute expiry already past fires at once.
        fd.get_ref().0.set(
            Expiration::OneShot(expiry),
            TimerSetTimeFlags::TFD_TIMER_ABSTIME,
        )?;
        loop {
            let mut ready = fd.readable().await?;
            match ready.try_io(|f| f.get_ref().0.wait().map_err(std::io::Error::from)) {
                Ok(done) => return done,
                // Readiness left over from an earlier arming: cleared, wait again.
                Err(_would_block) => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_round_up_to_the_grid() {
        let o = Instant::now();
        let ms = Duration::from_millis;
        assert_eq!(on_grid(o, o), ms(0));
        assert_eq!(on_grid(o, o + Duration::from_nanos(1)), ms(1));
        assert_eq!(on_grid(o, o + ms(1)), ms(1));
        assert_eq!(on_grid(o, o + Duration::from_micros(2_300)), ms(3));
        // Before the origin: the origin itself (the deadline has passed anyway).
        assert_eq!(on_grid(o + ms(5), o), ms(0));
        // Far away: no overflow.
        assert!(on_grid(o, o + Duration::from_secs(u32::MAX.into())) > ms(0));
    }

    /// The timerfd never wakes before its deadline, a sleep that lost a select! cannot end the
    /// next one early, and a deadline that has passed returns at once. (How exactly periods
    /// are kept is measured by `cargo bench --bench soak`, not asserted on a shared machine.)
    #[tokio::test]
    async fn never_early_and_survives_a_lost_select() {
        let mut d = Deadline::new();
        assert!(d.is_exact(), "a timerfd on Linux");
        tokio::select! {
            _ = d.sleep_until(Instant::now() + Duration::from_millis(5)) => panic!("lost"),
            _ = tokio::time::sleep(Duration::from_millis(1)) => {}
        }
        tokio::time::sleep(Duration::from_millis(10)).await; // the old arming expires unread
        let start = Instant::now();
        for k in 1..=20u32 {
            let at = start + Duration::from_micros(1_700) * k;
            d.sleep_until(at).await;
            let now = Instant::now();
            assert!(now >= at, "woke {:?} early", at - now);
        }
        let t = Instant::now();
        d.sleep_until(t - Duration::from_millis(1)).await;
        d.sleep_until(t).await;
    }
}
