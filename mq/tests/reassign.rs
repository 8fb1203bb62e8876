//! Reassignment: the partition's leader moves it to a new replica list (the ring's preference
//! list after a join, a leave or a removal) in two recorded steps, losing nothing acknowledged.

use std::time::Duration;

mod common;
use common::*;

use starling_mq::mem::MemLog;
use starling_mq::replica::Acks;

fn four_nodes_three_replicas() -> Cluster<MemLog> {
    let logs = (0..4).map(|_| MemLog::new()).collect();
    let c = Cluster::with_replicas(logs, 3, cfg(2));
    assert_eq!(c.leader(), Some(0));
    c
}

fn ids(of: &[usize]) -> Vec<starling_mq::replica::NodeId> {
    of.iter().map(|&i| id(i)).collect()
}

#[test]
fn a_new_replica_catches_up_joins_the_isr_and_the_replaced_one_leaves() {
    let mut c = four_nodes_three_replicas();
    for v in ["m1", "m2", "m3"] {
        c.produce_at(0, v, Acks::All).unwrap();
    }
    c.run(Duration::from_millis(50));
    // Node 3 cannot reach the leader yet: step 1 is recorded (a replica, outside the ISR) and
    // the move waits there.
    c.cut.insert(3);
    c.target(&[0, 1, 3]);
    c.run(Duration::from_millis(300));
    assert_eq!(c.state.replicas, ids(&[0, 1, 2, 3]));
    assert_eq!(c.state.isr, ids(&[0, 1, 2]));
    // The leader reports the move; node 3 never fetched.
    let moving = c.nodes[0].as_ref().unwrap().moving().expect("a move in progress");
    assert_eq!(moving.adding, vec![(id(3), None)]);
    assert_eq!(moving.removing, ids(&[2]));
    assert_eq!(c.nodes[1].as_ref().unwrap().moving(), None, "a follower carries out no move");
    // Writes go on while it moves.
    c.produce_at(0, "m4", Acks::All).unwrap();
    c.run(Duration::from_millis(50));
    assert_eq!(c.acked.len(), 4);
    c.cut.clear();
    // Its lost fetch is sent again after the fetch timeout (2 s).
    c.run(Duration::from_millis(2500));
    assert_eq!(c.state.replicas, ids(&[0, 1, 3]), "{:?}", c.state);
    assert_eq!(c.state.isr, ids(&[0, 1, 3]));
    assert_eq!(c.state.leader, Some(id(0)));
    assert_eq!(c.state.leader_epoch, 1, "the leader stayed: no new epoch");
    assert_eq!(c.nodes[0].as_ref().unwrap().moving(), None, "the move is over");
    assert_eq!(c.acked.len(), 4);
    assert_eq!(c.values(3), vec!["m1", "m2", "m3", "m4"]);
    // The removed replica is no follower any more; the new set takes acks=all writes.
    assert_eq!(c.nodes[2].as_ref().unwrap().role(), starling_mq::replica::Role::None);
    c.produce_at(0, "m5", Acks::All).unwrap();
    c.run(Duration::from_millis(50));
    assert_eq!(c.acked.len(), 5);
    assert_eq!(c.values(3), vec!["m1", "m2", "m3", "m4", "m5"]);
}

#[test]
fn a_leader_outside_the_target_hands_over_to_an_in_sync_replica_of_the_target() {
    let mut c = four_nodes_three_replicas();
    c.produce_at(0, "m1", Acks::All).unwrap();
    c.produce_at(0, "m2", Acks::All).unwrap();
    c.run(Duration::from_millis(50));
    c.target(&[1, 2, 3]);
    c.run(Duration::from_millis(800));
    assert_eq!(c.state.replicas, ids(&[1, 2, 3]), "{:?}", c.state);
    assert_eq!(c.state.isr, ids(&[1, 2, 3]));
    assert_eq!(c.leader(), Some(1));
    assert!(c.state.leader_epoch >= 2, "a new leader, a new epoch: {:?}", c.state);
    for i in 1..4 {
        assert_eq!(c.values(i), vec!["m1", "m2"], "replica {i}");
    }
    c.produce_at(1, "m3", Acks::All).unwrap();
    c.run(Duration::from_millis(50));
    assert_eq!(c.acked.len(), 3);
    assert_eq!(c.values(3), vec!["m1", "m2", "m3"]);
}

#[test]
fn a_target_replica_that_is_down_holds_the_move_and_a_newer_target_replaces_it() {
    let mut c = four_nodes_three_replicas();
    c.produce_at(0, "m1", Acks::All).unwrap();
    c.run(Duration::from_millis(50));
    let spare = c.crash(3);
    c.target(&[0, 1, 3]);
    c.run(Duration::from_secs(3));
    // Node 3 cannot catch up: the old replicas stay, nothing is dropped.
    assert_eq!(c.state.replicas, ids(&[0, 1, 2, 3]));
    assert_eq!(c.state.isr, ids(&[0, 1, 2]));
    c.produce_at(0, "m2", Acks::All).unwrap();
    c.run(Duration::from_millis(50));
    assert_eq!(c.acked.len(), 2);
    // The node is removed for good: the target goes back to the old replicas.
    c.target(&[0, 1, 2]);
    c.run(Duration::from_millis(500));
    assert_eq!(c.state.replicas, ids(&[0, 1, 2]));
    assert_eq!(c.state.isr, ids(&[0, 1, 2]));
    drop(spare);
}

#[test]
fn a_follower_does_not_reassign_and_a_reassignment_survives_a_leader_crash() {
    let mut c = four_nodes_three_replicas();
    c.produce_at(0, "m1", Acks::All).unwrap();
    c.run(Duration::from_millis(50));
    // Only the followers hear of the target: nothing moves.
    let t = ids(&[1, 2, 3]);
    let now = c.now;
    for i in 1..4 {
        c.nodes[i].as_mut().unwrap().handle_target(now, t.clone());
    }
    c.settle();
    c.run(Duration::from_millis(200));
    assert_eq!(c.state.replicas, ids(&[0, 1, 2]));
    // The leader dies: node 1 leads, and moves the partition as its target says.
    c.crash(0);
    c.run(Duration::from_millis(800));
    assert_eq!(c.leader(), Some(1));
    assert_eq!(c.state.replicas, ids(&[1, 2, 3]), "{:?}", c.state);
    assert_eq!(c.values(3), vec!["m1"]);
}
