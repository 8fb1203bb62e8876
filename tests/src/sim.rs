//! A deterministic cluster simulator: many sans-IO nodes in one process, a virtual clock and a
//! seeded network with latency, loss, duplication, reordering, partitions (asymmetric too) and
//! clogging; nodes crash, restart and stall. Any protocol core that takes bytes and `now` and
//! hands back bytes and deadlines runs here through the [`Process`] trait.
//!
//! Every run is a pure function of its seed. A failing run prints `SEED=<n>`; setting the `SEED`
//! environment variable replays it exactly.

use std::collections::{BinaryHeap, HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A node as the simulator drives it.
pub trait Process {
    fn handle_message(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]);
    fn handle_timeout(&mut self, now: Instant);
    fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)>;
    fn poll_timeout(&self) -> Option<Instant>;
}

/// Network behaviour; every field can change while a simulation runs.
#[derive(Clone, Debug)]
pub struct NetConfig {
    /// One-way latency is uniform in `[latency_min, latency_max]`; the spread reorders messages.
    pub latency_min: Duration,
    pub latency_max: Duration,
    /// Probability a message is dropped.
    pub loss: f64,
    /// Probability a message is delivered twice (the copy with its own latency).
    pub duplicate: f64,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            latency_min: Duration::from_micros(500),
            latency_max: Duration::from_millis(5),
            loss: 0.0,
            duplicate: 0.0,
        }
    }
}

/// The seed to use: `SEED` from the environment when set (to replay a failure), else `default`.
pub fn seed_from_env(default: u64) -> u64 {
    std::env::var("SEED").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(default)
}

/// Prints the seed if the thread panics while this guard lives, so any failure can be replayed.
#[derive(Debug)]
pub struct SeedGuard(pub u64);

impl Drop for SeedGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("simulation failed: re-run with SEED={}", self.0);
        }
    }
}

#[derive(Debug)]
enum Ev {
    Deliver { to: usize, from: SocketAddr, bytes: Vec<u8> },
    Timer { node: usize },
    Wake { node: usize },
}

/// A scheduled event, ordered earliest first (then by scheduling order, for determinism).
#[derive(Debug)]
struct Queued {
    at: Instant,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Queued {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Queued {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

struct Slot<P> {
    addr: SocketAddr,
    proc: Option<P>,
    stalled_until: Option<Instant>,
    parked: Vec<(SocketAddr, Vec<u8>)>,
    timer_at: Option<Instant>,
    clog: Duration,
}

/// Delivery counters.
#[derive(Clone, Debug, Default)]
pub struct NetStats {
    pub sent: u64,
    pub delivered: u64,
    pub dropped: u64,
    pub bytes: u64,
}

type Check<P> = Box<dyn FnMut(usize, &P, Instant) -> Result<(), String>>;

/// The simulator.
pub struct Sim<P: Process> {
    pub seed: u64,
    rng: ChaCha8Rng,
    start: Instant,
    now: Instant,
    slots: Vec<Slot<P>>,
    by_addr: HashMap<SocketAddr, usize>,
    queue: BinaryHeap<Queued>,
    next_ev: u64,
    pub net: NetConfig,
    blocked: HashSet<(usize, usize)>,
    pub stats: NetStats,
    check: Option<Check<P>>,
}

impl<P: Process> std::fmt::Debug for Sim<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sim").field("seed", &self.seed).field("nodes", &self.slots.len()).finish()
    }
}

/// The simulated address of node `i` (loopback range: nothing is ever sent there for real).
pub fn sim_addr(i: usize) -> SocketAddr {
    let ip = Ipv4Addr::new(127, 1 + (i >> 16) as u8, (i >> 8) as u8, i as u8);
    SocketAddr::V4(SocketAddrV4::new(ip, 7000))
}

impl<P: Process> Sim<P> {
    pub fn new(seed: u64, net: NetConfig) -> Self {
        let start = Instant::now();
        Sim {
            seed,
            rng: ChaCha8Rng::seed_from_u64(seed),
            start,
            now: start,
            slots: Vec::new(),
            by_addr: HashMap::new(),
            queue: BinaryHeap::new(),
            next_ev: 0,
            net,
            blocked: HashSet::new(),
            stats: NetStats::default(),
            check: None,
        }
    }

    /// Installs an invariant checked on a node after every step it takes.
    pub fn set_check(&mut self, f: impl FnMut(usize, &P, Instant) -> Result<(), String> + 'static) {
        self.check = Some(Box::new(f));
    }

    pub fn now(&self) -> Instant {
        self.now
    }
    pub fn start(&self) -> Instant {
        self.start
    }
    /// Simulated time since the start.
    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }
    pub fn len(&self) -> usize {
        self.slots.len()
    }
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
    /// A seeded RNG for the scenario's own choices (derived, so it does not perturb the net).
    pub fn rng(&mut self) -> ChaCha8Rng {
        ChaCha8Rng::seed_from_u64(self.rng.gen())
    }

    /// Adds a node at the next address; `make` receives that address.
    pub fn add(&mut self, make: impl FnOnce(SocketAddr) -> P) -> usize {
        let i = self.slots.len();
        let addr = sim_addr(i);
        self.slots.push(Slot {
            addr,
            proc: Some(make(addr)),
            stalled_until: None,
            parked: Vec::new(),
            timer_at: None,
            clog: Duration::ZERO,
        });
        self.by_addr.insert(addr, i);
        self.after_step(i);
        i
    }

    pub fn addr(&self, i: usize) -> SocketAddr {
        self.slots[i].addr
    }
    pub fn node(&self, i: usize) -> Option<&P> {
        self.slots[i].proc.as_ref()
    }
    pub fn node_mut(&mut self, i: usize) -> Option<&mut P> {
        self.slots[i].proc.as_mut()
    }
    pub fn is_up(&self, i: usize) -> bool {
        self.slots[i].proc.is_some()
    }
    pub fn is_stalled(&self, i: usize) -> bool {
        self.slots[i].stalled_until.is_some_and(|t| t > self.now)
    }
    /// Live nodes (not crashed).
    pub fn up(&self) -> impl Iterator<Item = (usize, &P)> {
        self.slots.iter().enumerate().filter_map(|(i, s)| s.proc.as_ref().map(|p| (i, p)))
    }

    /// Runs `f` on a live node as one step (outputs are scheduled, invariants checked).
    pub fn with_node<R>(&mut self, i: usize, f: impl FnOnce(&mut P, Instant) -> R) -> Option<R> {
        let now = self.now;
        let r = f(self.slots[i].proc.as_mut()?, now);
        self.after_step(i);
        Some(r)
    }

    /// Kills a node at once: its state and anything in flight to it are lost.
    pub fn crash(&mut self, i: usize) {
        let s = &mut self.slots[i];
        s.proc = None;
        s.parked.clear();
        s.timer_at = None;
        s.stalled_until = None;
    }

    /// Starts a node again at the same address (it decides what it kept).
    pub fn restart(&mut self, i: usize, make: impl FnOnce(SocketAddr) -> P) {
        let addr = self.slots[i].addr;
        self.slots[i].proc = Some(make(addr));
        self.after_step(i);
    }

    /// The node stops processing for `d`: messages wait for it, its timers fire late.
    pub fn stall(&mut self, i: usize, d: Duration) {
        let until = self.now + d;
        self.slots[i].stalled_until = Some(until);
        self.push(until, Ev::Wake { node: i });
    }

    /// Extra latency on everything a node sends or receives (a clogged link).
    pub fn clog(&mut self, i: usize, extra: Duration) {
        self.slots[i].clog = extra;
    }

    /// Drops messages from `a` to `b` (one direction only: asymmetric partitions).
    pub fn block(&mut self, a: usize, b: usize) {
        self.blocked.insert((a, b));
    }

    /// Splits the nodes into groups that cannot reach each other.
    pub fn partition(&mut self, groups: &[Vec<usize>]) {
        for (gi, g) in groups.iter().enumerate() {
            for (hi, h) in groups.iter().enumerate() {
                if gi != hi {
                    for &a in g {
                        for &b in h {
                            self.blocked.insert((a, b));
                        }
                    }
                }
            }
        }
    }

    /// Removes every partition and block.
    pub fn heal(&mut self) {
        self.blocked.clear();
    }

    fn push(&mut self, at: Instant, ev: Ev) {
        self.next_ev += 1;
        self.queue.push(Queued { at, seq: self.next_ev, ev });
    }

    /// Runs until simulated time `until`.
    pub fn run_until(&mut self, until: Instant) {
        while self.queue.peek().is_some_and(|q| q.at <= until) {
            let Some(q) = self.queue.pop() else { break };
            self.now = self.now.max(q.at);
            self.step(q.ev);
        }
        self.now = self.now.max(until);
    }

    /// Runs for `d` of simulated time.
    pub fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        self.run_until(until);
    }

    fn step(&mut self, ev: Ev) {
        let now = self.now;
        match ev {
            Ev::Deliver { to, from, bytes } => {
                let s = &mut self.slots[to];
                let Some(p) = s.proc.as_mut() else { return };
                if s.stalled_until.is_some_and(|t| t > now) {
                    s.parked.push((from, bytes));
                    return;
                }
                self.stats.delivered += 1;
                p.handle_message(now, from, &bytes);
                self.after_step(to);
            }
            Ev::Timer { node } => {
                let s = &mut self.slots[node];
                if s.timer_at != Some(now) || s.stalled_until.is_some_and(|t| t > now) {
                    return;
                }
                s.timer_at = None;
                if let Some(p) = s.proc.as_mut() {
                    p.handle_timeout(now);
                    self.after_step(node);
                }
            }
            Ev::Wake { node } => {
                let s = &mut self.slots[node];
                if s.stalled_until != Some(now) {
                    return;
                }
                s.stalled_until = None;
                let parked = std::mem::take(&mut s.parked);
                let Some(p) = s.proc.as_mut() else { return };
                // A paused process finds its timers overdue and its socket full at once.
                p.handle_timeout(now);
                for (from, bytes) in parked {
                    self.stats.delivered += 1;
                    p.handle_message(now, from, &bytes);
                }
                s.timer_at = None;
                self.after_step(node);
            }
        }
    }

    fn after_step(&mut self, i: usize) {
        let now = self.now;
        let Some(p) = self.slots[i].proc.as_mut() else { return };
        let mut out = Vec::new();
        while let Some(t) = p.poll_transmit() {
            out.push(t);
        }
        let next = p.poll_timeout();
        if let Some(check) = self.check.as_mut() {
            if let Err(e) = check(i, self.slots[i].proc.as_ref().expect("node is up"), now) {
                panic!(
                    "invariant violated on node {i} at {:?}: {e} (SEED={})",
                    now - self.start,
                    self.seed
                );
            }
        }
        for (to, bytes) in out {
            self.send(i, to, bytes);
        }
        if let Some(at) = next {
            let at = at.max(now);
            let slot = &mut self.slots[i];
            if slot.timer_at.is_none_or(|t| at < t || t < now) {
                slot.timer_at = Some(at);
                self.push(at, Ev::Timer { node: i });
            }
        }
    }

    fn send(&mut self, from: usize, to_addr: SocketAddr, bytes: Vec<u8>) {
        self.stats.sent += 1;
        self.stats.bytes += bytes.len() as u64;
        let Some(&to) = self.by_addr.get(&to_addr) else {
            self.stats.dropped += 1;
            return;
        };
        if self.blocked.contains(&(from, to)) || self.rng.gen_bool(self.net.loss) {
            self.stats.dropped += 1;
            return;
        }
        let copies = if self.rng.gen_bool(self.net.duplicate) { 2 } else { 1 };
        let from_addr = self.slots[from].addr;
        let clog = self.slots[from].clog + self.slots[to].clog;
        for _ in 1..copies {
            let lat = self.rng.gen_range(self.net.latency_min..=self.net.latency_max) + clog;
            self.push(self.now + lat, Ev::Deliver { to, from: from_addr, bytes: bytes.clone() });
        }
        let lat = self.rng.gen_range(self.net.latency_min..=self.net.latency_max) + clog;
        self.push(self.now + lat, Ev::Deliver { to, from: from_addr, bytes });
    }
}
