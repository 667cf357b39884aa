//! The Debian packages and their units under a real systemd (issue 16, items 1 and 2).
//!
//! `scripts/build-debs --no-build` packages the debug binaries; a machine that boots systemd
//! 252 as PID 1 (`outrigger_testkit::Machine`: systemd-nspawn over a copy-on-write view of this
//! machine's root, on test host n1's network namespace) installs them with `dpkg -i`, and each
//! unit runs with the shipped example config changed only where an address, a credential or a
//! test-only speed-up must differ (each change is listed where it is made). Host n2 carries
//! etcd and a second ha-agent member started by the test (not by systemd), so the packaged
//! member both leads and clones.
//!
//! Checked: the maintainer scripts start and enable nothing; every daemon reaches READY under
//! its unit's sandbox; `systemctl reload ha-agent` applies a change while the leader stays
//! leader (same leader key, same postmaster), and `systemctl reload` of proxy-checker,
//! vip-manager (keeping the VIP) and wal-shipper applies a change in the same process; PostgreSQL starts, logs to /var/log/postgresql
//! and runs a JIT-compiled query under the unit; a 1 GB pg_basebackup does not trip the
//! systemd watchdog; proxy-checker answers HAProxy; vip-manager holds the VIP as its own user
//! with only CAP_NET_RAW and CAP_NET_ADMIN; tuner-apply writes the cluster's /config;
//! wal-shipper publishes its status; `systemctl stop` ends every unit cleanly. Each daemon's
//! RSS and CPU while idle under its unit are written to `packages-figures.txt` in the test's
//! log folder (`bench/packages/run.sh` prints them).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use outrigger_testkit::s3::{ACCESS_KEY, S3Server, SECRET_KEY};
use outrigger_testkit::{EtcdCluster, EtcdOptions, Machine, Net, Proc, wait_until};

const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
const DAEMONS: [&str; 5] = ["ha-agent", "proxy-checker", "vip-manager", "wal-shipper", "tuner"];
const VIP: &str = "10.250.0.100";
/// The data directory of the example config, inside the machine.
const PGDATA: &str = "/var/lib/postgresql/15/main";

fn example(name: &str) -> String {
    std::fs::read_to_string(Path::new(REPO).join("deploy/config").join(format!("{name}.toml")))
        .expect("read the example config")
}

/// `text` with `from` replaced, which must occur (a change of the example must not silently
/// stop applying).
fn swap(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "the example config no longer contains {from:?}");
    text.replace(from, to)
}

fn build_packages() -> Vec<PathBuf> {
    for d in DAEMONS {
        outrigger_testkit::bin::daemon(d);
    }
    // OUTRIGGER_PACKAGES_RELEASE=1 (bench/packages/run.sh): the release packages, as shipped.
    let mut cmd = Command::new(Path::new(REPO).join("scripts/build-debs"));
    if std::env::var_os("OUTRIGGER_PACKAGES_RELEASE").is_none() {
        cmd.arg("--no-build");
    }
    let out = cmd.output().expect("run build-debs");
    assert!(out.status.success(), "build-debs failed: {}", String::from_utf8_lossy(&out.stderr));
    let debs: Vec<PathBuf> = DAEMONS
        .iter()
        .map(|d| Path::new(REPO).join(format!("target/debian/outrigger-{d}_0.1.0-1_amd64.deb")))
        .collect();
    for d in &debs {
        assert!(d.exists(), "{} was not built", d.display());
    }
    debs
}

/// Writes `text` to `path` inside the machine, keeping the owner and mode dpkg's scripts set.
fn write_config(m: &Machine, path: &str, text: &str) {
    let staged = format!("/run/outrigger-test-{}", Path::new(path).file_name().unwrap().to_string_lossy());
    m.sh(&format!("cat > {staged} <<'OUTRIGGER_EOF'\n{text}\nOUTRIGGER_EOF\ncat {staged} > {path} && rm {staged}"))
        .expect("write config in the machine");
}

fn http_code(net: &Net, host: usize, url: &str) -> Option<u16> {
    let out = net.host(host).exec(&["curl", "-s", "-o", "/dev/null", "-m", "2", "-w", "%{http_code}", url]).ok()?;
    out.trim().parse().ok()
}

/// Starts `unit` and waits until systemd calls it active (for Type=notify: READY=1 received).
fn start_unit(m: &Machine, unit: &str, timeout: Duration) {
    m.sh(&format!("systemctl start --no-block {unit}")).expect("systemctl start");
    let r = wait_until(timeout, &format!("{unit} to become active"), || {
        match m.unit_property(unit, "ActiveState").ok()?.as_str() {
            "active" => Some(Ok(())),
            "failed" => Some(Err(())),
            _ => None,
        }
    });
    match r {
        Ok(Ok(())) => {}
        _ => panic!("{unit} did not start:\n{}", m.journal(unit)),
    }
}

/// Stops `unit` and checks that it ended cleanly: inactive, Result=success, no restart.
fn stop_unit_cleanly(m: &Machine, unit: &str) {
    let t = Instant::now();
    m.sh(&format!("systemctl stop {unit}")).expect("systemctl stop");
    let state = m.unit_property(unit, "ActiveState").unwrap();
    let result = m.unit_property(unit, "Result").unwrap();
    assert_eq!((state.as_str(), result.as_str()), ("inactive", "success"), "{unit} stop:\n{}", m.journal(unit));
    println!("{unit}: stopped cleanly in {:.2} s", t.elapsed().as_secs_f64());
}

fn assert_never_restarted(m: &Machine, unit: &str) {
    let restarts = m.unit_property(unit, "NRestarts").unwrap();
    assert_eq!(restarts, "0", "{unit} restarted:\n{}", m.journal(unit));
    let journal = m.sh(&format!("journalctl --no-pager -u {unit}")).unwrap();
    assert!(!journal.contains("Watchdog timeout"), "{unit}: the systemd watchdog fired:\n{}", m.journal(unit));
}

/// `systemctl reload` with `text` as the unit's new config: the journal says the change
/// `key` applied, and the daemon is the same process (a reload, not a restart).
fn reload_unit(m: &Machine, unit: &str, path: &str, text: &str, key: &str) {
    let pid = m.unit_property(unit, "MainPID").unwrap();
    write_config(m, path, text);
    m.sh(&format!("systemctl reload {unit}")).unwrap_or_else(|e| panic!("{e:#}\n{}", m.journal(unit)));
    wait_until(Duration::from_secs(20), &format!("{unit} to log that {key} applied"), || {
        m.journal(unit).lines().any(|l| l.contains("config reloaded") && l.contains(key)).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", m.journal(unit)));
    assert_eq!(m.unit_property(unit, "MainPID").unwrap(), pid, "{unit} restarted instead of reloading");
    assert_eq!(m.unit_property(unit, "ActiveState").unwrap(), "active");
}

fn psql(m: &Machine, sql: &str) -> anyhow::Result<String> {
    m.sh(&format!("runuser -u postgres -- psql -h /var/run/postgresql -XAtq -c \"{sql}\""))
}

/// The leader key's value and create revision (a new election makes a new revision).
fn leader_key(etcd: &EtcdCluster, net: &Net) -> Option<(String, i64)> {
    let value = etcd_value(etcd, net, "/service/batman/leader")?;
    let out = etcd.etcdctl(net, 0, &["get", "/service/batman/leader", "-w", "json"]).ok()?;
    let v: serde_json::Value = serde_json::from_str(&out).ok()?;
    Some((value, v.get("kvs")?.get(0)?.get("create_revision")?.as_i64()?))
}

fn etcd_value(etcd: &EtcdCluster, net: &Net, key: &str) -> Option<String> {
    let out = etcd.etcdctl(net, 0, &["get", key, "--print-value-only"]).ok()?;
    let out = out.trim();
    (!out.is_empty()).then(|| out.to_owned())
}

/// RSS (kB) and CPU seconds so far of a unit's main process (all its threads, from schedstat:
/// exact, where utime/stime count 10 ms ticks), read inside the machine.
fn rss_and_cpu(m: &Machine, unit: &str) -> (u64, f64) {
    let pid = m.unit_property(unit, "MainPID").unwrap();
    let status = m.sh(&format!("cat /proc/{pid}/status")).unwrap();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let sched = m.sh(&format!("cat /proc/{pid}/task/*/schedstat")).unwrap();
    let ns: u64 = sched.lines().filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok()).sum();
    (rss, ns as f64 / 1e9)
}

/// The second member, on n2, started by the test: the example config with its own name,
/// addresses and paths.
fn second_member(net: &Net, config: &str, dir: &Path) -> Proc {
    let data = dir.join("data");
    let sock = dir.join("sock");
    std::fs::create_dir_all(&sock).unwrap();
    Command::new("chown").args(["-R", "postgres:postgres"]).arg(dir).status().unwrap();
    let text = swap(config, "name = \"pg-1\"", "name = \"pg-2\"");
    let text = swap(&text, "10.250.0.1:8008", "10.250.0.2:8008");
    let text = swap(&text, "10.250.0.1:5432", "10.250.0.2:5432");
    let text = swap(&text, &format!("data_dir = \"{PGDATA}\""), &format!("data_dir = \"{}\"", data.display()));
    let text = swap(&text, "socket_dir = \"/var/run/postgresql\"", &format!("socket_dir = \"{}\"", sock.display()));
    let text = swap(
        &text,
        "log_file = \"/var/log/postgresql/ha-agent-postgresql.log\"",
        &format!("log_file = \"{}\"", net.dir().log("pg-2-postgresql").display()),
    );
    let path = dir.join("ha-agent.toml");
    std::fs::write(&path, text).unwrap();
    let mut cmd = Command::new(outrigger_testkit::bin::daemon("ha-agent"));
    cmd.arg("--config").arg(&path);
    net.host(2).spawn("ha-agent-pg-2", cmd).unwrap()
}

#[test]
fn the_packages_install_and_every_unit_runs_under_a_real_systemd() {
    let debs = build_packages();
    let net = Net::start("packages", 2).unwrap();
    let etcd = EtcdCluster::start(&net, &[2], EtcdOptions::default()).unwrap();
    let endpoint = etcd.endpoint(0);
    let s3 = S3Server::seaweedfs(net.host(1), "backups").unwrap();
    let m = Machine::boot(net.host(1), "6g", Duration::from_secs(90)).unwrap();

    // Install. The maintainer scripts must neither start nor enable anything.
    m.sh("mkdir -p /root/debs").unwrap();
    for d in &debs {
        let name = d.file_name().unwrap().to_string_lossy();
        m.copy_in(d, &format!("/root/debs/{name}")).unwrap();
    }
    m.sh("dpkg -i /root/debs/*.deb").unwrap();
    for unit in ["ha-agent", "proxy-checker", "vip-manager", "wal-shipper", "tuner-apply"] {
        let unit = format!("{unit}.service");
        assert_eq!(m.unit_property(&unit, "ActiveState").unwrap(), "inactive", "{unit} started on install");
        assert_eq!(m.unit_property(&unit, "UnitFileState").unwrap(), "disabled", "{unit} enabled on install");
    }
    let owners = m.sh("stat -c '%n %U:%G %a' /etc/outrigger/*.toml").unwrap();
    for (file, owner) in [
        ("ha-agent", "root:postgres 640"),
        ("proxy-checker", "root:postgres 640"),
        ("wal-shipper", "root:postgres 640"),
        ("vip-manager", "root:outrigger-vip 640"),
        ("tuner", "root:outrigger-tuner 640"),
    ] {
        assert!(owners.contains(&format!("/etc/outrigger/{file}.toml {owner}")), "config owners:\n{owners}");
    }
    for d in DAEMONS {
        let help = m.sh(&format!("runuser -u nobody -- /usr/bin/{d} --help")).unwrap();
        assert!(help.contains("--config"), "{d} --help:\n{help}");
    }
    // Debian's postgresql-15 made a cluster in the example's data directory; a Patroni (and
    // ha-agent) member starts from an empty one, so drop it as Patroni's docs say.
    m.sh("pg_dropcluster 15 main").unwrap();

    // ha-agent: addresses, and passwords for the roles (the example leaves them commented out).
    let ha = example("ha-agent");
    let ha = swap(&ha, "connect_address = \"10.0.0.1:8008\"", "connect_address = \"10.250.0.1:8008\"");
    let ha = swap(&ha, "connect_address = \"10.0.0.1:5432\"", "connect_address = \"10.250.0.1:5432\"");
    let ha = swap(&ha, "\"10.0.0.0/24\"", "\"10.250.0.0/24\"");
    let ha = swap(
        &ha,
        "endpoints = [\"http://10.0.0.1:2379\", \"http://10.0.0.2:2379\", \"http://10.0.0.3:2379\"]",
        &format!("endpoints = [\"{endpoint}\"]"),
    );
    let ha = swap(
        &ha,
        "username = \"postgres\"\n# password = \"secret\"",
        "username = \"postgres\"\npassword = \"su-secret\"",
    );
    let ha = swap(
        &ha,
        "username = \"replicator\"\n# password = \"secret\"",
        "username = \"replicator\"\npassword = \"repl-secret\"",
    );
    write_config(&m, "/etc/outrigger/ha-agent.toml", &ha);
    m.sh("runuser -u postgres -- ha-agent --check-config /etc/outrigger/ha-agent.toml").unwrap();

    start_unit(&m, "ha-agent.service", Duration::from_secs(60));
    wait_until(Duration::from_secs(60), "pg-1 (the unit) to lead", || {
        (http_code(&net, 1, "http://10.250.0.1:8008/primary") == Some(200)).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", m.journal("ha-agent.service")));
    let agent_pid = m.unit_property("ha-agent.service", "MainPID").unwrap();

    // PostgreSQL under the unit's sandbox: it logs where the example says, and JIT (which
    // needs memory that is written and then executed) works.
    let log = m.sh("wc -c < /var/log/postgresql/ha-agent-postgresql.log").unwrap();
    assert!(log.trim().parse::<u64>().unwrap() > 0, "PostgreSQL logged nothing");
    if psql(&m, "select pg_jit_available()").unwrap().trim() == "t" {
        let jit = psql(
            &m,
            "set jit_above_cost = 0; set jit_optimize_above_cost = 0; explain (analyze, format json) select sum(g) from generate_series(1, 100000) g",
        )
        .unwrap();
        assert!(jit.contains("\"JIT\""), "no JIT in the plan:\n{jit}");
    } else {
        println!("PostgreSQL has no JIT here; the JIT check is skipped");
    }

    // Reload: a changed tag reaches the member key while the leader stays leader.
    let (leader, revision) = leader_key(&etcd, &net).expect("leader key");
    assert_eq!(leader, "pg-1");
    let postmaster = m.sh(&format!("head -1 {PGDATA}/postmaster.pid")).unwrap();
    write_config(&m, "/etc/outrigger/ha-agent.toml", &swap(&ha, "failover_priority = 1", "failover_priority = 7"));
    m.sh("systemctl reload ha-agent.service").unwrap();
    wait_until(Duration::from_secs(20), "the reloaded tag in pg-1's member key", || {
        let v = etcd_value(&etcd, &net, "/service/batman/members/pg-1")?;
        v.contains("\"failover_priority\":7").then_some(())
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", m.journal("ha-agent.service")));
    assert_eq!(leader_key(&etcd, &net), Some(("pg-1".into(), revision)), "the leader changed across a reload");
    assert_eq!(
        m.sh(&format!("head -1 {PGDATA}/postmaster.pid")).unwrap(),
        postmaster,
        "PostgreSQL restarted on reload"
    );
    assert_eq!(m.unit_property("ha-agent.service", "MainPID").unwrap(), agent_pid);

    // proxy-checker: HAProxy's checks see the primary here.
    let pc = example("proxy-checker");
    let pc = swap(
        &pc,
        "endpoints = [\"http://10.0.0.1:2379\", \"http://10.0.0.2:2379\", \"http://10.0.0.3:2379\"]",
        &format!("endpoints = [\"{endpoint}\"]"),
    );
    write_config(&m, "/etc/outrigger/proxy-checker.toml", &pc);
    start_unit(&m, "proxy-checker.service", Duration::from_secs(30));
    wait_until(Duration::from_secs(30), "proxy-checker to say primary", || {
        (http_code(&net, 1, "http://10.250.0.1:8009/primary") == Some(200)).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", m.journal("proxy-checker.service")));
    assert_eq!(http_code(&net, 1, "http://10.250.0.1:8009/replica"), Some(503));
    reload_unit(
        &m,
        "proxy-checker.service",
        "/etc/outrigger/proxy-checker.toml",
        &swap(&pc, "etcd_max_age = \"1s\"", "etcd_max_age = \"2s\""),
        "freshness.etcd_max_age",
    );
    assert_eq!(http_code(&net, 1, "http://10.250.0.1:8009/primary"), Some(200), "after the reload");

    // vip-manager: the VIP on eth0, as its own user with exactly two capabilities.
    let vm = example("vip-manager");
    let vm = swap(&vm, "vip = \"10.0.0.100\"", &format!("vip = \"{VIP}\""));
    let vm = swap(&vm, "source = \"10.0.0.1\"", "source = \"10.250.0.1\"");
    let vm = swap(
        &vm,
        "unicast_peers = [\"10.0.0.1\", \"10.0.0.2\", \"10.0.0.3\"]",
        "unicast_peers = [\"10.250.0.1\", \"10.250.0.2\"]",
    );
    let vm = swap(&vm, "endpoints = [\"http://127.0.0.1:2379\"]", &format!("endpoints = [\"{endpoint}\"]"));
    write_config(&m, "/etc/outrigger/vip-manager.toml", &vm);
    start_unit(&m, "vip-manager.service", Duration::from_secs(30));
    wait_until(Duration::from_secs(30), "the VIP on n1", || {
        net.host(1).exec(&["ip", "-br", "addr", "show", "dev", "eth0"]).ok()?.contains(VIP).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", m.journal("vip-manager.service")));
    let pid = m.unit_property("vip-manager.service", "MainPID").unwrap();
    let status = m.sh(&format!("cat /proc/{pid}/status")).unwrap();
    let uid = m.sh("id -u outrigger-vip").unwrap();
    let field = |name: &str| status.lines().find_map(|l| l.strip_prefix(name)).unwrap_or("").trim().to_owned();
    assert!(field("Uid:").starts_with(uid.trim()), "vip-manager runs as {}", field("Uid:"));
    // CAP_NET_ADMIN is bit 12, CAP_NET_RAW bit 13.
    assert_eq!(field("CapEff:"), "0000000000003000", "vip-manager's effective capabilities");
    assert_eq!(field("CapBnd:"), "0000000000003000", "vip-manager's bounding set");
    let vm = swap(&vm, "priority = 101", "priority = 120");
    reload_unit(&m, "vip-manager.service", "/etc/outrigger/vip-manager.toml", &vm, "vrrp.priority");
    let held = net.host(1).exec(&["ip", "-br", "addr", "show", "dev", "eth0"]).unwrap();
    assert!(held.contains(VIP), "the VIP left n1 on a reload: {held}");

    // A second member (started by the test on n2) clones 1 GB from the unit's PostgreSQL.
    psql(&m, "create table filler as select g, repeat('x', 1000) as pad from generate_series(1, 1000000) g").unwrap();
    let size = psql(&m, "select pg_database_size('postgres')").unwrap();
    assert!(size.trim().parse::<u64>().unwrap() > 1_000_000_000, "only {size} bytes");
    let pg2_dir = tempfile::Builder::new().prefix("otk-pkg-pg2-").tempdir_in("/tmp").unwrap();
    std::fs::set_permissions(pg2_dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let _pg2 = second_member(&net, &ha, pg2_dir.path());
    wait_until(Duration::from_secs(180), "pg-2 to stream from pg-1", || {
        (http_code(&net, 2, "http://10.250.0.2:8008/replica") == Some(200)).then_some(())
    })
    .unwrap();

    // Switch over to pg-2, then make the unit's member clone 1 GB back, at most 40 MB/s (n1
    // drops what comes faster from pg-2's PostgreSQL), so the copy lasts several times the
    // shipped WatchdogSec=10s.
    // pg-2 streams as soon as its clone ends, but it is a good candidate only once the
    // leader sees it within maximum_lag_on_failover; until then the answer is 412 ("no good
    // candidates"), as from Patroni, and the request is made again.
    let body = r#"{"leader":"pg-1","candidate":"pg-2"}"#;
    let mut last = String::new();
    wait_until(Duration::from_secs(60), "the switchover to pg-2 to be accepted", || {
        last = net
            .host(1)
            .exec(&[
                "curl",
                "-s",
                "-m",
                "60",
                "-X",
                "POST",
                "-d",
                body,
                "-w",
                "\n%{http_code}",
                "http://10.250.0.1:8008/switchover",
            ])
            .ok()?;
        last.trim_end().ends_with("200").then_some(())
    })
    .unwrap_or_else(|e| panic!("{e:#}; last answer: {last}"));
    wait_until(Duration::from_secs(60), "pg-2 to lead", || {
        (http_code(&net, 2, "http://10.250.0.2:8008/primary") == Some(200)).then_some(())
    })
    .unwrap();
    stop_unit_cleanly(&m, "ha-agent.service");
    assert!(m.sh(&format!("test -e {PGDATA}/postmaster.pid")).is_err(), "PostgreSQL still runs after the agent's stop");
    m.sh(&format!("rm -rf {PGDATA}")).unwrap();
    net.host(1).block("slow", &["ip saddr 10.250.0.2 tcp sport 5432 limit rate over 40 mbytes/second"], &[]).unwrap();
    let t = Instant::now();
    start_unit(&m, "ha-agent.service", Duration::from_secs(60));
    wait_until(Duration::from_secs(240), "pg-1 (the unit) to clone and stream from pg-2", || {
        (http_code(&net, 1, "http://10.250.0.1:8008/replica") == Some(200)).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", m.journal("ha-agent.service")));
    let took = t.elapsed();
    net.host(1).unblock("slow").unwrap();
    println!("pg-1 cloned {} bytes under the shipped WatchdogSec=10s in {:.1} s", size.trim(), took.as_secs_f64());
    assert!(took > Duration::from_secs(10), "the clone ({took:?}) did not outlast the watchdog interval");
    assert_never_restarted(&m, "ha-agent.service");

    // Now a replica: proxy-checker says so, and vip-manager (whose [leader] check has weight
    // 0, as keepalived's track with weight 0) gives the VIP up.
    wait_until(Duration::from_secs(30), "proxy-checker to say replica", || {
        (http_code(&net, 1, "http://10.250.0.1:8009/replica") == Some(200)).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", m.journal("proxy-checker.service")));
    assert_eq!(http_code(&net, 1, "http://10.250.0.1:8009/primary"), Some(503));
    wait_until(Duration::from_secs(30), "the VIP to leave n1", || {
        (!net.host(1).exec(&["ip", "-br", "addr", "show", "dev", "eth0"]).ok()?.contains(VIP)).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", m.journal("vip-manager.service")));

    // wal-shipper: the daemon publishes this member's archive status in etcd.
    let ws = example("wal-shipper");
    let ws = swap(
        &ws,
        "# aws_access_key_id = \"...\"\n# aws_secret_access_key = \"...\"",
        &format!("aws_access_key_id = \"{ACCESS_KEY}\"\naws_secret_access_key = \"{SECRET_KEY}\""),
    );
    let ws = swap(&ws, "endpoints = [\"http://127.0.0.1:2379\"]", &format!("endpoints = [\"{endpoint}\"]"));
    write_config(&m, "/etc/outrigger/wal-shipper.toml", &ws);
    start_unit(&m, "wal-shipper.service", Duration::from_secs(30));
    wait_until(Duration::from_secs(30), "wal-shipper's status key", || {
        etcd.etcdctl(&net, 0, &["get", "--prefix", "--keys-only", "/service/batman/outrigger/wal-shipper/"])
            .ok()?
            .contains("pg1")
            .then_some(())
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", m.journal("wal-shipper.service")));
    let ws = swap(&ws, "upload_concurrency = 4", "upload_concurrency = 2");
    reload_unit(&m, "wal-shipper.service", "/etc/outrigger/wal-shipper.toml", &ws, "WALG_UPLOAD_CONCURRENCY");
    drop(s3);

    // tuner-apply: a one-shot that merges settings into the cluster's /config.
    let tu = example("tuner");
    let tu = swap(
        &tu,
        "endpoints = [\"http://10.0.0.1:2379\", \"http://10.0.0.2:2379\", \"http://10.0.0.3:2379\"]",
        &format!("endpoints = [\"{endpoint}\"]"),
    );
    write_config(&m, "/etc/outrigger/tuner.toml", &tu);
    m.sh("systemctl start tuner-apply.service")
        .unwrap_or_else(|e| panic!("{e:#}\n{}", m.journal("tuner-apply.service")));
    assert_eq!(m.unit_property("tuner-apply.service", "Result").unwrap(), "success");
    let config = etcd_value(&etcd, &net, "/service/batman/config").expect("the cluster's config key");
    assert!(config.contains("shared_buffers"), "tuner-apply wrote no settings: {config}");

    // Idle figures under the units, then a clean stop of each.
    let units = ["ha-agent.service", "proxy-checker.service", "vip-manager.service", "wal-shipper.service"];
    let before: Vec<(u64, f64)> = units.iter().map(|u| rss_and_cpu(&m, u)).collect();
    let window = Duration::from_secs(20);
    std::thread::sleep(window);
    let mut figures = String::from("unit rss_kb idle_cpu_percent (20 s window, under the shipped unit)\n");
    for (u, (_, cpu0)) in units.iter().zip(&before) {
        let (rss, cpu1) = rss_and_cpu(&m, u);
        let pct = (cpu1 - cpu0) / window.as_secs_f64() * 100.0;
        figures.push_str(&format!("{u} {rss} {pct:.2}\n"));
    }
    print!("{figures}");
    std::fs::write(net.dir().log("packages-figures").with_extension("txt"), &figures).unwrap();
    for u in units {
        assert_never_restarted(&m, u);
    }
    for u in ["vip-manager.service", "proxy-checker.service", "wal-shipper.service", "ha-agent.service"] {
        stop_unit_cleanly(&m, u);
    }
    m.halt(Duration::from_secs(30)).unwrap();
}
