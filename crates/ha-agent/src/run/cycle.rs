//! One cycle: read etcd, observe PostgreSQL, update the memory, decide, act, publish.

use std::sync::atomic::Ordering;

use outrigger_schema::{ClusterKey, HistoryEntry, KeyKind};

use super::{Agent, Read, wall_ms};
use crate::core::{ConfigState, Decision, DynConfig, Observed, PgView, WaitReason};

/// Peer probe rounds in one cycle: a round is repeated when another member led while the
/// answers came in (`core::ProbeBasis`).
const PROBE_ROUNDS: usize = 3;

impl Agent {
    pub(super) async fn read(&mut self) -> Option<Read> {
        let (revision, kvs) = match self.dcs.snapshot().await {
            Ok(x) => x,
            Err(e) => {
                self.metrics.etcd_errors.with_label_values(&["read"]).inc();
                tracing::warn!(error = %e, "cannot read the cluster from etcd");
                return None;
            }
        };
        self.dcs_last_seen = Some(wall_ms() / 1000);
        let (view, problems) = crate::core::ClusterView::decode(self.dcs.layout(), revision, &kvs);
        for p in problems {
            if self.reported.insert((p.key.clone(), p.mod_revision)) {
                let kind = match self.dcs.layout().classify(&p.key) {
                    Some(KeyKind::Member(_)) => "member",
                    Some(KeyKind::Fixed(ClusterKey::Config)) => "config",
                    _ => "other",
                };
                self.metrics.decode_errors.with_label_values(&[kind]).inc();
                tracing::warn!(key = %p.key, mod_revision = p.mod_revision, error = %p.error, "ignoring a value that cannot be decoded");
            }
        }
        match &view.config {
            ConfigState::Valid(c) => self.dyn_config = (**c).clone(),
            // Garbage: keep the last good config. Absent: Patroni's defaults.
            ConfigState::Garbage => {}
            ConfigState::Absent => self.dyn_config = DynConfig::default(),
        }
        self.apply_timings(false);
        self.pg.set_cluster(&self.dyn_config);
        if let Some(lease) = self.memory.leader_lease_unknown(&self.cfg.name, &view) {
            match self.dcs.granted_ttl(lease).await {
                Ok(ttl) => {
                    if ttl > self.settings.timings.ttl {
                        tracing::info!(
                            lease = format!("{lease:x}"),
                            granted = %humantime::format_duration(ttl),
                            "the leader's lease is longer than our ttl; waits that cover it use its TTL"
                        );
                    }
                    self.memory.leader_lease_learned(lease, ttl);
                }
                // Asked again next cycle; until then the last TTL learned stands.
                Err(e) => {
                    tracing::debug!(lease = format!("{lease:x}"), error = %e, "cannot read the leader lease's TTL")
                }
            }
        }
        let (history, history_rev) = history_rows(self.dcs.layout(), &kvs);
        Some(Read { view, history, history_rev })
    }

    fn decide(
        &self,
        read: Option<&Read>,
        pg: &PgView,
        peers: Option<(&[crate::core::PeerProbe], crate::core::ProbeBasis)>,
    ) -> Decision {
        crate::core::decide(&Observed {
            now: self.clock.now(),
            wall_ms: wall_ms(),
            settings: &self.settings,
            cluster: read.map(|r| &r.view),
            config: &self.dyn_config,
            lease: self.lease.view(),
            pg,
            peers: peers.as_ref().map(|(answers, _)| *answers),
            probed_in: peers.map(|(_, basis)| basis),
            recent: self.memory.recent(),
            watchdog_failed: self.lease.watchdog_failed(),
        })
    }

    /// One cycle. An error ends the agent (another agent writes our member key).
    pub(super) async fn cycle(&mut self) -> anyhow::Result<()> {
        let started = std::time::Instant::now();
        self.cycle_started_ms = wall_ms();
        let mut read = self.read().await;
        self.check_impostor(read.as_ref())?;
        let (mut pg, mut extra) = self.pg.observe(self.current_upstream(read.as_ref()).as_ref()).await;
        self.observe(read.as_ref(), &pg);
        let mut d = self.decide(read.as_ref(), &pg, None);
        // The answers may have taken a while: decide on fresh reads. When the keys changed
        // meanwhile (someone led), the core asks again; after a few rounds the next cycle does.
        for _ in 0..PROBE_ROUNDS {
            let (Decision::ProbePeers { peers }, Some(r)) = (&d, read.as_ref()) else { break };
            let basis = crate::core::ProbeBasis::of(&r.view);
            let answers = crate::http::probe(peers, self.cfg.peer_timeout).await;
            read = self.read().await;
            (pg, extra) = self.pg.observe(self.current_upstream(read.as_ref()).as_ref()).await;
            self.observe(read.as_ref(), &pg);
            d = self.decide(read.as_ref(), &pg, Some((&answers, basis)));
        }
        self.log(&d);
        self.metrics.decisions.with_label_values(&[d.kind()]).inc();
        self.progress.busy(Some((d.kind(), super::action_bound(&d))), self.clock.now());
        if let Err(e) = self.act(&d, read.as_ref(), &pg).await {
            // Usually transient (a leader not accepting base backups yet, an etcd hiccup):
            // the next cycle decides again. What needs a human is logged as ERROR where known.
            tracing::warn!(decision = d.kind(), error = format!("{e:#}"), "action failed");
        }
        self.set_busy(None);
        if self.force_reload && matches!(pg, PgView::Running(_)) {
            self.force_reload = false;
            self.reload_now(read.as_ref(), &pg).await;
        }
        if d.is_steady()
            && let Some(done) = self.run_scheduled_restart(&pg, extra.as_ref()).await
        {
            tracing::info!("scheduled restart: {}", done.body);
            (pg, extra) = self.pg.observe(self.current_upstream(read.as_ref()).as_ref()).await;
        }
        if !d.is_steady() {
            // The action changed things: publish what is true now.
            (pg, extra) = self.pg.observe(self.current_upstream(read.as_ref()).as_ref()).await;
            self.observe(read.as_ref(), &pg);
        }
        self.publish(read.as_ref(), &pg, extra.as_ref()).await;
        self.metrics.cycle_seconds.observe(started.elapsed().as_secs_f64());
        self.metrics.last_cycle.set(i64::try_from(wall_ms() / 1000).unwrap_or(0));
        self.progress.cycle_done(self.clock.now());
        Ok(())
    }

    /// Another agent writes our member key (on a lease that is not ours, with another
    /// address): two agents with one name would each take the other's leader key for their
    /// own. This agent stops (and fences its PostgreSQL on the way out).
    fn check_impostor(&self, read: Option<&Read>) -> anyhow::Result<()> {
        let (api, conn) = (self.cfg.api_url(), self.cfg.conn_url());
        if let Some(m) = read.and_then(|r| r.view.impostor(&self.cfg.name, self.lease.view().id, &api, &conn)) {
            anyhow::bail!(
                "another agent named {:?} writes this member's key (api_url {}, conn_url {}): stopping",
                self.cfg.name,
                m.api_url,
                m.conn_url
            );
        }
        Ok(())
    }

    /// Updates the memory and the lease keeper from what this cycle saw: the fence (and the
    /// watchdog) is armed while PostgreSQL may accept writes, in maintenance mode too; a
    /// leader key of ours that vanished makes the keeper check the lease at once (etcd 3.4 may
    /// revoke it early when a stalled former raft leader wakes).
    fn observe(&mut self, read: Option<&Read>, pg: &PgView) {
        let now = self.clock.now();
        self.memory.observe(&self.cfg.name, read.map(|r| &r.view), pg, now);
        // failsafe_mode: the last POST /failsafe the REST API accepted, on the loop's clock.
        let last_post = self.api.failsafe().last();
        if let Some((leader, at)) = last_post {
            self.memory.failsafe_posted(&leader, now.minus(at.elapsed()));
            self.failsafe_judged = Some(at);
        }
        self.failsafe_inputs.send_if_modified(|i| {
            let new = super::failsafe::Inputs {
                failsafe_mode: self.dyn_config.failsafe_mode,
                members: self.memory.recent().failsafe_members.clone(),
                timings: self.settings.timings,
            };
            let changed = *i != new;
            *i = new;
            changed
        });
        if pg.may_accept_writes() {
            self.lease.arm();
        } else {
            self.lease.disarm(true);
        }
        self.paused.store(self.dyn_config.pause, Ordering::SeqCst);
        if let Some(r) = read {
            let i_lead = r.view.leader.as_ref().is_some_and(|l| l.name == self.cfg.name);
            if self.held_key && !i_lead {
                self.lease.renew_soon();
            }
            if let Some(l) = r.view.leader.as_ref().filter(|_| i_lead) {
                self.lease.key_on(l.lease);
            }
            self.held_key = i_lead;
        }
        self.switchover_at_ms = read
            .and_then(|r| r.view.failover.as_ref())
            .and_then(|f| f.scheduled_at.as_deref())
            .and_then(crate::core::schedule::parse_rfc3339_ms);
    }

    fn log(&mut self, d: &Decision) {
        let line = d.to_string();
        if self.last_logged.as_deref() == Some(line.as_str()) {
            tracing::debug!(decision = d.kind(), "{line}");
            return;
        }
        match d {
            Decision::StayStopped { .. } | Decision::Wait { reason: WaitReason::SystemIdMismatch { .. } } => {
                tracing::error!(decision = d.kind(), "{line}")
            }
            Decision::Fence { .. }
            | Decision::Demote { .. }
            | Decision::ReleaseLeader { .. }
            | Decision::Wait { reason: WaitReason::PausedPrimaryWithoutKey(_) } => {
                tracing::warn!(decision = d.kind(), "{line}")
            }
            _ => tracing::info!(decision = d.kind(), "{line}"),
        }
        self.last_logged = Some(line);
    }
}

/// `history` rows as written (with reasons and times) and the key's mod_revision, for
/// rewriting them with compare-and-swap.
fn history_rows(layout: &outrigger_schema::KeyLayout, kvs: &[outrigger_etcd::Kv]) -> (Vec<HistoryEntry>, i64) {
    let Some(kv) = kvs.iter().find(|kv| layout.classify(&kv.key) == Some(KeyKind::Fixed(ClusterKey::History))) else {
        return (Vec::new(), 0);
    };
    (HistoryEntry::decode_list(&kv.value).unwrap_or_default(), kv.mod_revision)
}
