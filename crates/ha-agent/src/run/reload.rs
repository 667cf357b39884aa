//! SIGHUP (`systemctl reload ha-agent`): re-read the config file and apply what can change at
//! runtime, as Patroni does: timings, tags, the watchdog, REST security (credentials,
//! allowlist, TLS files), PostgreSQL parameters and pg_hba (rewritten and reloaded), and the
//! log level. Keys that need a restart of the agent are named in the log and keep their
//! running values. An invalid file changes nothing: every problem is logged and counted.

use super::Agent;
use super::start::{api_settings_of, settings_of};
use crate::config::RawConfig;
use crate::config::Timings;

impl Agent {
    pub(super) async fn reload(&mut self) {
        let Some(path) = self.config_path.clone() else {
            tracing::warn!("SIGHUP: no config file to reload (started without --config)");
            return;
        };
        let Some(new) = outrigger_daemon::reload::read::<RawConfig>(&path) else {
            self.metrics.config_reloads.with_label_values(&["invalid"]).inc();
            return;
        };
        let (next, plan) = self.cfg.reloaded(&new);
        // Like Patroni's SIGHUP, PostgreSQL's configuration is rewritten and reloaded in any case.
        self.force_reload = true;
        let outcome = plan.log("ha-agent");
        self.metrics.config_reloads.with_label_values(&[outcome.as_str()]).inc();
        if plan.applied.is_empty() {
            return;
        }
        if next.restapi.tls != self.cfg.restapi.tls {
            match next.restapi.tls.as_ref().map(crate::http::tls::server_config).transpose() {
                Ok(server) => {
                    if let Some(t) = &next.restapi.tls
                        && let Ok(client) = crate::http::tls::client_config(t)
                    {
                        crate::http::probe::set_client_tls(client);
                    }
                    self.api.set_tls(server);
                }
                Err(e) => {
                    // The listener keeps its current certificates; everything else applies.
                    tracing::error!(
                        error = format!("{e:#}"),
                        "restapi TLS files cannot be used; keeping the current ones"
                    );
                }
            }
        }
        if next.log.level != self.cfg.log.level {
            outrigger_daemon::logging::set_level(next.log.level.as_deref());
        }
        self.cfg = next;
        let running = self.settings.timings;
        self.settings = settings_of(&self.cfg);
        self.settings.timings = running;
        // The local [timings] apply only where the cluster's config key has none.
        self.apply_timings(true);
        self.pg.set_config(self.cfg.postgresql.clone());
    }
}

impl Agent {
    /// After each read of the `config` key: the timings in force follow the cluster's (as
    /// `core::timing` reads them; the local `[timings]` fill what the key leaves out), and a
    /// change reaches the HA loop, the lease keeper (and its watchdog timeout), the REST API
    /// and the failsafe task. Timings that cannot work are refused once per value and the
    /// running ones kept. `force`: push the settings even if the timings are unchanged (a
    /// reload changed the rest).
    pub(super) fn apply_timings(&mut self, force: bool) {
        let rt = self.cfg.etcd.request_timeout;
        let chosen = timings_asked(&self.cfg, &self.dyn_config.timings);
        let running = self.settings.timings;
        let (t, wd) = match chosen {
            Ok((t, adjusted, wd)) => {
                self.timings_refused = None;
                if t == running && !force {
                    return;
                }
                if t != running {
                    let result = if adjusted.is_empty() { "applied" } else { "adjusted" };
                    self.metrics.cluster_timings.with_label_values(&[result]).inc();
                    for a in &adjusted {
                        tracing::warn!(adjusted = %a, "the cluster's timings break the rule; adjusted as Patroni adjusts them");
                    }
                    tracing::info!(
                        ttl = show(t.ttl),
                        loop_wait = show(t.loop_wait),
                        retry_timeout = show(t.retry_timeout),
                        was_ttl = show(running.ttl),
                        "timings in force changed (the cluster's config key, else [timings])"
                    );
                }
                (t, wd)
            }
            Err(why) => {
                if self.timings_refused.as_deref() != Some(why.as_str()) {
                    self.metrics.cluster_timings.with_label_values(&["refused"]).inc();
                    tracing::error!(problem = %why, ttl = show(running.ttl), "the cluster's timings cannot be used here; the running ones are kept");
                    self.timings_refused = Some(why);
                }
                if !force {
                    return;
                }
                let wd = self.cfg.watchdog.for_timings(&running, rt).unwrap_or_else(|_| self.cfg.watchdog.clone());
                (running, wd)
            }
        };
        self.set_timings(t, wd);
    }

    /// Puts timings `t` (and the watchdog settings for them) in force everywhere.
    pub(super) fn set_timings(&mut self, t: Timings, wd: crate::core::watchdog::Settings) {
        self.settings.timings = t;
        let mut api = api_settings_of(&self.cfg);
        api.ttl = t.ttl;
        api.loop_wait = t.loop_wait;
        self.api.set_settings(api);
        self.lease.reconfigure(t, wd);
        for (name, d) in [("ttl", t.ttl), ("loop_wait", t.loop_wait), ("retry_timeout", t.retry_timeout)] {
            self.metrics.timings.with_label_values(&[name]).set(d.as_secs_f64());
        }
    }
}

/// The timings in force for what the cluster's config key asks (`core::timing::in_force`),
/// with the adjustments made and the watchdog settings for them; `Err` says why they cannot
/// be used.
pub(super) fn timings_asked(
    cfg: &crate::config::Config,
    asked: &crate::core::timing::Asked,
) -> Result<(Timings, Vec<crate::core::timing::Adjusted>, crate::core::watchdog::Settings), String> {
    let rt = cfg.etcd.request_timeout;
    let (t, adjusted) = crate::core::timing::in_force(cfg.timings, asked, rt).map_err(|r| r.to_string())?;
    let wd = cfg
        .watchdog
        .for_timings(&t, rt)
        .map_err(|why| format!("ttl {} with watchdog.mode {:?}: {why}", show(t.ttl), cfg.watchdog.mode))?;
    Ok((t, adjusted, wd))
}

fn show(d: std::time::Duration) -> String {
    humantime::format_duration(d).to_string()
}
