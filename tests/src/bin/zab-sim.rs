//! Sweeps seeds of the ZAB simulation (voters and an observer under leader crashes, power loss
//! of the whole ensemble, partitions, one-way cuts, loss, duplication and stalls, with a client
//! proposing throughout) and checks every run: at most one leader per epoch, one order of
//! committed transactions everywhere, nothing acknowledged lost, convergence after healing.
//! It also prints how long the ensemble took, after its leader was killed, to commit again.
//!
//! `cargo run --release -p starling-tests --bin zab-sim -- --seeds 10000 [--start S] [--voters 3]`
//!
//! Replay one seed with `--seed N` (or `SEED=N`; `ZAB_TRACE=1` prints every server's events).
//! Exits 1 if any seed shows a violation.

use std::time::{Duration, Instant};

use clap::Parser;
use starling_tests::sweep::{pct, SweepArgs};
use starling_tests::zab::{failover_run, random_run};

#[derive(Parser, Debug)]
#[command(about = "ZAB simulation sweep with an invariant checker")]
struct Args {
    #[command(flatten)]
    sweep: SweepArgs,
    /// Voters (one observer is added).
    #[arg(long, default_value_t = 3)]
    voters: usize,
    /// Simulated seconds of faults and proposals per seed.
    #[arg(long, default_value_t = 15)]
    secs: u64,
}

fn main() {
    let a = Args::parse();
    let seeds = a.sweep.seeds();
    let mut sweep = a.sweep.sweep(seeds.len());
    let started = Instant::now();
    let mut failovers: Vec<Duration> = Vec::new();
    for &seed in &seeds {
        let r = random_run(seed, a.voters, a.secs);
        let figures = [
            ("proposals", r.proposals),
            ("committed", r.committed),
            ("unknown", r.unknown),
            ("elections", r.elections),
            ("snapshots", r.snapshots),
            ("restores", r.restores),
        ];
        failovers.extend(r.failovers);
        sweep.add(seed, &figures, r.faults, r.violations);
    }
    let (faults, bad) = (&sweep.faults, &sweep.bad);
    let total = |k: &str| sweep.totals.get(k).copied().unwrap_or(0);
    let (proposals, committed, unknown, elections) =
        (total("proposals"), total("committed"), total("unknown"), total("elections"));
    let (snapshots, restores) = (total("snapshots"), total("restores"));
    let bar = &sweep.bar;
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    // Failover on its own: a calm ensemble, a steady client, the leader killed.
    let mut clean: Vec<Duration> = Vec::new();
    let mut stuck = 0u64;
    for &seed in seeds.iter().take(1000) {
        match failover_run(seed, a.voters) {
            Some(d) => clean.push(d),
            None => stuck += 1,
        }
    }
    clean.sort();
    let cl = |p| pct(&clean, p).as_millis();
    failovers.sort();
    let fo = |p| pct(&failovers, p).as_millis();
    if a.sweep.json {
        let v = serde_json::json!({
            "seeds": seeds.len(), "secs": secs, "seeds_per_min": seeds.len() as f64 / secs * 60.0,
            "voters": a.voters, "proposals": proposals, "committed": committed, "unknown": unknown,
            "elections": elections, "snapshots": snapshots, "restores": restores, "faults": faults,
            "failover_ms": {"n": clean.len(), "p50": cl(0.5), "p90": cl(0.9), "p99": cl(0.99), "max": cl(1.0), "stuck": stuck},
            "failover_under_faults_ms": {"n": failovers.len(), "p50": fo(0.5), "p90": fo(0.9), "p99": fo(0.99), "max": fo(1.0)},
            "violations": bad.iter().map(|(_, v)| v.len()).sum::<usize>(),
            "bad_seeds": bad.iter().map(|(s, _)| s).collect::<Vec<_>>(),
        });
        println!("{v}");
    } else {
        println!(
            "zab-sim: {} seeds from {} ({} voters + 1 observer, {} s each) in {secs:.1} s: {:.0} seeds/min",
            seeds.len(),
            seeds[0],
            a.voters,
            a.secs,
            seeds.len() as f64 / secs * 60.0
        );
        println!("  proposals {proposals}, committed and acknowledged {committed}, outcome unknown {unknown}; leaders established {elections}");
        println!("  snapshots encoded off the core's loop {snapshots}; states replaced by a leader's SNAP {restores}");
        println!("  faults injected: {faults:?}");
        println!(
            "  leader killed -> next commit by a new leader (calm network): n={} p50 {} ms, p90 {} ms, p99 {} ms, max {} ms; none within 10 s: {stuck}",
            clean.len(),
            cl(0.5),
            cl(0.9),
            cl(0.99),
            cl(1.0)
        );
        println!(
            "  the same amid the sweep's other faults: n={} p50 {} ms, p90 {} ms, p99 {} ms, max {} ms",
            failovers.len(),
            fo(0.5),
            fo(0.9),
            fo(0.99),
            fo(1.0)
        );
        println!(
            "  violations: {} in {} seeds {:?}",
            bad.iter().map(|(_, v)| v.len()).sum::<usize>(),
            bad.len(),
            bad.iter().map(|(s, _)| *s).take(20).collect::<Vec<_>>()
        );
    }
    if !bad.is_empty() || stuck > 0 {
        std::process::exit(1);
    }
}
