//! Hostile input, as property tests (issue 16, item 4): every parser ha-agent runs on input
//! it does not control — etcd values of every key it reads, REST paths, query strings and
//! bodies, RFC 3339 times, `synchronous_standby_names` as PostgreSQL reports it — is fed
//! arbitrary input and must return (a value or a refusal), never panic. For the health checks,
//! arbitrary paths and queries on a replica's snapshot never answer 200 to `/primary`.

use std::time::{Duration, Instant};

use ha_agent::control::Snapshot;
use ha_agent::core::ClusterView;
use ha_agent::http::actions::{parse_reinitialize, parse_restart, parse_schedule, read_json};
use ha_agent::http::health::{Ask, Now, verdict};
use ha_agent::http::parse_query;
use outrigger_etcd::Kv;
use outrigger_schema::{KeyLayout, StatusJson};
use proptest::prelude::*;

/// Every key ha-agent reads under the scope, and one foreign key.
const KEYS: [&str; 13] = [
    "leader",
    "initialize",
    "config",
    "status",
    "optime/leader",
    "failover",
    "history",
    "sync",
    "failsafe",
    "members/n1",
    "members/n2",
    "members/a/b",
    "outrigger/backup/lock",
];

/// Bytes that are often almost JSON: arbitrary, or a JSON text with arbitrary changes.
fn value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..200),
        "[{}\\[\\]\":,a-z0-9.\\- ]{0,120}".prop_map(String::into_bytes),
        (
            prop_oneof![
                Just(r#"{"leader":"n1","sync_standby":"n2,n3","quorum":1}"#),
                Just(r#"{"conn_url":"postgres://h:5432/postgres","api_url":"http://h:8008/patroni","state":"running","role":"replica","xlog_location":5,"timeline":1}"#),
                Just(r#"{"ttl":30,"loop_wait":10,"synchronous_mode":"quorum","failsafe_mode":true,"postgresql":{"parameters":{"max_connections":100}}}"#),
                Just(r#"[[1,25165984,"no recovery target specified","2026-01-01T00:00:00+00:00","n2"]]"#),
                Just(r#"{"n1":"http://h:8008/patroni"}"#),
                Just(r#"{"leader":"n1","member":"n2","scheduled_at":"2026-01-01T00:00:00+00:00"}"#),
            ],
            any::<usize>(),
            any::<u8>(),
        )
            .prop_map(|(j, at, b)| {
                let mut v = j.as_bytes().to_vec();
                let i = at % v.len();
                v[i] = b;
                v
            }),
    ]
}

fn kvs() -> impl Strategy<Value = Vec<Kv>> {
    proptest::collection::vec((0..KEYS.len(), value(), any::<i64>(), any::<i64>()), 0..12).prop_map(|v| {
        v.into_iter()
            .map(|(k, value, rev, lease)| Kv {
                key: format!("/service/otk/{}", KEYS[k]),
                value,
                create_revision: rev,
                mod_revision: rev,
                lease,
            })
            .collect()
    })
}

fn replica_snapshot() -> Snapshot {
    Snapshot {
        status: Some(
            StatusJson::decode(
                br#"{"state":"running","role":"replica","xlog":{"received_location":100,"replayed_location":90},"timeline":1}"#,
            )
            .expect("a replica's status"),
        ),
        ..Snapshot::default()
    }
}

proptest! {
    // 2000 cases in CI; bench/fuzz/run.sh sets PROPTEST_CASES for deeper runs.
    #![proptest_config(ProptestConfig::with_cases(std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(2000)))]

    #[test]
    fn cluster_keys_of_any_content_decode_or_are_reported_never_a_panic(kvs in kvs(), rev in any::<i64>()) {
        let layout = KeyLayout::new("service", "otk").unwrap();
        let (view, problems) = ClusterView::decode(&layout, rev, &kvs);
        // Whatever was garbage is named, and the view stays usable.
        prop_assert!(problems.iter().all(|p| !p.key.is_empty()));
        let _ = view.cluster_timeline();
    }

    #[test]
    fn health_checks_on_a_replica_never_answer_200_to_primary_whatever_the_query(
        query in "[a-z_=&%0-9.\\-]{0,60}",
        suffix in "[/a-z?]{0,10}",
    ) {
        let q = parse_query(Some(&query));
        let now = Now { instant: Instant::now(), wall_ms: 1_800_000_000_000 };
        let snap = replica_snapshot();
        for path in ["/primary", "/master", "/read-write", "/leader", "/standby-leader"] {
            let v = verdict(Ask::Get, &format!("{path}{suffix}"), &q, &snap, Duration::from_secs(30), now);
            if suffix.is_empty() || suffix.starts_with('?') {
                prop_assert_ne!(v.code, 200, "{}?{}", path, query);
            }
        }
        for path in ["/replica", "/health", "/liveness", "/readiness", "/sync", "/quorum", "/asynchronous", "/x"] {
            let _ = verdict(Ask::CodeOnly, &format!("{path}{suffix}"), &q, &snap, Duration::from_secs(30), now);
        }
    }

    #[test]
    fn rest_bodies_and_times_of_any_content_are_answered_never_a_panic(
        body in value(),
        when in "[0-9T:+\\-. Zz]{0,40}",
        paused in any::<bool>(),
    ) {
        if let Ok(req) = read_json(Some(&body), true) {
            let _ = parse_restart(&req, paused, 1_800_000_000_000);
            let _ = parse_reinitialize(&req);
        }
        let _ = parse_schedule(&when, "restart", 1_800_000_000_000);
        let _ = ha_agent::core::schedule::parse_rfc3339_ms(&when);
    }

    #[test]
    fn synchronous_standby_names_of_any_content_parse_never_a_panic(text in "[ -~]{0,80}") {
        let s = ha_agent::core::sync::Ssn::parse(&text);
        let _ = s.to_string();
        let _ = s.every_commit_waits_for();
    }

    #[test]
    fn a_damaged_patroni_yaml_never_shows_its_replication_password_in_an_error(
        secret in "[a-zA-Z0-9]{12,20}",
        edits in proptest::collection::vec((any::<usize>(), "[ -~\n]{0,3}", 0usize..3), 0..4),
    ) {
        use outrigger_daemon::config::Validate;
        // Damage anywhere but the secret's own line and the line ends around it.
        let line = "\n      password: replicator\n  create_replica_methods:";
        let (before, after) = PATRONI_YML.split_once(line).expect("the replication password's line");
        let (mut before, mut after) = (before.to_owned(), after.to_owned());
        for (n, (at, insert, remove)) in edits.into_iter().enumerate() {
            let part = if n % 2 == 0 { &mut before } else { &mut after };
            let i = at % (part.len() + 1);
            let end = (i + remove).min(part.len());
            part.replace_range(i..end, &insert);
        }
        let text = format!("{before}{}{after}", line.replace("replicator", &secret));
        let shown = match ha_agent::config::RawConfig::parse("patroni.yml", &text) {
            Ok(raw) => match raw.validate() {
                Ok(_) => return Ok(()),
                Err(ps) => ps.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"),
            },
            Err(e) => e.to_string(),
        };
        prop_assert!(!shown.contains(&secret), "the secret is shown: {shown}");
    }
}

/// The reference deployment's Patroni file (its passwords are examples).
const PATRONI_YML: &str = include_str!("../../../deploy/config/patroni-reference.yml");
