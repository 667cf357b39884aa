//! proxy-checker: HAProxy health-check endpoints with Patroni's paths, answering from etcd and the local PostgreSQL.
//!
//! This crate so far holds the config layer; the daemon's behaviour lands with its own issue.
#![forbid(unsafe_code)]

pub mod config;
