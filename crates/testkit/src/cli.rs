//! Running a daemon binary's `--check-config` on a config text.

use std::process::Command;

/// What `<bin> --check-config <file>` did.
#[derive(Debug)]
pub struct CheckRun {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Writes `config` to a temporary file and runs `bin --check-config` on it. `config` of `None`
/// points at a file that does not exist.
pub fn check_config(bin: &str, config: Option<&str>) -> anyhow::Result<CheckRun> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("config.toml");
    if let Some(text) = config {
        std::fs::write(&path, text)?;
    }
    let out = Command::new(bin).arg("--check-config").arg(&path).output()?;
    Ok(CheckRun {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// The three `--check-config` tests every daemon has: a valid config exits 0; an unknown key
/// exits 78 naming it; a bad value (`valid` with `from` replaced by `to`) exits 78 with a
/// message containing `expect` (key, value and rule).
#[macro_export]
macro_rules! check_config_tests {
    (bin: $bin:expr, valid: $valid:expr, bad: ($from:expr => $to:expr), expect: $expect:expr $(,)?) => {
        #[test]
        fn valid_config_exits_zero() {
            let r = $crate::cli::check_config($bin, Some($valid)).unwrap();
            assert_eq!(r.code, 0, "{r:?}");
        }

        #[test]
        fn unknown_key_exits_78_naming_the_key() {
            let text = format!("{}\n[log]\nlevle = \"info\"\n", $valid);
            let r = $crate::cli::check_config($bin, Some(&text)).unwrap();
            assert_eq!(r.code, 78, "{r:?}");
            assert!(r.stderr.contains("log.levle: unknown key"), "{r:?}");
        }

        #[test]
        fn bad_value_names_key_value_and_rule() {
            let text = $valid.replace($from, $to);
            assert_ne!(text, $valid, "the replacement must change the config");
            let r = $crate::cli::check_config($bin, Some(&text)).unwrap();
            assert_eq!(r.code, 78, "{r:?}");
            assert!(r.stderr.contains($expect), "{r:?}");
        }
    };
}
