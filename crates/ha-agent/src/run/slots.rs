//! Permanent slots (`slots` in the cluster's config key) on the leader and on replicas: the
//! shell around `core::slots`. Physical slots are created and advanced here; logical ones are
//! created on the leader, copied from it into a replica (which restarts its server for that)
//! and advanced there off the HA loop.

use std::collections::BTreeMap;
use std::time::Duration;

use outrigger_schema::PermanentSlot;

use super::Agent;
use crate::core::ClusterView;
use crate::core::slots::{self, LogicalAction, LogicalWanted, SlotAction};
use crate::pg::StopMode;
use crate::pg::text::{host_port_from_conn_url, slot_name};

/// How long one background advance of a logical slot may decode WAL.
const ADVANCE_LIMIT: Duration = Duration::from_secs(300);

/// Logical slots' state between cycles.
#[derive(Default)]
pub(super) struct LogicalSlots {
    /// The background advance in flight (one at a time: decoding is not free): the slot and
    /// the task, whose outcome the next cycle reports.
    advancing: Option<(String, tokio::task::JoinHandle<anyhow::Result<()>>)>,
    /// On a replica: slots copied from the leader and not yet safe to use after a promotion,
    /// with the leader's logical `catalog_xmin` once the readiness check has seen it.
    pending: BTreeMap<String, Option<u64>>,
    /// The last error per slot and action (logged when it changes, not every cycle).
    errors: BTreeMap<String, String>,
    /// The permanent logical slots kept at the last pass: one no longer named is dropped.
    before: Vec<String>,
}

impl LogicalSlots {
    /// Logs `result` of `action` on `slot` once per distinct error (and once when it clears).
    fn report(&mut self, action: &str, slot: &str, result: anyhow::Result<()>) {
        let key = format!("{action} {slot}");
        match result {
            Ok(()) => {
                if self.errors.remove(&key).is_some() || action != "advance" {
                    tracing::info!(action, slot, "permanent logical slot");
                }
            }
            Err(e) => {
                let text = format!("{e:#}");
                if self.errors.get(&key) != Some(&text) {
                    tracing::warn!(action, slot, error = %text, "permanent logical slot");
                    self.errors.insert(key, text);
                }
            }
        }
    }

    /// Slots copied but not yet known to be safe after a promotion (logged on promotion).
    pub(super) fn unready(&self) -> Vec<String> {
        self.pending.keys().cloned().collect()
    }
}

impl Agent {
    /// Creates, advances, copies and drops permanent slots (`core::slots`). On the leader it
    /// also keeps their positions for the `status` key (`restart_lsn` of a physical slot,
    /// `confirmed_flush_lsn` of a logical one). `replayed`: a replica's replay position.
    pub(super) async fn keep_permanent_slots(&mut self, view: &ClusterView, leading: bool, replayed: u64) {
        let (wanted, logical) = self.permanent_slot_names(view);
        // Each kind is listed only while one is named or was: no query on every cycle of
        // every member otherwise.
        let mut positions = Vec::new();
        if !wanted.is_empty() || !self.permanent_before.is_empty() {
            let Some(p) = self.keep_physical_slots(view, leading, replayed, wanted).await else { return };
            positions = p;
        }
        if !logical.is_empty() || !self.logical.before.is_empty() {
            positions.extend(self.keep_logical_slots(view, leading, replayed, &logical).await);
        }
        self.permanent_positions = if leading { positions } else { Vec::new() };
    }

    /// The physical half of [`Agent::keep_permanent_slots`]; returns the slots' `restart_lsn`
    /// (`None` when they cannot be listed).
    async fn keep_physical_slots(
        &mut self,
        view: &ClusterView,
        leading: bool,
        replayed: u64,
        wanted: Vec<String>,
    ) -> Option<Vec<(String, u64)>> {
        let present = match self.pg.physical_slots().await {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(error = format!("{e:#}"), "list slots");
                return None;
            }
        };
        let actions = if leading {
            slots::kept(&wanted, &self.permanent_before, &present)
        } else {
            slots::replica(&wanted, &self.permanent_before, &present, &view.status_slots, replayed)
        };
        for a in actions {
            let (what, result) = match &a {
                SlotAction::Create(name) => ("create", self.pg.create_slot(name).await),
                SlotAction::Advance { name, to } => ("advance", self.pg.advance_slot(name, *to).await),
                SlotAction::Drop(name) => ("drop", self.pg.drop_slot(name).await),
            };
            let slot = a.slot();
            match (result, &a) {
                (Ok(()), SlotAction::Advance { .. }) => {}
                (Ok(()), _) => tracing::info!(action = what, slot, "permanent replication slot"),
                (Err(e), _) => {
                    tracing::warn!(action = what, slot, error = format!("{e:#}"), "permanent replication slot")
                }
            }
        }
        let positions = present
            .iter()
            .filter(|p| wanted.contains(&p.name))
            .filter_map(|p| Some((p.name.clone(), p.restart_lsn?)))
            .collect();
        self.permanent_before = wanted;
        Some(positions)
    }

    /// The logical half of [`Agent::keep_permanent_slots`]; returns the logical slots'
    /// `confirmed_flush_lsn` (for the leader's `status` key).
    async fn keep_logical_slots(
        &mut self,
        view: &ClusterView,
        leading: bool,
        replayed: u64,
        wanted: &[LogicalWanted],
    ) -> Vec<(String, u64)> {
        let present = match self.pg.logical_slots().await {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(error = format!("{e:#}"), "list logical slots");
                return Vec::new();
            }
        };
        let actions = if leading {
            slots::logical_leader(wanted, &self.logical.before, &present)
        } else {
            slots::logical_replica(wanted, &self.logical.before, &present, &view.status_slots, replayed)
        };
        self.logical.before = wanted.iter().map(|w| w.name.clone()).collect();
        if leading {
            self.logical.pending.clear();
            if let Some((_, h)) = self.logical.advancing.take() {
                h.abort();
            }
            for a in actions {
                match a {
                    LogicalAction::Create(w) => {
                        let r = self.pg.create_logical_slot(&w).await;
                        self.logical.report("create", &w.name, r);
                    }
                    LogicalAction::Drop(name) => {
                        let r = self.pg.drop_slot(&name).await;
                        self.logical.report("drop", &name, r);
                    }
                    LogicalAction::Advance { .. } | LogicalAction::Copy(_) => {}
                }
            }
            return present
                .iter()
                .filter(|p| wanted.iter().any(|w| w.name == p.name))
                .filter_map(|p| Some((p.name.clone(), p.confirmed_flush?)))
                .collect();
        }
        self.advanced().await;
        let mut copy = Vec::new();
        for a in actions {
            match a {
                LogicalAction::Copy(name) => copy.push(name),
                LogicalAction::Drop(name) => {
                    let r = self.pg.drop_slot(&name).await;
                    self.logical.report("drop", &name, r);
                }
                LogicalAction::Advance { name, database, to } => self.advance_logical(name, &database, to),
                LogicalAction::Create(_) => {}
            }
        }
        let leader =
            view.leader.as_ref().and_then(|l| view.member(&l.name)).and_then(|m| host_port_from_conn_url(&m.conn_url));
        if let Some((host, port)) = leader {
            if !copy.is_empty() {
                self.copy_logical_slots(&host, port, &copy, wanted).await;
            }
            self.check_logical_readiness(&host, port, &present).await;
        }
        Vec::new()
    }

    /// Advances a replica's copy in the background (one at a time; the next cycle asks again
    /// for whatever is still behind).
    fn advance_logical(&mut self, name: String, database: &str, to: u64) {
        if self.logical.advancing.is_some() {
            return;
        }
        let local = self.pg.local_config(database);
        let slot = name.clone();
        let task = tokio::spawn(crate::pg::logical::advance_logical(local, slot, to, ADVANCE_LIMIT));
        self.logical.advancing = Some((name, task));
    }

    /// Reports a finished background advance (an error once per distinct message). A copy
    /// whose WAL is gone here or that PostgreSQL invalidated cannot be advanced any more: it
    /// is dropped, and the next cycle copies the slot from the leader again (as Patroni does).
    async fn advanced(&mut self) {
        let Some((name, task)) = self.logical.advancing.take_if(|(_, t)| t.is_finished()) else { return };
        let result = task.await.unwrap_or_else(|e| Err(anyhow::anyhow!("the advance task failed: {e}")));
        let recopy = result.as_ref().err().is_some_and(crate::pg::logical::needs_copy_again);
        self.logical.report("advance", &name, result);
        if recopy {
            let r = self.pg.drop_slot(&name).await;
            self.logical.report("drop to copy again", &name, r);
        }
    }

    /// Copies the leader's logical slots named in `names` into this replica: their state files
    /// are read from the leader, the server stops (fast), the files are installed and the
    /// server starts again. The copies are then pending until [`Agent::check_logical_readiness`].
    ///
    /// A leader's slot whose database or plugin differs from the config key is not copied (as
    /// Patroni): the copy would be dropped as soon as it was made, and the server restarted
    /// for it on every cycle, until the leader makes the slot again.
    async fn copy_logical_slots(&mut self, host: &str, port: u16, names: &[String], wanted: &[LogicalWanted]) {
        let mut states = match self.pg.leader_slot_states(host, port, names).await {
            Ok(s) => s,
            Err(e) => {
                self.logical.report("copy", &names.join(","), Err(e));
                return;
            }
        };
        states.retain(|s| {
            let w = wanted.iter().find(|w| w.name == s.name);
            let agrees = w.is_some_and(|w| w.database == s.database && w.plugin == s.plugin);
            if !agrees {
                let why = anyhow::anyhow!(
                    "the leader's slot is in database {} with plugin {}, not as the config key says: not copied",
                    s.database,
                    s.plugin
                );
                self.logical.report("copy", &s.name, Err(why));
            }
            agrees
        });
        if states.is_empty() {
            return;
        }
        let copied: Vec<String> = states.iter().map(|s| s.name.clone()).collect();
        tracing::info!(
            slots = copied.join(","),
            leader = host,
            "copying logical slots from the leader: restarting PostgreSQL"
        );
        if let Some((_, h)) = self.logical.advancing.take() {
            h.abort();
        }
        self.set_busy(Some("copying logical slots"));
        let Self { pg: postgres, commands, .. } = self;
        let done = super::commands::while_busy(commands, "copy logical slots", async {
            postgres.stop_for_restart(StopMode::Fast).await?;
            let installed = postgres.install_slot_states(&states);
            let started = postgres.start().await;
            installed.and(started)
        })
        .await;
        self.set_busy(None);
        match done {
            Ok(()) => {
                for n in &copied {
                    self.logical.pending.insert(n.clone(), None);
                }
                self.logical.report("copy", &copied.join(","), Ok(()));
            }
            Err(e) => self.logical.report("copy", &copied.join(","), Err(e)),
        }
    }

    /// Patroni's readiness check of copied logical slots (`core::slots::logical_ready`),
    /// against the leader's view of this member's physical slot.
    async fn check_logical_readiness(&mut self, host: &str, port: u16, present: &[slots::LogicalPresent]) {
        if self.logical.pending.is_empty() {
            return;
        }
        let own = slot_name(&self.cfg.name);
        let mut names: Vec<String> =
            self.logical.pending.iter().filter(|(_, v)| v.is_none()).map(|(n, _)| n.clone()).collect();
        names.push(own.clone());
        let xmins = match self.pg.leader_catalog_xmins(host, port, &names).await {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(error = format!("{e:#}"), "logical slot readiness");
                return;
            }
        };
        let physical = xmins.iter().find(|(n, _)| *n == own).and_then(|(_, x)| *x);
        if physical.is_none() {
            // No feedback from this replica yet (hot_standby_feedback is forced on while
            // logical slots are permanent; it takes a reload and a reply to arrive).
            return;
        }
        for (name, x) in &xmins {
            if let (Some(v), Some(x)) = (self.logical.pending.get_mut(name), x) {
                v.get_or_insert(*x);
            }
        }
        let ready: Vec<String> = self
            .logical
            .pending
            .iter()
            .filter(|(name, leader_logical)| {
                let copy = present.iter().find(|p| p.name == **name).and_then(|p| p.catalog_xmin);
                leader_logical.is_some_and(|l| slots::logical_ready(l, physical, copy))
            })
            .map(|(n, _)| n.clone())
            .collect();
        for name in ready {
            self.logical.pending.remove(&name);
            tracing::info!(slot = %name, "logical slot is safe to use after a failover");
        }
    }

    /// The permanent slots the config key names that can be kept (physical names, logical
    /// slots); the others are reported once per config (by name, with the reason).
    fn permanent_slot_names(&mut self, view: &ClusterView) -> (Vec<String>, Vec<LogicalWanted>) {
        if !self.dyn_config.use_slots {
            return (Vec::new(), Vec::new());
        }
        let members: Vec<String> = view.members.iter().map(|m| slot_name(&m.name)).collect();
        let mut keep = Vec::new();
        let mut logical = Vec::new();
        let mut skipped = Vec::new();
        for (name, kind) in &self.dyn_config.slots {
            if let Some(why) = slots::refused(name, &members) {
                skipped.push(format!("{name}: {why}"));
                continue;
            }
            match kind {
                PermanentSlot::Physical => keep.push(name.clone()),
                PermanentSlot::Logical { database, plugin } => logical.push(LogicalWanted {
                    name: name.clone(),
                    database: database.clone(),
                    plugin: plugin.clone(),
                }),
                PermanentSlot::Unreadable => {
                    skipped.push(format!("{name}: type must be physical, or logical with database and plugin"))
                }
            }
        }
        if !skipped.is_empty() && self.slots_skipped != skipped {
            tracing::warn!(slots = skipped.join("; "), "permanent slots in the config key not kept");
        }
        self.slots_skipped = skipped;
        (keep, logical)
    }

    /// Whether the config key names a permanent logical slot: replicas then run with
    /// `hot_standby_feedback` on, which the copies need (as Patroni enforces it).
    pub(super) fn logical_slots_permanent(&self) -> bool {
        self.dyn_config.use_slots
            && self.dyn_config.slots.iter().any(|(_, k)| matches!(k, PermanentSlot::Logical { .. }))
    }
}
