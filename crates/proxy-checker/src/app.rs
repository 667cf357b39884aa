//! The state every check reads: the two views, the policy and the metrics, behind one cheap
//! handle shared by the HTTP and agent servers.

use std::time::Instant;

use tokio::sync::watch;

use crate::check::Check;
use crate::metrics::Metrics;
use crate::verdict::{Observed, Policy, Verdict, decide};
use crate::view::{EtcdView, PgView};

/// Read side of the state. The I/O tasks hold the matching senders; a check borrows both views
/// for the microseconds a decision takes (no lock is ever held across an await).
pub struct App {
    /// The bounds in force (a config reload may change them).
    pub policy: watch::Receiver<Policy>,
    pub etcd: watch::Receiver<EtcdView>,
    pub pg: watch::Receiver<PgView>,
    pub metrics: Metrics,
}

impl App {
    /// Decides `check` against the current views, now.
    pub fn decide(&self, check: &Check) -> Verdict {
        let etcd = self.etcd.borrow();
        let pg = self.pg.borrow();
        decide(check, &Observed { etcd: &etcd, pg: &pg, now: Instant::now() }, &self.policy.borrow())
    }

    /// Sets the state gauges and renders every metric, for `GET /metrics`.
    pub fn render_metrics(&self) -> String {
        let now = Instant::now();
        let role = self.decide(&Check::new(crate::check::Endpoint::Health)).role;
        let etcd = self.etcd.borrow();
        let pg = self.pg.borrow();
        self.metrics.observe_state(&etcd, &pg, &self.policy.borrow(), role, now);
        drop((etcd, pg));
        outrigger_daemon::metrics::render(&self.metrics.registry)
    }
}
