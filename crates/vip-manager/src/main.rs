//! vip-manager binary.
//!
//! Lifecycle: parse flags → `--check-config FILE` validates and exits → otherwise load the
//! config and hand over to the library. The daemon's run mode lands with its own issue, so
//! running without `--check-config` says so and exits non-zero rather than pretend to work.

use std::process::ExitCode;

use clap::Parser;
use outrigger_daemon::cli::{CommonArgs, check_config, load_or_report};

/// VRRP and etcd-driven virtual IP manager (Outrigger).
#[derive(Debug, Parser)]
#[command(name = "vip-manager", version, about)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(path) = &args.common.check_config {
        return check_config::<vip_manager::config::RawConfig>(path);
    }
    let Some(path) = &args.common.config else {
        eprintln!("vip-manager: --config FILE is required (or --check-config FILE)");
        return ExitCode::from(2);
    };
    match load_or_report::<vip_manager::config::RawConfig>(path) {
        Ok(_cfg) => {
            eprintln!("vip-manager: the run mode is not implemented yet; only --check-config works in this build");
            ExitCode::from(1)
        }
        Err(code) => code,
    }
}
