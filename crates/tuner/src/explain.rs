//! `--explain`: per parameter, the value, the rule with its inputs, and what pg_configurator and
//! PGTune would give for the same inputs where they differ, with the reason tuner departs.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::compare::same;
use crate::input::Inputs;
use crate::setting::Tuning;
use crate::units::Human;

/// Why tuner leaves out a parameter pg_configurator sets.
fn why_unset(name: &str) -> &'static str {
    match name {
        "old_snapshot_threshold" => {
            "PostgreSQL 17 removed it (a config naming it does not start there); on older versions enabling it \
             costs performance and was known to give wrong results, which is why it was removed"
        }
        _ => "not tuned by tuner; PostgreSQL's default applies",
    }
}

/// Where each input came from (`--db-cpu`, or what detection read).
pub type Sources = Vec<(String, String)>;

pub fn explain(
    i: &Inputs,
    t: &Tuning,
    sources: &Sources,
    pg_configurator: &BTreeMap<String, String>,
    pgtune: &BTreeMap<String, String>,
) -> String {
    let mut o = String::new();
    let b = &t.budget;
    let _ = writeln!(
        o,
        "tuner {} for PostgreSQL {}: {} cores, {} RAM, {}, duty {}, replication {}",
        env!("CARGO_PKG_VERSION"),
        i.version,
        i.cpu,
        Human(i.ram as f64),
        i.disk,
        i.duty,
        if i.replication { "on" } else { "off" }
    );
    for (what, from) in sources {
        let _ = writeln!(o, "  {what}: {from}");
    }
    let (sb, cl, mt) = i.memory_split();
    let _ = writeln!(
        o,
        "  usable RAM {} = {} × (100 − {})% − {}; split: shared_buffers {sb}, client {cl}, maintenance {mt}, \
         OS page cache {:.2}",
        Human(b.usable),
        Human(i.ram as f64),
        i.reserved_ram_percent,
        Human(i.reserved_system_ram as f64),
        (1.0 - sb - cl - mt).max(0.0)
    );
    let _ = writeln!(o, "  system score {:.2} (pg_configurator's blend of CPU, RAM and disk, 0..100)", b.system_score);
    for w in &t.warnings {
        let _ = writeln!(o, "  WARNING: {w}");
    }
    o.push('\n');
    for s in &t.settings {
        let v = s.rendered();
        let restart = if s.param().needs_restart(t.version) { "   [needs restart]" } else { "" };
        let _ = writeln!(o, "{} = {v}{restart}", s.name);
        let _ = writeln!(o, "    rule: {}", s.rule);
        let pgc = pg_configurator.get(s.name);
        let pgc_differs = pgc.is_none_or(|p| !same(s.name, p, &v));
        if pgc_differs {
            let _ = writeln!(o, "    pg_configurator: {}", pgc.map_or("(not set)", String::as_str));
        }
        if let Some(p) = pgtune.get(s.name)
            && !same(s.name, p, &v)
        {
            let _ = writeln!(o, "    PGTune: {p}");
        }
        if pgc_differs && let Some(why) = s.departs {
            let _ = writeln!(o, "    why tuner departs: {why}");
        }
    }
    let unset: Vec<_> = pg_configurator.iter().filter(|(k, _)| t.get(k).is_none()).collect();
    if !unset.is_empty() {
        o.push_str("\nSet by pg_configurator, not by tuner:\n");
        for (k, v) in unset {
            let _ = writeln!(o, "{k} (pg_configurator: {v})\n    why: {}", why_unset(k));
        }
    }
    o
}
