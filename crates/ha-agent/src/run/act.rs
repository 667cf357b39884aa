//! Carrying out a decision. Every action that makes or keeps a primary runs only after the
//! compare-and-swap that licenses it, and re-checks the lease right before the step that
//! cannot be undone (STYLE rule 3); each outcome is recorded in the memory.

use std::time::Duration;

use anyhow::Context;
use outrigger_schema::{ConfigValue, HistoryEntry, StatusValue};

use super::standby::remote_upstream;
use super::{Agent, PROMOTING, Read, wall_ms};
use crate::config::{BootstrapMethod, ReplicaMethod};
use crate::core::schedule::format_rfc3339_ms;
use crate::core::slots::SlotAction;
use crate::core::{ClusterState, ClusterView, Decision, LeaderKey, Outcome, PgView, REMOTE_PRIMARY, RunningPg};
use crate::pg::StopMode;
use crate::pg::text::{Upstream, host_port_from_conn_url, parse_history_file, slot_name};

impl Agent {
    pub(super) fn upstream_of(&self, read: Option<&Read>, member: &str) -> Option<Upstream> {
        if member == REMOTE_PRIMARY {
            return self.dyn_config.standby_cluster.as_ref().and_then(remote_upstream);
        }
        let m = read?.view.member(member)?;
        let (host, port) = host_port_from_conn_url(&m.conn_url)?;
        Some(Upstream::member(member, host, port))
    }

    /// Publishes `state` (member key and REST status) before a long action, so that the
    /// leader sees this member (and creates its slot) while the action runs.
    pub(super) async fn announce(&mut self, read: Option<&Read>, pg: &PgView, state: &'static str) {
        self.set_busy(Some(state));
        self.publish(read, pg, None).await;
    }

    /// The member we stream from, with its address from the latest read (`None` without one).
    pub(super) fn current_upstream(&self, read: Option<&Read>) -> Option<Upstream> {
        self.memory.upstream().and_then(|u| self.upstream_of(read, u))
    }

    pub(super) fn record(&mut self, outcome: Outcome) {
        self.memory.record(&outcome, self.clock.now());
    }

    /// Starts PostgreSQL and records the outcome.
    pub(super) async fn start(&mut self) {
        match self.pg.start().await {
            Ok(()) => self.record(Outcome::Started),
            Err(e) => self.failed_start(&e),
        }
    }

    pub(super) fn failed_start(&mut self, e: &anyhow::Error) {
        self.record(Outcome::StartFailed);
        tracing::error!(error = format!("{e:#}"), "PostgreSQL did not start");
    }

    /// Makes this member a replica's data directory by `create_replica_methods`, in order: the
    /// first that succeeds wins; a failed one is logged and leaves nothing behind.
    async fn create_replica(&self, host: &str, port: u16) -> anyhow::Result<()> {
        self.create_replica_by(&self.cfg.postgresql.create_replica_methods, Some((host, port))).await
    }

    /// `create_replica` with these `methods`, from `source` (`None`: no server to copy from,
    /// only methods that need none can work).
    pub(super) async fn create_replica_by(
        &self,
        methods: &[ReplicaMethod],
        source: Option<(&str, u16)>,
    ) -> anyhow::Result<()> {
        let scope = self.dcs.layout().scope();
        let mut failures = Vec::new();
        for m in methods {
            let (name, r) = match (m, source) {
                (ReplicaMethod::Basebackup, Some((host, port))) => ("basebackup", self.pg.basebackup(host, port).await),
                (ReplicaMethod::Basebackup, None) => {
                    ("basebackup", Err(anyhow::anyhow!("no host to take a base backup from")))
                }
                (ReplicaMethod::Command { name, .. }, _) => {
                    (name.as_str(), self.pg.replica_by_command(m, scope, source).await)
                }
            };
            match r {
                Ok(()) => {
                    tracing::info!(method = name, "replica created");
                    return Ok(());
                }
                Err(e) => {
                    tracing::warn!(method = name, error = %format!("{e:#}"), "replica method failed; trying the next");
                    failures.push(format!("{name}: {e:#}"));
                }
            }
        }
        anyhow::bail!("every replica method failed: {}", failures.join("; "))
    }

    /// The lease itself is trusted now (checked right before a step that makes a primary;
    /// failsafe_mode's proof does not count: the leader key lives on the lease).
    fn lease_trusted_now(&self) -> bool {
        self.lease.view().held(self.clock.now(), &self.settings.timings)
    }

    /// Before a step that takes the leader key or makes a primary: from now on this member
    /// refuses `POST /failsafe`; with failsafe_mode on, the step is skipped (`false`) when a
    /// leader confirmed itself to us by such a POST less than a ttl ago (it may still run as a
    /// primary that cannot reach etcd). Checked on the REST API's own record, so that a POST
    /// accepted while this cycle ran counts (one the decision weighed is the memory's to judge).
    fn failsafe_claim(&self) -> bool {
        let mut desk = self.api.failsafe();
        if !self.dyn_config.failsafe_mode {
            desk.set_leading(true);
            return true;
        }
        match desk.claim(&self.cfg.name, self.cover(), std::time::Instant::now(), self.failsafe_judged) {
            Ok(()) => true,
            Err(leader) => {
                tracing::info!(%leader, "failsafe_mode: this leader confirmed itself less than a ttl ago; not taking over");
                false
            }
        }
    }

    /// Arms the fence and, when the watchdog is used, waits for it to be active: a primary
    /// that needs the watchdog must not start taking writes before it can be reset.
    async fn arm_for_primary(&mut self) -> anyhow::Result<()> {
        self.lease.arm();
        if !self.lease.wait_watchdog(self.settings.timings.retry_timeout).await {
            anyhow::bail!("watchdog.mode is required and the watchdog could not be activated; not becoming a primary");
        }
        Ok(())
    }

    pub(super) async fn act(&mut self, d: &Decision, read: Option<&Read>, pg: &PgView) -> anyhow::Result<()> {
        match d {
            Decision::Fence { .. } | Decision::Demote { .. } => {
                self.pg.stop(StopMode::Immediate).await?;
                self.lease.disarm(true);
            }
            Decision::RaceInitialize => self.bootstrap().await?,
            Decision::PublishInitialize { sysid } => self.dcs.set_initialize(*sysid).await?,
            Decision::Clone { from } => {
                let src = self.upstream_of(read, from).with_context(|| format!("no conn_url for {from}"))?;
                self.announce(read, pg, "creating replica").await;
                self.create_replica(&src.host, src.port).await?;
                let leader = read.and_then(|r| r.view.leader.as_ref()).map(|l| l.name.clone());
                let up = leader.as_deref().and_then(|l| self.upstream_of(read, l));
                self.pg.write_config(&self.cluster_params(false), true, up.as_ref(), self.wal_log_hints())?;
                self.record(Outcome::Cloned { upstream: leader });
                self.start().await;
            }
            // Handled in `cycle`: the answers are fed back into `decide`.
            Decision::ProbePeers { .. } => {}
            Decision::AcquireLeader => {
                let lease = self.lease.view().id.context("no lease to take the leader key on")?;
                if !self.lease_trusted_now() {
                    anyhow::bail!("the lease is no longer trusted; not taking the leader key");
                }
                if !pg.writable() && !self.failsafe_claim() {
                    return Ok(());
                }
                if !self.dcs.acquire(lease).await? {
                    tracing::info!("lost the leader race");
                    return Ok(());
                }
                tracing::info!("took the leader key");
                self.lease.key_on(lease);
                if let Some(f) = read.and_then(|r| r.view.failover.as_ref()) {
                    let _ = self.dcs.clear_failover(f.mod_revision).await;
                }
                match pg {
                    // A standby cluster's new leader is the standby leader: the next cycle
                    // points it at the remote primary (`Decision::LeadStandby`).
                    PgView::Running(r) if !r.primary && self.dyn_config.standby_cluster.is_none() => {
                        self.promote(read, r).await?
                    }
                    PgView::Running(r) if r.primary => self.lease.arm(),
                    _ => {}
                }
            }
            Decision::RetakeLeader => {
                let lease = self.lease.view().id.context("no lease")?;
                if self.dcs.retake(lease).await? {
                    self.lease.key_on(lease);
                } else {
                    tracing::info!("the leader key changed before it could be retaken");
                }
            }
            Decision::Promote => {
                if let PgView::Running(r) = pg
                    && self.failsafe_claim()
                {
                    self.promote(read, r).await?;
                }
            }
            Decision::StartPrimary => {
                if !self.failsafe_claim() {
                    return Ok(());
                }
                // Armed first: from the moment it starts, this primary is fenced with the lease.
                self.arm_for_primary().await?;
                if !self.lease_trusted_now() {
                    anyhow::bail!("the lease is no longer trusted; not starting as a primary");
                }
                self.sync_before_primary(read, false).await?;
                self.pg.write_config(&self.cluster_params(true), false, None, self.wal_log_hints())?;
                self.record(Outcome::ConfiguredUpstream(None));
                self.announce(read, pg, "starting").await;
                self.start().await;
            }
            Decision::ReleaseLeader { .. } => {
                // Never give up the key while this server may accept writes: stop it first
                // (also when it runs without answering SQL). Paused, PostgreSQL is left as it
                // is (Patroni releases without stopping).
                if pg.may_accept_writes() && !self.dyn_config.pause {
                    self.pg.stop(StopMode::Immediate).await?;
                    self.lease.disarm(true);
                }
                self.dcs.release().await?;
            }
            Decision::StepDown { .. } => self.step_down(read).await?,
            Decision::ClearFailover { .. } => {
                if let Some(f) = read.and_then(|r| r.view.failover.as_ref()) {
                    self.dcs.clear_failover(f.mod_revision).await?;
                }
            }
            Decision::Lead => {
                if let PgView::Running(r) = pg {
                    self.lead(read, r).await;
                }
            }
            Decision::Follow { upstream } => {
                self.pg.set_standby_leader(false);
                let up = upstream.as_deref().and_then(|l| self.upstream_of(read, l));
                if let (Some(u), None) = (upstream, &up) {
                    anyhow::bail!("no conn_url for {u}, the member to stream from");
                }
                let changed =
                    self.pg.write_config(&self.cluster_params(false), true, up.as_ref(), self.wal_log_hints())?;
                self.record(Outcome::ConfiguredUpstream(upstream.clone()));
                match pg {
                    PgView::Stopped(_) => {
                        self.announce(read, pg, "starting").await;
                        self.start().await;
                    }
                    PgView::Running(_) if changed => {
                        self.pending_restart = !self.pg.reload().await?.is_empty();
                    }
                    _ => {}
                }
            }
            Decision::Replicate { upstream } => {
                self.pg.set_standby_leader(false);
                let up = self.upstream_of(read, upstream);
                if self.pg.write_config(&self.cluster_params(false), true, up.as_ref(), self.wal_log_hints())? {
                    self.pending_restart = !self.pg.reload().await?.is_empty();
                }
                if let (Some(r), PgView::Running(pg)) = (read, pg) {
                    self.keep_permanent_slots(&r.view, false, pg.wal_position).await;
                    self.keep_cascade_slots(&r.view).await;
                }
            }
            Decision::Rewind { leader } => self.rewind(read, pg, leader).await?,
            Decision::Reinit { .. } => {
                self.pg.stop(StopMode::Immediate).await?;
                self.lease.disarm(true);
                self.pg.remove_data()?;
                self.pg.forget_role();
                self.record(Outcome::DataRemoved);
            }
            Decision::StayStopped { .. } => {
                self.pg.stop(StopMode::Fast).await?;
                self.record(Outcome::StayedStopped);
            }
            Decision::Wait { .. } => {}
            // The rounds run on the failsafe task (`run/failsafe.rs`).
            Decision::Failsafe { .. } => {}
            Decision::LeadStandby { upstream } => self.lead_standby(read, pg, upstream.as_deref()).await?,
            Decision::DemoteCluster => self.demote_cluster(read, pg).await?,
        }
        Ok(())
    }

    /// The leader keeps `/failsafe` = every member's REST API address (itself included) while
    /// failsafe_mode is on, written only when it changed (Patroni's rule).
    async fn write_failsafe(&mut self, view: &crate::core::ClusterView) {
        if !self.dyn_config.failsafe_mode {
            return;
        }
        let mut want: std::collections::BTreeMap<String, String> = view
            .members
            .iter()
            .filter(|m| !m.api_url.is_empty())
            .map(|m| (m.name.clone(), m.api_url.clone()))
            .collect();
        want.insert(self.cfg.name.clone(), self.cfg.api_url());
        // The view's copy is sorted by name, as the map is.
        let written: Vec<(String, String)> = want.clone().into_iter().collect();
        if view.failsafe.as_ref() == Some(&written) {
            return;
        }
        match self.dcs.write_failsafe(&outrigger_schema::FailsafeValue(want)).await {
            Ok(()) => self.memory.failsafe_written(&self.cfg.name, &written),
            Err(e) => {
                self.metrics.etcd_errors.with_label_values(&["write"]).inc();
                tracing::warn!(error = %e, "write the failsafe key");
            }
        }
    }

    /// Bootstrap through the `initialize` race: initdb, start as primary, publish.
    async fn bootstrap(&mut self) -> anyhow::Result<()> {
        if !self.dcs.race_initialize().await? {
            tracing::info!("another member won the bootstrap race");
            return Ok(());
        }
        let lease = match self.lease.view().id {
            Some(l) if self.lease_trusted_now() && self.dcs.acquire(l).await.unwrap_or(false) => l,
            _ => {
                let _ = self.dcs.cancel_initialize().await;
                anyhow::bail!("won the bootstrap race but could not take the leader key");
            }
        };
        let method = match &self.cfg.bootstrap_method {
            BootstrapMethod::Initdb => "initdb",
            BootstrapMethod::Command { name, .. } => name.as_str(),
        };
        let boot = serde_json::from_value::<ConfigValue>(self.cfg.bootstrap_dcs.clone()).ok();
        let standby = boot.as_ref().and_then(ConfigValue::standby_cluster);
        match &standby {
            Some(_) => tracing::info!(
                lease = format!("{lease:x}"),
                "won the bootstrap race; copying the remote primary of standby_cluster"
            ),
            None => {
                tracing::info!(lease = format!("{lease:x}"), method, "won the bootstrap race; making the new cluster")
            }
        }
        self.set_busy(Some("initializing new cluster"));
        // No callbacks while the cluster is made; `on_start` once it is (as Patroni).
        self.pg.set_bootstrapping(true);
        let steps = async {
            if let Some(sc) = &standby {
                return self.bootstrap_standby(sc, boot.as_ref()).await;
            }
            self.arm_for_primary().await?;
            self.bootstrap_steps(boot.as_ref()).await
        };
        match steps.await {
            Ok(sysid) => {
                self.pg.set_bootstrapping(false);
                self.pg.call_nowait(crate::pg::callbacks::Action::OnStart);
                self.dcs.set_initialize(sysid).await?;
                let mut dcs = self.cfg.bootstrap_dcs.clone();
                if let Some(obj) = dcs.as_object_mut() {
                    // Exact: every member reads them back (a fraction only below a second's
                    // precision, which Patroni's own minimums never need).
                    let secs = |d: Duration| {
                        if d.subsec_millis() == 0 {
                            serde_json::Value::from(d.as_secs())
                        } else {
                            serde_json::Value::from(d.as_millis() as f64 / 1000.0)
                        }
                    };
                    obj.entry("ttl").or_insert_with(|| secs(self.cfg.timings.ttl));
                    obj.entry("loop_wait").or_insert_with(|| secs(self.cfg.timings.loop_wait));
                    obj.entry("retry_timeout").or_insert_with(|| secs(self.cfg.timings.retry_timeout));
                }
                self.dcs.create_config(&dcs.to_string()).await?;
                tracing::info!(sysid, "cluster bootstrapped");
                Ok(())
            }
            Err(e) => {
                let _ = self.pg.stop(StopMode::Immediate).await;
                self.lease.disarm(true);
                let _ = self.pg.remove_data();
                self.pg.forget_role();
                let _ = self.dcs.release().await;
                let _ = self.dcs.cancel_initialize().await;
                self.pg.set_bootstrapping(false);
                Err(e.context("bootstrap"))
            }
        }
    }

    /// `wal_log_hints` while the cluster is made, before the config key exists: on when the
    /// member's `use_pg_rewind` or `bootstrap.dcs`'s asks for it.
    pub(super) fn bootstrap_hints(&self, boot: Option<&ConfigValue>) -> bool {
        self.settings.use_pg_rewind.unwrap_or(false) || boot.and_then(ConfigValue::use_pg_rewind).unwrap_or(false)
    }

    async fn bootstrap_steps(&mut self, boot: Option<&ConfigValue>) -> anyhow::Result<u64> {
        let mut params = boot.map(ConfigValue::parameters).unwrap_or_default();
        let recovery = match &self.cfg.bootstrap_method {
            BootstrapMethod::Initdb => {
                self.pg.initdb(&self.cfg.initdb).await?;
                vec![]
            }
            m @ BootstrapMethod::Command { recovery_conf, .. } => {
                self.pg.bootstrap_by_command(m, self.dcs.layout().scope()).await?;
                recovery_conf.clone()
            }
        };
        let hints = self.bootstrap_hints(boot);
        if !recovery.is_empty() {
            // Point-in-time recovery first, with the recovery settings; they are taken out
            // again once it promotes, so no later start (as a replica) stops at the target.
            let mut with = params.clone();
            with.extend(recovery.iter().cloned());
            self.pg.write_config(&with, false, None, hints)?;
            self.pg.start().await?;
            self.pg.wait_recovery_end(Duration::from_secs(3600)).await?;
            tracing::info!("the bootstrap's recovery reached its target and promoted");
        }
        params.retain(|(k, _)| !recovery.iter().any(|(r, _)| r == k));
        self.pg.write_config(&params, false, None, hints)?;
        self.record(Outcome::Promoted);
        self.pg.start().await?;
        if !recovery.is_empty() {
            self.pg.reload().await?;
        }
        self.pg.create_replication_user().await?;
        Ok(self.pg.controldata().await?.sysid)
    }

    /// Promotion: announce the new timeline in `history`, arm the fence and the watchdog,
    /// check the lease once more, promote, then publish the exact switch point and checkpoint
    /// (pg_rewind on others reads our pg_control's timeline).
    async fn promote(&mut self, read: Option<&Read>, r: &RunningPg) -> anyhow::Result<()> {
        // Patroni's fencing hook: a script that refuses cancels the promotion; the key goes
        // back and this member stays out of races for a ttl, so another one can take over.
        if !self.pg.pre_promote().await {
            self.record(Outcome::PrePromoteFailed);
            if self.dcs.release().await? {
                tracing::warn!("pre_promote refused: gave the leader key back");
            }
            return Ok(());
        }
        let mut rows: Vec<HistoryEntry> = read.map(|x| x.history.clone()).unwrap_or_default();
        rows.retain(|h| h.timeline < r.timeline);
        rows.push(HistoryEntry {
            timeline: r.timeline,
            lsn: r.wal_position,
            reason: PROMOTING.to_owned(),
            timestamp: Some(format_rfc3339_ms(wall_ms())),
            new_leader: Some(self.cfg.name.clone()),
        });
        // Compare-and-swap on the history we decided from: if another member changed it
        // meanwhile, our decision is stale and the next cycle decides again.
        let rev = read.map_or(0, |x| x.history_rev);
        let rev = self.dcs.write_history(&rows, rev).await.context("announce the promotion in history")?;
        // Synchronous mode: the sync key names us (with compare-and-swap) and
        // synchronous_standby_names is in place before the first write is acknowledged.
        if self.dyn_config.sync.mode != crate::core::sync::SyncMode::Off {
            self.sync_before_primary(read, true).await?;
            let up = self.memory.upstream().and_then(|u| self.upstream_of(read, u));
            if self.pg.write_config(&self.cluster_params(true), true, up.as_ref(), self.wal_log_hints())? {
                self.pg.reload().await.context("reload before promoting")?;
            }
        }
        self.arm_for_primary().await?;
        // The history write and the watchdog took time: the lease must still be trusted now,
        // or the key may expire under the new primary.
        if !self.lease_trusted_now() {
            anyhow::bail!("the lease is no longer trusted; not promoting");
        }
        self.pg.promote().await?;
        self.record(Outcome::Promoted);
        tracing::info!("promoted");
        let unready = self.logical.unready();
        if !unready.is_empty() {
            // As Patroni: the copies may lack catalog rows their consumers need.
            tracing::warn!(slots = unready.join(","), "logical slots that may be unsafe to use after this promotion");
        }
        // Publish the new role at once (REST health checks, member key): the history and the
        // checkpoint below take a while, and a proxy should not wait for them.
        // The key is ours (taken or held on our lease) even if `read` predates taking it.
        let mut held = read.cloned();
        if let (Some(h), Some(lease)) = (held.as_mut(), self.lease.view().id) {
            h.view.leader = Some(LeaderKey { name: self.cfg.name.clone(), lease, mod_revision: 0 });
        }
        let (now_pg, now_extra) = self.pg.observe(None).await;
        self.publish(held.as_ref(), &now_pg, now_extra.as_ref()).await;
        // The other members' slots now, not a cycle later: the old primary of a switchover
        // restarts as our replica within milliseconds and cannot stream without its slot.
        if let Some(x) = read {
            self.manage_slots(&x.view).await;
        }
        if let Err(e) = self.write_history(&rows, rev).await {
            tracing::warn!(error = format!("{e:#}"), "could not publish the new timeline yet; retrying while leading");
        }
        if let Err(e) = self.pg.checkpoint().await {
            tracing::warn!(error = format!("{e:#}"), "checkpoint after promote");
        }
        Ok(())
    }

    /// `history` from our timeline's history file; leader names and times kept from `known`,
    /// written only if the key is still at `rev`.
    async fn write_history(&mut self, known: &[HistoryEntry], rev: i64) -> anyhow::Result<()> {
        let PgView::Running(r) = self.pg.observe(None).await.0 else { anyhow::bail!("PostgreSQL is not running") };
        if r.timeline <= 1 {
            return Ok(());
        }
        let text = self.pg.timeline_history(r.timeline).await?;
        let file = parse_history_file(&text);
        let last = file.len();
        let rows: Vec<HistoryEntry> = file
            .into_iter()
            .enumerate()
            .map(|(i, (sw, reason))| {
                let old = known.iter().find(|h| h.timeline == sw.timeline && h.reason != PROMOTING);
                let mine = i + 1 == last;
                HistoryEntry {
                    timeline: sw.timeline,
                    lsn: sw.lsn,
                    reason,
                    timestamp: old.and_then(|o| o.timestamp.clone()).or_else(|| Some(format_rfc3339_ms(wall_ms()))),
                    new_leader: if mine { Some(self.cfg.name.clone()) } else { old.and_then(|o| o.new_leader.clone()) },
                }
            })
            .collect();
        self.dcs.write_history(&rows, rev).await?;
        Ok(())
    }

    /// The leader's housekeeping: settings, history, slots, status.
    async fn lead(&mut self, read: Option<&Read>, r: &RunningPg) {
        if self.dyn_config.sync.mode != crate::core::sync::SyncMode::Off && self.sync_ssn.is_none() {
            // A restarted agent on a running primary: keep the setting in force until the
            // synchronous replication step has looked at it.
            if let Ok(ssn) = self.pg.synchronous_standby_names().await {
                self.sync_ssn = Some(ssn);
            }
        }
        match self.pg.write_config(&self.cluster_params(true), false, None, self.wal_log_hints()) {
            Ok(true) => match self.pg.reload().await {
                Ok(pending) => {
                    if !pending.is_empty() {
                        tracing::info!(settings = pending.join(","), "settings changed; they need a restart");
                    }
                    self.pending_restart = !pending.is_empty();
                }
                Err(e) => tracing::warn!(error = format!("{e:#}"), "reload"),
            },
            Ok(false) => {}
            Err(e) => tracing::warn!(error = format!("{e:#}"), "write postgresql.conf"),
        }
        self.keep_raft_leader_off();
        let Some(read) = read else { return };
        // History: our switch must be the last row, exact (not the provisional one).
        if r.timeline > 1 {
            let last = read.history.iter().max_by_key(|h| h.timeline);
            let ok = last.is_some_and(|h| h.timeline + 1 == r.timeline && h.reason != PROMOTING);
            if !ok && let Err(e) = self.write_history(&read.history, read.history_rev).await {
                tracing::warn!(error = format!("{e:#}"), "publish history");
            }
        }
        self.manage_slots(&read.view).await;
        self.keep_permanent_slots(&read.view, true, r.wal_position).await;
        self.sync_replication(read, r).await;
        self.write_failsafe(&read.view).await;
        self.write_status(&read.view, r.wal_position).await;
    }

    /// The leader's `status` (`optime`, the permanent slots' positions, the members' slots to
    /// retain), written when it changed, and at least once per ttl.
    pub(super) async fn write_status(&mut self, view: &ClusterView, optime: u64) {
        let status = StatusValue {
            optime,
            slots: self.permanent_positions.iter().map(|(n, l)| (n.clone(), serde_json::Value::from(*l))).collect(),
            retain_slots: Some(
                view.members.iter().filter(|m| m.name != self.cfg.name).map(|m| slot_name(&m.name)).collect(),
            ),
            extra: serde_json::Map::new(),
        };
        self.put_status(status).await;
    }

    /// Writes `status` when it changed, and at least once per ttl.
    pub(super) async fn put_status(&mut self, status: StatusValue) {
        let due = self.last_status_at.is_none_or(|t| self.clock.now().since(t) >= self.settings.timings.ttl);
        if due || self.last_status.as_ref() != Some(&status) {
            match self.dcs.write_status(&status).await {
                Ok(()) => {
                    self.last_status = Some(status);
                    self.last_status_at = Some(self.clock.now());
                }
                Err(e) => {
                    self.metrics.etcd_errors.with_label_values(&["write"]).inc();
                    tracing::debug!(error = %e, "write status");
                }
            }
        }
    }

    /// One physical slot per other member that streams from us (`core::cascade`: not those
    /// that cascade from a replica or take WAL from the archive only); slots of members gone
    /// for `member_slots_ttl` are dropped. Slots we never saw a member for are left alone.
    pub(super) async fn manage_slots(&mut self, view: &ClusterView) {
        let me = self.cfg.name.clone();
        // Members seen recently, former leaders included: a member rejoining after its key
        // expired needs its slot before it can stream and publish its key again.
        let gone = self.memory.slot_members().filter(|n| view.member(n).is_none()).map(str::to_owned);
        let wanted: Vec<String> = crate::core::cascade::streaming_from(&view.members, &me, &me)
            .into_iter()
            .map(str::to_owned)
            .chain(gone)
            .filter(|n| *n != me)
            .collect();
        self.member_slots_clean = None;
        let (wanted, others) = self.member_slot_names(view, &wanted);
        let Some((slots, _)) = self.keep_member_slots(&wanted, &others).await else { return };
        let present: Vec<&str> = view.members.iter().map(|m| m.name.as_str()).collect();
        for member in self.memory.departed_slot_members(&present, self.clock.now(), self.dyn_config.member_slots_ttl) {
            let name = slot_name(&member);
            if slots.iter().any(|s| s.name == name && !s.active) {
                match self.pg.drop_slot(&name).await {
                    Ok(()) => tracing::info!(slot = %name, "dropped the slot of a member gone for 30 minutes"),
                    Err(e) => tracing::warn!(slot = %name, error = format!("{e:#}"), "drop replication slot"),
                }
            }
            self.memory.forget_slot_member(&member);
        }
    }

    /// A replica's member slots: one per member that cascades from it (`replicatefrom`), none
    /// for the others (a former primary's are dropped once inactive). Slots are listed only
    /// when the names differ from the last pass that found nothing to do.
    async fn keep_cascade_slots(&mut self, view: &ClusterView) {
        let Some(leader) = view.leader.as_ref().map(|l| l.name.clone()) else { return };
        let wanted: Vec<String> = crate::core::cascade::streaming_from(&view.members, &leader, &self.cfg.name)
            .into_iter()
            .map(str::to_owned)
            .collect();
        let names = self.member_slot_names(view, &wanted);
        if self.member_slots_clean.as_ref() == Some(&names) {
            return;
        }
        if let Some((_, acted)) = self.keep_member_slots(&names.0, &names.1).await {
            self.member_slots_clean = (!acted).then_some(names);
        }
    }

    /// Slot names: those kept for the `wanted` members (none with use_slots off), and those of
    /// every other member this server knows of.
    fn member_slot_names(&self, view: &ClusterView, wanted: &[String]) -> (Vec<String>, Vec<String>) {
        let wanted = if self.dyn_config.use_slots { wanted.iter().map(|m| slot_name(m)).collect() } else { Vec::new() };
        let others = view
            .members
            .iter()
            .map(|m| m.name.as_str())
            .chain(self.memory.slot_members())
            .filter(|n| *n != self.cfg.name)
            .map(slot_name)
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        (wanted, others)
    }

    /// Makes the `wanted` slots and drops the inactive ones of `others` (`core::slots::kept`).
    /// Returns the slots listed before, and whether anything was done.
    async fn keep_member_slots(
        &mut self,
        wanted: &[String],
        others: &[String],
    ) -> Option<(Vec<crate::core::slots::Present>, bool)> {
        let slots = match self.pg.physical_slots().await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = format!("{e:#}"), "list slots");
                return None;
            }
        };
        let actions = crate::core::slots::kept(wanted, others, &slots);
        let acted = !actions.is_empty();
        for a in actions {
            let (what, result) = match &a {
                SlotAction::Create(name) => ("create", self.pg.create_slot(name).await),
                SlotAction::Drop(name) => ("drop", self.pg.drop_slot(name).await),
                SlotAction::Advance { .. } => continue,
            };
            let slot = a.slot();
            match result {
                Ok(()) if what == "drop" && !self.dyn_config.use_slots => {
                    tracing::info!(slot, "dropped a member's slot: use_slots is off")
                }
                Ok(()) => tracing::info!(action = what, slot, "member replication slot"),
                Err(e) => tracing::warn!(action = what, slot, error = format!("{e:#}"), "member replication slot"),
            }
        }
        Some((slots, acted))
    }

    async fn rewind(&mut self, read: Option<&Read>, pg: &PgView, leader: &str) -> anyhow::Result<()> {
        let src = self.upstream_of(read, leader).with_context(|| format!("no conn_url for {leader}"))?;
        match self.pg.rewind_source_ready(&src.host, src.port).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::info!(source = %leader, "waiting for the leader to finish promoting (its checkpoint on the new timeline) before pg_rewind");
                return Ok(());
            }
            Err(e) => {
                tracing::warn!(source = %leader, error = format!("{e:#}"), "cannot ask the leader whether it can be a pg_rewind source; will try again");
                return Ok(());
            }
        }
        self.record(Outcome::RewindStarted);
        self.announce(read, pg, "rewinding").await;
        if matches!(pg, PgView::Running(_)) {
            self.pg.stop(StopMode::Fast).await?;
        }
        let ctl = self.pg.controldata().await?;
        if !matches!(ctl.state, ClusterState::ShutDown | ClusterState::ShutDownInRecovery) {
            tracing::info!("crash recovery in single-user mode before pg_rewind");
            self.set_busy(Some("crash recovery"));
            self.pg.crash_recovery().await?;
            self.set_busy(Some("rewinding"));
        }
        tracing::info!(source = %leader, "running pg_rewind");
        match self.pg.rewind(&src.host, src.port).await {
            Ok(()) => {
                self.record(Outcome::Rewound { leader: leader.to_owned() });
                tracing::info!(source = %leader, "pg_rewind done");
                if let Err(e) = self.pg.nudge_wal(&src.host, src.port).await {
                    // Only an idle leader whose last record was a WAL switch needs it.
                    tracing::warn!(source = %leader, error = format!("{e:#}"), "could not make the leader write a WAL record after pg_rewind; if it stays idle, this replica waits for its next write to become consistent");
                }
                self.pg.write_config(&self.cluster_params(false), true, Some(&src), self.wal_log_hints())?;
                self.start().await;
                Ok(())
            }
            Err(e) => {
                self.record(Outcome::RewindFailed(e.kind));
                if self.memory.rewind_gave_up() {
                    tracing::error!(error = %e, "pg_rewind failed three times");
                } else {
                    tracing::warn!(error = %e, kind = ?e.kind, "pg_rewind failed; will try again");
                }
                Ok(())
            }
        }
    }

    /// Planned switchover, leader side: stop taking writes (a fast stop writes the shutdown
    /// checkpoint, and walsenders wait for connected replicas to confirm they have it), tell
    /// peers we are no longer primary, publish the shutdown checkpoint as the cluster's last
    /// position (`status.optime`, as Patroni does on a graceful release) so that the
    /// candidate promotes only once it has everything, then release the key.
    async fn step_down(&mut self, read: Option<&Read>) -> anyhow::Result<()> {
        self.pg.stop(StopMode::Fast).await?;
        self.lease.disarm(true);
        self.record(Outcome::SteppedDown);
        let (pg, _) = self.pg.observe(None).await;
        self.publish(read, &pg, None).await;
        if let PgView::Stopped(ctl) = &pg
            && ctl.state == ClusterState::ShutDown
        {
            let mut status = self.last_status.clone().unwrap_or_default();
            status.optime = ctl.checkpoint_lsn;
            self.dcs.write_status(&status).await.context("publish the shutdown checkpoint")?;
            self.last_status = Some(status);
            tracing::info!(checkpoint = ctl.checkpoint_lsn, "stopped for the switchover; releasing the leader key");
        }
        self.dcs.release().await?;
        Ok(())
    }
}
