//! The HA decision core: a pure function from what the agent observed to what it does next.
//!
//! No I/O and no clock: the shell (`crate::run`) reads etcd and PostgreSQL, passes the time in,
//! calls [`decide`], carries out the [`Decision`] and loops. The same function drives the
//! deterministic simulation in `tests/simulation.rs`.

pub mod cascade;
mod decide;
mod decision;
pub mod divergence;
pub mod keeper;
mod memory;
mod observed;
mod quorum;
pub mod schedule;
pub mod slots;
pub mod sync;
pub mod timing;
mod view;
pub mod watchdog;

#[cfg(test)]
mod tests;

pub use decide::{decide, failsafe_round_due, standby_upstream};
pub use decision::{
    ClearReason, Decision, DemoteReason, FenceReason, REMOTE_PRIMARY, ReleaseReason, StopReason, WaitReason,
};
pub use memory::{KNOWN_PEER_TTL, Memory, Outcome, PgErrorKind};
pub use observed::{
    ClusterState, Control, FORMER_LEADER_TIMEOUT, LeaseView, Moment, Observed, PeerProbe, PeerRef, PeerStatus, PgView,
    ProbeBasis, Recent, RunningPg, Settings,
};
pub use view::{
    ClusterView, ConfigState, DynConfig, FailoverRequest, Initialize, KeyProblem, LeaderKey, Member, Role, Tags,
    TimelineSwitch, refused_parameter,
};
