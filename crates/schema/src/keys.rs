//! Key paths: `/<namespace>/<scope>/<key>`, as Patroni's `AbstractDCS.client_path` builds them.

use std::fmt;

/// Where one cluster's keys live. Built once from config and validated, so that every path
/// derived from it is well formed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyLayout {
    /// `/<namespace>/<scope>` with repeated slashes collapsed and no trailing slash.
    base: String,
    scope: String,
}

/// A configured namespace or scope that cannot form a Patroni key path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error("scope must not be empty")]
    EmptyScope,
    #[error("scope ({0:?}) must not contain '/'")]
    SlashInScope(String),
    #[error("member name ({0:?}) must be non-empty and must not contain '/'")]
    BadMemberName(String),
}

/// The keys of one cluster that have a fixed name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterKey {
    Initialize,
    Config,
    Leader,
    Failover,
    History,
    Status,
    Sync,
    Failsafe,
    /// Legacy `optime/leader`, written only for members older than Patroni 2.1.0.
    LegacyLeaderOptime,
}

impl ClusterKey {
    fn name(self) -> &'static str {
        match self {
            ClusterKey::Initialize => "initialize",
            ClusterKey::Config => "config",
            ClusterKey::Leader => "leader",
            ClusterKey::Failover => "failover",
            ClusterKey::History => "history",
            ClusterKey::Status => "status",
            ClusterKey::Sync => "sync",
            ClusterKey::Failsafe => "failsafe",
            ClusterKey::LegacyLeaderOptime => "optime/leader",
        }
    }

    /// All fixed keys, for classifying a key read from a prefix range.
    pub const ALL: [ClusterKey; 9] = [
        ClusterKey::Initialize,
        ClusterKey::Config,
        ClusterKey::Leader,
        ClusterKey::Failover,
        ClusterKey::History,
        ClusterKey::Status,
        ClusterKey::Sync,
        ClusterKey::Failsafe,
        ClusterKey::LegacyLeaderOptime,
    ];
}

impl fmt::Display for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a key under the cluster prefix is, as read back from a range or a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyKind<'a> {
    Fixed(ClusterKey),
    Member(&'a str),
    /// A key Outrigger does not know (another tool's, or a newer Patroni's). Kept, not an error.
    Other(&'a str),
}

impl KeyLayout {
    /// `namespace` defaults to `service` in Patroni; an empty one is allowed and collapses away.
    pub fn new(namespace: &str, scope: &str) -> Result<Self, LayoutError> {
        if scope.is_empty() {
            return Err(LayoutError::EmptyScope);
        }
        if scope.contains('/') {
            return Err(LayoutError::SlashInScope(scope.to_owned()));
        }
        let raw = format!("/{namespace}/{scope}");
        let mut base = String::with_capacity(raw.len());
        for c in raw.chars() {
            if c == '/' && base.ends_with('/') {
                continue;
            }
            base.push(c);
        }
        Ok(Self { base, scope: scope.to_owned() })
    }

    pub fn scope(&self) -> &str {
        &self.scope
    }

    /// The cluster prefix with a trailing slash, for prefix ranges and watches.
    pub fn prefix(&self) -> String {
        format!("{}/", self.base)
    }

    pub fn key(&self, key: ClusterKey) -> String {
        format!("{}/{}", self.base, key.name())
    }

    pub fn member(&self, name: &str) -> Result<String, LayoutError> {
        if name.is_empty() || name.contains('/') {
            return Err(LayoutError::BadMemberName(name.to_owned()));
        }
        Ok(format!("{}/members/{name}", self.base))
    }

    /// Classifies a full key path read from etcd. Keys outside this cluster's prefix are `None`.
    /// Members are `members/X` with exactly one `/` after `members`, as Patroni reads them.
    pub fn classify<'a>(&self, full_key: &'a str) -> Option<KeyKind<'a>> {
        let rest = full_key.strip_prefix(self.base.as_str())?.strip_prefix('/')?;
        if let Some(name) = rest.strip_prefix("members/") {
            if !name.is_empty() && !name.contains('/') {
                return Some(KeyKind::Member(name));
            }
            return Some(KeyKind::Other(rest));
        }
        Some(ClusterKey::ALL.iter().find(|k| k.name() == rest).map_or(KeyKind::Other(rest), |k| KeyKind::Fixed(*k)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use KeyKind as Kind;

    #[test]
    fn default_namespace_gives_patronis_paths() {
        let l = KeyLayout::new("service", "batman").unwrap();
        assert_eq!(l.key(ClusterKey::Leader), "/service/batman/leader");
        assert_eq!(l.key(ClusterKey::LegacyLeaderOptime), "/service/batman/optime/leader");
        assert_eq!(l.member("n1").unwrap(), "/service/batman/members/n1");
        assert_eq!(l.prefix(), "/service/batman/");
    }

    #[test]
    fn repeated_slashes_in_namespace_collapse_like_patroni() {
        let l = KeyLayout::new("/db//", "batman").unwrap();
        assert_eq!(l.key(ClusterKey::Config), "/db/batman/config");
        let empty = KeyLayout::new("", "batman").unwrap();
        assert_eq!(empty.key(ClusterKey::Config), "/batman/config");
    }

    #[test]
    fn scope_and_member_names_with_slashes_are_rejected() {
        assert_eq!(KeyLayout::new("service", ""), Err(LayoutError::EmptyScope));
        assert!(matches!(KeyLayout::new("service", "a/b"), Err(LayoutError::SlashInScope(_))));
        let l = KeyLayout::new("service", "batman").unwrap();
        assert!(l.member("a/b").is_err());
        assert!(l.member("").is_err());
    }

    #[test]
    fn classify_tells_members_fixed_keys_and_foreign_keys_apart() {
        let l = KeyLayout::new("service", "batman").unwrap();
        assert_eq!(l.classify("/service/batman/leader"), Some(Kind::Fixed(ClusterKey::Leader)));
        assert_eq!(l.classify("/service/batman/members/n2"), Some(Kind::Member("n2")));
        assert_eq!(l.classify("/service/batman/members/a/b"), Some(Kind::Other("members/a/b")));
        assert_eq!(l.classify("/service/batman/whatever"), Some(Kind::Other("whatever")));
        assert_eq!(l.classify("/service/batmanx/leader"), None);
        assert_eq!(l.classify("/service/robin/leader"), None);
    }
}
