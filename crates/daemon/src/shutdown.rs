//! Graceful shutdown: SIGTERM or SIGINT cancels a token; the daemon then has a deadline to
//! release what it holds (a leader key, a VIP) before it exits anyway.

use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// Which signal asked us to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopSignal {
    Term,
    Int,
}

/// Cancels `token` on the first SIGTERM or SIGINT and returns which it was. Installing the
/// handlers can only fail if the runtime has no signal driver, which is a programming error
/// reported as such.
pub async fn on_signal(token: CancellationToken) -> std::io::Result<StopSignal> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let which = tokio::select! {
        _ = term.recv() => StopSignal::Term,
        _ = int.recv() => StopSignal::Int,
        () = token.cancelled() => return Ok(StopSignal::Term),
    };
    tracing::info!(signal = ?which, "shutting down");
    token.cancel();
    Ok(which)
}

/// Runs `fut` (the clean-up) for at most `deadline`; says so if it had to give up.
pub async fn within<F: std::future::Future<Output = ()>>(deadline: Duration, what: &str, fut: F) {
    if tokio::time::timeout(deadline, fut).await.is_err() {
        tracing::warn!(what, ?deadline, "shutdown step did not finish in time; exiting anyway");
    }
}
