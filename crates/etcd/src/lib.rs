//! etcd access for every Outrigger daemon, over `etcd-client` (gRPC), working against etcd 3.4
//! (Debian 12) and 3.5+.
//!
//! What this adds to `etcd-client`:
//! - a deadline on every request, so a hung member turns into [`EtcdError::Unavailable`]
//!   instead of a hung daemon;
//! - typed errors a caller can branch on: unavailable, compare failed (with the value that
//!   won), lease lost;
//! - the compare-and-swap shapes the Patroni contract uses (create-if-absent, value-equals,
//!   mod-revision-equals);
//! - a lease renewer that reopens its keep-alive stream after a reconnect;
//! - a prefix watch that resumes from the next revision after a reconnect and resyncs from a
//!   full read when its revision was compacted, so a reader never misses a change silently.

mod client;
mod error;
mod hedge;
mod watch;

pub use client::{ConnectOptions, Etcd, Kv, LeaseRenewer, Snapshot, TlsFiles};
pub use error::EtcdError;
pub use hedge::PerEndpoint;
pub use watch::{Change, PrefixWatch, WatchUpdate};

/// An etcd lease id.
pub type LeaseId = i64;
