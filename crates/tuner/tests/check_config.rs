//! `tuner --check-config`: a valid config passes; an unknown key and a bad value are reported
//! with key, value and rule, exit code 78.

outrigger_testkit::check_config_tests! {
    bin: env!("CARGO_BIN_EXE_tuner"),
    valid: r#"
scope = "batman"
[etcd]
endpoints = ["http://127.0.0.1:2379"]
"#,
    bad: ("\"http://127.0.0.1:2379\"" => "\"ftp://x:1\""),
    expect: "etcd.endpoints[0] (ftp://x:1): must be http://host:port",
}
