//! Every metric wal-shipper's daemon exports, declared in one place. Labels come from closed
//! enums, so every series exists from the start at 0.

use prometheus::{Gauge, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

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
        for c in [
            Box::new(backlog.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(oldest_ready_age.clone()),
            Box::new(in_flight.clone()),
            Box::new(uploads.clone()),
            Box::new(uploaded_bytes.clone()),
            Box::new(last_upload.clone()),
        ] {
            must(registry.register(c));
        }
        Metrics { registry, backlog, oldest_ready_age, in_flight, uploads, uploaded_bytes, last_upload }
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
