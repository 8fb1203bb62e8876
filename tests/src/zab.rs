//! The ZAB core as a simulated [`Process`], a state machine that fingerprints its history, and
//! the checker that judges a run: at most one established leader per epoch; every server applies
//! the same transactions in the same order (nothing from an abandoned epoch); nothing a client
//! was told is committed is lost; after healing, every server converges.
//!
//! The state machine is a hash chain: after each transaction its state is
//! `blake3(previous state ‖ zxid ‖ txn)`. Two servers in the same state at the same zxid have
//! applied the same transactions in the same order, so the checker compares one 32-byte value
//! per transaction instead of whole histories.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use starling_zab::disk::MemDisk;
use starling_zab::{
    Config, Event, Msg, NodeId, Persist, Pipeline, Role, SnapshotJob, StateMachine, Zab, Zxid,
};

use crate::sim::{sim_addr, NetConfig, Process, Sim};

/// The node id of simulator slot `i`.
pub fn zab_id(i: usize) -> NodeId {
    // In the high bits, so that the short form in logs (`Debug`) tells servers apart.
    NodeId((i as u128 + 1) << 96)
}

fn slot_of(id: NodeId) -> usize {
    ((id.0 >> 96) as usize).saturating_sub(1)
}

/// `ZAB_TRACE=1`: print every server's events (with `SEED=...` to follow one run).
fn trace() -> bool {
    std::env::var_os("ZAB_TRACE").is_some()
}

/// What the checker learned, shared by every simulated server of a run.
#[derive(Debug, Default)]
pub struct Checker {
    /// The committed history: the chain state after each zxid, as the first server applied it.
    pub chain: BTreeMap<Zxid, [u8; 32]>,
    /// The established leader of each epoch.
    pub leaders: HashMap<u32, NodeId>,
    /// Proposals acknowledged to clients as committed: zxid → tag.
    pub acked: BTreeMap<Zxid, u64>,
    /// Proposals whose outcome is unknown (their leader stepped down first).
    pub unknown: u64,
    pub violations: Vec<String>,
    /// When each server last became an established leader, and the first commit after it.
    pub established: Vec<(Instant, NodeId, u32)>,
    pub commits: Vec<Instant>,
    pub errors: u64,
    /// Snapshots servers took from their leader (SNAP syncs).
    pub restores: u64,
    /// Snapshot jobs handed back to their core (encoded "off its loop").
    pub snapshots: u64,
    /// Simulated time of the step being checked.
    pub now: Option<Instant>,
}

impl Checker {
    fn violation(&mut self, what: String) {
        if self.violations.len() < 50 {
            let at = self.now.map(|t| format!("{t:?}")).unwrap_or_default();
            self.violations.push(format!("[{at}] {what}"));
        }
    }

    /// A server reached `state` at `zxid` by applying a transaction on top of `prev`.
    fn applied(&mut self, node: NodeId, prev: Zxid, zxid: Zxid, state: [u8; 32]) {
        if zxid <= prev {
            self.violation(format!("{node:?} applied {zxid:?} after {prev:?}"));
            return;
        }
        match self.chain.get(&zxid) {
            Some(s) if *s == state => {}
            Some(_) => self.violation(format!(
                "{node:?} applied {zxid:?} on top of a history other servers did not have"
            )),
            None => {
                let tip = self.chain.keys().next_back().copied().unwrap_or(Zxid::ZERO);
                if prev != tip {
                    self.violation(format!(
                        "{node:?} applied {zxid:?} after {prev:?}, but the committed history \
                             continues after {tip:?} (a transaction skipped, or one from an \
                             abandoned epoch)"
                    ));
                } else {
                    self.chain.insert(zxid, state);
                }
            }
        }
    }

    /// A server's state was replaced by a snapshot at `zxid`.
    fn restored(&mut self, node: NodeId, zxid: Zxid, state: [u8; 32]) {
        if zxid == Zxid::ZERO {
            return;
        }
        if self.chain.get(&zxid) != Some(&state) {
            self.violation(format!(
                "{node:?} restored a snapshot at {zxid:?} that is not committed history"
            ));
        }
    }

    fn event(&mut self, now: Instant, node: NodeId, e: Event) {
        self.now = Some(now);
        match e {
            Event::Role(Role::Leading { epoch, established: true }) => {
                if let Some(other) = self.leaders.insert(epoch, node) {
                    if other != node {
                        self.violation(format!(
                            "two leaders established epoch {epoch}: {other:?} and {node:?}"
                        ));
                    }
                }
                self.established.push((now, node, epoch));
            }
            Event::Committed { tag, zxid } => {
                self.acked.insert(zxid, tag);
                self.commits.push(now);
            }
            Event::Unknown { .. } => self.unknown += 1,
            Event::Restored { .. } => self.restores += 1,
            Event::Error(_) => self.errors += 1,
            Event::Anomaly(why) => self.violation(format!("{node:?}: {why}")),
            _ => {}
        }
    }
}

/// A state machine with nothing in it, for runs that only check ZAB itself.
#[derive(Debug, Default)]
pub struct Nothing;

impl StateMachine for Nothing {
    type Image = ();
    fn apply(&mut self, _: Zxid, _: &[u8]) {}
    fn image(&self) {}
    fn encode(_: (), _: usize) -> Vec<u8> {
        Vec::new()
    }
    fn restore(&mut self, _: Zxid, _: &[u8]) -> Result<(), String> {
        Ok(())
    }
}

/// Wraps a state machine: keeps a fingerprint of its whole history (a hash chain) and reports
/// every step to the checker, then passes the transaction on.
#[derive(Debug)]
pub struct Checked<S> {
    pub inner: S,
    pub node: NodeId,
    pub last: Zxid,
    pub state: [u8; 32],
    pub count: u64,
    checker: Rc<RefCell<Checker>>,
}

/// The fingerprint alone.
pub type Chain = Checked<Nothing>;

impl<S> Checked<S> {
    pub fn new(inner: S, node: NodeId, checker: Rc<RefCell<Checker>>) -> Checked<S> {
        Checked { inner, node, last: Zxid::ZERO, state: [0; 32], count: 0, checker }
    }
}

impl<S: StateMachine> StateMachine for Checked<S> {
    fn apply(&mut self, zxid: Zxid, txn: &[u8]) {
        let mut h = blake3::Hasher::new();
        h.update(&self.state);
        h.update(&zxid.0.to_be_bytes());
        h.update(txn);
        let prev = self.last;
        self.state = *h.finalize().as_bytes();
        self.last = zxid;
        self.count += 1;
        self.checker.borrow_mut().applied(self.node, prev, zxid, self.state);
        self.inner.apply(zxid, txn);
    }

    type Image = (Zxid, u64, [u8; 32], S::Image);

    fn image(&self) -> Self::Image {
        (self.last, self.count, self.state, self.inner.image())
    }

    fn encode((last, count, state, inner): Self::Image, size_hint: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(48);
        out.extend_from_slice(&last.0.to_be_bytes());
        out.extend_from_slice(&count.to_be_bytes());
        out.extend_from_slice(&state);
        out.extend_from_slice(&S::encode(inner, size_hint.saturating_sub(48)));
        out
    }

    fn restore(&mut self, zxid: Zxid, snapshot: &[u8]) -> Result<(), String> {
        if snapshot.len() < 48 {
            return Err(format!("{} bytes, shorter than the 48-byte header", snapshot.len()));
        }
        let last = Zxid(u64::from_be_bytes(snapshot[..8].try_into().map_err(|_| "zxid")?));
        if last != zxid {
            return Err(format!("snapshot of {last:?} labelled {zxid:?}"));
        }
        self.inner.restore(zxid, &snapshot[48..])?;
        self.last = last;
        self.count = u64::from_be_bytes(snapshot[8..16].try_into().map_err(|_| "count")?);
        self.state.copy_from_slice(&snapshot[16..48]);
        self.checker.borrow_mut().restored(self.node, zxid, self.state);
        Ok(())
    }
}

/// One simulated server: the core, its disk (which outlives crashes) and its outbox.
#[derive(Debug)]
pub struct ZabProc<S: StateMachine = Nothing> {
    pub zab: Zab<Checked<S>>,
    pub disk: Rc<RefCell<MemDisk>>,
    checker: Rc<RefCell<Checker>>,
    out: VecDeque<(SocketAddr, Vec<u8>)>,
    pub decode_errors: u64,
    /// A snapshot being encoded "on another thread": handed back when its time comes (up to
    /// 200 ms later, one in eight up to 3 s, so transactions, elections and SNAPs happen
    /// meanwhile); lost in a crash.
    encoding: Option<(Instant, Encoding<S>)>,
    /// Batches being written (see [`starling_zab::Ready`]): each is on disk only at its time
    /// (up to 2 ms after the one before), lost in a crash with every later one. Input goes on
    /// meanwhile, as in `starlingd`; which messages wait for which write is the
    /// [`Pipeline`]'s.
    pipeline: Pipeline,
    writes: VecDeque<Writing>,
    /// How long each write takes (`None`: up to 2 ms, at random); a test sets it.
    pub write_time: Option<Duration>,
    rng: ChaCha8Rng,
}

/// A write in progress: when it is done, its sequence number and what it persists.
#[derive(Debug)]
struct Writing {
    at: Instant,
    seq: u64,
    persist: Vec<Persist>,
}

/// A snapshot job in flight (a type of its own: `derive(Debug)` would ask the image to be
/// `Debug`).
pub struct Encoding<S: StateMachine>(u64, SnapshotJob<<Checked<S> as StateMachine>::Image>);

impl<S: StateMachine> std::fmt::Debug for Encoding<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.1.fmt(f)
    }
}

/// Makes a server's (empty) state machine.
pub type Make<S> = Rc<dyn Fn() -> S>;

impl<S: StateMachine> ZabProc<S> {
    /// Starts (or restarts) server `i` on `disk`.
    pub fn start(
        i: usize,
        cfg: Config,
        disk: Rc<RefCell<MemDisk>>,
        (checker, make): (Rc<RefCell<Checker>>, Make<S>),
        seed: u64,
        now: Instant,
    ) -> ZabProc<S> {
        let id = zab_id(i);
        checker.borrow_mut().now = Some(now);
        let persisted = disk.borrow().load();
        let sm = Checked::new(make(), id, checker.clone());
        let zab = match Zab::new(cfg, id, sm, persisted, seed, now) {
            Ok(z) => z,
            Err(e) => panic!("server {id:?} cannot start from its disk: {e}"),
        };
        let mut p = ZabProc {
            zab,
            disk,
            checker,
            out: VecDeque::new(),
            decode_errors: 0,
            encoding: None,
            pipeline: Pipeline::default(),
            writes: VecDeque::new(),
            write_time: None,
            rng: ChaCha8Rng::seed_from_u64(seed ^ 0x5a9_5eed),
        };
        p.pump(now);
        p
    }

    /// Saves the snapshot being taken and tells the core, once its time has come (one save in
    /// fifty fails, as on a full disk).
    fn encoded(&mut self, now: Instant) {
        if self.encoding.as_ref().is_some_and(|(at, _)| *at <= now) {
            if let Some((_, Encoding(gen, job))) = self.encoding.take() {
                let data = <Checked<S> as StateMachine>::encode(job.image, job.size_hint);
                let saved = !self.rng.gen_ratio(1, 50)
                    && self.disk.borrow_mut().save_snapshot(
                        gen,
                        job.zxid,
                        std::sync::Arc::new(data.clone()),
                    );
                if saved {
                    self.zab.snapshot_saved(job.ticket, data);
                    self.checker.borrow_mut().snapshots += 1;
                } else {
                    self.zab.snapshot_failed(job.ticket);
                }
            }
        }
    }

    /// Takes the core's batches until it has nothing more to say: reports their events, sends
    /// what may leave now, and queues their writes.
    fn pump(&mut self, now: Instant) {
        self.encoded(now);
        loop {
            if let Some(job) = self.zab.snapshot_job() {
                // Mostly quick; one in eight slow enough for elections and SNAPs to pass it.
                let ms = if self.rng.gen_ratio(1, 8) {
                    self.rng.gen_range(200..3000)
                } else {
                    self.rng.gen_range(0..200)
                };
                let at = now + Duration::from_millis(ms);
                let gen = self.disk.borrow().snapshot_gen;
                self.encoding = Some((at, Encoding(gen, job)));
            }
            let r = self.zab.ready();
            if r.is_empty() {
                break;
            }
            let t = self.pipeline.take(r);
            let me = self.zab.id();
            for e in t.events {
                if trace() {
                    eprintln!("{now:?} {me:?} {e:?}");
                }
                self.checker.borrow_mut().event(now, me, e);
            }
            self.send(t.send);
            if let Some((seq, persist)) = t.write {
                let took = match self.write_time {
                    Some(t) => t,
                    None => Duration::from_micros(self.rng.gen_range(0..2000)),
                };
                let after = self.writes.back().map_or(now, |w| w.at.max(now));
                self.writes.push_back(Writing { at: after + took, seq, persist });
            }
            if let Some(d) = t.durable {
                self.zab.advance_to(now, d);
            }
        }
    }

    fn send(&mut self, msgs: Vec<(NodeId, Msg)>) {
        for (to, msg) in msgs {
            self.out.push_back((sim_addr(slot_of(to)), msg.encode()));
        }
    }

    /// Whether a batch is being written.
    pub fn writing(&self) -> bool {
        self.pipeline.writing()
    }

    /// Finishes the writes whose time has come, in order: on disk, their messages out, the core
    /// told.
    fn finish_writing(&mut self, now: Instant) {
        let mut done = None;
        while self.writes.front().is_some_and(|w| w.at <= now) {
            let Some(w) = self.writes.pop_front() else { break };
            self.disk.borrow_mut().apply_all(&w.persist);
            done = Some(w.seq);
        }
        if let Some(seq) = done {
            let r = self.pipeline.written(seq);
            self.send(r.send);
            if let Some(d) = r.durable {
                self.zab.advance_to(now, d);
            }
            self.pump(now);
        }
    }

    /// A client's proposal, if this server leads.
    pub fn propose(&mut self, now: Instant, tag: u64, txn: Vec<u8>) -> bool {
        self.finish_writing(now);
        let ok = self.zab.propose(now, tag, txn).is_ok();
        self.pump(now);
        ok
    }

    fn message(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        let SocketAddr::V4(a) = from else { return };
        let o = a.ip().octets();
        let slot = ((o[1] as usize - 1) << 16) | ((o[2] as usize) << 8) | o[3] as usize;
        match Msg::decode(bytes) {
            Ok(m) => self.zab.handle_message(now, zab_id(slot), m),
            Err(_) => self.decode_errors += 1,
        }
    }
}

impl<S: StateMachine> Process for ZabProc<S> {
    fn handle_message(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        self.checker.borrow_mut().now = Some(now);
        self.finish_writing(now);
        self.message(now, from, bytes);
        self.pump(now);
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.checker.borrow_mut().now = Some(now);
        self.finish_writing(now);
        self.zab.handle_timeout(now);
        self.pump(now);
    }

    fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.out.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        [
            self.zab.poll_timeout(),
            self.encoding.as_ref().map(|(at, _)| *at),
            self.writes.front().map(|w| w.at),
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

/// An ensemble in the simulator, with its disks and its checker.
pub struct Ensemble<S: StateMachine = Nothing> {
    pub sim: Sim<ZabProc<S>>,
    make: Make<S>,
    pub disks: Vec<Rc<RefCell<MemDisk>>>,
    pub checker: Rc<RefCell<Checker>>,
    pub cfg: Config,
    pub proposed: u64,
    restarts: u64,
}

impl<S: StateMachine> std::fmt::Debug for Ensemble<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ensemble").field("servers", &self.disks.len()).finish()
    }
}

impl Ensemble<Nothing> {
    /// `voters` voters and `observers` observers, replicating nothing but ZAB's history.
    pub fn new(seed: u64, net: NetConfig, voters: usize, observers: usize, cfg: Config) -> Self {
        Ensemble::with_state(seed, net, (voters, observers), cfg, Rc::new(|| Nothing))
    }
}

impl<S: StateMachine + 'static> Ensemble<S> {
    /// `voters` voters and `observers` observers, each replicating a state machine `make` makes.
    pub fn with_state(
        seed: u64,
        net: NetConfig,
        (voters, observers): (usize, usize),
        cfg: Config,
        make: Make<S>,
    ) -> Self {
        let mut sim = Sim::new(seed, net);
        let cfg = Config { voters: (0..voters).map(zab_id).collect(), ..cfg };
        let checker = Rc::new(RefCell::new(Checker::default()));
        let mut disks = Vec::new();
        for i in 0..voters + observers {
            let disk = Rc::new(RefCell::new(MemDisk::default()));
            disks.push(disk.clone());
            let (c, ch, m) = (cfg.clone(), checker.clone(), make.clone());
            let now = sim.now();
            sim.add(|_| ZabProc::start(i, c, disk, (ch, m), seed ^ (i as u64 + 1), now));
        }
        Ensemble { sim, make, disks, checker, cfg, proposed: 0, restarts: 0 }
    }

    pub fn len(&self) -> usize {
        self.disks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.disks.is_empty()
    }

    /// The established leader, if exactly one live server is one.
    pub fn leader(&self) -> Option<usize> {
        let leaders: Vec<usize> = self
            .sim
            .up()
            .filter(|(_, p)| matches!(p.zab.role(), Role::Leading { established: true, .. }))
            .map(|(i, _)| i)
            .collect();
        (leaders.len() == 1).then(|| leaders[0])
    }

    /// Runs until some server is the established leader (at most `within`).
    pub fn wait_leader(&mut self, within: Duration) -> Option<usize> {
        let end = self.sim.now() + within;
        while self.sim.now() < end {
            if let Some(l) = self.leader() {
                return Some(l);
            }
            self.sim.run_for(Duration::from_millis(5));
        }
        None
    }

    /// Proposes `n` transactions at the leader `l`, one a millisecond.
    pub fn propose_n(&mut self, l: usize, n: usize) -> usize {
        let mut ok = 0;
        for _ in 0..n {
            ok += usize::from(self.propose_at(l));
            self.sim.run_for(Duration::from_millis(1));
        }
        ok
    }

    /// Proposes a unique transaction at server `i` (if it leads); true if it was accepted.
    pub fn propose_at(&mut self, i: usize) -> bool {
        let txn = format!("txn-{}", self.proposed + 1).into_bytes();
        self.propose_txn(i, txn).is_some()
    }

    /// Proposes `txn` at server `i` (if it leads); its tag if it was accepted.
    pub fn propose_txn(&mut self, i: usize, txn: Vec<u8>) -> Option<u64> {
        self.proposed += 1;
        let tag = self.proposed;
        let ok = self.sim.with_node(i, |p, now| p.propose(now, tag, txn)).unwrap_or(false);
        ok.then_some(tag)
    }

    /// Proposes `txn` at the leader (waiting up to `within` for one) until it commits: the
    /// leader that committed it and its zxid. A proposal whose leader stepped down first has an
    /// unknown outcome and is not retried (`None`).
    pub fn commit(&mut self, txn: Vec<u8>, within: Duration) -> Option<(usize, Zxid)> {
        let end = self.sim.now() + within;
        let (l, tag) = loop {
            if self.sim.now() >= end {
                return None;
            }
            if let Some(l) = self.leader() {
                if let Some(tag) = self.propose_txn(l, txn.clone()) {
                    break (l, tag);
                }
            }
            self.sim.run_for(Duration::from_millis(5));
        };
        while self.sim.now() < end {
            let found =
                self.checker.borrow().acked.iter().find(|(_, t)| **t == tag).map(|(z, _)| *z);
            if let Some(z) = found {
                return Some((l, z));
            }
            if !matches!(self.sim.node(l).map(|p| p.zab.role()), Some(Role::Leading { .. })) {
                return None;
            }
            self.sim.run_for(Duration::from_millis(1));
        }
        None
    }

    pub fn crash(&mut self, i: usize) {
        self.sim.crash(i);
    }

    /// Restarts server `i` from what its disk holds.
    pub fn restart(&mut self, i: usize) {
        self.restarts += 1;
        let (cfg, disk) = (self.cfg.clone(), self.disks[i].clone());
        let (ch, m) = (self.checker.clone(), self.make.clone());
        let now = self.sim.now();
        let seed = self.restarts.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ i as u64;
        self.sim.restart(i, |_| ZabProc::start(i, cfg, disk, (ch, m), seed, now));
    }

    /// Heals the network, restarts every crashed server, runs `quiet` with a trickle of writes
    /// and then without, and checks the run's end state: one leader; every server at the same
    /// state; every acknowledged transaction in the history. Returns the violations.
    pub fn settle_and_check(&mut self, quiet: Duration) -> Vec<String> {
        if trace() {
            eprintln!("{:?} settling", self.sim.now());
        }
        self.sim.heal();
        self.sim.net.loss = 0.0;
        self.sim.net.duplicate = 0.0;
        for i in 0..self.len() {
            if !self.sim.is_up(i) {
                self.restart(i);
            }
        }
        let end = self.sim.now() + quiet;
        while self.sim.now() < end {
            self.sim.run_for(Duration::from_millis(50));
        }
        // One write through the final leader, so every server learns the final commit point.
        let mut tries = 0;
        loop {
            if let Some(l) = self.leader() {
                if self.propose_at(l) {
                    break;
                }
            }
            tries += 1;
            if tries > 200 {
                break;
            }
            self.sim.run_for(Duration::from_millis(50));
        }
        if trace() {
            eprintln!(
                "{:?} final write after {tries} tries; leader {:?}",
                self.sim.now(),
                self.leader()
            );
        }
        self.sim.run_for(quiet);
        let mut out = self.checker.borrow().violations.clone();
        let Some(l) = self.leader() else {
            let roles: Vec<String> = self
                .sim
                .up()
                .map(|(i, p)| format!("{i}: {:?} {:?}", p.zab.role(), p.zab.status()))
                .collect();
            out.push(format!("no single established leader after healing: {roles:#?}"));
            return out;
        };
        let (tip, tip_state) = {
            let p = self.sim.node(l).map(|p| (p.zab.state().last, p.zab.state().state));
            p.unwrap_or((Zxid::ZERO, [0; 32]))
        };
        for (i, p) in self.sim.up() {
            let sm = p.zab.state();
            if (sm.last, sm.state) != (tip, tip_state) {
                out.push(format!(
                    "server {i} ended at {:?}, the leader at {tip:?} (role {:?})",
                    sm.last,
                    p.zab.role()
                ));
            }
        }
        let checker = self.checker.borrow();
        for (zxid, tag) in &checker.acked {
            if !checker.chain.contains_key(zxid) || *zxid > tip {
                out.push(format!("acknowledged proposal {tag} at {zxid:?} is not in the history"));
            }
        }
        out
    }
}

/// Counts of what a randomized run did.
#[derive(Debug, Default, Clone)]
pub struct RunReport {
    pub proposals: u64,
    pub committed: u64,
    pub unknown: u64,
    pub faults: BTreeMap<&'static str, u64>,
    pub violations: Vec<String>,
    /// Time from a leader's crash to the next commit by a new leader, per crash of a leader.
    pub failovers: Vec<Duration>,
    pub elections: u64,
    /// Snapshots encoded off the cores' loops; states replaced by a leader's SNAP.
    pub snapshots: u64,
    pub restores: u64,
}

/// A randomized run: `voters` voters and one observer, a client proposing every few
/// milliseconds, and faults (crashes of leaders and others, restarts from disk, partitions,
/// loss, duplication, stalls) for `secs` of simulated time; then healing and the final check.
pub fn random_run(seed: u64, voters: usize, secs: u64) -> RunReport {
    let net = NetConfig {
        latency_min: Duration::from_micros(200),
        latency_max: Duration::from_millis(3),
        loss: 0.0,
        duplicate: 0.0,
    };
    // Every other seed sends snapshots and DIFFs in pieces of at most 64 bytes.
    let chunk_bytes = if seed.is_multiple_of(2) { 64 } else { 1 << 20 };
    let cfg = Config { snapshot_every: 40, diff_chunk: 16, chunk_bytes, ..Config::default() };
    let mut e = Ensemble::new(seed, net, voters, 1, cfg);
    let mut rng = e.sim.rng();
    let mut report = RunReport::default();
    let end = e.sim.now() + Duration::from_secs(secs);
    let mut crashed: Vec<(usize, Instant)> = Vec::new();
    let mut leader_crash: Option<Instant> = None;
    let mut next_fault = e.sim.now() + Duration::from_millis(rng.gen_range(300..1500));
    let mut heal_at: Option<Instant> = None;
    let n = e.len();
    while e.sim.now() < end {
        e.sim.run_for(Duration::from_millis(rng.gen_range(1..8)));
        let now = e.sim.now();
        if let Some(l) = e.leader() {
            if e.propose_at(l) {
                report.proposals += 1;
            }
            if let Some(t) = leader_crash {
                let c = e.checker.borrow();
                if c.commits.last().is_some_and(|c| *c > t) {
                    report.failovers.push(*c.commits.last().unwrap_or(&now) - t);
                    leader_crash = None;
                }
            }
        }
        crashed.retain(|(i, at)| {
            if now >= *at {
                e.restart(*i);
                false
            } else {
                true
            }
        });
        if heal_at.is_some_and(|t| now >= t) {
            e.sim.heal();
            e.sim.net.loss = 0.0;
            e.sim.net.duplicate = 0.0;
            heal_at = None;
        }
        if now < next_fault {
            continue;
        }
        next_fault = now + Duration::from_millis(rng.gen_range(300..2000));
        let up: Vec<usize> = (0..n).filter(|i| e.sim.is_up(*i)).collect();
        if up.is_empty() {
            continue;
        }
        let fault = rng.gen_range(0..8);
        let name = match fault {
            0 | 1 => {
                // Crash the leader (most interesting), or anyone; at most a minority of voters
                // down at once so the ensemble can make progress.
                let down_voters = (0..voters).filter(|i| !e.sim.is_up(*i)).count();
                if down_voters + 1 > voters - e.cfg.quorum() {
                    continue;
                }
                let victim = if fault == 0 { e.leader() } else { None }
                    .unwrap_or_else(|| up[rng.gen_range(0..up.len())]);
                if e.leader() == Some(victim) && leader_crash.is_none() && heal_at.is_none() {
                    leader_crash = Some(now);
                }
                e.crash(victim);
                crashed.push((victim, now + Duration::from_millis(rng.gen_range(100..3000))));
                "crash"
            }
            2 => {
                let a = rng.gen_range(0..n);
                let mut groups = vec![vec![a], (0..n).filter(|i| *i != a).collect()];
                if rng.gen_bool(0.3) {
                    groups.swap(0, 1);
                }
                e.sim.partition(&groups);
                heal_at = Some(now + Duration::from_millis(rng.gen_range(200..2500)));
                leader_crash = None;
                "partition"
            }
            3 => {
                e.sim.net.loss = rng.gen_range(0.01..0.2);
                heal_at = Some(now + Duration::from_millis(rng.gen_range(200..2000)));
                leader_crash = None;
                "loss"
            }
            4 => {
                e.sim.net.duplicate = rng.gen_range(0.01..0.2);
                heal_at = Some(now + Duration::from_millis(rng.gen_range(200..2000)));
                "duplicate"
            }
            5 => {
                let i = up[rng.gen_range(0..up.len())];
                e.sim.stall(i, Duration::from_millis(rng.gen_range(50..800)));
                "stall"
            }
            7 => {
                // Power loss of the whole ensemble: only what each server persisted survives.
                for i in up {
                    e.crash(i);
                    crashed.retain(|(c, _)| *c != i);
                    crashed.push((i, now + Duration::from_millis(rng.gen_range(100..1000))));
                }
                leader_crash = None;
                "crash-all"
            }
            _ => {
                let a = rng.gen_range(0..n);
                let b = (a + 1 + rng.gen_range(0..n - 1)) % n;
                e.sim.block(a, b);
                heal_at = Some(now + Duration::from_millis(rng.gen_range(200..2000)));
                "one-way"
            }
        };
        *report.faults.entry(name).or_default() += 1;
    }
    report.violations = e.settle_and_check(Duration::from_secs(3));
    let c = e.checker.borrow();
    report.committed = c.acked.len() as u64;
    report.unknown = c.unknown;
    report.elections = c.established.len() as u64;
    report.snapshots = c.snapshots;
    report.restores = c.restores;
    report
}

/// Kills the leader of a calm ensemble under a steady stream of proposals and returns how long
/// the ensemble took, from the kill, to commit again under a new leader (`None`: not within
/// 10 s).
pub fn failover_run(seed: u64, voters: usize) -> Option<Duration> {
    let net = NetConfig {
        latency_min: Duration::from_micros(200),
        latency_max: Duration::from_millis(2),
        loss: 0.0,
        duplicate: 0.0,
    };
    let mut e = Ensemble::new(seed, net, voters, 0, Config::default());
    let mut rng = e.sim.rng();
    let warm = e.sim.now() + Duration::from_millis(rng.gen_range(1000..2000));
    while e.sim.now() < warm {
        if let Some(l) = e.leader() {
            e.propose_at(l);
        }
        e.sim.run_for(Duration::from_millis(1));
    }
    let old = e.leader()?;
    e.crash(old);
    let killed = e.sim.now();
    let committed_before = e.checker.borrow().commits.len();
    while e.sim.now() < killed + Duration::from_secs(10) {
        if let Some(l) = e.leader() {
            e.propose_at(l);
        }
        e.sim.run_for(Duration::from_millis(1));
        let c = e.checker.borrow();
        if c.commits.len() > committed_before {
            return c.commits.last().map(|t| *t - killed);
        }
    }
    None
}
