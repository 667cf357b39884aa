//! The HTTP and agent servers over loopback, with views set by the test: methods, bodies,
//! malformed requests and their counters, agent answers.

// Test code: a panic is the failure report, helpers outside `#[test]` functions included.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use outrigger_daemon::http::Limits;
use outrigger_schema::MemberRole;
use proxy_checker::app::App;
use proxy_checker::check::{Check, Endpoint};
use proxy_checker::config::AgentSettings;
use proxy_checker::metrics::Metrics;
use proxy_checker::verdict::Policy;
use proxy_checker::view::{EtcdView, MemberInfo, PgPoll, PgSample, PgView};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

struct Harness {
    http: std::net::SocketAddr,
    agent: std::net::SocketAddr,
    etcd: watch::Sender<EtcdView>,
    stop: CancellationToken,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// n1 is named leader in etcd (confirmed now) and its PostgreSQL is writable; far-future
/// confirmation times keep the views fresh for the whole test.
async fn start() -> Harness {
    let later = Instant::now() + Duration::from_secs(3600);
    let etcd = EtcdView {
        synced: true,
        confirmed_at: Some(later),
        attempted_at: Some(later),
        leader: Some("n1".into()),
        me: Some(MemberInfo { role: MemberRole::Primary, tags: Default::default() }),
        ..EtcdView::default()
    };
    let pg = PgView {
        attempted_at: Some(later),
        last: PgPoll::Up { at: later, sample: PgSample { in_recovery: false, ..PgSample::default() } },
    };
    let (etcd_tx, etcd_rx) = watch::channel(etcd);
    // A receiver keeps its last value after the sender is gone: the PostgreSQL view is fixed.
    let (_, pg_rx) = watch::channel(pg);
    let policy = Policy {
        name: "n1".into(),
        etcd_max_age: Duration::from_secs(1),
        pg_max_age: Duration::from_secs(1),
        liveness_max_age: Duration::from_secs(5),
    };
    let app = Arc::new(App { policy: watch::channel(policy).1, etcd: etcd_rx, pg: pg_rx, metrics: Metrics::new() });
    let stop = CancellationToken::new();
    let http_l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let agent_l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (http, agent) = (http_l.local_addr().unwrap(), agent_l.local_addr().unwrap());
    let limits = Limits { max_connections: 64, header_timeout: Duration::from_millis(300), max_head_bytes: 8192 };
    tokio::spawn(proxy_checker::http::serve(http_l, limits, app.clone(), stop.clone()));
    let settings = AgentSettings {
        listen: agent,
        default_check: Check::new(Endpoint::Primary),
        read_timeout: Duration::from_millis(50),
        drain_lag: 16 << 20,
        max_connections: 8,
    };
    tokio::spawn(proxy_checker::agent::serve(agent_l, settings, app.clone(), stop.clone()));
    Harness { http, agent, etcd: etcd_tx, stop }
}

/// Sends raw bytes, returns everything the server sent before closing.
async fn raw(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await.expect("server closed").unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

async fn request(addr: std::net::SocketAddr, method: &str, target: &str) -> String {
    raw(addr, format!("{method} {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes()).await
}

fn metrics_line(text: &str, prefix: &str) -> String {
    text.lines().find(|l| l.starts_with(prefix)).unwrap_or_default().to_owned()
}

#[tokio::test]
async fn get_answers_200_with_a_json_reason() {
    let h = start().await;
    let r = request(h.http, "GET", "/primary").await;
    assert!(r.starts_with("HTTP/1.1 200 OK"), "{r}");
    assert!(r.contains("content-type: application/json"), "{r}");
    let body = r.split("\r\n\r\n").nth(1).unwrap();
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["check"], "primary");
    assert_eq!(v["status"], 200);
    assert_eq!(v["role"], "primary");
    assert_eq!(v["reason"], "primary");
}

#[tokio::test]
async fn get_answers_503_with_the_reason_when_etcd_names_another_member() {
    let h = start().await;
    h.etcd.send_modify(|v| v.leader = Some("n2".into()));
    let r = request(h.http, "GET", "/master").await;
    assert!(r.starts_with("HTTP/1.1 503"), "{r}");
    assert!(r.contains(r#""reason":"not_leader""#), "{r}");
    assert!(r.contains(r#""role":"writable_not_leader""#), "{r}");
}

#[tokio::test]
async fn head_and_options_answer_the_bare_status() {
    let h = start().await;
    for method in ["HEAD", "OPTIONS"] {
        let r = request(h.http, method, "/").await;
        assert!(r.starts_with("HTTP/1.1 200 OK"), "{method}: {r}");
        assert!(r.ends_with("\r\n\r\n"), "{method} must have no body: {r:?}");
    }
    // HAProxy's plain `option httpchk` speaks HTTP/1.0.
    let r = raw(h.http, b"OPTIONS / HTTP/1.0\r\n\r\n").await;
    assert!(r.starts_with("HTTP/1.0 200 OK"), "{r}");
    h.etcd.send_modify(|v| v.leader = None);
    let r = request(h.http, "OPTIONS", "/").await;
    assert!(r.starts_with("HTTP/1.1 503"), "{r}");
}

#[tokio::test]
async fn keep_alive_connections_answer_many_checks() {
    let h = start().await;
    let mut s = TcpStream::connect(h.http).await.unwrap();
    for _ in 0..3 {
        s.write_all(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n").await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    }
}

#[tokio::test]
async fn other_methods_are_405_and_counted() {
    let h = start().await;
    let r = request(h.http, "POST", "/primary").await;
    assert!(r.starts_with("HTTP/1.1 405"), "{r}");
    assert!(r.contains("allow: GET, HEAD, OPTIONS"), "{r}");
    let m = request(h.http, "GET", "/metrics").await;
    assert_eq!(
        metrics_line(&m, r#"proxy_checker_bad_requests_total{kind="method"}"#),
        r#"proxy_checker_bad_requests_total{kind="method"} 1"#
    );
}

#[tokio::test]
async fn malformed_requests_are_400_and_counted() {
    let h = start().await;
    let r = request(h.http, "GET", "/replica?lag=lots").await;
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    assert!(r.contains("lag"), "{r}");
    let r = raw(h.http, b"this is not http\r\n\r\n").await;
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    // hyper reports the parse error after it closed the connection; wait for the count.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let m = request(h.http, "GET", "/metrics").await;
        if metrics_line(&m, r#"proxy_checker_bad_requests_total{kind="malformed"}"#).ends_with(" 2") {
            break;
        }
        assert!(Instant::now() < deadline, "malformed requests were not counted: {m}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn silent_clients_are_disconnected() {
    let h = start().await;
    let mut s = TcpStream::connect(h.http).await.unwrap();
    let mut buf = [0u8; 256];
    let read = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
    assert!(read.is_ok(), "a silent client must not hold its connection");
}

#[tokio::test]
async fn checks_are_counted_by_endpoint_and_verdict() {
    let h = start().await;
    request(h.http, "GET", "/primary").await;
    request(h.http, "HEAD", "/replica").await;
    let m = request(h.http, "GET", "/metrics").await;
    assert!(m.contains(r#"proxy_checker_checks_total{endpoint="primary",verdict="ok"} 1"#), "{m}");
    assert!(m.contains(r#"proxy_checker_checks_total{endpoint="replica",verdict="unavailable"} 1"#), "{m}");
    assert!(m.contains(r#"proxy_checker_role{role="primary"} 1"#), "{m}");
    assert!(m.contains(r#"proxy_checker_state_fresh{source="etcd"} 1"#), "{m}");
}

#[tokio::test]
async fn agent_answers_the_sent_check_or_the_default() {
    let h = start().await;
    // No agent-send line: the default check (primary) after the read timeout.
    let r = raw(h.agent, b"").await;
    assert_eq!(r, "ready up 100%\n");
    let r = raw(h.agent, b"/replica\n").await;
    assert_eq!(r, "down#not_in_recovery\n");
    let r = raw(h.agent, b"replica?lag=nonsense\n").await;
    assert_eq!(r, "down#bad_request\n");
    let m = request(h.http, "GET", "/metrics").await;
    assert!(m.contains(r#"proxy_checker_agent_answers_total{answer="up"} 1"#), "{m}");
    assert!(m.contains(r#"proxy_checker_agent_answers_total{answer="down"} 2"#), "{m}");
    assert!(m.contains(r#"proxy_checker_bad_requests_total{kind="agent"} 1"#), "{m}");
}
