//! ALGORITHM.md §4, leave: a member that heard a node leave only through its `Left` rumour (the
//! leaver stopped before they synced, and the rumour's few retransmissions to the others were
//! lost) still carries the `left` to everyone by push-pull once the network heals. Otherwise the
//! others would keep the leaver as a `leaving` member that is down, forever: on their ring, its
//! ranges short of a replica, its hints kept, and the membership digest hiding the disagreement.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use starling_gossip::{Command, Config, Gossip, MemberState, NodeId};

const STEP: Duration = Duration::from_millis(50);

fn addr(i: u128) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 11_000 + i as u16))
}

struct Net {
    nodes: BTreeMap<u128, Gossip>,
    now: Instant,
}

impl Net {
    fn new(n: u128) -> Net {
        let now = Instant::now();
        let nodes = (1..=n)
            .map(|i| {
                let seeds = if i == 1 { vec![] } else { vec![addr(1)] };
                (i, Gossip::new(Config::default(), NodeId(i), 1, addr(i), seeds, i as u64, now))
            })
            .collect();
        Net { nodes, now }
    }

    /// Delivers every pending message for which `pass(from, to)` holds; drops the rest.
    fn deliver(&mut self, pass: &dyn Fn(u128, u128) -> bool) {
        loop {
            let mut sent = Vec::new();
            for (i, g) in &mut self.nodes {
                while let Some(tx) = g.poll_transmit() {
                    sent.push((*i, tx));
                }
                while g.poll_event().is_some() {}
            }
            if sent.is_empty() {
                return;
            }
            for (from, tx) in sent {
                let to = u128::from(tx.to.port() - 11_000);
                if !pass(from, to) {
                    continue;
                }
                if let Some(g) = self.nodes.get_mut(&to) {
                    let _ = g.handle_message(self.now, &tx.payload);
                }
            }
        }
    }

    fn run(&mut self, d: Duration, pass: &dyn Fn(u128, u128) -> bool) {
        let end = self.now + d;
        while self.now < end {
            self.now += STEP;
            let now = self.now;
            for g in self.nodes.values_mut() {
                g.handle_timeout(now);
            }
            self.deliver(pass);
        }
        for g in self.nodes.values() {
            g.check_invariants().expect("invariants");
        }
    }

    fn state_of(&self, observer: u128, subject: u128) -> Option<MemberState> {
        self.nodes[&observer].members().find(|m| m.id == NodeId(subject)).map(|m| m.state)
    }
}

#[test]
fn a_leave_heard_by_one_member_reaches_the_others_after_a_partition() {
    let mut net = Net::new(4);
    net.run(Duration::from_secs(10), &|_, _| true);
    for i in 1..=4 {
        assert_eq!(net.nodes[&i].count(MemberState::Alive), 3, "node {i} sees everyone alive");
    }
    // Node 4 leaves; only node 3 hears it (its messages to 1 and 2 are lost), then it stops.
    let now = net.now;
    net.nodes.get_mut(&4).expect("leaver").handle_command(now, Command::Leave);
    net.deliver(&|from, to| from == 4 && to == 3);
    assert_eq!(net.state_of(3, 4), Some(MemberState::Left), "node 3 heard the leave");
    net.nodes.remove(&4);
    // Node 3 is cut off from 1 and 2 for longer than the rumour is retransmitted.
    let apart = |a: u128, b: u128| (a == 3) != (b == 3);
    net.run(Duration::from_secs(30), &|a, b| !apart(a, b));
    for i in [1, 2] {
        assert_ne!(net.state_of(i, 4), Some(MemberState::Left), "the partition held");
    }
    // Healed: push-pull between 3 and the others carries the leave.
    net.run(Duration::from_secs(30), &|_, _| true);
    for i in 1..=3 {
        assert_eq!(
            net.state_of(i, 4),
            Some(MemberState::Left),
            "node {i} should see node 4 as left, not down"
        );
        let status = net.nodes[&i]
            .members()
            .find(|m| m.id == NodeId(4))
            .and_then(|m| m.node_state.get("status").map(str::to_owned));
        assert_eq!(status.as_deref(), Some("left"), "node {i}'s stored state of node 4");
    }
    let digests: Vec<String> = net.nodes.values().map(Gossip::view_digest).collect();
    assert!(digests.windows(2).all(|w| w[0] == w[1]), "views agree: {digests:?}");
}

/// A leaver waits for the members to confirm they heard it (`leave_done`), and a leaver cut off
/// from all of them at the moment it leaves keeps trying: it does not stop with nobody told
/// (which would leave it on everyone's ring as a `leaving` member that is down, for good).
#[test]
fn a_leaver_cut_off_from_everyone_waits_until_it_is_heard() {
    let mut net = Net::new(4);
    net.run(Duration::from_secs(10), &|_, _| true);
    let now = net.now;
    net.nodes.get_mut(&4).expect("leaver").handle_command(now, Command::Leave);
    assert!(!net.nodes[&4].leave_done(), "nobody has confirmed yet");
    // Every message to and from node 4 is lost for 20 s: far longer than the rumour's
    // retransmissions, shorter than the linger.
    let cut = |a: u128, b: u128| a != 4 && b != 4;
    net.run(Duration::from_secs(20), &cut);
    assert!(!net.nodes[&4].leave_done(), "a leave nobody heard is not done");
    assert_eq!(net.nodes[&4].leave_unconfirmed(), 3);
    for i in 1..=3 {
        assert_ne!(net.state_of(i, 4), Some(MemberState::Left), "the cut held");
    }
    // Healed: the leaver's pings carry the `Left` rumour and every member confirms.
    let mut waited = Duration::ZERO;
    while !net.nodes[&4].leave_done() {
        assert!(waited < Duration::from_secs(5), "the leave was never confirmed");
        net.run(Duration::from_millis(500), &|_, _| true);
        waited += Duration::from_millis(500);
    }
    assert_eq!(net.nodes[&4].leave_unconfirmed(), 0);
    net.nodes.remove(&4);
    for i in 1..=3 {
        assert_eq!(net.state_of(i, 4), Some(MemberState::Left), "node {i} heard the leave");
    }
}

/// With every member reachable, a leave is done as soon as they all confirmed: well before the
/// linger.
#[test]
fn a_leave_everyone_hears_is_done_at_once() {
    let mut net = Net::new(5);
    net.run(Duration::from_secs(10), &|_, _| true);
    let now = net.now;
    net.nodes.get_mut(&5).expect("leaver").handle_command(now, Command::Leave);
    net.run(Duration::from_secs(1), &|_, _| true);
    assert!(net.nodes[&5].leave_done());
    for i in 1..=4 {
        assert_eq!(net.state_of(i, 5), Some(MemberState::Left), "node {i}");
    }
    // A member that is not leaving is never "done".
    assert!(!net.nodes[&1].leave_done());
}
