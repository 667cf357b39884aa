//! A 3-host ha-agent cluster on the test kit, shared by `tests/ha_agent_real.rs` and
//! `bench/ha-agent`: each host (a network namespace) runs an etcd member, ha-agent and the
//! PostgreSQL the agent manages. Data and sockets live in a temporary folder under /tmp (short
//! socket paths); logs in the test's folder.
//!
//! Clients reach PostgreSQL over its Unix socket from the root namespace: no test traffic
//! leaves the namespaces. A [`Writer`] inserts rows into whichever member is primary and
//! records which inserts were acknowledged, to check that none is lost.

#![allow(dead_code)] // each includer uses part of it

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use outrigger_testkit::{EtcdCluster, EtcdOptions, Net, Proc, wait_ok, wait_until};

pub const SCOPE: &str = "otk";
pub const PG_PORT: u16 = 5432;

/// The ha-agent binary, built once per run (cargo does not build another package's binaries
/// for this package's tests).
pub fn agent_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("test executable path");
        let profile_dir = exe.parent().and_then(Path::parent).expect("target profile dir").to_path_buf();
        let target_dir = profile_dir.parent().expect("target dir");
        let run = std::env::var("NEXTEST_RUN_ID").unwrap_or_else(|_| std::process::id().to_string());
        let marker = profile_dir.join(format!(".ha-agent-built-{run}"));
        let lock = std::fs::File::create(profile_dir.join(".ha-agent-build.lock")).expect("build lock file");
        lock.lock().expect("take the build lock");
        if !marker.exists() {
            let mut cmd = Command::new(option_env!("CARGO").unwrap_or("cargo"));
            cmd.current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
                .args(["build", "-q", "-p", "ha-agent", "--bin", "ha-agent", "--target-dir"])
                .arg(target_dir);
            if profile_dir.file_name().is_some_and(|n| n == "release") {
                cmd.arg("--release");
            }
            assert!(cmd.status().expect("run cargo build").success(), "cargo build -p ha-agent failed");
            std::fs::write(&marker, b"").expect("write build marker");
        }
        drop(lock);
        profile_dir.join("ha-agent")
    })
}

/// PostgreSQL's binaries: `OUTRIGGER_PG_BIN`, else the newest under /usr/lib/postgresql.
pub fn pg_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("OUTRIGGER_PG_BIN") {
        return PathBuf::from(p);
    }
    let newest = std::fs::read_dir("/usr/lib/postgresql")
        .ok()
        .and_then(|d| d.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok()).max())
        .unwrap_or(15);
    PathBuf::from(format!("/usr/lib/postgresql/{newest}/bin"))
}

#[derive(Debug, Clone)]
pub struct Opts {
    /// `synchronous_commit = on` with `synchronous_standby_names = '*'`.
    pub sync: bool,
    /// Agents started at once (the others with `start_agent`).
    pub agents: usize,
    pub ttl: &'static str,
    pub loop_wait: &'static str,
    pub retry_timeout: &'static str,
    pub peer_timeout: &'static str,
    /// etcd's election timeout; the heartbeat is a tenth of it.
    pub etcd_election_ms: u32,
    /// `postgresql.remove_data_directory_on_rewind_failure`.
    pub reinit_on_rewind_failure: bool,
    /// Extra `[bootstrap.dcs]` lines.
    pub dcs: &'static str,
    /// Extra `[restapi]` lines (may end with a `[restapi.authentication]` table).
    pub restapi: String,
    /// The `[watchdog]` lines.
    pub watchdog: String,
}

impl Default for Opts {
    fn default() -> Self {
        Self {
            sync: true,
            agents: 3,
            ttl: "3s",
            loop_wait: "1s",
            retry_timeout: "1s",
            peer_timeout: "2s",
            etcd_election_ms: 500,
            reinit_on_rewind_failure: false,
            dcs: "",
            restapi: String::new(),
            watchdog: "safety_margin = -1".into(),
        }
    }
}

pub struct Cluster {
    pub net: Net,
    pub etcd: EtcdCluster,
    agents: Vec<Option<Proc>>,
    tmps: Vec<tempfile::TempDir>,
    pub opts: Opts,
}

impl Cluster {
    pub fn start(test: &str, opts: Opts) -> anyhow::Result<Self> {
        agent_bin();
        let net = Net::start(test, 3)?;
        // Fast elections: etcd's shortest lease is ~1.5 x the election timeout, and a leader
        // change re-extends every lease, so both bound how fast a dead primary is noticed.
        let election_ms = opts.etcd_election_ms;
        let etcd = EtcdCluster::start(
            &net,
            &[1, 2, 3],
            EtcdOptions { heartbeat_ms: election_ms / 10, election_ms, client_tls: None },
        )?;
        let mut tmps = Vec::new();
        for h in net.hosts() {
            let t = tempfile::Builder::new().prefix(&format!("otk-ha-{}-", h.name())).tempdir_in("/tmp")?;
            // The postgres user must reach the data directory and socket below it.
            std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755))?;
            tmps.push(t);
        }
        let mut c = Self { net, etcd, agents: (0..3).map(|_| None).collect(), tmps, opts };
        for i in 1..=3 {
            std::fs::write(c.config_path(i), c.config(i))?;
        }
        for i in 1..=c.opts.agents {
            c.start_agent(i)?;
        }
        Ok(c)
    }

    pub fn name(i: usize) -> String {
        format!("n{i}")
    }

    pub fn index(name: &str) -> usize {
        name.trim_start_matches('n').parse().expect("member names are n<i>")
    }

    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.tmps[i - 1].path().join("data")
    }

    pub fn socket_dir(&self, i: usize) -> PathBuf {
        self.tmps[i - 1].path().join("run")
    }

    fn config_path(&self, i: usize) -> PathBuf {
        self.tmps[i - 1].path().join("ha-agent.toml")
    }

    fn config(&self, i: usize) -> String {
        let o = &self.opts;
        let ip = self.net.host(i).ip();
        let endpoints = self.etcd.endpoints().iter().map(|e| format!("\"{e}\"")).collect::<Vec<_>>().join(", ");
        let subnet = format!("{}.0/24", outrigger_testkit::SUBNET_PREFIX);
        let sync = if o.sync { "synchronous_commit = \"on\"\nsynchronous_standby_names = \"*\"\n" } else { "" };
        format!(
            r#"name = "n{i}"
scope = "{SCOPE}"
[log]
level = "info,ha_agent=debug"
[etcd]
endpoints = [{endpoints}]
request_timeout = "{rt}"
[restapi]
listen = "{ip}:8008"
peer_timeout = "{peer}"
allowlist = ["127.0.0.1/32", "{subnet}"]
{restapi}
[timings]
ttl = "{ttl}"
loop_wait = "{lw}"
retry_timeout = "{rt}"
[watchdog]
{watchdog}
[postgresql]
data_dir = "{data}"
bin_dir = "{bin}"
listen = "{ip}:{PG_PORT}"
socket_dir = "{sock}"
log_file = "{log}"
use_pg_rewind = true
remove_data_directory_on_rewind_failure = {reinit}
start_timeout = "20s"
pg_hba = ["local all all trust", "local replication all trust", "host all all 10.250.0.0/24 trust", "host replication all 10.250.0.0/24 trust"]
[postgresql.parameters]
fsync = "off"
wal_receiver_status_interval = "1s"
[bootstrap]
initdb = ["encoding=UTF8", "locale=C.UTF-8", "no-sync"]
[bootstrap.dcs]
maximum_lag_on_failover = 16777216
{dcs}
[bootstrap.dcs.postgresql.parameters]
{sync}"#,
            peer = o.peer_timeout,
            ttl = o.ttl,
            lw = o.loop_wait,
            rt = o.retry_timeout,
            data = self.data_dir(i).display(),
            bin = pg_bin().display(),
            sock = self.socket_dir(i).display(),
            log = self.net.dir().log(&format!("pg-n{i}")).display(),
            dcs = o.dcs,
            restapi = o.restapi,
            watchdog = o.watchdog,
            subnet = subnet,
            reinit = o.reinit_on_rewind_failure,
        )
    }

    pub fn start_agent(&mut self, i: usize) -> anyhow::Result<()> {
        let mut cmd = Command::new(agent_bin());
        cmd.arg("--config").arg(self.config_path(i)).arg("--log-json");
        let p = self.net.host(i).spawn(&format!("ha-n{i}"), cmd)?;
        self.agents[i - 1] = Some(p);
        Ok(())
    }

    pub fn agent(&self, i: usize) -> Option<&Proc> {
        self.agents[i - 1].as_ref()
    }

    /// Agent `i`'s log so far (it survives restarts of the agent: the file is appended to).
    pub fn agent_log(&self, i: usize) -> String {
        std::fs::read_to_string(self.net.dir().log(&format!("ha-n{i}"))).unwrap_or_default()
    }

    pub fn kill_agent(&mut self, i: usize) -> anyhow::Result<()> {
        if let Some(mut p) = self.agents[i - 1].take() {
            p.kill()?;
        }
        Ok(())
    }

    /// The postmaster's pid on host `i`, from `postmaster.pid`.
    pub fn postmaster_pid(&self, i: usize) -> Option<i32> {
        let t = std::fs::read_to_string(self.data_dir(i).join("postmaster.pid")).ok()?;
        t.lines().next()?.trim().parse().ok()
    }

    /// SQL through psql over the Unix socket, bounded to 3 s (a frozen server never answers).
    pub fn sql(&self, i: usize, sql: &str) -> anyhow::Result<String> {
        let mut c = Command::new("timeout");
        c.arg("3")
            .arg(pg_bin().join("psql"))
            .arg("-h")
            .arg(self.socket_dir(i))
            .args(["-p", &PG_PORT.to_string(), "-U", "postgres", "-d", "postgres"])
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .env("PGCONNECT_TIMEOUT", "2");
        let out = c.output()?;
        anyhow::ensure!(out.status.success(), "psql on n{i}: {}", String::from_utf8_lossy(&out.stderr).trim());
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    pub fn writable(&self, i: usize) -> bool {
        self.sql(i, "select pg_is_in_recovery()").is_ok_and(|s| s == "f")
    }

    /// `etcdctl get` of a cluster key from the first member that answers within a second
    /// (a member on a frozen or cut-off host must not hold the test up).
    pub fn etcd_get(&self, key: &str) -> Option<String> {
        let key = format!("/service/{SCOPE}/{key}");
        (0..self.etcd.len()).find_map(|m| {
            let host = self.net.host(self.etcd.host_of(m));
            let ep = self.etcd.endpoint(m);
            host.exec(&[
                "etcdctl",
                "--command-timeout=1s",
                "--dial-timeout=1s",
                "--endpoints",
                &ep,
                "get",
                "--print-value-only",
                &key,
            ])
            .ok()
            .map(|s| s.trim().to_owned())
        })
    }

    /// The leader key's value, if any.
    pub fn leader_key(&self) -> Option<String> {
        self.etcd_get("leader").filter(|s| !s.is_empty())
    }

    pub fn etcd_put(&self, key: &str, value: &str) -> anyhow::Result<()> {
        let key = format!("/service/{SCOPE}/{key}");
        self.etcd.etcdctl(&self.net, 0, &["put", &key, value]).map(drop)
    }

    /// Waits for a leader (other than those in `not`) whose PostgreSQL accepts writes.
    pub fn wait_primary(&self, timeout: Duration, not: &[usize]) -> anyhow::Result<usize> {
        wait_until(timeout, "a leader whose PostgreSQL accepts writes", || {
            let l = Self::index(&self.leader_key()?);
            (!not.contains(&l) && self.writable(l)).then_some(l)
        })
    }

    /// Waits until every member in `members` streams from `primary`.
    pub fn wait_streaming(&self, primary: usize, members: &[usize], timeout: Duration) -> anyhow::Result<()> {
        let ip = self.net.host(primary).ip().to_string();
        for &m in members {
            wait_ok(timeout, &format!("n{m} to stream from n{primary}"), || {
                let s = self.sql(m, "select status || ' ' || sender_host from pg_stat_wal_receiver")?;
                anyhow::ensure!(s == format!("streaming {ip}"), "n{m}: {s:?}");
                Ok(())
            })?;
        }
        Ok(())
    }

    /// ERROR lines the agents logged that the test did not expect.
    pub fn unexpected_errors(&self, expected: &[&str]) -> Vec<String> {
        self.agents.iter().flatten().flat_map(|p| p.unexpected_errors(expected)).collect()
    }

    pub fn sockets(&self) -> Vec<PathBuf> {
        (1..=3).map(|i| self.socket_dir(i)).collect()
    }
}

/// One acknowledged insert.
#[derive(Debug, Clone, Copy)]
pub struct Ack {
    pub id: i64,
    pub member: usize,
    pub at: Instant,
}

/// Inserts ids 1, 2, 3, ... into `acked(id)` on whichever member is primary, over the Unix
/// sockets, and records each insert that was acknowledged. Every statement is bounded (a frozen
/// or fenced server does not hang it); an id whose insert timed out is skipped, never retried.
pub struct Writer {
    stop: Arc<AtomicBool>,
    acks: Arc<Mutex<Vec<Ack>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    pub fn start(sockets: Vec<PathBuf>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let acks = Arc::new(Mutex::new(Vec::new()));
        let (s, a) = (stop.clone(), acks.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("writer runtime");
            rt.block_on(write_loop(sockets, s, a));
        });
        Self { stop, acks, thread: Some(thread) }
    }

    pub fn acks(&self) -> Vec<Ack> {
        self.acks.lock().expect("acks lock").clone()
    }

    /// The first acknowledged write after `t` on a member other than `old`.
    pub fn first_ack_elsewhere(&self, t: Instant, old: usize) -> Option<Instant> {
        self.acks().iter().find(|a| a.at > t && a.member != old).map(|a| a.at)
    }

    pub fn stop(mut self) -> Vec<Ack> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.acks()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn connect(socket: &Path) -> Option<tokio_postgres::Client> {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host_path(socket).port(PG_PORT).user("postgres").dbname("postgres").connect_timeout(Duration::from_millis(500));
    let (client, conn) =
        tokio::time::timeout(Duration::from_millis(700), cfg.connect(tokio_postgres::NoTls)).await.ok()?.ok()?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let row = tokio::time::timeout(Duration::from_millis(500), client.query_one("select pg_is_in_recovery()", &[]))
        .await
        .ok()?
        .ok()?;
    (!row.get::<_, bool>(0)).then_some(client)
}

async fn write_loop(sockets: Vec<PathBuf>, stop: Arc<AtomicBool>, acks: Arc<Mutex<Vec<Ack>>>) {
    let mut id: i64 = 1;
    let mut current: Option<(usize, tokio_postgres::Client)> = None;
    while !stop.load(Ordering::SeqCst) {
        let Some((m, client)) = current.take() else {
            // Ask every member at once: a frozen one must not delay finding the new primary.
            let mut tries = tokio::task::JoinSet::new();
            for (i, s) in sockets.iter().enumerate() {
                let s = s.clone();
                tries.spawn(async move { connect(&s).await.map(|c| (i + 1, c)) });
            }
            // Bounded: a frozen member's connect would hold the scan for its whole timeout and
            // blur the moment a new primary appears.
            let _ = tokio::time::timeout(Duration::from_millis(150), async {
                while let Some(r) = tries.join_next().await {
                    if let Ok(Some(found)) = r {
                        current = Some(found);
                        break;
                    }
                }
            })
            .await;
            tries.abort_all();
            if current.is_none() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            continue;
        };
        let r =
            tokio::time::timeout(Duration::from_secs(1), client.execute("insert into acked(id) values ($1)", &[&id]))
                .await;
        let this = id;
        id += 1;
        if let Ok(Ok(_)) = r {
            acks.lock().expect("acks lock").push(Ack { id: this, member: m, at: Instant::now() });
            current = Some((m, client));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Which acknowledged ids member `i` does not have.
pub fn lost(c: &Cluster, i: usize, acks: &[Ack]) -> anyhow::Result<Vec<i64>> {
    let have: std::collections::HashSet<i64> =
        c.sql(i, "select id from acked")?.lines().filter_map(|l| l.trim().parse().ok()).collect();
    Ok(acks.iter().map(|a| a.id).filter(|id| !have.contains(id)).collect())
}
