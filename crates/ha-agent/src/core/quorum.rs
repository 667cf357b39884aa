//! Quorum commit (`synchronous_mode: quorum`, Patroni 4): not built yet. The leader leaves
//! `synchronous_standby_names` and the `sync` key alone, so the cluster runs as without
//! synchronous mode; the shell says so once at ERROR level.

use super::sync::{SyncInputs, SyncStep};

pub(super) fn plan(_i: &SyncInputs<'_>) -> SyncStep {
    SyncStep::Done
}
