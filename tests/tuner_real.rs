//! tuner against real processes: its settings checked by Debian's `postgres` binary, loaded
//! into a PostgreSQL that then starts (as `postgresql.conf` and as `ALTER SYSTEM`), and applied
//! to a real etcd's `/config` key.
//!
//! PostgreSQL and etcd run as the test kit runs them: inside a network namespace made by the
//! test, as the `postgres` user for PostgreSQL, stopped and removed on drop (also on panic).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Output};

use outrigger_testkit::{Net, PgOptions, Postgres};
use tuner::compare::same;
use tuner::server::Server;

/// The tuner binary, built once per test run.
fn tuner_bin() -> PathBuf {
    outrigger_testkit::bin::daemon("tuner")
}

/// Debian's PostgreSQL: its bin directory and major version.
/// The bin directory is the test kit's choice: `OUTRIGGER_PG_BIN`, else the newest installed.
fn postgres() -> (PathBuf, u8) {
    let dir = std::env::var_os("OUTRIGGER_PG_BIN").map(PathBuf::from).unwrap_or_else(|| {
        let newest = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL installed under /usr/lib/postgresql")
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .max()
            .expect("a PostgreSQL version directory");
        PathBuf::from(format!("/usr/lib/postgresql/{newest}/bin"))
    });
    let (_, major) = Server::new(dir.join("postgres")).version().expect("postgres --version");
    (dir, major)
}

/// Runs tuner with `args` (plus `--pg-version` of the installed server). Hardware is always
/// given, so nothing depends on this machine.
fn tuner(args: &[&str]) -> Output {
    let (_, major) = postgres();
    Command::new(tuner_bin()).args(args).arg(format!("--pg-version={major}")).output().expect("run tuner")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A spread of machines and workloads; the masterclass invocation first.
const MACHINES: [&[&str]; 5] = [
    &[
        "--db-cpu=4",
        "--db-ram=4096Mi",
        "--db-disk-type=SSD",
        "--db-duty=mixed",
        "--min-conns=200",
        "--max-conns=200",
        "--common-conf",
    ],
    &["--db-cpu=1", "--db-ram=1Gi", "--db-disk-type=SATA", "--db-duty=statistic"],
    &["--db-cpu=8", "--db-ram=32Gi", "--db-disk-type=SSD", "--db-duty=financial", "--replication-enabled=False"],
    &["--db-cpu=96", "--db-ram=768Gi", "--db-disk-type=NVMe", "--db-duty=oltp"],
    &["--db-cpu=16", "--db-ram=64Gi", "--db-disk-type=SAN", "--db-duty=dw", "--platform=WINDOWS"],
];

#[test]
fn tuner_settings_pass_debians_postgres_catalogue_and_read_back() {
    let (bin, major) = postgres();
    let validate = format!("--validate={}", bin.join("postgres").display());
    // PGTune's formulas once, for the benchmark's sake; tuner's for every machine.
    let runs = MACHINES.iter().map(|m| (*m, "--formula=tuner")).chain([(MACHINES[0], "--formula=pgtune")]);
    for (machine, formula) in runs {
        {
            let mut args = machine.to_vec();
            args.extend([validate.as_str(), formula]);
            let o = tuner(&args);
            assert_eq!(o.status.code(), Some(0), "{args:?}: {}", text(&o.stderr));
            assert!(
                text(&o.stderr).contains(&format!("validated against postgres (PostgreSQL) {major}.")),
                "{args:?}: {}",
                text(&o.stderr)
            );
        }
    }
}

#[test]
fn validation_rejects_unknown_parameters_wrong_units_and_out_of_range_values() {
    let (bin, major) = postgres();
    let server = Server::new(bin.join("postgres"));
    let settings: BTreeMap<String, String> = [
        ("shared_buffers", "128MB"),
        ("old_snapshot_treshold", "4320"),
        ("work_mem", "10s"),
        ("max_connections", "100000000"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let report = server.validate(&settings, major).expect("run the check");
    let found: Vec<String> = report.findings.iter().map(ToString::to_string).collect();
    let has = |s: &str| found.iter().any(|f| f.contains(s));
    assert!(has(&format!("old_snapshot_treshold = 4320: unknown to PostgreSQL {major}")), "{found:#?}");
    assert!(has("work_mem = 10s: wrong unit"), "{found:#?}");
    assert!(has("max_connections = 100000000: out of range"), "{found:#?}");
    // The server's own parse of the file fails too, and says why.
    assert!(has("the server says:"), "{found:#?}");
    assert!(!has("shared_buffers"), "{found:#?}");
}

/// Settings as `name → value` from tuner's JSON output.
fn json_settings(args: &[&str]) -> BTreeMap<String, String> {
    let mut a = args.to_vec();
    a.push("--output-format=json");
    let o = tuner(&a);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    serde_json::from_slice(&o.stdout).expect("tuner's JSON")
}

/// The values the running server shows for `names`.
fn shown(pg: &Postgres, names: &[&String]) -> BTreeMap<String, String> {
    let list = names.iter().map(|n| format!("'{n}'")).collect::<Vec<_>>().join(",");
    let rows = pg
        .sql(&format!("select name || '|' || current_setting(name) from unnest(array[{list}]) as name"))
        .expect("read settings");
    rows.lines().filter_map(|l| l.split_once('|')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
}

/// What the server found wrong in its config files (`pg_file_settings.error`), one per line.
fn file_errors(pg: &Postgres) -> String {
    let kit = KIT_OVERRIDES.iter().map(|n| format!("'{n}'")).collect::<Vec<_>>().join(",");
    pg.sql(&format!(
        "select sourcefile || ':' || sourceline || ' ' || coalesce(name, '') || ': ' || error from pg_file_settings \
         where error is not null and coalesce(name, '') not in ({kit})"
    ))
    .expect("read pg_file_settings")
}

/// The test kit starts PostgreSQL with these on its command line, which beat the config file.
const KIT_OVERRIDES: [&str; 5] =
    ["wal_level", "max_wal_senders", "hot_standby", "wal_receiver_status_interval", "fsync"];

#[test]
fn conf_snippet_and_alter_system_load_into_a_postgresql_that_starts() {
    let machine = MACHINES[0];
    let net = Net::start("tuner_conf_snippet_loads", 1).expect("namespace");
    let host = net.host(1);
    let mut pg = Postgres::init_primary(host, "pg", PgOptions::default()).expect("initdb and start");
    pg.stop().expect("stop");

    // 1. The conf output, appended to postgresql.conf as an operator would include it.
    let mut args = machine.to_vec();
    args.push("--output-format=conf");
    let conf = tuner(&args);
    assert_eq!(conf.status.code(), Some(0), "{}", text(&conf.stderr));
    let mut f = std::fs::OpenOptions::new().append(true).open(pg.data().join("postgresql.conf")).expect("open conf");
    std::io::Write::write_all(&mut f, &conf.stdout).expect("append conf");
    drop(f);
    pg.start(host).expect("PostgreSQL starts with tuner's postgresql.conf");

    let ours = json_settings(machine);
    let names: Vec<&String> = ours.keys().filter(|k| !KIT_OVERRIDES.contains(&k.as_str())).collect();
    let live = shown(&pg, &names);
    for name in &names {
        let got = live.get(*name).unwrap_or_else(|| panic!("{name} not shown by the server"));
        assert!(same(name, &ours[*name], got), "{name}: tuner wrote {}, the server shows {got}", ours[*name]);
    }
    assert_eq!(file_errors(&pg), "");

    // 2. The same settings as ALTER SYSTEM statements (one per call: ALTER SYSTEM cannot run
    //    in a multi-statement transaction), then a restart on postgresql.auto.conf.
    // A bigger machine than the file's, so the restart shows the ALTER SYSTEM values won.
    let mut args: Vec<&str> =
        machine.iter().map(|a| if a.starts_with("--db-ram") { "--db-ram=8Gi" } else { a }).collect();
    args.push("--output-format=alter-system");
    let sql = tuner(&args);
    assert_eq!(sql.status.code(), Some(0), "{}", text(&sql.stderr));
    for stmt in text(&sql.stdout).lines().filter(|l| l.starts_with("ALTER SYSTEM")) {
        pg.sql(stmt).unwrap_or_else(|e| panic!("{stmt}: {e:#}"));
    }
    // Before the restart, exactly the parameters tuner says need one are pending.
    let (_, major) = postgres();
    let pending = pg
        .sql("select name from pg_file_settings where error = 'setting could not be applied' order by name")
        .expect("read pg_file_settings");
    for name in pending.lines() {
        let p = tuner::catalog::param(name).unwrap_or_else(|| panic!("{name} is not in tuner's catalogue"));
        assert!(p.needs_restart(major), "{name} is pending a restart, but tuner does not list it as needing one");
    }
    assert!(pending.lines().any(|n| n == "shared_buffers"), "shared_buffers changed, so it must be pending: {pending}");
    pg.stop().expect("stop");
    pg.start(host).expect("PostgreSQL restarts with tuner's ALTER SYSTEM settings");
    let bigger = json_settings(&args[..args.len() - 1]);
    let live = shown(&pg, &[&"shared_buffers".to_owned(), &"shared_preload_libraries".to_owned()]);
    assert!(same("shared_buffers", &bigger["shared_buffers"], &live["shared_buffers"]), "{live:?} vs {bigger:?}");
    assert_eq!(
        live["shared_preload_libraries"], "pg_stat_statements, auto_explain",
        "two libraries, not one named \"a,b\""
    );
    // Both libraries really loaded: the extension works and auto_explain's parameter is its own.
    pg.sql("create extension pg_stat_statements").expect("create extension pg_stat_statements");
    assert_eq!(pg.sql("select count(*) > 0 from pg_stat_statements").unwrap(), "t");
    assert_eq!(pg.sql("show auto_explain.log_min_duration").unwrap(), "3s");
}

/// A `/config` as Patroni's bootstrap writes it, with another tool's key as well.
const BOOTSTRAPPED: &str = r#"{"ttl":30,"loop_wait":10,"retry_timeout":10,"maximum_lag_on_failover":1048576,"synchronous_mode":true,"postgresql":{"use_pg_rewind":false,"use_slots":true,"parameters":{"password_encryption":"scram-sha-256","port":5432,"max_connections":200,"shared_buffers":"128MB","track_commit_timestamp":"off"},"pg_hba":["local all all trust","host replication replicator 0.0.0.0/0 md5"]},"x_other_tool":{"keep":["me",1]}}"#;

#[test]
fn apply_etcd_merges_parameters_into_config_with_a_diff_and_keeps_everything_else() {
    use outrigger_etcd::{ConnectOptions, Etcd};
    use outrigger_testkit::{EtcdCluster, EtcdOptions};

    let net = Net::start("tuner_apply_etcd", 1).expect("namespace");
    let etcd = EtcdCluster::start(&net, &[1], EtcdOptions::default()).expect("etcd");
    let endpoint = etcd.endpoint(0);
    let host = net.host(1);
    let rt = host.runtime().expect("runtime in the namespace");
    let client = {
        let ep = endpoint.clone();
        rt.block_on(async move { Etcd::connect(&ConnectOptions::new(vec![ep])).await }).expect("connect")
    };
    let c = client.clone();
    rt.block_on(async move {
        c.put("/service/main/config", BOOTSTRAPPED, None).await?;
        c.put("/service/main/leader", "n1", None).await
    })
    .expect("seed /config");
    let read = |key: &'static str| {
        let c = client.clone();
        rt.block_on(async move { c.get(key).await }).expect("read").expect("key exists")
    };
    let before = read("/service/main/config");

    let conf = net.dir().path().join("tuner.toml");
    std::fs::write(
        &conf,
        format!("scope = \"main\"\nnamespace = \"/service/\"\n[etcd]\nendpoints = [\"{endpoint}\"]\n"),
    )
    .expect("write tuner.toml");
    let (_, major) = postgres();
    let machine: Vec<String> = MACHINES[0].iter().map(|s| (*s).to_owned()).collect();
    // tuner talks to etcd from inside the namespace, as a daemon on that host would.
    let run_tuner = |extra: &[&str]| -> Output {
        let mut args = machine.clone();
        args.extend([format!("--pg-version={major}"), "--config".to_owned(), conf.display().to_string()]);
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let bin = tuner_bin().to_path_buf();
        host.enter(move || Command::new(bin).args(args).output()).expect("enter").expect("run tuner")
    };

    // 1. Without --yes: the diff, exit code 3, nothing written.
    let o = run_tuner(&["--apply-etcd"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));
    let diff = text(&o.stdout);
    assert!(diff.starts_with("/service/main/config: postgresql.parameters\n"), "{diff}");
    assert!(diff.contains("  ~ shared_buffers: 128MB -> 856MB   (needs restart)\n"), "{diff}");
    assert!(diff.contains("  + work_mem: "), "{diff}");
    assert!(diff.contains("a restart of every member is needed for: "), "{diff}");
    assert!(!diff.contains("max_connections"), "200 is already set: {diff}");
    assert!(text(&o.stderr).contains("re-run with --yes"), "{}", text(&o.stderr));
    assert_eq!(read("/service/main/config").mod_revision, before.mod_revision, "nothing written without --yes");

    // 2. With --yes: written; read back intact, everything else kept.
    let o = run_tuner(&["--apply-etcd", "--yes"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("applied at etcd revision"), "{}", text(&o.stderr));
    let after = read("/service/main/config");
    assert!(after.mod_revision > before.mod_revision);
    let v: serde_json::Value = serde_json::from_slice(&after.value).expect("/config is JSON");
    let old: serde_json::Value = serde_json::from_str(BOOTSTRAPPED).unwrap();
    for key in ["ttl", "loop_wait", "retry_timeout", "maximum_lag_on_failover", "synchronous_mode", "x_other_tool"] {
        assert_eq!(v[key], old[key], "{key} kept");
    }
    for key in ["use_pg_rewind", "use_slots", "pg_hba"] {
        assert_eq!(v["postgresql"][key], old["postgresql"][key], "postgresql.{key} kept");
    }
    let params = &v["postgresql"]["parameters"];
    for key in ["password_encryption", "port", "track_commit_timestamp", "max_connections"] {
        assert_eq!(params[key], old["postgresql"]["parameters"][key], "parameter {key} kept");
    }
    let mut pj = machine.clone();
    pj.extend([format!("--pg-version={major}"), "--output-format=patroni-json".to_owned()]);
    let pj: Vec<&str> = pj.iter().map(String::as_str).collect();
    let o = Command::new(tuner_bin()).args(&pj).output().expect("run tuner");
    let ours: serde_json::Value = serde_json::from_slice(&o.stdout).expect("patroni-json");
    for (k, want) in ours["postgresql"]["parameters"].as_object().expect("parameters") {
        let got = params.get(k).unwrap_or_else(|| panic!("{k} missing in /config"));
        let got = got.as_str().map_or_else(|| got.to_string(), str::to_owned);
        assert!(same(k, want.as_str().unwrap(), &got), "{k}: /config has {got}, tuner wants {want}");
    }
    assert_eq!(read("/service/main/leader").value, b"n1", "sibling keys untouched");

    // 3. Again: nothing to change, nothing written.
    let o = run_tuner(&["--apply-etcd", "--yes"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("nothing to change"), "{}", text(&o.stderr));
    assert_eq!(read("/service/main/config").mod_revision, after.mod_revision);
}

#[path = "ha_agent_harness.rs"]
mod harness;

/// The reference deployment's path end to end: tuner writes `postgresql.parameters` into a
/// live cluster's `/config`, and the running ha-agent applies them: reloadable settings take
/// effect in PostgreSQL, restart-only ones are reported as `pending_restart` in the member key.
#[test]
fn tuner_settings_written_to_etcd_are_applied_by_a_running_ha_agent() {
    use std::time::Duration;

    let c = harness::Cluster::start(
        "tuner_apply_to_ha_agent",
        harness::Opts { agents: 1, sync: false, ..harness::Opts::default() },
    )
    .expect("cluster");
    let p = c.wait_primary(Duration::from_secs(60), &[]).expect("a primary");
    let endpoints: Vec<String> = (0..c.etcd.len()).map(|m| format!("\"{}\"", c.etcd.endpoint(m))).collect();
    let conf = c.net.dir().path().join("tuner.toml");
    std::fs::write(
        &conf,
        format!(
            "scope = \"{}\"\nnamespace = \"/service/\"\n[etcd]\nendpoints = [{}]\n",
            harness::SCOPE,
            endpoints.join(", ")
        ),
    )
    .expect("write tuner.toml");
    let (_, major) = postgres();
    let wanted = json_settings(MACHINES[0]);
    let mut args: Vec<String> = MACHINES[0].iter().map(|s| (*s).to_owned()).collect();
    args.push(format!("--pg-version={major}"));
    args.extend(["--config".to_owned(), conf.display().to_string(), "--apply-etcd".to_owned(), "--yes".to_owned()]);
    let bin = tuner_bin();
    let o = c
        .net
        .host(p)
        .enter(move || Command::new(bin).args(args).output())
        .expect("enter the primary's host")
        .expect("run tuner");
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));

    // A reloadable setting reaches PostgreSQL; a restart-only one is reported as pending.
    let work_mem = wanted.get("work_mem").expect("tuner sets work_mem").clone();
    assert!(wanted.contains_key("shared_buffers"), "tuner sets shared_buffers");
    outrigger_testkit::wait_until(Duration::from_secs(20), "work_mem applied by ha-agent", || {
        let shown = c.sql(p, "show work_mem").ok()?;
        same("work_mem", &work_mem, &shown).then_some(())
    })
    .expect("work_mem from /config in force");
    outrigger_testkit::wait_until(Duration::from_secs(20), "pending_restart in the member key", || {
        let member = c.etcd_get(&format!("members/{}", harness::Cluster::name(p)))?;
        let v: serde_json::Value = serde_json::from_str(&member).ok()?;
        (v["pending_restart"] == serde_json::Value::Bool(true)).then_some(())
    })
    .expect("shared_buffers needs a restart and the member says so");
    let pending =
        c.sql(p, "select string_agg(name, ',' order by name) from pg_settings where pending_restart").unwrap();
    assert!(pending.split(',').any(|n| n == "shared_buffers"), "pending in PostgreSQL: {pending}");
}
