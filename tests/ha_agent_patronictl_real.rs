//! Unmodified `patronictl` (from PyPI, `patroni[etcd3]`, in the test kit's virtualenv) against
//! a 3-host ha-agent cluster (`ha_agent_harness.rs`: etcd member + ha-agent + PostgreSQL per
//! host). patronictl reads the cluster from etcd and drives it through each member's REST API,
//! exactly as it does with Patroni; the assertions are on what it prints and on the state of
//! the cluster afterwards (etcd keys, PostgreSQL).
//!
//! patronictl runs inside host n1's namespace (`ip netns exec`), so its traffic stays in the
//! namespaces the test made.

#[path = "ha_agent_harness.rs"]
mod harness;

use std::path::PathBuf;
use std::time::Duration;

use harness::{Cluster, Opts, PG_PORT, SCOPE};
use outrigger_testkit::{PgOptions, Postgres, wait_until};

const UP: Duration = Duration::from_secs(90);

/// A cluster with one primary and two streaming replicas, and patronictl's config for it.
struct Ctl {
    c: Cluster,
    primary: usize,
    config: PathBuf,
    bin: PathBuf,
}

impl Ctl {
    fn start(test: &str, opts: Opts) -> Self {
        let c = Cluster::start(test, opts).expect("cluster");
        let primary = c.wait_primary(UP, &[]).expect("a primary");
        let replicas: Vec<usize> = (1..=3).filter(|&i| i != primary).collect();
        c.wait_streaming(primary, &replicas, UP).expect("replicas streaming");
        Self::with(c, primary)
    }

    /// patronictl's config for a running cluster led by member `primary`.
    fn with(c: Cluster, primary: usize) -> Self {
        let hosts: Vec<String> =
            (0..c.etcd.len()).map(|m| c.etcd.endpoint(m).trim_start_matches("http://").to_owned()).collect();
        let config = c.net.dir().path().join("patronictl.yml");
        std::fs::write(
            &config,
            format!("scope: {SCOPE}\nnamespace: /service/\netcd3:\n  hosts: {}\n", hosts.join(",")),
        )
        .expect("write patronictl.yml");
        let bin = outrigger_testkit::python::patroni_bin().expect("patronictl from PyPI").join("patronictl");
        Self { c, primary, config, bin }
    }

    /// Runs `patronictl -c <config> <args>` in n1's namespace; its output, or why it failed.
    fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut all = vec![self.bin.to_str().expect("utf-8 path"), "-c", self.config.to_str().expect("utf-8 path")];
        all.extend_from_slice(args);
        let host = self.c.net.host(1);
        let out = host.exec(&["timeout", "60"].iter().copied().chain(all.iter().copied()).collect::<Vec<_>>())?;
        Ok(out)
    }

    /// `patronictl list -f json`: one object per member.
    fn list(&self) -> Vec<serde_json::Value> {
        let out = self.run(&["list", SCOPE, "-f", "json"]).expect("patronictl list");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("patronictl list -f json is not JSON ({e}): {out}"))
    }
}

fn field<'a>(m: &'a serde_json::Value, k: &str) -> &'a str {
    m[k].as_str().unwrap_or_default()
}

#[test]
fn patronictl_lists_shows_and_edits_an_ha_agent_cluster() {
    let ctl = Ctl::start("patronictl_lists_shows_and_edits", Opts { sync: false, ..Opts::default() });
    let p = ctl.primary;

    // list: three members, one Leader, two streaming replicas, all on timeline 1. A member key
    // says "streaming" from its agent's first cycle after the walreceiver connected.
    let members = wait_until(Duration::from_secs(20), "patronictl list to show both replicas streaming", || {
        let m = ctl.list();
        (m.iter().filter(|m| field(m, "State") == "streaming").count() == 2).then_some(m)
    })
    .expect("both replicas streaming");
    assert_eq!(members.len(), 3, "{members:?}");
    let leader: Vec<&serde_json::Value> = members.iter().filter(|m| field(m, "Role") == "Leader").collect();
    assert_eq!(leader.len(), 1, "{members:?}");
    assert_eq!(field(leader[0], "Member"), Cluster::name(p));
    assert_eq!(field(leader[0], "State"), "running");
    for m in members.iter().filter(|m| field(m, "Role") != "Leader") {
        assert_eq!(field(m, "Role"), "Replica", "{m}");
        assert_eq!(field(m, "State"), "streaming", "{m}");
        assert_eq!(m["TL"], serde_json::json!(1), "{m}");
        assert_eq!(field(m, "Host"), ctl.c.net.host(Cluster::index(field(m, "Member"))).ip().to_string());
    }
    // The table form too, with the cluster's system identifier in its title.
    let table = ctl.run(&["list", SCOPE]).expect("patronictl list");
    let sysid = ctl.c.etcd_get("initialize").expect("initialize key");
    assert!(table.contains(&format!("Cluster: {SCOPE} ({sysid})")), "{table}");

    // topology: the leader first, the replicas under it.
    let topo = ctl.run(&["topology", SCOPE]).expect("patronictl topology");
    let rows: Vec<&str> = topo.lines().filter(|l| l.starts_with("| ") && !l.contains("Member")).collect();
    assert_eq!(rows.len(), 3, "{topo}");
    assert!(rows[0].contains(&format!("| {} ", Cluster::name(p))), "leader first: {topo}");
    assert!(rows[1..].iter().all(|r| r.starts_with("| + n")), "replicas indented under the leader: {topo}");

    // version: the CLI's own, then each member's through GET /patroni.
    let version = ctl.run(&["version", SCOPE]).expect("patronictl version");
    for i in 1..=3 {
        assert!(
            version.contains(&format!("{}: Patroni {}", Cluster::name(i), outrigger_schema::PATRONI_COMPAT_VERSION)),
            "{version}"
        );
    }
    assert!(version.contains("PostgreSQL 1"), "{version}");

    // show-config: the dynamic config ha-agent wrote at bootstrap.
    let shown = ctl.run(&["show-config", SCOPE]).expect("patronictl show-config");
    assert!(shown.contains("maximum_lag_on_failover: 16777216"), "{shown}");

    // edit-config: a parameter change is written to /config and applied by every member.
    let out = ctl.run(&["edit-config", SCOPE, "--force", "-p", "work_mem=7MB", "-s", "loop_wait=1"]);
    out.expect("patronictl edit-config");
    let config = ctl.c.etcd_get("config").expect("config key");
    let v: serde_json::Value = serde_json::from_str(&config).expect("config is JSON");
    assert_eq!(v["postgresql"]["parameters"]["work_mem"], "7MB", "{config}");
    for i in 1..=3 {
        wait_until(Duration::from_secs(20), &format!("work_mem=7MB on n{i}"), || {
            (ctl.c.sql(i, "show work_mem").ok()? == "7MB").then_some(())
        })
        .expect("the parameter applied by every member");
    }

    // history: empty on timeline 1 (printed as a header only).
    let history = ctl.run(&["history", SCOPE]).expect("patronictl history");
    assert!(history.contains("TL") && history.contains("LSN"), "{history}");
}

/// The member `patronictl list -f json` shows as Leader.
fn listed_leader(ctl: &Ctl) -> Option<String> {
    ctl.list().iter().find(|m| field(m, "Role") == "Leader").map(|m| field(m, "Member").to_owned())
}

#[test]
fn patronictl_switchover_and_failover_move_the_leader_and_the_old_one_follows() {
    let ctl = Ctl::start("patronictl_switchover_and_failover", Opts { sync: false, ..Opts::default() });
    let p = ctl.primary;
    let to = if p == 1 { 2 } else { 1 };

    // switchover to a named candidate: patronictl POSTs /switchover to the leader and waits.
    let out = ctl
        .run(&["switchover", SCOPE, "--leader", &Cluster::name(p), "--candidate", &Cluster::name(to), "--force"])
        .expect("patronictl switchover");
    assert!(out.contains(&format!("Successfully switched over to \"{}\"", Cluster::name(to))), "{out}");
    assert_eq!(ctl.c.wait_primary(UP, &[p]).expect("new primary"), to);
    ctl.c.wait_streaming(to, &[p], UP).expect("the old leader follows the new one");
    wait_until(UP, "patronictl list shows the new leader on timeline 2", || {
        let members = ctl.list();
        let leader = members.iter().find(|m| field(m, "Role") == "Leader")?;
        (field(leader, "Member") == Cluster::name(to) && leader["TL"] == serde_json::json!(2)).then_some(())
    })
    .expect("list after switchover");
    let history = ctl.run(&["history", SCOPE]).expect("patronictl history");
    assert!(
        history.lines().any(|l| l.starts_with("|  1 ") || l.starts_with("| 1 ")),
        "a row for timeline 1: {history}"
    );
    assert!(history.contains(&Cluster::name(to)), "the new leader named: {history}");
    assert_eq!(ctl.c.etcd_get("failover").as_deref(), Some("{}"), "the failover key is cleared");

    // switchover to whoever is best (no candidate given).
    let out = ctl.run(&["switchover", SCOPE, "--leader", &Cluster::name(to), "--force"]).expect("switchover to any");
    assert!(out.contains("Successfully switched over to"), "{out}");
    let any = ctl.c.wait_primary(UP, &[to]).expect("a primary other than the last");

    // failover to a named candidate, once both replicas stream from the current leader.
    let replicas: Vec<usize> = (1..=3).filter(|&i| i != any).collect();
    ctl.c.wait_streaming(any, &replicas, UP).expect("replicas streaming before the failover");
    let target = replicas[0];
    let out =
        ctl.run(&["failover", SCOPE, "--candidate", &Cluster::name(target), "--force"]).expect("patronictl failover");
    assert!(out.contains(&format!("Successfully failed over to \"{}\"", Cluster::name(target))), "{out}");
    assert_eq!(ctl.c.wait_primary(UP, &[any]).expect("the candidate leads"), target);
    assert_eq!(listed_leader(&ctl), Some(Cluster::name(target)));
}

#[test]
fn patronictl_restart_reload_reinit_and_pause_act_on_ha_agent_members() {
    let ctl = Ctl::start("patronictl_restart_reload_reinit_pause", Opts { sync: false, ..Opts::default() });
    let p = ctl.primary;
    let r = (1..=3).find(|&i| i != p).expect("a replica");
    let started = |i: usize| ctl.c.sql(i, "select pg_postmaster_start_time()").expect("start time");

    // restart of one replica: a new postmaster, still a streaming replica, no leader change.
    let before = started(r);
    let out = ctl.run(&["restart", SCOPE, &Cluster::name(r), "--force"]).expect("patronictl restart");
    assert!(out.contains("Success: restart on member"), "{out}");
    wait_until(UP, "a new postmaster on the replica", || (started(r) != before).then_some(())).expect("restarted");
    ctl.c.wait_streaming(p, &[r], UP).expect("streaming again");
    assert_eq!(ctl.c.leader_key(), Some(Cluster::name(p)), "no failover");

    // restart of the leader: it keeps the leader key.
    let before = started(p);
    let out = ctl.run(&["restart", SCOPE, &Cluster::name(p), "--force"]).expect("patronictl restart leader");
    assert!(out.contains("Success: restart on member"), "{out}");
    wait_until(UP, "a new postmaster on the leader", || (started(p) != before).then_some(())).expect("restarted");
    assert_eq!(ctl.c.wait_primary(UP, &[]).expect("primary"), p, "the leader kept its key");

    // reload: every member answers.
    let out = ctl.run(&["reload", SCOPE, "--force"]).expect("patronictl reload");
    assert_eq!(out.matches("Reload request received for member").count(), 3, "{out}");

    // reinit of a replica: wiped and cloned again from the leader, then streaming.
    let marker = ctl.c.sql(r, "select pg_postmaster_start_time()").expect("start time");
    let out = ctl.run(&["reinit", SCOPE, &Cluster::name(r), "--force", "--wait"]).expect("patronictl reinit");
    assert!(out.contains("Success: reinitialize for member"), "{out}");
    ctl.c.wait_streaming(p, &[r], UP).expect("streaming after reinit");
    assert_ne!(ctl.c.sql(r, "select pg_postmaster_start_time()").expect("start time"), marker);

    // pause: every member publishes pause, list says so; the primary's PostgreSQL killed is
    // then not restarted and nobody takes over; resume restores both.
    let out = ctl.run(&["pause", SCOPE, "--wait"]).expect("patronictl pause");
    assert!(out.contains("Success: cluster management is paused"), "{out}");
    for i in 1..=3 {
        let m = ctl.c.etcd_get(&format!("members/{}", Cluster::name(i))).expect("member key");
        let v: serde_json::Value = serde_json::from_str(&m).expect("member JSON");
        assert_eq!(v["pause"], serde_json::json!(true), "n{i}: {m}");
    }
    let table = ctl.run(&["list", SCOPE]).expect("list");
    assert!(table.contains("Maintenance mode: on"), "{table}");
    let out = ctl.run(&["resume", SCOPE, "--wait"]).expect("patronictl resume");
    assert!(out.contains("Success: cluster management is resumed"), "{out}");
    let table = ctl.run(&["list", SCOPE]).expect("list");
    assert!(!table.contains("Maintenance mode"), "{table}");
}

/// The roles `patronictl list -f json` shows, by member.
fn roles(ctl: &Ctl) -> std::collections::BTreeMap<String, String> {
    ctl.list().iter().map(|m| (field(m, "Member").to_owned(), field(m, "Role").to_owned())).collect()
}

#[test]
fn patronictl_edit_config_switches_synchronous_mode_and_quorum_commit_and_list_shows_their_standbys() {
    let ctl = Ctl::start("patronictl_sync_roles", Opts { sync: false, ..Opts::default() });
    let p = ctl.primary;
    let replicas =
        || roles(&ctl).into_iter().filter(|(n, _)| *n != Cluster::name(p)).map(|(_, r)| r).collect::<Vec<_>>();
    assert!(replicas().iter().all(|r| r == "Replica"), "{:?}", roles(&ctl));

    ctl.run(&["edit-config", SCOPE, "--force", "-s", "synchronous_mode=true"]).expect("edit-config on");
    // One replica becomes the synchronous standby: PostgreSQL waits for it, the sync key
    // lists it, and patronictl shows it.
    let sync = wait_until(UP, "patronictl to show one Sync Standby", || {
        let r = roles(&ctl);
        let sync: Vec<String> = r.iter().filter(|(_, role)| *role == "Sync Standby").map(|(n, _)| n.clone()).collect();
        (sync.len() == 1 && r.get(&Cluster::name(p)).map(String::as_str) == Some("Leader")).then(|| sync[0].clone())
    })
    .expect("a sync standby");
    let ssn = ctl.c.sql(p, "show synchronous_standby_names").expect("show");
    assert_eq!(ssn, sync, "synchronous_standby_names names the listed standby");
    let state = ctl.c.sql(p, &format!("select sync_state from pg_stat_replication where application_name = '{sync}'"));
    assert_eq!(state.expect("pg_stat_replication"), "sync");

    // Two synchronous standbys.
    ctl.run(&["edit-config", SCOPE, "--force", "-s", "synchronous_node_count=2"]).expect("edit-config count");
    wait_until(UP, "patronictl to show two Sync Standbys", || {
        replicas().iter().all(|r| r == "Sync Standby").then_some(())
    })
    .expect("two sync standbys");

    // Quorum commit: both are voters, shown as Quorum Standby; the setting is ANY n.
    ctl.run(&["edit-config", SCOPE, "--force", "-s", "synchronous_mode=quorum", "-s", "synchronous_node_count=1"])
        .expect("edit-config quorum");
    wait_until(UP, "patronictl to show two Quorum Standbys", || {
        replicas().iter().all(|r| r == "Quorum Standby").then_some(())
    })
    .expect("two quorum standbys");
    let ssn = ctl.c.sql(p, "show synchronous_standby_names").expect("show");
    assert!(ssn.starts_with("ANY 1 ("), "{ssn}");

    // Off again: the key goes, the setting goes, both show as replicas.
    ctl.run(&["edit-config", SCOPE, "--force", "-s", "synchronous_mode=false"]).expect("edit-config off");
    wait_until(UP, "the sync key to be deleted and both to show as Replica", || {
        (ctl.c.etcd_get("sync").is_none_or(|v| v.is_empty()) && replicas().iter().all(|r| r == "Replica")).then_some(())
    })
    .expect("asynchronous again");
    wait_until(Duration::from_secs(20), "synchronous_standby_names to be empty", || {
        ctl.c.sql(p, "show synchronous_standby_names").ok()?.is_empty().then_some(())
    })
    .expect("setting cleared");
}

/// `ha_agent_timings_seconds{timing="<name>"}` on member `i`'s `/metrics`, read from its host.
fn timing(ctl: &Ctl, i: usize, name: &str) -> Option<f64> {
    metric(ctl, i, &format!("ha_agent_timings_seconds{{timing=\"{name}\"}}"))
}

/// One sample of member `i`'s `/metrics`, by its name and labels as rendered.
fn metric(ctl: &Ctl, i: usize, series: &str) -> Option<f64> {
    let url = format!("http://{}:8008/metrics", ctl.c.net.host(i).ip());
    let body = ctl.c.net.host(i).exec(&["curl", "-s", "-m", "2", &url]).ok()?;
    body.lines().find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

/// The TTL etcd granted the lease that `key` (under the cluster's prefix) is on, in seconds.
fn lease_ttl_of(ctl: &Ctl, key: &str) -> Option<u64> {
    let key = format!("/service/{SCOPE}/{key}");
    let out = ctl.c.etcd.etcdctl_quick(&ctl.c.net, 0, "2s", &["get", &key, "-w", "json"]).ok()?;
    let v: serde_json::Value = serde_json::from_str(&out).ok()?;
    let lease = v["kvs"][0]["lease"].as_i64().filter(|l| *l != 0)?;
    let out = ctl
        .c
        .etcd
        .etcdctl_quick(&ctl.c.net, 0, "2s", &["lease", "timetolive", &format!("{lease:x}"), "-w", "json"])
        .ok()?;
    let v: serde_json::Value = serde_json::from_str(&out).ok()?;
    v["granted-ttl"].as_u64()
}

#[test]
fn patronictl_edit_config_changes_the_timings_every_member_runs_with() {
    // The agents' files say ttl 3s, loop_wait 1s, retry_timeout 1s (request_timeout 1s); as
    // in Patroni, the cluster's config key wins.
    let ctl = Ctl::start("patronictl_edit_config_timings", Opts { sync: false, ..Opts::default() });
    let p = ctl.primary;
    let replicas: Vec<usize> = (1..=3).filter(|&i| i != p).collect();
    let all_run = |what: &str, ttl: f64, loop_wait: f64| {
        wait_until(UP, what, || {
            (1..=3)
                .all(|i| timing(&ctl, i, "ttl") == Some(ttl) && timing(&ctl, i, "loop_wait") == Some(loop_wait))
                .then_some(())
        })
    };
    all_run("every member to run with the bootstrap's ttl 3s, loop_wait 1s", 3.0, 1.0).expect("bootstrap timings");

    ctl.run(&["edit-config", SCOPE, "--force", "-s", "ttl=6", "-s", "loop_wait=2"]).expect("edit-config ttl=6");
    all_run("every member to run with ttl 6s, loop_wait 2s", 6.0, 2.0).expect("new timings in force");
    // The replicas move their keys onto leases granted for the new ttl; the primary keeps the
    // lease it leads on until it stops leading.
    wait_until(UP, "the replicas' member keys on 6 s leases", || {
        replicas.iter().all(|&i| lease_ttl_of(&ctl, &format!("members/{}", Cluster::name(i))) == Some(6)).then_some(())
    })
    .expect("replica leases follow the ttl");
    assert_eq!(lease_ttl_of(&ctl, "leader"), Some(3), "the primary keeps its lease while it leads");

    // A switchover: the new leader leads on a lease of the new ttl, and the old one follows.
    let to = replicas[0];
    let out = ctl
        .run(&["switchover", SCOPE, "--leader", &Cluster::name(p), "--candidate", &Cluster::name(to), "--force"])
        .expect("patronictl switchover");
    assert!(out.contains("Successfully switched over to"), "{out}");
    assert_eq!(ctl.c.wait_primary(UP, &[p]).expect("new primary"), to);
    assert_eq!(lease_ttl_of(&ctl, "leader"), Some(6), "the new leader's lease has the ttl in force");
    ctl.c.wait_streaming(to, &[p], UP).expect("the old leader follows");

    // Breaking loop_wait + 2 * retry_timeout <= ttl: adjusted as Patroni adjusts it
    // (loop_wait lowered to ttl - 2 * retry_timeout = 4s).
    ctl.run(&["edit-config", SCOPE, "--force", "-s", "loop_wait=5"]).expect("edit-config loop_wait=5");
    all_run("every member to run with loop_wait lowered to 4s", 6.0, 4.0).expect("adjusted timings");
    for i in 1..=3 {
        assert!(metric(&ctl, i, "ha_agent_cluster_timings_total{result=\"adjusted\"}") >= Some(1.0), "n{i} counts it");
    }

    // A ttl etcd cannot grant (under 2s): refused everywhere, the running timings stay.
    ctl.run(&["edit-config", SCOPE, "--force", "-s", "ttl=1"]).expect("edit-config ttl=1");
    wait_until(UP, "every member to refuse ttl 1s", || {
        (1..=3)
            .all(|i| metric(&ctl, i, "ha_agent_cluster_timings_total{result=\"refused\"}") >= Some(1.0))
            .then_some(())
    })
    .expect("refused");
    for i in 1..=3 {
        assert_eq!(timing(&ctl, i, "ttl"), Some(6.0), "n{i} keeps its running ttl");
    }
    assert!(ctl.c.writable(to), "the leader still leads");
    let errors = ctl.c.unexpected_errors(&["the cluster's timings cannot be used here"]);
    assert!(errors.is_empty(), "unexpected ERROR lines: {errors:#?}");
}

#[test]
fn the_clusters_pg_hba_pg_ident_and_use_slots_apply_to_every_member_and_edit_config_changes_them() {
    // No member's file sets pg_hba: the one in bootstrap.dcs is every member's (without it the
    // default asks replication for a password the replicas do not have, and nobody streams).
    let ctl = Ctl::start("patronictl_cluster_pg_hba", Opts { sync: false, cluster_pg_hba: true, ..Opts::default() });
    let hba = |i: usize| std::fs::read_to_string(ctl.c.data_dir(i).join("pg_hba.conf")).unwrap_or_default();
    for i in 1..=3 {
        assert!(hba(i).contains("host replication all 10.250.0.0/24 trust"), "n{i}: {}", hba(i));
    }
    let lines = "postgresql.pg_hba=['local all all trust', 'local replication all trust', \
                 'host all all 10.250.0.0/24 trust', 'host replication all 10.250.0.0/24 trust', \
                 'host all all 192.0.2.0/24 reject']";
    let ident = |i: usize| std::fs::read_to_string(ctl.c.data_dir(i).join("pg_ident.conf")).unwrap_or_default();
    ctl.run(&["edit-config", SCOPE, "--force", "-s", lines, "-s", "postgresql.pg_ident=['ops alice postgres']"])
        .expect("edit-config pg_hba and pg_ident");
    wait_until(UP, "every member's pg_hba.conf and pg_ident.conf to have the new lines", || {
        (1..=3).all(|i| hba(i).contains("192.0.2.0/24 reject") && ident(i).contains("ops alice postgres")).then_some(())
    })
    .expect("the cluster's pg_hba applied everywhere");

    // use_slots off: replicas stream without a slot and the leader drops theirs; back on, the
    // slots are made again and used.
    let p = ctl.primary;
    let slots = |active: &str| {
        ctl.c.sql(
            p,
            &format!("select count(*) from pg_replication_slots where slot_type = 'physical' and active = {active}"),
        )
    };
    ctl.run(&["edit-config", SCOPE, "--force", "-s", "postgresql.use_slots=false"]).expect("use_slots off");
    wait_until(UP, "no slot on the leader and the replicas streaming without one", || {
        let conf = |i: usize| std::fs::read_to_string(ctl.c.data_dir(i).join("postgresql.conf")).unwrap_or_default();
        let replicas: Vec<usize> = (1..=3).filter(|i| *i != p).collect();
        (replicas.iter().all(|&i| !conf(i).contains("primary_slot_name"))
            && slots("true").ok().as_deref() == Some("0")
            && slots("false").ok().as_deref() == Some("0"))
        .then_some(())
    })
    .expect("slots gone");
    ctl.c.wait_streaming(p, &(1..=3).filter(|i| *i != p).collect::<Vec<_>>(), UP).expect("streaming without slots");
    ctl.run(&["edit-config", SCOPE, "--force", "-s", "postgresql.use_slots=true"]).expect("use_slots on");
    wait_until(UP, "both replicas streaming through their slots again", || {
        (slots("true").ok().as_deref() == Some("2")).then_some(())
    })
    .expect("slots back and active");
}

#[test]
fn permanent_slots_from_edit_config_exist_on_every_member_follow_the_leaders_position_and_survive_a_switchover() {
    let ctl = Ctl::start("patronictl_permanent_slots", Opts { sync: false, ..Opts::default() });
    let p = ctl.primary;
    // `keep`'s restart_lsn on member i (-1: reserved nothing yet), if it has the slot.
    let keep = |i: usize| -> Option<i64> {
        let out = ctl
            .c
            .sql(
                i,
                "select coalesce((restart_lsn - '0/0'::pg_lsn)::bigint, -1) from pg_replication_slots \
                 where slot_name = 'keep' and slot_type = 'physical'",
            )
            .ok()?;
        out.trim().parse().ok()
    };
    ctl.run(&["edit-config", SCOPE, "--force", "-s", "slots.keep.type=physical", "-s", "slots.n2.type=physical"])
        .expect("edit-config slots");
    wait_until(UP, "slot keep on every member", || (1..=3).all(|i| keep(i).is_some()).then_some(()))
        .expect("permanent slot everywhere");
    // A member's own slot name is not taken for a permanent slot.
    let n2_slot =
        ctl.c.sql(p, "select count(*) from pg_replication_slots where slot_name = 'n2' and active").expect("n2 slot");
    assert!(p == 2 || n2_slot.trim() == "1", "n2's slot is still the member's: {n2_slot}");

    // A consumer moves the leader's slot on; the replicas' copies follow to that position.
    ctl.c.sql(p, "create table t(x int); insert into t select generate_series(1, 10000)").expect("write");
    ctl.c.sql(p, "select pg_switch_wal()").expect("switch wal");
    let moved: i64 = ctl
        .c
        .sql(p, "select (pg_replication_slot_advance('keep', pg_current_wal_lsn())).end_lsn - '0/0'::pg_lsn")
        .expect("advance keep on the leader")
        .trim()
        .parse()
        .expect("an lsn");
    let replicas: Vec<usize> = (1..=3).filter(|&i| i != p).collect();
    wait_until(UP, "the replicas' keep at the leader's position", || {
        replicas.iter().all(|&i| keep(i).is_some_and(|l| l >= moved)).then_some(())
    })
    .expect("replicas follow the leader's slot");

    // After a switchover the new leader has the slot where the consumer left it, and keeps it.
    let to = replicas[0];
    let out = ctl
        .run(&["switchover", SCOPE, "--leader", &Cluster::name(p), "--candidate", &Cluster::name(to), "--force"])
        .expect("patronictl switchover");
    assert!(out.contains("Successfully switched over"), "{out}");
    assert_eq!(ctl.c.wait_primary(UP, &[p]).expect("new primary"), to);
    let kept = keep(to).expect("the new leader has keep");
    assert!(kept >= moved, "keep on the new leader at {kept}, before the consumer's {moved}");
    ctl.c.wait_streaming(to, &(1..=3).filter(|&i| i != to).collect::<Vec<_>>(), UP).expect("streaming");
    wait_until(UP, "keep on every member after the switchover", || (1..=3).all(|i| keep(i).is_some()).then_some(()))
        .expect("permanent slot everywhere after the switchover");

    // Taken out of the key, it goes from every member.
    ctl.run(&["edit-config", SCOPE, "--force", "-s", "slots=null"]).expect("edit-config no slots");
    wait_until(UP, "slot keep gone from every member", || (1..=3).all(|i| keep(i).is_none()).then_some(()))
        .expect("permanent slot dropped everywhere");
}

/// Member `i`'s role in its member key (`standby_leader`, `replica`, `primary`).
fn member_role(c: &Cluster, i: usize) -> String {
    c.etcd_get(&format!("members/{}", Cluster::name(i)))
        .and_then(|v| serde_json::from_str::<serde_json::Value>(&v).ok())
        .and_then(|v| v["role"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// The status code of `GET http://<member i>:8008<path>`, asked from host 1.
fn health(c: &Cluster, i: usize, path: &str) -> String {
    let url = format!("http://{}:8008{path}", c.net.host(i).ip());
    c.net
        .host(1)
        .exec(&["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5", &url])
        .unwrap_or_default()
}

/// `count(*), count(distinct id), min(id), max(id)` of table t on member `i`.
fn rows(c: &Cluster, i: usize) -> String {
    c.sql(i, "select count(*) || ' ' || count(distinct id) || ' ' || min(id) || ' ' || max(id) from t")
        .unwrap_or_default()
}

/// Waits until every member holds exactly ids 1..=n in t.
fn wait_rows(c: &Cluster, n: u32, what: &str) {
    let want = format!("{n} {n} 1 {n}");
    wait_until(UP, what, || (1..=3).all(|i| rows(c, i) == want).then_some(()))
        .unwrap_or_else(|e| panic!("{e}: rows {:?}", (1..=3).map(|i| rows(c, i)).collect::<Vec<_>>()));
}

/// The Patroni `standby_cluster` cycle of a disaster-recovery site, with ha-agent members and
/// unmodified patronictl: three members bootstrap as a standby cluster of a remote primary
/// (a plain PostgreSQL on another port, through a slot there), fail over and switch over
/// among themselves while still following it, become the primary cluster with
/// `promote-cluster` once the old primary has stopped, and follow it again with
/// `demote-cluster` after it was made their replica and promoted. Every row written on either side is on every member exactly once.
#[test]
fn a_standby_cluster_follows_its_remote_primary_fails_over_inside_and_patronictl_promotes_and_demotes_it() {
    let scripts = tempfile::tempdir().expect("tempdir");
    let cb = scripts.path().join("cb.sh");
    std::fs::write(&cb, "#!/bin/sh\necho \"$*\" >> \"$HOME/callbacks.log\"\n").expect("write cb.sh");
    std::fs::set_permissions(&cb, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    let opts = Opts {
        sync: false,
        agents: 0,
        postgresql: format!("callbacks = {{ on_role_change = \"{}\" }}\n", cb.display()),
        ..Opts::default()
    };
    let mut c = Cluster::start("standby_cluster", opts).expect("cluster");
    let callbacks = |c: &Cluster, i: usize| {
        std::fs::read_to_string(c.data_dir(i).parent().expect("host dir").join("callbacks.log")).unwrap_or_default()
    };
    for i in 1..=3 {
        let log = c.data_dir(i).parent().expect("host dir").join("callbacks.log");
        std::fs::write(&log, "").expect("create callbacks.log");
        std::fs::set_permissions(&log, std::os::unix::fs::PermissionsExt::from_mode(0o666)).expect("chmod");
    }

    // The remote primary, on host 3's address at port 5433, with a slot for the standby leader.
    // A new standby leader can use the slot only once the remote has dropped the old one's
    // connection: after wal_sender_timeout (60 s by default; 5 s here, as a failover test's).
    let settings = vec![("wal_sender_timeout".to_owned(), "5s".to_owned())];
    let mut src = Postgres::init_primary(c.net.host(3), "src", PgOptions { port: 5433, settings }).expect("source");
    src.sql(
        "create role replicator login replication; create table t(id int primary key); \
         insert into t select generate_series(1, 100); select pg_create_physical_replication_slot('dr')",
    )
    .expect("prepare the source");
    let section =
        format!("[bootstrap.dcs.standby_cluster]\nhost = \"{}\"\nport = 5433\nprimary_slot_name = \"dr\"\n", src.ip());
    for i in 1..=3 {
        c.set_member_config(i, &section).expect("member config");
    }

    // n1 bootstraps by copying the source and leads as the standby leader; n2 and n3 follow it.
    c.start_agent(1).expect("start n1");
    wait_until(UP, "n1 to lead the standby cluster", || {
        (c.leader_key().as_deref() == Some("n1") && member_role(&c, 1) == "standby_leader").then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.agent_log(1)));
    c.start_agent(2).expect("start n2");
    c.start_agent(3).expect("start n3");
    let ctl = Ctl::with(c, 1);
    let c = &ctl.c;
    wait_rows(c, 100, "the source's rows on every member");
    assert_eq!(src.sql("select active from pg_replication_slots where slot_name = 'dr'").expect("slot"), "t");
    let listed = wait_until(UP, "patronictl list: a Standby Leader and two streaming replicas", || {
        let m = ctl.list();
        let sl = m.iter().filter(|m| field(m, "Role") == "Standby Leader" && field(m, "Member") == "n1").count();
        let streaming = m.iter().filter(|m| field(m, "Role") == "Replica" && field(m, "State") == "streaming").count();
        (sl == 1 && streaming == 2).then_some(m)
    })
    .expect("patronictl list of the standby cluster");
    assert_eq!(listed.len(), 3, "{listed:?}");
    assert_eq!(health(c, 1, "/standby_leader"), "200");
    assert_eq!(health(c, 1, "/leader"), "200");
    for i in 1..=3 {
        assert_eq!(health(c, i, "/primary"), "503", "n{i} /primary in a standby cluster");
        assert!(!c.writable(i), "n{i} accepts writes in a standby cluster");
    }

    // The standby leader's host is cut off: another member leads, still following the source.
    c.net.host(1).cut_off().expect("cut n1 off");
    let l = wait_until(UP, "a new standby leader", || {
        let l = c.leader_key().filter(|l| l != "n1")?;
        let i = Cluster::index(&l);
        (member_role(c, i) == "standby_leader").then_some(i)
    })
    .expect("failover inside the standby cluster");
    let other = if l == 2 { 3 } else { 2 };
    src.sql("insert into t select generate_series(101, 200)").expect("write on the source");
    let want = "200 200 1 200";
    wait_until(UP, "rows 101-200 on the new standby leader and the other member", || {
        (rows(c, l) == want && rows(c, other) == want).then_some(())
    })
    .expect("the new standby leader follows the source");
    assert!(
        callbacks(c, l).contains(&format!("on_role_change standby_leader {SCOPE}")),
        "n{l}'s callbacks: {}",
        callbacks(c, l)
    );
    assert!(!c.writable(l), "the new standby leader accepts writes");
    c.net.host(1).heal().expect("heal n1");
    wait_until(UP, "n1 back as a replica of the new standby leader", || {
        (member_role(c, 1) == "replica" && rows(c, 1) == want).then_some(())
    })
    .expect("n1 follows the new standby leader");

    // A switchover inside the standby cluster hands the standby leader's role back to n1.
    let out = ctl
        .run(&["switchover", SCOPE, "--leader", &Cluster::name(l), "--candidate", "n1", "--force"])
        .expect("patronictl switchover in the standby cluster");
    assert!(out.contains("Successfully switched over"), "{out}");
    wait_until(UP, "n1 to lead the standby cluster again", || {
        (c.leader_key().as_deref() == Some("n1") && member_role(c, 1) == "standby_leader").then_some(())
    })
    .expect("switchover inside the standby cluster");
    let l = 1;
    src.sql("insert into t select generate_series(201, 250)").expect("write on the source");
    wait_rows(c, 250, "rows 201-250 on every member after the switchover");
    assert!(!c.writable(l), "the standby leader accepts writes after the switchover");

    // Moving the primary role to this cluster: the source stops (its shutdown checkpoint goes
    // to the standby leader first), then promote-cluster.
    src.stop().expect("stop the source");
    let out = ctl.run(&["promote-cluster", SCOPE, "--force"]).expect("patronictl promote-cluster");
    assert!(out.contains("successfully promoted"), "{out}");
    assert_eq!(c.wait_primary(UP, &[]).expect("a primary"), l, "the standby leader promotes");
    c.sql(l, "insert into t select generate_series(251, 300)").expect("write on the promoted cluster");
    wait_rows(c, 300, "rows 201-300 on every member");
    wait_until(UP, "patronictl list: Leader", || {
        ctl.list().iter().any(|m| field(m, "Role") == "Leader" && field(m, "Member") == Cluster::name(l)).then_some(())
    })
    .expect("patronictl shows the leader");

    // And back: the old primary becomes this cluster's replica, this cluster is demoted to
    // follow it, and it is promoted.
    let leader_ip = c.net.host(l).ip().to_string();
    std::fs::write(src.data().join("standby.signal"), "").expect("standby.signal");
    let mut auto =
        std::fs::OpenOptions::new().append(true).open(src.data().join("postgresql.auto.conf")).expect("auto");
    std::io::Write::write_all(
        &mut auto,
        format!("\nprimary_conninfo = 'host={leader_ip} port={PG_PORT} user=replicator application_name=src'\n")
            .as_bytes(),
    )
    .expect("primary_conninfo");
    src.start(c.net.host(3)).expect("start the source as a replica");
    wait_until(UP, "the old primary to replay the promoted cluster's rows", || {
        (src.sql("select count(*) from t").ok()? == "300").then_some(())
    })
    .expect("old primary follows");
    let out = ctl
        .run(&["demote-cluster", SCOPE, "--host", &src.ip().to_string(), "--port", "5433", "--force"])
        .expect("patronictl demote-cluster");
    assert!(out.contains("successfully demoted"), "{out}");
    assert_eq!(c.leader_key().map(|n| Cluster::index(&n)), Some(l), "the leader kept its key");
    assert_eq!(member_role(c, l), "standby_leader");
    assert_eq!(src.sql("select pg_promote()").expect("promote the old primary"), "t");
    src.sql("insert into t select generate_series(301, 400)").expect("write on the old primary again");
    wait_rows(c, 400, "rows 301-400 on every member of the standby cluster again");
    for i in 1..=3 {
        assert!(!c.writable(i), "n{i} accepts writes after demote-cluster");
        assert_eq!(health(c, i, "/primary"), "503");
    }
    assert_eq!(health(c, l, "/standby_leader"), "200");
    assert!(
        ctl.list().iter().any(|m| field(m, "Role") == "Standby Leader" && field(m, "Member") == Cluster::name(l)),
        "{:?}",
        ctl.list()
    );
    let errors = c.unexpected_errors(&[]);
    assert!(errors.is_empty(), "agents logged errors: {errors:#?}");
}
