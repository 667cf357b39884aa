use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::wait_until;

/// A process the test started. Dropping it stops it: `stop_signal` first (so PostgreSQL and
/// etcd shut down cleanly and release their ports), then SIGKILL after a grace period.
#[derive(Debug)]
pub struct Proc {
    label: String,
    child: Option<Child>,
    log: PathBuf,
    stop_signal: Signal,
}

impl Proc {
    pub(crate) fn new(label: &str, child: Child, log: PathBuf, stop_signal: Signal) -> Self {
        Self { label: label.to_owned(), child: Some(child), log, stop_signal }
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The log so far (stdout and stderr).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Lines the daemon logged at ERROR level (text or JSON logs) that match none of
    /// `expected`. A test ends with `assert!(p.unexpected_errors(&[..]).is_empty())`: an ERROR
    /// means a human must act, so one the test did not provoke is a failure.
    pub fn unexpected_errors(&self, expected: &[&str]) -> Vec<String> {
        self.log_text()
            .lines()
            .filter(|l| l.contains(" ERROR ") || l.contains("\"level\":\"ERROR\""))
            .filter(|l| !expected.iter().any(|e| l.contains(e)))
            .map(str::to_owned)
            .collect()
    }

    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// Whether the process is still running (a frozen process is running).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            None => false,
            Some(c) => matches!(c.try_wait(), Ok(None)),
        }
    }

    /// The exit status, if it has exited.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn signal(&self, sig: Signal) -> anyhow::Result<()> {
        if let Some(pid) = self.pid() {
            kill(Pid::from_raw(pid), sig)?;
        }
        Ok(())
    }

    /// SIGSTOP: the process stops answering but keeps its sockets open, like a hung process.
    pub fn freeze(&self) -> anyhow::Result<()> {
        self.signal(Signal::SIGSTOP)
    }

    pub fn thaw(&self) -> anyhow::Result<()> {
        self.signal(Signal::SIGCONT)
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            c.wait()?;
        }
        Ok(())
    }

    /// `stop_signal`, wait up to `grace`, then SIGKILL. Returns the exit status.
    pub fn stop(&mut self, grace: Duration) -> anyhow::Result<Option<ExitStatus>> {
        let Some(mut c) = self.child.take() else { return Ok(None) };
        let pid = Pid::from_raw(c.id() as i32);
        let _ = kill(pid, Signal::SIGCONT);
        let _ = kill(pid, self.stop_signal);
        let exited = wait_until(grace, &format!("{} to exit", self.label), || c.try_wait().ok().flatten());
        match exited {
            Ok(status) => Ok(Some(status)),
            Err(_) => {
                let _ = c.kill();
                Ok(Some(c.wait()?))
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.stop(Duration::from_secs(5));
    }
}
