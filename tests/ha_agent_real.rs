//! ha-agent with real etcd and PostgreSQL: 3 hosts (network namespaces), each running an etcd
//! member, ha-agent and the PostgreSQL it manages (`ha_agent_harness.rs`).
//!
//! Faults are injected as in production: SIGKILL of the postmaster, SIGSTOP of every process
//! on a host (a hung machine), a host cut off at its network interface, a host cut off from
//! etcd's client port only, SIGKILL of one etcd member, SIGSTOP of all etcd members, garbage
//! written into etcd keys. After each, the old primary must come back as a replica.
//!
//! The failover tests run with synchronous replication (`synchronous_commit = on`,
//! `synchronous_standby_names = '*'`) and a writer that records every acknowledged insert:
//! none may be missing on the primary at the end, and none may be acknowledged by the old
//! primary after the new one acknowledged its first (two primaries at once). Besides, during
//! every fault a poller on each host writes to its own PostgreSQL over the Unix socket every
//! 5 ms and records each acknowledged write with the time (`harness::Pollers`): no two
//! primary incarnations may have acknowledged writes in overlapping intervals, and the fence
//! gap (the old primary's last acknowledged write to the new one's first) is printed. Timings
//! are short (ttl 3 s, etcd election 500 ms); the time a failover took is printed, not
//! asserted (`bench/ha-agent` measures it). These are safety tests: they run without retries
//! (`.config/nextest.toml`).

#[path = "ha_agent_harness.rs"]
mod harness;

use std::time::{Duration, Instant};

use harness::{Ack, Cluster, FENCE_PROBE_TABLE, Opts, Pollers, Writer, assert_fenced, lost};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use outrigger_testkit::{hold_for, wait_until};

const UP: Duration = Duration::from_secs(90);
const FAILOVER: Duration = Duration::from_secs(30);
const REJOIN: Duration = Duration::from_secs(60);

fn others(p: usize) -> Vec<usize> {
    (1..=3).filter(|&i| i != p).collect()
}

/// A bootstrapped cluster: one primary, two streaming replicas, table `acked` created.
fn healthy(test: &str, opts: Opts) -> anyhow::Result<(Cluster, usize)> {
    let c = Cluster::start(test, opts)?;
    let p = c.wait_primary(UP, &[])?;
    c.wait_streaming(p, &others(p), UP)?;
    c.sql(p, "create table acked(id bigint primary key)")?;
    c.sql(p, FENCE_PROBE_TABLE)?;
    Ok((c, p))
}

/// Checks no acknowledged write is missing on `primary`, and that the old primary
/// acknowledged nothing after the new one's first acknowledgement.
fn check_writes(c: &Cluster, primary: usize, old: usize, acks: &[Ack]) -> anyhow::Result<()> {
    let missing = lost(c, primary, acks)?;
    anyhow::ensure!(
        missing.is_empty(),
        "{} acknowledged writes lost: {:?}",
        missing.len(),
        &missing[..missing.len().min(20)]
    );
    if let Some(first_new) = acks.iter().find(|a| a.member != old).map(|a| a.at) {
        let late: Vec<&Ack> = acks.iter().filter(|a| a.member == old && a.at > first_new).collect();
        anyhow::ensure!(late.is_empty(), "the old primary n{old} acknowledged writes after the new one: {late:?}");
    }
    println!("{} acknowledged writes, none lost", acks.len());
    Ok(())
}

fn report(what: &str, fault: Instant, first_new: Option<Instant>) {
    match first_new {
        Some(t) => {
            println!("{what}: first write on the new primary {:.2} s after the fault", (t - fault).as_secs_f64())
        }
        None => println!("{what}: no write on a new primary"),
    }
}

fn no_unexpected_errors(c: &Cluster, expected: &[&str]) -> anyhow::Result<()> {
    let e = c.unexpected_errors(expected);
    anyhow::ensure!(e.is_empty(), "agents logged errors: {e:#?}");
    Ok(())
}

#[test]
fn bootstrap_from_empty_and_a_new_member_joins_as_replica() -> anyhow::Result<()> {
    let mut c = Cluster::start("ha_bootstrap", Opts { agents: 2, ..Opts::default() })?;
    let p = c.wait_primary(UP, &[])?;
    let first_replica = if p == 1 { 2 } else { 1 };
    c.wait_streaming(p, &[first_replica], UP)?;
    // Patroni's keys, as Patroni writes them.
    let sysid = c.sql(p, "select system_identifier from pg_control_system()")?;
    anyhow::ensure!(c.etcd_get("initialize").as_deref() == Some(sysid.as_str()), "initialize holds the sysid");
    let member: serde_json::Value = serde_json::from_str(&c.etcd_get(&format!("members/n{p}")).unwrap_or_default())?;
    anyhow::ensure!(member["role"] == "primary" && member["state"] == "running", "member key: {member}");
    anyhow::ensure!(member["api_url"] == format!("http://{}:8008/patroni", c.net.host(p).ip()), "{member}");
    anyhow::ensure!(member["version"] == "4.1.4", "{member}");
    let config: serde_json::Value = serde_json::from_str(&c.etcd_get("config").unwrap_or_default())?;
    anyhow::ensure!(config["ttl"] == 3 && config["maximum_lag_on_failover"] == 16777216, "config: {config}");
    // A new member joins as a replica with its own slot on the primary.
    c.start_agent(3)?;
    c.wait_streaming(p, &[3], UP)?;
    c.sql(p, "create table t(x int); insert into t values (42)")?;
    outrigger_testkit::wait_ok(Duration::from_secs(10), "the row to reach n3", || {
        anyhow::ensure!(c.sql(3, "select x from t")? == "42");
        Ok(())
    })?;
    let slots =
        c.sql(p, "select string_agg(slot_name, ',' order by slot_name) from pg_replication_slots where active")?;
    let mut want: Vec<String> = others(p).iter().map(|i| format!("n{i}")).collect();
    want.sort();
    anyhow::ensure!(slots == want.join(","), "active slots {slots:?}");
    no_unexpected_errors(&c, &[])
}

#[test]
fn killed_primary_postgres_restarts_in_place_without_failover() -> anyhow::Result<()> {
    let (c, p) = healthy("ha_kill_pg", Opts::default())?;
    let pollers = Pollers::start(&c)?;
    let w = Writer::start(c.sockets());
    outrigger_testkit::wait_until(Duration::from_secs(10), "the first writes", || (w.acks().len() > 10).then_some(()))?;
    let pid = c.postmaster_pid(p).ok_or_else(|| anyhow::anyhow!("no postmaster on n{p}"))?;
    kill(Pid::from_raw(pid), Signal::SIGKILL)?;
    let t0 = Instant::now();
    outrigger_testkit::wait_until(FAILOVER, "the primary's PostgreSQL to be back", || {
        (c.postmaster_pid(p).is_some_and(|q| q != pid) && c.writable(p)).then_some(())
    })?;
    anyhow::ensure!(c.leader_key() == Some(format!("n{p}")), "the leader changed");
    let n = w.acks().len();
    outrigger_testkit::wait_until(Duration::from_secs(10), "writes to resume", || (w.acks().len() > n).then_some(()))?;
    let acks = w.stop();
    let resumed = acks.iter().find(|a| a.at > t0).map(|a| a.at);
    report("postgres killed, restarted in place", t0, resumed);
    anyhow::ensure!(acks.iter().all(|a| a.member == p), "writes went elsewhere");
    check_writes(&c, p, p, &acks)?;
    c.wait_streaming(p, &others(p), REJOIN)?;
    assert_fenced("postgres killed, restarted in place", pollers)?;
    no_unexpected_errors(&c, &[])
}

#[test]
fn primary_postgres_that_cannot_restart_fails_over_and_rejoins_when_repaired() -> anyhow::Result<()> {
    let (c, p) = healthy("ha_pg_broken", Opts::default())?;
    let pollers = Pollers::start(&c)?;
    let w = Writer::start(c.sockets());
    outrigger_testkit::wait_until(Duration::from_secs(10), "the first writes", || (w.acks().len() > 10).then_some(()))?;
    // A setting PostgreSQL refuses: the restart fails, the key must be released at once.
    let base = c.data_dir(p).join("postgresql.base.conf");
    let original = std::fs::read_to_string(&base)?;
    std::fs::write(&base, format!("{original}\nthis is not a setting\n"))?;
    let pid = c.postmaster_pid(p).ok_or_else(|| anyhow::anyhow!("no postmaster on n{p}"))?;
    kill(Pid::from_raw(pid), Signal::SIGKILL)?;
    let t0 = Instant::now();
    let new = c.wait_primary(FAILOVER, &[p])?;
    outrigger_testkit::wait_until(FAILOVER, "a write on the new primary", || w.first_ack_elsewhere(t0, p))?;
    report("postgres killed and unable to restart", t0, w.first_ack_elsewhere(t0, p));
    std::fs::write(&base, original)?;
    c.wait_streaming(new, &others(new), REJOIN)?;
    let acks = w.stop();
    check_writes(&c, new, p, &acks)?;
    assert_fenced("postgres killed and unable to restart", pollers)?;
    no_unexpected_errors(&c, &["PostgreSQL did not start", "action failed"])
}

/// Shared by the host-level faults: `fault` breaks the primary's host, `heal` repairs it.
fn failover_and_rejoin(
    test: &str,
    what: &str,
    fault: impl Fn(&Cluster, usize) -> anyhow::Result<()>,
    heal: impl Fn(&Cluster, usize) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let (c, p) = healthy(test, Opts::default())?;
    let pollers = Pollers::start(&c)?;
    let w = Writer::start(c.sockets());
    outrigger_testkit::wait_until(Duration::from_secs(10), "the first writes", || (w.acks().len() > 10).then_some(()))?;
    let t0 = Instant::now();
    fault(&c, p)?;
    let new = c.wait_primary(FAILOVER, &[p])?;
    outrigger_testkit::wait_until(FAILOVER, "a write on the new primary", || w.first_ack_elsewhere(t0, p))?;
    report(what, t0, w.first_ack_elsewhere(t0, p));
    heal(&c, p)?;
    // The old primary comes back as a replica. Usually of the new primary; but when the
    // healed host held etcd's raft leadership, etcd 3.4 (< 3.4.28, etcd PR #16822) revokes
    // every lease as it wakes up, the new primary's included, which fences it and elects
    // again. So: whoever leads once things settle, everyone else streams from it.
    let last = c.wait_primary(UP, &[])?;
    c.wait_streaming(last, &others(last), REJOIN)?;
    if last != new {
        println!("leader changed again after the heal (n{new} -> n{last}): etcd revoked the leases as it woke up");
    }
    let acks = w.stop();
    check_writes(&c, last, p, &acks)?;
    assert_fenced(what, pollers)?;
    no_unexpected_errors(&c, &["action failed"])
}

#[test]
fn frozen_primary_host_fails_over_and_rejoins_after_thaw() -> anyhow::Result<()> {
    failover_and_rejoin(
        "ha_freeze_host",
        "primary host frozen",
        |c, p| c.net.host(p).freeze_all(),
        |c, p| c.net.host(p).thaw_all(),
    )
}

#[test]
fn primary_host_cut_off_fails_over_and_rejoins_after_heal() -> anyhow::Result<()> {
    failover_and_rejoin(
        "ha_cut_off",
        "primary host cut off",
        |c, p| c.net.host(p).cut_off(),
        |c, p| c.net.host(p).heal(),
    )
}

#[test]
fn primary_cut_off_from_etcd_only_fails_over_and_rejoins() -> anyhow::Result<()> {
    // Only the agent's etcd traffic: its requests to any member (its own host's included) and
    // their answers. etcd's peers, PostgreSQL and the REST port still work.
    failover_and_rejoin(
        "ha_cut_etcd",
        "primary cut off from etcd",
        |c, p| c.net.host(p).block("etcd", &["tcp sport 2379"], &["tcp dport 2379"]),
        |c, p| c.net.host(p).unblock("etcd"),
    )
}

#[test]
fn losing_one_etcd_member_causes_no_failover() -> anyhow::Result<()> {
    let (mut c, p) = healthy("ha_etcd_member_lost", Opts::default())?;
    let pollers = Pollers::start(&c)?;
    let w = Writer::start(c.sockets());
    outrigger_testkit::wait_until(Duration::from_secs(10), "the first writes", || (w.acks().len() > 10).then_some(()))?;
    // The worst one to lose: the raft leader (a new election re-extends every lease).
    let leader = c.etcd.leader(&c.net, 0)?;
    c.etcd.kill(leader)?;
    let leader_name = format!("n{p}");
    hold_for(Duration::from_secs(10), "the leader stays and keeps writing", || {
        anyhow::ensure!(c.leader_key().as_deref() == Some(leader_name.as_str()), "leader is {:?}", c.leader_key());
        Ok(())
    })?;
    let acks = w.stop();
    anyhow::ensure!(acks.iter().all(|a| a.member == p), "writes went elsewhere");
    let last = acks.last().map(|a| a.at).ok_or_else(|| anyhow::anyhow!("no writes"))?;
    anyhow::ensure!(last.elapsed() < Duration::from_secs(2), "writes stopped");
    check_writes(&c, p, p, &acks)?;
    assert_fenced("one etcd member lost", pollers)?;
    no_unexpected_errors(&c, &[])
}

#[test]
fn all_etcd_members_frozen_make_the_primary_read_only() -> anyhow::Result<()> {
    let (c, p) = healthy("ha_etcd_frozen", Opts::default())?;
    let pollers = Pollers::start(&c)?;
    for m in 0..c.etcd.len() {
        c.etcd.freeze(m)?;
    }
    let t0 = Instant::now();
    outrigger_testkit::wait_until(FAILOVER, "the primary to stop accepting writes", || (!c.writable(p)).then_some(()))?;
    println!("primary stopped accepting writes {:.2} s after etcd froze", t0.elapsed().as_secs_f64());
    // It comes back read-only (Patroni's demote without failsafe), as does everyone else.
    outrigger_testkit::wait_ok(FAILOVER, "every member to run read-only", || {
        for i in 1..=3 {
            anyhow::ensure!(c.sql(i, "select pg_is_in_recovery()")? == "t", "n{i} is not read-only");
        }
        Ok(())
    })?;
    for m in 0..c.etcd.len() {
        c.etcd.thaw(m)?;
    }
    let new = c.wait_primary(UP, &[])?;
    c.wait_streaming(new, &others(new), REJOIN)?;
    assert_fenced("every etcd member frozen", pollers)?;
    no_unexpected_errors(&c, &["action failed"])
}

#[test]
fn garbage_json_in_a_member_key_and_in_config_is_logged_and_ignored() -> anyhow::Result<()> {
    let (c, p) = healthy("ha_garbage", Opts::default())?;
    let config = c.etcd_get("config").unwrap_or_default();
    c.etcd_put("members/bogus", "{not json")?;
    c.etcd_put("config", "{\"ttl\": 3, garbage")?;
    let leader_name = format!("n{p}");
    hold_for(Duration::from_secs(4), "the cluster carries on", || {
        anyhow::ensure!(c.leader_key().as_deref() == Some(leader_name.as_str()), "leader is {:?}", c.leader_key());
        Ok(())
    })?;
    c.sql(p, "insert into acked values (1)")?;
    for i in 1..=3 {
        let log = c.agent(i).map(outrigger_testkit::Proc::log_text).unwrap_or_default();
        for key in ["members/bogus", "/config"] {
            anyhow::ensure!(
                log.lines().any(|l| l.contains("ignoring a value that cannot be decoded") && l.contains(key)),
                "n{i} did not log the garbage in {key}"
            );
        }
    }
    c.etcd_put("config", &config)?;
    c.wait_streaming(p, &others(p), REJOIN)?;
    no_unexpected_errors(&c, &[])
}

#[test]
fn switchover_through_the_failover_key_moves_the_leader_without_losing_writes() -> anyhow::Result<()> {
    // Asynchronous replication: the candidate must still get every acknowledged write (it
    // promotes only once it has the old primary's shutdown checkpoint).
    let (c, p) = healthy("ha_switchover", Opts { sync: false, ..Opts::default() })?;
    let pollers = Pollers::start(&c)?;
    let w = Writer::start(c.sockets());
    outrigger_testkit::wait_until(Duration::from_secs(10), "the first writes", || (w.acks().len() > 10).then_some(()))?;
    let cand = others(p)[0];
    let t0 = Instant::now();
    c.etcd_put("failover", &format!("{{\"leader\":\"n{p}\",\"member\":\"n{cand}\"}}"))?;
    let new = c.wait_primary(FAILOVER, &[p])?;
    anyhow::ensure!(new == cand, "n{new} took over, not the candidate n{cand}");
    outrigger_testkit::wait_until(FAILOVER, "a write on the new primary", || w.first_ack_elsewhere(t0, p))?;
    report("switchover", t0, w.first_ack_elsewhere(t0, p));
    outrigger_testkit::wait_until(Duration::from_secs(10), "the failover key to be cleared", || {
        (c.etcd_get("failover").as_deref() == Some("{}")).then_some(())
    })?;
    c.wait_streaming(new, &others(new), REJOIN)?;
    let acks = w.stop();
    check_writes(&c, new, p, &acks)?;
    // A clean switchover needs no pg_rewind.
    let old_log = c.agent(p).map(outrigger_testkit::Proc::log_text).unwrap_or_default();
    anyhow::ensure!(!old_log.contains("running pg_rewind"), "the old primary was rewound after a clean switchover");
    assert_fenced("switchover", pollers)?;
    no_unexpected_errors(&c, &[])
}

#[test]
fn restarted_agent_keeps_its_running_primary_without_failover_or_restart() -> anyhow::Result<()> {
    let (mut c, p) = healthy("ha_agent_restart", Opts::default())?;
    let pollers = Pollers::start(&c)?;
    let pid = c.postmaster_pid(p).ok_or_else(|| anyhow::anyhow!("no postmaster on n{p}"))?;
    // PostgreSQL keeps running without its agent (like systemd's KillMode=process).
    c.kill_agent(p)?;
    // The new agent appends to the same log: look only at what it writes.
    let before = c.agent_log(p).len();
    c.start_agent(p)?;
    let new_log = |c: &Cluster| c.agent_log(p).get(before..).unwrap_or_default().to_owned();
    outrigger_testkit::wait_until(Duration::from_secs(10), "the agent to lead again", || {
        new_log(&c).contains("leading as primary").then_some(())
    })?;
    let leader_name = format!("n{p}");
    hold_for(Duration::from_secs(4), "the leader and its postmaster stay", || {
        anyhow::ensure!(c.leader_key().as_deref() == Some(leader_name.as_str()), "leader is {:?}", c.leader_key());
        anyhow::ensure!(c.postmaster_pid(p) == Some(pid), "the postmaster was restarted");
        Ok(())
    })?;
    c.sql(p, "insert into acked values (1)")?;
    anyhow::ensure!(!new_log(&c).contains("fencing"), "the restarted agent fenced its primary");
    assert_fenced("agent restarted under its primary", pollers)?;
    no_unexpected_errors(&c, &[])
}

/// Patches `config` in etcd (a JSON object merge of `patch`), as `patronictl edit-config` does.
fn patch_config(c: &Cluster, patch: serde_json::Value) -> anyhow::Result<()> {
    let mut config: serde_json::Value = serde_json::from_str(&c.etcd_get("config").unwrap_or_default())?;
    if let (Some(obj), Some(p)) = (config.as_object_mut(), patch.as_object()) {
        for (k, v) in p {
            if v.is_null() {
                obj.remove(k);
            } else {
                obj.insert(k.clone(), v.clone());
            }
        }
    }
    c.etcd_put("config", &config.to_string())
}

fn member_paused(c: &Cluster, i: usize) -> bool {
    serde_json::from_str::<serde_json::Value>(&c.etcd_get(&format!("members/n{i}")).unwrap_or_default())
        .is_ok_and(|m| m["pause"] == true)
}

#[test]
fn paused_cluster_neither_restarts_nor_fails_over_but_switches_over_and_resumes() -> anyhow::Result<()> {
    let (c, p) = healthy("ha_pause", Opts { sync: false, ..Opts::default() })?;
    let pollers = Pollers::start(&c)?;
    patch_config(&c, serde_json::json!({"pause": true}))?;
    outrigger_testkit::wait_until(Duration::from_secs(10), "every member to publish pause: true", || {
        (1..=3).all(|i| member_paused(&c, i)).then_some(())
    })?;
    // A switchover to a named candidate still runs, and the old primary follows the new one.
    let cand = others(p)[0];
    c.etcd_put("failover", &format!("{{\"leader\":\"n{p}\",\"member\":\"n{cand}\"}}"))?;
    let new = c.wait_primary(FAILOVER, &[p])?;
    anyhow::ensure!(new == cand, "n{new} took over, not the candidate n{cand}");
    c.wait_streaming(new, &others(new), REJOIN)?;
    // PostgreSQL killed on the leader: paused, nobody restarts it and nobody fails over.
    let pid = c.postmaster_pid(new).ok_or_else(|| anyhow::anyhow!("no postmaster on n{new}"))?;
    kill(Pid::from_raw(pid), Signal::SIGKILL)?;
    hold_for(Duration::from_secs(4), "nothing is started or promoted while paused", || {
        for i in 1..=3 {
            anyhow::ensure!(!c.writable(i), "n{i} accepts writes while paused");
        }
        Ok(())
    })?;
    anyhow::ensure!(c.leader_key().is_none(), "the leader key outlived its stopped primary while paused");
    // Resume: the cluster heals itself.
    patch_config(&c, serde_json::json!({"pause": null}))?;
    let last = c.wait_primary(FAILOVER, &[])?;
    c.wait_streaming(last, &others(last), REJOIN)?;
    // Members rewrite their keys on their next cycle, which may come after the replicas stream.
    outrigger_testkit::wait_until(Duration::from_secs(10), "every member to stop publishing pause", || {
        (!(1..=3).any(|i| member_paused(&c, i))).then_some(())
    })?;
    assert_fenced("paused cluster", pollers)?;
    no_unexpected_errors(&c, &[])
}

// ---- signals, hung SQL, watchdog, duplicate names, etcd with auth and TLS ----

#[test]
fn sighup_to_the_leaders_agent_reloads_its_config_and_it_stays_leader() -> anyhow::Result<()> {
    let (c, p) = healthy("ha_sighup", Opts::default())?;
    let pollers = Pollers::start(&c)?;
    let agent_pid = c.agent(p).and_then(outrigger_testkit::Proc::pid).ok_or_else(|| anyhow::anyhow!("no agent"))?;
    let before = c.agent_log(p).len();
    let new_log = |c: &Cluster| c.agent_log(p).get(before..).unwrap_or_default().to_owned();
    // A runtime setting (a PostgreSQL parameter) and a restart-only one (the REST port's
    // connection limit).
    c.edit_config(p, |t| {
        t.replace("fsync = \"off\"", "fsync = \"off\"\nwork_mem = \"7MB\"")
            .replace("[restapi]\n", "[restapi]\nmax_connections = 500\n")
    })?;
    kill(Pid::from_raw(agent_pid), Signal::SIGHUP)?;
    outrigger_testkit::wait_until(Duration::from_secs(10), "the reload to apply work_mem", || {
        (c.sql(p, "show work_mem").ok().as_deref() == Some("7MB")).then_some(())
    })?;
    anyhow::ensure!(new_log(&c).contains("config reloaded"), "no reload logged: {}", new_log(&c));
    anyhow::ensure!(
        new_log(&c)
            .lines()
            .any(|l| l.contains("applies only when ha-agent restarts") && l.contains("restapi connection limits")),
        "the restart-only key is not named"
    );
    // An invalid file: refused, named, and the agent keeps running with the config it had.
    c.edit_config(p, |t| t.replace("[timings]", "[timings]\nloop_wiat = \"1s\""))?;
    kill(Pid::from_raw(agent_pid), Signal::SIGHUP)?;
    outrigger_testkit::wait_until(Duration::from_secs(10), "the bad file to be refused", || {
        new_log(&c).contains("config reload refused").then_some(())
    })?;
    anyhow::ensure!(new_log(&c).contains("timings.loop_wiat"), "the problem is not named");
    let leader = format!("n{p}");
    hold_for(Duration::from_secs(4), "the agent runs on and keeps leading", || {
        anyhow::ensure!(c.leader_key().as_deref() == Some(leader.as_str()), "leader is {:?}", c.leader_key());
        anyhow::ensure!(nix::sys::signal::kill(Pid::from_raw(agent_pid), None).is_ok(), "the agent exited");
        Ok(())
    })?;
    c.sql(p, "insert into acked values (1)")?;
    assert_fenced("SIGHUP to the leader's agent", pollers)?;
    no_unexpected_errors(&c, &["config reload refused"])
}

#[test]
fn sigkill_of_the_leaders_agent_makes_the_watchdog_reset_postgres_before_a_replica_promotes() -> anyhow::Result<()> {
    let (mut c, p) = healthy("ha_watchdog", Opts { standin_watchdog: true, ..Opts::default() })?;
    let wd = &c.watchdogs[p - 1];
    outrigger_testkit::wait_until(Duration::from_secs(10), "the leader to feed its watchdog", || {
        (wd.armed() && wd.feeds() > 3).then_some(())
    })?;
    anyhow::ensure!(
        c.watchdogs.iter().enumerate().all(|(i, w)| i + 1 == p || !w.armed()),
        "a replica's watchdog is armed"
    );
    let pollers = Pollers::start(&c)?;
    outrigger_testkit::wait_until(Duration::from_secs(10), "local writes on the primary", || {
        pollers.acks().iter().any(|a| a.member == p).then_some(())
    })?;
    // SIGKILL: no clean-up, the watchdog is left armed (no magic close).
    c.kill_agent(p)?;
    let t0 = Instant::now();
    let new = c.wait_primary(FAILOVER, &[p])?;
    outrigger_testkit::wait_until(FAILOVER, "a write on the new primary", || {
        pollers.acks().iter().any(|a| a.member == new).then_some(())
    })?;
    let fired = c.watchdogs[p - 1].fired_at().ok_or_else(|| anyhow::anyhow!("the watchdog never fired"))?;
    let acks = pollers.acks();
    let first_new = acks.iter().find(|a| a.member == new).map(|a| a.at).expect("waited for it");
    println!(
        "watchdog reset PostgreSQL {:.2} s after the agent was killed; the new primary's first write {:.2} s after",
        (fired - t0).as_secs_f64(),
        (first_new - t0).as_secs_f64()
    );
    anyhow::ensure!(fired < first_new, "the new primary took writes before the watchdog reset the old one");
    anyhow::ensure!(c.postmaster_pid(p).is_none_or(|_| !c.writable(p)), "the old primary still takes writes");
    assert_fenced("leader's agent killed, watchdog", pollers)?;
    // The new leader activated its own watchdog before promoting.
    anyhow::ensure!(c.watchdogs[new - 1].armed(), "the new leader's watchdog is not armed");
    c.start_agent(p)?;
    c.wait_streaming(new, &others(new), REJOIN)?;
    anyhow::ensure!(!c.watchdogs[p - 1].armed(), "the old leader's watchdog is armed as a replica");
    no_unexpected_errors(&c, &["action failed"])
}

#[test]
fn a_primary_whose_sql_hangs_is_stopped_before_its_leader_key_is_released() -> anyhow::Result<()> {
    // primary_start_timeout 5 s: how long a leader whose PostgreSQL does not answer SQL keeps
    // its key before it gives it up (after stopping PostgreSQL).
    let (c, p) = healthy("ha_sql_hangs", Opts { dcs: "primary_start_timeout = 5", ..Opts::default() })?;
    let pollers = Pollers::start(&c)?;
    outrigger_testkit::wait_until(Duration::from_secs(10), "local writes on the primary", || {
        pollers.acks().iter().filter(|a| a.member == p).nth(20).map(drop)
    })?;
    // The agent's own session and the postmaster stop (no new session can start); existing
    // sessions, the poller's among them, keep writing.
    let agent_backend: i32 = c
        .sql(p, "select pid from pg_stat_activity where application_name = 'ha-agent'")?
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no ha-agent session on n{p}"))?;
    let postmaster = c.postmaster_pid(p).ok_or_else(|| anyhow::anyhow!("no postmaster on n{p}"))?;
    kill(Pid::from_raw(agent_backend), Signal::SIGSTOP)?;
    kill(Pid::from_raw(postmaster), Signal::SIGSTOP)?;
    let t0 = Instant::now();
    let new = c.wait_primary(Duration::from_secs(60), &[p])?;
    outrigger_testkit::wait_until(FAILOVER, "a write on the new primary", || {
        pollers.acks().iter().any(|a| a.member == new && a.at > t0).then_some(())
    })?;
    let acks = pollers.acks();
    let last_old = acks.iter().filter(|a| a.member == p).map(|a| a.at).max();
    println!(
        "hung primary: its sessions wrote until {:.2} s, the new primary from {:.2} s",
        last_old.map_or(0.0, |t| (t.saturating_duration_since(t0)).as_secs_f64()),
        acks.iter().find(|a| a.member == new && a.at > t0).map_or(0.0, |a| (a.at - t0).as_secs_f64())
    );
    assert_fenced("primary whose SQL hangs", pollers)?;
    // The stopped processes were killed, not left around.
    anyhow::ensure!(
        nix::sys::signal::kill(Pid::from_raw(postmaster), None).is_err(),
        "the hung postmaster still exists"
    );
    c.wait_streaming(new, &others(new), REJOIN)?;
    no_unexpected_errors(&c, &["action failed", "killing processes", "did not stop in time"])
}

#[test]
fn a_second_agent_with_a_running_members_name_refuses_to_start() -> anyhow::Result<()> {
    let (c, p) = healthy("ha_duplicate_name", Opts::default())?;
    let victim = others(p)[0];
    let host = others(p)[1];
    // An agent on `host` configured with `victim`'s name (its own ports and data directory).
    let dir = tempfile::Builder::new().prefix("otk-ha-dup-").tempdir_in("/tmp")?;
    let ip = c.net.host(host).ip().to_string();
    let cfg = c
        .config_text(host)
        .replace(&format!("name = \"n{host}\""), &format!("name = \"n{victim}\""))
        .replace(&format!("listen = \"{ip}:8008\""), &format!("listen = \"{ip}:8009\""))
        .replace(&format!("listen = \"{ip}:5432\""), &format!("listen = \"{ip}:5433\""))
        .replace(&c.data_dir(host).display().to_string(), &dir.path().join("data").display().to_string());
    let path = dir.path().join("dup.toml");
    std::fs::write(&path, cfg)?;
    let mut cmd = std::process::Command::new(harness::agent_bin());
    cmd.arg("--config").arg(&path);
    let mut dup = c.net.host(host).spawn("ha-duplicate", cmd)?;
    let status =
        outrigger_testkit::wait_until(Duration::from_secs(20), "the duplicate agent to exit", || dup.try_status())?;
    anyhow::ensure!(status.code() == Some(1), "exit status {status}");
    let log = dup.log_text();
    anyhow::ensure!(
        log.lines().any(|l| l.contains("another member named")
            && l.contains(&format!("n{victim}"))
            && l.contains("refusing to start")),
        "the refusal does not say why: {log}"
    );
    // The real member is untouched.
    c.wait_streaming(p, &others(p), REJOIN)?;
    no_unexpected_errors(&c, &[])
}

#[test]
fn agents_start_and_fail_over_with_etcd_auth_and_tls_while_one_etcd_member_is_down() -> anyhow::Result<()> {
    let mut c = Cluster::start("ha_etcd_secure", Opts { etcd_secure: true, agents: 0, ..Opts::default() })?;
    // One member down before any agent starts: every agent has it in its endpoint list.
    c.etcd.kill(2)?;
    for i in 1..=3 {
        c.start_agent(i)?;
    }
    let p = c.wait_primary(UP, &[])?;
    c.wait_streaming(p, &others(p), UP)?;
    c.sql(p, FENCE_PROBE_TABLE)?;
    let pollers = Pollers::start(&c)?;
    // The primary loses etcd (its client traffic only: the two etcd members still up keep
    // their quorum, wherever they run).
    c.net.host(p).block("etcd", &["tcp sport 2379"], &["tcp dport 2379"])?;
    let new = c.wait_primary(FAILOVER, &[p])?;
    println!("failover with etcd auth + TLS and one member down: n{p} -> n{new}");
    c.net.host(p).unblock("etcd")?;
    let last = c.wait_primary(UP, &[])?;
    c.wait_streaming(last, &others(last), REJOIN)?;
    assert_fenced("etcd with auth and TLS, one member down", pollers)?;
    no_unexpected_errors(&c, &["action failed"])
}

/// `GET <path>` on member `to`'s REST API, from host `from`: the body.
fn rest_get(c: &Cluster, from: usize, to: usize, path: &str) -> anyhow::Result<String> {
    let url = format!("http://{}:8008{path}", c.net.host(to).ip());
    c.net.host(from).exec(&["curl", "-s", "-m", "2", &url])
}

/// failsafe_mode (Patroni 3+): with every etcd member frozen for longer than the ttl, a
/// primary that every member confirms (`POST /failsafe`) stays writable; once it cannot reach
/// one of them it stops taking writes before that member may take over (the pollers see no
/// two writable servers at any moment), and the cluster fails over to it when etcd is back.
#[test]
fn failsafe_mode_keeps_the_primary_through_an_etcd_outage_and_demotes_it_when_a_member_is_out_of_reach()
-> anyhow::Result<()> {
    let (c, p) = healthy("ha_failsafe", Opts { dcs: "failsafe_mode = true", ..Opts::default() })?;
    let names: Vec<String> = (1..=3).map(Cluster::name).collect();
    outrigger_testkit::wait_ok(UP, "the leader to list every member in /failsafe", || {
        let v: serde_json::Value = serde_json::from_str(&c.etcd_get("failsafe").unwrap_or_default())?;
        anyhow::ensure!(names.iter().all(|n| v.get(n).is_some_and(|u| u.is_string())), "failsafe is {v}");
        Ok(())
    })?;
    let r = others(p)[0];
    // GET /failsafe answers with the key, as Patroni's does.
    let v: serde_json::Value = serde_json::from_str(&rest_get(&c, r, p, "/failsafe")?)?;
    anyhow::ensure!(names.iter().all(|n| v.get(n).is_some()), "GET /failsafe answered {v}");
    let pollers = Pollers::start(&c)?;
    for m in 0..c.etcd.len() {
        c.etcd.freeze(m)?;
    }
    let frozen = Instant::now();
    // Three ttls (3 s each) without etcd.
    hold_for(Duration::from_secs(9), "the primary stays writable while every member confirms it", || {
        anyhow::ensure!(c.writable(p), "n{p} stopped taking writes");
        Ok(())
    })?;
    let status = rest_get(&c, r, p, "/patroni")?;
    anyhow::ensure!(status.contains("\"failsafe_mode_is_active\":true"), "GET /patroni on n{p}: {status}");
    c.sql(p, "insert into acked values (1)")?;
    // Now the primary loses one member (and etcd, which comes back for the others).
    let rip = c.net.host(r).ip().to_string();
    c.net.host(p).block(
        "failsafe",
        &[&format!("ip saddr {rip}"), "tcp sport 2379"],
        &[&format!("ip daddr {rip}"), "tcp dport 2379"],
    )?;
    let cut = Instant::now();
    for m in 0..c.etcd.len() {
        c.etcd.thaw(m)?;
    }
    outrigger_testkit::wait_until(FAILOVER, "the primary to stop taking writes", || (!c.writable(p)).then_some(()))?;
    println!(
        "primary kept {:.1} s without etcd; stopped taking writes {:.2} s after losing a member",
        cut.duration_since(frozen).as_secs_f64(),
        cut.elapsed().as_secs_f64()
    );
    let q = c.wait_primary(FAILOVER, &[p])?;
    println!("n{q} took over {:.1} s after the primary lost a member", cut.elapsed().as_secs_f64());
    c.net.host(p).unblock("failsafe")?;
    c.wait_streaming(q, &others(q), REJOIN)?;
    anyhow::ensure!(c.sql(q, "select count(*) from acked where id = 1")? == "1", "the write made in failsafe is lost");
    assert_fenced("failsafe_mode", pollers)?;
    no_unexpected_errors(&c, &["action failed"])
}

/// failsafe_mode across implementations (Patroni's protocol on both ends): a Patroni 4.x
/// primary whose replicas are ha-agents stays primary through an etcd outage longer than the
/// ttl because they accept its `POST /failsafe`; after a switchover to an ha-agent, a Patroni
/// replica accepts the ha-agent primary's POSTs the same way. Patroni's shortest ttl is 20 s,
/// so every member runs with ttl 20 s here.
#[test]
fn failsafe_mode_works_between_patroni_and_ha_agent_in_both_directions() -> anyhow::Result<()> {
    let opts = Opts { sync: false, agents: 0, ttl: "20s", loop_wait: "1s", retry_timeout: "5s", ..Opts::default() };
    let mut c = Cluster::start("ha_failsafe_patroni", opts)?;
    c.start_patroni(1, "    failsafe_mode: true\n")?;
    let p = c.wait_primary(UP, &[])?;
    anyhow::ensure!(p == 1, "Patroni on n1 should have bootstrapped the cluster, n{p} leads");
    c.sql(1, "create table acked(id bigint primary key)")?;
    c.sql(1, FENCE_PROBE_TABLE)?;
    c.start_agent(2)?;
    c.start_agent(3)?;
    c.wait_streaming(1, &[2, 3], UP)?;
    let names: Vec<String> = (1..=3).map(Cluster::name).collect();
    outrigger_testkit::wait_ok(UP, "Patroni to list every member in /failsafe", || {
        let v: serde_json::Value = serde_json::from_str(&c.etcd_get("failsafe").unwrap_or_default())?;
        anyhow::ensure!(names.iter().all(|n| v.get(n).is_some()), "failsafe is {v}");
        Ok(())
    })?;
    let outage = |c: &Cluster, primary: usize, what: &str| -> anyhow::Result<()> {
        for m in 0..c.etcd.len() {
            c.etcd.freeze(m)?;
        }
        // Longer than the ttl (20 s) and than Patroni's retry_timeout on top.
        let r = hold_for(Duration::from_secs(28), what, || {
            anyhow::ensure!(c.writable(primary), "n{primary} stopped taking writes");
            Ok(())
        });
        for m in 0..c.etcd.len() {
            c.etcd.thaw(m)?;
        }
        r?;
        let p = c.wait_primary(FAILOVER, &[])?;
        anyhow::ensure!(p == primary, "n{p} leads after the outage, not n{primary}");
        Ok(())
    };
    let pollers = Pollers::start(&c)?;
    outage(&c, 1, "the Patroni primary stays writable: both ha-agent replicas confirm it")?;
    c.sql(1, "insert into acked values (1)")?;
    // The outage outlived every member key: Patroni picks switchover candidates among them.
    outrigger_testkit::wait_ok(UP, "every member key back", || {
        for n in &names {
            anyhow::ensure!(!c.etcd_get(&format!("members/{n}")).unwrap_or_default().is_empty(), "{n} has no key");
        }
        Ok(())
    })?;
    // Switchover to the ha-agent on n2; Patroni on n1 follows it.
    c.etcd_put("failover", "{\"leader\":\"n1\",\"member\":\"n2\"}")?;
    let p = c.wait_primary(FAILOVER, &[1])?;
    anyhow::ensure!(p == 2, "the switchover went to n{p}, not n2");
    c.wait_streaming(2, &[1, 3], REJOIN)?;
    outrigger_testkit::wait_ok(UP, "the ha-agent leader to keep every member in /failsafe", || {
        let v: serde_json::Value = serde_json::from_str(&c.etcd_get("failsafe").unwrap_or_default())?;
        anyhow::ensure!(names.iter().all(|n| v.get(n).is_some()), "failsafe is {v}");
        Ok(())
    })?;
    outage(&c, 2, "the ha-agent primary stays writable: the Patroni and ha-agent replicas confirm it")?;
    anyhow::ensure!(c.sql(2, "select count(*) from acked where id = 1")? == "1", "the write made in failsafe is lost");
    assert_fenced("failsafe_mode between Patroni and ha-agent", pollers)?;
    no_unexpected_errors(&c, &["action failed"])
}

/// Cascading replication (tag `replicatefrom`) and archive-only replicas (tag `nostream`), as
/// in Patroni: n3 streams from the replica n2 names, and only n2 keeps n3's slot; with n2
/// down it streams from the leader (which then keeps the slot), and goes back once n2
/// serves again. Restarted with `nostream`, n3 streams from nobody, no member keeps a slot
/// for it, and it still replays the leader's commits from the WAL archive.
#[test]
fn a_replicatefrom_member_cascades_from_the_named_replica_falls_back_to_the_leader_and_nostream_restores_from_the_archive()
-> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let archive = tempfile::Builder::new().prefix("otk-ha-archive-").tempdir_in("/tmp")?;
    std::fs::set_permissions(archive.path(), std::fs::Permissions::from_mode(0o777))?;
    let a = archive.path().display().to_string();
    let mut c = Cluster::start(
        "ha_cascade",
        Opts {
            sync: false,
            agents: 1,
            extra: format!("archive_mode = \"on\"\narchive_command = \"cp %p {a}/%f\"\narchive_timeout = \"1s\"\n"),
            member: vec![(3, "[tags]\nreplicatefrom = \"n2\"\n".into())],
            ..Opts::default()
        },
    )?;
    anyhow::ensure!(c.wait_primary(UP, &[])? == 1, "n1 bootstrapped");
    c.start_agent(2)?;
    c.wait_streaming(1, &[2], UP)?;
    c.start_agent(3)?;
    c.wait_streaming(2, &[3], UP)?;
    // n3's slot: on whom it streams from, active; not on the leader.
    // Whether n3's slot on member i is active ("t"/"f"), or "" without one.
    fn slot(c: &Cluster, i: usize) -> String {
        c.sql(i, "select active from pg_replication_slots where slot_name = 'n3'").unwrap_or_default()
    }
    fn has(c: &Cluster, i: usize, x: i32) -> bool {
        c.sql(i, &format!("select count(*) from t where x = {x}")).is_ok_and(|s| s == "1")
    }
    wait_until(UP, "n3's slot active on n2", || (slot(&c, 2) == "t").then_some(()))?;
    anyhow::ensure!(slot(&c, 1).is_empty(), "the leader keeps a slot for n3, which streams from n2: {:?}", slot(&c, 1));
    c.sql(1, "create table t(x int); insert into t values (1)")?;
    wait_until(UP, "n3 replays n1's commit through n2", || has(&c, 3, 1).then_some(()))?;
    let key = c.etcd_get("members/n3").unwrap_or_default();
    anyhow::ensure!(key.contains(r#""replicatefrom":"n2""#), "n3's member key publishes its tag: {key}");

    // n2 down: n3 streams from the leader, which now keeps its slot.
    c.stop_agent(2)?;
    c.wait_streaming(1, &[3], FAILOVER)?;
    wait_until(FAILOVER, "n3's slot active on n1", || (slot(&c, 1) == "t").then_some(()))?;
    c.sql(1, "insert into t values (2)")?;
    wait_until(UP, "n3 replays from the leader", || has(&c, 3, 2).then_some(()))?;
    // n2 back: n3 cascades again, and the leader drops the slot it no longer needs.
    c.start_agent(2)?;
    c.wait_streaming(1, &[2], UP)?;
    c.wait_streaming(2, &[3], UP)?;
    wait_until(UP, "n3's slot gone from n1", || slot(&c, 1).is_empty().then_some(()))?;

    // nostream: no walreceiver, no slot anywhere, and the leader's commits arrive from the archive.
    c.stop_agent(3)?;
    c.set_member_config(
        3,
        &format!("[tags]\nnostream = true\n[postgresql.recovery_conf]\nrestore_command = \"cp {a}/%f %p\"\n"),
    )?;
    c.start_agent(3)?;
    c.sql(1, "insert into t values (3); select pg_switch_wal()")?;
    wait_until(UP, "n3 replays from the archive", || has(&c, 3, 3).then_some(()))?;
    anyhow::ensure!(c.sql(3, "select pg_is_in_recovery()")? == "t", "n3 stays a replica");
    anyhow::ensure!(
        c.sql(3, "select count(*) from pg_stat_wal_receiver")? == "0",
        "a nostream member streams from nobody"
    );
    wait_until(UP, "n3's slot gone from n2", || slot(&c, 2).is_empty().then_some(()))?;
    anyhow::ensure!(slot(&c, 1).is_empty(), "the leader keeps a slot for a nostream member: {:?}", slot(&c, 1));
    let key = c.etcd_get("members/n3").unwrap_or_default();
    anyhow::ensure!(key.contains(r#""nostream":true"#), "n3's member key publishes nostream: {key}");
    no_unexpected_errors(&c, &[])
}

/// The ids a `pg_recvlogical` (test_decoding) output file holds for inserts into `cdc`, in
/// the order received.
fn decoded_ids(path: &std::path::Path) -> Vec<i64> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("table public.cdc: INSERT: id[bigint]:"))
        .filter_map(|v| v.trim().parse().ok())
        .collect()
}

/// Inserts `ids` on member `i`, each in its own (synchronous) transaction.
fn insert_each(c: &Cluster, i: usize, ids: std::ops::RangeInclusive<i64>) -> anyhow::Result<()> {
    c.sql(
        i,
        &format!(
            "do $$ begin for i in {}..{} loop insert into cdc values (i); commit; end loop; end $$",
            ids.start(),
            ids.end()
        ),
    )
    .map(drop)
}

#[test]
fn a_logical_consumer_carries_on_from_the_new_leader_after_a_failover_without_missing_or_repeating_a_transaction()
-> anyhow::Result<()> {
    // A permanent logical slot (Patroni's `slots` key) is created on the leader and copied into
    // each replica, which keeps its copy advanced to the leader's published position. The
    // consumer, pg_recvlogical, follows whichever member is writable and resumes from its own
    // position; after the leader's host is cut off it must receive every transaction once.
    let opts = Opts { extra: "wal_level = \"logical\"\n".into(), ..Opts::default() };
    let (c, p) = healthy("ha_logical_slot", opts)?;
    c.sql(p, "create table cdc(id bigint primary key)")?;
    patch_config(
        &c,
        serde_json::json!({"slots": {"cdc": {"type": "logical", "database": "postgres", "plugin": "test_decoding"}}}),
    )?;
    let has_cdc = |i: usize| {
        c.sql(i, "select count(*) from pg_replication_slots where slot_name = 'cdc' and slot_type = 'logical'")
            .is_ok_and(|n| n == "1")
    };
    wait_until(UP, "slot cdc on the leader", || has_cdc(p).then_some(()))?;

    let hosts: Vec<String> = (1..=3).map(|i| c.net.host(i).ip().to_string()).collect();
    let conninfo = format!(
        "host={} port={} user=postgres dbname=postgres target_session_attrs=read-write connect_timeout=2 \
         tcp_user_timeout=3000 keepalives_idle=1 keepalives_interval=1 keepalives_count=2",
        hosts.join(","),
        harness::PG_PORT
    );
    let out = c.net.dir().log("cdc-decoded");
    let consumer_host = others(p)[0];
    let mut cmd = std::process::Command::new(harness::pg_bin().join("pg_recvlogical"));
    cmd.args(["-d", &conninfo, "-S", "cdc", "--start", "-s", "1", "-F", "1", "-f"]).arg(&out).args([
        "-o",
        "skip-empty-xacts=1",
        "-v",
    ]);
    let consumer = c.net.host(consumer_host).spawn("pg_recvlogical", cmd)?;

    // Before the fault: 100 transactions, all received and confirmed to the leader (so the
    // consumer's resume position is past them), and a copy of the slot on both replicas.
    insert_each(&c, p, 1..=100)?;
    let end = c.sql(p, "select pg_current_wal_lsn()")?;
    wait_until(UP, "the consumer received and confirmed 1..100", || {
        let confirmed = c
            .sql(p, &format!("select confirmed_flush_lsn >= '{end}' from pg_replication_slots where slot_name = 'cdc'"))
            .is_ok_and(|v| v == "t");
        (confirmed && decoded_ids(&out).len() >= 100).then_some(())
    })?;
    let replicas = others(p);
    // Each copy is advanced to the leader's published position, here past the 100 inserts.
    let copy_at_end = |i: usize| {
        c.sql(i, &format!("select confirmed_flush_lsn >= '{end}' from pg_replication_slots where slot_name = 'cdc'"))
            .is_ok_and(|v| v == "t")
    };
    wait_until(UP, "a copy of cdc on both replicas, advanced and safe to use after a failover", || {
        replicas
            .iter()
            .all(|&i| copy_at_end(i) && c.agent_log(i).contains("logical slot is safe to use after a failover"))
            .then_some(())
    })?;
    for &i in &replicas {
        let hsf = c.sql(i, "show hot_standby_feedback")?;
        anyhow::ensure!(hsf == "on", "n{i} runs with hot_standby_feedback {hsf}: the copies need it");
    }

    c.net.host(p).cut_off()?;
    let new = c.wait_primary(FAILOVER, &[p])?;
    insert_each(&c, new, 101..=200)?;
    let all = wait_until(Duration::from_secs(60), "the consumer received 101..200 from the new leader", || {
        let ids = decoded_ids(&out);
        ids.contains(&200).then_some(ids)
    });
    drop(consumer);
    let ids = all?;
    let mut seen = std::collections::BTreeMap::<i64, usize>::new();
    for id in &ids {
        *seen.entry(*id).or_default() += 1;
    }
    let missing: Vec<i64> = (1..=200).filter(|i| !seen.contains_key(i)).collect();
    let repeated: Vec<(i64, usize)> = seen.iter().filter(|(_, n)| **n > 1).map(|(i, n)| (*i, *n)).collect();
    anyhow::ensure!(missing.is_empty(), "transactions the consumer never received: {missing:?}");
    anyhow::ensure!(repeated.is_empty(), "transactions the consumer received more than once: {repeated:?}");
    println!("pg_recvlogical received 200 transactions once each, across the failover n{p} -> n{new}");
    c.net.host(p).heal()?;
    let last = c.wait_primary(UP, &[])?;
    c.wait_streaming(last, &others(last), REJOIN)?;
    wait_until(UP, "cdc on every member again", || (1..=3).all(has_cdc).then_some(()))?;
    no_unexpected_errors(&c, &["action failed"])
}
