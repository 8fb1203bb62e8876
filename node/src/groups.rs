//! Consumer groups' coordinator state: members, their partitions, generations.
//!
//! Each group is coordinated by one node: the first live node of the ring's preference list for
//! `"group/<name>"`; other nodes forward group calls to it. Members join and stay with
//! heartbeats ([`GroupHeartbeat`]); a member silent for its session timeout is expelled. Every
//! join, leave or expulsion bumps the group's generation and recomputes the target assignment
//! (range or round-robin over the members in id order).
//!
//! **No partition is ever held by two members at once** (the rule Kafka's cooperative
//! rebalancing and KIP-848 follow): a partition in a member's target is granted only while no
//! other member holds it, and a member holds a partition from the answer that granted it until
//! a later heartbeat of its own reports it no longer reads it (or it is expelled). So when a
//! partition moves, its old reader first stops (told by its next heartbeat's answer), reports
//! that, and only then does the new one get it. Commits are accepted only for partitions the
//! committing member holds (fencing a member that was expelled and has not noticed).
//!
//! The state is in memory: a coordinator that restarts, or a new coordinator after a ring
//! change, learns the members again from their heartbeats, each of which reports what the member
//! reads; a partition two members both report is kept by the first to report it and revoked from
//! the other. Committed offsets are durable and fenced: in the metadata service, in the group's
//! record, which this node claims before it serves the group's offsets
//! ([`starling_mq::fence`]); when another node claims it (two ring views disagreed), this
//! node's next offsets call for the group fails, and it drops the group ([`Groups::forget`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use starling_wire::topic::{Assignor, GroupAssignment, GroupHeartbeat, GroupInfo, TopicError};
use starling_wire::NodeId;

/// Session timeouts are clamped to this range.
pub const SESSION_MIN: Duration = Duration::from_secs(1);
pub const SESSION_MAX: Duration = Duration::from_secs(60);

#[derive(Debug)]
struct Member {
    deadline: Instant,
    held: BTreeSet<u32>,
    /// The newest heartbeat's sequence number.
    seq: u64,
}

#[derive(Debug)]
struct Group {
    /// Random, new whenever this node takes the group up ([`GroupAssignment::incarnation`]).
    incarnation: u64,
    topic: String,
    assignor: Assignor,
    generation: u64,
    members: BTreeMap<String, Member>,
    /// Until then, only partitions a member reports reading are granted: this coordinator is
    /// new to the group (it restarted, or the ring moved the group to it), and members it has
    /// not heard from yet may still be reading theirs. They stop by themselves once their
    /// session passes without an answer from a coordinator.
    adopt_until: Option<Instant>,
}

/// Every group this node coordinates.
#[derive(Debug, Default)]
pub struct Groups {
    groups: Mutex<HashMap<String, Group>>,
    /// Until then, a group this node starts coordinating may have been coordinated elsewhere
    /// a moment ago (this node just started, or the ring just changed): see `adopt_until`.
    unsettled_until: Mutex<Option<Instant>>,
}

/// The target assignment: member -> partitions.
pub fn target(
    members: &[&String],
    partitions: u32,
    assignor: Assignor,
) -> BTreeMap<String, BTreeSet<u32>> {
    let n = members.len() as u32;
    let mut out: BTreeMap<String, BTreeSet<u32>> =
        members.iter().map(|m| ((*m).clone(), BTreeSet::new())).collect();
    if n == 0 {
        return out;
    }
    for p in 0..partitions {
        let i = match assignor {
            // Kafka's range assignor: the first `partitions % n` members get one more.
            Assignor::Range => {
                let (per, extra) = (partitions / n, partitions % n);
                let big = extra * (per + 1);
                if p < big {
                    p / (per + 1)
                } else {
                    extra + (p - big) / per.max(1)
                }
            }
            Assignor::RoundRobin => p % n,
        };
        if let Some(set) = out.get_mut(members[i.min(n - 1) as usize]) {
            set.insert(p);
        }
    }
    out
}

impl Group {
    /// Expels members past their deadline; whether any was.
    fn expire(&mut self, now: Instant) -> bool {
        let before = self.members.len();
        self.members.retain(|_, m| m.deadline > now);
        let expelled = self.members.len() != before;
        if expelled {
            self.generation += 1;
        }
        expelled
    }

    fn info(&self, name: &str, coordinator: NodeId) -> GroupInfo {
        GroupInfo {
            group: name.to_string(),
            topic: self.topic.clone(),
            generation: self.generation,
            assignor: self.assignor,
            coordinator,
            members: self
                .members
                .iter()
                .map(|(id, m)| (id.clone(), m.held.iter().copied().collect()))
                .collect(),
        }
    }
}

impl Groups {
    /// Groups this node starts coordinating before `until` may have had members elsewhere:
    /// called when the node starts and whenever the ring or its members' liveness changes.
    pub fn unsettled(&self, until: Instant) {
        let mut u = self.unsettled_until.lock().unwrap_or_else(|p| p.into_inner());
        *u = Some(u.map_or(until, |t| t.max(until)));
    }

    /// A member's heartbeat (or join); `partitions` is the topic's partition count.
    pub fn heartbeat(
        &self,
        hb: &GroupHeartbeat,
        partitions: u32,
        now: Instant,
    ) -> Result<GroupAssignment, TopicError> {
        if hb.member.is_empty() || hb.member.len() > 255 {
            return Err(TopicError::Invalid("a member id is 1 to 255 bytes".into()));
        }
        let mut groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        let g = groups.entry(hb.group.clone()).or_insert_with(|| Group {
            incarnation: rand::random::<u64>() | 1,
            topic: hb.topic.clone(),
            assignor: hb.assignor,
            generation: 0,
            members: BTreeMap::new(),
            // New here while the ring was unsettled: readers elsewhere stop within their
            // session (the first member's, as members of a group share their settings).
            adopt_until: self
                .unsettled_until
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .filter(|t| *t > now)
                .map(|_| {
                    now + Duration::from_millis(u64::from(hb.session_timeout_ms))
                        .clamp(SESSION_MIN, SESSION_MAX)
                }),
        });
        g.expire(now);
        if g.members.is_empty() {
            g.topic = hb.topic.clone();
            g.assignor = hb.assignor;
        } else if g.topic != hb.topic {
            return Err(TopicError::Invalid(format!(
                "group {} consumes topic {}; a member cannot join it for {}",
                hb.group, g.topic, hb.topic
            )));
        }
        let timeout =
            Duration::from_millis(u64::from(hb.session_timeout_ms)).clamp(SESSION_MIN, SESSION_MAX);
        match g.members.get(&hb.member) {
            Some(m) if hb.seq != 0 && hb.seq <= m.seq => {
                // A late copy of an older heartbeat: answer with what the member holds.
                return Ok(GroupAssignment {
                    generation: g.generation,
                    partitions: m.held.iter().copied().collect(),
                    members: g.members.len() as u32,
                    stale: true,
                    incarnation: g.incarnation,
                });
            }
            Some(_) => {}
            None => {
                g.generation += 1;
                let m = Member { deadline: now, held: BTreeSet::new(), seq: 0 };
                g.members.insert(hb.member.clone(), m);
            }
        }
        let adopting = g.adopt_until.is_some_and(|t| now < t);
        let held_by_others: BTreeSet<u32> = g
            .members
            .iter()
            .filter(|(id, _)| **id != hb.member)
            .flat_map(|(_, m)| m.held.iter().copied())
            .collect();
        let ids: Vec<&String> = g.members.keys().collect();
        let mine = target(&ids, partitions, g.assignor).remove(&hb.member).unwrap_or_default();
        // What it reports reading (and nobody else holds), and what it may read from now on.
        let reported: BTreeSet<u32> = hb
            .owned
            .iter()
            .copied()
            .filter(|p| *p < partitions && !held_by_others.contains(p))
            .collect();
        let grant: BTreeSet<u32> = mine
            .iter()
            .copied()
            .filter(|p| reported.contains(p) || (!adopting && !held_by_others.contains(p)))
            .collect();
        let (generation, incarnation) = (g.generation, g.incarnation);
        let members = g.members.len() as u32;
        if let Some(m) = g.members.get_mut(&hb.member) {
            m.deadline = now + timeout;
            m.seq = hb.seq;
            // Still held: what it reads now (it stops what the answer leaves out, and says so
            // in its next heartbeat), and what the answer grants.
            m.held = reported.union(&grant).copied().collect();
        }
        Ok(GroupAssignment {
            generation,
            partitions: grant.into_iter().collect(),
            members,
            stale: false,
            incarnation,
        })
    }

    /// Whether `member` holds every partition in `partitions` of `topic`.
    pub fn check_commit(
        &self,
        group: &str,
        member: &str,
        topic: &str,
        partitions: &[u32],
        now: Instant,
    ) -> Result<(), TopicError> {
        let mut groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        let Some(g) = groups.get_mut(group) else {
            return Err(TopicError::Fenced(format!("group {group} has no members here")));
        };
        g.expire(now);
        if g.topic != topic {
            return Err(TopicError::Fenced(format!("group {group} consumes topic {}", g.topic)));
        }
        let Some(m) = g.members.get(member) else {
            return Err(TopicError::Fenced(format!("{member} is not a member of group {group}")));
        };
        match partitions.iter().find(|p| !m.held.contains(p)) {
            Some(p) => Err(TopicError::Fenced(format!(
                "{member} does not hold partition {p} of {topic} in group {group}"
            ))),
            None => Ok(()),
        }
    }

    /// Drops a group (another node claimed it): its members learn it from their next call and
    /// rejoin as new members wherever the ring sends them.
    pub fn forget(&self, group: &str) {
        let mut groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        groups.remove(group);
    }

    /// A member leaves now.
    pub fn leave(&self, group: &str, member: &str) {
        let mut groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(g) = groups.get_mut(group) {
            if g.members.remove(member).is_some() {
                g.generation += 1;
            }
        }
        groups.retain(|_, g| !g.members.is_empty());
    }

    /// The groups with members (all, or one).
    pub fn describe(&self, group: Option<&str>, me: NodeId, now: Instant) -> Vec<GroupInfo> {
        let mut groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<GroupInfo> = groups
            .iter_mut()
            .filter(|(name, _)| group.is_none_or(|g| g == name.as_str()))
            .filter_map(|(name, g)| {
                g.expire(now);
                (!g.members.is_empty()).then(|| g.info(name, me))
            })
            .collect();
        out.sort_by(|a, b| a.group.cmp(&b.group));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hb(member: &str, owned: &[u32]) -> GroupHeartbeat {
        GroupHeartbeat {
            group: "g".into(),
            member: member.into(),
            topic: "t".into(),
            owned: owned.to_vec(),
            session_timeout_ms: 3_000,
            assignor: Assignor::Range,
            seq: 0,
        }
    }

    #[test]
    fn a_coordinator_new_to_a_group_grants_only_what_members_report_until_sessions_pass() {
        let groups = Groups::default();
        let now = Instant::now();
        groups.unsettled(now + Duration::from_secs(30));
        // b heartbeats first and reads nothing; a, which reads both, keeps them.
        assert!(groups.heartbeat(&hb("b", &[]), 2, now).unwrap().partitions.is_empty());
        assert_eq!(groups.heartbeat(&hb("a", &[0, 1]), 2, now).unwrap().partitions, vec![0]);
        // Still within the first member's session: nothing unreported is granted.
        let t1 = now + Duration::from_secs(2);
        let (mut a, mut b) = (hb("a", &[0, 1]), hb("b", &[]));
        (a.seq, b.seq) = (1, 1);
        assert!(groups.heartbeat(&b, 2, t1).unwrap().partitions.is_empty());
        assert_eq!(groups.heartbeat(&a, 2, t1).unwrap().partitions, vec![0]);
        // Past it: partition 1 moves once a says it stopped reading it.
        let t2 = now + Duration::from_millis(3500);
        b.seq = 2;
        assert!(groups.heartbeat(&b, 2, t2).unwrap().partitions.is_empty(), "a still holds 1");
        (a.seq, a.owned) = (2, vec![0]);
        groups.heartbeat(&a, 2, t2).unwrap();
        b.seq = 3;
        assert_eq!(groups.heartbeat(&b, 2, t2).unwrap().partitions, vec![1]);
    }

    #[test]
    fn a_late_copy_of_an_older_heartbeat_changes_nothing() {
        let groups = Groups::default();
        let now = Instant::now();
        let mut a = hb("a", &[]);
        a.seq = 1;
        assert_eq!(groups.heartbeat(&a, 2, now).unwrap().partitions, vec![0, 1]);
        a.seq = 2;
        a.owned = vec![0, 1];
        groups.heartbeat(&a, 2, now).unwrap();
        // The copy of seq 1 (reporting nothing) arrives late: a still holds both.
        a.seq = 1;
        a.owned = vec![];
        assert!(groups.heartbeat(&a, 2, now).unwrap().stale);
        assert!(groups.check_commit("g", "a", "t", &[0, 1], now).is_ok());
    }

    #[test]
    fn assignors_cover_every_partition_once() {
        let names: Vec<String> = (0..3).map(|i| format!("m{i}")).collect();
        let refs: Vec<&String> = names.iter().collect();
        for assignor in [Assignor::Range, Assignor::RoundRobin] {
            for parts in 0..12 {
                let t = target(&refs, parts, assignor);
                let all: Vec<u32> = t.values().flatten().copied().collect();
                let mut sorted = all.clone();
                sorted.sort();
                assert_eq!(sorted, (0..parts).collect::<Vec<_>>(), "{assignor:?} {parts}");
            }
        }
        // Kafka's range: 7 partitions over 3 members is 3, 2, 2.
        let t = target(&refs, 7, Assignor::Range);
        assert_eq!(t["m0"], [0, 1, 2].into());
        assert_eq!(t["m1"], [3, 4].into());
        assert_eq!(t["m2"], [5, 6].into());
    }

    #[test]
    fn a_partition_moves_only_after_its_reader_released_it() {
        let groups = Groups::default();
        let now = Instant::now();
        let a = groups.heartbeat(&hb("a", &[]), 4, now).unwrap();
        assert_eq!(a.partitions, vec![0, 1, 2, 3]);
        // b joins: its target is 2 and 3, still held by a.
        let b = groups.heartbeat(&hb("b", &[]), 4, now).unwrap();
        assert!(b.partitions.is_empty(), "{b:?}");
        assert!(b.generation > a.generation);
        // a's next heartbeat still reports all four: it is told to keep only 0 and 1...
        let a2 = groups.heartbeat(&hb("a", &[0, 1, 2, 3]), 4, now).unwrap();
        assert_eq!(a2.partitions, vec![0, 1]);
        // ...and until it reports that it stopped, b gets nothing.
        assert!(groups.heartbeat(&hb("b", &[]), 4, now).unwrap().partitions.is_empty());
        assert!(groups.check_commit("g", "a", "t", &[3], now).is_ok());
        groups.heartbeat(&hb("a", &[0, 1]), 4, now).unwrap();
        assert!(groups.check_commit("g", "a", "t", &[3], now).is_err());
        assert_eq!(groups.heartbeat(&hb("b", &[]), 4, now).unwrap().partitions, vec![2, 3]);
        assert!(groups.check_commit("g", "b", "t", &[2, 3], now).is_ok());
    }

    #[test]
    fn a_silent_member_is_expelled_and_its_partitions_move() {
        let groups = Groups::default();
        let now = Instant::now();
        groups.heartbeat(&hb("a", &[]), 2, now).unwrap();
        let b = groups.heartbeat(&hb("b", &[]), 2, now).unwrap();
        assert!(b.partitions.is_empty());
        groups.heartbeat(&hb("a", &[0, 1]), 2, now).unwrap();
        groups.heartbeat(&hb("a", &[0]), 2, now).unwrap();
        assert_eq!(groups.heartbeat(&hb("b", &[]), 2, now).unwrap().partitions, vec![1]);
        // a goes silent; b keeps heartbeating and gets everything after a's timeout.
        let later = now + Duration::from_secs(2);
        assert_eq!(groups.heartbeat(&hb("b", &[1]), 2, later).unwrap().partitions, vec![1]);
        let expired = now + Duration::from_secs(4);
        let b = groups.heartbeat(&hb("b", &[1]), 2, expired).unwrap();
        assert_eq!((b.partitions, b.members), (vec![0, 1], 1));
        assert!(groups.check_commit("g", "a", "t", &[0], expired).is_err());
    }

    #[test]
    fn a_fresh_coordinator_adopts_what_members_report_without_doubling() {
        let groups = Groups::default();
        let now = Instant::now();
        // Both claim partition 1 (one of them stale): the first keeps it.
        let a = groups.heartbeat(&hb("a", &[0, 1]), 2, now).unwrap();
        let b = groups.heartbeat(&hb("b", &[1]), 2, now).unwrap();
        assert_eq!(a.partitions, vec![0, 1]);
        assert!(b.partitions.is_empty());
        assert!(groups.check_commit("g", "b", "t", &[1], now).is_err());
    }
}
