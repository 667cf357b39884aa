//! The command line: pg_configurator's options with its spellings, plus tuner's own.
//!
//! Exit codes:
//!
//! | code | meaning |
//! |---|---|
//! | 0 | settings written (or validated, or applied) |
//! | 1 | a check or an action failed: `--validate` found problems, etcd refused, a file could not be written |
//! | 2 | bad input: each problem names the option, the value and the accepted range |
//! | 3 | `--apply-etcd` without `--yes`: the diff was shown, nothing was written |
//! | 65, 66, 78 | `--config` / `--check-config` file problems (see `outrigger_daemon::cli`) |
//!
//! Differences from pg_configurator's command line, on purpose:
//! - `--replication-enabled=False` means false (pg_configurator's `type=bool` makes any
//!   non-empty string true); a bare `--replication-enabled` means true.
//! - Without `--db-cpu`, `--db-ram` or `--db-disk-type`, the container's cgroup limits and the
//!   data directory's disk are detected, instead of the host's totals and `SAS`.
//! - `--pg-version` accepts 13 to 18; `--conf-profiles`, `--settings-history` and
//!   `--specific-setting-history` are recognised and refused with a message.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use outrigger_daemon::cli::CommonArgs;
use outrigger_daemon::config::{Problem, Problems};

use crate::catalog::{MAX_VERSION, MIN_VERSION};
use crate::detect::Probe;
use crate::explain::Sources;
use crate::input::{Disk, Duty, Inputs, MemoryParts, Platform, parse_replication};
use crate::output::Format;
use crate::units::{Human, parse_ram};

pub const EXIT_FAILED: u8 = 1;
pub const EXIT_BAD_INPUT: u8 = 2;
pub const EXIT_NOT_APPLIED: u8 = 3;

/// PostgreSQL settings from hardware and workload: a drop-in for pg_configurator, without its
/// bugs, with every value explained (`--explain`) and checkable against the real server
/// (`--validate`).
#[derive(Debug, Clone, Parser)]
#[command(name = "tuner", version, about)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,

    /// conf | json | patroni-json | alter-system.
    #[arg(long, value_name = "FORMAT")]
    pub output_format: Option<String>,
    /// Write here instead of stdout; an existing file is kept as <name>_<unix time>.
    #[arg(long, value_name = "PATH")]
    pub output_file_name: Option<PathBuf>,

    /// CPU cores: 8, 2.5 or Kubernetes millicores (500m). Default: detected (cgroup quota, else host).
    #[arg(long, value_name = "CORES", allow_hyphen_values = true)]
    pub db_cpu: Option<String>,
    /// RAM: 4096Mi, 32Gi (Ki, Mi, Gi, Ti). Default: detected (cgroup limit, else host).
    #[arg(long, value_name = "SIZE", allow_hyphen_values = true)]
    pub db_ram: Option<String>,
    /// SATA | SAS | SSD | NVMe | SAN (PGTune's hdd too). Default: detected from sysfs for --data-dir.
    #[arg(long, value_name = "TYPE")]
    pub db_disk_type: Option<String>,
    /// statistic | mixed | financial, or PGTune's oltp | olap | web | dw | data-warehouse | desktop.
    #[arg(long, value_name = "DUTY")]
    pub db_duty: Option<String>,
    /// true/false (also on/off, yes/no, 1/0; empty is false). Default: true.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub replication_enabled: Option<String>,
    /// PostgreSQL major version, 13 to 18. Default: 15 (pg_configurator's), or the --validate binary's.
    #[arg(long, value_name = "VERSION")]
    pub pg_version: Option<String>,

    /// Percent of RAM left to the system. Default: 10.
    #[arg(long, value_name = "PERCENT", allow_hyphen_values = true)]
    pub reserved_ram_percent: Option<String>,
    /// RAM left to the system on top of the percentage. Default: 256Mi.
    #[arg(long, value_name = "SIZE", allow_hyphen_values = true)]
    pub reserved_system_ram: Option<String>,
    /// Share of usable RAM for shared_buffers. tuner's default: 0.25 (pg_configurator: 0.7).
    #[arg(long, value_name = "PART", allow_hyphen_values = true)]
    pub shared_buffers_part: Option<String>,
    /// Share of usable RAM for work_mem of all backends. Default: 0.2.
    #[arg(long, value_name = "PART", allow_hyphen_values = true)]
    pub client_mem_part: Option<String>,
    /// Share of usable RAM for maintenance memory. tuner's default: 0.15 (pg_configurator: 0.1).
    #[arg(long, value_name = "PART", allow_hyphen_values = true)]
    pub maintenance_mem_part: Option<String>,
    /// Share of the maintenance memory for autovacuum workers. Default: 0.5.
    #[arg(long, value_name = "PART", allow_hyphen_values = true)]
    pub autovacuum_workers_mem_part: Option<String>,
    /// Share of the maintenance memory for manual maintenance sessions. Default: 0.5.
    #[arg(long, value_name = "PART", allow_hyphen_values = true)]
    pub maintenance_conns_mem_part: Option<String>,
    /// Fewest connections (at 4 cores and below). Default: 50.
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub min_conns: Option<String>,
    /// Most connections (at 96 cores). Default: 500.
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub max_conns: Option<String>,
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub min_autovac_workers: Option<String>,
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub max_autovac_workers: Option<String>,
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub min_maint_conns: Option<String>,
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub max_maint_conns: Option<String>,
    /// Add pg_configurator's logging, statistics and extension settings.
    #[arg(long)]
    pub common_conf: bool,
    /// LINUX | WINDOWS. Default: LINUX.
    #[arg(long, value_name = "PLATFORM")]
    pub platform: Option<String>,
    /// pg_configurator's optional profiles: not supported by tuner.
    #[arg(long, value_name = "LIST")]
    pub conf_profiles: Option<String>,
    /// pg_configurator's settings history: not supported by tuner.
    #[arg(long, value_name = "A,B")]
    pub settings_history: Option<String>,
    /// pg_configurator's settings history: not supported by tuner.
    #[arg(long, value_name = "NAME")]
    pub specific_setting_history: Option<String>,
    /// Print what detection read (to stderr).
    #[arg(long)]
    pub debug: bool,

    /// Print, per parameter, the value, its rule, and what pg_configurator and PGTune give.
    #[arg(long)]
    pub explain: bool,
    /// Whose formulas: tuner (default), pg_configurator (its output, bugs included) or pgtune.
    #[arg(long, value_name = "NAME")]
    pub formula: Option<String>,
    /// Data directory whose disk type is detected. Default: $PGDATA, else /var/lib/postgresql.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Check the settings with this `postgres` binary (e.g. /usr/lib/postgresql/15/bin/postgres):
    /// an unknown parameter, a wrong unit or an out-of-range value fails with exit code 1.
    #[arg(long, value_name = "POSTGRES")]
    pub validate: Option<PathBuf>,
    /// Merge the parameters into the cluster's /<namespace>/<scope>/config (postgresql.parameters)
    /// in etcd, named by --config FILE; shows the diff and writes only with --yes.
    #[arg(long, requires = "config")]
    pub apply_etcd: bool,
    /// With --apply-etcd: write the change (otherwise the diff is shown and exit code is 3).
    #[arg(long, requires = "apply_etcd")]
    pub yes: bool,
    /// Read /proc and /sys under this directory (a host's root mounted into a container).
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub host_root: PathBuf,
}

/// Whose formulas produce the settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Formula {
    Tuner,
    PgConfigurator,
    Pgtune,
}

/// Validated inputs plus what the output needs to say about them.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub inputs: Inputs,
    pub format: Format,
    pub formula: Formula,
    /// Where each hardware input came from.
    pub sources: Sources,
    /// `name = value` of every effective input, for the output's header.
    pub header: Vec<String>,
}

/// Parses `v` as a number for `opt` within `lo..=hi`, recording a problem otherwise.
fn number<T>(p: &mut Problems, opt: &str, v: &Option<String>, default: T, lo: T, hi: T) -> T
where
    T: std::str::FromStr + PartialOrd + Copy + std::fmt::Display,
{
    let Some(s) = v else { return default };
    match s.trim().parse::<T>() {
        Ok(n) if n >= lo && n <= hi => n,
        _ => {
            p.push(opt, s, format!("must be a number from {lo} to {hi}"));
            default
        }
    }
}

fn part(p: &mut Problems, opt: &str, v: &Option<String>) -> Option<f64> {
    let s = v.as_ref()?;
    match s.trim().parse::<f64>() {
        Ok(x) if x > 0.0 && x < 1.0 => Some(x),
        _ => {
            p.push(opt, s, "must be a fraction more than 0 and less than 1 (e.g. 0.25)");
            None
        }
    }
}

/// `--db-cpu`: `8`, `2.5`, or millicores `500m`; rounded to one decimal as pg_configurator does.
fn parse_cpu(s: &str) -> Option<f64> {
    let t = s.trim();
    let cores = match t.strip_suffix('m') {
        Some(milli) => milli.parse::<f64>().ok()? / 1000.0,
        None => t.parse::<f64>().ok()?,
    };
    Some((cores * 10.0).round() / 10.0)
}

/// `--pg-version`: `15`, also `15.4`. The major version, if it parses at all.
fn parse_version(s: &str) -> Option<u8> {
    let t = s.trim();
    let major = if t.starts_with("9.") { Some(9) } else { t.split('.').next()?.parse().ok() };
    major.filter(|m: &u8| *m > 0)
}

fn default_data_dir() -> PathBuf {
    std::env::var_os("PGDATA").map_or_else(|| PathBuf::from("/var/lib/postgresql"), PathBuf::from)
}

/// Turns the command line (and detection, for what it leaves out) into validated inputs.
/// Every problem is collected, so one run reports all of them.
pub fn resolve(a: &Args, probe: &Probe, default_version: Option<u8>) -> Result<Resolved, Vec<Problem>> {
    let mut p = Problems::new();
    let mut sources = Sources::new();

    let format = match &a.output_format {
        None => Format::Conf,
        Some(f) => Format::parse(f).unwrap_or_else(|| {
            p.push("--output-format", f, format!("must be one of {}", Format::ACCEPTED));
            Format::Conf
        }),
    };
    let formula = match a.formula.as_deref().map(str::trim) {
        None | Some("tuner") => Formula::Tuner,
        Some("pg_configurator" | "pg-configurator") => Formula::PgConfigurator,
        Some("pgtune") => Formula::Pgtune,
        Some(other) => {
            p.push("--formula", other, "must be one of tuner, pg_configurator, pgtune");
            Formula::Tuner
        }
    };

    let cpu = match &a.db_cpu {
        Some(s) => match parse_cpu(s) {
            Some(c) if c > 0.0 && c <= crate::input::MAX_CPU => {
                sources.push(("cpu".into(), format!("{c} (--db-cpu)")));
                c
            }
            _ => {
                p.push("--db-cpu", s, "must be a number of cores from 0.1 to 4096, such as 8, 2.5 or 500m");
                1.0
            }
        },
        None => match probe.cpus() {
            Some(f) => {
                let c = ((f.value * 10.0).round() / 10.0).max(0.1);
                sources.push(("cpu".into(), format!("{c} (detected: {})", f.source)));
                c
            }
            None => {
                p.push_key(
                    "--db-cpu",
                    "not given and not detectable (no cgroup quota or /sys/devices/system/cpu/online)",
                );
                1.0
            }
        },
    };

    let ram = match &a.db_ram {
        Some(s) => match parse_ram(s) {
            Ok(b) => {
                sources.push(("ram".into(), format!("{} (--db-ram)", Human(b as f64))));
                b
            }
            Err(e) => {
                p.push("--db-ram", s, format!("{e}; accepted range 569Mi to 64Ti (with the default reserve)"));
                0
            }
        },
        None => match probe.ram() {
            Some(f) => {
                sources.push(("ram".into(), format!("{} (detected: {})", Human(f.value as f64), f.source)));
                f.value
            }
            None => {
                p.push_key("--db-ram", "not given and not detectable (no cgroup limit or /proc/meminfo)");
                0
            }
        },
    };

    let disk = match &a.db_disk_type {
        Some(s) => Disk::parse(s).unwrap_or_else(|| {
            p.push("--db-disk-type", s, format!("must be one of {}", Disk::ACCEPTED));
            Disk::Ssd
        }),
        None => {
            let dir = a.data_dir.clone().unwrap_or_else(default_data_dir);
            match probe.disk_of_path(&dir) {
                Some(f) => {
                    sources.push(("disk".into(), format!("{} (detected: {})", f.value, f.source)));
                    f.value
                }
                None => {
                    sources.push((
                        "disk".into(),
                        format!("SSD (could not tell the disk under {}; pass --db-disk-type)", dir.display()),
                    ));
                    Disk::Ssd
                }
            }
        }
    };
    if a.db_disk_type.is_some() {
        sources.push(("disk".into(), format!("{disk} (--db-disk-type)")));
    }

    let duty = match &a.db_duty {
        None => Duty::Mixed,
        Some(s) => Duty::parse(s).unwrap_or_else(|| {
            p.push("--db-duty", s, format!("must be one of {}", Duty::ACCEPTED));
            Duty::Mixed
        }),
    };
    let replication = match &a.replication_enabled {
        None => true,
        Some(s) => parse_replication(s).unwrap_or_else(|| {
            p.push("--replication-enabled", s, "must be true or false (also on/off, yes/no, 1/0; empty is false)");
            true
        }),
    };
    let version = match &a.pg_version {
        None => default_version.unwrap_or(15),
        Some(s) => match parse_version(s) {
            Some(v) if (MIN_VERSION..=MAX_VERSION).contains(&v) => v,
            _ => {
                p.push(
                    "--pg-version",
                    s,
                    format!("must be {MIN_VERSION} to {MAX_VERSION} (9.6 to 12 are past their end of life)"),
                );
                15
            }
        },
    };
    let platform = match &a.platform {
        None => Platform::Linux,
        Some(s) => Platform::parse(s).unwrap_or_else(|| {
            p.push("--platform", s, "must be LINUX or WINDOWS");
            Platform::Linux
        }),
    };
    if let Some(s) = &a.conf_profiles
        && !s.trim().is_empty()
    {
        p.push("--conf-profiles", s, "pg_configurator's profiles are not supported by tuner (accepted: empty)");
    }
    for (opt, v) in
        [("--settings-history", &a.settings_history), ("--specific-setting-history", &a.specific_setting_history)]
    {
        if let Some(s) = v {
            p.push(opt, s, "not supported by tuner: compare `postgres --describe-config` of the versions instead");
        }
    }

    let reserved_system_ram = match &a.reserved_system_ram {
        None => 256 * crate::units::MIB,
        Some(s) => parse_ram(s).unwrap_or_else(|e| {
            p.push("--reserved-system-ram", s, format!("{e}; e.g. 256Mi"));
            256 * crate::units::MIB
        }),
    };
    let defaults = Inputs::new(cpu, ram, disk, duty, version);
    let inputs = Inputs {
        replication,
        platform,
        common_conf: a.common_conf,
        reserved_system_ram,
        reserved_ram_percent: number(&mut p, "--reserved-ram-percent", &a.reserved_ram_percent, 10.0, 0.0, 90.0),
        parts: MemoryParts {
            shared_buffers: part(&mut p, "--shared-buffers-part", &a.shared_buffers_part),
            client: part(&mut p, "--client-mem-part", &a.client_mem_part),
            maintenance: part(&mut p, "--maintenance-mem-part", &a.maintenance_mem_part),
            autovacuum_workers: part(&mut p, "--autovacuum-workers-mem-part", &a.autovacuum_workers_mem_part),
            maintenance_conns: part(&mut p, "--maintenance-conns-mem-part", &a.maintenance_conns_mem_part),
        },
        min_conns: number(&mut p, "--min-conns", &a.min_conns, defaults.min_conns, 10, 100_000),
        max_conns: number(&mut p, "--max-conns", &a.max_conns, defaults.max_conns, 10, 100_000),
        min_autovac_workers: number(&mut p, "--min-autovac-workers", &a.min_autovac_workers, 4, 1, 1000),
        max_autovac_workers: number(&mut p, "--max-autovac-workers", &a.max_autovac_workers, 20, 1, 1000),
        min_maint_conns: number(&mut p, "--min-maint-conns", &a.min_maint_conns, 4, 1, 1000),
        max_maint_conns: number(&mut p, "--max-maint-conns", &a.max_maint_conns, 16, 1, 1000),
        ..defaults
    };
    // Cross-option checks only make sense once each option parsed.
    if p.is_empty() {
        inputs.check(&mut p);
    }
    p.finish(())?;
    let header = header_lines(&inputs, format, formula);
    Ok(Resolved { inputs, format, formula, sources, header })
}

/// pg_configurator starts its conf output with `#   arg = value` for each argument.
fn header_lines(i: &Inputs, format: Format, formula: Formula) -> Vec<String> {
    let (sb, cl, mt) = i.memory_split();
    let formula = match formula {
        Formula::Tuner => "tuner",
        Formula::PgConfigurator => "pg_configurator",
        Formula::Pgtune => "pgtune",
    };
    let format = match format {
        Format::Conf => "conf",
        Format::Json => "json",
        Format::PatroniJson => "patroni-json",
        Format::AlterSystem => "alter-system",
    };
    vec![
        format!("generated by tuner {} (formula: {formula})", env!("CARGO_PKG_VERSION")),
        format!("db_cpu = {}", i.cpu),
        format!("db_ram = {}Mi", i.ram / crate::units::MIB),
        format!("db_disk_type = {}", i.disk),
        format!("db_duty = {}", i.duty),
        format!("pg_version = {}", i.version),
        format!("replication_enabled = {}", i.replication),
        format!("min_conns = {}", i.min_conns),
        format!("max_conns = {}", i.max_conns),
        format!("reserved_ram_percent = {}", i.reserved_ram_percent),
        format!("reserved_system_ram = {}Mi", i.reserved_system_ram / crate::units::MIB),
        format!("shared_buffers_part = {sb}"),
        format!("client_mem_part = {cl}"),
        format!("maintenance_mem_part = {mt}"),
        format!("common_conf = {}", i.common_conf),
        format!("output_format = {format}"),
    ]
}

/// The settings of the chosen formula, name → value in PostgreSQL's spelling.
pub fn settings_of(r: &Resolved, tuning: &crate::Tuning) -> BTreeMap<String, String> {
    match r.formula {
        Formula::Tuner => tuning.rendered(),
        Formula::PgConfigurator => crate::pgconf::pg_configurator(&r.inputs),
        Formula::Pgtune => {
            let conns = tuning.get("max_connections").map_or(r.inputs.max_conns, |s| match s.value {
                crate::Value::Int(n) => n as u32,
                _ => r.inputs.max_conns,
            });
            crate::pgtune::pgtune(&r.inputs, conns)
        }
    }
}

/// Writes `text` to `path`, keeping an existing file as `<path>_<unix time>` (as
/// pg_configurator does, so a rerun never silently loses the previous output).
pub fn write_output(path: &Path, text: &str) -> std::io::Result<()> {
    if path.exists() {
        let ts = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let mut old = path.as_os_str().to_owned();
        old.push(format!("_{ts}"));
        std::fs::rename(path, PathBuf::from(old))?;
    }
    std::fs::write(path, text)
}

fn report(problems: &[Problem]) -> ExitCode {
    eprintln!("tuner: bad input ({} problem(s)):", problems.len());
    for p in problems {
        eprintln!("  {p}");
    }
    ExitCode::from(EXIT_BAD_INPUT)
}

/// The whole program after argument parsing.
pub fn run(a: Args) -> ExitCode {
    if let Some(path) = &a.common.check_config {
        return outrigger_daemon::cli::check_config::<crate::config::RawConfig>(path);
    }
    let probe = Probe::new(&a.host_root);
    let server = a.validate.as_ref().map(crate::server::Server::new);
    // Without --pg-version, the binary being validated against says which version to tune for.
    let server_version = match (&server, &a.pg_version) {
        (Some(s), None) => match s.version() {
            Ok((_, major)) => Some(major),
            Err(e) => {
                eprintln!("tuner: --validate: {e:#}");
                return ExitCode::from(EXIT_FAILED);
            }
        },
        _ => None,
    };
    let r = match resolve(&a, &probe, server_version) {
        Ok(r) => r,
        Err(problems) => return report(&problems),
    };
    if a.debug {
        for (what, from) in &r.sources {
            eprintln!("tuner: {what}: {from}");
        }
    }
    let tuning = crate::tune(&r.inputs);
    for w in &tuning.warnings {
        eprintln!("tuner: warning: {w}");
    }
    let settings = settings_of(&r, &tuning);
    if let Some(server) = &server {
        match server.validate(&settings, r.inputs.version) {
            Ok(report) if report.findings.is_empty() => {
                eprintln!(
                    "tuner: {} settings validated against {} ({})",
                    report.checked,
                    report.server,
                    server.bin.display()
                );
            }
            Ok(report) => {
                eprintln!(
                    "tuner: {} of {} settings fail against {}:",
                    report.findings.len(),
                    report.checked,
                    report.server
                );
                for f in &report.findings {
                    eprintln!("  {f}");
                }
                return ExitCode::from(EXIT_FAILED);
            }
            Err(e) => {
                eprintln!("tuner: --validate: {e:#}");
                return ExitCode::from(EXIT_FAILED);
            }
        }
    }

    if a.apply_etcd {
        return apply_etcd(&a, &settings, r.inputs.version);
    }

    let text = if a.explain {
        let pgc = crate::pgconf::pg_configurator(&r.inputs);
        let pgt = settings_of(&Resolved { formula: Formula::Pgtune, ..r.clone() }, &tuning);
        crate::explain::explain(&r.inputs, &tuning, &r.sources, &pgc, &pgt)
    } else {
        crate::output::render(&settings, r.format, &r.header)
    };
    match &a.output_file_name {
        None => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Some(path) => match write_output(path, &text) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("tuner: write {}: {e}", path.display());
                ExitCode::from(EXIT_FAILED)
            }
        },
    }
}

/// `--apply-etcd`: load the config file, merge into `/config`, report.
fn apply_etcd(a: &Args, settings: &BTreeMap<String, String>, version: u8) -> ExitCode {
    let Some(path) = &a.common.config else {
        eprintln!("tuner: --apply-etcd needs --config FILE (scope, namespace and [etcd])");
        return ExitCode::from(EXIT_BAD_INPUT);
    };
    let cfg = match outrigger_daemon::cli::load_or_report::<crate::config::RawConfig>(path) {
        Ok(cfg) => cfg,
        Err(code) => return code,
    };
    let mut log = cfg.log.clone();
    if let Some(f) = a.common.log_format_override() {
        log.format = f;
    }
    outrigger_daemon::logging::init(&log);
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tuner: start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    let outcome = rt.block_on(async {
        let etcd = outrigger_etcd::Etcd::connect(&cfg.etcd).await?;
        crate::apply::apply(&etcd, &cfg.layout, settings, version, a.yes).await
    });
    match outcome {
        Ok(crate::apply::Outcome::NotApplied { diff }) => {
            print!("{diff}");
            eprintln!("tuner: not applied: re-run with --yes to write this change");
            ExitCode::from(EXIT_NOT_APPLIED)
        }
        Ok(crate::apply::Outcome::UpToDate { diff }) => {
            print!("{diff}");
            eprintln!("tuner: nothing to change");
            ExitCode::SUCCESS
        }
        Ok(crate::apply::Outcome::Applied { diff, revision }) => {
            print!("{diff}");
            eprintln!("tuner: applied at etcd revision {revision}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tuner: --apply-etcd: {e}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    run(Args::parse())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Args {
        let mut v = vec!["tuner"];
        v.extend_from_slice(extra);
        Args::try_parse_from(v).unwrap()
    }

    fn resolved(extra: &[&str]) -> Result<Resolved, Vec<String>> {
        let probe = Probe::new("/nonexistent-root");
        resolve(&args(extra), &probe, None).map_err(|p| p.iter().map(ToString::to_string).collect())
    }

    const MACHINE: [&str; 6] = ["--db-cpu", "4", "--db-ram=4096Mi", "--db-disk-type", "SSD", "--db-duty=mixed"];

    #[test]
    fn the_masterclass_command_line_parses() {
        let r = resolved(&[
            "--db-cpu=4",
            "--db-ram=4096Mi",
            "--db-disk-type=SSD",
            "--db-duty=mixed",
            "--pg-version=15",
            "--output-format=patroni-json",
            "--min-conns=200",
            "--max-conns=200",
            "--common-conf",
        ])
        .unwrap();
        assert_eq!(r.inputs, Inputs { common_conf: true, ..Inputs::masterclass() });
        assert_eq!(r.format, Format::PatroniJson);
    }

    #[test]
    fn replication_enabled_false_means_false_and_empty_too() {
        for (flag, want) in [
            ("--replication-enabled=False", false),
            ("--replication-enabled=", false),
            ("--replication-enabled=True", true),
            ("--replication-enabled", true),
        ] {
            let mut a = MACHINE.to_vec();
            a.push(flag);
            assert_eq!(resolved(&a).unwrap().inputs.replication, want, "{flag}");
        }
    }

    #[test]
    fn millicores_and_fractions_round_to_one_decimal() {
        assert_eq!(parse_cpu("500m"), Some(0.5));
        assert_eq!(parse_cpu("2.54"), Some(2.5));
        assert_eq!(parse_cpu("eight"), None);
    }

    #[test]
    fn every_bad_option_is_reported_with_its_accepted_range() {
        let e = resolved(&[
            "--db-cpu=-2",
            "--db-ram=-4Gi",
            "--db-disk-type=tape",
            "--db-duty=banking",
            "--pg-version=9.6",
            "--output-format=yaml",
            "--min-conns=abc",
        ])
        .unwrap_err();
        let has = |prefix: &str| e.iter().any(|l| l.starts_with(prefix));
        assert!(has("--db-cpu (-2): must be a number of cores from 0.1 to 4096"), "{e:#?}");
        assert!(has("--db-ram (-4Gi): must not be negative; accepted range 569Mi to 64Ti"), "{e:#?}");
        assert!(has("--db-disk-type (tape): must be one of SATA, SAS, SSD, NVMe, SAN"), "{e:#?}");
        assert!(has("--db-duty (banking): must be one of statistic, mixed, financial"), "{e:#?}");
        assert!(has("--pg-version (9.6): must be 13 to 18"), "{e:#?}");
        assert!(has("--output-format (yaml): must be one of conf, json, patroni-json, alter-system"), "{e:#?}");
        assert!(has("--min-conns (abc): must be a number from 10 to 100000"), "{e:#?}");
        assert_eq!(e.len(), 7, "{e:#?}");
    }

    #[test]
    fn detection_fills_in_what_is_not_given_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("proc/self")).unwrap();
        std::fs::create_dir_all(root.join("sys/devices/system/cpu")).unwrap();
        std::fs::write(root.join("proc/meminfo"), "MemTotal:       8388608 kB\n").unwrap();
        std::fs::write(root.join("sys/devices/system/cpu/online"), "0-7\n").unwrap();
        let r = resolve(&args(&["--db-disk-type=ssd"]), &Probe::new(root), None).unwrap();
        assert_eq!(r.inputs.cpu, 8.0);
        assert_eq!(r.inputs.ram, 8 << 30);
        assert!(
            r.sources.iter().any(|(w, s)| w == "ram" && s.contains("detected: host, /proc/meminfo")),
            "{:?}",
            r.sources
        );
    }
}
