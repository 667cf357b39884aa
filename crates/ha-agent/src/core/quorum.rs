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
//! So the leader keeps, at every step: `V ⊆ S`, `q >= |S| - n` (`consistent`), and lists a
//! member only once it confirmed under the setting in force. It moves to a new setting as
//! Patroni's resolver does, one safe step at a time, so that the voters can elect someone
//! throughout (a leader lost while the set changes is replaced):
//! 1. voters the new setting drops leave the key, quorum unchanged (fewer voters never elect
//!    where more could not);
//! 2. members that confirmed under the setting in force join the key, quorum unchanged; once
//!    the setting is the one wanted and every voter confirmed under it, quorum is lowered to
//!    `|S| - n`;
//! 3. the setting changes only to one the key already protects; when the wanted one is not,
//!    a bridge `ANY |T| - q (T)` is (commits wait for more standbys meanwhile), and once the
//!    new members confirmed under it, quorum is raised until the wanted one is protected.
//!
//! A setting that waits for nobody (synchronous mode off for lack of standbys) unlists
//! everyone first: only the leader may lead while commits do not wait.

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
    let wanted = any(&want);
    let settled = want.same_as(i.in_force);
    // 1. Voters the wanted setting drops leave first, with the same quorum.
    match wanted {
        Some((_, t)) => {
            let keep: Vec<String> = listed.iter().filter(|m| contains(t, m)).cloned().collect();
            if keep.len() < listed.len() {
                // Patroni rejects a key whose voters cannot elect (`0 < q >= |V|`).
                return if key.quorum as usize >= keep.len() {
                    unlist
                } else {
                    SyncStep::WriteKey { members: keep, quorum: key.quorum, why: KeyWhy::Unlist }
                };
            }
        }
        None if !listed.is_empty() && !settled => return unlist,
        None => {}
    }
    // 2. Members confirmed under the setting in force (and wanted in the next) join.
    if let (Some((n, s)), Some((_, t))) = (any(i.in_force), wanted) {
        let q_min = (s.len() - n) as u32;
        let confirmed: Vec<String> =
            s.iter().filter(|x| contains(t, x) && confirmed_as(i, x, WalSync::Quorum, s)).cloned().collect();
        let target = sorted(listed.iter().chain(&confirmed).cloned().collect());
        let all_confirmed = target.iter().all(|x| contains(&confirmed, x));
        let q = if settled && all_confirmed { q_min } else { key.quorum.max(q_min) };
        if (target != *listed || q != key.quorum) && (q as usize) < target.len() {
            return SyncStep::WriteKey { members: target, quorum: q, why: KeyWhy::Confirmed };
        }
    }
    // 3. The setting as wanted, through settings the key protects.
    if settled {
        return SyncStep::Done;
    }
    let Some((m, t)) = wanted else { return SyncStep::SetNames(want) };
    if consistent(key, &want) {
        return SyncStep::SetNames(want);
    }
    // Here the key lists voters (an empty key is consistent with any setting), all in `t`, and
    // `q < |V| <= |T|`.
    let bridge = Ssn::Any { num: (t.len() - key.quorum as usize) as u32, names: t.to_vec() };
    if !bridge.same_as(i.in_force) {
        return SyncStep::SetNames(bridge);
    }
    let q = (t.len() - m) as u32;
    if (q as usize) < listed.len() {
        return SyncStep::WriteKey { members: listed.clone(), quorum: q, why: KeyWhy::RaiseQuorum };
    }
    // Too few voters yet to raise the quorum: wait for the new members to confirm.
    SyncStep::Done
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
    use super::super::sync::tests::{Fx, names};
    use super::super::sync::{SyncMemory, SyncMode};
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

    /// Apply a step as the shell would: a new setting is in force and settled at once, with
    /// every standby's mark at `mark`; walsenders of named standbys report `quorum`.
    fn apply(fx: &mut Fx, step: &SyncStep, mark: u64) {
        match step {
            SyncStep::WriteKey { members, quorum, .. } => {
                fx.key = Some(key(&members.iter().map(String::as_str).collect::<Vec<_>>(), *quorum));
            }
            SyncStep::SetNames(ssn) => {
                fx.in_force = ssn.clone();
                fx.memory = SyncMemory::default();
                fx.memory.observe(&fx.in_force, mark, Moment::from_millis(10_000));
                for w in &mut fx.walsenders {
                    let named = matches!(ssn, Ssn::Any { names, .. } if contains(names, &w.name));
                    w.sync_state = if named { WalSync::Quorum } else { WalSync::Async };
                }
            }
            SyncStep::Done | SyncStep::DeleteKey => {}
        }
    }

    /// Whether some member other than the key's leader could take over with the key's votes.
    fn electable(fx: &Fx) -> bool {
        fx.key.as_ref().is_some_and(|k| !k.members.is_empty() && (k.quorum as usize) < k.members.len())
    }

    /// Plans and applies steps until Done (at most 10), checking every key and setting.
    fn walk(fx: &mut Fx, mark: u64) -> Vec<SyncStep> {
        let mut steps = Vec::new();
        for _ in 0..10 {
            let step = fx.plan();
            if step == SyncStep::Done {
                return steps;
            }
            apply(fx, &step, mark);
            assert!(
                consistent(fx.key.as_ref().unwrap(), &fx.in_force),
                "after {step}: {:?} under {}",
                fx.key,
                fx.in_force
            );
            steps.push(step);
        }
        panic!("no end after 10 steps: {steps:?}");
    }

    #[test]
    fn a_standby_joining_is_added_through_a_bridge_and_the_voters_can_elect_at_every_step() {
        // ANY 1 (n2) with n2 listed; n3 starts streaming.
        let mut fx = quorum();
        fx.in_force = Ssn::Any { num: 1, names: names(&["n2"]) };
        fx.memory.observe(&fx.in_force, 900, Moment::from_millis(10_000));
        fx.walsenders[0].sync_state = WalSync::Quorum;
        fx.key = Some(key(&["n2"], 0));
        let steps = walk(&mut fx, 900);
        assert_eq!(
            steps,
            vec![
                SyncStep::SetNames(Ssn::Any { num: 2, names: names(&["n2", "n3"]) }),
                SyncStep::WriteKey { members: names(&["n2", "n3"]), quorum: 0, why: KeyWhy::Confirmed },
                SyncStep::WriteKey { members: names(&["n2", "n3"]), quorum: 1, why: KeyWhy::RaiseQuorum },
                SyncStep::SetNames(Ssn::Any { num: 1, names: names(&["n2", "n3"]) }),
            ]
        );
        // Every key on the way could elect a successor: none was unlisted.
        let mut fx2 = quorum();
        fx2.in_force = Ssn::Any { num: 1, names: names(&["n2"]) };
        fx2.memory.observe(&fx2.in_force, 900, Moment::from_millis(10_000));
        fx2.walsenders[0].sync_state = WalSync::Quorum;
        fx2.key = Some(key(&["n2"], 0));
        for step in &steps {
            apply(&mut fx2, step, 900);
            assert!(electable(&fx2), "after {step}: {:?}", fx2.key);
        }
    }

    #[test]
    fn a_new_member_waits_in_the_bridge_until_it_confirms() {
        let mut fx = quorum();
        fx.in_force = Ssn::Any { num: 2, names: names(&["n2", "n3"]) };
        fx.memory.observe(&fx.in_force, 950, Moment::from_millis(10_000));
        fx.walsenders[0].sync_state = WalSync::Quorum;
        fx.walsenders[0].flush = 950;
        fx.walsenders[1].sync_state = WalSync::Quorum;
        fx.key = Some(key(&["n2"], 0));
        // n3 at 900, behind its mark 950: quorum 1 with one voter could elect nobody; wait.
        assert_eq!(fx.plan(), SyncStep::Done);
        fx.walsenders[1].flush = 960;
        assert_eq!(fx.plan(), SyncStep::WriteKey { members: names(&["n2", "n3"]), quorum: 0, why: KeyWhy::Confirmed });
    }

    #[test]
    fn a_standby_leaving_leaves_the_key_first_and_quorum_is_lowered_only_once_the_rest_confirm() {
        // ANY 2 (n2,n3,n4), all listed with quorum 1; n4 stops streaming.
        let mut fx = quorum();
        fx.settings.node_count = 2;
        fx.members.push(super::super::sync::tests::member("n4"));
        fx.in_force = Ssn::Any { num: 2, names: names(&["n2", "n3", "n4"]) };
        fx.memory.observe(&fx.in_force, 900, Moment::from_millis(10_000));
        for w in &mut fx.walsenders {
            w.sync_state = WalSync::Quorum;
        }
        fx.key = Some(key(&["n2", "n3", "n4"], 1));
        // Same quorum, fewer voters: n2 and n3 can still elect one of them.
        assert_eq!(fx.plan(), SyncStep::WriteKey { members: names(&["n2", "n3"]), quorum: 1, why: KeyWhy::Unlist });
        fx.key = Some(key(&["n2", "n3"], 1));
        assert_eq!(fx.plan(), SyncStep::SetNames(Ssn::Any { num: 2, names: names(&["n2", "n3"]) }));
        apply(&mut fx, &SyncStep::SetNames(Ssn::Any { num: 2, names: names(&["n2", "n3"]) }), 950);
        // Not yet past their new marks: the quorum stays.
        assert_eq!(fx.plan(), SyncStep::Done);
        for w in &mut fx.walsenders {
            w.flush = 950;
        }
        assert_eq!(fx.plan(), SyncStep::WriteKey { members: names(&["n2", "n3"]), quorum: 0, why: KeyWhy::Confirmed });
    }

    #[test]
    fn with_any_one_a_lost_voter_unlists_everyone_because_the_rest_cannot_prove_a_commit() {
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
