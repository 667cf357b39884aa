//! `backup-push`: a non-exclusive base backup of a local data directory, from a primary or a
//! standby, in WAL-G's layout.
//!
//! 1. `pg_backup_start(label, fast)` on a session held open to the end (PostgreSQL 15+, or
//!    `pg_start_backup(label, true, false)` before). The name is `base_` + the start segment,
//!    plus `_D_<parent's start segment>` for a delta ([`super::delta`] chooses the parent and
//!    whether each file is skipped, stored as a `wi1` increment or whole).
//! 2. The data directory is walked and its files are packed, in the order found, into tar
//!    partitions of about `WALG_TAR_SIZE_THRESHOLD` bytes. Each partition is read, tarred,
//!    compressed and encrypted on a blocking thread and streamed as a multipart upload;
//!    `min(WALG_UPLOAD_CONCURRENCY, cores)` partitions go at once, and every buffer on the way
//!    is bounded, so memory does not grow with the database. When the cluster has data
//!    checksums, every relation page is checked on the way ([`super::pages::Verifier`]).
//! 3. `pg_control.tar` after every data part, then `pg_backup_stop`, whose label and tablespace
//!    map become `backup_label.tar`. Then `files_metadata.json`, `metadata.json`, and last the
//!    sentinel, create-only. A backup that fails before its sentinel is invisible.

use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use chrono::Utc;

use super::delta;
use super::pages::{self, Verifier};
use super::sentinel::{DATE_FMT, FileMeta, FilesMetadata, Metadata, Sentinel};
use super::{backup_dir, sentinel_key};
use crate::codec::Codec;
use crate::progress::Progress;
use crate::settings::{PgConn, Settings};
use crate::storage::{Created, Store};
use crate::walname::{DEFAULT_SEGMENT_SIZE, Lsn, Segment};

/// Bytes per multipart part: S3's minimum, so that at most a few parts are in memory.
const PART_SIZE: usize = 5 * 1024 * 1024;
/// Bytes per read from a data file.
const READ_BUFFER: usize = 512 * 1024;
/// How far ahead of the reader the kernel is asked to read a data file.
const READ_AHEAD: u64 = 32 * 1024 * 1024;
/// Bytes per chunk handed from the tar thread to the uploader.
const CHUNK: usize = 1024 * 1024;

/// Folders whose contents are never backed up (the folder itself is, empty), and files that
/// never are: PostgreSQL's own exclusion list for base backups.
const EMPTY_DIRS: &[&str] =
    &["pg_wal", "pg_dynshmem", "pg_notify", "pg_replslot", "pg_serial", "pg_snapshots", "pg_stat_tmp", "pg_subtrans"];
const SKIP_FILES: &[&str] = &[
    "postmaster.pid",
    "postmaster.opts",
    "backup_label",
    "tablespace_map",
    "postgresql.auto.conf.tmp",
    "current_logfiles.tmp",
    "pg_internal.init",
    "standby.signal",
    "recovery.signal",
    "recovery.conf",
];

/// One entry of the data directory.
#[derive(Debug, Clone)]
pub struct Item {
    /// Relative to the data directory, `/`-separated.
    pub rel: String,
    pub dir: bool,
    pub size: u64,
    pub mtime: std::time::SystemTime,
    pub how: How,
}

/// How a file goes into a backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum How {
    /// Its whole content (every file of a full backup).
    Whole,
    /// A WAL-G increment over the parent: the pages written since the parent started.
    Increment,
    /// Not at all: unchanged since the parent copied it (the restore takes the parent's copy).
    Skip,
}

/// Walks `pgdata` as a base backup sees it. `pg_control` is left out (it goes last, alone).
pub fn walk(pgdata: &Path) -> anyhow::Result<Vec<Item>> {
    let mut out = Vec::new();
    walk_into(pgdata, pgdata, &mut out)?;
    Ok(out)
}

fn walk_into(root: &Path, dir: &Path, out: &mut Vec<Item>) -> anyhow::Result<()> {
    let mut entries: Vec<_> = match std::fs::read_dir(dir) {
        Ok(rd) => rd.flatten().collect(),
        // A folder dropped while we walk (DROP DATABASE): WAL replay recreates the truth.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("list {}", dir.display())),
    };
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        let rel = path.strip_prefix(root).unwrap_or(&path).to_string_lossy().replace('\\', "/");
        if SKIP_FILES.contains(&name.as_str()) || name.starts_with("pgsql_tmp") || rel == "global/pg_control" {
            continue;
        }
        // Follows symlinks: pg_wal may be one (initdb -X); its contents are skipped anyway.
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
            Err(err) => return Err(err).with_context(|| format!("stat {}", path.display())),
        };
        let mtime = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
        if rel.starts_with("pg_tblspc/") {
            bail!(
                "{} is a tablespace; backups of clusters with tablespaces are not supported by this wal-shipper yet",
                path.display()
            );
        }
        if meta.is_dir() {
            out.push(Item { rel: rel.clone(), dir: true, size: 0, mtime, how: How::Whole });
            if !EMPTY_DIRS.contains(&rel.as_str()) {
                walk_into(root, &path, out)?;
            } else if rel == "pg_wal" {
                out.push(Item { rel: "pg_wal/archive_status".into(), dir: true, size: 0, mtime, how: How::Whole });
            }
        } else if meta.is_file() {
            out.push(Item { rel, dir: false, size: meta.len(), mtime, how: How::Whole });
        }
    }
    Ok(())
}

/// Splits the walk into tar partitions of about `threshold` bytes of file data each.
pub fn partition(items: Vec<Item>, threshold: u64) -> Vec<Vec<Item>> {
    let mut parts: Vec<Vec<Item>> = Vec::new();
    let mut cur: Vec<Item> = Vec::new();
    let mut size = 0u64;
    for it in items {
        if size > 0 && size + it.size > threshold {
            parts.push(std::mem::take(&mut cur));
            size = 0;
        }
        size += it.size;
        cur.push(it);
    }
    if !cur.is_empty() {
        parts.push(cur);
    }
    parts
}

/// Reads exactly `size` bytes of a file that PostgreSQL may be writing: a file that shrank
/// is padded with zeros, one that grew is cut, one that vanished is all zeros. WAL replay
/// from the backup's start repairs all three, as for any non-exclusive backup.
struct Exactly<'a> {
    inner: Option<io::BufReader<io::Take<std::fs::File>>>,
    left: u64,
    counter: Arc<AtomicU64>,
    verifier: Option<&'a mut Verifier>,
    /// Bytes read so far, and how far the kernel has been asked to read ahead.
    pos: u64,
    advised: u64,
    /// `WALG_DISK_RATE_LIMIT`: (when reading began, bytes per second over every worker).
    limit: Option<(Instant, u64)>,
}

impl<'a> Exactly<'a> {
    fn new(
        inner: Option<io::BufReader<io::Take<std::fs::File>>>,
        size: u64,
        counter: Arc<AtomicU64>,
        verifier: Option<&'a mut Verifier>,
        limit: Option<(Instant, u64)>,
    ) -> Self {
        Exactly { inner, left: size, counter, verifier, pos: 0, advised: 0, limit }
    }

    /// Keeps the kernel reading [`READ_AHEAD`] beyond what we have read, so the disk works
    /// while this thread compresses (WAL-G's separate disk readers, without the threads).
    fn read_ahead(&mut self) {
        let Some(f) = &self.inner else { return };
        if self.pos + READ_AHEAD / 2 < self.advised {
            return;
        }
        let from = self.advised.max(self.pos);
        let _ = nix::fcntl::posix_fadvise(
            f.get_ref().get_ref(),
            from as i64,
            READ_AHEAD as i64,
            nix::fcntl::PosixFadviseAdvice::POSIX_FADV_WILLNEED,
        );
        self.advised = from + READ_AHEAD;
    }
}

impl Read for Exactly<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = buf.len().min(self.left as usize);
        self.read_ahead();
        let n = match &mut self.inner {
            Some(f) => f.read(&mut buf[..want])?,
            None => 0,
        };
        let n = if n == 0 {
            self.inner = None;
            buf[..want].fill(0);
            want
        } else {
            if let Some(v) = self.verifier.as_deref_mut() {
                v.feed(&buf[..n]);
            }
            n
        };
        self.left -= n as u64;
        self.pos += n as u64;
        let total = self.counter.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
        if let Some((start, rate)) = self.limit {
            // Every worker shares the counter, so together they stay at the rate.
            let due = start + Duration::from_secs_f64(total as f64 / rate as f64);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
        Ok(n)
    }
}

fn header_for(it: &Item) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_size(if it.dir { 0 } else { it.size });
    h.set_mode(if it.dir { 0o700 } else { 0o600 });
    h.set_mtime(it.mtime.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0));
    h.set_entry_type(if it.dir { tar::EntryType::Directory } else { tar::EntryType::Regular });
    h
}

/// How the tar thread treats the files of one partition.
#[derive(Debug, Clone, Copy)]
struct Pass {
    /// A delta's base LSN: pages at or after it go into increments.
    delta_lsn: u64,
    /// Check page checksums (pages older than this LSN, the backup's start).
    verify_before: Option<u64>,
    /// `WALG_DISK_RATE_LIMIT`.
    limit: Option<(Instant, u64)>,
}

/// What the tar thread learnt about one file.
#[derive(Debug, Clone, Default)]
struct FileReport {
    rel: String,
    incremented: bool,
    /// Block numbers within the file with a bad checksum.
    corrupt: Vec<u32>,
}

/// Writes the tar of `items` into `w` (the codec's writer). Returns the tar's size and what
/// it learnt of the files (increments taken, corrupt pages).
fn write_tar(
    pgdata: &Path,
    items: &[Item],
    pass: Pass,
    w: Box<dyn crate::codec::FinishWrite>,
    counter: Arc<AtomicU64>,
) -> anyhow::Result<(u64, Vec<FileReport>)> {
    let counting = CountingWriter { inner: w, n: 0 };
    let mut b = tar::Builder::new(counting);
    b.mode(tar::HeaderMode::Deterministic);
    let mut reports = Vec::new();
    for it in items.iter().filter(|i| i.how != How::Skip) {
        let mut h = header_for(it);
        if it.dir {
            b.append_data(&mut h, &it.rel, io::empty()).with_context(|| format!("tar {}", it.rel))?;
            continue;
        }
        let file = match std::fs::File::open(pgdata.join(&it.rel)) {
            Ok(f) => Some(f),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e).with_context(|| format!("open {}", it.rel)),
        };
        let first_blkno = pages::segment_of(&it.rel).wrapping_mul(pages::PAGES_PER_SEGMENT);
        let mut verifier =
            pass.verify_before.filter(|_| is_checksummed(&it.rel)).map(|lsn| Verifier::new(first_blkno, lsn));
        let mut report = FileReport { rel: it.rel.clone(), ..Default::default() };
        let blocks = match (&file, it.how) {
            (Some(f), How::Increment) => scan(f, it, pass.delta_lsn, verifier.as_mut(), &counter)?,
            _ => None,
        };
        match (file, blocks) {
            (Some(f), Some(blocks)) => {
                h.set_size(pages::increment_size(blocks.len()));
                let r = pages::IncrementReader::new(f, it.size, blocks);
                b.append_data(&mut h, &it.rel, r).with_context(|| format!("tar the increment of {}", it.rel))?;
                report.incremented = true;
            }
            (file, _) => {
                // A failed scan already fed the verifier: check the pages only once.
                let v = if it.how == How::Increment { None } else { verifier.as_mut() };
                let inner = match file {
                    Some(mut f) => {
                        f.seek(io::SeekFrom::Start(0)).with_context(|| format!("rewind {}", it.rel))?;
                        // Sequential: the kernel reads further ahead while we compress.
                        let _ =
                            nix::fcntl::posix_fadvise(&f, 0, 0, nix::fcntl::PosixFadviseAdvice::POSIX_FADV_SEQUENTIAL);
                        // tar copies 8 KiB at a time: read the file in bigger pieces.
                        Some(io::BufReader::with_capacity(READ_BUFFER, f.take(it.size)))
                    }
                    None => None,
                };
                let r = Exactly::new(inner, it.size, counter.clone(), v, pass.limit);
                b.append_data(&mut h, &it.rel, r).with_context(|| format!("tar {}", it.rel))?;
            }
        }
        if let Some(v) = verifier {
            report.corrupt = v.corrupt.iter().map(|b| b.wrapping_sub(first_blkno)).collect();
        }
        if report.incremented || !report.corrupt.is_empty() {
            reports.push(report);
        }
    }
    let counting = b.into_inner().context("finish the tar")?;
    let n = counting.n;
    counting.inner.finish().context("finish compression")?;
    Ok((n, reports))
}

/// Reads a paged file once for an increment: the changed blocks, or `None` when a page is
/// garbage (the file then goes whole, as WAL-G does).
fn scan(
    f: &std::fs::File,
    it: &Item,
    delta_lsn: u64,
    mut verifier: Option<&mut Verifier>,
    counter: &AtomicU64,
) -> anyhow::Result<Option<Vec<u32>>> {
    let mut r = io::BufReader::with_capacity(256 * 1024, f.take(it.size));
    let blocks = pages::changed_blocks(&mut r, delta_lsn, |page| {
        counter.fetch_add(page.len() as u64, Ordering::Relaxed);
        if let Some(v) = verifier.as_deref_mut() {
            v.feed(page);
        }
    })
    .with_context(|| format!("read {}", it.rel))?;
    if blocks.is_none() {
        tracing::info!(file = %it.rel, "a page is neither valid nor new; the file is stored whole");
    }
    Ok(blocks)
}

/// Relation files whose pages carry checksums: `base/`, `global/` and `pg_tblspc/` files
/// named `<relfilenode>[_fsm|_vm|_init][.<segment>]`.
fn is_checksummed(rel: &str) -> bool {
    if !(rel.starts_with("base/") || rel.starts_with("global/") || rel.starts_with("pg_tblspc/")) {
        return false;
    }
    let name = rel.rsplit('/').next().unwrap_or(rel);
    let name =
        name.split_once('.').map_or(name, |(n, seg)| if seg.bytes().all(|b| b.is_ascii_digit()) { n } else { "" });
    let node = ["_fsm", "_vm", "_init"].iter().find_map(|f| name.strip_suffix(f)).unwrap_or(name);
    !node.is_empty() && node.bytes().all(|b| b.is_ascii_digit())
}

struct CountingWriter {
    inner: Box<dyn crate::codec::FinishWrite>,
    n: u64,
}

impl Write for CountingWriter {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(b)?;
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Hands chunks from a blocking thread to the async uploader, at most a few in flight.
struct ChanWriter {
    tx: tokio::sync::mpsc::Sender<Bytes>,
    buf: Vec<u8>,
    sent: Arc<AtomicU64>,
}

impl ChanWriter {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        self.tx
            .blocking_send(Bytes::from(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the upload stopped"))
    }
}

impl Write for ChanWriter {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        let n = b.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&b[..n]);
        if self.buf.len() == CHUNK {
            self.send()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

/// Sizes of one uploaded tar: (tar bytes, stored bytes).
type Sizes = (u64, u64);

/// One uploaded tar: its sizes and what the tar thread learnt of its files.
type Uploaded = (Sizes, Vec<FileReport>);

/// Streams the tar of `items` to `key`: tar + compress + encrypt on a blocking thread, a
/// multipart upload here. An error on either side aborts the upload, so no partial object
/// is ever completed.
async fn upload_tar(
    store: &Store,
    codec: &Codec,
    pgdata: &Path,
    items: Vec<Item>,
    pass: Pass,
    key: &str,
    counter: Arc<AtomicU64>,
) -> anyhow::Result<Uploaded> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let sent = Arc::new(AtomicU64::new(0));
    let producer = {
        let (codec, pgdata, sent) = (codec.clone(), pgdata.to_owned(), sent.clone());
        tokio::task::spawn_blocking(move || -> anyhow::Result<(u64, Vec<FileReport>)> {
            let w = codec.writer(ChanWriter { tx, buf: Vec::with_capacity(CHUNK), sent })?;
            write_tar(&pgdata, &items, pass, w, counter)
        })
    };
    let mut up = store.multipart(key, PART_SIZE).await?;
    let mut failed = None;
    while let Some(chunk) = rx.recv().await {
        if let Err(e) = up.wait_for_capacity(2).await {
            failed = Some(anyhow::Error::from(e).context("upload a part"));
            break;
        }
        up.put(chunk);
    }
    // Closing the channel stops a producer still writing (its send fails).
    drop(rx);
    let produced = producer.await.context("tar thread").and_then(|r| r);
    match (failed, produced) {
        (None, Ok((tar_bytes, reports))) => {
            up.finish().await.context("complete the upload")?;
            Ok(((tar_bytes, sent.load(Ordering::Relaxed)), reports))
        }
        (Some(e), _) | (None, Err(e)) => {
            let _ = up.abort().await;
            Err(e)
        }
    }
}

/// What `backup-push` was asked for.
#[derive(Debug, Clone, Default)]
pub struct PushOptions {
    pub permanent: bool,
    pub full: bool,
    pub user_data: Option<serde_json::Value>,
}

/// Connects to PostgreSQL with libpq's settings.
pub async fn connect(pg: &PgConn) -> anyhow::Result<tokio_postgres::Client> {
    let mut c = tokio_postgres::Config::new();
    c.host(pg.host.as_deref().unwrap_or("/var/run/postgresql"));
    c.port(pg.port.unwrap_or(5432));
    let user = pg.user.clone().or_else(|| std::env::var("USER").ok()).unwrap_or_else(|| "postgres".into());
    c.user(&user);
    c.dbname(pg.dbname.as_deref().unwrap_or("postgres"));
    if let Some(p) = &pg.password {
        c.password(p);
    }
    c.application_name("wal-shipper");
    c.connect_timeout(std::time::Duration::from_secs(10));
    let (client, conn) = c.connect(tokio_postgres::NoTls).await.context("connect to PostgreSQL")?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::warn!(error = %e, "PostgreSQL connection ended");
        }
    });
    Ok(client)
}

/// Takes a backup of `pgdata` (a delta where the settings allow one); returns its name.
pub async fn push(store: &Store, s: &Settings, pgdata: &Path, opts: &PushOptions) -> anyhow::Result<String> {
    push_and_describe(store, s, pgdata, opts).await.map(|(name, _)| name)
}

/// [`push`], returning the stored sentinel too.
pub async fn push_and_describe(
    store: &Store,
    s: &Settings,
    pgdata: &Path,
    opts: &PushOptions,
) -> anyhow::Result<(String, Sentinel)> {
    let db = connect(&s.pg).await?;
    let version: i64 = db
        .query_one("SELECT current_setting('server_version_num')::int8", &[])
        .await
        .context("read server_version_num")?
        .get(0);
    let sysid: String = db
        .query_one("SELECT system_identifier::text FROM pg_control_system()", &[])
        .await
        .context("read the system identifier")?
        .get(0);
    let seg_size: i64 = db
        .query_one("SELECT setting::int8 FROM pg_settings WHERE name = 'wal_segment_size'", &[])
        .await
        .context("read wal_segment_size")?
        .get(0);
    if seg_size as u64 != DEFAULT_SEGMENT_SIZE {
        bail!("wal_segment_size is {seg_size}; this wal-shipper handles 16 MiB segments only");
    }
    let checksums: String = db.query_one("SHOW data_checksums", &[]).await.context("read data_checksums")?.get(0);
    let tli_of = |r: tokio_postgres::Row| -> u32 { r.get::<_, i32>(0) as u32 };
    let timeline_sql = "SELECT timeline_id FROM pg_control_checkpoint()";
    let tli = tli_of(db.query_one(timeline_sql, &[]).await.context("read the timeline")?);
    let parent = if opts.full {
        None
    } else {
        let server = delta::Server { system_identifier: sysid.parse().ok(), timeline: tli, permanent: opts.permanent };
        delta::find_parent(store, s, server).await?
    };
    let label = format!("wal-shipper {}", Utc::now().format("%Y%m%dT%H%M%SZ"));
    let start_sql = if version >= 150000 {
        "SELECT pg_backup_start($1, true)::text, pg_is_in_recovery()"
    } else {
        "SELECT pg_start_backup($1, true, false)::text, pg_is_in_recovery()"
    };
    let stop_sql = if version >= 150000 {
        "SELECT lsn::text, labelfile, spcmapfile FROM pg_backup_stop(true)"
    } else {
        "SELECT lsn::text, labelfile, spcmapfile FROM pg_stop_backup(false, true)"
    };
    // A backup is named by its start segment, so two backups with no WAL segment between them
    // would share a name: the second would overwrite the first's parts. Such a name is
    // refused before anything is uploaded; a primary switches to a new segment and starts
    // again (once).
    let mut attempt = 0;
    let (started_at, start, in_recovery, tli, name, parent) = loop {
        attempt += 1;
        let started_at = Utc::now();
        let row = db.query_one(start_sql, &[&label]).await.context("start the backup (pg_backup_start)")?;
        let start_text: String = row.get(0);
        let in_recovery: bool = row.get(1);
        let start = Lsn::parse(&start_text).with_context(|| format!("start LSN {start_text:?}"))?;
        let started_tli = tli_of(db.query_one(timeline_sql, &[]).await.context("read the timeline")?);
        let parent = parent.clone().filter(|p| {
            let future = p.sentinel.finish_lsn.is_some_and(|f| f > start.0);
            if future || started_tli != tli {
                tracing::info!(parent = %p.name, "the parent ends after this backup starts, or the timeline moved; taking a full backup");
            }
            !future && started_tli == tli
        });
        // On a standby WAL-G names the backup by the segment of lsn-1 (they differ only on a
        // segment boundary); on a primary by the segment holding the LSN.
        let seg_lsn = if in_recovery { start.0.saturating_sub(1) } else { start.0 };
        let seg = Segment::containing(started_tli, seg_lsn, DEFAULT_SEGMENT_SIZE).name(DEFAULT_SEGMENT_SIZE);
        let name = match &parent {
            Some(p) => p.delta_name(&format!("base_{seg}")),
            None => format!("base_{seg}"),
        };
        if store.get(&sentinel_key(&name)).await?.is_none() {
            break (started_at, start, in_recovery, started_tli, name, parent);
        }
        db.query_one(stop_sql, &[]).await.context("stop the backup (pg_backup_stop)")?;
        if in_recovery || attempt > 1 {
            bail!(
                "a backup named {name} already exists (no WAL segment was completed since it started); nothing was uploaded{}",
                if in_recovery { "; wait for the primary to write WAL" } else { "" }
            );
        }
        tracing::info!(backup = %name, "a backup of this name exists; switching to a new WAL segment and starting again");
        db.query_one("SELECT pg_switch_wal()::text", &[]).await.context("switch to a new WAL segment")?;
    };
    tracing::info!(backup = %name, start_lsn = %start, standby = in_recovery, delta_from = ?parent.as_ref().map(|p| &p.name), "backup started");

    let verify_before = (checksums == "on" && s.verify_page_checksums).then_some(start.0);
    let result = push_files(store, s, pgdata, &name, parent.as_ref(), verify_before).await;
    // Stop the backup whatever happened, so the server is not left in backup mode.
    let stop = db.query_one(stop_sql, &[]).await.context("stop the backup (pg_backup_stop)");
    let (files, sizes) = result?;
    let stop = stop?;
    let finish_text: String = stop.get(0);
    let label_file: String = stop.get(1);
    let spcmap: Option<String> = stop.get(2);
    let finish = Lsn::parse(&finish_text).with_context(|| format!("finish LSN {finish_text:?}"))?;
    if in_recovery {
        let now = tli_of(db.query_one("SELECT timeline_id FROM pg_control_checkpoint()", &[]).await?);
        if now != tli {
            bail!("the standby moved from timeline {tli} to {now} during the backup; the backup is left unfinished");
        }
        // A standby's pg_backup_stop does not wait for archiving: the primary archives the
        // WAL this backup ends in. The sentinel waits for it, so a listed backup can always
        // be restored.
        let last =
            Segment::containing(tli, finish.0.saturating_sub(1), DEFAULT_SEGMENT_SIZE).name(DEFAULT_SEGMENT_SIZE);
        wait_archived(store, s, &last).await?;
    }

    // backup_label.tar: the label and the tablespace map from pg_backup_stop.
    let mut label_items: Vec<(String, Vec<u8>)> = vec![("backup_label".into(), label_file.into_bytes())];
    if let Some(m) = spcmap.filter(|m| !m.is_empty()) {
        label_items.push(("tablespace_map".into(), m.into_bytes()));
    }
    let label_tar = small_tar(&label_items)?;
    let label_key = format!("{}/{}", super::parts_dir(&name), s.codec.method.object_name("backup_label.tar"));
    let label_enc = s.codec.encode(&label_tar).context("compress backup_label.tar")?;
    store.put(&label_key, Bytes::from(label_enc.clone())).await?;

    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_owned()).unwrap_or_default();
    let sentinel = Sentinel {
        lsn: Some(start.0),
        pg_version: version,
        finish_lsn: Some(finish.0),
        system_identifier: sysid.parse().ok(),
        uncompressed_size: (sizes.0 + label_tar.len() as u64) as i64,
        compressed_size: (sizes.1 + label_enc.len() as u64) as i64,
        data_catalog_size: sizes.2 as i64,
        user_data: opts.user_data.clone().or_else(|| s.sentinel_user_data.clone()),
        version: 2,
        start_time: Some(started_at),
        finish_time: Some(Utc::now()),
        date_fmt: DATE_FMT.into(),
        hostname: host,
        data_dir: pgdata.display().to_string(),
        is_permanent: opts.permanent,
        delta_lsn: parent.as_ref().and_then(|p| p.sentinel.lsn),
        delta_from: parent.as_ref().map(|p| p.name.clone()),
        delta_full_name: parent.as_ref().map(|p| p.full_name()),
        delta_count: parent.as_ref().map(|p| p.count),
        ..Default::default()
    };
    let fm = serde_json::to_vec(&files).context("encode files_metadata.json")?;
    store.put(&format!("{}/files_metadata.json", backup_dir(&name)), Bytes::from(fm)).await?;
    let md = serde_json::to_vec(&Metadata::from_sentinel(&sentinel)).context("encode metadata.json")?;
    store.put(&format!("{}/metadata.json", backup_dir(&name)), Bytes::from(md)).await?;
    let sj = serde_json::to_vec(&sentinel).context("encode the sentinel")?;
    if store.put_new(&sentinel_key(&name), Bytes::from(sj)).await? == Created::Exists {
        bail!("a backup named {name} already exists; this one is left without a sentinel (invisible)");
    }
    tracing::info!(
        backup = %name,
        finish_lsn = %finish,
        tar_bytes = sizes.0,
        stored_bytes = sizes.1,
        "backup finished"
    );
    Ok((name, sentinel))
}

/// Waits until WAL segment `name` is in the archive, or `standby_wal_timeout` passes.
async fn wait_archived(store: &Store, s: &Settings, name: &str) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + s.standby_wal_timeout;
    let mut said = false;
    loop {
        for (_, key) in crate::walfetch::candidates(name, s.codec.method) {
            if store.get(&key).await?.is_some() {
                return Ok(());
            }
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "the primary did not archive {name}, which this standby backup ends in, within {:?} \
                 (WAL_SHIPPER_STANDBY_WAL_TIMEOUT; an archive_timeout on the primary bounds the wait); \
                 the backup is left without a sentinel (invisible)",
                s.standby_wal_timeout
            );
        }
        if !said {
            tracing::info!(segment = name, "waiting for the primary to archive the segment this backup ends in");
            said = true;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// A tar of small in-memory files.
fn small_tar(files: &[(String, Vec<u8>)]) -> anyhow::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o600);
        h.set_mtime(Utc::now().timestamp().max(0) as u64);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, data.as_slice()).with_context(|| format!("tar {name}"))?;
    }
    b.into_inner().context("finish tar")
}

/// Uploads the data partitions, then pg_control. Returns the files' metadata and the sizes
/// (tar bytes, stored bytes, data bytes).
async fn push_files(
    store: &Store,
    s: &Settings,
    pgdata: &Path,
    name: &str,
    parent: Option<&delta::Parent>,
    verify_before: Option<u64>,
) -> anyhow::Result<(FilesMetadata, (u64, u64, u64))> {
    let mut items = {
        let p = pgdata.to_owned();
        tokio::task::spawn_blocking(move || walk(&p)).await.context("walk")??
    };
    delta::plan(&mut items, parent);
    let limit = s.disk_rate_limit.map(|r| (Instant::now(), r));
    let pass = Pass { delta_lsn: parent.and_then(|p| p.sentinel.lsn).unwrap_or(0), verify_before, limit };
    let data_bytes: u64 = items.iter().map(|i| i.size).sum();
    let mut files = FilesMetadata { databases_by_names: serde_json::json!({}), ..Default::default() };
    for it in items.iter().filter(|i| !i.dir) {
        let meta = FileMeta {
            mtime: Some(chrono::DateTime::<Utc>::from(it.mtime)),
            is_skipped: it.how == How::Skip,
            ..Default::default()
        };
        files.files.insert(it.rel.clone(), meta);
    }
    let skipped = items.iter().filter(|i| i.how == How::Skip).count();
    let items: Vec<Item> = items.into_iter().filter(|i| i.how != How::Skip).collect();
    let parts = partition(items, s.tar_size_threshold);
    let progress = Progress::start("backup-push", data_bytes);
    let workers = s.upload_concurrency.min(std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2)).max(1);
    let sem = Arc::new(tokio::sync::Semaphore::new(workers));
    let mut set = tokio::task::JoinSet::new();
    for (i, items) in parts.into_iter().enumerate() {
        let tar_name = format!("part_{:03}.tar", i + 1);
        let object = s.codec.method.object_name(&tar_name);
        files.tar_file_sets.insert(tar_name, items.iter().filter(|i| !i.dir).map(|i| i.rel.clone()).collect());
        let key = format!("{}/{object}", super::parts_dir(name));
        let (store, codec, pgdata, sem, counter) =
            (store.clone(), s.codec.clone(), pgdata.to_owned(), sem.clone(), progress.counter());
        set.spawn(async move {
            let _permit = sem.acquire_owned().await.context("semaphore")?;
            upload_tar(&store, &codec, &pgdata, items, pass, &key, counter)
                .await
                .with_context(|| format!("upload {key}"))
        });
    }
    let mut total: Sizes = (0, 0);
    let mut reports = Vec::new();
    let mut first_err = None;
    while let Some(r) = set.join_next().await {
        match r.map_err(anyhow::Error::from).and_then(|r| r) {
            Ok(((t, c), rs)) => {
                total.0 += t;
                total.1 += c;
                reports.extend(rs);
            }
            Err(e) => {
                set.abort_all();
                first_err.get_or_insert(e);
            }
        }
    }
    progress.finish();
    if let Some(e) = first_err {
        return Err(e);
    }
    // pg_control after every data part: a restore that has it has all of them.
    let ctl = Item {
        rel: "global/pg_control".into(),
        dir: false,
        size: std::fs::metadata(pgdata.join("global/pg_control")).context("stat global/pg_control")?.len(),
        mtime: std::time::SystemTime::now(),
        how: How::Whole,
    };
    let object = s.codec.method.object_name("pg_control.tar");
    files.tar_file_sets.insert("pg_control.tar".into(), vec![ctl.rel.clone()]);
    let key = format!("{}/{object}", super::parts_dir(name));
    let no_checks = Pass { delta_lsn: 0, verify_before: None, limit: None };
    let ((t, c), _) = upload_tar(store, &s.codec, pgdata, vec![ctl], no_checks, &key, progress.counter()).await?;
    record(&mut files, reports, skipped);
    Ok((files, (total.0 + t, total.1 + c, data_bytes)))
}

/// At most this many corrupt block numbers are listed per file (WAL-G's limit).
const LISTED_CORRUPT_BLOCKS: usize = 10;

/// Writes what the tar threads learnt into the files' metadata, and says it.
fn record(files: &mut FilesMetadata, reports: Vec<FileReport>, skipped: usize) {
    let mut incremented = 0;
    let mut corrupt_files = 0;
    for mut r in reports {
        let Some(meta) = files.files.get_mut(&r.rel) else { continue };
        if r.incremented {
            meta.is_incremented = true;
            incremented += 1;
        }
        if !r.corrupt.is_empty() {
            corrupt_files += 1;
            r.corrupt.sort_unstable();
            tracing::warn!(file = %r.rel, blocks = ?r.corrupt, "page checksum mismatch: the backup holds these pages as they are on disk");
            meta.corrupt_blocks = Some(serde_json::json!({
                "CorruptBlocksCount": r.corrupt.len(),
                "SomeCorruptBlocks": r.corrupt.iter().take(LISTED_CORRUPT_BLOCKS).collect::<Vec<_>>(),
            }));
        }
    }
    if corrupt_files > 0 {
        tracing::warn!(files = corrupt_files, "files with corrupt pages (listed in files_metadata.json)");
    }
    if incremented > 0 || skipped > 0 {
        tracing::info!(incremented, skipped, "delta: files stored as increments, and files left to the parent");
    }
}

/// The data directory a backup is taken of: the argument, else `PGDATA`.
pub fn pgdata_of(arg: Option<PathBuf>, s: &Settings) -> anyhow::Result<PathBuf> {
    arg.or_else(|| s.pgdata.clone()).context("no data directory: give it as an argument or set PGDATA")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(rel: &str, size: u64) -> Item {
        Item { rel: rel.into(), dir: false, size, mtime: std::time::UNIX_EPOCH, how: How::Whole }
    }

    #[test]
    fn partitions_close_at_the_threshold_and_a_big_file_goes_alone() {
        let parts = partition(vec![item("a", 40), item("b", 40), item("c", 40), item("big", 500), item("d", 1)], 100);
        let names: Vec<Vec<&str>> = parts.iter().map(|p| p.iter().map(|i| i.rel.as_str()).collect()).collect();
        assert_eq!(names, vec![vec!["a", "b"], vec!["c"], vec!["big"], vec!["d"]]);
    }

    #[test]
    fn the_walk_skips_what_a_base_backup_never_holds() {
        let d = tempfile::tempdir().expect("tmp");
        let p = d.path();
        for f in [
            "PG_VERSION",
            "postmaster.pid",
            "global/pg_control",
            "global/1262",
            "pg_wal/000000010000000000000001",
            "base/1/pgsql_tmp1",
            "pg_replslot/s/state",
            "standby.signal",
        ] {
            std::fs::create_dir_all(p.join(f).parent().expect("parent")).expect("mkdir");
            std::fs::write(p.join(f), b"x").expect("write");
        }
        let rels: Vec<String> = walk(p).expect("walk").into_iter().map(|i| i.rel).collect();
        assert_eq!(
            rels,
            ["PG_VERSION", "base", "base/1", "global", "global/1262", "pg_replslot", "pg_wal", "pg_wal/archive_status"]
        );
    }
}
