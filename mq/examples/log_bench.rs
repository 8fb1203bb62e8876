//! The partition log on its own: append and read throughput on an empty log and again with a
//! large log retained behind it, so the effect of retained data is one ratio from one run.
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

fn main() {
    let a = args();
    let dir = match &a.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("starling-log-bench-{}", std::process::id())),
    };
    let _ = std::fs::remove_dir_all(&dir);
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
    let (mut log, _) = Log::open(&dir, LogConfig::default()).expect("open");
    let empty = phase(&mut log, &template, &a, n_batches);

    let target = (a.retained_gib * (1u64 << 30) as f64) as u64;
    let t = Instant::now();
    let mut i = 0usize;
    while log.size_bytes() < target {
        let mut b = template.clone();
        log.append_as_leader(&mut b, 1, 0).expect("append");
        i += 1;
        if i.is_multiple_of(4096) {
            log.flush().expect("flush");
        }
    }
    log.flush().expect("flush");
    let fill = t.elapsed().as_secs_f64();
    let retained = log.size_bytes();
    let segments = log.segment_count();
    drop(log);
    // Reopen: closed segments from their index files, the last one scanned.
    let t = Instant::now();
    let (mut log, rec) = Log::open(&dir, LogConfig::default()).expect("reopen");
    let reopen = t.elapsed().as_secs_f64();
    let full = phase(&mut log, &template, &a, n_batches);
    // A read from the middle of the retained data (an index lookup in an old segment).
    let mid = log.end_offset() / 2;
    let t = Instant::now();
    let r = log.read(mid, 1 << 20, i64::MAX).expect("read");
    let lookup = t.elapsed();
    assert!(!r.bytes.is_empty());

    println!(
        "log-bench: {} messages of {} B in batches of {} ({} B per batch), fsync every {} batches, in {}",
        a.messages,
        a.size,
        a.batch,
        template.len(),
        a.flush_every,
        dir.display()
    );
    let row = |name: &str, p: &Phase| {
        println!(
            "  {name:<28} append {:>9.0} msgs/s {:>7.1} MB/s   read {:>9.0} msgs/s {:>7.1} MB/s",
            p.append_msgs, p.append_mb, p.read_msgs, p.read_mb
        )
    };
    row("empty log", &empty);
    row(&format!("{:.1} GiB retained", retained as f64 / (1u64 << 30) as f64), &full);
    println!(
        "  retained / empty: append {:.2}x, read {:.2}x",
        full.append_msgs / empty.append_msgs,
        full.read_msgs / empty.read_msgs
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
    drop(log);
    let _ = std::fs::remove_dir_all(&dir);
}
