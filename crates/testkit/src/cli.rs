//! Running a daemon binary's `--check-config` on a config text.

use std::process::Command;

/// What `<bin> --check-config <file>` did.
#[derive(Debug)]
pub struct CheckRun {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Writes `config` to a temporary file and runs `bin --check-config` on it. `config` of `None`
/// points at a file that does not exist.
pub fn check_config(bin: &str, config: Option<&str>) -> anyhow::Result<CheckRun> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("config.toml");
    if let Some(text) = config {
        std::fs::write(&path, text)?;
    }
    let out = Command::new(bin).arg("--check-config").arg(&path).output()?;
    Ok(CheckRun {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}
