//! What `starling bench kv` and `starling bench meta` share: latency histograms, the progress
//! bar, and collecting the workers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use hdrhistogram::Histogram;

/// A worker's latencies and its first error.
pub type WorkerResult = (Histogram<u64>, Option<String>);

/// Latencies in microseconds, up to a minute.
pub fn histogram() -> Histogram<u64> {
    Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// A progress bar of `len` `unit`s (hidden with `quiet`) that follows `done` until it is
/// finished with [`Progress::finish`].
pub struct Progress {
    bar: indicatif::ProgressBar,
    ticker: tokio::task::JoinHandle<()>,
}

impl Progress {
    pub fn start(len: u64, unit: &str, quiet: bool, done: Arc<AtomicU64>) -> Progress {
        let bar =
            if quiet { indicatif::ProgressBar::hidden() } else { indicatif::ProgressBar::new(len) };
        bar.set_style(
            indicatif::ProgressStyle::with_template(&format!(
                "{{bar:40}} {{pos}}/{{len}} {unit}  {{per_sec}}  eta {{eta}}"
            ))
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        let ticker = {
            let bar = bar.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    bar.set_position(done.load(Ordering::Relaxed));
                }
            })
        };
        Progress { bar, ticker }
    }

    pub fn finish(self) {
        self.ticker.abort();
        self.bar.finish_and_clear();
    }
}

/// Waits for every worker: their latencies merged, and the first error any of them saw.
pub async fn join(
    workers: Vec<tokio::task::JoinHandle<WorkerResult>>,
) -> Result<(Histogram<u64>, Option<String>)> {
    let mut hist = histogram();
    let mut first_error = None;
    for w in workers {
        let (h, e) = w.await.context("bench worker")?;
        hist.add(h).map_err(|e| anyhow!("histogram: {e}"))?;
        first_error = first_error.or(e);
    }
    Ok((hist, first_error))
}
