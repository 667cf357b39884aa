//! Local PostgreSQL: files, processes and SQL.
//!
//! The postmaster runs as a child of the agent in its own process group (so that a signal to
//! the agent's group does not reach it) and as `postgresql.run_as` when the agent runs as
//! root. A postmaster that outlives an agent restart is found again through `postmaster.pid`.
//! Every external step is bounded in time.

pub mod callbacks;
pub mod logical;
pub mod text;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::Command;
use tokio::sync::mpsc;
use tokio_postgres::NoTls;

use crate::config::PgConfig;
use crate::core::{Control, PgErrorKind, PgView, RunningPg};
use text::{ConfInput, Upstream};

/// One WAL record: a transaction that takes an id (any user may), committed without waiting
/// for synchronous standbys.
const WAL_RECORD: &str = "DO $$BEGIN SET LOCAL synchronous_commit = 'local'; PERFORM pg_catalog.txid_current(); END$$";

/// A PostgreSQL tool that failed, with the kind of failure the HA core cares about.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct PgError {
    pub kind: PgErrorKind,
    message: String,
}

impl PgError {
    fn new(kind: PgErrorKind, message: String) -> Self {
        Self { kind, message }
    }
}

/// Connects with `c` within `limit`; the connection runs on its own task until the client is
/// dropped.
async fn connect(c: &tokio_postgres::Config, limit: Duration, what: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, conn) = tokio::time::timeout(limit, c.connect(NoTls))
        .await
        .with_context(|| format!("connect to {what}: timed out"))?
        .with_context(|| format!("connect to {what}"))?;
    let what = what.to_owned();
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, server = %what, "PostgreSQL connection ended");
        }
    });
    Ok(client)
}

/// The data directory is a standby's (`standby.signal` or `recovery.signal`): a server started
/// from it cannot accept writes until it is promoted.
pub fn is_standby_dir(data_dir: &Path) -> bool {
    data_dir.join("standby.signal").exists() || data_dir.join("recovery.signal").exists()
}

/// Processes working in the data directory (backends of a postmaster that died keep running
/// for a moment, keep its shared memory, and keep serving the sessions they have).
pub fn leftover_pids(data_dir: &Path) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    let data = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    let me = std::process::id();
    // A zombie's cwd link cannot be read, so only live processes are found.
    dir.filter_map(|e| {
        let pid: i32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        (u32::try_from(pid).ok() != Some(me) && std::fs::read_link(format!("/proc/{pid}/cwd")).ok()? == data)
            .then_some(pid)
    })
    .collect()
}

/// How to stop PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// SIGINT: disconnect clients, write a shutdown checkpoint (walsenders ship it first).
    Fast,
    /// SIGQUIT: stop now, no checkpoint; crash recovery at the next start.
    Immediate,
}

/// Sends `sig` to the postmaster of `data_dir`, if one runs. Used by the lease keeper to fence
/// without waiting for anything: one read and one syscall.
pub fn signal_postmaster(data_dir: &Path, sig: Signal) -> Option<i32> {
    let pid = postmaster_pid(data_dir)?;
    kill(Pid::from_raw(pid), sig).ok()?;
    Some(pid)
}

/// The pid in `postmaster.pid`, if that process is alive and is a postgres.
pub fn postmaster_pid(data_dir: &Path) -> Option<i32> {
    // A stale file after a crash may name a pid reused by something else; a killed postmaster
    // not yet reaped (a zombie) is gone too.
    match postmaster_proc(data_dir)? {
        (pid, false) => Some(pid),
        (_, true) => None,
    }
}

/// The postgres process `postmaster.pid` names, and whether it is a zombie (killed, not yet
/// reaped by its parent). PostgreSQL refuses to start while the pid in its lock file exists,
/// zombie or not.
fn postmaster_proc(data_dir: &Path) -> Option<(i32, bool)> {
    let text = std::fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    let pid: i32 = text.lines().next()?.trim().parse().ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (comm, rest) = stat.split_once(" (")?.1.rsplit_once(") ")?;
    let zombie = rest.starts_with('Z') || rest.starts_with('X');
    (comm.starts_with("postgres") || comm.starts_with("postmaster")).then_some((pid, zombie))
}

/// SIGKILL to the postmaster of `data_dir` (and its process group) and to every process still
/// working in the data directory, at once: nothing of this PostgreSQL takes a write after it.
/// Returns the postmaster it found and how many other processes it killed.
pub fn kill_now(data_dir: &Path) -> (Option<i32>, usize) {
    let pid = postmaster_pid(data_dir);
    let leftovers = leftover_pids(data_dir);
    if let Some(pid) = pid {
        let _ = kill(Pid::from_raw(-pid), Signal::SIGKILL);
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    for p in &leftovers {
        let _ = kill(Pid::from_raw(*p), Signal::SIGKILL);
    }
    (pid, leftovers.len())
}

/// A standby that is up and replaying but not yet consistent ("the database system is not
/// yet accepting connections").
fn replaying(e: &anyhow::Error) -> bool {
    e.chain().filter_map(|c| c.downcast_ref::<tokio_postgres::Error>()).any(|pe| {
        pe.as_db_error().is_some_and(|db| {
            *db.code() == tokio_postgres::error::SqlState::CANNOT_CONNECT_NOW
                && db.message().contains("not yet accepting connections")
        })
    })
}

/// Extra facts about a running server that the core does not need but the member key and
/// `GET /patroni` publish.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extra {
    pub server_version: u32,
    pub postmaster_start_time: Option<String>,
    pub receive_lsn: Option<u64>,
    pub replay_lsn: Option<u64>,
    pub streaming: bool,
}

/// A user to run PostgreSQL tools as (when the agent runs as root).
#[derive(Debug, Clone, Copy)]
struct Ids {
    uid: u32,
    gid: u32,
}

pub struct Postgres {
    cfg: PgConfig,
    name: String,
    /// The cluster's name, the third argument of every callback.
    scope: String,
    cb: callbacks::State,
    /// The cluster's `postgresql.pg_hba` (config key), used unless the local file sets one.
    cluster_hba: Option<Vec<String>>,
    /// The cluster's `postgresql.use_slots` (default true).
    use_slots: bool,
    /// The cluster's `postgresql.pg_ident` (config key), used unless the local file sets one.
    cluster_ident: Option<Vec<String>>,
    ids: Option<Ids>,
    client: Option<tokio_postgres::Client>,
    /// Told when a postmaster we started exits.
    exits: mpsc::UnboundedSender<String>,
}

fn lsn(v: Option<i64>) -> Option<u64> {
    v.and_then(|x| u64::try_from(x).ok())
}

impl Postgres {
    /// `exits` receives a line whenever a postmaster started by this agent exits.
    pub fn new(cfg: PgConfig, name: &str, scope: &str, exits: mpsc::UnboundedSender<String>) -> anyhow::Result<Self> {
        let ids = if nix::unistd::geteuid().is_root() {
            let u = nix::unistd::User::from_name(&cfg.run_as)
                .with_context(|| format!("look up user {}", cfg.run_as))?
                .with_context(|| format!("user {} (postgresql.run_as) does not exist", cfg.run_as))?;
            Some(Ids { uid: u.uid.as_raw(), gid: u.gid.as_raw() })
        } else {
            None
        };
        Ok(Self {
            cfg,
            name: name.to_owned(),
            scope: scope.to_owned(),
            cb: callbacks::State::default(),
            cluster_hba: None,
            use_slots: true,
            cluster_ident: None,
            ids,
            client: None,
            exits,
        })
    }

    pub fn data_dir(&self) -> &Path {
        &self.cfg.data_dir
    }

    pub fn config(&self) -> &PgConfig {
        &self.cfg
    }

    /// A reloaded `[postgresql]` section (only runtime settings differ: the reload keeps the
    /// ones that need a restart).
    pub fn set_config(&mut self, cfg: PgConfig) {
        self.cfg = cfg;
        self.client = None;
    }

    fn cmd(&self, tool: &str) -> Command {
        self.command(self.cfg.bin_dir.join(tool))
    }

    /// `program`, run as the PostgreSQL user with a plain environment.
    fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new(program);
        c.env("LC_ALL", "C").env("LANG", "C").stdin(Stdio::null()).kill_on_drop(true);
        if let Some(ids) = self.ids {
            c.uid(ids.uid).gid(ids.gid);
            c.env("HOME", self.cfg.data_dir.parent().unwrap_or(Path::new("/tmp")));
        }
        c
    }

    /// Runs a tool to completion within `limit`; stderr (and stdout on failure) go into the error.
    async fn run(&self, what: &str, mut c: Command, limit: Duration) -> Result<String, PgError> {
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        let out = match tokio::time::timeout(limit, c.output()).await {
            Err(_) => return Err(PgError::new(PgErrorKind::TimedOut, format!("{what}: no result within {limit:?}"))),
            Ok(Err(e)) => return Err(PgError::new(PgErrorKind::Failed, format!("{what}: start: {e}"))),
            Ok(Ok(out)) => out,
        };
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let tail: Vec<&str> = stderr.lines().chain(stdout.lines()).rev().take(6).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            return Err(PgError::new(PgErrorKind::Failed, format!("{what}: {}: {}", out.status, tail.join(" | "))));
        }
        Ok(stdout)
    }

    /// Makes `path` ours (the PostgreSQL user's) when running as root.
    fn give(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(ids) = self.ids {
            std::os::unix::fs::chown(path, Some(ids.uid), Some(ids.gid))
                .with_context(|| format!("chown {}", path.display()))?;
        }
        Ok(())
    }

    fn write_file(&self, path: &Path, text: &str) -> anyhow::Result<()> {
        let tmp = path.with_extension("ha-agent-tmp");
        std::fs::write(&tmp, text).with_context(|| format!("write {}", tmp.display()))?;
        self.give(&tmp)?;
        std::fs::rename(&tmp, path).with_context(|| format!("rename to {}", path.display()))
    }

    pub fn has_data(&self) -> bool {
        self.cfg.data_dir.join("PG_VERSION").is_file()
    }

    // ---- observation ----

    async fn client(&mut self) -> anyhow::Result<&tokio_postgres::Client> {
        if self.client.as_ref().is_some_and(tokio_postgres::Client::is_closed) {
            self.client = None;
        }
        if self.client.is_none() {
            let mut c = tokio_postgres::Config::new();
            c.host_path(&self.cfg.socket_dir)
                .port(self.cfg.port)
                .user(&self.cfg.superuser.username)
                .dbname("postgres")
                .application_name("ha-agent")
                // The agent's own writes (roles, slots) must never wait for a synchronous
                // standby: at bootstrap none can exist until the replication role does.
                .options("-c synchronous_commit=local -c statement_timeout=30000")
                .connect_timeout(Duration::from_secs(2));
            if let Some(p) = &self.cfg.superuser.password {
                c.password(p);
            }
            self.client = Some(connect(&c, Duration::from_secs(3), "local PostgreSQL").await?);
        }
        self.client.as_ref().context("no client")
    }

    /// One SQL statement, bounded in time; the connection is dropped on error.
    async fn query(&mut self, sql: &str) -> anyhow::Result<Vec<tokio_postgres::Row>> {
        let client = self.client().await?;
        match tokio::time::timeout(Duration::from_secs(5), client.query(sql, &[])).await {
            Ok(Ok(rows)) => Ok(rows),
            Ok(Err(e)) => {
                self.client = None;
                Err(e).with_context(|| format!("SQL {}", sql.split_whitespace().take(3).collect::<Vec<_>>().join(" ")))
            }
            Err(_) => {
                self.client = None;
                bail!("SQL {}: no answer within 5s", sql.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            }
        }
    }

    /// Runs SQL that returns nothing of interest.
    pub async fn execute(&mut self, sql: &str) -> anyhow::Result<()> {
        self.query(sql).await.map(drop)
    }

    pub async fn controldata(&self) -> anyhow::Result<Control> {
        let mut c = self.cmd("pg_controldata");
        c.arg("-D").arg(&self.cfg.data_dir);
        let out = self.run("pg_controldata", c, Duration::from_secs(10)).await?;
        text::parse_controldata(&out).map_err(anyhow::Error::msg)
    }

    /// Running server facts, as the core wants them, plus extras for publishing.
    async fn running(&mut self, upstream: Option<&Upstream>) -> anyhow::Result<(RunningPg, Extra)> {
        const SQL: &str = "SELECT pg_is_in_recovery(),
            (SELECT system_identifier FROM pg_control_system()),
            CASE WHEN pg_is_in_recovery() THEN NULL
                 ELSE pg_wal_lsn_diff(pg_current_wal_flush_lsn(), '0/0')::bigint END,
            pg_wal_lsn_diff(pg_last_wal_receive_lsn(), '0/0')::bigint,
            pg_wal_lsn_diff(pg_last_wal_replay_lsn(), '0/0')::bigint,
            CASE WHEN pg_is_in_recovery()
                 THEN COALESCE((SELECT received_tli FROM pg_stat_wal_receiver),
                               (SELECT timeline_id FROM pg_control_checkpoint()))
                 ELSE ('x' || substr(pg_walfile_name(pg_current_wal_flush_lsn()), 1, 8))::bit(32)::int END,
            current_setting('server_version_num')::int,
            to_char(pg_postmaster_start_time(), 'YYYY-MM-DD HH24:MI:SS.USOF'),
            (SELECT status FROM pg_stat_wal_receiver),
            current_setting('wal_log_hints') = 'on' OR current_setting('data_checksums') = 'on',
            (SELECT sender_host FROM pg_stat_wal_receiver)";
        let rows = self.query(SQL).await?;
        let r = rows.first().context("observe query returned no row")?;
        let in_recovery: bool = r.try_get(0)?;
        let sysid: i64 = r.try_get(1)?;
        let flush = lsn(r.try_get(2)?);
        let receive = lsn(r.try_get(3)?);
        let replay = lsn(r.try_get(4)?);
        let timeline: Option<i32> = r.try_get(5)?;
        let version: i32 = r.try_get(6)?;
        let start: Option<String> = r.try_get(7)?;
        let wr: Option<String> = r.try_get(8)?;
        let rewindable: bool = r.try_get(9)?;
        let sender: Option<String> = r.try_get(10)?;
        let streaming = in_recovery
            && wr.as_deref() == Some("streaming")
            && upstream.is_some_and(|u| sender.as_deref() == Some(u.host.as_str()));
        let mut position = if in_recovery { receive.unwrap_or(0).max(replay.unwrap_or(0)) } else { flush.unwrap_or(0) };
        let mut timeline = timeline.and_then(|t| u32::try_from(t).ok()).unwrap_or(1);
        if in_recovery && !streaming {
            // Not streaming from the upstream: the timeline above may be the last
            // restartpoint's (older than the one replayed) or the walreceiver's mid-switch
            // (not matching the position). Ask the server for the exact pair.
            match self.identify_system().await {
                Ok((tl, pos)) => (timeline, position) = (tl, pos.max(position)),
                Err(e) => tracing::debug!(error = format!("{e:#}"), "IDENTIFY_SYSTEM"),
            }
        }
        Ok((
            RunningPg {
                // The system identifier is an unsigned 64-bit value shown as bigint.
                sysid: sysid as u64,
                primary: !in_recovery,
                timeline,
                wal_position: position,
                upstream: if in_recovery { upstream.map(|u| u.member.clone()) } else { None },
                streaming,
                rewindable,
            },
            Extra {
                server_version: u32::try_from(version).unwrap_or(0),
                postmaster_start_time: start,
                receive_lsn: receive,
                replay_lsn: replay,
                streaming: wr.as_deref() == Some("streaming"),
            },
        ))
    }

    /// `IDENTIFY_SYSTEM` over a replication connection: on a standby it answers the timeline
    /// being replayed and the WAL position on it (received or replayed, whichever is further).
    /// tokio-postgres cannot open replication connections, so this runs `psql`; it is only
    /// needed while no walreceiver streams.
    async fn identify_system(&self) -> anyhow::Result<(u32, u64)> {
        let conninfo = format!(
            "host={} port={} user={} dbname=postgres replication=true connect_timeout=3",
            text::conninfo_quote(&self.cfg.socket_dir.display().to_string()),
            self.cfg.port,
            text::conninfo_quote(&self.cfg.superuser.username)
        );
        let mut c = self.cmd("psql");
        c.args(["-XAt", "-c", "IDENTIFY_SYSTEM", &conninfo]);
        if let Some(p) = &self.cfg.superuser.password {
            c.env("PGPASSWORD", p);
        }
        let out = self.run("psql IDENTIFY_SYSTEM", c, Duration::from_secs(5)).await?;
        let mut f = out.trim().split('|');
        let _sysid = f.next();
        let tl = f.next().and_then(|t| t.parse().ok()).context("IDENTIFY_SYSTEM: no timeline")?;
        let pos = f.next().and_then(text::parse_lsn).context("IDENTIFY_SYSTEM: no position")?;
        Ok((tl, pos))
    }

    /// What the core sees of local PostgreSQL now. `upstream` is who we last pointed it at.
    pub async fn observe(&mut self, upstream: Option<&Upstream>) -> (PgView, Option<Extra>) {
        if !self.has_data() {
            return (PgView::NoData, None);
        }
        if postmaster_pid(&self.cfg.data_dir).is_some() {
            return match self.running(upstream).await {
                Ok((r, extra)) => {
                    // A server found running (the agent restarted): callbacks are told its role.
                    if self.cb.role == callbacks::Role::Uninitialized {
                        self.cb.role = if r.primary { callbacks::Role::Primary } else { callbacks::Role::Replica };
                    }
                    (PgView::Running(r), Some(extra))
                }
                Err(e) => {
                    tracing::debug!(error = %format!("{e:#}"), "postmaster runs but does not answer yet");
                    let sysid = self.controldata().await.ok().map(|c| c.sysid);
                    (PgView::Starting { sysid, standby: is_standby_dir(&self.cfg.data_dir) }, None)
                }
            };
        }
        self.client = None;
        match self.controldata().await {
            Ok(c) => (PgView::Stopped(c), None),
            Err(e) => (PgView::Unusable { why: format!("{e:#}") }, None),
        }
    }

    // ---- configuration files ----

    /// The cluster's `postgresql.pg_hba`, `pg_ident` and `use_slots` as last read.
    pub fn set_cluster(&mut self, c: &crate::core::DynConfig) {
        self.cluster_hba.clone_from(&c.pg_hba);
        self.cluster_ident.clone_from(&c.pg_ident);
        self.use_slots = c.use_slots;
    }

    /// The `pg_hba.conf` lines in force: the local file's, else the cluster's, else the default.
    fn hba_lines(&self) -> &[String] {
        text::hba_in_force(&self.cfg.pg_hba, self.cfg.pg_hba_local, self.cluster_hba.as_deref())
    }

    /// Writes `postgresql.conf` (keeping the original as `postgresql.base.conf`), `pg_hba.conf`,
    /// and `standby.signal` for a replica. Returns whether `postgresql.conf` or `pg_hba.conf`
    /// changed (either needs a reload).
    pub fn write_config(
        &self,
        cluster_parameters: &[(String, String)],
        replica: bool,
        upstream: Option<&Upstream>,
        wal_log_hints: bool,
    ) -> anyhow::Result<bool> {
        let d = &self.cfg.data_dir;
        let conf = d.join("postgresql.conf");
        let base = d.join("postgresql.base.conf");
        if !base.exists() {
            // First time: the server's own postgresql.conf (from initdb or the leader's backup)
            // becomes the base file that ours includes.
            let current = std::fs::read_to_string(&conf).unwrap_or_default();
            if conf.exists() && !current.starts_with("# Written by ha-agent") {
                std::fs::rename(&conf, &base).context("keep postgresql.conf as postgresql.base.conf")?;
            } else {
                self.write_file(&base, "# Settings of this server that ha-agent does not manage.\n")?;
            }
        }
        let socket_dir = self.cfg.socket_dir.display().to_string();
        let text = text::render_postgresql_conf(&ConfInput {
            listen_addresses: &self.cfg.listen_addresses,
            port: self.cfg.port,
            socket_dir: &socket_dir,
            cluster_parameters,
            local_parameters: &self.cfg.parameters,
            wal_log_hints,
            upstream,
            replication_user: &self.cfg.replication.username,
            replication_password: self.cfg.replication.password.as_deref(),
            application_name: &self.name,
            use_slots: self.use_slots,
        });
        let mut changed = std::fs::read_to_string(&conf).ok().as_deref() != Some(text.as_str());
        if changed {
            self.write_file(&conf, &text)?;
        }
        let hba = text::render_pg_hba(self.hba_lines());
        if std::fs::read_to_string(d.join("pg_hba.conf")).ok().as_deref() != Some(hba.as_str()) {
            self.write_file(&d.join("pg_hba.conf"), &hba)?;
            changed = true;
        }
        // pg_ident.conf only when the member's file or the cluster's key sets it (Patroni
        // leaves the file alone otherwise).
        if let Some(lines) = self.cfg.pg_ident.as_ref().or(self.cluster_ident.as_ref()) {
            let ident = text::render_pg_ident(lines);
            if std::fs::read_to_string(d.join("pg_ident.conf")).ok().as_deref() != Some(ident.as_str()) {
                self.write_file(&d.join("pg_ident.conf"), &ident)?;
                changed = true;
            }
        }
        let signal = d.join("standby.signal");
        if replica && !signal.exists() {
            self.write_file(&signal, "")?;
        } else if !replica && signal.exists() {
            std::fs::remove_file(&signal).context("remove standby.signal")?;
        }
        Ok(changed)
    }

    /// The member the current `postgresql.conf` points at (after an agent restart).
    pub fn configured_upstream(&self) -> Option<String> {
        text::upstream_marker(&std::fs::read_to_string(self.cfg.data_dir.join("postgresql.conf")).ok()?)
    }

    /// `SELECT pg_reload_conf()`, then the names of settings that need a restart.
    pub async fn reload(&mut self) -> anyhow::Result<Vec<String>> {
        self.execute("SELECT pg_reload_conf()").await?;
        self.call_nowait(callbacks::Action::OnReload);
        // The reload is asynchronous: give the postmaster a moment before asking.
        tokio::time::sleep(Duration::from_millis(100)).await;
        self.pending_restart().await
    }

    pub async fn pending_restart(&mut self) -> anyhow::Result<Vec<String>> {
        let rows = self.query("SELECT name FROM pg_settings WHERE pending_restart ORDER BY name").await?;
        rows.iter().map(|r| r.try_get::<_, String>(0).map_err(Into::into)).collect()
    }

    // ---- processes ----

    fn leftovers(&self) -> Vec<i32> {
        leftover_pids(&self.cfg.data_dir)
    }

    /// Waits for the leftovers of a dead postmaster to exit, and kills them after 5 s.
    async fn reap_leftovers(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        // A killed postmaster whose parent (an agent killed with it) is gone is reaped by
        // init; until then PostgreSQL would refuse to start on its lock file.
        while postmaster_proc(&self.cfg.data_dir).is_some_and(|(_, zombie)| zombie)
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        loop {
            let left = self.leftovers();
            if left.is_empty() {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(pids = ?left, "killing processes a dead postmaster left behind");
                for p in left {
                    let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts the postmaster (config already written) and waits until it answers SQL, it
    /// exits, or `start_timeout` passes. A standby counts as started once it is up and
    /// replaying, even before it is consistent: reaching consistency may need WAL from a
    /// leader that first has to see this member's key (its replication slot).
    pub async fn start(&mut self) -> anyhow::Result<()> {
        if postmaster_pid(&self.cfg.data_dir).is_some() {
            return Ok(());
        }
        self.reap_leftovers().await;
        std::fs::create_dir_all(&self.cfg.socket_dir).context("create socket directory")?;
        self.give(&self.cfg.socket_dir)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.cfg.log_file)
            .with_context(|| format!("open {}", self.cfg.log_file.display()))?;
        self.give(&self.cfg.log_file)?;
        let mut c = self.cmd("postgres");
        c.arg("-D").arg(&self.cfg.data_dir);
        c.stdout(log.try_clone()?).stderr(log).kill_on_drop(false).process_group(0);
        let mut child = c.spawn().context("spawn postgres")?;
        let pid = child.id().unwrap_or(0);
        let (died_tx, mut died_rx) = tokio::sync::oneshot::channel();
        let exits = self.exits.clone();
        tokio::spawn(async move {
            let status = child.wait().await;
            let line = match status {
                Ok(s) => format!("postmaster {pid} exited: {s}"),
                Err(e) => format!("postmaster {pid}: wait failed: {e}"),
            };
            let _ = died_tx.send(line.clone());
            let _ = exits.send(line);
        });
        let deadline = tokio::time::Instant::now() + self.cfg.start_timeout;
        loop {
            if let Ok(line) = died_rx.try_recv() {
                bail!("start PostgreSQL: {line} (see {})", self.cfg.log_file.display());
            }
            match self.query("SELECT 1").await {
                Ok(_) => break,
                Err(e) if replaying(&e) => break,
                Err(_) => {}
            }
            if tokio::time::Instant::now() >= deadline {
                let _ = self.stop_quietly(StopMode::Immediate).await;
                bail!("start PostgreSQL: not accepting connections after {:?}", self.cfg.start_timeout);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let now = match (is_standby_dir(&self.cfg.data_dir), self.cb.standby_leader) {
            (false, _) => callbacks::Role::Primary,
            (true, false) => callbacks::Role::Replica,
            (true, true) => callbacks::Role::StandbyLeader,
        };
        let action = callbacks::after_start(self.cb.called, self.cb.role, now, self.cb.pending.take());
        self.cb.role = now;
        self.call_nowait(action);
        Ok(())
    }

    /// Stops the postmaster and waits for it to be gone (escalating to immediate, then
    /// SIGKILL, when a mode takes too long), then for every process still working in the data
    /// directory: a backend of a postmaster that had to be killed still serves its session, so
    /// the server counts as stopped only once none is left (they are killed after a second).
    /// A fast stop waits 30 s for the shutdown checkpoint, within systemd's stop timeout.
    ///
    /// `before_stop` runs first and `on_stop` after, when a server was running; a primary
    /// stopped here counts as demoted for the callbacks.
    pub async fn stop(&mut self, mode: StopMode) -> anyhow::Result<()> {
        let ran = self.stop_with_script(mode).await?;
        if ran {
            self.call_nowait(callbacks::Action::OnStop);
            if self.cb.role == callbacks::Role::Primary {
                self.cb.role = callbacks::Role::Demoted;
            }
        }
        Ok(())
    }

    /// The stop of a restart: `before_stop` runs, and the start that follows calls
    /// `on_restart` instead of `on_stop` and `on_start`.
    pub async fn stop_for_restart(&mut self, mode: StopMode) -> anyhow::Result<()> {
        self.cb.pending = Some(callbacks::Action::OnRestart);
        self.stop_with_script(mode).await.map(drop)
    }

    /// `before_stop` (when a server runs), then the stop; whether a server was running.
    async fn stop_with_script(&mut self, mode: StopMode) -> anyhow::Result<bool> {
        if postmaster_pid(&self.cfg.data_dir).is_none() {
            self.stop_quietly(mode).await?;
            return Ok(false);
        }
        let limit = match mode {
            StopMode::Fast => callbacks::BEFORE_STOP_LIMIT,
            StopMode::Immediate => callbacks::BEFORE_IMMEDIATE_STOP_LIMIT,
        };
        self.before_stop(limit).await;
        self.stop_quietly(mode).await?;
        Ok(true)
    }

    /// The stop itself, without scripts or callbacks.
    async fn stop_quietly(&mut self, mode: StopMode) -> anyhow::Result<()> {
        self.client = None;
        if let Some(pid) = postmaster_pid(&self.cfg.data_dir) {
            self.stop_postmaster(pid, mode).await?;
        }
        self.kill_leftovers(Duration::from_secs(1)).await
    }

    async fn stop_postmaster(&self, pid: i32, mode: StopMode) -> anyhow::Result<()> {
        let plan: &[(Signal, u64)] = match mode {
            StopMode::Fast => &[(Signal::SIGINT, 30_000), (Signal::SIGQUIT, 5_000), (Signal::SIGKILL, 5_000)],
            // A healthy postmaster is gone within milliseconds of SIGQUIT; one that is not
            // (stopped, hung) does not get better by waiting.
            StopMode::Immediate => &[(Signal::SIGQUIT, 1_000), (Signal::SIGKILL, 5_000)],
        };
        for &(sig, wait_ms) in plan {
            if kill(Pid::from_raw(pid), sig).is_err() {
                return Ok(());
            }
            let deadline = tokio::time::Instant::now() + Duration::from_millis(wait_ms);
            while tokio::time::Instant::now() < deadline {
                if postmaster_pid(&self.cfg.data_dir) != Some(pid) {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tracing::warn!(pid, signal = %sig, "postmaster did not stop in time; escalating");
        }
        bail!("stop PostgreSQL: postmaster {pid} survived SIGKILL")
    }

    /// Waits up to `grace` for processes left in the data directory, then kills them.
    async fn kill_leftovers(&self, grace: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            let left = self.leftovers();
            if left.is_empty() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(pids = ?left, "killing processes a stopped postmaster left behind");
                for p in &left {
                    let _ = kill(Pid::from_raw(*p), Signal::SIGKILL);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                let still = self.leftovers();
                if still.is_empty() {
                    return Ok(());
                }
                bail!("stop PostgreSQL: processes {still:?} survived SIGKILL");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Promotes a running standby and waits for it to accept writes, then checkpoints so that
    /// pg_rewind on others sees the new timeline in our pg_control.
    /// Promotes and returns once the server accepts writes (within 60 s). `pg_promote(true)`
    /// checks only every 100 ms; the signal is sent without waiting and recovery's end is
    /// checked every 10 ms, because proxies see the new primary only after this returns.
    pub async fn promote(&mut self) -> anyhow::Result<()> {
        let rows = self.query("SELECT pg_promote(false)").await?;
        let sent: bool = rows.first().context("pg_promote returned nothing")?.try_get(0)?;
        if !sent {
            bail!("pg_promote: the promote signal could not be sent");
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let rows = self.query("SELECT pg_is_in_recovery()").await?;
            let in_recovery: bool = rows.first().context("pg_is_in_recovery returned nothing")?.try_get(0)?;
            if !in_recovery {
                self.cb.role = callbacks::Role::Primary;
                self.call_nowait(callbacks::Action::OnRoleChange);
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("pg_promote: not promoted within 60s");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn checkpoint(&mut self) -> anyhow::Result<()> {
        self.execute("CHECKPOINT").await
    }

    /// The content of `pg_wal/<timeline>.history` of the running server.
    pub async fn timeline_history(&mut self, timeline: u32) -> anyhow::Result<String> {
        let sql = format!("SELECT pg_read_file('pg_wal/{timeline:08X}.history')");
        let rows = self.query(&sql).await?;
        Ok(rows.first().context("no history row")?.try_get(0)?)
    }

    /// Runs initdb into an empty data directory.
    pub async fn initdb(&self, options: &[String]) -> anyhow::Result<()> {
        self.prepare_empty_data_dir()?;
        let mut c = self.cmd("initdb");
        c.arg("-D").arg(&self.cfg.data_dir).arg("-U").arg(&self.cfg.superuser.username);
        for o in options {
            c.arg(format!("--{o}"));
        }
        let pwfile = match &self.cfg.superuser.password {
            Some(p) => {
                let path = self.cfg.data_dir.with_extension("pwfile");
                self.write_file(&path, &format!("{p}\n"))?;
                c.arg(format!("--pwfile={}", path.display()));
                Some(path)
            }
            None => None,
        };
        let r = self.run("initdb", c, Duration::from_secs(300)).await;
        if let Some(p) = pwfile {
            let _ = std::fs::remove_file(p);
        }
        r.map(drop).map_err(Into::into)
    }

    /// After bootstrap: the replication role.
    pub async fn create_replication_user(&mut self) -> anyhow::Result<()> {
        let u = &self.cfg.replication;
        if u.username == self.cfg.superuser.username {
            return Ok(());
        }
        let ident = format!("\"{}\"", u.username.replace('"', "\"\""));
        let pw = u.password.as_ref().map_or(String::new(), |p| format!(" PASSWORD '{}'", p.replace('\'', "''")));
        let exists =
            self.query(&format!("SELECT 1 FROM pg_roles WHERE rolname = '{}'", u.username.replace('\'', "''"))).await?;
        let verb = if exists.is_empty() { "CREATE" } else { "ALTER" };
        self.execute(&format!("{verb} ROLE {ident} WITH REPLICATION LOGIN{pw}")).await
    }

    /// A new replica: pg_basebackup from `host:port` into an empty data directory.
    pub async fn basebackup(&self, host: &str, port: u16) -> anyhow::Result<()> {
        self.prepare_empty_data_dir()?;
        let u = &self.cfg.replication;
        let conninfo = format!(
            "host={} port={port} user={} application_name={} connect_timeout=5",
            text::conninfo_quote(host),
            text::conninfo_quote(&u.username),
            text::conninfo_quote(&self.name)
        );
        let mut c = self.cmd("pg_basebackup");
        c.arg("-D").arg(&self.cfg.data_dir).args(["-X", "stream", "-c", "fast", "--no-password", "-d", &conninfo]);
        if let Some(p) = &u.password {
            c.env("PGPASSWORD", p);
        }
        let r = self.run("pg_basebackup", c, Duration::from_secs(3600)).await;
        if r.is_err() {
            let _ = self.remove_data();
        }
        r.map(drop).map_err(Into::into)
    }

    /// A new replica by a configured command, called as Patroni calls one:
    /// `argv... --scope=S --datadir=D --role=replica --connstring=C [--key=value...]`, as the
    /// PostgreSQL user. A failed attempt leaves no data behind (unless `keep_data`).
    pub async fn replica_by_command(
        &self,
        method: &crate::config::ReplicaMethod,
        scope: &str,
        upstream: Option<(&str, u16)>,
    ) -> anyhow::Result<()> {
        let crate::config::ReplicaMethod::Command { name, argv, params, no_params, keep_data } = method else {
            bail!("not a command method");
        };
        if !keep_data {
            self.prepare_empty_data_dir()?;
        }
        let mut c = self.command(&argv[0]);
        c.args(&argv[1..]);
        if !no_params {
            let u = &self.cfg.replication;
            let conn = match upstream {
                Some((host, port)) => format!(
                    "host={} port={port} user={} dbname=postgres",
                    text::conninfo_quote(host),
                    text::conninfo_quote(&u.username)
                ),
                None => String::new(),
            };
            c.arg(format!("--scope={scope}"))
                .arg(format!("--datadir={}", self.cfg.data_dir.display()))
                .arg("--role=replica")
                .arg(format!("--connstring={conn}"));
            for (k, v) in params {
                c.arg(format!("--{k}={v}"));
            }
        }
        let r = self.run(&format!("create_replica_methods {name}"), c, Duration::from_secs(3600)).await;
        if r.is_err() && !keep_data {
            let _ = self.remove_data();
        }
        r.map(drop).map_err(Into::into)
    }

    /// A new cluster by a configured bootstrap command, called as Patroni calls one:
    /// `argv... --scope=S --datadir=D` (unless `no_params`), as the PostgreSQL user. Then,
    /// unless `keep_existing_recovery_conf`, the signal files the command left are removed;
    /// with `recovery_conf`, `recovery.signal` is written (the settings go into
    /// `postgresql.conf` with the rest). A failed attempt leaves no data behind.
    pub async fn bootstrap_by_command(
        &self,
        method: &crate::config::BootstrapMethod,
        scope: &str,
    ) -> anyhow::Result<()> {
        let crate::config::BootstrapMethod::Command {
            name,
            argv,
            no_params,
            keep_existing_recovery_conf,
            recovery_conf,
        } = method
        else {
            bail!("not a command method");
        };
        self.prepare_empty_data_dir()?;
        let mut c = self.command(&argv[0]);
        c.args(&argv[1..]);
        if !no_params {
            c.arg(format!("--scope={scope}")).arg(format!("--datadir={}", self.cfg.data_dir.display()));
        }
        let r = async {
            self.run(&format!("bootstrap.method {name}"), c, Duration::from_secs(3600)).await?;
            let d = &self.cfg.data_dir;
            anyhow::ensure!(d.join("PG_VERSION").exists(), "the command left no cluster in {}", d.display());
            if !keep_existing_recovery_conf {
                for f in ["recovery.signal", "standby.signal"] {
                    if d.join(f).exists() {
                        std::fs::remove_file(d.join(f)).with_context(|| format!("remove {f}"))?;
                    }
                }
            }
            if !recovery_conf.is_empty() {
                self.write_file(&d.join("recovery.signal"), "")?;
            }
            Ok(())
        }
        .await;
        if r.is_err() {
            let _ = self.remove_data();
        }
        r
    }

    /// Waits until the server has left recovery (a bootstrap's point-in-time recovery that
    /// ends with `recovery_target_action = promote`), it exits, or `limit` passes.
    pub async fn wait_recovery_end(&mut self, limit: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut logged = tokio::time::Instant::now();
        loop {
            if postmaster_pid(&self.cfg.data_dir).is_none() {
                bail!(
                    "PostgreSQL stopped during recovery (see {}): a recovery target not reached ends it",
                    self.cfg.log_file.display()
                );
            }
            if let Ok(rows) = self.query("SELECT pg_is_in_recovery()").await
                && rows.first().and_then(|r| r.try_get::<_, bool>(0).ok()) == Some(false)
            {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("still in recovery after {limit:?}");
            }
            if logged.elapsed() > Duration::from_secs(10) {
                tracing::info!("waiting for the bootstrap's recovery to reach its target and promote");
                logged = tokio::time::Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Whether `host:port` accepts a connection as the superuser (within 2 s).
    /// A connection to another member's PostgreSQL as the superuser.
    fn remote(&self, host: &str, port: u16, connect_timeout: Duration) -> tokio_postgres::Config {
        let su = &self.cfg.superuser;
        let mut c = tokio_postgres::Config::new();
        c.host(host).port(port).user(&su.username).dbname("postgres").connect_timeout(connect_timeout);
        if let Some(p) = &su.password {
            c.password(p);
        }
        c
    }

    async fn reachable(&self, host: &str, port: u16) -> bool {
        let c = self.remote(host, port, Duration::from_secs(2));
        matches!(tokio::time::timeout(Duration::from_secs(3), c.connect(NoTls)).await, Ok(Ok(_)))
    }

    /// pg_rewind from the leader; the server must be stopped cleanly first. A failure whose
    /// source cannot be reached afterwards is [`PgErrorKind::SourceUnreachable`] (the source
    /// was fenced or restarted under it), which does not count against the rewind.
    pub async fn rewind(&self, host: &str, port: u16) -> Result<(), PgError> {
        match self.rewind_once(host, port).await {
            Err(e) if e.kind == PgErrorKind::Failed && !self.reachable(host, port).await => {
                Err(PgError::new(PgErrorKind::SourceUnreachable, e.message))
            }
            r => r,
        }
    }

    /// Whether the leader at `host:port` can be a pg_rewind source: a primary (not in
    /// recovery) whose last checkpoint is on the timeline it writes. pg_rewind reads the
    /// source's timeline from its control file; right after a promotion that still names the
    /// old timeline, pg_rewind then finds both servers "on the same timeline", reports "no
    /// rewind required" and leaves a diverged server that can never follow (Patroni waits for
    /// its leader's `checkpoint_after_promote` for the same reason). `Err` when it cannot be
    /// asked.
    pub async fn rewind_source_ready(&self, host: &str, port: u16) -> anyhow::Result<bool> {
        let c = self.remote(host, port, Duration::from_secs(5));
        let work = async {
            let (client, conn) = c.connect(NoTls).await.context("connect to the leader")?;
            let task = tokio::spawn(conn);
            let r = client
                .query_one(
                    "SELECT pg_is_in_recovery(), (SELECT timeline_id FROM pg_control_checkpoint()), \
                     CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_walfile_name(pg_current_wal_lsn()) END",
                    &[],
                )
                .await
                .context("read the leader's recovery state and checkpoint timeline");
            drop(client);
            task.abort();
            let row = r?;
            let in_recovery: bool = row.get(0);
            let checkpoint_tli: i32 = row.get(1);
            let walfile: Option<String> = row.get(2);
            let current = walfile.as_deref().and_then(|f| f.get(..8)).and_then(|t| u32::from_str_radix(t, 16).ok());
            anyhow::Ok(!in_recovery && current.is_some_and(|t| i64::from(t) == i64::from(checkpoint_tli)))
        };
        tokio::time::timeout(Duration::from_secs(10), work).await.context("timed out")?
    }

    /// Makes the leader at `host:port` write one WAL record (a transaction with an id, which
    /// any user may run), committed locally only (it must not wait for a synchronous standby).
    ///
    /// pg_rewind sets the rewound server's minimum recovery point to the source's insert
    /// position. When the source's last record was a WAL switch (`archive_timeout` on an idle
    /// primary), that position lies past the next segment's page header, beyond any record:
    /// the replica streams but never reaches a consistent state until the primary writes
    /// again, and an idle primary may not for hours.
    pub async fn nudge_wal(&self, host: &str, port: u16) -> anyhow::Result<()> {
        let c = self.remote(host, port, Duration::from_secs(5));
        let work = async {
            let (client, conn) = c.connect(NoTls).await.context("connect to the leader")?;
            let task = tokio::spawn(conn);
            let r = client.batch_execute(WAL_RECORD).await.context("write a WAL record on the leader");
            drop(client);
            task.abort();
            r
        };
        tokio::time::timeout(Duration::from_secs(10), work).await.context("timed out")?
    }

    async fn rewind_once(&self, host: &str, port: u16) -> Result<(), PgError> {
        let su = &self.cfg.superuser;
        let conninfo = format!(
            "host={} port={port} user={} dbname=postgres connect_timeout=5",
            text::conninfo_quote(host),
            text::conninfo_quote(&su.username)
        );
        let mut c = self.cmd("pg_rewind");
        c.arg("--target-pgdata").arg(&self.cfg.data_dir).arg(format!("--source-server={conninfo}"));
        if let Some(p) = &su.password {
            c.env("PGPASSWORD", p);
        }
        self.run("pg_rewind", c, Duration::from_secs(3600)).await.map(drop)
    }

    /// Crash recovery in single-user mode, which leaves a cleanly shut down cluster (pg_rewind
    /// refuses to work on one that crashed).
    pub async fn crash_recovery(&self) -> anyhow::Result<()> {
        let mut c = self.cmd("postgres");
        c.arg("--single").arg("-D").arg(&self.cfg.data_dir).args(["-c", "archive_mode=off", "postgres"]);
        self.run("single-user crash recovery", c, Duration::from_secs(3600)).await.map(drop).map_err(Into::into)
    }

    /// Removes the data directory (reinit, failed bootstrap or clone).
    pub fn remove_data(&self) -> anyhow::Result<()> {
        let d = &self.cfg.data_dir;
        if postmaster_pid(d).is_some() {
            bail!("remove data directory: PostgreSQL still runs in {}", d.display());
        }
        match std::fs::remove_dir_all(d) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("remove {}", d.display())),
        }
    }

    fn prepare_empty_data_dir(&self) -> anyhow::Result<()> {
        let d: PathBuf = self.cfg.data_dir.clone();
        if d.exists() && std::fs::read_dir(&d)?.next().is_some() {
            bail!("data directory {} is not empty", d.display());
        }
        if let Some(parent) = d.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("create {}", parent.display()))?;
        }
        std::fs::create_dir_all(&d).with_context(|| format!("create {}", d.display()))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700))?;
        self.give(&d)
    }

    // ---- replication slots (on the primary) ----

    /// The physical slots (on the primary or a replica), with their `restart_lsn`.
    pub async fn physical_slots(&mut self) -> anyhow::Result<Vec<crate::core::slots::Present>> {
        let rows = self
            .query(
                "SELECT slot_name::text, active, (restart_lsn - '0/0'::pg_lsn)::bigint \
                 FROM pg_replication_slots WHERE slot_type = 'physical'",
            )
            .await?;
        rows.iter()
            .map(|r| {
                let lsn: Option<i64> = r.try_get(2)?;
                Ok(crate::core::slots::Present {
                    name: r.try_get(0)?,
                    active: r.try_get(1)?,
                    restart_lsn: lsn.and_then(|l| u64::try_from(l).ok()),
                })
            })
            .collect()
    }

    /// Moves a physical slot forward to `lsn` (PostgreSQL stops it at what it has replayed).
    pub async fn advance_slot(&mut self, name: &str, lsn: u64) -> anyhow::Result<()> {
        let lsn = text::format_lsn(lsn);
        self.execute(&format!("SELECT pg_replication_slot_advance('{}', '{lsn}'::pg_lsn)", name.replace('\'', "''")))
            .await
    }

    pub async fn create_slot(&mut self, name: &str) -> anyhow::Result<()> {
        self.execute(&format!("SELECT pg_create_physical_replication_slot('{}', true)", name.replace('\'', "''"))).await
    }

    pub async fn drop_slot(&mut self, name: &str) -> anyhow::Result<()> {
        self.execute(&format!("SELECT pg_drop_replication_slot('{}')", name.replace('\'', "''"))).await
    }

    // ---- synchronous replication (on the primary) ----

    /// `pg_stat_replication`: who streams from us, whether PostgreSQL counts it synchronous,
    /// and how far it has flushed.
    pub async fn walsenders(&mut self) -> anyhow::Result<Vec<crate::core::sync::Walsender>> {
        let rows = self
            .query(
                "SELECT application_name::text, state::text, sync_state::text, \
                 (flush_lsn - '0/0'::pg_lsn)::bigint FROM pg_stat_replication WHERE flush_lsn IS NOT NULL",
            )
            .await?;
        rows.iter()
            .map(|r| {
                let state: Option<String> = r.try_get(1)?;
                let sync: Option<String> = r.try_get(2)?;
                let flush: i64 = r.try_get(3)?;
                Ok(crate::core::sync::Walsender {
                    name: r.try_get::<_, Option<String>>(0)?.unwrap_or_default(),
                    streaming: state.as_deref() == Some("streaming"),
                    sync_state: crate::core::sync::WalSync::parse(sync.as_deref().unwrap_or("")),
                    flush: u64::try_from(flush).unwrap_or(0),
                })
            })
            .collect()
    }

    /// `synchronous_standby_names` in force.
    pub async fn synchronous_standby_names(&mut self) -> anyhow::Result<crate::core::sync::Ssn> {
        let rows = self.query("SELECT current_setting('synchronous_standby_names')").await?;
        let text: String = rows.first().context("no row")?.try_get(0)?;
        Ok(crate::core::sync::Ssn::parse(&text))
    }

    /// The primary's WAL flush position now.
    pub async fn flush_lsn(&mut self) -> anyhow::Result<u64> {
        let rows = self.query("SELECT (pg_current_wal_flush_lsn() - '0/0'::pg_lsn)::bigint").await?;
        let v: i64 = rows.first().context("no row")?.try_get(0)?;
        Ok(u64::try_from(v).unwrap_or(0))
    }

    /// One WAL record (a transaction id), committed without waiting for standbys: moves the
    /// flush position past the mark a newly named synchronous standby must reach.
    pub async fn write_wal_record(&mut self) -> anyhow::Result<()> {
        self.execute(WAL_RECORD).await
    }
}
