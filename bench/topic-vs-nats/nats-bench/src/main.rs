//! JetStream throughput in the shape of `starling bench topic`: `--streams S` streams of
//! `num_replicas: 3`, file storage; publishes `--messages N` messages of `--size` bytes
//! round-robin over the streams with `--window W` publishes awaiting their acknowledgement,
//! then reads everything back with one ordered pull per stream. Prints one line per phase.
//!
//!   nats-bench --url nats://127.0.0.1:4222 [--streams 3] [--messages 200000] [--size 1024] [--window 256]

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use futures::stream::{FuturesUnordered, StreamExt};

fn arg(args: &[String], name: &str, default: &str) -> String {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| default.to_string())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let url = arg(&args, "--url", "nats://127.0.0.1:4222");
    let streams: usize = arg(&args, "--streams", "3").parse()?;
    let messages: u64 = arg(&args, "--messages", "200000").parse()?;
    let size: usize = arg(&args, "--size", "1024").parse()?;
    let window: usize = arg(&args, "--window", "256").parse()?;

    let client = async_nats::connect(&url).await?;
    let js = jetstream::new(client);
    // The cluster may still be electing its meta leader: retry the stream creation.
    for s in 0..streams {
        let cfg = stream::Config {
            name: format!("BENCH{s}"),
            subjects: vec![format!("bench.{s}")],
            num_replicas: 3,
            storage: stream::StorageType::File,
            ..Default::default()
        };
        let started = Instant::now();
        loop {
            match js.get_or_create_stream(cfg.clone()).await {
                Ok(_) => break,
                Err(e) if started.elapsed() < Duration::from_secs(30) => {
                    eprintln!("waiting for JetStream: {e}");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    let payload = bytes::Bytes::from(vec![b'x'; size]);
    let mut hist = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut inflight = FuturesUnordered::new();
    let started = Instant::now();
    let mut acked = 0u64;
    for i in 0..messages {
        while inflight.len() >= window {
            if let Some(r) = inflight.next().await {
                let (t, ack): (Instant, Result<_, async_nats::jetstream::context::PublishError>) = r;
                ack?;
                hist.record(t.elapsed().as_micros().max(1) as u64)?;
                acked += 1;
            }
        }
        let subject = format!("bench.{}", i as usize % streams);
        let t = Instant::now();
        let ack = js.publish(subject, payload.clone()).await?;
        inflight.push(async move { (t, ack.await) });
    }
    while let Some((t, ack)) = inflight.next().await {
        ack?;
        hist.record(t.elapsed().as_micros().max(1) as u64)?;
        acked += 1;
    }
    let secs = started.elapsed().as_secs_f64();
    let q = |x: f64| hist.value_at_quantile(x) as f64 / 1000.0;
    println!(
        "produce: {acked} msgs of {size} B in {secs:.2} s = {:.0} msgs/s, {:.1} MB/s ({streams} streams, R3, {window} in flight); latency p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms",
        acked as f64 / secs,
        acked as f64 * size as f64 / secs / 1e6,
        q(0.5),
        q(0.99),
        q(0.999)
    );

    let started = Instant::now();
    let mut readers = Vec::new();
    for s in 0..streams {
        let js = js.clone();
        let want = messages / streams as u64 + u64::from((s as u64) < messages % streams as u64);
        readers.push(tokio::spawn(async move {
            let stream = js.get_stream(format!("BENCH{s}")).await.map_err(|e| e.to_string())?;
            let c = stream
                .create_consumer(consumer::pull::OrderedConfig::default())
                .await
                .map_err(|e| e.to_string())?;
            let mut msgs = c.messages().await.map_err(|e| e.to_string())?;
            let mut n = 0u64;
            while n < want {
                match msgs.next().await {
                    Some(Ok(_)) => n += 1,
                    Some(Err(e)) => return Err(e.to_string()),
                    None => break,
                }
            }
            Ok::<u64, String>(n)
        }));
    }
    let mut consumed = 0;
    for r in readers {
        consumed += r.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "consume: {consumed} msgs in {secs:.2} s = {:.0} msgs/s, {:.1} MB/s",
        consumed as f64 / secs,
        consumed as f64 * size as f64 / secs / 1e6
    );
    Ok(())
}
