//! Consumer groups' committed offsets, fenced by the group's record in the metadata service.
//!
//! A group's coordinator is the ring owner of its name, and two nodes whose ring views disagree
//! for a moment may both coordinate it. Each keeps its members in memory, so both would accept
//! commits, and one could move a committed offset back over what the other's members committed
//! (records delivered again) or forward over records nobody read. So commits do not go straight
//! to storage: every group has one record in the metadata service (ZAB, linearizable),
//!
//! ```text
//! /starling/groups/<group>    GroupRecord (JSON): the claim and every committed offset
//! ```
//!
//! and every change to it is a set conditional on the znode's version:
//!
//! - **Claim.** A coordinator that starts serving a group's offsets reads the record and writes
//!   it back naming itself (node and process instance) with the claim count bumped. Any claim,
//!   or any commit, by another coordinator changes the version.
//! - **Commit.** The new offsets are written conditional on the version this coordinator last
//!   wrote or read. A conflict that is not this coordinator's own write means another one
//!   claimed the group: this one is **fenced**; it drops the group (its members must rejoin,
//!   Kafka's `NOT_COORDINATOR`) and nothing it accepted after the other's claim is ever applied.
//! - **Fetch** first writes the record back unchanged, conditional on the version held: so a
//!   coordinator that was fenced learns it before its members start from offsets that are no
//!   longer the newest; then it answers from the record, which is the newest.
//! - A write whose outcome is unknown (a timeout, a leader change) leaves the record in doubt:
//!   the next call reads it first and carries on only if the claim is still this
//!   coordinator's; its write, conditional on the version read, either follows the write in
//!   doubt (which then shows in what it read) or makes it never applicable.
//! - A coordinator's group state (members, generations, what they read) is only good with the
//!   claim it was built under: a fenced coordinator drops the group, and never claims again
//!   for members that read under the old claim (they rejoin, and read the committed offsets).
//!
//! Commits of one group go one at a time, in the order the coordinator accepted them (the
//! caller holds a per-group lock across a [`Job`]): so a commit cannot overtake an older one
//! that was still in flight.
//!
//! This module is the protocol, sans-IO: a [`Job`] says what to read and write
//! ([`Next::Read`], [`Next::Write`]) and is told the answers; the node runs it against its
//! metadata service, the simulator against a modelled one.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Root of the groups' records.
pub const GROUPS_PATH: &str = "/starling/groups";

/// How many reads and writes one job may take before it gives up (a record that keeps
/// changing under it, or a local copy that keeps lagging).
pub const MAX_STEPS: u32 = 64;

/// The znode of a group's record: the name itself when it is made of letters, digits, `.`,
/// `_` and `-` (and is not `.` or `..`), else `%` and the name's bytes in hex (no such name
/// starts with `%`, so two groups never share a path).
pub fn group_path(group: &str) -> String {
    let plain = !group.is_empty()
        && group != "."
        && group != ".."
        && group.len() <= 200
        && group.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if plain {
        format!("{GROUPS_PATH}/{group}")
    } else {
        let hex: String = group.bytes().map(|b| format!("{b:02x}")).collect();
        format!("{GROUPS_PATH}/%{hex}")
    }
}

/// The group a znode under [`GROUPS_PATH`] stands for: the inverse of [`group_path`] (`None`
/// for a name it never makes).
pub fn group_of_znode(child: &str) -> Option<String> {
    let Some(hex) = child.strip_prefix('%') else { return Some(child.to_string()) };
    if hex.len() % 2 != 0 {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

/// Who claimed a group: a node and its process instance (random per start, so a node that
/// restarted is a new claimant).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claimant {
    pub node: u128,
    pub instance: u64,
}

/// A committed offset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Committed {
    pub offset: i64,
    /// The leader epoch a Kafka client sent with it; -1: not given.
    #[serde(default = "no_epoch")]
    pub leader_epoch: i32,
    /// A Kafka client's metadata string.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub metadata: String,
}

fn no_epoch() -> i32 {
    -1
}

/// The committed offsets of one topic: those of its current incarnation (the zxid that created
/// it) only; a topic deleted and created again starts with none.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicOffsets {
    pub incarnation: u64,
    pub partitions: BTreeMap<u32, Committed>,
}

/// A group's record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRecord {
    /// The coordinator whose claim stands.
    pub claimant: Option<Claimant>,
    /// How many claims there have been (the coordinator epoch).
    pub claims: u64,
    pub topics: BTreeMap<String, TopicOffsets>,
}

impl GroupRecord {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(b: &[u8]) -> Result<GroupRecord, String> {
        serde_json::from_slice(b).map_err(|e| format!("a group record that does not decode: {e}"))
    }

    /// The offset committed for a partition of a topic's incarnation.
    pub fn committed(&self, key: &OffsetKey) -> Option<&Committed> {
        self.topics
            .get(&key.topic)
            .filter(|t| t.incarnation == key.incarnation)
            .and_then(|t| t.partitions.get(&key.partition))
    }

    /// Records commits (a newer incarnation of a topic replaces the older one's offsets).
    pub fn apply(&mut self, commits: &[(OffsetKey, Committed)]) {
        for (k, c) in commits {
            let t = self.topics.entry(k.topic.clone()).or_default();
            if t.incarnation != k.incarnation {
                *t = TopicOffsets { incarnation: k.incarnation, partitions: BTreeMap::new() };
            }
            t.partitions.insert(k.partition, c.clone());
        }
    }
}

/// A partition of a topic's incarnation.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct OffsetKey {
    pub topic: String,
    pub incarnation: u64,
    pub partition: u32,
}

/// The record as this coordinator last wrote (or read and claimed) it, and its znode version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub version: u32,
    pub record: GroupRecord,
    /// A write of this coordinator's may or may not have been applied since: the next job reads
    /// the record first, and carries on from it if the claim is still this coordinator's.
    pub in_doubt: bool,
}

/// What a job ended with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The offsets asked for, in the order asked.
    Fetched(Vec<Option<Committed>>),
    Committed,
}

/// Why a job failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FenceError {
    /// Another coordinator claimed the group: this one must drop it (its members rejoin).
    #[error("another node coordinates group {group} now (claim {claims})")]
    Fenced { group: String, claims: u64 },
    /// Nothing was written; try again.
    #[error("{0}")]
    Unavailable(String),
    /// The commit may or may not have been applied.
    #[error("outcome unknown: {0}")]
    Unknown(String),
    /// The metadata service refused the write for a reason other than a conflict (a record
    /// too large), or the record does not decode.
    #[error("{0}")]
    Refused(String),
}

/// The answer to a [`Next::Write`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    /// Applied; the znode's new version.
    Ok(u32),
    /// Not applied: the version did not match, or (a create) the znode exists.
    Conflict,
    /// Not applied: the service refused it for another reason.
    Refused(String),
    /// Not applied (no leader, not reachable).
    Unavailable(String),
    /// Maybe applied.
    Unknown(String),
}

/// What the driver does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Read the group's znode and call [`Job::on_read`]. `again`: the last read showed a copy
    /// older than a write that already conflicted, so wait a moment (a local copy catching up).
    Read {
        again: bool,
    },
    /// Set the znode's data conditional on `version` (`None`: create it, with its parents) and
    /// call [`Job::on_written`].
    Write {
        version: Option<u32>,
        data: Vec<u8>,
    },
    Done(Result<Outcome, FenceError>),
}

#[derive(Debug, Clone)]
enum Work {
    Fetch(Vec<OffsetKey>),
    Commit(Vec<(OffsetKey, Committed)>),
}

#[derive(Debug, Clone)]
enum Phase {
    Start,
    /// Reading the record to claim it.
    Loading,
    /// Writing the claim.
    Claiming(GroupRecord),
    /// Writing the commit.
    Committing(GroupRecord),
    /// The commit conflicted: reading whose write was in between.
    Rechecking,
    /// A write of this coordinator's is in doubt: reading whether the claim still stands.
    Resuming,
    Done,
}

/// One fetch or commit of one group's offsets. The caller keeps the group's [`Held`] record
/// (`None` until claimed) and runs one job at a time per group.
#[derive(Debug, Clone)]
pub struct Job {
    group: String,
    me: Claimant,
    work: Work,
    phase: Phase,
    steps: u32,
    /// The record this job acts on was just written (claimed) or confirmed by a write.
    confirmed: bool,
}

impl Job {
    pub fn fetch(group: &str, me: Claimant, keys: Vec<OffsetKey>) -> Job {
        Job::new(group, me, Work::Fetch(keys))
    }

    pub fn commit(group: &str, me: Claimant, commits: Vec<(OffsetKey, Committed)>) -> Job {
        Job::new(group, me, Work::Commit(commits))
    }

    fn new(group: &str, me: Claimant, work: Work) -> Job {
        Job { group: group.to_string(), me, work, phase: Phase::Start, steps: 0, confirmed: false }
    }

    /// The first step.
    pub fn start(&mut self, held: &mut Option<Held>) -> Next {
        match held {
            None => {
                self.phase = Phase::Loading;
                Next::Read { again: false }
            }
            Some(h) if h.in_doubt => {
                self.phase = Phase::Resuming;
                Next::Read { again: false }
            }
            Some(h) => self.act(h),
        }
    }

    /// With the record held: answer the fetch, or write the commit.
    fn act(&mut self, h: &Held) -> Next {
        match &self.work {
            // A fetch writes the record back unchanged first: if another coordinator claimed
            // the group since, this one learns it now, before its members read from offsets
            // that are no longer the newest.
            Work::Fetch(_) if !self.confirmed => {
                self.confirmed = true;
                self.phase = Phase::Committing(h.record.clone());
                Next::Write { version: Some(h.version), data: h.record.encode() }
            }
            Work::Fetch(keys) => {
                self.phase = Phase::Done;
                let found = keys.iter().map(|k| h.record.committed(k).cloned()).collect();
                Next::Done(Ok(Outcome::Fetched(found)))
            }
            Work::Commit(commits) => {
                let mut rec = h.record.clone();
                rec.apply(commits);
                let data = rec.encode();
                self.phase = Phase::Committing(rec);
                Next::Write { version: Some(h.version), data }
            }
        }
    }

    fn step(&mut self) -> Option<Next> {
        self.steps += 1;
        (self.steps > MAX_STEPS).then(|| {
            self.phase = Phase::Done;
            Next::Done(Err(FenceError::Unavailable(format!(
                "group {}'s record kept changing under {MAX_STEPS} reads and writes",
                self.group
            ))))
        })
    }

    /// The group's znode as read: `None` when it does not exist, else its version and data.
    pub fn on_read(&mut self, held: &mut Option<Held>, found: Option<(u32, &[u8])>) -> Next {
        if let Some(n) = self.step() {
            return n;
        }
        let (version, record) = match found {
            None => (None, GroupRecord::default()),
            Some((v, data)) => match GroupRecord::decode(data) {
                Ok(r) => (Some(v), r),
                Err(e) => {
                    self.phase = Phase::Done;
                    return Next::Done(Err(FenceError::Refused(format!(
                        "group {}: {e}",
                        self.group
                    ))));
                }
            },
        };
        match std::mem::replace(&mut self.phase, Phase::Done) {
            Phase::Loading => {
                let mut rec = record;
                rec.claimant = Some(self.me);
                rec.claims += 1;
                let data = rec.encode();
                self.phase = Phase::Claiming(rec);
                Next::Write { version, data }
            }
            phase @ (Phase::Rechecking | Phase::Resuming) => {
                let Some(h) = held.as_ref() else {
                    self.phase = Phase::Loading;
                    return self.on_read(held, found);
                };
                let mine = version.is_some()
                    && record.claimant == Some(self.me)
                    && record.claims == h.record.claims;
                if mine && (matches!(phase, Phase::Resuming) || version != Some(h.version)) {
                    // The claim is still this coordinator's; a write in between was its own (one
                    // whose answer was lost): carry on from the record as it is.
                    let h = Held { version: version.unwrap_or(0), record, in_doubt: false };
                    let next = self.act(&h);
                    *held = Some(h);
                    next
                } else if version == Some(h.version) {
                    // This node's copy has not caught up with the write that conflicted yet.
                    self.phase = Phase::Rechecking;
                    Next::Read { again: true }
                } else {
                    *held = None;
                    Next::Done(Err(FenceError::Fenced {
                        group: self.group.clone(),
                        claims: record.claims,
                    }))
                }
            }
            other => {
                self.phase = other;
                Next::Done(Err(FenceError::Unavailable("a read nobody asked for".into())))
            }
        }
    }

    /// The answer to the last [`Next::Write`].
    pub fn on_written(&mut self, held: &mut Option<Held>, w: Written) -> Next {
        if let Some(n) = self.step() {
            return n;
        }
        match (std::mem::replace(&mut self.phase, Phase::Done), w) {
            (Phase::Claiming(record), Written::Ok(version)) => {
                self.confirmed = true;
                let h = Held { version, record, in_doubt: false };
                let next = self.act(&h);
                *held = Some(h);
                next
            }
            (Phase::Claiming(_), Written::Conflict) => {
                // Another claim or commit came in between: read again.
                self.phase = Phase::Loading;
                Next::Read { again: true }
            }
            (Phase::Committing(record), Written::Ok(version)) => {
                let h = Held { version, record, in_doubt: false };
                let next = match self.work {
                    Work::Fetch(_) => self.act(&h),
                    Work::Commit(_) => Next::Done(Ok(Outcome::Committed)),
                };
                *held = Some(h);
                next
            }
            (Phase::Committing(_), Written::Conflict) => {
                self.phase = Phase::Rechecking;
                Next::Read { again: false }
            }
            (_, Written::Unknown(m)) => {
                // The write may land later. The next job reads the record first: if the claim
                // is still this coordinator's, it carries on from whatever is there, and its
                // own write, conditional on the version it read, either follows the one in
                // doubt or leaves it never applicable.
                if let Some(h) = held.as_mut() {
                    h.in_doubt = true;
                }
                Next::Done(Err(FenceError::Unknown(m)))
            }
            (_, Written::Unavailable(m)) => Next::Done(Err(FenceError::Unavailable(m))),
            (_, Written::Refused(m)) => Next::Done(Err(FenceError::Refused(m))),
            (other, _) => {
                self.phase = other;
                Next::Done(Err(FenceError::Unavailable("a write nobody asked for".into())))
            }
        }
    }
}

/// The groups' records as a metadata service would keep them (one versioned znode per group,
/// conditional writes), in memory: for tests and the fuzz harness.
#[derive(Debug, Default)]
pub struct MemRecords {
    znodes: BTreeMap<String, (u32, Vec<u8>)>,
}

impl MemRecords {
    /// A group's znode: version and data.
    pub fn read(&self, group: &str) -> Option<(u32, &[u8])> {
        self.znodes.get(group).map(|(v, d)| (*v, d.as_slice()))
    }

    /// A conditional set (`Some(version)`) or a create (`None`), as ZooKeeper does them.
    pub fn write(&mut self, group: &str, version: Option<u32>, data: Vec<u8>) -> Written {
        match (self.znodes.get(group), version) {
            (None, None) => {
                self.znodes.insert(group.to_string(), (0, data));
                Written::Ok(0)
            }
            (Some((v, _)), Some(w)) if *v == w => {
                let next = w + 1;
                self.znodes.insert(group.to_string(), (next, data));
                Written::Ok(next)
            }
            _ => Written::Conflict,
        }
    }

    /// Runs a job to its end.
    pub fn run(&mut self, mut job: Job, held: &mut Option<Held>) -> Result<Outcome, FenceError> {
        let group = job.group.clone();
        let mut next = job.start(held);
        loop {
            next = match next {
                Next::Read { .. } => {
                    let found = self.znodes.get(&group).cloned();
                    job.on_read(held, found.as_ref().map(|(v, d)| (*v, d.as_slice())))
                }
                Next::Write { version, data } => {
                    let w = self.write(&group, version, data);
                    job.on_written(held, w)
                }
                Next::Done(r) => return r,
            };
        }
    }

    /// The group's record as stored.
    pub fn record(&self, group: &str) -> Option<GroupRecord> {
        self.read(group).and_then(|(_, d)| GroupRecord::decode(d).ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_znode_names_its_group() {
        for g in ["billing", "a.b_c-d", "with/slash", "ümlaut", "%x", ".", ""] {
            let path = group_path(g);
            let child = path.strip_prefix(&format!("{GROUPS_PATH}/")).expect("under the path");
            assert_eq!(group_of_znode(child).as_deref(), Some(g), "{path}");
        }
        assert_eq!(group_of_znode("%4"), None);
        assert_eq!(group_of_znode("%zz"), None);
        assert_eq!(group_of_znode("%ff"), None);
    }

    /// One group's znode.
    #[derive(Default)]
    struct Znode(MemRecords);

    impl Znode {
        fn write(&mut self, version: Option<u32>, data: Vec<u8>) -> Written {
            self.0.write("g", version, data)
        }

        fn run(&mut self, job: Job, held: &mut Option<Held>) -> Result<Outcome, FenceError> {
            self.0.run(job, held)
        }

        fn get(&self) -> Option<(u32, Vec<u8>)> {
            self.0.read("g").map(|(v, d)| (v, d.to_vec()))
        }

        fn record(&self) -> GroupRecord {
            self.0.record("g").unwrap()
        }
    }

    fn key(p: u32) -> OffsetKey {
        OffsetKey { topic: "t".into(), incarnation: 7, partition: p }
    }

    fn at(offset: i64) -> Committed {
        Committed { offset, leader_epoch: -1, metadata: String::new() }
    }

    const A: Claimant = Claimant { node: 1, instance: 10 };
    const B: Claimant = Claimant { node: 2, instance: 20 };

    #[test]
    fn a_coordinator_claims_then_commits_and_fetches_what_it_committed() {
        let mut z = Znode::default();
        let mut held = None;
        assert_eq!(
            z.run(Job::fetch("g", A, vec![key(0)]), &mut held),
            Ok(Outcome::Fetched(vec![None]))
        );
        assert_eq!(z.record().claimant, Some(A));
        assert_eq!(z.record().claims, 1);
        assert_eq!(
            z.run(Job::commit("g", A, vec![(key(0), at(5))]), &mut held),
            Ok(Outcome::Committed)
        );
        assert_eq!(
            z.run(Job::fetch("g", A, vec![key(0), key(1)]), &mut held),
            Ok(Outcome::Fetched(vec![Some(at(5)), None]))
        );
        assert_eq!(z.record().committed(&key(0)), Some(&at(5)));
    }

    #[test]
    fn a_second_claim_fences_the_first_coordinator_and_its_commit_is_never_applied() {
        let mut z = Znode::default();
        let (mut a, mut b) = (None, None);
        z.run(Job::commit("g", A, vec![(key(0), at(5))]), &mut a).unwrap();
        // B claims (its ring view says it owns the group) and sees A's commit.
        assert_eq!(
            z.run(Job::fetch("g", B, vec![key(0)]), &mut b),
            Ok(Outcome::Fetched(vec![Some(at(5))]))
        );
        z.run(Job::commit("g", B, vec![(key(0), at(9))]), &mut b).unwrap();
        // A, still holding its claim in memory, tries to move the offset back.
        let r = z.run(Job::commit("g", A, vec![(key(0), at(6))]), &mut a);
        assert!(matches!(r, Err(FenceError::Fenced { claims: 2, .. })), "{r:?}");
        assert_eq!(a, None, "A forgot the record");
        assert_eq!(z.record().committed(&key(0)), Some(&at(9)));
        // A claims again later (the ring moved the group back): it sees B's commits.
        assert_eq!(
            z.run(Job::fetch("g", A, vec![key(0)]), &mut a),
            Ok(Outcome::Fetched(vec![Some(at(9))]))
        );
        assert_eq!(z.record().claims, 3);
    }

    #[test]
    fn a_write_in_doubt_is_ordered_before_the_next_write_or_never_applies() {
        for lands_first in [true, false] {
            let mut z = Znode::default();
            let mut held = None;
            z.run(Job::commit("g", A, vec![(key(0), at(1))]), &mut held).unwrap();
            // A commit's answer is lost: it is in doubt, and the claim is kept.
            let mut job = Job::commit("g", A, vec![(key(0), at(2))]);
            let Next::Write { version, data } = job.start(&mut held) else { panic!() };
            let lost = job.on_written(&mut held, Written::Unknown("timeout".into()));
            assert!(matches!(lost, Next::Done(Err(FenceError::Unknown(_)))));
            assert!(held.as_ref().is_some_and(|h| h.in_doubt));
            if lands_first {
                assert!(matches!(z.write(version, data.clone()), Written::Ok(_)));
            }
            // The next call reads first, finds the claim still A's, and carries on from it.
            let fetched = z.run(Job::fetch("g", A, vec![key(0)]), &mut held);
            let want = if lands_first { 2 } else { 1 };
            assert_eq!(
                fetched,
                Ok(Outcome::Fetched(vec![Some(at(want))])),
                "lands first: {lands_first}"
            );
            assert!(held.as_ref().is_some_and(|h| !h.in_doubt));
            // Landing late, the write in doubt is never applied: the version moved on.
            assert_eq!(z.write(version, data), Written::Conflict);
            assert_eq!(z.record().committed(&key(0)), Some(&at(want)));
        }
    }

    #[test]
    fn a_coordinator_whose_write_was_in_doubt_is_fenced_if_another_claimed_meanwhile() {
        let mut z = Znode::default();
        let (mut a, mut b) = (None, None);
        z.run(Job::commit("g", A, vec![(key(0), at(1))]), &mut a).unwrap();
        let mut job = Job::commit("g", A, vec![(key(0), at(2))]);
        let Next::Write { .. } = job.start(&mut a) else { panic!() };
        job.on_written(&mut a, Written::Unknown("timeout".into()));
        z.run(Job::commit("g", B, vec![(key(0), at(5))]), &mut b).unwrap();
        // A must not claim again for members that read under its old claim: it is fenced.
        let r = z.run(Job::commit("g", A, vec![(key(0), at(3))]), &mut a);
        assert!(matches!(r, Err(FenceError::Fenced { .. })), "{r:?}");
        assert_eq!(a, None);
        assert_eq!(z.record().committed(&key(0)), Some(&at(5)));
    }

    #[test]
    fn a_lagging_copy_is_read_again_not_taken_for_a_fence() {
        let mut z = Znode::default();
        let mut held = None;
        z.run(Job::commit("g", A, vec![(key(0), at(1))]), &mut held).unwrap();
        let stale = z.get().unwrap();
        // B claims; A's commit conflicts; A's first read is of a copy that has not seen B yet.
        let mut b = None;
        z.run(Job::fetch("g", B, vec![]), &mut b).unwrap();
        let mut job = Job::commit("g", A, vec![(key(0), at(2))]);
        let Next::Write { version, data } = job.start(&mut held) else { panic!() };
        let w = z.write(version, data);
        assert_eq!(w, Written::Conflict);
        assert_eq!(job.on_written(&mut held, w), Next::Read { again: false });
        assert_eq!(job.on_read(&mut held, Some((stale.0, &stale.1))), Next::Read { again: true });
        let now = z.get().unwrap();
        assert!(matches!(
            job.on_read(&mut held, Some((now.0, &now.1))),
            Next::Done(Err(FenceError::Fenced { .. }))
        ));
    }

    #[test]
    fn a_new_incarnation_of_a_topic_starts_with_no_offsets_and_paths_never_collide() {
        let mut r = GroupRecord::default();
        r.apply(&[(key(0), at(5))]);
        let newer = OffsetKey { topic: "t".into(), incarnation: 8, partition: 1 };
        r.apply(&[(newer.clone(), at(1))]);
        assert_eq!(r.committed(&key(0)), None);
        assert_eq!(r.committed(&newer), Some(&at(1)));
        assert_eq!(group_path("orders-1.a_b"), "/starling/groups/orders-1.a_b");
        assert_eq!(group_path("a/b"), "/starling/groups/%612f62");
        assert_ne!(group_path("%612f62"), group_path("a/b"));
        assert_eq!(group_path(".."), "/starling/groups/%2e2e");
        assert!(GroupRecord::decode(b"\xff").is_err());
    }
}
