//! Checking settings against the target server's own parameter catalogue.
//!
//! Two sources, both from the real `postgres` binary (see [`crate::server`] for running it):
//! - `postgres --describe-config`: every parameter with its type, context and range (in base
//!   units). It names unknown parameters, type mismatches and out-of-range values, and checks
//!   tuner's restart flags against the server's contexts.
//! - `postgres -C name` over a config holding the settings: the server parses each value with
//!   its own unit rules and prints what it stored, in base units. A value tuner wrote in the
//!   wrong unit reads back as a different number; a value the server rejects stops it with
//!   its own message.
//!
//! This module holds the pure parts: parsing the catalogue and comparing.

use std::collections::BTreeMap;

use crate::catalog::{self, Kind};
use crate::compare::{Norm, normalize};
use crate::units::{Dimension, Unit, parse_pg_number};

/// One row of `postgres --describe-config`.
#[derive(Debug, Clone, PartialEq)]
pub struct Described {
    /// `postmaster`, `sighup`, `user`, `superuser`, `backend`, `internal`...
    pub context: String,
    /// `BOOLEAN`, `INTEGER`, `REAL`, `STRING`, `ENUM`.
    pub vartype: String,
    pub min: Option<f64>,
    pub max: Option<f64>,
}

/// Parses `--describe-config`: tab-separated name, context, group, type, reset value, min, max,
/// short and long description.
pub fn parse_describe_config(text: &str) -> BTreeMap<String, Described> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            if f.len() < 7 {
                return None;
            }
            Some((
                f[0].to_owned(),
                Described {
                    context: f[1].to_owned(),
                    vartype: f[3].to_owned(),
                    min: f[5].trim().parse().ok(),
                    max: f[6].trim().parse().ok(),
                },
            ))
        })
        .collect()
}

/// One thing wrong with a setting, as the server sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    pub name: String,
    pub value: String,
    pub problem: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} = {}: {}", self.name, self.value, self.problem)
    }
}

fn finding(name: &str, value: &str, problem: impl Into<String>) -> Finding {
    Finding { name: name.to_owned(), value: value.to_owned(), problem: problem.into() }
}

fn kind_matches(kind: Kind, vartype: &str) -> bool {
    match kind {
        Kind::Int => vartype == "INTEGER",
        Kind::Real => vartype == "REAL",
        Kind::String => vartype == "STRING",
        // `wal_compression` was a boolean before 15 and an enum after; both take on/off.
        Kind::Bool | Kind::Enum => vartype == "BOOLEAN" || vartype == "ENUM",
    }
}

/// Checks `settings` (name → value as written) against the catalogue of PostgreSQL `version`.
pub fn check_against_catalogue(
    settings: &BTreeMap<String, String>,
    described: &BTreeMap<String, Described>,
    version: u8,
) -> Vec<Finding> {
    let mut out = Vec::new();
    let preload = settings.get("shared_preload_libraries").map(|v| crate::output::strip_quotes(v)).unwrap_or_default();
    for (name, value) in settings {
        if let Some((prefix, _)) = name.split_once('.') {
            // An extension's parameter: the server only knows it once the library is loaded.
            if !preload.split(',').any(|l| l.trim() == prefix) {
                out.push(finding(
                    name,
                    value,
                    format!("extension parameter without {prefix} in shared_preload_libraries"),
                ));
            }
            continue;
        }
        let Some(d) = described.get(name) else {
            out.push(finding(name, value, format!("unknown to PostgreSQL {version}")));
            continue;
        };
        let Some(p) = catalog::param(name) else {
            out.push(finding(name, value, "not in tuner's catalogue, so its unit cannot be checked"));
            continue;
        };
        if !kind_matches(p.kind, &d.vartype) {
            out.push(finding(name, value, format!("tuner takes it for {:?}, the server says {}", p.kind, d.vartype)));
            continue;
        }
        if p.needs_restart(version) != (d.context == "postmaster") {
            out.push(finding(
                name,
                value,
                format!("tuner says restart={}, the server's context is {}", p.needs_restart(version), d.context),
            ));
        }
        if matches!(d.vartype.as_str(), "INTEGER" | "REAL") {
            let Some(n) = parse_pg_number(value, p.unit) else {
                let accepted = match p.unit.dimension() {
                    Dimension::Count => "a plain number".to_owned(),
                    Dimension::Memory => "a number with kB, MB, GB or TB".to_owned(),
                    Dimension::Time => "a number with us, ms, s, min, h or d".to_owned(),
                };
                out.push(finding(name, value, format!("wrong unit: the parameter takes {accepted}")));
                continue;
            };
            if let (Some(lo), Some(hi)) = (d.min, d.max)
                && !(n >= lo && n <= hi)
            {
                out.push(finding(
                    name,
                    value,
                    match p.unit {
                        Unit::None => format!("out of range: {n} is outside {lo}..{hi}"),
                        u => format!("out of range: {n} × {} is outside {lo}..{hi}", u.label()),
                    },
                ));
            }
        }
    }
    out
}

/// Compares what `postgres -C name` printed with what the setting meant. Numbers come back in
/// base units, so a unit tuner got wrong shows here as a different number.
pub fn check_read_back(name: &str, written: &str, printed: &str) -> Option<Finding> {
    let unit = catalog::param(name).map_or(Unit::None, |p| p.unit);
    let meant = normalize(name, written);
    let got = normalize(name, printed);
    let ok = match (&meant, &got) {
        (Norm::Num(a), Norm::Num(b)) => {
            // PostgreSQL rounds to whole base units; allow that, nothing more.
            let tol = if unit == Unit::None { 1e-9 * a.abs().max(1.0) } else { 0.5 + 1e-9 * a.abs() };
            (a - b).abs() <= tol
        }
        (a, b) => a == b,
    };
    (!ok).then(|| {
        finding(
            name,
            written,
            format!(
                "the server read it as {} (in {}), tuner meant {meant:?}: wrong unit or value",
                printed.trim(),
                if unit == Unit::None { "plain units".to_owned() } else { unit.label().to_owned() }
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DESCRIBED: &str = "shared_buffers\tpostmaster\tResource Usage / Memory\tINTEGER\t0\t16\t1073741823\tSets...\t\n\
        work_mem\tuser\tResource Usage / Memory\tINTEGER\t0\t64\t2147483647\tSets...\tThis much...\n\
        max_connections\tpostmaster\tConnections\tINTEGER\t100\t1\t262143\tSets...\t\n\
        random_page_cost\tuser\tQuery Tuning\tREAL\t0\t0\t1.79769e+308\tSets...\t\n\
        wal_level\tpostmaster\tWAL\tENUM\treplica\t\t\tSets...\t\n\
        jit\tuser\tQuery Tuning\tBOOLEAN\tFALSE\t\t\tAllow JIT compilation.\t\n";

    fn settings(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn describe_config_rows_parse() {
        let d = parse_describe_config(DESCRIBED);
        assert_eq!(d["shared_buffers"].min, Some(16.0));
        assert_eq!(d["wal_level"].vartype, "ENUM");
        assert_eq!(d["wal_level"].min, None);
    }

    #[test]
    fn good_settings_pass() {
        let d = parse_describe_config(DESCRIBED);
        let s = settings(&[
            ("shared_buffers", "856MB"),
            ("work_mem", "3440kB"),
            ("max_connections", "200"),
            ("random_page_cost", "1.1"),
            ("wal_level", "logical"),
            ("jit", "off"),
        ]);
        assert_eq!(check_against_catalogue(&s, &d, 15), vec![]);
    }

    #[test]
    fn unknown_wrong_unit_and_out_of_range_are_each_found() {
        let d = parse_describe_config(DESCRIBED);
        let s = settings(&[
            ("old_snapshot_threshold", "4320"),
            ("work_mem", "10s"),
            ("max_connections", "100000000"),
            ("shared_buffers", "64kB"),
        ]);
        let f: Vec<String> = check_against_catalogue(&s, &d, 17).iter().map(ToString::to_string).collect();
        assert_eq!(
            f,
            vec![
                "max_connections = 100000000: out of range: 100000000 is outside 1..262143",
                "old_snapshot_threshold = 4320: unknown to PostgreSQL 17",
                "shared_buffers = 64kB: out of range: 8 × 8kB is outside 16..1073741823",
                "work_mem = 10s: wrong unit: the parameter takes a number with kB, MB, GB or TB",
            ]
        );
    }

    #[test]
    fn extension_parameters_need_their_library_preloaded() {
        let d = parse_describe_config(DESCRIBED);
        let s = settings(&[("auto_explain.log_min_duration", "3s"), ("pg_stat_statements.max", "1000")]);
        let f = check_against_catalogue(&s, &d, 15);
        assert_eq!(f.len(), 2);
        let mut s = s;
        s.insert("shared_preload_libraries".into(), "'pg_stat_statements,auto_explain'".into());
        let d2 = parse_describe_config("shared_preload_libraries\tpostmaster\tClient\tSTRING\t\t\t\tLists...\t\n");
        assert_eq!(check_against_catalogue(&s, &d2, 15), vec![]);
    }

    #[test]
    fn read_back_catches_a_unit_mismatch() {
        assert_eq!(check_read_back("shared_buffers", "2400MB", "307200"), None);
        assert_eq!(check_read_back("checkpoint_timeout", "30min", "1800"), None);
        assert_eq!(check_read_back("wal_level", "logical", "logical"), None);
        assert_eq!(check_read_back("jit", "off", "off"), None);
        assert_eq!(check_read_back("vacuum_cost_delay", "10ms", "10"), None);
        // Had tuner believed work_mem was in 8kB pages, it would have meant 8× what the server read.
        assert!(check_read_back("work_mem", "1024", "8192").is_some());
        assert!(check_read_back("synchronous_commit", "local", "on").is_some());
    }
}
