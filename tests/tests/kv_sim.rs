//! The KV coordinator in the deterministic simulator, judged by the history checker: a short
//! seeded sweep (every fault kind, every level) and targeted scenarios. `SEED=n` replays a seed;
//! `cargo run --release -p starling-tests --bin kv-sim -- --seeds 500` runs the long sweep.
//!
//! Tests marked `#[ignore]` show bugs of `starlingd` found by the simulator: they fail today and
//! pass once the bug is fixed (run them with `--ignored`).

use std::collections::BTreeMap;
use std::time::Duration;

use starling_tests::history::{check, Call, CheckOptions, Outcome, ViolationKind};
use starling_tests::kv::cluster::{Cluster, ClusterConfig};
use starling_tests::kv::scenario::{run_seed, Scenario};
use starling_tests::kv::ClockSpec;
use starling_tests::sim::{seed_from_env, SeedGuard};
use starling_wire::Consistency::{All, One, Quorum};

fn ms(m: u64) -> Duration {
    Duration::from_millis(m)
}

fn put(key: &str, value: &str) -> Call {
    Call::Put { key: key.into(), value: value.into() }
}

fn get(key: &str) -> Call {
    Call::Get { key: key.into() }
}

/// A converged cluster: `n` nodes, strict or sloppy quorums, the given clocks.
fn cluster(seed: u64, n: usize, sloppy: bool, tweak: impl FnOnce(&mut ClusterConfig)) -> Cluster {
    let mut cfg = ClusterConfig::new(n, sloppy);
    tweak(&mut cfg);
    let mut c = Cluster::new(seed, &cfg);
    assert!(
        c.run_until(ms(50), Duration::from_secs(10), Cluster::converged),
        "{n} nodes did not converge"
    );
    c
}

/// Lets the clock monitors take their first samples.
fn measure_clocks(c: &mut Cluster) {
    c.run_for(Duration::from_millis(2500));
}

/// Heals, restarts whoever is down, waits for convergence and hints, reads every key at `all`
/// through `via`, and checks the history.
fn settle_and_check(
    c: &mut Cluster,
    via: usize,
    keys: &[String],
    recency: bool,
) -> (starling_tests::history::Report, BTreeMap<String, Option<String>>) {
    c.heal();
    for i in 0..c.len() {
        if !c.is_up(i) {
            c.restart(i);
        }
    }
    assert!(c.run_until(ms(100), Duration::from_secs(20), Cluster::converged));
    c.run_for(Duration::from_secs(3));
    c.run_until(ms(100), Duration::from_secs(10), |c| c.hints_pending() == 0);
    let fs = c.final_state(via, keys);
    let report = c.check(&fs, recency);
    (report, fs.state)
}

#[test]
fn sweep_of_seeds_finds_no_violation() {
    let start = seed_from_env(0);
    let seeds = if std::env::var("SEED").is_ok() { 1 } else { 30 };
    let sc = Scenario { op_window: Duration::from_secs(8), ..Scenario::default() };
    let (mut ops, mut recency, mut durable, mut faults) = (0, 0, 0, 0);
    for seed in start..start + seeds {
        let _g = SeedGuard(seed);
        let r = run_seed(seed, &sc);
        assert!(r.is_ok(), "SEED={seed}: {}\n{}", r.report, r.explained);
        assert!(r.converged, "SEED={seed}: the cluster did not converge after healing");
        assert_eq!(r.decode_errors, 0, "SEED={seed}");
        ops += r.ops;
        recency += usize::from(r.recency);
        durable += usize::from(r.durable);
        faults += r.faults.values().sum::<u64>();
    }
    if seeds > 1 {
        // The sweep checked something: many ops, recency and durability on some seeds, faults.
        assert!(ops > 100 * seeds as usize, "only {ops} ops");
        assert!(recency > 0 && durable > recency, "recency on {recency}, durable on {durable}");
        assert!(faults > 5 * seeds, "only {faults} faults");
    }
}

#[test]
fn healthy_cluster_with_strict_quorums_reads_back_every_acknowledged_write() {
    let seed = seed_from_env(11);
    let _g = SeedGuard(seed);
    let mut c = cluster(seed, 5, false, |_| {});
    let keys: Vec<String> = (0..5).map(|k| format!("k{k}")).collect();
    for i in 0..100usize {
        let key = &keys[i % keys.len()];
        let value = format!("c0-{i}");
        let w = c.call(0, i % 5, put(key, &value), Quorum);
        assert_eq!(w, Outcome::Written { superseded: false }, "put {i}");
        // Through another coordinator, at once: quorum reads see quorum writes.
        let r = c.call(1, (i + 2) % 5, get(key), Quorum);
        assert_eq!(r, Outcome::Read(Some(value)), "read after put {i}");
    }
    let (report, _) = settle_and_check(&mut c, 3, &keys, true);
    assert!(report.is_ok(), "{report}");
    assert_eq!(report.ops, 200);
}

#[test]
fn replica_killed_and_restarted_under_writes_loses_no_acknowledged_write() {
    let seed = seed_from_env(12);
    let _g = SeedGuard(seed);
    let mut c = cluster(seed, 5, false, |cfg| cfg.wait_for_ring = true);
    let keys: Vec<String> = (0..8).map(|k| format!("k{k}")).collect();
    let mut last: BTreeMap<String, String> = BTreeMap::new();
    let mut acked = 0;
    for i in 0..240usize {
        if i == 60 {
            c.kill(1);
        }
        if i == 160 {
            c.restart(1);
        }
        let node = [0, 2, 3, 4][i % 4];
        let key = &keys[i % keys.len()];
        let value = format!("c0-{i}");
        match c.call(0, node, put(key, &value), Quorum) {
            Outcome::Written { superseded: false } => {
                acked += 1;
                last.insert(key.clone(), value);
            }
            other => panic!("put {i} through n{node}: {other:?}"),
        }
        c.run_for(ms(20));
    }
    assert_eq!(acked, 240);
    let (report, state) = settle_and_check(&mut c, 0, &keys, false);
    assert!(report.is_ok(), "{report}\n{}", c.explain(&report));
    for (k, v) in &last {
        assert_eq!(state.get(k), Some(&Some(v.clone())), "{k}");
        // The restarted replica got what it missed (hints), where it is a replica.
        if c.replicas(0, k).contains(&1) {
            let held = c.stored(1, k).and_then(|r| r.value).map(|v| String::from_utf8(v).unwrap());
            assert_eq!(held.as_ref(), Some(v), "n1 missed {k}");
        }
    }
}

/// Three nodes (every node a replica of every key), node 2's clock `offset_ms` off.
fn skewed(seed: u64, offset_ms: i64, monitor: bool) -> Cluster {
    cluster(seed, 3, false, |cfg| {
        cfg.clocks = vec![ClockSpec::default(), ClockSpec::default(), ClockSpec::offset(offset_ms)];
        cfg.clock_monitor = monitor;
    })
}

#[test]
fn a_write_through_a_node_120s_slow_is_refused_or_superseded_never_silently_lost() {
    let seed = seed_from_env(13);
    let _g = SeedGuard(seed);
    let keys = vec!["k".to_string()];
    for monitor in [true, false] {
        let mut c = skewed(seed, -120_000, monitor);
        measure_clocks(&mut c);
        let v1 = c.call(0, 0, put("k", "c0-1"), Quorum);
        assert_eq!(v1, Outcome::Written { superseded: false });
        let v2 = c.call(1, 2, put("k", "c1-1"), Quorum);
        if monitor {
            // It knows its clock is off: it coordinates no write.
            assert!(matches!(v2, Outcome::Fail(_)), "monitor on: {v2:?}");
        } else {
            // The replicas that hold v1 say so: acknowledged, but superseded.
            assert_eq!(v2, Outcome::Written { superseded: true }, "monitor off");
        }
        let (report, state) = settle_and_check(&mut c, 0, &keys, false);
        assert!(report.is_ok(), "monitor {monitor}: {report}");
        assert_eq!(state["k"], Some("c0-1".to_string()));
    }
}

#[test]
fn checker_catches_a_one_write_through_a_slow_clock_reported_as_a_plain_success() {
    // Without the clock monitor, a `one` write through the slow node is acknowledged by its own
    // store alone, which never took v1 (it refused it as too far ahead): a plain success, and
    // last write wins keeps v1. This is the anomaly the checker must catch.
    let seed = seed_from_env(14);
    let _g = SeedGuard(seed);
    let mut c = skewed(seed, -120_000, false);
    let keys = vec!["k".to_string()];
    assert_eq!(c.call(0, 0, put("k", "c0-1"), Quorum), Outcome::Written { superseded: false });
    assert_eq!(c.call(1, 2, put("k", "c1-1"), One), Outcome::Written { superseded: false });
    let (report, state) = settle_and_check(&mut c, 0, &keys, false);
    assert_eq!(state["k"], Some("c0-1".to_string()));
    assert_eq!(report.count(ViolationKind::LostWrite), 1, "{report}");
}

#[test]
fn writes_through_a_node_120s_fast_are_refused_and_later_writes_survive() {
    let seed = seed_from_env(15);
    let _g = SeedGuard(seed);
    let keys = vec!["k".to_string()];
    for monitor in [true, false] {
        let mut c = skewed(seed, 120_000, monitor);
        measure_clocks(&mut c);
        let fast = c.call(0, 2, put("k", "c0-1"), Quorum);
        if monitor {
            assert!(matches!(fast, Outcome::Fail(_)), "monitor on: {fast:?}");
        } else {
            // Its own store takes it; the replicas refuse a version 120 s ahead: not acknowledged.
            assert!(matches!(fast, Outcome::Unknown(_)), "monitor off: {fast:?}");
            let refused: u64 = (0..2).map(|i| c.sim.node(i).unwrap().stats.refused_ahead).sum();
            assert!(refused >= 2, "replicas refused {refused} writes");
            assert!(c.stored(0, "k").is_none() && c.stored(1, "k").is_none());
        }
        for (i, node) in [0, 1, 0, 1].into_iter().enumerate() {
            let v = format!("c1-{i}");
            let w = c.call(1, node, put("k", &v), Quorum);
            assert!(matches!(w, Outcome::Written { .. }), "{w:?}");
        }
        let (report, state) = settle_and_check(&mut c, 0, &keys, false);
        assert!(report.is_ok(), "monitor {monitor}: {report}");
        if monitor {
            assert_eq!(state["k"], Some("c1-3".to_string()));
        }
    }
}

#[test]
fn a_quorum_read_whose_repair_cannot_reach_a_quorum_fails_with_timeout() {
    let seed = seed_from_env(16);
    let _g = SeedGuard(seed);
    // Four nodes, RF 3: node 3 coordinates a key it does not replicate, whose first two replicas
    // in preference order are `new` (will hold v2) and `old` (keeps v1). Anti-entropy off: it
    // would copy v2 to `old` on its own, and this is about what the read does.
    let mut c = cluster(seed, 4, false, |cfg| cfg.repair = false);
    let (key, new, old) = (0..1000)
        .map(|i| format!("k{i}"))
        .find_map(|k| {
            let reps = c.replicas(0, &k);
            (!reps.contains(&3)).then(|| (k, reps[0], reps[1]))
        })
        .expect("a key node 3 does not replicate");
    let third = (0..3).find(|i| *i != new && *i != old).unwrap();
    assert_eq!(c.call(0, 0, put(&key, "c0-1"), All), Outcome::Written { superseded: false });
    // v2 reaches `new` only: its sends to the other replicas are dropped.
    let b = c.block(vec![(new, old), (new, third)]);
    assert_eq!(c.call(0, new, put(&key, "c0-2"), One), Outcome::Written { superseded: false });
    c.unblock(b);
    assert_eq!(c.stored(old, &key).unwrap().value.as_deref(), Some(b"c0-1".as_slice()));
    // The read asks `new` (v2) and `old` (v1); once `old` has answered, the repair write node 3
    // sends it is dropped, so v2 cannot reach a quorum before the deadline.
    let reads_before = c.sim.node(old).unwrap().stats.replica_reads;
    let op = c.invoke(1, 3, get(&key), Quorum);
    while c.sim.node(old).unwrap().stats.replica_reads == reads_before {
        c.sim.run_for(Duration::from_micros(50));
        c.drain();
    }
    c.block(vec![(3, old)]);
    let outcome = c.run_until_done(op, Duration::from_secs(5)).expect("the read completes");
    assert!(
        matches!(&outcome, Outcome::Unknown(m) if m.contains("read repair")),
        "the read must fail, not return v2: {outcome:?}"
    );
    assert_eq!(c.stored(old, &key).unwrap().value.as_deref(), Some(b"c0-1".as_slice()));
    // Had it answered v2, a later quorum read through `old` and `third` could miss it.
}

// ----- bugs the simulator found (each fails with the rule that fixed it turned off) ------------

#[test]
fn a_restarted_node_does_not_acknowledge_with_a_ring_of_itself() {
    let seed = seed_from_env(17);
    let _g = SeedGuard(seed);
    let mut c = cluster(seed, 5, false, |_| {});
    c.kill(2);
    c.run_for(Duration::from_secs(3));
    c.restart(2);
    // Its ring has one node: every key is its own, and `quorum` of one replica is one.
    let ring = c.sim.node(2).unwrap().view.ring.nodes().count();
    let w = c.call(0, 2, put("k", "c0-1"), Quorum);
    assert!(
        !matches!(w, Outcome::Written { .. }),
        "a quorum write was acknowledged by a node whose ring has {ring} node(s): {:?}",
        c.notes[0]
    );
}

#[test]
fn nodes_restarted_behind_a_partition_do_not_form_a_cluster_of_their_own() {
    let seed = seed_from_env(21);
    let _g = SeedGuard(seed);
    let mut c = cluster(seed, 5, false, |_| {});
    c.kill(1);
    c.kill(3);
    c.partition(&[vec![1, 3], vec![0, 2, 4]]);
    c.run_for(Duration::from_secs(3));
    c.restart(1);
    c.restart(3);
    c.run_for(Duration::from_secs(3));
    let ring = c.sim.node(3).unwrap().view.ring.nodes().count();
    // `all` means the key's three replicas; only two nodes are reachable.
    let w = c.call(0, 3, put("k", "c0-1"), All);
    assert!(
        !matches!(w, Outcome::Written { .. }),
        "an `all` write was acknowledged by a node whose ring has {ring} nodes: {:?}",
        c.notes[0]
    );
}

#[test]
fn restart_keeps_the_node_on_every_ring() {
    let seed = seed_from_env(18);
    let _g = SeedGuard(seed);
    let mut c = cluster(seed, 5, false, |_| {});
    c.kill(4);
    c.run_for(Duration::from_millis(500));
    c.restart(4);
    let mut smallest = 5;
    for _ in 0..20_000 {
        c.run_for(Duration::from_micros(100));
        for i in 0..4 {
            smallest = smallest.min(c.sim.node(i).unwrap().view.ring.nodes().count());
        }
    }
    // Tokens never change on a restart: placement must not move.
    assert_eq!(smallest, 5, "a peer's ring lost the restarting node");
}

#[test]
fn a_node_started_with_a_clock_far_ahead_plants_no_version_from_the_future() {
    let seed = seed_from_env(19);
    let _g = SeedGuard(seed);
    let mut c = skewed(seed, 120_000, true);
    let keys = vec!["k".to_string()];
    // Right after it joined, before its first clock probe round (every 2 s).
    let early = c.call(0, 2, put("k", "c0-1"), One);
    c.run_for(Duration::from_secs(3));
    assert_eq!(c.call(1, 0, put("k", "c1-1"), Quorum), Outcome::Written { superseded: false });
    let (report, state) = settle_and_check(&mut c, 0, &keys, false);
    assert!(
        report.is_ok(),
        "the early write through the fast node ({early:?}) beats every later one: final {:?}\n{report}",
        state["k"]
    );
}

#[test]
fn history_checker_is_not_vacuous_on_simulated_histories() {
    // A history the cluster produced, then falsified in the two ways a broken store would:
    // a lost acknowledged write (the final state keeps an older value) and a stale read.
    let seed = seed_from_env(20);
    let _g = SeedGuard(seed);
    let mut c = cluster(seed, 5, false, |_| {});
    assert_eq!(c.call(0, 0, put("k", "c0-1"), Quorum), Outcome::Written { superseded: false });
    assert_eq!(c.call(0, 1, put("k", "c0-2"), Quorum), Outcome::Written { superseded: false });
    assert_eq!(c.call(1, 2, get("k"), Quorum), Outcome::Read(Some("c0-2".into())));
    let honest = BTreeMap::from([("k".to_string(), Some("c0-2".to_string()))]);
    assert!(check(&c.history, &honest, CheckOptions { recency: true }).is_ok());
    let lost = BTreeMap::from([("k".to_string(), Some("c0-1".to_string()))]);
    let r = check(&c.history, &lost, CheckOptions { recency: false });
    assert_eq!(r.count(ViolationKind::LostWrite), 1, "{r}");
    let mut stale = c.history.clone();
    let g = stale.invoke(2, c.ns() + 1, get("k"));
    stale.complete(g, c.ns() + 2, Outcome::Read(Some("c0-1".into())));
    let r = check(&stale, &honest, CheckOptions { recency: true });
    assert_eq!(r.count(ViolationKind::StaleRead), 1, "{r}");
}

/// Quorum writes and reads through every live node, one client after another, while `pred`
/// does not hold (at most `limit`): each read must see the last acknowledged write of its key.
fn traffic_until(
    c: &mut Cluster,
    n: &mut usize,
    limit: Duration,
    mut pred: impl FnMut(&Cluster) -> bool,
) {
    let until = c.now() + limit;
    while !pred(c) && c.now() < until {
        let up: Vec<usize> = c.members().into_iter().filter(|&i| c.is_up(i)).collect();
        let key = format!("k{}", *n % 6);
        let value = format!("c0-{n}");
        let _ = c.call(0, up[*n % up.len()], put(&key, &value), Quorum);
        let _ = c.call(1, up[(*n + 1) % up.len()], get(&key), Quorum);
        *n += 1;
        c.run_for(ms(20));
    }
}

#[test]
fn a_node_joins_and_another_leaves_under_quorum_traffic_without_stale_reads_or_lost_writes() {
    let seed = seed_from_env(21);
    let _g = SeedGuard(seed);
    let mut c = cluster(seed, 5, false, |_| {});
    measure_clocks(&mut c);
    let mut n = 0;
    let joiner = c.add_node(ClockSpec::default());
    traffic_until(&mut c, &mut n, Duration::from_secs(30), |c| {
        c.moving() == 0
            && c.sim.node(joiner).is_some_and(|p| p.view.ring.node(c.id(joiner)).is_some())
    });
    assert!(c.sim.node(joiner).expect("up").stats.records_streamed > 0, "the joiner streamed");
    assert_eq!(c.leave(1), Ok(()));
    traffic_until(&mut c, &mut n, Duration::from_secs(30), |c| c.is_gone(1));
    assert_eq!(c.ring_changes(), (1, 1, 0), "(joined, left, aborted)");
    let keys: Vec<String> = (0..6).map(|k| format!("k{k}")).collect();
    let (report, _) = settle_and_check(&mut c, joiner, &keys, true);
    assert!(report.is_ok(), "{report}\n{}", c.explain(&report));
    assert!(report.ops > 200, "only {} ops", report.ops);
}

#[test]
fn nodes_told_to_leave_at_once_leave_at_least_n_behind() {
    let seed = seed_from_env(22);
    let _g = SeedGuard(seed);
    let mut c = cluster(seed, 5, false, |_| {});
    measure_clocks(&mut c);
    let keys: Vec<String> = (0..6).map(|k| format!("k{k}")).collect();
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(
            c.call(0, i % 5, put(k, &format!("c0-{i}")), All),
            Outcome::Written { superseded: false }
        );
    }
    // Each of the three sees four others stay when it is asked.
    for i in 0..3 {
        assert_eq!(c.leave(i), Ok(()), "node {i}");
    }
    assert!(c.run_until(ms(100), Duration::from_secs(60), |c| c.moving() == 0));
    let (joined, left, aborted) = c.ring_changes();
    assert_eq!(joined, 0);
    assert!(left <= 2 && left + aborted as usize == 3, "left {left}, aborted {aborted}");
    let via = c.members()[0];
    let (report, state) = settle_and_check(&mut c, via, &keys, true);
    assert!(report.is_ok(), "{report}");
    assert!(state.values().all(Option::is_some), "every key reads back: {state:?}");
}

/// Asks node `via` to remove dead node `dead` until it accepts (gossip must see it down first),
/// then runs quorum traffic until the removal is recorded.
fn remove_under_traffic(c: &mut Cluster, n: &mut usize, via: usize, dead: usize) {
    let until = c.now() + Duration::from_secs(30);
    while let Err(why) = c.remove_node(via, dead) {
        assert!(c.now() < until, "removal of {dead} refused: {why:?}");
        traffic_until(c, n, ms(200), |_| false);
    }
    traffic_until(c, n, Duration::from_secs(60), |c| c.unremoved().is_empty());
    assert!(c.unremoved().is_empty(), "not removed: {:?}", c.removals());
}

/// `starling removenode`: refused while the node is up; once it is dead (killed for good, its
/// store gone), every range it held is streamed back to three copies under quorum traffic, no
/// acknowledged write is lost and quorum reads stay recent.
#[test]
fn a_dead_node_is_removed_and_its_ranges_are_back_to_n_copies() {
    let seed = seed_from_env(23);
    let _g = SeedGuard(seed);
    let mut c = cluster(seed, 5, false, |_| {});
    measure_clocks(&mut c);
    let mut n = 0;
    traffic_until(&mut c, &mut n, Duration::from_secs(2), |_| false);
    let dead = 2;
    let alive = c.id(1);
    assert_eq!(
        c.sim.with_node(0, |p, now| p.remove_node(alive, now)),
        Some(Err(starling_tests::kv::removal::RemoveRefused::Up))
    );
    c.kill_for_good(dead);
    remove_under_traffic(&mut c, &mut n, 0, dead);
    let (_, done, _) = c.removals();
    assert_eq!(done, 1);
    let streamed: u64 = c.sim.up().map(|(_, p)| p.stats.records_streamed_for_removals).sum();
    assert!(streamed > 0, "the gainers streamed nothing");
    // The four left each learn it was removed, and take it off their ring.
    let gone = c.id(dead);
    let all_see = |c: &Cluster| {
        c.sim.up().all(|(_, p)| p.view.removed.contains(&gone) && p.view.ring.node(gone).is_none())
    };
    traffic_until(&mut c, &mut n, Duration::from_secs(10), all_see);
    assert!(all_see(&c), "a node still has the removed node on its ring");
    let keys: Vec<String> = (0..6).map(|k| format!("k{k}")).collect();
    let (report, state) = settle_and_check(&mut c, 0, &keys, true);
    assert!(report.is_ok(), "{report}\n{}", c.explain(&report));
    assert!(state.values().all(Option::is_some), "every key reads back: {state:?}");
}

/// A node that lost power recovers by comparing its ranges with every other replica, and a
/// removal streams each range from a quorum of complete sources. With a dead replica the two
/// would wait for each other forever: the recovery would wait to compare with the dead node,
/// the removal for the recovering node. Recovery skips nodes being removed, so both finish.
#[test]
fn a_removal_finishes_while_a_node_recovers_from_a_power_loss() {
    let seed = seed_from_env(24);
    let _g = SeedGuard(seed);
    let mut c = cluster(seed, 5, false, |_| {});
    measure_clocks(&mut c);
    let mut n = 0;
    traffic_until(&mut c, &mut n, Duration::from_secs(2), |_| false);
    let (dead, lost_power) = (2, 1);
    c.kill_for_good(dead);
    c.power_loss(lost_power);
    c.restart(lost_power);
    traffic_until(&mut c, &mut n, Duration::from_secs(5), |_| false);
    assert!(
        c.sim.node(lost_power).is_some_and(|p| p.recovering.is_some()),
        "it cannot finish its recovery while a replica of its ranges is dead"
    );
    remove_under_traffic(&mut c, &mut n, 0, dead);
    traffic_until(&mut c, &mut n, Duration::from_secs(30), |c| c.recovering() == 0);
    assert_eq!(c.recovering(), 0, "the recovery finished");
    let keys: Vec<String> = (0..6).map(|k| format!("k{k}")).collect();
    let (report, _) = settle_and_check(&mut c, 0, &keys, true);
    assert!(report.is_ok(), "{report}\n{}", c.explain(&report));
}

// ----- anti-entropy ---------------------------------------------------------------------------

/// A replica down longer than the hint window gets no hints; anti-entropy alone brings it every
/// write it missed (new keys, overwrites, deletes), without a single read, even with messages
/// lost along the way (sessions fail and start over).
#[test]
fn a_replica_down_past_the_hint_window_is_repaired_without_reads() {
    let seed = seed_from_env(31);
    let _g = SeedGuard(seed);
    let mut c = cluster(seed, 3, false, |cfg| cfg.kv.hint_window = ms(300));
    let keys: Vec<String> = (0..40).map(|i| format!("k{i}")).collect();
    for k in &keys[..20] {
        assert!(matches!(c.call(0, 0, put(k, "v1"), Quorum), Outcome::Written { .. }));
    }
    c.kill(2);
    c.run_for(Duration::from_secs(2));
    for k in &keys {
        assert!(matches!(c.call(0, 1, put(k, "v2"), Quorum), Outcome::Written { .. }));
    }
    for k in &keys[30..] {
        let del = Call::Delete { key: k.clone() };
        assert!(matches!(c.call(0, 0, del, Quorum), Outcome::Written { .. }));
    }
    c.run_for(Duration::from_secs(1));
    c.restart(2);
    assert!(c.hints_pending() == 0, "no hints kept for a replica down past the window");
    assert!(!c.diverged(0, &keys).is_empty(), "node 3 should have missed the writes");
    c.sim.net.loss = 0.05;
    let converged =
        c.run_until(ms(200), Duration::from_secs(60), |c| c.diverged(0, &keys).is_empty());
    assert!(converged, "replicas still differ: {:?}", c.diverged(0, &keys));
    for k in &keys {
        assert_eq!(c.stored(2, k), c.stored(0, k), "{k}");
    }
    let (_, done, _, moved) = c.repair_stats();
    assert!(done > 0 && moved >= 40, "{done} sessions, {moved} records moved");
}

/// A quorum write acknowledged by `a` (coordinating) and `b`, never reaching `c`; `b` loses
/// power before its log is synced, `a` is killed, `b` restarts: a quorum read through `c` asks
/// `b` and `c`, the only replicas up. Returns what it got, and what `b` holds.
fn read_after_a_power_loss(recovery: bool) -> (Outcome, Option<String>) {
    let seed = seed_from_env(31);
    let _g = SeedGuard(seed);
    let mut c = cluster(seed, 3, false, |cfg| {
        cfg.recovery = recovery;
        // A long sync interval: the power loss surely takes the write's tail with it.
        cfg.sync_interval = Duration::from_secs(5);
    });
    measure_clocks(&mut c);
    let (a, b, third) = (0, 1, 2);
    assert_eq!(c.call(0, a, put("k", "c0-1"), All), Outcome::Written { superseded: false });
    c.run_for(Duration::from_secs(6));
    let blocked = c.block(vec![(a, third)]);
    assert_eq!(c.call(1, a, put("k", "c1-2"), Quorum), Outcome::Written { superseded: false });
    c.power_loss(b);
    c.kill(a);
    c.unblock(blocked);
    c.restart(b);
    c.run_until(ms(50), Duration::from_secs(10), |c| c.sim.node(b).is_some_and(|p| p.ready));
    c.run_for(Duration::from_secs(3));
    let held = c.stored(b, "k").and_then(|r| r.value).map(|v| String::from_utf8_lossy(&v).into());
    (c.call(2, third, get("k"), Quorum), held)
}

#[test]
fn a_node_that_lost_power_answers_no_read_before_it_has_compared_its_ranges() {
    // Without recovery, the restarted node answers with what its store kept: the acknowledged
    // write is missed.
    let (read, held) = read_after_a_power_loss(false);
    assert_eq!(held.as_deref(), Some("c0-1"), "the power loss should have lost c1-2");
    assert_eq!(read, Outcome::Read(Some("c0-1".into())), "without recovery the read is stale");
    // With it, the node refuses to answer while the replica it cannot compare with is down:
    // the read fails rather than miss the write.
    let (read, held) = read_after_a_power_loss(true);
    assert_eq!(held.as_deref(), Some("c0-1"));
    assert!(matches!(read, Outcome::Fail(_) | Outcome::Unknown(_)), "{read:?}");
}
