//! Which member takes the next scheduled backup, and whether it is due: pure functions of one
//! etcd snapshot and the clock. Every member runs the same code on the same snapshot, so they
//! agree on the taker; where they do not (clocks apart, views from different moments, configs
//! that differ between members) the lock key decides, since it is created only if absent and
//! only while `outrigger/backup/last` is unchanged.

use chrono::{DateTime, Utc};

use super::schedule::Schedule;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Full,
    Delta,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Full => "full",
            Kind::Delta => "delta",
        }
    }
}

/// `backup_from`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackupFrom {
    /// The leader takes every backup.
    Primary,
    /// A streaming replica takes it (the most advanced one, then by name); the leader does
    /// when no replica can.
    Replica,
}

/// One member as the snapshot shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub name: String,
    /// Its `members/<name>` says it is a replica that is streaming or replaying.
    pub healthy_replica: bool,
    /// Replayed position (`xlog_location`), for ranking replicas.
    pub position: u64,
    /// Its wal-shipper daemon publishes a status (is running) and may take backups.
    pub shipper: bool,
    /// Scheduled backups it tried and failed since its last success.
    pub failures: u32,
}

/// What the schedule needs of the cluster's newest backups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Last {
    pub any: Option<DateTime<Utc>>,
    pub full: Option<DateTime<Utc>>,
}

/// The schedule as configured.
#[derive(Debug, Clone)]
pub struct Policy {
    pub from: BackupFrom,
    pub full: Schedule,
    pub delta: Option<Schedule>,
}

/// A member whose daemon failed this many scheduled backups in a row is passed over while
/// another can take them (a replica whose disk is broken must not stop every backup).
pub const FAILURES_BEFORE_FALLBACK: u32 = 2;

/// The backup the schedule asks for at `now`, if any: full when the full schedule says so or
/// there is no full backup yet, else delta when the delta schedule says so.
pub fn due(policy: &Policy, last: Last, now: DateTime<Utc>) -> Option<Kind> {
    if last.full.is_none() || policy.full.due(last.full, now) {
        return Some(Kind::Full);
    }
    let since = last.any.max(last.full);
    policy.delta.as_ref().filter(|d| d.due(since, now)).map(|_| Kind::Delta)
}

/// The member that should take the next backup, if any can.
pub fn taker<'a>(from: BackupFrom, leader: Option<&'a str>, members: &'a [Member]) -> Option<&'a str> {
    let can = |m: &&Member| m.shipper;
    let fit = |m: &&Member| m.shipper && m.failures < FAILURES_BEFORE_FALLBACK;
    let leader_member = leader.and_then(|l| members.iter().find(|m| m.name == l));
    let replicas = || members.iter().filter(|m| m.healthy_replica && Some(m.name.as_str()) != leader);
    let best = |it: &mut dyn Iterator<Item = &'a Member>| {
        it.max_by(|a, b| a.position.cmp(&b.position).then_with(|| b.name.cmp(&a.name))).map(|m| m.name.as_str())
    };
    match from {
        BackupFrom::Primary => leader_member.filter(fit).or_else(|| leader_member.filter(can)).map(|m| m.name.as_str()),
        BackupFrom::Replica => best(&mut replicas().filter(fit))
            .or_else(|| leader_member.filter(fit).map(|m| m.name.as_str()))
            .or_else(|| best(&mut replicas().filter(can)))
            .or_else(|| leader_member.filter(can).map(|m| m.name.as_str())),
    }
}

/// What this member does now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nothing is due.
    Idle,
    /// A backup is due but not ours to take now (the reason says why).
    Wait(String),
    /// Try to take the lock and the backup.
    Take(Kind),
}

/// The one decision of the scheduling loop.
pub fn decide(
    policy: &Policy,
    me: &str,
    leader: Option<&str>,
    members: &[Member],
    last: Last,
    lock_holder: Option<&str>,
    now: DateTime<Utc>,
) -> Decision {
    if let Some(h) = lock_holder {
        return Decision::Wait(format!("a backup is running on {h}"));
    }
    let Some(kind) = due(policy, last, now) else { return Decision::Idle };
    match taker(policy.from, leader, members) {
        Some(t) if t == me => Decision::Take(kind),
        Some(t) => Decision::Wait(format!("{t} takes the {} backup", kind.as_str())),
        None => Decision::Wait("no member can take a backup (no leader or no wal-shipper running)".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().expect("time")
    }

    fn m(name: &str, replica: bool, position: u64) -> Member {
        Member { name: name.into(), healthy_replica: replica, position, shipper: true, failures: 0 }
    }

    fn policy(from: BackupFrom) -> Policy {
        Policy { from, full: Schedule::parse("24h").unwrap(), delta: Some(Schedule::parse("1h").unwrap()) }
    }

    #[test]
    fn the_first_backup_is_full_then_deltas_until_the_full_schedule_comes_round() {
        let p = policy(BackupFrom::Primary);
        let now = t("2026-12-03T12:00:00Z");
        assert_eq!(due(&p, Last { any: None, full: None }, now), Some(Kind::Full));
        let full = Some(t("2026-12-03T11:30:00Z"));
        assert_eq!(due(&p, Last { any: full, full }, now), None);
        let full = Some(t("2026-12-03T10:30:00Z"));
        assert_eq!(due(&p, Last { any: full, full }, now), Some(Kind::Delta));
        assert_eq!(due(&p, Last { any: Some(t("2026-12-03T11:10:00Z")), full }, now), None);
        assert_eq!(due(&p, Last { any: now.into(), full: Some(t("2026-12-02T11:00:00Z")) }, now), Some(Kind::Full));
        let no_delta = Policy { delta: None, ..p };
        assert_eq!(
            due(&no_delta, Last { any: Some(t("2026-12-03T10:30:00Z")), full: Some(t("2026-12-03T10:30:00Z")) }, now),
            None
        );
    }

    #[test]
    fn the_leader_takes_backups_from_the_primary_and_nobody_else_does() {
        let ms = [m("n1", false, 100), m("n2", true, 90)];
        assert_eq!(taker(BackupFrom::Primary, Some("n1"), &ms), Some("n1"));
        assert_eq!(taker(BackupFrom::Primary, None, &ms), None);
        let no_shipper = [Member { shipper: false, ..m("n1", false, 100) }, m("n2", true, 90)];
        assert_eq!(taker(BackupFrom::Primary, Some("n1"), &no_shipper), None);
    }

    #[test]
    fn the_most_advanced_replica_takes_backups_from_a_replica_and_the_leader_is_the_fallback() {
        let ms = [m("n1", false, 100), m("n2", true, 90), m("n3", true, 95), m("n4", true, 95)];
        assert_eq!(taker(BackupFrom::Replica, Some("n1"), &ms), Some("n3"));
        let failing = [m("n1", false, 100), Member { failures: 2, ..m("n2", true, 90) }];
        assert_eq!(taker(BackupFrom::Replica, Some("n1"), &failing), Some("n1"));
        let only_leader = [m("n1", false, 100), Member { healthy_replica: false, ..m("n2", false, 0) }];
        assert_eq!(taker(BackupFrom::Replica, Some("n1"), &only_leader), Some("n1"));
        // Every one failing: still try rather than never back up again.
        let all_failing = [Member { failures: 5, ..m("n1", false, 100) }, Member { failures: 3, ..m("n2", true, 9) }];
        assert_eq!(taker(BackupFrom::Replica, Some("n1"), &all_failing), Some("n2"));
    }

    #[test]
    fn a_held_lock_stops_every_member_and_only_the_taker_takes() {
        let p = policy(BackupFrom::Primary);
        let ms = [m("n1", false, 100), m("n2", true, 90)];
        let none = Last { any: None, full: None };
        let now = t("2026-12-03T12:00:00Z");
        assert_eq!(decide(&p, "n1", Some("n1"), &ms, none, None, now), Decision::Take(Kind::Full));
        assert!(
            matches!(decide(&p, "n2", Some("n1"), &ms, none, None, now), Decision::Wait(w) if w.contains("n1 takes"))
        );
        assert!(
            matches!(decide(&p, "n1", Some("n1"), &ms, none, Some("n2"), now), Decision::Wait(w) if w.contains("running on n2"))
        );
        let recent = Last { any: Some(now), full: Some(now) };
        assert_eq!(decide(&p, "n1", Some("n1"), &ms, recent, None, now), Decision::Idle);
    }
}
