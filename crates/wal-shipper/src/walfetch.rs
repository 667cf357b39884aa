//! `wal-fetch` (restore_command) and its prefetch.
//!
//! - A missing file exits 74, as WAL-G (PostgreSQL reads any non-zero as "not there").
//! - `%p` never holds a partial file: the content goes to a temp file beside it, is fsynced,
//!   then renamed over `%p`, and the folder is fsynced. A failure (disk full, a corrupted
//!   object) removes the temp file.
//! - After a segment is served, the next `WALG_DOWNLOAD_CONCURRENCY` segments are fetched in
//!   the background (a detached `wal-shipper wal-prefetch`), into `<folder of %p>/.wal-g/prefetch`
//!   (or `WALG_PREFETCH_DIR`), through a `running/` folder so only complete files appear there.
//!   Files older than the one asked for are pruned, so the folder stays bounded.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::codec::{self, Codec, Method};
use crate::storage::Store;
use crate::walname::{DEFAULT_SEGMENT_SIZE, Segment, WalFile};
use crate::walpush::WAL_DIR;

/// Why a fetch did not produce the file.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{0} is not in the archive")]
    NotFound(String),
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

/// The order in which object names are tried: the configured method first (it is what this
/// archive is most likely written with), then the others.
pub fn candidates(name: &str, preferred: Method) -> Vec<(Method, String)> {
    std::iter::once(preferred)
        .chain(Method::READ_ORDER.into_iter().filter(|m| *m != preferred))
        .map(|m| (m, format!("{WAL_DIR}/{}", m.object_name(name))))
        .collect()
}

/// Downloads and decodes WAL file `name`.
pub async fn download(store: &Store, codec: &Codec, name: &str) -> Result<Vec<u8>, FetchError> {
    for (method, key) in candidates(name, codec.method) {
        if let Some(obj) = store.get(&key).await? {
            let key_for = codec.key.clone();
            let plain = tokio::task::spawn_blocking(move || codec::decode(method, key_for.as_ref(), &obj))
                .await
                .context("decode")?
                .map_err(|e| anyhow::anyhow!("{key} cannot be read: {e}"))?;
            return Ok(plain);
        }
    }
    Err(FetchError::NotFound(name.to_owned()))
}

/// Writes `data` to `dest` through a temp file, fsync and rename; never leaves a partial `dest`.
pub fn write_atomically(dest: &Path, data: &[u8]) -> anyhow::Result<()> {
    let dir = dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = dest.file_name().and_then(|n| n.to_str()).unwrap_or("wal");
    let tmp = dir.join(format!(".{name}.wal-shipper-{}.tmp", std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, dest)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("write {}", dest.display()));
    }
    Ok(())
}

/// The prefetch folder for a restore into `dest`.
pub fn prefetch_dir(dest: &Path, configured: Option<&Path>) -> PathBuf {
    match configured {
        Some(p) => p.to_owned(),
        None => dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).join(".wal-g/prefetch"),
    }
}

/// Serves `name` from the prefetch folder if it is there (moves it to `dest`).
pub fn take_prefetched(dir: &Path, name: &str, dest: &Path) -> bool {
    let src = dir.join(name);
    if !src.exists() {
        return false;
    }
    if std::fs::rename(&src, dest).is_ok() {
        let parent = dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        return std::fs::File::open(parent).and_then(|d| d.sync_all()).is_ok();
    }
    // Another filesystem: copy through the atomic path.
    match std::fs::read(&src) {
        Ok(data) => {
            let ok = write_atomically(dest, &data).is_ok();
            let _ = std::fs::remove_file(&src);
            ok
        }
        Err(_) => false,
    }
}

/// The segments to prefetch after `name`: the next `n` on its timeline.
pub fn next_segments(name: &str, n: usize) -> Vec<String> {
    match WalFile::parse(name, DEFAULT_SEGMENT_SIZE) {
        Some(WalFile::Segment(s)) => {
            let mut out = Vec::with_capacity(n);
            let mut cur = s;
            for _ in 0..n {
                cur = cur.next();
                out.push(cur.name(DEFAULT_SEGMENT_SIZE));
            }
            out
        }
        _ => vec![],
    }
}

/// Removes prefetched segments older than `name` (PostgreSQL will not ask for them again).
pub fn prune(dir: &Path, name: &str) {
    let Some(cur) = Segment::parse(name, DEFAULT_SEGMENT_SIZE) else { return };
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let n = e.file_name();
        if let Some(s) = n.to_str().and_then(|n| Segment::parse(n, DEFAULT_SEGMENT_SIZE))
            && s < cur
        {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Fetches the segments after `name` into `dir`, `concurrency` at a time. Runs in a detached
/// process; a lock file keeps one prefetcher per folder.
pub async fn prefetch(store: &Store, codec: &Codec, name: &str, dir: &Path, count: usize) -> anyhow::Result<()> {
    let running = dir.join("running");
    std::fs::create_dir_all(&running).with_context(|| format!("create {}", running.display()))?;
    let lock = std::fs::File::create(dir.join(".lock")).context("open the prefetch lock")?;
    if lock.try_lock().is_err() {
        return Ok(());
    }
    prune(dir, name);
    let wanted: Vec<String> = next_segments(name, count).into_iter().filter(|n| !dir.join(n).exists()).collect();
    let mut set = tokio::task::JoinSet::new();
    for n in wanted {
        let (store, codec, dir, running) = (store.clone(), codec.clone(), dir.to_owned(), running.clone());
        set.spawn(async move {
            match download(&store, &codec, &n).await {
                Ok(data) => {
                    let tmp = running.join(&n);
                    let done = write_atomically(&tmp, &data).and_then(|_| {
                        std::fs::rename(&tmp, dir.join(&n))
                            .with_context(|| format!("move {n} into the prefetch folder"))
                    });
                    if let Err(e) = done {
                        tracing::warn!(file = %n, error = %format!("{e:#}"), "prefetch failed");
                    }
                }
                Err(FetchError::NotFound(_)) => {}
                Err(e) => tracing::warn!(file = %n, error = %e, "prefetch failed"),
            }
        });
    }
    while set.join_next().await.is_some() {}
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configured_method_is_tried_first_then_every_other() {
        let c = candidates("000000010000000000000001", Method::Zstd);
        let keys: Vec<&str> = c.iter().map(|(_, k)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "wal_005/000000010000000000000001.zst",
                "wal_005/000000010000000000000001.lz4",
                "wal_005/000000010000000000000001.br",
                "wal_005/000000010000000000000001",
            ]
        );
    }

    #[test]
    fn prefetch_follows_the_timeline_and_skips_history_files() {
        assert_eq!(
            next_segments("0000000200000000000000FE", 3),
            ["0000000200000000000000FF", "000000020000000100000000", "000000020000000100000001"]
        );
        assert!(next_segments("00000002.history", 3).is_empty());
    }

    #[test]
    fn a_failed_write_leaves_no_file_at_the_destination() {
        let d = tempfile::tempdir().expect("tmp");
        let dest = d.path().join("missing-dir/RECOVERYXLOG");
        assert!(write_atomically(&dest, b"x").is_err());
        assert!(!dest.exists());
        let dest = d.path().join("RECOVERYXLOG");
        write_atomically(&dest, b"abc").expect("write");
        assert_eq!(std::fs::read(&dest).expect("read"), b"abc");
        assert_eq!(std::fs::read_dir(d.path()).expect("ls").count(), 1, "no temp file left");
    }

    #[test]
    fn pruning_removes_only_older_segments() {
        let d = tempfile::tempdir().expect("tmp");
        for n in ["000000010000000000000001", "000000010000000000000005", "00000002.history"] {
            std::fs::write(d.path().join(n), b"x").expect("w");
        }
        prune(d.path(), "000000010000000000000003");
        assert!(!d.path().join("000000010000000000000001").exists());
        assert!(d.path().join("000000010000000000000005").exists());
        assert!(d.path().join("00000002.history").exists());
    }
}
