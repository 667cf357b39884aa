//! wal-shipper: WAL archiving and base backups in WAL-G's bucket layout, on S3-compatible
//! storage, GCS, Azure or a local folder. A drop-in for WAL-G's verbs and settings.
//!
//! Pure parts: [`walname`] (WAL file names), [`walpush::on_existing`] (the overwrite rule),
//! [`backup::sentinel`] (WAL-G's JSON), [`retention`] and [`verify`] (what to delete, what is
//! missing). Edges: [`storage`] (object_store), [`codec`]/[`crypto`] (compression,
//! libsodium), the verbs in [`cli`].
#![forbid(unsafe_code)]

pub mod backup;
pub mod cli;
pub mod cluster;
pub mod codec;
pub mod crypto;
pub mod daemon;
pub mod metrics;
pub mod ops;
pub mod progress;
pub mod report;
pub mod retention;
pub mod settings;
pub mod storage;
pub mod verify;
pub mod walfetch;
pub mod walname;
pub mod walpush;
