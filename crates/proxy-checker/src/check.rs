//! What a health check asks: the endpoint (Patroni's paths) and its query parameters.
//!
//! Parsing is pure and shared by the HTTP endpoints and the agent-check port, so both accept
//! exactly the same checks. A parameter we cannot read (`?lag=lots`) is a bad request (400):
//! Patroni ignores an unreadable `lag` and then answers as if there were no limit, which turns
//! an operator's typo into a replica that is never dropped for lag. Here it fails closed.

use std::fmt;

/// The check endpoints, with Patroni's names (`../shared/reference/patroni.md` §3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `/`, `/primary`, `/master`, `/read-write`.
    Primary,
    /// `/leader`: holds the leader key, as primary or as standby leader.
    Leader,
    /// `/standby-leader`, `/standby_leader`.
    StandbyLeader,
    Replica,
    ReadOnly,
    /// `/sync`, `/synchronous`.
    Sync,
    /// `/async`, `/asynchronous`.
    Async,
    Quorum,
    ReadOnlySync,
    ReadOnlyQuorum,
    Health,
    Liveness,
    Readiness,
    /// Any other path. Patroni answers 503 there, and so do we (an `haproxy.cfg` with a typo
    /// in its check path then marks servers down rather than up).
    Unknown,
}

impl Endpoint {
    pub const ALL: [Endpoint; 14] = [
        Endpoint::Primary,
        Endpoint::Leader,
        Endpoint::StandbyLeader,
        Endpoint::Replica,
        Endpoint::ReadOnly,
        Endpoint::Sync,
        Endpoint::Async,
        Endpoint::Quorum,
        Endpoint::ReadOnlySync,
        Endpoint::ReadOnlyQuorum,
        Endpoint::Health,
        Endpoint::Liveness,
        Endpoint::Readiness,
        Endpoint::Unknown,
    ];

    /// Maps a request path to its endpoint. Matching is exact (aliases listed), unlike
    /// Patroni's substring tests, so `/primary-typo` is unknown rather than a primary check.
    pub fn from_path(path: &str) -> Endpoint {
        match path {
            "/" | "/primary" | "/master" | "/read-write" => Endpoint::Primary,
            "/leader" => Endpoint::Leader,
            "/standby-leader" | "/standby_leader" => Endpoint::StandbyLeader,
            "/replica" => Endpoint::Replica,
            "/read-only" => Endpoint::ReadOnly,
            "/sync" | "/synchronous" => Endpoint::Sync,
            "/async" | "/asynchronous" => Endpoint::Async,
            "/quorum" => Endpoint::Quorum,
            "/read-only-sync" => Endpoint::ReadOnlySync,
            "/read-only-quorum" => Endpoint::ReadOnlyQuorum,
            "/health" => Endpoint::Health,
            "/liveness" => Endpoint::Liveness,
            "/readiness" => Endpoint::Readiness,
            _ => Endpoint::Unknown,
        }
    }

    /// The metric label and the `check` field of the JSON answer.
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::Primary => "primary",
            Endpoint::Leader => "leader",
            Endpoint::StandbyLeader => "standby_leader",
            Endpoint::Replica => "replica",
            Endpoint::ReadOnly => "read_only",
            Endpoint::Sync => "sync",
            Endpoint::Async => "async",
            Endpoint::Quorum => "quorum",
            Endpoint::ReadOnlySync => "read_only_sync",
            Endpoint::ReadOnlyQuorum => "read_only_quorum",
            Endpoint::Health => "health",
            Endpoint::Liveness => "liveness",
            Endpoint::Readiness => "readiness",
            Endpoint::Unknown => "unknown",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// Which replica position `/readiness` measures lag from (`?mode=`, Patroni 4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LagMode {
    /// Replayed WAL (the default): what a reader of the replica sees.
    #[default]
    Apply,
    /// Received WAL.
    Write,
}

/// One parsed check request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub endpoint: Endpoint,
    /// `?lag=`: the largest replica lag in bytes that still passes.
    pub lag: Option<u64>,
    /// `?replication_state=`: `streaming` or `in archive recovery`.
    pub replication_state: Option<String>,
    /// `?tag_<k>=<v>`, in request order.
    pub tags: Vec<(String, String)>,
    pub mode: LagMode,
}

impl Check {
    pub fn new(endpoint: Endpoint) -> Self {
        Self { endpoint, lag: None, replication_state: None, tags: Vec::new(), mode: LagMode::Apply }
    }

    /// Parses a path and its query string (without the `?`). Unknown parameters are ignored,
    /// as Patroni ignores them; the first of a repeated parameter wins, as in Patroni.
    pub fn parse(path: &str, query: Option<&str>) -> Result<Check, BadRequest> {
        let mut check = Check::new(Endpoint::from_path(path));
        let (mut lag_seen, mut state_seen, mut mode_seen) = (false, false, false);
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (raw_key, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
            let key = decode_component(raw_key).ok_or(BadRequest::Encoding)?;
            let value = decode_component(raw_value).ok_or(BadRequest::Encoding)?;
            if key == "lag" && !lag_seen {
                lag_seen = true;
                check.lag = Some(parse_bytes(&value).ok_or(BadRequest::Lag(value))?);
            } else if key == "replication_state" && !state_seen {
                state_seen = true;
                check.replication_state = Some(value);
            } else if key == "mode" && !mode_seen {
                mode_seen = true;
                check.mode = match value.as_str() {
                    "apply" => LagMode::Apply,
                    "write" => LagMode::Write,
                    _ => return Err(BadRequest::Mode(value)),
                };
            } else if let Some(tag) = key.strip_prefix("tag_")
                && !tag.is_empty()
                && !check.tags.iter().any(|(k, _)| k == tag)
            {
                check.tags.push((tag.to_owned(), value));
            }
        }
        Ok(check)
    }

    /// Parses the agent-check request line: a path with an optional query, like
    /// `/replica?lag=16MB`. A leading `/` may be left out (`replica`).
    pub fn parse_target(target: &str) -> Result<Check, BadRequest> {
        let target = target.trim();
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target, None),
        };
        if path.starts_with('/') { Check::parse(path, query) } else { Check::parse(&format!("/{path}"), query) }
    }
}

/// Why a check request could not be read. Answered 400 and counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BadRequest {
    /// A `%` escape that is not two hex digits, or bytes that are not UTF-8.
    Encoding,
    Lag(String),
    Mode(String),
}

impl fmt::Display for BadRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BadRequest::Encoding => f.write_str("query string: bad percent-encoding or not UTF-8"),
            BadRequest::Lag(v) => write!(f, "lag ({v:?}): must be bytes, optionally with a unit: B, kB, MB, GB, TB"),
            BadRequest::Mode(v) => write!(f, "mode ({v:?}): must be apply or write"),
        }
    }
}

/// Decodes one `application/x-www-form-urlencoded` component: `+` is a space, `%XX` a byte.
fn decode_component(s: &str) -> Option<String> {
    if !s.contains(['%', '+']) {
        return Some(s.to_owned());
    }
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = (bytes.next()? as char).to_digit(16)?;
                let lo = (bytes.next()? as char).to_digit(16)?;
                out.push((hi * 16 + lo) as u8);
            }
            b => out.push(b),
        }
    }
    String::from_utf8(out).ok()
}

/// Bytes, with PostgreSQL's memory units as Patroni reads `?lag=` (`16MB`, `1GB`, `100kB`, or
/// plain bytes). Units are 1024-based and read case-insensitively; a fraction is rounded
/// (`1.5MB`). Used for config values too.
pub fn parse_bytes(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1 << 10,
        "mb" => 1 << 20,
        "gb" => 1 << 30,
        "tb" => 1 << 40,
        _ => return None,
    };
    if number.is_empty() {
        return None;
    }
    if let Ok(n) = number.parse::<u64>() {
        return n.checked_mul(factor);
    }
    let f: f64 = number.parse().ok()?;
    let bytes = (f * factor as f64).round();
    (bytes.is_finite() && bytes >= 0.0 && bytes < u64::MAX as f64).then_some(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_patroni_path_and_alias_maps_to_its_endpoint() {
        let cases = [
            ("/", Endpoint::Primary),
            ("/primary", Endpoint::Primary),
            ("/master", Endpoint::Primary),
            ("/read-write", Endpoint::Primary),
            ("/leader", Endpoint::Leader),
            ("/standby-leader", Endpoint::StandbyLeader),
            ("/standby_leader", Endpoint::StandbyLeader),
            ("/replica", Endpoint::Replica),
            ("/read-only", Endpoint::ReadOnly),
            ("/sync", Endpoint::Sync),
            ("/synchronous", Endpoint::Sync),
            ("/async", Endpoint::Async),
            ("/asynchronous", Endpoint::Async),
            ("/quorum", Endpoint::Quorum),
            ("/read-only-sync", Endpoint::ReadOnlySync),
            ("/read-only-quorum", Endpoint::ReadOnlyQuorum),
            ("/health", Endpoint::Health),
            ("/liveness", Endpoint::Liveness),
            ("/readiness", Endpoint::Readiness),
            ("/primary-typo", Endpoint::Unknown),
            ("/patroni", Endpoint::Unknown),
        ];
        for (path, want) in cases {
            assert_eq!(Endpoint::from_path(path), want, "{path}");
        }
        for (i, e) in Endpoint::ALL.iter().enumerate() {
            assert_eq!(e.index(), i, "ALL is in declaration order");
        }
    }

    #[test]
    fn lag_accepts_bytes_and_postgres_units() {
        let cases = [
            ("1048576", Some(1 << 20)),
            ("16MB", Some(16 << 20)),
            ("16mb", Some(16 << 20)),
            ("100kB", Some(100 << 10)),
            ("1GB", Some(1 << 30)),
            ("2TB", Some(2 << 40)),
            ("10B", Some(10)),
            ("1.5MB", Some(3 << 19)),
            (" 7 MB ", Some(7 << 20)),
            ("0", Some(0)),
            ("", None),
            ("MB", None),
            ("-1", None),
            ("16XB", None),
            ("lots", None),
            ("99999999999TB", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_bytes(text), want, "{text:?}");
        }
    }

    #[test]
    fn query_parameters_are_read_and_first_one_wins() {
        let c = Check::parse(
            "/replica",
            Some("lag=16MB&lag=1&replication_state=in+archive+recovery&tag_zone=eu%2Dw&tag_zone=x&other=1"),
        )
        .unwrap();
        assert_eq!(c.endpoint, Endpoint::Replica);
        assert_eq!(c.lag, Some(16 << 20));
        assert_eq!(c.replication_state.as_deref(), Some("in archive recovery"));
        assert_eq!(c.tags, vec![("zone".to_owned(), "eu-w".to_owned())]);
        let r = Check::parse("/readiness", Some("mode=write")).unwrap();
        assert_eq!(r.mode, LagMode::Write);
    }

    #[test]
    fn unreadable_parameters_are_bad_requests() {
        assert_eq!(Check::parse("/replica", Some("lag=lots")), Err(BadRequest::Lag("lots".into())));
        assert_eq!(Check::parse("/replica", Some("lag=%zz")), Err(BadRequest::Encoding));
        assert_eq!(Check::parse("/replica", Some("tag_x=%ff")), Err(BadRequest::Encoding));
        assert_eq!(Check::parse("/readiness", Some("mode=read")), Err(BadRequest::Mode("read".into())));
        // An empty query and empty pairs are fine.
        assert_eq!(Check::parse("/primary", Some("")).unwrap(), Check::new(Endpoint::Primary));
        assert_eq!(Check::parse("/primary", Some("&&")).unwrap(), Check::new(Endpoint::Primary));
    }

    #[test]
    fn agent_targets_read_like_paths() {
        assert_eq!(Check::parse_target("replica?lag=1MB\r").unwrap().lag, Some(1 << 20));
        assert_eq!(Check::parse_target("/primary").unwrap().endpoint, Endpoint::Primary);
        assert_eq!(Check::parse_target("").unwrap().endpoint, Endpoint::Primary);
        assert!(Check::parse_target("replica?lag=x").is_err());
    }
}
