//! `deploy/systemd/`: every unit passes `systemd-analyze verify` without a single warning.

use std::path::{Path, PathBuf};
use std::process::Command;

const BINARIES: [&str; 5] = ["ha-agent", "proxy-checker", "vip-manager", "wal-shipper", "tuner"];

fn units_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd")
}

/// `systemd-analyze verify` exits 0 on unknown keys and unparsable values and only prints a
/// warning, so any output at all counts as a failure. It also insists that `ExecStart=` exists;
/// the units point at /usr/bin (where the packages install them), which the check redirects to stand-in executables.
fn verify(unit_text: &str, name: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    for b in BINARIES {
        let p = bin.join(b);
        std::fs::write(&p, "#!/bin/sh\nexit 0\n").unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    let unit = dir.path().join(name);
    std::fs::write(&unit, unit_text.replace("/usr/bin/", &format!("{}/", bin.display()))).unwrap();
    let out = Command::new("systemd-analyze").args(["verify", "--man=no"]).arg(&unit).output().unwrap();
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)).trim().to_owned()
        + if out.status.success() { "" } else { "\n(non-zero exit)" }
}

#[test]
fn every_unit_passes_systemd_analyze_verify_without_warnings() {
    let mut units: Vec<_> = std::fs::read_dir(units_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "service"))
        .collect();
    units.sort();
    assert_eq!(units.len(), 5, "one unit per binary: {units:?}");
    for u in units {
        let name = u.file_name().unwrap().to_str().unwrap().to_owned();
        let out = verify(&std::fs::read_to_string(&u).unwrap(), &name);
        assert!(out.is_empty(), "{name}:\n{out}");
    }
}

#[test]
fn only_vip_manager_gets_network_capabilities() {
    for entry in std::fs::read_dir(units_dir()).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let caps: Vec<_> = text.lines().filter(|l| l.starts_with("AmbientCapabilities=")).collect();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name == "vip-manager.service" {
            assert_eq!(caps, vec!["AmbientCapabilities=CAP_NET_RAW CAP_NET_ADMIN"], "{name}");
        } else {
            assert!(caps.iter().all(|l| *l == "AmbientCapabilities="), "{name}: {caps:?}");
        }
    }
}

#[test]
fn the_check_flags_a_unit_with_a_typo() {
    let good = std::fs::read_to_string(units_dir().join("proxy-checker.service")).unwrap();
    let bad = good.replace("WatchdogSec=", "WatchdogSecs=");
    let out = verify(&bad, "proxy-checker.service");
    assert!(out.contains("WatchdogSecs"), "a misspelt key went unnoticed: {out:?}");
}
