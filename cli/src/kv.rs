//! `starling kv put|get|del` and `starling bench kv`.

use std::io::{Read as _, Write as _};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use starling_wire::{
    check_key_value, Consistency, Get, Put, Value, Version, Written, MAX_VALUE_BYTES,
};

use crate::client::{self, Auth, Client, ClientError};

#[derive(clap::Subcommand, Debug)]
pub enum KvCmd {
    /// Store VALUE under KEY (VALUE from the argument, --file, or standard input).
    Put {
        key: String,
        value: Option<String>,
        /// Read the value from this file.
        #[arg(long, conflicts_with = "value")]
        file: Option<PathBuf>,
        #[command(flatten)]
        opts: KvOpts,
    },
    /// Print the value of KEY (raw bytes) to standard output.
    Get {
        key: String,
        #[command(flatten)]
        opts: KvOpts,
    },
    /// Delete KEY.
    Del {
        key: String,
        #[command(flatten)]
        opts: KvOpts,
    },
}

#[derive(clap::Args, Debug, Clone)]
pub struct KvOpts {
    /// How many replicas must answer: one, quorum, all (and any, for writes).
    #[arg(long, short = 'c', default_value = "quorum")]
    consistency: Consistency,
    /// Print JSON: the version, when it was written, and how many replicas answered.
    #[arg(long)]
    json: bool,
}

fn version_json(v: Version) -> serde_json::Value {
    serde_json::json!({
        "ts": v.ts,
        "node": v.node.to_string(),
        "written_at_ms": v.millis(),
    })
}

pub async fn run(node: &str, auth: &Auth, cmd: &KvCmd) -> Result<()> {
    let (key, value, opts) = match cmd {
        KvCmd::Put { key, value, file, opts } => {
            let v = match (value, file) {
                (Some(v), _) => v.as_bytes().to_vec(),
                (None, Some(f)) => {
                    let meta = std::fs::metadata(f)
                        .with_context(|| format!("--file {}: cannot read", f.display()))?;
                    if meta.len() > MAX_VALUE_BYTES as u64 {
                        return Err(ClientError::BadInput(format!(
                            "--file {}: the value is {} bytes; the limit is {MAX_VALUE_BYTES} bytes (1 MiB)",
                            f.display(),
                            meta.len()
                        ))
                        .into());
                    }
                    std::fs::read(f)
                        .with_context(|| format!("--file {}: cannot read", f.display()))?
                }
                (None, None) => {
                    let mut buf = Vec::new();
                    std::io::stdin()
                        .take(MAX_VALUE_BYTES as u64 + 1)
                        .read_to_end(&mut buf)
                        .context("cannot read the value from standard input")?;
                    buf
                }
            };
            (key, Some(v), opts)
        }
        KvCmd::Get { key, opts } | KvCmd::Del { key, opts } => (key, None, opts),
    };
    check_key_value(key.as_bytes(), value.as_deref()).map_err(ClientError::BadInput)?;
    if matches!(cmd, KvCmd::Get { .. }) && opts.consistency == Consistency::Any {
        return Err(ClientError::BadInput("--consistency any is for writes only".into()).into());
    }
    let client = client::connect(node, auth).await?;
    let result = match value {
        None if matches!(cmd, KvCmd::Get { .. }) => {
            match client.get(key.as_bytes(), opts.consistency).await {
                Ok(v) => print_value(key, v, opts),
                Err(e) => Err(ClientError::from(e).into()),
            }
        }
        value => {
            let deleting = value.is_none();
            let written = match value {
                Some(v) => client.put(key.as_bytes(), v, opts.consistency).await,
                None => client.delete(key.as_bytes(), opts.consistency).await,
            };
            match written {
                Ok(w) => print_written(key, deleting, w, opts),
                Err(e) => Err(ClientError::from(e).into()),
            }
        }
    };
    client.close().await;
    result
}

fn print_value(key: &str, v: Value, opts: &KvOpts) -> Result<()> {
    let Value { record, replicas } = v;
    let Some(r) = record.filter(|r| !r.is_tombstone()) else {
        return Err(ClientError::NotFound(format!(
            "key {key:?} not found ({replicas} replicas answered)"
        ))
        .into());
    };
    if opts.json {
        let value = r.value.clone().unwrap_or_default();
        let mut j = serde_json::json!({
            "key": key,
            "version": version_json(r.version),
            "replicas": replicas,
            "consistency": opts.consistency.as_str(),
        });
        match String::from_utf8(value) {
            Ok(s) => j["value"] = s.into(),
            Err(e) => j["value_hex"] = hex(e.as_bytes()).into(),
        }
        println!("{}", serde_json::to_string_pretty(&j)?);
    } else {
        let mut out = std::io::stdout().lock();
        out.write_all(r.value.as_deref().unwrap_or_default())?;
        out.flush()?;
    }
    Ok(())
}

fn print_written(key: &str, deleting: bool, w: Written, opts: &KvOpts) -> Result<()> {
    let Written { version, acked, required, superseded } = w;
    if opts.json {
        let j = serde_json::json!({
            "key": key,
            "deleted": deleting,
            "version": version_json(version),
            "acked": acked,
            "required": required,
            "consistency": opts.consistency.as_str(),
            "superseded_by": superseded.map(version_json),
        });
        println!("{}", serde_json::to_string_pretty(&j)?);
    } else {
        eprintln!(
            "{} {key:?} ({acked} replicas acknowledged, {} needed {required})",
            if deleting { "deleted" } else { "stored" },
            opts.consistency
        );
        if let Some(newer) = superseded {
            eprintln!(
                "warning: a replica already held a newer version of {key:?} \
                 (written at {} ms by node {}); reads return that one",
                newer.millis(),
                newer.node
            );
        }
    }
    Ok(())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[derive(clap::Args, Debug, Clone)]
pub struct BenchKvArgs {
    /// Nodes to spread requests over (QUIC addresses), comma-separated.
    #[arg(long = "nodes", alias = "nodes-url", value_delimiter = ',', required = true)]
    nodes: Vec<String>,
    /// Requests to send.
    #[arg(long, default_value_t = 200_000)]
    ops: u64,
    /// Requests in flight.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Bytes per value.
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// Reads:writes, e.g. 0:1 (writes only), 1:0 (reads only), 9:1.
    #[arg(long, default_value = "0:1")]
    ratio: String,
    #[arg(long, default_value = "quorum")]
    consistency: Consistency,
    /// Distinct keys (`bench-<n>`); writes go through them in order, reads pick at random
    /// [default: --ops].
    #[arg(long)]
    keys: Option<u64>,
    /// What the keys start with (`<prefix><n>`), to write a second set beside the first.
    #[arg(long, default_value = "bench-")]
    key_prefix: String,
    /// Reads go through the keys in order, like writes, instead of at random (to check every
    /// key: with --ratio 1:0 --ops K --keys K, each key is read once).
    #[arg(long)]
    reads_in_order: bool,
    /// Hide the progress bar.
    #[arg(long)]
    quiet: bool,
}

#[derive(Default)]
struct Counts {
    reads: AtomicU64,
    writes: AtomicU64,
    not_found: AtomicU64,
    errors: AtomicU64,
    /// Shared with the progress bar.
    done: Arc<AtomicU64>,
}

pub async fn bench(auth: &Auth, a: &BenchKvArgs) -> Result<()> {
    let (r, w) = a
        .ratio
        .split_once(':')
        .and_then(|(r, w)| Some((r.trim().parse::<u32>().ok()?, w.trim().parse::<u32>().ok()?)))
        .filter(|(r, w)| r + w > 0)
        .ok_or_else(|| {
            ClientError::BadInput(format!("--ratio {:?}: expected READS:WRITES, e.g. 9:1", a.ratio))
        })?;
    if a.concurrency == 0 || a.ops == 0 {
        return Err(
            ClientError::BadInput("--ops and --concurrency must be at least 1".into()).into()
        );
    }
    if a.value_size > MAX_VALUE_BYTES {
        return Err(ClientError::BadInput(format!(
            "--value-size: the limit is {MAX_VALUE_BYTES} bytes"
        ))
        .into());
    }
    if r > 0 && a.consistency == Consistency::Any {
        return Err(ClientError::BadInput("--consistency any is for writes only".into()).into());
    }
    let client = Client::connect(&a.nodes, auth).await.map_err(ClientError::from)?;
    // Connect to every node before the clock starts: the figures are for requests on open
    // connections, as a long-lived client sees them, not for QUIC and TLS handshakes.
    client.connect_all().await.map_err(ClientError::from)?;
    let keys = a.keys.unwrap_or(a.ops).max(1);
    let counts = Arc::new(Counts::default());
    let next = Arc::new(AtomicU64::new(0));
    let value = Arc::new(vec![b'v'; a.value_size]);
    // Allocated before the clock starts, so that no worker's first request waits while the
    // others set up.
    let hists: Vec<Histogram<u64>> =
        (0..a.concurrency).map(|_| crate::bench::histogram()).collect();
    let started = Instant::now();
    let mut workers = Vec::new();
    for (wid, mut hist) in hists.into_iter().enumerate() {
        let (client, counts, next, value) =
            (client.clone(), counts.clone(), next.clone(), value.clone());
        let (ops, cl, in_order) = (a.ops, a.consistency, a.reads_in_order);
        let prefix = a.key_prefix.clone();
        workers.push(tokio::spawn(async move {
            let mut rng =
                0x9e37_79b9_7f4a_7c15u64 ^ (wid as u64 + 1).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            let mut first_error: Option<String> = None;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= ops {
                    break;
                }
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let is_read = (rng % u64::from(r + w)) < u64::from(r);
                // Requests rotate over the nodes (the client skips a node it cannot connect to).
                let t = Instant::now();
                let result = if is_read {
                    let k = if in_order { i % keys } else { (rng >> 11) % keys };
                    let get = Get { key: format!("{prefix}{k:010}").into_bytes(), consistency: cl };
                    client.call(get).await.map(|v| {
                        counts.reads.fetch_add(1, Ordering::Relaxed);
                        if v.record.is_none_or(|r| r.is_tombstone()) {
                            counts.not_found.fetch_add(1, Ordering::Relaxed);
                        }
                    })
                } else {
                    let put = Put {
                        key: format!("{prefix}{:010}", i % keys).into_bytes(),
                        value: Some(value.to_vec()),
                        consistency: cl,
                    };
                    client.call(put).await.map(|_| {
                        counts.writes.fetch_add(1, Ordering::Relaxed);
                    })
                };
                let _ = hist.record((t.elapsed().as_micros() as u64).max(1));
                if let Err(e) = result {
                    counts.errors.fetch_add(1, Ordering::Relaxed);
                    first_error.get_or_insert_with(|| e.to_string());
                }
                counts.done.fetch_add(1, Ordering::Relaxed);
            }
            (hist, first_error)
        }));
    }
    let progress = crate::bench::Progress::start(a.ops, "ops", a.quiet, counts.done.clone());
    let (hist, first_error) = crate::bench::join(workers).await?;
    let elapsed = started.elapsed();
    progress.finish();
    client.close().await;
    let done = counts.done.load(Ordering::Relaxed);
    let ok = done - counts.errors.load(Ordering::Relaxed);
    let us = |q: f64| Duration::from_micros(hist.value_at_quantile(q));
    println!(
        "bench kv: {} nodes, {} ops ({} reads, {} writes, {} errors, {} reads not found), {} in flight, {} B values, consistency {}",
        a.nodes.len(),
        done,
        counts.reads.load(Ordering::Relaxed),
        counts.writes.load(Ordering::Relaxed),
        counts.errors.load(Ordering::Relaxed),
        counts.not_found.load(Ordering::Relaxed),
        a.concurrency,
        a.value_size,
        a.consistency
    );
    println!(
        "  {:.0} ops/s over {:.2} s; latency p50 {:?}, p99 {:?}, p999 {:?}, max {:?}",
        ok as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64(),
        us(0.5),
        us(0.99),
        us(0.999),
        Duration::from_micros(hist.max())
    );
    if let Some(e) = first_error {
        println!("  first error: {e}");
    }
    if counts.errors.load(Ordering::Relaxed) == done {
        bail!("every request failed");
    }
    Ok(())
}
