//! The agent's clock: `CLOCK_BOOTTIME`, which keeps counting while the machine (or VM) is
//! suspended. `CLOCK_MONOTONIC` (what `std::time::Instant` and tokio's timers use) stops
//! during a suspend, so a lease deadline kept on it would come too late after a resume: the
//! lease expired at etcd while the suspended primary's clock stood still.
//!
//! [`Clock::now`] gives [`Moment`]s (milliseconds since the agent started, on BOOTTIME);
//! [`Clock::sleep_until`] waits for a moment with a BOOTTIME timerfd, so a deadline that
//! passed during a suspend fires as soon as the machine runs again.

use std::time::Duration;

use nix::time::{ClockId, clock_gettime};

use crate::core::Moment;
use crate::sys::BootTimer;

fn boottime() -> Duration {
    // CLOCK_BOOTTIME exists on every Linux since 2.6.39; a failure here is impossible short of
    // a broken kernel, and then the monotonic clock is the best there is.
    clock_gettime(ClockId::CLOCK_BOOTTIME)
        .or_else(|_| clock_gettime(ClockId::CLOCK_MONOTONIC))
        .map_or(Duration::ZERO, Duration::from)
}

/// The agent's clock, as [`Moment`]s from the agent's start.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    origin: Duration,
}

impl Clock {
    pub fn new() -> Self {
        Self { origin: boottime() }
    }

    pub fn now(&self) -> Moment {
        Moment::from_millis(u64::try_from(boottime().saturating_sub(self.origin).as_millis()).unwrap_or(u64::MAX))
    }

    /// The tokio instant (monotonic) that corresponds to `m` as of now. Only for deadlines
    /// handed to code that runs on tokio's timers (the REST snapshot's `leader_until`); they
    /// are re-derived after every cycle.
    pub fn instant(&self, m: Moment) -> tokio::time::Instant {
        let now = self.now();
        let base = tokio::time::Instant::now();
        if m >= now { base + m.since(now) } else { base.checked_sub(now.since(m)).unwrap_or(base) }
    }

    /// Sleeps until `at` on BOOTTIME. Falls back to a tokio sleep if no timerfd can be made
    /// (never seen; fd exhaustion would be the cause).
    pub async fn sleep_until(&self, at: Moment) {
        let now = self.now();
        if at <= now {
            return;
        }
        let absolute = self.origin + Duration::from_millis(at.as_millis());
        match BootTimer::at(absolute) {
            Ok(t) => t.fired().await,
            Err(e) => {
                tracing::debug!(error = %e, "timerfd unavailable; sleeping on the monotonic clock");
                tokio::time::sleep(at.since(now)).await;
            }
        }
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sleep_until_wakes_at_the_moment_on_boottime() {
        let c = Clock::new();
        let start = c.now();
        let target = start.plus(Duration::from_millis(120));
        let t0 = std::time::Instant::now();
        c.sleep_until(target).await;
        assert!(c.now() >= target, "woke at {:?}, wanted {:?}", c.now(), target);
        assert!(t0.elapsed() < Duration::from_secs(2));
        // A moment already past returns at once.
        c.sleep_until(start).await;
    }
}
