//! Real-process test kit.
//!
//! Handles that clean up on drop, also when a test panics:
//! - [`Net`]: hosts as network namespaces joined by a bridge that lives in its own namespace,
//!   so nothing is attached to the root namespace and no test packet can leave the machine.
//!   Each [`Host`] has a thread inside its namespace: processes are forked from it (so they
//!   live in the namespace without `ip netns exec`) and get `SIGKILL` as parent-death signal,
//!   so even a test process killed outright takes its daemons with it.
//! - [`Proc`]: a child process with its output in the test's log folder.
//! - [`EtcdCluster`]: real etcd (Debian's binary), one member per host.
//! - [`Postgres`]: real PostgreSQL run as the `postgres` user, primary or streaming replica.
//! - [`wait_until`]: poll a condition with a deadline, saying what it waited for on timeout.
//! - [`TestDir`]: `target/test-logs/<test>/`, kept after the test for post-mortems.
//! - [`StandInWatchdog`]: a watchdog device on a named pipe (Patroni's `testing` driver) that
//!   runs the test's "reset" when not fed in time.
//!
//! Every namespace is named `otk-<pid>-...` and every process gets `OUTRIGGER_TESTKIT_OWNER=<pid>`
//! in its environment, so [`leaks`] can find anything a dead test process left behind.
//!
//! Safety rule: test traffic goes only to loopback or to addresses inside these namespaces.
//! Code in the root namespace must not connect to a host's address (it would leave the
//! machine); use [`Host::enter`] or [`Host::runtime`] to run clients inside a namespace.

pub mod bin;
pub mod cli;
mod dirs;
mod etcd;
pub mod leaks;
mod machine;
mod net;
mod pg;
mod proc;
pub mod python;
pub mod s3;
mod sys;
mod wait;
pub mod watchdog;

pub use dirs::TestDir;
pub use etcd::{EtcdCluster, EtcdOptions, EtcdTls, make_tls, make_tls_for};
pub use machine::Machine;
pub use net::{Host, Net, NsRuntime, SUBNET_PREFIX};
pub use pg::{PgOptions, Postgres};
pub use proc::Proc;
pub use wait::{hold_for, wait_ok, wait_until};
pub use watchdog::{StandInWatchdog, WdEvent};

/// Environment variable set on every process the kit starts, holding the test process's pid.
pub const OWNER_ENV: &str = "OUTRIGGER_TESTKIT_OWNER";
/// Prefix of every network namespace the kit creates.
pub const NETNS_PREFIX: &str = "otk-";
