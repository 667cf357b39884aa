//! What one HA cycle observed: the cluster (from etcd), local PostgreSQL, our lease, answers
//! from peers, a few facts about our own recent actions, the settings and the time.

use std::time::Duration;

use super::view::{ClusterView, DynConfig, Tags};
use crate::config::Timings;

/// A point on the agent's monotonic clock, in milliseconds from an arbitrary origin.
///
/// The core never reads a clock; the shell passes `now` in. Monotonic time is what lease
/// arithmetic needs: a wall-clock jump must not make a lease look younger than it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Moment(u64);

impl Moment {
    pub const fn from_millis(ms: u64) -> Self {
        Self(ms)
    }

    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// Time from `earlier` to `self`, zero if `earlier` is later.
    pub fn since(self, earlier: Moment) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }

    pub fn plus(self, d: Duration) -> Moment {
        Moment(self.0.saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)))
    }

    pub fn minus(self, d: Duration) -> Moment {
        Moment(self.0.saturating_sub(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)))
    }
}

/// Our etcd lease as the lease keeper last confirmed it.
///
/// `expires_at` is the *send* time of the last keep-alive (or grant) that etcd answered, plus
/// the TTL it answered with. etcd received that request after we sent it, so its own expiry is
/// no earlier than this: the estimate errs on the safe side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LeaseView {
    pub id: Option<i64>,
    pub expires_at: Moment,
    /// When etcd last said a lease of ours was gone before it could have expired: revoked early
    /// (etcd 3.4 before 3.4.31 revokes every lease when a stalled former raft leader wakes,
    /// etcd #15247). The leader's lease went at the same moment, and its primary may not have
    /// noticed yet.
    pub revoked_at: Option<Moment>,
    /// failsafe_mode: until when a primary that cannot reach etcd may go on taking writes,
    /// because every member listed in `/failsafe` accepted its `POST /failsafe` (sent at `s`:
    /// `s + ttl - retry_timeout`; each of them then stays out of any leader race until at
    /// least `s + ttl`).
    pub failsafe_until: Option<Moment>,
    /// The `retry_timeout` the keeper fences this lease with (the one it was granted under; a
    /// primary keeps its lease through a change of the timings).
    pub margin: Duration,
}

impl LeaseView {
    pub const NONE: LeaseView =
        LeaseView { id: None, expires_at: Moment(0), revoked_at: None, failsafe_until: None, margin: Duration::ZERO };

    /// Whether a lease of ours was revoked early less than `within` ago.
    pub fn revoked_within(&self, now: Moment, within: Duration) -> bool {
        self.revoked_at.is_some_and(|at| now.since(at) < within)
    }

    /// When a primary holding this lease must have stopped accepting writes: `retry_timeout`
    /// before the earliest possible expiry, leaving that long for the fence itself (an
    /// immediate stop takes well under a second) and for clock-rate differences. The longer
    /// of the lease's own margin and `t`'s, so the loop never trusts a lease the keeper fences.
    pub fn fence_at(&self, t: &Timings) -> Moment {
        self.expires_at.minus(t.retry_timeout.max(self.margin))
    }

    /// Whether a primary may keep accepting writes at `now`: under this lease, or on
    /// failsafe_mode's proof.
    pub fn trusted(&self, now: Moment, t: &Timings) -> bool {
        self.held(now, t) || self.failsafe(now)
    }

    /// Whether the lease itself is trusted at `now` (what taking or keeping the leader key
    /// needs: the key lives on it).
    pub fn held(&self, now: Moment, t: &Timings) -> bool {
        self.id.is_some() && now < self.fence_at(t)
    }

    /// Whether the primary runs on failsafe_mode's proof alone: the lease is not trusted,
    /// every listed member accepted a `POST /failsafe` recently enough.
    pub fn failsafe(&self, now: Moment) -> bool {
        self.failsafe_until.is_some_and(|until| now < until)
    }
}

/// `Database cluster state` from pg_control.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterState {
    /// A primary shut down cleanly (its last record is the shutdown checkpoint).
    ShutDown,
    /// A standby shut down cleanly.
    ShutDownInRecovery,
    /// A primary that did not shut down (crash, kill -9, immediate stop).
    InProduction,
    /// A standby that did not shut down.
    InArchiveRecovery,
    /// Crashed during crash recovery or during shutdown.
    InCrashRecovery,
    ShuttingDown,
    Starting,
}

impl ClusterState {
    /// Whether the data directory was last used by a primary.
    pub fn was_primary(self) -> bool {
        matches!(self, ClusterState::ShutDown | ClusterState::InProduction | ClusterState::ShuttingDown)
    }
}

/// pg_control of a stopped cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Control {
    pub sysid: u64,
    pub state: ClusterState,
    /// `Latest checkpoint's TimeLineID` (or the minimum recovery point's, if later).
    pub timeline: u32,
    /// `Latest checkpoint location`: the start of the last record after a clean shutdown of
    /// a primary.
    pub checkpoint_lsn: u64,
    /// `wal_log_hints` is on or data checksums are enabled: pg_rewind can work.
    pub rewindable: bool,
}

/// A running PostgreSQL, from SQL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningPg {
    pub sysid: u64,
    /// `pg_is_in_recovery()` is false.
    pub primary: bool,
    pub timeline: u32,
    /// Flush LSN on a primary; max(receive, replay) on a replica.
    pub wal_position: u64,
    /// The member this replica is configured to stream from, as the shell last wrote it
    /// (`None`: no upstream, or not known after a restart of the agent).
    pub upstream: Option<String>,
    /// The walreceiver streams from `upstream` right now. PostgreSQL only streams from a
    /// server whose history contains ours, so such a replica has not diverged from it.
    pub streaming: bool,
    pub rewindable: bool,
}

/// Local PostgreSQL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgView {
    /// No data directory, or an empty one.
    NoData,
    Stopped(Control),
    /// The postmaster runs but does not answer SQL: starting up, in crash recovery, or hung.
    /// Unless it is a standby (`standby.signal` or `recovery.signal` in the data directory), it
    /// may accept writes from sessions it already has, or the moment it answers again: such a
    /// server is treated as a primary by the fence, the demote and the release rules.
    Starting {
        sysid: Option<u64>,
        standby: bool,
    },
    Running(RunningPg),
    /// A data directory we cannot use (pg_control unreadable, wrong version, ...).
    Unusable {
        why: String,
    },
}

impl PgView {
    /// Whether this PostgreSQL could acknowledge a write right now.
    pub fn writable(&self) -> bool {
        matches!(self, PgView::Running(r) if r.primary)
    }

    /// Whether this PostgreSQL may accept writes now or without further action of ours: a
    /// running primary, or a postmaster that runs without answering SQL and is not a standby.
    /// Such a server is never left running without a trusted lease, and the leader key is
    /// never given up while it runs.
    pub fn may_accept_writes(&self) -> bool {
        self.writable() || matches!(self, PgView::Starting { standby: false, .. })
    }

    pub fn sysid(&self) -> Option<u64> {
        match self {
            PgView::Stopped(c) => Some(c.sysid),
            PgView::Running(r) => Some(r.sysid),
            PgView::Starting { sysid, .. } => *sysid,
            PgView::NoData | PgView::Unusable { .. } => None,
        }
    }

    /// Whether the data directory was (or is) a primary's.
    pub fn was_primary(&self) -> bool {
        match self {
            PgView::Running(r) => r.primary,
            PgView::Stopped(c) => c.state.was_primary(),
            _ => false,
        }
    }
}

/// A peer's answer to `GET /patroni`, in core terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStatus {
    /// Not in recovery: it says it is a primary.
    pub primary: bool,
    pub wal_position: u64,
    pub timeline: Option<u32>,
    pub tags: Tags,
    pub watchdog_failed: bool,
    /// It saw its own lease revoked early less than a ttl ago (`lease_revoked_recently`).
    pub lease_revoked_recently: bool,
}

/// The keys a peer's answer is read against. Answers given while these were different are
/// void: a member may have led in between (taken the leader key, promoted, written commits
/// its voters acknowledged, and let go again), so its answer from before says less than it
/// has. The simulation found a quorum vote counted from such an answer losing a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeBasis {
    /// The leader key: holder and `mod_revision`.
    leader: Option<(String, i64)>,
    /// The `sync` key's `mod_revision` (every promotion in synchronous mode writes it).
    sync: Option<i64>,
    /// The last timeline in `history` (every promotion adds one).
    timeline: Option<u32>,
}

impl ProbeBasis {
    pub fn of(c: &super::ClusterView) -> Self {
        Self {
            leader: c.leader.as_ref().map(|l| (l.name.clone(), l.mod_revision)),
            sync: c.sync.as_ref().map(|k| k.mod_revision),
            timeline: c.history.last().map(|h| h.timeline),
        }
    }
}

/// The outcome of asking one peer; `status: None` means no usable answer in time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerProbe {
    pub name: String,
    pub status: Option<PeerStatus>,
}

/// A member to ask, with where to ask it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerRef {
    pub name: String,
    pub api_url: String,
    /// The last leader we saw, asked although its keys are gone: if its lease went early
    /// (revoked) while it still runs, it is a live primary. Asked with a short timeout
    /// ([`FORMER_LEADER_TIMEOUT`]): when it is really gone, the failover should not wait
    /// long for its silence.
    pub former_leader: bool,
}

/// How long a leader race waits for the former leader's answer (it answers from memory in
/// microseconds when it runs; its silence is the usual case of a failover).
pub const FORMER_LEADER_TIMEOUT: Duration = Duration::from_millis(200);

impl PeerRef {
    pub fn new(name: &str, api_url: &str) -> Self {
        Self { name: name.to_owned(), api_url: api_url.to_owned(), former_leader: false }
    }
}

/// Facts about our own recent actions that the core cannot see in PostgreSQL or etcd.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recent {
    /// When the last attempt to start PostgreSQL failed (it exited or never accepted
    /// connections). Cleared by a successful start; the core retries after one `ttl`.
    pub start_failed_at: Option<Moment>,
    /// pg_rewind failed since the data directory was last made usable.
    pub rewind_failed: bool,
    /// We found the data directory diverged from the leader's timeline and have not repaired it.
    pub diverged: bool,
    /// Since when PostgreSQL has been down while we held the leader key.
    pub primary_down_since: Option<Moment>,
    /// Members seen recently as non-leaders. They are asked in a leader race even when their
    /// member keys are gone: after an etcd outage longer than the TTL every member key has
    /// expired, and the first agent back must not think it is alone.
    pub known_peers: Vec<PeerRef>,
    /// The last other member seen holding the leader key, with its API address; kept after
    /// its keys vanished, until another leader is seen.
    pub former_leader: Option<PeerRef>,
    /// When PostgreSQL was last seen streaming from its upstream (a running replica).
    pub streamed_at: Option<Moment>,
    /// When this agent first read the cluster (`None`: not yet). An agent that started less
    /// than a ttl ago does not know who led before: it does not race yet.
    pub started_at: Option<Moment>,
    /// Since when the cluster has had no leader key, as this agent saw it (`None`: it has a
    /// leader, or the shell does not track it). Bounds how long a switchover waits for its
    /// candidate to catch up with the old primary's last WAL position.
    pub unlocked_since: Option<Moment>,
    /// When we stopped our primary for a switchover and released the key; cleared once
    /// PostgreSQL runs again. Bringing the old primary back as a replica of the new leader is
    /// part of the switchover, so it happens even while paused.
    pub stepped_down_at: Option<Moment>,
    /// failsafe_mode: the members the last `/failsafe` key we read lists (`None`: none read),
    /// whom a primary that cannot reach etcd must all reach to stay primary.
    pub failsafe_members: Option<Vec<PeerRef>>,
    /// failsafe_mode: the last `POST /failsafe` this member accepted, from which leader and
    /// when. For a `ttl` after it, this member does not race for the leader key.
    pub failsafe_post: Option<(String, Moment)>,
    /// The granted TTL of the last leader lease whose TTL the shell learned (another member's:
    /// it may differ from our `ttl`). See [`super::timing::cover`].
    pub leader_lease_ttl: Option<Duration>,
    /// When `pre_promote` last failed (the promotion cancelled, the key given back): for a
    /// ttl after it this member does not race (Patroni's rule).
    pub pre_promote_failed_at: Option<Moment>,
}

/// Local settings the core decides with (from the agent's config file).
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub name: String,
    pub timings: Timings,
    pub tags: Tags,
    /// `postgresql.use_pg_rewind`; `None` defers to the dynamic config.
    pub use_pg_rewind: Option<bool>,
    pub remove_data_directory_on_rewind_failure: bool,
    pub remove_data_directory_on_diverged_timelines: bool,
}

/// Everything one decision is made from.
#[derive(Debug, Clone)]
pub struct Observed<'a> {
    pub now: Moment,
    /// Wall clock (Unix milliseconds), only for scheduled switchovers.
    pub wall_ms: u64,
    pub settings: &'a Settings,
    /// `None`: etcd could not be read this cycle.
    pub cluster: Option<&'a ClusterView>,
    /// The dynamic config in force (last good `config`, or defaults).
    pub config: &'a DynConfig,
    pub lease: LeaseView,
    pub pg: &'a PgView,
    /// `None` until the shell has asked the peers for this decision.
    pub peers: Option<&'a [PeerProbe]>,
    /// The keys as read when the peers were asked (`ProbeBasis::of` the view the decision
    /// to ask was made on).
    pub probed_in: Option<ProbeBasis>,
    pub recent: &'a Recent,
    /// `watchdog.mode` is `required` and the watchdog is not usable: this member must not
    /// become a primary (Patroni's `watchdog_failed`).
    pub watchdog_failed: bool,
}
