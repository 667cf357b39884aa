//! Structured logs with `tracing-subscriber`: human text by default, JSON on request. The
//! level can be changed while running ([`set_level`], used by a config reload on SIGHUP).

use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, fmt, reload};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogOptions {
    pub format: LogFormat,
    /// From the config file; `RUST_LOG`, when set, wins over it.
    pub level: Option<String>,
}

static LEVEL: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

fn filter_for(level: Option<&str>) -> EnvFilter {
    std::env::var("RUST_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .or_else(|| level.and_then(|l| EnvFilter::try_new(l).ok()))
        .unwrap_or_else(|| EnvFilter::new("info"))
}

/// Installs the global subscriber. Safe to call twice (the second call does nothing), which
/// keeps tests that start several daemons in one process simple.
pub fn init(opts: &LogOptions) {
    let (filter, handle) = reload::Layer::new(filter_for(opts.level.as_deref()));
    // Colour only on a terminal: in a journal or a log file escape codes are noise, and they
    // break simple searches such as "ERROR".
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none();
    let installed = match opts.format {
        LogFormat::Text => tracing_subscriber::registry()
            .with(filter)
            .with(fmt::layer().with_writer(std::io::stderr).with_ansi(ansi))
            .try_init(),
        LogFormat::Json => tracing_subscriber::registry()
            .with(filter)
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_writer(std::io::stderr)
                    .with_ansi(false),
            )
            .try_init(),
    };
    if installed.is_ok() {
        let _ = LEVEL.set(handle);
    }
}

/// Applies a new `log.level` (a config reload). `RUST_LOG`, when set, still wins, as at start.
/// Returns whether the running filter was replaced.
pub fn set_level(level: Option<&str>) -> bool {
    LEVEL.get().is_some_and(|h| h.reload(filter_for(level)).is_ok())
}
