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
    /// A stand-in watchdog on every host (mode required, Patroni's testing driver); when one
    /// fires it kills its host's PostgreSQL.
    pub standin_watchdog: bool,
    /// etcd with TLS client certificates and user/password authentication.
    pub etcd_secure: bool,
    /// etcd's `--lease-checkpoint` experiment (see `EtcdOptions`).
    pub etcd_lease_checkpoint: bool,
    /// Config text appended at the end: first lines of `[bootstrap.dcs.postgresql.parameters]`,
    /// then whole sections.
    pub extra: String,
    /// Extra lines of the `[postgresql]` section.
    pub postgresql: String,
    /// Each agent reads a Patroni YAML file (the reference deployment's shape: TLS and
    /// credentials to etcd when `etcd_secure`, REST authentication) instead of ha-agent's TOML.
    pub patroni_yaml: bool,
    /// `pg_hba` in the cluster's config key (`bootstrap.dcs.postgresql.pg_hba`) instead of in
    /// each member's file.
    pub cluster_pg_hba: bool,
    /// Whole sections appended to one member's file only (`[tags]`, say), by member number.
    pub member: Vec<(usize, String)>,
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
            standin_watchdog: false,
            etcd_secure: false,
            etcd_lease_checkpoint: false,
            extra: String::new(),
            postgresql: String::new(),
            patroni_yaml: false,
            cluster_pg_hba: false,
            member: Vec::new(),
        }
    }
}

impl Opts {
    /// The lab's timings (`deploy/lab/lab`: ttl 2 s, loop_wait 500 ms, retry_timeout 500 ms,
    /// etcd election 500 ms), asynchronous replication, reinit when a rewind fails.
    pub fn lab() -> Self {
        Opts {
            sync: false,
            ttl: "2s",
            loop_wait: "500ms",
            retry_timeout: "500ms",
            etcd_election_ms: 500,
            reinit_on_rewind_failure: true,
            ..Opts::default()
        }
    }
}

pub struct Cluster {
    pub net: Net,
    pub etcd: EtcdCluster,
    agents: Vec<Option<Proc>>,
    /// Stand-in watchdogs, one per host (`Opts::standin_watchdog`).
    pub watchdogs: Vec<outrigger_testkit::StandInWatchdog>,
    tmps: Vec<tempfile::TempDir>,
    /// TLS files of a secure etcd.
    etcd_tls: Option<outrigger_testkit::EtcdTls>,
    pub opts: Opts,
}

/// The etcd root password of `Opts::etcd_secure` clusters.
pub const ETCD_PASSWORD: &str = "s3cret-etcd";
/// The test clusters' `pg_hba`: trust on the socket and from the hosts' subnet.
const HBA: &str = r#"pg_hba = ["local all all trust", "local replication all trust", "host all all 10.250.0.0/24 trust", "host replication all 10.250.0.0/24 trust"]"#;
/// REST API credentials of the Patroni YAML configs (`Opts::patroni_yaml`).
pub const REST_USER: &str = "test_user";
pub const REST_PASSWORD: &str = "test_pass";

impl Cluster {
    pub fn start(test: &str, opts: Opts) -> anyhow::Result<Self> {
        agent_bin();
        let net = Net::start(test, 3)?;
        // Fast elections: etcd's shortest lease is ~1.5 x the election timeout, and a leader
        // change re-extends every lease, so both bound how fast a dead primary is noticed.
        let election_ms = opts.etcd_election_ms;
        let etcd_tls = if opts.etcd_secure {
            let ips: Vec<_> = net.hosts().iter().map(outrigger_testkit::Host::ip).collect();
            Some(outrigger_testkit::make_tls_for(&net.dir().sub("etcd-tls")?, &ips)?)
        } else {
            None
        };
        let mut etcd = EtcdCluster::start(
            &net,
            &[1, 2, 3],
            EtcdOptions {
                heartbeat_ms: election_ms / 10,
                election_ms,
                client_tls: etcd_tls.clone(),
                lease_checkpoint: opts.etcd_lease_checkpoint,
                ..EtcdOptions::default()
            },
        )?;
        if opts.etcd_secure {
            etcd.enable_auth(&net, ETCD_PASSWORD)?;
        }
        let mut tmps = Vec::new();
        for h in net.hosts() {
            let t = tempfile::Builder::new().prefix(&format!("otk-ha-{}-", h.name())).tempdir_in("/tmp")?;
            // The postgres user must reach the data directory and socket below it.
            std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755))?;
            tmps.push(t);
        }
        let mut c =
            Self { net, etcd, agents: (0..3).map(|_| None).collect(), watchdogs: Vec::new(), tmps, etcd_tls, opts };
        if c.opts.standin_watchdog {
            for i in 1..=3 {
                let data = c.data_dir(i);
                let w = outrigger_testkit::StandInWatchdog::start(&c.watchdog_path(i), move || {
                    kill_postgres_in(&data);
                })?;
                c.watchdogs.push(w);
            }
        }
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
        self.tmps[i - 1].path().join(if self.opts.patroni_yaml { "patroni.yml" } else { "ha-agent.toml" })
    }

    /// Member `i`'s config as Patroni's YAML, in the reference deployment's shape.
    fn patroni_yaml(&self, i: usize) -> String {
        let o = &self.opts;
        let ip = self.net.host(i).ip();
        let hosts: Vec<String> = self
            .etcd
            .endpoints()
            .iter()
            .map(|e| e.trim_start_matches("https://").trim_start_matches("http://").to_owned())
            .collect();
        let etcd_tls = self.etcd_tls.as_ref().map_or(String::new(), |t| {
            format!(
                "  protocol: https\n  cacert: {}\n  cert: {}\n  key: {}\n  username: root\n  password: {ETCD_PASSWORD}\n",
                t.ca.display(),
                t.cert.display(),
                t.key.display()
            )
        });
        let secs = |d: &str| match d.strip_suffix("ms") {
            Some(ms) => ms.parse::<f64>().unwrap_or(1000.0) / 1000.0,
            None => d.trim_end_matches('s').parse::<f64>().unwrap_or(1.0),
        };
        format!(
            "scope: {SCOPE}\nnamespace: /service/\nname: n{i}\n\
             log:\n  level: INFO\n  dir: /var/log/patroni\n  file_num: 4\n\
             restapi:\n  listen: {ip}:8008\n  connect_address: {ip}:8008\n  authentication:\n    username: {REST_USER}\n    password: {REST_PASSWORD}\n\
             etcd3:\n  hosts: {hosts}\n{etcd_tls}\
             bootstrap:\n  dcs:\n    ttl: {ttl}\n    loop_wait: {lw}\n    retry_timeout: {rt}\n    maximum_lag_on_failover: 16777216\n    master_start_timeout: 300\n\
             \x20   postgresql:\n      use_pg_rewind: true\n      use_slots: true\n\
             \x20 initdb:\n    - encoding: UTF8\n    - locale: C.UTF-8\n    - no-sync\n\
             postgresql:\n  use_unix_socket: true\n  listen: {ip}:{PG_PORT}\n  connect_address: {ip}:{PG_PORT}\n  data_dir: {data}/\n  bin_dir: {bin}\n\
             \x20 pgpass: /tmp/pgpass-n{i}\n  pg_ctl_timeout: 20\n  use_pg_rewind: true\n\
             \x20 authentication:\n    superuser:\n      username: postgres\n    replication:\n      username: replicator\n\
             \x20 create_replica_methods:\n    - basebackup\n\
             \x20 pg_hba:\n    - local all all trust\n    - local replication all trust\n    - host all all 10.250.0.0/24 trust\n    - host replication all 10.250.0.0/24 trust\n\
             \x20 parameters:\n    unix_socket_directories: {sock}\n    fsync: off\n    wal_receiver_status_interval: 1s\n\
             watchdog:\n  mode: automatic\n  safety_margin: -1\n\
             tags:\n  nofailover: false\n  noloadbalance: false\n  clonefrom: false\n  nosync: false\n",
            hosts = hosts.join(","),
            ttl = secs(o.ttl),
            lw = secs(o.loop_wait),
            rt = secs(o.retry_timeout),
            data = self.data_dir(i).display(),
            bin = pg_bin().display(),
            sock = self.socket_dir(i).display(),
        )
    }

    pub fn watchdog_path(&self, i: usize) -> PathBuf {
        self.tmps[i - 1].path().join("watchdog")
    }

    fn config(&self, i: usize) -> String {
        if self.opts.patroni_yaml {
            return self.patroni_yaml(i);
        }
        let o = &self.opts;
        let ip = self.net.host(i).ip();
        let endpoints = self.etcd.endpoints().iter().map(|e| format!("\"{e}\"")).collect::<Vec<_>>().join(", ");
        let subnet = format!("{}.0/24", outrigger_testkit::SUBNET_PREFIX);
        let watchdog = if o.standin_watchdog {
            format!(
                "mode = \"required\"\ndriver = \"testing\"\ndevice = \"{}\"\nsafety_margin = -1",
                self.watchdog_path(i).display()
            )
        } else {
            o.watchdog.clone()
        };
        let etcd_secure = self.etcd_tls.as_ref().map_or(String::new(), |t| {
            format!(
                "ca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\nusername = \"root\"\npassword = \"{ETCD_PASSWORD}\"\n",
                t.ca.display(),
                t.cert.display(),
                t.key.display()
            )
        });
        let sync = if o.sync { "synchronous_commit = \"on\"\nsynchronous_standby_names = \"*\"\n" } else { "" };
        format!(
            r#"name = "n{i}"
scope = "{SCOPE}"
[log]
level = "info,ha_agent=debug"
[etcd]
endpoints = [{endpoints}]
request_timeout = "{rt}"
{etcd_secure}
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
{postgresql}
{local_hba}
[postgresql.parameters]
fsync = "off"
wal_receiver_status_interval = "1s"
[bootstrap]
initdb = ["encoding=UTF8", "locale=C.UTF-8", "no-sync"]
[bootstrap.dcs]
maximum_lag_on_failover = 16777216
{dcs}
{cluster_hba}
[bootstrap.dcs.postgresql.parameters]
{sync}
{extra}
{member}"#,
            peer = o.peer_timeout,
            local_hba = if o.cluster_pg_hba { "" } else { HBA },
            cluster_hba = if o.cluster_pg_hba { format!("[bootstrap.dcs.postgresql]\n{HBA}") } else { String::new() },
            ttl = o.ttl,
            lw = o.loop_wait,
            rt = o.retry_timeout,
            data = self.data_dir(i).display(),
            bin = pg_bin().display(),
            sock = self.socket_dir(i).display(),
            log = self.net.dir().log(&format!("pg-n{i}")).display(),
            dcs = o.dcs,
            restapi = o.restapi,
            watchdog = watchdog,
            etcd_secure = etcd_secure,
            extra = o.extra,
            postgresql = o.postgresql,
            subnet = subnet,
            reinit = o.reinit_on_rewind_failure,
            member = o.member.iter().filter(|(m, _)| *m == i).map(|(_, t)| t.as_str()).collect::<Vec<_>>().join("\n"),
        )
    }

    /// Replaces member `i`'s own sections (`Opts::member`) and rewrites its file; the agent
    /// reads it when next started.
    pub fn set_member_config(&mut self, i: usize, sections: &str) -> anyhow::Result<()> {
        self.opts.member.retain(|(m, _)| *m != i);
        self.opts.member.push((i, sections.to_owned()));
        std::fs::write(self.config_path(i), self.config(i))?;
        Ok(())
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

    /// Stops the agent (Patroni or ha-agent) on host `i` as systemd would: SIGTERM, then
    /// waits for it to exit (it stops its PostgreSQL on the way).
    pub fn stop_agent(&mut self, i: usize) -> anyhow::Result<()> {
        if let Some(mut p) = self.agents[i - 1].take() {
            p.stop(Duration::from_secs(60))?;
        }
        Ok(())
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
            self.etcd
                .etcdctl_quick(&self.net, m, "1s", &["get", "--print-value-only", &key])
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

// ---------------------------------------------------------------------------------------------
// Fencing check: a local poller on every host.

/// One write a host's local poller got acknowledged: by `member`, on `timeline`, `at`.
#[derive(Debug, Clone, Copy)]
pub struct LocalAck {
    pub member: usize,
    pub timeline: u32,
    pub at: Instant,
}

/// On every host, a poller inside its namespace writes to the local PostgreSQL over the Unix
/// socket every 5 ms and records each acknowledged write with the time (one clock, one
/// machine). A server that takes writes is seen taking them, whatever the agents believe.
pub struct Pollers {
    stop: Arc<AtomicBool>,
    acks: Arc<Mutex<Vec<LocalAck>>>,
    tasks: Vec<(outrigger_testkit::NsRuntime, tokio::task::JoinHandle<()>)>,
}

/// The table the pollers write (created on the primary by the tests' `healthy`).
pub const FENCE_PROBE_TABLE: &str = "create table if not exists fence_probe(member int, id bigserial)";

impl Pollers {
    pub fn start(c: &Cluster) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let acks = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 1..=3 {
            let rt = c.net.host(i).runtime()?;
            let task = rt.spawn(poll_loop(i, c.socket_dir(i), stop.clone(), acks.clone()));
            tasks.push((rt, task));
        }
        Ok(Self { stop, acks, tasks })
    }

    pub fn acks(&self) -> Vec<LocalAck> {
        let mut a = self.acks.lock().expect("acks lock").clone();
        a.sort_by_key(|x| x.at);
        a
    }

    /// Stops the pollers and returns every acknowledged write, in time order.
    pub fn stop(mut self) -> Vec<LocalAck> {
        self.halt();
        self.acks()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for (rt, task) in self.tasks.drain(..) {
            rt.block_on(async move {
                let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
            });
        }
    }
}

impl Drop for Pollers {
    fn drop(&mut self) {
        self.halt();
    }
}

async fn poll_loop(member: usize, socket: PathBuf, stop: Arc<AtomicBool>, acks: Arc<Mutex<Vec<LocalAck>>>) {
    const INSERT: &str = "insert into fence_probe(member) values ($1) \
        returning ('x' || substr(pg_walfile_name(pg_current_wal_insert_lsn()), 1, 8))::bit(32)::int";
    let mut client: Option<tokio_postgres::Client> = None;
    while !stop.load(Ordering::SeqCst) {
        let Some(c) = client.as_ref() else {
            let mut cfg = tokio_postgres::Config::new();
            cfg.host_path(&socket)
                .port(PG_PORT)
                .user("postgres")
                .dbname("postgres")
                .application_name("fence-poller")
                .connect_timeout(Duration::from_millis(500));
            if let Ok(Ok((c, conn))) =
                tokio::time::timeout(Duration::from_millis(700), cfg.connect(tokio_postgres::NoTls)).await
            {
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                client = Some(c);
            } else {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            continue;
        };
        let member_id = i32::try_from(member).unwrap_or(0);
        match tokio::time::timeout(Duration::from_secs(1), c.query_one(INSERT, &[&member_id])).await {
            Ok(Ok(row)) => {
                let tl: i32 = row.get(0);
                let at = Instant::now();
                acks.lock().expect("acks lock").push(LocalAck { member, timeline: tl as u32, at });
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            // A replica refuses (read-only); the server answered, keep the session.
            Ok(Err(e)) if e.as_db_error().is_some() => tokio::time::sleep(Duration::from_millis(20)).await,
            // The session broke, or the statement hangs: start a new one.
            _ => client = None,
        }
    }
}

/// Each primary incarnation (member, timeline) with its first and last acknowledged write.
#[derive(Debug, Clone)]
pub struct Incarnation {
    pub member: usize,
    pub timeline: u32,
    pub first: Instant,
    pub last: Instant,
    pub writes: usize,
}

/// The fence gaps between consecutive primaries: from the old one's last acknowledged write to
/// the new one's first. Errors if two incarnations' acknowledged writes overlap in time.
pub fn check_fencing(acks: &[LocalAck]) -> anyhow::Result<(Vec<Incarnation>, Vec<Duration>)> {
    let mut inc: Vec<Incarnation> = Vec::new();
    for a in acks {
        match inc.iter_mut().find(|i| i.member == a.member && i.timeline == a.timeline) {
            Some(i) => {
                i.first = i.first.min(a.at);
                i.last = i.last.max(a.at);
                i.writes += 1;
            }
            None => {
                inc.push(Incarnation { member: a.member, timeline: a.timeline, first: a.at, last: a.at, writes: 1 })
            }
        }
    }
    inc.sort_by_key(|i| i.first);
    let mut gaps = Vec::new();
    let mut prev: Option<&Incarnation> = None;
    for i in &inc {
        if let Some(p) = prev {
            anyhow::ensure!(
                p.last < i.first,
                "two primaries acknowledged writes at the same time: n{} (timeline {}) until {:?} after n{} (timeline {}) began; incarnations: {inc:#?}",
                p.member,
                p.timeline,
                p.last.duration_since(i.first),
                i.member,
                i.timeline
            );
            gaps.push(i.first - p.last);
        }
        if prev.is_none_or(|p| i.last > p.last) {
            prev = Some(i);
        }
    }
    Ok((inc, gaps))
}

/// Stops the pollers, checks that no two primaries took writes at once, and prints the fence
/// gaps.
pub fn assert_fenced(what: &str, pollers: Pollers) -> anyhow::Result<Vec<Duration>> {
    let acks = pollers.stop();
    let (inc, gaps) = check_fencing(&acks)?;
    let shown: Vec<String> = gaps.iter().map(|g| format!("{:.3}s", g.as_secs_f64())).collect();
    println!(
        "{what}: {} local writes acknowledged by {} primary incarnation(s); fence gaps {}",
        acks.len(),
        inc.len(),
        shown.join(", ")
    );
    Ok(gaps)
}

impl Cluster {
    /// SIGKILL of host `i`'s postmaster and every process working in its data directory (what
    /// a watchdog reset does to PostgreSQL).
    pub fn kill_postgres(&self, i: usize) {
        kill_postgres_in(&self.data_dir(i));
    }

    /// Rewrites host `i`'s config file with `edit` (for a reload).
    pub fn edit_config(&self, i: usize, edit: impl FnOnce(String) -> String) -> anyhow::Result<()> {
        let path = self.config_path(i);
        let text = std::fs::read_to_string(&path)?;
        std::fs::write(&path, edit(text))?;
        Ok(())
    }

    /// Host `i`'s generated config (for a second agent started by hand).
    pub fn config_text(&self, i: usize) -> String {
        self.config(i)
    }
}

/// SIGKILL of the postmaster of `data_dir` and of every process working in it.
pub fn kill_postgres_in(data_dir: &Path) {
    let data = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    let mut pids: Vec<i32> = std::fs::read_to_string(data_dir.join("postmaster.pid"))
        .ok()
        .and_then(|t| t.lines().next().and_then(|l| l.trim().parse().ok()))
        .into_iter()
        .collect();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
            if std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|c| c == data) {
                pids.push(pid);
            }
        }
    }
    for p in pids {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), nix::sys::signal::Signal::SIGKILL);
    }
}

// ---------------------------------------------------------------------------------------------
// A client host with HAProxy in front of the members, and Patroni itself on the same hosts.

/// The read-write port HAProxy listens on, on the client host's loopback.
pub const RW_PORT: u16 = 5000;

/// Adds host `client` and starts HAProxy there: `127.0.0.1:RW_PORT` goes to the member whose
/// REST API (ha-agent's or Patroni's, on :8008) answers `GET /primary` with 200, checked every
/// 200 ms, sessions cut when it goes down. Returns HAProxy and a runtime inside the client's
/// namespace for workloads.
pub fn start_haproxy(net: &mut Net) -> anyhow::Result<(Proc, outrigger_testkit::NsRuntime)> {
    let servers: String =
        (1..=3).map(|i| format!("    server n{i} {}:{PG_PORT} check port 8008\n", net.host(i).ip())).collect();
    let cfg = format!(
        "global\n    maxconn 200\n\
         defaults\n    mode tcp\n    timeout connect 1s\n    timeout client 30s\n    timeout server 30s\n    timeout check 500ms\n\
         frontend rw\n    bind 127.0.0.1:{RW_PORT}\n    default_backend primary\n\
         backend primary\n    option httpchk\n    http-check send meth GET uri /primary\n    http-check expect status 200\n\
         \x20   default-server inter 200ms fall 1 rise 1 on-marked-down shutdown-sessions\n{servers}"
    );
    let client = net.add_host("client")?;
    let path = client.dir().path().join("haproxy.cfg");
    std::fs::write(&path, cfg)?;
    let mut cmd = Command::new("haproxy");
    cmd.arg("-db").arg("-f").arg(&path);
    let haproxy = client.spawn("haproxy", cmd)?;
    let rt = client.runtime()?;
    Ok((haproxy, rt))
}

/// `postgres`'s uid and gid.
pub fn postgres_ids() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let out = Command::new("id").args([flag, "postgres"]).output().expect("id postgres");
        String::from_utf8_lossy(&out.stdout).trim().parse().expect("numeric id")
    };
    (id("-u"), id("-g"))
}

impl Cluster {
    /// Starts real Patroni (the test kit's 4.x from PyPI) on host `i` instead of ha-agent
    /// (start the cluster with `agents: 0`): same scope, etcd, ports and socket folder, so
    /// `sql`, `wait_primary` and HAProxy work the same; PostgreSQL set up as the ha-agent
    /// clusters here are (`fsync = off`, pg_rewind allowed with `wal_log_hints = on`). `dcs` is extra YAML under
    /// `bootstrap.dcs` (indented four spaces).
    pub fn start_patroni(&mut self, i: usize, dcs: &str) -> anyhow::Result<()> {
        let (uid, gid) = postgres_ids();
        let home = self.tmps[i - 1].path().join("patroni");
        for d in [&home, &self.socket_dir(i), &self.data_dir(i)] {
            std::fs::create_dir_all(d)?;
            std::os::unix::fs::chown(d, Some(uid), Some(gid))?;
        }
        std::fs::set_permissions(self.data_dir(i), std::fs::Permissions::from_mode(0o700))?;
        let ip = self.net.host(i).ip();
        let etcd_hosts: Vec<String> =
            self.etcd.endpoints().iter().map(|e| e.trim_start_matches("http://").to_owned()).collect();
        let yaml = format!(
            "scope: {SCOPE}\nnamespace: /service/\nname: n{i}\n\
             restapi:\n  listen: {ip}:8008\n  connect_address: {ip}:8008\n  allowlist: ['127.0.0.1/32', '10.250.0.0/24']\n\
             etcd3:\n  hosts: {hosts}\n\
             bootstrap:\n  dcs:\n    ttl: 20\n    loop_wait: 1\n    retry_timeout: 5\n    maximum_lag_on_failover: 16777216\n{dcs}\
             \x20   postgresql:\n      use_pg_rewind: true\n      parameters:\n        wal_receiver_status_interval: 1s\n        wal_log_hints: 'on'\n\
             \x20 initdb:\n  - encoding: UTF8\n  - locale: C.UTF-8\n\
             \x20 pg_hba:\n  - local all all trust\n  - local replication all trust\n  - host all all 10.250.0.0/24 trust\n  - host replication all 10.250.0.0/24 trust\n\
             postgresql:\n  listen: {ip}:{PG_PORT}\n  connect_address: {ip}:{PG_PORT}\n  data_dir: {data}\n  bin_dir: {bin}\n  pgpass: {home}/pgpass\n\
             \x20 authentication:\n    superuser:\n      username: postgres\n    replication:\n      username: replicator\n\
             \x20 parameters:\n    unix_socket_directories: {sock}\n    fsync: 'off'\n\
             tags: {{}}\n",
            hosts = etcd_hosts.join(","),
            data = self.data_dir(i).display(),
            bin = pg_bin().display(),
            home = home.display(),
            sock = self.socket_dir(i).display(),
        );
        let path = home.join("patroni.yml");
        std::fs::write(&path, yaml)?;
        std::os::unix::fs::chown(&path, Some(uid), Some(gid))?;
        let bin = outrigger_testkit::python::patroni_bin()?;
        // setpriv execs Patroni as `postgres` in place, so the pid the kit holds is Patroni's.
        let mut cmd = Command::new("setpriv");
        cmd.args([format!("--reuid={uid}"), format!("--regid={gid}"), "--clear-groups".into()])
            .arg(bin.join("patroni"))
            .arg(&path)
            .env("HOME", &home);
        let p = self.net.host(i).spawn(&format!("patroni-n{i}"), cmd)?;
        self.agents[i - 1] = Some(p);
        Ok(())
    }

    /// The `patroni.yml` [`Cluster::start_patroni`] wrote for host `i`.
    pub fn patroni_yml(&self, i: usize) -> PathBuf {
        self.tmps[i - 1].path().join("patroni").join("patroni.yml")
    }

    /// Replaces Patroni on host `i` with ha-agent reading the same `patroni.yml`, as a user
    /// migrating would: Patroni is stopped (SIGTERM: it stops its PostgreSQL, as on any
    /// shutdown), then ha-agent starts with `--config patroni.yml`.
    pub fn migrate_to_agent(&mut self, i: usize) -> anyhow::Result<()> {
        self.stop_agent(i)?;
        let mut cmd = Command::new(agent_bin());
        cmd.arg("--config").arg(self.patroni_yml(i)).arg("--log-json");
        self.agents[i - 1] = Some(self.net.host(i).spawn(&format!("ha-n{i}"), cmd)?);
        Ok(())
    }
}
