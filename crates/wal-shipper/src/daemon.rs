//! `wal-shipper daemon`: upload-ahead. It watches `pg_wal/archive_status/*.ready` and uploads
//! those files, oldest first, `WALG_UPLOAD_CONCURRENCY` at a time; after each durable upload
//! it writes a marker (`pg_wal/walg_data/walg_archive_status/<file>`, WAL-G's place), so the
//! archive_command's `wal-push` for that file returns at once without loading anything.
//!
//! Why killing it at any moment loses nothing: the marker is written only after the object
//! is stored, and PostgreSQL marks a file `.done` only when its own `wal-push` exits 0, which
//! it does either on a marker or after uploading the file itself. A daemon killed mid-upload
//! leaves no marker; the next push (ours or PostgreSQL's) uploads again, create-only.
//!
//! One loop: snapshot the folder, decide what to start ([`plan`], pure), start it, wait for
//! the poll interval, an upload's end or the stop signal.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::metrics::{Metrics, UploadResult};
use crate::settings::Settings;
use crate::storage::Store;
use crate::walpush;

/// A `.ready` file as the snapshot sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ready {
    pub name: String,
    pub since: SystemTime,
}

/// What the loop knows between snapshots.
#[derive(Debug, Default)]
pub struct State {
    pub in_flight: BTreeSet<String>,
    /// Files whose upload failed: not retried before the instant.
    pub retry_after: HashMap<String, (Instant, u32)>,
}

/// The files to start uploading now: oldest first, not in flight, not marked done, not in
/// back-off, at most `slots` of them.
pub fn plan(ready: &[Ready], marked: &BTreeSet<String>, state: &State, slots: usize, now: Instant) -> Vec<String> {
    let mut names: Vec<&Ready> = ready.iter().collect();
    names.sort_by(|a, b| a.name.cmp(&b.name));
    names
        .into_iter()
        .filter(|r| !marked.contains(&r.name) && !state.in_flight.contains(&r.name))
        .filter(|r| state.retry_after.get(&r.name).is_none_or(|(t, _)| *t <= now))
        .take(slots)
        .map(|r| r.name.clone())
        .collect()
}

/// Back-off after `failures` failed uploads of one file: 1 s doubling to 30 s.
pub fn backoff(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.min(5)).min(Duration::from_secs(30))
}

fn snapshot(pg_wal: &Path) -> anyhow::Result<(Vec<Ready>, BTreeSet<String>)> {
    let status = pg_wal.join("archive_status");
    let mut ready = Vec::new();
    for e in std::fs::read_dir(&status).with_context(|| format!("read {}", status.display()))?.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if let Some(name) = n.strip_suffix(".ready") {
            let since = e.metadata().and_then(|m| m.modified()).unwrap_or_else(|_| SystemTime::now());
            ready.push(Ready { name: name.to_owned(), since });
        }
    }
    let marked = match std::fs::read_dir(walpush::marker_dir(pg_wal)) {
        Ok(rd) => {
            rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| !n.starts_with('.')).collect()
        }
        Err(_) => BTreeSet::new(),
    };
    Ok((ready, marked))
}

/// Removes markers whose file PostgreSQL no longer lists as `.ready` (it archived the file
/// some other way), so the folder stays bounded.
fn prune_markers(pg_wal: &Path, ready: &[Ready], marked: &BTreeSet<String>) {
    for m in marked {
        if !ready.iter().any(|r| &r.name == m) {
            let _ = std::fs::remove_file(walpush::marker_dir(pg_wal).join(m));
        }
    }
}

/// Runs until `stop`. `beat` is set to the loop's last turn (for the systemd watchdog). A new
/// value in `settings` (a config reload) applies to the uploads started after it.
pub async fn run(
    store: Store,
    mut settings: tokio::sync::watch::Receiver<Arc<Settings>>,
    pgdata: PathBuf,
    metrics: Metrics,
    stop: CancellationToken,
    beat: Arc<std::sync::Mutex<Instant>>,
) -> anyhow::Result<()> {
    let pg_wal = pgdata.join("pg_wal");
    std::fs::create_dir_all(walpush::marker_dir(&pg_wal))
        .with_context(|| format!("create {}", walpush::marker_dir(&pg_wal).display()))?;
    let mut state = State::default();
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<(String, bool)>();
    let mut s = settings.borrow_and_update().clone();
    let mut reloadable = true;
    tracing::info!(pg_wal = %pg_wal.display(), storage = %store.describe, concurrency = s.upload_concurrency, "upload-ahead started");
    loop {
        *beat.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        let (ready, marked) = match snapshot(&pg_wal) {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "read the archive status");
                (vec![], BTreeSet::new())
            }
        };
        let waiting: Vec<&Ready> = ready.iter().filter(|r| !marked.contains(&r.name)).collect();
        metrics.backlog.set(waiting.len() as i64);
        let oldest = waiting.iter().map(|r| r.since).min();
        metrics.oldest_ready_age.set(oldest.and_then(|t| t.elapsed().ok()).map_or(0.0, |d| d.as_secs_f64()));
        prune_markers(&pg_wal, &ready, &marked);
        let slots = s.upload_concurrency.saturating_sub(state.in_flight.len());
        for name in plan(&ready, &marked, &state, slots, Instant::now()) {
            state.in_flight.insert(name.clone());
            metrics.in_flight.set(state.in_flight.len() as i64);
            let (store, s, pg_wal, metrics, tx) =
                (store.clone(), s.clone(), pg_wal.clone(), metrics.clone(), done_tx.clone());
            tokio::spawn(async move {
                let ok = upload_one(&store, &s, &pg_wal, &name, &metrics).await;
                let _ = tx.send((name, ok));
            });
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(s.daemon_poll) => {}
            r = settings.changed(), if reloadable => match r {
                Ok(()) => s = settings.borrow_and_update().clone(),
                Err(_) => reloadable = false,
            },
            Some((name, ok)) = done_rx.recv() => {
                state.in_flight.remove(&name);
                if ok {
                    state.retry_after.remove(&name);
                } else {
                    let n = state.retry_after.get(&name).map_or(0, |(_, n)| *n) + 1;
                    state.retry_after.insert(name, (Instant::now() + backoff(n), n));
                }
                metrics.in_flight.set(state.in_flight.len() as i64);
            }
        }
        state.retry_after.retain(|n, _| ready.iter().any(|r| &r.name == n));
    }
    tracing::info!("upload-ahead stopped");
    Ok(())
}

async fn upload_one(store: &Store, s: &Settings, pg_wal: &Path, name: &str, metrics: &Metrics) -> bool {
    let path = pg_wal.join(name);
    let data = match tokio::fs::read(&path).await {
        Ok(d) => d,
        // Archived and recycled meanwhile by PostgreSQL's own wal-push.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return true,
        Err(e) => {
            tracing::warn!(file = name, error = %e, "read WAL file");
            metrics.upload(UploadResult::Failed);
            return false;
        }
    };
    let len = data.len() as u64;
    let push = walpush::push_bytes(store, &s.codec, s.prevent_wal_overwrite, name, data.into());
    let push = async {
        let outcome = push.await?;
        if name.ends_with(".history") {
            walpush::backfill(store, &s.codec, pg_wal, name).await?;
        }
        anyhow::Ok(outcome)
    };
    match tokio::time::timeout(s.push_timeout, push).await {
        Ok(Ok(outcome)) => {
            if let Err(e) = walpush::write_marker(pg_wal, name) {
                tracing::warn!(file = name, error = %e, "write the uploaded marker");
            }
            metrics.upload(outcome.into());
            metrics.uploaded_bytes.inc_by(len);
            let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
            metrics.last_upload.set(now);
            tracing::debug!(file = name, outcome = ?outcome, "uploaded ahead");
            true
        }
        Ok(Err(e)) => {
            tracing::warn!(file = name, error = %format!("{e:#}"), "upload failed; will retry");
            metrics.upload(UploadResult::Failed);
            false
        }
        Err(_) => {
            tracing::warn!(file = name, timeout = ?s.push_timeout, "upload timed out; will retry");
            metrics.upload(UploadResult::Failed);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready(names: &[&str]) -> Vec<Ready> {
        names.iter().map(|n| Ready { name: (*n).into(), since: SystemTime::UNIX_EPOCH }).collect()
    }

    #[test]
    fn plan_takes_the_oldest_files_not_marked_not_in_flight_within_the_slots() {
        let r = ready(&[
            "000000010000000000000005",
            "000000010000000000000003",
            "000000010000000000000004",
            "00000002.history",
        ]);
        let marked: BTreeSet<String> = ["000000010000000000000003".to_owned()].into();
        let mut st = State::default();
        st.in_flight.insert("000000010000000000000004".into());
        let now = Instant::now();
        assert_eq!(plan(&r, &marked, &st, 1, now), ["000000010000000000000005"]);
        assert_eq!(plan(&r, &marked, &st, 5, now), ["000000010000000000000005", "00000002.history"]);
        st.retry_after.insert("000000010000000000000005".into(), (now + Duration::from_secs(5), 1));
        assert_eq!(plan(&r, &marked, &st, 5, now), ["00000002.history"]);
    }

    #[test]
    fn backoff_doubles_to_thirty_seconds() {
        assert_eq!(backoff(1), Duration::from_secs(2));
        assert_eq!(backoff(9), Duration::from_secs(30));
    }
}
