//! STYLE.md rule 5: no daemon crate depends on another daemon crate; shared things move down
//! into a shared crate.

use std::path::Path;

const DAEMONS: [&str; 5] = ["ha-agent", "proxy-checker", "vip-manager", "wal-shipper", "tuner"];

fn deps_of(krate: &str) -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates").join(krate).join("Cargo.toml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let manifest: toml::Table = text.parse().unwrap_or_else(|e| panic!("parse {}: {e}", path.display()));
    ["dependencies", "dev-dependencies", "build-dependencies"]
        .iter()
        .filter_map(|section| manifest.get(*section)?.as_table())
        .flat_map(|t| t.keys().cloned())
        .collect()
}

#[test]
fn no_daemon_crate_depends_on_another_daemon_crate() {
    for daemon in DAEMONS {
        let deps = deps_of(daemon);
        let bad: Vec<_> = deps.iter().filter(|d| DAEMONS.contains(&d.as_str())).collect();
        assert!(bad.is_empty(), "{daemon} depends on daemon crate(s) {bad:?}");
    }
}

#[test]
fn shared_crates_do_not_depend_on_daemon_crates() {
    for shared in ["schema", "etcd", "daemon", "testkit"] {
        let deps = deps_of(shared);
        let bad: Vec<_> = deps.iter().filter(|d| DAEMONS.contains(&d.as_str())).collect();
        assert!(bad.is_empty(), "shared crate {shared} depends on daemon crate(s) {bad:?}");
    }
}
