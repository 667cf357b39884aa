//! ha-agent binary.
//!
//! Lifecycle:
//! 1. parse flags; `--check-config FILE` validates and exits;
//! 2. load and validate the config, start logging;
//! 3. start a small multi-threaded runtime (two workers, so that the lease keeper keeps its
//!    schedule even while the HA loop waits on a slow step) and run the agent: it binds the
//!    REST port, tells systemd READY, and loops until SIGTERM/SIGINT;
//! 4. on a signal: stop PostgreSQL, release the leader key, revoke the lease, tell systemd
//!    STOPPING, exit 0.
//!
//! A failure to start (etcd unusable, port taken, PostgreSQL user missing) exits 1 with the
//! reason; systemd restarts the unit.

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
    cli::run_until_stopped("ha-agent", cli::Runtime::MultiThread { workers: 2 }, |stop| ha_agent::run::run(cfg, stop))
}
