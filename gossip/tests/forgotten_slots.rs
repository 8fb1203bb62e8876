//! ALGORITHM.md §4, leave: a left member is kept as a tombstone for `left_ttl`, then forgotten.
//! A forgotten member gives its slot back, so what a node holds follows the membership, not every
//! id it ever saw: a cluster that replaces nodes for months must not keep every old one.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use starling_gossip::message::{Body, Rumor};
use starling_gossip::{Config, Event, Gossip, Header, MemberState, Message, NodeId};

const ROUNDS: u128 = 50;
const PER_ROUND: u128 = 20;
const STEP: Duration = Duration::from_millis(100);

fn addr(id: NodeId) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 10_000 + id.0 as u16))
}

fn header(id: NodeId) -> Header {
    Header { id, generation: 1, incarnation: 0, addr: addr(id) }
}

/// One node under test plus the peers it talks to, which answer its pings while they are up.
struct Harness {
    g: Gossip,
    now: Instant,
    /// Peers that answer pings, by address.
    up: BTreeMap<SocketAddr, Header>,
    forgotten: BTreeSet<NodeId>,
    /// Most slots seen held at once.
    peak: usize,
}

impl Harness {
    fn deliver(&mut self, msg: Message) {
        self.g.handle_message(self.now, &msg.encode()).expect("valid message");
        self.settle();
    }

    /// Answers pings until the node has nothing more to send, then checks its state.
    fn settle(&mut self) {
        let max = self.g.config().max_message_bytes;
        while let Some(tx) = self.g.poll_transmit() {
            let Some(peer) = self.up.get(&tx.to).cloned() else { continue };
            let msg = Message::decode(&tx.payload, max).expect("the node sends valid messages");
            if let Body::Ping { seq, target } = msg.body {
                if target == peer.id {
                    let ack =
                        Message { from: peer, rumors: vec![], body: Body::PingAck { seq, target } };
                    self.g.handle_message(self.now, &ack.encode()).expect("valid ack");
                }
            }
        }
        while let Some(e) = self.g.poll_event() {
            if let Event::MemberForgotten { id } = e {
                assert!(self.forgotten.insert(id), "{id:?} forgotten twice");
            }
        }
        self.g.check_invariants().expect("invariants");
        // Every slot holds a member still known: live, or a tombstone within its TTL.
        let known = self.g.members().count();
        assert!(
            self.g.slots() <= known,
            "{} slots held for {known} known members ({} forgotten so far)",
            self.g.slots(),
            self.forgotten.len()
        );
        self.peak = self.peak.max(self.g.slots());
    }

    fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.now += STEP;
            self.g.handle_timeout(self.now);
            self.settle();
        }
    }

    fn join(&mut self, id: NodeId) {
        self.up.insert(addr(id), header(id));
        self.deliver(Message { from: header(id), rumors: vec![], body: Body::Rumors });
    }

    fn leave(&mut self, id: NodeId) {
        self.up.remove(&addr(id));
        let left = Rumor::Left { id, generation: 1, incarnation: 0 };
        self.deliver(Message { from: header(id), rumors: vec![left], body: Body::Rumors });
    }
}

#[test]
fn forgotten_members_give_their_slots_back() {
    let left_ttl = Duration::from_secs(4);
    let cfg = Config { left_ttl, ..Config::default() };
    let t0 = Instant::now();
    let me = NodeId(1);
    let g = Gossip::new(cfg, me, 1, addr(me), vec![], 7, t0);
    let mut h = Harness { g, now: t0, up: BTreeMap::new(), forgotten: BTreeSet::new(), peak: 0 };

    // Two members stay for the whole run; a third joins half-way, behind slots that are
    // reclaimed later, so reclaiming must move live members about without losing them.
    let mut steady = vec![NodeId(2), NodeId(3)];
    for &id in &steady {
        h.join(id);
    }
    // Each round, 20 new nodes join, stay half a second, and leave; rounds are half a TTL apart,
    // so at any time the tombstones of at most three rounds are within their TTL.
    let mut transient = BTreeSet::new();
    for round in 0..ROUNDS {
        if round == ROUNDS / 2 {
            let late = NodeId(4);
            steady.push(late);
            h.join(late);
        }
        let ids: Vec<NodeId> =
            (0..PER_ROUND).map(|k| NodeId(100 + round * PER_ROUND + k)).collect();
        for &id in &ids {
            h.join(id);
        }
        h.run_for(Duration::from_millis(500));
        for &id in &ids {
            h.leave(id);
        }
        transient.extend(ids);
        h.run_for(left_ttl / 2 - Duration::from_millis(500));
    }
    h.run_for(left_ttl * 2);

    assert_eq!(h.forgotten, transient, "every node that left was forgotten");
    let bound = steady.len() + 3 * PER_ROUND as usize;
    assert!(
        h.peak <= bound,
        "peak of {} slots after {} nodes came and went (bound {bound})",
        h.peak,
        transient.len()
    );
    assert_eq!(h.g.slots(), steady.len(), "only the members that stayed hold a slot");
    let mut known: Vec<(NodeId, MemberState)> = h.g.members().map(|m| (m.id, m.state)).collect();
    known.sort_by_key(|(id, _)| *id);
    // They answered every probe, through all the slot moves: still alive.
    let alive: Vec<(NodeId, MemberState)> =
        steady.iter().map(|&id| (id, MemberState::Alive)).collect();
    assert_eq!(known, alive);
    assert!(h.g.stats().probes > 100, "the steady members were probed all along");
}
