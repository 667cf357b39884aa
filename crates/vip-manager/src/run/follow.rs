//! etcd-follow mode (cybertec vip-manager's model): no VRRP; the VIP is held exactly while the
//! leader key names this member ([`crate::follow`] decides, also while etcd is unreachable).

use std::time::Instant;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use outrigger_daemon::reload::Source;

use super::holder::VipHolder;
use super::{Progress, next_reload, notify, reconcile_timer, sleep_until, std_now};
use crate::config::{Config, Leader};
use crate::follow::{self, View};
use crate::fsm::{GarpSchedule, State};
use crate::inputs::Update;
use crate::metrics::Metrics;

/// etcd-follow mode: no VRRP, the VIP follows the leader key.
pub(super) struct FollowDaemon {
    /// The config in force (a reload changes its runtime keys).
    cfg: Config,
    leader: Leader,
    holder: VipHolder,
    garp: GarpSchedule,
    view: View,
    held: bool,
    /// The second GARP burst after taking the VIP.
    garp_again_at: Option<Instant>,
    recheck_at: Option<Instant>,
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
    pub(super) fn new(cfg: &Config, leader: Leader, holder: VipHolder) -> Self {
        tracing::info!(interface = %cfg.interface, vip = %cfg.vip, key = %leader.key, member = %leader.member,
            on_etcd_unreachable = ?leader.on_unreachable, "following the leader key");
        Self {
            cfg: cfg.clone(),
            garp: GarpSchedule::default(),
            metrics: holder.metrics.clone(),
            leader,
            holder,
            view: View::Unknown,
            held: false,
            garp_again_at: None,
            recheck_at: None,
        }
    }

    pub(super) async fn run(
        &mut self,
        mut inputs: mpsc::Receiver<Update>,
        shutdown: &CancellationToken,
        reloads: &mut Option<Source>,
        progress: &Progress,
    ) -> anyhow::Result<()> {
        self.metrics.transition(State::Initialize, State::Backup);
        let result = self.main_loop(&mut inputs, shutdown, reloads, progress).await;
        // Release on the way out, whatever ended the loop.
        if self.holder.release().await {
            self.set_held(false);
        }
        self.metrics.transition(if self.held { State::Master } else { State::Backup }, State::Stopped);
        result
    }

    async fn main_loop(
        &mut self,
        inputs: &mut mpsc::Receiver<Update>,
        shutdown: &CancellationToken,
        reloads: &mut Option<Source>,
        progress: &Progress,
    ) -> anyhow::Result<()> {
        let mut reconcile = reconcile_timer();
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
                new = next_reload(reloads, &self.metrics) => if let Some(new) = new {
                    self.reload(new).await;
                },
            }
        }
    }

    /// A config reload: the leader key's etcd-outage rule, the notify script and the log
    /// level apply (see [`Config::reloaded`]); the decision is taken again under them.
    async fn reload(&mut self, new: Config) {
        let (next, plan) = self.cfg.reloaded(&new);
        self.metrics.reload(plan.log("vip-manager"));
        plan.apply_log_level(&next.log);
        if let Some(l) = &next.leader {
            self.leader = l.clone();
        }
        self.cfg = next;
        self.decide().await;
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
        notify(self.cfg.notify.as_ref(), "follow", to, 0, &self.metrics);
    }

    async fn reconcile(&mut self) {
        self.holder.reconcile(self.held, self.garp.master_repeat).await;
    }
}
