//! Where wal-shipper's settings come from, as WAL-G reads them: WAL-G's environment variables,
//! WAL-G's JSON config file (`--config FILE.json`, keys spelled as the variables), or our TOML
//! file (`--config FILE.toml`, the same keys in lower case without the `walg_` prefix, plus a
//! `[log]` table). The environment overrides a file, as in WAL-G.
//!
//! Every setting is declared once in [`KNOWN`]; validation reports each problem as
//! `KEY (value): rule`, and never echoes a secret's value.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use outrigger_daemon::config::{LogSection, Problem, Problems};
use outrigger_daemon::logging::LogOptions;
use outrigger_daemon::reload::Plan;

use crate::codec::{Codec, Method};
use crate::crypto::{Key, KeyTransform};

/// One setting: its WAL-G (environment) name, other names WAL-G accepts, its TOML name, and
/// whether its value is a secret.
struct Known {
    env: &'static str,
    aliases: &'static [&'static str],
    toml: &'static str,
    secret: bool,
}

const fn k(env: &'static str, toml: &'static str) -> Known {
    Known { env, aliases: &[], toml, secret: false }
}
const fn secret(env: &'static str, toml: &'static str) -> Known {
    Known { env, aliases: &[], toml, secret: true }
}

/// Every setting wal-shipper reads.
const KNOWN: &[Known] = &[
    Known { env: "WALG_S3_PREFIX", aliases: &["WALE_S3_PREFIX"], toml: "s3_prefix", secret: false },
    k("WALG_FILE_PREFIX", "file_prefix"),
    k("WALG_GS_PREFIX", "gs_prefix"),
    k("WALG_AZ_PREFIX", "az_prefix"),
    Known { env: "AWS_ENDPOINT", aliases: &["AWS_ENDPOINT_URL"], toml: "aws_endpoint", secret: false },
    k("AWS_S3_FORCE_PATH_STYLE", "aws_s3_force_path_style"),
    k("AWS_REGION", "aws_region"),
    Known { env: "WALG_S3_STORAGE_CLASS", aliases: &["S3_STORAGE_CLASS"], toml: "s3_storage_class", secret: false },
    Known { env: "WALG_S3_SSE", aliases: &["S3_SSE"], toml: "s3_sse", secret: false },
    Known { env: "WALG_S3_SSE_KMS_ID", aliases: &["S3_SSE_KMS_ID"], toml: "s3_sse_kms_id", secret: false },
    Known { env: "WALG_S3_SSE_C", aliases: &["S3_SSE_C"], toml: "s3_sse_c", secret: true },
    k("AWS_ACCESS_KEY_ID", "aws_access_key_id"),
    secret("AWS_SECRET_ACCESS_KEY", "aws_secret_access_key"),
    secret("AWS_SESSION_TOKEN", "aws_session_token"),
    k("GOOGLE_APPLICATION_CREDENTIALS", "google_application_credentials"),
    k("AZURE_STORAGE_ACCOUNT", "azure_storage_account"),
    secret("AZURE_STORAGE_ACCESS_KEY", "azure_storage_access_key"),
    k("WALG_COMPRESSION_METHOD", "compression_method"),
    k("WALG_ZSTD_LEVEL", "zstd_level"),
    k("WALG_UPLOAD_CONCURRENCY", "upload_concurrency"),
    k("WALG_DOWNLOAD_CONCURRENCY", "download_concurrency"),
    k("WALG_UPLOAD_DISK_CONCURRENCY", "upload_disk_concurrency"),
    secret("WALG_LIBSODIUM_KEY", "libsodium_key"),
    k("WALG_LIBSODIUM_KEY_PATH", "libsodium_key_path"),
    k("WALG_LIBSODIUM_KEY_TRANSFORM", "libsodium_key_transform"),
    k("WALG_PREVENT_WAL_OVERWRITE", "prevent_wal_overwrite"),
    k("WALG_DELTA_MAX_STEPS", "delta_max_steps"),
    k("WALG_DELTA_ORIGIN", "delta_origin"),
    k("WALG_VERIFY_PAGE_CHECKSUMS", "verify_page_checksums"),
    k("WALG_TAR_SIZE_THRESHOLD", "tar_size_threshold"),
    k("WALG_DISK_RATE_LIMIT", "disk_rate_limit"),
    k("WALG_PREFETCH_DIR", "prefetch_dir"),
    k("WALG_SENTINEL_USER_DATA", "sentinel_user_data"),
    k("TOTAL_BG_UPLOADED_LIMIT", "total_bg_uploaded_limit"),
    k("PGDATA", "pgdata"),
    k("PGHOST", "pghost"),
    k("PGPORT", "pgport"),
    k("PGUSER", "pguser"),
    k("PGDATABASE", "pgdatabase"),
    secret("PGPASSWORD", "pgpassword"),
    // Ours: WAL-G has no such settings.
    k("WAL_SHIPPER_REQUEST_TIMEOUT", "request_timeout"),
    k("WAL_SHIPPER_PUSH_TIMEOUT", "push_timeout"),
    k("WAL_SHIPPER_METRICS_LISTEN", "metrics_listen"),
    k("WAL_SHIPPER_DAEMON_POLL", "daemon_poll"),
    k("WAL_SHIPPER_STANDBY_WAL_TIMEOUT", "standby_wal_timeout"),
];

/// WAL-G settings for encryption wal-shipper does not implement: refusing them is the only
/// safe answer, since ignoring them would upload plaintext where the user expects ciphertext.
const REFUSED: &[&str] = &[
    "WALG_PGP_KEY",
    "WALG_PGP_KEY_PATH",
    "WALG_GPG_KEY_ID",
    "WALG_CSE_KMS_ID",
    "WALG_ENVELOPE_PGP_KEY",
    "WALG_ENVELOPE_PGP_KEY_PATH",
    "YC_CSE_KMS_KEY_ID",
];

/// Where the object storage is and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageSpec {
    S3 {
        bucket: String,
        prefix: String,
        endpoint: Option<String>,
        region: String,
        path_style: bool,
        access_key_id: Option<String>,
        secret_access_key: Option<String>,
        session_token: Option<String>,
        /// Server-side encryption the bucket applies to what we store.
        sse: Option<Sse>,
        /// `x-amz-storage-class` of every object stored (`WALG_S3_STORAGE_CLASS`).
        storage_class: Option<String>,
    },
    File {
        root: PathBuf,
    },
    Gcs {
        bucket: String,
        prefix: String,
        credentials: Option<String>,
    },
    Azure {
        container: String,
        prefix: String,
        account: Option<String>,
        access_key: Option<String>,
    },
}

/// The validated settings every verb runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub storage: StorageSpec,
    pub codec: Codec,
    pub upload_concurrency: usize,
    pub download_concurrency: usize,
    /// Refuse to replace an archived file with different content (default on; WAL-G's
    /// default is off). `.history` files are always protected.
    pub prevent_wal_overwrite: bool,
    pub delta_max_steps: u32,
    /// What a delta builds on: the newest backup (`LATEST`), or the newest full one.
    pub delta_origin: DeltaOrigin,
    /// Check page checksums during backup-push when the cluster has them (default on; WAL-G
    /// checks only with `--verify`). `false` turns the check off.
    pub verify_page_checksums: bool,
    pub tar_size_threshold: u64,
    /// `WALG_DISK_RATE_LIMIT`: backup-push reads data files at most this many bytes per
    /// second (over all its workers).
    pub disk_rate_limit: Option<u64>,
    pub prefetch_dir: Option<PathBuf>,
    pub sentinel_user_data: Option<serde_json::Value>,
    pub pgdata: Option<PathBuf>,
    pub pg: PgConn,
    /// Deadline of one storage request (each retry gets it again).
    pub request_timeout: Duration,
    /// Deadline of a whole `wal-push`, so a hung storage never hangs the archiver.
    pub push_timeout: Duration,
    pub metrics_listen: Option<SocketAddr>,
    pub daemon_poll: Duration,
    /// How long a backup taken on a standby waits for the primary to archive the segment it
    /// ends in before it fails (the backup becomes visible only then).
    pub standby_wal_timeout: Duration,
    pub log: LogOptions,
    /// `[etcd]` and `[cluster]` of the TOML file: scheduled backups and status in etcd.
    pub cluster: Option<crate::cluster::ClusterSettings>,
    /// Every setting as given, by its WAL-G name, and `[etcd]`/`[cluster]` as parsed: what a
    /// reload compares (secrets included, so never logged).
    pub given: Given,
}

/// The settings' text as given (see [`Settings::given`]).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Given {
    pub settings: BTreeMap<&'static str, String>,
    pub cluster: Option<String>,
}

impl std::fmt::Debug for Given {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Given({} settings)", self.settings.len())
    }
}

/// What the upload-ahead loop reads for each upload: a reload applies these while it runs.
const RELOADABLE: [&str; 4] =
    ["WALG_UPLOAD_CONCURRENCY", "WALG_PREVENT_WAL_OVERWRITE", "WAL_SHIPPER_PUSH_TIMEOUT", "WAL_SHIPPER_DAEMON_POLL"];

impl Settings {
    /// The settings for the daemon after a reload (SIGHUP) to `new`: the upload-ahead loop's
    /// concurrency, overwrite protection, push deadline and poll interval, and the log level,
    /// apply to the next uploads; every other setting (the storage and its credentials,
    /// compression, encryption, what scheduled backups use, `[etcd]`/`[cluster]`, the metrics
    /// listener) keeps its running value and is named, by its WAL-G name, as needing a
    /// restart: WAL and backups must not go to different places or in different formats.
    /// (A `wal-push` or `backup-push` started by PostgreSQL or by hand reads the file anew.)
    pub fn reloaded(&self, new: &Settings) -> (Settings, Plan) {
        let mut p = Plan::default();
        let mut next = self.clone();
        p.runtime("WALG_UPLOAD_CONCURRENCY", &mut next.upload_concurrency, &new.upload_concurrency);
        p.runtime("WALG_PREVENT_WAL_OVERWRITE", &mut next.prevent_wal_overwrite, &new.prevent_wal_overwrite);
        p.runtime("WAL_SHIPPER_PUSH_TIMEOUT", &mut next.push_timeout, &new.push_timeout);
        p.runtime("WAL_SHIPPER_DAEMON_POLL", &mut next.daemon_poll, &new.daemon_poll);
        for k in RELOADABLE {
            match new.given.settings.get(k) {
                Some(v) => next.given.settings.insert(k, v.clone()),
                None => next.given.settings.remove(k),
            };
        }
        for k in KNOWN.iter().map(|k| k.env).filter(|k| !RELOADABLE.contains(k)) {
            p.restart(k, &self.given.settings.get(k), &new.given.settings.get(k));
        }
        p.restart("[etcd]/[cluster]", &self.given.cluster, &new.given.cluster);
        p.log_options(&mut next.log, &new.log);
        (next, p)
    }
}

/// S3 server-side encryption (`WALG_S3_SSE`, `WALG_S3_SSE_KMS_ID`, `WALG_S3_SSE_C`).
#[derive(Clone, PartialEq, Eq)]
pub enum Sse {
    /// `AES256`: keys managed by S3.
    S3,
    /// `aws:kms` or `aws:kms:dsse`, with a key id or the bucket's default key.
    Kms { dsse: bool, key_id: Option<String> },
    /// SSE-C: a customer key (base64), sent with every request.
    Customer { key_base64: String },
}

impl std::fmt::Debug for Sse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Sse::S3 => write!(f, "AES256"),
            Sse::Kms { dsse, key_id } => write!(f, "aws:kms{} {key_id:?}", if *dsse { ":dsse" } else { "" }),
            Sse::Customer { .. } => write!(f, "SSE-C (key not shown)"),
        }
    }
}

/// `WALG_DELTA_ORIGIN`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeltaOrigin {
    Latest,
    LatestFull,
}

/// libpq-style connection settings for `backup-push`.
#[derive(Debug, Clone, Default)]
pub struct PgConn {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub user: Option<String>,
    pub dbname: Option<String>,
    pub password: Option<String>,
}

/// A value and where it came from (for messages).
#[derive(Debug, Clone)]
struct Val {
    text: String,
    /// The name the user wrote it under: the variable, the JSON key or the TOML key.
    shown_as: String,
}

/// Errors loading settings, as the daemon config layer reports them.
pub use outrigger_daemon::config::ConfigError;

/// Reads the settings: `file` if given (JSON or TOML by extension), then the environment
/// `env` over it.
pub fn load(file: Option<&Path>, env: &dyn Fn(&str) -> Option<String>) -> Result<Settings, ConfigError> {
    let mut vals: BTreeMap<&'static str, Val> = BTreeMap::new();
    let mut problems = Problems::new();
    let mut log = LogSection::default();
    let mut cluster = None;
    let mut cluster_given = None;
    let mut refused: Vec<String> = Vec::new();
    let mut ignored: Vec<String> = Vec::new();
    let shown = file.map(|p| p.display().to_string()).unwrap_or_else(|| "(environment)".into());
    if let Some(path) = file {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Unreadable { path: shown.clone(), source })?;
        let is_json = path.extension().is_some_and(|e| e == "json");
        // Each setting as text; `None` for a value that is not a scalar.
        let table: Vec<(String, Option<String>)> = if is_json {
            let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| ConfigError::Syntax {
                path: shown.clone(),
                format: "JSON",
                message: format!("line {}, column {}: not valid JSON ({:?})", e.line(), e.column(), e.classify()),
            })?;
            match v {
                serde_json::Value::Object(m) => m.into_iter().map(|(k, v)| (k, json_text(v))).collect(),
                _ => {
                    return Err(ConfigError::Invalid {
                        path: shown,
                        problems: vec![Problem::key_only("(file)", "must be a JSON object of WAL-G settings")],
                    });
                }
            }
        } else {
            let mut table: toml::Table = outrigger_daemon::config::parse_toml(&shown, &text)?;
            if let Some(l) = table.remove("log") {
                log = read_log_table(l, &mut problems);
            }
            let (etcd, cl) = (table.remove("etcd"), table.remove("cluster"));
            cluster_given = (etcd.is_some() || cl.is_some()).then(|| format!("{etcd:?} {cl:?}"));
            cluster = crate::cluster::read(etcd, cl, &mut problems);
            table.into_iter().map(|(k, v)| (k, toml_text(v))).collect()
        };
        for (key, value) in table {
            let Some(text) = value else {
                problems.push_key(&key, "must be a string, a number or a boolean");
                continue;
            };
            let found = KNOWN.iter().find(|k| {
                if is_json {
                    k.env.eq_ignore_ascii_case(&key) || k.aliases.iter().any(|a| a.eq_ignore_ascii_case(&key))
                } else {
                    k.toml == key
                }
            });
            match found {
                Some(k) => {
                    vals.insert(k.env, Val { text, shown_as: key });
                }
                None if REFUSED.iter().any(|r| r.eq_ignore_ascii_case(&key)) => refused.push(key),
                // A WAL-G config file may name settings of features wal-shipper does not have;
                // they change nothing here, and a WARN says so at start.
                None if is_json => ignored.push(key),
                None => problems.push_key(key, "unknown key (see the example config for the keys there are)"),
            }
        }
    }
    for k in KNOWN {
        for name in std::iter::once(&k.env).chain(k.aliases) {
            if let Some(text) = env(name) {
                vals.insert(k.env, Val { text, shown_as: (*name).to_owned() });
                break;
            }
        }
    }
    for r in REFUSED {
        if env(r).is_some() {
            refused.push((*r).to_owned());
        }
    }
    for r in refused {
        problems.push_key(r, "is not supported by wal-shipper (only WALG_LIBSODIUM_KEY encryption is); refusing rather than uploading plaintext");
    }
    let mut s = validate(&vals, &log, &mut problems);
    if let Some(s) = &mut s {
        if let Some(c) = &cluster
            && c.policy.as_ref().is_some_and(|p| p.delta.is_some())
            && s.delta_max_steps == 0
        {
            problems.push(
                "cluster.delta_backup",
                "(set)",
                "needs delta_max_steps (WALG_DELTA_MAX_STEPS) of at least 1, or every backup would be full",
            );
        }
        s.cluster = cluster;
        s.given.cluster = cluster_given;
    }
    match (problems.finish(()), s) {
        (Ok(()), Some(s)) => {
            for key in ignored {
                tracing::warn!(key = %key, "setting not used by wal-shipper; ignored");
            }
            Ok(s)
        }
        (Err(problems), _) => Err(ConfigError::Invalid { path: shown, problems }),
        (Ok(()), None) => Err(ConfigError::Invalid { path: shown, problems: vec![] }),
    }
}

/// `[log]` of the TOML file, with its unknown keys reported.
fn read_log_table(v: toml::Value, problems: &mut Problems) -> LogSection {
    let toml::Value::Table(t) = v else {
        problems.push_key("log", "must be a table ([log])");
        return LogSection::default();
    };
    for k in t.keys().filter(|k| !["level", "format"].contains(&k.as_str())) {
        problems.push_key(format!("log.{k}"), "unknown key (see the example config for the keys there are)");
    }
    let pick = |k: &str, problems: &mut Problems| match t.get(k) {
        None => None,
        Some(toml::Value::String(s)) => Some(s.clone()),
        Some(_) => {
            problems.push_key(format!("log.{k}"), "must be a string");
            None
        }
    };
    LogSection { level: pick("level", problems), format: pick("format", problems) }
}

/// A JSON setting as text; `None` for objects, arrays and null (not settings).
fn json_text(v: serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A TOML setting as text; `None` for tables, arrays and dates (not settings).
fn toml_text(v: toml::Value) -> Option<String> {
    match v {
        toml::Value::String(s) => Some(s),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

struct Reader<'a> {
    vals: &'a BTreeMap<&'static str, Val>,
    p: &'a mut Problems,
}

impl Reader<'_> {
    fn text(&self, env: &str) -> Option<String> {
        self.vals.get(env).map(|v| v.text.clone()).filter(|t| !t.is_empty())
    }

    fn shown(&self, env: &str, v: &Val) -> String {
        let secret = KNOWN.iter().any(|k| k.env == env && k.secret);
        if secret { "(hidden)".into() } else { v.text.clone() }
    }

    fn bad(&mut self, env: &str, rule: &str) {
        if let Some(v) = self.vals.get(env) {
            let shown = self.shown(env, v);
            self.p.push(v.shown_as.clone(), shown, rule);
        }
    }

    fn number<T: std::str::FromStr + PartialOrd + Copy>(&mut self, env: &str, default: T, min: T, rule: &str) -> T {
        match self.text(env) {
            None => default,
            Some(t) => match t.trim().parse::<T>() {
                Ok(n) if n >= min => n,
                _ => {
                    self.bad(env, rule);
                    default
                }
            },
        }
    }

    fn boolean(&mut self, env: &str, default: bool) -> bool {
        match self.text(env).map(|t| t.trim().to_ascii_lowercase()) {
            None => default,
            Some(t) if ["true", "1", "yes", "on"].contains(&t.as_str()) => true,
            Some(t) if ["false", "0", "no", "off"].contains(&t.as_str()) => false,
            Some(_) => {
                self.bad(env, "must be true or false");
                default
            }
        }
    }

    fn duration(&mut self, env: &str, default: Duration) -> Duration {
        match self.text(env) {
            None => default,
            Some(t) => match humantime::parse_duration(t.trim()) {
                Ok(d) if !d.is_zero() => d,
                _ => {
                    self.bad(env, "must be a duration such as 30s or 2m");
                    default
                }
            },
        }
    }
}

/// `s3://bucket/path` → (bucket, path without trailing slash).
fn split_url(url: &str, scheme: &str) -> Option<(String, String)> {
    let rest = url.strip_prefix(scheme)?;
    let (bucket, path) = rest.split_once('/').unwrap_or((rest, ""));
    (!bucket.is_empty()).then(|| (bucket.to_owned(), path.trim_matches('/').to_owned()))
}

fn validate(vals: &BTreeMap<&'static str, Val>, log: &LogSection, p: &mut Problems) -> Option<Settings> {
    let mut r = Reader { vals, p };
    let storage_keys = ["WALG_S3_PREFIX", "WALG_FILE_PREFIX", "WALG_GS_PREFIX", "WALG_AZ_PREFIX"];
    let given: Vec<&str> = storage_keys.iter().copied().filter(|k| r.text(k).is_some()).collect();
    if given.len() > 1 {
        let names = given.join(", ");
        r.p.push_key(given[1], format!("only one storage may be set (found {names})"));
    }
    let storage = match given.first().copied() {
        None => {
            r.p.push_key(
                "WALG_S3_PREFIX",
                "one of WALG_S3_PREFIX, WALG_FILE_PREFIX, WALG_GS_PREFIX, WALG_AZ_PREFIX must be set",
            );
            None
        }
        Some("WALG_S3_PREFIX") => {
            let url = r.text("WALG_S3_PREFIX").unwrap_or_default();
            match split_url(&url, "s3://") {
                None => {
                    r.bad("WALG_S3_PREFIX", "must be s3://bucket[/path]");
                    None
                }
                Some((bucket, prefix)) => {
                    let endpoint = r.text("AWS_ENDPOINT");
                    if let Some(e) = &endpoint
                        && !(e.starts_with("http://") || e.starts_with("https://"))
                    {
                        r.bad("AWS_ENDPOINT", "must start with http:// or https://");
                    }
                    let sse = read_sse(&mut r);
                    let storage_class = r.text("WALG_S3_STORAGE_CLASS").map(|c| c.trim().to_owned());
                    if let Some(c) = &storage_class
                        && (c.is_empty() || !c.bytes().all(|b| b.is_ascii_uppercase() || b == b'_'))
                    {
                        r.bad("WALG_S3_STORAGE_CLASS", "must be an S3 storage class such as STANDARD or STANDARD_IA");
                    }
                    Some(StorageSpec::S3 {
                        sse,
                        storage_class,
                        bucket,
                        prefix,
                        path_style: r.boolean("AWS_S3_FORCE_PATH_STYLE", false),
                        region: r.text("AWS_REGION").unwrap_or_else(|| "us-east-1".into()),
                        endpoint,
                        access_key_id: r.text("AWS_ACCESS_KEY_ID"),
                        secret_access_key: r.text("AWS_SECRET_ACCESS_KEY"),
                        session_token: r.text("AWS_SESSION_TOKEN"),
                    })
                }
            }
        }
        Some("WALG_FILE_PREFIX") => {
            let root = PathBuf::from(r.text("WALG_FILE_PREFIX").unwrap_or_default());
            if !root.is_absolute() {
                r.bad("WALG_FILE_PREFIX", "must be an absolute path");
            }
            Some(StorageSpec::File { root })
        }
        Some("WALG_GS_PREFIX") => match split_url(&r.text("WALG_GS_PREFIX").unwrap_or_default(), "gs://") {
            None => {
                r.bad("WALG_GS_PREFIX", "must be gs://bucket[/path]");
                None
            }
            Some((bucket, prefix)) => {
                Some(StorageSpec::Gcs { bucket, prefix, credentials: r.text("GOOGLE_APPLICATION_CREDENTIALS") })
            }
        },
        Some(_) => match split_url(&r.text("WALG_AZ_PREFIX").unwrap_or_default(), "azure://") {
            None => {
                r.bad("WALG_AZ_PREFIX", "must be azure://container[/path]");
                None
            }
            Some((container, prefix)) => Some(StorageSpec::Azure {
                container,
                prefix,
                account: r.text("AZURE_STORAGE_ACCOUNT"),
                access_key: r.text("AZURE_STORAGE_ACCESS_KEY"),
            }),
        },
    };

    let method = match r.text("WALG_COMPRESSION_METHOD") {
        None => Method::Lz4,
        Some(t) => match Method::parse(t.trim()) {
            Some(Method::Brotli) => {
                r.bad("WALG_COMPRESSION_METHOD", "brotli is read-only here; write with lz4, zstd or none");
                Method::Lz4
            }
            Some(m) => m,
            None => {
                r.bad("WALG_COMPRESSION_METHOD", "must be lz4, zstd or none (brotli objects are read)");
                Method::Lz4
            }
        },
    };
    let zstd_level = match r.text("WALG_ZSTD_LEVEL").as_deref().map(str::trim) {
        None | Some("fastest") => 1,
        Some("default") => 3,
        Some("better") => 7,
        Some("best") => 11,
        Some(n) => match n.parse::<i32>() {
            Ok(l) if (1..=22).contains(&l) => l,
            _ => {
                r.bad("WALG_ZSTD_LEVEL", "must be fastest, default, better, best or a level 1..22");
                1
            }
        },
    };
    let key = read_key(&mut r);
    let upload_concurrency = r.number("WALG_UPLOAD_CONCURRENCY", 16usize, 1, "must be an integer >= 1");
    let download_concurrency = r.number("WALG_DOWNLOAD_CONCURRENCY", 10usize, 1, "must be an integer >= 1");
    // WAL-G settings wal-shipper has no use for (its disk reads and background uploads are
    // bounded by the two above): still checked, so a WAL-G config with a bad value is refused.
    r.number("WALG_UPLOAD_DISK_CONCURRENCY", 1usize, 1, "must be an integer >= 1");
    r.number("TOTAL_BG_UPLOADED_LIMIT", 32usize, 1, "must be an integer >= 1");
    let prevent_wal_overwrite = r.boolean("WALG_PREVENT_WAL_OVERWRITE", true);
    let delta_max_steps = r.number("WALG_DELTA_MAX_STEPS", 0u32, 0, "must be an integer >= 0");
    let delta_origin = match r.text("WALG_DELTA_ORIGIN").as_deref().map(str::trim) {
        None | Some("LATEST") => DeltaOrigin::Latest,
        Some("LATEST_FULL") => DeltaOrigin::LatestFull,
        Some(_) => {
            r.bad("WALG_DELTA_ORIGIN", "must be LATEST or LATEST_FULL");
            DeltaOrigin::Latest
        }
    };
    let verify_page_checksums = r.boolean("WALG_VERIFY_PAGE_CHECKSUMS", true);
    let tar_size_threshold =
        r.number("WALG_TAR_SIZE_THRESHOLD", (1u64 << 30) - 1, 1 << 20, "must be a byte count >= 1048576");
    let disk_rate_limit = r
        .text("WALG_DISK_RATE_LIMIT")
        .map(|_| r.number("WALG_DISK_RATE_LIMIT", 0u64, 1, "must be a byte rate >= 1 (bytes per second)"));
    let sentinel_user_data = r
        .text("WALG_SENTINEL_USER_DATA")
        .map(|t| serde_json::from_str::<serde_json::Value>(&t).unwrap_or(serde_json::Value::String(t)));
    let pgport = match r.text("PGPORT") {
        None => None,
        Some(t) => match t.trim().parse::<u16>() {
            Ok(p) if p > 0 => Some(p),
            _ => {
                r.bad("PGPORT", "must be a port number 1..65535");
                None
            }
        },
    };
    let pg = PgConn {
        host: r.text("PGHOST"),
        port: pgport,
        user: r.text("PGUSER"),
        dbname: r.text("PGDATABASE"),
        password: r.text("PGPASSWORD"),
    };
    let request_timeout = r.duration("WAL_SHIPPER_REQUEST_TIMEOUT", Duration::from_secs(30));
    let push_timeout = r.duration("WAL_SHIPPER_PUSH_TIMEOUT", Duration::from_secs(120));
    let daemon_poll = r.duration("WAL_SHIPPER_DAEMON_POLL", Duration::from_millis(100));
    let metrics_listen = r.text("WAL_SHIPPER_METRICS_LISTEN").and_then(|t| match t.trim().parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            r.bad("WAL_SHIPPER_METRICS_LISTEN", "must be an address:port such as 127.0.0.1:9187");
            None
        }
    });
    let standby_wal_timeout = r.duration("WAL_SHIPPER_STANDBY_WAL_TIMEOUT", Duration::from_secs(600));
    let log = log.validate(r.p);
    Some(Settings {
        storage: storage?,
        codec: Codec { method, zstd_level, key },
        upload_concurrency,
        download_concurrency,
        prevent_wal_overwrite,
        delta_max_steps,
        delta_origin,
        verify_page_checksums,
        tar_size_threshold,
        disk_rate_limit: disk_rate_limit.filter(|r| *r > 0),
        prefetch_dir: r.text("WALG_PREFETCH_DIR").map(PathBuf::from),
        sentinel_user_data,
        pgdata: r.text("PGDATA").map(PathBuf::from),
        pg,
        request_timeout,
        push_timeout,
        metrics_listen,
        daemon_poll,
        standby_wal_timeout,
        log,
        cluster: None,
        given: Given { settings: vals.iter().map(|(k, v)| (*k, v.text.clone())).collect(), cluster: None },
    })
}

fn read_sse(r: &mut Reader<'_>) -> Option<Sse> {
    let kms_id = r.text("WALG_S3_SSE_KMS_ID").map(|k| k.trim().to_owned());
    let customer = r.text("WALG_S3_SSE_C").map(|k| k.trim().to_owned());
    let sse = match r.text("WALG_S3_SSE").as_deref().map(str::trim) {
        None => None,
        Some("AES256") => Some(Sse::S3),
        Some("aws:kms") => Some(Sse::Kms { dsse: false, key_id: kms_id.clone() }),
        Some("aws:kms:dsse") => Some(Sse::Kms { dsse: true, key_id: kms_id.clone() }),
        Some(_) => {
            r.bad("WALG_S3_SSE", "must be AES256, aws:kms or aws:kms:dsse");
            None
        }
    };
    if kms_id.is_some() && !matches!(sse, Some(Sse::Kms { .. })) {
        r.bad("WALG_S3_SSE_KMS_ID", "is used only with WALG_S3_SSE=aws:kms (or aws:kms:dsse)");
    }
    match (sse, customer) {
        (Some(_), Some(_)) => {
            r.bad("WALG_S3_SSE_C", "cannot be combined with WALG_S3_SSE: one server-side encryption at a time");
            None
        }
        (None, Some(key)) => {
            use base64::Engine;
            match base64::engine::general_purpose::STANDARD.decode(&key) {
                Ok(k) if k.len() == 32 => Some(Sse::Customer { key_base64: key }),
                _ => {
                    r.bad("WALG_S3_SSE_C", "must be a 256-bit key in base64 (44 characters)");
                    None
                }
            }
        }
        (sse, None) => sse,
    }
}

fn read_key(r: &mut Reader<'_>) -> Option<Key> {
    let transform = match r.text("WALG_LIBSODIUM_KEY_TRANSFORM") {
        None => KeyTransform::None,
        Some(t) => match KeyTransform::parse(t.trim()) {
            Some(t) => t,
            None => {
                r.bad("WALG_LIBSODIUM_KEY_TRANSFORM", "must be none, hex or base64");
                return None;
            }
        },
    };
    let (text, env) = match (r.text("WALG_LIBSODIUM_KEY"), r.text("WALG_LIBSODIUM_KEY_PATH")) {
        (None, None) => return None,
        (Some(_), Some(_)) => {
            r.bad("WALG_LIBSODIUM_KEY_PATH", "set either WALG_LIBSODIUM_KEY or WALG_LIBSODIUM_KEY_PATH, not both");
            return None;
        }
        (Some(k), None) => (k, "WALG_LIBSODIUM_KEY"),
        (None, Some(path)) => match std::fs::read_to_string(&path) {
            // A key file usually ends in a newline that is not part of the key.
            Ok(k) => (k.trim_end_matches(['\n', '\r']).to_owned(), "WALG_LIBSODIUM_KEY_PATH"),
            Err(e) => {
                r.bad("WALG_LIBSODIUM_KEY_PATH", &format!("must name a readable file ({e})"));
                return None;
            }
        },
    };
    match Key::from_text(&text, transform) {
        Ok(k) => Some(k),
        Err(rule) => {
            r.bad(env, &format!("the key {rule}"));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect();
        move |k: &str| m.get(k).cloned()
    }

    fn problems(e: ConfigError) -> Vec<String> {
        match e {
            ConfigError::Invalid { problems, .. } => problems.iter().map(|p| p.to_string()).collect(),
            other => vec![other.to_string()],
        }
    }

    #[test]
    fn a_reload_applies_the_upload_loops_settings_and_names_storage_and_codec_changes() {
        let old = load(None, &env_of(&[("WALG_S3_PREFIX", "s3://b/p"), ("WALG_UPLOAD_CONCURRENCY", "2")])).unwrap();
        let new = load(
            None,
            &env_of(&[
                ("WALG_S3_PREFIX", "s3://b/other"),
                ("WALG_UPLOAD_CONCURRENCY", "8"),
                ("WALG_COMPRESSION_METHOD", "zstd"),
                ("WALG_LIBSODIUM_KEY", "0123456789abcdef0123456789abcdef"),
            ]),
        )
        .unwrap();
        let (next, plan) = old.reloaded(&new);
        assert_eq!(plan.applied, ["WALG_UPLOAD_CONCURRENCY"]);
        assert_eq!(plan.need_restart, ["WALG_S3_PREFIX", "WALG_COMPRESSION_METHOD", "WALG_LIBSODIUM_KEY"]);
        assert_eq!(next.upload_concurrency, 8);
        assert_eq!(format!("{:?}", next.storage), format!("{:?}", old.storage), "the bucket stays until a restart");
        assert_eq!(next.codec.method, old.codec.method);
        // Reloading the same again: the applied key is now the running one.
        let (_, again) = next.reloaded(&new);
        assert!(again.applied.is_empty(), "{:?}", again.applied);
    }

    #[test]
    fn walg_environment_alone_is_enough() {
        let env = env_of(&[
            ("WALG_S3_PREFIX", "s3://backups/cluster1/"),
            ("AWS_ENDPOINT", "http://127.0.0.1:8333"),
            ("AWS_S3_FORCE_PATH_STYLE", "true"),
            ("WALG_COMPRESSION_METHOD", "zstd"),
            ("WALG_UPLOAD_CONCURRENCY", "4"),
        ]);
        let s = load(None, &env).expect("valid");
        match &s.storage {
            StorageSpec::S3 { bucket, prefix, path_style, endpoint, .. } => {
                assert_eq!((bucket.as_str(), prefix.as_str(), *path_style), ("backups", "cluster1", true));
                assert_eq!(endpoint.as_deref(), Some("http://127.0.0.1:8333"));
            }
            other => panic!("not s3: {other:?}"),
        }
        assert_eq!(s.codec.method, Method::Zstd);
        assert_eq!(s.upload_concurrency, 4);
        assert!(s.prevent_wal_overwrite, "overwrite protection is on by default");
    }

    #[test]
    fn s3_server_side_encryption_and_storage_class_follow_walg() {
        let base = [("WALG_S3_PREFIX", "s3://b/p")];
        let with = |extra: &[(&'static str, &'static str)]| {
            let pairs: Vec<(&str, &str)> = base.iter().chain(extra).copied().collect();
            load(None, &env_of(&pairs))
        };
        let s =
            with(&[("WALG_S3_SSE", "aws:kms"), ("WALG_S3_SSE_KMS_ID", "k1"), ("WALG_S3_STORAGE_CLASS", "STANDARD_IA")])
                .expect("valid");
        match s.storage {
            StorageSpec::S3 { sse, storage_class, .. } => {
                assert_eq!(sse, Some(Sse::Kms { dsse: false, key_id: Some("k1".into()) }));
                assert_eq!(storage_class.as_deref(), Some("STANDARD_IA"));
            }
            other => panic!("not s3: {other:?}"),
        }
        let key = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="; // 32 bytes
        assert!(with(&[("S3_SSE_C", key)]).is_ok(), "WAL-G's short alias");
        for (bad, names) in [
            (vec![("WALG_S3_SSE", "false")], "WALG_S3_SSE (false): must be AES256"),
            (vec![("WALG_S3_SSE_KMS_ID", "k1")], "WALG_S3_SSE_KMS_ID (k1): is used only with"),
            (vec![("WALG_S3_SSE_C", "c2hvcnQ=")], "WALG_S3_SSE_C ((hidden)): must be a 256-bit key"),
            (vec![("WALG_S3_SSE", "AES256"), ("WALG_S3_SSE_C", key)], "cannot be combined"),
            (vec![("WALG_S3_STORAGE_CLASS", "glacier")], "WALG_S3_STORAGE_CLASS (glacier)"),
        ] {
            let p = problems(with(&bad).expect_err("refused"));
            assert!(p.iter().any(|l| l.contains(names)), "{bad:?}: {p:?}");
            assert!(!p.iter().any(|l| l.contains(key)), "the customer key is never echoed: {p:?}");
        }
    }

    #[test]
    fn environment_overrides_a_walg_json_file() {
        let dir = tempfile::tempdir().expect("tmp");
        let f = dir.path().join("walg.json");
        std::fs::write(
            &f,
            r#"{"WALG_FILE_PREFIX": "/var/backups/x", "WALG_UPLOAD_CONCURRENCY": 3, "WALG_COMPRESSION_METHOD": "lz4"}"#,
        )
        .expect("write");
        let s = load(Some(&f), &env_of(&[("WALG_COMPRESSION_METHOD", "none")])).expect("valid");
        assert_eq!(s.storage, StorageSpec::File { root: "/var/backups/x".into() });
        assert_eq!(s.upload_concurrency, 3);
        assert_eq!(s.codec.method, Method::None);
    }

    #[test]
    fn toml_file_uses_lower_case_names_and_rejects_unknown_keys() {
        let dir = tempfile::tempdir().expect("tmp");
        let f = dir.path().join("w.toml");
        std::fs::write(&f, "s3_prefix = \"s3://b/p\"\nupload_concurrency = 2\n[log]\nlevel = \"debug\"\n").expect("w");
        let s = load(Some(&f), &env_of(&[])).expect("valid");
        assert_eq!(s.upload_concurrency, 2);
        std::fs::write(&f, "s3_prefix = \"s3://b/p\"\nupload_concurency = 2\n").expect("w");
        let p = problems(load(Some(&f), &env_of(&[])).expect_err("typo"));
        assert!(p.iter().any(|l| l.contains("upload_concurency") && l.contains("unknown key")), "{p:?}");
    }

    #[test]
    fn bad_values_name_key_value_and_rule() {
        let env = env_of(&[
            ("WALG_S3_PREFIX", "backups"),
            ("WALG_COMPRESSION_METHOD", "lzo"),
            ("WALG_UPLOAD_CONCURRENCY", "0"),
            ("WALG_PREVENT_WAL_OVERWRITE", "maybe"),
        ]);
        let p = problems(load(None, &env).expect_err("invalid"));
        let want = [
            "WALG_S3_PREFIX (backups): must be s3://bucket[/path]",
            "WALG_COMPRESSION_METHOD (lzo): must be lz4, zstd or none (brotli objects are read)",
            "WALG_UPLOAD_CONCURRENCY (0): must be an integer >= 1",
            "WALG_PREVENT_WAL_OVERWRITE (maybe): must be true or false",
        ];
        for w in want {
            assert!(p.iter().any(|l| l.contains(w)), "missing {w:?} in {p:?}");
        }
    }

    #[test]
    fn a_short_key_is_refused_without_echoing_it() {
        let env = env_of(&[("WALG_FILE_PREFIX", "/b"), ("WALG_LIBSODIUM_KEY", "tooshort-secret")]);
        let p = problems(load(None, &env).expect_err("invalid"));
        assert!(p.iter().any(|l| l.contains("WALG_LIBSODIUM_KEY") && l.contains("at least 25 bytes")), "{p:?}");
        assert!(p.iter().all(|l| !l.contains("tooshort-secret")), "secret echoed: {p:?}");
    }

    #[test]
    fn pgp_encryption_is_refused_rather_than_ignored() {
        let env = env_of(&[("WALG_FILE_PREFIX", "/b"), ("WALG_PGP_KEY_PATH", "/k")]);
        let p = problems(load(None, &env).expect_err("invalid"));
        assert!(p.iter().any(|l| l.contains("WALG_PGP_KEY_PATH") && l.contains("not supported")), "{p:?}");
    }

    #[test]
    fn no_storage_at_all_is_named() {
        let p = problems(load(None, &env_of(&[])).expect_err("invalid"));
        assert!(p.iter().any(|l| l.contains("must be set")), "{p:?}");
    }
}
