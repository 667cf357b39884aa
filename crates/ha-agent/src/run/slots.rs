//! Permanent physical slots (`slots` in the cluster's config key) on the leader and on
//! replicas: the shell around `core::slots`.

use outrigger_schema::PermanentSlot;

use super::Agent;
use crate::core::ClusterView;
use crate::core::slots::{self, SlotAction};
use crate::pg::text::slot_name;

impl Agent {
    /// Creates, advances and drops permanent physical slots (`core::slots`). On the leader it
    /// also keeps their positions for the `status` key. `replayed`: a replica's replay
    /// position.
    pub(super) async fn keep_permanent_slots(&mut self, view: &ClusterView, leading: bool, replayed: u64) {
        let wanted = self.permanent_slot_names(view);
        if wanted.is_empty() && self.permanent_before.is_empty() {
            // Nothing to keep or drop: no query on every cycle of every member.
            self.permanent_positions.clear();
            return;
        }
        let present = match self.pg.physical_slots().await {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(error = format!("{e:#}"), "list slots");
                return;
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
        self.permanent_before = wanted.clone();
        if leading {
            self.permanent_positions = present
                .iter()
                .filter(|p| wanted.contains(&p.name))
                .filter_map(|p| Some((p.name.clone(), p.restart_lsn?)))
                .collect();
        }
    }

    /// The permanent physical slots the config key names that can be kept; the others are
    /// reported once per config (by name, with the reason).
    fn permanent_slot_names(&mut self, view: &ClusterView) -> Vec<String> {
        if !self.dyn_config.use_slots {
            return Vec::new();
        }
        let members: Vec<String> = view.members.iter().map(|m| slot_name(&m.name)).collect();
        let mut keep = Vec::new();
        let mut skipped = Vec::new();
        for (name, kind) in &self.dyn_config.slots {
            match kind {
                PermanentSlot::Physical => match slots::refused(name, &members) {
                    None => keep.push(name.clone()),
                    Some(why) => skipped.push(format!("{name}: {why}")),
                },
                PermanentSlot::Logical { .. } => {
                    skipped.push(format!("{name}: permanent logical slots are not supported yet"))
                }
                PermanentSlot::Unreadable => {
                    skipped.push(format!("{name}: type must be physical, or logical with database and plugin"))
                }
            }
        }
        if !skipped.is_empty() && self.slots_skipped != skipped {
            tracing::warn!(slots = skipped.join("; "), "permanent slots in the config key not kept");
        }
        self.slots_skipped = skipped;
        keep
    }
}
