//! Gossip in the deterministic simulator. Each test runs on a seed (`SEED=n` replays one) and
//! checks the core's invariants after every step.
//!
//! Time bounds are simulated time, set from the default [`Config`] (gossip every 200 ms, one
//! probe per 400 ms, probe timeout 150 ms, suspicion timeout from `0.4 s * max(1, log10 n)`
//! with 3 confirmations up to three times that with none) with a wide margin over what the
//! seeds we tried needed: a bound that fails means the protocol got much slower, not unlucky.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use starling_gossip::{Command, Config, Event, MemberState, NodeId};
use starling_tests::gossip::{
    all_alive_and_converged, downs_about, joining_cluster, make_node, node_id, seen_as, time_until,
    warm_cluster, GossipProc,
};
use starling_tests::sim::{seed_from_env, sim_addr, NetConfig, SeedGuard, Sim};

fn checked(mut sim: Sim<GossipProc>) -> Sim<GossipProc> {
    sim.set_check(|_, p: &GossipProc, _| p.g.check_invariants());
    sim
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn ms(m: u64) -> Duration {
    Duration::from_millis(m)
}

const SLICE: Duration = Duration::from_millis(100);

/// Ids of slots `0..n` (crashed nodes included).
fn ids(sim: &Sim<GossipProc>, n: usize) -> Vec<NodeId> {
    (0..n).map(|i| node_id(sim.seed, i)).collect()
}

/// Every membership event of every live node: `(observer, time since start, event)`.
fn events(sim: &Sim<GossipProc>) -> Vec<(usize, Duration, Event)> {
    let start = sim.start();
    sim.up()
        .flat_map(|(i, p)| p.log.membership.iter().map(move |(t, e)| (i, *t - start, e.clone())))
        .collect()
}

/// `(observer, time since start, subject)` of every `MemberDown` any live node raised.
fn all_downs(sim: &Sim<GossipProc>) -> Vec<(usize, Duration, NodeId)> {
    events(sim)
        .into_iter()
        .filter_map(|(i, t, e)| match e {
            Event::MemberDown { id, .. } => Some((i, t, id)),
            _ => None,
        })
        .collect()
}

/// Slot of a node id (for readable failure messages).
fn slot(ids: &[NodeId], id: NodeId) -> usize {
    ids.iter().position(|x| *x == id).unwrap_or(usize::MAX)
}

/// Every live node except `subject` sees it in `state`.
fn all_see(sim: &Sim<GossipProc>, subject: usize, state: MemberState) -> bool {
    seen_as(sim, subject, state) == sim.up().filter(|(i, _)| *i != subject).count()
}

fn net(loss: f64, duplicate: f64) -> NetConfig {
    NetConfig { loss, duplicate, ..NetConfig::default() }
}

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

/// A joining cluster still converges when a fifth of all messages is lost and some arrive
/// twice: push-pull repeats every round, and refused input never breaks the state.
#[test]
fn converges_under_loss_and_duplication() {
    let seed = seed_from_env(11);
    let _g = SeedGuard(seed);
    let mut sim = checked(joining_cluster(30, &Config::default(), net(0.2, 0.05), seed));
    // Seeds 1-12 took 2-11 s.
    let t = time_until(&mut sim, SLICE, secs(30), all_alive_and_converged);
    assert!(t.is_some(), "30 nodes under 20% loss and 5% duplication did not converge in 30 s");
    // Duplicates are ordinary messages, not malformed ones.
    for (i, p) in sim.up() {
        assert_eq!(p.refused, 0, "node {i} refused messages");
    }
}

/// 50/50 partition: each side marks the other down (and only the other), and after healing
/// every node is alive and converged again.
#[test]
fn partition_heals() {
    let seed = seed_from_env(12);
    let _g = SeedGuard(seed);
    let n = 20;
    let mut sim = checked(warm_cluster(n, &Config::default(), NetConfig::default(), seed));
    sim.run_for(secs(2));
    let ids = ids(&sim, n);
    let (a, b): (Vec<usize>, Vec<usize>) = ((0..n / 2).collect(), (n / 2..n).collect());
    let split_at = sim.elapsed();
    sim.partition(&[a.clone(), b.clone()]);
    let side = |i: usize| i < n / 2;
    // Each node probes every member once per round-robin (n x 400 ms = 8 s), then suspects it
    // for at most 1.6 s; Down rumours spread within each side meanwhile. Seeds took 4-9 s.
    let split = time_until(&mut sim, SLICE, secs(20), |s| {
        s.up().all(|(i, p)| {
            ids.iter().enumerate().filter(|(j, _)| *j != i).all(|(j, id)| {
                let want = if side(i) == side(j) { MemberState::Alive } else { MemberState::Down };
                p.g.member(*id).is_some_and(|m| m.state == want)
            })
        })
    });
    assert!(split.is_some(), "sides did not see each other down (only) within 20 s");
    // Nobody was marked down by its own side.
    for (obs, t, id) in all_downs(&sim) {
        assert!(t >= split_at, "down before the partition: {obs} -> {}", slot(&ids, id));
        assert_ne!(
            side(obs),
            side(slot(&ids, id)),
            "{obs} marked {} of its own side down at {t:?}",
            slot(&ids, id)
        );
    }
    sim.run_for(secs(5));
    sim.heal();
    // Down members still get a Syn now and then; the first message each way makes the receiver
    // tell the sender it is down, and the sender refutes. Seeds took about 1 s.
    let merged = time_until(&mut sim, SLICE, secs(10), all_alive_and_converged);
    assert!(merged.is_some(), "not all alive and converged 10 s after healing");
}

/// Asymmetric partition: node `a` can send to everyone but hears nothing back.
///
/// What happens during it (the same for every seed tried): everyone else marks `a` down (its
/// pings are never answered, and it cannot refute what it never hears); `a`'s own probes all
/// fail without even a nack, so Lifeguard drives its local health to the maximum and it slows
/// its probing ninefold, marking only a few others down in 20 s; each of those accusations is
/// refuted (the suspect hears `a`'s buddy message and raises its incarnation before `a`'s
/// suspicion times out), so no node other than `a` ever marks a healthy third node down.
/// Once the block is lifted, everything is alive and converged within about a second.
#[test]
fn asymmetric_partition() {
    let seed = seed_from_env(13);
    let _g = SeedGuard(seed);
    let n = 20;
    let a = 7;
    let cfg = Config::default();
    let mut sim = checked(warm_cluster(n, &cfg, NetConfig::default(), seed));
    sim.run_for(secs(2));
    let ids = ids(&sim, n);
    for b in 0..n {
        if b != a {
            sim.block(b, a);
        }
    }
    sim.run_for(secs(20));
    assert!(all_see(&sim, a, MemberState::Down), "the deaf node is not down everywhere");
    for (obs, t, id) in all_downs(&sim) {
        assert!(
            obs == a || id == ids[a],
            "{obs} marked healthy node {} down at {t:?}",
            slot(&ids, id)
        );
    }
    let p = sim.node(a).expect("up");
    assert_eq!(p.g.local_health(), cfg.max_local_health, "the deaf node does not know it is sick");
    sim.heal();
    let back = time_until(&mut sim, SLICE, secs(10), all_alive_and_converged);
    assert!(back.is_some(), "someone is still not alive 10 s after the block was lifted");
}

/// A crashed node is marked down by every live node within a bound, and no live node is.
#[test]
fn crash_is_detected_by_all_and_only_the_crashed_node_is_down() {
    let seed = seed_from_env(14);
    let _g = SeedGuard(seed);
    let n = 30;
    let mut sim = checked(warm_cluster(n, &Config::default(), NetConfig::default(), seed));
    sim.run_for(secs(3));
    let ids = ids(&sim, n);
    let victim = 17;
    sim.crash(victim);
    // Expected: the first of 29 probers hits the victim within about a probe period, its probe
    // fails at the next one (+400 ms), the suspicion lasts at most 3 x 0.4 x log10(30) = 1.8 s
    // and the Down rumour reaches everyone in a few gossip rounds. Seeds took 1.2-2.7 s.
    let t = time_until(&mut sim, ms(50), secs(8), |s| all_see(s, victim, MemberState::Down));
    assert!(t.is_some(), "crash not detected by every live node within 8 s");
    sim.run_for(secs(10));
    for (obs, t, id) in all_downs(&sim) {
        assert_eq!(id, ids[victim], "live node {} marked down by {obs} at {t:?}", slot(&ids, id));
    }
}

/// Twenty percent loss for five simulated minutes on a warm cluster: suspicions come and are
/// refuted, but nobody is marked down.
#[test]
fn no_false_positives_under_loss() {
    let seed = seed_from_env(15);
    let _g = SeedGuard(seed);
    let n = 25;
    let mut sim = checked(warm_cluster(n, &Config::default(), NetConfig::default(), seed));
    sim.run_for(secs(2));
    sim.net.loss = 0.2;
    sim.run_for(secs(300));
    let ids = ids(&sim, n);
    let suspicions: u64 = sim.up().map(|(_, p)| p.log.suspicions).sum();
    let refutations: u64 = sim.up().map(|(_, p)| p.g.stats().refutations).sum();
    let downs = all_downs(&sim);
    // The loss does bite: thousands of suspicions, refuted.
    assert!(
        suspicions > 100 && refutations > 10,
        "{suspicions} suspicions, {refutations} refutations"
    );
    let downs: Vec<_> = downs.iter().map(|(o, t, id)| (*o, *t, slot(&ids, *id))).collect();
    assert!(downs.is_empty(), "false MemberDown events (observer, time, subject): {downs:?}");
}

/// A few nodes stall for 2-10 s again and again (GC pauses, overloaded hosts). They may be
/// marked down while paused, but no node that never stalled is; afterwards all are back.
#[test]
fn stalls_do_not_take_healthy_nodes_down() {
    let seed = seed_from_env(16);
    let _g = SeedGuard(seed);
    let n = 25;
    let mut sim = checked(warm_cluster(n, &Config::default(), NetConfig::default(), seed));
    sim.run_for(secs(2));
    let ids = ids(&sim, n);
    let stallers = [3usize, 11, 19];
    let mut rng = sim.rng();
    use rand::Rng;
    let end = sim.now() + secs(90);
    let mut next: Vec<(Instant, usize)> = stallers
        .iter()
        .map(|&i| (sim.now() + Duration::from_secs_f64(rng.gen_range(0.0..5.0)), i))
        .collect();
    let mut stalls = 0;
    loop {
        next.sort();
        let (at, i) = next[0];
        if at >= end {
            break;
        }
        sim.run_until(at);
        let d = Duration::from_secs_f64(rng.gen_range(2.0..10.0));
        sim.stall(i, d);
        stalls += 1;
        next[0] = (at + d + Duration::from_secs_f64(rng.gen_range(3.0..15.0)), i);
    }
    sim.run_until(end);
    let downs = all_downs(&sim);
    let about_stallers =
        downs.iter().filter(|(_, _, id)| stallers.contains(&slot(&ids, *id))).count();
    // The stalls bite: they outlast the suspicion timeout, so stallers are marked down.
    assert!(stalls >= 10 && about_stallers > 0, "{stalls} stalls, {about_stallers} downs");
    for (obs, t, id) in &downs {
        let s = slot(&ids, *id);
        assert!(stallers.contains(&s), "healthy node {s} marked down by {obs} at {t:?}");
    }
    // A staller can still be paused at `end` (up to 10 s); seeds needed about 2 s after that.
    let back = time_until(&mut sim, SLICE, secs(20), all_alive_and_converged);
    assert!(back.is_some(), "not all alive and converged 20 s after the stalls stopped");
}

/// A probe is judged at the prober's next probe round, `probe_interval` (400 ms) after it
/// started; the direct ping's ack counts until then. Indirect probes do not help a slow target:
/// a helper gives up after its own `probe_timeout` (150 ms) and nacks. So SWIM with the default
/// config keeps a node alive exactly while its round trip stays under 400 ms: one-way latency
/// of the clogged node up to ~195 ms (plus the 0.5-5 ms base latency each way).
///
/// With +150 ms each way (RTT <= 310 ms) the node must never even be suspected.
#[test]
fn clogged_node_within_probe_period_stays_alive() {
    let seed = seed_from_env(17);
    let _g = SeedGuard(seed);
    let n = 20;
    let mut sim = checked(warm_cluster(n, &Config::default(), NetConfig::default(), seed));
    sim.run_for(secs(2));
    let c = 9;
    sim.clog(c, ms(150));
    sim.run_for(secs(60));
    let ids = ids(&sim, n);
    let downs = all_downs(&sim);
    assert!(
        downs.is_empty(),
        "downs with a 150 ms clog: {:?}",
        downs.iter().map(|(o, t, id)| (*o, *t, slot(&ids, *id))).collect::<Vec<_>>()
    );
    let suspicions: u64 = sim.up().map(|(_, p)| p.log.suspicions).sum();
    assert_eq!(suspicions, 0, "a node with RTT under the probe period was suspected");
    assert!(all_see(&sim, c, MemberState::Alive));
    assert!(all_alive_and_converged(&sim));
}

/// With +300 ms each way (RTT >= 600 ms > 400 ms probe period) every probe of the clogged node
/// fails unless the prober happens to hear from it during the probe, so it IS suspected and
/// marked down again and again (20-65 `MemberDown` events in 30 s among 20 nodes) and keeps
/// refuting. What SWIM + Lifeguard still guarantee, and this test asserts: the slowness is
/// blamed on the clogged node alone (no other node is ever marked down: its own failed probes
/// raise its local health instead of accusing others), it refutes every time, and once its
/// links recover it is alive everywhere within a few seconds.
#[test]
fn heavily_clogged_node_is_blamed_alone_and_recovers() {
    let seed = seed_from_env(18);
    let _g = SeedGuard(seed);
    let n = 20;
    let mut sim = checked(warm_cluster(n, &Config::default(), NetConfig::default(), seed));
    sim.run_for(secs(2));
    let ids = ids(&sim, n);
    let c = 9;
    sim.clog(c, ms(300));
    sim.run_for(secs(30));
    let downs = all_downs(&sim);
    for (obs, t, id) in &downs {
        assert_eq!(*id, ids[c], "{obs} marked healthy node {} down at {t:?}", slot(&ids, *id));
    }
    let p = sim.node(c).expect("clogged node is up");
    assert!(p.g.stats().refutations > 0 && p.g.incarnation() > 0, "clogged node never refuted");
    sim.clog(c, Duration::ZERO);
    let back = time_until(&mut sim, SLICE, secs(10), all_alive_and_converged);
    assert!(back.is_some(), "clogged node not alive everywhere 10 s after its links recovered");
}

/// SWIM §4.2: a false suspicion is refuted by the suspect with a higher incarnation. Traffic
/// to one node is blocked until someone suspects it (a probe failed), then let through again
/// well before the suspicion can time out.
#[test]
fn false_suspicion_is_refuted() {
    let seed = seed_from_env(19);
    let _g = SeedGuard(seed);
    let n = 20;
    let mut sim = checked(warm_cluster(n, &Config::default(), NetConfig::default(), seed));
    sim.run_for(secs(2));
    let v = 5;
    let id = node_id(seed, v);
    for x in 0..n {
        if x != v {
            sim.block(x, v);
        }
    }
    let suspected =
        time_until(&mut sim, ms(5), secs(10), |s| seen_as(s, v, MemberState::Suspect) > 0);
    assert!(suspected.is_some(), "nobody suspected a node that received nothing for 10 s");
    assert_eq!(seen_as(&sim, v, MemberState::Down), 0);
    sim.heal();
    // Seeds took 0.2-0.6 s: the suspicion rides on the next messages to the suspect.
    let refuted = time_until(&mut sim, ms(10), secs(5), |s| {
        let inc = s.node(v).map_or(0, |p| p.g.incarnation());
        inc > 0
            && s.up().filter(|(i, _)| *i != v).all(|(_, p)| {
                p.g.member(id)
                    .is_some_and(|m| m.state == MemberState::Alive && m.incarnation == inc)
            })
    });
    assert!(refuted.is_some(), "the suspicion was not refuted everywhere within 5 s");
    let p = sim.node(v).expect("up");
    assert!(p.g.stats().refutations >= 1);
    sim.run_for(secs(5));
    assert_eq!(downs_about(&sim, id), vec![], "the suspect was marked down");
    assert!(all_alive_and_converged(&sim));
}

fn seeds3() -> Vec<SocketAddr> {
    (0..3).map(sim_addr).collect()
}

/// A crashed node comes back in a new generation: everyone sees the new generation alive, and
/// none of the old generation's state survives (a restart starts its state afresh).
#[test]
fn restart_with_new_generation() {
    let seed = seed_from_env(20);
    let _g = SeedGuard(seed);
    let n = 20;
    let cfg = Config::default();
    let mut sim = checked(warm_cluster(n, &cfg, NetConfig::default(), seed));
    sim.run_for(secs(2));
    let v = 6;
    let id = node_id(seed, v);
    sim.with_node(v, |p, now| {
        p.g.handle_command(now, Command::Set { key: "app".into(), value: "old".into() })
    });
    let spread = time_until(&mut sim, SLICE, secs(10), |s| {
        s.up()
            .filter(|(i, _)| *i != v)
            .all(|(_, p)| p.g.member(id).is_some_and(|m| m.node_state.get("app") == Some("old")))
    });
    assert!(spread.is_some(), "key did not spread");
    let crashed_at = sim.now();
    sim.crash(v);
    let down = time_until(&mut sim, SLICE, secs(8), |s| all_see(s, v, MemberState::Down));
    assert!(down.is_some(), "crash not detected by all within 8 s");
    let now = sim.now();
    let restarted_at = now;
    sim.restart(v, |addr| make_node(&cfg, seed, v, 2, addr, seeds3(), now));
    // Seeds took about 1 s: the seeds hear it directly, the rest from rumours and state.
    let back = time_until(&mut sim, SLICE, secs(10), |s| {
        all_alive_and_converged(s)
            && s.up()
                .filter(|(i, _)| *i != v)
                .all(|(_, p)| p.g.member(id).is_some_and(|m| m.generation == 2))
    });
    assert!(back.is_some(), "restarted node not alive in its new generation everywhere in 10 s");
    sim.run_for(secs(10));
    assert!(all_alive_and_converged(&sim));
    for (i, p) in sim.up().filter(|(i, _)| *i != v) {
        let m = p.g.member(id).expect("member");
        assert_eq!((m.generation, m.state), (2, MemberState::Alive), "node {i}");
        assert_eq!(m.node_state.get("app"), None, "node {i} resurrected the old generation's key");
        let ups: Vec<_> = p
            .log
            .membership
            .iter()
            .filter_map(|(t, e)| match e {
                Event::MemberUp { id: x, generation, .. } if *x == id && *t > crashed_at => {
                    Some((*t, *generation))
                }
                _ => None,
            })
            .collect();
        assert!(ups.iter().all(|(t, g)| *g == 2 && *t >= restarted_at), "node {i}: {ups:?}");
        assert!(!ups.is_empty(), "node {i} raised no MemberUp for generation 2");
    }
    let own = sim.node(v).expect("up");
    assert_eq!(own.g.local_state().get("app"), None);
}

/// Graceful leave: everyone sees `left` (never `down`); after `left_ttl` the tombstone is
/// forgotten everywhere, and a peer that learned of the leave late (it joined while the
/// tombstone was fresh) does not bring the member back to those that already forgot it.
#[test]
fn leave_then_forget() {
    let seed = seed_from_env(21);
    let _g = SeedGuard(seed);
    let n = 20;
    let ttl = secs(10);
    let cfg = Config { left_ttl: ttl, ..Config::default() };
    let mut sim = checked(warm_cluster(n, &cfg, NetConfig::default(), seed));
    sim.run_for(secs(2));
    let v = 4;
    let id = node_id(seed, v);
    let left_at = sim.now();
    sim.with_node(v, |p, now| p.g.handle_command(now, Command::Leave));
    let seen = time_until(&mut sim, SLICE, secs(5), |s| all_see(s, v, MemberState::Left));
    assert!(seen.is_some(), "leave not seen by all within 5 s");
    // The driver keeps a leaving node running a little, then stops it.
    sim.run_for(secs(2));
    sim.crash(v);
    // A latecomer joins while the tombstone is fresh: it learns `left` from state and keeps the
    // tombstone for a full TTL after the others dropped theirs.
    sim.run_until(left_at + ttl / 2);
    let late = n;
    let now = sim.now();
    sim.add(|addr| make_node(&cfg, seed, late, 1, addr, seeds3(), now));
    let late_knows = time_until(&mut sim, ms(50), secs(3), |s| {
        s.node(late).is_some_and(|p| p.g.member(id).is_some_and(|m| m.state == MemberState::Left))
    });
    assert!(late_knows.is_some(), "the latecomer never learned the tombstone");
    // Everyone who saw the leave first forgets at ~left_at + ttl; the latecomer ~ttl/2 later.
    let forgot = time_until(&mut sim, SLICE, ttl, |s| {
        s.up().filter(|(i, _)| *i != late).all(|(_, p)| p.g.member(id).is_none())
    });
    assert!(forgot.is_some(), "the tombstone was not forgotten after its TTL");
    assert!(sim.node(late).is_some_and(|p| p.g.member(id).is_some()), "latecomer forgot early");
    // Through the latecomer's remaining tombstone and until well after everyone's memory of
    // the forgotten member expired (2 TTL), nobody knows the member again.
    let until = left_at + ttl * 4;
    while sim.now() < until {
        sim.run_for(SLICE);
        let forgot_by = |p: &GossipProc| {
            p.log
                .membership
                .iter()
                .any(|(_, e)| matches!(e, Event::MemberForgotten { id: x } if *x == id))
        };
        for (i, p) in sim.up() {
            if forgot_by(p) {
                assert!(
                    p.g.member(id).is_none(),
                    "node {i} re-added the forgotten member at {:?}",
                    sim.elapsed()
                );
            }
        }
    }
    for (i, p) in sim.up() {
        let about: Vec<&Event> = p
            .log
            .membership
            .iter()
            .map(|(_, e)| e)
            .filter(|e| match e {
                Event::MemberUp { id: x, .. }
                | Event::MemberDown { id: x, .. }
                | Event::MemberLeft { id: x }
                | Event::MemberForgotten { id: x } => *x == id,
                _ => false,
            })
            .collect();
        // Warm-started nodes knew it alive already; the latecomer learned it as a tombstone.
        assert_eq!(
            about,
            vec![&Event::MemberLeft { id }, &Event::MemberForgotten { id }],
            "node {i}'s events about the leaver"
        );
        assert!(p.g.member(id).is_none());
    }
    assert!(all_alive_and_converged(&sim));
    let digests: Vec<String> = sim.up().map(|(_, p)| p.g.view_digest()).collect();
    assert!(digests.windows(2).all(|w| w[0] == w[1]), "views differ: {digests:?}");
}

/// Membership events about `id` that say it is alive: `(observer, time, generation)`.
fn ups_about(sim: &Sim<GossipProc>, id: NodeId) -> Vec<(usize, Instant, u64)> {
    sim.up()
        .flat_map(|(i, p)| {
            p.log.membership.iter().filter_map(move |(t, e)| match e {
                Event::MemberUp { id: x, generation, .. } if *x == id => Some((i, *t, *generation)),
                _ => None,
            })
        })
        .collect()
}

/// After an observer marked a crashed node down (after the crash: under loss it may have been
/// falsely down before, and rightly revived then), nothing (stale rumours, lagging state, late
/// duplicates) makes that observer raise `MemberUp` for the dead generation again; and every
/// observer ends with it down.
fn assert_no_revival(sim: &Sim<GossipProc>, crashed: &[(usize, Instant)]) {
    for &(c, crashed_at) in crashed {
        let id = node_id(sim.seed, c);
        for (obs, p) in sim.up() {
            let first_down = p.log.membership.iter().find_map(|(t, e)| match e {
                Event::MemberDown { id: x, .. } if *x == id && *t >= crashed_at => Some(*t),
                _ => None,
            });
            let Some(down) = first_down else {
                panic!("node {obs} never marked crashed node {c} down");
            };
            let revived: Vec<Duration> = ups_about(sim, id)
                .into_iter()
                .filter(|(o, t, g)| *o == obs && *t > down && *g == 1)
                .map(|(_, t, _)| t - sim.start())
                .collect();
            assert!(
                revived.is_empty(),
                "node {obs} revived crashed node {c} at {revived:?} (crashed at {:?}, down at {:?})",
                crashed_at - sim.start(),
                down - sim.start()
            );
            let m = p.g.member(id).expect("still a member");
            assert_eq!(
                m.state,
                MemberState::Down,
                "node {obs} sees crashed node {c} as {:?}",
                m.state
            );
        }
    }
}

/// Crashes under loss and duplication: once detected, dead nodes stay dead.
#[test]
fn crashed_nodes_are_not_revived() {
    let seed = seed_from_env(22);
    let _g = SeedGuard(seed);
    let n = 25;
    let mut sim = checked(warm_cluster(n, &Config::default(), net(0.1, 0.05), seed));
    sim.run_for(secs(3));
    let mut crashed = Vec::new();
    for c in [2usize, 13, 21] {
        crashed.push((c, sim.now()));
        sim.crash(c);
        sim.run_for(secs(3));
    }
    let detected = time_until(&mut sim, SLICE, secs(30), |s| {
        crashed.iter().all(|&(c, _)| all_see(s, c, MemberState::Down))
    });
    assert!(detected.is_some(), "crashes not detected by all within 30 s");
    sim.run_for(secs(30));
    assert_no_revival(&sim, &crashed);
}

/// The hard case for "no revival" (gossip/ALGORITHM.md §2, rumour precedence: dead nodes are
/// not brought back by stale rumours). The victim refutes a suspicion, but its new incarnation reaches only one peer,
/// `w`, before the victim dies; `w` then pauses (a GC stall) while everyone else marks the
/// victim down at its old incarnation. When `w` wakes, it still holds the victim's pre-crash
/// refutation, in its rumour queue and in the victim's gossiped state (`inc` key). That is
/// stale news about a dead node, and must not make anyone raise `MemberUp` for it again.
#[test]
fn stale_refutation_does_not_revive_a_crashed_node() {
    let seed = seed_from_env(23);
    let _g = SeedGuard(seed);
    let n = 20;
    let mut sim = checked(warm_cluster(n, &Config::default(), NetConfig::default(), seed));
    sim.run_for(secs(2));
    let (v, w) = (11, 12);
    let id = node_id(seed, v);
    for x in 0..n {
        if x != v {
            sim.block(x, v);
        }
    }
    let suspected =
        time_until(&mut sim, ms(5), secs(10), |s| seen_as(s, v, MemberState::Suspect) > 0);
    assert!(suspected.is_some(), "nobody suspected a node that received nothing for 10 s");
    // The victim hears again, but only `w` hears it.
    sim.heal();
    for x in 0..n {
        if x != v && x != w {
            sim.block(v, x);
        }
    }
    let w_knows = time_until(&mut sim, ms(5), secs(5), |s| {
        s.node(w).is_some_and(|p| p.g.member(id).is_some_and(|m| m.incarnation > 0))
    });
    assert!(w_knows.is_some(), "the refutation did not reach w");
    let crashed_at = sim.now();
    sim.crash(v);
    sim.stall(w, secs(6));
    // Everyone else marks the victim down at its old incarnation ...
    let others_down = time_until(&mut sim, SLICE, secs(6), |s| {
        s.up()
            .filter(|(i, _)| *i != w)
            .all(|(_, p)| p.g.member(id).is_some_and(|m| m.state == MemberState::Down))
    });
    assert!(others_down.is_some(), "the others did not mark the victim down while w slept");
    // ... then `w` wakes with the newer, pre-crash incarnation.
    sim.heal();
    sim.run_for(secs(30));
    assert!(all_see(&sim, v, MemberState::Down), "the crashed node is not down everywhere");
    assert_no_revival(&sim, &[(v, crashed_at)]);
}

/// One seed, one outcome: two runs of the same scenario agree on every counter and event.
#[test]
fn same_seed_same_outcome() {
    let seed = seed_from_env(24);
    let _g = SeedGuard(seed);
    let run = |seed: u64| -> String {
        let mut sim = checked(joining_cluster(20, &Config::default(), net(0.1, 0.05), seed));
        sim.run_for(secs(8));
        sim.crash(4);
        sim.stall(9, secs(3));
        sim.block(1, 2);
        sim.run_for(secs(6));
        sim.heal();
        sim.with_node(7, |p, now| {
            p.g.handle_command(now, Command::Set { key: "k".into(), value: "v".into() })
        });
        sim.run_for(secs(6));
        let start = sim.start();
        let mut out = format!("{:?}\n", sim.stats);
        for (i, p) in sim.up() {
            out += &format!(
                "{i} {:?} inc {} lhm {} view {} refused {} suspicions {}\n",
                p.g.stats(),
                p.g.incarnation(),
                p.g.local_health(),
                p.g.view_digest(),
                p.refused,
                p.log.suspicions
            );
            for (t, e) in &p.log.membership {
                out += &format!("  {:?} {e:?}\n", *t - start);
            }
        }
        out
    };
    let a = run(seed);
    let b = run(seed);
    assert!(a == b, "two runs of seed {seed} differ");
    assert!(a.contains("MemberDown"), "the scenario did not exercise failure detection");
    assert!(run(seed.wrapping_add(1)) != a, "outcome does not depend on the seed");
}
