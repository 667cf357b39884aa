//! The cluster-aware part of the daemon: with `[etcd]` and `[cluster]` in its TOML file,
//! `wal-shipper daemon` publishes its member's archiving status under the cluster's scope and
//! takes the scheduled backups, one member at a time (keys: `outrigger_schema::outrigger`).
//!
//! [`schedule`] and [`decide`] are pure; [`run`] is the loop with its etcd and storage edges.

pub mod decide;
pub mod run;
pub mod schedule;

use std::time::Duration;

use outrigger_daemon::config::{EtcdSection, Problems};
use outrigger_schema::KeyLayout;
use serde::Deserialize;

use decide::{BackupFrom, Policy};
use schedule::Schedule;

/// `[cluster]` as written.
#[derive(Debug, Default, Deserialize)]
struct RawCluster {
    scope: Option<String>,
    namespace: Option<String>,
    name: Option<String>,
    backup_from: Option<String>,
    full_backup: Option<String>,
    delta_backup: Option<String>,
    retain_full: Option<i64>,
    take_backups: Option<bool>,
    lock_ttl: Option<String>,
    loop_wait: Option<String>,
    retry_after: Option<String>,
}

/// The validated `[etcd]` and `[cluster]` tables.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    pub etcd: outrigger_etcd::ConnectOptions,
    pub layout: KeyLayout,
    /// This member's name, as ha-agent (or Patroni) publishes it under `members/`.
    pub name: String,
    /// `None`: no schedule; the daemon only publishes its status.
    pub policy: Option<Policy>,
    /// Whether this member may take backups at all.
    pub take_backups: bool,
    /// `retain N` full backups (with the WAL they need), applied after each scheduled backup.
    pub retain_full: Option<usize>,
    /// The lease of the lock and of the status key; renewed every quarter of it.
    pub lock_ttl: Duration,
    pub loop_wait: Duration,
    /// After a failed backup this member waits this long (doubling, up to 8 times) before it
    /// tries again; another member may take it meanwhile.
    pub retry_after: Duration,
}

/// Reads `[etcd]` and `[cluster]` (both or neither), reporting every problem as
/// `cluster.KEY (value): rule`.
pub fn read(etcd: Option<toml::Value>, cluster: Option<toml::Value>, p: &mut Problems) -> Option<ClusterSettings> {
    let (etcd, cluster) = match (etcd, cluster) {
        (None, None) => return None,
        (Some(_), None) => {
            p.push_key("cluster", "must be set when [etcd] is (scope and name at least)");
            return None;
        }
        (None, Some(_)) => {
            p.push_key("etcd", "must be set when [cluster] is (endpoints at least)");
            return None;
        }
        (Some(e), Some(c)) => (e, c),
    };
    let etcd: Option<EtcdSection> = table(etcd, "etcd", p);
    let raw: RawCluster = table(cluster, "cluster", p)?;
    let etcd = etcd?.validate(p);
    let duration = |key: &str, v: &Option<String>, default: Duration, min: Duration, p: &mut Problems| match v {
        None => default,
        Some(t) => match humantime::parse_duration(t.trim()) {
            Ok(d) if d >= min => d,
            _ => {
                p.push(
                    format!("cluster.{key}"),
                    t,
                    format!("must be a duration of at least {}", humantime::format_duration(min)),
                );
                default
            }
        },
    };
    let lock_ttl = duration("lock_ttl", &raw.lock_ttl, Duration::from_secs(30), Duration::from_secs(5), p);
    let loop_wait = duration("loop_wait", &raw.loop_wait, Duration::from_secs(10), Duration::from_millis(200), p);
    let retry_after = duration("retry_after", &raw.retry_after, Duration::from_secs(60), Duration::from_secs(1), p);
    if lock_ttl <= etcd.request_timeout * 4 {
        p.push(
            "cluster.lock_ttl",
            humantime::format_duration(lock_ttl),
            format!(
                "must be more than 4 times etcd.request_timeout ({})",
                humantime::format_duration(etcd.request_timeout)
            ),
        );
    }
    let scope = raw.scope.unwrap_or_default();
    let layout = match KeyLayout::new(raw.namespace.as_deref().unwrap_or("service"), &scope) {
        Ok(l) => Some(l),
        Err(e) => {
            p.push("cluster.scope", &scope, e.to_string());
            None
        }
    };
    let name = raw.name.unwrap_or_default();
    if name.is_empty() || name.contains('/') {
        p.push("cluster.name", &name, "must be this member's name (as ha-agent's `name`), non-empty, without '/'");
    }
    let from = match raw.backup_from.as_deref().map(str::trim) {
        None | Some("primary") => BackupFrom::Primary,
        Some("replica") => BackupFrom::Replica,
        Some(other) => {
            p.push("cluster.backup_from", other, "must be \"primary\" or \"replica\"");
            BackupFrom::Primary
        }
    };
    let schedule = |key: &str, v: Option<String>, p: &mut Problems| {
        v.and_then(|t| Schedule::parse(&t).map_err(|rule| p.push(format!("cluster.{key}"), &t, rule)).ok())
    };
    let full_given = raw.full_backup.is_some();
    let full = schedule("full_backup", raw.full_backup, p);
    let delta = schedule("delta_backup", raw.delta_backup, p);
    if delta.is_some() && !full_given {
        p.push_key("cluster.full_backup", "must be set when cluster.delta_backup is (a delta builds on a full backup)");
    }
    let retain_full = match raw.retain_full {
        None => None,
        Some(n) if n >= 1 => Some(n as usize),
        Some(n) => {
            p.push("cluster.retain_full", n, "must be at least 1 (leave it out to keep every backup)");
            None
        }
    };
    Some(ClusterSettings {
        etcd,
        layout: layout?,
        name,
        policy: full.map(|full| Policy { from, full, delta }),
        take_backups: raw.take_backups.unwrap_or(true),
        retain_full,
        lock_ttl,
        loop_wait,
        retry_after,
    })
}

/// Deserializes one TOML table, reporting unknown keys and type errors under its name.
fn table<T: serde::de::DeserializeOwned>(v: toml::Value, name: &str, p: &mut Problems) -> Option<T> {
    let mut unknown = Vec::new();
    let r: Result<T, _> = serde_ignored::deserialize(v, |path| unknown.push(path.to_string()));
    for k in unknown {
        p.push_key(format!("{name}.{k}"), "unknown key (see the example config for the keys there are)");
    }
    match r {
        Ok(t) => Some(t),
        Err(e) => {
            p.push_key(name, format!("is not valid: {e}"));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> (Option<ClusterSettings>, Vec<String>) {
        let mut t: toml::Table = text.parse().expect("toml");
        let mut p = Problems::new();
        let c = read(t.remove("etcd"), t.remove("cluster"), &mut p);
        (c, p.into_vec().iter().map(|x| x.to_string()).collect())
    }

    const ETCD: &str = "[etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\n";

    #[test]
    fn a_cluster_section_with_a_schedule_reads_into_a_policy() {
        let (c, p) = parse(&format!(
            "{ETCD}[cluster]\nscope = \"batman\"\nname = \"n1\"\nbackup_from = \"replica\"\nfull_backup = \"0 3 * * *\"\ndelta_backup = \"1h\"\nretain_full = 3\n"
        ));
        assert!(p.is_empty(), "{p:?}");
        let c = c.unwrap();
        assert_eq!(c.layout.backup_lock(), "/service/batman/outrigger/backup/lock");
        let policy = c.policy.unwrap();
        assert_eq!(policy.from, BackupFrom::Replica);
        assert!(policy.delta.is_some());
        assert_eq!(c.retain_full, Some(3));
    }

    #[test]
    fn every_bad_cluster_key_is_named_with_its_value_and_rule() {
        let (_, p) = parse(&format!(
            "{ETCD}[cluster]\nscope = \"a/b\"\nname = \"\"\nbackup_from = \"any\"\nfull_backup = \"whenever\"\ndelta_backup = \"1h\"\nretain_full = 0\nlock_ttl = \"1s\"\ncolour = 1\n"
        ));
        let all = p.join("\n");
        for want in [
            "cluster.colour",
            "cluster.scope (a/b)",
            "cluster.name (\"\")",
            "cluster.backup_from (any)",
            "cluster.full_backup (whenever)",
            "cluster.retain_full (0)",
            "cluster.lock_ttl (1s)",
        ] {
            assert!(all.contains(want), "{want} missing from:\n{all}");
        }
        let (_, p) = parse("[cluster]\nscope = \"b\"\nname = \"n1\"\n");
        assert!(p.join("").contains("etcd"), "{p:?}");
    }
}
