//! `--apply-etcd`: merges the settings into the cluster's dynamic configuration,
//! `/<namespace>/<scope>/config` → `postgresql.parameters`, where ha-agent (or Patroni) picks
//! them up and applies them on every member.
//!
//! Shape: read the key, [`plan`] the merge (pure: which parameters change, the new value),
//! show the diff, and only with `--yes` write it with a compare-and-swap on the key's
//! `mod_revision`, so a concurrent `patronictl edit-config` is never overwritten. If the key
//! changed in between, the merge is planned again on the new value.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use outrigger_etcd::{Etcd, EtcdError};
use outrigger_schema::{ClusterKey, ConfigPostgresql, ConfigValue, DecodeError};
use serde_json::Value as Json;

use crate::catalog;
use crate::compare::same;
use crate::output::strip_quotes;

/// One parameter the merge changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub name: String,
    /// The value in `/config` now, as PostgreSQL would read it; `None` if not set.
    pub old: Option<String>,
    pub new: String,
    /// Takes effect only after a restart of each member.
    pub restart: bool,
}

/// The merge of a set of settings into a `/config` value.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub changes: Vec<Change>,
    /// Parameters already set to the same value (in any spelling), left as they are.
    pub unchanged: usize,
    /// The new `/config` value, compact JSON as Patroni writes it.
    pub value: String,
}

impl Plan {
    pub fn restart_needed(&self) -> Vec<&str> {
        self.changes.iter().filter(|c| c.restart).map(|c| c.name.as_str()).collect()
    }
}

/// A `postgresql.parameters` value as PostgreSQL would read it (Patroni accepts strings,
/// numbers and booleans there).
fn setting_text(v: &Json) -> Option<String> {
    match v {
        Json::String(s) => Some(s.clone()),
        Json::Number(n) => Some(n.to_string()),
        Json::Bool(b) => Some(if *b { "on" } else { "off" }.to_owned()),
        _ => None,
    }
}

/// Plans merging `settings` into the `/config` value `current`. Every other key of `/config`,
/// and every parameter tuner does not set, is kept as it is; a parameter whose value is the
/// same in another spelling (`"128MB"` vs `"131072kB"`, `100` vs `"100"`) is not rewritten.
pub fn plan(current: &[u8], settings: &BTreeMap<String, String>, version: u8) -> Result<Plan, DecodeError> {
    let mut cfg = ConfigValue::decode(current)?;
    let pg = cfg.postgresql.get_or_insert_with(ConfigPostgresql::default);
    let mut changes = Vec::new();
    let mut unchanged = 0;
    for (name, value) in settings {
        let new = strip_quotes(value);
        let old = pg.parameters.get(name).and_then(setting_text);
        if old.as_deref().is_some_and(|o| same(name, o, &new)) {
            unchanged += 1;
            continue;
        }
        pg.parameters.insert(name.clone(), Json::String(new.clone()));
        let restart = catalog::param(name).is_some_and(|p| p.needs_restart(version));
        changes.push(Change { name: name.clone(), old, new, restart });
    }
    Ok(Plan { changes, unchanged, value: cfg.encode() })
}

/// The diff as an operator reads it.
pub fn render_diff(key: &str, plan: &Plan) -> String {
    let mut o = format!("{key}: postgresql.parameters\n");
    for c in &plan.changes {
        let restart = if c.restart { "   (needs restart)" } else { "" };
        let _ = match &c.old {
            Some(old) => writeln!(o, "  ~ {}: {old} -> {}{restart}", c.name, c.new),
            None => writeln!(o, "  + {}: {}{restart}", c.name, c.new),
        };
    }
    let restart = plan.restart_needed();
    let _ = writeln!(
        o,
        "{} to change, {} already set{}",
        plan.changes.len(),
        plan.unchanged,
        if restart.is_empty() {
            String::new()
        } else {
            format!("; a restart of every member is needed for: {}", restart.join(", "))
        }
    );
    o
}

/// What `--apply-etcd` did.
#[derive(Debug)]
pub enum Outcome {
    /// The diff was planned and shown; `--yes` was not given, so nothing was written.
    NotApplied { diff: String },
    /// Nothing to change.
    UpToDate { diff: String },
    /// Written at this revision.
    Applied { diff: String, revision: i64 },
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(
        "{key} does not exist: the cluster is not bootstrapped yet; put the parameters in bootstrap.dcs instead (--output-format patroni-json)"
    )]
    NoConfig { key: String },
    #[error("{key} holds a value tuner cannot merge into: {source}")]
    Undecodable {
        key: String,
        #[source]
        source: DecodeError,
    },
    #[error("{key} kept changing under us; gave up after {tries} attempts")]
    Contended { key: String, tries: u32 },
    #[error(transparent)]
    Etcd(#[from] EtcdError),
}

/// How often a compare-and-swap that lost to a concurrent writer is planned again.
const TRIES: u32 = 5;

/// Merges `settings` into the cluster's `/config`, writing only if `yes`.
pub async fn apply(
    etcd: &Etcd,
    layout: &outrigger_schema::KeyLayout,
    settings: &BTreeMap<String, String>,
    version: u8,
    yes: bool,
) -> Result<Outcome, ApplyError> {
    let key = layout.key(ClusterKey::Config);
    for _ in 0..TRIES {
        let kv = etcd.get(&key).await?.ok_or_else(|| ApplyError::NoConfig { key: key.clone() })?;
        let plan = plan(&kv.value, settings, version)
            .map_err(|source| ApplyError::Undecodable { key: key.clone(), source })?;
        let diff = render_diff(&key, &plan);
        if plan.changes.is_empty() {
            return Ok(Outcome::UpToDate { diff });
        }
        if !yes {
            return Ok(Outcome::NotApplied { diff });
        }
        match etcd.put_if_mod_revision(&key, kv.mod_revision, plan.value.clone()).await {
            Ok(revision) => {
                tracing::info!(key = %key, revision, changed = plan.changes.len(), "applied parameters to /config");
                return Ok(Outcome::Applied { diff, revision });
            }
            // Someone edited /config between our read and our write: merge into theirs.
            Err(EtcdError::CompareFailed { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApplyError::Contended { key, tries: TRIES })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    const CURRENT: &str = r#"{"ttl":30,"loop_wait":10,"retry_timeout":10,"maximum_lag_on_failover":1048576,"synchronous_mode":true,"postgresql":{"use_pg_rewind":false,"use_slots":true,"parameters":{"password_encryption":"scram-sha-256","port":5432,"max_connections":200,"shared_buffers":"131072kB","track_commit_timestamp":"off"},"pg_hba":["local all all trust"]},"x_other_tool":{"keep":"me"}}"#;

    #[test]
    fn merge_keeps_every_other_key_and_parameter() {
        let p = plan(
            CURRENT.as_bytes(),
            &settings(&[
                ("shared_buffers", "856MB"),
                ("max_connections", "200"),
                ("stats_temp_directory", "'/run/pg'"),
            ]),
            15,
        )
        .unwrap();
        let v: Json = serde_json::from_str(&p.value).unwrap();
        assert_eq!(v["ttl"], 30);
        assert_eq!(v["synchronous_mode"], true);
        assert_eq!(v["x_other_tool"]["keep"], "me");
        assert_eq!(v["postgresql"]["use_slots"], true);
        assert_eq!(v["postgresql"]["pg_hba"][0], "local all all trust");
        let params = &v["postgresql"]["parameters"];
        assert_eq!(params["password_encryption"], "scram-sha-256");
        assert_eq!(params["port"], 5432);
        assert_eq!(params["max_connections"], 200, "same value: left as the number it was");
        assert_eq!(params["shared_buffers"], "856MB");
        assert_eq!(params["stats_temp_directory"], "/run/pg", "quotes stripped, as patroni-json does");
        assert!(!p.value.contains(": "), "compact JSON, as Patroni writes it");
    }

    #[test]
    fn the_diff_lists_changes_additions_and_restarts() {
        let p = plan(
            CURRENT.as_bytes(),
            &settings(&[("shared_buffers", "856MB"), ("work_mem", "3440kB"), ("max_connections", "200")]),
            15,
        )
        .unwrap();
        assert_eq!(
            p.changes,
            vec![
                Change {
                    name: "shared_buffers".into(),
                    old: Some("131072kB".into()),
                    new: "856MB".into(),
                    restart: true
                },
                Change { name: "work_mem".into(), old: None, new: "3440kB".into(), restart: false },
            ]
        );
        assert_eq!(p.unchanged, 1);
        let d = render_diff("/service/main/config", &p);
        assert!(d.contains("  ~ shared_buffers: 131072kB -> 856MB   (needs restart)\n"), "{d}");
        assert!(d.contains("  + work_mem: 3440kB\n"), "{d}");
        assert!(
            d.ends_with("2 to change, 1 already set; a restart of every member is needed for: shared_buffers\n"),
            "{d}"
        );
    }

    #[test]
    fn a_config_without_postgresql_gets_one() {
        let p = plan(br#"{"ttl":30}"#, &settings(&[("work_mem", "4MB")]), 15).unwrap();
        let v: Json = serde_json::from_str(&p.value).unwrap();
        assert_eq!(v["postgresql"]["parameters"]["work_mem"], "4MB");
        assert_eq!(v["ttl"], 30);
    }

    #[test]
    fn a_value_that_is_not_a_json_object_is_refused() {
        assert!(plan(b"not json", &settings(&[("work_mem", "4MB")]), 15).is_err());
    }
}
