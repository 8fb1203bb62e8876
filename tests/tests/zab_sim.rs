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
