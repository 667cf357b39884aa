//! The REST port: for now the part peers need during a leader race (`GET /patroni`), plus
//! `/health`, `/liveness` and `/metrics`. The full Patroni API lands with its own issue; new
//! endpoints go into [`route`].
//!
//! Answers come from a status the HA loop publishes after every cycle, never from SQL run per
//! request, so a flood of health checks cannot slow PostgreSQL or each other down.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use outrigger_daemon::http::{Body, json, text};
use outrigger_schema::StatusJson;

use tokio::sync::mpsc;

use crate::control::{Command, Snapshot};
use crate::core::{PeerProbe, PeerRef, PeerStatus, Tags};
use crate::metrics::Metrics;

/// What the HTTP handlers answer from.
pub struct ApiState {
    snapshot: RwLock<Snapshot>,
    /// When the HA loop last finished a cycle (Unix seconds), for `/liveness`.
    last_cycle: RwLock<u64>,
    pub metrics: Arc<Metrics>,
    /// `/liveness` fails after this long without a cycle.
    pub liveness_limit: Duration,
    /// Actions for the HA loop (restart, reload, reinitialise).
    pub commands: mpsc::Sender<Command>,
}

impl ApiState {
    pub fn new(metrics: Arc<Metrics>, liveness_limit: Duration, commands: mpsc::Sender<Command>) -> Self {
        Self {
            snapshot: RwLock::new(Snapshot::default()),
            last_cycle: RwLock::new(0),
            metrics,
            liveness_limit,
            commands,
        }
    }

    pub fn publish(&self, s: Snapshot, now_unix: u64) {
        *self.snapshot.write().unwrap_or_else(std::sync::PoisonError::into_inner) = s;
        *self.last_cycle.write().unwrap_or_else(std::sync::PoisonError::into_inner) = now_unix;
    }

    pub fn snapshot(&self) -> Snapshot {
        self.snapshot.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    fn status(&self) -> Option<StatusJson> {
        self.snapshot.read().unwrap_or_else(std::sync::PoisonError::into_inner).status.clone()
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Routes one request. HEAD and OPTIONS get the GET status without a body, as Patroni does.
pub fn route(state: &ApiState, method: &Method, path: &str) -> Response<Body> {
    let status = state.status();
    let body = status
        .as_ref()
        .map(StatusJson::encode)
        .unwrap_or_else(|| r#"{"state":"starting","role":"uninitialized"}"#.to_owned());
    let answer = |code: StatusCode| {
        if method == Method::GET { json(code, body.clone()) } else { json(code, Bytes::new()) }
    };
    match path {
        "/patroni" => answer(StatusCode::OK),
        "/health" => {
            let running = status.as_ref().is_some_and(|s| s.state == "running");
            answer(if running { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE })
        }
        "/liveness" => {
            let last = *state.last_cycle.read().unwrap_or_else(std::sync::PoisonError::into_inner);
            let alive = unix_now().saturating_sub(last) <= state.liveness_limit.as_secs().max(1);
            let code = if alive { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
            json(code, Bytes::new())
        }
        "/metrics" if method == Method::GET => {
            let mut r = text(StatusCode::OK, state.metrics.render());
            if let Ok(v) = hyper::header::HeaderValue::from_str(outrigger_daemon::metrics::CONTENT_TYPE) {
                r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
            }
            r
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

pub async fn handle(state: Arc<ApiState>, req: Request<hyper::body::Incoming>) -> Response<Body> {
    match *req.method() {
        Method::GET | Method::HEAD | Method::OPTIONS => route(&state, req.method(), req.uri().path()),
        _ => text(StatusCode::NOT_IMPLEMENTED, "not implemented\n"),
    }
}

// ---- peer probes ----

/// Splits `http://host:port/path`.
fn split_url(url: &str) -> Option<(String, String)> {
    let rest = url.strip_prefix("http://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/patroni"),
    };
    let authority = if authority.contains(':') { authority.to_owned() } else { format!("{authority}:80") };
    Some((authority, path.to_owned()))
}

async fn fetch(url: &str) -> anyhow::Result<StatusJson> {
    let (authority, path) = split_url(url).ok_or_else(|| anyhow::anyhow!("unsupported api_url {url:?}"))?;
    let stream = tokio::net::TcpStream::connect(&authority).await?;
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = Request::get(path)
        .header(hyper::header::HOST, authority)
        .header(hyper::header::USER_AGENT, "ha-agent")
        .body(Empty::<Bytes>::new())?;
    let resp = sender.send_request(req).await?;
    // Patroni answers 200 or 503 with the status JSON; both carry it.
    let body = Limited::new(resp.into_body(), 256 * 1024)
        .collect()
        .await
        .map_err(|e| anyhow::anyhow!("read body: {e}"))?
        .to_bytes();
    Ok(StatusJson::decode(&body)?)
}

/// A peer's status in core terms; `None` when the answer has no WAL position (Patroni treats
/// such a member as unreachable).
pub fn peer_status(s: &StatusJson) -> Option<PeerStatus> {
    Some(PeerStatus {
        primary: !s.in_recovery(),
        wal_position: s.wal_position()?,
        timeline: s.timeline,
        tags: Tags::from_json(&s.tags),
        watchdog_failed: s.watchdog_failed.unwrap_or(false),
    })
}

/// Asks every peer in parallel, each bounded by `timeout`.
pub async fn probe(peers: &[PeerRef], timeout: Duration) -> Vec<PeerProbe> {
    let asks = peers.iter().map(|p| async move {
        let status = match tokio::time::timeout(timeout, fetch(&p.api_url)).await {
            Ok(Ok(s)) => peer_status(&s),
            Ok(Err(e)) => {
                tracing::debug!(peer = %p.name, error = %e, "peer did not answer usefully");
                None
            }
            Err(_) => {
                tracing::debug!(peer = %p.name, ?timeout, "peer did not answer in time");
                None
            }
        };
        PeerProbe { name: p.name.clone(), status }
    });
    futures::future::join_all(asks).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use outrigger_schema::{MemberRole, XlogStatus};
    use serde_json::Map;

    fn status(role: MemberRole) -> StatusJson {
        StatusJson {
            state: "running".into(),
            postmaster_start_time: None,
            role,
            server_version: Some(150018),
            xlog: Some(XlogStatus { location: Some(42), ..XlogStatus::default() }),
            timeline: Some(2),
            replication_state: None,
            cluster_unlocked: None,
            dcs_last_seen: None,
            tags: Map::new(),
            database_system_identifier: None,
            pending_restart: None,
            watchdog_failed: None,
            patroni: None,
            extra: Map::new(),
        }
    }

    fn snapshot(s: StatusJson) -> Snapshot {
        Snapshot { status: Some(s), ..Snapshot::default() }
    }

    #[test]
    fn urls_are_split_for_the_request() {
        assert_eq!(split_url("http://10.0.0.2:8008/patroni"), Some(("10.0.0.2:8008".into(), "/patroni".into())));
        assert_eq!(split_url("http://h/patroni"), Some(("h:80".into(), "/patroni".into())));
        assert_eq!(split_url("https://h:8008/patroni"), None);
    }

    #[tokio::test]
    async fn peers_are_asked_over_http_and_silent_ones_time_out() {
        let metrics = Arc::new(Metrics::new("b", "n2"));
        let state = Arc::new(ApiState::new(metrics, Duration::from_secs(10), mpsc::channel(1).0));
        state.publish(snapshot(status(MemberRole::Primary)), unix_now());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        let s = state.clone();
        tokio::spawn(outrigger_daemon::http::serve(
            listener,
            outrigger_daemon::http::Limits::default(),
            move |req, _| handle(s.clone(), req),
            stop.clone(),
        ));
        // A listener that never answers stands for a frozen peer.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let peers = vec![
            PeerRef { name: "n2".into(), api_url: format!("http://{addr}/patroni") },
            PeerRef { name: "n3".into(), api_url: format!("http://{}/patroni", silent.local_addr().unwrap()) },
        ];
        let started = std::time::Instant::now();
        let answers = probe(&peers, Duration::from_millis(300)).await;
        assert!(started.elapsed() < Duration::from_secs(2));
        let n2 = answers[0].status.as_ref().expect("n2 answered");
        assert!(n2.primary);
        assert_eq!(n2.wal_position, 42);
        assert_eq!(answers[1].status, None);
        stop.cancel();
    }

    #[test]
    fn head_gets_the_code_without_a_body_and_health_follows_the_state() {
        let state = ApiState::new(Arc::new(Metrics::new("b", "n1")), Duration::from_secs(10), mpsc::channel(1).0);
        let mut s = status(MemberRole::Replica);
        s.state = "stopped".into();
        state.publish(snapshot(s), unix_now());
        assert_eq!(route(&state, &Method::GET, "/health").status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(route(&state, &Method::HEAD, "/patroni").status(), StatusCode::OK);
        assert_eq!(route(&state, &Method::GET, "/nope").status(), StatusCode::NOT_FOUND);
    }
}
