//! Actions the REST API asks the loop for (`POST /restart`, `/reload`, `/reinitialize`,
//! `DELETE /restart`), with Patroni's codes and texts, and scheduled restarts.

use std::time::Duration;

use tokio::sync::mpsc;

use super::{Agent, Read, wall_ms};
use crate::control::{Command, Reply, RestartRequest};
use crate::core::schedule::format_rfc3339_ms;
use crate::core::{Outcome, PgView};
use crate::pg::StopMode;
use crate::pg::text::Upstream;

/// A restart waiting for its time, as published in the member key (`scheduled_restart`).
#[derive(Debug, Clone)]
pub(super) struct ScheduledRestart {
    req: RestartRequest,
    at_ms: u64,
    /// The postmaster's start time when it was scheduled: if PostgreSQL restarted meanwhile,
    /// the scheduled restart is cancelled (as Patroni does).
    postmaster_start_time: Option<String>,
}

impl ScheduledRestart {
    pub(super) fn json(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        m.insert("schedule".into(), format_rfc3339_ms(self.at_ms).into());
        if let Some(t) = &self.postmaster_start_time {
            m.insert("postmaster_start_time".into(), t.clone().into());
        }
        if let Some(r) = &self.req.role {
            m.insert("role".into(), r.clone().into());
        }
        if let Some(v) = self.req.postgres_version {
            m.insert("postgres_version".into(), v.into());
        }
        if self.req.restart_pending {
            m.insert("restart_pending".into(), true.into());
        }
        serde_json::Value::Object(m)
    }
}

/// Patroni's texts for a second action while one runs.
fn busy_reply(cmd: Command, action: &'static str) {
    let (reply, answer) = match cmd {
        Command::Restart { reply, .. } => (reply, Reply::new(503, format!("{action} already in progress"))),
        // The scheduled restart is kept; it runs (or is cancelled) once the action is done.
        Command::CancelRestart { reply } => (reply, Reply::new(503, format!("{action} already in progress"))),
        Command::Reload { reply } => (reply, Reply::new(202, "reload scheduled")),
        Command::Reinitialize { force: true, reply, .. } if action == "reinitialize" => {
            (reply, Reply::new(200, "reinitialize started"))
        }
        Command::Reinitialize { reply, .. } => (reply, Reply::new(503, format!("{action} already in progress"))),
    };
    let _ = reply.send(answer);
}

/// Runs `work` (a long action) while answering REST actions that arrive meanwhile, so that
/// they get Patroni's "already in progress" instead of waiting for it to end.
pub(super) async fn while_busy<T>(
    commands: &mut mpsc::Receiver<Command>,
    action: &'static str,
    work: impl std::future::Future<Output = T>,
) -> T {
    tokio::pin!(work);
    loop {
        tokio::select! {
            out = &mut work => return out,
            Some(cmd) = commands.recv() => busy_reply(cmd, action),
        }
    }
}

impl Agent {
    /// Runs an action the REST API asked for and answers it.
    pub(super) async fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Restart { req, reply } => {
                let answer = if let Some(at_ms) = req.schedule_ms {
                    self.schedule_restart(req, at_ms).await
                } else {
                    self.restart(&req).await
                };
                let _ = reply.send(answer);
            }
            Command::CancelRestart { reply } => {
                let answer = if self.scheduled_restart.take().is_some() {
                    tracing::info!("scheduled restart deleted");
                    self.publish_now().await;
                    Reply::new(200, "scheduled restart deleted")
                } else {
                    Reply::new(404, "no restarts are scheduled")
                };
                let _ = reply.send(answer);
            }
            Command::Reload { reply } => {
                // Like Patroni's SIGHUP: answered at once, done by the loop right after.
                self.force_reload = true;
                let _ = reply.send(Reply::new(202, "reload scheduled"));
            }
            Command::Reinitialize { force: _, from_leader, reply } => self.reinitialize(from_leader, reply).await,
        }
    }

    /// `POST /restart` with a schedule: one at a time (Patroni's 409 otherwise).
    async fn schedule_restart(&mut self, mut req: RestartRequest, at_ms: u64) -> Reply {
        if self.dyn_config.pause {
            return Reply::new(500, "Can't schedule restart in the paused state");
        }
        if self.scheduled_restart.is_some() {
            return Reply::new(409, "Another restart is already scheduled");
        }
        req.schedule_ms = None;
        let (_, extra) = self.pg.observe(None).await;
        self.scheduled_restart =
            Some(ScheduledRestart { req, at_ms, postmaster_start_time: extra.and_then(|e| e.postmaster_start_time) });
        tracing::info!(at = format_rfc3339_ms(at_ms), "restart scheduled");
        self.publish_now().await;
        Reply::new(202, "Restart scheduled")
    }

    /// Runs the scheduled restart when due (dropped when stale or when PostgreSQL restarted
    /// meanwhile, as Patroni does). Returns the outcome when it ran.
    pub(super) async fn run_scheduled_restart(
        &mut self,
        pg: &PgView,
        extra: Option<&crate::pg::Extra>,
    ) -> Option<Reply> {
        let sr = self.scheduled_restart.as_ref()?;
        let now = wall_ms();
        if sr.at_ms > now {
            return None;
        }
        let sr = self.scheduled_restart.take()?;
        let started = extra.and_then(|e| e.postmaster_start_time.clone());
        if matches!(pg, PgView::Running(_)) && sr.postmaster_start_time.is_some() && started != sr.postmaster_start_time
        {
            tracing::info!("cancelling the scheduled restart: PostgreSQL restarted meanwhile");
            return None;
        }
        let stale_ms = u64::try_from((self.settings.timings.loop_wait * 3 / 2).as_millis()).unwrap_or(u64::MAX);
        if now - sr.at_ms > stale_ms {
            tracing::warn!(at = format_rfc3339_ms(sr.at_ms), "dropping a stale scheduled restart");
            return None;
        }
        Some(self.restart(&sr.req).await)
    }

    /// When the loop must wake up for something scheduled (switchover or restart) before its
    /// next regular cycle.
    pub(super) fn scheduled_wake(&self) -> Option<tokio::time::Instant> {
        let at =
            [self.switchover_at_ms, self.scheduled_restart.as_ref().map(|r| r.at_ms)].into_iter().flatten().min()?;
        let now = wall_ms();
        Some(tokio::time::Instant::now() + Duration::from_millis(at.saturating_sub(now)))
    }

    /// `POST /restart` now: checks Patroni's filters, then a fast stop and a start with the
    /// same configuration. The leader keeps its key throughout (the lease keeper renews it on
    /// its own task), so nobody fails over; if PostgreSQL does not come back, the next cycle
    /// releases the key as for any failed start.
    async fn restart(&mut self, req: &RestartRequest) -> Reply {
        let (pg, extra) = self.pg.observe(self.upstream_ref().as_ref()).await;
        let role = match &pg {
            PgView::Running(r) if r.primary => "primary",
            _ => "replica",
        };
        let version = extra.as_ref().map_or(0, |e| e.server_version);
        let pending = self.pending_restart;
        let why_not = if req.role.as_deref().is_some_and(|r| r != role) {
            Some("host role mismatch")
        } else if req.postgres_version.is_some_and(|v| v <= version) {
            Some("postgres version mismatch")
        } else if req.restart_pending && !pending {
            Some("pending restart flag is not set")
        } else {
            None
        };
        if let Some(why) = why_not {
            tracing::info!(reason = why, "not proceeding with the restart");
            return Reply::new(503, "restart conditions are not satisfied");
        }
        if matches!(pg, PgView::Starting { .. }) {
            return Reply::new(503, "postgres is still starting");
        }
        tracing::info!(role, "restarting PostgreSQL (asked through the REST API)");
        self.set_busy(Some("restarting"));
        self.publish(None, &pg, extra.as_ref()).await;
        let limit = req.timeout.unwrap_or(self.dyn_config.primary_start_timeout);
        let Self { pg: postgres, commands, .. } = self;
        let done = while_busy(commands, "restart", async {
            postgres.stop_for_restart(StopMode::Fast).await?;
            match tokio::time::timeout(limit, postgres.start()).await {
                Ok(r) => r.map(|()| true),
                Err(_) => Ok(false),
            }
        })
        .await;
        self.set_busy(None);
        let answer = match done {
            Ok(true) => {
                self.record(Outcome::Started);
                if let Ok(p) = self.pg.pending_restart().await {
                    self.pending_restart = !p.is_empty();
                }
                Reply::new(200, "restarted successfully")
            }
            Ok(false) => Reply::new(503, "postgres is still starting"),
            Err(e) => {
                self.failed_start(&e);
                Reply::new(503, "restart failed")
            }
        };
        self.publish_now().await;
        answer
    }

    fn upstream_ref(&self) -> Option<Upstream> {
        // Without a fresh read the address is unknown; the name is what `observe` compares.
        self.memory.upstream().map(|m| Upstream::member(m, String::new(), 0))
    }

    /// `POST /reload` (and a forced reload): write the configuration for our current role
    /// from the dynamic config in force, then reload PostgreSQL.
    pub(super) async fn reload_now(&mut self, read: Option<&Read>, pg: &PgView) {
        let replica = matches!(pg, PgView::Running(r) if !r.primary);
        let up = if replica { self.current_upstream(read) } else { None };
        let r = async {
            self.pg.write_config(&self.cluster_params(!replica), replica, up.as_ref(), self.wal_log_hints())?;
            self.pg.reload().await
        }
        .await;
        match r {
            Ok(pending) => {
                tracing::info!(pending_restart = pending.join(","), "PostgreSQL reloaded");
                self.pending_restart = !pending.is_empty();
            }
            Err(e) => tracing::warn!(error = format!("{e:#}"), "reload"),
        }
    }

    /// `POST /reinitialize`: replicas only. Answers at once, then stops PostgreSQL, removes
    /// the data directory and clones again from the leader (or, unless `from_leader`, from a
    /// running member tagged `clonefrom`), and starts as a replica of the leader.
    async fn reinitialize(&mut self, from_leader: bool, reply: tokio::sync::oneshot::Sender<Reply>) {
        let Some(read) = self.read().await else {
            let _ = reply.send(Reply::new(503, "DCS is not accessible"));
            return;
        };
        let Some(leader) = read.view.leader.as_ref().map(|l| l.name.clone()) else {
            let _ = reply.send(Reply::new(503, "Cluster has no leader, can not reinitialize"));
            return;
        };
        if leader == self.cfg.name {
            let _ = reply.send(Reply::new(503, "I am the leader, can not reinitialize"));
            return;
        }
        let me = self.cfg.name.as_str();
        let source = read
            .view
            .members
            .iter()
            .find(|m| !from_leader && m.tags.clonefrom && m.running && m.name != me && m.name != leader)
            .map_or(leader.clone(), |m| m.name.clone());
        let (Some(src), Some(up)) = (self.upstream_of(Some(&read), &source), self.upstream_of(Some(&read), &leader))
        else {
            let _ = reply.send(Reply::new(503, format!("no conn_url for {source}")));
            return;
        };
        let _ = reply.send(Reply::new(200, "reinitialize started"));
        tracing::info!(source = %source, "reinitializing (asked through the REST API)");
        let (pg, _) = self.pg.observe(None).await;
        self.announce(Some(&read), &pg, "creating replica").await;
        let params = self.dyn_config.parameters.clone();
        let hints = self.wal_log_hints();
        let Self { pg: postgres, commands, .. } = self;
        let r = while_busy(commands, "reinitialize", async {
            postgres.stop(StopMode::Immediate).await?;
            postgres.remove_data()?;
            postgres.forget_role();
            postgres.basebackup(&src.host, src.port).await?;
            postgres.write_config(&params, true, Some(&up), hints)?;
            postgres.start().await
        })
        .await;
        self.set_busy(None);
        self.record(Outcome::Cloned { upstream: Some(leader) });
        match r {
            Ok(()) => tracing::info!(source = %source, "reinitialized"),
            Err(e) => {
                tracing::error!(error = format!("{e:#}"), "reinitialize failed");
                self.record(Outcome::StartFailed);
            }
        }
        self.publish_now().await;
    }
}
