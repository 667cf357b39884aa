//! `ha-agent --check-config`: each class of config error gives its documented message and exit
//! code (see `outrigger_daemon::cli`).

use outrigger_testkit::cli::check_config;

const BIN: &str = env!("CARGO_BIN_EXE_ha-agent");

const VALID: &str = r#"
name = "n1"
scope = "batman"
[etcd]
endpoints = ["http://127.0.0.1:2379"]
[restapi]
listen = "127.0.0.1:8008"
[timings]
ttl = "4s"
loop_wait = "1s"
retry_timeout = "1s"
[watchdog]
safety_margin = -1
[postgresql]
data_dir = "/var/lib/postgresql/15/main"
listen = "127.0.0.1:5432"
"#;

#[test]
fn valid_config_exits_zero() {
    let r = check_config(BIN, Some(VALID)).unwrap();
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.ends_with(": ok\n"), "{r:?}");
}

#[test]
fn missing_file_exits_66_naming_the_file() {
    let r = check_config(BIN, None).unwrap();
    assert_eq!(r.code, 66, "{r:?}");
    assert!(r.stderr.contains("cannot read config file") && r.stderr.contains("config.toml"), "{r:?}");
}

#[test]
fn toml_syntax_error_exits_65() {
    let r = check_config(BIN, Some("name = \n")).unwrap();
    assert_eq!(r.code, 65, "{r:?}");
    assert!(r.stderr.contains("is not valid TOML"), "{r:?}");
}

#[test]
fn unknown_key_exits_78_naming_the_key() {
    let r = check_config(BIN, Some(&VALID.replace("ttl = ", "tll = "))).unwrap();
    assert_eq!(r.code, 78, "{r:?}");
    assert!(r.stderr.contains("timings.tll: unknown key"), "{r:?}");
}

#[test]
fn broken_timing_invariant_names_key_value_and_rule() {
    let r = check_config(BIN, Some(&VALID.replace("ttl = \"4s\"", "ttl = \"2s\""))).unwrap();
    assert_eq!(r.code, 78, "{r:?}");
    assert!(r.stderr.contains("timings.ttl (2s): must be >= loop_wait + 2 * retry_timeout (3s)"), "{r:?}");
}

#[test]
fn wrong_type_and_several_problems_are_all_reported() {
    let r = check_config(BIN, Some(&VALID.replace("name = \"n1\"", "name = 7"))).unwrap();
    assert_eq!(r.code, 78, "{r:?}");
    assert!(r.stderr.contains("name: invalid type"), "{r:?}");
    let several = VALID.replace("http://127.0.0.1:2379", "127.0.0.1:2379").replace("name = \"n1\"", "name = \"a/b\"");
    let r = check_config(BIN, Some(&several)).unwrap();
    assert_eq!(r.code, 78, "{r:?}");
    assert!(r.stderr.contains("has 2 problem(s)"), "{r:?}");
    assert!(r.stderr.contains("name (a/b):"), "{r:?}");
    assert!(r.stderr.contains("etcd.endpoints[0] (127.0.0.1:2379): must be http://host:port"), "{r:?}");
}

const PATRONI_YML: &str = "scope: batman\nnamespace: /service/\nname: n1\nrestapi:\n  listen: 127.0.0.1:8008\n  connect_address: 127.0.0.1:8008\n\
etcd3:\n  hosts: 127.0.0.1:2379\nlog:\n  dir: /var/log/patroni\nbootstrap:\n  dcs:\n    ttl: 20\n    loop_wait: 1\n    retry_timeout: 5\n\
postgresql:\n  listen: 127.0.0.1:5432\n  data_dir: /var/lib/postgresql/15/main\n  pgpass: /tmp/pgpass\n  authentication:\n    superuser:\n      username: postgres\n      password: \"top secret\"\n";

/// Runs the binary with `args` plus a temporary file holding `text` named `name`.
fn run_with_file(args: &[&str], name: &str, text: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(name);
    std::fs::write(&path, text).expect("write");
    let out = std::process::Command::new(BIN)
        .args(args)
        .arg(&path)
        .env_remove("PATRONI_NAME")
        .output()
        .expect("run ha-agent");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn a_patroni_yml_is_checked_and_its_unused_settings_are_named_with_why() {
    let (code, stdout, stderr) = run_with_file(&["--check-config"], "patroni.yml", PATRONI_YML);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.ends_with(": ok\n"), "{stdout}");
    assert!(stderr.contains("log.dir is not used: ha-agent logs to stderr"), "{stderr}");
    assert!(stderr.contains("postgresql.pgpass is not used"), "{stderr}");
    // A setting ha-agent cannot run with: refused with its Patroni name.
    let v2 = PATRONI_YML.replace("etcd3:", "etcd:");
    let (code, _, stderr) = run_with_file(&["--check-config"], "patroni.yml", &v2);
    assert_eq!(code, 78, "{stderr}");
    assert!(stderr.contains("etcd ((section)): uses etcd's v2 API"), "{stderr}");
    // Broken YAML: 65, with the place and without the text.
    let (code, _, stderr) = run_with_file(&["--check-config"], "patroni.yaml", "name: [\"top secret\"\nscope: x\n");
    assert_eq!(code, 65, "{stderr}");
    assert!(stderr.contains("is not valid YAML") && !stderr.contains("top secret"), "{stderr}");
}

#[test]
fn convert_config_prints_toml_that_checks_and_names_what_it_leaves_out() {
    let (code, toml_text, stderr) = run_with_file(&["convert-config"], "patroni.yml", PATRONI_YML);
    assert_eq!(code, 0, "{stderr}");
    assert!(toml_text.contains("#   log.dir: ha-agent logs to stderr"), "{toml_text}");
    assert!(toml_text.contains("ttl = \"20000ms\""), "{toml_text}");
    let r = check_config(BIN, Some(&toml_text)).unwrap();
    assert_eq!(r.code, 0, "the converted TOML is a valid ha-agent config: {r:?}");
}
