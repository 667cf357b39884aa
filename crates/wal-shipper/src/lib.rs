//! wal-shipper: WAL archiving and base backups in WAL-G's bucket layout on S3-compatible storage.
//!
//! This crate so far holds the config layer; the daemon's behaviour lands with its own issue.
#![forbid(unsafe_code)]

pub mod config;
