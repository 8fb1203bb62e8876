//! Phi-accrual failure detector (Hayashibara et al., 2004), as Cassandra approximates it: the
//! inter-arrival times of a member's heartbeats are taken as exponentially distributed, so
//! `phi(t) = -log10(P(no heartbeat for t)) = t / mean * log10(e)`.

use std::time::{Duration, Instant};

const LOG10_E: f64 = std::f64::consts::LOG10_E;
/// Weight of the newest interval in the running mean (an EWMA keeps memory O(1) per member).
const ALPHA: f64 = 0.125;
/// Intervals longer than this are not heartbeats but gaps (a restart, a partition).
const MAX_INTERVAL: Duration = Duration::from_secs(60);

/// Arrival statistics of one member's heartbeats.
#[derive(Clone, Debug, Default)]
pub struct Phi {
    last: Option<Instant>,
    mean_secs: f64,
    samples: u32,
}

impl Phi {
    /// Records a heartbeat (any message the member sent us itself).
    pub fn heartbeat(&mut self, now: Instant) {
        if let Some(last) = self.last {
            let dt = now.saturating_duration_since(last);
            if dt < MAX_INTERVAL && !dt.is_zero() {
                let x = dt.as_secs_f64();
                self.mean_secs = if self.samples == 0 {
                    x
                } else {
                    self.mean_secs + ALPHA * (x - self.mean_secs)
                };
                self.samples = self.samples.saturating_add(1);
            }
        }
        self.last = Some(now);
    }

    /// Suspicion level now; 0 until two heartbeats were seen.
    pub fn phi(&self, now: Instant) -> f64 {
        match self.last {
            Some(last) if self.samples > 0 && self.mean_secs > 0.0 => {
                now.saturating_duration_since(last).as_secs_f64() / self.mean_secs * LOG10_E
            }
            _ => 0.0,
        }
    }

    /// Number of intervals observed.
    pub fn samples(&self) -> u32 {
        self.samples
    }

    /// When we last heard from the member directly.
    pub fn last(&self) -> Option<Instant> {
        self.last
    }

    /// Time we were stalled does not count as silence of others.
    pub(crate) fn shift(&mut self, by: Duration) {
        if let Some(l) = self.last.as_mut() {
            *l += by;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phi_grows_with_silence() {
        let t0 = Instant::now();
        let mut p = Phi::default();
        assert_eq!(p.phi(t0), 0.0);
        for i in 0..10 {
            p.heartbeat(t0 + Duration::from_secs(i));
        }
        let at = |s: f64| p.phi(t0 + Duration::from_secs(9) + Duration::from_secs_f64(s));
        assert!(at(0.5) < 1.0);
        // One mean interval of silence gives phi = log10(e); 20 intervals, about 8.7.
        assert!((at(1.0) - LOG10_E).abs() < 1e-9);
        assert!(at(20.0) > 8.0);
    }
}
