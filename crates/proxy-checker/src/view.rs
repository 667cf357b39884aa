//! What proxy-checker has observed: the cluster's keys in etcd and the local PostgreSQL.
//!
//! Both views are plain data, updated by the I/O tasks and read by every check. Each carries
//! the instants that make staleness measurable: a verdict never trusts a value without asking
//! how old it is. Applying etcd keys to the view is pure and lives here, with its tests.

use std::time::Instant;

use outrigger_schema::{
    ClusterKey, ConfigValue, DecodeError, KeyKind, KeyLayout, MemberRole, MemberValue, StatusValue, SyncValue,
    SynchronousMode, decode_leader,
};
use serde_json::{Map, Value};

/// The cluster as read from etcd.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EtcdView {
    /// A full read of the cluster prefix has been applied and the watch that keeps the view
    /// current has not broken since. Cleared the moment the watch breaks: changes may then be
    /// missing until the next full read.
    pub synced: bool,
    /// When the last linearizable read that confirmed the leader key was *sent*. The value read
    /// was true at some point after this instant, so measuring age from here never flatters.
    pub confirmed_at: Option<Instant>,
    /// When the etcd task last tried a read (success or not): proof that it is not stuck.
    pub attempted_at: Option<Instant>,
    /// The leader key's value: the member holding the leader lock.
    pub leader: Option<String>,
    /// The etcd revision the `leader` field is known to be true at. Reads and watch events
    /// older than this are not applied, so a slow read cannot undo a newer watch event.
    pub leader_revision: i64,
    /// `status.optime`: the leader's WAL position as it last published it.
    pub status_optime: Option<u64>,
    /// The legacy `optime/leader` key, read when `status` is absent.
    pub legacy_optime: Option<u64>,
    pub sync: Option<SyncState>,
    /// This node's own `members/<name>` key.
    pub me: Option<MemberInfo>,
    pub cluster: ClusterSettings,
}

/// `sync`: who the synchronous (or quorum) standbys are, and for which leader.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncState {
    pub leader: Option<String>,
    pub standbys: Vec<String>,
}

/// The parts of this node's member key that checks use.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberInfo {
    pub role: MemberRole,
    pub tags: Map<String, Value>,
}

/// The parts of `config` that checks use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    pub standby_cluster: bool,
    pub synchronous_mode: SynchronousMode,
    /// Bytes; `/readiness` uses it as the default `?lag=`.
    pub maximum_lag_on_failover: Option<u64>,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        Self { standby_cluster: false, synchronous_mode: SynchronousMode::Off, maximum_lag_on_failover: None }
    }
}

/// A key value that could not be decoded. The key then counts as absent (fail closed), and
/// the I/O task logs and counts the problem.
#[derive(Debug)]
pub struct BadValue {
    pub key: String,
    pub error: DecodeError,
}

impl EtcdView {
    /// The leader's WAL position from `status` (or the legacy `optime/leader` key).
    pub fn leader_optime(&self) -> Option<u64> {
        self.status_optime.or(self.legacy_optime)
    }

    /// Replaces everything with a full read of the cluster prefix at `revision`, sent at
    /// `sent_at`. Returns the values that could not be decoded.
    pub fn apply_snapshot<'a>(
        &mut self,
        layout: &KeyLayout,
        me: &str,
        kvs: impl IntoIterator<Item = (&'a str, &'a [u8])>,
        revision: i64,
        sent_at: Instant,
    ) -> Vec<BadValue> {
        let attempted_at = self.attempted_at;
        *self = EtcdView { attempted_at, ..EtcdView::default() };
        let bad = kvs.into_iter().filter_map(|(key, value)| self.set(layout, me, key, Some(value)).err()).collect();
        self.leader_revision = revision;
        self.confirmed_at = Some(sent_at);
        self.synced = true;
        bad
    }

    /// Applies one watched change (`value` None: deleted or expired) made at `mod_revision`.
    pub fn apply_change(
        &mut self,
        layout: &KeyLayout,
        me: &str,
        key: &str,
        value: Option<&[u8]>,
        mod_revision: i64,
    ) -> Result<(), BadValue> {
        if layout.classify(key) == Some(KeyKind::Fixed(ClusterKey::Leader)) {
            if mod_revision <= self.leader_revision {
                return Ok(());
            }
            self.leader_revision = mod_revision;
        }
        self.set(layout, me, key, value)
    }

    /// Applies a linearizable read of the leader key, made at store revision `revision` and
    /// sent at `sent_at`: the confirmation that makes the view fresh.
    pub fn apply_leader_read(&mut self, value: Option<&[u8]>, revision: i64, sent_at: Instant) -> Result<(), BadValue> {
        // The read confirms the view as of `sent_at` even when the watch already delivered a
        // newer leader: that one is newer still.
        self.confirmed_at = Some(self.confirmed_at.map_or(sent_at, |t| t.max(sent_at)));
        if revision < self.leader_revision {
            return Ok(());
        }
        self.leader_revision = revision;
        self.leader = None;
        match value.map(decode_leader).transpose() {
            Ok(v) => {
                self.leader = v;
                Ok(())
            }
            Err(error) => Err(BadValue { key: "leader".to_owned(), error }),
        }
    }

    /// The watch broke: changes may be missed until the next full read.
    pub fn watch_broken(&mut self) {
        self.synced = false;
    }

    fn set(&mut self, layout: &KeyLayout, me: &str, key: &str, value: Option<&[u8]>) -> Result<(), BadValue> {
        let bad = |error| BadValue { key: key.to_owned(), error };
        match layout.classify(key) {
            Some(KeyKind::Fixed(ClusterKey::Leader)) => {
                // Cleared first: an undecodable leader is no leader (fail closed).
                self.leader = None;
                self.leader = value.map(decode_leader).transpose().map_err(bad)?;
            }
            Some(KeyKind::Fixed(ClusterKey::Status)) => {
                self.status_optime = None;
                self.status_optime = value.map(StatusValue::decode).transpose().map_err(bad)?.map(|s| s.optime);
            }
            Some(KeyKind::Fixed(ClusterKey::LegacyLeaderOptime)) => {
                self.legacy_optime = None;
                self.legacy_optime = value
                    .map(|v| {
                        std::str::from_utf8(v).ok().and_then(|s| s.trim().parse::<u64>().ok()).ok_or_else(|| {
                            DecodeError::Invalid {
                                key: "optime/leader",
                                value: String::from_utf8_lossy(v).into_owned(),
                                rule: "must be a decimal WAL position",
                            }
                        })
                    })
                    .transpose()
                    .map_err(bad)?;
            }
            Some(KeyKind::Fixed(ClusterKey::Sync)) => {
                self.sync = None;
                self.sync = value.map(SyncValue::decode).transpose().map_err(bad)?.map(|s| SyncState {
                    leader: s.leader.clone(),
                    standbys: s.standbys().into_iter().map(str::to_owned).collect(),
                });
            }
            Some(KeyKind::Fixed(ClusterKey::Config)) => {
                self.cluster = ClusterSettings::default();
                if let Some(c) = value.map(ConfigValue::decode).transpose().map_err(bad)? {
                    self.cluster = ClusterSettings {
                        standby_cluster: c.is_standby_cluster(),
                        synchronous_mode: c.synchronous_mode(),
                        maximum_lag_on_failover: c.maximum_lag_on_failover().and_then(|v| u64::try_from(v).ok()),
                    };
                }
            }
            Some(KeyKind::Member(name)) if name == me => {
                self.me = None;
                self.me = value
                    .map(MemberValue::decode)
                    .transpose()
                    .map_err(bad)?
                    .map(|m| MemberInfo { role: m.role, tags: m.tags });
            }
            _ => {}
        }
        Ok(())
    }
}

/// The local PostgreSQL as last polled.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PgView {
    /// When the poll task last tried (success or not): proof that it is not stuck.
    pub attempted_at: Option<Instant>,
    pub last: PgPoll,
}

/// The outcome of the latest poll.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum PgPoll {
    #[default]
    Never,
    /// Answered; `at` is when the query was sent.
    Up { at: Instant, sample: PgSample },
    /// Did not answer: PostgreSQL is down *now*, not merely unconfirmed, so checks turn 503 at
    /// once instead of waiting for the sample to age out.
    Down { at: Instant, error: PgFailure },
}

/// What one poll of PostgreSQL returned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PgSample {
    pub in_recovery: bool,
    /// `pg_current_wal_flush_lsn()` on a primary.
    pub flush_lsn: Option<u64>,
    pub receive_lsn: Option<u64>,
    pub replay_lsn: Option<u64>,
    pub replay_paused: bool,
    /// `pg_stat_wal_receiver.status` (`streaming`, `catchup`, ...), when a receiver runs.
    pub receiver_status: Option<String>,
    /// `pg_stat_wal_receiver.latest_end_lsn`: the primary's WAL end as last reported to us.
    pub latest_end_lsn: Option<u64>,
}

impl PgSample {
    /// Patroni's `replication_state` of a replica.
    pub fn replication_state(&self) -> Option<&'static str> {
        if !self.in_recovery {
            return None;
        }
        Some(if self.receiver_status.as_deref() == Some("streaming") { "streaming" } else { "in archive recovery" })
    }
}

/// Why a poll failed, as a closed set (metric label and reason text).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgFailure {
    Connect,
    Query,
    Timeout,
}

impl PgFailure {
    pub const ALL: [PgFailure; 3] = [PgFailure::Connect, PgFailure::Query, PgFailure::Timeout];

    pub fn as_str(self) -> &'static str {
        match self {
            PgFailure::Connect => "connect",
            PgFailure::Query => "query",
            PgFailure::Timeout => "timeout",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn layout() -> KeyLayout {
        KeyLayout::new("service", "batman").unwrap()
    }

    const MEMBER: &str = r#"{"conn_url":"postgres://10.0.0.2:5432/postgres","api_url":"http://10.0.0.2:8008/patroni","state":"running","role":"replica","version":"4.1.4","tags":{"noloadbalance":true}}"#;

    #[test]
    fn snapshot_fills_every_field_checks_use_and_ignores_other_members() {
        let t0 = Instant::now();
        let mut v = EtcdView::default();
        let bad = v.apply_snapshot(
            &layout(),
            "n2",
            [
                ("/service/batman/leader", b"n1".as_slice()),
                ("/service/batman/status", br#"{"optime":5000}"#.as_slice()),
                ("/service/batman/sync", br#"{"leader":"n1","sync_standby":"n2,n3"}"#.as_slice()),
                ("/service/batman/config", br#"{"maximum_lag_on_failover":1024,"synchronous_mode":true}"#.as_slice()),
                ("/service/batman/members/n2", MEMBER.as_bytes()),
                ("/service/batman/members/n3", b"garbage of another member".as_slice()),
                ("/service/batman/history", b"[]".as_slice()),
            ],
            42,
            t0,
        );
        assert!(bad.is_empty(), "{bad:?}");
        assert!(v.synced);
        assert_eq!(v.confirmed_at, Some(t0));
        assert_eq!(v.leader.as_deref(), Some("n1"));
        assert_eq!(v.leader_revision, 42);
        assert_eq!(v.leader_optime(), Some(5000));
        assert_eq!(v.sync.as_ref().unwrap().standbys, vec!["n2", "n3"]);
        assert_eq!(v.cluster.synchronous_mode, SynchronousMode::On);
        assert_eq!(v.cluster.maximum_lag_on_failover, Some(1024));
        assert_eq!(v.me.as_ref().unwrap().tags["noloadbalance"], Value::Bool(true));
    }

    #[test]
    fn a_new_snapshot_forgets_keys_that_are_gone() {
        let t0 = Instant::now();
        let mut v = EtcdView::default();
        v.apply_snapshot(&layout(), "n2", [("/service/batman/leader", b"n1".as_slice())], 1, t0);
        v.apply_snapshot(&layout(), "n2", [], 2, t0);
        assert_eq!(v.leader, None);
    }

    #[test]
    fn watched_leader_changes_apply_in_revision_order_only() {
        let t0 = Instant::now();
        let mut v = EtcdView::default();
        v.apply_snapshot(&layout(), "n2", [("/service/batman/leader", b"n1".as_slice())], 10, t0);
        v.apply_change(&layout(), "n2", "/service/batman/leader", Some(b"n2"), 11).unwrap();
        assert_eq!(v.leader.as_deref(), Some("n2"));
        // A delete older than what we know is ignored.
        v.apply_change(&layout(), "n2", "/service/batman/leader", None, 9).unwrap();
        assert_eq!(v.leader.as_deref(), Some("n2"));
        v.apply_change(&layout(), "n2", "/service/batman/leader", None, 12).unwrap();
        assert_eq!(v.leader, None);
    }

    #[test]
    fn a_slow_leader_read_does_not_undo_a_newer_watch_event_but_still_confirms() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_millis(300);
        let mut v = EtcdView::default();
        v.apply_snapshot(&layout(), "n2", [("/service/batman/leader", b"n1".as_slice())], 10, t0);
        v.apply_change(&layout(), "n2", "/service/batman/leader", Some(b"n3"), 20).unwrap();
        v.apply_leader_read(Some(b"n1"), 15, t1).unwrap();
        assert_eq!(v.leader.as_deref(), Some("n3"));
        assert_eq!(v.confirmed_at, Some(t1));
        v.apply_leader_read(None, 25, t1).unwrap();
        assert_eq!(v.leader, None);
    }

    #[test]
    fn undecodable_values_count_as_absent() {
        let t0 = Instant::now();
        let mut v = EtcdView::default();
        let bad = v.apply_snapshot(
            &layout(),
            "n2",
            [
                ("/service/batman/leader", b"a/b".as_slice()),
                ("/service/batman/status", b"{".as_slice()),
                ("/service/batman/members/n2", b"[]".as_slice()),
            ],
            5,
            t0,
        );
        assert_eq!(bad.len(), 3);
        assert_eq!(v.leader, None);
        assert_eq!(v.leader_optime(), None);
        assert_eq!(v.me, None);
        // A bad value arriving later also clears what was known.
        v.apply_change(&layout(), "n2", "/service/batman/leader", Some(b"n1"), 6).unwrap();
        assert!(v.apply_change(&layout(), "n2", "/service/batman/leader", Some(b""), 7).is_err());
        assert_eq!(v.leader, None);
    }

    #[test]
    fn legacy_optime_is_a_fallback_for_status() {
        let mut v = EtcdView::default();
        v.apply_change(&layout(), "n2", "/service/batman/optime/leader", Some(b"777"), 1).unwrap();
        assert_eq!(v.leader_optime(), Some(777));
        v.apply_change(&layout(), "n2", "/service/batman/status", Some(br#"{"optime":900}"#), 2).unwrap();
        assert_eq!(v.leader_optime(), Some(900));
    }

    #[test]
    fn broken_watch_unsyncs_the_view() {
        let mut v = EtcdView::default();
        v.apply_snapshot(&layout(), "n2", [], 1, Instant::now());
        v.watch_broken();
        assert!(!v.synced);
    }

    #[test]
    fn replication_state_follows_the_wal_receiver() {
        let streaming =
            PgSample { in_recovery: true, receiver_status: Some("streaming".into()), ..PgSample::default() };
        assert_eq!(streaming.replication_state(), Some("streaming"));
        let archive = PgSample { in_recovery: true, ..PgSample::default() };
        assert_eq!(archive.replication_state(), Some("in archive recovery"));
        assert_eq!(PgSample::default().replication_state(), None);
    }
}
