//! Plumbing shared by the five Outrigger daemons.
//!
//! - [`config`]: TOML in two layers (raw serde struct, then a validated struct), with one
//!   message per problem naming the key, the value and the rule; unknown keys are errors.
//! - [`cli`]: the flags every daemon has (`--config`, `--check-config`, `--log-format`) and the
//!   exit codes of a config check.
//! - [`logging`]: `tracing-subscriber`, human text or JSON, level from config or `RUST_LOG`.
//! - [`http`]: a small hyper server with connection limits and timeouts; [`metrics`] serves
//!   `/metrics` on it.
//! - [`systemd`]: `sd_notify` READY/STOPPING/WATCHDOG.
//! - [`shutdown`]: SIGTERM/SIGINT to a cancellation token, with a deadline for the rest.
//! - [`reload`]: SIGHUP re-reads the config file; what can change at runtime applies.

pub mod cli;
pub mod config;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod reload;
pub mod shutdown;
pub mod systemd;
