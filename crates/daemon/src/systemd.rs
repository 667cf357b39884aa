//! systemd's notify protocol: READY after the listeners are bound, STOPPING on shutdown, and
//! WATCHDOG pings at half the interval systemd asks for (`WatchdogSec=`). Without
//! `NOTIFY_SOCKET` every call is a no-op, so the daemons run the same outside systemd.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

pub fn ready() {
    send(&[NotifyState::Ready]);
}

pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

pub fn status(text: &str) {
    send(&[NotifyState::Status(text)]);
}

fn send(state: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!(error = %e, "sd_notify");
    }
}

/// The ping interval, if systemd set `WATCHDOG_USEC` for this process.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|d| d / 2)
}

/// Pings the systemd watchdog while `alive()` says the daemon's main loop is healthy. A loop
/// that stops making progress stops the pings, and systemd restarts the daemon.
pub fn spawn_watchdog<F>(shutdown: CancellationToken, alive: F) -> Option<tokio::task::JoinHandle<()>>
where
    F: Fn() -> bool + Send + 'static,
{
    let every = watchdog_interval()?;
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {
                    if alive() {
                        send(&[NotifyState::Watchdog]);
                    } else {
                        tracing::warn!("main loop is not making progress; withholding the systemd watchdog ping");
                    }
                }
            }
        }
    }))
}
