//! Every metric ha-agent exports, in one place.
//!
//! Own metrics are `ha_agent_*` with labels from closed sets. Patroni's `patroni_*` gauges
//! that dashboards already use are served too, with Patroni's `scope` and `name` labels.

use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use crate::core::Decision;

/// Values for the `patroni_*` gauges.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PatroniGauges {
    pub running: bool,
    pub primary: bool,
    pub replica: bool,
    pub xlog_location: u64,
    pub timeline: u32,
    pub cluster_unlocked: bool,
    pub pending_restart: bool,
}

pub struct Metrics {
    pub registry: Registry,
    /// Decisions made, by kind (`Decision::kind`).
    pub decisions: IntCounterVec,
    /// Fences by the lease keeper, by reason.
    pub fences: IntCounterVec,
    /// Lease operations, by result: granted, ok, failed, lost.
    pub lease_renewals: IntCounterVec,
    /// etcd requests of the HA loop that failed, by operation.
    pub etcd_errors: IntCounterVec,
    /// Values in etcd that could not be decoded, by key kind (member, config, ...).
    pub decode_errors: IntCounterVec,
    /// Duration of one HA cycle (read, decide, act).
    pub cycle_seconds: Histogram,
    /// Unix time of the last completed HA cycle.
    pub last_cycle: IntGauge,
    patroni_version: IntGauge,
    patroni_running: IntGauge,
    patroni_primary: IntGauge,
    patroni_replica: IntGauge,
    patroni_xlog_location: IntGauge,
    patroni_timeline: IntGauge,
    patroni_unlocked: IntGauge,
    patroni_pending_restart: IntGauge,
}

fn register<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
    r.register(Box::new(c.clone())).expect("each metric is registered once");
    c
}

fn counter(r: &Registry, name: &str, help: &str, label: &str, values: &[&str]) -> IntCounterVec {
    let c = register(r, IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric definition"));
    for v in values {
        c.with_label_values(&[*v]);
    }
    c
}

fn patroni_gauge(r: &Registry, name: &str, help: &str, scope: &str, member: &str) -> IntGauge {
    let v = register(r, IntGaugeVec::new(Opts::new(name, help), &["scope", "name"]).expect("valid metric definition"));
    v.with_label_values(&[scope, member])
}

impl Metrics {
    pub fn new(scope: &str, name: &str) -> Self {
        let r = outrigger_daemon::metrics::registry("ha_agent", env!("CARGO_PKG_VERSION"));
        let decisions =
            counter(&r, "ha_agent_decisions_total", "HA decisions made, by kind.", "decision", &Decision::KINDS);
        let fences = counter(
            &r,
            "ha_agent_fences_total",
            "PostgreSQL fenced by the lease keeper, by reason.",
            "reason",
            &["lease_not_renewed"],
        );
        let lease_renewals = counter(
            &r,
            "ha_agent_lease_operations_total",
            "Lease grants and renewals, by result.",
            "result",
            &["granted", "ok", "failed", "lost"],
        );
        let etcd_errors = counter(
            &r,
            "ha_agent_etcd_errors_total",
            "etcd requests of the HA loop that failed, by operation.",
            "op",
            &["read", "write"],
        );
        let decode_errors = counter(
            &r,
            "ha_agent_decode_errors_total",
            "etcd values that could not be decoded, by key kind.",
            "key",
            &["member", "config", "other"],
        );
        let cycle_seconds = register(
            &r,
            Histogram::with_opts(
                HistogramOpts::new("ha_agent_cycle_duration_seconds", "Duration of one HA cycle.")
                    .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            )
            .expect("valid metric definition"),
        );
        let last_cycle = register(
            &r,
            IntGauge::new("ha_agent_last_cycle_timestamp_seconds", "Unix time of the last completed HA cycle.")
                .expect("valid metric definition"),
        );
        let g = |n: &str, h: &str| patroni_gauge(&r, n, h, scope, name);
        let m = Self {
            decisions,
            fences,
            lease_renewals,
            etcd_errors,
            decode_errors,
            cycle_seconds,
            last_cycle,
            patroni_version: g("patroni_version", "Version of the Patroni contract implemented (zero-padded)."),
            patroni_running: g("patroni_postgres_running", "1 if PostgreSQL is running."),
            patroni_primary: g("patroni_primary", "1 if this member is the primary."),
            patroni_replica: g("patroni_replica", "1 if this member is a running replica."),
            patroni_xlog_location: g("patroni_xlog_location", "WAL position of this member in bytes."),
            patroni_timeline: g("patroni_postgres_timeline", "PostgreSQL timeline of this member."),
            patroni_unlocked: g("patroni_cluster_unlocked", "1 if no member holds the leader key."),
            patroni_pending_restart: g("patroni_pending_restart", "1 if PostgreSQL needs a restart for a setting."),
            registry: r,
        };
        m.patroni_version.set(40104);
        m
    }

    pub fn set_patroni(&self, g: PatroniGauges) {
        self.patroni_running.set(i64::from(g.running));
        self.patroni_primary.set(i64::from(g.primary));
        self.patroni_replica.set(i64::from(g.replica));
        self.patroni_xlog_location.set(i64::try_from(g.xlog_location).unwrap_or(i64::MAX));
        self.patroni_timeline.set(i64::from(g.timeline));
        self.patroni_unlocked.set(i64::from(g.cluster_unlocked));
        self.patroni_pending_restart.set(i64::from(g.pending_restart));
    }

    pub fn render(&self) -> String {
        outrigger_daemon::metrics::render(&self.registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_and_patroni_names_are_exposed() {
        let m = Metrics::new("batman", "n1");
        m.decisions.with_label_values(&["lead"]).inc();
        m.set_patroni(PatroniGauges { primary: true, timeline: 3, ..PatroniGauges::default() });
        let text = m.render();
        assert!(text.contains("ha_agent_decisions_total{decision=\"lead\"} 1"), "{text}");
        assert!(text.contains("patroni_primary{name=\"n1\",scope=\"batman\"} 1"), "{text}");
        assert!(text.contains("patroni_postgres_timeline{name=\"n1\",scope=\"batman\"} 3"), "{text}");
        assert!(text.contains("ha_agent_build_info"), "{text}");
    }
}
