//! proxy-checker: HAProxy health-check endpoints with Patroni's paths, answering from etcd and the local PostgreSQL.
#![forbid(unsafe_code)]

pub mod check;
pub mod config;
pub mod verdict;
pub mod view;
