//! The etcd key schema that Outrigger shares with Patroni 4.x.
//!
//! Every other crate reaches etcd keys through [`KeyLayout`] and decodes values through the
//! types here, so no other crate spells a key path or a JSON field. The types are *wire* types:
//! they follow Patroni's JSON exactly (field names, optional fields, legacy spellings) and keep
//! unknown fields so that a value written by a newer Patroni survives a read-modify-write by us.
//! Daemon cores convert them into their own types.
//!
//! Source of truth for the layout: `../shared/reference/patroni.md` §1.

mod dynamic;
mod keys;
mod outrigger;
mod rest;
mod values;

pub use dynamic::{ConfigPostgresql, ConfigValue, PermanentSlot, StandbyCluster, SynchronousMode};
pub use keys::{ClusterKey, KeyKind, KeyLayout, LayoutError};
pub use outrigger::{BackupLockValue, BackupRecord, LastBackupValue, WalShipperStatus};
pub use rest::{PatroniInfo, StatusJson, XlogStatus};
pub use values::{
    DecodeError, FailoverValue, FailsafeValue, HistoryEntry, MemberRole, MemberValue, StatusValue, SyncValue,
    decode_initialize, decode_leader,
};

/// The Patroni version Outrigger daemons publish in `members/<name>.version` and in
/// `GET /patroni`: peers parse it as integers and switch to legacy code paths below 4.0.0
/// (`../shared/reference/patroni.md` §1.2), so it names the Patroni release whose contract
/// Outrigger implements rather than Outrigger's own version.
pub const PATRONI_COMPAT_VERSION: &str = "4.1.4";
