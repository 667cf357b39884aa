//! Structured logs with `tracing-subscriber`: human text by default, JSON on request.

use tracing_subscriber::EnvFilter;

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

/// Installs the global subscriber. Safe to call twice (the second call does nothing), which
/// keeps tests that start several daemons in one process simple.
pub fn init(opts: &LogOptions) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .or_else(|| opts.level.as_deref().and_then(|l| EnvFilter::try_new(l).ok()))
        .unwrap_or_else(|| EnvFilter::new("info"));
    // Colour only on a terminal: in a journal or a log file escape codes are noise, and they
    // break simple searches such as "ERROR".
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    let _ = match opts.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).try_init(),
    };
}
