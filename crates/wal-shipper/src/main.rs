//! wal-shipper binary.
//!
//! Lifecycle: parse flags → `--check-config FILE` validates and exits → otherwise load the
//! config and hand over to the library. The daemon's run mode lands with its own issue, so
//! running without `--check-config` says so and exits non-zero rather than pretend to work.

use std::process::ExitCode;

use clap::Parser;
use outrigger_daemon::cli::{CommonArgs, Startup, startup};

/// WAL archiving and base backups in WAL-G's bucket layout (Outrigger).
#[derive(Debug, Parser)]
#[command(name = "wal-shipper", version, about)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match startup::<wal_shipper::config::RawConfig>("wal-shipper", &args.common, |c| c.log.clone()) {
        Startup::Exit(code) => code,
        Startup::Run(_cfg) => {
            tracing::error!("the run mode is not implemented yet; only --check-config works in this build");
            ExitCode::from(1)
        }
    }
}
