//! Sizes and durations, as pg_configurator reads them and as PostgreSQL spells them.
//!
//! Two conventions meet here. pg_configurator takes RAM as IEC strings (`4096Mi`, `128Gi`);
//! PostgreSQL spells memory with `kB`/`MB`/`GB`/`TB` (also 1024-based) and time with
//! `us`/`ms`/`s`/`min`/`h`/`d`. Every GUC has a *base unit* (what `pg_settings.unit` shows:
//! `8kB` for `shared_buffers`, `kB` for `work_mem`, `MB` for `max_wal_size`, `s` for
//! `checkpoint_timeout`...); a value is only exact if it is a whole number of base units, which
//! is why rounding below always works in multiples of the base unit.

use std::fmt;

pub const KIB: u64 = 1024;
pub const MIB: u64 = 1024 * KIB;
pub const GIB: u64 = 1024 * MIB;
pub const TIB: u64 = 1024 * GIB;

/// The unit a GUC is stored in, as `pg_settings.unit` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// A plain number (counts, factors, microseconds of `commit_delay`...).
    None,
    Bytes,
    Kb,
    /// 8 kB pages: `shared_buffers`, `effective_cache_size`, `temp_buffers`, `wal_buffers`,
    /// `wal_writer_flush_after`.
    Blocks8k,
    Mb,
    Ms,
    S,
    Min,
}

/// What kind of quantity a unit measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dimension {
    Count,
    Memory,
    Time,
}

impl Unit {
    pub fn dimension(self) -> Dimension {
        match self {
            Unit::None => Dimension::Count,
            Unit::Bytes | Unit::Kb | Unit::Blocks8k | Unit::Mb => Dimension::Memory,
            Unit::Ms | Unit::S | Unit::Min => Dimension::Time,
        }
    }

    /// Size of one base unit: bytes for memory, milliseconds for time, 1 for counts.
    pub fn scale(self) -> u64 {
        match self {
            Unit::None | Unit::Bytes => 1,
            Unit::Kb => KIB,
            Unit::Blocks8k => 8 * KIB,
            Unit::Mb => MIB,
            Unit::Ms => 1,
            Unit::S => 1000,
            Unit::Min => 60_000,
        }
    }

    /// The spelling `pg_settings.unit` uses.
    pub fn label(self) -> &'static str {
        match self {
            Unit::None => "",
            Unit::Bytes => "B",
            Unit::Kb => "kB",
            Unit::Blocks8k => "8kB",
            Unit::Mb => "MB",
            Unit::Ms => "ms",
            Unit::S => "s",
            Unit::Min => "min",
        }
    }
}

const MEMORY_SUFFIXES: [(&str, u64); 5] = [("TB", TIB), ("GB", GIB), ("MB", MIB), ("kB", KIB), ("B", 1)];
const TIME_SUFFIXES: [(&str, u64); 5] = [("d", 86_400_000), ("h", 3_600_000), ("min", 60_000), ("s", 1000), ("ms", 1)];

/// `bytes` in the largest PostgreSQL unit that holds it exactly and is not finer than `base`
/// (so a value PostgreSQL stores in MB is never written in kB). `bytes` must be a multiple of
/// the base unit; the rules guarantee that by rounding first.
pub fn render_bytes(bytes: u64, base: Unit) -> String {
    if bytes == 0 {
        return "0".to_owned();
    }
    for (suffix, size) in MEMORY_SUFFIXES {
        if bytes.is_multiple_of(size) && (size >= base.scale() || base == Unit::Blocks8k && size == KIB) {
            return format!("{}{suffix}", bytes / size);
        }
    }
    bytes.to_string()
}

/// `ms` in the largest time unit that holds it exactly and is not finer than `base`.
/// Negative values are sentinels (`-1` = disabled / wait forever) and stay bare.
pub fn render_millis(ms: i64, base: Unit) -> String {
    if ms <= 0 {
        return ms.to_string();
    }
    let ums = ms as u64;
    for (suffix, size) in TIME_SUFFIXES {
        if ums.is_multiple_of(size) && size >= base.scale() {
            return format!("{}{suffix}", ums / size);
        }
    }
    ms.to_string()
}

/// A human size for explanations: `3430MiB`, `19.98GiB`.
pub struct Human(pub f64);

impl fmt::Display for Human {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        let (v, u) = if b >= TIB as f64 {
            (b / TIB as f64, "TiB")
        } else if b >= 10.0 * GIB as f64 {
            (b / GIB as f64, "GiB")
        } else if b >= MIB as f64 {
            (b / MIB as f64, "MiB")
        } else {
            (b / KIB as f64, "KiB")
        };
        if (v - v.round()).abs() < 0.005 { write!(f, "{}{u}", v.round()) } else { write!(f, "{v:.2}{u}") }
    }
}

/// Rounds a memory amount **down** to a "round" size, in whole base units.
///
/// The step is the largest power of two not above `bytes / 256`, so the loss is under 1/256
/// (0.4 %) and the result still reads well (`856MB`, `7296MB`, `2400MB`), never the ~1 GiB
/// that pg_configurator loses by truncating to whole GB. Rounding down keeps budgets within their
/// bounds. The result is at least one base unit.
pub fn round_size_down(bytes: f64, base: Unit) -> u64 {
    let unit = base.scale().max(1);
    if !bytes.is_finite() || bytes <= unit as f64 {
        return unit;
    }
    let target = (bytes / 256.0) as u64;
    let mut step = if target == 0 { 1 } else { 1u64 << (63 - target.leading_zeros()) };
    if step < unit {
        step = unit;
    } else {
        // Powers of two are multiples of every base unit (1, 1024, 8192, 2^20): nothing to do.
        debug_assert!(step.is_multiple_of(unit));
    }
    ((bytes as u64) / step * step).max(unit)
}

/// Rounds a memory amount down to whole base units only: for values that are scaled, not
/// budgeted (`wal_keep_size`, `min_wal_size`), where the exact figure reads fine as it is.
pub fn floor_to_unit(bytes: f64, base: Unit) -> u64 {
    let unit = base.scale().max(1);
    ((bytes.max(0.0) as u64) / unit * unit).max(unit)
}

/// Parses pg_configurator's `--db-ram` spelling: IEC `Ki`/`Mi`/`Gi`/`Ti`. PostgreSQL's own
/// `kB`/`MB`/`GB`/`TB` (also 1024-based) and plain bytes are accepted as well, since they mean
/// the same and operators type them.
pub fn parse_ram(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+')).unwrap_or(t.len());
    let (num, suffix) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| "must be a size such as 4096Mi or 32Gi".to_owned())?;
    let mult = match suffix.trim() {
        "" | "B" => 1,
        "Ki" | "K" | "kB" | "KB" | "KiB" => KIB,
        "Mi" | "M" | "MB" | "MiB" => MIB,
        "Gi" | "G" | "GB" | "GiB" => GIB,
        "Ti" | "T" | "TB" | "TiB" => TIB,
        other => return Err(format!("unknown unit {other:?} (use Ki, Mi, Gi or Ti, e.g. 4096Mi)")),
    };
    if !n.is_finite() || n < 0.0 {
        return Err("must not be negative".to_owned());
    }
    Ok((n * mult as f64) as u64)
}

/// Parses a GUC value as PostgreSQL does for a parameter with base unit `base`, returning the
/// number of base units (fractional if the text is not a whole number of them). Text that is
/// not a number is `None`.
pub fn parse_pg_number(s: &str, base: Unit) -> Option<f64> {
    let t = s.trim().trim_matches('\'');
    let split = t
        .char_indices()
        .find(|&(i, c)| !(c.is_ascii_digit() || c == '.' || (i == 0 && (c == '-' || c == '+'))))
        .map_or(t.len(), |(i, _)| i);
    let (num, suffix) = t.split_at(split);
    let n: f64 = num.parse().ok()?;
    let suffix = suffix.trim();
    if suffix.is_empty() {
        return Some(n);
    }
    let table: &[(&str, u64)] = match base.dimension() {
        Dimension::Memory => &MEMORY_SUFFIXES,
        Dimension::Time => &[("d", 86_400_000), ("h", 3_600_000), ("min", 60_000), ("s", 1000), ("ms", 1)],
        Dimension::Count => return None,
    };
    if base.dimension() == Dimension::Time && suffix == "us" {
        return Some(n / 1000.0 / base.scale() as f64);
    }
    let size = table.iter().find(|(s, _)| *s == suffix)?.1;
    Some(n * size as f64 / base.scale() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_render_in_the_largest_exact_unit_never_finer_than_the_base() {
        assert_eq!(render_bytes(2400 * MIB, Unit::Blocks8k), "2400MB");
        assert_eq!(render_bytes(8 * GIB, Unit::Blocks8k), "8GB");
        assert_eq!(render_bytes(9984 * KIB, Unit::Kb), "9984kB");
        assert_eq!(render_bytes(2 * GIB, Unit::Mb), "2GB");
        assert_eq!(render_bytes(1263 * MIB, Unit::Mb), "1263MB");
        assert_eq!(render_bytes(2032 * KIB, Unit::Blocks8k), "2032kB");
    }

    #[test]
    fn durations_render_in_the_largest_exact_unit() {
        assert_eq!(render_millis(1_800_000, Unit::S), "30min");
        assert_eq!(render_millis(3_600_000, Unit::S), "1h");
        assert_eq!(render_millis(86_400_000, Unit::Ms), "1d");
        assert_eq!(render_millis(212, Unit::Ms), "212ms");
        assert_eq!(render_millis(-1, Unit::Ms), "-1");
        assert_eq!(render_millis(0, Unit::Ms), "0");
    }

    #[test]
    fn rounding_loses_under_two_percent_and_stays_in_base_units() {
        for (bytes, base) in [
            (20464.64 * MIB as f64, Unit::Blocks8k),
            (2401.28 * MIB as f64, Unit::Blocks8k),
            (75.64 * MIB as f64, Unit::Kb),
            (1263.2 * MIB as f64, Unit::Mb),
            (10.0 * KIB as f64, Unit::Blocks8k),
            (700.0, Unit::Kb),
        ] {
            let r = round_size_down(bytes, base);
            assert!(r.is_multiple_of(base.scale()), "{bytes} -> {r}");
            assert!(r as f64 <= bytes.max(base.scale() as f64), "{bytes} -> {r}");
            if bytes > 256.0 * base.scale() as f64 {
                assert!(r as f64 >= bytes * (1.0 - 1.0 / 256.0), "{bytes} -> {r} loses too much");
            }
        }
        // pg_configurator prints 20464.64MiB as 19GB (-0.98GiB); tuner keeps 20416MB.
        assert_eq!(render_bytes(round_size_down(20464.64 * MIB as f64, Unit::Blocks8k), Unit::Blocks8k), "20416MB");
    }

    #[test]
    fn ram_accepts_iec_and_postgres_spellings() {
        assert_eq!(parse_ram("4096Mi"), Ok(4 * GIB));
        assert_eq!(parse_ram("32Gi"), Ok(32 * GIB));
        assert_eq!(parse_ram("32GB"), Ok(32 * GIB));
        assert_eq!(parse_ram("1.5Gi"), Ok(1536 * MIB));
        assert!(parse_ram("-4Gi").is_err());
        assert!(parse_ram("4 parsecs").is_err());
        assert!(parse_ram("").is_err());
    }

    #[test]
    fn postgres_numbers_parse_into_base_units() {
        assert_eq!(parse_pg_number("2401MB", Unit::Blocks8k), Some(2401.0 * 128.0));
        assert_eq!(parse_pg_number("19GB", Unit::Blocks8k), Some(19.0 * 131072.0));
        assert_eq!(parse_pg_number("10000kB", Unit::Kb), Some(10000.0));
        assert_eq!(parse_pg_number("30min", Unit::S), Some(1800.0));
        assert_eq!(parse_pg_number("86400000", Unit::Ms), Some(86_400_000.0));
        assert_eq!(parse_pg_number("-1", Unit::Ms), Some(-1.0));
        assert_eq!(parse_pg_number("0.9", Unit::None), Some(0.9));
        assert_eq!(parse_pg_number("on", Unit::None), None);
        assert_eq!(parse_pg_number("10MB", Unit::None), None);
    }
}
