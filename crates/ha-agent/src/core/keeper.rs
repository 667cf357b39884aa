//! The lease keeper's logic, pure: when to grant or renew the member's etcd lease, when the
//! lease stops being trusted and an armed primary must be fenced, and when the watchdog is
//! opened, fed and closed. Time comes in as [`Moment`]s, requests go out as [`Effect`]s, and
//! answers come back through [`Keeper::answered`].
//!
//! The shell (`crate::lease`) drives it with the real clock (`CLOCK_BOOTTIME`), etcd and the
//! watchdog device; the simulation (`tests/simulation.rs`) drives the same code with its own
//! clock, an in-memory etcd with latency, and a simulated watchdog.
//!
//! Arithmetic. A keep-alive sent at `s` and answered with TTL `ttl` makes the lease live at
//! etcd until at least `s + ttl` (etcd received it after `s`); that is [`LeaseView::expires_at`].
//! The lease is trusted until `expires_at - retry_timeout` ([`LeaseView::fence_at`]); an armed
//! keeper fences at that moment, whatever is in flight (a renewal still awaiting its answer
//! cannot push the fence later: the fence is checked on its own deadline, and a late answer
//! only counts from its send time). Renewals go out every `Timings::renew_interval`, failed
//! ones are retried every [`RETRY`]; with `loop_wait + 2 * retry_timeout <= ttl` and
//! `request_timeout <= retry_timeout`, a lease renewed on schedule is never fenced. The
//! watchdog is fed on every answered renewal and every half timeout in between, as long as a
//! feed keeps the reset before the lease's earliest expiry ([`super::watchdog`]); with etcd
//! unreachable the last feed lands at `expires_at - timeout - RESET_MARGIN`, so the lease
//! fence (`expires_at - retry_timeout`) stops PostgreSQL before the reset would.
//!
//! failsafe_mode. A round of `POST /failsafe` sent at `s` and accepted by every listed member
//! keeps each of them out of any leader race until `s + ttl` on its clock; the keeper then
//! trusts the primary until `s + ttl - retry_timeout` ([`Keeper::failsafe_confirmed`]), lease
//! or not, and feeds the watchdog as if a lease expired at `s + ttl`. A round that is not
//! accepted by all ends it at once ([`Keeper::failsafe_lost`]).
//!
//! The lease protects a primary only while the leader key is on it. A primary that loses its
//! lease (revoked early, or expired while etcd was away) is granted a new one, which holds no
//! leader key: the others race once the old lease's waits are over, whatever we renew. So a
//! lease granted after an armed keeper lost its own does not count for the fence (only the
//! failsafe proof does, and rounds go on for it) until the loop has put the leader key on it
//! ([`Keeper::key_on`]). The simulation found a primary whose PostgreSQL hung through a mass
//! revocation kept alive on such a lease, unfenced, after another member took over.

use std::time::Duration;

use super::observed::{LeaseView, Moment};
use super::watchdog::{self, Mode};
use crate::config::Timings;

/// How soon a failed grant or renewal is tried again.
pub const RETRY: Duration = Duration::from_millis(200);
/// How long before the last allowed moment the keeper wakes for a last-chance watchdog feed
/// (timers fire a little late; a feed after the last allowed moment is refused).
const FEED_LEAD: Duration = Duration::from_millis(100);
/// A renewal in flight this long counts as late (`Keeper::lease_unproven`): etcd answers in
/// milliseconds when it is there.
pub const RENEWAL_LATE_AFTER: Duration = Duration::from_millis(300);
/// failsafe_mode: how often the failsafe task sends a round while renewals are late: every
/// `loop_wait`, and at least four times per `ttl - retry_timeout` (what one round buys).
pub fn failsafe_interval(t: &Timings) -> Duration {
    t.loop_wait.min(t.ttl.saturating_sub(t.retry_timeout) / 4).max(Duration::from_millis(100))
}

/// While armed without a trusted lease, the fence is repeated this often (a postmaster
/// started meanwhile is killed too) until the loop disarms.
pub const REFENCE: Duration = Duration::from_millis(100);

/// When the watchdog is fed next without a renewal: every half timeout while the lease is
/// trusted enough, and once more at the last allowed moment; `None` after that (the reset
/// then comes at the lease's expiry minus the reset margin, after the lease fence).
fn next_feed(expires: Moment, timeout: Duration, last_feed: Moment) -> Option<Moment> {
    let last_chance = watchdog::last_feed_at(expires, timeout).minus(FEED_LEAD);
    (last_feed < last_chance).then(|| last_feed.plus(timeout / 2).min(last_chance))
}

/// A request to etcd the shell sends for the keeper.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ask {
    /// A new lease; `attempt` lets the shell rotate the member it asks (a grant is not
    /// idempotent, so it goes to one member at a time).
    Grant {
        ttl: Duration,
        attempt: usize,
    },
    Renew {
        lease: i64,
    },
}

/// What etcd answered to the request in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Granted {
        lease: i64,
        ttl: Duration,
    },
    Renewed {
        ttl: Duration,
    },
    /// etcd says the lease does not exist (expired or revoked).
    Lost,
    /// No answer in time, or an error that says nothing about the lease.
    Failed,
}

/// What the shell must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    Send(Ask),
    /// Stop PostgreSQL now (immediate): the lease may be about to expire at etcd.
    Fence,
    /// The lease was granted, lost or replaced: wake the HA loop.
    LeaseChanged,
    /// Open the watchdog device with this timeout; report with [`Keeper::watchdog_opened`].
    OpenWatchdog {
        timeout: Duration,
    },
    FeedWatchdog,
    /// Disable the watchdog (magic close).
    CloseWatchdog,
}

/// The watchdog as the keeper sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchdogState {
    /// Not in use (mode off, paused, or not a primary).
    Closed,
    /// Wanted (armed): opened as soon as the lease is fresh enough for a safe first feed.
    Wanted,
    /// Active, with the device's actual timeout.
    Open { timeout: Duration, last_feed: Moment },
    /// Could not be activated (mode required: this member must not become a primary).
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Held {
    id: i64,
    ttl: Duration,
    expires_at: Moment,
    /// The timings the lease was granted under: its renewals and fence follow them until it
    /// is replaced (a primary keeps its lease, and these, through a `ttl` change).
    timings: Timings,
}

/// The lease keeper's state.
#[derive(Debug, Clone)]
pub struct Keeper {
    /// The timings in force (the next lease is granted with them).
    timings: Timings,
    /// The timings of the grant in flight.
    granting: Timings,
    mode: Mode,
    wd_timeout: Duration,
    lease: Option<Held>,
    in_flight: Option<(Ask, Moment)>,
    next_at: Moment,
    armed: bool,
    fenced: bool,
    /// Armed and fencing: the next repeat of the fence.
    refence_at: Option<Moment>,
    revoked_at: Option<Moment>,
    failing: bool,
    attempts: usize,
    wd: WatchdogState,
    /// failsafe_mode: trusted until then without the lease (see the module doc).
    failsafe_until: Option<Moment>,
    /// Send time of the last grant or renewal of the current lease that etcd answered.
    renewed_sent: Option<Moment>,
    /// A lease of an earlier ttl is to make way for one of the ttl in force once a renewal
    /// sent after this moment confirms it was alive (so a revocation is not missed).
    relet_since: Option<Moment>,
    /// Armed when the lease was lost: the lease in hand holds no leader key until the loop
    /// says so ([`Keeper::key_on`]), and does not count for the fence meanwhile.
    unbound: bool,
}

impl Keeper {
    pub fn new(timings: Timings, mode: Mode, wd_timeout: Duration) -> Self {
        Self {
            timings,
            granting: timings,
            mode,
            wd_timeout,
            lease: None,
            in_flight: None,
            next_at: Moment::from_millis(0),
            armed: false,
            fenced: false,
            refence_at: None,
            revoked_at: None,
            failing: false,
            attempts: 0,
            wd: WatchdogState::Closed,
            failsafe_until: None,
            renewed_sent: None,
            relet_since: None,
            unbound: false,
        }
    }

    /// The lease as the HA loop sees it.
    pub fn view(&self) -> LeaseView {
        let failsafe_until = self.failsafe_until;
        match self.lease {
            Some(h) => LeaseView {
                id: Some(h.id),
                expires_at: h.expires_at,
                revoked_at: self.revoked_at,
                failsafe_until,
                margin: h.timings.retry_timeout,
            },
            None => LeaseView { revoked_at: self.revoked_at, failsafe_until, ..LeaseView::NONE },
        }
    }

    /// The timings the lease's arithmetic follows: those it was granted under.
    fn lease_timings(&self) -> Timings {
        self.lease.map_or(self.timings, |h| h.timings)
    }

    /// The earliest moment anyone else may take over, as far as this keeper can vouch: the
    /// lease's earliest expiry at etcd, or the end of the last failsafe round's proof.
    fn expiry(&self) -> Option<Moment> {
        let lease = self.lease.filter(|_| !self.unbound).map(|h| h.expires_at);
        let failsafe = self.failsafe_until.map(|u| u.plus(self.lease_timings().retry_timeout));
        lease.max(failsafe)
    }

    /// failsafe_mode: every member listed in `/failsafe` accepted the `POST /failsafe` sent
    /// at `sent`: trusted until `sent + ttl - retry_timeout` (never earlier than before). Each
    /// member stays out for the longer of its `ttl` and our lease's TTL
    /// (`timing::cover`); we count with the shorter of ours, in case a `ttl` change has
    /// reached us and not them.
    pub fn failsafe_confirmed(&mut self, sent: Moment) {
        let ttl = self.lease.map_or(self.timings.ttl, |h| h.ttl.min(self.timings.ttl));
        let until = sent.plus(ttl).minus(self.lease_timings().retry_timeout);
        self.failsafe_until = Some(self.failsafe_until.map_or(until, |u| u.max(until)));
    }

    /// Whether an armed primary needs failsafe_mode's proof at `now`: its renewals are late
    /// (the last one failed, or one has been in flight for [`RENEWAL_LATE_AFTER`]: etcd may be
    /// gone, and an etcd read would then take `retry_timeout` to fail), or its lease holds no
    /// leader key yet (it replaced one lost while armed).
    pub fn lease_unproven(&self, now: Moment) -> bool {
        self.armed
            && (self.unbound
                || self.failing
                || matches!(self.in_flight, Some((Ask::Renew { .. }, sent)) if now.since(sent) >= RENEWAL_LATE_AFTER))
    }

    /// The loop saw the leader key on lease `id` under our name (read, or just taken): the
    /// lease in hand counts for the fence again if it is that one.
    pub fn key_on(&mut self, id: i64) {
        if self.lease.is_some_and(|h| h.id == id) {
            self.unbound = false;
        }
    }

    /// failsafe_mode: a round was not accepted by every listed member: no more trust from it.
    pub fn failsafe_lost(&mut self) {
        self.failsafe_until = None;
    }

    /// Whether an armed primary may keep taking writes: under a lease that holds the leader
    /// key, or on failsafe_mode's proof.
    pub fn trusted(&self, now: Moment) -> bool {
        let view = self.view();
        if self.unbound { view.failsafe(now) } else { view.trusted(now, &self.lease_timings()) }
    }

    pub fn armed(&self) -> bool {
        self.armed
    }

    pub fn watchdog(&self) -> WatchdogState {
        self.wd
    }

    /// Mode required and the watchdog could not be activated: this member must not lead.
    pub fn watchdog_failed(&self) -> bool {
        self.mode == Mode::Required && self.wd == WatchdogState::Failed
    }

    /// Whether a watchdog is required before this member may become a primary, and is not
    /// known to be unusable.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// PostgreSQL is, or is about to become, a primary: fence it when the lease goes, and
    /// activate the watchdog (after a fresh renewal, so that its first feed is safe).
    pub fn arm(&mut self, now: Moment) {
        if !self.armed {
            self.armed = true;
            self.want_watchdog(now);
        }
    }

    /// Asks for the watchdog (if it is used); when the lease is too old for a safe first feed,
    /// a renewal goes out first.
    fn want_watchdog(&mut self, now: Moment) {
        if self.mode == Mode::Off || self.wd != WatchdogState::Closed {
            return;
        }
        self.wd = WatchdogState::Wanted;
        if self.expiry().is_none_or(|e| !watchdog::may_feed(now, e, self.wd_timeout)) {
            self.renew_soon(now);
        }
    }

    /// PostgreSQL no longer accepts writes (`pg_down`), or is not to be fenced any more: the
    /// watchdog is closed only once PostgreSQL is known not to accept writes.
    pub fn disarm(&mut self, pg_down: bool) -> Vec<Effect> {
        self.armed = false;
        self.refence_at = None;
        self.failsafe_until = None;
        // The next arming follows a promotion or start under the key on the lease in hand.
        self.unbound = false;
        if pg_down { self.close_watchdog() } else { Vec::new() }
    }

    /// Disables the watchdog without disarming the fence: the agent leaves a paused cluster's
    /// PostgreSQL running on shutdown, as Patroni does, and must not have it reset.
    ///
    /// Unlike Patroni, maintenance mode itself keeps the watchdog (as it keeps the lease
    /// fence): a primary whose agent stalls through the pause would otherwise still take
    /// writes when the pause ends and a replica takes over.
    pub fn release_watchdog(&mut self) -> Vec<Effect> {
        self.close_watchdog()
    }

    fn close_watchdog(&mut self) -> Vec<Effect> {
        match self.wd {
            WatchdogState::Open { .. } => {
                self.wd = WatchdogState::Closed;
                vec![Effect::CloseWatchdog]
            }
            WatchdogState::Wanted => {
                self.wd = WatchdogState::Closed;
                Vec::new()
            }
            // Failed stays failed for the next attempt to say so; Closed is closed.
            _ => Vec::new(),
        }
    }

    /// Renew now rather than on schedule (the loop saw our key vanish: is our lease gone?).
    pub fn renew_soon(&mut self, now: Moment) {
        self.next_at = self.next_at.min(now);
    }

    /// New timings (a config reload, or the cluster's config key). A changed `ttl` takes
    /// effect with the next lease: at once when this member is not a primary (a new lease is
    /// granted and the loop moves its keys onto it), else when it stops being one; until then
    /// the lease keeps the timings it was granted under. With the same `ttl` the lease takes
    /// the new `loop_wait` and `retry_timeout` at once (they keep the rule with that ttl).
    pub fn set_timings(&mut self, t: Timings, mode: Mode, wd_timeout: Duration, now: Moment) -> Vec<Effect> {
        let ttl_changed = t.ttl != self.timings.ttl;
        self.timings = t;
        if let Some(h) = self.lease.as_mut().filter(|h| h.timings.ttl == t.ttl) {
            h.timings = t;
        }
        self.mode = mode;
        self.wd_timeout = wd_timeout;
        let mut out = Vec::new();
        if mode == Mode::Off {
            out.extend(self.close_watchdog());
            if self.wd == WatchdogState::Failed {
                self.wd = WatchdogState::Closed;
            }
        }
        if ttl_changed && !self.armed && self.lease.is_some() {
            // The lease is replaced by `step` once a renewal confirms it: ask now.
            self.renew_soon(now);
        }
        out
    }

    /// Takes the "fenced since last asked" flag (the HA loop logs it).
    pub fn take_fenced(&mut self) -> bool {
        std::mem::take(&mut self.fenced)
    }

    /// What is due at `now`: fence, send, open or feed the watchdog.
    pub fn step(&mut self, now: Moment) -> Vec<Effect> {
        let mut out = Vec::new();
        if self.armed && !self.trusted(now) && self.refence_at.is_none_or(|at| now >= at) {
            // Armed stays armed: the fence is repeated every REFENCE (the shell kills whatever
            // postmaster it finds), until the loop, seeing PostgreSQL no longer accept writes,
            // disarms. A postmaster spawned just after a fence (a start racing the lease) goes
            // the same way.
            self.fenced = true;
            self.refence_at = Some(now.plus(REFENCE));
            // The watchdog stays as it is: if the fence does not stop PostgreSQL, the machine
            // is reset before the lease can expire (no feed is allowed past that point).
            if self.wd == WatchdogState::Wanted {
                self.wd = WatchdogState::Closed;
            }
            out.push(Effect::Fence);
        }
        if !self.armed && self.lease.is_some_and(|h| h.timings.ttl != self.timings.ttl) {
            // Not a primary: the lease of an earlier ttl makes way for one of the ttl in force
            // (the loop moves our keys onto it), but only after a renewal sent from now on
            // found it alive. Dropped unasked, a lease revoked early (etcd #15247) would never
            // answer Lost, and this member would race without waiting for the old primary.
            let since = *self.relet_since.get_or_insert(now);
            if self.in_flight.is_none() {
                if self.renewed_sent.is_some_and(|s| s >= since) {
                    self.lease = None;
                    self.relet_since = None;
                    self.next_at = now;
                    out.push(Effect::LeaseChanged);
                } else {
                    self.next_at = self.next_at.min(now);
                }
            }
        } else {
            self.relet_since = None;
        }
        if self.in_flight.is_none() && now >= self.next_at {
            if self.lease.is_none() {
                self.granting = self.timings;
            }
            let ask = match self.lease {
                None => Ask::Grant { ttl: self.timings.ttl, attempt: self.attempts },
                Some(h) => Ask::Renew { lease: h.id },
            };
            self.in_flight = Some((ask, now));
            out.push(Effect::Send(ask));
        }
        if let Some(expires) = self.expiry() {
            match self.wd {
                WatchdogState::Wanted if self.armed && watchdog::may_feed(now, expires, self.wd_timeout) => {
                    out.push(Effect::OpenWatchdog { timeout: self.wd_timeout });
                }
                WatchdogState::Open { timeout, last_feed }
                    if next_feed(expires, timeout, last_feed).is_some_and(|at| now >= at)
                        && watchdog::may_feed(now, expires, timeout) =>
                {
                    self.wd = WatchdogState::Open { timeout, last_feed: now };
                    out.push(Effect::FeedWatchdog);
                }
                _ => {}
            }
        }
        out
    }

    /// The outcome of [`Effect::OpenWatchdog`]: the device's actual timeout, or `None` when it
    /// could not be opened or set.
    pub fn watchdog_opened(&mut self, now: Moment, actual: Option<Duration>) -> Vec<Effect> {
        if self.wd != WatchdogState::Wanted {
            // Disarmed meanwhile.
            return if actual.is_some() { vec![Effect::CloseWatchdog] } else { Vec::new() };
        }
        match actual {
            // A device that keeps a longer timeout than asked can still be used if it can be
            // fed safely; one that cannot is as good as none.
            Some(t) if self.expiry().is_some_and(|e| watchdog::may_feed(now, e, t)) => {
                self.wd = WatchdogState::Open { timeout: t, last_feed: now };
                Vec::new()
            }
            Some(_) => {
                self.wd = self.unavailable();
                vec![Effect::CloseWatchdog]
            }
            None => {
                self.wd = self.unavailable();
                Vec::new()
            }
        }
    }

    fn unavailable(&self) -> WatchdogState {
        // Automatic mode carries on without it; the shell says so.
        if self.mode == Mode::Required { WatchdogState::Failed } else { WatchdogState::Closed }
    }

    /// A failed feed (the device went away): as a failed activation.
    pub fn watchdog_lost(&mut self) {
        if matches!(self.wd, WatchdogState::Open { .. }) {
            self.wd = self.unavailable();
        }
    }

    /// The answer to the request in flight.
    pub fn answered(&mut self, now: Moment, answer: Answer) -> Vec<Effect> {
        let Some((ask, sent)) = self.in_flight.take() else { return Vec::new() };
        let mut out = Vec::new();
        match (ask, answer) {
            (Ask::Grant { .. }, Answer::Granted { lease, ttl }) => {
                self.failing = false;
                let timings = self.granting;
                self.lease = Some(Held { id: lease, ttl, expires_at: sent.plus(ttl), timings });
                self.renewed_sent = Some(sent);
                self.next_at = sent.plus(timings.renew_interval());
                out.push(Effect::LeaseChanged);
            }
            (Ask::Renew { lease }, Answer::Renewed { ttl }) => {
                self.failing = false;
                if let Some(h) = self.lease.as_mut().filter(|h| h.id == lease) {
                    // Only ever later: an answer to an older keep-alive cannot shorten it.
                    h.expires_at = h.expires_at.max(sent.plus(ttl));
                    h.ttl = ttl;
                    self.renewed_sent = Some(self.renewed_sent.map_or(sent, |s| s.max(sent)));
                }
                self.next_at = sent.plus(self.lease_timings().renew_interval());
                if let (Some(e), WatchdogState::Open { timeout, .. }) = (self.expiry(), self.wd)
                    && watchdog::may_feed(now, e, timeout)
                {
                    self.wd = WatchdogState::Open { timeout, last_feed: now };
                    out.push(Effect::FeedWatchdog);
                }
            }
            (Ask::Renew { lease }, Answer::Lost) => {
                if self.lease.is_some_and(|h| h.id == lease) {
                    // Before `expires_at` (a lower bound of its expiry at etcd) it was revoked
                    // early. After it, it may have expired, or have been revoked early while
                    // we could not renew it: we cannot tell, so it counts as revoked (the
                    // leader's lease may have gone in the same mass revocation, and nobody
                    // else may have seen it).
                    self.revoked_at = Some(now);
                    self.lease = None;
                    self.unbound |= self.armed;
                    out.push(Effect::LeaseChanged);
                }
                self.next_at = now;
            }
            (Ask::Grant { .. }, _) => {
                self.attempts += 1;
                self.failing = true;
                self.next_at = now.plus(RETRY);
            }
            (Ask::Renew { .. }, _) => {
                self.failing = true;
                if self.lease.is_some_and(|h| now >= h.expires_at) {
                    // Whatever the error says, a lease not renewed for its whole TTL is gone
                    // at etcd: start over with a new one. Whether it expired or was revoked
                    // early while we were cut off is unknown: it counts as revoked.
                    self.revoked_at = Some(now);
                    self.lease = None;
                    self.unbound |= self.armed;
                    out.push(Effect::LeaseChanged);
                }
                self.next_at = now.plus(RETRY);
            }
        }
        out
    }

    /// Whether the last request failed (for logging once per episode).
    pub fn failing(&self) -> bool {
        self.failing
    }

    /// The request in flight, with its send time.
    pub fn in_flight(&self) -> Option<(Ask, Moment)> {
        self.in_flight
    }

    /// When [`Keeper::step`] next has something to do (`None`: only an answer or a command
    /// can change anything).
    pub fn wake_at(&self) -> Option<Moment> {
        let mut at: Option<Moment> = None;
        let mut consider = |m: Moment| at = Some(at.map_or(m, |a| a.min(m)));
        if self.in_flight.is_none() {
            consider(self.next_at);
        }
        // Armed without a lease: each step fences again; the grant retries (`next_at`) wake it.
        if let Some(at) = self.refence_at.filter(|_| self.armed) {
            consider(at);
        }
        if let Some(e) = self.expiry() {
            if self.armed && self.refence_at.is_none() {
                consider(e.minus(self.lease_timings().retry_timeout));
            }
            if let WatchdogState::Open { timeout, last_feed } = self.wd
                && let Some(at) = next_feed(e, timeout, last_feed)
            {
                consider(at);
            }
        }
        at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: u64) -> Moment {
        Moment::from_millis(ms)
    }

    /// Lab timings: ttl 2 s, loop_wait 500 ms, retry_timeout 500 ms (renew every 500 ms).
    fn lab() -> Timings {
        Timings {
            ttl: Duration::from_secs(2),
            loop_wait: Duration::from_millis(500),
            retry_timeout: Duration::from_millis(500),
        }
    }

    fn granted(mode: Mode) -> Keeper {
        let mut k = Keeper::new(lab(), mode, Duration::from_secs(1));
        assert_eq!(k.step(t(0)), vec![Effect::Send(Ask::Grant { ttl: Duration::from_secs(2), attempt: 0 })]);
        assert_eq!(
            k.answered(t(5), Answer::Granted { lease: 7, ttl: Duration::from_secs(2) }),
            vec![Effect::LeaseChanged]
        );
        k
    }

    #[test]
    fn a_primary_keeps_its_lease_and_its_timings_through_a_ttl_change_and_takes_the_new_ttl_once_it_stops_leading() {
        let mut k = granted(Mode::Off);
        k.arm(t(10));
        // The cluster's ttl becomes 8 s (loop_wait 2 s, retry_timeout 2 s): the 2 s lease
        // keeps renewing every 500 ms and is fenced 500 ms before it can expire.
        let slow = Timings {
            ttl: Duration::from_secs(8),
            loop_wait: Duration::from_secs(2),
            retry_timeout: Duration::from_secs(2),
        };
        assert_eq!(k.set_timings(slow, Mode::Off, Duration::from_secs(4), t(20)), vec![]);
        assert_eq!(k.view().id, Some(7), "the primary keeps its lease");
        assert_eq!(k.view().margin, Duration::from_millis(500));
        assert_eq!(k.wake_at(), Some(t(500)), "renewed on the lease's own schedule");
        assert_eq!(k.step(t(500)), vec![Effect::Send(Ask::Renew { lease: 7 })]);
        k.answered(t(510), Answer::Renewed { ttl: Duration::from_secs(2) });
        assert_eq!(k.wake_at(), Some(t(1000)), "every 500 ms, not the new 2 s");
        assert!(k.trusted(t(1999)), "fenced at 500 + 2 s - 500 ms, not 2 s before");
        // Demoted: the lease makes way for one of 8 s, once a renewal found it alive.
        k.disarm(true);
        assert_eq!(k.step(t(600)), vec![Effect::Send(Ask::Renew { lease: 7 })], "its fate first");
        k.answered(t(605), Answer::Renewed { ttl: Duration::from_secs(2) });
        assert_eq!(
            k.step(t(610)),
            vec![Effect::LeaseChanged, Effect::Send(Ask::Grant { ttl: Duration::from_secs(8), attempt: 0 })]
        );
        k.answered(t(620), Answer::Granted { lease: 8, ttl: Duration::from_secs(8) });
        assert_eq!(k.view().margin, Duration::from_secs(2));
        assert_eq!(k.wake_at(), Some(t(2610)), "renewed every min(loop_wait, ttl / 4) of the new timings");
    }

    #[test]
    fn a_replica_takes_a_lease_of_the_new_ttl_at_once_and_keeps_its_lease_when_only_loop_wait_changes() {
        let mut k = granted(Mode::Off);
        let faster = Timings { loop_wait: Duration::from_millis(250), ..lab() };
        assert_eq!(k.set_timings(faster, Mode::Off, Duration::from_secs(1), t(20)), vec![]);
        assert_eq!(k.view().id, Some(7));
        assert_eq!(k.step(t(500)), vec![Effect::Send(Ask::Renew { lease: 7 })]);
        k.answered(t(510), Answer::Renewed { ttl: Duration::from_secs(2) });
        assert_eq!(k.wake_at(), Some(t(750)), "the new loop_wait at once");
        let longer = Timings { ttl: Duration::from_secs(4), ..lab() };
        assert_eq!(k.set_timings(longer, Mode::Off, Duration::from_secs(2), t(600)), vec![]);
        assert_eq!(k.step(t(600)), vec![Effect::Send(Ask::Renew { lease: 7 })], "a renewal first: is it alive?");
        k.answered(t(610), Answer::Renewed { ttl: Duration::from_secs(2) });
        assert_eq!(
            k.step(t(610)),
            vec![Effect::LeaseChanged, Effect::Send(Ask::Grant { ttl: Duration::from_secs(4), attempt: 0 })]
        );
    }

    #[test]
    fn a_lease_revoked_early_is_noticed_even_when_a_ttl_change_replaces_it() {
        // etcd revoked every lease (#15247) just before the ttl changed: the lease is not
        // dropped unasked; the renewal that checks it answers Lost, and that counts.
        let mut k = granted(Mode::Off);
        let longer = Timings { ttl: Duration::from_secs(4), ..lab() };
        k.set_timings(longer, Mode::Off, Duration::from_secs(2), t(300));
        assert_eq!(k.step(t(300)), vec![Effect::Send(Ask::Renew { lease: 7 })]);
        assert_eq!(k.answered(t(310), Answer::Lost), vec![Effect::LeaseChanged]);
        assert!(k.view().revoked_within(t(310), Duration::from_secs(4)), "revoked before it could expire");
        assert_eq!(k.step(t(310)), vec![Effect::Send(Ask::Grant { ttl: Duration::from_secs(4), attempt: 0 })]);
    }

    #[test]
    fn an_armed_primary_is_fenced_retry_timeout_before_the_lease_can_expire() {
        let mut k = granted(Mode::Off);
        k.arm(t(10));
        assert_eq!(k.wake_at(), Some(t(500)), "next renewal first");
        // The renewal goes out and never comes back.
        assert_eq!(k.step(t(500)), vec![Effect::Send(Ask::Renew { lease: 7 })]);
        assert_eq!(k.wake_at(), Some(t(1500)), "the fence point: sent 0 + ttl 2 s - retry 0.5 s");
        assert_eq!(k.step(t(1499)), vec![]);
        assert_eq!(k.step(t(1500)), vec![Effect::Fence], "fenced while the renewal is still in flight");
        assert!(k.take_fenced());
        assert!(k.armed(), "it stays armed until the loop sees PostgreSQL stopped");
        assert_eq!(k.wake_at(), Some(t(1600)), "the fence is repeated every REFENCE, not in a busy loop");
        assert_eq!(k.step(t(1550)), vec![]);
        assert_eq!(k.step(t(1600)), vec![Effect::Fence], "a postmaster started meanwhile is fenced too");
        k.disarm(true);
        assert_eq!(k.step(t(1720)), vec![]);
    }

    #[test]
    fn failsafe_rounds_confirmed_by_every_member_keep_an_armed_primary_past_its_lease_and_a_refusal_ends_that() {
        let mut k = granted(Mode::Automatic);
        k.arm(t(10));
        k.answered(t(20), Answer::Renewed { ttl: Duration::from_secs(2) });
        // The renewal at 500 never comes back (etcd unreachable); rounds are confirmed at
        // 900 and 1700: trusted until 1700 + ttl 2 s - retry 0.5 s = 3200.
        k.step(t(500));
        k.failsafe_confirmed(t(900));
        k.failsafe_confirmed(t(1700));
        assert_eq!(k.view().failsafe_until, Some(t(3200)));
        assert!(!k.view().held(t(1500), &lab()), "the lease itself is past its fence point");
        assert!(k.trusted(t(3199)));
        assert!(!k.step(t(2000)).contains(&Effect::Fence));
        assert!(k.lease_unproven(t(2000)), "a renewal in flight since 500");
        assert!(!k.lease_unproven(t(700)), "in flight for less than RENEWAL_LATE_AFTER");
        // An older confirmation cannot shorten it.
        k.failsafe_confirmed(t(1000));
        assert_eq!(k.view().failsafe_until, Some(t(3200)));
        // A round not confirmed by everyone: fenced at once.
        k.failsafe_lost();
        assert!(k.step(t(2100)).contains(&Effect::Fence));
        // Disarming forgets the proof.
        k.failsafe_confirmed(t(2100));
        k.disarm(true);
        assert_eq!(k.view().failsafe_until, None);
    }

    #[test]
    fn a_lease_granted_after_an_armed_primary_lost_its_own_counts_only_once_the_leader_key_is_on_it() {
        let mut k = granted(Mode::Off);
        k.arm(t(10));
        k.step(t(500));
        k.answered(t(510), Answer::Renewed { ttl: Duration::from_secs(2) });
        // A mass revocation: the renewal at 1000 finds the lease gone. A round confirmed at
        // 1050 keeps the primary until 1050 + 2 s - 0.5 s = 2550.
        k.step(t(1000));
        k.answered(t(1010), Answer::Lost);
        k.failsafe_confirmed(t(1050));
        assert_eq!(k.step(t(1060)), vec![Effect::Send(Ask::Grant { ttl: Duration::from_secs(2), attempt: 0 })]);
        k.answered(t(1070), Answer::Granted { lease: 8, ttl: Duration::from_secs(2) });
        assert!(k.view().held(t(1100), &lab()), "the loop may take the leader key on the new lease");
        assert!(k.lease_unproven(t(1100)), "rounds go on: the new lease holds no leader key");
        assert_eq!(k.step(t(1560)), vec![Effect::Send(Ask::Renew { lease: 8 })]);
        k.answered(t(1570), Answer::Renewed { ttl: Duration::from_secs(2) });
        assert!(k.trusted(t(2549)));
        assert!(!k.trusted(t(2550)), "renewing a lease without the leader key proves nothing");
        assert!(k.step(t(2550)).contains(&Effect::Fence));
        // Once the loop has put the leader key on it, the new lease counts.
        k.key_on(7);
        assert!(!k.trusted(t(2600)), "not for a lease we no longer hold");
        k.key_on(8);
        assert!(k.trusted(t(2600)));
        assert!(!k.lease_unproven(t(2600)));
    }

    #[test]
    fn a_late_answer_counts_from_its_send_time_and_cannot_push_the_fence_past_its_deadline() {
        let mut k = granted(Mode::Off);
        k.arm(t(10));
        k.step(t(500));
        // Answered 1.2 s after it was sent: the lease lives until 500 + 2000 at least.
        assert_eq!(k.answered(t(1700), Answer::Renewed { ttl: Duration::from_secs(2) }), vec![]);
        assert_eq!(k.view().expires_at, t(2500));
        assert!(k.trusted(t(1999)));
        assert!(!k.trusted(t(2000)));
    }

    #[test]
    fn a_lost_lease_fences_an_armed_primary_at_once_and_a_new_one_is_granted() {
        let mut k = granted(Mode::Off);
        k.arm(t(10));
        k.step(t(500));
        assert_eq!(k.answered(t(510), Answer::Lost), vec![Effect::LeaseChanged]);
        let e = k.step(t(510));
        assert_eq!(e[0], Effect::Fence);
        assert!(matches!(e[1], Effect::Send(Ask::Grant { .. })));
    }

    #[test]
    fn failed_renewals_are_retried_and_the_lease_is_dropped_once_its_ttl_passed() {
        let mut k = granted(Mode::Off);
        k.step(t(500));
        assert_eq!(k.answered(t(1500), Answer::Failed), vec![]);
        assert_eq!(k.wake_at(), Some(t(1700)));
        k.step(t(1700));
        assert_eq!(k.answered(t(2100), Answer::Failed), vec![Effect::LeaseChanged], "0 + 2 s passed");
        assert_eq!(k.view(), LeaseView { revoked_at: Some(t(2100)), ..LeaseView::NONE }, "its fate is unknown");
    }

    #[test]
    fn the_watchdog_opens_only_after_a_fresh_renewal_and_is_fed_only_while_the_reset_beats_the_lease() {
        let mut k = granted(Mode::Automatic);
        // The lease was sent at 0 (expires 2000); at 800 a 1 s watchdog would reset at 2050.
        k.arm(t(800));
        assert_eq!(k.watchdog(), WatchdogState::Wanted);
        let e = k.step(t(800));
        assert_eq!(e, vec![Effect::Send(Ask::Renew { lease: 7 })], "renew first, no unsafe first feed");
        k.answered(t(810), Answer::Renewed { ttl: Duration::from_secs(2) });
        assert_eq!(k.step(t(810)), vec![Effect::OpenWatchdog { timeout: Duration::from_secs(1) }]);
        assert_eq!(k.watchdog_opened(t(811), Some(Duration::from_secs(1))), vec![]);
        // Renewals feed it.
        k.step(t(1300));
        assert_eq!(k.answered(t(1305), Answer::Renewed { ttl: Duration::from_secs(2) }), vec![Effect::FeedWatchdog]);
        // etcd goes silent: fed every half timeout, the last time at expires (3300) - 1 s -
        // 250 ms - lead (1950), never later.
        assert_eq!(k.step(t(1800)), vec![Effect::Send(Ask::Renew { lease: 7 })]);
        assert_eq!(k.wake_at(), Some(t(1805)), "half a timeout after the last feed");
        assert_eq!(k.step(t(1805)), vec![Effect::FeedWatchdog]);
        assert_eq!(k.wake_at(), Some(t(1950)));
        assert_eq!(k.step(t(1950)), vec![Effect::FeedWatchdog]);
        assert_eq!(k.wake_at(), Some(t(2800)), "no more feeds: next is the fence");
        assert_eq!(k.step(t(2000)), vec![]);
        // The fence comes at 3300 - 500; the reset (1950 + 1 s + margin) would only follow it.
        assert_eq!(k.step(t(2800)), vec![Effect::Fence]);
        // PostgreSQL confirmed down: the watchdog is closed cleanly.
        assert_eq!(k.disarm(true), vec![Effect::CloseWatchdog]);
    }

    #[test]
    fn a_device_whose_timeout_cannot_be_fed_safely_counts_as_unavailable() {
        let mut k = granted(Mode::Required);
        k.arm(t(10));
        assert_eq!(k.step(t(10)), vec![Effect::OpenWatchdog { timeout: Duration::from_secs(1) }]);
        // The device kept 60 s: no feed could ever reset before the lease expires.
        assert_eq!(k.watchdog_opened(t(11), Some(Duration::from_secs(60))), vec![Effect::CloseWatchdog]);
        assert!(k.watchdog_failed());
        let mut a = granted(Mode::Automatic);
        a.arm(t(10));
        a.step(t(10));
        a.watchdog_opened(t(11), None);
        assert!(!a.watchdog_failed(), "automatic mode carries on without it");
    }

    #[test]
    fn a_lease_lost_or_lapsed_unseen_is_recorded_as_revoked_early() {
        let mut k = granted(Mode::Off);
        k.step(t(500));
        k.answered(t(510), Answer::Lost);
        assert_eq!(k.view().revoked_at, Some(t(510)));
        // Lost after its fence point but before its earliest expiry (1.8 s < 2 s): revoked.
        let mut r = granted(Mode::Off);
        r.step(t(500));
        r.answered(t(1500), Answer::Failed);
        r.step(t(1700));
        r.answered(t(1800), Answer::Lost);
        assert_eq!(r.view().revoked_at, Some(t(1800)));
        // Not renewed for its whole ttl (cut off from etcd): expired or revoked early, nobody
        // can tell; it counts as revoked, from when we learnt it.
        let mut e = granted(Mode::Off);
        e.step(t(500));
        e.answered(t(1500), Answer::Failed);
        e.step(t(1700));
        e.answered(t(2100), Answer::Failed);
        assert_eq!(e.view().revoked_at, Some(t(2100)));
        // Renewed all along: no revocation.
        let mut ok = granted(Mode::Off);
        ok.step(t(500));
        ok.answered(t(510), Answer::Renewed { ttl: Duration::from_secs(2) });
        assert_eq!(ok.view().revoked_at, None);
    }

    #[test]
    fn a_ttl_change_replaces_the_lease_of_a_replica_but_not_of_a_primary() {
        let mut k = granted(Mode::Off);
        let mut new = lab();
        new.ttl = Duration::from_secs(3);
        k.arm(t(10));
        assert_eq!(k.set_timings(new, Mode::Off, Duration::from_secs(1), t(20)), vec![]);
        assert_eq!(k.view().id, Some(7));
        let mut r = granted(Mode::Off);
        assert_eq!(r.set_timings(new, Mode::Off, Duration::from_secs(1), t(20)), vec![]);
        assert_eq!(r.step(t(20)), vec![Effect::Send(Ask::Renew { lease: 7 })], "found alive first");
        r.answered(t(30), Answer::Renewed { ttl: Duration::from_secs(2) });
        assert_eq!(
            r.step(t(30)),
            vec![Effect::LeaseChanged, Effect::Send(Ask::Grant { ttl: Duration::from_secs(3), attempt: 0 })]
        );
    }
}
