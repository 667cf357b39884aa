//! One named case per HA rule. Each builds an observation from a small fixture (member `n1`
//! in a 3-member cluster, ttl 3 s, loop_wait 1 s, retry_timeout 1 s) and checks the decision.

use std::time::Duration;

use super::*;
use crate::config::Timings;

const ME: &str = "n1";
const MY_LEASE: i64 = 7;
const SYSID: u64 = 42;

struct Fx {
    settings: Settings,
    cluster: Option<ClusterView>,
    config: DynConfig,
    lease: LeaseView,
    pg: PgView,
    peers: Option<Vec<PeerProbe>>,
    /// The keys the peers were asked under; `None`: the fixture's own cluster.
    probed_in: Option<ProbeBasis>,
    recent: Recent,
    now: Moment,
    wall_ms: u64,
    watchdog_failed: bool,
}

pub(super) fn member(name: &str, role: Role, lsn: u64, timeline: u32) -> Member {
    Member {
        name: name.into(),
        conn_url: format!("postgres://{name}:5432/postgres"),
        api_url: format!("http://{name}:8008/patroni"),
        role,
        running: true,
        lsn: Some(lsn),
        timeline: Some(timeline),
        tags: Tags::default(),
        lease: if name == ME { MY_LEASE } else { 100 },
    }
}

fn replica(lsn: u64, timeline: u32, upstream: Option<&str>) -> PgView {
    PgView::Running(RunningPg {
        sysid: SYSID,
        primary: false,
        timeline,
        wal_position: lsn,
        upstream: upstream.map(str::to_owned),
        streaming: false,
        rewindable: true,
    })
}

fn primary(lsn: u64, timeline: u32) -> PgView {
    PgView::Running(RunningPg {
        sysid: SYSID,
        primary: true,
        timeline,
        wal_position: lsn,
        upstream: None,
        streaming: false,
        rewindable: true,
    })
}

fn stopped(state: ClusterState, timeline: u32, checkpoint_lsn: u64) -> PgView {
    PgView::Stopped(Control { sysid: SYSID, state, timeline, checkpoint_lsn, rewindable: true })
}

fn answer(name: &str, primary: bool, lsn: u64) -> PeerProbe {
    PeerProbe {
        name: name.into(),
        status: Some(PeerStatus {
            primary,
            wal_position: lsn,
            timeline: Some(1),
            tags: Tags::default(),
            watchdog_failed: false,
            lease_revoked_recently: false,
        }),
    }
}

fn silent(name: &str) -> PeerProbe {
    PeerProbe { name: name.into(), status: None }
}

impl Fx {
    /// n1 is a streaming replica at LSN 1000 on timeline 1; n2 and n3 are replicas; nobody
    /// holds the leader key; our lease is fresh.
    fn new() -> Self {
        let mut c = ClusterView::empty();
        c.initialize = Initialize::Sysid(SYSID);
        c.members = vec![
            member("n1", Role::Replica, 1000, 1),
            member("n2", Role::Replica, 900, 1),
            member("n3", Role::Replica, 900, 1),
        ];
        c.status_optime = Some(1000);
        Self {
            settings: Settings {
                name: ME.into(),
                timings: Timings {
                    ttl: Duration::from_secs(3),
                    loop_wait: Duration::from_secs(1),
                    retry_timeout: Duration::from_secs(1),
                },
                tags: Tags::default(),
                use_pg_rewind: Some(true),
                remove_data_directory_on_rewind_failure: false,
                remove_data_directory_on_diverged_timelines: false,
            },
            cluster: Some(c),
            config: DynConfig::default(),
            lease: LeaseView {
                id: Some(MY_LEASE),
                expires_at: Moment::from_millis(12_900),
                revoked_at: None,
                failsafe_until: None,
                margin: Duration::ZERO,
            },
            pg: replica(1000, 1, None),
            peers: None,
            probed_in: None,
            recent: Recent { started_at: Some(Moment::from_millis(0)), ..Recent::default() },
            now: Moment::from_millis(10_000),
            wall_ms: 1_795_514_400_000,
            watchdog_failed: false,
        }
    }

    fn decide(&self) -> Decision {
        decide(&Observed {
            now: self.now,
            wall_ms: self.wall_ms,
            settings: &self.settings,
            cluster: self.cluster.as_ref(),
            config: &self.config,
            lease: self.lease,
            pg: &self.pg,
            peers: self.peers.as_deref(),
            probed_in: self
                .peers
                .as_ref()
                .and_then(|_| self.probed_in.clone().or_else(|| self.cluster.as_ref().map(ProbeBasis::of))),
            recent: &self.recent,
            watchdog_failed: self.watchdog_failed,
        })
    }

    fn c(&mut self) -> &mut ClusterView {
        self.cluster.as_mut().expect("fixture has a cluster")
    }

    fn leader(mut self, name: &str) -> Self {
        let lease = if name == ME { MY_LEASE } else { 100 };
        self.c().leader = Some(LeaderKey { name: name.into(), lease, mod_revision: 5 });
        if let Some(m) = self.c().members.iter_mut().find(|m| m.name == name) {
            m.role = Role::Primary;
        }
        self
    }

    fn pg(mut self, pg: PgView) -> Self {
        self.pg = pg;
        self
    }

    fn peers(mut self, p: Vec<PeerProbe>) -> Self {
        self.peers = Some(p);
        self
    }

    fn history(mut self, h: &[(u32, u64)]) -> Self {
        self.c().history = h.iter().map(|&(timeline, lsn)| TimelineSwitch { timeline, lsn, leader: None }).collect();
        self
    }

    fn member_timeline(mut self, name: &str, tl: u32) -> Self {
        if let Some(m) = self.c().members.iter_mut().find(|m| m.name == name) {
            m.timeline = Some(tl);
        }
        self
    }

    fn failover(mut self, leader: Option<&str>, candidate: Option<&str>) -> Self {
        self.c().failover = Some(FailoverRequest {
            leader: leader.map(str::to_owned),
            candidate: candidate.map(str::to_owned),
            scheduled_at: None,
            mod_revision: 9,
        });
        self
    }
}

fn wait(d: &Decision) -> &WaitReason {
    match d {
        Decision::Wait { reason } => reason,
        other => panic!("expected a wait, got {other:?} ({other})"),
    }
}

// ---- fencing and etcd outages ----

#[test]
fn primary_fences_when_its_lease_was_not_renewed_in_time() {
    let mut fx = Fx::new().leader(ME).pg(primary(1000, 1));
    // Lease confirmed until 11_000: fence point (expiry - retry_timeout) is 10_000 = now.
    fx.lease.expires_at = Moment::from_millis(11_000);
    assert_eq!(fx.decide(), Decision::Fence { reason: FenceReason::LeaseNotRenewed });
}

#[test]
fn primary_fences_when_etcd_is_unreachable_and_its_lease_runs_out() {
    let mut fx = Fx::new().pg(primary(1000, 1));
    fx.cluster = None;
    fx.lease.expires_at = Moment::from_millis(10_500);
    assert_eq!(fx.decide(), Decision::Fence { reason: FenceReason::EtcdUnreachable });
}

#[test]
fn primary_keeps_running_through_an_etcd_blip_while_its_lease_is_trusted() {
    let mut fx = Fx::new().pg(primary(1000, 1));
    fx.cluster = None;
    assert_eq!(wait(&fx.decide()), &WaitReason::EtcdUnreachable);
}

#[test]
fn primary_without_any_lease_is_fenced() {
    let mut fx = Fx::new().leader(ME).pg(primary(1000, 1));
    fx.lease = LeaseView::NONE;
    assert!(matches!(fx.decide(), Decision::Fence { .. }));
}

#[test]
fn replica_keeps_replicating_while_etcd_is_unreachable() {
    let mut fx = Fx::new().pg(replica(1000, 1, Some("n2")));
    fx.cluster = None;
    fx.lease = LeaseView::NONE;
    assert_eq!(wait(&fx.decide()), &WaitReason::EtcdUnreachable);
}

#[test]
fn fenced_primary_restarts_read_only_while_etcd_is_unreachable() {
    let mut fx = Fx::new().pg(stopped(ClusterState::InProduction, 1, 500));
    fx.cluster = None;
    assert_eq!(fx.decide(), Decision::Follow { upstream: None });
}

// ---- failsafe_mode ----

fn failsafe(mut fx: Fx) -> Fx {
    fx.config.failsafe_mode = true;
    fx
}

#[test]
fn with_failsafe_mode_a_primary_cut_off_from_etcd_asks_every_listed_member() {
    let mut fx = failsafe(Fx::new().pg(primary(1000, 1)));
    fx.cluster = None;
    fx.recent.failsafe_members =
        Some(vec![PeerRef::new("n2", "http://n2:8008/patroni"), PeerRef::new("n3", "http://n3:8008/patroni")]);
    match fx.decide() {
        Decision::Failsafe { members } => assert_eq!(members.len(), 2),
        other => panic!("{other:?}"),
    }
    // Without a failsafe key ever read there is nothing to prove: as without failsafe_mode.
    fx.recent.failsafe_members = None;
    assert_eq!(wait(&fx.decide()), &WaitReason::EtcdUnreachable);
    // failsafe_mode off: the same.
    fx.recent.failsafe_members = Some(vec![]);
    fx.config.failsafe_mode = false;
    assert_eq!(wait(&fx.decide()), &WaitReason::EtcdUnreachable);
}

#[test]
fn with_failsafe_mode_a_primary_confirmed_by_every_member_is_not_fenced_past_its_lease() {
    let mut fx = failsafe(Fx::new().pg(primary(1000, 1)));
    fx.cluster = None;
    fx.recent.failsafe_members = Some(vec![]);
    // The lease ran out (fence point 9_500 < now 10_000) ...
    fx.lease.expires_at = Moment::from_millis(10_500);
    assert_eq!(fx.decide(), Decision::Fence { reason: FenceReason::EtcdUnreachable });
    // ... but the members confirmed it until 11_000.
    fx.lease.failsafe_until = Some(Moment::from_millis(11_000));
    assert!(matches!(fx.decide(), Decision::Failsafe { .. }));
    // Once that runs out too, it is fenced.
    fx.now = Moment::from_millis(11_000);
    assert_eq!(fx.decide(), Decision::Fence { reason: FenceReason::EtcdUnreachable });
}

#[test]
fn failsafe_proof_never_licenses_taking_the_leader_key() {
    // etcd readable again, our lease gone, the members' proof still valid: the primary keeps
    // running (no fence) but takes the key back only on a lease of its own.
    let mut fx = failsafe(Fx::new().pg(primary(1000, 1)));
    fx.lease = LeaseView { failsafe_until: Some(Moment::from_millis(11_000)), ..LeaseView::NONE };
    assert_eq!(wait(&fx.decide()), &WaitReason::LeaseNotTrusted);
}

#[test]
fn with_failsafe_mode_a_member_that_accepted_a_post_within_a_ttl_does_not_race() {
    let mut fx = failsafe(Fx::new().peers(vec![answer("n2", false, 900), answer("n3", false, 900)]));
    fx.recent.failsafe_post = Some(("n2".into(), Moment::from_millis(7_500)));
    assert_eq!(wait(&fx.decide()), &WaitReason::FailsafeLeaderAlive("n2".into()));
    // A ttl (3 s) later it races again.
    fx.recent.failsafe_post = Some(("n2".into(), Moment::from_millis(7_000)));
    assert_eq!(fx.decide(), Decision::AcquireLeader);
}

#[test]
fn with_failsafe_mode_a_member_missing_from_the_failsafe_key_does_not_race() {
    let mut fx = failsafe(Fx::new().peers(vec![answer("n2", false, 900), answer("n3", false, 900)]));
    fx.c().failsafe =
        Some(vec![("n2".into(), "http://n2:8008/patroni".into()), ("n3".into(), "http://n3:8008/patroni".into())]);
    assert_eq!(wait(&fx.decide()), &WaitReason::NotInFailsafe);
    fx.c().failsafe.as_mut().unwrap().push((ME.into(), "http://n1:8008/patroni".into()));
    assert_eq!(fx.decide(), Decision::AcquireLeader);
    // A peer further ahead that the key leaves out cannot race, so it holds nobody back.
    fx.c().failsafe.as_mut().unwrap().retain(|(n, _)| n != "n3");
    fx.peers = Some(vec![answer("n2", false, 900), answer("n3", false, 5000)]);
    assert_eq!(fx.decide(), Decision::AcquireLeader);
    // failsafe_mode off: the key is not looked at.
    fx.peers = Some(vec![answer("n2", false, 900), answer("n3", false, 900)]);
    fx.c().failsafe = Some(vec![]);
    fx.config.failsafe_mode = false;
    assert_eq!(fx.decide(), Decision::AcquireLeader);
}

#[test]
fn with_failsafe_mode_the_failsafe_members_are_asked_in_a_race_though_their_keys_expired() {
    let mut fx = failsafe(Fx::new());
    fx.c().members.retain(|m| m.name == ME);
    fx.c().failsafe =
        Some(vec![(ME.into(), "http://n1:8008/patroni".into()), ("n2".into(), "http://n2:8008/patroni".into())]);
    match fx.decide() {
        Decision::ProbePeers { peers } => assert_eq!(peers.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["n2"]),
        other => panic!("{other:?}"),
    }
}

// ---- leading ----

#[test]
fn leader_with_a_running_primary_leads() {
    assert_eq!(Fx::new().leader(ME).pg(primary(1000, 1)).decide(), Decision::Lead);
}

#[test]
fn leader_key_on_an_old_lease_of_ours_is_retaken() {
    let mut fx = Fx::new().leader(ME).pg(primary(1000, 1));
    fx.c().leader.as_mut().unwrap().lease = 3;
    assert_eq!(fx.decide(), Decision::RetakeLeader);
}

#[test]
fn leader_without_a_trusted_lease_does_not_promote() {
    let mut fx = Fx::new().leader(ME).pg(replica(1000, 1, None));
    fx.lease.expires_at = Moment::from_millis(10_200);
    assert_eq!(wait(&fx.decide()), &WaitReason::LeaseNotTrusted);
}

#[test]
fn leader_holding_the_key_with_a_replica_promotes_it() {
    assert_eq!(Fx::new().leader(ME).pg(replica(1000, 1, None)).decide(), Decision::Promote);
}

#[test]
fn leader_holding_the_key_with_a_lagging_replica_releases_it() {
    let fx = Fx::new().leader(ME).pg(replica(1, 1, None));
    assert_eq!(
        Fx { config: DynConfig { maximum_lag_on_failover: 10, ..DynConfig::default() }, ..fx }.decide(),
        Decision::ReleaseLeader { reason: ReleaseReason::NotFitToPromote }
    );
}

#[test]
fn leader_restarts_its_crashed_primary_in_place() {
    let fx = Fx::new().leader(ME).pg(stopped(ClusterState::InProduction, 1, 900));
    assert_eq!(fx.decide(), Decision::StartPrimary);
}

#[test]
fn leader_releases_the_key_when_postgres_fails_to_start() {
    let mut fx = Fx::new().leader(ME).pg(stopped(ClusterState::InProduction, 1, 900));
    fx.recent.start_failed_at = Some(Moment::from_millis(9_000));
    assert_eq!(fx.decide(), Decision::ReleaseLeader { reason: ReleaseReason::StartFailed });
}

#[test]
fn leader_releases_the_key_when_postgres_is_down_past_primary_start_timeout() {
    let mut fx = Fx::new().leader(ME).pg(stopped(ClusterState::InProduction, 1, 900));
    fx.config.primary_start_timeout = Duration::from_secs(5);
    fx.recent.primary_down_since = Some(Moment::from_millis(4_000));
    assert_eq!(fx.decide(), Decision::ReleaseLeader { reason: ReleaseReason::StartTimedOut });
}

#[test]
fn leader_without_a_data_directory_releases_the_key() {
    let fx = Fx::new().leader(ME).pg(PgView::NoData);
    assert_eq!(fx.decide(), Decision::ReleaseLeader { reason: ReleaseReason::NoDataDirectory });
}

// ---- demoting and following ----

#[test]
fn primary_demotes_at_once_when_another_member_holds_the_key() {
    let fx = Fx::new().leader("n2").pg(primary(1200, 1));
    assert_eq!(fx.decide(), Decision::Demote { reason: DemoteReason::OtherLeader("n2".into()) });
}

#[test]
fn replica_points_itself_at_a_new_leader() {
    let fx = Fx::new().leader("n2").pg(replica(900, 1, Some("n3")));
    assert_eq!(fx.decide(), Decision::Follow { upstream: Some("n2".into()) });
}

#[test]
fn a_replicatefrom_replica_streams_from_the_member_it_names_and_from_the_leader_when_that_one_cannot_serve() {
    let mut fx = Fx::new().leader("n2").pg(replica(900, 1, Some("n2")));
    fx.settings.tags.replicatefrom = Some("n3".into());
    assert_eq!(fx.decide(), Decision::Follow { upstream: Some("n3".into()) });
    fx.pg = replica(900, 1, Some("n3"));
    assert_eq!(fx.decide(), Decision::Replicate { upstream: "n3".into() });
    fx.c().members[2].running = false;
    assert_eq!(fx.decide(), Decision::Follow { upstream: Some("n2".into()) }, "n3 is stopped");
    fx.pg = replica(900, 1, Some("n2"));
    assert_eq!(fx.decide(), Decision::Replicate { upstream: "n2".into() });
}

#[test]
fn a_nostream_replica_runs_without_an_upstream_and_is_still_rewound_when_diverged() {
    let mut fx = Fx::new().leader("n2").pg(replica(900, 1, Some("n2")));
    fx.settings.tags.nostream = true;
    assert_eq!(fx.decide(), Decision::Follow { upstream: None });
    fx.pg = replica(900, 1, None);
    assert_eq!(fx.decide(), Decision::Follow { upstream: None });
    let fx = fx.history(&[(1, 500)]).member_timeline("n2", 2);
    assert!(matches!(fx.decide(), Decision::Rewind { .. }), "{:?}", fx.decide());
}

#[test]
fn replica_streaming_from_the_leader_just_replicates() {
    let fx = Fx::new().leader("n2").pg(replica(900, 1, Some("n2")));
    assert_eq!(fx.decide(), Decision::Replicate { upstream: "n2".into() });
}

#[test]
fn stopped_replica_is_started_following_the_leader() {
    let fx = Fx::new().leader("n2").pg(stopped(ClusterState::ShutDownInRecovery, 1, 800));
    assert_eq!(fx.decide(), Decision::Follow { upstream: Some("n2".into()) });
}

#[test]
fn follower_waits_for_a_leader_that_has_not_published_its_member_key() {
    let mut fx = Fx::new().leader("n4").pg(replica(900, 1, None));
    fx.c().leader.as_mut().unwrap().name = "n4".into();
    assert_eq!(wait(&fx.decide()), &WaitReason::LeaderMemberUnknown("n4".into()));
}

// ---- rejoin of a former primary ----

#[test]
fn clean_former_primary_behind_the_switch_point_follows_without_rewind() {
    // Switchover: our shutdown checkpoint at 990 was replayed by n2, which forked at 1000.
    let fx = Fx::new().leader("n2").member_timeline("n2", 2).history(&[(1, 1000)]).pg(stopped(
        ClusterState::ShutDown,
        1,
        990,
    ));
    assert_eq!(fx.decide(), Decision::Follow { upstream: Some("n2".into()) });
}

#[test]
fn former_primary_with_wal_past_the_switch_point_is_rewound() {
    let fx = Fx::new().leader("n2").member_timeline("n2", 2).history(&[(1, 1000)]).pg(stopped(
        ClusterState::ShutDown,
        1,
        1500,
    ));
    assert_eq!(fx.decide(), Decision::Rewind { leader: "n2".into() });
}

#[test]
fn crashed_former_primary_starts_as_a_replica_to_find_where_its_wal_ends() {
    let fx = Fx::new().leader("n2").member_timeline("n2", 2).history(&[(1, 1000)]).pg(stopped(
        ClusterState::InProduction,
        1,
        500,
    ));
    assert_eq!(fx.decide(), Decision::Follow { upstream: Some("n2".into()) });
}

#[test]
fn running_replica_with_wal_past_the_switch_point_is_rewound() {
    let fx = Fx::new().leader("n2").member_timeline("n2", 2).history(&[(1, 1000)]).pg(replica(1300, 1, Some("n2")));
    assert_eq!(fx.decide(), Decision::Rewind { leader: "n2".into() });
}

#[test]
fn replica_streaming_from_the_leader_is_never_judged_diverged() {
    // Mid timeline switch the reported timeline can lag the position it received.
    let mut pg = replica(1300, 1, Some("n2"));
    if let PgView::Running(r) = &mut pg {
        r.streaming = true;
    }
    let fx = Fx::new().leader("n2").member_timeline("n2", 2).history(&[(1, 1000)]).pg(pg);
    assert_eq!(fx.decide(), Decision::Replicate { upstream: "n2".into() });
}

#[test]
fn diverged_member_without_rewind_is_reinitialised_when_allowed() {
    let mut fx = Fx::new().leader("n2").member_timeline("n2", 2).history(&[(1, 1000)]).pg(stopped(
        ClusterState::ShutDown,
        1,
        1500,
    ));
    fx.settings.use_pg_rewind = Some(false);
    fx.settings.remove_data_directory_on_diverged_timelines = true;
    assert_eq!(fx.decide(), Decision::Reinit { leader: "n2".into() });
}

#[test]
fn diverged_member_that_cannot_rewind_or_reinit_stays_stopped() {
    let mut fx = Fx::new().leader("n2").member_timeline("n2", 2).history(&[(1, 1000)]).pg(PgView::Stopped(Control {
        sysid: SYSID,
        state: ClusterState::ShutDown,
        timeline: 1,
        checkpoint_lsn: 1500,
        rewindable: false,
    }));
    fx.settings.use_pg_rewind = Some(true);
    assert_eq!(fx.decide(), Decision::StayStopped { reason: StopReason::DivergedCannotRewind });
}

#[test]
fn failed_rewind_stays_stopped_unless_reinit_after_rewind_failure_is_allowed() {
    let mut fx = Fx::new().leader("n2").member_timeline("n2", 2).pg(stopped(ClusterState::ShutDownInRecovery, 1, 1));
    fx.recent.diverged = true;
    fx.recent.rewind_failed = true;
    assert_eq!(fx.decide(), Decision::StayStopped { reason: StopReason::RewindFailed });
    fx.settings.remove_data_directory_on_rewind_failure = true;
    assert_eq!(fx.decide(), Decision::Reinit { leader: "n2".into() });
}

// ---- the leader race ----

#[test]
fn replicas_ask_their_peers_before_racing() {
    match Fx::new().decide() {
        Decision::ProbePeers { peers } => {
            let names: Vec<_> = peers.iter().map(|p| p.name.as_str()).collect();
            assert_eq!(names, ["n2", "n3"]);
            assert_eq!(peers[0].api_url, "http://n2:8008/patroni");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn replica_with_the_highest_lsn_wins_the_race() {
    let fx = Fx::new().peers(vec![answer("n2", false, 900), answer("n3", false, 999)]);
    assert_eq!(fx.decide(), Decision::AcquireLeader);
}

#[test]
fn replica_stands_back_for_a_peer_that_is_further_ahead() {
    let fx = Fx::new().peers(vec![answer("n2", false, 1001), answer("n3", false, 900)]);
    assert!(matches!(wait(&fx.decide()), WaitReason::PeerAhead { name, .. } if name == "n2"));
}

#[test]
fn at_equal_lsn_the_higher_failover_priority_wins() {
    let mut p = answer("n2", false, 1000);
    p.status.as_mut().unwrap().tags.failover_priority = 5;
    let fx = Fx::new().peers(vec![p, answer("n3", false, 900)]);
    assert_eq!(wait(&fx.decide()), &WaitReason::PeerPreferred("n2".into()));
}

#[test]
fn never_races_while_the_old_primary_answers_that_it_is_still_primary() {
    let fx = Fx::new().peers(vec![answer("n2", true, 800), answer("n3", false, 900)]);
    assert_eq!(wait(&fx.decide()), &WaitReason::PrimaryStillAlive("n2".into()));
}

#[test]
fn peers_that_do_not_answer_are_left_out_of_the_race() {
    let fx = Fx::new().peers(vec![silent("n2"), silent("n3")]);
    assert_eq!(fx.decide(), Decision::AcquireLeader);
}

#[test]
fn nofailover_peers_ahead_of_us_do_not_block_the_race() {
    let mut p = answer("n2", false, 5000);
    p.status.as_mut().unwrap().tags.nofailover = true;
    let fx = Fx::new().peers(vec![p, silent("n3")]);
    assert_eq!(fx.decide(), Decision::AcquireLeader);
}

#[test]
fn nofailover_member_never_races() {
    let mut fx = Fx::new();
    fx.settings.tags.nofailover = true;
    assert!(matches!(wait(&fx.decide()), WaitReason::NotEligible(_)));
    fx.settings.tags = Tags { failover_priority: 0, ..Tags::default() };
    assert!(matches!(wait(&fx.decide()), WaitReason::NotEligible(_)));
}

#[test]
fn replica_lagging_beyond_maximum_lag_on_failover_does_not_race() {
    let mut fx = Fx::new().pg(replica(100, 1, None));
    fx.config.maximum_lag_on_failover = 500;
    assert_eq!(wait(&fx.decide()), &WaitReason::TooFarBehind { lag: 900, limit: 500 });
}

#[test]
fn replica_on_a_timeline_behind_the_cluster_does_not_race() {
    let fx = Fx::new().history(&[(1, 800)]);
    assert_eq!(wait(&fx.decide()), &WaitReason::StaleTimeline { ours: 1, cluster: 2 });
}

#[test]
fn our_own_announced_promotion_that_never_ran_does_not_keep_us_from_leading() {
    // We announced a switch from timeline 1 before promoting, then crashed before promoting:
    // we may try again; everyone else treats timeline 2 as taken.
    let mut fx = Fx::new();
    fx.c().history = vec![TimelineSwitch { timeline: 1, lsn: 1000, leader: Some(ME.into()) }];
    fx.c().members.retain(|m| m.name == ME);
    assert_eq!(fx.decide(), Decision::AcquireLeader);
    fx.settings.name = "n2".into();
    assert_eq!(wait(&fx.decide()), &WaitReason::StaleTimeline { ours: 1, cluster: 2 });
}

#[test]
fn lone_member_takes_the_key_without_asking_anyone() {
    let mut fx = Fx::new();
    fx.c().members.retain(|m| m.name == ME);
    assert_eq!(fx.decide(), Decision::AcquireLeader);
}

#[test]
fn recently_seen_peers_are_asked_even_when_their_member_keys_expired() {
    let mut fx = Fx::new();
    fx.c().members.retain(|m| m.name == ME);
    fx.recent.known_peers = vec![PeerRef::new("n3", "http://n3:8008/patroni")];
    assert!(matches!(fx.decide(), Decision::ProbePeers { peers } if peers.len() == 1 && peers[0].name == "n3"));
}

#[test]
fn stopped_member_starts_as_replica_before_it_can_race() {
    let fx = Fx::new().pg(stopped(ClusterState::ShutDownInRecovery, 1, 900));
    assert_eq!(fx.decide(), Decision::Follow { upstream: None });
}

#[test]
fn primary_whose_key_vanished_takes_it_back_without_asking_peers() {
    assert_eq!(Fx::new().pg(primary(1000, 1)).decide(), Decision::AcquireLeader);
}

#[test]
fn stale_primary_on_an_old_timeline_demotes_instead_of_retaking_the_key() {
    let fx = Fx::new().history(&[(1, 800)]).pg(primary(1000, 1));
    assert_eq!(fx.decide(), Decision::Demote { reason: DemoteReason::StaleTimeline { ours: 1, cluster: 2 } });
}

// ---- bootstrap ----

#[test]
fn empty_cluster_is_bootstrapped_through_the_initialize_race() {
    let mut fx = Fx::new().pg(PgView::NoData);
    fx.cluster = Some(ClusterView::empty());
    assert_eq!(fx.decide(), Decision::RaceInitialize);
}

#[test]
fn nofailover_member_does_not_bootstrap() {
    let mut fx = Fx::new().pg(PgView::NoData);
    fx.cluster = Some(ClusterView::empty());
    fx.settings.tags.nofailover = true;
    assert!(matches!(wait(&fx.decide()), WaitReason::NotEligible(_)));
}

#[test]
fn member_waits_while_another_bootstraps() {
    let mut fx = Fx::new().pg(PgView::NoData);
    fx.c().initialize = Initialize::Racing;
    fx.c().members.clear();
    assert_eq!(wait(&fx.decide()), &WaitReason::AnotherMemberBootstrapping);
}

#[test]
fn new_member_clones_from_the_leader() {
    let fx = Fx::new().leader("n2").pg(PgView::NoData);
    assert_eq!(fx.decide(), Decision::Clone { from: "n2".into() });
}

#[test]
fn new_member_prefers_a_running_clonefrom_member() {
    let mut fx = Fx::new().leader("n2").pg(PgView::NoData);
    fx.c().members[2].tags.clonefrom = true;
    assert_eq!(fx.decide(), Decision::Clone { from: "n3".into() });
}

#[test]
fn primary_publishes_a_missing_initialize_key() {
    let mut fx = Fx::new().pg(primary(1000, 1));
    fx.c().initialize = Initialize::Absent;
    assert_eq!(fx.decide(), Decision::PublishInitialize { sysid: SYSID });
}

#[test]
fn replica_in_an_uninitialised_cluster_waits_for_its_primary() {
    let mut fx = Fx::new();
    fx.c().initialize = Initialize::Absent;
    assert_eq!(wait(&fx.decide()), &WaitReason::NotInitialized);
}

#[test]
fn data_from_another_cluster_is_never_touched() {
    let mut fx = Fx::new();
    fx.c().initialize = Initialize::Sysid(SYSID + 1);
    assert!(matches!(wait(&fx.decide()), WaitReason::SystemIdMismatch { .. }));
    let mut fx = fx.leader(ME);
    fx.pg = replica(1000, 1, None);
    assert_eq!(fx.decide(), Decision::ReleaseLeader { reason: ReleaseReason::SystemIdMismatch });
}

// ---- switchover through the failover key ----

#[test]
fn leader_steps_down_for_the_named_candidate() {
    let fx = Fx::new().leader(ME).pg(primary(1000, 1)).failover(Some(ME), Some("n2"));
    assert_eq!(fx.decide(), Decision::StepDown { candidate: Some("n2".into()) });
}

#[test]
fn leader_steps_down_for_the_best_replica_when_none_is_named() {
    let fx = Fx::new().leader(ME).pg(primary(1000, 1)).failover(Some(ME), None);
    assert_eq!(fx.decide(), Decision::StepDown { candidate: None });
}

#[test]
fn switchover_to_an_ineligible_candidate_is_cleared() {
    let mut fx = Fx::new().leader(ME).pg(primary(1000, 1)).failover(None, Some("n2"));
    fx.c().members[1].tags.nofailover = true;
    // The member key may be stale: the candidate is asked first.
    match fx.decide() {
        Decision::ProbePeers { peers } => assert_eq!(peers.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["n2"]),
        d => panic!("expected the candidate to be asked, got {d:?}"),
    }
    let mut nofailover = answer("n2", false, 1000);
    nofailover.status.as_mut().unwrap().tags.nofailover = true;
    let fx = fx.peers(vec![nofailover]);
    assert_eq!(fx.decide(), Decision::ClearFailover { reason: ClearReason::CandidateNotEligible("n2".into()) });
    let mut fx = fx.peers(vec![silent("n2")]);
    assert_eq!(fx.decide(), Decision::ClearFailover { reason: ClearReason::CandidateNotEligible("n2".into()) });
    fx.c().failover.as_mut().unwrap().candidate = None;
    fx.c().members[2].tags.nofailover = true;
    assert_eq!(fx.decide(), Decision::ClearFailover { reason: ClearReason::NoEligibleCandidate });
}

#[test]
fn switchover_trusts_the_candidates_own_answer_over_its_stale_member_key() {
    // Right after a previous switchover the candidate's key still says it is a stopped primary,
    // while it already answers GET /patroni as a streaming replica.
    let mut fx = Fx::new().leader(ME).pg(primary(1000, 1)).failover(None, Some("n2"));
    fx.c().members[1].role = Role::Primary;
    fx.c().members[1].running = false;
    assert!(matches!(fx.decide(), Decision::ProbePeers { .. }));
    let fx = fx.peers(vec![answer("n2", false, 1000)]);
    assert_eq!(fx.decide(), Decision::StepDown { candidate: Some("n2".into()) });
    // Streaming, but still on the previous timeline (it has just followed us): refused, as it
    // would not promote and we would stop for nothing.
    let fx2 = Fx::new().leader(ME).pg(primary(1000, 2)).failover(None, Some("n2"));
    assert!(matches!(fx2.decide(), Decision::ProbePeers { .. }), "its key says timeline 1");
    let fx2 = fx2.peers(vec![answer("n2", false, 1000)]);
    assert_eq!(fx2.decide(), Decision::ClearFailover { reason: ClearReason::CandidateNotEligible("n2".into()) });
    let mut caught_up = answer("n2", false, 1000);
    caught_up.status.as_mut().unwrap().timeline = Some(2);
    assert_eq!(fx2.peers(vec![caught_up]).decide(), Decision::StepDown { candidate: Some("n2".into()) });
    // Still a primary by its own answer: refused.
    let fx = fx.peers(vec![answer("n2", true, 1000)]);
    assert_eq!(fx.decide(), Decision::ClearFailover { reason: ClearReason::CandidateNotEligible("n2".into()) });
}

#[test]
fn switchover_naming_another_leader_is_cleared() {
    let fx = Fx::new().leader(ME).pg(primary(1000, 1)).failover(Some("n3"), Some("n2"));
    assert_eq!(fx.decide(), Decision::ClearFailover { reason: ClearReason::NamesAnotherLeader("n3".into()) });
}

#[test]
fn scheduled_switchover_waits_for_its_time_then_happens() {
    let mut fx = Fx::new().leader(ME).pg(primary(1000, 1)).failover(Some(ME), Some("n2"));
    fx.c().failover.as_mut().unwrap().scheduled_at = Some("2026-11-24T10:00:05+00:00".into());
    assert_eq!(fx.decide(), Decision::Lead);
    fx.wall_ms += 5_000;
    assert_eq!(fx.decide(), Decision::StepDown { candidate: Some("n2".into()) });
    fx.c().failover.as_mut().unwrap().scheduled_at = Some("next tuesday".into());
    assert!(matches!(fx.decide(), Decision::ClearFailover { reason: ClearReason::BadSchedule(_) }));
}

#[test]
fn named_candidate_takes_over_without_comparing_positions() {
    let fx = Fx::new().failover(Some("n3"), Some(ME)).peers(vec![answer("n2", false, 5000), silent("n3")]);
    assert_eq!(fx.decide(), Decision::AcquireLeader);
}

#[test]
fn others_stand_back_while_the_named_candidate_is_healthy() {
    let fx = Fx::new().failover(Some("n3"), Some("n2")).peers(vec![answer("n2", false, 900), silent("n3")]);
    assert_eq!(wait(&fx.decide()), &WaitReason::CandidateWillTakeOver("n2".into()));
}

#[test]
fn everyone_races_when_the_named_candidate_is_down() {
    let fx = Fx::new().failover(Some("n3"), Some("n2")).peers(vec![silent("n2"), silent("n3")]);
    assert_eq!(fx.decide(), Decision::AcquireLeader);
}

#[test]
fn former_leader_stands_back_for_any_healthy_member_after_a_switchover() {
    let fx = Fx::new().failover(Some(ME), None).peers(vec![answer("n2", false, 1000), silent("n3")]);
    assert_eq!(wait(&fx.decide()), &WaitReason::CandidateWillTakeOver("n2".into()));
}

#[test]
fn former_leader_is_not_a_competitor_for_the_others_after_a_switchover() {
    // n2 stepped down (failover key names it as leader, no candidate); it answers with the
    // same position and a higher priority, yet must not block us: it stands back itself.
    let mut p = answer("n2", false, 1000);
    p.status.as_mut().unwrap().tags.failover_priority = 9;
    let fx = Fx::new().failover(Some("n2"), None).peers(vec![p, answer("n3", false, 900)]);
    assert_eq!(fx.decide(), Decision::AcquireLeader);
}

#[test]
fn former_leader_races_when_no_other_member_is_fit() {
    let mut fx = Fx::new().failover(Some(ME), None).peers(vec![answer("n2", false, 10), silent("n3")]);
    fx.config.maximum_lag_on_failover = 100;
    assert_eq!(fx.decide(), Decision::AcquireLeader);
}

#[test]
fn every_decision_has_a_kind_listed_for_metrics() {
    let samples = [
        Decision::Lead,
        Decision::AcquireLeader,
        Decision::Fence { reason: FenceReason::LeaseNotRenewed },
        Decision::Wait { reason: WaitReason::PgStarting },
    ];
    for d in samples {
        assert!(Decision::KINDS.contains(&d.kind()), "{}", d.kind());
        assert!(!d.to_string().is_empty());
    }
}

// ---- maintenance mode (pause) ----

impl Fx {
    fn paused(mut self) -> Self {
        self.config.pause = true;
        self
    }
}

#[test]
fn paused_leader_keeps_leading_its_running_primary() {
    assert_eq!(Fx::new().paused().leader(ME).pg(primary(1000, 1)).decide(), Decision::Lead);
}

#[test]
fn paused_primary_is_still_fenced_when_its_lease_runs_out() {
    let mut fx = Fx::new().paused().leader(ME).pg(primary(1000, 1));
    fx.now = Moment::from_millis(12_000);
    assert_eq!(fx.decide(), Decision::Fence { reason: FenceReason::LeaseNotRenewed });
}

#[test]
fn paused_primary_without_the_key_takes_it_when_the_cluster_is_unlocked() {
    // Even on a timeline behind the cluster's: in maintenance mode the operator decides.
    let fx = Fx::new().paused().history(&[(1, 800)]).pg(primary(1000, 1));
    assert_eq!(fx.decide(), Decision::AcquireLeader);
}

#[test]
fn paused_leader_releases_the_key_when_its_postgres_is_no_longer_primary() {
    let fx = Fx::new().paused().leader(ME).pg(replica(1000, 1, None));
    assert_eq!(fx.decide(), Decision::ReleaseLeader { reason: ReleaseReason::NotPrimaryWhilePaused });
}

#[test]
fn paused_leader_releases_the_key_instead_of_starting_a_stopped_postgres() {
    let fx = Fx::new().paused().leader(ME).pg(stopped(ClusterState::InProduction, 1, 900));
    assert_eq!(fx.decide(), Decision::ReleaseLeader { reason: ReleaseReason::NotRunningWhilePaused });
}

#[test]
fn paused_replicas_do_not_fail_over() {
    let fx = Fx::new().paused();
    assert!(matches!(wait(&fx.decide()), WaitReason::Paused(_)));
}

#[test]
fn paused_primary_beside_the_leader_is_reported_not_demoted() {
    let fx = Fx::new().paused().leader("n2").pg(primary(1000, 1));
    assert_eq!(wait(&fx.decide()), &WaitReason::PausedPrimaryWithoutKey("n2".into()));
}

#[test]
fn paused_member_does_not_start_a_stopped_postgres() {
    let fx = Fx::new().paused().leader("n2").pg(stopped(ClusterState::ShutDownInRecovery, 1, 900));
    assert!(matches!(wait(&fx.decide()), WaitReason::Paused(_)));
    let fx = Fx::new().paused().pg(stopped(ClusterState::ShutDownInRecovery, 1, 900));
    assert!(matches!(wait(&fx.decide()), WaitReason::Paused(_)));
    let mut fx = Fx::new().paused().pg(stopped(ClusterState::ShutDownInRecovery, 1, 900));
    fx.cluster = None;
    assert_eq!(wait(&fx.decide()), &WaitReason::EtcdUnreachable);
}

#[test]
fn paused_member_does_not_rewind_or_clone() {
    let fx = Fx::new().paused().leader("n2").member_timeline("n2", 2).history(&[(1, 800)]).pg(replica(1000, 1, None));
    assert!(matches!(wait(&fx.decide()), WaitReason::Paused(_)));
    let fx = Fx::new().paused().leader("n2").pg(PgView::NoData);
    assert!(matches!(wait(&fx.decide()), WaitReason::Paused(_)));
}

#[test]
fn paused_replica_still_follows_a_new_leader() {
    let fx = Fx::new().paused().leader("n2").pg(replica(1000, 1, Some("n3")));
    assert_eq!(fx.decide(), Decision::Follow { upstream: Some("n2".into()) });
}

#[test]
fn paused_switchover_to_a_named_candidate_still_happens() {
    let fx = Fx::new().paused().leader(ME).pg(primary(1000, 1)).failover(Some(ME), Some("n2"));
    assert_eq!(fx.decide(), Decision::StepDown { candidate: Some("n2".into()) });
    // The candidate races; the others stand back.
    let fx = Fx::new().paused().failover(Some("n3"), Some(ME)).peers(vec![answer("n2", false, 900), silent("n3")]);
    assert_eq!(fx.decide(), Decision::AcquireLeader);
    let mut fx = Fx::new().paused().failover(Some("n3"), Some("n2"));
    fx.peers = Some(vec![answer("n2", false, 900), silent("n3")]);
    assert!(matches!(wait(&fx.decide()), WaitReason::Paused(_)));
}

#[test]
fn paused_switchover_without_a_candidate_or_with_a_schedule_is_cleared() {
    let fx = Fx::new().paused().leader(ME).pg(primary(1000, 1)).failover(Some(ME), None);
    assert_eq!(fx.decide(), Decision::ClearFailover { reason: ClearReason::PausedNeedsCandidate });
    let mut fx = Fx::new().paused().leader(ME).pg(primary(1000, 1)).failover(Some(ME), Some("n2"));
    fx.c().failover.as_mut().unwrap().scheduled_at = Some("2026-11-24T10:00:05+00:00".into());
    assert_eq!(fx.decide(), Decision::ClearFailover { reason: ClearReason::PausedScheduled });
}

#[test]
fn old_primary_of_a_switchover_rejoins_its_new_leader_even_while_paused() {
    let mut fx = Fx::new().paused().leader("n2").pg(stopped(ClusterState::ShutDown, 1, 900));
    fx.recent.stepped_down_at = Some(fx.now);
    assert_eq!(fx.decide(), Decision::Follow { upstream: Some("n2".into()) });
}

#[test]
fn resumed_cluster_fails_over_again() {
    let fx = Fx::new().peers(vec![answer("n2", false, 900), answer("n3", false, 900)]);
    assert_eq!(fx.decide(), Decision::AcquireLeader);
}

// ---- switchover done well ----

#[test]
fn candidate_waits_for_the_old_primarys_last_wal_before_taking_over() {
    let mut fx = Fx::new().failover(Some("n3"), Some(ME));
    fx.c().status_optime = Some(1200);
    fx.recent.unlocked_since = Some(fx.now.minus(Duration::from_millis(500)));
    assert_eq!(wait(&fx.decide()), &WaitReason::CatchingUp { ours: 1000, target: 1200 });
}

#[test]
fn candidate_that_has_the_old_primarys_last_wal_takes_over() {
    let mut fx = Fx::new().failover(Some("n3"), Some(ME)).peers(vec![answer("n2", false, 900), silent("n3")]);
    fx.c().status_optime = Some(1000);
    fx.recent.unlocked_since = Some(fx.now);
    assert_eq!(fx.decide(), Decision::AcquireLeader);
}

#[test]
fn catching_up_is_bounded_then_the_lag_limit_applies() {
    let mut fx = Fx::new().failover(Some("n3"), Some(ME)).peers(vec![answer("n2", false, 900), silent("n3")]);
    fx.c().status_optime = Some(1200);
    fx.recent.unlocked_since = Some(fx.now.minus(Duration::from_secs(3)));
    assert_eq!(fx.decide(), Decision::AcquireLeader);
}

#[test]
fn old_primary_waits_for_the_candidate_then_follows_it_without_rewind() {
    let mut fx = Fx::new().pg(stopped(ClusterState::ShutDown, 1, 1000));
    fx.recent.stepped_down_at = Some(fx.now);
    assert_eq!(wait(&fx.decide()), &WaitReason::SteppedDown);
    // The candidate promoted at the end of our shutdown checkpoint record.
    let mut fx = fx.leader("n2").member_timeline("n2", 2).history(&[(1, 1100)]);
    fx.now = fx.now.plus(Duration::from_millis(300));
    assert_eq!(fx.decide(), Decision::Follow { upstream: Some("n2".into()) });
}

#[test]
fn old_primary_starts_read_only_if_nobody_takes_over_in_time() {
    let mut fx = Fx::new().pg(stopped(ClusterState::ShutDown, 1, 1000));
    fx.recent.stepped_down_at = Some(fx.now.minus(Duration::from_secs(3)));
    assert_eq!(fx.decide(), Decision::Follow { upstream: None });
}

#[test]
fn stale_scheduled_switchover_is_dropped() {
    let mut fx = Fx::new().leader(ME).pg(primary(1000, 1)).failover(Some(ME), Some("n2"));
    // 1.5 x loop_wait (1 s) is the limit.
    fx.c().failover.as_mut().unwrap().scheduled_at = Some("2026-11-24T09:59:58.4+00:00".into());
    fx.wall_ms = 1_795_514_400_000;
    assert!(matches!(fx.decide(), Decision::ClearFailover { reason: ClearReason::Stale(_) }));
    fx.c().failover.as_mut().unwrap().scheduled_at = Some("2026-11-24T09:59:58.6+00:00".into());
    assert_eq!(fx.decide(), Decision::StepDown { candidate: Some("n2".into()) });
}

// ---- a postmaster that does not answer SQL; lease licence; watchdog ----

fn hung_primary() -> PgView {
    PgView::Starting { sysid: Some(SYSID), standby: false }
}

#[test]
fn a_hung_primary_without_a_trusted_lease_is_fenced() {
    let mut fx = Fx::new().leader(ME);
    fx.pg = hung_primary();
    fx.lease.expires_at = Moment::from_millis(10_500);
    assert_eq!(fx.decide(), Decision::Fence { reason: FenceReason::LeaseNotRenewed });
}

#[test]
fn a_hung_standby_is_not_fenced_it_cannot_accept_writes() {
    let mut fx = Fx::new().leader("n2");
    fx.pg = PgView::Starting { sysid: Some(SYSID), standby: true };
    fx.lease.expires_at = Moment::from_millis(10_500);
    assert_eq!(fx.decide(), Decision::Wait { reason: WaitReason::PgStarting });
}

#[test]
fn a_hung_primary_that_is_not_the_leader_is_demoted() {
    let mut fx = Fx::new().leader("n2");
    fx.pg = hung_primary();
    assert_eq!(fx.decide(), Decision::Demote { reason: DemoteReason::OtherLeader("n2".into()) });
}

#[test]
fn a_leader_whose_primary_stays_hung_past_primary_start_timeout_releases_the_key() {
    // The shell stops PostgreSQL (immediate, leftovers killed) before it deletes the key.
    let mut fx = Fx::new().leader(ME);
    fx.pg = hung_primary();
    assert_eq!(fx.decide(), Decision::Wait { reason: WaitReason::PgStarting });
    fx.config.primary_start_timeout = Duration::from_secs(5);
    fx.recent.primary_down_since = Some(Moment::from_millis(4_000));
    assert_eq!(fx.decide(), Decision::ReleaseLeader { reason: ReleaseReason::StartTimedOut });
}

#[test]
fn the_leader_race_needs_a_lease_trusted_now() {
    let mut fx = Fx::new().peers(vec![answer("n2", false, 900), answer("n3", false, 900)]);
    assert_eq!(fx.decide(), Decision::AcquireLeader);
    // Renewed long ago: the lease could expire before the promotion is done.
    fx.lease.expires_at = Moment::from_millis(10_900);
    assert_eq!(fx.decide(), Decision::Wait { reason: WaitReason::LeaseNotTrusted });
    fx.lease = LeaseView::NONE;
    assert_eq!(fx.decide(), Decision::Wait { reason: WaitReason::LeaseNotTrusted });
}

#[test]
fn a_primary_whose_key_vanished_retakes_it_only_with_a_trusted_lease() {
    let mut fx = Fx::new();
    fx.pg = primary(1000, 1);
    assert_eq!(fx.decide(), Decision::AcquireLeader);
    fx.lease.expires_at = Moment::from_millis(10_900);
    assert_eq!(fx.decide(), Decision::Fence { reason: FenceReason::LeaseNotRenewed });
}

#[test]
fn a_required_watchdog_that_cannot_be_used_keeps_a_member_out_of_the_race_and_from_promoting() {
    let mut fx = Fx::new().peers(vec![answer("n2", false, 900), answer("n3", false, 900)]);
    fx.watchdog_failed = true;
    assert_eq!(fx.decide(), Decision::Wait { reason: WaitReason::NotEligible("watchdog required but not usable") });
    let mut fx = Fx::new().leader(ME);
    fx.watchdog_failed = true;
    assert_eq!(fx.decide(), Decision::ReleaseLeader { reason: ReleaseReason::WatchdogUnavailable });
}

#[test]
fn after_an_early_revocation_replicas_wait_a_ttl_before_racing() {
    // Our own lease was revoked while trusted (a mass revocation by a stalled former etcd
    // leader): the leader's went at the same moment, and its primary fences only when it
    // notices, at the latest when its lease would have expired. Racing now could promote
    // next to it.
    let mut fx = Fx::new().peers(vec![answer("n2", false, 900), answer("n3", false, 900)]);
    fx.lease.revoked_at = Some(Moment::from_millis(9_000));
    assert_eq!(fx.decide(), Decision::Wait { reason: WaitReason::LeaseRevokedEarly });
    fx.lease.revoked_at = Some(Moment::from_millis(7_000));
    assert_eq!(fx.decide(), Decision::AcquireLeader, "a ttl later it races");
    // A member whose own lease was not revoked (it had expired: it was cut off) learns it
    // from a peer's answer.
    fx.lease.revoked_at = None;
    if let Some(st) = fx.peers.as_mut().and_then(|p| p[0].status.as_mut()) {
        st.lease_revoked_recently = true;
    }
    assert_eq!(fx.decide(), Decision::Wait { reason: WaitReason::LeaseRevokedEarly });
}

#[test]
fn waits_that_cover_a_vanished_primary_last_as_long_as_the_leader_lease_granted_with_a_longer_ttl() {
    // The leader took its lease with a longer ttl than ours (a Patroni member, a ttl change
    // we read first, or one it read before us): one of our ttls after an early revocation
    // (or after our start) does not cover it.
    let mut fx = Fx::new().peers(vec![answer("n2", false, 900), answer("n3", false, 900)]);
    fx.recent.leader_lease_ttl = Some(Duration::from_secs(20));
    fx.lease.revoked_at = Some(Moment::from_millis(7_000));
    assert_eq!(fx.decide(), Decision::Wait { reason: WaitReason::LeaseRevokedEarly });
    fx.lease.revoked_at = None;
    fx.recent.started_at = Some(Moment::from_millis(1_000));
    assert_eq!(fx.decide(), Decision::Wait { reason: WaitReason::JustStarted });
    // A shorter leader lease never shortens our own ttl.
    fx.recent.leader_lease_ttl = Some(Duration::from_secs(2));
    assert_eq!(fx.decide(), Decision::AcquireLeader);
}

#[test]
fn a_member_whose_pre_promote_refused_stays_out_of_races_for_a_ttl() {
    let mut fx = Fx::new().peers(vec![answer("n2", false, 900), answer("n3", false, 900)]);
    fx.recent.pre_promote_failed_at = Some(Moment::from_millis(8_000));
    assert_eq!(fx.decide(), Decision::Wait { reason: WaitReason::PrePromoteFailed });
    fx.recent.pre_promote_failed_at = Some(Moment::from_millis(7_000));
    assert_eq!(fx.decide(), Decision::AcquireLeader, "a ttl later it races again");
}

#[test]
fn the_former_leader_is_asked_in_a_race_even_after_its_keys_vanished() {
    let mut fx = Fx::new();
    fx.recent.former_leader = Some(PeerRef { former_leader: true, ..PeerRef::new("n9", "http://n9:8008/patroni") });
    let Decision::ProbePeers { peers } = fx.decide() else { panic!("expected a probe") };
    assert!(peers.iter().any(|p| p.name == "n9" && p.former_leader), "{peers:?}");
    // Its lease went early but it still runs as a primary: nobody races.
    let fx = fx.peers(vec![answer("n2", false, 900), answer("n3", false, 900), answer("n9", true, 1200)]);
    assert_eq!(fx.decide(), Decision::Wait { reason: WaitReason::PrimaryStillAlive("n9".into()) });
}

#[test]
fn an_agent_that_just_started_does_not_race_for_a_ttl() {
    let mut fx = Fx::new().peers(vec![answer("n2", false, 900), answer("n3", false, 900)]);
    fx.recent.started_at = Some(Moment::from_millis(8_000));
    assert_eq!(fx.decide(), Decision::Wait { reason: WaitReason::JustStarted });
    fx.recent.started_at = Some(Moment::from_millis(7_000));
    assert_eq!(fx.decide(), Decision::AcquireLeader);
}

#[test]
fn a_replica_that_streamed_from_the_leader_moments_ago_is_not_judged_on_a_mid_switch_position() {
    // n1 follows n2, which just promoted at 1000 (timeline 1 -> 2); its walreceiver is
    // reconnecting, and the position it reports is already past the switch point.
    let mut fx = Fx::new().leader("n2");
    if let Some(c) = fx.cluster.as_mut() {
        c.history = vec![TimelineSwitch { timeline: 1, lsn: 1000, leader: Some("n2".into()) }];
        c.members[1].timeline = Some(2);
    }
    fx.pg = replica(1100, 1, Some("n2"));
    fx.recent.streamed_at = Some(Moment::from_millis(9_500));
    assert_eq!(fx.decide(), Decision::Replicate { upstream: "n2".into() });
    // Still not streaming a ttl later: judged on what it reports.
    fx.recent.streamed_at = Some(Moment::from_millis(6_000));
    assert_eq!(fx.decide(), Decision::Rewind { leader: "n2".into() });
}

// ---- synchronous mode ----

fn synchronous(mut fx: Fx, leader: &str, listed: &[&str]) -> Fx {
    fx.config.sync.mode = sync::SyncMode::On;
    fx.c().sync = Some(sync::SyncKey {
        leader: Some(leader.into()),
        members: listed.iter().map(|s| s.to_string()).collect(),
        quorum: 0,
        mod_revision: 11,
    });
    fx
}

#[test]
fn in_synchronous_mode_a_replica_the_sync_key_does_not_list_never_races() {
    let fx = synchronous(Fx::new(), "n3", &["n2"]);
    assert_eq!(wait(&fx.decide()), &WaitReason::NotSynchronous { listed: vec!["n2".into()] });
    // The same replica races once it is listed, or when it was the leader synchronous mode
    // names; with synchronous mode off the key means nothing.
    assert!(matches!(synchronous(Fx::new(), "n3", &["n1"]).decide(), Decision::ProbePeers { .. }));
    assert!(matches!(synchronous(Fx::new(), "n1", &[]).decide(), Decision::ProbePeers { .. }));
    let mut off = synchronous(Fx::new(), "n3", &["n2"]);
    off.config.sync.mode = sync::SyncMode::Off;
    assert!(matches!(off.decide(), Decision::ProbePeers { .. }));
}

#[test]
fn in_synchronous_mode_an_unlisted_peer_further_ahead_does_not_hold_the_listed_one_back() {
    // n2 is ahead but may lack acknowledged commits (not listed): only listed members compete.
    let fx = synchronous(Fx::new(), "n3", &["n1"]).peers(vec![answer("n2", false, 5000), silent("n3")]);
    assert_eq!(fx.decide(), Decision::AcquireLeader);
    let fx = synchronous(Fx::new(), "n3", &["n1", "n2"]).peers(vec![answer("n2", false, 5000), silent("n3")]);
    assert!(matches!(wait(&fx.decide()), WaitReason::PeerAhead { .. }));
}

#[test]
fn in_synchronous_mode_a_key_holder_that_is_not_listed_gives_the_key_up_instead_of_promoting() {
    let fx = synchronous(Fx::new().leader(ME), "n3", &["n2"]);
    assert_eq!(fx.decide(), Decision::ReleaseLeader { reason: ReleaseReason::NotFitToPromote });
}

#[test]
fn in_synchronous_mode_a_switchover_goes_only_to_a_listed_standby() {
    let base = || Fx::new().leader(ME).pg(primary(1000, 1));
    let fx = synchronous(base(), ME, &["n3"]).failover(Some(ME), Some("n2"));
    assert_eq!(fx.decide(), Decision::ClearFailover { reason: ClearReason::CandidateNotSynchronous("n2".into()) });
    let fx = synchronous(base(), ME, &["n3"]).failover(Some(ME), Some("n3"));
    assert_eq!(fx.decide(), Decision::StepDown { candidate: Some("n3".into()) });
    // Without a candidate: only a listed member counts as someone to hand over to.
    let fx = synchronous(base(), ME, &[]).failover(Some(ME), None).peers(vec![]);
    assert_eq!(fx.decide(), Decision::ClearFailover { reason: ClearReason::NoEligibleCandidate });
}

// ---- quorum commit ----

fn quorum(mut fx: Fx, leader: &str, voters: &[&str], q: u32) -> Fx {
    fx = synchronous(fx, leader, voters);
    fx.config.sync.mode = sync::SyncMode::Quorum;
    if let Some(k) = fx.c().sync.as_mut() {
        k.quorum = q;
    }
    fx
}

#[test]
fn in_quorum_mode_a_switchover_goes_only_to_a_voter_and_never_to_nobody() {
    // Right after a promotion nobody is listed: a leader that stepped down then would leave
    // the cluster without a primary until a racer had votes (the simulation found it, seed
    // 389751286). As in Patroni, a switchover goes only to a member the key lists.
    let base = || Fx::new().leader(ME).pg(primary(1000, 1));
    let fx = quorum(base(), ME, &[], 0).failover(Some(ME), None).peers(vec![]);
    assert_eq!(fx.decide(), Decision::ClearFailover { reason: ClearReason::NoEligibleCandidate });
    let fx = quorum(base(), ME, &["n3"], 0).failover(Some(ME), Some("n2"));
    assert_eq!(fx.decide(), Decision::ClearFailover { reason: ClearReason::CandidateNotSynchronous("n2".into()) });
    let fx = quorum(base(), ME, &["n3"], 0).failover(Some(ME), None);
    assert_eq!(fx.decide(), Decision::StepDown { candidate: None });
}

#[test]
fn in_quorum_mode_a_voter_races_only_with_quorum_votes_from_replicas_at_or_behind_it() {
    let fx = quorum(Fx::new(), "n3", &["n1", "n2"], 1).peers(vec![answer("n2", false, 900), silent("n3")]);
    assert_eq!(fx.decide(), Decision::AcquireLeader);
    let fx = quorum(Fx::new(), "n3", &["n1", "n2"], 1).peers(vec![silent("n2"), silent("n3")]);
    assert_eq!(wait(&fx.decide()), &WaitReason::NoQuorum { votes: 0, needed: 1 });
    // A voter ahead of us is no vote (and it would win instead).
    let fx = quorum(Fx::new(), "n3", &["n1", "n2"], 1).peers(vec![answer("n2", false, 1100), silent("n3")]);
    assert_eq!(wait(&fx.decide()), &WaitReason::NoQuorum { votes: 0, needed: 1 });
}

#[test]
fn in_quorum_mode_a_member_that_is_not_a_voter_needs_one_vote_more() {
    let fx = quorum(Fx::new(), "n3", &["n2"], 0).peers(vec![answer("n2", false, 900), silent("n3")]);
    assert_eq!(fx.decide(), Decision::AcquireLeader, "q 0 + 1 vote: n2's");
    let fx = quorum(Fx::new(), "n3", &["n2"], 1).peers(vec![answer("n2", false, 900), silent("n3")]);
    assert_eq!(wait(&fx.decide()), &WaitReason::NoQuorum { votes: 1, needed: 2 });
}

#[test]
fn in_quorum_mode_a_member_alone_in_etcd_has_no_votes_and_does_not_take_over() {
    // Every other member key is gone (a mass lease revocation) and nobody else is known.
    let mut fx = quorum(Fx::new(), "n2", &["n3"], 0);
    fx.c().members.retain(|m| m.name == ME);
    assert_eq!(wait(&fx.decide()), &WaitReason::NoQuorum { votes: 0, needed: 1 });
    // A voter with quorum 0 needs no votes: it has every acknowledged commit.
    let mut fx = quorum(Fx::new(), "n2", &[ME], 0);
    fx.c().members.retain(|m| m.name == ME);
    assert_eq!(fx.decide(), Decision::AcquireLeader);
}

#[test]
fn in_quorum_mode_only_voters_are_compared_and_the_keys_leader_needs_no_votes() {
    // n2 is ahead but not a voter: it does not hold back the voter n1 with its quorum.
    let fx = quorum(Fx::new(), "n3", &["n1", "n3"], 1).peers(vec![answer("n2", false, 5000), answer("n3", false, 900)]);
    assert_eq!(fx.decide(), Decision::AcquireLeader);
    // The key's leader (restarted as a replica) races without votes when nobody is ahead.
    let fx = quorum(Fx::new(), ME, &["n2", "n3"], 1).peers(vec![silent("n2"), silent("n3")]);
    assert_eq!(fx.decide(), Decision::AcquireLeader);
}

#[test]
fn answers_asked_before_another_member_led_are_asked_again_before_they_count_as_votes() {
    // The peers were asked while n3 was a replica at 900. Before the answers were read, n3
    // took the leader key, promoted (a new sync key, a new timeline), took commits and let
    // go again: its old answer says less than it has, so it is no vote; ask again.
    let asked = quorum(Fx::new(), "n2", &["n3"], 0);
    let basis = ProbeBasis::of(asked.cluster.as_ref().unwrap());
    let mut fx = quorum(Fx::new(), "n3", &[], 0).peers(vec![answer("n2", false, 900), answer("n3", false, 900)]);
    fx.c().sync.as_mut().unwrap().mod_revision += 1;
    fx.probed_in = Some(basis.clone());
    assert!(matches!(fx.decide(), Decision::ProbePeers { peers } if peers.len() == 2));
    // Asked under the keys as they are now, the same answer is a vote.
    fx.probed_in = None;
    assert_eq!(fx.decide(), Decision::AcquireLeader);
    // So does a new timeline in history; a member key refreshed meanwhile does not.
    let mut fx = quorum(Fx::new(), "n2", &["n3"], 0).peers(vec![answer("n2", false, 900), answer("n3", false, 900)]);
    fx.probed_in = Some(basis.clone());
    assert_eq!(fx.decide(), Decision::AcquireLeader);
    let mut fx = fx.history(&[(1, 0)]).pg(replica(1000, 2, None));
    fx.probed_in = Some(basis.clone());
    assert!(matches!(fx.decide(), Decision::ProbePeers { .. }));
    let mut fx = quorum(Fx::new(), "n2", &["n3"], 0).peers(vec![answer("n2", false, 900), answer("n3", false, 900)]);
    fx.c().members[0].lsn = Some(950);
    fx.probed_in = Some(basis);
    assert_eq!(fx.decide(), Decision::AcquireLeader);
}

#[test]
fn others_stand_back_for_a_switchover_candidate_for_one_ttl_then_race() {
    let mut fx = Fx::new().failover(Some("n3"), Some("n2")).peers(vec![answer("n2", false, 900), silent("n3")]);
    fx.recent.unlocked_since = Some(Moment::from_millis(9_000));
    assert_eq!(wait(&fx.decide()), &WaitReason::CandidateWillTakeOver("n2".into()));
    // A ttl (3 s) later the candidate still has not taken over: race as without it.
    fx.recent.unlocked_since = Some(Moment::from_millis(7_000));
    assert_eq!(fx.decide(), Decision::AcquireLeader);
}

// ---- standby cluster ----

fn standby(mut fx: Fx, host: Option<&str>) -> Fx {
    fx.config.standby_cluster = Some(outrigger_schema::StandbyCluster {
        host: host.map(str::to_owned),
        port: host.map(|_| 5433),
        restore_command: Some("cp /archive/%f %p".into()),
        ..Default::default()
    });
    fx
}

#[test]
fn in_a_standby_cluster_the_leader_replicates_from_the_remote_primary_and_never_promotes() {
    let fx = standby(Fx::new().leader(ME).pg(replica(1000, 1, None)), Some("10.0.0.9"));
    assert_eq!(fx.decide(), Decision::LeadStandby { upstream: Some(REMOTE_PRIMARY.into()) });
    let archive_only = standby(Fx::new().leader(ME).pg(replica(1000, 1, None)), None);
    assert_eq!(archive_only.decide(), Decision::LeadStandby { upstream: None });
}

#[test]
fn in_a_standby_cluster_a_stopped_leader_starts_as_the_standby_leader_not_as_primary() {
    let fx = standby(Fx::new().leader(ME).pg(stopped(ClusterState::InProduction, 1, 900)), Some("h"));
    assert_eq!(fx.decide(), Decision::LeadStandby { upstream: Some(REMOTE_PRIMARY.into()) });
    let mut failed = standby(Fx::new().leader(ME).pg(stopped(ClusterState::InProduction, 1, 900)), Some("h"));
    failed.recent.start_failed_at = Some(Moment::from_millis(9_000));
    assert_eq!(failed.decide(), Decision::ReleaseLeader { reason: ReleaseReason::StartFailed });
}

#[test]
fn setting_standby_cluster_on_a_leading_primary_demotes_the_cluster_and_keeps_the_key() {
    let fx = standby(Fx::new().leader(ME).pg(primary(1000, 1)), Some("h"));
    assert_eq!(fx.decide(), Decision::DemoteCluster);
    let mut paused = standby(Fx::new().leader(ME).pg(primary(1000, 1)), Some("h"));
    paused.config.pause = true;
    assert!(matches!(wait(&paused.decide()), WaitReason::Paused(_)));
}

#[test]
fn a_standby_leader_whose_lease_is_not_trusted_does_nothing() {
    let mut fx = standby(Fx::new().leader(ME).pg(replica(1000, 1, None)), Some("h"));
    fx.lease.expires_at = Moment::from_millis(10_200);
    assert_eq!(wait(&fx.decide()), &WaitReason::LeaseNotTrusted);
}

#[test]
fn in_a_standby_cluster_the_other_members_follow_the_standby_leader() {
    let fx = standby(Fx::new().leader("n2").pg(replica(900, 1, Some("n3"))), Some("h"));
    assert_eq!(fx.decide(), Decision::Follow { upstream: Some("n2".into()) });
    let primary_here = standby(Fx::new().leader("n2").pg(primary(900, 1)), Some("h"));
    assert_eq!(primary_here.decide(), Decision::Demote { reason: DemoteReason::OtherLeader("n2".into()) });
}

#[test]
fn without_a_standby_leader_the_healthiest_member_races_for_the_key_as_in_any_cluster() {
    let fx = standby(Fx::new().pg(replica(1000, 1, Some("n2"))), Some("h"));
    assert!(matches!(fx.decide(), Decision::ProbePeers { .. }));
    let answered = standby(Fx::new().pg(replica(1000, 1, Some("n2"))), Some("h"))
        .peers(vec![answer("n2", false, 900), answer("n3", false, 900)]);
    assert_eq!(answered.decide(), Decision::AcquireLeader);
}

#[test]
fn promote_cluster_clears_standby_cluster_and_the_standby_leader_promotes() {
    // `standby_cluster: null`: an ordinary cluster again, whose key holder is a replica.
    let fx = Fx::new().leader(ME).pg(replica(1000, 1, Some(REMOTE_PRIMARY)));
    assert_eq!(fx.decide(), Decision::Promote);
}

#[test]
fn a_switchover_in_a_standby_cluster_moves_the_standby_leaders_role_to_the_candidate() {
    let mut fx = standby(Fx::new().leader(ME).pg(replica(1000, 1, Some(REMOTE_PRIMARY))), Some("h"));
    for m in &mut fx.c().members {
        m.role = Role::Replica;
    }
    let fx = fx.failover(Some(ME), Some("n2"));
    assert_eq!(fx.decide(), Decision::StepDown { candidate: Some("n2".into()) });
}
