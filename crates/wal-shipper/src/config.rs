//! wal-shipper's config file: raw serde layer, then the validated [`Config`].

use outrigger_daemon::config::{LogSection, Problem, Problems, Validate};
use outrigger_daemon::logging::LogOptions;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
pub struct RawConfig {
    /// WAL-G's `WALG_S3_PREFIX`: `s3://bucket/path`.
    pub s3_prefix: String,
    #[serde(default)]
    pub log: LogSection,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub bucket: String,
    pub path: String,
    pub log: LogOptions,
}

impl Validate for RawConfig {
    type Valid = Config;

    fn validate(&self) -> Result<Config, Vec<Problem>> {
        let mut p = Problems::new();
        let parsed = self.s3_prefix.strip_prefix("s3://").and_then(|rest| {
            let (bucket, path) = rest.split_once('/').unwrap_or((rest, ""));
            (!bucket.is_empty()).then(|| (bucket.to_owned(), path.trim_end_matches('/').to_owned()))
        });
        if parsed.is_none() {
            p.push("s3_prefix", &self.s3_prefix, "must be s3://bucket[/path]");
        }
        let log = self.log.validate(&mut p);
        p.finish(())?;
        let (bucket, path) = parsed.ok_or_else(|| vec![Problem::key_only("s3_prefix", "invalid")])?;
        Ok(Config { bucket, path, log })
    }
}
