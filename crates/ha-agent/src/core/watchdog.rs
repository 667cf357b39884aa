//! The watchdog's settings and timing arithmetic (Patroni's `watchdog` section), pure.
//!
//! A watchdog device resets the machine when it is not fed within its timeout. ha-agent arms
//! it only while PostgreSQL is, or is about to become, a primary, and the lease keeper feeds
//! it, so that an agent that is frozen, killed or hung cannot leave a primary running past
//! the moment its lease can expire at etcd.
//!
//! The arithmetic. Let `E` be the earliest moment etcd can expire our lease: the send time
//! `s` of the last keep-alive etcd answered, plus the TTL it answered (etcd received the
//! keep-alive after `s`). A feed at `f` makes the machine reset at `f + T` (`T` the device's
//! timeout) unless fed again. The keeper feeds only when
//!
//! ```text
//!     f + T + RESET_MARGIN <= E
//! ```
//!
//! so whenever the agent stops feeding (frozen, killed, hung), the machine resets by
//! `E - RESET_MARGIN`, before any other member can see the leader key expire. For a feed right
//! after a keep-alive answered at `a` this needs `a - s <= ttl - T - RESET_MARGIN`, i.e. the
//! keep-alive's round trip must fit in `safety_margin - RESET_MARGIN`. Besides feeding on
//! each answer, the keeper feeds once more at the last allowed moment `E - T - RESET_MARGIN`
//! when no answer came, so that with etcd unreachable the lease fence (at `E -
//! retry_timeout`) stops PostgreSQL cleanly before the watchdog fires, as long as
//! `retry_timeout > RESET_MARGIN`. (etcd 3.4 before 3.4.31 can also *revoke* a lease early
//! when a stalled former raft leader wakes, etcd #15247; no margin covers that, see the
//! failure model in ARCHITECTURE.md.)

use std::time::Duration;

use super::observed::Moment;

/// Time from the watchdog's expiry to the machine being reset (a hardware reset is immediate;
/// this covers a stand-in device's polling and the kernel's own latency).
pub const RESET_MARGIN: Duration = Duration::from_millis(250);

/// `watchdog.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// No watchdog.
    Off,
    /// Use the device when it can be activated with a safe timeout; carry on without it (and
    /// say so) when it cannot.
    #[default]
    Automatic,
    /// Never be a primary without an active watchdog: a member whose watchdog cannot be
    /// activated does not race for the leader key and is not promoted.
    Required,
}

/// `watchdog.driver`: the Linux watchdog API, or Patroni's `testing` stand-in (a named pipe:
/// `Ctimeout=N\n` on activation, `1` per keepalive, `V` before a clean close).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Driver {
    #[default]
    Linux,
    Testing,
}

/// The watchdog's validated settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub mode: Mode,
    pub device: std::path::PathBuf,
    pub driver: Driver,
    /// The timeout to set on the device, whole seconds (what the device API takes).
    pub timeout: Duration,
    /// `watchdog.safety_margin` (seconds; -1: half the ttl), for the timeout of another ttl.
    pub safety_margin: i64,
}

impl Settings {
    /// These settings for timings `t`: the timeout follows the ttl. `Err` says why the timings
    /// cannot work with the watchdog in use.
    pub fn for_timings(&self, t: &crate::config::Timings, request_timeout: Duration) -> Result<Settings, String> {
        if self.mode == Mode::Off {
            return Ok(self.clone());
        }
        let Some(timeout) = timeout_for(t.ttl, self.safety_margin) else {
            return Err(format!(
                "leaves no watchdog timeout of at least 1s with watchdog.safety_margin {}",
                self.safety_margin
            ));
        };
        match unusable_timings(timeout, t.ttl, t.renew_interval(), request_timeout) {
            Some(why) => Err(why),
            None => Ok(Settings { timeout, ..self.clone() }),
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            mode: Mode::Off,
            device: "/dev/watchdog".into(),
            driver: Driver::Linux,
            timeout: Duration::from_secs(25),
            safety_margin: 5,
        }
    }
}

/// The device timeout for `ttl` and `safety_margin` as Patroni computes it (`ttl -
/// safety_margin`, or `ttl / 2` when `safety_margin` is -1), rounded down to whole seconds (a
/// shorter timeout resets earlier, which is the safe side). `None` when that is under 1 s.
pub fn timeout_for(ttl: Duration, safety_margin_secs: i64) -> Option<Duration> {
    let t = if safety_margin_secs == -1 {
        ttl / 2
    } else {
        ttl.checked_sub(Duration::from_secs(u64::try_from(safety_margin_secs).ok()?))?
    };
    let secs = t.as_secs();
    (secs >= 1).then(|| Duration::from_secs(secs))
}

/// Whether a feed at `now` keeps the reset before the lease's earliest expiry `lease_expires`
/// for a device whose (actual) timeout is `timeout`.
pub fn may_feed(now: Moment, lease_expires: Moment, timeout: Duration) -> bool {
    now.plus(timeout).plus(RESET_MARGIN) <= lease_expires
}

/// The last moment a feed is allowed under a lease that expires at `lease_expires`.
pub fn last_feed_at(lease_expires: Moment, timeout: Duration) -> Moment {
    lease_expires.minus(timeout).minus(RESET_MARGIN)
}

/// Why the timings cannot work with a watchdog, if they cannot: the timeout must leave room
/// for a keep-alive's round trip (`request_timeout`) before the lease expires, and must be
/// longer than the keeper's renewal interval, or a member renewing on schedule would be reset.
pub fn unusable_timings(
    timeout: Duration,
    ttl: Duration,
    renew_interval: Duration,
    request_timeout: Duration,
) -> Option<String> {
    if timeout + RESET_MARGIN + request_timeout > ttl {
        return Some(format!(
            "the watchdog timeout ({}s) plus a keep-alive's round trip (etcd.request_timeout, {}) and the reset margin ({}) must fit in ttl ({})",
            timeout.as_secs(),
            humantime::format_duration(request_timeout),
            humantime::format_duration(RESET_MARGIN),
            humantime::format_duration(ttl)
        ));
    }
    if timeout <= renew_interval {
        return Some(format!(
            "the watchdog timeout ({}s) must be longer than the lease renewal interval ({}), or a member renewing on schedule is reset",
            timeout.as_secs(),
            humantime::format_duration(renew_interval),
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Moment {
        Moment::from_millis(v)
    }

    #[test]
    fn timeout_is_ttl_minus_safety_margin_or_half_the_ttl() {
        assert_eq!(timeout_for(Duration::from_secs(30), 5), Some(Duration::from_secs(25)));
        assert_eq!(timeout_for(Duration::from_secs(30), -1), Some(Duration::from_secs(15)));
        // Rounded down to whole seconds: the device takes seconds, and shorter is safer.
        assert_eq!(timeout_for(Duration::from_millis(2500), 1), Some(Duration::from_secs(1)));
        assert_eq!(timeout_for(Duration::from_secs(2), -1), Some(Duration::from_secs(1)));
        assert_eq!(timeout_for(Duration::from_secs(2), 5), None);
        assert_eq!(timeout_for(Duration::from_secs(2), 2), None);
        assert_eq!(timeout_for(Duration::from_secs(30), -7), None);
    }

    #[test]
    fn a_feed_is_allowed_only_if_the_reset_comes_before_the_lease_can_expire() {
        let t = Duration::from_secs(1);
        // Lease renewed (sent) at 10_000 with ttl 2 s: expires no earlier than 12_000.
        let e = ms(12_000);
        assert!(may_feed(ms(10_000), e, t));
        assert!(may_feed(ms(10_750), e, t), "the last allowed moment");
        assert!(!may_feed(ms(10_751), e, t), "a reset at 11_751 + 250 ms would come after 12_000");
        assert_eq!(last_feed_at(e, t), ms(10_750));
    }

    #[test]
    fn for_every_feed_the_reset_comes_before_the_lease_expiry() {
        // Exhaustive over a grid: whenever may_feed allows a feed, an agent that stops right
        // after it is reset before the lease it held can expire at etcd.
        for ttl_s in 2..=30u64 {
            for margin in [-1i64, 1, 2, 5, 10] {
                let Some(t) = timeout_for(Duration::from_secs(ttl_s), margin) else { continue };
                for sent in (0..5_000).step_by(250) {
                    let expires = ms(sent).plus(Duration::from_secs(ttl_s));
                    for answered_after in (0..3_000).step_by(100) {
                        let f = ms(sent + answered_after);
                        if may_feed(f, expires, t) {
                            assert!(f.plus(t).plus(RESET_MARGIN) <= expires);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn timings_that_cannot_work_with_a_watchdog_are_named() {
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        assert_eq!(unusable_timings(s(25), s(30), s(7), s(2)), None);
        assert_eq!(unusable_timings(s(1), s(2), ms(500), ms(500)), None);
        assert!(unusable_timings(s(2), s(2), ms(500), ms(500)).is_some_and(|m| m.contains("must fit in ttl")));
        assert!(unusable_timings(s(1), s(4), s(1), ms(500)).is_some_and(|m| m.contains("renewal interval")));
        assert!(unusable_timings(s(1), s(4), ms(999), ms(500)).is_none());
    }
}
