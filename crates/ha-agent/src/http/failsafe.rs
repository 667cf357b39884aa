//! failsafe_mode's REST side (Patroni's `docs/dcs_failsafe_mode.rst`), both ends:
//!
//! - a replica answers `POST /failsafe` from a primary that cannot reach etcd: 200 `Accepted`
//!   with its WAL position in the `lsn` header, remembered for the HA loop (it then stays out
//!   of leader races for a ttl); 500 `Running as a leader` when it is, or is about to become,
//!   a primary; 502 when failsafe_mode is off;
//! - the primary sends one round of those POSTs to every member of `/failsafe` at once
//!   ([`round`]), each bounded by a timeout and tried twice, as Patroni does.
//!
//! The desk ([`Desk`]) makes "accept a POST" and "start racing for the leader key" exclusive:
//! a member that begins a race ([`Desk::claim`]) refuses POSTs from then on, and does not race
//! if it accepted one less than a ttl before. Otherwise a POST accepted between a race's
//! decision and its promotion would let the old primary go on past the new one's start.

use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::StatusCode;
use outrigger_daemon::http::{Body, text};
use serde_json::Value;

use super::probe;
use crate::core::PeerRef;

/// How long a primary waits for each member's answer (Patroni: 2 s), twice at most.
pub const POST_TIMEOUT: Duration = Duration::from_secs(2);

/// The replica's side: the last accepted POST, and whether this member leads or races.
#[derive(Debug, Default)]
pub struct Desk {
    last: Option<(String, Instant)>,
    leading: bool,
}

impl Desk {
    /// The last `POST /failsafe` accepted: from which leader, when.
    pub fn last(&self) -> Option<(String, Instant)> {
        self.last.clone()
    }

    /// Before racing for (or taking) the leader key: refused, with the leader's name, when a
    /// POST from another member was accepted less than `ttl` ago and after `judged` (the one
    /// the decision already weighed, in the HA loop's memory, which also knows when a later
    /// leader key superseded it); otherwise POSTs are refused from now on, until
    /// [`Desk::set_leading`] says this member no longer leads.
    pub fn claim(&mut self, me: &str, ttl: Duration, now: Instant, judged: Option<Instant>) -> Result<(), String> {
        if let Some((leader, at)) = &self.last
            && leader != me
            && Some(*at) != judged
            && now.saturating_duration_since(*at) < ttl
        {
            return Err(leader.clone());
        }
        self.leading = true;
        Ok(())
    }

    /// After each cycle: whether this member holds the leader key or runs as a primary.
    pub fn set_leading(&mut self, leading: bool) {
        self.leading = leading;
    }

    /// A POST from `leader`: accepted unless this member leads (or is about to).
    fn accept(&mut self, leader: &str, primary: bool, now: Instant) -> bool {
        if self.leading || primary {
            return false;
        }
        self.last = Some((leader.to_owned(), now));
        true
    }
}

/// `POST /failsafe` (access already checked). `failsafe_mode`, `primary` and `lsn` come from
/// the loop's last snapshot.
pub fn post(desk: &mut Desk, failsafe_mode: bool, primary: bool, lsn: Option<u64>, body: Option<&[u8]>) -> Response {
    if !failsafe_mode {
        return text(StatusCode::BAD_GATEWAY, "Failsafe mode is not enabled");
    }
    let leader = body
        .and_then(|b| serde_json::from_slice::<Value>(b).ok())
        .and_then(|v| v.get("name").and_then(Value::as_str).map(str::to_owned));
    let Some(leader) = leader.filter(|l| !l.is_empty()) else {
        return text(StatusCode::BAD_REQUEST, "Bad request: a JSON object with the leader's \"name\" is expected");
    };
    if !desk.accept(&leader, primary, Instant::now()) {
        return text(StatusCode::INTERNAL_SERVER_ERROR, "Running as a leader");
    }
    let mut r = text(StatusCode::OK, "Accepted");
    if let Some(lsn) = lsn
        && let Ok(v) = hyper::header::HeaderValue::from_str(&lsn.to_string())
    {
        r.headers_mut().insert("lsn", v);
    }
    r
}

type Response = hyper::Response<Body>;

/// The body a primary posts: its name and addresses, as Patroni sends them.
pub fn body(name: &str, conn_url: &str, api_url: &str) -> Bytes {
    Bytes::from(serde_json::json!({"name": name, "conn_url": conn_url, "api_url": api_url}).to_string())
}

/// One round: `POST /failsafe` to every member at once, each tried twice within `timeout`
/// per try. Per member: `Ok` when it answered 200, else why not.
pub async fn round(
    members: &[PeerRef],
    body: &Bytes,
    auth: Option<&str>,
    timeout: Duration,
) -> Vec<(String, Result<(), String>)> {
    let asks = members.iter().map(|m| async move {
        let mut why = String::new();
        for _ in 0..2 {
            let post = (body.clone(), auth);
            match tokio::time::timeout(timeout, probe::call(&m.api_url, Some("/failsafe"), Some(&post))).await {
                Ok(Ok(a)) if a.status == 200 => return (m.name.clone(), Ok(())),
                // A refusal is an answer: asking again changes nothing.
                Ok(Ok(a)) => {
                    let text = String::from_utf8_lossy(&a.body).chars().take(100).collect::<String>();
                    return (m.name.clone(), Err(format!("answered {}: {}", a.status, text.trim())));
                }
                Ok(Err(e)) => why = format!("{e:#}"),
                Err(_) => why = format!("no answer within {timeout:?}"),
            }
        }
        (m.name.clone(), Err(why))
    });
    futures::future::join_all(asks).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replica_accepts_refuses_while_it_leads_and_a_race_waits_for_an_accepted_post() {
        let mut d = Desk::default();
        let t0 = Instant::now();
        let ttl = Duration::from_secs(30);
        assert!(d.accept("n1", false, t0));
        // Accepted less than a ttl ago, after what the decision weighed: no race.
        assert_eq!(d.claim("n2", ttl, t0 + Duration::from_secs(29), None), Err("n1".to_owned()));
        // The decision already weighed that POST (and found it superseded): it may race.
        assert_eq!(d.claim("n2", ttl, t0 + Duration::from_secs(29), Some(t0)), Ok(()));
        d.set_leading(false);
        // After a ttl it may race, and from then on refuses POSTs.
        assert_eq!(d.claim("n2", ttl, t0 + ttl, None), Ok(()));
        assert!(!d.accept("n1", false, t0 + ttl));
        d.set_leading(false);
        assert!(d.accept("n1", false, t0 + ttl));
        // A running primary refuses.
        assert!(!d.accept("n1", true, t0 + ttl));
    }

    #[test]
    fn post_answers_as_patroni_does() {
        let mut d = Desk::default();
        assert_eq!(post(&mut d, false, false, None, Some(br#"{"name":"n1"}"#)).status(), 502);
        assert_eq!(post(&mut d, true, false, None, Some(b"garbage")).status(), 400);
        assert_eq!(post(&mut d, true, false, None, None).status(), 400);
        let r = post(&mut d, true, false, Some(1234), Some(br#"{"name":"n1","api_url":"x"}"#));
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers().get("lsn").unwrap(), "1234");
        assert_eq!(post(&mut d, true, true, None, Some(br#"{"name":"n1"}"#)).status(), 500);
        assert_eq!(d.last().map(|(n, _)| n), Some("n1".to_owned()));
    }
}
