//! `wal-verify integrity|timeline`, as pure functions over what is stored.
//!
//! integrity: every segment from the oldest backup's start to the newest position must be
//! stored, following timeline history (a segment before a switch point is read on the parent
//! timeline). A missing one within `uploading_window` segments of the end is MISSING_UPLOADING
//! (the archiver may still be on it); earlier, MISSING_LOST. timeline: the cluster's timeline
//! must be at least the highest one stored (a higher one stored means another primary).

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::walname::{DEFAULT_SEGMENT_SIZE, Segment};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SegStatus {
    Found,
    MissingUploading,
    MissingLost,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    Ok,
    Warning,
    Failure,
}

/// A run of segments with one status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Run {
    pub timeline_id: u32,
    pub start_segment: String,
    pub end_segment: String,
    pub segments_count: u64,
    pub status: SegStatus,
}

/// The timeline in effect at segment `number`, for the newest timeline `tli` whose history
/// (`(parent, switch LSN)`, oldest first) is `history`.
pub fn timeline_at(tli: u32, history: &[(u32, u64)], number: u64) -> u32 {
    history.iter().find(|(_, switch)| number < switch / DEFAULT_SEGMENT_SIZE).map_or(tli, |(parent, _)| *parent)
}

/// Checks `from..=to` (segment numbers) ending on timeline `tli`.
pub fn integrity(
    stored: &BTreeSet<Segment>,
    tli: u32,
    history: &[(u32, u64)],
    from: u64,
    to: u64,
    uploading_window: u64,
) -> (Status, Vec<Run>) {
    let mut runs: Vec<Run> = Vec::new();
    for n in from..=to {
        let t = timeline_at(tli, history, n);
        let seg = Segment { timeline: t, number: n };
        let status = if stored.contains(&seg) {
            SegStatus::Found
        } else if to - n < uploading_window {
            SegStatus::MissingUploading
        } else {
            SegStatus::MissingLost
        };
        let name = seg.name(DEFAULT_SEGMENT_SIZE);
        match runs.last_mut() {
            Some(r) if r.status == status && r.timeline_id == t => {
                r.end_segment = name;
                r.segments_count += 1;
            }
            _ => runs.push(Run {
                timeline_id: t,
                start_segment: name.clone(),
                end_segment: name,
                segments_count: 1,
                status,
            }),
        }
    }
    let status = if runs.iter().any(|r| r.status == SegStatus::MissingLost) {
        Status::Failure
    } else if runs.iter().any(|r| r.status == SegStatus::MissingUploading) {
        Status::Warning
    } else {
        Status::Ok
    };
    (status, runs)
}

/// The timeline check: the cluster's timeline against the highest stored one.
pub fn timeline(current: Option<u32>, highest_stored: u32) -> Status {
    match current {
        None => Status::Warning,
        Some(c) if c >= highest_stored => Status::Ok,
        Some(_) => Status::Failure,
    }
}

/// The stored segments and history files, from the names under `wal_005/`.
pub fn parse_listing<'a>(names: impl Iterator<Item = &'a str>) -> (BTreeSet<Segment>, BTreeMap<u32, String>) {
    let mut segs = BTreeSet::new();
    let mut hist = BTreeMap::new();
    for n in names {
        let (_, base) = crate::codec::Method::from_object_name(n);
        if let Some(s) = Segment::parse(base, DEFAULT_SEGMENT_SIZE) {
            segs.insert(s);
        } else if let Some(t) = base.strip_suffix(".history").and_then(|t| u32::from_str_radix(t, 16).ok()) {
            hist.insert(t, n.to_owned());
        }
    }
    (segs, hist)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(list: &[(u32, u64)]) -> BTreeSet<Segment> {
        list.iter().map(|(t, n)| Segment { timeline: *t, number: *n }).collect()
    }

    #[test]
    fn a_complete_archive_across_a_timeline_switch_is_ok() {
        // Timeline 2 forked from 1 inside segment 5: segments 1..=4 on 1, 5.. on 2.
        let s = stored(&[(1, 1), (1, 2), (1, 3), (1, 4), (2, 5), (2, 6)]);
        let history = [(1, 5 * DEFAULT_SEGMENT_SIZE + 0x98)];
        let (status, runs) = integrity(&s, 2, &history, 1, 6, 2);
        assert_eq!(status, Status::Ok, "{runs:?}");
        assert_eq!(runs.len(), 2);
    }

    #[test]
    fn a_hole_is_lost_and_the_tail_is_uploading() {
        let s = stored(&[(1, 1), (1, 3), (1, 4)]);
        let (status, runs) = integrity(&s, 1, &[], 1, 6, 2);
        assert_eq!(status, Status::Failure);
        let st: Vec<SegStatus> = runs.iter().map(|r| r.status).collect();
        assert_eq!(st, [SegStatus::Found, SegStatus::MissingLost, SegStatus::Found, SegStatus::MissingUploading]);
    }

    #[test]
    fn a_higher_timeline_in_storage_than_the_cluster_is_a_failure() {
        assert_eq!(timeline(Some(2), 3), Status::Failure);
        assert_eq!(timeline(Some(3), 3), Status::Ok);
        assert_eq!(timeline(None, 3), Status::Warning);
    }

    #[test]
    fn listing_names_are_parsed_with_any_extension() {
        let (s, h) = parse_listing(
            ["000000010000000000000002.lz4", "00000002.history.zst", "000000010000000000000003", "x"].into_iter(),
        );
        assert_eq!(s.len(), 2);
        assert_eq!(h.keys().copied().collect::<Vec<_>>(), [2]);
    }
}
