//! Every example config under `deploy/config/` is valid for the daemon it is for, so the
//! examples cannot drift from the code.

use std::path::{Path, PathBuf};

use outrigger_daemon::config::load;

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/config").join(name)
}

fn assert_valid<Raw>(name: &str)
where
    Raw: serde::de::DeserializeOwned + outrigger_daemon::config::Validate,
{
    if let Err(e) = load::<Raw>(&example(name)) {
        panic!("deploy/config/{name} is not valid:\n{e}");
    }
}

#[test]
fn ha_agent_example_config_is_valid() {
    assert_valid::<ha_agent::config::RawConfig>("ha-agent.toml");
}

#[test]
fn proxy_checker_example_config_is_valid() {
    assert_valid::<proxy_checker::config::RawConfig>("proxy-checker.toml");
}

#[test]
fn vip_manager_example_config_is_valid() {
    assert_valid::<vip_manager::config::RawConfig>("vip-manager.toml");
}

#[test]
fn wal_shipper_example_config_is_valid() {
    // wal-shipper reads WAL-G's settings; the environment is left out so it cannot mask the file.
    if let Err(e) = wal_shipper::settings::load(Some(&example("wal-shipper.toml")), &|_| None) {
        panic!("deploy/config/wal-shipper.toml is not valid:\n{e}");
    }
}

#[test]
fn tuner_example_config_is_valid() {
    assert_valid::<tuner::config::RawConfig>("tuner.toml");
}

#[test]
fn ha_agent_reads_the_reference_deployments_patroni_yml() {
    // The TLS files must exist: the example's paths are moved under a directory of the test's.
    let dir = tempfile::tempdir().expect("tempdir");
    for f in ["ca.pem", "node1.pem", "node1-key.pem"] {
        std::fs::write(dir.path().join(f), "").expect("write a stand-in TLS file");
    }
    let text = std::fs::read_to_string(example("patroni-reference.yml")).expect("read the example");
    let yml = dir.path().join("patroni.yml");
    std::fs::write(&yml, text.replace("/opt/tantor/etc/patroni/", &format!("{}/", dir.path().display())))
        .expect("write patroni.yml");
    let cfg = load::<ha_agent::config::RawConfig>(&yml)
        .unwrap_or_else(|e| panic!("deploy/config/patroni-reference.yml is not valid:\n{e}"));
    assert_eq!(cfg.name, "node1");
    assert_eq!(cfg.layout.scope(), "main");
    assert_eq!(cfg.layout.key(outrigger_schema::ClusterKey::Leader), "/service/main/leader");
    assert_eq!(
        cfg.etcd.endpoints,
        ["https://10.10.44.101:2379", "https://10.10.44.102:2379", "https://10.10.44.103:2379"]
    );
    assert!(cfg.etcd.tls.is_some(), "etcd with TLS client certificates");
    assert_eq!(cfg.restapi_connect, "10.10.44.101:8008");
    assert!(cfg.restapi.access.basic.is_some(), "REST authentication");
    assert_eq!(cfg.timings.ttl, std::time::Duration::from_secs(30));
    assert_eq!(cfg.postgresql.data_dir, Path::new("/var/lib/postgresql/15/node1/main"));
    assert_eq!(cfg.postgresql.socket_dir, Path::new("/var/run/postgresql"));
    assert_eq!(cfg.postgresql.start_timeout, std::time::Duration::from_secs(60));
    assert_eq!(cfg.postgresql.replication.username, "replicator");
    assert!(cfg.postgresql.parameters.iter().any(|(k, v)| k == "archive_mode" && v == "on"));
    assert!(
        matches!(&cfg.bootstrap_method, ha_agent::config::BootstrapMethod::Command { name, .. } if name == "wal-g")
    );
    assert_eq!(cfg.bootstrap_dcs["maximum_lag_on_failover"], serde_json::json!(1048576));
    assert_eq!(cfg.initdb, ["encoding=UTF8", "data-checksums"]);
    assert_eq!(cfg.watchdog.safety_margin, 5);
}
