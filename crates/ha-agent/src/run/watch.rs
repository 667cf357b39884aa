//! The etcd watch task: wakes the HA loop when a key that matters changes, so that replicas
//! react to the leader key's deletion at once rather than on the next timer tick.

use std::sync::Arc;
use std::time::Duration;

use outrigger_etcd::WatchUpdate;
use outrigger_schema::ClusterKey;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::hedge::PerEndpoint;

/// Wakes the HA loop when a cluster-wide key changes: `leader` (a replica reacts to its
/// deletion at once), `config`, `failover`, `initialize`, `sync`, `history`, `failsafe`, as
/// Patroni's watch does. Not member keys, `status` or the keys of other tools: every member
/// rewrites its own key whenever its WAL position moves, so under write load waking on them
/// made the members wake each other about ten times a second (each cycle a read of etcd and
/// queries to PostgreSQL) instead of once per `loop_wait`. Watches through one etcd member at
/// a time: when that member fails, it moves on to the next (with a full read first, which
/// wakes the loop).
pub(super) async fn watch(
    etcd: PerEndpoint,
    layout: outrigger_schema::KeyLayout,
    wake: Arc<Notify>,
    stop: CancellationToken,
) {
    let prefix = layout.prefix();
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
                    if changes.iter().any(|c| wakes(&layout, c.key())) {
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

/// Whether a change of `key` wakes the loop (see [`watch`]).
fn wakes(layout: &outrigger_schema::KeyLayout, key: &str) -> bool {
    use outrigger_schema::KeyKind;
    match layout.classify(key) {
        Some(KeyKind::Fixed(k)) => !matches!(k, ClusterKey::Status | ClusterKey::LegacyLeaderOptime),
        Some(KeyKind::Member(_) | KeyKind::Other(_)) | None => false,
    }
}

#[cfg(test)]
mod tests {
    use outrigger_schema::KeyLayout;

    use super::wakes;

    #[test]
    fn only_cluster_wide_keys_wake_the_loop_not_member_keys_or_status() {
        let l = KeyLayout::new("service", "b").expect("layout");
        for k in ["leader", "config", "failover", "initialize", "sync", "history", "failsafe"] {
            assert!(wakes(&l, &format!("/service/b/{k}")), "{k}");
        }
        for k in ["members/n2", "status", "optime/leader", "outrigger/backup/last"] {
            assert!(!wakes(&l, &format!("/service/b/{k}")), "{k}");
        }
    }
}
