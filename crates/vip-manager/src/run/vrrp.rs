//! VRRP mode: the RFC 5798 / 3768 state machine ([`crate::fsm`]) on a raw socket, its
//! effective priority from the leader key and the tracks ([`crate::priority`]).

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::mpsc::TryRecvError;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use outrigger_daemon::reload::Source;

use super::holder::VipHolder;
use super::{MAX_RECV_ERRORS, Progress, RECONCILE_EVERY, RECV_BUFFER, RateLimit, next_reload, notify, std_now};
use crate::config::{Config, Mode, Vrrp};
use crate::fsm::{Effect, Event, Ignored, Instance, Params, State};
use crate::inputs::Update;
use crate::metrics::{Failure, Metrics};
use crate::packet::{self, Advert, Expect, GROUP_V4, GROUP_V6, Received, Reject, Version};
use crate::priority::{self, Status};
use crate::sys::{self, Arrived, Deadline, VrrpSocket};

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

/// What the runtime side hands the protocol's thread.
enum Command {
    Input(Update),
    Reload(Box<Config>),
    Stop,
}

/// The runtime side's end of the hand-over: each command wakes the thread. Dropped (the run
/// future dropped, whatever the reason), it wakes the thread once more, which then finds the
/// channel closed and stops: the protocol never runs on without its owner.
struct ToThread {
    tx: Option<std::sync::mpsc::Sender<Command>>,
    wake: Arc<sys::Wake>,
}

impl ToThread {
    fn send(&self, c: Command) {
        // Fails only once the thread has returned, when nothing needs it any more.
        if let Some(tx) = &self.tx {
            let _ = tx.send(c);
        }
        self.wake.wake();
    }
}

impl Drop for ToThread {
    fn drop(&mut self) {
        // Closed first, then woken: the thread must find the channel closed.
        drop(self.tx.take());
        self.wake.wake();
    }
}

/// One destination's advert message, or why it could not be encoded.
type Encoded = Result<Vec<u8>, String>;

/// Packets read per wake-up at most, before the timer gets its turn.
const PACKETS_PER_TURN: usize = 16;

fn params(v: &Vrrp, source: IpAddr) -> Params {
    Params {
        version: v.version,
        interval_cs: v.interval_cs,
        preempt: v.preempt,
        preempt_delay: v.preempt_delay,
        down_timer_adverts: v.down_timer_adverts,
        lower_prio_no_advert: v.lower_prio_no_advert,
        higher_prio_send_advert: v.higher_prio_send_advert,
        garp: v.garp,
        local_addr: source,
    }
}

pub(super) struct VrrpDaemon {
    /// The config in force (a reload changes its runtime keys).
    cfg: Config,
    v: Vrrp,
    vip: IpAddr,
    source: IpAddr,
    /// Where adverts go: the group, or each unicast peer other than ourselves.
    destinations: Vec<IpAddr>,
    socket: VrrpSocket,
    /// The state machine's next deadline (advert or Master_Down timer).
    timer: Deadline,
    /// The advert messages for one priority, one per destination.
    encoded: Option<(u8, Vec<Encoded>)>,
    holder: VipHolder,
    fsm: Instance,
    expect: Expect,
    weights: Weights,
    member: Option<Vec<u8>>,
    logs: RateLimit,
    metrics: Metrics,
}

impl VrrpDaemon {
    pub(super) async fn new(cfg: &Config, v: &Vrrp, holder: VipHolder) -> anyhow::Result<Self> {
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
        let params = params(v, source);
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
            cfg: cfg.clone(),
            v: v.clone(),
            vip: cfg.vip,
            source,
            destinations,
            socket,
            timer: Deadline::new().context("create the VRRP timer (timerfd)")?,
            encoded: None,
            metrics: holder.metrics.clone(),
            holder,
            fsm,
            expect,
            weights,
            member: cfg.leader.as_ref().map(|l| l.member.clone().into_bytes()),
            logs: RateLimit::default(),
        })
    }

    /// Runs the instance until `shutdown` or a fatal error, then releases the VIP (priority 0
    /// first, so a backup takes over after Skew_Time).
    ///
    /// The protocol runs on a thread of its own that blocks on one epoll over the socket, the
    /// timer and a wake-up ([`sys::Poller`]), as keepalived's VRRP process does: a master's
    /// advert is a wait, a send and a timer set, with no trip through the async runtime. What
    /// needs the runtime (netlink, notify scripts, the etcd and track inputs, reloads) runs on
    /// it: inputs and reloads are handed over here and wake the thread; effects beyond an
    /// advert run with `Handle::block_on` from the thread, driven by the runtime's thread.
    pub(super) async fn run(
        mut self,
        mut inputs: mpsc::Receiver<Update>,
        shutdown: &CancellationToken,
        reloads: &mut Option<Source>,
        progress: &Progress,
    ) -> anyhow::Result<()> {
        let fx = self.fsm.handle(std_now(), Event::Start);
        self.apply(fx).await;
        let metrics = self.metrics.clone();
        let wake = Arc::new(sys::Wake::new().context("create the VRRP loop's wake-up (eventfd)")?);
        let (tx, rx) = std::sync::mpsc::channel();
        let to_thread = ToThread { tx: Some(tx), wake: wake.clone() };
        let rt = tokio::runtime::Handle::current();
        let beat = progress.clone();
        let mut thread = tokio::task::spawn_blocking(move || {
            let result = self.protocol_loop(&rt, &rx, &wake, &beat);
            // Released right here, whatever ended the loop: a stop hands over to a backup
            // with no further trip between threads.
            let fx = self.fsm.handle(std_now(), Event::Shutdown);
            rt.block_on(async {
                self.apply(fx).await;
                self.holder.release().await;
            });
            result
        });
        let cancelled = shutdown.cancelled();
        tokio::pin!(cancelled);
        let (mut inputs_open, mut stopping) = (true, false);
        let joined = loop {
            tokio::select! {
                joined = &mut thread => break joined,
                () = &mut cancelled, if !stopping => {
                    stopping = true;
                    to_thread.send(Command::Stop);
                }
                u = inputs.recv(), if inputs_open => match u {
                    Some(u) => to_thread.send(Command::Input(u)),
                    None => inputs_open = false,
                },
                new = next_reload(reloads, &metrics) => if let Some(new) = new {
                    to_thread.send(Command::Reload(Box::new(new)));
                },
            }
        };
        // A panic on the thread has released the VIP already (`Drop`).
        joined.map_err(|e| anyhow::anyhow!("the VRRP loop's thread failed: {e}"))?
    }

    /// The protocol's loop, on its own thread (see [`VrrpDaemon::run`]); returns on
    /// [`Command::Stop`] or a fatal error.
    fn protocol_loop(
        &mut self,
        rt: &Handle,
        commands: &std::sync::mpsc::Receiver<Command>,
        wake: &sys::Wake,
        progress: &Progress,
    ) -> anyhow::Result<()> {
        let poller = sys::Poller::new(&self.socket, &self.timer, wake).context("set up the VRRP loop's epoll")?;
        let mut buf = vec![0u8; RECV_BUFFER];
        // The reconcile tick shares the VRRP timer.
        let mut reconcile_at = std_now() + RECONCILE_EVERY;
        let mut recv_errors = 0u32;
        loop {
            progress.beat();
            let next = self.fsm.next_deadline().map_or(reconcile_at, |d| d.min(reconcile_at));
            self.timer.set(Some(next), std_now()).context("arm the VRRP timer")?;
            let woken = poller.wait(wake).context("wait on the VRRP socket and timer")?;
            // Commands first: a stop must not wait behind an advert or a batch of packets.
            if woken.wake {
                loop {
                    match commands.try_recv() {
                        Ok(Command::Input(u)) => rt.block_on(self.input(u)),
                        Ok(Command::Reload(new)) => rt.block_on(self.reload(*new)),
                        Ok(Command::Stop) | Err(TryRecvError::Disconnected) => return Ok(()),
                        Err(TryRecvError::Empty) => break,
                    }
                }
            }
            if woken.packet {
                // A bounded batch: a flood of packets must not starve the advert timer, which
                // the same wait reports alongside.
                for _ in 0..PACKETS_PER_TURN {
                    match self.socket.try_recv(&mut buf) {
                        Ok(Some(arrived)) => {
                            recv_errors = 0;
                            self.packet(rt, &buf, arrived);
                        }
                        Ok(None) => break,
                        Err(e) => {
                            recv_errors += 1;
                            self.metrics.failure(Failure::Receive);
                            tracing::warn!(error = %e, "receive on the VRRP socket");
                            if recv_errors >= MAX_RECV_ERRORS {
                                anyhow::bail!("the VRRP socket failed {recv_errors} times in a row: {e}");
                            }
                            std::thread::sleep(Duration::from_millis(20));
                            break;
                        }
                    }
                }
            }
            if woken.timer {
                self.timer.fired();
                let now = std_now();
                if self.fsm.next_deadline().is_some_and(|d| d <= now) {
                    let fx = self.fsm.handle(now, Event::Timer);
                    self.apply_here(rt, fx);
                }
                if reconcile_at <= now {
                    // From now, not from the missed tick: late ticks are not bunched.
                    reconcile_at = now + RECONCILE_EVERY;
                    // Checked here; the runtime only when something is to be done.
                    let want = self.fsm.state() == State::Master;
                    let present = self.holder.present();
                    if present.is_some_and(|p| p != want) {
                        rt.block_on(self.holder.reconcile_with(present, want, self.v.garp.master_repeat));
                    }
                }
            }
        }
    }

    /// Carries out effects on the protocol's thread: adverts are sent right here (a master's
    /// steady state); anything else (netlink, notify) runs on the runtime.
    fn apply_here(&mut self, rt: &Handle, fx: Vec<Effect>) {
        if fx.iter().all(|e| matches!(e, Effect::SendAdvert { .. })) {
            for e in fx {
                if let Effect::SendAdvert { priority } = e {
                    self.send_advert(priority);
                }
            }
        } else {
            rt.block_on(self.apply(fx));
        }
    }

    fn packet(&mut self, rt: &Handle, buf: &[u8], arrived: Arrived) {
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
        self.apply_here(rt, fx);
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
        self.reprioritise().await;
    }

    /// Recomputes the effective priority from the base and the weighted inputs, and tells the
    /// state machine when it or the fault verdict changed.
    async fn reprioritise(&mut self) {
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

    /// A config reload: the runtime keys of `new` apply (see [`Config::reloaded`]); the state,
    /// and the VIP with it, stays unless the new priority changes who should be master.
    async fn reload(&mut self, new: Config) {
        let (next, plan) = self.cfg.reloaded(&new);
        self.metrics.reload(plan.log("vip-manager"));
        plan.apply_log_level(&next.log);
        if let Mode::Vrrp(v) = &next.mode {
            self.v = v.clone();
            self.encoded = None;
            self.fsm.reconfigure(params(v, self.source));
        }
        let leader_weight = next.leader.as_ref().map(|l| l.weight);
        let weights = leader_weight.into_iter().chain(next.tracks.iter().map(|t| t.weight));
        for (w, new) in self.weights.weights.iter_mut().zip(weights) {
            *w = new;
        }
        self.cfg = next;
        self.reprioritise().await;
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
                    notify(self.cfg.notify.as_ref(), &self.v.instance, to, self.fsm.priority(), &self.metrics);
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
        // Only the priority changes between adverts while running (a reload clears the copy):
        // the messages are encoded once per priority, not once per advert.
        if self.encoded.as_ref().is_none_or(|(p, _)| *p != priority) {
            let advert = Advert {
                version: self.v.version,
                vrid: self.v.vrid,
                priority,
                interval_cs: self.v.interval_cs,
                auth: if self.v.version == Version::V2 { self.v.auth.clone() } else { packet::Auth::None },
                addrs: vec![self.vip],
            };
            let msgs = self
                .destinations
                .iter()
                .map(|&dst| advert.encode(self.source, dst, self.v.v3_checksum).map_err(|e| e.to_string()))
                .collect();
            self.encoded = Some((priority, msgs));
        }
        let Some((_, msgs)) = &self.encoded else { return };
        for (&dst, msg) in self.destinations.iter().zip(msgs) {
            let sent = msg
                .as_ref()
                .map_err(Clone::clone)
                .and_then(|msg| self.socket.send(self.source, dst, msg).map_err(|e| e.to_string()));
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
