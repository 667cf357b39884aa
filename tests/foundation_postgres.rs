//! A real PostgreSQL primary in one namespace and a streaming replica in another.

use std::time::Duration;

use outrigger_testkit::{Net, PgOptions, Postgres, wait_until};

/// Short replication timeouts so that a cut-off replica is noticed in seconds, not a minute.
fn opts() -> PgOptions {
    PgOptions {
        settings: vec![("wal_sender_timeout".into(), "2s".into()), ("wal_receiver_timeout".into(), "2s".into())],
        ..PgOptions::default()
    }
}

fn pair(test: &str) -> (Net, Postgres, Postgres) {
    let net = Net::start(test, 2).expect("namespaces");
    let primary = Postgres::init_primary(net.host(1), "n1", opts()).expect("primary");
    let replica = Postgres::replica_of(net.host(2), "n2", &primary, opts()).expect("replica");
    (net, primary, replica)
}

fn streaming_replicas(primary: &Postgres) -> String {
    primary.sql("select string_agg(application_name || ':' || state, ',') from pg_stat_replication").unwrap_or_default()
}

#[test]
fn row_written_on_the_primary_is_readable_on_the_replica() {
    let (_net, primary, replica) = pair("row_written_on_the_primary_is_readable_on_the_replica");
    assert!(!primary.in_recovery().unwrap());
    assert!(replica.in_recovery().unwrap());
    primary.sql("create table t (id int primary key, v text); insert into t values (1, 'hello')").unwrap();
    let v = wait_until(Duration::from_secs(10), "the row to reach the replica", || {
        replica.sql("select v from t where id = 1").ok().filter(|v| !v.is_empty())
    })
    .unwrap();
    assert_eq!(v, "hello");
    assert_eq!(streaming_replicas(&primary), "n2:streaming");
}

#[test]
fn cutting_the_replica_host_off_stops_replication_and_healing_restarts_it() {
    let (net, primary, replica) = pair("cutting_the_replica_host_off_stops_replication_and_healing_restarts_it");
    primary.sql("create table t (id int primary key)").unwrap();
    wait_until(Duration::from_secs(10), "the replica to stream", || {
        (streaming_replicas(&primary) == "n2:streaming").then_some(())
    })
    .unwrap();

    net.host(2).cut_off().unwrap();
    primary.sql("insert into t values (1)").unwrap();
    // The primary notices within wal_sender_timeout and drops the walsender.
    wait_until(Duration::from_secs(15), "the primary to drop the cut-off replica", || {
        streaming_replicas(&primary).is_empty().then_some(())
    })
    .unwrap();
    assert_eq!(replica.sql("select count(*) from t").unwrap(), "0", "the row crossed a cut network");

    net.host(2).heal().unwrap();
    wait_until(Duration::from_secs(30), "replication to resume and deliver the row", || {
        (replica.sql("select count(*) from t").ok()? == "1").then_some(())
    })
    .unwrap();
    assert_eq!(streaming_replicas(&primary), "n2:streaming");
}
