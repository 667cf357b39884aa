//! Synchronous replication, the shell's side: carries out `core::sync`'s steps on the
//! primary (the `sync` key with compare-and-swap, `synchronous_standby_names` with a reload)
//! and sets both up before this member takes writes.

use std::time::{Duration, Instant};

use anyhow::Context;

use super::{Agent, Read};
use crate::core::sync::{self, SyncInputs, SyncKey, SyncMode, SyncStep};
use crate::core::{PgView, RunningPg};

/// At most this many steps per cycle (a full change is: unlist, set, confirm).
const MAX_STEPS: usize = 6;

impl Agent {
    /// The cluster's PostgreSQL parameters, with the managed `synchronous_standby_names` on a
    /// primary (synchronous mode on). A replica gets the configured value: the setting only
    /// matters on a primary, and the agent sets it before promoting.
    pub(super) fn cluster_params(&self, primary: bool) -> Vec<(String, String)> {
        let mut p = self.dyn_config.parameters.clone();
        if !primary && self.logical_slots_permanent() {
            // Copies of logical slots need the leader to keep their catalog rows (Patroni
            // enforces this too).
            set_param(&mut p, "hot_standby_feedback", "on".into());
        }
        if !primary && let Some(sc) = &self.dyn_config.standby_cluster {
            super::standby::standby_parameters(&mut p, sc, false);
        }
        if primary && let Some(ssn) = &self.sync_ssn {
            set_param(&mut p, "synchronous_standby_names", ssn.to_string());
        }
        p
    }

    /// Before this member takes writes (a promotion, or a start as primary while it holds
    /// the leader key): the `sync` key and `synchronous_standby_names` as `core::sync` wants
    /// them. An error (the key changed under us) postpones the promotion.
    pub(super) async fn sync_before_primary(&mut self, read: Option<&Read>, promotion: bool) -> anyhow::Result<()> {
        let key = read.and_then(|r| r.view.sync.as_ref());
        let b = sync::before_primary(&self.cfg.name, &self.dyn_config.sync, key, promotion);
        if let Some(members) = &b.key {
            let rev = key.map_or(0, |k| k.mod_revision);
            let written = self.dcs.write_sync(&self.cfg.name, members, 0, rev).await?;
            anyhow::ensure!(
                written.is_some(),
                "postponing the promotion: the sync key was changed by someone else since it was read"
            );
            tracing::info!(listed = members.join(","), "sync key: this member leads");
        }
        if self.dyn_config.sync.mode == SyncMode::Off {
            self.sync_ssn = None;
        } else if let Some(ssn) = b.ssn {
            tracing::info!(synchronous_standby_names = %ssn, "synchronous replication before taking writes");
            self.sync_ssn = Some(ssn);
        }
        self.sync_memory.clear();
        Ok(())
    }

    /// The leader's synchronous replication, step by step (`core::sync::plan`) until done,
    /// a compare-and-swap fails, or `loop_wait` is used up.
    pub(super) async fn sync_replication(&mut self, read: &Read, r: &RunningPg) {
        let settings = self.dyn_config.sync.clone();
        let mut key: Option<SyncKey> = read.view.sync.clone();
        let started = Instant::now();
        for _ in 0..MAX_STEPS {
            if started.elapsed() >= self.settings.timings.loop_wait {
                return;
            }
            let (walsenders, in_force, flush) = match self.sync_facts(r).await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(
                        error = format!("{e:#}"),
                        "synchronous replication: cannot read the primary's state"
                    );
                    return;
                }
            };
            self.sync_memory.observe(&in_force, flush, self.clock.now());
            let step = sync::plan(&SyncInputs {
                me: &self.cfg.name,
                settings: &settings,
                key: key.as_ref(),
                members: &read.view.members,
                walsenders: &walsenders,
                in_force: &in_force,
                memory: &self.sync_memory,
                flush,
            });
            if step == SyncStep::Done {
                return;
            }
            tracing::info!("{step}");
            match self.sync_step(&step, key.as_ref()).await {
                Ok(Some(new_key)) => key = new_key,
                Ok(None) => return,
                Err(e) => {
                    self.metrics.etcd_errors.with_label_values(&["write"]).inc();
                    tracing::warn!(error = format!("{e:#}"), "synchronous replication step failed");
                    return;
                }
            }
        }
    }

    async fn sync_facts(&mut self, r: &RunningPg) -> anyhow::Result<(Vec<sync::Walsender>, sync::Ssn, u64)> {
        let walsenders = self.pg.walsenders().await?;
        let in_force = self.pg.synchronous_standby_names().await?;
        let flush = self.pg.flush_lsn().await.unwrap_or(r.wal_position);
        Ok((walsenders, in_force, flush))
    }

    /// Carries out one step. `Ok(Some(key))`: done, go on with this `sync` key;
    /// `Ok(None)`: stop for this cycle (a compare failed; the next read decides again).
    async fn sync_step(&mut self, step: &SyncStep, key: Option<&SyncKey>) -> anyhow::Result<Option<Option<SyncKey>>> {
        let rev = key.map_or(0, |k| k.mod_revision);
        match step {
            SyncStep::Done => Ok(Some(key.cloned())),
            SyncStep::WriteKey { members, quorum, .. } => {
                match self.dcs.write_sync(&self.cfg.name, members, *quorum, rev).await? {
                    Some(new_rev) => Ok(Some(Some(SyncKey {
                        leader: Some(self.cfg.name.clone()),
                        members: members.clone(),
                        quorum: *quorum,
                        mod_revision: new_rev,
                    }))),
                    None => {
                        tracing::info!("the sync key was changed by someone else; deciding again next cycle");
                        Ok(None)
                    }
                }
            }
            SyncStep::DeleteKey => {
                if self.sync_ssn.take().is_some() {
                    // Back to the configured synchronous_standby_names first.
                    self.apply_primary_config().await?;
                }
                if !self.dcs.delete_sync(rev).await? {
                    return Ok(None);
                }
                Ok(Some(None))
            }
            SyncStep::SetNames(ssn) => {
                self.sync_ssn = Some(ssn.clone());
                self.apply_primary_config().await?;
                self.sync_memory.changed(self.clock.now());
                // Every backend and walsender reloads within moments; the standbys' marks are
                // taken after that (`sync::SETTLE`), past one more WAL record.
                tokio::time::sleep(sync::SETTLE + Duration::from_millis(100)).await;
                if let Err(e) = self.pg.write_wal_record().await {
                    tracing::debug!(
                        error = format!("{e:#}"),
                        "write a WAL record after changing synchronous_standby_names"
                    );
                }
                Ok(Some(key.cloned()))
            }
        }
    }

    /// Writes postgresql.conf for this primary and reloads it.
    async fn apply_primary_config(&mut self) -> anyhow::Result<()> {
        let params = self.cluster_params(true);
        if self.pg.write_config(&params, false, None, self.wal_log_hints()).context("write postgresql.conf")? {
            let pending = self.pg.reload().await.context("reload")?;
            self.pending_restart = !pending.is_empty();
        }
        Ok(())
    }

    /// Whether this replica is listed in the `sync` key with synchronous mode on: as a sync
    /// standby, or as a quorum standby in quorum mode (for `patroni_sync_standby`,
    /// `patroni_quorum_standby` and the REST status).
    pub(super) fn listed_sync(&self, read: Option<&Read>, pg: &PgView) -> (bool, bool) {
        let replica = matches!(pg, PgView::Running(r) if !r.primary);
        let listed = replica
            && self.dyn_config.sync.mode != SyncMode::Off
            && read.and_then(|r| r.view.sync.as_ref()).is_some_and(|k| k.active() && k.lists(&self.cfg.name));
        let quorum = self.dyn_config.sync.mode == SyncMode::Quorum;
        (listed && !quorum, listed && quorum)
    }
}

/// Sets parameter `name` to `value` in `params`, replacing any value it had (names compare
/// as PostgreSQL compares them, ignoring case).
pub(super) fn set_param(params: &mut Vec<(String, String)>, name: &str, value: String) {
    params.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
    params.push((name.to_owned(), value));
}
