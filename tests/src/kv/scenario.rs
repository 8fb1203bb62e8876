//! One seeded run of a whole cluster: clients issue random puts, deletes and gets at random
//! levels through random coordinators while faults are injected at random times; then the
//! cluster heals, every node restarts, hints are delivered, every key is read at `all`, and the
//! history is checked. [`run_seed`] is a pure function of its seed and the [`Scenario`].

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use starling_wire::Consistency;

use super::cluster::{BlockId, Cluster, ClusterConfig, FinalState};
use super::ClockSpec;
use crate::history::{Call, OpId, Outcome, Report, Violation, ViolationKind};
use crate::sim::NetConfig;

/// Which kind of run a seed gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Profile {
    /// Strict quorums, quorum reads and writes, no crash, partition or clock beyond the bound:
    /// recency is checked.
    Calm,
    /// Strict quorums, `quorum` and `all` writes, reads at every level, every fault but power
    /// loss: no acknowledged write may be lost, whatever the clocks.
    Durable,
    /// Strict quorums, every level, every fault.
    Strict,
    /// Sloppy quorums (the default), every level, every fault.
    Sloppy,
}

impl Profile {
    pub fn name(self) -> &'static str {
        match self {
            Profile::Calm => "calm",
            Profile::Durable => "durable",
            Profile::Strict => "strict",
            Profile::Sloppy => "sloppy",
        }
    }
}

/// How clocks are set for a seed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skew {
    /// Every clock exact.
    None,
    /// Clocks within the bound: one node up to ±300 ms off, the others ±20 ms, small drift.
    Near,
    /// One node ±120 s off (far beyond the 500 ms bound).
    Far,
}

/// The knobs of a sweep; each seed draws its own run from them.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub nodes: usize,
    pub replication: usize,
    pub clients: usize,
    pub keys: usize,
    /// How long clients issue ops (faults happen in this window).
    pub op_window: Duration,
    /// A client's pause between two ops: uniform in this range.
    pub think: (Duration, Duration),
    /// Mean time between two faults in the op window.
    pub fault_every: Duration,
    /// `None`: each seed draws (calm 25%, durable 25%, strict 20%, sloppy 30%).
    pub profile: Option<Profile>,
    /// `None`: each seed draws (none 50%, near 30%, far 20%; calm seeds never far).
    pub skew: Option<Skew>,
    /// Write levels drawn from (empty: by profile; calm seeds always use `quorum`).
    pub write_levels: Vec<Consistency>,
    /// Read levels drawn from (empty: by profile).
    pub read_levels: Vec<Consistency>,
    /// Fault kinds allowed (empty: all the profile allows). Names as in [`FAULT_KINDS`].
    pub faults: Vec<&'static str>,
    /// Restarted nodes coordinate nothing until gossip converged ([`super::NodeSpec::wait_for_ring`]):
    /// a workaround; `false` runs as `starlingd` does today.
    pub wait_for_ring: bool,
    /// Nodes run the remote clock monitor ([`super::NodeSpec::clock_monitor`]), as `starlingd`
    /// does.
    pub clock_monitor: bool,
    /// Nodes wait for their first clock samples before they coordinate writes
    /// ([`super::NodeSpec::clock_wait`]): a workaround; `false` runs as `starlingd` does today.
    pub clock_wait: bool,
    /// Nodes run anti-entropy ([`super::NodeSpec::repair`]), as `starlingd` does.
    pub repair: bool,
    /// Restarted nodes recover before they answer reads ([`super::NodeSpec::recovery`]), as
    /// `starlingd` does; with it, the `durable` profile has power losses too.
    pub recovery: bool,
    /// Check recency in every profile whose reads and writes are all `quorum` and whose clocks
    /// are within the bound, not only in `calm` (with crashes and partitions among the faults).
    pub check_recency: bool,
    /// The nodes' WAL sync interval (default `starlingd`'s 10 ms).
    pub sync_interval: Duration,
    /// The hint window (default: `starlingd`'s, 3 h). A short one leaves replicas that were down
    /// longer to anti-entropy alone.
    pub hint_window: Option<Duration>,
}

impl Default for Scenario {
    fn default() -> Self {
        Scenario {
            nodes: 5,
            replication: 3,
            clients: 4,
            keys: 10,
            op_window: Duration::from_secs(15),
            think: (Duration::from_millis(2), Duration::from_millis(60)),
            fault_every: Duration::from_millis(1500),
            profile: None,
            skew: None,
            write_levels: Vec::new(),
            read_levels: Vec::new(),
            faults: Vec::new(),
            wait_for_ring: true,
            clock_monitor: true,
            clock_wait: true,
            repair: true,
            recovery: true,
            check_recency: false,
            sync_interval: super::SYNC_INTERVAL,
            hint_window: None,
        }
    }
}

/// Every fault kind, as counted in [`SeedReport::faults`]. `join` starts a new node (empty
/// store) that joins the ring; `leave` asks a node to leave it (decommission); `remove` kills a
/// node for good (its store gone) and removes it with `removenode` a few seconds later (asked
/// again until a removal finishes).
pub const FAULT_KINDS: [&str; 14] = [
    "kill",
    "power-loss",
    "partition",
    "one-way",
    "store-stall",
    "pause",
    "disk-full",
    "loss",
    "duplicate",
    "clog",
    "clock-skew",
    "join",
    "leave",
    "remove",
];

/// Faults that do not break recency (no crash, no partition, no clock beyond the bound). Ring
/// changes must not either: reads meet their level in the current and the future replicas.
const CALM_FAULTS: [&str; 7] =
    ["store-stall", "pause", "loss", "duplicate", "clog", "join", "leave"];

/// At most this many nodes beyond [`Scenario::nodes`] at once.
const MAX_EXTRA_NODES: usize = 2;

/// What one seed did and what the checker found.
#[derive(Debug)]
pub struct SeedReport {
    pub seed: u64,
    pub profile: Profile,
    pub skew: Skew,
    pub sloppy: bool,
    pub recency: bool,
    /// No acknowledged write may be lost in this run (strict quorums, `quorum`/`all` writes, no
    /// power loss): lost writes and resurrected deletes are failures. Otherwise they are
    /// anomalies the configuration allows (last write wins across clocks that disagree, writes
    /// acknowledged by one node or by stand-ins, the last 10 ms before a power loss).
    pub durable: bool,
    pub ops: usize,
    /// Outcomes: `written`, `superseded`, `read`, `fail`, `unknown`.
    pub outcomes: BTreeMap<&'static str, usize>,
    /// Why ops failed or timed out: the first words of their error, counted.
    pub reasons: BTreeMap<String, usize>,
    pub faults: BTreeMap<&'static str, u64>,
    pub report: Report,
    /// The report's violations with their ops annotated (empty when there are none).
    pub explained: String,
    pub final_state: FinalState,
    pub converged: bool,
    pub hints_left: usize,
    /// Nodes still joining or leaving when the history was checked.
    pub moving_left: usize,
    /// Those nodes, with where they are (`waiting`, `joining`, `leaving`).
    pub moving_nodes: Vec<(usize, &'static str)>,
    /// `(joined, left, leaves aborted)` ([`Cluster::ring_changes`]).
    pub ring_changes: (usize, usize, u64),
    /// Nodes killed for good, and `removenode` runs `(started, done, failed)` over the nodes up
    /// at the end; dead nodes no removal finished for.
    pub removals: (usize, (u64, u64, u64), usize),
    /// Why removals gave up (they are asked again), counted.
    pub removal_failures: BTreeMap<&'static str, u64>,
    /// Machines killed for good that came back wiped, as new nodes.
    pub reborn: u64,
    pub decode_errors: u64,
    pub refused_ahead: u64,
    pub sim_time: Duration,
    /// Keys whose replicas still stored different records after the time given to
    /// anti-entropy (only with [`Scenario::repair`]).
    pub diverged: Vec<String>,
    /// Keys whose replicas stored different records once hints were delivered, before the time
    /// given to anti-entropy.
    pub diverged_before: usize,
    /// Anti-entropy sessions started, finished and failed, and records they moved, over the
    /// nodes up at the end.
    pub repair: (u64, u64, u64, u64),
}

impl SeedReport {
    /// Whether a violation is an anomaly this run's configuration allows.
    pub fn allowed(&self, v: &Violation) -> bool {
        !self.durable
            && matches!(v.kind, ViolationKind::LostWrite | ViolationKind::ResurrectedDelete)
    }

    /// Violations that break what this run's configuration promises.
    pub fn failures(&self) -> impl Iterator<Item = &Violation> {
        self.report.violations.iter().filter(|v| !self.allowed(v))
    }

    /// Violations the configuration allows.
    pub fn anomalies(&self) -> impl Iterator<Item = &Violation> {
        self.report.violations.iter().filter(|v| self.allowed(v))
    }

    /// No failure, and (with anti-entropy) every key's replicas converged once healed.
    pub fn is_ok(&self) -> bool {
        self.failures().next().is_none() && self.diverged.is_empty()
    }
}

#[derive(Debug)]
enum Undo {
    Restart(usize),
    /// A machine killed for good comes back wiped, once its node is removed.
    Rebirth(usize),
    Unblock(BlockId),
    Loss,
    Duplicate,
    Clog(usize),
}

#[derive(Debug)]
struct Client {
    id: u64,
    busy: Option<OpId>,
    next_at: Instant,
    n: u64,
}

fn pick_levels(
    rng: &mut ChaCha8Rng,
    profile: Profile,
    given: &[Consistency],
    write: bool,
) -> Vec<Consistency> {
    use Consistency::*;
    if profile == Profile::Calm {
        return vec![Quorum];
    }
    if profile == Profile::Durable && write {
        let strong: Vec<Consistency> =
            given.iter().copied().filter(|l| matches!(l, Quorum | All)).collect();
        return if strong.is_empty() { vec![Quorum, All] } else { strong };
    }
    if !given.is_empty() {
        return given.to_vec();
    }
    let all: Vec<Consistency> =
        if write { vec![One, Quorum, All, Any] } else { vec![One, Quorum, All] };
    if rng.gen_bool(0.4) {
        vec![Quorum]
    } else {
        all
    }
}

fn dur(rng: &mut ChaCha8Rng, lo_ms: u64, hi_ms: u64) -> Duration {
    Duration::from_millis(rng.gen_range(lo_ms..=hi_ms))
}

/// Runs seed `seed` of scenario `sc`.
pub fn run_seed(seed: u64, sc: &Scenario) -> SeedReport {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_5eed_0000_0001);
    let profile = sc.profile.unwrap_or_else(|| match rng.gen_range(0..20) {
        0..=4 => Profile::Calm,
        5..=9 => Profile::Durable,
        10..=13 => Profile::Strict,
        _ => Profile::Sloppy,
    });
    let skew = sc.skew.unwrap_or_else(|| match rng.gen_range(0..10) {
        0..=4 => Skew::None,
        5..=7 => Skew::Near,
        _ if profile == Profile::Calm => Skew::Near,
        _ => Skew::Far,
    });
    let skew = if profile == Profile::Calm && skew == Skew::Far { Skew::Near } else { skew };
    let sloppy = profile == Profile::Sloppy;
    let write_levels = pick_levels(&mut rng, profile, &sc.write_levels, true);
    let read_levels = pick_levels(&mut rng, profile, &sc.read_levels, false);
    let faults_allowed: Vec<&'static str> = FAULT_KINDS
        .iter()
        .copied()
        .filter(|k| *k != "clock-skew")
        .filter(|k| sc.faults.is_empty() || sc.faults.contains(k))
        .filter(|k| profile != Profile::Calm || CALM_FAULTS.contains(k))
        // A node that lost power may lack the last 10 ms of what it acknowledged: with recovery
        // it answers no read of a range until it has compared it with the other replicas, so
        // the durable profile has power losses too (one node's at a time: a write acknowledged
        // by two replicas that both lose power within one sync interval is lost, and that is
        // what `--sync periodic` says).
        .filter(|k| {
            profile != Profile::Durable
                || *k != "power-loss"
                || (sc.recovery && sc.repair)
                || sc.faults.contains(k)
        })
        .collect();
    // Quorum writes on strict quorums intersect, so a write whose version loses to one
    // acknowledged before it began is acknowledged as superseded: none may be lost. Weaker
    // writes (`one`, `any`), stand-ins and power loss (the WAL is synced every 10 ms) void that.
    let strong_writes =
        !sloppy && write_levels.iter().all(|l| matches!(l, Consistency::Quorum | Consistency::All));
    let recency = (profile == Profile::Calm || (sc.check_recency && !sloppy))
        && write_levels.iter().all(|l| *l == Consistency::Quorum)
        && read_levels.iter().all(|l| *l == Consistency::Quorum)
        && skew != Skew::Far;
    let mut faults: BTreeMap<&'static str, u64> = BTreeMap::new();

    let n = sc.nodes;
    let mut clocks = vec![ClockSpec::default(); n];
    let skewed = rng.gen_range(0..n);
    match skew {
        Skew::None => {}
        Skew::Near => {
            for (i, c) in clocks.iter_mut().enumerate() {
                let off =
                    if i == skewed { rng.gen_range(-300..=300) } else { rng.gen_range(-20..=20) };
                *c = ClockSpec { offset_ms: off, drift: rng.gen_range(-1e-4..1e-4) };
            }
            *faults.entry("clock-skew").or_default() += 1;
        }
        Skew::Far => {
            let off = if rng.gen_bool(0.5) { 120_000 } else { -120_000 };
            clocks[skewed] = ClockSpec::offset(off);
            *faults.entry("clock-skew").or_default() += 1;
        }
    }
    let mut cfg = ClusterConfig::new(n, sloppy);
    cfg.kv.replication = sc.replication;
    if let Some(w) = sc.hint_window {
        cfg.kv.hint_window = w;
    }
    cfg.clocks = clocks;
    cfg.wait_for_ring = sc.wait_for_ring;
    cfg.clock_monitor = sc.clock_monitor;
    cfg.clock_wait = sc.clock_wait;
    cfg.repair = sc.repair;
    cfg.recovery = sc.recovery;
    cfg.sync_interval = sc.sync_interval;
    let mut c = Cluster::new(seed, &cfg);

    // Let the cluster form before clients start.
    c.run_until(Duration::from_millis(100), Duration::from_secs(10), Cluster::converged);
    let start = c.now();
    let end = start + sc.op_window;

    // The fault plan: kinds drawn from those allowed, at exponential gaps.
    let allowed = faults_allowed;
    let mut next_fault = start + dur(&mut rng, 200, 2 * sc.fault_every.as_millis() as u64);
    let mut undo: Vec<(Instant, Undo)> = Vec::new();

    let mut next_removal = start;

    let mut clients: Vec<Client> = (0..sc.clients as u64)
        .map(|id| Client { id, busy: None, next_at: start + dur(&mut rng, 0, 20), n: 0 })
        .collect();
    let keys: Vec<String> = (0..sc.keys).map(|k| format!("k{k}")).collect();

    while c.now() < end || clients.iter().any(|cl| cl.busy.is_some()) {
        let now = c.now();
        // Undo faults whose time came.
        undo.sort_by_key(|u| u.0);
        while undo.first().is_some_and(|u| u.0 <= now) {
            let (at, u) = undo.remove(0);
            match u {
                // Not removed yet: later.
                Undo::Rebirth(i) if c.unremoved().contains(&i) => {
                    undo.push((at + Duration::from_secs(1), u));
                }
                u => apply_undo(&mut c, u),
            }
        }
        if now >= next_removal && !c.unremoved().is_empty() {
            next_removal = now + dur(&mut rng, 1000, 3000);
            try_removal(&mut c, &mut rng);
        }
        if now < end && now >= next_fault && !allowed.is_empty() {
            let kind = *allowed.choose(&mut rng).expect("non-empty");
            if inject(&mut c, &mut rng, kind, profile, sc, skew, &mut undo) {
                *faults.entry(kind).or_default() += 1;
            }
            let gap = -(1.0 - rng.gen::<f64>()).ln() * sc.fault_every.as_secs_f64();
            next_fault = now + Duration::from_secs_f64(gap.min(10.0));
        }
        for cl in &mut clients {
            if let Some(op) = cl.busy {
                let Some(done) = c.history.op(op).complete else { continue };
                cl.busy = None;
                let think =
                    dur(&mut rng, sc.think.0.as_millis() as u64, sc.think.1.as_millis() as u64);
                cl.next_at = c.sim.start() + Duration::from_nanos(done) + think;
            }
            if now >= end || now < cl.next_at {
                continue;
            }
            let up: Vec<usize> = c.members().into_iter().filter(|&i| c.is_up(i)).collect();
            let Some(&node) = up.choose(&mut rng) else { continue };
            let key = keys.choose(&mut rng).expect("keys").clone();
            let roll = rng.gen_range(0..100);
            let (call, level) = if roll < 45 {
                cl.n += 1;
                let value = format!("c{}-{}", cl.id, cl.n);
                (Call::Put { key, value }, *write_levels.choose(&mut rng).expect("levels"))
            } else if roll < 55 {
                (Call::Delete { key }, *write_levels.choose(&mut rng).expect("levels"))
            } else {
                (Call::Get { key }, *read_levels.choose(&mut rng).expect("levels"))
            };
            cl.busy = Some(c.invoke(cl.id, node, call, level));
        }
        c.run_for(super::cluster::SLICE);
        if c.now() > end + Duration::from_secs(30) {
            break; // ops that never complete count as unknown
        }
    }

    // Heal everything, restart everyone that is down or has a full disk, let the ops still in
    // flight finish (late replicas turn into hints at the write deadline), let hints go out.
    let mut rebirths = Vec::new();
    for (_, u) in undo.drain(..) {
        match u {
            Undo::Rebirth(i) => rebirths.push(i),
            u => apply_undo(&mut c, u),
        }
    }
    c.heal();
    c.sim.net = NetConfig::default();
    for i in c.members() {
        c.sim.clog(i, Duration::ZERO);
        let full = c.sim.node(i).is_some_and(|p| p.store.full);
        if !c.is_up(i) || full {
            c.restart(i);
        }
    }
    // Joins and leaves in progress finish (or, for a leave, give up).
    c.run_until(Duration::from_millis(100), Duration::from_secs(40), |c| c.moving() == 0);
    // Dead nodes are removed (asked again until a removal finishes).
    let give_up = c.now() + Duration::from_secs(120);
    while !c.unremoved().is_empty() && c.now() < give_up {
        try_removal(&mut c, &mut rng);
        c.run_for(Duration::from_secs(1));
    }
    // Machines that come back wiped join as new nodes.
    for i in rebirths {
        if !c.unremoved().contains(&i) {
            c.rebirth(i);
        }
    }
    c.run_until(Duration::from_millis(100), Duration::from_secs(40), |c| c.moving() == 0);
    let converged =
        c.run_until(Duration::from_millis(100), Duration::from_secs(20), Cluster::converged);
    c.run_for(Duration::from_secs(3));
    c.run_until(Duration::from_millis(100), Duration::from_secs(15), |c| c.hints_pending() == 0);
    // Restarted nodes finish recovering (they answer no replica read of a range until then).
    c.run_until(Duration::from_millis(200), Duration::from_secs(60), |c| c.recovering() == 0);
    c.run_for(Duration::from_millis(500));
    // Anti-entropy: every key's replicas converge on one record without any read (a replica
    // that missed writes while down or cut off, a write that reached only some replicas).
    let mut diverged = Vec::new();
    let first_up = c.members().into_iter().find(|&i| c.is_up(i)).unwrap_or(0);
    let diverged_before = c.diverged(first_up, &keys).len();
    if sc.repair {
        c.run_until(Duration::from_millis(200), Duration::from_secs(40), |c| {
            c.diverged(first_up, &keys).is_empty()
        });
        diverged = c.diverged(first_up, &keys);
    }
    let repair = c.repair_stats();
    let hints_left = c.hints_pending();
    let moving_left = c.moving();
    if std::env::var("KV_TRACE_MOVING").is_ok() {
        for (i, p) in c.sim.up() {
            if p.phase().name() != "normal" {
                eprintln!("node {i} {:?}", p.phase());
            }
            eprintln!("node {i} {} removal state {}", p.id(), p.removal_state());
        }
    }
    let moving_nodes: Vec<(usize, &'static str)> =
        c.sim.up().map(|(i, p)| (i, p.phase().name())).filter(|(_, ph)| *ph != "normal").collect();
    let ring_changes = c.ring_changes();
    let removals = (c.dead.len() + c.reborn as usize, c.removals(), c.unremoved().len());
    let reborn = c.reborn;
    let up: Vec<usize> = c.members().into_iter().filter(|&i| c.is_up(i)).collect();
    let via = *up.choose(&mut rng).unwrap_or(&0);
    let final_state = c.final_state(via, &keys);
    let report = c.check(&final_state, recency);
    let durable =
        strong_writes && (!faults.contains_key("power-loss") || (sc.recovery && sc.repair));
    let explained = if report.is_ok() { String::new() } else { c.explain(&report) };

    let mut outcomes: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    for op in c.history.ops() {
        if let Outcome::Fail(m) | Outcome::Unknown(m) = &op.outcome {
            let gist: String = m.split_whitespace().take(5).collect::<Vec<_>>().join(" ");
            let gist = gist.trim_end_matches(|ch: char| !ch.is_alphabetic()).to_string();
            *reasons.entry(gist).or_default() += 1;
        }
        let k = match &op.outcome {
            Outcome::Written { superseded: false } => "written",
            Outcome::Written { superseded: true } => "superseded",
            Outcome::Read(_) => "read",
            Outcome::Fail(_) => "fail",
            Outcome::Unknown(_) => "unknown",
        };
        *outcomes.entry(k).or_default() += 1;
    }
    let (decode_errors, refused_ahead) = c
        .sim
        .up()
        .fold((0, 0), |(d, r), (_, p)| (d + p.stats.decode_errors, r + p.stats.refused_ahead));
    SeedReport {
        seed,
        profile,
        skew,
        sloppy,
        recency,
        durable,
        ops: c.history.len(),
        outcomes,
        reasons,
        faults,
        report,
        explained,
        final_state,
        converged,
        hints_left,
        moving_left,
        moving_nodes,
        ring_changes,
        removals,
        removal_failures: c.removal_failures(),
        reborn,
        decode_errors,
        refused_ahead,
        sim_time: c.sim.elapsed(),
        diverged,
        diverged_before,
        repair,
    }
}

/// Asks a random live member to remove a dead node no removal finished for, unless a removal
/// is running (a refusal, e.g. before gossip reports the node down, is asked again later).
fn try_removal(c: &mut Cluster, rng: &mut ChaCha8Rng) {
    let Some(&dead) = c.unremoved().first() else { return };
    if c.removal_running() {
        if std::env::var("KV_TRACE_REMOVE").is_ok() {
            for (i, p) in c.sim.up() {
                if p.removing().is_some() {
                    eprintln!("{:?} node {i} runs {:?}", c.now(), p.removal_state());
                }
                let ring: Vec<String> =
                    p.view.ring.nodes().map(|n| format!("{}:{:?}", n.id, n.status)).collect();
                eprintln!("  node {i} {} ring {ring:?} removing {:?}", p.id(), p.view.removing);
            }
        }
        return;
    }
    let up: Vec<usize> = c.members().into_iter().filter(|&i| c.is_up(i)).collect();
    if let Some(&via) = up.choose(rng) {
        let r = c.remove_node(via, dead);
        if std::env::var("KV_TRACE_REMOVE").is_ok() {
            eprintln!("{:?} remove {dead} via {via}: {r:?}", c.now());
        }
    }
}

fn apply_undo(c: &mut Cluster, u: Undo) {
    match u {
        Undo::Restart(i) => c.restart(i),
        Undo::Rebirth(i) => c.rebirth(i),
        Undo::Unblock(b) => c.unblock(b),
        Undo::Loss => c.sim.net.loss = 0.0,
        Undo::Duplicate => c.sim.net.duplicate = 0.0,
        Undo::Clog(i) => c.sim.clog(i, Duration::ZERO),
    }
}

/// Injects one fault of `kind`; false if it could not be (e.g. too many nodes down already).
#[allow(clippy::too_many_arguments)]
fn inject(
    c: &mut Cluster,
    rng: &mut ChaCha8Rng,
    kind: &str,
    profile: Profile,
    sc: &Scenario,
    skew: Skew,
    undo: &mut Vec<(Instant, Undo)>,
) -> bool {
    let members = c.members();
    let n = members.len();
    let now = c.now();
    let up: Vec<usize> = members.iter().copied().filter(|&i| c.is_up(i)).collect();
    let down = n - up.len();
    let Some(&node) = up.choose(rng) else { return false };
    match kind {
        "kill" | "power-loss" | "disk-full" => {
            // At most two nodes down (or about to restart) at once.
            let pending = undo.iter().filter(|u| matches!(u.1, Undo::Restart(_))).count();
            if down.max(pending) >= 2 {
                return false;
            }
            // Two power losses within one sync interval of each other lose what the two nodes
            // alone acknowledged last: `--sync periodic` allows that, so the durable profile
            // keeps them apart.
            if kind == "power-loss"
                && profile == Profile::Durable
                && c.last_power_loss
                    .is_some_and(|t| now.saturating_duration_since(t) < 10 * sc.sync_interval)
            {
                return false;
            }
            match kind {
                "kill" => c.kill(node),
                "power-loss" => c.power_loss(node),
                _ => c.disk_full(node),
            }
            undo.push((now + dur(rng, 300, 5000), Undo::Restart(node)));
        }
        "join" => {
            // One join at a time, and at most a couple of nodes beyond the starting size.
            let joining = c.sim.up().filter(|(_, p)| p.phase().name() == "joining").count()
                + c.sim.up().filter(|(_, p)| p.phase().name() == "waiting").count();
            if joining > 0 || n >= sc.nodes + MAX_EXTRA_NODES {
                return false;
            }
            let clock = match skew {
                Skew::Near => ClockSpec { offset_ms: rng.gen_range(-20..=20), drift: 0.0 },
                _ => ClockSpec::default(),
            };
            c.add_node(clock);
        }
        "remove" => {
            // One dead node at a time, none down otherwise, no ring change in progress, and
            // enough nodes that N stay and one more may leave later.
            let pending = undo.iter().filter(|u| matches!(u.1, Undo::Restart(_))).count();
            if down > 0
                || pending > 0
                || !c.unremoved().is_empty()
                || c.moving() > 0
                || n < sc.replication + 2
            {
                return false;
            }
            // A lost store is a power loss that keeps nothing: keep power losses apart from it.
            if profile == Profile::Durable
                && c.last_power_loss
                    .is_some_and(|t| now.saturating_duration_since(t) < 10 * sc.sync_interval)
            {
                return false;
            }
            c.last_power_loss = Some(now);
            c.kill_for_good(node);
            // Half the time the machine comes back with an empty data dir once the node is
            // removed: a new node at the same address.
            if rng.gen_bool(0.5) {
                undo.push((now + dur(rng, 3000, 8000), Undo::Rebirth(node)));
            }
        }
        "leave" if !c.unremoved().is_empty() => return false,
        "leave" => {
            let normal: Vec<usize> = up
                .iter()
                .copied()
                .filter(|&i| c.sim.node(i).is_some_and(|p| p.phase().name() == "normal"))
                .collect();
            let Some(&node) = normal.choose(rng) else { return false };
            if c.leave(node).is_err() {
                return false;
            }
        }
        "partition" if n < 3 => return false,
        "partition" => {
            let mut nodes: Vec<usize> = members.clone();
            nodes.shuffle(rng);
            let k = rng.gen_range(1..=(n - 1) / 2).max(1);
            let (minority, rest) = nodes.split_at(k);
            let b = c.partition(&[minority.to_vec(), rest.to_vec()]);
            undo.push((now + dur(rng, 500, 5000), Undo::Unblock(b)));
        }
        "one-way" => {
            let others: Vec<usize> = members.iter().copied().filter(|&j| j != node).collect();
            let k = rng.gen_range(1..=others.len());
            let to: Vec<usize> = others.choose_multiple(rng, k).copied().collect();
            let links = if rng.gen_bool(0.5) {
                to.iter().map(|&t| (node, t)).collect()
            } else {
                to.iter().map(|&t| (t, node)).collect()
            };
            let b = c.block(links);
            undo.push((now + dur(rng, 500, 5000), Undo::Unblock(b)));
        }
        "store-stall" => c.stall_store(node, dur(rng, 50, 2500)),
        "pause" => {
            let d = if profile == Profile::Calm { dur(rng, 20, 400) } else { dur(rng, 50, 3000) };
            c.sim.stall(node, d);
        }
        "loss" => {
            c.sim.net.loss = rng.gen_range(0.01..0.2);
            undo.push((now + dur(rng, 200, 3000), Undo::Loss));
        }
        "duplicate" => {
            c.sim.net.duplicate = rng.gen_range(0.01..0.3);
            undo.push((now + dur(rng, 200, 3000), Undo::Duplicate));
        }
        "clog" => {
            c.sim.clog(node, dur(rng, 5, 300));
            undo.push((now + dur(rng, 200, 3000), Undo::Clog(node)));
        }
        _ => return false,
    }
    true
}
