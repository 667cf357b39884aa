//! Which HA timings are in force, pure.
//!
//! As in Patroni, `ttl`, `loop_wait` and `retry_timeout` are cluster-wide: they live in the
//! cluster's `config` key (written at bootstrap from `bootstrap.dcs`, then by `patronictl
//! edit-config` or `PATCH /config`) and every member reads them from there. The local file's
//! `[timings]` are the values used until the key names them (and the ones the bootstrap
//! writes into it). A key that breaks the rule `loop_wait + 2 * retry_timeout <= ttl` is
//! adjusted as Patroni adjusts it (`patroni/config.py`, `_validate_and_adjust_timeouts`):
//! `loop_wait` is lowered first, then `retry_timeout`; `ttl` is never changed, so every
//! member agrees on it. What cannot be made to work (a `ttl` below etcd's shortest lease, a
//! `retry_timeout` shorter than this member's etcd request timeout) is refused and the
//! running timings are kept.

use std::time::Duration;

use crate::config::Timings;

/// The shortest lease etcd grants.
pub const MIN_TTL: Duration = Duration::from_secs(2);
/// The shortest `loop_wait` and `retry_timeout` the agent runs with.
pub const MIN_STEP: Duration = Duration::from_millis(100);

/// The timings the cluster's `config` key asks for (`None`: absent or unreadable there).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Asked {
    pub ttl: Option<Duration>,
    pub loop_wait: Option<Duration>,
    pub retry_timeout: Option<Duration>,
}

/// A value from the key that was lowered to keep the rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Adjusted {
    pub key: &'static str,
    pub from: Duration,
    pub to: Duration,
}

/// Timings from the key that cannot be used: the key, its value and the rule it breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub key: &'static str,
    pub value: Duration,
    pub rule: String,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "config.{} ({}): {}", self.key, show(self.value), self.rule)
    }
}

impl std::fmt::Display for Adjusted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "config.{} lowered from {} to {} to keep loop_wait + 2 * retry_timeout <= ttl",
            self.key,
            show(self.from),
            show(self.to)
        )
    }
}

fn show(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// The timings in force given the local ones and what the cluster's key asks for, with the
/// values adjusted on the way; `Err` when the key's timings cannot be used at all.
pub fn in_force(local: Timings, asked: &Asked, request_timeout: Duration) -> Result<(Timings, Vec<Adjusted>), Refused> {
    let mut t = Timings {
        ttl: asked.ttl.unwrap_or(local.ttl),
        loop_wait: asked.loop_wait.unwrap_or(local.loop_wait),
        retry_timeout: asked.retry_timeout.unwrap_or(local.retry_timeout),
    };
    if t.ttl < MIN_TTL {
        return Err(Refused {
            key: "ttl",
            value: t.ttl,
            rule: format!("must be at least {} (etcd's shortest lease)", show(MIN_TTL)),
        });
    }
    for (key, value) in [("loop_wait", t.loop_wait), ("retry_timeout", t.retry_timeout)] {
        if value < MIN_STEP {
            return Err(Refused { key, value, rule: format!("must be at least {}", show(MIN_STEP)) });
        }
    }
    let mut adjusted = Vec::new();
    if t.loop_wait + 2 * t.retry_timeout > t.ttl {
        let to = t.ttl.saturating_sub(2 * t.retry_timeout).max(MIN_STEP);
        adjusted.push(Adjusted { key: "loop_wait", from: t.loop_wait, to });
        t.loop_wait = to;
    }
    if t.loop_wait + 2 * t.retry_timeout > t.ttl {
        let to = (t.ttl - t.loop_wait) / 2;
        adjusted.push(Adjusted { key: "retry_timeout", from: t.retry_timeout, to });
        t.retry_timeout = to;
    }
    // A lease renewal must end within retry_timeout (`LeaseView::fence_at`).
    if request_timeout > t.retry_timeout {
        return Err(Refused {
            key: "retry_timeout",
            value: t.retry_timeout,
            rule: format!(
                "must be at least this member's etcd.request_timeout ({}){}",
                show(request_timeout),
                if adjusted.is_empty() { "" } else { " once lowered to keep loop_wait + 2 * retry_timeout <= ttl" }
            ),
        });
    }
    Ok((t, adjusted))
}

/// How long a lease may cover a primary that this member cannot see any more: the `ttl` in
/// force, or the granted TTL of the last leader lease seen if that is longer (its holder may
/// have taken it with another `ttl`: Patroni's minimum is 20 s, a primary keeps the lease it
/// has when `ttl` changes, and a member may not have read a change yet).
pub fn cover(ttl: Duration, leader_lease_ttl: Option<Duration>) -> Duration {
    leader_lease_ttl.map_or(ttl, |l| l.max(ttl))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ttl: u64, lw: u64, rt: u64) -> Timings {
        Timings {
            ttl: Duration::from_millis(ttl),
            loop_wait: Duration::from_millis(lw),
            retry_timeout: Duration::from_millis(rt),
        }
    }

    fn ask(ttl: Option<u64>, lw: Option<u64>, rt: Option<u64>) -> Asked {
        Asked {
            ttl: ttl.map(Duration::from_millis),
            loop_wait: lw.map(Duration::from_millis),
            retry_timeout: rt.map(Duration::from_millis),
        }
    }

    const RT: Duration = Duration::from_millis(500);

    #[test]
    fn the_cluster_key_wins_over_the_local_file_key_by_key() {
        let local = t(3000, 1000, 1000);
        assert_eq!(in_force(local, &Asked::default(), RT), Ok((local, vec![])));
        assert_eq!(
            in_force(local, &ask(Some(20_000), Some(1000), Some(5000)), RT),
            Ok((t(20_000, 1000, 5000), vec![]))
        );
        assert_eq!(in_force(local, &ask(Some(4000), None, None), RT), Ok((t(4000, 1000, 1000), vec![])));
    }

    #[test]
    fn a_key_that_breaks_the_rule_is_adjusted_as_patroni_does_loop_wait_first() {
        let local = t(3000, 1000, 1000);
        // Patroni's own example: ttl 20, loop_wait 10, retry_timeout 10 -> loop_wait to the
        // minimum, then retry_timeout to (ttl - loop_wait) / 2.
        let (got, notes) = in_force(local, &ask(Some(20_000), Some(10_000), Some(10_000)), RT).unwrap();
        assert_eq!(got, t(20_000, 100, 9950));
        assert_eq!(notes.iter().map(|a| a.key).collect::<Vec<_>>(), ["loop_wait", "retry_timeout"]);
        assert!(got.loop_wait + 2 * got.retry_timeout <= got.ttl);
        // Lowering loop_wait alone is enough.
        let (got, notes) = in_force(local, &ask(Some(2000), Some(1000), Some(500)), RT).unwrap();
        assert_eq!(got, t(2000, 1000, 500));
        assert!(notes.is_empty());
        let (got, notes) = in_force(local, &ask(Some(2000), Some(1500), Some(500)), RT).unwrap();
        assert_eq!(got, t(2000, 1000, 500));
        assert_eq!(
            notes,
            vec![Adjusted { key: "loop_wait", from: Duration::from_millis(1500), to: Duration::from_millis(1000) }]
        );
    }

    #[test]
    fn timings_that_cannot_work_are_refused_with_the_key_the_value_and_the_rule() {
        let local = t(3000, 1000, 1000);
        let e = in_force(local, &ask(Some(1000), None, None), RT).unwrap_err();
        assert_eq!(e.to_string(), "config.ttl (1s): must be at least 2s (etcd's shortest lease)");
        let e = in_force(local, &ask(None, Some(50), None), RT).unwrap_err();
        assert_eq!(e.key, "loop_wait");
        let e = in_force(local, &ask(None, None, Some(400)), RT).unwrap_err();
        assert_eq!(
            e.to_string(),
            "config.retry_timeout (400ms): must be at least this member's etcd.request_timeout (500ms)"
        );
        // Adjusted below the request timeout: refused, and said why.
        let e = in_force(local, &ask(Some(2000), Some(1000), Some(1000)), Duration::from_secs(1)).unwrap_err();
        assert!(e.rule.contains("once lowered"), "{e}");
    }

    #[test]
    fn the_cover_is_the_longer_of_the_ttl_and_the_leader_lease() {
        let s = Duration::from_secs;
        assert_eq!(cover(s(3), None), s(3));
        assert_eq!(cover(s(3), Some(s(20))), s(20));
        assert_eq!(cover(s(30), Some(s(20))), s(30));
    }
}
