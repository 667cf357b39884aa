//! Keys Outrigger adds under a cluster's scope, beside Patroni's: `outrigger/...`. Patroni
//! reads only the keys it knows by name (and `members/`), so these never change what Patroni
//! or `patronictl` see; `patronictl remove` deletes them with the rest of the scope.
//!
//! | key | written by | lease | rule |
//! |---|---|---|---|
//! | `outrigger/backup/lock` | the wal-shipper taking a scheduled backup | the taker's, renewed while it runs | created only if absent and only if `outrigger/backup/last` is unchanged since the taker read it |
//! | `outrigger/backup/last` | the taker, after the backup's sentinel is stored | none | put only while the taker still holds the lock |
//! | `outrigger/wal-shipper/<member>` | each member's wal-shipper daemon | the daemon's own | plain put, every loop |

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{DecodeError, KeyLayout, LayoutError};

impl KeyLayout {
    /// `outrigger/backup/lock`: held (on a lease) by the one member taking a backup.
    pub fn backup_lock(&self) -> String {
        format!("{}outrigger/backup/lock", self.prefix())
    }

    /// `outrigger/backup/last`: the cluster's newest backup and newest full backup.
    pub fn backup_last(&self) -> String {
        format!("{}outrigger/backup/last", self.prefix())
    }

    /// `outrigger/wal-shipper/`: the prefix of every member's wal-shipper status.
    pub fn wal_shipper_prefix(&self) -> String {
        format!("{}outrigger/wal-shipper/", self.prefix())
    }

    /// `outrigger/wal-shipper/<member>`: one member's archiving and backup status.
    pub fn wal_shipper_member(&self, name: &str) -> Result<String, LayoutError> {
        if name.is_empty() || name.contains('/') {
            return Err(LayoutError::BadMemberName(name.to_owned()));
        }
        Ok(format!("{}{name}", self.wal_shipper_prefix()))
    }
}

/// One backup as the cluster keys describe it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackupRecord {
    /// The backup's name in the bucket (`base_...`).
    pub name: String,
    /// `full` or `delta`.
    pub kind: String,
    /// RFC 3339.
    pub start_time: String,
    /// RFC 3339.
    pub finish_time: String,
    /// PostgreSQL's LSN text (`0/2000028`).
    pub start_lsn: String,
    pub finish_lsn: String,
    pub timeline: u32,
    /// Bytes stored (after compression).
    pub stored_bytes: u64,
    /// Bytes of the tars before compression.
    pub uncompressed_bytes: u64,
    /// The member that took it.
    pub member: String,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `outrigger/backup/last`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LastBackupValue {
    pub last: BackupRecord,
    /// The newest full backup (equal to `last` when that one is full).
    pub last_full: BackupRecord,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl LastBackupValue {
    pub fn decode(raw: &[u8]) -> Result<Self, DecodeError> {
        serde_json::from_slice(raw).map_err(|source| DecodeError::Json { key: "outrigger/backup/last", source })
    }
}

/// `outrigger/backup/lock`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackupLockValue {
    pub member: String,
    /// `full` or `delta`.
    pub kind: String,
    /// RFC 3339, by the taker's clock.
    pub since: String,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl BackupLockValue {
    pub fn decode(raw: &[u8]) -> Result<Self, DecodeError> {
        serde_json::from_slice(raw).map_err(|source| DecodeError::Json { key: "outrigger/backup/lock", source })
    }
}

/// `outrigger/wal-shipper/<member>`: what one member's daemon sees of its own archiving.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WalShipperStatus {
    /// `primary` or `replica`, as PostgreSQL reports it (`pg_is_in_recovery`); absent while
    /// PostgreSQL does not answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// `pg_stat_archiver.last_archived_wal`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_archived_wal: Option<String>,
    /// `pg_stat_archiver.last_archived_time`, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_archived_time: Option<String>,
    /// `pg_stat_archiver.failed_count`.
    #[serde(default)]
    pub archive_failed_count: u64,
    /// `.ready` segments not yet uploaded.
    #[serde(default)]
    pub backlog_segments: u64,
    /// Age of the oldest of them, in seconds (0 when none).
    #[serde(default)]
    pub archive_lag_seconds: f64,
    /// Scheduled backups this member tried and failed since its last success.
    #[serde(default)]
    pub backup_failures: u32,
    /// Whether this member may take backups (`[cluster] take_backups`).
    #[serde(default = "yes")]
    pub takes_backups: bool,
    pub version: String,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn yes() -> bool {
    true
}

impl WalShipperStatus {
    pub fn decode(raw: &[u8]) -> Result<Self, DecodeError> {
        serde_json::from_slice(raw)
            .map_err(|source| DecodeError::Json { key: "outrigger/wal-shipper/<member>", source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outrigger_keys_live_under_the_scope_where_patroni_ignores_them() {
        let l = KeyLayout::new("service", "batman").unwrap();
        assert_eq!(l.backup_lock(), "/service/batman/outrigger/backup/lock");
        assert_eq!(l.backup_last(), "/service/batman/outrigger/backup/last");
        assert_eq!(l.wal_shipper_member("n1").unwrap(), "/service/batman/outrigger/wal-shipper/n1");
        assert!(l.wal_shipper_member("a/b").is_err());
        assert_eq!(l.classify(&l.backup_lock()), Some(crate::KeyKind::Other("outrigger/backup/lock")));
    }

    #[test]
    fn status_and_last_backup_round_trip_and_keep_unknown_fields() {
        let raw = br#"{"role":"primary","backlog_segments":2,"archive_lag_seconds":1.5,"version":"0.1.0","future":1}"#;
        let s = WalShipperStatus::decode(raw).unwrap();
        assert_eq!(s.backlog_segments, 2);
        assert!(s.takes_backups);
        assert_eq!(s.extra.get("future"), Some(&Value::from(1)));
        let back = WalShipperStatus::decode(&serde_json::to_vec(&s).unwrap()).unwrap();
        assert_eq!(back, s);
        assert!(LastBackupValue::decode(b"{\"last\":1}").is_err());
    }
}
