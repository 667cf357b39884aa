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

impl Lab {
    /// `ip netns exec <ns>-<host> nft -f -` with `ruleset`.
    fn nft(&self, host: &str, ruleset: &str) {
        use std::io::Write;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &format!("{}-{host}", self.ns), "nft", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(ruleset.as_bytes()).unwrap();
        assert!(child.wait().unwrap().success(), "nft on {host}: {ruleset}");
    }

    /// One statement on a member's PostgreSQL, from the client host.
    fn psql_at(&self, ip: &str, sql: &str) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &format!("{}-client", self.ns), "psql", "-h", ip, "-p", "5432", "-U", "postgres"])
            .args(["-qAtc", sql])
            .env("PGCONNECT_TIMEOUT", "5")
            .output()
            .unwrap();
        assert!(out.status.success(), "{sql} on {ip}: {out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Rewrites the lab's copy of the alerting rules to lab scale and makes Prometheus reload
    /// it; waits until the rules API shows the new `for`.
    fn scale_rules(&self) {
        let path = self.dir.path().join("lab/prometheus/outrigger-alerts.yml");
        let text = std::fs::read_to_string(&path).unwrap();
        let mut scaled = String::new();
        for line in text.lines() {
            let trimmed = line.trim_start();
            if let Some(d) = trimmed.strip_prefix("for: ") {
                assert!(d.ends_with('m') || d.ends_with('s'), "a `for` the test does not scale: {line}");
                scaled.push_str(&line.replace(&format!("for: {d}"), "for: 5s"));
            } else {
                scaled.push_str(line);
            }
            scaled.push('\n');
        }
        let swap = |t: String, from: &str, to: &str| {
            assert!(t.contains(from), "the rules no longer contain {from:?}");
            t.replace(from, to)
        };
        let scaled = swap(scaled, "wal_shipper_archive_lag_seconds > 300", "wal_shipper_archive_lag_seconds > 15");
        let scaled =
            swap(scaled, "wal_shipper_last_backup_age_seconds > 26 * 3600", "wal_shipper_last_backup_age_seconds > 60");
        std::fs::write(&path, scaled).unwrap();
        self.reload_prometheus();
        outrigger_testkit::wait_until(
            std::time::Duration::from_secs(30),
            "Prometheus to load the scaled rules",
            || {
                let rules = self.prometheus("/api/v1/rules");
                let groups = rules["data"]["groups"].as_array()?.clone();
                let all_scaled = groups
                    .iter()
                    .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
                    .all(|r| r["duration"].as_f64() == Some(5.0));
                (!groups.is_empty() && all_scaled).then_some(())
            },
        )
        .unwrap();
    }

    /// Adds `target` to scrape job `job` and makes Prometheus reload; waits until it is scraped.
    fn scrape_also(&self, job: &str, target: &str) {
        let path = self.dir.path().join("lab/prometheus/prometheus.yml");
        let text = std::fs::read_to_string(&path).unwrap();
        let from = format!("- job_name: {job}\n    static_configs: [{{targets: [");
        assert!(text.contains(&from), "no job {job} in {text}");
        std::fs::write(&path, text.replace(&from, &format!("{from}\"{target}\", "))).unwrap();
        self.reload_prometheus();
        outrigger_testkit::wait_until(std::time::Duration::from_secs(30), &format!("{target} scraped"), || {
            let t = self.prometheus("/api/v1/targets?state=active");
            t["data"]["activeTargets"]
                .as_array()?
                .iter()
                .any(|x| x["labels"]["instance"] == target && x["health"] == "up")
                .then_some(())
        })
        .unwrap();
    }

    fn reload_prometheus(&self) {
        let pid = std::fs::read_to_string(self.dir.path().join("lab/prometheus.pid")).unwrap();
        // The pid file holds `setsid ip netns exec … prometheus`, which execs into Prometheus.
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid.trim().parse().unwrap()),
            nix::sys::signal::Signal::SIGHUP,
        )
        .unwrap();
    }

    /// Waits until alert `name` fires.
    fn wait_firing(&self, name: &str, secs: u64) {
        let prefix = format!("\"{name}\"");
        outrigger_testkit::wait_until(std::time::Duration::from_secs(secs), &format!("{name} to fire"), || {
            self.firing().iter().any(|a| a.starts_with(&prefix)).then_some(())
        })
        .unwrap_or_else(|e| panic!("{e:#}; firing: {:?}", self.firing()));
        println!("alert {name} fired");
    }
}

/// A child process (keepalived, which stops its own children on SIGTERM) ended when dropped.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ =
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0.id() as i32), nix::sys::signal::Signal::SIGTERM);
        let exited = outrigger_testkit::wait_until(std::time::Duration::from_secs(10), "the child to exit", || {
            self.0.try_wait().ok().flatten()
        });
        if exited.is_ok() {
            return;
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The value of an instant query's single sample.
fn scalar(data: &serde_json::Value) -> Option<f64> {
    data["result"].as_array()?.first()?["value"][1].as_str()?.parse().ok()
}

fn pg_ctl() -> PathBuf {
    let newest = std::fs::read_dir("/usr/lib/postgresql")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .max()
        .unwrap_or(15);
    PathBuf::from(format!("/usr/lib/postgresql/{newest}/bin/pg_ctl"))
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
    // Each daemon's /metrics as Prometheus scrapes it (issue 16's figure), printed.
    for job in ["ha-agent", "proxy-checker", "vip-manager", "wal-shipper", "etcd"] {
        let q = format!("max_over_time(scrape_duration_seconds{{job=\"{job}\"}}[1m])");
        let worst = lab.query(&format!("max({q})")).ok().and_then(|d| scalar(&d));
        let mean = lab
            .query(&format!("avg(avg_over_time(scrape_duration_seconds{{job=\"{job}\"}}[1m]))"))
            .ok()
            .and_then(|d| scalar(&d));
        let size = lab.query(&format!("avg(scrape_samples_scraped{{job=\"{job}\"}})")).ok().and_then(|d| scalar(&d));
        println!(
            "scrape {job}: mean {:.2} ms, worst {:.2} ms over the last minute, {:.0} samples",
            mean.unwrap_or(f64::NAN) * 1e3,
            worst.unwrap_or(f64::NAN) * 1e3,
            size.unwrap_or(f64::NAN)
        );
    }

    // Every alert in a real lab scenario. The shipped rules wait minutes (a backup counts as
    // too old after 26 h); the lab's copy is rewritten to lab scale (every `for:` 5s, archive
    // lag 15 s, backup age 60 s; the expressions otherwise as shipped) and Prometheus reloads it.
    lab.scale_rules();
    let status = String::from_utf8_lossy(&lab.run("status").stdout).into_owned();
    let role_of = |role: &str| -> Vec<String> {
        status
            .lines()
            .filter(|l| l.contains(&format!(" {role} ")) && l.trim_start().starts_with('n'))
            .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
            .collect()
    };
    let leader = role_of("primary").pop().unwrap();
    let replica = role_of("replica").pop().unwrap();
    let ip = |h: &str| format!("10.251.0.{}", &h[1..]);

    // The last backup older than the limit: the lab's backup was taken when it came up.
    lab.wait_firing("BackupTooOld", 120);

    // A daemon down: proxy-checker stopped on a replica, naming the job.
    let pid = std::fs::read_to_string(lab.dir.path().join(format!("lab/proxy-checker-{replica}.pid"))).unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid.trim().parse().unwrap()), nix::sys::signal::Signal::SIGTERM)
        .unwrap();
    lab.wait_firing("OutriggerDaemonDown", 60);
    assert!(lab.firing().iter().any(|a| a == "\"OutriggerDaemonDown\" \"proxy-checker\""), "{:?}", lab.firing());
    let alerts = lab.run("alerts");
    assert!(String::from_utf8_lossy(&alerts.stdout).contains("OutriggerDaemonDown"), "{alerts:?}");

    // A replica lagging: replay paused on it while the primary writes about 50 MB.
    lab.psql_at(&ip(&replica), "select pg_wal_replay_pause()");
    psql("create table lab_fill as select g, repeat('x', 1000) as pad from generate_series(1, 50000) g");
    lab.wait_firing("PostgresReplicaLagging", 60);
    lab.psql_at(&ip(&replica), "select pg_wal_replay_resume()");

    // The archive lagging: the leader cannot reach the bucket while it fills WAL segments.
    lab.nft(&leader, "table inet otl_bucket {\n  chain out {\n    type filter hook output priority 0;\n    ip daddr 10.251.0.100 tcp dport 8333 drop\n  }\n}\n");
    for _ in 0..3 {
        psql("insert into lab_fill select g, 'y' from generate_series(1, 1000) g; select pg_switch_wal()");
    }
    lab.wait_firing("WalArchiveLagging", 90);
    lab.nft(&leader, "delete table inet otl_bucket");

    // The VIP on two nodes: VRRP dropped between the hosts, so every vip-manager takes it.
    for h in ["n1", "n2", "n3"] {
        lab.nft(h, "table inet otl_vrrp {\n  chain in {\n    type filter hook input priority 0;\n    meta l4proto 112 drop\n  }\n}\n");
    }
    lab.wait_firing("VipHeldByTwoNodes", 60);
    for h in ["n1", "n2", "n3"] {
        lab.nft(h, "delete table inet otl_vrrp");
    }

    // No node holds the VIP: another VRRP router on the link claims the same VRID with a
    // higher priority (keepalived on the client host, a different address), so every
    // vip-manager stays backup and none holds the cluster's VIP.
    let conf = lab.dir.path().join("impostor.conf");
    std::fs::write(
        &conf,
        "global_defs {\n  router_id impostor\n  vrrp_version 3\n}\nvrrp_instance impostor {\n  interface eth0\n  state BACKUP\n  \
         virtual_router_id 51\n  priority 254\n  advert_int 0.25\n  virtual_ipaddress {\n    10.251.0.60/32\n  }\n}\n",
    )
    .unwrap();
    let pid_file = |n: &str| lab.dir.path().join(format!("impostor-{n}.pid"));
    let impostor = Command::new("ip")
        .args(["netns", "exec", &format!("{ns}-client"), "keepalived", "-n", "-P", "-l", "-f"])
        .arg(&conf)
        .arg("-p")
        .arg(pid_file("main"))
        .arg("-r")
        .arg(pid_file("vrrp"))
        .arg("-c")
        .arg(pid_file("checker"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let impostor = KillOnDrop(impostor);
    lab.wait_firing("VipHeldByNoNode", 60);
    drop(impostor);

    // Two leaders for one scope: a copy of the cluster started by mistake under the same scope
    // (another namespace of the same etcd, as a disaster-recovery copy brought up in the wrong
    // place). Its member leads its own copy; Prometheus, scraping it with the others, sees two
    // primaries for scope "lab". (Within one cluster ha-agent fences a primary before another
    // can be elected, so two leaders cannot be staged there.)
    let dr_tmp = tempfile::Builder::new().prefix("otl-dr-").tempdir_in("/tmp").unwrap();
    let dr = dr_tmp.path().to_path_buf();
    nix::unistd::chown(&dr, Some(nix::unistd::User::from_name("postgres").unwrap().unwrap().uid), None).unwrap();
    let dr_config = dr.join("ha-agent.toml");
    std::fs::write(
        &dr_config,
        format!(
            "name = \"dr1\"\nscope = \"lab\"\nnamespace = \"dr\"\n[restapi]\nlisten = \"10.251.0.100:8008\"\n\
             allowlist = [\"127.0.0.1/32\", \"10.251.0.0/24\"]\n\
             [etcd]\nendpoints = [\"http://10.251.0.1:2379\", \"http://10.251.0.2:2379\", \"http://10.251.0.3:2379\"]\n\
             [postgresql]\ndata_dir = \"{d}/data\"\nbin_dir = \"{bin}\"\nlisten = \"10.251.0.100:5442\"\nsocket_dir = \"{d}\"\n\
             log_file = \"{d}/postgresql.log\"\n",
            d = dr.display(),
            bin = pg_ctl().parent().unwrap().display()
        ),
    )
    .unwrap();
    let copy = Command::new("ip")
        .args(["netns", "exec", &format!("{ns}-client")])
        .arg(lab.bin_dir.join("ha-agent"))
        .arg("--config")
        .arg(&dr_config)
        .stdout(std::fs::File::create(dr.join("ha-agent.log")).unwrap())
        .stderr(std::fs::File::create(dr.join("ha-agent.err")).unwrap())
        .spawn()
        .unwrap();
    let copy = KillOnDrop(copy);
    outrigger_testkit::wait_until(std::time::Duration::from_secs(60), "the copy's member to lead it", || {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &format!("{ns}-client"),
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-m",
                "2",
            ])
            .arg("http://10.251.0.100:8008/primary")
            .output()
            .ok()?;
        (String::from_utf8_lossy(&out.stdout) == "200").then_some(())
    })
    .unwrap_or_else(|e| {
        let log = |f: &str| std::fs::read_to_string(dr.join(f)).unwrap_or_default();
        panic!("{e:#}:\n{}\n{}", log("ha-agent.log"), log("ha-agent.err"))
    });
    lab.scrape_also("ha-agent", "10.251.0.100:8008");
    lab.wait_firing("PostgresClusterHasTwoLeaders", 60);
    drop(copy);

    // No leader: maintenance mode, and the leader's PostgreSQL stopped by hand (paused, no
    // member restarts or replaces it).
    let paused = Command::new("ip")
        .args([
            "netns",
            "exec",
            &format!("{ns}-client"),
            "curl",
            "-sf",
            "-m",
            "5",
            "-X",
            "PATCH",
            "-d",
            r#"{"pause":true}"#,
        ])
        .arg(format!("http://{}:8008/config", ip(&leader)))
        .output()
        .unwrap();
    assert!(paused.status.success(), "{paused:?}");
    outrigger_testkit::wait_until(std::time::Duration::from_secs(20), "the leader to see the pause", || {
        let out = Command::new("ip")
            .args(["netns", "exec", &format!("{ns}-client"), "curl", "-s", "-m", "2"])
            .arg(format!("http://{}:8008/patroni", ip(&leader)))
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout).contains("\"pause\":true").then_some(())
    })
    .unwrap();
    let data = lab.dir.path().join(format!("lab/pg-{leader}/data"));
    let stop = Command::new("ip")
        .args(["netns", "exec", &format!("{ns}-{leader}"), "runuser", "-u", "postgres", "--"])
        .arg(pg_ctl())
        .args(["stop", "-m", "fast", "-D"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(stop.status.success(), "{stop:?}");
    lab.wait_firing("PostgresClusterHasNoLeader", 60);

    let down = lab.run("down");
    assert!(down.status.success(), "{down:?}");
    assert!(namespaces(&ns).is_empty(), "namespaces left: {:?}", namespaces(&ns));
}
