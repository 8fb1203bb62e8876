//! The gossip state machine: Scuttlebutt push-pull for state, SWIM + Lifeguard for liveness.
//! See `ALGORITHM.md` for the invariants and the papers followed.

use std::cmp::Reverse;
use std::collections::hash_map::DefaultHasher;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::hash::BuildHasherDefault;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::broadcast::Broadcasts;
use crate::id::subject_hash;
use crate::member::{Liveness, Member, MemberState, MemberView, Suspicion};
use crate::message::{
    Body, Delta, Digest, Header, Message, Rumor, Summary, DELTA_OVERHEAD, DIGEST_COST,
};
use crate::phi::Phi;
use crate::state::{keys, NodeState};
use crate::{Config, Error, NodeId};

/// Subjects are split into this many buckets for Syn summaries (one bit each in a `u64` mask).
pub const BUCKETS: usize = 64;

/// Maps with a fixed hasher: iteration order must not vary between runs (replayable seeds).
type DetMap<K, V> = HashMap<K, V, BuildHasherDefault<DefaultHasher>>;

/// A datagram-like message to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    pub to: SocketAddr,
    pub payload: Vec<u8>,
}

/// Facts about membership, drained with [`Gossip::poll_event`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A member became alive: first heard from, or back by its own word (new incarnation or
    /// generation).
    MemberUp {
        id: NodeId,
        generation: u64,
        incarnation: u64,
    },
    MemberSuspect {
        id: NodeId,
        incarnation: u64,
    },
    MemberDown {
        id: NodeId,
        incarnation: u64,
    },
    MemberLeft {
        id: NodeId,
    },
    /// A left member's tombstone expired.
    MemberForgotten {
        id: NodeId,
    },
    /// Keys of a member's application state changed.
    StateChanged {
        id: NodeId,
        keys: Vec<String>,
    },
}

/// Requests from the driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Publish `key = value` in this node's state.
    Set { key: String, value: String },
    /// Announce a graceful leave; keep running a few intervals so the news spreads.
    Leave,
    /// Replace the seed list (e.g. after re-resolving DNS names).
    SetSeeds(Vec<SocketAddr>),
    /// This node's address changed (e.g. a container came back with a new IP). Peers take the
    /// new address from our next messages; it also travels in our deltas.
    SetAddr(SocketAddr),
}

/// Counters for metrics and simulation reports.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub messages_sent: u64,
    pub bytes_sent: u64,
    pub messages_received: u64,
    pub bytes_received: u64,
    pub rounds: u64,
    pub probes: u64,
    pub probes_failed: u64,
    pub refutations: u64,
    pub stalls: u64,
    pub decode_errors: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Tick,
    Probe,
    ProbeTimeout { seq: u64 },
    Relay { seq: u64 },
    RelayRetry { seq: u64 },
    Suspicion { id: NodeId },
}

/// A leave in progress: the members that were reachable when it started and have not yet
/// answered a ping that carried the `Left` rumour (SWIM processes piggybacked rumours before it
/// answers, so the answer proves the rumour arrived).
#[derive(Debug)]
struct Leaving {
    since: Instant,
    /// Pings with a sequence number from here on carried the `Left` rumour.
    first_seq: u64,
    unconfirmed: Vec<NodeId>,
    confirmed: usize,
}

#[derive(Debug)]
struct Probe {
    seq: u64,
    target: NodeId,
    started: Instant,
    acked: bool,
    helpers: usize,
    nacks: usize,
    /// We stalled while it ran: its silence proves nothing.
    inconclusive: bool,
}

#[derive(Debug)]
struct Relay {
    requester: SocketAddr,
    requester_seq: u64,
    target: NodeId,
    target_addr: SocketAddr,
}

/// One node's gossip protocol instance. Sans-IO: feed it messages and timeouts with the current
/// time, drain transmits, events and the next deadline.
#[derive(Debug)]
pub struct Gossip {
    cfg: Config,
    me: Header,
    local: Arc<NodeState>,
    members: Vec<Member>,
    index: DetMap<NodeId, u32>,
    /// Member slots per bucket (our own node is accounted for in `bucket_hash` only).
    bucket_members: Vec<Vec<u32>>,
    bucket_hash: [u64; BUCKETS],
    /// XOR over subjects (us included) of (id, generation, left?): the membership view.
    view_hash: u64,
    forgotten: DetMap<NodeId, (u64, Instant)>,
    seeds: Vec<SocketAddr>,
    rng: ChaCha8Rng,
    now: Instant,
    timers: BinaryHeap<Reverse<(Instant, u64, Timer)>>,
    timer_seq: u64,
    next_seq: u64,
    probe: Option<Probe>,
    probe_order: Vec<u32>,
    probe_pos: usize,
    relays: DetMap<u64, Relay>,
    /// Subjects whose local copy changed lately: when, and their watermark before the change.
    recent: DetMap<NodeId, (Instant, u64)>,
    /// Members learned indirectly, to ping directly so they become confirmed (or suspected).
    to_confirm: VecDeque<NodeId>,
    broadcasts: Broadcasts,
    /// Members per [`MemberState`], kept as liveness changes (read every tick).
    counts: [usize; 4],
    /// Left members by tombstone expiry.
    left_queue: VecDeque<(Instant, NodeId)>,
    /// Lifeguard local-health multiplier.
    lhm: u32,
    /// Set by [`Command::Leave`]: who still has to confirm they heard it.
    leaving: Option<Leaving>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    stats: Stats,
}

impl Gossip {
    /// A node with identity `id` in its `generation` (which must grow across restarts),
    /// reachable at `addr`, joining through `seeds`. `rng_seed` makes every choice replayable.
    pub fn new(
        cfg: Config,
        id: NodeId,
        generation: u64,
        addr: SocketAddr,
        seeds: Vec<SocketAddr>,
        rng_seed: u64,
        now: Instant,
    ) -> Gossip {
        let mut local = NodeState::default();
        local.set_local(keys::STATUS, "normal".into());
        local.set_local(keys::INCARNATION, "0".into());
        let me = Header { id, generation, incarnation: 0, addr };
        let mut g = Gossip {
            cfg,
            me,
            local: Arc::new(local),
            members: Vec::new(),
            index: DetMap::default(),
            bucket_members: vec![Vec::new(); BUCKETS],
            bucket_hash: [0; BUCKETS],
            view_hash: 0,
            forgotten: DetMap::default(),
            seeds: Vec::new(),
            rng: ChaCha8Rng::seed_from_u64(rng_seed),
            now,
            timers: BinaryHeap::new(),
            timer_seq: 0,
            next_seq: 1,
            probe: None,
            probe_order: Vec::new(),
            probe_pos: 0,
            relays: DetMap::default(),
            recent: DetMap::default(),
            to_confirm: VecDeque::new(),
            broadcasts: Broadcasts::default(),
            counts: [0; 4],
            left_queue: VecDeque::new(),
            lhm: 0,
            leaving: None,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: Stats::default(),
        };
        g.set_seeds(seeds);
        g.bucket_hash[bucket_of(id)] ^= subject_hash(id, generation, g.local.max_version());
        g.view_hash ^= subject_hash(id, generation, 0);
        g.publish_digest();
        g.broadcasts.push(g.alive_rumor());
        // Start at once: the first tick contacts the seeds; probing starts one period later.
        g.arm(now, Timer::Tick);
        let first_probe = now + g.cfg.probe_interval;
        g.arm(first_probe, Timer::Probe);
        g
    }

    // ----- queries -------------------------------------------------------------------------

    pub fn id(&self) -> NodeId {
        self.me.id
    }
    pub fn generation(&self) -> u64 {
        self.me.generation
    }
    pub fn incarnation(&self) -> u64 {
        self.me.incarnation
    }
    pub fn addr(&self) -> SocketAddr {
        self.me.addr
    }
    pub fn config(&self) -> &Config {
        &self.cfg
    }
    pub fn stats(&self) -> &Stats {
        &self.stats
    }
    /// Lifeguard local-health multiplier (0 = healthy).
    pub fn local_health(&self) -> u32 {
        self.lhm
    }
    /// This node's own state.
    pub fn local_state(&self) -> &Arc<NodeState> {
        &self.local
    }
    /// Rumours waiting to be disseminated.
    pub fn pending_rumors(&self) -> usize {
        self.broadcasts.len()
    }

    /// Digest of the membership view: who is a member, in which generation, and who has left.
    pub fn view_digest(&self) -> String {
        format!("{:016x}", self.view_hash)
    }

    /// Every known member except this node.
    pub fn members(&self) -> impl Iterator<Item = MemberView<'_>> {
        let now = self.now;
        self.members.iter().map(move |m| MemberView {
            id: m.id,
            addr: m.addr,
            generation: m.generation,
            incarnation: m.incarnation,
            state: m.liveness.state(),
            phi: m.phi.as_ref().map_or(0.0, |p| p.phi(now)),
            node_state: &m.state,
        })
    }

    /// One member, by id.
    pub fn member(&self, id: NodeId) -> Option<MemberView<'_>> {
        self.members().find(|m| m.id == id)
    }

    /// Member slots this node holds (known members and tombstones, not us); for tests and
    /// status pages. Forgotten members give their slot back, so this follows the membership
    /// rather than every id ever seen.
    pub fn slots(&self) -> usize {
        self.members.len()
    }

    /// Count of known members (not us) in each state.
    pub fn count(&self, state: MemberState) -> usize {
        self.counts[state as usize]
    }

    /// Converged: every member this node sees alive reports the same view digest as ours.
    pub fn converged(&self) -> bool {
        let mine = self.view_digest();
        self.local.get(keys::DIGEST) == Some(mine.as_str())
            && self
                .members
                .iter()
                .filter(|m| m.liveness.state() == MemberState::Alive)
                .all(|m| m.state.get(keys::DIGEST) == Some(mine.as_str()))
    }

    /// Full consistency check of derived state (bucket and view hashes, indices). O(n); the
    /// simulator calls it after steps, and a failure there is a bug here.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut buckets = [0u64; BUCKETS];
        let mut view = subject_hash(self.me.id, self.me.generation, is_left(&self.local));
        let mut counts = [0usize; 4];
        buckets[bucket_of(self.me.id)] ^=
            subject_hash(self.me.id, self.me.generation, self.local.max_version());
        // Slots are reused (a forgotten member's slot takes the last member): every structure
        // holding slot numbers must name each slot in use once, and nothing beyond them.
        let n = self.members.len();
        if self.index.len() != n {
            return Err(format!("{} indexed ids for {n} member slots", self.index.len()));
        }
        for (id, (generation, _)) in &self.forgotten {
            if let Some(&i) = self.index.get(id) {
                if self.members[i as usize].generation <= *generation {
                    return Err(format!("forgotten {id:?} still indexed"));
                }
            }
        }
        let mut seen = vec![false; n];
        for (b, slots) in self.bucket_members.iter().enumerate() {
            for &i in slots {
                let i = i as usize;
                if i >= n || seen[i] || bucket_of(self.members[i].id) != b {
                    return Err(format!("bucket {b} holds slot {i} wrongly"));
                }
                seen[i] = true;
            }
        }
        let mut seen = vec![false; n];
        for &i in &self.probe_order {
            let i = i as usize;
            if i >= n || seen[i] {
                return Err(format!("probe order holds slot {i} of {n} wrongly"));
            }
            seen[i] = true;
        }
        if self.probe_pos > self.probe_order.len() {
            return Err("probe position past the probe order".into());
        }
        for (i, m) in self.members.iter().enumerate() {
            if self.index.get(&m.id) != Some(&(i as u32)) {
                return Err(format!("index of {:?} is wrong", m.id));
            }
            if !self.bucket_members[bucket_of(m.id)].contains(&(i as u32)) {
                return Err(format!("{:?} missing from its bucket", m.id));
            }
            counts[m.liveness.state() as usize] += 1;
            buckets[bucket_of(m.id)] ^= subject_hash(m.id, m.generation, m.state.max_version());
            view ^= subject_hash(m.id, m.generation, is_left(&m.state));
        }
        if buckets != self.bucket_hash {
            return Err("bucket hashes drifted from the state they summarise".into());
        }
        if counts != self.counts {
            return Err(format!("state counts {:?} != actual {counts:?}", self.counts));
        }
        if view != self.view_hash {
            return Err("view hash drifted from the membership".into());
        }
        Ok(())
    }

    // ----- sans-IO outputs -----------------------------------------------------------------

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((t, _, _))| *t)
    }

    // ----- sans-IO inputs ------------------------------------------------------------------

    /// Runs every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.advance(now);
        while let Some(Reverse((t, _, timer))) = self.timers.peek().copied() {
            if t > now {
                break;
            }
            self.timers.pop();
            self.fire(timer);
        }
    }

    /// Handles one message from the network. Malformed input is refused with an error and
    /// changes nothing.
    pub fn handle_message(&mut self, now: Instant, bytes: &[u8]) -> Result<(), Error> {
        self.advance(now);
        let msg = match Message::decode(bytes, self.cfg.max_message_bytes) {
            Ok(m) => m,
            Err(e) => {
                self.stats.decode_errors += 1;
                return Err(e);
            }
        };
        if msg.from.id == self.me.id {
            return Err(Error::FromSelf);
        }
        if let Body::Syn { summary: Summary::Buckets(b), .. } = &msg.body {
            if b.len() != BUCKETS {
                return Err(Error::Malformed(format!("{} bucket hashes, want {BUCKETS}", b.len())));
            }
        }
        self.stats.messages_received += 1;
        self.stats.bytes_received += bytes.len() as u64;
        let from = msg.from.clone();
        self.on_header(&from);
        for r in msg.rumors {
            self.on_rumor(r);
        }
        match msg.body {
            Body::Syn { summary, recent } => {
                self.apply_deltas(recent);
                self.on_syn(&from, summary)
            }
            Body::Ack { deltas, requests, truncated } => {
                self.apply_deltas(deltas);
                if !requests.is_empty() {
                    let (deltas, _) = self.deltas_for(&requests);
                    self.send(from.addr, Body::Ack2 { deltas });
                }
                if truncated {
                    self.send_syn(from.addr);
                }
            }
            Body::Ack2 { deltas } => self.apply_deltas(deltas),
            Body::Ping { seq, target } => {
                // A ping meant for a previous owner of this address gets no answer.
                if target == self.me.id {
                    self.send(from.addr, Body::PingAck { seq, target });
                }
            }
            Body::PingAck { seq, target } => self.on_ping_ack(seq, target),
            Body::PingReq { seq, target, target_addr } => {
                let my_seq = self.next_seq();
                let relay = Relay { requester: from.addr, requester_seq: seq, target, target_addr };
                self.relays.insert(my_seq, relay);
                self.send(target_addr, Body::Ping { seq: my_seq, target });
                // One retry half-way: a relay path has four hops, each of which may lose it.
                let timeout = self.probe_timeout();
                self.arm(self.now + timeout / 2, Timer::RelayRetry { seq: my_seq });
                self.arm(self.now + timeout, Timer::Relay { seq: my_seq });
            }
            Body::Nack { seq, target } => {
                if let Some(p) = self.probe.as_mut().filter(|p| p.seq == seq && p.target == target)
                {
                    p.nacks += 1;
                }
            }
            Body::Rumors => {}
        }
        Ok(())
    }

    /// Handles a driver command.
    pub fn handle_command(&mut self, now: Instant, cmd: Command) {
        self.advance(now);
        match cmd {
            Command::Set { key, value } => self.set_local(&key, value),
            Command::Leave => {
                self.set_local(keys::STATUS, "left".into());
                self.broadcasts.push(self.left_rumor());
                let mut unconfirmed: Vec<NodeId> =
                    self.members.iter().filter(|m| m.liveness.reachable()).map(|m| m.id).collect();
                unconfirmed.sort();
                self.leaving = Some(Leaving {
                    since: now,
                    first_seq: self.next_seq + 1,
                    unconfirmed,
                    confirmed: 0,
                });
                // Tell a few members at once rather than waiting for the next tick, and ask
                // every reachable member to confirm.
                self.fan_out_rumors();
                self.leave_pings();
            }
            Command::SetSeeds(seeds) => self.set_seeds(seeds),
            Command::SetAddr(addr) => {
                if addr != self.me.addr {
                    self.me.addr = addr;
                    self.broadcasts.push(self.alive_rumor());
                }
            }
        }
    }

    /// Installs a membership snapshot (e.g. from a peers cache written before a restart, or a
    /// simulation's warm start). `confirmed = false` treats every member as learned indirectly:
    /// each is pinged and only becomes alive when it answers.
    pub fn warm_start(&mut self, peers: Vec<(Header, Arc<NodeState>)>, confirmed: bool) {
        for (h, state) in peers {
            let d = Digest { id: h.id, generation: h.generation, max_version: 0 };
            if h.id == self.me.id || self.index.contains_key(&h.id) || self.is_forgotten(&d) {
                continue;
            }
            let inc = parse_inc(&state).max(h.incarnation);
            let liveness = if confirmed { Liveness::Alive } else { self.unconfirmed() };
            let idx = self.insert_member(Member {
                id: h.id,
                addr: h.addr,
                generation: h.generation,
                incarnation: inc,
                liveness,
                state,
                phi: None,
            });
            if !confirmed {
                self.to_confirm.push_back(h.id);
                self.arm_suspicion(idx);
            }
        }
    }

    // ----- time ----------------------------------------------------------------------------

    /// Moves the clock. A gap much longer than any timer means this node was stalled (a GC-like
    /// pause, an overloaded host): time we were not running must not count against others
    /// (Lifeguard's self-awareness), so deadlines move by the gap and the probe in flight is
    /// void.
    fn advance(&mut self, now: Instant) {
        if now <= self.now {
            return;
        }
        let gap = now - self.now;
        self.now = now;
        let stall_after = self.cfg.gossip_interval * 5;
        if gap > stall_after {
            let shift = gap - self.cfg.gossip_interval;
            self.stats.stalls += 1;
            for m in self.members.iter_mut() {
                if let Liveness::Suspect(s) = &mut m.liveness {
                    s.deadline += shift;
                }
                if let Some(p) = m.phi.as_mut() {
                    p.shift(shift);
                }
            }
            if let Some(p) = self.probe.as_mut() {
                p.inconclusive = true;
            }
            self.lhm = (self.lhm + 2).min(self.cfg.max_local_health);
            tracing::debug!(node = ?self.me.id, gap_ms = gap.as_millis() as u64, "stall detected");
        }
    }

    fn arm(&mut self, at: Instant, timer: Timer) {
        self.timer_seq += 1;
        self.timers.push(Reverse((at, self.timer_seq, timer)));
    }

    fn fire(&mut self, timer: Timer) {
        match timer {
            Timer::Tick => {
                self.tick();
                let at = self.now + self.cfg.gossip_interval;
                self.arm(at, Timer::Tick);
            }
            Timer::Probe => {
                self.probe_round();
                let at = self.now + self.cfg.probe_interval * (1 + self.lhm);
                self.arm(at, Timer::Probe);
            }
            Timer::ProbeTimeout { seq } => self.probe_timeout_fired(seq),
            Timer::RelayRetry { seq } => {
                if let Some(r) = self.relays.get(&seq) {
                    let (to, target) = (r.target_addr, r.target);
                    self.send(to, Body::Ping { seq, target });
                }
            }
            Timer::Relay { seq } => {
                if let Some(r) = self.relays.remove(&seq) {
                    self.send(r.requester, Body::Nack { seq: r.requester_seq, target: r.target });
                }
            }
            Timer::Suspicion { id } => self.suspicion_fired(id),
        }
    }

    fn probe_timeout(&self) -> Duration {
        self.cfg.probe_timeout * (1 + self.lhm)
    }

    fn next_seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    // ----- gossip rounds -------------------------------------------------------------------

    fn tick(&mut self) {
        self.stats.rounds += 1;
        self.publish_digest();
        self.expire_tombstones();
        let window = self.cfg.gossip_interval * self.cfg.recent_rounds;
        let now = self.now;
        self.recent.retain(|_, (t, _)| now - *t < window);

        // Scuttlebutt round with a random reachable member; now and then an unreachable one (so
        // partitions heal) and a seed (so split clusters find each other), as Cassandra does.
        let live = self.random_member(|l| l.reachable());
        let mut talked_to_seed = false;
        if let Some(i) = live {
            let addr = self.members[i].addr;
            talked_to_seed = self.seeds.contains(&addr);
            self.send_syn(addr);
        }
        let n_live =
            self.counts[MemberState::Alive as usize] + self.counts[MemberState::Suspect as usize];
        let n_down = self.counts[MemberState::Down as usize];
        if n_down > 0 && self.rng.gen_bool(n_down as f64 / (n_live + n_down + 1) as f64) {
            if let Some(i) = self.random_member(|l| matches!(l, Liveness::Down { .. })) {
                let addr = self.members[i].addr;
                self.send_syn(addr);
            }
        }
        if !self.seeds.is_empty() && !talked_to_seed {
            let p = if n_live == 0 {
                1.0
            } else {
                (self.seeds.len() as f64 / (n_live + n_down) as f64).min(1.0)
            };
            if self.rng.gen_bool(p) {
                let seed = self.seeds[self.rng.gen_range(0..self.seeds.len())];
                self.send_syn(seed);
            }
        }

        self.fan_out_rumors();

        // Ping members learned second-hand so they become confirmed (or get suspected).
        for _ in 0..self.cfg.new_member_pings {
            let Some(id) = self.to_confirm.pop_front() else { break };
            if let Some(&i) = self.index.get(&id) {
                let m = &self.members[i as usize];
                if matches!(&m.liveness, Liveness::Suspect(s) if s.unconfirmed) {
                    let addr = m.addr;
                    self.send(addr, Body::Ping { seq: 0, target: id });
                }
            }
        }
    }

    fn fan_out_rumors(&mut self) {
        if self.broadcasts.is_empty() {
            return;
        }
        for _ in 0..self.cfg.rumor_fanout {
            if self.broadcasts.is_empty() {
                break;
            }
            if let Some(i) = self.random_member(|l| l.reachable()) {
                let addr = self.members[i].addr;
                self.send(addr, Body::Rumors);
            }
        }
    }

    fn send_syn(&mut self, to: SocketAddr) {
        let known = 1 + self.index.len();
        let summary = if known <= self.cfg.full_digest_nodes {
            let digests = self.digests_in(u64::MAX, usize::MAX).1;
            Summary::Digests { mask: u64::MAX, digests }
        } else {
            Summary::Buckets(self.bucket_hash.to_vec())
        };
        let recent = self.recent_deltas(u64::MAX);
        self.send(to, Body::Syn { summary, recent });
    }

    /// Digests of every subject in the buckets of `mask`, whole buckets at a time within
    /// `budget` bytes. Returns the mask actually covered.
    fn digests_in(&self, mask: u64, budget: usize) -> (u64, Vec<Digest>) {
        let mut covered = 0u64;
        let mut out = Vec::new();
        let mut used = 0;
        for b in 0..BUCKETS {
            if mask & (1 << b) == 0 {
                continue;
            }
            let mine = bucket_of(self.me.id) == b;
            let cost = (self.bucket_members[b].len() + usize::from(mine)) * DIGEST_COST;
            if used + cost > budget && covered != 0 {
                break;
            }
            used += cost;
            covered |= 1 << b;
            if mine {
                out.push(self.my_digest());
            }
            for &i in &self.bucket_members[b] {
                let m = &self.members[i as usize];
                out.push(Digest {
                    id: m.id,
                    generation: m.generation,
                    max_version: m.state.max_version(),
                });
            }
        }
        (covered, out)
    }

    fn my_digest(&self) -> Digest {
        Digest {
            id: self.me.id,
            generation: self.me.generation,
            max_version: self.local.max_version(),
        }
    }

    fn on_syn(&mut self, from: &Header, summary: Summary) {
        match summary {
            Summary::Buckets(theirs) => {
                let mut differ = 0u64;
                for (b, h) in theirs.iter().enumerate() {
                    if *h != self.bucket_hash[b] {
                        differ |= 1 << b;
                    }
                }
                if differ != 0 {
                    let recent = self.recent_deltas(differ);
                    let budget = self.body_budget() - self.recent_budget();
                    let (mask, digests) = self.digests_in(differ, budget);
                    let summary = Summary::Digests { mask, digests };
                    self.send(from.addr, Body::Syn { summary, recent });
                }
            }
            Summary::Digests { mask, digests } => {
                let theirs: DetMap<NodeId, Digest> = digests
                    .into_iter()
                    .filter(|d| mask & (1 << bucket_of(d.id)) != 0)
                    .map(|d| (d.id, d))
                    .collect();
                let mut wanted = Vec::new();
                let mut requests = Vec::new();
                let mine = self.my_digest();
                let mut consider = |mine: Digest, theirs: Option<&Digest>| match theirs {
                    None => wanted.push(Digest { generation: 0, max_version: 0, ..mine }),
                    Some(d) if d.generation < mine.generation => {
                        wanted.push(Digest { generation: 0, max_version: 0, ..mine })
                    }
                    Some(d)
                        if d.generation == mine.generation && d.max_version < mine.max_version =>
                    {
                        wanted.push(*d)
                    }
                    Some(d)
                        if d.generation > mine.generation || d.max_version > mine.max_version =>
                    {
                        requests.push(mine)
                    }
                    Some(_) => {}
                };
                if mask & (1 << bucket_of(mine.id)) != 0 {
                    consider(mine, theirs.get(&mine.id));
                }
                for b in 0..BUCKETS {
                    if mask & (1 << b) == 0 {
                        continue;
                    }
                    for &i in &self.bucket_members[b] {
                        let m = &self.members[i as usize];
                        let d = Digest {
                            id: m.id,
                            generation: m.generation,
                            max_version: m.state.max_version(),
                        };
                        consider(d, theirs.get(&m.id));
                    }
                }
                for d in theirs.values() {
                    if d.id != self.me.id
                        && !self.index.contains_key(&d.id)
                        && !self.is_forgotten(d)
                    {
                        requests.push(Digest { id: d.id, generation: 0, max_version: 0 });
                    }
                }
                requests.sort_by_key(|d| d.id);
                // Cut requests too: their answers must fit the peer's next message anyway.
                let max_requests = self.body_budget() / 4 / DIGEST_COST;
                requests.truncate(max_requests);
                wanted.shuffle(&mut self.rng);
                let (deltas, truncated) = self.deltas_for(&wanted);
                self.send(from.addr, Body::Ack { deltas, requests, truncated });
            }
        }
    }

    fn body_budget(&self) -> usize {
        self.cfg.max_message_bytes.saturating_sub(self.cfg.piggyback_bytes + 256).max(1024)
    }

    fn recent_budget(&self) -> usize {
        self.body_budget() / 4
    }

    /// Deltas of the subjects that changed lately, in the buckets of `mask`, each from its
    /// watermark before the change (a receiver that has that much applies it; one that has
    /// less refuses it as a gap and catches up through digests).
    fn recent_deltas(&self, mask: u64) -> Vec<Delta> {
        let mut budget = self.recent_budget();
        let mut out = Vec::new();
        let mut ids: Vec<(&NodeId, &(Instant, u64))> =
            self.recent.iter().filter(|(id, _)| mask & (1 << bucket_of(**id)) != 0).collect();
        ids.sort_by_key(|(id, (t, _))| (Reverse(*t), **id));
        for (&id, &(_, prev)) in ids {
            let Some((generation, addr, state)) = self.subject(id) else { continue };
            if budget < DELTA_OVERHEAD + 64 {
                break;
            }
            let (entries, used) = state.entries_after(prev, budget - DELTA_OVERHEAD);
            if entries.is_empty() {
                continue;
            }
            budget -= used + DELTA_OVERHEAD;
            out.push(Delta { id, generation, addr, from_version: prev, entries });
        }
        out
    }

    /// Generation, address and state copy of a subject (this node or a member).
    fn subject(&self, id: NodeId) -> Option<(u64, SocketAddr, &Arc<NodeState>)> {
        if id == self.me.id {
            return Some((self.me.generation, self.me.addr, &self.local));
        }
        let m = &self.members[*self.index.get(&id)? as usize];
        Some((m.generation, m.addr, &m.state))
    }

    fn note_recent(&mut self, id: NodeId, prev: u64) {
        let now = self.now;
        self.recent.entry(id).or_insert((now, prev));
    }

    /// Deltas answering digests `(id, generation, max_version)` that describe what the peer
    /// has: entries newer than that, within the message budget. Returns whether any were cut.
    fn deltas_for(&self, wanted: &[Digest]) -> (Vec<Delta>, bool) {
        let mut budget = self.body_budget();
        let mut out = Vec::new();
        let mut truncated = false;
        for w in wanted {
            let Some((generation, addr, state)) = self.subject(w.id) else { continue };
            let from = if w.generation == generation { w.max_version } else { 0 };
            if from >= state.max_version() {
                continue;
            }
            if budget < DELTA_OVERHEAD + 64 {
                truncated = true;
                break;
            }
            let (entries, used) = state.entries_after(from, budget - DELTA_OVERHEAD);
            if entries.is_empty() {
                truncated = true;
                break;
            }
            let complete = entries.last().map(|(_, e)| e.version) == Some(state.max_version());
            truncated |= !complete;
            budget -= used + DELTA_OVERHEAD;
            out.push(Delta { id: w.id, generation, addr, from_version: from, entries });
        }
        (out, truncated)
    }

    fn apply_deltas(&mut self, deltas: Vec<Delta>) {
        for d in deltas {
            self.apply_delta(d);
        }
    }

    fn apply_delta(&mut self, d: Delta) {
        if d.id == self.me.id {
            return;
        }
        let probe = Digest { id: d.id, generation: d.generation, max_version: 0 };
        if self.is_forgotten(&probe) {
            return;
        }
        let idx = match self.index.get(&d.id) {
            Some(&i) => i as usize,
            None => {
                if d.from_version != 0 {
                    return; // a partial delta of a subject we never saw: wait for the full one
                }
                let liveness = self.unconfirmed();
                let idx = self.insert_member(Member {
                    id: d.id,
                    addr: d.addr,
                    generation: d.generation,
                    incarnation: 0,
                    liveness,
                    state: Arc::new(NodeState::default()),
                    phi: None,
                });
                self.to_confirm.push_back(d.id);
                self.arm_suspicion(idx);
                idx
            }
        };
        let m = &self.members[idx];
        if d.generation < m.generation {
            return;
        }
        let old_sub = subject_hash(m.id, m.generation, m.state.max_version());
        let old_view = subject_hash(m.id, m.generation, is_left(&m.state));
        if d.generation > m.generation {
            if d.from_version != 0 {
                return;
            }
            // A restart we learn second-hand: new state, and alive only once heard directly.
            let liveness = self.unconfirmed();
            let m = &mut self.members[idx];
            m.generation = d.generation;
            m.incarnation = 0;
            m.state = Arc::new(NodeState::default());
            Self::transition(&mut self.counts, &mut self.left_queue, m, liveness);
            m.addr = d.addr;
            self.to_confirm.push_back(d.id);
            self.arm_suspicion(idx);
        }
        let m = &mut self.members[idx];
        let prev = m.state.max_version();
        let Some(changed) = Arc::make_mut(&mut m.state).apply(d.from_version, d.entries) else {
            return;
        };
        let advanced = m.state.max_version() > prev;
        if m.addr != d.addr && m.generation == d.generation {
            m.addr = d.addr;
        }
        let new_sub = subject_hash(m.id, m.generation, m.state.max_version());
        let new_view = subject_hash(m.id, m.generation, is_left(&m.state));
        self.bucket_hash[bucket_of(d.id)] ^= old_sub ^ new_sub;
        self.view_hash ^= old_view ^ new_view;
        let (id, generation, inc, left) =
            (m.id, m.generation, parse_inc(&m.state), is_left(&m.state) == 1);
        if advanced {
            self.note_recent(id, prev);
        }
        if changed.is_empty() {
            return;
        }
        self.events.push_back(Event::StateChanged { id, keys: changed });
        // The state is the node's own word: a higher incarnation refutes, `left` leaves.
        if left {
            self.on_rumor(Rumor::Left { id, generation, incarnation: inc });
        } else if inc > self.members[idx].incarnation {
            let addr = self.members[idx].addr;
            self.on_rumor(Rumor::Alive { id, generation, incarnation: inc, addr });
        }
    }

    // ----- liveness (SWIM + Lifeguard) ------------------------------------------------------

    /// Every message is its sender's own word about itself, and a heartbeat.
    fn on_header(&mut self, h: &Header) {
        let d = Digest { id: h.id, generation: h.generation, max_version: 0 };
        if self.is_forgotten(&d) {
            return;
        }
        let Some(&i) = self.index.get(&h.id) else {
            let idx = self.insert_member(Member {
                id: h.id,
                addr: h.addr,
                generation: h.generation,
                incarnation: h.incarnation,
                liveness: Liveness::Alive,
                state: Arc::new(NodeState::default()),
                phi: Some(Box::default()),
            });
            self.heartbeat(idx);
            self.member_up(idx);
            self.broadcasts.push(Rumor::Alive {
                id: h.id,
                generation: h.generation,
                incarnation: h.incarnation,
                addr: h.addr,
            });
            return;
        };
        let i = i as usize;
        let m = &self.members[i];
        if h.generation < m.generation {
            return; // a message from before a restart
        }
        let news = h.generation > m.generation || h.incarnation > m.incarnation;
        if news || matches!(&m.liveness, Liveness::Suspect(s) if s.unconfirmed) {
            let r = Rumor::Alive {
                id: h.id,
                generation: h.generation,
                incarnation: h.incarnation,
                addr: h.addr,
            };
            self.on_rumor_heard(r, true);
        }
        let now = self.now;
        let m = &mut self.members[i];
        if m.addr != h.addr && m.generation == h.generation {
            m.addr = h.addr;
        }
        // Someone we consider down or suspect is talking to us: tell it, so it refutes.
        let tell = match &mut m.liveness {
            Liveness::Down { told } if told.is_none_or(|t| now - t >= self.cfg.gossip_interval) => {
                *told = Some(now);
                Some(Rumor::Down {
                    id: m.id,
                    generation: m.generation,
                    incarnation: m.incarnation,
                    from: self.me.id,
                })
            }
            _ => None,
        };
        self.heartbeat(i);
        if let Some(r) = tell {
            let addr = self.members[i].addr;
            self.send_rumor_to(addr, r);
        }
    }

    fn heartbeat(&mut self, i: usize) {
        let now = self.now;
        self.members[i].phi.get_or_insert_with(Box::<Phi>::default).heartbeat(now);
    }

    fn send_rumor_to(&mut self, to: SocketAddr, r: Rumor) {
        let msg = Message { from: self.header(), rumors: vec![r], body: Body::Rumors };
        self.push_transmit(to, msg);
    }

    fn on_rumor(&mut self, r: Rumor) {
        self.on_rumor_heard(r, false)
    }

    /// `direct`: the rumour is the subject's own message to us, not news relayed by others.
    fn on_rumor_heard(&mut self, r: Rumor, direct: bool) {
        if r.subject() == self.me.id {
            return self.rumor_about_me(r);
        }
        let now = self.now;
        let idx = match self.index.get(&r.subject()) {
            Some(&i) => i as usize,
            None => {
                // Only an Alive rumour introduces a member: it is the member's own word, and
                // rumours are short-lived. Accusations about strangers are dropped.
                let Rumor::Alive { id, generation, incarnation, addr } = r else { return };
                if self.is_forgotten(&Digest { id, generation, max_version: 0 }) {
                    return;
                }
                // Its own message makes it alive; relayed news only makes it a member to ask
                // (L2): the news may predate its crash.
                let liveness = if direct { Liveness::Alive } else { self.unconfirmed() };
                let idx = self.insert_member(Member {
                    id,
                    addr,
                    generation,
                    incarnation,
                    liveness,
                    state: Arc::new(NodeState::default()),
                    phi: None,
                });
                if direct {
                    self.member_up(idx);
                } else {
                    self.arm_suspicion(idx);
                    self.to_confirm.push_back(id);
                }
                self.broadcasts.push(r);
                return;
            }
        };
        let (generation, incarnation) = match &r {
            Rumor::Alive { generation, incarnation, .. }
            | Rumor::Suspect { generation, incarnation, .. }
            | Rumor::Down { generation, incarnation, .. }
            | Rumor::Left { generation, incarnation, .. } => (*generation, *incarnation),
        };
        let m = &self.members[idx];
        if generation < m.generation {
            return;
        }
        let newer_gen = generation > m.generation;
        if newer_gen {
            // A new generation: the state we hold belongs to the old one.
            let old_sub = subject_hash(m.id, m.generation, m.state.max_version());
            let old_view = subject_hash(m.id, m.generation, is_left(&m.state));
            let m = &mut self.members[idx];
            m.generation = generation;
            m.incarnation = 0;
            m.state = Arc::new(NodeState::default());
            let new_sub = subject_hash(m.id, m.generation, 0);
            let new_view = subject_hash(m.id, m.generation, 0);
            self.bucket_hash[bucket_of(m.id)] ^= old_sub ^ new_sub;
            self.view_hash ^= old_view ^ new_view;
        }
        let m = &self.members[idx];
        let cur = m.incarnation;
        match r {
            Rumor::Alive { addr, .. } => {
                let revives = match &m.liveness {
                    Liveness::Left { .. } => newer_gen,
                    Liveness::Suspect(s) if s.unconfirmed => incarnation >= cur || newer_gen,
                    _ => incarnation > cur || newer_gen,
                };
                if !revives {
                    return;
                }
                // Relayed news cannot bring back a member we saw die, nor confirm one we never
                // heard from: it may predate a crash (a refutation still spreading when its
                // sender died). Keep the incarnation, and let the member answer for itself.
                let unheard =
                    !m.liveness.confirmed_alive() && !matches!(m.liveness, Liveness::Left { .. });
                if !direct && !newer_gen && unheard {
                    let was_down = matches!(m.liveness, Liveness::Down { .. });
                    let liveness = self.unconfirmed();
                    let m = &mut self.members[idx];
                    m.incarnation = incarnation;
                    m.addr = addr;
                    // Queue one confirmation ping per transition, not one per relayed copy.
                    if was_down {
                        Self::transition(&mut self.counts, &mut self.left_queue, m, liveness);
                        self.arm_suspicion(idx);
                        self.to_confirm.push_back(r.subject());
                    }
                    if incarnation > cur {
                        self.broadcasts.push(r);
                    }
                    return;
                }
                let was_alive = m.liveness.confirmed_alive() && !newer_gen;
                let m = &mut self.members[idx];
                m.incarnation = incarnation;
                m.addr = addr;
                Self::transition(&mut self.counts, &mut self.left_queue, m, Liveness::Alive);
                if !was_alive {
                    self.member_up(idx);
                }
                self.broadcasts.push(r);
            }
            Rumor::Suspect { from, .. } => {
                let k = self.cfg.suspicion_confirmations as usize;
                let confirm = match &m.liveness {
                    Liveness::Alive => {
                        if incarnation >= cur {
                            return self.start_suspicion(idx, incarnation, from);
                        }
                        return;
                    }
                    Liveness::Suspect(s) if s.unconfirmed || incarnation > cur => {
                        if incarnation >= cur {
                            return self.start_suspicion(idx, incarnation, from);
                        }
                        return;
                    }
                    Liveness::Suspect(s) => {
                        incarnation == cur
                            && !s.confirmations.contains(&from)
                            && s.confirmations.len() <= k
                    }
                    _ => false,
                };
                if !confirm {
                    return;
                }
                let c = match &m.liveness {
                    Liveness::Suspect(s) => s.confirmations.len(),
                    _ => return,
                };
                let timeout = self.suspicion_timeout(c);
                let Liveness::Suspect(s) = &mut self.members[idx].liveness else { return };
                s.confirmations.push(from);
                let deadline = s.since + timeout;
                let earlier = deadline < s.deadline;
                if earlier {
                    s.deadline = deadline;
                }
                if earlier {
                    self.arm(deadline.max(now), Timer::Suspicion { id: r.subject() });
                }
                // Lifeguard: re-gossip only the first K confirmations.
                self.broadcasts.push(r);
            }
            Rumor::Down { .. } => {
                let accept = match &m.liveness {
                    Liveness::Alive | Liveness::Suspect(_) => incarnation >= cur || newer_gen,
                    Liveness::Down { .. } => incarnation > cur,
                    Liveness::Left { .. } => false,
                };
                if !accept {
                    return;
                }
                let was_down = matches!(m.liveness, Liveness::Down { .. });
                let m = &mut self.members[idx];
                m.incarnation = incarnation;
                Self::transition(
                    &mut self.counts,
                    &mut self.left_queue,
                    m,
                    Liveness::Down { told: None },
                );
                if !was_down {
                    self.events.push_back(Event::MemberDown { id: r.subject(), incarnation });
                }
                self.broadcasts.push(r);
            }
            Rumor::Left { .. } => {
                if matches!(m.liveness, Liveness::Left { .. }) && !newer_gen {
                    return;
                }
                if incarnation < cur && !newer_gen {
                    return;
                }
                let m = &mut self.members[idx];
                m.incarnation = incarnation;
                Self::transition(
                    &mut self.counts,
                    &mut self.left_queue,
                    m,
                    Liveness::Left { until: now + self.cfg.left_ttl },
                );
                self.events.push_back(Event::MemberLeft { id: r.subject() });
                self.record_left(idx);
                self.broadcasts.push(r);
            }
        }
    }

    fn rumor_about_me(&mut self, r: Rumor) {
        let (generation, incarnation) = match r {
            Rumor::Suspect { generation, incarnation, .. }
            | Rumor::Down { generation, incarnation, .. } => (generation, incarnation),
            _ => return,
        };
        if generation != self.me.generation
            || incarnation < self.me.incarnation
            || self.leaving.is_some()
        {
            return;
        }
        // Refute (SWIM §4.2): only we can declare ourselves alive, with a higher incarnation.
        // None is higher than the last one, which no node reaches by refuting (a bogus rumour):
        // it stands, rather than this node's incarnation wrapping to 0.
        let Some(next) = incarnation.checked_add(1) else { return };
        self.me.incarnation = next;
        self.set_local(keys::INCARNATION, self.me.incarnation.to_string());
        self.broadcasts.push(self.alive_rumor());
        self.stats.refutations += 1;
        // Lifeguard: being suspected hints that we are the slow one.
        self.lhm = (self.lhm + 1).min(self.cfg.max_local_health);
    }

    fn alive_rumor(&self) -> Rumor {
        Rumor::Alive {
            id: self.me.id,
            generation: self.me.generation,
            incarnation: self.me.incarnation,
            addr: self.me.addr,
        }
    }

    fn member_up(&mut self, idx: usize) {
        let m = &self.members[idx];
        self.events.push_back(Event::MemberUp {
            id: m.id,
            generation: m.generation,
            incarnation: m.incarnation,
        });
    }

    fn unconfirmed(&self) -> Liveness {
        let max = self.suspicion_timeout(0);
        Liveness::Suspect(Box::new(Suspicion {
            since: self.now,
            deadline: self.now + max,
            confirmations: Vec::new(),
            unconfirmed: true,
        }))
    }

    fn arm_suspicion(&mut self, idx: usize) {
        if let Liveness::Suspect(s) = &self.members[idx].liveness {
            let (at, id) = (s.deadline, self.members[idx].id);
            self.arm(at, Timer::Suspicion { id });
        }
    }

    fn start_suspicion(&mut self, idx: usize, incarnation: u64, from: NodeId) {
        let now = self.now;
        let deadline = now + self.suspicion_timeout(0);
        let m = &mut self.members[idx];
        m.incarnation = incarnation;
        let suspicion =
            Suspicion { since: now, deadline, confirmations: vec![from], unconfirmed: false };
        Self::transition(
            &mut self.counts,
            &mut self.left_queue,
            m,
            Liveness::Suspect(Box::new(suspicion)),
        );
        let (id, generation, addr) = (m.id, m.generation, m.addr);
        self.events.push_back(Event::MemberSuspect { id, incarnation });
        self.arm(deadline, Timer::Suspicion { id });
        let rumor = Rumor::Suspect { id, generation, incarnation, from };
        // Lifeguard's buddy system: tell the suspect at once so it can refute.
        if from == self.me.id
            || self.members[idx].heard().is_some_and(|t| now - t < self.cfg.probe_interval)
        {
            self.send_rumor_to(addr, rumor.clone());
        }
        self.broadcasts.push(rumor);
    }

    /// Lifeguard's dynamic suspicion timeout: from `max` down to `min` as `c` independent
    /// confirmations arrive, logarithmically.
    fn suspicion_timeout(&self, c: usize) -> Duration {
        let n = (self.index.len() + 1) as f64;
        let min = self.cfg.probe_interval.as_secs_f64()
            * self.cfg.suspicion_min_mult
            * n.log10().max(1.0);
        let max = min * self.cfg.suspicion_max_mult;
        let k = self.cfg.suspicion_confirmations as f64;
        let frac = ((c as f64) + 1.0).ln() / (k + 1.0).ln();
        Duration::from_secs_f64((max - (max - min) * frac).max(min))
    }

    fn suspicion_fired(&mut self, id: NodeId) {
        let Some(&i) = self.index.get(&id) else { return };
        let i = i as usize;
        let now = self.now;
        let m = &self.members[i];
        let Liveness::Suspect(s) = &m.liveness else { return };
        if s.deadline > now {
            let at = s.deadline;
            self.arm(at, Timer::Suspicion { id });
            return;
        }
        let (generation, incarnation, unconfirmed) = (m.generation, m.incarnation, s.unconfirmed);
        let m = &mut self.members[i];
        Self::transition(&mut self.counts, &mut self.left_queue, m, Liveness::Down { told: None });
        self.events.push_back(Event::MemberDown { id, incarnation });
        let rumor = Rumor::Down { id, generation, incarnation, from: self.me.id };
        if unconfirmed {
            // It never answered us: not news for the cluster, but the member itself must hear
            // it, so that if it is alive it refutes (and answers) with a higher incarnation.
            let addr = self.members[i].addr;
            self.send_rumor_to(addr, rumor);
        } else {
            self.broadcasts.push(rumor);
        }
    }

    fn left_rumor(&self) -> Rumor {
        Rumor::Left {
            id: self.me.id,
            generation: self.me.generation,
            incarnation: self.me.incarnation,
        }
    }

    /// While leaving: pings every member that has not yet confirmed the leave, each ping
    /// carrying the `Left` rumour (whatever the rumour's retransmit budget says). Members that
    /// went down meanwhile are no longer waited for.
    fn leave_pings(&mut self) {
        let Some(l) = self.leaving.as_mut() else { return };
        let members = &self.members;
        let index = &self.index;
        l.unconfirmed
            .retain(|id| index.get(id).is_some_and(|&i| members[i as usize].liveness.reachable()));
        let targets: Vec<(NodeId, SocketAddr)> = l
            .unconfirmed
            .iter()
            .filter_map(|id| self.index.get(id).map(|&i| (*id, self.members[i as usize].addr)))
            .collect();
        for (target, addr) in targets {
            let seq = self.next_seq();
            let msg = Message {
                from: self.header(),
                rumors: vec![self.left_rumor()],
                body: Body::Ping { seq, target },
            };
            self.push_transmit(addr, msg);
        }
    }

    /// Whether a leave may end here (the driver stops the node then): every member that was
    /// reachable when it started has confirmed it (or gone down since), or `cfg.leave_linger`
    /// has passed and at least one did (the members that heard record `left` in their state of
    /// this node, which push-pull carries to the rest), or `cfg.leave_give_up` has passed.
    /// False when not leaving.
    pub fn leave_done(&self) -> bool {
        let Some(l) = &self.leaving else { return false };
        let waited = self.now.saturating_duration_since(l.since);
        l.unconfirmed.is_empty()
            || (waited >= self.cfg.leave_linger && l.confirmed > 0)
            || waited >= self.cfg.leave_give_up
    }

    /// While leaving: the members that have not confirmed it yet.
    pub fn leave_unconfirmed(&self) -> usize {
        self.leaving.as_ref().map_or(0, |l| l.unconfirmed.len())
    }

    fn probe_round(&mut self) {
        if let Some(p) = self.probe.take() {
            self.finish_probe(p);
        }
        if self.leaving.is_some() {
            self.leave_pings();
            return;
        }
        let Some(idx) = self.next_probe_target() else { return };
        let seq = self.next_seq();
        let (target, addr) = (self.members[idx].id, self.members[idx].addr);
        self.probe = Some(Probe {
            seq,
            target,
            started: self.now,
            acked: false,
            helpers: 0,
            nacks: 0,
            inconclusive: false,
        });
        self.stats.probes += 1;
        self.send(addr, Body::Ping { seq, target });
        let at = self.now + self.probe_timeout();
        self.arm(at, Timer::ProbeTimeout { seq });
    }

    fn finish_probe(&mut self, p: Probe) {
        let Some(&i) = self.index.get(&p.target) else { return };
        let i = i as usize;
        // Any message the target sent us itself during the probe is as good as an ack.
        let heard = self.members[i].heard().is_some_and(|t| t >= p.started);
        if p.acked || heard {
            self.lhm = self.lhm.saturating_sub(1);
            return;
        }
        if p.inconclusive || !self.members[i].liveness.reachable() {
            return;
        }
        self.stats.probes_failed += 1;
        // Lifeguard: missing nacks mean our own links are the problem.
        let delta = if p.helpers > 0 { (p.helpers - p.nacks.min(p.helpers)) as u32 } else { 1 };
        self.lhm = (self.lhm + delta).min(self.cfg.max_local_health);
        let m = &self.members[i];
        let rumor = Rumor::Suspect {
            id: m.id,
            generation: m.generation,
            incarnation: m.incarnation,
            from: self.me.id,
        };
        self.on_rumor(rumor);
    }

    fn probe_timeout_fired(&mut self, seq: u64) {
        let Some(p) = self.probe.as_ref().filter(|p| p.seq == seq && !p.acked) else { return };
        let target = p.target;
        let Some(&ti) = self.index.get(&target) else { return };
        let target_addr = self.members[ti as usize].addr;
        let k = self.cfg.indirect_probes;
        let mut helpers = Vec::with_capacity(k);
        for _ in 0..k * 3 {
            if helpers.len() == k {
                break;
            }
            if let Some(h) = self.random_member(|l| matches!(l, Liveness::Alive)) {
                if self.members[h].id != target && !helpers.contains(&h) {
                    helpers.push(h);
                }
            }
        }
        for &h in &helpers {
            let addr = self.members[h].addr;
            self.send(addr, Body::PingReq { seq, target, target_addr });
        }
        // One more direct try: under loss it is as likely to get through as any relay.
        self.send(target_addr, Body::Ping { seq, target });
        if let Some(p) = self.probe.as_mut() {
            p.helpers = helpers.len();
        }
    }

    fn on_ping_ack(&mut self, seq: u64, target: NodeId) {
        if let Some(l) = self.leaving.as_mut().filter(|l| seq >= l.first_seq) {
            if let Ok(i) = l.unconfirmed.binary_search(&target) {
                l.unconfirmed.remove(i);
                l.confirmed += 1;
            }
        }
        if let Some(p) = self.probe.as_mut().filter(|p| p.seq == seq && p.target == target) {
            p.acked = true;
            return;
        }
        if let Some(r) = self.relays.remove(&seq) {
            if r.target == target {
                self.send(r.requester, Body::PingAck { seq: r.requester_seq, target });
            }
        }
    }

    fn next_probe_target(&mut self) -> Option<usize> {
        for _ in 0..2 * self.members.len() + 1 {
            if self.probe_pos >= self.probe_order.len() {
                self.probe_order = (0..self.members.len() as u32).collect();
                self.probe_order.shuffle(&mut self.rng);
                self.probe_pos = 0;
                if self.probe_order.is_empty() {
                    return None;
                }
            }
            let i = self.probe_order[self.probe_pos] as usize;
            self.probe_pos += 1;
            if self.members[i].liveness.reachable() {
                return Some(i);
            }
        }
        None
    }

    // ----- membership bookkeeping ----------------------------------------------------------

    fn insert_member(&mut self, m: Member) -> usize {
        let idx = self.members.len();
        let b = bucket_of(m.id);
        self.bucket_hash[b] ^= subject_hash(m.id, m.generation, m.state.max_version());
        self.view_hash ^= subject_hash(m.id, m.generation, is_left(&m.state));
        self.bucket_members[b].push(idx as u32);
        self.index.insert(m.id, idx as u32);
        self.counts[m.liveness.state() as usize] += 1;
        if let Liveness::Left { until } = m.liveness {
            self.left_queue.push_back((until, m.id));
        }
        self.members.push(m);
        // Probe the newcomer within this round of the order rather than after a full cycle.
        if self.probe_pos < self.probe_order.len() {
            let at = self.rng.gen_range(self.probe_pos..=self.probe_order.len());
            self.probe_order.insert(at, idx as u32);
        }
        idx
    }

    fn expire_tombstones(&mut self) {
        let now = self.now;
        while self.left_queue.front().is_some_and(|(until, _)| *until <= now) {
            let Some((_, id)) = self.left_queue.pop_front() else { break };
            let Some(&i) = self.index.get(&id) else { continue };
            let i = i as usize;
            let m = &self.members[i];
            // Only if it is still the same tombstone (not back in a new generation since).
            if !matches!(m.liveness, Liveness::Left { until } if until <= now) {
                continue;
            }
            let generation = m.generation;
            let sub = subject_hash(id, generation, m.state.max_version());
            let view = subject_hash(id, generation, is_left(&m.state));
            self.counts[MemberState::Left as usize] -= 1;
            self.bucket_hash[bucket_of(id)] ^= sub;
            self.view_hash ^= view;
            self.remove_member(i);
            // Remember for another TTL so lagging peers' digests cannot bring it back.
            self.forgotten.insert(id, (generation, now + self.cfg.left_ttl));
            self.events.push_back(Event::MemberForgotten { id });
        }
        if !self.forgotten.is_empty() {
            self.forgotten.retain(|_, (_, until)| *until > now);
        }
    }

    /// Gives slot `i` back: the member in it is dropped (its state and phi with it) and the last
    /// slot moves into it, so `members` holds exactly the members known now, not every id ever
    /// seen. Every structure holding slot numbers follows the move; hashes and counts are the
    /// caller's.
    fn remove_member(&mut self, i: usize) {
        let last = self.members.len() - 1;
        let gone = self.members.swap_remove(i);
        self.index.remove(&gone.id);
        self.bucket_members[bucket_of(gone.id)].retain(|&x| x as usize != i);
        let mut pos = 0;
        while pos < self.probe_order.len() {
            if self.probe_order[pos] as usize == i {
                self.probe_order.remove(pos);
                if pos < self.probe_pos {
                    self.probe_pos -= 1;
                }
            } else {
                pos += 1;
            }
        }
        if i == last {
            return;
        }
        let (moved, from, to) = (self.members[i].id, last as u32, i as u32);
        self.index.insert(moved, to);
        let holders =
            self.bucket_members[bucket_of(moved)].iter_mut().chain(self.probe_order.iter_mut());
        for x in holders.filter(|x| **x == from) {
            *x = to;
        }
    }

    /// Moves a member to another liveness state, keeping the per-state counts.
    fn transition(
        counts: &mut [usize; 4],
        left_queue: &mut VecDeque<(Instant, NodeId)>,
        m: &mut Member,
        to: Liveness,
    ) {
        counts[m.liveness.state() as usize] -= 1;
        counts[to.state() as usize] += 1;
        if let Liveness::Left { until } = to {
            left_queue.push_back((until, m.id));
        }
        m.liveness = to;
    }

    fn is_forgotten(&self, d: &Digest) -> bool {
        self.forgotten.get(&d.id).is_some_and(|(g, _)| d.generation <= *g)
    }

    fn random_member(&mut self, pred: impl Fn(&Liveness) -> bool) -> Option<usize> {
        let n = self.members.len();
        if n == 0 {
            return None;
        }
        for _ in 0..8 {
            let i = self.rng.gen_range(0..n);
            if pred(&self.members[i].liveness) {
                return Some(i);
            }
        }
        let all: Vec<usize> = (0..n).filter(|&i| pred(&self.members[i].liveness)).collect();
        all.choose(&mut self.rng).copied()
    }

    fn set_seeds(&mut self, seeds: Vec<SocketAddr>) {
        let me = self.me.addr;
        self.seeds = seeds.into_iter().filter(|s| *s != me).collect();
        self.seeds.sort();
        self.seeds.dedup();
    }

    /// A `Left` rumour is the member's last word: its state says `left` from now on too, as
    /// the leaver's own state does once it has set it. The rumour is retransmitted only a few
    /// times and the leaver stops soon after; push-pull syncs compare states, so without this a
    /// member the rumour missed (a partition, lost messages) would keep the leaver as `leaving`
    /// forever, and its membership digest would hide the disagreement. A member this node holds
    /// older state of ends up with `status = left` at a version of its own; a peer holding the
    /// leaver's full state sends the rest, and `left` wins either way.
    fn record_left(&mut self, idx: usize) {
        let m = &self.members[idx];
        if is_left(&m.state) == 1 {
            return;
        }
        let (id, generation, prev) = (m.id, m.generation, m.state.max_version());
        let old_sub = subject_hash(id, generation, prev);
        let old_view = subject_hash(id, generation, 0);
        self.note_recent(id, prev);
        let m = &mut self.members[idx];
        Arc::make_mut(&mut m.state).set_local(keys::STATUS, "left".into());
        let new_sub = subject_hash(id, generation, m.state.max_version());
        self.bucket_hash[bucket_of(id)] ^= old_sub ^ new_sub;
        self.view_hash ^= old_view ^ subject_hash(id, generation, 1);
        self.events.push_back(Event::StateChanged { id, keys: vec![keys::STATUS.to_owned()] });
    }

    fn set_local(&mut self, key: &str, value: String) {
        if self.local.get(key) == Some(value.as_str()) {
            return;
        }
        let (id, generation) = (self.me.id, self.me.generation);
        let old_sub = subject_hash(id, generation, self.local.max_version());
        let old_view = subject_hash(id, generation, is_left(&self.local));
        self.note_recent(id, self.local.max_version());
        Arc::make_mut(&mut self.local).set_local(key, value);
        self.bucket_hash[bucket_of(id)] ^=
            old_sub ^ subject_hash(id, generation, self.local.max_version());
        self.view_hash ^= old_view ^ subject_hash(id, generation, is_left(&self.local));
    }

    /// Publishes the view digest when it changed; at most once per tick, so a burst of
    /// membership changes costs one state update, not one each.
    fn publish_digest(&mut self) {
        let d = self.view_digest();
        if self.local.get(keys::DIGEST) != Some(d.as_str()) {
            self.set_local(keys::DIGEST, d);
        }
    }

    // ----- output --------------------------------------------------------------------------

    fn header(&self) -> Header {
        self.me.clone()
    }

    fn send(&mut self, to: SocketAddr, body: Body) {
        let n = self.index.len() as f64 + 2.0;
        let limit = self.cfg.retransmit_mult * n.log10().ceil().max(1.0) as u32;
        let rumors = self.broadcasts.take(self.cfg.piggyback_bytes, limit);
        let msg = Message { from: self.header(), rumors, body };
        self.push_transmit(to, msg);
    }

    fn push_transmit(&mut self, to: SocketAddr, msg: Message) {
        let payload = msg.encode();
        self.stats.messages_sent += 1;
        self.stats.bytes_sent += payload.len() as u64;
        self.transmits.push_back(Transmit { to, payload });
    }
}

fn bucket_of(id: NodeId) -> usize {
    (id.low64() % BUCKETS as u64) as usize
}

fn is_left(state: &NodeState) -> u64 {
    u64::from(state.get(keys::STATUS) == Some("left"))
}

fn parse_inc(state: &NodeState) -> u64 {
    state.get(keys::INCARNATION).and_then(|v| v.parse().ok()).unwrap_or(0)
}
