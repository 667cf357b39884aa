//! Requests that must not wait on one hung etcd member.
//!
//! A frozen etcd member still accepts TCP connections (the kernel answers), so a balanced
//! client keeps sending it requests and each one waits for its whole timeout. Every request
//! whose delay matters (the lease renewal decides when a primary fences; reads and writes of
//! the HA loop decide how fast a failover completes) goes to every member at once through a
//! client per endpoint, and the first answer wins.

use std::time::Duration;

use futures::StreamExt;
use futures::future::select_ok;
use futures::stream::FuturesUnordered;
use outrigger_etcd::{ConnectOptions, Etcd, EtcdError, LeaseId, LeaseRenewer, Snapshot};

/// One client per etcd endpoint.
#[derive(Clone, Debug)]
pub struct PerEndpoint {
    clients: Vec<Etcd>,
}

impl PerEndpoint {
    pub async fn connect(opts: &ConnectOptions) -> Result<Self, EtcdError> {
        let mut clients = Vec::with_capacity(opts.endpoints.len());
        for ep in &opts.endpoints {
            let mut o = opts.clone();
            o.endpoints = vec![ep.clone()];
            clients.push(Etcd::connect(&o).await?);
        }
        Ok(Self { clients })
    }

    /// Runs `op` through every member at once and returns the first success (or, when all
    /// fail, the last error). Used for reads, idempotent puts and the compare-and-swap shapes:
    /// two copies of one CAS commit at most once, and a copy that failed its compare because
    /// the other copy already won is outweighed by that copy's success.
    pub async fn first_ok<'a, T, F, Fut>(&'a self, op: F) -> Result<T, EtcdError>
    where
        F: Fn(&'a Etcd) -> Fut,
        Fut: std::future::Future<Output = Result<T, EtcdError>> + 'a,
    {
        let asks = self.clients.iter().map(|c| Box::pin(op(c)));
        select_ok(asks).await.map(|(v, _)| v)
    }

    /// A linearizable read of the prefix from whichever member answers first.
    pub async fn get_prefix(&self, prefix: &str) -> Result<Snapshot, EtcdError> {
        self.first_ok(|c| c.get_prefix(prefix)).await
    }

    pub fn renewers(&self, lease: LeaseId) -> Vec<LeaseRenewer> {
        self.clients.iter().map(|c| c.lease_renewer(lease)).collect()
    }

    /// One keep-alive through every member at once; the first answer wins. Renewers whose
    /// answer was not awaited are replaced: a late answer on their stream would otherwise be
    /// read as the answer to the next keep-alive, crediting it with a later send time (and the
    /// lease with more life than it has).
    pub async fn renew(&self, renewers: &mut [LeaseRenewer], lease: LeaseId) -> Result<Duration, EtcdError> {
        let mut answered = vec![false; renewers.len()];
        let result = {
            let mut asks: FuturesUnordered<_> =
                renewers.iter_mut().enumerate().map(|(i, r)| async move { (i, r.renew().await) }).collect();
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
        for ((r, client), done) in renewers.iter_mut().zip(&self.clients).zip(answered) {
            if !done {
                *r = client.lease_renewer(lease);
            }
        }
        result
    }

    /// A grant is not idempotent (two answers would be two leases), so it goes to one member
    /// at a time, starting with a different one on each call so that a hung member does not
    /// fail every grant.
    pub async fn grant(&self, ttl: Duration, attempt: usize) -> Result<(LeaseId, Duration), EtcdError> {
        let n = self.clients.len().max(1);
        let c = self.clients.get(attempt % n).ok_or_else(no_endpoint)?;
        c.grant_lease(ttl).await
    }
}

fn no_endpoint() -> EtcdError {
    EtcdError::Unavailable { op: "lease", key: String::new(), detail: "no etcd endpoint".into() }
}
