//! vip-manager binary.
//!
//! Lifecycle:
//! 1. parse flags; `--check-config FILE` validates and exits;
//! 2. load the config (exit 78 with one line per problem if it is invalid), start logging;
//! 3. on a single-threaded runtime (VRRP mode runs the protocol itself on one more thread,
//!    which blocks on its socket and timer as keepalived does; see `run::vrrp`): install the
//!    SIGTERM/SIGINT handler, start the systemd watchdog pings, and run the library's loop,
//!    which removes a stale VIP, opens its sockets, signals READY and runs;
//!    SIGHUP re-reads the config file and applies what can change while running;
//! 4. on a signal or a fatal error the loop releases the VIP (VRRP priority 0 first) before it
//!    returns; exit 0 after a signal, 1 after an error.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use outrigger_daemon::cli::{self, CommonArgs};
use outrigger_daemon::systemd;
use vip_manager::config::RawConfig;

/// VRRP and etcd-driven virtual IP manager (Outrigger).
#[derive(Debug, Parser)]
#[command(name = "vip-manager", version, about)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let cfg = match cli::startup::<RawConfig>("vip-manager", &args.common, |c| c.log.clone()) {
        cli::Startup::Run(cfg) => cfg,
        cli::Startup::Exit(code) => return code,
    };
    // The VIP is released by the library on every way out, errors included.
    cli::run_until_stopped("vip-manager", cli::Runtime::CurrentThread, |ctl| async move {
        let reloads = ctl.reload_source(args.common.config.as_deref());
        let stop = ctl.stop;
        let progress = vip_manager::Progress::default();
        let alive = progress.clone();
        let _watchdog = systemd::spawn_watchdog(stop.clone(), move || alive.alive(Duration::from_secs(15)));
        vip_manager::run(cfg, stop, reloads, progress, systemd::ready).await
    })
}
