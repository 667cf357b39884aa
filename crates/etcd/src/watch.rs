//! A prefix watch that never misses a change silently.
//!
//! After a reconnect it resumes from the revision after the last one it delivered; when that
//! revision has been compacted away it reads the whole prefix again and delivers it as a
//! [`WatchUpdate::Resync`], which the caller treats as "replace everything you knew".

use std::time::Duration;

use etcd_client::{EventType, WatchOptions, WatchStream};

use crate::{Etcd, EtcdError, Kv, Snapshot};

/// One change under the watched prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Put(Kv),
    /// A delete, or a lease expiry. `prev` is the value before, when etcd still had it.
    Delete {
        key: String,
        mod_revision: i64,
        prev: Option<Kv>,
    },
}

impl Change {
    pub fn key(&self) -> &str {
        match self {
            Change::Put(kv) => &kv.key,
            Change::Delete { key, .. } => key,
        }
    }
}

/// What a call to [`PrefixWatch::next`] yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchUpdate {
    /// Changes in revision order; `revision` is the store's revision after them.
    Changes { changes: Vec<Change>, revision: i64 },
    /// The watch could not resume where it was (compaction): here is the whole prefix.
    Resync(Snapshot),
}

pub struct PrefixWatch {
    etcd: Etcd,
    prefix: String,
    /// The first revision not yet delivered.
    next_revision: i64,
    stream: Option<WatchStream>,
    backoff: Duration,
    reconnects: u64,
}

const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

impl PrefixWatch {
    pub(crate) fn new(etcd: Etcd, prefix: String, after_revision: i64) -> Self {
        Self { etcd, prefix, next_revision: after_revision + 1, stream: None, backoff: Duration::ZERO, reconnects: 0 }
    }

    /// The first revision this watch has not delivered yet.
    pub fn next_revision(&self) -> i64 {
        self.next_revision
    }

    /// How many times the watch had to be re-established (for metrics).
    pub fn reconnects(&self) -> u64 {
        self.reconnects
    }

    /// Waits for the next batch of changes. An error means the connection broke; the next call
    /// reconnects (after a short, growing backoff) and resumes without a gap. Cancel-safe: if
    /// the future is dropped, nothing delivered is lost, at worst a batch is fetched again.
    pub async fn next(&mut self) -> Result<WatchUpdate, EtcdError> {
        loop {
            if self.stream.is_none() {
                if !self.backoff.is_zero() {
                    tokio::time::sleep(self.backoff).await;
                }
                self.backoff = (self.backoff * 2).clamp(MIN_BACKOFF, MAX_BACKOFF);
                let opts = WatchOptions::new().with_prefix().with_prev_key().with_start_revision(self.next_revision);
                let mut wc = self.etcd.client().watch_client();
                let fut = wc.watch(self.prefix.clone(), Some(opts));
                let stream = match tokio::time::timeout(self.etcd.request_timeout(), fut).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => return Err(EtcdError::from_client("watch", &self.prefix, e)),
                    Err(_) => return Err(EtcdError::timeout("watch", &self.prefix, self.etcd.request_timeout())),
                };
                self.stream = Some(stream);
            }
            let Some(stream) = self.stream.as_mut() else { continue };
            let msg = match stream.message().await {
                Ok(Some(msg)) => msg,
                Ok(None) => {
                    self.broken();
                    return Err(EtcdError::Unavailable {
                        op: "watch",
                        key: self.prefix.clone(),
                        detail: "stream ended".into(),
                    });
                }
                Err(e) => {
                    self.broken();
                    return Err(EtcdError::from_client("watch", &self.prefix, e));
                }
            };
            if msg.compact_revision() > 0 {
                // Our start revision is gone: read everything and carry on from there.
                self.broken();
                let snap = self.etcd.get_prefix(&self.prefix).await?;
                self.next_revision = snap.revision + 1;
                self.backoff = Duration::ZERO;
                return Ok(WatchUpdate::Resync(snap));
            }
            if msg.canceled() {
                // e.g. "no leader" with require_leader: treat as a broken connection.
                self.broken();
                let reason = msg.cancel_reason().to_owned();
                return Err(EtcdError::Unavailable {
                    op: "watch",
                    key: self.prefix.clone(),
                    detail: format!("canceled: {reason}"),
                });
            }
            self.backoff = Duration::ZERO;
            let header_rev = msg.header().map_or(0, |h| h.revision());
            if msg.events().is_empty() {
                // The `created` answer or a progress notification: nothing to deliver.
                continue;
            }
            let mut changes = Vec::with_capacity(msg.events().len());
            for ev in msg.events() {
                let Some(kv) = ev.kv() else { continue };
                let kv_out = Kv::from_client(kv);
                self.next_revision = self.next_revision.max(kv_out.mod_revision + 1);
                changes.push(match ev.event_type() {
                    EventType::Put => Change::Put(kv_out),
                    EventType::Delete => Change::Delete {
                        key: kv_out.key,
                        mod_revision: kv_out.mod_revision,
                        prev: ev.prev_kv().map(Kv::from_client),
                    },
                });
            }
            return Ok(WatchUpdate::Changes { changes, revision: header_rev.max(self.next_revision - 1) });
        }
    }

    fn broken(&mut self) {
        self.stream = None;
        self.reconnects += 1;
    }
}
