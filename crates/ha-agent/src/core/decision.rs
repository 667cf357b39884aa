//! What the core decided, with why, as data. `Display` gives the one log line; `kind()` the
//! closed label for metrics.

use std::fmt;

use super::observed::PeerRef;

/// Why a primary stops accepting writes because of its lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FenceReason {
    /// The lease could not be renewed in time: etcd may be about to give the key to someone else.
    LeaseNotRenewed,
    /// etcd cannot be read and the lease is about to run out.
    EtcdUnreachable,
    /// The leader key is ours by name but sits on a lease we do not hold and cannot retake.
    KeyOnForeignLease,
}

/// Why a running primary is demoted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DemoteReason {
    /// Another member holds the leader key.
    OtherLeader(String),
    /// The cluster is unlocked and our timeline is behind the cluster's: we are a stale primary.
    StaleTimeline { ours: u32, cluster: u32 },
    /// Our system identifier is not the cluster's.
    SystemIdMismatch,
}

/// Why the leader gives up its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseReason {
    NoDataDirectory,
    StartFailed,
    StartTimedOut,
    /// PostgreSQL runs as a replica too far behind, or on an old timeline, to be promoted.
    NotFitToPromote,
    DataDirectoryUnusable,
    SystemIdMismatch,
    /// Maintenance mode: PostgreSQL runs, but not as a primary (someone demoted it by hand).
    NotPrimaryWhilePaused,
    /// Maintenance mode: PostgreSQL is not running (someone stopped it by hand).
    NotRunningWhilePaused,
    /// `watchdog.mode = required` and the watchdog cannot be used: no promotion.
    WatchdogUnavailable,
}

/// Why a `failover` key is cleared without acting on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClearReason {
    NamesAnotherLeader(String),
    CandidateIsLeader,
    CandidateNotEligible(String),
    NoEligibleCandidate,
    /// Written by the winner of a race after it took over.
    Done,
    BadSchedule(String),
    /// Scheduled more than 1.5 x loop_wait in the past (Patroni drops it as stale).
    Stale(String),
    /// Maintenance mode refuses scheduled switchovers.
    PausedScheduled,
    /// Maintenance mode allows a switchover only to a named candidate.
    PausedNeedsCandidate,
    /// Synchronous mode: the candidate is not listed in `sync`.
    CandidateNotSynchronous(String),
}

/// Why a member keeps its PostgreSQL stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// Diverged from the leader; pg_rewind is off or impossible, and reinit is not allowed.
    DivergedCannotRewind,
    /// pg_rewind failed and reinit after a failed rewind is not allowed.
    RewindFailed,
}

/// Why nothing is done this cycle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitReason {
    EtcdUnreachable,
    /// Our lease is not trusted (renewal late or failing); the lease keeper handles it.
    LeaseNotTrusted,
    AnotherMemberBootstrapping,
    NoLeaderToCloneFrom,
    /// We have data but the cluster has no `initialize` key and we were never its primary.
    NotInitialized,
    PgStarting,
    NotEligible(&'static str),
    StaleTimeline {
        ours: u32,
        cluster: u32,
    },
    TooFarBehind {
        lag: u64,
        limit: u64,
    },
    PrimaryStillAlive(String),
    PeerAhead {
        name: String,
        lsn: u64,
        ours: u64,
    },
    PeerPreferred(String),
    CandidateWillTakeOver(String),
    LeaderMemberUnknown(String),
    SwitchoverScheduled(String),
    SystemIdMismatch {
        ours: u64,
        cluster: u64,
    },
    /// Maintenance mode: the agent does not start, stop, promote or demote.
    Paused(&'static str),
    /// Maintenance mode: PostgreSQL runs as a primary while `leader` holds the key (made so
    /// by hand); it is not demoted until the pause ends.
    PausedPrimaryWithoutKey(String),
    /// Switchover: the old primary's last WAL position is not here yet.
    CatchingUp {
        ours: u64,
        target: u64,
    },
    /// We stepped down for a switchover: the candidate takes the key, then we follow it.
    SteppedDown,
    /// etcd revoked our lease early less than a ttl ago (and the leader's with it): the old
    /// primary may not have fenced yet.
    LeaseRevokedEarly,
    /// This agent started less than a ttl ago and does not know who led before.
    JustStarted,
    /// `pre_promote` failed less than a ttl ago.
    PrePromoteFailed,
    /// Synchronous mode: the `sync` key does not list us (it lists `listed`), so we may lack
    /// acknowledged transactions.
    NotSynchronous {
        listed: Vec<String>,
    },
    /// Quorum commit: too few voters answered with a position no further than ours to prove
    /// that we have every acknowledged transaction.
    NoQuorum {
        votes: u32,
        needed: u32,
    },
    /// failsafe_mode: this leader told us less than a ttl ago, by `POST /failsafe`, that it
    /// still runs as primary (it cannot reach etcd, we may not see its key).
    FailsafeLeaderAlive(String),
    /// failsafe_mode: `/failsafe` does not list us, so a primary cut off from etcd does not
    /// ask us before it goes on taking writes.
    NotInFailsafe,
}

/// One decision of the HA core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Stop PostgreSQL now (immediate): it must not accept writes past our lease.
    Fence {
        reason: FenceReason,
    },
    /// Stop a primary that must not be one (immediate); it rejoins as a replica afterwards.
    Demote {
        reason: DemoteReason,
    },
    /// Race for `initialize` (create-if-absent); the winner runs initdb and becomes leader.
    RaceInitialize,
    /// Write our system identifier into `initialize` (a primary found the key missing).
    PublishInitialize {
        sysid: u64,
    },
    /// Make a new replica from `from` by `create_replica_methods` (pg_basebackup by default).
    Clone {
        from: String,
    },
    /// Ask these peers for their status before racing for the leader key.
    ProbePeers {
        peers: Vec<PeerRef>,
    },
    /// Create the leader key on our lease if absent; on success, promote if we are a replica.
    AcquireLeader,
    /// The key holds our name on an old lease of ours: move it onto our current lease.
    RetakeLeader,
    /// We hold the key and PostgreSQL is a replica: promote it.
    Promote,
    /// We hold the key and PostgreSQL (a former primary) is stopped: start it as primary.
    StartPrimary,
    /// Delete our leader key (value-equals) so that another member can take over.
    ReleaseLeader {
        reason: ReleaseReason,
    },
    /// Planned switchover: stop cleanly, then release the key for `candidate` (or the best).
    StepDown {
        candidate: Option<String>,
    },
    /// Clear the `failover` key with `{}`.
    ClearFailover {
        reason: ClearReason,
    },
    /// We lead and PostgreSQL is primary: renew nothing here (the lease keeper does), just
    /// housekeeping (status, slots, parameters).
    Lead,
    /// Run PostgreSQL as a replica of `upstream`, the leader or the member its
    /// `replicatefrom` names (start it, or point it there); `None` starts it read-only with
    /// no upstream (also a `nostream` replica, fed by `restore_command` only).
    Follow {
        upstream: Option<String>,
    },
    /// Already a replica streaming from `upstream`: housekeeping only.
    Replicate {
        upstream: String,
    },
    /// Stop and pg_rewind from `leader`, then follow it.
    Rewind {
        leader: String,
    },
    /// Remove the data directory and clone again from `leader`.
    Reinit {
        leader: String,
    },
    /// Keep PostgreSQL stopped (stop it if it runs) and say why.
    StayStopped {
        reason: StopReason,
    },
    Wait {
        reason: WaitReason,
    },
    /// failsafe_mode, a primary that cannot read etcd: `POST /failsafe` to every member of the
    /// last `/failsafe` key; only if all accept does it stay primary past its lease.
    Failsafe {
        members: Vec<PeerRef>,
    },
    /// Standby cluster: we hold the key, and PostgreSQL runs (or is started) as the standby
    /// leader, a replica of the remote primary ([`REMOTE_PRIMARY`]; `None`: from the remote
    /// archive only). Housekeeping as a leader (status, member slots), never a promotion.
    LeadStandby {
        upstream: Option<String>,
    },
    /// `standby_cluster` was set while we lead a primary (`patronictl demote-cluster`): stop
    /// cleanly (the shutdown checkpoint reaches the replicas), keep the key, start again as the
    /// standby leader.
    DemoteCluster,
}

/// The upstream name that stands for `standby_cluster`'s remote primary (its `host` and
/// `port`). Parentheses keep it apart from member names in logs; a member cannot be reached
/// by it, since `upstream_of` resolves it from the config key, never from member keys.
pub const REMOTE_PRIMARY: &str = "(standby_cluster)";

impl Decision {
    /// A closed label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Decision::Fence { .. } => "fence",
            Decision::Demote { .. } => "demote",
            Decision::RaceInitialize => "race_initialize",
            Decision::PublishInitialize { .. } => "publish_initialize",
            Decision::Clone { .. } => "clone",
            Decision::ProbePeers { .. } => "probe_peers",
            Decision::AcquireLeader => "acquire_leader",
            Decision::RetakeLeader => "retake_leader",
            Decision::Promote => "promote",
            Decision::StartPrimary => "start_primary",
            Decision::ReleaseLeader { .. } => "release_leader",
            Decision::StepDown { .. } => "step_down",
            Decision::ClearFailover { .. } => "clear_failover",
            Decision::Lead => "lead",
            Decision::Follow { .. } => "follow",
            Decision::Replicate { .. } => "replicate",
            Decision::Rewind { .. } => "rewind",
            Decision::Reinit { .. } => "reinit",
            Decision::StayStopped { .. } => "stay_stopped",
            Decision::Wait { .. } => "wait",
            Decision::Failsafe { .. } => "failsafe",
            Decision::LeadStandby { .. } => "lead_standby",
            Decision::DemoteCluster => "demote_cluster",
        }
    }

    /// Every label `kind()` can return (to pre-create metric series).
    pub const KINDS: [&'static str; 23] = [
        "fence",
        "demote",
        "race_initialize",
        "publish_initialize",
        "clone",
        "probe_peers",
        "acquire_leader",
        "retake_leader",
        "promote",
        "start_primary",
        "release_leader",
        "step_down",
        "clear_failover",
        "lead",
        "follow",
        "replicate",
        "rewind",
        "reinit",
        "stay_stopped",
        "wait",
        "failsafe",
        "lead_standby",
        "demote_cluster",
    ];

    /// Decisions that repeat every cycle in a steady state; logged at debug after the first.
    pub fn is_steady(&self) -> bool {
        matches!(
            self,
            Decision::Lead
                | Decision::Replicate { .. }
                | Decision::Follow { upstream: None }
                | Decision::Wait { .. }
                | Decision::Failsafe { .. }
                | Decision::LeadStandby { .. }
        )
    }
}

impl fmt::Display for FenceReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FenceReason::LeaseNotRenewed => "the leader lease could not be renewed in time",
            FenceReason::EtcdUnreachable => "etcd is unreachable and the leader lease is running out",
            FenceReason::KeyOnForeignLease => "the leader key is on a lease this agent does not hold",
        })
    }
}

impl fmt::Display for DemoteReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DemoteReason::OtherLeader(l) => write!(f, "{l} holds the leader key"),
            DemoteReason::StaleTimeline { ours, cluster } => {
                write!(f, "our timeline {ours} is behind the cluster's timeline {cluster}")
            }
            DemoteReason::SystemIdMismatch => f.write_str("our system identifier is not the cluster's"),
        }
    }
}

impl fmt::Display for ReleaseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ReleaseReason::NoDataDirectory => "there is no data directory",
            ReleaseReason::StartFailed => "PostgreSQL failed to start",
            ReleaseReason::StartTimedOut => "PostgreSQL did not start within primary_start_timeout",
            ReleaseReason::NotFitToPromote => "the local replica is not fit to be promoted",
            ReleaseReason::DataDirectoryUnusable => "the data directory is unusable",
            ReleaseReason::SystemIdMismatch => "our system identifier is not the cluster's",
            ReleaseReason::NotPrimaryWhilePaused => "paused, and PostgreSQL no longer runs as a primary",
            ReleaseReason::NotRunningWhilePaused => "paused, and PostgreSQL is not running",
            ReleaseReason::WatchdogUnavailable => "watchdog.mode is required and the watchdog cannot be used",
        })
    }
}

impl fmt::Display for ClearReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClearReason::NamesAnotherLeader(l) => write!(f, "it names {l} as the leader, not us"),
            ClearReason::CandidateIsLeader => f.write_str("the candidate already leads"),
            ClearReason::CandidateNotEligible(c) => write!(
                f,
                "candidate {c} is not a healthy, eligible member (a running replica on our timeline, \
                 failover allowed, within maximum_lag_on_failover)"
            ),
            ClearReason::NoEligibleCandidate => f.write_str("no member is fit to take over"),
            ClearReason::Done => f.write_str("the switchover is done"),
            ClearReason::BadSchedule(s) => write!(f, "scheduled_at {s:?} is not an RFC 3339 time"),
            ClearReason::Stale(s) => write!(f, "scheduled_at {s} is stale (more than 1.5 x loop_wait ago)"),
            ClearReason::PausedScheduled => f.write_str("scheduled switchovers are not possible while paused"),
            ClearReason::PausedNeedsCandidate => f.write_str("while paused a switchover needs a named candidate"),
            ClearReason::CandidateNotSynchronous(c) => {
                write!(
                    f,
                    "candidate {c} is not a synchronous standby (synchronous mode is on and sync does not list it)"
                )
            }
        }
    }
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StopReason::DivergedCannotRewind => {
                "the data directory diverged from the leader and neither pg_rewind (use_pg_rewind with \
                 wal_log_hints or checksums) nor reinit (remove_data_directory_on_diverged_timelines) is allowed"
            }
            StopReason::RewindFailed => {
                "pg_rewind failed and remove_data_directory_on_rewind_failure is off; reinitialise this member by hand"
            }
        })
    }
}

impl fmt::Display for WaitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WaitReason::EtcdUnreachable => f.write_str("etcd is unreachable"),
            WaitReason::LeaseNotTrusted => f.write_str("our lease is not confirmed"),
            WaitReason::AnotherMemberBootstrapping => f.write_str("another member is bootstrapping the cluster"),
            WaitReason::NoLeaderToCloneFrom => f.write_str("no leader to clone from"),
            WaitReason::NotInitialized => f.write_str("the cluster has no initialize key; start its primary first"),
            WaitReason::PgStarting => f.write_str("PostgreSQL is starting"),
            WaitReason::PrePromoteFailed => {
                f.write_str("pre_promote failed less than a ttl ago: not racing for the leader key")
            }
            WaitReason::JustStarted => f.write_str(
                "started less than a ttl ago: not racing before any former leader's lease has run out",
            ),
            WaitReason::LeaseRevokedEarly => f.write_str(
                "etcd revoked our lease early (and the leader's with it); waiting one ttl for the old primary to fence before racing",
            ),
            WaitReason::NotEligible(why) => write!(f, "not eligible to lead: {why}"),
            WaitReason::StaleTimeline { ours, cluster } => {
                write!(f, "not eligible to lead: our timeline {ours} is behind the cluster's {cluster}")
            }
            WaitReason::TooFarBehind { lag, limit } => {
                write!(f, "not eligible to lead: {lag} bytes behind, maximum_lag_on_failover is {limit}")
            }
            WaitReason::PrimaryStillAlive(p) => write!(f, "{p} is still running as primary"),
            WaitReason::PeerAhead { name, lsn, ours } => write!(f, "{name} is further ahead ({lsn} > {ours})"),
            WaitReason::PeerPreferred(p) => write!(f, "{p} is as far ahead and has a higher failover_priority"),
            WaitReason::CandidateWillTakeOver(c) => write!(f, "switchover candidate {c} takes over"),
            WaitReason::LeaderMemberUnknown(l) => write!(f, "leader {l} has not published its member key"),
            WaitReason::SwitchoverScheduled(at) => write!(f, "switchover scheduled at {at}"),
            WaitReason::SystemIdMismatch { ours, cluster } => {
                write!(f, "our system identifier {ours} is not the cluster's {cluster}; not touching this data")
            }
            WaitReason::Paused(why) => write!(f, "maintenance mode (paused): {why}"),
            WaitReason::PausedPrimaryWithoutKey(l) => write!(
                f,
                "maintenance mode (paused): running as primary while {l} holds the leader key; not demoting until resumed"
            ),
            WaitReason::CatchingUp { ours, target } => {
                write!(f, "switchover: waiting to receive the old primary's WAL up to {target} (at {ours})")
            }
            WaitReason::SteppedDown => f.write_str("stepped down for a switchover; waiting for the new leader"),
            WaitReason::NotSynchronous { listed } if listed.is_empty() => f.write_str(
                "not eligible to lead: synchronous mode is on and sync lists no standby (only the last primary has every acknowledged transaction)",
            ),
            WaitReason::NotSynchronous { listed } => write!(
                f,
                "not eligible to lead: synchronous mode is on and sync lists only {} (they have every acknowledged transaction)",
                listed.join(", ")
            ),
            WaitReason::NoQuorum { votes, needed } => write!(
                f,
                "not eligible to lead: quorum commit needs {needed} voters at or behind our position to prove we have every acknowledged transaction; {votes} answered so"
            ),
            WaitReason::FailsafeLeaderAlive(l) => write!(
                f,
                "failsafe_mode: {l} said less than a ttl ago that it still runs as primary (POST /failsafe)"
            ),
            WaitReason::NotInFailsafe => {
                f.write_str("not eligible to lead: failsafe_mode is on and /failsafe does not list this member")
            }
        }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::Fence { reason } => write!(f, "fencing PostgreSQL (stop now): {reason}"),
            Decision::Demote { reason } => write!(f, "demoting: {reason}"),
            Decision::RaceInitialize => f.write_str("no cluster yet: racing to bootstrap it"),
            Decision::PublishInitialize { sysid } => write!(f, "writing system identifier {sysid} to initialize"),
            Decision::Clone { from } => write!(f, "creating a replica from {from} (create_replica_methods in order)"),
            Decision::ProbePeers { peers } => {
                let names: Vec<&str> = peers.iter().map(|p| p.name.as_str()).collect();
                write!(f, "no leader: asking {} before racing", names.join(", "))
            }
            Decision::AcquireLeader => f.write_str("no leader and we are the healthiest member: taking the leader key"),
            Decision::RetakeLeader => f.write_str("moving our leader key onto our current lease"),
            Decision::Promote => f.write_str("we hold the leader key: promoting"),
            Decision::StartPrimary => f.write_str("we hold the leader key: starting PostgreSQL as primary"),
            Decision::ReleaseLeader { reason } => write!(f, "releasing the leader key: {reason}"),
            Decision::StepDown { candidate: Some(c) } => write!(f, "switchover: stepping down for {c}"),
            Decision::StepDown { candidate: None } => f.write_str("switchover: stepping down for the best replica"),
            Decision::ClearFailover { reason } => write!(f, "clearing the failover key: {reason}"),
            Decision::Lead => f.write_str("leading as primary"),
            Decision::Follow { upstream: Some(l) } => write!(f, "following {l}"),
            Decision::Follow { upstream: None } => f.write_str("running read-only without an upstream"),
            Decision::Replicate { upstream } => write!(f, "replicating from {upstream}"),
            Decision::Rewind { leader } => write!(f, "diverged from {leader}: running pg_rewind"),
            Decision::Reinit { leader } => write!(f, "diverged from {leader}: reinitialising from a new base backup"),
            Decision::StayStopped { reason } => write!(f, "keeping PostgreSQL stopped: {reason}"),
            Decision::Wait { reason } => write!(f, "waiting: {reason}"),
            Decision::Failsafe { members } if members.is_empty() => {
                f.write_str("etcd is unreachable: failsafe_mode keeps the primary (no other member listed)")
            }
            Decision::Failsafe { members } => {
                let names: Vec<&str> = members.iter().map(|p| p.name.as_str()).collect();
                write!(f, "etcd is unreachable: failsafe_mode asks {} to confirm this primary", names.join(", "))
            }
            Decision::LeadStandby { upstream: Some(_) } => {
                f.write_str("leading the standby cluster: replicating from the remote primary")
            }
            Decision::LeadStandby { upstream: None } => {
                f.write_str("leading the standby cluster: replaying WAL from the remote archive")
            }
            Decision::DemoteCluster => {
                f.write_str("standby_cluster is set: stopping the primary to restart it as the standby leader")
            }
        }
    }
}
