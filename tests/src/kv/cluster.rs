//! A simulated Starling cluster of [`KvProc`] nodes with clients whose every op is recorded in a
//! [`History`] (in simulated nanoseconds since the start), plus the fault and final-state helpers
//! the scenarios and the targeted tests use.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use starling_gossip::{Config as GossipConfig, MemberState, NodeId};
use starling_kv::{KvConfig, KvError};
use starling_ring::{token_of, Token};
use starling_wire::{Consistency, Record, Version};

use super::membership::{LeaveRefused, Phase};
use super::removal::RemoveRefused;
use super::{ClockSpec, Completed, Disk, KvProc, NodeSpec, OpOutput, TOKENS_PER_NODE};
use crate::gossip::node_id;
use crate::history::{check, Call, CheckOptions, History, OpId, Outcome, Report};
use crate::sim::{sim_addr, NetConfig, Sim};

/// Completions are collected (and clients act) at this granularity of simulated time; each
/// completion keeps its exact time.
pub const SLICE: Duration = Duration::from_millis(1);

/// How a cluster is built.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    pub nodes: usize,
    pub kv: KvConfig,
    pub gossip: GossipConfig,
    pub net: NetConfig,
    /// One per node (missing: exact clocks).
    pub clocks: Vec<ClockSpec>,
    /// See [`NodeSpec::wait_for_ring`].
    pub wait_for_ring: bool,
    /// See [`NodeSpec::clock_monitor`].
    pub clock_monitor: bool,
    /// See [`NodeSpec::clock_wait`].
    pub clock_wait: bool,
    /// See [`NodeSpec::repair`].
    pub repair: bool,
    /// See [`NodeSpec::recovery`].
    pub recovery: bool,
    /// See [`NodeSpec::sync_interval`].
    pub sync_interval: Duration,
}

impl ClusterConfig {
    /// `nodes` nodes with the default KV settings but `sloppy_quorum`.
    pub fn new(nodes: usize, sloppy_quorum: bool) -> Self {
        ClusterConfig {
            nodes,
            kv: KvConfig { sloppy_quorum, ..KvConfig::default() },
            gossip: GossipConfig::default(),
            net: NetConfig::default(),
            clocks: Vec::new(),
            wait_for_ring: true,
            clock_monitor: true,
            clock_wait: true,
            repair: true,
            recovery: true,
            sync_interval: super::SYNC_INTERVAL,
        }
    }
}

/// What one op was, for explaining a violation: coordinator, level, the version it wrote or read.
#[derive(Clone, Debug, Default)]
pub struct OpNote {
    pub node: usize,
    pub level: Option<Consistency>,
    pub version: Option<Version>,
    pub detail: String,
}

/// The state of every key after the run, as the checker wants it.
#[derive(Clone, Debug, Default)]
pub struct FinalState {
    pub state: BTreeMap<String, Option<String>>,
    /// Keys whose final `all` read failed: their state is the newest record any node holds.
    pub read_failed: Vec<String>,
    /// Keys whose `all` read gave something else than the newest record any node holds (in its
    /// store or as a hint): their state is that newest record, which wins once delivered.
    pub mismatched: Vec<String>,
    /// Keys of which a node that is not a replica stores a newer record than every replica (it
    /// was acknowledged by a node that did not know the ring).
    pub stranded: Vec<String>,
    /// The newest version of each key (diagnostics).
    pub versions: BTreeMap<String, Option<Version>>,
}

/// A blocked set of links, undone with [`Cluster::unblock`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BlockId(u64);

/// A simulated cluster and its clients' history.
pub struct Cluster {
    pub sim: Sim<KvProc>,
    pub specs: Vec<NodeSpec>,
    pub history: History,
    pub notes: Vec<OpNote>,
    generations: Vec<u64>,
    /// Disks of nodes that are down: what they restart with.
    saved: Vec<Option<Disk>>,
    /// `token -> (coordinator, op)` of client ops in flight.
    inflight: BTreeMap<u64, (usize, OpId)>,
    /// Results of ops run aside of the history (final reads).
    aside: HashMap<u64, Option<Result<OpOutput, KvError>>>,
    next_token: u64,
    blocks: BTreeMap<BlockId, Vec<(usize, usize)>>,
    next_block: u64,
    /// Restarts waiting out their HLC high mark: `(when, node)`.
    restarts: Vec<(Instant, usize)>,
    /// Nodes that left the cluster (stopped for good, their store discarded).
    gone: Vec<bool>,
    /// Nodes added with [`Cluster::add_node`] so far.
    added: usize,
    /// Leaves aborted by nodes since stopped (their counters die with them).
    aborted_leaves: u64,
    /// When a node last lost power.
    pub last_power_loss: Option<Instant>,
    /// Nodes killed for good ([`Cluster::kill_for_good`]).
    pub dead: Vec<usize>,
    /// Machines that came back wiped, as new nodes ([`Cluster::rebirth`]).
    pub reborn: u64,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("seed", &self.sim.seed)
            .field("nodes", &self.specs.len())
            .field("ops", &self.history.len())
            .finish()
    }
}

fn mix(seed: u64, i: u64) -> u64 {
    let mut z = seed ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The value a read returned, as the history writes it.
pub fn value_of(r: Option<&Record>) -> Option<String> {
    r.and_then(|r| r.value.as_ref()).map(|v| String::from_utf8_lossy(v).into_owned())
}

/// The history outcome of an op result: timeouts (and coordinator failures) may have taken
/// effect, `unavailable` and bad requests did not.
pub fn outcome_of(result: &Result<OpOutput, KvError>) -> Outcome {
    match result {
        Ok(OpOutput::Written(w)) => Outcome::Written { superseded: w.superseded.is_some() },
        Ok(OpOutput::Read(r)) => Outcome::Read(value_of(r.record.as_ref())),
        Err(KvError::Unavailable(m) | KvError::BadRequest(m)) => Outcome::Fail(m.clone()),
        Err(KvError::Timeout(m) | KvError::Internal(m)) => Outcome::Unknown(m.clone()),
    }
}

impl Cluster {
    /// A cluster of `cfg.nodes` nodes seeded `seed`; they join through the first three.
    pub fn new(seed: u64, cfg: &ClusterConfig) -> Cluster {
        let mut sim = Sim::new(seed, cfg.net.clone());
        let epoch = sim.start();
        let mut rng = ChaCha8Rng::seed_from_u64(mix(seed, 0x70c3e5));
        let seeds: Vec<SocketAddr> = (0..cfg.nodes.min(3)).map(sim_addr).collect();
        let mut specs = Vec::new();
        for i in 0..cfg.nodes {
            let tokens: Vec<Token> = (0..TOKENS_PER_NODE).map(|_| rng.gen()).collect();
            specs.push(NodeSpec {
                index: i,
                id: node_id(seed, i),
                tokens,
                seeds: seeds.clone(),
                clock: cfg.clocks.get(i).copied().unwrap_or_default(),
                kv: cfg.kv.clone(),
                gossip: cfg.gossip.clone(),
                rng_seed: mix(seed, 1000 + i as u64),
                epoch,
                wait_for_ring: cfg.wait_for_ring,
                clock_monitor: cfg.clock_monitor,
                clock_wait: cfg.clock_wait,
                repair: cfg.repair,
                recovery: cfg.recovery,
                sync_interval: cfg.sync_interval,
            });
        }
        for spec in &specs {
            let now = sim.now();
            let s = spec.clone();
            sim.add(|addr| KvProc::new(s, 1, Disk::default(), addr, now));
        }
        Cluster {
            sim,
            generations: vec![1; cfg.nodes],
            saved: vec![None; cfg.nodes],
            specs,
            history: History::new(),
            notes: Vec::new(),
            inflight: BTreeMap::new(),
            aside: HashMap::new(),
            next_token: 0,
            blocks: BTreeMap::new(),
            next_block: 0,
            restarts: Vec::new(),
            gone: vec![false; cfg.nodes],
            added: 0,
            aborted_leaves: 0,
            last_power_loss: None,
            dead: Vec::new(),
            reborn: 0,
        }
    }

    /// Starts a new node with an empty store and no tokens: it gossips in through the seeds,
    /// takes its tokens as `joining`, streams its ranges and becomes `normal` (see
    /// [`super::membership`]). Returns its slot.
    pub fn add_node(&mut self, clock: ClockSpec) -> usize {
        let i = self.specs.len();
        self.added += 1;
        let seed = self.sim.seed;
        let spec = NodeSpec {
            index: i,
            id: node_id(seed, i),
            tokens: Vec::new(),
            seeds: self.seeds(),
            clock,
            rng_seed: mix(seed, 1000 + i as u64),
            ..self.specs[0].clone()
        };
        self.specs.push(spec.clone());
        self.generations.push(1);
        self.saved.push(None);
        self.gone.push(false);
        let now = self.sim.now();
        let slot = self.sim.add(|addr| KvProc::new(spec, 1, Disk::default(), addr, now));
        debug_assert_eq!(slot, i);
        i
    }

    /// Asks node `i` to leave the cluster (`starling leave`); the node refuses if fewer than
    /// `N` other nodes would stay, or it is not a ready, normal member.
    pub fn leave(&mut self, i: usize) -> Result<(), LeaveRefused> {
        self.sim.with_node(i, |p, now| p.leave(now)).unwrap_or(Err(LeaveRefused::NotReady))
    }

    /// The seeds a node (re)started now is given: the first three nodes that have not left (an
    /// operator takes nodes that left out of the seed lists).
    fn seeds(&self) -> Vec<SocketAddr> {
        self.members().into_iter().take(3).map(|i| self.sim.addr(i)).collect()
    }

    /// Whether node `i` left the cluster for good.
    pub fn is_gone(&self, i: usize) -> bool {
        self.gone[i]
    }

    /// Nodes that have not left (up or down).
    pub fn members(&self) -> Vec<usize> {
        (0..self.len()).filter(|&i| !self.gone[i]).collect()
    }

    /// Nodes joining or leaving (live ones, as they see themselves).
    pub fn moving(&self) -> usize {
        self.sim.up().filter(|(_, p)| !matches!(p.phase(), Phase::Normal)).count()
    }

    /// `(joined, left, leaves aborted)`: nodes added that became normal (or since left), nodes
    /// that left, and leaves that were given up.
    pub fn ring_changes(&self) -> (usize, usize, u64) {
        let first_added = self.len() - self.added;
        let joined = (first_added..self.len())
            .filter(|&i| {
                self.gone[i] || self.sim.node(i).is_some_and(|p| matches!(p.phase(), Phase::Normal))
            })
            .count();
        let left = (0..self.len()).filter(|i| self.gone[*i] && !self.dead.contains(i)).count();
        let aborted =
            self.aborted_leaves + self.sim.up().map(|(_, p)| p.stats.leaves_aborted).sum::<u64>();
        (joined, left, aborted)
    }

    fn count_stopped(&mut self, i: usize) {
        if let Some(p) = self.sim.node(i) {
            self.aborted_leaves += p.stats.leaves_aborted;
        }
    }

    /// Stops the nodes that recorded `left` once their leave is done (every reachable member
    /// confirmed it, or the linger passed with one confirmation: `Gossip::leave_done`, as
    /// `starlingd`), for good.
    fn reap_left(&mut self) {
        let done: Vec<usize> = self
            .sim
            .up()
            .filter(|(_, p)| p.left_at().is_some() && p.g.leave_done())
            .map(|(i, _)| i)
            .collect();
        for i in done {
            self.drain();
            self.count_stopped(i);
            self.sim.crash(i);
            self.saved[i] = None;
            self.gone[i] = true;
            self.restarts.retain(|r| r.1 != i);
            self.lose_inflight(i, "coordinator left the cluster");
        }
    }

    pub fn len(&self) -> usize {
        self.specs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.specs.is_empty()
    }

    pub fn now(&self) -> Instant {
        self.sim.now()
    }

    /// Simulated nanoseconds since the start at `at`.
    pub fn ns_at(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.sim.start()).as_nanos() as u64
    }

    /// Simulated nanoseconds since the start.
    pub fn ns(&self) -> u64 {
        self.ns_at(self.sim.now())
    }

    /// The node id of slot `i`.
    pub fn id(&self, i: usize) -> NodeId {
        self.specs[i].id
    }

    /// The slot of node id `id`.
    pub fn slot(&self, id: NodeId) -> Option<usize> {
        self.specs.iter().position(|s| s.id == id)
    }

    // ----- clients ------------------------------------------------------------------------

    /// `client` sends `call` at `level` to coordinator `node` now; recorded in the history.
    pub fn invoke(&mut self, client: u64, node: usize, call: Call, level: Consistency) -> OpId {
        let at = self.ns();
        let op = self.history.invoke(client, at, call.clone());
        self.notes.push(OpNote { node, level: Some(level), ..OpNote::default() });
        if !self.sim.is_up(node) {
            let now = self.ns();
            self.history.complete(op, now, Outcome::Fail(format!("node {node} is down")));
            return op;
        }
        let token = self.next_token;
        self.next_token += 1;
        self.inflight.insert(token, (node, op));
        self.start(node, token, &call, level);
        self.drain();
        op
    }

    fn start(&mut self, node: usize, token: u64, call: &Call, level: Consistency) {
        let call = call.clone();
        self.sim.with_node(node, move |p, now| match call {
            Call::Put { key, value } => {
                p.put(now, token, key.into_bytes(), Some(value.into_bytes()), level)
            }
            Call::Delete { key } => p.put(now, token, key.into_bytes(), None, level),
            Call::Get { key } => p.get(now, token, key.into_bytes(), level),
        });
    }

    /// Records every completion the nodes hold.
    pub fn drain(&mut self) {
        for i in 0..self.specs.len() {
            let Some(p) = self.sim.node_mut(i) else { continue };
            let done = p.take_completed();
            for c in done {
                self.record(i, c);
            }
        }
    }

    fn record(&mut self, node: usize, c: Completed) {
        if let Some(slot) = self.aside.get_mut(&c.token) {
            *slot = Some(c.result);
            return;
        }
        let Some((_, op)) = self.inflight.remove(&c.token) else { return };
        let at = self.ns_at(c.at);
        let note = &mut self.notes[op.0];
        note.node = node;
        match &c.result {
            Ok(OpOutput::Written(w)) => {
                note.version = Some(w.version);
                note.detail = format!(
                    "acked {}/{}{}",
                    w.acked,
                    w.required,
                    w.superseded.map_or(String::new(), |v| format!(", superseded by {v:?}"))
                );
            }
            Ok(OpOutput::Read(r)) => {
                note.version = r.record.as_ref().map(|r| r.version);
                note.detail = format!("{} replicas, {} repaired", r.replicas, r.repaired);
            }
            Err(e) => note.detail = format!("{e:?}"),
        }
        self.history.complete(op, at, outcome_of(&c.result));
    }

    /// Client ops that have not completed.
    pub fn in_flight(&self) -> usize {
        self.inflight.len()
    }

    /// Runs `d` of simulated time, collecting completions every [`SLICE`] (and starting the
    /// restarts that waited out their clock's high mark).
    pub fn run_for(&mut self, d: Duration) {
        let until = self.sim.now() + d;
        while self.sim.now() < until {
            let step = SLICE.min(until - self.sim.now());
            self.sim.run_for(step);
            self.drain();
            let now = self.sim.now();
            while let Some(k) = self.restarts.iter().position(|(at, _)| *at <= now) {
                let (_, i) = self.restarts.remove(k);
                self.start_node(i);
            }
            self.reap_left();
        }
    }

    /// Runs until op `op` completed (or `limit` passed); its outcome if it did.
    pub fn run_until_done(&mut self, op: OpId, limit: Duration) -> Option<Outcome> {
        let until = self.sim.now() + limit;
        loop {
            if self.history.op(op).complete.is_some() {
                return Some(self.history.op(op).outcome.clone());
            }
            if self.sim.now() >= until {
                return None;
            }
            self.run_for(SLICE);
        }
    }

    /// Invokes `call` and waits (at most 10 simulated seconds) for its outcome.
    pub fn call(&mut self, client: u64, node: usize, call: Call, level: Consistency) -> Outcome {
        let op = self.invoke(client, node, call, level);
        self.run_until_done(op, Duration::from_secs(10))
            .unwrap_or_else(|| Outcome::Unknown("never completed".into()))
    }

    /// Runs an op outside the history and waits for its result (at most `limit`).
    pub fn call_aside(
        &mut self,
        node: usize,
        key: &str,
        value: Option<Option<&str>>,
        level: Consistency,
        limit: Duration,
    ) -> Option<Result<OpOutput, KvError>> {
        if !self.sim.is_up(node) {
            return None;
        }
        let token = self.next_token;
        self.next_token += 1;
        self.aside.insert(token, None);
        let call = match value {
            None => Call::Get { key: key.into() },
            Some(Some(v)) => Call::Put { key: key.into(), value: v.into() },
            Some(None) => Call::Delete { key: key.into() },
        };
        self.start(node, token, &call, level);
        let until = self.sim.now() + limit;
        loop {
            self.drain();
            if let Some(Some(_)) = self.aside.get(&token) {
                return self.aside.remove(&token).flatten();
            }
            if self.sim.now() >= until || !self.sim.is_up(node) {
                self.aside.remove(&token);
                return None;
            }
            self.sim.run_for(SLICE);
        }
    }

    /// Fails the ops `node` coordinates as unknown (it crashed with them in flight).
    fn lose_inflight(&mut self, node: usize, why: &str) {
        let now = self.ns();
        let lost: Vec<u64> =
            self.inflight.iter().filter(|(_, (n, _))| *n == node).map(|(t, _)| *t).collect();
        for t in lost {
            if let Some((_, op)) = self.inflight.remove(&t) {
                self.notes[op.0].detail = why.to_string();
                self.history.complete(op, now, Outcome::Unknown(why.to_string()));
            }
        }
    }

    // ----- faults -------------------------------------------------------------------------

    /// `kill -9`: the process dies; everything it wrote is in its WAL and survives.
    pub fn kill(&mut self, i: usize) {
        self.drain();
        let Some(p) = self.sim.node(i) else { return };
        self.saved[i] = Some(p.disk.clone());
        self.count_stopped(i);
        self.sim.crash(i);
        self.lose_inflight(i, "coordinator killed");
    }

    /// Kills node `i` for good: its machine and store are gone (it never restarts); the
    /// cluster gets its ranges back to `N` copies with [`Cluster::remove_node`].
    pub fn kill_for_good(&mut self, i: usize) {
        self.kill(i);
        self.saved[i] = None;
        self.gone[i] = true;
        self.restarts.retain(|r| r.1 != i);
        self.dead.push(i);
    }

    /// The machine of dead, removed node `i` comes back with an empty data dir: a new node (a new
    /// id, no tokens) at the same address, which joins the ring.
    pub fn rebirth(&mut self, i: usize) {
        self.reborn += 1;
        let seed = self.sim.seed;
        let n = 100_000 + self.reborn as usize;
        let spec = NodeSpec {
            id: node_id(seed, n),
            tokens: Vec::new(),
            seeds: self.seeds(),
            rng_seed: mix(seed, n as u64),
            ..self.specs[i].clone()
        };
        self.specs[i] = spec.clone();
        self.generations[i] = 1;
        self.saved[i] = None;
        self.gone[i] = false;
        self.dead.retain(|d| *d != i);
        let now = self.sim.now();
        self.sim.restart(i, move |addr| KvProc::new(spec, 1, Disk::default(), addr, now));
    }

    /// `starling removenode` of dead node `target`, asked of node `via`.
    pub fn remove_node(&mut self, via: usize, target: usize) -> Result<(), RemoveRefused> {
        let id = self.id(target);
        self.sim
            .with_node(via, |p, now| p.remove_node(id, now))
            .unwrap_or(Err(RemoveRefused::NotReady))
    }

    /// Dead nodes whose removal no live node has recorded yet.
    pub fn unremoved(&self) -> Vec<usize> {
        self.dead
            .iter()
            .copied()
            .filter(|&i| {
                let id = self.id(i);
                !self.sim.up().any(|(_, p)| p.disk.removed.contains(&id))
            })
            .collect()
    }

    /// Whether a live node runs a removal.
    pub fn removal_running(&self) -> bool {
        self.sim.up().any(|(_, p)| p.removing().is_some())
    }

    /// Why removals gave up, over the nodes up now.
    pub fn removal_failures(&self) -> BTreeMap<&'static str, u64> {
        let mut out = BTreeMap::new();
        for (_, p) in self.sim.up() {
            for (k, v) in &p.stats.removal_failures {
                *out.entry(*k).or_default() += v;
            }
        }
        out
    }

    /// `(started, done, failed)` removals over the nodes up now.
    pub fn removals(&self) -> (u64, u64, u64) {
        self.sim.up().fold((0, 0, 0), |(a, b, c), (_, p)| {
            (a + p.stats.removals_started, b + p.stats.removals_done, c + p.stats.removals_failed)
        })
    }

    /// Power loss: what was written since the last periodic sync is lost.
    pub fn power_loss(&mut self, i: usize) {
        self.drain();
        let now = self.sim.now();
        self.last_power_loss = Some(now);
        let Some(p) = self.sim.node(i) else { return };
        self.saved[i] = Some(p.disk.clone().after_power_loss(now));
        self.count_stopped(i);
        self.sim.crash(i);
        self.lose_inflight(i, "coordinator lost power");
    }

    /// Restarts node `i` (killed first if it is up) with what its store kept: a new gossip
    /// generation, the same id and tokens. As `starlingd`, it first waits out what of its HLC's
    /// persisted high mark is ahead of its wall clock (at most 2 s; [`Cluster::run_for`] starts
    /// it then).
    pub fn restart(&mut self, i: usize) {
        if self.gone[i] {
            return;
        }
        if self.sim.is_up(i) {
            self.kill(i);
        }
        if self.saved[i].as_ref().is_some_and(|d| d.ring_status.as_deref() == Some("left")) {
            // It recorded `left` before it died: `starlingd` refuses to start on that store.
            self.saved[i] = None;
            self.gone[i] = true;
            return;
        }
        if self.restarts.iter().any(|r| r.1 == i) {
            return;
        }
        let mark_ms = self.saved[i].as_ref().map_or(0, |d| d.hlc_mark >> 16);
        let wall_ms = self.specs[i].clock.wall_ms(self.specs[i].epoch, self.sim.now());
        let ahead = mark_ms.saturating_sub(wall_ms);
        if ahead > 0 && ahead <= 2 * super::HLC_MARK_AHEAD_MS {
            self.restarts.push((self.sim.now() + Duration::from_millis(ahead), i));
            return;
        }
        self.start_node(i);
    }

    /// Whether node `i` is waiting to restart.
    pub fn restarting(&self, i: usize) -> bool {
        self.restarts.iter().any(|r| r.1 == i)
    }

    fn start_node(&mut self, i: usize) {
        self.generations[i] += 1;
        let generation = self.generations[i];
        let disk = self.saved[i].take().unwrap_or_default();
        self.specs[i].seeds = self.seeds();
        let spec = self.specs[i].clone();
        let now = self.sim.now();
        self.sim.restart(i, move |addr| KvProc::new(spec, generation, disk, addr, now));
    }

    pub fn is_up(&self, i: usize) -> bool {
        self.sim.is_up(i)
    }

    /// Moves node `i`'s wall clock (kept across restarts).
    pub fn set_clock(&mut self, i: usize, clock: ClockSpec) {
        self.specs[i].clock = clock;
        if let Some(p) = self.sim.node_mut(i) {
            p.set_clock(clock);
        }
    }

    /// Node `i`'s store answers nothing for `d` (answers wait).
    pub fn stall_store(&mut self, i: usize, d: Duration) {
        let until = self.sim.now() + d;
        if let Some(p) = self.sim.node_mut(i) {
            p.store.stalled_until = Some(until);
        }
    }

    /// Node `i`'s disk is full: its writes fail until it restarts.
    pub fn disk_full(&mut self, i: usize) {
        if let Some(p) = self.sim.node_mut(i) {
            p.store.full = true;
        }
    }

    /// Drops messages on each `(from, to)` link until [`Cluster::unblock`].
    pub fn block(&mut self, links: Vec<(usize, usize)>) -> BlockId {
        let id = BlockId(self.next_block);
        self.next_block += 1;
        for &(a, b) in &links {
            self.sim.block(a, b);
        }
        self.blocks.insert(id, links);
        id
    }

    /// Splits the nodes into groups that cannot reach each other.
    pub fn partition(&mut self, groups: &[Vec<usize>]) -> BlockId {
        let mut links = Vec::new();
        for (gi, g) in groups.iter().enumerate() {
            for (hi, h) in groups.iter().enumerate() {
                if gi != hi {
                    for &a in g {
                        for &b in h {
                            links.push((a, b));
                        }
                    }
                }
            }
        }
        self.block(links)
    }

    /// Lifts one block (the others stay).
    pub fn unblock(&mut self, id: BlockId) {
        self.blocks.remove(&id);
        self.sim.heal();
        let links: Vec<(usize, usize)> = self.blocks.values().flatten().copied().collect();
        for (a, b) in links {
            self.sim.block(a, b);
        }
    }

    /// Lifts every block.
    pub fn heal(&mut self) {
        self.blocks.clear();
        self.sim.heal();
    }

    // ----- observation --------------------------------------------------------------------

    /// Every live node sees every other live node alive, has each on its ring, and is ready to
    /// coordinate requests.
    pub fn converged(&self) -> bool {
        let up: Vec<usize> = (0..self.len()).filter(|&i| self.sim.is_up(i)).collect();
        up.iter().all(|&i| {
            let p = self.sim.node(i).expect("up");
            p.ready
                && up.iter().filter(|&&j| j != i).all(|&j| {
                    p.g.member(self.specs[j].id).is_some_and(|m| m.state == MemberState::Alive)
                })
                && up.iter().all(|&j| p.view.ring.node(self.specs[j].id).is_some())
        })
    }

    /// Hints waiting on live nodes.
    pub fn hints_pending(&self) -> usize {
        self.sim.up().map(|(_, p)| p.hints_pending()).sum()
    }

    /// Runs in steps of `step` until `cond` holds or `limit` passed; whether it held.
    pub fn run_until(
        &mut self,
        step: Duration,
        limit: Duration,
        mut cond: impl FnMut(&Cluster) -> bool,
    ) -> bool {
        let until = self.sim.now() + limit;
        loop {
            if cond(self) {
                return true;
            }
            if self.sim.now() >= until {
                return false;
            }
            self.run_for(step);
        }
    }

    /// The natural replicas of `key` (slots), as node `via` places it.
    pub fn replicas(&self, via: usize, key: &str) -> Vec<usize> {
        let Some(p) = self.sim.node(via) else { return Vec::new() };
        p.view
            .placement
            .replicas(token_of(key.as_bytes()))
            .iter()
            .filter_map(|id| self.slot(*id))
            .collect()
    }

    /// The newest record of `key` that the cluster will converge to: the newest among what its
    /// replicas store (as `via` places the key) and every hint any node keeps (down nodes: what
    /// they will restart with). A record stored only on a node that is not a replica is in
    /// nobody's reach: no read asks that node, no repair moves it.
    pub fn newest(&self, via: usize, key: &str) -> Option<Record> {
        let k = key.as_bytes();
        let replicas = self.replicas(via, key);
        let mut best: Option<Record> = None;
        let mut consider = |r: &Record| {
            if best.as_ref().is_none_or(|b| r.version > b.version) {
                best = Some(r.clone());
            }
        };
        for i in 0..self.len() {
            let disk = match self.sim.node(i) {
                Some(p) => &p.disk,
                None => match &self.saved[i] {
                    Some(d) => d,
                    None => continue,
                },
            };
            if replicas.contains(&i) {
                if let Some(r) = disk.data.get(k) {
                    consider(r);
                }
            }
            for ((_, _, hk), r) in &disk.hints {
                if hk.as_slice() == k {
                    consider(r);
                }
            }
        }
        best
    }

    /// Nodes that store a record of `key` newer than any of its replicas holds (records out of
    /// everyone's reach).
    pub fn stranded(&self, via: usize, key: &str) -> Vec<usize> {
        let replicas = self.replicas(via, key);
        let best = replicas.iter().filter_map(|&i| self.stored(i, key)).map(|r| r.version).max();
        (0..self.len())
            .filter(|i| !replicas.contains(i))
            .filter(|&i| self.stored(i, key).is_some_and(|r| best.is_none_or(|b| r.version > b)))
            .collect()
    }

    /// Keys whose replicas (as `via` places them) that are up do not all store the same record:
    /// what anti-entropy has yet to repair.
    pub fn diverged(&self, via: usize, keys: &[String]) -> Vec<String> {
        keys.iter()
            .filter(|key| {
                let held: Vec<Option<Record>> = self
                    .replicas(via, key)
                    .into_iter()
                    .filter(|&i| self.is_up(i))
                    .map(|i| self.stored(i, key))
                    .collect();
                held.windows(2).any(|w| w[0] != w[1])
            })
            .cloned()
            .collect()
    }

    /// Anti-entropy counters summed over the nodes that are up: sessions started, finished,
    /// failed, and records received.
    /// Nodes up and still recovering after a restart ([`NodeSpec::recovery`]).
    pub fn recovering(&self) -> usize {
        self.sim.up().filter(|(_, p)| p.recovering.is_some()).count()
    }

    pub fn repair_stats(&self) -> (u64, u64, u64, u64) {
        self.sim.up().fold((0, 0, 0, 0), |(a, b, c, d), (_, p)| {
            (
                a + p.stats.repair_sessions,
                b + p.stats.repair_sessions_done,
                c + p.stats.repair_sessions_failed,
                d + p.stats.repair_keys_received,
            )
        })
    }

    /// The record node `i` stores for `key`.
    pub fn stored(&self, i: usize, key: &str) -> Option<Record> {
        self.sim.node(i).and_then(|p| p.disk.data.get(key.as_bytes()).cloned())
    }

    /// Reads every key at `all` through `via` (three tries each); where the read fails or
    /// disagrees with the newest record any node holds, that record is the final state.
    pub fn final_state(&mut self, via: usize, keys: &[String]) -> FinalState {
        let mut fs = FinalState::default();
        for key in keys {
            let mut read = None;
            for _ in 0..3 {
                match self.call_aside(via, key, None, Consistency::All, Duration::from_secs(5)) {
                    Some(Ok(OpOutput::Read(r))) => {
                        read = Some(r.record);
                        break;
                    }
                    other => {
                        if std::env::var("KV_TRACE_FINAL").is_ok() {
                            let ring: Vec<String> = self
                                .sim
                                .node(via)
                                .map(|p| {
                                    p.view
                                        .ring
                                        .nodes()
                                        .map(|n| format!("{}:{:?}", n.id, n.status))
                                        .collect()
                                })
                                .unwrap_or_default();
                            let ups: Vec<String> = self
                                .sim
                                .up()
                                .map(|(i, p)| {
                                    format!(
                                        "{i}:{}:ready={}:rec={}",
                                        p.id(),
                                        p.ready,
                                        p.recovering.is_some()
                                    )
                                })
                                .collect();
                            eprintln!(
                                "final read {key} via {via}: {other:?}; ring {ring:?}; up {ups:?}"
                            );
                        }
                        self.run_for(Duration::from_millis(500))
                    }
                }
            }
            let newest = self.newest(via, key);
            if !self.stranded(via, key).is_empty() {
                fs.stranded.push(key.clone());
            }
            fs.versions.insert(key.clone(), newest.as_ref().map(|r| r.version));
            let value = match read {
                Some(r) if r.as_ref().map(|r| r.version) == newest.as_ref().map(|r| r.version) => {
                    value_of(r.as_ref())
                }
                Some(_) => {
                    fs.mismatched.push(key.clone());
                    value_of(newest.as_ref())
                }
                None => {
                    fs.read_failed.push(key.clone());
                    value_of(newest.as_ref())
                }
            };
            fs.state.insert(key.clone(), value);
        }
        fs
    }

    /// Checks the history against `fs`.
    pub fn check(&self, fs: &FinalState, recency: bool) -> Report {
        check(&self.history, &fs.state, CheckOptions { recency })
    }

    /// A report's violations with each op of their slices annotated (coordinator, level,
    /// version), for a human.
    pub fn explain(&self, report: &Report) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        for v in &report.violations {
            let _ = writeln!(out, "{:?} on {}: {}", v.kind, v.key, v.message);
            for op in &v.slice {
                let n = &self.notes[op.id.0];
                let _ = writeln!(
                    out,
                    "  {op}\n      via n{} at {:?}, version {:?}: {}",
                    n.node,
                    n.level,
                    n.version.map(|v| (v.ts >> 16, v.ts & 0xffff, self.slot(v.node))),
                    n.detail
                );
            }
        }
        out
    }
}
