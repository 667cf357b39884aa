//! PGTune's formulas (le0pard/pgtune @ 7caef27, "HEAD"), for `--explain` and the benchmark's
//! third column. Source: `../shared/reference/tuning.md` §2.1. Inputs are mapped the way
//! tuning.md §2.3 maps them: all of the RAM (PGTune keeps no reserve), whole CPUs, the
//! workload's PGTune type, `hdd` for spinning disks, `mid_ram`, Linux unless told otherwise.

use std::collections::BTreeMap;

use crate::input::{Disk, Duty, Inputs, Platform};

/// PGTune's `formatValue` for a kB amount: GB or MB when exact, else kB.
fn format_kb(kb: u64) -> String {
    if kb.is_multiple_of(1_048_576) {
        format!("{}GB", kb / 1_048_576)
    } else if kb.is_multiple_of(1024) {
        format!("{}MB", kb / 1024)
    } else {
        format!("{kb}kB")
    }
}

/// PGTune's output for these inputs and `connections` (PGTune takes it as an input; callers
/// pass the connection count tuner settled on, so the two are compared like for like).
pub fn pgtune(i: &Inputs, connections: u32) -> BTreeMap<String, String> {
    let mut o = BTreeMap::new();
    let mut put = |k: &str, v: String| {
        o.insert(k.to_owned(), v);
    };
    let ty = i.duty.pgtune_type();
    let m = i.ram / 1024; // kB
    let cpu = i.cpu.floor().max(1.0) as u64;
    let v = i.version;
    let linux = i.platform == Platform::Linux;

    put("max_connections", connections.to_string());
    let sb = if i.duty == Duty::Desktop { m / 16 } else { m / 4 };
    put("shared_buffers", format_kb(sb));
    if linux {
        put("huge_pages", if sb >= 2 * 1_048_576 { "try" } else { "off" }.into());
    }
    put("effective_cache_size", format_kb(if i.duty == Duty::Desktop { m / 4 } else { m * 3 / 4 }));
    let mwm = (if ty == "dw" { m / 8 } else { m / 16 }).min(8 * 1_048_576);
    put("maintenance_work_mem", format_kb(mwm));
    put("checkpoint_completion_target", "0.9".into());
    let mut wal_buffers = sb * 3 / 100;
    if wal_buffers > 16 * 1024 {
        wal_buffers = 16 * 1024;
    }
    if (14 * 1024..16 * 1024).contains(&wal_buffers) {
        wal_buffers = 16 * 1024;
    }
    put("wal_buffers", format_kb(wal_buffers.max(32)));
    put("default_statistics_target", if ty == "dw" { "500" } else { "100" }.into());
    let hdd = i.disk.is_rotational();
    put("random_page_cost", if hdd || ty == "dw" { "4" } else { "1.1" }.into());
    if linux {
        let eio = match i.disk {
            Disk::Sata | Disk::Sas => 2,
            Disk::Ssd => 200,
            Disk::San => 300,
            Disk::Nvme => 1000,
        };
        put("effective_io_concurrency", eio.to_string());
    }
    let workers_for_mem = if cpu >= 4 {
        put("max_worker_processes", cpu.to_string());
        let gather = cpu.div_ceil(2);
        put("max_parallel_workers_per_gather", (if ty == "dw" { gather } else { gather.min(4) }).to_string());
        put("max_parallel_workers", cpu.to_string());
        put("max_parallel_maintenance_workers", cpu.div_ceil(2).min(4).to_string());
        cpu
    } else {
        8
    };
    let base = (m - sb) as f64 / ((connections as u64 + workers_for_mem) * 3) as f64;
    let wm = match ty {
        "web" | "oltp" => base,
        "dw" | "mixed" => base / 2.0,
        _ => base / 6.0,
    };
    put("work_mem", format_kb((wm.floor() as u64).max(4096)));
    let (min_wal, max_wal) = match ty {
        "web" | "mixed" => ("1GB", "4GB"),
        "oltp" => ("2GB", "8GB"),
        "dw" => ("4GB", "16GB"),
        _ => ("100MB", "2GB"),
    };
    put("min_wal_size", min_wal.into());
    put("max_wal_size", max_wal.into());
    if matches!(ty, "web" | "oltp" | "mixed") {
        put("jit", "off".into());
    }
    put("wal_compression", if v >= 15 { "lz4" } else { "on" }.into());
    if cpu >= 32 {
        put("autovacuum_max_workers", "5".into());
    } else if cpu >= 16 {
        put("autovacuum_max_workers", "4".into());
    }
    if mwm >= 2 * 1_048_576 {
        put("autovacuum_work_mem", "2GB".into());
    }
    if v >= 18 {
        put("io_method", if linux { "io_uring" } else { "worker" }.into());
        let io_workers = (cpu / 4).clamp(3, 32);
        if !linux && io_workers > 3 {
            put("io_workers", io_workers.to_string());
        }
    }
    if ty == "desktop" {
        put("wal_level", "minimal".into());
        put("max_wal_senders", "0".into());
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::GIB;

    /// tuning.md §3, scenario A: 8 vCPU, 32 GiB, SSD, PostgreSQL 16, 200 connections.
    #[test]
    fn scenario_a_matches_the_reference_table() {
        let mixed = pgtune(&Inputs::new(8.0, 32 * GIB, Disk::Ssd, Duty::Mixed, 16), 200);
        let oltp = pgtune(&Inputs::new(8.0, 32 * GIB, Disk::Ssd, Duty::Oltp, 16), 200);
        for (k, v) in [
            ("shared_buffers", "8GB"),
            ("effective_cache_size", "24GB"),
            ("work_mem", "20164kB"),
            ("maintenance_work_mem", "2GB"),
            ("autovacuum_work_mem", "2GB"),
            ("wal_buffers", "16MB"),
            ("min_wal_size", "1GB"),
            ("max_wal_size", "4GB"),
            ("effective_io_concurrency", "200"),
            ("max_parallel_workers_per_gather", "4"),
            ("huge_pages", "try"),
            ("wal_compression", "lz4"),
        ] {
            assert_eq!(mixed[k], v, "{k}");
        }
        assert_eq!(oltp["work_mem"], "40329kB");
        assert_eq!(oltp["max_wal_size"], "8GB");
    }

    /// tuning.md §3, scenario B: the masterclass containers.
    #[test]
    fn scenario_b_matches_the_reference_table() {
        let mixed = pgtune(&Inputs::masterclass(), 200);
        let oltp = pgtune(&Inputs { duty: Duty::Oltp, ..Inputs::masterclass() }, 200);
        assert_eq!(mixed["shared_buffers"], "1GB");
        assert_eq!(mixed["work_mem"], "4MB");
        assert_eq!(mixed["maintenance_work_mem"], "256MB");
        assert_eq!(mixed["huge_pages"], "off");
        assert_eq!(mixed["max_parallel_maintenance_workers"], "2");
        assert_eq!(oltp["work_mem"], "5140kB");
    }
}
