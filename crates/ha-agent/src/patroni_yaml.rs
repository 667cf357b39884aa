//! Patroni's own config file as ha-agent's input, pure: `ha-agent --config patroni.yml` (a
//! `.yml` or `.yaml` file) reads a Patroni 3.x/4.x YAML file and the `PATRONI_*` environment
//! variables, with Patroni's precedence (the environment wins over the file), and translates
//! them into the TOML tables ha-agent validates (`config::RawConfig`). What ha-agent does not
//! do is reported by its Patroni name with the reason ([`Translation::ignored`]), never
//! dropped silently; what it cannot run with safely is a problem, and the file is refused.
//! `ha-agent convert-config patroni.yml` prints the translation as TOML with those reasons as
//! comments.

use serde_json::{Map, Value};

/// The TOML ha-agent reads, and the Patroni settings it leaves out (key, why).
#[derive(Debug, Clone, PartialEq)]
pub struct Translation {
    pub toml: toml::Table,
    pub ignored: Vec<(String, String)>,
    /// Settings that cannot be run with: key, value, rule.
    pub problems: Vec<(String, String, String)>,
}

/// Patroni's environment variables and where they go in its YAML (Patroni's
/// `Config._build_environment_configuration`).
const ENV: &[(&str, &[&str])] = &[
    ("PATRONI_NAME", &["name"]),
    ("PATRONI_SCOPE", &["scope"]),
    ("PATRONI_NAMESPACE", &["namespace"]),
    ("PATRONI_LOG_LEVEL", &["log", "level"]),
    ("PATRONI_RESTAPI_LISTEN", &["restapi", "listen"]),
    ("PATRONI_RESTAPI_CONNECT_ADDRESS", &["restapi", "connect_address"]),
    ("PATRONI_RESTAPI_USERNAME", &["restapi", "authentication", "username"]),
    ("PATRONI_RESTAPI_PASSWORD", &["restapi", "authentication", "password"]),
    ("PATRONI_RESTAPI_CERTFILE", &["restapi", "certfile"]),
    ("PATRONI_RESTAPI_KEYFILE", &["restapi", "keyfile"]),
    ("PATRONI_RESTAPI_CAFILE", &["restapi", "cafile"]),
    ("PATRONI_RESTAPI_VERIFY_CLIENT", &["restapi", "verify_client"]),
    ("PATRONI_ETCD3_HOSTS", &["etcd3", "hosts"]),
    ("PATRONI_ETCD3_HOST", &["etcd3", "host"]),
    ("PATRONI_ETCD3_PROTOCOL", &["etcd3", "protocol"]),
    ("PATRONI_ETCD3_CACERT", &["etcd3", "cacert"]),
    ("PATRONI_ETCD3_CERT", &["etcd3", "cert"]),
    ("PATRONI_ETCD3_KEY", &["etcd3", "key"]),
    ("PATRONI_ETCD3_USERNAME", &["etcd3", "username"]),
    ("PATRONI_ETCD3_PASSWORD", &["etcd3", "password"]),
    ("PATRONI_POSTGRESQL_LISTEN", &["postgresql", "listen"]),
    ("PATRONI_POSTGRESQL_CONNECT_ADDRESS", &["postgresql", "connect_address"]),
    ("PATRONI_POSTGRESQL_DATA_DIR", &["postgresql", "data_dir"]),
    ("PATRONI_POSTGRESQL_BIN_DIR", &["postgresql", "bin_dir"]),
    ("PATRONI_POSTGRESQL_CONFIG_DIR", &["postgresql", "config_dir"]),
    ("PATRONI_POSTGRESQL_PGPASS", &["postgresql", "pgpass"]),
    ("PATRONI_SUPERUSER_USERNAME", &["postgresql", "authentication", "superuser", "username"]),
    ("PATRONI_SUPERUSER_PASSWORD", &["postgresql", "authentication", "superuser", "password"]),
    ("PATRONI_REPLICATION_USERNAME", &["postgresql", "authentication", "replication", "username"]),
    ("PATRONI_REPLICATION_PASSWORD", &["postgresql", "authentication", "replication", "password"]),
    ("PATRONI_REWIND_USERNAME", &["postgresql", "authentication", "rewind", "username"]),
    ("PATRONI_REWIND_PASSWORD", &["postgresql", "authentication", "rewind", "password"]),
];

/// Applies the `PATRONI_*` variables of `env` over `doc`; variables Patroni reads that are not
/// in [`ENV`] are reported.
fn apply_env(doc: &mut Value, env: &[(String, String)], ignored: &mut Vec<(String, String)>) {
    for (k, v) in env {
        let Some(path) = ENV.iter().find(|(name, _)| name == k).map(|(_, p)| *p) else {
            if k.starts_with("PATRONI_") && k != "PATRONI_CONFIGURATION" {
                ignored.push((k.clone(), "not an environment variable ha-agent reads".into()));
            }
            continue;
        };
        let mut at = &mut *doc;
        for (i, part) in path.iter().enumerate() {
            if !at.is_object() {
                *at = Value::Object(Map::new());
            }
            let obj = at.as_object_mut().expect("an object");
            if i + 1 == path.len() {
                obj.insert((*part).to_owned(), Value::String(v.clone()));
                break;
            }
            at = obj.entry((*part).to_owned()).or_insert_with(|| Value::Object(Map::new()));
        }
    }
}

/// JSON (from YAML) as TOML; `null`s are left out (Patroni reads them as unset).
fn to_toml(v: &Value) -> Option<toml::Value> {
    Some(match v {
        Value::Null => return None,
        Value::Bool(b) => toml::Value::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => toml::Value::Integer(i),
            None => toml::Value::Float(n.as_f64()?),
        },
        Value::String(s) => toml::Value::String(s.clone()),
        Value::Array(a) => toml::Value::Array(a.iter().filter_map(to_toml).collect()),
        Value::Object(m) => toml::Value::Table(m.iter().filter_map(|(k, v)| Some((k.clone(), to_toml(v)?))).collect()),
    })
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Seconds as ha-agent's duration text (`30` → `"30s"`, `0.5` → `"500ms"`).
fn secs(v: &Value) -> Option<String> {
    let s = match v {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.trim().parse().ok()?,
        _ => return None,
    };
    (s.is_finite() && s >= 0.0).then(|| format!("{}ms", (s * 1000.0).round() as u64))
}

struct Out {
    toml: toml::Table,
    ignored: Vec<(String, String)>,
    problems: Vec<(String, String, String)>,
}

impl Out {
    fn table(&mut self, path: &[&str]) -> &mut toml::Table {
        let mut t = &mut self.toml;
        for p in path {
            t = t
                .entry((*p).to_owned())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                .as_table_mut()
                .expect("a table");
        }
        t
    }

    fn set(&mut self, path: &[&str], key: &str, v: toml::Value) {
        self.table(path).insert(key.to_owned(), v);
    }

    fn ignore(&mut self, key: impl Into<String>, why: impl Into<String>) {
        self.ignored.push((key.into(), why.into()));
    }

    fn problem(&mut self, key: impl Into<String>, value: impl Into<String>, rule: impl Into<String>) {
        self.problems.push((key.into(), value.into(), rule.into()));
    }

    /// Copies `src[k]` (a string, number or bool) to `path.key`.
    fn scalar(&mut self, src: &Map<String, Value>, k: &str, path: &[&str], key: &str) {
        if let Some(v) = src.get(k).and_then(to_toml) {
            self.set(path, key, v);
        }
    }
}

/// Translates a Patroni YAML document (already parsed) with the environment `env`.
pub fn translate(doc: &Value, env: &[(String, String)]) -> Translation {
    let mut doc = doc.clone();
    let mut out = Out { toml: toml::Table::new(), ignored: Vec::new(), problems: Vec::new() };
    apply_env(&mut doc, env, &mut out.ignored);
    let Value::Object(top) = &doc else {
        out.problem("(file)", "", "must be a YAML mapping of Patroni's sections");
        return Translation { toml: out.toml, ignored: out.ignored, problems: out.problems };
    };
    for (k, v) in top {
        match k.as_str() {
            "name" | "scope" => out.scalar(top, k, &[], k),
            "namespace" => {
                if let Some(ns) = text(v) {
                    let ns = ns.trim_matches('/');
                    out.set(&[], "namespace", toml::Value::String(ns.to_owned()));
                }
            }
            "log" => log(v, &mut out),
            "restapi" => restapi(v, &mut out),
            "etcd3" => etcd3(v, &mut out),
            "etcd" => out.problem(
                "etcd",
                "(section)",
                "uses etcd's v2 API; ha-agent speaks v3: rename the section to etcd3 (same keys)",
            ),
            "consul" | "zookeeper" | "exhibitor" | "kubernetes" | "raft" => {
                out.problem(k.clone(), "(section)", "ha-agent keeps its state in etcd only (the etcd3 section)")
            }
            "bootstrap" => {
                // bootstrap.pg_hba stands in only where nothing else sets pg_hba.
                let has_pg_hba = top.get("postgresql").is_some_and(|p| p.get("pg_hba").is_some())
                    || v.get("dcs").and_then(|d| d.get("postgresql")).is_some_and(|p| p.get("pg_hba").is_some());
                bootstrap(v, has_pg_hba, &mut out)
            }
            "postgresql" => postgresql(v, &mut out),
            "watchdog" => match v {
                Value::Bool(on) => {
                    out.set(&["watchdog"], "mode", toml::Value::String(if *on { "automatic" } else { "off" }.into()))
                }
                Value::Object(w) => {
                    for (wk, wv) in w {
                        match wk.as_str() {
                            "mode" => {
                                // YAML reads `off` as false.
                                let mode = match wv {
                                    Value::Bool(false) => Some("off".to_owned()),
                                    Value::Bool(true) => Some("automatic".to_owned()),
                                    other => text(other),
                                };
                                if let Some(m) = mode {
                                    out.set(&["watchdog"], "mode", toml::Value::String(m.to_ascii_lowercase()));
                                }
                            }
                            "device" | "safety_margin" | "driver" => out.scalar(w, wk, &["watchdog"], wk),
                            _ => out.ignore(format!("watchdog.{wk}"), "not a watchdog setting ha-agent knows"),
                        }
                    }
                }
                _ => {}
            },
            "tags" => {
                if let Some(t) = to_toml(v) {
                    out.set(&[], "tags", t);
                }
            }
            "ctl" => out.ignore("ctl", "patronictl's own settings; ha-agent does not read them"),
            "citus" => out.problem("citus", "(section)", "Citus clusters are not supported by ha-agent"),
            "standby_cluster" => out.problem(
                "standby_cluster",
                "(section)",
                "Patroni reads standby_cluster from the cluster's config only: put it under bootstrap.dcs",
            ),
            other => out.ignore(other, "not a Patroni setting ha-agent knows"),
        }
    }
    Translation { toml: out.toml, ignored: out.ignored, problems: out.problems }
}

fn log(v: &Value, out: &mut Out) {
    let Value::Object(l) = v else { return };
    for (k, v) in l {
        match k.as_str() {
            "level" => {
                if let Some(level) = text(v) {
                    let ours = match level.to_ascii_uppercase().as_str() {
                        "DEBUG" => "debug",
                        "INFO" => "info",
                        "WARNING" | "WARN" => "warn",
                        "ERROR" | "CRITICAL" | "FATAL" => "error",
                        _ => {
                            out.problem("log.level", level.clone(), "must be DEBUG, INFO, WARNING, ERROR or CRITICAL");
                            continue;
                        }
                    };
                    out.set(&["log"], "level", toml::Value::String(ours.into()));
                }
            }
            "type" if text(v).as_deref() == Some("json") => {
                out.set(&["log"], "format", toml::Value::String("json".into()))
            }
            _ => out.ignore(format!("log.{k}"), "ha-agent logs to stderr (the journal under systemd), as text or JSON"),
        }
    }
}

fn restapi(v: &Value, out: &mut Out) {
    let Value::Object(r) = v else { return };
    for (k, v) in r {
        match k.as_str() {
            "listen"
            | "connect_address"
            | "certfile"
            | "keyfile"
            | "cafile"
            | "verify_client"
            | "allowlist_include_members" => out.scalar(r, k, &["restapi"], k),
            "allowlist" => {
                if let Some(t) = to_toml(v) {
                    out.set(&["restapi"], "allowlist", t);
                }
            }
            "authentication" => {
                if let Value::Object(a) = v {
                    out.scalar(a, "username", &["restapi", "authentication"], "username");
                    out.scalar(a, "password", &["restapi", "authentication"], "password");
                }
            }
            "keyfile_password" => out.problem(
                "restapi.keyfile_password",
                "(secret)",
                "encrypted private keys are not supported: give ha-agent an unencrypted key file readable only by it",
            ),
            _ => out.ignore(format!("restapi.{k}"), "not a REST API setting ha-agent has"),
        }
    }
}

fn etcd3(v: &Value, out: &mut Out) {
    let Value::Object(e) = v else { return };
    let protocol = e.get("protocol").and_then(text).unwrap_or_else(|| "http".into());
    let hosts: Vec<String> = match e.get("hosts").or_else(|| e.get("host")) {
        Some(Value::String(s)) => s.split(',').map(|h| h.trim().to_owned()).filter(|h| !h.is_empty()).collect(),
        Some(Value::Array(a)) => a.iter().filter_map(text).collect(),
        _ => Vec::new(),
    };
    let endpoints: Vec<toml::Value> = hosts
        .iter()
        .map(|h| {
            let h = h.trim_start_matches("http://").trim_start_matches("https://");
            let h = if h.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) {
                h.to_owned()
            } else {
                format!("{h}:2379")
            };
            toml::Value::String(format!("{protocol}://{h}"))
        })
        .collect();
    out.set(&["etcd"], "endpoints", toml::Value::Array(endpoints));
    for (k, _) in e {
        match k.as_str() {
            "hosts" | "host" | "protocol" => {}
            "cacert" => out.scalar(e, k, &["etcd"], "ca_file"),
            "cert" => out.scalar(e, k, &["etcd"], "cert_file"),
            "key" => out.scalar(e, k, &["etcd"], "key_file"),
            "username" | "password" => out.scalar(e, k, &["etcd"], k),
            "url" | "proxy" | "srv" | "srv_suffix" => out.problem(
                format!("etcd3.{k}"),
                "(set)",
                "ha-agent needs the etcd members themselves: list them in etcd3.hosts",
            ),
            _ => out.ignore(format!("etcd3.{k}"), "not an etcd setting ha-agent has"),
        }
    }
}

fn bootstrap(v: &Value, has_pg_hba: bool, out: &mut Out) {
    let Value::Object(b) = v else { return };
    let method = b.get("method").and_then(text);
    for (k, v) in b {
        match k.as_str() {
            "dcs" => {
                if let Some(Value::Object(dcs)) = Some(v) {
                    // The cluster's timings; the local ones only fill in until the key exists.
                    for t in ["ttl", "loop_wait", "retry_timeout"] {
                        if let Some(d) = dcs.get(t).and_then(secs) {
                            out.set(&["timings"], t, toml::Value::String(d));
                        }
                    }
                    if let Some(dcs) = to_toml(v) {
                        out.set(&["bootstrap"], "dcs", dcs);
                    }
                }
            }
            "method" => out.scalar(b, k, &["bootstrap"], "method"),
            "initdb" => {
                let opts: Vec<toml::Value> = match v {
                    Value::Array(a) => a
                        .iter()
                        .filter_map(|o| match o {
                            Value::String(s) => Some(s.clone()),
                            Value::Object(m) => {
                                m.iter().next().map(|(k, v)| format!("{k}={}", text(v).unwrap_or_default()))
                            }
                            _ => None,
                        })
                        .map(toml::Value::String)
                        .collect(),
                    _ => Vec::new(),
                };
                out.set(&["bootstrap"], "initdb", toml::Value::Array(opts));
            }
            name if Some(name) == method.as_deref() => {
                if let Some(t) = to_toml(v) {
                    out.set(&["bootstrap"], name, t);
                }
            }
            "users" => out.ignore("bootstrap.users", "removed in Patroni 4; create roles in post_bootstrap or later"),
            "pg_hba" => {
                // Patroni wrote it into pg_hba.conf at bootstrap and leaves that file alone
                // without postgresql.pg_hba; ha-agent always writes the file, so it keeps these.
                if !has_pg_hba {
                    if let Some(t) = to_toml(v) {
                        out.set(&["postgresql"], "pg_hba", t);
                    }
                    out.ignore("bootstrap.pg_hba", "used as postgresql.pg_hba (which the file does not set)");
                } else {
                    out.ignore("bootstrap.pg_hba", "postgresql.pg_hba (the member's or the cluster's) is set and wins");
                }
            }
            "post_bootstrap" | "post_init" => out.problem(
                format!("bootstrap.{k}"),
                text(v).unwrap_or_default(),
                "is not supported by ha-agent yet: run it by hand once the cluster is up",
            ),
            other => out.ignore(format!("bootstrap.{other}"), "not a bootstrap setting ha-agent knows"),
        }
    }
}

fn postgresql(v: &Value, out: &mut Out) {
    let Value::Object(p) = v else { return };
    let methods: Vec<String> = match p.get("create_replica_methods").or_else(|| p.get("create_replica_method")) {
        Some(Value::Array(a)) => a.iter().filter_map(text).collect(),
        Some(Value::String(s)) => vec![s.clone()],
        _ => Vec::new(),
    };
    let pg = &["postgresql"];
    for (k, v) in p {
        match k.as_str() {
            "listen"
            | "connect_address"
            | "bin_dir"
            | "use_pg_rewind"
            | "remove_data_directory_on_rewind_failure"
            | "remove_data_directory_on_diverged_timelines"
            | "pre_promote"
            | "before_stop" => out.scalar(p, k, pg, k),
            "data_dir" => {
                if let Some(d) = text(v) {
                    let d = if d.len() > 1 { d.trim_end_matches('/').to_owned() } else { d };
                    out.set(pg, "data_dir", toml::Value::String(d));
                }
            }
            "config_dir" => {
                let same = text(v).map(|c| c.trim_end_matches('/').to_owned())
                    == p.get("data_dir").and_then(text).map(|d| d.trim_end_matches('/').to_owned());
                if !same {
                    out.problem(
                        "postgresql.config_dir",
                        text(v).unwrap_or_default(),
                        "ha-agent keeps postgresql.conf in data_dir: leave config_dir out or set it to data_dir",
                    );
                }
            }
            "pgpass" => {
                out.ignore("postgresql.pgpass", "ha-agent hands passwords to libpq itself; no .pgpass is written")
            }
            "use_unix_socket" | "use_unix_socket_repl" => out.ignore(
                format!("postgresql.{k}"),
                "ha-agent always uses the socket in unix_socket_directories for its own connections",
            ),
            "pg_ctl_timeout" => {
                if let Some(d) = secs(v) {
                    out.set(pg, "start_timeout", toml::Value::String(d));
                }
            }
            "authentication" => {
                if let Value::Object(a) = v {
                    for (role, creds) in a {
                        match (role.as_str(), creds) {
                            ("superuser" | "replication", Value::Object(c)) => {
                                for (ck, _) in c {
                                    match ck.as_str() {
                                        "username" | "password" => {
                                            out.scalar(c, ck, &["postgresql", "authentication", role], ck)
                                        }
                                        _ => out.ignore(
                                            format!("postgresql.authentication.{role}.{ck}"),
                                            "ha-agent connects over the local socket and the replication network without client TLS settings",
                                        ),
                                    }
                                }
                            }
                            ("rewind", _) => {
                                out.ignore("postgresql.authentication.rewind", "pg_rewind runs as the superuser")
                            }
                            _ => out.ignore(format!("postgresql.authentication.{role}"), "not a role ha-agent uses"),
                        }
                    }
                }
            }
            "parameters" => {
                if let Value::Object(params) = v {
                    for (name, val) in params {
                        if name == "unix_socket_directories" {
                            // ha-agent manages the setting: the first directory is its socket_dir.
                            if let Some(first) =
                                text(val).and_then(|s| s.split(',').next().map(|d| d.trim().to_owned()))
                            {
                                out.set(pg, "socket_dir", toml::Value::String(first));
                            }
                        } else if matches!(name.as_str(), "port" | "listen_addresses") {
                            out.ignore(format!("postgresql.parameters.{name}"), "set from postgresql.listen");
                        } else if let Some(t) = to_toml(val) {
                            out.set(&["postgresql", "parameters"], name, t);
                        }
                    }
                }
            }
            "pg_hba" | "pg_ident" => {
                if let Some(t) = to_toml(v) {
                    out.set(pg, k, t);
                }
            }
            "callbacks" => {
                if let Value::Object(c) = v {
                    for (ck, _) in c {
                        match ck.as_str() {
                            "on_start" | "on_stop" | "on_restart" | "on_reload" | "on_role_change" => {
                                out.scalar(c, ck, &["postgresql", "callbacks"], ck)
                            }
                            _ => out.ignore(format!("postgresql.callbacks.{ck}"), "not a callback Patroni calls"),
                        }
                    }
                }
            }
            "create_replica_methods" | "create_replica_method" => {
                let list = methods.iter().cloned().map(toml::Value::String).collect();
                out.set(pg, "create_replica_methods", toml::Value::Array(list));
            }
            "recovery_conf" => {
                if let Some(t) = to_toml(v) {
                    out.set(pg, "recovery_conf", t);
                }
            }
            "basebackup" => out.ignore(
                "postgresql.basebackup",
                "pg_basebackup runs with ha-agent's own options (fast checkpoint, WAL streamed)",
            ),
            name if methods.iter().any(|m| m == name) => {
                if let Some(t) = to_toml(v) {
                    out.set(pg, name, t);
                }
            }
            other => out.ignore(format!("postgresql.{other}"), "not a postgresql setting ha-agent has"),
        }
    }
}

/// The TOML text of a translation, its ignored settings as comments at the top.
pub fn render(t: &Translation, source: &str) -> String {
    let mut s = format!("# ha-agent's config, translated from Patroni's {source}.\n");
    if !t.ignored.is_empty() {
        s.push_str("# Patroni settings ha-agent does not use:\n");
        for (k, why) in &t.ignored {
            s.push_str(&format!("#   {k}: {why}\n"));
        }
    }
    for (k, v, rule) in &t.problems {
        s.push_str(&format!("# PROBLEM {k} ({v}): {rule}\n"));
    }
    s.push('\n');
    s.push_str(&toml::to_string_pretty(&t.toml).unwrap_or_default());
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(yaml: &str) -> Value {
        yaml_serde::from_str(yaml).expect("YAML")
    }

    #[test]
    fn the_environment_wins_over_the_file_as_in_patroni() {
        let d = doc("name: a\nscope: s\netcd3:\n  hosts: [10.0.0.1:2379]\npostgresql:\n  data_dir: /d\n");
        let env = [
            ("PATRONI_NAME".to_owned(), "from-env".to_owned()),
            ("PATRONI_ETCD3_HOSTS".to_owned(), "10.0.0.7,10.0.0.8:2380".to_owned()),
            ("PATRONI_REPLICATION_PASSWORD".to_owned(), "s3cret".to_owned()),
            ("PATRONI_KUBERNETES_LABELS".to_owned(), "x".to_owned()),
        ];
        let t = translate(&d, &env);
        assert_eq!(t.toml["name"].as_str(), Some("from-env"));
        assert_eq!(
            t.toml["etcd"]["endpoints"],
            toml::Value::Array(vec!["http://10.0.0.7:2379".into(), "http://10.0.0.8:2380".into()])
        );
        assert_eq!(t.toml["postgresql"]["authentication"]["replication"]["password"].as_str(), Some("s3cret"));
        assert!(t.ignored.iter().any(|(k, _)| k == "PATRONI_KUBERNETES_LABELS"), "{:?}", t.ignored);
        assert!(t.problems.is_empty());
    }

    #[test]
    fn what_cannot_run_is_a_problem_and_what_is_not_used_is_named_with_why() {
        let d = doc(
            "name: a\nscope: s\netcd:\n  host: 10.0.0.1:2379\nrestapi:\n  keyfile_password: x\n  http_extra_headers: {}\n\
             postgresql:\n  data_dir: /d\n  config_dir: /etc/postgresql\n  pgpass: /tmp/pgpass\nwatchdog:\n  mode: off\n\
             log:\n  level: WARNING\n  dir: /var/log/patroni\n",
        );
        let t = translate(&d, &[]);
        let problem_keys: Vec<&str> = t.problems.iter().map(|(k, _, _)| k.as_str()).collect();
        assert_eq!(problem_keys, ["etcd", "postgresql.config_dir", "restapi.keyfile_password"]);
        let ignored: Vec<&str> = t.ignored.iter().map(|(k, _)| k.as_str()).collect();
        for k in ["log.dir", "restapi.http_extra_headers", "postgresql.pgpass"] {
            assert!(ignored.contains(&k), "{k} in {ignored:?}");
        }
        assert_eq!(t.toml["watchdog"]["mode"].as_str(), Some("off"), "YAML's off is false");
        assert_eq!(t.toml["log"]["level"].as_str(), Some("warn"));
    }

    #[test]
    fn a_standby_cluster_is_read_from_bootstrap_dcs_and_a_top_level_one_is_a_problem() {
        let d = doc("name: a\nscope: s\netcd3:\n  hosts: [10.0.0.1:2379]\npostgresql:\n  data_dir: /d\n\
             bootstrap:\n  dcs:\n    standby_cluster:\n      host: 10.9.0.1\n      port: 5433\n      primary_slot_name: dr\n");
        let t = translate(&d, &[]);
        assert!(t.problems.is_empty(), "{:?}", t.problems);
        let sc = &t.toml["bootstrap"]["dcs"]["standby_cluster"];
        assert_eq!(sc["host"].as_str(), Some("10.9.0.1"));
        assert_eq!(sc["port"].as_integer(), Some(5433));
        let top = doc("name: a\nscope: s\netcd3:\n  hosts: [10.0.0.1:2379]\nstandby_cluster:\n  host: 10.9.0.1\n");
        let t = translate(&top, &[]);
        assert!(
            t.problems.iter().any(|(k, _, why)| k == "standby_cluster" && why.contains("bootstrap.dcs")),
            "{:?}",
            t.problems
        );
    }

    #[test]
    fn timings_initdb_and_the_socket_directory_read_as_patroni_writes_them() {
        let d = doc(
            "name: a\nscope: s\nbootstrap:\n  dcs:\n    ttl: 20\n    loop_wait: 1\n    retry_timeout: 5\n    failsafe_mode: null\n  initdb:\n    - encoding: UTF8\n    - data-checksums\n\
             postgresql:\n  data_dir: /d/\n  parameters:\n    unix_socket_directories: '/run/pg, /tmp'\n    port: 5433\n",
        );
        let t = translate(&d, &[]);
        assert_eq!(t.toml["timings"]["ttl"].as_str(), Some("20000ms"));
        assert_eq!(t.toml["timings"]["retry_timeout"].as_str(), Some("5000ms"));
        assert!(t.toml["bootstrap"]["dcs"].get("failsafe_mode").is_none(), "a null is unset");
        assert_eq!(
            t.toml["bootstrap"]["initdb"],
            toml::Value::Array(vec!["encoding=UTF8".into(), "data-checksums".into()])
        );
        assert_eq!(t.toml["postgresql"]["socket_dir"].as_str(), Some("/run/pg"));
        assert_eq!(t.toml["postgresql"]["data_dir"].as_str(), Some("/d"));
        assert!(t.ignored.iter().any(|(k, _)| k == "postgresql.parameters.port"));
    }

    #[test]
    fn bootstrap_pg_hba_is_kept_as_the_members_pg_hba_unless_postgresql_sets_one() {
        let only_bootstrap =
            doc("name: a\nscope: s\nbootstrap:\n  pg_hba:\n  - local all all trust\npostgresql:\n  data_dir: /d\n");
        let t = translate(&only_bootstrap, &[]);
        assert_eq!(t.toml["postgresql"]["pg_hba"], toml::Value::Array(vec!["local all all trust".into()]));
        let both = doc(
            "name: a\nscope: s\nbootstrap:\n  pg_hba:\n  - local all all trust\npostgresql:\n  data_dir: /d\n  pg_hba:\n  - local all all peer\n",
        );
        let t = translate(&both, &[]);
        assert_eq!(t.toml["postgresql"]["pg_hba"], toml::Value::Array(vec!["local all all peer".into()]));
    }
}
