//! A small HTTP/1.1 server on hyper for health checks, status and `/metrics`.
//!
//! Built for many tiny requests from load balancers and scrapers, and for clients that
//! misbehave: the number of open connections is capped (excess connections are closed at
//! once, so health checks never queue behind them), a client must send its request headers
//! within a deadline (this also closes idle keep-alive connections), and request heads are
//! limited in size. Handlers get the peer address and answer from state they already hold.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

pub type Body = Full<Bytes>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    /// Deadline for a request's headers, counted from when the connection is idle.
    pub header_timeout: Duration,
    /// Largest request head (request line plus headers) accepted.
    pub max_head_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_connections: 1024, header_timeout: Duration::from_secs(5), max_head_bytes: 16 * 1024 }
    }
}

/// A plain-text response.
pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

/// A JSON response.
pub fn json(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    r
}

/// Serves `handler` on `listener` until `shutdown` is cancelled. Open connections are allowed
/// to finish their current request.
pub async fn serve<H, F>(listener: TcpListener, limits: Limits, handler: H, shutdown: CancellationToken)
where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    serve_observed(listener, limits, handler, |_| {}, shutdown).await;
}

/// [`serve`], and `on_error` sees every connection that ended with an error before the handler
/// could answer: malformed requests (`is_parse()`; hyper has already answered them 400 or 431)
/// and clients too slow to send their headers (`is_timeout()`), so a daemon can count them.
pub async fn serve_observed<H, F, E>(
    listener: TcpListener,
    limits: Limits,
    handler: H,
    on_error: E,
    shutdown: CancellationToken,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
    E: Fn(&hyper::Error) + Send + Sync + 'static,
{
    let on_error = Arc::new(on_error);
    let handler = Arc::new(handler);
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    while let Some((stream, peer, permit)) = accept_within(&listener, &permits, &shutdown, || {}).await {
        let handler = handler.clone();
        let shutdown = shutdown.clone();
        let on_error = on_error.clone();
        tokio::spawn(async move {
            let served = serve_connection(stream, &limits, move |req| handler(req, peer), &shutdown).await;
            if let Err(e) = served {
                tracing::debug!(%peer, error = %e, "http connection ended with an error");
                on_error(&e);
            }
            drop(permit);
        });
    }
}

/// Serves one accepted connection (plain TCP, or TLS already handshaken) with the header
/// deadline and head-size limit of `limits`, until the client closes it. Once `shutdown` is
/// cancelled the request in flight may finish, for at most a second. Returns the error the
/// connection ended with (a malformed request, a client too slow with its headers).
pub async fn serve_connection<I, H, F>(
    io: I,
    limits: &Limits,
    handler: H,
    shutdown: &CancellationToken,
) -> Result<(), hyper::Error>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<Incoming>) -> F + Send + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_head_bytes.max(8192))
        .keep_alive(true);
    let conn = builder.serve_connection(
        TokioIo::new(io),
        service_fn(move |req| {
            let answer = handler(req);
            async move { Ok::<_, Infallible>(answer.await) }
        }),
    );
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        res = conn.as_mut() => res,
        () = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(1), conn).await;
            Ok(())
        }
    }
}

/// Accepts the next connection under the cap of `permits`, with Nagle off; `None` once
/// `shutdown` is cancelled. Accept errors (EMFILE and friends) back off briefly instead of
/// spinning. A connection over the cap is closed at once rather than queued, so a flood of idle
/// clients cannot delay the others' health checks; `over_cap` is told (for a metric).
pub async fn accept_within(
    listener: &TcpListener,
    permits: &Arc<Semaphore>,
    shutdown: &CancellationToken,
    over_cap: impl Fn(),
) -> Option<(TcpStream, SocketAddr, OwnedSemaphorePermit)> {
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => return None,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            over_cap();
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        return Some((stream, peer, permit));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn start(limits: Limits) -> (SocketAddr, CancellationToken) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let stop = CancellationToken::new();
        tokio::spawn(serve(
            l,
            limits,
            |req, _| async move { text(StatusCode::OK, req.uri().path().to_owned()) },
            stop.clone(),
        ));
        (addr, stop)
    }

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn answers_a_request() {
        let (addr, stop) = start(Limits::default()).await;
        let r = get(addr, "/hello").await;
        assert!(r.starts_with("HTTP/1.1 200 OK"), "{r}");
        assert!(r.ends_with("/hello"), "{r}");
        stop.cancel();
    }

    #[tokio::test]
    async fn silent_client_is_disconnected_after_the_header_timeout() {
        let limits = Limits { header_timeout: Duration::from_millis(200), ..Limits::default() };
        let (addr, stop) = start(limits).await;
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf))
            .await
            .expect("server closed the silent connection");
        // Closed (0 bytes) or answered with 408: either way the connection does not linger.
        assert!(matches!(n, Ok(0) | Ok(_) | Err(_)));
        stop.cancel();
    }

    #[tokio::test]
    async fn connections_over_the_limit_are_closed_and_the_others_still_answered() {
        let limits = Limits { max_connections: 2, header_timeout: Duration::from_secs(30), ..Limits::default() };
        let (addr, stop) = start(limits).await;
        let _idle1 = tokio::net::TcpStream::connect(addr).await.unwrap();
        let _idle2 = tokio::net::TcpStream::connect(addr).await.unwrap();
        // Give the server a moment to accept both idle connections.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        loop {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
            let mut out = Vec::new();
            let _ = tokio::time::timeout(Duration::from_millis(500), s.read_to_end(&mut out)).await;
            if out.is_empty() {
                break; // closed without an answer: the limit holds
            }
            assert!(tokio::time::Instant::now() < deadline, "third connection was never refused");
            tokio::task::yield_now().await;
        }
        stop.cancel();
    }

    #[tokio::test]
    async fn malformed_request_is_answered_400_and_observed() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let stop = CancellationToken::new();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(serve_observed(
            l,
            Limits::default(),
            |_, _| async { text(StatusCode::OK, "") },
            move |e: &hyper::Error| {
                let _ = tx.send(e.is_parse());
            },
            stop.clone(),
        ));
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"NOT A REQUEST\r\n\r\n").await.unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out).await;
        assert!(out.starts_with("HTTP/1.1 400"), "{out}");
        let seen = tokio::time::timeout(Duration::from_secs(2), rx.recv()).await.unwrap();
        assert_eq!(seen, Some(true));
        stop.cancel();
    }

    #[tokio::test]
    async fn oversized_request_head_is_rejected_with_4xx() {
        let limits = Limits { max_head_bytes: 8192, ..Limits::default() };
        let (addr, stop) = start(limits).await;
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let big = "a".repeat(64 * 1024);
        let _ = s.write_all(format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n").as_bytes()).await;
        let mut out = String::new();
        let _ = s.read_to_string(&mut out).await;
        assert!(out.is_empty() || out.starts_with("HTTP/1.1 431"), "{out}");
        stop.cancel();
    }
}
