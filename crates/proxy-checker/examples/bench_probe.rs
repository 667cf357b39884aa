//! Benchmark helper for `bench/proxy-checker/run.sh`.
//!
//! `bench_probe seed ETCD_URL SCOPE LEADER_OPTIME NAME=ROLE...` writes the keys an HA agent
//! publishes (config, members, status, leader = the first member), through
//! `outrigger-schema`'s layout and types, so the script spells no key path or JSON field.
//!
//! `bench_probe leader-change ETCD_URL SCOPE RUNS NAME=HOST:PORT...` measures how long after a
//! leader change is written to etcd every proxy-checker reflects it. Each run moves the leader
//! key to the next member (round robin), then polls every member's `/leader` over its own
//! keep-alive connection, back to back, until each answers as it should (200 on the new
//! leader, 503 elsewhere). A run's figure is the time until the *last* member reflects the
//! change, from when the put was sent and from when etcd acknowledged it. Runs start from a
//! settled state and are 50 ms apart.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use outrigger_etcd::{ConnectOptions, Etcd};
use outrigger_schema::{ClusterKey, ConfigValue, KeyLayout, MemberRole, MemberValue, StatusValue};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// One keep-alive HTTP/1.1 connection to a proxy-checker.
struct Conn {
    stream: BufReader<TcpStream>,
}

impl Conn {
    async fn open(addr: &str) -> anyhow::Result<Self> {
        let s = TcpStream::connect(addr).await.with_context(|| format!("connect {addr}"))?;
        s.set_nodelay(true)?;
        Ok(Self { stream: BufReader::new(s) })
    }

    /// `GET path`; the status code (the body is read and dropped).
    async fn status(&mut self, path: &str) -> anyhow::Result<u16> {
        self.stream.get_mut().write_all(format!("GET {path} HTTP/1.1\r\nHost: b\r\n\r\n").as_bytes()).await?;
        let mut line = String::new();
        self.stream.read_line(&mut line).await?;
        let status = line.split_whitespace().nth(1).and_then(|c| c.parse().ok()).context("status line")?;
        let mut length = 0usize;
        loop {
            line.clear();
            if self.stream.read_line(&mut line).await? == 0 {
                bail!("connection closed");
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse()?;
            }
        }
        let mut body = vec![0u8; length];
        self.stream.read_exact(&mut body).await?;
        Ok(status)
    }
}

/// Polls until `conn`'s `/leader` answers `want`; the instant it did.
async fn until(conn: &mut Conn, want: u16, deadline: Instant) -> anyhow::Result<Instant> {
    loop {
        if conn.status("/leader").await? == want {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            bail!("no {want} within the deadline");
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or_default()
}

fn report(what: &str, mut v: Vec<Duration>) {
    v.sort_unstable();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{what}: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms over {} runs",
        ms(percentile(&v, 0.5)),
        ms(percentile(&v, 0.9)),
        ms(percentile(&v, 0.99)),
        ms(percentile(&v, 1.0)),
        v.len()
    );
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.split_first() {
        Some((cmd, rest)) if cmd == "seed" => seed(rest).await,
        Some((cmd, rest)) if cmd == "leader-change" => leader_change(rest).await,
        _ => bail!("usage: bench_probe seed|leader-change ... (see the file's header)"),
    }
}

/// Name=value pairs from the command line.
fn pairs(args: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    args.iter().map(|m| m.split_once('=').map(|(n, a)| (n.to_owned(), a.to_owned())).context("NAME=VALUE")).collect()
}

async fn seed(args: &[String]) -> anyhow::Result<()> {
    let [url, scope, optime, members @ ..] = args else {
        bail!("usage: bench_probe seed ETCD_URL SCOPE LEADER_OPTIME NAME=primary|replica...");
    };
    let etcd = Etcd::connect(&ConnectOptions::new(vec![url.clone()])).await?;
    let layout = KeyLayout::new("service", scope)?;
    let config = ConfigValue {
        ttl: Some(30.into()),
        loop_wait: Some(10.into()),
        retry_timeout: Some(10.into()),
        ..ConfigValue::default()
    };
    etcd.put(&layout.key(ClusterKey::Config), config.encode(), None).await?;
    let members = pairs(members)?;
    for (name, role) in &members {
        let role = if role == "primary" { MemberRole::Primary } else { MemberRole::Replica };
        let member = MemberValue {
            conn_url: "postgres://127.0.0.1:5432/postgres".into(),
            api_url: "http://127.0.0.1:8008/patroni".into(),
            state: "running".into(),
            role,
            version: outrigger_schema::PATRONI_COMPAT_VERSION.into(),
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
        };
        etcd.put(&layout.member(name)?, serde_json::to_string(&member)?, None).await?;
    }
    let status = StatusValue { optime: optime.parse().context("LEADER_OPTIME")?, ..StatusValue::default() };
    etcd.put(&layout.key(ClusterKey::Status), serde_json::to_string(&status)?, None).await?;
    let leader = &members.first().context("name at least one member")?.0;
    etcd.put(&layout.key(ClusterKey::Leader), leader.as_bytes(), None).await?;
    Ok(())
}

async fn leader_change(args: &[String]) -> anyhow::Result<()> {
    let [url, scope, runs, members @ ..] = args else {
        bail!("usage: bench_probe leader-change ETCD_URL SCOPE RUNS NAME=HOST:PORT...");
    };
    let runs: usize = runs.parse().context("RUNS")?;
    let members = pairs(members)?;
    anyhow::ensure!(!members.is_empty(), "name at least one member");
    let etcd = Etcd::connect(&ConnectOptions::new(vec![url.clone()])).await?;
    let key = KeyLayout::new("service", scope)?.key(ClusterKey::Leader);
    let mut conns = Vec::new();
    for (_, addr) in &members {
        conns.push(Conn::open(addr).await?);
    }
    let (mut from_sent, mut from_acked) = (Vec::new(), Vec::new());
    for run in 0..runs + 1 {
        let leader = &members[run % members.len()].0;
        let sent = Instant::now();
        etcd.put(&key, leader.as_bytes(), None).await?;
        let acked = Instant::now();
        let deadline = acked + Duration::from_secs(5);
        let waits = conns.iter_mut().zip(&members).map(|(c, (name, _))| {
            let want = if name == leader { 200 } else { 503 };
            until(c, want, deadline)
        });
        let seen = futures::future::try_join_all(waits).await?;
        let last = seen.into_iter().max().unwrap_or(acked);
        // The first run only brings every member to a known state.
        if run > 0 {
            from_sent.push(last - sent);
            from_acked.push(last.saturating_duration_since(acked));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    report("leader change visible on every member's /leader, from the put sent", from_sent);
    report("leader change visible on every member's /leader, from the put acknowledged", from_acked);
    Ok(())
}
