//! Start-up and the main loop: connect, refuse a duplicate member name, arm the exit fence,
//! start the supervised tasks, then loop until a stop signal.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use outrigger_daemon::shutdown::Control;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{Agent, ExitFence, Progress};
use crate::clock::Clock;
use crate::config::{Config, Timings};
use crate::core::{DynConfig, Memory, Settings};
use crate::dcs::Dcs;
use crate::http::{self, ApiState};
use crate::lease::LeaseHandle;
use crate::metrics::Metrics;
use crate::pg::Postgres;

pub(super) fn settings_of(cfg: &Config) -> Settings {
    Settings {
        name: cfg.name.clone(),
        timings: cfg.timings,
        tags: cfg.tags.clone(),
        use_pg_rewind: cfg.postgresql.use_pg_rewind,
        remove_data_directory_on_rewind_failure: cfg.postgresql.remove_data_directory_on_rewind_failure,
        remove_data_directory_on_diverged_timelines: cfg.postgresql.remove_data_directory_on_diverged_timelines,
    }
}

pub(super) fn api_settings_of(cfg: &Config) -> http::ApiSettings {
    http::ApiSettings {
        scope: cfg.layout.scope().to_owned(),
        name: cfg.name.clone(),
        ttl: cfg.timings.ttl,
        loop_wait: cfg.timings.loop_wait,
        peer_timeout: cfg.peer_timeout,
        access: cfg.restapi.access.clone(),
        command_timeout: cfg.restapi.action_timeout,
    }
}

/// The timings to start with: the cluster's config key's when etcd answers now and they can
/// be used (see `core::timing`), else the local `[timings]`. The HA loop re-reads them every
/// cycle (`Agent::apply_timings`).
async fn initial_timings(dcs: &Dcs, cfg: &Config) -> (Timings, crate::core::watchdog::Settings) {
    let local = (cfg.timings, cfg.watchdog.clone());
    let Ok((revision, kvs)) = dcs.snapshot().await else { return local };
    let (view, _) = crate::core::ClusterView::decode(dcs.layout(), revision, &kvs);
    let crate::core::ConfigState::Valid(c) = view.config else { return local };
    super::reload::timings_asked(cfg, &c.timings).map_or(local, |(t, _, wd)| (t, wd))
}

/// Patroni's `ensure_unique_name`: if etcd has a member key with our name and that member's
/// REST API answers, another agent with our name runs, and this one must not start (two
/// agents with one name would each take the other's leader key for their own).
async fn ensure_unique_name(dcs: &Dcs, cfg: &Config) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + cfg.timings.ttl;
    let kvs = loop {
        match dcs.snapshot().await {
            Ok((_, kvs)) => break kvs,
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::debug!(error = %e, "reading etcd for the unique-name check; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => {
                // Without etcd, a duplicate can do nothing either (no leader key to take);
                // the running check in every cycle catches it once etcd answers.
                tracing::warn!(error = %e, "etcd unreachable: starting without the unique-name check");
                return Ok(());
            }
        }
    };
    let (view, _) = crate::core::ClusterView::decode(dcs.layout(), 0, &kvs);
    let Some(m) = view.member(&cfg.name) else { return Ok(()) };
    if m.api_url.is_empty() {
        return Ok(());
    }
    let liveness = m.api_url.replace("/patroni", "/liveness");
    if http::probe::answers(&liveness, Duration::from_secs(3)).await {
        anyhow::bail!(
            "another member named {:?} is running (its REST API at {} answers): refusing to start; give each member its own name",
            cfg.name,
            m.api_url
        );
    }
    Ok(())
}

pub(super) async fn run(
    cfg: Config,
    config_path: Option<PathBuf>,
    ctl: Control,
    fence: &ExitFence,
) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new(cfg.layout.scope(), &cfg.name));
    // Every etcd client connects lazily (with user/password a connect authenticates): one
    // member down must not keep the agent from starting, nor leave its PostgreSQL unfenced.
    let hedged = outrigger_etcd::PerEndpoint::new(&cfg.etcd);
    let dcs = Dcs::new(hedged.clone(), cfg.layout.clone(), &cfg.name);
    ensure_unique_name(&dcs, &cfg).await?;
    // From here on, this agent manages the local PostgreSQL: no exit leaves it unfenced.
    fence.arm(metrics.clone());

    let clock = Clock::new();
    // The first lease is granted with the cluster's ttl when the config key can be read now
    // (a primary keeps the lease it has while it is one).
    let (timings, watchdog) = initial_timings(&dcs, &cfg).await;
    let lease = LeaseHandle::new(timings, watchdog.clone(), clock, cfg.postgresql.data_dir.clone(), metrics.clone());
    fence.set_lease(lease.clone());
    let (exit_tx, pg_exits) = mpsc::unbounded_channel();
    let pg = Postgres::new(cfg.postgresql.clone(), &cfg.name, cfg.layout.scope(), exit_tx)?;

    let listener = tokio::net::TcpListener::bind(cfg.restapi_listen)
        .await
        .with_context(|| format!("listen on {} (restapi.listen)", cfg.restapi_listen))?;
    let server_tls = match &cfg.restapi.tls {
        Some(t) => {
            http::probe::set_client_tls(http::tls::client_config(t).context("restapi TLS client settings")?);
            Some(http::tls::server_config(t).context("restapi TLS settings")?)
        }
        None => None,
    };
    let (commands_tx, commands) = mpsc::channel(16);
    let store: Arc<dyn http::store::Store> = Arc::new(hedged.clone());
    let api = Arc::new(ApiState::with_layout(
        api_settings_of(&cfg),
        metrics.clone(),
        commands_tx,
        Some(store),
        cfg.layout.clone(),
    ));
    api.set_tls(server_tls);
    let tasks = CancellationToken::new();
    // Supervision: each essential task cancels `died` when it ends for any reason.
    let died = CancellationToken::new();
    let rest_died = died.clone();
    let rest = http::server::spawn_thread(listener, cfg.restapi.limits, api.clone(), tasks.clone(), move || {
        rest_died.cancel();
    })
    .context("start the REST API thread")?;
    let mut keeper =
        tokio::spawn(crate::lease::run_keeper(lease.clone(), hedged.clone(), tasks.clone()).in_current_span());
    let wake = Arc::new(tokio::sync::Notify::new());
    let mut watcher = tokio::spawn(
        super::watch::watch(hedged, cfg.layout.clone(), cfg.name.clone(), wake.clone(), tasks.clone())
            .in_current_span(),
    );

    let (failsafe_inputs, failsafe_rx) = tokio::sync::watch::channel(super::failsafe::Inputs::default());
    let mut failsafe_task = tokio::spawn(
        super::failsafe::run(
            super::failsafe::Me {
                name: cfg.name.clone(),
                conn_url: cfg.conn_url(),
                api_url: cfg.api_url(),
                peer_timeout: cfg.peer_timeout,
            },
            lease.clone(),
            api.clone(),
            metrics.clone(),
            clock,
            failsafe_rx,
            tasks.clone(),
        )
        .in_current_span(),
    );

    let progress = Arc::new(Progress::default());
    let upstream = pg.configured_upstream();
    let mut agent = Agent {
        config_path,
        settings: Settings { timings, ..settings_of(&cfg) },
        dcs,
        pg,
        pg_exits,
        clock,
        lease: lease.clone(),
        metrics: metrics.clone(),
        api: api.clone(),
        memory: Memory::new(upstream),
        dyn_config: DynConfig::default(),
        last_logged: None,
        last_member: None,
        last_member_at: None,
        last_status: None,
        last_status_at: None,
        reported: HashSet::new(),
        scheduled_restart: None,
        force_reload: false,
        switchover_at_ms: None,
        pending_restart: false,
        dcs_last_seen: None,
        busy_state: None,
        progress: progress.clone(),
        commands,
        cycle_started_ms: 0,
        held_key: false,
        paused: fence.pause_flag(),
        raft: super::raft::Affinity::default(),
        sync_ssn: None,
        sync_memory: crate::core::sync::SyncMemory::default(),
        failsafe_inputs,
        failsafe_member: false,
        failsafe_judged: None,
        timings_refused: None,
        permanent_before: Vec::new(),
        member_slots_clean: None,
        permanent_positions: Vec::new(),
        slots_skipped: Vec::new(),
        logical: super::slots::LogicalSlots::default(),
        cfg,
    };
    // The REST API and metrics with the timings in force (the keeper already has them).
    agent.set_timings(timings, watchdog);
    // Give the keeper its first grant before deciding anything: an agent restarted under a
    // running primary must not fence it merely because its new lease is a few ms away. If no
    // lease comes within retry_timeout, a primary found here is fenced (armed below), as it
    // must be: nothing vouches for it.
    let loop_wake = lease.loop_wake();
    let first_lease = async {
        while lease.view().id.is_none() {
            loop_wake.notified().await;
        }
    };
    let _ = tokio::time::timeout(agent.settings.timings.retry_timeout, first_lease).await;
    if agent.pg.observe(None).await.0.may_accept_writes() {
        lease.arm();
    }
    outrigger_daemon::systemd::ready();
    // systemd's watchdog: the keeper must be running (it renews, fences and feeds the device
    // watchdog), and the loop must be finishing cycles or be inside a long action that has
    // its own time limit (pg_basebackup, pg_rewind, crash recovery).
    // Twice the ttl in force, which the cluster's config key may change.
    let (alive_lease, alive_progress, alive_api) = (lease.clone(), progress.clone(), api.clone());
    outrigger_daemon::systemd::spawn_watchdog(tasks.clone(), move || {
        let within = alive_api.settings().ttl.max(Duration::from_secs(2)) * 2;
        alive_lease.keeper_alive(within) && alive_progress.alive(clock.now(), within)
    });
    tracing::info!(version = env!("CARGO_PKG_VERSION"), "ha-agent started");
    let mut reloads = ctl.reloads();
    let outcome: anyhow::Result<()> = loop {
        let started = tokio::time::Instant::now();
        if let Err(e) = agent.cycle().await {
            break Err(e);
        }
        let next = agent.scheduled_wake().map_or(started + agent.settings.timings.loop_wait, |at| {
            at.min(started + agent.settings.timings.loop_wait)
        });
        tokio::select! {
            () = ctl.stop.cancelled() => break Ok(()),
            () = tokio::time::sleep_until(next) => {}
            () = wake.notified() => {}
            () = loop_wake.notified() => {
                if lease.take_fenced() {
                    tracing::warn!("the lease keeper fenced PostgreSQL");
                }
            }
            Some(line) = agent.pg_exits.recv() => tracing::info!("{line}"),
            Some(cmd) = agent.commands.recv() => agent.command(cmd).await,
            true = reloads.next() => agent.reload().await,
            r = &mut keeper => break Err(anyhow::anyhow!("the lease keeper task ended: {r:?}")),
            r = &mut watcher => break Err(anyhow::anyhow!("the etcd watch task ended: {r:?}")),
            r = &mut failsafe_task => break Err(anyhow::anyhow!("the failsafe task ended: {r:?}")),
            () = died.cancelled() => break Err(anyhow::anyhow!("the REST API thread ended")),
        }
    };
    if outcome.is_ok() {
        outrigger_daemon::systemd::stopping();
        agent.shutdown(fence).await;
    }
    tasks.cancel();
    let _ = tokio::task::spawn_blocking(move || rest.join()).await;
    outcome
}
