use crate::{Kv, LeaseId};

/// What went wrong talking to etcd, in the kinds a caller branches on.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// No answer within the deadline, connection refused or reset, no etcd leader: the
    /// cluster may be fine, we just cannot reach it now. Retry later.
    #[error("etcd {op} {key}: unavailable: {detail}")]
    Unavailable { op: &'static str, key: String, detail: String },
    /// A compare-and-swap did not hold. `current` is the key's value at that moment, if any.
    #[error("etcd {op} {key}: compare failed (key now {})", describe(current.as_ref()))]
    CompareFailed { op: &'static str, key: String, current: Option<Kv> },
    /// The lease expired or was revoked: anything attached to it is gone.
    #[error("etcd lease {lease:x}: lost ({detail})")]
    LeaseLost { lease: LeaseId, detail: String },
    /// etcd answered, but refused the request (bad credentials, permission, bad argument).
    /// Retrying the same request will not help.
    #[error("etcd {op} {key}: rejected: {detail}")]
    Rejected { op: &'static str, key: String, detail: String },
}

fn describe(kv: Option<&Kv>) -> String {
    match kv {
        None => "absent".to_owned(),
        Some(kv) => format!("{:?} at mod_revision {}", String::from_utf8_lossy(&kv.value), kv.mod_revision),
    }
}

impl EtcdError {
    pub fn is_unavailable(&self) -> bool {
        matches!(self, EtcdError::Unavailable { .. })
    }

    /// Classifies an `etcd-client` error for operation `op` on `key`.
    pub(crate) fn from_client(op: &'static str, key: &str, err: etcd_client::Error) -> Self {
        use etcd_client::Error as E;
        use tonic_code::Code;
        let key = key.to_owned();
        match err {
            E::GRpcStatus(status) => {
                let detail = status.message().to_owned();
                if detail.contains("lease not found") {
                    return EtcdError::LeaseLost { lease: 0, detail };
                }
                match Code::from(status.code() as i32) {
                    Code::Unavailable
                    | Code::DeadlineExceeded
                    | Code::Unknown
                    | Code::Aborted
                    | Code::Cancelled
                    | Code::ResourceExhausted
                    | Code::Internal => EtcdError::Unavailable { op, key, detail },
                    Code::Other => EtcdError::Rejected { op, key, detail },
                }
            }
            E::TransportError(e) => EtcdError::Unavailable { op, key, detail: e.to_string() },
            E::IoError(e) => EtcdError::Unavailable { op, key, detail: e.to_string() },
            // Opening a keep-alive stream for an expired lease: etcd-client reports the TTL 0
            // answer this way. The lease is gone; retrying cannot bring it back.
            E::LeaseKeepAliveError(e) if e.contains("lease not found") => EtcdError::LeaseLost { lease: 0, detail: e },
            E::WatchError(e) | E::LeaseKeepAliveError(e) => EtcdError::Unavailable { op, key, detail: e },
            other => EtcdError::Rejected { op, key, detail: other.to_string() },
        }
    }

    pub(crate) fn timeout(op: &'static str, key: &str, after: std::time::Duration) -> Self {
        EtcdError::Unavailable { op, key: key.to_owned(), detail: format!("no answer within {after:?}") }
    }
}

/// gRPC codes, grouped by what the caller should do with them. Kept local so that callers do
/// not need `tonic` in their dependency list.
mod tonic_code {
    pub(super) enum Code {
        Unavailable,
        DeadlineExceeded,
        Unknown,
        Aborted,
        Cancelled,
        ResourceExhausted,
        Internal,
        Other,
    }

    impl From<i32> for Code {
        fn from(c: i32) -> Self {
            match c {
                1 => Code::Cancelled,
                2 => Code::Unknown,
                4 => Code::DeadlineExceeded,
                8 => Code::ResourceExhausted,
                10 => Code::Aborted,
                13 => Code::Internal,
                14 => Code::Unavailable,
                _ => Code::Other,
            }
        }
    }
}
