//! `delete`: which backups and which WAL go, as a pure plan over what is stored.
//!
//! Backups are ordered by their own start time (then start LSN), never by storage time.
//! `retain N` keeps the newest N; `before NAME` keeps NAME and newer; `everything` removes
//! all (refused while a permanent backup exists unless `FORCE`). Permanent backups are never
//! deleted. WAL goes only below the oldest kept backup's start segment (on every timeline:
//! a backup newer by time can start at a lower position after a point-in-time restore), and
//! never inside a permanent backup's start..finish range; `.history` files are never deleted.
//! A delta that is kept (or permanent) keeps the backups it builds on. So no kept backup is
//! ever left without the WAL or the parents it needs.

use std::collections::BTreeSet;

use anyhow::bail;

use crate::walname::{DEFAULT_SEGMENT_SIZE, first_segment_in};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// `retain N`: keep the N newest backups (the oldest kept must be a full one).
    Retain(usize),
    /// `retain FULL N`: keep the N newest full backups and every delta after the oldest.
    RetainFull(usize),
    /// `retain FIND_FULL N`: keep the N newest backups and the full ones they build on.
    RetainFindFull(usize),
    Before(String),
    Everything {
        force: bool,
    },
}

/// What retention needs to know of one backup.
#[derive(Debug, Clone)]
pub struct Backup {
    pub name: String,
    /// Chronological position (start time, then LSN): larger is newer.
    pub order: (Option<chrono::DateTime<chrono::Utc>>, u64),
    pub start_segno: u64,
    pub finish_segno: u64,
    pub permanent: bool,
    /// A delta's parent (`DeltaFrom`).
    pub parent: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Backups to delete, oldest first.
    pub backups: Vec<String>,
    /// WAL objects with a segment number below this go (unless protected); `None`: no WAL goes.
    pub wal_below: Option<u64>,
    /// Segment ranges (inclusive) of permanent backups: never deleted.
    pub protected: Vec<(u64, u64)>,
    /// `everything`: every WAL object goes, history files too.
    pub all_wal: bool,
}

impl Plan {
    /// Whether the WAL object `key` (relative to `wal_005/`) is deleted by this plan.
    pub fn deletes_wal(&self, key: &str) -> bool {
        if self.all_wal {
            return true;
        }
        if key.contains(".history") {
            return false;
        }
        let Some(seg) = first_segment_in(key, DEFAULT_SEGMENT_SIZE) else { return false };
        let protected = self.protected.iter().any(|(a, b)| (*a..=*b).contains(&seg.number));
        !protected && self.wal_below.is_some_and(|b| seg.number < b)
    }
}

/// The plan for `mode` over `backups` (any order).
pub fn plan(mut backups: Vec<Backup>, mode: &Mode) -> anyhow::Result<Plan> {
    backups.sort_by_key(|b| b.order);
    let protected: Vec<(u64, u64)> =
        backups.iter().filter(|b| b.permanent).map(|b| (b.start_segno, b.finish_segno)).collect();
    let keep_from = match mode {
        Mode::Everything { force } => {
            if !force && backups.iter().any(|b| b.permanent) {
                bail!("permanent backups exist; `delete everything FORCE` removes them too");
            }
            return Ok(Plan {
                backups: backups.iter().map(|b| b.name.clone()).collect(),
                wal_below: None,
                protected: vec![],
                all_wal: true,
            });
        }
        Mode::Retain(0) | Mode::RetainFull(0) | Mode::RetainFindFull(0) => {
            bail!("retain 0 would delete every backup; use `delete everything`")
        }
        Mode::Retain(n) | Mode::RetainFindFull(n) => {
            if backups.len() <= *n {
                return Ok(Plan { backups: vec![], wal_below: None, protected, all_wal: false });
            }
            backups.len() - n
        }
        Mode::RetainFull(n) => {
            let fulls: Vec<usize> = (0..backups.len()).filter(|i| backups[*i].parent.is_none()).collect();
            if fulls.len() <= *n {
                return Ok(Plan { backups: vec![], wal_below: None, protected, all_wal: false });
            }
            fulls[fulls.len() - n]
        }
        Mode::Before(name) => match backups.iter().position(|b| &b.name == name) {
            Some(i) => i,
            None => bail!("backup {name} not found"),
        },
    };
    let target = &backups[keep_from];
    if target.parent.is_some() && !matches!(mode, Mode::RetainFindFull(_)) {
        bail!("{} is a delta backup: the backups it builds on cannot be deleted (keep one more)", target.name);
    }
    // A kept or permanent delta keeps every backup it builds on.
    let mut needed: BTreeSet<&str> = BTreeSet::new();
    for b in backups[keep_from..].iter().chain(backups.iter().filter(|b| b.permanent)) {
        let mut at = b.parent.as_deref();
        while let Some(p) = at {
            if !needed.insert(p) {
                break;
            }
            at = backups.iter().find(|x| x.name == p).and_then(|x| x.parent.as_deref());
        }
    }
    let doomed: Vec<String> = backups[..keep_from]
        .iter()
        .filter(|b| !b.permanent && !needed.contains(b.name.as_str()))
        .map(|b| b.name.clone())
        .collect();
    // Kept parents keep their WAL too, so each stays restorable on its own.
    let kept_starts: BTreeSet<u64> = backups
        .iter()
        .enumerate()
        .filter(|(i, b)| *i >= keep_from || needed.contains(b.name.as_str()))
        .map(|(_, b)| b.start_segno)
        .collect();
    let wal_below = kept_starts.first().copied();
    Ok(Plan { backups: doomed, wal_below, protected, all_wal: false })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(name: &str, t: i64, start: u64, finish: u64, permanent: bool) -> Backup {
        Backup {
            name: name.into(),
            order: (chrono::DateTime::from_timestamp(t, 0), start),
            start_segno: start,
            finish_segno: finish,
            permanent,
            parent: None,
        }
    }

    fn key(tli: u32, n: u64) -> String {
        format!("{}.lz4", crate::walname::Segment { timeline: tli, number: n }.name(DEFAULT_SEGMENT_SIZE))
    }

    #[test]
    fn retain_keeps_the_newest_by_start_time_and_the_wal_they_need() {
        let all = vec![b("b1", 100, 2, 3, false), b("b2", 200, 10, 11, false), b("b3", 300, 20, 21, false)];
        let p = plan(all, &Mode::Retain(2)).expect("plan");
        assert_eq!(p.backups, ["b1"]);
        assert!(p.deletes_wal(&key(1, 9)));
        assert!(!p.deletes_wal(&key(1, 10)), "the oldest kept backup's start segment stays");
        assert!(!p.deletes_wal("00000002.history.lz4"), "history files stay");
    }

    #[test]
    fn retain_full_counts_full_backups_and_find_full_keeps_what_a_kept_delta_needs() {
        let delta = |name: &str, order: i64, seg: u64, parent: &str| Backup {
            parent: Some(parent.into()),
            ..b(name, order, seg, seg + 1, false)
        };
        let all = vec![
            b("f1", 100, 2, 3, false),
            delta("d1", 150, 4, "f1"),
            b("f2", 200, 6, 7, false),
            delta("d2", 250, 8, "f2"),
            delta("d3", 260, 9, "d2"),
        ];
        let p = plan(all.clone(), &Mode::RetainFull(1)).expect("plan");
        assert_eq!(p.backups, ["f1", "d1"]);
        assert!(p.deletes_wal(&key(1, 5)) && !p.deletes_wal(&key(1, 6)));
        assert!(plan(all.clone(), &Mode::RetainFull(2)).expect("plan").backups.is_empty());
        assert!(plan(all.clone(), &Mode::Retain(2)).is_err(), "the oldest kept would be a delta");
        let p = plan(all, &Mode::RetainFindFull(1)).expect("plan");
        assert_eq!(p.backups, ["f1", "d1"], "d3 needs d2 and f2");
    }

    #[test]
    fn a_newer_backup_at_a_lower_position_after_a_pitr_keeps_its_wal() {
        // b3 was taken on timeline 2 after restoring to a point before b2's start.
        let all = vec![b("b1", 100, 2, 3, false), b("b2", 200, 10, 11, false), b("b3", 300, 6, 7, false)];
        let p = plan(all, &Mode::Retain(2)).expect("plan");
        assert_eq!(p.backups, ["b1"]);
        assert!(!p.deletes_wal(&key(2, 6)));
        assert!(p.deletes_wal(&key(1, 5)));
    }

    #[test]
    fn permanent_backups_and_their_wal_are_never_deleted() {
        let all = vec![b("p", 100, 2, 3, true), b("b2", 200, 10, 11, false), b("b3", 300, 20, 21, false)];
        let p = plan(all.clone(), &Mode::Retain(1)).expect("plan");
        assert_eq!(p.backups, ["b2"]);
        assert!(!p.deletes_wal(&key(1, 3)));
        assert!(p.deletes_wal(&key(1, 4)));
        assert!(plan(all.clone(), &Mode::Everything { force: false }).is_err());
        assert!(plan(all, &Mode::Everything { force: true }).expect("force").all_wal);
    }

    #[test]
    fn fewer_backups_than_retained_deletes_nothing() {
        let p = plan(vec![b("b1", 100, 2, 3, false)], &Mode::Retain(3)).expect("plan");
        assert!(p.backups.is_empty() && p.wal_below.is_none());
        assert!(!p.deletes_wal(&key(1, 1)));
    }

    #[test]
    fn a_delta_keeps_the_backups_it_builds_on() {
        let mut d = b("d", 400, 30, 31, true);
        d.parent = Some("b2".into());
        let mut target = b("b4", 500, 40, 41, false);
        let all = vec![b("b1", 100, 2, 3, false), b("b2", 200, 10, 11, false), d.clone(), target.clone()];
        let p = plan(all, &Mode::Retain(1)).expect("plan");
        assert_eq!(p.backups, ["b1"], "b2 stays: the permanent delta d builds on it");
        assert!(!p.deletes_wal(&key(1, 10)), "and so does its WAL");
        assert!(p.deletes_wal(&key(1, 9)));
        target.parent = Some("d".into());
        let all = vec![b("b1", 100, 2, 3, false), b("b2", 200, 10, 11, false), d, target];
        assert!(plan(all, &Mode::Retain(1)).is_err(), "retain stopping at a delta fails, as in WAL-G");
    }

    #[test]
    fn before_an_unknown_backup_is_an_error() {
        assert!(plan(vec![b("b1", 100, 2, 3, false)], &Mode::Before("nope".into())).is_err());
    }

    mod hostile {
        //! Sentinels are whatever the bucket holds: any order, any parents (missing, looping),
        //! any permanent flags. A plan is made or refused, never a panic, and what it keeps
        //! stays restorable.
        use super::*;
        use proptest::prelude::*;

        fn backups() -> impl Strategy<Value = Vec<Backup>> {
            proptest::collection::vec(
                (any::<i64>(), 0u64..50, 0u64..5, any::<bool>(), proptest::option::of(0usize..10)),
                0..8,
            )
            .prop_map(|v| {
                v.into_iter()
                    .enumerate()
                    .map(|(i, (t, start, len, permanent, parent))| Backup {
                        name: format!("b{i}"),
                        order: (chrono::DateTime::from_timestamp(t % 4_000_000_000, 0), start),
                        start_segno: start,
                        finish_segno: start + len,
                        permanent,
                        parent: parent.map(|p| format!("b{p}")),
                    })
                    .collect()
            })
        }

        fn mode() -> impl Strategy<Value = Mode> {
            prop_oneof![
                (0usize..10).prop_map(Mode::Retain),
                (0usize..10).prop_map(Mode::RetainFull),
                (0usize..10).prop_map(Mode::RetainFindFull),
                (0usize..10).prop_map(|i| Mode::Before(format!("b{i}"))),
                any::<bool>().prop_map(|force| Mode::Everything { force }),
            ]
        }

        proptest! {
            #[test]
            fn a_plan_over_any_sentinels_never_deletes_a_permanent_backup_or_what_a_kept_one_needs(
                all in backups(),
                mode in mode(),
            ) {
                let Ok(p) = plan(all.clone(), &mode) else { return Ok(()) };
                if matches!(mode, Mode::Everything { .. }) {
                    return Ok(());
                }
                let doomed = |n: &str| p.backups.iter().any(|d| d == n);
                for b in all.iter().filter(|b| !doomed(&b.name)) {
                    // Every backup it builds on stays.
                    let mut at = b.parent.as_deref();
                    for _ in 0..all.len() {
                        let Some(parent) = at else { break };
                        prop_assert!(!doomed(parent), "{} is kept but {parent}, which it builds on, goes", b.name);
                        at = all.iter().find(|x| x.name == parent).and_then(|x| x.parent.as_deref());
                    }
                    // Its WAL stays: from its start (permanent: its whole range).
                    let last = if b.permanent { b.finish_segno } else { b.start_segno };
                    for seg in b.start_segno..=last {
                        prop_assert!(!p.deletes_wal(&key(1, seg)), "WAL segment {seg} of kept {} goes", b.name);
                    }
                }
                prop_assert!(all.iter().filter(|b| b.permanent).all(|b| !doomed(&b.name)), "a permanent backup goes");
            }
        }
    }
}
