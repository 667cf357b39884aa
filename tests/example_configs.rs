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
