//! Failover as a client sees it, through HAProxy: ha-agent against Patroni 4.x, in one run
//! (`bench/ha-agent/client.sh`).
//!
//! For each setup, a 3-host cluster of `tests/ha_agent_harness.rs` (etcd member, the HA daemon
//! and PostgreSQL per host, asynchronous replication, in network namespaces) and a client host
//! with HAProxy and a writer. The writer inserts a row every 50 ms through HAProxy's
//! read-write port, with 1 s connect and statement timeouts, and opens a new connection after
//! any error; each insert returns the address of the server that committed it.
//!
//! Failover time = from the fault on the primary's host to the first insert acknowledged by
//! another member. Faults: `cut-off` (the host's interface down) and `freeze` (SIGSTOP of
//! every process on the host), repeated RUNS times each (the old primary is repaired and
//! rejoins between runs). Setups:
//! - `patroni`: Patroni 4.x at its fastest accepted timings (ttl 20, loop_wait 1,
//!   retry_timeout 3), HAProxy checking Patroni's `GET /primary` on :8008 with
//!   `inter 1s fall 2 rise 1`;
//! - `ha-agent`: ha-agent at the lab's timings (ttl 2 s, loop_wait 500 ms, retry_timeout
//!   500 ms), proxy-checker on every host, HAProxy with the shipped `deploy/haproxy/haproxy.cfg`
//!   (its `defaults` and `backend primary`, server addresses replaced);
//! - `ha-agent-vip`: the reference deployment's client path: HAProxy (the same shipped config)
//!   on every database host, and vip-manager on every host holding a VIP that follows the
//!   leader (the lab's settings: VRRPv3, adverts every 250 ms, +50 for the leader, -80 without
//!   its local HAProxy); the writer connects to the VIP. Measured as the figure was;
//! - `ha-agent-old-haproxy`: the same as `ha-agent` with the check timings the config shipped with before
//!   they were tuned (`inter 1s fastinter 500ms downinter 1s fall 2 rise 2`, `timeout check
//!   1s`, `timeout connect 4s`), so that each step's gain is measured. Only with
//!   `HA_CLIENT_BENCH_OLD=1`.
//!
//! Printed: every run, then per fault kind each setup's median and range and the ratio of
//! the medians (Patroni / ha-agent), with the steps of each failover (medians): when the new
//! primary accepts writes (polled over its Unix socket every 10 ms), when a fresh connection
//! through the proxy or VIP first reaches it (one every 20 ms), and the rest, which is the
//! client's own share (the writer's 1 s timeouts, reconnecting, its 50 ms schedule). The first run of each setup and fault is drawn, the
//! writer's latency around the fault, into `target/bench/ha-agent-client-<fault>.svg` (and the
//! samples into `ha-agent-client-<fault>-<setup>.csv` beside it).
//! `HA_CLIENT_BENCH_RUNS` (default 5), `HA_CLIENT_BENCH_FAULTS` (default `cut-off,freeze`) and
//! `HA_CLIENT_BENCH_SETUPS` (default `ha-agent,ha-agent-vip,patroni`).

#[path = "../../tests/ha_agent_harness.rs"]
mod harness;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use harness::{Cluster, Opts, SCOPE};
use outrigger_testkit::{NsRuntime, Proc, wait_ok, wait_until};

const RW_PORT: u16 = 15432;
const CHECK_PORT: u16 = 8009;
const UP: Duration = Duration::from_secs(120);
/// What the shipped config checked with before the tuning (for `ha-agent-old-haproxy`).
const OLD_SERVER_OPTS: &str = "inter 1s fastinter 500ms downinter 1s fall 2 rise 2 on-marked-down shutdown-sessions";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Setup {
    Patroni,
    HaAgent,
    HaAgentVip,
    HaAgentOldHaproxy,
}

impl Setup {
    fn name(self) -> &'static str {
        match self {
            Setup::Patroni => "patroni",
            Setup::HaAgent => "ha-agent",
            Setup::HaAgentVip => "ha-agent-vip",
            Setup::HaAgentOldHaproxy => "ha-agent-old-haproxy",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    CutOff,
    Freeze,
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::CutOff => "cut-off",
            Fault::Freeze => "freeze",
        }
    }

    fn inject(self, c: &Cluster, p: usize) -> anyhow::Result<()> {
        match self {
            Fault::CutOff => c.net.host(p).cut_off(),
            Fault::Freeze => c.net.host(p).freeze_all(),
        }
    }

    fn repair(self, c: &Cluster, p: usize) -> anyhow::Result<()> {
        match self {
            Fault::CutOff => c.net.host(p).heal(),
            Fault::Freeze => c.net.host(p).thaw_all(),
        }
    }
}

/// One insert of the writer: when it was sent, when it ended, and which member committed it
/// (`None`: an error or a timeout).
#[derive(Debug, Clone, Copy)]
struct Sample {
    sent: Instant,
    done: Instant,
    member: Option<usize>,
}

struct Writer {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
}

impl Writer {
    fn start(rt: &NsRuntime, target: Ipv4Addr, ips: Vec<Ipv4Addr>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let _task = rt.spawn(write_loop(target, ips, stop.clone(), samples.clone()));
        Self { stop, samples }
    }

    fn samples(&self) -> Vec<Sample> {
        self.samples.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// The first insert after `t0` acknowledged by a member other than `old`.
    fn first_elsewhere(&self, t0: Instant, old: usize) -> Option<(Instant, usize)> {
        self.samples()
            .iter()
            .find(|s| s.sent > t0 && s.member.is_some_and(|m| m != old))
            .map(|s| (s.done, s.member.unwrap_or(0)))
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// What the steps of a failover are timed by (`Steps`): each member polled over its Unix socket
/// for the moment it accepts writes, and a fresh connection through the proxy (or VIP) every
/// 20 ms for the moment the proxy routes to it. Neither keeps any client state, unlike the
/// writer, whose own reconnecting (timeouts, its 50 ms schedule) is the last step.
struct Probes {
    stop: Arc<AtomicBool>,
    /// (when, member) each time a member answered that it accepts writes.
    writable: Arc<Mutex<Vec<(Instant, usize)>>>,
    /// (when, member) each time a fresh connection through the proxy reached a writable member.
    routed: Arc<Mutex<Vec<(Instant, usize)>>>,
}

impl Probes {
    fn start(rt: &NsRuntime, c: &Cluster, target: Ipv4Addr, ips: Vec<Ipv4Addr>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let writable = Arc::new(Mutex::new(Vec::new()));
        let routed = Arc::new(Mutex::new(Vec::new()));
        for i in 1..=3 {
            let _task = rt.spawn(poll_writable(i, c.socket_dir(i), stop.clone(), writable.clone()));
        }
        let _task = rt.spawn(poll_routed(target, ips, stop.clone(), routed.clone()));
        Self { stop, writable, routed }
    }

    fn first(list: &Mutex<Vec<(Instant, usize)>>, t0: Instant, old: usize) -> Option<Instant> {
        list.lock().ok()?.iter().find(|(t, m)| *t > t0 && *m != old).map(|(t, _)| *t)
    }
}

impl Drop for Probes {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

async fn poll_writable(i: usize, socket: PathBuf, stop: Arc<AtomicBool>, out: Arc<Mutex<Vec<(Instant, usize)>>>) {
    const LIMIT: Duration = Duration::from_millis(200);
    let mut conn: Option<tokio_postgres::Client> = None;
    while !stop.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(10)).await;
        if conn.is_none() {
            let mut cfg = tokio_postgres::Config::new();
            cfg.host_path(&socket).port(5432).user("postgres").dbname("postgres").connect_timeout(LIMIT);
            if let Ok(Ok((c, task))) = tokio::time::timeout(LIMIT, cfg.connect(tokio_postgres::NoTls)).await {
                tokio::spawn(task);
                conn = Some(c);
            }
        }
        if let Some(c) = conn.take()
            && let Ok(Ok(row)) = tokio::time::timeout(LIMIT, c.query_one("select not pg_is_in_recovery()", &[])).await
        {
            if row.get::<_, bool>(0)
                && let Ok(mut o) = out.lock()
            {
                o.push((Instant::now(), i));
            }
            conn = Some(c);
        }
    }
}

async fn poll_routed(
    target: Ipv4Addr,
    ips: Vec<Ipv4Addr>,
    stop: Arc<AtomicBool>,
    out: Arc<Mutex<Vec<(Instant, usize)>>>,
) {
    const LIMIT: Duration = Duration::from_secs(1);
    while !stop.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let (ips, out) = (ips.clone(), out.clone());
        // Each try on its own: one stuck on a dead server must not delay the next.
        tokio::spawn(async move {
            let mut cfg = tokio_postgres::Config::new();
            cfg.host(target.to_string()).port(RW_PORT).user("postgres").dbname("postgres").connect_timeout(LIMIT);
            let work = async {
                let (c, task) = cfg.connect(tokio_postgres::NoTls).await.ok()?;
                tokio::spawn(task);
                let row = c.query_one("select host(inet_server_addr()), not pg_is_in_recovery()", &[]).await.ok()?;
                let ip: String = row.get(0);
                let member = ips.iter().position(|a| a.to_string() == ip)? + 1;
                row.get::<_, bool>(1).then_some(member)
            };
            if let Ok(Some(m)) = tokio::time::timeout(LIMIT, work).await
                && let Ok(mut o) = out.lock()
            {
                o.push((Instant::now(), m));
            }
        });
    }
}

async fn write_loop(target: Ipv4Addr, ips: Vec<Ipv4Addr>, stop: Arc<AtomicBool>, samples: Arc<Mutex<Vec<Sample>>>) {
    const EVERY: Duration = Duration::from_millis(50);
    const TIMEOUT: Duration = Duration::from_secs(1);
    let mut conn: Option<tokio_postgres::Client> = None;
    let mut next = tokio::time::Instant::now();
    while !stop.load(Ordering::SeqCst) {
        tokio::time::sleep_until(next).await;
        next += EVERY;
        let sent = Instant::now();
        if conn.is_none() {
            let mut cfg = tokio_postgres::Config::new();
            cfg.host(target.to_string()).port(RW_PORT).user("postgres").dbname("postgres").connect_timeout(TIMEOUT);
            if let Ok(Ok((c, task))) = tokio::time::timeout(TIMEOUT, cfg.connect(tokio_postgres::NoTls)).await {
                tokio::spawn(task);
                conn = Some(c);
            }
        }
        let mut member = None;
        if let Some(c) = conn.take() {
            let q = c.query_one("insert into client_writes default values returning host(inet_server_addr())", &[]);
            if let Ok(Ok(row)) = tokio::time::timeout(TIMEOUT, q).await {
                let ip: String = row.get(0);
                member = ips.iter().position(|a| a.to_string() == ip).map(|i| i + 1);
                conn = Some(c);
            }
        }
        if let Ok(mut s) = samples.lock() {
            s.push(Sample { sent, done: Instant::now(), member });
        }
        // Behind schedule after a timeout: start again from now rather than in a burst.
        next = next.max(tokio::time::Instant::now());
    }
}

/// HAProxy's config for `setup`: the shipped file's `global` (without the admin socket and
/// state file, which need system folders), `defaults` and read-write frontend and backend, with
/// our servers. For Patroni the checks go to its REST API with Patroni's usual options.
fn haproxy_config(setup: Setup, servers: &[Ipv4Addr], bind: &str) -> anyhow::Result<String> {
    let shipped = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/haproxy/haproxy.cfg"))?;
    let mut out = String::new();
    let mut section = String::new();
    for line in shipped.lines() {
        let t = line.trim();
        if !line.starts_with(' ') && !t.is_empty() && !t.starts_with('#') {
            section = t.to_owned();
        }
        let keep = matches!(section.as_str(), "global" | "defaults" | "frontend ft_primary" | "backend primary");
        if !keep
            || t.starts_with('#')
            || t.starts_with("stats socket")
            || t.starts_with("server-state-file")
            || t.starts_with("load-server-state-from-file")
            || t.starts_with("log ")
            || t.starts_with("server ")
        {
            continue;
        }
        let line = if t.starts_with("bind ") {
            format!("    bind {bind}:{RW_PORT}")
        } else if t.starts_with("default-server") && !matches!(setup, Setup::HaAgent | Setup::HaAgentVip) {
            let opts = if setup == Setup::Patroni {
                "inter 1s fall 2 rise 1 on-marked-down shutdown-sessions"
            } else {
                OLD_SERVER_OPTS
            };
            format!("    default-server {opts}")
        } else if setup == Setup::HaAgentOldHaproxy && t.starts_with("timeout check") {
            "    timeout check 1s".to_owned()
        } else if setup == Setup::HaAgentOldHaproxy && t.starts_with("timeout connect") {
            "    timeout connect 4s".to_owned()
        } else {
            line.to_owned()
        };
        out.push_str(&line);
        out.push('\n');
        if section == "backend primary" && t.starts_with("default-server") {
            let port = if setup == Setup::Patroni { 8008 } else { CHECK_PORT };
            for (i, ip) in servers.iter().enumerate() {
                out.push_str(&format!("    server n{} {ip}:5432 check port {port}\n", i + 1));
            }
        }
    }
    anyhow::ensure!(out.contains("server n1"), "no `default-server` line in the shipped backend primary");
    Ok(out)
}

/// `daemon` on every database host, each with the config `config(i, ip, endpoints)` (the
/// etcd endpoints as a TOML list's contents).
fn start_on_every_host(
    c: &Cluster,
    daemon: &str,
    config: impl Fn(usize, Ipv4Addr, &str) -> String,
) -> anyhow::Result<Vec<Proc>> {
    let bin = outrigger_testkit::bin::daemon(daemon);
    let endpoints = c.etcd.endpoints().iter().map(|e| format!("\"{e}\"")).collect::<Vec<_>>().join(", ");
    let mut procs = Vec::new();
    for i in 1..=3 {
        let path = c.net.dir().path().join(format!("{daemon}-n{i}.toml"));
        std::fs::write(&path, config(i, c.net.host(i).ip(), &endpoints))?;
        let mut cmd = Command::new(&bin);
        cmd.arg("--config").arg(&path);
        procs.push(c.net.host(i).spawn(&format!("{daemon}-n{i}"), cmd)?);
    }
    Ok(procs)
}

/// proxy-checker on every host, reaching its PostgreSQL over the Unix socket.
fn start_checkers(c: &Cluster) -> anyhow::Result<Vec<Proc>> {
    start_on_every_host(c, "proxy-checker", |i, ip, endpoints| {
        format!(
            "name = \"n{i}\"\nscope = \"{SCOPE}\"\nlisten = \"{ip}:{CHECK_PORT}\"\n\
             [postgresql]\nconninfo = \"host={} port=5432 user=postgres dbname=postgres\"\n\
             [etcd]\nendpoints = [{endpoints}]\n",
            c.socket_dir(i).display()
        )
    })
}

/// The VIP of `ha-agent-vip`: an unused address of the test subnet.
fn vip_address() -> Ipv4Addr {
    format!("{}.50", outrigger_testkit::SUBNET_PREFIX).parse().expect("an IPv4 address")
}

/// HAProxy on `host` with `config` (written as `haproxy-<name>.cfg` and checked first).
fn spawn_haproxy(host: &outrigger_testkit::Host, dir: &Path, name: &str, config: &str) -> anyhow::Result<Proc> {
    let path = dir.join(format!("haproxy-{name}.cfg"));
    std::fs::write(&path, config)?;
    let check = Command::new("haproxy").arg("-c").arg("-f").arg(&path).output()?;
    anyhow::ensure!(check.status.success(), "haproxy -c: {}", String::from_utf8_lossy(&check.stderr));
    let mut cmd = Command::new("haproxy");
    cmd.arg("-db").arg("-f").arg(&path);
    host.spawn(&format!("haproxy-{name}"), cmd)
}

/// vip-manager on every host with the lab's settings (`deploy/lab/lab`): VRRPv3 every 250 ms,
/// +50 for the leader key's holder, -80 while the local HAProxy does not accept connections.
fn start_vip_managers(c: &Cluster) -> anyhow::Result<Vec<Proc>> {
    start_on_every_host(c, "vip-manager", |i, ip, endpoints| {
        format!(
            "interface = \"eth0\"\nvip = \"{vip}/32\"\nmode = \"vrrp\"\n\
             [vrrp]\nversion = 3\nvrid = 51\npriority = 100\nadvert_interval = \"250ms\"\n\
             [leader]\nscope = \"{SCOPE}\"\nmember = \"n{i}\"\nweight = 50\n\
             [etcd]\nendpoints = [{endpoints}]\n\
             [[track]]\nname = \"haproxy\"\ncheck = \"tcp\"\naddress = \"{ip}:{RW_PORT}\"\ninterval = \"1s\"\n\
             timeout = \"500ms\"\nweight = -80\n",
            vip = vip_address()
        )
    })
}

fn others(p: usize) -> Vec<usize> {
    (1..=3).filter(|&i| i != p).collect()
}

fn jitter_ms(max: u64) -> u64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    u64::from(nanos.wrapping_mul(2_654_435_761)) % max
}

/// One run's outcome: seconds to the first write elsewhere, and the writer's samples from 2 s
/// before the fault to 3 s after that write (times relative to the fault).
struct Run {
    secs: f64,
    trace: Vec<(f64, Option<f64>)>,
    steps: Steps,
}

/// When, in seconds after the fault, the new primary accepted writes, and when a fresh
/// connection through the proxy (or the VIP) first reached it. The writer's first
/// acknowledged insert (`Run::secs`) follows; what lies between the second and that is the
/// client's own share (its timeouts, reconnecting, its schedule).
#[derive(Debug, Clone, Copy)]
struct Steps {
    writable: f64,
    routed: f64,
}

fn measure(setup: Setup, fault: Fault, runs: usize) -> anyhow::Result<Vec<Run>> {
    let patroni = setup == Setup::Patroni;
    let opts = if patroni { Opts { sync: false, agents: 0, ..Opts::default() } } else { Opts::lab() };
    let mut c = Cluster::start(&format!("ha_client_bench_{}_{}", setup.name(), fault.name()), opts)?;
    if patroni {
        // n1 bootstraps, then the others clone from it. retry_timeout 3 (the harness's is 5).
        const DCS: &str = "    retry_timeout: 3\n";
        c.start_patroni(1, DCS)?;
        c.wait_primary(UP, &[])?;
        c.start_patroni(2, DCS)?;
        c.start_patroni(3, DCS)?;
    }
    let mut p = c.wait_primary(UP, &[])?;
    c.wait_streaming(p, &others(p), UP)?;
    c.sql(p, "create table client_writes(id bigserial primary key, at timestamptz default now())")?;
    let _checkers = if patroni { Vec::new() } else { start_checkers(&c)? };
    let ips: Vec<Ipv4Addr> = (1..=3).map(|i| c.net.host(i).ip()).collect();
    let vip = setup == Setup::HaAgentVip;
    // HAProxy on the client host, or (with the VIP) on every database host.
    let mut proxies = Vec::new();
    let mut vips = Vec::new();
    if vip {
        let config = haproxy_config(setup, &ips, "0.0.0.0")?;
        for i in 1..=3 {
            proxies.push(spawn_haproxy(c.net.host(i), c.net.dir().path(), &format!("n{i}"), &config)?);
        }
        vips = start_vip_managers(&c)?;
    }
    let client = c.net.add_host("client")?;
    if !vip {
        let config = haproxy_config(setup, &ips, "127.0.0.1")?;
        proxies.push(spawn_haproxy(client, client.dir().path(), setup.name(), &config)?);
    }
    // HA_CLIENT_BENCH_PCAP=1: the client's packets, for a look at what the writer waited for,
    // and every run's inserts.
    let pcap = std::env::var("HA_CLIENT_BENCH_PCAP").is_ok_and(|v| v == "1");
    let _capture = if pcap {
        let mut cmd = Command::new("tcpdump");
        let file = out_dir().join(format!("ha-agent-client-{}-{}.pcap", fault.name(), setup.name()));
        std::fs::create_dir_all(out_dir())?;
        cmd.args(["-i", "eth0", "-n", "-U", "-w"]).arg(file).args(["arp", "or", "tcp port 15432"]);
        Some(client.spawn("tcpdump", cmd)?)
    } else {
        None
    };
    let rt = client.runtime()?;
    let target = if vip { vip_address() } else { Ipv4Addr::LOCALHOST };
    let probes = Probes::start(&rt, &c, target, ips.clone());
    let w = Writer::start(&rt, target, ips);
    let mut out = Vec::new();
    for run in 1..=runs {
        for m in 0..c.etcd.len() {
            c.etcd.wait_healthy(&c.net, m, Duration::from_secs(60))?;
        }
        let settled = Instant::now();
        // Settled: the last 2 s of inserts (40) all went to the primary (right after HAProxy
        // starts, it counts every server up until its first check).
        wait_until(Duration::from_secs(60), "writes through HAProxy on the primary", || {
            let s = w.samples();
            let recent: Vec<&Sample> = s.iter().rev().take_while(|x| x.sent > settled).take(40).collect();
            (recent.len() == 40 && recent.iter().all(|x| x.member == Some(p))).then_some(())
        })?;
        std::thread::sleep(Duration::from_millis(jitter_ms(1000)));
        let t0 = Instant::now();
        fault.inject(&c, p)?;
        let (first, new) = wait_until(Duration::from_secs(120), "a write through HAProxy on a new primary", || {
            w.first_elsewhere(t0, p)
        })?;
        let secs = (first - t0).as_secs_f64();
        // Three seconds of the writer after the failover, for the graph.
        let until = first + Duration::from_secs(3);
        wait_until(Duration::from_secs(10), "3 s of writes after the failover", || {
            w.samples().last().is_some_and(|s| s.sent >= until).then_some(())
        })?;
        let rel = |t: Instant| if t >= t0 { (t - t0).as_secs_f64() } else { -(t0 - t).as_secs_f64() };
        let trace = w
            .samples()
            .iter()
            .filter(|s| rel(s.sent) >= -2.0 && s.sent <= first + Duration::from_secs(3))
            .map(|s| (rel(s.sent), s.member.map(|_| (s.done - s.sent).as_secs_f64() * 1000.0)))
            .collect();
        let since = |t: Option<Instant>| t.map_or(f64::NAN, |t| (t - t0).as_secs_f64());
        let steps = Steps {
            writable: since(Probes::first(&probes.writable, t0, p)),
            routed: since(Probes::first(&probes.routed, t0, p)),
        };
        println!(
            "  {:<21} {:<8} run {run:>2}: {secs:6.2} s (n{p} -> n{new}); accepts writes {:.2} s, proxy routes a new connection to it {:.2} s",
            setup.name(),
            fault.name(),
            steps.writable,
            steps.routed
        );
        if pcap {
            // Each insert of the run, against the fault's wall-clock time (to read the capture).
            let wall = std::time::SystemTime::now() - t0.elapsed();
            let unix = wall.duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
            let csv: String =
                std::iter::once(format!("fault_at_unix,{unix:.3}\nseconds_since_fault,latency_ms,member\n"))
                    .chain(w.samples().iter().filter(|s| s.sent + Duration::from_secs(2) >= t0 && s.sent <= first).map(
                        |s| {
                            format!(
                                "{:.3},{:.1},{}\n",
                                rel(s.sent),
                                (s.done - s.sent).as_secs_f64() * 1000.0,
                                s.member.map_or("error".into(), |m| format!("n{m}"))
                            )
                        },
                    ))
                    .collect();
            std::fs::write(
                out_dir().join(format!("ha-agent-client-{}-{}-run{run}.csv", fault.name(), setup.name())),
                csv,
            )?;
        }
        out.push(Run { secs, trace, steps });
        fault.repair(&c, p)?;
        let last = c.wait_primary(UP, &[])?;
        wait_ok(UP, "the old primary streaming again", || {
            c.wait_streaming(last, &others(last), Duration::from_secs(1))
        })?;
        p = last;
    }
    drop(w);
    drop(probes);
    drop(vips);
    drop(proxies);
    Ok(out)
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    if v.len() % 2 == 1 { v[v.len() / 2] } else { (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0 }
}

fn range(v: &[f64]) -> (f64, f64) {
    (v.iter().copied().fold(f64::INFINITY, f64::min), v.iter().copied().fold(f64::NEG_INFINITY, f64::max))
}

/// One panel per setup: the writer's latency (ms, log scale) against the time since the fault;
/// failed inserts as red marks along the top.
fn svg(fault: Fault, runs: &[(Setup, &Run)]) -> String {
    let (w, panel, left, top) = (900.0, 200.0, 60.0, 30.0);
    let x_max = runs.iter().flat_map(|(_, r)| r.trace.iter().map(|p| p.0)).fold(1.0_f64, f64::max).ceil();
    let x_min = -2.0;
    let sx = |x: f64| left + (x - x_min) / (x_max - x_min) * (w - left - 20.0);
    // 1 ms .. 1000 ms on a log scale.
    let sy = |base: f64, ms: f64| base + panel - (ms.clamp(1.0, 1000.0).log10() / 3.0) * (panel - 20.0);
    let h = top + runs.len() as f64 * (panel + 40.0);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{left}\" y=\"18\" font-size=\"14\">Insert latency through HAProxy around a {} of the primary's host (x: s since the fault; y: ms, log)</text>\n",
        fault.name()
    );
    for (k, (setup, run)) in runs.iter().enumerate() {
        let (trace, secs) = (&run.trace, run.secs);
        let base = top + k as f64 * (panel + 40.0);
        s.push_str(&format!(
            "<text x=\"{left}\" y=\"{}\">{}: first write on the new primary after {secs:.2} s</text>\n",
            base + 12.0,
            setup.name()
        ));
        s.push_str(&format!(
            "<line x1=\"{left}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\" stroke=\"black\"/>\n",
            w - 20.0,
            y = base + panel
        ));
        for ms in [1.0, 10.0, 100.0, 1000.0] {
            let y = sy(base, ms);
            s.push_str(&format!(
                "<line x1=\"{left}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\" stroke=\"#ddd\"/><text x=\"5\" y=\"{}\">{ms} ms</text>\n",
                w - 20.0,
                y + 4.0
            ));
        }
        let mut x = x_min.ceil();
        while x <= x_max {
            let px = sx(x);
            s.push_str(&format!(
                "<line x1=\"{px}\" y1=\"{}\" x2=\"{px}\" y2=\"{}\" stroke=\"#eee\"/><text x=\"{}\" y=\"{}\">{x}</text>\n",
                base + 20.0,
                base + panel,
                px - 4.0,
                base + panel + 14.0
            ));
            x += if x_max > 20.0 { 5.0 } else { 1.0 };
        }
        let fault_x = sx(0.0);
        s.push_str(&format!(
            "<line x1=\"{fault_x}\" y1=\"{}\" x2=\"{fault_x}\" y2=\"{}\" stroke=\"orange\" stroke-width=\"2\"/>\n",
            base + 20.0,
            base + panel
        ));
        for (t, lat) in trace.iter() {
            match lat {
                Some(ms) => s.push_str(&format!(
                    "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"2\" fill=\"steelblue\"/>\n",
                    sx(*t),
                    sy(base, *ms)
                )),
                None => s.push_str(&format!(
                    "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"3\" height=\"6\" fill=\"crimson\"/>\n",
                    sx(*t) - 1.5,
                    base + 20.0
                )),
            }
        }
    }
    s.push_str("</svg>\n");
    s
}

fn out_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench")
}

fn main() -> anyhow::Result<()> {
    let runs: usize = std::env::var("HA_CLIENT_BENCH_RUNS").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
    let faults: Vec<Fault> = std::env::var("HA_CLIENT_BENCH_FAULTS")
        .unwrap_or_else(|_| "cut-off,freeze".into())
        .split(',')
        .filter_map(|f| match f.trim() {
            "cut-off" => Some(Fault::CutOff),
            "freeze" => Some(Fault::Freeze),
            _ => None,
        })
        .collect();
    let mut setups: Vec<Setup> = std::env::var("HA_CLIENT_BENCH_SETUPS")
        .unwrap_or_else(|_| "ha-agent,ha-agent-vip,patroni".into())
        .split(',')
        .filter_map(|s| {
            [Setup::HaAgent, Setup::HaAgentVip, Setup::HaAgentOldHaproxy, Setup::Patroni]
                .into_iter()
                .find(|x| x.name() == s.trim())
        })
        .collect();
    if std::env::var("HA_CLIENT_BENCH_OLD").is_ok_and(|v| v == "1") && !setups.contains(&Setup::HaAgentOldHaproxy) {
        setups.insert(1.min(setups.len()), Setup::HaAgentOldHaproxy);
    }
    println!("failover as a client sees it: an insert every 50 ms through HAProxy (1 s timeouts), {runs} runs each");
    let mut table = Vec::new();
    for &fault in &faults {
        let mut results: Vec<(Setup, Vec<Run>)> = Vec::new();
        for &setup in &setups {
            results.push((setup, measure(setup, fault, runs)?));
        }
        let firsts: Vec<(Setup, &Run)> = results.iter().filter_map(|(s, r)| r.first().map(|r0| (*s, r0))).collect();
        std::fs::create_dir_all(out_dir())?;
        let path = out_dir().join(format!("ha-agent-client-{}.svg", fault.name()));
        std::fs::write(&path, svg(fault, &firsts))?;
        for (setup, run) in &firsts {
            let csv: String = std::iter::once("seconds_since_fault,latency_ms\n".to_owned())
                .chain(
                    run.trace
                        .iter()
                        .map(|(t, ms)| format!("{t:.3},{}\n", ms.map_or("error".into(), |m| format!("{m:.2}")))),
                )
                .collect();
            std::fs::write(out_dir().join(format!("ha-agent-client-{}-{}.csv", fault.name(), setup.name())), csv)?;
        }
        println!("  latency around the fault (first run of each): {}", path.display());
        for (setup, r) in &results {
            let v: Vec<f64> = r.iter().map(|x| x.secs).collect();
            let writable = median(&r.iter().map(|x| x.steps.writable).collect::<Vec<_>>());
            let routed = median(&r.iter().map(|x| x.steps.routed).collect::<Vec<_>>());
            table.push((fault, *setup, median(&v), range(&v), writable, routed));
        }
    }
    println!(
        "\n| fault | setup | median | range | steps (medians): accepts writes / + proxy routes to it / + the client's own share |\n|---|---|---|---|---|"
    );
    for (fault, setup, m, (lo, hi), writable, routed) in &table {
        println!(
            "| {} | {} | {m:.2} s | {lo:.2}-{hi:.2} s | {writable:.2} s / +{:.2} s / +{:.2} s |",
            fault.name(),
            setup.name(),
            routed - writable,
            m - routed
        );
    }
    for &fault in &faults {
        let m = |s: Setup| table.iter().find(|r| r.0 == fault && r.1 == s).map(|r| r.2);
        if let (Some(theirs), Some(ours)) = (m(Setup::Patroni), m(Setup::HaAgent)) {
            println!("{}: Patroni / ha-agent = {:.1}x", fault.name(), theirs / ours);
        }
        if let (Some(theirs), Some(ours)) = (m(Setup::Patroni), m(Setup::HaAgentVip)) {
            println!("{}: Patroni / ha-agent through the VIP = {:.1}x", fault.name(), theirs / ours);
        }
        if let (Some(vip), Some(direct)) = (m(Setup::HaAgentVip), m(Setup::HaAgent)) {
            println!(
                "{}: the VIP step adds {:+.2} s (median through the VIP minus through HAProxy alone)",
                fault.name(),
                vip - direct
            );
        }
    }
    Ok(())
}
