//! The etcd watch task: wakes the HA loop when a key that matters changes, so that replicas
//! react to the leader key's deletion at once rather than on the next timer tick.

use std::sync::Arc;
use std::time::Duration;

use outrigger_etcd::WatchUpdate;
use outrigger_schema::ClusterKey;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use outrigger_etcd::PerEndpoint;

/// Wakes the HA loop when a key that matters changes (anything but our own member key and
/// `status`, which we write ourselves). Watches through one etcd member at a time: when that
/// member fails, it moves on to the next (with a full read first, which wakes the loop).
pub(super) async fn watch(
    etcd: PerEndpoint,
    layout: outrigger_schema::KeyLayout,
    me: String,
    wake: Arc<Notify>,
    stop: CancellationToken,
) {
    let prefix = layout.prefix();
    let own = layout.member(&me).unwrap_or_default();
    let status = layout.key(ClusterKey::Status);
    let mut member = 0usize;
    loop {
        member = member.wrapping_add(1);
        let Some((client, revision)) = (match etcd.client(member).await {
            Ok(c) => c.get_prefix(&prefix).await.ok().map(|s| (c.clone(), s.revision)),
            Err(_) => None,
        }) else {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
            continue;
        };
        // Whatever changed while we were not watching.
        wake.notify_one();
        let mut w = client.watch_prefix(&prefix, revision);
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
                Err(e) => {
                    tracing::debug!(error = %e, "etcd watch interrupted; watching through the next member");
                    break;
                }
            }
        }
    }
}
