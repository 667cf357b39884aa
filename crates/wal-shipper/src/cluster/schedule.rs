//! When a backup is due: an interval (`"24h"`) or a five-field cron pattern (`"0 3 * * *"`,
//! evaluated in UTC so that every member reads it the same way). Pure.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};

#[derive(Debug, Clone)]
pub enum Schedule {
    /// Due once this long has passed since the previous backup started.
    Every(Duration),
    /// Due once a time the pattern names has passed since the previous backup started.
    Cron { pattern: String, cron: Box<croner::Cron> },
}

impl Schedule {
    /// Parses a duration (`30m`, `24h`, `7d`) or a cron pattern (five fields, or `@daily`).
    pub fn parse(text: &str) -> Result<Schedule, String> {
        let t = text.trim();
        if let Ok(d) = humantime::parse_duration(t) {
            if d < Duration::from_secs(10) {
                return Err("an interval must be at least 10s".into());
            }
            return Ok(Schedule::Every(d));
        }
        if t.starts_with('@') || t.split_whitespace().count() == 5 {
            return croner::Cron::from_str(t)
                .map(|c| Schedule::Cron { pattern: t.to_owned(), cron: Box::new(c) })
                .map_err(|e| format!("not a valid cron pattern ({e})"));
        }
        Err("must be an interval such as 24h or a cron pattern such as \"0 3 * * *\" (UTC)".into())
    }

    /// Whether a backup is due at `now`, given when the previous one started (`None`: there
    /// is none, so it is due at once).
    pub fn due(&self, previous: Option<DateTime<Utc>>, now: DateTime<Utc>) -> bool {
        let Some(prev) = previous else { return true };
        match self {
            Schedule::Every(d) => chrono::Duration::from_std(*d).is_ok_and(|d| now >= prev + d),
            Schedule::Cron { cron, .. } => cron.find_next_occurrence(&prev, false).is_ok_and(|next| next <= now),
        }
    }
}

impl std::fmt::Display for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Schedule::Every(d) => write!(f, "every {}", humantime::format_duration(*d)),
            Schedule::Cron { pattern, .. } => write!(f, "cron {pattern} (UTC)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().expect("time")
    }

    #[test]
    fn an_interval_is_due_once_it_has_passed_since_the_previous_start() {
        let s = Schedule::parse("1h").unwrap();
        assert!(s.due(None, t("2026-12-03T00:00:00Z")));
        assert!(!s.due(Some(t("2026-12-03T00:00:00Z")), t("2026-12-03T00:59:59Z")));
        assert!(s.due(Some(t("2026-12-03T00:00:00Z")), t("2026-12-03T01:00:00Z")));
    }

    #[test]
    fn a_cron_pattern_is_due_once_a_named_time_has_passed_since_the_previous_start() {
        let s = Schedule::parse("0 3 * * *").unwrap();
        let prev = Some(t("2026-12-03T03:00:05Z"));
        assert!(!s.due(prev, t("2026-12-04T02:59:59Z")));
        assert!(s.due(prev, t("2026-12-04T03:00:00Z")));
        // A missed time (every member down at 03:00) is made up at once.
        assert!(s.due(Some(t("2026-12-01T03:00:00Z")), t("2026-12-03T12:00:00Z")));
        assert!(Schedule::parse("@daily").is_ok());
    }

    #[test]
    fn schedules_that_cannot_mean_anything_are_refused_with_the_rule() {
        assert!(Schedule::parse("5s").unwrap_err().contains("at least 10s"));
        assert!(Schedule::parse("61 3 * * *").unwrap_err().contains("cron"));
        assert!(Schedule::parse("soon").unwrap_err().contains("interval"));
    }
}
