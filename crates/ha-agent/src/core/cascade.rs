//! Cascading replication (tag `replicatefrom`) and archive-only replicas (tag `nostream`),
//! pure: where each member streams from, and so whose member slot each server keeps.
//!
//! As in Patroni, a member whose `replicatefrom` names another member streams from it, and
//! falls back to the leader when that member is not there. Patroni falls back only once the
//! member's key is gone (up to a ttl after it died); here a member also falls back, at once,
//! when the one it names is not a running replica on the leader's timeline (stopped, still a
//! former primary, or not yet following the new leader after a failover), and when the names
//! form a loop, which would leave every member on it without WAL. Every member computes the
//! same answer from the same member keys, so the server a member streams from is the one
//! that keeps its slot.

use super::view::{Member, Role, Tags};

/// Where the member `name` (with `tags`) streams from: the member its `replicatefrom` names
/// when that member can serve, else `leader`; `None` for a `nostream` member, which takes
/// WAL from `restore_command` only.
pub fn source<'a>(members: &'a [Member], leader: &'a str, name: &str, tags: &Tags) -> Option<&'a str> {
    if tags.nostream {
        return None;
    }
    let Some(first) = tags.replicatefrom.as_deref().filter(|r| *r != name && *r != leader) else {
        return Some(leader);
    };
    let leader_timeline = members.iter().find(|m| m.name == leader).and_then(|m| m.timeline);
    let serves = |m: &Member| {
        m.role == Role::Replica
            && m.running
            && !m.conn_url.is_empty()
            && (leader_timeline.is_none() || m.timeline == leader_timeline)
    };
    let Some(target) = members.iter().find(|m| m.name == first).filter(|m| serves(m)) else {
        return Some(leader);
    };
    // Walk the chain above the target (at most once round the members): back to `name` is a
    // loop, anything else ends at the leader, at a member that falls back to it, or at an
    // archive-only member.
    let mut at = target;
    for _ in 0..members.len() {
        if at.tags.nostream {
            break;
        }
        let Some(next) = at.tags.replicatefrom.as_deref().filter(|r| *r != at.name && *r != leader) else {
            break;
        };
        if next == name {
            return Some(leader);
        }
        match members.iter().find(|m| m.name == next).filter(|m| serves(m)) {
            Some(m) => at = m,
            None => break,
        }
    }
    Some(target.name.as_str())
}

/// The members that stream from `serving` (the leader itself, or a replica they cascade
/// from): the member slots `serving` keeps. `serving` is never among them.
pub fn streaming_from<'a>(members: &'a [Member], leader: &str, serving: &str) -> Vec<&'a str> {
    members
        .iter()
        .filter(|m| m.name != serving && m.name != leader)
        .filter(|m| source(members, leader, &m.name, &m.tags) == Some(serving))
        .map(|m| m.name.as_str())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, role: Role, timeline: u32, replicatefrom: Option<&str>) -> Member {
        let mut m = crate::core::tests::member(name, role, 100, timeline);
        m.tags.replicatefrom = replicatefrom.map(str::to_owned);
        m
    }

    fn cluster() -> Vec<Member> {
        vec![
            member("n1", Role::Primary, 2, None),
            member("n2", Role::Replica, 2, None),
            member("n3", Role::Replica, 2, Some("n2")),
        ]
    }

    fn source_of<'a>(ms: &'a [Member], name: &str) -> Option<&'a str> {
        let tags = ms.iter().find(|m| m.name == name).map(|m| m.tags.clone()).unwrap_or_default();
        source(ms, "n1", name, &tags)
    }

    #[test]
    fn a_member_streams_from_the_replica_it_names_and_only_that_replica_keeps_its_slot() {
        let ms = cluster();
        assert_eq!(source_of(&ms, "n3"), Some("n2"));
        assert_eq!(source_of(&ms, "n2"), Some("n1"));
        assert_eq!(streaming_from(&ms, "n1", "n1"), vec!["n2"]);
        assert_eq!(streaming_from(&ms, "n1", "n2"), vec!["n3"]);
        assert!(streaming_from(&ms, "n1", "n3").is_empty());
    }

    #[test]
    fn a_member_falls_back_to_the_leader_when_the_one_it_names_cannot_serve() {
        // Gone.
        let ms: Vec<Member> = cluster().into_iter().filter(|m| m.name != "n2").collect();
        assert_eq!(source_of(&ms, "n3"), Some("n1"));
        // Stopped, a former primary, or still on the old timeline after a failover.
        for spoil in [
            (|m: &mut Member| m.running = false) as fn(&mut Member),
            |m| m.role = Role::Primary,
            |m| m.timeline = Some(1),
        ] {
            let mut ms = cluster();
            spoil(&mut ms[1]);
            assert_eq!(source_of(&ms, "n3"), Some("n1"), "{:?}", ms[1]);
            assert_eq!(
                streaming_from(&ms, "n1", "n1"),
                vec!["n2", "n3"],
                "the leader keeps the slot of the one that fell back"
            );
        }
        // Naming the leader, or itself, is the leader.
        let mut ms = cluster();
        ms[2].tags.replicatefrom = Some("n1".into());
        assert_eq!(source_of(&ms, "n3"), Some("n1"));
        ms[2].tags.replicatefrom = Some("n3".into());
        assert_eq!(source_of(&ms, "n3"), Some("n1"));
    }

    #[test]
    fn members_naming_each_other_in_a_loop_stream_from_the_leader_instead_of_starving() {
        let mut ms = cluster();
        ms[1].tags.replicatefrom = Some("n3".into());
        assert_eq!(source_of(&ms, "n2"), Some("n1"));
        assert_eq!(source_of(&ms, "n3"), Some("n1"));
        // A longer chain that ends at the leader is kept.
        let mut ms = cluster();
        ms.push(member("n4", Role::Replica, 2, Some("n3")));
        assert_eq!(source_of(&ms, "n4"), Some("n3"));
        assert_eq!(streaming_from(&ms, "n1", "n3"), vec!["n4"]);
    }

    #[test]
    fn a_nostream_member_streams_from_nobody_and_nobody_keeps_its_slot() {
        let mut ms = cluster();
        ms[2].tags.nostream = true;
        assert_eq!(source_of(&ms, "n3"), None);
        assert!(streaming_from(&ms, "n1", "n2").is_empty());
        assert_eq!(streaming_from(&ms, "n1", "n1"), vec!["n2"]);
        // A member may still cascade from an archive-only one.
        ms.push(member("n4", Role::Replica, 2, Some("n3")));
        assert_eq!(source_of(&ms, "n4"), Some("n3"));
    }
}
