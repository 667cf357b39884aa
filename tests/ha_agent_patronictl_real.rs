//! Unmodified `patronictl` (from PyPI, `patroni[etcd3]`, in the test kit's virtualenv) against
//! a 3-host ha-agent cluster (`ha_agent_harness.rs`: etcd member + ha-agent + PostgreSQL per
//! host). patronictl reads the cluster from etcd and drives it through each member's REST API,
//! exactly as it does with Patroni; the assertions are on what it prints and on the state of
//! the cluster afterwards (etcd keys, PostgreSQL).
//!
//! patronictl runs inside host n1's namespace (`ip netns exec`), so its traffic stays in the
//! namespaces the test made.

#[path = "ha_agent_harness.rs"]
mod harness;

use std::path::PathBuf;
use std::time::Duration;

use harness::{Cluster, Opts, SCOPE};
use outrigger_testkit::wait_until;

const UP: Duration = Duration::from_secs(90);

/// A cluster with one primary and two streaming replicas, and patronictl's config for it.
struct Ctl {
    c: Cluster,
    primary: usize,
    config: PathBuf,
    bin: PathBuf,
}

impl Ctl {
    fn start(test: &str, opts: Opts) -> Self {
        let c = Cluster::start(test, opts).expect("cluster");
        let primary = c.wait_primary(UP, &[]).expect("a primary");
        let replicas: Vec<usize> = (1..=3).filter(|&i| i != primary).collect();
        c.wait_streaming(primary, &replicas, UP).expect("replicas streaming");
        let hosts: Vec<String> =
            (0..c.etcd.len()).map(|m| c.etcd.endpoint(m).trim_start_matches("http://").to_owned()).collect();
        let config = c.net.dir().path().join("patronictl.yml");
        std::fs::write(
            &config,
            format!("scope: {SCOPE}\nnamespace: /service/\netcd3:\n  hosts: {}\n", hosts.join(",")),
        )
        .expect("write patronictl.yml");
        let bin = outrigger_testkit::python::patroni_bin().expect("patronictl from PyPI").join("patronictl");
        Self { c, primary, config, bin }
    }

    /// Runs `patronictl -c <config> <args>` in n1's namespace; its output, or why it failed.
    fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut all = vec![self.bin.to_str().expect("utf-8 path"), "-c", self.config.to_str().expect("utf-8 path")];
        all.extend_from_slice(args);
        let host = self.c.net.host(1);
        let out = host.exec(&["timeout", "60"].iter().copied().chain(all.iter().copied()).collect::<Vec<_>>())?;
        Ok(out)
    }

    /// `patronictl list -f json`: one object per member.
    fn list(&self) -> Vec<serde_json::Value> {
        let out = self.run(&["list", SCOPE, "-f", "json"]).expect("patronictl list");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("patronictl list -f json is not JSON ({e}): {out}"))
    }
}

fn field<'a>(m: &'a serde_json::Value, k: &str) -> &'a str {
    m[k].as_str().unwrap_or_default()
}

#[test]
fn patronictl_lists_shows_and_edits_an_ha_agent_cluster() {
    let ctl = Ctl::start("patronictl_lists_shows_and_edits", Opts { sync: false, ..Opts::default() });
    let p = ctl.primary;

    // list: three members, one Leader, two streaming replicas, all on timeline 1.
    let members = ctl.list();
    assert_eq!(members.len(), 3, "{members:?}");
    let leader: Vec<&serde_json::Value> = members.iter().filter(|m| field(m, "Role") == "Leader").collect();
    assert_eq!(leader.len(), 1, "{members:?}");
    assert_eq!(field(leader[0], "Member"), Cluster::name(p));
    assert_eq!(field(leader[0], "State"), "running");
    for m in members.iter().filter(|m| field(m, "Role") != "Leader") {
        assert_eq!(field(m, "Role"), "Replica", "{m}");
        assert_eq!(field(m, "State"), "streaming", "{m}");
        assert_eq!(m["TL"], serde_json::json!(1), "{m}");
        assert_eq!(field(m, "Host"), ctl.c.net.host(Cluster::index(field(m, "Member"))).ip().to_string());
    }
    // The table form too, with the cluster's system identifier in its title.
    let table = ctl.run(&["list", SCOPE]).expect("patronictl list");
    let sysid = ctl.c.etcd_get("initialize").expect("initialize key");
    assert!(table.contains(&format!("Cluster: {SCOPE} ({sysid})")), "{table}");

    // topology: the leader first, the replicas under it.
    let topo = ctl.run(&["topology", SCOPE]).expect("patronictl topology");
    let rows: Vec<&str> = topo.lines().filter(|l| l.starts_with("| ") && !l.contains("Member")).collect();
    assert_eq!(rows.len(), 3, "{topo}");
    assert!(rows[0].contains(&format!("| {} ", Cluster::name(p))), "leader first: {topo}");
    assert!(rows[1..].iter().all(|r| r.starts_with("| + n")), "replicas indented under the leader: {topo}");

    // version: the CLI's own, then each member's through GET /patroni.
    let version = ctl.run(&["version", SCOPE]).expect("patronictl version");
    for i in 1..=3 {
        assert!(
            version.contains(&format!("{}: Patroni {}", Cluster::name(i), outrigger_schema::PATRONI_COMPAT_VERSION)),
            "{version}"
        );
    }
    assert!(version.contains("PostgreSQL 1"), "{version}");

    // show-config: the dynamic config ha-agent wrote at bootstrap.
    let shown = ctl.run(&["show-config", SCOPE]).expect("patronictl show-config");
    assert!(shown.contains("maximum_lag_on_failover: 16777216"), "{shown}");

    // edit-config: a parameter change is written to /config and applied by every member.
    let out = ctl.run(&["edit-config", SCOPE, "--force", "-p", "work_mem=7MB", "-s", "loop_wait=1"]);
    out.expect("patronictl edit-config");
    let config = ctl.c.etcd_get("config").expect("config key");
    let v: serde_json::Value = serde_json::from_str(&config).expect("config is JSON");
    assert_eq!(v["postgresql"]["parameters"]["work_mem"], "7MB", "{config}");
    for i in 1..=3 {
        wait_until(Duration::from_secs(20), &format!("work_mem=7MB on n{i}"), || {
            (ctl.c.sql(i, "show work_mem").ok()? == "7MB").then_some(())
        })
        .expect("the parameter applied by every member");
    }

    // history: empty on timeline 1 (printed as a header only).
    let history = ctl.run(&["history", SCOPE]).expect("patronictl history");
    assert!(history.contains("TL") && history.contains("LSN"), "{history}");
}
