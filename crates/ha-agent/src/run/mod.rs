//! The HA loop: read etcd, observe PostgreSQL, decide (`core::decide`), act, publish, wait for
//! the next event (an etcd change, the `loop_wait` timer, the lease keeper, a postmaster exit,
//! a REST action, a reload request, or a stop signal).
//!
//! Next to it run three supervised tasks: the lease keeper (`crate::lease`, renews, fences and
//! feeds the watchdog on its own), the etcd watch ([`watch`], wakes the loop on cluster
//! changes) and the REST API (`crate::http`, on its own thread). If any of them ends, the
//! agent ends with an error, and [`exit::ExitFence`] makes sure no primary is left running
//! unfenced on the way out (as on every other exit).
//!
//! The loop's sections, one file each: [`cycle`] (read, observe, decide), [`act`] (carry a
//! decision out), [`publish`] (member key, status, REST snapshot), [`commands`] (REST
//! actions), [`reload`] (SIGHUP), [`exit`] (shutdown and the exit fence), [`start`] (start-up
//! checks and wiring), [`sync`] (synchronous replication).

mod act;
mod commands;
mod cycle;
mod exit;
mod failsafe;
mod publish;
mod raft;
mod reload;
mod slots;
mod standby;
mod start;
mod sync;
mod watch;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

use outrigger_daemon::shutdown::Control;
use outrigger_schema::{HistoryEntry, StatusValue};
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::clock::Clock;
use crate::config::Config;
use crate::control::Command;
use crate::core::{ClusterView, DynConfig, Memory, Moment, Settings};
use crate::dcs::Dcs;
use crate::http::ApiState;
use crate::lease::LeaseHandle;
use crate::metrics::Metrics;
use crate::pg::Postgres;

pub use exit::ExitFence;

/// The `reason` of the history row a leader writes before it promotes (see
/// `ClusterView::cluster_timeline_for`); replaced by the exact row right after.
const PROMOTING: &str = "ha-agent: promoting";

fn wall_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// One etcd read, decoded.
#[derive(Clone)]
struct Read {
    view: ClusterView,
    history: Vec<HistoryEntry>,
    /// `history`'s mod_revision (0: absent), for compare-and-swap writes.
    history_rev: i64,
}

/// What the loop is doing, for the systemd watchdog and for operators: a loop inside a long
/// action (a base backup, pg_rewind, crash recovery) is alive as long as that action runs.
#[derive(Debug, Default)]
pub struct Progress {
    inner: std::sync::Mutex<ProgressInner>,
}

#[derive(Debug, Default, Clone, Copy)]
struct ProgressInner {
    /// When the last cycle ended.
    cycle_done: Option<Moment>,
    /// An action that runs: since when, and how long it may take (its own time limits).
    busy: Option<(&'static str, Moment, std::time::Duration)>,
}

/// How long an action may run before the loop counts as stuck: the tools it runs (base
/// backup, pg_rewind, crash recovery, initdb) are limited to an hour each; everything else is
/// a few bounded requests and signals.
fn action_bound(d: &crate::core::Decision) -> std::time::Duration {
    use crate::core::Decision;
    match d {
        Decision::Clone { .. } | Decision::Rewind { .. } | Decision::Reinit { .. } | Decision::RaceInitialize => {
            std::time::Duration::from_secs(2 * 3600)
        }
        _ => std::time::Duration::from_secs(300),
    }
}

impl Progress {
    fn lock(&self) -> std::sync::MutexGuard<'_, ProgressInner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn cycle_done(&self, at: Moment) {
        self.lock().cycle_done = Some(at);
    }

    fn busy(&self, what: Option<(&'static str, std::time::Duration)>, at: Moment) {
        self.lock().busy = what.map(|(w, bound)| (w, at, bound));
    }

    /// Alive: a cycle ended within `within`, or an action runs within its own bound (a long
    /// pg_basebackup, pg_rewind or crash recovery does not make the agent look stuck).
    pub fn alive(&self, now: Moment, within: std::time::Duration) -> bool {
        let p = *self.lock();
        p.busy.is_some_and(|(_, since, bound)| now.since(since) <= bound)
            || p.cycle_done.is_some_and(|at| now.since(at) <= within)
    }
}

pub struct Agent {
    cfg: Config,
    config_path: Option<PathBuf>,
    settings: Settings,
    dcs: Dcs,
    pg: Postgres,
    pg_exits: mpsc::UnboundedReceiver<String>,
    clock: Clock,
    lease: LeaseHandle,
    metrics: Arc<Metrics>,
    api: Arc<ApiState>,
    memory: Memory,
    dyn_config: DynConfig,
    last_logged: Option<String>,
    /// Lease and JSON of the member key as last written.
    last_member: Option<(i64, String)>,
    last_member_at: Option<Moment>,
    last_status: Option<StatusValue>,
    last_status_at: Option<Moment>,
    reported: HashSet<(String, i64)>,
    pending_restart: bool,
    dcs_last_seen: Option<u64>,
    /// Shown as `state` while a long action runs.
    busy_state: Option<&'static str>,
    progress: Arc<Progress>,
    /// Actions from the REST API.
    commands: mpsc::Receiver<Command>,
    /// Unix ms at the start of the current cycle.
    cycle_started_ms: u64,
    /// A restart scheduled through the REST API (`POST /restart` with `schedule`).
    scheduled_restart: Option<commands::ScheduledRestart>,
    /// `POST /reload`: reload PostgreSQL in the next cycle even if nothing changed.
    force_reload: bool,
    /// Unix ms of a scheduled switchover in the `failover` key, to wake up on time.
    switchover_at_ms: Option<u64>,
    /// Whether the leader key named us at the last read (to notice it vanishing).
    held_key: bool,
    /// Shared with the exit fence: the cluster is paused.
    paused: Arc<std::sync::atomic::AtomicBool>,
    /// Keeping etcd's raft leader off our host while we lead (`raft.rs`).
    raft: raft::Affinity,
    /// `synchronous_standby_names` this agent manages on its primary (`None`: synchronous
    /// mode is off, or not yet known after a restart).
    sync_ssn: Option<crate::core::sync::Ssn>,
    /// When each synchronous standby started to confirm every commit (`core::sync`).
    sync_memory: crate::core::sync::SyncMemory,
    /// failsafe_mode: what the failsafe task (`failsafe.rs`) needs from each cycle.
    failsafe_inputs: tokio::sync::watch::Sender<failsafe::Inputs>,
    /// failsafe_mode: `/failsafe` listed this member at the last read.
    failsafe_member: bool,
    /// failsafe_mode: the accepted `POST /failsafe` (its time) the memory last took in.
    failsafe_judged: Option<std::time::Instant>,
    /// Why the cluster's timings were last refused (logged once per reason).
    timings_refused: Option<String>,
    /// The permanent slots kept at the last pass (`slots.rs`): one no longer named is dropped.
    permanent_before: Vec<String>,
    /// On the leader: the permanent slots' `restart_lsn`, for the `status` key.
    permanent_positions: Vec<(String, u64)>,
    /// Permanent slots of the config key not kept, with why (logged when it changes).
    slots_skipped: Vec<String>,
    /// Permanent logical slots: the advance in flight, copies not yet ready (`slots.rs`).
    logical: slots::LogicalSlots,
    /// On a replica: the member slot names it keeps and the other members', as of its last
    /// pass that found nothing to do. Slots are listed again only when they change, not on
    /// every cycle (`act.rs`, `keep_cascade_slots`).
    member_slots_clean: Option<(Vec<String>, Vec<String>)>,
}

impl Agent {
    /// How long a lease we cannot see any more may still cover a primary (`timing::cover`).
    fn cover(&self) -> std::time::Duration {
        crate::core::timing::cover(self.settings.timings.ttl, self.memory.recent().leader_lease_ttl)
    }

    fn wal_log_hints(&self) -> bool {
        self.settings.use_pg_rewind.or(self.dyn_config.use_pg_rewind).unwrap_or(false)
    }

    /// The state published while a long action runs (`None`: done).
    fn set_busy(&mut self, state: Option<&'static str>) {
        self.busy_state = state;
        let bound = std::time::Duration::from_secs(2 * 3600);
        self.progress.busy(state.map(|s| (s, bound)), self.clock.now());
    }
}

/// Runs the agent until `ctl.stop` is cancelled (SIGTERM/SIGINT/SIGQUIT), reloading its config
/// on SIGHUP. Whatever way it ends, a PostgreSQL that may accept writes is not left running
/// unfenced (see [`ExitFence`]).
pub async fn run(cfg: Config, config_path: Option<PathBuf>, ctl: Control) -> anyhow::Result<()> {
    let span = tracing::info_span!("ha", cluster = %cfg.layout.scope(), member = %cfg.name);
    let fence = ExitFence::new(cfg.postgresql.data_dir.clone());
    let result = start::run(cfg, config_path, ctl, &fence).instrument(span).await;
    // The error itself is logged once, by the caller that turns it into the exit code.
    fence.on_exit();
    result
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::Progress;
    use crate::core::Moment;

    fn at(ms: u64) -> Moment {
        Moment::from_millis(ms)
    }

    #[test]
    fn a_long_action_within_its_bound_keeps_the_loop_alive_for_the_systemd_watchdog() {
        let p = Progress::default();
        let within = Duration::from_secs(4);
        assert!(!p.alive(at(0), within), "no cycle yet");
        p.cycle_done(at(1_000));
        assert!(p.alive(at(5_000), within));
        assert!(!p.alive(at(5_001), within), "a loop that stopped finishing cycles is not alive");
        // A base backup of an hour: alive as long as it runs within its bound.
        p.busy(Some(("creating replica", Duration::from_secs(7200))), at(2_000));
        assert!(p.alive(at(3_600_000), within));
        assert!(!p.alive(at(2_000 + 7_200_001), within), "an action past its own limit is stuck");
        p.busy(None, at(3_600_000));
        assert!(!p.alive(at(3_600_000), within));
    }
}
