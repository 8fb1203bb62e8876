//! The partition log on its own: append and read throughput on an empty log and on one with a
//! large log retained behind it, in alternating rounds, so the effect of retained data is one
//! ratio from one run.
//!
//! `cargo run --release -p starling-mq --example log_bench -- [--retained-gib 10] [--dir D]
//!  [--messages 200000] [--size 1024] [--batch 16] [--flush-every 64]`
//!
//! Batches of `--batch` records of `--size` bytes are appended as a leader would (offsets and
//! epoch assigned, CRC checked), with an fsync every `--flush-every` batches; then read back
//! from the first offset of the phase with 1 MiB reads (each batch CRC-checked), as a consumer
//! fetch does. The retained data is written with the same batches before the second phase.

use std::path::PathBuf;
use std::time::Instant;

use starling_mq::batch::{encode_batch, NewRecord};
use starling_mq::{Log, LogConfig};

struct Args {
    retained_gib: f64,
    dir: Option<PathBuf>,
    messages: usize,
    size: usize,
    batch: usize,
    flush_every: usize,
}

fn args() -> Args {
    let mut a = Args {
        retained_gib: 10.0,
        dir: None,
        messages: 200_000,
        size: 1024,
        batch: 16,
        flush_every: 64,
    };
    let v: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < v.len() {
        let val = v.get(i + 1).cloned().unwrap_or_default();
        match v[i].as_str() {
            "--retained-gib" => a.retained_gib = val.parse().expect("--retained-gib N"),
            "--dir" => a.dir = Some(PathBuf::from(val)),
            "--messages" => a.messages = val.parse().expect("--messages N"),
            "--size" => a.size = val.parse().expect("--size BYTES"),
            "--batch" => a.batch = val.parse().expect("--batch N"),
            "--flush-every" => a.flush_every = val.parse().expect("--flush-every N"),
            other => panic!("unknown argument {other} (see the file's header)"),
        }
        i += 2;
    }
    a
}

struct Phase {
    append_msgs: f64,
    append_mb: f64,
    read_msgs: f64,
    read_mb: f64,
}

fn phase(log: &mut Log, template: &[u8], a: &Args, n_batches: usize) -> Phase {
    let first = log.end_offset();
    let t = Instant::now();
    for i in 0..n_batches {
        let mut b = template.to_vec();
        log.append_as_leader(&mut b, 1, 0).expect("append");
        if (i + 1).is_multiple_of(a.flush_every) {
            log.flush().expect("flush");
        }
    }
    log.flush().expect("flush");
    let append = t.elapsed().as_secs_f64();
    let bytes = (n_batches * template.len()) as f64;
    let msgs = (n_batches * a.batch) as f64;
    let t = Instant::now();
    let mut at = first;
    let mut read_bytes = 0usize;
    while at < log.end_offset() {
        let r = log.read(at, 1 << 20, i64::MAX).expect("read");
        read_bytes += r.bytes.len();
        at = r.next_offset;
    }
    let read = t.elapsed().as_secs_f64();
    assert_eq!(read_bytes as f64, bytes, "read back what was appended");
    Phase {
        append_msgs: msgs / append,
        append_mb: bytes / append / 1e6,
        read_msgs: msgs / read,
        read_mb: bytes / read / 1e6,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let a = args();
    let base = match &a.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("starling-log-bench-{}", std::process::id())),
    };
    let (dir_empty, dir_full) = (base.join("empty"), base.join("retained"));
    let _ = std::fs::remove_dir_all(&base);
    let records: Vec<NewRecord> = (0..a.batch)
        .map(|i| NewRecord {
            key: Some(format!("key-{i}").into_bytes()),
            value: Some(vec![b'x'; a.size]),
            headers: vec![],
            timestamp_ms: 1_700_000_000_000,
        })
        .collect();
    let template = encode_batch(&records, None).expect("encode");
    let n_batches = a.messages / a.batch;

    // The retained log first.
    let (mut full, _) = Log::open(&dir_full, LogConfig::default()).expect("open");
    let target = (a.retained_gib * (1u64 << 30) as f64) as u64;
    let t = Instant::now();
    let mut i = 0usize;
    while full.size_bytes() < target {
        let mut b = template.clone();
        full.append_as_leader(&mut b, 1, 0).expect("append");
        i += 1;
        if i.is_multiple_of(4096) {
            full.flush().expect("flush");
        }
    }
    full.flush().expect("flush");
    let fill = t.elapsed().as_secs_f64();
    let retained = full.size_bytes();
    let segments = full.segment_count();
    drop(full);
    // Reopen: closed segments from their index files, the last one scanned.
    let t = Instant::now();
    let (mut full, rec) = Log::open(&dir_full, LogConfig::default()).expect("reopen");
    let reopen = t.elapsed().as_secs_f64();
    let (mut empty, _) = Log::open(&dir_empty, LogConfig::default()).expect("open");

    // Rounds alternate between the two logs, so the machine's drift affects both alike.
    let rounds = 3;
    let (mut e, mut f) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        e.push(phase(&mut empty, &template, &a, n_batches));
        f.push(phase(&mut full, &template, &a, n_batches));
    }
    let med = |v: &[Phase]| Phase {
        append_msgs: median(v.iter().map(|p| p.append_msgs).collect()),
        append_mb: median(v.iter().map(|p| p.append_mb).collect()),
        read_msgs: median(v.iter().map(|p| p.read_msgs).collect()),
        read_mb: median(v.iter().map(|p| p.read_mb).collect()),
    };
    let (empty_p, full_p) = (med(&e), med(&f));
    // A read from the middle of the retained data (an index lookup in an old segment).
    let mid = full.end_offset() / 2;
    let t = Instant::now();
    let r = full.read(mid, 1 << 20, i64::MAX).expect("read");
    let lookup = t.elapsed();
    assert!(!r.bytes.is_empty());

    println!(
        "log-bench: {} messages of {} B per round in batches of {} ({} B per batch), fsync every {} batches, {rounds} rounds alternating, medians; in {}",
        a.messages,
        a.size,
        a.batch,
        template.len(),
        a.flush_every,
        base.display()
    );
    let row = |name: &str, p: &Phase| {
        println!(
            "  {name:<28} append {:>9.0} msgs/s {:>7.1} MB/s   read {:>9.0} msgs/s {:>7.1} MB/s",
            p.append_msgs, p.append_mb, p.read_msgs, p.read_mb
        )
    };
    row("empty log", &empty_p);
    row(&format!("{:.1} GiB retained", retained as f64 / (1u64 << 30) as f64), &full_p);
    println!(
        "  retained / empty: append {:.2}x, read {:.2}x",
        full_p.append_msgs / empty_p.append_msgs,
        full_p.read_msgs / empty_p.read_msgs
    );
    println!(
        "  filled {:.1} GiB in {fill:.1} s ({:.0} MB/s), {segments} segments; reopened in {:.0} ms ({} segment(s) scanned, {} bytes cut); read from the middle {:.2} ms",
        retained as f64 / (1u64 << 30) as f64,
        retained as f64 / fill / 1e6,
        reopen * 1000.0,
        rec.rebuilt_indexes,
        rec.truncated_bytes,
        lookup.as_secs_f64() * 1000.0
    );
    drop((full, empty));
    let _ = std::fs::remove_dir_all(&base);
}
