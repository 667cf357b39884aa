//! The binary, run as an operator would: stdout, stderr and exit code for each format, the
//! reference deployment's invocation, bad input, output files and detection.

// Helpers outside `#[test]` functions panic on purpose too: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_tuner");

/// The masterclass's pg_configurator invocation (masterclass-stack.md §1.8), minus the file.
const MASTERCLASS: [&str; 9] = [
    "--db-cpu=4",
    "--db-ram=4096Mi",
    "--db-disk-type=SSD",
    "--db-duty=mixed",
    "--pg-version=15",
    "--output-format=patroni-json",
    "--min-conns=200",
    "--max-conns=200",
    "--common-conf",
];

fn run(args: &[&str]) -> Output {
    // A fake, empty host root keeps detection from reading this machine.
    Command::new(BIN).args(args).args(["--host-root", "/nonexistent"]).output().expect("run tuner")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn vectors() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/reference/tuning-vectors")
}

#[test]
fn the_reference_deployments_invocation_gives_patroni_json() {
    let o = run(&MASTERCLASS);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stderr(&o), "");
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("JSON");
    let p = &v["postgresql"]["parameters"];
    assert_eq!(p["shared_buffers"], "856MB");
    assert_eq!(p["max_connections"], "200");
    assert_eq!(p["shared_preload_libraries"], "pg_stat_statements,auto_explain", "quotes stripped");
    assert_eq!(p["log_directory"], "pg_log");
    assert!(p.get("old_snapshot_threshold").is_none());
}

#[test]
fn formula_pg_configurator_reproduces_its_recorded_output() {
    let mut args: Vec<&str> = MASTERCLASS.iter().copied().filter(|a| *a != "--common-conf").collect();
    args.retain(|a| !a.starts_with("--output-format"));
    args.extend(["--output-format=json", "--formula=pg_configurator"]);
    let o = run(&args);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let ours: BTreeMap<String, String> = serde_json::from_str(&stdout(&o)).unwrap();
    let text = std::fs::read_to_string(vectors().join("pgconf_masterclass_4c_4096Mi.json")).unwrap();
    let recorded: BTreeMap<String, String> = serde_json::from_str(&text).unwrap();
    assert_eq!(ours, recorded);
    // Byte for byte too: sorted keys, four-space indent.
    assert_eq!(stdout(&o).trim_end(), text.trim_end());
}

#[test]
fn conf_output_has_the_input_header_and_loadable_lines() {
    let o = run(&["--db-cpu=8", "--db-ram=32Gi", "--db-disk-type=nvme", "--db-duty=oltp", "--pg-version=17"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("#   db_cpu = 8\n#   db_ram = 32768Mi\n#   db_disk_type = NVMe\n"), "{out}");
    for line in out.lines().filter(|l| !l.starts_with('#')) {
        let (k, v) = line.split_once(" = ").unwrap_or_else(|| panic!("not a setting line: {line}"));
        assert!(!k.is_empty() && !v.is_empty(), "{line}");
    }
    assert!(!out.contains("old_snapshot_threshold"), "PostgreSQL 17 has no old_snapshot_threshold");
    assert!(out.contains("\nmax_parallel_apply_workers_per_subscription = "), "16+ parameter present on 17");
}

#[test]
fn alter_system_output_is_one_statement_per_parameter() {
    let o =
        run(&["--db-cpu=2", "--db-ram=2Gi", "--db-disk-type=SATA", "--output-format=alter-system", "--common-conf"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements', 'auto_explain';\n"));
    assert!(out.contains("ALTER SYSTEM SET random_page_cost = '6.0';\n"), "{out}");
    assert!(
        out.lines().filter(|l| !l.starts_with("--")).all(|l| l.starts_with("ALTER SYSTEM SET ") && l.ends_with(';'))
    );
}

#[test]
fn explain_gives_rule_comparison_and_reason() {
    let mut args = MASTERCLASS.to_vec();
    args.push("--explain");
    let o = run(&args);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    let block = out.split("\nshared_buffers = ").nth(1).expect("shared_buffers block");
    let block: String = block.lines().take(5).collect::<Vec<_>>().join("\n");
    assert!(block.starts_with("856MB   [needs restart]"), "{block}");
    assert!(block.contains("rule: 0.25 × usable RAM 3430.40MiB"), "{block}");
    assert!(block.contains("pg_configurator: 2401MB"), "{block}");
    assert!(block.contains("PGTune: 1GB"), "{block}");
    assert!(block.contains("why tuner departs: pg_configurator gives 70 %"), "{block}");
    assert!(out.contains("old_snapshot_threshold (pg_configurator: 4320)"), "{out}");
}

#[test]
fn bad_input_exits_2_naming_each_option_and_its_range() {
    let o = run(&["--db-cpu=4", "--db-ram=-4Gi", "--db-duty=banking", "--db-disk-type=SSD"]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(stdout(&o), "");
    let e = stderr(&o);
    assert!(e.contains("--db-ram (-4Gi): must not be negative; accepted range 569Mi to 64Ti"), "{e}");
    assert!(e.contains("--db-duty (banking): must be one of statistic, mixed, financial"), "{e}");

    let o = run(&["--db-cpu=1", "--db-ram=400Mi", "--db-disk-type=SSD"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--db-ram (400MiB): leaves 104MiB usable"), "{}", stderr(&o));
    assert!(stderr(&o).contains("at least 569Mi (accepted range 569Mi to 64Ti)"), "{}", stderr(&o));

    let o = run(&["--db-cpu=4", "--db-ram=4Gi", "--db-disk-type=SSD", "--pg-version=12"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--pg-version (12): must be 13 to 18"), "{}", stderr(&o));
}

#[test]
fn undetectable_hardware_is_bad_input_not_a_guess() {
    let o = run(&["--db-disk-type=SSD"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--db-cpu: not given and not detectable"), "{}", stderr(&o));
    assert!(stderr(&o).contains("--db-ram: not given and not detectable"), "{}", stderr(&o));
}

#[test]
fn detected_container_limits_are_used_when_hardware_is_not_given() {
    let d = tempfile::tempdir().unwrap();
    let w = |rel: &str, text: &str| {
        let p = d.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    w("proc/meminfo", "MemTotal:       263921848 kB\n");
    w("sys/devices/system/cpu/online", "0-63\n");
    w("proc/self/cgroup", "0::/\n");
    w("proc/self/mountinfo", "30 23 0:27 / /sys/fs/cgroup ro - cgroup2 cgroup2 rw\n");
    w("sys/fs/cgroup/cpu.max", "400000 100000\n");
    w("sys/fs/cgroup/memory.max", "4294967296\n");
    let o = Command::new(BIN)
        .args(["--host-root", d.path().to_str().unwrap(), "--db-disk-type=SSD", "--debug"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("#   db_cpu = 4\n#   db_ram = 4096Mi\n"), "{out}");
    assert!(stderr(&o).contains("cgroup limit /sys/fs/cgroup/memory.max"), "{}", stderr(&o));
}

#[test]
fn an_existing_output_file_is_kept_aside() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("postgresql.json");
    std::fs::write(&f, "old").unwrap();
    let name = f.to_str().unwrap();
    let mut args = MASTERCLASS.to_vec();
    let flag = format!("--output-file-name={name}");
    args.push(&flag);
    let o = run(&args);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), "");
    let new = std::fs::read_to_string(&f).unwrap();
    assert!(new.contains("\"parameters\""));
    let kept: Vec<_> = std::fs::read_dir(d.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("postgresql.json_"))
        .collect();
    assert_eq!(kept.len(), 1);
    assert_eq!(std::fs::read_to_string(kept[0].path()).unwrap(), "old");
}

#[test]
fn check_config_still_validates_the_config_file() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("tuner.toml");
    std::fs::write(&f, "scope = \"main\"\n[etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\n").unwrap();
    let o = Command::new(BIN).arg("--check-config").arg(&f).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn validate_with_a_missing_binary_fails_saying_which() {
    let o = run(&["--db-cpu=4", "--db-ram=4Gi", "--db-disk-type=SSD", "--validate=/nonexistent/postgres"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stdout(&o), "", "nothing is output unless it validated");
    assert!(stderr(&o).contains("--validate: /nonexistent/postgres: no such file"), "{}", stderr(&o));
}

#[test]
fn apply_etcd_needs_a_config_and_yes_needs_apply_etcd() {
    let machine = ["--db-cpu=4", "--db-ram=4Gi", "--db-disk-type=SSD"];
    let mut a = machine.to_vec();
    a.push("--apply-etcd");
    let o = run(&a);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--config <FILE>"), "{}", stderr(&o));
    let mut a = machine.to_vec();
    a.push("--yes");
    let o = run(&a);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--apply-etcd"), "{}", stderr(&o));
}

#[test]
fn apply_etcd_with_etcd_down_fails_without_writing_anything() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("tuner.toml");
    // Port 1 on loopback: nothing listens there.
    std::fs::write(&f, "scope = \"main\"\n[etcd]\nendpoints = [\"http://127.0.0.1:1\"]\nrequest_timeout = \"200ms\"\n")
        .unwrap();
    let cfg = format!("--config={}", f.display());
    let o = run(&["--db-cpu=4", "--db-ram=4Gi", "--db-disk-type=SSD", "--apply-etcd", "--yes", &cfg]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("tuner: --apply-etcd: "), "{}", stderr(&o));
    assert_eq!(stdout(&o), "");
}
