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
//! Permanent logical slots are not kept (the shell says so by name).

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
    before
        .iter()
        .filter(|b| !wanted.contains(b))
        .filter(|b| present.iter().any(|p| p.name == **b && !p.active))
        .map(|b| SlotAction::Drop(b.clone()))
        .collect()
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
