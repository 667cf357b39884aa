//! `vip-manager --check-config`: a valid config passes; an unknown key and a bad value are reported
//! with key, value and rule, exit code 78.

use outrigger_testkit::cli::check_config;

const BIN: &str = env!("CARGO_BIN_EXE_vip-manager");

const VALID: &str = r#"
interface = "eth0"
vip = "10.0.0.100/24"
"#;

#[test]
fn valid_config_exits_zero() {
    let r = check_config(BIN, Some(VALID)).unwrap();
    assert_eq!(r.code, 0, "{r:?}");
}

#[test]
fn unknown_key_exits_78_naming_the_key() {
    let r = check_config(BIN, Some(&format!("{VALID}\n[log]\nlevle = \"info\"\n"))).unwrap();
    assert_eq!(r.code, 78, "{r:?}");
    assert!(r.stderr.contains("log.levle: unknown key"), "{r:?}");
}

#[test]
fn bad_value_names_key_value_and_rule() {
    let r = check_config(BIN, Some(&VALID.replace("10.0.0.100/24", "10.0.0.100"))).unwrap();
    assert_eq!(r.code, 78, "{r:?}");
    assert!(r.stderr.contains("vip (10.0.0.100): must be an address with a prefix length"), "{r:?}");
}
