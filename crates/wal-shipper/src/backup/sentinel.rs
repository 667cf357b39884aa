//! WAL-G's backup JSON: the sentinel (`BackupSentinelDtoV2`, PascalCase, LSNs as JSON numbers,
//! `ChkpNum` written as `null`), `metadata.json` (the same facts in snake_case) and
//! `files_metadata.json`. Fields are declared in WAL-G's order, so our files read like its
//! own; readers ignore unknown keys and accept WAL-E's lower-case `spec`.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

/// The `DateFmt` WAL-G writes.
pub const DATE_FMT: &str = "%Y-%m-%dT%H:%M:%S.%fZ";

/// Times as Go writes `time.Time`: RFC 3339 in UTC with microseconds, trailing zeros trimmed.
pub mod go_time {
    use super::*;

    pub fn format(t: &DateTime<Utc>) -> String {
        let s = t.to_rfc3339_opts(SecondsFormat::Micros, true);
        // 2026-01-02T03:04:05.120000Z -> 2026-01-02T03:04:05.12Z; .000000Z -> Z
        match s.strip_suffix('Z').and_then(|b| b.split_once('.')) {
            Some((head, frac)) => {
                let frac = frac.trim_end_matches('0');
                if frac.is_empty() { format!("{head}Z") } else { format!("{head}.{frac}Z") }
            }
            None => s,
        }
    }

    pub fn serialize<S: serde::Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_str(&format(t)),
            None => s.serialize_str("0001-01-01T00:00:00Z"),
        }
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        Ok(s.and_then(|s| DateTime::parse_from_rfc3339(&s).ok()).map(|t| t.with_timezone(&Utc)).filter(|t| {
            // Go's zero time means "not set".
            t.timestamp() > 0
        }))
    }
}

/// `basebackups_005/<name>_backup_stop_sentinel.json`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Sentinel {
    #[serde(rename = "LSN", default)]
    pub lsn: Option<u64>,
    #[serde(rename = "DeltaLSN", default, skip_serializing_if = "Option::is_none")]
    pub delta_lsn: Option<u64>,
    #[serde(rename = "DeltaFrom", default, skip_serializing_if = "Option::is_none")]
    pub delta_from: Option<String>,
    #[serde(rename = "DeltaFullName", default, skip_serializing_if = "Option::is_none")]
    pub delta_full_name: Option<String>,
    #[serde(rename = "DeltaCount", default, skip_serializing_if = "Option::is_none")]
    pub delta_count: Option<i64>,
    #[serde(rename = "PgVersion", default)]
    pub pg_version: i64,
    #[serde(rename = "FinishLSN", default)]
    pub finish_lsn: Option<u64>,
    #[serde(rename = "SystemIdentifier", default, skip_serializing_if = "Option::is_none")]
    pub system_identifier: Option<u64>,
    #[serde(rename = "UncompressedSize", default)]
    pub uncompressed_size: i64,
    #[serde(rename = "CompressedSize", default)]
    pub compressed_size: i64,
    #[serde(rename = "DataCatalogSize", default, skip_serializing_if = "is_zero")]
    pub data_catalog_size: i64,
    #[serde(rename = "Spec", alias = "spec", default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<serde_json::Value>,
    #[serde(rename = "UserData", default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<serde_json::Value>,
    #[serde(rename = "FilesMetadataDisabled", default, skip_serializing_if = "is_false")]
    pub files_metadata_disabled: bool,
    #[serde(rename = "ChkpNum", default)]
    pub chkp_num: Option<u32>,
    #[serde(rename = "DeltaChkpNum", default, skip_serializing_if = "Option::is_none")]
    pub delta_chkp_num: Option<u32>,
    #[serde(rename = "Version", default)]
    pub version: i64,
    #[serde(rename = "StartTime", default, with = "go_time")]
    pub start_time: Option<DateTime<Utc>>,
    #[serde(rename = "FinishTime", default, with = "go_time")]
    pub finish_time: Option<DateTime<Utc>>,
    #[serde(rename = "DateFmt", default)]
    pub date_fmt: String,
    #[serde(rename = "Hostname", default)]
    pub hostname: String,
    #[serde(rename = "DataDir", default)]
    pub data_dir: String,
    #[serde(rename = "IsPermanent", default)]
    pub is_permanent: bool,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}
fn is_false(b: &bool) -> bool {
    !*b
}

/// `base_<...>/metadata.json`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Metadata {
    #[serde(with = "go_time", default)]
    pub start_time: Option<DateTime<Utc>>,
    #[serde(with = "go_time", default)]
    pub finish_time: Option<DateTime<Utc>>,
    #[serde(default)]
    pub date_fmt: String,
    #[serde(default)]
    pub hostname: String,
    #[serde(default)]
    pub data_dir: String,
    #[serde(default)]
    pub pg_version: i64,
    #[serde(default)]
    pub start_lsn: u64,
    #[serde(default)]
    pub finish_lsn: u64,
    #[serde(default)]
    pub is_permanent: bool,
    #[serde(default)]
    pub system_identifier: Option<u64>,
    #[serde(default)]
    pub uncompressed_size: i64,
    #[serde(default)]
    pub compressed_size: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<serde_json::Value>,
}

impl Metadata {
    pub fn from_sentinel(s: &Sentinel) -> Metadata {
        Metadata {
            start_time: s.start_time,
            finish_time: s.finish_time,
            date_fmt: s.date_fmt.clone(),
            hostname: s.hostname.clone(),
            data_dir: s.data_dir.clone(),
            pg_version: s.pg_version,
            start_lsn: s.lsn.unwrap_or(0),
            finish_lsn: s.finish_lsn.unwrap_or(0),
            is_permanent: s.is_permanent,
            system_identifier: s.system_identifier,
            uncompressed_size: s.uncompressed_size,
            compressed_size: s.compressed_size,
            user_data: s.user_data.clone(),
        }
    }
}

/// One file's entry in `files_metadata.json`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct FileMeta {
    #[serde(rename = "IsIncremented", default)]
    pub is_incremented: bool,
    #[serde(rename = "IsSkipped", default)]
    pub is_skipped: bool,
    #[serde(rename = "MTime", with = "go_time", default)]
    pub mtime: Option<DateTime<Utc>>,
    #[serde(rename = "CorruptBlocks", default, skip_serializing_if = "Option::is_none")]
    pub corrupt_blocks: Option<serde_json::Value>,
    #[serde(rename = "UpdatesCount", default)]
    pub updates_count: u64,
}

/// `base_<...>/files_metadata.json`: every file, and which tar holds it.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct FilesMetadata {
    #[serde(rename = "Files", default)]
    pub files: BTreeMap<String, FileMeta>,
    #[serde(rename = "TarFileSets", default)]
    pub tar_file_sets: BTreeMap<String, Vec<String>>,
    #[serde(rename = "DatabasesByNames", default)]
    pub databases_by_names: serde_json::Value,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinel_writes_lsns_as_numbers_and_a_null_checkpoint_number() {
        let s = Sentinel {
            lsn: Some(0x2000028),
            finish_lsn: Some(0x2000100),
            pg_version: 150020,
            system_identifier: Some(u64::MAX - 1),
            version: 2,
            start_time: Some("2026-12-03T10:00:00.120Z".parse().expect("t")),
            date_fmt: DATE_FMT.into(),
            ..Default::default()
        };
        let j = serde_json::to_string(&s).expect("json");
        assert!(
            j.starts_with(
                r#"{"LSN":33554472,"PgVersion":150020,"FinishLSN":33554688,"SystemIdentifier":18446744073709551614,"#
            ),
            "{j}"
        );
        assert!(j.contains(r#""ChkpNum":null"#), "{j}");
        assert!(j.contains(r#""StartTime":"2026-12-03T10:00:00.12Z""#), "{j}");
        let back: Sentinel = serde_json::from_str(&j).expect("read back");
        assert_eq!(back.system_identifier, Some(u64::MAX - 1), "no f64 rounding");
    }

    #[test]
    fn wale_sentinels_with_lower_case_spec_and_unknown_keys_are_read() {
        let s: Sentinel =
            serde_json::from_str(r#"{"LSN": 5, "spec": {"base_prefix": "/d"}, "Unknown": 1}"#).expect("reads");
        assert_eq!(s.lsn, Some(5));
        assert!(s.spec.is_some());
        assert_eq!(s.start_time, None);
    }

    #[test]
    fn go_times_trim_trailing_zeros() {
        let t: DateTime<Utc> = "2026-01-02T03:04:05Z".parse().expect("t");
        assert_eq!(go_time::format(&t), "2026-01-02T03:04:05Z");
        let t: DateTime<Utc> = "2026-01-02T03:04:05.123456Z".parse().expect("t");
        assert_eq!(go_time::format(&t), "2026-01-02T03:04:05.123456Z");
    }

    mod hostile {
        //! Sentinels are whatever the bucket holds (another writer, a newer WAL-G, damage).
        use super::*;
        use proptest::prelude::*;

        const WALG: &str = r#"{"LSN":33554472,"DeltaFrom":"base_000000010000000000000002","PgVersion":150020,"FinishLSN":33554688,"SystemIdentifier":7310000000000000000,"UncompressedSize":123,"CompressedSize":45,"UserData":{"a":[1,2]},"ChkpNum":null,"Version":2,"StartTime":"2026-12-03T10:00:00.123456789Z","FinishTime":"2026-12-03T10:00:01Z","DateFmt":"%Y-%m-%dT%H:%M:%S.%fZ","Hostname":"h","DataDir":"/d","IsPermanent":true}"#;

        /// A WAL-G sentinel with bytes changed, cut, or spliced; or arbitrary text.
        fn text() -> impl Strategy<Value = Vec<u8>> {
            prop_oneof![
                proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4).prop_map(|edits| {
                    let mut v = WALG.as_bytes().to_vec();
                    for (at, b) in edits {
                        let i = at % v.len();
                        v[i] = b;
                    }
                    v
                }),
                (any::<usize>(), "[-0-9a-zA-Z.:\"{}\\[\\],eE+]{0,24}").prop_map(|(at, s)| {
                    let mut t = WALG.to_owned();
                    let mut i = at % t.len();
                    while !t.is_char_boundary(i) {
                        i -= 1;
                    }
                    t.insert_str(i, &s);
                    t.into_bytes()
                }),
                any::<usize>().prop_map(|at| WALG.as_bytes()[..at % WALG.len()].to_vec()),
                proptest::collection::vec(any::<u8>(), 0..100),
            ]
        }

        proptest! {
            #[test]
            fn a_sentinel_of_any_content_is_read_or_refused_and_what_is_read_writes_back_stably(t in text()) {
                let Ok(s) = serde_json::from_slice::<Sentinel>(&t) else { return Ok(()) };
                let once = serde_json::to_string(&s).expect("a read sentinel serializes");
                let back: Sentinel = serde_json::from_str(&once).expect("our own sentinel reads back");
                prop_assert_eq!(serde_json::to_string(&back).expect("again"), once);
                let _ = serde_json::to_string(&Metadata::from_sentinel(&s)).expect("metadata serializes");
                let known = |n: &str, s: Sentinel| crate::backup::Known {
                    listed: crate::backup::Listed { name: n.into(), modified: DateTime::<Utc>::MIN_UTC },
                    sentinel: s,
                };
                let _ = crate::backup::latest(vec![known("a", s), known("b", back), known("c", Sentinel::default())]);
            }
        }
    }
}
