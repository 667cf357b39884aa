//! vip-manager: VRRP (v2/v3) and etcd-driven virtual IPs, interoperating with keepalived.
//!
//! Layout (pure cores first, I/O at the edges):
//! - [`packet`]: the VRRP wire format, encoding and validated decoding.
//! - [`fsm`]: the VRRP state machine; time goes in, effects come out as data.

pub mod config;
pub mod fsm;
pub mod packet;
