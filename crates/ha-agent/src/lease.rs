//! The lease keeper's shell: drives [`crate::core::keeper::Keeper`] with the real clock
//! (`CLOCK_BOOTTIME`, see [`crate::clock`]), etcd (every member at once, see
//! [`crate::hedge`]), the postmaster (the fence is one SIGQUIT) and the watchdog device.
//!
//! It runs as its own task so that slow work in the HA loop (a checkpoint, a base backup, an
//! etcd read that times out) never delays a renewal, a fence or a watchdog feed. The HA loop
//! *arms* it whenever PostgreSQL is, or is about to become, a primary, and disarms it once
//! PostgreSQL is known not to accept writes. The arithmetic is in `core::keeper` and
//! `core::watchdog`.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use outrigger_etcd::{EtcdError, LeaseRenewer};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::config::Timings;
use crate::core::keeper::{Answer, Ask, Effect, Keeper, WatchdogState};
use crate::core::watchdog::{Mode, Settings as WatchdogSettings};
use crate::core::{LeaseView, Moment};
use crate::metrics::Metrics;
use crate::sys::Device;
use outrigger_etcd::PerEndpoint;

struct Shared {
    core: Keeper,
    device: Option<Device>,
    watchdog: WatchdogSettings,
    /// The keeper task's last iteration (liveness for the systemd watchdog).
    alive_at: Moment,
    /// A renewal was late or failed: logged once per episode.
    failing_logged: bool,
    /// A fence with nothing to kill was logged (once per disarm).
    fence_reported: bool,
}

struct Inner {
    shared: Mutex<Shared>,
    keeper_wake: Notify,
    loop_wake: Arc<Notify>,
    clock: Clock,
    data_dir: PathBuf,
    metrics: Arc<Metrics>,
}

/// The handle the HA loop (and the REST snapshot) use.
#[derive(Clone)]
pub struct LeaseHandle(Arc<Inner>);

impl LeaseHandle {
    pub fn new(
        timings: Timings,
        watchdog: WatchdogSettings,
        clock: Clock,
        data_dir: PathBuf,
        metrics: Arc<Metrics>,
    ) -> Self {
        let core = Keeper::new(timings, watchdog.mode, watchdog.timeout);
        Self(Arc::new(Inner {
            shared: Mutex::new(Shared {
                core,
                device: None,
                watchdog,
                alive_at: clock.now(),
                failing_logged: false,
                fence_reported: false,
            }),
            keeper_wake: Notify::new(),
            loop_wake: Arc::new(Notify::new()),
            clock,
            data_dir,
            metrics,
        }))
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        // The state is plain data; a panic elsewhere cannot leave it half-written.
        self.0.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Wakes the HA loop when the keeper fenced, or the lease was granted or lost.
    pub fn loop_wake(&self) -> Arc<Notify> {
        self.0.loop_wake.clone()
    }

    pub fn view(&self) -> LeaseView {
        self.lock().core.view()
    }

    pub fn arm(&self) {
        let now = self.0.clock.now();
        self.lock().core.arm(now);
        self.0.keeper_wake.notify_one();
    }

    /// The leader key is on lease `id` under our name (`Keeper::key_on`).
    pub fn key_on(&self, id: i64) {
        self.lock().core.key_on(id);
        self.0.keeper_wake.notify_one();
    }

    /// Disarms the fence; `pg_down`: PostgreSQL is known not to accept writes, so the
    /// watchdog may be closed too.
    pub fn disarm(&self, pg_down: bool) {
        let mut st = self.lock();
        let e = st.core.disarm(pg_down);
        st.fence_reported = false;
        self.execute(&mut st, e);
    }

    /// Disables the watchdog (the agent leaves a paused cluster's PostgreSQL running).
    pub fn release_watchdog(&self) {
        let mut st = self.lock();
        let e = st.core.release_watchdog();
        self.execute(&mut st, e);
    }

    /// Armed: PostgreSQL is, or is about to become, a primary.
    pub fn armed(&self) -> bool {
        self.lock().core.armed()
    }

    /// Whether an armed primary needs failsafe_mode's proof (`Keeper::lease_unproven`).
    pub fn lease_unproven(&self) -> bool {
        let now = self.0.clock.now();
        self.lock().core.lease_unproven(now)
    }

    /// failsafe_mode: every listed member accepted the round sent at `sent`.
    pub fn failsafe_confirmed(&self, sent: Moment) {
        self.lock().core.failsafe_confirmed(sent);
        self.0.keeper_wake.notify_one();
    }

    /// failsafe_mode: a round was refused or unanswered by some member.
    pub fn failsafe_lost(&self) {
        self.lock().core.failsafe_lost();
        self.0.keeper_wake.notify_one();
    }

    /// Check the lease now (the loop saw our leader or member key vanish).
    pub fn renew_soon(&self) {
        let now = self.0.clock.now();
        self.lock().core.renew_soon(now);
        self.0.keeper_wake.notify_one();
    }

    pub fn take_fenced(&self) -> bool {
        self.lock().core.take_fenced()
    }

    /// `watchdog_failed` as Patroni means it: mode required, and the device is not usable
    /// (missing or not writable) or could not be activated.
    pub fn watchdog_failed(&self) -> bool {
        let st = self.lock();
        st.watchdog.mode == Mode::Required
            && (st.core.watchdog_failed() || (st.device.is_none() && !crate::sys::usable(&st.watchdog)))
    }

    pub fn watchdog_state(&self) -> WatchdogState {
        self.lock().core.watchdog()
    }

    /// Waits (up to `limit`) for the watchdog wanted by [`LeaseHandle::arm`] to be open.
    /// Returns false when it is required and not open: the caller must not promote.
    pub async fn wait_watchdog(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let (state, mode) = {
                let st = self.lock();
                (st.core.watchdog(), st.watchdog.mode)
            };
            match state {
                WatchdogState::Open { .. } => return true,
                WatchdogState::Wanted if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                _ => return mode != Mode::Required,
            }
        }
    }

    /// New timings or watchdog settings (a config reload).
    pub fn reconfigure(&self, timings: Timings, watchdog: WatchdogSettings) {
        let now = self.0.clock.now();
        let mut st = self.lock();
        let e = st.core.set_timings(timings, watchdog.mode, watchdog.timeout, now);
        st.watchdog = watchdog;
        self.execute(&mut st, e);
        drop(st);
        self.0.keeper_wake.notify_one();
    }

    /// Whether the keeper task ran within `within` (the systemd watchdog's liveness).
    pub fn keeper_alive(&self, within: Duration) -> bool {
        let at = self.lock().alive_at;
        self.0.clock.now().since(at) <= within
    }

    /// Carries out the effects that need no request (those the keeper task sends itself).
    fn execute(&self, st: &mut Shared, effects: Vec<Effect>) {
        let mut queue = std::collections::VecDeque::from(effects);
        while let Some(e) = queue.pop_front() {
            match e {
                // Sends are collected by the keeper task before it calls this.
                Effect::Send(_) => {}
                Effect::Fence => self.fence(st),
                Effect::LeaseChanged => self.0.loop_wake.notify_one(),
                Effect::OpenWatchdog { timeout } => {
                    let now = self.0.clock.now();
                    let actual = match Device::open(&st.watchdog, timeout) {
                        Ok(d) => {
                            let t = d.timeout();
                            st.device = Some(d);
                            Some(t)
                        }
                        Err(why) => {
                            tracing::warn!(device = %st.watchdog.device.display(), error = why, mode = ?st.watchdog.mode, "watchdog unavailable");
                            self.0.metrics.watchdog.with_label_values(&["failed"]).inc();
                            None
                        }
                    };
                    let more = st.core.watchdog_opened(now, actual);
                    if let WatchdogState::Open { timeout, .. } = st.core.watchdog() {
                        tracing::info!(device = %st.watchdog.device.display(), timeout = ?timeout, "watchdog activated");
                        self.0.metrics.watchdog.with_label_values(&["opened"]).inc();
                    } else if actual.is_some() {
                        tracing::warn!(timeout = ?actual, "the watchdog's timeout cannot be fed safely within the lease; not using it");
                    }
                    queue.extend(more);
                }
                Effect::FeedWatchdog => {
                    if let Some(d) = st.device.as_mut() {
                        if let Err(e) = d.feed() {
                            tracing::error!(error = %e, "watchdog keepalive failed");
                            self.0.metrics.watchdog.with_label_values(&["failed"]).inc();
                            st.core.watchdog_lost();
                        } else {
                            self.0.metrics.watchdog.with_label_values(&["fed"]).inc();
                        }
                    }
                }
                Effect::CloseWatchdog => {
                    if let Some(d) = st.device.take() {
                        match d.close() {
                            Ok(()) => tracing::info!("watchdog disabled"),
                            Err(e) => tracing::warn!(error = %e, "watchdog magic close"),
                        }
                        self.0.metrics.watchdog.with_label_values(&["closed"]).inc();
                    }
                }
            }
        }
    }

    /// The fence: SIGKILL to the postmaster's process group and to every process still
    /// working in the data directory, at once. Not SIGQUIT: a postmaster that is stopped or
    /// hung would not act on it while its backends go on serving their sessions, and killing
    /// backends alone makes a live postmaster restart them (`restart_after_crash`). This is a
    /// power cut for PostgreSQL, which it is built to recover from; it happens only when the
    /// lease is about to expire. The keeper stays armed and fences again on every step until
    /// the loop sees PostgreSQL stopped, so a postmaster started meanwhile goes the same way.
    fn fence(&self, st: &mut Shared) {
        // A standby cannot take writes (the loop starts a fenced primary again as one).
        if crate::pg::is_standby_dir(&self.0.data_dir) {
            return;
        }
        let (pid, processes) = crate::pg::kill_now(&self.0.data_dir);
        if pid.is_none() && processes == 0 {
            if !std::mem::replace(&mut st.fence_reported, true) {
                tracing::info!("lease not trusted; PostgreSQL is not running");
            }
            return;
        }
        tracing::warn!(
            postmaster = pid,
            processes,
            "fencing: the leader lease could not be renewed in time; PostgreSQL killed"
        );
        st.fence_reported = true;
        self.0.metrics.fences.with_label_values(&["lease_not_renewed"]).inc();
        self.0.loop_wake.notify_one();
    }
}

type Request = Pin<Box<dyn Future<Output = (Answer, Option<(i64, Vec<Option<LeaseRenewer>>)>)> + Send>>;

/// The keeper task: runs until `shutdown`.
pub async fn run_keeper(handle: LeaseHandle, etcd: PerEndpoint, shutdown: CancellationToken) {
    let clock = handle.0.clock;
    let mut renewers: Option<(i64, Vec<Option<LeaseRenewer>>)> = None;
    let mut request: Option<Request> = None;
    loop {
        let now = clock.now();
        let (sends, wake) = {
            let mut st = handle.lock();
            st.alive_at = now;
            let effects = st.core.step(now);
            let sends: Vec<Ask> =
                effects.iter().filter_map(|e| if let Effect::Send(a) = e { Some(*a) } else { None }).collect();
            handle.execute(&mut st, effects);
            (sends, st.core.wake_at())
        };
        for ask in sends {
            request = Some(send(&etcd, ask, &mut renewers));
        }
        // Wake at least every second: the systemd watchdog reads `alive_at`.
        let wake = wake.map_or(now.plus(Duration::from_secs(1)), |w| w.min(now.plus(Duration::from_secs(1))));
        let woke = tokio::select! {
            () = shutdown.cancelled() => return,
            out = answer_of(&mut request) => Some(out),
            () = clock.sleep_until(wake) => None,
            () = handle.0.keeper_wake.notified() => None,
        };
        if let Some((answer, rs)) = woke {
            request = None;
            if let Some(rs) = rs {
                renewers = Some(rs);
            }
            let now = clock.now();
            let mut st = handle.lock();
            record(&handle, &mut st, answer);
            let e = st.core.answered(now, answer);
            handle.execute(&mut st, e);
        }
    }
}

/// The answer to the request in flight (never, if none is).
async fn answer_of(request: &mut Option<Request>) -> (Answer, Option<(i64, Vec<Option<LeaseRenewer>>)>) {
    match request {
        Some(r) => r.await,
        None => std::future::pending().await,
    }
}

/// Starts a request; renew uses (and hands back) the per-member keep-alive streams.
fn send(etcd: &PerEndpoint, ask: Ask, renewers: &mut Option<(i64, Vec<Option<LeaseRenewer>>)>) -> Request {
    let etcd = etcd.clone();
    match ask {
        Ask::Grant { ttl, attempt } => Box::pin(async move {
            match etcd.grant(ttl, attempt).await {
                Ok((lease, ttl)) => {
                    let rs = etcd.renewers(lease);
                    (Answer::Granted { lease, ttl }, Some((lease, rs)))
                }
                Err(e) => {
                    tracing::debug!(error = %e, "lease grant failed");
                    (Answer::Failed, None)
                }
            }
        }),
        Ask::Renew { lease } => {
            let mut rs = match renewers.take() {
                Some((id, rs)) if id == lease => rs,
                _ => etcd.renewers(lease),
            };
            Box::pin(async move {
                let answer = match etcd.renew(rs.as_mut_slice(), lease).await {
                    Ok(ttl) => Answer::Renewed { ttl },
                    Err(EtcdError::LeaseLost { detail, .. }) => {
                        tracing::warn!(lease = format!("{lease:x}"), detail, "lease lost; granting a new one");
                        Answer::Lost
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "lease renewal failed");
                        Answer::Failed
                    }
                };
                let keep = (answer != Answer::Lost).then_some((lease, rs));
                (answer, keep)
            })
        }
    }
}

/// Metrics and the once-per-episode log lines for an answer.
fn record(handle: &LeaseHandle, st: &mut Shared, answer: Answer) {
    let m = &handle.0.metrics.lease_renewals;
    match answer {
        Answer::Granted { lease, ttl } => {
            m.with_label_values(&["granted"]).inc();
            tracing::info!(lease = format!("{lease:x}"), ttl = ?ttl, "lease granted");
            st.failing_logged = false;
        }
        Answer::Renewed { .. } => {
            m.with_label_values(&["ok"]).inc();
            if std::mem::take(&mut st.failing_logged) {
                tracing::info!("lease renewed again");
            }
        }
        Answer::Lost => m.with_label_values(&["lost"]).inc(),
        Answer::Failed => {
            m.with_label_values(&["failed"]).inc();
            if !std::mem::replace(&mut st.failing_logged, true) {
                tracing::warn!("lease grant or renewal failed; retrying every 200ms");
            }
        }
    }
}
