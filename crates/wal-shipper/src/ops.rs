//! The I/O shells of `delete` and `wal-verify` (their decisions are in [`crate::retention`]
//! and [`crate::verify`]).

use anyhow::Context;
use serde_json::json;

use crate::backup::{self, BACKUP_DIR, SENTINEL_SUFFIX};
use crate::codec;
use crate::retention::{self, Mode};
use crate::settings::Settings;
use crate::storage::Store;
use crate::verify::{self, Status};
use crate::walname::{DEFAULT_SEGMENT_SIZE, Lsn, Segment, parse_history};
use crate::walpush::WAL_DIR;

/// Parses WAL-G's `delete` arguments: `retain [FULL|FIND_FULL] N`, `before [FIND_FULL] NAME`,
/// `everything [FORCE]`.
pub fn parse_delete(args: &[String]) -> anyhow::Result<Mode> {
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    let count = |n: &str| n.parse::<usize>().with_context(|| format!("retain: {n:?} is not a number"));
    match words.as_slice() {
        ["retain", n] => Ok(Mode::Retain(count(n)?)),
        ["retain", "FULL", n] => Ok(Mode::RetainFull(count(n)?)),
        ["retain", "FIND_FULL", n] => Ok(Mode::RetainFindFull(count(n)?)),
        ["before", "FIND_FULL", name] | ["before", name] => Ok(Mode::Before((*name).to_owned())),
        ["everything"] => Ok(Mode::Everything { force: false }),
        ["everything", "FORCE"] => Ok(Mode::Everything { force: true }),
        _ => anyhow::bail!(
            "usage: delete retain [FULL|FIND_FULL] N | before [FIND_FULL] NAME | everything [FORCE] [--confirm]"
        ),
    }
}

/// `delete`: prints the plan; with `confirm`, carries it out (sentinels first, so a half-done
/// delete never leaves a visible backup without its parts).
pub async fn delete(store: &Store, s: &Settings, mode: &Mode, confirm: bool) -> anyhow::Result<()> {
    let known = backup::list_known(store, s.download_concurrency).await?;
    let infos: Vec<retention::Backup> = known
        .iter()
        .map(|k| {
            let start = k.sentinel.lsn.unwrap_or(0);
            retention::Backup {
                name: k.listed.name.clone(),
                order: (k.sentinel.start_time, start),
                start_segno: k.listed.start_segment().map_or(start / DEFAULT_SEGMENT_SIZE, |s| s.number),
                finish_segno: k.sentinel.finish_lsn.unwrap_or(start) / DEFAULT_SEGMENT_SIZE,
                permanent: k.sentinel.is_permanent,
                parent: k.sentinel.delta_from.clone(),
            }
        })
        .collect();
    let plan = retention::plan(infos, mode)?;
    let sentinels: Vec<String> = plan.backups.iter().map(|n| backup::sentinel_key(n)).collect();
    let mut rest = Vec::new();
    let mut bytes = 0u64;
    if matches!(mode, Mode::Everything { .. }) {
        // One listing: every backup's parts, and parts of backups that never got a sentinel.
        for o in store.list_all(BACKUP_DIR).await?.into_iter().filter(|o| !o.name.ends_with(SENTINEL_SUFFIX)) {
            bytes += o.size;
            rest.push(format!("{BACKUP_DIR}/{}", o.name));
        }
    } else {
        for name in &plan.backups {
            for o in store.list_all(&backup::backup_dir(name)).await? {
                bytes += o.size;
                rest.push(format!("{}/{}", backup::backup_dir(name), o.name));
            }
        }
    }
    let mut wal = Vec::new();
    for o in store.list_all(WAL_DIR).await? {
        if plan.deletes_wal(&o.name) {
            bytes += o.size;
            wal.push(format!("{WAL_DIR}/{}", o.name));
        }
    }
    for b in &plan.backups {
        tracing::info!(backup = %b, "backup marked for deletion");
    }
    tracing::info!(
        backups = plan.backups.len(),
        wal_objects = wal.len(),
        objects = sentinels.len() + rest.len() + wal.len(),
        bytes,
        dry_run = !confirm,
        "delete plan"
    );
    if !confirm {
        println!(
            "dry run: would delete {} backup(s) and {} WAL object(s), {} bytes; add --confirm to delete",
            plan.backups.len(),
            wal.len(),
            bytes
        );
        return Ok(());
    }
    let progress = crate::progress::Progress::start("delete", (sentinels.len() + rest.len() + wal.len()) as u64);
    for batch in [sentinels, rest, wal] {
        for chunk in batch.chunks(1000) {
            store.delete_many(chunk).await?;
            progress.add(chunk.len() as u64);
        }
    }
    progress.finish();
    println!("deleted {} backup(s)", plan.backups.len());
    Ok(())
}

/// The cluster's current segment and timeline, if PostgreSQL answers.
async fn cluster_position(s: &Settings) -> Option<(u32, u64)> {
    let db = tokio::time::timeout(std::time::Duration::from_secs(5), crate::backup::push::connect(&s.pg))
        .await
        .ok()?
        .ok()?;
    let row = db
        .query_one(
            "SELECT (SELECT timeline_id FROM pg_control_checkpoint()),
                    (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END)::text",
            &[],
        )
        .await
        .ok()?;
    let tli: i32 = row.get(0);
    let lsn = Lsn::parse(&row.get::<_, String>(1))?;
    Some((tli as u32, lsn.0 / DEFAULT_SEGMENT_SIZE))
}

/// `wal-verify integrity|timeline`. Exits non-zero (an error) when a check fails.
pub async fn wal_verify(store: &Store, s: &Settings, checks: &[String], as_json: bool) -> anyhow::Result<()> {
    let listing = store.list_all(WAL_DIR).await?;
    let (segs, hist) = verify::parse_listing(listing.iter().map(|e| e.name.as_str()));
    let highest_stored = segs.iter().map(|s| s.timeline).chain(hist.keys().copied()).max().unwrap_or(1);
    let cluster = cluster_position(s).await;
    let mut out = serde_json::Map::new();
    let mut failed = false;
    for check in checks {
        match check.as_str() {
            "integrity" => {
                let (tli, to) = match cluster {
                    // The segment being written is not archived yet: check up to the one before.
                    Some((t, cur)) => (t, cur.saturating_sub(1)),
                    None => {
                        let last: Option<&Segment> = segs.iter().filter(|s| s.timeline == highest_stored).max();
                        (highest_stored, last.map_or(0, |s| s.number))
                    }
                };
                let history = match hist.get(&tli) {
                    Some(obj) => {
                        let (method, _) = codec::Method::from_object_name(obj);
                        let raw = store.get(&format!("{WAL_DIR}/{obj}")).await?.unwrap_or_default();
                        let text =
                            codec::decode(method, s.codec.key.as_ref(), &raw).with_context(|| format!("read {obj}"))?;
                        parse_history(&String::from_utf8_lossy(&text))
                    }
                    None => vec![],
                };
                // From the oldest backup that retention keeps whole WAL for (non-permanent),
                // to now; permanent backups older than that need only their own range.
                let known = backup::list_known(store, s.download_concurrency).await?;
                let start_of = |k: &backup::Known| k.listed.start_segment();
                let from = known
                    .iter()
                    .filter(|k| !k.sentinel.is_permanent)
                    .filter_map(start_of)
                    .map(|s| s.number)
                    .min()
                    .or_else(|| known.iter().filter_map(start_of).map(|s| s.number).min())
                    .or_else(|| segs.iter().map(|s| s.number).min())
                    .unwrap_or(0);
                let mut runs = Vec::new();
                let mut status = Status::Ok;
                for k in known.iter().filter(|k| k.sentinel.is_permanent) {
                    if let Some(start) = start_of(k).filter(|st| st.number < from) {
                        let finish = k.sentinel.finish_lsn.unwrap_or(0) / DEFAULT_SEGMENT_SIZE;
                        let (st, r) =
                            verify::integrity(&segs, start.timeline, &[], start.number, finish.max(start.number), 0);
                        status = status.max(st);
                        runs.extend(r);
                    }
                }
                let (st, r) = verify::integrity(&segs, tli, &history, from, to.max(from), s.upload_concurrency as u64);
                let status = status.max(st);
                runs.extend(r);
                failed |= status == Status::Failure;
                if !as_json {
                    println!("[wal-verify] integrity check status: {}", json!(status).as_str().unwrap_or(""));
                    println!("[wal-verify] integrity check details:");
                    println!("{:<4} {:<24} {:<24} {:>14} STATUS", "TLI", "START", "END", "SEGMENTS COUNT");
                    for r in &runs {
                        println!(
                            "{:<4} {:<24} {:<24} {:>14} {}",
                            r.timeline_id,
                            r.start_segment,
                            r.end_segment,
                            r.segments_count,
                            json!(r.status).as_str().unwrap_or("")
                        );
                    }
                }
                out.insert("integrity".into(), json!({"status": status, "details": runs}));
            }
            "timeline" => {
                let current = cluster.map(|c| c.0);
                let status = verify::timeline(current, highest_stored);
                failed |= status == Status::Failure;
                if !as_json {
                    println!("[wal-verify] timeline check status: {}", json!(status).as_str().unwrap_or(""));
                    println!("[wal-verify] timeline check details:");
                    println!("Highest timeline found in storage: {highest_stored}");
                    match current {
                        Some(c) => println!("Current cluster timeline: {c}"),
                        None => println!("Current cluster timeline: unknown (PostgreSQL did not answer)"),
                    }
                }
                out.insert(
                    "timeline".into(),
                    json!({"status": status, "details": {"current_timeline_id": current, "highest_storage_timeline_id": highest_stored}}),
                );
            }
            other => anyhow::bail!("unknown wal-verify check {other:?} (integrity, timeline)"),
        }
    }
    if as_json {
        println!("{}", serde_json::to_string_pretty(&out).context("encode")?);
    }
    anyhow::ensure!(!failed, "wal-verify found a failure");
    Ok(())
}
