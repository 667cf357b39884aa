//! proxy-checker's config file: raw serde layer, then the validated [`Config`].

use std::net::SocketAddr;

use outrigger_daemon::config::{EtcdSection, LogSection, Problem, Problems, Validate, listen_addr};
use outrigger_daemon::logging::LogOptions;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
pub struct RawConfig {
    /// This node's member name, as ha-agent or Patroni publish it.
    pub name: String,
    pub scope: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Where the HTTP check endpoints listen (HAProxy's `check port`).
    pub listen: Option<String>,
    #[serde(default)]
    pub log: LogSection,
    pub etcd: EtcdSection,
}

fn default_namespace() -> String {
    "service".to_owned()
}

#[derive(Debug, Clone)]
pub struct Config {
    pub name: String,
    pub layout: outrigger_schema::KeyLayout,
    pub listen: SocketAddr,
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
        if let Some(Err(e)) = layout.as_ref().map(|l| l.member(&self.name)) {
            p.push("name", &self.name, e.to_string());
        }
        let listen = listen_addr(&mut p, "listen", self.listen.as_deref().unwrap_or("0.0.0.0:8009"));
        let log = self.log.validate(&mut p);
        let etcd = self.etcd.validate(&mut p);
        p.finish(())?;
        match (layout, listen) {
            (Some(layout), Some(listen)) => Ok(Config { name: self.name.clone(), layout, listen, log, etcd }),
            _ => Err(vec![Problem::key_only("(config)", "invalid")]),
        }
    }
}
