//! The two input tasks: an etcd follower and a PostgreSQL poller. Each writes its view into a
//! watch channel; checks only ever read those views, never etcd or PostgreSQL themselves.
//!
//! Both log a failure once when it starts and once when it ends (a check port polled by three
//! HAProxies must not turn an etcd outage into a log flood), and count every failure.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use outrigger_etcd::{Change, ConnectOptions, Etcd, EtcdError, PerEndpoint, Snapshot, WatchUpdate};
use outrigger_schema::{ClusterKey, KeyLayout};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_postgres::types::PgLsn;
use tokio_postgres::{Client, NoTls, Statement};
use tokio_util::sync::CancellationToken;

use crate::config::PgSettings;
use crate::metrics::{EtcdOp, Metrics};
use crate::view::{BadValue, EtcdView, PgFailure, PgPoll, PgSample, PgView};

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Follows the cluster's keys: a full read, then a watch from its revision, plus a
/// linearizable read of the leader key every `confirm_interval` so that the view's age is
/// measured rather than assumed (a watch that is silent because nothing changed and one that
/// is silent because etcd is gone look the same).
pub struct EtcdFollower {
    pub opts: ConnectOptions,
    pub layout: KeyLayout,
    pub name: String,
    pub confirm_interval: Duration,
    pub view: watch::Sender<EtcdView>,
    pub metrics: Metrics,
}

impl EtcdFollower {
    /// Runs until `stop`. A broken session (read or watch failed) is followed at once by a read
    /// from every member; only when that fails too is the view unsynced. A new session starts
    /// after a short pause (growing while reads fail), from that read when it succeeded.
    ///
    /// The reads (the full one and the confirmations) go to every etcd member at once and the
    /// first answer counts (`PerEndpoint`): a frozen member still accepts connections, and a
    /// read waiting on it for the request timeout would age the view past `etcd_max_age`,
    /// turning a healthy primary's check to 503 (bench/ha-agent/client.sh showed HAProxy
    /// dropping the new primary for 200 ms that way after a host freeze).
    pub async fn run(self, stop: CancellationToken) {
        let reads = PerEndpoint::new(&self.opts);
        let mut client: Option<Etcd> = None;
        let mut backoff = MIN_BACKOFF;
        let mut healthy = true;
        // A full read made between sessions, for the next one to start from.
        let mut fresh: Option<(Snapshot, Instant)> = None;
        loop {
            let error = tokio::select! {
                () = stop.cancelled() => return,
                e = self.session(&reads, fresh.take(), &mut client, &mut healthy, &mut backoff) => e,
            };
            // The watch (on one member's connection) or a read failed. Another member may well
            // answer: re-read the keys from all at once, so that one member going away does not
            // turn the checks to 503; only when that fails too is the view unsynced.
            let (prefix, sent) = (self.layout.prefix(), Instant::now());
            let reread = tokio::select! {
                () = stop.cancelled() => return,
                r = reads.get_prefix(&prefix) => r,
            };
            if let Ok(snap) = reread {
                tracing::debug!(error = %error, revision = snap.revision, "etcd watch broke; keys re-read, watching again");
                self.apply_snapshot(&snap, sent);
                fresh = Some((snap, sent));
                // Watching again soon: the view ages from this read meanwhile.
                backoff = MIN_BACKOFF;
            } else {
                self.view.send_modify(EtcdView::watch_broken);
                if healthy {
                    tracing::warn!(error = %error, "etcd view lost; checks that need etcd fail once it is older than etcd_max_age");
                    healthy = false;
                } else {
                    tracing::debug!(error = %error, "etcd still unreachable");
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    fn touch(&self) {
        self.view.send_modify(|v| v.attempted_at = Some(Instant::now()));
    }

    /// One read-then-watch session (from `fresh` when given, a read made just before);
    /// returns only with the error that ended it.
    async fn session(
        &self,
        reads: &PerEndpoint,
        fresh: Option<(Snapshot, Instant)>,
        client: &mut Option<Etcd>,
        healthy: &mut bool,
        backoff: &mut Duration,
    ) -> EtcdError {
        self.touch();
        let etcd = match client {
            Some(c) => c.clone(),
            None => match Etcd::connect(&self.opts).await {
                Ok(c) => client.insert(c).clone(),
                Err(e) => {
                    self.metrics.etcd_error(EtcdOp::Read);
                    return e;
                }
            },
        };
        let prefix = self.layout.prefix();
        let leader_key = self.layout.key(ClusterKey::Leader);
        let (snap, sent) = match fresh {
            Some(f) => f,
            None => {
                let sent = Instant::now();
                match reads.get_prefix(&prefix).await {
                    Ok(s) => (s, sent),
                    Err(e) => {
                        self.metrics.etcd_error(EtcdOp::Read);
                        return e;
                    }
                }
            }
        };
        self.apply_snapshot(&snap, sent);
        if !*healthy {
            tracing::info!(revision = snap.revision, "etcd view synced again");
            *healthy = true;
        }
        *backoff = MIN_BACKOFF;
        let mut watch = etcd.watch_prefix(&prefix, snap.revision);
        let mut confirm = tokio::time::interval(self.confirm_interval);
        confirm.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        confirm.tick().await; // the first tick is immediate; the full read just confirmed
        let mut confirm_failing = false;
        // The confirmation read in flight, if any. It runs beside the watch, so that a slow read
        // (up to the request timeout) never holds back a leader change the watch delivers.
        let mut reading: Option<Pin<Box<ConfirmRead>>> = None;
        loop {
            tokio::select! {
                update = watch.next() => match update {
                    Ok(WatchUpdate::Changes { changes, .. }) => self.apply_changes(&changes),
                    Ok(WatchUpdate::Resync(snap)) => {
                        // The watch re-read the prefix itself; that read began at most one
                        // request timeout ago, which is what its confirmation is worth.
                        let began = Instant::now().checked_sub(self.opts.request_timeout).unwrap_or_else(Instant::now);
                        self.apply_snapshot(&snap, began);
                    }
                    Err(e) => {
                        self.metrics.etcd_error(EtcdOp::Watch);
                        return e;
                    }
                },
                _ = confirm.tick(), if reading.is_none() => {
                    self.touch();
                    let (reads, key, sent) = (reads.clone(), leader_key.clone(), Instant::now());
                    reading = Some(Box::pin(async move { (sent, reads.get_prefix(&key).await) }));
                }
                (sent, result) = in_flight(&mut reading) => {
                    reading = None;
                    match result {
                        Ok(s) => {
                            let value = s.get(&leader_key).map(|kv| kv.value.as_slice());
                            self.update(|v| v.apply_leader_read(value, s.revision, sent).err().into_iter().collect());
                            if confirm_failing {
                                tracing::info!("etcd confirmation reads succeed again");
                                confirm_failing = false;
                            }
                        }
                        Err(e) => {
                            // The view ages out by itself; the watch decides when to start over.
                            self.metrics.etcd_error(EtcdOp::Confirm);
                            if !confirm_failing {
                                tracing::warn!(error = %e, "etcd confirmation read failed");
                                confirm_failing = true;
                            }
                        }
                    }
                }
            }
        }
    }

    fn apply_snapshot(&self, snap: &Snapshot, sent: Instant) {
        let kvs = snap.kvs.iter().map(|kv| (kv.key.as_str(), kv.value.as_slice()));
        self.update(|v| v.apply_snapshot(&self.layout, &self.name, kvs, snap.revision, sent));
    }

    fn apply_changes(&self, changes: &[Change]) {
        self.update(|v| {
            changes
                .iter()
                .filter_map(|c| {
                    let (value, rev) = match c {
                        Change::Put(kv) => (Some(kv.value.as_slice()), kv.mod_revision),
                        Change::Delete { mod_revision, .. } => (None, *mod_revision),
                    };
                    v.apply_change(&self.layout, &self.name, c.key(), value, rev).err()
                })
                .collect()
        });
    }

    /// Applies `f` to the view; logs a leader change and every undecodable value.
    fn update(&self, f: impl FnOnce(&mut EtcdView) -> Vec<BadValue>) {
        let mut bad = Vec::new();
        let mut change = None;
        self.view.send_modify(|v| {
            let before = v.leader.clone();
            bad = f(v);
            if v.leader != before {
                change = Some((before, v.leader.clone()));
            }
        });
        if let Some((from, to)) = change {
            self.metrics.leader_changed();
            tracing::info!(
                from = from.as_deref().unwrap_or("-"),
                to = to.as_deref().unwrap_or("-"),
                "leader key changed"
            );
        }
        for b in bad {
            self.metrics.etcd_error(EtcdOp::Decode);
            tracing::warn!(key = %b.key, error = %b.error, "undecodable value in etcd; treated as absent");
        }
    }
}

/// A confirmation read: when it was sent, and what it returned.
type ConfirmRead = dyn Future<Output = (Instant, Result<Snapshot, EtcdError>)> + Send;

/// Completes with the read in flight; never, when there is none (its `select!` arm then just
/// never fires).
async fn in_flight(reading: &mut Option<Pin<Box<ConfirmRead>>>) -> (Instant, Result<Snapshot, EtcdError>) {
    match reading {
        Some(read) => read.await,
        None => std::future::pending().await,
    }
}

/// The poll query. One round trip; every function exists from PostgreSQL 10 on. The receiver
/// columns need superuser or `pg_monitor` (otherwise they read NULL: lag then comes from the
/// `status` key alone, and `replication_state` reads `in archive recovery`).
const POLL_SQL: &str = "SELECT pg_is_in_recovery(), \
    CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_flush_lsn() END, \
    pg_last_wal_receive_lsn(), \
    pg_last_wal_replay_lsn(), \
    CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() ELSE false END, \
    (SELECT status FROM pg_stat_wal_receiver), \
    (SELECT latest_end_lsn FROM pg_stat_wal_receiver)";

/// A live connection with its prepared poll statement. Dropping it ends the connection task.
struct PgConn {
    client: Client,
    statement: Statement,
    task: JoinHandle<()>,
}

impl Drop for PgConn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Polls the local PostgreSQL every `poll_interval`, each poll bounded by `timeout`.
pub struct PgPoller {
    pub settings: PgSettings,
    pub view: watch::Sender<PgView>,
    pub metrics: Metrics,
}

impl PgPoller {
    pub async fn run(self, stop: CancellationToken) {
        let mut conn: Option<PgConn> = None;
        let mut tick = tokio::time::interval(self.settings.poll_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut was_up = true;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let sent = Instant::now();
            let result = match tokio::time::timeout(self.settings.timeout, poll(&self.settings, &mut conn)).await {
                Ok(r) => r,
                Err(_) => Err((PgFailure::Timeout, format!("no answer within {:?}", self.settings.timeout))),
            };
            let last = match result {
                Ok(sample) => {
                    if !was_up {
                        tracing::info!(in_recovery = sample.in_recovery, "PostgreSQL answers again");
                        was_up = true;
                    }
                    PgPoll::Up { at: sent, sample }
                }
                Err((kind, detail)) => {
                    // Start afresh next time: a connection that failed or hung is not reused.
                    conn = None;
                    self.metrics.pg_error(kind);
                    if was_up {
                        tracing::warn!(kind = kind.as_str(), error = %detail, "PostgreSQL poll failed; checks that need it fail");
                        was_up = false;
                    }
                    PgPoll::Down { at: sent, error: kind }
                }
            };
            self.view.send_modify(|v| {
                v.attempted_at = Some(sent);
                v.last = last;
            });
        }
    }
}

async fn poll(settings: &PgSettings, conn: &mut Option<PgConn>) -> Result<PgSample, (PgFailure, String)> {
    if conn.is_none() {
        let (client, connection) =
            settings.config.connect(NoTls).await.map_err(|e| (PgFailure::Connect, e.to_string()))?;
        let task = tokio::spawn(async move {
            let _ = connection.await;
        });
        let statement = match client.prepare(POLL_SQL).await {
            Ok(s) => s,
            Err(e) => {
                task.abort();
                return Err((PgFailure::Query, e.to_string()));
            }
        };
        *conn = Some(PgConn { client, statement, task });
    }
    let Some(c) = conn.as_ref() else { return Err((PgFailure::Connect, "no connection".into())) };
    let row = c.client.query_one(&c.statement, &[]).await.map_err(|e| (PgFailure::Query, e.to_string()))?;
    let lsn = |i: usize| -> Result<Option<u64>, (PgFailure, String)> {
        row.try_get::<_, Option<PgLsn>>(i).map(|l| l.map(u64::from)).map_err(|e| (PgFailure::Query, e.to_string()))
    };
    let query = |e: tokio_postgres::Error| (PgFailure::Query, e.to_string());
    Ok(PgSample {
        in_recovery: row.try_get(0).map_err(query)?,
        flush_lsn: lsn(1)?,
        receive_lsn: lsn(2)?,
        replay_lsn: lsn(3)?,
        replay_paused: row.try_get(4).map_err(query)?,
        receiver_status: row.try_get(5).map_err(query)?,
        latest_end_lsn: lsn(6)?,
    })
}
