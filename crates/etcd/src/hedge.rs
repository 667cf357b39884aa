//! Requests that must not wait on one hung etcd member.
//!
//! A frozen etcd member still accepts TCP connections (the kernel answers), so a balanced
//! client keeps sending it requests and each one waits for its whole timeout. Every request
//! whose delay matters (ha-agent's lease renewal decides when a primary fences, and the reads
//! and writes of its HA loop how fast a failover completes; proxy-checker's confirmation reads
//! decide whether its checks stay fresh) goes to every member at once through a client per
//! endpoint, and the first answer wins.
//!
//! Each endpoint's client connects lazily, on its first use (and again after a failed
//! connect): with user/password auth a connect authenticates, and one unreachable member must
//! neither keep the agent from starting nor hold up the requests the others answer.

use std::sync::Arc;
use std::time::Duration;

use crate::{ConnectOptions, Etcd, EtcdError, LeaseId, LeaseRenewer, Snapshot};
use futures::StreamExt;
use futures::future::select_ok;
use futures::stream::FuturesUnordered;
use tokio::sync::OnceCell;

/// One endpoint: its options and, once connected, its client.
#[derive(Debug)]
struct Endpoint {
    opts: ConnectOptions,
    client: OnceCell<Etcd>,
}

impl Endpoint {
    async fn client(&self) -> Result<&Etcd, EtcdError> {
        self.client.get_or_try_init(|| Etcd::connect(&self.opts)).await
    }
}

/// One client per etcd endpoint.
#[derive(Clone, Debug)]
pub struct PerEndpoint {
    endpoints: Arc<Vec<Endpoint>>,
}

impl PerEndpoint {
    /// Nothing is connected yet: each endpoint connects when first used.
    pub fn new(opts: &ConnectOptions) -> Self {
        let endpoints = opts
            .endpoints
            .iter()
            .map(|ep| {
                let mut o = opts.clone();
                o.endpoints = vec![ep.clone()];
                Endpoint { opts: o, client: OnceCell::new() }
            })
            .collect();
        Self { endpoints: Arc::new(endpoints) }
    }

    /// Runs `op` through every member at once and returns the first success (or, when all
    /// fail, the last error). Used for reads, idempotent puts and the compare-and-swap shapes:
    /// two copies of one CAS commit at most once, and a copy that failed its compare because
    /// the other copy already won is outweighed by that copy's success.
    pub async fn first_ok<'a, T, F, Fut>(&'a self, op: F) -> Result<T, EtcdError>
    where
        F: Fn(&'a Etcd) -> Fut + Copy,
        Fut: std::future::Future<Output = Result<T, EtcdError>> + 'a,
    {
        let asks = self.endpoints.iter().map(|e| Box::pin(async move { op(e.client().await?).await }));
        select_ok(asks).await.map(|(v, _)| v)
    }

    /// The client of member `i % n` (connected now if it was not), for work that stays with
    /// one member (a watch).
    pub async fn client(&self, i: usize) -> Result<&Etcd, EtcdError> {
        let n = self.endpoints.len().max(1);
        self.endpoints.get(i % n).ok_or_else(no_endpoint)?.client().await
    }

    /// If the etcd member at endpoint `local` is the raft leader, hands the leadership to
    /// another member; returns that member's name when it did.
    pub async fn move_raft_leader_off(&self, local: usize) -> Result<Option<String>, EtcdError> {
        let c = self.client(local).await?;
        let (me, leader) = c.raft_status().await?;
        if me == 0 || me != leader {
            return Ok(None);
        }
        let members = c.members().await?;
        let Some((target, name, _)) = members.into_iter().find(|(id, _, urls)| *id != me && !urls.is_empty()) else {
            return Ok(None);
        };
        c.move_leader(target).await?;
        Ok(Some(name))
    }

    /// A linearizable read of the prefix from whichever member answers first.
    pub async fn get_prefix(&self, prefix: &str) -> Result<Snapshot, EtcdError> {
        self.first_ok(|c| c.get_prefix(prefix)).await
    }

    /// Keep-alive streams for `lease` through every endpoint connected so far (`None` for the
    /// others; [`PerEndpoint::renew`] connects them when it can).
    pub fn renewers(&self, lease: LeaseId) -> Vec<Option<LeaseRenewer>> {
        self.endpoints.iter().map(|e| e.client.get().map(|c| c.lease_renewer(lease))).collect()
    }

    /// One keep-alive through every member at once; the first answer wins. Renewers whose
    /// answer was not awaited are replaced: a late answer on their stream would otherwise be
    /// read as the answer to the next keep-alive, crediting it with a later send time (and the
    /// lease with more life than it has).
    pub async fn renew(&self, renewers: &mut [Option<LeaseRenewer>], lease: LeaseId) -> Result<Duration, EtcdError> {
        let mut answered = vec![false; renewers.len()];
        let result = {
            let mut asks: FuturesUnordered<_> = renewers
                .iter_mut()
                .zip(self.endpoints.iter())
                .enumerate()
                .map(|(i, (r, e))| async move {
                    if r.is_none() {
                        match e.client().await {
                            Ok(c) => *r = Some(c.lease_renewer(lease)),
                            Err(err) => return (i, Err(err)),
                        }
                    }
                    match r.as_mut() {
                        Some(r) => (i, r.renew().await),
                        None => (i, Err(no_endpoint())),
                    }
                })
                .collect();
            let mut last = None;
            loop {
                match asks.next().await {
                    Some((i, Ok(ttl))) => {
                        answered[i] = true;
                        break Ok(ttl);
                    }
                    // etcd itself says the lease is gone: no other member will disagree.
                    Some((i, Err(e @ EtcdError::LeaseLost { .. }))) => {
                        answered[i] = true;
                        break Err(e);
                    }
                    Some((i, Err(e))) => {
                        answered[i] = true;
                        last = Some(e);
                    }
                    None => break Err(last.unwrap_or_else(no_endpoint)),
                }
            }
        };
        // A renewer that failed has already dropped its stream and one that answered is in
        // step; only those abandoned mid-flight start afresh (`renewers()` pairs renewer i
        // with client i).
        for ((r, e), done) in renewers.iter_mut().zip(self.endpoints.iter()).zip(answered) {
            if !done {
                *r = e.client.get().map(|c| c.lease_renewer(lease));
            }
        }
        result
    }

    /// A grant is not idempotent (two answers would be two leases), so it goes to one member
    /// at a time, starting with a different one on each call so that a hung member does not
    /// fail every grant.
    pub async fn grant(&self, ttl: Duration, attempt: usize) -> Result<(LeaseId, Duration), EtcdError> {
        let n = self.endpoints.len().max(1);
        let e = self.endpoints.get(attempt % n).ok_or_else(no_endpoint)?;
        e.client().await?.grant_lease(ttl).await
    }
}

fn no_endpoint() -> EtcdError {
    EtcdError::Unavailable { op: "lease", key: String::new(), detail: "no etcd endpoint".into() }
}
