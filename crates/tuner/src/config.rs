//! tuner's optional config file, for `--apply-etcd`: where the cluster's `/config` key lives.

use outrigger_daemon::config::{EtcdSection, LogSection, Problem, Problems, Validate};
use outrigger_daemon::logging::LogOptions;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
pub struct RawConfig {
    pub scope: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    #[serde(default)]
    pub log: LogSection,
    pub etcd: EtcdSection,
}

fn default_namespace() -> String {
    "service".to_owned()
}

#[derive(Debug, Clone)]
pub struct Config {
    pub layout: outrigger_schema::KeyLayout,
    pub log: LogOptions,
    pub etcd: outrigger_etcd::ConnectOptions,
}

impl Validate for RawConfig {
    type Valid = Config;

    fn validate(&self) -> Result<Config, Vec<Problem>> {
        let mut p = Problems::new();
        let layout = outrigger_schema::KeyLayout::new(&self.namespace, &self.scope)
            .map_err(|e| p.push("scope", &self.scope, e.to_string()))
            .ok();
        let log = self.log.validate(&mut p);
        let etcd = self.etcd.validate(&mut p);
        p.finish(())?;
        let layout = layout.ok_or_else(|| vec![Problem::key_only("scope", "invalid")])?;
        Ok(Config { layout, log, etcd })
    }
}
