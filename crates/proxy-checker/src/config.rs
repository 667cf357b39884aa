//! proxy-checker's config file: raw serde layer, then the validated [`Config`].
//!
//! Every key is described in `deploy/config/proxy-checker.toml`. Durations are humantime
//! strings (`200ms`, `1s`); byte sizes take PostgreSQL's units (`16MB`).

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use outrigger_daemon::config::{EtcdSection, LogSection, Problem, Problems, Validate, listen_addr};
use outrigger_daemon::http::Limits;
use outrigger_daemon::logging::LogOptions;
use outrigger_daemon::reload::Plan;
use serde::Deserialize;

use crate::check::{Check, parse_bytes};
use crate::verdict::Policy;

#[derive(Debug, Deserialize)]
pub struct RawConfig {
    /// This node's member name, as ha-agent or Patroni publish it.
    pub name: String,
    pub scope: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Where the HTTP check endpoints listen (HAProxy's `check port`).
    pub listen: Option<String>,
    #[serde(default)]
    pub http: RawHttp,
    #[serde(default)]
    pub freshness: RawFreshness,
    #[serde(default)]
    pub postgresql: RawPostgresql,
    pub agent: Option<RawAgent>,
    #[serde(default)]
    pub log: LogSection,
    pub etcd: EtcdSection,
}

fn default_namespace() -> String {
    "service".to_owned()
}

/// `[http]`: limits that keep misbehaving clients from starving HAProxy's checks.
#[derive(Debug, Default, Deserialize)]
pub struct RawHttp {
    pub max_connections: Option<usize>,
    #[serde(default, with = "humantime_serde::option")]
    pub header_timeout: Option<Duration>,
    pub max_head_bytes: Option<usize>,
}

/// `[freshness]`: how old each source may be before the verdicts that use it turn 503.
#[derive(Debug, Default, Deserialize)]
pub struct RawFreshness {
    #[serde(default, with = "humantime_serde::option")]
    pub etcd_max_age: Option<Duration>,
    #[serde(default, with = "humantime_serde::option")]
    pub etcd_confirm_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde::option")]
    pub postgresql_max_age: Option<Duration>,
}

/// `[postgresql]`: the local server and how it is polled.
#[derive(Debug, Default, Deserialize)]
pub struct RawPostgresql {
    pub conninfo: Option<String>,
    #[serde(default, with = "humantime_serde::option")]
    pub poll_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde::option")]
    pub timeout: Option<Duration>,
}

/// `[agent]`: HAProxy's agent-check protocol on a TCP port.
#[derive(Debug, Deserialize)]
pub struct RawAgent {
    pub listen: String,
    pub default_check: Option<String>,
    #[serde(default, with = "humantime_serde::option")]
    pub read_timeout: Option<Duration>,
    pub drain_lag: Option<String>,
    pub max_connections: Option<usize>,
}

/// How the local PostgreSQL is polled.
#[derive(Debug, Clone, PartialEq)]
pub struct PgSettings {
    pub config: tokio_postgres::Config,
    pub poll_interval: Duration,
    /// Deadline of one poll, connecting included.
    pub timeout: Duration,
}

/// The agent-check port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentSettings {
    pub listen: SocketAddr,
    /// The check answered when HAProxy sends no `agent-send` line.
    pub default_check: Check,
    /// How long to wait for an `agent-send` line before using `default_check`.
    pub read_timeout: Duration,
    /// Replica lag at which the weight has fallen to 1% and beyond which the server drains.
    pub drain_lag: u64,
    pub max_connections: usize,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub name: String,
    pub layout: outrigger_schema::KeyLayout,
    pub listen: SocketAddr,
    pub http: Limits,
    pub policy: Policy,
    /// How often the leader key is re-read to confirm the watched view.
    pub etcd_confirm_interval: Duration,
    pub postgresql: PgSettings,
    pub agent: Option<AgentSettings>,
    pub log: LogOptions,
    pub etcd: outrigger_etcd::ConnectOptions,
}

pub const DEFAULT_LISTEN: &str = "0.0.0.0:8009";
pub const DEFAULT_CONNINFO: &str = "host=/var/run/postgresql port=5432 user=postgres dbname=postgres";
const DEFAULT_ETCD_MAX_AGE: Duration = Duration::from_secs(1);
// Four confirmations per `etcd_max_age`: one slow or lost read does not age a healthy view
// out, and the reads stay cheap (idle CPU is a figure this daemon is held to).
const DEFAULT_ETCD_CONFIRM: Duration = Duration::from_millis(250);
const DEFAULT_PG_MAX_AGE: Duration = Duration::from_secs(1);
// Five polls per `postgresql_max_age`. A demotion or promotion shows within one poll; the
// split-brain guard does not depend on it (etcd must name the node too).
const DEFAULT_PG_POLL: Duration = Duration::from_millis(200);
const DEFAULT_PG_TIMEOUT: Duration = Duration::from_millis(500);

fn show(d: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(d)
}

/// `value` at least `min`, else a problem naming the key.
fn at_least(p: &mut Problems, key: &str, value: Duration, min: Duration) {
    p.check(value >= min, key, show(value), &format!("must be at least {}", show(min)));
}

impl RawHttp {
    fn validate(&self, p: &mut Problems) -> Limits {
        let d = Limits { max_connections: 512, header_timeout: Duration::from_secs(2), max_head_bytes: 8 * 1024 };
        let limits = Limits {
            max_connections: self.max_connections.unwrap_or(d.max_connections),
            header_timeout: self.header_timeout.unwrap_or(d.header_timeout),
            max_head_bytes: self.max_head_bytes.unwrap_or(d.max_head_bytes),
        };
        p.check(limits.max_connections >= 1, "http.max_connections", limits.max_connections, "must be at least 1");
        at_least(p, "http.header_timeout", limits.header_timeout, Duration::from_millis(100));
        p.check(limits.max_head_bytes >= 1024, "http.max_head_bytes", limits.max_head_bytes, "must be at least 1024");
        limits
    }
}

impl RawPostgresql {
    fn validate(&self, p: &mut Problems, max_age: Duration) -> Option<PgSettings> {
        let poll_interval = self.poll_interval.unwrap_or(DEFAULT_PG_POLL);
        let timeout = self.timeout.unwrap_or(DEFAULT_PG_TIMEOUT);
        at_least(p, "postgresql.poll_interval", poll_interval, Duration::from_millis(10));
        at_least(p, "postgresql.timeout", timeout, Duration::from_millis(10));
        p.check(
            poll_interval < max_age,
            "postgresql.poll_interval",
            show(poll_interval),
            &format!("must be less than freshness.postgresql_max_age ({})", show(max_age)),
        );
        let conninfo = self.conninfo.as_deref().unwrap_or(DEFAULT_CONNINFO);
        match tokio_postgres::Config::from_str(conninfo) {
            // The conninfo may hold a password: the problem names the key, not the value.
            Err(e) => {
                p.push_key("postgresql.conninfo", format!("must be a libpq connection string or URL ({e})"));
                None
            }
            Ok(mut config) => {
                config.connect_timeout(timeout);
                config.application_name("proxy-checker");
                Some(PgSettings { config, poll_interval, timeout })
            }
        }
    }
}

impl RawAgent {
    fn validate(&self, p: &mut Problems) -> Option<AgentSettings> {
        let listen = listen_addr(p, "agent.listen", &self.listen);
        let target = self.default_check.as_deref().unwrap_or("/replica");
        let default_check = Check::parse_target(target)
            .map_err(|e| p.push("agent.default_check", target, format!("must be a check path ({e})")))
            .ok();
        let read_timeout = self.read_timeout.unwrap_or(Duration::from_millis(100));
        at_least(p, "agent.read_timeout", read_timeout, Duration::from_millis(1));
        let drain_text = self.drain_lag.as_deref().unwrap_or("16MB");
        let drain_lag = parse_bytes(drain_text).filter(|b| *b > 0);
        if drain_lag.is_none() {
            p.push("agent.drain_lag", drain_text, "must be a size above 0, like 16MB");
        }
        let max_connections = self.max_connections.unwrap_or(256);
        p.check(max_connections >= 1, "agent.max_connections", max_connections, "must be at least 1");
        Some(AgentSettings {
            listen: listen?,
            default_check: default_check?,
            read_timeout,
            drain_lag: drain_lag?,
            max_connections,
        })
    }
}

impl Validate for RawConfig {
    type Valid = Config;

    fn validate(&self) -> Result<Config, Vec<Problem>> {
        let mut p = Problems::new();
        let layout = outrigger_schema::KeyLayout::new(&self.namespace, &self.scope)
            .map_err(|e| p.push("scope", &self.scope, e.to_string()))
            .ok();
        if let Some(Err(e)) = layout.as_ref().map(|l| l.member(&self.name)) {
            p.push("name", &self.name, e.to_string());
        }
        let listen = listen_addr(&mut p, "listen", self.listen.as_deref().unwrap_or(DEFAULT_LISTEN));
        let http = self.http.validate(&mut p);

        let f = &self.freshness;
        let etcd_max_age = f.etcd_max_age.unwrap_or(DEFAULT_ETCD_MAX_AGE);
        let confirm = f.etcd_confirm_interval.unwrap_or(DEFAULT_ETCD_CONFIRM);
        let pg_max_age = f.postgresql_max_age.unwrap_or(DEFAULT_PG_MAX_AGE);
        at_least(&mut p, "freshness.etcd_max_age", etcd_max_age, Duration::from_millis(50));
        at_least(&mut p, "freshness.etcd_confirm_interval", confirm, Duration::from_millis(10));
        at_least(&mut p, "freshness.postgresql_max_age", pg_max_age, Duration::from_millis(50));
        // The view must be re-confirmed before it ages out, or a healthy primary would flap.
        p.check(
            confirm < etcd_max_age,
            "freshness.etcd_confirm_interval",
            show(confirm),
            &format!("must be less than freshness.etcd_max_age ({})", show(etcd_max_age)),
        );
        let postgresql = self.postgresql.validate(&mut p, pg_max_age);
        let agent = self.agent.as_ref().map(|a| a.validate(&mut p));
        let log = self.log.validate(&mut p);
        let etcd = self.etcd.validate(&mut p);

        // `/liveness` fails when an input task has not even tried for several of its rounds
        // (a round can take a timeout plus an interval).
        let round = (etcd.request_timeout + confirm)
            .max(postgresql.as_ref().map_or(DEFAULT_PG_POLL + DEFAULT_PG_TIMEOUT, |s| s.poll_interval + s.timeout));
        let liveness_max_age = (round * 4).max(Duration::from_secs(5));
        p.finish(())?;
        match (layout, listen, postgresql, agent) {
            (Some(layout), Some(listen), Some(postgresql), agent @ (None | Some(Some(_)))) => Ok(Config {
                name: self.name.clone(),
                layout,
                listen,
                http,
                policy: Policy { name: self.name.clone(), etcd_max_age, pg_max_age, liveness_max_age },
                etcd_confirm_interval: confirm,
                postgresql,
                agent: agent.flatten(),
                log,
                etcd,
            }),
            _ => Err(vec![Problem::key_only("(config)", "invalid")]),
        }
    }
}

impl Config {
    /// The config to run with after a reload (SIGHUP) to `new`: the freshness bounds checks
    /// are judged by and the log level apply at once; what the listeners and the input tasks
    /// were started with (name, scope, listeners, HTTP limits, etcd, PostgreSQL, the agent
    /// port) keeps its running value and is named as needing a restart. The bounds apply
    /// only while the inputs they are checked against stay (a confirmation interval must stay
    /// below the age limit, and the liveness bound follows the inputs' rounds).
    pub fn reloaded(&self, new: &Config) -> (Config, Plan) {
        let mut p = Plan::default();
        let mut next = self.clone();
        p.restart("name", &self.name, &new.name);
        p.restart("scope/namespace", &self.layout, &new.layout);
        p.restart("listen", &self.listen, &new.listen);
        p.restart("http", &self.http, &new.http);
        p.restart("agent", &self.agent, &new.agent);
        let inputs = |c: &Config| (c.etcd.clone(), c.etcd_confirm_interval, c.postgresql.clone());
        if inputs(self) == inputs(new) {
            p.runtime("freshness.etcd_max_age", &mut next.policy.etcd_max_age, &new.policy.etcd_max_age);
            p.runtime("freshness.postgresql_max_age", &mut next.policy.pg_max_age, &new.policy.pg_max_age);
        } else {
            p.restart("etcd", &self.etcd, &new.etcd);
            p.restart("freshness.etcd_confirm_interval", &self.etcd_confirm_interval, &new.etcd_confirm_interval);
            p.restart("postgresql", &self.postgresql, &new.postgresql);
            let ages = |c: &Config| (c.policy.etcd_max_age, c.policy.pg_max_age);
            p.restart("freshness (with the etcd or postgresql settings it bounds)", &ages(self), &ages(new));
        }
        p.log_options(&mut next.log, &new.log);
        (next, p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outrigger_daemon::config::parse_toml;

    const BASE: &str = "name = \"n1\"\nscope = \"batman\"\n[etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\n";

    fn problems(extra: &str) -> Vec<String> {
        let raw: RawConfig = parse_toml("t.toml", &format!("{BASE}{extra}")).unwrap();
        raw.validate().err().unwrap_or_default().iter().map(ToString::to_string).collect()
    }

    fn valid(extra: &str) -> Config {
        let raw: RawConfig = parse_toml("t.toml", &format!("{BASE}{extra}")).unwrap();
        raw.validate().unwrap()
    }

    #[test]
    fn a_reload_applies_the_freshness_bounds_and_log_level_while_the_inputs_stay() {
        let old = valid("");
        let new = valid("[freshness]\netcd_max_age = \"2s\"\npostgresql_max_age = \"3s\"\n[log]\nlevel = \"debug\"\n");
        let (next, plan) = old.reloaded(&new);
        assert_eq!(plan.applied, ["freshness.etcd_max_age", "freshness.postgresql_max_age", "log.level"]);
        assert!(plan.need_restart.is_empty(), "{:?}", plan.need_restart);
        assert_eq!(
            (next.policy.etcd_max_age, next.policy.pg_max_age),
            (Duration::from_secs(2), Duration::from_secs(3))
        );
    }

    #[test]
    fn a_reload_keeps_listeners_inputs_and_the_bounds_tied_to_changed_inputs() {
        let old = valid("");
        let text = format!(
            "listen = \"127.0.0.1:9009\"\n{BASE}[freshness]\netcd_max_age = \"2s\"\netcd_confirm_interval = \"1s\"\n"
        );
        let new = parse_toml::<RawConfig>("t.toml", &text).unwrap().validate().unwrap();
        let (next, plan) = old.reloaded(&new);
        assert!(plan.applied.is_empty(), "{:?}", plan.applied);
        assert_eq!(
            plan.need_restart,
            ["listen", "freshness.etcd_confirm_interval", "freshness (with the etcd or postgresql settings it bounds)"]
        );
        assert_eq!(next.listen, old.listen);
        assert_eq!(next.policy, old.policy, "a 250ms confirmation keeps its 1s bound");
    }

    #[test]
    fn defaults_are_valid_and_well_under_a_ttl() {
        let raw: RawConfig = parse_toml("t.toml", BASE).unwrap();
        let c = raw.validate().unwrap();
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.policy.etcd_max_age, Duration::from_secs(1));
        assert_eq!(c.policy.pg_max_age, Duration::from_secs(1));
        assert!(c.etcd_confirm_interval < c.policy.etcd_max_age);
        assert!(c.agent.is_none());
        assert_eq!(c.postgresql.poll_interval, Duration::from_millis(200));
    }

    #[test]
    fn confirmation_must_come_before_the_view_ages_out() {
        let p = problems("[freshness]\netcd_max_age = \"500ms\"\netcd_confirm_interval = \"500ms\"\n");
        assert_eq!(
            p,
            vec!["freshness.etcd_confirm_interval (500ms): must be less than freshness.etcd_max_age (500ms)"]
        );
        let p = problems("[postgresql]\npoll_interval = \"2s\"\n");
        assert_eq!(p, vec!["postgresql.poll_interval (2s): must be less than freshness.postgresql_max_age (1s)"]);
    }

    #[test]
    fn bad_agent_and_postgres_values_name_their_keys() {
        let p = problems(
            "[postgresql]\nconninfo = \"host=/x port=notaport password=secret\"\n[agent]\nlisten = \"x\"\ndefault_check = \"replica?lag=lots\"\ndrain_lag = \"0\"\n",
        );
        assert_eq!(p.len(), 4, "{p:?}");
        assert!(p[0].starts_with("postgresql.conninfo: must be a libpq connection string"), "{p:?}");
        assert!(!p[0].contains("secret"), "the password must not be echoed: {p:?}");
        assert!(p[1].starts_with("agent.listen (x): must be an IP address and port"), "{p:?}");
        assert!(p[2].starts_with("agent.default_check (replica?lag=lots): must be a check path"), "{p:?}");
        assert_eq!(p[3], "agent.drain_lag (0): must be a size above 0, like 16MB");
    }

    #[test]
    fn agent_section_reads_sizes_and_checks() {
        let raw: RawConfig = parse_toml(
            "t.toml",
            &format!("{BASE}[agent]\nlisten = \"127.0.0.1:8010\"\ndefault_check = \"/replica?lag=1MB\"\ndrain_lag = \"64MB\"\n"),
        )
        .unwrap();
        let a = raw.validate().unwrap().agent.unwrap();
        assert_eq!(a.default_check.lag, Some(1 << 20));
        assert_eq!(a.drain_lag, 64 << 20);
    }

    #[test]
    fn http_limits_have_floors() {
        let p = problems("[http]\nmax_connections = 0\nheader_timeout = \"1ms\"\nmax_head_bytes = 10\n");
        assert_eq!(p.len(), 3, "{p:?}");
    }
}
