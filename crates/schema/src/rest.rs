//! The status JSON of Patroni's REST API (`GET /patroni` and the health endpoints), as
//! `patroni/api.py` writes it and as peers parse it during a leader race
//! (`Ha._MemberStatus.from_api_response`).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{DecodeError, MemberRole};

/// The `xlog` object: `{"location"}` on a primary, the `received`/`replayed` fields on a
/// replica. One struct serves both shapes; absent fields are left out when written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct XlogStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received_location: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replayed_location: Option<u64>,
    /// Present (possibly `null`) on replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replayed_timestamp: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<bool>,
}

/// `patroni`: who answered.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PatroniInfo {
    pub version: String,
    pub scope: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// The status JSON. Fields are optional because Patroni leaves most of them out while
/// PostgreSQL is down.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusJson {
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postmaster_start_time: Option<String>,
    pub role: MemberRole,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_version: Option<u32>,
    /// Patroni writes `xlog`; some versions and forks say `wal`. Both are read.
    #[serde(default, alias = "wal", skip_serializing_if = "Option::is_none")]
    pub xlog: Option<XlogStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication_state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_unlocked: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dcs_last_seen: Option<u64>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub tags: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_system_identifier: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_restart: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watchdog_failed: Option<bool>,
    /// ha-agent's own field (Patroni leaves it out and ignores it): etcd revoked this member's
    /// lease before it could have expired, less than a ttl ago (a mass revocation by a former
    /// raft leader, etcd #15247). A member asking in a leader race waits, as this one does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_revoked_recently: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patroni: Option<PatroniInfo>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl StatusJson {
    pub fn decode(raw: &[u8]) -> Result<Self, DecodeError> {
        serde_json::from_slice(raw).map_err(|source| DecodeError::Json { key: "GET /patroni", source })
    }

    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".to_owned())
    }

    /// Patroni's peer rule: a member is in recovery unless it reports an `xlog.location` or a
    /// primary role (`in_recovery = not (xlog.location or role in {primary, master})`).
    pub fn in_recovery(&self) -> bool {
        let location = self.xlog.as_ref().and_then(|x| x.location).is_some();
        !(location || self.role == MemberRole::Primary)
    }

    /// The WAL position a peer reports: its location on a primary, else the larger of received
    /// and replayed. `None` when the answer has no `xlog`, which Patroni treats as unreachable.
    pub fn wal_position(&self) -> Option<u64> {
        let x = self.xlog.as_ref()?;
        if let Some(l) = x.location {
            return Some(l);
        }
        match (x.received_location, x.replayed_location) {
            (None, None) => Some(0),
            (a, b) => Some(a.unwrap_or(0).max(b.unwrap_or(0))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn primary_status_from_patroni_reads_as_not_in_recovery() {
        let raw = br#"{"state":"running","postmaster_start_time":"2026-11-24 10:00:00.1+00:00","role":"primary","server_version":150018,"xlog":{"location":67108960},"timeline":2,"replication":[{"usename":"replicator"}],"dcs_last_seen":1764000000,"database_system_identifier":"7268616322854375442","patroni":{"version":"4.1.4","scope":"batman","name":"n1"}}"#;
        let s = StatusJson::decode(raw).unwrap();
        assert!(!s.in_recovery());
        assert_eq!(s.wal_position(), Some(67108960));
        assert!(s.extra.contains_key("replication"));
    }

    #[test]
    fn replica_status_position_is_the_larger_of_received_and_replayed() {
        let raw = br#"{"state":"running","role":"replica","xlog":{"received_location":500,"replayed_location":400,"replayed_timestamp":null,"paused":false},"timeline":1,"tags":{"nofailover":true}}"#;
        let s = StatusJson::decode(raw).unwrap();
        assert!(s.in_recovery());
        assert_eq!(s.wal_position(), Some(500));
        assert_eq!(s.tags["nofailover"], Value::Bool(true));
    }

    #[test]
    fn patroni_3_master_role_and_wal_alias_are_understood() {
        let s = StatusJson::decode(br#"{"state":"running","role":"master","wal":{"location":7}}"#).unwrap();
        assert!(!s.in_recovery());
        assert_eq!(s.wal_position(), Some(7));
    }

    #[test]
    fn status_without_xlog_has_no_position() {
        let s = StatusJson::decode(br#"{"state":"stopped","role":"replica"}"#).unwrap();
        assert_eq!(s.wal_position(), None);
    }

    #[test]
    fn written_status_leaves_out_unset_fields() {
        let s = StatusJson {
            state: "running".into(),
            postmaster_start_time: None,
            role: MemberRole::Primary,
            server_version: Some(150018),
            xlog: Some(XlogStatus { location: Some(10), ..XlogStatus::default() }),
            timeline: Some(1),
            replication_state: None,
            cluster_unlocked: Some(false),
            dcs_last_seen: None,
            tags: Map::new(),
            database_system_identifier: None,
            pending_restart: None,
            watchdog_failed: None,
            lease_revoked_recently: None,
            patroni: Some(PatroniInfo { version: "4.1.4".into(), scope: "b".into(), name: Some("n1".into()) }),
            extra: Map::new(),
        };
        assert_eq!(
            s.encode(),
            r#"{"state":"running","role":"primary","server_version":150018,"xlog":{"location":10},"timeline":1,"cluster_unlocked":false,"patroni":{"version":"4.1.4","scope":"b","name":"n1"}}"#
        );
    }
}
