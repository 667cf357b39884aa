//! ha-agent binary.
//!
//! Lifecycle: parse flags → `--check-config FILE` validates and exits → otherwise load the
//! config and hand over to the library. The HA loop is not built yet, so running without
//! `--check-config` says so and exits non-zero rather than pretend to manage a cluster.

use std::process::ExitCode;

use clap::Parser;
use outrigger_daemon::cli::{CommonArgs, check_config, load_or_report};

/// Patroni-compatible HA agent for PostgreSQL (Outrigger).
#[derive(Debug, Parser)]
#[command(name = "ha-agent", version, about)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(path) = &args.common.check_config {
        return check_config::<ha_agent::config::RawConfig>(path);
    }
    let Some(path) = &args.common.config else {
        eprintln!("ha-agent: --config FILE is required (or --check-config FILE)");
        return ExitCode::from(2);
    };
    match load_or_report::<ha_agent::config::RawConfig>(path) {
        Ok(_cfg) => {
            eprintln!("ha-agent: the HA loop is not implemented yet; only --check-config works in this build");
            ExitCode::from(1)
        }
        Err(code) => code,
    }
}
