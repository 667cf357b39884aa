//! The run loop's inputs other than VRRP packets: local checks and the etcd leader key, each
//! in its own task, reporting changes (never every result) over one channel.

use std::net::SocketAddr;
use std::time::Duration;

use outrigger_etcd::{Change, Etcd, PerEndpoint, WatchUpdate};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::priority::{Check, RiseFall, Status, Track};

/// A change in one input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// Track `index` (in config order) changed state.
    Track { index: usize, status: Status },
    /// The leader key's value was read or changed (None: no key).
    Leader(Option<Vec<u8>>),
    /// etcd could not be reached (a read failed or the watch broke).
    EtcdUnreachable,
}

/// Runs one check forever (until `stop`), sending its state whenever it changes.
pub fn spawn_track(index: usize, track: Track, tx: mpsc::Sender<Update>, stop: CancellationToken) {
    tokio::spawn(async move {
        let mut rf = RiseFall::new(track.rise, track.fall);
        let mut last_value = None;
        let mut tick = tokio::time::interval(track.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let status = match &track.check {
                Check::Tcp { address } => {
                    let ok = tcp_check(*address, track.timeout).await;
                    rf.observe(ok).map(|up| if up { Status::Up } else { Status::Down })
                }
                Check::Http { address, path, expect_status } => {
                    let ok = http_check(*address, path, track.timeout).await == Some(*expect_status);
                    rf.observe(ok).map(|up| if up { Status::Up } else { Status::Down })
                }
                Check::File { path } => {
                    let v = file_value(path).await;
                    (last_value != Some(v)).then(|| {
                        last_value = Some(v);
                        Status::Value(v)
                    })
                }
            };
            if let Some(status) = status {
                tracing::info!(track = %track.name, ?status, "track changed");
                if tx.send(Update::Track { index, status }).await.is_err() {
                    return;
                }
            }
        }
    });
}

async fn tcp_check(address: SocketAddr, timeout: Duration) -> bool {
    matches!(tokio::time::timeout(timeout, TcpStream::connect(address)).await, Ok(Ok(_)))
}

/// `GET path` over HTTP/1.0; returns the status code, or None on any failure.
async fn http_check(address: SocketAddr, path: &str, timeout: Duration) -> Option<u16> {
    let attempt = async {
        let mut s = TcpStream::connect(address).await.ok()?;
        let req = format!("GET {path} HTTP/1.0\r\nHost: {address}\r\nUser-Agent: vip-manager\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        // The status line is all we need; 64 bytes hold it.
        let mut buf = [0u8; 64];
        let mut n = 0;
        while n < buf.len() {
            let got = s.read(&mut buf[n..]).await.ok()?;
            if got == 0 {
                break;
            }
            n += got;
            if buf[..n].contains(&b'\n') {
                break;
            }
        }
        parse_status_line(&buf[..n])
    };
    tokio::time::timeout(timeout, attempt).await.ok().flatten()
}

fn parse_status_line(head: &[u8]) -> Option<u16> {
    let line = std::str::from_utf8(head.split(|b| *b == b'\n').next()?).ok()?;
    let mut parts = line.split_whitespace();
    parts.next().filter(|v| v.starts_with("HTTP/"))?;
    parts.next()?.parse().ok()
}

/// keepalived's `track_file`: an integer; a missing or unreadable file counts as 0.
async fn file_value(path: &std::path::Path) -> i64 {
    match tokio::fs::read_to_string(path).await {
        Ok(text) => text.split_whitespace().next().and_then(|w| w.parse().ok()).unwrap_or(0),
        Err(_) => 0,
    }
}

/// Sends an update only when it differs from the previous one.
struct Reporter {
    tx: mpsc::Sender<Update>,
    last: Option<Update>,
}

impl Reporter {
    async fn report(&mut self, u: Update) {
        if self.last.as_ref() != Some(&u) {
            self.last = Some(u.clone());
            let _ = self.tx.send(u).await;
        }
    }
}

/// Follows one etcd key: a read, then a watch from the read's revision. A broken watch is
/// followed at once by a read through every etcd member (`PerEndpoint`): one frozen or cut-off
/// member breaks the watches that happen to use it, which says nothing about the others, and
/// reporting `EtcdUnreachable` then would drop the leader's bonus (the client bench saw the
/// leader's priority flap every 2 s while one member was cut off). Only when that read fails
/// too, it reports `EtcdUnreachable` and starts over after a short pause. Reports only changes.
pub fn spawn_leader_watch(
    opts: outrigger_etcd::ConnectOptions,
    key: String,
    tx: mpsc::Sender<Update>,
    stop: CancellationToken,
) {
    tokio::spawn(async move {
        let mut reporter = Reporter { tx, last: None };
        let reads = PerEndpoint::new(&opts);
        let mut etcd: Option<Etcd> = None;
        loop {
            let result = tokio::select! {
                () = stop.cancelled() => return,
                r = follow_key(&opts, &reads, &mut etcd, &key, &mut reporter) => r,
            };
            let Err(e) = result;
            tracing::warn!(key = %key, error = %e, "leader key: etcd unreachable");
            reporter.report(Update::EtcdUnreachable).await;
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
        }
    });
}

/// Read-then-watch rounds; returns only with the error of a read that failed on every member.
async fn follow_key(
    opts: &outrigger_etcd::ConnectOptions,
    reads: &PerEndpoint,
    etcd: &mut Option<Etcd>,
    key: &str,
    reporter: &mut Reporter,
) -> Result<std::convert::Infallible, outrigger_etcd::EtcdError> {
    let client = match etcd {
        Some(c) => c.clone(),
        None => etcd.insert(Etcd::connect(opts).await?).clone(),
    };
    loop {
        // A prefix read gives the revision to watch from; the prefix may also match longer
        // keys (`leader` and `leader2`), so only the exact key counts.
        let snap = reads.get_prefix(key).await?;
        reporter.report(Update::Leader(snap.get(key).map(|kv| kv.value.clone()))).await;
        let mut watch = client.watch_prefix(key, snap.revision);
        let broken = loop {
            match watch.next().await {
                Ok(WatchUpdate::Changes { changes, .. }) => {
                    for c in changes.iter().filter(|c| c.key() == key) {
                        let v = match c {
                            Change::Put(kv) => Some(kv.value.clone()),
                            Change::Delete { .. } => None,
                        };
                        reporter.report(Update::Leader(v)).await;
                    }
                }
                Ok(WatchUpdate::Resync(snap)) => {
                    reporter.report(Update::Leader(snap.get(key).map(|kv| kv.value.clone()))).await;
                }
                Err(e) => break e,
            }
        };
        tracing::debug!(key = %key, error = %broken, "leader key: watch broken; reading through every etcd member");
        // Not a busy loop if the watch breaks at once each time.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs the notify command with keepalived's four arguments, in the background, killing it if
/// it outlives `timeout`. Returns at once; failures are logged and counted by the caller's
/// `on_failure`.
pub fn spawn_notify(
    command: &[String],
    args: [String; 4],
    timeout: Duration,
    on_failure: impl FnOnce() + Send + 'static,
) {
    let Some((program, fixed)) = command.split_first() else { return };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(fixed).args(&args).stdin(std::process::Stdio::null()).kill_on_drop(true);
    let shown = format!("{} {}", command.join(" "), args.join(" "));
    tokio::spawn(async move {
        let outcome = match cmd.spawn() {
            Err(e) => Err(e.to_string()),
            Ok(mut child) => match tokio::time::timeout(timeout, child.wait()).await {
                Ok(Ok(status)) if status.success() => Ok(()),
                Ok(Ok(status)) => Err(format!("exited with {status}")),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => {
                    let _ = child.kill().await;
                    Err(format!("killed after {timeout:?}"))
                }
            },
        };
        if let Err(e) = outcome {
            tracing::warn!(command = %shown, error = %e, "notify command failed");
            on_failure();
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK\r\nx"), Some(200));
        assert_eq!(parse_status_line(b"HTTP/1.0 503 Service Unavailable\r\n"), Some(503));
        assert_eq!(parse_status_line(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(parse_status_line(b""), None);
    }

    #[tokio::test]
    async fn checks_against_a_local_server() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut buf = [0u8; 256];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let code = if buf[..n].starts_with(b"GET /primary ") { "200 OK" } else { "503 No" };
                let _ = s.write_all(format!("HTTP/1.1 {code}\r\nContent-Length: 0\r\n\r\n").as_bytes()).await;
            }
        });
        let t = Duration::from_secs(2);
        assert!(tcp_check(addr, t).await);
        assert_eq!(http_check(addr, "/primary", t).await, Some(200));
        assert_eq!(http_check(addr, "/replica", t).await, Some(503));
        // A port nobody listens on: bind, learn the port, close.
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        assert!(!tcp_check(closed, t).await);
        assert_eq!(http_check(closed, "/", t).await, None);
    }

    #[tokio::test]
    async fn file_values() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("w");
        assert_eq!(file_value(&p).await, 0, "missing file");
        std::fs::write(&p, "-7\n").unwrap();
        assert_eq!(file_value(&p).await, -7);
        std::fs::write(&p, "junk").unwrap();
        assert_eq!(file_value(&p).await, 0);
    }

    #[tokio::test]
    async fn track_reports_only_changes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("w");
        std::fs::write(&p, "3").unwrap();
        let (tx, mut rx) = mpsc::channel(8);
        let stop = CancellationToken::new();
        let track = Track {
            name: "f".into(),
            check: Check::File { path: p.clone() },
            interval: Duration::from_millis(20),
            timeout: Duration::from_millis(20),
            weight: 1,
            rise: 1,
            fall: 1,
        };
        spawn_track(0, track, tx, stop.clone());
        let first = tokio::time::timeout(Duration::from_secs(2), rx.recv()).await.unwrap();
        assert_eq!(first, Some(Update::Track { index: 0, status: Status::Value(3) }));
        std::fs::write(&p, "4").unwrap();
        let second = tokio::time::timeout(Duration::from_secs(2), rx.recv()).await.unwrap();
        assert_eq!(second, Some(Update::Track { index: 0, status: Status::Value(4) }));
        stop.cancel();
    }

    #[tokio::test]
    async fn notify_failures_are_reported() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let args = ["INSTANCE".into(), "VI_1".into(), "MASTER".into(), "100".into()];
        spawn_notify(&["/bin/false".into()], args, Duration::from_secs(2), move || {
            let _ = tx.send(());
        });
        assert!(tokio::time::timeout(Duration::from_secs(2), rx).await.is_ok());
    }
}
