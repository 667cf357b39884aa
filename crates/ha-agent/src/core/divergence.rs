//! Whether a data directory can follow the leader's timeline as it is, or has WAL the leader
//! never had (and needs pg_rewind or a new base backup).

use super::view::TimelineSwitch;

/// How far the local WAL is known to reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalEnd {
    /// The WAL ends just before this LSN (a running replica's received/replayed position).
    Before(u64),
    /// The last record *starts* at this LSN (a cleanly shut down primary: its shutdown
    /// checkpoint record).
    LastRecordAt(u64),
    /// Not known without reading the WAL (a crashed server).
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Divergence {
    /// On the leader's timeline, or on an ancestor and not past the switch point: streaming
    /// from the leader just works.
    Compatible,
    /// The local WAL goes past the point where the leader's history left our timeline.
    Diverged { switchpoint: u64 },
    /// Cannot tell (history lacks our timeline, or our end of WAL is unknown).
    Unknown,
}

/// Compares our timeline and end of WAL with the leader's timeline and `history`.
pub fn check(
    local_timeline: u32,
    end: LocalEnd,
    leader_timeline: Option<u32>,
    history: &[TimelineSwitch],
) -> Divergence {
    let Some(leader_timeline) = leader_timeline else { return Divergence::Unknown };
    if local_timeline == leader_timeline {
        return Divergence::Compatible;
    }
    if local_timeline > leader_timeline {
        // We are on a timeline the leader never reached: we were promoted after the point the
        // leader forked from, so everything we wrote there is foreign to the leader.
        let switchpoint = history.iter().find(|h| h.timeline == leader_timeline).map_or(0, |h| h.lsn);
        return Divergence::Diverged { switchpoint };
    }
    let Some(switch) = history.iter().find(|h| h.timeline == local_timeline) else {
        return Divergence::Unknown;
    };
    let beyond = match end {
        LocalEnd::Before(lsn) => lsn > switch.lsn,
        // A record that starts at the switch point was not part of the leader's history.
        LocalEnd::LastRecordAt(lsn) => lsn >= switch.lsn,
        LocalEnd::Unknown => return Divergence::Unknown,
    };
    if beyond { Divergence::Diverged { switchpoint: switch.lsn } } else { Divergence::Compatible }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h() -> Vec<TimelineSwitch> {
        vec![
            TimelineSwitch { timeline: 1, lsn: 1000, leader: None },
            TimelineSwitch { timeline: 2, lsn: 2000, leader: None },
        ]
    }

    #[test]
    fn same_timeline_is_compatible() {
        assert_eq!(check(3, LocalEnd::Unknown, Some(3), &h()), Divergence::Compatible);
    }

    #[test]
    fn replica_that_stopped_at_the_switch_point_is_compatible() {
        assert_eq!(check(1, LocalEnd::Before(1000), Some(3), &h()), Divergence::Compatible);
    }

    #[test]
    fn replica_that_received_past_the_switch_point_diverged() {
        assert_eq!(check(1, LocalEnd::Before(1001), Some(3), &h()), Divergence::Diverged { switchpoint: 1000 });
    }

    #[test]
    fn clean_primary_whose_checkpoint_the_leader_replayed_is_compatible() {
        assert_eq!(check(2, LocalEnd::LastRecordAt(1900), Some(3), &h()), Divergence::Compatible);
    }

    #[test]
    fn clean_primary_whose_checkpoint_starts_at_the_switch_point_diverged() {
        assert_eq!(check(2, LocalEnd::LastRecordAt(2000), Some(3), &h()), Divergence::Diverged { switchpoint: 2000 });
    }

    #[test]
    fn unknown_history_or_end_is_unknown() {
        assert_eq!(check(5, LocalEnd::Before(1), Some(6), &h()), Divergence::Unknown);
        assert_eq!(check(1, LocalEnd::Unknown, Some(3), &h()), Divergence::Unknown);
        assert_eq!(check(1, LocalEnd::Before(1), None, &h()), Divergence::Unknown);
    }

    #[test]
    fn local_timeline_ahead_of_the_leader_diverged() {
        assert!(matches!(check(4, LocalEnd::Before(1), Some(3), &h()), Divergence::Diverged { .. }));
    }
}
