//! Sweeps seeds of the topic-partition simulation (3 replicas and a spare, and the metadata
//! service, under reassignments to a random 3 of the 4, replica crashes, partitions — also from the metadata service —, one-way cuts, loss,
//! duplication and reordering, with a producer at `acks=all` and a consumer throughout) and
//! checks every run: every acknowledged write in the final log once at its offset, no offset read
//! as two messages, everything consumed survives, in-sync replicas identical below the high
//! watermark, one leader per epoch, leaders' high watermarks never going back. `--power-loss`
//! makes crashes lose what was not flushed (with fsync before acknowledging). It also prints how
//! long a new leader took to acknowledge a write after the leader was killed.
//!
//! `cargo run --release -p starling-tests --bin mq-sim -- --seeds 10000 [--start S] [--power-loss]`
//!
//! Replay one seed with `--seed N` (`MQ_TRACE=1` prints every replica's events). Exits 1 if any
//! seed shows a violation.

use std::time::{Duration, Instant};

use clap::Parser;
use starling_tests::mq::{failover_run, random_run};
use starling_tests::sweep::{pct, SweepArgs};

#[derive(Parser, Debug)]
#[command(about = "Topic partition replication simulation sweep with a history checker")]
struct Args {
    #[command(flatten)]
    sweep: SweepArgs,
    /// Simulated seconds of faults and traffic per seed.
    #[arg(long, default_value_t = 20)]
    secs: u64,
    /// Crashes are power losses (only flushed data survives; replicas fsync before acking).
    #[arg(long)]
    power_loss: bool,
}

fn main() {
    let a = Args::parse();
    let seeds = a.sweep.seeds();
    let mut sweep = a.sweep.sweep(seeds.len());
    let started = Instant::now();
    for &seed in &seeds {
        let r = random_run(seed, a.secs, a.power_loss);
        let figures = [
            ("produced", r.produced),
            ("acked", r.acked),
            ("unknown", r.unknown),
            ("refused", r.refused),
            ("retried_idempotently", r.retried),
            ("consumed", r.consumed),
            ("leader_changes", r.leader_changes),
            ("truncations", r.truncations),
            ("isr_changes", r.isr_changes),
            ("replica_list_changes", r.replica_changes),
            ("dropped_replicas_wiped", r.wiped),
        ];
        sweep.add(seed, &figures, r.faults, r.violations);
    }
    sweep.bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    let (totals, faults, bad) = (&sweep.totals, &sweep.faults, &sweep.bad);
    let mut clean: Vec<Duration> = Vec::new();
    let mut stuck = 0u64;
    for &seed in seeds.iter().take(1000) {
        match failover_run(seed) {
            Some(d) => clean.push(d),
            None => stuck += 1,
        }
    }
    clean.sort();
    let cl = |p| pct(&clean, p).as_millis();
    let violations = sweep.violations();
    if a.sweep.json {
        let v = serde_json::json!({
            "seeds": seeds.len(), "secs": secs, "seeds_per_min": seeds.len() as f64 / secs * 60.0,
            "power_loss": a.power_loss, "totals": totals, "faults": faults,
            "failover_ms": {"n": clean.len(), "p50": cl(0.5), "p90": cl(0.9), "p99": cl(0.99), "max": cl(1.0), "stuck": stuck},
            "violations": violations,
            "bad_seeds": bad.iter().map(|(s, _)| s).collect::<Vec<_>>(),
        });
        println!("{v}");
    } else {
        println!(
            "mq-sim: {} seeds from {} (3 replicas and a spare, {} s each{}) in {secs:.1} s: {:.0} seeds/min",
            seeds.len(),
            seeds[0],
            a.secs,
            if a.power_loss { ", crashes are power losses" } else { "" },
            seeds.len() as f64 / secs * 60.0
        );
        println!("  {totals:?}");
        println!("  faults injected: {faults:?}");
        println!(
            "  leader killed -> first write acknowledged by a new leader: n={} p50 {} ms, p90 {} ms, p99 {} ms, max {} ms; none within 10 s: {stuck}",
            clean.len(),
            cl(0.5),
            cl(0.9),
            cl(0.99),
            cl(1.0)
        );
        println!(
            "  violations: {violations} in {} seeds {:?}",
            bad.len(),
            bad.iter().map(|(s, _)| *s).take(20).collect::<Vec<_>>()
        );
    }
    if !bad.is_empty() || stuck > 0 {
        std::process::exit(1);
    }
}
