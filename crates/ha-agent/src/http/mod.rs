//! The REST port: Patroni 4.x's REST API (`../shared/reference/patroni.md` §3) on :8008.
//!
//! - [`health`]: the health verdicts (`/primary`, `/replica?lag=`, `/liveness`, ...), a pure
//!   function of the request and the loop's last [`Snapshot`]; no SQL and no etcd per request.
//! - [`cluster`]: `GET /cluster`, `/history`, `/config` from one etcd read per request.
//! - [`actions`]: the action endpoints' validation (Patroni's codes and texts); the handlers
//!   below then write etcd with compare-and-swap (config, switchover) or hand a
//!   [`Command`] to the HA loop and answer with its reply (restart, reload, reinitialise).
//! - [`access`]: Basic auth, allowlist and client certificates on exactly the unsafe endpoints.
//! - [`server`] and [`tls`]: the accept loop (connection cap, handshake and idle timeouts).
//! - [`probe`]: asking peers for their status (leader race, switchover candidates).

pub mod access;
pub mod actions;
pub mod cluster;
pub mod failsafe;
pub mod health;
pub mod probe;
pub mod server;
pub mod store;
pub mod tls;

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::{Method, Request, Response, StatusCode};
use outrigger_daemon::http::{Body, json, text};
use outrigger_etcd::EtcdError;
use outrigger_schema::{ClusterKey, KeyLayout};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

pub use probe::{peer_status, probe};

use crate::control::{Command, Reply, Snapshot};
use crate::metrics::Metrics;
use access::Access;
use actions::Action;
use cluster::ClusterRead;
use health::{Ask, Now};
use store::Store;

/// Largest request body accepted (config patches, switchover requests).
const MAX_BODY_BYTES: usize = 64 * 1024;
/// How often an immediate switchover's result is polled in etcd.
const SWITCHOVER_POLL: Duration = Duration::from_millis(100);

/// What the API needs to know besides the snapshots.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    pub scope: String,
    pub name: String,
    pub ttl: Duration,
    pub loop_wait: Duration,
    /// How long to wait for a switchover candidate's `GET /patroni`.
    pub peer_timeout: Duration,
    pub access: Access,
    /// How long an action handed to the HA loop may take (beyond a restart's own `timeout`)
    /// before the API answers 503.
    pub command_timeout: Duration,
}

impl ApiSettings {
    /// Settings for tests and tools: Patroni's timings, no access control.
    pub fn new(scope: &str, name: &str) -> Self {
        Self {
            scope: scope.to_owned(),
            name: name.to_owned(),
            ttl: Duration::from_secs(30),
            loop_wait: Duration::from_secs(10),
            peer_timeout: Duration::from_secs(2),
            access: Access::default(),
            command_timeout: Duration::from_secs(60),
        }
    }
}

/// The last snapshot with its status JSON already encoded (health checks send these bytes).
struct Published {
    snap: Snapshot,
    body: Bytes,
}

/// What the handlers answer from.
pub struct ApiState {
    published: RwLock<Arc<Published>>,
    pub metrics: Arc<Metrics>,
    /// Replaced on a config reload.
    settings: RwLock<Arc<ApiSettings>>,
    /// The REST port's TLS settings (`None`: plain HTTP); replaced on a config reload.
    tls: RwLock<Option<Arc<rustls::ServerConfig>>>,
    /// Actions for the HA loop (restart, reload, reinitialise).
    commands: mpsc::Sender<Command>,
    /// The cluster's keys; `None` answers 503 on the endpoints that need them.
    store: Option<Arc<dyn Store>>,
    layout: KeyLayout,
    /// failsafe_mode: accepted `POST /failsafe` and whether this member leads.
    failsafe: Mutex<failsafe::Desk>,
}

/// The connection a request came on.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// A verified TLS client certificate was presented.
    pub client_cert: bool,
}

fn encode_status(s: &Snapshot) -> Bytes {
    let Some(status) = &s.status else {
        return Bytes::from_static(br#"{"state":"starting","role":"uninitialized"}"#);
    };
    let mut v = serde_json::to_value(status).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut v {
        if s.paused {
            m.insert("pause".into(), Value::Bool(true));
        }
        if s.sync_standby {
            m.insert("sync_standby".into(), Value::Bool(true));
        }
        if s.quorum_standby {
            m.insert("quorum_standby".into(), Value::Bool(true));
        }
        if s.failsafe_active {
            m.insert("failsafe_mode_is_active".into(), Value::Bool(true));
        }
    }
    Bytes::from(v.to_string())
}

fn wall_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl ApiState {
    pub fn new(
        settings: ApiSettings,
        metrics: Arc<Metrics>,
        commands: mpsc::Sender<Command>,
        store: Option<Arc<dyn Store>>,
    ) -> Self {
        let layout = KeyLayout::new("service", &settings.scope).unwrap_or_else(|_| {
            KeyLayout::new("service", "invalid").unwrap_or_else(|_| unreachable!("a fixed valid scope"))
        });
        Self::with_layout(settings, metrics, commands, store, layout)
    }

    pub fn with_layout(
        settings: ApiSettings,
        metrics: Arc<Metrics>,
        commands: mpsc::Sender<Command>,
        store: Option<Arc<dyn Store>>,
        layout: KeyLayout,
    ) -> Self {
        let empty = Snapshot::default();
        Self {
            published: RwLock::new(Arc::new(Published { body: encode_status(&empty), snap: empty })),
            metrics,
            settings: RwLock::new(Arc::new(settings)),
            tls: RwLock::new(None),
            commands,
            store,
            layout,
            failsafe: Mutex::new(failsafe::Desk::default()),
        }
    }

    /// failsafe_mode's desk (see [`failsafe::Desk`]).
    pub fn failsafe(&self) -> MutexGuard<'_, failsafe::Desk> {
        self.failsafe.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes the loop's snapshot of the cycle that just ended.
    pub fn publish(&self, s: Snapshot, _now_unix: u64) {
        let p = Arc::new(Published { body: encode_status(&s), snap: s });
        *self.published.write().unwrap_or_else(std::sync::PoisonError::into_inner) = p;
    }

    pub fn settings(&self) -> Arc<ApiSettings> {
        self.settings.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// New settings (a config reload): access rules, timings, timeouts.
    pub fn set_settings(&self, s: ApiSettings) {
        *self.settings.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(s);
    }

    pub fn tls(&self) -> Option<Arc<rustls::ServerConfig>> {
        self.tls.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// New TLS settings for connections accepted from now on.
    pub fn set_tls(&self, tls: Option<Arc<rustls::ServerConfig>>) {
        *self.tls.write().unwrap_or_else(std::sync::PoisonError::into_inner) = tls;
    }

    pub fn snapshot(&self) -> Snapshot {
        self.current().snap.clone()
    }

    fn current(&self) -> Arc<Published> {
        self.published.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    async fn read_cluster(&self) -> Result<ClusterRead, Reply> {
        let store = self.store.as_ref().ok_or_else(|| Reply::new(503, "DCS is not accessible"))?;
        match store.read(self.layout.prefix()).await {
            Ok(kvs) => Ok(ClusterRead::decode(&self.layout, &kvs)),
            Err(e) => {
                tracing::warn!(error = %e, "REST API: read the cluster from etcd");
                Err(Reply::new(503, "DCS is not accessible"))
            }
        }
    }

    fn store(&self) -> Result<&Arc<dyn Store>, Reply> {
        self.store.as_ref().ok_or_else(|| Reply::new(503, "DCS is not accessible"))
    }
}

/// Splits and percent-decodes a query string (`a=1&b=x%20y`); the first value of a key wins.
pub fn parse_query(q: Option<&str>) -> Vec<(String, String)> {
    let Some(q) = q else { return Vec::new() };
    let decode = |s: &str| {
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < b.len() => {
                    match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16) {
                        Ok(v) => {
                            out.push(v);
                            i += 2;
                        }
                        Err(_) => out.push(b'%'),
                    }
                }
                c => out.push(c),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    };
    let mut out: Vec<(String, String)> = Vec::new();
    for pair in q.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = decode(k);
        if !out.iter().any(|(seen, _)| *seen == k) {
            out.push((k, decode(v)));
        }
    }
    out
}

fn first_segment(path: &str) -> &str {
    path.trim_start_matches('/').split('/').next().unwrap_or("")
}

fn reply(r: Reply) -> Response<Body> {
    text(StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), r.body)
}

fn code(c: u16) -> StatusCode {
    StatusCode::from_u16(c).unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
}

fn json_value(status: u16, v: &Value) -> Response<Body> {
    json(code(status), v.to_string())
}

/// Routes one request, as Patroni routes `do_<METHOD>_<first path segment>`.
pub async fn handle(state: Arc<ApiState>, req: Request<hyper::body::Incoming>, conn: ConnInfo) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let seg = first_segment(&path).to_owned();
    let method = req.method().clone();
    match (&method, seg.as_str()) {
        (&Method::GET, "patroni") => {
            state.metrics.rest_status.inc();
            json(StatusCode::OK, state.current().body.clone())
        }
        (&Method::GET, "metrics") => {
            state.metrics.rest_status.inc();
            let p = state.current();
            let body = state.metrics.render_with(&p.snap, Instant::now());
            let mut r = text(StatusCode::OK, body);
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static(outrigger_daemon::metrics::CONTENT_TYPE),
            );
            r
        }
        (&Method::GET, "cluster" | "history" | "config" | "failsafe") => {
            state.metrics.rest_status.inc();
            get_from_dcs(&state, &seg).await
        }
        (&Method::GET | &Method::HEAD | &Method::OPTIONS, _) => {
            state.metrics.rest_health.inc();
            let ask = if method == Method::GET { Ask::Get } else { Ask::CodeOnly };
            let q = parse_query(req.uri().query());
            let p = state.current();
            let now = Now { instant: Instant::now(), wall_ms: wall_ms() };
            let v = health::verdict(ask, &path, &q, &p.snap, state.settings().ttl, now);
            if v.body { json(code(v.code), p.body.clone()) } else { json(code(v.code), Bytes::new()) }
        }
        (&Method::POST, "switchover" | "failover" | "restart" | "reload" | "reinitialize" | "failsafe")
        | (&Method::PATCH | &Method::PUT, "config")
        | (&Method::DELETE, "switchover" | "restart") => {
            state.metrics.rest_action.inc();
            match unsafe_request(&state, req, conn, &method, &seg).await {
                Ok(r) | Err(r) => r,
            }
        }
        _ => {
            state.metrics.rest_other.inc();
            text(StatusCode::NOT_IMPLEMENTED, format!("Unsupported method ('{method}')"))
        }
    }
}

async fn get_from_dcs(state: &ApiState, what: &str) -> Response<Body> {
    if what == "failsafe" && !state.current().snap.failsafe_mode {
        // Patroni answers 502 when failsafe_mode is off.
        return text(StatusCode::BAD_GATEWAY, "Failsafe mode is not enabled");
    }
    let c = match state.read_cluster().await {
        Ok(c) => c,
        Err(r) => return reply(r),
    };
    match what {
        "failsafe" => match &c.failsafe {
            Some(v) => json_value(200, v),
            None => text(StatusCode::BAD_GATEWAY, "no failsafe key in the DCS"),
        },
        "cluster" => json_value(200, &cluster::cluster_json(&c, &state.settings().scope)),
        "history" => json_value(200, c.history.as_ref().unwrap_or(&Value::Array(vec![]))),
        _ => match &c.config {
            Some((v, _)) => json_value(200, v),
            None => text(StatusCode::BAD_GATEWAY, "no configuration in the DCS"),
        },
    }
}

/// The members' addresses (hosts of `api_url` and `conn_url` that are IP literals), for
/// `allowlist_include_members`.
fn member_ips(c: &ClusterRead) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for (_, m) in &c.members {
        if let Some(t) = probe::split_url(&m.api_url)
            && let Ok(ip) = t.host.parse()
        {
            out.push(ip);
        }
        if let Some((h, _)) = crate::pg::text::host_port_from_conn_url(&m.conn_url)
            && let Ok(ip) = h.trim_start_matches('[').trim_end_matches(']').parse()
        {
            out.push(ip);
        }
    }
    out
}

/// Reads the body: `None` when the request has none (no Content-Length, not chunked).
async fn body(req: Request<hyper::body::Incoming>) -> Result<Option<Bytes>, Response<Body>> {
    let has_body = req.headers().contains_key(hyper::header::CONTENT_LENGTH)
        || req.headers().contains_key(hyper::header::TRANSFER_ENCODING);
    if !has_body {
        return Ok(None);
    }
    match Limited::new(req.into_body(), MAX_BODY_BYTES).collect().await {
        Ok(b) => Ok(Some(b.to_bytes())),
        Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
            Err(text(StatusCode::PAYLOAD_TOO_LARGE, "Payload Too Large"))
        }
        Err(_) => Err(text(StatusCode::BAD_REQUEST, "Bad Request")),
    }
}

async fn unsafe_request(
    state: &ApiState,
    req: Request<hyper::body::Incoming>,
    conn: ConnInfo,
    method: &Method,
    seg: &str,
) -> Result<Response<Body>, Response<Body>> {
    let settings = state.settings();
    let a = &settings.access;
    let members =
        if a.needs_members() { state.read_cluster().await.map(|c| member_ips(&c)).unwrap_or_default() } else { vec![] };
    let auth = req.headers().get(hyper::header::AUTHORIZATION).map(|v| v.as_bytes().to_vec());
    if let Err(refusal) = a.check(conn.peer.ip(), &members, conn.client_cert, auth.as_deref()) {
        tracing::info!(peer = %conn.peer, %method, endpoint = seg, reason = refusal.text, "REST API: access refused");
        let mut r = text(code(refusal.status), refusal.text);
        if refusal.challenge {
            r.headers_mut().insert(
                hyper::header::WWW_AUTHENTICATE,
                hyper::header::HeaderValue::from_static("Basic realm=\"Patroni\""),
            );
        }
        return Err(r);
    }
    let body = body(req).await?;
    let body = body.as_deref();
    let r = match (method, seg) {
        (&Method::POST, "failsafe") => {
            let p = state.current();
            let status = p.snap.status.as_ref();
            let primary = status.is_some_and(|s| s.role == outrigger_schema::MemberRole::Primary);
            let lsn = status.and_then(outrigger_schema::StatusJson::wal_position);
            return Ok(failsafe::post(&mut state.failsafe(), p.snap.failsafe_mode, primary, lsn, body));
        }
        (&Method::PATCH, _) => return patch_config(state, body).await,
        (&Method::PUT, _) => return put_config(state, body).await,
        (&Method::POST, "switchover") => switchover(state, Action::Switchover, body).await,
        (&Method::POST, "failover") => switchover(state, Action::Failover, body).await,
        (&Method::DELETE, "switchover") => delete_switchover(state).await,
        (&Method::POST, "restart") => restart(state, body).await,
        (&Method::DELETE, "restart") => {
            let t = state.settings().command_timeout;
            command(state, "restart", t, |reply| Command::CancelRestart { reply }).await
        }
        (&Method::POST, "reload") => {
            let t = state.settings().command_timeout;
            command(state, "reload", t, |reply| Command::Reload { reply }).await
        }
        _ => {
            let req = actions::read_json(body, true)?;
            let (force, from_leader) = actions::parse_reinitialize(&req);
            let t = state.settings().command_timeout;
            command(state, "reinitialize", t, |reply| Command::Reinitialize { force, from_leader, reply }).await
        }
    };
    Ok(reply(r))
}

impl From<Reply> for Response<Body> {
    fn from(r: Reply) -> Self {
        reply(r)
    }
}

/// Hands a command to the HA loop and waits for its answer.
async fn command(
    state: &ApiState,
    what: &str,
    timeout: Duration,
    make: impl FnOnce(oneshot::Sender<Reply>) -> Command,
) -> Reply {
    let (tx, rx) = oneshot::channel();
    let sent = tokio::time::timeout(timeout, state.commands.send(make(tx))).await;
    if !matches!(sent, Ok(Ok(()))) {
        return Reply::new(503, format!("{what} failed: the HA loop does not take commands"));
    }
    match tokio::time::timeout(timeout, rx).await {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => Reply::new(503, format!("{what} failed: the HA loop dropped the request")),
        Err(_) => Reply::new(503, format!("{what} status unknown after {} seconds", timeout.as_secs())),
    }
}

async fn restart(state: &ApiState, body: Option<&[u8]>) -> Reply {
    let req = match actions::read_json(body, true) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let paused = match &state.store {
        Some(_) => match state.read_cluster().await {
            Ok(c) => c.paused(),
            Err(r) => return r,
        },
        None => state.current().snap.paused,
    };
    let r = match actions::parse_restart(&req, paused, wall_ms()) {
        Ok(r) => r,
        Err(e) => return e,
    };
    let timeout = r.timeout.unwrap_or_default().saturating_add(state.settings().command_timeout);
    command(state, "restart", timeout, |reply| Command::Restart { req: r, reply }).await
}

async fn patch_config(state: &ApiState, body: Option<&[u8]>) -> Result<Response<Body>, Response<Body>> {
    let patch = actions::read_json(body, false)?;
    let c = state.read_cluster().await?;
    let Some((Value::Object(current), rev)) = c.config else {
        return Err(text(StatusCode::SERVICE_UNAVAILABLE, "no configuration in the DCS"));
    };
    let mut data = current;
    if actions::patch_config(&mut data, &patch) {
        let value = Value::Object(data.clone()).to_string();
        match state.store()?.put_if_mod_revision(state.layout.key(ClusterKey::Config), rev, value).await {
            Ok(_) => {
                let shown = Value::Object(patch.clone()).to_string();
                tracing::info!(patch = %shown, "REST API: config patched");
            }
            Err(EtcdError::CompareFailed { .. }) => {
                return Err(text(StatusCode::CONFLICT, "Config modification aborted due to concurrent changes"));
            }
            Err(e) => {
                tracing::warn!(error = %e, "REST API: write config");
                return Err(text(StatusCode::SERVICE_UNAVAILABLE, "failed to write config into DCS"));
            }
        }
    }
    Ok(json_value(200, &Value::Object(data)))
}

async fn put_config(state: &ApiState, body: Option<&[u8]>) -> Result<Response<Body>, Response<Body>> {
    let new = Value::Object(actions::read_json(body, false)?);
    let c = state.read_cluster().await?;
    if c.config.as_ref().map(|(v, _)| v) != Some(&new) {
        let key = state.layout.key(ClusterKey::Config);
        if let Err(e) = state.store()?.put(key, new.to_string()).await {
            tracing::warn!(error = %e, "REST API: write config");
            return Err(text(StatusCode::BAD_GATEWAY, "failed to write config into DCS"));
        }
        tracing::info!("REST API: config replaced");
    }
    Ok(json_value(200, &new))
}

async fn switchover(state: &ApiState, action: Action, body: Option<&[u8]>) -> Reply {
    let req = match actions::read_json(body, false) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let c = match state.read_cluster().await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let plan = match actions::plan(action, &req, &c, wall_ms()) {
        Ok(p) => p,
        Err(r) => return r,
    };
    tracing::info!(
        action = plan.action.name(),
        leader = plan.leader.as_deref().unwrap_or(""),
        candidate = plan.candidate.as_deref().unwrap_or(""),
        scheduled = plan.scheduled_at.is_some(),
        "REST API: received a switchover request"
    );
    if plan.scheduled_at.is_none() {
        // A candidate that has only just begun to follow the leader (right after another
        // switchover) is still on the previous timeline and could not promote yet, and one
        // that has just started may still say `starting`; either is given a short while
        // (2 x loop_wait, 2 to 10 s) before the request is refused.
        let timeout = state.settings().peer_timeout;
        let catch_up = (state.settings().loop_wait * 2).clamp(Duration::from_secs(2), Duration::from_secs(10));
        let deadline = tokio::time::Instant::now() + catch_up;
        let mut waited = false;
        loop {
            let asks = plan.candidates.iter().map(|(_, url)| probe::status_of(url, timeout));
            let answers = futures::future::join_all(asks).await;
            if answers.iter().flatten().any(|s| actions::can_take_over(s, plan.leader_timeline)) {
                break;
            }
            let only_behind = answers.iter().flatten().any(actions::may_soon_take_over);
            if !only_behind || tokio::time::Instant::now() >= deadline {
                return plan.impossible("no good candidates have been found");
            }
            if !waited {
                waited = true;
                tracing::info!(
                    leader_timeline = plan.leader_timeline,
                    ?catch_up,
                    "REST API: switchover candidate not running on the leader's timeline yet; waiting for it"
                );
            }
            tokio::time::sleep(SWITCHOVER_POLL).await;
        }
    }
    let store = match state.store() {
        Ok(s) => s,
        Err(r) => return r,
    };
    if let Err(e) = store.put(state.layout.key(ClusterKey::Failover), plan.failover_value()).await {
        tracing::warn!(error = %e, "REST API: write the failover key");
        return Reply::new(503, "failed to write failover key into DCS");
    }
    if plan.scheduled_at.is_some() {
        return plan.scheduled_reply();
    }
    // Wait for the leader key to change hands, as Patroni's poll_failover_result (but
    // polled every 100 ms rather than every second).
    let old = c.leader;
    let deadline = tokio::time::Instant::now() + 2 * state.settings().loop_wait.max(Duration::from_secs(10));
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(SWITCHOVER_POLL).await;
        let Ok(now) = state.read_cluster().await else { continue };
        if let Some(l) = &now.leader
            && Some(l) != old.as_ref()
        {
            return plan.done_reply(l);
        }
        if now.failover.as_ref().is_none_or(|(f, _)| f.is_empty()) {
            return plan.failed_reply();
        }
    }
    plan.unknown_reply()
}

async fn delete_switchover(state: &ApiState) -> Reply {
    let c = match state.read_cluster().await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let Some((_, rev)) = c.scheduled_failover() else {
        return Reply::new(404, "no switchover is scheduled");
    };
    let store = match state.store() {
        Ok(s) => s,
        Err(r) => return r,
    };
    match store.put_if_mod_revision(state.layout.key(ClusterKey::Failover), *rev, "{}".into()).await {
        Ok(_) => Reply::new(200, "scheduled switchover deleted"),
        Err(EtcdError::CompareFailed { .. }) => Reply::new(409, "Conflict"),
        Err(e) => {
            tracing::warn!(error = %e, "REST API: clear the failover key");
            Reply::new(503, "failed to write failover key into DCS")
        }
    }
}

#[cfg(test)]
mod tests;
