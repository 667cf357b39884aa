//! vip-manager: VRRP (v2/v3) and etcd-driven virtual IPs, interoperating with keepalived.
//!
//! This crate so far holds the config layer; the daemon's behaviour lands with its own issue.
#![forbid(unsafe_code)]

pub mod config;
