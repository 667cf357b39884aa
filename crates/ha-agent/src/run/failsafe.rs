//! failsafe_mode's rounds of `POST /failsafe`, on their own task beside the HA loop: the loop
//! may sit in an etcd read for `retry_timeout` when etcd is gone, and a round sent only after
//! that read failed can come after the fence. While `core::failsafe_round_due` says so (an
//! armed primary whose lease renewals are late), the task sends one round every
//! `keeper::failsafe_interval`; a round every member accepts extends the keeper's trust
//! (`LeaseHandle::failsafe_confirmed`), any other ends it (`failsafe_lost`).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::config::Timings;
use crate::core::PeerRef;
use crate::http::ApiState;
use crate::lease::LeaseHandle;
use crate::metrics::Metrics;

/// What the HA loop hands the task after each cycle.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inputs {
    pub failsafe_mode: bool,
    /// The members of the last `failsafe` key read (`None`: none read).
    pub members: Option<Vec<PeerRef>>,
    /// The timings in force.
    pub timings: Timings,
}

/// Who the task speaks as.
pub struct Me {
    pub name: String,
    pub conn_url: String,
    pub api_url: String,
    pub peer_timeout: Duration,
}

pub async fn run(
    me: Me,
    lease: LeaseHandle,
    api: Arc<ApiState>,
    metrics: Arc<Metrics>,
    clock: Clock,
    mut inputs: watch::Receiver<Inputs>,
    stop: CancellationToken,
) {
    let body = crate::http::failsafe::body(&me.name, &me.conn_url, &me.api_url);
    let timeout = me.peer_timeout.min(crate::http::failsafe::POST_TIMEOUT);
    let mut confirmed = false;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
            r = inputs.changed() => if r.is_err() { return },
        }
        let (due, interval) = {
            let i = inputs.borrow();
            let due = crate::core::failsafe_round_due(
                i.failsafe_mode,
                lease.armed(),
                lease.lease_unproven(),
                i.members.as_deref(),
            )
            .map(<[PeerRef]>::to_vec);
            (due, crate::core::keeper::failsafe_interval(&i.timings))
        };
        let Some(members) = due else {
            confirmed = false;
            continue;
        };
        let sent = clock.now();
        let auth = api.settings().access.basic.clone();
        let answers = crate::http::failsafe::round(&members, &body, auth.as_deref(), timeout).await;
        let refused: Vec<String> =
            answers.iter().filter_map(|(n, r)| r.as_ref().err().map(|e| format!("{n}: {e}"))).collect();
        metrics.failsafe_rounds.with_label_values(&[if refused.is_empty() { "confirmed" } else { "refused" }]).inc();
        if refused.is_empty() {
            lease.failsafe_confirmed(sent);
            if !confirmed {
                tracing::warn!(
                    members = members.len(),
                    "failsafe_mode: etcd does not answer and every member confirmed this primary; it stays primary"
                );
            }
            confirmed = true;
        } else {
            lease.failsafe_lost();
            tracing::warn!(
                refused = refused.join("; "),
                "failsafe_mode: not every member confirmed this primary; it is fenced when its lease runs out"
            );
            confirmed = false;
        }
        // The next round one interval after this one was sent.
        let next = clock.instant(sent.plus(interval));
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep_until(next) => {}
        }
    }
}
