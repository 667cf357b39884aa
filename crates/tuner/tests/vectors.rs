//! pg_configurator's recorded outputs (`../shared/reference/tuning-vectors/`), read one by one:
//! 1. tuner's reproduction of pg_configurator must give each file exactly (so `--explain` and
//!    `--formula pg_configurator` speak for it truthfully);
//! 2. every place tuner differs is printed, with tuner's reason;
//! 3. where pg_configurator is known to be wrong (tuning.md §4 and the relations it breaks),
//!    tuner's value must be the corrected one.

// Helpers outside `#[test]` functions panic on purpose too: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use tuner::compare::{Norm, normalize, same};
use tuner::input::{Disk, Duty, Inputs, MemoryParts, parse_replication};
use tuner::pgconf::pg_configurator;
use tuner::units::GIB;
use tuner::{Tuning, tune};

fn vectors_dir() -> PathBuf {
    // The workspace is crates/tuner/../..; the shared reference sits next to it.
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/reference/tuning-vectors")
}

/// The inputs of each file, from the README's table: what pg_configurator computed with, and
/// the command line tuner is given for the same invocation.
fn inputs_of(file: &str) -> Option<(Inputs, Inputs)> {
    let base = |disk, duty, version| Inputs::new(8.0, 32 * GIB, disk, duty, version);
    let same = |i: Inputs| Some((i.clone(), i));
    match file {
        "pgconf_8c_32Gi_SSD_mixed_pg16.json" => same(base(Disk::Ssd, Duty::Mixed, 16)),
        "pgconf_8c_32Gi_SSD_mixed_pg17.json" => same(base(Disk::Ssd, Duty::Mixed, 17)),
        "pgconf_8c_32Gi_SATA_statistic_pg16.json" => same(base(Disk::Sata, Duty::Statistic, 16)),
        "pgconf_8c_32Gi_SSD_mixed_pg16_norepl.json" => {
            same(Inputs { replication: false, ..base(Disk::Ssd, Duty::Mixed, 16) })
        }
        "pgconf_8c_32Gi_SSD_mixed_pg16_replFalseString.json" => {
            // `--replication-enabled=False`: pg_configurator's bool("False") is True; tuner's is not.
            let pgc = Inputs { replication: true, ..base(Disk::Ssd, Duty::Mixed, 16) };
            let ours = Inputs { replication: parse_replication("False").expect("a boolean"), ..pgc.clone() };
            Some((pgc, ours))
        }
        "pgconf_masterclass_4c_4096Mi.json" => same(Inputs::masterclass()),
        _ => None,
    }
}

fn read(path: &PathBuf) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
}

fn num(name: &str, text: &str) -> f64 {
    match normalize(name, text) {
        Norm::Num(n) => n,
        other => panic!("{name} = {text} is not a number: {other:?}"),
    }
}

/// A defect of pg_configurator visible in an output, and whether tuner's output corrects it.
struct Defect {
    what: &'static str,
    present: fn(&Inputs, &BTreeMap<String, String>) -> bool,
    corrected: fn(&Inputs, &Tuning) -> bool,
}

fn r(t: &Tuning, name: &str) -> String {
    t.get(name).map(|s| s.rendered()).unwrap_or_default()
}

fn defects() -> Vec<Defect> {
    vec![
        Defect {
            what: "old_snapshot_threshold emitted for a version without it (17+)",
            present: |i, v| i.version >= 17 && v.contains_key("old_snapshot_threshold"),
            corrected: |_, t| t.get("old_snapshot_threshold").is_none(),
        },
        Defect {
            what: "effective_cache_size below shared_buffers",
            present: |_, v| {
                num("effective_cache_size", &v["effective_cache_size"]) < num("shared_buffers", &v["shared_buffers"])
            },
            corrected: |_, t| {
                num("effective_cache_size", &r(t, "effective_cache_size"))
                    >= num("shared_buffers", &r(t, "shared_buffers"))
            },
        },
        Defect {
            what: "shared_buffers truncated to a coarser unit (more than 0.4% lost)",
            present: |i, v| {
                num("shared_buffers", &v["shared_buffers"]) * 8192.0 < 0.7 * i.usable_ram() * (1.0 - 1.0 / 256.0)
            },
            corrected: |i, _| {
                // Given pg_configurator's own split, tuner keeps the amount to within 0.4 %.
                let parts = MemoryParts {
                    shared_buffers: Some(0.7),
                    client: Some(0.2),
                    maintenance: Some(0.1),
                    ..MemoryParts::default()
                };
                let t = tune(&Inputs { parts, ..i.clone() });
                num("shared_buffers", &r(&t, "shared_buffers")) * 8192.0 >= 0.7 * i.usable_ram() * (1.0 - 1.0 / 256.0)
            },
        },
        Defect {
            what: "replication left on although --replication-enabled=False was given",
            present: |i, v| !i.replication && v["wal_level"] != "minimal",
            corrected: |i, t| !i.replication && r(t, "wal_level") == "minimal" && r(t, "max_wal_senders") == "0",
        },
        Defect {
            what: "shared_buffers + max_connections × work_mem above usable RAM",
            present: |i, v| {
                let n = |k: &str| num(k, &v[k]);
                n("shared_buffers") * 8192.0 + n("max_connections") * n("work_mem") * 1024.0 > i.usable_ram()
            },
            corrected: |i, t| {
                let n = |k: &str| num(k, &r(t, k));
                n("shared_buffers") * 8192.0 + n("max_connections") * n("work_mem") * 1024.0 <= i.usable_ram()
            },
        },
        Defect {
            what: "full_page_writes off (torn pages after a crash)",
            present: |_, v| v["full_page_writes"] == "off",
            corrected: |_, t| r(t, "full_page_writes") == "on",
        },
        Defect {
            what: "synchronous_commit local (disables waiting for synchronous standbys)",
            present: |_, v| v["synchronous_commit"] == "local",
            corrected: |_, t| r(t, "synchronous_commit") == "on",
        },
        Defect {
            what: "synchronous_commit off for a non-statistic duty (loses committed transactions)",
            present: |i, v| i.duty != Duty::Statistic && v["synchronous_commit"] == "off",
            corrected: |_, t| r(t, "synchronous_commit") != "off",
        },
        Defect {
            what: "max_worker_processes below parallel + logical replication workers",
            present: |_, v| {
                let n = |k: &str| num(k, &v[k]);
                n("max_worker_processes") < n("max_parallel_workers") + n("max_logical_replication_workers")
            },
            corrected: |_, t| {
                let n = |k: &str| num(k, &r(t, k));
                n("max_worker_processes") > n("max_parallel_workers") + n("max_logical_replication_workers")
            },
        },
        Defect {
            what: "wal_keep_size retained without replication",
            present: |i, v| !i.replication && num("wal_keep_size", &v["wal_keep_size"]) > 0.0,
            corrected: |_, t| r(t, "wal_keep_size") == "0",
        },
    ]
}

#[test]
fn every_vector_is_reproduced_compared_and_its_defects_corrected() {
    let dir = vectors_dir();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e} (the shared reference must sit next to the workspace)", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(files.len() >= 6, "expected the six recorded outputs in {}, found {}", dir.display(), files.len());

    let mut failures = Vec::new();
    let mut corrected = 0;
    for path in &files {
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        let (pgc_inputs, ours) =
            inputs_of(&file).unwrap_or_else(|| panic!("{file}: no inputs known; add it to inputs_of"));
        let vector = read(path);

        // 1. Our reproduction of pg_configurator must be exact.
        let reproduced = pg_configurator(&pgc_inputs);
        if reproduced != vector {
            for k in vector.keys().chain(reproduced.keys()) {
                if vector.get(k) != reproduced.get(k) {
                    failures.push(format!(
                        "{file}: reproduction of {k}: recorded {:?}, reproduced {:?}",
                        vector.get(k),
                        reproduced.get(k)
                    ));
                }
            }
        }

        // 2. Where tuner differs.
        let t = tune(&ours);
        let tuned = t.rendered();
        println!("== {file}");
        let keys: std::collections::BTreeSet<_> = vector.keys().chain(tuned.keys()).collect();
        for k in keys {
            let (a, b) = (vector.get(k.as_str()), tuned.get(k.as_str()));
            if let (Some(a), Some(b)) = (a, b)
                && same(k, a, b)
            {
                continue;
            }
            let why = t.get(k).and_then(|s| s.departs).unwrap_or("");
            println!(
                "  {k}: pg_configurator {} -> tuner {}{}",
                a.map_or("(unset)", String::as_str),
                b.map_or("(unset)", String::as_str),
                if why.is_empty() { String::new() } else { format!("  [{why}]") }
            );
        }

        // 3. Known defects: where present in the vector, tuner must correct them.
        for d in defects() {
            if (d.present)(&ours, &vector) {
                if (d.corrected)(&ours, &t) {
                    corrected += 1;
                    println!("  corrected: {}", d.what);
                } else {
                    failures.push(format!("{file}: tuner does not correct: {}", d.what));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(corrected >= 10, "expected the vectors to show at least 10 defects, saw {corrected}");
}
