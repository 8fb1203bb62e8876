//! The ZAB core in the simulator: elections, failover, and randomized faults judged by the
//! checker in `starling_tests::zab`.

use std::time::Duration;

use starling_tests::sim::{seed_from_env, NetConfig, SeedGuard};
use starling_tests::zab::{random_run, Ensemble};
use starling_zab::{Config, Role};

fn calm() -> NetConfig {
    NetConfig {
        latency_min: Duration::from_micros(200),
        latency_max: Duration::from_millis(2),
        loss: 0.0,
        duplicate: 0.0,
    }
}

#[test]
fn three_voters_elect_one_leader_and_commit_in_order() {
    let seed = seed_from_env(1);
    let _g = SeedGuard(seed);
    let mut e =
        Ensemble::new(seed, calm(), 3, 1, Config { snapshot_every: 25, ..Config::default() });
    e.sim.run_for(Duration::from_secs(1));
    let leader = e.leader().expect("a leader within a second");
    for _ in 0..200 {
        assert!(e.propose_at(leader));
        e.sim.run_for(Duration::from_millis(2));
    }
    let followers = (0..3).filter(|i| *i != leader).collect::<Vec<_>>();
    // A follower refuses proposals.
    assert!(!e.propose_at(followers[0]));
    let v = e.settle_and_check(Duration::from_secs(1));
    assert!(v.is_empty(), "{v:#?}");
    let c = e.checker.borrow();
    assert!(c.acked.len() >= 200, "{} committed", c.acked.len());
    // The observer learned everything too, and snapshots were taken.
    let obs = e.sim.node(3).unwrap();
    assert!(matches!(obs.zab.role(), Role::Observing { synced: true, .. }), "{:?}", obs.zab.role());
    assert!(obs.zab.status().snapshot_zxid > starling_zab::Zxid::ZERO);
}

/// Large transactions bring a snapshot before the count does (`snapshot_log_bytes`): the
/// log the core keeps in memory is bounded in bytes, not only in transactions.
#[test]
fn large_transactions_are_snapshotted_by_their_bytes_before_their_count() {
    let seed = seed_from_env(11);
    let _g = SeedGuard(seed);
    let cfg = |bytes| Config {
        snapshot_every: 1_000_000,
        snapshot_log_bytes: bytes,
        ..Config::default()
    };
    let run = |cfg: Config| {
        let mut e = Ensemble::new(seed, calm(), 3, 0, cfg);
        let leader = e.wait_leader(Duration::from_secs(2)).expect("a leader");
        for _ in 0..60 {
            assert!(e.propose_txn(leader, vec![7; 4096]).is_some());
            e.sim.run_for(Duration::from_millis(2));
        }
        let v = e.settle_and_check(Duration::from_secs(1));
        assert!(v.is_empty(), "{v:#?}");
        let snapshots = e.checker.borrow().snapshots;
        snapshots
    };
    // 60 transactions of 4 KiB: 240 KiB, at least two snapshots' worth of 64 KiB on each voter.
    assert!(run(cfg(64 << 10)) >= 3 * 2, "the byte bound took no snapshots");
    // The same with the default bound (64 MiB): none.
    assert_eq!(run(cfg(Config::default().snapshot_log_bytes)), 0);
}

#[test]
fn a_single_voter_leads_alone() {
    let mut e = Ensemble::new(7, calm(), 1, 0, Config::default());
    e.sim.run_for(Duration::from_millis(100));
    assert_eq!(e.leader(), Some(0));
    assert!(e.propose_at(0));
    e.sim.run_for(Duration::from_millis(10));
    assert_eq!(e.checker.borrow().acked.len(), 1);
}

#[test]
fn a_killed_leader_is_replaced_and_nothing_committed_is_lost() {
    let seed = seed_from_env(3);
    let _g = SeedGuard(seed);
    let mut e = Ensemble::new(seed, calm(), 3, 0, Config::default());
    e.sim.run_for(Duration::from_secs(1));
    let old = e.leader().expect("leader");
    for _ in 0..50 {
        e.propose_at(old);
        e.sim.run_for(Duration::from_millis(1));
    }
    e.crash(old);
    let t0 = e.sim.now();
    let mut new = None;
    while e.sim.now() < t0 + Duration::from_secs(5) {
        e.sim.run_for(Duration::from_millis(5));
        if let Some(l) = e.leader() {
            if e.propose_at(l) {
                new = Some(l);
                break;
            }
        }
    }
    let new = new.expect("a new leader within 5 s");
    assert_ne!(new, old);
    let failover = e.sim.now() - t0;
    assert!(failover < Duration::from_secs(2), "{failover:?}");
    let v = e.settle_and_check(Duration::from_secs(1));
    assert!(v.is_empty(), "{v:#?}");
}

#[test]
fn random_faults_break_no_invariant() {
    let base = seed_from_env(100);
    let seeds = std::env::var("ZAB_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(20u64);
    for seed in base..base + seeds {
        let _g = SeedGuard(seed);
        let r = random_run(seed, 3, 15);
        assert!(r.violations.is_empty(), "seed {seed}: {:#?}", r.violations);
        assert!(r.committed > 100, "seed {seed}: only {} committed: {r:?}", r.committed);
    }
}

/// The leader sends its proposals while it writes them (`Ready::send_first`) and goes on taking
/// acknowledgements meanwhile (pipelined): both followers' acknowledgements are a quorum, so
/// the transaction commits, and the client hears so, before the leader's own write is done.
/// The leader then crashes with its write lost: the followers' quorum holds the transaction,
/// the next leader keeps it, and the old leader gets it back when it returns. Nothing is
/// committed twice or lost.
#[test]
fn a_leader_that_crashes_while_writing_what_its_followers_acked_loses_nothing() {
    let mut e = Ensemble::new(21, calm(), 3, 0, Config::default());
    let sec = Duration::from_secs(1);
    let l = e.wait_leader(sec).expect("leader");
    assert_eq!(e.propose_n(l, 5), 5);
    e.sim.run_for(Duration::from_millis(20));
    let before = e.checker.borrow().acked.len();
    e.sim.node_mut(l).unwrap().write_time = Some(Duration::from_millis(50));
    assert!(e.propose_at(l));
    let last = e.sim.node(l).unwrap().zab.last_zxid();
    e.sim.run_for(Duration::from_millis(20));
    let leader = e.sim.node(l).unwrap();
    assert!(leader.writing(), "the leader's write takes 50 ms");
    assert!(leader.disk.borrow().load().log.iter().all(|x| x.zxid < last), "not on its disk yet");
    let others: Vec<usize> = (0..3).filter(|i| *i != l).collect();
    for &i in &others {
        assert_eq!(e.sim.node(i).unwrap().zab.last_zxid(), last, "follower {i} has it");
    }
    assert_eq!(
        e.checker.borrow().acked.len(),
        before + 1,
        "the followers' quorum commits it before the leader's own write is done"
    );
    e.crash(l);
    let n = e.wait_leader(2 * sec).expect("a new leader");
    assert!(others.contains(&n));
    e.restart(l);
    e.sim.run_for(sec);
    let v = e.settle_and_check(sec);
    assert!(v.is_empty(), "{v:#?}");
    let lasts: Vec<_> = (0..3).map(|i| e.sim.node(i).unwrap().zab.last_zxid()).collect();
    assert!(lasts.iter().all(|z| *z == lasts[0] && *z > last), "{lasts:?}");
    let logs: Vec<bool> = (0..3)
        .map(|i| {
            let d = e.sim.node(i).unwrap().disk.borrow().load();
            d.log.iter().any(|x| x.zxid == last)
                || d.snapshot.as_ref().is_some_and(|(z, _)| *z >= last)
        })
        .collect();
    assert_eq!(logs, vec![true; 3], "every server holds the transaction");
}

/// Scenario tests for ZooKeeper's sync bugs (see `zab/ALGORITHM.md`). Each ends with the
/// checker's settle: one final write makes any phantom transaction surface.
mod zookeeper_bugs {
    use super::*;
    use starling_tests::zab::Ensemble;

    const SEC: Duration = Duration::from_secs(1);

    /// A leader cut off with proposals nobody else has, killed, then back after a new leader
    /// took over: its uncommitted tail must go (ZOOKEEPER-2832 when the new leader has not
    /// proposed yet, so its last zxid is lower; ZOOKEEPER-1154 when it has, so the old
    /// leader's last zxid is lower than the new leader's but not in its history).
    fn uncommitted_tail(new_leader_proposes: bool) {
        let mut e = Ensemble::new(11, calm(), 3, 0, Config::default());
        let l = e.wait_leader(SEC).expect("leader");
        assert_eq!(e.propose_n(l, 5), 5);
        e.sim.run_for(Duration::from_millis(20));
        let others: Vec<usize> = (0..3).filter(|i| *i != l).collect();
        e.sim.partition(&[vec![l], others.clone()]);
        // Accepted by the cut-off leader, never committed.
        assert!(e.propose_n(l, 3) > 0);
        e.crash(l);
        let n = e.wait_leader(2 * SEC).expect("a new leader");
        assert!(others.contains(&n));
        if new_leader_proposes {
            assert_eq!(e.propose_n(n, 2), 2);
        }
        e.restart(l);
        e.sim.heal();
        e.sim.run_for(SEC);
        let v = e.settle_and_check(SEC);
        assert!(v.is_empty(), "{v:#?}");
        let last: Vec<_> = (0..3).map(|i| e.sim.node(i).unwrap().zab.last_zxid()).collect();
        assert!(last.iter().all(|z| *z == last[0]), "{last:?}");
    }

    #[test]
    fn zookeeper_2832_an_uncommitted_tail_past_a_lower_leader_is_truncated() {
        uncommitted_tail(false);
    }

    #[test]
    fn zookeeper_1154_an_uncommitted_zxid_not_in_the_new_history_is_truncated() {
        uncommitted_tail(true);
    }

    /// A follower far behind gets a SNAP (or a DIFF), then the quorum loses power: what it
    /// acknowledged with NEWLEADER must be on its disk (ZOOKEEPER-3642 for SNAP, -3911 and -4646
    /// for DIFF), or the acknowledged transactions are lost when it outranks the others.
    fn sync_then_power_loss(snapshot_every: u64) -> u64 {
        sync_then_power_loss_in(snapshot_every, Config::default().chunk_bytes)
    }

    fn sync_then_power_loss_in(snapshot_every: u64, chunk_bytes: usize) -> u64 {
        let cfg = Config { snapshot_every, chunk_bytes, ..Config::default() };
        let mut e = Ensemble::new(12, calm(), 3, 0, cfg);
        let a = e.wait_leader(SEC).expect("leader");
        let c = (a + 1) % 3;
        let b = (a + 2) % 3;
        e.sim.partition(&[vec![c], vec![a, b]]);
        e.sim.run_for(Duration::from_millis(400));
        assert_eq!(e.propose_n(a, 30), 30);
        // Long enough for the snapshots (encoded off the core's loop) to come back and the
        // log to be compacted.
        e.sim.run_for(Duration::from_millis(500));
        if snapshot_every < 30 {
            // c, away for all of them, must need a SNAP from b, the next leader: more, until
            // b's log no longer reaches back to c's start (each server snapshots after a count
            // of transactions of its own drawing).
            let mut more = 0;
            while e.disks[b].borrow().load().log_base == starling_zab::Zxid::ZERO {
                assert!(more < 300, "b's log was never compacted");
                assert_eq!(e.propose_n(a, 10), 10);
                more += 10;
                e.sim.run_for(Duration::from_millis(250));
            }
        }
        e.crash(a);
        e.sim.heal();
        // b leads (it holds the 30 transactions); c synchronizes from it.
        let mut synced = false;
        let end = e.sim.now() + 3 * SEC;
        while e.sim.now() < end && !synced {
            e.sim.run_for(Duration::from_millis(5));
            synced = e.leader() == Some(b)
                && matches!(
                    e.sim.node(c).unwrap().zab.role(),
                    Role::Following { synced: true, .. }
                );
        }
        assert!(synced, "c did not sync from b");
        let restores = e.checker.borrow().restores;
        e.crash(b);
        e.crash(c);
        e.restart(c);
        e.restart(a);
        e.sim.run_for(2 * SEC);
        let v = e.settle_and_check(SEC);
        assert!(v.is_empty(), "{v:#?}");
        assert!(e.checker.borrow().acked.len() >= 30);
        restores
    }

    #[test]
    fn zookeeper_3642_a_snap_is_on_disk_before_newleader_is_acknowledged() {
        assert!(sync_then_power_loss(5) > 0, "c should have been sent a snapshot");
    }

    /// The same with the snapshot in pieces of 16 bytes (a large tree's snapshot does not fit
    /// in one message).
    #[test]
    fn a_snapshot_sent_in_chunks_is_restored_and_on_disk_before_newleader_is_acknowledged() {
        assert!(sync_then_power_loss_in(5, 16) > 0, "c should have been sent a snapshot");
    }

    #[test]
    fn zookeeper_3911_and_4646_a_diff_is_on_disk_before_newleader_is_acknowledged() {
        assert_eq!(sync_then_power_loss(10_000), 0, "c should have been sent a DIFF");
    }

    /// A follower restarts and synchronizes while proposals stream in; then the leader and it
    /// crash together (ZOOKEEPER-4785: proposals during the learner's sync were lost).
    #[test]
    fn zookeeper_4785_proposals_during_a_learners_sync_are_not_lost() {
        let mut e = Ensemble::new(13, calm(), 3, 0, Config::default());
        let l = e.wait_leader(SEC).expect("leader");
        let f1 = (l + 1) % 3;
        let f2 = (l + 2) % 3;
        e.propose_n(l, 20);
        e.crash(f2);
        e.propose_n(l, 20);
        e.restart(f2);
        let end = e.sim.now() + 3 * SEC;
        while e.sim.now() < end {
            e.propose_at(l);
            e.sim.run_for(Duration::from_millis(1));
            if matches!(e.sim.node(f2).unwrap().zab.role(), Role::Following { synced: true, .. }) {
                break;
            }
        }
        e.propose_n(l, 20);
        // f1 stops hearing the leader; only f2's acknowledgements commit from here.
        e.sim.block(l, f1);
        e.propose_n(l, 20);
        e.sim.run_for(Duration::from_millis(20));
        e.crash(l);
        e.crash(f2);
        e.restart(f2);
        e.sim.heal();
        e.sim.run_for(2 * SEC);
        let v = e.settle_and_check(SEC);
        assert!(v.is_empty(), "{v:#?}");
    }
}
