//! tuner: PostgreSQL settings from hardware and workload, compatible with pg_configurator's inputs and outputs.
//!
//! This crate so far holds the config layer; the daemon's behaviour lands with its own issue.
#![forbid(unsafe_code)]

pub mod config;
