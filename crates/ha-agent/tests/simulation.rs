//! Deterministic simulation: 3-5 agents running the real decision core (`ha_agent::core`) over
//! an in-memory etcd with leases and fake PostgreSQL servers with WAL, under random faults,
//! for many seeds.
//!
//! Faults: host crashes, agent-only crashes with a quick restart, PostgreSQL crashes (some
//! unable to restart for a while), host freezes (SIGSTOP of everything on the host), agent-etcd
//! and agent-agent partitions, whole-etcd outages, etcd leader changes (which re-extend every
//! lease to its full TTL), forward clock jumps and clock-rate drift, planned switchovers, and
//! maintenance mode (`pause`) switched on for a while.
//!
//! Invariants:
//! 1. never two PostgreSQL servers accept writes at the same instant;
//! 2. never a promotion of a member further behind the cluster's last published position
//!    (`status.optime`) than `maximum_lag_on_failover`;
//! 3. never a replica streaming across a fork that PostgreSQL's timeline check cannot see
//!    (a timeline id reused with different contents);
//! 4. once faults stop, the cluster converges to exactly one primary holding the leader key,
//!    every other member streaming from it.
//!
//! Modelling choices (each mirrors what the real shell in `crate::run` does):
//! - The simulation steps in 10 ms ticks. In each tick, every host first runs its lease keeper
//!   (renew, or fence when the lease is no longer trusted), then its main loop; writes and the
//!   invariant check come last. So a host thawed after a freeze fences before its PostgreSQL
//!   takes a write: in the real world that is a race of microseconds between the agent's timer
//!   and PostgreSQL's backends that only a hardware watchdog closes (or synchronous
//!   replication, which keeps such a write from being acknowledged).
//! - An agent-only crash restarts within a second, as systemd does with `RestartSec` below the
//!   lease's fence margin: a primary whose agent stays dead longer is unprotected until the
//!   agent is back (Patroni needs its watchdog for the same case).
//! - etcd itself is exact: a lease expires `ttl` after the last keep-alive it received, or
//!   later after an etcd leader change; etcd's own clock does not jump.

use std::collections::BTreeMap;
use std::time::Duration;

use ha_agent::config::Timings;
use ha_agent::core::{
    ClusterState, ClusterView, ConfigState, Control, Decision, DynConfig, FailoverRequest, Initialize, LeaderKey,
    LeaseView, Member, Moment, Observed, PeerProbe, PeerRef, PeerStatus, PgView, Recent, Role, RunningPg, Settings,
    Tags, TimelineSwitch, decide,
};

const TICK: u64 = 10;
const TTL: u64 = 3000;
const LOOP_WAIT: u64 = 1000;
const RETRY: u64 = 1000;
/// `Timings::renew_interval`: min(loop_wait, ttl / 4).
const RENEW: u64 = 750;
const PROBE_TIMEOUT: u64 = 2000;
const MAX_LAG: u64 = 2000;
const FAULTS_FROM: u64 = 5_000;
const FAULTS_UNTIL: u64 = 35_000;
const CONVERGE_BY: u64 = 65_000;

// ---------------------------------------------------------------------------------------------
// Deterministic randomness (SplitMix64): the same seed gives the same run on every machine.

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
    fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
}

// ---------------------------------------------------------------------------------------------
// In-memory etcd.

#[derive(Clone)]
struct Lease {
    expiry: u64,
}

#[derive(Default)]
struct Etcd {
    up: bool,
    revision: i64,
    leases: BTreeMap<i64, Lease>,
    next_lease: i64,
    leader: Option<LeaderKey>,
    initialize: Option<Initialize>,
    members: BTreeMap<String, Member>,
    status_optime: Option<u64>,
    history: Vec<TimelineSwitch>,
    failover: Option<FailoverRequest>,
    /// Bumped whenever a key that wakes the HA loops changes (leader, failover, initialize).
    wake_revision: i64,
    /// `pause` in `config`, and when the simulation lifts it.
    paused: bool,
    pause_ends: u64,
}

impl Etcd {
    fn bump(&mut self, wakes: bool) -> i64 {
        self.revision += 1;
        if wakes {
            self.wake_revision = self.revision;
        }
        self.revision
    }

    fn expire(&mut self, now: u64) {
        let dead: Vec<i64> = self.leases.iter().filter(|(_, l)| l.expiry <= now).map(|(id, _)| *id).collect();
        for id in dead {
            self.leases.remove(&id);
            if self.leader.as_ref().is_some_and(|l| l.lease == id) {
                self.leader = None;
                self.bump(true);
            }
            let before = self.members.len();
            self.members.retain(|_, m| m.lease != id);
            if self.members.len() != before {
                self.bump(false);
            }
        }
    }

    fn view(&self) -> ClusterView {
        let mut v = ClusterView::empty();
        v.revision = self.revision;
        v.initialize = self.initialize.unwrap_or(Initialize::Absent);
        v.config = ConfigState::Valid(DynConfig { pause: self.paused, ..dyn_config() });
        v.leader = self.leader.clone();
        v.members = self.members.values().cloned().collect();
        v.status_optime = self.status_optime;
        v.history = self.history.clone();
        v.failover = self.failover.clone();
        v
    }
}

fn dyn_config() -> DynConfig {
    DynConfig {
        maximum_lag_on_failover: MAX_LAG,
        primary_start_timeout: Duration::from_secs(20),
        ..DynConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Fake PostgreSQL: WAL as segments, each written by one timeline incarnation (`token`), so that
// the simulation can tell real divergence from what PostgreSQL's timeline ids can see.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Seg {
    token: u64,
    tl: u32,
    start: u64,
    end: u64,
}

#[derive(Clone, Debug)]
struct Data {
    sysid: u64,
    segs: Vec<Seg>,
    /// pg_control's state when stopped.
    state: ClusterState,
    checkpoint: u64,
}

impl Data {
    fn end(&self) -> u64 {
        self.segs.last().map_or(0, |s| s.end)
    }
    fn tl(&self) -> u32 {
        self.segs.last().map_or(1, |s| s.tl)
    }
    fn max_tl(&self) -> u32 {
        self.segs.iter().map(|s| s.tl).max().unwrap_or(1)
    }
    /// The WAL up to `end`.
    fn prefix(&self, end: u64) -> Vec<Seg> {
        let mut out = Vec::new();
        for s in &self.segs {
            if s.start >= end {
                break;
            }
            out.push(Seg { end: s.end.min(end), ..*s });
        }
        out
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Run {
    Stopped,
    Primary,
    Replica,
}

struct Pg {
    data: Option<Data>,
    run: Run,
    /// `primary_conninfo`: who the walreceiver streams from. PostgreSQL config, so it outlives
    /// an agent restart (the agent itself then does not know it until it rewrites it).
    upstream: Option<String>,
}

impl Pg {
    fn writable(&self) -> bool {
        self.run == Run::Primary
    }
}

/// What PostgreSQL's own check allows: our current timeline must be in the upstream's history
/// and not end before our position.
fn pg_accepts(ours: &Data, up: &Data) -> bool {
    let tl = ours.tl();
    up.segs.iter().any(|s| s.tl == tl && s.end >= ours.end()) || (up.tl() == tl && up.end() >= ours.end())
}

/// The truth: our WAL is a prefix of the upstream's.
fn truly_compatible(ours: &Data, up: &Data) -> bool {
    ours.segs.iter().enumerate().all(|(i, s)| {
        up.segs.get(i).is_some_and(|u| {
            u.token == s.token && u.start == s.start && u.end >= s.end && (i + 1 == ours.segs.len() || u.end == s.end)
        })
    })
}

// ---------------------------------------------------------------------------------------------
// Agents.

#[derive(Clone)]
enum Pending {
    /// etcd read timing out: decide with `cluster: None` when done.
    SnapshotFailed,
    /// Peers asked; decide again with their answers when done.
    Probed {
        answers: Vec<PeerProbe>,
    },
    Promote,
    StartPrimary,
    StartReplica(Option<String>),
    Bootstrap,
    Clone(String),
    Rewind(String),
}

struct Agent {
    lease: LeaseView,
    next_renew: u64,
    /// PostgreSQL may be primary: the lease keeper fences it when the lease is not trusted.
    armed: bool,
    next_cycle: u64,
    seen_wake: i64,
    pending: Option<(u64, Pending)>,
    recent: Recent,
    upstream: Option<String>,
    last: Option<String>,
    /// `pause` as last read (the shell keeps the last good config when etcd is unreachable).
    paused: bool,
}

impl Agent {
    fn new(pg_writable: bool) -> Self {
        Self {
            lease: LeaseView::NONE,
            next_renew: 0,
            armed: pg_writable,
            next_cycle: 0,
            seen_wake: 0,
            pending: None,
            recent: Recent::default(),
            upstream: None,
            last: None,
            paused: false,
        }
    }
}

struct Host {
    name: String,
    settings: Settings,
    agent: Option<Agent>,
    agent_back_at: u64,
    frozen_until: u64,
    host_down_until: u64,
    pg: Pg,
    cannot_start_until: u64,
    /// Local monotonic clock: global * (1 + ppm/1e6) + offset (offset only grows).
    ppm: i64,
    offset: u64,
}

impl Host {
    fn local(&self, t: u64) -> u64 {
        let drift = (t as i64) * self.ppm / 1_000_000;
        (t as i64 + drift) as u64 + self.offset
    }
    fn running(&self, t: u64) -> bool {
        t >= self.frozen_until && t >= self.host_down_until
    }
}

// ---------------------------------------------------------------------------------------------
// The world.

struct World {
    t: u64,
    rng: Rng,
    etcd: Etcd,
    hosts: Vec<Host>,
    etcd_cut: Vec<u64>,
    pair_cut: Vec<Vec<u64>>,
    next_token: u64,
    log: Vec<String>,
    violations: Vec<String>,
    promotions: u32,
}

fn timings() -> Timings {
    Timings {
        ttl: Duration::from_millis(TTL),
        loop_wait: Duration::from_millis(LOOP_WAIT),
        retry_timeout: Duration::from_millis(RETRY),
    }
}

impl World {
    fn new(seed: u64) -> Self {
        let mut rng = Rng(seed);
        let n = 3 + (seed % 3) as usize;
        let hosts = (0..n)
            .map(|i| {
                let mut tags = Tags::default();
                // Some members are less preferred, one in five clusters has a nofailover member.
                if i == n - 1 && seed.is_multiple_of(5) {
                    tags.nofailover = true;
                } else if rng.chance(200) {
                    tags.failover_priority = 2;
                }
                Host {
                    name: format!("n{}", i + 1),
                    settings: Settings {
                        name: format!("n{}", i + 1),
                        timings: timings(),
                        tags,
                        use_pg_rewind: Some(true),
                        remove_data_directory_on_rewind_failure: true,
                        remove_data_directory_on_diverged_timelines: false,
                    },
                    agent: Some(Agent::new(false)),
                    agent_back_at: 0,
                    frozen_until: 0,
                    host_down_until: 0,
                    pg: Pg { data: None, run: Run::Stopped, upstream: None },
                    cannot_start_until: 0,
                    ppm: rng.range(0, 10_000) as i64 - 5_000,
                    offset: rng.below(100_000),
                }
            })
            .collect();
        let etcd = Etcd { up: true, next_lease: 1000, ..Etcd::default() };
        Self {
            t: 0,
            rng,
            etcd,
            hosts,
            etcd_cut: vec![0; n],
            pair_cut: vec![vec![0; n]; n],
            next_token: 1,
            log: Vec::new(),
            violations: Vec::new(),
            promotions: 0,
        }
    }

    fn note(&mut self, line: String) {
        self.log.push(format!("{:>6} {line}", self.t));
    }

    fn violation(&mut self, what: String) {
        self.note(format!("VIOLATION {what}"));
        self.violations.push(format!("t={} {what}", self.t));
    }

    fn idx(&self, name: &str) -> Option<usize> {
        self.hosts.iter().position(|h| h.name == name)
    }

    fn etcd_ok(&self, h: usize) -> bool {
        self.etcd.up && self.t >= self.etcd_cut[h] && self.hosts[h].running(self.t)
    }

    fn link_ok(&self, a: usize, b: usize) -> bool {
        self.t >= self.pair_cut[a][b] && self.hosts[a].running(self.t) && self.hosts[b].running(self.t)
    }

    fn token(&mut self) -> u64 {
        self.next_token += 1;
        self.next_token
    }

    // ---- PostgreSQL as the core sees it ----

    fn pg_view(&self, h: usize) -> PgView {
        let host = &self.hosts[h];
        let Some(d) = &host.pg.data else { return PgView::NoData };
        match host.pg.run {
            Run::Stopped => PgView::Stopped(Control {
                sysid: d.sysid,
                state: d.state,
                timeline: d.tl(),
                checkpoint_lsn: d.checkpoint,
                rewindable: true,
            }),
            Run::Primary | Run::Replica => PgView::Running(RunningPg {
                sysid: d.sysid,
                primary: host.pg.run == Run::Primary,
                timeline: d.tl(),
                wal_position: d.end(),
                upstream: host.agent.as_ref().and_then(|a| a.upstream.clone()),
                streaming: self.streams(h),
                rewindable: true,
            }),
        }
    }

    /// Whether host `h`'s walreceiver can stream from its upstream now (PostgreSQL's view:
    /// the upstream runs, is reachable and its history contains our position).
    fn streams(&self, h: usize) -> bool {
        let host = &self.hosts[h];
        if host.pg.run != Run::Replica {
            return false;
        }
        let Some(u) = host.pg.upstream.as_deref().and_then(|n| self.idx(n)) else { return false };
        let (Some(rd), Some(ud)) = (&host.pg.data, &self.hosts[u].pg.data) else { return false };
        u != h
            && self.hosts[u].pg.run != Run::Stopped
            && self.link_ok(h, u)
            && rd.sysid == ud.sysid
            && pg_accepts(rd, ud)
    }

    fn peer_answer(&self, asker: usize, peer: usize) -> Option<PeerStatus> {
        let p = &self.hosts[peer];
        if p.agent.is_none() || !self.link_ok(asker, peer) {
            return None;
        }
        let d = p.pg.data.as_ref()?;
        if p.pg.run == Run::Stopped {
            return None;
        }
        Some(PeerStatus {
            primary: p.pg.run == Run::Primary,
            wal_position: d.end(),
            timeline: Some(d.tl()),
            tags: p.settings.tags.clone(),
            watchdog_failed: false,
        })
    }

    // ---- PostgreSQL actions ----

    fn stop_pg(&mut self, h: usize, clean: bool) {
        let t = self.t;
        let pg = &mut self.hosts[h].pg;
        let Some(d) = pg.data.as_mut() else { return };
        match (pg.run, clean) {
            (Run::Stopped, _) => {}
            (Run::Primary, true) => {
                // The shutdown checkpoint is one record at the end of the WAL.
                let end = d.end();
                if let Some(last) = d.segs.last_mut() {
                    last.end += 1;
                }
                d.checkpoint = end;
                d.state = ClusterState::ShutDown;
                // Connected walsenders ship everything before the server exits.
                let snapshot = d.clone();
                pg.run = Run::Stopped;
                for r in 0..self.hosts.len() {
                    if r != h
                        && self.hosts[r].pg.run == Run::Replica
                        && self.hosts[r].pg.upstream.as_deref() == Some(&self.hosts[h].name)
                        && self.t >= self.pair_cut[h][r]
                        && self.hosts[r].running(t)
                        && let Some(rd) = self.hosts[r].pg.data.as_mut()
                        && truly_compatible(rd, &snapshot)
                    {
                        rd.segs = snapshot.segs.clone();
                    }
                }
                return;
            }
            (Run::Primary, false) => d.state = ClusterState::InProduction,
            (Run::Replica, true) => d.state = ClusterState::ShutDownInRecovery,
            (Run::Replica, false) => d.state = ClusterState::InArchiveRecovery,
        }
        pg.run = Run::Stopped;
    }

    fn promote_pg(&mut self, h: usize) {
        let token = self.token();
        let name = self.hosts[h].name.clone();
        let Some(d) = self.hosts[h].pg.data.as_mut() else { return };
        let (old_tl, at) = (d.tl(), d.end());
        let tl = d.max_tl() + 1;
        d.segs.push(Seg { token, tl, start: at, end: at });
        self.hosts[h].pg.run = Run::Primary;
        self.promotions += 1;
        self.note(format!("{name} promoted: timeline {old_tl} -> {tl} at {at}"));
        // Invariant 2, judged against what the cluster published.
        if let Some(optime) = self.etcd.status_optime
            && optime > at + MAX_LAG
        {
            self.violation(format!("{name} promoted {} bytes behind status.optime {optime}", optime - at));
        }
        // The real shell writes history right after promote, in the same action.
        if self.etcd_ok(h) {
            self.write_history(h);
        }
    }

    /// The history as the primary's timeline history file has it; the last switch was ours,
    /// older rows keep the leader names already recorded.
    fn write_history(&mut self, h: usize) {
        let Some(d) = &self.hosts[h].pg.data else { return };
        let segs = d.segs.clone();
        let name = self.hosts[h].name.clone();
        let rows = segs.len().saturating_sub(1);
        let hist: Vec<TimelineSwitch> = segs
            .windows(2)
            .enumerate()
            .map(|(i, w)| {
                let known = self.etcd.history.iter().find(|r| r.timeline == w[0].tl).and_then(|r| r.leader.clone());
                let leader = if i + 1 == rows { Some(name.clone()) } else { known };
                TimelineSwitch { timeline: w[0].tl, lsn: w[0].end, leader }
            })
            .collect();
        if hist != self.etcd.history {
            self.etcd.history = hist;
            self.etcd.bump(false);
        }
    }

    /// Before promoting, the leader records the switch it is about to make, so that nobody
    /// else can reuse the new timeline id should it die before writing the exact row.
    fn announce_promotion(&mut self, h: usize) -> bool {
        if !self.etcd_ok(h) {
            return false;
        }
        let Some(d) = &self.hosts[h].pg.data else { return false };
        let (tl, at) = (d.tl(), d.end());
        let name = self.hosts[h].name.clone();
        self.etcd.history.retain(|r| r.timeline < tl);
        self.etcd.history.push(TimelineSwitch { timeline: tl, lsn: at, leader: Some(name) });
        self.etcd.bump(false);
        true
    }

    fn touch_member(&mut self, h: usize) {
        let Some(lease) = self.hosts[h].agent.as_ref().and_then(|a| a.lease.id) else { return };
        if !self.etcd.leases.contains_key(&lease) {
            return;
        }
        let host = &self.hosts[h];
        let (lsn, tl) = host.pg.data.as_ref().map_or((None, None), |d| (Some(d.end()), Some(d.tl())));
        let m = Member {
            name: host.name.clone(),
            conn_url: format!("postgres://{}:5432/postgres", host.name),
            api_url: format!("http://{}:8008/patroni", host.name),
            role: if host.pg.run == Run::Primary { Role::Primary } else { Role::Replica },
            running: host.pg.run != Run::Stopped,
            lsn,
            timeline: tl,
            tags: host.settings.tags.clone(),
            lease,
        };
        if self.etcd.members.get(&host.name) != Some(&m) {
            self.etcd.members.insert(host.name.clone(), m);
            self.etcd.bump(false);
        }
    }

    // ---- one tick ----

    fn step(&mut self, faults: bool) {
        self.t += TICK;
        if faults {
            self.inject_faults();
        }
        self.restart_hosts();
        self.etcd.expire(self.t);
        if self.etcd.paused && self.t >= self.etcd.pause_ends {
            self.etcd.paused = false;
            self.etcd.bump(true);
            self.note("pause lifted".into());
        }
        let mut order: Vec<usize> = (0..self.hosts.len()).collect();
        for i in (1..order.len()).rev() {
            let j = self.rng.below(i as u64 + 1) as usize;
            order.swap(i, j);
        }
        for &h in &order {
            if self.hosts[h].running(self.t) && self.hosts[h].agent.is_some() {
                self.lease_keeper(h);
            }
        }
        for &h in &order {
            if self.hosts[h].running(self.t) && self.hosts[h].agent.is_some() {
                self.main_loop(h);
            }
        }
        self.replicate();
        self.write_and_check();
    }

    fn restart_hosts(&mut self) {
        let t = self.t;
        for h in 0..self.hosts.len() {
            let host = &mut self.hosts[h];
            if host.agent.is_none() && t >= host.agent_back_at && t >= host.host_down_until {
                let writable = host.pg.writable();
                let mut agent = Agent::new(writable);
                // The shell reads the upstream back from the config file it wrote.
                agent.upstream = host.pg.upstream.clone();
                host.agent = Some(agent);
                let name = host.name.clone();
                self.note(format!("{name} agent started"));
            }
        }
    }

    /// The lease keeper task: renews on its own schedule and fences when the lease is no
    /// longer trusted.
    fn lease_keeper(&mut self, h: usize) {
        let now = self.hosts[h].local(self.t);
        let reachable = self.etcd_ok(h);
        let t = self.t;
        let agent = self.hosts[h].agent.as_mut().expect("agent runs");
        if reachable {
            match agent.lease.id {
                None => {
                    let id = self.etcd.next_lease;
                    self.etcd.next_lease += 1;
                    self.etcd.leases.insert(id, Lease { expiry: t + TTL });
                    agent.lease = LeaseView { id: Some(id), expires_at: Moment::from_millis(now + TTL) };
                    agent.next_renew = now + RENEW;
                }
                Some(id) if now >= agent.next_renew => {
                    if let Some(l) = self.etcd.leases.get_mut(&id) {
                        l.expiry = l.expiry.max(t + TTL);
                        agent.lease.expires_at = Moment::from_millis(now + TTL);
                        agent.next_renew = now + RENEW;
                    } else {
                        agent.lease = LeaseView::NONE;
                    }
                }
                Some(_) => {}
            }
        } else if now >= agent.next_renew {
            // A failed attempt: retry soon.
            agent.next_renew = now + 200;
        }
        let trusted = agent.lease.trusted(Moment::from_millis(now), &timings());
        if agent.armed && !trusted {
            agent.armed = false;
            if matches!(agent.pending, Some((_, Pending::Promote | Pending::StartPrimary | Pending::Bootstrap))) {
                agent.pending = None;
            }
            let name = self.hosts[h].name.clone();
            if self.hosts[h].pg.run == Run::Primary {
                self.note(format!("{name} lease keeper fences PostgreSQL"));
            }
            self.stop_pg(h, false);
        }
    }

    fn main_loop(&mut self, h: usize) {
        let now = self.hosts[h].local(self.t);
        let agent = self.hosts[h].agent.as_ref().expect("agent runs");
        if let Some((done, _)) = &agent.pending {
            if self.t < *done {
                return;
            }
            let Some((_, p)) = self.hosts[h].agent.as_mut().and_then(|a| a.pending.take()) else { return };
            self.complete(h, p);
            return;
        }
        let reachable = self.etcd_ok(h);
        let woken = reachable && self.etcd.wake_revision > agent.seen_wake;
        if now < agent.next_cycle && !woken {
            return;
        }
        if reachable {
            let rev = self.etcd.wake_revision;
            let agent = self.hosts[h].agent.as_mut().expect("agent runs");
            agent.seen_wake = rev;
            agent.next_cycle = now + LOOP_WAIT;
            let view = self.etcd.view();
            self.cycle(h, Some(view), None);
        } else {
            // The read times out after retry_timeout; decide without etcd then.
            let agent = self.hosts[h].agent.as_mut().expect("agent runs");
            agent.next_cycle = now + LOOP_WAIT;
            agent.pending = Some((self.t + RETRY, Pending::SnapshotFailed));
        }
    }

    fn cycle(&mut self, h: usize, view: Option<ClusterView>, answers: Option<Vec<PeerProbe>>) {
        let now = Moment::from_millis(self.hosts[h].local(self.t));
        let pg = self.pg_view(h);
        if let Some(v) = &view {
            let unlocked = v.leader.is_none();
            let agent = self.hosts[h].agent.as_mut().expect("agent runs");
            agent.paused = matches!(&v.config, ConfigState::Valid(c) if c.pause);
            if unlocked {
                agent.recent.unlocked_since.get_or_insert(now);
            } else {
                agent.recent.unlocked_since = None;
            }
        }
        if !matches!(pg, PgView::Stopped(_) | PgView::NoData) {
            self.hosts[h].agent.as_mut().expect("agent runs").recent.stepped_down_at = None;
        }
        let host = &self.hosts[h];
        let agent = host.agent.as_ref().expect("agent runs");
        let cfg = DynConfig { pause: agent.paused, ..dyn_config() };
        let decision = decide(&Observed {
            now,
            wall_ms: 1_800_000_000_000 + self.t,
            settings: &host.settings,
            cluster: view.as_ref(),
            config: &cfg,
            lease: agent.lease,
            pg: &pg,
            peers: answers.as_deref(),
            recent: &agent.recent,
            watchdog_failed: false,
        });
        let line = decision.to_string();
        // The shell remembers members seen as non-leaders (see `Recent::known_peers`).
        if let Some(v) = &view {
            let leader = v.leader.as_ref().map(|l| l.name.clone());
            let agent = self.hosts[h].agent.as_mut().expect("agent runs");
            for m in &v.members {
                agent.recent.known_peers.retain(|p| p.name != m.name);
                if Some(&m.name) != leader.as_ref() {
                    agent.recent.known_peers.push(PeerRef { name: m.name.clone(), api_url: m.api_url.clone() });
                }
            }
        }
        let host = &self.hosts[h];
        let agent = host.agent.as_ref().expect("agent runs");
        if agent.last.as_deref() != Some(line.as_str()) {
            let name = host.name.clone();
            self.note(format!("{name}: {line}"));
            self.hosts[h].agent.as_mut().expect("agent runs").last = Some(line);
        }
        // The real shell arms the lease keeper whenever it sees a primary.
        if pg.writable() {
            self.hosts[h].agent.as_mut().expect("agent runs").armed = true;
        }
        self.act(h, decision);
        if self.etcd_ok(h) {
            self.touch_member(h);
        }
    }

    fn set_upstream(&mut self, h: usize, up: Option<String>) {
        self.hosts[h].pg.upstream = up.clone();
        if let Some(a) = self.hosts[h].agent.as_mut() {
            a.upstream = up;
        }
    }

    fn busy(&mut self, h: usize, ms: u64, p: Pending) {
        let t = self.t;
        self.hosts[h].agent.as_mut().expect("agent runs").pending = Some((t + ms, p));
    }

    fn recent(&mut self, h: usize) -> &mut Recent {
        &mut self.hosts[h].agent.as_mut().expect("agent runs").recent
    }

    fn act(&mut self, h: usize, d: Decision) {
        let name = self.hosts[h].name.clone();
        let ok = self.etcd_ok(h);
        let lease = self.hosts[h].agent.as_ref().and_then(|a| a.lease.id);
        match d {
            Decision::Fence { .. } | Decision::Demote { .. } => {
                self.stop_pg(h, false);
                self.hosts[h].agent.as_mut().expect("agent runs").armed = false;
            }
            Decision::RaceInitialize => {
                if ok && self.etcd.initialize.is_none() {
                    self.etcd.initialize = Some(Initialize::Racing);
                    self.etcd.bump(true);
                    // Take the leader key before initdb: nobody else can have data yet.
                    if let Some(l) = lease
                        && self.etcd.leader.is_none()
                        && self.etcd.leases.contains_key(&l)
                    {
                        let rev = self.etcd.bump(true);
                        self.etcd.leader = Some(LeaderKey { name: name.clone(), lease: l, mod_revision: rev });
                        self.hosts[h].agent.as_mut().expect("agent runs").armed = true;
                        self.busy(h, 300, Pending::Bootstrap);
                    } else {
                        self.etcd.initialize = None;
                        self.etcd.bump(true);
                    }
                }
            }
            Decision::PublishInitialize { sysid } => {
                if ok {
                    self.etcd.initialize = Some(Initialize::Sysid(sysid));
                    self.etcd.bump(true);
                }
            }
            Decision::Clone { from } => self.busy(h, 300, Pending::Clone(from)),
            Decision::ProbePeers { peers } => {
                let answers: Vec<PeerProbe> = peers
                    .iter()
                    .map(|p| PeerProbe {
                        name: p.name.clone(),
                        status: self.idx(&p.name).and_then(|i| self.peer_answer(h, i)),
                    })
                    .collect();
                let slow = answers.iter().any(|a| a.status.is_none());
                self.busy(h, if slow { PROBE_TIMEOUT } else { 20 }, Pending::Probed { answers });
            }
            Decision::AcquireLeader => {
                if ok
                    && let Some(l) = lease
                    && self.etcd.leader.is_none()
                    && self.etcd.leases.contains_key(&l)
                {
                    let rev = self.etcd.bump(true);
                    self.etcd.leader = Some(LeaderKey { name: name.clone(), lease: l, mod_revision: rev });
                    self.note(format!("{name} took the leader key"));
                    if self.etcd.failover.take().is_some() {
                        self.etcd.bump(true);
                    }
                    self.hosts[h].agent.as_mut().expect("agent runs").armed = true;
                    if self.hosts[h].pg.run == Run::Replica && self.announce_promotion(h) {
                        self.busy(h, 100, Pending::Promote);
                    }
                }
            }
            Decision::RetakeLeader => {
                if ok
                    && let Some(l) = lease
                    && self.etcd.leader.as_ref().is_some_and(|k| k.name == name)
                    && self.etcd.leases.contains_key(&l)
                {
                    let rev = self.etcd.bump(false);
                    self.etcd.leader = Some(LeaderKey { name, lease: l, mod_revision: rev });
                }
            }
            Decision::Promote => {
                if self.announce_promotion(h) {
                    self.hosts[h].agent.as_mut().expect("agent runs").armed = true;
                    self.busy(h, 100, Pending::Promote);
                }
            }
            Decision::StartPrimary => {
                self.hosts[h].agent.as_mut().expect("agent runs").armed = true;
                self.busy(h, 200, Pending::StartPrimary);
            }
            Decision::ReleaseLeader { .. } => {
                // Paused, the shell releases without stopping PostgreSQL.
                let paused = self.hosts[h].agent.as_ref().is_some_and(|a| a.paused);
                if self.hosts[h].pg.run == Run::Primary && !paused {
                    self.stop_pg(h, false);
                }
                if ok && self.etcd.leader.as_ref().is_some_and(|k| k.name == name) {
                    self.etcd.leader = None;
                    self.etcd.bump(true);
                }
            }
            Decision::StepDown { candidate } => {
                self.stop_pg(h, true);
                let now = Moment::from_millis(self.hosts[h].local(self.t));
                let agent = self.hosts[h].agent.as_mut().expect("agent runs");
                agent.armed = false;
                agent.recent.stepped_down_at = Some(now);
                // The shutdown checkpoint becomes the cluster's last position.
                let checkpoint = self.hosts[h].pg.data.as_ref().map(|d| d.checkpoint);
                if ok && self.etcd.leader.as_ref().is_some_and(|k| k.name == name) {
                    self.etcd.status_optime = checkpoint.or(self.etcd.status_optime);
                    self.etcd.leader = None;
                    self.etcd.bump(true);
                    self.note(format!("{name} stepped down for {candidate:?}"));
                }
            }
            Decision::ClearFailover { .. } => {
                if ok && self.etcd.failover.take().is_some() {
                    self.etcd.bump(true);
                }
            }
            Decision::Lead => {
                if ok {
                    let end = self.hosts[h].pg.data.as_ref().map_or(0, Data::end);
                    self.etcd.status_optime = Some(end);
                    self.write_history(h);
                }
            }
            Decision::Follow { leader } => match self.hosts[h].pg.run {
                Run::Stopped => {
                    if self.t < self.hosts[h].cannot_start_until {
                        self.recent(h).start_failed_at = Some(Moment::from_millis(self.hosts[h].local(self.t)));
                    } else {
                        self.busy(h, 200, Pending::StartReplica(leader));
                    }
                }
                _ => self.set_upstream(h, leader),
            },
            Decision::Replicate { .. } | Decision::Wait { .. } => {}
            Decision::Rewind { leader } => {
                if self.hosts[h].pg.run != Run::Stopped {
                    self.stop_pg(h, true);
                }
                self.recent(h).diverged = true;
                // The real shell first checks that the leader answers; otherwise it retries.
                if let Some(l) = self.idx(&leader)
                    && self.link_ok(h, l)
                    && self.hosts[l].pg.run != Run::Stopped
                {
                    self.busy(h, 300, Pending::Rewind(leader));
                }
            }
            Decision::Reinit { .. } => {
                self.stop_pg(h, false);
                self.hosts[h].pg.data = None;
                let r = self.recent(h);
                r.diverged = false;
                r.rewind_failed = false;
            }
            Decision::StayStopped { .. } => {
                self.stop_pg(h, true);
                self.recent(h).diverged = true;
            }
        }
    }

    fn complete(&mut self, h: usize, p: Pending) {
        let name = self.hosts[h].name.clone();
        match p {
            Pending::SnapshotFailed => {
                if self.etcd_ok(h) {
                    // Reachable again: the next loop iteration reads.
                    self.hosts[h].agent.as_mut().expect("agent runs").next_cycle = 0;
                } else {
                    self.cycle(h, None, None);
                }
            }
            // The answers took a while: decide on a fresh read, as the shell does.
            Pending::Probed { answers } => {
                let view = self.etcd_ok(h).then(|| self.etcd.view());
                self.cycle(h, view, Some(answers));
            }
            Pending::Promote => {
                if self.hosts[h].pg.run == Run::Replica {
                    self.promote_pg(h);
                    self.set_upstream(h, None);
                }
            }
            Pending::StartPrimary => {
                if self.t < self.hosts[h].cannot_start_until {
                    self.recent(h).start_failed_at = Some(Moment::from_millis(self.hosts[h].local(self.t)));
                    self.note(format!("{name} PostgreSQL failed to start"));
                } else if self.hosts[h].pg.run == Run::Stopped && self.hosts[h].pg.data.is_some() {
                    self.hosts[h].pg.run = Run::Primary;
                    self.recent(h).start_failed_at = None;
                }
            }
            Pending::StartReplica(leader) => {
                if self.t < self.hosts[h].cannot_start_until {
                    self.recent(h).start_failed_at = Some(Moment::from_millis(self.hosts[h].local(self.t)));
                } else if self.hosts[h].pg.run == Run::Stopped && self.hosts[h].pg.data.is_some() {
                    self.hosts[h].pg.run = Run::Replica;
                    self.set_upstream(h, leader);
                    self.recent(h).start_failed_at = None;
                }
            }
            Pending::Bootstrap => {
                let token = self.token();
                let sysid = self.rng.next();
                self.hosts[h].pg.data = Some(Data {
                    sysid,
                    segs: vec![Seg { token, tl: 1, start: 0, end: 100 }],
                    state: ClusterState::ShutDown,
                    checkpoint: 0,
                });
                self.hosts[h].pg.run = Run::Primary;
                self.note(format!("{name} bootstrapped the cluster"));
                if self.etcd_ok(h) {
                    self.etcd.initialize = Some(Initialize::Sysid(sysid));
                    self.etcd.bump(true);
                }
            }
            Pending::Clone(from) => {
                let Some(f) = self.idx(&from) else { return };
                if self.link_ok(h, f)
                    && self.hosts[f].pg.run != Run::Stopped
                    && let Some(src) = self.hosts[f].pg.data.clone()
                {
                    self.hosts[h].pg.data = Some(Data { state: ClusterState::InProduction, ..src });
                    self.hosts[h].pg.run = Run::Replica;
                    let leader = self.etcd.leader.as_ref().map(|l| l.name.clone());
                    self.set_upstream(h, leader);
                }
            }
            Pending::Rewind(leader) => {
                let Some(l) = self.idx(&leader) else { return };
                if self.link_ok(h, l)
                    && self.hosts[l].pg.run != Run::Stopped
                    && let Some(src) = self.hosts[l].pg.data.clone()
                    && let Some(d) = self.hosts[h].pg.data.as_mut()
                {
                    // pg_rewind leaves the target with the source's history up to now.
                    d.segs = src.segs.clone();
                    d.state = ClusterState::InArchiveRecovery;
                    let r = self.recent(h);
                    r.diverged = false;
                    r.rewind_failed = false;
                    self.note(format!("{name} rewound from {leader}"));
                }
            }
        }
    }

    fn replicate(&mut self) {
        let n = self.hosts.len();
        for r in 0..n {
            if self.hosts[r].pg.run != Run::Replica || !self.hosts[r].running(self.t) {
                continue;
            }
            let Some(up) = self.hosts[r].pg.upstream.clone() else { continue };
            let Some(u) = self.idx(&up) else { continue };
            if u == r || self.hosts[u].pg.run == Run::Stopped || !self.link_ok(r, u) {
                continue;
            }
            let (Some(rd), Some(ud)) = (&self.hosts[r].pg.data, &self.hosts[u].pg.data) else { continue };
            if rd.sysid != ud.sysid || !pg_accepts(rd, ud) {
                continue;
            }
            if !truly_compatible(rd, ud) {
                let what = format!(
                    "{} streams from {} across a fork its timeline ids cannot show: ours {:?}, theirs {:?}",
                    self.hosts[r].name, up, rd.segs, ud.segs
                );
                self.violation(what);
                continue;
            }
            let new_end = ud.end().min(rd.end() + 50);
            let segs = ud.prefix(new_end);
            if let Some(d) = self.hosts[r].pg.data.as_mut() {
                d.segs = segs;
            }
        }
    }

    fn write_and_check(&mut self) {
        let writers: Vec<usize> =
            (0..self.hosts.len()).filter(|&h| self.hosts[h].pg.writable() && self.hosts[h].running(self.t)).collect();
        if writers.len() > 1 {
            let names: Vec<String> = writers.iter().map(|&h| self.hosts[h].name.clone()).collect();
            self.violation(format!("two members accept writes: {}", names.join(", ")));
        }
        for h in writers {
            let w = self.rng.range(1, 20);
            if let Some(last) = self.hosts[h].pg.data.as_mut().and_then(|d| d.segs.last_mut()) {
                last.end += w;
            }
        }
    }

    // ---- faults ----

    fn inject_faults(&mut self) {
        if !self.t.is_multiple_of(100) || !self.rng.chance(40) {
            return;
        }
        let n = self.hosts.len();
        let h = self.rng.below(n as u64) as usize;
        let t = self.t;
        let name = self.hosts[h].name.clone();
        match self.rng.below(12) {
            0 => {
                let d = self.rng.range(500, 5000);
                self.note(format!("FAULT {name} host crashes for {d} ms"));
                self.hosts[h].agent = None;
                self.stop_pg(h, false);
                self.hosts[h].host_down_until = t + d;
            }
            // Only on a running host: an agent killed during a freeze has, in effect, been
            // silent for longer than its lease, which only a watchdog can cover.
            1 if self.hosts[h].running(t) => {
                let d = self.rng.range(0, 1000);
                self.note(format!("FAULT {name} agent crashes, back in {d} ms"));
                self.hosts[h].agent = None;
                self.hosts[h].agent_back_at = t + d;
            }
            2 => {
                let stuck = if self.rng.chance(300) { self.rng.range(1000, 10_000) } else { 0 };
                self.note(format!("FAULT {name} PostgreSQL killed (unable to start for {stuck} ms)"));
                self.stop_pg(h, false);
                self.hosts[h].cannot_start_until = t + stuck;
            }
            3 => {
                let d = self.rng.range(500, 6000);
                self.note(format!("FAULT {name} host frozen for {d} ms"));
                self.hosts[h].frozen_until = self.hosts[h].frozen_until.max(t + d);
            }
            4 => {
                let d = self.rng.range(500, 6000);
                self.note(format!("FAULT {name} cut off from etcd for {d} ms"));
                self.etcd_cut[h] = t + d;
            }
            5 => {
                let other = (h + 1 + self.rng.below(n as u64 - 1) as usize) % n;
                let d = self.rng.range(500, 6000);
                self.note(format!("FAULT {name} and {} cut apart for {d} ms", self.hosts[other].name));
                self.pair_cut[h][other] = t + d;
                self.pair_cut[other][h] = t + d;
            }
            6 => {
                let d = self.rng.range(500, 6000);
                self.note(format!("FAULT {name} cut off from everything for {d} ms"));
                self.etcd_cut[h] = t + d;
                for o in 0..n {
                    self.pair_cut[h][o] = t + d;
                    self.pair_cut[o][h] = t + d;
                }
            }
            7 => {
                let d = self.rng.range(500, 5000);
                self.note(format!("FAULT etcd down for {d} ms"));
                self.etcd.up = false;
                for c in &mut self.etcd_cut {
                    *c = (*c).max(t + d);
                }
                self.etcd.up = true;
            }
            8 => {
                self.note("FAULT etcd leader change: every lease re-extended to its TTL".into());
                for l in self.etcd.leases.values_mut() {
                    l.expiry = l.expiry.max(t + TTL);
                }
            }
            9 => {
                let jump = self.rng.range(0, 3000);
                self.note(format!("FAULT {name} monotonic clock jumps {jump} ms ahead"));
                self.hosts[h].offset += jump;
            }
            10 => {
                let d = self.rng.range(1000, 8000);
                self.note(format!("FAULT maintenance mode (pause) for {d} ms"));
                if !self.etcd.paused {
                    self.etcd.paused = true;
                    self.etcd.bump(true);
                }
                self.etcd.pause_ends = self.etcd.pause_ends.max(t + d);
            }
            _ => {
                if let Some(l) = self.etcd.leader.clone() {
                    let cand = if self.rng.chance(500) { Some(name) } else { None };
                    self.note(format!("FAULT switchover requested from {} to {cand:?}", l.name));
                    let rev = self.etcd.bump(true);
                    self.etcd.failover = Some(FailoverRequest {
                        leader: Some(l.name),
                        candidate: cand,
                        scheduled_at: None,
                        mod_revision: rev,
                    });
                }
            }
        }
    }

    fn heal(&mut self) {
        let t = self.t;
        for h in 0..self.hosts.len() {
            let host = &mut self.hosts[h];
            host.frozen_until = host.frozen_until.min(t);
            host.host_down_until = host.host_down_until.min(t);
            host.agent_back_at = host.agent_back_at.min(t);
            host.cannot_start_until = host.cannot_start_until.min(t);
            self.etcd_cut[h] = self.etcd_cut[h].min(t);
            for o in 0..self.hosts.len() {
                self.pair_cut[h][o] = self.pair_cut[h][o].min(t);
            }
        }
        self.etcd.pause_ends = self.etcd.pause_ends.min(t);
        self.note("HEAL all faults stop".into());
    }

    /// Invariant 4.
    fn converged(&self) -> Result<(), String> {
        let primaries: Vec<&Host> = self.hosts.iter().filter(|h| h.pg.writable()).collect();
        let [p] = primaries.as_slice() else {
            return Err(format!("{} primaries", primaries.len()));
        };
        if self.etcd.leader.as_ref().map(|l| l.name.as_str()) != Some(p.name.as_str()) {
            return Err(format!("primary {} does not hold the leader key ({:?})", p.name, self.etcd.leader));
        }
        let pd = p.pg.data.as_ref().ok_or("primary without data")?;
        for h in self.hosts.iter().filter(|h| h.name != p.name) {
            let up = h.pg.upstream.as_deref();
            let compatible = h.pg.data.as_ref().is_some_and(|d| truly_compatible(d, pd));
            if h.pg.run != Run::Replica || up != Some(p.name.as_str()) || !compatible {
                return Err(format!(
                    "{} is {:?} following {up:?} (compatible with the primary: {compatible})",
                    h.name, h.pg.run
                ));
            }
        }
        Ok(())
    }
}

/// Runs one seed; returns the failure report, if any.
fn run_seed(seed: u64) -> Result<u32, String> {
    let mut w = World::new(seed);
    let mut healed = false;
    while w.t < CONVERGE_BY {
        let faults = (FAULTS_FROM..FAULTS_UNTIL).contains(&w.t);
        if w.t >= FAULTS_UNTIL && !healed {
            w.heal();
            healed = true;
        }
        w.step(faults);
        if !w.violations.is_empty() {
            break;
        }
        // Converged early: stop once stable for a few loops.
        if healed && w.t > FAULTS_UNTIL + 10 * LOOP_WAIT && w.t.is_multiple_of(1000) && w.converged().is_ok() {
            break;
        }
    }
    if w.violations.is_empty()
        && let Err(e) = w.converged()
    {
        w.violations.push(format!("no convergence by t={}: {e}", w.t));
    }
    if w.violations.is_empty() {
        return Ok(w.promotions);
    }
    let tail = w.log.len().saturating_sub(120);
    Err(format!("seed {seed}: {}\n{}", w.violations.join("; "), w.log[tail..].join("\n")))
}

#[test]
fn simulated_clusters_never_split_brain_and_converge_under_random_faults() {
    assert_eq!(timings().renew_interval(), Duration::from_millis(RENEW), "the simulation renews like the keeper");
    let seeds: u64 = std::env::var("HA_SIM_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(1000);
    let first: u64 = std::env::var("HA_SIM_FIRST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).min(4) as u64;
    let results: Vec<(Result<u32, String>, u64)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|k| {
                s.spawn(move || {
                    (first..first + seeds)
                        .filter(|seed| seed % threads == k)
                        .map(|seed| (run_seed(seed), seed))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("simulation thread")).collect()
    });
    let failures: Vec<&String> = results.iter().filter_map(|(r, _)| r.as_ref().err()).collect();
    let promotions: u32 = results.iter().filter_map(|(r, _)| r.as_ref().ok()).sum();
    assert!(failures.is_empty(), "{} of {seeds} seeds failed; first:\n{}", failures.len(), failures[0]);
    // The faults must actually cause failovers, or the test proves nothing.
    assert!(promotions as u64 > seeds, "only {promotions} promotions in {seeds} seeds");
}

/// `HA_SIM_TRACE=<seed> cargo test -p ha-agent --test simulation trace -- --nocapture` prints
/// one seed's event log.
#[test]
fn trace_one_seed_on_request() {
    let Some(seed) = std::env::var("HA_SIM_TRACE").ok().and_then(|s| s.parse().ok()) else { return };
    let mut w = World::new(seed);
    let mut healed = false;
    while w.t < CONVERGE_BY {
        if w.t >= FAULTS_UNTIL && !healed {
            w.heal();
            healed = true;
        }
        w.step((FAULTS_FROM..FAULTS_UNTIL).contains(&w.t));
    }
    println!("{}\nconverged: {:?}\nviolations: {:?}", w.log.join("\n"), w.converged(), w.violations);
}
