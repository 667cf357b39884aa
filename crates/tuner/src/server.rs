//! Runs the target `postgres` binary to validate settings (the I/O half of
//! [`crate::validate`]).
//!
//! PostgreSQL refuses to run as root, so when tuner runs as root the binary is started as the
//! `postgres` user through `runuser -u postgres --`, and the scratch directory holding the
//! config is handed to that user. No server is started: `--describe-config` and `-C` only parse.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context, bail};

use crate::output::{Format, render};
use crate::validate::{Described, Finding, check_against_catalogue, check_read_back, parse_describe_config};

/// The user PostgreSQL runs as when tuner is root.
const PG_USER: &str = "postgres";

/// A `postgres` binary to ask.
#[derive(Debug, Clone)]
pub struct Server {
    pub bin: PathBuf,
}

/// What a validation run found.
#[derive(Debug, Clone)]
pub struct Report {
    /// `postgres --version`, e.g. `postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)`.
    pub server: String,
    pub major: u8,
    pub checked: usize,
    pub findings: Vec<Finding>,
}

fn as_root() -> bool {
    nix::unistd::geteuid().is_root()
}

impl Server {
    pub fn new(bin: impl Into<PathBuf>) -> Self {
        Self { bin: bin.into() }
    }

    fn command(&self) -> Command {
        if as_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", PG_USER, "--"]).arg(&self.bin);
            c
        } else {
            Command::new(&self.bin)
        }
    }

    fn output(&self, args: &[&str], what: &str) -> anyhow::Result<Output> {
        self.command().args(args).output().with_context(|| format!("run {} {what}", self.bin.display()))
    }

    /// `postgres --version` and its major version.
    pub fn version(&self) -> anyhow::Result<(String, u8)> {
        // Checked here, because through runuser a missing binary is only runuser's complaint.
        if !self.bin.is_file() {
            bail!(
                "{}: no such file (give the postgres binary, e.g. /usr/lib/postgresql/15/bin/postgres)",
                self.bin.display()
            );
        }
        let out = self.output(&["--version"], "--version")?;
        let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if !out.status.success() {
            bail!("{} --version failed: {}", self.bin.display(), String::from_utf8_lossy(&out.stderr).trim());
        }
        let major = parse_major(&text).with_context(|| format!("read the version in {text:?}"))?;
        Ok((text, major))
    }

    /// The server's parameter catalogue.
    pub fn describe_config(&self) -> anyhow::Result<BTreeMap<String, Described>> {
        let out = self.output(&["--describe-config"], "--describe-config")?;
        if !out.status.success() {
            bail!("{} --describe-config failed: {}", self.bin.display(), String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(parse_describe_config(&String::from_utf8_lossy(&out.stdout)))
    }

    /// Writes `settings` as a `postgresql.conf` in a scratch directory and has the server read
    /// each one back with `-C`. A value the server rejects ends the run with its message.
    pub fn read_back(&self, settings: &BTreeMap<String, String>) -> anyhow::Result<Vec<Finding>> {
        let dir = tempfile::Builder::new().prefix("tuner-validate").tempdir().context("create a scratch directory")?;
        let conf = dir.path().join("postgresql.conf");
        std::fs::write(&conf, render(settings, Format::Conf, &[])).context("write the scratch postgresql.conf")?;
        if as_root() {
            give_to_postgres(dir.path())?;
            give_to_postgres(&conf)?;
        }
        let data = dir.path().to_string_lossy().into_owned();
        let mut findings = Vec::new();
        for (name, written) in settings {
            let out = self.output(&["-D", &data, "-C", name], "-C")?;
            if !out.status.success() {
                // The whole file failed to parse: report the server's own lines and stop.
                return Ok(server_complaints(&String::from_utf8_lossy(&out.stderr), &conf));
            }
            let printed = String::from_utf8_lossy(&out.stdout);
            findings.extend(check_read_back(name, written, printed.trim()));
        }
        Ok(findings)
    }

    /// Both checks, for settings meant for PostgreSQL `version`.
    pub fn validate(&self, settings: &BTreeMap<String, String>, version: u8) -> anyhow::Result<Report> {
        let (server, major) = self.version()?;
        if major != version {
            bail!("{} is PostgreSQL {major}, the settings are for {version} (--pg-version)", self.bin.display());
        }
        let described = self.describe_config()?;
        if described.is_empty() {
            bail!("{} --describe-config listed no parameters", self.bin.display());
        }
        let mut findings = check_against_catalogue(settings, &described, version);
        findings.extend(self.read_back(settings)?);
        Ok(Report { server, major, checked: settings.len(), findings })
    }
}

/// `postgres (PostgreSQL) 15.18 (Debian ...)` → 15.
pub fn parse_major(version: &str) -> Option<u8> {
    let after = version.split(')').nth(1)?.trim();
    let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// The `LOG:`/`FATAL:` lines a failed parse printed, as findings naming the parameter where the
/// message does.
fn server_complaints(stderr: &str, conf: &Path) -> Vec<Finding> {
    stderr
        .lines()
        .filter(|l| !l.contains("skipping missing"))
        .filter_map(|l| {
            let at = ["FATAL:", "ERROR:", "LOG:"].iter().find_map(|lvl| l.find(lvl).map(|i| i + lvl.len()))?;
            Some(l[at..].trim())
        })
        .map(|msg| {
            let name = msg.split('"').nth(1).filter(|n| !n.contains('/')).unwrap_or("(file)").to_owned();
            Finding {
                name,
                value: String::new(),
                problem: format!("the server says: {}", msg.replace(&conf.display().to_string(), "postgresql.conf")),
            }
        })
        .collect()
}

fn give_to_postgres(path: &Path) -> anyhow::Result<()> {
    let user = nix::unistd::User::from_name(PG_USER)
        .context("look up the postgres user")?
        .with_context(|| format!("no {PG_USER} user: PostgreSQL refuses to run as root"))?;
    std::os::unix::fs::chown(path, Some(user.uid.as_raw()), Some(user.gid.as_raw()))
        .with_context(|| format!("give {} to {PG_USER}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn major_versions_parse() {
        assert_eq!(parse_major("postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"), Some(15));
        assert_eq!(parse_major("postgres (PostgreSQL) 18beta1"), Some(18));
        assert_eq!(parse_major("something else"), None);
        assert_eq!(parse_major("postgres (PostgreSQL) 17.2"), Some(17));
    }

    #[test]
    fn server_complaints_name_the_parameter() {
        let f = server_complaints(
            "2026-11-24 07:03:32.340 GMT [24170] LOG:  skipping missing configuration file \"/t/postgresql.auto.conf\"\n\
             2026-11-24 07:03:32.340 GMT [24170] LOG:  unrecognized configuration parameter \"foo_bar\" in file \"/t/postgresql.conf\" line 5\n\
             2026-11-24 07:03:32.340 GMT [24170] FATAL:  configuration file \"/t/postgresql.conf\" contains errors\n",
            Path::new("/t/postgresql.conf"),
        );
        assert_eq!(f.len(), 2, "{f:?}");
        assert_eq!(f[0].name, "foo_bar");
        assert!(f[0].problem.contains("unrecognized configuration parameter"), "{}", f[0].problem);
        assert_eq!(f[1].name, "(file)");
    }
}
