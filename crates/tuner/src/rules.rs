//! tuner's rules: a pure function from [`Inputs`] to [`Tuning`].
//!
//! The shape follows pg_configurator (same inputs, same scale functions, same parameter set)
//! so that its deployments can switch unchanged; the rules depart where pg_configurator is
//! wrong or where a better-founded value exists, and each such setting says why
//! ([`Setting::departs`]). The memory model:
//!
//! ```text
//! usable RAM R = RAM × (100 − reserved %) / 100 − reserved system RAM
//!   = shared_buffers (R × 0.25)
//!   + client memory  (R × 0.20): work_mem for every backend and parallel worker
//!   + maintenance    (R × 0.15): autovacuum workers + manual maintenance sessions
//!   + OS page cache  (the rest)
//! effective_cache_size = R − client − maintenance  (shared_buffers + page cache, ≥ shared_buffers)
//! ```
//!
//! Sizes are rounded *down* to round values (see [`round_size_down`]), never truncated to a
//! coarser unit. Version awareness is in two places: rules that differ by version say so, and
//! the emitter drops any parameter the target version does not have (see [`crate::catalog`]).
//!
//! Not set at all, unlike pg_configurator: `old_snapshot_threshold`. PostgreSQL 17 removed it
//! (a config naming it does not start there), and on 13–16 enabling it is known to cost
//! performance and give wrong answers, which is why it was removed.

use crate::catalog;
use crate::input::{Disk, Duty, Inputs, Platform};
use crate::pgconf::Scales;
use crate::setting::{Budget, Setting, Tuning, Value};
use crate::units::{GIB, Human, KIB, MIB, Unit, floor_to_unit, round_size_down};

/// Collects settings, skipping those the target version lacks.
struct Out {
    version: u8,
    settings: Vec<Setting>,
}

impl Out {
    fn set(&mut self, name: &'static str, value: Value, rule: impl Into<String>) {
        self.emit(name, value, rule.into(), None);
    }

    fn set_departing(&mut self, name: &'static str, value: Value, rule: impl Into<String>, why: &'static str) {
        self.emit(name, value, rule.into(), Some(why));
    }

    fn emit(&mut self, name: &'static str, value: Value, rule: String, departs: Option<&'static str>) {
        let exists = catalog::param(name).is_some_and(|p| p.exists_in(self.version));
        debug_assert!(catalog::param(name).is_some(), "{name} is missing from the catalogue");
        if exists {
            self.settings.push(Setting { name, value, rule, departs });
        }
    }
}

/// The system score clamped to 0..100 (pg_configurator lets it exceed 100 beyond 96 cores
/// or 768Gi).
fn clamped(s: &Scales) -> Scales {
    Scales { system: s.system.min(100.0), cpu: s.cpu.min(96.0), ..*s }
}

const WHY_CPU_CLAMP: &str =
    "pg_configurator's CPU scale has no upper clamp, so beyond 96 cores it exceeds its own maximum; tuner clamps it";

/// tuner's settings for `i`.
pub fn tune(i: &Inputs) -> Tuning {
    let sc = clamped(&Scales::new(i));
    let cs = |lo: f64, hi: f64| sc.cpu_scale(lo, hi);
    let ss = |lo: f64, hi: f64| sc.sys_scale(lo, hi);
    let v = i.version;
    let repl = i.replication;
    let duty = i.duty;
    let r = sc.ram;
    let cores = i.cpu.floor().max(1.0) as i64;
    let mut o = Out { version: v, settings: Vec::new() };
    let mut warnings = Vec::new();
    let s_txt = format!("system score {:.2}", sc.system);
    let c_txt = format!("{} cores", i.cpu);

    // --- Connections and parallelism first: the memory split divides by them. ---------------
    let max_connections = cs(i.min_conns as f64, i.max_conns as f64).min(i.max_conns as f64).floor() as i64;
    o.set_departing(
        "max_connections",
        Value::Int(max_connections),
        format!("--min-conns {} to --max-conns {} scaled by {c_txt} (4 → min, 96 → max)", i.min_conns, i.max_conns),
        WHY_CPU_CLAMP,
    );
    o.set("superuser_reserved_connections", Value::Int(4), "constant, as pg_configurator");

    let max_parallel_workers = if cores >= 2 { cores } else { 0 };
    o.set_departing(
        "max_parallel_workers",
        Value::Int(max_parallel_workers),
        format!("one per core ({cores}); none on a single core"),
        "pg_configurator scales 4..32 over 4..96 cores, so an 8-core machine gets 5; a parallel worker per core is what the hardware runs",
    );
    let gather_cap = match duty {
        Duty::Statistic => 16,
        Duty::Mixed => 4,
        _ => 2,
    };
    let gather = (cores as u64).div_ceil(2).min(gather_cap) as i64;
    o.set_departing(
        "max_parallel_workers_per_gather",
        Value::Int(gather.min(max_parallel_workers)),
        format!("half the cores ({cores}), at most {gather_cap} for {duty}, at most max_parallel_workers"),
        "sized by workload: analytics gets up to half the cores per query, OLTP keeps PostgreSQL's 2",
    );
    let maint_workers = (cores as u64).div_ceil(2).min(4) as i64;
    o.set_departing(
        "max_parallel_maintenance_workers",
        Value::Int(maint_workers.min(max_parallel_workers)),
        "half the cores, at most 4, at most max_parallel_workers",
        "pg_configurator's floor of 4 oversubscribes machines with fewer than 8 cores during index builds",
    );
    let (lrw_lo, lrw_hi, sync_lo, sync_hi) = match duty.pg_configurator_class() {
        crate::input::PgcDuty::Financial => (4.0, 12.0, 2.0, 8.0),
        crate::input::PgcDuty::Mixed => (4.0, 16.0, 2.0, 12.0),
        crate::input::PgcDuty::Statistic => (6.0, 24.0, 4.0, 16.0),
    };
    let lrw = cs(lrw_lo, lrw_hi).floor() as i64;
    o.set_departing(
        "max_logical_replication_workers",
        Value::Int(lrw),
        format!("{lrw_lo}..{lrw_hi} scaled by {c_txt}"),
        WHY_CPU_CLAMP,
    );
    o.set(
        "max_sync_workers_per_subscription",
        Value::Int((cs(sync_lo, sync_hi).floor() as i64).min(lrw)),
        format!("{sync_lo}..{sync_hi} scaled by {c_txt}, at most max_logical_replication_workers"),
    );
    o.set_departing(
        "max_parallel_apply_workers_per_subscription",
        Value::Int((cs(2.0, 16.0).floor() as i64).min(lrw)),
        format!("2..16 scaled by {c_txt}, at most max_logical_replication_workers"),
        "scaled up from PostgreSQL's default of 2 (pg_configurator starts at 4), and at most max_logical_replication_workers, the pool apply workers come from",
    );
    let worker_processes = max_parallel_workers + lrw + 2;
    o.set_departing(
        "max_worker_processes",
        Value::Int(worker_processes),
        format!(
            "max_parallel_workers {max_parallel_workers} + max_logical_replication_workers {lrw} + the logical \
             replication launcher + 1 for extensions"
        ),
        "parallel and logical replication workers are all taken from max_worker_processes; pg_configurator sets it \
         below their sum, so they starve each other",
    );

    // --- Memory. -----------------------------------------------------------------------------
    let (sb_part, client_part, maint_part) = i.memory_split();
    let r_txt = format!("usable RAM {}", Human(r));
    let shared_buffers = round_size_down(r * sb_part, Unit::Blocks8k);
    o.set_departing(
        "shared_buffers",
        Value::Bytes(shared_buffers),
        format!("{sb_part} × {r_txt} = {}, rounded down", Human(r * sb_part)),
        "pg_configurator gives 70 % of usable RAM, which leaves the OS page cache (which PostgreSQL relies on \
         for everything shared_buffers misses) almost nothing, and truncates to whole GB above 10 GB (up to 1 GiB \
         lost); tuner's default is 25 %, and sizes are rounded by under 0.4 %",
    );
    let client = r * client_part;
    let per_backend = client / (max_connections + max_parallel_workers) as f64;
    let work_mem = round_size_down(per_backend, Unit::Kb).max(64 * KIB);
    if work_mem < MIB {
        warnings.push(format!(
            "work_mem is only {}: {max_connections} connections share {} of client memory; use a connection \
             pooler or lower --max-conns",
            Human(work_mem as f64),
            Human(client)
        ));
    }
    o.set_departing(
        "work_mem",
        Value::Bytes(work_mem),
        format!(
            "client memory ({client_part} × {r_txt} = {}) / (max_connections {max_connections} + \
             max_parallel_workers {max_parallel_workers}), rounded down, at least 64kB",
            Human(client)
        ),
        "pg_configurator's floor of 10000kB ignores the budget, so on small machines with many connections \
         work_mem × max_connections exceeds RAM; tuner also counts parallel workers, which each use work_mem",
    );
    let temp_buffers =
        round_size_down((client / max_connections as f64).min(8.0 * MIB as f64), Unit::Blocks8k).max(800 * KIB);
    o.set_departing(
        "temp_buffers",
        Value::Bytes(temp_buffers),
        "PostgreSQL's 8MB, or the per-connection share of client memory if smaller (at least 800kB)",
        "temp_buffers is only allocated by sessions that use temporary tables; pg_configurator sets it below \
         PostgreSQL's default on small machines for no gain",
    );

    let maintenance = r * maint_part;
    let av_share = i.autovacuum_share();
    let av_workers =
        cs(i.min_autovac_workers as f64, i.max_autovac_workers as f64).min(i.max_autovac_workers as f64).floor() as i64;
    o.set_departing(
        "autovacuum_max_workers",
        Value::Int(av_workers),
        format!(
            "--min-autovac-workers {} to --max-autovac-workers {} scaled by {c_txt}",
            i.min_autovac_workers, i.max_autovac_workers
        ),
        WHY_CPU_CLAMP,
    );
    if av_workers > 16 {
        // 18 reserves autovacuum worker slots at start; max_workers above the slots is capped.
        o.set(
            "autovacuum_worker_slots",
            Value::Int(av_workers),
            "autovacuum_max_workers, when above the default 16 slots",
        );
    }
    let av_cap = if v >= 17 { u64::MAX } else { GIB };
    let av_mem = round_size_down(maintenance * av_share / av_workers as f64, Unit::Kb).clamp(MIB, av_cap);
    o.set_departing(
        "autovacuum_work_mem",
        Value::Bytes(av_mem),
        format!(
            "maintenance memory ({maint_part} × {r_txt} = {}) × autovacuum share {av_share} / \
             autovacuum_max_workers {av_workers}{}",
            Human(maintenance),
            if v < 17 { ", at most 1GB (VACUUM cannot use more before PostgreSQL 17)" } else { "" }
        ),
        "tuner's maintenance part is 0.15 of usable RAM (pg_configurator: 0.1): below 8GB of RAM pg_configurator \
         ends under PostgreSQL's own 64MB default",
    );
    let maint_sessions = cs(i.min_maint_conns as f64, i.max_maint_conns as f64).min(i.max_maint_conns as f64);
    let mwm = round_size_down(maintenance * (1.0 - av_share) / maint_sessions, Unit::Kb).clamp(MIB, 8 * GIB);
    o.set_departing(
        "maintenance_work_mem",
        Value::Bytes(mwm),
        format!(
            "maintenance memory {} × {:.2} / {maint_sessions:.2} maintenance sessions (--min-maint-conns \
             {}..--max-maint-conns {} scaled by {c_txt}), at most 8GB",
            Human(maintenance),
            1.0 - av_share,
            i.min_maint_conns,
            i.max_maint_conns
        ),
        "tuner's maintenance part is 0.15 of usable RAM (pg_configurator: 0.1): below 8GB of RAM pg_configurator \
         ends under PostgreSQL's own 64MB default",
    );
    let ecs =
        round_size_down((r - client - maintenance).max(shared_buffers as f64), Unit::Blocks8k).max(shared_buffers);
    o.set_departing(
        "effective_cache_size",
        Value::Bytes(ecs),
        format!(
            "{r_txt} − client memory {} − maintenance memory {} (shared_buffers plus the page cache), at least \
             shared_buffers",
            Human(client),
            Human(maintenance)
        ),
        "pg_configurator computes R − shared_buffers − 256MiB, which is always below its own shared_buffers: \
         the planner is told the cache is smaller than the buffers alone",
    );
    let ldwm_cap = (r / 32.0).max(64.0 * MIB as f64);
    let ldwm = floor_to_unit((ss(64.0, 8096.0).floor() * MIB as f64).min(ldwm_cap), Unit::Mb).max(64 * MIB);
    o.set_departing(
        "logical_decoding_work_mem",
        Value::Bytes(ldwm),
        format!("64MB..8096MB scaled by {s_txt}, at most 1/32 of {r_txt}"),
        "each logical walsender may hold this much; pg_configurator's 189MB × 10 walsenders on a 4GB machine \
         would exceed RAM",
    );
    let (hash, hash_txt) = match duty.pg_configurator_class() {
        crate::input::PgcDuty::Financial => (1.2, "1.2 for financial"),
        crate::input::PgcDuty::Mixed => (2.0, "2.0 for mixed, oltp, web and desktop"),
        crate::input::PgcDuty::Statistic => (8.0, "8.0 for statistic"),
    };
    o.set("hash_mem_multiplier", Value::Real(hash), hash_txt);
    o.set_departing(
        "max_files_per_process",
        Value::Int(cs(1000.0, 10000.0).floor() as i64),
        format!("1000..10000 scaled by {c_txt}"),
        WHY_CPU_CLAMP,
    );
    let budget = Budget {
        usable: r,
        shared_buffers_part: sb_part,
        client,
        maintenance,
        maintenance_sessions: maint_sessions,
        system_score: sc.system,
    };

    // --- Autovacuum and vacuum. --------------------------------------------------------------
    o.set("autovacuum", Value::Bool(true), "always on");
    o.set("autovacuum_naptime", Value::Millis(15_000), "15s, as pg_configurator");
    o.set(
        "autovacuum_vacuum_threshold",
        Value::Int(ss(1000.0, 20000.0) as i64),
        format!("1000..20000 scaled by {s_txt}"),
    );
    o.set(
        "autovacuum_analyze_threshold",
        Value::Int(ss(500.0, 10000.0) as i64),
        format!("500..10000 scaled by {s_txt}"),
    );
    o.set("autovacuum_vacuum_scale_factor", Value::Real(0.1), "0.1, as pg_configurator");
    o.set("autovacuum_analyze_scale_factor", Value::Real(0.05), "0.05, as pg_configurator");
    let cost_limit = ss(4000.0, 8000.0) as i64;
    o.set("autovacuum_vacuum_cost_limit", Value::Int(cost_limit), format!("4000..8000 scaled by {s_txt}"));
    o.set("vacuum_cost_limit", Value::Int(cost_limit), "autovacuum_vacuum_cost_limit");
    o.set("autovacuum_vacuum_cost_delay", Value::Real(10.0), "10ms, as pg_configurator");
    o.set_departing(
        "vacuum_cost_delay",
        Value::Real(0.0),
        "0 (PostgreSQL's default): a manual VACUUM runs unthrottled",
        "pg_configurator throttles manual VACUUM to 10ms naps; an operator running VACUUM by hand wants it done, \
         and autovacuum keeps its own delay",
    );
    o.set("autovacuum_freeze_max_age", Value::Int(1_200_000_000), "1.2 billion, as pg_configurator");
    o.set("autovacuum_multixact_freeze_max_age", Value::Int(1_400_000_000), "1.4 billion, as pg_configurator");
    o.set(
        "autovacuum_vacuum_insert_threshold",
        Value::Int(ss(1000.0, 20000.0) as i64),
        format!("1000..20000 scaled by {s_txt}"),
    );
    o.set(
        "autovacuum_vacuum_insert_scale_factor",
        Value::Real((ss(0.01, 0.2) * 100.0).round() / 100.0),
        format!("0.01..0.2 scaled by {s_txt}, two decimals"),
    );

    // --- WAL. --------------------------------------------------------------------------------
    o.set(
        "wal_level",
        Value::Word(if repl { "logical" } else { "minimal" }),
        if repl {
            "logical with replication (physical replicas and logical decoding without a restart)"
        } else {
            "minimal without replication (no archiving or replicas possible)"
        },
    );
    let keep = if repl { floor_to_unit(ss(1024.0, 16384.0) * MIB as f64, Unit::Mb) } else { 0 };
    o.set_departing(
        "wal_keep_size",
        Value::Bytes(keep),
        if repl { format!("1024MB..16384MB scaled by {s_txt}") } else { "0 without replication".to_owned() },
        "pg_configurator keeps up to 16GB of WAL for replicas even with replication off",
    );
    let sync = match (duty, repl) {
        (Duty::Statistic, _) => "off",
        (Duty::Financial, true) => "remote_apply",
        _ => "on",
    };
    o.set_departing(
        "synchronous_commit",
        Value::Word(sync),
        "off for statistic (losing the last moments of bulk loads is acceptable), remote_apply for financial with \
         replication (read-your-writes on synchronous standbys), else on",
        "pg_configurator sets `local` for mixed with replication, which silently turns off the wait for \
         synchronous standbys that Patroni's synchronous_mode configures, and `off` without replication, which \
         loses committed transactions on a crash; a tuner must not weaken durability",
    );
    o.set_departing(
        "full_page_writes",
        Value::Bool(true),
        "always on",
        "pg_configurator turns it off without replication (unless financial); a crash during a page write then \
         leaves torn pages that WAL replay cannot repair",
    );
    let wal_compression = match (repl, v >= 15) {
        (false, _) => Value::Bool(false),
        (true, true) => Value::Word("lz4"),
        (true, false) => Value::Bool(true),
    };
    o.set_departing(
        "wal_compression",
        wal_compression,
        "with replication: lz4 from PostgreSQL 15 (pglz `on` before), else off",
        "lz4 compresses full-page images at a fraction of pglz's CPU cost",
    );
    o.set("wal_buffers", Value::Bytes(ss(16.0, 256.0).floor() as u64 * MIB), format!("16MB..256MB scaled by {s_txt}"));
    let (wwd, wwd_txt) = match duty.pg_configurator_class() {
        crate::input::PgcDuty::Financial => (100, "100ms for financial".to_owned()),
        crate::input::PgcDuty::Mixed => (ss(200.0, 1000.0) as i64, format!("200ms..1000ms scaled by {s_txt}")),
        crate::input::PgcDuty::Statistic => (ss(200.0, 5000.0) as i64, format!("200ms..5000ms scaled by {s_txt}")),
    };
    o.set("wal_writer_delay", Value::Millis(wwd), wwd_txt);
    o.set_departing(
        "wal_writer_flush_after",
        Value::Bytes(floor_to_unit(ss(MIB as f64, 64.0 * MIB as f64), Unit::Blocks8k)),
        format!("1MB..64MB scaled by {s_txt}, in whole 8kB pages"),
        "PostgreSQL stores it in 8kB pages; pg_configurator's kB figure is usually not a whole number of them",
    );
    let (floor_gb, floor_txt) = match duty {
        Duty::Desktop => (2, "2GB for desktop"),
        Duty::Financial | Duty::Web | Duty::Mixed => (4, "4GB for financial, web and mixed"),
        Duty::Oltp => (8, "8GB for oltp"),
        Duty::Statistic => (16, "16GB for statistic"),
    };
    let max_wal_hi = if duty == Duty::Financial { 32.0 } else { 64.0 };
    let max_wal = floor_to_unit(ss(GIB as f64, max_wal_hi * GIB as f64).max((floor_gb * GIB) as f64), Unit::Mb);
    o.set_departing(
        "max_wal_size",
        Value::Bytes(max_wal),
        format!("1GB..{max_wal_hi}GB scaled by {s_txt}, at least {floor_txt} (PGTune's sizes)"),
        "with checkpoint_timeout of 30min or more, pg_configurator's 2GB on small machines makes checkpoints \
         WAL-triggered every few minutes under write load; the floors are PGTune's per-workload sizes",
    );
    let min_wal =
        floor_to_unit(ss(512.0 * MIB as f64, 16.0 * GIB as f64).max(max_wal as f64 / 4.0), Unit::Mb).min(max_wal / 2);
    o.set_departing(
        "min_wal_size",
        Value::Bytes(min_wal),
        format!("512MB..16GB scaled by {s_txt}, at least max_wal_size / 4, at most max_wal_size / 2"),
        "kept at a quarter of the larger max_wal_size (PGTune's ratio), so recycled segments cover a checkpoint's worth",
    );
    o.set("wal_log_hints", Value::Bool(repl), "on with replication (pg_rewind needs it)");

    // --- Replication. ------------------------------------------------------------------------
    let n = |on: i64| Value::Int(if repl { on } else { 0 });
    let ms = |on: i64| Value::Millis(if repl { on } else { 0 });
    o.set("max_replication_slots", n(10), "10 with replication, else 0");
    o.set("max_wal_senders", n(10), "10 with replication, else 0 (wal_level minimal requires 0)");
    o.set("wal_sender_timeout", ms(180_000), "180s with replication, else 0");
    o.set("hot_standby", Value::Bool(repl), "on with replication");
    o.set("wal_receiver_timeout", ms(180_000), "180s with replication, else 0");
    o.set("wal_receiver_status_interval", ms(10_000), "10s with replication, else 0");
    o.set("hot_standby_feedback", Value::Bool(repl), "on with replication");
    let delay = match (duty.pg_configurator_class(), repl) {
        (crate::input::PgcDuty::Financial, true) => 90_000,
        (crate::input::PgcDuty::Mixed, _) => 1_800_000,
        _ => -1,
    };
    o.set(
        "max_standby_streaming_delay",
        Value::Millis(delay),
        "90s for financial with replication, 30min for mixed, else -1 (wait for queries)",
    );

    // --- Checkpoints and background writer. --------------------------------------------------
    let (ct, ct_txt) = match duty {
        Duty::Financial | Duty::Desktop => (300_000, "5min for financial and desktop (short crash recovery)"),
        Duty::Oltp | Duty::Web => (900_000, "15min for oltp and web"),
        Duty::Mixed => (1_800_000, "30min for mixed"),
        Duty::Statistic => (3_600_000, "1h for statistic"),
    };
    o.set("checkpoint_timeout", Value::Millis(ct), ct_txt);
    o.set_departing(
        "checkpoint_completion_target",
        Value::Real(0.9),
        "0.9 (PostgreSQL's default since 14)",
        "pg_configurator's 0.5 and 0.7 crowd checkpoint writes into part of the interval, making I/O bursts and \
         latency spikes; PostgreSQL 14 made 0.9 the default for that reason",
    );
    let commit_delay = if i.disk.is_rotational() && duty != Duty::Financial {
        let hi = if duty == Duty::Statistic { 5000.0 } else { 1000.0 };
        ss(100.0, hi) as i64
    } else {
        0
    };
    o.set_departing(
        "commit_delay",
        Value::Int(commit_delay),
        "on spinning disks: 100..1000µs (5000µs for statistic) scaled by the system score; else 0",
        "group commit only pays when a flush is slow (spinning disks); on SSD/NVMe it only adds latency to \
         every commit",
    );
    o.set("commit_siblings", Value::Int(ss(10.0, 100.0) as i64), format!("10..100 scaled by {s_txt}"));
    o.set("bgwriter_delay", Value::Millis(ss(200.0, 1000.0) as i64), format!("200ms..1000ms scaled by {s_txt}"));
    o.set("bgwriter_lru_maxpages", Value::Int(ss(1024.0, 32768.0) as i64), format!("1024..32768 scaled by {s_txt}"));
    o.set("bgwriter_lru_multiplier", Value::Real(7.0), "7.0, as pg_configurator");

    // --- Planner. ----------------------------------------------------------------------------
    let stats = if duty == Duty::Statistic { 500 } else { 100 };
    o.set_departing(
        "default_statistics_target",
        Value::Int(stats),
        "500 for statistic (PGTune's data-warehouse value), else PostgreSQL's 100",
        "pg_configurator's 1000 makes ANALYZE sample 10× the rows and every plan consider larger statistics; \
         raise it per column where estimates are off",
    );
    let rpc = match i.disk {
        Disk::Sata => 6.0,
        Disk::Sas => 4.0,
        Disk::San | Disk::Ssd | Disk::Nvme => 1.1,
    };
    o.set_departing(
        "random_page_cost",
        Value::Real(rpc),
        "SATA 6, SAS 4, SSD/NVMe/SAN 1.1",
        "1.0 tells the planner random reads cost the same as sequential ones, which even NVMe does not deliver; \
         1.1 (PGTune, timescaledb-tune) keeps a slight preference for sequential scans of large ranges",
    );
    o.set("seq_page_cost", Value::Real(1.0), "1.0, the planner's unit");
    o.set_departing(
        "jit",
        Value::Bool(duty == Duty::Statistic),
        "on only for statistic",
        "not set by pg_configurator: JIT compilation takes longer than short queries run (PGTune turns it off \
         for the same workloads)",
    );

    // --- I/O and parallelism. ----------------------------------------------------------------
    let eio = if i.platform == Platform::Windows {
        0
    } else {
        match i.disk {
            Disk::Sata => 2,
            Disk::Sas => 4,
            Disk::Ssd => 200,
            Disk::San => 300,
            Disk::Nvme => 500,
        }
    };
    let eio_why = "SSDs and NVMe serve hundreds of concurrent reads; 200 for SSD (PGTune), more for NVMe and SAN; \
                   0 on Windows, which lacks posix_fadvise";
    o.set_departing("effective_io_concurrency", Value::Int(eio), "SATA 2, SAS 4, SSD 200, SAN 300, NVMe 500", eio_why);
    o.set_departing("maintenance_io_concurrency", Value::Int(eio), "as effective_io_concurrency", eio_why);
    o.set(
        "io_method",
        Value::Word("worker"),
        "worker: io_uring is blocked by Docker's default seccomp profile and needs a liburing build",
    );
    o.set("io_workers", Value::Int((cores as u64).div_ceil(4).clamp(3, 32) as i64), "a quarter of the cores, 3 to 32");

    // --- Locks and timeouts. -----------------------------------------------------------------
    let locks = ss(64.0, 4096.0) as i64;
    o.set("max_locks_per_transaction", Value::Int(locks), format!("64..4096 scaled by {s_txt}"));
    o.set("max_pred_locks_per_transaction", Value::Int(locks), "max_locks_per_transaction");
    o.set("statement_timeout", Value::Millis(86_400_000), "1d, a safety net as in pg_configurator");
    o.set("idle_in_transaction_session_timeout", Value::Millis(86_400_000), "1d, as pg_configurator");
    let (ccci, ccci_txt) = match duty.pg_configurator_class() {
        crate::input::PgcDuty::Financial => (3000, "3s for financial"),
        crate::input::PgcDuty::Mixed => (10_000, "10s for mixed"),
        crate::input::PgcDuty::Statistic => (30_000, "30s for statistic"),
    };
    o.set("client_connection_check_interval", Value::Millis(ccci), ccci_txt);
    o.set(
        "default_toast_compression",
        Value::Word(if duty == Duty::Statistic { "lz4" } else { "pglz" }),
        "lz4 for statistic, pglz otherwise (as pg_configurator)",
    );
    o.set(
        "stats_temp_directory",
        Value::Text(if i.platform == Platform::Linux { "/run/postgresql" } else { "pg_stat_tmp" }.to_owned()),
        "a tmpfs on Linux (PostgreSQL 14 and older)",
    );

    if i.common_conf {
        for (name, value, note) in crate::common::common() {
            o.set(name, value, note);
        }
    }

    let mut settings = o.settings;
    settings.sort_by(|a, b| a.name.cmp(b.name));
    Tuning { version: v, settings, budget, warnings }
}
