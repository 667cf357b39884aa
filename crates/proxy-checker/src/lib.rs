//! proxy-checker: HAProxy health-check endpoints with Patroni's paths and 200/503 semantics,
//! answering from etcd and the local PostgreSQL rather than from an HA agent's belief.
//!
//! Shape (decide purely, act at the edges):
//! - [`check`]: what a request asks (path, `?lag=`, tags, ...), parsed once for HTTP and agent.
//! - [`view`]: what was observed in etcd and PostgreSQL, with the instants that date it.
//! - [`verdict`]: the pure decision, `(views, policy, now) × check → 200/503 + reason`.
//! - [`agent`]: HAProxy's agent-check answer for a verdict, and its TCP server.
//! - [`sources`]: the etcd follower (watch plus confirmation reads) and the PostgreSQL poller.
//! - [`http`]: the check endpoints and `/metrics`; [`metrics`]: every metric.
//! - [`run`]: wiring and supervision; the binary's `main` only parses and calls it.
#![forbid(unsafe_code)]

pub mod agent;
pub mod app;
pub mod check;
pub mod config;
pub mod http;
pub mod metrics;
mod run;
pub mod sources;
pub mod verdict;
pub mod view;

pub use run::run;
