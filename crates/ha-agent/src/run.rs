//! The HA loop: read etcd, observe PostgreSQL, decide (`core::decide`), act, publish, wait for
//! the next event (an etcd change, the `loop_wait` timer, the lease keeper, a postmaster exit,
//! or a signal).
//!
//! Next to it run three tasks: the lease keeper (`lease.rs`, renews and fences on its own),
//! the etcd watch (wakes the loop on cluster changes, so replicas react to the leader key's
//! deletion at once), and the HTTP server (`http.rs`).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use outrigger_etcd::{Etcd, Kv, WatchUpdate};
use outrigger_schema::{
    ClusterKey, ConfigValue, HistoryEntry, KeyKind, MemberRole, MemberValue, PATRONI_COMPAT_VERSION, PatroniInfo,
    StatusJson, StatusValue, XlogStatus,
};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::Config;
use crate::control::{Command, Reply, RestartRequest, Snapshot};
use crate::core::schedule::{format_rfc3339_ms, parse_rfc3339_ms};
use crate::core::{
    ClusterState, ClusterView, ConfigState, Decision, DynConfig, LeaderKey, Moment, Observed, PeerRef, PgView, Recent,
    RunningPg, Settings, WaitReason,
};
use crate::dcs::Dcs;
use crate::http::{self, ApiState};
use crate::lease::{Clock, LeaseHandle, LeaseKeeper};
use crate::metrics::Metrics;
use crate::pg::text::{Upstream, host_port_from_conn_url, parse_history_file, slot_name};
use crate::pg::{Extra, Postgres, StopMode};

/// The `reason` of the history row a leader writes before it promotes (see
/// `ClusterView::cluster_timeline_for`); replaced by the exact row right after.
const PROMOTING: &str = "ha-agent: promoting";
/// How long a member seen in etcd is still asked in a leader race after its key vanished.
const KNOWN_PEER_TTL: Duration = Duration::from_secs(600);
/// How long a replication slot is kept for a member that left (Patroni's member_slots_ttl).
const MEMBER_SLOTS_TTL: Duration = Duration::from_secs(1800);

fn wall_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// One etcd read, decoded.
#[derive(Clone)]
struct Read {
    view: ClusterView,
    history: Vec<HistoryEntry>,
    /// `history`'s mod_revision (0: absent), for compare-and-swap writes.
    history_rev: i64,
}

pub struct Agent {
    cfg: Config,
    settings: Settings,
    dcs: Dcs,
    pg: Postgres,
    pg_exits: mpsc::UnboundedReceiver<String>,
    clock: Clock,
    lease: LeaseHandle,
    metrics: Arc<Metrics>,
    api: Arc<ApiState>,
    recent: Recent,
    /// The member PostgreSQL is configured to stream from.
    upstream: Option<String>,
    dyn_config: DynConfig,
    last_logged: Option<String>,
    /// Lease and JSON of the member key as last written.
    last_member: Option<(i64, String)>,
    last_member_at: Option<Moment>,
    last_status: Option<StatusValue>,
    last_status_at: Option<Moment>,
    reported: HashSet<(String, i64)>,
    /// Members seen as non-leaders: name → (api_url, when).
    known: BTreeMap<String, (String, Moment)>,
    /// Members whose slots we manage: name → last seen.
    slot_members: BTreeMap<String, Moment>,
    pending_restart: bool,
    dcs_last_seen: Option<u64>,
    /// Shown as `state` while a long action runs.
    busy_state: Option<&'static str>,
    /// pg_rewind failures in a row that were not the source going away.
    rewind_failures: u32,
    /// Actions from the REST API.
    commands: mpsc::Receiver<Command>,
    /// Unix ms at the start of the current cycle.
    cycle_started_ms: u64,
    /// A restart scheduled through the REST API (`POST /restart` with `schedule`).
    scheduled_restart: Option<ScheduledRestart>,
    /// `POST /reload`: reload PostgreSQL in the next cycle even if nothing changed.
    force_reload: bool,
    /// Unix ms of a scheduled switchover in the `failover` key, to wake up on time.
    switchover_at_ms: Option<u64>,
}

/// A restart waiting for its time, as published in the member key (`scheduled_restart`).
#[derive(Debug, Clone)]
struct ScheduledRestart {
    req: RestartRequest,
    at_ms: u64,
    /// The postmaster's start time when it was scheduled: if PostgreSQL restarted meanwhile,
    /// the scheduled restart is cancelled (as Patroni does).
    postmaster_start_time: Option<String>,
}

impl ScheduledRestart {
    fn json(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        m.insert("schedule".into(), format_rfc3339_ms(self.at_ms).into());
        if let Some(t) = &self.postmaster_start_time {
            m.insert("postmaster_start_time".into(), t.clone().into());
        }
        if let Some(r) = &self.req.role {
            m.insert("role".into(), r.clone().into());
        }
        if let Some(v) = self.req.postgres_version {
            m.insert("postgres_version".into(), v.into());
        }
        if self.req.restart_pending {
            m.insert("restart_pending".into(), true.into());
        }
        serde_json::Value::Object(m)
    }
}

/// Patroni's texts for a second action while one runs.
fn busy_reply(cmd: Command, action: &'static str) {
    let (reply, answer) = match cmd {
        Command::Restart { reply, .. } => (reply, Reply::new(503, format!("{action} already in progress"))),
        // The scheduled restart is kept; it runs (or is cancelled) once the action is done.
        Command::CancelRestart { reply } => (reply, Reply::new(503, format!("{action} already in progress"))),
        Command::Reload { reply } => (reply, Reply::new(202, "reload scheduled")),
        Command::Reinitialize { force: true, reply, .. } if action == "reinitialize" => {
            (reply, Reply::new(200, "reinitialize started"))
        }
        Command::Reinitialize { reply, .. } => (reply, Reply::new(503, format!("{action} already in progress"))),
    };
    let _ = reply.send(answer);
}

/// Runs `work` (a long action) while answering REST actions that arrive meanwhile, so that
/// they get Patroni's "already in progress" instead of waiting for it to end.
async fn while_busy<T>(
    commands: &mut mpsc::Receiver<Command>,
    action: &'static str,
    work: impl std::future::Future<Output = T>,
) -> T {
    tokio::pin!(work);
    loop {
        tokio::select! {
            out = &mut work => return out,
            Some(cmd) = commands.recv() => busy_reply(cmd, action),
        }
    }
}

impl Agent {
    fn wal_log_hints(&self) -> bool {
        self.settings.use_pg_rewind.or(self.dyn_config.use_pg_rewind).unwrap_or(false)
    }

    // ---- reading ----

    async fn read(&mut self) -> Option<Read> {
        let (revision, kvs) = match self.dcs.snapshot().await {
            Ok(x) => x,
            Err(e) => {
                self.metrics.etcd_errors.with_label_values(&["read"]).inc();
                tracing::warn!(error = %e, "cannot read the cluster from etcd");
                return None;
            }
        };
        self.dcs_last_seen = Some(wall_ms() / 1000);
        let (view, problems) = ClusterView::decode(self.dcs.layout(), revision, &kvs);
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
            ConfigState::Valid(c) => self.dyn_config = c.clone(),
            // Garbage: keep the last good config. Absent: Patroni's defaults.
            ConfigState::Garbage => {}
            ConfigState::Absent => self.dyn_config = DynConfig::default(),
        }
        let (history, history_rev) = history_rows(self.dcs.layout(), &kvs);
        Some(Read { view, history, history_rev })
    }

    /// Remembers peers for races after their keys expired (`Recent::known_peers`).
    fn remember(&mut self, view: &ClusterView) {
        let now = self.clock.now();
        let leader = view.leader.as_ref().map(|l| l.name.as_str());
        for m in &view.members {
            if m.name == self.cfg.name {
                continue;
            }
            self.slot_members.insert(m.name.clone(), now);
            if Some(m.name.as_str()) == leader {
                self.known.remove(&m.name);
            } else if !m.api_url.is_empty() {
                self.known.insert(m.name.clone(), (m.api_url.clone(), now));
            }
        }
        self.known.retain(|_, (_, seen)| now.since(*seen) < KNOWN_PEER_TTL);
        self.recent.known_peers =
            self.known.iter().map(|(n, (u, _))| PeerRef { name: n.clone(), api_url: u.clone() }).collect();
    }

    fn decide(&self, read: Option<&Read>, pg: &PgView, peers: Option<&[crate::core::PeerProbe]>) -> Decision {
        crate::core::decide(&Observed {
            now: self.clock.now(),
            wall_ms: wall_ms(),
            settings: &self.settings,
            cluster: read.map(|r| &r.view),
            config: &self.dyn_config,
            lease: self.lease.view(),
            pg,
            peers,
            recent: &self.recent,
        })
    }

    // ---- one cycle ----

    async fn cycle(&mut self) {
        let started = std::time::Instant::now();
        self.cycle_started_ms = wall_ms();
        let mut read = self.read().await;
        if let Some(r) = &read {
            let view = r.view.clone();
            self.remember(&view);
        }
        let (mut pg, mut extra) = self.pg.observe(self.current_upstream(read.as_ref()).as_ref()).await;
        self.track(read.as_ref(), &pg);
        let mut d = self.decide(read.as_ref(), &pg, None);
        if let Decision::ProbePeers { peers } = &d {
            let answers = http::probe(peers, self.cfg.peer_timeout).await;
            // The answers may have taken a while: decide on fresh reads.
            read = self.read().await;
            (pg, extra) = self.pg.observe(self.current_upstream(read.as_ref()).as_ref()).await;
            d = self.decide(read.as_ref(), &pg, Some(&answers));
        }
        self.log(&d);
        self.metrics.decisions.with_label_values(&[d.kind()]).inc();
        if let Err(e) = self.act(&d, read.as_ref(), &pg).await {
            // Usually transient (a leader not accepting base backups yet, an etcd hiccup):
            // the next cycle decides again. What needs a human is logged as ERROR where known.
            tracing::warn!(decision = d.kind(), error = format!("{e:#}"), "action failed");
        }
        self.busy_state = None;
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
            self.track(read.as_ref(), &pg);
        }
        self.publish(read.as_ref(), &pg, extra.as_ref()).await;
        self.metrics.cycle_seconds.observe(started.elapsed().as_secs_f64());
        self.metrics.last_cycle.set(i64::try_from(wall_ms() / 1000).unwrap_or(0));
    }

    /// Keeps the lease keeper armed while PostgreSQL is a primary, and notes since when a
    /// leader's PostgreSQL has been down.
    fn track(&mut self, read: Option<&Read>, pg: &PgView) {
        if pg.writable() {
            self.lease.arm();
        } else if !matches!(pg, PgView::Starting { .. }) {
            self.lease.disarm();
        }
        let i_lead = read.and_then(|r| r.view.leader.as_ref()).is_some_and(|l| l.name == self.cfg.name);
        if i_lead && !matches!(pg, PgView::Running(_)) {
            self.recent.primary_down_since.get_or_insert(self.clock.now());
        } else {
            self.recent.primary_down_since = None;
        }
        match read.map(|r| r.view.leader.is_none()) {
            Some(true) => {
                self.recent.unlocked_since.get_or_insert(self.clock.now());
            }
            Some(false) => self.recent.unlocked_since = None,
            // etcd unreadable: keep what we knew.
            None => {}
        }
        if matches!(pg, PgView::Running(_)) {
            self.recent.stepped_down_at = None;
        }
        self.switchover_at_ms = read
            .and_then(|r| r.view.failover.as_ref())
            .and_then(|f| f.scheduled_at.as_deref())
            .and_then(parse_rfc3339_ms);
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

    // ---- acting ----

    fn upstream_of(&self, read: Option<&Read>, member: &str) -> Option<Upstream> {
        let m = read?.view.member(member)?;
        let (host, port) = host_port_from_conn_url(&m.conn_url)?;
        Some(Upstream { member: member.to_owned(), host, port })
    }

    /// Publishes `state` (member key and REST status) before a long action, so that the
    /// leader sees this member (and creates its slot) while the action runs.
    async fn announce(&mut self, read: Option<&Read>, pg: &PgView, state: &'static str) {
        self.busy_state = Some(state);
        self.publish(read, pg, None).await;
    }

    /// The member we stream from, with its address from the latest read (`None` without one).
    fn current_upstream(&self, read: Option<&Read>) -> Option<Upstream> {
        self.upstream.as_deref().and_then(|u| self.upstream_of(read, u))
    }

    fn failed_start(&mut self, e: &anyhow::Error) {
        self.recent.start_failed_at = Some(self.clock.now());
        tracing::error!(error = format!("{e:#}"), "PostgreSQL did not start");
    }

    async fn act(&mut self, d: &Decision, read: Option<&Read>, pg: &PgView) -> anyhow::Result<()> {
        let lease_id = self.lease.view().id;
        match d {
            Decision::Fence { .. } | Decision::Demote { .. } => {
                self.pg.stop(StopMode::Immediate).await?;
                self.lease.disarm();
            }
            Decision::RaceInitialize => self.bootstrap().await?,
            Decision::PublishInitialize { sysid } => self.dcs.set_initialize(*sysid).await?,
            Decision::Clone { from } => {
                let src = self.upstream_of(read, from).with_context(|| format!("no conn_url for {from}"))?;
                self.announce(read, pg, "creating replica").await;
                self.pg.basebackup(&src.host, src.port).await?;
                let leader = read.and_then(|r| r.view.leader.as_ref()).map(|l| l.name.clone());
                let up = leader.as_deref().and_then(|l| self.upstream_of(read, l));
                self.pg.write_config(&self.dyn_config.parameters, true, up.as_ref(), self.wal_log_hints())?;
                self.upstream = leader;
                self.recent = Recent { known_peers: std::mem::take(&mut self.recent.known_peers), ..Recent::default() };
                if let Err(e) = self.pg.start().await {
                    self.failed_start(&e);
                }
            }
            // Handled in `cycle`: the answers are fed back into `decide`.
            Decision::ProbePeers { .. } => {}
            Decision::AcquireLeader => {
                let lease = lease_id.context("no lease to take the leader key on")?;
                if !self.dcs.acquire(lease).await? {
                    tracing::info!("lost the leader race");
                    return Ok(());
                }
                tracing::info!("took the leader key");
                if let Some(f) = read.and_then(|r| r.view.failover.as_ref()) {
                    let _ = self.dcs.clear_failover(f.mod_revision).await;
                }
                match pg {
                    PgView::Running(r) if !r.primary => self.promote(read, r).await?,
                    PgView::Running(_) => self.lease.arm(),
                    _ => {}
                }
            }
            Decision::RetakeLeader => {
                let lease = lease_id.context("no lease")?;
                if !self.dcs.retake(lease).await? {
                    tracing::info!("the leader key changed before it could be retaken");
                }
            }
            Decision::Promote => {
                if let PgView::Running(r) = pg {
                    self.promote(read, r).await?;
                }
            }
            Decision::StartPrimary => {
                // Arm first: from the moment it starts, this primary is fenced with the lease.
                self.lease.arm();
                self.upstream = None;
                self.pg.write_config(&self.dyn_config.parameters, false, None, self.wal_log_hints())?;
                self.announce(read, pg, "starting").await;
                if let Err(e) = self.pg.start().await {
                    self.failed_start(&e);
                } else {
                    self.recent.start_failed_at = None;
                }
            }
            Decision::ReleaseLeader { .. } => {
                // Paused, PostgreSQL is left as it is (Patroni releases without stopping).
                if pg.writable() && !self.dyn_config.pause {
                    self.pg.stop(StopMode::Immediate).await?;
                    self.lease.disarm();
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
            Decision::Follow { leader } => {
                let up = leader.as_deref().and_then(|l| self.upstream_of(read, l));
                if leader.is_some() && up.is_none() {
                    anyhow::bail!("no conn_url for the leader");
                }
                let changed =
                    self.pg.write_config(&self.dyn_config.parameters, true, up.as_ref(), self.wal_log_hints())?;
                self.upstream = leader.clone();
                match pg {
                    PgView::Stopped(_) => {
                        self.announce(read, pg, "starting").await;
                        match self.pg.start().await {
                            Ok(()) => self.recent.start_failed_at = None,
                            Err(e) => self.failed_start(&e),
                        }
                    }
                    PgView::Running(_) if changed => {
                        self.pending_restart = !self.pg.reload().await?.is_empty();
                    }
                    _ => {}
                }
            }
            Decision::Replicate { leader } => {
                let up = self.upstream_of(read, leader);
                if self.pg.write_config(&self.dyn_config.parameters, true, up.as_ref(), self.wal_log_hints())? {
                    self.pending_restart = !self.pg.reload().await?.is_empty();
                }
            }
            Decision::Rewind { leader } => self.rewind(read, pg, leader).await?,
            Decision::Reinit { .. } => {
                self.pg.stop(StopMode::Immediate).await?;
                self.pg.remove_data()?;
                self.upstream = None;
                self.recent = Recent { known_peers: std::mem::take(&mut self.recent.known_peers), ..Recent::default() };
            }
            Decision::StayStopped { .. } => {
                self.pg.stop(StopMode::Fast).await?;
                self.recent.diverged = true;
            }
            Decision::Wait { .. } => {}
        }
        Ok(())
    }

    /// Bootstrap through the `initialize` race: initdb, start as primary, publish.
    async fn bootstrap(&mut self) -> anyhow::Result<()> {
        if !self.dcs.race_initialize().await? {
            tracing::info!("another member won the bootstrap race");
            return Ok(());
        }
        let lease = match self.lease.view().id {
            Some(l) if self.dcs.acquire(l).await.unwrap_or(false) => l,
            _ => {
                let _ = self.dcs.cancel_initialize().await;
                anyhow::bail!("won the bootstrap race but could not take the leader key");
            }
        };
        tracing::info!(lease = format!("{lease:x}"), "won the bootstrap race; running initdb");
        self.busy_state = Some("initializing new cluster");
        self.lease.arm();
        match self.bootstrap_steps().await {
            Ok(sysid) => {
                self.dcs.set_initialize(sysid).await?;
                let mut dcs = self.cfg.bootstrap_dcs.clone();
                if let Some(obj) = dcs.as_object_mut() {
                    let secs = |d: Duration| serde_json::Value::from(d.as_millis().div_ceil(1000) as u64);
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
                self.lease.disarm();
                let _ = self.pg.remove_data();
                let _ = self.dcs.release().await;
                let _ = self.dcs.cancel_initialize().await;
                Err(e.context("bootstrap"))
            }
        }
    }

    async fn bootstrap_steps(&mut self) -> anyhow::Result<u64> {
        self.pg.initdb(&self.cfg.initdb).await?;
        let params = serde_json::from_value::<ConfigValue>(self.cfg.bootstrap_dcs.clone())
            .map(|c| c.parameters())
            .unwrap_or_default();
        let hints = self.settings.use_pg_rewind.unwrap_or(false)
            || serde_json::from_value::<ConfigValue>(self.cfg.bootstrap_dcs.clone())
                .ok()
                .and_then(|c| c.use_pg_rewind())
                .unwrap_or(false);
        self.pg.write_config(&params, false, None, hints)?;
        self.upstream = None;
        self.pg.start().await?;
        self.pg.create_replication_user().await?;
        Ok(self.pg.controldata().await?.sysid)
    }

    /// Promotion: announce the new timeline in `history`, promote, then publish the exact
    /// switch point and checkpoint (pg_rewind on others reads our pg_control's timeline).
    async fn promote(&mut self, read: Option<&Read>, r: &RunningPg) -> anyhow::Result<()> {
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
        self.lease.arm();
        self.pg.promote().await?;
        self.upstream = None;
        tracing::info!("promoted");
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
        match self.pg.write_config(&self.dyn_config.parameters, false, None, self.wal_log_hints()) {
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
        let status = StatusValue {
            optime: r.wal_position,
            slots: serde_json::Map::new(),
            retain_slots: Some(
                read.view.members.iter().filter(|m| m.name != self.cfg.name).map(|m| slot_name(&m.name)).collect(),
            ),
            extra: serde_json::Map::new(),
        };
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

    /// One physical slot per other member; slots of members gone for `MEMBER_SLOTS_TTL` are
    /// dropped. Slots we never saw a member for are left alone.
    async fn manage_slots(&mut self, view: &ClusterView) {
        let slots = match self.pg.physical_slots().await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = format!("{e:#}"), "list slots");
                return;
            }
        };
        // Members seen recently, former leaders included: a member rejoining after its key
        // expired needs its slot before it can stream and publish its key again.
        let wanted: Vec<String> = view
            .members
            .iter()
            .map(|m| m.name.clone())
            .chain(self.slot_members.keys().cloned())
            .filter(|n| *n != self.cfg.name)
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        for member in &wanted {
            let name = slot_name(member);
            if !slots.iter().any(|(s, _)| *s == name) {
                match self.pg.create_slot(&name).await {
                    Ok(()) => tracing::info!(slot = %name, "created replication slot"),
                    Err(e) => tracing::warn!(slot = %name, error = format!("{e:#}"), "create replication slot"),
                }
            }
        }
        let now = self.clock.now();
        let present: HashSet<&str> = view.members.iter().map(|m| m.name.as_str()).collect();
        let gone: Vec<String> = self
            .slot_members
            .iter()
            .filter(|(n, seen)| !present.contains(n.as_str()) && now.since(**seen) >= MEMBER_SLOTS_TTL)
            .map(|(n, _)| n.clone())
            .collect();
        for member in gone {
            let name = slot_name(&member);
            if slots.iter().any(|(s, active)| *s == name && !active) {
                match self.pg.drop_slot(&name).await {
                    Ok(()) => tracing::info!(slot = %name, "dropped the slot of a member gone for 30 minutes"),
                    Err(e) => tracing::warn!(slot = %name, error = format!("{e:#}"), "drop replication slot"),
                }
            }
            self.slot_members.remove(&member);
        }
    }

    async fn rewind(&mut self, read: Option<&Read>, pg: &PgView, leader: &str) -> anyhow::Result<()> {
        self.recent.diverged = true;
        let src = self.upstream_of(read, leader).with_context(|| format!("no conn_url for {leader}"))?;
        self.announce(read, pg, "rewinding").await;
        if matches!(pg, PgView::Running(_)) {
            self.pg.stop(StopMode::Fast).await?;
        }
        let ctl = self.pg.controldata().await?;
        if !matches!(ctl.state, ClusterState::ShutDown | ClusterState::ShutDownInRecovery) {
            tracing::info!("crash recovery in single-user mode before pg_rewind");
            self.pg.crash_recovery().await?;
        }
        tracing::info!(source = %leader, "running pg_rewind");
        match self.pg.rewind(&src.host, src.port).await {
            Ok(()) => {
                self.recent.diverged = false;
                self.recent.rewind_failed = false;
                self.rewind_failures = 0;
                tracing::info!(source = %leader, "pg_rewind done");
                self.pg.write_config(&self.dyn_config.parameters, true, Some(&src), self.wal_log_hints())?;
                self.upstream = Some(leader.to_owned());
                if let Err(e) = self.pg.start().await {
                    self.failed_start(&e);
                }
                Ok(())
            }
            Err(e) => {
                let msg = format!("{e:#}");
                let source_gone =
                    ["could not connect", "connection to server", "terminating connection", "could not fetch"]
                        .iter()
                        .any(|m| msg.contains(m));
                if !source_gone {
                    self.rewind_failures += 1;
                }
                // Only repeated failures are a failed rewind: the source may have been fenced
                // or restarted under it, which the next attempt (against whoever leads) survives.
                if self.rewind_failures >= 3 {
                    self.recent.rewind_failed = true;
                    tracing::error!(error = msg, "pg_rewind failed three times");
                } else {
                    tracing::warn!(error = msg, "pg_rewind failed; will try again");
                }
                Ok(())
            }
        }
    }

    // ---- publishing ----

    async fn publish(&mut self, read: Option<&Read>, pg: &PgView, extra: Option<&Extra>) {
        let (state, role, timeline, position) = match pg {
            PgView::Running(r) => (
                "running",
                if r.primary { MemberRole::Primary } else { MemberRole::Replica },
                Some(r.timeline),
                Some(r.wal_position),
            ),
            PgView::Starting { .. } => ("starting", MemberRole::Replica, None, None),
            PgView::Stopped(c) => ("stopped", MemberRole::Replica, Some(c.timeline), None),
            PgView::NoData => ("stopped", MemberRole::Uninitialized, None, None),
            PgView::Unusable { .. } => ("stopped", MemberRole::Uninitialized, None, None),
        };
        let state = self.busy_state.unwrap_or(state);
        let replica = matches!(pg, PgView::Running(r) if !r.primary);
        let tags = self.settings.tags.to_json();
        let member = MemberValue {
            conn_url: self.cfg.conn_url(),
            api_url: self.cfg.api_url(),
            state: state.to_owned(),
            role: role.clone(),
            version: PATRONI_COMPAT_VERSION.to_owned(),
            proxy_url: None,
            xlog_location: position,
            receive_lsn: if replica { extra.and_then(|e| e.receive_lsn) } else { None },
            replay_lsn: if replica { extra.and_then(|e| e.replay_lsn) } else { None },
            replication_state: if replica {
                Some(if extra.is_some_and(|e| e.streaming) { "streaming" } else { "in archive recovery" }.to_owned())
            } else {
                None
            },
            timeline,
            tags: tags.clone(),
            pending_restart: self.pending_restart.then_some(true),
            pending_restart_reason: None,
            scheduled_restart: self.scheduled_restart.as_ref().map(ScheduledRestart::json),
            checkpoint_after_promote: None,
            pause: self.dyn_config.pause.then_some(true),
            extra: serde_json::Map::new(),
        };
        if let (Some(lease), Some(_)) = (self.lease.view().id, read) {
            let json = serde_json::to_string(&member).unwrap_or_default();
            // Rewritten when it changed, and at least once per ttl: a late copy of an older
            // write (delivered by a member that hung) must not stay.
            let due = self.last_member_at.is_none_or(|t| self.clock.now().since(t) >= self.settings.timings.ttl);
            if due || self.last_member.as_ref() != Some(&(lease, json.clone())) {
                match self.dcs.touch_member(&member, lease).await {
                    Ok(()) => {
                        self.last_member = Some((lease, json));
                        self.last_member_at = Some(self.clock.now());
                    }
                    Err(e) => {
                        self.metrics.etcd_errors.with_label_values(&["write"]).inc();
                        tracing::debug!(error = %e, "write member key");
                    }
                }
            }
        }
        let unlocked = read.map(|r| r.view.leader.is_none());
        let xlog = match pg {
            PgView::Running(r) if r.primary => {
                Some(XlogStatus { location: Some(r.wal_position), ..XlogStatus::default() })
            }
            PgView::Running(_) => Some(XlogStatus {
                received_location: extra.and_then(|e| e.receive_lsn),
                replayed_location: extra.and_then(|e| e.replay_lsn),
                replayed_timestamp: Some(serde_json::Value::Null),
                paused: Some(false),
                ..XlogStatus::default()
            }),
            _ => None,
        };
        let status = StatusJson {
            state: state.to_owned(),
            postmaster_start_time: extra.and_then(|e| e.postmaster_start_time.clone()),
            role,
            server_version: extra.map(|e| e.server_version),
            xlog,
            timeline,
            replication_state: member.replication_state.clone(),
            cluster_unlocked: unlocked,
            dcs_last_seen: self.dcs_last_seen,
            tags,
            database_system_identifier: pg.sysid().map(|s| s.to_string()),
            pending_restart: self.pending_restart.then_some(true),
            watchdog_failed: None,
            patroni: Some(PatroniInfo {
                version: PATRONI_COMPAT_VERSION.to_owned(),
                scope: self.dcs.layout().scope().to_owned(),
                name: Some(self.cfg.name.clone()),
            }),
            extra: {
                // Patroni's status JSON carries these when set; the REST API serves it as is.
                let mut m = serde_json::Map::new();
                if let Some(r) = &member.scheduled_restart {
                    m.insert("scheduled_restart".into(), r.clone());
                }
                if self.dyn_config.pause {
                    m.insert("pause".into(), serde_json::Value::Bool(true));
                }
                m
            },
        };
        let view = read.map(|r| &r.view);
        self.api.publish(
            Snapshot {
                status: Some(status),
                leader_until: (pg.writable()
                    && view.and_then(|v| v.leader.as_ref()).is_some_and(|l| l.name == self.cfg.name))
                .then(|| self.lease.view())
                .filter(|l| l.id.is_some())
                .map(|l| self.clock.instant(l.fence_at(&self.settings.timings)).into()),
                paused: self.dyn_config.pause,
                sync_standby: false,
                leader_optime: view.and_then(|v| v.status_optime),
                maximum_lag_on_failover: self.dyn_config.maximum_lag_on_failover,
                cycle_started_ms: self.cycle_started_ms,
            },
            wall_ms() / 1000,
        );
    }

    // ---- REST actions ----

    /// Runs an action the REST API asked for and answers it.
    async fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Restart { req, reply } => {
                let answer = if let Some(at_ms) = req.schedule_ms {
                    self.schedule_restart(req, at_ms).await
                } else {
                    self.restart(&req).await
                };
                let _ = reply.send(answer);
            }
            Command::CancelRestart { reply } => {
                let answer = if self.scheduled_restart.take().is_some() {
                    tracing::info!("scheduled restart deleted");
                    self.publish_now().await;
                    Reply::new(200, "scheduled restart deleted")
                } else {
                    Reply::new(404, "no restarts are scheduled")
                };
                let _ = reply.send(answer);
            }
            Command::Reload { reply } => {
                // Like Patroni's SIGHUP: answered at once, done by the loop right after.
                self.force_reload = true;
                let _ = reply.send(Reply::new(202, "reload scheduled"));
            }
            Command::Reinitialize { force: _, from_leader, reply } => self.reinitialize(from_leader, reply).await,
        }
    }

    /// Observes and publishes now (after an action changed what the member key says).
    async fn publish_now(&mut self) {
        let read = self.read().await;
        let (pg, extra) = self.pg.observe(self.current_upstream(read.as_ref()).as_ref()).await;
        self.publish(read.as_ref(), &pg, extra.as_ref()).await;
    }

    /// `POST /restart` with a schedule: one at a time (Patroni's 409 otherwise).
    async fn schedule_restart(&mut self, mut req: RestartRequest, at_ms: u64) -> Reply {
        if self.dyn_config.pause {
            return Reply::new(500, "Can't schedule restart in the paused state");
        }
        if self.scheduled_restart.is_some() {
            return Reply::new(409, "Another restart is already scheduled");
        }
        req.schedule_ms = None;
        let (_, extra) = self.pg.observe(None).await;
        self.scheduled_restart =
            Some(ScheduledRestart { req, at_ms, postmaster_start_time: extra.and_then(|e| e.postmaster_start_time) });
        tracing::info!(at = format_rfc3339_ms(at_ms), "restart scheduled");
        self.publish_now().await;
        Reply::new(202, "Restart scheduled")
    }

    /// Runs the scheduled restart when due (dropped when stale or when PostgreSQL restarted
    /// meanwhile, as Patroni does). Returns the outcome when it ran.
    async fn run_scheduled_restart(&mut self, pg: &PgView, extra: Option<&crate::pg::Extra>) -> Option<Reply> {
        let sr = self.scheduled_restart.as_ref()?;
        let now = wall_ms();
        if sr.at_ms > now {
            return None;
        }
        let sr = self.scheduled_restart.take()?;
        let started = extra.and_then(|e| e.postmaster_start_time.clone());
        if matches!(pg, PgView::Running(_)) && sr.postmaster_start_time.is_some() && started != sr.postmaster_start_time
        {
            tracing::info!("cancelling the scheduled restart: PostgreSQL restarted meanwhile");
            return None;
        }
        let stale_ms = u64::try_from((self.settings.timings.loop_wait * 3 / 2).as_millis()).unwrap_or(u64::MAX);
        if now - sr.at_ms > stale_ms {
            tracing::warn!(at = format_rfc3339_ms(sr.at_ms), "dropping a stale scheduled restart");
            return None;
        }
        Some(self.restart(&sr.req).await)
    }

    /// When the loop must wake up for something scheduled (switchover or restart) before its
    /// next regular cycle.
    fn scheduled_wake(&self) -> Option<tokio::time::Instant> {
        let at =
            [self.switchover_at_ms, self.scheduled_restart.as_ref().map(|r| r.at_ms)].into_iter().flatten().min()?;
        let now = wall_ms();
        Some(tokio::time::Instant::now() + Duration::from_millis(at.saturating_sub(now)))
    }

    /// `POST /restart` now: checks Patroni's filters, then a fast stop and a start with the
    /// same configuration. The leader keeps its key throughout (the lease keeper renews it on
    /// its own task), so nobody fails over; if PostgreSQL does not come back, the next cycle
    /// releases the key as for any failed start.
    async fn restart(&mut self, req: &RestartRequest) -> Reply {
        let (pg, extra) = self.pg.observe(self.upstream_ref().as_ref()).await;
        let role = match &pg {
            PgView::Running(r) if r.primary => "primary",
            _ => "replica",
        };
        let version = extra.as_ref().map_or(0, |e| e.server_version);
        let pending = self.pending_restart;
        let why_not = if req.role.as_deref().is_some_and(|r| r != role) {
            Some("host role mismatch")
        } else if req.postgres_version.is_some_and(|v| v <= version) {
            Some("postgres version mismatch")
        } else if req.restart_pending && !pending {
            Some("pending restart flag is not set")
        } else {
            None
        };
        if let Some(why) = why_not {
            tracing::info!(reason = why, "not proceeding with the restart");
            return Reply::new(503, "restart conditions are not satisfied");
        }
        if matches!(pg, PgView::Starting { .. }) {
            return Reply::new(503, "postgres is still starting");
        }
        tracing::info!(role, "restarting PostgreSQL (asked through the REST API)");
        self.busy_state = Some("restarting");
        self.publish(None, &pg, extra.as_ref()).await;
        let limit = req.timeout.unwrap_or(self.dyn_config.primary_start_timeout);
        let Self { pg: postgres, commands, .. } = self;
        let done = while_busy(commands, "restart", async {
            postgres.stop(StopMode::Fast).await?;
            match tokio::time::timeout(limit, postgres.start()).await {
                Ok(r) => r.map(|()| true),
                Err(_) => Ok(false),
            }
        })
        .await;
        self.busy_state = None;
        let answer = match done {
            Ok(true) => {
                self.recent.start_failed_at = None;
                if let Ok(p) = self.pg.pending_restart().await {
                    self.pending_restart = !p.is_empty();
                }
                Reply::new(200, "restarted successfully")
            }
            Ok(false) => Reply::new(503, "postgres is still starting"),
            Err(e) => {
                self.failed_start(&e);
                Reply::new(503, "restart failed")
            }
        };
        self.publish_now().await;
        answer
    }

    fn upstream_ref(&self) -> Option<Upstream> {
        // Without a fresh read the address is unknown; the name is what `observe` compares.
        self.upstream.as_ref().map(|m| Upstream { member: m.clone(), host: String::new(), port: 0 })
    }

    /// `POST /reload` (and a forced reload): write the configuration for our current role
    /// from the dynamic config in force, then reload PostgreSQL.
    async fn reload_now(&mut self, read: Option<&Read>, pg: &PgView) {
        let replica = matches!(pg, PgView::Running(r) if !r.primary);
        let up = if replica { self.current_upstream(read) } else { None };
        let r = async {
            self.pg.write_config(&self.dyn_config.parameters, replica, up.as_ref(), self.wal_log_hints())?;
            self.pg.reload().await
        }
        .await;
        match r {
            Ok(pending) => {
                tracing::info!(pending_restart = pending.join(","), "PostgreSQL reloaded");
                self.pending_restart = !pending.is_empty();
            }
            Err(e) => tracing::warn!(error = format!("{e:#}"), "reload"),
        }
    }

    /// `POST /reinitialize`: replicas only. Answers at once, then stops PostgreSQL, removes
    /// the data directory and clones again from the leader (or, unless `from_leader`, from a
    /// running member tagged `clonefrom`), and starts as a replica of the leader.
    async fn reinitialize(&mut self, from_leader: bool, reply: tokio::sync::oneshot::Sender<Reply>) {
        let Some(read) = self.read().await else {
            let _ = reply.send(Reply::new(503, "DCS is not accessible"));
            return;
        };
        let Some(leader) = read.view.leader.as_ref().map(|l| l.name.clone()) else {
            let _ = reply.send(Reply::new(503, "Cluster has no leader, can not reinitialize"));
            return;
        };
        if leader == self.cfg.name {
            let _ = reply.send(Reply::new(503, "I am the leader, can not reinitialize"));
            return;
        }
        let me = self.cfg.name.as_str();
        let source = read
            .view
            .members
            .iter()
            .find(|m| !from_leader && m.tags.clonefrom && m.running && m.name != me && m.name != leader)
            .map_or(leader.clone(), |m| m.name.clone());
        let (Some(src), Some(up)) = (self.upstream_of(Some(&read), &source), self.upstream_of(Some(&read), &leader))
        else {
            let _ = reply.send(Reply::new(503, format!("no conn_url for {source}")));
            return;
        };
        let _ = reply.send(Reply::new(200, "reinitialize started"));
        tracing::info!(source = %source, "reinitializing (asked through the REST API)");
        let (pg, _) = self.pg.observe(None).await;
        self.announce(Some(&read), &pg, "creating replica").await;
        let params = self.dyn_config.parameters.clone();
        let hints = self.wal_log_hints();
        let Self { pg: postgres, commands, .. } = self;
        let r = while_busy(commands, "reinitialize", async {
            postgres.stop(StopMode::Immediate).await?;
            postgres.remove_data()?;
            postgres.basebackup(&src.host, src.port).await?;
            postgres.write_config(&params, true, Some(&up), hints)?;
            postgres.start().await
        })
        .await;
        self.busy_state = None;
        self.upstream = Some(leader);
        self.recent = Recent { known_peers: std::mem::take(&mut self.recent.known_peers), ..Recent::default() };
        self.rewind_failures = 0;
        match r {
            Ok(()) => tracing::info!(source = %source, "reinitialized"),
            Err(e) => {
                tracing::error!(error = format!("{e:#}"), "reinitialize failed");
                self.recent.start_failed_at = Some(self.clock.now());
            }
        }
        self.publish_now().await;
    }

    /// Planned switchover, leader side: stop taking writes (a fast stop writes the shutdown
    /// checkpoint, and walsenders wait for connected replicas to confirm they have it), tell
    /// peers we are no longer primary, publish the shutdown checkpoint as the cluster's last
    /// position (`status.optime`, as Patroni does on a graceful release) so that the
    /// candidate promotes only once it has everything, then release the key.
    async fn step_down(&mut self, read: Option<&Read>) -> anyhow::Result<()> {
        self.pg.stop(StopMode::Fast).await?;
        self.lease.disarm();
        self.upstream = None;
        self.recent.stepped_down_at = Some(self.clock.now());
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

    // ---- shutdown ----

    /// Like Patroni: stop PostgreSQL (fast, so a primary's replicas get everything), give up
    /// the leader key, and revoke the lease (our member key goes with it).
    async fn shutdown(&mut self) {
        if self.dyn_config.pause {
            // Maintenance mode: PostgreSQL keeps running, and the leader key stays until our
            // lease expires (Patroni keeps both).
            tracing::info!("paused: leaving PostgreSQL running and the leader key in place");
            self.lease.disarm();
            return;
        }
        tracing::info!("stopping PostgreSQL and leaving the cluster");
        if let Err(e) = self.pg.stop(StopMode::Fast).await {
            tracing::warn!(error = format!("{e:#}"), "stop PostgreSQL");
        }
        self.lease.disarm();
        let _ = self.dcs.release().await;
        if let Some(lease) = self.lease.view().id {
            let _ = self.dcs.revoke(lease).await;
        }
    }
}

/// `history` rows as written (with reasons and times) and the key's mod_revision, for
/// rewriting them with compare-and-swap.
fn history_rows(layout: &outrigger_schema::KeyLayout, kvs: &[Kv]) -> (Vec<HistoryEntry>, i64) {
    let Some(kv) = kvs.iter().find(|kv| layout.classify(&kv.key) == Some(KeyKind::Fixed(ClusterKey::History))) else {
        return (Vec::new(), 0);
    };
    (HistoryEntry::decode_list(&kv.value).unwrap_or_default(), kv.mod_revision)
}

/// Wakes the HA loop when a key that matters changes (anything but our own member key and
/// `status`, which we write ourselves).
async fn watch(
    etcd: Etcd,
    layout: outrigger_schema::KeyLayout,
    me: String,
    wake: Arc<Notify>,
    stop: CancellationToken,
) {
    let prefix = layout.prefix();
    let own = layout.member(&me).unwrap_or_default();
    let status = layout.key(ClusterKey::Status);
    let revision = loop {
        match etcd.get_prefix(&prefix).await {
            Ok(s) => break s.revision,
            Err(_) => {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
        }
    };
    let mut w = etcd.watch_prefix(&prefix, revision);
    loop {
        let next = tokio::select! {
            () = stop.cancelled() => return,
            n = w.next() => n,
        };
        match next {
            Ok(WatchUpdate::Changes { changes, .. }) => {
                if changes.iter().any(|c| c.key() != own && c.key() != status) {
                    wake.notify_one();
                }
            }
            Ok(WatchUpdate::Resync(_)) => wake.notify_one(),
            // The watch reconnects by itself on the next call, after a short backoff.
            Err(e) => tracing::debug!(error = %e, "etcd watch interrupted"),
        }
    }
}

/// Runs the agent until `shutdown` is cancelled.
pub async fn run(cfg: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let span = tracing::info_span!("ha", cluster = %cfg.layout.scope(), member = %cfg.name);
    run_inner(cfg, shutdown).instrument(span).await
}

async fn run_inner(cfg: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new(cfg.layout.scope(), &cfg.name));
    let etcd = Etcd::connect(&cfg.etcd).await.context("connect to etcd")?;
    let hedged = crate::hedge::PerEndpoint::connect(&cfg.etcd).await.context("connect to etcd")?;
    let clock = Clock::new();
    let lease = LeaseHandle::default();
    let (exit_tx, pg_exits) = mpsc::unbounded_channel();
    let pg = Postgres::new(cfg.postgresql.clone(), &cfg.name, exit_tx)?;

    let listener = tokio::net::TcpListener::bind(cfg.restapi_listen)
        .await
        .with_context(|| format!("listen on {} (restapi.listen)", cfg.restapi_listen))?;
    let server_tls = match &cfg.restapi.tls {
        Some(t) => {
            http::probe::set_client_tls(http::tls::client_config(t).context("restapi TLS client settings")?);
            Some(http::tls::server_config(t).context("restapi TLS settings")?)
        }
        None => None,
    };
    let (commands_tx, commands) = mpsc::channel(16);
    let api_settings = http::ApiSettings {
        scope: cfg.layout.scope().to_owned(),
        name: cfg.name.clone(),
        ttl: cfg.timings.ttl,
        loop_wait: cfg.timings.loop_wait,
        peer_timeout: cfg.peer_timeout,
        access: cfg.restapi.access.clone(),
        command_timeout: cfg.restapi.action_timeout,
    };
    let store: Arc<dyn http::store::Store> = Arc::new(etcd.clone());
    let api =
        Arc::new(ApiState::with_layout(api_settings, metrics.clone(), commands_tx, Some(store), cfg.layout.clone()));
    let tasks = CancellationToken::new();
    http::server::spawn_thread(listener, cfg.restapi.limits, server_tls, api.clone(), tasks.clone())
        .context("start the REST API thread")?;
    let keeper = LeaseKeeper {
        etcd: hedged.clone(),
        timings: cfg.timings,
        clock,
        data_dir: cfg.postgresql.data_dir.clone(),
        handle: lease.clone(),
        metrics: metrics.clone(),
    };
    tokio::spawn(keeper.run(tasks.clone()).in_current_span());
    let wake = Arc::new(Notify::new());
    tokio::spawn(
        watch(etcd.clone(), cfg.layout.clone(), cfg.name.clone(), wake.clone(), tasks.clone()).in_current_span(),
    );

    let settings = Settings {
        name: cfg.name.clone(),
        timings: cfg.timings,
        tags: cfg.tags.clone(),
        use_pg_rewind: cfg.postgresql.use_pg_rewind,
        remove_data_directory_on_rewind_failure: cfg.postgresql.remove_data_directory_on_rewind_failure,
        remove_data_directory_on_diverged_timelines: cfg.postgresql.remove_data_directory_on_diverged_timelines,
    };
    let upstream = pg.configured_upstream();
    let mut agent = Agent {
        dcs: Dcs::new(hedged, cfg.layout.clone(), &cfg.name),
        settings,
        pg,
        pg_exits,
        clock,
        lease: lease.clone(),
        metrics: metrics.clone(),
        api: api.clone(),
        recent: Recent::default(),
        upstream,
        dyn_config: DynConfig::default(),
        last_logged: None,
        last_member: None,
        last_member_at: None,
        last_status: None,
        last_status_at: None,
        reported: HashSet::new(),
        scheduled_restart: None,
        force_reload: false,
        switchover_at_ms: None,
        known: BTreeMap::new(),
        slot_members: BTreeMap::new(),
        pending_restart: false,
        dcs_last_seen: None,
        busy_state: None,
        rewind_failures: 0,
        commands,
        cycle_started_ms: 0,
        cfg,
    };
    // Give the keeper its first grant before deciding anything: an agent restarted under a
    // running primary must not fence it merely because its new lease is a few ms away. If no
    // lease comes within retry_timeout, a primary found here is fenced (armed below), as it
    // must be: nothing vouches for it.
    let first_lease = async {
        while lease.view().id.is_none() {
            lease.loop_wake.notified().await;
        }
    };
    let _ = tokio::time::timeout(agent.cfg.timings.retry_timeout, first_lease).await;
    if agent.pg.observe(None).await.0.writable() {
        lease.arm();
    }
    outrigger_daemon::systemd::ready();
    let loop_wait = agent.cfg.timings.loop_wait;
    let liveness = agent.cfg.timings.ttl;
    let m = metrics.clone();
    outrigger_daemon::systemd::spawn_watchdog(tasks.clone(), move || {
        let last = m.last_cycle.get();
        (wall_ms() / 1000).saturating_sub(u64::try_from(last).unwrap_or(0)) <= liveness.as_secs().max(2) * 2
    });
    tracing::info!(version = env!("CARGO_PKG_VERSION"), "ha-agent started");
    loop {
        let started = tokio::time::Instant::now();
        agent.cycle().await;
        let next = agent.scheduled_wake().map_or(started + loop_wait, |at| at.min(started + loop_wait));
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep_until(next) => {}
            () = wake.notified() => {}
            () = lease.loop_wake.notified() => {
                if lease.take_fenced() {
                    tracing::warn!("the lease keeper fenced PostgreSQL");
                }
            }
            Some(line) = agent.pg_exits.recv() => tracing::info!("{line}"),
            Some(cmd) = agent.commands.recv() => agent.command(cmd).await,
        }
    }
    outrigger_daemon::systemd::stopping();
    agent.shutdown().await;
    tasks.cancel();
    Ok(())
}
