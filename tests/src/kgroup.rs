//! Kafka's consumer-group protocol as Starling coordinates it (`starling_kafka::group`) in the
//! simulator: one coordinator (slot 0, also the broker the consumers fetch from) and consumers
//! (slots 1..) that speak the protocol as Kafka's clients do — JoinGroup with the
//! `MEMBER_ID_REQUIRED` round trip, the leader's range assignment through SyncGroup, heartbeats,
//! a synchronous commit after every record, LeaveGroup — under consumer crashes and restarts,
//! pauses longer than the session timeout, voluntary leaves, coordinator crashes (its group
//! state is in memory and lost; committed offsets are durable, as in the key-value store),
//! partitions, loss and reordering, while records keep arriving.
//!
//! Committed offsets live in a modelled metadata service (one linearizable znode per group, as
//! ZAB gives the node): the coordinator claims the group and commits with conditional writes
//! (`starling_mq::fence`, the node's own code), waits up to a second for each answer (then
//! the write is in doubt), and drops the group when another coordinator's claim fences it.
//!
//! The checker judges what the coordinator did (commits are judged when the metadata service
//! applies them):
//! - **no partition is assigned to two members of one generation**;
//! - **a commit is accepted only from a member that holds the partition in the group's current
//!   generation**, and it moves the partition's committed offset forward by exactly one record
//!   (or repeats it, a retry): so every record is committed exactly once, in order, whatever
//!   crashed — a record may be *read* twice (at-least-once delivery), never committed twice or
//!   skipped;
//! - after the faults end, the group settles and every record is committed (no group stuck).
//!
//! The client-server link behaves like TCP: nothing is duplicated; a lost message is a request
//! that times out, after which the client retries or rejoins as Kafka's clients do.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::Rng;
use serde::{Deserialize, Serialize};
use starling_kafka::group::{Groups, JoinArgs, Reply, Token};
use starling_mq::fence::{
    Claimant, Committed, FenceError, Held, Job, MemRecords, Next, OffsetKey, Outcome, Written,
};

use crate::sim::{sim_addr, NetConfig, Process, Sim};

// Kafka's error codes the consumers act on.
const COORDINATOR_NOT_AVAILABLE: i16 = 15;
const NOT_COORDINATOR: i16 = 16;
const ILLEGAL_GENERATION: i16 = 22;
const UNKNOWN_MEMBER_ID: i16 = 25;
const MEMBER_ID_REQUIRED: i16 = 79;

const GROUP: &str = "g";
const SESSION_MS: u64 = 3_000;
const REBALANCE_MS: u64 = 4_000;
const HEARTBEAT: Duration = Duration::from_millis(1_000);
/// How long a consumer waits for an answer (a join: the rebalance timeout and this).
const REQUEST: Duration = Duration::from_millis(1_500);
/// The coordinator's tick (the node's is 200 ms too).
const TICK: Duration = Duration::from_millis(200);
/// A consumer with nothing to read looks again after this.
const IDLE: Duration = Duration::from_millis(100);
/// How long a coordinator waits for the metadata service (a write then counts as in doubt).
const META_WAIT: Duration = Duration::from_millis(1_000);
/// The topic's incarnation (one topic, never deleted).
const INCARNATION: u64 = 1;

/// A call to the metadata service (the group's record, one znode).
#[derive(Debug, Clone, Serialize, Deserialize)]
enum MetaReq {
    Read,
    /// A conditional set (or create); `notes` say who made each commit in it, for the checker.
    Write {
        version: Option<u32>,
        data: Vec<u8>,
        notes: Vec<Note>,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Note {
    partition: u32,
    member: String,
    generation: i32,
    instance: Incarnation,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum MetaResp {
    Read(Option<(u32, Vec<u8>)>),
    /// `Some(version)`: applied; `None`: a conflict.
    Written(Option<u32>),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum Req {
    Join { member_id: String, client_id: String },
    Sync { generation: i32, member_id: String, assignments: Vec<(String, Vec<u32>)> },
    Heartbeat { generation: i32, member_id: String },
    Leave { member_id: String },
    OffsetFetch { partitions: Vec<u32> },
    Commit { generation: i32, member_id: String, partition: u32, offset: u64 },
    Fetch { partition: u32, offset: u64 },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum Resp {
    Join {
        error: i16,
        generation: i32,
        member_id: String,
        leader: String,
        members: Vec<String>,
    },
    Sync {
        error: i16,
        partitions: Vec<u32>,
    },
    Heartbeat {
        error: i16,
    },
    Leave,
    Offsets {
        error: i16,
        committed: Vec<(u32, u64)>,
    },
    Commit {
        error: i16,
    },
    /// The record at the offset asked for, if the log has it yet.
    Fetch {
        record: Option<u64>,
    },
}

/// A message: `(incarnation, id)` of the consumer's request (its answer carries them back).
#[derive(Debug, Serialize, Deserialize)]
struct Envelope<T> {
    incarnation: u64,
    id: u64,
    body: T,
}

fn enc<T: Serialize>(incarnation: u64, id: u64, body: T) -> Vec<u8> {
    rmp_serde::to_vec(&Envelope { incarnation, id, body }).expect("encode")
}

/// A coordinator instance and a group incarnation in it: generations count from 1 in each.
pub type Incarnation = (u64, u64);

/// What the group and its consumers did, and every violation seen.
#[derive(Debug, Default)]
pub struct GroupChecker {
    /// Committed offsets (durable: they outlive coordinator crashes).
    pub committed: BTreeMap<u32, u64>,
    /// Records in each partition's log.
    pub log_len: BTreeMap<u32, u64>,
    /// `((coordinator instance, group incarnation), generation) -> member -> partitions` as
    /// handed out by syncs.
    pub assignments: BTreeMap<(Incarnation, i32), BTreeMap<String, Vec<u32>>>,
    pub commits_accepted: u64,
    pub commits_refused: u64,
    /// Records read by a consumer, and those read again (by it or another member).
    pub reads: u64,
    pub rereads: u64,
    read: std::collections::BTreeSet<(u32, u64)>,
    pub joins: u64,
    /// Offsets calls that found the coordinator fenced by another's claim.
    pub fenced: u64,
    pub violations: Vec<String>,
}

fn key(partition: u32) -> OffsetKey {
    OffsetKey { topic: "t".into(), incarnation: INCARNATION, partition }
}

impl GroupChecker {
    fn assigned(
        &mut self,
        at: Duration,
        instance: Incarnation,
        generation: i32,
        member: &str,
        p: &[u32],
    ) {
        let gen = self.assignments.entry((instance, generation)).or_default();
        for (other, theirs) in gen.iter() {
            if other != member {
                if let Some(x) = p.iter().find(|x| theirs.contains(x)) {
                    self.violations.push(format!(
                        "at {at:?}: partition {x} assigned to both {other} and {member} in generation {generation} of coordinator {:x} (group incarnation {})", instance.0, instance.1
                    ));
                }
            }
        }
        gen.insert(member.to_string(), p.to_vec());
    }

    fn commit(
        &mut self,
        at: Duration,
        instance: Incarnation,
        generation: i32,
        member: &str,
        p: u32,
        offset: u64,
    ) {
        self.commits_accepted += 1;
        let holds = self
            .assignments
            .get(&(instance, generation))
            .and_then(|g| g.get(member))
            .is_some_and(|ps| ps.contains(&p));
        if !holds {
            self.violations.push(format!(
                "at {at:?}: commit of partition {p} at {offset} accepted from {member}, which does not hold it in generation {generation}"
            ));
        }
        let cur = self.committed.get(&p).copied().unwrap_or(0);
        if offset != cur && offset != cur + 1 {
            self.violations.push(format!(
                "at {at:?}: partition {p}'s committed offset moved from {cur} to {offset} (by {member}, generation {generation}): records {} committed twice or skipped",
                if offset < cur { format!("{offset}..{cur}") } else { format!("{cur}..{offset}") }
            ));
        }
        self.committed.insert(p, offset);
    }
}

type Shared = Rc<RefCell<GroupChecker>>;

/// The coordinator and broker: `starling_kafka::group::Groups` and a durable offset store.
#[derive(Debug)]
pub struct Coordinator {
    instance: u64,
    /// The process's clock starts here (as the node's does: milliseconds since it started).
    started: Instant,
    sim_start: Instant,
    groups: Groups,
    parked: BTreeMap<Token, (SocketAddr, (u64, u64), i32, String)>,
    /// The newest request taken from each consumer: a client's requests are served in the order
    /// it sent them, as over one TCP connection (a consumer that gave up on a request opened a
    /// new connection; what was still in flight on the old one is not served after the new
    /// one's).
    newest: BTreeMap<SocketAddr, (u64, u64)>,
    /// Bumped when the group is forgotten (it emptied): generations start again at 1 after it,
    /// as in Kafka; member ids never repeat.
    group_incarnation: u64,
    next_token: Token,
    next_tick: Instant,
    out: VecDeque<(SocketAddr, Vec<u8>)>,
    shared: Shared,
    /// The metadata service, the group's record as this coordinator holds it, and its offsets
    /// calls: one at a time, in the order accepted.
    meta: SocketAddr,
    held: Option<Held>,
    jobs: VecDeque<Pending>,
    running: Option<Running>,
    meta_seq: u64,
}

/// An offsets call waiting for its turn.
#[derive(Debug)]
struct Pending {
    to: SocketAddr,
    id: (u64, u64),
    work: Work,
}

#[derive(Debug, Clone)]
enum Work {
    Fetch { partitions: Vec<u32> },
    Commit { generation: i32, member_id: String, partition: u32, offset: u64 },
}

/// The offsets call being served: its job, and the metadata call it waits for.
#[derive(Debug)]
struct Running {
    call: Pending,
    job: Job,
    notes: Vec<Note>,
    /// `(sequence, give up at, a write)`.
    waiting: Option<(u64, Instant, bool)>,
}

impl Coordinator {
    fn new(
        instance: u64,
        now: Instant,
        sim_start: Instant,
        meta: SocketAddr,
        shared: Shared,
    ) -> Coordinator {
        Coordinator {
            instance,
            started: now,
            sim_start,
            groups: Groups::new(instance),
            parked: BTreeMap::new(),
            newest: BTreeMap::new(),
            group_incarnation: 0,
            next_token: 0,
            next_tick: now + TICK,
            out: VecDeque::new(),
            shared,
            meta,
            held: None,
            jobs: VecDeque::new(),
            running: None,
            meta_seq: 0,
        }
    }

    fn me(&self) -> Claimant {
        Claimant { node: u128::from(self.instance >> 8), instance: self.instance }
    }

    /// Starts the next offsets call if none is running.
    fn pump(&mut self, now: Instant) {
        while self.running.is_none() {
            let Some(call) = self.jobs.pop_front() else { return };
            let (job, notes) = match &call.work {
                Work::Fetch { partitions } => {
                    let keys = partitions.iter().map(|p| key(*p)).collect();
                    (Job::fetch(GROUP, self.me(), keys), Vec::new())
                }
                Work::Commit { generation, member_id, partition, offset } => {
                    // Validated again now: a fence since it came in may have dropped the group.
                    let error =
                        self.groups.check_commit(self.ms(now), GROUP, *generation, member_id);
                    if error != 0 {
                        self.shared.borrow_mut().commits_refused += 1;
                        self.reply(call.to, call.id, Resp::Commit { error });
                        continue;
                    }
                    let at = Committed {
                        offset: *offset as i64,
                        leader_epoch: -1,
                        metadata: String::new(),
                    };
                    let note = Note {
                        partition: *partition,
                        member: member_id.clone(),
                        generation: *generation,
                        instance: (self.instance, self.group_incarnation),
                    };
                    (Job::commit(GROUP, self.me(), vec![(key(*partition), at)]), vec![note])
                }
            };
            let mut r = Running { call, job, notes, waiting: None };
            let next = r.job.start(&mut self.held);
            self.running = Some(r);
            self.step(now, next);
        }
    }

    /// Acts on what the running job wants next.
    fn step(&mut self, now: Instant, next: Next) {
        let Some(r) = self.running.as_mut() else { return };
        let (req, write) = match next {
            Next::Read { .. } => (MetaReq::Read, false),
            Next::Write { version, data } => {
                (MetaReq::Write { version, data, notes: r.notes.clone() }, true)
            }
            Next::Done(result) => {
                let Some(r) = self.running.take() else { return };
                self.finish(now, r.call, result);
                return self.pump(now);
            }
        };
        self.meta_seq += 1;
        r.waiting = Some((self.meta_seq, now + META_WAIT, write));
        self.out.push_back((self.meta, enc(self.instance, self.meta_seq, req)));
    }

    fn on_meta(&mut self, now: Instant, seq: u64, resp: MetaResp) {
        let Some(r) = self.running.as_mut() else { return };
        if r.waiting.map(|(s, _, _)| s) != Some(seq) {
            return;
        }
        r.waiting = None;
        let next = match resp {
            MetaResp::Read(found) => {
                r.job.on_read(&mut self.held, found.as_ref().map(|(v, d)| (*v, d.as_slice())))
            }
            MetaResp::Written(Some(v)) => r.job.on_written(&mut self.held, Written::Ok(v)),
            MetaResp::Written(None) => r.job.on_written(&mut self.held, Written::Conflict),
        };
        self.step(now, next);
    }

    /// Answers an offsets call; a fenced coordinator drops the group.
    fn finish(&mut self, now: Instant, call: Pending, result: Result<Outcome, FenceError>) {
        let error = match &result {
            Ok(_) => 0,
            Err(FenceError::Fenced { .. }) => {
                let replies = self.groups.forget(GROUP);
                self.dispatch(now, replies);
                self.group_incarnation += 1;
                self.shared.borrow_mut().fenced += 1;
                NOT_COORDINATOR
            }
            Err(_) => COORDINATOR_NOT_AVAILABLE,
        };
        let resp = match (call.work, result) {
            (Work::Fetch { partitions }, Ok(Outcome::Fetched(found))) => {
                let committed = partitions
                    .iter()
                    .zip(found)
                    .map(|(p, c)| (*p, c.map_or(0, |c| c.offset as u64)))
                    .collect();
                Resp::Offsets { error: 0, committed }
            }
            (Work::Fetch { .. }, _) => Resp::Offsets { error, committed: Vec::new() },
            (Work::Commit { .. }, r) => {
                if r.is_err() {
                    self.shared.borrow_mut().commits_refused += 1;
                }
                Resp::Commit { error }
            }
        };
        self.reply(call.to, call.id, resp);
    }

    fn reply(&mut self, to: SocketAddr, id: (u64, u64), body: Resp) {
        self.out.push_back((to, enc(id.0, id.1, body)));
    }

    fn ms(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.started).as_millis() as u64
    }

    fn park(&mut self, to: SocketAddr, id: (u64, u64), generation: i32, member: &str) -> Token {
        self.next_token += 1;
        self.parked.insert(self.next_token, (to, id, generation, member.to_string()));
        self.next_token
    }

    fn dispatch(&mut self, now: Instant, replies: Vec<Reply>) {
        for r in replies {
            match r {
                Reply::Join(t, a) => {
                    let Some((to, id, _, _)) = self.parked.remove(&t) else { continue };
                    let members = a.members.into_iter().map(|(m, _)| m).collect();
                    let body = Resp::Join {
                        error: a.error,
                        generation: a.generation,
                        member_id: a.member_id,
                        leader: a.leader,
                        members,
                    };
                    self.out.push_back((to, enc(id.0, id.1, body)));
                }
                Reply::Sync(t, a) => {
                    let Some((to, id, generation, member)) = self.parked.remove(&t) else {
                        continue;
                    };
                    let partitions: Vec<u32> = if a.error == 0 {
                        rmp_serde::from_slice(&a.assignment).unwrap_or_default()
                    } else {
                        Vec::new()
                    };
                    if a.error == 0 {
                        let at = now - self.sim_start;
                        self.shared.borrow_mut().assigned(
                            at,
                            (self.instance, self.group_incarnation),
                            generation,
                            &member,
                            &partitions,
                        );
                    }
                    let body = Resp::Sync { error: a.error, partitions };
                    self.out.push_back((to, enc(id.0, id.1, body)));
                }
            }
        }
    }
}

impl Process for Coordinator {
    fn handle_message(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        if from == self.meta {
            if let Ok(e) = rmp_serde::from_slice::<Envelope<MetaResp>>(bytes) {
                if e.incarnation == self.instance {
                    self.on_meta(now, e.id, e.body);
                }
            }
            return;
        }
        let Ok(Envelope { incarnation, id, body }) = rmp_serde::from_slice::<Envelope<Req>>(bytes)
        else {
            return;
        };
        let newest = self.newest.entry(from).or_default();
        if (incarnation, id) <= *newest {
            return;
        }
        *newest = (incarnation, id);
        let id = (incarnation, id);
        let answer = |body: Resp| (from, enc(id.0, id.1, body));
        let ms = self.ms(now);
        if std::env::var_os("GROUP_TRACE").is_some() {
            eprintln!("{:?} {:x} <- {from} #{id:?} {body:?}", now - self.sim_start, self.instance);
        }
        match body {
            Req::Join { member_id, client_id } => {
                self.shared.borrow_mut().joins += 1;
                let t = self.park(from, id, -1, &member_id);
                let args = JoinArgs {
                    group: GROUP.into(),
                    member_id,
                    client_id,
                    client_host: from.to_string(),
                    session_timeout_ms: SESSION_MS,
                    rebalance_timeout_ms: REBALANCE_MS,
                    protocol_type: "consumer".into(),
                    protocols: vec![("range".into(), Bytes::from_static(b"t"))],
                    require_known_member_id: true,
                };
                let replies = self.groups.join(ms, t, args);
                self.dispatch(now, replies);
            }
            Req::Sync { generation, member_id, assignments } => {
                let t = self.park(from, id, generation, &member_id);
                let given = assignments
                    .into_iter()
                    .map(|(m, ps)| (m, Bytes::from(rmp_serde::to_vec(&ps).expect("encode"))))
                    .collect();
                let replies = self.groups.sync(ms, t, GROUP, generation, &member_id, given);
                self.dispatch(now, replies);
            }
            Req::Heartbeat { generation, member_id } => {
                let error = self.groups.heartbeat(ms, GROUP, generation, &member_id);
                self.out.push_back(answer(Resp::Heartbeat { error }));
            }
            Req::Leave { member_id } => {
                let (_, replies) = self.groups.leave(ms, GROUP, &[member_id]);
                self.dispatch(now, replies);
                self.out.push_back(answer(Resp::Leave));
            }
            Req::OffsetFetch { partitions } => {
                self.jobs.push_back(Pending { to: from, id, work: Work::Fetch { partitions } });
                self.pump(now);
            }
            Req::Commit { generation, member_id, partition, offset } => {
                let error = self.groups.check_commit(ms, GROUP, generation, &member_id);
                if error == 0 {
                    let work = Work::Commit { generation, member_id, partition, offset };
                    self.jobs.push_back(Pending { to: from, id, work });
                    self.pump(now);
                } else {
                    self.shared.borrow_mut().commits_refused += 1;
                    self.out.push_back(answer(Resp::Commit { error }));
                }
            }
            Req::Fetch { partition, offset } => {
                let len = self.shared.borrow().log_len.get(&partition).copied().unwrap_or(0);
                let record = (offset < len).then_some(offset);
                self.out.push_back(answer(Resp::Fetch { record }));
            }
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        let overdue = self
            .running
            .as_ref()
            .and_then(|r| r.waiting)
            .filter(|(_, until, _)| now >= *until)
            .map(|(_, _, write)| write);
        if let (Some(write), Some(r)) = (overdue, self.running.as_mut()) {
            r.waiting = None;
            let next = if write {
                r.job.on_written(&mut self.held, Written::Unknown("no answer in time".into()))
            } else {
                Next::Done(Err(FenceError::Unavailable("no answer in time".into())))
            };
            self.step(now, next);
        }
        if now >= self.next_tick {
            self.next_tick = now + TICK;
            let existed = self.groups.describe(GROUP).is_some();
            let replies = self.groups.tick(self.ms(now), |_| true);
            self.dispatch(now, replies);
            if existed && self.groups.describe(GROUP).is_none() {
                self.group_incarnation += 1;
            }
        }
    }

    fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        let m = self.out.pop_front();
        if std::env::var_os("GROUP_TRACE").is_some() {
            if let Some((to, b)) = &m {
                if let Ok(e) = rmp_serde::from_slice::<Envelope<Resp>>(b) {
                    eprintln!("   {:x} -> {to} #{} {:?}", self.instance, e.id, e.body);
                }
            }
        }
        m
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let waiting = self.running.as_ref().and_then(|r| r.waiting).map(|(_, t, _)| t);
        Some(waiting.map_or(self.next_tick, |t| t.min(self.next_tick)))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Not in the group: joining (or, until `Consumer::away_until`, away after a leave).
    Joining,
    Syncing,
    Fetching,
    Consuming,
}

/// A consumer that behaves as Kafka's clients do (commit after every record, synchronously).
#[derive(Debug)]
pub struct Consumer {
    client_id: String,
    /// Which start of this consumer process this is.
    incarnation: u64,
    coordinator: SocketAddr,
    partitions: u32,
    phase: Phase,
    member_id: String,
    generation: i32,
    assigned: Vec<u32>,
    positions: BTreeMap<u32, u64>,
    cursor: usize,
    /// Partitions found with nothing new in a row.
    caught_up: usize,
    /// The request awaiting its answer: id, request, when to give up on it.
    inflight: Option<(u64, Req, Instant)>,
    next_id: u64,
    next_heartbeat: Instant,
    /// The last time the coordinator confirmed this member (for the local session check).
    confirmed: Instant,
    /// Nothing to read: look again then.
    idle_until: Option<Instant>,
    /// Left the group on purpose: rejoins then.
    away_until: Option<Instant>,
    out: VecDeque<(SocketAddr, Vec<u8>)>,
    shared: Shared,
}

impl Consumer {
    fn new(
        client_id: String,
        incarnation: u64,
        coordinator: SocketAddr,
        partitions: u32,
        now: Instant,
        shared: Shared,
    ) -> Consumer {
        let mut c = Consumer {
            client_id,
            incarnation,
            coordinator,
            partitions,
            phase: Phase::Joining,
            member_id: String::new(),
            generation: -1,
            assigned: Vec::new(),
            positions: BTreeMap::new(),
            cursor: 0,
            caught_up: 0,
            inflight: None,
            next_id: 0,
            next_heartbeat: now,
            confirmed: now,
            idle_until: None,
            away_until: None,
            out: VecDeque::new(),
            shared,
        };
        c.rejoin(now, false);
        c
    }

    fn send(&mut self, now: Instant, req: Req) {
        self.next_id += 1;
        let wait = match req {
            // A join and a sync wait for the other members: up to the rebalance timeout.
            Req::Join { .. } | Req::Sync { .. } => Duration::from_millis(REBALANCE_MS) + REQUEST,
            _ => REQUEST,
        };
        self.out.push_back((self.coordinator, enc(self.incarnation, self.next_id, req.clone())));
        self.inflight = Some((self.next_id, req, now + wait));
    }

    /// Drops the assignment and joins again (`forget`: with a fresh member id).
    fn rejoin(&mut self, now: Instant, forget: bool) {
        if forget {
            self.member_id.clear();
        }
        self.phase = Phase::Joining;
        self.assigned.clear();
        self.positions.clear();
        self.idle_until = None;
        let req =
            Req::Join { member_id: self.member_id.clone(), client_id: self.client_id.clone() };
        self.send(now, req);
    }

    /// Leaves the group on purpose, and stays away until `until`.
    pub fn leave(&mut self, until: Instant) {
        if !self.member_id.is_empty() {
            let member_id = std::mem::take(&mut self.member_id);
            self.next_id += 1;
            let leave = enc(self.incarnation, self.next_id, Req::Leave { member_id });
            self.out.push_back((self.coordinator, leave));
        }
        self.phase = Phase::Joining;
        self.assigned.clear();
        self.positions.clear();
        self.inflight = None;
        self.away_until = Some(until);
    }

    /// Its group coordinator is now `to` (FindCoordinator answered another node): it sends its
    /// next join there, with the member id it has (which `to` does not know).
    pub fn redirect(&mut self, now: Instant, to: SocketAddr) {
        if to != self.coordinator {
            self.coordinator = to;
            if self.away_until.is_none() {
                self.rejoin(now, false);
            }
        }
    }

    /// Comes back early from a leave.
    pub fn come_back(&mut self, now: Instant) {
        if self.away_until.take().is_some() {
            self.rejoin(now, true);
        }
    }

    /// The next request while consuming: a heartbeat when due, else a fetch.
    fn poll(&mut self, now: Instant) {
        if now.saturating_duration_since(self.confirmed) > Duration::from_millis(SESSION_MS) {
            // The coordinator has not confirmed this member for a whole session: it has surely
            // been dropped, so stop reading and rejoin (as Kafka's clients do).
            self.rejoin(now, false);
            return;
        }
        if now >= self.next_heartbeat {
            let req =
                Req::Heartbeat { generation: self.generation, member_id: self.member_id.clone() };
            self.send(now, req);
            return;
        }
        if self.assigned.is_empty() {
            self.idle_until = Some(now + IDLE);
            return;
        }
        let p = self.assigned[self.cursor % self.assigned.len()];
        self.cursor += 1;
        let offset = self.positions.get(&p).copied().unwrap_or(0);
        self.send(now, Req::Fetch { partition: p, offset });
    }

    fn on_answer(&mut self, now: Instant, req: Req, resp: Resp) {
        match (req, resp) {
            (Req::Join { .. }, Resp::Join { error, generation, member_id, leader, members }) => {
                match error {
                    0 => {
                        self.member_id = member_id;
                        self.generation = generation;
                        self.confirmed = now;
                        let assignments = if leader == self.member_id {
                            range_assign(members, self.partitions)
                        } else {
                            Vec::new()
                        };
                        self.phase = Phase::Syncing;
                        let req = Req::Sync {
                            generation,
                            member_id: self.member_id.clone(),
                            assignments,
                        };
                        self.send(now, req);
                    }
                    MEMBER_ID_REQUIRED => {
                        self.member_id = member_id;
                        self.rejoin(now, false);
                    }
                    UNKNOWN_MEMBER_ID => self.rejoin(now, true),
                    _ => self.rejoin(now, false),
                }
            }
            (Req::Sync { .. }, Resp::Sync { error, partitions }) => match error {
                0 => {
                    self.confirmed = now;
                    self.assigned = partitions.clone();
                    self.phase = Phase::Fetching;
                    self.send(now, Req::OffsetFetch { partitions });
                }
                UNKNOWN_MEMBER_ID => self.rejoin(now, true),
                _ => self.rejoin(now, false),
            },
            (req @ Req::OffsetFetch { .. }, Resp::Offsets { error, .. })
                if error == COORDINATOR_NOT_AVAILABLE =>
            {
                // Retriable: asked again.
                self.send(now, req)
            }
            (Req::OffsetFetch { .. }, Resp::Offsets { error, .. }) if error != 0 => {
                self.rejoin(now, false)
            }
            (Req::OffsetFetch { .. }, Resp::Offsets { committed, .. }) => {
                self.positions = committed.into_iter().collect();
                self.phase = Phase::Consuming;
                self.next_heartbeat = now + HEARTBEAT;
                self.poll(now);
            }
            (Req::Heartbeat { .. }, Resp::Heartbeat { error }) => match error {
                0 => {
                    self.confirmed = now;
                    self.next_heartbeat = now + HEARTBEAT;
                    self.poll(now);
                }
                UNKNOWN_MEMBER_ID => self.rejoin(now, true),
                _ => self.rejoin(now, false),
            },
            (Req::Fetch { partition, offset }, Resp::Fetch { record }) => match record {
                Some(o) => {
                    debug_assert_eq!(o, offset);
                    self.caught_up = 0;
                    let mut c = self.shared.borrow_mut();
                    c.reads += 1;
                    if !c.read.insert((partition, o)) {
                        c.rereads += 1;
                    }
                    drop(c);
                    let req = Req::Commit {
                        generation: self.generation,
                        member_id: self.member_id.clone(),
                        partition,
                        offset: o + 1,
                    };
                    self.send(now, req);
                }
                None => {
                    // Caught up on this one: the next partition, or a pause once all are.
                    self.caught_up += 1;
                    if self.caught_up >= self.assigned.len() {
                        self.caught_up = 0;
                        self.idle_until = Some(now + IDLE);
                    } else {
                        self.poll(now);
                    }
                }
            },
            (Req::Commit { partition, offset, .. }, Resp::Commit { error }) => match error {
                0 => {
                    self.confirmed = now;
                    self.positions.insert(partition, offset);
                    self.poll(now);
                }
                UNKNOWN_MEMBER_ID => self.rejoin(now, true),
                ILLEGAL_GENERATION => self.rejoin(now, false),
                // Retriable (the commit may or may not have been applied): sent again.
                COORDINATOR_NOT_AVAILABLE => self.send(
                    now,
                    Req::Commit {
                        generation: self.generation,
                        member_id: self.member_id.clone(),
                        partition,
                        offset,
                    },
                ),
                _ => self.rejoin(now, false),
            },
            _ => {}
        }
    }

    /// The request in flight got no answer in time: retried, or the member rejoins.
    fn on_request_timeout(&mut self, now: Instant, req: Req) {
        match req {
            Req::Join { .. } | Req::Sync { .. } => self.rejoin(now, false),
            // A commit is retried as it was: committing an offset again is harmless.
            Req::Commit { .. } | Req::OffsetFetch { .. } => self.send(now, req),
            Req::Heartbeat { .. } | Req::Fetch { .. } | Req::Leave { .. } => self.poll(now),
        }
    }
}

/// Kafka's range assignor over one topic: members in id order, partitions split in order.
fn range_assign(mut members: Vec<String>, partitions: u32) -> Vec<(String, Vec<u32>)> {
    members.sort();
    let n = members.len() as u32;
    members
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            let i = i as u32;
            let (per, extra) = (partitions / n, partitions % n);
            let start = i * per + i.min(extra);
            let len = per + u32::from(i < extra);
            (m, (start..start + len).collect())
        })
        .collect()
}

impl Process for Consumer {
    fn handle_message(&mut self, now: Instant, _from: SocketAddr, bytes: &[u8]) {
        let Ok(Envelope { id, body, .. }) = rmp_serde::from_slice::<Envelope<Resp>>(bytes) else {
            return;
        };
        if self.away_until.is_some() {
            return;
        }
        // An answer to a request given up on is ignored.
        let Some((want, _, _)) = &self.inflight else { return };
        if *want != id {
            return;
        }
        let Some((_, req, _)) = self.inflight.take() else { return };
        self.on_answer(now, req, body);
    }

    fn handle_timeout(&mut self, now: Instant) {
        if let Some(t) = self.away_until {
            if now >= t {
                self.away_until = None;
                self.rejoin(now, true);
            }
            return;
        }
        if let Some((_, _, deadline)) = &self.inflight {
            if now >= *deadline {
                let Some((_, req, _)) = self.inflight.take() else { return };
                self.on_request_timeout(now, req);
            }
            return;
        }
        if self.idle_until.is_some_and(|t| now >= t) {
            self.idle_until = None;
            if self.phase == Phase::Consuming {
                self.poll(now);
            }
        }
    }

    fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.out.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        if let Some(t) = self.away_until {
            return Some(t);
        }
        if let Some((_, _, deadline)) = &self.inflight {
            return Some(*deadline);
        }
        self.idle_until
    }
}

/// The metadata service as the coordinators see it: the group's record, linearizable (one
/// process that never fails; the network to it does). It judges each commit as it applies it.
#[derive(Debug)]
pub struct MetaModel {
    records: MemRecords,
    sim_start: Instant,
    out: VecDeque<(SocketAddr, Vec<u8>)>,
    shared: Shared,
}

impl Process for MetaModel {
    fn handle_message(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        let Ok(e) = rmp_serde::from_slice::<Envelope<MetaReq>>(bytes) else { return };
        let resp = match e.body {
            MetaReq::Read => MetaResp::Read(self.records.read(GROUP).map(|(v, d)| (v, d.to_vec()))),
            MetaReq::Write { version, data, notes } => {
                let before = self.records.record(GROUP).unwrap_or_default();
                match self.records.write(GROUP, version, data) {
                    Written::Ok(v) => {
                        let after = self.records.record(GROUP).unwrap_or_default();
                        let at = now - self.sim_start;
                        let mut c = self.shared.borrow_mut();
                        for n in notes {
                            let k = key(n.partition);
                            let new = after.committed(&k).map(|c| c.offset);
                            if new != before.committed(&k).map(|c| c.offset) {
                                let offset = new.unwrap_or(0) as u64;
                                c.commit(
                                    at,
                                    n.instance,
                                    n.generation,
                                    &n.member,
                                    n.partition,
                                    offset,
                                );
                            }
                        }
                        MetaResp::Written(Some(v))
                    }
                    _ => MetaResp::Written(None),
                }
            }
        };
        self.out.push_back((from, enc(e.incarnation, e.id, resp)));
    }

    fn handle_timeout(&mut self, _now: Instant) {}

    fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.out.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        None
    }
}

/// A process of the group simulation.
#[derive(Debug)]
pub enum Node {
    Coordinator(Box<Coordinator>),
    Consumer(Box<Consumer>),
    Meta(Box<MetaModel>),
}

impl Process for Node {
    fn handle_message(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        match self {
            Node::Coordinator(c) => c.handle_message(now, from, bytes),
            Node::Consumer(c) => c.handle_message(now, from, bytes),
            Node::Meta(c) => c.handle_message(now, from, bytes),
        }
    }
    fn handle_timeout(&mut self, now: Instant) {
        match self {
            Node::Coordinator(c) => c.handle_timeout(now),
            Node::Consumer(c) => c.handle_timeout(now),
            Node::Meta(c) => c.handle_timeout(now),
        }
    }
    fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        match self {
            Node::Coordinator(c) => c.poll_transmit(),
            Node::Consumer(c) => c.poll_transmit(),
            Node::Meta(c) => c.poll_transmit(),
        }
    }
    fn poll_timeout(&self) -> Option<Instant> {
        match self {
            Node::Coordinator(c) => c.poll_timeout(),
            Node::Consumer(c) => c.poll_timeout(),
            Node::Meta(c) => c.poll_timeout(),
        }
    }
}

/// One seed's figures.
#[derive(Debug, Default)]
pub struct GroupReport {
    pub seed: u64,
    pub records: u64,
    pub reads: u64,
    pub rereads: u64,
    pub commits_accepted: u64,
    pub commits_refused: u64,
    pub joins: u64,
    pub fenced: u64,
    pub generations: u64,
    pub faults: BTreeMap<&'static str, u64>,
    pub violations: Vec<String>,
}

/// A group of `consumers` consumers reading `partitions` partitions.
#[derive(Debug)]
pub struct GroupSim {
    pub sim: Sim<Node>,
    pub shared: Shared,
    consumers: usize,
    partitions: u32,
    instances: u64,
    restarts: u64,
    /// The metadata service's slot.
    pub meta: usize,
}

impl GroupSim {
    /// `split`: a second coordinator (the last slot) that consumers can be sent to, as when two
    /// nodes' ring views disagree on who coordinates the group.
    pub fn new(seed: u64, consumers: usize, partitions: u32, split: bool) -> GroupSim {
        let mut sim = Sim::new(seed, NetConfig::default());
        let shared: Shared = Rc::default();
        for p in 0..partitions {
            shared.borrow_mut().log_len.insert(p, 0);
        }
        let start = sim.now();
        let meta = consumers + 1 + usize::from(split);
        let meta_addr = sim_addr(meta);
        let s = shared.clone();
        sim.add(|_| {
            Node::Coordinator(Box::new(Coordinator::new(seed << 8, start, start, meta_addr, s)))
        });
        let coordinator = sim_addr(0);
        for i in 1..=consumers {
            let s = shared.clone();
            sim.add(|_| {
                Node::Consumer(Box::new(Consumer::new(
                    format!("c{i}"),
                    0,
                    coordinator,
                    partitions,
                    start,
                    s,
                )))
            });
        }
        if split {
            let s = shared.clone();
            let instance = (seed << 8) | 0x80;
            sim.add(|_| {
                Node::Coordinator(Box::new(Coordinator::new(instance, start, start, meta_addr, s)))
            });
        }
        let s = shared.clone();
        let added = sim.add(|_| {
            Node::Meta(Box::new(MetaModel {
                records: MemRecords::default(),
                sim_start: start,
                out: VecDeque::new(),
                shared: s,
            }))
        });
        debug_assert_eq!(added, meta);
        GroupSim { sim, shared, consumers, partitions, instances: 1, restarts: 0, meta }
    }

    /// Sends consumers `which` to coordinator `to` (a slot).
    pub fn redirect(&mut self, which: &[usize], to: usize) {
        let addr = self.sim.addr(to);
        for &i in which {
            self.sim.with_node(i, |n, now| {
                if let Node::Consumer(c) = n {
                    c.redirect(now, addr);
                }
            });
        }
    }

    /// Kills the coordinator: its groups (in memory) are lost, committed offsets stay.
    pub fn crash_coordinator(&mut self) {
        self.sim.crash(0);
    }

    pub fn restart_coordinator(&mut self) {
        self.instances += 1;
        let instance = (self.sim.seed << 8) | self.instances;
        let (now, start, s) = (self.sim.now(), self.sim.start(), self.shared.clone());
        let meta = sim_addr(self.meta);
        self.sim.restart(0, |_| {
            Node::Coordinator(Box::new(Coordinator::new(instance, now, start, meta, s)))
        });
    }

    pub fn restart_consumer(&mut self, i: usize) {
        let (now, s, p) = (self.sim.now(), self.shared.clone(), self.partitions);
        let coordinator = sim_addr(0);
        self.restarts += 1;
        let incarnation = self.restarts;
        self.sim.restart(i, |_| {
            let c = Consumer::new(format!("c{i}"), incarnation, coordinator, p, now, s);
            Node::Consumer(Box::new(c))
        });
    }

    /// Appends one record to partition `p`.
    pub fn produce(&mut self, p: u32) {
        *self.shared.borrow_mut().log_len.entry(p).or_default() += 1;
    }
}

/// One seed: `secs` simulated seconds of records arriving and faults, then everything healed
/// and restarted, a quiet period, and the checks.
pub fn group_run(seed: u64, secs: u64) -> GroupReport {
    group_run_with(seed, secs, false)
}

/// [`group_run`], and with `split` also periods in which some consumers are sent to a second
/// coordinator (two nodes' ring views disagree on who coordinates the group). Each
/// coordinator's claim on the group's record fences the other's commits: the checker's rules
/// hold as with one coordinator (records are read again more often, never committed twice).
pub fn group_run_with(seed: u64, secs: u64, split: bool) -> GroupReport {
    let mut rng = Sim::<Node>::new(seed, NetConfig::default()).rng();
    let consumers = rng.gen_range(2..=4);
    let partitions = rng.gen_range(consumers as u32 - 1..=6);
    let mut g = GroupSim::new(seed, consumers, partitions, split);
    let second = consumers + 1;
    let mut merge_at: Option<Instant> = None;
    let mut rng = g.sim.rng();
    let mut report = GroupReport { seed, ..GroupReport::default() };
    let end = g.sim.now() + Duration::from_secs(secs);
    let mut next_fault = g.sim.now() + Duration::from_millis(rng.gen_range(500..2000));
    let mut restarts: Vec<(Instant, usize)> = Vec::new();
    let mut heal_at: Option<Instant> = None;
    while g.sim.now() < end {
        let now = g.sim.now();
        if merge_at.is_some_and(|t| now >= t) {
            let all: Vec<usize> = (1..=g.consumers).collect();
            g.redirect(&all, 0);
            merge_at = None;
        }
        if split && merge_at.is_none() && now >= next_fault && rng.gen_bool(0.3) {
            next_fault = now + Duration::from_millis(rng.gen_range(500..3000));
            let some: Vec<usize> = (1..=g.consumers).filter(|_| rng.gen_bool(0.5)).collect();
            g.redirect(&some, second);
            merge_at = Some(now + Duration::from_millis(rng.gen_range(1000..6000)));
            *report.faults.entry("split-coordinators").or_default() += 1;
        }
        if now >= next_fault {
            next_fault = now + Duration::from_millis(rng.gen_range(500..3000));
            let i = rng.gen_range(1..=g.consumers);
            let kind = match rng.gen_range(0..12) {
                0 | 1 => {
                    if g.sim.is_up(i) {
                        g.sim.crash(i);
                        restarts.push((now + Duration::from_millis(rng.gen_range(100..5000)), i));
                    }
                    "consumer-crash"
                }
                2 => {
                    if g.sim.is_up(0) {
                        g.crash_coordinator();
                        restarts.push((now + Duration::from_millis(rng.gen_range(100..3000)), 0));
                    }
                    "coordinator-crash"
                }
                3 => {
                    // A pause longer than the session, often: the member is dropped meanwhile.
                    g.sim.stall(i, Duration::from_millis(rng.gen_range(500..8000)));
                    "consumer-pause"
                }
                4 => {
                    g.sim.stall(0, Duration::from_millis(rng.gen_range(200..3000)));
                    "coordinator-pause"
                }
                5 => {
                    let until = now + Duration::from_millis(rng.gen_range(100..4000));
                    g.sim.with_node(i, |n, _| {
                        if let Node::Consumer(c) = n {
                            c.leave(until);
                        }
                    });
                    "leave"
                }
                6 => {
                    g.sim.partition(&[vec![i], (0..=g.consumers).filter(|&x| x != i).collect()]);
                    heal_at = Some(now + Duration::from_millis(rng.gen_range(500..6000)));
                    "partition"
                }
                7 => {
                    g.sim.net.loss = 0.05;
                    heal_at = Some(now + Duration::from_millis(rng.gen_range(500..3000)));
                    "loss"
                }
                8 => {
                    g.sim.net.latency_max = Duration::from_millis(rng.gen_range(30..600));
                    heal_at = Some(now + Duration::from_millis(rng.gen_range(500..3000)));
                    "reorder"
                }
                9 => {
                    g.sim.clog(0, Duration::from_millis(rng.gen_range(200..2000)));
                    heal_at = Some(now + Duration::from_millis(rng.gen_range(500..3000)));
                    "slow-coordinator"
                }
                10 => {
                    // The coordinator cannot reach the metadata service: its offsets calls fail
                    // or end in doubt.
                    g.sim.partition(&[vec![0], vec![g.meta]]);
                    heal_at = Some(now + Duration::from_millis(rng.gen_range(500..3000)));
                    "meta-unreachable"
                }
                _ => {
                    g.sim.clog(g.meta, Duration::from_millis(rng.gen_range(200..1500)));
                    heal_at = Some(now + Duration::from_millis(rng.gen_range(500..3000)));
                    "slow-meta"
                }
            };
            *report.faults.entry(kind).or_default() += 1;
        }
        if heal_at.is_some_and(|t| now >= t) {
            g.sim.heal();
            g.sim.clog(0, Duration::ZERO);
            g.sim.clog(g.meta, Duration::ZERO);
            g.sim.net = NetConfig::default();
            heal_at = None;
        }
        let due: Vec<usize> = restarts.iter().filter(|(t, _)| now >= *t).map(|&(_, i)| i).collect();
        restarts.retain(|(t, _)| now < *t);
        for i in due {
            if i == 0 {
                g.restart_coordinator();
            } else {
                g.restart_consumer(i);
            }
        }
        if rng.gen_bool(0.3) {
            let p = rng.gen_range(0..g.partitions);
            g.produce(p);
        }
        let t = g.sim.now() + Duration::from_millis(rng.gen_range(2..20));
        g.sim.run_until(t);
    }
    // Heal everything and let the group settle: every record must end up committed.
    if split {
        let all: Vec<usize> = (1..=g.consumers).collect();
        g.redirect(&all, 0);
    }
    g.sim.heal();
    g.sim.clog(0, Duration::ZERO);
    g.sim.clog(g.meta, Duration::ZERO);
    g.sim.net = NetConfig::default();
    for (_, i) in restarts {
        if i == 0 {
            g.restart_coordinator();
        } else {
            g.restart_consumer(i);
        }
    }
    for i in 1..=g.consumers {
        g.sim.with_node(i, |n, now| {
            if let Node::Consumer(c) = n {
                c.come_back(now);
            }
        });
    }
    g.sim.run_for(Duration::from_secs(60));
    let mut c = g.shared.borrow_mut();
    for (p, len) in c.log_len.clone() {
        let at = c.committed.get(&p).copied().unwrap_or(0);
        if at != len {
            c.violations.push(format!(
                "partition {p}: {at} of {len} records committed a minute after the faults ended"
            ));
        }
    }
    report.records = c.log_len.values().sum();
    report.reads = c.reads;
    report.rereads = c.rereads;
    report.commits_accepted = c.commits_accepted;
    report.commits_refused = c.commits_refused;
    report.joins = c.joins;
    report.fenced = c.fenced;
    report.generations = c.assignments.len() as u64;
    report.violations = std::mem::take(&mut c.violations);
    report
}
