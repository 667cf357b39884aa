//! The cluster as read from etcd, decoded from Patroni's wire types into the core's own types.
//!
//! Decoding never fails as a whole: a key whose value is garbage is left out of the view and
//! reported as a [`KeyProblem`], which the shell logs once and counts. A member with garbage
//! JSON is simply not listed; garbage in `config` leaves [`ClusterView::config`] as
//! [`ConfigState::Garbage`], and the shell keeps using the last good config.

use std::time::Duration;

use outrigger_etcd::Kv;
use outrigger_schema::{
    ClusterKey, ConfigValue, FailoverValue, FailsafeValue, HistoryEntry, KeyKind, KeyLayout, MemberRole, MemberValue,
    StatusValue, SyncValue, SynchronousMode, decode_initialize, decode_leader,
};

use super::sync::{SyncKey, SyncMode, SyncSettings};
use serde_json::{Map, Value};

/// The `initialize` key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Initialize {
    Absent,
    /// `""`: someone won the bootstrap race and is running initdb.
    Racing,
    Sysid(u64),
}

/// The leader key: whose it is and on which lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderKey {
    pub name: String,
    pub lease: i64,
    pub mod_revision: i64,
}

/// Member tags that change HA behaviour (Patroni's `tags.py`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tags {
    pub nofailover: bool,
    /// Higher wins a race between members at the same WAL position; `<= 0` means nofailover.
    pub failover_priority: i64,
    /// Preferred source for new replicas' base backups.
    pub clonefrom: bool,
    pub noloadbalance: bool,
    pub nosync: bool,
    /// Higher is preferred as a synchronous standby; `<= 0` means nosync (Patroni 3.3+).
    pub sync_priority: i64,
    /// Stream from this member instead of the leader (cascading replication), when it can
    /// serve (`core::cascade`).
    pub replicatefrom: Option<String>,
    /// Never stream: WAL comes only from `restore_command` (Patroni 4's `nostream`).
    pub nostream: bool,
    /// Tags of the user's own (any name Patroni does not use), published as they are.
    pub custom: Map<String, Value>,
}

impl Default for Tags {
    fn default() -> Self {
        Self {
            nofailover: false,
            failover_priority: 1,
            clonefrom: false,
            noloadbalance: false,
            nosync: false,
            sync_priority: 1,
            replicatefrom: None,
            nostream: false,
            custom: Map::new(),
        }
    }
}

fn truthy(v: Option<&Value>) -> bool {
    match v {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => matches!(s.to_ascii_lowercase().as_str(), "true" | "on" | "yes" | "1"),
        Some(Value::Number(n)) => n.as_i64().is_some_and(|i| i != 0),
        _ => false,
    }
}

impl Tags {
    /// Whether this member may ever become the leader automatically.
    pub fn can_failover(&self) -> bool {
        !self.nofailover && self.failover_priority > 0
    }

    /// Whether this member may be a synchronous standby.
    pub fn allows_sync(&self) -> bool {
        !self.nosync && self.sync_priority > 0
    }

    /// Reads tags as Patroni writes them into member keys and status JSON. Unknown tags are
    /// ignored here (they still round-trip in the wire types).
    pub fn from_json(tags: &Map<String, Value>) -> Self {
        let d = Tags::default();
        let int = |k: &str, default: i64| match tags.get(k) {
            Some(Value::Number(n)) => n.as_i64().unwrap_or(default),
            Some(Value::String(s)) => s.trim().parse().unwrap_or(default),
            _ => default,
        };
        Self {
            nofailover: truthy(tags.get("nofailover")),
            failover_priority: int("failover_priority", d.failover_priority),
            clonefrom: truthy(tags.get("clonefrom")),
            noloadbalance: truthy(tags.get("noloadbalance")),
            nosync: truthy(tags.get("nosync")),
            sync_priority: int("sync_priority", d.sync_priority),
            replicatefrom: match tags.get("replicatefrom") {
                Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
                _ => None,
            },
            nostream: truthy(tags.get("nostream")),
            custom: Map::new(),
        }
    }

    /// Tags as Patroni publishes them: only truthy built-in tags, except that `nofailover`
    /// is kept when `failover_priority` is set, and `nosync` when `sync_priority` is (§1.2).
    pub fn to_json(&self) -> Map<String, Value> {
        let d = Tags::default();
        let mut m = Map::new();
        let priority_set = self.failover_priority != d.failover_priority;
        if self.nofailover || priority_set {
            m.insert("nofailover".into(), Value::Bool(self.nofailover));
        }
        if priority_set {
            m.insert("failover_priority".into(), Value::from(self.failover_priority));
        }
        for (k, v) in [("clonefrom", self.clonefrom), ("noloadbalance", self.noloadbalance)] {
            if v {
                m.insert(k.into(), Value::Bool(true));
            }
        }
        let sync_priority_set = self.sync_priority != d.sync_priority;
        if self.nosync || sync_priority_set {
            m.insert("nosync".into(), Value::Bool(self.nosync));
        }
        if sync_priority_set {
            m.insert("sync_priority".into(), Value::from(self.sync_priority));
        }
        if let Some(r) = &self.replicatefrom {
            m.insert("replicatefrom".into(), Value::String(r.clone()));
        }
        if self.nostream {
            m.insert("nostream".into(), Value::Bool(true));
        }
        for (k, v) in &self.custom {
            m.entry(k.clone()).or_insert_with(|| v.clone());
        }
        m
    }
}

/// A member's role as published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Primary,
    Replica,
    Other,
}

/// One `members/<name>` key, decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub name: String,
    pub conn_url: String,
    pub api_url: String,
    pub role: Role,
    /// `state == "running"`.
    pub running: bool,
    /// `xlog_location`: flush LSN on a primary, max(receive, replay) on a replica.
    pub lsn: Option<u64>,
    pub timeline: Option<u32>,
    pub tags: Tags,
    pub lease: i64,
}

/// A timeline switch from `history`: `timeline` ended at `lsn` (the switch point), and
/// `leader` (when recorded) took over on the next timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimelineSwitch {
    pub timeline: u32,
    pub lsn: u64,
    pub leader: Option<String>,
}

/// A planned switchover or failover from the `failover` key (`{}` reads as none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailoverRequest {
    /// The leader that should step down; `None` means "whoever leads".
    pub leader: Option<String>,
    /// The member that should take over; `None` means "the best one".
    pub candidate: Option<String>,
    pub scheduled_at: Option<String>,
    pub mod_revision: i64,
}

/// The cluster's dynamic settings that the core uses, from `config` with Patroni's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct DynConfig {
    pub maximum_lag_on_failover: u64,
    pub check_timeline: bool,
    pub primary_start_timeout: Duration,
    /// How long the leader keeps a departed member's slot (`member_slots_ttl`).
    pub member_slots_ttl: Duration,
    pub use_pg_rewind: Option<bool>,
    /// `postgresql.parameters`, applied to every member.
    pub parameters: Vec<(String, String)>,
    /// `pause`: maintenance mode (Patroni's `docs/pause.rst`). No automatic start, stop,
    /// promote or demote; see `decide.rs` for what still happens.
    pub pause: bool,
    /// Parameters from `postgresql.parameters` that are not applied, with why.
    pub refused: Vec<(String, &'static str)>,
    /// `synchronous_mode` and its companions.
    pub sync: SyncSettings,
    /// `failsafe_mode`: a primary that cannot reach etcd stays primary while every member in
    /// `/failsafe` accepts its `POST /failsafe`.
    pub failsafe_mode: bool,
    /// `ttl`, `loop_wait` and `retry_timeout` as the key has them (see [`super::timing`]).
    pub timings: super::timing::Asked,
    /// `postgresql.pg_hba`: every member's `pg_hba.conf` unless its own file sets one.
    pub pg_hba: Option<Vec<String>>,
    /// `postgresql.pg_ident`, likewise.
    pub pg_ident: Option<Vec<String>>,
    /// `slots`: the permanent replication slots by name (`core::slots`).
    pub slots: Vec<(String, outrigger_schema::PermanentSlot)>,
    /// `postgresql.use_slots` (default true): the leader keeps a physical slot per member and
    /// replicas stream through theirs.
    pub use_slots: bool,
    /// `standby_cluster`: this cluster follows a remote primary (or its archive); its leader
    /// is a standby leader and nobody promotes (`decide::standby_leader`).
    pub standby_cluster: Option<outrigger_schema::StandbyCluster>,
}

/// Why a PostgreSQL parameter from a config (the cluster's `config` key, or the agent's file)
/// is not applied, if it is not: the agent sets it itself (a replica's upstream, the
/// addresses and paths it connects to), or the name is not a parameter name at all (it would
/// be written into postgresql.conf as is).
pub fn refused_parameter(name: &str) -> Option<&'static str> {
    const MANAGED: [&str; 15] = [
        "listen_addresses",
        "port",
        "unix_socket_directories",
        "hot_standby",
        "primary_conninfo",
        "primary_slot_name",
        "recovery_target_timeline",
        "data_directory",
        "config_file",
        "hba_file",
        "ident_file",
        "external_pid_file",
        "include",
        "include_dir",
        "include_if_exists",
    ];
    let valid = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        && name.len() <= 63;
    if !valid {
        Some("not a parameter name (letters, digits, _ and . only)")
    } else if MANAGED.contains(&name.to_ascii_lowercase().as_str()) {
        Some("managed by ha-agent (its address, port, paths and a replica's upstream)")
    } else {
        None
    }
}

impl Default for DynConfig {
    fn default() -> Self {
        Self {
            maximum_lag_on_failover: 1_048_576,
            check_timeline: false,
            primary_start_timeout: Duration::from_secs(300),
            member_slots_ttl: Duration::from_secs(1800),
            use_pg_rewind: None,
            parameters: Vec::new(),
            pause: false,
            refused: Vec::new(),
            sync: SyncSettings::default(),
            failsafe_mode: false,
            timings: super::timing::Asked::default(),
            pg_hba: None,
            pg_ident: None,
            slots: Vec::new(),
            use_slots: true,
            standby_cluster: None,
        }
    }
}

impl DynConfig {
    pub fn from_value(v: &ConfigValue) -> Self {
        let d = DynConfig::default();
        let (mut parameters, mut refused) = (Vec::new(), Vec::new());
        for (k, val) in v.parameters() {
            match refused_parameter(&k) {
                Some(why) => refused.push((k, why)),
                None => parameters.push((k, val)),
            }
        }
        parameters.sort();
        refused.sort();
        let standby_cluster = v.standby_cluster();
        Self {
            maximum_lag_on_failover: v
                .maximum_lag_on_failover()
                .and_then(|l| u64::try_from(l).ok())
                .unwrap_or(d.maximum_lag_on_failover),
            check_timeline: v.check_timeline().unwrap_or(d.check_timeline),
            primary_start_timeout: v
                .primary_start_timeout()
                .and_then(|s| u64::try_from(s).ok())
                .map_or(d.primary_start_timeout, Duration::from_secs),
            member_slots_ttl: v
                .member_slots_ttl()
                .and_then(|s| u64::try_from(s).ok())
                .map_or(d.member_slots_ttl, Duration::from_secs),
            use_pg_rewind: v.use_pg_rewind(),
            parameters,
            pause: v.pause().unwrap_or(false),
            refused,
            sync: SyncSettings {
                // A standby cluster takes no writes: no synchronous replication (as Patroni).
                mode: match v.synchronous_mode() {
                    _ if standby_cluster.is_some() => SyncMode::Off,
                    SynchronousMode::Off => SyncMode::Off,
                    SynchronousMode::On => SyncMode::On,
                    SynchronousMode::Quorum => SyncMode::Quorum,
                },
                strict: v.synchronous_mode_strict().unwrap_or(false),
                node_count: v
                    .synchronous_node_count()
                    .and_then(|n| u32::try_from(n).ok())
                    .filter(|n| *n >= 1)
                    .unwrap_or(1),
                max_lag: v.maximum_lag_on_syncnode().and_then(|l| u64::try_from(l).ok()).filter(|l| *l > 0),
            },
            failsafe_mode: v.failsafe_mode().unwrap_or(false),
            timings: super::timing::Asked { ttl: v.ttl(), loop_wait: v.loop_wait(), retry_timeout: v.retry_timeout() },
            pg_hba: v.pg_hba(),
            pg_ident: v.pg_ident(),
            slots: v.permanent_slots(),
            use_slots: v.use_slots().unwrap_or(true),
            standby_cluster,
        }
    }
}

/// What the `config` key held.
#[derive(Debug, Clone, PartialEq)]
pub enum ConfigState {
    Absent,
    /// Boxed: the config is large and most views are compared and cloned whole.
    Valid(Box<DynConfig>),
    /// Not decodable: use the last good config (or the defaults).
    Garbage,
}

/// A key whose value could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyProblem {
    pub key: String,
    pub mod_revision: i64,
    pub error: String,
}

/// Everything the core knows about the cluster from one consistent etcd read.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterView {
    pub revision: i64,
    pub initialize: Initialize,
    pub config: ConfigState,
    pub leader: Option<LeaderKey>,
    /// Sorted by name.
    pub members: Vec<Member>,
    /// The leader's last published WAL position (`status.optime`).
    pub status_optime: Option<u64>,
    /// The leader's slots' positions as it last published them (`status.slots`).
    pub status_slots: Vec<(String, u64)>,
    pub failover: Option<FailoverRequest>,
    /// Sorted by timeline.
    pub history: Vec<TimelineSwitch>,
    /// The `sync` key (synchronous replication).
    pub sync: Option<SyncKey>,
    /// The `failsafe` key: member name to REST API URL (`None`: absent or garbage).
    pub failsafe: Option<Vec<(String, String)>>,
}

impl ClusterView {
    /// A cluster nobody has touched yet.
    pub fn empty() -> Self {
        Self {
            revision: 0,
            initialize: Initialize::Absent,
            config: ConfigState::Absent,
            leader: None,
            members: Vec::new(),
            status_optime: None,
            status_slots: Vec::new(),
            failover: None,
            history: Vec::new(),
            sync: None,
            failsafe: None,
        }
    }

    pub fn member(&self, name: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.name == name)
    }

    /// Another agent writes the member key of `me`: on a lease that is not ours, with another
    /// address. Two agents with one name would each take the other's leader key for their own,
    /// so the agent that sees this stops (and fences its PostgreSQL on the way out).
    pub fn impostor(&self, me: &str, my_lease: Option<i64>, api_url: &str, conn_url: &str) -> Option<&Member> {
        self.member(me).filter(|m| my_lease != Some(m.lease) && (m.api_url != api_url || m.conn_url != conn_url))
    }

    /// The newest timeline anyone is known to have reached: one past the last switch in
    /// `history`, or a higher timeline a member publishes. A member below it must not lead:
    /// its promotion would reuse a timeline id that already exists elsewhere.
    pub fn cluster_timeline(&self) -> Option<u32> {
        self.cluster_timeline_for("", 0)
    }

    /// [`Self::cluster_timeline`] as seen by member `me` on timeline `my_timeline`: a switch
    /// *from our own timeline* recorded by us is our own promotion, announced before it ran
    /// (see `run::promote`). If we are still on that timeline the promotion did not happen,
    /// and the row must not keep us from trying again. Everyone else counts it.
    pub fn cluster_timeline_for(&self, me: &str, my_timeline: u32) -> Option<u32> {
        let from_history = self
            .history
            .iter()
            .filter(|h| !(h.timeline == my_timeline && h.leader.as_deref() == Some(me)))
            .map(|h| h.timeline.saturating_add(1))
            .max();
        let from_members = self.members.iter().filter(|m| m.name != me).filter_map(|m| m.timeline).max();
        from_history.max(from_members)
    }

    /// Decodes one prefix read. Keys outside `layout` are ignored; garbage is reported.
    pub fn decode(layout: &KeyLayout, revision: i64, kvs: &[Kv]) -> (Self, Vec<KeyProblem>) {
        let mut view = Self { revision, ..Self::empty() };
        let mut problems = Vec::new();
        let mut problem = |kv: &Kv, e: &dyn std::fmt::Display| {
            problems.push(KeyProblem { key: kv.key.clone(), mod_revision: kv.mod_revision, error: e.to_string() });
        };
        for kv in kvs {
            match layout.classify(&kv.key) {
                Some(KeyKind::Fixed(ClusterKey::Leader)) => match decode_leader(&kv.value) {
                    Ok(name) => view.leader = Some(LeaderKey { name, lease: kv.lease, mod_revision: kv.mod_revision }),
                    Err(e) => problem(kv, &e),
                },
                Some(KeyKind::Fixed(ClusterKey::Initialize)) => match decode_initialize(&kv.value) {
                    Ok(None) => view.initialize = Initialize::Racing,
                    Ok(Some(id)) => view.initialize = Initialize::Sysid(id),
                    // Patroni rewrites an invalid value; until then the cluster counts as
                    // initialised by someone, so nobody starts a second bootstrap.
                    Err(e) => {
                        view.initialize = Initialize::Racing;
                        problem(kv, &e);
                    }
                },
                Some(KeyKind::Fixed(ClusterKey::Config)) => match ConfigValue::decode(&kv.value) {
                    Ok(v) => {
                        let c = DynConfig::from_value(&v);
                        for (name, why) in &c.refused {
                            problem(kv, &format!("postgresql.parameters.{name} is not applied: {why}"));
                        }
                        view.config = ConfigState::Valid(Box::new(c));
                    }
                    Err(e) => {
                        view.config = ConfigState::Garbage;
                        problem(kv, &e);
                    }
                },
                Some(KeyKind::Fixed(ClusterKey::Status)) => match StatusValue::decode(&kv.value) {
                    Ok(s) => {
                        view.status_optime = Some(s.optime);
                        view.status_slots =
                            s.slots.iter().filter_map(|(k, v)| Some((k.clone(), v.as_u64()?))).collect();
                    }
                    Err(e) => problem(kv, &e),
                },
                Some(KeyKind::Fixed(ClusterKey::Failover)) => match FailoverValue::decode(&kv.value) {
                    Ok(f) if !f.is_empty() => {
                        view.failover = Some(FailoverRequest {
                            leader: f.leader,
                            candidate: f.member,
                            scheduled_at: f.scheduled_at,
                            mod_revision: kv.mod_revision,
                        })
                    }
                    Ok(_) => {}
                    Err(e) => problem(kv, &e),
                },
                Some(KeyKind::Fixed(ClusterKey::History)) => match HistoryEntry::decode_list(&kv.value) {
                    Ok(rows) => {
                        view.history = rows
                            .into_iter()
                            .map(|r| TimelineSwitch { timeline: r.timeline, lsn: r.lsn, leader: r.new_leader })
                            .collect();
                        view.history.sort_by_key(|h| h.timeline);
                    }
                    Err(e) => problem(kv, &e),
                },
                Some(KeyKind::Member(name)) => match MemberValue::decode(&kv.value) {
                    Ok(m) => view.members.push(Member {
                        name: name.to_owned(),
                        role: match m.role {
                            MemberRole::Primary | MemberRole::Promoted => Role::Primary,
                            MemberRole::Replica | MemberRole::StandbyLeader => Role::Replica,
                            _ => Role::Other,
                        },
                        running: m.state == "running",
                        lsn: m.xlog_location,
                        timeline: m.timeline,
                        tags: Tags::from_json(&m.tags),
                        conn_url: m.conn_url,
                        api_url: m.api_url,
                        lease: kv.lease,
                    }),
                    Err(e) => problem(kv, &e),
                },
                Some(KeyKind::Fixed(ClusterKey::Sync)) => match SyncValue::decode(&kv.value) {
                    Ok(v) => {
                        view.sync = Some(SyncKey {
                            leader: v.leader.clone().filter(|l| !l.is_empty()),
                            members: {
                                let mut m: Vec<String> = v.standbys().into_iter().map(str::to_owned).collect();
                                m.sort();
                                m
                            },
                            quorum: v.quorum.unwrap_or(0),
                            mod_revision: kv.mod_revision,
                        })
                    }
                    Err(e) => problem(kv, &e),
                },
                Some(KeyKind::Fixed(ClusterKey::Failsafe)) => match FailsafeValue::decode(&kv.value) {
                    Ok(v) => view.failsafe = Some(v.0.into_iter().collect()),
                    Err(e) => problem(kv, &e),
                },
                // Legacy optime and foreign keys: not used by the core.
                Some(_) | None => {}
            }
        }
        view.members.sort_by(|a, b| a.name.cmp(&b.name));
        (view, problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, value: &str, lease: i64, rev: i64) -> Kv {
        Kv { key: key.into(), value: value.as_bytes().to_vec(), create_revision: rev, mod_revision: rev, lease }
    }

    #[test]
    fn patroni_written_cluster_decodes() {
        let l = KeyLayout::new("service", "batman").unwrap();
        let kvs = vec![
            kv("/service/batman/initialize", "7268616322854375442", 0, 1),
            kv("/service/batman/config", r#"{"ttl":30,"maximum_lag_on_failover":100}"#, 0, 2),
            kv("/service/batman/leader", "n1", 7, 3),
            kv(
                "/service/batman/members/n1",
                r#"{"conn_url":"postgres://h1:5432/postgres","api_url":"http://h1:8008/patroni","state":"running","role":"primary","version":"4.1.4","xlog_location":900,"timeline":2}"#,
                7,
                4,
            ),
            kv(
                "/service/batman/members/n2",
                r#"{"conn_url":"postgres://h2:5432/postgres","api_url":"http://h2:8008/patroni","state":"running","role":"replica","version":"4.1.4","xlog_location":800,"timeline":2,"tags":{"nofailover":true}}"#,
                8,
                5,
            ),
            kv("/service/batman/status", r#"{"optime":900}"#, 0, 6),
            kv(
                "/service/batman/history",
                r#"[[1,500,"no recovery target specified","2026-01-01T00:00:00+00:00","n1"]]"#,
                0,
                7,
            ),
            kv("/service/batman/failover", "{}", 0, 8),
        ];
        let (v, problems) = ClusterView::decode(&l, 8, &kvs);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(v.initialize, Initialize::Sysid(7268616322854375442));
        assert_eq!(v.leader.as_ref().map(|l| (l.name.as_str(), l.lease)), Some(("n1", 7)));
        assert_eq!(v.members.len(), 2);
        assert!(v.member("n2").unwrap().tags.nofailover);
        assert_eq!(v.status_optime, Some(900));
        assert_eq!(v.failover, None);
        assert_eq!(v.cluster_timeline(), Some(2));
        match &v.config {
            ConfigState::Valid(c) => assert_eq!(c.maximum_lag_on_failover, 100),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn garbage_member_and_config_are_reported_and_left_out() {
        let l = KeyLayout::new("service", "batman").unwrap();
        let kvs = vec![
            kv("/service/batman/config", "{not json", 0, 2),
            kv("/service/batman/members/bad", "\u{1}garbage", 9, 3),
            kv("/service/batman/leader", "", 9, 4),
        ];
        let (v, problems) = ClusterView::decode(&l, 4, &kvs);
        assert_eq!(v.config, ConfigState::Garbage);
        assert!(v.members.is_empty());
        assert_eq!(v.leader, None);
        let keys: Vec<_> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["/service/batman/config", "/service/batman/members/bad", "/service/batman/leader"]);
    }

    #[test]
    fn tags_round_trip_the_way_patroni_publishes_them() {
        let t = Tags { failover_priority: 0, ..Tags::default() };
        let j = t.to_json();
        assert_eq!(j.get("nofailover"), Some(&Value::Bool(false)));
        assert!(!Tags::from_json(&j).can_failover());
        assert!(Tags::default().to_json().is_empty());
    }
}
