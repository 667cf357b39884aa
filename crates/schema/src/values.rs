//! JSON value types of the cluster keys, exactly as Patroni 4.x writes them.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A value under a cluster key that could not be decoded. Readers log and count it and carry
/// on without that key: garbage in etcd is never fatal.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("value of {key} is not UTF-8")]
    NotUtf8 { key: &'static str },
    #[error("value of {key} is not valid JSON of the expected shape: {source}")]
    Json {
        key: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("value of {key} ({value:?}) {rule}")]
    Invalid { key: &'static str, value: String, rule: &'static str },
}

fn utf8<'a>(key: &'static str, raw: &'a [u8]) -> Result<&'a str, DecodeError> {
    std::str::from_utf8(raw).map_err(|_| DecodeError::NotUtf8 { key })
}

fn json<'a, T: Deserialize<'a>>(key: &'static str, raw: &'a [u8]) -> Result<T, DecodeError> {
    serde_json::from_slice(raw).map_err(|source| DecodeError::Json { key, source })
}

/// The leader key holds the bare member name, not JSON.
pub fn decode_leader(raw: &[u8]) -> Result<String, DecodeError> {
    let name = utf8("leader", raw)?;
    if name.is_empty() || name.contains('/') {
        return Err(DecodeError::Invalid {
            key: "leader",
            value: name.to_owned(),
            rule: "must be a non-empty member name without '/'",
        });
    }
    Ok(name.to_owned())
}

/// `initialize` holds the PostgreSQL system identifier as a decimal string, or `""` while the
/// bootstrap race is running (returned as `None`).
pub fn decode_initialize(raw: &[u8]) -> Result<Option<u64>, DecodeError> {
    let s = utf8("initialize", raw)?;
    if s.is_empty() {
        return Ok(None);
    }
    s.parse().map(Some).map_err(|_| DecodeError::Invalid {
        key: "initialize",
        value: s.to_owned(),
        rule: "must be a decimal system identifier or empty",
    })
}

/// The role a member publishes. Patroni 3.x wrote `master`; both spellings mean primary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberRole {
    #[serde(alias = "master")]
    Primary,
    Replica,
    StandbyLeader,
    Demoted,
    Uninitialized,
    Promoted,
    /// A role a newer Patroni may write; kept so the member is still listed.
    #[serde(untagged)]
    Unknown(String),
}

/// `members/<name>`: one member's published state (Patroni's `touch_member`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberValue {
    pub conn_url: String,
    pub api_url: String,
    pub state: String,
    pub role: MemberRole,
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xlog_location: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receive_lsn: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_lsn: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication_state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<u32>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub tags: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_restart: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_restart_reason: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_restart: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_after_promote: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause: Option<bool>,
    /// Fields this version does not know, kept as they were.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl MemberValue {
    pub fn decode(raw: &[u8]) -> Result<Self, DecodeError> {
        json("members/<name>", raw)
    }

    /// `version` as integers, as Patroni peers parse it (`Member.patroni_version`).
    pub fn version_tuple(&self) -> Option<(u32, u32, u32)> {
        let mut it = self.version.split('.').map(|p| p.parse::<u32>().ok());
        Some((it.next()??, it.next()??, it.next().flatten().unwrap_or(0)))
    }
}

/// `status`: the leader's WAL position and slot positions.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatusValue {
    pub optime: u64,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub slots: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retain_slots: Option<Vec<String>>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl StatusValue {
    pub fn decode(raw: &[u8]) -> Result<Self, DecodeError> {
        json("status", raw)
    }
}

/// `failover`: a planned switchover or failover. `{}` means none (Patroni clears it that way).
/// The candidate is `member` here, `candidate` in the REST API. A legacy `"leader:candidate"`
/// string is also accepted.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FailoverValue {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_at: Option<String>,
}

impl FailoverValue {
    pub fn decode(raw: &[u8]) -> Result<Self, DecodeError> {
        let text = utf8("failover", raw)?;
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        if !text.trim_start().starts_with('{')
            && let Some((leader, member)) = text.split_once(':')
        {
            let opt = |s: &str| (!s.is_empty()).then(|| s.to_owned());
            return Ok(Self { leader: opt(leader), member: opt(member), scheduled_at: None });
        }
        json("failover", raw)
    }

    pub fn is_empty(&self) -> bool {
        self.leader.is_none() && self.member.is_none()
    }
}

/// One row of `history`: `[timeline, lsn, reason, timestamp, new_leader]`. Old Patroni
/// versions wrote only the first three or four elements.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryEntry {
    pub timeline: u32,
    pub lsn: u64,
    pub reason: String,
    pub timestamp: Option<String>,
    pub new_leader: Option<String>,
}

impl HistoryEntry {
    pub fn decode_list(raw: &[u8]) -> Result<Vec<Self>, DecodeError> {
        let rows: Vec<Vec<Value>> = json("history", raw)?;
        rows.into_iter()
            .map(|row| {
                let bad =
                    |rule| DecodeError::Invalid { key: "history", value: Value::Array(row.clone()).to_string(), rule };
                let timeline =
                    row.first().and_then(Value::as_u64).ok_or_else(|| bad("row needs a timeline number first"))?;
                let lsn = row.get(1).and_then(Value::as_u64).ok_or_else(|| bad("row needs an LSN number second"))?;
                let text = |i: usize| row.get(i).and_then(Value::as_str).map(str::to_owned);
                Ok(Self {
                    timeline: u32::try_from(timeline).map_err(|_| bad("timeline must fit in 32 bits"))?,
                    lsn,
                    reason: text(2).unwrap_or_default(),
                    timestamp: text(3),
                    new_leader: text(4),
                })
            })
            .collect()
    }

    pub fn encode_list(rows: &[Self]) -> String {
        let rows: Vec<Value> = rows
            .iter()
            .map(|r| {
                let mut v = vec![Value::from(r.timeline), Value::from(r.lsn), Value::from(r.reason.clone())];
                if let Some(ts) = &r.timestamp {
                    v.push(Value::from(ts.clone()));
                    if let Some(l) = &r.new_leader {
                        v.push(Value::from(l.clone()));
                    }
                }
                Value::Array(v)
            })
            .collect();
        Value::Array(rows).to_string()
    }
}

/// `sync`: the synchronous standby set (4.x adds `quorum`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SyncValue {
    #[serde(default)]
    pub leader: Option<String>,
    #[serde(default)]
    pub sync_standby: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quorum: Option<u32>,
}

impl SyncValue {
    pub fn decode(raw: &[u8]) -> Result<Self, DecodeError> {
        json("sync", raw)
    }

    /// The value Patroni 4 writes: standbys sorted and comma-joined, `null` when none.
    pub fn patroni(leader: &str, standbys: &[String], quorum: u32) -> Self {
        let mut s = standbys.to_vec();
        s.sort();
        s.dedup();
        Self {
            leader: Some(leader.to_owned()),
            sync_standby: (!s.is_empty()).then(|| s.join(",")),
            quorum: Some(quorum),
        }
    }

    /// Compact JSON in Patroni's key order: `{"leader":..,"quorum":..,"sync_standby":..}`.
    pub fn encode(&self) -> String {
        serde_json::json!({"leader": self.leader, "quorum": self.quorum.unwrap_or(0), "sync_standby": self.sync_standby})
            .to_string()
    }

    /// The standbys listed, from the comma-joined string.
    pub fn standbys(&self) -> Vec<&str> {
        self.sync_standby
            .as_deref()
            .map_or_else(Vec::new, |s| s.split(',').map(str::trim).filter(|p| !p.is_empty()).collect())
    }
}

/// `failsafe`: `{"<member>":"<api_url>",...}`, written by the leader while `failsafe_mode` is
/// on: the members a primary cut off from etcd must all reach to stay primary.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct FailsafeValue(pub std::collections::BTreeMap<String, String>);

impl FailsafeValue {
    pub fn decode(raw: &[u8]) -> Result<Self, DecodeError> {
        json("failsafe", raw)
    }

    /// Compact JSON, members sorted.
    pub fn encode(&self) -> String {
        serde_json::to_string(&self.0).unwrap_or_else(|_| "{}".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_written_by_patroni_4_decodes_and_keeps_unknown_fields() {
        let raw = br#"{"conn_url":"postgres://10.0.0.1:5432/postgres","api_url":"http://10.0.0.1:8008/patroni","state":"running","role":"replica","version":"4.1.4","xlog_location":50331968,"receive_lsn":50331968,"replay_lsn":50331968,"replication_state":"streaming","timeline":1,"tags":{"clonefrom":true},"future_field":{"x":1}}"#;
        let m = MemberValue::decode(raw).unwrap();
        assert_eq!(m.role, MemberRole::Replica);
        assert_eq!(m.version_tuple(), Some((4, 1, 4)));
        assert_eq!(m.timeline, Some(1));
        assert_eq!(m.extra.get("future_field"), Some(&serde_json::json!({"x":1})));
        let again: Value = serde_json::to_value(&m).unwrap();
        assert_eq!(again["future_field"], serde_json::json!({"x":1}));
    }

    #[test]
    fn patroni_3_master_role_reads_as_primary() {
        let raw = br#"{"conn_url":"u","api_url":"a","state":"running","role":"master","version":"3.0.2"}"#;
        assert_eq!(MemberValue::decode(raw).unwrap().role, MemberRole::Primary);
    }

    #[test]
    fn unknown_role_is_kept_rather_than_rejected() {
        let raw = br#"{"conn_url":"u","api_url":"a","state":"running","role":"witness","version":"9.0.0"}"#;
        assert_eq!(MemberValue::decode(raw).unwrap().role, MemberRole::Unknown("witness".into()));
    }

    #[test]
    fn garbage_member_json_is_an_error_not_a_panic() {
        assert!(MemberValue::decode(b"{not json").is_err());
        assert!(MemberValue::decode(b"[1,2]").is_err());
        assert!(MemberValue::decode(&[0xff, 0xfe]).is_err());
    }

    #[test]
    fn leader_is_a_bare_name() {
        assert_eq!(decode_leader(b"node1").unwrap(), "node1");
        assert!(decode_leader(b"").is_err());
        assert!(decode_leader(b"a/b").is_err());
    }

    #[test]
    fn initialize_is_a_sysid_or_empty_during_the_race() {
        assert_eq!(decode_initialize(b"7268616322854375442").unwrap(), Some(7268616322854375442));
        assert_eq!(decode_initialize(b"").unwrap(), None);
        assert!(decode_initialize(b"abc").is_err());
    }

    #[test]
    fn failover_accepts_json_empty_object_and_legacy_string() {
        let f = FailoverValue::decode(br#"{"leader":"a","member":"b","scheduled_at":"2026-11-24T10:00:00+00:00"}"#)
            .unwrap();
        assert_eq!(f.member.as_deref(), Some("b"));
        assert!(FailoverValue::decode(b"{}").unwrap().is_empty());
        let legacy = FailoverValue::decode(b"a:b").unwrap();
        assert_eq!((legacy.leader.as_deref(), legacy.member.as_deref()), (Some("a"), Some("b")));
        assert_eq!(serde_json::to_string(&FailoverValue::default()).unwrap(), "{}");
    }

    #[test]
    fn history_round_trips_and_accepts_short_legacy_rows() {
        let raw = br#"[[1,25165984,"no recovery target specified","2026-11-24T10:00:00.000000+00:00","n2"],[2,33554592,"no recovery target specified"]]"#;
        let rows = HistoryEntry::decode_list(raw).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].new_leader.as_deref(), Some("n2"));
        assert_eq!(rows[1].timestamp, None);
        let back = HistoryEntry::encode_list(&rows);
        assert_eq!(HistoryEntry::decode_list(back.as_bytes()).unwrap(), rows);
        assert!(HistoryEntry::decode_list(br#"[["x"]]"#).is_err());
    }

    #[test]
    fn status_and_sync_decode() {
        let s = StatusValue::decode(br#"{"optime":67108960,"slots":{"n2":67108960},"retain_slots":["n2"]}"#).unwrap();
        assert_eq!(s.optime, 67108960);
        let sync = SyncValue::decode(br#"{"leader":"n1","quorum":0,"sync_standby":"n2,n3"}"#).unwrap();
        assert_eq!(sync.standbys(), vec!["n2", "n3"]);
        let none = SyncValue::decode(br#"{"leader":"n1","sync_standby":null}"#).unwrap();
        assert!(none.standbys().is_empty());
    }

    #[test]
    fn failsafe_is_a_map_of_member_to_api_url_and_garbage_is_refused() {
        let v = FailsafeValue::decode(br#"{"n1":"http://10.0.0.1:8008/patroni","n2":"http://10.0.0.2:8008/patroni"}"#)
            .unwrap();
        assert_eq!(v.0.len(), 2);
        assert_eq!(FailsafeValue::decode(v.encode().as_bytes()).unwrap(), v);
        assert!(FailsafeValue::decode(b"[1,2]").is_err());
        assert!(FailsafeValue::decode(br#"{"n1":3}"#).is_err());
    }
}
