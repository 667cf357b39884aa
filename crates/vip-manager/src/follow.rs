//! etcd-follow mode's decision (pure): should this node hold the VIP, given what it knows of
//! the leader key?
//!
//! cybertec vip-manager's semantics: hold the VIP exactly while the key's value equals the
//! trigger value (our member name). What we know of the key is one of three things: nothing yet
//! (never hold on a guess), its current value (from a read or the watch), or that etcd has been
//! unreachable since some moment, with the last value we saw. The last case is a policy:
//! `Release` drops the VIP once etcd has been unreachable for the grace period (a node cut off
//! from etcd cannot know whether it still leads, and the new leader's node may hold the VIP
//! already); `Keep` rides the outage out on the last value.

use std::fmt;
use std::time::{Duration, Instant};

use crate::config::Unreachable;

/// What we know of the leader key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum View {
    /// Not read yet.
    Unknown,
    /// The key's value (None: no leader).
    Known(Option<Vec<u8>>),
    /// etcd could not be reached since `since`; `last` is the last value we knew.
    Unreachable { since: Instant, last: Option<Option<Vec<u8>>> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    NotRead,
    Leader,
    OtherLeader,
    NoLeader,
    /// Unreachable, but within the grace period: the last value decides.
    WithinGrace,
    /// Unreachable and the policy is keep: the last value decides.
    Keep,
    /// Unreachable past the grace period and the policy is release.
    Released,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reason::NotRead => "leader key not read yet",
            Reason::Leader => "the leader key names this member",
            Reason::OtherLeader => "the leader key names another member",
            Reason::NoLeader => "there is no leader key",
            Reason::WithinGrace => "etcd unreachable, within the grace period: keeping the last known state",
            Reason::Keep => "etcd unreachable, policy keep: keeping the last known state",
            Reason::Released => "etcd unreachable past the grace period, policy release",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub hold: bool,
    pub reason: Reason,
    /// When to decide again although nothing new arrives (the end of the grace period).
    pub recheck_at: Option<Instant>,
}

fn names_us(value: &Option<Vec<u8>>, member: &[u8]) -> (bool, Reason) {
    match value {
        Some(v) if v.as_slice() == member => (true, Reason::Leader),
        Some(_) => (false, Reason::OtherLeader),
        None => (false, Reason::NoLeader),
    }
}

pub fn decide(view: &View, member: &[u8], policy: Unreachable, grace: Duration, now: Instant) -> Decision {
    match view {
        View::Unknown => Decision { hold: false, reason: Reason::NotRead, recheck_at: None },
        View::Known(v) => {
            let (hold, reason) = names_us(v, member);
            Decision { hold, reason, recheck_at: None }
        }
        View::Unreachable { since, last } => {
            let last_hold = last.as_ref().is_some_and(|v| names_us(v, member).0);
            let grace_ends = *since + grace;
            match policy {
                Unreachable::Keep => Decision { hold: last_hold, reason: Reason::Keep, recheck_at: None },
                Unreachable::Release if now < grace_ends => {
                    Decision { hold: last_hold, reason: Reason::WithinGrace, recheck_at: Some(grace_ends) }
                }
                Unreachable::Release => Decision { hold: false, reason: Reason::Released, recheck_at: None },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let me = b"n1".as_slice();
        let ours = Some(Some(b"n1".to_vec()));
        let theirs = Some(Some(b"n2".to_vec()));
        let unreachable = |last: Option<Option<Vec<u8>>>| View::Unreachable { since: t0, last };
        use Reason::*;
        use Unreachable::{Keep as K, Release as R};
        let cases: Vec<(&str, View, Unreachable, u64, u64, bool, Reason)> = vec![
            ("nothing read yet: never hold on a guess", View::Unknown, R, 0, 0, false, NotRead),
            ("key names us", View::Known(Some(b"n1".to_vec())), R, 0, 0, true, Leader),
            ("key names another member", View::Known(Some(b"n2".to_vec())), K, 0, 0, false, OtherLeader),
            ("value is compared exactly", View::Known(Some(b"n10".to_vec())), K, 0, 0, false, OtherLeader),
            ("no key", View::Known(None), R, 0, 0, false, NoLeader),
            ("release with no grace: drop at once", unreachable(ours.clone()), R, 0, 0, false, Released),
            ("release within grace keeps ours", unreachable(ours.clone()), R, 3, 1, true, WithinGrace),
            ("release after grace drops", unreachable(ours.clone()), R, 3, 3, false, Released),
            ("keep holds ours forever", unreachable(ours.clone()), K, 0, 1000, true, Keep),
            ("keep does not take what was not ours", unreachable(theirs), K, 0, 10, false, Keep),
            ("keep with nothing ever read", unreachable(None), K, 0, 10, false, Keep),
        ];
        for (name, view, policy, grace, at, hold, reason) in cases {
            let d = decide(&view, me, policy, s(grace), t0 + s(at));
            assert_eq!((d.hold, d.reason), (hold, reason), "case {name:?}");
        }
        let d = decide(&unreachable(ours), me, R, s(3), t0 + s(1));
        assert_eq!(d.recheck_at, Some(t0 + s(3)), "decide again when the grace ends");
    }
}
