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

/// Patroni-compatible HA agent for PostgreSQL (Outrigger). `--config` takes ha-agent's TOML or
/// Patroni's own YAML (a .yml or .yaml file, with the PATRONI_* environment variables).
#[derive(Debug, Parser)]
#[command(name = "ha-agent", version, about)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Debug, clap::Subcommand)]
enum Cmd {
    /// Print a Patroni YAML config file (and the PATRONI_* environment) as ha-agent's TOML,
    /// with the Patroni settings ha-agent does not use as comments; exits 78 when the result
    /// has problems (named on stderr).
    ConvertConfig {
        /// Patroni's config file.
        file: std::path::PathBuf,
    },
}

/// `convert-config`: the translation on stdout, problems on stderr.
fn convert(file: &std::path::Path) -> ExitCode {
    use outrigger_daemon::config::Validate as _;
    let shown = file.display().to_string();
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("cannot read {shown}: {e}");
            return ExitCode::from(cli::EXIT_UNREADABLE);
        }
    };
    let t = match ha_agent::config::translate_patroni(&shown, &text) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(cli::exit_code(&e));
        }
    };
    let rendered = ha_agent::patroni_yaml::render(&t, &shown);
    print!("{rendered}");
    let checked =
        outrigger_daemon::config::parse_toml::<ha_agent::config::RawConfig>(&shown, &rendered).and_then(|raw| {
            raw.validate()
                .map_err(|problems| outrigger_daemon::config::ConfigError::Invalid { path: shown.clone(), problems })
        });
    match checked {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(cli::exit_code(&e))
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(Cmd::ConvertConfig { file }) = &args.command {
        return convert(file);
    }
    let cfg = match startup::<ha_agent::config::RawConfig>("ha-agent", &args.common, |c| c.log.clone()) {
        Startup::Exit(code) => return code,
        Startup::Run(cfg) => cfg,
    };
    let path = args.common.config.clone();
    cli::run_until_stopped("ha-agent", cli::Runtime::MultiThread { workers: 2 }, |ctl| {
        ha_agent::run::run(cfg, path, ctl)
    })
}
