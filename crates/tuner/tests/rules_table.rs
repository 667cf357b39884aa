//! Table tests of tuner's rules over a spread of machines, from 1 CPU / 1 GiB to 96 CPU /
//! 768 GiB (and beyond, for the clamps), every disk type, workload, version and replication
//! mode. Every case must keep the relations the rules promise; a failure names the case.

// Helpers outside `#[test]` functions panic on purpose too: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use tuner::catalog;
use tuner::compare::{Norm, normalize};
use tuner::input::{Disk, Duty, Inputs};
use tuner::units::{GIB, KIB, MIB, Unit};
use tuner::{Tuning, Value, tune};

const CPUS: [f64; 10] = [1.0, 2.0, 2.5, 4.0, 8.0, 16.0, 32.0, 64.0, 96.0, 128.0];
const RAM_GIB: [u64; 12] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 768, 1024];

fn bytes(t: &Tuning, name: &str) -> f64 {
    match t.get(name).map(|s| &s.value) {
        Some(Value::Bytes(b)) => *b as f64,
        other => panic!("{name} is not a size: {other:?}"),
    }
}

fn int(t: &Tuning, name: &str) -> i64 {
    match t.get(name).map(|s| &s.value) {
        Some(Value::Int(i)) => *i,
        other => panic!("{name} is not an integer: {other:?}"),
    }
}

fn word(t: &Tuning, name: &str) -> String {
    t.get(name).map(|s| s.rendered()).unwrap_or_else(|| panic!("{name} is not set"))
}

/// Every relation, for one case. Returns the broken ones.
fn broken_relations(i: &Inputs, t: &Tuning) -> Vec<String> {
    let mut bad = Vec::new();
    let mut check = |ok: bool, what: String| {
        if !ok {
            bad.push(what);
        }
    };
    let v = i.version;
    let sb = bytes(t, "shared_buffers");
    let ecs = bytes(t, "effective_cache_size");
    let wm = bytes(t, "work_mem");
    let mwm = bytes(t, "maintenance_work_mem");
    let avm = bytes(t, "autovacuum_work_mem");
    let conns = int(t, "max_connections");
    let mpw = int(t, "max_parallel_workers");
    let avw = int(t, "autovacuum_max_workers");
    let b = t.budget;

    check(ecs >= sb, format!("effective_cache_size {ecs} >= shared_buffers {sb}"));
    check(ecs <= b.usable, format!("effective_cache_size {ecs} <= usable RAM {}", b.usable));
    check(
        (sb - b.usable * b.shared_buffers_part).abs() <= b.usable * b.shared_buffers_part / 256.0 + 8192.0,
        format!("shared_buffers {sb} within 0.4% of its share"),
    );
    check(
        wm * (conns + mpw) as f64 <= b.client.max(64.0 * KIB as f64 * (conns + mpw) as f64),
        "work_mem × backends <= client memory".into(),
    );
    check(
        avm * avw as f64 + mwm * b.maintenance_sessions
            <= b.maintenance + 2.0 * MIB as f64 * (avw as f64 + b.maintenance_sessions),
        format!(
            "autovacuum {avw} × {avm} + maintenance {} × {mwm} <= maintenance memory {}",
            b.maintenance_sessions, b.maintenance
        ),
    );
    let committed = sb + wm * (conns + mpw) as f64 + avm * avw as f64 + mwm * b.maintenance_sessions;
    check(committed <= b.usable, format!("committed memory {committed} <= usable RAM {}", b.usable));
    check(wm >= 64.0 * KIB as f64, "work_mem >= 64kB".into());
    check(mwm >= MIB as f64 && avm >= MIB as f64, "maintenance memories >= 1MB".into());
    check(bytes(t, "temp_buffers") >= 800.0 * KIB as f64, "temp_buffers >= 800kB".into());
    check(bytes(t, "logical_decoding_work_mem") >= 64.0 * KIB as f64, "logical_decoding_work_mem >= 64kB".into());
    if v < 17 {
        check(avm <= GIB as f64, "autovacuum_work_mem <= 1GB before 17".into());
    }
    check(bytes(t, "min_wal_size") < bytes(t, "max_wal_size"), "min_wal_size < max_wal_size".into());

    let gather = int(t, "max_parallel_workers_per_gather");
    let maint = int(t, "max_parallel_maintenance_workers");
    let mwp = int(t, "max_worker_processes");
    let lrw = int(t, "max_logical_replication_workers");
    check(gather <= mpw && maint <= mpw, "per-gather and maintenance workers <= max_parallel_workers".into());
    check(mwp > mpw + lrw, format!("max_worker_processes {mwp} > parallel {mpw} + logical {lrw}"));
    check(int(t, "max_sync_workers_per_subscription") <= lrw, "sync workers <= logical workers".into());
    if v >= 16 {
        check(int(t, "max_parallel_apply_workers_per_subscription") <= lrw, "apply workers <= logical workers".into());
    }
    check(
        conns <= i.max_conns as i64 && conns >= i.min_conns as i64,
        "max_connections within --min/--max-conns".into(),
    );
    check(avw <= i.max_autovac_workers as i64, "autovacuum_max_workers <= --max-autovac-workers".into());
    check(int(t, "superuser_reserved_connections") < conns, "superuser_reserved_connections < max_connections".into());

    check(word(t, "full_page_writes") == "on", "full_page_writes on".into());
    if i.replication {
        check(word(t, "wal_level") != "minimal", "replication needs wal_level replica or logical".into());
        check(int(t, "max_wal_senders") > 0, "replication needs walsenders".into());
    } else {
        check(
            word(t, "wal_level") == "minimal" && int(t, "max_wal_senders") == 0,
            "wal_level minimal needs max_wal_senders 0".into(),
        );
    }
    check(word(t, "synchronous_commit") != "local", "synchronous_commit never local".into());
    let cct: f64 = word(t, "checkpoint_completion_target").parse().unwrap_or(0.0);
    check(cct > 0.0 && cct <= 1.0, "checkpoint_completion_target in (0, 1]".into());

    for s in &t.settings {
        let p = catalog::param(s.name);
        check(p.is_some_and(|p| p.exists_in(v)), format!("{} exists in PostgreSQL {v}", s.name));
        let unit = p.map_or(Unit::None, |p| p.unit);
        if let Value::Bytes(b) = s.value {
            check(b.is_multiple_of(unit.scale()), format!("{} = {b} is whole {}", s.name, unit.label()));
            // What is written must read back as the same amount.
            let back = normalize(s.name, &s.rendered());
            check(
                back == Norm::Num(b as f64 / unit.scale() as f64),
                format!("{} renders as {} and reads back as {back:?}", s.name, s.rendered()),
            );
        }
        if let Value::Millis(ms) = s.value {
            check(
                ms < 0 || (ms as u64).is_multiple_of(unit.scale()),
                format!("{} = {ms}ms is whole {}", s.name, unit.label()),
            );
        }
    }
    check(t.get("old_snapshot_threshold").is_none(), "old_snapshot_threshold is never set".into());
    check(t.get("io_method").is_some() == (v >= 18), "io_method exactly on 18".into());
    check(t.get("stats_temp_directory").is_some() == (v <= 14), "stats_temp_directory only up to 14".into());
    let mut names: Vec<_> = t.settings.iter().map(|s| s.name).collect();
    names.dedup();
    check(names.len() == t.settings.len() && names.is_sorted(), "names sorted and unique".into());
    bad
}

#[test]
fn every_machine_disk_duty_version_and_replication_mode_keeps_the_relations() {
    let mut cases = 0;
    let mut failures = Vec::new();
    for cpu in CPUS {
        for ram in RAM_GIB {
            for disk in Disk::ALL {
                for duty in Duty::ALL {
                    for version in catalog::MIN_VERSION..=catalog::MAX_VERSION {
                        for replication in [true, false] {
                            let i = Inputs { replication, ..Inputs::new(cpu, ram * GIB, disk, duty, version) };
                            let t = tune(&i);
                            cases += 1;
                            for b in broken_relations(&i, &t) {
                                if failures.len() < 20 {
                                    failures.push(format!(
                                        "{cpu}cpu/{ram}GiB/{disk}/{duty}/pg{version}/repl={replication}: {b}"
                                    ));
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} broken relations, first ones:\n{}", failures.len(), failures.join("\n"));
    assert_eq!(cases, CPUS.len() * RAM_GIB.len() * 5 * 6 * 6 * 2);
}

#[test]
fn many_connections_on_little_ram_shrink_work_mem_and_warn_instead_of_overcommitting() {
    let i = Inputs { min_conns: 2000, max_conns: 2000, ..Inputs::new(2.0, GIB, Disk::Ssd, Duty::Web, 16) };
    let t = tune(&i);
    assert!(broken_relations(&i, &t).is_empty(), "{:?}", broken_relations(&i, &t));
    assert!(bytes(&t, "work_mem") < MIB as f64);
    assert!(t.warnings.iter().any(|w| w.contains("connection pooler")), "{:?}", t.warnings);
}

#[test]
fn the_masterclass_machine_gets_sizes_that_fit_four_gib() {
    let t = tune(&Inputs::masterclass());
    let r = t.rendered();
    // 0.25 × 3430.4MiB = 857.6MiB, rounded down to a multiple of 2MiB.
    assert_eq!(r["shared_buffers"], "856MB");
    assert_eq!(r["max_connections"], "200");
    assert_eq!(r["synchronous_commit"], "on");
    assert_eq!(r["wal_compression"], "lz4");
    assert_eq!(r["random_page_cost"], "1.1");
    assert!(!r.contains_key("old_snapshot_threshold"));
    assert!(t.get("effective_cache_size").is_some());
}

#[test]
fn beyond_96_cores_the_cpu_scale_is_clamped() {
    let t = tune(&Inputs::new(256.0, 768 * GIB, Disk::Nvme, Duty::Mixed, 18));
    assert_eq!(int(&t, "max_connections"), 500);
    assert_eq!(int(&t, "autovacuum_max_workers"), 20);
    assert_eq!(int(&t, "max_files_per_process"), 10000);
    assert_eq!(int(&t, "autovacuum_worker_slots"), 20, "18 needs slots for more than 16 autovacuum workers");
}

#[test]
fn each_rule_says_how_it_was_derived() {
    let t = tune(&Inputs { common_conf: true, ..Inputs::masterclass() });
    for s in &t.settings {
        assert!(!s.rule.is_empty(), "{} has no rule", s.name);
    }
    assert!(
        t.get("shared_buffers").unwrap().rule.contains("usable RAM 3430.40MiB"),
        "{}",
        t.get("shared_buffers").unwrap().rule
    );
}
