//! The health verdicts of Patroni 4.x's `do_GET` (`../shared/reference/patroni.md` §3.2), as a
//! pure function of the request and the loop's last [`Snapshot`].
//!
//! Every answer comes from state the loop already holds: no SQL, no etcd read per request. The
//! leader verdict is [`Snapshot::holds_leader`] at the request's instant, so a primary whose
//! lease lapsed stops answering 200 on `/primary` even if the loop is stuck and publishes
//! nothing new.

use std::time::{Duration, Instant};

use outrigger_schema::MemberRole;
use serde_json::Value;

use crate::control::Snapshot;

/// The request's time: the monotonic instant (lease checks) and the wall clock (liveness).
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub instant: Instant,
    pub wall_ms: u64,
}

/// What to answer: a status code, with or without the status JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub code: u16,
    /// `false`: the status line only (HEAD, OPTIONS, `/liveness`, `/readiness`).
    pub body: bool,
}

/// How a request's method asks for the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ask {
    /// GET: the status JSON with the code.
    Get,
    /// HEAD and OPTIONS: the code only (HAProxy's `option httpchk` sends `OPTIONS /`).
    CodeOnly,
}

/// The health paths that Patroni routes to their own handlers rather than to `do_GET`.
pub fn is_own_handler(path: &str) -> bool {
    matches!(first_segment(path), "liveness" | "readiness")
}

fn first_segment(path: &str) -> &str {
    path.trim_start_matches('/').split('/').next().unwrap_or("")
}

/// Patroni's `parse_int(value, 'B')`: a byte count, optionally with a unit (`kB`, `MB`, `GB`,
/// `TB`, powers of 1024). `None` for anything else (Patroni then applies no limit).
pub fn parse_bytes(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits.parse().ok()?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "kB" => 1 << 10,
        "MB" => 1 << 20,
        "GB" => 1 << 30,
        "TB" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(mult)
}

fn query<'q>(q: &'q [(String, String)], key: &str) -> Option<&'q str> {
    q.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// Patroni compares a tag filter with the tag's value as a string; non-strings lowercased.
fn tag_matches(tags: &serde_json::Map<String, Value>, key: &str, want: &str) -> bool {
    match tags.get(key) {
        None | Some(Value::Null) => false,
        Some(Value::String(s)) => s == want,
        Some(other) => other.to_string().to_lowercase() == want,
    }
}

fn is_true(v: Option<&Value>) -> bool {
    match v {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => matches!(s.to_ascii_lowercase().as_str(), "true" | "yes" | "on" | "1"),
        Some(Value::Number(n)) => n.as_i64().is_some_and(|i| i != 0),
        _ => false,
    }
}

/// The verdict of `/liveness`: 200 while paused, or while the last cycle started less than
/// `ttl` ago on a running primary (`2 * ttl` elsewhere: a stuck replica harms nobody soon).
pub fn liveness(snap: &Snapshot, ttl: Duration, now: Now) -> u16 {
    let s = snap.status.as_ref();
    let primary = s.is_some_and(|s| s.role == MemberRole::Primary && s.state == "running");
    let limit = if primary { ttl } else { ttl * 2 };
    let age = Duration::from_millis(now.wall_ms.saturating_sub(snap.cycle_started_ms));
    if snap.paused || (snap.cycle_started_ms > 0 && age < limit) { 200 } else { 503 }
}

/// The verdict of `/readiness` (4.1): the leader is ready; another member when PostgreSQL runs,
/// streams, and lags by at most `?lag=` (default `maximum_lag_on_failover`), measured on the
/// replayed position (`?mode=apply`, the default) or the received one (`?mode=write`).
pub fn readiness(snap: &Snapshot, q: &[(String, String)], now: Now) -> u16 {
    if snap.holds_leader(now.instant) {
        return 200;
    }
    let Some(s) = snap.status.as_ref() else { return 503 };
    if s.state != "running" || s.replication_state.as_deref() != Some("streaming") {
        return 503;
    }
    let limit = query(q, "lag").and_then(parse_bytes).unwrap_or(snap.maximum_lag_on_failover);
    let xlog = s.xlog.clone().unwrap_or_default();
    let position = if query(q, "mode") == Some("write") {
        xlog.received_location.or(xlog.replayed_location)
    } else {
        xlog.replayed_location
    }
    .unwrap_or(0);
    match snap.leader_optime {
        Some(leader) if leader > position.saturating_add(limit) => 503,
        _ => 200,
    }
}

/// Patroni's `do_GET` for `path` (without the query string) with query `q`.
pub fn verdict(ask: Ask, path: &str, q: &[(String, String)], snap: &Snapshot, ttl: Duration, now: Now) -> Verdict {
    let code = match (ask, first_segment(path)) {
        (Ask::Get, "liveness") => return Verdict { code: liveness(snap, ttl, now), body: false },
        (Ask::Get, "readiness") => return Verdict { code: readiness(snap, q, now), body: false },
        _ => status_code(path, q, snap, now),
    };
    Verdict { code, body: ask == Ask::Get }
}

fn status_code(path: &str, q: &[(String, String)], snap: &Snapshot, now: Now) -> u16 {
    let path = if path == "/" { "/primary" } else { path };
    let status = snap.status.as_ref();
    let role = status.map(|s| &s.role);
    let running = status.is_some_and(|s| s.state == "running");
    let tags = status.map(|s| s.tags.clone()).unwrap_or_default();
    // The last cycle read the cluster (it then knows whether the cluster is unlocked).
    let dcs_ok = status.is_some_and(|s| s.cluster_unlocked.is_some());

    let replayed = status.and_then(|s| s.xlog.as_ref()).and_then(|x| x.replayed_location).unwrap_or(0);
    let received = status.and_then(|s| s.xlog.as_ref()).and_then(|x| x.received_location).unwrap_or(0);
    let max_lag = query(q, "lag").and_then(parse_bytes).unwrap_or(u64::MAX);
    let leader_optime = snap.leader_optime.unwrap_or(0).max(received);
    let lagging = leader_optime > 0 && leader_optime > replayed.saturating_add(max_lag);
    let state_ok = query(q, "replication_state")
        .is_none_or(|want| status.and_then(|s| s.replication_state.as_deref()) == Some(want));
    let mut replica =
        if !is_true(tags.get("noloadbalance")) && !lagging && state_ok && role == Some(&MemberRole::Replica) && running
        {
            200
        } else {
            503
        };

    let (leader, primary, standby_leader);
    if !dcs_ok && snap.paused {
        // Paused without a view of the cluster: judge by PostgreSQL's role alone.
        let is = |r: MemberRole| if role == Some(&r) { 200 } else { 503 };
        primary = is(MemberRole::Primary);
        standby_leader = is(MemberRole::StandbyLeader);
        leader = if primary == 200 || standby_leader == 200 { 200 } else { 503 };
    } else if snap.holds_leader(now.instant) {
        leader = 200;
        if role == Some(&MemberRole::StandbyLeader) {
            // A standby cluster's leader: never a primary, never a replica for load balancing.
            primary = 503;
            replica = 503;
            standby_leader = 200;
        } else {
            primary = 200;
            standby_leader = 503;
        }
    } else {
        (leader, primary, standby_leader) = (503, 503, 503);
    }

    let mut ignore_tags = false;
    let code = if path.contains("standby_leader") || path.contains("standby-leader") {
        ignore_tags = true;
        standby_leader
    } else if path.contains("leader") {
        ignore_tags = true;
        leader
    } else if path.contains("master") || path.contains("primary") || path.contains("read-write") {
        ignore_tags = true;
        primary
    } else if path.contains("replica") {
        replica
    } else if path.contains("read-only") && !path.contains("sync") && !path.contains("quorum") {
        if primary == 200 || standby_leader == 200 { 200 } else { replica }
    } else if path.contains("health") {
        if running { 200 } else { 503 }
    } else if dcs_ok {
        let (sync, quorum) = (snap.sync_standby, snap.quorum_standby);
        match path {
            "/sync" | "/synchronous" if sync => replica,
            "/quorum" if quorum => replica,
            "/async" | "/asynchronous" if !sync && !quorum => replica,
            p if p.starts_with("/read-only") && (primary == 200 || standby_leader == 200) => 200,
            "/read-only-sync" | "/read-only/sync" | "/read-only-synchronous" if sync => replica,
            "/read-only-quorum" if quorum => replica,
            _ => 503,
        }
    } else {
        503
    };

    if code == 200 && !ignore_tags {
        for (k, v) in q {
            if let Some(tag) = k.strip_prefix("tag_")
                && !tag_matches(&tags, tag, v)
            {
                return 503;
            }
        }
    }
    code
}

/// A status JSON for tests: `role` in `state`, timeline 1, nothing else set.
#[cfg(test)]
pub(super) fn test_status(role: MemberRole, state: &str) -> outrigger_schema::StatusJson {
    outrigger_schema::StatusJson {
        state: state.into(),
        postmaster_start_time: None,
        role,
        server_version: Some(170000),
        xlog: None,
        timeline: Some(1),
        replication_state: None,
        cluster_unlocked: Some(false),
        dcs_last_seen: None,
        tags: serde_json::Map::new(),
        database_system_identifier: None,
        pending_restart: None,
        watchdog_failed: None,
        lease_revoked_recently: None,
        patroni: None,
        extra: serde_json::Map::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outrigger_schema::XlogStatus;
    use serde_json::json;

    fn t0() -> Now {
        Now { instant: Instant::now(), wall_ms: 1_000_000 }
    }

    /// A leader holding its lease for another 10 s.
    fn leader(now: Now) -> Snapshot {
        let mut s = test_status(MemberRole::Primary, "running");
        s.xlog = Some(XlogStatus { location: Some(1000), ..XlogStatus::default() });
        Snapshot {
            status: Some(s),
            leader_until: Some(now.instant + Duration::from_secs(10)),
            cycle_started_ms: now.wall_ms,
            ..Snapshot::default()
        }
    }

    /// A streaming replica that replayed up to 900 (received 950), the leader at 1000.
    fn replica(now: Now) -> Snapshot {
        let mut s = test_status(MemberRole::Replica, "running");
        s.replication_state = Some("streaming".into());
        s.xlog =
            Some(XlogStatus { received_location: Some(950), replayed_location: Some(900), ..XlogStatus::default() });
        Snapshot {
            status: Some(s),
            leader_optime: Some(1000),
            maximum_lag_on_failover: 1 << 20,
            cycle_started_ms: now.wall_ms,
            ..Snapshot::default()
        }
    }

    fn get(path: &str, snap: &Snapshot, now: Now) -> u16 {
        get_q(path, &[], snap, now)
    }

    fn get_q(path: &str, q: &[(&str, &str)], snap: &Snapshot, now: Now) -> u16 {
        let q: Vec<(String, String)> = q.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        verdict(Ask::Get, path, &q, snap, Duration::from_secs(30), now).code
    }

    #[test]
    fn leader_paths_answer_200_on_the_lease_holder_only() {
        let now = t0();
        for p in ["/", "/primary", "/read-write", "/master", "/leader"] {
            assert_eq!(get(p, &leader(now), now), 200, "{p} on the leader");
            assert_eq!(get(p, &replica(now), now), 503, "{p} on a replica");
        }
    }

    #[test]
    fn any_path_containing_master_is_the_primary_check() {
        let now = t0();
        assert_eq!(get("/some-master-check", &leader(now), now), 200);
        assert_eq!(get("/some-master-check", &replica(now), now), 503);
    }

    #[test]
    fn leader_check_turns_false_when_the_lease_lapses_without_a_new_snapshot() {
        let now = t0();
        let snap = leader(now);
        let later = Now { instant: now.instant + Duration::from_secs(11), wall_ms: now.wall_ms + 11_000 };
        assert_eq!(get("/primary", &snap, later), 503);
        assert_eq!(get("/leader", &snap, later), 503);
    }

    #[test]
    fn standby_leader_paths_need_a_standby_cluster_leader() {
        let now = t0();
        assert_eq!(get("/standby-leader", &leader(now), now), 503);
        assert_eq!(get("/standby_leader", &leader(now), now), 503);
        let mut sl = leader(now);
        if let Some(s) = sl.status.as_mut() {
            s.role = MemberRole::StandbyLeader;
        }
        assert_eq!(get("/standby-leader", &sl, now), 200);
        assert_eq!(get("/standby_leader", &sl, now), 200);
        assert_eq!(get("/leader", &sl, now), 200);
        assert_eq!(get("/primary", &sl, now), 503);
        assert_eq!(get("/replica", &sl, now), 503);
        assert_eq!(get("/read-only", &sl, now), 200);
    }

    #[test]
    fn replica_is_200_on_a_running_replica_only() {
        let now = t0();
        assert_eq!(get("/replica", &replica(now), now), 200);
        assert_eq!(get("/replica", &leader(now), now), 503);
        let mut stopped = replica(now);
        if let Some(s) = stopped.status.as_mut() {
            s.state = "stopped".into();
        }
        assert_eq!(get("/replica", &stopped, now), 503);
    }

    #[test]
    fn replica_with_noloadbalance_is_not_offered() {
        let now = t0();
        let mut r = replica(now);
        if let Some(s) = r.status.as_mut() {
            s.tags.insert("noloadbalance".into(), json!(true));
        }
        assert_eq!(get("/replica", &r, now), 503);
    }

    #[test]
    fn replica_lag_limit_accepts_bytes_and_units() {
        let now = t0();
        let r = replica(now);
        // Lag is 1000 - 900 = 100 bytes.
        assert_eq!(get_q("/replica", &[("lag", "100")], &r, now), 200);
        assert_eq!(get_q("/replica", &[("lag", "99")], &r, now), 503);
        assert_eq!(get_q("/replica", &[("lag", "1kB")], &r, now), 200);
        assert_eq!(get_q("/replica", &[("lag", "16MB")], &r, now), 200);
        // Unparseable: no limit, as Patroni.
        assert_eq!(get_q("/replica", &[("lag", "lots")], &r, now), 200);
        assert_eq!(parse_bytes("16MB"), Some(16 << 20));
        assert_eq!(parse_bytes("1GB"), Some(1 << 30));
        assert_eq!(parse_bytes("16kB"), Some(16 << 10));
        assert_eq!(parse_bytes("16mb"), None);
    }

    #[test]
    fn replica_replication_state_filter_must_match() {
        let now = t0();
        let r = replica(now);
        assert_eq!(get_q("/replica", &[("replication_state", "streaming")], &r, now), 200);
        assert_eq!(get_q("/replica", &[("replication_state", "in archive recovery")], &r, now), 503);
    }

    #[test]
    fn tag_filters_apply_to_replicas_and_are_ignored_for_leader_paths() {
        let now = t0();
        let mut r = replica(now);
        if let Some(s) = r.status.as_mut() {
            s.tags.insert("zone".into(), json!("a"));
            s.tags.insert("nofailover".into(), json!(true));
        }
        assert_eq!(get_q("/replica", &[("tag_zone", "a")], &r, now), 200);
        assert_eq!(get_q("/replica", &[("tag_zone", "b")], &r, now), 503);
        assert_eq!(get_q("/replica", &[("tag_nofailover", "true")], &r, now), 200);
        assert_eq!(get_q("/replica", &[("tag_missing", "x")], &r, now), 503);
        assert_eq!(get_q("/primary", &[("tag_zone", "b")], &leader(now), now), 200);
    }

    #[test]
    fn read_only_is_the_leader_or_a_replica() {
        let now = t0();
        assert_eq!(get("/read-only", &leader(now), now), 200);
        assert_eq!(get("/read-only", &replica(now), now), 200);
        let mut stopped = replica(now);
        if let Some(s) = stopped.status.as_mut() {
            s.state = "stopped".into();
        }
        assert_eq!(get("/read-only", &stopped, now), 503);
    }

    #[test]
    fn sync_and_async_follow_membership_in_sync() {
        let now = t0();
        let mut sync = replica(now);
        sync.sync_standby = true;
        for p in ["/sync", "/synchronous"] {
            assert_eq!(get(p, &sync, now), 200, "{p}");
            assert_eq!(get(p, &replica(now), now), 503, "{p}");
        }
        for p in ["/async", "/asynchronous"] {
            assert_eq!(get(p, &sync, now), 503, "{p}");
            assert_eq!(get(p, &replica(now), now), 200, "{p}");
        }
        assert_eq!(get_q("/async", &[("lag", "10")], &replica(now), now), 503);
        assert_eq!(get("/read-only-sync", &sync, now), 200);
        assert_eq!(get("/read-only-sync", &leader(now), now), 200);
    }

    #[test]
    fn quorum_and_read_only_quorum_follow_membership_in_quorum_mode() {
        let now = t0();
        let mut quorum = replica(now);
        quorum.quorum_standby = true;
        assert_eq!(get("/quorum", &quorum, now), 200);
        assert_eq!(get("/quorum", &replica(now), now), 503);
        assert_eq!(get("/sync", &quorum, now), 503);
        assert_eq!(get("/async", &quorum, now), 503);
        assert_eq!(get("/read-only-quorum", &quorum, now), 200);
        assert_eq!(get("/read-only-quorum", &replica(now), now), 503);
        assert_eq!(get("/read-only-quorum", &leader(now), now), 200);
        assert_eq!(get("/quorum", &leader(now), now), 503);
    }

    #[test]
    fn health_follows_postgresql_state() {
        let now = t0();
        assert_eq!(get("/health", &leader(now), now), 200);
        assert_eq!(get("/health", &replica(now), now), 200);
        let mut stopped = replica(now);
        if let Some(s) = stopped.status.as_mut() {
            s.state = "stopped".into();
        }
        assert_eq!(get("/health", &stopped, now), 503);
        assert_eq!(get("/health", &Snapshot::default(), now), 503);
    }

    #[test]
    fn liveness_fails_after_ttl_on_a_primary_and_two_ttl_elsewhere_but_never_when_paused() {
        let now = t0();
        let ttl = Duration::from_secs(30);
        let at = |ms: u64| Now { instant: now.instant, wall_ms: now.wall_ms + ms };
        assert_eq!(liveness(&leader(now), ttl, at(29_000)), 200);
        assert_eq!(liveness(&leader(now), ttl, at(31_000)), 503);
        assert_eq!(liveness(&replica(now), ttl, at(31_000)), 200);
        assert_eq!(liveness(&replica(now), ttl, at(61_000)), 503);
        let mut paused = leader(now);
        paused.paused = true;
        assert_eq!(liveness(&paused, ttl, at(600_000)), 200);
        assert_eq!(verdict(Ask::Get, "/liveness", &[], &leader(now), ttl, now), Verdict { code: 200, body: false });
    }

    #[test]
    fn readiness_is_the_leader_or_a_streaming_replica_within_the_lag() {
        let now = t0();
        let q = |k: &str, v: &str| vec![(k.to_owned(), v.to_owned())];
        assert_eq!(readiness(&leader(now), &[], now), 200);
        assert_eq!(readiness(&replica(now), &[], now), 200);
        assert_eq!(readiness(&replica(now), &q("lag", "50"), now), 503);
        let mut write_mode = q("lag", "50");
        write_mode.extend(q("mode", "write"));
        assert_eq!(readiness(&replica(now), &write_mode, now), 200);
        let mut archive = replica(now);
        if let Some(s) = archive.status.as_mut() {
            s.replication_state = Some("in archive recovery".into());
        }
        assert_eq!(readiness(&archive, &[], now), 503);
    }

    #[test]
    fn head_and_options_get_the_code_without_a_body() {
        let now = t0();
        let v = verdict(Ask::CodeOnly, "/", &[], &leader(now), Duration::from_secs(30), now);
        assert_eq!(v, Verdict { code: 200, body: false });
        let v = verdict(Ask::CodeOnly, "/replica", &[], &leader(now), Duration::from_secs(30), now);
        assert_eq!(v, Verdict { code: 503, body: false });
    }

    #[test]
    fn unknown_paths_answer_503_with_the_status_like_patroni() {
        let now = t0();
        let v = verdict(Ask::Get, "/nope", &[], &leader(now), Duration::from_secs(30), now);
        assert_eq!(v, Verdict { code: 503, body: true });
    }

    #[test]
    fn paused_without_the_cluster_judges_by_role_alone() {
        let now = t0();
        let mut p = leader(now);
        p.paused = true;
        p.leader_until = None;
        if let Some(s) = p.status.as_mut() {
            s.cluster_unlocked = None;
        }
        assert_eq!(get("/primary", &p, now), 200);
        assert_eq!(get("/leader", &p, now), 200);
        p.paused = false;
        assert_eq!(get("/primary", &p, now), 503);
    }

    #[test]
    fn no_snapshot_yet_answers_503_everywhere() {
        let now = t0();
        for p in ["/", "/primary", "/replica", "/read-only", "/health", "/sync", "/async"] {
            assert_eq!(get(p, &Snapshot::default(), now), 503, "{p}");
        }
    }
}
