//! The flags every daemon shares, and what a config check exits with.
//!
//! | exit code | meaning |
//! |---|---|
//! | 0 | config is valid (`--check-config`), or clean shutdown |
//! | 2 | bad command line (clap) |
//! | 65 | the config file is not valid TOML |
//! | 66 | the config file cannot be read |
//! | 78 | the config has problems: one line each, naming key, value and rule |

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde::de::DeserializeOwned;

use crate::config::{ConfigError, Validate, load};
use crate::logging::LogFormat;

pub const EXIT_SYNTAX: u8 = 65;
pub const EXIT_UNREADABLE: u8 = 66;
pub const EXIT_INVALID: u8 = 78;

/// Flags shared by the five daemons, flattened into each one's clap parser.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// The daemon's TOML config file.
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Validate FILE and exit: 0 if valid, else one line per problem and a non-zero code.
    #[arg(long, value_name = "FILE", conflicts_with = "config")]
    pub check_config: Option<PathBuf>,
    /// Log as JSON lines instead of text (overrides `log.format`).
    #[arg(long)]
    pub log_json: bool,
}

pub fn exit_code(e: &ConfigError) -> u8 {
    match e {
        ConfigError::Unreadable { .. } => EXIT_UNREADABLE,
        ConfigError::Syntax { .. } => EXIT_SYNTAX,
        ConfigError::Invalid { .. } => EXIT_INVALID,
    }
}

/// Loads and validates a config, printing the problems to stderr on failure.
pub fn load_or_report<Raw: DeserializeOwned + Validate>(path: &Path) -> Result<Raw::Valid, ExitCode> {
    load::<Raw>(path).map_err(|e| {
        eprintln!("{e}");
        ExitCode::from(exit_code(&e))
    })
}

/// `--check-config FILE`: prints `<file>: ok` or the problems, and returns the exit code.
pub fn check_config<Raw: DeserializeOwned + Validate>(path: &Path) -> ExitCode {
    match load_or_report::<Raw>(path) {
        Ok(_) => {
            println!("{}: ok", path.display());
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

impl CommonArgs {
    pub fn log_format_override(&self) -> Option<LogFormat> {
        self.log_json.then_some(LogFormat::Json)
    }
}

/// What a daemon's `main` does after [`startup`].
#[derive(Debug)]
pub enum Startup<T> {
    /// Run the daemon with this validated config (logging is initialised).
    Run(T),
    /// Exit now with this code (`--check-config` done, or the config is unusable).
    Exit(ExitCode),
}

/// The start every daemon shares: `--check-config FILE` validates and exits; otherwise
/// `--config FILE` is loaded and validated, logging is set up from it (`--log-json` wins), and
/// the config is handed back to run with.
pub fn startup<Raw: DeserializeOwned + Validate>(
    bin: &str,
    args: &CommonArgs,
    log_options: impl Fn(&Raw::Valid) -> crate::logging::LogOptions,
) -> Startup<Raw::Valid> {
    if let Some(path) = &args.check_config {
        return Startup::Exit(check_config::<Raw>(path));
    }
    let Some(path) = &args.config else {
        eprintln!("{bin}: --config FILE is required (or --check-config FILE)");
        return Startup::Exit(ExitCode::from(2));
    };
    match load_or_report::<Raw>(path) {
        Ok(cfg) => {
            let mut log = log_options(&cfg);
            if let Some(f) = args.log_format_override() {
                log.format = f;
            }
            crate::logging::init(&log);
            Startup::Run(cfg)
        }
        Err(code) => Startup::Exit(code),
    }
}

/// The runtime a daemon runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    /// One thread: small and enough for daemons that only answer and poll.
    CurrentThread,
    MultiThread {
        workers: usize,
    },
}

/// The rest of every daemon's `main` after [`startup`]: builds the runtime, installs the
/// signal handlers (SIGTERM/SIGINT/SIGQUIT cancel `Control::stop`, SIGHUP is a reload
/// request, see [`crate::shutdown`]), runs the daemon until it returns, tells systemd
/// STOPPING, and maps the result to the exit code (1 on an error, so that systemd restarts the
/// daemon).
pub fn run_until_stopped<F, Fut>(bin: &str, runtime: Runtime, run: F) -> ExitCode
where
    F: FnOnce(crate::shutdown::Control) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let built = match runtime {
        Runtime::CurrentThread => tokio::runtime::Builder::new_current_thread().enable_all().build(),
        Runtime::MultiThread { workers } => {
            tokio::runtime::Builder::new_multi_thread().worker_threads(workers).enable_all().build()
        }
    };
    let rt = match built {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{bin}: start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        // Installed before the daemon does anything, so that no signal takes its default
        // action (termination) while the daemon holds something it must release.
        let handlers = match crate::shutdown::Handlers::install() {
            Ok(h) => h,
            Err(e) => return Err(anyhow::anyhow!("install signal handlers: {e}")),
        };
        let stop = tokio_util::sync::CancellationToken::new();
        let reloads = std::sync::Arc::new(tokio::sync::watch::channel(0u64).0);
        let signals = tokio::spawn(crate::shutdown::listen(handlers, stop.clone(), reloads.clone()));
        // A task of its own, not the future `block_on` polls: waking a task from the driver
        // queues it on this thread, while waking the `block_on` future writes the runtime's
        // eventfd and costs a second epoll round trip per timer or packet (vip-manager at
        // 0.1 s adverts spent a third of its CPU on that).
        let result = match tokio::spawn(run(crate::shutdown::Control::new(stop.clone(), reloads))).await {
            Ok(r) => r,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(anyhow::anyhow!("the daemon task ended: {e}")),
        };
        crate::systemd::stopping();
        stop.cancel();
        let _ = signals.await;
        result
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "{bin} stopped on an error");
            ExitCode::FAILURE
        }
    }
}
