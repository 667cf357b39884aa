//! tuner: PostgreSQL settings from hardware and workload, a drop-in for pg_configurator.
//!
//! Same inputs (pg_configurator's option spellings, plus NVMe and PGTune's workload names) and
//! outputs (`conf`, `json`, `patroni-json`, plus `alter-system`), without its bugs, and with
//! every value explained and checked against the real PostgreSQL binary.
//!
//! Pure parts (no I/O, table-tested):
//! - [`rules::tune`]: the rules, inputs → settings, each with the rule that produced it and,
//!   where tuner departs from pg_configurator, why.
//! - [`pgconf`] and [`pgtune`]: pg_configurator's and PGTune's formulas, reproduced, so that
//!   `--explain` can show what they give; `--formula` outputs them.
//! - [`catalog`]: what tuner believes about each parameter (base unit, versions, restart).
//! - [`output`], [`explain`]: the output formats and the explanation.
//! - [`validate`]: comparing settings with a server's catalogue; [`apply::plan`]: merging
//!   them into Patroni's `/config`.
//!
//! Edges: [`detect`] (cgroups, `/proc`, sysfs), [`server`] (runs `postgres --describe-config`
//! and `postgres -C`), [`apply::apply`] (etcd compare-and-swap), [`cli`] (the command line).
#![forbid(unsafe_code)]

pub mod apply;
pub mod catalog;
pub mod cli;
pub mod common;
pub mod compare;
pub mod config;
pub mod detect;
pub mod explain;
pub mod input;
pub mod output;
pub mod pgconf;
pub mod pgtune;
pub mod rules;
pub mod server;
pub mod setting;
pub mod units;
pub mod validate;

pub use input::{Disk, Duty, Inputs};
pub use rules::tune;
pub use setting::{Setting, Tuning, Value};
