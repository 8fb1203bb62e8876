//! The partition replica core in the simulator: random runs with crashes, partitions (also from
//! the metadata service), loss, duplication and reordering, checked for lost acknowledged
//! writes, offsets read as two messages, duplicates and diverged in-sync replicas; failover
//! time; and the leader-epoch scenarios of KIP-101 and KIP-279.

use std::time::Duration;

use starling_tests::mq::{failover_run, random_run};
use starling_tests::sim::seed_from_env;

#[test]
fn random_runs_lose_nothing_acknowledged() {
    let first = seed_from_env(0);
    let (mut acked, mut moves, mut wiped) = (0, 0, 0);
    for seed in first..first + 100 {
        let r = random_run(seed, 20, false);
        assert!(r.violations.is_empty(), "seed {seed}: {:#?}", r);
        acked += r.acked;
        moves += r.replica_changes;
        wiped += r.wiped;
    }
    assert!(acked > 1000, "only {acked} writes acknowledged in 100 runs");
    // Reassignments ran, and replicas they dropped lost their copies (and came back empty).
    assert!(moves > 50 && wiped > 20, "{moves} replica list changes, {wiped} copies deleted");
}

#[test]
fn power_loss_with_fsync_before_ack_loses_nothing_acknowledged() {
    let first = seed_from_env(1000);
    for seed in first..first + 50 {
        let r = random_run(seed, 20, true);
        assert!(r.violations.is_empty(), "seed {seed}: {:#?}", r);
    }
}

#[test]
fn a_new_leader_acknowledges_within_two_seconds_of_a_kill() {
    for seed in 0..10 {
        let d = failover_run(seed)
            .unwrap_or_else(|| panic!("seed {seed}: no new leader acknowledged within 10 s"));
        assert!(d < Duration::from_secs(2), "seed {seed}: {d:?}");
    }
}
