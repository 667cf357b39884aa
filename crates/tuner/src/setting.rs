//! The rules' output: typed values, each with the rule that produced it.

use crate::catalog::{self, Param};
use crate::units::{Unit, render_bytes, render_millis};

/// A setting's value, typed so that it renders in PostgreSQL's spelling and can be compared
/// with what the server reads back.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Memory, in bytes (a whole number of the parameter's base unit).
    Bytes(u64),
    /// Time, in milliseconds; negative values are PostgreSQL's sentinels (`-1`).
    Millis(i64),
    Int(i64),
    Real(f64),
    Bool(bool),
    /// An enum value or identifier-like word (`logical`, `lz4`).
    Word(&'static str),
    /// Free text (paths, lists): quoted in `postgresql.conf`.
    Text(String),
}

impl Value {
    /// The value in PostgreSQL's spelling for a parameter with base unit `unit`.
    pub fn render(&self, unit: Unit) -> String {
        match self {
            Value::Bytes(b) => render_bytes(*b, unit),
            Value::Millis(ms) => render_millis(*ms, unit),
            Value::Int(i) => i.to_string(),
            // `vacuum_cost_delay` and friends are reals in milliseconds: say so.
            Value::Real(r) if unit != Unit::None && *r != 0.0 => {
                format!("{}{}", render_real(*r).trim_end_matches(".0"), unit.label())
            }
            Value::Real(_) if unit != Unit::None => "0".to_owned(),
            Value::Real(r) => render_real(*r),
            Value::Bool(b) => if *b { "on" } else { "off" }.to_owned(),
            Value::Word(w) => (*w).to_owned(),
            Value::Text(t) => t.clone(),
        }
    }

    /// The value as a number of base units (what `postgres -C` prints), for numeric values.
    pub fn base_units(&self, unit: Unit) -> Option<f64> {
        match self {
            Value::Bytes(b) => Some(*b as f64 / unit.scale() as f64),
            Value::Millis(ms) if *ms < 0 => Some(*ms as f64),
            Value::Millis(ms) => Some(*ms as f64 / unit.scale() as f64),
            Value::Int(i) => Some(*i as f64),
            Value::Real(r) => Some(*r),
            _ => None,
        }
    }
}

/// Reals keep one decimal when whole (`7.0`, `2.0`) so they read as factors, else up to four.
fn render_real(r: f64) -> String {
    if r.fract() == 0.0 {
        format!("{r:.1}")
    } else {
        let s = format!("{r:.4}");
        s.trim_end_matches('0').to_owned()
    }
}

/// One parameter as tuner sets it.
#[derive(Debug, Clone, PartialEq)]
pub struct Setting {
    pub name: &'static str,
    pub value: Value,
    /// How the value was derived: the formula with its inputs filled in.
    pub rule: String,
    /// Why tuner deliberately differs from pg_configurator here, if it does.
    pub departs: Option<&'static str>,
}

impl Setting {
    pub fn param(&self) -> &'static Param {
        // Every name the rules use is in the catalogue (a test walks all rules and versions).
        catalog::param(self.name).unwrap_or(&UNKNOWN)
    }

    /// The value in PostgreSQL's spelling.
    pub fn rendered(&self) -> String {
        self.value.render(self.param().unit)
    }
}

static UNKNOWN: Param = Param {
    name: "?",
    kind: catalog::Kind::String,
    unit: Unit::None,
    restart: catalog::Restart::Never,
    since: 0,
    until: None,
    custom: false,
};

/// How usable RAM was split, for explanations and for the relation tests.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budget {
    /// Usable RAM in bytes (RAM less the reserve).
    pub usable: f64,
    pub shared_buffers_part: f64,
    /// Bytes for per-query memory (`work_mem` of every backend and parallel worker).
    pub client: f64,
    /// Bytes for maintenance memory (autovacuum workers and manual maintenance sessions).
    pub maintenance: f64,
    /// How many manual maintenance sessions the maintenance memory is shared between.
    pub maintenance_sessions: f64,
    /// pg_configurator's system score (0..100) from CPU, RAM and disk.
    pub system_score: f64,
}

/// The whole output of the rules for one set of inputs.
#[derive(Debug, Clone)]
pub struct Tuning {
    pub version: u8,
    /// Sorted by name.
    pub settings: Vec<Setting>,
    pub budget: Budget,
    /// Things the operator should know (e.g. too many connections for the RAM).
    pub warnings: Vec<String>,
}

impl Tuning {
    pub fn get(&self, name: &str) -> Option<&Setting> {
        self.settings.iter().find(|s| s.name == name)
    }

    /// `name → value` in PostgreSQL's spelling, sorted by name.
    pub fn rendered(&self) -> std::collections::BTreeMap<String, String> {
        self.settings.iter().map(|s| (s.name.to_owned(), s.rendered())).collect()
    }

    /// Names of the settings that only take effect after a restart on this version.
    pub fn restart_needed(&self) -> Vec<&'static str> {
        self.settings.iter().filter(|s| s.param().needs_restart(self.version)).map(|s| s.name).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reals_render_as_factors() {
        assert_eq!(render_real(7.0), "7.0");
        assert_eq!(render_real(0.9), "0.9");
        assert_eq!(render_real(1.1), "1.1");
        assert_eq!(render_real(0.05), "0.05");
    }

    #[test]
    fn base_units_are_what_postgres_prints() {
        assert_eq!(Value::Bytes(2400 * 1024 * 1024).base_units(Unit::Blocks8k), Some(307_200.0));
        assert_eq!(Value::Millis(1_800_000).base_units(Unit::S), Some(1800.0));
        assert_eq!(Value::Millis(-1).base_units(Unit::Ms), Some(-1.0));
        assert_eq!(Value::Bool(true).base_units(Unit::None), None);
    }
}
