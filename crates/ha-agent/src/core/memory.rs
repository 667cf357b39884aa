//! What the agent remembers between cycles, as a pure value.
//!
//! The shell (`crate::run`) and the simulation (`tests/simulation.rs`) both keep one
//! [`Memory`] per agent and update it the same way: [`Memory::observe`] with what a cycle saw
//! (before deciding), [`Memory::record`] with the typed [`Outcome`] of each action. What the
//! core decides from ([`Recent`]) is derived here and nowhere else, so the simulation proves
//! the daemon's bookkeeping, not a copy of it.

use std::collections::BTreeMap;
use std::time::Duration;

use super::observed::{Moment, PeerRef, PgView, Recent};
use super::view::ClusterView;

/// The members of a `failsafe` value other than `me`, with an address.
pub(super) fn failsafe_peers(me: &str, f: &[(String, String)]) -> Vec<PeerRef> {
    f.iter().filter(|(n, u)| n != me && !u.is_empty()).map(|(n, u)| PeerRef::new(n, u)).collect()
}

/// How long a member seen in etcd is still asked in a leader race after its key vanished.
pub const KNOWN_PEER_TTL: Duration = Duration::from_secs(600);
/// pg_rewind failures (other than its source going away) before the rewind counts as failed.
pub const REWIND_ATTEMPTS: u32 = 3;

/// Why an action on PostgreSQL failed, as far as the next decision cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgErrorKind {
    /// The server the action reads from (pg_rewind's or pg_basebackup's source) could not be
    /// reached afterwards: it went away under us, and the next attempt against whoever leads
    /// may work.
    SourceUnreachable,
    /// The tool did not finish within its time limit.
    TimedOut,
    /// Anything else: the tool ran and failed.
    Failed,
}

/// The typed result of an action of the shell, fed back with [`Memory::record`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// PostgreSQL started (as primary or replica) and answers.
    Started,
    /// PostgreSQL did not start (it exited, or did not answer within `start_timeout`).
    StartFailed,
    /// postgresql.conf now points at `upstream` (`None`: no upstream, a primary or a replica
    /// waiting for a leader).
    ConfiguredUpstream(Option<String>),
    /// A new data directory, cloned (or reinitialised) from a member; it will follow `upstream`.
    Cloned {
        upstream: Option<String>,
    },
    /// The data directory was removed (reinit): the next cycle clones.
    DataRemoved,
    /// pg_rewind is about to run: the data directory is known to have diverged.
    RewindStarted,
    Rewound {
        leader: String,
    },
    RewindFailed(PgErrorKind),
    /// Diverged, and nothing may repair it: PostgreSQL stays stopped.
    StayedStopped,
    /// We stopped our primary for a switchover and released the key.
    SteppedDown,
    /// Promoted to primary (or bootstrapped one).
    Promoted,
    /// `pre_promote` failed: the promotion was cancelled and the leader key given back.
    PrePromoteFailed,
}

/// The agent's memory between cycles.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Memory {
    recent: Recent,
    /// Members seen as non-leaders: name → (api_url, when).
    known: BTreeMap<String, (String, Moment)>,
    /// Members whose slots we manage: name → last seen.
    slot_members: BTreeMap<String, Moment>,
    /// pg_rewind failures in a row that were not the source going away.
    rewind_failures: u32,
    /// The member PostgreSQL is configured to stream from.
    upstream: Option<String>,
    /// failsafe_mode: when the last accepted `POST /failsafe` was (kept after it is
    /// superseded, so that the REST API's record of it is not taken again), and the revision
    /// of the first etcd read after it (`None`: not read since).
    failsafe_last_at: Option<Moment>,
    failsafe_read_rev: Option<i64>,
    /// The leader lease whose granted TTL is in `recent.leader_lease_ttl`.
    leader_lease: Option<i64>,
}

impl Memory {
    /// A fresh memory; `upstream` is what postgresql.conf says (read back after a restart).
    pub fn new(upstream: Option<String>) -> Self {
        Self { upstream, ..Self::default() }
    }

    /// What the core decides from.
    pub fn recent(&self) -> &Recent {
        &self.recent
    }

    /// Another member's leader lease whose granted TTL is not known yet: the shell asks etcd
    /// and reports with [`Memory::leader_lease_learned`].
    pub fn leader_lease_unknown(&self, me: &str, view: &ClusterView) -> Option<i64> {
        let l = view.leader.as_ref().filter(|l| l.name != me && l.lease != 0)?;
        (self.leader_lease != Some(l.lease)).then_some(l.lease)
    }

    /// etcd granted the leader lease `lease` for `ttl`. Until a lease's TTL is learned, the
    /// last one learned stays (a longer one errs on the safe side: members wait longer).
    pub fn leader_lease_learned(&mut self, lease: i64, ttl: Duration) {
        self.leader_lease = Some(lease);
        self.recent.leader_lease_ttl = Some(ttl);
    }

    /// The member PostgreSQL is configured to stream from.
    pub fn upstream(&self) -> Option<&str> {
        self.upstream.as_deref()
    }

    /// Updates what the agent knows from one cycle's observations, before it decides.
    /// `view` is `None` when etcd could not be read.
    pub fn observe(&mut self, me: &str, view: Option<&ClusterView>, pg: &PgView, now: Moment) {
        if let Some(v) = view {
            self.recent.started_at.get_or_insert(now);
            // failsafe_mode: a POST is superseded by a leader key written after it (the
            // sender runs on a lease again, or someone took over while it could not stop
            // them): any key whose revision is past the first read after the POST. Keys
            // written between the POST and that read count as older: never too early.
            if self.recent.failsafe_post.is_some() {
                match self.failsafe_read_rev {
                    None => self.failsafe_read_rev = Some(v.revision),
                    Some(r) if v.leader.as_ref().is_some_and(|l| l.mod_revision > r) => {
                        self.recent.failsafe_post = None;
                    }
                    Some(_) => {}
                }
            }
            self.recent.failsafe_members = v.failsafe.as_deref().map(|f| failsafe_peers(me, f));
            let leader = v.leader.as_ref().map(|l| l.name.as_str());
            for m in &v.members {
                if m.name == me {
                    continue;
                }
                self.slot_members.insert(m.name.clone(), now);
                if Some(m.name.as_str()) == leader {
                    self.known.remove(&m.name);
                } else if !m.api_url.is_empty() {
                    self.known.insert(m.name.clone(), (m.api_url.clone(), now));
                }
            }
            self.known.retain(|_, (_, seen)| now.since(*seen) < KNOWN_PEER_TTL);
            self.recent.known_peers = self.known.iter().map(|(n, (u, _))| PeerRef::new(n, u)).collect();
            if let Some(l) = &v.leader {
                self.recent.former_leader = v
                    .member(&l.name)
                    .filter(|m| m.name != me && !m.api_url.is_empty())
                    .map(|m| PeerRef { former_leader: true, ..PeerRef::new(&m.name, &m.api_url) })
                    .or_else(|| self.recent.former_leader.take().filter(|f| f.name == l.name));
            }
        }
        let i_lead = view.and_then(|v| v.leader.as_ref()).is_some_and(|l| l.name == me);
        if i_lead && !matches!(pg, PgView::Running(_)) {
            self.recent.primary_down_since.get_or_insert(now);
        } else {
            self.recent.primary_down_since = None;
        }
        match view.map(|v| v.leader.is_none()) {
            Some(true) => {
                self.recent.unlocked_since.get_or_insert(now);
            }
            Some(false) => self.recent.unlocked_since = None,
            // etcd unreadable: keep what we knew.
            None => {}
        }
        if matches!(pg, PgView::Running(_)) {
            self.recent.stepped_down_at = None;
        }
        if matches!(pg, PgView::Running(r) if r.streaming) {
            self.recent.streamed_at = Some(now);
        }
    }

    /// Records the outcome of an action.
    pub fn record(&mut self, outcome: &Outcome, now: Moment) {
        match outcome {
            Outcome::Started => self.recent.start_failed_at = None,
            Outcome::StartFailed => self.recent.start_failed_at = Some(now),
            Outcome::ConfiguredUpstream(up) => self.upstream = up.clone(),
            Outcome::Cloned { upstream } => {
                self.forget_data();
                self.upstream = upstream.clone();
            }
            Outcome::DataRemoved => {
                self.forget_data();
                self.upstream = None;
            }
            Outcome::RewindStarted => self.recent.diverged = true,
            Outcome::Rewound { leader } => {
                self.recent.diverged = false;
                self.recent.rewind_failed = false;
                self.rewind_failures = 0;
                self.upstream = Some(leader.clone());
            }
            Outcome::RewindFailed(kind) => {
                self.recent.diverged = true;
                // Only repeated failures are a failed rewind: the source may have been fenced
                // or restarted under it, which the next attempt (against whoever leads) survives.
                if *kind != PgErrorKind::SourceUnreachable {
                    self.rewind_failures += 1;
                }
                if self.rewind_failures >= REWIND_ATTEMPTS {
                    self.recent.rewind_failed = true;
                }
            }
            Outcome::StayedStopped => self.recent.diverged = true,
            Outcome::SteppedDown => {
                self.upstream = None;
                self.recent.stepped_down_at = Some(now);
            }
            Outcome::PrePromoteFailed => self.recent.pre_promote_failed_at = Some(now),
            Outcome::Promoted => {
                self.recent.pre_promote_failed_at = None;
                self.upstream = None;
                // Whoever confirmed itself to us before is not the leader any more (Patroni
                // resets its failsafe state on promotion too).
                self.recent.failsafe_post = None;
            }
        }
    }

    /// failsafe_mode: this leader wrote the `failsafe` key. What it asks when it loses etcd is
    /// what the others read from now on, not the value its own last read returned (the
    /// simulation found a leader that wrote every member into the key after a read that
    /// listed only itself, lost etcd, and asked nobody while the others could race).
    pub fn failsafe_written(&mut self, me: &str, written: &[(String, String)]) {
        self.recent.failsafe_members = Some(failsafe_peers(me, written));
    }

    /// failsafe_mode: we accepted `leader`'s `POST /failsafe` at `at` (the later one counts).
    pub fn failsafe_posted(&mut self, leader: &str, at: Moment) {
        if self.failsafe_last_at.is_none_or(|t| t < at) {
            self.recent.failsafe_post = Some((leader.to_owned(), at));
            self.failsafe_last_at = Some(at);
            self.failsafe_read_rev = None;
        }
    }

    /// Whether the last rewind failure made the rewind count as failed (for the log level).
    pub fn rewind_gave_up(&self) -> bool {
        self.recent.rewind_failed
    }

    /// A new or removed data directory: what we knew about the old one no longer holds.
    fn forget_data(&mut self) {
        self.recent = Recent {
            known_peers: std::mem::take(&mut self.recent.known_peers),
            former_leader: self.recent.former_leader.take(),
            started_at: self.recent.started_at,
            failsafe_members: self.recent.failsafe_members.take(),
            failsafe_post: self.recent.failsafe_post.take(),
            ..Recent::default()
        };
        self.rewind_failures = 0;
    }

    /// Members whose slot the leader keeps (seen within `member_slots_ttl`).
    pub fn slot_members(&self) -> impl Iterator<Item = &str> {
        self.slot_members.keys().map(String::as_str)
    }

    /// Members gone (not in `present`) for `ttl` (`member_slots_ttl`): their slots may be
    /// dropped. They are forgotten by [`Memory::forget_slot_member`] once handled.
    pub fn departed_slot_members(&self, present: &[&str], now: Moment, ttl: Duration) -> Vec<String> {
        self.slot_members
            .iter()
            .filter(|(n, seen)| !present.contains(&n.as_str()) && now.since(**seen) >= ttl)
            .map(|(n, _)| n.clone())
            .collect()
    }

    pub fn forget_slot_member(&mut self, name: &str) {
        self.slot_members.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Moment {
        Moment::from_millis(ms)
    }

    fn member(name: &str) -> crate::core::Member {
        crate::core::Member {
            name: name.into(),
            conn_url: format!("postgres://{name}:5432/postgres"),
            api_url: format!("http://{name}:8008/patroni"),
            role: crate::core::Role::Replica,
            running: true,
            lsn: None,
            timeline: None,
            tags: crate::core::Tags::default(),
            lease: 1,
        }
    }

    #[test]
    fn rewind_counts_as_failed_only_after_three_failures_that_were_not_the_source_going_away() {
        let mut m = Memory::default();
        m.record(&Outcome::RewindFailed(PgErrorKind::Failed), at(1));
        m.record(&Outcome::RewindFailed(PgErrorKind::SourceUnreachable), at(2));
        m.record(&Outcome::RewindFailed(PgErrorKind::TimedOut), at(3));
        assert!(!m.recent().rewind_failed);
        assert!(m.recent().diverged);
        m.record(&Outcome::RewindFailed(PgErrorKind::Failed), at(4));
        assert!(m.recent().rewind_failed);
        m.record(&Outcome::Rewound { leader: "n2".into() }, at(5));
        assert!(!m.recent().rewind_failed && !m.recent().diverged);
        assert_eq!(m.upstream(), Some("n2"));
    }

    #[test]
    fn the_last_leader_is_remembered_after_its_keys_vanish() {
        let mut m = Memory::default();
        let mut v = ClusterView::empty();
        v.members.push(member("n2"));
        v.leader = Some(crate::core::LeaderKey { name: "n2".into(), lease: 1, mod_revision: 1 });
        m.observe("n1", Some(&v), &PgView::NoData, at(1));
        assert!(m.recent().known_peers.is_empty(), "the leader is not among the known peers");
        let f = m.recent().former_leader.clone().expect("former leader");
        assert!(f.former_leader && f.name == "n2");
        m.observe("n1", Some(&ClusterView::empty()), &PgView::NoData, at(2));
        assert_eq!(m.recent().former_leader.as_ref().map(|p| p.name.as_str()), Some("n2"));
        let mut me = ClusterView::empty();
        me.leader = Some(crate::core::LeaderKey { name: "n1".into(), lease: 1, mod_revision: 2 });
        m.observe("n1", Some(&me), &PgView::NoData, at(3));
        assert_eq!(m.recent().former_leader, None, "we lead now");
    }

    #[test]
    fn a_new_data_directory_forgets_the_old_ones_failures_but_keeps_known_peers() {
        let mut m = Memory::default();
        let mut v = ClusterView::empty();
        v.members.push(member("n2"));
        m.observe("n1", Some(&v), &PgView::NoData, at(1));
        m.record(&Outcome::StartFailed, at(2));
        m.record(&Outcome::StayedStopped, at(3));
        m.record(&Outcome::Cloned { upstream: Some("n2".into()) }, at(4));
        assert_eq!(m.recent().start_failed_at, None);
        assert!(!m.recent().diverged);
        assert_eq!(m.recent().known_peers.len(), 1);
        assert_eq!(m.upstream(), Some("n2"));
    }

    #[test]
    fn known_peers_outlive_their_member_keys_for_a_while() {
        let mut m = Memory::default();
        let mut v = ClusterView::empty();
        v.members.push(member("n2"));
        m.observe("n1", Some(&v), &PgView::NoData, at(1));
        let empty = ClusterView::empty();
        m.observe("n1", Some(&empty), &PgView::NoData, at(1 + 599_000));
        assert_eq!(m.recent().known_peers.len(), 1, "still asked in a race");
        m.observe("n1", Some(&empty), &PgView::NoData, at(1 + 600_000));
        assert!(m.recent().known_peers.is_empty(), "forgotten after KNOWN_PEER_TTL");
    }

    #[test]
    fn a_failsafe_post_holds_until_a_leader_key_written_after_the_first_read_that_followed_it() {
        let mut m = Memory::default();
        let pg = PgView::NoData;
        let view = |rev: i64, leader_rev: Option<i64>| {
            let mut v = ClusterView::empty();
            v.revision = rev;
            v.leader = leader_rev.map(|r| crate::core::LeaderKey { name: "n1".into(), lease: 7, mod_revision: r });
            v
        };
        m.failsafe_posted("n1", at(100));
        assert!(m.recent().failsafe_post.is_some());
        // The first read after it: revision 10; a key written at 9 (or 10) is older.
        m.observe("n2", Some(&view(10, Some(9))), &pg, at(200));
        m.observe("n2", Some(&view(12, Some(10))), &pg, at(300));
        assert!(m.recent().failsafe_post.is_some());
        // A key written after that read supersedes it, and the same POST is not taken again.
        m.observe("n2", Some(&view(13, Some(11))), &pg, at(400));
        assert_eq!(m.recent().failsafe_post, None);
        m.failsafe_posted("n1", at(100));
        assert_eq!(m.recent().failsafe_post, None);
        // A newer POST counts again.
        m.failsafe_posted("n1", at(500));
        assert_eq!(m.recent().failsafe_post, Some(("n1".to_owned(), at(500))));
    }
}
