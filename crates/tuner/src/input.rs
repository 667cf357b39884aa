//! The validated inputs of the rules: hardware, workload, version and pg_configurator's knobs.
//!
//! Parsing happens in [`crate::cli`] (which knows the option names); this module holds the
//! value types, their spellings, and the checks that need several inputs at once.

use std::fmt;

use crate::catalog::{MAX_VERSION, MIN_VERSION};
use crate::units::{GIB, Human, MIB};

/// Storage under the data directory. pg_configurator knows SATA, SAS and SSD; PGTune adds
/// NVMe and SAN (and calls spinning disks `hdd`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Disk {
    Sata,
    Sas,
    San,
    Ssd,
    Nvme,
}

impl Disk {
    pub const ALL: [Disk; 5] = [Disk::Sata, Disk::Sas, Disk::San, Disk::Ssd, Disk::Nvme];
    pub const ACCEPTED: &'static str = "SATA, SAS, SSD, NVMe, SAN (or PGTune's hdd, ssd, nvme, san)";

    /// Case-insensitive; PGTune's `hdd` is a spinning disk of unknown bus, taken as SATA (the
    /// cautious choice: the slowest random reads).
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.trim().to_ascii_lowercase().as_str() {
            "sata" | "hdd" => Disk::Sata,
            "sas" => Disk::Sas,
            "san" => Disk::San,
            "ssd" => Disk::Ssd,
            "nvme" => Disk::Nvme,
            _ => return None,
        })
    }

    pub fn is_rotational(self) -> bool {
        matches!(self, Disk::Sata | Disk::Sas)
    }
}

impl fmt::Display for Disk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Disk::Sata => "SATA",
            Disk::Sas => "SAS",
            Disk::San => "SAN",
            Disk::Ssd => "SSD",
            Disk::Nvme => "NVMe",
        })
    }
}

/// The workload. pg_configurator's three duties plus PGTune's database types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Duty {
    /// pg_configurator `financial`: short transactions where every commit must survive.
    Financial,
    /// PGTune `oltp`: many short transactions.
    Oltp,
    /// PGTune `web`: many connections, simple queries, mostly reads.
    Web,
    /// pg_configurator and PGTune `mixed` (pg_configurator's default).
    Mixed,
    /// pg_configurator `statistic`; PGTune `dw` (data warehouse, OLAP): few large queries.
    Statistic,
    /// PGTune `desktop`: a developer machine sharing RAM with other programs.
    Desktop,
}

impl Duty {
    pub const ALL: [Duty; 6] = [Duty::Financial, Duty::Oltp, Duty::Web, Duty::Mixed, Duty::Statistic, Duty::Desktop];
    pub const ACCEPTED: &'static str =
        "statistic, mixed, financial (pg_configurator) or oltp, olap, web, dw, data-warehouse, desktop (PGTune)";

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.trim().to_ascii_lowercase().replace('_', "-").as_str() {
            "financial" => Duty::Financial,
            "oltp" => Duty::Oltp,
            "web" => Duty::Web,
            "mixed" => Duty::Mixed,
            "statistic" | "olap" | "dw" | "data-warehouse" | "datawarehouse" => Duty::Statistic,
            "desktop" => Duty::Desktop,
            _ => return None,
        })
    }

    /// The pg_configurator duty whose per-duty constants this workload borrows.
    pub fn pg_configurator_class(self) -> PgcDuty {
        match self {
            Duty::Financial => PgcDuty::Financial,
            Duty::Statistic => PgcDuty::Statistic,
            Duty::Oltp | Duty::Web | Duty::Mixed | Duty::Desktop => PgcDuty::Mixed,
        }
    }

    /// The PGTune database type for the same workload.
    pub fn pgtune_type(self) -> &'static str {
        match self {
            Duty::Financial | Duty::Oltp => "oltp",
            Duty::Web => "web",
            Duty::Mixed => "mixed",
            Duty::Statistic => "dw",
            Duty::Desktop => "desktop",
        }
    }

    /// Many short transactions: parallel query and big statistics targets cost more than they
    /// bring.
    pub fn is_oltp_like(self) -> bool {
        matches!(self, Duty::Financial | Duty::Oltp | Duty::Web | Duty::Desktop)
    }
}

impl fmt::Display for Duty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Duty::Financial => "financial",
            Duty::Oltp => "oltp",
            Duty::Web => "web",
            Duty::Mixed => "mixed",
            Duty::Statistic => "statistic",
            Duty::Desktop => "desktop",
        })
    }
}

/// pg_configurator's own three duties.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgcDuty {
    Financial,
    Mixed,
    Statistic,
}

/// `--replication-enabled VALUE`. pg_configurator parses it with Python's `bool(str)`, so
/// `False` (any non-empty string) means **true** and only an empty value means false; tuner
/// reads the value for what it says. `None` for a value that is not a boolean.
pub fn parse_replication(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "" | "false" | "no" | "off" | "0" | "f" | "n" => Some(false),
        "true" | "yes" | "on" | "1" | "t" | "y" => Some(true),
        _ => None,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Platform {
    Linux,
    Windows,
}

impl Platform {
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_uppercase().as_str() {
            "LINUX" => Some(Platform::Linux),
            "WINDOWS" => Some(Platform::Windows),
            _ => None,
        }
    }
}

/// pg_configurator's memory split of usable RAM. Each part is `None` unless the operator gave
/// it: tuner and pg_configurator have different defaults for the unset ones.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct MemoryParts {
    pub shared_buffers: Option<f64>,
    pub client: Option<f64>,
    pub maintenance: Option<f64>,
    pub autovacuum_workers: Option<f64>,
    pub maintenance_conns: Option<f64>,
}

/// Everything the rules read. Built by [`crate::cli`] (flags, then detection for what the
/// flags leave out) and checked by [`Inputs::check`].
#[derive(Debug, Clone, PartialEq)]
pub struct Inputs {
    /// CPU cores, rounded to one decimal as pg_configurator does (`500m` is 0.5).
    pub cpu: f64,
    /// Total RAM in bytes.
    pub ram: u64,
    pub disk: Disk,
    pub duty: Duty,
    /// PostgreSQL major version.
    pub version: u8,
    pub replication: bool,
    pub reserved_ram_percent: f64,
    pub reserved_system_ram: u64,
    pub parts: MemoryParts,
    pub min_conns: u32,
    pub max_conns: u32,
    pub min_autovac_workers: u32,
    pub max_autovac_workers: u32,
    pub min_maint_conns: u32,
    pub max_maint_conns: u32,
    pub common_conf: bool,
    pub platform: Platform,
}

/// Least usable RAM tuner tunes for: below this, even PostgreSQL's defaults (128MB of
/// shared_buffers plus per-connection memory) do not fit next to anything else.
pub const MIN_USABLE_RAM: u64 = 256 * MIB;
pub const MAX_RAM: u64 = 64 * 1024 * GIB;
pub const MAX_CPU: f64 = 4096.0;

impl Inputs {
    /// The machine and workload of the reference deployment's invocation, for tests and docs:
    /// 4 vCPU, 4096Mi, SSD, mixed, PostgreSQL 15, 200 connections.
    pub fn masterclass() -> Self {
        Self { min_conns: 200, max_conns: 200, ..Self::new(4.0, 4 * GIB, Disk::Ssd, Duty::Mixed, 15) }
    }

    /// pg_configurator's defaults for everything but the machine.
    pub fn new(cpu: f64, ram: u64, disk: Disk, duty: Duty, version: u8) -> Self {
        Self {
            cpu,
            ram,
            disk,
            duty,
            version,
            replication: true,
            reserved_ram_percent: 10.0,
            reserved_system_ram: 256 * MIB,
            parts: MemoryParts::default(),
            min_conns: 50,
            max_conns: 500,
            min_autovac_workers: 4,
            max_autovac_workers: 20,
            min_maint_conns: 4,
            max_maint_conns: 16,
            common_conf: false,
            platform: Platform::Linux,
        }
    }

    /// RAM left for PostgreSQL: `RAM × (100 − reserved %) / 100 − reserved system RAM`, the base
    /// pg_configurator sizes everything from.
    pub fn usable_ram(&self) -> f64 {
        self.ram as f64 * (100.0 - self.reserved_ram_percent) / 100.0 - self.reserved_system_ram as f64
    }

    /// Checks what no single option can check alone, pushing `(option, value, rule)` problems.
    /// Every rule names the accepted range.
    pub fn check(&self, p: &mut outrigger_daemon::config::Problems) {
        if !(self.cpu > 0.0 && self.cpu <= MAX_CPU) {
            p.push("--db-cpu", self.cpu, format!("must be more than 0 and at most {MAX_CPU} cores"));
        }
        if !(MIN_VERSION..=MAX_VERSION).contains(&self.version) {
            p.push("--pg-version", self.version, format!("must be {MIN_VERSION} to {MAX_VERSION}"));
        }
        if !(0.0..=90.0).contains(&self.reserved_ram_percent) {
            p.push("--reserved-ram-percent", self.reserved_ram_percent, "must be 0 to 90");
        }
        if self.ram > MAX_RAM {
            p.push("--db-ram", format!("{}", Human(self.ram as f64)), "must be at most 64Ti");
        } else if self.usable_ram() < MIN_USABLE_RAM as f64 {
            let needed =
                (MIN_USABLE_RAM + self.reserved_system_ram) as f64 * 100.0 / (100.0 - self.reserved_ram_percent);
            p.push(
                "--db-ram",
                format!("{}", Human(self.ram as f64)),
                format!(
                    "leaves {} usable after --reserved-ram-percent {} and --reserved-system-ram {}; \
                     tuner needs at least {} usable, i.e. --db-ram of at least {}Mi (accepted range {}Mi to 64Ti)",
                    Human(self.usable_ram().max(0.0)),
                    self.reserved_ram_percent,
                    Human(self.reserved_system_ram as f64),
                    Human(MIN_USABLE_RAM as f64),
                    (needed / MIB as f64).ceil(),
                    (needed / MIB as f64).ceil(),
                ),
            );
        }
        let conns_max = 100_000;
        for (opt, v) in [("--min-conns", self.min_conns), ("--max-conns", self.max_conns)] {
            if !(10..=conns_max).contains(&v) {
                p.push(opt, v, format!("must be 10 to {conns_max}"));
            }
        }
        pair(p, "--min-conns", self.min_conns, "--max-conns", self.max_conns);
        for (opt, v) in
            [("--min-autovac-workers", self.min_autovac_workers), ("--max-autovac-workers", self.max_autovac_workers)]
        {
            if !(1..=1000).contains(&v) {
                p.push(opt, v, "must be 1 to 1000");
            }
        }
        pair(p, "--min-autovac-workers", self.min_autovac_workers, "--max-autovac-workers", self.max_autovac_workers);
        for (opt, v) in [("--min-maint-conns", self.min_maint_conns), ("--max-maint-conns", self.max_maint_conns)] {
            if !(1..=1000).contains(&v) {
                p.push(opt, v, "must be 1 to 1000");
            }
        }
        pair(p, "--min-maint-conns", self.min_maint_conns, "--max-maint-conns", self.max_maint_conns);
        self.check_parts(p);
    }

    fn check_parts(&self, p: &mut outrigger_daemon::config::Problems) {
        let m = &self.parts;
        for (opt, v) in [
            ("--shared-buffers-part", m.shared_buffers),
            ("--client-mem-part", m.client),
            ("--maintenance-mem-part", m.maintenance),
            ("--autovacuum-workers-mem-part", m.autovacuum_workers),
            ("--maintenance-conns-mem-part", m.maintenance_conns),
        ] {
            if let Some(v) = v
                && !(v > 0.0 && v < 1.0)
            {
                p.push(opt, v, "must be more than 0 and less than 1");
            }
        }
        let (sb, cl, mt) = self.memory_split();
        // pg_configurator demands a sum of exactly 1.0; tuner leaves what is not given to
        // PostgreSQL for the OS page cache, so it only needs the parts to fit.
        if sb + cl + mt > 1.0 + 1e-9 {
            p.push(
                "--shared-buffers-part + --client-mem-part + --maintenance-mem-part",
                format!("{sb} + {cl} + {mt}"),
                "must add up to at most 1.0 (what is left over is the OS page cache)",
            );
        }
        if let (Some(a), Some(b)) = (m.autovacuum_workers, m.maintenance_conns)
            && ((a + b) * 10.0).round() != 10.0
        {
            p.push(
                "--autovacuum-workers-mem-part + --maintenance-conns-mem-part",
                format!("{a} + {b}"),
                "must add up to 1.0 (they split the maintenance memory)",
            );
        }
    }

    /// tuner's split of usable RAM: shared_buffers, client (work_mem) and maintenance parts.
    ///
    /// Defaults when not given: 0.25 / 0.20 / 0.15, leaving 0.40 to the OS page cache.
    /// pg_configurator's 0.7 / 0.2 / 0.1 leaves nothing for the page cache: 70 % for
    /// shared_buffers starves the cache PostgreSQL relies on for everything shared_buffers
    /// misses (and for WAL, sorts spilling to disk, the OS), and makes every checkpoint flush
    /// a larger dirty set at once.
    pub fn memory_split(&self) -> (f64, f64, f64) {
        let m = &self.parts;
        (m.shared_buffers.unwrap_or(0.25), m.client.unwrap_or(0.20), m.maintenance.unwrap_or(0.15))
    }

    /// Share of the maintenance memory that autovacuum workers get (the rest is for manual
    /// maintenance sessions). Giving one of pg_configurator's pair implies the other.
    pub fn autovacuum_share(&self) -> f64 {
        match (self.parts.autovacuum_workers, self.parts.maintenance_conns) {
            (Some(a), _) => a,
            (None, Some(b)) => 1.0 - b,
            (None, None) => 0.5,
        }
    }
}

fn pair(p: &mut outrigger_daemon::config::Problems, lo_opt: &str, lo: u32, hi_opt: &str, hi: u32) {
    if lo > hi {
        p.push(lo_opt, lo, format!("must not exceed {hi_opt} ({hi})"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outrigger_daemon::config::Problems;

    fn problems(i: &Inputs) -> Vec<String> {
        let mut p = Problems::new();
        i.check(&mut p);
        p.into_vec().iter().map(ToString::to_string).collect()
    }

    #[test]
    fn spellings_of_both_tools_are_accepted() {
        assert_eq!(Duty::parse("Statistic"), Some(Duty::Statistic));
        assert_eq!(Duty::parse("data-warehouse"), Some(Duty::Statistic));
        assert_eq!(Duty::parse("data_warehouse"), Some(Duty::Statistic));
        assert_eq!(Duty::parse("OLAP"), Some(Duty::Statistic));
        assert_eq!(Duty::parse("oltp"), Some(Duty::Oltp));
        assert_eq!(Duty::parse("banking"), None);
        assert_eq!(Disk::parse("nvme"), Some(Disk::Nvme));
        assert_eq!(Disk::parse("hdd"), Some(Disk::Sata));
        assert_eq!(Disk::parse("SSD"), Some(Disk::Ssd));
        assert_eq!(Disk::parse("tape"), None);
    }

    #[test]
    fn replication_flag_means_what_it_says() {
        assert_eq!(parse_replication("False"), Some(false));
        assert_eq!(parse_replication(""), Some(false));
        assert_eq!(parse_replication("True"), Some(true));
        assert_eq!(parse_replication("maybe"), None);
    }

    #[test]
    fn the_masterclass_inputs_are_valid() {
        assert_eq!(problems(&Inputs::masterclass()), Vec::<String>::new());
        // 0.9 × 4096MiB − 256MiB, as pg_configurator computes it.
        assert!((Inputs::masterclass().usable_ram() - 3430.4 * MIB as f64).abs() < 1.0);
    }

    #[test]
    fn too_little_ram_names_the_option_and_the_accepted_range() {
        let p = problems(&Inputs::new(1.0, 512 * MIB, Disk::Ssd, Duty::Mixed, 15));
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].starts_with("--db-ram (512MiB): leaves 204.80MiB usable"), "{p:?}");
        assert!(p[0].contains("at least 569Mi (accepted range 569Mi to 64Ti)"), "{p:?}");
    }

    #[test]
    fn memory_parts_must_fit_in_usable_ram() {
        let mut i = Inputs::masterclass();
        i.parts.shared_buffers = Some(0.7);
        i.parts.client = Some(0.2);
        i.parts.maintenance = Some(0.1);
        assert_eq!(problems(&i), Vec::<String>::new(), "pg_configurator's explicit split is accepted");
        i.parts.client = Some(0.3);
        let p = problems(&i);
        assert!(p[0].contains("must add up to at most 1.0"), "{p:?}");
    }

    #[test]
    fn unsupported_versions_and_inverted_ranges_are_reported_together() {
        let mut i = Inputs::masterclass();
        i.version = 12;
        i.min_conns = 300;
        let p = problems(&i);
        assert!(p.contains(&"--pg-version (12): must be 13 to 18".to_owned()), "{p:?}");
        assert!(p.contains(&"--min-conns (300): must not exceed --max-conns (200)".to_owned()), "{p:?}");
    }
}
