//! The object storage, through `object_store`: S3-compatible, the local filesystem
//! (`WALG_FILE_PREFIX`), GCS and Azure. Every key here is relative to the configured prefix
//! (`wal_005/…`, `basebackups_005/…`), so the layout lives in the callers and this module only
//! moves bytes.
//!
//! Every request has a deadline (`request_timeout`) and object_store's bounded retries with
//! backoff; no call here can hang an `archive_command`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::aws::AmazonS3ConfigKey;
use object_store::path::Path;
use object_store::{
    Attribute, Attributes, ObjectStore, ObjectStoreExt, PutMode, PutMultipartOptions, PutOptions, PutPayload,
};

use crate::settings::{Sse, StorageSpec};

/// Bytes per read when streaming an object from a local folder.
const STREAM_CHUNK: usize = 1024 * 1024;

/// A handle on the configured storage and prefix.
#[derive(Clone)]
pub struct Store {
    os: Arc<dyn ObjectStore>,
    /// The prefix inside the bucket, without slashes at either end; may be empty.
    base: String,
    /// For messages: `s3://bucket/prefix`, `/var/backups`.
    pub describe: String,
    /// Sent with every object stored (the S3 storage class).
    attributes: Attributes,
}

/// The outcome of a create-only upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    Created,
    /// Something is already stored under the key; nothing was written.
    Exists,
}

/// One object in a listing, named relative to the listed folder.
#[derive(Debug, Clone)]
pub struct Entry {
    pub name: String,
    pub size: u64,
    pub modified: DateTime<Utc>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({})", self.describe)
    }
}

impl Store {
    /// Opens the storage `spec` names. Nothing is sent yet; the first request is the first
    /// contact (an unreachable storage is reported by the verb that needed it).
    pub fn open(spec: &StorageSpec, request_timeout: Duration) -> anyhow::Result<Store> {
        let client = object_store::ClientOptions::new()
            .with_timeout(request_timeout)
            .with_connect_timeout(Duration::from_secs(5).min(request_timeout));
        let retry =
            object_store::RetryConfig { max_retries: 5, retry_timeout: request_timeout * 2, ..Default::default() };
        let mut attributes = Attributes::new();
        let (os, base, describe): (Arc<dyn ObjectStore>, String, String) = match spec {
            StorageSpec::S3 {
                bucket,
                prefix,
                endpoint,
                region,
                path_style,
                access_key_id,
                secret_access_key,
                session_token,
                sse,
                storage_class,
            } => {
                let mut b = object_store::aws::AmazonS3Builder::new()
                    .with_bucket_name(bucket)
                    .with_region(region)
                    .with_virtual_hosted_style_request(!path_style && endpoint.is_none())
                    .with_client_options(client.with_allow_http(true))
                    .with_retry(retry);
                if let Some(e) = endpoint {
                    b = b.with_endpoint(e);
                }
                if let Some(k) = access_key_id {
                    b = b.with_access_key_id(k);
                }
                if let Some(s) = secret_access_key {
                    b = b.with_secret_access_key(s);
                }
                if let Some(t) = session_token {
                    b = b.with_token(t);
                }
                let sse_key: AmazonS3ConfigKey =
                    "aws_server_side_encryption".parse().context("object_store's SSE setting")?;
                b = match sse {
                    None => b,
                    Some(Sse::S3) => b.with_config(sse_key, "AES256"),
                    Some(Sse::Kms { dsse, key_id }) => match (dsse, key_id) {
                        (false, Some(k)) => b.with_sse_kms_encryption(k),
                        (true, Some(k)) => b.with_dsse_kms_encryption(k),
                        (dsse, None) => b.with_config(sse_key, if *dsse { "aws:kms:dsse" } else { "aws:kms" }),
                    },
                    Some(Sse::Customer { key_base64 }) => b.with_ssec_encryption(key_base64),
                };
                if let Some(c) = storage_class {
                    attributes.insert(Attribute::StorageClass, c.clone().into());
                }
                let s3 = b.build().with_context(|| format!("configure S3 bucket {bucket}"))?;
                (Arc::new(s3), prefix.clone(), format!("s3://{bucket}/{prefix}"))
            }
            StorageSpec::File { root } => {
                std::fs::create_dir_all(root).with_context(|| format!("create {}", root.display()))?;
                let fs = object_store::local::LocalFileSystem::new_with_prefix(root)
                    .with_context(|| format!("open {}", root.display()))?
                    .with_fsync(true);
                (Arc::new(fs), String::new(), root.display().to_string())
            }
            StorageSpec::Gcs { bucket, prefix, credentials } => {
                let mut b = object_store::gcp::GoogleCloudStorageBuilder::new()
                    .with_bucket_name(bucket)
                    .with_client_options(client)
                    .with_retry(retry);
                if let Some(c) = credentials {
                    b = b.with_application_credentials(c);
                }
                let gcs = b.build().with_context(|| format!("configure GCS bucket {bucket}"))?;
                (Arc::new(gcs), prefix.clone(), format!("gs://{bucket}/{prefix}"))
            }
            StorageSpec::Azure { container, prefix, account, access_key } => {
                let mut b = object_store::azure::MicrosoftAzureBuilder::new()
                    .with_container_name(container)
                    .with_client_options(client)
                    .with_retry(retry);
                if let Some(a) = account {
                    b = b.with_account(a);
                }
                if let Some(k) = access_key {
                    b = b.with_access_key(k);
                }
                let az = b.build().with_context(|| format!("configure Azure container {container}"))?;
                (Arc::new(az), prefix.clone(), format!("azure://{container}/{prefix}"))
            }
        };
        Ok(Store { os, base, describe, attributes })
    }

    /// The full object path of `rel`.
    pub fn path(&self, rel: &str) -> Path {
        if self.base.is_empty() { Path::from(rel) } else { Path::from(format!("{}/{rel}", self.base)) }
    }

    /// A listed object as an [`Entry`] named relative to `dir`.
    fn entry(&self, m: object_store::ObjectMeta, dir: &str) -> Entry {
        Entry { name: self.rel_of(m.location.as_ref(), dir).to_owned(), size: m.size, modified: m.last_modified }
    }

    fn rel_of<'a>(&self, full: &'a str, dir: &str) -> &'a str {
        let mut s = full;
        if !self.base.is_empty() {
            s = s.strip_prefix(&self.base).map(|r| r.trim_start_matches('/')).unwrap_or(s);
        }
        s.strip_prefix(dir).map(|r| r.trim_start_matches('/')).unwrap_or(s)
    }

    /// Stores `data` under `rel` only if nothing is there (`If-None-Match: *` on S3, a hard
    /// link on the filesystem). Durable when it returns `Created`.
    pub async fn put_new(&self, rel: &str, data: Bytes) -> anyhow::Result<Created> {
        let opts = PutOptions { mode: PutMode::Create, attributes: self.attributes.clone(), ..Default::default() };
        match self.os.put_opts(&self.path(rel), PutPayload::from(data), opts).await {
            Ok(_) => Ok(Created::Created),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(Created::Exists),
            Err(e) => Err(e).with_context(|| format!("upload {}", self.path(rel))),
        }
    }

    /// Stores `data` under `rel`, replacing what is there.
    pub async fn put(&self, rel: &str, data: Bytes) -> anyhow::Result<()> {
        let opts = PutOptions { attributes: self.attributes.clone(), ..Default::default() };
        self.os
            .put_opts(&self.path(rel), PutPayload::from(data), opts)
            .await
            .with_context(|| format!("upload {}", self.path(rel)))?;
        Ok(())
    }

    /// The whole object, or `None` if there is none.
    pub async fn get(&self, rel: &str) -> anyhow::Result<Option<Bytes>> {
        match self.os.get(&self.path(rel)).await {
            Ok(r) => Ok(Some(r.bytes().await.with_context(|| format!("download {}", self.path(rel)))?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("download {}", self.path(rel))),
        }
    }

    /// The object as a stream of chunks, or `None` if there is none.
    pub async fn get_stream(&self, rel: &str) -> anyhow::Result<Option<BoxStream<'static, std::io::Result<Bytes>>>> {
        match self.os.get(&self.path(rel)).await {
            // object_store reads a local file in 8 KiB chunks, one blocking task each, which
            // held restores from a folder to a third of the disk's rate: read 1 MiB at a time.
            Ok(r) => Ok(Some(match r.payload {
                object_store::GetResultPayload::File(file, _) => {
                    let f = tokio::io::AsyncReadExt::take(tokio::fs::File::from_std(file), r.meta.size);
                    tokio_util::io::ReaderStream::with_capacity(f, STREAM_CHUNK).boxed()
                }
                object_store::GetResultPayload::Stream(s) => s.map(|c| c.map_err(std::io::Error::other)).boxed(),
            })),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("download {}", self.path(rel))),
        }
    }

    /// The objects directly in folder `dir` (not below it) and its sub-folders' names.
    pub async fn list_dir(&self, dir: &str) -> anyhow::Result<(Vec<Entry>, Vec<String>)> {
        let p = self.path(dir);
        let r = match self.os.list_with_delimiter(Some(&p)).await {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) => return Ok((vec![], vec![])),
            Err(e) => return Err(e).with_context(|| format!("list {p}")),
        };
        let objects = r.objects.into_iter().map(|m| self.entry(m, dir)).collect();
        let dirs = r.common_prefixes.into_iter().map(|d| self.rel_of(d.as_ref(), dir).to_owned()).collect();
        Ok((objects, dirs))
    }

    /// Every object below folder `dir`, named relative to it.
    pub async fn list_all(&self, dir: &str) -> anyhow::Result<Vec<Entry>> {
        let p = self.path(dir);
        let mut out = Vec::new();
        let mut s = self.os.list(Some(&p));
        while let Some(m) = s.next().await {
            match m {
                Ok(m) => out.push(self.entry(m, dir)),
                Err(object_store::Error::NotFound { .. }) => break,
                Err(e) => return Err(e).with_context(|| format!("list {p}")),
            }
        }
        Ok(out)
    }

    /// Deletes every object in `rels` (batched where the storage can). Missing ones are fine.
    pub async fn delete_many(&self, rels: &[String]) -> anyhow::Result<()> {
        let paths: Vec<object_store::Result<Path>> = rels.iter().map(|r| Ok(self.path(r))).collect();
        let mut s = self.os.delete_stream(futures::stream::iter(paths).boxed());
        while let Some(r) = s.next().await {
            match r {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e).context("delete objects"),
            }
        }
        Ok(())
    }

    /// A multipart upload to `rel`, for objects too big to hold in memory.
    pub async fn multipart(&self, rel: &str, part_size: usize) -> anyhow::Result<object_store::WriteMultipart> {
        let up = self
            .os
            .put_multipart_opts(
                &self.path(rel),
                PutMultipartOptions { attributes: self.attributes.clone(), ..Default::default() },
            )
            .await
            .with_context(|| format!("start upload of {}", self.path(rel)))?;
        Ok(object_store::WriteMultipart::new_with_chunk_size(up, part_size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_store(dir: &std::path::Path) -> Store {
        Store::open(&StorageSpec::File { root: dir.to_owned() }, Duration::from_secs(5)).expect("open")
    }

    #[tokio::test]
    async fn create_only_upload_never_replaces() {
        let d = tempfile::tempdir().expect("tmp");
        let s = file_store(d.path());
        assert_eq!(s.put_new("wal_005/a.lz4", Bytes::from_static(b"one")).await.expect("put"), Created::Created);
        assert_eq!(s.put_new("wal_005/a.lz4", Bytes::from_static(b"two")).await.expect("put"), Created::Exists);
        assert_eq!(s.get("wal_005/a.lz4").await.expect("get").as_deref(), Some(&b"one"[..]));
        assert!(s.get("wal_005/missing").await.expect("get").is_none());
    }

    #[tokio::test]
    async fn listing_a_folder_names_objects_relative_to_it_and_does_not_descend() {
        let d = tempfile::tempdir().expect("tmp");
        let s = file_store(d.path());
        for k in ["basebackups_005/b1_backup_stop_sentinel.json", "basebackups_005/b1/metadata.json", "wal_005/x"] {
            s.put(k, Bytes::from_static(b"{}")).await.expect("put");
        }
        let (objs, dirs) = s.list_dir("basebackups_005").await.expect("list");
        assert_eq!(objs.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(), ["b1_backup_stop_sentinel.json"]);
        assert_eq!(dirs, ["b1"]);
        let all = s.list_all("basebackups_005").await.expect("list");
        assert_eq!(all.len(), 2);
        s.delete_many(&["wal_005/x".into(), "wal_005/never".into()]).await.expect("delete");
        assert!(s.list_all("wal_005").await.expect("list").is_empty());
    }
}
