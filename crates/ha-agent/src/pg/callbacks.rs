//! Patroni's callbacks and scripts around PostgreSQL's life (`postgresql.callbacks`,
//! `pre_promote`, `before_stop`), run as the PostgreSQL user.
//!
//! As Patroni runs them: a callback is `<command> <action> <role> <scope>` and is not waited
//! for; a new one ends one still running (Patroni's single callback executor); none runs while
//! a new cluster is being bootstrapped. `on_start` follows a start, `on_restart` a restart
//! (instead of `on_stop` and `on_start`), `on_stop` a stop of a running server, `on_reload` a
//! reload, `on_role_change` a promotion (role `primary`) and the first start as a replica
//! after having been a primary (role `replica`, instead of `on_start`). `pre_promote` runs to
//! its end after the leader key is taken and before the promotion: a non-zero exit cancels the
//! promotion (the caller gives the key back and stays out of races for a ttl). `before_stop`
//! runs to its end before each stop of a running server; its exit status is only logged.

use std::process::Stdio;
use std::time::Duration;

use super::Postgres;

/// How long `pre_promote` may run before it counts as failed.
pub const PRE_PROMOTE_LIMIT: Duration = Duration::from_secs(60);
/// How long `before_stop` may run before a fast stop goes ahead (Patroni waits without a
/// limit; an orderly stop already waits this long for the shutdown checkpoint).
pub const BEFORE_STOP_LIMIT: Duration = Duration::from_secs(30);
/// ... and before an immediate stop, which is the demotion of a primary that may have to
/// stop taking writes at once: a script must not hold it up.
pub const BEFORE_IMMEDIATE_STOP_LIMIT: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    OnStart,
    OnStop,
    OnRestart,
    OnReload,
    OnRoleChange,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::OnStart => "on_start",
            Action::OnStop => "on_stop",
            Action::OnRestart => "on_restart",
            Action::OnReload => "on_reload",
            Action::OnRoleChange => "on_role_change",
        }
    }
}

/// The role a callback is told (Patroni 4's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Primary,
    Replica,
    /// A standby cluster's leader (a replica of the remote primary).
    StandbyLeader,
    /// A primary this agent stopped.
    Demoted,
    Uninitialized,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Replica => "replica",
            Role::StandbyLeader => "standby_leader",
            Role::Demoted => "demoted",
            Role::Uninitialized => "uninitialized",
        }
    }
}

/// What the callbacks need to remember between calls.
pub(super) struct State {
    pub role: Role,
    /// A start, stop, restart or role change callback has been due (Patroni's `cb_called`).
    pub called: bool,
    /// The callback the next completed start calls instead of `on_start` (a restart).
    pub pending: Option<Action>,
    /// A new cluster is being made: no callbacks.
    pub bootstrapping: bool,
    /// This member leads a standby cluster (`Postgres::set_standby_leader`).
    pub standby_leader: bool,
    pub running: Option<tokio::process::Child>,
}

impl Default for State {
    fn default() -> Self {
        Self {
            role: Role::Uninitialized,
            called: false,
            pending: None,
            bootstrapping: false,
            standby_leader: false,
            running: None,
        }
    }
}

/// Which callback a completed start calls: `on_role_change` when a server that was a
/// primary starts as a replica after a callback has run (Patroni's `follow`), else the
/// pending one (`on_restart`) or `on_start`.
pub fn after_start(called: bool, before: Role, now: Role, pending: Option<Action>) -> Action {
    if called && matches!(before, Role::Primary | Role::Demoted) && matches!(now, Role::Replica | Role::StandbyLeader) {
        Action::OnRoleChange
    } else {
        pending.unwrap_or(Action::OnStart)
    }
}

impl Postgres {
    /// No callbacks while a new cluster is being made (Patroni's `bootstrapping`); `on_start`
    /// follows once it is.
    pub fn set_bootstrapping(&mut self, on: bool) {
        self.cb.bootstrapping = on;
    }

    /// The role callbacks are told.
    pub fn callback_role(&self) -> Role {
        self.cb.role
    }

    /// Whether this member leads a standby cluster: the role its next start as a standby
    /// reports, and, for a running standby whose role changes, `on_role_change` with the new
    /// one now (as Patroni's `follow` does).
    pub fn set_standby_leader(&mut self, on: bool) {
        self.cb.standby_leader = on;
        let now = if on { Role::StandbyLeader } else { Role::Replica };
        if matches!(self.cb.role, Role::Replica | Role::StandbyLeader) && self.cb.role != now {
            self.cb.role = now;
            self.call_nowait(Action::OnRoleChange);
        }
    }

    /// The data directory was removed (a reinit): the next start is a first start.
    pub fn forget_role(&mut self) {
        self.cb.role = Role::Uninitialized;
    }

    /// Calls `action`'s callback, if one is configured, without waiting for it; one still
    /// running is ended first.
    pub fn call_nowait(&mut self, action: Action) {
        if self.cb.bootstrapping {
            return;
        }
        if action != Action::OnReload {
            self.cb.called = true;
        }
        let c = &self.cfg.callbacks;
        let argv = match action {
            Action::OnStart => &c.on_start,
            Action::OnStop => &c.on_stop,
            Action::OnRestart => &c.on_restart,
            Action::OnReload => &c.on_reload,
            Action::OnRoleChange => &c.on_role_change,
        };
        let Some(argv) = argv.clone() else { return };
        if let Some(mut old) = self.cb.running.take()
            && old.try_wait().ok().flatten().is_none()
        {
            tracing::info!(pid = old.id(), "ending the callback still running before the next one");
            let _ = old.start_kill();
        }
        let role = self.cb.role.as_str();
        let mut cmd = self.command(&argv[0]);
        cmd.args(&argv[1..]).args([action.as_str(), role, self.scope.as_str()]);
        cmd.stdout(Stdio::inherit()).stderr(Stdio::inherit()).kill_on_drop(false);
        match cmd.spawn() {
            Ok(child) => {
                tracing::info!(callback = action.as_str(), role, command = argv.join(" "), "callback started");
                self.cb.running = Some(child);
            }
            Err(e) => {
                tracing::error!(callback = action.as_str(), command = argv.join(" "), error = %e, "callback could not be started")
            }
        }
    }

    /// `pre_promote`: whether the promotion may go ahead (no script, or it exited 0 within
    /// [`PRE_PROMOTE_LIMIT`]).
    pub async fn pre_promote(&self) -> bool {
        let Some(argv) = self.cfg.callbacks.pre_promote.clone() else { return true };
        match self.script("pre_promote", &argv, PRE_PROMOTE_LIMIT).await {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(error = %e, "pre_promote failed: not promoting");
                false
            }
        }
    }

    /// `before_stop`, before a stop of a running server; only logged.
    pub(super) async fn before_stop(&self, limit: Duration) {
        if let Some(argv) = self.cfg.callbacks.before_stop.clone()
            && let Err(e) = self.script("before_stop", &argv, limit).await
        {
            tracing::warn!(error = %e, "before_stop failed; stopping PostgreSQL anyway");
        }
    }

    async fn script(&self, what: &str, argv: &[String], limit: Duration) -> Result<(), String> {
        let mut cmd = self.command(&argv[0]);
        cmd.args(&argv[1..]).stdout(Stdio::inherit()).stderr(Stdio::inherit()).kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| format!("{what} `{}`: start: {e}", argv.join(" ")))?;
        match tokio::time::timeout(limit, child.wait()).await {
            Ok(Ok(s)) if s.success() => {
                tracing::info!(script = what, command = argv.join(" "), "script exited 0");
                Ok(())
            }
            Ok(Ok(s)) => Err(format!("{what} `{}` exited with {s}", argv.join(" "))),
            Ok(Err(e)) => Err(format!("{what} `{}`: wait: {e}", argv.join(" "))),
            Err(_) => Err(format!("{what} `{}` still ran after {limit:?}; ended", argv.join(" "))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_former_primary_starting_as_a_replica_is_a_role_change_and_a_restart_is_a_restart() {
        use Action::*;
        use Role::*;
        assert_eq!(after_start(true, Primary, Replica, None), OnRoleChange);
        assert_eq!(after_start(true, Demoted, Replica, None), OnRoleChange);
        assert_eq!(after_start(true, Replica, Replica, None), OnStart);
        assert_eq!(after_start(false, Demoted, Replica, None), OnStart, "nothing called yet: a first start");
        assert_eq!(after_start(true, Primary, Primary, Some(OnRestart)), OnRestart);
        assert_eq!(after_start(true, Demoted, Primary, None), OnStart);
    }
}
