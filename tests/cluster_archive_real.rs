//! Backups in the cluster (issue 13) with real etcd, PostgreSQL and SeaweedFS on 3 hosts
//! (`ha_agent_harness.rs`): every member archives with wal-shipper to one S3 server, and
//! ha-agent makes replicas from the archive with Patroni's `create_replica_methods`.

#[path = "ha_agent_harness.rs"]
mod harness;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use harness::{Cluster, Opts, PG_PORT};
use outrigger_testkit::s3::{ACCESS_KEY, S3Server, SECRET_KEY};
use outrigger_testkit::{Postgres, SUBNET_PREFIX, bin};

const UP: Duration = Duration::from_secs(90);

/// wal-shipper's config, shared by every member: the S3 server runs on host 1.
fn shipper_config(dir: &Path) -> PathBuf {
    let text = format!(
        "s3_prefix = \"s3://backups/cluster\"\naws_endpoint = \"http://{SUBNET_PREFIX}.1:8333\"\n\
         aws_s3_force_path_style = true\naws_region = \"us-east-1\"\naws_access_key_id = \"{ACCESS_KEY}\"\n\
         aws_secret_access_key = \"{SECRET_KEY}\"\nupload_concurrency = 2\ndownload_concurrency = 2\n"
    );
    let path = dir.join("wal-shipper.toml");
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    path
}

/// Every member archives with wal-shipper and replays from the archive; replicas are made
/// from the archive first, by pg_basebackup when there is no backup yet.
fn archiving_opts(shipper: &str, sync: bool) -> Opts {
    Opts {
        // Asynchronous unless asked: a primary alone (or with its replica away) takes writes.
        sync,
        agents: 0,
        postgresql: "create_replica_methods = [\"wal_shipper\", \"basebackup\"]\n".into(),
        extra: format!(
            "archive_mode = \"on\"\narchive_command = \"{shipper} wal-push %p\"\nlog_replication_commands = \"on\"\n\
             archive_timeout = \"5s\"\n\
             [postgresql.wal_shipper]\ncommand = \"{shipper} create-replica\"\nno_leader = 1\n\
             [postgresql.recovery_conf]\nrestore_command = \"{shipper} wal-fetch %f %p\"\n"
        ),
        ..Opts::default()
    }
}

/// How many base backups a member's PostgreSQL has served (its log, with
/// `log_replication_commands`).
fn base_backups_served(c: &Cluster, i: usize) -> usize {
    let log = std::fs::read_to_string(c.net.dir().log(&format!("pg-n{i}"))).unwrap_or_default();
    log.lines().filter(|l| l.contains("replication command: BASE_BACKUP")).count()
}

/// Runs wal-shipper on host `i` as the postgres user; returns (exit code, stderr).
fn shipper_on(c: &Cluster, i: usize, cfg: &Path, args: &[&str]) -> (i32, String) {
    let (code, _, err) = shipper_out(c, i, cfg, args);
    (code, err)
}

/// Runs wal-shipper on host `i` as the postgres user; returns (exit code, stdout, stderr).
fn shipper_out(c: &Cluster, i: usize, cfg: &Path, args: &[&str]) -> (i32, String, String) {
    let (uid, gid) = Postgres::os_user().unwrap();
    let out = c.net.dir().path().join(format!("shipper-n{i}-{}.out", args[0]));
    let err = c.net.dir().path().join(format!("shipper-n{i}-{}.err", args[0]));
    let mut cmd = Command::new(bin::daemon("wal-shipper"));
    cmd.arg("--config").arg(cfg).args(args).uid(uid).gid(gid).current_dir("/tmp");
    cmd.env("PGHOST", c.socket_dir(i)).env("PGPORT", PG_PORT.to_string()).env("PGUSER", "postgres");
    cmd.stdout(std::fs::File::create(&out).unwrap()).stderr(std::fs::File::create(&err).unwrap());
    let code = c.net.host(i).enter(move || cmd.status().map(|s| s.code().unwrap_or(-1))).unwrap().unwrap();
    (code, std::fs::read_to_string(&out).unwrap_or_default(), std::fs::read_to_string(&err).unwrap_or_default())
}

/// A cluster whose members archive to SeaweedFS on host 1, with only n1's agent started.
struct Rig {
    c: Cluster,
    cfg: PathBuf,
    _s3: S3Server,
    _cfg_dir: tempfile::TempDir,
}

fn rig(test: &str, sync: bool, dcs: &'static str) -> anyhow::Result<Rig> {
    rig_led_by(test, sync, dcs, 1)
}

/// [`rig`] with member `first`'s agent started (so it bootstraps and leads).
fn rig_led_by(test: &str, sync: bool, dcs: &'static str, first: usize) -> anyhow::Result<Rig> {
    let cfg_dir = tempfile::Builder::new().prefix("otk-walship-").tempdir_in("/tmp")?;
    std::fs::set_permissions(cfg_dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let cfg = shipper_config(cfg_dir.path());
    let shipper = format!("{} --config {}", bin::daemon("wal-shipper").display(), cfg.display());
    let mut c = Cluster::start(test, Opts { dcs, ..archiving_opts(&shipper, sync) })?;
    let s3 = S3Server::seaweedfs_shared(c.net.host(1), "backups")?;
    c.start_agent(first)?;
    Ok(Rig { c, cfg, _s3: s3, _cfg_dir: cfg_dir })
}

#[test]
fn a_new_replica_is_made_from_the_archive_not_from_the_primary_and_streams() -> anyhow::Result<()> {
    let Rig { mut c, cfg, _s3, _cfg_dir } = rig("cluster_replica_from_archive", false, "")?;
    let p = c.wait_primary(UP, &[])?;
    anyhow::ensure!(p == 1, "the only agent bootstraps");

    // No backup yet: wal_shipper fails, and the next method (pg_basebackup) makes n2.
    c.start_agent(2)?;
    c.wait_streaming(p, &[2], UP)?;
    anyhow::ensure!(base_backups_served(&c, p) == 1, "n2 came from pg_basebackup");

    c.sql(
        p,
        "create table t (id int primary key, v text); insert into t select g, 'before' from generate_series(1, 1000) g",
    )?;
    let (code, err) = shipper_on(&c, p, &cfg, &["backup-push", &c.data_dir(p).display().to_string()]);
    anyhow::ensure!(code == 0, "backup-push: {err}");
    c.sql(p, "insert into t select g, 'after' from generate_series(1001, 2000) g")?;

    // n3 is made from the archive: the latest backup plus WAL, then it streams.
    c.start_agent(3)?;
    c.wait_streaming(p, &[3], UP)?;
    outrigger_testkit::wait_ok(Duration::from_secs(30), "every row to reach n3", || {
        anyhow::ensure!(c.sql(3, "select count(*) from t")? == "2000");
        Ok(())
    })?;
    anyhow::ensure!(base_backups_served(&c, p) == 1, "the primary served no base backup to n3");
    let restore = c.sql(3, "show restore_command")?;
    anyhow::ensure!(restore.contains("wal-fetch %f %p"), "n3 replays from the archive: {restore:?}");
    let slots = c.sql(p, "select count(*) from pg_replication_slots where active")?;
    anyhow::ensure!(slots == "2", "both replicas stream through their slots: {slots}");
    Ok(())
}

#[test]
fn a_replica_behind_the_primarys_recycled_wal_catches_up_from_the_archive_without_a_new_copy() -> anyhow::Result<()> {
    let Rig { mut c, cfg, _s3, _cfg_dir } =
        rig("cluster_replica_catches_up_from_archive", false, "member_slots_ttl = 0")?;
    let p = c.wait_primary(UP, &[])?;
    outrigger_testkit::wait_ok(Duration::from_secs(30), "the new primary to take writes", || {
        c.sql(
            p,
            "create table if not exists t (id int primary key, v text);
             insert into t select g, 'one' from generate_series(1, 1000) g on conflict do nothing",
        )
        .map(drop)
    })?;
    let (code, err) = shipper_on(&c, p, &cfg, &["backup-push", &c.data_dir(p).display().to_string()]);
    anyhow::ensure!(code == 0, "backup-push: {err}");
    c.start_agent(3)?;
    c.wait_streaming(p, &[3], UP)?;
    // A file of our own in n3's data directory: a new copy would not have it.
    let marker = c.data_dir(3).join("outrigger-test-marker");
    std::fs::write(&marker, b"n3")?;

    // n3 goes away; with `member_slots_ttl = 0` the leader drops its slot once its member
    // key is gone (Patroni's default keeps it 30 minutes), and the WAL n3 would need is
    // archived and recycled on the primary.
    c.kill_agent(3)?;
    c.kill_postgres(3);
    outrigger_testkit::wait_ok(Duration::from_secs(60), "the leader to drop n3's slot", || {
        anyhow::ensure!(c.sql(p, "select count(*) from pg_replication_slots where slot_name = 'n3'")? == "0");
        Ok(())
    })?;
    let needed = c.sql(p, "select pg_walfile_name(pg_current_wal_lsn())")?;
    outrigger_testkit::wait_ok(Duration::from_secs(120), "the primary to recycle the segment n3 needs", || {
        c.sql(p, "insert into t select g, 'two' from generate_series((select max(id) + 1 from t), (select max(id) + 20000 from t)) g")?;
        c.sql(p, "select pg_switch_wal()")?;
        c.sql(p, "checkpoint")?;
        anyhow::ensure!(!c.data_dir(p).join("pg_wal").join(&needed).exists(), "{needed} still in pg_wal");
        Ok(())
    })?;
    let rows = c.sql(p, "select count(*) from t")?;

    c.start_agent(3)?;
    c.wait_streaming(p, &[3], UP)?;
    outrigger_testkit::wait_ok(Duration::from_secs(60), "n3 to hold every row", || {
        anyhow::ensure!(c.sql(3, "select count(*) from t")? == rows);
        Ok(())
    })?;
    anyhow::ensure!(marker.exists(), "n3 kept its data directory: it was not copied again");
    anyhow::ensure!(base_backups_served(&c, p) == 0, "the primary served no base backup");
    let log = std::fs::read_to_string(c.net.dir().log("pg-n3")).unwrap_or_default();
    let restored = log.lines().filter(|l| l.contains("restored log file") && l.contains(&needed)).count();
    anyhow::ensure!(restored > 0, "n3 replayed {needed} from the archive");
    Ok(())
}

/// A new PostgreSQL on host `i` restored from backup `name` into archive recovery, with
/// `restore_command` from the archive and `settings` (a recovery target, say).
fn restore_from_archive(
    c: &Cluster,
    i: usize,
    cfg: &Path,
    label: &str,
    port: u16,
    name: &str,
    settings: Vec<(String, String)>,
) -> anyhow::Result<Postgres> {
    let shipper = format!("{} --config {}", bin::daemon("wal-shipper").display(), cfg.display());
    let mut all = vec![("restore_command".to_owned(), format!("{shipper} wal-fetch %f %p"))];
    all.extend(settings);
    let opts = outrigger_testkit::PgOptions { port, settings: all };
    Postgres::restored(c.net.host(i), label, opts, |data| {
        let (code, err) = shipper_on(c, i, cfg, &["backup-fetch", &data.display().to_string(), name]);
        anyhow::ensure!(code == 0, "backup-fetch: {err}");
        std::fs::write(data.join("recovery.signal"), b"")?;
        let (uid, gid) = Postgres::os_user()?;
        nix::unistd::chown(&data.join("recovery.signal"), Some(uid.into()), Some(gid.into()))?;
        Ok(())
    })
}

/// Once the writer got a write acknowledged by `new` after `since`, stops it and checks that
/// `new` holds every write it saw acknowledged (by `old` or `new`); returns the acknowledgements.
fn hand_over(
    c: &Cluster,
    writer: harness::Writer,
    since: std::time::Instant,
    old: usize,
    new: usize,
) -> anyhow::Result<Vec<harness::Ack>> {
    outrigger_testkit::wait_ok(Duration::from_secs(60), &format!("writes acknowledged by n{new}"), || {
        anyhow::ensure!(writer.first_ack_elsewhere(since, old).is_some());
        Ok(())
    })?;
    let acks = writer.stop();
    let missing = harness::lost(c, new, &acks)?;
    anyhow::ensure!(missing.is_empty(), "acknowledged writes missing on n{new}: {missing:?}");
    Ok(acks)
}

/// The faults the archive is checked through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// The primary's agent and PostgreSQL killed (SIGKILL).
    Crash,
    /// Every process on the primary's host stopped (SIGSTOP), then resumed.
    Frozen,
    /// The primary's host cut off from the network, then reconnected.
    CutOff,
}

/// A failover under acknowledged writes while every member archives (synchronous
/// replication), the old primary back, then a switchover. The archive has no gap on any
/// timeline; nothing the new timelines archived is changed once the old primary is back; a
/// point-in-time restore to the moment of the fault holds every write acknowledged before it.
fn archive_through_failover(test: &str, fault: Fault) -> anyhow::Result<()> {
    // The S3 server runs on host 1, so n2 leads: a fault on the primary's host leaves the
    // storage reachable.
    let Rig { mut c, cfg, _s3: s3, _cfg_dir } = rig_led_by(test, true, "", 2)?;
    let p = c.wait_primary(UP, &[])?;
    anyhow::ensure!(p == 2, "the only agent bootstraps");
    c.start_agent(1)?;
    c.start_agent(3)?;
    c.wait_streaming(p, &[1, 3], UP)?;
    c.sql(p, "create table acked (id bigint primary key)")?;
    let (code, err) = shipper_on(&c, p, &cfg, &["backup-push", &c.data_dir(p).display().to_string()]);
    anyhow::ensure!(code == 0, "backup-push: {err}");

    let writer = harness::Writer::start(c.sockets());
    outrigger_testkit::wait_ok(Duration::from_secs(30), "200 acknowledged writes", || {
        anyhow::ensure!(writer.acks().len() >= 200);
        Ok(())
    })?;
    let (at_fault, fault_wall) = (std::time::Instant::now(), chrono::Utc::now());
    match fault {
        Fault::Crash => {
            c.kill_agent(p)?;
            c.kill_postgres(p);
        }
        Fault::Frozen => c.net.host(p).freeze_all()?,
        Fault::CutOff => c.net.host(p).cut_off()?,
    }
    let q = c.wait_primary(Duration::from_secs(60), &[p])?;
    let acks = hand_over(&c, writer, at_fault, p, q)?;

    // What the new timeline archived while the old primary was away: none of it may change
    // once the old primary is back (its archiver may still hold segments of the old one).
    let wal_prefix = "cluster/wal_005/";
    let before = s3.list_objects(c.net.host(1), wal_prefix)?;
    anyhow::ensure!(
        before.keys().any(|k| k.contains(".history")),
        "the new timeline's history is archived: {before:?}"
    );
    match fault {
        Fault::Crash => c.start_agent(p)?,
        Fault::Frozen => c.net.host(p).thaw_all()?,
        Fault::CutOff => c.net.host(p).heal()?,
    }
    // Back as a replica of whoever leads once things settle (a woken etcd member may revoke
    // every lease and cause another election: see ha_agent_real).
    let lead = c.wait_primary(UP, &[])?;
    c.wait_streaming(
        lead,
        &[1, 2, 3].into_iter().filter(|i| *i != lead).collect::<Vec<_>>(),
        Duration::from_secs(120),
    )?;

    // Then a switchover to a replica, under writes again.
    let r = (1..=3).find(|i| *i != lead && *i != p).unwrap_or(p);
    let writer = harness::Writer::start(c.sockets());
    outrigger_testkit::wait_ok(Duration::from_secs(30), "writes on the primary", || {
        anyhow::ensure!(writer.acks().len() >= 50);
        Ok(())
    })?;
    let switch = std::time::Instant::now();
    c.etcd_put("failover", &format!("{{\"leader\":\"n{lead}\",\"member\":\"n{r}\"}}"))?;
    let r2 = c.wait_primary(Duration::from_secs(60), &[lead])?;
    anyhow::ensure!(r2 == r, "n{r2} took over, not the candidate n{r}");
    hand_over(&c, writer, switch, lead, r)?;

    // Everything reaches the archive; no segment is missing on any timeline.
    let tl = c.sql(r, "select substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)")?;
    anyhow::ensure!(tl.as_str() >= "00000003", "two promotions or more make timeline 3 or later, not {tl}");
    let last = c.sql(r, "select pg_walfile_name(pg_switch_wal())")?;
    outrigger_testkit::wait_ok(Duration::from_secs(60), "the new primary to archive its last segment", || {
        let done = c.sql(r, "select coalesce(last_archived_wal, '') from pg_stat_archiver")?;
        anyhow::ensure!(done.as_str() >= last.as_str(), "archived up to {done:?}, want {last}");
        Ok(())
    })?;
    let (code, out, err) = shipper_out(&c, r, &cfg, &["wal-verify", "integrity", "timeline", "--json"]);
    anyhow::ensure!(code == 0, "wal-verify: {err}\n{out}");
    let v: serde_json::Value = serde_json::from_str(&out)?;
    anyhow::ensure!(v["integrity"]["status"] == "OK", "no gap in the archive: {out}");
    let after = s3.list_objects(c.net.host(1), wal_prefix)?;
    let changed: Vec<&String> = before.iter().filter(|(k, v)| after.get(*k) != Some(v)).map(|(k, _)| k).collect();
    anyhow::ensure!(
        changed.is_empty(),
        "objects archived before the old primary came back were changed or removed: {changed:?}"
    );

    // A point-in-time restore to the moment of the fault holds every write acknowledged
    // before it, and none of the new primary's.
    let target = ("recovery_target_time".to_owned(), fault_wall.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string());
    let promote = ("recovery_target_action".to_owned(), "promote".to_owned());
    let restored = restore_from_archive(&c, q, &cfg, "pitr", 5499, "LATEST", vec![target, promote])?;
    outrigger_testkit::wait_ok(Duration::from_secs(90), "the restored server to reach its target", || {
        anyhow::ensure!(restored.sql("select pg_is_in_recovery()")? == "f");
        Ok(())
    })?;
    let have: std::collections::HashSet<i64> =
        restored.sql("select id from acked")?.lines().filter_map(|l| l.trim().parse().ok()).collect();
    let before: Vec<i64> =
        acks.iter().filter(|a| a.at < at_fault).map(|a| a.id).filter(|id| !have.contains(id)).collect();
    anyhow::ensure!(before.is_empty(), "writes acknowledged before the fault missing from the restore: {before:?}");
    let after: Vec<i64> = acks.iter().filter(|a| a.member == q).map(|a| a.id).filter(|id| have.contains(id)).collect();
    anyhow::ensure!(after.is_empty(), "the restore went past its target: {after:?}");
    Ok(())
}

#[test]
fn after_a_primary_crash_and_a_switchover_the_archive_has_no_gap_and_a_restore_to_just_before_the_crash_holds_every_acknowledged_write()
-> anyhow::Result<()> {
    archive_through_failover("cluster_archive_crash", Fault::Crash)
}

#[test]
fn after_the_primary_host_froze_and_a_switchover_the_archive_has_no_gap_nothing_archived_changes_and_the_restore_holds_every_acknowledged_write()
-> anyhow::Result<()> {
    archive_through_failover("cluster_archive_frozen", Fault::Frozen)
}

#[test]
fn after_the_primary_host_was_cut_off_and_a_switchover_the_archive_has_no_gap_nothing_archived_changes_and_the_restore_holds_every_acknowledged_write()
-> anyhow::Result<()> {
    archive_through_failover("cluster_archive_cut_off", Fault::CutOff)
}

/// wal-shipper's daemon config for member `i`: the shared storage settings, read at 10 MB/s
/// (so a backup of the test database lasts seconds), etcd, and `[cluster]` lines.
fn daemon_config(c: &Cluster, shared: &Path, i: usize, cluster: &str) -> PathBuf {
    let base = std::fs::read_to_string(shared).unwrap();
    let endpoints = c.etcd.endpoints().iter().map(|e| format!("\"{e}\"")).collect::<Vec<_>>().join(", ");
    let text = format!(
        "{base}disk_rate_limit = 10000000\n[log]\nlevel = \"info\"\n[etcd]\nendpoints = [{endpoints}]\n\
         [cluster]\nscope = \"{}\"\nname = \"n{i}\"\nlock_ttl = \"5s\"\nloop_wait = \"1s\"\nretry_after = \"3s\"\n{cluster}",
        harness::SCOPE
    );
    let path = shared.with_file_name(format!("wal-shipper-daemon-n{i}.toml"));
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    path
}

/// Starts `wal-shipper daemon` on host `i` as the postgres user.
fn start_daemon(c: &Cluster, i: usize, cfg: &Path) -> anyhow::Result<outrigger_testkit::Proc> {
    let (uid, gid) = Postgres::os_user()?;
    let mut cmd = Command::new(bin::daemon("wal-shipper"));
    cmd.arg("--config").arg(cfg).arg("daemon").arg(c.data_dir(i)).uid(uid).gid(gid).current_dir("/tmp");
    cmd.env("PGHOST", c.socket_dir(i)).env("PGPORT", PG_PORT.to_string()).env("PGUSER", "postgres");
    c.net.host(i).spawn(&format!("wal-shipper-n{i}"), cmd)
}

/// The backups `backup-list --json` shows, by name.
fn listed(c: &Cluster, i: usize, cfg: &Path) -> anyhow::Result<Vec<String>> {
    let (code, out, err) = shipper_out(c, i, cfg, &["backup-list", "--json"]);
    anyhow::ensure!(code == 0, "backup-list: {err}");
    let v: serde_json::Value = serde_json::from_str(&out)?;
    Ok(v.as_array().into_iter().flatten().filter_map(|b| b["backup_name"].as_str().map(str::to_owned)).collect())
}

fn last_backup(c: &Cluster) -> Option<serde_json::Value> {
    c.etcd_get("outrigger/backup/last").filter(|s| !s.is_empty()).and_then(|s| serde_json::from_str(&s).ok())
}

#[test]
fn two_members_due_at_once_take_one_backup_a_killed_taker_leaves_none_listed_and_retention_follows()
-> anyhow::Result<()> {
    let Rig { mut c, cfg, _s3, _cfg_dir } = rig("cluster_scheduled_backups", false, "")?;
    let p = c.wait_primary(UP, &[])?;
    c.start_agent(2)?;
    c.wait_streaming(p, &[2], UP)?;
    c.sql(p, "create table big as select g, repeat(md5(g::text), 4) v from generate_series(1, 300000) g")?;
    let r = if p == 1 { 2 } else { 1 };

    // The members disagree on who takes backups: the primary's config says the primary, the
    // replica's says a replica. Both are due at once (no backup yet); only the lock decides.
    let schedule = "full_backup = \"20s\"\nretain_full = 1\n";
    let cfg_p = daemon_config(&c, &cfg, p, &format!("backup_from = \"primary\"\n{schedule}"));
    let cfg_r = daemon_config(&c, &cfg, r, &format!("backup_from = \"replica\"\n{schedule}"));
    let mut daemons = [Some(start_daemon(&c, p, &cfg_p)?), Some(start_daemon(&c, r, &cfg_r)?)];
    let members = [p, r];

    // Kill the first taker as soon as it holds the lock: mid-backup, since reading the
    // database at 10 MB/s takes seconds.
    let holder = outrigger_testkit::wait_until(Duration::from_secs(60), "a member to take the backup lock", || {
        c.etcd_get("outrigger/backup/lock").filter(|s| !s.is_empty())
    })?;
    let holder: serde_json::Value = serde_json::from_str(&holder)?;
    let killed_name = holder["member"].as_str().unwrap_or_default().to_owned();
    let killed = members.iter().position(|m| harness::Cluster::name(*m) == killed_name).expect("a member holds it");
    daemons[killed].as_mut().expect("running").kill()?;
    anyhow::ensure!(last_backup(&c).is_none(), "the killed taker published nothing");
    let survivor = members[1 - killed];

    // The lock expires with the killed daemon's lease; the survivor takes the backup.
    let first =
        outrigger_testkit::wait_until(Duration::from_secs(90), "the survivor's backup to be published", || {
            last_backup(&c)
        })?;
    let first_name = first["last"]["name"].as_str().unwrap_or_default().to_owned();
    anyhow::ensure!(
        first["last"]["member"] == harness::Cluster::name(survivor).as_str(),
        "the survivor n{survivor} took it: {first}"
    );
    anyhow::ensure!(first["last"]["kind"] == "full" && first["last_full"]["name"] == first_name.as_str(), "{first}");
    let now_listed = listed(&c, p, &cfg)?;
    anyhow::ensure!(now_listed == [first_name.clone()], "exactly the survivor's backup is listed: {now_listed:?}");
    let taken: usize =
        daemons.iter().flatten().map(|d| d.log_text().matches("scheduled backup taken and published").count()).sum();
    anyhow::ensure!(taken == 1, "one scheduled backup was taken, not {taken}");

    // The backup restores (the killed attempt's parts, if it had the same name, are not in
    // it) and holds the table.
    let restored = restore_from_archive(&c, p, &cfg, "scheduled", 5498, &first_name, vec![])?;
    outrigger_testkit::wait_ok(Duration::from_secs(60), "the restored server to answer", || {
        anyhow::ensure!(restored.sql("select count(*) from big")? == "300000");
        Ok(())
    })?;
    drop(restored);

    // The killed daemon comes back. The next scheduled backup (20 s on) replaces the first:
    // retain_full = 1 deletes it. (A standby cannot start a new backup before the primary
    // checkpoints, so a replica taker fails and, after two failures, the leader takes it.)
    daemons[killed] = Some(start_daemon(&c, members[killed], if members[killed] == p { &cfg_p } else { &cfg_r })?);
    let second = outrigger_testkit::wait_until(Duration::from_secs(90), "a second scheduled backup", || {
        last_backup(&c).filter(|v| v["last"]["name"] != first_name.as_str())
    })?;
    let second_name = second["last"]["name"].as_str().unwrap_or_default().to_owned();
    outrigger_testkit::wait_ok(Duration::from_secs(60), "retention to delete the first backup", || {
        let l = listed(&c, p, &cfg)?;
        anyhow::ensure!(l == [second_name.clone()], "listed: {l:?}");
        Ok(())
    })?;
    let status = c.etcd_get(&format!("outrigger/wal-shipper/{}", harness::Cluster::name(p))).unwrap_or_default();
    let status: serde_json::Value = serde_json::from_str(&status)?;
    anyhow::ensure!(
        status["role"] == "primary" && status["last_archived_wal"].is_string(),
        "the primary's status: {status}"
    );
    Ok(())
}

#[test]
fn a_new_cluster_bootstrapped_from_the_archive_to_a_point_in_time_holds_exactly_that_state_under_its_own_scope()
-> anyhow::Result<()> {
    let Rig { c, cfg, _s3, _cfg_dir } = rig("cluster_bootstrap_pitr", false, "")?;
    let p = c.wait_primary(UP, &[])?;
    c.sql(p, "create table t (id int primary key)")?;
    let (code, err) = shipper_on(&c, p, &cfg, &["backup-push", &c.data_dir(p).display().to_string()]);
    anyhow::ensure!(code == 0, "backup-push: {err}");
    c.sql(p, "insert into t values (1)")?;
    let target = c.sql(p, "select to_char(now() at time zone 'utc', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'")?;
    c.sql(p, "select pg_sleep(0.2)")?;
    c.sql(p, "insert into t values (2)")?;
    archive_now(&c, p)?;
    let sysid = c.sql(p, "select system_identifier from pg_control_system()")?;

    // Host 3 (no member of the first cluster) bootstraps a cluster of its own scope with
    // Patroni's bootstrap.method: a command that restores the newest backup before the
    // target, then recovery to the target and promotion. It archives nowhere (a restored
    // cluster must not write into the first cluster's archive).
    let shipper = format!("{} --config {}", bin::daemon("wal-shipper").display(), cfg.display());
    let scope = "otk-restored";
    let text = c
        .config_text(3)
        .replace(&format!("scope = \"{}\"", harness::SCOPE), &format!("scope = \"{scope}\""))
        .replace("archive_mode = \"on\"", "archive_mode = \"off\"")
        .replace("[bootstrap]\n", "[bootstrap]\nmethod = \"wal_shipper\"\n")
        + &format!(
            "\n[bootstrap.wal_shipper]\ncommand = \"{shipper} create-replica --target-time '{target}'\"\n\
             [bootstrap.wal_shipper.recovery_conf]\nrestore_command = \"{shipper} wal-fetch %f %p\"\n\
             recovery_target_time = \"{target}\"\nrecovery_target_action = \"promote\"\n"
        );
    let path = c.net.dir().path().join("ha-agent-restored.toml");
    std::fs::write(&path, text)?;
    let mut cmd = Command::new(harness::agent_bin());
    cmd.arg("--config").arg(&path).arg("--log-json");
    let _agent = c.net.host(3).spawn("ha-restored", cmd)?;

    let key = |k: &str| {
        c.etcd
            .etcdctl(&c.net, 0, &["get", "--print-value-only", &format!("/service/{scope}/{k}")])
            .map(|s| s.trim().to_owned())
    };
    outrigger_testkit::wait_until(Duration::from_secs(120), "the restored cluster's leader", || {
        (key("leader").ok()? == "n3").then_some(())
    })?;
    outrigger_testkit::wait_ok(Duration::from_secs(30), "the restored primary to take writes", || {
        anyhow::ensure!(c.sql(3, "select pg_is_in_recovery()")? == "f");
        Ok(())
    })?;
    let rows = c.sql(3, "select string_agg(id::text, ',' order by id) from t")?;
    anyhow::ensure!(rows == "1", "the state at {target}: row 1 and not row 2, found {rows:?}");
    outrigger_testkit::wait_until(
        Duration::from_secs(30),
        "the new scope's initialize to hold the restored system identifier",
        || (key("initialize").ok()? == sysid).then_some(()),
    )?;
    let member: serde_json::Value = serde_json::from_str(&key("members/n3")?)?;
    anyhow::ensure!(member["role"] == "primary", "n3 publishes itself as the primary: {member}");
    // The target would stop any later start (as a replica) at the same point: it is gone
    // from the configuration files (it takes effect only at a start, so no restart is due).
    let target_left = c.sql(
        3,
        "select coalesce(string_agg(name || ' in ' || sourcefile, ', '), 'none') from pg_file_settings \
         where name like 'recovery_target%' and name <> 'recovery_target_timeline'",
    )?;
    anyhow::ensure!(target_left == "none", "recovery targets left in the configuration files: {target_left}");
    c.sql(3, "insert into t values (3)")?;
    Ok(())
}

/// A disaster-recovery site fed by cloud storage alone: a standby cluster of its own scope
/// (Patroni's `standby_cluster` with `restore_command` only) on hosts 2 and 3 makes its first
/// member from the primary cluster's newest backup in the bucket and replays the archived
/// WAL; its second member copies it from the bucket too and follows its standby leader. The
/// primary cluster serves the site no base backup and no WAL stream, yet every archived row
/// arrives; `standby_cluster: null` makes the site a primary cluster of its own.
#[test]
fn a_standby_cluster_fed_only_by_the_archive_bootstraps_from_the_bucket_and_replays_the_primary_clusters_wal()
-> anyhow::Result<()> {
    let Rig { c, cfg, _s3, _cfg_dir } = rig("cluster_standby_from_archive", false, "")?;
    let p = c.wait_primary(UP, &[])?;
    c.sql(p, "create table t (id int primary key); insert into t select generate_series(1, 100)")?;
    let (code, err) = shipper_on(&c, p, &cfg, &["backup-push", &c.data_dir(p).display().to_string()]);
    anyhow::ensure!(code == 0, "backup-push: {err}");
    c.sql(p, "insert into t select generate_series(101, 200)")?;
    archive_now(&c, p)?;
    let served = base_backups_served(&c, p);

    // Hosts 2 and 3 (not members of the first cluster) run the site under scope otk-dr. It
    // archives nowhere: only the primary cluster writes into its archive.
    let shipper = format!("{} --config {}", bin::daemon("wal-shipper").display(), cfg.display());
    let scope = "otk-dr";
    let mut agents = Vec::new();
    for i in [2, 3] {
        let text = c
            .config_text(i)
            .replace(&format!("scope = \"{}\"", harness::SCOPE), &format!("scope = \"{scope}\""))
            .replace("archive_mode = \"on\"", "archive_mode = \"off\"")
            + &format!(
                "\n[bootstrap.dcs.standby_cluster]\nrestore_command = \"{shipper} wal-fetch %f %p\"\n\
                 create_replica_methods = [\"wal_shipper\"]\n"
            );
        let path = c.net.dir().path().join(format!("ha-agent-dr-n{i}.toml"));
        std::fs::write(&path, text)?;
        let mut cmd = Command::new(harness::agent_bin());
        cmd.arg("--config").arg(&path).arg("--log-json");
        agents.push(c.net.host(i).spawn(&format!("ha-dr-n{i}"), cmd)?);
        if i == 2 {
            // n2 bootstraps the site alone: the race has one runner.
            outrigger_testkit::wait_until(UP, "n2 to lead the site as its standby leader", || {
                let m: serde_json::Value = serde_json::from_str(&dr_key(&c, scope, "members/n2").ok()?).ok()?;
                (dr_key(&c, scope, "leader").ok()? == "n2" && m["role"] == "standby_leader").then_some(())
            })?;
        }
    }
    let rows = |i: usize| c.sql(i, "select count(*) || ' ' || min(id) || ' ' || max(id) from t").unwrap_or_default();
    outrigger_testkit::wait_until(UP, "the archived rows on both members of the site", || {
        (rows(2) == "200 1 200" && rows(3) == "200 1 200").then_some(())
    })?;
    let member: serde_json::Value = serde_json::from_str(&dr_key(&c, scope, "members/n3")?)?;
    anyhow::ensure!(member["role"] == "replica", "n3 follows the standby leader: {member}");
    for i in [2, 3] {
        anyhow::ensure!(c.sql(i, "select pg_is_in_recovery()")? == "t", "n{i} of the site takes writes");
        let restore = c.sql(i, "show restore_command")?;
        anyhow::ensure!(restore.contains("wal-fetch %f %p"), "n{i} replays from the archive: {restore:?}");
    }
    let n2_conninfo = c.sql(2, "show primary_conninfo")?;
    anyhow::ensure!(n2_conninfo.is_empty(), "the standby leader streams from nowhere: {n2_conninfo:?}");

    // What the primary cluster writes later reaches the site through the bucket only.
    c.sql(p, "insert into t select generate_series(201, 300)")?;
    archive_now(&c, p)?;
    outrigger_testkit::wait_until(UP, "rows 201-300 on both members of the site", || {
        (rows(2) == "300 1 300" && rows(3) == "300 1 300").then_some(())
    })?;
    anyhow::ensure!(base_backups_served(&c, p) == served, "the primary cluster served the site a base backup");
    let senders = c.sql(p, "select count(*) from pg_stat_replication")?;
    anyhow::ensure!(senders == "0", "the primary cluster streams to the site: {senders} walsenders");

    // Promoted (what `patronictl promote-cluster` does), the site takes writes of its own.
    let url = format!("http://{}:8008/config", c.net.host(2).ip());
    let out = c.net.host(2).exec(&[
        "curl",
        "-s",
        "--max-time",
        "10",
        "-X",
        "PATCH",
        "-H",
        "Content-Type: application/json",
        "-d",
        r#"{"standby_cluster":null}"#,
        "-w",
        " %{http_code}",
        &url,
    ])?;
    anyhow::ensure!(out.trim().ends_with(" 200"), "PATCH /config: {out}");
    outrigger_testkit::wait_ok(UP, "the site's leader to take writes", || {
        anyhow::ensure!(c.sql(2, "select pg_is_in_recovery()")? == "f");
        Ok(())
    })?;
    c.sql(2, "insert into t values (301)")?;
    outrigger_testkit::wait_ok(UP, "the site's replica to follow its new primary", || {
        anyhow::ensure!(rows(3) == "301 1 301", "n3 has {}", rows(3));
        Ok(())
    })?;
    drop(agents);
    Ok(())
}

/// A key of cluster `scope` (not the harness's), read through etcd member 1.
fn dr_key(c: &Cluster, scope: &str, key: &str) -> anyhow::Result<String> {
    c.etcd
        .etcdctl(&c.net, 0, &["get", "--print-value-only", &format!("/service/{scope}/{key}")])
        .map(|s| s.trim().to_owned())
}

/// Switches primary `p` to a new WAL segment and waits until the one it left is archived.
fn archive_now(c: &Cluster, p: usize) -> anyhow::Result<()> {
    let last = c.sql(p, "select pg_walfile_name(pg_switch_wal())")?;
    outrigger_testkit::wait_ok(Duration::from_secs(60), "the last segment to be archived", || {
        let done = c.sql(p, "select coalesce(last_archived_wal, '') from pg_stat_archiver")?;
        anyhow::ensure!(done.as_str() >= last.as_str(), "archived up to {done:?}, want {last}");
        Ok(())
    })
}
