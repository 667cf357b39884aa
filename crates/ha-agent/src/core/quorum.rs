//! Quorum commit (`synchronous_mode: quorum`, Patroni 4): `synchronous_standby_names =
//! 'ANY n (S)'`, and the `sync` key lists voters `V` with a `quorum` `q`. A member races only
//! with `q` votes (`q + 1` when it is not a voter): answers from the key's leader and voters
//! that are replicas at or behind its position (`decide.rs`). This is Patroni's reading of the
//! key, so a mixed cluster agrees on who may lead.
//!
//! Why no acknowledged commit can be lost: a commit acknowledged under `ANY n (S)` is on the
//! leader and on `n` members of `S`. A winner's voters and itself are `q + 1` members of the
//! key's leader and `V`; if `V ⊆ S` and `q >= |S| - n`, at least one of them has the commit
//! (or is the old leader), and the winner, at or ahead of all of them on the same history, has
//! it too. Commits acknowledged before `S` was set are on every voter: a member is listed only
//! after it flushed past its mark (`SyncMemory`, taken after the last change of the setting).
//!
//! So the leader keeps, at every step: `V ⊆ S`, `q = |S| - n`, every voter confirmed since the
//! last change. A change of `S` or `n` first unlists everyone (`{"leader":me,"quorum":0,
//! "sync_standby":null}`: only the leader may lead meanwhile), then changes the setting, then
//! lists the members that confirm. Simpler than Patroni's resolver, which moves voters and
//! quorum one at a time; the cost is a few seconds without failover while the set changes.

use super::sync::{
    BeforePrimary, KeyWhy, STRICT_PLACEHOLDER, Ssn, SyncInputs, SyncKey, SyncSettings, SyncStep, WalSync, confirmed_as,
    contains, ranked, sorted,
};

/// The setting wanted: `ANY n (every candidate)` with `n = min(synchronous_node_count,
/// candidates)`; members tagged `nofailover` only while too few others stream (Patroni's
/// rule). Without candidates: strict mode keeps the setting in force when someone is listed
/// (they may come back) or waits for the placeholder; otherwise none.
fn desired(i: &SyncInputs<'_>, listed: &[String]) -> Ssn {
    let wanted = i.settings.node_count.max(1) as usize;
    let mut active: Vec<String> = Vec::new();
    for name in ranked(i) {
        let nofailover = i.members.iter().any(|m| m.name.eq_ignore_ascii_case(&name) && !m.tags.can_failover());
        if !nofailover || active.len() < wanted {
            active.push(name);
        }
    }
    if !active.is_empty() {
        let n = wanted.min(active.len()) as u32;
        return Ssn::Any { num: n, names: sorted(active) };
    }
    match (i.settings.strict, listed.is_empty()) {
        (true, false) => i.in_force.clone(),
        (true, true) => placeholder(),
        (false, _) => Ssn::Off,
    }
}

/// Strict mode with nobody to wait for: `ANY 1 (placeholder)`, commits wait.
fn placeholder() -> Ssn {
    Ssn::Any { num: 1, names: vec![STRICT_PLACEHOLDER.to_owned()] }
}

/// `ANY n (S)` in force, as (n, S); anything else lists nobody.
fn any(ssn: &Ssn) -> Option<(usize, &[String])> {
    match ssn {
        Ssn::Any { num, names } if *num >= 1 && *num as usize <= names.len() => Some((*num as usize, names)),
        _ => None,
    }
}

/// The key is safe under the setting in force: voters named in it, `q >= |S| - n`.
fn consistent(key: &SyncKey, in_force: &Ssn) -> bool {
    if key.members.is_empty() {
        return true;
    }
    let Some((n, s)) = any(in_force) else { return false };
    key.members.iter().all(|m| contains(s, m)) && key.quorum as usize + n >= s.len()
}

/// The leader's next step in quorum mode (see the module doc for the order).
pub(super) fn plan(i: &SyncInputs<'_>) -> SyncStep {
    let unlist = SyncStep::WriteKey { members: Vec::new(), quorum: 0, why: KeyWhy::Unlist };
    let Some(key) = i.key.filter(|k| k.led_by(i.me)) else {
        return SyncStep::WriteKey { members: Vec::new(), quorum: 0, why: KeyWhy::NewLeader };
    };
    let listed = &key.members;
    if !consistent(key, i.in_force) {
        return unlist;
    }
    let want = desired(i, listed);
    if !want.same_as(i.in_force) {
        return if listed.is_empty() { SyncStep::SetNames(want) } else { unlist };
    }
    let Some((n, s)) = any(i.in_force) else { return SyncStep::Done };
    let q = (s.len() - n) as u32;
    let confirmed = s.iter().filter(|x| confirmed_as(i, x, WalSync::Quorum, s)).cloned();
    let target = sorted(listed.iter().cloned().chain(confirmed).collect());
    // Listed only once the voters can elect someone (Patroni rejects `0 < q >= |V|`).
    if target.len() as u32 <= q || (target == *listed && key.quorum == q) {
        return SyncStep::Done;
    }
    SyncStep::WriteKey { members: target, quorum: q, why: KeyWhy::Confirmed }
}

/// Before taking writes in quorum mode. A promotion lists nobody (only this member may lead
/// until standbys confirm); strict mode makes commits wait for one of the former leader and
/// voters, or the placeholder. A restart as the primary it was keeps the voters protected:
/// `ANY |V| - q (V)`.
pub(super) fn before_primary(
    me: &str,
    settings: &SyncSettings,
    key: Option<&SyncKey>,
    promotion: bool,
) -> BeforePrimary {
    if promotion || key.is_none_or(|k| !k.led_by(me)) {
        let ssn = if settings.strict {
            let mut old: Vec<String> = key.map(|k| k.members.clone()).unwrap_or_default();
            old.extend(key.and_then(|k| k.leader.clone()));
            old.retain(|m| !m.eq_ignore_ascii_case(me));
            let old = sorted(old);
            if old.is_empty() { placeholder() } else { Ssn::Any { num: 1, names: old } }
        } else {
            Ssn::Off
        };
        return BeforePrimary { key: Some(Vec::new()), ssn: Some(ssn) };
    }
    let k = key.filter(|k| k.led_by(me));
    let voters = k.map(|k| k.members.clone()).unwrap_or_default();
    let ssn = if voters.is_empty() {
        if settings.strict { placeholder() } else { Ssn::Off }
    } else {
        let q = k.map_or(0, |k| k.quorum as usize);
        let n = voters.len().saturating_sub(q).max(1) as u32;
        Ssn::Any { num: n, names: voters }
    };
    BeforePrimary { key: None, ssn: Some(ssn) }
}

#[cfg(test)]
mod tests {
    use super::super::observed::Moment;
    use super::super::sync::SyncMode;
    use super::super::sync::tests::{Fx, names};
    use super::*;

    const ME: &str = "n1";

    fn key(listed: &[&str], q: u32) -> SyncKey {
        SyncKey { quorum: q, ..super::super::sync::tests::key(listed) }
    }

    /// Leader n1 in quorum mode with n2 and n3 streaming at 900; nobody listed, no setting.
    fn quorum() -> Fx {
        let mut fx = Fx::new();
        fx.settings.mode = SyncMode::Quorum;
        fx.walsenders[1].flush = 900;
        fx
    }

    /// `ANY n (n2,n3)` in force, settled, marks at `mark`, both reported `quorum`.
    fn any(mut fx: Fx, n: u32, mark: u64) -> Fx {
        fx.in_force = Ssn::Any { num: n, names: names(&["n2", "n3"]) };
        fx.memory.observe(&fx.in_force, mark, Moment::from_millis(10_000));
        for w in &mut fx.walsenders {
            w.sync_state = WalSync::Quorum;
        }
        fx
    }

    #[test]
    fn quorum_mode_sets_any_n_of_every_streaming_standby_then_lists_them_with_quorum_s_minus_n() {
        let fx = quorum();
        assert_eq!(fx.plan(), SyncStep::SetNames(Ssn::Any { num: 1, names: names(&["n2", "n3"]) }));
        assert_eq!(Ssn::Any { num: 1, names: names(&["n2", "n3"]) }.to_string(), "ANY 1 (n2,n3)");
        // Not yet past their marks: nobody listed.
        assert_eq!(any(quorum(), 1, 950).plan(), SyncStep::Done);
        assert_eq!(
            any(quorum(), 1, 900).plan(),
            SyncStep::WriteKey { members: names(&["n2", "n3"]), quorum: 1, why: KeyWhy::Confirmed }
        );
        // synchronous_node_count 2 of 2: quorum 0.
        let mut fx = any(quorum(), 2, 900);
        fx.settings.node_count = 2;
        assert_eq!(fx.plan(), SyncStep::WriteKey { members: names(&["n2", "n3"]), quorum: 0, why: KeyWhy::Confirmed });
    }

    #[test]
    fn one_confirmed_voter_of_two_with_quorum_one_is_not_listed_alone() {
        let mut fx = any(quorum(), 1, 900);
        fx.walsenders[1].flush = 800;
        // n3 behind its mark: V = {n2} with q = 1 could elect nobody; wait for n3.
        assert_eq!(fx.plan(), SyncStep::Done);
    }

    #[test]
    fn a_change_of_the_standby_set_unlists_everyone_first() {
        let mut fx = any(quorum(), 1, 900);
        fx.key = Some(key(&["n2", "n3"], 1));
        fx.walsenders.retain(|w| w.name != "n3");
        assert_eq!(fx.plan(), SyncStep::WriteKey { members: vec![], quorum: 0, why: KeyWhy::Unlist });
        fx.key = Some(key(&[], 0));
        assert_eq!(fx.plan(), SyncStep::SetNames(Ssn::Any { num: 1, names: names(&["n2"]) }));
        // A key that the setting in force does not protect is unlisted at once.
        let mut fx = any(quorum(), 1, 900);
        fx.key = Some(key(&["n2", "n3"], 0));
        assert_eq!(fx.plan(), SyncStep::WriteKey { members: vec![], quorum: 0, why: KeyWhy::Unlist });
    }

    #[test]
    fn before_taking_writes_in_quorum_mode() {
        let s = SyncSettings { mode: SyncMode::Quorum, ..SyncSettings::default() };
        let old = SyncKey { leader: Some("n2".into()), ..key(&["n1", "n3"], 1) };
        assert_eq!(before_primary(ME, &s, Some(&old), true), BeforePrimary { key: Some(vec![]), ssn: Some(Ssn::Off) });
        let strict = SyncSettings { strict: true, ..s.clone() };
        assert_eq!(
            before_primary(ME, &strict, Some(&old), true).ssn,
            Some(Ssn::Any { num: 1, names: names(&["n2", "n3"]) })
        );
        // Restarting as the primary it was: ANY |V| - q (V).
        assert_eq!(
            before_primary(ME, &s, Some(&key(&["n2", "n3"], 1)), false),
            BeforePrimary { key: None, ssn: Some(Ssn::Any { num: 1, names: names(&["n2", "n3"]) }) }
        );
    }
}
