//! Permanent logical slots in PostgreSQL: listing them, creating and advancing them in their
//! own database, and copying their state from the leader into a stopped replica (Patroni's
//! method before PostgreSQL 17, where a server in recovery cannot create a logical slot).

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;

use super::{Postgres, connect};
use crate::core::slots::{LogicalPresent, LogicalWanted};

/// A logical slot's state as read from the leader, to be installed on a replica.
#[derive(Debug, Clone)]
pub struct SlotState {
    pub name: String,
    pub database: String,
    pub plugin: String,
    /// The slot's `state` file, byte for byte.
    pub state: Vec<u8>,
}

/// Moves a logical slot forward to `to` in its database (`local`: a connection config for the
/// local server on that database). Decoding the WAL in between can take long: bounded by
/// `limit`, and meant to run off the HA loop.
pub async fn advance_logical(
    local: tokio_postgres::Config,
    name: String,
    to: u64,
    limit: Duration,
) -> anyhow::Result<()> {
    let work = async {
        let client = connect(&local, Duration::from_secs(3), "the local server").await?;
        client
            .execute(
                "SELECT pg_catalog.pg_replication_slot_advance($1, $2::text::pg_lsn)",
                &[&name, &super::text::format_lsn(to)],
            )
            .await
            .with_context(|| format!("advance logical slot {name}"))?;
        anyhow::Ok(())
    };
    tokio::time::timeout(limit, work).await.with_context(|| format!("advance logical slot {name}: timed out"))?
}

/// Whether an advance failed because the copy cannot be used any more: its WAL is gone here
/// (`undefined_file`) or PostgreSQL invalidated it (`object_not_in_prerequisite_state`).
pub fn needs_copy_again(e: &anyhow::Error) -> bool {
    use tokio_postgres::error::SqlState;
    e.chain().filter_map(|c| c.downcast_ref::<tokio_postgres::Error>()).any(|pg| {
        pg.code().is_some_and(|c| *c == SqlState::UNDEFINED_FILE || *c == SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE)
    })
}

impl Postgres {
    /// A connection config for the local server on `database` (logical slots are created and
    /// advanced from a connection to their own database).
    pub fn local_config(&self, database: &str) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.host_path(&self.cfg.socket_dir)
            .port(self.cfg.port)
            .user(&self.cfg.superuser.username)
            .dbname(database)
            .application_name("ha-agent")
            .options("-c synchronous_commit=local -c statement_timeout=0")
            .connect_timeout(Duration::from_secs(2));
        if let Some(p) = &self.cfg.superuser.password {
            c.password(p);
        }
        c
    }

    /// The logical slots (not temporary ones) with their positions.
    pub async fn logical_slots(&mut self) -> anyhow::Result<Vec<LogicalPresent>> {
        let rows = self
            .query(
                "SELECT slot_name::text, database::text, plugin::text, active, \
                 (confirmed_flush_lsn - '0/0'::pg_lsn)::bigint, catalog_xmin::text::bigint \
                 FROM pg_replication_slots WHERE slot_type = 'logical' AND NOT temporary",
            )
            .await?;
        rows.iter()
            .map(|r| {
                let flushed: Option<i64> = r.try_get(4)?;
                let xmin: Option<i64> = r.try_get(5)?;
                Ok(LogicalPresent {
                    name: r.try_get(0)?,
                    database: r.try_get::<_, Option<String>>(1)?.unwrap_or_default(),
                    plugin: r.try_get::<_, Option<String>>(2)?.unwrap_or_default(),
                    active: r.try_get(3)?,
                    confirmed_flush: flushed.and_then(|l| u64::try_from(l).ok()),
                    catalog_xmin: xmin.and_then(|x| u64::try_from(x).ok()),
                })
            })
            .collect()
    }

    /// Creates a logical slot in its database (on the primary). Waits for the transactions
    /// running at the time to end (PostgreSQL's snapshot), bounded by 30 s.
    pub async fn create_logical_slot(&self, w: &LogicalWanted) -> anyhow::Result<()> {
        let c = self.local_config(&w.database);
        let work = async {
            let client = connect(&c, Duration::from_secs(3), &format!("database {}", w.database)).await?;
            client
                .execute(
                    "SELECT pg_catalog.pg_create_logical_replication_slot($1, $2) WHERE NOT EXISTS \
                     (SELECT 1 FROM pg_catalog.pg_replication_slots WHERE slot_name = $1)",
                    &[&w.name, &w.plugin],
                )
                .await
                .with_context(|| format!("create logical slot {} (plugin {})", w.name, w.plugin))?;
            anyhow::Ok(())
        };
        tokio::time::timeout(Duration::from_secs(30), work).await.context("create a logical slot: timed out")?
    }

    /// The state files of the leader's logical slots named in `names` (superuser: the files
    /// are read with `pg_read_binary_file`). Nothing from a server in recovery.
    pub async fn leader_slot_states(&self, host: &str, port: u16, names: &[String]) -> anyhow::Result<Vec<SlotState>> {
        let rows = self
            .on_leader(
                host,
                port,
                "SELECT slot_name::text, datname::text, plugin::text, \
                 pg_catalog.pg_read_binary_file('pg_replslot/' || slot_name || '/state') \
                 FROM pg_catalog.pg_get_replication_slots() JOIN pg_catalog.pg_database ON datoid = oid \
                 WHERE NOT pg_catalog.pg_is_in_recovery() AND slot_type = 'logical' AND slot_name = ANY($1)",
                names,
            )
            .await
            .context("read the logical slots' state on the leader")?;
        rows.iter()
            .map(|r| {
                Ok(SlotState {
                    name: r.try_get(0)?,
                    database: r.try_get(1)?,
                    plugin: r.try_get(2)?,
                    state: r.try_get(3)?,
                })
            })
            .collect()
    }

    /// `catalog_xmin` of each slot in `names` on the leader (`None`: no feedback yet).
    pub async fn leader_catalog_xmins(
        &self,
        host: &str,
        port: u16,
        names: &[String],
    ) -> anyhow::Result<Vec<(String, Option<u64>)>> {
        let rows = self
            .on_leader(
                host,
                port,
                "SELECT slot_name::text, catalog_xmin::text::bigint FROM pg_catalog.pg_get_replication_slots() \
                 WHERE NOT pg_catalog.pg_is_in_recovery() AND slot_name = ANY($1)",
                names,
            )
            .await
            .context("read catalog_xmin on the leader")?;
        rows.iter()
            .map(|r| {
                let x: Option<i64> = r.try_get(1)?;
                Ok((r.try_get(0)?, x.and_then(|x| u64::try_from(x).ok())))
            })
            .collect()
    }

    /// One query about the slots named in `names` (its `$1`) on the leader, as superuser,
    /// bounded: 3 s to connect, 5 s for the statement, 10 s in all.
    async fn on_leader(
        &self,
        host: &str,
        port: u16,
        sql: &str,
        names: &[String],
    ) -> anyhow::Result<Vec<tokio_postgres::Row>> {
        let mut c = self.remote(host, port, Duration::from_secs(3));
        c.options("-c statement_timeout=5000");
        let work = async {
            let client = connect(&c, Duration::from_secs(4), "the leader").await?;
            anyhow::Ok(client.query(sql, &[&names]).await?)
        };
        tokio::time::timeout(Duration::from_secs(10), work).await.context("timed out")?
    }

    /// Installs copied slot states into `pg_replslot` (the server must be stopped): each into
    /// a new directory, synced, then renamed over any old one, as PostgreSQL itself saves a
    /// slot, so that a crash leaves either the old slot or the new one.
    pub fn install_slot_states(&self, states: &[SlotState]) -> anyhow::Result<()> {
        let dir = self.cfg.data_dir.join("pg_replslot");
        for s in states {
            let slot = dir.join(&s.name);
            let tmp = dir.join(format!("{}.tmp", s.name));
            if tmp.exists() {
                std::fs::remove_dir_all(&tmp).with_context(|| format!("remove {}", tmp.display()))?;
            }
            std::fs::create_dir(&tmp).with_context(|| format!("create {}", tmp.display()))?;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o700))?;
            self.give(&tmp)?;
            let file = tmp.join("state");
            let mut f = std::fs::File::create(&file).with_context(|| format!("create {}", file.display()))?;
            f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
            f.write_all(&s.state).with_context(|| format!("write {}", file.display()))?;
            f.sync_all().with_context(|| format!("fsync {}", file.display()))?;
            drop(f);
            self.give(&file)?;
            sync_dir(&tmp)?;
            if slot.exists() {
                std::fs::remove_dir_all(&slot).with_context(|| format!("remove {}", slot.display()))?;
            }
            std::fs::rename(&tmp, &slot).with_context(|| format!("rename to {}", slot.display()))?;
            sync_dir(&slot)?;
        }
        sync_dir(&dir)
    }
}

fn sync_dir(d: &Path) -> anyhow::Result<()> {
    std::fs::File::open(d).and_then(|f| f.sync_all()).with_context(|| format!("fsync {}", d.display()))
}
