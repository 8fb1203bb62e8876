//! A whole Starling KV node as a simulated [`Process`]: the gossip core for membership and
//! failure detection, the ring view built from gossip, the `starling-kv` coordinator
//! ([`WriteOp`], [`ReadOp`]) driven as `node/src/kv/mod.rs` drives it, the replica side
//! (`replica_write` with its clock check, hand-offs kept as hints, record and digest reads),
//! hinted handoff, and a memory store that models what a kill and a power loss keep.
//!
//! [`cluster`] runs a cluster of these and records what its clients see in a
//! [`History`](crate::history::History); [`scenario`] turns a seed into a whole run (clients,
//! faults, final state, check).

pub mod cluster;
pub mod membership;
pub mod removal;
pub mod repair;
pub mod scenario;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use starling_gossip::state::keys as gossip_keys;
use starling_gossip::{Command, Config as GossipConfig, Gossip, MemberState, NodeId};
use starling_kv::clock::ClockMonitor;
use starling_kv::hlc::{self, Hlc};
use starling_kv::replica;
use starling_kv::view;
use starling_kv::{
    Answer, KvConfig, KvError, Outgoing, Read, ReadOp, RingView, Send, SendId, WriteOp, Written,
};
use starling_ring::{Range, Token};
use starling_wire::{check_key_value, Consistency, Record, Version};

use crate::sim::Process;
use membership::{Cursor, Phase};

/// Hints are replayed this often (as `node/src/kv/hints.rs`); the HLC's high mark is persisted
/// on the same beat ([`HLC_PERSIST_EVERY`]).
pub const HINT_REPLAY_EVERY: Duration = Duration::from_millis(500);
/// Hints sent to a target per request.
pub const HINT_PAGE: usize = 256;
/// The write-ahead log is fsynced this often (`--sync periodic`): a power loss loses what was
/// written since the last sync.
pub const SYNC_INTERVAL: Duration = Duration::from_millis(10);
/// Wall-clock milliseconds at simulated time 0 (any date will do; this is November 2023).
pub const BASE_WALL_MS: u64 = 1_700_000_000_000;
/// The HLC high mark is persisted this often, this far ahead of the wall clock (as
/// `node/src/kv/mod.rs`); a restart waits out what of it is still ahead, at most twice that.
pub const HLC_PERSIST_EVERY: Duration = Duration::from_millis(500);
pub const HLC_MARK_AHEAD_MS: u64 = 1_000;
/// Tokens each node takes.
pub const TOKENS_PER_NODE: usize = 16;

/// A node's wall clock: `BASE_WALL_MS + elapsed * (1 + drift) + offset_ms`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ClockSpec {
    pub offset_ms: i64,
    /// Rate error: `0.001` runs 1 ms fast per second.
    pub drift: f64,
}

impl ClockSpec {
    pub fn offset(offset_ms: i64) -> Self {
        ClockSpec { offset_ms, drift: 0.0 }
    }

    /// Wall-clock milliseconds at `now`, for a simulation that started at `epoch`.
    pub fn wall_ms(&self, epoch: Instant, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(epoch).as_secs_f64() * 1000.0;
        let ms = BASE_WALL_MS as f64 + elapsed * (1.0 + self.drift) + self.offset_ms as f64;
        ms.max(0.0) as u64
    }
}

/// Everything needed to build (and rebuild, after a restart) one node.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    pub index: usize,
    pub id: NodeId,
    pub tokens: Vec<Token>,
    pub seeds: Vec<SocketAddr>,
    pub clock: ClockSpec,
    pub kv: KvConfig,
    pub gossip: GossipConfig,
    /// Seeds the gossip core's RNG (mixed with the generation).
    pub rng_seed: u64,
    /// Simulated time 0 (wall clocks and sync points count from it).
    pub epoch: Instant,
    /// A restarted node coordinates no request until it has heard of another member, gossip has
    /// converged, every member it knows is on its ring and so is every node it had on its ring
    /// before the restart (persisted), as `starlingd` does (`Kv::ready_view`). `false` models
    /// `starlingd` before that rule: a restarted node coordinated with a ring of itself alone
    /// until gossip told it of the others, and acknowledged writes no replica held.
    pub wait_for_ring: bool,
    /// Run the remote clock monitor as `starlingd` does: sample every peer's wall clock every
    /// [`CLOCK_PROBE_EVERY`]; coordinate no writes while this node's clock is more than the
    /// maximum offset off the cluster's median; check incoming versions against the cluster's
    /// time (this node's clock corrected by its measured offset).
    pub clock_monitor: bool,
    /// A node coordinates no writes unless it has recent samples of `min(2, other nodes on the
    /// ring)` peers, and probes every 200 ms until then, as `starlingd` does. `false` models
    /// `starlingd` before that rule: with no sample yet the clock counted as healthy, so a node
    /// started with a clock far off coordinated writes until its first probe round.
    pub clock_wait: bool,
    /// Run anti-entropy sessions between replicas, as `starlingd` does ([`repair`]).
    pub repair: bool,
    /// After a restart (every restart here is unclean: a kill or a power loss), answer no
    /// replica read of a key until a repair session has run with each other replica of it, as
    /// `starlingd` does (`Kv::start_recovery`). Needs [`NodeSpec::repair`].
    pub recovery: bool,
    /// The write-ahead log's sync interval ([`SYNC_INTERVAL`] as `starlingd` runs it; longer
    /// ones make a power loss lose more).
    pub sync_interval: Duration,
}

/// How often peers' clocks are sampled (as `node/src/kv/mod.rs`).
pub const CLOCK_PROBE_EVERY: Duration = Duration::from_secs(2);

/// `(target, version, key)`: hints are keyed by target, then version, as `target ‖ hlc ‖ token ‖
/// key` in RocksDB, so two versions of one key for one target are two hints.
pub type HintKey = (NodeId, Version, Vec<u8>);

#[derive(Clone, Debug)]
enum WalOp {
    Put(Record),
    HintPut(HintKey, Record),
    HintDel(HintKey),
}

/// The node's store: records merged by version (last write wins) and hints. Everything written
/// is in `data`/`hints` (what a kill keeps: the WAL is written at once); what the last periodic
/// sync made durable is in `synced_*` plus the `tail` entries whose sync time has passed (what a
/// power loss keeps).
#[derive(Clone, Debug, Default)]
pub struct Disk {
    pub data: BTreeMap<Vec<u8>, Record>,
    pub hints: BTreeMap<HintKey, Record>,
    synced_data: BTreeMap<Vec<u8>, Record>,
    synced_hints: BTreeMap<HintKey, Record>,
    /// `(synced at, op)`, oldest first.
    tail: VecDeque<(Instant, WalOp)>,
    /// The HLC's persisted high mark (`meta`, fsynced: a power loss keeps it).
    pub hlc_mark: u64,
    /// Nodes this node has seen on the ring (`meta`; only with [`NodeSpec::wait_for_ring`]).
    pub ring_members: BTreeSet<NodeId>,
    /// This node's tokens once it took them (`meta`, fsynced).
    pub tokens: Option<Vec<Token>>,
    /// This node's ring status: `joining`, `normal`, `leaving`, `left` (`meta`, fsynced).
    pub ring_status: Option<String>,
    /// Nodes this node is removing, and every removal it heard of (`meta`, fsynced).
    pub removing: BTreeSet<NodeId>,
    pub removed: BTreeSet<NodeId>,
}

/// Stores `r` unless a record of at least its version is held. True if it was stored.
fn merge(map: &mut BTreeMap<Vec<u8>, Record>, r: Record) -> bool {
    match map.get(&r.key) {
        Some(held) if held.version >= r.version => false,
        _ => {
            map.insert(r.key.clone(), r);
            true
        }
    }
}

impl Disk {
    fn sync_due(&mut self, now: Instant) {
        while self.tail.front().is_some_and(|(at, _)| *at <= now) {
            let Some((_, op)) = self.tail.pop_front() else { break };
            match op {
                WalOp::Put(r) => {
                    merge(&mut self.synced_data, r);
                }
                WalOp::HintPut(k, r) => {
                    self.synced_hints.insert(k, r);
                }
                WalOp::HintDel(k) => {
                    self.synced_hints.remove(&k);
                }
            }
        }
    }

    fn put(&mut self, synced_at: Instant, r: Record) {
        if merge(&mut self.data, r.clone()) {
            self.tail.push_back((synced_at, WalOp::Put(r)));
        }
    }

    fn put_hint(&mut self, synced_at: Instant, target: NodeId, r: Record) {
        let k = (target, r.version, r.key.clone());
        self.hints.insert(k.clone(), r.clone());
        self.tail.push_back((synced_at, WalOp::HintPut(k, r)));
    }

    fn del_hint(&mut self, synced_at: Instant, k: &HintKey) {
        if self.hints.remove(k).is_some() {
            self.tail.push_back((synced_at, WalOp::HintDel(k.clone())));
        }
    }

    /// What a power loss at `now` leaves: the last sync.
    pub fn after_power_loss(mut self, now: Instant) -> Disk {
        self.sync_due(now);
        Disk {
            data: self.synced_data.clone(),
            hints: self.synced_hints.clone(),
            synced_data: self.synced_data,
            synced_hints: self.synced_hints,
            tail: VecDeque::new(),
            hlc_mark: self.hlc_mark,
            ring_members: self.ring_members,
            tokens: self.tokens,
            ring_status: self.ring_status,
            removing: self.removing,
            removed: self.removed,
        }
    }

    /// Records and hints written but not yet synced at `now` (what a power loss would lose).
    pub fn unsynced(&self, now: Instant) -> usize {
        self.tail.iter().filter(|(at, _)| *at > now).count()
    }
}

/// Storage faults of a node.
#[derive(Clone, Debug, Default)]
pub struct StoreFaults {
    /// The store does not answer until then (a stalled disk): replica answers and this node's
    /// own store answers wait.
    pub stalled_until: Option<Instant>,
    /// A full disk: writes and hints fail (reads go on) until the node restarts.
    pub full: bool,
}

/// Counters of one node (since it started).
#[derive(Clone, Debug, Default)]
pub struct KvStats {
    pub decode_errors: u64,
    pub refused_ahead: u64,
    pub replica_writes: u64,
    pub replica_reads: u64,
    pub hints_stored: u64,
    pub hints_replayed: u64,
    /// Replayed hints the target already held a newer version of (acknowledged as
    /// `ReplicaWritten`; `node/src/kv/hints.rs` treats that answer as a refusal).
    pub hints_replayed_superseded: u64,
    pub hints_dropped: u64,
    /// Recoveries after a restart that finished ([`NodeSpec::recovery`]).
    pub recoveries: u64,
    pub write_failures_full: u64,
    pub requests_timed_out: u64,
    pub late_responses: u64,
    /// Writes this node refused to coordinate because its clock is off the cluster's.
    pub refused_clock: u64,
    /// Records received by streaming during a join.
    pub records_streamed: u64,
    /// Join streams that fell short and were started again.
    pub stream_retries: u64,
    pub joins_done: u64,
    /// Records pushed to the nodes gaining this node's ranges during a leave.
    pub records_handed: u64,
    /// Hints handed to their target or to a node that stays during a leave.
    pub hints_handed: u64,
    pub leaves_done: u64,
    pub leaves_aborted: u64,
    /// Anti-entropy sessions started, finished and failed; records received and sent.
    pub repair_sessions: u64,
    pub repair_sessions_done: u64,
    pub repair_sessions_failed: u64,
    pub repair_keys_received: u64,
    pub repair_keys_sent: u64,
    /// `removenode` runs this node started, finished and gave up (see [`removal`]).
    pub removals_started: u64,
    pub removals_done: u64,
    pub removals_failed: u64,
    /// Records the gainers streamed for this node's finished removals.
    pub records_streamed_for_removals: u64,
    /// Why removals gave up, counted.
    pub removal_failures: BTreeMap<&'static str, u64>,
}

/// Replica requests (one per `Send` the coordinator carries; the real node batches them, which
/// changes no outcome).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Req {
    /// `ReplicaWrite`: store these records (coordinator writes, read repair, hint replay).
    Write(Vec<Record>),
    /// `ReplicaHint`: keep these records as hints for `target` (sloppy quorum).
    Hint { target: NodeId, records: Vec<Record> },
    /// `ReplicaRead` / `ReplicaVersions`.
    Read { key: Vec<u8>, digest: bool },
    /// `Clock`: the peer's wall clock.
    Clock,
    /// `ReplicaScan`: the records whose token is in `range`, in `(token, key)` order, after
    /// `after`, at most `limit`.
    Scan { range: Range, after: Option<Cursor>, limit: usize },
    /// One step of an anti-entropy session ([`repair`]).
    Repair(starling_wire::repair::RepairRequest),
    /// `RepairRequest::StreamPending`: stream this node's pending ranges (a removal); answered
    /// when done.
    StreamPending,
}

/// Answers to [`Req`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Resp {
    Ok,
    /// Stored; for each record, the newer version the replica already held, if any.
    Written(Vec<Option<Version>>),
    Record(Option<Record>),
    Digest(Option<Version>),
    Clock {
        wall_ms: u64,
    },
    /// `ReplicaRecords`: a scan page, and where to go on from if there may be more.
    Records {
        records: Vec<Record>,
        cursor: Option<Cursor>,
    },
    /// The answer to a [`Req::Repair`].
    Repair(starling_wire::repair::RepairResponse),
    /// The answer to [`Req::StreamPending`]: records received.
    Streamed(u64),
    Error {
        code: ErrCode,
        message: String,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrCode {
    BadRequest,
    Unavailable,
}

/// What travels between simulated nodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Msg {
    Gossip(Vec<u8>),
    Request { id: u64, body: Req },
    Response { id: u64, body: Resp },
}

impl Msg {
    pub fn encode(&self) -> Vec<u8> {
        rmp_serde::to_vec(self).expect("simulator messages encode")
    }

    pub fn decode(bytes: &[u8]) -> Result<Msg, String> {
        rmp_serde::from_slice(bytes).map_err(|e| e.to_string())
    }
}

/// What a client op gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpOutput {
    Written(Written),
    Read(Read),
}

/// A client op that finished on this node (its coordinator).
#[derive(Clone, Debug)]
pub struct Completed {
    /// The caller's token, as given to [`KvProc::put`] / [`KvProc::get`].
    pub token: u64,
    pub at: Instant,
    pub result: Result<OpOutput, KvError>,
}

/// An op in flight. A node has a few at a time, kept in a map: boxing the larger kind would buy
/// nothing.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
enum AnyOp {
    Write(WriteOp),
    Read(ReadOp),
}

impl AnyOp {
    fn poll_send(&mut self) -> Option<Outgoing> {
        match self {
            AnyOp::Write(o) => o.poll_send(),
            AnyOp::Read(o) => o.poll_send(),
        }
    }
    fn poll_timeout(&self) -> Option<Instant> {
        match self {
            AnyOp::Write(o) => o.poll_timeout(),
            AnyOp::Read(o) => o.poll_timeout(),
        }
    }
    fn poll_result(&mut self) -> Option<Result<OpOutput, KvError>> {
        match self {
            AnyOp::Write(o) => o.poll_result().map(|r| r.map(OpOutput::Written)),
            AnyOp::Read(o) => o.poll_result().map(|r| r.map(OpOutput::Read)),
        }
    }
    fn is_finished(&self) -> bool {
        match self {
            AnyOp::Write(o) => o.is_finished(),
            AnyOp::Read(o) => o.is_finished(),
        }
    }
    fn handle_answer(&mut self, now: Instant, id: SendId, a: Answer) {
        match self {
            AnyOp::Write(o) => o.handle_answer(now, id, a),
            AnyOp::Read(o) => o.handle_answer(now, id, a),
        }
    }
    fn handle_timeout(&mut self, now: Instant) {
        match self {
            AnyOp::Write(o) => o.handle_timeout(now),
            AnyOp::Read(o) => o.handle_timeout(now),
        }
    }
}

#[derive(Debug)]
struct Running {
    token: u64,
    /// The view the op started with (its sends go to the addresses it names, as `drive` does).
    view: Arc<RingView>,
    op: AnyOp,
    reported: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    Write,
    HandOff,
    Record,
    Digest,
}

#[derive(Debug)]
enum Pending {
    Op {
        op: u64,
        send: SendId,
        expect: Expect,
        key: Option<Vec<u8>>,
    },
    Replay {
        target: NodeId,
        hints: Vec<HintKey>,
    },
    Clock {
        peer: NodeId,
        sent_ms: u64,
        sent_at: Instant,
    },
    /// A page of a stream task (a join's, or a removal's on a gainer).
    Scan {
        task: usize,
        removal: bool,
    },
    /// A gainer asked to stream its pending ranges for this node's leave or removal.
    GainerAsk {
        gainer: NodeId,
    },
    /// A page of hints a leaving node hands over.
    HintHandover {
        target: NodeId,
        hints: Vec<HintKey>,
    },
    /// A step of this node's anti-entropy session.
    Repair,
}

#[derive(Debug)]
enum Deferred {
    Transmit(SocketAddr, Vec<u8>),
    Answer { op: u64, send: SendId, answer: Answer },
}

/// One simulated Starling node.
#[derive(Debug)]
pub struct KvProc {
    pub spec: NodeSpec,
    pub generation: u64,
    pub g: Gossip,
    pub view: Arc<RingView>,
    pub hlc: Hlc,
    pub disk: Disk,
    pub store: StoreFaults,
    pub stats: KvStats,
    ops: BTreeMap<u64, Running>,
    next_op: u64,
    next_req: u64,
    /// Requests awaiting an answer, with their deadline.
    pending: HashMap<u64, (Instant, Pending)>,
    deadlines: BTreeSet<(Instant, u64)>,
    deferred: BTreeMap<(Instant, u64), Deferred>,
    next_deferred: u64,
    outbox: VecDeque<(SocketAddr, Vec<u8>)>,
    replaying: HashSet<NodeId>,
    next_replay: Instant,
    completed: Vec<Completed>,
    /// Coordinates requests (see [`NodeSpec::wait_for_ring`]).
    pub ready: bool,
    pub clock: ClockMonitor,
    /// This node's clock minus the cluster's, as last measured.
    pub clock_offset_ms: i64,
    next_clock_probe: Instant,
    /// Joining, leaving or neither ([`membership`]).
    phase: Phase,
    next_change: Instant,
    /// Anti-entropy: segment hashes (rebuilt after every start), the session running, when the
    /// next is due, and which peer is next ([`repair`]).
    segments: starling_merkle::Segments,
    repair: Option<repair::RepairRun>,
    next_repair: Instant,
    repair_cursor: usize,
    /// Recovering after a restart ([`NodeSpec::recovery`]): the peers a session has completed
    /// with since (`None`: not recovering).
    pub recovering: Option<BTreeSet<NodeId>>,
    /// A `removenode` this node runs, and the streams it runs for removals ([`removal`]).
    removal: Option<removal::Removal>,
    gainer_streams: Option<removal::GainerStreams>,
}

impl KvProc {
    /// Starts node `spec` in `generation` (which must grow across restarts) with what its store
    /// kept.
    pub fn new(
        spec: NodeSpec,
        generation: u64,
        disk: Disk,
        addr: SocketAddr,
        now: Instant,
    ) -> Self {
        let rng_seed = spec.rng_seed ^ generation.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let mut g = Gossip::new(
            spec.gossip.clone(),
            spec.id,
            generation,
            addr,
            spec.seeds.iter().copied().filter(|s| *s != addr).collect(),
            rng_seed,
            now,
        );
        // As `bootstrap::join` does: a node that owns tokens announces them with its stored
        // status (`leaving` comes back `normal`: the leave must be asked for again); a node
        // without tokens waits for its turn to take them.
        let mut disk = disk;
        let tokens =
            disk.tokens.clone().or_else(|| Some(spec.tokens.clone()).filter(|t| !t.is_empty()));
        let phase = match (&tokens, disk.ring_status.as_deref()) {
            (None, _) => Phase::Waiting { since: now },
            (Some(_), Some("joining")) => Phase::JoinAgree { settled_at: None },
            (Some(_), _) => Phase::Normal,
        };
        if let Some(tokens) = &tokens {
            let status = if matches!(phase, Phase::Normal) { "normal" } else { "joining" };
            disk.ring_status = Some(status.into());
            g.handle_command(
                now,
                Command::Set { key: gossip_keys::STATUS.into(), value: status.into() },
            );
            g.handle_command(
                now,
                Command::Set { key: view::keys::TOKENS.into(), value: view::format_tokens(tokens) },
            );
        }
        let view = Arc::new(RingView::empty(spec.id, spec.kv.replication));
        let spec_max_offset = spec.kv.max_clock_offset;
        let mut p = KvProc {
            spec,
            generation,
            g,
            view,
            hlc: Hlc::starting_after(disk.hlc_mark),
            disk,
            store: StoreFaults::default(),
            stats: KvStats::default(),
            ops: BTreeMap::new(),
            next_op: 0,
            next_req: 0,
            pending: HashMap::new(),
            deadlines: BTreeSet::new(),
            deferred: BTreeMap::new(),
            next_deferred: 0,
            outbox: VecDeque::new(),
            replaying: HashSet::new(),
            next_replay: now + HINT_REPLAY_EVERY,
            completed: Vec::new(),
            ready: false,
            clock: ClockMonitor::new(spec_max_offset),
            clock_offset_ms: 0,
            next_clock_probe: now,
            phase,
            next_change: now,
            segments: starling_merkle::Segments::new(repair::REPAIR_SEGMENT_BITS),
            repair: None,
            next_repair: now + repair::REPAIR_EVERY,
            repair_cursor: 0,
            recovering: None,
            removal: None,
            gainer_streams: None,
        };
        p.republish_removals(now);
        // A node that had taken tokens is restarting (a kill or a power loss).
        if p.spec.recovery && p.spec.repair && generation > 1 && tokens.is_some() {
            p.recovering = Some(BTreeSet::new());
        }
        p.rebuild_view(now);
        p.after_gossip(now);
        p.ready = !p.spec.wait_for_ring;
        p
    }

    fn update_ready(&mut self) {
        if !self.ready {
            // Gossip's view digest covers who is a member, not their state: a member whose state
            // has not arrived yet (no tokens) is off the ring even when the digests agree.
            // And a restarted node that hears only some of the cluster (two restarted behind a
            // partition hear each other, converge, and would form a ring of two) waits for every
            // node it had on its ring before.
            let ring = &self.view.ring;
            let left = &self.view.left;
            let all_placed = self
                .g
                .members()
                .filter(|m| m.state != MemberState::Left && !left.contains(&m.id))
                .all(|m| ring.node(m.id).is_some());
            let all_back = self
                .disk
                .ring_members
                .iter()
                .all(|id| ring.node(*id).is_some() || left.contains(id));
            // Or a ready member computed the same ring: nodes not back on it left while this
            // one was down (their departure forgotten since).
            // A node not yet normal on the ring (joining, or restarted during its join) has no
            // ring of its own to wait for: it coordinates only on a ring a ready member vouches
            // for (a restarted seed that knows part of the cluster hands a partial one).
            let normal = ring
                .node(self.spec.id)
                .is_some_and(|n| n.status == starling_ring::NodeStatus::Normal);
            self.ready = self.g.members().next().is_some()
                && self.g.converged()
                && all_placed
                && (all_back || self.view.vouched)
                && (normal || self.view.vouched);
            // `Kv::remember_ring` stores the ring's members as soon as the gate is open, not
            // only at the next ring change: a node killed before that change would restart
            // with nothing to wait for, and coordinate on the first members it hears of.
            if self.ready && self.spec.wait_for_ring {
                self.disk.ring_members = ring.nodes().map(|n| n.id).collect();
            }
        }
    }

    fn refuse_unready(&mut self, token: u64, now: Instant) -> bool {
        if self.ready {
            return false;
        }
        let e = KvError::Unavailable("this node is starting: it does not know the ring yet".into());
        self.complete(token, now, Err(e));
        true
    }

    pub fn id(&self) -> NodeId {
        self.spec.id
    }

    /// This node's wall clock at `now`.
    pub fn wall_ms(&self, now: Instant) -> u64 {
        self.spec.clock.wall_ms(self.spec.epoch, now)
    }

    /// The cluster's time as this node estimates it (its clock corrected by its measured
    /// offset), or its own clock without the monitor.
    pub fn cluster_ms(&self, now: Instant) -> u64 {
        let wall = self.wall_ms(now);
        if !self.spec.clock_monitor {
            return wall;
        }
        (wall as i64).saturating_sub(self.clock_offset_ms).max(0) as u64
    }

    /// Moves this node's clock (a step or a new drift).
    pub fn set_clock(&mut self, clock: ClockSpec) {
        self.spec.clock = clock;
    }

    /// Client ops that finished since the last call.
    pub fn take_completed(&mut self) -> Vec<Completed> {
        std::mem::take(&mut self.completed)
    }

    /// Client ops this node coordinates that have not given their result yet.
    pub fn ops_in_flight(&self) -> usize {
        self.ops.values().filter(|r| !r.reported).count()
    }

    /// Hints waiting on this node.
    pub fn hints_pending(&self) -> usize {
        self.disk.hints.len()
    }

    /// Writes `value` under `key` (`None` deletes) at `level`; the result comes back through
    /// [`KvProc::take_completed`] with `token`.
    pub fn put(
        &mut self,
        now: Instant,
        token: u64,
        key: Vec<u8>,
        value: Option<Vec<u8>>,
        level: Consistency,
    ) {
        if let Err(e) = check_key_value(&key, value.as_deref()) {
            return self.complete(token, now, Err(KvError::BadRequest(e)));
        }
        if self.refuse_unready(token, now) {
            return;
        }
        if self.spec.clock_monitor {
            let h = self.clock.health(now);
            if self.spec.clock_wait && h.peers < self.clock_peers_needed() {
                self.stats.refused_clock += 1;
                let e = KvError::Unavailable(
                    "this node has not measured its clock against the cluster's yet".into(),
                );
                return self.complete(token, now, Err(e));
            }
            if !h.healthy {
                self.stats.refused_clock += 1;
                let e = KvError::Unavailable(format!(
                    "this node's clock is {} ms off the cluster's: it coordinates no writes",
                    h.offset_ms
                ));
                return self.complete(token, now, Err(e));
            }
        }
        let view = self.view.clone();
        let version = Version { ts: self.hlc.now(self.wall_ms(now)), node: self.spec.id };
        let record = Record { key, version, value };
        match WriteOp::start(now, &self.spec.kv, &view, level, record) {
            Ok(op) => self.launch(now, token, view, AnyOp::Write(op)),
            Err(e) => self.complete(token, now, Err(e)),
        }
    }

    /// Reads `key` at `level`; the result comes back through [`KvProc::take_completed`].
    pub fn get(&mut self, now: Instant, token: u64, key: Vec<u8>, level: Consistency) {
        if self.refuse_unready(token, now) {
            return;
        }
        let view = self.view.clone();
        match ReadOp::start(now, &self.spec.kv, &view, level, key) {
            Ok(op) => self.launch(now, token, view, AnyOp::Read(op)),
            Err(e) => self.complete(token, now, Err(e)),
        }
    }

    fn complete(&mut self, token: u64, at: Instant, result: Result<OpOutput, KvError>) {
        self.completed.push(Completed { token, at, result });
    }

    fn launch(&mut self, now: Instant, token: u64, view: Arc<RingView>, op: AnyOp) {
        let key = self.next_op;
        self.next_op += 1;
        self.ops.insert(key, Running { token, view, op, reported: false });
        self.pump(key, now);
    }

    /// Carries out everything op `key` queued, feeds local answers back at once, and reports its
    /// result; drops the op once it awaits nothing.
    fn pump(&mut self, key: u64, now: Instant) {
        loop {
            let Some(run) = self.ops.get_mut(&key) else { return };
            let Some(out) = run.op.poll_send() else { break };
            let view = run.view.clone();
            if let Some(answer) = self.carry(key, &view, out, now) {
                if let Some(run) = self.ops.get_mut(&key) {
                    run.op.handle_answer(now, answer.0, answer.1);
                }
            }
        }
        let Some(run) = self.ops.get_mut(&key) else { return };
        if let Some(result) = run.op.poll_result() {
            run.reported = true;
            let token = run.token;
            self.complete(token, now, result);
        }
        if self.ops.get(&key).is_some_and(|r| r.op.is_finished()) {
            self.ops.remove(&key);
        }
    }

    fn stalled(&self, now: Instant) -> Option<Instant> {
        self.store.stalled_until.filter(|t| *t > now)
    }

    /// When what is written at `now` is fsynced.
    fn synced_at(&self, now: Instant) -> Instant {
        let since = now.saturating_duration_since(self.spec.epoch).as_nanos();
        let every = self.spec.sync_interval.as_nanos().max(1);
        let next = (since / every + 1) * every;
        self.spec.epoch + Duration::from_nanos(next as u64)
    }

    /// An answer from this node's own store: now, or when a stalled store comes back.
    fn local(
        &mut self,
        op: u64,
        id: SendId,
        answer: Answer,
        now: Instant,
    ) -> Option<(SendId, Answer)> {
        match self.stalled(now) {
            Some(until) => {
                self.defer(until, Deferred::Answer { op, send: id, answer });
                None
            }
            None => Some((id, answer)),
        }
    }

    fn defer(&mut self, at: Instant, d: Deferred) {
        self.next_deferred += 1;
        self.deferred.insert((at, self.next_deferred), d);
    }

    /// Carries one send out (as `Kv::carry`): to this node's store, or as a request. Returns the
    /// answer if it is known at once.
    fn carry(
        &mut self,
        op: u64,
        view: &RingView,
        out: Outgoing,
        now: Instant,
    ) -> Option<(SendId, Answer)> {
        let me = self.spec.id;
        let id = out.id;
        match out.send {
            Send::Write { to, record } if to == me => {
                let a = self.store_local(record, now);
                self.local(op, id, a, now)
            }
            Send::Write { to, record } => {
                self.request(op, id, view, to, Req::Write(vec![record]), Expect::Write, None, now)
            }
            Send::HandOff { via, target, record } => {
                if via == me {
                    let a = self.keep_hint(view, target, record, now);
                    self.local(op, id, a, now)
                } else {
                    let req = Req::Hint { target, records: vec![record] };
                    self.request(op, id, view, via, req, Expect::HandOff, None, now)
                }
            }
            Send::Hint { target, record } => {
                let a = self.keep_hint(view, target, record, now);
                self.local(op, id, a, now)
            }
            Send::Read { to, key, .. } if to == me && self.unrecovered(&key) => {
                self.local(op, id, Answer::Failed, now)
            }
            Send::Read { to, key, digest } if to == me => {
                let held = self.disk.data.get(&key).cloned();
                let a = if digest {
                    Answer::Digest(held.map(|r| r.version))
                } else {
                    Answer::Record(held)
                };
                self.observe_answer(&a, now);
                self.local(op, id, a, now)
            }
            Send::Read { to, key, digest } => {
                let expect = if digest { Expect::Digest } else { Expect::Record };
                let req = Req::Read { key: key.clone(), digest };
                self.request(op, id, view, to, req, expect, Some(key), now)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn request(
        &mut self,
        op: u64,
        send: SendId,
        view: &RingView,
        to: NodeId,
        body: Req,
        expect: Expect,
        key: Option<Vec<u8>>,
        now: Instant,
    ) -> Option<(SendId, Answer)> {
        let Some(addr) = view.addrs.get(&to).copied() else {
            return Some((send, Answer::Failed));
        };
        let timeout = self.spec.kv.write_timeout.max(self.spec.kv.read_timeout);
        self.send_request(addr, body, Pending::Op { op, send, expect, key }, now + timeout);
        None
    }

    fn send_request(&mut self, addr: SocketAddr, body: Req, pending: Pending, deadline: Instant) {
        // Ids carry the generation: answers to a previous life of this node match nothing.
        let id = (self.generation << 40) | self.next_req;
        self.next_req += 1;
        self.pending.insert(id, (deadline, pending));
        self.deadlines.insert((deadline, id));
        self.outbox.push_back((addr, Msg::Request { id, body }.encode()));
    }

    /// A read answer moves this node's clock (unless it is too far ahead), as `carry` does.
    fn observe_answer(&mut self, a: &Answer, now: Instant) {
        let seen = match a {
            Answer::Record(Some(r)) => Some(r.version),
            Answer::Digest(v) => *v,
            _ => None,
        };
        if let Some(v) = seen {
            let bound = self.spec.kv.max_clock_offset.as_millis() as u64;
            let _ = self.hlc.observe(v.ts, self.wall_ms(now), bound);
        }
    }

    /// This node's own replica write (`Kv::store_local`): no clock check.
    fn store_local(&mut self, record: Record, now: Instant) -> Answer {
        if self.store.full {
            self.stats.write_failures_full += 1;
            return Answer::Failed;
        }
        let newer =
            self.disk.data.get(&record.key).map(|h| h.version).filter(|v| *v > record.version);
        let at = self.synced_at(now);
        let token = starling_ring::token_of(&record.key);
        self.disk.put(at, record);
        self.segments.touched(token);
        Answer::Stored { newer }
    }

    /// `Kv::keep_hint`.
    fn keep_hint(
        &mut self,
        view: &RingView,
        target: NodeId,
        record: Record,
        now: Instant,
    ) -> Answer {
        if view.left.contains(&target) || self.store.full {
            return Answer::Failed;
        }
        let at = self.synced_at(now);
        self.disk.put_hint(at, target, record);
        self.stats.hints_stored += 1;
        Answer::Stored { newer: None }
    }

    /// `Kv::check_incoming`.
    fn check_incoming(&mut self, records: &[Record], now: Instant) -> Result<(), Resp> {
        let bound = self.spec.kv.max_clock_offset;
        replica::check_incoming(&self.hlc, records, self.cluster_ms(now), bound).map_err(|e| {
            if matches!(e, replica::Refusal::FromTheFuture(_)) {
                self.stats.refused_ahead += 1;
            }
            refusal(e)
        })
    }

    /// `Kv::replica_write`.
    fn replica_write(&mut self, records: Vec<Record>, now: Instant) -> Resp {
        if let Err(refused) = self.check_incoming(&records, now) {
            return refused;
        }
        if self.store.full {
            self.stats.write_failures_full += 1;
            return Resp::Error {
                code: ErrCode::Unavailable,
                message: "replica cannot write: disk full".into(),
            };
        }
        let held: Vec<Option<Version>> =
            records.iter().map(|r| self.disk.data.get(&r.key).map(|h| h.version)).collect();
        let newer = replica::newer_held(&records, &held);
        let at = self.synced_at(now);
        self.stats.replica_writes += records.len() as u64;
        for r in records {
            let token = starling_ring::token_of(&r.key);
            self.disk.put(at, r);
            self.segments.touched(token);
        }
        if newer.iter().all(Option::is_none) {
            Resp::Ok
        } else {
            Resp::Written(newer)
        }
    }

    /// `Kv::keep_for`: a stand-in keeps records for `target`.
    fn keep_for(&mut self, target: NodeId, records: Vec<Record>, now: Instant) -> Resp {
        if target == self.spec.id {
            return self.replica_write(records, now);
        }
        if let Err(refused) = self.check_incoming(&records, now) {
            return refused;
        }
        if let Err(e) = replica::admit_hints(&self.view, target, now, self.spec.kv.hint_window) {
            return refusal(e);
        }
        if self.store.full {
            self.stats.write_failures_full += 1;
            return Resp::Error { code: ErrCode::Unavailable, message: "cannot keep hints".into() };
        }
        let at = self.synced_at(now);
        for r in records {
            self.disk.put_hint(at, target, r);
            self.stats.hints_stored += 1;
        }
        Resp::Ok
    }

    /// Whether a recovering node still has to compare with some replica of `replicas` other
    /// than itself (one being removed never answers: it is not waited for).
    fn awaits_comparison(&self, replicas: &[NodeId]) -> bool {
        let Some(compared) = &self.recovering else { return false };
        let me = self.spec.id;
        replicas
            .iter()
            .any(|p| *p != me && !compared.contains(p) && !self.view.removing.contains(p))
    }

    /// Whether replica reads of `key` are refused: recovering, and some other replica of it has
    /// not completed a session with this node since its restart.
    fn unrecovered(&self, key: &[u8]) -> bool {
        self.awaits_comparison(self.view.placement.replicas(starling_ring::token_of(key)))
    }

    /// Whether scans of `range` are refused: recovering, and some range overlapping it that this
    /// node replicates has another replica that has not completed a session with it since its
    /// restart (`starlingd` refuses streams from the ranges it has not compared yet, and serves
    /// the rest: `Kv::recovering_any`).
    fn unrecovered_range(&self, range: &Range) -> bool {
        let me = self.spec.id;
        self.view.placement.segments().any(|(seg, natural, _)| {
            seg.overlaps(range) && natural.contains(&me) && self.awaits_comparison(natural)
        })
    }

    fn serve(&mut self, from: SocketAddr, id: u64, body: Req, now: Instant) {
        if body == Req::Clock {
            // Answered by the service, not the store: a stalled store does not delay it.
            let body = Resp::Clock { wall_ms: self.wall_ms(now) };
            self.outbox.push_back((from, Msg::Response { id, body }.encode()));
            return;
        }
        if body == Req::StreamPending {
            // Answered once the streams finish.
            return self.start_gainer_streams((from, id), now);
        }
        let resp = match body {
            Req::Clock | Req::StreamPending => unreachable!("answered above"),
            Req::Write(records) => self.replica_write(records, now),
            Req::Hint { target, records } => self.keep_for(target, records, now),
            Req::Scan { ref range, .. } if self.unrecovered_range(range) => {
                Resp::Error { code: ErrCode::Unavailable, message: "recovering its store".into() }
            }
            Req::Read { ref key, .. } if self.unrecovered(key) => {
                Resp::Error { code: ErrCode::Unavailable, message: "recovering its store".into() }
            }
            Req::Scan { range, after, limit } => {
                let (records, cursor) =
                    membership::scan(&self.disk.data, range, after.as_ref(), limit.clamp(1, 4096));
                Resp::Records { records, cursor }
            }
            Req::Repair(req) => self.serve_repair(req, now),
            Req::Read { key, digest } => {
                self.stats.replica_reads += 1;
                let held = self.disk.data.get(&key).cloned();
                if digest {
                    Resp::Digest(held.map(|r| r.version))
                } else {
                    Resp::Record(held)
                }
            }
        };
        let bytes = Msg::Response { id, body: resp }.encode();
        match self.stalled(now) {
            Some(until) => self.defer(until, Deferred::Transmit(from, bytes)),
            None => self.outbox.push_back((from, bytes)),
        }
    }

    fn answer_of(expect: Expect, key: Option<&[u8]>, body: Resp) -> Answer {
        match (expect, body) {
            (Expect::Write, Resp::Ok) => Answer::Stored { newer: None },
            (Expect::Write, Resp::Written(v)) if v.len() == 1 => Answer::Stored { newer: v[0] },
            (Expect::HandOff, Resp::Ok) => Answer::Stored { newer: None },
            (Expect::Record, Resp::Record(r)) => match r {
                Some(r) if Some(r.key.as_slice()) != key => Answer::Failed,
                r => Answer::Record(r),
            },
            (Expect::Digest, Resp::Digest(v)) => Answer::Digest(v),
            _ => Answer::Failed,
        }
    }

    fn on_response(&mut self, id: u64, body: Option<Resp>, now: Instant) {
        let Some((deadline, p)) = self.pending.remove(&id) else {
            self.stats.late_responses += 1;
            return;
        };
        self.deadlines.remove(&(deadline, id));
        match p {
            Pending::Op { op, send, expect, key } => {
                let answer = match body {
                    Some(b) => Self::answer_of(expect, key.as_deref(), b),
                    None => {
                        self.stats.requests_timed_out += 1;
                        Answer::Failed
                    }
                };
                self.observe_answer(&answer, now);
                if let Some(run) = self.ops.get_mut(&op) {
                    run.op.handle_answer(now, send, answer);
                    self.pump(op, now);
                }
            }
            Pending::Clock { peer, sent_ms, sent_at } => {
                if let Some(Resp::Clock { wall_ms }) = body {
                    let rtt = now.saturating_duration_since(sent_at);
                    self.clock.handle_sample(now, peer, sent_ms, wall_ms, rtt);
                    self.clock_offset_ms = self.clock.health(now).offset_ms;
                }
            }
            Pending::Scan { task, removal } => self.on_scan(task, removal, body, now),
            Pending::GainerAsk { gainer } => {
                let n = match body {
                    Some(Resp::Streamed(n)) => Some(n),
                    _ => None,
                };
                self.on_gainer_done(gainer, n, now)
            }
            Pending::HintHandover { target, hints } => {
                self.on_hint_handover(target, hints, body, now)
            }
            Pending::Repair => self.on_repair_answer(body, now),
            Pending::Replay { target, hints } => {
                self.replaying.remove(&target);
                let ok = match body {
                    Some(Resp::Ok) => true,
                    Some(Resp::Written(newer)) => {
                        self.stats.hints_replayed_superseded +=
                            newer.iter().filter(|n| n.is_some()).count() as u64;
                        true
                    }
                    _ => false,
                };
                if ok {
                    let at = self.synced_at(now);
                    for k in &hints {
                        self.disk.del_hint(at, k);
                    }
                    self.stats.hints_replayed += hints.len() as u64;
                }
            }
        }
    }

    /// `Kv::replay_to` for every target: drops expired hints and those of members that left,
    /// and sends one page to each target gossip shows up.
    fn replay_hints(&mut self, now: Instant) {
        // A leaving node hands its hints over instead.
        if self.disk.hints.is_empty() || matches!(self.phase, Phase::Hints(_) | Phase::Left { .. })
        {
            return;
        }
        let window_ms = self.spec.kv.hint_window.as_millis() as u64;
        let wall = self.wall_ms(now);
        let at = self.synced_at(now);
        let mut by_target: BTreeMap<NodeId, Vec<HintKey>> = BTreeMap::new();
        for k in self.disk.hints.keys() {
            by_target.entry(k.0).or_default().push(k.clone());
        }
        let view = self.view.clone();
        for (target, keys) in by_target {
            if self.replaying.contains(&target) {
                continue;
            }
            let left = view.left.contains(&target);
            let (expired, live): (Vec<HintKey>, Vec<HintKey>) = keys
                .into_iter()
                .partition(|k| left || k.1.millis().saturating_add(window_ms) < wall);
            for k in &expired {
                self.disk.del_hint(at, k);
            }
            self.stats.hints_dropped += expired.len() as u64;
            if live.is_empty() || target == self.spec.id || !view.is_up(target) {
                continue;
            }
            let Some(addr) = view.addrs.get(&target).copied() else { continue };
            let page: Vec<HintKey> = live.into_iter().take(HINT_PAGE).collect();
            let records: Vec<Record> =
                page.iter().filter_map(|k| self.disk.hints.get(k).cloned()).collect();
            self.replaying.insert(target);
            let deadline = now + self.spec.kv.write_timeout;
            self.send_request(
                addr,
                Req::Write(records),
                Pending::Replay { target, hints: page },
                deadline,
            );
        }
    }

    /// Peers a node must have measured its clock against before it coordinates writes (with
    /// [`NodeSpec::clock_wait`]).
    fn clock_peers_needed(&self) -> usize {
        self.view.ring.nodes().count().saturating_sub(1).min(2)
    }

    /// Asks every peer gossip shows up for its wall clock (`Kv::probe_clocks`).
    fn probe_clocks(&mut self, now: Instant) {
        let view = self.view.clone();
        let mut peers: Vec<NodeId> = view.others_up().collect();
        peers.sort_unstable();
        let sent_ms = self.wall_ms(now);
        for peer in peers {
            let Some(addr) = view.addrs.get(&peer).copied() else { continue };
            let pending = Pending::Clock { peer, sent_ms, sent_at: now };
            self.send_request(addr, Req::Clock, pending, now + CLOCK_PROBE_EVERY);
        }
    }

    /// Rebuilds the ring view and publishes its digest, as the gossip driver does.
    fn rebuild_view(&mut self, now: Instant) {
        let next = Arc::new(RingView::build(
            self.spec.id,
            self.spec.kv.replication,
            &view::ring_members(&self.g),
            Some(&self.view),
            now,
        ));
        let digest = next.ring.digest();
        let publish = !next.ring.is_empty()
            && self.g.local_state().get(view::keys::RING) != Some(digest.as_str());
        self.view = next;
        if self.spec.wait_for_ring && self.ready {
            // As `Kv::remember_ring`: the ring's members now (a node that left is not waited for).
            self.disk.ring_members = self.view.ring.nodes().map(|n| n.id).collect();
        }
        if publish {
            self.g
                .handle_command(now, Command::Set { key: view::keys::RING.into(), value: digest });
        }
        // As `Kv::remember_ring`: ready, converged, and the ring non-empty: vouch for it.
        if self.ready
            && !self.view.ring.is_empty()
            && self.g.converged()
            && self.g.local_state().get(view::keys::KV_READY) != Some("1")
        {
            let set = Command::Set { key: view::keys::KV_READY.into(), value: "1".into() };
            self.g.handle_command(now, set);
        }
    }

    /// Drains the gossip core: transmits go out, any event rebuilds the view (publishing the
    /// ring digest may queue more of both).
    fn after_gossip(&mut self, now: Instant) {
        for _ in 0..3 {
            while let Some(t) = self.g.poll_transmit() {
                self.outbox.push_back((t.to, Msg::Gossip(t.payload).encode()));
            }
            let mut changed = false;
            while self.g.poll_event().is_some() {
                changed = true;
            }
            if !changed {
                break;
            }
            self.rebuild_view(now);
        }
        self.keep_removals(now);
        while let Some(t) = self.g.poll_transmit() {
            self.outbox.push_back((t.to, Msg::Gossip(t.payload).encode()));
        }
        self.update_ready();
    }
}

impl Process for KvProc {
    fn handle_message(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        let msg = match Msg::decode(bytes) {
            Ok(m) => m,
            Err(_) => {
                self.stats.decode_errors += 1;
                return;
            }
        };
        match msg {
            Msg::Gossip(payload) => {
                // `FromSelf`: a machine that came back wiped, as a new node at the old address,
                // gets the probes that others still send to the old (dead, removed) node there,
                // its own among them. Not malformed input.
                if let Err(e) = self.g.handle_message(now, &payload) {
                    if e != starling_gossip::Error::FromSelf {
                        self.stats.decode_errors += 1;
                    }
                }
                self.after_gossip(now);
            }
            Msg::Request { id, body } => self.serve(from, id, body, now),
            Msg::Response { id, body } => self.on_response(id, Some(body), now),
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.g.handle_timeout(now);
        self.after_gossip(now);
        while let Some((&(at, seq), _)) = self.deferred.iter().next() {
            if at > now {
                break;
            }
            let Some(d) = self.deferred.remove(&(at, seq)) else { break };
            match d {
                Deferred::Transmit(to, bytes) => self.outbox.push_back((to, bytes)),
                Deferred::Answer { op, send, answer } => {
                    if let Some(run) = self.ops.get_mut(&op) {
                        run.op.handle_answer(now, send, answer);
                        self.pump(op, now);
                    }
                }
            }
        }
        while let Some(&(at, id)) = self.deadlines.iter().next() {
            if at > now {
                break;
            }
            self.deadlines.remove(&(at, id));
            self.on_response(id, None, now);
        }
        let due: Vec<u64> = self
            .ops
            .iter()
            .filter(|(_, r)| r.op.poll_timeout().is_some_and(|t| t <= now))
            .map(|(k, _)| *k)
            .collect();
        for k in due {
            if let Some(run) = self.ops.get_mut(&k) {
                run.op.handle_timeout(now);
                self.pump(k, now);
            }
        }
        if now >= self.next_replay {
            // Hints are replayed and the HLC's high mark persisted on the same 500 ms beat.
            self.next_replay = now + HINT_REPLAY_EVERY;
            self.replay_hints(now);
            let ahead = hlc::from_millis(self.wall_ms(now) + HLC_MARK_AHEAD_MS);
            self.disk.hlc_mark = self.hlc.last().max(ahead);
        }
        if self.spec.clock_monitor && now >= self.next_clock_probe {
            // Until it has its samples (or knows of no peer yet), a waiting node probes often.
            let early = self.spec.clock_wait
                && (self.view.ring.nodes().count() <= 1
                    || self.clock.health(now).peers < self.clock_peers_needed());
            let every = if early { Duration::from_millis(200) } else { CLOCK_PROBE_EVERY };
            self.next_clock_probe = now + every;
            self.probe_clocks(now);
        }
        self.maybe_start_repair(now);
        self.advance(now);
    }

    fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.outbox.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let mut t = self.next_replay;
        let mut take = |x: Option<Instant>| {
            if let Some(x) = x {
                t = t.min(x);
            }
        };
        take(self.g.poll_timeout());
        if self.spec.clock_monitor {
            take(Some(self.next_clock_probe));
        }
        take(self.deferred.keys().next().map(|k| k.0));
        take(self.deadlines.iter().next().map(|k| k.0));
        take(self.change_timeout());
        if self.spec.repair && self.repair.is_none() {
            take(Some(self.next_repair));
        }
        for r in self.ops.values() {
            take(r.op.poll_timeout());
        }
        Some(t)
    }
}

/// A replica's refusal as the simulated answer (`Kv`'s `refusal` in `starlingd`).
fn refusal(e: replica::Refusal) -> Resp {
    let code = if e.is_unavailable() { ErrCode::Unavailable } else { ErrCode::BadRequest };
    Resp::Error { code, message: e.to_string() }
}
