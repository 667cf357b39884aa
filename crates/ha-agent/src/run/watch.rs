//! The etcd watch task: wakes the HA loop when a key that matters changes, so that replicas
//! react to the leader key's deletion at once rather than on the next timer tick.

use std::sync::Arc;
use std::time::Duration;

use outrigger_etcd::{Etcd, WatchUpdate};
use outrigger_schema::ClusterKey;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Wakes the HA loop when a key that matters changes (anything but our own member key and
/// `status`, which we write ourselves).
pub(super) async fn watch(
    etcd: Etcd,
    layout: outrigger_schema::KeyLayout,
    me: String,
    wake: Arc<Notify>,
    stop: CancellationToken,
) {
    let prefix = layout.prefix();
    let own = layout.member(&me).unwrap_or_default();
    let status = layout.key(ClusterKey::Status);
    let revision = loop {
        match etcd.get_prefix(&prefix).await {
            Ok(s) => break s.revision,
            Err(_) => {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
        }
    };
    let mut w = etcd.watch_prefix(&prefix, revision);
    loop {
        let next = tokio::select! {
            () = stop.cancelled() => return,
            n = w.next() => n,
        };
        match next {
            Ok(WatchUpdate::Changes { changes, .. }) => {
                if changes.iter().any(|c| c.key() != own && c.key() != status) {
                    wake.notify_one();
                }
            }
            Ok(WatchUpdate::Resync(_)) => wake.notify_one(),
            // The watch reconnects by itself on the next call, after a short backoff.
            Err(e) => tracing::debug!(error = %e, "etcd watch interrupted"),
        }
    }
}
