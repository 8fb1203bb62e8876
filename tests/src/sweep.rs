//! What the seed-sweep binaries (`zab-sim`, `mq-sim`, `group-sim`) share: the seeds to run, the
//! progress bar, and the tally of figures, faults and seeds with violations.

use std::collections::BTreeMap;

use indicatif::{ProgressBar, ProgressStyle};

/// `--seed N` alone, else `count` seeds from `start`.
pub fn seeds(one: Option<u64>, start: u64, count: u64) -> Vec<u64> {
    match one {
        Some(s) => vec![s],
        None => (start..start + count).collect(),
    }
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
