//! `config`: the cluster's dynamic configuration, as Patroni and `patronictl edit-config`
//! write it.
//!
//! Patroni is lenient about types here (a number may arrive as a string, a bool as `"on"`),
//! and so are the accessors below: a field of the wrong shape reads as "not set" so that one
//! odd value does not throw away the whole config. Non-JSON (or non-object) values are a
//! [`DecodeError`], which readers log and ignore.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::DecodeError;

/// `config`. Only the fields Outrigger reads are named; everything else is kept in `extra`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConfigValue {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loop_wait: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_timeout: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maximum_lag_on_failover: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check_timeline: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_start_timeout: Option<Value>,
    /// Pre-4.0 spelling of `primary_start_timeout`, still read by Patroni.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master_start_timeout: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause: Option<Value>,
    /// How long the leader keeps a departed member's slot (Patroni 4: `30min` by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member_slots_ttl: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgresql: Option<ConfigPostgresql>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `config.postgresql`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConfigPostgresql {
    /// PostgreSQL settings for every member (`postgresql.parameters`).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub parameters: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_pg_rewind: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_slots: Option<Value>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One entry of `config.slots`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PermanentSlot {
    Physical,
    Logical {
        database: String,
        plugin: String,
    },
    /// Neither: no `type` Patroni knows, or a logical slot without its database or plugin.
    Unreadable,
}

/// `config.standby_cluster` of a standby cluster (see [`ConfigValue::standby_cluster`]): where
/// its leader, the standby leader, takes WAL from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StandbyCluster {
    /// The remote primary (or any server that streams, a standby included).
    pub host: Option<String>,
    pub port: Option<u16>,
    /// A slot on the remote server for the standby leader to stream through.
    pub primary_slot_name: Option<String>,
    /// How every member of the standby cluster fetches WAL from the remote archive.
    pub restore_command: Option<String>,
    pub archive_cleanup_command: Option<String>,
    /// PostgreSQL's `recovery_min_apply_delay`, as written (`"1h"`, or milliseconds).
    pub recovery_min_apply_delay: Option<String>,
    /// The `create_replica_methods` (names of `postgresql` methods) that make the standby
    /// leader's first copy; `basebackup` when not set.
    pub create_replica_methods: Vec<String>,
}

/// `config.synchronous_mode`, read leniently (see [`ConfigValue::synchronous_mode`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SynchronousMode {
    Off,
    On,
    /// Quorum commit (Patroni 4.0+): the standbys in `sync` are quorum standbys.
    Quorum,
}

/// A number, or a string holding one (Patroni accepts both).
fn int(v: Option<&Value>) -> Option<i64> {
    match v? {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A bool, or one of PostgreSQL's spellings of one.
fn boolean(v: Option<&Value>) -> Option<bool> {
    match v? {
        Value::Bool(b) => Some(*b),
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "on" | "yes" | "1" => Some(true),
            "false" | "off" | "no" | "0" => Some(false),
            _ => None,
        },
        Value::Number(n) => n.as_i64().map(|i| i != 0),
        _ => None,
    }
}

/// Seconds in Patroni's duration spelling: a number, then optionally `ms`, `s`, `min`, `h` or
/// `d` (`"30min"`, `"500ms"`, `"20"`).
fn seconds(s: &str) -> Option<f64> {
    let s = s.trim();
    let at = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let n: f64 = s[..at].parse().ok()?;
    let per = match s[at..].trim() {
        "" | "s" => 1.0,
        "ms" => 0.001,
        "min" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        _ => return None,
    };
    Some(n * per)
}

/// A duration: a number of seconds (fractions allowed) or a [`seconds`] string. Negative,
/// infinite or absurd values (over a day) read as unset.
fn duration(v: Option<&Value>) -> Option<Duration> {
    let secs = match v? {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => seconds(s)?,
        _ => return None,
    };
    (secs.is_finite() && (0.0..=86_400.0).contains(&secs)).then(|| Duration::from_secs_f64(secs))
}

impl ConfigValue {
    pub fn decode(raw: &[u8]) -> Result<Self, DecodeError> {
        serde_json::from_slice(raw).map_err(|source| DecodeError::Json { key: "config", source })
    }

    /// Compact JSON, as Patroni writes it.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".to_owned())
    }

    /// `ttl`: a number of seconds (fractions allowed: ha-agent runs below Patroni's
    /// 20 s minimum), or a number with a unit (`"500ms"`, `"30s"`). `None`: absent,
    /// unreadable, negative or not finite.
    pub fn ttl(&self) -> Option<Duration> {
        duration(self.ttl.as_ref())
    }
    /// `loop_wait`, read as [`Self::ttl`].
    pub fn loop_wait(&self) -> Option<Duration> {
        duration(self.loop_wait.as_ref())
    }
    /// `retry_timeout`, read as [`Self::ttl`].
    pub fn retry_timeout(&self) -> Option<Duration> {
        duration(self.retry_timeout.as_ref())
    }
    /// Bytes.
    pub fn maximum_lag_on_failover(&self) -> Option<i64> {
        int(self.maximum_lag_on_failover.as_ref())
    }
    pub fn check_timeline(&self) -> Option<bool> {
        boolean(self.check_timeline.as_ref())
    }
    /// Seconds; falls back to the legacy `master_start_timeout`.
    pub fn primary_start_timeout(&self) -> Option<i64> {
        int(self.primary_start_timeout.as_ref()).or_else(|| int(self.master_start_timeout.as_ref()))
    }
    /// Seconds. Patroni's spelling: a number of seconds, or a number with a unit (`ms`, `s`,
    /// `min`, `h`, `d`), e.g. `30min`.
    pub fn member_slots_ttl(&self) -> Option<i64> {
        match self.member_slots_ttl.as_ref()? {
            Value::String(s) => Some(seconds(s)? as i64),
            v => int(Some(v)),
        }
    }
    pub fn pause(&self) -> Option<bool> {
        boolean(self.pause.as_ref())
    }
    pub fn use_pg_rewind(&self) -> Option<bool> {
        boolean(self.postgresql.as_ref()?.use_pg_rewind.as_ref())
    }
    pub fn use_slots(&self) -> Option<bool> {
        boolean(self.postgresql.as_ref()?.use_slots.as_ref())
    }

    /// `postgresql.pg_hba`: the cluster's `pg_hba.conf` lines (`None`: absent or not a list
    /// of strings).
    pub fn pg_hba(&self) -> Option<Vec<String>> {
        self.lines("pg_hba")
    }

    /// `postgresql.pg_ident`, read as [`Self::pg_hba`].
    pub fn pg_ident(&self) -> Option<Vec<String>> {
        self.lines("pg_ident")
    }

    fn lines(&self, key: &str) -> Option<Vec<String>> {
        match self.postgresql.as_ref()?.extra.get(key)? {
            Value::Array(lines) => lines.iter().map(|l| l.as_str().map(str::to_owned)).collect(),
            _ => None,
        }
    }

    /// `slots`: the permanent replication slots, by name, as Patroni reads them: `type:
    /// physical`, or `type: logical` (also when `type` is left out but `database` and `plugin`
    /// are given) with its `database` and `plugin`. An entry of another shape is returned as
    /// [`PermanentSlot::Unreadable`] so that the reader can say which one it skips.
    pub fn permanent_slots(&self) -> Vec<(String, PermanentSlot)> {
        let Some(Value::Object(slots)) = self.extra.get("slots") else { return Vec::new() };
        slots
            .iter()
            .map(|(name, v)| {
                let field = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
                let kind = match (field("type").as_deref(), field("database"), field("plugin")) {
                    (Some("physical"), _, _) => PermanentSlot::Physical,
                    (Some("logical") | None, Some(database), Some(plugin)) => {
                        PermanentSlot::Logical { database, plugin }
                    }
                    _ => PermanentSlot::Unreadable,
                };
                (name.clone(), kind)
            })
            .collect()
    }

    /// `synchronous_mode`: `true`/`on`, `false`/`off` (also when absent or unreadable), or
    /// `"quorum"` (Patroni 4.0+).
    pub fn synchronous_mode(&self) -> SynchronousMode {
        match self.extra.get("synchronous_mode") {
            Some(Value::String(s)) if s.trim().eq_ignore_ascii_case("quorum") => SynchronousMode::Quorum,
            v => match boolean(v) {
                Some(true) => SynchronousMode::On,
                _ => SynchronousMode::Off,
            },
        }
    }

    /// `synchronous_mode_strict`.
    pub fn synchronous_mode_strict(&self) -> Option<bool> {
        boolean(self.extra.get("synchronous_mode_strict"))
    }

    /// `synchronous_node_count` (Patroni's default 1).
    pub fn synchronous_node_count(&self) -> Option<i64> {
        int(self.extra.get("synchronous_node_count"))
    }

    /// `maximum_lag_on_syncnode` in bytes; -1 (Patroni's default) means no limit.
    pub fn maximum_lag_on_syncnode(&self) -> Option<i64> {
        int(self.extra.get("maximum_lag_on_syncnode"))
    }

    /// `failsafe_mode`.
    pub fn failsafe_mode(&self) -> Option<bool> {
        boolean(self.extra.get("failsafe_mode"))
    }

    /// Whether this is a standby cluster: `standby_cluster` is an object naming a `host`, a
    /// `port` or a `restore_command`, as Patroni's `is_standby_cluster` decides it.
    pub fn is_standby_cluster(&self) -> bool {
        let Some(Value::Object(sc)) = self.extra.get("standby_cluster") else { return false };
        ["host", "port", "restore_command"].iter().any(|k| match sc.get(*k) {
            None | Some(Value::Null) | Some(Value::Bool(false)) => false,
            Some(Value::String(s)) => !s.is_empty(),
            Some(Value::Number(n)) => n.as_f64() != Some(0.0),
            Some(_) => true,
        })
    }

    /// `standby_cluster`, when this is a standby cluster ([`Self::is_standby_cluster`]).
    /// Fields of another type than Patroni's are left out (a port that is not a number
    /// 1-65535, a command that is not a string).
    pub fn standby_cluster(&self) -> Option<StandbyCluster> {
        if !self.is_standby_cluster() {
            return None;
        }
        let sc = self.extra.get("standby_cluster")?;
        let text = |k: &str| match sc.get(k)? {
            Value::String(s) if !s.is_empty() => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        };
        Some(StandbyCluster {
            host: text("host"),
            port: int(sc.get("port")).and_then(|p| u16::try_from(p).ok()).filter(|p| *p > 0),
            primary_slot_name: text("primary_slot_name"),
            restore_command: text("restore_command"),
            archive_cleanup_command: text("archive_cleanup_command"),
            recovery_min_apply_delay: text("recovery_min_apply_delay"),
            create_replica_methods: match sc.get("create_replica_methods") {
                Some(Value::Array(a)) => a.iter().filter_map(|m| m.as_str().map(str::to_owned)).collect(),
                _ => Vec::new(),
            },
        })
    }

    /// `postgresql.parameters` as PostgreSQL setting strings (`true` → `on`, numbers as
    /// written). Values that are objects or lists cannot be settings and are skipped.
    pub fn parameters(&self) -> Vec<(String, String)> {
        let Some(pg) = &self.postgresql else { return Vec::new() };
        pg.parameters
            .iter()
            .filter_map(|(k, v)| {
                let s = match v {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(true) => "on".to_owned(),
                    Value::Bool(false) => "off".to_owned(),
                    _ => return None,
                };
                Some((k.clone(), s))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standby_cluster_is_read_only_when_it_names_a_source() {
        let c = ConfigValue::decode(
            br#"{"standby_cluster":{"host":"10.0.0.5","port":"5433","primary_slot_name":"dr",
                 "restore_command":"wal-g wal-fetch %f %p","recovery_min_apply_delay":"1h",
                 "create_replica_methods":["wal_g","basebackup"]}}"#,
        )
        .unwrap();
        let sc = c.standby_cluster().unwrap();
        assert_eq!(sc.host.as_deref(), Some("10.0.0.5"));
        assert_eq!(sc.port, Some(5433));
        assert_eq!(sc.primary_slot_name.as_deref(), Some("dr"));
        assert_eq!(sc.restore_command.as_deref(), Some("wal-g wal-fetch %f %p"));
        assert_eq!(sc.recovery_min_apply_delay.as_deref(), Some("1h"));
        assert_eq!(sc.create_replica_methods, ["wal_g", "basebackup"]);
        for not in [r#"{}"#, r#"{"standby_cluster":null}"#, r#"{"standby_cluster":{"primary_slot_name":"x"}}"#] {
            assert_eq!(ConfigValue::decode(not.as_bytes()).unwrap().standby_cluster(), None, "{not}");
        }
        let bad_port = ConfigValue::decode(br#"{"standby_cluster":{"host":"h","port":70000}}"#).unwrap();
        assert_eq!(bad_port.standby_cluster().unwrap().port, None);
    }

    #[test]
    fn permanent_slots_read_as_patroni_reads_them() {
        let c = ConfigValue::decode(
            br#"{"slots":{"keep":{"type":"physical"},"cdc":{"type":"logical","database":"app","plugin":"pgoutput"},
                 "bare":{"database":"app","plugin":"test_decoding"},"odd":{"type":"logical"},"junk":3}}"#,
        )
        .unwrap();
        let mut slots = c.permanent_slots();
        slots.sort_by(|a, b| a.0.cmp(&b.0));
        let logical = |d: &str, p: &str| PermanentSlot::Logical { database: d.into(), plugin: p.into() };
        assert_eq!(
            slots,
            vec![
                ("bare".into(), logical("app", "test_decoding")),
                ("cdc".into(), logical("app", "pgoutput")),
                ("junk".into(), PermanentSlot::Unreadable),
                ("keep".into(), PermanentSlot::Physical),
                ("odd".into(), PermanentSlot::Unreadable),
            ]
        );
        assert!(ConfigValue::decode(b"{}").unwrap().permanent_slots().is_empty());
    }

    #[test]
    fn member_slots_ttl_reads_patroni_durations() {
        let ttl = |j: &str| {
            ConfigValue::decode(format!("{{\"member_slots_ttl\":{j}}}").as_bytes()).unwrap().member_slots_ttl()
        };
        assert_eq!(ttl("\"30min\""), Some(1800));
        assert_eq!(ttl("0"), Some(0));
        assert_eq!(ttl("\"90s\""), Some(90));
        assert_eq!(ttl("\"2h\""), Some(7200));
        assert_eq!(ttl("\"ten\""), None);
        assert_eq!(ConfigValue::decode(b"{}").unwrap().member_slots_ttl(), None);
    }

    #[test]
    fn timings_read_whole_and_fractional_seconds_and_units() {
        let c = ConfigValue::decode(br#"{"ttl":2.5,"loop_wait":"500ms","retry_timeout":"1"}"#).unwrap();
        assert_eq!(c.ttl(), Some(Duration::from_millis(2500)));
        assert_eq!(c.loop_wait(), Some(Duration::from_millis(500)));
        assert_eq!(c.retry_timeout(), Some(Duration::from_secs(1)));
        let odd = ConfigValue::decode(br#"{"ttl":-3,"loop_wait":1e300,"retry_timeout":"1 fortnight"}"#).unwrap();
        assert_eq!((odd.ttl(), odd.loop_wait(), odd.retry_timeout()), (None, None, None));
    }

    #[test]
    fn patroni_written_config_decodes_with_lenient_types() {
        let raw = br#"{"ttl":30,"loop_wait":"10","retry_timeout":10,"maximum_lag_on_failover":1048576,"check_timeline":"on","postgresql":{"use_pg_rewind":true,"parameters":{"max_connections":100,"hot_standby":true,"wal_level":"replica","bad":{"x":1}}},"failsafe_mode":false}"#;
        let c = ConfigValue::decode(raw).unwrap();
        assert_eq!(c.ttl(), Some(Duration::from_secs(30)));
        assert_eq!(c.loop_wait(), Some(Duration::from_secs(10)));
        assert_eq!(c.maximum_lag_on_failover(), Some(1048576));
        assert_eq!(c.check_timeline(), Some(true));
        assert_eq!(c.use_pg_rewind(), Some(true));
        let mut p = c.parameters();
        p.sort();
        assert_eq!(
            p,
            vec![
                ("hot_standby".to_owned(), "on".to_owned()),
                ("max_connections".to_owned(), "100".to_owned()),
                ("wal_level".to_owned(), "replica".to_owned())
            ]
        );
        // Unknown fields survive a round trip.
        let again: Value = serde_json::from_str(&c.encode()).unwrap();
        assert_eq!(again["failsafe_mode"], Value::Bool(false));
    }

    #[test]
    fn synchronous_mode_reads_bools_strings_and_quorum() {
        let mode = |raw: &str| ConfigValue::decode(raw.as_bytes()).unwrap().synchronous_mode();
        assert_eq!(mode(r#"{}"#), SynchronousMode::Off);
        assert_eq!(mode(r#"{"synchronous_mode":true}"#), SynchronousMode::On);
        assert_eq!(mode(r#"{"synchronous_mode":"on"}"#), SynchronousMode::On);
        assert_eq!(mode(r#"{"synchronous_mode":false}"#), SynchronousMode::Off);
        assert_eq!(mode(r#"{"synchronous_mode":"quorum"}"#), SynchronousMode::Quorum);
        assert_eq!(mode(r#"{"synchronous_mode":[1]}"#), SynchronousMode::Off);
    }

    #[test]
    fn standby_cluster_needs_a_host_port_or_restore_command() {
        let standby = |raw: &str| ConfigValue::decode(raw.as_bytes()).unwrap().is_standby_cluster();
        assert!(!standby(r#"{}"#));
        assert!(!standby(r#"{"standby_cluster":null}"#));
        assert!(!standby(r#"{"standby_cluster":{}}"#));
        assert!(!standby(r#"{"standby_cluster":{"host":""}}"#));
        assert!(standby(r#"{"standby_cluster":{"host":"10.0.0.9","port":5432}}"#));
        assert!(standby(r#"{"standby_cluster":{"restore_command":"cp /a %p"}}"#));
    }

    #[test]
    fn the_clusters_pg_hba_is_a_list_of_lines_or_unset() {
        let hba = |raw: &str| ConfigValue::decode(raw.as_bytes()).unwrap().pg_hba();
        assert_eq!(
            hba(r#"{"postgresql":{"pg_hba":["local all all trust"]}}"#),
            Some(vec!["local all all trust".to_owned()])
        );
        assert_eq!(hba(r#"{"postgresql":{"pg_hba":"local all all trust"}}"#), None);
        assert_eq!(hba(r#"{"postgresql":{"pg_hba":["a", 1]}}"#), None);
        assert_eq!(hba(r#"{}"#), None);
        let c = ConfigValue::decode(br#"{"postgresql":{"pg_ident":["ops alice postgres"]}}"#).unwrap();
        assert_eq!(c.pg_ident(), Some(vec!["ops alice postgres".to_owned()]));
    }

    #[test]
    fn legacy_master_start_timeout_is_read() {
        let c = ConfigValue::decode(br#"{"master_start_timeout":0}"#).unwrap();
        assert_eq!(c.primary_start_timeout(), Some(0));
    }

    #[test]
    fn garbage_config_is_an_error_and_odd_fields_read_as_unset() {
        assert!(ConfigValue::decode(b"{nope").is_err());
        assert!(ConfigValue::decode(b"[1]").is_err());
        let c = ConfigValue::decode(br#"{"ttl":"soon","pause":[1]}"#).unwrap();
        assert_eq!(c.ttl(), None);
        assert_eq!(c.pause(), None);
    }
}
