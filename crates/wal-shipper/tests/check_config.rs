//! `wal-shipper --check-config`: a valid config passes; an unknown key and a bad value are reported
//! with key, value and rule, exit code 78.

outrigger_testkit::check_config_tests! {
    bin: env!("CARGO_BIN_EXE_wal-shipper"),
    valid: r#"
s3_prefix = "s3://backups/cluster1"
"#,
    bad: ("\"s3://backups/cluster1\"" => "\"/backups\""),
    expect: "s3_prefix (/backups): must be s3://bucket[/path]",
}
