//! ha-agent: a Patroni-compatible high-availability agent for PostgreSQL.
//!
//! - [`config`]: the config file (raw serde layer, validated [`config::Config`]).
//! - [`core`]: the pure HA decision core and the types it decides from.
#![forbid(unsafe_code)]

pub mod config;
pub mod core;
