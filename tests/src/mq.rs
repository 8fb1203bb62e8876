//! The partition replica core (`starling_mq::replica`) in the simulator, with the metadata
//! service as a compare-and-set register, producers and consumers, and a checker for what they
//! saw (the anomalies Jepsen found in Kafka and Redpanda):
//!
//! - every write acknowledged with `acks=all` is in the final log, once, at the offset it was
//!   acknowledged with;
//! - no offset ever holds two different messages (consumers across leaders and time agree);
//! - everything a consumer read (below a high watermark) survives;
//! - after healing, every in-sync replica holds the leader's log up to the high watermark;
//! - at most one replica leads an epoch; a leader's high watermark never goes back.
//!
//! Slot 0 is the metadata service (never crashes: it stands for the ZAB ensemble proven
//! elsewhere); slots 1..=n are replicas, each with an in-memory log that survives its crashes
//! (a process crash keeps everything written; a power loss keeps what was flushed).

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use rand::Rng;
use serde::{Deserialize, Serialize};
use starling_mq::batch::{decode_records, encode_batch, NewRecord, ProducerStamp};
use starling_mq::mem::{MemFlush, MemLog, ReplicaLog};
use starling_mq::replica::{
    Acks, Event, Msg, NodeId, Output, PartitionState, ProduceError, Replica, ReplicaConfig, Role,
};

use crate::sim::{sim_addr, NetConfig, Process, Sim};

/// Node id of slot `i` (replicas are slots 1..).
pub fn mq_id(i: usize) -> NodeId {
    NodeId((i as u128) << 96)
}

fn slot_of(id: NodeId) -> usize {
    (id.0 >> 96) as usize
}

fn slot_of_addr(a: SocketAddr) -> usize {
    let SocketAddr::V4(a) = a else { return usize::MAX };
    let o = a.ip().octets();
    ((o[1] as usize - 1) << 16) | ((o[2] as usize) << 8) | o[3] as usize
}

/// `MQ_TRACE=1` prints every replica's events.
fn trace() -> bool {
    std::env::var_os("MQ_TRACE").is_some()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum Wire {
    Propose { expected: u64, state: PartitionState },
    Get,
    State { state: PartitionState, version: u64 },
    Repl(Msg),
    Heartbeat,
}

fn enc(w: &Wire) -> Vec<u8> {
    rmp_serde::to_vec(w).expect("encode")
}

/// What the run saw.
#[derive(Debug, Default)]
pub struct Checker {
    /// Produce id -> value, for every produce a leader accepted.
    pub sent: HashMap<u64, String>,
    /// Acknowledged produces: id -> offset.
    pub acked: BTreeMap<u64, i64>,
    /// Produces whose outcome is unknown.
    pub unknown: BTreeSet<u64>,
    /// Produces refused (nothing written).
    pub refused: u64,
    /// Everything consumers read: offset -> value.
    pub observed: BTreeMap<i64, String>,
    /// The leader of each epoch, as replicas reported becoming it.
    pub leaders: BTreeMap<i32, NodeId>,
    pub leader_changes: Vec<(Instant, NodeId, i32)>,
    /// Successful acks over time (for failover figures).
    pub ack_times: Vec<Instant>,
    pub truncations: u64,
    pub isr_changes: u64,
    /// Recorded changes of the replica list (reassignment steps).
    pub replica_changes: u64,
    pub violations: Vec<String>,
    pub now: Option<Instant>,
    /// The highest high watermark any leader of each epoch reported (across restarts).
    pub hw_by_epoch: BTreeMap<i32, i64>,
    /// The ISR as the metadata service has it now.
    pub isr: Vec<NodeId>,
}

impl Checker {
    fn violation(&mut self, what: String) {
        if self.violations.len() < 50 {
            let at = self.now.map(|t| format!("{t:?}")).unwrap_or_default();
            self.violations.push(format!("[{at}] {what}"));
        }
    }

    fn event(&mut self, now: Instant, me: NodeId, e: &Event) {
        match e {
            Event::Produced { id, base_offset, .. } => {
                self.acked.insert(*id, *base_offset);
                self.ack_times.push(now);
            }
            Event::ProduceFailed { id, error } => {
                if error.outcome_unknown() {
                    self.unknown.insert(*id);
                } else {
                    self.refused += 1;
                }
            }
            Event::Role { role: Role::Leader, epoch } => {
                if let Some(prev) = self.leaders.insert(*epoch, me) {
                    if prev != me {
                        self.violation(format!("epoch {epoch} led by {prev:?} and {me:?}"));
                    }
                }
                self.leader_changes.push((now, me, *epoch));
            }
            Event::Truncated(end) => {
                self.truncations += 1;
                // A member of the recorded ISR holds every acknowledged write: cutting one is
                // a loss waiting for the next failover.
                if self.isr.contains(&me) {
                    if let Some((id, off)) = self.acked.iter().find(|(_, &o)| o >= *end) {
                        let msg = format!("{me:?}, in the ISR, cut its log to {end} below acknowledged write {id} at offset {off}");
                        self.violation(msg);
                    }
                }
            }
            Event::IsrChanged(_) => self.isr_changes += 1,
            _ => {}
        }
    }

    /// A consumer read these records.
    fn observe(&mut self, records: &[(i64, String)]) {
        for (o, v) in records {
            match self.observed.get(o) {
                Some(prev) if prev != v => {
                    let msg = format!("offset {o} read as {prev:?} and later as {v:?}");
                    self.violation(msg);
                }
                Some(_) => {}
                None => {
                    self.observed.insert(*o, v.clone());
                }
            }
        }
    }
}

/// The metadata service: one compare-and-set register per partition (one partition here),
/// with every change pushed to every replica (a watch) and answers to reads.
#[derive(Debug)]
pub struct MetaProc {
    pub state: PartitionState,
    pub version: u64,
    replicas: Vec<usize>,
    checker: Rc<RefCell<Checker>>,
    out: VecDeque<(SocketAddr, Vec<u8>)>,
}

impl Process for MetaProc {
    fn handle_message(&mut self, _now: Instant, from: SocketAddr, bytes: &[u8]) {
        let Ok(w) = rmp_serde::from_slice::<Wire>(bytes) else { return };
        match w {
            Wire::Propose { expected, state } => {
                if expected == self.version {
                    self.version += 1;
                    if state.replicas != self.state.replicas {
                        self.checker.borrow_mut().replica_changes += 1;
                    }
                    self.state = state;
                    self.checker.borrow_mut().isr = self.state.isr.clone();
                    let msg =
                        enc(&Wire::State { state: self.state.clone(), version: self.version });
                    for &r in &self.replicas {
                        self.out.push_back((sim_addr(r), msg.clone()));
                    }
                } else {
                    let msg =
                        enc(&Wire::State { state: self.state.clone(), version: self.version });
                    self.out.push_back((from, msg));
                }
            }
            Wire::Get => {
                let msg = enc(&Wire::State { state: self.state.clone(), version: self.version });
                self.out.push_back((from, msg));
            }
            _ => {}
        }
    }
    fn handle_timeout(&mut self, _now: Instant) {}
    fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.out.pop_front()
    }
    fn poll_timeout(&self) -> Option<Instant> {
        None
    }
}

/// Heartbeat period and silence after which a peer counts as down (the failure detector that
/// stands in for gossip).
const HEARTBEAT: Duration = Duration::from_millis(100);
const SUSPECT_AFTER: Duration = Duration::from_millis(1000);

/// One replica process: the core over an in-memory log, a heartbeat failure detector, and the
/// glue to the metadata service.
#[derive(Debug)]
pub struct ReplicaProc {
    pub replica: Replica<MemLog>,
    peers: Vec<usize>,
    heard: HashMap<usize, Instant>,
    down: BTreeSet<usize>,
    next_beat: Instant,
    checker: Rc<RefCell<Checker>>,
    out: VecDeque<(SocketAddr, Vec<u8>)>,
    start: Instant,
    /// Highest high watermark this process saw while leading, per epoch.
    hw_seen: BTreeMap<i32, i64>,
    /// Group commit (`flush_each_append` with flushes deferred, as `starlingd` runs `always`).
    group: GroupCommit,
    inputs: u32,
    /// A detached flush in flight, and the inputs left until it completes.
    in_flight: Option<(MemFlush, u32)>,
}

/// How a simulated replica makes its group commit's flushes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupCommit {
    /// On the replica's task: the owed flush after every this many inputs and on every tick.
    /// Detached: a flush completes this many inputs (ticks count) after it started, and the
    /// next starts as soon as one is owed and none is in flight. 0: off.
    pub every: u32,
    /// The disk's wait away from the replica's task, as `starlingd` runs `always`: appends go
    /// on while a flush is in flight and wait for the next one.
    pub detached: bool,
}

impl ReplicaProc {
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        slot: usize,
        peers: Vec<usize>,
        log: MemLog,
        cfg: ReplicaConfig,
        checker: Rc<RefCell<Checker>>,
        start: Instant,
        now: Instant,
        restarted: bool,
    ) -> ReplicaProc {
        let mut replica = Replica::new(mq_id(slot), log, cfg, now);
        if restarted {
            // No clean-shutdown record: the log may lack what it acknowledged.
            replica.mark_unclean_start();
        }
        let heard = peers.iter().map(|&p| (p, now)).collect();
        let mut p = ReplicaProc {
            replica,
            peers,
            heard,
            down: BTreeSet::new(),
            next_beat: now,
            checker,
            out: VecDeque::new(),
            start,
            hw_seen: BTreeMap::new(),
            group: GroupCommit::default(),
            inputs: 0,
            in_flight: None,
        };
        p.pump(now);
        p
    }

    /// Turns group commit on: what the core appends counts once flushed (see
    /// [`GroupCommit`]).
    pub fn group_commit(&mut self, now: Instant, group: GroupCommit) {
        self.group = GroupCommit { every: group.every.max(1), ..group };
        self.replica.defer_flushes(true);
        self.pump(now);
    }

    /// One input handled (or a tick): the flushes due.
    fn round(&mut self, now: Instant) {
        if self.group.every == 0 {
            return;
        }
        self.inputs += 1;
        if !self.group.detached {
            if self.inputs.is_multiple_of(self.group.every) {
                self.replica.flush_owed(now);
            }
            return;
        }
        if let Some((_, left)) = self.in_flight.as_mut() {
            *left -= 1;
            if *left == 0 {
                let (flush, _) = self.in_flight.take().expect("in flight");
                self.replica.log_mut().complete_flush(flush);
                self.replica.finish_flush(now, Ok(()));
            }
        }
        if self.in_flight.is_none() {
            if let Some(flush) = self.replica.start_flush(now) {
                self.in_flight = Some((flush, self.group.every));
            }
        }
    }

    fn pump(&mut self, now: Instant) {
        self.replica.set_wall_ms(now.saturating_duration_since(self.start).as_millis() as i64);
        while let Some(o) = self.replica.poll_output() {
            match o {
                Output::Send(to, m) => {
                    self.out.push_back((sim_addr(slot_of(to)), enc(&Wire::Repl(m))))
                }
                Output::ProposeState { expected_version, state } => {
                    if trace() {
                        eprintln!(
                            "{now:?} {:?} proposes v{expected_version} {state:?}",
                            self.replica.id()
                        );
                    }
                    self.out.push_back((
                        sim_addr(0),
                        enc(&Wire::Propose { expected: expected_version, state }),
                    ))
                }
                Output::RefreshState => self.out.push_back((sim_addr(0), enc(&Wire::Get))),
                Output::Event(e) => {
                    if trace() {
                        eprintln!("{now:?} {:?} {e:?}", self.replica.id());
                    }
                    self.checker.borrow_mut().event(now, self.replica.id(), &e);
                }
            }
        }
        if self.replica.role() == Role::Leader {
            let epoch = self.replica.epoch();
            let hw = self.replica.high_watermark();
            {
                let mut c = self.checker.borrow_mut();
                let seen = c.hw_by_epoch.entry(epoch).or_insert(hw);
                if hw < *seen {
                    let msg = format!(
                        "epoch {epoch}: a leader's high watermark {hw} is below {} seen before",
                        *seen
                    );
                    *seen = hw.max(*seen);
                    c.violation(msg);
                } else {
                    *seen = hw;
                }
            }
            let prev = self.hw_seen.insert(epoch, hw).unwrap_or(i64::MIN);
            if hw < prev {
                self.checker.borrow_mut().violation(format!(
                    "{:?} leading epoch {epoch}: high watermark went from {prev} to {hw}",
                    self.replica.id()
                ));
                self.hw_seen.insert(epoch, prev);
            }
        }
    }

    /// The driver hands the core the partition's target replica list (the ring's preference
    /// list, as `starlingd`'s topic manager computes it on every scan).
    pub fn target(&mut self, now: Instant, target: &[usize]) {
        self.replica.handle_target(now, target.iter().map(|&i| mq_id(i)).collect());
        self.pump(now);
    }

    /// Whether the recorded state no longer lists this replica while its log still holds
    /// data: `starlingd` then stops the partition's driver and deletes its folder.
    pub fn dropped_with_data(&self) -> bool {
        let log = self.replica.log();
        self.replica.state().is_some_and(|(s, _)| !s.replicas.contains(&self.replica.id()))
            && (log.end_offset() > 0 || log.start_offset() > 0)
    }

    /// A producer's message, if this replica leads.
    pub fn produce(
        &mut self,
        now: Instant,
        id: u64,
        value: &str,
        stamp: Option<ProducerStamp>,
    ) -> Result<(), ProduceError> {
        let rec = NewRecord {
            key: None,
            value: Some(value.as_bytes().to_vec()),
            headers: vec![],
            timestamp_ms: 0,
        };
        let bytes = encode_batch(&[rec], stamp).expect("encode");
        let r = self.replica.produce(now, id, bytes, Acks::All);
        self.round(now);
        {
            let mut c = self.checker.borrow_mut();
            match &r {
                Ok(()) => {
                    c.sent.insert(id, value.to_string());
                }
                Err(e) if e.outcome_unknown() => {
                    c.sent.insert(id, value.to_string());
                    c.unknown.insert(id);
                }
                Err(_) => c.refused += 1,
            }
        }
        self.pump(now);
        r
    }

    /// A consumer's read from `offset` (below the high watermark), if this replica leads.
    pub fn consume(&mut self, offset: i64) -> Option<(Vec<(i64, String)>, i64)> {
        let r = self.replica.read(offset, 64 * 1024).ok()?;
        let recs = decode_records(&r.bytes).expect("stored batches decode");
        let out: Vec<(i64, String)> = recs
            .into_iter()
            .filter(|r| r.offset >= offset)
            .map(|r| {
                (
                    r.offset,
                    String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned(),
                )
            })
            .collect();
        self.checker.borrow_mut().observe(&out);
        Some((out, r.next_offset))
    }
}

impl Process for ReplicaProc {
    fn handle_message(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        self.checker.borrow_mut().now = Some(now);
        let slot = slot_of_addr(from);
        let Ok(w) = rmp_serde::from_slice::<Wire>(bytes) else { return };
        if slot != 0 {
            self.heard.insert(slot, now);
            if self.down.remove(&slot) {
                self.replica.handle_liveness(now, mq_id(slot), true);
            }
        }
        match w {
            Wire::State { state, version } => self.replica.handle_state(now, state, version),
            Wire::Repl(m) => self.replica.handle_message(now, mq_id(slot), m),
            _ => {}
        }
        self.round(now);
        self.pump(now);
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.checker.borrow_mut().now = Some(now);
        if now >= self.next_beat {
            self.next_beat = now + HEARTBEAT;
            for &p in &self.peers {
                self.out.push_back((sim_addr(p), enc(&Wire::Heartbeat)));
            }
            for &p in &self.peers {
                let silent = now.saturating_duration_since(self.heard[&p]) > SUSPECT_AFTER;
                if silent && self.down.insert(p) {
                    self.replica.handle_liveness(now, mq_id(p), false);
                }
            }
        }
        self.replica.handle_timeout(now);
        if self.group.detached {
            self.round(now);
        } else if self.group.every > 0 {
            self.replica.flush_owed(now);
        }
        self.pump(now);
    }

    fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.out.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        Some(match self.replica.poll_timeout() {
            Some(t) => t.min(self.next_beat),
            None => self.next_beat,
        })
    }
}

/// A simulated process: the metadata service or a replica.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Node {
    Meta(MetaProc),
    Replica(ReplicaProc),
}

impl Process for Node {
    fn handle_message(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        match self {
            Node::Meta(m) => m.handle_message(now, from, bytes),
            Node::Replica(r) => r.handle_message(now, from, bytes),
        }
    }
    fn handle_timeout(&mut self, now: Instant) {
        match self {
            Node::Meta(m) => m.handle_timeout(now),
            Node::Replica(r) => r.handle_timeout(now),
        }
    }
    fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        match self {
            Node::Meta(m) => m.poll_transmit(),
            Node::Replica(r) => r.poll_transmit(),
        }
    }
    fn poll_timeout(&self) -> Option<Instant> {
        match self {
            Node::Meta(m) => m.poll_timeout(),
            Node::Replica(r) => r.poll_timeout(),
        }
    }
}

/// A partition with `n` replicas, its metadata service, producers and a consumer.
#[allow(missing_debug_implementations)]
pub struct Partition {
    pub sim: Sim<Node>,
    pub checker: Rc<RefCell<Checker>>,
    pub cfg: ReplicaConfig,
    /// The replication: replicas 1..=n hold the partition at the start.
    pub n: usize,
    /// Replica processes, spares included (slots 1..=slots).
    pub slots: usize,
    /// The target replica list the drivers hand their cores (`None`: none yet).
    pub target: Option<Vec<usize>>,
    /// Replicas dropped from the list whose data was deleted.
    pub wiped: u64,
    /// Logs of crashed replicas, kept for their restart.
    disks: HashMap<usize, MemLog>,
    next_id: u64,
    /// The consumer's position.
    pub cursor: i64,
    /// Power loss instead of a process crash (only flushed data survives).
    pub power_loss: bool,
    /// Group commit in every replica (only with `flush_each_append`).
    pub group_commit: GroupCommit,
    /// An idempotent producer that retries unknown outcomes (`None`: a plain producer).
    pub producer: Option<SimProducer>,
    /// Messages sent again by the idempotent producer.
    pub retried: u64,
}

/// The simulated idempotent producer's state (producer id 7).
#[derive(Debug, Default)]
pub struct SimProducer {
    epoch: i16,
    next_seq: i32,
    /// Produce id -> (sequence, value) awaiting an outcome.
    inflight: BTreeMap<u64, (i32, String)>,
    /// Sequences to send again, in order.
    retries: BTreeMap<i32, String>,
    attempts: HashMap<i32, u32>,
}

impl Partition {
    pub fn new(seed: u64, net: NetConfig, n: usize, cfg: ReplicaConfig) -> Partition {
        Partition::with_spares(seed, net, n, 0, cfg)
    }

    /// `n` replicas and `spares` more replica processes outside the list (for reassignment).
    pub fn with_spares(
        seed: u64,
        net: NetConfig,
        n: usize,
        spares: usize,
        cfg: ReplicaConfig,
    ) -> Partition {
        let mut sim = Sim::new(seed, net);
        let checker = Rc::new(RefCell::new(Checker::default()));
        let replicas: Vec<usize> = (1..=n + spares).collect();
        let ids: Vec<NodeId> = (1..=n).map(mq_id).collect();
        let state =
            PartitionState { replicas: ids.clone(), leader: None, leader_epoch: 0, isr: ids };
        checker.borrow_mut().isr = state.isr.clone();
        let meta_checker = checker.clone();
        sim.add(|_| {
            Node::Meta(MetaProc {
                state,
                version: 1,
                replicas: replicas.clone(),
                checker: meta_checker,
                out: VecDeque::new(),
            })
        });
        let start = sim.now();
        for &i in &replicas {
            let peers: Vec<usize> = replicas.iter().copied().filter(|&p| p != i).collect();
            let (c, cfg) = (checker.clone(), cfg.clone());
            sim.add(move |_| {
                Node::Replica(ReplicaProc::start(
                    i,
                    peers,
                    MemLog::new(),
                    cfg,
                    c,
                    start,
                    start,
                    false,
                ))
            });
        }
        Partition {
            sim,
            checker,
            cfg,
            n,
            slots: n + spares,
            target: None,
            wiped: 0,
            disks: HashMap::new(),
            next_id: 0,
            producer: None,
            retried: 0,
            cursor: 0,
            power_loss: false,
            group_commit: GroupCommit::default(),
        }
    }

    fn replica(&self, i: usize) -> Option<&ReplicaProc> {
        match self.sim.node(i) {
            Some(Node::Replica(r)) => Some(r),
            _ => None,
        }
    }

    /// The replica that currently leads the newest epoch, if any.
    pub fn leader(&self) -> Option<usize> {
        (1..=self.slots)
            .filter_map(|i| self.replica(i).map(|r| (i, r)))
            .filter(|(_, r)| r.replica.role() == Role::Leader)
            .max_by_key(|(_, r)| r.replica.epoch())
            .map(|(i, _)| i)
    }

    /// Produces one message through the current leader (if there is one): with an idempotent
    /// producer, a retry of the oldest message whose outcome was unknown (or that was refused
    /// for its sequence) first, under the same sequence number, else a new one.
    pub fn produce(&mut self) -> Option<u64> {
        let l = self.leader()?;
        self.next_id += 1;
        let id = self.next_id;
        let (value, stamp) = match &mut self.producer {
            Some(pr) => {
                // Outcomes learned since the last call: unknown ones are sent again.
                let unknown: Vec<u64> = {
                    let c = self.checker.borrow();
                    pr.inflight
                        .keys()
                        .copied()
                        .filter(|i| c.unknown.contains(i) || c.acked.contains_key(i))
                        .collect()
                };
                for i in unknown {
                    if let Some((seq, v)) = pr.inflight.remove(&i) {
                        if !self.checker.borrow().acked.contains_key(&i) {
                            pr.retries.insert(seq, v);
                        }
                    }
                }
                let (seq, value) = match pr.retries.pop_first() {
                    Some((seq, v)) => {
                        self.retried += 1;
                        (seq, v)
                    }
                    None => {
                        let seq = pr.next_seq;
                        pr.next_seq += 1;
                        (seq, format!("m{id}"))
                    }
                };
                pr.inflight.insert(id, (seq, value.clone()));
                (value, Some(ProducerStamp { id: 7, epoch: pr.epoch, base_sequence: seq }))
            }
            None => (format!("m{id}"), None),
        };
        let r = self.sim.with_node(l, |n, now| match n {
            Node::Replica(r) => r.produce(now, id, &value, stamp),
            Node::Meta(_) => Err(ProduceError::Invalid("not a replica".into())),
        })?;
        if let Some(pr) = &mut self.producer {
            match &r {
                Ok(()) => {}
                Err(e)
                    if e.outcome_unknown()
                        || matches!(
                            e,
                            ProduceError::Sequence(_)
                                | ProduceError::NotLeader { .. }
                                | ProduceError::NotEnoughReplicas { .. }
                        ) =>
                {
                    // Sent again later, in sequence order.
                    if let Some((seq, v)) = pr.inflight.remove(&id) {
                        let attempts = pr.attempts.entry(seq).or_default();
                        *attempts += 1;
                        if *attempts > 200 {
                            // Give up on this sequence: a new epoch starts again at 0 (what
                            // was unresolved stays unknown).
                            pr.epoch += 1;
                            pr.next_seq = 0;
                            pr.retries.clear();
                            pr.inflight.clear();
                            pr.attempts.clear();
                        } else {
                            pr.retries.insert(seq, v);
                        }
                    }
                }
                Err(_) => {
                    pr.inflight.remove(&id);
                }
            }
        }
        r.is_ok().then_some(id)
    }

    /// A consumer re-reading from an earlier offset (what it reads must match what it read).
    pub fn reread(&mut self, from: i64) {
        let Some(l) = self.leader() else { return };
        self.sim.with_node(l, |n, _| match n {
            Node::Replica(r) => r.consume(from).map(|_| ()),
            Node::Meta(_) => None,
        });
    }

    /// One consumer poll at the current leader.
    pub fn consume(&mut self) -> usize {
        let Some(l) = self.leader() else { return 0 };
        let cursor = self.cursor;
        let r = self.sim.with_node(l, |n, _| match n {
            Node::Replica(r) => r.consume(cursor),
            Node::Meta(_) => None,
        });
        match r.flatten() {
            Some((recs, next)) => {
                if next < self.cursor {
                    self.checker
                        .borrow_mut()
                        .violation(format!("consumer moved back from {} to {next}", self.cursor));
                }
                self.cursor = self.cursor.max(next);
                recs.len()
            }
            None => 0,
        }
    }

    pub fn crash(&mut self, i: usize) {
        if let Some(r) = self.replica(i) {
            let log = if self.power_loss {
                r.replica.log().after_power_loss()
            } else {
                r.replica.log().clone()
            };
            self.disks.insert(i, log);
        }
        self.sim.crash(i);
    }

    pub fn restart(&mut self, i: usize) {
        if self.sim.is_up(i) {
            return;
        }
        let log = self.disks.remove(&i).unwrap_or_default();
        self.start_replica(i, log, true);
    }

    fn start_replica(&mut self, i: usize, log: MemLog, restarted: bool) {
        let peers: Vec<usize> = (1..=self.slots).filter(|&p| p != i).collect();
        let (c, cfg, start, now) =
            (self.checker.clone(), self.cfg.clone(), self.sim.start(), self.sim.now());
        let target = self.target.clone();
        let group_commit = self.group_commit;
        self.sim.restart(i, move |_| {
            let mut r = ReplicaProc::start(i, peers, log, cfg, c, start, now, restarted);
            if group_commit.every > 0 {
                r.group_commit(now, group_commit);
            }
            if let Some(t) = target {
                r.target(now, &t);
            }
            Node::Replica(r)
        });
    }

    /// Group commit in every replica, running and restarted (see [`ReplicaProc::group_commit`]).
    pub fn set_group_commit(&mut self, group: GroupCommit) {
        self.group_commit = group;
        for i in 1..=self.slots {
            self.sim.with_node(i, |n, now| {
                if let Node::Replica(r) = n {
                    r.group_commit(now, group);
                }
            });
        }
    }

    /// A new target replica list, handed to every running replica's core.
    pub fn set_target(&mut self, target: Vec<usize>) {
        for i in 1..=self.slots {
            self.sim.with_node(i, |n, now| {
                if let Node::Replica(r) = n {
                    r.target(now, &target);
                }
            });
        }
        self.target = Some(target);
    }

    /// What `starlingd`'s topic manager does for a replica the recorded list dropped: it stops
    /// the driver and deletes the partition's folder (a later reassignment back starts it
    /// empty).
    pub fn wipe_dropped(&mut self) {
        for i in 1..=self.slots {
            if self.replica(i).is_some_and(|r| r.dropped_with_data()) {
                self.sim.crash(i);
                self.disks.remove(&i);
                self.start_replica(i, MemLog::new(), false);
                self.wiped += 1;
            }
        }
    }

    /// Heals everything, restarts every replica, lets the partition settle, and checks the
    /// final state. Returns the violations (empty when the run is correct).
    pub fn settle_and_check(&mut self, quiet: Duration) -> Vec<String> {
        self.sim.heal();
        self.sim.clog(0, Duration::ZERO);
        self.sim.net = NetConfig::default();
        for i in 1..=self.slots {
            self.restart(i);
        }
        // Keep producing a little so a new leader's high watermark moves past old epochs,
        // then let everything settle.
        let end = self.sim.now() + quiet;
        while self.sim.now() < end {
            self.produce();
            let t = self.sim.now() + Duration::from_millis(20);
            self.sim.run_until(t);
            self.wipe_dropped();
        }
        self.sim.run_for(Duration::from_secs(3));
        while self.consume() > 0 {}
        let mut v = self.checker.borrow().violations.clone();
        let Some(l) = self.leader() else {
            let meta = match self.sim.node(0) {
                Some(Node::Meta(m)) => format!("{:?} v{}", m.state, m.version),
                _ => String::new(),
            };
            let roles: Vec<String> = (1..=self.n)
                .map(|i| match self.replica(i) {
                    Some(r) => format!(
                        "{i}: {:?} epoch {} log end {} latest epoch {:?}",
                        r.replica.role(),
                        r.replica.epoch(),
                        r.replica.log().end_offset(),
                        r.replica.log().latest_epoch()
                    ),
                    None => format!("{i}: down"),
                })
                .collect();
            v.push(format!("no leader after healing; metadata {meta}; {roles:?}"));
            return v;
        };
        let leader = self.replica(l).expect("up");
        let hw = leader.replica.high_watermark();
        let log_of = |r: &ReplicaProc| -> Vec<(i64, String)> {
            let mut out = Vec::new();
            let mut at = r.replica.log().start_offset();
            loop {
                let rr = r.replica.log().read(at, 1 << 20, hw).expect("read");
                if rr.bytes.is_empty() {
                    break;
                }
                for rec in decode_records(&rr.bytes).expect("decode") {
                    if rec.offset >= at {
                        out.push((
                            rec.offset,
                            String::from_utf8_lossy(rec.value.as_deref().unwrap_or_default())
                                .into_owned(),
                        ));
                    }
                }
                at = rr.next_offset;
            }
            out
        };
        let final_log = log_of(leader);
        let by_offset: BTreeMap<i64, &String> = final_log.iter().map(|(o, v)| (*o, v)).collect();
        let mut seen = HashMap::new();
        for (o, val) in &final_log {
            if let Some(prev) = seen.insert(val.clone(), *o) {
                v.push(format!("{val} at offsets {prev} and {o} (duplicated)"));
            }
        }
        let c = self.checker.borrow();
        for (id, off) in &c.acked {
            let want = &c.sent[id];
            match by_offset.get(off) {
                Some(got) if *got == want => {}
                Some(got) => v.push(format!(
                    "acknowledged {want} at offset {off}, but the log holds {got} there"
                )),
                None => v.push(format!(
                    "acknowledged {want} at offset {off} is lost (high watermark {hw})"
                )),
            }
        }
        for (off, val) in &c.observed {
            if by_offset.get(off) != Some(&val) {
                v.push(format!(
                    "consumed {val} at offset {off}, but the final log holds {:?}",
                    by_offset.get(off)
                ));
            }
        }
        let (isr, replicas) = leader
            .replica
            .state()
            .map(|(s, _)| (s.isr.clone(), s.replicas.clone()))
            .unwrap_or_default();
        if isr.len() != self.n || replicas.len() != self.n {
            v.push(format!(
                "after healing the ISR is {isr:?} and the replicas {replicas:?}, not {} replicas all in sync",
                self.n
            ));
        }
        if let Some(t) = &self.target {
            let want: BTreeSet<NodeId> = t.iter().map(|&i| mq_id(i)).collect();
            let have: BTreeSet<NodeId> = replicas.iter().copied().collect();
            if want != have {
                v.push(format!(
                    "after healing the replicas are {replicas:?}, not the target {t:?}"
                ));
            }
        }
        for id in isr {
            let i = slot_of(id);
            if let Some(r) = self.replica(i) {
                let theirs = log_of(r);
                if theirs != final_log {
                    v.push(format!(
                        "in-sync replica {i} differs from the leader below the high watermark {hw} ({} vs {} records)",
                        theirs.len(),
                        final_log.len()
                    ));
                }
            }
        }
        if v.len() > 50 {
            v.truncate(50);
        }
        v
    }
}

/// What one random run did.
#[derive(Debug, Default, Clone)]
pub struct RunReport {
    pub seed: u64,
    pub produced: u64,
    pub acked: u64,
    pub unknown: u64,
    pub refused: u64,
    /// Messages an idempotent producer sent again (unknown outcome, or refused unwritten).
    pub retried: u64,
    pub consumed: u64,
    pub leader_changes: u64,
    pub truncations: u64,
    pub isr_changes: u64,
    /// Replicas dropped by a reassignment whose data was deleted.
    pub wiped: u64,
    pub replica_changes: u64,
    pub faults: BTreeMap<&'static str, u64>,
    pub violations: Vec<String>,
}

/// A random run: `secs` simulated seconds of produce and consume with crashes, restarts,
/// partitions (between replicas, and from the metadata service), loss, duplication and
/// reordering; then healing and the final check.
pub fn random_run(seed: u64, secs: u64, power_loss: bool) -> RunReport {
    let cfg = ReplicaConfig {
        lag_time: Duration::from_millis(1500),
        flush_each_append: power_loss,
        ..ReplicaConfig::default()
    };
    let mut p = Partition::with_spares(seed, NetConfig::default(), 3, 1, cfg);
    p.power_loss = power_loss;
    // Half the power-loss seeds use group commit: a flush per round of inputs (1 to 4 of
    // them), not per append; half of those, as `starlingd` does in `always` mode, detached:
    // the next appends go on while it is in flight (completing 1 to 4 inputs later).
    if power_loss && (seed / 2) % 2 == 1 {
        p.set_group_commit(GroupCommit {
            every: 1 + (seed / 4 % 4) as u32,
            detached: (seed / 16) % 2 == 1,
        });
    }
    // Every other seed produces idempotently, sending unknown outcomes again: the checker's
    // "no message twice in the log" then checks that retries never duplicate.
    if seed % 2 == 1 {
        p.producer = Some(SimProducer::default());
    }
    let mut rng = p.sim.rng();
    let mut report = RunReport { seed, ..RunReport::default() };
    let end = p.sim.now() + Duration::from_secs(secs);
    let mut next_fault = p.sim.now() + Duration::from_millis(rng.gen_range(300..1500));
    let mut restarts: Vec<(Instant, usize)> = Vec::new();
    let mut heal_at: Option<Instant> = None;
    while p.sim.now() < end {
        let now = p.sim.now();
        if now >= next_fault {
            next_fault = now + Duration::from_millis(rng.gen_range(300..2000));
            let kind = match rng.gen_range(0..9) {
                8 => {
                    // The ring changed (a join, a leave, a removal): a new target list of
                    // `n` of the replica processes, in a random preference order.
                    let mut t: Vec<usize> = (1..=p.slots).collect();
                    t.shuffle(&mut rng);
                    t.truncate(p.n);
                    p.set_target(t);
                    "reassign"
                }
                0 | 1 => {
                    let i = rng.gen_range(1..=p.slots);
                    if p.sim.is_up(i) {
                        p.crash(i);
                        restarts.push((now + Duration::from_millis(rng.gen_range(200..3000)), i));
                    }
                    "crash"
                }
                2 => {
                    let a = rng.gen_range(0..=p.slots);
                    let mut groups = vec![vec![a], (0..=p.slots).filter(|&x| x != a).collect()];
                    if rng.gen_bool(0.5) {
                        groups.swap(0, 1);
                    }
                    p.sim.partition(&groups);
                    heal_at = Some(now + Duration::from_millis(rng.gen_range(500..3000)));
                    if a == 0 {
                        "partition-meta"
                    } else {
                        "partition"
                    }
                }
                6 => {
                    // Proposals and notifications slower than the replicas' retry period.
                    p.sim.clog(0, Duration::from_millis(rng.gen_range(300..1500)));
                    heal_at = Some(now + Duration::from_millis(rng.gen_range(500..3000)));
                    "slow-metadata"
                }
                7 => {
                    let i = rng.gen_range(1..=p.slots);
                    if p.sim.is_up(i) {
                        p.sim.stall(i, Duration::from_millis(rng.gen_range(200..2500)));
                    }
                    "stall"
                }
                3 => {
                    p.sim.net.loss = 0.05;
                    heal_at = Some(now + Duration::from_millis(rng.gen_range(500..2000)));
                    "loss"
                }
                4 => {
                    p.sim.net.duplicate = 0.05;
                    p.sim.net.latency_max = Duration::from_millis(rng.gen_range(30..400));
                    heal_at = Some(now + Duration::from_millis(rng.gen_range(500..2000)));
                    "duplicate-reorder"
                }
                _ => {
                    let a = rng.gen_range(1..=p.slots);
                    let b = rng.gen_range(0..=p.slots);
                    if a != b {
                        p.sim.block(a, b);
                    }
                    heal_at = Some(now + Duration::from_millis(rng.gen_range(500..2000)));
                    "one-way"
                }
            };
            *report.faults.entry(kind).or_default() += 1;
        }
        if heal_at.is_some_and(|t| now >= t) {
            p.sim.heal();
            p.sim.clog(0, Duration::ZERO);
            p.sim.net = NetConfig::default();
            heal_at = None;
        }
        restarts.retain(|&(t, i)| {
            if now >= t {
                p.restart(i);
                false
            } else {
                true
            }
        });
        for _ in 0..rng.gen_range(0..3) {
            if p.produce().is_some() {
                report.produced += 1;
            }
        }
        if rng.gen_bool(0.2) {
            report.consumed += p.consume() as u64;
        }
        if rng.gen_bool(0.02) && p.cursor > 0 {
            let from = rng.gen_range(0..p.cursor);
            p.reread(from);
        }
        let t = p.sim.now() + Duration::from_millis(rng.gen_range(2..10));
        p.sim.run_until(t);
        p.wipe_dropped();
    }
    report.violations = p.settle_and_check(Duration::from_secs(2));
    let c = p.checker.borrow();
    report.acked = c.acked.len() as u64;
    report.unknown = c.unknown.len() as u64;
    report.retried = p.retried;
    report.refused = c.refused;
    report.leader_changes = c.leader_changes.len() as u64;
    report.truncations = c.truncations;
    report.isr_changes = c.isr_changes;
    report.wiped = p.wiped;
    report.replica_changes = c.replica_changes;
    report
}

/// Kills the leader of a calm, loaded partition and measures the time until a new leader
/// acknowledges a write.
pub fn failover_run(seed: u64) -> Option<Duration> {
    let mut p = Partition::new(seed, NetConfig::default(), 3, ReplicaConfig::default());
    let warm = p.sim.now() + Duration::from_secs(3);
    while p.sim.now() < warm {
        p.produce();
        let t = p.sim.now() + Duration::from_millis(5);
        p.sim.run_until(t);
    }
    let l = p.leader()?;
    p.crash(l);
    let killed = p.sim.now();
    let acks_before = p.checker.borrow().ack_times.len();
    let give_up = killed + Duration::from_secs(10);
    while p.sim.now() < give_up {
        p.produce();
        let t = p.sim.now() + Duration::from_millis(5);
        p.sim.run_until(t);
        let c = p.checker.borrow();
        if let Some(t) =
            c.ack_times.get(acks_before..).and_then(|a| a.iter().find(|&&t| t > killed))
        {
            if p.leader().is_some_and(|nl| nl != l) {
                return Some(t.saturating_duration_since(killed));
            }
        }
    }
    None
}
