//! The verdict core: (etcd view, PostgreSQL view, policy, now) × check → 200 or 503 and why.
//!
//! Pure: no I/O, no clock (the caller passes `now`). Two sources must agree before a check
//! passes. `/primary` passes only when etcd names this member as leader, that was confirmed
//! within `etcd_max_age`, *and* the local PostgreSQL, polled within `pg_max_age`, is not in
//! recovery. So a node that etcd does not name is never a primary to HAProxy, however writable
//! its PostgreSQL is, and a node cut off from etcd stops being one within `etcd_max_age`,
//! which is well under the HA `ttl`: before anyone else can take the leader key, the old
//! primary's checks have already failed (fail closed, never a stale 200).

use std::fmt;
use std::time::{Duration, Instant};

use outrigger_schema::{MemberRole, SynchronousMode};
use serde_json::Value;

use crate::check::{Check, Endpoint, LagMode};
use crate::view::{EtcdView, PgFailure, PgPoll, PgSample, PgView};

/// Patroni's default `maximum_lag_on_failover` (1 MiB): `/readiness`'s lag limit when neither
/// the request nor `config` gives one.
pub const DEFAULT_READINESS_LAG: u64 = 1 << 20;

/// The configured bounds a verdict is judged by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// This node's member name.
    pub name: String,
    /// How old the etcd confirmation may be.
    pub etcd_max_age: Duration,
    /// How old the PostgreSQL sample may be.
    pub pg_max_age: Duration,
    /// How long either input task may go without trying before `/liveness` fails.
    pub liveness_max_age: Duration,
}

/// This node's role as the two sources together describe it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// etcd names us and PostgreSQL is writable.
    Primary,
    /// etcd names us and PostgreSQL is in recovery (a standby cluster's leader, or a primary
    /// still being promoted).
    StandbyLeader,
    /// etcd names someone else (or no one) and PostgreSQL is in recovery.
    Replica,
    /// PostgreSQL is writable but etcd does not name us: the split-brain case HAProxy must
    /// never send writes to.
    WritableNotLeader,
    /// One of the sources is stale or unreachable.
    Unknown,
}

impl Role {
    pub const ALL: [Role; 5] =
        [Role::Primary, Role::StandbyLeader, Role::Replica, Role::WritableNotLeader, Role::Unknown];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::StandbyLeader => "standby_leader",
            Role::Replica => "replica",
            Role::WritableNotLeader => "writable_not_leader",
            Role::Unknown => "unknown",
        }
    }
}

/// Why a check passed or failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    // Passing.
    IsPrimary,
    IsLeader,
    IsStandbyLeader,
    IsReplica,
    IsSyncStandby,
    IsQuorumStandby,
    IsAsyncReplica,
    Running,
    Alive,
    Ready,
    // Failing because a source cannot be trusted.
    EtcdNotSynced,
    EtcdStale { age_ms: u64 },
    PgNeverPolled,
    PgDown(PgFailure),
    PgStale { age_ms: u64 },
    // Failing on the facts.
    NoLeader,
    NotLeader { leader: String },
    InRecovery,
    NotInRecovery,
    NotStandbyCluster,
    HoldsLeaderKey,
    NotRegistered,
    NoLoadBalance,
    TagMismatch { tag: String },
    ReplicationState { actual: &'static str },
    LeaderPositionUnknown,
    Lagging { lag: u64, limit: u64 },
    NotSyncStandby,
    NotQuorumStandby,
    IsSynchronous,
    NotStreaming,
    LoopStalled { source: &'static str },
    UnknownEndpoint,
}

impl Reason {
    /// A stable short code, for the JSON answer and logs.
    pub fn code(&self) -> &'static str {
        match self {
            Reason::IsPrimary => "primary",
            Reason::IsLeader => "leader",
            Reason::IsStandbyLeader => "standby_leader",
            Reason::IsReplica => "replica",
            Reason::IsSyncStandby => "sync_standby",
            Reason::IsQuorumStandby => "quorum_standby",
            Reason::IsAsyncReplica => "async_replica",
            Reason::Running => "running",
            Reason::Alive => "alive",
            Reason::Ready => "ready",
            Reason::EtcdNotSynced => "etcd_not_synced",
            Reason::EtcdStale { .. } => "etcd_stale",
            Reason::PgNeverPolled => "postgresql_not_polled_yet",
            Reason::PgDown(_) => "postgresql_down",
            Reason::PgStale { .. } => "postgresql_stale",
            Reason::NoLeader => "no_leader",
            Reason::NotLeader { .. } => "not_leader",
            Reason::InRecovery => "in_recovery",
            Reason::NotInRecovery => "not_in_recovery",
            Reason::NotStandbyCluster => "not_standby_cluster",
            Reason::HoldsLeaderKey => "holds_leader_key",
            Reason::NotRegistered => "member_key_absent",
            Reason::NoLoadBalance => "noloadbalance",
            Reason::TagMismatch { .. } => "tag_mismatch",
            Reason::ReplicationState { .. } => "replication_state_mismatch",
            Reason::LeaderPositionUnknown => "leader_position_unknown",
            Reason::Lagging { .. } => "lagging",
            Reason::NotSyncStandby => "not_sync_standby",
            Reason::NotQuorumStandby => "not_quorum_standby",
            Reason::IsSynchronous => "is_synchronous",
            Reason::NotStreaming => "not_streaming",
            Reason::LoopStalled { .. } => "loop_stalled",
            Reason::UnknownEndpoint => "unknown_endpoint",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::IsPrimary => f.write_str("etcd names this member leader and PostgreSQL is writable"),
            Reason::IsLeader => f.write_str("etcd names this member leader"),
            Reason::IsStandbyLeader => f.write_str("etcd names this member leader of a standby cluster"),
            Reason::IsReplica => f.write_str("PostgreSQL is a replica of this cluster"),
            Reason::IsSyncStandby => f.write_str("replica listed as synchronous standby"),
            Reason::IsQuorumStandby => f.write_str("replica listed as quorum standby"),
            Reason::IsAsyncReplica => f.write_str("replica not listed as synchronous standby"),
            Reason::Running => f.write_str("PostgreSQL is running"),
            Reason::Alive => f.write_str("etcd and PostgreSQL are being polled"),
            Reason::Ready => f.write_str("ready to serve"),
            Reason::EtcdNotSynced => f.write_str("no complete view of etcd (watch broken or never read)"),
            Reason::EtcdStale { age_ms } => write!(f, "etcd last confirmed {age_ms} ms ago, over the limit"),
            Reason::PgNeverPolled => f.write_str("PostgreSQL not polled yet"),
            Reason::PgDown(e) => write!(f, "PostgreSQL does not answer ({})", e.as_str()),
            Reason::PgStale { age_ms } => write!(f, "PostgreSQL last answered {age_ms} ms ago, over the limit"),
            Reason::NoLeader => f.write_str("etcd has no leader key"),
            Reason::NotLeader { leader } => write!(f, "etcd names {leader} leader, not this member"),
            Reason::InRecovery => f.write_str("PostgreSQL is in recovery"),
            Reason::NotInRecovery => f.write_str("PostgreSQL is not in recovery"),
            Reason::NotStandbyCluster => f.write_str("not a standby cluster"),
            Reason::HoldsLeaderKey => f.write_str("this member holds the leader key"),
            Reason::NotRegistered => f.write_str("this member has no member key in etcd"),
            Reason::NoLoadBalance => f.write_str("tagged noloadbalance"),
            Reason::TagMismatch { tag } => write!(f, "tag {tag} does not match"),
            Reason::ReplicationState { actual } => write!(f, "replication state is {actual}"),
            Reason::LeaderPositionUnknown => f.write_str("leader WAL position unknown (no status key, no receiver)"),
            Reason::Lagging { lag, limit } => write!(f, "lag {lag} bytes over the limit of {limit}"),
            Reason::NotSyncStandby => f.write_str("not a synchronous standby"),
            Reason::NotQuorumStandby => f.write_str("not a quorum standby"),
            Reason::IsSynchronous => f.write_str("listed as synchronous or quorum standby"),
            Reason::NotStreaming => f.write_str("not streaming from the primary"),
            Reason::LoopStalled { source } => write!(f, "the {source} poll has not run within the limit"),
            Reason::UnknownEndpoint => f.write_str("no such check endpoint"),
        }
    }
}

/// A check's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub ok: bool,
    pub reason: Reason,
    pub role: Role,
    /// Replica lag in bytes, when it could be measured.
    pub lag: Option<u64>,
}

impl Verdict {
    /// 200 or 503, as Patroni answers.
    pub fn status(&self) -> u16 {
        if self.ok { 200 } else { 503 }
    }
}

/// The inputs of one decision.
#[derive(Debug, Clone, Copy)]
pub struct Observed<'a> {
    pub etcd: &'a EtcdView,
    pub pg: &'a PgView,
    pub now: Instant,
}

fn age(now: Instant, then: Instant) -> Duration {
    now.saturating_duration_since(then)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The two sources, each either trusted or the reason it is not.
struct Sources<'a> {
    etcd: Result<&'a EtcdView, Reason>,
    pg: Result<&'a PgSample, Reason>,
    name: &'a str,
}

impl<'a> Sources<'a> {
    fn new(obs: &Observed<'a>, policy: &'a Policy) -> Self {
        let etcd = match obs.etcd.confirmed_at {
            _ if !obs.etcd.synced => Err(Reason::EtcdNotSynced),
            None => Err(Reason::EtcdNotSynced),
            Some(t) if age(obs.now, t) > policy.etcd_max_age => {
                Err(Reason::EtcdStale { age_ms: millis(age(obs.now, t)) })
            }
            Some(_) => Ok(obs.etcd),
        };
        let pg = match &obs.pg.last {
            PgPoll::Never => Err(Reason::PgNeverPolled),
            PgPoll::Down { error, .. } => Err(Reason::PgDown(*error)),
            PgPoll::Up { at, .. } if age(obs.now, *at) > policy.pg_max_age => {
                Err(Reason::PgStale { age_ms: millis(age(obs.now, *at)) })
            }
            PgPoll::Up { sample, .. } => Ok(sample),
        };
        Self { etcd, pg, name: &policy.name }
    }

    fn names_us(&self, e: &EtcdView) -> bool {
        e.leader.as_deref() == Some(self.name)
    }

    fn role(&self) -> Role {
        match (&self.etcd, &self.pg) {
            (Ok(e), Ok(p)) => match (self.names_us(e), p.in_recovery) {
                (true, false) => Role::Primary,
                (true, true) => Role::StandbyLeader,
                (false, true) => Role::Replica,
                (false, false) => Role::WritableNotLeader,
            },
            _ => Role::Unknown,
        }
    }

    /// etcd trusted and naming us.
    fn leader_key(&self) -> Result<&'a EtcdView, Reason> {
        let e = self.etcd.clone()?;
        match e.leader.as_deref() {
            None => Err(Reason::NoLeader),
            Some(l) if l != self.name => Err(Reason::NotLeader { leader: l.to_owned() }),
            Some(_) => Ok(e),
        }
    }

    fn primary(&self) -> Result<Reason, Reason> {
        self.leader_key()?;
        if self.pg.clone()?.in_recovery {
            return Err(Reason::InRecovery);
        }
        Ok(Reason::IsPrimary)
    }

    fn leader(&self) -> Result<Reason, Reason> {
        self.leader_key()?;
        self.pg.clone()?;
        Ok(Reason::IsLeader)
    }

    fn standby_leader(&self) -> Result<Reason, Reason> {
        let e = self.leader_key()?;
        if !self.pg.clone()?.in_recovery {
            return Err(Reason::NotInRecovery);
        }
        let standby_role = e.me.as_ref().is_some_and(|m| m.role == MemberRole::StandbyLeader);
        if !(e.cluster.standby_cluster || standby_role) {
            return Err(Reason::NotStandbyCluster);
        }
        Ok(Reason::IsStandbyLeader)
    }

    /// Replica lag in bytes: the leader's position (the larger of `status` in etcd and what the
    /// WAL receiver last heard from the primary) minus our replayed (or received) position.
    fn lag(&self, mode: LagMode) -> Option<u64> {
        let p = self.pg.as_ref().ok()?;
        let from_etcd = self.etcd.as_ref().ok().and_then(|e| e.leader_optime());
        let leader = from_etcd.max(p.latest_end_lsn)?;
        let ours = match mode {
            LagMode::Apply => p.replay_lsn,
            LagMode::Write => p.receive_lsn.or(p.replay_lsn),
        }?;
        Some(leader.saturating_sub(ours))
    }

    /// Patroni's replica conditions: running, in recovery, not the lock holder, registered in
    /// etcd, no `noloadbalance` tag, then the request's tag, state and lag filters.
    fn replica(&self, check: &Check) -> Result<Reason, Reason> {
        let e = self.etcd.clone()?;
        let p = self.pg.clone()?;
        if !p.in_recovery {
            return Err(Reason::NotInRecovery);
        }
        if self.names_us(e) {
            return Err(Reason::HoldsLeaderKey);
        }
        // A node without a member key is not (or no longer) part of this cluster as far as its
        // HA agent is concerned, e.g. a removed member still following an old timeline.
        let me = e.me.as_ref().ok_or(Reason::NotRegistered)?;
        if truthy(me.tags.get("noloadbalance")) {
            return Err(Reason::NoLoadBalance);
        }
        for (tag, want) in &check.tags {
            if !tag_matches(me.tags.get(tag.as_str()), tag, want) {
                return Err(Reason::TagMismatch { tag: tag.clone() });
            }
        }
        if let Some(want) = &check.replication_state {
            let actual = p.replication_state().unwrap_or("");
            if actual != want {
                return Err(Reason::ReplicationState { actual });
            }
        }
        if let Some(limit) = check.lag {
            let lag = self.lag(check.mode).ok_or(Reason::LeaderPositionUnknown)?;
            if lag > limit {
                return Err(Reason::Lagging { lag, limit });
            }
        }
        Ok(Reason::IsReplica)
    }

    /// Whether `sync` lists us for the current leader (a `sync` key left by a previous leader
    /// does not count), and in which mode.
    fn sync_membership(&self) -> Result<Option<SynchronousMode>, Reason> {
        let e = self.etcd.clone()?;
        let listed = e
            .sync
            .as_ref()
            .is_some_and(|s| s.leader.is_some() && s.leader == e.leader && s.standbys.iter().any(|m| m == self.name));
        Ok(match e.cluster.synchronous_mode {
            SynchronousMode::Off => None,
            mode => listed.then_some(mode),
        })
    }

    fn sync(&self, check: &Check) -> Result<Reason, Reason> {
        self.replica(check)?;
        match self.sync_membership()? {
            Some(SynchronousMode::On) => Ok(Reason::IsSyncStandby),
            _ => Err(Reason::NotSyncStandby),
        }
    }

    fn quorum(&self, check: &Check) -> Result<Reason, Reason> {
        self.replica(check)?;
        match self.sync_membership()? {
            Some(SynchronousMode::Quorum) => Ok(Reason::IsQuorumStandby),
            _ => Err(Reason::NotQuorumStandby),
        }
    }

    fn asynchronous(&self, check: &Check) -> Result<Reason, Reason> {
        self.replica(check)?;
        match self.sync_membership()? {
            None => Ok(Reason::IsAsyncReplica),
            Some(_) => Err(Reason::IsSynchronous),
        }
    }

    fn health(&self) -> Result<Reason, Reason> {
        self.pg.clone()?;
        Ok(Reason::Running)
    }

    /// Patroni 4.1's readiness: the leader is ready; a replica is ready when it streams and
    /// its lag is within `?lag=` (default `maximum_lag_on_failover`).
    fn readiness(&self, check: &Check) -> Result<Reason, Reason> {
        if self.leader().is_ok() {
            return Ok(Reason::Ready);
        }
        let e = self.etcd.clone()?;
        let p = self.pg.clone()?;
        if !p.in_recovery {
            return Err(Reason::NotInRecovery);
        }
        if p.replication_state() != Some("streaming") {
            return Err(Reason::NotStreaming);
        }
        let limit = check.lag.or(e.cluster.maximum_lag_on_failover).unwrap_or(DEFAULT_READINESS_LAG);
        let lag = self.lag(check.mode).ok_or(Reason::LeaderPositionUnknown)?;
        if lag > limit {
            return Err(Reason::Lagging { lag, limit });
        }
        Ok(Reason::Ready)
    }
}

/// Patroni publishes only the built-in tags that are set, so an absent built-in reads as
/// false; any other tag is compared as given.
const BUILTIN_BOOL_TAGS: [&str; 5] = ["nofailover", "noloadbalance", "clonefrom", "nosync", "nostream"];

fn truthy(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) | Some(Value::Bool(false)) => false,
        Some(Value::String(s)) => !s.is_empty() && !matches!(s.to_ascii_lowercase().as_str(), "false" | "off" | "no"),
        Some(Value::Number(n)) => n.as_f64() != Some(0.0),
        Some(_) => true,
    }
}

/// Patroni's tag filter: a string tag must equal the query value; any other value is compared
/// as its lowercase text (`true`, `1`).
fn tag_matches(actual: Option<&Value>, tag: &str, want: &str) -> bool {
    match actual {
        Some(Value::String(s)) => s == want,
        Some(Value::Bool(b)) => want.eq_ignore_ascii_case(if *b { "true" } else { "false" }),
        Some(Value::Null) => want.eq_ignore_ascii_case("none"),
        Some(other) => other.to_string().to_lowercase() == want.to_lowercase(),
        None => BUILTIN_BOOL_TAGS.contains(&tag) && want.eq_ignore_ascii_case("false"),
    }
}

/// Decides one check.
pub fn decide(check: &Check, obs: &Observed<'_>, policy: &Policy) -> Verdict {
    let s = Sources::new(obs, policy);
    let outcome = match check.endpoint {
        Endpoint::Primary => s.primary(),
        Endpoint::Leader => s.leader(),
        Endpoint::StandbyLeader => s.standby_leader(),
        Endpoint::Replica => s.replica(check),
        Endpoint::ReadOnly => s.primary().or_else(|_| s.standby_leader()).or_else(|_| s.replica(check)),
        Endpoint::Sync => s.sync(check),
        Endpoint::Async => s.asynchronous(check),
        Endpoint::Quorum => s.quorum(check),
        Endpoint::ReadOnlySync => s.primary().or_else(|_| s.sync(check)),
        Endpoint::ReadOnlyQuorum => s.primary().or_else(|_| s.quorum(check)),
        Endpoint::Health => s.health(),
        Endpoint::Liveness => liveness(obs, policy),
        Endpoint::Readiness => s.readiness(check),
        Endpoint::Unknown => Err(Reason::UnknownEndpoint),
    };
    let role = s.role();
    // Lag is reported for replicas whenever it can be measured: the agent-check weight uses it.
    let lag = matches!(role, Role::Replica | Role::StandbyLeader).then(|| s.lag(check.mode)).flatten();
    match outcome {
        Ok(reason) => Verdict { ok: true, reason, role, lag },
        Err(reason) => Verdict { ok: false, reason, role, lag },
    }
}

/// `/liveness`: both input tasks have tried recently. This says the daemon is not stuck; it
/// says nothing about etcd or PostgreSQL being reachable.
fn liveness(obs: &Observed<'_>, policy: &Policy) -> Result<Reason, Reason> {
    let fresh = |t: Option<Instant>| t.is_some_and(|t| age(obs.now, t) <= policy.liveness_max_age);
    if !fresh(obs.etcd.attempted_at) {
        return Err(Reason::LoopStalled { source: "etcd" });
    }
    if !fresh(obs.pg.attempted_at) {
        return Err(Reason::LoopStalled { source: "postgresql" });
    }
    Ok(Reason::Alive)
}

#[cfg(test)]
mod tests;
