//! ha-agent's config file: raw serde layer, then the validated [`Config`].
//!
//! Timing names follow Patroni (`ttl`, `loop_wait`, `retry_timeout`) and keep its invariant
//! `loop_wait + 2 * retry_timeout <= ttl`, but take humantime strings so that sub-second
//! values are allowed ("500ms"). As in Patroni, the timings in force are the cluster's (the
//! `config` key's, see `core::timing`); `[timings]` are written into that key at bootstrap
//! and used until it has them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use outrigger_daemon::config::{ConfigError, EtcdSection, LogSection, Problem, Problems, Validate, listen_addr};
use outrigger_daemon::logging::LogOptions;
use serde::Deserialize;

use crate::core::Tags;

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
    pub postgresql: RawPostgresql,
    #[serde(default)]
    pub bootstrap: RawBootstrap,
    #[serde(default)]
    pub tags: RawTags,
    #[serde(default)]
    pub watchdog: RawWatchdog,
    #[serde(default)]
    pub etcd_leader: RawEtcdLeader,
}

/// Where etcd runs on the PostgreSQL hosts: keep its raft leader off the primary's host.
#[derive(Debug, Deserialize, Default)]
pub struct RawEtcdLeader {
    /// The leader moves etcd's raft leadership to another member when the member on its own
    /// host holds it (default true): a primary host that fails then costs no etcd election,
    /// whose new raft leader would restart every lease's TTL and slow the failover.
    pub keep_off_primary: Option<bool>,
    /// The `etcd.endpoints` entry of the member on this host (default: the endpoint whose host
    /// is this member's PostgreSQL or REST address; none: nothing to do).
    pub local_endpoint: Option<String>,
}

/// Patroni's `watchdog` section.
#[derive(Debug, Deserialize, Default)]
pub struct RawWatchdog {
    /// `off`, `automatic` (default, as Patroni) or `required`.
    pub mode: Option<String>,
    /// Default `/dev/watchdog`.
    pub device: Option<PathBuf>,
    /// Seconds between the watchdog firing and the leader key expiring (Patroni: 5; -1 means
    /// half the ttl).
    pub safety_margin: Option<i64>,
    /// `default` (the Linux watchdog API) or `testing` (Patroni's named-pipe stand-in).
    pub driver: Option<String>,
}

fn default_namespace() -> String {
    "service".to_owned()
}

#[derive(Debug, Deserialize, Default)]
pub struct RawRestApi {
    pub listen: Option<String>,
    /// `host:port` peers and tools use to reach this member's API (published as `api_url`).
    pub connect_address: Option<String>,
    /// How long to wait for a peer's `GET /patroni` during a leader race (Patroni: 2s).
    #[serde(default, with = "humantime_serde::option")]
    pub peer_timeout: Option<Duration>,
    /// HTTP Basic credentials required on the unsafe endpoints (Patroni's
    /// `restapi.authentication`).
    pub authentication: Option<RawUser>,
    /// CIDRs (or addresses) allowed to call the unsafe endpoints.
    pub allowlist: Option<Vec<String>>,
    /// Members' own addresses are allowed too.
    #[serde(default)]
    pub allowlist_include_members: bool,
    pub certfile: Option<PathBuf>,
    pub keyfile: Option<PathBuf>,
    pub cafile: Option<PathBuf>,
    /// `none`, `optional` or `required`.
    pub verify_client: Option<String>,
    pub max_connections: Option<usize>,
    /// A request head must arrive within this (idle keep-alive connections close after it).
    #[serde(default, with = "humantime_serde::option")]
    pub header_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde::option")]
    pub handshake_timeout: Option<Duration>,
    /// How long an action handed to the HA loop may take before the API answers 503.
    #[serde(default, with = "humantime_serde::option")]
    pub action_timeout: Option<Duration>,
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

#[derive(Debug, Deserialize, Default)]
pub struct RawUser {
    pub username: Option<String>,
    pub password: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
pub struct RawAuthentication {
    #[serde(default)]
    pub superuser: RawUser,
    #[serde(default)]
    pub replication: RawUser,
}

#[derive(Debug, Deserialize)]
pub struct RawPostgresql {
    pub data_dir: PathBuf,
    pub bin_dir: Option<PathBuf>,
    /// `listen_addresses` and `port`, as `addresses:port` (Patroni's `postgresql.listen`).
    pub listen: Option<String>,
    /// `host:port` other members and clients use (published as `conn_url`).
    pub connect_address: Option<String>,
    pub socket_dir: Option<PathBuf>,
    /// The OS user PostgreSQL runs as when the agent runs as root.
    pub run_as: Option<String>,
    /// Where the postmaster's stderr goes (default: `<data_dir>.log`).
    pub log_file: Option<PathBuf>,
    #[serde(default)]
    pub authentication: RawAuthentication,
    pub use_pg_rewind: Option<bool>,
    #[serde(default)]
    pub remove_data_directory_on_rewind_failure: bool,
    #[serde(default)]
    pub remove_data_directory_on_diverged_timelines: bool,
    pub pg_hba: Option<Vec<String>>,
    /// `pg_ident.conf`, line by line (Patroni's `postgresql.pg_ident`); unset, the file is left
    /// as it is unless the cluster's config key sets one.
    pub pg_ident: Option<Vec<String>>,
    #[serde(default)]
    pub parameters: toml::Table,
    /// How long a start may take before it counts as failed.
    #[serde(default, with = "humantime_serde::option")]
    pub start_timeout: Option<Duration>,
    /// Patroni's `create_replica_methods`: tried in order when a replica is made
    /// (default `["basebackup"]`). Every name but `basebackup` has a table of its own.
    pub create_replica_methods: Option<Vec<String>>,
    /// Patroni's `recovery_conf` (PostgreSQL 12+: parameters, e.g. `restore_command`).
    #[serde(default)]
    pub recovery_conf: toml::Table,
    /// Patroni's `postgresql.callbacks`: commands run as `<command> <action> <role> <scope>`.
    #[serde(default)]
    pub callbacks: RawCallbacks,
    /// Run after taking the leader key and before promoting; a non-zero exit cancels the
    /// promotion (Patroni's fencing hook).
    pub pre_promote: Option<String>,
    /// Run before each stop of PostgreSQL the agent makes; its exit status is only logged.
    pub before_stop: Option<String>,
    /// The tables of the replica methods (`[postgresql.wal_shipper]`, ...), by name.
    #[serde(flatten)]
    pub methods: toml::Table,
}

/// Patroni's `postgresql.callbacks`, each a command line (split like a shell).
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawCallbacks {
    pub on_start: Option<String>,
    pub on_stop: Option<String>,
    pub on_restart: Option<String>,
    pub on_reload: Option<String>,
    pub on_role_change: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
pub struct RawBootstrap {
    /// Patroni's `bootstrap.method`: `initdb` (default) or the name of a table below with a
    /// `command`.
    pub method: Option<String>,
    /// initdb options, `"name"` or `"name=value"` (`--name[=value]`).
    pub initdb: Option<Vec<String>>,
    /// Written to the cluster's `config` key by the member that bootstraps the cluster.
    #[serde(default)]
    pub dcs: toml::Table,
    /// `[bootstrap.<method>]` tables (Patroni's custom bootstrap methods).
    #[serde(flatten)]
    pub methods: toml::Table,
}

#[derive(Debug, Deserialize, Default)]
pub struct RawTags {
    #[serde(default)]
    pub nofailover: bool,
    pub failover_priority: Option<i64>,
    #[serde(default)]
    pub clonefrom: bool,
    #[serde(default)]
    pub noloadbalance: bool,
    #[serde(default)]
    pub nosync: bool,
    /// Preference as a synchronous standby (Patroni 4.1); `<= 0` means nosync.
    pub sync_priority: Option<i64>,
    /// Stream from this member instead of the leader (cascading replication).
    pub replicatefrom: Option<String>,
    /// Never stream from another member; WAL comes from `restore_command` only (Patroni 4).
    #[serde(default)]
    pub nostream: bool,
    /// Any other tag: the user's own, published in the member key as Patroni publishes them.
    #[serde(flatten)]
    pub custom: toml::Table,
}

/// Patroni's HA timings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timings {
    pub ttl: Duration,
    pub loop_wait: Duration,
    pub retry_timeout: Duration,
}

impl Timings {
    /// How often the lease keeper renews: every `loop_wait` as Patroni does, but at least four
    /// times per `ttl`, so that with short TTLs a renewal or two may fail (an etcd election)
    /// before the primary has to fence.
    pub fn renew_interval(&self) -> Duration {
        self.loop_wait.min(self.ttl / 4)
    }
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

/// A PostgreSQL role the agent uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub username: String,
    pub password: Option<String>,
}

/// The validated `[postgresql]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct PgConfig {
    pub data_dir: PathBuf,
    pub bin_dir: PathBuf,
    pub listen_addresses: String,
    pub port: u16,
    /// `host:port`.
    pub connect_address: String,
    pub socket_dir: PathBuf,
    pub run_as: String,
    pub log_file: PathBuf,
    pub superuser: User,
    pub replication: User,
    pub use_pg_rewind: Option<bool>,
    pub remove_data_directory_on_rewind_failure: bool,
    pub remove_data_directory_on_diverged_timelines: bool,
    /// `pg_hba.conf`: this file's `postgresql.pg_hba`, else the default (see `pg_hba_local`).
    pub pg_hba: Vec<String>,
    /// This file sets `postgresql.pg_hba`: it wins over the cluster's (Patroni's precedence).
    pub pg_hba_local: bool,
    /// This file's `postgresql.pg_ident` (it wins over the cluster's).
    pub pg_ident: Option<Vec<String>>,
    /// Local `postgresql.parameters`; they win over the cluster's.
    pub parameters: Vec<(String, String)>,
    pub start_timeout: Duration,
    /// How a replica is made, in order of preference.
    pub create_replica_methods: Vec<ReplicaMethod>,
    /// `callbacks`, `pre_promote` and `before_stop`.
    pub callbacks: Callbacks,
}

/// Patroni's user commands around PostgreSQL's life, each split into its words.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Callbacks {
    pub on_start: Option<Vec<String>>,
    pub on_stop: Option<Vec<String>>,
    pub on_restart: Option<Vec<String>>,
    pub on_reload: Option<Vec<String>>,
    pub on_role_change: Option<Vec<String>>,
    pub pre_promote: Option<Vec<String>>,
    pub before_stop: Option<Vec<String>>,
}

/// One way to make a replica (Patroni's `create_replica_methods`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicaMethod {
    /// pg_basebackup from the leader.
    Basebackup,
    /// A command run as the PostgreSQL user, as Patroni runs one: `command` split like a
    /// shell, then `--scope=S --datadir=D --role=replica --connstring=C`, then the method's
    /// other keys as `--key=value` (unless `no_params`). Exit 0 means the data directory holds
    /// a restorable copy; ha-agent then writes the replica's configuration and starts it.
    Command { name: String, argv: Vec<String>, params: Vec<(String, String)>, no_params: bool, keep_data: bool },
}

/// How a new cluster is made (Patroni's `bootstrap.method`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootstrapMethod {
    Initdb,
    /// A command run as the PostgreSQL user, as Patroni runs one: `command` split like a
    /// shell, then `--scope=S --datadir=D` (unless `no_params`). Exit 0 means the data
    /// directory holds a cluster; with `recovery_conf` ha-agent then starts it in archive
    /// recovery with those settings and waits for it to promote (`recovery_target_action =
    /// promote`) before it publishes the cluster.
    Command {
        name: String,
        argv: Vec<String>,
        no_params: bool,
        keep_existing_recovery_conf: bool,
        recovery_conf: Vec<(String, String)>,
    },
}

/// The validated `[restapi]` settings beyond the addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestApi {
    pub access: crate::http::access::Access,
    pub tls: Option<crate::http::tls::TlsFiles>,
    pub limits: crate::http::server::Limits,
    pub action_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub name: String,
    pub layout: outrigger_schema::KeyLayout,
    pub log: LogOptions,
    pub etcd: outrigger_etcd::ConnectOptions,
    pub restapi_listen: SocketAddr,
    /// `host:port` published in `api_url`.
    pub restapi_connect: String,
    pub peer_timeout: Duration,
    pub restapi: RestApi,
    pub timings: Timings,
    pub postgresql: PgConfig,
    pub initdb: Vec<String>,
    pub bootstrap_method: BootstrapMethod,
    /// `bootstrap.dcs` as JSON, for the `config` key.
    pub bootstrap_dcs: serde_json::Value,
    pub tags: Tags,
    pub watchdog: crate::core::watchdog::Settings,
    /// Index in `etcd.endpoints` of the member on this host whose raft leadership the leader
    /// hands on (`None`: none, or `etcd_leader.keep_off_primary = false`).
    pub local_etcd: Option<usize>,
}

fn show(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// The newest PostgreSQL under Debian's `/usr/lib/postgresql/<version>/bin`.
fn default_bin_dir() -> PathBuf {
    let newest = std::fs::read_dir("/usr/lib/postgresql")
        .ok()
        .and_then(|dir| dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok()).max());
    PathBuf::from(format!("/usr/lib/postgresql/{}/bin", newest.unwrap_or(15)))
}

/// Splits `addresses:port` (addresses may be a comma list, `*`, or `[v6]`).
fn split_listen(s: &str) -> Option<(String, u16)> {
    let (hosts, port) = s.rsplit_once(':')?;
    let port = port.parse::<u16>().ok().filter(|p| *p > 0)?;
    if hosts.is_empty() {
        return None;
    }
    Some((hosts.trim_start_matches('[').trim_end_matches(']').to_owned(), port))
}

fn is_wildcard(hosts: &str) -> bool {
    hosts.split(',').any(|h| matches!(h.trim(), "*" | "0.0.0.0" | "::" | ""))
}

/// A PostgreSQL setting value from a TOML value (bools as on/off), or `None` for tables and arrays.
fn setting(v: &toml::Value) -> Option<String> {
    match v {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(if *b { "on" } else { "off" }.to_owned()),
        toml::Value::Datetime(d) => Some(d.to_string()),
        toml::Value::Array(_) | toml::Value::Table(_) => None,
    }
}

/// TOML to JSON for `bootstrap.dcs` (datetimes become strings).
fn toml_to_json(v: &toml::Value) -> serde_json::Value {
    match v {
        toml::Value::String(s) => serde_json::Value::from(s.clone()),
        toml::Value::Integer(i) => serde_json::Value::from(*i),
        toml::Value::Float(f) => serde_json::Value::from(*f),
        toml::Value::Boolean(b) => serde_json::Value::from(*b),
        toml::Value::Datetime(d) => serde_json::Value::from(d.to_string()),
        toml::Value::Array(a) => serde_json::Value::Array(a.iter().map(toml_to_json).collect()),
        toml::Value::Table(t) => {
            serde_json::Value::Object(t.iter().map(|(k, v)| (k.clone(), toml_to_json(v))).collect())
        }
    }
}

/// The default `pg_hba.conf`: local connections over the socket (whose directory's
/// permissions guard it) and password logins from the network, replication included.
pub const DEFAULT_PG_HBA: [&str; 4] = [
    "local all all trust",
    "local replication all trust",
    "host all all all scram-sha-256",
    "host replication all all scram-sha-256",
];

impl RawConfig {
    fn validate_postgresql(&self, p: &mut Problems, timings: &Timings) -> PgConfig {
        let pg = &self.postgresql;
        p.check(pg.data_dir.is_absolute(), "postgresql.data_dir", pg.data_dir.display(), "must be an absolute path");
        let bin_dir = pg.bin_dir.clone().unwrap_or_else(default_bin_dir);
        p.check(bin_dir.is_absolute(), "postgresql.bin_dir", bin_dir.display(), "must be an absolute path");
        let listen = pg.listen.as_deref().unwrap_or("0.0.0.0:5432");
        let (listen_addresses, port) = match split_listen(listen) {
            Some(x) => x,
            None => {
                p.push(
                    "postgresql.listen",
                    listen,
                    "must be addresses:port, like 0.0.0.0:5432 or 127.0.0.1,10.0.0.1:5432",
                );
                ("*".to_owned(), 5432)
            }
        };
        let connect_address = match &pg.connect_address {
            Some(c) => {
                p.check(split_listen(c).is_some(), "postgresql.connect_address", c, "must be host:port");
                c.clone()
            }
            None if !is_wildcard(&listen_addresses) && !listen_addresses.contains(',') => {
                format!("{listen_addresses}:{port}")
            }
            None => {
                p.push_key(
                    "postgresql.connect_address",
                    format!("must be set when postgresql.listen ({listen}) is not one specific address"),
                );
                String::new()
            }
        };
        let socket_dir = pg.socket_dir.clone().unwrap_or_else(|| PathBuf::from("/var/run/postgresql"));
        p.check(socket_dir.is_absolute(), "postgresql.socket_dir", socket_dir.display(), "must be an absolute path");
        let log_file = pg.log_file.clone().unwrap_or_else(|| {
            let mut s = pg.data_dir.clone().into_os_string();
            s.push(".log");
            PathBuf::from(s)
        });
        let user = |u: &RawUser, default: &str| User {
            username: u.username.clone().unwrap_or_else(|| default.to_owned()),
            password: u.password.clone(),
        };
        let mut parameters = Vec::new();
        for (k, v) in &pg.parameters {
            if let Some(why) = crate::core::refused_parameter(k) {
                p.push_key(format!("postgresql.parameters.{k}"), format!("is refused: {why}"));
                continue;
            }
            match setting(v) {
                Some(s) => parameters.push((k.clone(), s)),
                None => p.push(format!("postgresql.parameters.{k}"), v, "must be a string, number or boolean"),
            }
        }
        for (k, v) in &pg.recovery_conf {
            let key = format!("postgresql.recovery_conf.{k}");
            if let Some(why) = crate::core::refused_parameter(k) {
                p.push_key(key, format!("is refused: {why}"));
                continue;
            }
            match setting(v) {
                // PostgreSQL 12+ reads recovery settings as parameters.
                Some(s) => parameters.push((k.clone(), s)),
                None => p.push(key, v, "must be a string, number or boolean"),
            }
        }
        let create_replica_methods = replica_methods(pg, p);
        let mut command = |key: &str, c: &Option<String>| -> Option<Vec<String>> {
            let c = c.as_deref()?;
            match shlex::split(c) {
                Some(argv) if !argv.is_empty() => Some(argv),
                _ => {
                    p.push(format!("postgresql.{key}"), c, "must be a command line (quotes balanced, not empty)");
                    None
                }
            }
        };
        let cb = &pg.callbacks;
        let callbacks = Callbacks {
            on_start: command("callbacks.on_start", &cb.on_start),
            on_stop: command("callbacks.on_stop", &cb.on_stop),
            on_restart: command("callbacks.on_restart", &cb.on_restart),
            on_reload: command("callbacks.on_reload", &cb.on_reload),
            on_role_change: command("callbacks.on_role_change", &cb.on_role_change),
            pre_promote: command("pre_promote", &pg.pre_promote),
            before_stop: command("before_stop", &pg.before_stop),
        };
        let start_timeout = pg.start_timeout.unwrap_or(Duration::from_secs(60));
        p.check(
            start_timeout >= timings.loop_wait,
            "postgresql.start_timeout",
            show(start_timeout),
            "must be at least timings.loop_wait",
        );
        PgConfig {
            data_dir: pg.data_dir.clone(),
            bin_dir,
            listen_addresses,
            port,
            connect_address,
            socket_dir,
            run_as: pg.run_as.clone().unwrap_or_else(|| "postgres".to_owned()),
            log_file,
            superuser: user(&pg.authentication.superuser, "postgres"),
            replication: user(&pg.authentication.replication, "replicator"),
            use_pg_rewind: pg.use_pg_rewind,
            remove_data_directory_on_rewind_failure: pg.remove_data_directory_on_rewind_failure,
            remove_data_directory_on_diverged_timelines: pg.remove_data_directory_on_diverged_timelines,
            pg_hba: pg.pg_hba.clone().unwrap_or_else(|| DEFAULT_PG_HBA.iter().map(|s| (*s).to_owned()).collect()),
            pg_hba_local: pg.pg_hba.is_some(),
            pg_ident: pg.pg_ident.clone(),
            parameters,
            start_timeout,
            create_replica_methods,
            callbacks,
        }
    }
}

/// Validates `bootstrap.method` and the table it names.
/// `bootstrap.dcs.standby_cluster`, checked as strictly as the rest: Patroni's keys with
/// Patroni's types, a source to follow, and replica methods this member defines.
fn check_standby_cluster(dcs: &serde_json::Value, methods: &[ReplicaMethod], p: &mut Problems) {
    use serde_json::Value;
    const KEY: &str = "bootstrap.dcs.standby_cluster";
    let sc = match dcs.get("standby_cluster") {
        None | Some(Value::Null) => return,
        Some(Value::Object(sc)) => sc,
        Some(other) => return p.push(KEY, other, "must be a table (host, port, restore_command, ...)"),
    };
    for (k, v) in sc {
        let key = format!("{KEY}.{k}");
        match (k.as_str(), v) {
            ("port", Value::Number(n)) if n.as_u64().is_some_and(|n| (1..=65535).contains(&n)) => {}
            ("port", Value::String(s)) if s.parse::<u16>().is_ok_and(|n| n > 0) => {}
            ("port", v) => p.push(key, v, "must be a TCP port (1-65535)"),
            (
                "host" | "primary_slot_name" | "restore_command" | "archive_cleanup_command" | "recovery_min_apply_delay",
                Value::String(_),
            ) => {}
            ("recovery_min_apply_delay", Value::Number(_)) => {}
            ("host" | "primary_slot_name" | "restore_command" | "archive_cleanup_command" | "recovery_min_apply_delay", v) => {
                p.push(key, v, "must be a string")
            }
            ("create_replica_methods", Value::Array(names)) => {
                for n in names {
                    let known = n.as_str().is_some_and(|n| {
                        matches!(n, "basebackup" | "pg_basebackup")
                            || methods.iter().any(|m| matches!(m, ReplicaMethod::Command { name, .. } if name == n))
                    });
                    if !known {
                        p.push(
                            &key,
                            n,
                            "must name basebackup or a method of postgresql.create_replica_methods",
                        );
                    }
                }
            }
            ("create_replica_methods", v) => p.push(key, v, "must be a list of method names"),
            _ => p.push_key(
                key,
                "unknown key (host, port, primary_slot_name, restore_command, archive_cleanup_command, recovery_min_apply_delay, create_replica_methods)",
            ),
        }
    }
    let has = |k: &str| sc.get(k).is_some_and(|v| !v.is_null() && v.as_str() != Some(""));
    if !(has("host") || has("restore_command")) {
        p.push_key(KEY, "must name a source: host (and port), or restore_command");
    } else if has("port") && !has("host") {
        p.push_key(format!("{KEY}.port"), "needs host: the remote primary's address");
    }
}

fn bootstrap_method(b: &RawBootstrap, p: &mut Problems) -> BootstrapMethod {
    let name = b.method.clone().unwrap_or_else(|| "initdb".into());
    for k in b.methods.keys().filter(|k| **k != name) {
        p.push_key(
            format!("bootstrap.{k}"),
            "unknown key (a bootstrap method's table must be named in bootstrap.method)",
        );
    }
    if name == "initdb" {
        return BootstrapMethod::Initdb;
    }
    let key = format!("bootstrap.{name}");
    let Some(toml::Value::Table(t)) = b.methods.get(&name) else {
        p.push_key(&key, format!("is named in bootstrap.method but has no [{key}] table with a command"));
        return BootstrapMethod::Initdb;
    };
    let argv = match t.get("command") {
        Some(toml::Value::String(c)) => match shlex::split(c) {
            Some(a) if !a.is_empty() => a,
            _ => {
                p.push(format!("{key}.command"), c, "must be a command line (quotes balanced)");
                vec![]
            }
        },
        _ => {
            p.push_key(
                format!("{key}.command"),
                "must be set: the command that makes the new cluster's data directory",
            );
            vec![]
        }
    };
    let flag = |k: &str| matches!(t.get(k), Some(toml::Value::Boolean(true)) | Some(toml::Value::Integer(1)));
    let mut recovery_conf = Vec::new();
    match t.get("recovery_conf") {
        None => {}
        Some(toml::Value::Table(rc)) => {
            for (k, v) in rc {
                let rkey = format!("{key}.recovery_conf.{k}");
                // Restoring a new cluster, the timeline to follow is the user's to choose
                // (ha-agent sets it only for replicas).
                if let Some(why) = crate::core::refused_parameter(k).filter(|_| k != "recovery_target_timeline") {
                    p.push_key(rkey, format!("is refused: {why}"));
                    continue;
                }
                match setting(v) {
                    Some(s) => recovery_conf.push((k.clone(), s)),
                    None => p.push(rkey, v, "must be a string, number or boolean"),
                }
            }
            let action = rc.get("recovery_target_action").and_then(setting);
            let targeted = rc.keys().any(|k| k.starts_with("recovery_target") && k != "recovery_target_timeline");
            if targeted && action.as_deref() != Some("promote") {
                p.push(
                    format!("{key}.recovery_conf.recovery_target_action"),
                    action.as_deref().unwrap_or("(unset: pause)"),
                    "must be \"promote\" with a recovery target: the new cluster has to leave recovery to become a primary",
                );
            }
        }
        Some(v) => p.push(format!("{key}.recovery_conf"), v, "must be a table of recovery settings"),
    }
    for k in t.keys() {
        if !["command", "no_params", "keep_existing_recovery_conf", "recovery_conf"].contains(&k.as_str()) {
            p.push_key(
                format!("{key}.{k}"),
                "unknown key (command, no_params, keep_existing_recovery_conf, recovery_conf)",
            );
        }
    }
    BootstrapMethod::Command {
        name,
        argv,
        no_params: flag("no_params"),
        keep_existing_recovery_conf: flag("keep_existing_recovery_conf"),
        recovery_conf,
    }
}

/// Validates `create_replica_methods` and the tables they name.
fn replica_methods(pg: &RawPostgresql, p: &mut Problems) -> Vec<ReplicaMethod> {
    let names = pg.create_replica_methods.clone().unwrap_or_else(|| vec!["basebackup".into()]);
    if names.is_empty() {
        p.push_key("postgresql.create_replica_methods", "must name at least one method (basebackup is the default)");
    }
    // The flattened tables hold every other key of [postgresql]: a key that names no method is
    // a typo, refused as serde refuses unknown keys elsewhere.
    for k in pg.methods.keys().filter(|k| !names.contains(k)) {
        p.push_key(
            format!("postgresql.{k}"),
            "unknown key (a replica method's table must be named in postgresql.create_replica_methods)",
        );
    }
    let mut out = Vec::new();
    for name in names {
        if name == "basebackup" {
            out.push(ReplicaMethod::Basebackup);
            continue;
        }
        let key = format!("postgresql.{name}");
        let Some(toml::Value::Table(t)) = pg.methods.get(&name) else {
            p.push_key(
                &key,
                format!("is named in postgresql.create_replica_methods but has no [{key}] table with a command"),
            );
            continue;
        };
        let argv = match t.get("command") {
            Some(toml::Value::String(c)) => match shlex::split(c) {
                Some(a) if !a.is_empty() => a,
                _ => {
                    p.push(format!("{key}.command"), c, "must be a command line (quotes balanced)");
                    continue;
                }
            },
            _ => {
                p.push_key(format!("{key}.command"), "must be set: the command that makes the replica");
                continue;
            }
        };
        let flag = |k: &str| matches!(t.get(k), Some(toml::Value::Boolean(true)) | Some(toml::Value::Integer(1)));
        let mut params = Vec::new();
        for (k, v) in t {
            if ["command", "no_params", "keep_data"].contains(&k.as_str()) {
                continue;
            }
            match setting(v) {
                Some(s) => params.push((k.clone(), s)),
                None => p.push(format!("{key}.{k}"), v, "must be a string, number or boolean"),
            }
        }
        out.push(ReplicaMethod::Command {
            name,
            argv,
            params,
            no_params: flag("no_params"),
            keep_data: flag("keep_data"),
        });
    }
    out
}

/// The host of `scheme://host:port` or `host:port`.
fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.rsplit_once(':').map_or(rest, |(h, _)| h).trim_start_matches('[').trim_end_matches(']')
}

impl RawConfig {
    fn local_etcd(&self, p: &mut Problems, endpoints: &[String], pg: &str, api: &str) -> Option<usize> {
        if self.etcd_leader.keep_off_primary == Some(false) {
            return None;
        }
        match &self.etcd_leader.local_endpoint {
            Some(e) => {
                let i = endpoints.iter().position(|x| x == e);
                p.check(i.is_some(), "etcd_leader.local_endpoint", e, "must be one of etcd.endpoints");
                i
            }
            None => endpoints.iter().position(|e| host_of(e) == host_of(pg) || host_of(e) == host_of(api)),
        }
    }
}

impl RawWatchdog {
    fn validate(&self, p: &mut Problems, t: &Timings, request_timeout: Duration) -> crate::core::watchdog::Settings {
        use crate::core::watchdog::{Driver, Mode, Settings, timeout_for, unusable_timings};
        let mode = match self.mode.as_deref().map(str::to_ascii_lowercase).as_deref() {
            None | Some("automatic") => Mode::Automatic,
            Some("off") => Mode::Off,
            Some("required") => Mode::Required,
            Some(_) => {
                p.push("watchdog.mode", self.mode.as_deref().unwrap_or(""), "must be off, automatic or required");
                Mode::Off
            }
        };
        let driver = match self.driver.as_deref() {
            None | Some("default") => Driver::Linux,
            Some("testing") => Driver::Testing,
            Some(other) => {
                p.push("watchdog.driver", other, "must be default or testing");
                Driver::Linux
            }
        };
        let device = self.device.clone().unwrap_or_else(|| PathBuf::from("/dev/watchdog"));
        p.check(device.is_absolute(), "watchdog.device", device.display(), "must be an absolute path");
        let margin = self.safety_margin.unwrap_or(5);
        let timeout = timeout_for(t.ttl, margin);
        if mode != Mode::Off {
            match timeout {
                None => p.push(
                    "watchdog.safety_margin",
                    margin,
                    format!(
                        "must leave a watchdog timeout of at least 1s: ttl ({}) - safety_margin (-1: ttl / 2); or set watchdog.mode = \"off\"",
                        show(t.ttl)
                    ),
                ),
                Some(timeout) => {
                    if let Some(why) = unusable_timings(timeout, t.ttl, t.renew_interval(), request_timeout) {
                        p.push("watchdog.safety_margin", margin, why);
                    }
                }
            }
        }
        Settings { mode, device, driver, timeout: timeout.unwrap_or(Duration::from_secs(1)), safety_margin: margin }
    }
}

impl RawRestApi {
    fn validate(&self, p: &mut Problems) -> RestApi {
        use crate::http::access::{Access, Cidr};
        use crate::http::tls::{TlsFiles, VerifyClient};
        let basic = self.authentication.as_ref().and_then(|a| match (&a.username, &a.password) {
            (Some(u), Some(pw)) if !u.is_empty() => Some(Access::basic_header(u, pw)),
            _ => {
                p.push_key("restapi.authentication", "needs both username and password");
                None
            }
        });
        let mut allowlist = Vec::new();
        for (i, c) in self.allowlist.iter().flatten().enumerate() {
            match Cidr::parse(c) {
                Some(c) => allowlist.push(c),
                None => p.push(format!("restapi.allowlist[{i}]"), c, "must be an address or a CIDR like 10.0.0.0/24"),
            }
        }
        let verify = match self.verify_client.as_deref().unwrap_or("none") {
            "none" => VerifyClient::None,
            "optional" => VerifyClient::Optional,
            "required" => VerifyClient::Required,
            other => {
                p.push("restapi.verify_client", other, "must be none, optional or required");
                VerifyClient::None
            }
        };
        let tls = match (&self.certfile, &self.keyfile) {
            (Some(cert), Some(key)) => {
                for (k, f) in [("restapi.certfile", cert), ("restapi.keyfile", key)] {
                    p.check(f.is_absolute(), k, f.display(), "must be an absolute path");
                }
                if self.cafile.is_none() {
                    p.push_key(
                        "restapi.cafile",
                        "must be set with restapi.certfile: peers' https certificates are checked against it",
                    );
                }
                Some(TlsFiles {
                    certfile: cert.clone(),
                    keyfile: key.clone(),
                    cafile: self.cafile.clone(),
                    verify_client: verify,
                })
            }
            (None, None) => {
                p.check(
                    verify == VerifyClient::None,
                    "restapi.verify_client",
                    self.verify_client.as_deref().unwrap_or(""),
                    "needs restapi.certfile and restapi.keyfile",
                );
                None
            }
            _ => {
                p.push_key("restapi.certfile", "and restapi.keyfile must be set together");
                None
            }
        };
        let d = crate::http::server::Limits::default();
        let limits = crate::http::server::Limits {
            max_connections: self.max_connections.unwrap_or(d.max_connections),
            header_timeout: self.header_timeout.unwrap_or(d.header_timeout),
            handshake_timeout: self.handshake_timeout.unwrap_or(d.handshake_timeout),
            max_head_bytes: d.max_head_bytes,
        };
        p.check(limits.max_connections >= 16, "restapi.max_connections", limits.max_connections, "must be at least 16");
        for (k, v) in
            [("restapi.header_timeout", limits.header_timeout), ("restapi.handshake_timeout", limits.handshake_timeout)]
        {
            p.check(v >= Duration::from_millis(100), k, show(v), "must be at least 100ms");
        }
        let action_timeout = self.action_timeout.unwrap_or(Duration::from_secs(60));
        p.check(
            action_timeout >= Duration::from_secs(1),
            "restapi.action_timeout",
            show(action_timeout),
            "must be at least 1s",
        );
        RestApi {
            access: Access {
                basic,
                allowlist,
                allowlist_include_members: self.allowlist_include_members,
                require_client_cert: tls.is_some() && verify != VerifyClient::None,
            },
            tls,
            limits,
            action_timeout,
        }
    }
}

/// Whether a config file is Patroni's YAML (by its name).
pub fn is_patroni_yaml(path: &str) -> bool {
    path.ends_with(".yml") || path.ends_with(".yaml")
}

/// A Patroni YAML file's text with the `PATRONI_*` environment, translated
/// ([`crate::patroni_yaml`]); its problems (settings ha-agent cannot run with) as
/// config problems.
pub fn translate_patroni(path: &str, text: &str) -> Result<crate::patroni_yaml::Translation, ConfigError> {
    let doc: serde_json::Value = yaml_serde::from_str(text).map_err(|e| ConfigError::Syntax {
        path: path.to_owned(),
        format: "YAML",
        message: e.location().map_or_else(
            || "cannot be read".to_owned(),
            |l| format!("line {}, column {}: cannot be read", l.line(), l.column()),
        ),
    })?;
    let env: Vec<(String, String)> = std::env::vars().filter(|(k, _)| k.starts_with("PATRONI_")).collect();
    let t = crate::patroni_yaml::translate(&doc, &env);
    if !t.problems.is_empty() {
        return Err(ConfigError::Invalid {
            path: path.to_owned(),
            problems: t.problems.iter().map(|(k, v, r)| Problem::new(k.clone(), v, r.clone())).collect(),
        });
    }
    Ok(t)
}

impl Validate for RawConfig {
    type Valid = Config;

    /// TOML, or Patroni's YAML (a `.yml`/`.yaml` file) translated into it: each Patroni
    /// setting ha-agent does not use is named on stderr with the reason.
    fn parse(path: &str, text: &str) -> Result<Self, ConfigError> {
        if !is_patroni_yaml(path) {
            return outrigger_daemon::config::parse_toml(path, text);
        }
        let t = translate_patroni(path, text)?;
        for (key, why) in &t.ignored {
            eprintln!("ha-agent: {path}: {key} is not used: {why}");
        }
        let toml_text = toml::to_string(&t.toml).map_err(|e| ConfigError::Syntax {
            path: path.to_owned(),
            format: "YAML",
            message: format!("cannot be translated: {e}"),
        })?;
        outrigger_daemon::config::parse_toml(path, &toml_text)
    }

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
        let listen_text = self.restapi.listen.as_deref().unwrap_or("0.0.0.0:8008");
        let listen = listen_addr(&mut p, "restapi.listen", listen_text);
        let restapi_connect = match (&self.restapi.connect_address, listen) {
            (Some(c), _) => {
                p.check(split_listen(c).is_some(), "restapi.connect_address", c, "must be host:port");
                c.clone()
            }
            (None, Some(l)) if !l.ip().is_unspecified() => l.to_string(),
            (None, _) => {
                p.push_key(
                    "restapi.connect_address",
                    format!("must be set when restapi.listen ({listen_text}) is not one specific address"),
                );
                String::new()
            }
        };
        let peer_timeout = self.restapi.peer_timeout.unwrap_or(Duration::from_secs(2));
        p.check(
            peer_timeout >= Duration::from_millis(50),
            "restapi.peer_timeout",
            show(peer_timeout),
            "must be at least 50ms",
        );

        let restapi = self.restapi.validate(&mut p);
        // The unsafe endpoints restart, reinitialise and switch over this member: on an
        // address others can reach they need some form of access control.
        if let Some(l) = listen
            && !l.ip().is_loopback()
            && restapi.access.basic.is_none()
            && restapi.access.allowlist.is_empty()
            && !restapi.access.allowlist_include_members
            && !restapi.access.require_client_cert
        {
            p.push(
                "restapi.authentication",
                "(none)",
                format!(
                    "must be set (or restapi.allowlist, or TLS with restapi.verify_client) when restapi.listen ({listen_text}) is not a loopback address: the unsafe endpoints (POST, PATCH, PUT, DELETE) restart, reinitialise and switch over members"
                ),
            );
        }

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
        // A lease renewal must end (answer or timeout) within retry_timeout, or the fence
        // arithmetic in `LeaseView::fence_at` does not hold.
        p.check(
            etcd.request_timeout <= t.retry_timeout,
            "etcd.request_timeout",
            show(etcd.request_timeout),
            &format!("must be <= timings.retry_timeout ({})", show(t.retry_timeout)),
        );
        let postgresql = self.validate_postgresql(&mut p, &t);
        let initdb =
            self.bootstrap.initdb.clone().unwrap_or_else(|| vec!["encoding=UTF8".into(), "data-checksums".into()]);
        for (i, opt) in initdb.iter().enumerate() {
            let name = opt.split('=').next().unwrap_or("");
            p.check(
                !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
                &format!("bootstrap.initdb[{i}]"),
                opt,
                "must be an initdb option name, optionally with =value (like \"encoding=UTF8\")",
            );
            p.check(
                !matches!(name, "pgdata" | "D" | "username" | "U" | "pwfile"),
                &format!("bootstrap.initdb[{i}]"),
                opt,
                "is set by ha-agent (data_dir and authentication.superuser)",
            );
        }
        let tags = Tags {
            nofailover: self.tags.nofailover,
            failover_priority: self.tags.failover_priority.unwrap_or(1),
            clonefrom: self.tags.clonefrom,
            noloadbalance: self.tags.noloadbalance,
            nosync: self.tags.nosync,
            sync_priority: self.tags.sync_priority.unwrap_or(1),
            replicatefrom: self.tags.replicatefrom.clone().filter(|r| !r.is_empty()),
            nostream: self.tags.nostream,
            custom: match toml_to_json(&toml::Value::Table(self.tags.custom.clone())) {
                serde_json::Value::Object(m) => m,
                _ => serde_json::Map::new(),
            },
        };
        if let Some(r) = &self.tags.replicatefrom {
            p.check(!r.is_empty(), "tags.replicatefrom", r, "must name a member (or be left out)");
            p.check(r != &self.name, "tags.replicatefrom", r, "must name another member, not this one");
        }
        let bootstrap_method = bootstrap_method(&self.bootstrap, &mut p);
        let bootstrap_dcs = toml_to_json(&toml::Value::Table(self.bootstrap.dcs.clone()));
        check_standby_cluster(&bootstrap_dcs, &postgresql.create_replica_methods, &mut p);
        let watchdog = self.watchdog.validate(&mut p, &t, etcd.request_timeout);
        let local_etcd = self.local_etcd(&mut p, &etcd.endpoints, &postgresql.connect_address, &restapi_connect);
        p.finish(())?;
        match (layout, listen) {
            (Some(layout), Some(restapi_listen)) => Ok(Config {
                name: self.name.clone(),
                layout,
                log,
                etcd,
                restapi_listen,
                restapi_connect,
                peer_timeout,
                restapi,
                timings: t,
                postgresql,
                initdb,
                bootstrap_method,
                bootstrap_dcs,
                tags,
                watchdog,
                local_etcd,
            }),
            // Both None cases pushed a problem above, so `finish` already returned.
            _ => Err(vec![Problem::key_only("(config)", "invalid")]),
        }
    }
}

/// What a reload (SIGHUP) does with a new config (see [`outrigger_daemon::reload`]).
pub type ReloadPlan = outrigger_daemon::reload::Plan;

impl Config {
    /// The config to run with after a reload to `new`: keys that can change at runtime come
    /// from `new`, the others keep their running values and are listed in `need_restart`.
    pub fn reloaded(&self, new: &Config) -> (Config, ReloadPlan) {
        let mut plan = ReloadPlan::default();
        let mut next = self.clone();
        macro_rules! runtime {
            ($key:literal, $($f:ident).+) => {
                if self.$($f).+ != new.$($f).+ {
                    plan.applied.push($key);
                    next.$($f).+ = new.$($f).+.clone();
                }
            };
        }
        macro_rules! restart {
            ($key:literal, $($f:ident).+) => {
                if self.$($f).+ != new.$($f).+ {
                    plan.need_restart.push($key);
                }
            };
        }
        restart!("name", name);
        restart!("scope/namespace", layout);
        restart!("log.format", log.format);
        runtime!("log.level", log.level);
        restart!("etcd", etcd);
        restart!("restapi.listen", restapi_listen);
        // Published addresses follow the listeners, which need a restart.
        restart!("restapi.connect_address", restapi_connect);
        runtime!("restapi.peer_timeout", peer_timeout);
        runtime!("restapi.authentication/allowlist", restapi.access);
        runtime!("restapi TLS files", restapi.tls);
        restart!("restapi connection limits", restapi.limits);
        runtime!("restapi.action_timeout", restapi.action_timeout);
        runtime!("timings", timings);
        restart!("postgresql.data_dir", postgresql.data_dir);
        restart!("postgresql.bin_dir", postgresql.bin_dir);
        restart!("postgresql.listen", postgresql.listen_addresses);
        restart!("postgresql.listen", postgresql.port);
        restart!("postgresql.connect_address", postgresql.connect_address);
        restart!("postgresql.socket_dir", postgresql.socket_dir);
        restart!("postgresql.run_as", postgresql.run_as);
        restart!("postgresql.log_file", postgresql.log_file);
        runtime!("postgresql.authentication.superuser", postgresql.superuser);
        runtime!("postgresql.authentication.replication", postgresql.replication);
        runtime!("postgresql.use_pg_rewind", postgresql.use_pg_rewind);
        runtime!(
            "postgresql.remove_data_directory_on_rewind_failure",
            postgresql.remove_data_directory_on_rewind_failure
        );
        runtime!(
            "postgresql.remove_data_directory_on_diverged_timelines",
            postgresql.remove_data_directory_on_diverged_timelines
        );
        runtime!("postgresql.pg_hba", postgresql.pg_hba);
        runtime!("postgresql.pg_ident", postgresql.pg_ident);
        runtime!("postgresql.callbacks/pre_promote/before_stop", postgresql.callbacks);
        runtime!("postgresql.parameters", postgresql.parameters);
        runtime!("postgresql.start_timeout", postgresql.start_timeout);
        runtime!("bootstrap.initdb", initdb);
        runtime!("bootstrap.method", bootstrap_method);
        runtime!("bootstrap.dcs", bootstrap_dcs);
        runtime!("tags", tags);
        runtime!("watchdog", watchdog);
        runtime!("etcd_leader", local_etcd);
        plan.need_restart.dedup();
        (next, plan)
    }

    /// `postgres://<connect_address>/postgres`, as Patroni publishes `conn_url`.
    pub fn conn_url(&self) -> String {
        format!("postgres://{}/postgres", self.postgresql.connect_address)
    }

    /// `http://<restapi connect_address>/patroni`, as Patroni publishes `api_url`.
    pub fn api_url(&self) -> String {
        let scheme = if self.restapi.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}/patroni", self.restapi_connect)
    }

    pub fn data_dir(&self) -> &Path {
        &self.postgresql.data_dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outrigger_daemon::config::parse_toml;

    const BASE: &str = r#"
name = "n1"
scope = "batman"
[etcd]
endpoints = ["http://127.0.0.1:2379"]
[restapi]
listen = "10.0.0.1:8008"
allowlist = ["10.0.0.0/24"]
[timings]
ttl = "4s"
loop_wait = "1s"
retry_timeout = "1s"
[watchdog]
safety_margin = -1
[postgresql]
data_dir = "/var/lib/postgresql/15/main"
bin_dir = "/usr/lib/postgresql/15/bin"
listen = "10.0.0.1:5432"
"#;

    fn load(text: &str) -> Result<Config, Vec<String>> {
        let raw: RawConfig = parse_toml("t.toml", text).map_err(|e| vec![e.to_string()])?;
        raw.validate().map_err(|ps| ps.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn custom_tags_are_kept_and_published_and_cascading_tags_are_checked() {
        let c = load(&format!("{BASE}[tags]\nnofailover = true\ndatacenter = \"fra1\"\nrack = 7\nbackup = false\n"))
            .expect("valid");
        let published = c.tags.to_json();
        assert_eq!(published["datacenter"], serde_json::json!("fra1"));
        assert_eq!(published["rack"], serde_json::json!(7));
        assert_eq!(published["backup"], serde_json::json!(false), "custom tags are published whatever their value");
        assert_eq!(published["nofailover"], serde_json::json!(true));
        let c = load(&format!("{BASE}[tags]\nreplicatefrom = \"n2\"\nnostream = true\n")).expect("valid");
        assert_eq!(c.tags.replicatefrom.as_deref(), Some("n2"));
        let published = c.tags.to_json();
        assert_eq!(published["replicatefrom"], serde_json::json!("n2"));
        assert_eq!(published["nostream"], serde_json::json!(true));
        assert!(published.get("datacenter").is_none());
        let e = load(&format!("{BASE}[tags]\nreplicatefrom = \"\"\n")).unwrap_err();
        assert!(e.iter().any(|p| p.starts_with("tags.replicatefrom (\"\"): must name a member")), "{e:?}");
    }

    #[test]
    fn a_standby_cluster_is_checked_key_by_key_and_must_name_a_source() {
        let ok = load(&format!(
            "{BASE}[bootstrap.dcs.standby_cluster]\nhost = \"10.0.0.9\"\nport = 5433\nprimary_slot_name = \"dr\"\n\
             create_replica_methods = [\"basebackup\"]\n"
        ))
        .expect("a valid standby_cluster");
        assert_eq!(ok.bootstrap_dcs["standby_cluster"]["port"], 5433);
        let e = load(&format!(
            "{BASE}[bootstrap.dcs.standby_cluster]\nport = 70000\nhots = \"x\"\ncreate_replica_methods = [\"wal_g\"]\n"
        ))
        .unwrap_err();
        for want in [
            "bootstrap.dcs.standby_cluster.port (70000): must be a TCP port",
            "bootstrap.dcs.standby_cluster.hots: unknown key",
            "bootstrap.dcs.standby_cluster.create_replica_methods (\"wal_g\"): must name basebackup or a method",
        ] {
            assert!(e.iter().any(|p| p.starts_with(want)), "{want}: {e:?}");
        }
        let e = load(&format!("{BASE}[bootstrap.dcs.standby_cluster]\nprimary_slot_name = \"dr\"\n")).unwrap_err();
        assert!(e.iter().any(|p| p.contains("must name a source")), "{e:?}");
    }

    #[test]
    fn a_bootstrap_method_reads_as_patroni_names_it_and_a_target_without_promote_is_refused() {
        let c = load(&format!(
            "{BASE}[bootstrap]\nmethod = \"wal_shipper\"\n[bootstrap.wal_shipper]\ncommand = \"wal-shipper create-replica --target-time '2026-12-03 10:00:00+00'\"\n\
             [bootstrap.wal_shipper.recovery_conf]\nrestore_command = \"wal-shipper wal-fetch %f %p\"\n\
             recovery_target_time = \"2026-12-03 10:00:00+00\"\nrecovery_target_action = \"promote\"\n"
        ))
        .expect("valid");
        let BootstrapMethod::Command { name, argv, recovery_conf, no_params, .. } = c.bootstrap_method else {
            panic!("a command method")
        };
        assert_eq!(name, "wal_shipper");
        assert_eq!(argv.last().map(String::as_str), Some("2026-12-03 10:00:00+00"));
        assert!(!no_params);
        assert!(recovery_conf.contains(&("recovery_target_action".into(), "promote".into())));
        assert_eq!(load(BASE).expect("valid").bootstrap_method, BootstrapMethod::Initdb);
        let e = load(&format!(
            "{BASE}[bootstrap]\nmethod = \"x\"\n[bootstrap.x]\ncommand = \"c\"\ncolour = 1\n[bootstrap.x.recovery_conf]\nrecovery_target_time = \"t\"\n[bootstrap.y]\ncommand = \"d\"\n"
        ))
        .expect_err("problems");
        let all = e.join("\n");
        for want in ["bootstrap.x.recovery_conf.recovery_target_action", "bootstrap.x.colour", "bootstrap.y"] {
            assert!(all.contains(want), "{want} missing from {all}");
        }
    }

    #[test]
    fn replica_methods_and_recovery_conf_read_as_patroni_names_them() {
        let c = load(&format!(
            "{BASE}create_replica_methods = [\"wal_shipper\", \"basebackup\"]\n\
             [postgresql.wal_shipper]\ncommand = \"wal-shipper --config '/etc/o r/w.toml' create-replica\"\nno_leader = 1\n\
             [postgresql.recovery_conf]\nrestore_command = \"wal-shipper wal-fetch %f %p\"\n"
        ))
        .expect("valid");
        assert_eq!(
            c.postgresql.create_replica_methods,
            vec![
                ReplicaMethod::Command {
                    name: "wal_shipper".into(),
                    argv: vec![
                        "wal-shipper".into(),
                        "--config".into(),
                        "/etc/o r/w.toml".into(),
                        "create-replica".into()
                    ],
                    params: vec![("no_leader".into(), "1".into())],
                    no_params: false,
                    keep_data: false,
                },
                ReplicaMethod::Basebackup,
            ]
        );
        assert!(
            c.postgresql.parameters.contains(&("restore_command".into(), "wal-shipper wal-fetch %f %p".into())),
            "{:?}",
            c.postgresql.parameters
        );
        assert_eq!(load(BASE).expect("valid").postgresql.create_replica_methods, vec![ReplicaMethod::Basebackup]);
        let missing = load(&format!("{BASE}create_replica_methods = [\"wal_g\"]\n")).expect_err("no table");
        assert!(missing.iter().any(|p| p.contains("postgresql.wal_g")), "{missing:?}");
        let bad = load(&format!("{BASE}create_replica_methods = [\"x\"]\n[postgresql.x]\ncommand = \"a 'b\"\n"))
            .expect_err("unbalanced quotes");
        assert!(bad.iter().any(|p| p.contains("postgresql.x.command")), "{bad:?}");
        let typo = load(&format!("{BASE}use_pg_rewnd = true\n")).expect_err("unknown key");
        assert!(typo.iter().any(|p| p.contains("postgresql.use_pg_rewnd") && p.contains("unknown key")), "{typo:?}");
    }

    #[test]
    fn minimal_config_gets_patroni_like_defaults() {
        let c = load(BASE).unwrap();
        assert_eq!(c.api_url(), "http://10.0.0.1:8008/patroni");
        assert_eq!(c.conn_url(), "postgres://10.0.0.1:5432/postgres");
        assert_eq!(c.postgresql.superuser.username, "postgres");
        assert_eq!(c.postgresql.replication.username, "replicator");
        assert_eq!(c.postgresql.log_file, PathBuf::from("/var/lib/postgresql/15/main.log"));
        assert_eq!(c.peer_timeout, Duration::from_secs(2));
        assert!(c.tags.can_failover());
        assert_eq!(c.restapi.access.basic, None);
        assert_eq!(c.restapi.tls, None);
        assert_eq!(c.watchdog.mode, crate::core::watchdog::Mode::Automatic);
        assert_eq!(c.watchdog.timeout, Duration::from_secs(2));
    }

    #[test]
    fn restapi_security_settings_are_validated() {
        let text = BASE.replace("allowlist = [\"10.0.0.0/24\"]\n", "").replace(
            "[timings]",
            "allowlist = [\"10.0.0.0/24\", \"bogus\"]\nverify_client = \"sometimes\"\ncertfile = \"/etc/c.pem\"\n[restapi.authentication]\nusername = \"u\"\n[timings]",
        );
        let e = load(&text).unwrap_err();
        for want in [
            "restapi.allowlist[1] (bogus): must be",
            "restapi.verify_client (sometimes): must be none, optional or required",
            "restapi.authentication: needs both username and password",
            "restapi.certfile: and restapi.keyfile must be set together",
        ] {
            assert!(e.iter().any(|p| p.starts_with(want)), "{want} in {e:?}");
        }
        let text = BASE.replace("allowlist = [\"10.0.0.0/24\"]\n", "").replace(
            "[timings]",
            "allowlist = [\"10.0.0.0/24\"]\ncertfile = \"/etc/c.pem\"\nkeyfile = \"/etc/k.pem\"\ncafile = \"/etc/ca.pem\"\nverify_client = \"optional\"\n[restapi.authentication]\nusername = \"u\"\npassword = \"p\"\n[timings]",
        );
        let c = load(&text).unwrap();
        assert_eq!(c.api_url(), "https://10.0.0.1:8008/patroni");
        assert!(c.restapi.access.require_client_cert);
        assert_eq!(c.restapi.access.basic, Some(crate::http::access::Access::basic_header("u", "p")));
        assert_eq!(c.restapi.access.allowlist.len(), 1);
    }

    #[test]
    fn wildcard_listen_needs_a_connect_address() {
        let text = BASE.replace("listen = \"10.0.0.1:5432\"", "listen = \"0.0.0.0:5432\"");
        let e = load(&text).unwrap_err();
        assert!(e.iter().any(|p| p.starts_with("postgresql.connect_address: must be set")), "{e:?}");
    }

    #[test]
    fn parameters_become_settings_and_managed_ones_are_refused() {
        let text = format!(
            "{BASE}[postgresql.parameters]\nmax_connections = 200\nhot_standby = true\nport = 5433\n\"x = 1\\ninclude\" = 1\n"
        );
        let e = load(&text).unwrap_err();
        assert_eq!(e.len(), 3, "{e:?}");
        assert!(e.iter().any(|p| p.starts_with("postgresql.parameters.port: is refused: managed")), "{e:?}");
        assert!(e.iter().any(|p| p.starts_with("postgresql.parameters.hot_standby: is refused: managed")), "{e:?}");
        assert!(e.iter().any(|p| p.contains("is refused: not a parameter name")), "{e:?}");
        let ok =
            load(&format!("{BASE}[postgresql.parameters]\nmax_connections = 200\nwal_compression = true\n")).unwrap();
        let mut p = ok.postgresql.parameters.clone();
        p.sort();
        assert_eq!(p, vec![("max_connections".into(), "200".into()), ("wal_compression".into(), "on".into())]);
    }

    #[test]
    fn unsafe_endpoints_on_a_reachable_address_need_access_control() {
        let open = BASE.replace("allowlist = [\"10.0.0.0/24\"]\n", "");
        let e = load(&open).unwrap_err();
        assert!(
            e.iter()
                .any(|p| p.starts_with("restapi.authentication ((none)): must be set") && p.contains("10.0.0.1:8008")),
            "{e:?}"
        );
        let loopback = open.replace("listen = \"10.0.0.1:8008\"", "listen = \"127.0.0.1:8008\"");
        assert!(load(&loopback).is_ok(), "loopback needs no access control");
        let auth = open.replace("[timings]", "[restapi.authentication]\nusername = \"u\"\npassword = \"p\"\n[timings]");
        assert!(load(&auth).is_ok());
    }

    #[test]
    fn the_local_etcd_member_is_found_by_address_or_named() {
        let text = BASE.replace(
            "endpoints = [\"http://127.0.0.1:2379\"]",
            "endpoints = [\"http://10.0.0.2:2379\", \"http://10.0.0.1:2379\"]",
        );
        assert_eq!(load(&text).unwrap().local_etcd, Some(1));
        let off = format!("{text}[etcd_leader]\nkeep_off_primary = false\n");
        assert_eq!(load(&off).unwrap().local_etcd, None);
        let named = format!("{text}[etcd_leader]\nlocal_endpoint = \"http://10.0.0.2:2379\"\n");
        assert_eq!(load(&named).unwrap().local_etcd, Some(0));
        let bad = format!("{text}[etcd_leader]\nlocal_endpoint = \"http://10.9.9.9:2379\"\n");
        assert!(
            load(&bad).unwrap_err().iter().any(|p| p.starts_with("etcd_leader.local_endpoint (http://10.9.9.9:2379)"))
        );
        assert_eq!(load(BASE).unwrap().local_etcd, None, "no member on this host");
    }

    #[test]
    fn watchdog_settings_follow_patroni_and_timings_that_cannot_work_are_refused() {
        use crate::core::watchdog::{Driver, Mode};
        let c = load(&BASE.replace(
            "safety_margin = -1",
            "mode = \"required\"\nsafety_margin = 2\ndriver = \"testing\"\ndevice = \"/run/wd\"",
        ))
        .unwrap();
        assert_eq!(c.watchdog.mode, Mode::Required);
        assert_eq!(c.watchdog.driver, Driver::Testing);
        assert_eq!(c.watchdog.timeout, Duration::from_secs(2));
        // Patroni's default margin (5 s) cannot work with a 4 s ttl.
        let e = load(&BASE.replace("[watchdog]\nsafety_margin = -1\n", "")).unwrap_err();
        assert!(e.iter().any(|p| p.starts_with("watchdog.safety_margin (5): must leave a watchdog timeout")), "{e:?}");
        let off = load(&BASE.replace("safety_margin = -1", "mode = \"off\"\nsafety_margin = 5")).unwrap();
        assert_eq!(off.watchdog.mode, Mode::Off);
        let e = load(&BASE.replace("safety_margin = -1", "mode = \"sometimes\"")).unwrap_err();
        assert!(e.iter().any(|p| p.starts_with("watchdog.mode (sometimes): must be off, automatic or required")));
    }

    #[test]
    fn a_reload_applies_runtime_settings_and_names_the_ones_that_need_a_restart() {
        let old = load(BASE).unwrap();
        let text = BASE
            .replace("ttl = \"4s\"", "ttl = \"5s\"")
            .replace("name = \"n1\"", "name = \"n9\"")
            .replace("listen = \"10.0.0.1:5432\"", "listen = \"10.0.0.1:5433\"")
            + "[tags]\nnofailover = true\n[postgresql.parameters]\nwork_mem = \"8MB\"\n";
        let new = load(&text).unwrap();
        let (next, plan) = old.reloaded(&new);
        assert_eq!(plan.applied, vec!["timings", "postgresql.parameters", "tags"]);
        assert_eq!(plan.need_restart, vec!["name", "postgresql.listen", "postgresql.connect_address"]);
        assert_eq!(next.timings.ttl, Duration::from_secs(5));
        assert!(!next.tags.can_failover());
        assert_eq!(next.name, "n1", "restart-only keys keep their running values");
        assert_eq!(next.postgresql.port, 5432);
        let (_, none) = old.reloaded(&load(BASE).unwrap());
        assert_eq!(none, ReloadPlan::default());
    }

    #[test]
    fn etcd_request_timeout_must_fit_in_retry_timeout() {
        let text = BASE.replace("[restapi]", "request_timeout = \"2s\"\n[restapi]");
        let e = load(&text).unwrap_err();
        assert!(e.iter().any(|p| p == "etcd.request_timeout (2s): must be <= timings.retry_timeout (1s)"), "{e:?}");
    }

    #[test]
    fn bootstrap_dcs_becomes_json_and_tags_are_read() {
        let text = format!(
            "{BASE}[bootstrap.dcs]\nmaximum_lag_on_failover = 100\n[bootstrap.dcs.postgresql.parameters]\nwal_keep_size = \"128MB\"\n[tags]\nfailover_priority = 0\n"
        );
        let c = load(&text).unwrap();
        assert_eq!(c.bootstrap_dcs["maximum_lag_on_failover"], 100);
        assert_eq!(c.bootstrap_dcs["postgresql"]["parameters"]["wal_keep_size"], "128MB");
        assert!(!c.tags.can_failover());
    }
}
