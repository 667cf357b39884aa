//! The cluster's keys in etcd, written the way Patroni 4.x writes them
//! (`../shared/reference/patroni.md` §1.3): the leader key is created with a create-if-absent
//! transaction on the member's lease, moved to a new lease with a value-equals transaction,
//! released with a value-equals delete; `initialize` is raced with create-if-absent; `config`
//! `failover` and `sync` are written with compare-on-mod-revision.

use outrigger_etcd::{EtcdError, Kv, LeaseId};
use outrigger_schema::{ClusterKey, HistoryEntry, KeyLayout, MemberValue, StatusValue, SyncValue};

use outrigger_etcd::PerEndpoint;

pub struct Dcs {
    /// Every request goes to all members at once (see `hedge`).
    etcd: PerEndpoint,
    layout: KeyLayout,
    name: String,
}

/// `Ok(false)` for a compare that did not hold; other errors as they are.
fn cas(r: Result<i64, EtcdError>) -> Result<bool, EtcdError> {
    match r {
        Ok(_) => Ok(true),
        Err(EtcdError::CompareFailed { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

impl Dcs {
    pub fn new(etcd: PerEndpoint, layout: KeyLayout, name: &str) -> Self {
        Self { etcd, layout, name: name.to_owned() }
    }

    pub fn layout(&self) -> &KeyLayout {
        &self.layout
    }

    pub fn etcd(&self) -> &PerEndpoint {
        &self.etcd
    }

    fn key(&self, k: ClusterKey) -> String {
        self.layout.key(k)
    }

    /// One linearizable read of the whole cluster prefix, from the first member to answer.
    pub async fn snapshot(&self) -> Result<(i64, Vec<Kv>), EtcdError> {
        let s = self.etcd.get_prefix(&self.layout.prefix()).await?;
        Ok((s.revision, s.kvs))
    }

    /// The TTL etcd granted `lease` with (another member's leader lease).
    pub async fn granted_ttl(&self, lease: LeaseId) -> Result<std::time::Duration, EtcdError> {
        self.etcd.first_ok(|c| c.lease_granted_ttl(lease)).await
    }

    async fn put(&self, key: &str, value: &str, lease: Option<LeaseId>) -> Result<(), EtcdError> {
        self.etcd.first_ok(|c| c.put(key, value.to_owned(), lease)).await.map(drop)
    }

    /// The leader race: create the leader key holding our name on our lease, if absent.
    pub async fn acquire(&self, lease: LeaseId) -> Result<bool, EtcdError> {
        let key = self.key(ClusterKey::Leader);
        cas(self.etcd.first_ok(|c| c.create_if_absent(&key, self.name.as_bytes(), Some(lease))).await)
    }

    /// Moves our leader key onto `lease`, only while it still holds our name.
    pub async fn retake(&self, lease: LeaseId) -> Result<bool, EtcdError> {
        let key = self.key(ClusterKey::Leader);
        let n = self.name.as_bytes();
        cas(self.etcd.first_ok(|c| c.put_if_value(&key, n, n, Some(lease))).await)
    }

    /// Deletes the leader key only while it holds our name.
    pub async fn release(&self) -> Result<bool, EtcdError> {
        let key = self.key(ClusterKey::Leader);
        cas(self.etcd.first_ok(|c| c.delete_if_value(&key, self.name.as_bytes())).await)
    }

    pub async fn touch_member(&self, value: &MemberValue, lease: LeaseId) -> Result<(), EtcdError> {
        let key = self.layout.member(&self.name).map_err(|e| EtcdError::Rejected {
            op: "put",
            key: self.name.clone(),
            detail: e.to_string(),
        })?;
        self.put(&key, &serde_json::to_string(value).unwrap_or_default(), Some(lease)).await
    }

    /// The bootstrap race: `initialize` = `""` if absent.
    pub async fn race_initialize(&self) -> Result<bool, EtcdError> {
        let key = self.key(ClusterKey::Initialize);
        cas(self.etcd.first_ok(|c| c.create_if_absent(&key, "", None)).await)
    }

    /// Gives up a bootstrap that failed, so that another member can try.
    pub async fn cancel_initialize(&self) -> Result<(), EtcdError> {
        let key = self.key(ClusterKey::Initialize);
        cas(self.etcd.first_ok(|c| c.delete_if_value(&key, b"")).await).map(drop)
    }

    pub async fn set_initialize(&self, sysid: u64) -> Result<(), EtcdError> {
        self.put(&self.key(ClusterKey::Initialize), &sysid.to_string(), None).await
    }

    /// Writes `config` unless someone already has.
    pub async fn create_config(&self, json: &str) -> Result<bool, EtcdError> {
        let key = self.key(ClusterKey::Config);
        cas(self.etcd.first_ok(|c| c.put_if_mod_revision(&key, 0, json.to_owned())).await)
    }

    /// `failsafe` (a plain put, as Patroni writes it).
    pub async fn write_failsafe(&self, v: &outrigger_schema::FailsafeValue) -> Result<(), EtcdError> {
        self.put(&self.key(ClusterKey::Failsafe), &v.encode(), None).await
    }

    pub async fn write_status(&self, status: &StatusValue) -> Result<(), EtcdError> {
        self.put(&self.key(ClusterKey::Status), &serde_json::to_string(status).unwrap_or_default(), None).await
    }

    /// Writes `history` only if it is still at `mod_revision` (0: absent), returning the new
    /// revision. Never a plain put: a copy of an older write delivered late (a hung member
    /// that wakes up) must not roll the timeline list back.
    pub async fn write_history(&self, rows: &[HistoryEntry], mod_revision: i64) -> Result<i64, EtcdError> {
        let key = self.key(ClusterKey::History);
        let text = HistoryEntry::encode_list(rows);
        self.etcd.first_ok(|c| c.put_if_mod_revision(&key, mod_revision, text.clone())).await
    }

    /// Clears `failover` with `{}` (as Patroni does), unless it changed since `mod_revision`.
    pub async fn clear_failover(&self, mod_revision: i64) -> Result<bool, EtcdError> {
        let key = self.key(ClusterKey::Failover);
        cas(self.etcd.first_ok(|c| c.put_if_mod_revision(&key, mod_revision, "{}")).await)
    }

    /// Writes `sync` naming `leader` with these standbys, only if the key is still at
    /// `mod_revision` (0: absent), in Patroni 4's form
    /// (`{"leader":..,"quorum":..,"sync_standby":"a,b"|null}`). Returns the new revision.
    pub async fn write_sync(
        &self,
        leader: &str,
        standbys: &[String],
        quorum: u32,
        mod_revision: i64,
    ) -> Result<Option<i64>, EtcdError> {
        let key = self.key(ClusterKey::Sync);
        let text = SyncValue::patroni(leader, standbys, quorum).encode();
        match self.etcd.first_ok(|c| c.put_if_mod_revision(&key, mod_revision, text.clone())).await {
            Ok(rev) => Ok(Some(rev)),
            Err(EtcdError::CompareFailed { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Deletes `sync` unless it changed since `mod_revision`.
    pub async fn delete_sync(&self, mod_revision: i64) -> Result<bool, EtcdError> {
        let key = self.key(ClusterKey::Sync);
        cas(self.etcd.first_ok(|c| c.delete_if_mod_revision(&key, mod_revision)).await)
    }

    pub async fn revoke(&self, lease: LeaseId) -> Result<(), EtcdError> {
        self.etcd.first_ok(|c| c.revoke_lease(lease)).await
    }
}
