//! The replica core driven by hand, message by message: the leader-epoch scenarios of KIP-101
//! (a follower must not truncate to its high watermark; logs that diverged after a double
//! crash) and KIP-279 (a rapid double failover leaving three different tails), fencing of a
//! deposed leader, ISR shrink and growth, and `min_insync`.

use std::collections::{BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use starling_mq::batch::{decode_records, encode_batch, NewRecord};
use starling_mq::mem::{MemLog, ReplicaLog};
use starling_mq::replica::{
    Acks, Event, Msg, NodeId, Output, PartitionState, ProduceError, Replica, ReplicaConfig, Role,
};

fn id(i: usize) -> NodeId {
    NodeId((i as u128 + 1) << 96)
}

struct Cluster {
    now: Instant,
    nodes: Vec<Option<Replica<MemLog>>>,
    state: PartitionState,
    version: u64,
    msgs: VecDeque<(NodeId, NodeId, Msg)>,
    /// Nodes whose messages (both ways) are dropped.
    cut: BTreeSet<usize>,
    /// Nodes cut from the metadata service.
    meta_cut: BTreeSet<usize>,
    acked: Vec<(u64, i64)>,
    failed: Vec<(u64, ProduceError)>,
    cfg: ReplicaConfig,
    next_id: u64,
}

impl Cluster {
    fn new(n: usize, cfg: ReplicaConfig) -> Cluster {
        let now = Instant::now();
        let ids: Vec<NodeId> = (0..n).map(id).collect();
        let mut c = Cluster {
            now,
            nodes: (0..n)
                .map(|i| Some(Replica::new(id(i), MemLog::new(), cfg.clone(), now)))
                .collect(),
            state: PartitionState {
                replicas: ids.clone(),
                leader: None,
                leader_epoch: 0,
                isr: ids,
            },
            version: 1,
            msgs: VecDeque::new(),
            cut: BTreeSet::new(),
            meta_cut: BTreeSet::new(),
            acked: Vec::new(),
            failed: Vec::new(),
            cfg,
            next_id: 0,
        };
        c.broadcast_state();
        c.settle();
        c
    }

    fn idx(n: NodeId) -> usize {
        ((n.0 >> 96) - 1) as usize
    }

    fn broadcast_state(&mut self) {
        let (s, v, now) = (self.state.clone(), self.version, self.now);
        for (i, r) in self.nodes.iter_mut().enumerate() {
            if let Some(r) = r {
                if !self.meta_cut.contains(&i) {
                    r.handle_state(now, s.clone(), v);
                }
            }
        }
    }

    /// Drains every node's outputs and delivers messages until nothing moves.
    fn settle(&mut self) {
        for _ in 0..10_000 {
            let mut moved = false;
            for i in 0..self.nodes.len() {
                while let Some(o) = self.nodes[i].as_mut().and_then(|r| r.poll_output()) {
                    moved = true;
                    match o {
                        Output::Send(to, m) => self.msgs.push_back((id(i), to, m)),
                        Output::ProposeState { expected_version, state } => {
                            if self.meta_cut.contains(&i) {
                                continue;
                            }
                            if expected_version == self.version {
                                self.version += 1;
                                self.state = state;
                                self.broadcast_state();
                            } else if let Some(r) = self.nodes[i].as_mut() {
                                r.handle_state(self.now, self.state.clone(), self.version);
                            }
                        }
                        Output::RefreshState => {
                            if !self.meta_cut.contains(&i) {
                                let (s, v, now) = (self.state.clone(), self.version, self.now);
                                if let Some(r) = self.nodes[i].as_mut() {
                                    r.handle_state(now, s, v);
                                }
                            }
                        }
                        Output::Event(Event::Produced { id, base_offset, .. }) => {
                            self.acked.push((id, base_offset))
                        }
                        Output::Event(Event::ProduceFailed { id, error }) => {
                            self.failed.push((id, error))
                        }
                        Output::Event(_) => {}
                    }
                }
            }
            while let Some((from, to, m)) = self.msgs.pop_front() {
                moved = true;
                let (f, t) = (Self::idx(from), Self::idx(to));
                if self.cut.contains(&f) || self.cut.contains(&t) {
                    continue;
                }
                if let Some(r) = self.nodes[t].as_mut() {
                    r.handle_message(self.now, from, m);
                }
            }
            if !moved {
                return;
            }
        }
        panic!("the cluster did not settle");
    }

    /// Advances time in small steps, firing timers.
    fn run(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.now += Duration::from_millis(10);
            let now = self.now;
            for r in self.nodes.iter_mut().flatten() {
                if r.poll_timeout().is_some_and(|t| t <= now) {
                    r.handle_timeout(now);
                }
            }
            self.settle();
        }
    }

    fn leader(&self) -> Option<usize> {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.as_ref().map(|r| (i, r)))
            .filter(|(_, r)| r.role() == Role::Leader)
            .max_by_key(|(_, r)| r.epoch())
            .map(|(i, _)| i)
    }

    fn produce_at(&mut self, i: usize, value: &str, acks: Acks) -> Result<u64, ProduceError> {
        self.next_id += 1;
        let idv = self.next_id;
        let rec = NewRecord {
            key: None,
            value: Some(value.as_bytes().to_vec()),
            headers: vec![],
            timestamp_ms: 0,
        };
        let now = self.now;
        let r = self.nodes[i].as_mut().expect("up").produce(
            now,
            idv,
            encode_batch(&[rec], None).unwrap(),
            acks,
        );
        self.settle();
        r.map(|_| idv)
    }

    /// Tells every live node that `of` is up or down.
    fn liveness(&mut self, of: usize, alive: bool) {
        let now = self.now;
        for (i, r) in self.nodes.iter_mut().enumerate() {
            if i != of {
                if let Some(r) = r {
                    r.handle_liveness(now, id(of), alive);
                }
            }
        }
        self.settle();
    }

    fn crash(&mut self, i: usize) -> MemLog {
        let log = self.nodes[i].take().expect("up").log().clone();
        self.liveness(i, false);
        log
    }

    fn restart(&mut self, i: usize, log: MemLog) {
        self.nodes[i] = Some(Replica::new(id(i), log, self.cfg.clone(), self.now));
        self.liveness(i, true);
        self.settle();
    }

    fn values(&self, i: usize) -> Vec<String> {
        let log = self.nodes[i].as_ref().expect("up").log();
        let r = log.read(log.start_offset(), 1 << 20, i64::MAX).unwrap();
        decode_records(&r.bytes)
            .unwrap()
            .into_iter()
            .map(|r| String::from_utf8(r.value.unwrap().to_vec()).unwrap())
            .collect()
    }
}

fn cfg(min_insync: usize) -> ReplicaConfig {
    ReplicaConfig { min_insync, lag_time: Duration::from_secs(2), ..ReplicaConfig::default() }
}

#[test]
fn the_first_replica_leads_and_acks_all_waits_for_the_isr() {
    let mut c = Cluster::new(3, cfg(2));
    assert_eq!(c.leader(), Some(0));
    assert_eq!(c.state.leader_epoch, 1);
    let m = c.produce_at(0, "m1", Acks::All).unwrap();
    c.run(Duration::from_millis(50));
    assert_eq!(c.acked, vec![(m, 0)]);
    for i in 0..3 {
        assert_eq!(c.values(i), vec!["m1"]);
    }
    // Not the leader: refused, nothing written.
    assert!(matches!(
        c.produce_at(1, "x", Acks::All),
        Err(ProduceError::NotLeader { leader: Some(_), epoch: 1 })
    ));
}

#[test]
fn a_follower_restarted_keeps_what_its_high_watermark_did_not_cover_kip_101_scenario_1() {
    // Two replicas. m2 is replicated to B, but B's high watermark still says 1 when it
    // restarts. Truncating to the high watermark (Kafka before KIP-101) then losing A would
    // lose the acknowledged m2.
    let mut c = Cluster::new(2, cfg(2));
    c.produce_at(0, "m1", Acks::All).unwrap();
    c.run(Duration::from_millis(20));
    let m2 = c.produce_at(0, "m2", Acks::All).unwrap();
    c.run(Duration::from_millis(20));
    assert!(c.acked.iter().any(|a| a.0 == m2));
    let b = c.crash(1);
    c.restart(1, b);
    c.crash(0);
    c.run(Duration::from_millis(500));
    assert_eq!(c.leader(), Some(1));
    assert_eq!(c.values(1), vec!["m1", "m2"]);
}

#[test]
fn logs_that_diverged_across_a_crash_converge_on_the_new_leader_kip_101_scenario_2() {
    let mut c = Cluster::new(2, cfg(1));
    c.produce_at(0, "m1", Acks::All).unwrap();
    c.run(Duration::from_millis(20));
    // B is cut off; A takes m2 with acks=1 (B never sees it), then dies.
    c.cut.insert(1);
    c.produce_at(0, "m2", Acks::Leader).unwrap();
    let a = c.crash(0);
    c.cut.clear();
    c.run(Duration::from_millis(500));
    assert_eq!(c.leader(), Some(1));
    c.produce_at(1, "m3", Acks::All).unwrap();
    c.run(Duration::from_millis(50));
    // A returns with m2 at offset 1 (epoch 1); B has m3 there (epoch 2).
    c.restart(0, a);
    c.run(Duration::from_millis(500));
    assert_eq!(c.values(0), vec!["m1", "m3"]);
    assert_eq!(c.values(1), vec!["m1", "m3"]);
}

#[test]
fn a_rapid_double_failover_leaves_three_tails_that_converge_kip_279() {
    let mut c = Cluster::new(3, cfg(1));
    c.produce_at(0, "m1", Acks::All).unwrap();
    c.run(Duration::from_millis(50));
    // A (epoch 1) writes m2 alone and dies.
    c.cut.insert(0);
    c.produce_at(0, "m2", Acks::Leader).unwrap();
    let a = c.crash(0);
    c.cut.clear();
    c.run(Duration::from_millis(200));
    assert_eq!(c.leader(), Some(1));
    // B (epoch 2) writes m3 alone and dies.
    c.cut.insert(1);
    c.produce_at(1, "m3", Acks::Leader).unwrap();
    let b = c.crash(1);
    c.cut.clear();
    c.run(Duration::from_millis(200));
    assert_eq!(c.leader(), Some(2));
    let m4 = c.produce_at(2, "m4", Acks::All).unwrap();
    c.run(Duration::from_millis(50));
    assert!(c.acked.iter().any(|x| x.0 == m4));
    // A: [m1 e1, m2 e1]; B: [m1 e1, m3 e2]; C: [m1 e1, m4 e3].
    c.restart(0, a);
    c.restart(1, b);
    c.run(Duration::from_secs(1));
    for i in 0..3 {
        assert_eq!(c.values(i), vec!["m1", "m4"], "replica {i}");
    }
    assert_eq!(c.state.isr.len(), 3, "both returned replicas rejoined the ISR: {:?}", c.state);
}

#[test]
fn a_deposed_leader_cannot_commit_and_its_writes_are_cut() {
    let mut c = Cluster::new(3, cfg(2));
    c.produce_at(0, "m1", Acks::All).unwrap();
    c.run(Duration::from_millis(50));
    // A is cut from the others and from the metadata service, but stays up and leading in
    // its own view. B takes over.
    c.cut.insert(0);
    c.meta_cut.insert(0);
    c.liveness(0, false);
    c.run(Duration::from_millis(300));
    assert_eq!(c.state.leader, Some(id(1)));
    let stale = c.produce_at(0, "lost", Acks::All).unwrap();
    c.run(Duration::from_secs(3));
    // A cannot shrink its ISR (the metadata service is out of reach), so the write is never
    // acknowledged.
    assert!(!c.acked.iter().any(|x| x.0 == stale));
    let fresh = c.produce_at(1, "m2", Acks::All).unwrap();
    c.run(Duration::from_millis(50));
    assert!(c.acked.iter().any(|x| x.0 == fresh));
    // Back: A learns the new epoch, fails its pending write (outcome unknown), and its log
    // loses the write nobody else has.
    c.cut.clear();
    c.meta_cut.clear();
    c.liveness(0, true);
    c.run(Duration::from_secs(2));
    assert!(c.failed.iter().any(|(i, e)| *i == stale && e.outcome_unknown()), "{:?}", c.failed);
    for i in 0..3 {
        assert_eq!(c.values(i), vec!["m1", "m2"], "replica {i}");
    }
}

#[test]
fn the_isr_shrinks_for_a_dead_follower_and_grows_when_it_returns() {
    let mut c = Cluster::new(3, cfg(2));
    c.produce_at(0, "m1", Acks::All).unwrap();
    c.run(Duration::from_millis(50));
    let log = c.crash(2);
    c.run(Duration::from_millis(100));
    assert_eq!(c.state.isr, vec![id(0), id(1)]);
    c.crash(1);
    c.run(Duration::from_millis(100));
    assert_eq!(c.state.isr, vec![id(0)]);
    // One in-sync replica, two required: refused, nothing written.
    assert!(matches!(
        c.produce_at(0, "x", Acks::All),
        Err(ProduceError::NotEnoughReplicas { isr: 1, min: 2 })
    ));
    c.restart(2, log);
    c.run(Duration::from_millis(300));
    assert_eq!(c.state.isr, vec![id(0), id(2)]);
    c.produce_at(0, "m2", Acks::All).unwrap();
    c.run(Duration::from_millis(50));
    assert_eq!(c.acked.len(), 2);
    assert_eq!(c.values(2), vec!["m1", "m2"]);
}

#[test]
fn a_restarted_leader_takes_a_new_epoch_and_no_leader_comes_from_outside_the_isr() {
    let mut c = Cluster::new(3, cfg(2));
    c.produce_at(0, "m1", Acks::All).unwrap();
    c.run(Duration::from_millis(50));
    // The leader restarts before anyone noticed: it asks for the next epoch rather than
    // resuming the one whose in-memory state it lost.
    let log = c.nodes[0].take().unwrap().log().clone();
    c.nodes[0] = Some(Replica::new(id(0), log, c.cfg.clone(), c.now));
    c.run(Duration::from_millis(300));
    assert_eq!(c.leader(), Some(0));
    assert_eq!(c.state.leader_epoch, 2);
    // C falls out of the ISR; then A and B die: C must not lead (no unclean election).
    let cl = c.crash(2);
    c.run(Duration::from_millis(100));
    c.produce_at(0, "m2", Acks::All).unwrap();
    c.run(Duration::from_millis(50));
    c.crash(0);
    c.crash(1);
    c.restart(2, cl);
    c.run(Duration::from_secs(1));
    assert_eq!(c.leader(), None);
    assert!(!c.state.isr.contains(&id(2)), "{:?}", c.state);
}
