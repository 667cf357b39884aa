//! What the REST API and the HA loop exchange: the loop publishes a [`Snapshot`] after every
//! cycle (health checks answer from it, never from SQL), and the API sends [`Command`]s for
//! the actions that must run inside the loop (restart, reload, reinitialise), each with a
//! one-shot reply carrying Patroni's status code and text.
//!
//! Actions that Patroni performs through the DCS (switchover, failover, config changes) are
//! done by the API itself with compare-and-swap on the keys; the loop sees them on its watch.

use std::time::Duration;

use outrigger_schema::StatusJson;
use tokio::sync::oneshot;

/// What the health endpoints need, as of the loop's last cycle.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The status JSON of `GET /patroni` (and every health GET).
    pub status: Option<StatusJson>,
    /// Set while the leader key names this member and PostgreSQL is writable: until when its
    /// lease is trusted (Patroni's `ha.is_leader()` is true before this instant, false after,
    /// even if no new snapshot came).
    pub leader_until: Option<std::time::Instant>,
    /// `pause` in `/config`.
    pub paused: bool,
    /// This member's name is in `/sync` (synchronous mode).
    pub sync_standby: bool,
    /// This member's name is in `/sync` (quorum commit).
    pub quorum_standby: bool,
    /// The leader's last known WAL position (`/status` `optime`), for `?lag=`.
    pub leader_optime: Option<u64>,
    /// `maximum_lag_on_failover` from `/config`, the default lag of `/readiness`.
    pub maximum_lag_on_failover: u64,
    /// Unix time (ms) when the cycle that produced this snapshot started.
    pub cycle_started_ms: u64,
    /// `failsafe_mode` in `/config`.
    pub failsafe_mode: bool,
    /// This primary runs on failsafe_mode's proof (etcd unreachable, every member confirmed).
    pub failsafe_active: bool,
    /// This member is listed in `/failsafe`.
    pub failsafe_member: bool,
}

impl Snapshot {
    /// Patroni's `ha.is_leader()` at `now`.
    pub fn holds_leader(&self, now: std::time::Instant) -> bool {
        self.leader_until.is_some_and(|until| now < until)
    }
}

/// A reply in Patroni's terms: HTTP status and a text (or JSON) body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub body: String,
}

impl Reply {
    pub fn new(status: u16, body: impl Into<String>) -> Self {
        Self { status, body: body.into() }
    }
}

/// `POST /restart`'s body, validated by the API.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestartRequest {
    /// Unix ms; `None`: now.
    pub schedule_ms: Option<u64>,
    /// Only if this member's role is this one (`primary`, `replica`, `standby_leader`).
    pub role: Option<String>,
    /// Only if the running server version is lower than this (`server_version` integer).
    pub postgres_version: Option<u32>,
    /// How long to wait for the restart before answering 503.
    pub timeout: Option<Duration>,
    /// Only if a restart is pending.
    pub restart_pending: bool,
}

/// Actions the loop runs. Each reply is sent once the action finished (or was scheduled).
#[derive(Debug)]
pub enum Command {
    Restart { req: RestartRequest, reply: oneshot::Sender<Reply> },
    CancelRestart { reply: oneshot::Sender<Reply> },
    Reload { reply: oneshot::Sender<Reply> },
    Reinitialize { force: bool, from_leader: bool, reply: oneshot::Sender<Reply> },
}
