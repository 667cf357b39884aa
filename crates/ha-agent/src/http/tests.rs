//! The REST port end to end on loopback: a real server on 127.0.0.1 with an in-memory etcd
//! ([`MemStore`]) and a stand-in HA loop answering commands.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use outrigger_schema::{MemberRole, StatusJson, XlogStatus};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::access::Access;
use super::server::Limits;
use super::store::{MemStore, Store};
use super::*;

const PREFIX: &str = "/service/b";

/// A running member's status: a primary at LSN 1000, or a replica streaming up to it.
fn status(role: MemberRole) -> StatusJson {
    let primary = role == MemberRole::Primary;
    StatusJson {
        xlog: Some(if primary {
            XlogStatus { location: Some(1000), ..XlogStatus::default() }
        } else {
            XlogStatus { received_location: Some(1000), replayed_location: Some(1000), ..XlogStatus::default() }
        }),
        replication_state: (!primary).then(|| "streaming".to_owned()),
        ..health::test_status(role, "running")
    }
}

fn snapshot(role: MemberRole) -> Snapshot {
    let primary = role == MemberRole::Primary;
    Snapshot {
        status: Some(status(role)),
        leader_until: primary.then(|| Instant::now() + Duration::from_secs(3600)),
        leader_optime: Some(1000),
        maximum_lag_on_failover: 1 << 20,
        cycle_started_ms: wall_ms(),
        ..Snapshot::default()
    }
}

/// A member key whose API is at `api`.
fn member_json(api: &str) -> String {
    format!(
        r#"{{"conn_url":"postgres://127.0.0.1:5432/postgres","api_url":"http://{api}/patroni","state":"running","role":"replica","version":"4.1.4"}}"#
    )
}

struct Server {
    addr: SocketAddr,
    state: Arc<ApiState>,
    store: Arc<MemStore>,
    stop: CancellationToken,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A stand-in HA loop: answers every command with 200 and what it was asked.
fn fake_loop(mut rx: mpsc::Receiver<Command>) {
    tokio::spawn(async move {
        while let Some(cmd) = rx.recv().await {
            let (reply, what) = match cmd {
                Command::Restart { req, reply } => (reply, format!("restart role={}", req.role.unwrap_or_default())),
                Command::CancelRestart { reply } => (reply, "cancel restart".to_owned()),
                Command::Reload { reply } => (reply, "reload".to_owned()),
                Command::Reinitialize { force, reply, .. } => (reply, format!("reinitialize force={force}")),
            };
            let _ = reply.send(Reply::new(200, what));
        }
    });
}

async fn start_with(role: MemberRole, access: Access, limits: Limits) -> Server {
    let store = Arc::new(MemStore::default());
    let mut settings = ApiSettings::new("b", "n1");
    settings.access = access;
    settings.peer_timeout = Duration::from_millis(500);
    settings.command_timeout = Duration::from_secs(5);
    let (tx, rx) = mpsc::channel(4);
    fake_loop(rx);
    let dyn_store: Arc<dyn Store> = store.clone();
    let state = Arc::new(ApiState::new(settings, Arc::new(Metrics::new("b", "n1")), tx, Some(dyn_store)));
    state.publish(snapshot(role), 0);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(server::serve(listener, limits, state.clone(), stop.clone()));
    store.set(&format!("{PREFIX}/leader"), "n1");
    store.set(&format!("{PREFIX}/config"), r#"{"ttl":30,"postgresql":{"parameters":{"work_mem":"4MB"}}}"#);
    store.set(&format!("{PREFIX}/members/n1"), &member_json(&addr.to_string()));
    Server { addr, state, store, stop }
}

async fn start(role: MemberRole) -> Server {
    start_with(role, Access::default(), Limits::default()).await
}

/// One HTTP/1.1 exchange with `Connection: close`: (status, head, body).
async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", b.len()));
    }
    req.push_str("\r\n");
    req.push_str(body.unwrap_or(""));
    // A server may answer (413) and close before reading everything: ignore write errors.
    let _ = s.write_all(req.as_bytes()).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut out)).await.expect("an answer in time");
    let out = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let code = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, head.to_owned(), body.to_owned())
}

async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let (c, _, b) = call(addr, "GET", path, &[], None).await;
    (c, b)
}

#[tokio::test]
async fn every_health_endpoint_answers_by_role() {
    let p = start(MemberRole::Primary).await;
    let r = start(MemberRole::Replica).await;
    // (path, on the primary, on a replica)
    let table = [
        ("/", 200, 503),
        ("/primary", 200, 503),
        ("/read-write", 200, 503),
        ("/master", 200, 503),
        ("/leader", 200, 503),
        ("/standby-leader", 503, 503),
        ("/standby_leader", 503, 503),
        ("/replica", 503, 200),
        ("/replica?lag=16MB", 503, 200),
        ("/replica?replication_state=streaming", 503, 200),
        ("/replica?tag_zone=a", 503, 503),
        ("/read-only", 200, 200),
        ("/sync", 503, 503),
        ("/synchronous", 503, 503),
        ("/async", 503, 200),
        ("/asynchronous", 503, 200),
        ("/health", 200, 200),
        ("/liveness", 200, 200),
        ("/readiness", 200, 200),
        ("/patroni", 200, 200),
        ("/unknown", 503, 503),
    ];
    for (path, on_primary, on_replica) in table {
        assert_eq!(get(p.addr, path).await.0, on_primary, "GET {path} on the primary");
        assert_eq!(get(r.addr, path).await.0, on_replica, "GET {path} on a replica");
    }
    let (_, body) = get(p.addr, "/primary").await;
    let s: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(s["role"], "primary");
    assert_eq!(s["xlog"]["location"], 1000);
}

#[tokio::test]
async fn head_and_options_answer_the_code_without_a_body() {
    let p = start(MemberRole::Primary).await;
    for (method, path, want) in [("HEAD", "/primary", 200), ("OPTIONS", "/", 200), ("OPTIONS", "/replica", 503)] {
        let (code, _, body) = call(p.addr, method, path, &[], None).await;
        assert_eq!(code, want, "{method} {path}");
        assert!(body.is_empty(), "{method} {path}: {body}");
    }
}

#[tokio::test]
async fn cluster_history_and_config_come_from_etcd() {
    let s = start(MemberRole::Primary).await;
    s.store.set(
        &format!("{PREFIX}/history"),
        r#"[[1,25165984,"no recovery target specified","2026-11-24T10:00:00+00:00","n1"]]"#,
    );
    let (code, body) = get(s.addr, "/cluster").await;
    assert_eq!(code, 200);
    let c: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(c["members"][0]["name"], "n1");
    assert_eq!(c["members"][0]["role"], "leader");
    assert_eq!(c["scope"], "b");
    let (code, body) = get(s.addr, "/history").await;
    assert_eq!(code, 200);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&body).unwrap()[0][0], 1);
    let (code, body) = get(s.addr, "/config").await;
    assert_eq!(code, 200);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&body).unwrap()["ttl"], 30);
    s.store.remove(&format!("{PREFIX}/config"));
    assert_eq!(get(s.addr, "/config").await.0, 502);
}

#[tokio::test]
async fn metrics_show_patroni_names_from_the_snapshot() {
    let s = start(MemberRole::Primary).await;
    let (code, body) = get(s.addr, "/metrics").await;
    assert_eq!(code, 200);
    assert!(body.contains("patroni_primary{scope=\"b\",name=\"n1\"} 1"), "{body}");
    assert!(body.contains("ha_agent_rest_requests_total"), "{body}");
}

#[tokio::test]
async fn patch_config_merges_and_put_replaces() {
    let s = start(MemberRole::Primary).await;
    let patch = r#"{"pause":true,"postgresql":{"parameters":{"work_mem":"8MB"}},"ttl":null}"#;
    let (code, _, body) = call(s.addr, "PATCH", "/config", &[], Some(patch)).await;
    assert_eq!(code, 200, "{body}");
    let stored: serde_json::Value = serde_json::from_str(&s.store.value(&format!("{PREFIX}/config")).unwrap()).unwrap();
    assert_eq!(stored, json!({"pause":true,"postgresql":{"parameters":{"work_mem":"8MB"}}}));
    let (code, _, _) = call(s.addr, "PUT", "/config", &[], Some(r#"{"loop_wait":5}"#)).await;
    assert_eq!(code, 200);
    assert_eq!(s.store.value(&format!("{PREFIX}/config")).unwrap(), r#"{"loop_wait":5}"#);
}

/// A store whose config changes between the API's read and its compare-and-swap.
struct Racing(Arc<MemStore>);

impl Store for Racing {
    fn read(&self, prefix: String) -> futures::future::BoxFuture<'_, Result<Vec<outrigger_etcd::Kv>, EtcdError>> {
        self.0.read(prefix)
    }

    fn put(&self, key: String, value: String) -> futures::future::BoxFuture<'_, Result<(), EtcdError>> {
        self.0.put(key, value)
    }

    fn put_if_mod_revision(
        &self,
        key: String,
        rev: i64,
        value: String,
    ) -> futures::future::BoxFuture<'_, Result<i64, EtcdError>> {
        self.0.set(&key, r#"{"changed":"meanwhile"}"#);
        self.0.put_if_mod_revision(key, rev, value)
    }
}

#[tokio::test]
async fn patch_config_after_a_concurrent_change_is_409() {
    let mem = Arc::new(MemStore::default());
    mem.set(&format!("{PREFIX}/config"), r#"{"ttl":30}"#);
    let store: Arc<dyn Store> = Arc::new(Racing(mem.clone()));
    let state =
        ApiState::new(ApiSettings::new("b", "n1"), Arc::new(Metrics::new("b", "n1")), mpsc::channel(1).0, Some(store));
    let r = patch_config(&state, Some(br#"{"pause":true}"#)).await.unwrap_err();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert_eq!(mem.value(&format!("{PREFIX}/config")).unwrap(), r#"{"changed":"meanwhile"}"#);
}

/// The stand-in for the cluster: once the failover key names `to`, `to` takes the leader key
/// (polled for at most 10 s).
fn stand_in_cluster_moves_the_leader_to(store: &Arc<MemStore>, to: &'static str) {
    let store = store.clone();
    tokio::spawn(async move {
        for _ in 0..500 {
            if store.value(&format!("{PREFIX}/failover")).is_some_and(|v| v.contains(&format!("\"member\":\"{to}\""))) {
                store.set(&format!("{PREFIX}/leader"), to);
                store.set(&format!("{PREFIX}/failover"), "{}");
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
}

#[tokio::test]
async fn immediate_switchover_answers_200_once_the_leader_key_moves() {
    let s = start(MemberRole::Primary).await;
    // n2's API answers as a running replica.
    let n2 = start(MemberRole::Replica).await;
    s.store.set(&format!("{PREFIX}/members/n2"), &member_json(&n2.addr.to_string()));
    stand_in_cluster_moves_the_leader_to(&s.store, "n2");
    let (code, _, body) = call(s.addr, "POST", "/switchover", &[], Some(r#"{"leader":"n1","candidate":"n2"}"#)).await;
    assert_eq!((code, body.as_str()), (200, "Successfully switched over to \"n2\""));
}

#[tokio::test]
async fn switchover_waits_for_a_candidate_still_on_the_previous_timeline() {
    let s = start(MemberRole::Primary).await;
    let leader_on_tl2 = member_json(&s.addr.to_string()).replace(r#""version""#, r#""timeline":2,"version""#);
    s.store.set(&format!("{PREFIX}/members/n1"), &leader_on_tl2);
    // n2 answers as a replica still on timeline 1 (it has just begun to follow n1), and
    // reports timeline 2 a little later.
    let n2 = start(MemberRole::Replica).await;
    s.store.set(&format!("{PREFIX}/members/n2"), &member_json(&n2.addr.to_string()));
    let n2_state = n2.state.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let mut snap = snapshot(MemberRole::Replica);
        snap.status.as_mut().expect("status").timeline = Some(2);
        n2_state.publish(snap, 0);
    });
    stand_in_cluster_moves_the_leader_to(&s.store, "n2");
    let t0 = Instant::now();
    let (code, _, body) = call(s.addr, "POST", "/switchover", &[], Some(r#"{"leader":"n1","candidate":"n2"}"#)).await;
    assert_eq!((code, body.as_str()), (200, "Successfully switched over to \"n2\""));
    assert!(t0.elapsed() >= Duration::from_millis(400), "the failover key was written only once n2 caught up");
}

#[tokio::test]
async fn switchover_waits_for_a_candidate_that_still_says_starting() {
    // Streaming has begun, but the candidate's agent has not yet published that its
    // PostgreSQL is running (up to one of its loops): wait for it rather than refuse.
    let s = start(MemberRole::Primary).await;
    let n2 = start(MemberRole::Replica).await;
    let mut starting = snapshot(MemberRole::Replica);
    starting.status.as_mut().expect("status").state = "starting".into();
    n2.state.publish(starting, 0);
    s.store.set(&format!("{PREFIX}/members/n2"), &member_json(&n2.addr.to_string()));
    let n2_state = n2.state.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(400)).await;
        n2_state.publish(snapshot(MemberRole::Replica), 0);
    });
    stand_in_cluster_moves_the_leader_to(&s.store, "n2");
    let t0 = Instant::now();
    let (code, _, body) = call(s.addr, "POST", "/switchover", &[], Some(r#"{"leader":"n1","candidate":"n2"}"#)).await;
    assert_eq!((code, body.as_str()), (200, "Successfully switched over to \"n2\""));
    assert!(t0.elapsed() >= Duration::from_millis(400), "the failover key was written only once n2 said running");
}

#[tokio::test]
async fn switchover_without_a_good_candidate_is_412() {
    let s = start(MemberRole::Primary).await;
    // n2 is listed, but its API never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    s.store.set(&format!("{PREFIX}/members/n2"), &member_json(&silent.local_addr().unwrap().to_string()));
    let (code, _, body) = call(s.addr, "POST", "/switchover", &[], Some(r#"{"leader":"n1"}"#)).await;
    assert_eq!((code, body.as_str()), (412, "switchover is not possible: no good candidates have been found"));
    assert_eq!(s.store.value(&format!("{PREFIX}/failover")), None, "nothing written");
}

#[tokio::test]
async fn scheduled_switchover_is_202_and_can_be_deleted() {
    let s = start(MemberRole::Primary).await;
    s.store.set(&format!("{PREFIX}/members/n2"), &member_json("127.0.0.1:1"));
    let body = r#"{"leader":"n1","candidate":"n2","scheduled_at":"2099-01-01T00:00:00+00:00"}"#;
    let (code, _, text) = call(s.addr, "POST", "/switchover", &[], Some(body)).await;
    assert_eq!((code, text.as_str()), (202, "Switchover scheduled"));
    let (_, c) = get(s.addr, "/cluster").await;
    let c: serde_json::Value = serde_json::from_str(&c).unwrap();
    assert_eq!(c["scheduled_switchover"]["to"], "n2");
    let (code, _, text) = call(s.addr, "DELETE", "/switchover", &[], None).await;
    assert_eq!((code, text.as_str()), (200, "scheduled switchover deleted"));
    let (code, _, _) = call(s.addr, "DELETE", "/switchover", &[], None).await;
    assert_eq!(code, 404);
}

#[tokio::test]
async fn loop_actions_are_validated_then_answered_by_the_loop() {
    let s = start(MemberRole::Replica).await;
    let (code, _, body) = call(s.addr, "POST", "/restart", &[], Some(r#"{"role":"replica"}"#)).await;
    assert_eq!((code, body.as_str()), (200, "restart role=replica"));
    let (code, _, _) = call(s.addr, "POST", "/restart", &[], Some(r#"{"role":"master"}"#)).await;
    assert_eq!(code, 400);
    let (code, _, body) = call(s.addr, "DELETE", "/restart", &[], None).await;
    assert_eq!((code, body.as_str()), (200, "cancel restart"));
    let (code, _, body) = call(s.addr, "POST", "/reload", &[], None).await;
    assert_eq!((code, body.as_str()), (200, "reload"));
    let (code, _, body) = call(s.addr, "POST", "/reinitialize", &[], Some(r#"{"force":true}"#)).await;
    assert_eq!((code, body.as_str()), (200, "reinitialize force=true"));
}

#[tokio::test]
async fn a_loop_that_does_not_answer_gives_503_not_a_hang() {
    let (tx, _rx) = mpsc::channel(4);
    let state = ApiState::new(ApiSettings::new("b", "n1"), Arc::new(Metrics::new("b", "n1")), tx, None);
    let r = command(&state, "reload", Duration::from_millis(200), |reply| Command::Reload { reply }).await;
    assert_eq!(r.status, 503);
}

const UNSAFE: [(&str, &str, Option<&str>); 9] = [
    ("PATCH", "/config", Some(r#"{"pause":true}"#)),
    ("PUT", "/config", Some(r#"{"ttl":30}"#)),
    ("POST", "/switchover", Some(r#"{"leader":"n1"}"#)),
    ("POST", "/failover", Some(r#"{"candidate":"n2"}"#)),
    ("DELETE", "/switchover", None),
    ("POST", "/restart", Some("{}")),
    ("DELETE", "/restart", None),
    ("POST", "/reload", None),
    ("POST", "/reinitialize", Some("{}")),
];

const SAFE: [&str; 12] = [
    "/",
    "/primary",
    "/replica",
    "/read-only",
    "/health",
    "/liveness",
    "/readiness",
    "/patroni",
    "/cluster",
    "/history",
    "/config",
    "/metrics",
];

#[tokio::test]
async fn basic_auth_is_required_exactly_on_the_action_endpoints() {
    let access = Access { basic: Some(Access::basic_header("admin", "secret")), ..Access::default() };
    let s = start_with(MemberRole::Primary, access, Limits::default()).await;
    let wrong = Access::basic_header("admin", "guess");
    for (m, p, b) in UNSAFE {
        let (code, head, _) = call(s.addr, m, p, &[], b).await;
        assert_eq!(code, 401, "{m} {p} without credentials");
        assert!(head.to_ascii_lowercase().contains("www-authenticate: basic realm=\"patroni\""), "{m} {p}: {head}");
        assert_eq!(call(s.addr, m, p, &[("Authorization", &wrong)], b).await.0, 401, "{m} {p} wrong password");
    }
    for p in SAFE {
        for m in ["GET", "HEAD", "OPTIONS"] {
            assert_ne!(call(s.addr, m, p, &[], None).await.0, 401, "{m} {p} must stay open");
        }
    }
    let right = Access::basic_header("admin", "secret");
    assert_eq!(call(s.addr, "POST", "/reload", &[("Authorization", &right)], None).await.0, 200);
}

#[tokio::test]
async fn allowlist_refuses_other_addresses_on_action_endpoints_only() {
    let access = Access { allowlist: vec![access::Cidr::parse("10.9.9.0/24").unwrap()], ..Access::default() };
    let s = start_with(MemberRole::Primary, access, Limits::default()).await;
    for (m, p, b) in UNSAFE {
        let (code, _, body) = call(s.addr, m, p, &[], b).await;
        assert_eq!((code, body.as_str()), (403, "Access is denied"), "{m} {p}");
    }
    assert_eq!(get(s.addr, "/primary").await.0, 200);
    // The members' own addresses, with allowlist_include_members (n1's api_url is loopback).
    let access = Access { allowlist_include_members: true, ..Access::default() };
    let s = start_with(MemberRole::Primary, access, Limits::default()).await;
    assert_eq!(call(s.addr, "POST", "/reload", &[], None).await.0, 200);
}

#[tokio::test]
async fn malformed_and_oversized_requests_get_4xx_and_the_server_keeps_answering() {
    let s = start(MemberRole::Primary).await;
    // Not HTTP at all (a TLS hello on the plain port).
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    c.write_all(b"\x16\x03\x01garbage\r\n\r\n").await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut out)).await;
    let out = String::from_utf8_lossy(&out);
    assert!(out.is_empty() || out.starts_with("HTTP/1.1 4"), "{out}");
    // A huge header.
    let big = "a".repeat(64 * 1024);
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    let _ = c.write_all(format!("GET / HTTP/1.1\r\nHost: t\r\nX-Big: {big}\r\n\r\n").as_bytes()).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut out)).await;
    let out = String::from_utf8_lossy(&out);
    assert!(out.is_empty() || out.starts_with("HTTP/1.1 431"), "{out}");
    // Bodies: too large, not JSON, not an object, missing.
    let huge = format!("{{\"x\":\"{}\"}}", "y".repeat(100 * 1024));
    assert_eq!(call(s.addr, "PATCH", "/config", &[], Some(&huge)).await.0, 413);
    assert_eq!(call(s.addr, "PATCH", "/config", &[], Some("{nope")).await.0, 400);
    assert_eq!(call(s.addr, "POST", "/switchover", &[], Some("[1,2]")).await.0, 400);
    assert_eq!(call(s.addr, "PATCH", "/config", &[], None).await.0, 411);
    // Unknown methods and action paths.
    assert_eq!(call(s.addr, "POST", "/nothing", &[], Some("{}")).await.0, 501);
    assert_eq!(call(s.addr, "BREW", "/", &[], None).await.0, 501);
    // Broken percent-encoding in a query does not hurt.
    assert_eq!(get(s.addr, "/primary?tag_x=%zz&lag=%31").await.0, 200);
    assert_eq!(get(s.addr, "/primary").await.0, 200);
}

#[tokio::test]
async fn slow_clients_holding_connections_do_not_stop_health_checks() {
    let limits = Limits { header_timeout: Duration::from_secs(30), ..Limits::default() };
    let s = start_with(MemberRole::Primary, Access::default(), limits).await;
    let mut slow = Vec::new();
    for i in 0..200 {
        let mut c = TcpStream::connect(s.addr).await.unwrap();
        // Half send part of a request head and stall; the rest say nothing.
        if i % 2 == 0 {
            c.write_all(b"GET /primary HTTP/1.1\r\nHost: t\r\n").await.unwrap();
        }
        slow.push(c);
    }
    let started = Instant::now();
    for _ in 0..20 {
        assert_eq!(get(s.addr, "/primary").await.0, 200);
    }
    assert!(started.elapsed() < Duration::from_secs(5), "health checks were held up: {:?}", started.elapsed());
    drop(slow);
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed_after_the_header_timeout() {
    let limits = Limits { header_timeout: Duration::from_millis(300), ..Limits::default() };
    let s = start_with(MemberRole::Primary, Access::default(), limits).await;
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    // A keep-alive request, then silence.
    c.write_all(b"GET /primary HTTP/1.1\r\nHost: t\r\n\r\n").await.unwrap();
    let mut out = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut out)).await;
    assert!(closed.is_ok(), "the idle keep-alive connection was never closed");
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn connections_over_the_cap_are_closed_at_once() {
    let limits = Limits { max_connections: 16, header_timeout: Duration::from_secs(30), ..Limits::default() };
    let s = start_with(MemberRole::Primary, Access::default(), limits).await;
    let mut held = Vec::new();
    for _ in 0..16 {
        held.push(TcpStream::connect(s.addr).await.unwrap());
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut c = TcpStream::connect(s.addr).await.unwrap();
        let _ = c.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").await;
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_millis(500), c.read_to_end(&mut out)).await;
        if out.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "the connection cap never applied");
    }
    assert!(s.state.metrics.rest_rejected_limit.get() >= 1);
    drop(held);
}

// ---- TLS ----

struct TlsServer {
    addr: SocketAddr,
    files: tls::TlsFiles,
    _dir: tempfile::TempDir,
    server: Server,
}

async fn start_tls(verify: tls::VerifyClient, limits: Limits) -> TlsServer {
    let dir = tempfile::tempdir().unwrap();
    // A CA and one certificate for 127.0.0.1 (server and client use).
    let made = outrigger_testkit::make_tls_for(dir.path(), &[]).unwrap();
    let files = tls::TlsFiles { certfile: made.cert, keyfile: made.key, cafile: Some(made.ca), verify_client: verify };
    let access = Access { require_client_cert: verify != tls::VerifyClient::None, ..Access::default() };
    // A plain server for the state, and a TLS listener serving the same state.
    let plain = start_with(MemberRole::Primary, access, limits).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cfg = tls::server_config(&files).unwrap();
    plain.state.set_tls(Some(cfg));
    tokio::spawn(server::serve(listener, limits, plain.state.clone(), plain.stop.clone()));
    TlsServer { addr, files, _dir: dir, server: plain }
}

/// One request over TLS; `with_cert`: present the leaf certificate.
async fn tls_call(s: &TlsServer, with_cert: bool, method: &str, path: &str) -> anyhow::Result<u16> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(s.files.cafile.as_ref().unwrap())? {
        roots.add(c?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let b = rustls::ClientConfig::builder_with_provider(provider).with_safe_default_protocol_versions()?;
    let b = b.with_root_certificates(roots);
    let cfg = if with_cert { tls::client_config(&s.files)? } else { Arc::new(b.with_no_client_auth()) };
    let tcp = TcpStream::connect(s.addr).await?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1")?;
    let mut t = tokio_rustls::TlsConnector::from(cfg).connect(name, tcp).await?;
    t.write_all(
        format!("{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: 0\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut out = Vec::new();
    t.read_to_end(&mut out).await?;
    let out = String::from_utf8_lossy(&out);
    Ok(out.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0))
}

use rustls::pki_types::pem::PemObject;

#[tokio::test]
async fn tls_serves_health_checks_and_silent_clients_time_out_in_the_handshake() {
    let limits = Limits { handshake_timeout: Duration::from_millis(300), ..Limits::default() };
    let s = start_tls(tls::VerifyClient::None, limits).await;
    assert_eq!(tls_call(&s, false, "GET", "/primary").await.unwrap(), 200);
    // Connects, says nothing: closed once the handshake deadline passes.
    let mut silent = TcpStream::connect(s.addr).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf)).await;
    assert!(matches!(n, Ok(Ok(0)) | Ok(Err(_))), "the silent TLS client was not dropped: {n:?}");
    assert!(s.server.state.metrics.rest_tls_failed.get() >= 1);
    // Meanwhile, and after, health checks are answered.
    assert_eq!(tls_call(&s, false, "HEAD", "/primary").await.unwrap(), 200);
}

#[tokio::test]
async fn tls_required_client_certificates_refuse_the_handshake_without_one() {
    let s = start_tls(tls::VerifyClient::Required, Limits::default()).await;
    assert!(tls_call(&s, false, "GET", "/primary").await.is_err(), "no client certificate, yet served");
    assert_eq!(tls_call(&s, true, "GET", "/primary").await.unwrap(), 200);
    assert_eq!(tls_call(&s, true, "POST", "/reload").await.unwrap(), 200);
}

#[tokio::test]
async fn tls_optional_client_certificates_are_needed_on_action_endpoints_only() {
    let s = start_tls(tls::VerifyClient::Optional, Limits::default()).await;
    assert_eq!(tls_call(&s, false, "GET", "/primary").await.unwrap(), 200);
    assert_eq!(tls_call(&s, false, "POST", "/reload").await.unwrap(), 403);
    assert_eq!(tls_call(&s, true, "POST", "/reload").await.unwrap(), 200);
}

#[tokio::test]
async fn peers_are_probed_over_https() {
    let s = start_tls(tls::VerifyClient::Required, Limits::default()).await;
    probe::set_client_tls(tls::client_config(&s.files).unwrap());
    let got = probe::status_of(&format!("https://127.0.0.1:{}/patroni", s.addr.port()), Duration::from_secs(2)).await;
    assert_eq!(got.map(|st| st.role), Some(MemberRole::Primary));
}

#[test]
fn query_strings_are_split_and_percent_decoded() {
    let q = parse_query(Some("lag=16MB&tag_zone=eu%2Dwest&replication_state=in+archive+recovery&lag=1&bad=%z"));
    assert_eq!(
        q,
        vec![
            ("lag".to_owned(), "16MB".to_owned()),
            ("tag_zone".to_owned(), "eu-west".to_owned()),
            ("replication_state".to_owned(), "in archive recovery".to_owned()),
            ("bad".to_owned(), "%z".to_owned()),
        ]
    );
    assert!(parse_query(None).is_empty());
}

#[tokio::test]
async fn deleting_a_scheduled_switchover_that_changed_meanwhile_is_409() {
    let mem = Arc::new(MemStore::default());
    mem.set(
        &format!("{PREFIX}/failover"),
        r#"{"leader":"n1","member":"n2","scheduled_at":"2099-01-01T00:00:00+00:00"}"#,
    );
    let store: Arc<dyn Store> = Arc::new(Racing(mem.clone()));
    let state =
        ApiState::new(ApiSettings::new("b", "n1"), Arc::new(Metrics::new("b", "n1")), mpsc::channel(1).0, Some(store));
    assert_eq!(delete_switchover(&state).await.status, 409);
}

#[test]
fn switchover_precheck_refuses_a_candidate_still_on_an_older_timeline() {
    // It has just begun to follow the leader and streams nothing yet: it would not promote.
    let s = status(MemberRole::Replica);
    assert!(actions::can_take_over(&s, Some(1)));
    assert!(actions::can_take_over(&s, None), "no leader timeline known: judged on the rest");
    assert!(!actions::can_take_over(&s, Some(2)));
}
