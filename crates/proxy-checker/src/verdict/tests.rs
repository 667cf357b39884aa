//! Table tests of the verdict core: one named row per endpoint, role and state.

use std::time::{Duration, Instant};

use outrigger_schema::{MemberRole, SynchronousMode};
use serde_json::{Map, Value, json};

use super::*;
use crate::view::{MemberInfo, SyncState};

const MS: Duration = Duration::from_millis(1);
const MB: u64 = 1 << 20;

fn policy() -> Policy {
    Policy { name: "n1".into(), etcd_max_age: 1000 * MS, pg_max_age: 1000 * MS, liveness_max_age: 5000 * MS }
}

/// Everything a decision looks at, built by the rows' modifiers.
#[derive(Clone)]
struct World {
    now: Instant,
    etcd: EtcdView,
    pg: PgView,
}

impl World {
    /// n1 is the leader in etcd and its PostgreSQL is writable; etcd was confirmed 100 ms ago
    /// and PostgreSQL polled 50 ms ago.
    fn primary() -> World {
        let now = Instant::now() + Duration::from_secs(60);
        let mut etcd = EtcdView {
            synced: true,
            confirmed_at: Some(now - 100 * MS),
            attempted_at: Some(now - 100 * MS),
            leader: Some("n1".into()),
            me: Some(MemberInfo { role: MemberRole::Primary, tags: Map::new() }),
            ..EtcdView::default()
        };
        etcd.apply_change(&layout(), "n1", "/service/batman/status", Some(br#"{"optime":100000}"#), 1).unwrap();
        let pg = PgView {
            attempted_at: Some(now - 50 * MS),
            last: PgPoll::Up {
                at: now - 50 * MS,
                sample: PgSample { in_recovery: false, flush_lsn: Some(100_000), ..PgSample::default() },
            },
        };
        World { now, etcd, pg }
    }

    /// n1 is a streaming replica 1000 bytes behind; etcd names n2 leader.
    fn replica() -> World {
        let mut w = World::primary();
        w.etcd.leader = Some("n2".into());
        w.etcd.me = Some(MemberInfo { role: MemberRole::Replica, tags: Map::new() });
        w.set_sample(|s| {
            *s = PgSample {
                in_recovery: true,
                flush_lsn: None,
                receive_lsn: Some(99_500),
                replay_lsn: Some(99_000),
                replay_paused: false,
                receiver_status: Some("streaming".into()),
                latest_end_lsn: Some(99_800),
            }
        });
        w
    }

    /// n1 leads a standby cluster: named in etcd, in recovery, `standby_cluster` configured.
    fn standby_leader() -> World {
        let mut w = World::replica();
        w.etcd.leader = Some("n1".into());
        w.etcd.cluster.standby_cluster = true;
        w
    }

    fn set_sample(&mut self, f: impl FnOnce(&mut PgSample)) {
        if let PgPoll::Up { sample, .. } = &mut self.pg.last {
            f(sample);
        }
    }

    fn tags(&mut self, tags: Value) {
        if let (Some(me), Value::Object(t)) = (self.etcd.me.as_mut(), tags) {
            me.tags = t;
        }
    }

    fn sync(&mut self, mode: SynchronousMode, leader: &str, standbys: &[&str]) {
        self.etcd.cluster.synchronous_mode = mode;
        self.etcd.sync = Some(SyncState {
            leader: Some(leader.into()),
            standbys: standbys.iter().map(|s| (*s).to_owned()).collect(),
        });
    }

    fn decide(&self, target: &str) -> Verdict {
        let check = Check::parse_target(target).expect("valid check in the table");
        decide(&check, &Observed { etcd: &self.etcd, pg: &self.pg, now: self.now }, &policy())
    }
}

fn layout() -> outrigger_schema::KeyLayout {
    outrigger_schema::KeyLayout::new("service", "batman").unwrap()
}

type Setup = fn() -> World;
type Tweak = fn(&mut World);

fn same(_: &mut World) {}

/// (case name, starting world, change to it, check target, expected status, expected reason).
const CASES: &[(&str, Setup, Tweak, &str, u16, &str)] = &[
    // The leader, writable: every primary alias passes, replica checks do not.
    ("primary_on_the_named_writable_leader", World::primary, same, "/primary", 200, "primary"),
    ("root_path_is_the_primary_check", World::primary, same, "/", 200, "primary"),
    ("master_alias_is_the_primary_check", World::primary, same, "/master", 200, "primary"),
    ("read_write_alias_is_the_primary_check", World::primary, same, "/read-write", 200, "primary"),
    ("leader_on_the_primary", World::primary, same, "/leader", 200, "leader"),
    ("standby_leader_on_the_primary", World::primary, same, "/standby-leader", 503, "not_in_recovery"),
    ("replica_on_the_primary", World::primary, same, "/replica", 503, "not_in_recovery"),
    ("read_only_on_the_primary", World::primary, same, "/read-only", 200, "primary"),
    ("sync_on_the_primary", World::primary, same, "/sync", 503, "not_in_recovery"),
    ("async_on_the_primary", World::primary, same, "/async", 503, "not_in_recovery"),
    ("read_only_sync_on_the_primary", World::primary, same, "/read-only-sync", 200, "primary"),
    ("health_on_the_primary", World::primary, same, "/health", 200, "running"),
    ("readiness_on_the_primary", World::primary, same, "/readiness", 200, "ready"),
    ("liveness_on_the_primary", World::primary, same, "/liveness", 200, "alive"),
    ("unknown_path_is_503_like_patroni", World::primary, same, "/patroni", 503, "unknown_endpoint"),
    ("tag_filters_are_ignored_on_the_primary_check", World::primary, same, "/primary?tag_zone=x", 200, "primary"),
    // Staleness of either source fails the leader checks closed.
    (
        "primary_with_etcd_confirmed_exactly_at_the_bound",
        World::primary,
        |w| w.etcd.confirmed_at = Some(w.now - 1000 * MS),
        "/primary",
        200,
        "primary",
    ),
    (
        "primary_with_etcd_confirmation_older_than_the_bound",
        World::primary,
        |w| w.etcd.confirmed_at = Some(w.now - 1001 * MS),
        "/primary",
        503,
        "etcd_stale",
    ),
    (
        "primary_with_the_etcd_watch_broken",
        World::primary,
        |w| w.etcd.synced = false,
        "/primary",
        503,
        "etcd_not_synced",
    ),
    (
        "primary_before_etcd_was_ever_read",
        World::primary,
        |w| w.etcd = EtcdView::default(),
        "/primary",
        503,
        "etcd_not_synced",
    ),
    (
        "leader_with_etcd_stale",
        World::primary,
        |w| w.etcd.confirmed_at = Some(w.now - 5000 * MS),
        "/leader",
        503,
        "etcd_stale",
    ),
    (
        "primary_with_postgresql_down",
        World::primary,
        |w| w.pg.last = PgPoll::Down { at: w.now, error: PgFailure::Connect },
        "/primary",
        503,
        "postgresql_down",
    ),
    (
        "primary_with_postgresql_timing_out",
        World::primary,
        |w| w.pg.last = PgPoll::Down { at: w.now, error: PgFailure::Timeout },
        "/primary",
        503,
        "postgresql_down",
    ),
    (
        "primary_with_postgresql_sample_older_than_the_bound",
        World::primary,
        |w| {
            if let PgPoll::Up { at, .. } = &mut w.pg.last {
                *at = w.now - 1500 * MS;
            }
        },
        "/primary",
        503,
        "postgresql_stale",
    ),
    (
        "primary_before_postgresql_was_polled",
        World::primary,
        |w| w.pg.last = PgPoll::Never,
        "/primary",
        503,
        "postgresql_not_polled_yet",
    ),
    (
        "primary_named_but_still_in_recovery",
        World::primary,
        |w| w.set_sample(|s| s.in_recovery = true),
        "/primary",
        503,
        "in_recovery",
    ),
    (
        "leader_named_while_still_in_recovery",
        World::primary,
        |w| w.set_sample(|s| s.in_recovery = true),
        "/leader",
        200,
        "leader",
    ),
    (
        "leader_with_postgresql_down",
        World::primary,
        |w| w.pg.last = PgPoll::Down { at: w.now, error: PgFailure::Query },
        "/leader",
        503,
        "postgresql_down",
    ),
    (
        "health_with_postgresql_down",
        World::primary,
        |w| w.pg.last = PgPoll::Down { at: w.now, error: PgFailure::Connect },
        "/health",
        503,
        "postgresql_down",
    ),
    ("health_does_not_need_etcd", World::primary, |w| w.etcd = EtcdView::default(), "/health", 200, "running"),
    // Writable but not named in etcd: the split-brain guard.
    (
        "primary_on_a_writable_node_when_etcd_has_no_leader",
        World::primary,
        |w| w.etcd.leader = None,
        "/primary",
        503,
        "no_leader",
    ),
    (
        "primary_on_a_writable_node_when_etcd_names_another",
        World::primary,
        |w| w.etcd.leader = Some("n2".into()),
        "/primary",
        503,
        "not_leader",
    ),
    (
        "leader_when_etcd_names_another",
        World::primary,
        |w| w.etcd.leader = Some("n2".into()),
        "/leader",
        503,
        "not_leader",
    ),
    (
        "read_only_on_a_writable_node_not_named",
        World::primary,
        |w| w.etcd.leader = Some("n2".into()),
        "/read-only",
        503,
        "not_in_recovery",
    ),
    (
        "replica_on_a_writable_node_not_named",
        World::primary,
        |w| w.etcd.leader = Some("n2".into()),
        "/replica",
        503,
        "not_in_recovery",
    ),
    (
        "readiness_on_a_writable_node_not_named",
        World::primary,
        |w| w.etcd.leader = Some("n2".into()),
        "/readiness",
        503,
        "not_in_recovery",
    ),
    // A streaming replica.
    ("replica_on_a_streaming_replica", World::replica, same, "/replica", 200, "replica"),
    ("primary_on_a_replica", World::replica, same, "/primary", 503, "not_leader"),
    ("leader_on_a_replica", World::replica, same, "/leader", 503, "not_leader"),
    ("standby_leader_on_a_replica", World::replica, same, "/standby_leader", 503, "not_leader"),
    ("read_only_on_a_replica", World::replica, same, "/read-only", 200, "replica"),
    ("health_on_a_replica", World::replica, same, "/health", 200, "running"),
    (
        "replica_with_etcd_stale",
        World::replica,
        |w| w.etcd.confirmed_at = Some(w.now - 2000 * MS),
        "/replica",
        503,
        "etcd_stale",
    ),
    (
        "replica_with_postgresql_down",
        World::replica,
        |w| w.pg.last = PgPoll::Down { at: w.now, error: PgFailure::Connect },
        "/replica",
        503,
        "postgresql_down",
    ),
    (
        "replica_holding_the_leader_key",
        World::replica,
        |w| w.etcd.leader = Some("n1".into()),
        "/replica",
        503,
        "holds_leader_key",
    ),
    ("replica_without_a_member_key", World::replica, |w| w.etcd.me = None, "/replica", 503, "member_key_absent"),
    (
        "replica_tagged_noloadbalance",
        World::replica,
        |w| w.tags(json!({"noloadbalance": true})),
        "/replica",
        503,
        "noloadbalance",
    ),
    (
        "replica_tagged_noloadbalance_false",
        World::replica,
        |w| w.tags(json!({"noloadbalance": "false"})),
        "/replica",
        200,
        "replica",
    ),
    ("replica_lag_within_the_limit", World::replica, same, "/replica?lag=1000", 200, "replica"),
    ("replica_lag_over_the_limit", World::replica, same, "/replica?lag=999", 503, "lagging"),
    (
        "replica_lag_limit_in_units",
        World::replica,
        |w| w.set_sample(|s| s.replay_lsn = Some(0)),
        "/replica?lag=16MB",
        200,
        "replica",
    ),
    (
        "replica_lag_over_a_limit_in_units",
        World::replica,
        |w| w.set_sample(|s| s.latest_end_lsn = Some(2 * MB)),
        "/replica?lag=1MB",
        503,
        "lagging",
    ),
    (
        "replica_lag_measured_from_the_receiver_when_status_is_behind",
        World::replica,
        |w| w.set_sample(|s| s.latest_end_lsn = Some(99_000 + 5000)),
        "/replica?lag=4000",
        503,
        "lagging",
    ),
    (
        "replica_lag_measured_from_status_when_not_streaming",
        World::replica,
        |w| w.set_sample(|s| (s.receiver_status, s.latest_end_lsn) = (None, None)),
        "/replica?lag=1000",
        200,
        "replica",
    ),
    (
        "replica_lag_unknown_without_status_or_receiver",
        World::replica,
        |w| {
            w.etcd.apply_change(&layout(), "n1", "/service/batman/status", None, 2).unwrap();
            w.set_sample(|s| s.latest_end_lsn = None);
        },
        "/replica?lag=1MB",
        503,
        "leader_position_unknown",
    ),
    (
        "replica_ahead_of_a_stale_status_has_no_lag",
        World::replica,
        |w| w.set_sample(|s| s.replay_lsn = Some(200_000)),
        "/replica?lag=0",
        200,
        "replica",
    ),
    (
        "replica_replication_state_streaming",
        World::replica,
        same,
        "/replica?replication_state=streaming",
        200,
        "replica",
    ),
    (
        "replica_replication_state_in_archive_recovery_does_not_match_streaming",
        World::replica,
        |w| w.set_sample(|s| s.receiver_status = None),
        "/replica?replication_state=streaming",
        503,
        "replication_state_mismatch",
    ),
    (
        "replica_replication_state_in_archive_recovery",
        World::replica,
        |w| w.set_sample(|s| s.receiver_status = None),
        "/replica?replication_state=in%20archive%20recovery",
        200,
        "replica",
    ),
    ("replica_tag_matches", World::replica, |w| w.tags(json!({"zone": "eu"})), "/replica?tag_zone=eu", 200, "replica"),
    (
        "replica_tag_differs",
        World::replica,
        |w| w.tags(json!({"zone": "us"})),
        "/replica?tag_zone=eu",
        503,
        "tag_mismatch",
    ),
    (
        "replica_bool_tag_compares_as_lowercase_text",
        World::replica,
        |w| w.tags(json!({"nofailover": true})),
        "/replica?tag_nofailover=true",
        200,
        "replica",
    ),
    ("replica_absent_builtin_tag_reads_false", World::replica, same, "/replica?tag_nofailover=false", 200, "replica"),
    ("replica_absent_custom_tag_does_not_match", World::replica, same, "/replica?tag_zone=eu", 503, "tag_mismatch"),
    ("read_only_on_a_lagging_replica", World::replica, same, "/read-only?lag=10", 503, "lagging"),
    // Synchronous, quorum and asynchronous standbys.
    (
        "sync_on_the_sync_standby",
        World::replica,
        |w| w.sync(SynchronousMode::On, "n2", &["n1"]),
        "/sync",
        200,
        "sync_standby",
    ),
    (
        "sync_alias_synchronous",
        World::replica,
        |w| w.sync(SynchronousMode::On, "n2", &["n3", "n1"]),
        "/synchronous",
        200,
        "sync_standby",
    ),
    (
        "sync_on_an_async_replica",
        World::replica,
        |w| w.sync(SynchronousMode::On, "n2", &["n3"]),
        "/sync",
        503,
        "not_sync_standby",
    ),
    (
        "sync_listed_by_a_previous_leader",
        World::replica,
        |w| w.sync(SynchronousMode::On, "n3", &["n1"]),
        "/sync",
        503,
        "not_sync_standby",
    ),
    (
        "sync_with_synchronous_mode_off",
        World::replica,
        |w| w.sync(SynchronousMode::Off, "n2", &["n1"]),
        "/sync",
        503,
        "not_sync_standby",
    ),
    (
        "sync_when_the_replica_check_fails",
        World::replica,
        |w| {
            w.sync(SynchronousMode::On, "n2", &["n1"]);
            w.etcd.me = None
        },
        "/sync",
        503,
        "member_key_absent",
    ),
    (
        "async_on_an_async_replica",
        World::replica,
        |w| w.sync(SynchronousMode::On, "n2", &["n3"]),
        "/async",
        200,
        "async_replica",
    ),
    ("async_without_sync_mode", World::replica, same, "/asynchronous", 200, "async_replica"),
    (
        "async_on_the_sync_standby",
        World::replica,
        |w| w.sync(SynchronousMode::On, "n2", &["n1"]),
        "/async",
        503,
        "is_synchronous",
    ),
    ("async_with_lag_over_the_limit", World::replica, same, "/async?lag=1", 503, "lagging"),
    (
        "quorum_on_a_quorum_standby",
        World::replica,
        |w| w.sync(SynchronousMode::Quorum, "n2", &["n1"]),
        "/quorum",
        200,
        "quorum_standby",
    ),
    (
        "quorum_on_a_sync_standby",
        World::replica,
        |w| w.sync(SynchronousMode::On, "n2", &["n1"]),
        "/quorum",
        503,
        "not_quorum_standby",
    ),
    (
        "async_on_a_quorum_standby",
        World::replica,
        |w| w.sync(SynchronousMode::Quorum, "n2", &["n1"]),
        "/async",
        503,
        "is_synchronous",
    ),
    (
        "read_only_sync_on_the_sync_standby",
        World::replica,
        |w| w.sync(SynchronousMode::On, "n2", &["n1"]),
        "/read-only-sync",
        200,
        "sync_standby",
    ),
    ("read_only_sync_on_an_async_replica", World::replica, same, "/read-only-sync", 503, "not_sync_standby"),
    (
        "read_only_quorum_on_a_quorum_standby",
        World::replica,
        |w| w.sync(SynchronousMode::Quorum, "n2", &["n1"]),
        "/read-only-quorum",
        200,
        "quorum_standby",
    ),
    // Readiness (Patroni 4.1).
    ("readiness_on_a_streaming_replica_within_the_default_lag", World::replica, same, "/readiness", 200, "ready"),
    (
        "readiness_past_maximum_lag_on_failover",
        World::replica,
        |w| w.etcd.cluster.maximum_lag_on_failover = Some(500),
        "/readiness",
        503,
        "lagging",
    ),
    (
        "readiness_lag_parameter_wins_over_config",
        World::replica,
        |w| w.etcd.cluster.maximum_lag_on_failover = Some(500),
        "/readiness?lag=2000",
        200,
        "ready",
    ),
    ("readiness_write_mode_measures_received_wal", World::replica, same, "/readiness?lag=600&mode=write", 200, "ready"),
    (
        "readiness_apply_mode_measures_replayed_wal",
        World::replica,
        same,
        "/readiness?lag=600&mode=apply",
        503,
        "lagging",
    ),
    (
        "readiness_when_not_streaming",
        World::replica,
        |w| w.set_sample(|s| s.receiver_status = Some("catchup".into())),
        "/readiness",
        503,
        "not_streaming",
    ),
    ("readiness_with_etcd_stale", World::replica, |w| w.etcd.synced = false, "/readiness", 503, "etcd_not_synced"),
    // A standby cluster's leader.
    ("standby_leader_in_a_standby_cluster", World::standby_leader, same, "/standby-leader", 200, "standby_leader"),
    (
        "standby_leader_known_from_its_member_role",
        World::standby_leader,
        |w| {
            w.etcd.cluster.standby_cluster = false;
            w.etcd.me = Some(MemberInfo { role: MemberRole::StandbyLeader, tags: Map::new() });
        },
        "/standby-leader",
        200,
        "standby_leader",
    ),
    (
        "standby_leader_outside_a_standby_cluster",
        World::standby_leader,
        |w| w.etcd.cluster.standby_cluster = false,
        "/standby-leader",
        503,
        "not_standby_cluster",
    ),
    ("primary_on_a_standby_leader", World::standby_leader, same, "/primary", 503, "in_recovery"),
    ("leader_on_a_standby_leader", World::standby_leader, same, "/leader", 200, "leader"),
    ("read_only_on_a_standby_leader", World::standby_leader, same, "/read-only", 200, "standby_leader"),
    ("replica_on_a_standby_leader", World::standby_leader, same, "/replica", 503, "holds_leader_key"),
    // Liveness: the input tasks run, whatever they find.
    (
        "liveness_while_etcd_is_unreachable_but_tried",
        World::primary,
        |w| w.etcd.synced = false,
        "/liveness",
        200,
        "alive",
    ),
    (
        "liveness_with_the_etcd_task_stalled",
        World::primary,
        |w| w.etcd.attempted_at = Some(w.now - 6000 * MS),
        "/liveness",
        503,
        "loop_stalled",
    ),
    (
        "liveness_with_the_postgresql_task_stalled",
        World::primary,
        |w| w.pg.attempted_at = None,
        "/liveness",
        503,
        "loop_stalled",
    ),
];

#[test]
fn every_endpoint_for_every_role_and_state() {
    let mut failures = Vec::new();
    for (name, setup, tweak, target, status, reason) in CASES {
        let mut w = setup();
        tweak(&mut w);
        let v = w.decide(target);
        if v.status() != *status || v.reason.code() != *reason {
            failures.push(format!(
                "{name}: {target} gave {} {} ({}), want {status} {reason}",
                v.status(),
                v.reason.code(),
                v.reason
            ));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), CASES.len(), failures.join("\n"));
}

#[test]
fn case_names_are_unique() {
    let mut names: Vec<&str> = CASES.iter().map(|c| c.0).collect();
    names.sort_unstable();
    let before = names.len();
    names.dedup();
    assert_eq!(before, names.len());
}

#[test]
fn every_endpoint_has_a_row() {
    for e in Endpoint::ALL {
        assert!(
            CASES.iter().any(|c| Endpoint::from_path(c.3.split('?').next().unwrap_or("")) == e),
            "no row for {e:?}"
        );
    }
}

#[test]
fn role_combines_both_sources() {
    let cases: [(&str, Setup, Tweak, Role); 6] = [
        ("named_and_writable", World::primary, same, Role::Primary),
        ("named_and_in_recovery", World::standby_leader, same, Role::StandbyLeader),
        ("not_named_and_in_recovery", World::replica, same, Role::Replica),
        ("not_named_and_writable", World::primary, |w| w.etcd.leader = Some("n9".into()), Role::WritableNotLeader),
        ("etcd_stale", World::primary, |w| w.etcd.synced = false, Role::Unknown),
        (
            "postgresql_down",
            World::replica,
            |w| w.pg.last = PgPoll::Down { at: w.now, error: PgFailure::Connect },
            Role::Unknown,
        ),
    ];
    for (name, setup, tweak, want) in cases {
        let mut w = setup();
        tweak(&mut w);
        assert_eq!(w.decide("/health").role, want, "{name}");
    }
}

#[test]
fn replica_lag_is_reported_even_without_a_limit() {
    let w = World::replica();
    // Leader position: max(status 100000, receiver 99800) − replayed 99000.
    assert_eq!(w.decide("/replica").lag, Some(1000));
    assert_eq!(World::primary().decide("/primary").lag, None);
}

#[test]
fn failing_reasons_read_as_sentences() {
    let mut w = World::primary();
    w.etcd.leader = Some("n2".into());
    assert_eq!(w.decide("/primary").reason.to_string(), "etcd names n2 leader, not this member");
}

// ---- hostile input: any request target HAProxy (or anyone) may send ----

mod hostile {
    use proptest::prelude::*;

    use super::*;

    const PATHS: [&str; 8] = ["/", "/primary", "/master", "/read-write", "/leader", "/replica", "/health", "/x"];

    /// A request target: a known path or any string, then maybe a query of any content.
    fn target() -> impl Strategy<Value = String> {
        let path = prop_oneof![proptest::sample::select(PATHS.to_vec()).prop_map(str::to_owned), ".{0,40}"];
        let query = prop_oneof![
            Just(String::new()),
            "[a-z_=&%0-9.A-Z-]{0,60}".prop_map(|q| format!("?{q}")),
            ".{0,60}".prop_map(|q| format!("?{q}")),
        ];
        (path, query).prop_map(|(p, q)| format!("{p}{q}"))
    }

    fn judge(w: &World, target: &str) -> Option<(Endpoint, Verdict)> {
        let check = Check::parse_target(target).ok()?;
        let v = decide(&check, &Observed { etcd: &w.etcd, pg: &w.pg, now: w.now }, &policy());
        Some((check.endpoint, v))
    }

    proptest! {
        // 2000 cases in CI; bench/fuzz/run.sh sets PROPTEST_CASES for deeper runs.
    #![proptest_config(ProptestConfig::with_cases(std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(2000)))]

        /// Whatever the target, it parses or is refused, and a replica never says 200 to a
        /// check that routes writes.
        #[test]
        fn no_request_target_makes_a_replica_answer_200_as_the_primary(t in target()) {
            if let Some((endpoint, v)) = judge(&World::replica(), &t) {
                prop_assert!(
                    !(v.ok && matches!(endpoint, Endpoint::Primary | Endpoint::Leader | Endpoint::StandbyLeader)),
                    "{t:?} -> {endpoint:?} 200 on a replica"
                );
            }
        }

        /// With neither source usable (etcd not synced, PostgreSQL never polled), no check but
        /// liveness says 200, whatever the target.
        #[test]
        fn without_usable_sources_no_request_target_gets_a_200_but_liveness(t in target()) {
            let mut w = World::primary();
            w.etcd.synced = false;
            w.pg.last = PgPoll::Never;
            if let Some((endpoint, v)) = judge(&w, &t) {
                prop_assert!(!v.ok || endpoint == Endpoint::Liveness, "{t:?} -> {endpoint:?} 200 without sources");
            }
        }
    }
}
