//! ha-agent: a Patroni-compatible high-availability agent for PostgreSQL.
//!
//! - [`config`]: the config file (raw serde layer, validated [`config::Config`]).
//! - [`core`]: the pure HA decision core and the types it decides from.
//! - [`run`]: the HA loop around it (etcd, PostgreSQL, peers), with [`lease`] (the lease
//!   keeper's shell: renews, fences and feeds the watchdog on its own), [`dcs`] (the Patroni
//!   keys in etcd), [`pg`] (local PostgreSQL), [`http`] (the REST port) and [`metrics`];
//!   [`control`] is what the REST API and the loop exchange (snapshots one way, action
//!   commands the other); [`clock`] is `CLOCK_BOOTTIME`; [`sys`] holds the watchdog device
//!   and the BOOTTIME timer, the only module with `unsafe`.
#![deny(unsafe_code)]

pub mod clock;
pub mod config;
pub mod control;
pub mod core;
pub mod dcs;
pub mod http;
pub mod lease;
pub mod metrics;
pub mod patroni_yaml;
pub mod pg;
pub mod run;
pub mod sys;
