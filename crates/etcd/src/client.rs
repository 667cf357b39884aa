use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, GetOptions, Identity, LeaseKeepAliveStream, LeaseKeeper, PutOptions,
    TlsOptions, Txn, TxnOp, TxnOpResponse,
};

use crate::{EtcdError, LeaseId, PrefixWatch};

/// PEM files for TLS to etcd. A CA alone verifies the server; cert and key add a client
/// certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

/// Validated connection settings (the daemons build these from their config files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectOptions {
    /// `http://host:port` or `https://host:port`; requests are balanced over all of them.
    pub endpoints: Vec<String>,
    pub user: Option<(String, String)>,
    pub tls: Option<TlsFiles>,
    /// Deadline of one request. A request that takes longer counts as unavailable.
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    /// HTTP/2 keep-alive: a silent connection (frozen member, cut network) is dropped after
    /// `keepalive_interval + keepalive_timeout`, which ends watches and keep-alive streams so
    /// they reconnect elsewhere.
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
}

impl ConnectOptions {
    /// Defaults suited to an HA loop with a few seconds of TTL.
    pub fn new(endpoints: Vec<String>) -> Self {
        Self {
            endpoints,
            user: None,
            tls: None,
            request_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_millis(500),
            keepalive_interval: Duration::from_millis(500),
            keepalive_timeout: Duration::from_millis(1000),
        }
    }
}

/// One key as read from etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    pub key: String,
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    /// 0 when the key has no lease.
    pub lease: LeaseId,
}

impl Kv {
    pub(crate) fn from_client(kv: &etcd_client::KeyValue) -> Self {
        Self {
            key: String::from_utf8_lossy(kv.key()).into_owned(),
            value: kv.value().to_vec(),
            create_revision: kv.create_revision(),
            mod_revision: kv.mod_revision(),
            lease: kv.lease(),
        }
    }
}

/// A consistent read of every key under a prefix, at `revision`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub revision: i64,
    pub kvs: Vec<Kv>,
}

impl Snapshot {
    pub fn get(&self, key: &str) -> Option<&Kv> {
        self.kvs.iter().find(|kv| kv.key == key)
    }
}

/// A cheap-to-clone handle on an etcd cluster.
#[derive(Clone)]
pub struct Etcd {
    client: Client,
    timeout: Duration,
}

impl std::fmt::Debug for Etcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Etcd").field("timeout", &self.timeout).finish_non_exhaustive()
    }
}

fn read_pem(what: &'static str, path: &PathBuf) -> Result<Vec<u8>, EtcdError> {
    std::fs::read(path).map_err(|e| EtcdError::Rejected {
        op: "connect",
        key: String::new(),
        detail: format!("read {what} {}: {e}", path.display()),
    })
}

impl Etcd {
    /// Connects lazily: an unreachable cluster is not an error here, only a first request that
    /// cannot be answered is. A daemon can therefore start while etcd is down.
    pub async fn connect(opts: &ConnectOptions) -> Result<Self, EtcdError> {
        let mut o = etcd_client::ConnectOptions::new()
            .with_timeout(opts.request_timeout)
            .with_connect_timeout(opts.connect_timeout)
            .with_keep_alive(opts.keepalive_interval, opts.keepalive_timeout)
            .with_keep_alive_while_idle(true)
            // A member cut off from the quorum must not serve stale watches or reads.
            .with_require_leader(true);
        if let Some((u, p)) = &opts.user {
            o = o.with_user(u.clone(), p.clone());
        }
        if let Some(tls) = &opts.tls {
            let mut t = TlsOptions::new();
            if let Some(ca) = &tls.ca_file {
                t = t.ca_certificate(Certificate::from_pem(read_pem("ca_file", ca)?));
            }
            if let (Some(c), Some(k)) = (&tls.cert_file, &tls.key_file) {
                t = t.identity(Identity::from_pem(read_pem("cert_file", c)?, read_pem("key_file", k)?));
            }
            o = o.with_tls(t);
        }
        let timeout = opts.request_timeout;
        // With user/password, connect() authenticates at once; give it the same deadline.
        let client =
            tokio::time::timeout(timeout.max(opts.connect_timeout) * 2, Client::connect(&opts.endpoints, Some(o)))
                .await
                .map_err(|_| EtcdError::timeout("connect", "", timeout))?
                .map_err(|e| EtcdError::from_client("connect", "", e))?;
        Ok(Self { client, timeout })
    }

    pub fn request_timeout(&self) -> Duration {
        self.timeout
    }

    /// Runs one request with the deadline, retrying on other endpoints while the error is of
    /// the "unavailable" kind and time is left: with one of three members dead, a request that
    /// happened to be routed to it must not surface as "etcd is down" to an HA loop.
    async fn call<T, F, Fut>(&self, op: &'static str, key: &str, mut attempt: F) -> Result<(T, u32), EtcdError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut pause = Duration::from_millis(20);
        let mut tries = 0u32;
        loop {
            tries += 1;
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let err = match tokio::time::timeout(left, attempt()).await {
                Ok(Ok(v)) => return Ok((v, tries)),
                Ok(Err(e)) => EtcdError::from_client(op, key, e),
                Err(_) => return Err(EtcdError::timeout(op, key, self.timeout)),
            };
            if !err.is_unavailable() || tokio::time::Instant::now() + pause >= deadline {
                return Err(err);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }

    /// Linearizable read of one key.
    pub async fn get(&self, key: &str) -> Result<Option<Kv>, EtcdError> {
        let (resp, _) = self
            .call("get", key, || {
                let mut c = self.client.kv_client();
                async move { c.get(key, None).await }
            })
            .await?;
        Ok(resp.kvs().first().map(Kv::from_client))
    }

    /// Linearizable read of every key under `prefix`, with the revision it was read at.
    pub async fn get_prefix(&self, prefix: &str) -> Result<Snapshot, EtcdError> {
        let (resp, _) = self
            .call("get-prefix", prefix, || {
                let mut c = self.client.kv_client();
                async move { c.get(prefix, Some(GetOptions::new().with_prefix())).await }
            })
            .await?;
        Ok(Snapshot {
            revision: resp.header().map_or(0, |h| h.revision()),
            kvs: resp.kvs().iter().map(Kv::from_client).collect(),
        })
    }

    /// Unconditional put; returns the new revision.
    pub async fn put(&self, key: &str, value: impl Into<Vec<u8>>, lease: Option<LeaseId>) -> Result<i64, EtcdError> {
        let value = value.into();
        let opts = lease.map(|l| PutOptions::new().with_lease(l));
        let (resp, _) = self
            .call("put", key, || {
                let (mut c, value, opts) = (self.client.kv_client(), value.clone(), opts.clone());
                async move { c.put(key, value, opts).await }
            })
            .await
            .map_err(|e| with_lease(e, lease))?;
        Ok(resp.header().map_or(0, |h| h.revision()))
    }

    /// Unconditional delete; returns whether the key existed.
    pub async fn delete(&self, key: &str) -> Result<bool, EtcdError> {
        let (resp, _) = self
            .call("delete", key, || {
                let mut c = self.client.kv_client();
                async move { c.delete(key, None).await }
            })
            .await?;
        Ok(resp.deleted() > 0)
    }

    /// Deletes every key under `prefix`; returns how many there were.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<i64, EtcdError> {
        let opts = etcd_client::DeleteOptions::new().with_prefix();
        let (resp, _) = self
            .call("delete-prefix", prefix, || {
                let (mut c, opts) = (self.client.kv_client(), opts.clone());
                async move { c.delete(prefix, Some(opts)).await }
            })
            .await?;
        Ok(resp.deleted())
    }

    /// Runs `compare → then` and on failure reads the key back for the error.
    ///
    /// A request whose answer was lost may be retried after it already took effect; then the
    /// compare fails against our own write. `already_done` recognises that case from the key's
    /// current value, so the caller sees success, as it should.
    async fn cas(
        &self,
        op: &'static str,
        key: &str,
        cmp: impl IntoIterator<Item = Compare>,
        then: TxnOp,
        lease: Option<LeaseId>,
        already_done: impl Fn(Option<&Kv>) -> bool,
    ) -> Result<i64, EtcdError> {
        let cmp: Vec<Compare> = cmp.into_iter().collect();
        let txn = Txn::new().when(cmp).and_then([then]).or_else([TxnOp::get(key, None)]);
        let (resp, tries) = self
            .call(op, key, || {
                let (mut c, txn) = (self.client.kv_client(), txn.clone());
                async move { c.txn(txn).await }
            })
            .await
            .map_err(|e| with_lease(e, lease))?;
        if resp.succeeded() {
            return Ok(resp.header().map_or(0, |h| h.revision()));
        }
        let current = resp
            .op_responses()
            .into_iter()
            .find_map(|r| match r {
                TxnOpResponse::Get(g) => Some(g.kvs().first().map(Kv::from_client)),
                _ => None,
            })
            .flatten();
        if tries > 1 && already_done(current.as_ref()) {
            return Ok(current.map_or(0, |kv| kv.mod_revision));
        }
        Err(EtcdError::CompareFailed { op, key: key.to_owned(), current })
    }

    /// Creates `key` only if it does not exist (etcd `create_revision == 0`): the leader race
    /// and the `initialize` race.
    pub async fn create_if_absent(
        &self,
        key: &str,
        value: impl Into<Vec<u8>>,
        lease: Option<LeaseId>,
    ) -> Result<i64, EtcdError> {
        let value = value.into();
        let cmp = Compare::create_revision(key, CompareOp::Equal, 0);
        let put = TxnOp::put(key, value.clone(), lease.map(|l| PutOptions::new().with_lease(l)));
        let ours = |kv: Option<&Kv>| kv.is_some_and(|kv| kv.value == value && kv.lease == lease.unwrap_or(0));
        self.cas("create-if-absent", key, [cmp], put, lease, ours).await
    }

    /// Puts `value` only if the key currently holds `expected` (the leader re-taking its key on
    /// a new lease).
    pub async fn put_if_value(
        &self,
        key: &str,
        expected: &[u8],
        value: impl Into<Vec<u8>>,
        lease: Option<LeaseId>,
    ) -> Result<i64, EtcdError> {
        let value = value.into();
        let cmp = Compare::value(key, CompareOp::Equal, expected);
        let put = TxnOp::put(key, value.clone(), lease.map(|l| PutOptions::new().with_lease(l)));
        let ours = |kv: Option<&Kv>| kv.is_some_and(|kv| kv.value == value && kv.lease == lease.unwrap_or(0));
        self.cas("put-if-value", key, [cmp], put, lease, ours).await
    }

    /// Deletes the key only if it holds `expected` (the leader releasing its key).
    pub async fn delete_if_value(&self, key: &str, expected: &[u8]) -> Result<i64, EtcdError> {
        let cmp = Compare::value(key, CompareOp::Equal, expected);
        // Gone after a retry: our first attempt deleted it (or it expired); the goal holds.
        self.cas("delete-if-value", key, [cmp], TxnOp::delete(key, None), None, |kv| kv.is_none()).await
    }

    /// Puts only if the key's `mod_revision` is still `mod_revision` (0: the key must not
    /// exist): read-modify-write of `/config`, `/failover`, `/sync`.
    pub async fn put_if_mod_revision(
        &self,
        key: &str,
        mod_revision: i64,
        value: impl Into<Vec<u8>>,
    ) -> Result<i64, EtcdError> {
        let value = value.into();
        let cmp = Compare::mod_revision(key, CompareOp::Equal, mod_revision);
        let ours = |kv: Option<&Kv>| kv.is_some_and(|kv| kv.value == value);
        self.cas("put-if-mod-revision", key, [cmp], TxnOp::put(key, value.clone(), None), None, ours).await
    }

    /// Deletes the key only if its `mod_revision` is still `mod_revision` (the leader deleting
    /// `/sync` when synchronous mode is turned off).
    pub async fn delete_if_mod_revision(&self, key: &str, mod_revision: i64) -> Result<i64, EtcdError> {
        let cmp = Compare::mod_revision(key, CompareOp::Equal, mod_revision);
        self.cas("delete-if-mod-revision", key, [cmp], TxnOp::delete(key, None), None, |kv| kv.is_none()).await
    }

    /// Creates `key` on `lease` only if it does not exist and `guard` still has
    /// `guard_mod_revision` (0: `guard` must not exist): a lock that is taken only while the
    /// state it was decided on is unchanged.
    pub async fn create_if_absent_and_unchanged(
        &self,
        key: &str,
        value: impl Into<Vec<u8>>,
        lease: LeaseId,
        guard: &str,
        guard_mod_revision: i64,
    ) -> Result<i64, EtcdError> {
        let value = value.into();
        let cmp = [
            Compare::create_revision(key, CompareOp::Equal, 0),
            Compare::mod_revision(guard, CompareOp::Equal, guard_mod_revision),
        ];
        let put = TxnOp::put(key, value.clone(), Some(PutOptions::new().with_lease(lease)));
        let ours = |kv: Option<&Kv>| kv.is_some_and(|kv| kv.value == value && kv.lease == lease);
        self.cas("create-if-absent-and-unchanged", key, cmp, put, Some(lease), ours).await
    }

    /// Puts `key` (no lease) only while `holder` holds `holder_value`: a record written only
    /// by the member that still holds a lock.
    pub async fn put_while_held(
        &self,
        key: &str,
        value: impl Into<Vec<u8>>,
        holder: &str,
        holder_value: &[u8],
    ) -> Result<i64, EtcdError> {
        let value = value.into();
        let cmp = [Compare::value(holder, CompareOp::Equal, holder_value)];
        let ours = |kv: Option<&Kv>| kv.is_some_and(|kv| kv.value == value);
        self.cas("put-while-held", key, cmp, TxnOp::put(key, value.clone(), None), None, ours).await
    }

    /// Grants a lease of `ttl` (whole seconds, rounded up: etcd's unit).
    pub async fn grant_lease(&self, ttl: Duration) -> Result<(LeaseId, Duration), EtcdError> {
        let secs = ttl.as_millis().div_ceil(1000).max(1) as i64;
        let (resp, _) = self
            .call("lease-grant", "", || {
                let mut c = self.client.lease_client();
                async move { c.grant(secs, None).await }
            })
            .await?;
        Ok((resp.id(), Duration::from_secs(resp.ttl().max(0) as u64)))
    }

    /// Remaining time to live of a lease, or `LeaseLost`.
    pub async fn lease_ttl(&self, lease: LeaseId) -> Result<Duration, EtcdError> {
        self.time_to_live(lease).await.map(|(left, _)| left)
    }

    /// The TTL a lease was granted with, or `LeaseLost`.
    pub async fn lease_granted_ttl(&self, lease: LeaseId) -> Result<Duration, EtcdError> {
        self.time_to_live(lease).await.map(|(_, granted)| granted)
    }

    /// A live lease's remaining and granted TTL, or `LeaseLost`.
    async fn time_to_live(&self, lease: LeaseId) -> Result<(Duration, Duration), EtcdError> {
        let (resp, _) = self
            .call("lease-ttl", "", || {
                let mut c = self.client.lease_client();
                async move { c.time_to_live(lease, None).await }
            })
            .await
            .map_err(|e| with_lease(e, Some(lease)))?;
        if resp.ttl() <= 0 {
            return Err(EtcdError::LeaseLost { lease, detail: "time to live is over".into() });
        }
        Ok((Duration::from_secs(resp.ttl() as u64), Duration::from_secs(resp.granted_ttl().max(0) as u64)))
    }

    pub async fn revoke_lease(&self, lease: LeaseId) -> Result<(), EtcdError> {
        self.call("lease-revoke", "", || {
            let mut c = self.client.lease_client();
            async move { c.revoke(lease).await }
        })
        .await
        .map_err(|e| with_lease(e, Some(lease)))?;
        Ok(())
    }

    /// The member this client talks to and the raft leader it knows (`Status` of the
    /// maintenance API): `(member_id, leader_id)`.
    pub async fn raft_status(&self) -> Result<(u64, u64), EtcdError> {
        let (resp, _) = self
            .call("status", "", || {
                let mut c = self.client.maintenance_client();
                async move { c.status().await }
            })
            .await?;
        Ok((resp.header().map_or(0, |h| h.member_id()), resp.leader()))
    }

    /// The cluster's members: `(id, name, client URLs)`.
    pub async fn members(&self) -> Result<Vec<(u64, String, Vec<String>)>, EtcdError> {
        let (resp, _) = self
            .call("member-list", "", || {
                let mut c = self.client.cluster_client();
                async move { c.member_list().await }
            })
            .await?;
        Ok(resp.members().iter().map(|m| (m.id(), m.name().to_owned(), m.client_urls().to_vec())).collect())
    }

    /// Hands raft leadership to member `target`; only the current leader can do it (send it
    /// through a client of that member). Needs the root role when auth is on.
    pub async fn move_leader(&self, target: u64) -> Result<(), EtcdError> {
        self.call("move-leader", "", || {
            let mut c = self.client.maintenance_client();
            async move { c.move_leader(target).await }
        })
        .await?;
        Ok(())
    }

    pub fn lease_renewer(&self, lease: LeaseId) -> LeaseRenewer {
        LeaseRenewer { etcd: self.clone(), lease, stream: None }
    }

    /// A watch of every key under `prefix`, starting after `after_revision` (usually the
    /// revision of the snapshot the caller just read).
    pub fn watch_prefix(&self, prefix: &str, after_revision: i64) -> PrefixWatch {
        PrefixWatch::new(self.clone(), prefix.to_owned(), after_revision)
    }

    pub(crate) fn client(&self) -> &Client {
        &self.client
    }
}

fn with_lease(e: EtcdError, lease: Option<LeaseId>) -> EtcdError {
    match (e, lease) {
        (EtcdError::LeaseLost { detail, .. }, Some(lease)) => EtcdError::LeaseLost { lease, detail },
        (e, _) => e,
    }
}

/// Renews one lease on demand over a keep-alive stream, reopening the stream when a reconnect
/// broke it. The caller decides the schedule; each `renew` is bounded by the request timeout.
pub struct LeaseRenewer {
    etcd: Etcd,
    lease: LeaseId,
    stream: Option<(LeaseKeeper, LeaseKeepAliveStream)>,
}

impl LeaseRenewer {
    pub fn lease(&self) -> LeaseId {
        self.lease
    }

    /// Sends one keep-alive and waits for its answer: the lease's new time to live.
    pub async fn renew(&mut self) -> Result<Duration, EtcdError> {
        let timeout = self.etcd.timeout;
        let lease = self.lease;
        let result = tokio::time::timeout(timeout, async {
            let open = match self.stream.take() {
                Some(open) => open,
                None => {
                    let mut lc = self.etcd.client().lease_client();
                    lc.keep_alive(lease).await.map_err(|e| EtcdError::from_client("lease-keepalive", "", e))?
                }
            };
            let (keeper, stream) = self.stream.insert(open);
            keeper.keep_alive().await.map_err(|e| EtcdError::from_client("lease-keepalive", "", e))?;
            match stream.message().await {
                Ok(Some(resp)) if resp.ttl() > 0 => Ok(Duration::from_secs(resp.ttl() as u64)),
                Ok(Some(_)) => Err(EtcdError::LeaseLost { lease, detail: "keep-alive answered ttl 0".into() }),
                Ok(None) => Err(EtcdError::Unavailable {
                    op: "lease-keepalive",
                    key: String::new(),
                    detail: "stream closed".into(),
                }),
                Err(e) => Err(EtcdError::from_client("lease-keepalive", "", e)),
            }
        })
        .await
        .unwrap_or_else(|_| Err(EtcdError::timeout("lease-keepalive", "", timeout)));
        if result.is_err() {
            // A stream that missed an answer may deliver it later, out of step; start afresh.
            self.stream = None;
        }
        with_lease_result(result, lease)
    }
}

fn with_lease_result(r: Result<Duration, EtcdError>, lease: LeaseId) -> Result<Duration, EtcdError> {
    r.map_err(|e| with_lease(e, Some(lease)))
}
