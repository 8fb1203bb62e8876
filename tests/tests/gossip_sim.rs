//! Gossip in the deterministic simulator. Each test runs on a seed (`SEED=n` replays one) and
//! checks the core's invariants after every step.

use std::time::Duration;

use starling_gossip::{Command, Config, Event, MemberState};
use starling_tests::gossip::{
    all_alive_and_converged, downs_about, joining_cluster, make_node, seen_as, time_until,
    warm_cluster, GossipProc,
};
use starling_tests::sim::{seed_from_env, NetConfig, SeedGuard, Sim};

fn checked(mut sim: Sim<GossipProc>) -> Sim<GossipProc> {
    sim.set_check(|_, p: &GossipProc, _| p.g.check_invariants());
    sim
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

const SLICE: Duration = Duration::from_millis(100);

#[test]
fn cluster_joins_through_seeds_and_converges() {
    let seed = seed_from_env(1);
    let _g = SeedGuard(seed);
    let mut sim = checked(joining_cluster(30, &Config::default(), NetConfig::default(), seed));
    let t = time_until(&mut sim, SLICE, secs(20), all_alive_and_converged);
    assert!(t.is_some(), "30 nodes did not converge in 20 s");
    for (_, p) in sim.up() {
        assert_eq!(p.refused, 0);
    }
}
