//! The action endpoints: request validation as Patroni's `api.py` does it (same codes, same
//! texts, since patronictl prints them), as pure functions; the handlers that then write etcd
//! or hand a [`Command`](crate::control::Command) to the HA loop live in `mod.rs`.

use std::time::Duration;

use serde_json::{Map, Value};

use super::cluster::ClusterRead;
use crate::control::{Reply, RestartRequest};
use crate::core::schedule::{format_rfc3339_ms, parse_rfc3339_ms};

/// A request body as Patroni's `_read_json_content` takes it: 411 without a Content-Length,
/// 400 unless it is a JSON object (a non-empty one, unless the body is optional).
pub fn read_json(body: Option<&[u8]>, optional: bool) -> Result<Map<String, Value>, Reply> {
    let Some(body) = body else {
        return if optional { Ok(Map::new()) } else { Err(Reply::new(411, "Length Required")) };
    };
    if body.is_empty() && optional {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) if !m.is_empty() || optional => Ok(m),
        _ => Err(Reply::new(400, "Bad Request")),
    }
}

/// Patroni's `patch_config`: a JSON merge patch where `null` deletes and nested objects merge.
/// Returns whether anything changed (values are compared as Patroni does, by their text).
pub fn patch_config(config: &mut Map<String, Value>, patch: &Map<String, Value>) -> bool {
    let mut changed = false;
    for (k, v) in patch {
        match (v, config.get_mut(k)) {
            (Value::Null, _) => changed |= config.remove(k).is_some_and(|old| !old.is_null()),
            (Value::Object(p), Some(Value::Object(c))) => changed |= patch_config(c, p),
            (v, Some(old)) => {
                if text(old) != text(v) {
                    *old = v.clone();
                    changed = true;
                }
            }
            (v, None) => {
                config.insert(k.clone(), v.clone());
                changed = true;
            }
        }
    }
    changed
}

/// A value as Python's `str()` shows it, for Patroni's change test.
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        other => other.to_string(),
    }
}

/// `POST /switchover` or `POST /failover`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Switchover,
    Failover,
}

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Action::Switchover => "switchover",
            Action::Failover => "failover",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Action::Switchover => "Switchover",
            Action::Failover => "Failover",
        }
    }

    /// Patroni's `action[:-4] + 'ed'`: "switched", "failed".
    fn past(self) -> &'static str {
        match self {
            Action::Switchover => "switched",
            Action::Failover => "failed",
        }
    }
}

/// A validated switchover or failover.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub action: Action,
    pub leader: Option<String>,
    pub candidate: Option<String>,
    /// Unix ms.
    pub scheduled_at: Option<u64>,
    /// Members to ask before writing: at least one must be able to take over.
    pub candidates: Vec<(String, String)>,
    /// The leader's timeline as its member key says: a candidate still on an older one (it
    /// has just begun to follow the leader) cannot take over yet.
    pub leader_timeline: Option<u32>,
}

impl Plan {
    /// The `failover` key's value (the candidate is `member` there).
    pub fn failover_value(&self) -> String {
        let v = outrigger_schema::FailoverValue {
            leader: self.leader.clone(),
            member: self.candidate.clone(),
            scheduled_at: self.scheduled_at.map(format_rfc3339_ms),
        };
        serde_json::to_string(&v).unwrap_or_else(|_| "{}".into())
    }

    pub fn scheduled_reply(&self) -> Reply {
        Reply::new(202, format!("{} scheduled", self.title()))
    }

    fn title(&self) -> &'static str {
        self.action.title()
    }

    /// What the poll after an immediate switchover answers once `new_leader` holds the key.
    pub fn done_reply(&self, new_leader: &str) -> Reply {
        match &self.candidate {
            Some(c) if c != new_leader => {
                let past = match self.action {
                    Action::Switchover => "Switched",
                    Action::Failover => "Failed",
                };
                Reply::new(200, format!("{past} over to \"{new_leader}\" instead of \"{c}\""))
            }
            _ => Reply::new(200, format!("Successfully {} over to \"{new_leader}\"", self.action.past())),
        }
    }

    pub fn failed_reply(&self) -> Reply {
        Reply::new(503, format!("{} failed", self.title()))
    }

    pub fn unknown_reply(&self) -> Reply {
        Reply::new(503, format!("{} status unknown", self.title()))
    }

    pub fn impossible(&self, why: &str) -> Reply {
        Reply::new(412, format!("{} is not possible: {why}", self.action.name()))
    }
}

fn string(req: &Map<String, Value>, key: &str) -> Option<String> {
    match req.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}

/// Patroni's `parse_schedule`: an ISO 8601 time with a zone, not in the past.
pub fn parse_schedule(s: &str, action: &str, now_ms: u64) -> Result<u64, Reply> {
    match parse_rfc3339_ms(s) {
        Some(ms) if ms < now_ms => Err(Reply::new(422, format!("Cannot schedule {action} in the past"))),
        Some(ms) => Ok(ms),
        None if parse_rfc3339_ms(&format!("{s}Z")).is_some() => {
            Err(Reply::new(400, format!("Timezone information is mandatory for the scheduled {action}")))
        }
        None => Err(Reply::new(
            422,
            "Unable to parse scheduled timestamp. It should be in an unambiguous format, e.g. ISO 8601",
        )),
    }
}

/// Validates a switchover or failover request against the cluster, as Patroni's
/// `do_POST_failover` and `is_failover_possible` do (all but asking the candidates, which the
/// caller does with [`Plan::candidates`]).
pub fn plan(action: Action, req: &Map<String, Value>, c: &ClusterRead, now_ms: u64) -> Result<Plan, Reply> {
    let leader = string(req, "leader");
    let candidate = string(req, "candidate").or_else(|| string(req, "member"));
    let scheduled = string(req, "scheduled_at");
    let paused = c.paused();
    let bad = |t: &str| Err(Reply::new(400, t));
    if action == Action::Failover && candidate.is_none() {
        return bad("Failover could be performed only to a specific candidate");
    }
    if action == Action::Switchover && leader.is_none() {
        return bad("Switchover could be performed only from a specific leader");
    }
    let mut scheduled_at = None;
    if let Some(s) = &scheduled {
        if action == Action::Failover && leader.is_none() {
            return bad("Failover can't be scheduled");
        }
        if paused {
            return bad("Can't schedule switchover in the paused state");
        }
        scheduled_at = Some(parse_schedule(s, action.name(), now_ms)?);
    }
    if paused && candidate.is_none() {
        return bad("Switchover is possible only to a specific candidate in a paused state");
    }
    // A failover naming the leader is a switchover (Patroni 4.x; 3.0.2's patronictl always
    // sends the leader).
    let action = if action == Action::Failover && leader.is_some() { Action::Switchover } else { action };
    let leader_timeline = c.leader.as_deref().and_then(|l| c.member(l)).and_then(|m| m.timeline);
    let mut p = Plan {
        action,
        leader: leader.clone(),
        candidate: candidate.clone(),
        scheduled_at,
        candidates: vec![],
        leader_timeline,
    };
    if let Some(l) = &leader
        && c.leader.as_deref() != Some(l.as_str())
    {
        return Err(Reply::new(412, "leader name does not match"));
    }
    if let Some(cand) = &candidate {
        if c.leader.as_deref() == Some(cand.as_str()) && action == Action::Switchover {
            return Err(Reply::new(412, "candidate name does not match: it is the current leader"));
        }
        match c.member(cand) {
            Some(m) => p.candidates = vec![(cand.clone(), m.api_url.clone())],
            None => return Err(Reply::new(412, "candidate does not exists")),
        }
    } else if c.synchronous_mode() {
        p.candidates = c
            .members
            .iter()
            .filter(|(n, _)| c.is_sync_standby(n))
            .map(|(n, m)| (n.clone(), m.api_url.clone()))
            .collect();
        if p.candidates.is_empty() {
            return Err(p.impossible("can not find sync_standby"));
        }
    } else {
        p.candidates = c
            .members
            .iter()
            .filter(|(n, m)| c.leader.as_deref() != Some(n.as_str()) && !m.api_url.is_empty())
            .map(|(n, m)| (n.clone(), m.api_url.clone()))
            .collect();
        if p.candidates.is_empty() {
            return Err(p.impossible("cluster does not have members except leader"));
        }
    }
    Ok(p)
}

/// Patroni's `failover_limitation` on a candidate's `GET /patroni` answer.
pub fn can_take_over(s: &outrigger_schema::StatusJson, leader_timeline: Option<u32>) -> bool {
    let nofailover = match s.tags.get("nofailover") {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(v)) => matches!(v.to_ascii_lowercase().as_str(), "true" | "yes" | "on"),
        _ => false,
    };
    let on_our_timeline = match (s.timeline, leader_timeline) {
        (Some(t), Some(l)) => t >= l,
        _ => true,
    };
    s.state == "running" && !nofailover && !s.watchdog_failed.unwrap_or(false) && on_our_timeline
}

/// A candidate that could take over once it has caught up with the leader's timeline, or once
/// it has published the state its PostgreSQL reached (a replica that has just started, or
/// restarted, still says `starting` for up to a loop of its agent): worth waiting for.
pub fn may_soon_take_over(s: &outrigger_schema::StatusJson) -> bool {
    let mut started = s.clone();
    if matches!(s.state.as_str(), "starting" | "restarting") {
        started.state = "running".into();
    }
    can_take_over(&started, None)
}

/// Patroni's `postgres_version_to_int`: `X.Y` (X >= 10) or `X.Y.Z`.
pub fn postgres_version(v: &str) -> Option<u32> {
    let parts: Vec<u32> = v.split('.').map(|p| p.trim().parse().ok()).collect::<Option<_>>()?;
    let parts = match parts.as_slice() {
        [major, minor] if *major >= 10 => vec![*major, 0, *minor],
        [_, _, _] => parts,
        _ => return None,
    };
    format!("{:02}{:02}{:02}", parts[0], parts[1], parts[2]).parse().ok()
}

/// A duration in seconds as Patroni's `parse_int(value, 's')` reads it: a number of seconds,
/// or a string with a unit (`30s`, `2min`, `500ms`, `1h`).
fn seconds(v: &Value) -> Option<Duration> {
    // A number too large for a Duration (or infinite, or NaN) is refused, never a panic.
    let from_f64 = |f: f64| (f > 0.0).then(|| Duration::try_from_secs_f64(f).ok()).flatten();
    match v {
        Value::Number(n) => n.as_f64().and_then(from_f64),
        Value::String(s) => {
            let s = s.trim();
            if let Ok(n) = s.parse::<f64>() {
                return from_f64(n);
            }
            humantime::parse_duration(s).ok().filter(|d| !d.is_zero())
        }
        _ => None,
    }
}

/// Validates `POST /restart`'s body as Patroni does, in the body's key order.
pub fn parse_restart(req: &Map<String, Value>, paused: bool, now_ms: u64) -> Result<RestartRequest, Reply> {
    if paused && req.contains_key("schedule") {
        return Err(Reply::new(500, "Can't schedule restart in the paused state"));
    }
    let mut r = RestartRequest::default();
    for (k, v) in req {
        match k.as_str() {
            "schedule" => {
                let s = v.as_str().unwrap_or_default();
                r.schedule_ms = Some(parse_schedule(s, "restart", now_ms)?);
            }
            "role" => match v.as_str() {
                Some(role @ ("primary" | "standby_leader" | "replica")) => r.role = Some(role.to_owned()),
                _ => {
                    return Err(Reply::new(
                        400,
                        "PostgreSQL role should be either primary, standby_leader, or replica",
                    ));
                }
            },
            "postgres_version" => {
                let text = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                match postgres_version(&text) {
                    Some(n) => r.postgres_version = Some(n),
                    None => {
                        return Err(Reply::new(
                            400,
                            format!("Invalid PostgreSQL version format: X.Y or X.Y.Z is accepted: {text}"),
                        ));
                    }
                }
            }
            "timeout" => match seconds(v) {
                Some(d) => r.timeout = Some(d),
                None => return Err(Reply::new(400, "Timeout should be a positive number of seconds")),
            },
            "restart_pending" => {
                r.restart_pending = match v {
                    Value::Bool(b) => *b,
                    Value::String(s) => matches!(s.to_ascii_lowercase().as_str(), "true" | "yes" | "on" | "1"),
                    _ => false,
                }
            }
            other => return Err(Reply::new(400, format!("Unknown filter for the scheduled restart: {other}"))),
        }
    }
    Ok(r)
}

/// `POST /reinitialize`'s flags (`force`, `from_leader`), each false unless truthy.
pub fn parse_reinitialize(req: &Map<String, Value>) -> (bool, bool) {
    let flag = |k: &str| match req.get(k) {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => matches!(s.to_ascii_lowercase().as_str(), "true" | "yes" | "on" | "1"),
        Some(Value::Number(n)) => n.as_i64().is_some_and(|i| i != 0),
        _ => false,
    };
    (flag("force"), flag("from_leader"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use outrigger_etcd::Kv;
    use outrigger_schema::KeyLayout;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!("test bodies are objects"),
        }
    }

    fn cluster(config: &str, sync: Option<&str>) -> ClusterRead {
        let l = KeyLayout::new("service", "b").unwrap();
        let kv = |k: &str, v: &str| Kv {
            key: format!("/service/b/{k}"),
            value: v.as_bytes().to_vec(),
            create_revision: 1,
            mod_revision: 1,
            lease: 0,
        };
        let member = |n: &str| {
            format!(
                r#"{{"conn_url":"postgres://10.0.0.{n}:5432/postgres","api_url":"http://10.0.0.{n}:8008/patroni","state":"running","role":"replica","version":"4.1.4"}}"#
            )
        };
        let mut kvs = vec![
            kv("leader", "n1"),
            kv("config", config),
            kv("members/n1", &member("1")),
            kv("members/n2", &member("2")),
            kv("members/n3", &member("3")),
        ];
        if let Some(s) = sync {
            kvs.push(kv("sync", s));
        }
        ClusterRead::decode(&l, &kvs)
    }

    const NOW: u64 = 1_795_514_400_000; // 2026-11-24T10:00:00Z

    #[test]
    fn bodies_need_a_length_and_a_json_object() {
        assert_eq!(read_json(None, false).unwrap_err().status, 411);
        assert_eq!(read_json(Some(b"[1]"), false).unwrap_err().status, 400);
        assert_eq!(read_json(Some(b"{not json"), false).unwrap_err().status, 400);
        assert_eq!(read_json(Some(b"{}"), false).unwrap_err().status, 400);
        assert_eq!(read_json(Some(b"{}"), true).unwrap(), Map::new());
        assert_eq!(read_json(None, true).unwrap(), Map::new());
        assert_eq!(read_json(Some(br#"{"a":1}"#), false).unwrap()["a"], 1);
    }

    #[test]
    fn config_patch_merges_objects_and_null_deletes() {
        let mut c = obj(json!({"ttl":30,"pause":true,"postgresql":{"parameters":{"work_mem":"4MB","a":1}}}));
        let changed = patch_config(
            &mut c,
            &obj(json!({"pause":null,"loop_wait":5,"postgresql":{"parameters":{"work_mem":"8MB","a":null}}})),
        );
        assert!(changed);
        assert_eq!(
            Value::Object(c.clone()),
            json!({"ttl":30,"loop_wait":5,"postgresql":{"parameters":{"work_mem":"8MB"}}})
        );
        assert!(!patch_config(&mut c, &obj(json!({"ttl":"30","gone":null}))), "same text, nothing to delete");
    }

    #[test]
    fn switchover_needs_the_leader_and_failover_a_candidate() {
        let c = cluster("{}", None);
        let e = plan(Action::Switchover, &obj(json!({"candidate":"n2"})), &c, NOW).unwrap_err();
        assert_eq!((e.status, e.body.as_str()), (400, "Switchover could be performed only from a specific leader"));
        let e = plan(Action::Failover, &obj(json!({"leader":"n1"})), &c, NOW).unwrap_err();
        assert_eq!((e.status, e.body.as_str()), (400, "Failover could be performed only to a specific candidate"));
    }

    #[test]
    fn switchover_from_a_member_that_is_not_the_leader_is_412() {
        let c = cluster("{}", None);
        let e = plan(Action::Switchover, &obj(json!({"leader":"n2"})), &c, NOW).unwrap_err();
        assert_eq!((e.status, e.body.as_str()), (412, "leader name does not match"));
        let e = plan(Action::Switchover, &obj(json!({"leader":"n1","candidate":"n9"})), &c, NOW).unwrap_err();
        assert_eq!((e.status, e.body.as_str()), (412, "candidate does not exists"));
    }

    #[test]
    fn switchover_to_any_asks_every_other_member_or_only_sync_ones_in_sync_mode() {
        let c = cluster("{}", None);
        let p = plan(Action::Switchover, &obj(json!({"leader":"n1","candidate":null})), &c, NOW).unwrap();
        assert_eq!(p.candidates.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), ["n2", "n3"]);
        let c = cluster(r#"{"synchronous_mode":true}"#, Some(r#"{"leader":"n1","sync_standby":"n3"}"#));
        let p = plan(Action::Switchover, &obj(json!({"leader":"n1"})), &c, NOW).unwrap();
        assert_eq!(p.candidates.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), ["n3"]);
        let c = cluster(r#"{"synchronous_mode":true}"#, None);
        let e = plan(Action::Switchover, &obj(json!({"leader":"n1"})), &c, NOW).unwrap_err();
        assert_eq!((e.status, e.body.as_str()), (412, "switchover is not possible: can not find sync_standby"));
    }

    #[test]
    fn failover_naming_the_leader_becomes_a_switchover() {
        let c = cluster("{}", None);
        let p = plan(Action::Failover, &obj(json!({"leader":"n1","candidate":"n2"})), &c, NOW).unwrap();
        assert_eq!(p.action, Action::Switchover);
        assert_eq!(p.failover_value(), r#"{"leader":"n1","member":"n2"}"#);
        assert_eq!(p.done_reply("n2"), Reply::new(200, "Successfully switched over to \"n2\""));
        assert_eq!(p.done_reply("n3"), Reply::new(200, "Switched over to \"n3\" instead of \"n2\""));
        let f = plan(Action::Failover, &obj(json!({"candidate":"n2"})), &c, NOW).unwrap();
        assert_eq!(f.done_reply("n2"), Reply::new(200, "Successfully failed over to \"n2\""));
    }

    #[test]
    fn paused_cluster_allows_only_named_unscheduled_switchovers() {
        let c = cluster(r#"{"pause":true}"#, None);
        let e = plan(Action::Switchover, &obj(json!({"leader":"n1"})), &c, NOW).unwrap_err();
        assert_eq!(e.body, "Switchover is possible only to a specific candidate in a paused state");
        let e = plan(
            Action::Switchover,
            &obj(json!({"leader":"n1","candidate":"n2","scheduled_at":"2030-01-01T00:00:00+00:00"})),
            &c,
            NOW,
        )
        .unwrap_err();
        assert_eq!(e.body, "Can't schedule switchover in the paused state");
        assert!(plan(Action::Switchover, &obj(json!({"leader":"n1","candidate":"n2"})), &c, NOW).is_ok());
    }

    #[test]
    fn schedules_need_a_zone_and_a_future_time() {
        let c = cluster("{}", None);
        let at = |s: &str| obj(json!({"leader":"n1","scheduled_at":s}));
        let e = plan(Action::Switchover, &at("2030-01-01T00:00:00"), &c, NOW).unwrap_err();
        assert_eq!(
            (e.status, e.body.as_str()),
            (400, "Timezone information is mandatory for the scheduled switchover")
        );
        let e = plan(Action::Switchover, &at("2020-01-01T00:00:00+00:00"), &c, NOW).unwrap_err();
        assert_eq!((e.status, e.body.as_str()), (422, "Cannot schedule switchover in the past"));
        assert_eq!(plan(Action::Switchover, &at("soon"), &c, NOW).unwrap_err().status, 422);
        let p = plan(Action::Switchover, &at("2030-01-01T00:00:00+00:00"), &c, NOW).unwrap();
        assert_eq!(p.scheduled_reply(), Reply::new(202, "Switchover scheduled"));
        assert!(p.failover_value().contains(r#""scheduled_at":"2030-01-01T00:00:00.000000+00:00""#));
    }

    #[test]
    fn restart_filters_are_validated_like_patroni() {
        let ok = parse_restart(
            &obj(json!({"role":"replica","postgres_version":"15.4","timeout":"30s","restart_pending":true})),
            false,
            NOW,
        )
        .unwrap();
        assert_eq!(ok.role.as_deref(), Some("replica"));
        assert_eq!(ok.postgres_version, Some(150004));
        assert_eq!(ok.timeout, Some(Duration::from_secs(30)));
        assert!(ok.restart_pending);
        let code = |v: Value, paused| parse_restart(&obj(v), paused, NOW).unwrap_err().status;
        assert_eq!(code(json!({"role":"master"}), false), 400);
        assert_eq!(code(json!({"postgres_version":"9"}), false), 400);
        assert_eq!(code(json!({"timeout":0}), false), 400);
        // Too large for a duration, infinite or not a number: refused, never a panic.
        for huge in [
            json!({"timeout":1e300}),
            json!({"timeout":"1e400"}),
            json!({"timeout":"NaN"}),
            json!({"timeout":"99999999999999999999999y"}),
        ] {
            assert_eq!(code(huge.clone(), false), 400, "{huge}");
        }
        // Large but representable: accepted (and added to the command timeout without overflow).
        let big = parse_restart(&obj(json!({"timeout":1e18})), false, NOW).unwrap();
        assert!(
            big.timeout.unwrap().saturating_add(Duration::from_secs(60))
                >= Duration::from_secs(1_000_000_000_000_000_000)
        );
        assert_eq!(code(json!({"bogus":1}), false), 400);
        assert_eq!(code(json!({"schedule":"2020-01-01T00:00:00+00:00"}), false), 422);
        assert_eq!(code(json!({"schedule":"2030-01-01T00:00:00+00:00"}), true), 500);
        let s = parse_restart(&obj(json!({"schedule":"2030-01-01T00:00:00+00:00"})), false, NOW).unwrap();
        assert_eq!(s.schedule_ms, parse_rfc3339_ms("2030-01-01T00:00:00Z"));
        assert_eq!(postgres_version("9.6.3"), Some(90603));
        assert_eq!(postgres_version("10.1"), Some(100001));
        assert_eq!(postgres_version("9.6"), None);
    }

    #[test]
    fn reinitialize_flags_default_to_false() {
        assert_eq!(parse_reinitialize(&Map::new()), (false, false));
        assert_eq!(parse_reinitialize(&obj(json!({"force":true,"from_leader":"true"}))), (true, true));
    }
}
