//! Python tools from PyPI (patronictl, Patroni) for drop-in tests, in a virtualenv made once
//! under `target/venvs/<name>` and shared by every test that asks for the same packages.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A virtualenv with `packages` installed, e.g. `venv("patroni", &["patroni[etcd3,psycopg3]"])`.
/// Returns its `bin/` folder. Safe to call from tests running in parallel: a file lock
/// serialises the install, and a marker records what was installed.
pub fn venv(name: &str, packages: &[&str]) -> anyhow::Result<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/venvs");
    std::fs::create_dir_all(&root)?;
    let lock = std::fs::File::create(root.join(format!("{name}.lock")))?;
    lock.lock()?;
    let dir = root.join(name);
    let marker = dir.join(".outrigger-packages");
    // The system interpreter, not whatever `python3` is first on PATH: a virtualenv links to
    // its base interpreter, and one under /root (pyenv) cannot be run by the `postgres` user.
    let python = if Path::new("/usr/bin/python3").exists() { "/usr/bin/python3" } else { "python3" };
    let want = format!("{python}\n{}", packages.join("\n"));
    if std::fs::read_to_string(&marker).ok().as_deref() != Some(want.as_str()) {
        let _ = std::fs::remove_dir_all(&dir);
        crate::net::run(Command::new(python).arg("-m").arg("venv").arg(&dir))?;
        crate::net::run(
            Command::new(dir.join("bin/pip")).args(["install", "-q", "--disable-pip-version-check"]).args(packages),
        )?;
        std::fs::write(&marker, &want)?;
    }
    // Let the `postgres` user (Patroni runs as it) read and execute the virtualenv.
    crate::net::run(Command::new("chmod").args(["-R", "a+rX"]).arg(&dir))?;
    lock.unlock()?;
    Ok(dir.join("bin"))
}

/// The virtualenv with Patroni 4.x and patronictl from PyPI.
pub fn patroni_bin() -> anyhow::Result<PathBuf> {
    venv("patroni", &["patroni[etcd3,psycopg3]"])
}
