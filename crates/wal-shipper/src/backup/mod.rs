//! Base backups in WAL-G's layout (`basebackups_005/`):
//!
//! ```text
//! base_<start segment>_backup_stop_sentinel.json   uploaded last: "this backup exists"
//! base_<start segment>/metadata.json
//! base_<start segment>/files_metadata.json
//! base_<start segment>/tar_partitions/part_001.tar.lz4 ... part_NNN.tar.lz4
//! base_<start segment>/tar_partitions/pg_control.tar.lz4   after every data part
//! base_<start segment>/tar_partitions/backup_label.tar.lz4 from pg_backup_stop
//! ```
//!
//! The sentinel and the metadata are plain JSON (neither compressed nor encrypted), so
//! listing and retention work without the key. [`sentinel`] holds WAL-G's JSON types;
//! ordering and the choice of LATEST are pure functions here.

pub mod delta;
pub mod fetch;
pub mod pages;
pub mod push;
pub mod sentinel;

use anyhow::Context;
use chrono::{DateTime, Utc};

use crate::storage::Store;
use crate::walname::{DEFAULT_SEGMENT_SIZE, Segment, first_segment_in};
use sentinel::Sentinel;

pub const BACKUP_DIR: &str = "basebackups_005";
pub const SENTINEL_SUFFIX: &str = "_backup_stop_sentinel.json";

/// The object key of a backup's sentinel.
pub fn sentinel_key(name: &str) -> String {
    format!("{BACKUP_DIR}/{name}{SENTINEL_SUFFIX}")
}

/// The folder of a backup's parts.
pub fn backup_dir(name: &str) -> String {
    format!("{BACKUP_DIR}/{name}")
}

/// The folder of a backup's tar partitions.
pub fn parts_dir(name: &str) -> String {
    format!("{}/tar_partitions", backup_dir(name))
}

/// Whether `name` is a backup name WAL-G (or WAL-E) could have written.
pub fn is_backup_name(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("base_") else { return false };
    let hex24 = |s: &str| s.len() == 24 && s.bytes().all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b));
    match rest.len() {
        24 => hex24(rest),
        // base_X_D_Y (delta) or base_X_OOOOOOOO (WAL-E offset)
        _ => {
            let (head, tail) = rest.split_at(24.min(rest.len()));
            hex24(head)
                && (tail.strip_prefix("_D_").is_some_and(hex24)
                    || tail.strip_prefix('_').is_some_and(|o| o.len() == 8 && o.bytes().all(|b| b.is_ascii_hexdigit())))
        }
    }
}

/// A backup as listing finds it: its name and the sentinel object's time.
#[derive(Debug, Clone)]
pub struct Listed {
    pub name: String,
    pub modified: DateTime<Utc>,
}

impl Listed {
    /// The start segment named in the backup's name.
    pub fn start_segment(&self) -> Option<Segment> {
        first_segment_in(&self.name, DEFAULT_SEGMENT_SIZE)
    }
}

/// Every backup with a sentinel (only `basebackups_005/`, one listing, never the WAL folder),
/// ordered by (timeline, segment) of the name, then name.
pub async fn list(store: &Store) -> anyhow::Result<Vec<Listed>> {
    let (objects, _) = store.list_dir(BACKUP_DIR).await?;
    let mut out: Vec<Listed> = objects
        .into_iter()
        .filter_map(|e| {
            let name = e.name.strip_suffix(SENTINEL_SUFFIX)?;
            is_backup_name(name).then(|| Listed { name: name.to_owned(), modified: e.modified })
        })
        .collect();
    out.sort_by(|a, b| (a.start_segment(), &a.name).cmp(&(b.start_segment(), &b.name)));
    Ok(out)
}

/// Reads one backup's sentinel.
pub async fn read_sentinel(store: &Store, name: &str) -> anyhow::Result<Sentinel> {
    let key = sentinel_key(name);
    let bytes = store.get(&key).await?.with_context(|| format!("backup {name} not found (no {key})"))?;
    serde_json::from_slice(&bytes).with_context(|| format!("{key} is not a backup sentinel"))
}

/// A backup with its sentinel read.
#[derive(Debug, Clone)]
pub struct Known {
    pub listed: Listed,
    pub sentinel: Sentinel,
}

/// Every backup with its sentinel (one GET each, `download_concurrency` at a time).
pub async fn list_known(store: &Store, concurrency: usize) -> anyhow::Result<Vec<Known>> {
    use futures::StreamExt;
    let listed = list(store).await?;
    let results: Vec<anyhow::Result<Known>> = futures::stream::iter(listed)
        .map(|l| async move {
            let sentinel = read_sentinel(store, &l.name).await?;
            Ok(Known { listed: l, sentinel })
        })
        .buffered(concurrency.max(1))
        .collect()
        .await;
    results.into_iter().collect()
}

/// The chronological order of backups: by the backup's own start time, then its start LSN,
/// and only where a sentinel has neither (WAL-E), by the storage's modification time, which
/// copying or tiering can change (WAL-G issues #694, #1770).
pub fn chronological(backups: &mut [Known]) {
    backups.sort_by(|a, b| {
        let key = |k: &Known| (k.sentinel.start_time, k.sentinel.lsn.unwrap_or(0), k.listed.modified);
        key(a).cmp(&key(b))
    });
}

/// The newest backup by [`chronological`] order.
pub fn latest(mut backups: Vec<Known>) -> Option<Known> {
    chronological(&mut backups);
    backups.pop()
}

/// Parses a recovery target time: RFC 3339, or PostgreSQL's `2026-12-03 10:00:00[.ffffff]+00`.
pub fn parse_target_time(t: &str) -> anyhow::Result<DateTime<Utc>> {
    let t = t.trim();
    DateTime::parse_from_rfc3339(t)
        .or_else(|_| DateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S%.f%#z"))
        .map(|d| d.with_timezone(&Utc))
        .map_err(|_| anyhow::anyhow!("{t:?} is not a time with a zone (2026-12-03 10:00:00+00 or RFC 3339)"))
}

/// The newest backup (by [`chronological`] order) that finished at or before `target`.
pub async fn newest_before(store: &Store, s: &crate::settings::Settings, target: &str) -> anyhow::Result<String> {
    let at = parse_target_time(target)?;
    let all = list_known(store, s.download_concurrency).await?;
    let before: Vec<Known> = all.into_iter().filter(|k| k.sentinel.finish_time.is_some_and(|f| f <= at)).collect();
    latest(before).map(|k| k.listed.name).with_context(|| format!("no backup finished at or before {at}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_names_as_walg_and_wale_write_them() {
        assert!(is_backup_name("base_000000010000000000000002"));
        assert!(is_backup_name("base_000000010000000000000004_D_000000010000000000000002"));
        assert!(is_backup_name("base_000000010000000000000002_00000028"));
        assert!(!is_backup_name("base_00000001000000000000000"));
        assert!(!is_backup_name("base_000000010000000000000002_D_x"));
        assert!(!is_backup_name("wal_005"));
    }

    fn known(name: &str, start: Option<&str>, lsn: u64, modified: &str) -> Known {
        let mut s: Sentinel = serde_json::from_str("{}").expect("empty sentinel");
        s.start_time = start.map(|t| t.parse().expect("time"));
        s.lsn = Some(lsn);
        Known { listed: Listed { name: name.into(), modified: modified.parse().expect("time") }, sentinel: s }
    }

    #[test]
    fn target_times_parse_as_postgresql_and_rfc_3339_write_them() {
        let want: DateTime<Utc> = "2026-12-03T10:00:00.25Z".parse().expect("time");
        assert_eq!(parse_target_time("2026-12-03 10:00:00.25+00").expect("pg"), want);
        assert_eq!(parse_target_time("2026-12-03 12:00:00.25+02:00").expect("pg"), want);
        assert_eq!(parse_target_time("2026-12-03T10:00:00.25Z").expect("rfc"), want);
        assert!(parse_target_time("yesterday").is_err());
    }

    #[test]
    fn latest_is_by_the_backups_own_start_time_not_storage_mtime() {
        let a = known("base_A", Some("2026-01-02T00:00:00Z"), 10, "2026-05-01T00:00:00Z");
        let b = known("base_B", Some("2026-01-03T00:00:00Z"), 20, "2026-02-01T00:00:00Z");
        assert_eq!(latest(vec![a, b]).expect("one").listed.name, "base_B");
    }
}
