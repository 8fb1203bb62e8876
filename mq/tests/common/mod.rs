//! The hand-driven cluster the replica tests share: replicas over any `ReplicaLog`, the
//! metadata service as a compare-and-set register, messages delivered one by one, nodes cut off
//! (from each other or from the metadata service), proposals held back and released late,
//! delivered messages kept for replaying.
#![allow(dead_code, unused_imports)]

use std::cell::Cell;
use std::collections::{BTreeSet, VecDeque};
use std::rc::Rc;
use std::time::{Duration, Instant};

use starling_mq::batch::{decode_records, encode_batch, NewRecord, ProducerStamp};
use starling_mq::log::{AppendInfo, LogError, ReadResult};
use starling_mq::mem::{MemLog, ReplicaLog};
use starling_mq::replica::{
    Acks, Event, FetchAnswer, Msg, NodeId, Output, PartitionState, ProduceError, Replica,
    ReplicaConfig, Role,
};
use starling_mq::{Log, LogConfig};

/// A one-record batch, stamped by an idempotent producer if given.
pub fn batch_of(value: &str, producer: Option<ProducerStamp>) -> Vec<u8> {
    let rec = NewRecord {
        key: None,
        value: Some(value.as_bytes().to_vec()),
        headers: vec![],
        timestamp_ms: 0,
    };
    encode_batch(&[rec], producer).unwrap()
}

pub fn id(i: usize) -> NodeId {
    NodeId((i as u128 + 1) << 96)
}

pub struct Cluster<L: ReplicaLog> {
    pub now: Instant,
    pub nodes: Vec<Option<Replica<L>>>,
    pub state: PartitionState,
    pub version: u64,
    pub msgs: VecDeque<(NodeId, NodeId, Msg)>,
    pub cut: BTreeSet<usize>,
    pub meta_cut: BTreeSet<usize>,
    /// Proposals from these nodes are held back (a slow or retried RPC).
    pub hold: BTreeSet<usize>,
    pub held: Vec<(u64, PartitionState)>,
    /// Every replica message delivered, for replaying one later (duplication/reordering).
    pub delivered: Vec<(NodeId, NodeId, Msg)>,
    pub acked: Vec<(u64, i64)>,
    pub failed: Vec<(u64, ProduceError)>,
    pub cfg: ReplicaConfig,
    pub next_id: u64,
    pub max_rounds: usize,
}

impl<L: ReplicaLog> Cluster<L> {
    pub fn new(logs: Vec<L>, cfg: ReplicaConfig) -> Cluster<L> {
        let n = logs.len();
        Cluster::with_replicas(logs, n, cfg)
    }

    /// `logs.len()` nodes, of which the first `replicas` replicate the partition (the others
    /// are spares a reassignment can move it to).
    pub fn with_replicas(logs: Vec<L>, replicas: usize, cfg: ReplicaConfig) -> Cluster<L> {
        let now = Instant::now();
        let ids: Vec<NodeId> = (0..replicas).map(id).collect();
        let mut c = Cluster {
            now,
            nodes: logs
                .into_iter()
                .enumerate()
                .map(|(i, l)| Some(Replica::new(id(i), l, cfg.clone(), now)))
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
            hold: BTreeSet::new(),
            held: Vec::new(),
            delivered: Vec::new(),
            acked: Vec::new(),
            failed: Vec::new(),
            cfg,
            next_id: 0,
            max_rounds: 10_000,
        };
        c.broadcast_state();
        c.settle();
        c
    }

    pub fn idx(n: NodeId) -> usize {
        ((n.0 >> 96) - 1) as usize
    }

    pub fn broadcast_state(&mut self) {
        let (s, v, now) = (self.state.clone(), self.version, self.now);
        for (i, r) in self.nodes.iter_mut().enumerate() {
            if let Some(r) = r {
                if !self.meta_cut.contains(&i) {
                    r.handle_state(now, s.clone(), v);
                }
            }
        }
    }

    pub fn apply(&mut self, i: usize, expected_version: u64, state: PartitionState) {
        if expected_version == self.version {
            self.version += 1;
            self.state = state;
            self.broadcast_state();
        } else if let Some(r) = self.nodes[i].as_mut() {
            r.handle_state(self.now, self.state.clone(), self.version);
        }
    }

    /// Hands every live replica the partition's target replica list.
    pub fn target(&mut self, target: &[usize]) {
        let (t, now): (Vec<NodeId>, _) = (target.iter().map(|&i| id(i)).collect(), self.now);
        for r in self.nodes.iter_mut().flatten() {
            r.handle_target(now, t.clone());
        }
        self.settle();
    }

    /// Delivers the k-th held proposal (of node `i`) now.
    pub fn release(&mut self, i: usize, k: usize) {
        let (v, s) = self.held[k].clone();
        self.apply(i, v, s);
        self.settle();
    }

    /// Returns false instead of panicking when the cluster does not settle.
    pub fn try_settle(&mut self) -> bool {
        for _ in 0..self.max_rounds {
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
                            if self.hold.contains(&i) {
                                self.held.push((expected_version, state));
                                continue;
                            }
                            self.apply(i, expected_version, state);
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
                    self.delivered.push((from, to, m.clone()));
                    r.handle_message(self.now, from, m);
                }
            }
            if !moved {
                return true;
            }
        }
        false
    }

    pub fn settle(&mut self) {
        assert!(self.try_settle(), "the cluster did not settle");
    }

    pub fn run(&mut self, d: Duration) {
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

    pub fn leader(&self) -> Option<usize> {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.as_ref().map(|r| (i, r)))
            .filter(|(_, r)| r.role() == Role::Leader)
            .max_by_key(|(_, r)| r.epoch())
            .map(|(i, _)| i)
    }

    pub fn produce_at(&mut self, i: usize, value: &str, acks: Acks) -> Result<u64, ProduceError> {
        self.produce_batch(i, batch_of(value, None), acks)
    }

    /// Produces ready-made batches at node `i`; the produce id.
    pub fn produce_batch(
        &mut self,
        i: usize,
        bytes: Vec<u8>,
        acks: Acks,
    ) -> Result<u64, ProduceError> {
        self.next_id += 1;
        let idv = self.next_id;
        let now = self.now;
        let r = self.nodes[i].as_mut().expect("up").produce(now, idv, bytes, acks);
        self.settle();
        r.map(|_| idv)
    }

    /// The offset produce `id` was acknowledged with.
    pub fn acked_offset(&self, id: u64) -> Option<i64> {
        self.acked.iter().find(|a| a.0 == id).map(|a| a.1)
    }

    pub fn liveness(&mut self, of: usize, alive: bool) {
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

    pub fn values(&self, i: usize) -> Vec<String> {
        let log = self.nodes[i].as_ref().expect("up").log();
        let r = log.read(log.start_offset(), 1 << 20, i64::MAX).unwrap();
        if r.bytes.is_empty() {
            return vec![];
        }
        decode_records(&r.bytes)
            .unwrap()
            .into_iter()
            .map(|r| String::from_utf8(r.value.unwrap().to_vec()).unwrap())
            .collect()
    }

    pub fn is_acked(&self, id: u64) -> bool {
        self.acked.iter().any(|a| a.0 == id)
    }
}

impl Cluster<MemLog> {
    pub fn mem(n: usize, cfg: ReplicaConfig) -> Cluster<MemLog> {
        Cluster::new((0..n).map(|_| MemLog::new()).collect(), cfg)
    }
    pub fn crash(&mut self, i: usize) -> MemLog {
        let log = self.nodes[i].take().expect("up").log().clone();
        self.liveness(i, false);
        log
    }
    pub fn restart(&mut self, i: usize, log: MemLog) {
        self.nodes[i] = Some(Replica::new(id(i), log, self.cfg.clone(), self.now));
        self.liveness(i, true);
        self.settle();
    }
}

pub fn cfg(min_insync: usize) -> ReplicaConfig {
    ReplicaConfig { min_insync, lag_time: Duration::from_secs(2), ..ReplicaConfig::default() }
}
