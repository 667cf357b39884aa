//! The cluster as the REST API reads it from etcd (one prefix read per request), and
//! `GET /cluster`'s JSON in the shape of Patroni's `cluster_as_json`.

use outrigger_etcd::Kv;
use outrigger_schema::{
    ClusterKey, ConfigValue, FailoverValue, KeyKind, KeyLayout, MemberValue, StatusValue, SyncValue, decode_leader,
};
use serde_json::{Map, Value, json};

use crate::pg::text::host_port_from_conn_url;

/// The keys the API endpoints need, decoded. Values that do not decode count as absent.
#[derive(Debug, Clone, Default)]
pub struct ClusterRead {
    pub leader: Option<String>,
    /// Sorted by name.
    pub members: Vec<(String, MemberValue)>,
    /// `config` as raw JSON (so that a read-modify-write keeps every field), with its
    /// mod_revision.
    pub config: Option<(Value, i64)>,
    pub failover: Option<(FailoverValue, i64)>,
    pub sync: Option<SyncValue>,
    pub status_optime: Option<u64>,
    pub history: Option<Value>,
    /// `failsafe` as raw JSON (a JSON object; anything else is ignored).
    pub failsafe: Option<Value>,
}

impl ClusterRead {
    pub fn decode(layout: &KeyLayout, kvs: &[Kv]) -> Self {
        let mut c = Self::default();
        for kv in kvs {
            match layout.classify(&kv.key) {
                Some(KeyKind::Member(name)) => {
                    if let Ok(m) = MemberValue::decode(&kv.value) {
                        c.members.push((name.to_owned(), m));
                    }
                }
                Some(KeyKind::Fixed(ClusterKey::Leader)) => {
                    c.leader = decode_leader(&kv.value).ok().filter(|l| !l.is_empty());
                }
                Some(KeyKind::Fixed(ClusterKey::Config)) => {
                    if let Ok(v @ Value::Object(_)) = serde_json::from_slice::<Value>(&kv.value) {
                        c.config = Some((v, kv.mod_revision));
                    }
                }
                Some(KeyKind::Fixed(ClusterKey::Failover)) => {
                    if let Ok(f) = FailoverValue::decode(&kv.value) {
                        c.failover = Some((f, kv.mod_revision));
                    }
                }
                Some(KeyKind::Fixed(ClusterKey::Sync)) => c.sync = SyncValue::decode(&kv.value).ok(),
                Some(KeyKind::Fixed(ClusterKey::Status)) => {
                    c.status_optime = StatusValue::decode(&kv.value).ok().map(|s| s.optime);
                }
                Some(KeyKind::Fixed(ClusterKey::History)) => c.history = serde_json::from_slice(&kv.value).ok(),
                Some(KeyKind::Fixed(ClusterKey::Failsafe)) => {
                    c.failsafe = serde_json::from_slice::<Value>(&kv.value).ok().filter(Value::is_object);
                }
                _ => {}
            }
        }
        c.members.sort_by(|a, b| a.0.cmp(&b.0));
        c
    }

    /// The typed view of `config`, for its flags.
    pub fn config_value(&self) -> Option<ConfigValue> {
        let (v, _) = self.config.as_ref()?;
        serde_json::from_value(v.clone()).ok()
    }

    pub fn paused(&self) -> bool {
        self.config_value().and_then(|c| c.pause()).unwrap_or(false)
    }

    pub fn synchronous_mode(&self) -> bool {
        self.config_value().is_some_and(|c| c.synchronous_mode() != outrigger_schema::SynchronousMode::Off)
    }

    pub fn is_standby_cluster(&self) -> bool {
        self.config_value().is_some_and(|c| c.is_standby_cluster())
    }

    pub fn member(&self, name: &str) -> Option<&MemberValue> {
        self.members.iter().find(|(n, _)| n == name).map(|(_, m)| m)
    }

    /// `name` is listed in `sync` (and sync mode is on).
    pub fn is_sync_standby(&self, name: &str) -> bool {
        self.synchronous_mode()
            && self.sync.as_ref().is_some_and(|s| s.standbys().iter().any(|n| n.eq_ignore_ascii_case(name)))
    }

    /// A pending switchover with a time (what `scheduled_switchover` shows).
    pub fn scheduled_failover(&self) -> Option<&(FailoverValue, i64)> {
        self.failover.as_ref().filter(|(f, _)| f.scheduled_at.is_some())
    }
}

/// Patroni's `format_lsn`: `X/X` of the high and low 32 bits.
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

/// `GET /cluster`'s body.
pub fn cluster_json(c: &ClusterRead, scope: &str) -> Value {
    let standby_cluster = c.is_standby_cluster();
    let sync_role =
        if c.config_value().is_some_and(|v| v.synchronous_mode() == outrigger_schema::SynchronousMode::Quorum) {
            "quorum_standby"
        } else {
            "sync_standby"
        };
    let mut members = Vec::new();
    for (name, m) in &c.members {
        let is_leader = c.leader.as_deref() == Some(name.as_str());
        let role = if is_leader {
            if standby_cluster { "standby_leader" } else { "leader" }
        } else if c.is_sync_standby(name) {
            sync_role
        } else {
            "replica"
        };
        let state = if role != "leader" { m.replication_state.clone().filter(|s| !s.is_empty()) } else { None }
            .unwrap_or_else(|| m.state.clone());
        let mut o = Map::new();
        o.insert("name".into(), json!(name));
        o.insert("role".into(), json!(role));
        o.insert("state".into(), json!(state));
        o.insert("api_url".into(), json!(m.api_url));
        if let Some((host, port)) = host_port_from_conn_url(&m.conn_url) {
            o.insert("host".into(), json!(host));
            o.insert("port".into(), json!(port));
        }
        if let Some(t) = m.timeline {
            o.insert("timeline".into(), json!(t));
        }
        if let Some(p) = m.pending_restart {
            o.insert("pending_restart".into(), json!(p));
        }
        if let Some(r) = &m.pending_restart_reason {
            o.insert("pending_restart_reason".into(), r.clone());
        }
        if let Some(r) = &m.scheduled_restart {
            o.insert("scheduled_restart".into(), r.clone());
        }
        if !m.tags.is_empty() {
            o.insert("tags".into(), Value::Object(m.tags.clone()));
        }
        if !is_leader {
            for (lsn, lsn_key, lag_key) in [
                (m.receive_lsn, "receive_lsn", "receive_lag"),
                (m.replay_lsn, "replay_lsn", "replay_lag"),
                (m.xlog_location, "lsn", "lag"),
            ] {
                match lsn {
                    None => {
                        o.insert(lag_key.into(), json!("unknown"));
                    }
                    Some(l) => {
                        o.insert(lsn_key.into(), json!(format_lsn(l)));
                        let lag = c.status_optime.map_or(0, |top| top.saturating_sub(l));
                        o.insert(lag_key.into(), json!(lag));
                    }
                }
            }
        }
        members.push(Value::Object(o));
    }
    let mut out = Map::new();
    out.insert("members".into(), Value::Array(members));
    if c.paused() {
        out.insert("pause".into(), json!(true));
    }
    if let Some((f, _)) = c.scheduled_failover() {
        let mut s = Map::new();
        s.insert("at".into(), json!(f.scheduled_at));
        if let Some(l) = &f.leader {
            s.insert("from".into(), json!(l));
        }
        if let Some(m) = &f.member {
            s.insert("to".into(), json!(m));
        }
        out.insert("scheduled_switchover".into(), Value::Object(s));
    }
    out.insert("scope".into(), json!(scope));
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, value: &str, rev: i64) -> Kv {
        Kv { key: key.into(), value: value.as_bytes().to_vec(), create_revision: rev, mod_revision: rev, lease: 0 }
    }

    fn member(ip: &str, role: &str, extra: &str) -> String {
        format!(
            r#"{{"conn_url":"postgres://{ip}:5432/postgres","api_url":"http://{ip}:8008/patroni","state":"running","role":"{role}","version":"4.1.4","timeline":2{extra}}}"#
        )
    }

    #[test]
    fn cluster_json_has_patronis_roles_states_and_lags() {
        let l = KeyLayout::new("service", "b").unwrap();
        let kvs = vec![
            kv("/service/b/leader", "n1", 5),
            kv("/service/b/config", r#"{"synchronous_mode":true,"pause":true}"#, 6),
            kv("/service/b/sync", r#"{"leader":"n1","sync_standby":"n2"}"#, 7),
            kv("/service/b/status", r#"{"optime":1000}"#, 8),
            kv("/service/b/failover", r#"{"leader":"n1","member":"n3","scheduled_at":"2030-01-01T00:00:00+00:00"}"#, 9),
            kv("/service/b/members/n1", &member("10.0.0.1", "primary", r#","xlog_location":1000"#), 2),
            kv(
                "/service/b/members/n2",
                &member(
                    "10.0.0.2",
                    "replica",
                    r#","xlog_location":900,"receive_lsn":900,"replay_lsn":800,"replication_state":"streaming","tags":{"zone":"a"}"#,
                ),
                3,
            ),
            kv("/service/b/members/n3", &member("10.0.0.3", "replica", ""), 4),
        ];
        let c = ClusterRead::decode(&l, &kvs);
        let j = cluster_json(&c, "b");
        let m = j["members"].as_array().unwrap();
        assert_eq!(m[0]["name"], "n1");
        assert_eq!(m[0]["role"], "leader");
        assert_eq!(m[0]["state"], "running");
        assert_eq!(m[0]["host"], "10.0.0.1");
        assert_eq!(m[0]["port"], 5432);
        assert!(m[0].get("lag").is_none());
        assert_eq!(m[1]["role"], "sync_standby");
        assert_eq!(m[1]["state"], "streaming");
        assert_eq!(m[1]["lsn"], "0/384");
        assert_eq!(m[1]["lag"], 100);
        assert_eq!(m[1]["replay_lag"], 200);
        assert_eq!(m[1]["tags"]["zone"], "a");
        assert_eq!(m[2]["role"], "replica");
        assert_eq!(m[2]["lag"], "unknown");
        assert_eq!(j["pause"], true);
        assert_eq!(j["scheduled_switchover"]["to"], "n3");
        assert_eq!(j["scheduled_switchover"]["from"], "n1");
        assert_eq!(j["scope"], "b");
    }

    #[test]
    fn lsns_are_formatted_like_patroni() {
        assert_eq!(format_lsn(0x0000_0001_0000_00A0), "1/A0");
        assert_eq!(format_lsn(67_108_960), "0/4000060");
    }
}
