//! Keeping etcd's raft leader off the primary's host (`[etcd_leader]`), where etcd runs on the
//! PostgreSQL hosts. When the primary's host fails and it also held the raft leadership, etcd
//! first elects a new leader, and that leader restarts every lease's TTL (plus an election
//! timeout): the failover then takes an election and a whole ttl longer. So while this member
//! leads, it hands the raft leadership on whenever the etcd member on its own host holds it.
//!
//! The check runs on its own task (one at a time, at most once per `loop_wait`): a frozen local
//! etcd member must not hold up the HA loop. A move happens at most once per `ttl`. etcd
//! refuses it without the root role when auth is on: said once, then not tried again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use outrigger_etcd::EtcdError;

use super::Agent;
use crate::core::Moment;

#[derive(Debug, Default)]
pub(super) struct Affinity {
    running: Arc<AtomicBool>,
    refused: Arc<AtomicBool>,
    last_check: Option<Moment>,
    last_move: Arc<std::sync::Mutex<Option<Moment>>>,
}

impl Agent {
    /// Called by the leader's housekeeping.
    pub(super) fn keep_raft_leader_off(&mut self) {
        let Some(local) = self.cfg.local_etcd else { return };
        let now = self.clock.now();
        let a = &mut self.raft;
        if a.refused.load(Ordering::SeqCst)
            || a.running.load(Ordering::SeqCst)
            || a.last_check.is_some_and(|t| now.since(t) < self.settings.timings.loop_wait)
            || a.last_move
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .is_some_and(|t| now.since(t) < self.settings.timings.ttl)
        {
            return;
        }
        a.last_check = Some(now);
        a.running.store(true, Ordering::SeqCst);
        let (etcd, running, refused, last_move, clock) =
            (self.dcs.etcd().clone(), a.running.clone(), a.refused.clone(), a.last_move.clone(), self.clock);
        tokio::spawn(async move {
            match etcd.move_raft_leader_off(local).await {
                Ok(Some(to)) => {
                    *last_move.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(clock.now());
                    tracing::info!(to = %to, "moved etcd's raft leadership off the primary's host");
                }
                Ok(None) => {}
                Err(e @ EtcdError::Rejected { .. }) => {
                    refused.store(true, Ordering::SeqCst);
                    tracing::warn!(error = %e, "etcd refused to move its raft leadership (needs the root role with auth); not trying again");
                }
                Err(e) => tracing::debug!(error = %e, "etcd raft leadership check"),
            }
            running.store(false, Ordering::SeqCst);
        });
    }
}
