//! ha-agent: a Patroni-compatible high-availability agent for PostgreSQL.
//!
//! This crate so far holds the config layer; the HA engine, PostgreSQL management and REST
//! API land with their own issues.
#![forbid(unsafe_code)]

pub mod config;
