//! Permanent physical replication slots (`slots` in the cluster's config key, Patroni's
//! "permanent slots"), pure: which to create, advance or drop, on the leader and on replicas.
//!
//! As in Patroni, a permanent physical slot exists on every member, not only the leader: the
//! leader publishes each slot's `restart_lsn` in the `status` key (`slots`), and a replica
//! keeps its own copy advanced to that position (never past what it has replayed). After a
//! failover the new leader already has the slot, holding the WAL its consumer (a
//! `pg_receivewal`, an external standby) has not confirmed yet, so the consumer carries on
//! against the new leader.
//!
//! Names must be valid slot names (`[a-z0-9_]`, at most 63 bytes) and must not be a member's
//! own slot name; others are skipped, and the shell says why once. A slot that was permanent
//! and no longer is (taken out of the key) is dropped once nothing streams from it. Slots the
//! agent never made are never touched, so Patroni's `ignore_slots` asks for nothing more here.
//!
//! Permanent logical slots (Patroni's "logical slot failover" by copying, for PostgreSQL
//! before 17): the leader creates each in its database and publishes its
//! `confirmed_flush_lsn` in `status`. A replica cannot create a logical slot while in recovery
//! (PostgreSQL 15), so it copies the slot's state file from the leader while its own server is
//! stopped ([`logical_replica`] says which), then keeps the copy advanced to the leader's
//! published position (never past its own replay). With `hot_standby_feedback` on (forced on
//! replicas while logical slots are permanent), the replica's physical slot on the leader holds
//! back the catalog rows the copy still needs; the copy is safe to use after a promotion once
//! that slot's `catalog_xmin` has overtaken the leader's logical slot's and does not exceed the
//! copy's own ([`logical_ready`]). After a failover the consumer resumes from its own confirmed
//! position, which is never behind the new leader's copy, so nothing is missed.

/// A physical slot as PostgreSQL lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Present {
    pub name: String,
    pub active: bool,
    /// `restart_lsn` (`None` before it reserved WAL).
    pub restart_lsn: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotAction {
    Create(String),
    /// `pg_replication_slot_advance(name, to)` (a replica's copy of a leader's slot).
    Advance {
        name: String,
        to: u64,
    },
    Drop(String),
}

impl SlotAction {
    pub fn slot(&self) -> &str {
        match self {
            SlotAction::Create(n) | SlotAction::Drop(n) | SlotAction::Advance { name: n, .. } => n,
        }
    }
}

/// A logical slot as PostgreSQL lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogicalPresent {
    pub name: String,
    pub database: String,
    pub plugin: String,
    pub active: bool,
    pub confirmed_flush: Option<u64>,
    pub catalog_xmin: Option<u64>,
}

/// A permanent logical slot as the config key names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogicalWanted {
    pub name: String,
    pub database: String,
    pub plugin: String,
}

impl LogicalWanted {
    fn matches(&self, p: &LogicalPresent) -> bool {
        p.database == self.database && p.plugin == self.plugin
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogicalAction {
    /// On the leader: `pg_create_logical_replication_slot` in the slot's database.
    Create(LogicalWanted),
    /// On a replica: `pg_replication_slot_advance` in the slot's database.
    Advance { name: String, database: String, to: u64 },
    /// A slot of that name with another database or plugin, or one no longer permanent: dropped
    /// once inactive (and, if wanted, made again).
    Drop(String),
    /// On a replica: copy the slot's state from the leader (the server stopped meanwhile).
    Copy(String),
}

/// The leader's logical actions: every wanted slot exists with its database and plugin; one
/// with the same name but another database or plugin, or permanent before and not now, is
/// dropped once inactive.
pub fn logical_leader(wanted: &[LogicalWanted], before: &[String], present: &[LogicalPresent]) -> Vec<LogicalAction> {
    let mut out = Vec::new();
    for w in wanted {
        match present.iter().find(|p| p.name == w.name) {
            None => out.push(LogicalAction::Create(w.clone())),
            Some(p) if !w.matches(p) && !p.active => out.push(LogicalAction::Drop(w.name.clone())),
            Some(_) => {}
        }
    }
    out.extend(logical_unwanted(wanted, before, present));
    out
}

/// A replica's logical actions: a wanted slot the leader publishes a position for is copied
/// when missing here (or here with another database or plugin: dropped first), and advanced
/// to that position, not past `replayed`, when behind it. Nothing is copied before the leader
/// publishes the slot (it may not exist there yet).
pub fn logical_replica(
    wanted: &[LogicalWanted],
    before: &[String],
    present: &[LogicalPresent],
    leader_positions: &[(String, u64)],
    replayed: u64,
) -> Vec<LogicalAction> {
    let mut out = Vec::new();
    for w in wanted {
        let Some(&(_, at)) = leader_positions.iter().find(|(n, _)| *n == w.name) else { continue };
        match present.iter().find(|p| p.name == w.name) {
            None => out.push(LogicalAction::Copy(w.name.clone())),
            Some(p) if !w.matches(p) => {
                if !p.active {
                    out.push(LogicalAction::Drop(w.name.clone()));
                }
            }
            Some(p) if !p.active => {
                let to = at.min(replayed);
                if p.confirmed_flush.is_some_and(|c| c < to) {
                    out.push(LogicalAction::Advance { name: w.name.clone(), database: w.database.clone(), to });
                }
            }
            Some(_) => {}
        }
    }
    out.extend(logical_unwanted(wanted, before, present));
    out
}

fn logical_unwanted(wanted: &[LogicalWanted], before: &[String], present: &[LogicalPresent]) -> Vec<LogicalAction> {
    let present = present.iter().map(|p| (p.name.as_str(), p.active));
    unwanted(|b| wanted.iter().any(|w| w.name == b), before, present).map(LogicalAction::Drop).collect()
}

/// Whether a copied logical slot is safe to use after a promotion (Patroni's readiness rule):
/// this replica's physical slot on the leader has a `catalog_xmin` (hot standby feedback
/// arrives), which has overtaken the leader's logical slot's `catalog_xmin` as it was when
/// first seen after the copy, and is not newer than the copy's own `catalog_xmin`: from then
/// on the leader keeps every catalog row the copy still needs. Transaction ids compare as
/// 32-bit counters that wrap (PostgreSQL's `TransactionIdPrecedesOrEquals`).
pub fn logical_ready(leader_logical: u64, leader_physical: Option<u64>, copy: Option<u64>) -> bool {
    let (Some(physical), Some(copy)) = (leader_physical, copy) else { return false };
    xid_precedes_or_equals(leader_logical, physical) && xid_precedes_or_equals(physical, copy)
}

fn xid_precedes_or_equals(a: u64, b: u64) -> bool {
    // Both are 32-bit xids: the signed difference decides, as in PostgreSQL.
    let diff = (a as u32).wrapping_sub(b as u32) as i32;
    diff <= 0
}

/// Why a permanent slot name is not used, if it is not.
pub fn refused(name: &str, member_slots: &[String]) -> Option<&'static str> {
    if name.is_empty()
        || name.len() > 63
        || !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Some("a slot name is 1 to 63 of a-z, 0-9 and _");
    }
    if member_slots.iter().any(|m| m == name) {
        return Some("it is a member's own slot name");
    }
    None
}

/// Every slot of `wanted` exists; those of `others` not wanted are dropped once inactive, since
/// an unused slot holds WAL forever. The leader's permanent slots (`others`: those permanent
/// before), and any server's member slots (`wanted`: the members that stream from it,
/// `core::cascade`; `others`: every other member's).
pub fn kept(wanted: &[String], others: &[String], present: &[Present]) -> Vec<SlotAction> {
    let mut out: Vec<SlotAction> = wanted
        .iter()
        .filter(|w| !present.iter().any(|p| p.name == **w))
        .map(|w| SlotAction::Create(w.clone()))
        .collect();
    out.extend(dropped(wanted, others, present));
    out
}

/// A replica's actions: every permanent slot exists, advanced to the position the leader
/// published for it (`leader_positions`), not past `replayed`, unless something streams from
/// it here (it moves on its own then); slots permanent before and not now are dropped once
/// inactive.
pub fn replica(
    wanted: &[String],
    before: &[String],
    present: &[Present],
    leader_positions: &[(String, u64)],
    replayed: u64,
) -> Vec<SlotAction> {
    let mut out = Vec::new();
    for w in wanted {
        match present.iter().find(|p| p.name == *w) {
            None => out.push(SlotAction::Create(w.clone())),
            Some(p) if !p.active => {
                let target = leader_positions.iter().find(|(n, _)| n == w).map(|(_, l)| (*l).min(replayed));
                if let Some(to) = target.filter(|to| p.restart_lsn.is_some_and(|r| *to > r)) {
                    out.push(SlotAction::Advance { name: w.clone(), to });
                }
            }
            Some(_) => {}
        }
    }
    out.extend(dropped(wanted, before, present));
    out
}

fn dropped(wanted: &[String], before: &[String], present: &[Present]) -> Vec<SlotAction> {
    let present = present.iter().map(|p| (p.name.as_str(), p.active));
    unwanted(|b| wanted.iter().any(|w| w == b), before, present).map(SlotAction::Drop).collect()
}

/// The slots of `before` no longer wanted that exist and are inactive (`present`: name,
/// active): an unused slot holds WAL forever, one in use is left to its consumer.
fn unwanted<'a>(
    wanted: impl Fn(&str) -> bool,
    before: &'a [String],
    present: impl Iterator<Item = (&'a str, bool)> + Clone,
) -> impl Iterator<Item = String> {
    before
        .iter()
        .filter(move |b| !wanted(b))
        .filter(move |b| present.clone().any(|(name, active)| name == b.as_str() && !active))
        .cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(name: &str, active: bool, restart: Option<u64>) -> Present {
        Present { name: name.into(), active, restart_lsn: restart }
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_leader_creates_missing_permanent_slots_and_drops_removed_ones_once_inactive() {
        let present = [slot("keep", true, Some(10)), slot("old", false, Some(5)), slot("busy", true, Some(5))];
        assert_eq!(
            kept(&names(&["keep", "new"]), &names(&["keep", "old", "busy"]), &present),
            vec![SlotAction::Create("new".into()), SlotAction::Drop("old".into())],
            "a removed slot still streamed from is kept until it is not"
        );
        assert_eq!(kept(&names(&["keep"]), &names(&["keep"]), &present), vec![]);
    }

    #[test]
    fn a_replica_keeps_each_permanent_slot_at_the_leaders_position_but_never_past_its_own_replay() {
        let present = [slot("keep", false, Some(100)), slot("behind", false, Some(50))];
        let leader_at = [("keep".to_string(), 300), ("behind".to_string(), 60), ("new".to_string(), 10)];
        assert_eq!(
            replica(&names(&["keep", "behind", "new"]), &[], &present, &leader_at, 200),
            vec![
                SlotAction::Advance { name: "keep".into(), to: 200 },
                SlotAction::Advance { name: "behind".into(), to: 60 },
                SlotAction::Create("new".into()),
            ]
        );
        // Never backwards, nothing to do without the leader's position, and a slot in use here
        // is its consumer's.
        let present = [slot("keep", false, Some(400)), slot("other", false, Some(10)), slot("behind", true, Some(1))];
        assert_eq!(replica(&names(&["keep", "other", "behind"]), &[], &present, &leader_at, 500), vec![]);
    }

    #[test]
    fn member_slots_are_made_for_members_streaming_here_and_dropped_once_inactive_for_the_others() {
        let present = [slot("n2", true, Some(10)), slot("n3", false, Some(5)), slot("n4", true, Some(5))];
        assert_eq!(
            kept(&names(&["n2", "n5"]), &names(&["n3", "n4"]), &present),
            vec![SlotAction::Create("n5".into()), SlotAction::Drop("n3".into())],
            "a slot still streamed from (n4: it has just moved to another upstream) is dropped only once inactive"
        );
        assert!(kept(&names(&["n2"]), &names(&["n2"]), &present).is_empty(), "wanted wins");
    }

    fn logical(name: &str, db: &str, active: bool, flushed: Option<u64>) -> LogicalPresent {
        LogicalPresent {
            name: name.into(),
            database: db.into(),
            plugin: "test_decoding".into(),
            active,
            confirmed_flush: flushed,
            catalog_xmin: Some(700),
        }
    }

    fn wanted(name: &str, db: &str) -> LogicalWanted {
        LogicalWanted { name: name.into(), database: db.into(), plugin: "test_decoding".into() }
    }

    #[test]
    fn the_leader_creates_logical_slots_in_their_database_and_remakes_one_whose_database_changed() {
        let present = [logical("cdc", "app", true, Some(10)), logical("moved", "old", false, Some(5))];
        let w = [wanted("cdc", "app"), wanted("moved", "new"), wanted("fresh", "app")];
        assert_eq!(
            logical_leader(&w, &names(&["cdc", "moved", "gone"]), &present),
            vec![LogicalAction::Drop("moved".into()), LogicalAction::Create(wanted("fresh", "app"))]
        );
        // Gone from the key: dropped once its consumer has left.
        let present = [logical("gone", "app", false, Some(1))];
        assert_eq!(logical_leader(&[], &names(&["gone"]), &present), vec![LogicalAction::Drop("gone".into())]);
        let present = [logical("gone", "app", true, Some(1))];
        assert_eq!(logical_leader(&[], &names(&["gone"]), &present), vec![]);
    }

    #[test]
    fn a_replica_copies_a_published_logical_slot_it_lacks_and_advances_one_it_has_but_never_past_replay() {
        let w = [wanted("cdc", "app"), wanted("audit", "app"), wanted("unpublished", "app")];
        let at = [("cdc".to_string(), 500), ("audit".to_string(), 300)];
        // cdc is missing: copied; audit is behind: advanced to the leader's position;
        // unpublished has no position yet: nothing (the leader may not have made it).
        let present = [logical("audit", "app", false, Some(100))];
        assert_eq!(
            logical_replica(&w, &[], &present, &at, 1000),
            vec![
                LogicalAction::Copy("cdc".into()),
                LogicalAction::Advance { name: "audit".into(), database: "app".into(), to: 300 }
            ]
        );
        // Replay bounds the advance; a copy at or past the target is left alone.
        let present = [logical("cdc", "app", false, Some(100)), logical("audit", "app", false, Some(300))];
        assert_eq!(
            logical_replica(&w, &[], &present, &at, 250),
            vec![LogicalAction::Advance { name: "cdc".into(), database: "app".into(), to: 250 }]
        );
        // Another database: dropped (then copied on a later pass); in use here: left alone.
        let present = [logical("cdc", "other", false, Some(100)), logical("audit", "app", true, Some(1))];
        assert_eq!(logical_replica(&w, &[], &present, &at, 1000), vec![LogicalAction::Drop("cdc".into())]);
    }

    #[test]
    fn a_copied_logical_slot_is_ready_once_the_replicas_feedback_holds_the_catalog_horizon_for_it() {
        assert!(!logical_ready(700, None, Some(700)), "no hot standby feedback yet");
        assert!(!logical_ready(700, Some(690), Some(700)), "the physical slot has not overtaken the leader's");
        assert!(!logical_ready(700, Some(710), Some(705)), "the physical slot is past the copy's horizon");
        assert!(logical_ready(700, Some(702), Some(705)));
        assert!(logical_ready(700, Some(700), Some(700)));
        // Across the 32-bit wrap: 4294967290 precedes 5.
        assert!(logical_ready(4_294_967_290, Some(3), Some(5)));
        assert!(!logical_ready(5, Some(4_294_967_290), Some(6)));
    }

    #[test]
    fn slot_names_must_be_valid_and_not_a_members() {
        let members = names(&["n1", "n2"]);
        assert_eq!(refused("keep_1", &members), None);
        assert!(refused("Keep", &members).is_some());
        assert!(refused("with-dash", &members).is_some());
        assert!(refused(&"x".repeat(64), &members).is_some());
        assert_eq!(refused("n2", &members), Some("it is a member's own slot name"));
    }
}
