//! The alerting rules and the example scrape config shipped in `deploy/prometheus/`, checked
//! with the real `promtool` (Debian's `prometheus` package): they load, every alert passes its
//! unit tests (it fires on the series that describe its fault and stays quiet before), the
//! scrape jobs are the ones the rules watch, and every metric the rules use is one a daemon
//! exports, so the rules cannot drift from the code.

use std::path::{Path, PathBuf};
use std::process::Command;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus")
}

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir())
        .output()
        .expect("run promtool (Debian's prometheus package; scripts/install-deps installs it)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool {}:\n{text}", args.join(" "));
    text
}

#[test]
fn the_alerting_rules_load_in_promtool_and_every_alert_passes_its_unit_tests() {
    let checked = promtool(&["check", "rules", "outrigger-alerts.yml"]);
    assert!(checked.contains("SUCCESS: 8 rules found"), "{checked}");
    let tested = promtool(&["test", "rules", "outrigger-alerts.test.yml"]);
    assert!(tested.contains("SUCCESS"), "{tested}");
    // Every alert has at least one test that expects it to fire.
    let rules = std::fs::read_to_string(dir().join("outrigger-alerts.yml")).expect("rules");
    let tests = std::fs::read_to_string(dir().join("outrigger-alerts.test.yml")).expect("tests");
    for alert in rules.lines().filter_map(|l| l.trim().strip_prefix("- alert: ")) {
        let fires = tests.split("alertname: ").skip(1).any(|t| t.starts_with(alert) && t.contains("exp_labels"));
        assert!(fires, "no test expects {alert} to fire");
    }
}

#[test]
fn the_example_scrape_config_loads_with_the_rules_and_its_jobs_are_the_ones_the_rules_watch() {
    let checked = promtool(&["check", "config", "prometheus.yml"]);
    assert!(checked.contains("SUCCESS: 8 rules found"), "the rules load with the config: {checked}");
    let config = std::fs::read_to_string(dir().join("prometheus.yml")).expect("config");
    let rules = std::fs::read_to_string(dir().join("outrigger-alerts.yml")).expect("rules");
    let watched = rules.lines().find(|l| l.contains("up{job=~")).expect("the daemon-down rule");
    let jobs: Vec<&str> = config.lines().filter_map(|l| l.trim().strip_prefix("- job_name: ")).collect();
    assert_eq!(jobs, ["ha-agent", "proxy-checker", "vip-manager", "wal-shipper"]);
    for job in jobs {
        assert!(watched.contains(job), "the daemon-down rule does not watch job {job}: {watched}");
    }
}

#[test]
fn every_metric_the_alerting_rules_use_is_one_a_daemon_exports() {
    let rules = std::fs::read_to_string(dir().join("outrigger-alerts.yml")).expect("rules");
    let sources: String = ["ha-agent", "proxy-checker", "vip-manager", "wal-shipper"]
        .iter()
        .map(|c| {
            let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates").join(c).join("src/metrics.rs");
            std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        })
        .collect();
    let mut used: Vec<&str> = Vec::new();
    for line in rules.lines().filter(|l| !l.trim_start().starts_with('#')) {
        for word in line.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            let ours = ["patroni_", "ha_agent_", "proxy_checker_", "vip_manager_", "wal_shipper_"];
            if ours.iter().any(|p| word.starts_with(p)) && !used.contains(&word) {
                used.push(word);
            }
        }
    }
    assert!(used.len() >= 6, "metric names found in the rules: {used:?}");
    let missing: Vec<&&str> = used.iter().filter(|m| !sources.contains(&format!("\"{m}\""))).collect();
    assert!(missing.is_empty(), "the rules use metrics no daemon exports: {missing:?}");
}
