//! What the seed-sweep binaries (`zab-sim`, `mq-sim`, `group-sim`) share: the seeds to run, the
//! progress bar, and the tally of figures, faults and seeds with violations.

use std::collections::BTreeMap;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// The flags every sweep takes (`#[command(flatten)]` them into a binary's own).
#[derive(clap::Args, Debug)]
pub struct SweepArgs {
    /// Seeds to run.
    #[arg(long, default_value_t = 500)]
    pub seeds: u64,
    /// First seed.
    #[arg(long, default_value_t = 0)]
    pub start: u64,
    /// Run this one seed only.
    #[arg(long, env = "SEED")]
    pub seed: Option<u64>,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

impl SweepArgs {
    /// `--seed N` alone, else `--seeds` seeds from `--start`.
    pub fn seeds(&self) -> Vec<u64> {
        match self.seed {
            Some(s) => vec![s],
            None => (self.start..self.start + self.seeds).collect(),
        }
    }

    /// The tally, with a progress bar unless `--quiet` or `--json`.
    pub fn sweep(&self, seeds: usize) -> Sweep {
        Sweep::new(seeds, self.quiet || self.json)
    }
}

/// The `p` quantile of sorted durations (zero when there are none).
pub fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// The tally of a sweep, with its progress bar (hidden when `quiet` or for a single seed).
#[derive(Debug)]
pub struct Sweep {
    pub bar: ProgressBar,
    pub totals: BTreeMap<&'static str, u64>,
    pub faults: BTreeMap<&'static str, u64>,
    /// Seeds with violations, and what they were.
    pub bad: Vec<(u64, Vec<String>)>,
}

impl Sweep {
    pub fn new(seeds: usize, quiet: bool) -> Sweep {
        let bar = if quiet || seeds < 2 {
            ProgressBar::hidden()
        } else {
            ProgressBar::new(seeds as u64).with_style(
                ProgressStyle::with_template(
                    "{bar:40} {pos}/{len} seeds {elapsed} (eta {eta}) {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            )
        };
        Sweep { bar, totals: BTreeMap::new(), faults: BTreeMap::new(), bad: Vec::new() }
    }

    /// One seed's figures, faults and violations (printed at once, above the bar).
    pub fn add(
        &mut self,
        seed: u64,
        figures: &[(&'static str, u64)],
        faults: BTreeMap<&'static str, u64>,
        violations: Vec<String>,
    ) {
        for &(k, v) in figures {
            *self.totals.entry(k).or_default() += v;
        }
        for (k, v) in faults {
            *self.faults.entry(k).or_default() += v;
        }
        if !violations.is_empty() {
            self.bar.suspend(|| {
                eprintln!("seed {seed}: {} violations: {violations:#?}", violations.len())
            });
            self.bad.push((seed, violations));
            self.bar.set_message(format!("{} seeds with violations", self.bad.len()));
        }
        self.bar.inc(1);
    }

    /// Violations in all.
    pub fn violations(&self) -> usize {
        self.bad.iter().map(|(_, v)| v.len()).sum()
    }

    /// The first seeds with violations.
    pub fn bad_seeds(&self) -> Vec<u64> {
        self.bad.iter().map(|(s, _)| *s).take(20).collect()
    }
}
