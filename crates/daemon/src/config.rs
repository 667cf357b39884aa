//! Config files: TOML → raw serde struct → validated struct.
//!
//! Unknown keys are **errors**, not warnings: in an HA config a misspelt key (say `ttl_ms` for
//! `ttl`) silently replaced by a default is a hazard, and a daemon that refuses to start is the
//! safer failure. Every problem found is reported, not only the first.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;

/// One thing wrong with a config: which key, what value it had, and the rule it broke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    /// `None` where the problem is the key itself (unknown, missing, wrong type).
    pub value: Option<String>,
    pub rule: String,
}

impl Problem {
    /// A problem with the key's value; the value of a secret key ([`secret_key`]) is never
    /// kept, so no message can show it.
    pub fn new(key: impl Into<String>, value: impl fmt::Display, rule: impl Into<String>) -> Self {
        let key = key.into();
        let value = value.to_string();
        // An empty value gives nothing away, and saying it is empty is the point.
        let value = if secret_key(&key) && !value.is_empty() && value != "\"\"" {
            "(a secret, not shown)".to_owned()
        } else {
            value
        };
        Self { key, value: Some(value), rule: rule.into() }
    }

    pub fn key_only(key: impl Into<String>, rule: impl Into<String>) -> Self {
        Self { key: key.into(), value: None, rule: rule.into() }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            None => write!(f, "{}: {}", self.key, self.rule),
            Some(v) if v.is_empty() => write!(f, "{} (\"\"): {}", self.key, self.rule),
            Some(v) => write!(f, "{} ({}): {}", self.key, v, self.rule),
        }
    }
}

/// Why a config file could not be loaded. Each kind has its own exit code (see [`crate::cli`]).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Unreadable {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path} is not valid {format}: {message}")]
    Syntax { path: String, format: &'static str, message: String },
    #[error("config file {path} has {} problem(s):\n{}", problems.len(), render(problems))]
    Invalid { path: String, problems: Vec<Problem> },
}

fn render(problems: &[Problem]) -> String {
    problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n")
}

impl ConfigError {
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Invalid { problems, .. } => problems,
            _ => &[],
        }
    }
}

/// Collects problems while validating, so that all of them are reported at once.
#[derive(Debug, Default)]
pub struct Problems(Vec<Problem>);

impl Problems {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, key: impl Into<String>, value: impl fmt::Display, rule: impl Into<String>) {
        self.0.push(Problem::new(key, value, rule));
    }

    /// A problem with the key itself: missing where it is required, or not allowed here.
    pub fn push_key(&mut self, key: impl Into<String>, rule: impl Into<String>) {
        self.0.push(Problem::key_only(key, rule));
    }

    pub fn extend(&mut self, other: Problems) {
        self.0.extend(other.0);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn into_vec(self) -> Vec<Problem> {
        self.0
    }

    /// `Ok(value)` if nothing was found, else the problems.
    pub fn finish<T>(self, value: T) -> Result<T, Vec<Problem>> {
        if self.0.is_empty() { Ok(value) } else { Err(self.0) }
    }

    /// Checks `cond`; records `rule` against `key` when it does not hold.
    pub fn check(&mut self, cond: bool, key: &str, value: impl fmt::Display, rule: &str) {
        if !cond {
            self.push(key, value, rule);
        }
    }
}

/// A validated config built from a raw one. `validate` reports every problem it finds.
pub trait Validate {
    type Valid;
    fn validate(&self) -> Result<Self::Valid, Vec<Problem>>;
    /// Reads a config file's text (`path` as shown): TOML, unless a daemon reads another
    /// format too (ha-agent reads Patroni's YAML).
    fn parse(path: &str, text: &str) -> Result<Self, ConfigError>
    where
        Self: Sized + DeserializeOwned,
    {
        parse_toml(path, text)
    }
}

/// Parses TOML text into `Raw`, turning unknown keys and type errors into problems.
pub fn parse_toml<Raw: DeserializeOwned>(path: &str, text: &str) -> Result<Raw, ConfigError> {
    let mut unknown = Vec::new();
    let de = toml::Deserializer::parse(text).map_err(|e| ConfigError::Syntax {
        path: path.to_owned(),
        format: "TOML",
        message: syntax_message(text, &e),
    })?;
    let raw: Result<Raw, _> = serde_ignored::deserialize(de, |p| unknown.push(p.to_string()));
    match raw {
        Ok(raw) if unknown.is_empty() => Ok(raw),
        Ok(_) => Err(ConfigError::Invalid {
            path: path.to_owned(),
            problems: unknown.into_iter().map(unknown_key).collect(),
        }),
        Err(e) => {
            // A type error (wrong type, bad duration, missing key): serde names the key only in
            // its message, so we report the message as the rule against the key path toml gives.
            let key = e.span().map(|s| key_at(text, s.start)).unwrap_or_default();
            // serde's message quotes the value ("invalid type: integer `1234`"): not for a secret.
            let message = if secret_key(&key) {
                "has the wrong type (the value is not shown: it is a secret)".to_owned()
            } else {
                one_line(e.message())
            };
            let mut problems = vec![Problem::key_only(if key.is_empty() { "(file)".to_owned() } else { key }, message)];
            problems.extend(unknown.into_iter().map(unknown_key));
            Err(ConfigError::Invalid { path: path.to_owned(), problems })
        }
    }
}

/// Where the syntax error is and what it is, without the text of the line: a config line can
/// hold a password, and this message goes to logs (a reload on SIGHUP logs it).
fn syntax_message(text: &str, e: &toml::de::Error) -> String {
    let at = e.span().map(|s| {
        let before = &text[..s.start.min(text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.rfind('\n').map_or(before.len(), |i| before.len() - i - 1) + 1;
        format!("line {line}, column {column}: ")
    });
    format!("{}{}", at.unwrap_or_default(), one_line(e.message()))
}

/// Whether a config key holds a secret (its value is never shown in a problem).
pub fn secret_key(key: &str) -> bool {
    let last = key.rsplit('.').next().unwrap_or(key).to_ascii_lowercase();
    ["password", "passphrase", "auth_pass", "secret", "token", "key_data"].iter().any(|s| last.contains(s))
        || last == "key"
        || last.ends_with("_key") && !last.ends_with("file_key")
}

fn unknown_key(key: String) -> Problem {
    Problem::key_only(key, "unknown key (see the example config for the keys there are)")
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The `key` (with its `[table]`) on the line where a type error was found.
fn key_at(text: &str, offset: usize) -> String {
    let before = &text[..offset.min(text.len())];
    let table = before.lines().rev().find_map(|l| {
        l.trim().strip_prefix('[').and_then(|l| l.strip_suffix(']')).map(|t| t.trim_matches(['[', ']']).to_owned())
    });
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("");
    let key = line.split('=').next().unwrap_or("").trim().to_owned();
    match (table, key.is_empty() || key.starts_with('[')) {
        (Some(t), false) => format!("{t}.{key}"),
        (None, false) => key,
        (Some(t), true) => t,
        (None, true) => String::new(),
    }
}

/// Reads, parses and validates a config file.
pub fn load<Raw: DeserializeOwned + Validate>(path: &Path) -> Result<Raw::Valid, ConfigError> {
    let shown = path.display().to_string();
    let text =
        std::fs::read_to_string(path).map_err(|source| ConfigError::Unreadable { path: shown.clone(), source })?;
    let raw = Raw::parse(&shown, &text)?;
    raw.validate().map_err(|problems| ConfigError::Invalid { path: shown, problems })
}

/// `[log]`, shared by every daemon.
#[derive(Debug, Clone, Deserialize, Default)]
pub struct LogSection {
    /// `error`, `warn`, `info`, `debug`, `trace`, or a full `RUST_LOG`-style filter.
    pub level: Option<String>,
    /// `text` (default) or `json`.
    pub format: Option<String>,
}

impl LogSection {
    pub fn validate(&self, problems: &mut Problems) -> crate::logging::LogOptions {
        let format = match self.format.as_deref() {
            None | Some("text") => crate::logging::LogFormat::Text,
            Some("json") => crate::logging::LogFormat::Json,
            Some(other) => {
                problems.push("log.format", other, "must be \"text\" or \"json\"");
                crate::logging::LogFormat::Text
            }
        };
        if let Some(level) = &self.level
            && let Err(e) = tracing_subscriber::EnvFilter::try_new(level)
        {
            problems.push("log.level", level, format!("must be a level or a RUST_LOG filter ({e})"));
        }
        crate::logging::LogOptions { format, level: self.level.clone() }
    }
}

/// `[etcd]`, shared by every daemon that reads or writes cluster keys.
#[derive(Debug, Clone, Deserialize)]
pub struct EtcdSection {
    /// `http://host:port` or `https://host:port`; several for a cluster.
    pub endpoints: Vec<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub ca_file: Option<std::path::PathBuf>,
    pub cert_file: Option<std::path::PathBuf>,
    pub key_file: Option<std::path::PathBuf>,
    #[serde(default, with = "humantime_serde::option")]
    pub request_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde::option")]
    pub connect_timeout: Option<Duration>,
}

impl EtcdSection {
    pub fn validate(&self, problems: &mut Problems) -> outrigger_etcd::ConnectOptions {
        problems.check(!self.endpoints.is_empty(), "etcd.endpoints", "[]", "must list at least one endpoint");
        let any_https = self.endpoints.iter().any(|e| e.starts_with("https://"));
        for (i, ep) in self.endpoints.iter().enumerate() {
            let ok = ep
                .strip_prefix("http://")
                .or_else(|| ep.strip_prefix("https://"))
                .and_then(|hp| hp.rsplit_once(':'))
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
            problems.check(ok, &format!("etcd.endpoints[{i}]"), ep, "must be http://host:port or https://host:port");
        }
        if any_https && self.endpoints.iter().any(|e| e.starts_with("http://")) {
            problems.push("etcd.endpoints", self.endpoints.join(","), "must not mix http:// and https://");
        }
        let user = match (&self.username, &self.password) {
            (Some(u), Some(p)) => Some((u.clone(), p.clone())),
            (None, None) => None,
            (Some(u), None) => {
                problems.push_key("etcd.password", format!("must be set when etcd.username ({u}) is"));
                None
            }
            (None, Some(_)) => {
                problems.push_key("etcd.username", "must be set when etcd.password is");
                None
            }
        };
        let any_tls_file = self.ca_file.is_some() || self.cert_file.is_some() || self.key_file.is_some();
        if any_tls_file && !any_https {
            problems.push(
                "etcd.endpoints",
                self.endpoints.join(","),
                "must use https:// when ca_file, cert_file or key_file is set",
            );
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            problems.push_key(
                if self.cert_file.is_some() { "etcd.key_file" } else { "etcd.cert_file" },
                "cert_file and key_file go together: set both or neither",
            );
        }
        for (key, path) in
            [("etcd.ca_file", &self.ca_file), ("etcd.cert_file", &self.cert_file), ("etcd.key_file", &self.key_file)]
        {
            if let Some(p) = path {
                problems.check(p.is_file(), key, p.display(), "must be a readable file");
            }
        }
        let mut o = outrigger_etcd::ConnectOptions::new(self.endpoints.clone());
        o.user = user;
        o.tls = (any_https || any_tls_file).then(|| outrigger_etcd::TlsFiles {
            ca_file: self.ca_file.clone(),
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
        });
        if let Some(t) = self.request_timeout {
            problems.check(
                t >= Duration::from_millis(50),
                "etcd.request_timeout",
                humantime::format_duration(t),
                "must be at least 50ms",
            );
            o.request_timeout = t;
        }
        if let Some(t) = self.connect_timeout {
            problems.check(
                t >= Duration::from_millis(50),
                "etcd.connect_timeout",
                humantime::format_duration(t),
                "must be at least 50ms",
            );
            o.connect_timeout = t;
        }
        o
    }
}

/// Checks that `addr` parses as `host:port` for a listener.
pub fn listen_addr(problems: &mut Problems, key: &str, addr: &str) -> Option<std::net::SocketAddr> {
    match addr.parse() {
        Ok(a) => Some(a),
        Err(_) => {
            problems.push(key, addr, "must be an IP address and port, like 0.0.0.0:8008 or [::]:8008");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct Raw {
        name: String,
        #[serde(default)]
        log: LogSection,
        etcd: Option<EtcdSection>,
    }

    impl Validate for Raw {
        type Valid = ();
        fn validate(&self) -> Result<(), Vec<Problem>> {
            let mut p = Problems::new();
            p.check(!self.name.is_empty(), "name", &self.name, "must not be empty");
            self.log.validate(&mut p);
            if let Some(e) = &self.etcd {
                e.validate(&mut p);
            }
            p.finish(())
        }
    }

    fn problems(text: &str) -> Vec<String> {
        let raw: Result<Raw, _> = parse_toml("t.toml", text);
        match raw {
            Err(e) => e.problems().iter().map(ToString::to_string).collect(),
            Ok(raw) => raw.validate().err().unwrap_or_default().iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn unknown_keys_are_each_reported_with_their_path() {
        let p = problems("name = \"a\"\nnmae = \"b\"\n[log]\nlevle = \"info\"\n");
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p.iter().any(|s| s.starts_with("nmae: unknown key")), "{p:?}");
        assert!(p.iter().any(|s| s.starts_with("log.levle: unknown key")), "{p:?}");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let p = problems("name = 5\n");
        assert_eq!(p.len(), 1);
        assert!(p[0].starts_with("name: invalid type"), "{p:?}");
    }

    #[test]
    fn bad_values_name_key_value_and_rule() {
        let p = problems(
            "name = \"\"\n[log]\nformat = \"xml\"\n[etcd]\nendpoints = [\"127.0.0.1:2379\"]\nusername = \"u\"\n",
        );
        assert_eq!(
            p,
            vec![
                "name (\"\"): must not be empty".to_owned(),
                "log.format (xml): must be \"text\" or \"json\"".to_owned(),
                "etcd.endpoints[0] (127.0.0.1:2379): must be http://host:port or https://host:port".to_owned(),
                "etcd.password: must be set when etcd.username (u) is".to_owned(),
            ]
        );
    }

    #[test]
    fn tls_files_need_https_and_go_in_pairs() {
        let p = problems("name=\"a\"\n[etcd]\nendpoints=[\"http://h:1\"]\ncert_file=\"/nonexistent\"\n");
        assert!(p.iter().any(|s| s.contains("must use https://")), "{p:?}");
        assert!(p.iter().any(|s| s.starts_with("etcd.key_file: cert_file and key_file go together")), "{p:?}");
        assert!(p.iter().any(|s| s.starts_with("etcd.cert_file (/nonexistent): must be a readable file")), "{p:?}");
    }

    #[test]
    fn syntax_errors_are_their_own_kind() {
        let r: Result<Raw, _> = parse_toml("t.toml", "name = \n");
        assert!(matches!(r, Err(ConfigError::Syntax { .. })));
    }

    #[test]
    fn syntax_errors_say_where_without_echoing_the_line() {
        let r: Result<Raw, _> = parse_toml("t.toml", "name = \"a\"\n[etcd]\npassword = \"s3cret\n");
        let Err(e @ ConfigError::Syntax { .. }) = r else { panic!("expected a syntax error") };
        let shown = e.to_string();
        assert!(shown.contains("line 3"), "{shown}");
        assert!(!shown.contains("s3cret"), "the password must not be echoed: {shown}");
    }

    #[test]
    fn a_secret_of_the_wrong_type_is_named_but_not_shown() {
        let p =
            problems("name = \"a\"\n[etcd]\nendpoints = [\"http://h:1\"]\nusername = \"u\"\npassword = 987654321\n");
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].starts_with("etcd.password: has the wrong type"), "{p:?}");
        assert!(!p[0].contains("987654321"), "the password must not be shown: {p:?}");
    }

    #[test]
    fn humantime_durations_parse() {
        let r: Raw =
            parse_toml("t", "name=\"a\"\n[etcd]\nendpoints=[\"http://h:1\"]\nrequest_timeout=\"250ms\"\n").unwrap();
        assert_eq!(r.etcd.unwrap().request_timeout, Some(Duration::from_millis(250)));
    }

    mod hostile {
        //! A config file with a secret in it, damaged anywhere: whatever the error, it never
        //! shows the secret (errors go to logs, and a reload on SIGHUP logs them).
        use super::*;
        use proptest::prelude::*;

        const TEXT: &str = "name = \"a\"\n[etcd]\nendpoints = [\"http://h:1\"]\nusername = \"u\"\npassword = \"SECRET\"\nrequest_timeout = \"1s\"\n";

        proptest! {
            #[test]
            fn a_damaged_config_never_shows_its_secret_in_an_error(
                secret in "[a-zA-Z0-9]{12,20}",
                edits in proptest::collection::vec((any::<usize>(), "[\\x00-\\x7f]{0,3}", 0usize..3), 0..4),
            ) {
                // Damage anywhere but the secret's own line and the line ends around it (a
                // value merged into another key's is that key's value, and may be shown).
                let line = format!("\npassword = \"{secret}\"\n");
                let (mut before, mut after) = TEXT.split_once("\npassword = \"SECRET\"\n").map(|(b, a)| (b.to_owned(), a.to_owned())).expect("the secret's line");
                for (n, (at, insert, remove)) in edits.into_iter().enumerate() {
                    let part = if n % 2 == 0 { &mut before } else { &mut after };
                    let i = at % (part.len() + 1);
                    let end = (i + remove).min(part.len());
                    part.replace_range(i..end, &insert);
                }
                let text = format!("{before}{line}{after}");
                let shown = match parse_toml::<Raw>("t.toml", &text) {
                    Ok(raw) => match raw.validate() {
                        Ok(_) => return Ok(()),
                        Err(ps) => ps.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"),
                    },
                    Err(e) => e.to_string(),
                };
                // The secret may have been cut so that what is left is no longer it.
                prop_assert!(!shown.contains(&secret), "the secret is shown: {shown}");
            }
        }
    }
}
