//! The daemon's run loops: VRRP mode ([`vrrp`]) and etcd-follow mode ([`follow`]), around one
//! VIP holder ([`holder`]) they share. Both have the same shape:
//! set up (sockets, stale VIP removed, inputs started), signal READY, then wait on a closed set
//! of events (packet, timer, input change, reconcile tick, shutdown), decide in the pure core,
//! carry out its effects, and on the way out release the VIP (priority 0 first in VRRP mode).
//!
//! Releasing happens on SIGTERM and SIGINT alike (cybertec vip-manager keeps the VIP on
//! SIGTERM, which leaves it on a stopped node) and on any fatal error: a node that can no
//! longer run the protocol must not keep the address.

mod follow;
mod holder;
mod vrrp;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use outrigger_daemon::reload::Source;

use crate::config::{Config, Mode, Notify, RawConfig};
use crate::fsm::State;
use crate::inputs;
use crate::metrics::{Failure, Metrics};
use crate::netlink::Addresses;
use crate::sys::{self, FrameSocket};
use follow::FollowDaemon;
use holder::VipHolder;
use vrrp::VrrpDaemon;

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

/// Waits for the next reload request and reads the file: the new config, or `None` when the
/// file is invalid (logged and counted; the running config stays). Without a source (or once
/// the daemon stops) it never returns.
async fn next_reload(reloads: &mut Option<Source>, metrics: &Metrics) -> Option<Config> {
    let Some(r) = reloads else { return std::future::pending().await };
    match r.next::<RawConfig>().await {
        None => {
            *reloads = None;
            None
        }
        Some(None) => {
            metrics.reload(outrigger_daemon::reload::Outcome::Invalid);
            None
        }
        Some(new) => new,
    }
}

/// Runs the daemon until `shutdown` is cancelled or a fatal error; the VIP is released either
/// way. `ready` is called once the sockets are open (systemd READY). Each request in
/// `reloads` re-reads the config file and applies what can change while running
/// ([`Config::reloaded`]).
pub async fn run(
    cfg: Config,
    shutdown: CancellationToken,
    mut reloads: Option<Source>,
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
        let listener =
            tokio::net::TcpListener::bind(listen).await.with_context(|| format!("listen on metrics {listen}"))?;
        tokio::spawn(outrigger_daemon::metrics::serve(listener, metrics.registry.clone(), shutdown.clone()));
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
            let d = VrrpDaemon::new(&cfg, v, holder).await?;
            ready();
            d.run(rx, &shutdown, &mut reloads, &progress).await
        }
        Mode::Follow => {
            let leader = cfg.leader.clone().context("etcd-follow mode without [leader]")?;
            let mut d = FollowDaemon::new(&cfg, leader, holder);
            ready();
            d.run(rx, &shutdown, &mut reloads, &progress).await
        }
    };
    inputs_stop.cancel();
    result
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

/// The reconcile tick both modes wait on: every [`RECONCILE_EVERY`], late ticks not bunched.
fn reconcile_timer() -> tokio::time::Interval {
    let mut t = tokio::time::interval(RECONCILE_EVERY);
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    t
}

/// Sleeps until `at`, or forever when there is nothing to wait for.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
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
