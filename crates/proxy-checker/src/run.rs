//! Wiring: bind the listeners, start the input tasks and the servers, signal READY, and
//! supervise until shutdown.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use outrigger_daemon::reload::Source;
use outrigger_daemon::{shutdown, systemd};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::check::{Check, Endpoint};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::sources::{EtcdFollower, PgPoller};
use crate::verdict::Role;
use crate::view::{EtcdView, PgView};

/// Runs the daemon until `stop` is cancelled. `ready` is called once both listeners are bound
/// and the tasks started (systemd READY). Each request in `reloads` re-reads the config file
/// and applies what can change while running ([`Config::reloaded`]). Returns an error if a
/// listener cannot be bound or an essential task ends on its own, so that the process exits
/// non-zero and is restarted.
pub async fn run(
    cfg: Config,
    stop: CancellationToken,
    reloads: Option<Source>,
    ready: impl FnOnce(),
) -> anyhow::Result<()> {
    let metrics = Metrics::new();
    let (etcd_tx, etcd_rx) = watch::channel(EtcdView::default());
    let (pg_tx, pg_rx) = watch::channel(PgView::default());
    let http = TcpListener::bind(cfg.listen).await.with_context(|| format!("bind listen {}", cfg.listen))?;
    let agent = match &cfg.agent {
        Some(a) => Some((
            TcpListener::bind(a.listen).await.with_context(|| format!("bind agent.listen {}", a.listen))?,
            a.clone(),
        )),
        None => None,
    };
    let (policy_tx, policy_rx) = watch::channel(cfg.policy.clone());
    let app = Arc::new(App { policy: policy_rx, etcd: etcd_rx, pg: pg_rx, metrics: metrics.clone() });

    let mut tasks: JoinSet<&'static str> = JoinSet::new();
    let follower = EtcdFollower {
        opts: cfg.etcd.clone(),
        layout: cfg.layout.clone(),
        name: cfg.name.clone(),
        confirm_interval: cfg.etcd_confirm_interval,
        view: etcd_tx,
        metrics: metrics.clone(),
    };
    tasks.spawn(named("etcd follower", follower.run(stop.clone())));
    let poller = PgPoller { settings: cfg.postgresql.clone(), view: pg_tx, metrics: metrics.clone() };
    tasks.spawn(named("postgresql poller", poller.run(stop.clone())));
    tasks.spawn(named("http server", crate::http::serve(http, cfg.http, app.clone(), stop.clone())));
    if let Some((listener, settings)) = agent {
        tasks.spawn(named("agent server", crate::agent::serve(listener, settings, app.clone(), stop.clone())));
    }
    tasks.spawn(named("role monitor", watch_role(app.clone(), stop.clone())));
    if let Some(r) = reloads {
        tasks.spawn(named("config reloader", reload(r, cfg.clone(), policy_tx, metrics.clone(), stop.clone())));
    }
    let live = app.clone();
    let _watchdog = systemd::spawn_watchdog(stop.clone(), move || live.decide(&Check::new(Endpoint::Liveness)).ok);

    tracing::info!(
        member = %cfg.name,
        scope = %cfg.layout.scope(),
        listen = %cfg.listen,
        agent = cfg.agent.as_ref().map(|a| a.listen.to_string()).unwrap_or_else(|| "off".into()),
        "proxy-checker listening"
    );
    ready();

    let outcome = tokio::select! {
        // Checked first: on shutdown every task ends because it was told to, not on its own.
        biased;
        () = stop.cancelled() => Ok(()),
        Some(ended) = tasks.join_next() => match ended {
            Ok(_) if stop.is_cancelled() => Ok(()),
            Ok(name) => Err(anyhow::anyhow!("{name} ended on its own")),
            Err(e) => Err(anyhow::anyhow!("a task failed: {e}")),
        },
    };
    stop.cancel();
    shutdown::within(Duration::from_secs(2), "stop tasks", async { while tasks.join_next().await.is_some() {} }).await;
    outcome
}

/// Applies each reload request: the new bounds go to every check at once (the next check is
/// judged by them); the rest is logged as needing a restart.
async fn reload(
    mut r: Source,
    mut running: Config,
    policy: watch::Sender<crate::verdict::Policy>,
    metrics: Metrics,
    stop: CancellationToken,
) {
    loop {
        let read = tokio::select! {
            () = stop.cancelled() => return,
            read = r.next::<crate::config::RawConfig>() => read,
        };
        let Some(read) = read else { return };
        let Some(new) = read else {
            metrics.reload(outrigger_daemon::reload::Outcome::Invalid);
            continue;
        };
        let (next, plan) = running.reloaded(&new);
        metrics.reload(plan.log("proxy-checker"));
        plan.apply_log_level(&next.log);
        policy.send_if_modified(|p| {
            let changed = *p != next.policy;
            *p = next.policy.clone();
            changed
        });
        running = next;
    }
}

async fn named(name: &'static str, fut: impl std::future::Future<Output = ()>) -> &'static str {
    fut.await;
    name
}

/// Logs this node's role whenever it changes; a writable PostgreSQL that etcd does not name is
/// a warning (HAProxy will not send it writes, but a human should know).
async fn watch_role(app: Arc<App>, stop: CancellationToken) {
    // Only logs depend on it: once a second is enough, and it keeps the daemon quiet when idle.
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = Role::Unknown;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let v = app.decide(&Check::new(Endpoint::Health));
        if v.role == last {
            continue;
        }
        match v.role {
            Role::WritableNotLeader => tracing::warn!(
                from = last.as_str(),
                "PostgreSQL is writable but etcd does not name this member leader; primary checks fail"
            ),
            role => tracing::info!(from = last.as_str(), to = role.as_str(), "role changed"),
        }
        last = v.role;
    }
}
