//! Every metric ha-agent exports, in one place.
//!
//! Own metrics are `ha_agent_*` with labels from closed sets. Patroni's `patroni_*` metrics
//! that dashboards already use are rendered at scrape time from the loop's last snapshot
//! ([`Metrics::render_with`]), with Patroni's names, types and `{scope, name}` labels.

use std::fmt::Write as _;
use std::time::Instant;

use outrigger_schema::MemberRole;
use prometheus::{GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use crate::control::Snapshot;
use crate::core::Decision;

pub struct Metrics {
    pub registry: Registry,
    /// Decisions made, by kind (`Decision::kind`).
    pub decisions: IntCounterVec,
    /// Fences by the lease keeper, by reason.
    pub fences: IntCounterVec,
    /// Lease operations, by result: granted, ok, failed, lost.
    pub lease_renewals: IntCounterVec,
    /// Watchdog events: opened, fed, closed, failed.
    pub watchdog: IntCounterVec,
    /// Config reloads (SIGHUP), by result: applied, unchanged, invalid.
    pub config_reloads: IntCounterVec,
    /// Exits while PostgreSQL may have been a primary, by what the agent did: stopped (it
    /// stopped PostgreSQL) or paused (maintenance mode: left running, as Patroni does).
    pub exits_as_primary: IntCounterVec,
    /// etcd requests of the HA loop that failed, by operation.
    pub etcd_errors: IntCounterVec,
    /// Values in etcd that could not be decoded, by key kind (member, config, ...).
    pub decode_errors: IntCounterVec,
    /// failsafe_mode rounds of `POST /failsafe` (etcd unreachable), by result.
    pub failsafe_rounds: IntCounterVec,
    /// The HA timings in force, by name (ttl, loop_wait, retry_timeout).
    pub timings: GaugeVec,
    /// Changes of the cluster's timings (`config` key) seen, by result: applied, adjusted
    /// (applied with loop_wait or retry_timeout lowered), refused (the running ones kept).
    pub cluster_timings: IntCounterVec,
    /// Duration of one HA cycle (read, decide, act).
    pub cycle_seconds: Histogram,
    /// Unix time of the last completed HA cycle.
    pub last_cycle: IntGauge,
    /// REST requests by kind (health checks, status reads, actions, anything else).
    pub rest_health: IntCounter,
    pub rest_status: IntCounter,
    pub rest_action: IntCounter,
    pub rest_other: IntCounter,
    /// REST connections closed at once because the connection cap was reached.
    pub rest_rejected_limit: IntCounter,
    /// TLS handshakes that failed or timed out.
    pub rest_tls_failed: IntCounter,
    /// Patroni's `scope` and `name` labels, rendered once.
    labels: String,
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

/// A label value escaped for the text format.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Patroni's `PostgresqlState` order, which `patroni_postgres_state` reports as a number.
const PG_STATES: [&str; 15] = [
    "initializing new cluster",
    "initdb failed",
    "running custom bootstrap script",
    "custom bootstrap failed",
    "creating replica",
    "running",
    "starting",
    "starting after custom bootstrap",
    "start failed",
    "restarting",
    "restart failed",
    "stopping",
    "stopped",
    "stop failed",
    "crashed",
];

/// Patroni's `patroni_version` value: each part zero-padded to two digits (4.1.4 → 040104).
fn padded_version(v: &str) -> String {
    v.split('.').map(|p| format!("{p:0>2}")).collect()
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
        let watchdog = counter(
            &r,
            "ha_agent_watchdog_events_total",
            "Watchdog device events, by kind.",
            "event",
            &["opened", "fed", "closed", "failed"],
        );
        let config_reloads = counter(
            &r,
            "ha_agent_config_reloads_total",
            "Config file reloads (SIGHUP), by result.",
            "result",
            &["applied", "unchanged", "invalid"],
        );
        let exits_as_primary = counter(
            &r,
            "ha_agent_exits_as_primary_total",
            "Agent exits while PostgreSQL may have accepted writes, by what was done with it.",
            "action",
            &["stopped", "paused"],
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
        let failsafe_rounds = counter(
            &r,
            "ha_agent_failsafe_rounds_total",
            "failsafe_mode rounds of POST /failsafe sent while etcd was unreachable, by result.",
            "result",
            &["confirmed", "refused"],
        );
        let timings = register(
            &r,
            GaugeVec::new(Opts::new("ha_agent_timings_seconds", "The HA timings in force, by name."), &["timing"])
                .expect("valid metric definition"),
        );
        let cluster_timings = counter(
            &r,
            "ha_agent_cluster_timings_total",
            "Changes of the timings in the cluster's config key, by what this member did with them.",
            "result",
            &["applied", "adjusted", "refused"],
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
        let rest = counter(
            &r,
            "ha_agent_rest_requests_total",
            "REST API requests, by kind.",
            "kind",
            &["health", "status", "action", "other"],
        );
        let rejected = counter(
            &r,
            "ha_agent_rest_connections_refused_total",
            "REST connections closed without serving them, by reason.",
            "reason",
            &["limit", "tls_handshake"],
        );
        Self {
            decisions,
            fences,
            lease_renewals,
            watchdog,
            config_reloads,
            exits_as_primary,
            etcd_errors,
            decode_errors,
            failsafe_rounds,
            timings,
            cluster_timings,
            cycle_seconds,
            last_cycle,
            rest_health: rest.with_label_values(&["health"]),
            rest_status: rest.with_label_values(&["status"]),
            rest_action: rest.with_label_values(&["action"]),
            rest_other: rest.with_label_values(&["other"]),
            rest_rejected_limit: rejected.with_label_values(&["limit"]),
            rest_tls_failed: rejected.with_label_values(&["tls_handshake"]),
            labels: format!("{{scope=\"{}\",name=\"{}\"}}", escape(scope), escape(name)),
            registry: r,
        }
    }

    /// ha-agent's own metrics only.
    pub fn render(&self) -> String {
        outrigger_daemon::metrics::render(&self.registry)
    }

    /// ha-agent's own metrics, then Patroni's from `snap` as Patroni's `/metrics` shows them.
    pub fn render_with(&self, snap: &Snapshot, now: Instant) -> String {
        let mut out = self.render();
        out.push_str(&self.render_patroni(snap, now));
        out
    }

    fn render_patroni(&self, snap: &Snapshot, now: Instant) -> String {
        let l = &self.labels;
        let mut out = String::with_capacity(4096);
        let mut m = |name: &str, kind: &str, help: &str, value: &str| {
            let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{l} {value}\n");
        };
        let b = |v: bool| if v { "1" } else { "0" }.to_owned();
        let s = snap.status.as_ref();
        let xlog = s.and_then(|s| s.xlog.clone()).unwrap_or_default();
        let role = s.map(|s| &s.role);
        let state = s.map_or("", |s| s.state.as_str());
        let repl = s.and_then(|s| s.replication_state.as_deref());
        let version =
            s.and_then(|s| s.patroni.as_ref()).map_or(outrigger_schema::PATRONI_COMPAT_VERSION, |p| p.version.as_str());
        let start = s
            .and_then(|s| s.postmaster_start_time.as_deref())
            .and_then(crate::core::schedule::parse_rfc3339_ms)
            .map_or("0".to_owned(), |ms| format!("{:.3}", ms as f64 / 1000.0));
        let replayed_ts = match xlog.replayed_timestamp.as_ref().and_then(|v| v.as_str()) {
            Some(t) => crate::core::schedule::parse_rfc3339_ms(t)
                .map_or("0".to_owned(), |ms| format!("{:.3}", ms as f64 / 1000.0)),
            None => "0".to_owned(),
        };
        let tags = s.map(|s| crate::core::Tags::from_json(&s.tags)).unwrap_or_default();
        let n = |v: Option<u64>| v.unwrap_or(0).to_string();
        m("patroni_version", "gauge", "Patroni semver without periods.", &padded_version(version));
        m(
            "patroni_postgres_running",
            "gauge",
            "Value is 1 if Postgres is running, 0 otherwise.",
            &b(state == "running"),
        );
        m("patroni_postmaster_start_time", "gauge", "Epoch seconds since Postgres started.", &start);
        m(
            "patroni_primary",
            "gauge",
            "Value is 1 if this node is the leader, 0 otherwise.",
            &b(role == Some(&MemberRole::Primary) && snap.holds_leader(now)),
        );
        m(
            "patroni_xlog_location",
            "counter",
            "Current location of the Postgres transaction log, 0 if this node is not the leader.",
            &n(xlog.location),
        );
        m(
            "patroni_standby_leader",
            "gauge",
            "Value is 1 if this node is the standby_leader, 0 otherwise.",
            &b(role == Some(&MemberRole::StandbyLeader)),
        );
        m(
            "patroni_replica",
            "gauge",
            "Value is 1 if this node is a replica, 0 otherwise.",
            &b(role == Some(&MemberRole::Replica)),
        );
        m(
            "patroni_sync_standby",
            "gauge",
            "Value is 1 if this node is a sync standby, 0 otherwise.",
            &b(snap.sync_standby),
        );
        m(
            "patroni_quorum_standby",
            "gauge",
            "Value is 1 if this node is a quorum standby, 0 otherwise.",
            &b(snap.quorum_standby),
        );
        m(
            "patroni_xlog_received_location",
            "counter",
            "Current location of the received Postgres transaction log, 0 if this node is not a replica.",
            &n(xlog.received_location),
        );
        m(
            "patroni_xlog_replayed_location",
            "counter",
            "Current location of the replayed Postgres transaction log, 0 if this node is not a replica.",
            &n(xlog.replayed_location),
        );
        m(
            "patroni_xlog_replayed_timestamp",
            "gauge",
            "Current timestamp of the replayed Postgres transaction log, 0 if null.",
            &replayed_ts,
        );
        m(
            "patroni_xlog_paused",
            "gauge",
            "Value is 1 if the Postgres xlog is paused, 0 otherwise.",
            &b(xlog.paused.unwrap_or(false)),
        );
        m(
            "patroni_postgres_streaming",
            "gauge",
            "Value is 1 if Postgres is streaming, 0 otherwise.",
            &b(repl == Some("streaming")),
        );
        m(
            "patroni_postgres_in_archive_recovery",
            "gauge",
            "Value is 1 if Postgres is replicating from archive, 0 otherwise.",
            &b(repl == Some("in archive recovery")),
        );
        m(
            "patroni_postgres_server_version",
            "gauge",
            "Version of Postgres (if running), 0 otherwise.",
            &s.and_then(|s| s.server_version).unwrap_or(0).to_string(),
        );
        m(
            "patroni_cluster_unlocked",
            "gauge",
            "Value is 1 if the cluster is unlocked, 0 if locked.",
            &b(s.and_then(|s| s.cluster_unlocked).unwrap_or(false)),
        );
        m(
            "patroni_failsafe_mode_is_active",
            "gauge",
            "Value is 1 if failsafe mode is active, 0 if inactive.",
            &b(snap.failsafe_active),
        );
        m(
            "patroni_failsafe_mode_enabled",
            "gauge",
            "Value is 1 if failsafe mode is enabled, 0 if disabled.",
            &b(snap.failsafe_mode),
        );
        m(
            "patroni_failsafe_member",
            "gauge",
            "Value is 1 if this node is listed in the failsafe key, 0 otherwise.",
            &b(snap.failsafe_member),
        );
        m(
            "patroni_postgres_timeline",
            "gauge",
            "Postgres timeline of this node (if running), 0 otherwise.",
            &s.and_then(|s| s.timeline).unwrap_or(0).to_string(),
        );
        m(
            "patroni_dcs_last_seen",
            "gauge",
            "Epoch timestamp when DCS was last contacted successfully by Patroni.",
            &s.and_then(|s| s.dcs_last_seen).unwrap_or(0).to_string(),
        );
        m(
            "patroni_pending_restart",
            "gauge",
            "Value is 1 if the node needs a restart, 0 otherwise.",
            &b(s.and_then(|s| s.pending_restart).unwrap_or(false)),
        );
        m("patroni_is_paused", "gauge", "Value is 1 if auto failover is disabled, 0 otherwise.", &b(snap.paused));
        let pg_state = PG_STATES.iter().position(|p| *p == state).map_or("-1".to_owned(), |i| i.to_string());
        m("patroni_postgres_state", "gauge", "Numeric representation of Postgres state.", &pg_state);
        let priority = if tags.nofailover { 0 } else { tags.failover_priority };
        m("patroni_failover_priority", "gauge", "Configured failover priority for the node.", &priority.to_string());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_and_patroni_names_are_exposed() {
        let m = Metrics::new("batman", "n1");
        m.decisions.with_label_values(&["lead"]).inc();
        let now = Instant::now();
        let status: outrigger_schema::StatusJson = serde_json::from_str(
            r#"{"state":"running","role":"primary","server_version":170002,"xlog":{"location":4096},"timeline":3,"cluster_unlocked":false,"patroni":{"version":"4.1.4","scope":"batman","name":"n1"}}"#,
        )
        .unwrap();
        let snap = Snapshot {
            status: Some(status),
            leader_until: Some(now + std::time::Duration::from_secs(5)),
            ..Snapshot::default()
        };
        let text = m.render_with(&snap, now);
        assert!(text.contains("ha_agent_decisions_total{decision=\"lead\"} 1"), "{text}");
        assert!(text.contains("ha_agent_build_info"), "{text}");
        for line in [
            "patroni_version{scope=\"batman\",name=\"n1\"} 040104",
            "patroni_primary{scope=\"batman\",name=\"n1\"} 1",
            "patroni_replica{scope=\"batman\",name=\"n1\"} 0",
            "patroni_xlog_location{scope=\"batman\",name=\"n1\"} 4096",
            "patroni_postgres_timeline{scope=\"batman\",name=\"n1\"} 3",
            "patroni_postgres_server_version{scope=\"batman\",name=\"n1\"} 170002",
            "patroni_postgres_state{scope=\"batman\",name=\"n1\"} 5",
            "patroni_failover_priority{scope=\"batman\",name=\"n1\"} 1",
            "# TYPE patroni_xlog_location counter",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
        // The lease lapsed: no longer the primary, even without a new snapshot.
        let later = m.render_with(&snap, now + std::time::Duration::from_secs(6));
        assert!(later.contains("patroni_primary{scope=\"batman\",name=\"n1\"} 0"), "{later}");
    }
}
