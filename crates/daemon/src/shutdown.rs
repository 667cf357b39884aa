//! Signals: SIGTERM, SIGINT and SIGQUIT stop the daemon (a token is cancelled and the daemon
//! has a deadline to release what it holds); SIGHUP asks it to reload its config file, as
//! `systemctl reload` does (`ExecReload=/bin/kill -HUP $MAINPID`); signals whose default action
//! would kill the process on the spot are caught, so that no stray signal can end a daemon
//! without its clean-up (an ha-agent killed that way would leave a primary running unfenced).
//!
//! Only SIGKILL and SIGSTOP cannot be caught; ha-agent's watchdog covers those.

use std::time::Duration;

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Which signal asked us to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopSignal {
    Term,
    Int,
    Quit,
    /// SIGPWR or SIGXCPU: the system asks for an orderly end.
    System,
}

/// What a daemon's run function gets from [`crate::cli::run_until_stopped`]: the stop token
/// and its reload requests.
#[derive(Debug, Clone)]
pub struct Control {
    pub stop: CancellationToken,
    reloads: std::sync::Arc<watch::Sender<u64>>,
}

/// SIGHUPs received, one wake-up per burst (a reload re-reads the file, so two SIGHUPs while a
/// reload runs need only one more).
#[derive(Debug, Clone)]
pub struct ReloadRequests(watch::Receiver<u64>);

impl ReloadRequests {
    /// Waits for the next SIGHUP. Returns false once the daemon is shutting down.
    pub async fn next(&mut self) -> bool {
        self.0.changed().await.is_ok()
    }
}

impl Control {
    /// A control whose reload requests are sent through `reloads` (by [`listen`], or a test).
    pub fn new(stop: CancellationToken, reloads: std::sync::Arc<watch::Sender<u64>>) -> Self {
        Self { stop, reloads }
    }

    /// Subscribes to SIGHUP. A daemon that never subscribes tells the operator, on each
    /// SIGHUP, that it has nothing to reload.
    pub fn reloads(&self) -> ReloadRequests {
        ReloadRequests(self.reloads.subscribe())
    }

    /// Reload requests with the file they re-read; `None` for a daemon started without one.
    pub fn reload_source(&self, config: Option<&std::path::Path>) -> Option<crate::reload::Source> {
        config.map(|path| crate::reload::Source { path: path.to_owned(), requests: self.reloads() })
    }
}

/// The signal handlers, installed at once (before the daemon starts its work), so that no
/// signal arriving during start-up takes the default action.
pub struct Handlers {
    stop: Vec<(StopSignal, Signal)>,
    hup: Signal,
    ignored: Vec<(&'static str, Signal)>,
}

impl Handlers {
    pub fn install() -> std::io::Result<Self> {
        let stop = vec![
            (StopSignal::Term, signal(SignalKind::terminate())?),
            (StopSignal::Int, signal(SignalKind::interrupt())?),
            (StopSignal::Quit, signal(SignalKind::quit())?),
            (StopSignal::System, signal(SignalKind::from_raw(libc::SIGPWR))?),
            (StopSignal::System, signal(SignalKind::from_raw(libc::SIGXCPU))?),
        ];
        let mut ignored = Vec::new();
        for (name, n) in [
            ("SIGUSR1", libc::SIGUSR1),
            ("SIGUSR2", libc::SIGUSR2),
            ("SIGALRM", libc::SIGALRM),
            ("SIGVTALRM", libc::SIGVTALRM),
            ("SIGPROF", libc::SIGPROF),
            ("SIGIO", libc::SIGIO),
            ("SIGXFSZ", libc::SIGXFSZ),
            ("SIGSTKFLT", libc::SIGSTKFLT),
        ] {
            ignored.push((name, signal(SignalKind::from_raw(n))?));
        }
        Ok(Self { stop, hup: signal(SignalKind::hangup())?, ignored })
    }
}

/// Runs the handlers until a stop signal (or `stop` cancelled elsewhere): SIGHUP bumps
/// `reloads`; a stop signal cancels `stop` and is returned.
pub async fn listen(
    mut h: Handlers,
    stop: CancellationToken,
    reloads: std::sync::Arc<watch::Sender<u64>>,
) -> StopSignal {
    loop {
        let stops = first(&mut h.stop);
        let ignored = first(&mut h.ignored);
        tokio::select! {
            which = stops => {
                tracing::info!(signal = ?which, "shutting down");
                stop.cancel();
                return which;
            }
            _ = h.hup.recv() => {
                if reloads.receiver_count() > 0 {
                    reloads.send_modify(|n| *n += 1);
                    tracing::info!("SIGHUP: reloading the config file");
                } else {
                    tracing::warn!("SIGHUP: this daemon reads its config file only at start; restart it to apply changes");
                }
            }
            name = ignored => tracing::warn!(signal = name, "ignoring a signal this daemon does not use"),
            () = stop.cancelled() => return StopSignal::Term,
        }
    }
}

/// The label of the first of several signal streams to fire.
async fn first<T: Copy>(sigs: &mut [(T, Signal)]) -> T {
    std::future::poll_fn(|cx| {
        for (label, s) in sigs.iter_mut() {
            if s.poll_recv(cx).is_ready() {
                return std::task::Poll::Ready(*label);
            }
        }
        std::task::Poll::Pending
    })
    .await
}

/// Cancels `token` on the first stop signal and returns which it was (SIGHUP and the ignored
/// signals are handled meanwhile). Installing the handlers can only fail if the runtime has
/// no signal driver, which is a programming error reported as such.
pub async fn on_signal(token: CancellationToken) -> std::io::Result<StopSignal> {
    let h = Handlers::install()?;
    Ok(listen(h, token, std::sync::Arc::new(watch::channel(0).0)).await)
}

/// Runs `fut` (the clean-up) for at most `deadline`; says so if it had to give up.
pub async fn within<F: std::future::Future<Output = ()>>(deadline: Duration, what: &str, fut: F) {
    if tokio::time::timeout(deadline, fut).await.is_err() {
        tracing::warn!(what, ?deadline, "shutdown step did not finish in time; exiting anyway");
    }
}
