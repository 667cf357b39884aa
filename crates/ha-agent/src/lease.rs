//! The lease keeper: holds this member's etcd lease, renews it on its own schedule, and fences
//! PostgreSQL when the lease is no longer trusted.
//!
//! It runs as its own task so that slow work in the HA loop (a checkpoint, a base backup, an
//! etcd read that times out) never delays a renewal or a fence. The HA loop *arms* it whenever
//! PostgreSQL is, or is about to become, a primary; armed, it sends SIGQUIT (immediate
//! shutdown) to the postmaster at `LeaseView::fence_at`, which is `retry_timeout` before the
//! earliest moment etcd can expire the lease.
//!
//! Arithmetic: a renewal sent at `s` and answered makes the lease live at etcd until at least
//! `s + ttl` (etcd received it after `s`; an etcd leader change only extends leases). Renewals
//! go out every `Timings::renew_interval` (at most `loop_wait`), each bounded by
//! `etcd.request_timeout <= retry_timeout`; failed ones are retried every 200 ms. With
//! `loop_wait + 2 * retry_timeout <= ttl`, a lease that was renewed on schedule is never
//! fenced, and a primary that cannot renew stops at `s + ttl - retry_timeout` at the latest.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use nix::sys::signal::Signal;
use outrigger_etcd::{EtcdError, LeaseRenewer};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::Timings;
use crate::core::{LeaseView, Moment};
use crate::hedge::PerEndpoint;
use crate::metrics::Metrics;

/// The agent's monotonic clock, as [`Moment`]s from the agent's start.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    origin: Instant,
}

impl Clock {
    pub fn new() -> Self {
        Self { origin: Instant::now() }
    }

    pub fn now(&self) -> Moment {
        Moment::from_millis(u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX))
    }

    pub fn instant(&self, m: Moment) -> Instant {
        self.origin + Duration::from_millis(m.as_millis())
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// What the lease keeper and the HA loop share.
#[derive(Debug, Default)]
pub struct LeaseState {
    pub view: LeaseView,
    /// PostgreSQL is, or may be about to become, a primary: fence it when the lease goes.
    pub armed: bool,
    /// Set by the keeper when it fenced; taken by the HA loop.
    pub fenced: bool,
}

/// The handle the HA loop uses.
#[derive(Debug, Clone, Default)]
pub struct LeaseHandle {
    state: Arc<Mutex<LeaseState>>,
    /// Wakes the keeper (armed changed).
    keeper: Arc<Notify>,
    /// Wakes the HA loop (fenced, or lease lost).
    pub loop_wake: Arc<Notify>,
}

impl LeaseHandle {
    fn lock(&self) -> MutexGuard<'_, LeaseState> {
        // The state is plain data; a panic elsewhere cannot leave it half-written.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn view(&self) -> LeaseView {
        self.lock().view
    }

    pub fn arm(&self) {
        let was = std::mem::replace(&mut self.lock().armed, true);
        if !was {
            self.keeper.notify_one();
        }
    }

    pub fn disarm(&self) {
        self.lock().armed = false;
    }

    pub fn take_fenced(&self) -> bool {
        std::mem::take(&mut self.lock().fenced)
    }
}

pub struct LeaseKeeper {
    pub etcd: PerEndpoint,
    pub timings: Timings,
    pub clock: Clock,
    pub data_dir: PathBuf,
    pub handle: LeaseHandle,
    pub metrics: Arc<Metrics>,
}

enum Step {
    Granted(i64, Duration),
    Renewed(Duration),
    Failed(EtcdError),
}

impl LeaseKeeper {
    /// Fences if armed and the lease is not trusted at `now`.
    fn fence_if_due(&self, now: Moment) {
        let mut st = self.handle.lock();
        if !st.armed || st.view.trusted(now, &self.timings) {
            return;
        }
        st.armed = false;
        st.fenced = true;
        drop(st);
        match crate::pg::signal_postmaster(&self.data_dir, Signal::SIGQUIT) {
            Some(pid) => {
                tracing::warn!(
                    pid,
                    "fencing: the leader lease could not be renewed in time; PostgreSQL stopped (immediate)"
                );
                self.metrics.fences.with_label_values(&["lease_not_renewed"]).inc();
            }
            None => tracing::info!("lease not renewed in time; PostgreSQL was not running"),
        }
        self.handle.loop_wake.notify_one();
    }

    pub async fn run(self, shutdown: CancellationToken) {
        let mut renewers: Option<(i64, Vec<LeaseRenewer>)> = None;
        let mut grants = 0usize;
        let mut next_renew = self.clock.now();
        let retry = Duration::from_millis(200);
        let mut failing = false;
        loop {
            let now = self.clock.now();
            self.fence_if_due(now);
            let (view, armed) = {
                let st = self.handle.lock();
                (st.view, st.armed)
            };
            let fence_at = self.clock.instant(view.fence_at(&self.timings));
            if now < next_renew {
                let wake = self.clock.instant(next_renew);
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep_until(wake) => {}
                    () = tokio::time::sleep_until(fence_at), if armed => {}
                    () = self.handle.keeper.notified() => {}
                }
                continue;
            }
            // Due: grant or renew, but never past the fence point.
            let sent = now;
            let etcd = &self.etcd;
            let ttl_wanted = self.timings.ttl;
            let attempt = grants;
            let work = async {
                match &mut renewers {
                    None => match etcd.grant(ttl_wanted, attempt).await {
                        Ok((id, ttl)) => Step::Granted(id, ttl),
                        Err(e) => Step::Failed(e),
                    },
                    Some((id, rs)) => match etcd.renew(rs.as_mut_slice(), *id).await {
                        Ok(ttl) => Step::Renewed(ttl),
                        Err(e) => Step::Failed(e),
                    },
                }
            };
            let step = tokio::select! {
                () = shutdown.cancelled() => return,
                s = work => s,
                () = tokio::time::sleep_until(fence_at), if armed && view.id.is_some() => {
                    // Abandoned mid-flight: fresh streams next time (see `PerEndpoint::renew`).
                    if let Some((id, rs)) = &mut renewers {
                        *rs = self.etcd.renewers(*id);
                    }
                    continue;
                }
            };
            match step {
                Step::Granted(id, ttl) => {
                    failing = false;
                    renewers = Some((id, self.etcd.renewers(id)));
                    self.handle.lock().view = LeaseView { id: Some(id), expires_at: sent.plus(ttl) };
                    self.metrics.lease_renewals.with_label_values(&["granted"]).inc();
                    tracing::info!(lease = format!("{id:x}"), ttl = ?ttl, "lease granted");
                    next_renew = sent.plus(self.timings.renew_interval());
                    self.handle.loop_wake.notify_one();
                }
                Step::Renewed(ttl) => {
                    if std::mem::take(&mut failing) {
                        tracing::info!("lease renewed again");
                    }
                    self.handle.lock().view.expires_at = sent.plus(ttl);
                    self.metrics.lease_renewals.with_label_values(&["ok"]).inc();
                    next_renew = sent.plus(self.timings.renew_interval());
                }
                Step::Failed(EtcdError::LeaseLost { lease, detail }) => {
                    tracing::warn!(lease = format!("{lease:x}"), detail, "lease lost; granting a new one");
                    self.metrics.lease_renewals.with_label_values(&["lost"]).inc();
                    renewers = None;
                    self.handle.lock().view.id = None;
                    self.handle.loop_wake.notify_one();
                    next_renew = self.clock.now();
                }
                Step::Failed(e) => {
                    if renewers.is_none() {
                        grants += 1;
                    }
                    self.metrics.lease_renewals.with_label_values(&["failed"]).inc();
                    let now = self.clock.now();
                    let mut st = self.handle.lock();
                    if st.view.id.is_some() && now >= st.view.expires_at {
                        // Whatever the error says, a lease not renewed for its whole TTL is
                        // gone at etcd: start over with a new one.
                        tracing::warn!(error = %e, "lease expired without renewal; granting a new one");
                        st.view.id = None;
                        renewers = None;
                        self.handle.loop_wake.notify_one();
                    } else if std::mem::replace(&mut failing, true) {
                        tracing::debug!(error = %e, "lease renewal failed; retrying");
                    } else {
                        tracing::warn!(error = %e, "lease renewal failed; retrying every 200ms");
                    }
                    next_renew = now.plus(retry);
                }
            }
        }
    }
}
