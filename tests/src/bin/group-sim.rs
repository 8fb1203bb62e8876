//! Sweeps seeds of the consumer-group simulation (Kafka's group protocol as Starling coordinates
//! it: 2-4 consumers, 1-6 partitions, records arriving throughout, under consumer crashes, pauses
//! past the session timeout, leaves, coordinator crashes and pauses, partitions, loss and
//! reordering, a metadata service that is slow or cut off; with `--split`, two coordinators at
//! once) and checks every run: no partition assigned to two members of one generation,
//! commits accepted only from the partition's holder in the current generation, every record
//! committed exactly once and in order, and every record committed once the faults end.
//!
//! `cargo run --release -p starling-tests --bin group-sim -- --seeds 10000 [--start S]`
//!
//! Replay one seed with `--seed N`. Exits 1 if any seed shows a violation.

use std::time::Instant;

use clap::Parser;
use starling_tests::kgroup::group_run_with;
use starling_tests::sweep::SweepArgs;

#[derive(Parser, Debug)]
#[command(about = "Consumer-group simulation sweep with a checker")]
struct Args {
    #[command(flatten)]
    sweep: SweepArgs,
    /// Simulated seconds of faults and traffic per seed.
    #[arg(long, default_value_t = 30)]
    secs: u64,
    /// Also send some consumers to a second coordinator for a while, as when two nodes' ring
    /// views disagree on who coordinates the group: each one's claim on the group's record in
    /// the metadata service fences the other's commits, so the same rules must hold.
    #[arg(long)]
    split: bool,
}

fn main() {
    let a = Args::parse();
    let seeds = a.sweep.seeds();
    let mut sweep = a.sweep.sweep(seeds.len());
    let started = Instant::now();
    for &seed in &seeds {
        let r = group_run_with(seed, a.secs, a.split);
        let figures = [
            ("records", r.records),
            ("reads", r.reads),
            ("rereads", r.rereads),
            ("commits_accepted", r.commits_accepted),
            ("commits_refused", r.commits_refused),
            ("joins", r.joins),
            ("fenced", r.fenced),
            ("generations", r.generations),
        ];
        sweep.add(seed, &figures, r.faults, r.violations);
    }
    sweep.bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    let violations = sweep.violations();
    if a.sweep.json {
        let v = serde_json::json!({
            "seeds": seeds.len(), "secs": secs, "seeds_per_min": seeds.len() as f64 / secs * 60.0,
            "totals": sweep.totals, "faults": sweep.faults, "violations": violations,
            "bad_seeds": sweep.bad_seeds(),
        });
        println!("{v}");
    } else {
        println!(
            "group-sim: {} seeds from {} ({} s of faults each) in {secs:.1} s: {:.0} seeds/min",
            seeds.len(),
            seeds[0],
            a.secs,
            seeds.len() as f64 / secs * 60.0
        );
        println!("  {:?}", sweep.totals);
        println!("  faults injected: {:?}", sweep.faults);
        println!("  violations: {violations} in {} seeds {:?}", sweep.bad.len(), sweep.bad_seeds());
    }
    if !sweep.bad.is_empty() {
        std::process::exit(1);
    }
}
