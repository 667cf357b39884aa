//! vip-manager: VRRP (v2/v3) and etcd-driven virtual IPs, interoperating with keepalived.
//!
//! Pure cores first, I/O at the edges:
//! - [`packet`]: the VRRP wire format, encoding and validated decoding;
//! - [`fsm`]: the VRRP state machine; time goes in, effects come out as data;
//! - [`priority`]: effective priority from weights, with keepalived's rules;
//! - [`follow`]: etcd-follow mode's hold-or-release decision;
//! - [`garp`]: gratuitous ARP and unsolicited NA frames;
//! - [`config`]: the config file, raw then validated;
//! - edges: [`sys`] (raw sockets; the only module with `unsafe`), [`netlink`] (VIP add/remove),
//!   [`inputs`] (checks, the etcd leader key, notify commands), [`metrics`];
//! - [`run`]: the run loops that tie them together.

pub mod config;
pub mod follow;
pub mod fsm;
pub mod garp;
pub mod inputs;
pub mod metrics;
pub mod netlink;
pub mod packet;
pub mod priority;
pub mod run;
pub mod sys;

pub use run::{Progress, run};
