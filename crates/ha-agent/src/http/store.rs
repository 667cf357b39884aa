//! The etcd operations the REST API needs, behind a small trait so that the endpoints that
//! read and write the cluster's keys can be tested without an etcd (an in-memory store below).

use futures::future::BoxFuture;
use outrigger_etcd::{Etcd, EtcdError, Kv};

pub trait Store: Send + Sync {
    /// A linearizable read of every key under `prefix`.
    fn read(&self, prefix: String) -> BoxFuture<'_, Result<Vec<Kv>, EtcdError>>;
    fn put(&self, key: String, value: String) -> BoxFuture<'_, Result<(), EtcdError>>;
    /// Puts only while the key's mod_revision is `rev` (0: absent); returns the new revision.
    fn put_if_mod_revision(&self, key: String, rev: i64, value: String) -> BoxFuture<'_, Result<i64, EtcdError>>;
}

impl Store for Etcd {
    fn read(&self, prefix: String) -> BoxFuture<'_, Result<Vec<Kv>, EtcdError>> {
        Box::pin(async move { Ok(self.get_prefix(&prefix).await?.kvs) })
    }

    fn put(&self, key: String, value: String) -> BoxFuture<'_, Result<(), EtcdError>> {
        Box::pin(async move { Etcd::put(self, &key, value, None).await.map(drop) })
    }

    fn put_if_mod_revision(&self, key: String, rev: i64, value: String) -> BoxFuture<'_, Result<i64, EtcdError>> {
        Box::pin(async move { Etcd::put_if_mod_revision(self, &key, rev, value).await })
    }
}

/// The agent's own store: every member at once, the first answer wins (see `crate::hedge`);
/// a compare-and-swap commits at most once however many members got it.
impl Store for outrigger_etcd::PerEndpoint {
    fn read(&self, prefix: String) -> BoxFuture<'_, Result<Vec<Kv>, EtcdError>> {
        Box::pin(async move { Ok(self.get_prefix(&prefix).await?.kvs) })
    }

    fn put(&self, key: String, value: String) -> BoxFuture<'_, Result<(), EtcdError>> {
        Box::pin(async move { self.first_ok(|c| c.put(&key, value.clone(), None)).await.map(drop) })
    }

    fn put_if_mod_revision(&self, key: String, rev: i64, value: String) -> BoxFuture<'_, Result<i64, EtcdError>> {
        Box::pin(async move { self.first_ok(|c| c.put_if_mod_revision(&key, rev, value.clone())).await })
    }
}

/// An in-memory store for tests: keys with their mod_revision, one global revision counter.
#[derive(Default)]
pub struct MemStore {
    inner: std::sync::Mutex<(i64, std::collections::BTreeMap<String, Kv>)>,
}

impl MemStore {
    pub fn set(&self, key: &str, value: &str) -> i64 {
        let mut g = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        g.0 += 1;
        let rev = g.0;
        let create = g.1.get(key).map_or(rev, |kv| kv.create_revision);
        g.1.insert(
            key.to_owned(),
            Kv {
                key: key.to_owned(),
                value: value.as_bytes().to_vec(),
                create_revision: create,
                mod_revision: rev,
                lease: 0,
            },
        );
        rev
    }

    pub fn remove(&self, key: &str) {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner).1.remove(key);
    }

    pub fn value(&self, key: &str) -> Option<String> {
        let g = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        g.1.get(key).map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
    }

    fn mod_revision(&self, key: &str) -> i64 {
        let g = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        g.1.get(key).map_or(0, |kv| kv.mod_revision)
    }
}

impl Store for MemStore {
    fn read(&self, prefix: String) -> BoxFuture<'_, Result<Vec<Kv>, EtcdError>> {
        let g = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let kvs = g.1.values().filter(|kv| kv.key.starts_with(&prefix)).cloned().collect();
        Box::pin(async move { Ok(kvs) })
    }

    fn put(&self, key: String, value: String) -> BoxFuture<'_, Result<(), EtcdError>> {
        self.set(&key, &value);
        Box::pin(async { Ok(()) })
    }

    fn put_if_mod_revision(&self, key: String, rev: i64, value: String) -> BoxFuture<'_, Result<i64, EtcdError>> {
        let r = if self.mod_revision(&key) == rev {
            Ok(self.set(&key, &value))
        } else {
            Err(EtcdError::CompareFailed { op: "put-if-mod-revision", key, current: None })
        };
        Box::pin(async move { r })
    }
}
