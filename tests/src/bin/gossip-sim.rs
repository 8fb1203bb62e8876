//! Prints the gossip figures: dissemination rounds, detection times, false positives, bytes per
//! node, partition healing and join time, each from a seeded simulation.
//!
//! `cargo run --release -p starling-tests --bin gossip-sim -- --nodes 1000`

use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Parser;
use rand::seq::SliceRandom;
use rand::Rng;
use starling_gossip::{Command, Config, Event, MemberState};
use starling_tests::gossip::{
    all_alive_and_converged, make_node, percentile, time_until, warm_cluster, GossipProc,
};
use starling_tests::sim::{NetConfig, Sim};

#[derive(Parser, Debug)]
#[command(about = "Gossip simulation report")]
struct Args {
    /// Cluster size.
    #[arg(long, default_value_t = 1000)]
    nodes: usize,
    /// Scenarios to run (comma-separated): spread, detect, false-loss, false-stall, bytes,
    /// partition, join. Default: all.
    #[arg(long, value_delimiter = ',')]
    scenario: Vec<String>,
    /// Repetitions per scenario where a median is reported.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Simulated seconds of the 20%-loss false-positive run.
    #[arg(long, default_value_t = 3600)]
    loss_secs: u64,
    /// Simulated seconds of the stalling-nodes run.
    #[arg(long, default_value_t = 600)]
    stall_secs: u64,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Message loss levels (percent) of the spread scenario.
    #[arg(long, value_delimiter = ',', default_values_t = [0.0, 10.0, 30.0])]
    losses: Vec<f64>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let cfg = Config::default();
    let all = ["spread", "detect", "false-loss", "false-stall", "bytes", "partition", "join"];
    let chosen: Vec<String> = if args.scenario.is_empty() {
        all.iter().map(|s| s.to_string()).collect()
    } else {
        args.scenario.clone()
    };
    println!(
        "gossip-sim: {} nodes, seed {}, gossip interval {:?}, probe interval {:?}, latency 0.5-5 ms",
        args.nodes, args.seed, cfg.gossip_interval, cfg.probe_interval
    );
    for s in &chosen {
        let wall = Instant::now();
        match s.as_str() {
            "spread" => {
                for loss in &args.losses {
                    spread(&args, &cfg, loss / 100.0);
                }
            }
            "detect" => detect(&args, &cfg),
            "false-loss" => false_under_loss(&args, &cfg),
            "false-stall" => false_under_stalls(&args, &cfg),
            "bytes" => bytes(&args, &cfg),
            "partition" => partition(&args, &cfg),
            "join" => join(&args, &cfg),
            other => anyhow::bail!("unknown scenario {other:?}; known: {}", all.join(", ")),
        }
        println!("  (wall time {:.1} s)", wall.elapsed().as_secs_f64());
    }
    Ok(())
}

fn net(loss: f64) -> NetConfig {
    NetConfig { loss, ..NetConfig::default() }
}

fn spread(args: &Args, cfg: &Config, loss: f64) {
    let mut sim = warm_cluster(args.nodes, cfg, net(loss), args.seed);
    sim.run_for(Duration::from_secs(3));
    let mut rounds = Vec::new();
    let mut rng = sim.rng();
    for r in 0..args.runs {
        let src = rng.gen_range(0..args.nodes);
        let key = format!("spread-{r}");
        let Some(id) = sim.node(src).map(|p| p.g.id()) else { continue };
        for i in 0..args.nodes {
            if let Some(p) = sim.node_mut(i) {
                p.log.watch = Some((id, key.clone()));
                p.log.watch_seen = None;
            }
        }
        let t0 = sim.now();
        sim.with_node(src, |p, now| {
            p.g.handle_command(now, Command::Set { key: key.clone(), value: "1".into() });
            p.log.watch_seen = Some(now);
        });
        let done = time_until(&mut sim, cfg.gossip_interval / 4, Duration::from_secs(60), |s| {
            s.up().all(|(_, p)| p.log.watch_seen.is_some())
        });
        if done.is_some() {
            let last = sim.up().filter_map(|(_, p)| p.log.watch_seen).max().unwrap_or(t0);
            rounds.push((last - t0).as_secs_f64() / cfg.gossip_interval.as_secs_f64());
        } else {
            rounds.push(f64::INFINITY);
        }
        sim.run_for(Duration::from_secs(1));
    }
    rounds.sort_by(f64::total_cmp);
    println!(
        "spread   {:>5} nodes, {:>2.0}% loss: state change reaches 100% in median {:.1} rounds (min {:.1}, max {:.1}, {} runs)",
        args.nodes,
        loss * 100.0,
        percentile(&rounds, 50.0),
        rounds[0],
        rounds[rounds.len() - 1],
        rounds.len()
    );
}

fn detect(args: &Args, cfg: &Config) {
    let mut sim = warm_cluster(args.nodes, cfg, net(0.0), args.seed);
    sim.run_for(Duration::from_secs(5));
    let mut times = Vec::new();
    let mut rng = sim.rng();
    let mut crashed = Vec::new();
    let mut undetected = 0;
    for _ in 0..args.runs {
        let victim = loop {
            let v = rng.gen_range(0..args.nodes);
            if sim.is_up(v) {
                break v;
            }
        };
        let id = sim.node(victim).map(|p| p.g.id()).expect("victim is up");
        let t0 = sim.now();
        sim.crash(victim);
        crashed.push((id, t0));
        let live: Vec<usize> = sim.up().map(|(i, _)| i).collect();
        let r = time_until(&mut sim, Duration::from_millis(50), Duration::from_secs(30), |s| {
            s.up().all(|(_, p)| p.g.member(id).is_some_and(|m| m.state == MemberState::Down))
        });
        if r.is_none() {
            undetected += 1;
        }
        for i in live {
            let Some(p) = sim.node(i) else { continue };
            let first = p.log.membership.iter().find_map(|(t, e)| match e {
                Event::MemberDown { id: d, .. } if *d == id && *t >= t0 => Some(*t),
                _ => None,
            });
            if let Some(t) = first {
                times.push((t - t0).as_secs_f64());
            }
        }
        sim.run_for(Duration::from_secs(2));
    }
    let revived = revivals(&sim, &crashed);
    times.sort_by(f64::total_cmp);
    println!(
        "detect   {:>5} nodes: crashed node marked down by every live node: p50 {:.2} s, p99 {:.2} s, max {:.2} s ({} crashes, {} not detected by all in 30 s); revived by stale state: {}",
        args.nodes,
        percentile(&times, 50.0),
        percentile(&times, 99.0),
        times.last().copied().unwrap_or(f64::NAN),
        args.runs,
        undetected,
        revived
    );
}

/// `MemberUp` events about a crashed node after its crash (plus the network's maximum latency,
/// so messages it sent before dying do not count).
fn revivals(sim: &Sim<GossipProc>, crashed: &[(starling_gossip::NodeId, Instant)]) -> usize {
    let slack = sim.net.latency_max * 2;
    sim.up()
        .flat_map(|(_, p)| p.log.membership.iter())
        .filter(|(t, e)| match e {
            Event::MemberUp { id, .. } => crashed.iter().any(|(c, at)| c == id && *t > *at + slack),
            _ => false,
        })
        .count()
}

fn count_downs(sim: &Sim<GossipProc>) -> usize {
    sim.up()
        .flat_map(|(_, p)| p.log.membership.iter())
        .filter(|(_, e)| matches!(e, Event::MemberDown { .. }))
        .count()
}

fn false_under_loss(args: &Args, cfg: &Config) {
    let mut sim = warm_cluster(args.nodes, cfg, net(0.0), args.seed);
    sim.run_for(Duration::from_secs(2));
    sim.net.loss = 0.2;
    let mut left = args.loss_secs;
    while left > 0 {
        let chunk = left.min(60);
        sim.run_for(Duration::from_secs(chunk));
        left -= chunk;
    }
    let suspects: u64 = sim.up().map(|(_, p)| p.log.suspicions).sum();
    let refutes: u64 = sim.up().map(|(_, p)| p.g.stats().refutations).sum();
    println!(
        "falsepos {:>5} nodes, 20% loss for {} s: healthy nodes marked down: {} (suspicion events seen {}, refutations {})",
        args.nodes,
        args.loss_secs,
        count_downs(&sim),
        suspects,
        refutes
    );
}

fn false_under_stalls(args: &Args, cfg: &Config) {
    let mut sim = warm_cluster(args.nodes, cfg, net(0.0), args.seed);
    sim.run_for(Duration::from_secs(2));
    let mut rng = sim.rng();
    let mut ids: Vec<usize> = (0..args.nodes).collect();
    ids.shuffle(&mut rng);
    let stallers: Vec<usize> = ids[..(args.nodes / 20).max(1)].to_vec();
    // Each staller pauses 2-10 s, runs 5-30 s, pauses again ...
    let mut next: Vec<(Instant, usize)> = stallers
        .iter()
        .map(|&i| (sim.now() + Duration::from_secs_f64(rng.gen_range(0.0..10.0)), i))
        .collect();
    let end = sim.now() + Duration::from_secs(args.stall_secs);
    let mut stalled_until = vec![sim.now(); args.nodes];
    let mut stall_windows: Vec<Vec<(Instant, Instant)>> = vec![Vec::new(); args.nodes];
    while sim.now() < end {
        next.sort();
        let (at, i) = next[0];
        sim.run_until(at.min(end));
        if at >= end {
            break;
        }
        let d = Duration::from_secs_f64(rng.gen_range(2.0..10.0));
        sim.stall(i, d);
        stalled_until[i] = at + d;
        stall_windows[i].push((at, at + d));
        next[0] = (at + d + Duration::from_secs_f64(rng.gen_range(5.0..30.0)), i);
    }
    sim.run_for(Duration::from_secs(15));
    let ids: Vec<_> = (0..args.nodes).map(|i| sim.node(i).map(|p| p.g.id())).collect();
    let mut healthy_down = 0;
    let mut staller_down = 0;
    for (_, p) in sim.up() {
        for (_, e) in &p.log.membership {
            if let Event::MemberDown { id, .. } = e {
                let i = ids.iter().position(|x| *x == Some(*id)).expect("known node");
                if stallers.contains(&i) {
                    staller_down += 1;
                } else {
                    healthy_down += 1;
                }
            }
        }
    }
    let back = all_alive_and_converged(&sim);
    println!(
        "falsepos {:>5} nodes, {} nodes stalling 2-10 s for {} s: healthy nodes marked down: {}; stalled nodes marked down while paused: {} (all alive again afterwards: {})",
        args.nodes,
        stallers.len(),
        args.stall_secs,
        healthy_down,
        staller_down,
        back
    );
}

fn bytes(args: &Args, cfg: &Config) {
    let mut sim = warm_cluster(args.nodes, cfg, net(0.0), args.seed);
    sim.run_for(Duration::from_secs(10));
    let before: u64 = sim.up().map(|(_, p)| p.g.stats().bytes_sent).sum();
    let secs = 30;
    sim.run_for(Duration::from_secs(secs));
    let after: u64 = sim.up().map(|(_, p)| p.g.stats().bytes_sent).sum();
    let per = (after - before) as f64 / args.nodes as f64 / secs as f64;
    println!(
        "bytes    {:>5} nodes, steady state: {:.0} bytes sent per node per second ({:.2} KB/s)",
        args.nodes,
        per,
        per / 1000.0
    );
}

fn partition(args: &Args, cfg: &Config) {
    let mut sim = warm_cluster(args.nodes, cfg, net(0.0), args.seed);
    sim.run_for(Duration::from_secs(2));
    let half = args.nodes / 2;
    sim.partition(&[(0..half).collect(), (half..args.nodes).collect()]);
    let split = time_until(&mut sim, Duration::from_millis(200), Duration::from_secs(60), |s| {
        s.up().all(|(_, p)| p.g.count(MemberState::Down) >= half - 1)
    });
    sim.run_for(Duration::from_secs(5));
    sim.heal();
    let merged = time_until(
        &mut sim,
        Duration::from_millis(100),
        Duration::from_secs(120),
        all_alive_and_converged,
    );
    println!(
        "partition {:>4} nodes, 50/50: sides saw each other down after {}; after healing, all alive and converged in {}",
        args.nodes,
        fmt_opt(split),
        fmt_opt(merged)
    );
}

fn join(args: &Args, cfg: &Config) {
    let mut sim = warm_cluster(args.nodes, cfg, net(0.0), args.seed);
    sim.run_for(Duration::from_secs(2));
    let seeds = vec![sim.addr(0), sim.addr(1), sim.addr(2)];
    let now = sim.now();
    let seed = args.seed;
    let n = args.nodes;
    let new = sim.add(|addr| make_node(cfg, seed, n, 1, addr, seeds, now));
    let knows = time_until(&mut sim, Duration::from_millis(50), Duration::from_secs(60), |s| {
        s.node(new).is_some_and(|p| p.g.members().count() >= n)
    });
    let all_alive =
        time_until(&mut sim, Duration::from_millis(100), Duration::from_secs(60), |s| {
            s.node(new).is_some_and(|p| p.g.count(MemberState::Alive) >= n)
        });
    println!(
        "join     {:>5} nodes: a new node knows all members after {}; sees them all alive {} later",
        args.nodes,
        fmt_opt(knows),
        fmt_opt(all_alive)
    );
}

fn fmt_opt(d: Option<Duration>) -> String {
    d.map_or("never (limit reached)".into(), |d| format!("{:.2} s", d.as_secs_f64()))
}
