//! ha-agent's config file: raw serde layer, then the validated [`Config`].
//!
//! Timing names follow Patroni (`ttl`, `loop_wait`, `retry_timeout`) and keep its invariant
//! `loop_wait + 2 * retry_timeout <= ttl`, but take humantime strings so that sub-second
//! values are allowed ("500ms").

use std::net::SocketAddr;
use std::time::Duration;

use outrigger_daemon::config::{EtcdSection, LogSection, Problem, Problems, Validate, listen_addr};
use outrigger_daemon::logging::LogOptions;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
pub struct RawConfig {
    /// Member name, unique in the cluster (Patroni's `name`).
    pub name: String,
    /// Cluster name (Patroni's `scope`).
    pub scope: String,
    /// Key namespace (Patroni's `namespace`, default `service`).
    #[serde(default = "default_namespace")]
    pub namespace: String,
    #[serde(default)]
    pub log: LogSection,
    pub etcd: EtcdSection,
    #[serde(default)]
    pub restapi: RawRestApi,
    #[serde(default)]
    pub timings: RawTimings,
}

fn default_namespace() -> String {
    "service".to_owned()
}

#[derive(Debug, Deserialize, Default)]
pub struct RawRestApi {
    pub listen: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
pub struct RawTimings {
    #[serde(default, with = "humantime_serde::option")]
    pub ttl: Option<Duration>,
    #[serde(default, with = "humantime_serde::option")]
    pub loop_wait: Option<Duration>,
    #[serde(default, with = "humantime_serde::option")]
    pub retry_timeout: Option<Duration>,
}

/// Patroni's HA timings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timings {
    pub ttl: Duration,
    pub loop_wait: Duration,
    pub retry_timeout: Duration,
}

impl Default for Timings {
    /// Patroni's defaults.
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(30),
            loop_wait: Duration::from_secs(10),
            retry_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub name: String,
    pub layout: outrigger_schema::KeyLayout,
    pub log: LogOptions,
    pub etcd: outrigger_etcd::ConnectOptions,
    pub restapi_listen: SocketAddr,
    pub timings: Timings,
}

fn show(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

impl Validate for RawConfig {
    type Valid = Config;

    fn validate(&self) -> Result<Config, Vec<Problem>> {
        let mut p = Problems::new();
        let layout = match outrigger_schema::KeyLayout::new(&self.namespace, &self.scope) {
            Ok(l) => Some(l),
            Err(e) => {
                p.push("scope", &self.scope, e.to_string());
                None
            }
        };
        if let Some(Err(e)) = layout.as_ref().map(|l| l.member(&self.name)) {
            p.push("name", &self.name, e.to_string());
        }
        let log = self.log.validate(&mut p);
        let etcd = self.etcd.validate(&mut p);
        let listen = listen_addr(&mut p, "restapi.listen", self.restapi.listen.as_deref().unwrap_or("0.0.0.0:8008"));

        let d = Timings::default();
        let t = Timings {
            ttl: self.timings.ttl.unwrap_or(d.ttl),
            loop_wait: self.timings.loop_wait.unwrap_or(d.loop_wait),
            retry_timeout: self.timings.retry_timeout.unwrap_or(d.retry_timeout),
        };
        p.check(
            t.ttl >= Duration::from_secs(2),
            "timings.ttl",
            show(t.ttl),
            "must be at least 2s (etcd's shortest lease)",
        );
        p.check(
            t.loop_wait >= Duration::from_millis(100),
            "timings.loop_wait",
            show(t.loop_wait),
            "must be at least 100ms",
        );
        p.check(
            t.retry_timeout >= Duration::from_millis(100),
            "timings.retry_timeout",
            show(t.retry_timeout),
            "must be at least 100ms",
        );
        let budget = t.loop_wait + 2 * t.retry_timeout;
        p.check(
            t.ttl >= budget,
            "timings.ttl",
            show(t.ttl),
            &format!("must be >= loop_wait + 2 * retry_timeout ({})", show(budget)),
        );
        p.finish(())?;
        match (layout, listen) {
            (Some(layout), Some(restapi_listen)) => {
                Ok(Config { name: self.name.clone(), layout, log, etcd, restapi_listen, timings: t })
            }
            // Both None cases pushed a problem above, so `finish` already returned.
            _ => Err(vec![Problem::key_only("(config)", "invalid")]),
        }
    }
}
