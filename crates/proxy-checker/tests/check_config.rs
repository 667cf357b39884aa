//! `proxy-checker --check-config`: a valid config passes; an unknown key and a bad value are reported
//! with key, value and rule, exit code 78.

outrigger_testkit::check_config_tests! {
    bin: env!("CARGO_BIN_EXE_proxy-checker"),
    valid: r#"
name = "n1"
scope = "batman"
listen = "127.0.0.1:8009"
[etcd]
endpoints = ["http://127.0.0.1:2379"]
"#,
    bad: ("\"127.0.0.1:8009\"" => "\"localhost\""),
    expect: "listen (localhost): must be an IP address and port",
}
