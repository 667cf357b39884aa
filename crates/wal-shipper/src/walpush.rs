//! `wal-push` (archive_command): upload one file PostgreSQL hands over, create-only, and exit
//! 0 only once it is durably stored.
//!
//! Overwrite rule (decided by [`on_existing`], a pure function): an object already under the
//! key is downloaded, decoded and compared. Equal content succeeds (PostgreSQL re-archives
//! after a crash). Different content fails loudly, for every file by default and for
//! `.history` files always; with `WALG_PREVENT_WAL_OVERWRITE=false` a different segment is
//! replaced, as WAL-G does. An existing object that cannot be decoded because it is cut short
//! or corrupted (WAL-G issue #85 left empty objects) is replaced by the good copy; one that
//! does not decrypt with our key is never touched.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use bytes::Bytes;

use crate::codec::{self, Codec, Method};
use crate::storage::{Created, Store};
use crate::walname::WalFile;

pub const WAL_DIR: &str = "wal_005";

/// What became of a push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Uploaded,
    /// The same content was already archived.
    AlreadyArchived,
    /// A corrupted or different copy was replaced (see the module doc for when).
    Replaced,
}

/// What is known about the object that was already there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    Equal,
    Different,
    /// It decodes to an error that is not the key's fault: truncated, corrupted, empty.
    Corrupt,
    /// It does not decrypt with our key (or is encrypted and we have none).
    Undecryptable,
}

/// The decision on a collision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Succeed,
    Replace,
    Refuse,
}

/// What to do when an object is already stored under the key.
pub fn on_existing(existing: Existing, is_history: bool, prevent_overwrite: bool) -> Decision {
    match existing {
        Existing::Equal => Decision::Succeed,
        Existing::Corrupt => Decision::Replace,
        Existing::Undecryptable => Decision::Refuse,
        Existing::Different if is_history || prevent_overwrite => Decision::Refuse,
        Existing::Different => Decision::Replace,
    }
}

/// The object key of `name` under the WAL folder, for `method`.
pub fn object_key(name: &str, method: Method) -> String {
    format!("{WAL_DIR}/{}", method.object_name(name))
}

/// The file name PostgreSQL gave, checked: only names PostgreSQL archives, so a stray path
/// never becomes an object key.
pub fn checked_name(path: &Path) -> anyhow::Result<String> {
    let name =
        path.file_name().and_then(|n| n.to_str()).with_context(|| format!("no file name in {}", path.display()))?;
    let ok = name.len() <= 64 && !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.');
    if !ok || name.starts_with('.') {
        bail!("{name:?} is not a WAL file name (at most 64 of [A-Za-z0-9.])");
    }
    Ok(name.to_owned())
}

/// Uploads `data` as WAL file `name` with the overwrite rule.
pub async fn push_bytes(
    store: &Store,
    codec: &Codec,
    prevent_overwrite: bool,
    name: &str,
    data: Bytes,
) -> anyhow::Result<Pushed> {
    let key = object_key(name, codec.method);
    let enc = {
        let codec = codec.clone();
        let data = data.clone();
        Bytes::from(
            tokio::task::spawn_blocking(move || codec.encode(&data)).await.context("compress")?.context("compress")?,
        )
    };
    if store.put_new(&key, enc.clone()).await? == Created::Created {
        return Ok(Pushed::Uploaded);
    }
    let existing = match store.get(&key).await? {
        // Gone between our create and our read (a delete raced us): try once more.
        None => {
            return match store.put_new(&key, enc).await? {
                Created::Created => Ok(Pushed::Uploaded),
                Created::Exists => bail!("{key} keeps changing under us; refusing to decide"),
            };
        }
        Some(old) => compare(codec, &old, &data),
    };
    let is_history = matches!(WalFile::parse(name, crate::walname::DEFAULT_SEGMENT_SIZE), Some(WalFile::History(_)));
    match on_existing(existing, is_history, prevent_overwrite) {
        Decision::Succeed => {
            tracing::info!(file = name, "already archived with equal content");
            Ok(Pushed::AlreadyArchived)
        }
        Decision::Replace => {
            tracing::warn!(file = name, existing = ?existing, "replacing the archived copy");
            store.put(&key, enc).await?;
            Ok(Pushed::Replaced)
        }
        Decision::Refuse => match existing {
            Existing::Undecryptable => bail!(
                "{key} is already archived and does not decrypt with WALG_LIBSODIUM_KEY; refusing to overwrite it"
            ),
            _ => bail!(
                "{key} is already archived with different content; refusing to overwrite it (two primaries archiving to one prefix?)"
            ),
        },
    }
}

fn compare(codec: &Codec, old: &[u8], new: &[u8]) -> Existing {
    // No WAL file is empty, and an empty object decodes "successfully" as nothing.
    if old.is_empty() {
        return Existing::Corrupt;
    }
    match codec::decode(codec.method, codec.key.as_ref(), old) {
        Ok(plain) if plain == new => Existing::Equal,
        Ok(_) => Existing::Different,
        Err(e) if crate::crypto::is_decrypt_error(&e) && !e.to_string().contains("truncated") => {
            Existing::Undecryptable
        }
        Err(_) => Existing::Corrupt,
    }
}

/// The old-timeline segments to archive when `history` (a new timeline's history file) is:
/// complete segments of an ancestor timeline that end before its switch point and that this
/// server received by streaming: marked `.done`, or not marked at all (not `.ready`, which
/// PostgreSQL archives itself). After a promotion PostgreSQL archives only the `.partial` and
/// the `.history`, so a segment the old primary had not archived yet would be a hole in the
/// archive (the failover hole of wal-archiving-2.md §7). The walreceiver marks a segment
/// `.done` only when WAL of the next one arrives: the last segment before a fork at a segment
/// boundary (the old primary switched segments, then went away) has no mark at all. Recycled
/// files named for later segments are never candidates. Pure.
pub fn backfill_candidates(
    files: &[String],
    ready: &std::collections::BTreeSet<String>,
    history: &[(u32, u64)],
) -> Vec<String> {
    use crate::walname::{DEFAULT_SEGMENT_SIZE, Segment};
    let mut out: Vec<String> = files
        .iter()
        .filter(|f| !ready.contains(*f))
        .filter(|f| {
            Segment::parse(f, DEFAULT_SEGMENT_SIZE).is_some_and(|seg| {
                history.iter().any(|(tli, switch)| *tli == seg.timeline && seg.number < switch / DEFAULT_SEGMENT_SIZE)
            })
        })
        .cloned()
        .collect();
    out.sort();
    out
}

/// Archives [`backfill_candidates`] for the history file `name` in `pg_wal`, create-only
/// whatever the overwrite setting: an equal copy is success, a different one an error.
pub async fn backfill(store: &Store, codec: &Codec, pg_wal: &Path, name: &str) -> anyhow::Result<usize> {
    let text = std::fs::read_to_string(pg_wal.join(name)).with_context(|| format!("read {name}"))?;
    let history = crate::walname::parse_history(&text);
    let files: Vec<String> = std::fs::read_dir(pg_wal)
        .with_context(|| format!("read {}", pg_wal.display()))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let ready: std::collections::BTreeSet<String> = std::fs::read_dir(pg_wal.join("archive_status"))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_string_lossy().strip_suffix(".ready").map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let todo = backfill_candidates(&files, &ready, &history);
    for f in &todo {
        let data = match tokio::fs::read(pg_wal.join(f)).await {
            Ok(d) => d,
            // Removed meanwhile (a checkpoint after the promotion): it was archived or is
            // older than anything kept.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("read {f}")),
        };
        let outcome = push_bytes(store, codec, true, f, data.into()).await.with_context(|| format!("backfill {f}"))?;
        tracing::info!(file = %f, outcome = ?outcome, history = name, "old-timeline segment archived after the promotion");
    }
    Ok(todo.len())
}

/// The upload-ahead marker folder for a WAL folder (WAL-G's place for it).
pub fn marker_dir(pg_wal: &Path) -> PathBuf {
    pg_wal.join("walg_data").join("walg_archive_status")
}

/// If the daemon has already uploaded `name`, consumes its marker and returns true.
pub fn consume_marker(pg_wal: &Path, name: &str) -> bool {
    let m = marker_dir(pg_wal).join(name);
    std::fs::remove_file(&m).is_ok()
}

/// Writes the marker that says `name` is durably archived (after the upload, never before).
pub fn write_marker(pg_wal: &Path, name: &str) -> std::io::Result<()> {
    let dir = marker_dir(pg_wal);
    std::fs::create_dir_all(&dir)?;
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, b"")?;
    std::fs::rename(&tmp, dir.join(name))
}

#[cfg(test)]
mod tests {
    #[test]
    fn backfill_takes_streamed_segments_before_the_switch_point_and_never_recycled_ones() {
        let s = crate::walname::DEFAULT_SEGMENT_SIZE;
        let files: Vec<String> = [
            "000000010000000000000005",
            "000000010000000000000006",
            "000000010000000000000007",
            "000000010000000000000009",
            "000000010000000000000007.partial",
            "000000020000000000000007",
            "00000002.history",
        ]
        .map(String::from)
        .to_vec();
        // 6 still waits for PostgreSQL's own archiver.
        let ready: std::collections::BTreeSet<String> = ["000000010000000000000006"].map(String::from).into();
        // Timeline 2 forked from 1 inside segment 7: 7 is the partial one, 9 a recycled file.
        let history = [(1u32, 7 * s + 0x100)];
        assert_eq!(super::backfill_candidates(&files, &ready, &history), ["000000010000000000000005"]);
        // Forked at the boundary of 8 (the old primary switched segments, then went away):
        // 7 is complete, and the walreceiver never marked it (no WAL of 8 came).
        let history = [(1u32, 8 * s)];
        assert_eq!(
            super::backfill_candidates(&files, &ready, &history),
            ["000000010000000000000005", "000000010000000000000007"]
        );
    }

    use super::*;

    #[test]
    fn collision_rules() {
        use Decision::*;
        use Existing::*;
        let cases = [
            ("equal content succeeds", Equal, false, true, Succeed),
            ("different segment refused by default", Different, false, true, Refuse),
            ("different segment replaced when overwrite is allowed", Different, false, false, Replace),
            ("different history refused even when overwrite is allowed", Different, true, false, Refuse),
            ("corrupt copy replaced", Corrupt, false, true, Replace),
            ("foreign ciphertext never touched", Undecryptable, false, false, Refuse),
        ];
        for (name, existing, history, prevent, want) in cases {
            assert_eq!(on_existing(existing, history, prevent), want, "{name}");
        }
    }

    #[test]
    fn only_wal_file_names_are_accepted() {
        assert_eq!(checked_name(Path::new("pg_wal/000000010000000000000001")).expect("ok"), "000000010000000000000001");
        assert!(checked_name(Path::new("pg_wal/.hidden")).is_err());
        assert!(checked_name(Path::new("pg_wal/a b")).is_err());
    }

    #[tokio::test]
    async fn pushing_twice_succeeds_and_a_different_copy_is_refused() {
        let d = tempfile::tempdir().expect("tmp");
        let store = Store::open(
            &crate::settings::StorageSpec::File { root: d.path().to_owned() },
            std::time::Duration::from_secs(5),
        )
        .expect("open");
        let codec = Codec { method: Method::Lz4, zstd_level: 1, key: None };
        let name = "000000010000000000000003";
        let a = Bytes::from(vec![1u8; 1 << 16]);
        assert_eq!(push_bytes(&store, &codec, true, name, a.clone()).await.expect("push"), Pushed::Uploaded);
        assert_eq!(push_bytes(&store, &codec, true, name, a.clone()).await.expect("push"), Pushed::AlreadyArchived);
        let b = Bytes::from(vec![2u8; 1 << 16]);
        let e = push_bytes(&store, &codec, true, name, b).await.expect_err("refused");
        assert!(e.to_string().contains("different content"), "{e}");
        // An empty object left by a broken uploader is replaced by the good copy.
        store.put(&object_key(name, Method::Lz4), Bytes::new()).await.expect("put");
        assert_eq!(push_bytes(&store, &codec, true, name, a.clone()).await.expect("push"), Pushed::Replaced);
        let stored = store.get(&object_key(name, Method::Lz4)).await.expect("get").expect("there");
        assert_eq!(codec::decode(Method::Lz4, None, &stored).expect("decode"), a);
    }
}
