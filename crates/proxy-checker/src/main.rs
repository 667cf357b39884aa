//! proxy-checker binary.
//!
//! Lifecycle:
//! 1. parse flags; `--check-config FILE` validates and exits;
//! 2. load the config (exit 78 with one line per problem if it is invalid), start logging;
//! 3. on a single-threaded runtime (one core serves tens of thousands of checks a second, and
//!    one thread keeps memory small): install the SIGTERM/SIGINT handler and run the library,
//!    which binds the check and agent ports, starts following etcd and polling PostgreSQL,
//!    signals READY and answers checks;
//!    SIGHUP re-reads the config file and applies what can change while running;
//! 4. on a signal, stop (exit 0); if a listener cannot be bound or a task dies, exit 1 so that
//!    systemd restarts the daemon. Until the first etcd read and PostgreSQL poll succeed, every
//!    check that needs them answers 503.

use std::process::ExitCode;

use clap::Parser;
use outrigger_daemon::cli::{self, CommonArgs};
use outrigger_daemon::systemd;
use proxy_checker::config::RawConfig;

/// HAProxy health-check endpoints for Patroni-layout clusters (Outrigger).
#[derive(Debug, Parser)]
#[command(name = "proxy-checker", version, about)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let cfg = match cli::startup::<RawConfig>("proxy-checker", &args.common, |c| c.log.clone()) {
        cli::Startup::Run(cfg) => cfg,
        cli::Startup::Exit(code) => return code,
    };
    cli::run_until_stopped("proxy-checker", cli::Runtime::CurrentThread, |ctl| {
        let reloads = ctl.reload_source(args.common.config.as_deref());
        proxy_checker::run(cfg, ctl.stop, reloads, systemd::ready)
    })
}
