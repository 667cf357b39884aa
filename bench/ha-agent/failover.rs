//! ha-agent benchmark: failover time, and the agent's footprint when idle.
//!
//! Run it with `sudo bench/ha-agent/run.sh [RUNS]` (release build; needs root, etcd and
//! PostgreSQL, like the real tests). Each figure comes from a 3-host cluster of
//! `tests/ha_agent_harness.rs` (etcd member + ha-agent + PostgreSQL per host, in network
//! namespaces), with asynchronous replication and a writer inserting into whichever member is
//! primary, over Unix sockets, every ~10 ms.
//!
//! Failover time = from the fault to the first insert committed on another member. Faults, each
//! repeated RUNS times on the current primary (the old one rejoins before the next run):
//! - `freeze`: SIGSTOP of every process on the primary's host (PostgreSQL, agent, etcd member);
//! - `cut-off`: the primary's host cut off at its network interface;
//! - `pg-broken`: the primary's PostgreSQL killed (SIGKILL) with a setting it refuses, so that
//!   it cannot restart.
//!
//! Two timing profiles: `lab` (the lab's, `deploy/lab/lab`: ttl 2 s, loop_wait 500 ms,
//! retry_timeout 500 ms, etcd election 500 ms) and `ttl4` (ttl 4 s, loop_wait 1 s,
//! retry_timeout 1 s, etcd election 1 s: more headroom for slow disks and networks). Choose
//! with `HA_BENCH_PROFILES=lab,ttl4` (default: both).
//!
//! The etcd raft leader is placed before every run (`etcdctl move-leader`): on the primary's
//! host in odd runs, elsewhere in even runs, so that both cases get half the runs (a failed
//! raft leader means an election first, and the new raft leader restarts every lease's TTL).
//! The figures are printed for all runs and for each case.
//!
//! The fence gap, in every failover and switchover run: a poller on each host writes to its
//! own PostgreSQL over the Unix socket every 5 ms (`harness::Pollers`); the gap runs from the
//! old primary's last acknowledged local write to the new primary's first. It must be
//! positive in every run (no two primaries taking writes at once); min and median are
//! printed. `HA_BENCH_ETCD_CHECKPOINT=1` runs etcd with lease checkpointing (see
//! ARCHITECTURE.md: it does not apply to leases this short); `HA_BENCH_FAULTS=freeze,cut-off`
//! picks the faults (default: all three); `HA_BENCH_AFFINITY=0` turns off ha-agent's
//! `etcd_leader.keep_off_primary` (then the raft leader placed on the primary's host stays).
//!
//! Then the footprint: resident memory and CPU of each agent over 30 s of an idle cluster.
//!
//! Then switchovers through the `failover` key (as `POST /switchover` and patronictl write it),
//! RUNS per profile, with the same writer: write-unavailability from the last write the old
//! primary acknowledged to the first committed on the new one, and acknowledged writes lost
//! (none allowed). `HA_BENCH_ONLY=switchover` runs only those.
//!
//! With `HA_BENCH_STABILITY_MIN=10` it also runs the "no false failover" check: for that many
//! minutes, one etcd member is frozen for 1 s every 30 s and the etcd leader is moved twice;
//! it reports leader changes and fences (there should be none).

#[path = "../../tests/ha_agent_harness.rs"]
mod harness;

use std::time::{Duration, Instant};

use harness::{Cluster, FENCE_PROBE_TABLE, Opts, Pollers, Writer};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use outrigger_testkit::wait_until;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Freeze,
    CutOff,
    PgBroken,
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::Freeze => "freeze",
            Fault::CutOff => "cut-off",
            Fault::PgBroken => "pg-broken",
        }
    }
}

fn profile(name: &str) -> Opts {
    let checkpoint = std::env::var("HA_BENCH_ETCD_CHECKPOINT").is_ok_and(|v| v == "1");
    let extra = if std::env::var("HA_BENCH_AFFINITY").is_ok_and(|v| v == "0") {
        "[etcd_leader]\nkeep_off_primary = false\n".to_owned()
    } else {
        String::new()
    };
    // Synchronous mode: only the listed standby may take over (runs wait for one, below).
    let dcs = if sync_mode() { "synchronous_mode = true" } else { "" };
    Opts { etcd_lease_checkpoint: checkpoint, extra, dcs, ..base_profile(name) }
}

/// `HA_BENCH_SYNC=1`: the cluster runs in synchronous mode.
fn sync_mode() -> bool {
    std::env::var("HA_BENCH_SYNC").is_ok_and(|v| v == "1")
}

/// In synchronous mode, a fault is injected only once the leader `p` lists a standby in the
/// `sync` key (right after a failover nobody is listed, and only the old leader may lead).
fn wait_sync_listed(c: &Cluster, p: usize) -> anyhow::Result<()> {
    if !sync_mode() {
        return Ok(());
    }
    wait_until(Duration::from_secs(60), "a synchronous standby listed", || {
        let v: serde_json::Value = serde_json::from_str(&c.etcd_get("sync")?).ok()?;
        (v["leader"] == format!("n{p}") && v["sync_standby"].is_string()).then_some(())
    })?;
    Ok(())
}

/// The first standby the `sync` key lists, if any.
fn sync_listed(c: &Cluster) -> Option<usize> {
    let v: serde_json::Value = serde_json::from_str(&c.etcd_get("sync")?).ok()?;
    let first = v["sync_standby"].as_str()?.split(',').next()?.trim().to_owned();
    first.strip_prefix('n')?.parse().ok()
}

fn base_profile(name: &str) -> Opts {
    match name {
        "ttl4" => Opts {
            sync: false,
            ttl: "4s",
            loop_wait: "1s",
            retry_timeout: "1s",
            etcd_election_ms: 1000,
            reinit_on_rewind_failure: true,
            ..Opts::default()
        },
        _ => Opts::lab(),
    }
}

fn others(p: usize) -> Vec<usize> {
    (1..=3).filter(|&i| i != p).collect()
}

const BROKEN: &str = "\nthis is not a setting\n";

fn inject(c: &Cluster, f: Fault, p: usize) -> anyhow::Result<()> {
    match f {
        Fault::Freeze => c.net.host(p).freeze_all(),
        Fault::CutOff => c.net.host(p).cut_off(),
        Fault::PgBroken => {
            let base = c.data_dir(p).join("postgresql.base.conf");
            let text = std::fs::read_to_string(&base)?;
            std::fs::write(&base, format!("{text}{BROKEN}"))?;
            let pid = c.postmaster_pid(p).ok_or_else(|| anyhow::anyhow!("no postmaster on n{p}"))?;
            kill(Pid::from_raw(pid), Signal::SIGKILL)?;
            Ok(())
        }
    }
}

fn repair(c: &Cluster, f: Fault, p: usize) -> anyhow::Result<()> {
    match f {
        Fault::Freeze => c.net.host(p).thaw_all(),
        Fault::CutOff => c.net.host(p).heal(),
        Fault::PgBroken => {
            let base = c.data_dir(p).join("postgresql.base.conf");
            let text = std::fs::read_to_string(&base)?;
            std::fs::write(&base, text.replace(BROKEN, "\n"))?;
            Ok(())
        }
    }
}

/// One failover: seconds, and whether etcd's raft leader was on the failed host (then etcd
/// elects a new leader first and re-extends every lease to its full TTL); and the fence gaps.
struct Stats {
    values: Vec<(f64, bool)>,
    gaps: Vec<f64>,
}

/// Moves etcd's raft leadership to the member on host `on`, or away from host `away_from`.
fn place_raft_leader(c: &Cluster, on: Option<usize>, away_from: usize) -> anyhow::Result<()> {
    match on {
        Some(h) => c.etcd.move_leader_to_host(&c.net, h),
        None => c.etcd.move_leader_off_host(&c.net, away_from),
    }
}

/// The fence gap of the switch from `old` to `new` after `t0`: from `old`'s last acknowledged
/// local write to `new`'s first (negative: both took writes at once).
fn fence_gap(p: &Pollers, old: usize, new: usize, t0: Instant) -> Option<f64> {
    let acks = p.acks();
    let first_new = acks.iter().find(|a| a.member == new && a.at > t0)?.at;
    let last_old = acks.iter().filter(|a| a.member == old).map(|a| a.at).max()?;
    Some(if first_new > last_old {
        (first_new - last_old).as_secs_f64()
    } else {
        -(last_old - first_new).as_secs_f64()
    })
}

fn gap_summary(mut v: Vec<f64>) -> String {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return "no runs".into();
    }
    let median = if v.len() % 2 == 1 { v[v.len() / 2] } else { (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0 };
    let negative = v.iter().filter(|g| **g <= 0.0).count();
    format!("fence gap min {:.3} s, median {median:.3} s ({negative} runs not positive)", v[0])
}

fn summary(mut v: Vec<f64>) -> String {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return "no runs".into();
    }
    let median = if v.len() % 2 == 1 { v[v.len() / 2] } else { (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0 };
    format!("median {median:.2} s, best {:.2} s, worst {:.2} s ({} runs)", v[0], v[v.len() - 1], v.len())
}

impl Stats {
    fn line(&self) -> String {
        let all = summary(self.values.iter().map(|v| v.0).collect());
        let apart = summary(self.values.iter().filter(|v| !v.1).map(|v| v.0).collect());
        let with = summary(self.values.iter().filter(|v| v.1).map(|v| v.0).collect());
        format!(
            "all: {all}\n      etcd leader elsewhere: {apart}\n      etcd leader on the failed host: {with}\n      {}",
            gap_summary(self.gaps.clone())
        )
    }
}

/// RUNS failovers of one kind on one cluster; returns the times in seconds.
fn failovers(prof: &str, f: Fault, runs: usize) -> anyhow::Result<Stats> {
    let c = Cluster::start(&format!("ha_bench_{prof}_{}", f.name()), profile(prof))?;
    let mut p = c.wait_primary(Duration::from_secs(90), &[])?;
    c.wait_streaming(p, &others(p), Duration::from_secs(90))?;
    c.sql(p, "create table acked(id bigint primary key)")?;
    c.sql(p, FENCE_PROBE_TABLE)?;
    let w = Writer::start(c.sockets());
    let pollers = Pollers::start(&c)?;
    let (mut values, mut gaps) = (Vec::new(), Vec::new());
    for run in 1..=runs {
        // etcd first: a member that was cut off or frozen in the previous run must have caught
        // up, or the next fault leaves a pair that cannot elect a leader.
        for m in 0..c.etcd.len() {
            c.etcd.wait_healthy(&c.net, m, Duration::from_secs(60))?;
        }
        // Half the runs with the raft leader on the primary's host.
        if let Err(e) = place_raft_leader(&c, (run % 2 == 1).then_some(p), p) {
            println!("    (could not place the raft leader: {e:#})");
        }
        wait_sync_listed(&c, p)?;
        let settled = Instant::now();
        wait_until(Duration::from_secs(30), "writes on the primary", || {
            w.acks().iter().any(|a| a.at > settled && a.member == p).then_some(())
        })?;
        // A random phase against the agents' renewal schedule: injected right after the
        // cluster settles, faults would otherwise hit at nearly the same point of it each run.
        std::thread::sleep(Duration::from_millis(jitter_ms(1000)));
        let etcd_leader_here = c.etcd.leader(&c.net, others(p)[0] - 1).map(|m| c.etcd.host_of(m) == p).unwrap_or(false);
        let t0 = Instant::now();
        inject(&c, f, p)?;
        let first = wait_until(Duration::from_secs(60), "a write on a new primary", || w.first_ack_elsewhere(t0, p))?;
        let secs = (first - t0).as_secs_f64();
        let new = w.acks().iter().find(|a| a.at == first).map(|a| a.member).unwrap_or(0);
        let gap =
            wait_until(Duration::from_secs(10), "the new primary's local writes", || fence_gap(&pollers, p, new, t0))?;
        println!(
            "  {prof:<4} {:<9} run {run:>2}: {secs:.2} s (n{p} -> n{new}{}), fence gap {gap:.3} s",
            f.name(),
            if etcd_leader_here { ", etcd leader was on the failed host" } else { "" }
        );
        values.push((secs, etcd_leader_here));
        gaps.push(gap);
        repair(&c, f, p)?;
        // Usually `new` keeps leading; when the repaired host held etcd's raft leadership,
        // etcd 3.4 revokes every lease as it wakes (fixed in 3.4.28/3.5.11), and the cluster
        // elects again. Carry on with whoever leads.
        let last = c.wait_primary(Duration::from_secs(90), &[])?;
        c.wait_streaming(last, &others(last), Duration::from_secs(120))?;
        if last != new {
            println!("    (re-election after the repair: n{new} -> n{last}; etcd revoked the leases as it woke)");
        }
        p = last;
    }
    drop(w);
    let acks = pollers.stop();
    if let Err(e) = harness::check_fencing(&acks) {
        println!("    TWO PRIMARIES: {e:#}");
    }
    Ok(Stats { values, gaps })
}

/// RUNS switchovers through the `failover` key (what `POST /switchover` and patronictl write),
/// to each other member in turn. Write-unavailability = from the last write the old primary
/// acknowledged (it refuses writes from then on) to the first committed on the new primary.
/// Also counts acknowledged writes missing on the new primary (there must be none).
fn switchovers(prof: &str, runs: usize) -> anyhow::Result<(Vec<f64>, usize, Vec<f64>)> {
    let c = Cluster::start(&format!("ha_bench_{prof}_switchover"), profile(prof))?;
    let mut p = c.wait_primary(Duration::from_secs(90), &[])?;
    c.wait_streaming(p, &others(p), Duration::from_secs(90))?;
    c.sql(p, "create table acked(id bigint primary key)")?;
    c.sql(p, FENCE_PROBE_TABLE)?;
    let w = Writer::start(c.sockets());
    let pollers = Pollers::start(&c)?;
    let mut values = Vec::new();
    let mut gaps = Vec::new();
    let mut lost_total = 0;
    for run in 1..=runs {
        let settled = Instant::now();
        wait_until(Duration::from_secs(30), "writes on the primary", || {
            w.acks().iter().any(|a| a.at > settled && a.member == p).then_some(())
        })?;
        std::thread::sleep(Duration::from_millis(200 + jitter_ms(500)));
        // In synchronous mode only a listed standby may take a switchover (as with Patroni).
        wait_sync_listed(&c, p)?;
        let cand = if sync_mode() { sync_listed(&c).unwrap_or(others(p)[run % 2]) } else { others(p)[run % 2] };
        let t0 = Instant::now();
        c.etcd_put("failover", &format!("{{\"leader\":\"n{p}\",\"member\":\"n{cand}\"}}"))?;
        let first = wait_until(Duration::from_secs(60), "a write on the new primary", || w.first_ack_elsewhere(t0, p))?;
        let acks = w.acks();
        let last_old = acks.iter().filter(|a| a.member == p && a.at < first).map(|a| a.at).max().unwrap_or(t0);
        let new = acks.iter().find(|a| a.at == first).map_or(0, |a| a.member);
        let secs = (first - last_old).as_secs_f64();
        let missing = harness::lost(&c, new, &acks)?.len();
        lost_total += missing;
        let gap =
            wait_until(Duration::from_secs(10), "the new primary's local writes", || fence_gap(&pollers, p, new, t0))?;
        gaps.push(gap);
        println!(
            "  {prof:<4} switchover run {run:>2}: {secs:.3} s without writes (n{p} -> n{new}, asked for n{cand}; {:.2} s after the request; {missing} acknowledged writes lost), fence gap {gap:.3} s",
            (first - t0).as_secs_f64()
        );
        values.push(secs);
        wait_until(Duration::from_secs(30), "the failover key to be cleared", || {
            (c.etcd_get("failover").as_deref() == Some("{}")).then_some(())
        })?;
        c.wait_streaming(new, &others(new), Duration::from_secs(90))?;
        p = new;
    }
    drop(w);
    let acks = pollers.stop();
    if let Err(e) = harness::check_fencing(&acks) {
        println!("    TWO PRIMARIES: {e:#}");
    }
    Ok((values, lost_total, gaps))
}

/// A pseudo-random number of milliseconds below `max` (from the clock; no dependency).
fn jitter_ms(max: u64) -> u64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    u64::from(nanos.wrapping_mul(2_654_435_761)) % max
}

fn clk_tck() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().map_or(100.0, |v| v as f64)
}

/// utime + stime in clock ticks, and VmRSS in kB.
fn usage(pid: i32) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss =
        status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some((ticks, rss))
}

fn footprint() -> anyhow::Result<()> {
    let c = Cluster::start("ha_bench_idle", profile("lab"))?;
    let p = c.wait_primary(Duration::from_secs(90), &[])?;
    c.wait_streaming(p, &others(p), Duration::from_secs(90))?;
    // Let start-up work (slots, first checkpoints) pass.
    std::thread::sleep(Duration::from_secs(5));
    let pids: Vec<(usize, i32)> = (1..=3).filter_map(|i| Some((i, c.agent(i)?.pid()?))).collect();
    let before: Vec<Option<(u64, u64)>> = pids.iter().map(|(_, pid)| usage(*pid)).collect();
    let window = Duration::from_secs(30);
    std::thread::sleep(window);
    for ((i, pid), b) in pids.iter().zip(before) {
        let (Some((t0, _)), Some((t1, rss))) = (b, usage(*pid)) else { continue };
        let cpu = (t1 - t0) as f64 / clk_tck() / window.as_secs_f64() * 100.0;
        let role = if *i == p { "primary" } else { "replica" };
        println!("  idle n{i} ({role}): RSS {:.1} MB, CPU {cpu:.2} % of a core", rss as f64 / 1024.0);
    }
    Ok(())
}

/// Minutes of etcd trouble that must not cause a failover.
fn stability(minutes: u64, prof: &str) -> anyhow::Result<()> {
    let c = Cluster::start(&format!("ha_bench_stability_{prof}"), profile(prof))?;
    let p = c.wait_primary(Duration::from_secs(90), &[])?;
    c.wait_streaming(p, &others(p), Duration::from_secs(90))?;
    let leader = format!("n{p}");
    let end = Instant::now() + Duration::from_secs(minutes * 60);
    let moves = [end - Duration::from_secs(minutes * 40), end - Duration::from_secs(minutes * 20)];
    let (mut freezes, mut moved, mut changes) = (0, 0, 0);
    let mut next_freeze = Instant::now() + Duration::from_secs(30);
    while Instant::now() < end {
        if Instant::now() >= next_freeze {
            let m = freezes % c.etcd.len();
            c.etcd.freeze(m)?;
            std::thread::sleep(Duration::from_secs(1));
            c.etcd.thaw(m)?;
            freezes += 1;
            next_freeze += Duration::from_secs(30);
        }
        if moved < moves.len() && Instant::now() >= moves[moved] {
            let from = c.etcd.leader(&c.net, 0)?;
            let to = (from + 1) % c.etcd.len();
            let ids = c.etcd.etcdctl(&c.net, to, &["member", "list", "-w", "json"])?;
            let v: serde_json::Value = serde_json::from_str(&ids)?;
            let target = format!("etcd-n{}", c.etcd.host_of(to));
            if let Some(id) = v["members"].as_array().into_iter().flatten().find(|m| m["name"] == target.as_str()) {
                let id = format!("{:x}", id["ID"].as_u64().unwrap_or(0));
                c.etcd.etcdctl_at(&c.net, from, &["move-leader", &id])?;
            }
            moved += 1;
        }
        if c.leader_key().is_some_and(|l| l != leader) {
            changes += 1;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let fences: usize = (1..=3)
        .filter_map(|i| c.agent(i))
        .map(|a| a.log_text().matches("fencing: the leader lease could not be renewed").count())
        .sum();
    println!(
        "  {minutes} min: {freezes} etcd member freezes of 1 s, {moved} etcd leader moves; leader changes seen: {changes}, fences: {fences}"
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let runs: usize = std::env::var("HA_BENCH_RUNS").ok().and_then(|s| s.parse().ok()).unwrap_or(10);
    let profiles = std::env::var("HA_BENCH_PROFILES").unwrap_or_else(|_| "lab,ttl4".into());
    println!("ha-agent failover: from the fault to the first committed write on the new primary");
    let mut summary = Vec::new();
    let only_switchover = std::env::var("HA_BENCH_ONLY").is_ok_and(|o| o == "switchover");
    for prof in profiles.split(',').filter(|s| !s.is_empty() && runs > 0 && !only_switchover) {
        let faults = std::env::var("HA_BENCH_FAULTS").unwrap_or_else(|_| "freeze,cut-off,pg-broken".into());
        for f in [Fault::Freeze, Fault::CutOff, Fault::PgBroken]
            .into_iter()
            .filter(|f| faults.split(',').any(|n| n == f.name()))
        {
            let s = failovers(prof, f, runs)?;
            summary.push(format!("  {prof:<4} {:<9} {}", f.name(), s.line()));
            println!("{}", summary.last().map_or("", String::as_str));
        }
    }
    if runs > 0 {
        let mode = if sync_mode() { "synchronous" } else { "asynchronous" };
        println!("ha-agent switchover (failover key, {mode} replication): write-unavailability");
        for prof in profiles.split(',').filter(|s| !s.is_empty()) {
            let (v, lost, gaps) = switchovers(prof, runs)?;
            summary.push(format!(
                "  {prof:<4} switchover {} ({lost} acknowledged writes lost); {}",
                crate::summary(v),
                gap_summary(gaps)
            ));
            println!("{}", summary.last().map_or("", String::as_str));
        }
    }
    println!("summary:");
    for l in &summary {
        println!("{l}");
    }
    if runs > 0 && !only_switchover {
        println!("footprint:");
        footprint()?;
    }
    if let Some(min) = std::env::var("HA_BENCH_STABILITY_MIN").ok().and_then(|s| s.parse().ok()) {
        for prof in profiles.split(',').filter(|s| !s.is_empty()) {
            println!("no false failover ({prof} timings):");
            stability(min, prof)?;
        }
    }
    Ok(())
}
