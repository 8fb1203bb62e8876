//! The gossip core as a simulated [`Process`], plus cluster builders and measurements shared by
//! the tests and the `gossip-sim` report.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use starling_gossip::state::keys;
use starling_gossip::{Command, Config, Event, Gossip, Header, MemberState, NodeId, NodeState};

use crate::sim::{NetConfig, Process, Sim};

/// What a simulated node remembers of its events (recording every `StateChanged` of a
/// 10,000-node cluster would not fit in memory).
#[derive(Debug, Default)]
pub struct Log {
    /// Every membership event with its time.
    pub membership: Vec<(Instant, Event)>,
    /// `(subject, key)` whose first change is timed.
    pub watch: Option<(NodeId, String)>,
    pub watch_seen: Option<Instant>,
    /// `MemberSuspect` events are counted, not kept: under loss they are frequent and refuted.
    pub suspicions: u64,
}

/// One simulated gossip node.
#[derive(Debug)]
pub struct GossipProc {
    pub g: Gossip,
    pub log: Log,
    pub refused: u64,
}

impl GossipProc {
    pub fn new(g: Gossip) -> Self {
        GossipProc { g, log: Log::default(), refused: 0 }
    }

    fn drain_events(&mut self, now: Instant) {
        while let Some(e) = self.g.poll_event() {
            match &e {
                Event::StateChanged { id, keys } => {
                    if let Some((w, k)) = &self.log.watch {
                        if w == id && keys.contains(k) && self.log.watch_seen.is_none() {
                            self.log.watch_seen = Some(now);
                        }
                    }
                }
                Event::MemberSuspect { .. } => self.log.suspicions += 1,
                _ => self.log.membership.push((now, e)),
            }
        }
    }
}

impl Process for GossipProc {
    fn handle_message(&mut self, now: Instant, _from: SocketAddr, bytes: &[u8]) {
        if self.g.handle_message(now, bytes).is_err() {
            self.refused += 1;
        }
        self.drain_events(now);
    }
    fn handle_timeout(&mut self, now: Instant) {
        self.g.handle_timeout(now);
        self.drain_events(now);
    }
    fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.g.poll_transmit().map(|t| (t.to, t.payload))
    }
    fn poll_timeout(&self) -> Option<Instant> {
        self.g.poll_timeout()
    }
}

/// Deterministic node id of slot `i` in a run seeded `seed`.
pub fn node_id(seed: u64, i: usize) -> NodeId {
    let a = splitmix(seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let b = splitmix(a ^ 0xdead_beef);
    NodeId(((a as u128) << 64) | b as u128)
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Builds a fresh node for slot `i`.
pub fn make_node(
    cfg: &Config,
    seed: u64,
    i: usize,
    generation: u64,
    addr: SocketAddr,
    seeds: Vec<SocketAddr>,
    now: Instant,
) -> GossipProc {
    let rng_seed = splitmix(seed ^ ((i as u64) << 20) ^ generation);
    GossipProc::new(Gossip::new(
        cfg.clone(),
        node_id(seed, i),
        generation,
        addr,
        seeds,
        rng_seed,
        now,
    ))
}

/// A cluster of `n` nodes that join through the first three.
pub fn joining_cluster(n: usize, cfg: &Config, net: NetConfig, seed: u64) -> Sim<GossipProc> {
    let mut sim = Sim::new(seed, net);
    let seeds: Vec<SocketAddr> = (0..n.min(3)).map(crate::sim::sim_addr).collect();
    for i in 0..n {
        let now = sim.now();
        let s = seeds.clone();
        sim.add(|addr| make_node(cfg, seed, i, 1, addr, s, now));
    }
    sim
}

/// A cluster of `n` nodes that already know each other (as after convergence): for measuring
/// steady-state behaviour of large clusters without simulating their O(n^2) bootstrap. Every
/// node already publishes the common view digest, as a converged cluster does, so the warm start
/// itself spreads nothing.
pub fn warm_cluster(n: usize, cfg: &Config, net: NetConfig, seed: u64) -> Sim<GossipProc> {
    let mut sim = joining_cluster(n, cfg, net, seed);
    let snapshot = |sim: &Sim<GossipProc>| -> Vec<(Header, Arc<NodeState>)> {
        sim.up()
            .map(|(_, p)| {
                let h = Header {
                    id: p.g.id(),
                    generation: p.g.generation(),
                    incarnation: p.g.incarnation(),
                    addr: p.g.addr(),
                };
                (h, p.g.local_state().clone())
            })
            .collect()
    };
    // The view digest depends only on who is a member: compute it once, on a copy of node 0.
    let first = snapshot(&sim);
    let digest = {
        let mut copy = make_node(cfg, seed, 0, 1, first[0].0.addr, vec![], sim.now());
        copy.g.warm_start(first, true);
        copy.g.view_digest()
    };
    for i in 0..n {
        let d = digest.clone();
        sim.with_node(i, |p, now| {
            p.g.handle_command(now, Command::Set { key: keys::DIGEST.into(), value: d })
        });
    }
    let fin = snapshot(&sim);
    for i in 0..n {
        let snap = fin.clone();
        sim.with_node(i, |p, _| p.g.warm_start(snap, true));
    }
    sim
}

/// How many live nodes see node `subject` in `state` (excluding the subject itself).
pub fn seen_as(sim: &Sim<GossipProc>, subject: usize, state: MemberState) -> usize {
    let id = sim.node(subject).map(|p| p.g.id());
    let id = id.unwrap_or_else(|| node_id(sim.seed, subject));
    sim.up()
        .filter(|(i, _)| *i != subject)
        .filter(|(_, p)| p.g.member(id).is_some_and(|m| m.state == state))
        .count()
}

/// True when every live node sees every other live node alive and is converged.
pub fn all_alive_and_converged(sim: &Sim<GossipProc>) -> bool {
    let live = sim.up().count();
    sim.up().all(|(_, p)| p.g.count(MemberState::Alive) == live - 1 && p.g.converged())
}

/// Runs in slices of `step` until `cond` holds or `limit` passes; returns the time it took.
pub fn time_until(
    sim: &mut Sim<GossipProc>,
    step: Duration,
    limit: Duration,
    mut cond: impl FnMut(&Sim<GossipProc>) -> bool,
) -> Option<Duration> {
    let t0 = sim.now();
    loop {
        if cond(sim) {
            return Some(sim.now() - t0);
        }
        if sim.now() - t0 >= limit {
            return None;
        }
        sim.run_for(step);
    }
}

/// Membership events `MemberDown` about `subject` while it was in fact alive and not stalled
/// are false positives; this returns `(observer, time)` for each.
pub fn downs_about(sim: &Sim<GossipProc>, subject: NodeId) -> Vec<(usize, Instant)> {
    sim.up()
        .flat_map(|(i, p)| {
            p.log.membership.iter().filter_map(move |(t, e)| match e {
                Event::MemberDown { id, .. } if *id == subject => Some((i, *t)),
                _ => None,
            })
        })
        .collect()
}

/// Percentile of a sorted slice (nearest rank).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}
