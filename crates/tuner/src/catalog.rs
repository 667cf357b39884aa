//! What tuner knows about each parameter it may emit: its type, base unit, whether a change
//! needs a restart, and which PostgreSQL versions have it.
//!
//! This table is tuner's own belief. It is checked against the real server two ways: the
//! `--validate` check compares it with `postgres --describe-config` (name, type, range,
//! context) and reads each value back through `postgres -C` (which proves the unit), and a
//! pure test checks that no rule emits a parameter outside its versions.

use crate::units::Unit;

/// The first and last PostgreSQL major versions tuner tunes.
pub const MIN_VERSION: u8 = 13;
pub const MAX_VERSION: u8 = 18;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Bool,
    Int,
    Real,
    Enum,
    String,
}

/// When a changed value takes effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    Never,
    Always,
    /// Needs a restart up to and including this version (e.g. `autovacuum_max_workers`
    /// became reloadable in 18).
    Until(u8),
}

#[derive(Debug, Clone, Copy)]
pub struct Param {
    pub name: &'static str,
    pub kind: Kind,
    pub unit: Unit,
    pub restart: Restart,
    /// First version that has it.
    pub since: u8,
    /// Last version that has it (`None`: still there in 18).
    pub until: Option<u8>,
    /// An extension's parameter (`auto_explain.*`): not in the core catalogue.
    pub custom: bool,
}

impl Param {
    pub fn exists_in(&self, version: u8) -> bool {
        version >= self.since && self.until.is_none_or(|u| version <= u)
    }

    pub fn needs_restart(&self, version: u8) -> bool {
        match self.restart {
            Restart::Never => false,
            Restart::Always => true,
            Restart::Until(v) => version <= v,
        }
    }
}

const fn p(name: &'static str, kind: Kind, unit: Unit, restart: Restart) -> Param {
    Param { name, kind, unit, restart, since: 9, until: None, custom: false }
}

const fn since(mut x: Param, v: u8) -> Param {
    x.since = v;
    x
}

const fn until(mut x: Param, v: u8) -> Param {
    x.until = Some(v);
    x
}

const fn custom(mut x: Param) -> Param {
    x.custom = true;
    x
}

use Kind::*;
use Restart::{Always as R, Never as N};
use Unit::{Blocks8k, Kb, Mb, Min, Ms, S};

const U: Unit = Unit::None;

/// Every parameter tuner, its pg_configurator reproduction or its PGTune reproduction emits.
pub static PARAMS: &[Param] = &[
    // Memory and connections.
    p("shared_buffers", Int, Blocks8k, R),
    p("effective_cache_size", Int, Blocks8k, N),
    p("work_mem", Int, Kb, N),
    p("temp_buffers", Int, Blocks8k, N),
    p("maintenance_work_mem", Int, Kb, N),
    p("autovacuum_work_mem", Int, Kb, N),
    since(p("logical_decoding_work_mem", Int, Kb, N), 13),
    since(p("hash_mem_multiplier", Real, U, N), 13),
    p("huge_pages", Enum, U, R),
    p("max_connections", Int, U, R),
    p("superuser_reserved_connections", Int, U, R),
    p("max_files_per_process", Int, U, R),
    // Autovacuum and vacuum.
    p("autovacuum", Bool, U, N),
    p("autovacuum_max_workers", Int, U, Restart::Until(17)),
    since(p("autovacuum_worker_slots", Int, U, R), 18),
    p("autovacuum_naptime", Int, S, N),
    p("autovacuum_vacuum_threshold", Int, U, N),
    p("autovacuum_analyze_threshold", Int, U, N),
    p("autovacuum_vacuum_scale_factor", Real, U, N),
    p("autovacuum_analyze_scale_factor", Real, U, N),
    p("autovacuum_vacuum_cost_limit", Int, U, N),
    p("autovacuum_vacuum_cost_delay", Real, Ms, N),
    p("autovacuum_freeze_max_age", Int, U, R),
    p("autovacuum_multixact_freeze_max_age", Int, U, R),
    since(p("autovacuum_vacuum_insert_threshold", Int, U, N), 13),
    since(p("autovacuum_vacuum_insert_scale_factor", Real, U, N), 13),
    p("vacuum_cost_limit", Int, U, N),
    p("vacuum_cost_delay", Real, Ms, N),
    until(p("old_snapshot_threshold", Int, Min, R), 16),
    // WAL.
    p("wal_level", Enum, U, R),
    since(p("wal_keep_size", Int, Mb, N), 13),
    p("synchronous_commit", Enum, U, N),
    p("full_page_writes", Bool, U, N),
    p("wal_compression", Enum, U, N),
    p("wal_buffers", Int, Blocks8k, R),
    p("wal_writer_delay", Int, Ms, N),
    p("wal_writer_flush_after", Int, Blocks8k, N),
    p("min_wal_size", Int, Mb, N),
    p("max_wal_size", Int, Mb, N),
    p("wal_log_hints", Bool, U, R),
    // Replication.
    p("max_replication_slots", Int, U, R),
    p("max_wal_senders", Int, U, R),
    p("wal_sender_timeout", Int, Ms, N),
    p("hot_standby", Bool, U, R),
    p("wal_receiver_timeout", Int, Ms, N),
    p("wal_receiver_status_interval", Int, S, N),
    p("hot_standby_feedback", Bool, U, N),
    p("max_standby_streaming_delay", Int, Ms, N),
    // Checkpoints and background writer.
    p("checkpoint_timeout", Int, S, N),
    p("checkpoint_completion_target", Real, U, N),
    p("commit_delay", Int, U, N),
    p("commit_siblings", Int, U, N),
    p("bgwriter_delay", Int, Ms, N),
    p("bgwriter_lru_maxpages", Int, U, N),
    p("bgwriter_lru_multiplier", Real, U, N),
    // Planner.
    p("default_statistics_target", Int, U, N),
    p("random_page_cost", Real, U, N),
    p("seq_page_cost", Real, U, N),
    p("jit", Bool, U, N),
    // Asynchronous I/O and parallelism.
    p("effective_io_concurrency", Int, U, N),
    since(p("maintenance_io_concurrency", Int, U, N), 13),
    since(p("io_method", Enum, U, R), 18),
    since(p("io_workers", Int, U, N), 18),
    p("max_worker_processes", Int, U, R),
    p("max_parallel_workers_per_gather", Int, U, N),
    p("max_parallel_workers", Int, U, N),
    p("max_logical_replication_workers", Int, U, R),
    p("max_sync_workers_per_subscription", Int, U, N),
    p("max_parallel_maintenance_workers", Int, U, N),
    since(p("max_parallel_apply_workers_per_subscription", Int, U, N), 16),
    // Locks and timeouts.
    p("max_locks_per_transaction", Int, U, R),
    p("max_pred_locks_per_transaction", Int, U, R),
    p("statement_timeout", Int, Ms, N),
    p("idle_in_transaction_session_timeout", Int, Ms, N),
    since(p("client_connection_check_interval", Int, Ms, N), 14),
    since(p("default_toast_compression", Enum, U, N), 14),
    until(p("stats_temp_directory", String, U, N), 14),
    // `--common-conf`: extensions, logging, statistics.
    p("shared_preload_libraries", String, U, R),
    custom(p("auto_explain.log_min_duration", Int, Ms, N)),
    custom(p("auto_explain.log_analyze", Bool, U, N)),
    custom(p("auto_explain.log_timing", Bool, U, N)),
    custom(p("auto_explain.log_verbose", Bool, U, N)),
    custom(p("auto_explain.log_buffers", Bool, U, N)),
    custom(p("auto_explain.log_format", Enum, U, N)),
    custom(p("pg_stat_statements.max", Int, U, R)),
    custom(p("pg_stat_statements.track", Enum, U, N)),
    p("logging_collector", Bool, U, R),
    p("log_destination", String, U, N),
    p("log_directory", String, U, N),
    p("log_filename", String, U, N),
    p("log_truncate_on_rotation", Bool, U, N),
    p("log_rotation_age", Int, Min, N),
    p("log_rotation_size", Int, Kb, N),
    p("log_min_messages", Enum, U, N),
    p("log_min_error_statement", Enum, U, N),
    p("log_min_duration_statement", Int, Ms, N),
    p("log_duration", Bool, U, N),
    p("log_lock_waits", Bool, U, N),
    p("log_statement", Enum, U, N),
    p("log_temp_files", Int, Kb, N),
    p("log_checkpoints", Bool, U, N),
    p("log_autovacuum_min_duration", Int, Ms, N),
    p("track_activities", Bool, U, N),
    p("track_counts", Bool, U, N),
    p("track_io_timing", Bool, U, N),
    p("track_functions", Enum, U, N),
    p("track_activity_query_size", Int, Unit::Bytes, R),
];

/// Looks a parameter up by name.
pub fn param(name: &str) -> Option<&'static Param> {
    PARAMS.iter().find(|p| p.name == name)
}

/// Parameters whose value is a list, which `ALTER SYSTEM` must get as separate literals.
pub fn is_list(name: &str) -> bool {
    matches!(name, "shared_preload_libraries" | "log_destination")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique() {
        let mut names: Vec<_> = PARAMS.iter().map(|p| p.name).collect();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len());
    }

    #[test]
    fn removed_and_added_parameters_follow_the_release_notes() {
        let osn = param("old_snapshot_threshold").unwrap();
        assert!(osn.exists_in(16) && !osn.exists_in(17), "PostgreSQL 17 removed old_snapshot_threshold");
        assert!(!param("stats_temp_directory").unwrap().exists_in(15), "PostgreSQL 15 removed stats_temp_directory");
        assert!(param("io_method").unwrap().exists_in(18) && !param("io_method").unwrap().exists_in(17));
        assert!(param("autovacuum_max_workers").unwrap().needs_restart(17));
        assert!(!param("autovacuum_max_workers").unwrap().needs_restart(18));
    }
}
