//! ha-agent binary.
//!
//! Lifecycle:
//! 1. parse flags; `--check-config FILE` validates and exits;
//! 2. load and validate the config, start logging;
//! 3. start a small multi-threaded runtime (two workers, so that the lease keeper keeps its
//!    schedule even while the HA loop waits on a slow step) and run the agent: it refuses to
//!    start if another member with its name runs, binds the REST port, tells systemd READY,
//!    and loops until SIGTERM/SIGINT/SIGQUIT; SIGHUP reloads the config file;
//! 4. on a stop signal: stop PostgreSQL (paused: leave it running, as Patroni does), release
//!    the leader key, revoke the lease, tell systemd STOPPING, exit 0.
//!
//! A failure (etcd unusable, port taken, PostgreSQL user missing, an essential task that
//! died, a panic) exits 1 with the reason, and stops a PostgreSQL that may accept writes on
//! the way out; systemd restarts the unit.

use std::process::ExitCode;

use clap::Parser;
use outrigger_daemon::cli::{self, CommonArgs, Startup, startup};

/// Patroni-compatible HA agent for PostgreSQL (Outrigger).
#[derive(Debug, Parser)]
#[command(name = "ha-agent", version, about)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let cfg = match startup::<ha_agent::config::RawConfig>("ha-agent", &args.common, |c| c.log.clone()) {
        Startup::Exit(code) => return code,
        Startup::Run(cfg) => cfg,
    };
    let path = args.common.config.clone();
    cli::run_until_stopped("ha-agent", cli::Runtime::MultiThread { workers: 2 }, |ctl| {
        ha_agent::run::run(cfg, path, ctl)
    })
}
