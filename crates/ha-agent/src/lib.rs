//! ha-agent: a Patroni-compatible high-availability agent for PostgreSQL.
//!
//! - [`config`]: the config file (raw serde layer, validated [`config::Config`]).
//! - [`core`]: the pure HA decision core and the types it decides from.
//! - [`run`]: the HA loop around it (etcd, PostgreSQL, peers), with [`lease`] (the lease
//!   keeper that renews and fences on its own), [`dcs`] (the Patroni keys in etcd), [`pg`]
//!   (local PostgreSQL), [`http`] (the REST port) and [`metrics`]; [`control`] is what the
//!   REST API and the loop exchange (snapshots one way, action commands the other).
#![forbid(unsafe_code)]

pub mod config;
pub mod control;
pub mod core;
pub mod dcs;
pub mod hedge;
pub mod http;
pub mod lease;
pub mod metrics;
pub mod pg;
pub mod run;
