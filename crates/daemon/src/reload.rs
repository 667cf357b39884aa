//! Config reload on SIGHUP (`systemctl reload`, `ExecReload=/bin/kill -HUP $MAINPID`), the
//! same in every daemon: re-read and validate the file; an invalid file changes nothing (each
//! problem is logged); of a valid one, the keys that can change while running apply at once,
//! and the others keep their running values and are named in the log as needing a restart.
//!
//! Each daemon says which of its keys are which with a [`Plan`] (pure, unit-tested in the
//! daemon's config module) and counts the outcome in its `*_config_reloads_total{result}`.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use crate::config::{ConfigError, Validate};

/// What a reload does with a new config: which keys changed and are applied at once, and
/// which changed but need the daemon restarted (they keep their running values).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    pub applied: Vec<&'static str>,
    pub need_restart: Vec<&'static str>,
}

impl Plan {
    /// A key that applies at once: when `new` differs, `running` takes it.
    pub fn runtime<T: PartialEq + Clone>(&mut self, key: &'static str, running: &mut T, new: &T) {
        if running != new {
            self.applied.push(key);
            *running = new.clone();
        }
    }

    /// A key that applies only at start: when `new` differs, it is named, `running` stays.
    pub fn restart<T: PartialEq>(&mut self, key: &'static str, running: &T, new: &T) {
        if running != new && !self.need_restart.contains(&key) {
            self.need_restart.push(key);
        }
    }

    /// `[log]`: the level applies at once (see [`Plan::apply_log_level`]), the format at start.
    pub fn log_options(&mut self, running: &mut crate::logging::LogOptions, new: &crate::logging::LogOptions) {
        self.restart("log.format", &running.format, &new.format);
        self.runtime("log.level", &mut running.level, &new.level);
    }

    /// Whether `key` changed and applies now.
    pub fn applies(&self, key: &str) -> bool {
        self.applied.contains(&key)
    }

    /// Sets the log level when the plan applied a new `log.level` (an effect, kept out of the
    /// pure planning).
    pub fn apply_log_level(&self, running: &crate::logging::LogOptions) {
        if self.applies("log.level") {
            crate::logging::set_level(running.level.as_deref());
        }
    }

    /// Logs the plan: one warning per key that needs a restart, one line for the rest.
    /// Returns the outcome's metric label.
    pub fn log(&self, daemon: &str) -> Outcome {
        for key in &self.need_restart {
            tracing::warn!(
                key,
                "changed in the config file, but applies only when {daemon} restarts; the running value is kept"
            );
        }
        if self.applied.is_empty() {
            tracing::info!("config reloaded: no runtime settings changed");
            Outcome::Unchanged
        } else {
            tracing::info!(applied = self.applied.join(", "), "config reloaded");
            Outcome::Applied
        }
    }
}

/// How a reload ended, as the `result` label of each daemon's reload counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    Unchanged,
    Invalid,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Unchanged => "unchanged",
            Outcome::Invalid => "invalid",
        }
    }

    /// Every label, for declaring the counter's series at start.
    pub const ALL: [Outcome; 3] = [Outcome::Applied, Outcome::Unchanged, Outcome::Invalid];
}

/// Where a daemon's reloads come from: its SIGHUPs, and the file to read again on each.
pub struct Source {
    pub path: PathBuf,
    pub requests: crate::shutdown::ReloadRequests,
}

impl Source {
    /// Waits for the next request and reads the file again: `None` once no more can come (the
    /// daemon stops), `Some(None)` for a file that is unreadable or invalid (see [`read`]).
    pub async fn next<Raw: DeserializeOwned + Validate>(&mut self) -> Option<Option<Raw::Valid>> {
        if !self.requests.next().await {
            return None;
        }
        Some(read::<Raw>(&self.path))
    }
}

/// Re-reads the config file at `path`; an unreadable or invalid file is logged, one line per
/// problem, and `None` is returned (the running config is kept).
pub fn read<Raw: DeserializeOwned + Validate>(path: &Path) -> Option<Raw::Valid> {
    report(path, crate::config::load::<Raw>(path))
}

/// Logs a failed reload's problems (for daemons whose config comes from more than the file).
pub fn report<T>(path: &Path, loaded: Result<T, ConfigError>) -> Option<T> {
    match loaded {
        Ok(c) => Some(c),
        Err(e) => {
            let problems = e.problems();
            if problems.is_empty() {
                tracing::error!(error = %e, "config reload refused; the running config is kept");
            } else {
                for p in problems {
                    tracing::error!(file = %path.display(), problem = %p, "config reload refused; the running config is kept");
                }
            }
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_applies_runtime_keys_and_names_restart_keys_once() {
        let mut p = Plan::default();
        let mut level = Some("info".to_owned());
        p.runtime("log.level", &mut level, &Some("debug".to_owned()));
        assert_eq!(level.as_deref(), Some("debug"));
        let mut same = 5;
        p.runtime("same", &mut same, &5);
        p.restart("listen", &1, &2);
        p.restart("listen", &3, &4);
        p.restart("unchanged", &1, &1);
        assert_eq!(p.applied, ["log.level"]);
        assert_eq!(p.need_restart, ["listen"]);
    }
}
