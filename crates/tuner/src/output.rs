//! Output formats: pg_configurator's three (`conf`, `json`, `patroni-json`) and `alter-system`,
//! which pg_configurator lacks and PGTune has.

use std::collections::BTreeMap;

use outrigger_schema::{ConfigPostgresql, ConfigValue};

use crate::catalog;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `postgresql.conf` lines, sorted, after a header of the inputs as comments.
    Conf,
    /// A flat JSON object of strings, sorted (pg_configurator's `json`).
    Json,
    /// `{"postgresql": {"parameters": {...}}}`, surrounding single quotes stripped, ready for
    /// Patroni's `bootstrap.dcs` or its `/config` key.
    PatroniJson,
    /// `ALTER SYSTEM SET name = 'value';` lines.
    AlterSystem,
}

impl Format {
    pub const ACCEPTED: &'static str = "conf, json, patroni-json, alter-system";

    pub fn parse(s: &str) -> Option<Self> {
        match s.trim() {
            "conf" => Some(Format::Conf),
            "json" => Some(Format::Json),
            "patroni-json" => Some(Format::PatroniJson),
            "alter-system" => Some(Format::AlterSystem),
            _ => None,
        }
    }
}

/// `'text'` → `text` (with `''` unescaped); anything else unchanged. pg_configurator writes
/// string settings with their `postgresql.conf` quotes; Patroni and SQL want the bare text.
pub fn strip_quotes(v: &str) -> String {
    match v.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')) {
        Some(inner) => inner.replace("''", "'"),
        None => v.to_owned(),
    }
}

/// Whether `postgresql.conf` can take `v` unquoted: a number with an optional unit, or an
/// identifier-like word. Anything else (paths, lists, `%` patterns) must be quoted.
fn bare_ok(v: &str) -> bool {
    let num = v.strip_prefix('-').unwrap_or(v);
    let digits_end = num.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(num.len());
    let is_number = digits_end > 0
        && num[..digits_end].parse::<f64>().is_ok()
        && num[digits_end..].chars().all(|c| c.is_ascii_alphabetic());
    let is_word = v.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    is_number || is_word
}

/// A value as `postgresql.conf` needs it.
pub fn conf_value(v: &str) -> String {
    if v.starts_with('\'') || bare_ok(v) { v.to_owned() } else { format!("'{}'", v.replace('\'', "''")) }
}

/// A value as `ALTER SYSTEM SET` needs it. List parameters get one literal per element:
/// `SET shared_preload_libraries = 'a,b'` would set a single library named "a,b".
pub fn sql_value(name: &str, v: &str) -> String {
    let bare = strip_quotes(v);
    let lit = |s: &str| format!("'{}'", s.trim().replace('\'', "''"));
    if catalog::is_list(name) && bare.contains(',') {
        bare.split(',').map(lit).collect::<Vec<_>>().join(", ")
    } else {
        lit(&bare)
    }
}

fn pretty_json<T: serde::Serialize>(value: &T) -> String {
    // pg_configurator's files are indented by four spaces (Python's json.dumps(indent=4)).
    let mut buf = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut buf, fmt);
    match value.serialize(&mut ser) {
        Ok(()) => String::from_utf8_lossy(&buf).into_owned() + "\n",
        Err(e) => format!("{{\"error\": \"{e}\"}}\n"),
    }
}

/// The parameters as Patroni's `postgresql.parameters` map (quotes stripped, strings).
pub fn patroni_parameters(settings: &BTreeMap<String, String>) -> serde_json::Map<String, serde_json::Value> {
    settings.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(strip_quotes(v)))).collect()
}

/// Renders `settings` (name → value in PostgreSQL's spelling). `header` lines become comments
/// where the format has comments.
pub fn render(settings: &BTreeMap<String, String>, format: Format, header: &[String]) -> String {
    let mut out = String::new();
    match format {
        Format::Conf => {
            for h in header {
                out.push_str(&format!("#   {h}\n"));
            }
            for (k, v) in settings {
                out.push_str(&format!("{k} = {}\n", conf_value(v)));
            }
        }
        Format::Json => {
            let flat: BTreeMap<&String, &String> = settings.iter().collect();
            out = pretty_json(&flat);
        }
        Format::PatroniJson => {
            let cfg = ConfigValue {
                postgresql: Some(ConfigPostgresql { parameters: patroni_parameters(settings), ..Default::default() }),
                ..Default::default()
            };
            out = pretty_json(&cfg);
        }
        Format::AlterSystem => {
            for h in header {
                out.push_str(&format!("-- {h}\n"));
            }
            for (k, v) in settings {
                out.push_str(&format!("ALTER SYSTEM SET {k} = {};\n", sql_value(k, v)));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> BTreeMap<String, String> {
        [
            ("shared_buffers", "856MB"),
            ("stats_temp_directory", "'/run/postgresql'"),
            ("shared_preload_libraries", "pg_stat_statements,auto_explain"),
            ("log_filename", "postgresql-%Y-%m-%d_%H%M%S.log"),
            ("max_standby_streaming_delay", "-1"),
            ("random_page_cost", "1.1"),
            ("wal_level", "logical"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    #[test]
    fn conf_quotes_only_what_needs_it() {
        let out = render(&sample(), Format::Conf, &["db_cpu = 4".to_owned()]);
        assert!(out.starts_with("#   db_cpu = 4\n"), "{out}");
        for line in [
            "shared_buffers = 856MB",
            "stats_temp_directory = '/run/postgresql'",
            "shared_preload_libraries = 'pg_stat_statements,auto_explain'",
            "log_filename = 'postgresql-%Y-%m-%d_%H%M%S.log'",
            "max_standby_streaming_delay = -1",
            "random_page_cost = 1.1",
            "wal_level = logical",
        ] {
            assert!(out.contains(&format!("{line}\n")), "{line} missing in\n{out}");
        }
    }

    #[test]
    fn patroni_json_nests_and_strips_quotes() {
        let out = render(&sample(), Format::PatroniJson, &[]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["postgresql"]["parameters"]["stats_temp_directory"], "/run/postgresql");
        assert_eq!(v["postgresql"]["parameters"]["shared_buffers"], "856MB");
        assert_eq!(v.as_object().unwrap().len(), 1);
    }

    #[test]
    fn json_is_flat_sorted_and_indented_like_pg_configurator() {
        let out = render(&sample(), Format::Json, &[]);
        assert!(out.starts_with("{\n    \"log_filename\""), "{out}");
        let v: BTreeMap<String, String> = serde_json::from_str(&out).unwrap();
        assert_eq!(v, sample());
    }

    #[test]
    fn alter_system_splits_lists_into_literals() {
        let out = render(&sample(), Format::AlterSystem, &[]);
        assert!(out.contains("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements', 'auto_explain';\n"));
        assert!(out.contains("ALTER SYSTEM SET stats_temp_directory = '/run/postgresql';\n"));
        assert!(out.contains("ALTER SYSTEM SET shared_buffers = '856MB';\n"));
    }
}
