//! Leaving: the orderly shutdown on a stop signal, and the exit fence that covers every other
//! way out (a start-up error, a supervised task that died, a panic).
//!
//! Patroni's shutdown stops PostgreSQL (fast), gives up the leader key and leaves; in
//! maintenance mode it leaves PostgreSQL running. ha-agent does the same, and adds the
//! guarantee that no exit leaves a PostgreSQL that may accept writes running without an
//! agent: an agent that is gone cannot renew its lease, a replica promotes once the lease
//! expires, and an old primary still running then is a second writable primary. Only SIGKILL
//! and SIGSTOP cannot be caught; the watchdog covers those.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::Agent;
use crate::metrics::Metrics;
use crate::pg::StopMode;

#[derive(Default)]
struct State {
    /// Past the start-up checks that may find the PostgreSQL is not ours to manage (another
    /// agent with our name runs): from here on it is fenced on exit.
    armed: bool,
    /// The orderly shutdown finished: PostgreSQL is stopped, or deliberately left running.
    done: bool,
    metrics: Option<Arc<Metrics>>,
    /// To disable the watchdog once PostgreSQL is stopped (or deliberately left running): an
    /// exit that closed it without the magic byte would have the machine reset.
    lease: Option<crate::lease::LeaseHandle>,
}

/// Stops a PostgreSQL that may accept writes when the agent exits any other way than through
/// its orderly shutdown (also during a panic's unwinding: it acts on drop).
pub struct ExitFence {
    data_dir: PathBuf,
    state: Mutex<State>,
    /// The cluster is in maintenance mode (set by the loop each cycle).
    paused: Arc<AtomicBool>,
}

impl ExitFence {
    pub fn new(data_dir: PathBuf) -> Self {
        Self { data_dir, state: Mutex::new(State::default()), paused: Arc::new(AtomicBool::new(false)) }
    }

    /// The flag the loop keeps up to date with `pause` in `config`.
    pub fn pause_flag(&self) -> Arc<AtomicBool> {
        self.paused.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn arm(&self, metrics: Arc<Metrics>) {
        let mut s = self.lock();
        s.armed = true;
        s.metrics = Some(metrics);
    }

    pub fn set_lease(&self, lease: crate::lease::LeaseHandle) {
        self.lock().lease = Some(lease);
    }

    pub fn done(&self) {
        self.lock().done = true;
    }

    /// Called on the way out (and on drop): fences unless the orderly shutdown was done.
    pub fn on_exit(&self) {
        let (metrics, paused, lease) = {
            let mut s = self.lock();
            if !s.armed || s.done {
                return;
            }
            s.done = true;
            (s.metrics.clone(), self.paused.load(Ordering::SeqCst), s.lease.clone())
        };
        // The watchdog is disabled unless a PostgreSQL that may take writes is still running:
        // then the machine is to be reset.
        let safe = match crate::pg::postmaster_pid(&self.data_dir) {
            None => true,
            Some(pid) if crate::pg::is_standby_dir(&self.data_dir) => {
                tracing::info!(pid, "exiting; PostgreSQL runs as a standby and is left running");
                true
            }
            // Also in maintenance mode: only the orderly shutdown leaves a paused primary running
            // (the operator's choice, as in Patroni). An agent that ends on an error leaves a
            // primary nobody fences; once the pause ends a replica takes over, and the simulation
            // found the old one still taking writes when its host had been frozen meanwhile.
            Some(pid) => {
                tracing::warn!(
                    pid,
                    paused,
                    "exiting on an error while PostgreSQL may accept writes: stopping it (immediate)"
                );
                if let Some(m) = &metrics {
                    m.exits_as_primary.with_label_values(&["stopped"]).inc();
                }
                stop_now(&self.data_dir, pid)
            }
        };
        if safe && let Some(l) = &lease {
            l.release_watchdog();
        }
    }
}

impl Drop for ExitFence {
    fn drop(&mut self) {
        self.on_exit();
    }
}

/// SIGQUIT to the postmaster, SIGKILL after 5 s, then SIGKILL to whatever still works in the
/// data directory (backends of a postmaster that died). Blocking: it runs on the way out.
/// Returns whether it is gone (if not, the watchdog stays armed and resets the machine).
fn stop_now(data_dir: &std::path::Path, pid: i32) -> bool {
    let _ = kill(Pid::from_raw(pid), Signal::SIGQUIT);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while crate::pg::postmaster_pid(data_dir) == Some(pid) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    crate::pg::kill_now(data_dir);
    std::thread::sleep(Duration::from_millis(50));
    crate::pg::postmaster_pid(data_dir).is_none() && crate::pg::leftover_pids(data_dir).is_empty()
}

impl Agent {
    /// Like Patroni: stop PostgreSQL (fast, so a primary's replicas get everything; immediate
    /// if that takes too long), give up the leader key, and revoke the lease (our member key
    /// goes with it). Paused: PostgreSQL is left running and the key in place.
    pub(super) async fn shutdown(&mut self, fence: &ExitFence) {
        if self.dyn_config.pause {
            tracing::warn!("paused: leaving PostgreSQL running and the leader key in place, as Patroni does");
            if crate::pg::postmaster_pid(&self.cfg.postgresql.data_dir).is_some()
                && !crate::pg::is_standby_dir(&self.cfg.postgresql.data_dir)
            {
                self.metrics.exits_as_primary.with_label_values(&["paused"]).inc();
            }
            self.lease.disarm(false);
            self.lease.release_watchdog();
            fence.done();
            return;
        }
        tracing::info!("stopping PostgreSQL and leaving the cluster");
        if let Err(e) = self.pg.stop(StopMode::Fast).await {
            // The key stays until the lease expires: nobody may promote while this server
            // may still run. The exit fence kills it on the way out.
            tracing::error!(error = format!("{e:#}"), "stop PostgreSQL");
            return;
        }
        self.lease.disarm(true);
        fence.done();
        let _ = self.dcs.release().await;
        if let Some(lease) = self.lease.view().id {
            let _ = self.dcs.revoke(lease).await;
        }
    }
}
