//! `backup-fetch DEST NAME|LATEST`: restore a base backup into an empty folder.
//!
//! - LATEST is the backup with the newest start time of its own ([`super::latest`]), never
//!   the storage's modification time.
//! - The key is checked first: `backup_label.tar` (the smallest part) is downloaded and
//!   decoded before anything is written, so a wrong or missing key fails with nothing on disk.
//! - Data parts are extracted `WALG_DOWNLOAD_CONCURRENCY` at a time, each streamed (download,
//!   decrypt, decompress, untar) with bounded buffers; every object is read to its end so
//!   its checksum (lz4 frame, zstd frame, libsodium MACs) is verified. `files_metadata.json`
//!   names every part, so a part missing from storage is an error, not a smaller database.
//! - A delta restores its chain oldest first (the full backup, then each delta): only the
//!   files the restored backup lists, each whole copy overwriting, each `wi1` increment
//!   applied in place to its parent's copy.
//! - `pg_control` after the data, `backup_label` last, then the folder is fsynced.

use std::io::{self, Read};
use std::path::Path;

use anyhow::{Context, bail};
use futures::StreamExt;

use std::collections::HashSet;
use std::sync::Arc;

use super::sentinel::FilesMetadata;
use super::{Known, backup_dir, list_known, read_sentinel};
use super::{delta, pages};
use crate::codec::{self, Method};
use crate::progress::Progress;
use crate::settings::Settings;
use crate::storage::Store;

/// Resolves `LATEST` (or checks a name) to a backup name.
pub async fn resolve(store: &Store, s: &Settings, which: &str) -> anyhow::Result<String> {
    if which != "LATEST" {
        return Ok(which.to_owned());
    }
    let all: Vec<Known> = list_known(store, s.download_concurrency).await?;
    super::latest(all).map(|k| k.listed.name).context("no backups found")
}

/// The objects of one backup's `tar_partitions/`.
struct Parts {
    name: String,
    dir: String,
    /// (method, object name, size)
    data: Vec<(Method, String, u64)>,
    control: (Method, String),
    label: Option<(Method, String)>,
    files: Option<FilesMetadata>,
}

/// Lists and checks one backup's parts against its `files_metadata.json`.
async fn parts_of(store: &Store, name: &str) -> anyhow::Result<Parts> {
    let parts_dir = super::parts_dir(name);
    let (objects, _) = store.list_dir(&parts_dir).await?;
    let mut data = Vec::new();
    let (mut control, mut label) = (None, None);
    for o in objects {
        let (method, base) = Method::from_object_name(&o.name);
        match base {
            "pg_control.tar" => control = Some((method, o.name.clone())),
            "backup_label.tar" => label = Some((method, o.name.clone())),
            b if b.starts_with("part_") && b.ends_with(".tar") => data.push((method, o.name.clone(), o.size)),
            _ => {}
        }
    }
    // WAL-G writes the label in backup_label.tar; other writers (walrus) in the last data part.
    let control =
        control.with_context(|| format!("{parts_dir}/pg_control.tar.* is missing: the backup is incomplete"))?;
    let mut files = None;
    if let Some(fm) = store.get(&format!("{}/files_metadata.json", backup_dir(name))).await? {
        let fm: FilesMetadata = serde_json::from_slice(&fm).context("read files_metadata.json")?;
        // Writers name the sets with or without the compression extension: compare bases.
        let base = |n: &str| Method::from_object_name(n).1.to_owned();
        for tar in fm.tar_file_sets.keys() {
            let tar = &base(tar);
            let known = data.iter().any(|(_, n, _)| base(n) == *tar)
                || base(&control.1) == *tar
                || label.as_ref().is_some_and(|l| base(&l.1) == *tar);
            if !known {
                bail!("{parts_dir}/{tar} is named in files_metadata.json but missing from storage");
            }
        }
        // Parts the metadata does not name are left over from an attempt that died before
        // its sentinel (same start segment, same folder): never restore them.
        if !fm.tar_file_sets.is_empty() {
            data.retain(|(_, n, _)| {
                let keep = fm.tar_file_sets.keys().any(|t| base(t) == base(n));
                if !keep {
                    tracing::warn!(part = %n, backup = name, "part not named in files_metadata.json (left by an aborted attempt); skipped");
                }
                keep
            });
        }
        files = Some(fm);
    }
    Ok(Parts { name: name.to_owned(), dir: parts_dir, data, control, label, files })
}

/// The backups a restore of `name` reads, the full one first: `name` itself, or for a delta
/// the chain of `DeltaFrom` down to its full backup.
async fn chain(store: &Store, name: &str) -> anyhow::Result<Vec<String>> {
    let mut out = vec![name.to_owned()];
    let mut sentinel = read_sentinel(store, name).await?;
    while let Some(parent) = sentinel.delta_from.clone() {
        if out.contains(&parent) || out.len() > 1000 {
            bail!("the delta chain of {name} loops at {parent}");
        }
        sentinel = read_sentinel(store, &parent)
            .await
            .with_context(|| format!("{} builds on {parent}, which cannot be read", out.last().map_or("", |s| s)))?;
        out.push(parent);
    }
    out.reverse();
    Ok(out)
}

/// What a restore writes of one backup's data parts.
#[derive(Clone)]
struct Filter {
    /// Files of the restored backup (`None`: every file in the tars).
    wanted: Option<Arc<HashSet<String>>>,
    /// Files this backup holds as increments over its parent.
    increments: Arc<HashSet<String>>,
}

/// Restores backup `which` into `dest`; returns the backup's name.
pub async fn fetch(store: &Store, s: &Settings, dest: &Path, which: &str) -> anyhow::Result<String> {
    let name = resolve(store, s, which).await?;
    let names = chain(store, &name).await?;
    let mut backups = Vec::new();
    for n in &names {
        backups.push(parts_of(store, n).await?);
    }
    let target = backups.last().context("empty chain")?;
    // A delta restores only the files its own metadata lists, taking each from the newest
    // backup of the chain that holds it.
    let wanted = if backups.len() > 1 {
        let fm = target.files.as_ref().with_context(|| {
            format!("{name} is a delta backup without files_metadata.json: its files cannot be told apart")
        })?;
        Some(Arc::new(fm.files.keys().map(|k| delta::normalize(k).to_owned()).collect::<HashSet<_>>()))
    } else {
        None
    };

    // The key check: decode pg_control.tar (small, always there) before writing anything.
    let (control, parts_dir) = (&target.control, &target.dir);
    let control_obj = store.get(&format!("{parts_dir}/{}", control.1)).await?.context("pg_control.tar vanished")?;
    let control_tar =
        codec::decode(control.0, s.codec.key.as_ref(), &control_obj).map_err(|e| explain(&e, s, &control.1))?;
    let label_tar = match &target.label {
        Some((method, object)) => {
            let obj = store.get(&format!("{parts_dir}/{object}")).await?.context("backup_label.tar vanished")?;
            Some(codec::decode(*method, s.codec.key.as_ref(), &obj).map_err(|e| explain(&e, s, object))?)
        }
        None => None,
    };

    prepare_dest(dest)?;
    let total: u64 = backups.iter().flat_map(|b| b.data.iter().map(|d| d.2)).sum();
    let progress = Progress::start("backup-fetch", total);
    // Oldest first: a delta's increments apply to what its parents restored.
    for b in &backups {
        let increments: HashSet<String> = b
            .files
            .iter()
            .flat_map(|fm| fm.files.iter())
            .filter(|(_, m)| m.is_incremented)
            .map(|(k, _)| delta::normalize(k).to_owned())
            .collect();
        let filter = Filter { wanted: wanted.clone(), increments: Arc::new(increments) };
        if backups.len() > 1 {
            tracing::info!(backup = %b.name, "restoring a backup of the delta chain");
        }
        let results: Vec<anyhow::Result<()>> = futures::stream::iter(b.data.clone())
            .map(|(method, object, _)| {
                let key = format!("{}/{object}", b.dir);
                let (progress, filter) = (progress.clone(), filter.clone());
                async move {
                    extract(store, s, &key, method, dest, &filter, &progress)
                        .await
                        .with_context(|| format!("restore {key}"))
                }
            })
            .buffer_unordered(s.download_concurrency.max(1))
            .collect()
            .await;
        for r in results {
            r?;
        }
    }
    progress.finish();
    tar::Archive::new(control_tar.as_slice()).unpack(dest).context("write pg_control")?;
    if let Some(label_tar) = label_tar {
        tar::Archive::new(label_tar.as_slice()).unpack(dest).context("write backup_label")?;
    }
    if !dest.join("backup_label").exists() {
        bail!("{name} has no backup_label in any part: it cannot be restored consistently");
    }
    for d in [
        "pg_wal",
        "pg_wal/archive_status",
        "pg_replslot",
        "pg_stat_tmp",
        "pg_notify",
        "pg_serial",
        "pg_snapshots",
        "pg_subtrans",
        "pg_dynshmem",
        "pg_tblspc",
        "pg_twophase",
        "pg_commit_ts",
        "pg_logical/snapshots",
        "pg_logical/mappings",
    ] {
        std::fs::create_dir_all(dest.join(d)).with_context(|| format!("create {d}"))?;
    }
    set_mode(dest, 0o700)?;
    sync_folder(dest)?;
    tracing::info!(backup = %name, dest = %dest.display(), "backup restored");
    Ok(name)
}

/// Files at least this big are written by [`write_big_file`].
const BIG_FILE: u64 = 1024 * 1024;
/// Written bytes after which the kernel is asked to start writing them to disk.
const WRITEBACK_EVERY: u64 = 8 * 1024 * 1024;

/// The path of `rel` under `dest`, refusing anything that leaves it (`..`, absolute paths,
/// or a parent folder that is a link out of `dest`); missing parent folders are created, one
/// at a time, each only once the folders above it are known to lie inside `dest`.
fn inside(dest: &Path, rel: &str) -> anyhow::Result<std::path::PathBuf> {
    let p = Path::new(rel);
    if rel.is_empty() || p.components().any(|c| !matches!(c, std::path::Component::Normal(_))) {
        bail!("{rel} leaves the data directory");
    }
    let real_dest = dest.canonicalize()?;
    let parents: Vec<_> = p.components().collect();
    let mut at = dest.to_path_buf();
    for c in &parents[..parents.len().saturating_sub(1)] {
        at.push(c);
        match std::fs::symlink_metadata(&at) {
            Ok(m) if m.file_type().is_symlink() => {
                if !at.canonicalize().is_ok_and(|real| real.starts_with(&real_dest)) {
                    bail!("{rel} leads out of the data directory through a link");
                }
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                std::fs::create_dir(&at).with_context(|| format!("create {}", at.display()))?;
            }
            Err(e) => return Err(e).with_context(|| format!("look at {}", at.display())),
        }
    }
    Ok(dest.join(p))
}

/// Writes one big file of a tar, starting the disk writes as it goes (an 8 MiB range at a
/// time), so the final sync waits for the tail, not for the whole restore.
fn write_big_file(r: &mut impl Read, dest: &Path, rel: &str, size: u64, mode: u32, mtime: u64) -> anyhow::Result<()> {
    use nix::fcntl::{PosixFadviseAdvice, posix_fadvise};
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = inside(dest, rel)?;
    // A link of that name (an earlier entry of a hostile part) is replaced, never written
    // through: it may lead out of the data directory.
    if std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
        std::fs::remove_file(&path)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(&path)?;
    let mut buf = vec![0u8; 1024 * 1024];
    let (mut written, mut started) = (0u64, 0u64);
    while written < size {
        let want = buf.len().min((size - written) as usize);
        let n = r.read(&mut buf[..want])?;
        if n == 0 {
            bail!("the tar ends {} bytes into {rel} of {size}", written);
        }
        f.write_all(&buf[..n])?;
        written += n as u64;
        if written - started >= WRITEBACK_EVERY || written == size {
            // On Linux DONTNEED starts writeback of the dirty range without waiting for it.
            let _ =
                posix_fadvise(&f, started as i64, (written - started) as i64, PosixFadviseAdvice::POSIX_FADV_DONTNEED);
            started = written;
        }
    }
    f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))?;
    let t = nix::sys::time::TimeSpec::new(mtime as i64, 0);
    nix::sys::stat::futimens(&f, &t, &t)?;
    Ok(())
}

/// Applies a WAL-G increment to the copy of `rel` its parents restored.
fn apply(entry: &mut impl Read, dest: &Path, rel: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    // Never through a link: the parent's copy is a plain file, and a link may lead out.
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(inside(dest, rel)?)
        .with_context(|| format!("{rel} is an increment, but no parent backup holds the file"))?;
    pages::apply_increment(entry, &mut f)?;
    Ok(())
}

fn explain(e: &io::Error, s: &Settings, object: &str) -> anyhow::Error {
    if crate::crypto::is_decrypt_error(e) {
        anyhow::anyhow!("{object}: {e}")
    } else if s.codec.key.is_none() {
        anyhow::anyhow!("{object} cannot be decoded ({e}); if the backup is encrypted, set WALG_LIBSODIUM_KEY")
    } else {
        anyhow::anyhow!("{object} is corrupted: {e}")
    }
}

fn prepare_dest(dest: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dest).with_context(|| format!("create {}", dest.display()))?;
    let not_empty = std::fs::read_dir(dest).with_context(|| format!("read {}", dest.display()))?.next().is_some();
    if not_empty {
        bail!("{} is not empty; restore into an empty folder", dest.display());
    }
    set_mode(dest, 0o700)
}

fn set_mode(p: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).with_context(|| format!("chmod {}", p.display()))
}

/// Flushes everything written under `dest` to disk (one syncfs for the filesystem).
fn sync_folder(dest: &Path) -> anyhow::Result<()> {
    let f = std::fs::File::open(dest).with_context(|| format!("open {}", dest.display()))?;
    nix::unistd::syncfs(&f).with_context(|| format!("sync {}", dest.display()))?;
    Ok(())
}

/// Streams one tar part into `dest`, then reads the object to its end so its checksum is checked.
async fn extract(
    store: &Store,
    s: &Settings,
    key: &str,
    method: Method,
    dest: &Path,
    filter: &Filter,
    progress: &Progress,
) -> anyhow::Result<()> {
    let stream = store.get_stream(key).await?.with_context(|| format!("{key} vanished"))?;
    let counter = progress.counter();
    let counted = stream.map(move |c| {
        if let Ok(b) = &c {
            counter.fetch_add(b.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
        c
    });
    let bridge = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(counted));
    let (k, dest, keyname, filter) = (s.codec.key.clone(), dest.to_owned(), key.to_owned(), filter.clone());
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let r = codec::reader(method, k.as_ref(), bridge).map_err(|e| anyhow::anyhow!("{keyname}: {e}"))?;
        unpack_part(r, &dest, &keyname, &filter)
    })
    .await
    .context("restore thread")?
}

/// Writes the entries of one tar part into `dest` (whole files, big ones with early
/// writeback, increments applied in place), then reads the part to its end. An entry that
/// would leave `dest` (`..`, an absolute path, a link out) fails the part; nothing is written
/// outside `dest`.
fn unpack_part(r: impl Read, dest: &Path, keyname: &str, filter: &Filter) -> anyhow::Result<()> {
    let mut ar = tar::Archive::new(r);
    ar.set_preserve_permissions(true);
    ar.set_overwrite(true);
    for entry in ar.entries().with_context(|| format!("read {keyname}"))? {
        let mut entry = entry.with_context(|| format!("{keyname} is corrupted or cut short"))?;
        let path = entry.path().with_context(|| format!("{keyname}: an entry's name"))?.into_owned();
        let rel = delta::normalize(&path.to_string_lossy()).to_owned();
        let is_dir = entry.header().entry_type().is_dir();
        if !is_dir && filter.wanted.as_ref().is_some_and(|w| !w.contains(&rel)) {
            continue; // dropped before the restored backup was taken
        }
        if filter.increments.contains(&rel) {
            apply(&mut entry, dest, &rel).with_context(|| format!("{keyname}: apply the increment of {rel}"))?;
            continue;
        }
        let size = entry.header().size().unwrap_or(0);
        if entry.header().entry_type() == tar::EntryType::Regular && size >= BIG_FILE {
            let mode = entry.header().mode().unwrap_or(0o600) & 0o777;
            let mtime = entry.header().mtime().unwrap_or(0);
            write_big_file(&mut entry, dest, &rel, size, mode, mtime)
                .with_context(|| format!("{keyname}: write {rel}"))?;
            continue;
        }
        // unpack_in refuses paths that leave dest (.., absolute paths, links out).
        let inside = entry.unpack_in(dest).with_context(|| format!("{keyname}: write {:?}", entry.path().ok()))?;
        if !inside {
            bail!("{keyname} holds an entry outside the data directory: {:?}", entry.path().ok());
        }
    }
    let mut rest = ar.into_inner();
    let mut buf = [0u8; 64 * 1024];
    loop {
        match rest.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => bail!("{keyname} is corrupted or cut short: {e}"),
        }
    }
    Ok(())
}

/// Hostile parts (issue 16, item 4): tar headers and contents a writer of the bucket may have
/// made up. Whatever the part holds, unpacking returns (done, or an error), never panics, and
/// writes nothing outside the data directory.
#[cfg(test)]
mod hostile {
    use super::*;
    use proptest::prelude::*;

    /// One tar entry: (name components, leading, kind, link target, data).
    type Spec = (Vec<usize>, usize, usize, usize, Vec<u8>);

    const PARTS: [&str; 9] = ["..", ".", "", "a", "b", "x", "pg_wal", "base", "victim"];
    const LEADS: [&str; 3] = ["", "/", "./"];
    /// Link targets; `OUT` stands for the folder beside the data directory.
    const TARGETS: [&str; 6] = ["OUT", "OUT/victim", "../OUT/victim", "..", "a", "/"];

    fn entry() -> impl Strategy<Value = Spec> {
        (
            proptest::collection::vec(0..PARTS.len(), 1..4),
            0..LEADS.len(),
            0..5usize,
            0..TARGETS.len(),
            prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..64),
                // A WAL-G increment's header with arbitrary sizes and block numbers.
                proptest::collection::vec(any::<u8>(), 12..40).prop_map(|mut v| {
                    let mut out = pages::MAGIC.to_vec();
                    out.append(&mut v);
                    out
                }),
            ],
        )
    }

    /// Writes the raw header fields (no checks on the name: `..` and absolute paths too).
    fn archive(specs: &[Spec], out: &Path, big: bool) -> Vec<u8> {
        let mut buf = Vec::new();
        for (parts, lead, kind, target, data) in specs {
            let name = format!("{}{}", LEADS[*lead], parts.iter().map(|&p| PARTS[p]).collect::<Vec<_>>().join("/"));
            let mut h = tar::Header::new_gnu();
            let raw = name.as_bytes();
            h.as_gnu_mut().expect("gnu").name[..raw.len()].copy_from_slice(raw);
            let target = TARGETS[*target].replace("OUT", &out.display().to_string());
            let body: Vec<u8> = match kind {
                0 => data.clone(),
                1 => Vec::new(),
                2 | 3 => {
                    let t = target.as_bytes();
                    h.as_gnu_mut().expect("gnu").linkname[..t.len().min(100)].copy_from_slice(&t[..t.len().min(100)]);
                    Vec::new()
                }
                // A big regular file (written by write_big_file).
                _ if big => vec![7u8; BIG_FILE as usize],
                _ => data.clone(),
            };
            h.set_entry_type(match kind {
                1 => tar::EntryType::Directory,
                2 => tar::EntryType::Symlink,
                3 => tar::EntryType::Link,
                _ => tar::EntryType::Regular,
            });
            h.set_mode(0o644);
            h.set_size(body.len() as u64);
            h.set_cksum();
            buf.extend_from_slice(h.as_bytes());
            buf.extend_from_slice(&body);
            buf.resize(buf.len().div_ceil(512) * 512, 0);
        }
        buf.extend_from_slice(&[0u8; 1024]);
        buf
    }

    proptest! {
        #[test]
        fn a_part_of_any_content_is_unpacked_or_refused_and_never_writes_outside_the_data_directory(
            specs in proptest::collection::vec(entry(), 1..8),
            increments in proptest::collection::vec(0..PARTS.len(), 0..3),
            wanted in proptest::option::of(proptest::collection::vec(0..PARTS.len(), 0..4)),
            cut in proptest::option::of(any::<usize>()),
            garbage in proptest::collection::vec(any::<u8>(), 0..16),
            big in any::<bool>(),
        ) {
            let top = tempfile::tempdir().expect("tempdir");
            let (dest, out) = (top.path().join("data"), top.path().join("OUT"));
            std::fs::create_dir_all(&dest).expect("data dir");
            std::fs::create_dir_all(&out).expect("outside dir");
            std::fs::write(out.join("victim"), b"keep").expect("victim");
            let mut bytes = archive(&specs, &out, big);
            if let Some(at) = cut {
                bytes.truncate(at % (bytes.len() + 1));
            }
            bytes.extend_from_slice(&garbage);
            let names = |v: &[usize]| v.iter().map(|&p| PARTS[p].to_owned()).collect::<HashSet<String>>();
            let filter = Filter {
                wanted: wanted.as_deref().map(|w| Arc::new(names(w))),
                increments: Arc::new(names(&increments)),
            };
            let _ = unpack_part(bytes.as_slice(), &dest, "part_1.tar", &filter);
            let left: Vec<_> = std::fs::read_dir(&out).expect("outside dir").map(|e| e.expect("entry").file_name()).collect();
            prop_assert_eq!(left, vec![std::ffi::OsString::from("victim")], "something was written beside the data directory");
            let victim = std::fs::read(out.join("victim")).expect("victim");
            prop_assert!(victim == b"keep", "a file outside the data directory was changed ({} bytes now)", victim.len());
        }
    }
}
