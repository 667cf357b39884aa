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
