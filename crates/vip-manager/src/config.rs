//! vip-manager's config file: raw serde layer, then the validated [`Config`].

use std::net::IpAddr;

use outrigger_daemon::config::{LogSection, Problem, Problems, Validate};
use outrigger_daemon::logging::LogOptions;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
pub struct RawConfig {
    /// Interface the VIP is added to and VRRP runs on.
    pub interface: String,
    /// The virtual address, e.g. `10.0.0.100/24`.
    pub vip: String,
    #[serde(default)]
    pub log: LogSection,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub interface: String,
    pub vip: IpAddr,
    pub prefix_len: u8,
    pub log: LogOptions,
}

impl Validate for RawConfig {
    type Valid = Config;

    fn validate(&self) -> Result<Config, Vec<Problem>> {
        let mut p = Problems::new();
        p.check(
            !self.interface.is_empty() && self.interface.len() < 16 && !self.interface.contains('/'),
            "interface",
            &self.interface,
            "must be an interface name of 1 to 15 characters",
        );
        let parsed =
            self.vip.split_once('/').and_then(|(a, l)| Some((a.parse::<IpAddr>().ok()?, l.parse::<u8>().ok()?)));
        let vip = match parsed {
            Some((a, l)) if l <= if a.is_ipv4() { 32 } else { 128 } => Some((a, l)),
            _ => {
                p.push("vip", &self.vip, "must be an address with a prefix length, like 10.0.0.100/24");
                None
            }
        };
        let log = self.log.validate(&mut p);
        p.finish(())?;
        let (vip, prefix_len) = vip.ok_or_else(|| vec![Problem::key_only("vip", "invalid")])?;
        Ok(Config { interface: self.interface.clone(), vip, prefix_len, log })
    }
}
