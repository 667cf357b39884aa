//! `backup-list` and `backup-mark`: reading and marking backups by their sentinels.

use anyhow::Context;
use bytes::Bytes;
use serde_json::json;

use crate::backup::sentinel::{Metadata, go_time};
use crate::backup::{self, backup_dir, sentinel_key};
use crate::settings::Settings;
use crate::storage::Store;
use crate::walname::DEFAULT_SEGMENT_SIZE;

/// Prints the backups, WAL-G's columns (`backup_name modified wal_file_name storage_name`)
/// or JSON; with `detail`, each backup's metadata too, ordered by its own start time.
pub async fn backup_list(store: &Store, s: &Settings, as_json: bool, detail: bool) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    if detail {
        let mut known = backup::list_known(store, s.download_concurrency).await?;
        backup::chronological(&mut known);
        for k in known {
            let md = Metadata::from_sentinel(&k.sentinel);
            rows.push((k.listed, Some(md)));
        }
    } else {
        rows = backup::list(store).await?.into_iter().map(|l| (l, None)).collect();
    }
    if rows.is_empty() {
        if as_json {
            println!("[]");
        }
        tracing::info!("No backups found");
        return Ok(());
    }
    let wal_of = |l: &backup::Listed| l.start_segment().map(|s| s.name(DEFAULT_SEGMENT_SIZE)).unwrap_or_default();
    if as_json {
        let arr: Vec<serde_json::Value> = rows
            .iter()
            .map(|(l, md)| {
                let mut v = json!({
                    "backup_name": l.name,
                    "time": go_time::format(&l.modified),
                    "wal_file_name": wal_of(l),
                    "storage_name": "default",
                });
                if let (Some(md), Some(obj)) = (md, v.as_object_mut())
                    && let Ok(serde_json::Value::Object(m)) = serde_json::to_value(md)
                {
                    obj.extend(m);
                }
                v
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&arr).context("encode")?);
        return Ok(());
    }
    let mut table: Vec<Vec<String>> = Vec::new();
    let mut head = vec!["backup_name", "modified", "wal_file_name", "storage_name"];
    if detail {
        head.extend([
            "start_time",
            "finish_time",
            "hostname",
            "data_dir",
            "pg_version",
            "start_lsn",
            "finish_lsn",
            "is_permanent",
        ]);
    }
    table.push(head.iter().map(|h| (*h).to_owned()).collect());
    for (l, md) in &rows {
        let mut r = vec![l.name.clone(), go_time::format(&l.modified), wal_of(l), "default".into()];
        if let Some(md) = md {
            let t = |t: &Option<chrono::DateTime<chrono::Utc>>| t.as_ref().map(go_time::format).unwrap_or_default();
            r.extend([
                t(&md.start_time),
                t(&md.finish_time),
                md.hostname.clone(),
                md.data_dir.clone(),
                md.pg_version.to_string(),
                crate::walname::Lsn(md.start_lsn).to_string(),
                crate::walname::Lsn(md.finish_lsn).to_string(),
                md.is_permanent.to_string(),
            ]);
        }
        table.push(r);
    }
    let widths: Vec<usize> = (0..table[0].len()).map(|c| table.iter().map(|r| r[c].len()).max().unwrap_or(0)).collect();
    for r in table {
        let line: Vec<String> = r.iter().zip(&widths).map(|(v, w)| format!("{v:<w$}")).collect();
        println!("{}", line.join(" ").trim_end());
    }
    Ok(())
}

/// Sets or clears a backup's permanent flag, in its sentinel and its metadata.
pub async fn backup_mark(store: &Store, name: &str, permanent: bool) -> anyhow::Result<()> {
    let mut s = backup::read_sentinel(store, name).await?;
    s.is_permanent = permanent;
    let md = serde_json::to_vec(&Metadata::from_sentinel(&s)).context("encode metadata.json")?;
    store.put(&format!("{}/metadata.json", backup_dir(name)), Bytes::from(md)).await?;
    store.put(&sentinel_key(name), Bytes::from(serde_json::to_vec(&s).context("encode the sentinel")?)).await?;
    tracing::info!(backup = name, permanent, "backup marked");
    Ok(())
}
