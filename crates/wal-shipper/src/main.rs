//! wal-shipper binary.
//!
//! Lifecycle: parse flags → `--check-config FILE` validates and exits → otherwise load the
//! config and hand over to the library. The daemon's run mode lands with its own issue, so
//! running without `--check-config` says so and exits non-zero rather than pretend to work.

use std::process::ExitCode;

use clap::Parser;
use outrigger_daemon::cli::{CommonArgs, check_config, load_or_report};

/// WAL archiving and base backups in WAL-G's bucket layout (Outrigger).
#[derive(Debug, Parser)]
#[command(name = "wal-shipper", version, about)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(path) = &args.common.check_config {
        return check_config::<wal_shipper::config::RawConfig>(path);
    }
    let Some(path) = &args.common.config else {
        eprintln!("wal-shipper: --config FILE is required (or --check-config FILE)");
        return ExitCode::from(2);
    };
    match load_or_report::<wal_shipper::config::RawConfig>(path) {
        Ok(_cfg) => {
            eprintln!("wal-shipper: the run mode is not implemented yet; only --check-config works in this build");
            ExitCode::from(1)
        }
        Err(code) => code,
    }
}
