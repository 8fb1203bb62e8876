//! Kafka's consumer-group protocol as Starling coordinates it (`starling_kafka::group`) in the
//! simulator: one coordinator (slot 0, also the broker the consumers fetch from) and consumers
//! (slots 1..) that speak the protocol as Kafka's clients do — JoinGroup with the
//! `MEMBER_ID_REQUIRED` round trip, the leader's range assignment through SyncGroup, heartbeats,
//! a synchronous commit after every record, LeaveGroup — under consumer crashes and restarts,
//! pauses longer than the session timeout, voluntary leaves, coordinator crashes (its group
//! state is in memory and lost; committed offsets are durable, as in the key-value store),
//! partitions, loss and reordering, while records keep arriving.
//!
//! The checker judges what the coordinator did:
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

use crate::sim::{sim_addr, NetConfig, Process, Sim};

// Kafka's error codes the consumers act on.
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
    pub violations: Vec<String>,
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
}

impl Coordinator {
    fn new(instance: u64, now: Instant, sim_start: Instant, shared: Shared) -> Coordinator {
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
        }
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
                let c = self.shared.borrow();
                let committed = partitions
                    .iter()
                    .map(|p| (*p, c.committed.get(p).copied().unwrap_or(0)))
                    .collect();
                drop(c);
                self.out.push_back(answer(Resp::Offsets { committed }));
            }
            Req::Commit { generation, member_id, partition, offset } => {
                let error = self.groups.check_commit(ms, GROUP, generation, &member_id);
                let mut c = self.shared.borrow_mut();
                if error == 0 {
                    let at = now - self.sim_start;
                    let key = (self.instance, self.group_incarnation);
                    c.commit(at, key, generation, &member_id, partition, offset);
                } else {
                    c.commits_refused += 1;
                }
                drop(c);
                self.out.push_back(answer(Resp::Commit { error }));
            }
            Req::Fetch { partition, offset } => {
                let len = self.shared.borrow().log_len.get(&partition).copied().unwrap_or(0);
                let record = (offset < len).then_some(offset);
                self.out.push_back(answer(Resp::Fetch { record }));
            }
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
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
        Some(self.next_tick)
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
            (Req::OffsetFetch { .. }, Resp::Offsets { committed }) => {
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

/// A process of the group simulation.
#[derive(Debug)]
pub enum Node {
    Coordinator(Box<Coordinator>),
    Consumer(Box<Consumer>),
}

impl Process for Node {
    fn handle_message(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        match self {
            Node::Coordinator(c) => c.handle_message(now, from, bytes),
            Node::Consumer(c) => c.handle_message(now, from, bytes),
        }
    }
    fn handle_timeout(&mut self, now: Instant) {
        match self {
            Node::Coordinator(c) => c.handle_timeout(now),
            Node::Consumer(c) => c.handle_timeout(now),
        }
    }
    fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        match self {
            Node::Coordinator(c) => c.poll_transmit(),
            Node::Consumer(c) => c.poll_transmit(),
        }
    }
    fn poll_timeout(&self) -> Option<Instant> {
        match self {
            Node::Coordinator(c) => c.poll_timeout(),
            Node::Consumer(c) => c.poll_timeout(),
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
        let s = shared.clone();
        sim.add(|_| Node::Coordinator(Box::new(Coordinator::new(seed << 8, start, start, s))));
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
            sim.add(|_| {
                Node::Coordinator(Box::new(Coordinator::new((seed << 8) | 0x80, start, start, s)))
            });
        }
        GroupSim { sim, shared, consumers, partitions, instances: 1, restarts: 0 }
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
        self.sim
            .restart(0, |_| Node::Coordinator(Box::new(Coordinator::new(instance, now, start, s))));
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
/// coordinator (two nodes' ring views disagree on who coordinates the group). Starling does not
/// fence that case: the checker is expected to find records committed twice (re-delivered).
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
            let kind = match rng.gen_range(0..10) {
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
                _ => {
                    g.sim.clog(0, Duration::from_millis(rng.gen_range(200..2000)));
                    heal_at = Some(now + Duration::from_millis(rng.gen_range(500..3000)));
                    "slow-coordinator"
                }
            };
            *report.faults.entry(kind).or_default() += 1;
        }
        if heal_at.is_some_and(|t| now >= t) {
            g.sim.heal();
            g.sim.clog(0, Duration::ZERO);
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
    report.generations = c.assignments.len() as u64;
    report.violations = std::mem::take(&mut c.violations);
    report
}
