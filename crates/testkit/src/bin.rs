//! The daemons' binaries, for tests in another package (cargo builds a package's binaries only
//! for that package's own tests).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

/// Path of the `name` binary (package and binary share the name), built once per test run in
/// the profile the tests were built in. nextest runs every test in its own process, so "once"
/// is kept with a marker file per run and a file lock (each `cargo build` would otherwise queue
/// on cargo's own lock).
pub fn daemon(name: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>
    let profile_dir = exe.parent().and_then(Path::parent).expect("target profile dir").to_path_buf();
    let path = profile_dir.join(name);
    let built = BUILT.get_or_init(|| Mutex::new(Vec::new()));
    let mut built = built.lock().unwrap_or_else(|e| e.into_inner());
    if built.iter().any(|b| b == name) {
        return path;
    }
    let target_dir = profile_dir.parent().expect("target dir");
    let run = std::env::var("NEXTEST_RUN_ID").unwrap_or_else(|_| std::process::id().to_string());
    let marker = profile_dir.join(format!(".{name}-built-{run}"));
    let lock = std::fs::File::create(profile_dir.join(format!(".{name}-build.lock"))).expect("build lock file");
    lock.lock().expect("take the build lock");
    if !marker.exists() {
        let mut cmd = Command::new(option_env!("CARGO").unwrap_or("cargo"));
        cmd.current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."))
            .args(["build", "-q", "-p", name, "--bin", name, "--target-dir"])
            .arg(target_dir);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build");
        assert!(status.success(), "cargo build -p {name} failed");
        std::fs::write(&marker, b"").expect("write build marker");
    }
    drop(lock);
    built.push(name.to_owned());
    path
}
