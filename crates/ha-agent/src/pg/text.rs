//! Pure text work for PostgreSQL: parsing `pg_controldata` output and timeline history files,
//! LSN notation, and rendering the files ha-agent manages (`postgresql.conf`, `pg_hba.conf`,
//! `primary_conninfo`).

use std::fmt::Write as _;

use crate::core::{ClusterState, Control, TimelineSwitch};

/// `X/Y` (hex) to bytes.
pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.trim().split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// Bytes to `X/Y` (hex), as PostgreSQL writes LSNs.
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

/// Parses `pg_controldata` output (run with `LC_ALL=C`).
pub fn parse_controldata(text: &str) -> Result<Control, String> {
    let field =
        |name: &str| text.lines().find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':')).map(str::trim));
    let need = |name: &str| field(name).ok_or_else(|| format!("pg_controldata has no {name:?} line"));
    let sysid = need("Database system identifier")?
        .parse::<u64>()
        .map_err(|_| "pg_controldata: system identifier is not a number".to_owned())?;
    let state = match need("Database cluster state")? {
        "shut down" => ClusterState::ShutDown,
        "shut down in recovery" => ClusterState::ShutDownInRecovery,
        "in production" => ClusterState::InProduction,
        "in archive recovery" => ClusterState::InArchiveRecovery,
        "in crash recovery" => ClusterState::InCrashRecovery,
        "shutting down" => ClusterState::ShuttingDown,
        "starting up" => ClusterState::Starting,
        other => return Err(format!("pg_controldata: unknown cluster state {other:?}")),
    };
    let checkpoint_lsn =
        parse_lsn(need("Latest checkpoint location")?).ok_or("pg_controldata: bad checkpoint location")?;
    let checkpoint_tl: u32 =
        need("Latest checkpoint's TimeLineID")?.parse().map_err(|_| "pg_controldata: bad TimeLineID")?;
    // A standby may have replayed onto a newer timeline than its last restartpoint's.
    let min_recovery_tl: u32 = field("Min recovery ending loc's timeline").and_then(|s| s.parse().ok()).unwrap_or(0);
    let hints = field("wal_log_hints setting") == Some("on");
    let checksums = field("Data page checksum version").is_some_and(|v| v != "0");
    Ok(Control {
        sysid,
        state,
        timeline: checkpoint_tl.max(min_recovery_tl),
        checkpoint_lsn,
        rewindable: hints || checksums,
    })
}

/// Parses a timeline history file (`<parent tli>\t<switch LSN>\t<reason>` per line).
pub fn parse_history_file(text: &str) -> Vec<(TimelineSwitch, String)> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split('\t');
            let timeline = f.next()?.trim().parse().ok()?;
            let lsn = parse_lsn(f.next()?)?;
            let reason = f.next().unwrap_or("").trim().to_owned();
            Some((TimelineSwitch { timeline, lsn, leader: None }, reason))
        })
        .collect()
}

/// A value quoted for postgresql.conf.
pub fn conf_quote(v: &str) -> String {
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "''"))
}

/// A value quoted for a libpq conninfo string.
pub fn conninfo_quote(v: &str) -> String {
    if !v.is_empty() && v.chars().all(|c| c.is_ascii_alphanumeric() || "._-/:@".contains(c)) {
        return v.to_owned();
    }
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// `host` and `port` from a member's `conn_url` (`postgres://host:port/postgres`).
pub fn host_port_from_conn_url(url: &str) -> Option<(String, u16)> {
    let rest = url.strip_prefix("postgres://").or_else(|| url.strip_prefix("postgresql://"))?;
    let hostport = rest.split('/').next()?;
    let hostport = hostport.rsplit('@').next()?;
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || hostport.starts_with('[') => (h, p.parse().ok()?),
        _ => (hostport, 5432),
    };
    Some((host.trim_start_matches('[').trim_end_matches(']').to_owned(), port))
}

/// Patroni's slot name for a member: lower case, anything but `[a-z0-9_]` as `_`, at most 63.
pub fn slot_name(member: &str) -> String {
    let s: String = member
        .to_lowercase()
        .chars()
        .map(|c| if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' { c } else { '_' })
        .collect();
    s.chars().take(63).collect()
}

/// Where a replica streams from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub member: String,
    pub host: String,
    pub port: u16,
    /// `standby_cluster`'s remote primary: it streams through `standby_cluster`'s
    /// `primary_slot_name` (`remote_slot`, none when not set), not through a member slot.
    pub remote: bool,
    pub remote_slot: Option<String>,
}

impl Upstream {
    /// A member of this cluster.
    pub fn member(member: &str, host: String, port: u16) -> Self {
        Self { member: member.to_owned(), host, port, remote: false, remote_slot: None }
    }
}

/// What goes into the managed `postgresql.conf`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfInput<'a> {
    pub listen_addresses: &'a str,
    pub port: u16,
    pub socket_dir: &'a str,
    /// Cluster-wide parameters (`config.postgresql.parameters`), then local ones, which win.
    pub cluster_parameters: &'a [(String, String)],
    pub local_parameters: &'a [(String, String)],
    pub wal_log_hints: bool,
    /// Replica settings: `None` renders no `primary_conninfo` (a primary, or a standby with no
    /// upstream).
    pub upstream: Option<&'a Upstream>,
    pub replication_user: &'a str,
    pub replication_password: Option<&'a str>,
    pub application_name: &'a str,
    /// `use_slots`: a replica streams through the slot named after it (Patroni's default).
    pub use_slots: bool,
}

/// The marker line that records which member the file points at, read back after a restart
/// of the agent (see [`upstream_marker`]).
const UPSTREAM_MARKER: &str = "# ha-agent upstream: ";

/// Renders the managed `postgresql.conf`. The original one is kept as `postgresql.base.conf`
/// and included first, so that everything here wins over it.
pub fn render_postgresql_conf(i: &ConfInput<'_>) -> String {
    let mut out = String::new();
    out.push_str("# Written by ha-agent; changes here are lost. Put settings in postgresql.base.conf,\n");
    out.push_str("# or in postgresql.parameters (the agent's config file, or the cluster's config key).\n");
    if let Some(u) = i.upstream {
        let _ = writeln!(out, "{UPSTREAM_MARKER}{}", u.member);
    }
    out.push_str("include 'postgresql.base.conf'\n");
    let mut settings: Vec<(String, String)> = vec![
        ("listen_addresses".into(), i.listen_addresses.into()),
        ("port".into(), i.port.to_string()),
        ("unix_socket_directories".into(), i.socket_dir.into()),
        ("hot_standby".into(), "on".into()),
        ("wal_level".into(), "replica".into()),
        ("max_wal_senders".into(), "10".into()),
        ("max_replication_slots".into(), "10".into()),
        ("wal_keep_size".into(), "128MB".into()),
        // A replica retries its upstream quickly after a failover instead of every 5 s.
        ("wal_retrieve_retry_interval".into(), "500ms".into()),
    ];
    if i.wal_log_hints {
        settings.push(("wal_log_hints".into(), "on".into()));
    }
    for (k, v) in i.cluster_parameters.iter().chain(i.local_parameters) {
        settings.retain(|(name, _)| name != k);
        settings.push((k.clone(), v.clone()));
    }
    if let Some(u) = i.upstream {
        let mut ci = format!(
            "host={} port={} user={} application_name={} sslmode=prefer",
            conninfo_quote(&u.host),
            u.port,
            conninfo_quote(i.replication_user),
            conninfo_quote(i.application_name)
        );
        if let Some(p) = i.replication_password {
            let _ = write!(ci, " password={}", conninfo_quote(p));
        }
        settings.push(("primary_conninfo".into(), ci));
        if u.remote {
            if let Some(slot) = &u.remote_slot {
                settings.push(("primary_slot_name".into(), slot.clone()));
            }
        } else if i.use_slots {
            settings.push(("primary_slot_name".into(), slot_name(i.application_name)));
        }
    }
    settings.push(("recovery_target_timeline".into(), "latest".into()));
    for (k, v) in settings {
        let _ = writeln!(out, "{k} = {}", conf_quote(&v));
    }
    out
}

/// The member a managed `postgresql.conf` points at, if any.
pub fn upstream_marker(conf: &str) -> Option<String> {
    conf.lines().find_map(|l| l.strip_prefix(UPSTREAM_MARKER)).map(|s| s.trim().to_owned())
}

/// Which `pg_hba.conf` lines apply, with Patroni's precedence: the local file's
/// `postgresql.pg_hba` when it sets one, else the cluster's (config key), else the default.
pub fn hba_in_force<'a>(local: &'a [String], local_set: bool, cluster: Option<&'a [String]>) -> &'a [String] {
    match cluster {
        Some(lines) if !local_set => lines,
        _ => local,
    }
}

pub fn render_pg_hba(lines: &[String]) -> String {
    render_lines("pg_hba", lines)
}

/// `pg_ident.conf` from `postgresql.pg_ident` lines.
pub fn render_pg_ident(lines: &[String]) -> String {
    render_lines("pg_ident", lines)
}

fn render_lines(key: &str, lines: &[String]) -> String {
    let mut out = format!("# Written by ha-agent from postgresql.{key}; changes here are lost.\n");
    for l in lines {
        out.push_str(l);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_local_pg_hba_wins_then_the_clusters_then_the_default() {
        let (local, cluster) =
            (vec!["local all all peer".to_owned()], vec!["host all all 10.0.0.0/8 trust".to_owned()]);
        assert_eq!(hba_in_force(&local, true, Some(&cluster)), local.as_slice());
        assert_eq!(hba_in_force(&local, false, Some(&cluster)), cluster.as_slice(), "the default gives way");
        assert_eq!(hba_in_force(&local, false, None), local.as_slice());
    }

    const CONTROLDATA: &str = "pg_control version number:            1300
Catalog version number:               202209061
Database system identifier:           7268616322854375442
Database cluster state:               shut down
pg_control last modified:             Mon 24 Nov 2026 10:00:00 AM UTC
Latest checkpoint location:           0/3000028
Latest checkpoint's REDO location:    0/3000028
Latest checkpoint's TimeLineID:       2
Latest checkpoint's PrevTimeLineID:   2
Minimum recovery ending location:     0/0
Min recovery ending loc's timeline:   0
wal_log_hints setting:                off
Data page checksum version:           1
";

    #[test]
    fn controldata_of_a_clean_primary() {
        let c = parse_controldata(CONTROLDATA).unwrap();
        assert_eq!(c.sysid, 7268616322854375442);
        assert_eq!(c.state, ClusterState::ShutDown);
        assert_eq!(c.timeline, 2);
        assert_eq!(c.checkpoint_lsn, 0x3000028);
        assert!(c.rewindable, "checksums make pg_rewind possible");
    }

    #[test]
    fn controldata_standby_timeline_comes_from_the_minimum_recovery_point_when_newer() {
        let text = CONTROLDATA
            .replace("shut down\n", "shut down in recovery\n")
            .replace("timeline:   0", "timeline:   3")
            .replace("version:           1", "version:           0");
        let c = parse_controldata(&text).unwrap();
        assert_eq!((c.state, c.timeline, c.rewindable), (ClusterState::ShutDownInRecovery, 3, false));
    }

    #[test]
    fn controldata_garbage_is_an_error() {
        assert!(parse_controldata("nothing useful").is_err());
    }

    #[test]
    fn lsn_round_trip() {
        assert_eq!(parse_lsn("16/B374D848"), Some(0x16_B374_D848));
        assert_eq!(format_lsn(0x16_B374_D848), "16/B374D848");
        assert_eq!(parse_lsn("nope"), None);
    }

    #[test]
    fn history_file_lines() {
        let h = parse_history_file(
            "1\t0/3000000\tno recovery target specified\n\n2\t0/5000100\tno recovery target specified\n",
        );
        assert_eq!(h.len(), 2);
        assert_eq!((h[1].0.timeline, h[1].0.lsn), (2, 0x5000100));
    }

    #[test]
    fn conn_url_host_and_port() {
        assert_eq!(host_port_from_conn_url("postgres://10.0.0.2:5433/postgres"), Some(("10.0.0.2".into(), 5433)));
        assert_eq!(host_port_from_conn_url("postgres://db2/postgres"), Some(("db2".into(), 5432)));
        assert_eq!(host_port_from_conn_url("postgres://[fd00::2]:5432/postgres"), Some(("fd00::2".into(), 5432)));
        assert_eq!(host_port_from_conn_url("http://x"), None);
    }

    /// The conf of replica `n1` streaming from `up`, no parameters.
    fn replica_conf(up: &Upstream, use_slots: bool) -> String {
        render_postgresql_conf(&ConfInput {
            listen_addresses: "*",
            port: 5432,
            socket_dir: "/run/pg",
            cluster_parameters: &[],
            local_parameters: &[],
            wal_log_hints: true,
            upstream: Some(up),
            replication_user: "replicator",
            replication_password: None,
            application_name: "n1",
            use_slots,
        })
    }

    #[test]
    fn without_use_slots_a_replica_names_no_slot() {
        let text = replica_conf(&Upstream::member("n2", "10.0.0.2".into(), 5432), false);
        assert!(text.contains("primary_conninfo"), "{text}");
        assert!(!text.contains("primary_slot_name"), "{text}");
    }

    #[test]
    fn a_standby_leader_streams_through_the_slot_standby_cluster_names_or_none() {
        let conf = |slot: Option<&str>| {
            let up = Upstream {
                member: "(standby_cluster)".into(),
                host: "10.9.0.1".into(),
                port: 5433,
                remote: true,
                remote_slot: slot.map(str::to_owned),
            };
            replica_conf(&up, true)
        };
        let named = conf(Some("dr_site"));
        assert!(named.contains("host=10.9.0.1 port=5433"), "{named}");
        assert!(named.contains("primary_slot_name = 'dr_site'"), "{named}");
        assert!(!conf(None).contains("primary_slot_name"), "{}", conf(None));
    }

    #[test]
    fn slot_names_follow_patroni() {
        assert_eq!(slot_name("PG-1.example"), "pg_1_example");
    }

    #[test]
    fn replica_conf_points_at_the_upstream_and_local_parameters_win() {
        let up = Upstream::member("n2", "10.0.0.2".into(), 5432);
        let cluster = vec![("max_connections".into(), "100".into()), ("wal_level".into(), "logical".into())];
        let local = vec![("max_connections".into(), "200".into())];
        let text = render_postgresql_conf(&ConfInput {
            listen_addresses: "10.0.0.1",
            port: 5432,
            socket_dir: "/run/postgresql",
            cluster_parameters: &cluster,
            local_parameters: &local,
            wal_log_hints: true,
            upstream: Some(&up),
            replication_user: "replicator",
            replication_password: Some("it's"),
            application_name: "n1",
            use_slots: true,
        });
        assert_eq!(upstream_marker(&text).as_deref(), Some("n2"));
        assert!(text.contains("max_connections = '200'\n") && !text.contains("'100'"), "{text}");
        assert!(text.contains("wal_level = 'logical'\n") && !text.contains("'replica'"), "{text}");
        assert!(
            text.contains(
                "primary_conninfo = 'host=10.0.0.2 port=5432 user=replicator application_name=n1 sslmode=prefer password=''it\\\\''s'''"
            ),
            "{text}"
        );
        assert!(text.contains("primary_slot_name = 'n1'\n"));
    }

    #[test]
    fn primary_conf_has_no_upstream() {
        let text = render_postgresql_conf(&ConfInput {
            listen_addresses: "*",
            port: 5432,
            socket_dir: "/tmp",
            cluster_parameters: &[],
            local_parameters: &[],
            wal_log_hints: false,
            upstream: None,
            replication_user: "r",
            replication_password: None,
            application_name: "n1",
            use_slots: true,
        });
        assert_eq!(upstream_marker(&text), None);
        assert!(!text.contains("primary_conninfo") && !text.contains("wal_log_hints"));
    }
}
