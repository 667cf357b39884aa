//! The HA rules. Each rule is a few lines in one of the functions below, in the order they are
//! checked; the tests in `tests.rs` name one case per rule.
//!
//! Safety rests on three rules, checked first:
//! 1. A primary whose lease is not trusted (not renewed in time) is fenced before anything
//!    else, whatever etcd says: the lease is the only thing that keeps others from promoting.
//! 2. A primary that sees another member's name in the leader key is demoted.
//! 3. Nobody promotes or starts a primary without holding the leader key on its own trusted
//!    lease, and nobody races for the key while a peer answers that it is still primary.
//!
//! Maintenance mode (`pause` in `config`, Patroni's `docs/pause.rst`): no automatic start,
//! stop, promote or demote, no rewind, clone or reinit. The leader keeps its key (the lease
//! keeper renews it as always); a primary without the key takes it when the cluster is
//! unlocked; the key is released when its holder is no longer a running primary; a switchover
//! to a named candidate still runs, old primary's return as a replica included.
//!
//! Rule 1 holds in maintenance mode too, unlike Patroni (which keeps a primary running when
//! it cannot update its lock while paused): a primary whose lease is not trusted is still
//! fenced. A primary cut off from etcd cannot see the pause end, and once it ends the
//! replicas race and one promotes; only the fence keeps the old one from taking writes then.
//! The one thing maintenance mode gives up is demoting a primary that the operator made by
//! hand next to the leader: it is reported, not stopped (the operator owns PostgreSQL).

use super::cascade;
use super::decision::{ClearReason, Decision, DemoteReason, FenceReason, ReleaseReason, StopReason, WaitReason};
use super::divergence::{self, Divergence, LocalEnd};
use super::memory::failsafe_peers;
use super::observed::{ClusterState, Observed, PeerRef, PeerStatus, PgView, RunningPg};
use super::schedule::parse_rfc3339_ms;
use super::sync::{SyncKey, SyncMode};
use super::view::{ClusterView, FailoverRequest, Initialize, LeaderKey, Member, Role};

/// Decides what to do next from what was observed.
pub fn decide(o: &Observed<'_>) -> Decision {
    let lease_ok = o.lease.trusted(o.now, &o.settings.timings);

    // Rule: fence first. A primary that cannot vouch for its lease stops accepting writes
    // before the lease can expire at etcd, whatever else is going on. A postmaster that does
    // not answer SQL and is not a standby counts as a primary here.
    if o.pg.may_accept_writes() && !lease_ok {
        let reason = if o.cluster.is_none() { FenceReason::EtcdUnreachable } else { FenceReason::LeaseNotRenewed };
        return Decision::Fence { reason };
    }
    // Taking, keeping or acting on the leader key needs the lease itself (the key lives on
    // it); failsafe_mode's proof only keeps a primary that cannot reach etcd from the fence.
    let held = o.lease.held(o.now, &o.settings.timings);
    licensed(o, held, decide_on(o, held))
}

/// Rule: nothing that makes or keeps a primary runs without its licence. Taking the leader
/// key (a race, a bootstrap, a primary re-taking its key) needs a lease trusted now, so that
/// the key cannot expire under a primary that believes it holds it; becoming a primary also
/// needs the watchdog when it is required.
fn licensed(o: &Observed<'_>, lease_ok: bool, d: Decision) -> Decision {
    match d {
        Decision::AcquireLeader | Decision::RaceInitialize | Decision::Promote | Decision::StartPrimary
            if !lease_ok =>
        {
            Decision::Wait { reason: WaitReason::LeaseNotTrusted }
        }
        Decision::Promote | Decision::StartPrimary if o.watchdog_failed => {
            Decision::ReleaseLeader { reason: ReleaseReason::WatchdogUnavailable }
        }
        Decision::AcquireLeader | Decision::RaceInitialize if o.watchdog_failed && !o.pg.writable() => {
            Decision::Wait { reason: WaitReason::NotEligible("watchdog required but not usable") }
        }
        d => d,
    }
}

fn decide_on(o: &Observed<'_>, lease_ok: bool) -> Decision {
    let Some(c) = o.cluster else { return without_etcd(o) };
    let me = o.settings.name.as_str();
    let i_lead = c.leader.as_ref().is_some_and(|l| l.name == me);

    // Rule: data from another cluster is never touched and never leads.
    if let (Some(ours), Initialize::Sysid(cluster)) = (o.pg.sysid(), c.initialize)
        && ours != cluster
    {
        if i_lead {
            return Decision::ReleaseLeader { reason: ReleaseReason::SystemIdMismatch };
        }
        return Decision::Wait { reason: WaitReason::SystemIdMismatch { ours, cluster } };
    }

    match o.pg {
        PgView::NoData => return without_data(o, c, i_lead),
        PgView::Unusable { .. } if i_lead => {
            return Decision::ReleaseLeader { reason: ReleaseReason::DataDirectoryUnusable };
        }
        PgView::Unusable { .. } => {
            return Decision::Wait { reason: WaitReason::NotEligible("the data directory is unusable") };
        }
        _ => {}
    }

    // Rule: a former primary finding no valid `initialize` (missing, or left empty by a
    // bootstrap that died before publishing) publishes its system identifier.
    if c.leader.is_none()
        && !matches!(c.initialize, Initialize::Sysid(_))
        && o.pg.was_primary()
        && let Some(sysid) = o.pg.sysid()
    {
        return Decision::PublishInitialize { sysid };
    }
    if c.leader.is_none() && c.initialize == Initialize::Absent {
        return Decision::Wait { reason: WaitReason::NotInitialized };
    }

    match &c.leader {
        Some(l) if l.name == me => as_leader(o, c, l, lease_ok),
        Some(l) => as_follower(o, c, &l.name),
        None => unlocked(o, c),
    }
}

/// failsafe_mode: whom a primary asks (`POST /failsafe`) now, if anyone: while its lease does
/// not prove it (`Keeper::lease_unproven`: renewals late, etcd may be gone; or a new lease
/// without the leader key yet), every member of the last
/// `failsafe` key read. The rounds run on their own task, beside the HA loop, every
/// [`super::keeper::failsafe_interval`]: the loop may sit in an etcd read for `retry_timeout`,
/// and with `ttl = loop_wait + 2 x retry_timeout` a round sent only after a failed read can
/// come after the fence. A round while etcd is in fact fine does no harm: it only keeps the
/// members out of races they would not run.
pub fn failsafe_round_due(
    failsafe_mode: bool,
    armed: bool,
    lease_unproven: bool,
    members: Option<&[PeerRef]>,
) -> Option<&[PeerRef]> {
    (failsafe_mode && armed && lease_unproven).then_some(members).flatten()
}

/// failsafe_mode is on and a non-empty `failsafe` key leaves `name` out: it may not race.
fn not_in_failsafe(o: &Observed<'_>, c: &ClusterView, name: &str) -> bool {
    o.config.failsafe_mode && c.failsafe.as_ref().is_some_and(|l| !l.is_empty() && !l.iter().any(|(n, _)| n == name))
}

/// etcd cannot be read. The lease keeper fences a primary when its lease runs out (rule 1
/// above, and independently in the shell); replicas keep replicating; a stopped member starts
/// read-only so that it still serves reads.
fn without_etcd(o: &Observed<'_>) -> Decision {
    // Rule (failsafe_mode): a primary cut off from etcd asks every member of the last
    // `/failsafe` key to confirm it (`POST /failsafe`, sent by the failsafe task while the
    // lease renewals are late: `failsafe_round_due`); only while all of them do does the
    // keeper trust it past its lease (`LeaseView::failsafe_until`), and each of them stays out
    // of any race meanwhile. Without a `/failsafe` key read, there is nothing to prove.
    if o.config.failsafe_mode
        && o.pg.writable()
        && let Some(members) = &o.recent.failsafe_members
    {
        return Decision::Failsafe { members: members.clone() };
    }
    match o.pg {
        PgView::Stopped(_) if !o.config.pause && !start_failed(o) && !o.recent.diverged => {
            Decision::Follow { upstream: None }
        }
        _ => Decision::Wait { reason: WaitReason::EtcdUnreachable },
    }
}

/// No data directory: clone from the leader, bootstrap a new cluster, or wait.
fn without_data(o: &Observed<'_>, c: &ClusterView, i_lead: bool) -> Decision {
    if i_lead {
        return Decision::ReleaseLeader { reason: ReleaseReason::NoDataDirectory };
    }
    if o.config.pause {
        return Decision::Wait { reason: WaitReason::Paused("no data directory; no bootstrap or clone while paused") };
    }
    if let Some(leader) = &c.leader {
        // Rule: clone from a running member tagged `clonefrom`, else from the leader.
        let me = o.settings.name.as_str();
        let source = c
            .members
            .iter()
            .find(|m| m.tags.clonefrom && m.running && m.name != me && !m.conn_url.is_empty())
            .or_else(|| c.member(&leader.name));
        return match source {
            Some(m) => Decision::Clone { from: m.name.clone() },
            None => Decision::Wait { reason: WaitReason::LeaderMemberUnknown(leader.name.clone()) },
        };
    }
    match c.initialize {
        // Rule: bootstrap through the `initialize` race; nofailover members never bootstrap.
        Initialize::Absent if o.settings.tags.can_failover() => Decision::RaceInitialize,
        Initialize::Absent => Decision::Wait { reason: WaitReason::NotEligible("nofailover members do not bootstrap") },
        Initialize::Racing => Decision::Wait { reason: WaitReason::AnotherMemberBootstrapping },
        Initialize::Sysid(_) => Decision::Wait { reason: WaitReason::NoLeaderToCloneFrom },
    }
}

/// The `sync` key in force: synchronous mode is on in `config` and the key names a leader.
fn sync_key<'a>(o: &Observed<'_>, c: &'a ClusterView) -> Option<&'a SyncKey> {
    (o.config.sync.mode != SyncMode::Off).then_some(c.sync.as_ref()).flatten().filter(|k| k.active())
}

/// Rule (synchronous mode): only a member the `sync` key lists, or its leader, may lead. Every
/// acknowledged transaction is on those members (`sync.rs`); anyone else may lack some.
fn not_synchronous(o: &Observed<'_>, c: &ClusterView, who: &str) -> Option<WaitReason> {
    let k = sync_key(o, c)?;
    // Quorum commit: anyone may race; the votes decide (`quorum_votes`).
    if o.config.sync.mode == SyncMode::Quorum {
        return None;
    }
    if k.led_by(who) || k.lists(who) {
        return None;
    }
    Some(WaitReason::NotSynchronous { listed: k.members.clone() })
}

/// Rule (synchronous mode, quorum commit included): a switchover goes only to a member the
/// `sync` key lists, as Patroni's `get_failover_candidates` has it. With quorum commit anyone
/// with the votes may race after a failure, but a leader does not step down for a member that
/// could not get them: with nobody listed (right after a promotion) it would step down for
/// nobody, and the cluster would wait without a primary until a racer had its votes.
fn not_switchover_candidate(o: &Observed<'_>, c: &ClusterView, who: &str) -> Option<WaitReason> {
    let k = sync_key(o, c)?;
    (!k.lists(who)).then(|| WaitReason::NotSynchronous { listed: k.members.clone() })
}

/// Why member `who`, with this timeline and WAL position, may not lead, if it may not.
fn unfit(o: &Observed<'_>, c: &ClusterView, who: &str, timeline: u32, position: u64) -> Option<WaitReason> {
    if let Some(why) = not_synchronous(o, c, who) {
        return Some(why);
    }
    // Rule: never lead from a timeline behind the cluster's. Promoting there would create a
    // timeline id that already exists elsewhere with different contents.
    if let Some(cluster) = c.cluster_timeline_for(who, timeline)
        && timeline < cluster
    {
        return Some(WaitReason::StaleTimeline { ours: timeline, cluster });
    }
    // Rule: never lead while further behind the last known primary position than allowed.
    let limit = o.config.maximum_lag_on_failover;
    if let Some(optime) = c.status_optime {
        let lag = optime.saturating_sub(position);
        if lag > limit {
            return Some(WaitReason::TooFarBehind { lag, limit });
        }
    }
    None
}

/// We hold the leader key.
fn as_leader(o: &Observed<'_>, c: &ClusterView, key: &LeaderKey, lease_ok: bool) -> Decision {
    if Some(key.lease) != o.lease.id {
        // Our name on a lease we do not renew (the agent restarted, or its lease was
        // re-granted): move it onto our lease while the key still holds our name, or it
        // expires with the old lease.
        return if lease_ok { Decision::RetakeLeader } else { Decision::Wait { reason: WaitReason::LeaseNotTrusted } };
    }
    if !lease_ok {
        return Decision::Wait { reason: WaitReason::LeaseNotTrusted };
    }
    if let Some(sc) = &o.config.standby_cluster {
        return standby_leader(o, c, sc);
    }
    if o.config.pause {
        return paused_leader(o, c);
    }
    match o.pg {
        PgView::Running(r) if r.primary => lead_or_switch_over(o, c, r),
        // Rule: the key is ours and PostgreSQL is a replica (a takeover the agent did not
        // finish): promote if still fit, else let someone else lead.
        PgView::Running(r) => match unfit(o, c, &o.settings.name, r.timeline, r.wal_position) {
            None => Decision::Promote,
            Some(_) => Decision::ReleaseLeader { reason: ReleaseReason::NotFitToPromote },
        },
        PgView::Starting { .. } => {
            if start_timed_out(o) {
                Decision::ReleaseLeader { reason: ReleaseReason::StartTimedOut }
            } else {
                Decision::Wait { reason: WaitReason::PgStarting }
            }
        }
        PgView::Stopped(ctl) => {
            // Rule: a crashed primary is restarted in place; if it cannot start, the key is
            // released at once so that a replica takes over without waiting for the TTL.
            if start_failed(o) {
                Decision::ReleaseLeader { reason: ReleaseReason::StartFailed }
            } else if start_timed_out(o) {
                Decision::ReleaseLeader { reason: ReleaseReason::StartTimedOut }
            } else if ctl.state.was_primary() {
                Decision::StartPrimary
            } else {
                // A stopped replica holding the key: start it, promote on the next cycle.
                Decision::Follow { upstream: None }
            }
        }
        PgView::NoData | PgView::Unusable { .. } => Decision::ReleaseLeader { reason: ReleaseReason::NoDataDirectory },
    }
}

/// Rule (standby cluster): the leader key's holder is the standby leader. It replicates from
/// the remote primary named by `standby_cluster` (or replays its archive) and never promotes;
/// the other members follow it as they follow any leader. A primary here is the leader of a
/// cluster that `standby_cluster` was just set on (`patronictl demote-cluster`): it is stopped
/// cleanly and started again as the standby leader, keeping the key all along, so no other
/// member can promote meanwhile. Paused, PostgreSQL is neither stopped nor started, and the
/// key is kept (as Patroni keeps a standby leader's). A switchover (the `failover` key)
/// moves the standby leader's role as it moves a primary's: the same checks, then a step
/// down; the candidate takes the key and points itself at the remote primary.
fn standby_leader(o: &Observed<'_>, c: &ClusterView, sc: &outrigger_schema::StandbyCluster) -> Decision {
    let upstream = standby_upstream(sc).map(str::to_owned);
    match o.pg {
        PgView::Running(r) if r.primary && o.config.pause => {
            Decision::Wait { reason: WaitReason::Paused("standby_cluster is set; not demoting the primary") }
        }
        PgView::Running(r) if r.primary => Decision::DemoteCluster,
        PgView::Running(r) => {
            c.failover.as_ref().and_then(|f| switchover(o, c, f, r)).unwrap_or(Decision::LeadStandby { upstream })
        }
        PgView::Starting { .. } if start_timed_out(o) && !o.config.pause => {
            Decision::ReleaseLeader { reason: ReleaseReason::StartTimedOut }
        }
        PgView::Starting { .. } => Decision::Wait { reason: WaitReason::PgStarting },
        PgView::Stopped(_) if o.config.pause => {
            Decision::Wait { reason: WaitReason::Paused("PostgreSQL is not running; not starting it") }
        }
        PgView::Stopped(_) if start_failed(o) => Decision::ReleaseLeader { reason: ReleaseReason::StartFailed },
        PgView::Stopped(_) => Decision::LeadStandby { upstream },
        PgView::NoData | PgView::Unusable { .. } => Decision::ReleaseLeader { reason: ReleaseReason::NoDataDirectory },
    }
}

/// Whom a standby leader streams from: the remote primary when `standby_cluster` names its
/// host, else nobody (it replays the remote archive through `restore_command`).
pub fn standby_upstream(sc: &outrigger_schema::StandbyCluster) -> Option<&'static str> {
    sc.host.is_some().then_some(super::decision::REMOTE_PRIMARY)
}

/// Rule (paused): the leader keeps its key while its PostgreSQL runs as a primary, and
/// releases it when someone demoted or stopped it by hand; it never starts or promotes.
fn paused_leader(o: &Observed<'_>, c: &ClusterView) -> Decision {
    match o.pg {
        PgView::Running(r) if r.primary => lead_or_switch_over(o, c, r),
        PgView::Running(_) => Decision::ReleaseLeader { reason: ReleaseReason::NotPrimaryWhilePaused },
        PgView::Starting { .. } => Decision::Wait { reason: WaitReason::PgStarting },
        _ => Decision::ReleaseLeader { reason: ReleaseReason::NotRunningWhilePaused },
    }
}

/// A start failed recently: do not try again before one `ttl` has passed.
fn start_failed(o: &Observed<'_>) -> bool {
    o.recent.start_failed_at.is_some_and(|at| o.now.since(at) < o.settings.timings.ttl)
}

fn start_timed_out(o: &Observed<'_>) -> bool {
    o.recent.primary_down_since.is_some_and(|since| o.now.since(since) >= o.config.primary_start_timeout)
}

/// A leader with a running primary keeps leading, unless the `failover` key asks otherwise.
fn lead_or_switch_over(o: &Observed<'_>, c: &ClusterView, r: &RunningPg) -> Decision {
    c.failover.as_ref().and_then(|f| switchover(o, c, f, r)).unwrap_or(Decision::Lead)
}

/// The leader handles the `failover` key. `None`: nothing to do now (keep leading).
fn switchover(o: &Observed<'_>, c: &ClusterView, f: &FailoverRequest, r: &RunningPg) -> Option<Decision> {
    let me = o.settings.name.as_str();
    if let Some(l) = &f.leader
        && l != me
    {
        return Some(Decision::ClearFailover { reason: ClearReason::NamesAnotherLeader(l.clone()) });
    }
    // Rule (paused): only an immediate switchover to a named candidate.
    if o.config.pause {
        if f.scheduled_at.is_some() {
            return Some(Decision::ClearFailover { reason: ClearReason::PausedScheduled });
        }
        if f.candidate.is_none() {
            return Some(Decision::ClearFailover { reason: ClearReason::PausedNeedsCandidate });
        }
    }
    // Rule: a scheduled switchover waits for its time (the shell wakes up then); one more
    // than 1.5 x loop_wait in the past is stale and dropped, as Patroni does.
    if let Some(at) = &f.scheduled_at {
        let stale_after = u64::try_from((o.settings.timings.loop_wait * 3 / 2).as_millis()).unwrap_or(u64::MAX);
        match parse_rfc3339_ms(at) {
            None => return Some(Decision::ClearFailover { reason: ClearReason::BadSchedule(at.clone()) }),
            Some(ms) if ms > o.wall_ms => return None,
            Some(ms) if o.wall_ms - ms > stale_after => {
                return Some(Decision::ClearFailover { reason: ClearReason::Stale(at.clone()) });
            }
            Some(_) => {}
        }
    }
    let limit = o.config.maximum_lag_on_failover;
    // Rule: the candidate must already replicate on our timeline. One still on the previous
    // timeline (it has just followed us and not yet streamed) would refuse to promote, and we
    // would have stopped for nothing: the cluster without a primary for a whole ttl.
    let fit_by_key = |name: &str| {
        c.member(name).is_some_and(|m| {
            m.running
                && m.role == Role::Replica
                && m.tags.can_failover()
                && m.timeline.is_none_or(|t| t >= r.timeline)
                && r.wal_position.saturating_sub(m.lsn.unwrap_or(0)) <= limit
        })
    };
    // What the member answered to GET /patroni just now, when the shell has asked.
    let fit_by_answer = |name: &str| {
        o.peers.and_then(|ps| ps.iter().find(|p| p.name == name)).and_then(|p| p.status.as_ref()).is_some_and(|st| {
            !st.primary
                && st.tags.can_failover()
                && !st.watchdog_failed
                && st.timeline.is_none_or(|t| t >= r.timeline)
                && r.wal_position.saturating_sub(st.wal_position) <= limit
        })
    };
    let fit = |name: &str| {
        name != me
            && c.member(name).is_some()
            && not_switchover_candidate(o, c, name).is_none()
            && (fit_by_key(name) || fit_by_answer(name))
    };
    // Rule: a member key is refreshed once per loop_wait, so right after a role change it can
    // still say "primary" or "stopped". Before refusing a switchover on what the keys say, ask
    // the members themselves (as Patroni does, and as the REST pre-check did); refuse only
    // once they have answered.
    let ask_else = |members: Vec<&Member>, refusal: ClearReason| {
        let peers: Vec<PeerRef> = members
            .into_iter()
            .filter(|m| m.name != me && !m.api_url.is_empty())
            .map(|m| PeerRef::new(&m.name, &m.api_url))
            .collect();
        if o.peers.is_none() && !peers.is_empty() {
            Decision::ProbePeers { peers }
        } else {
            Decision::ClearFailover { reason: refusal }
        }
    };
    Some(match &f.candidate {
        Some(cand) if cand == me => Decision::ClearFailover { reason: ClearReason::CandidateIsLeader },
        Some(cand) if fit(cand) => Decision::StepDown { candidate: Some(cand.clone()) },
        // Rule (synchronous mode): a switchover goes only to a listed member.
        Some(cand) if not_switchover_candidate(o, c, cand).is_some() => {
            Decision::ClearFailover { reason: ClearReason::CandidateNotSynchronous(cand.clone()) }
        }
        Some(cand) => ask_else(c.member(cand).into_iter().collect(), ClearReason::CandidateNotEligible(cand.clone())),
        None if c.members.iter().any(|m| fit(&m.name)) => Decision::StepDown { candidate: None },
        None => ask_else(c.members.iter().collect(), ClearReason::NoEligibleCandidate),
    })
}

/// Someone else holds the leader key.
fn as_follower(o: &Observed<'_>, c: &ClusterView, leader: &str) -> Decision {
    // Rule: a primary that is not the leader is demoted at once (paused: reported only); so is
    // a postmaster that may accept writes without answering SQL.
    if o.pg.may_accept_writes() {
        if o.config.pause {
            return Decision::Wait { reason: WaitReason::PausedPrimaryWithoutKey(leader.to_owned()) };
        }
        return Decision::Demote { reason: DemoteReason::OtherLeader(leader.to_owned()) };
    }
    // Rule (paused): PostgreSQL is not started, except the old primary of a switchover.
    if o.config.pause && !matches!(o.pg, PgView::Running(_)) && o.recent.stepped_down_at.is_none() {
        return Decision::Wait { reason: WaitReason::Paused("PostgreSQL is not running; not starting it") };
    }
    let Some(lm) = c.member(leader) else {
        return match o.pg {
            PgView::Stopped(_) if !start_failed(o) && !o.recent.diverged => Decision::Follow { upstream: None },
            _ => Decision::Wait { reason: WaitReason::LeaderMemberUnknown(leader.to_owned()) },
        };
    };
    // Rule: a replica streams from the leader, or from the member its `replicatefrom` names
    // while that member can serve; a `nostream` replica from nobody (`core::cascade`).
    let source = cascade::source(&c.members, leader, &o.settings.name, &o.settings.tags);
    let follow = || Decision::Follow { upstream: source.map(str::to_owned) };
    match o.pg {
        PgView::Starting { .. } => Decision::Wait { reason: WaitReason::PgStarting },
        PgView::Running(r) => {
            let following = source.is_some() && r.upstream.as_deref() == source;
            // Rule: a replica streaming from its source is on the leader's history
            // (PostgreSQL refuses to stream across a fork, and a source other than the leader
            // is a running replica on the leader's timeline), whatever its timeline looks like
            // mid-switch.
            if let (true, true, Some(up)) = (following, r.streaming, source) {
                return Decision::Replicate { upstream: up.to_owned() };
            }
            // Rule: a replica that streamed from its source less than a ttl ago and has
            // paused (its walreceiver restarts on the leader's new timeline after a
            // promotion) reports a timeline and position that can be mid-switch: it is not
            // judged diverged on them. pg_rewind run on such a pair fails ("could not find
            // previous WAL record").
            if let (true, true, Some(up)) =
                (following, o.recent.streamed_at.is_some_and(|t| o.now.since(t) < o.settings.timings.ttl), source)
            {
                return Decision::Replicate { upstream: up.to_owned() };
            }
            // Rule: a running replica with WAL past the leader's switch point must be rewound
            // (PostgreSQL itself refuses to stream across that fork, so nothing is corrupted
            // meanwhile).
            let div = divergence::check(r.timeline, LocalEnd::Before(r.wal_position), lm.timeline, &c.history);
            match (matches!(div, Divergence::Diverged { .. }), following, source) {
                (true, _, _) => rejoin(o, leader),
                (false, true, Some(up)) => Decision::Replicate { upstream: up.to_owned() },
                _ => follow(),
            }
        }
        PgView::Stopped(ctl) => {
            if o.recent.diverged {
                return rejoin(o, leader);
            }
            // Only a clean primary shutdown tells where the WAL ends without reading it. A
            // crashed server is started as a replica first: crash recovery replays its WAL
            // and the check above then sees how far it reaches.
            let end = match ctl.state {
                ClusterState::ShutDown => LocalEnd::LastRecordAt(ctl.checkpoint_lsn),
                _ => LocalEnd::Unknown,
            };
            match divergence::check(ctl.timeline, end, lm.timeline, &c.history) {
                Divergence::Diverged { .. } => rejoin(o, leader),
                _ => follow(),
            }
        }
        PgView::NoData | PgView::Unusable { .. } => Decision::Wait { reason: WaitReason::PgStarting },
    }
}

/// Rule: a diverged member is rewound if allowed and possible, else reinitialised if allowed,
/// else kept stopped with the reason.
fn rejoin(o: &Observed<'_>, leader: &str) -> Decision {
    if o.config.pause {
        return Decision::Wait { reason: WaitReason::Paused("diverged from the leader; no pg_rewind or reinit") };
    }
    let s = o.settings;
    let rewindable = match o.pg {
        PgView::Running(r) => r.rewindable,
        PgView::Stopped(c) => c.rewindable,
        _ => false,
    };
    let use_rewind = s.use_pg_rewind.or(o.config.use_pg_rewind).unwrap_or(false);
    if o.recent.rewind_failed {
        return if s.remove_data_directory_on_rewind_failure {
            Decision::Reinit { leader: leader.to_owned() }
        } else {
            Decision::StayStopped { reason: StopReason::RewindFailed }
        };
    }
    if use_rewind && rewindable {
        Decision::Rewind { leader: leader.to_owned() }
    } else if s.remove_data_directory_on_diverged_timelines {
        Decision::Reinit { leader: leader.to_owned() }
    } else {
        Decision::StayStopped { reason: StopReason::DivergedCannotRewind }
    }
}

/// Nobody holds the leader key.
fn unlocked(o: &Observed<'_>, c: &ClusterView) -> Decision {
    match o.pg {
        // Rule (paused): a primary without the key takes it, whatever its timeline.
        PgView::Running(r) if r.primary && o.config.pause => Decision::AcquireLeader,
        PgView::Running(r) if r.primary => {
            // Rule: a primary whose key vanished takes it back at once (no peers to ask: it
            // is the primary), unless the cluster has moved past its timeline meanwhile.
            match c.cluster_timeline() {
                Some(cluster) if r.timeline < cluster => {
                    Decision::Demote { reason: DemoteReason::StaleTimeline { ours: r.timeline, cluster } }
                }
                _ => Decision::AcquireLeader,
            }
        }
        // Rule (paused): no automatic failover; only the named candidate of a switchover races.
        PgView::Running(_)
            if o.config.pause
                && c.failover.as_ref().and_then(|f| f.candidate.as_deref()) != Some(o.settings.name.as_str()) =>
        {
            Decision::Wait { reason: WaitReason::Paused("no automatic failover") }
        }
        PgView::Running(r) => race(o, c, r),
        PgView::Starting { .. } => Decision::Wait { reason: WaitReason::PgStarting },
        // Rule: the old primary of a switchover waits (bounded) for the candidate to take the
        // key, then follows it; starting it read-only meanwhile would only slow the candidate.
        PgView::Stopped(_) if within_switchover_wait(o, o.recent.stepped_down_at) => {
            Decision::Wait { reason: WaitReason::SteppedDown }
        }
        PgView::Stopped(_) if o.config.pause => {
            Decision::Wait { reason: WaitReason::Paused("PostgreSQL is not running; not starting it") }
        }
        PgView::Stopped(_) if o.recent.diverged => {
            Decision::Wait { reason: WaitReason::NotEligible("diverged; waiting for a leader to rewind from") }
        }
        PgView::Stopped(_) if start_failed(o) => {
            Decision::Wait { reason: WaitReason::NotEligible("PostgreSQL does not start") }
        }
        // Only a running replica can be compared with its peers: start it first.
        PgView::Stopped(_) => Decision::Follow { upstream: None },
        PgView::NoData | PgView::Unusable { .. } => Decision::Wait { reason: WaitReason::PgStarting },
    }
}

/// Whether less than one `ttl` has passed since `since` (a switchover's waits are bounded).
fn within_switchover_wait(o: &Observed<'_>, since: Option<super::observed::Moment>) -> bool {
    since.is_some_and(|t| o.now.since(t) < o.settings.timings.ttl)
}

/// The leader race (Patroni's `is_healthiest_node`), for a running replica.
fn race(o: &Observed<'_>, c: &ClusterView, r: &RunningPg) -> Decision {
    let s = o.settings;
    let me = s.name.as_str();
    let failover = c.failover.as_ref();
    let named = failover.and_then(|f| f.candidate.as_deref());
    // How long a lease we cannot see any more may still cover a primary.
    let cover = super::timing::cover(s.timings.ttl, o.recent.leader_lease_ttl);
    if !s.tags.can_failover() {
        return Decision::Wait { reason: WaitReason::NotEligible("tagged nofailover or failover_priority <= 0") };
    }
    // Rule: a member whose `pre_promote` script refused a promotion stays out of races for a
    // ttl (Patroni's), so that another member can take over.
    if o.recent.pre_promote_failed_at.is_some_and(|at| o.now.since(at) < s.timings.ttl) {
        return Decision::Wait { reason: WaitReason::PrePromoteFailed };
    }
    if let Some(why) = unfit(o, c, &o.settings.name, r.timeline, r.wal_position) {
        return Decision::Wait { reason: why };
    }
    if o.config.failsafe_mode {
        // Rule (failsafe_mode): a leader that confirmed itself to us by `POST /failsafe` less
        // than a ttl ago still runs as primary (cut off from etcd, it relies on us not racing).
        // The ttl is the longest we know of (`timing::cover`): the leader may count with one
        // we have not read yet.
        if let Some((leader, at)) = &o.recent.failsafe_post
            && leader != me
            && o.now.since(*at) < cover
        {
            return Decision::Wait { reason: WaitReason::FailsafeLeaderAlive(leader.clone()) };
        }
        // Rule (failsafe_mode): a member `/failsafe` does not list is not asked by a primary
        // cut off from etcd, so it must not race (Patroni's rule).
        if not_in_failsafe(o, c, me) {
            return Decision::Wait { reason: WaitReason::NotInFailsafe };
        }
    }
    // Rule: after etcd revoked our lease early (a mass revocation by a stalled former raft
    // leader, etcd #15247), the old primary's lease went too, but it fences only when it
    // notices: at the latest retry_timeout before its lease would have expired, which is no
    // later than one ttl after the revocation. Until then nobody races (the failover then
    // takes as long as after an ordinary expiry). The old primary's lease may have been granted
    // for another ttl than ours (`timing::cover`).
    if o.lease.revoked_within(o.now, cover) {
        return Decision::Wait { reason: WaitReason::LeaseRevokedEarly };
    }
    // Rule: an agent that started less than a ttl ago does not know who led before it (the
    // former leader is asked in a race even when its keys are gone, but only if we saw it):
    // it races only once any lease that could still cover a running primary has run out.
    if o.recent.started_at.is_none_or(|at| o.now.since(at) < cover) {
        return Decision::Wait { reason: WaitReason::JustStarted };
    }
    // Rule: during a switchover, nobody takes over before it has the old primary's WAL up to
    // the position it published when it stepped down (`status.optime`, its shutdown
    // checkpoint), so no acknowledged write is lost even with asynchronous replication. The
    // wait is bounded; after it, the ordinary lag limit applies.
    if failover.is_some()
        && let Some(target) = c.status_optime
        && r.wal_position < target
        && within_switchover_wait(o, o.recent.unlocked_since)
    {
        return Decision::Wait { reason: WaitReason::CatchingUp { ours: r.wal_position, target } };
    }
    let mut others: Vec<PeerRef> = c
        .members
        .iter()
        .filter(|m| m.name != me && !m.api_url.is_empty())
        .map(|m| PeerRef::new(&m.name, &m.api_url))
        .collect();
    // Rule: the former leader is asked too, although its keys are gone: its lease may have
    // gone early (revoked) while its PostgreSQL still takes writes. So are the members of
    // `/failsafe` (after an etcd outage longer than the ttl their member keys are gone).
    let failsafe = c.failsafe.as_deref().map(|f| failsafe_peers(me, f)).unwrap_or_default();
    for p in o.recent.known_peers.iter().chain(o.recent.former_leader.as_ref()).chain(&failsafe) {
        if p.name != me && !others.iter().any(|q| q.name == p.name) {
            others.push(p.clone());
        }
    }
    if others.is_empty() {
        // Rule (quorum commit): with nobody to ask, a member that needs votes has none (the
        // simulation found a restarted non-voter alone in etcd after a mass lease revocation
        // taking over without the commits only the voters had).
        if let Some(k) = sync_key(o, c).filter(|k| o.config.sync.mode == SyncMode::Quorum && !k.led_by(me)) {
            let needed = if k.lists(me) { k.quorum } else { k.quorum + 1 };
            if needed > 0 {
                return Decision::Wait { reason: WaitReason::NoQuorum { votes: 0, needed } };
            }
        }
        return Decision::AcquireLeader;
    }
    let Some(probes) = o.peers else { return Decision::ProbePeers { peers: others } };
    // Rule: answers are read only against the keys they were asked under (`ProbeBasis`):
    // when another member led while they came in, they are asked again.
    if o.probed_in.as_ref() != Some(&super::observed::ProbeBasis::of(c)) {
        return Decision::ProbePeers { peers: others };
    }
    let answered = || probes.iter().filter_map(|p| p.status.as_ref().map(|s| (p.name.as_str(), s)));

    // Rule: never race while a peer answers that it is still a primary.
    if let Some((name, _)) = answered().find(|(_, st)| st.primary) {
        return Decision::Wait { reason: WaitReason::PrimaryStillAlive(name.to_owned()) };
    }
    // Rule: a peer saw its lease revoked early less than a ttl ago: so did the old primary's,
    // and it may not have fenced yet (our own lease may have expired instead, while we were
    // cut off, and told us nothing).
    if answered().any(|(_, st)| st.lease_revoked_recently) {
        return Decision::Wait { reason: WaitReason::LeaseRevokedEarly };
    }
    // Rule (quorum commit): a member races only with `quorum` votes from the sync key's
    // leader and voters (`quorum + 1` when it is not one of them): replicas at or behind our
    // position. Together with us they overlap every set of standbys that confirmed a commit,
    // so we have every acknowledged commit. The key's own leader needs none (nobody may be
    // ahead of it: checked below).
    let quorum = sync_key(o, c).filter(|_| o.config.sync.mode == SyncMode::Quorum);
    let voter = |name: &str| quorum.is_some_and(|k| k.led_by(name) || k.lists(name));
    if let Some(k) = quorum
        && !k.led_by(me)
    {
        let votes = answered()
            .filter(|(n, st)| {
                voter(n)
                    && !st.primary
                    && st.tags.can_failover()
                    && !st.watchdog_failed
                    && st.wal_position > 0
                    && st.wal_position <= r.wal_position
            })
            .count() as u32;
        let needed = if voter(me) { k.quorum } else { k.quorum + 1 };
        if votes < needed {
            return Decision::Wait { reason: WaitReason::NoQuorum { votes, needed } };
        }
    }
    // Rule: a switchover names its candidate; others stand back while it is healthy. The
    // former leader of a switchover stands back for any healthy member.
    if named == Some(me) {
        return Decision::AcquireLeader;
    }
    // A peer that could lead: failover-capable and not disqualified by lag or timeline
    // (judged on what it answered, as it would judge itself).
    // A peer the failsafe key leaves out cannot race (rule above), so it holds nobody back.
    let fit = |name: &str, st: &PeerStatus| {
        st.tags.can_failover()
            && !st.watchdog_failed
            && !not_in_failsafe(o, c, name)
            && unfit(o, c, name, st.timeline.unwrap_or(r.timeline), st.wal_position).is_none()
    };
    // The stand-back lasts one ttl from when the cluster lost its leader: a candidate that
    // looks fit may still be unable to take over (with quorum commit, too far behind for the
    // votes it needs), and the cluster must not stay without a primary for it.
    let standing_back = o.recent.unlocked_since.is_none_or(|t| o.now.since(t) < o.settings.timings.ttl);
    if let Some(cand) = named
        && standing_back
        && answered().any(|(n, st)| n == cand && fit(n, st))
    {
        return Decision::Wait { reason: WaitReason::CandidateWillTakeOver(cand.to_owned()) };
    }
    let former = failover.and_then(|f| f.leader.as_deref());
    if former == Some(me)
        && standing_back
        && let Some((n, _)) = answered().find(|(n, st)| fit(n, st))
    {
        return Decision::Wait { reason: WaitReason::CandidateWillTakeOver(n.to_owned()) };
    }
    // Rule: the member furthest ahead wins; at equal positions, the higher failover_priority.
    // The former leader of a switchover is not a competitor: it stands back (above).
    // Quorum commit: only the voters are compared (as Patroni does): a faster standby that is
    // not a voter must not hold back one that can prove it has every acknowledged commit.
    for (name, st) in answered().filter(|(n, st)| Some(*n) != former && fit(n, st) && (quorum.is_none() || voter(n))) {
        if st.wal_position > r.wal_position {
            return Decision::Wait {
                reason: WaitReason::PeerAhead { name: name.to_owned(), lsn: st.wal_position, ours: r.wal_position },
            };
        }
        if st.wal_position == r.wal_position && st.tags.failover_priority > s.tags.failover_priority {
            return Decision::Wait { reason: WaitReason::PeerPreferred(name.to_owned()) };
        }
    }
    Decision::AcquireLeader
}
