//! SIGHUP (`systemctl reload ha-agent`): re-read the config file and apply what can change at
//! runtime, as Patroni does: timings, tags, the watchdog, REST security (credentials,
//! allowlist, TLS files), PostgreSQL parameters and pg_hba (rewritten and reloaded), and the
//! log level. Keys that need a restart of the agent are named in the log and keep their
//! running values. An invalid file changes nothing: every problem is logged and counted.

use super::Agent;
use super::start::{api_settings_of, settings_of};
use crate::config::RawConfig;

impl Agent {
    pub(super) async fn reload(&mut self) {
        let Some(path) = self.config_path.clone() else {
            tracing::warn!("SIGHUP: no config file to reload (started without --config)");
            return;
        };
        let new = match outrigger_daemon::config::load::<RawConfig>(&path) {
            Ok(c) => c,
            Err(e) => {
                self.metrics.config_reloads.with_label_values(&["invalid"]).inc();
                let problems = e.problems();
                if problems.is_empty() {
                    tracing::error!(error = %e, "config reload refused; the running config is kept");
                } else {
                    for p in problems {
                        tracing::error!(file = %path.display(), problem = %p, "config reload refused; the running config is kept");
                    }
                }
                return;
            }
        };
        let (next, plan) = self.cfg.reloaded(&new);
        for key in &plan.need_restart {
            tracing::warn!(
                key,
                "changed in the config file, but applies only when ha-agent restarts; the running value is kept"
            );
        }
        // Like Patroni's SIGHUP, PostgreSQL's configuration is rewritten and reloaded in any case.
        self.force_reload = true;
        if plan.applied.is_empty() {
            self.metrics.config_reloads.with_label_values(&["unchanged"]).inc();
            tracing::info!("config reloaded: no runtime settings changed");
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
        self.settings = settings_of(&self.cfg);
        self.lease.reconfigure(self.cfg.timings, self.cfg.watchdog.clone());
        self.api.set_settings(api_settings_of(&self.cfg));
        self.pg.set_config(self.cfg.postgresql.clone());
        self.metrics.config_reloads.with_label_values(&["applied"]).inc();
        tracing::info!(applied = plan.applied.join(", "), "config reloaded");
    }
}
