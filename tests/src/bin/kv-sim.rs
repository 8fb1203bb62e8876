//! Sweeps seeds of the KV simulation (a whole cluster of coordinators and replicas under
//! crashes, power loss, partitions, stalls, clock skew, a lossy network, joins, leaves, and
//! nodes killed for good then removed, half of whose machines come back wiped as new nodes at
//! the same address) and checks every history for lost writes, resurrected
//! deletes and stale reads.
//!
//! `cargo run --release -p starling-tests --bin kv-sim -- --seeds 500 [--start S] [--nodes 5] [--json]`
//!
//! Replay one seed with `--seed N` (or `SEED=N`); `--verbose` prints its history check in full.
//! `KV_TRACE_REMOVE=1` prints every removal attempt and every node's ring while one runs;
//! `KV_TRACE_MOVING=1` prints, at the end, the nodes still joining or leaving and where they are;
//! `KV_TRACE_FINAL=1` prints why a final read at `all` failed, with the ring and each node's state.
//! Exits 1 if any seed shows a violation, or a dead node was never removed.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Parser;
use starling_tests::kv::scenario::{run_seed, Profile, Scenario, SeedReport, Skew, FAULT_KINDS};
use starling_wire::Consistency;

#[derive(Parser, Debug)]
#[command(about = "KV simulation sweep with a history checker")]
struct Args {
    /// Seeds to run.
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    /// First seed.
    #[arg(long, default_value_t = 0)]
    start: u64,
    /// Run this one seed only (as `SEED=n` does).
    #[arg(long, env = "SEED")]
    seed: Option<u64>,
    /// Cluster size.
    #[arg(long, default_value_t = 5)]
    nodes: usize,
    /// Replicas per key.
    #[arg(long, default_value_t = 3)]
    rf: usize,
    #[arg(long, default_value_t = 4)]
    clients: usize,
    #[arg(long, default_value_t = 10)]
    keys: usize,
    /// Simulated seconds clients issue ops.
    #[arg(long, default_value_t = 15)]
    secs: u64,
    /// Force a profile for every seed: calm, durable, strict or sloppy.
    #[arg(long)]
    profile: Option<String>,
    /// Force clocks for every seed: none, near or far.
    #[arg(long)]
    skew: Option<String>,
    /// Write levels to draw from (comma-separated: one, quorum, all, any).
    #[arg(long, value_delimiter = ',')]
    write_levels: Vec<String>,
    /// Read levels to draw from (comma-separated: one, quorum, all).
    #[arg(long, value_delimiter = ',')]
    read_levels: Vec<String>,
    /// Fault kinds allowed (comma-separated; default all).
    #[arg(long, value_delimiter = ',')]
    faults: Vec<String>,
    /// Run restarted nodes as `starlingd` did before it waited for its ring: they coordinate
    /// requests before gossip told them the ring (default: they wait, as `starlingd` does).
    #[arg(long)]
    no_ring_wait: bool,
    /// Run nodes without the remote clock monitor (as `starlingd` did before it had one).
    #[arg(long)]
    no_clock_monitor: bool,
    /// Run nodes as `starlingd` did before it waited for clock samples: they coordinate writes
    /// before their clock monitor has any sample (default: they wait, as `starlingd` does).
    #[arg(long)]
    no_clock_wait: bool,
    /// Run nodes without anti-entropy (as `starlingd --repair-interval off`).
    #[arg(long)]
    no_repair: bool,
    /// Restarted nodes answer reads at once, without recovering first (as `starlingd` did
    /// before it recovered after an unclean stop).
    #[arg(long)]
    no_recovery: bool,
    /// Check recency (a quorum read returns every write acknowledged before it began, or
    /// newer) in every seed whose reads and writes are all `quorum`, with clocks within the
    /// bound and strict quorums, whatever its faults (default: `calm` seeds only).
    #[arg(long)]
    check_recency: bool,
    /// The nodes' write-ahead log sync interval in ms (default 10, as `starlingd`): longer ones
    /// make a power loss lose more of what a node acknowledged.
    #[arg(long, default_value_t = 10)]
    sync_interval_ms: u64,
    /// The hint window in milliseconds (default 3 h): a short one leaves replicas that were down
    /// longer to anti-entropy.
    #[arg(long)]
    hint_window_ms: Option<u64>,
    /// Exit 1 also on anomalies the seed's configuration allows (lost writes under `one`/`any`
    /// writes, sloppy quorums or power loss).
    #[arg(long)]
    fail_on_allowed: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
    /// Print every violation in full (default: the first few per seed).
    #[arg(long)]
    verbose: bool,
}

fn level(s: &str) -> Result<Consistency> {
    Ok(match s {
        "one" => Consistency::One,
        "quorum" => Consistency::Quorum,
        "all" => Consistency::All,
        "any" => Consistency::Any,
        _ => anyhow::bail!("unknown level {s}"),
    })
}

fn main() -> Result<()> {
    let args = Args::parse();
    let mut sc = Scenario {
        nodes: args.nodes,
        replication: args.rf,
        clients: args.clients,
        keys: args.keys,
        op_window: Duration::from_secs(args.secs),
        wait_for_ring: !args.no_ring_wait,
        clock_monitor: !args.no_clock_monitor,
        clock_wait: !args.no_clock_wait,
        repair: !args.no_repair,
        recovery: !args.no_recovery,
        check_recency: args.check_recency,
        sync_interval: Duration::from_millis(args.sync_interval_ms),
        hint_window: args.hint_window_ms.map(Duration::from_millis),
        ..Scenario::default()
    };
    sc.profile = match args.profile.as_deref() {
        None => None,
        Some("calm") => Some(Profile::Calm),
        Some("durable") => Some(Profile::Durable),
        Some("strict") => Some(Profile::Strict),
        Some("sloppy") => Some(Profile::Sloppy),
        Some(p) => anyhow::bail!("unknown profile {p}"),
    };
    sc.skew = match args.skew.as_deref() {
        None => None,
        Some("none") => Some(Skew::None),
        Some("near") => Some(Skew::Near),
        Some("far") => Some(Skew::Far),
        Some(s) => anyhow::bail!("unknown skew {s}"),
    };
    sc.write_levels = args.write_levels.iter().map(|s| level(s)).collect::<Result<_>>()?;
    sc.read_levels = args.read_levels.iter().map(|s| level(s)).collect::<Result<_>>()?;
    for f in &args.faults {
        let Some(k) = FAULT_KINDS.iter().find(|k| *k == f) else {
            anyhow::bail!("unknown fault {f}; known: {}", FAULT_KINDS.join(", "))
        };
        sc.faults.push(k);
    }
    let seeds: Vec<u64> = match args.seed {
        Some(s) => vec![s],
        None => (args.start..args.start + args.seeds).collect(),
    };

    let wall = Instant::now();
    let mut ops = 0usize;
    let mut faults: BTreeMap<&str, u64> = BTreeMap::new();
    let mut outcomes: BTreeMap<&str, usize> = BTreeMap::new();
    let mut profiles: BTreeMap<&str, usize> = BTreeMap::new();
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    let mut allowed_kinds: BTreeMap<String, usize> = BTreeMap::new();
    let (mut durable_seeds, mut allowed_seeds) = (0usize, 0usize);
    let mut recency_seeds = 0usize;
    let mut bad: Vec<SeedReport> = Vec::new();
    let (mut read_failed, mut mismatched, mut unconverged, mut hints_left, mut decode) =
        (0usize, 0usize, 0usize, 0usize, 0u64);
    let mut stranded = 0usize;
    let (mut diverged, mut repair) = (0usize, (0u64, 0u64, 0u64, 0u64));
    let mut diverged_before = 0usize;
    let (mut joined, mut left, mut aborted, mut moving) = (0usize, 0usize, 0u64, 0usize);
    let (mut dead, mut removals, mut unremoved) = (0usize, (0u64, 0u64, 0u64), 0usize);
    let mut removal_failures: BTreeMap<&str, u64> = BTreeMap::new();
    let mut reborn = 0u64;
    for &seed in &seeds {
        let r = run_seed(seed, &sc);
        ops += r.ops;
        for (k, v) in &r.faults {
            *faults.entry(k).or_default() += v;
        }
        for (k, v) in &r.outcomes {
            *outcomes.entry(k).or_default() += v;
        }
        *profiles.entry(r.profile.name()).or_default() += 1;
        for (k, v) in &r.reasons {
            *reasons.entry(k.clone()).or_default() += v;
        }
        recency_seeds += usize::from(r.recency);
        read_failed += r.final_state.read_failed.len();
        mismatched += r.final_state.mismatched.len();
        stranded += r.final_state.stranded.len();
        diverged += r.diverged.len();
        diverged_before += r.diverged_before;
        repair.0 += r.repair.0;
        repair.1 += r.repair.1;
        repair.2 += r.repair.2;
        repair.3 += r.repair.3;
        unconverged += usize::from(!r.converged);
        hints_left += r.hints_left;
        decode += r.decode_errors;
        joined += r.ring_changes.0;
        left += r.ring_changes.1;
        aborted += r.ring_changes.2;
        moving += r.moving_left;
        dead += r.removals.0;
        removals.0 += r.removals.1 .0;
        removals.1 += r.removals.1 .1;
        removals.2 += r.removals.1 .2;
        unremoved += r.removals.2;
        reborn += r.reborn;
        for (k, v) in &r.removal_failures {
            *removal_failures.entry(k).or_default() += v;
        }
        for v in r.failures() {
            *kinds.entry(format!("{:?}", v.kind)).or_default() += 1;
        }
        for v in r.anomalies() {
            *allowed_kinds.entry(format!("{:?}", v.kind)).or_default() += 1;
        }
        durable_seeds += usize::from(r.durable);
        allowed_seeds += usize::from(r.anomalies().next().is_some());
        let odd = !r.final_state.mismatched.is_empty()
            || !r.final_state.read_failed.is_empty()
            || !r.final_state.stranded.is_empty()
            || r.hints_left > 0
            || r.moving_left > 0
            || r.removals.2 > 0
            || !r.converged;
        if (args.seed.is_some() || (args.verbose && odd)) && !args.json {
            println!(
                "seed {seed}: profile {}, skew {:?}, recency {}, {} ops {:?}, faults {:?}, \
                 final reads failed {:?}, mismatched {:?}, stranded {:?}, converged {}, \
                 hints left {}, refused ahead {}, (joined, left, leaves aborted) {:?}, \
                 still moving {:?}, simulated {:.1} s",
                r.profile.name(),
                r.skew,
                r.recency,
                r.ops,
                r.outcomes,
                r.faults,
                r.final_state.read_failed,
                r.final_state.mismatched,
                r.final_state.stranded,
                r.converged,
                r.hints_left,
                r.refused_ahead,
                r.ring_changes,
                r.moving_nodes,
                r.sim_time.as_secs_f64()
            );
        }
        if !r.is_ok() || ((args.fail_on_allowed || args.seed.is_some()) && !r.report.is_ok()) {
            bad.push(r);
        }
    }
    let secs = wall.elapsed().as_secs_f64();
    let per_min = seeds.len() as f64 / secs * 60.0;
    let violations: usize = kinds.values().sum();
    let allowed: usize = allowed_kinds.values().sum();
    let failed =
        violations > 0 || diverged > 0 || unremoved > 0 || (args.fail_on_allowed && allowed > 0);
    if args.json {
        let v = serde_json::json!({
            "seeds": seeds.len(),
            "start": seeds.first(),
            "nodes": args.nodes,
            "wall_secs": secs,
            "seeds_per_minute": per_min,
            "ops_checked": ops,
            "outcomes": outcomes,
            "failure_reasons": reasons,
            "profiles": profiles,
            "recency_seeds": recency_seeds,
            "durable_seeds": durable_seeds,
            "faults": faults,
            "violations": violations,
            "violations_by_kind": kinds,
            "violating_seeds": bad.iter().filter(|r| !r.is_ok()).map(|r| r.seed).collect::<Vec<_>>(),
            "allowed_anomalies": allowed,
            "allowed_anomalies_by_kind": allowed_kinds,
            "seeds_with_allowed_anomalies": allowed_seeds,
            "final_reads_failed": read_failed,
            "final_reads_mismatched": mismatched,
            "stranded_keys": stranded,
            "keys_diverged_after_repair": diverged,
            "keys_diverged_before_repair": diverged_before,
            "repair_sessions": repair.0,
            "repair_sessions_done": repair.1,
            "repair_sessions_failed": repair.2,
            "repair_keys_moved": repair.3,
            "unconverged_seeds": unconverged,
            "hints_left": hints_left,
            "decode_errors": decode,
            "nodes_joined": joined,
            "nodes_left": left,
            "leaves_aborted": aborted,
            "nodes_still_moving": moving,
            "nodes_killed_for_good": dead,
            "removals_started": removals.0,
            "removals_done": removals.1,
            "removals_failed": removals.2,
            "removal_failures": removal_failures,
            "dead_nodes_not_removed": unremoved,
            "wiped_machines_back_as_new_nodes": reborn,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "kv-sim: {} seeds from {} ({} nodes, rf {}) in {:.1} s: {:.0} seeds/min",
            seeds.len(),
            seeds.first().copied().unwrap_or(0),
            args.nodes,
            args.rf,
            secs,
            per_min
        );
        println!(
            "  profiles: {profiles:?}; recency checked on {recency_seeds} seeds, no lost write \
             allowed on {durable_seeds}"
        );
        println!("  operations checked: {ops} {outcomes:?}");
        println!("  faults injected: {faults:?}");
        println!(
            "  ring changes: {joined} nodes joined, {left} left, {aborted} leaves aborted; \
             {moving} still joining or leaving at the end"
        );
        println!(
            "  removenode: {dead} nodes killed for good; removals {} started, {} finished, {} \
             gave up (asked again) {removal_failures:?}; {unremoved} dead nodes not removed \
             at the end; {reborn} machines came back wiped as new nodes",
            removals.0, removals.1, removals.2
        );
        if args.verbose {
            let mut rs: Vec<_> = reasons.iter().collect();
            rs.sort_by_key(|(_, n)| std::cmp::Reverse(**n));
            println!("  failed or unknown ops by reason:");
            for (k, n) in rs.iter().take(12) {
                println!("    {n:>8}  {k}");
            }
        }
        println!(
            "  final reads failed {read_failed}, mismatched {mismatched}, keys stranded on \
             non-replicas {stranded}; unconverged seeds {unconverged}; hints left {hints_left}; \
             decode errors {decode}"
        );
        println!(
            "  anti-entropy: {} sessions ({} finished, {} failed: lost messages, timeouts, \
             restarts), {} records moved; keys whose replicas differed once hints were \
             delivered: {diverged_before}, after anti-entropy: {diverged}",
            repair.0, repair.1, repair.2, repair.3
        );
        println!(
            "  violations: {violations} {kinds:?} in {} seeds",
            bad.iter().filter(|r| !r.is_ok()).count()
        );
        println!(
            "  anomalies the configuration allows (one/any writes, sloppy quorum, power loss): \
             {allowed} {allowed_kinds:?} in {allowed_seeds} seeds"
        );
        for r in &bad {
            println!(
                "\nSEED={} (profile {}, skew {:?}, recency {}, durable {}, faults {:?}): {} \
                 violations, {} allowed anomalies",
                r.seed,
                r.profile.name(),
                r.skew,
                r.recency,
                r.durable,
                r.faults,
                r.failures().count(),
                r.anomalies().count()
            );
            if !r.diverged.is_empty() {
                println!("  replicas still differ after anti-entropy on keys {:?}", r.diverged);
            }
            if r.report.violations.is_empty() {
                continue;
            }
            if args.verbose || args.seed.is_some() {
                print!("{}", r.explained);
            } else {
                // The shortest slice first.
                let mut vs: Vec<_> = r.failures().collect();
                if vs.is_empty() {
                    vs = r.anomalies().collect();
                }
                vs.sort_by_key(|v| v.slice.len());
                let first = vs[0];
                println!("  {:?} on {}: {}", first.kind, first.key, first.message);
                for op in &first.slice {
                    println!("    {op}");
                }
            }
        }
    }
    if failed {
        std::process::exit(1);
    }
    Ok(())
}
