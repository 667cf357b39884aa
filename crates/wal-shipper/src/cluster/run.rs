//! The scheduling loop: each turn renews this member's lease, publishes its status, reads the
//! cluster's keys in one range, and — when [`decide`](super::decide) says this member takes a
//! backup now — takes the lock and starts the backup as a task, which the next turns watch.
//!
//! Why two backups never run at once: the lock is created only if absent, on this member's
//! lease, and only while `outrigger/backup/last` is unchanged since the snapshot the
//! decision read; the backup task stops itself (dropping its PostgreSQL session, which ends
//! the backup) once the lease could have expired without a renewal: at the last renewal's
//! send time plus the granted ttl, less one request timeout. A member cut off from etcd thus
//! stops its backup before another member can see the lock gone.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use outrigger_etcd::{Etcd, EtcdError, LeaseId, LeaseRenewer, Snapshot};
use outrigger_schema::{
    BackupLockValue, BackupRecord, KeyKind, LastBackupValue, MemberRole, MemberValue, WalShipperStatus,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::ClusterSettings;
use super::decide::{self, Decision, Kind, Last, Member, Policy};
use crate::backup::{self, sentinel::Sentinel};
use crate::metrics::{BackupFailure, Metrics};
use crate::settings::Settings;
use crate::storage::Store;
use crate::walname::{DEFAULT_SEGMENT_SIZE, Lsn, first_segment_in};

/// What the loop holds of its lease.
struct Lease {
    id: LeaseId,
    renewer: LeaseRenewer,
    next_renew: Instant,
}

/// A backup task this member runs.
struct Running {
    handle: JoinHandle<Result<Done, (BackupFailure, anyhow::Error)>>,
    lock_value: Vec<u8>,
    kind: Kind,
    started: Instant,
    stop: CancellationToken,
}

enum Done {
    /// The backup was taken and published.
    Taken(BackupRecord),
    /// The bucket already held a backup the schedule is content with (taken out of band, or
    /// published by a member that died before it could): published, nothing taken.
    AlreadyThere(BackupRecord),
}

/// The cluster as one range read shows it.
#[derive(Debug, Default)]
struct View {
    leader: Option<String>,
    members: Vec<Member>,
    last: Option<LastBackupValue>,
    last_mod_revision: i64,
    lock_holder: Option<String>,
}

/// Everything the backup task needs; cloned into it.
#[derive(Clone)]
struct Ctx {
    cs: Arc<ClusterSettings>,
    store: Store,
    s: Arc<Settings>,
    pgdata: PathBuf,
    metrics: Metrics,
}

/// Runs until `stop`. Never returns an error for an unreachable etcd or PostgreSQL: it logs,
/// counts and tries again next turn.
pub async fn run(
    cs: ClusterSettings,
    store: Store,
    s: Arc<Settings>,
    pgdata: PathBuf,
    metrics: Metrics,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let ctx = Ctx { cs: Arc::new(cs), store, s, pgdata, metrics };
    let cs = ctx.cs.clone();
    let tick = cs.loop_wait.min(cs.lock_ttl / 4);
    let status_key = cs.layout.wal_shipper_member(&cs.name)?;
    let (deadline_tx, deadline_rx) = tokio::sync::watch::channel(Instant::now());
    let mut etcd: Option<Etcd> = None;
    let mut lease: Option<Lease> = None;
    let mut running: Option<Running> = None;
    let mut pg: Option<tokio_postgres::Client> = None;
    let (mut failures, mut retry_at) = (0u32, None::<Instant>);
    tracing::info!(member = %cs.name, scope = %cs.layout.scope(), schedule = ?cs.policy.as_ref().map(|p| (p.full.to_string(), p.delta.as_ref().map(|d| d.to_string()), p.from)), "cluster loop started");
    loop {
        // 1. etcd and the lease.
        if etcd.is_none() {
            match Etcd::connect(&cs.etcd).await {
                Ok(e) => etcd = Some(e),
                Err(e) => {
                    ctx.metrics.etcd_request_failed();
                    tracing::warn!(error = %e, "connect to etcd");
                }
            }
        }
        if let Some(e) = &etcd {
            renew(e, &mut lease, cs.lock_ttl, &deadline_tx, &ctx.metrics).await;
        }
        // 2. this member's status.
        let status = status(&ctx, &mut pg, tick, failures).await;
        if let (Some(e), Some(l)) = (&etcd, &lease) {
            let value = serde_json::to_vec(&status).unwrap_or_default();
            if let Err(err) = e.put(&status_key, value, Some(l.id)).await {
                ctx.metrics.etcd_request_failed();
                tracing::warn!(error = %err, "publish this member's status");
            }
        }
        // 3. the cluster, and the decision.
        let view = match &etcd {
            Some(e) => match e.get_prefix(&cs.layout.prefix()).await {
                Ok(snap) => Some(read_view(&cs, &snap, &ctx.metrics)),
                Err(err) => {
                    ctx.metrics.etcd_request_failed();
                    tracing::warn!(error = %err, "read the cluster's keys");
                    None
                }
            },
            None => None,
        };
        if let Some(v) = &view {
            publish_last_metrics(&ctx.metrics, v.last.as_ref());
        }
        let idle = running.is_none() && retry_at.is_none_or(|t| Instant::now() >= t);
        if let (true, true, Some(policy), Some(v), Some(e), Some(l)) =
            (idle, cs.take_backups, &cs.policy, &view, &etcd, &lease)
        {
            let last = last_times(v.last.as_ref());
            let d = decide::decide(
                policy,
                &cs.name,
                v.leader.as_deref(),
                &v.members,
                last,
                v.lock_holder.as_deref(),
                Utc::now(),
            );
            match d {
                Decision::Idle => {}
                Decision::Wait(why) => tracing::debug!(why = %why, "backup due; waiting"),
                Decision::Take(kind) => {
                    running = try_lock(&ctx, e, l.id, v.last_mod_revision, kind, deadline_rx.clone()).await;
                }
            }
        }
        ctx.metrics.backup_running.set(i64::from(running.is_some()));
        // 4. wait.
        let finished = async {
            match running.as_mut() {
                Some(r) => Some((&mut r.handle).await),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(tick) => {}
            Some(outcome) = finished => {
                let r = running.take().expect("a finished backup was running");
                let outcome = outcome.unwrap_or_else(|e| Err((BackupFailure::Other, anyhow::anyhow!("backup task: {e}"))));
                let ok = finish(&ctx, &r, outcome);
                if let Some(e) = &etcd {
                    release(e, &cs, &r.lock_value, &ctx.metrics).await;
                }
                if ok {
                    (failures, retry_at) = (0, None);
                } else {
                    failures += 1;
                    retry_at = Some(Instant::now() + cs.retry_after * (1u32 << (failures - 1).min(8)));
                }
            }
        }
    }
    if let Some(r) = running.take() {
        r.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), r.handle).await;
        if let Some(e) = &etcd {
            release(e, &cs, &r.lock_value, &ctx.metrics).await;
        }
    }
    if let (Some(e), Some(l)) = (&etcd, &lease) {
        // Removes the status key with it.
        let _ = e.revoke_lease(l.id).await;
    }
    tracing::info!("cluster loop stopped");
    Ok(())
}

/// Grants or renews the lease; publishes the instant the backup task must stop by.
async fn renew(
    e: &Etcd,
    lease: &mut Option<Lease>,
    ttl: Duration,
    deadline: &tokio::sync::watch::Sender<Instant>,
    metrics: &Metrics,
) {
    let margin = e.request_timeout();
    let now = Instant::now();
    match lease {
        None => match e.grant_lease(ttl).await {
            Ok((id, granted)) => {
                let _ = deadline.send(now + granted.saturating_sub(margin));
                *lease = Some(Lease { id, renewer: e.lease_renewer(id), next_renew: now + granted / 4 });
            }
            Err(err) => {
                metrics.etcd_request_failed();
                tracing::warn!(error = %err, "grant a lease");
            }
        },
        Some(l) if now >= l.next_renew => match l.renewer.renew().await {
            Ok(granted) => {
                let _ = deadline.send(now + granted.saturating_sub(margin));
                l.next_renew = now + granted / 4;
            }
            Err(EtcdError::LeaseLost { detail, .. }) => {
                tracing::warn!(lease = %format!("{:x}", l.id), detail = %detail, "lease lost; a running backup stops");
                let _ = deadline.send(now);
                *lease = None;
            }
            Err(err) => {
                metrics.etcd_request_failed();
                tracing::warn!(error = %err, "renew the lease");
                // A broken keep-alive stream stays broken: the next try opens a new one.
                l.renewer = e.lease_renewer(l.id);
            }
        },
        Some(_) => {}
    }
}

/// This member's status: PostgreSQL's archiver view and the upload-ahead backlog.
async fn status(
    ctx: &Ctx,
    pg: &mut Option<tokio_postgres::Client>,
    budget: Duration,
    failures: u32,
) -> WalShipperStatus {
    let mut st = WalShipperStatus {
        backlog_segments: ctx.metrics.backlog.get().max(0) as u64,
        archive_lag_seconds: ctx.metrics.oldest_ready_age.get(),
        backup_failures: failures,
        takes_backups: ctx.cs.take_backups,
        version: env!("CARGO_PKG_VERSION").into(),
        ..Default::default()
    };
    let budget = budget.min(Duration::from_secs(2));
    if pg.as_ref().is_none_or(|c| c.is_closed()) {
        *pg = tokio::time::timeout(budget, crate::backup::push::connect(&ctx.s.pg)).await.ok().and_then(Result::ok);
    }
    let Some(client) = pg.as_ref() else { return st };
    let sql = "SELECT pg_is_in_recovery(), last_archived_wal, extract(epoch FROM last_archived_time)::float8, failed_count FROM pg_stat_archiver";
    match tokio::time::timeout(budget, client.query_one(sql, &[])).await {
        Ok(Ok(row)) => {
            let recovery: bool = row.get(0);
            st.role = Some(if recovery { "replica" } else { "primary" }.into());
            st.last_archived_wal = row.get(1);
            let at: Option<f64> = row.get(2);
            ctx.metrics.last_archived.set(at.unwrap_or(0.0));
            st.last_archived_time = at.and_then(|t| DateTime::from_timestamp(t as i64, 0)).map(rfc3339);
            let failed: i64 = row.get(3);
            st.archive_failed_count = failed.max(0) as u64;
            ctx.metrics.archiver_failed.set(failed);
        }
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "read pg_stat_archiver");
            *pg = None;
        }
        Err(_) => *pg = None,
    }
    st
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Decodes the range read; an undecodable value is logged, counted and left out.
fn read_view(cs: &ClusterSettings, snap: &Snapshot, metrics: &Metrics) -> View {
    let mut v = View::default();
    let garbage = |key: &str, e: &dyn std::fmt::Display| {
        metrics.etcd_garbage();
        tracing::warn!(key, error = %e, "undecodable value in etcd; ignored");
    };
    let shipper_prefix = cs.layout.wal_shipper_prefix();
    let mut shippers: Vec<(String, WalShipperStatus)> = Vec::new();
    let mut members: Vec<(String, MemberValue)> = Vec::new();
    for kv in &snap.kvs {
        if kv.key == cs.layout.backup_last() {
            match LastBackupValue::decode(&kv.value) {
                Ok(l) => v.last = Some(l),
                Err(e) => garbage(&kv.key, &e),
            }
            // The lock's guard is the key's revision, decodable or not.
            v.last_mod_revision = kv.mod_revision;
        } else if kv.key == cs.layout.backup_lock() {
            v.lock_holder = Some(match BackupLockValue::decode(&kv.value) {
                Ok(l) => l.member,
                Err(e) => {
                    garbage(&kv.key, &e);
                    "(unknown)".into()
                }
            });
        } else if let Some(name) = kv.key.strip_prefix(&shipper_prefix) {
            match WalShipperStatus::decode(&kv.value) {
                Ok(s) => shippers.push((name.to_owned(), s)),
                Err(e) => garbage(&kv.key, &e),
            }
        } else {
            match cs.layout.classify(&kv.key) {
                Some(KeyKind::Fixed(outrigger_schema::ClusterKey::Leader)) => {
                    match outrigger_schema::decode_leader(&kv.value) {
                        Ok(l) => v.leader = Some(l),
                        Err(e) => garbage(&kv.key, &e),
                    }
                }
                Some(KeyKind::Member(name)) => match MemberValue::decode(&kv.value) {
                    Ok(m) => members.push((name.to_owned(), m)),
                    Err(e) => garbage(&kv.key, &e),
                },
                _ => {}
            }
        }
    }
    v.members = members
        .into_iter()
        .map(|(name, m)| {
            let shipper = shippers.iter().find(|(n, _)| *n == name);
            Member {
                healthy_replica: m.role == MemberRole::Replica && matches!(m.state.as_str(), "running" | "streaming"),
                position: m.xlog_location.or(m.replay_lsn).unwrap_or(0),
                shipper: shipper.is_some_and(|(_, s)| s.takes_backups),
                failures: shipper.map_or(0, |(_, s)| s.backup_failures),
                name,
            }
        })
        .collect();
    v
}

fn parse_time(t: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(t).ok().map(|t| t.with_timezone(&Utc))
}

fn last_times(last: Option<&LastBackupValue>) -> Last {
    Last {
        any: last.and_then(|l| parse_time(&l.last.start_time)),
        full: last.and_then(|l| parse_time(&l.last_full.start_time)),
    }
}

fn publish_last_metrics(m: &Metrics, last: Option<&LastBackupValue>) {
    let ts = |t: Option<DateTime<Utc>>| t.map_or(0.0, |t| t.timestamp_millis() as f64 / 1000.0);
    let finished = last.and_then(|l| parse_time(&l.last.finish_time));
    m.last_backup_time.set(ts(finished));
    m.last_backup_age.set(finished.map_or(0.0, |f| (Utc::now() - f).num_milliseconds().max(0) as f64 / 1000.0));
    m.last_backup_bytes.set(last.map_or(0, |l| l.last.stored_bytes as i64));
    m.last_full_backup_time.set(ts(last.and_then(|l| parse_time(&l.last_full.finish_time))));
}

/// Takes the lock and starts the backup task; `None` when another member got there first.
async fn try_lock(
    ctx: &Ctx,
    e: &Etcd,
    lease: LeaseId,
    last_mod_revision: i64,
    kind: Kind,
    deadline: tokio::sync::watch::Receiver<Instant>,
) -> Option<Running> {
    let cs = &ctx.cs;
    let value = BackupLockValue {
        member: cs.name.clone(),
        kind: kind.as_str().into(),
        since: rfc3339(Utc::now()),
        extra: Default::default(),
    };
    let lock_value = serde_json::to_vec(&value).ok()?;
    match e
        .create_if_absent_and_unchanged(
            &cs.layout.backup_lock(),
            lock_value.clone(),
            lease,
            &cs.layout.backup_last(),
            last_mod_revision,
        )
        .await
    {
        Ok(_) => {}
        Err(EtcdError::CompareFailed { current, .. }) => {
            tracing::info!(lock = ?current.map(|kv| String::from_utf8_lossy(&kv.value).into_owned()), "another member took the backup lock, or published a backup, first");
            return None;
        }
        Err(err) => {
            ctx.metrics.etcd_request_failed();
            tracing::warn!(error = %err, "take the backup lock");
            return None;
        }
    }
    tracing::info!(kind = kind.as_str(), "backup lock taken; starting the scheduled backup");
    let stop = CancellationToken::new();
    let (task_ctx, task_stop, e2, lv) = (ctx.clone(), stop.clone(), e.clone(), lock_value.clone());
    let handle = tokio::spawn(async move {
        tokio::select! {
            r = take(&task_ctx, &e2, kind, &lv) => r,
            () = lease_deadline(deadline) => Err((BackupFailure::LeaseLost, anyhow::anyhow!("the lock's lease could not be renewed in time; backup stopped"))),
            () = task_stop.cancelled() => Err((BackupFailure::Other, anyhow::anyhow!("stopped: the daemon is shutting down"))),
        }
    });
    Some(Running { handle, lock_value, kind, started: Instant::now(), stop })
}

/// Resolves once the lease could have expired: the deadline passed without a renewal
/// moving it.
async fn lease_deadline(mut rx: tokio::sync::watch::Receiver<Instant>) {
    loop {
        let d = *rx.borrow_and_update();
        tokio::select! {
            () = tokio::time::sleep_until(d.into()) => {
                if *rx.borrow() <= d {
                    return;
                }
            }
            r = rx.changed() => if r.is_err() { return },
        }
    }
}

/// The backup task: check the bucket, take the backup, publish it, apply retention.
async fn take(ctx: &Ctx, e: &Etcd, kind: Kind, lock_value: &[u8]) -> Result<Done, (BackupFailure, anyhow::Error)> {
    let cs = &ctx.cs;
    let policy: &Policy = cs.policy.as_ref().ok_or((BackupFailure::Other, anyhow::anyhow!("no schedule")))?;
    let storage = |e: anyhow::Error| (BackupFailure::Storage, e);
    // The bucket is the truth: the etcd record may be missing (a new cluster over an old
    // bucket) or behind (a taker that died between its sentinel and its record).
    let known = backup::list_known(&ctx.store, ctx.s.download_concurrency).await.map_err(storage)?;
    let (bucket_last, bucket_full) = newest(known);
    let bucket = Last {
        any: bucket_last.as_ref().and_then(|r| parse_time(&r.start_time)),
        full: bucket_full.as_ref().and_then(|r| parse_time(&r.start_time)),
    };
    let kind = match decide::due(policy, bucket, Utc::now()) {
        None => {
            let (last, full) = (bucket_last.expect("due() wants a full backup when none"), bucket_full.expect("ditto"));
            publish(e, cs, lock_value, &last, &full).await?;
            return Ok(Done::AlreadyThere(last));
        }
        // A full one if either the cluster record or the bucket asks for it.
        Some(k) => {
            if k == Kind::Full || kind == Kind::Full {
                Kind::Full
            } else {
                Kind::Delta
            }
        }
    };
    let opts = backup::push::PushOptions { full: kind == Kind::Full, ..Default::default() };
    let (name, sentinel) =
        backup::push::push_and_describe(&ctx.store, &ctx.s, &ctx.pgdata, &opts).await.map_err(|e| (classify(&e), e))?;
    let rec = record(&name, &sentinel, &cs.name);
    let full = if rec.kind == "full" { rec.clone() } else { bucket_full.unwrap_or_else(|| rec.clone()) };
    publish(e, cs, lock_value, &rec, &full).await?;
    if let Some(n) = cs.retain_full {
        let mode = crate::retention::Mode::RetainFull(n);
        if let Err(err) = crate::ops::delete(&ctx.store, &ctx.s, &mode, true).await {
            // The backup stands; retention runs again after the next one.
            tracing::warn!(error = %format!("{err:#}"), retain_full = n, "retention after the backup failed");
        }
    }
    Ok(Done::Taken(rec))
}

async fn publish(
    e: &Etcd,
    cs: &ClusterSettings,
    lock_value: &[u8],
    last: &BackupRecord,
    full: &BackupRecord,
) -> Result<(), (BackupFailure, anyhow::Error)> {
    let v = LastBackupValue { last: last.clone(), last_full: full.clone(), extra: Default::default() };
    let bytes = serde_json::to_vec(&v).map_err(|err| (BackupFailure::Other, err.into()))?;
    e.put_while_held(&cs.layout.backup_last(), bytes, &cs.layout.backup_lock(), lock_value)
        .await
        .map(drop)
        .map_err(|err| (BackupFailure::Etcd, anyhow::anyhow!("publish {}: {err}", last.name)))
}

/// The newest backup and the newest full one in the bucket.
fn newest(mut known: Vec<backup::Known>) -> (Option<BackupRecord>, Option<BackupRecord>) {
    backup::chronological(&mut known);
    let host = |k: &backup::Known| k.sentinel.hostname.clone();
    let last = known.last().map(|k| record(&k.listed.name, &k.sentinel, &host(k)));
    let full = known
        .iter()
        .rev()
        .find(|k| k.sentinel.delta_from.is_none())
        .map(|k| record(&k.listed.name, &k.sentinel, &host(k)));
    (last, full)
}

fn record(name: &str, s: &Sentinel, member: &str) -> BackupRecord {
    let lsn = |l: Option<u64>| l.map(|l| Lsn(l).to_string()).unwrap_or_default();
    BackupRecord {
        name: name.to_owned(),
        kind: if s.delta_from.is_some() { "delta" } else { "full" }.into(),
        start_time: s.start_time.map(rfc3339).unwrap_or_default(),
        finish_time: s.finish_time.map(rfc3339).unwrap_or_default(),
        start_lsn: lsn(s.lsn),
        finish_lsn: lsn(s.finish_lsn),
        timeline: first_segment_in(name, DEFAULT_SEGMENT_SIZE).map_or(0, |seg| seg.timeline),
        stored_bytes: s.compressed_size.max(0) as u64,
        uncompressed_bytes: s.uncompressed_size.max(0) as u64,
        member: member.to_owned(),
        extra: Default::default(),
    }
}

/// Where a backup failed, from its error chain.
fn classify(e: &anyhow::Error) -> BackupFailure {
    if e.chain().any(|c| c.downcast_ref::<tokio_postgres::Error>().is_some()) {
        BackupFailure::Postgres
    } else if e.chain().any(|c| c.downcast_ref::<object_store::Error>().is_some()) {
        BackupFailure::Storage
    } else {
        BackupFailure::Other
    }
}

/// Logs and counts a finished backup task; true if it succeeded.
fn finish(ctx: &Ctx, r: &Running, outcome: Result<Done, (BackupFailure, anyhow::Error)>) -> bool {
    let secs = r.started.elapsed().as_secs_f64();
    match outcome {
        Ok(Done::Taken(rec)) => {
            ctx.metrics.backup_taken(&rec.kind, secs);
            tracing::info!(backup = %rec.name, kind = %rec.kind, seconds = secs, stored_bytes = rec.stored_bytes, "scheduled backup taken and published");
            true
        }
        Ok(Done::AlreadyThere(rec)) => {
            tracing::info!(backup = %rec.name, "the bucket already holds a recent enough backup; published it, took none");
            true
        }
        Err((why, err)) => {
            ctx.metrics.backup_failed(why);
            tracing::error!(kind = r.kind.as_str(), reason = why.as_str(), error = %format!("{err:#}"), "scheduled backup failed");
            false
        }
    }
}

/// Deletes the lock if it is still ours (a lost lease deleted it already).
async fn release(e: &Etcd, cs: &ClusterSettings, lock_value: &[u8], metrics: &Metrics) {
    match e.delete_if_value(&cs.layout.backup_lock(), lock_value).await {
        Ok(_) | Err(EtcdError::CompareFailed { .. }) => {}
        Err(err) => {
            metrics.etcd_request_failed();
            tracing::warn!(error = %err, "release the backup lock (it expires with the lease)");
        }
    }
}
