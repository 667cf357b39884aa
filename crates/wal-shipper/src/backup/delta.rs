//! Delta backups in WAL-G's format: which backup a new one builds on, and how each file goes
//! into it. Pure, except [`find_parent`], which reads the candidates from storage.
//!
//! - A delta is taken when `WALG_DELTA_MAX_STEPS` > 0, the chain under LATEST is shorter
//!   than that, the parent is not permanent (unless the new backup is), it belongs to the
//!   same cluster (system identifier) and **the same timeline**. WAL-G also builds across a
//!   promotion; we take a full backup there, because pages the new timeline wrote before the
//!   parent's start LSN but after the branch point would be missed by "LSN >= parent start".
//! - A file is skipped when its mtime equals the parent's record **and** lies more than
//!   [`SETTLE`] before the parent started: the parent then read it after its last write.
//!   WAL-G skips on an equal mtime alone, which misses a write in the same clock tick as the
//!   parent's read.
//! - A paged file the parent knew goes as an increment (pages with LSN >= the parent's start
//!   LSN, and new pages); everything else whole.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use chrono::{DateTime, Utc};

use super::pages::is_paged_file;
use super::push::{How, Item};
use super::sentinel::{FileMeta, FilesMetadata, Sentinel};
use super::{Known, backup_dir, chronological};
use crate::settings::{DeltaOrigin, Settings};
use crate::storage::Store;

/// How long before the parent's start a file's last write must lie for it to be skipped.
pub const SETTLE: Duration = Duration::from_secs(2);

/// The backup a delta builds on.
#[derive(Debug, Clone)]
pub struct Parent {
    pub name: String,
    pub sentinel: Sentinel,
    pub files: FilesMetadata,
    /// The new backup's `DeltaCount`.
    pub count: i64,
}

impl Parent {
    /// `base_<start>_D_<the parent's start segment>`.
    pub fn delta_name(&self, base: &str) -> String {
        let parent_seg = self.name.strip_prefix("base_").map(|r| &r[..24.min(r.len())]).unwrap_or_default();
        format!("{base}_D_{parent_seg}")
    }

    /// The root full backup of the chain.
    pub fn full_name(&self) -> String {
        self.sentinel.delta_full_name.clone().unwrap_or_else(|| self.name.clone())
    }
}

/// What the server looks like when a backup starts, for [`choose`].
#[derive(Debug, Clone, Copy)]
pub struct Server {
    pub system_identifier: Option<u64>,
    pub timeline: u32,
    pub permanent: bool,
}

/// The choice between a full backup (and why) and a delta over a named parent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    Full(String),
    Delta { parent: String, count: i64 },
}

/// Chooses what to build on among `known` (any order).
pub fn choose(known: &[Known], max_steps: u32, origin: DeltaOrigin, server: Server) -> Choice {
    if max_steps == 0 {
        return Choice::Full("WALG_DELTA_MAX_STEPS is 0".into());
    }
    let mut all = known.to_vec();
    chronological(&mut all);
    let Some(latest) = all.last() else { return Choice::Full("there is no backup to build on".into()) };
    let count = latest.sentinel.delta_count.unwrap_or(0) + 1;
    if count > max_steps as i64 {
        return Choice::Full(format!(
            "{} ends a chain of {} deltas (WALG_DELTA_MAX_STEPS = {max_steps})",
            latest.listed.name,
            count - 1
        ));
    }
    let parent = match origin {
        DeltaOrigin::Latest => Some(latest),
        DeltaOrigin::LatestFull => all.iter().rev().find(|k| k.sentinel.delta_from.is_none()),
    };
    let Some(parent) = parent else { return Choice::Full("there is no full backup to build on".into()) };
    let name = &parent.listed.name;
    if parent.sentinel.is_permanent && !server.permanent {
        return Choice::Full(format!("{name} is permanent; a delta over it must be permanent too"));
    }
    if let (Some(a), Some(b)) = (parent.sentinel.system_identifier, server.system_identifier)
        && a != b
    {
        return Choice::Full(format!("{name} is of another cluster (system identifier {a}, the server's {b})"));
    }
    match parent.listed.start_segment() {
        Some(seg) if seg.timeline == server.timeline => Choice::Delta { parent: name.clone(), count },
        Some(seg) => Choice::Full(format!(
            "{name} is on timeline {}, the server on {}: a delta does not cross a promotion",
            seg.timeline, server.timeline
        )),
        None => Choice::Full(format!("{name} names no start segment")),
    }
}

/// The parent of a new backup, read from storage; `None` (with the reason logged) for a
/// full backup.
pub async fn find_parent(store: &Store, s: &Settings, server: Server) -> anyhow::Result<Option<Parent>> {
    if s.delta_max_steps == 0 {
        return Ok(None);
    }
    let known = super::list_known(store, s.download_concurrency).await?;
    let (name, count) = match choose(&known, s.delta_max_steps, s.delta_origin, server) {
        Choice::Full(why) => {
            tracing::info!(reason = %why, "taking a full backup");
            return Ok(None);
        }
        Choice::Delta { parent, count } => (parent, count),
    };
    let sentinel = known.iter().find(|k| k.listed.name == name).map(|k| k.sentinel.clone()).context("parent")?;
    let key = format!("{}/files_metadata.json", backup_dir(&name));
    let Some(bytes) = store.get(&key).await? else {
        tracing::info!(parent = %name, "the parent has no files_metadata.json; taking a full backup");
        return Ok(None);
    };
    let files: FilesMetadata = serde_json::from_slice(&bytes).with_context(|| format!("read {key}"))?;
    Ok(Some(Parent { name, sentinel, files, count }))
}

fn micros(t: SystemTime) -> i64 {
    DateTime::<Utc>::from(t).timestamp_micros()
}

/// Keys of `files_metadata.json` as WAL-G and we write them (with or without a leading `/`).
pub fn normalize(rel: &str) -> &str {
    rel.trim_start_matches("./").trim_start_matches('/')
}

/// How `it` goes into a delta: `known` is the parent's record of the file (if it had one),
/// `parent_start` when the parent started.
fn how(it: &Item, known: Option<&FileMeta>, parent_start: Option<DateTime<Utc>>) -> How {
    let Some(meta) = known.filter(|_| !it.dir) else { return How::Whole };
    let settled =
        parent_start.is_some_and(|start| micros(it.mtime) + (SETTLE.as_micros() as i64) < start.timestamp_micros());
    if settled && meta.mtime.map(|m| m.timestamp_micros()) == Some(micros(it.mtime)) {
        return How::Skip;
    }
    if is_paged_file(&it.rel, it.size) { How::Increment } else { How::Whole }
}

/// Sets `how` on every item of a backup over `parent` (`None`: a full backup, all whole),
/// looking each file up in the parent's records through one index.
pub fn plan(items: &mut [Item], parent: Option<&Parent>) {
    let Some(p) = parent else { return };
    let index: HashMap<&str, &FileMeta> = p.files.files.iter().map(|(k, m)| (normalize(k), m)).collect();
    for it in items.iter_mut() {
        it.how = how(it, index.get(it.rel.as_str()).copied(), p.sentinel.start_time);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::Listed;

    fn known(name: &str, t: i64, count: Option<i64>, permanent: bool) -> Known {
        let mut s = Sentinel {
            start_time: DateTime::from_timestamp(t, 0),
            delta_count: count,
            is_permanent: permanent,
            system_identifier: Some(7),
            ..Default::default()
        };
        if count.is_some() {
            s.delta_from = Some("base_000000010000000000000002".into());
        }
        Known {
            listed: Listed { name: name.into(), modified: DateTime::from_timestamp(t, 0).expect("t") },
            sentinel: s,
        }
    }

    const SERVER: Server = Server { system_identifier: Some(7), timeline: 1, permanent: false };
    const FULL: &str = "base_000000010000000000000002";
    const D1: &str = "base_000000010000000000000004_D_000000010000000000000002";

    #[test]
    fn a_delta_builds_on_the_latest_until_the_chain_is_max_steps_long() {
        let full = known(FULL, 100, None, false);
        let d1 = known(D1, 200, Some(1), false);
        assert_eq!(
            choose(std::slice::from_ref(&full), 2, DeltaOrigin::Latest, SERVER),
            Choice::Delta { parent: FULL.into(), count: 1 }
        );
        assert_eq!(
            choose(&[d1.clone(), full.clone()], 2, DeltaOrigin::Latest, SERVER),
            Choice::Delta { parent: D1.into(), count: 2 }
        );
        assert!(matches!(choose(&[full.clone(), d1.clone()], 1, DeltaOrigin::Latest, SERVER), Choice::Full(_)));
        assert_eq!(
            choose(&[full.clone(), d1], 2, DeltaOrigin::LatestFull, SERVER),
            Choice::Delta { parent: FULL.into(), count: 2 },
            "LATEST_FULL builds on the full backup but counts from LATEST"
        );
        assert!(matches!(choose(&[full], 0, DeltaOrigin::Latest, SERVER), Choice::Full(_)));
        assert!(matches!(choose(&[], 3, DeltaOrigin::Latest, SERVER), Choice::Full(_)));
    }

    #[test]
    fn no_delta_over_a_permanent_backup_another_cluster_or_another_timeline() {
        let p = known(FULL, 100, None, true);
        assert!(matches!(choose(std::slice::from_ref(&p), 3, DeltaOrigin::Latest, SERVER), Choice::Full(_)));
        let permanent = Server { permanent: true, ..SERVER };
        assert!(matches!(choose(&[p], 3, DeltaOrigin::Latest, permanent), Choice::Delta { .. }));
        let full = known(FULL, 100, None, false);
        let other = Server { system_identifier: Some(8), ..SERVER };
        assert!(matches!(choose(std::slice::from_ref(&full), 3, DeltaOrigin::Latest, other), Choice::Full(_)));
        let promoted = Server { timeline: 2, ..SERVER };
        assert!(matches!(choose(&[full], 3, DeltaOrigin::Latest, promoted), Choice::Full(_)));
    }

    fn parent(start: i64, files: &[(&str, i64)]) -> Parent {
        let mut fm = FilesMetadata::default();
        for (rel, mtime) in files {
            fm.files.insert(
                format!("/{rel}"),
                FileMeta { mtime: DateTime::from_timestamp(*mtime, 0), ..Default::default() },
            );
        }
        Parent {
            name: FULL.into(),
            sentinel: Sentinel { start_time: DateTime::from_timestamp(start, 0), ..Default::default() },
            files: fm,
            count: 1,
        }
    }

    fn item(rel: &str, mtime: i64, size: u64) -> Item {
        Item {
            rel: rel.into(),
            dir: false,
            size,
            mtime: SystemTime::UNIX_EPOCH + Duration::from_secs(mtime as u64),
            how: How::Whole,
        }
    }

    #[test]
    fn files_are_skipped_only_when_settled_before_the_parent_started() {
        let p =
            parent(1000, &[("base/5/16384", 500), ("base/5/16385", 999), ("base/5/16386", 500), ("PG_VERSION", 10)]);
        let mut items = vec![
            item("base/5/16384", 500, 8192),    // unchanged, long before the parent: skipped
            item("base/5/16385", 999, 8192),    // unchanged but written 1 s before the parent: scanned
            item("base/5/16386", 700, 8192),    // changed: increment
            item("base/5/16387", 700, 8192),    // new since the parent: whole
            item("PG_VERSION", 10, 3),          // unchanged non-paged file: skipped
            item("base/5/16386_vm", 700, 8192), // changed fork: whole
        ];
        plan(&mut items, Some(&p));
        let hows: Vec<How> = items.iter().map(|i| i.how).collect();
        assert_eq!(hows, [How::Skip, How::Increment, How::Increment, How::Whole, How::Skip, How::Whole]);
    }

    #[test]
    fn delta_names_carry_the_parents_start_segment() {
        let mut p = parent(0, &[]);
        p.name = D1.into();
        assert_eq!(
            p.delta_name("base_000000010000000000000009"),
            "base_000000010000000000000009_D_000000010000000000000004"
        );
    }
}
