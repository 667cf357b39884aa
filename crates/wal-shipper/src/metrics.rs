//! Every metric wal-shipper's daemon exports, declared in one place. Labels come from closed
//! enums, so every series exists from the start at 0.

use prometheus::{Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use crate::walpush::Pushed;

/// How an upload ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadResult {
    Uploaded,
    AlreadyArchived,
    Replaced,
    Failed,
}

impl UploadResult {
    const ALL: [UploadResult; 4] =
        [UploadResult::Uploaded, UploadResult::AlreadyArchived, UploadResult::Replaced, UploadResult::Failed];

    fn as_str(self) -> &'static str {
        match self {
            UploadResult::Uploaded => "uploaded",
            UploadResult::AlreadyArchived => "already_archived",
            UploadResult::Replaced => "replaced",
            UploadResult::Failed => "failed",
        }
    }
}

impl From<Pushed> for UploadResult {
    fn from(p: Pushed) -> Self {
        match p {
            Pushed::Uploaded => UploadResult::Uploaded,
            Pushed::AlreadyArchived => UploadResult::AlreadyArchived,
            Pushed::Replaced => UploadResult::Replaced,
        }
    }
}

/// Why a scheduled backup failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackupFailure {
    /// PostgreSQL refused or dropped the backup session.
    Postgres,
    /// The storage failed a request.
    Storage,
    /// The lock's lease could not be kept (etcd unreachable): the backup was stopped.
    LeaseLost,
    /// etcd failed while publishing the result.
    Etcd,
    Other,
}

impl BackupFailure {
    const ALL: [BackupFailure; 5] = [
        BackupFailure::Postgres,
        BackupFailure::Storage,
        BackupFailure::LeaseLost,
        BackupFailure::Etcd,
        BackupFailure::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BackupFailure::Postgres => "postgres",
            BackupFailure::Storage => "storage",
            BackupFailure::LeaseLost => "lease_lost",
            BackupFailure::Etcd => "etcd",
            BackupFailure::Other => "other",
        }
    }
}

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// `.ready` files not yet uploaded (the archive backlog).
    pub backlog: IntGauge,
    /// Age of the oldest `.ready` file not yet uploaded.
    pub oldest_ready_age: Gauge,
    pub in_flight: IntGauge,
    uploads: IntCounterVec,
    pub uploaded_bytes: IntCounter,
    /// Unix time of the last successful upload.
    pub last_upload: Gauge,
    /// `pg_stat_archiver`: the last segment PostgreSQL archived, and its failures.
    pub last_archived: Gauge,
    pub archiver_failed: IntGauge,
    /// The cluster's newest backup (from `outrigger/backup/last`).
    pub last_backup_time: Gauge,
    pub last_backup_age: Gauge,
    pub last_backup_bytes: IntGauge,
    pub last_full_backup_time: Gauge,
    /// Scheduled backups this member took, by kind, and how long they took.
    backups: IntCounterVec,
    pub backup_duration: Histogram,
    backup_failures: IntCounterVec,
    pub backup_running: IntGauge,
    /// etcd requests that failed, and values there that could not be decoded.
    etcd_errors: IntCounterVec,
    config_reloads: IntCounterVec,
}

fn must<T>(r: prometheus::Result<T>) -> T {
    // Names and help texts are constants below: building them cannot fail.
    r.unwrap_or_else(|e| panic!("metric definition: {e}"))
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = outrigger_daemon::metrics::registry("wal_shipper", env!("CARGO_PKG_VERSION"));
        let backlog = must(IntGauge::new(
            "wal_shipper_archive_backlog_segments",
            "WAL files PostgreSQL marked .ready that are not uploaded yet.",
        ));
        let oldest_ready_age = must(Gauge::new(
            "wal_shipper_archive_lag_seconds",
            "Age of the oldest .ready WAL file not uploaded yet (0 when none).",
        ));
        let in_flight = must(IntGauge::new("wal_shipper_uploads_in_flight", "Uploads running now."));
        let uploads =
            must(IntCounterVec::new(Opts::new("wal_shipper_uploads_total", "WAL uploads by result."), &["result"]));
        for r in UploadResult::ALL {
            uploads.with_label_values(&[r.as_str()]);
        }
        let uploaded_bytes =
            must(IntCounter::new("wal_shipper_uploaded_bytes_total", "WAL bytes uploaded (before compression)."));
        let last_upload = must(Gauge::new(
            "wal_shipper_last_upload_timestamp_seconds",
            "Unix time of the last successful WAL upload.",
        ));
        let last_archived = must(Gauge::new(
            "wal_shipper_last_archived_timestamp_seconds",
            "Unix time PostgreSQL last archived a segment (pg_stat_archiver.last_archived_time; 0 if never).",
        ));
        let archiver_failed = must(IntGauge::new(
            "wal_shipper_archiver_failed_count",
            "Failed archive_command runs since PostgreSQL's statistics were reset (pg_stat_archiver.failed_count).",
        ));
        let last_backup_time = must(Gauge::new(
            "wal_shipper_last_backup_timestamp_seconds",
            "Unix time the cluster's newest backup finished (outrigger/backup/last; 0 if none).",
        ));
        let last_backup_age = must(Gauge::new(
            "wal_shipper_last_backup_age_seconds",
            "Seconds since the cluster's newest backup finished.",
        ));
        let last_backup_bytes =
            must(IntGauge::new("wal_shipper_last_backup_stored_bytes", "Bytes stored by the cluster's newest backup."));
        let last_full_backup_time = must(Gauge::new(
            "wal_shipper_last_full_backup_timestamp_seconds",
            "Unix time the cluster's newest full backup finished (0 if none).",
        ));
        let backups = must(IntCounterVec::new(
            Opts::new("wal_shipper_scheduled_backups_total", "Scheduled backups this member took, by kind."),
            &["kind"],
        ));
        for k in ["full", "delta"] {
            backups.with_label_values(&[k]);
        }
        let backup_duration = must(Histogram::with_opts(
            HistogramOpts::new(
                "wal_shipper_backup_duration_seconds",
                "Duration of the scheduled backups this member took.",
            )
            .buckets(vec![1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 14400.0]),
        ));
        let backup_failures = must(IntCounterVec::new(
            Opts::new(
                "wal_shipper_backup_failures_total",
                "Scheduled backups this member started that failed, by reason.",
            ),
            &["reason"],
        ));
        for r in BackupFailure::ALL {
            backup_failures.with_label_values(&[r.as_str()]);
        }
        let backup_running = must(IntGauge::new("wal_shipper_backup_running", "1 while this member takes a backup."));
        let etcd_errors = must(IntCounterVec::new(
            Opts::new(
                "wal_shipper_etcd_errors_total",
                "etcd requests that failed, and values that could not be decoded.",
            ),
            &["kind"],
        ));
        for k in ["request", "garbage"] {
            etcd_errors.with_label_values(&[k]);
        }
        let config_reloads = must(IntCounterVec::new(
            Opts::new(
                "wal_shipper_config_reloads_total",
                "Config reloads of the daemon (SIGHUP), by result: applied, unchanged, invalid.",
            ),
            &["result"],
        ));
        for o in outrigger_daemon::reload::Outcome::ALL {
            config_reloads.with_label_values(&[o.as_str()]);
        }
        for c in [
            Box::new(config_reloads.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(last_archived.clone()),
            Box::new(archiver_failed.clone()),
            Box::new(last_backup_time.clone()),
            Box::new(last_backup_age.clone()),
            Box::new(last_backup_bytes.clone()),
            Box::new(last_full_backup_time.clone()),
            Box::new(backups.clone()),
            Box::new(backup_duration.clone()),
            Box::new(backup_failures.clone()),
            Box::new(backup_running.clone()),
            Box::new(etcd_errors.clone()),
            Box::new(backlog.clone()),
            Box::new(oldest_ready_age.clone()),
            Box::new(in_flight.clone()),
            Box::new(uploads.clone()),
            Box::new(uploaded_bytes.clone()),
            Box::new(last_upload.clone()),
        ] {
            must(registry.register(c));
        }
        Metrics {
            registry,
            backlog,
            oldest_ready_age,
            in_flight,
            uploads,
            uploaded_bytes,
            last_upload,
            last_archived,
            archiver_failed,
            last_backup_time,
            last_backup_age,
            last_backup_bytes,
            last_full_backup_time,
            backups,
            backup_duration,
            backup_failures,
            backup_running,
            etcd_errors,
            config_reloads,
        }
    }

    pub fn reload(&self, o: outrigger_daemon::reload::Outcome) {
        self.config_reloads.with_label_values(&[o.as_str()]).inc();
    }

    pub fn backup_taken(&self, kind: &str, seconds: f64) {
        self.backups.with_label_values(&[kind]).inc();
        self.backup_duration.observe(seconds);
    }

    pub fn backup_failed(&self, why: BackupFailure) {
        self.backup_failures.with_label_values(&[why.as_str()]).inc();
    }

    pub fn etcd_request_failed(&self) {
        self.etcd_errors.with_label_values(&["request"]).inc();
    }

    pub fn etcd_garbage(&self) {
        self.etcd_errors.with_label_values(&["garbage"]).inc();
    }

    pub fn upload(&self, r: UploadResult) {
        self.uploads.with_label_values(&[r.as_str()]).inc();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
