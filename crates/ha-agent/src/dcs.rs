//! The cluster's keys in etcd, written the way Patroni 4.x writes them
//! (`../shared/reference/patroni.md` §1.3): the leader key is created with a create-if-absent
//! transaction on the member's lease, moved to a new lease with a value-equals transaction,
//! released with a value-equals delete; `initialize` is raced with create-if-absent; `config`
//! and `failover` are written with compare-on-mod-revision.

use outrigger_etcd::{Etcd, EtcdError, Kv, LeaseId};
use outrigger_schema::{ClusterKey, HistoryEntry, KeyLayout, MemberValue, StatusValue};

pub struct Dcs {
    etcd: Etcd,
    /// For the cycle's read (see `hedge`).
    hedged: crate::hedge::PerEndpoint,
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
    pub fn new(etcd: Etcd, hedged: crate::hedge::PerEndpoint, layout: KeyLayout, name: &str) -> Self {
        Self { etcd, hedged, layout, name: name.to_owned() }
    }

    pub fn etcd(&self) -> &Etcd {
        &self.etcd
    }

    pub fn layout(&self) -> &KeyLayout {
        &self.layout
    }

    fn key(&self, k: ClusterKey) -> String {
        self.layout.key(k)
    }

    /// One linearizable read of the whole cluster prefix, from the first member to answer.
    pub async fn snapshot(&self) -> Result<(i64, Vec<Kv>), EtcdError> {
        let s = self.hedged.get_prefix(&self.layout.prefix()).await?;
        Ok((s.revision, s.kvs))
    }

    /// The leader race: create the leader key holding our name on our lease, if absent.
    pub async fn acquire(&self, lease: LeaseId) -> Result<bool, EtcdError> {
        cas(self.etcd.create_if_absent(&self.key(ClusterKey::Leader), self.name.as_bytes(), Some(lease)).await)
    }

    /// Moves our leader key onto `lease`, only while it still holds our name.
    pub async fn retake(&self, lease: LeaseId) -> Result<bool, EtcdError> {
        let n = self.name.as_bytes();
        cas(self.etcd.put_if_value(&self.key(ClusterKey::Leader), n, n, Some(lease)).await)
    }

    /// Deletes the leader key only while it holds our name.
    pub async fn release(&self) -> Result<bool, EtcdError> {
        cas(self.etcd.delete_if_value(&self.key(ClusterKey::Leader), self.name.as_bytes()).await)
    }

    pub async fn touch_member(&self, value: &MemberValue, lease: LeaseId) -> Result<(), EtcdError> {
        let key = self.layout.member(&self.name).map_err(|e| EtcdError::Rejected {
            op: "put",
            key: self.name.clone(),
            detail: e.to_string(),
        })?;
        let json = serde_json::to_string(value).unwrap_or_default();
        self.etcd.put(&key, json, Some(lease)).await.map(drop)
    }

    /// The bootstrap race: `initialize` = `""` if absent.
    pub async fn race_initialize(&self) -> Result<bool, EtcdError> {
        cas(self.etcd.create_if_absent(&self.key(ClusterKey::Initialize), "", None).await)
    }

    /// Gives up a bootstrap that failed, so that another member can try.
    pub async fn cancel_initialize(&self) -> Result<(), EtcdError> {
        cas(self.etcd.delete_if_value(&self.key(ClusterKey::Initialize), b"").await).map(drop)
    }

    pub async fn set_initialize(&self, sysid: u64) -> Result<(), EtcdError> {
        self.etcd.put(&self.key(ClusterKey::Initialize), sysid.to_string(), None).await.map(drop)
    }

    /// Writes `config` unless someone already has.
    pub async fn create_config(&self, json: &str) -> Result<bool, EtcdError> {
        cas(self.etcd.put_if_mod_revision(&self.key(ClusterKey::Config), 0, json).await)
    }

    pub async fn write_status(&self, status: &StatusValue) -> Result<(), EtcdError> {
        let json = serde_json::to_string(status).unwrap_or_default();
        self.etcd.put(&self.key(ClusterKey::Status), json, None).await.map(drop)
    }

    pub async fn write_history(&self, rows: &[HistoryEntry]) -> Result<(), EtcdError> {
        self.etcd.put(&self.key(ClusterKey::History), HistoryEntry::encode_list(rows), None).await.map(drop)
    }

    /// Clears `failover` with `{}` (as Patroni does), unless it changed since `mod_revision`.
    pub async fn clear_failover(&self, mod_revision: i64) -> Result<bool, EtcdError> {
        cas(self.etcd.put_if_mod_revision(&self.key(ClusterKey::Failover), mod_revision, "{}").await)
    }

    pub async fn revoke(&self, lease: LeaseId) -> Result<(), EtcdError> {
        self.etcd.revoke_lease(lease).await
    }
}
