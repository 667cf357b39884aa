//! `vip-manager --check-config`: a valid config passes; an unknown key and a bad value are reported
//! with key, value and rule, exit code 78.

outrigger_testkit::check_config_tests! {
    bin: env!("CARGO_BIN_EXE_vip-manager"),
    valid: r#"
interface = "eth0"
vip = "10.0.0.100/24"
[vrrp]
vrid = 51
"#,
    bad: ("\"10.0.0.100/24\"" => "\"10.0.0.100/33\""),
    expect: "vip (10.0.0.100/33): prefix length must be 1 to 32",
}
