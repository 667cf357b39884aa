//! The daemon's run loops: VRRP mode and etcd-follow mode. Both have the same shape:
//! set up (sockets, stale VIP removed, inputs started), signal READY, then wait on a closed set
//! of events (packet, timer, input change, reconcile tick, shutdown), decide in the pure core,
//! carry out its effects, and on the way out release the VIP (priority 0 first in VRRP mode).
//!
//! Releasing happens on SIGTERM and SIGINT alike (cybertec vip-manager keeps the VIP on
//! SIGTERM, which leaves it on a stopped node) and on any fatal error: a node that can no
//! longer run the protocol must not keep the address.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Leader, Mode, Notify, Vrrp};
use crate::follow::{self, View};
use crate::fsm::{Effect, Event, GarpSchedule, Ignored, Instance, Params, State};
use crate::garp;
use crate::inputs::{self, Update};
use crate::metrics::{Failure, Metrics};
use crate::netlink::Addresses;
use crate::packet::{self, Advert, Expect, GROUP_V4, GROUP_V6, Received, Reject, Version};
use crate::priority::{self, Status};
use crate::sys::{self, Arrived, FrameSocket, Link, VrrpSocket};

/// How often the VIP's presence is checked against what we want (someone may remove it by
/// hand, or a crashed predecessor may have left it).
const RECONCILE_EVERY: Duration = Duration::from_secs(5);
/// The receive buffer: the largest VRRP message (VRRPv3 over IPv6 with 255 addresses is 4088
/// bytes; over IPv4 the 60-byte IP header comes with it) fits.
const RECV_BUFFER: usize = 4200;
/// Repeated log lines (rejects, lower-priority masters) are logged at most this often per kind.
const LOG_EVERY: Duration = Duration::from_secs(10);
/// Consecutive receive errors after which the socket is considered dead (a fatal error).
const MAX_RECV_ERRORS: u32 = 50;

/// Proof of life of the main loop, for the systemd watchdog: each loop turn records the time.
#[derive(Clone, Default)]
pub struct Progress(Arc<AtomicU64>);

impl Progress {
    fn beat(&self) {
        self.0.store(epoch_ms(), Ordering::Relaxed);
    }

    /// Whether the loop turned within `max_age`. Every loop wakes at least every
    /// [`RECONCILE_EVERY`], so a longer silence means it is stuck.
    pub fn alive(&self, max_age: Duration) -> bool {
        epoch_ms().saturating_sub(self.0.load(Ordering::Relaxed)) <= max_age.as_millis() as u64
    }
}

fn epoch_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Runs the daemon until `shutdown` is cancelled or a fatal error; the VIP is released either
/// way. `ready` is called once the sockets are open (systemd READY).
pub async fn run(
    cfg: Config,
    shutdown: CancellationToken,
    progress: Progress,
    ready: impl FnOnce(),
) -> anyhow::Result<()> {
    progress.beat();
    let metrics = Metrics::new();
    let link = sys::link(&cfg.interface).with_context(|| format!("look up interface {}", cfg.interface))?;
    let addrs = Addresses::connect(link.index).context("open rtnetlink")?;
    // A VIP left by a crash (ours, or keepalived's before us) must not linger while we are not
    // master: keepalived removes it at startup too.
    let stale = addrs.remove_all(cfg.vip).await.context("remove stale VIP")?;
    if stale > 0 {
        tracing::warn!(vip = %cfg.vip, "removed a VIP left on the interface by an earlier run");
    }
    let frames = FrameSocket::open(&link).context("open AF_PACKET socket for gratuitous ARP")?;
    if let Some(listen) = cfg.metrics_listen {
        serve_metrics(listen, metrics.clone(), shutdown.clone()).await?;
    }
    let holder = VipHolder { addrs, frames, link, vip: cfg.vip, prefix_len: cfg.prefix_len, metrics: metrics.clone() };
    let (tx, rx) = mpsc::channel(64);
    let inputs_stop = shutdown.child_token();
    if let (Some(leader), Some(etcd)) = (&cfg.leader, &cfg.etcd) {
        inputs::spawn_leader_watch(etcd.clone(), leader.key.clone(), tx.clone(), inputs_stop.clone());
    }
    for (i, t) in cfg.tracks.iter().enumerate() {
        inputs::spawn_track(i, t.clone(), tx.clone(), inputs_stop.clone());
    }
    drop(tx);
    let result = match &cfg.mode {
        Mode::Vrrp(v) => {
            let mut d = VrrpDaemon::new(&cfg, v, holder).await?;
            ready();
            d.run(rx, &shutdown, &progress).await
        }
        Mode::Follow => {
            let leader = cfg.leader.clone().context("etcd-follow mode without [leader]")?;
            let mut d = FollowDaemon::new(&cfg, leader, holder);
            ready();
            d.run(rx, &shutdown, &progress).await
        }
    };
    inputs_stop.cancel();
    result
}

async fn serve_metrics(listen: SocketAddr, metrics: Metrics, shutdown: CancellationToken) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("listen on {listen}"))?;
    let handler = move |req: hyper::Request<hyper::body::Incoming>, _peer| {
        let body = (req.uri().path() == "/metrics").then(|| outrigger_daemon::metrics::render(&metrics.registry));
        async move {
            match body {
                Some(text) => {
                    let mut r = outrigger_daemon::http::text(hyper::StatusCode::OK, text);
                    r.headers_mut().insert(
                        hyper::header::CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static(outrigger_daemon::metrics::CONTENT_TYPE),
                    );
                    r
                }
                None => outrigger_daemon::http::text(hyper::StatusCode::NOT_FOUND, "not found\n"),
            }
        }
    };
    tokio::spawn(outrigger_daemon::http::serve(listener, Default::default(), handler, shutdown));
    Ok(())
}

/// Logs a kind of event at most once per [`LOG_EVERY`], saying how many were suppressed.
#[derive(Default)]
struct RateLimit {
    seen: HashMap<&'static str, (Instant, u64)>,
}

impl RateLimit {
    /// Whether to log now, and how many were suppressed since the last line.
    fn allow(&mut self, kind: &'static str, now: Instant) -> Option<u64> {
        match self.seen.get_mut(kind) {
            Some((last, suppressed)) if now.duration_since(*last) < LOG_EVERY => {
                *suppressed += 1;
                None
            }
            Some((last, suppressed)) => {
                let n = *suppressed;
                *last = now;
                *suppressed = 0;
                Some(n)
            }
            None => {
                self.seen.insert(kind, (now, 0));
                Some(0)
            }
        }
    }
}

/// Holds (or not) the VIP: addresses via netlink, gratuitous ARP via AF_PACKET.
struct VipHolder {
    addrs: Addresses,
    frames: FrameSocket,
    link: Link,
    vip: IpAddr,
    prefix_len: u8,
    metrics: Metrics,
}

impl VipHolder {
    async fn add(&self) -> bool {
        match self.addrs.add(self.vip, self.prefix_len).await {
            Ok(()) => {
                self.metrics.vip_held.set(1);
                tracing::info!(vip = %self.vip, prefix_len = self.prefix_len, "VIP added");
                true
            }
            Err(e) => {
                self.metrics.failure(Failure::VipAdd);
                tracing::error!(error = %e, "could not add the VIP");
                false
            }
        }
    }

    async fn remove(&self) -> bool {
        match self.addrs.remove_all(self.vip).await {
            Ok(_) => {
                self.metrics.vip_held.set(0);
                tracing::info!(vip = %self.vip, "VIP removed");
                true
            }
            Err(e) => {
                self.metrics.failure(Failure::VipRemove);
                tracing::error!(error = %e, "could not remove the VIP");
                false
            }
        }
    }

    /// Removes the VIP from outside the async world: for the panic path, where the runtime
    /// that owns our netlink connection may be unwinding. A fresh thread gets its own runtime
    /// and connection (same network namespace: it is the process's).
    fn remove_blocking(&self) {
        let (ifindex, vip) = (self.link.index, self.vip);
        let removed = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            rt.block_on(async { Addresses::connect(ifindex).ok()?.remove_all(vip).await.ok() })
        })
        .join();
        tracing::warn!(vip = %vip, removed = ?removed.ok().flatten(), "released the VIP on the panic path");
    }

    async fn present(&self) -> Option<bool> {
        self.addrs.prefixes_of(self.vip).await.map(|p| !p.is_empty()).ok()
    }

    fn garp(&self, count: u32) {
        let (frame, proto, dst) = match self.vip {
            IpAddr::V4(v) => (garp::arp_request(self.link.mac, v), garp::ETH_P_ARP, garp::BROADCAST),
            IpAddr::V6(v) => (garp::unsolicited_na(self.link.mac, v), garp::ETH_P_IPV6, garp::ALL_NODES_MAC),
        };
        for _ in 0..count {
            match self.frames.send(&frame, proto, dst) {
                Ok(()) => self.metrics.garp_sent.inc(),
                Err(e) => {
                    self.metrics.failure(Failure::GarpSend);
                    tracing::warn!(error = %e, "could not send gratuitous ARP");
                    return;
                }
            }
        }
        tracing::debug!(vip = %self.vip, count, "gratuitous ARP sent");
    }
}

fn notify(n: Option<&Notify>, instance: &str, state: State, priority: u8, metrics: &Metrics) {
    if let Some(n) = n {
        let args = ["INSTANCE".to_owned(), instance.to_owned(), state.as_str().to_owned(), priority.to_string()];
        let m = metrics.clone();
        inputs::spawn_notify(&n.command, args, n.timeout, move || m.failure(Failure::Notify));
    }
}

fn std_now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Sleeps until `at`, or forever when there is nothing to wait for.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}

/// The weighted inputs of the effective priority, in a fixed order: the leader key (if
/// configured in VRRP mode), then the tracks in config order.
struct Weights {
    names: Vec<String>,
    weights: Vec<i32>,
    statuses: Vec<Status>,
    /// Index of the leader input, if any.
    leader: Option<usize>,
}

impl Weights {
    fn new(cfg: &Config) -> Self {
        let mut w = Weights { names: vec![], weights: vec![], statuses: vec![], leader: None };
        if let Some(l) = &cfg.leader {
            w.leader = Some(0);
            w.names.push("leader".to_owned());
            w.weights.push(l.weight);
            // Not known to be leader until etcd says so.
            w.statuses.push(Status::Down);
        }
        for t in &cfg.tracks {
            w.names.push(t.name.clone());
            w.weights.push(t.weight);
            w.statuses.push(Status::Down);
        }
        w
    }

    fn verdict(&self, base: u8) -> priority::Verdict {
        let inputs: Vec<_> = (0..self.names.len())
            .map(|i| priority::Input { name: &self.names[i], weight: self.weights[i], status: self.statuses[i] })
            .collect();
        priority::effective(base, &inputs)
    }
}

struct VrrpDaemon {
    v: Vrrp,
    vip: IpAddr,
    source: IpAddr,
    /// Where adverts go: the group, or each unicast peer other than ourselves.
    destinations: Vec<IpAddr>,
    socket: VrrpSocket,
    holder: VipHolder,
    fsm: Instance,
    expect: Expect,
    weights: Weights,
    member: Option<Vec<u8>>,
    notify: Option<Notify>,
    logs: RateLimit,
    metrics: Metrics,
}

impl VrrpDaemon {
    async fn new(cfg: &Config, v: &Vrrp, holder: VipHolder) -> anyhow::Result<Self> {
        let source = match (v.source, cfg.vip) {
            (Some(s), _) => s,
            (None, IpAddr::V4(_)) => IpAddr::V4(
                holder
                    .addrs
                    .primary_v4(cfg.vip)
                    .await?
                    .with_context(|| format!("{} has no IPv4 address to send adverts from", cfg.interface))?,
            ),
            (None, IpAddr::V6(_)) => IpAddr::V6(
                sys::ipv6_link_local(&cfg.interface)
                    .with_context(|| format!("{} has no link-local IPv6 address", cfg.interface))?,
            ),
        };
        let multicast = v.unicast_peers.is_empty();
        let socket = VrrpSocket::open(&holder.link, cfg.vip.is_ipv6(), multicast)
            .with_context(|| format!("open the VRRP socket on {}", cfg.interface))?;
        let destinations = if multicast {
            vec![if cfg.vip.is_ipv4() { IpAddr::V4(GROUP_V4) } else { IpAddr::V6(GROUP_V6) }]
        } else {
            // The reference deployment lists every member, ourselves included.
            v.unicast_peers.iter().copied().filter(|p| *p != source).collect()
        };
        let weights = Weights::new(cfg);
        let params = Params {
            version: v.version,
            interval_cs: v.interval_cs,
            preempt: v.preempt,
            preempt_delay: v.preempt_delay,
            down_timer_adverts: v.down_timer_adverts,
            lower_prio_no_advert: v.lower_prio_no_advert,
            higher_prio_send_advert: v.higher_prio_send_advert,
            garp: v.garp,
            local_addr: source,
        };
        let verdict = weights.verdict(v.priority);
        let mut fsm = Instance::new(params, verdict.priority);
        if verdict.fault.is_some() {
            fsm.handle(std_now(), Event::Fault(true));
        }
        holder.metrics.priority.set(i64::from(verdict.priority));
        let expect = Expect {
            version: v.version,
            vrid: v.vrid,
            auth: v.auth.clone(),
            interval_cs: v.interval_cs,
            checksum: v.v3_checksum,
            accept_either_checksum: v.accept_either_checksum,
            unicast: !multicast,
        };
        tracing::info!(
            interface = %cfg.interface, vip = %cfg.vip, version = %v.version, vrid = v.vrid,
            priority = verdict.priority, interval_cs = v.interval_cs, %source,
            destinations = ?destinations, "VRRP instance starting"
        );
        Ok(Self {
            v: v.clone(),
            vip: cfg.vip,
            source,
            destinations,
            socket,
            metrics: holder.metrics.clone(),
            holder,
            fsm,
            expect,
            weights,
            member: cfg.leader.as_ref().map(|l| l.member.clone().into_bytes()),
            notify: cfg.notify.clone(),
            logs: RateLimit::default(),
        })
    }

    async fn run(
        &mut self,
        mut inputs: mpsc::Receiver<Update>,
        shutdown: &CancellationToken,
        progress: &Progress,
    ) -> anyhow::Result<()> {
        let fx = self.fsm.handle(std_now(), Event::Start);
        self.apply(fx).await;
        let result = self.main_loop(&mut inputs, shutdown, progress).await;
        // Release on the way out, whatever ended the loop: priority 0 so a backup takes over
        // after Skew_Time, then the address.
        let fx = self.fsm.handle(std_now(), Event::Shutdown);
        self.apply(fx).await;
        if self.holder.present().await != Some(false) {
            self.holder.remove().await;
        }
        result
    }

    async fn main_loop(
        &mut self,
        inputs: &mut mpsc::Receiver<Update>,
        shutdown: &CancellationToken,
        progress: &Progress,
    ) -> anyhow::Result<()> {
        let mut buf = vec![0u8; RECV_BUFFER];
        let mut reconcile = tokio::time::interval(RECONCILE_EVERY);
        reconcile.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut recv_errors = 0u32;
        let mut inputs_open = true;
        loop {
            progress.beat();
            // Not biased: a flood of packets must not starve the advert timer.
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                r = self.socket.recv(&mut buf) => match r {
                    Ok(arrived) => {
                        recv_errors = 0;
                        self.packet(&buf, arrived).await;
                    }
                    Err(e) => {
                        recv_errors += 1;
                        self.metrics.failure(Failure::Receive);
                        tracing::warn!(error = %e, "receive on the VRRP socket");
                        if recv_errors >= MAX_RECV_ERRORS {
                            anyhow::bail!("the VRRP socket failed {recv_errors} times in a row: {e}");
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                },
                () = sleep_until(self.fsm.next_deadline()) => {
                    let fx = self.fsm.handle(std_now(), Event::Timer);
                    self.apply(fx).await;
                }
                u = inputs.recv(), if inputs_open => match u {
                    Some(u) => self.input(u).await,
                    None => inputs_open = false,
                },
                _ = reconcile.tick() => self.reconcile().await,
            }
        }
    }

    async fn packet(&mut self, buf: &[u8], arrived: Arrived) {
        let now = std_now();
        // An IPv6 datagram's real length comes back even when it did not fit (MSG_TRUNC): a
        // message longer than any VRRP message is refused, never sliced past the buffer.
        let (len, src) = match arrived {
            Arrived::V4 { len } => (len, None),
            Arrived::V6 { len, src, .. } => (len, Some(IpAddr::from(src))),
        };
        if len > buf.len() {
            return self.reject(Reject::Length, src, now);
        }
        let rx = match arrived {
            Arrived::V4 { len } => match packet::parse_ipv4(&buf[..len]) {
                Ok(rx) => rx,
                Err(r) => return self.reject(r, None, now),
            },
            Arrived::V6 { len, src, dst, hop_limit } => {
                Received { src: src.into(), dst: dst.into(), ttl: hop_limit, payload: &buf[..len] }
            }
        };
        if rx.src == self.source {
            return self.reject(Reject::Looped, Some(rx.src), now);
        }
        let d = match packet::decode(&rx, &self.expect) {
            Ok(d) => d,
            Err(r) => return self.reject(r, Some(rx.src), now),
        };
        if self.v.check_unicast_src && !self.v.unicast_peers.contains(&rx.src) {
            return self.reject(Reject::UnknownPeer, Some(rx.src), now);
        }
        self.metrics.adverts_received.inc();
        let a = &d.advert;
        // keepalived only logs these two; so do we.
        if a.addrs != [self.vip] && self.logs.allow("vip_list", now).is_some() {
            tracing::warn!(from = %rx.src, theirs = ?a.addrs, ours = %self.vip, "advert's VIP list differs from ours");
        }
        if a.interval_cs != self.v.interval_cs && self.logs.allow("interval", now).is_some() {
            tracing::warn!(
                from = %rx.src, theirs_cs = a.interval_cs, ours_cs = self.v.interval_cs,
                "advert interval differs; following the master's (VRRPv3)"
            );
        }
        let fx = self.fsm.handle(now, Event::Advert { from: rx.src, priority: a.priority, interval_cs: a.interval_cs });
        self.apply(fx).await;
    }

    fn reject(&mut self, r: Reject, from: Option<IpAddr>, now: Instant) {
        self.metrics.reject(r);
        // Our own looped adverts and other routers' VRIDs are normal on a shared link.
        if matches!(r, Reject::Looped | Reject::Vrid) {
            return;
        }
        if let Some(suppressed) = self.logs.allow(r.as_str(), now) {
            tracing::warn!(reason = %r, from = ?from, suppressed, "rejected a VRRP packet");
        }
    }

    async fn input(&mut self, u: Update) {
        match u {
            Update::Track { index, status } => {
                let i = index + usize::from(self.weights.leader.is_some());
                if let Some(s) = self.weights.statuses.get_mut(i) {
                    *s = status;
                }
            }
            Update::Leader(value) => {
                self.metrics.etcd_reachable.set(1);
                let leads = value.is_some() && value == self.member;
                tracing::info!(leads, "leader key changed");
                if let Some(i) = self.weights.leader {
                    self.weights.statuses[i] = if leads { Status::Up } else { Status::Down };
                }
            }
            Update::EtcdUnreachable => {
                self.metrics.etcd_reachable.set(0);
                // We cannot know that we lead: the leader weight does not apply.
                if let Some(i) = self.weights.leader {
                    self.weights.statuses[i] = Status::Down;
                }
            }
        }
        let verdict = self.weights.verdict(self.v.priority);
        let now = std_now();
        if verdict.priority != self.fsm.priority() {
            tracing::info!(from = self.fsm.priority(), to = verdict.priority, "effective priority changed");
            self.metrics.priority.set(i64::from(verdict.priority));
            let fx = self.fsm.handle(now, Event::Priority(verdict.priority));
            self.apply(fx).await;
        }
        let in_fault = self.fsm.state() == State::Fault;
        if verdict.fault.is_some() != in_fault {
            if let Some(name) = &verdict.fault {
                tracing::warn!(input = %name, "input without weight is down: FAULT");
            }
            let fx = self.fsm.handle(now, Event::Fault(verdict.fault.is_some()));
            self.apply(fx).await;
        }
    }

    /// Puts the address back in line with the state: re-adds a VIP someone removed while we
    /// are master, removes one that appeared while we are not.
    async fn reconcile(&mut self) {
        let want = self.fsm.state() == State::Master;
        match self.holder.present().await {
            Some(false) if want => {
                tracing::warn!(vip = %self.vip, "VIP missing while master; adding it back");
                if self.holder.add().await {
                    self.holder.garp(self.v.garp.master_repeat.max(1));
                }
            }
            Some(true) if !want => {
                tracing::warn!(vip = %self.vip, "VIP present while not master; removing it");
                self.holder.remove().await;
            }
            _ => {}
        }
    }

    async fn apply(&mut self, effects: Vec<Effect>) {
        for e in effects {
            match e {
                Effect::SendAdvert { priority } => self.send_advert(priority),
                Effect::AddVips => {
                    self.holder.add().await;
                }
                Effect::RemoveVips => {
                    self.holder.remove().await;
                }
                Effect::Garp { count } => self.holder.garp(count),
                Effect::Transition { from, to, why } => {
                    tracing::info!(%from, %to, %why, priority = self.fsm.priority(), "VRRP state change");
                    self.metrics.transition(from, to);
                    notify(self.notify.as_ref(), &self.v.instance, to, self.fsm.priority(), &self.metrics);
                }
                Effect::LowerPriorityMaster { from, priority } => {
                    if let Some(suppressed) = self.logs.allow("lower_prio", std_now()) {
                        tracing::info!(%from, priority, ours = self.fsm.priority(), suppressed,
                            "advert from a lower-priority master; answering at once");
                    }
                }
                Effect::Ignored(why) => {
                    if why == Ignored::SameAddress && self.logs.allow("same_address", std_now()).is_some() {
                        tracing::warn!("advert with our priority from our own address: check the configs");
                    }
                }
            }
        }
    }

    fn send_advert(&mut self, priority: u8) {
        let advert = Advert {
            version: self.v.version,
            vrid: self.v.vrid,
            priority,
            interval_cs: self.v.interval_cs,
            auth: if self.v.version == Version::V2 { self.v.auth.clone() } else { packet::Auth::None },
            addrs: vec![self.vip],
        };
        for &dst in &self.destinations {
            let sent = advert
                .encode(self.source, dst, self.v.v3_checksum)
                .map_err(|e| e.to_string())
                .and_then(|msg| self.socket.send(self.source, dst, &msg).map_err(|e| e.to_string()));
            match sent {
                Ok(()) => self.metrics.adverts_sent.inc(),
                Err(e) => {
                    self.metrics.failure(Failure::AdvertSend);
                    if let Some(suppressed) = self.logs.allow("advert_send", std_now()) {
                        tracing::warn!(%dst, error = %e, suppressed, "could not send an advert");
                    }
                }
            }
        }
    }
}

/// The last line of defence: a panic must not leave the VIP on a node that no longer runs the
/// protocol. Every orderly exit has released already (state Stopped), so this only acts when
/// the loop unwound while master.
impl Drop for VrrpDaemon {
    fn drop(&mut self) {
        if self.fsm.state() == State::Master {
            self.send_advert(0);
            self.holder.remove_blocking();
        }
    }
}

/// etcd-follow mode: no VRRP, the VIP follows the leader key.
struct FollowDaemon {
    leader: Leader,
    holder: VipHolder,
    garp: GarpSchedule,
    view: View,
    held: bool,
    /// The second GARP burst after taking the VIP.
    garp_again_at: Option<Instant>,
    recheck_at: Option<Instant>,
    notify: Option<Notify>,
    metrics: Metrics,
}

/// As for VRRP mode: release on the panic path.
impl Drop for FollowDaemon {
    fn drop(&mut self) {
        if self.held {
            self.holder.remove_blocking();
        }
    }
}

impl FollowDaemon {
    fn new(cfg: &Config, leader: Leader, holder: VipHolder) -> Self {
        tracing::info!(interface = %cfg.interface, vip = %cfg.vip, key = %leader.key, member = %leader.member,
            on_etcd_unreachable = ?leader.on_unreachable, "following the leader key");
        Self {
            garp: GarpSchedule::default(),
            metrics: holder.metrics.clone(),
            leader,
            holder,
            view: View::Unknown,
            held: false,
            garp_again_at: None,
            recheck_at: None,
            notify: cfg.notify.clone(),
        }
    }

    async fn run(
        &mut self,
        mut inputs: mpsc::Receiver<Update>,
        shutdown: &CancellationToken,
        progress: &Progress,
    ) -> anyhow::Result<()> {
        self.metrics.transition(State::Initialize, State::Backup);
        let result = self.main_loop(&mut inputs, shutdown, progress).await;
        // Release on the way out, whatever ended the loop.
        if self.held || self.holder.present().await != Some(false) {
            self.holder.remove().await;
            self.set_held(false);
        }
        self.metrics.transition(if self.held { State::Master } else { State::Backup }, State::Stopped);
        result
    }

    async fn main_loop(
        &mut self,
        inputs: &mut mpsc::Receiver<Update>,
        shutdown: &CancellationToken,
        progress: &Progress,
    ) -> anyhow::Result<()> {
        let mut reconcile = tokio::time::interval(RECONCILE_EVERY);
        reconcile.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            progress.beat();
            let wake = [self.garp_again_at, self.recheck_at].into_iter().flatten().min();
            tokio::select! {
                // Shutdown first: the input tasks stop with it, and their channel closing then
                // is not an error.
                biased;
                () = shutdown.cancelled() => return Ok(()),
                u = inputs.recv() => match u {
                    Some(Update::Leader(v)) => {
                        self.metrics.etcd_reachable.set(1);
                        self.view = View::Known(v);
                        self.decide().await;
                    }
                    Some(Update::EtcdUnreachable) => {
                        self.metrics.etcd_reachable.set(0);
                        // Unreachable since the first failure; the last value we knew stays.
                        let (since, last) = match &self.view {
                            View::Unreachable { since, last } => (*since, last.clone()),
                            View::Known(v) => (std_now(), Some(v.clone())),
                            View::Unknown => (std_now(), None),
                        };
                        self.view = View::Unreachable { since, last };
                        self.decide().await;
                    }
                    Some(Update::Track { .. }) => {}
                    None if shutdown.is_cancelled() => return Ok(()),
                    None => anyhow::bail!("the leader key watcher stopped"),
                },
                () = sleep_until(wake) => {
                    let now = std_now();
                    if self.garp_again_at.is_some_and(|t| t <= now) {
                        self.garp_again_at = None;
                        if self.held {
                            self.holder.garp(self.garp.master_repeat);
                        }
                    }
                    if self.recheck_at.is_some_and(|t| t <= now) {
                        self.recheck_at = None;
                        self.decide().await;
                    }
                }
                _ = reconcile.tick() => self.reconcile().await,
            }
        }
    }

    async fn decide(&mut self) {
        let now = std_now();
        let d = follow::decide(
            &self.view,
            self.leader.member.as_bytes(),
            self.leader.on_unreachable,
            self.leader.unreachable_grace,
            now,
        );
        self.recheck_at = d.recheck_at;
        if d.hold == self.held {
            return;
        }
        tracing::info!(hold = d.hold, reason = %d.reason, "VIP decision");
        if d.hold {
            if self.holder.add().await {
                self.set_held(true);
                self.holder.garp(self.garp.master_repeat);
                self.garp_again_at = Some(now + self.garp.master_delay);
            }
        } else if self.holder.remove().await {
            self.set_held(false);
            self.garp_again_at = None;
        }
    }

    fn set_held(&mut self, held: bool) {
        if held == self.held {
            return;
        }
        self.held = held;
        let (from, to) = if held { (State::Backup, State::Master) } else { (State::Master, State::Backup) };
        self.metrics.transition(from, to);
        notify(self.notify.as_ref(), "follow", to, 0, &self.metrics);
    }

    async fn reconcile(&mut self) {
        match self.holder.present().await {
            Some(false) if self.held => {
                tracing::warn!(vip = %self.holder.vip, "VIP missing while we should hold it; adding it back");
                if self.holder.add().await {
                    self.holder.garp(self.garp.master_repeat);
                }
            }
            Some(true) if !self.held => {
                tracing::warn!(vip = %self.holder.vip, "VIP present while we should not hold it; removing it");
                self.holder.remove().await;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_allows_one_line_per_period_and_counts_the_rest() {
        let t0 = Instant::now();
        let mut r = RateLimit::default();
        assert_eq!(r.allow("a", t0), Some(0));
        assert_eq!(r.allow("a", t0 + Duration::from_secs(1)), None);
        assert_eq!(r.allow("b", t0 + Duration::from_secs(1)), Some(0), "kinds are separate");
        assert_eq!(r.allow("a", t0 + Duration::from_secs(2)), None);
        assert_eq!(r.allow("a", t0 + LOG_EVERY), Some(2));
    }
}
