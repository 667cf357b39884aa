//! The REST port's accept loop: plain HTTP/1.1 or TLS, built so that misbehaving clients
//! cannot take it down (Patroni issue #3705: five silent TLS clients stall its thread pool).
//!
//! - Open connections are capped; a connection over the cap is closed at once rather than
//!   queued, so health checks never wait behind idle clients.
//! - A TLS handshake must finish within `handshake_timeout`, on its own task: a client that
//!   connects and says nothing holds one slot for that long, never the accept loop.
//! - A request's head must arrive within `header_timeout`, counted from when the connection
//!   is idle, so idle keep-alive connections are closed too; heads are size-limited.
//!
//! Each connection is one task; handlers answer from state already in memory. The server runs
//! on its own thread with a one-thread runtime ([`spawn_thread`]): health checks never wait
//! for a worker busy with the HA loop, and all connections share one thread, so under load
//! they queue for microseconds instead of for the scheduler's time slice between threads.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::{ApiState, ConnInfo};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub handshake_timeout: Duration,
    pub max_head_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 1000,
            header_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(5),
            max_head_bytes: 16 * 1024,
        }
    }
}

impl Limits {
    /// The per-connection limits as the shared server code takes them.
    fn http(&self) -> outrigger_daemon::http::Limits {
        outrigger_daemon::http::Limits {
            max_connections: self.max_connections,
            header_timeout: self.header_timeout,
            max_head_bytes: self.max_head_bytes,
        }
    }
}

async fn serve_conn<I>(io: I, info: ConnInfo, state: Arc<ApiState>, limits: Limits, shutdown: CancellationToken)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let handler = move |req| super::handle(state.clone(), req, info);
    if let Err(e) = outrigger_daemon::http::serve_connection(io, &limits.http(), handler, &shutdown).await {
        tracing::debug!(peer = %info.peer, error = %e, "http connection ended with an error");
    }
}

/// Runs [`serve`] on a thread of its own (named `rest-api`) until `shutdown` is cancelled.
/// `on_exit` runs when the thread ends for any reason (a panic included): the agent treats
/// that as the end of an essential task. TLS settings come from the state, per connection.
pub fn spawn_thread(
    listener: TcpListener,
    limits: Limits,
    state: Arc<ApiState>,
    shutdown: CancellationToken,
    on_exit: impl FnOnce() + Send + 'static,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    use tracing::Instrument;
    /// Runs the callback when dropped, so also when the thread unwinds.
    struct OnExit<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for OnExit<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    // A listener belongs to the runtime that made it: hand it over as a std socket.
    let listener = listener.into_std()?;
    let span = tracing::Span::current();
    let handle = std::thread::Builder::new().name("rest-api".into()).spawn(move || {
        let _exit = OnExit(Some(on_exit));
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(error = %e, "cannot start the REST API's runtime");
                return;
            }
        };
        rt.block_on(
            async move {
                match TcpListener::from_std(listener) {
                    Ok(l) => serve(l, limits, state, shutdown).await,
                    Err(e) => tracing::error!(error = %e, "cannot use the REST API's socket"),
                }
            }
            .instrument(span),
        );
    })?;
    Ok(handle)
}

/// Serves the API on `listener` until `shutdown` is cancelled. Each connection uses the TLS
/// settings in force when it was accepted ([`ApiState::set_tls`]).
pub async fn serve(listener: TcpListener, limits: Limits, state: Arc<ApiState>, shutdown: CancellationToken) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let over_cap = || state.metrics.rest_rejected_limit.inc();
    while let Some((stream, peer, permit)) =
        outrigger_daemon::http::accept_within(&listener, &permits, &shutdown, over_cap).await
    {
        let acceptor = state.tls().map(tokio_rustls::TlsAcceptor::from);
        let (state, shutdown) = (state.clone(), shutdown.clone());
        tokio::spawn(async move {
            match acceptor {
                None => {
                    let info = ConnInfo { peer, client_cert: false };
                    serve_conn(stream, info, state, limits, shutdown).await;
                }
                Some(acceptor) => match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        let client_cert = tls.get_ref().1.peer_certificates().is_some_and(|c| !c.is_empty());
                        let info = ConnInfo { peer, client_cert };
                        serve_conn(tls, info, state, limits, shutdown).await;
                    }
                    Ok(Err(e)) => {
                        state.metrics.rest_tls_failed.inc();
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    }
                    Err(_) => {
                        state.metrics.rest_tls_failed.inc();
                        tracing::debug!(%peer, "TLS handshake timed out");
                    }
                },
            }
            drop(permit);
        });
    }
}
