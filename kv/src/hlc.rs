//! A hybrid logical clock (Kulkarni et al., 2014): physical milliseconds in the high 48 bits and
//! a logical counter in the low 16. Timestamps a node issues strictly increase, stay close to
//! wall-clock time, and move past any timestamp the node has seen from a peer, so a write that
//! causally follows another gets a greater version even when the clocks of their coordinators
//! disagree.
//!
//! The wall clock is an input (`wall_ms`, milliseconds since the Unix epoch), so the clock runs
//! in the simulator with any offset and drift. Clocks are bounded as CockroachDB bounds them: a
//! timestamp more than the maximum clock offset ahead of this node's wall clock is refused
//! ([`Hlc::observe`]), never followed, so one node with a broken clock cannot drag the cluster's
//! versions into the future; and the clock can be started above a persisted high mark
//! ([`Hlc::starting_after`]) so a restart with the wall clock set back issues no older versions.

use std::sync::atomic::{AtomicU64, Ordering};

/// Bits of the logical counter.
pub const LOGICAL_BITS: u32 = 16;

/// `ms` as a timestamp with a zero logical part.
pub fn from_millis(ms: u64) -> u64 {
    ms << LOGICAL_BITS
}

/// The wall-clock milliseconds of a timestamp.
pub fn millis(ts: u64) -> u64 {
    ts >> LOGICAL_BITS
}

/// A timestamp too far ahead of this node's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "a version {ahead_ms} ms ahead of this node's clock (at most {max_ms} ms allowed): a clock \
     in the cluster is wrong"
)]
pub struct TooFarAhead {
    /// How far ahead of the local wall clock the timestamp was.
    pub ahead_ms: u64,
    /// The bound it broke.
    pub max_ms: u64,
}

/// A node's hybrid logical clock. Lock-free; share it by reference.
#[derive(Debug, Default)]
pub struct Hlc {
    last: AtomicU64,
}

impl Hlc {
    /// A clock that has seen nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// A clock whose timestamps are all greater than `floor` (a persisted high mark).
    pub fn starting_after(floor: u64) -> Self {
        Hlc { last: AtomicU64::new(floor) }
    }

    /// A fresh timestamp at wall-clock time `wall_ms`: greater than every timestamp issued or
    /// observed before.
    pub fn now(&self, wall_ms: u64) -> u64 {
        let phys = from_millis(wall_ms);
        let prev = self
            .last
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |last| {
                Some(phys.max(last.saturating_add(1)))
            })
            .unwrap_or_else(|x| x);
        phys.max(prev.saturating_add(1))
    }

    /// The greatest timestamp issued or observed so far (what a node persists as its high mark).
    pub fn last(&self) -> u64 {
        self.last.load(Ordering::Acquire)
    }

    /// Takes a timestamp seen in a peer's message into account, unless it is more than `max_ms`
    /// ahead of `wall_ms`: then it is refused and the clock does not move.
    pub fn observe(&self, ts: u64, wall_ms: u64, max_ms: u64) -> Result<(), TooFarAhead> {
        check_ahead(ts, wall_ms, max_ms)?;
        self.last.fetch_max(ts, Ordering::AcqRel);
        Ok(())
    }
}

/// Refuses `ts` if its wall-clock part is more than `max_ms` ahead of `wall_ms`.
pub fn check_ahead(ts: u64, wall_ms: u64, max_ms: u64) -> Result<(), TooFarAhead> {
    let ms = millis(ts);
    if ms > wall_ms.saturating_add(max_ms) {
        return Err(TooFarAhead { ahead_ms: ms - wall_ms, max_ms });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strictly_increasing_and_past_observed() {
        let wall = 1_700_000_000_000;
        let c = Hlc::new();
        let a = c.now(wall);
        let b = c.now(wall);
        assert!(b > a);
        // Within the bound: followed.
        let ahead = from_millis(wall + 400);
        c.observe(ahead, wall, 500).unwrap();
        assert!(c.now(wall) > ahead);
        // Past the bound: refused, and the clock did not move there.
        let broken = from_millis(wall + 3_600_000);
        let e = c.observe(broken, wall, 500).unwrap_err();
        assert_eq!(e.ahead_ms, 3_600_000);
        assert!(c.now(wall) < broken);
        // The wall clock moving on drives the physical part.
        assert!(millis(c.now(wall + 10_000)) == wall + 10_000);
    }

    #[test]
    fn a_clock_set_back_still_issues_greater_timestamps_after_its_high_mark() {
        let before = Hlc::new();
        let last = before.now(2_000_000);
        let after = Hlc::starting_after(before.last());
        assert!(after.now(1_000_000) > last, "a restart with the clock set back went back");
    }
}
