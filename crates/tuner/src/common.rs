//! `--common-conf`: pg_configurator's extensions, logging and statistics set (`conf_common.py`),
//! the same for every version. tuner emits the same values, typed.
//!
//! `auto_explain.log_analyze = true` times every node of every statement, which costs CPU on
//! busy systems; tuner keeps it (the reference deployment relies on the plans it logs) but
//! turns per-node timing off, so only row counts and buffers are instrumented and plans of slow
//! statements still show where the rows went.

use crate::setting::Value;

/// pg_configurator's strings, quotes as it writes them.
pub const PG_CONFIGURATOR_COMMON: &[(&str, &str)] = &[
    ("shared_preload_libraries", "'pg_stat_statements,auto_explain'"),
    ("auto_explain.log_min_duration", "'3s'"),
    ("auto_explain.log_analyze", "true"),
    ("auto_explain.log_verbose", "true"),
    ("auto_explain.log_buffers", "true"),
    ("auto_explain.log_format", "text"),
    ("pg_stat_statements.max", "1000"),
    ("pg_stat_statements.track", "all"),
    ("logging_collector", "on"),
    ("log_destination", "'csvlog'"),
    ("log_directory", "'pg_log'"),
    ("log_filename", "'postgresql-%Y-%m-%d_%H%M%S.log'"),
    ("log_truncate_on_rotation", "on"),
    ("log_rotation_age", "1d"),
    ("log_rotation_size", "100MB"),
    ("log_min_messages", "warning"),
    ("log_min_error_statement", "error"),
    ("log_min_duration_statement", "3000"),
    ("log_duration", "off"),
    ("log_lock_waits", "on"),
    ("log_statement", "'ddl'"),
    ("log_temp_files", "0"),
    ("log_checkpoints", "on"),
    ("log_autovacuum_min_duration", "1s"),
    ("track_activities", "on"),
    ("track_counts", "on"),
    ("track_io_timing", "on"),
    ("track_functions", "pl"),
    ("track_activity_query_size", "2048"),
];

/// tuner's `--common-conf` set: `(name, value, note)`.
pub fn common() -> Vec<(&'static str, Value, &'static str)> {
    use Value::*;
    let same = "pg_configurator's --common-conf value";
    vec![
        ("shared_preload_libraries", Text("pg_stat_statements,auto_explain".into()), same),
        ("auto_explain.log_min_duration", Millis(3000), same),
        ("auto_explain.log_analyze", Bool(true), same),
        (
            "auto_explain.log_timing",
            Bool(false),
            "not in pg_configurator: with log_analyze on, per-node timing of every statement costs \
             CPU on busy systems; row counts and buffers are kept",
        ),
        ("auto_explain.log_verbose", Bool(true), same),
        ("auto_explain.log_buffers", Bool(true), same),
        ("auto_explain.log_format", Word("text"), same),
        ("pg_stat_statements.max", Int(1000), same),
        ("pg_stat_statements.track", Word("all"), same),
        ("logging_collector", Bool(true), same),
        ("log_destination", Text("csvlog".into()), same),
        ("log_directory", Text("pg_log".into()), same),
        ("log_filename", Text("postgresql-%Y-%m-%d_%H%M%S.log".into()), same),
        ("log_truncate_on_rotation", Bool(true), same),
        ("log_rotation_age", Millis(86_400_000), same),
        ("log_rotation_size", Bytes(100 * crate::units::MIB), same),
        ("log_min_messages", Word("warning"), same),
        ("log_min_error_statement", Word("error"), same),
        ("log_min_duration_statement", Millis(3000), same),
        ("log_duration", Bool(false), same),
        ("log_lock_waits", Bool(true), same),
        ("log_statement", Word("ddl"), same),
        ("log_temp_files", Bytes(0), same),
        ("log_checkpoints", Bool(true), same),
        ("log_autovacuum_min_duration", Millis(1000), same),
        ("track_activities", Bool(true), same),
        ("track_counts", Bool(true), same),
        ("track_io_timing", Bool(true), same),
        ("track_functions", Word("pl"), same),
        ("track_activity_query_size", Int(2048), same),
    ]
}
