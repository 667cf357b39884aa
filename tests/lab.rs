//! The README's main command: `deploy/lab/lab up` brings the whole stack up, a write through
//! the VIP lands on the primary, and `deploy/lab/lab down` removes everything.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs `down` when dropped, so a failing assertion still removes the lab.
struct Lab {
    ns: String,
    dir: tempfile::TempDir,
    bin_dir: PathBuf,
}

impl Lab {
    fn run(&self, verb: &str) -> std::process::Output {
        Command::new(root().join("deploy/lab/lab"))
            .arg(verb)
            .env("OUTRIGGER_LAB_NS", &self.ns)
            .env("OUTRIGGER_LAB_DIR", self.dir.path().join("lab"))
            .env("OUTRIGGER_LAB_BIN", &self.bin_dir)
            .output()
            .unwrap()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = self.run("down");
    }
}

fn namespaces(prefix: &str) -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(prefix))
        .map(str::to_owned)
        .collect()
}

#[test]
fn lab_comes_up_with_one_primary_behind_the_vip_and_goes_down_without_leftovers() {
    // The daemons, built in the tests' own profile (already built once in a test run).
    let bin_dir = ["ha-agent", "proxy-checker", "vip-manager", "wal-shipper"]
        .map(outrigger_testkit::bin::daemon)
        .first()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap();

    let ns = format!("otl{}", std::process::id());
    let lab = Lab { ns: ns.clone(), dir: tempfile::tempdir().unwrap(), bin_dir };
    let up = lab.run("up");
    let out = String::from_utf8_lossy(&up.stdout).into_owned() + &String::from_utf8_lossy(&up.stderr);
    assert!(up.status.success(), "lab up failed:\n{out}");
    // A shell error in the script (a bad substitution, a missing command) must not pass silently.
    assert!(!String::from_utf8_lossy(&up.stderr).contains("deploy/lab/lab: line"), "the lab script erred:\n{out}");
    let members: Vec<&str> = out.lines().filter(|l| l.trim_start().starts_with('n')).collect();
    let primaries = members.iter().filter(|l| l.contains(" primary ")).count();
    let streaming = members.iter().filter(|l| l.contains(" replica ") && l.contains(" streaming ")).count();
    assert_eq!((primaries, streaming), (1, 2), "one primary and two streaming replicas:\n{out}");
    // The VIP sits on the leader and nowhere else (polled: VRRP may still be settling).
    outrigger_testkit::wait_until(std::time::Duration::from_secs(20), "the VIP on the leader only", || {
        let st = lab.run("status");
        let text = String::from_utf8_lossy(&st.stdout).into_owned();
        let line = text.lines().find_map(|l| l.trim().strip_prefix("leader key: "))?.to_owned();
        let (leader, vip_on) = line.split_once("VIP 10.251.0.50 on:")?;
        (!leader.trim().is_empty() && leader.trim() == vip_on.trim()).then_some(())
    })
    .unwrap();

    // A write through the VIP's read-write port lands on the primary.
    let write = Command::new("ip")
        .args(["netns", "exec", &format!("{ns}-client"), "psql", "-h", "10.251.0.50", "-p", "15432", "-U", "postgres"])
        .args(["-qAtc", "create table lab_probe (i int); insert into lab_probe values (1); select pg_is_in_recovery()"])
        .env("PGCONNECT_TIMEOUT", "5")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&write.stdout).trim(), "f", "{write:?}");

    // The cluster archives and was backed up once it came up; `status` says so.
    let st = String::from_utf8_lossy(&lab.run("status").stdout).into_owned();
    assert!(st.contains("last backup: base_"), "a first backup is shown:\n{st}");
    let backups = lab.run("backups");
    assert!(String::from_utf8_lossy(&backups.stdout).contains("base_"), "{backups:?}");

    // The README's point-in-time restore: a row written before the target is there, one
    // written after it is not.
    let psql = |sql: &str| {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &format!("{ns}-client"),
                "psql",
                "-h",
                "10.251.0.50",
                "-p",
                "15432",
                "-U",
                "postgres",
            ])
            .args(["-qAtc", sql])
            .env("PGCONNECT_TIMEOUT", "5")
            .output()
            .unwrap();
        assert!(out.status.success(), "{sql}: {out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    psql("insert into lab_probe values (2)");
    let target = psql("select now()");
    psql("select pg_sleep(0.1); insert into lab_probe values (3)");
    let last = psql("select pg_walfile_name(pg_switch_wal())");
    outrigger_testkit::wait_until(std::time::Duration::from_secs(60), "the segment to be archived", || {
        (psql("select coalesce(last_archived_wal, '') from pg_stat_archiver") >= last).then_some(())
    })
    .unwrap();
    let pitr = Command::new(root().join("deploy/lab/lab"))
        .args(["pitr", &target])
        .env("OUTRIGGER_LAB_NS", &lab.ns)
        .env("OUTRIGGER_LAB_DIR", lab.dir.path().join("lab"))
        .env("OUTRIGGER_LAB_BIN", &lab.bin_dir)
        .output()
        .unwrap();
    assert!(pitr.status.success(), "lab pitr: {pitr:?}");
    let rows = Command::new("ip")
        .args(["netns", "exec", &format!("{ns}-client"), "psql", "-h", "10.251.0.100", "-p", "5440", "-U", "postgres"])
        .args(["-qAtc", "select string_agg(i::text, ',' order by i) from lab_probe"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&rows.stdout).trim(), "1,2", "{rows:?}");
    lab.run("pitr-stop");

    let down = lab.run("down");
    assert!(down.status.success(), "{down:?}");
    assert!(namespaces(&ns).is_empty(), "namespaces left: {:?}", namespaces(&ns));
}
