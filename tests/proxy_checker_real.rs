//! proxy-checker behind real HAProxy (Debian's 2.6) in front of a 3-node cluster in network
//! namespaces.
//!
//! Every test builds hosts n1..n3 (etcd member, PostgreSQL, proxy-checker on each) and a
//! client host running HAProxy with a read-write port (check `/primary`) and a read-only port
//! (check `/replica?lag=1MB`, plus the agent port for weights). Clients connect through
//! HAProxy and ask PostgreSQL which server they reached (`inet_server_addr()`), so the
//! assertions are about where connections land, not about what the daemons say.
//!
//! Roles are driven two ways:
//! - by hand, as an HA agent would: PostgreSQL primary and streaming replicas from the test
//!   kit, and the Patroni keys (leader, members, status, config) written by the test through
//!   `outrigger-schema`'s layout and types;
//! - by real Patroni (`patroni[etcd3,psycopg3]` from PyPI, installed once into the test kit's
//!   virtualenv under `target/venvs/`), with a switchover through `patronictl`.
//!
//! Timings are short (HAProxy checks every 200 ms, proxy-checker's defaults of 1 s staleness),
//! waits are on conditions with deadlines, and the times measured are printed, not asserted
//! beyond the bounds the design promises (the figures come from `bench/proxy-checker`).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use outrigger_etcd::{ConnectOptions, Etcd};
use outrigger_schema::{
    ClusterKey, ConfigValue, KeyLayout, MemberRole, MemberValue, PATRONI_COMPAT_VERSION, StatusValue,
};
use outrigger_testkit::{
    EtcdCluster, EtcdOptions, Net, NsRuntime, PgOptions, Postgres, Proc, hold_for, wait_ok, wait_until,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SCOPE: &str = "batman";
const CHECK_PORT: u16 = 8009;
const AGENT_PORT: u16 = 8010;
const RW_PORT: u16 = 15432;
const RO_PORT: u16 = 15433;
/// proxy-checker's default `freshness.etcd_max_age`, which the tests run with.
const ETCD_MAX_AGE: Duration = Duration::from_secs(1);

fn proxy_checker_bin() -> PathBuf {
    outrigger_testkit::bin::daemon("proxy-checker")
}

fn layout() -> KeyLayout {
    KeyLayout::new("service", SCOPE).expect("valid layout")
}

/// The uid and gid of the `postgres` user, for processes and folders that must be its.
fn postgres_ids() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let out = Command::new("id").args([flag, "postgres"]).output().expect("run id");
        String::from_utf8_lossy(&out.stdout).trim().parse().expect("numeric id")
    };
    (id("-u"), id("-g"))
}

/// The cluster under test and everything around it. Fields drop in declaration order: HAProxy
/// and the daemons before PostgreSQL and etcd, and the namespaces last.
struct Cluster {
    haproxy: Option<Proc>,
    /// HAProxy's admin socket lives here: socket paths must be short (HAProxy allows 97 bytes).
    haproxy_dir: tempfile::TempDir,
    checkers: Vec<Proc>,
    patroni: Vec<Proc>,
    pgs: Vec<Postgres>,
    etcd: EtcdCluster,
    etcd_client: Etcd,
    client: NsRuntime,
    net: Net,
}

impl Cluster {
    /// Hosts n1..n3 with an etcd member each, and a client host.
    fn new(test: &str) -> Self {
        let mut net = Net::start(test, 3).expect("namespaces");
        net.add_host("client").expect("client host");
        let etcd = EtcdCluster::start(&net, &[1, 2, 3], EtcdOptions::default()).expect("etcd");
        let client = net.by_name("client").expect("client").runtime().expect("client runtime");
        let endpoints = etcd.endpoints();
        let etcd_client = client
            .block_on(async move {
                let mut o = ConnectOptions::new(endpoints);
                o.request_timeout = Duration::from_secs(3);
                Etcd::connect(&o).await
            })
            .expect("etcd client");
        let haproxy_dir = tempfile::Builder::new().prefix("otk-haproxy").tempdir().expect("haproxy dir");
        Self {
            haproxy: None,
            haproxy_dir,
            checkers: Vec::new(),
            patroni: Vec::new(),
            pgs: Vec::new(),
            etcd,
            etcd_client,
            client,
            net,
        }
    }

    fn ip(&self, host: usize) -> String {
        self.net.host(host).ip().to_string()
    }

    /// 1-based host index of an address.
    fn host_of(&self, ip: &str) -> usize {
        (1..=3).find(|h| self.ip(*h) == ip).unwrap_or_else(|| panic!("{ip} is not a cluster host"))
    }

    /// PostgreSQL primary on n1 and streaming replicas on n2 and n3, from the test kit.
    fn start_postgres(&mut self) {
        let opts = PgOptions {
            settings: vec![
                ("wal_sender_timeout".into(), "2s".into()),
                ("wal_receiver_timeout".into(), "2s".into()),
                ("wal_keep_size".into(), "256MB".into()),
            ],
            ..PgOptions::default()
        };
        let primary = Postgres::init_primary(self.net.host(1), "n1", opts.clone()).expect("primary");
        let r2 = Postgres::replica_of(self.net.host(2), "n2", &primary, opts.clone()).expect("replica n2");
        let r3 = Postgres::replica_of(self.net.host(3), "n3", &primary, opts).expect("replica n3");
        self.pgs = vec![primary, r2, r3];
    }

    fn pg(&self, host: usize) -> &Postgres {
        &self.pgs[host - 1]
    }

    /// Starts proxy-checker on every host, reaching its PostgreSQL over the Unix socket in
    /// `socket_dirs[i]`.
    fn start_checkers(&mut self, socket_dirs: &[PathBuf]) {
        let endpoints = self.etcd.endpoints().iter().map(|e| format!("\"{e}\"")).collect::<Vec<_>>().join(", ");
        for host in 1..=3 {
            let ip = self.ip(host);
            let config = format!(
                "name = \"n{host}\"\nscope = \"{SCOPE}\"\nlisten = \"{ip}:{CHECK_PORT}\"\n\
                 [postgresql]\nconninfo = \"host={} port=5432 user=postgres dbname=postgres\"\n\
                 [agent]\nlisten = \"{ip}:{AGENT_PORT}\"\n\
                 [etcd]\nendpoints = [{endpoints}]\n",
                socket_dirs[host - 1].display()
            );
            let path = self.net.dir().path().join(format!("proxy-checker-n{host}.toml"));
            std::fs::write(&path, config).expect("write proxy-checker config");
            let mut cmd = Command::new(proxy_checker_bin());
            cmd.arg("--config").arg(&path).env("RUST_LOG", "info");
            let proc = self.net.host(host).spawn(&format!("proxy-checker-n{host}"), cmd).expect("start proxy-checker");
            self.checkers.push(proc);
        }
        for host in 1..=3 {
            let addr = format!("{}:{CHECK_PORT}", self.ip(host));
            wait_ok(Duration::from_secs(10), &format!("proxy-checker on n{host} to listen"), || {
                self.http_status(&addr, "/liveness").map(drop)
            })
            .expect("proxy-checker up");
        }
    }

    /// HAProxy on the client host: read-write and read-only ports on its loopback, checks
    /// against proxy-checker every 200 ms, and an admin socket for reading server states.
    fn start_haproxy(&mut self) {
        let dir = self.net.dir().path();
        let servers = |extra: &str| {
            (1..=3)
                .map(|h| format!("    server n{h} {}:5432 check port {CHECK_PORT}{extra}\n", self.ip(h)))
                .collect::<String>()
        };
        let cfg = format!(
            "global\n    maxconn 200\n    stats socket {sock} mode 600 level admin\n\
             defaults\n    mode tcp\n    timeout connect 1s\n    timeout client 30s\n    timeout server 30s\n    timeout check 500ms\n\
             frontend rw\n    bind 127.0.0.1:{RW_PORT}\n    default_backend primary\n\
             frontend ro\n    bind 127.0.0.1:{RO_PORT}\n    default_backend replicas\n\
             backend primary\n    option httpchk\n    http-check send meth GET uri /primary\n    http-check expect status 200\n\
             \x20   default-server inter 200ms fall 1 rise 1 on-marked-down shutdown-sessions\n{rw}\
             backend replicas\n    balance roundrobin\n    option httpchk\n    http-check send meth GET uri /replica?lag=1MB\n    http-check expect status 200\n\
             \x20   default-server inter 200ms fall 1 rise 1 on-marked-down shutdown-sessions agent-check agent-port {AGENT_PORT} agent-inter 500ms agent-send \"/replica?lag=1MB\\n\"\n{ro}",
            sock = self.haproxy_dir.path().join("haproxy.sock").display(),
            rw = servers(""),
            ro = servers(""),
        );
        let path = dir.join("haproxy.cfg");
        std::fs::write(&path, cfg).expect("write haproxy.cfg");
        let check = Command::new("haproxy").arg("-c").arg("-f").arg(&path).output().expect("run haproxy -c");
        assert!(check.status.success(), "generated haproxy.cfg is invalid: {}", String::from_utf8_lossy(&check.stderr));
        let mut cmd = Command::new("haproxy");
        cmd.arg("-db").arg("-f").arg(&path);
        let client = self.net.by_name("client").expect("client host");
        self.haproxy = Some(client.spawn("haproxy", cmd).expect("start haproxy"));
        wait_until(Duration::from_secs(10), "HAProxy's admin socket", || self.haproxy_states().ok())
            .expect("haproxy up");
        self.wait_first_checks();
    }

    /// Every server's state from HAProxy's `show stat`, over its Unix socket (no network).
    fn haproxy_states(&self) -> anyhow::Result<Vec<ServerState>> {
        let mut s = std::os::unix::net::UnixStream::connect(self.haproxy_dir.path().join("haproxy.sock"))?;
        s.write_all(b"show stat\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        let mut lines = out.lines();
        let header: Vec<&str> = lines.next().unwrap_or_default().trim_start_matches("# ").split(',').collect();
        let col =
            |name: &str| header.iter().position(|h| *h == name).ok_or_else(|| anyhow::anyhow!("no {name} column"));
        let (px, sv, status, check) = (col("pxname")?, col("svname")?, col("status")?, col("check_status")?);
        Ok(lines
            .map(|l| l.split(',').collect::<Vec<_>>())
            .filter(|f| f.len() > px.max(sv).max(status).max(check))
            .filter(|f| f[sv] != "FRONTEND" && f[sv] != "BACKEND")
            .map(|f| ServerState {
                backend: f[px].to_owned(),
                server: f[sv].to_owned(),
                status: f[status].to_owned(),
                check: f[check].to_owned(),
            })
            .collect())
    }

    fn server_status(&self, backend: &str, server: &str) -> Option<String> {
        self.haproxy_states().ok()?.into_iter().find(|s| s.backend == backend && s.server == server).map(|s| s.status)
    }

    /// Waits until HAProxy has checked every server once. HAProxy 2.6 counts a server as up
    /// until its first check (`init-state` only arrives in 3.1), so traffic before that is
    /// HAProxy's start-up window, not a verdict of proxy-checker's.
    fn wait_first_checks(&self) {
        wait_until(Duration::from_secs(10), "HAProxy's first check of every server", || {
            let states = self.haproxy_states().ok()?;
            (states.len() == 6 && states.iter().all(|s| !s.check.is_empty() && !s.check.starts_with("INI")))
                .then_some(())
        })
        .expect("first checks");
    }

    /// `GET path` on a proxy-checker, from the client host; the status code.
    fn http_status(&self, addr: &str, path: &str) -> anyhow::Result<u16> {
        let (addr, path) = (addr.to_owned(), path.to_owned());
        self.client.block_on(async move {
            let mut s = tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(&addr)).await??;
            s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes()).await?;
            let mut out = Vec::new();
            tokio::time::timeout(Duration::from_secs(1), s.read_to_end(&mut out)).await??;
            let head = String::from_utf8_lossy(&out);
            head.split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| anyhow::anyhow!("bad answer {head:?}"))
        })
    }

    /// The `reason` of a GET check on `host`, from its JSON body.
    fn reason(&self, host: usize, path: &str) -> Option<String> {
        let (addr, path) = (format!("{}:{CHECK_PORT}", self.ip(host)), path.to_owned());
        let body = self
            .client
            .block_on(async move {
                let mut s = tokio::net::TcpStream::connect(&addr).await?;
                s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes()).await?;
                let mut out = String::new();
                tokio::time::timeout(Duration::from_secs(1), s.read_to_string(&mut out)).await??;
                anyhow::Ok(out)
            })
            .ok()?;
        let json: serde_json::Value = serde_json::from_str(body.split("\r\n\r\n").nth(1)?).ok()?;
        json["reason"].as_str().map(str::to_owned)
    }

    fn check(&self, host: usize, path: &str) -> Option<u16> {
        self.http_status(&format!("{}:{CHECK_PORT}", self.ip(host)), path).ok()
    }

    /// One line from a proxy-checker's agent port, from the client host.
    fn agent(&self, host: usize, line: &str) -> anyhow::Result<String> {
        let addr = format!("{}:{AGENT_PORT}", self.ip(host));
        let line = line.to_owned();
        self.client.block_on(async move {
            let mut s = tokio::net::TcpStream::connect(&addr).await?;
            s.write_all(line.as_bytes()).await?;
            let mut out = String::new();
            tokio::time::timeout(Duration::from_secs(2), s.read_to_string(&mut out)).await??;
            Ok(out)
        })
    }

    /// Connects through HAProxy's `port` (fresh connection each time, as an application
    /// would) and runs `sql`, which returns the server's address and one text value; returns
    /// which host answered and the value.
    fn through(&self, port: u16, sql: &str) -> anyhow::Result<(usize, String)> {
        let sql = sql.to_owned();
        let (ip, value) = self.client.block_on(async move {
            let conninfo = format!("host=127.0.0.1 port={port} user=postgres dbname=postgres connect_timeout=2");
            let (c, conn) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls).await?;
            let task = tokio::spawn(conn);
            let row = tokio::time::timeout(Duration::from_secs(3), c.query_one(sql.as_str(), &[])).await??;
            drop(c);
            task.abort();
            anyhow::Ok((row.try_get::<_, String>(0)?, row.try_get::<_, Option<String>>(1)?.unwrap_or_default()))
        })?;
        Ok((self.host_of(&ip), value))
    }

    /// A write through the read-write port; the host it landed on.
    fn write(&self, id: u32) -> anyhow::Result<usize> {
        self.through(RW_PORT, &format!("insert into t values ({id}) returning host(inet_server_addr()), id::text"))
            .map(|(h, _)| h)
    }

    fn read_only(&self) -> anyhow::Result<usize> {
        self.through(RO_PORT, "select host(inet_server_addr()), pg_is_in_recovery()::text").map(|(h, in_recovery)| {
            assert_eq!(in_recovery, "true", "the read-only port reached a server not in recovery (n{h})");
            h
        })
    }

    fn put(&self, key: String, value: String) {
        let etcd = self.etcd_client.clone();
        self.client.block_on(async move { etcd.put(&key, value, None).await }).expect("etcd put");
    }

    /// Publishes the keys an HA agent would for `leader` among n1..n3 (`replicas` in recovery).
    fn publish(&self, leader: usize) {
        let l = layout();
        let config = ConfigValue {
            ttl: Some(30.into()),
            loop_wait: Some(10.into()),
            retry_timeout: Some(10.into()),
            ..ConfigValue::default()
        };
        self.put(l.key(ClusterKey::Config), config.encode());
        for host in 1..=3 {
            let role = if host == leader { MemberRole::Primary } else { MemberRole::Replica };
            let m = member(&self.ip(host), role);
            self.put(l.member(&format!("n{host}")).expect("member key"), serde_json::to_string(&m).expect("json"));
        }
        self.publish_status(leader);
        self.put(l.key(ClusterKey::Leader), format!("n{leader}"));
    }

    /// `status` with the leader's current WAL position, as the leader writes it every loop.
    fn publish_status(&self, leader: usize) {
        let lsn: u64 =
            self.pg(leader).sql("select pg_current_wal_lsn() - '0/0'").expect("wal lsn").parse().expect("lsn");
        let status = StatusValue { optime: lsn, ..StatusValue::default() };
        self.put(layout().key(ClusterKey::Status), serde_json::to_string(&status).expect("json"));
    }

    /// Stops the proxy-checkers (a clean SIGTERM shutdown is part of what is checked) and
    /// fails on any ERROR line they logged.
    fn no_unexpected_errors(&mut self) {
        for p in &mut self.checkers {
            let status = p.stop(Duration::from_secs(5)).expect("stop proxy-checker");
            assert!(status.is_some_and(|s| s.success()), "{} exited with {status:?}", p.label());
        }
        for p in &self.checkers {
            let errors = p.unexpected_errors(&[]);
            assert!(errors.is_empty(), "{} logged errors: {errors:#?}", p.label());
        }
    }
}

/// One server line of HAProxy's `show stat`.
#[derive(Debug)]
struct ServerState {
    backend: String,
    server: String,
    /// `UP`, `DOWN`, `MAINT`, `DRAIN`, ...
    status: String,
    /// The last check's result (`L7OK`, `L7STS`, ...; `INI` before the first).
    check: String,
}

fn member(ip: &str, role: MemberRole) -> MemberValue {
    MemberValue {
        conn_url: format!("postgres://{ip}:5432/postgres"),
        api_url: format!("http://{ip}:8008/patroni"),
        state: "running".into(),
        role,
        version: PATRONI_COMPAT_VERSION.into(),
        proxy_url: None,
        xlog_location: None,
        receive_lsn: None,
        replay_lsn: None,
        replication_state: None,
        timeline: None,
        tags: Default::default(),
        pending_restart: None,
        pending_restart_reason: None,
        scheduled_restart: None,
        checkpoint_after_promote: None,
        pause: None,
        extra: Default::default(),
    }
}

/// A cluster whose roles the test drives by hand: n1 primary, n2 and n3 replicas, keys
/// published, proxy-checkers and HAProxy running, and the read-write port reaching n1.
fn hand_driven(test: &str) -> Cluster {
    let mut c = Cluster::new(test);
    c.start_postgres();
    c.pg(1).sql("create table t (id int primary key)").expect("create table");
    c.publish(1);
    let sockets: Vec<PathBuf> = c.pgs.iter().map(|p| p.socket_dir().to_path_buf()).collect();
    c.start_checkers(&sockets);
    c.start_haproxy();
    wait_ok(Duration::from_secs(15), "the read-write port to reach n1", || {
        c.write(0).and_then(|h| if h == 1 { Ok(()) } else { anyhow::bail!("reached n{h}") })
    })
    .expect("read-write port");
    c
}

/// Polls `host`'s `/primary` until it answers 503; how long that took from `since`.
fn time_to_503(c: &Cluster, host: usize, since: Instant, limit: Duration) -> Duration {
    wait_until(limit, &format!("n{host}'s /primary to answer 503"), || {
        (c.check(host, "/primary") == Some(503)).then(|| since.elapsed())
    })
    .expect("/primary turned 503")
}

#[test]
fn example_haproxy_cfg_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/haproxy/haproxy.cfg");
    let out = Command::new("haproxy").arg("-c").arg("-f").arg(&path).output().expect("run haproxy -c");
    assert!(out.status.success(), "{}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
}

#[test]
fn writes_land_on_the_named_primary_and_follow_the_leader_key_never_back_to_the_old_one() {
    let mut c = hand_driven("writes_land_on_the_named_primary_and_follow_the_leader_key_never_back_to_the_old_one");
    for id in 1..=20 {
        assert_eq!(c.write(id).expect("write through the read-write port"), 1, "write {id} missed the primary");
    }
    assert_eq!(c.pg(1).sql("select count(*) from t where id between 1 and 20").unwrap(), "20");

    // Failover by hand: the leader key moves to n2 while n1 stays writable (an old primary
    // that failed to demote). n1 must stop being a primary to HAProxy at once.
    let moved = Instant::now();
    c.put(layout().key(ClusterKey::Leader), "n2".into());
    let took = time_to_503(&c, 1, moved, ETCD_MAX_AGE);
    eprintln!("n1's /primary answered 503 {took:?} after the leader key moved");
    assert!(!c.pg(1).in_recovery().unwrap(), "the old primary is still writable");
    wait_until(Duration::from_secs(5), "HAProxy to mark n1 down", || {
        c.server_status("primary", "n1").filter(|s| s.starts_with("DOWN"))
    })
    .unwrap();

    // n2 is promoted. From now on every write lands on n2, none on the writable n1.
    c.pg(2).sql("select pg_promote()").unwrap();
    c.publish_status(2);
    let first = wait_ok(Duration::from_secs(15), "a write to reach the new primary", || c.write(100)).unwrap();
    assert_eq!(first, 2, "the first write after the failover landed on n{first}");
    for id in 101..=130 {
        let h = c.write(id).expect("write after the failover");
        assert_eq!(h, 2, "write {id} landed on n{h}, not the new primary n2");
    }
    assert_eq!(c.pg(1).sql("select count(*) from t where id >= 100").unwrap(), "0", "a write reached the old primary");
    assert_eq!(c.check(1, "/primary"), Some(503));
    assert_eq!(c.check(2, "/primary"), Some(200));
    c.no_unexpected_errors();
}

#[test]
fn a_frozen_etcd_member_never_turns_the_primarys_check_to_503() {
    // A frozen member still accepts connections, so a read sent to it waits for the whole
    // request timeout. Reads that wait there would age the view past etcd_max_age and drop a
    // healthy primary from HAProxy (bench/ha-agent/client.sh showed it after a host freeze).
    // Each follower in turn (a frozen raft leader means an election, during which etcd itself
    // cannot answer and 503 is right).
    let mut c = hand_driven("a_frozen_etcd_member_never_turns_the_primarys_check_to_503");
    let leader = c.etcd.leader(&c.net, 0).expect("etcd raft leader");
    for m in (0..c.etcd.len()).filter(|m| *m != leader) {
        c.etcd.freeze(m).expect("freeze an etcd member");
        let held =
            hold_for(Duration::from_secs(4), &format!("n1's /primary answers 200 with etcd member {m} frozen"), || {
                match c.check(1, "/primary") {
                    Some(200) => Ok(()),
                    other => anyhow::bail!("/primary answered {other:?}"),
                }
            });
        c.etcd.thaw(m).expect("thaw");
        held.expect("the primary's check stayed 200");
        c.etcd.wait_healthy(&c.net, m, Duration::from_secs(30)).expect("etcd member healthy again");
    }
    c.no_unexpected_errors();
}

#[test]
fn read_only_port_never_reaches_the_primary_and_drops_a_replica_past_the_lag_limit() {
    let mut c = hand_driven("read_only_port_never_reaches_the_primary_and_drops_a_replica_past_the_lag_limit");
    let mut seen = [0usize; 4];
    wait_until(Duration::from_secs(15), "the read-only port to reach both replicas", || {
        let h = c.read_only().ok()?;
        seen[h] += 1;
        (seen[2] > 0 && seen[3] > 0).then_some(())
    })
    .unwrap();
    for _ in 0..20 {
        let h = c.read_only().expect("read through the read-only port");
        assert_ne!(h, 1, "the read-only port reached the primary");
    }

    // n3 stops replaying while the primary writes ~4 MB of WAL: its lag passes the 1MB limit.
    c.pg(3).sql("select pg_wal_replay_pause()").unwrap();
    c.pg(1).sql("create table big as select g, repeat('x', 200) as pad from generate_series(1, 20000) g").unwrap();
    c.publish_status(1);
    wait_until(Duration::from_secs(10), "n3's /replica?lag=1MB to answer 503", || {
        (c.check(3, "/replica?lag=1MB") == Some(503)).then_some(())
    })
    .unwrap();
    // The agent lowers the lagging replica's weight (drain_lag 16MB) and says why it is down
    // for the 1MB limit.
    let weighted = c.agent(3, "/replica\n").unwrap();
    let weight: u32 = weighted
        .strip_prefix("ready up ")
        .and_then(|w| w.trim().strip_suffix('%'))
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("agent answer {weighted:?}"));
    assert!((2..100).contains(&weight), "weight {weight}% for a replica ~4MB behind");
    assert_eq!(c.agent(3, "/replica?lag=1MB\n").unwrap(), "down#lagging\n");
    // n2 replays as it receives: once it has caught up it is at full weight.
    wait_until(Duration::from_secs(10), "n2's agent to answer full weight", || {
        (c.agent(2, "/replica?lag=1MB\n").ok()? == "ready up 100%\n").then_some(())
    })
    .unwrap();
    // n2 may itself have been over the limit for a moment while it replayed the burst.
    wait_until(Duration::from_secs(5), "HAProxy to drop the lagging n3 and keep n2", || {
        let n3 = c.server_status("replicas", "n3")?;
        let n2 = c.server_status("replicas", "n2")?;
        (n3.starts_with("DOWN") && n2.starts_with("UP")).then_some(())
    })
    .unwrap();
    for _ in 0..20 {
        let h = c.read_only().expect("read through the read-only port");
        assert_eq!(h, 2, "the read-only port reached n{h}, past the lag limit; HAProxy: {:?}", c.haproxy_states());
    }

    // Replay resumes: n3 catches up and comes back.
    c.pg(3).sql("select pg_wal_replay_resume()").unwrap();
    wait_until(Duration::from_secs(15), "the read-only port to reach n3 again", || {
        (c.read_only().ok()? == 3).then_some(())
    })
    .unwrap();
    c.no_unexpected_errors();
}

#[test]
fn old_primary_cut_off_from_etcd_fails_its_primary_check_within_the_staleness_bound() {
    let mut c = hand_driven("old_primary_cut_off_from_etcd_fails_its_primary_check_within_the_staleness_bound");
    assert_eq!(c.check(1, "/primary"), Some(200));

    // n1 can no longer reach etcd (its own member included); PostgreSQL and the check port stay
    // reachable. Its last view still names it leader, but that view ages out.
    let cut = Instant::now();
    c.net.host(1).block("etcd", &[], &["tcp dport 2379"]).unwrap();
    let took = time_to_503(&c, 1, cut, Duration::from_secs(5));
    eprintln!("n1's /primary answered 503 {took:?} after n1 lost etcd (etcd_max_age {ETCD_MAX_AGE:?})");
    // The last confirmation was sent before the cut, so the view is stale at most
    // etcd_max_age after it; the slack covers this test's polling of the check.
    assert!(took <= ETCD_MAX_AGE + Duration::from_millis(300), "503 only after {took:?}");
    assert!(!c.pg(1).in_recovery().unwrap(), "n1 is still writable");

    // The cluster moves on without n1: writes go to n2 and never to the still-writable n1.
    wait_until(Duration::from_secs(5), "HAProxy to mark n1 down", || {
        c.server_status("primary", "n1").filter(|s| s.starts_with("DOWN"))
    })
    .unwrap();
    c.put(layout().key(ClusterKey::Leader), "n2".into());
    c.pg(2).sql("select pg_promote()").unwrap();
    let first = wait_ok(Duration::from_secs(15), "a write to reach n2", || c.write(200)).unwrap();
    assert_eq!(first, 2);
    for id in 201..=220 {
        assert_eq!(c.write(id).unwrap(), 2, "write {id} missed the new primary");
    }
    // While cut off, n1 stays 503 even though its view still says it is the leader.
    assert_eq!(c.check(1, "/primary"), Some(503));
    c.net.host(1).unblock("etcd").unwrap();
    // Once n1 reaches etcd again it fails /primary for the right reason: n2 is the leader.
    let back = Instant::now();
    wait_until(Duration::from_secs(10), "n1 to see n2 as leader once it reaches etcd again", || {
        (c.reason(1, "/primary")? == "not_leader").then_some(())
    })
    .unwrap();
    eprintln!("n1 saw the new leader {:?} after it could reach etcd again", back.elapsed());
    assert_eq!(c.check(1, "/primary"), Some(503));
    c.no_unexpected_errors();
}

/// A 3-node cluster run by real Patroni (scope batman, namespace /service/), each node's data
/// and socket in a folder of the `postgres` user.
struct PatroniNodes {
    dirs: Vec<tempfile::TempDir>,
    /// `bin/` of the virtualenv with Patroni and patronictl.
    bin: PathBuf,
}

impl PatroniNodes {
    fn new() -> Self {
        let (uid, gid) = postgres_ids();
        let dirs = (0..3)
            .map(|_| {
                let d = tempfile::Builder::new().prefix("otk-patroni").tempdir().expect("tempdir");
                std::os::unix::fs::chown(d.path(), Some(uid), Some(gid)).expect("chown");
                d
            })
            .collect();
        Self { dirs, bin: outrigger_testkit::python::patroni_bin().expect("Patroni from PyPI in a virtualenv") }
    }

    fn dir(&self, host: usize) -> &Path {
        self.dirs[host - 1].path()
    }

    fn config(&self, c: &Cluster, host: usize) -> PathBuf {
        let ip = c.ip(host);
        let dir = self.dir(host);
        let etcd_hosts = (1..=3).map(|h| format!("{}:2379", c.ip(h))).collect::<Vec<_>>().join(",");
        let bin = outrigger_pg_bin();
        let yaml = format!(
            "scope: {SCOPE}\nnamespace: /service/\nname: n{host}\n\
             restapi:\n  listen: {ip}:8008\n  connect_address: {ip}:8008\n\
             etcd3:\n  hosts: {etcd_hosts}\n\
             bootstrap:\n  dcs:\n    ttl: 20\n    loop_wait: 1\n    retry_timeout: 5\n    maximum_lag_on_failover: 1048576\n\
             \x20   postgresql:\n      use_pg_rewind: false\n      parameters:\n        wal_keep_size: 256MB\n        wal_receiver_status_interval: 1s\n\
             \x20 initdb:\n  - encoding: UTF8\n  - locale: C.UTF-8\n\
             \x20 pg_hba:\n  - local all all trust\n  - host all all 10.250.0.0/24 trust\n  - host replication all 10.250.0.0/24 trust\n\
             postgresql:\n  listen: {ip}:5432\n  connect_address: {ip}:5432\n  data_dir: {data}\n  bin_dir: {bin}\n  pgpass: {dir}/pgpass\n\
             \x20 authentication:\n    superuser:\n      username: postgres\n    replication:\n      username: postgres\n\
             \x20 parameters:\n    unix_socket_directories: {dir}\n    fsync: 'off'\n\
             tags: {{}}\n",
            data = dir.join("data").display(),
            bin = bin.display(),
            dir = dir.display(),
        );
        let path = dir.join("patroni.yml");
        std::fs::write(&path, yaml).expect("write patroni.yml");
        let (uid, gid) = postgres_ids();
        std::os::unix::fs::chown(&path, Some(uid), Some(gid)).expect("chown patroni.yml");
        path
    }

    fn start(&self, c: &mut Cluster, host: usize) {
        let config = self.config(c, host);
        let (uid, gid) = postgres_ids();
        // setpriv execs Patroni as `postgres` in place, so the pid the kit holds is Patroni's.
        let mut cmd = Command::new("setpriv");
        cmd.args([format!("--reuid={uid}"), format!("--regid={gid}"), "--clear-groups".into()])
            .arg(self.bin.join("patroni"))
            .arg(&config)
            .env("HOME", self.dir(host));
        let proc = c.net.host(host).spawn(&format!("patroni-n{host}"), cmd).expect("start patroni");
        c.patroni.push(proc);
    }

    fn sql(&self, host: usize, sql: &str) -> anyhow::Result<String> {
        let out = Command::new(outrigger_pg_bin().join("psql"))
            .arg("-h")
            .arg(self.dir(host))
            .args(["-p", "5432", "-U", "postgres", "-d", "postgres", "-XqAt", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .env("PGCONNECT_TIMEOUT", "2")
            .output()?;
        anyhow::ensure!(out.status.success(), "psql: {}", String::from_utf8_lossy(&out.stderr));
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }
}

fn outrigger_pg_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("OUTRIGGER_PG_BIN") {
        return PathBuf::from(p);
    }
    let mut versions: Vec<u32> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL installed")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    versions.sort_unstable();
    PathBuf::from(format!("/usr/lib/postgresql/{}/bin", versions.last().expect("a PostgreSQL version")))
}

#[test]
fn behind_real_patroni_writes_follow_a_switchover_and_reads_avoid_the_primary_and_lagging_replicas() {
    // Declared first so that it is dropped last: its folders hold the data of the servers the
    // cluster (dropped before it) stops.
    let nodes = PatroniNodes::new();
    let mut c =
        Cluster::new("behind_real_patroni_writes_follow_a_switchover_and_reads_avoid_the_primary_and_lagging_replicas");
    // n1 bootstraps first, so that it is the leader; then the others clone from it.
    nodes.start(&mut c, 1);
    let sockets: Vec<PathBuf> = (1..=3).map(|h| nodes.dir(h).to_path_buf()).collect();
    c.start_checkers(&sockets);
    wait_until(Duration::from_secs(60), "Patroni to bootstrap n1 as primary", || {
        (c.check(1, "/primary") == Some(200)).then_some(())
    })
    .unwrap();
    nodes.start(&mut c, 2);
    nodes.start(&mut c, 3);
    wait_until(Duration::from_secs(90), "n2 and n3 to run as replicas", || {
        (c.check(2, "/replica") == Some(200) && c.check(3, "/replica") == Some(200)).then_some(())
    })
    .unwrap();
    nodes.sql(1, "create table t (id int primary key)").unwrap();
    c.start_haproxy();

    // Writes land on Patroni's leader; reads reach only replicas.
    let first = wait_ok(Duration::from_secs(15), "the read-write port to reach n1", || c.write(1)).unwrap();
    assert_eq!(first, 1);
    for id in 2..=10 {
        assert_eq!(c.write(id).unwrap(), 1, "write {id} missed Patroni's leader");
    }
    let mut seen = [0usize; 4];
    wait_until(Duration::from_secs(15), "the read-only port to reach both replicas", || {
        let h = c.read_only().ok()?;
        seen[h] += 1;
        (seen[2] > 0 && seen[3] > 0).then_some(())
    })
    .unwrap();
    assert_eq!(seen[1], 0, "the read-only port reached the primary");

    // A lagging replica is dropped from the read-only port and comes back. Patroni resumes a
    // paused replay on PostgreSQL 14+ at its next cycle, so the lag here comes from the
    // network instead: n3's replication connection to n1 stops carrying anything.
    let n1 = c.ip(1);
    let (from_n1, to_n1) = (format!("ip saddr {n1} tcp sport 5432"), format!("ip daddr {n1} tcp dport 5432"));
    c.net.host(3).block("wal", &[&from_n1], &[&to_n1]).unwrap();
    nodes.sql(1, "create table big as select g, repeat('x', 200) as pad from generate_series(1, 20000) g").unwrap();
    wait_until(Duration::from_secs(10), "HAProxy to drop the lagging n3 and keep n2", || {
        let n3 = c.server_status("replicas", "n3")?;
        let n2 = c.server_status("replicas", "n2")?;
        (n3.starts_with("DOWN") && n2.starts_with("UP")).then_some(())
    })
    .unwrap();
    for _ in 0..10 {
        let h = c.read_only().unwrap();
        assert_eq!(h, 2, "the read-only port reached n{h}, a lagging replica; HAProxy: {:?}", c.haproxy_states());
    }
    c.net.host(3).unblock("wal").unwrap();
    wait_until(Duration::from_secs(30), "n3 to catch up and return to the read-only port", || {
        c.server_status("replicas", "n3").filter(|s| s.starts_with("UP"))
    })
    .unwrap();

    // Switchover with patronictl: n1 demotes, n2 promotes. After the first write reaches n2,
    // every write does; none reaches n1 again.
    let config = nodes.dir(1).join("patroni.yml");
    let patronictl = nodes.bin.join("patronictl");
    let out = c
        .net
        .host(1)
        .exec(&[
            patronictl.to_str().unwrap(),
            "-c",
            config.to_str().unwrap(),
            "switchover",
            SCOPE,
            "--leader",
            "n1",
            "--candidate",
            "n2",
            "--force",
        ])
        .expect("patronictl switchover");
    eprintln!("patronictl: {}", out.trim());
    let first = wait_until(Duration::from_secs(60), "a write to reach the new primary n2", || {
        c.write(100).ok().filter(|h| *h == 2)
    })
    .unwrap();
    assert_eq!(first, 2);
    for id in 101..=120 {
        let h = c.write(id).expect("write after the switchover");
        assert_eq!(h, 2, "write {id} landed on n{h} after the switchover to n2");
    }
    wait_until(Duration::from_secs(30), "n1 to rejoin as a replica", || {
        (c.check(1, "/replica") == Some(200)).then_some(())
    })
    .unwrap();
    assert_eq!(c.check(1, "/primary"), Some(503));
    c.no_unexpected_errors();
}
