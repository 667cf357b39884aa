//! Every metric vip-manager exports, declared in one place. Labels come from closed enums
//! ([`State`], [`Reject`], [`Failure`]), so each series exists from the start at 0 and the
//! cardinality is fixed.

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use crate::fsm::State;
use crate::packet::Reject;

/// An operation that failed and was handled (logged, retried at the next occasion).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    AdvertSend,
    GarpSend,
    VipAdd,
    VipRemove,
    Receive,
    Notify,
}

impl Failure {
    const ALL: [Failure; 6] = [
        Failure::AdvertSend,
        Failure::GarpSend,
        Failure::VipAdd,
        Failure::VipRemove,
        Failure::Receive,
        Failure::Notify,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Failure::AdvertSend => "advert_send",
            Failure::GarpSend => "garp_send",
            Failure::VipAdd => "vip_add",
            Failure::VipRemove => "vip_remove",
            Failure::Receive => "receive",
            Failure::Notify => "notify",
        }
    }
}

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    state: IntGaugeVec,
    transitions: IntCounterVec,
    pub adverts_sent: IntCounter,
    pub adverts_received: IntCounter,
    rejects: IntCounterVec,
    pub priority: IntGauge,
    pub vip_held: IntGauge,
    pub garp_sent: IntCounter,
    failures: IntCounterVec,
    pub etcd_reachable: IntGauge,
    config_reloads: IntCounterVec,
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    register(r, Box::new(c.clone()), name);
    c
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    register(r, Box::new(g.clone()), name);
    g
}

fn register(r: &Registry, c: Box<dyn prometheus::core::Collector>, name: &str) {
    // Names are fixed identifiers registered once into a fresh registry: a failure here is a
    // programming error caught by the unit test below, not a runtime condition.
    if let Err(e) = r.register(c) {
        panic!("register metric {name}: {e}");
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = outrigger_daemon::metrics::registry("vip_manager", env!("CARGO_PKG_VERSION"));
        let r = &registry;
        let vec_gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).unwrap_or_else(|e| panic!("metric {name}: {e}"));
            register(r, Box::new(g.clone()), name);
            g
        };
        let vec_counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).unwrap_or_else(|e| panic!("metric {name}: {e}"));
            register(r, Box::new(c.clone()), name);
            c
        };
        let m = Self {
            state: vec_gauge("vip_manager_state", "1 for the instance's current VRRP state, else 0.", &["state"]),
            transitions: vec_counter("vip_manager_transitions_total", "VRRP state transitions.", &["from", "to"]),
            adverts_sent: counter(r, "vip_manager_adverts_sent_total", "VRRP adverts sent (per destination)."),
            adverts_received: counter(
                r,
                "vip_manager_adverts_received_total",
                "Valid VRRP adverts received for our virtual router.",
            ),
            rejects: vec_counter(
                "vip_manager_rejected_packets_total",
                "Received protocol-112 packets not taken as adverts, by reason.",
                &["reason"],
            ),
            priority: gauge(r, "vip_manager_priority", "Effective VRRP priority (base plus weights)."),
            vip_held: gauge(r, "vip_manager_vip_held", "1 while this node has the VIP configured."),
            garp_sent: counter(r, "vip_manager_garp_frames_sent_total", "Gratuitous ARP / unsolicited NA frames sent."),
            failures: vec_counter("vip_manager_failures_total", "Handled failures, by operation.", &["op"]),
            etcd_reachable: gauge(r, "vip_manager_etcd_reachable", "1 while the leader key can be read from etcd."),
            config_reloads: vec_counter(
                "vip_manager_config_reloads_total",
                "Config reloads (SIGHUP), by result: applied, unchanged, invalid.",
                &["result"],
            ),
            registry,
        };
        for s in State::ALL {
            m.state.with_label_values(&[s.as_str()]).set(i64::from(s == State::Initialize));
        }
        for r in Reject::ALL {
            m.rejects.with_label_values(&[r.as_str()]);
        }
        for f in Failure::ALL {
            m.failures.with_label_values(&[f.as_str()]);
        }
        for o in outrigger_daemon::reload::Outcome::ALL {
            m.config_reloads.with_label_values(&[o.as_str()]);
        }
        m
    }

    pub fn transition(&self, from: State, to: State) {
        self.transitions.with_label_values(&[from.as_str(), to.as_str()]).inc();
        self.state.with_label_values(&[from.as_str()]).set(0);
        self.state.with_label_values(&[to.as_str()]).set(1);
    }

    pub fn reject(&self, r: Reject) {
        self.rejects.with_label_values(&[r.as_str()]).inc();
    }

    pub fn reload(&self, o: outrigger_daemon::reload::Outcome) {
        self.config_reloads.with_label_values(&[o.as_str()]).inc();
    }

    pub fn failure(&self, f: Failure) {
        self.failures.with_label_values(&[f.as_str()]).inc();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_is_exposed_from_the_start() {
        let m = Metrics::new();
        m.transition(State::Initialize, State::Backup);
        m.reject(Reject::Checksum);
        let text = outrigger_daemon::metrics::render(&m.registry);
        for want in [
            "vip_manager_build_info{",
            "vip_manager_state{state=\"BACKUP\"} 1",
            "vip_manager_state{state=\"MASTER\"} 0",
            "vip_manager_transitions_total{from=\"INIT\",to=\"BACKUP\"} 1",
            "vip_manager_rejected_packets_total{reason=\"checksum\"} 1",
            "vip_manager_rejected_packets_total{reason=\"carp\"} 0",
            "vip_manager_failures_total{op=\"vip_add\"} 0",
            "vip_manager_adverts_sent_total 0",
            "vip_manager_vip_held 0",
            "vip_manager_config_reloads_total{result=\"invalid\"} 0",
        ] {
            assert!(text.contains(want), "missing {want} in\n{text}");
        }
    }
}
