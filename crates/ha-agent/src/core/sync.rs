//! Synchronous replication (Patroni's `synchronous_mode`): which standbys the leader makes
//! synchronous, what it publishes in the `sync` key, and in which order, as pure functions.
//!
//! The guarantee: every transaction acknowledged to a client is on every member the `sync`
//! key lists (and on its leader). Only those members may take over (`decide.rs`), so the
//! primary that follows has every acknowledged transaction. It rests on one invariant the
//! leader keeps at every step:
//!
//! **A member is listed in `sync` only while `synchronous_standby_names` (ssn) in force makes
//! every commit wait for it, and only after it has flushed everything acknowledged before
//! that.**
//!
//! Hence the order of [`plan`]'s steps (one per call; the shell calls again until
//! [`SyncStep::Done`]):
//! 1. the key names this leader (a new leader first writes it with nobody listed);
//! 2. a listed member that ssn no longer names is unlisted first;
//! 3. before ssn changes, members the new ssn will not name are unlisted;
//! 4. ssn is changed (the shell reloads, then marks the moment, [`SyncMemory::changed`]);
//! 5. a standby is listed once ssn names it, PostgreSQL reports it `sync`, and it has
//!    flushed the primary's WAL position measured at least [`SETTLE`] after ssn named it
//!    ([`SyncMemory`]): commits acknowledged before that are below that position, commits
//!    after it waited for the standby.
//!
//! Only `FIRST n (a, b, ...)` with `n` equal to the number of names is written (every named
//! standby must confirm every commit); an ssn of any other shape in force (set by hand)
//! protects nobody as far as this module is concerned, so nobody is listed under it.
//!
//! Quorum commit (`synchronous_mode: quorum`, `ANY n (...)`) lives in `quorum.rs`.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use super::observed::Moment;
use super::view::Member;

/// Patroni's name for the standby that does not exist: with `synchronous_mode_strict` and no
/// standby to wait for, commits wait for this one (forever, until a real one is named).
pub const STRICT_PLACEHOLDER: &str = "__patroni_strict_sync_replica_placeholder__";

/// How long after a change of ssn the primary's WAL position is taken as the point a newly
/// named standby must reach: by then every walsender and backend has reloaded the setting.
pub const SETTLE: Duration = Duration::from_secs(1);

/// `synchronous_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncMode {
    #[default]
    Off,
    On,
    Quorum,
}

/// The cluster's synchronous replication settings (from `config`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncSettings {
    pub mode: SyncMode,
    /// `synchronous_mode_strict`: with no standby to wait for, commits block.
    pub strict: bool,
    /// `synchronous_node_count` (at least 1).
    pub node_count: u32,
    /// `maximum_lag_on_syncnode` in bytes; `None` (Patroni's -1): no limit.
    pub max_lag: Option<u64>,
}

impl Default for SyncSettings {
    fn default() -> Self {
        Self { mode: SyncMode::Off, strict: false, node_count: 1, max_lag: None }
    }
}

/// The `sync` key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncKey {
    pub leader: Option<String>,
    /// `sync_standby`, sorted.
    pub members: Vec<String>,
    pub quorum: u32,
    pub mod_revision: i64,
}

impl SyncKey {
    /// Synchronous mode is in force once the key names a leader (as in Patroni).
    pub fn active(&self) -> bool {
        self.leader.is_some()
    }

    /// Whether `name` is listed (names compare without case, as PostgreSQL compares them).
    pub fn lists(&self, name: &str) -> bool {
        self.members.iter().any(|m| m.eq_ignore_ascii_case(name))
    }

    pub fn led_by(&self, name: &str) -> bool {
        self.leader.as_deref().is_some_and(|l| l.eq_ignore_ascii_case(name))
    }
}

/// `synchronous_standby_names`, as far as the agent writes or reasons about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ssn {
    /// Empty: commits do not wait for any standby.
    Off,
    /// `FIRST num (names)`: the first `num` streaming standbys in the list confirm commits.
    First { num: u32, names: Vec<String> },
    /// `ANY num (names)`: any `num` of them.
    Any { num: u32, names: Vec<String> },
    /// Anything else (`*`, a syntax the agent does not write): kept as text.
    Other(String),
}

impl Ssn {
    /// `FIRST n (names)` with `n` = the number of names: every named standby confirms.
    pub fn all(mut names: Vec<String>) -> Ssn {
        if names.is_empty() {
            return Ssn::Off;
        }
        // Sorted, as Patroni writes it: the order does not matter when all must confirm.
        names.sort();
        names.dedup();
        Ssn::First { num: names.len() as u32, names }
    }

    /// The names it lists (none for `Off` and `Other`).
    pub fn names(&self) -> &[String] {
        match self {
            Ssn::First { names, .. } | Ssn::Any { names, .. } => names,
            Ssn::Off | Ssn::Other(_) => &[],
        }
    }

    /// The standbys that confirm every commit under this setting: all names of a `FIRST n`
    /// with `n` names. Under anything else, no single standby is known to have every commit.
    pub fn every_commit_waits_for(&self) -> &[String] {
        match self {
            Ssn::First { num, names } if *num as usize == names.len() => names,
            _ => &[],
        }
    }

    pub fn names_contain(&self, name: &str) -> bool {
        self.names().iter().any(|n| n.eq_ignore_ascii_case(name))
    }

    /// Parses PostgreSQL's syntax: `[FIRST|ANY] num (name, ...)`, `name, ...` (= `FIRST 1`),
    /// names bare or double-quoted. What does not parse is kept as [`Ssn::Other`].
    pub fn parse(text: &str) -> Ssn {
        let t = text.trim();
        if t.is_empty() {
            return Ssn::Off;
        }
        parse_ssn(t).unwrap_or_else(|| Ssn::Other(t.to_owned()))
    }

    /// Equal as settings: same method and count, same names in the same order (case aside).
    pub fn same_as(&self, other: &Ssn) -> bool {
        let eq =
            |a: &[String], b: &[String]| a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.eq_ignore_ascii_case(y));
        match (self, other) {
            (Ssn::Off, Ssn::Off) => true,
            (Ssn::First { num: a, names: x }, Ssn::First { num: b, names: y })
            | (Ssn::Any { num: a, names: x }, Ssn::Any { num: b, names: y }) => a == b && eq(x, y),
            (Ssn::Other(a), Ssn::Other(b)) => a == b,
            _ => false,
        }
    }
}

/// A standby name as Patroni writes it: bare when it is a plain identifier other than the
/// keywords `first` and `any`, else double-quoted.
fn quote(name: &str) -> String {
    let plain = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
        && !name.eq_ignore_ascii_case("first")
        && !name.eq_ignore_ascii_case("any");
    if plain { name.to_owned() } else { format!("\"{}\"", name.replace('"', "\"\"")) }
}

impl fmt::Display for Ssn {
    /// The setting's value as Patroni writes it: `n1`, `2 (n1,n2)`, `ANY 1 (n1,n2)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |names: &[String]| names.iter().map(|n| quote(n)).collect::<Vec<_>>().join(",");
        match self {
            Ssn::Off => Ok(()),
            Ssn::First { num: 1, names } if names.len() == 1 => f.write_str(&list(names)),
            Ssn::First { num, names } => write!(f, "{num} ({})", list(names)),
            Ssn::Any { num, names } => write!(f, "ANY {num} ({})", list(names)),
            Ssn::Other(s) => f.write_str(s),
        }
    }
}

/// Splits a name list on commas outside double quotes; unquotes quoted names.
fn parse_names(s: &str) -> Option<Vec<String>> {
    let mut names = Vec::new();
    let mut cur = String::new();
    let mut chars = s.trim().chars().peekable();
    let mut quoted_name = false;
    loop {
        // Skip leading blanks of one name.
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek() == Some(&'"') {
            chars.next();
            quoted_name = true;
            loop {
                match chars.next()? {
                    '"' if chars.peek() == Some(&'"') => {
                        chars.next();
                        cur.push('"');
                    }
                    '"' => break,
                    c => cur.push(c),
                }
            }
            while chars.peek().is_some_and(|c| c.is_whitespace()) {
                chars.next();
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                cur.push(c);
                chars.next();
            }
            cur = cur.trim().to_owned();
            if cur.is_empty() || cur.contains(char::is_whitespace) || cur.contains(['(', ')']) {
                return None;
            }
        }
        if cur.is_empty() && !quoted_name {
            return None;
        }
        names.push(std::mem::take(&mut cur));
        quoted_name = false;
        match chars.next() {
            None => return Some(names),
            Some(',') => continue,
            Some(_) => return None,
        }
    }
}

fn parse_ssn(t: &str) -> Option<Ssn> {
    let (method, rest) = match t.split_once(char::is_whitespace) {
        Some((w, rest)) if w.eq_ignore_ascii_case("first") => (Some(false), rest.trim_start()),
        Some((w, rest)) if w.eq_ignore_ascii_case("any") => (Some(true), rest.trim_start()),
        _ => (None, t),
    };
    let digits = rest.chars().take_while(char::is_ascii_digit).count();
    let after = rest[digits..].trim_start();
    if digits > 0 && after.starts_with('(') {
        let num: u32 = rest[..digits].parse().ok()?;
        let inner = after.strip_prefix('(')?.strip_suffix(')')?;
        let names = parse_names(inner)?;
        if names.iter().any(|n| n == "*") {
            return None;
        }
        return Some(if method == Some(true) { Ssn::Any { num, names } } else { Ssn::First { num, names } });
    }
    if method.is_some() {
        return None;
    }
    let names = parse_names(t)?;
    if names.iter().any(|n| n == "*") {
        return None;
    }
    Some(Ssn::First { num: 1, names })
}

/// `sync_state` of a walsender in `pg_stat_replication`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalSync {
    Async,
    Potential,
    Sync,
    Quorum,
}

impl WalSync {
    pub fn parse(s: &str) -> WalSync {
        match s {
            "sync" => WalSync::Sync,
            "quorum" => WalSync::Quorum,
            "potential" => WalSync::Potential,
            _ => WalSync::Async,
        }
    }
}

/// One row of `pg_stat_replication` on the primary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Walsender {
    /// `application_name`: the member name.
    pub name: String,
    /// `state = 'streaming'` (caught up once, and streaming).
    pub streaming: bool,
    pub sync_state: WalSync,
    /// `flush_lsn`: what the standby has on disk.
    pub flush: u64,
}

/// The leader's memory of each standby's mark: the primary's WAL position at least [`SETTLE`]
/// after the last change of ssn. A standby that has flushed past its mark has every commit
/// acknowledged before that change. Every change forgets all marks: under `ANY n` a standby
/// named before and after a change was not waited for by every earlier commit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncMemory {
    marks: BTreeMap<String, u64>,
    changed_at: Option<Moment>,
}

impl SyncMemory {
    /// ssn was changed (reload requested) at `now`.
    pub fn changed(&mut self, now: Moment) {
        self.changed_at = Some(now);
        self.marks.clear();
    }

    /// What a leader cycle saw: the ssn in force and the primary's WAL flush position. Names
    /// no longer in force are forgotten; a name in force without a mark gets `flush` as its
    /// mark, once [`SETTLE`] has passed since the last change.
    pub fn observe(&mut self, in_force: &Ssn, flush: u64, now: Moment) {
        let waits = in_force.names();
        self.marks.retain(|n, _| waits.iter().any(|w| w.eq_ignore_ascii_case(n)));
        if self.changed_at.is_some_and(|at| now.since(at) < SETTLE) {
            return;
        }
        for n in waits {
            self.marks.entry(n.to_ascii_lowercase()).or_insert(flush);
        }
    }

    /// The position `name` must have flushed to be listed.
    pub fn mark(&self, name: &str) -> Option<u64> {
        self.marks.get(&name.to_ascii_lowercase()).copied()
    }

    /// Forgets everything (this member is no longer the primary).
    pub fn clear(&mut self) {
        *self = SyncMemory::default();
    }
}

/// What the leader does next about synchronous replication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncStep {
    /// Nothing to do now.
    Done,
    /// Write the `sync` key naming us as leader, with these members (compare-and-swap on the
    /// revision read; create-if-absent when there was none).
    WriteKey { members: Vec<String>, quorum: u32, why: KeyWhy },
    /// Delete the `sync` key (synchronous mode was turned off).
    DeleteKey,
    /// Set `synchronous_standby_names` and reload.
    SetNames(Ssn),
}

/// Why the key is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyWhy {
    NewLeader,
    /// A listed member is no longer (or will no longer be) named in ssn.
    Unlist,
    /// Standbys confirmed as synchronous.
    Confirmed,
    /// Quorum raised before `synchronous_standby_names` waits for fewer standbys.
    RaiseQuorum,
}

impl fmt::Display for SyncStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SyncStep::Done => f.write_str("synchronous replication is as configured"),
            SyncStep::WriteKey { members, quorum, why } => {
                let list = if members.is_empty() { "nobody".to_owned() } else { members.join(",") };
                let why = match why {
                    KeyWhy::NewLeader => "this member now leads",
                    KeyWhy::Unlist => "unlisting standbys before synchronous_standby_names stops naming them",
                    KeyWhy::Confirmed => "standbys confirmed synchronous",
                    KeyWhy::RaiseQuorum => {
                        "raising the quorum before synchronous_standby_names waits for fewer standbys"
                    }
                };
                write!(f, "sync key: listing {list} (quorum {quorum}): {why}")
            }
            SyncStep::DeleteKey => f.write_str("synchronous mode is off: deleting the sync key"),
            SyncStep::SetNames(s) => write!(f, "setting synchronous_standby_names to '{s}'"),
        }
    }
}

/// Everything [`plan`] looks at.
#[derive(Debug, Clone, Copy)]
pub struct SyncInputs<'a> {
    pub me: &'a str,
    pub settings: &'a SyncSettings,
    pub key: Option<&'a SyncKey>,
    /// Member keys (tags `nosync` and `sync_priority`).
    pub members: &'a [Member],
    pub walsenders: &'a [Walsender],
    /// `synchronous_standby_names` in force now.
    pub in_force: &'a Ssn,
    pub memory: &'a SyncMemory,
    /// The primary's WAL flush position now.
    pub flush: u64,
}

pub(super) fn contains(list: &[String], name: &str) -> bool {
    list.iter().any(|n| n.eq_ignore_ascii_case(name))
}

pub(super) fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v.dedup();
    v
}

/// The standbys that should be synchronous, best first, at most `synchronous_node_count`:
/// streaming, running members that allow it (`nosync` off, `sync_priority > 0`) and lag no
/// more than `maximum_lag_on_syncnode`. Ordered as Patroni orders them: higher
/// `sync_priority`, then those PostgreSQL already reports synchronous (no churn when two
/// standbys take turns being ahead), then further ahead; members tagged `nofailover` last.
pub fn pick(i: &SyncInputs<'_>) -> Vec<String> {
    let ranked = ranked(i);
    ranked.into_iter().take(i.settings.node_count.max(1) as usize).collect()
}

/// Every candidate for synchronous standby, best first (see [`pick`]).
pub(super) fn ranked(i: &SyncInputs<'_>) -> Vec<String> {
    let mut candidates: Vec<(&Member, &Walsender)> = i
        .walsenders
        .iter()
        .filter(|w| w.streaming)
        .filter(|w| i.settings.max_lag.is_none_or(|lag| i.flush.saturating_sub(w.flush) <= lag))
        .filter_map(|w| i.members.iter().find(|m| m.name.eq_ignore_ascii_case(&w.name)).map(|m| (m, w)))
        .filter(|(m, _)| !m.name.eq_ignore_ascii_case(i.me) && m.running && m.tags.allows_sync())
        .collect();
    let rank = |s: WalSync| match s {
        WalSync::Sync => 3,
        WalSync::Quorum => 2,
        WalSync::Potential => 1,
        WalSync::Async => 0,
    };
    candidates.sort_by(|(ma, wa), (mb, wb)| {
        ma.tags
            .nofailover
            .cmp(&mb.tags.nofailover)
            .then(mb.tags.sync_priority.cmp(&ma.tags.sync_priority))
            .then(rank(wb.sync_state).cmp(&rank(wa.sync_state)))
            .then(wb.flush.cmp(&wa.flush))
            .then(ma.name.cmp(&mb.name))
    });
    candidates.dedup_by(|a, b| a.0.name == b.0.name);
    candidates.into_iter().map(|(m, _)| m.name.clone()).collect()
}

/// The ssn when no standby can be picked: in strict mode commits keep waiting, for `listed`
/// (they have every acknowledged commit and may come back) or else the placeholder; without
/// strict mode, for nobody (Patroni's fallback to asynchronous replication; the plan unlists
/// everyone first).
pub fn fallback_ssn(settings: &SyncSettings, listed: &[String]) -> Ssn {
    if !settings.strict {
        Ssn::Off
    } else if !listed.is_empty() {
        Ssn::all(listed.to_vec())
    } else {
        Ssn::all(vec![STRICT_PLACEHOLDER.to_owned()])
    }
}

/// The next step of the leader (synchronous mode `On`; see the module doc for the order).
pub fn plan(i: &SyncInputs<'_>) -> SyncStep {
    match i.settings.mode {
        SyncMode::Off => return if i.key.is_some() { SyncStep::DeleteKey } else { SyncStep::Done },
        SyncMode::Quorum => return super::quorum::plan(i),
        SyncMode::On => {}
    }
    // 1. The key names this leader.
    let Some(key) = i.key.filter(|k| k.led_by(i.me)) else {
        return SyncStep::WriteKey { members: Vec::new(), quorum: 0, why: KeyWhy::NewLeader };
    };
    let listed = &key.members;
    // 2. Listed members are named by the ssn in force.
    let waits = i.in_force.every_commit_waits_for();
    if listed.iter().any(|m| !contains(waits, m)) {
        let keep = listed.iter().filter(|m| contains(waits, m)).cloned().collect();
        return SyncStep::WriteKey { members: sorted(keep), quorum: 0, why: KeyWhy::Unlist };
    }
    // 3-4. ssn as wanted; unlist first whoever it will stop naming.
    let picked = pick(i);
    let desired = if picked.is_empty() { fallback_ssn(i.settings, listed) } else { Ssn::all(picked.clone()) };
    if !desired.same_as(i.in_force) {
        let will_wait = desired.every_commit_waits_for();
        if listed.iter().any(|m| !contains(will_wait, m)) {
            let keep = listed.iter().filter(|m| contains(will_wait, m)).cloned().collect();
            return SyncStep::WriteKey { members: sorted(keep), quorum: 0, why: KeyWhy::Unlist };
        }
        return SyncStep::SetNames(desired);
    }
    // 5. List the standbys that confirmed.
    let confirmed = picked.iter().filter(|n| confirmed(i, n)).cloned();
    let target = sorted(listed.iter().cloned().chain(confirmed).collect());
    if target != *listed {
        return SyncStep::WriteKey { members: target, quorum: 0, why: KeyWhy::Confirmed };
    }
    SyncStep::Done
}

/// `name` confirms every commit now and has every commit acknowledged before: ssn in force
/// names it among the standbys every commit waits for, PostgreSQL reports it synchronous
/// (`sync_state` `want`), and it has flushed past its mark.
pub(super) fn confirmed_as(i: &SyncInputs<'_>, name: &str, want: WalSync, waits: &[String]) -> bool {
    contains(waits, name)
        && i.walsenders.iter().any(|w| {
            w.name.eq_ignore_ascii_case(name)
                && w.streaming
                && w.sync_state == want
                && i.memory.mark(name).is_some_and(|m| w.flush >= m)
        })
}

fn confirmed(i: &SyncInputs<'_>, name: &str) -> bool {
    confirmed_as(i, name, WalSync::Sync, i.in_force.every_commit_waits_for())
}

/// What a member about to become the primary (promotion, or a start as primary while holding
/// the leader key) sets before it takes writes: the `sync` key (when `Some`: written with
/// compare-and-swap, and the promotion is postponed if that fails) and the ssn.
///
/// Without strict mode a promotion lists nobody and commits do not wait until a standby is
/// confirmed; while nobody is listed only this member may take over, so nothing acknowledged
/// meanwhile can be lost. Strict mode lists the old leader and its synchronous standbys and
/// makes commits wait for all of them (or for the placeholder).
pub fn before_primary(me: &str, settings: &SyncSettings, key: Option<&SyncKey>, promotion: bool) -> BeforePrimary {
    if settings.mode == SyncMode::Off {
        return BeforePrimary { key: None, ssn: None };
    }
    if settings.mode == SyncMode::Quorum {
        return super::quorum::before_primary(me, settings, key, promotion);
    }
    let listed: Vec<String> = key.filter(|k| k.led_by(me)).map(|k| k.members.clone()).unwrap_or_default();
    if promotion || key.is_none_or(|k| !k.led_by(me)) {
        if !settings.strict {
            return BeforePrimary { key: Some(Vec::new()), ssn: Some(Ssn::Off) };
        }
        // Strict: the old leader and its other synchronous standbys have every commit
        // acknowledged so far, and every commit from now on waits for all of them, so they
        // stay listed (as Patroni does).
        let mut wait_for: Vec<String> = key.map(|k| k.members.clone()).unwrap_or_default();
        if let Some(l) = key.and_then(|k| k.leader.clone()) {
            wait_for.push(l);
        }
        wait_for.retain(|m| !m.eq_ignore_ascii_case(me));
        let wait_for = sorted(wait_for);
        let ssn = fallback_ssn(settings, &wait_for);
        return BeforePrimary { key: Some(wait_for), ssn: Some(ssn) };
    }
    // Restarting as the primary it was: the listed members still have every acknowledged
    // commit, and commits must go on waiting for them until the plan unlists them.
    let ssn = if listed.is_empty() { fallback_ssn(settings, &listed) } else { Ssn::all(listed) };
    BeforePrimary { key: None, ssn: Some(ssn) }
}

/// See [`before_primary`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BeforePrimary {
    /// Write the `sync` key with us as leader and these members (CAS) before taking writes.
    pub key: Option<Vec<String>>,
    /// Run with this ssn (`None`: synchronous mode is off; the configured value applies).
    pub ssn: Option<Ssn>,
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::core::view::{Role, Tags};

    const ME: &str = "n1";

    /// A running replica's member key with default tags.
    pub(in crate::core) fn member(name: &str) -> Member {
        Member {
            name: name.into(),
            conn_url: String::new(),
            api_url: String::new(),
            role: Role::Replica,
            running: true,
            lsn: None,
            timeline: Some(1),
            tags: Tags::default(),
            lease: 1,
        }
    }

    fn ws(name: &str, sync_state: WalSync, flush: u64) -> Walsender {
        Walsender { name: name.into(), streaming: true, sync_state, flush }
    }

    pub(in crate::core) fn key(listed: &[&str]) -> SyncKey {
        SyncKey {
            leader: Some(ME.into()),
            members: listed.iter().map(|s| s.to_string()).collect(),
            quorum: 0,
            mod_revision: 3,
        }
    }

    /// A leader's inputs to [`plan`] (shared with the quorum tests).
    pub(in crate::core) struct Fx {
        pub settings: SyncSettings,
        pub key: Option<SyncKey>,
        pub members: Vec<Member>,
        pub walsenders: Vec<Walsender>,
        pub in_force: Ssn,
        pub memory: SyncMemory,
        pub flush: u64,
    }

    impl Fx {
        /// Leader n1, synchronous mode on; n2 and n3 stream, n2 further ahead; nobody is
        /// listed and synchronous_standby_names is empty.
        pub fn new() -> Self {
            Fx {
                settings: SyncSettings { mode: SyncMode::On, ..SyncSettings::default() },
                key: Some(key(&[])),
                members: vec![member("n1"), member("n2"), member("n3")],
                walsenders: vec![ws("n2", WalSync::Async, 900), ws("n3", WalSync::Async, 800)],
                in_force: Ssn::Off,
                memory: SyncMemory::default(),
                flush: 1000,
            }
        }

        pub fn plan(&self) -> SyncStep {
            plan(&SyncInputs {
                me: ME,
                settings: &self.settings,
                key: self.key.as_ref(),
                members: &self.members,
                walsenders: &self.walsenders,
                in_force: &self.in_force,
                memory: &self.memory,
                flush: self.flush,
            })
        }

        /// ssn names `names` (all must confirm), settled long ago, each marked at `mark`.
        fn named(mut self, names: &[&str], mark: u64) -> Self {
            self.in_force = Ssn::all(names.iter().map(|s| s.to_string()).collect());
            self.memory.observe(&self.in_force, mark, Moment::from_millis(10_000));
            for w in &mut self.walsenders {
                if names.contains(&w.name.as_str()) {
                    w.sync_state = WalSync::Sync;
                }
            }
            self
        }
    }

    pub(in crate::core) fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn synchronous_standby_names_parse_and_render_as_patroni_writes_them() {
        for (text, ssn) in [
            ("", Ssn::Off),
            ("n1", Ssn::First { num: 1, names: names(&["n1"]) }),
            ("2 (n1,n2)", Ssn::First { num: 2, names: names(&["n1", "n2"]) }),
            ("ANY 1 (n1,\"pg-2\")", Ssn::Any { num: 1, names: names(&["n1", "pg-2"]) }),
        ] {
            assert_eq!(Ssn::parse(text), ssn, "{text}");
            assert_eq!(ssn.to_string(), text);
        }
        assert_eq!(Ssn::parse("FIRST 2 ( a , \"b\"\"c\" )"), Ssn::First { num: 2, names: names(&["a", "b\"c"]) });
        assert_eq!(Ssn::parse("a, b"), Ssn::First { num: 1, names: names(&["a", "b"]) });
        assert_eq!(Ssn::parse("*"), Ssn::Other("*".into()));
        assert_eq!(Ssn::parse("ANY 1 (*)"), Ssn::Other("ANY 1 (*)".into()));
        assert_eq!(Ssn::all(names(&["any"])).to_string(), "\"any\"");
        // Only "every named standby confirms" protects a listed member.
        assert!(Ssn::parse("1 (a,b)").every_commit_waits_for().is_empty());
        assert_eq!(Ssn::parse("2 (a,b)").every_commit_waits_for(), names(&["a", "b"]));
    }

    #[test]
    fn a_new_leader_first_writes_the_key_naming_itself_with_nobody_listed() {
        let mut fx = Fx::new();
        fx.key = Some(SyncKey { leader: Some("n3".into()), ..key(&["n1", "n2"]) });
        assert_eq!(fx.plan(), SyncStep::WriteKey { members: vec![], quorum: 0, why: KeyWhy::NewLeader });
        fx.key = None;
        assert_eq!(fx.plan(), SyncStep::WriteKey { members: vec![], quorum: 0, why: KeyWhy::NewLeader });
    }

    #[test]
    fn the_best_streaming_standby_is_named_first_and_listed_only_once_it_has_every_acknowledged_commit() {
        let fx = Fx::new();
        assert_eq!(fx.plan(), SyncStep::SetNames(Ssn::all(names(&["n2"]))));
        // Named, reported sync, but not yet past the position taken when it was named.
        let fx = Fx::new().named(&["n2"], 950);
        assert_eq!(fx.plan(), SyncStep::Done);
        let fx = Fx::new().named(&["n2"], 900);
        assert_eq!(fx.plan(), SyncStep::WriteKey { members: names(&["n2"]), quorum: 0, why: KeyWhy::Confirmed });
    }

    #[test]
    fn a_standby_is_marked_only_after_the_setting_has_settled() {
        let mut m = SyncMemory::default();
        let ssn = Ssn::all(names(&["n2"]));
        m.changed(Moment::from_millis(1_000));
        m.observe(&ssn, 500, Moment::from_millis(1_500));
        assert_eq!(m.mark("n2"), None);
        m.observe(&ssn, 700, Moment::from_millis(2_000));
        assert_eq!(m.mark("N2"), Some(700));
        // Kept while named, forgotten when not.
        m.observe(&ssn, 900, Moment::from_millis(3_000));
        assert_eq!(m.mark("n2"), Some(700));
        m.observe(&Ssn::Off, 900, Moment::from_millis(4_000));
        assert_eq!(m.mark("n2"), None);
    }

    #[test]
    fn a_listed_standby_is_unlisted_before_synchronous_standby_names_stops_naming_it() {
        // n2 stopped streaming: n3 is picked; n2 leaves the key first, then the setting.
        let mut fx = Fx::new().named(&["n2"], 900);
        fx.key = Some(key(&["n2"]));
        fx.walsenders.retain(|w| w.name != "n2");
        assert_eq!(fx.plan(), SyncStep::WriteKey { members: vec![], quorum: 0, why: KeyWhy::Unlist });
        fx.key = Some(key(&[]));
        assert_eq!(fx.plan(), SyncStep::SetNames(Ssn::all(names(&["n3"]))));
        // A key listing someone the setting in force does not name (changed by hand) is fixed first.
        let mut fx = Fx::new();
        fx.key = Some(key(&["n2"]));
        assert_eq!(fx.plan(), SyncStep::WriteKey { members: vec![], quorum: 0, why: KeyWhy::Unlist });
    }

    #[test]
    fn without_a_standby_strict_mode_keeps_commits_waiting_and_the_default_falls_back_to_asynchronous() {
        let mut fx = Fx::new().named(&["n2"], 900);
        fx.key = Some(key(&["n2"]));
        fx.walsenders.clear();
        // Not strict: unlist, then stop waiting.
        assert_eq!(fx.plan(), SyncStep::WriteKey { members: vec![], quorum: 0, why: KeyWhy::Unlist });
        fx.key = Some(key(&[]));
        assert_eq!(fx.plan(), SyncStep::SetNames(Ssn::Off));
        // Strict: the listed standby stays listed and named (commits wait for it).
        fx.settings.strict = true;
        fx.key = Some(key(&["n2"]));
        assert_eq!(fx.plan(), SyncStep::Done);
        // Strict with nobody listed: the placeholder.
        let mut fx = Fx::new();
        fx.settings.strict = true;
        fx.walsenders.clear();
        assert_eq!(fx.plan(), SyncStep::SetNames(Ssn::all(names(&[STRICT_PLACEHOLDER]))));
    }

    #[test]
    fn nosync_sync_priority_node_count_and_lag_choose_the_standbys() {
        let mut fx = Fx::new();
        fx.members[1].tags.nosync = true;
        assert_eq!(fx.plan(), SyncStep::SetNames(Ssn::all(names(&["n3"]))));
        let mut fx = Fx::new();
        fx.members[2].tags.sync_priority = 5;
        assert_eq!(fx.plan(), SyncStep::SetNames(Ssn::all(names(&["n3"]))));
        let mut fx = Fx::new();
        fx.settings.node_count = 2;
        assert_eq!(fx.plan(), SyncStep::SetNames(Ssn::all(names(&["n2", "n3"]))));
        let mut fx = Fx::new();
        fx.settings.max_lag = Some(50);
        // Both lag more than 50 bytes: nobody is picked, and nothing is to change.
        assert_eq!(fx.plan(), SyncStep::Done);
        fx.settings.max_lag = Some(150);
        assert_eq!(fx.plan(), SyncStep::SetNames(Ssn::all(names(&["n2"]))));
    }

    #[test]
    fn synchronous_mode_off_deletes_the_key() {
        let mut fx = Fx::new();
        fx.settings.mode = SyncMode::Off;
        assert_eq!(fx.plan(), SyncStep::DeleteKey);
        fx.key = None;
        assert_eq!(fx.plan(), SyncStep::Done);
    }

    #[test]
    fn before_taking_writes_a_promoted_member_lists_nobody_unless_strict() {
        let s = SyncSettings { mode: SyncMode::On, ..SyncSettings::default() };
        let old = SyncKey { leader: Some("n2".into()), ..key(&["n1", "n3"]) };
        let b = before_primary(ME, &s, Some(&old), true);
        assert_eq!(b, BeforePrimary { key: Some(vec![]), ssn: Some(Ssn::Off) });
        let strict = SyncSettings { strict: true, ..s.clone() };
        let b = before_primary(ME, &strict, Some(&old), true);
        assert_eq!(b.key, Some(names(&["n2", "n3"])));
        assert_eq!(b.ssn, Some(Ssn::all(names(&["n2", "n3"]))));
        // Restarting as the primary it was: no key write, commits wait for the listed ones.
        let b = before_primary(ME, &s, Some(&key(&["n3"])), false);
        assert_eq!(b, BeforePrimary { key: None, ssn: Some(Ssn::all(names(&["n3"]))) });
        let off = SyncSettings::default();
        assert_eq!(before_primary(ME, &off, Some(&old), true), BeforePrimary { key: None, ssn: None });
    }
}
