//! vip-manager's config file: raw serde layer, then the validated [`Config`].
//!
//! Two modes:
//! - `mode = "vrrp"` (default): elect the VIP's holder with VRRP, in a group that may include
//!   keepalived. Keys mirror keepalived's (`advert_int` → `advert_interval`, `nopreempt` →
//!   `preempt = false`, `auth_pass`, `unicast_peers`, `garp_*`), so a keepalived config
//!   translates line by line. Priority can follow the Patroni leader key (`[leader] weight`) and
//!   local checks (`[[track]]`), with keepalived's weight rules.
//! - `mode = "etcd-follow"`: no VRRP; hold the VIP exactly while the leader key in etcd names
//!   this member (cybertec vip-manager's `trigger-key`/`trigger-value`). What happens when etcd
//!   cannot be reached is `[leader] on_etcd_unreachable`: `release` (default, like cybertec
//!   vip-manager 5: a node cut off from etcd cannot know it is still the leader, and a new one
//!   may already hold the VIP) or `keep` (ride out etcd outages, trusting Patroni's own
//!   fencing), after `unreachable_grace`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use outrigger_daemon::config::{EtcdSection, LogSection, Problem, Problems, Validate, listen_addr};
use outrigger_daemon::logging::LogOptions;
use outrigger_daemon::reload::Plan;
use serde::Deserialize;

use crate::fsm::GarpSchedule;
use crate::packet::{Auth, V3Checksum, Version};
use crate::priority::{Check, Track};

#[derive(Debug, Deserialize)]
pub struct RawConfig {
    /// Interface the VIP is added to and VRRP runs on.
    pub interface: String,
    /// The virtual address, with an optional prefix length (default /32 or /128, as keepalived).
    pub vip: String,
    /// `vrrp` (default) or `etcd-follow`.
    pub mode: Option<String>,
    #[serde(default)]
    pub vrrp: RawVrrp,
    #[serde(default)]
    pub garp: RawGarp,
    pub leader: Option<RawLeader>,
    pub etcd: Option<EtcdSection>,
    #[serde(default)]
    pub track: Vec<RawTrack>,
    pub notify: Option<RawNotify>,
    pub metrics: Option<RawMetrics>,
    #[serde(default)]
    pub log: LogSection,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawVrrp {
    /// 2 or 3. keepalived's default is 2 for IPv4, so is ours; IPv6 needs 3.
    pub version: Option<u8>,
    /// `virtual_router_id`, 1..255; required in VRRP mode.
    pub vrid: Option<u16>,
    /// 1..255, default 100. 255 means address owner.
    pub priority: Option<u16>,
    /// `advert_int`: VRRPv2 whole seconds (1s..255s), VRRPv3 10ms..40.95s in steps of 10ms.
    #[serde(default, with = "humantime_serde::option")]
    pub advert_interval: Option<Duration>,
    /// `preempt` (default true); false is keepalived's `nopreempt`.
    pub preempt: Option<bool>,
    #[serde(default, with = "humantime_serde::option")]
    pub preempt_delay: Option<Duration>,
    /// Source address of adverts and the tie-breaker (`mcast_src_ip`/`unicast_src_ip`);
    /// default: the interface's primary address (IPv6: its link-local address).
    pub source: Option<String>,
    /// Unicast peers (keepalived `unicast_peer`); empty means multicast to 224.0.0.18/ff02::12.
    /// Our own address may be listed, as in the reference deployment; it is skipped.
    #[serde(default)]
    pub unicast_peers: Vec<String>,
    /// Drop adverts from addresses that are not listed peers (keepalived `check_unicast_src`).
    pub check_unicast_src: Option<bool>,
    /// VRRPv2 `auth_type PASS` password (keepalived keeps the first 8 characters).
    pub auth_pass: Option<String>,
    /// VRRPv3 over IPv4: `pseudo-header` (default, keepalived ≤ 2.2.7 and FRR) or `rfc9568`
    /// (keepalived `v3_checksum_as_v2`).
    pub v3_checksum: Option<String>,
    /// Also accept VRRPv3 adverts checksummed the other way (mixed fleets).
    pub accept_either_checksum: Option<bool>,
    pub down_timer_adverts: Option<u32>,
    pub lower_prio_no_advert: Option<bool>,
    /// Before yielding to a higher priority, send one advert of our own (default true, see
    /// the comment where it is defaulted; keepalived's default is false).
    pub higher_prio_send_advert: Option<bool>,
    /// Instance name passed to notify commands (keepalived `vrrp_instance NAME`).
    pub instance: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawGarp {
    pub master_repeat: Option<u32>,
    #[serde(default, with = "humantime_serde::option")]
    pub master_delay: Option<Duration>,
    #[serde(default, with = "humantime_serde::option")]
    pub master_refresh: Option<Duration>,
    pub master_refresh_repeat: Option<u32>,
    pub lower_prio_repeat: Option<u32>,
    #[serde(default, with = "humantime_serde::option")]
    pub lower_prio_delay: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawLeader {
    /// Patroni layout: the key is `/<namespace>/<scope>/leader`.
    pub scope: Option<String>,
    pub namespace: Option<String>,
    /// Any key instead (cybertec vip-manager `trigger-key`).
    pub trigger_key: Option<String>,
    /// The value meaning "this member leads" (Patroni member name; cybertec `trigger-value`).
    /// Default: the host name.
    pub member: Option<String>,
    /// VRRP mode: keepalived weight rules. > 0 is added while we lead; < 0 is subtracted while
    /// we do not; 0 puts the instance in FAULT while we do not (the reference deployment's
    /// unweighted `chk_patroni_leader`). Default 50.
    pub weight: Option<i32>,
    /// etcd-follow mode: `release` (default) or `keep`.
    pub on_etcd_unreachable: Option<String>,
    /// etcd-follow mode: how long etcd must be unreachable before the policy applies.
    #[serde(default, with = "humantime_serde::option")]
    pub unreachable_grace: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawTrack {
    pub name: String,
    /// `tcp` (connect to `address`), `http` (GET `url`, expect `expect_status`) or `file`
    /// (an integer in `file`, multiplied by `weight`, as keepalived's `track_file`).
    pub check: String,
    pub address: Option<String>,
    pub url: Option<String>,
    pub expect_status: Option<u16>,
    pub file: Option<PathBuf>,
    #[serde(default, with = "humantime_serde::option")]
    pub interval: Option<Duration>,
    #[serde(default, with = "humantime_serde::option")]
    pub timeout: Option<Duration>,
    /// keepalived rules: > 0 added while up, < 0 subtracted while down, 0 = FAULT while down.
    pub weight: Option<i32>,
    pub rise: Option<u32>,
    pub fall: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawNotify {
    /// Program and arguments; keepalived's four are appended: `INSTANCE`, the instance name,
    /// the new state (`MASTER`, `BACKUP`, `FAULT`, `STOP`) and the priority.
    pub command: Vec<String>,
    #[serde(default, with = "humantime_serde::option")]
    pub timeout: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawMetrics {
    /// `host:port` for `GET /metrics`.
    pub listen: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    Vrrp(Vrrp),
    Follow,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vrrp {
    pub version: Version,
    pub vrid: u8,
    pub priority: u8,
    pub interval_cs: u16,
    pub preempt: bool,
    pub preempt_delay: Duration,
    pub source: Option<IpAddr>,
    pub unicast_peers: Vec<IpAddr>,
    pub check_unicast_src: bool,
    pub auth: Auth,
    pub v3_checksum: V3Checksum,
    pub accept_either_checksum: bool,
    pub down_timer_adverts: u32,
    pub lower_prio_no_advert: bool,
    pub higher_prio_send_advert: bool,
    pub instance: String,
    pub garp: GarpSchedule,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unreachable {
    Keep,
    Release,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leader {
    pub key: String,
    pub member: String,
    pub weight: i32,
    pub on_unreachable: Unreachable,
    pub unreachable_grace: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notify {
    pub command: Vec<String>,
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub interface: String,
    pub vip: IpAddr,
    pub prefix_len: u8,
    pub mode: Mode,
    pub leader: Option<Leader>,
    pub etcd: Option<outrigger_etcd::ConnectOptions>,
    pub tracks: Vec<Track>,
    pub notify: Option<Notify>,
    pub metrics_listen: Option<SocketAddr>,
    pub log: LogOptions,
}

fn fmt_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// The host name, for the default `member` (cybertec vip-manager's default `trigger-value`).
fn hostname() -> String {
    nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_default()
}

fn parse_vip(p: &mut Problems, raw: &str) -> Option<(IpAddr, u8)> {
    let (addr, len) = match raw.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (raw, None),
    };
    let Ok(addr) = addr.parse::<IpAddr>() else {
        p.push("vip", raw, "must be an IP address with an optional prefix length, like 10.0.0.100 or 10.0.0.100/32");
        return None;
    };
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len = match len.map(str::parse::<u8>) {
        None => max,
        Some(Ok(l)) if (1..=max).contains(&l) => l,
        Some(_) => {
            p.push("vip", raw, format!("prefix length must be 1 to {max}"));
            return None;
        }
    };
    if addr.is_unspecified() || addr.is_multicast() || addr.is_loopback() {
        p.push("vip", raw, "must be a unicast address that is not loopback or unspecified");
        return None;
    }
    Some((addr, len))
}

impl RawVrrp {
    fn validate(&self, p: &mut Problems, vip: Option<IpAddr>, garp: &RawGarp) -> Option<Vrrp> {
        let ipv6 = vip.is_some_and(|v| v.is_ipv6());
        let version = match self.version {
            None if ipv6 => Version::V3,
            None | Some(2) => Version::V2,
            Some(3) => Version::V3,
            Some(v) => {
                p.push("vrrp.version", v, "must be 2 or 3");
                Version::V2
            }
        };
        if ipv6 && version == Version::V2 {
            p.push("vrrp.version", 2, "VRRPv2 is IPv4 only; an IPv6 vip needs version 3");
        }
        let vrid = match self.vrid {
            None => {
                p.push_key("vrrp.vrid", "is required in vrrp mode (keepalived virtual_router_id, 1 to 255)");
                0
            }
            Some(v) if (1..=255).contains(&v) => v as u8,
            Some(v) => {
                p.push("vrrp.vrid", v, "must be 1 to 255");
                0
            }
        };
        let priority = match self.priority.unwrap_or(100) {
            v @ 1..=255 => v as u8,
            v => {
                p.push("vrrp.priority", v, "must be 1 to 255 (255: address owner)");
                100
            }
        };
        let interval = self.advert_interval.unwrap_or(Duration::from_secs(1));
        let interval_cs = match version {
            Version::V2 => {
                let ok = interval.subsec_nanos() == 0 && (1..=255).contains(&interval.as_secs());
                p.check(
                    ok,
                    "vrrp.advert_interval",
                    fmt_duration(interval),
                    "must be whole seconds from 1s to 255s with VRRPv2 (use version 3 for sub-second adverts)",
                );
                (interval.as_secs().clamp(1, 255) * 100) as u16
            }
            Version::V3 => {
                let ms = interval.as_millis();
                let ok = interval.as_nanos().is_multiple_of(10_000_000) && (10..=40_950).contains(&ms);
                p.check(
                    ok,
                    "vrrp.advert_interval",
                    fmt_duration(interval),
                    "must be 10ms to 40.95s in steps of 10ms with VRRPv3",
                );
                (ms / 10).clamp(1, 4095) as u16
            }
        };
        let preempt_delay = self.preempt_delay.unwrap_or_default();
        p.check(
            preempt_delay <= Duration::from_secs(1000),
            "vrrp.preempt_delay",
            fmt_duration(preempt_delay),
            "must be at most 1000s (keepalived's limit)",
        );
        let family_ok = |a: &IpAddr| vip.is_none_or(|v| v.is_ipv4() == a.is_ipv4());
        let source = self.source.as_ref().and_then(|s| match s.parse::<IpAddr>() {
            Ok(a) if family_ok(&a) && !a.is_multicast() && !a.is_unspecified() => Some(a),
            _ => {
                p.push("vrrp.source", s, "must be a unicast address of the vip's family");
                None
            }
        });
        let mut unicast_peers = Vec::new();
        for (i, s) in self.unicast_peers.iter().enumerate() {
            match s.parse::<IpAddr>() {
                Ok(a) if family_ok(&a) && !a.is_multicast() && !a.is_unspecified() => unicast_peers.push(a),
                _ => p.push(format!("vrrp.unicast_peers[{i}]"), s, "must be a unicast address of the vip's family"),
            }
        }
        let check_unicast_src = self.check_unicast_src.unwrap_or(false);
        if check_unicast_src && unicast_peers.is_empty() {
            p.push_key("vrrp.check_unicast_src", "needs vrrp.unicast_peers");
        }
        let auth = match (&self.auth_pass, version) {
            (None, _) => Auth::None,
            (Some(pw), Version::V2) if !pw.is_empty() => Auth::pass(pw),
            (Some(_), Version::V2) => {
                p.push("vrrp.auth_pass", "\"\"", "must not be empty");
                Auth::None
            }
            (Some(_), Version::V3) => {
                p.push_key("vrrp.auth_pass", "VRRPv3 has no authentication (keepalived refuses it too)");
                Auth::None
            }
        };
        let v3_checksum = match self.v3_checksum.as_deref() {
            None | Some("pseudo-header") => V3Checksum::PseudoHeader,
            Some("rfc9568") => V3Checksum::Rfc9568,
            Some(other) => {
                p.push("vrrp.v3_checksum", other, "must be \"pseudo-header\" or \"rfc9568\"");
                V3Checksum::PseudoHeader
            }
        };
        let down_timer_adverts = self.down_timer_adverts.unwrap_or(3);
        p.check(
            (1..=100).contains(&down_timer_adverts),
            "vrrp.down_timer_adverts",
            down_timer_adverts,
            "must be 1 to 100",
        );
        let instance = self.instance.clone().unwrap_or_else(|| format!("VI_{vrid}"));
        p.check(!instance.is_empty(), "vrrp.instance", "\"\"", "must not be empty");
        let garp = garp.validate(p);
        Some(Vrrp {
            version,
            vrid,
            priority,
            interval_cs,
            preempt: self.preempt.unwrap_or(true),
            preempt_delay,
            source,
            unicast_peers,
            check_unicast_src,
            auth,
            v3_checksum,
            accept_either_checksum: self.accept_either_checksum.unwrap_or(false),
            down_timer_adverts,
            lower_prio_no_advert: self.lower_prio_no_advert.unwrap_or(false),
            // On by default, unlike keepalived: when a partition heals, the side that yields
            // may be the only one to hear the other, and without this last advert the winner
            // never learns it must re-send gratuitous ARP (keepalived issue #166: clients stay
            // on the loser's MAC). The winner, keepalived or us, answers it with GARP.
            higher_prio_send_advert: self.higher_prio_send_advert.unwrap_or(true),
            instance,
            garp,
        })
    }

    fn is_empty(&self) -> bool {
        self.version.is_none()
            && self.vrid.is_none()
            && self.priority.is_none()
            && self.advert_interval.is_none()
            && self.preempt.is_none()
            && self.preempt_delay.is_none()
            && self.source.is_none()
            && self.unicast_peers.is_empty()
            && self.check_unicast_src.is_none()
            && self.auth_pass.is_none()
            && self.v3_checksum.is_none()
            && self.accept_either_checksum.is_none()
            && self.down_timer_adverts.is_none()
            && self.lower_prio_no_advert.is_none()
            && self.higher_prio_send_advert.is_none()
            && self.instance.is_none()
    }
}

impl RawGarp {
    fn validate(&self, p: &mut Problems) -> GarpSchedule {
        let d = GarpSchedule::default();
        let master_repeat = self.master_repeat.unwrap_or(d.master_repeat);
        let master_delay = self.master_delay.unwrap_or(d.master_delay);
        let g = GarpSchedule {
            master_repeat,
            master_delay,
            refresh: self.master_refresh.unwrap_or(d.refresh),
            refresh_repeat: self.master_refresh_repeat.unwrap_or(d.refresh_repeat),
            lower_prio_repeat: self.lower_prio_repeat.unwrap_or(master_repeat),
            lower_prio_delay: self.lower_prio_delay.unwrap_or(master_delay),
        };
        for (key, v) in [
            ("garp.master_repeat", g.master_repeat),
            ("garp.master_refresh_repeat", g.refresh_repeat),
            ("garp.lower_prio_repeat", g.lower_prio_repeat),
        ] {
            p.check(v <= 100, key, v, "must be at most 100");
        }
        if !g.refresh.is_zero() {
            p.check(
                g.refresh >= Duration::from_secs(1),
                "garp.master_refresh",
                fmt_duration(g.refresh),
                "must be 0 (off) or at least 1s",
            );
        }
        g
    }
}

impl RawLeader {
    fn validate(&self, p: &mut Problems) -> Option<Leader> {
        let key = match (&self.trigger_key, &self.scope) {
            (Some(k), None) => {
                p.check(!k.is_empty(), "leader.trigger_key", "\"\"", "must not be empty");
                if self.namespace.is_some() {
                    p.push_key("leader.namespace", "goes with leader.scope, not leader.trigger_key");
                }
                Some(k.clone())
            }
            (None, Some(scope)) => {
                let ns = self.namespace.as_deref().unwrap_or("service");
                match outrigger_schema::KeyLayout::new(ns, scope) {
                    Ok(l) => Some(l.key(outrigger_schema::ClusterKey::Leader)),
                    Err(e) => {
                        p.push("leader.scope", scope, e.to_string());
                        None
                    }
                }
            }
            (Some(_), Some(_)) => {
                p.push_key("leader.trigger_key", "set either leader.scope (Patroni layout) or leader.trigger_key");
                None
            }
            (None, None) => {
                p.push_key("leader.scope", "is required (or leader.trigger_key)");
                None
            }
        };
        let member = self.member.clone().unwrap_or_else(hostname);
        p.check(!member.is_empty(), "leader.member", "\"\"", "must not be empty (it defaults to the host name)");
        let weight = self.weight.unwrap_or(50);
        p.check((-253..=253).contains(&weight), "leader.weight", weight, "must be -253 to 253");
        let on_unreachable = match self.on_etcd_unreachable.as_deref() {
            None | Some("release") => Unreachable::Release,
            Some("keep") => Unreachable::Keep,
            Some(other) => {
                p.push("leader.on_etcd_unreachable", other, "must be \"release\" or \"keep\"");
                Unreachable::Release
            }
        };
        Some(Leader {
            key: key?,
            member,
            weight,
            on_unreachable,
            unreachable_grace: self.unreachable_grace.unwrap_or_default(),
        })
    }
}

impl RawTrack {
    fn validate(&self, p: &mut Problems, i: usize) -> Option<Track> {
        let k = |f: &str| format!("track[{i}].{f}");
        p.check(!self.name.is_empty(), &k("name"), "\"\"", "must not be empty");
        let check = match self.check.as_str() {
            "tcp" => match self.address.as_deref().map(str::parse::<SocketAddr>) {
                Some(Ok(a)) => Some(Check::Tcp { address: a }),
                Some(Err(_)) => {
                    p.push(k("address"), self.address.as_deref().unwrap_or(""), "must be an IP address and port");
                    None
                }
                None => {
                    p.push_key(k("address"), "is required for a tcp check");
                    None
                }
            },
            "http" => match self.url.as_deref().map(parse_http_url) {
                Some(Some((address, path))) => {
                    Some(Check::Http { address, path, expect_status: self.expect_status.unwrap_or(200) })
                }
                Some(None) => {
                    p.push(
                        k("url"),
                        self.url.as_deref().unwrap_or(""),
                        "must be http://IP:port/path (no TLS, no host names: checks are local)",
                    );
                    None
                }
                None => {
                    p.push_key(k("url"), "is required for an http check");
                    None
                }
            },
            "file" => match &self.file {
                Some(f) => Some(Check::File { path: f.clone() }),
                None => {
                    p.push_key(k("file"), "is required for a file check");
                    None
                }
            },
            other => {
                p.push(k("check"), other, "must be \"tcp\", \"http\" or \"file\"");
                None
            }
        };
        let interval = self.interval.unwrap_or(Duration::from_secs(1));
        p.check(
            interval >= Duration::from_millis(100),
            &k("interval"),
            fmt_duration(interval),
            "must be at least 100ms",
        );
        let timeout = self.timeout.unwrap_or(interval.min(Duration::from_secs(1)));
        p.check(
            timeout >= Duration::from_millis(10) && timeout <= interval,
            &k("timeout"),
            fmt_duration(timeout),
            "must be at least 10ms and at most the interval",
        );
        let weight = self.weight.unwrap_or(0);
        p.check((-253..=253).contains(&weight), &k("weight"), weight, "must be -253 to 253");
        let rise = self.rise.unwrap_or(1);
        let fall = self.fall.unwrap_or(1);
        p.check((1..=100).contains(&rise), &k("rise"), rise, "must be 1 to 100");
        p.check((1..=100).contains(&fall), &k("fall"), fall, "must be 1 to 100");
        Some(Track { name: self.name.clone(), check: check?, interval, timeout, weight, rise, fall })
    }
}

/// `http://IP:port/path` → (address, path). Host names are refused: a check that needs DNS
/// can hang on it, and these checks are meant for local services.
fn parse_http_url(url: &str) -> Option<(SocketAddr, String)> {
    let rest = url.strip_prefix("http://")?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let address = hostport.parse::<SocketAddr>().ok()?;
    (!path.contains(char::is_whitespace)).then(|| (address, path.to_owned()))
}

impl Validate for RawConfig {
    type Valid = Config;

    fn validate(&self) -> Result<Config, Vec<Problem>> {
        let mut p = Problems::new();
        p.check(
            !self.interface.is_empty() && self.interface.len() < 16 && !self.interface.contains(['/', ' ']),
            "interface",
            &self.interface,
            "must be an interface name of 1 to 15 characters",
        );
        let vip = parse_vip(&mut p, &self.vip);
        let follow = match self.mode.as_deref() {
            None | Some("vrrp") => false,
            Some("etcd-follow") => true,
            Some(other) => {
                p.push("mode", other, "must be \"vrrp\" or \"etcd-follow\"");
                false
            }
        };
        let mode = if follow {
            if !self.vrrp.is_empty() {
                p.push_key("vrrp", "is only used with mode = \"vrrp\"");
            }
            if !self.track.is_empty() {
                p.push_key("track", "weights only apply to VRRP priorities (mode = \"vrrp\")");
            }
            if self.leader.is_none() {
                p.push_key("leader", "is required with mode = \"etcd-follow\"");
            }
            Some(Mode::Follow)
        } else {
            self.vrrp.validate(&mut p, vip.map(|v| v.0), &self.garp).map(Mode::Vrrp)
        };
        let leader = self.leader.as_ref().and_then(|l| l.validate(&mut p));
        let etcd = match (&self.etcd, &self.leader) {
            (Some(e), _) => Some(e.validate(&mut p)),
            (None, Some(_)) => {
                p.push_key("etcd", "is required when [leader] is set");
                None
            }
            (None, None) => None,
        };
        let mut tracks = Vec::new();
        for (i, t) in self.track.iter().enumerate() {
            if self.track[..i].iter().any(|o| o.name == t.name) {
                p.push(format!("track[{i}].name"), &t.name, "must be unique");
            }
            tracks.extend(t.validate(&mut p, i));
        }
        let notify = self.notify.as_ref().map(|n| {
            let ok = n.command.first().is_some_and(|c| c.starts_with('/'));
            p.check(ok, "notify.command", n.command.join(" "), "must start with an absolute path to a program");
            let timeout = n.timeout.unwrap_or(Duration::from_secs(10));
            p.check(
                timeout >= Duration::from_millis(100),
                "notify.timeout",
                fmt_duration(timeout),
                "must be at least 100ms",
            );
            Notify { command: n.command.clone(), timeout }
        });
        let metrics_listen = self.metrics.as_ref().and_then(|m| listen_addr(&mut p, "metrics.listen", &m.listen));
        let log = self.log.validate(&mut p);
        p.finish(())?;
        match (vip, mode) {
            (Some((vip, prefix_len)), Some(mode)) => Ok(Config {
                interface: self.interface.clone(),
                vip,
                prefix_len,
                mode,
                leader,
                etcd,
                tracks,
                notify,
                metrics_listen,
                log,
            }),
            _ => Err(vec![Problem::key_only("(config)", "invalid")]),
        }
    }
}

impl Config {
    /// The config to run with after a reload (SIGHUP) to `new`, as keepalived's reload keeps
    /// an instance's state and takes its new priority: the base priority, preemption, GARP
    /// schedule, advert tie options, the weights of the leader key and of the
    /// tracks, the notify script and the log level apply at once; what defines the instance
    /// or its inputs (interface, VIP, mode, VRID, version, interval, addresses, auth, etcd,
    /// the leader key, the tracks' checks, the metrics listener) keeps its running value and
    /// is named as needing a restart.
    pub fn reloaded(&self, new: &Config) -> (Config, Plan) {
        let mut p = Plan::default();
        let mut next = self.clone();
        p.restart("interface", &self.interface, &new.interface);
        p.restart("vip", &(self.vip, self.prefix_len), &(new.vip, new.prefix_len));
        match (&mut next.mode, &new.mode) {
            (Mode::Vrrp(run), Mode::Vrrp(n)) => {
                p.runtime("vrrp.priority", &mut run.priority, &n.priority);
                p.runtime("vrrp.preempt", &mut run.preempt, &n.preempt);
                p.runtime("vrrp.preempt_delay", &mut run.preempt_delay, &n.preempt_delay);
                p.runtime("vrrp.lower_prio_no_advert", &mut run.lower_prio_no_advert, &n.lower_prio_no_advert);
                p.runtime("vrrp.higher_prio_send_advert", &mut run.higher_prio_send_advert, &n.higher_prio_send_advert);
                p.runtime("garp", &mut run.garp, &n.garp);
                // Everything else of [vrrp], compared with the runtime keys taken as equal.
                let rest = |v: &Vrrp| Vrrp {
                    priority: 0,
                    preempt: false,
                    preempt_delay: Duration::ZERO,
                    lower_prio_no_advert: false,
                    higher_prio_send_advert: false,
                    garp: GarpSchedule::default(),
                    ..v.clone()
                };
                p.restart("vrrp (vrid, version, interval, addresses, auth, checksums, instance)", &rest(run), &rest(n));
            }
            _ => p.restart("mode", &self.mode, &new.mode),
        }
        match (&mut next.leader, &new.leader) {
            (Some(run), Some(n)) => {
                p.runtime("leader.weight", &mut run.weight, &n.weight);
                p.runtime("leader.on_etcd_unreachable", &mut run.on_unreachable, &n.on_unreachable);
                p.runtime("leader.unreachable_grace", &mut run.unreachable_grace, &n.unreachable_grace);
                p.restart("leader (key, member)", &(&run.key, &run.member), &(&n.key, &n.member));
            }
            (run, n) => p.restart("leader", run, n),
        }
        p.restart("etcd", &self.etcd, &new.etcd);
        let same_checks = self.tracks.len() == new.tracks.len()
            && self.tracks.iter().zip(&new.tracks).all(|(a, b)| Track { weight: b.weight, ..a.clone() } == *b);
        if same_checks {
            let mut weights: Vec<i32> = self.tracks.iter().map(|t| t.weight).collect();
            p.runtime("track weights", &mut weights, &new.tracks.iter().map(|t| t.weight).collect());
            for (t, w) in next.tracks.iter_mut().zip(weights) {
                t.weight = w;
            }
        } else {
            p.restart("track (names, checks, intervals)", &self.tracks, &new.tracks);
        }
        p.runtime("notify", &mut next.notify, &new.notify);
        p.restart("metrics.listen", &self.metrics_listen, &new.metrics_listen);
        p.log_options(&mut next.log, &new.log);
        (next, p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outrigger_daemon::config::parse_toml;

    fn load(text: &str) -> Result<Config, Vec<String>> {
        let raw: RawConfig = parse_toml("t.toml", text).map_err(|e| vec![e.to_string()])?;
        raw.validate().map_err(|ps| ps.iter().map(ToString::to_string).collect())
    }

    fn vrrp(c: &Config) -> &Vrrp {
        match &c.mode {
            Mode::Vrrp(v) => v,
            Mode::Follow => panic!("not vrrp"),
        }
    }

    const RELOAD_BASE: &str = r#"
interface = "eth0"
vip = "10.0.0.100"
[vrrp]
vrid = 51
priority = 100
[leader]
scope = "batman"
member = "pg-1"
weight = 50
[etcd]
endpoints = ["http://127.0.0.1:2379"]
[[track]]
name = "proxy"
check = "http"
url = "http://127.0.0.1:8009/primary"
weight = 20
"#;

    #[test]
    fn a_reload_applies_priority_preemption_and_weights_and_keeps_the_instance() {
        let old = load(RELOAD_BASE).unwrap();
        let text = RELOAD_BASE
            .replace("priority = 100", "priority = 90\npreempt = false")
            .replace("weight = 50", "weight = 60")
            .replace("weight = 20", "weight = 5");
        let (next, plan) = old.reloaded(&load(&text).unwrap());
        assert_eq!(plan.applied, ["vrrp.priority", "vrrp.preempt", "leader.weight", "track weights"]);
        assert!(plan.need_restart.is_empty(), "{:?}", plan.need_restart);
        assert_eq!((vrrp(&next).priority, vrrp(&next).preempt), (90, false));
        assert_eq!(next.leader.as_ref().map(|l| l.weight), Some(60));
        assert_eq!(next.tracks[0].weight, 5);
    }

    #[test]
    fn a_reload_names_what_defines_the_instance_and_keeps_its_running_value() {
        let old = load(RELOAD_BASE).unwrap();
        let text = RELOAD_BASE
            .replace("vrid = 51", "vrid = 52")
            .replace("10.0.0.100", "10.0.0.101")
            .replace("member = \"pg-1\"", "member = \"pg-2\"")
            .replace("8009/primary", "8009/replica");
        let (next, plan) = old.reloaded(&load(&text).unwrap());
        assert!(plan.applied.is_empty(), "{:?}", plan.applied);
        assert_eq!(
            plan.need_restart,
            [
                "vip",
                "vrrp (vrid, version, interval, addresses, auth, checksums, instance)",
                "leader (key, member)",
                "track (names, checks, intervals)"
            ]
        );
        assert_eq!((vrrp(&next).vrid, next.vip), (51, "10.0.0.100".parse::<IpAddr>().unwrap()));
        assert_eq!(next.leader.as_ref().map(|l| l.member.as_str()), Some("pg-1"));
    }

    #[test]
    fn minimal_vrrp_config_gets_keepalived_defaults() {
        let c = load("interface = \"eth0\"\nvip = \"10.0.0.100\"\n[vrrp]\nvrid = 51\n").unwrap();
        assert_eq!((c.vip, c.prefix_len), ("10.0.0.100".parse().unwrap(), 32));
        let v = vrrp(&c);
        assert_eq!(v.version, Version::V2);
        assert_eq!((v.vrid, v.priority, v.interval_cs), (51, 100, 100));
        assert!(v.preempt);
        assert_eq!(v.auth, Auth::None);
        assert_eq!(v.v3_checksum, V3Checksum::PseudoHeader);
        assert_eq!(v.garp, GarpSchedule::default());
        assert_eq!(v.instance, "VI_51");
        assert!(v.higher_prio_send_advert, "deliberately unlike keepalived: split-brain recovery re-sends GARP");
    }

    #[test]
    fn reference_deployment_translates() {
        let c = load(
            r#"
interface = "eth0"
vip = "10.10.44.111"
[vrrp]
vrid = 10
priority = 101
auth_pass = "password"
source = "10.10.44.101"
unicast_peers = ["10.10.44.101", "10.10.44.102", "10.10.44.103"]
[leader]
scope = "pgcluster"
member = "node1"
weight = 0
[etcd]
endpoints = ["http://127.0.0.1:2379"]
"#,
        )
        .unwrap();
        assert_eq!(vrrp(&c).auth, Auth::pass("password"));
        assert_eq!(vrrp(&c).unicast_peers.len(), 3);
        let l = c.leader.unwrap();
        assert_eq!((l.key.as_str(), l.member.as_str(), l.weight), ("/service/pgcluster/leader", "node1", 0));
    }

    #[test]
    fn v3_sub_second_and_ipv6() {
        let c = load(
            "interface=\"eth0\"\nvip=\"fe80::100/64\"\n[vrrp]\nvrid=5\nadvert_interval=\"100ms\"\nv3_checksum=\"rfc9568\"\n",
        )
        .unwrap();
        let v = vrrp(&c);
        assert_eq!((v.version, v.interval_cs, v.v3_checksum), (Version::V3, 10, V3Checksum::Rfc9568));
    }

    #[test]
    fn each_problem_names_key_value_and_rule() {
        let e = load(
            r#"
interface = "eth0"
vip = "10.0.0.100/33"
[vrrp]
version = 2
vrid = 300
priority = 0
advert_interval = "500ms"
auth_pass = ""
v3_checksum = "none"
unicast_peers = ["fe80::1"]
[[track]]
name = "x"
check = "http"
url = "https://127.0.0.1/"
[[track]]
name = "x"
check = "tcp"
weight = 300
"#,
        )
        .unwrap_err();
        let want = [
            "vip (10.0.0.100/33): prefix length must be 1 to 32",
            "vrrp.vrid (300): must be 1 to 255",
            "vrrp.priority (0): must be 1 to 255 (255: address owner)",
            "vrrp.advert_interval (500ms): must be whole seconds from 1s to 255s with VRRPv2 (use version 3 for sub-second adverts)",
            "vrrp.auth_pass (\"\"): must not be empty",
            "vrrp.v3_checksum (none): must be \"pseudo-header\" or \"rfc9568\"",
            "track[0].url (https://127.0.0.1/): must be http://IP:port/path (no TLS, no host names: checks are local)",
            "track[1].name (x): must be unique",
            "track[1].address: is required for a tcp check",
            "track[1].weight (300): must be -253 to 253",
        ];
        for w in want {
            assert!(e.iter().any(|p| p == w), "missing {w:?} in {e:#?}");
        }
    }

    #[test]
    fn cross_key_rules() {
        let e = load("interface=\"eth0\"\nvip=\"fe80::1\"\n[vrrp]\nversion=2\nvrid=1\n").unwrap_err();
        assert!(e.iter().any(|p| p.contains("an IPv6 vip needs version 3")), "{e:?}");
        let e = load("interface=\"eth0\"\nvip=\"10.0.0.1\"\n[vrrp]\nversion=3\nvrid=1\nauth_pass=\"x\"\n").unwrap_err();
        assert!(e.iter().any(|p| p.starts_with("vrrp.auth_pass: VRRPv3 has no authentication")), "{e:?}");
        let e = load("interface=\"eth0\"\nvip=\"10.0.0.1\"\n[vrrp]\nvrid=1\n[leader]\nscope=\"s\"\n").unwrap_err();
        assert!(e.iter().any(|p| p.starts_with("etcd: is required")), "{e:?}");
        let e = load("interface=\"eth0\"\nvip=\"10.0.0.1\"\nmode=\"etcd-follow\"\n[vrrp]\nvrid=1\n").unwrap_err();
        assert!(e.iter().any(|p| p.starts_with("vrrp: is only used")), "{e:?}");
        assert!(e.iter().any(|p| p.starts_with("leader: is required")), "{e:?}");
        let e = load("interface=\"eth0\"\nvip=\"10.0.0.1\"\n[vrrp]\nversion=3\nvrid=1\nadvert_interval=\"15ms\"\n")
            .unwrap_err();
        assert!(e.iter().any(|p| p.contains("in steps of 10ms")), "{e:?}");
    }

    #[test]
    fn follow_mode_with_cybertec_style_trigger() {
        let c = load(
            r#"
interface = "eth0"
vip = "10.0.0.100/24"
mode = "etcd-follow"
[leader]
trigger_key = "/service/pg/leader"
member = "n1"
on_etcd_unreachable = "keep"
unreachable_grace = "2s"
[etcd]
endpoints = ["http://127.0.0.1:2379"]
"#,
        )
        .unwrap();
        assert_eq!(c.mode, Mode::Follow);
        let l = c.leader.unwrap();
        assert_eq!(l.on_unreachable, Unreachable::Keep);
        assert_eq!(l.unreachable_grace, Duration::from_secs(2));
    }

    #[test]
    fn unknown_keys_in_sections_are_errors() {
        let r: Result<RawConfig, _> =
            parse_toml("t", "interface=\"eth0\"\nvip=\"10.0.0.1\"\n[vrrp]\nvrid=1\nadvert_int=1\n");
        assert!(r.is_err());
    }

    #[test]
    fn http_urls() {
        assert_eq!(
            parse_http_url("http://127.0.0.1:8008/primary"),
            Some(("127.0.0.1:8008".parse().unwrap(), "/primary".into()))
        );
        assert_eq!(parse_http_url("http://127.0.0.1:8008"), Some(("127.0.0.1:8008".parse().unwrap(), "/".into())));
        assert_eq!(parse_http_url("http://localhost:8008/"), None);
        assert_eq!(parse_http_url("http://[::1]:80/x"), Some(("[::1]:80".parse().unwrap(), "/x".into())));
    }
}
