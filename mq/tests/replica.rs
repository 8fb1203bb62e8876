//! The replica core driven by hand, message by message: the leader-epoch scenarios of KIP-101
//! (a follower must not truncate to its high watermark; logs that diverged after a double
//! crash) and KIP-279 (a rapid double failover leaving three different tails), fencing of a
//! deposed leader, ISR shrink and growth, and `min_insync`.

use std::time::Duration;

mod common;
use common::*;

use starling_mq::replica::{Acks, ProduceError, Replica};

#[test]
fn the_first_replica_leads_and_acks_all_waits_for_the_isr() {
    let mut c = Cluster::mem(3, cfg(2));
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
    let mut c = Cluster::mem(2, cfg(2));
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
    let mut c = Cluster::mem(2, cfg(1));
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
    let mut c = Cluster::mem(3, cfg(1));
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
    let mut c = Cluster::mem(3, cfg(2));
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
    let mut c = Cluster::mem(3, cfg(2));
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
    let mut c = Cluster::mem(3, cfg(2));
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

#[test]
fn an_idempotent_retry_gets_its_first_offsets_and_is_not_appended_again_even_by_a_new_leader() {
    use starling_mq::batch::ProducerStamp;
    let stamp = |seq| Some(ProducerStamp { id: 42, epoch: 0, base_sequence: seq });
    let mut c = Cluster::mem(3, cfg(2));
    let first = c.produce_batch(0, batch_of("a", stamp(0)), Acks::All).unwrap();
    let retry = c.produce_batch(0, batch_of("a", stamp(0)), Acks::All).unwrap();
    assert_eq!(c.acked_offset(first), Some(0));
    assert_eq!(c.acked_offset(retry), Some(0), "a retry is answered with the first offsets");
    assert_eq!(c.values(0), ["a"]);
    // A gap in the sequence, or an older producer epoch, is refused: nothing written.
    assert!(matches!(
        c.produce_batch(0, batch_of("gap", stamp(5)), Acks::All),
        Err(ProduceError::Sequence(_))
    ));
    let b = c.produce_batch(0, batch_of("b", stamp(1)), Acks::All).unwrap();
    assert_eq!(c.acked_offset(b), Some(1));
    let fenced = Some(ProducerStamp { id: 42, epoch: -1, base_sequence: 2 });
    assert!(matches!(
        c.produce_batch(0, batch_of("old", fenced), Acks::All),
        Err(ProduceError::Sequence(_))
    ));

    // The leader dies; the new one learned the producer's batches as a follower.
    let log = c.crash(0);
    let l = c.leader().expect("a new leader");
    assert_ne!(l, 0);
    let again = c.produce_batch(l, batch_of("b", stamp(1)), Acks::All).unwrap();
    assert_eq!(c.acked_offset(again), Some(1));
    let next = c.produce_batch(l, batch_of("c", stamp(2)), Acks::All).unwrap();
    assert_eq!(c.acked_offset(next), Some(2));
    assert_eq!(c.values(l), ["a", "b", "c"]);

    // A replica restarted from its log rebuilds the state too.
    c.restart(0, log);
    c.run(std::time::Duration::from_secs(3));
    let l2 = {
        let l = c.leader().expect("leader");
        let log = c.crash(l);
        c.restart(l, log);
        c.run(std::time::Duration::from_secs(3));
        c.leader().expect("leader after restart")
    };
    let late = c.produce_batch(l2, batch_of("c", stamp(2)), Acks::All).unwrap();
    assert_eq!(c.acked_offset(late), Some(2));
    assert_eq!(c.values(l2), ["a", "b", "c"]);
}

/// Found by `mq-sim` (power-loss seed 13871): a producer's window holds only its newest five
/// batches, so cutting the newest ones (a deposed leader's uncommitted tail) left the window
/// empty while older batches of that producer were still in the log; when that replica led
/// again, a retry of its first batch (sequence 0) looked new and was appended twice.
#[test]
fn a_truncated_replica_still_knows_producer_batches_older_than_its_window() {
    use starling_mq::batch::ProducerStamp;
    let stamp = |seq| Some(ProducerStamp { id: 9, epoch: 0, base_sequence: seq });
    let mut c = Cluster::mem(3, cfg(1));
    let first = c.produce_batch(0, batch_of("s0", stamp(0)), Acks::All).unwrap();
    c.produce_batch(0, batch_of("s1", stamp(1)), Acks::All).unwrap();
    assert_eq!(c.acked_offset(first), Some(0));
    // Node 0 is cut off and keeps appending alone: sequences 2..=7 fill its window.
    c.cut.insert(0);
    for seq in 2..=7 {
        c.produce_batch(0, batch_of(&format!("s{seq}"), stamp(seq)), Acks::Leader).unwrap();
    }
    // The others elect a leader; node 0 comes back, follows it, and cuts its tail.
    c.liveness(0, false);
    let l = c.leader().expect("a new leader");
    assert_ne!(l, 0);
    c.cut.clear();
    c.liveness(0, true);
    c.run(std::time::Duration::from_secs(2));
    assert_eq!(c.values(0), ["s0", "s1"]);
    // Node 0 leads again; the producer retries its first batch.
    let log = c.crash(l);
    let other = 3 - l;
    c.liveness(other, false);
    c.run(std::time::Duration::from_secs(2));
    assert_eq!(c.leader(), Some(0));
    let retry = c.produce_batch(0, batch_of("s0", stamp(0)), Acks::Leader).unwrap();
    assert_eq!(c.acked_offset(retry), Some(0), "the retry is answered with its first offset");
    assert_eq!(c.values(0), ["s0", "s1"], "and not appended again");
    drop(log);
}
