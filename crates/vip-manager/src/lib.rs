//! vip-manager: VRRP (v2/v3) and etcd-driven virtual IPs, interoperating with keepalived.
//!
//! Layout (pure cores first, I/O at the edges):
//! - [`packet`]: the VRRP wire format, encoding and validated decoding.

pub mod config;
pub mod packet;
