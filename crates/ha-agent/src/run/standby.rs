//! Standby clusters (`standby_cluster` in the config key): the leader key's holder is the
//! standby leader, a replica of a remote primary (or of its archive) that the other members
//! follow; `patronictl demote-cluster` sets `standby_cluster` on a running cluster and
//! `promote-cluster` clears it (the standby leader is then an ordinary leader holding the key
//! with a replica, and promotes: `core::decide`).

use anyhow::Context;
use outrigger_schema::{ConfigValue, StandbyCluster};

use super::{Agent, Read};
use crate::config::ReplicaMethod;
use crate::core::{ClusterState, Outcome, PgView, REMOTE_PRIMARY};
use crate::pg::StopMode;
use crate::pg::text::Upstream;

/// Where the standby leader streams from: `standby_cluster`'s `host` and `port` (5432 when
/// only a host is given), through its `primary_slot_name`. `None` without a host.
pub(super) fn remote_upstream(sc: &StandbyCluster) -> Option<Upstream> {
    let host = sc.host.clone()?;
    Some(Upstream {
        member: REMOTE_PRIMARY.to_owned(),
        host,
        port: sc.port.unwrap_or(5432),
        remote: true,
        remote_slot: sc.primary_slot_name.clone(),
    })
}

/// The recovery settings `standby_cluster` gives every member (`restore_command`,
/// `archive_cleanup_command`), and the standby leader alone (`recovery_min_apply_delay`: the
/// others replay what it replayed), replacing any set elsewhere.
pub(super) fn standby_parameters(params: &mut Vec<(String, String)>, sc: &StandbyCluster, leader: bool) {
    let mut set = |k: &str, v: &Option<String>| {
        if let Some(v) = v {
            super::sync::set_param(params, k, v.clone());
        }
    };
    set("restore_command", &sc.restore_command);
    set("archive_cleanup_command", &sc.archive_cleanup_command);
    if leader {
        set("recovery_min_apply_delay", &sc.recovery_min_apply_delay);
    }
}

impl Agent {
    /// The standby leader: PostgreSQL configured as a replica of the remote primary (started
    /// if stopped, reloaded when that changed), the members' slots kept on it, and its
    /// position published in `status` (the other members' lag limit counts from it).
    pub(super) async fn lead_standby(
        &mut self,
        read: Option<&Read>,
        pg: &PgView,
        upstream: Option<&str>,
    ) -> anyhow::Result<()> {
        let sc = self.dyn_config.standby_cluster.clone().context("standby_cluster is not set")?;
        let up = match upstream {
            Some(u) => Some(self.upstream_of(read, u).context("standby_cluster names no host to stream from")?),
            None => None,
        };
        self.pg.set_standby_leader(true);
        let mut params = self.cluster_params(false);
        standby_parameters(&mut params, &sc, true);
        let changed = self.pg.write_config(&params, true, up.as_ref(), self.wal_log_hints())?;
        if self.memory.upstream() != upstream {
            tracing::info!(
                host = up.as_ref().map(|u| u.host.as_str()),
                port = up.as_ref().map(|u| u.port),
                slot = up.as_ref().and_then(|u| u.remote_slot.as_deref()),
                restore_command = sc.restore_command.as_deref(),
                "standby leader: following the remote primary"
            );
        }
        self.record(Outcome::ConfiguredUpstream(upstream.map(str::to_owned)));
        match pg {
            PgView::Stopped(_) => {
                self.announce(read, pg, "starting").await;
                self.start().await;
                return Ok(());
            }
            PgView::Running(_) if changed => {
                self.pending_restart = !self.pg.reload().await?.is_empty();
            }
            _ => {}
        }
        if let (Some(read), PgView::Running(r)) = (read, pg) {
            self.manage_slots(&read.view).await;
            self.permanent_positions.clear();
            self.write_status(&read.view, r.wal_position).await;
        }
        Ok(())
    }

    /// `standby_cluster` was set while we lead a primary: a fast stop (its shutdown
    /// checkpoint reaches every connected replica before the walsenders end), the checkpoint
    /// published as the cluster's position (as Patroni), then a start as the standby leader.
    /// The key stays ours throughout, so nobody races meanwhile.
    pub(super) async fn demote_cluster(&mut self, read: Option<&Read>, pg: &PgView) -> anyhow::Result<()> {
        tracing::info!("standby_cluster is set: demoting the cluster (stopping the primary)");
        self.announce(read, pg, "demoting").await;
        self.pg.stop(StopMode::Fast).await?;
        self.lease.disarm(true);
        self.sync_ssn = None;
        let (pg, _) = self.pg.observe(None).await;
        if let PgView::Stopped(ctl) = &pg
            && ctl.state == ClusterState::ShutDown
        {
            let mut status = self.last_status.clone().unwrap_or_default();
            status.optime = ctl.checkpoint_lsn;
            self.put_status(status).await;
        }
        let upstream = self.dyn_config.standby_cluster.as_ref().and_then(crate::core::standby_upstream);
        self.lead_standby(read, &pg, upstream).await
    }

    /// A standby cluster's first member: a copy of the remote primary by `standby_cluster`'s
    /// `create_replica_methods` (names of this member's methods; its own list when not set),
    /// started as the standby leader. Returns the copy's system identifier (the remote
    /// cluster's), for `initialize`.
    pub(super) async fn bootstrap_standby(
        &mut self,
        sc: &StandbyCluster,
        boot: Option<&ConfigValue>,
    ) -> anyhow::Result<u64> {
        let methods = if sc.create_replica_methods.is_empty() {
            self.cfg.postgresql.create_replica_methods.clone()
        } else {
            sc.create_replica_methods
                .iter()
                .map(|name| match name.as_str() {
                    "basebackup" | "pg_basebackup" => Ok(ReplicaMethod::Basebackup),
                    _ => self
                        .cfg
                        .postgresql
                        .create_replica_methods
                        .iter()
                        .find(|m| matches!(m, ReplicaMethod::Command { name: n, .. } if n == name))
                        .cloned()
                        .with_context(|| {
                            format!("standby_cluster.create_replica_methods names {name:?}, which postgresql.create_replica_methods does not define")
                        }),
                })
                .collect::<anyhow::Result<Vec<_>>>()?
        };
        let up = remote_upstream(sc);
        self.create_replica_by(&methods, up.as_ref().map(|u| (u.host.as_str(), u.port))).await?;
        let mut params = boot.map(ConfigValue::parameters).unwrap_or_default();
        standby_parameters(&mut params, sc, true);
        self.pg.write_config(&params, true, up.as_ref(), self.bootstrap_hints(boot))?;
        self.record(Outcome::Cloned { upstream: up.as_ref().map(|u| u.member.clone()) });
        self.pg.set_standby_leader(true);
        self.pg.start().await?;
        Ok(self.pg.controldata().await?.sysid)
    }
}
