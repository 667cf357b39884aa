//! The plumbing end to end: `/metrics` over HTTP, sd_notify messages, shutdown on SIGTERM.
// Test helpers outside `#[test]` functions unwrap too: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn metrics_are_served_over_http_with_build_info() {
    let registry = outrigger_daemon::metrics::registry("ha_agent", "0.1.0");
    let counter = prometheus::IntCounter::new("ha_agent_loops_total", "HA loop iterations").unwrap();
    registry.register(Box::new(counter.clone())).unwrap();
    counter.inc_by(3);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let server = tokio::spawn(outrigger_daemon::metrics::serve(listener, registry, stop.clone()));

    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).await.unwrap();
    assert!(body.starts_with("HTTP/1.1 200 OK"), "{body}");
    assert!(body.contains("content-type: text/plain; version=0.0.4"), "{body}");
    assert!(body.contains("ha_agent_build_info{version=\"0.1.0\"} 1"), "{body}");
    assert!(body.contains("ha_agent_loops_total 3"), "{body}");

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), server).await.expect("server stops on shutdown").unwrap();
}

/// The daemon side of the systemd test, run in a child process that has `NOTIFY_SOCKET` and
/// `WATCHDOG_USEC` set (changing the environment in-process needs `unsafe`, which the
/// workspace forbids): READY, watchdog pings, SIGTERM cancels, STOPPING.
fn daemon_side() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        outrigger_daemon::systemd::ready();
        assert_eq!(outrigger_daemon::systemd::watchdog_interval(), Some(Duration::from_millis(100)));
        let stop = CancellationToken::new();
        let pinger = outrigger_daemon::systemd::spawn_watchdog(stop.clone(), || true).expect("watchdog enabled");
        let waiter = tokio::spawn(outrigger_daemon::shutdown::on_signal(stop.clone()));
        // Let a few pings go out, and the signal handler install, before the "stop".
        tokio::time::sleep(Duration::from_millis(350)).await;
        nix::sys::signal::raise(nix::sys::signal::Signal::SIGTERM).unwrap();
        let which = tokio::time::timeout(Duration::from_secs(5), waiter).await.unwrap().unwrap().unwrap();
        assert_eq!(which, outrigger_daemon::shutdown::StopSignal::Term);
        tokio::time::timeout(Duration::from_secs(5), pinger).await.unwrap().unwrap();
        outrigger_daemon::systemd::stopping();
    });
}

#[test]
fn systemd_gets_ready_watchdog_pings_and_stopping_and_sigterm_shuts_down() {
    const NAME: &str = "systemd_gets_ready_watchdog_pings_and_stopping_and_sigterm_shuts_down";
    if std::env::var_os("OUTRIGGER_PLUMBING_CHILD").is_some() {
        return daemon_side();
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([NAME, "--exact", "--nocapture", "--test-threads=1"])
        .env("OUTRIGGER_PLUMBING_CHILD", "1")
        .env("NOTIFY_SOCKET", &path)
        .env("WATCHDOG_USEC", "200000")
        .env_remove("WATCHDOG_PID")
        .spawn()
        .unwrap();
    let mut messages = Vec::new();
    let mut buf = [0u8; 256];
    while let Ok(n) = sock.recv(&mut buf) {
        let m = String::from_utf8_lossy(&buf[..n]).trim().to_owned();
        let last = m == "STOPPING=1";
        messages.push(m);
        if last {
            break;
        }
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "daemon side failed: {status}");
    assert_eq!(messages.first().map(String::as_str), Some("READY=1"), "{messages:?}");
    assert!(messages.iter().filter(|m| *m == "WATCHDOG=1").count() >= 2, "{messages:?}");
    assert_eq!(messages.last().map(String::as_str), Some("STOPPING=1"), "{messages:?}");
}
