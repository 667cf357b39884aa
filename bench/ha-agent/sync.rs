//! Write throughput and latency through HAProxy, asynchronous and synchronous replication,
//! ha-agent and Patroni 4.x in the same run (`bench/ha-agent/sync.sh`).
//!
//! For each implementation: a 3-host cluster in network namespaces (etcd member, the HA
//! daemon and PostgreSQL per host, `fsync = off` on every member alike), HAProxy on a client
//! host routing by `GET /primary`, `pgbench -i -s 10` through it, then for each mode
//! (`synchronous_mode` off, on, then `quorum`, switched with `PATCH /config` as a user would)
//! `pgbench -c 8 -j 2 -T <secs>` (TPC-B-like) through HAProxy. Printed per run: transactions
//! per second and the latency median and p99 from pgbench's per-transaction log.
//! `HA_SYNC_BENCH_SECS` (default 20) sets the length of each run.

#[path = "../../tests/ha_agent_harness.rs"]
mod harness;

use std::time::Duration;

use harness::{Cluster, Opts, RW_PORT, pg_bin};
use outrigger_testkit::wait_ok;

/// One pgbench run's figures.
struct Figures {
    tps: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn client(c: &Cluster) -> anyhow::Result<&outrigger_testkit::Host> {
    c.net.by_name("client").ok_or_else(|| anyhow::anyhow!("no client host"))
}

/// `PATCH /config` on the leader's REST API, from the client host.
fn patch_config(c: &Cluster, leader: usize, json: &str) -> anyhow::Result<()> {
    let url = format!("http://{}:8008/config", c.net.host(leader).ip());
    let out = client(c)?.exec(&["curl", "-sf", "-m", "5", "-X", "PATCH", "-d", json, &url])?;
    anyhow::ensure!(!out.is_empty(), "PATCH /config answered nothing");
    Ok(())
}

/// The modes measured: `synchronous_mode` as `PATCH /config` sets it, and its label.
const MODES: [(&str, &str); 3] = [("false", "asynchronous"), ("true", "synchronous"), ("\"quorum\"", "quorum")];

/// Waits until the leader runs in `mode`: no synchronous standby, one (`sync`), or `ANY n`
/// of the standbys (`quorum`).
fn wait_mode(c: &Cluster, leader: usize, mode: &str) -> anyhow::Result<()> {
    wait_ok(Duration::from_secs(90), &format!("{mode} replication"), || {
        let ssn = c.sql(leader, "show synchronous_standby_names")?;
        let state = c.sql(leader, "select string_agg(sync_state, ',') from pg_stat_replication")?;
        match mode {
            "synchronous" => anyhow::ensure!(!ssn.is_empty() && state.contains("sync"), "ssn {ssn:?}, {state:?}"),
            "quorum" => anyhow::ensure!(ssn.starts_with("ANY") && state.contains("quorum"), "ssn {ssn:?}, {state:?}"),
            _ => anyhow::ensure!(ssn.is_empty(), "ssn {ssn:?}"),
        }
        Ok(())
    })
}

fn pgbench(c: &Cluster, args: &[&str]) -> anyhow::Result<String> {
    let bin = pg_bin().join("pgbench");
    let port = RW_PORT.to_string();
    let mut all = vec![bin.to_str().unwrap_or("pgbench"), "-h", "127.0.0.1", "-p", &port, "-U", "postgres"];
    all.extend_from_slice(args);
    all.push("postgres");
    client(c)?.exec(&all)
}

fn run(c: &Cluster, label: &str, secs: u64) -> anyhow::Result<Figures> {
    let dir = client(c)?.dir().path().join(format!("pgbench-{label}"));
    std::fs::create_dir_all(&dir)?;
    let prefix = dir.join("tx");
    let t = secs.to_string();
    let prefix_arg = format!("--log-prefix={}", prefix.display());
    let out = pgbench(c, &["-n", "-c", "8", "-j", "2", "-T", &t, "-M", "prepared", "--log", &prefix_arg])?;
    let tps = out
        .lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l.trim_start_matches("tps = ").split_whitespace().next()?.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no tps in pgbench's output: {out}"))?;
    // Per-transaction log lines: client_id transaction_no time_us script_no epoch epoch_us.
    let mut lat: Vec<u64> = Vec::new();
    for e in std::fs::read_dir(&dir)? {
        let text = std::fs::read_to_string(e?.path())?;
        lat.extend(text.lines().filter_map(|l| l.split_whitespace().nth(2)?.parse::<u64>().ok()));
    }
    anyhow::ensure!(!lat.is_empty(), "pgbench wrote no transaction log");
    lat.sort_unstable();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)] as f64 / 1000.0;
    Ok(Figures { tps, p50_ms: pct(0.50), p99_ms: pct(0.99) })
}

/// One implementation: start it, load, measure asynchronous then synchronous.
fn measure(name: &str, patroni: bool, secs: u64) -> anyhow::Result<Vec<(String, Figures)>> {
    let opts = Opts { sync: false, agents: if patroni { 0 } else { 3 }, ..Opts::default() };
    let mut c = Cluster::start(&format!("ha_sync_bench_{name}"), opts)?;
    if patroni {
        // n1 first, so that it bootstraps; then the others clone from it.
        c.start_patroni(1, "")?;
        c.wait_primary(Duration::from_secs(90), &[])?;
        c.start_patroni(2, "")?;
        c.start_patroni(3, "")?;
    }
    let p = c.wait_primary(Duration::from_secs(90), &[])?;
    c.wait_streaming(p, &(1..=3).filter(|i| *i != p).collect::<Vec<_>>(), Duration::from_secs(120))?;
    // The primary's settings that differ from PostgreSQL's defaults, for comparing the two
    // implementations' servers (`target/test-logs/ha_sync_bench_*/settings.txt`).
    let settings = c.sql(
        p,
        "select name || ' = ' || setting || ' (' || source || ')' from pg_settings \
         where source not in ('default', 'override') order by 1",
    )?;
    std::fs::write(c.net.dir().path().join("settings.txt"), settings)?;
    let (_haproxy, _rt) = harness::start_haproxy(&mut c.net)?;
    wait_ok(Duration::from_secs(30), "pgbench -i through HAProxy", || pgbench(&c, &["-i", "-s", "10", "-q"]))?;
    let mut out = Vec::new();
    for (value, mode) in MODES {
        patch_config(&c, p, &format!("{{\"synchronous_mode\": {value}}}"))?;
        wait_mode(&c, p, mode)?;
        let f = run(&c, &format!("{name}-{mode}"), secs)?;
        println!(
            "  {name:<8} {mode:<12}: {:>7.0} tps, latency median {:.2} ms, p99 {:.2} ms",
            f.tps, f.p50_ms, f.p99_ms
        );
        out.push((mode.to_owned(), f));
    }
    Ok(out)
}

fn main() -> anyhow::Result<()> {
    let secs: u64 = std::env::var("HA_SYNC_BENCH_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(20);
    println!("pgbench -c 8 -j 2 -T {secs} (scale 10) through HAProxy, 3 members, fsync off");
    let ours = measure("ha-agent", false, secs)?;
    let theirs = measure("patroni", true, secs)?;
    println!("\n| implementation | replication | tps | latency median | p99 |\n|---|---|---|---|---|");
    for (name, rows) in [("ha-agent", &ours), ("Patroni 4.x", &theirs)] {
        for (mode, f) in rows {
            println!("| {name} | {mode} | {:.0} | {:.2} ms | {:.2} ms |", f.tps, f.p50_ms, f.p99_ms);
        }
    }
    Ok(())
}
