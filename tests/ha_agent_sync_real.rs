//! ha-agent's synchronous mode with real etcd, PostgreSQL and HAProxy: 3 hosts and a client
//! host (network namespaces). The client runs HAProxy (read-write port routed by ha-agent's
//! own `GET /primary`, as Patroni's users configure it) and a money-transfer workload through
//! it: ten accounts, transfers between them in transactions, every transfer whose COMMIT was
//! acknowledged recorded by the client.
//!
//! Checked at the end on the primary: every acknowledged transfer is there, the total of the
//! balances is unchanged, and every balance is what the transfers present make it. These are
//! safety tests: never retried (`.config/nextest.toml`).

#[path = "ha_agent_harness.rs"]
mod harness;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use harness::{Cluster, Opts, RW_PORT};
use outrigger_testkit::{NsRuntime, Proc, hold_for, wait_ok};

const UP: Duration = Duration::from_secs(90);
const FAILOVER: Duration = Duration::from_secs(60);
const ACCOUNTS: i64 = 10;
const START_BALANCE: i64 = 1000;

/// HAProxy and the workload on the client host.
struct Client {
    _haproxy: Proc,
    rt: NsRuntime,
}

fn start_client(c: &mut Cluster) -> anyhow::Result<Client> {
    let (haproxy, rt) = harness::start_haproxy(&mut c.net)?;
    Ok(Client { _haproxy: haproxy, rt })
}

/// The workload: transfers through HAProxy, one at a time, each bounded in time; an id whose
/// COMMIT was not acknowledged is never retried (its outcome is unknown).
struct Bank {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<i64>>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Bank {
    fn start(client: &Client) -> Bank {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let task = client.rt.spawn(transfers(stop.clone(), acked.clone()));
        Bank { stop, acked, task: Some(task) }
    }

    fn acked(&self) -> usize {
        self.acked.lock().map_or(0, |a| a.len())
    }

    /// Waits until `more` transfers beyond `from` were acknowledged.
    fn wait_more(&self, from: usize, more: usize, what: &str) -> anyhow::Result<usize> {
        wait_ok(FAILOVER, what, || {
            let n = self.acked();
            anyhow::ensure!(n >= from + more, "{} acknowledged so far", n - from);
            Ok(n)
        })
    }

    fn stop(mut self, client: &Client) -> Vec<i64> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.task.take() {
            let _ = client.rt.block_on(async move { tokio::time::timeout(Duration::from_secs(10), t).await });
        }
        self.acked.lock().map(|a| a.clone()).unwrap_or_default()
    }
}

async fn transfers(stop: Arc<AtomicBool>, acked: Arc<Mutex<Vec<i64>>>) {
    let mut id: i64 = 0;
    let mut conn: Option<tokio_postgres::Client> = None;
    while !stop.load(Ordering::SeqCst) {
        let Some(c) = conn.take() else {
            let mut cfg = tokio_postgres::Config::new();
            cfg.host("127.0.0.1").port(RW_PORT).user("postgres").dbname("postgres");
            cfg.connect_timeout(Duration::from_secs(1));
            match tokio::time::timeout(Duration::from_secs(2), cfg.connect(tokio_postgres::NoTls)).await {
                Ok(Ok((c, task))) => {
                    tokio::spawn(task);
                    conn = Some(c);
                }
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
            continue;
        };
        id += 1;
        let (from, to, amount) = (id % ACCOUNTS + 1, (id * 7 + 3) % ACCOUNTS + 1, id % 50 + 1);
        let to = if to == from { to % ACCOUNTS + 1 } else { to };
        let sql = format!(
            "BEGIN; UPDATE accounts SET balance = balance - {amount} WHERE id = {from}; \
             UPDATE accounts SET balance = balance + {amount} WHERE id = {to}; \
             INSERT INTO transfers VALUES ({id}, {from}, {to}, {amount}); COMMIT;"
        );
        // An error or no answer: the outcome is unknown; a new connection for the next.
        if let Ok(Ok(())) = tokio::time::timeout(Duration::from_secs(2), c.batch_execute(&sql)).await {
            if let Ok(mut a) = acked.lock() {
                a.push(id);
            }
            conn = Some(c);
        }
    }
}

const SCHEMA: &str = "CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL); \
    INSERT INTO accounts SELECT g, 1000 FROM generate_series(1, 10) g; \
    CREATE TABLE transfers (id bigint PRIMARY KEY, src int NOT NULL, dst int NOT NULL, amount bigint NOT NULL)";

/// The bank's books on member `p`: no acknowledged transfer missing, the total unchanged,
/// every balance equal to what the transfers present make it.
fn audit(c: &Cluster, p: usize, acked: &[i64]) -> anyhow::Result<()> {
    let have: std::collections::HashSet<i64> =
        c.sql(p, "SELECT id FROM transfers")?.lines().filter_map(|l| l.trim().parse().ok()).collect();
    let missing: Vec<i64> = acked.iter().copied().filter(|id| !have.contains(id)).collect();
    anyhow::ensure!(
        missing.is_empty(),
        "{} acknowledged transfers missing on n{p}: {:?}",
        missing.len(),
        &missing[..missing.len().min(20)]
    );
    let total: i64 = c.sql(p, "SELECT sum(balance) FROM accounts")?.trim().parse()?;
    anyhow::ensure!(total == ACCOUNTS * START_BALANCE, "the total is {total}, not {}", ACCOUNTS * START_BALANCE);
    let wrong = c.sql(
        p,
        "SELECT count(*) FROM accounts a WHERE balance <> 1000 \
         + coalesce((SELECT sum(amount) FROM transfers WHERE dst = a.id), 0) \
         - coalesce((SELECT sum(amount) FROM transfers WHERE src = a.id), 0)",
    )?;
    anyhow::ensure!(wrong.trim() == "0", "{wrong} balances disagree with the transfers present");
    println!("audit on n{p}: {} acknowledged transfers present of {} in the table", acked.len(), have.len());
    Ok(())
}

/// The `sync` key: (leader, listed members).
fn sync_key(c: &Cluster) -> Option<(String, Vec<String>)> {
    let v: serde_json::Value = serde_json::from_str(&c.etcd_get("sync")?).ok()?;
    let leader = v["leader"].as_str()?.to_owned();
    let listed = v["sync_standby"].as_str().map_or_else(Vec::new, |s| s.split(',').map(str::to_owned).collect());
    Some((leader, listed))
}

/// Waits until `p` leads, the `sync` key names it and lists at least one standby; returns
/// the listed ones.
fn wait_listed(c: &Cluster, p: usize) -> anyhow::Result<Vec<String>> {
    wait_ok(UP, &format!("n{p} to list a synchronous standby in the sync key"), || {
        let (leader, listed) = sync_key(c).ok_or_else(|| anyhow::anyhow!("no sync key"))?;
        anyhow::ensure!(leader == format!("n{p}") && !listed.is_empty(), "sync key: {leader} {listed:?}");
        Ok(listed)
    })
}

/// `GET <path>` on member `i`'s REST API from the client host: the status code.
fn status_code(c: &Cluster, i: usize, path: &str) -> anyhow::Result<String> {
    let url = format!("http://{}:8008{path}", c.net.host(i).ip());
    let client = c.net.by_name("client").ok_or_else(|| anyhow::anyhow!("no client host"))?;
    client.exec(&["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-m", "2", &url])
}

fn sync_cluster(test: &str, dcs: &'static str) -> anyhow::Result<(Cluster, usize, Client)> {
    let mut c = Cluster::start(test, Opts { sync: false, dcs, ..Opts::default() })?;
    let p = c.wait_primary(UP, &[])?;
    c.wait_streaming(p, &(1..=3).filter(|i| *i != p).collect::<Vec<_>>(), UP)?;
    c.sql(p, SCHEMA)?;
    let client = start_client(&mut c)?;
    Ok((c, p, client))
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    Freeze,
    CutOff,
    KillPostgres,
    Switchover,
}

#[test]
fn synchronous_mode_loses_no_acknowledged_transfer_through_freeze_cut_off_kill_and_switchover() -> anyhow::Result<()> {
    bank_through_faults("ha_sync_bank", "synchronous_mode = true", "/sync")
}

#[test]
fn quorum_commit_loses_no_acknowledged_transfer_through_freeze_cut_off_kill_and_switchover() -> anyhow::Result<()> {
    bank_through_faults("ha_quorum_bank", "synchronous_mode = \"quorum\"", "/quorum")
}

/// Transfers through HAProxy across four faults on the leader; `endpoint` is the REST path
/// that answers 200 on a listed standby (`/sync` or `/quorum`).
fn bank_through_faults(test: &str, dcs: &'static str, endpoint: &str) -> anyhow::Result<()> {
    let (c, mut p, client) = sync_cluster(test, dcs)?;
    let bank = Bank::start(&client);
    let mut n = bank.wait_more(0, 100, "100 transfers through HAProxy")?;
    for fault in [Fault::Freeze, Fault::CutOff, Fault::KillPostgres, Fault::Switchover] {
        let listed = wait_listed(&c, p)?;
        // The REST API answers from the sync key: 200 on a listed replica, 503 elsewhere.
        for i in 1..=3 {
            let want = if listed.contains(&Cluster::name(i)) { "200" } else { "503" };
            wait_ok(Duration::from_secs(10), &format!("GET {endpoint} on n{i} to answer {want}"), || {
                let got = status_code(&c, i, endpoint)?;
                anyhow::ensure!(got == want, "answered {got}");
                Ok(())
            })?;
        }
        n = bank.wait_more(n, 50, "transfers before the fault")?;
        println!("{fault:?} on n{p}; sync lists {listed:?}; {n} transfers acknowledged so far");
        let t0 = Instant::now();
        match fault {
            Fault::Freeze => c.net.host(p).freeze_all()?,
            Fault::CutOff => c.net.host(p).cut_off()?,
            Fault::KillPostgres => c.kill_postgres(p),
            Fault::Switchover => {
                let cand = &listed[0];
                c.etcd_put("failover", &format!("{{\"leader\":\"n{p}\",\"member\":\"{cand}\"}}"))?;
            }
        }
        let q = match fault {
            // A killed PostgreSQL is restarted in place or replaced, whichever comes first.
            Fault::KillPostgres => c.wait_primary(FAILOVER, &[])?,
            _ => c.wait_primary(FAILOVER, &[p])?,
        };
        // Synchronous mode: only a listed standby takes over. Quorum commit: whoever wins the
        // votes (a voter, or any member with one vote more).
        if q != p && endpoint == "/sync" {
            anyhow::ensure!(
                listed.contains(&Cluster::name(q)),
                "n{q} took over but the sync key listed only {listed:?}"
            );
        }
        n = bank.wait_more(n, 20, &format!("transfers acknowledged by n{q} after the {fault:?}"))?;
        println!("  n{q} leads; writes resumed {:.1} s after the fault", t0.elapsed().as_secs_f64());
        match fault {
            Fault::Freeze => c.net.host(p).thaw_all()?,
            Fault::CutOff => c.net.host(p).heal()?,
            Fault::KillPostgres | Fault::Switchover => {}
        }
        p = c.wait_primary(UP, &[])?;
        c.wait_streaming(p, &(1..=3).filter(|i| *i != p).collect::<Vec<_>>(), Duration::from_secs(120))?;
    }
    let acked = bank.stop(&client);
    let p = c.wait_primary(UP, &[])?;
    audit(&c, p, &acked)?;
    let errors = c.unexpected_errors(&[]);
    anyhow::ensure!(errors.is_empty(), "unexpected ERROR lines: {errors:?}");
    Ok(())
}

#[test]
fn strict_synchronous_mode_blocks_writes_without_a_standby_and_loses_nothing() -> anyhow::Result<()> {
    let (mut c, p, client) = sync_cluster("ha_sync_strict", "synchronous_mode = true\nsynchronous_mode_strict = true")?;
    let bank = Bank::start(&client);
    wait_listed(&c, p)?;
    let n = bank.wait_more(0, 100, "100 transfers through HAProxy")?;
    let replicas: Vec<usize> = (1..=3).filter(|i| *i != p).collect();
    for &r in &replicas {
        c.kill_agent(r)?;
        c.kill_postgres(r);
    }
    // A transfer in flight when they went may still complete; after that, nothing.
    std::thread::sleep(Duration::from_secs(1));
    let blocked = bank.acked();
    hold_for(Duration::from_secs(8), "no transfer is acknowledged without a synchronous standby", || {
        let now = bank.acked();
        anyhow::ensure!(now == blocked, "{} transfers acknowledged with both standbys down", now - blocked);
        Ok(())
    })?;
    anyhow::ensure!(c.writable(p), "n{p} is still the primary (blocked, not demoted)");
    for &r in &replicas {
        c.start_agent(r)?;
    }
    bank.wait_more(blocked, 50, "transfers once the standbys are back")?;
    let acked = bank.stop(&client);
    println!("{n} transfers before the standbys went, {blocked} at the block, {} in all", acked.len());
    let p = c.wait_primary(UP, &[])?;
    audit(&c, p, &acked)?;
    Ok(())
}

/// Runs an unmodified `patronictl` (PyPI) on host n1 against the cluster's etcd; its output.
fn patronictl(c: &Cluster, args: &[&str]) -> anyhow::Result<String> {
    let hosts: Vec<String> =
        (0..c.etcd.len()).map(|m| c.etcd.endpoint(m).trim_start_matches("http://").to_owned()).collect();
    let cfg = c.net.dir().path().join("patronictl.yml");
    std::fs::write(
        &cfg,
        format!("scope: {}\nnamespace: /service/\netcd3:\n  hosts: {}\n", harness::SCOPE, hosts.join(",")),
    )?;
    let bin = outrigger_testkit::python::patroni_bin()?.join("patronictl").display().to_string();
    let cfg = cfg.display().to_string();
    let mut all = vec!["timeout", "90", bin.as_str(), "-c", cfg.as_str()];
    all.extend_from_slice(args);
    c.net.host(1).exec(&all)
}

/// `patronictl list -f json`.
fn patronictl_list(c: &Cluster) -> anyhow::Result<Vec<serde_json::Value>> {
    Ok(serde_json::from_str(&patronictl(c, &["list", harness::SCOPE, "-f", "json"])?)?)
}

/// Waits until `patronictl list` shows three members, `p` as the one Leader and the others
/// streaming from it.
fn wait_listed_by_patronictl(c: &Cluster, p: usize) -> anyhow::Result<()> {
    wait_ok(UP, &format!("patronictl list to show n{p} leading two streaming replicas"), || {
        let members = patronictl_list(c)?;
        let role = |m: &serde_json::Value| m["Role"].as_str().unwrap_or_default().to_owned();
        let leaders: Vec<String> = members
            .iter()
            .filter(|m| role(m) == "Leader")
            .map(|m| m["Member"].as_str().unwrap_or_default().to_owned())
            .collect();
        anyhow::ensure!(members.len() == 3 && leaders == [Cluster::name(p)], "{members:?}");
        let streaming = members.iter().filter(|m| m["State"].as_str() == Some("streaming")).count();
        anyhow::ensure!(streaming == 2, "{members:?}");
        Ok(())
    })
}

/// Which implementation runs on each host during a migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Runs {
    Patroni,
    HaAgent,
}

/// The migration's bookkeeping: the cluster, who runs where, the leader, the transfers.
struct Migration {
    c: Cluster,
    runs: [Runs; 3],
    p: usize,
    n: usize,
}

impl Migration {
    fn runs(&self, i: usize) -> Runs {
        self.runs[i - 1]
    }

    fn others(&self) -> Vec<usize> {
        (1..=3).filter(|i| *i != self.p).collect()
    }

    /// Every member streams from the leader, `patronictl list` says so, and the sync key lists
    /// both standbys (`synchronous_node_count` 2: the steady state, which no leader changes
    /// while both stream); `more` transfers go through meanwhile.
    fn settle(&mut self, bank: &Bank, more: usize, what: &str) -> anyhow::Result<()> {
        self.c.wait_streaming(self.p, &self.others(), Duration::from_secs(180))?;
        wait_listed_by_patronictl(&self.c, self.p)?;
        let (c, p) = (&self.c, self.p);
        let mut want: Vec<String> = self.others().into_iter().map(Cluster::name).collect();
        want.sort();
        wait_ok(UP, &format!("the sync key to list {want:?}"), || {
            let mut listed = wait_listed(c, p)?;
            listed.sort();
            anyhow::ensure!(listed == want, "it lists {listed:?}");
            Ok(())
        })?;
        self.n = bank.wait_more(self.n, more, what)?;
        println!(
            "{what}: n{} ({:?}) leads; hosts run {:?}; {} transfers so far",
            self.p,
            self.runs(self.p),
            self.runs,
            self.n
        );
        Ok(())
    }

    /// Replaces whatever runs on replica `i` with `to`, reading the same `patroni.yml`.
    fn replace(&mut self, i: usize, to: Runs, dcs: &str) -> anyhow::Result<()> {
        anyhow::ensure!(i != self.p, "n{i} leads: hand over first");
        match to {
            Runs::HaAgent => self.c.migrate_to_agent(i)?,
            Runs::Patroni => {
                self.c.stop_agent(i)?;
                self.c.start_patroni(i, dcs)?;
            }
        }
        self.runs[i - 1] = to;
        Ok(())
    }

    /// `patronictl switchover` from the leader to `to` (a listed synchronous standby).
    fn switchover(&mut self, to: usize) -> anyhow::Result<()> {
        let (c, p) = (&self.c, self.p);
        wait_ok(UP, &format!("the sync key to list n{to}"), || {
            let listed = wait_listed(c, p)?;
            anyhow::ensure!(listed.contains(&Cluster::name(to)), "it lists {listed:?}");
            Ok(())
        })?;
        let (leader, cand) = (Cluster::name(self.p), Cluster::name(to));
        let out =
            patronictl(&self.c, &["switchover", harness::SCOPE, "--leader", &leader, "--candidate", &cand, "--force"])?;
        anyhow::ensure!(out.contains("Successfully switched over"), "patronictl switchover: {out}");
        let old = self.p;
        self.p = self.c.wait_primary(UP, &[old])?;
        anyhow::ensure!(self.p == to, "n{} leads after a switchover to n{to}", self.p);
        Ok(())
    }

    /// The leader's host freezes: the member the sync key lists takes over, whichever
    /// implementation it runs; then the old leader thaws and rejoins.
    fn freeze_leader(&mut self) -> anyhow::Result<()> {
        let old = self.p;
        // etcd 3.4 before 3.4.31 (Debian 12 has 3.4.23) revokes every lease when a raft leader
        // that was frozen wakes (etcd #15247): the new leader's key goes with them, and a
        // Patroni that wakes still sure it leads puts its key back. That fault has its own
        // tests (the simulation, ARCHITECTURE's failure model); this one is about a failover
        // across implementations, so the raft leader is placed on another host first (as
        // ha-agent's `keep_off_primary` does when it leads; Patroni does not).
        self.c.etcd.move_leader_off_host(&self.c.net, old)?;
        // Read last thing before the freeze: a frozen leader cannot change it, and the next
        // write is the new leader's own.
        let listed = wait_listed(&self.c, self.p)?;
        let t0 = Instant::now();
        self.c.net.host(old).freeze_all()?;
        let q = self.c.wait_primary(Duration::from_secs(120), &[old])?;
        anyhow::ensure!(listed.contains(&Cluster::name(q)), "n{q} took over but the sync key listed {listed:?}");
        println!(
            "froze n{old} ({:?}): n{q} ({:?}) leads after {:.1} s",
            self.runs(old),
            self.runs(q),
            t0.elapsed().as_secs_f64()
        );
        self.c.net.host(old).thaw_all()?;
        self.p = q;
        Ok(())
    }
}

/// A running Patroni 4.x cluster (synchronous mode on, two synchronous standbys) under
/// transfers through HAProxy moves to ha-agent one member at a time, each ha-agent reading the
/// member's own unchanged `patroni.yml` (replicas in place, a leader after a `patronictl
/// switchover`), then back to Patroni the same way. While the cluster is mixed, the leader's
/// host is frozen with Patroni leading and again with ha-agent leading. `patronictl list` is
/// right at every step and no acknowledged transfer is lost.
#[test]
fn a_live_patroni_cluster_moves_to_ha_agent_and_back_member_by_member_with_the_same_patroni_yml() -> anyhow::Result<()>
{
    const DCS: &str = "    synchronous_mode: true\n    synchronous_node_count: 2\n";
    let mut c = Cluster::start("patroni_migration", Opts { agents: 0, sync: false, ..Opts::default() })?;
    for i in 1..=3 {
        c.start_patroni(i, DCS)?;
    }
    let p = c.wait_primary(UP, &[])?;
    c.wait_streaming(p, &(1..=3).filter(|i| *i != p).collect::<Vec<_>>(), UP)?;
    c.sql(p, SCHEMA)?;
    let client = start_client(&mut c)?;
    let bank = Bank::start(&client);
    let mut m = Migration { c, runs: [Runs::Patroni; 3], p, n: 0 };
    m.settle(&bank, 50, "Patroni")?;

    // To ha-agent, one replica first.
    let a = m.others()[0];
    m.replace(a, Runs::HaAgent, DCS)?;
    m.settle(&bank, 30, "one replica on ha-agent")?;
    // Mixed, Patroni leading: its host freezes; a listed standby takes over.
    m.freeze_leader()?;
    m.settle(&bank, 30, "failover from a frozen Patroni leader")?;
    // Mixed, ha-agent leading (after a patronictl switchover to it if needed): its host
    // freezes; a Patroni standby takes over.
    if m.p != a {
        m.switchover(a)?;
        m.settle(&bank, 30, "patronictl switchover to the ha-agent member")?;
    }
    m.freeze_leader()?;
    anyhow::ensure!(m.runs(m.p) == Runs::Patroni, "n{} took over from ha-agent", m.p);
    m.settle(&bank, 30, "failover from a frozen ha-agent leader")?;
    // The rest: Patroni replicas in place, then the Patroni leader hands over and goes too.
    for i in m.others() {
        if m.runs(i) == Runs::Patroni {
            m.replace(i, Runs::HaAgent, DCS)?;
            m.settle(&bank, 20, &format!("n{i} moved to ha-agent"))?;
        }
    }
    let last = m.p;
    m.switchover(m.others()[0])?;
    m.replace(last, Runs::HaAgent, DCS)?;
    m.settle(&bank, 20, "the last Patroni member moved to ha-agent")?;
    anyhow::ensure!(m.runs == [Runs::HaAgent; 3]);

    // And back to Patroni, the same way.
    for i in m.others() {
        m.replace(i, Runs::Patroni, DCS)?;
        m.settle(&bank, 20, &format!("n{i} back on Patroni"))?;
    }
    let last = m.p;
    m.switchover(m.others()[0])?;
    m.replace(last, Runs::Patroni, DCS)?;
    m.settle(&bank, 20, "every member back on Patroni")?;

    let acked = bank.stop(&client);
    let p = m.c.wait_primary(UP, &[])?;
    audit(&m.c, p, &acked)?;
    let errors = m.c.unexpected_errors(&[]);
    anyhow::ensure!(errors.is_empty(), "unexpected ERROR lines: {errors:?}");
    Ok(())
}
