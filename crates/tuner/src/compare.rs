//! Comparing values as PostgreSQL reads them, not as strings: `19GB` and `19456MB` are the
//! same `shared_buffers`, `on` and `true` the same boolean.

use crate::catalog;
use crate::units::{Unit, parse_pg_number};

/// A value reduced to what PostgreSQL would store.
#[derive(Debug, Clone, PartialEq)]
pub enum Norm {
    /// A number of the parameter's base units.
    Num(f64),
    /// A word or text, lower-cased, quotes removed, booleans as `on`/`off`.
    Word(String),
}

/// Normalises `text` as the value of parameter `name`.
pub fn normalize(name: &str, text: &str) -> Norm {
    let unit = catalog::param(name).map_or(Unit::None, |p| p.unit);
    if let Some(n) = parse_pg_number(text, unit) {
        return Norm::Num(n);
    }
    let t = text.trim().trim_matches('\'').to_ascii_lowercase();
    let t = match t.as_str() {
        "true" | "yes" | "1" => "on".to_owned(),
        "false" | "no" | "0" => "off".to_owned(),
        _ => t,
    };
    // Since 15 `wal_compression` is an enum in which `on` is another name for `pglz`.
    if name == "wal_compression" && t == "on" {
        return Norm::Word("pglz".to_owned());
    }
    Norm::Word(t)
}

/// Whether two spellings mean the same value of `name`.
pub fn same(name: &str, a: &str, b: &str) -> bool {
    match (normalize(name, a), normalize(name, b)) {
        (Norm::Num(x), Norm::Num(y)) => (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0),
        (x, y) => x == y,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_of_one_value_compare_equal() {
        assert!(same("shared_buffers", "19GB", "19456MB"));
        assert!(!same("shared_buffers", "19GB", "20416MB"));
        assert!(same("statement_timeout", "86400000", "1d"));
        assert!(same("bgwriter_lru_multiplier", "7.0", "7"));
        assert!(same("auto_explain.log_analyze", "true", "on"));
        assert!(same("stats_temp_directory", "'/run/postgresql'", "/run/postgresql"));
        assert!(!same("synchronous_commit", "local", "on"));
        assert!(same("wal_compression", "on", "pglz"));
    }
}
