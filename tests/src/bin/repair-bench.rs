//! Anti-entropy figures on two in-memory replicas: wire bytes and time of one repair session for
//! identical replicas, one differing key, and one replica missing a share of the keys.
//!
//! `cargo run --release -p starling-tests --bin repair-bench -- --keys 1000000`

use std::time::Instant;

use clap::Parser;
use rand::SeedableRng;
use starling_merkle::{Replica, DEFAULT_SEGMENT_BITS};
use starling_tests::repair::{random_ranges, run_session, MemReplica};
use starling_wire::{NodeId, Record, Version};

#[derive(Parser)]
struct Args {
    /// Keys on each replica.
    #[arg(long, default_value_t = 1_000_000)]
    keys: u64,
    /// Bytes per value.
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// Token ranges (vnodes) the replicas share.
    #[arg(long, default_value_t = 48)]
    ranges: usize,
    /// Share of the keys one replica misses, in percent.
    #[arg(long, default_value_t = 1.0)]
    missing_percent: f64,
    /// Segments: 2^bits.
    #[arg(long, default_value_t = DEFAULT_SEGMENT_BITS)]
    segment_bits: u8,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

fn record(k: u64, size: usize) -> Record {
    Record {
        key: format!("key-{k:012}").into_bytes(),
        version: Version { ts: (1_800_000_000_000 << 16) + k, node: NodeId(7) },
        value: Some(vec![b'v'; size]),
    }
}

fn fill(n: u64, size: usize, bits: u8) -> (MemReplica, MemReplica) {
    let (a, b) = (MemReplica::new(bits), MemReplica::new(bits));
    let batch = 10_000;
    let mut k = 0;
    while k < n {
        let rs: Vec<Record> = (k..(k + batch).min(n)).map(|i| record(i, size)).collect();
        a.apply(&rs).expect("memory");
        b.apply(&rs).expect("memory");
        k += batch;
    }
    (a, b)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let ranges = random_ranges(&mut rng, args.ranges);
    let t = Instant::now();
    let (a, b) = fill(args.keys, args.value_size, args.segment_bits);
    let fill_s = t.elapsed().as_secs_f64();
    let never = || false;

    // Identical: the first session also builds both trees (every segment hashed once).
    let t = Instant::now();
    let first = run_session(&a, &b, &ranges, never)?;
    let build_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let identical = run_session(&a, &b, &ranges, never)?;
    let identical_ms = t.elapsed().as_secs_f64() * 1e3;
    assert_eq!(first.stats.ranges_differing, 0);

    // One differing key: a newer version of one key on one side.
    let mut newer = record(args.keys / 2, args.value_size);
    newer.version.ts += 1;
    b.apply(&[newer]).map_err(anyhow::Error::msg)?;
    let t = Instant::now();
    let one = run_session(&a, &b, &ranges, never)?;
    let one_ms = t.elapsed().as_secs_f64() * 1e3;
    anyhow::ensure!(a.snapshot() == b.snapshot(), "one key: replicas still differ");

    // Missing keys: every (100 / percent)-th key forgotten on one side.
    let step = (100.0 / args.missing_percent).round().max(1.0) as u64;
    let mut missing_bytes = 0usize;
    let mut missing = 0u64;
    for k in (0..args.keys).step_by(step as usize) {
        if let Some(r) = b.forget(&record(k, 0).key) {
            missing_bytes += rmp_serde::to_vec_named(&r)?.len();
            missing += 1;
        }
    }
    let t = Instant::now();
    let many = run_session(&a, &b, &ranges, never)?;
    let many_s = t.elapsed().as_secs_f64();
    anyhow::ensure!(a.snapshot() == b.snapshot(), "missing keys: replicas still differ");
    anyhow::ensure!(b.len() as u64 == args.keys, "missing keys: not all back");

    let tree_bytes = a.segments().memory_bytes();
    let one_bytes = one.bytes_out + one.bytes_in;
    let many_bytes = many.bytes_out + many.bytes_in;
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "keys": args.keys, "value_size": args.value_size, "ranges": ranges.len(),
                "segment_bits": args.segment_bits, "tree_bytes": tree_bytes,
                "build_s": build_s, "fill_s": fill_s,
                "identical_bytes": identical.bytes_out + identical.bytes_in, "identical_ms": identical_ms,
                "one_key_bytes": one_bytes, "one_key_requests": one.stats.requests, "one_key_ms": one_ms,
                "missing_keys": missing, "missing_data_bytes": missing_bytes,
                "missing_wire_bytes": many_bytes, "missing_ratio": many_bytes as f64 / missing_bytes as f64,
                "missing_s": many_s, "missing_requests": many.stats.requests,
            })
        );
        return Ok(());
    }
    println!(
        "two replicas of {} keys ({} B values), {} ranges, 2^{} segments ({:.1} MiB of tree state)",
        args.keys,
        args.value_size,
        ranges.len(),
        args.segment_bits,
        tree_bytes as f64 / (1 << 20) as f64
    );
    println!("  trees built from scratch (every segment hashed): {build_s:.2} s");
    println!(
        "  identical replicas, one comparison:  {:>9} B on the wire, {} request(s), {identical_ms:.1} ms",
        identical.bytes_out + identical.bytes_in,
        identical.stats.requests
    );
    println!(
        "  one differing key:                   {:>9} B on the wire, {} requests, {one_ms:.1} ms",
        one_bytes, one.stats.requests
    );
    println!(
        "  {missing} keys missing ({:.1}%, {} B of records): {} B on the wire ({:.2}x the missing data), \
         {} requests, {many_s:.2} s",
        args.missing_percent, missing_bytes, many_bytes,
        many_bytes as f64 / missing_bytes as f64,
        many.stats.requests
    );
    println!(
        "    ({} leaves differed, {} records received, {} sent)",
        many.stats.leaves_differing, many.stats.records_received, many.stats.records_sent
    );
    Ok(())
}
