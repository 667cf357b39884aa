//! Every metric proxy-checker exports, declared in one place. Labels come from closed enums
//! ([`Endpoint`], [`AgentWord`], [`BadKind`], [`EtcdOp`], [`PgFailure`], [`Role`]), so every
//! series exists from the start at 0 and the cardinality is fixed.
//!
//! The check counters sit on the hot path (tens of thousands of checks a second), so each
//! labelled child is resolved once here and then incremented without a label lookup.

use std::time::Instant;

use prometheus::{Gauge, GaugeVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry};

use crate::agent::AgentWord;
use crate::check::Endpoint;
use crate::verdict::{Policy, Role, Verdict};
use crate::view::{EtcdView, PgFailure, PgPoll, PgView};

/// A request that could not be answered with a verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadKind {
    /// Not HTTP, or an unreadable query parameter: answered 400 (431 when too large).
    Malformed,
    /// A method other than GET, HEAD or OPTIONS: answered 405.
    Method,
    /// The client did not send its request in time: disconnected.
    Timeout,
    /// An agent-check line that is not a check: answered `down`.
    Agent,
}

impl BadKind {
    const ALL: [BadKind; 4] = [BadKind::Malformed, BadKind::Method, BadKind::Timeout, BadKind::Agent];

    fn as_str(self) -> &'static str {
        match self {
            BadKind::Malformed => "malformed",
            BadKind::Method => "method",
            BadKind::Timeout => "timeout",
            BadKind::Agent => "agent",
        }
    }
}

/// An etcd operation that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EtcdOp {
    /// The full read of the cluster prefix (on start and after a broken watch).
    Read,
    /// The periodic read of the leader key that confirms the view.
    Confirm,
    Watch,
    /// A key whose value could not be decoded (counted as absent).
    Decode,
}

impl EtcdOp {
    const ALL: [EtcdOp; 4] = [EtcdOp::Read, EtcdOp::Confirm, EtcdOp::Watch, EtcdOp::Decode];

    fn as_str(self) -> &'static str {
        match self {
            EtcdOp::Read => "read",
            EtcdOp::Confirm => "confirm",
            EtcdOp::Watch => "watch",
            EtcdOp::Decode => "decode",
        }
    }
}

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// `[endpoint][ok]`.
    checks: Vec<[IntCounter; 2]>,
    agent: Vec<IntCounter>,
    bad: IntCounterVec,
    etcd_errors: IntCounterVec,
    pg_errors: IntCounterVec,
    state_age: GaugeVec,
    state_fresh: IntGaugeVec,
    role: IntGaugeVec,
    leader_changes: IntCounter,
    config_reloads: IntCounterVec,
}

fn register<C: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: C) -> C {
    // Names are fixed identifiers registered once into a fresh registry: a failure here is a
    // programming error caught by the unit test below, not a runtime condition.
    if let Err(e) = r.register(Box::new(c.clone())) {
        panic!("register metric: {e}");
    }
    c
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help)
}

macro_rules! new_metric {
    ($r:expr, $ty:ident, $name:expr, $help:expr $(, $labels:expr)?) => {
        register($r, $ty::new(opts($name, $help) $(, $labels)?).unwrap_or_else(|e| panic!("metric {}: {e}", $name)))
    };
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn reload(&self, o: outrigger_daemon::reload::Outcome) {
        self.config_reloads.with_label_values(&[o.as_str()]).inc();
    }

    pub fn new() -> Self {
        let registry = outrigger_daemon::metrics::registry("proxy_checker", env!("CARGO_PKG_VERSION"));
        let r = &registry;
        let checks_vec = new_metric!(
            r,
            IntCounterVec,
            "proxy_checker_checks_total",
            "Health checks answered (HTTP and agent), by endpoint and verdict.",
            &["endpoint", "verdict"]
        );
        let checks = Endpoint::ALL
            .iter()
            .map(|e| {
                [
                    checks_vec.with_label_values(&[e.as_str(), "unavailable"]),
                    checks_vec.with_label_values(&[e.as_str(), "ok"]),
                ]
            })
            .collect();
        let agent_vec = new_metric!(
            r,
            IntCounterVec,
            "proxy_checker_agent_answers_total",
            "HAProxy agent-check answers, by the state word sent.",
            &["answer"]
        );
        let agent = AgentWord::ALL.iter().map(|w| agent_vec.with_label_values(&[w.as_str()])).collect();
        let m = Self {
            checks,
            agent,
            bad: new_metric!(
                r,
                IntCounterVec,
                "proxy_checker_bad_requests_total",
                "Requests answered without a verdict, by kind.",
                &["kind"]
            ),
            etcd_errors: new_metric!(
                r,
                IntCounterVec,
                "proxy_checker_etcd_errors_total",
                "Failed etcd operations, by operation.",
                &["op"]
            ),
            pg_errors: new_metric!(
                r,
                IntCounterVec,
                "proxy_checker_postgresql_errors_total",
                "Failed polls of the local PostgreSQL, by kind.",
                &["kind"]
            ),
            state_age: new_metric!(
                r,
                GaugeVec,
                "proxy_checker_state_age_seconds",
                "Age of the etcd confirmation and of the PostgreSQL sample (-1: never).",
                &["source"]
            ),
            state_fresh: new_metric!(
                r,
                IntGaugeVec,
                "proxy_checker_state_fresh",
                "1 while the source is within its staleness bound and usable for verdicts.",
                &["source"]
            ),
            role: new_metric!(
                r,
                IntGaugeVec,
                "proxy_checker_role",
                "1 for this node's role as etcd and PostgreSQL together describe it.",
                &["role"]
            ),
            leader_changes: register(
                r,
                IntCounter::with_opts(opts(
                    "proxy_checker_leader_changes_total",
                    "Changes of the leader key's holder seen in etcd.",
                ))
                .unwrap_or_else(|e| panic!("metric proxy_checker_leader_changes_total: {e}")),
            ),
            config_reloads: new_metric!(
                r,
                IntCounterVec,
                "proxy_checker_config_reloads_total",
                "Config reloads (SIGHUP), by result: applied, unchanged, invalid.",
                &["result"]
            ),
            registry,
        };
        for o in outrigger_daemon::reload::Outcome::ALL {
            m.config_reloads.with_label_values(&[o.as_str()]);
        }
        for k in BadKind::ALL {
            m.bad.with_label_values(&[k.as_str()]);
        }
        for op in EtcdOp::ALL {
            m.etcd_errors.with_label_values(&[op.as_str()]);
        }
        for f in PgFailure::ALL {
            m.pg_errors.with_label_values(&[f.as_str()]);
        }
        m
    }

    pub fn check(&self, endpoint: Endpoint, verdict: &Verdict) {
        self.checks[endpoint.index()][usize::from(verdict.ok)].inc();
    }

    pub fn agent_answer(&self, word: AgentWord) {
        self.agent[word.index()].inc();
    }

    pub fn bad_request(&self, kind: BadKind) {
        self.bad.with_label_values(&[kind.as_str()]).inc();
    }

    pub fn etcd_error(&self, op: EtcdOp) {
        self.etcd_errors.with_label_values(&[op.as_str()]).inc();
    }

    pub fn pg_error(&self, kind: PgFailure) {
        self.pg_errors.with_label_values(&[kind.as_str()]).inc();
    }

    pub fn leader_changed(&self) {
        self.leader_changes.inc();
    }

    /// Sets the gauges that describe the state now; called just before each scrape so that
    /// ages are current without a timer.
    pub fn observe_state(&self, etcd: &EtcdView, pg: &PgView, policy: &Policy, role: Role, now: Instant) {
        let age = |t: Option<Instant>| t.map_or(-1.0, |t| now.saturating_duration_since(t).as_secs_f64());
        let etcd_age = age(etcd.confirmed_at);
        let pg_at = match &pg.last {
            PgPoll::Up { at, .. } => Some(*at),
            _ => None,
        };
        let pg_age = age(pg_at);
        set(&self.state_age, "etcd", etcd_age);
        set(&self.state_age, "postgresql", pg_age);
        let etcd_fresh = etcd.synced && etcd.confirmed_at.is_some() && etcd_age <= policy.etcd_max_age.as_secs_f64();
        let pg_fresh = pg_at.is_some() && pg_age <= policy.pg_max_age.as_secs_f64();
        self.state_fresh.with_label_values(&["etcd"]).set(i64::from(etcd_fresh));
        self.state_fresh.with_label_values(&["postgresql"]).set(i64::from(pg_fresh));
        for r in Role::ALL {
            self.role.with_label_values(&[r.as_str()]).set(i64::from(r == role));
        }
    }
}

fn set(g: &GaugeVec, label: &str, v: f64) {
    let gauge: Gauge = g.with_label_values(&[label]);
    gauge.set(v);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_exists_from_the_start() {
        let m = Metrics::new();
        let text = outrigger_daemon::metrics::render(&m.registry);
        assert!(text.contains("proxy_checker_build_info"), "{text}");
        assert!(text.contains(r#"proxy_checker_checks_total{endpoint="primary",verdict="ok"} 0"#), "{text}");
        assert!(text.contains(r#"proxy_checker_agent_answers_total{answer="drain"} 0"#), "{text}");
        assert!(text.contains(r#"proxy_checker_bad_requests_total{kind="malformed"} 0"#), "{text}");
        assert!(text.contains(r#"proxy_checker_etcd_errors_total{op="watch"} 0"#), "{text}");
        assert!(text.contains(r#"proxy_checker_postgresql_errors_total{kind="timeout"} 0"#), "{text}");
    }

    #[test]
    fn state_gauges_show_ages_and_the_role() {
        let m = Metrics::new();
        let now = Instant::now();
        let policy = Policy {
            name: "n1".into(),
            etcd_max_age: std::time::Duration::from_secs(1),
            pg_max_age: std::time::Duration::from_secs(1),
            liveness_max_age: std::time::Duration::from_secs(5),
        };
        m.observe_state(&EtcdView::default(), &PgView::default(), &policy, Role::Unknown, now);
        let text = outrigger_daemon::metrics::render(&m.registry);
        assert!(text.contains(r#"proxy_checker_state_age_seconds{source="etcd"} -1"#), "{text}");
        assert!(text.contains(r#"proxy_checker_state_fresh{source="postgresql"} 0"#), "{text}");
        assert!(text.contains(r#"proxy_checker_role{role="unknown"} 1"#), "{text}");
    }
}
