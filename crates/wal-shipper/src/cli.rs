//! The command line: WAL-G's verbs and flags, and their exit codes.
//!
//! | exit | meaning |
//! |---|---|
//! | 0 | done |
//! | 1 | failed (archive_command: PostgreSQL retries; restore_command: treated as not there) |
//! | 2 | bad command line |
//! | 65, 66, 78 | the config file is not valid / cannot be read / has problems (as every daemon) |
//! | 74 | `wal-fetch`: the file is not in the archive (WAL-G's code) |

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use outrigger_daemon::cli::CommonArgs;

use crate::settings::{self, Settings};
use crate::storage::Store;
use crate::{walfetch, walpush};

pub const EXIT_NOT_FOUND: u8 = 74;

/// WAL archiving, base backups and point-in-time restore in WAL-G's bucket layout (Outrigger).
#[derive(Debug, Parser)]
#[command(name = "wal-shipper", version, about)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// archive_command: upload one WAL file (`wal-push %p`).
    WalPush { path: PathBuf },
    /// restore_command: download one WAL file (`wal-fetch %f %p`); exit 74 if it is not there.
    WalFetch { name: String, dest: PathBuf },
    /// Take a base backup of PGDATA (the argument, or the PGDATA setting).
    BackupPush {
        pgdata: Option<PathBuf>,
        /// Mark the backup permanent: retention never deletes it.
        #[arg(short = 'p', long)]
        permanent: bool,
        /// Take a full backup even where a delta would be allowed.
        #[arg(short = 'f', long)]
        full: bool,
        /// JSON (or text) stored as the sentinel's UserData.
        #[arg(long)]
        add_user_data: Option<String>,
        /// WAL-G's flag to check page checksums. Accepted for compatibility: the check runs
        /// whenever the cluster has data checksums (WALG_VERIFY_PAGE_CHECKSUMS=false: never).
        #[arg(long)]
        verify: bool,
    },
    /// Restore a base backup into an empty folder: `backup-fetch DEST NAME|LATEST`.
    BackupFetch { dest: PathBuf, name: String },
    /// A replica method for ha-agent's or Patroni's `create_replica_methods`, and a bootstrap
    /// method for `bootstrap.method`: restores a backup (LATEST by default, or the newest one
    /// before `--target-time`) into `--datadir`; the caller then configures and starts the
    /// server, which replays the archive. Patroni's other arguments (`--scope`, `--role`,
    /// `--connstring`, the method's own `--key=value`) are accepted and ignored.
    CreateReplica {
        #[arg(long)]
        datadir: PathBuf,
        /// The backup to restore.
        #[arg(long, default_value = "LATEST")]
        backup: String,
        /// Restore the newest backup that finished at or before this time (RFC 3339, or
        /// PostgreSQL's `2026-12-03 10:00:00+00`), for a point-in-time bootstrap.
        #[arg(long)]
        target_time: Option<String>,
        #[arg(long)]
        scope: Option<String>,
        #[arg(long)]
        role: Option<String>,
        #[arg(long)]
        connstring: Option<String>,
        #[arg(allow_hyphen_values = true, trailing_var_arg = true, hide = true)]
        rest: Vec<String>,
    },
    /// List the backups (only basebackups_005/ is read, never the WAL folder).
    BackupList {
        #[arg(long)]
        json: bool,
        /// Read each backup's metadata: times, host, LSNs, sizes; ordered by start time.
        #[arg(long)]
        detail: bool,
        /// Accepted for WAL-G compatibility (the text output is always aligned).
        #[arg(long)]
        pretty: bool,
    },
    /// Mark a backup permanent, or with -i impermanent again.
    BackupMark {
        name: String,
        #[arg(short = 'i', long)]
        impermanent: bool,
    },
    /// Delete old backups and WAL: `delete retain N`, `before NAME`, `everything [FORCE]`.
    /// A dry run unless --confirm.
    Delete {
        #[arg(required = true, num_args = 1..)]
        args: Vec<String>,
        #[arg(long)]
        confirm: bool,
    },
    /// Check the archive: `wal-verify integrity timeline` (either or both).
    WalVerify {
        #[arg(required = true, num_args = 1..)]
        checks: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Upload-ahead: upload every `.ready` WAL file of PGDATA as soon as PostgreSQL marks it,
    /// so archive_command's wal-push returns at once; serves /metrics. With `[etcd]` and
    /// `[cluster]` in the TOML file it also publishes the member's archive status and takes
    /// the cluster's scheduled backups, one member at a time.
    Daemon { pgdata: Option<PathBuf> },
    /// Internal: fetch the segments after NAME into DIR (started by wal-fetch).
    #[command(hide = true)]
    WalPrefetch { name: String, dir: PathBuf },
}

/// Runs the command line; returns the process exit code.
pub fn main(args: Args) -> ExitCode {
    let env = |k: &str| std::env::var(k).ok();
    if let Some(path) = &args.common.check_config {
        return match settings::load(Some(path), &env) {
            Ok(_) => {
                println!("{}: ok", path.display());
                ExitCode::SUCCESS
            }
            Err(e) => config_error(&e),
        };
    }
    let Some(command) = args.command else {
        eprintln!("wal-shipper: a command is required (see --help)");
        return ExitCode::from(2);
    };
    // The fast path of upload-ahead: the daemon already stored this segment. Nothing else is
    // loaded, so the call returns in about a millisecond.
    if let Command::WalPush { path } = &command
        && let (Some(dir), Ok(name)) = (path.parent(), walpush::checked_name(path))
        && walpush::consume_marker(dir, &name)
    {
        return ExitCode::SUCCESS;
    }
    let s = match settings::load(args.common.config.as_deref(), &env) {
        Ok(s) => s,
        Err(e) => return config_error(&e),
    };
    let mut log = s.log.clone();
    if let Some(f) = args.common.log_format_override() {
        log.format = f;
    }
    outrigger_daemon::logging::init(&log);
    if let Command::Daemon { pgdata } = command {
        let config = args.common.config.clone();
        return outrigger_daemon::cli::run_until_stopped(
            "wal-shipper",
            outrigger_daemon::cli::Runtime::MultiThread { workers: 2 },
            move |ctl| daemon(s, config, pgdata, ctl),
        );
    }
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("wal-shipper: start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = rt.block_on(run(command, s));
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    code
}

async fn run(command: Command, s: Settings) -> ExitCode {
    let store = match Store::open(&s.storage, s.request_timeout) {
        Ok(st) => st,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "open the storage");
            return ExitCode::FAILURE;
        }
    };
    match command {
        Command::WalPush { path } => done(wal_push(&store, &s, &path).await),
        Command::WalFetch { name, dest } => match wal_fetch(&store, &s, &name, &dest).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(walfetch::FetchError::NotFound(n)) => {
                tracing::info!(file = %n, "not in the archive");
                ExitCode::from(EXIT_NOT_FOUND)
            }
            Err(walfetch::FetchError::Failed(e)) => done(Err(e)),
        },
        Command::BackupPush { pgdata, permanent, full, add_user_data, verify: _ } => {
            let user_data = add_user_data.map(|t| serde_json::from_str(&t).unwrap_or(serde_json::Value::String(t)));
            let opts = crate::backup::push::PushOptions { permanent, full, user_data };
            done(
                async {
                    let pgdata = crate::backup::push::pgdata_of(pgdata, &s)?;
                    crate::backup::push::push(&store, &s, &pgdata, &opts).await.map(|name| println!("{name}"))
                }
                .await,
            )
        }
        Command::BackupFetch { dest, name } => {
            done(crate::backup::fetch::fetch(&store, &s, &dest, &name).await.map(drop))
        }
        Command::CreateReplica { datadir, backup, target_time, scope, role, connstring: _, rest } => {
            tracing::info!(datadir = %datadir.display(), backup = %backup, target_time = ?target_time, scope = ?scope, role = ?role, ignored = ?rest, "restoring a data directory from the archive");
            done(
                async {
                    let name = match target_time {
                        Some(t) => crate::backup::newest_before(&store, &s, &t).await?,
                        None => backup,
                    };
                    crate::backup::fetch::fetch(&store, &s, &datadir, &name).await.map(drop)
                }
                .await,
            )
        }
        Command::BackupList { json, detail, pretty: _ } => {
            done(crate::report::backup_list(&store, &s, json, detail).await)
        }
        Command::BackupMark { name, impermanent } => {
            done(crate::report::backup_mark(&store, &name, !impermanent).await)
        }
        // Runs on its own runtime, with signal handling: started in `main`, never here.
        Command::Daemon { .. } => ExitCode::FAILURE,
        Command::Delete { args, confirm } => done(
            async {
                let mode = crate::ops::parse_delete(&args)?;
                crate::ops::delete(&store, &s, &mode, confirm).await
            }
            .await,
        ),
        Command::WalVerify { checks, json } => done(crate::ops::wal_verify(&store, &s, &checks, json).await),
        Command::WalPrefetch { name, dir } => {
            done(walfetch::prefetch(&store, &s.codec, &name, &dir, s.download_concurrency).await)
        }
    }
}

/// Prints the config's problems and returns the daemons' exit code for them.
fn config_error(e: &settings::ConfigError) -> ExitCode {
    eprintln!("{e}");
    ExitCode::from(outrigger_daemon::cli::exit_code(e))
}

fn done(r: anyhow::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "failed");
            ExitCode::FAILURE
        }
    }
}

async fn wal_push(store: &Store, s: &Settings, path: &std::path::Path) -> anyhow::Result<()> {
    let name = walpush::checked_name(path)?;
    let data = tokio::fs::read(path).await.with_context(|| format!("read {}", path.display()))?;
    let push = walpush::push_bytes(store, &s.codec, s.prevent_wal_overwrite, &name, data.into());
    let outcome = tokio::time::timeout(s.push_timeout, push)
        .await
        .map_err(|_| anyhow::anyhow!("upload of {name} did not finish within {:?}", s.push_timeout))??;
    tracing::debug!(file = %name, outcome = ?outcome, "archived");
    // A new timeline's history is archived right after a promotion, on the new primary.
    if name.ends_with(".history")
        && let Some(pg_wal) = path.parent()
    {
        walpush::backfill(store, &s.codec, pg_wal, &name).await?;
    }
    Ok(())
}

async fn wal_fetch(
    store: &Store,
    s: &Settings,
    name: &str,
    dest: &std::path::Path,
) -> Result<(), walfetch::FetchError> {
    let pdir = walfetch::prefetch_dir(dest, s.prefetch_dir.as_deref());
    if !walfetch::take_prefetched(&pdir, name, dest) {
        let fetch = walfetch::download(store, &s.codec, name);
        let data = tokio::time::timeout(s.push_timeout, fetch)
            .await
            .map_err(|_| anyhow::anyhow!("download of {name} did not finish within {:?}", s.push_timeout))??;
        let dest = dest.to_owned();
        tokio::task::spawn_blocking(move || walfetch::write_atomically(&dest, &data)).await.context("write")??;
    }
    if s.download_concurrency > 1 && !walfetch::next_segments(name, 1).is_empty() {
        spawn_prefetch(name, &pdir);
    }
    Ok(())
}

/// Starts a detached `wal-prefetch` (its own session, no stdio), so the restore_command
/// returns at once. Failing to start it only costs speed.
fn spawn_prefetch(name: &str, dir: &std::path::Path) {
    use std::os::unix::process::CommandExt;
    let Ok(exe) = std::env::current_exe() else { return };
    let mut c = std::process::Command::new(exe);
    c.args(std::env::args_os().skip(1).take_while(|a| a != "wal-fetch"));
    c.arg("wal-prefetch").arg(name).arg(dir);
    c.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    c.process_group(0);
    if let Err(e) = c.spawn() {
        tracing::warn!(error = %e, "start the prefetcher");
    }
}

/// SIGHUP: re-read the settings (the file, and the environment as at start) and hand the new
/// ones to the upload-ahead loop ([`Settings::reloaded`] says which apply).
async fn reload_settings(
    path: Option<PathBuf>,
    mut requests: outrigger_daemon::shutdown::ReloadRequests,
    mut running: Settings,
    to: tokio::sync::watch::Sender<std::sync::Arc<Settings>>,
    metrics: crate::metrics::Metrics,
) {
    let shown = path.clone().unwrap_or_else(|| PathBuf::from("(environment)"));
    while requests.next().await {
        let env = |k: &str| std::env::var(k).ok();
        let Some(new) = outrigger_daemon::reload::report(&shown, settings::load(path.as_deref(), &env)) else {
            metrics.reload(outrigger_daemon::reload::Outcome::Invalid);
            continue;
        };
        let (next, plan) = running.reloaded(&new);
        metrics.reload(plan.log("wal-shipper"));
        plan.apply_log_level(&next.log);
        if !plan.applied.is_empty() {
            to.send_replace(std::sync::Arc::new(next.clone()));
        }
        running = next;
    }
}

async fn daemon(
    s: Settings,
    config: Option<PathBuf>,
    pgdata: Option<PathBuf>,
    ctl: outrigger_daemon::shutdown::Control,
) -> anyhow::Result<()> {
    let pgdata = crate::backup::push::pgdata_of(pgdata, &s)?;
    let store = Store::open(&s.storage, s.request_timeout)?;
    let metrics = crate::metrics::Metrics::new();
    let http = match s.metrics_listen {
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("listen on {addr}"))?;
            tracing::info!(listen = %addr, "serving /metrics");
            Some(tokio::spawn(outrigger_daemon::metrics::serve(l, metrics.registry.clone(), ctl.stop.clone())))
        }
        None => None,
    };
    let beat = std::sync::Arc::new(std::sync::Mutex::new(std::time::Instant::now()));
    let seen = beat.clone();
    let _watchdog = outrigger_daemon::systemd::spawn_watchdog(ctl.stop.clone(), move || {
        seen.lock().map(|t| t.elapsed() < std::time::Duration::from_secs(10)).unwrap_or(false)
    });
    outrigger_daemon::systemd::ready();
    // With [etcd] and [cluster]: the status and the scheduled backups, beside upload-ahead.
    let cluster = s.cluster.clone().map(|cs| {
        let (store, s, pgdata, metrics, stop) =
            (store.clone(), std::sync::Arc::new(s.clone()), pgdata.clone(), metrics.clone(), ctl.stop.clone());
        tokio::spawn(crate::cluster::run::run(cs, store, s, pgdata, metrics, stop))
    });
    let (settings_tx, settings_rx) = tokio::sync::watch::channel(std::sync::Arc::new(s.clone()));
    let reloader = tokio::spawn(reload_settings(config, ctl.reloads(), s, settings_tx, metrics.clone()));
    let r = crate::daemon::run(store, settings_rx, pgdata, metrics, ctl.stop.clone(), beat).await;
    reloader.abort();
    ctl.stop.cancel();
    if let Some(h) = cluster {
        match h.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %format!("{e:#}"), "cluster loop failed"),
            Err(e) => tracing::error!(error = %e, "cluster loop panicked"),
        }
    }
    if let Some(h) = http {
        let _ = h.await;
    }
    r
}
