//! pg_configurator's formulas, reproduced exactly (bugs included), so that `--explain` can
//! show what pg_configurator would give and `--formula pg_configurator` can stand in for it.
//!
//! Source: `../shared/reference/tuning.md` §1 (pg_configurator @ 5354aa7). The quirks kept on
//! purpose, because this module is the *comparison*, not tuner's rules:
//! - sizes go through `size_to`, which picks the unit with `bytes / 10 >= factor` and
//!   truncates (20464.64 MiB prints as `19GB`);
//! - raw, unrounded floats feed later formulas (`max_connections` 69.56 into `work_mem`);
//! - `calc_cpu_scale` has no upper clamp;
//! - `old_snapshot_threshold` is emitted for every version, 17 and 18 included.
//!
//! The replication flag is taken as already decided: the `"False"`-means-true quirk lives in
//! how pg_configurator parses its command line, which [`crate::cli`] does not copy.

use std::collections::BTreeMap;

use crate::input::{Disk, Inputs, PgcDuty, Platform};
use crate::units::{GIB, KIB, MIB, TIB};

/// pg_configurator's scale functions over one set of inputs.
#[derive(Debug, Clone, Copy)]
pub struct Scales {
    /// Cores, rounded to one decimal.
    pub cpu: f64,
    /// Usable RAM in bytes.
    pub ram: f64,
    /// System score, 0..100 within pg_configurator's stated maxima (96 cores, 768Gi).
    pub system: f64,
}

impl Scales {
    pub fn new(i: &Inputs) -> Self {
        let ram = i.usable_ram();
        let max_ram = 768.0 * GIB as f64 * (100.0 - i.reserved_ram_percent) / 100.0 - i.reserved_system_ram as f64;
        let cpu_scores = i.cpu * 100.0 / 96.0;
        let ram_scores = ram * 100.0 / max_ram;
        let disk_scores = disk_score(i.disk);
        // Three "triangle areas" (0.5·a·b·sin 120°) normalised to 0..100.
        let system = (cpu_scores * ram_scores + ram_scores * disk_scores + disk_scores * cpu_scores) / 300.0;
        Self { cpu: i.cpu, ram, system }
    }

    /// `calc_cpu_scale`: linear in cores from 4 (lo) to 96 (hi), floored at lo, **not** capped.
    pub fn cpu_scale(&self, lo: f64, hi: f64) -> f64 {
        (((self.cpu - 4.0) / 92.0) * (hi - lo) + lo).max(lo)
    }

    /// `calc_system_scores_scale`: linear in the system score, floored at lo.
    pub fn sys_scale(&self, lo: f64, hi: f64) -> f64 {
        ((self.system / 100.0) * (hi - lo) + lo).max(lo)
    }
}

/// pg_configurator scores SATA 20, SAS 40, SSD 100; NVMe and SAN (which it lacks) count as SSD.
fn disk_score(d: Disk) -> f64 {
    match d {
        Disk::Sata => 20.0,
        Disk::Sas => 40.0,
        Disk::Ssd | Disk::Nvme | Disk::San => 100.0,
    }
}

/// `UnitConverter.size_to`: the largest unit with `v / 10 >= factor`, truncated.
pub fn size_to(v: f64) -> String {
    for (suffix, factor) in [("TB", TIB), ("GB", GIB), ("MB", MIB), ("kB", KIB)] {
        if v / 10.0 >= factor as f64 {
            return format!("{}{suffix}", (v / factor as f64) as i64);
        }
    }
    format!("{}", v as i64)
}

/// Python's `str(float)` for the values pg_configurator rounds (`0.01`, `0.2`, `1.0`).
fn py_float(v: f64) -> String {
    if v.fract() == 0.0 { format!("{v:.1}") } else { format!("{v}") }
}

/// pg_configurator's output for these inputs (its default memory parts where none are given),
/// as the flat `name → string` map its `--output-format=json` prints.
pub fn pg_configurator(i: &Inputs) -> BTreeMap<String, String> {
    let s = Scales::new(i);
    let cs = |lo: f64, hi: f64| s.cpu_scale(lo, hi);
    let ss = |lo: f64, hi: f64| s.sys_scale(lo, hi);
    let r = s.ram;
    let v = i.version;
    let repl = i.replication;
    let duty = i.duty.pg_configurator_class();
    let (f, m) = (duty == PgcDuty::Financial, duty == PgcDuty::Mixed);
    let pick = |fv: &str, mv: &str, sv: &str| {
        if f {
            fv
        } else if m {
            mv
        } else {
            sv
        }
        .to_owned()
    };
    let onoff = |b: bool| if b { "on" } else { "off" }.to_owned();

    let sb_part = i.parts.shared_buffers.unwrap_or(0.7);
    let client_part = i.parts.client.unwrap_or(0.2);
    let maint_part = i.parts.maintenance.unwrap_or(0.1);
    let av_part = i.parts.autovacuum_workers.unwrap_or(0.5);
    let maint_conns_part = i.parts.maintenance_conns.unwrap_or(0.5);

    let mut o = BTreeMap::new();
    let mut put = |k: &str, val: String| {
        o.insert(k.to_owned(), val);
    };

    // Autovacuum.
    let av_workers = cs(i.min_autovac_workers as f64, i.max_autovac_workers as f64);
    put("autovacuum", "on".into());
    put("autovacuum_max_workers", size_to(av_workers));
    put("autovacuum_work_mem", size_to(r * maint_part * av_part / av_workers));
    put("autovacuum_naptime", "15s".into());
    put("autovacuum_vacuum_threshold", format!("{}", ss(1000.0, 20000.0) as i64));
    put("autovacuum_analyze_threshold", format!("{}", ss(500.0, 10000.0) as i64));
    put("autovacuum_vacuum_scale_factor", "0.1".into());
    put("autovacuum_analyze_scale_factor", "0.05".into());
    let cost_limit = format!("{}", ss(4000.0, 8000.0) as i64);
    put("autovacuum_vacuum_cost_limit", cost_limit.clone());
    put("vacuum_cost_limit", cost_limit);
    put("autovacuum_vacuum_cost_delay", "10ms".into());
    put("vacuum_cost_delay", "10ms".into());
    put("autovacuum_freeze_max_age", "1200000000".into());
    put("autovacuum_multixact_freeze_max_age", "1400000000".into());
    put("autovacuum_vacuum_insert_threshold", format!("{}", ss(1000.0, 20000.0) as i64));
    put("autovacuum_vacuum_insert_scale_factor", py_float((ss(0.01, 0.2) * 100.0).round() / 100.0));

    // Memory and connections.
    let shared_buffers = r * sb_part;
    let max_connections = cs(i.min_conns as f64, i.max_conns as f64).max(i.min_conns as f64);
    let maint_max_conns = cs(i.min_maint_conns as f64, i.max_maint_conns as f64);
    put("shared_buffers", size_to(shared_buffers));
    put("max_connections", size_to(max_connections));
    put("max_files_per_process", size_to(cs(1000.0, 10000.0)));
    put("superuser_reserved_connections", "4".into());
    put("work_mem", size_to((r * client_part / max_connections * 0.9).max(10_240_000.0)));
    put("temp_buffers", size_to((r * client_part / max_connections * 0.1).max(1_024_000.0)));
    put("maintenance_work_mem", size_to(r * maint_part * maint_conns_part / maint_max_conns));
    put("old_snapshot_threshold", "4320".into());
    put("hash_mem_multiplier", pick("1.2", "2.0", "8.0"));
    put("logical_decoding_work_mem", format!("{}MB", ss(64.0, 8096.0) as i64));
    if v >= 14 {
        put("client_connection_check_interval", pick("3s", "10s", "30s"));
        put("default_toast_compression", pick("pglz", "pglz", "lz4"));
    }

    // WAL.
    put("wal_level", if repl { "logical" } else { "minimal" }.into());
    put("wal_keep_size", format!("{}MB", ss(1024.0, 16384.0) as i64));
    put(
        "synchronous_commit",
        match (repl, duty) {
            (_, PgcDuty::Statistic) => "off",
            (true, PgcDuty::Mixed) => "local",
            (true, PgcDuty::Financial) => "remote_apply",
            (false, PgcDuty::Mixed) => "off",
            (false, PgcDuty::Financial) => "on",
        }
        .into(),
    );
    put("full_page_writes", onoff(f || repl));
    put("wal_compression", onoff(repl));
    put("wal_buffers", format!("{}MB", (ss(16.0 * MIB as f64, 256.0 * MIB as f64) / MIB as f64) as i64));
    put(
        "wal_writer_delay",
        if f { "100ms".into() } else { format!("{}ms", ss(200.0, if m { 1000.0 } else { 5000.0 }) as i64) },
    );
    put("wal_writer_flush_after", size_to(ss(MIB as f64, 64.0 * MIB as f64)));
    put("min_wal_size", size_to(ss(512.0 * MIB as f64, 16.0 * GIB as f64)));
    put("max_wal_size", size_to(ss(GIB as f64, if f { 32.0 } else { 64.0 } * GIB as f64)));

    // Replication, primary and standby side.
    put("max_replication_slots", if repl { "10" } else { "0" }.into());
    put("max_wal_senders", if repl { "10" } else { "0" }.into());
    put("wal_sender_timeout", if repl { "180s" } else { "0" }.into());
    put("wal_log_hints", onoff(repl));
    put("hot_standby", onoff(repl));
    put("wal_receiver_timeout", if repl { "180s" } else { "0" }.into());
    put("wal_receiver_status_interval", if repl { "10s" } else { "0" }.into());
    put("hot_standby_feedback", onoff(repl));
    put(
        "max_standby_streaming_delay",
        if f && repl {
            "90s"
        } else if m {
            "1800s"
        } else {
            "-1"
        }
        .into(),
    );

    // Checkpointer and background writer.
    put("checkpoint_timeout", pick("5min", "30min", "1h"));
    put("checkpoint_completion_target", pick("0.5", "0.7", "0.9"));
    put("commit_delay", if f { "0".into() } else { format!("{}", ss(100.0, if m { 1000.0 } else { 5000.0 }) as i64) });
    put("commit_siblings", if f { "0".into() } else { format!("{}", ss(10.0, 100.0) as i64) });
    put("bgwriter_delay", format!("{}ms", ss(200.0, 1000.0) as i64));
    put("bgwriter_lru_maxpages", format!("{}", ss(1024.0, 32768.0) as i64));
    put("bgwriter_lru_multiplier", "7.0".into());

    // Planner.
    put("effective_cache_size", size_to(r - shared_buffers - i.reserved_system_ram as f64));
    put("default_statistics_target", "1000".into());
    let (rpc, eio) = match i.disk {
        Disk::Sata => ("6", "2"),
        Disk::Sas => ("4", "4"),
        Disk::Ssd | Disk::Nvme | Disk::San => ("1", "128"),
    };
    put("random_page_cost", rpc.into());
    put("seq_page_cost", "1".into());

    // Asynchronous behaviour and parallelism.
    put("effective_io_concurrency", eio.into());
    put("maintenance_io_concurrency", eio.into());
    put("max_worker_processes", size_to(cs(4.0, 32.0)));
    put("max_parallel_workers_per_gather", size_to(cs(2.0, 16.0)));
    put("max_parallel_workers", size_to(cs(4.0, 32.0)));
    let (lrw, sync) = match duty {
        PgcDuty::Financial => (cs(4.0, 12.0), cs(2.0, 8.0)),
        PgcDuty::Mixed => (cs(4.0, 16.0), cs(2.0, 12.0)),
        PgcDuty::Statistic => (cs(6.0, 24.0), cs(4.0, 16.0)),
    };
    put("max_logical_replication_workers", size_to(lrw));
    put("max_sync_workers_per_subscription", size_to(sync));
    put("max_parallel_maintenance_workers", size_to(cs(4.0, 16.0)));
    if v >= 16 {
        put("max_parallel_apply_workers_per_subscription", size_to(cs(4.0, 16.0)));
    }

    // Locks and timeouts.
    let locks = size_to(ss(64.0, 4096.0));
    put("max_locks_per_transaction", locks.clone());
    put("max_pred_locks_per_transaction", locks);
    put("statement_timeout", "86400000".into());
    put("idle_in_transaction_session_timeout", "86400000".into());

    if v <= 14 {
        let dir = if i.platform == Platform::Linux { "'/run/postgresql'" } else { "'pg_stat_tmp'" };
        put("stats_temp_directory", dir.into());
    }

    if i.common_conf {
        for (k, val) in crate::common::PG_CONFIGURATOR_COMMON {
            put(k, (*val).to_owned());
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_to_truncates_like_pg_configurator() {
        assert_eq!(size_to(20464.64 * MIB as f64), "19GB");
        assert_eq!(size_to(2401.28 * MIB as f64), "2401MB");
        assert_eq!(size_to(10_240_000.0), "10000kB");
        assert_eq!(size_to(69.56), "69");
        assert_eq!(size_to(4.0), "4");
    }

    #[test]
    fn the_masterclass_scores_match_the_sanity_check_in_tuning_md() {
        let s = Scales::new(&Inputs::new(8.0, 32 * GIB, Disk::Ssd, crate::input::Duty::Mixed, 16));
        assert!((s.system - 4.27).abs() < 0.01, "{}", s.system);
        assert_eq!(s.sys_scale(1000.0, 20000.0) as i64, 1811);
    }
}
