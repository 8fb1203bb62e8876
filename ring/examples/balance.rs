//! Balance report: nodes join one by one, each taking `DEFAULT_VNODES` tokens from
//! `Ring::allocate_tokens` (or, for comparison, purely random tokens), and the spread of
//! ownership is printed as max/min over the nodes, primary (n = 1) and replicated (n = 3).
//!
//! `cargo run --release -p starling-ring --example balance [SIZES...]` (default `3,10,100`).
//! Sizes are node counts, separated by commas or spaces; `4-8` stands for `4,5,6,7,8`. Each size
//! prints one row per strategy, e.g. `... --example balance 3-8,10,100`.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use starling_ring::{NodeStatus, Ring, RingNode, DEFAULT_VNODES};

/// Each row is the mean and the worst over this many seeded runs.
const RUNS: u64 = 10;

#[derive(Clone, Copy)]
enum Strategy {
    Allocate,
    Random,
}

fn build(nodes: usize, strategy: Strategy, seed: u64) -> Ring {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut ring = Ring::new([]);
    for _ in 0..nodes {
        let id = starling_ring::NodeId(rng.gen());
        let tokens = match strategy {
            Strategy::Allocate => ring.allocate_tokens(id, DEFAULT_VNODES, seed),
            Strategy::Random => (0..DEFAULT_VNODES).map(|_| rng.gen()).collect(),
        };
        let node = RingNode { id, tokens, zone: None, status: NodeStatus::Normal };
        ring = Ring::new(ring.nodes().cloned().chain([node]));
    }
    ring
}

fn spread(ring: &Ring, n: usize) -> f64 {
    let shares: Vec<f64> = ring.ownership(n).into_values().collect();
    let max = shares.iter().copied().fold(f64::MIN, f64::max);
    let min = shares.iter().copied().fold(f64::MAX, f64::min);
    max / min
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let sizes = match parse_sizes(&args) {
        Ok(sizes) if sizes.is_empty() => vec![3, 10, 100],
        Ok(sizes) => sizes,
        Err(bad) => {
            eprintln!("not a node count or range: {bad:?} (expected e.g. 3,4,5 or 4-8)");
            std::process::exit(2);
        }
    };
    println!(
        "V = {DEFAULT_VNODES}, nodes join one by one; max/min ownership, mean (worst) of {RUNS} seeds"
    );
    println!();
    println!("| nodes | tokens          | primary (n=1)   | replicated (n=3) |");
    println!("|------:|-----------------|-----------------|------------------|");
    for &nodes in &sizes {
        for (name, strategy) in
            [("allocate_tokens", Strategy::Allocate), ("random", Strategy::Random)]
        {
            let mut primary = Vec::new();
            let mut replicated = Vec::new();
            for seed in 1..=RUNS {
                let ring = build(nodes, strategy, seed);
                primary.push(spread(&ring, 1));
                replicated.push(spread(&ring, 3));
            }
            println!(
                "| {nodes:>5} | {name:<15} | {:<15} | {:<16} |",
                summary(&primary),
                summary(&replicated)
            );
        }
    }
}

/// Node counts from arguments like `3,4,5`, `4-8` or `3 10 100`, in the order given.
fn parse_sizes(args: &[String]) -> Result<Vec<usize>, String> {
    let mut sizes = Vec::new();
    for part in args.iter().flat_map(|arg| arg.split(',')).filter(|part| !part.is_empty()) {
        let bad = || part.to_string();
        match part.split_once('-') {
            Some((low, high)) => {
                let low: usize = low.trim().parse().map_err(|_| bad())?;
                let high: usize = high.trim().parse().map_err(|_| bad())?;
                if low > high {
                    return Err(bad());
                }
                sizes.extend(low..=high);
            }
            None => sizes.push(part.trim().parse().map_err(|_| bad())?),
        }
    }
    Ok(sizes)
}

fn summary(ratios: &[f64]) -> String {
    let mean = ratios.iter().sum::<f64>() / ratios.len() as f64;
    let worst = ratios.iter().copied().fold(f64::MIN, f64::max);
    format!("{mean:.3} ({worst:.3})")
}
