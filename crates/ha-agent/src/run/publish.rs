//! Publishing what is true now: the member key (on our lease), and the REST snapshot that
//! health checks answer from.

use outrigger_schema::{MemberRole, MemberValue, PATRONI_COMPAT_VERSION, PatroniInfo, StatusJson, XlogStatus};

use super::{Agent, Read, wall_ms};
use crate::control::Snapshot;
use crate::core::PgView;
use crate::pg::Extra;

impl Agent {
    pub(super) async fn publish(&mut self, read: Option<&Read>, pg: &PgView, extra: Option<&Extra>) {
        let i_lead = read.and_then(|r| r.view.leader.as_ref()).is_some_and(|l| l.name == self.cfg.name);
        // A standby cluster's key holder running as a replica is its standby leader.
        let standby_leader = self.dyn_config.standby_cluster.is_some() && i_lead;
        let (state, role, timeline, position) = match pg {
            PgView::Running(r) => (
                "running",
                match (r.primary, standby_leader) {
                    (true, _) => MemberRole::Primary,
                    (false, true) => MemberRole::StandbyLeader,
                    (false, false) => MemberRole::Replica,
                },
                Some(r.timeline),
                Some(r.wal_position),
            ),
            // A postmaster that does not answer SQL and is not a standby may take writes: it
            // says "primary", so that peers never count it as safely gone.
            PgView::Starting { standby: false, .. } => ("starting", MemberRole::Primary, None, None),
            PgView::Starting { .. } => ("starting", MemberRole::Replica, None, None),
            PgView::Stopped(c) => ("stopped", MemberRole::Replica, Some(c.timeline), None),
            PgView::NoData => ("stopped", MemberRole::Uninitialized, None, None),
            PgView::Unusable { .. } => ("stopped", MemberRole::Uninitialized, None, None),
        };
        let state = self.busy_state.unwrap_or(state);
        let replica = matches!(pg, PgView::Running(r) if !r.primary);
        let tags = self.settings.tags.to_json();
        let member = MemberValue {
            conn_url: self.cfg.conn_url(),
            api_url: self.cfg.api_url(),
            state: state.to_owned(),
            role: role.clone(),
            version: PATRONI_COMPAT_VERSION.to_owned(),
            proxy_url: None,
            xlog_location: position,
            receive_lsn: if replica { extra.and_then(|e| e.receive_lsn) } else { None },
            replay_lsn: if replica { extra.and_then(|e| e.replay_lsn) } else { None },
            replication_state: if replica {
                Some(if extra.is_some_and(|e| e.streaming) { "streaming" } else { "in archive recovery" }.to_owned())
            } else {
                None
            },
            timeline,
            tags: tags.clone(),
            pending_restart: self.pending_restart.then_some(true),
            pending_restart_reason: None,
            scheduled_restart: self.scheduled_restart.as_ref().map(super::commands::ScheduledRestart::json),
            checkpoint_after_promote: None,
            pause: self.dyn_config.pause.then_some(true),
            extra: serde_json::Map::new(),
        };
        if let (Some(lease), Some(_)) = (self.lease.view().id, read) {
            let json = serde_json::to_string(&member).unwrap_or_default();
            // Rewritten when it changed, and at least once per ttl: a late copy of an older
            // write (delivered by a member that hung) must not stay.
            let due = self.last_member_at.is_none_or(|t| self.clock.now().since(t) >= self.settings.timings.ttl);
            if due || self.last_member.as_ref() != Some(&(lease, json.clone())) {
                match self.dcs.touch_member(&member, lease).await {
                    Ok(()) => {
                        self.last_member = Some((lease, json));
                        self.last_member_at = Some(self.clock.now());
                    }
                    Err(e) => {
                        self.metrics.etcd_errors.with_label_values(&["write"]).inc();
                        tracing::debug!(error = %e, "write member key");
                    }
                }
            }
        }
        let unlocked = read.map(|r| r.view.leader.is_none());
        let xlog = match pg {
            PgView::Running(r) if r.primary => {
                Some(XlogStatus { location: Some(r.wal_position), ..XlogStatus::default() })
            }
            PgView::Running(_) => Some(XlogStatus {
                received_location: extra.and_then(|e| e.receive_lsn),
                replayed_location: extra.and_then(|e| e.replay_lsn),
                replayed_timestamp: Some(serde_json::Value::Null),
                paused: Some(false),
                ..XlogStatus::default()
            }),
            _ => None,
        };
        let status = StatusJson {
            state: state.to_owned(),
            postmaster_start_time: extra.and_then(|e| e.postmaster_start_time.clone()),
            role,
            server_version: extra.map(|e| e.server_version),
            xlog,
            timeline,
            replication_state: member.replication_state.clone(),
            cluster_unlocked: unlocked,
            dcs_last_seen: self.dcs_last_seen,
            tags,
            database_system_identifier: pg.sysid().map(|s| s.to_string()),
            pending_restart: self.pending_restart.then_some(true),
            watchdog_failed: self.lease.watchdog_failed().then_some(true),
            lease_revoked_recently: self.lease.view().revoked_within(self.clock.now(), self.cover()).then_some(true),
            patroni: Some(PatroniInfo {
                version: PATRONI_COMPAT_VERSION.to_owned(),
                scope: self.dcs.layout().scope().to_owned(),
                name: Some(self.cfg.name.clone()),
            }),
            extra: {
                // Patroni's status JSON carries these when set; the REST API serves it as is.
                let mut m = serde_json::Map::new();
                if let Some(r) = &member.scheduled_restart {
                    m.insert("scheduled_restart".into(), r.clone());
                }
                if self.dyn_config.pause {
                    m.insert("pause".into(), serde_json::Value::Bool(true));
                }
                m
            },
        };
        let view = read.map(|r| &r.view);
        let (sync_standby, quorum_standby) = self.listed_sync(read, pg);
        let now = self.clock.now();
        let lease = self.lease.view();
        // failsafe_mode: etcd unreadable, this primary confirmed by every member.
        let failsafe_active = read.is_none() && pg.writable() && lease.failsafe(now);
        if let Some(v) = view {
            self.failsafe_member = v.failsafe.as_ref().is_some_and(|f| f.iter().any(|(n, _)| *n == self.cfg.name));
        }
        // A member that leads (or may take writes) refuses POST /failsafe.
        self.api.failsafe().set_leading(i_lead || pg.may_accept_writes());
        self.api.publish(
            Snapshot {
                status: Some(status),
                // Patroni's `is_leader()`: the key is ours while the lease is trusted, or, in
                // failsafe_mode with etcd unreachable, while the members' confirmation holds.
                leader_until: if failsafe_active {
                    lease.failsafe_until.map(|u| self.clock.instant(u).into())
                } else {
                    // A standby leader holds the key as a primary does (`/leader` and
                    // `/standby_leader` answer 200 on its lease).
                    (i_lead && (pg.writable() || (standby_leader && matches!(pg, PgView::Running(_)))))
                        .then_some(lease)
                        .filter(|l| l.id.is_some())
                        .map(|l| self.clock.instant(l.fence_at(&self.settings.timings)).into())
                },
                paused: self.dyn_config.pause,
                sync_standby,
                quorum_standby,
                leader_optime: view.and_then(|v| v.status_optime),
                maximum_lag_on_failover: self.dyn_config.maximum_lag_on_failover,
                cycle_started_ms: self.cycle_started_ms,
                failsafe_mode: self.dyn_config.failsafe_mode,
                failsafe_active,
                failsafe_member: self.failsafe_member,
            },
            wall_ms() / 1000,
        );
    }

    /// Observes and publishes now (after an action changed what the member key says).
    pub(super) async fn publish_now(&mut self) {
        let read = self.read().await;
        let (pg, extra) = self.pg.observe(self.current_upstream(read.as_ref()).as_ref()).await;
        self.publish(read.as_ref(), &pg, extra.as_ref()).await;
    }
}
