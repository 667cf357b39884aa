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
    /// Prometheus's page on the root namespace's loopback.
    prom_port: u16,
}

impl Lab {
    fn run(&self, verb: &str) -> std::process::Output {
        Command::new(root().join("deploy/lab/lab"))
            .arg(verb)
            .env("OUTRIGGER_LAB_NS", &self.ns)
            .env("OUTRIGGER_LAB_DIR", self.dir.path().join("lab"))
            .env("OUTRIGGER_LAB_BIN", &self.bin_dir)
            .env("OUTRIGGER_LAB_PROM_PORT", self.prom_port.to_string())
            .output()
            .unwrap()
    }

    /// GET a Prometheus API path from the root namespace, over loopback.
    fn prometheus(&self, path: &str) -> serde_json::Value {
        let out = Command::new("curl")
            .args(["-sf", "--max-time", "3", &format!("http://127.0.0.1:{}{path}", self.prom_port)])
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
    }

    /// Runs an instant query; its `data`, or why it failed.
    fn query(&self, expr: &str) -> Result<serde_json::Value, String> {
        let out = Command::new("curl")
            .args(["-s", "--max-time", "3", "-G", "--data-urlencode", &format!("query={expr}")])
            .arg(format!("http://127.0.0.1:{}/api/v1/query", self.prom_port))
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| format!("{e}: {out:?}"))?;
        if v["status"] == "success" { Ok(v["data"].clone()) } else { Err(v.to_string()) }
    }

    /// Names of the alerts firing now.
    fn firing(&self) -> Vec<String> {
        let a = self.prometheus("/api/v1/alerts");
        a["data"]["alerts"]
            .as_array()
            .map(|v| {
                v.iter()
                    .filter(|x| x["state"] == "firing")
                    .map(|x| format!("{} {}", x["labels"]["alertname"], x["labels"]["job"]))
                    .collect()
            })
            .unwrap_or_default()
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
    let prom_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let lab = Lab { ns: ns.clone(), dir: tempfile::tempdir().unwrap(), bin_dir, prom_port };
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

    // Prometheus, reached from the root namespace over loopback, scrapes every daemon and
    // etcd on every host, and no alert fires on the healthy cluster.
    let targets = lab.prometheus("/api/v1/targets?state=active");
    let active = targets["data"]["activeTargets"].as_array().cloned().unwrap_or_default();
    let jobs: std::collections::BTreeSet<String> =
        active.iter().filter_map(|t| t["labels"]["job"].as_str().map(str::to_owned)).collect();
    assert_eq!(active.len(), 15, "5 jobs on 3 hosts: {targets}");
    assert!(active.iter().all(|t| t["health"] == "up"), "every target up: {targets}");
    assert_eq!(
        jobs.into_iter().collect::<Vec<_>>(),
        ["etcd", "ha-agent", "proxy-checker", "vip-manager", "wal-shipper"]
    );
    assert!(lab.firing().is_empty(), "alerts on a healthy cluster: {:?}", lab.firing());
    // Every Grafana dashboard query runs, and names only metrics that this scrape returns.
    let names: std::collections::BTreeSet<String> = lab.prometheus("/api/v1/label/__name__/values")["data"]
        .as_array()
        .map(|v| v.iter().filter_map(|n| n.as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    assert!(names.contains("patroni_primary"), "metric names scraped: {names:?}");
    let families = ["ha_agent_", "patroni_", "proxy_checker_", "vip_manager_", "wal_shipper_", "etcd_"];
    for d in ["ha-agent", "proxy-checker", "vip-manager", "wal-shipper"] {
        let file = root().join(format!("deploy/grafana/{d}.json"));
        let dash: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        let exprs: Vec<String> = dash["panels"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
            .filter_map(|t| t["expr"].as_str().map(str::to_owned))
            .collect();
        assert!(!exprs.is_empty(), "{d}: no queries");
        for e in &exprs {
            let metrics = e
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .filter(|t| families.iter().any(|f| t.starts_with(f)));
            for m in metrics {
                assert!(names.contains(m), "{d}: {m} (in {e}) is not in a scrape of the lab");
            }
            lab.query(e).unwrap_or_else(|why| panic!("{d}: {e} does not run: {why}"));
        }
    }
    // A daemon down: proxy-checker stopped on a replica. OutriggerDaemonDown fires (after its
    // minute), naming the job.
    let st = String::from_utf8_lossy(&lab.run("status").stdout).into_owned();
    let replica = st
        .lines()
        .find(|l| l.contains(" replica ") && l.trim_start().starts_with('n'))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_owned();
    let pid = std::fs::read_to_string(lab.dir.path().join(format!("lab/proxy-checker-{replica}.pid"))).unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid.trim().parse().unwrap()), nix::sys::signal::Signal::SIGTERM)
        .unwrap();
    outrigger_testkit::wait_until(std::time::Duration::from_secs(150), "OutriggerDaemonDown for proxy-checker", || {
        lab.firing().iter().any(|a| a == "\"OutriggerDaemonDown\" \"proxy-checker\"").then_some(())
    })
    .unwrap();
    let alerts = lab.run("alerts");
    assert!(String::from_utf8_lossy(&alerts.stdout).contains("OutriggerDaemonDown"), "{alerts:?}");

    let down = lab.run("down");
    assert!(down.status.success(), "{down:?}");
    assert!(namespaces(&ns).is_empty(), "namespaces left: {:?}", namespaces(&ns));
}
