use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;
use tempfile::TempDir;

use crate::net::SUBNET_PREFIX;
use crate::{Host, Proc, sys, wait_ok};

/// Where PostgreSQL's binaries are: `OUTRIGGER_PG_BIN`, else the newest under
/// `/usr/lib/postgresql/*/bin`.
pub fn pg_bin_dir() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("OUTRIGGER_PG_BIN") {
        return Ok(PathBuf::from(p));
    }
    let mut versions: Vec<u32> =
        std::fs::read_dir("/usr/lib/postgresql")?.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect();
    versions.sort_unstable();
    let v = versions.last().ok_or_else(|| anyhow::anyhow!("no PostgreSQL under /usr/lib/postgresql"))?;
    Ok(PathBuf::from(format!("/usr/lib/postgresql/{v}/bin")))
}

#[derive(Debug, Clone)]
pub struct PgOptions {
    pub port: u16,
    /// Extra `-c name=value` settings.
    pub settings: Vec<(String, String)>,
}

impl Default for PgOptions {
    fn default() -> Self {
        Self { port: 5432, settings: Vec::new() }
    }
}

/// A real PostgreSQL server on a host, run as the `postgres` user. Data and socket live in a
/// temporary folder under /tmp (short socket paths); the server log goes to the test folder.
pub struct Postgres {
    name: String,
    ip: Ipv4Addr,
    opts: PgOptions,
    bin: PathBuf,
    tmp: TempDir,
    proc: Option<Proc>,
}

fn pg_cmd(bin: &Path, tool: &str) -> anyhow::Result<Command> {
    let (uid, gid) = sys::postgres_ids()?;
    let mut c = Command::new(bin.join(tool));
    c.uid(uid).gid(gid).env("HOME", "/tmp");
    Ok(c)
}

use std::os::unix::process::CommandExt;

impl Postgres {
    fn new(host: &Host, name: &str, opts: PgOptions) -> anyhow::Result<Self> {
        let tmp = tempfile::Builder::new().prefix("otk-pg").tempdir()?;
        sys::give_to_postgres(tmp.path())?;
        Ok(Self { name: name.to_owned(), ip: host.ip(), opts, bin: pg_bin_dir()?, tmp, proc: None })
    }

    /// initdb, open `pg_hba.conf` to the test subnet, start, wait until it answers.
    pub fn init_primary(host: &Host, name: &str, opts: PgOptions) -> anyhow::Result<Self> {
        let mut pg = Self::new(host, name, opts)?;
        let mut initdb = pg_cmd(&pg.bin, "initdb")?;
        initdb.arg("-D").arg(pg.data()).args([
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
        ]);
        crate::net::run(&mut initdb)?;
        let hba = format!("host all all {SUBNET_PREFIX}.0/24 trust\nhost replication all {SUBNET_PREFIX}.0/24 trust\n");
        let mut f = std::fs::OpenOptions::new().append(true).open(pg.data().join("pg_hba.conf"))?;
        std::io::Write::write_all(&mut f, hba.as_bytes())?;
        pg.start(host)?;
        Ok(pg)
    }

    /// A streaming replica of `primary`: pg_basebackup over the network from this host, then
    /// start with the standby signal that `-R` writes and a `primary_conninfo` of its own.
    ///
    /// The clone's connections turn `wal_sender_timeout` off: tests give the primary 2 s so
    /// that a cut-off replica is noticed quickly, and on a loaded machine that ended
    /// pg_basebackup's WAL stream mid-clone ("server closed the connection unexpectedly"),
    /// which replies only when asked. The replica's own `primary_conninfo` leaves the option
    /// out, so streaming afterwards runs under the primary's setting.
    pub fn replica_of(host: &Host, name: &str, primary: &Postgres, opts: PgOptions) -> anyhow::Result<Self> {
        let pg = Self::new(host, name, opts)?;
        let (ip, port) = (primary.ip.to_string(), primary.opts.port.to_string());
        let mut bb = pg_cmd(&pg.bin, "pg_basebackup")?;
        bb.args(["-h", &ip, "-p", &port, "-U", "postgres"])
            .arg("-D")
            .arg(pg.data())
            .args(["-R", "-X", "stream", "-c", "fast", "--no-sync"])
            .args(["-d", &format!("application_name={name} options='-c wal_sender_timeout=0'")]);
        host.run(bb)?;
        // A later line wins over the one `-R` wrote.
        let conninfo = format!("\nprimary_conninfo = 'host={ip} port={port} user=postgres application_name={name}'\n");
        let mut f = std::fs::OpenOptions::new().append(true).open(pg.data().join("postgresql.auto.conf"))?;
        std::io::Write::write_all(&mut f, conninfo.as_bytes())?;
        let mut pg = pg;
        pg.start(host)?;
        Ok(pg)
    }

    /// A server on a data directory that `fill` writes (a restore from a backup, run as the
    /// `postgres` user into the empty folder it is given), then started.
    pub fn restored(
        host: &Host,
        name: &str,
        opts: PgOptions,
        fill: impl FnOnce(&Path) -> anyhow::Result<()>,
    ) -> anyhow::Result<Self> {
        let mut pg = Self::new(host, name, opts)?;
        fill(&pg.data())?;
        pg.start(host)?;
        Ok(pg)
    }

    /// The `-c` settings the next [`Postgres::start`] passes (change them while stopped).
    pub fn settings_mut(&mut self) -> &mut Vec<(String, String)> {
        &mut self.opts.settings
    }

    /// The `postgres` user's uid and gid, for commands a test runs as that user.
    pub fn os_user() -> anyhow::Result<(u32, u32)> {
        sys::postgres_ids()
    }

    /// Path of a PostgreSQL tool (`pgbench`, `pg_waldump`).
    pub fn tool(&self, name: &str) -> PathBuf {
        self.bin.join(name)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn data(&self) -> PathBuf {
        self.tmp.path().join("data")
    }

    pub fn socket_dir(&self) -> &Path {
        self.tmp.path()
    }

    pub fn port(&self) -> u16 {
        self.opts.port
    }

    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// Connection string over TCP, for clients inside the namespaces.
    pub fn conninfo(&self) -> String {
        format!("host={} port={} user=postgres dbname=postgres", self.ip, self.opts.port)
    }

    /// Connection string over the Unix socket: usable from the root namespace, no network.
    pub fn local_conninfo(&self) -> String {
        format!("host={} port={} user=postgres dbname=postgres", self.socket_dir().display(), self.opts.port)
    }

    pub fn proc(&self) -> Option<&Proc> {
        self.proc.as_ref()
    }

    pub fn proc_mut(&mut self) -> Option<&mut Proc> {
        self.proc.as_mut()
    }

    /// Starts the server (stopped or never started) and waits until it answers.
    pub fn start(&mut self, host: &Host) -> anyhow::Result<()> {
        let mut cmd = pg_cmd(&self.bin, "postgres")?;
        cmd.arg("-D")
            .arg(self.data())
            .args(["-p", &self.opts.port.to_string()])
            .arg("-k")
            .arg(self.socket_dir())
            .args(["-c", &format!("listen_addresses={}", self.ip)])
            .args(["-c", "fsync=off", "-c", "wal_level=replica", "-c", "max_wal_senders=10"])
            .args(["-c", "hot_standby=on", "-c", "wal_receiver_status_interval=1s"])
            .args(["-c", "wal_retrieve_retry_interval=500ms"]);
        for (k, v) in &self.opts.settings {
            cmd.args(["-c", &format!("{k}={v}")]);
        }
        // SIGINT is PostgreSQL's fast shutdown.
        self.proc = Some(host.spawn_with(&format!("pg-{}", self.name), &mut cmd, Signal::SIGINT)?);
        wait_ok(Duration::from_secs(30), &format!("PostgreSQL {} to accept connections", self.name), || {
            if let Some(p) = self.proc.as_mut()
                && let Some(status) = p.try_status()
            {
                anyhow::bail!("postgres exited ({status}); see {}", p.log_path().display());
            }
            self.sql("select 1").map(drop)
        })
    }

    /// Fast shutdown.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut p) = self.proc.take() {
            p.stop(Duration::from_secs(10))?;
        }
        Ok(())
    }

    /// Runs SQL through `psql` over the Unix socket (from the root namespace, no network) and
    /// returns the unaligned, tuples-only output.
    pub fn sql(&self, sql: &str) -> anyhow::Result<String> {
        let mut c = Command::new(self.bin.join("psql"));
        c.arg("-h")
            .arg(self.socket_dir())
            .args(["-p", &self.opts.port.to_string(), "-U", "postgres", "-d", "postgres"])
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .env("PGCONNECT_TIMEOUT", "2");
        Ok(crate::net::run(&mut c)?.trim().to_owned())
    }

    pub fn in_recovery(&self) -> anyhow::Result<bool> {
        Ok(self.sql("select pg_is_in_recovery()")? == "t")
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}
