//! A hybrid logical clock (Kulkarni et al., 2014): physical milliseconds in the high 48 bits and
//! a logical counter in the low 16. Timestamps a node issues strictly increase, stay close to
//! wall-clock time, and move past any timestamp the node has seen from a peer, so a write that
//! causally follows another gets a greater version even when the clocks of their coordinators
//! disagree.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Bits of the logical counter.
pub const LOGICAL_BITS: u32 = 16;
/// Observed timestamps further ahead of the wall clock than this are not followed.
pub const MAX_AHEAD_MS: u64 = 60_000;

/// A node's hybrid logical clock. Lock-free; share it by reference.
#[derive(Debug, Default)]
pub struct Hlc {
    last: AtomicU64,
}

fn physical() -> u64 {
    let ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    ms << LOGICAL_BITS
}

impl Hlc {
    /// A clock that has seen nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// A fresh timestamp: greater than every timestamp issued or observed before.
    pub fn now(&self) -> u64 {
        let phys = physical();
        let prev = self
            .last
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |last| {
                Some(phys.max(last.saturating_add(1)))
            })
            .unwrap_or_else(|x| x);
        phys.max(prev.saturating_add(1))
    }

    /// Takes a timestamp seen in a peer's message into account. A timestamp more than
    /// [`MAX_AHEAD_MS`] ahead of this node's wall clock is ignored (a peer with a broken clock must
    /// not drag every clock in the cluster into the future); its value still wins by version.
    pub fn observe(&self, ts: u64) {
        if ts > physical().saturating_add(MAX_AHEAD_MS << LOGICAL_BITS) {
            return;
        }
        self.last.fetch_max(ts, Ordering::AcqRel);
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn wall_millis() -> u64 {
    physical() >> LOGICAL_BITS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strictly_increasing_and_past_observed() {
        let c = Hlc::new();
        let a = c.now();
        let b = c.now();
        assert!(b > a);
        let ahead = a + (5_000 << LOGICAL_BITS);
        c.observe(ahead);
        assert!(c.now() > ahead);
        // A clock an hour ahead is not followed.
        let broken = a + (3_600_000 << LOGICAL_BITS);
        c.observe(broken);
        assert!(c.now() < broken);
        assert!(c.now() >> LOGICAL_BITS >= wall_millis() - 1);
    }
}
