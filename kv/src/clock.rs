//! How far this node's wall clock is from the cluster's, as CockroachDB's remote clock monitor
//! measures it: every few seconds the node asks each peer for its wall clock over the peer
//! connection and times the round trip. The peer's offset is `remote - (sent + rtt / 2)`, known to
//! within `rtt / 2`; round trips longer than the bound itself say nothing and are dropped.
//!
//! This node's offset from the cluster is the **median** over every measured peer and itself
//! (offset 0): with one node two minutes slow among three, the slow node sees `[0, +2 min,
//! +2 min]` and knows it is the one that is off, while the others see `[0, 0, -2 min]` and stay
//! healthy. A node more than the maximum offset off refuses to coordinate writes (its versions
//! would be out of order with the rest of the cluster's); replicas refuse versions too far ahead
//! of their own clocks anyway ([`crate::hlc::check_ahead`]).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use starling_ring::NodeId;

/// Samples older than this are forgotten (the peer stopped answering, or left).
pub const SAMPLE_TTL: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy)]
struct Sample {
    /// The peer's clock minus this node's, in ms.
    offset_ms: i64,
    at: Instant,
}

/// This node's clock against the cluster's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClockHealth {
    /// This node's clock minus the cluster's (the median), in ms: negative when it is behind.
    pub offset_ms: i64,
    /// Peers measured recently.
    pub peers: usize,
    /// `|offset_ms|` is within the maximum clock offset.
    pub healthy: bool,
}

/// Peers whose clocks a node must have measured before it coordinates writes, given the
/// `up_peers` other ring nodes gossip shows up: two (one alone could be the wrong one), or all of
/// them if fewer. Until then its offset is unknown: a node that just started with a clock far
/// off would otherwise look healthy (no sample says otherwise) and plant versions from the future.
pub fn peers_needed(up_peers: usize) -> usize {
    up_peers.min(2)
}

/// Offsets measured to each peer.
#[derive(Debug)]
pub struct ClockMonitor {
    max_offset: Duration,
    samples: HashMap<NodeId, Sample>,
}

impl ClockMonitor {
    /// A monitor for the bound `max_offset`.
    pub fn new(max_offset: Duration) -> Self {
        ClockMonitor { max_offset, samples: HashMap::new() }
    }

    /// The bound.
    pub fn max_offset(&self) -> Duration {
        self.max_offset
    }

    /// A round trip to `peer`: asked when this node's wall clock read `sent_ms`, answered with
    /// the peer's `remote_ms`, after `rtt`.
    pub fn handle_sample(
        &mut self,
        now: Instant,
        peer: NodeId,
        sent_ms: u64,
        remote_ms: u64,
        rtt: Duration,
    ) {
        if rtt > self.max_offset {
            return;
        }
        let midpoint = sent_ms as i128 + (rtt.as_millis() / 2) as i128;
        let offset_ms = (remote_ms as i128 - midpoint).clamp(i64::MIN as i128, i64::MAX as i128);
        self.samples.insert(peer, Sample { offset_ms: offset_ms as i64, at: now });
    }

    /// This node's offset from the cluster at `now`.
    pub fn health(&self, now: Instant) -> ClockHealth {
        let mut own: Vec<i64> = self
            .samples
            .values()
            .filter(|s| now.saturating_duration_since(s.at) <= SAMPLE_TTL)
            .map(|s| -s.offset_ms)
            .collect();
        let peers = own.len();
        own.push(0);
        own.sort_unstable();
        // The lower median with an even count: the one nearer 0 of the middle two, so one peer
        // alone (two values) never marks a node off.
        let mid = own.len() / 2;
        let offset_ms = if own.len().is_multiple_of(2) {
            let (a, b) = (own[mid - 1], own[mid]);
            if a.unsigned_abs() <= b.unsigned_abs() {
                a
            } else {
                b
            }
        } else {
            own[mid]
        };
        let healthy = offset_ms.unsigned_abs() <= self.max_offset.as_millis() as u64;
        ClockHealth { offset_ms, peers, healthy }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: Duration = Duration::from_millis(500);

    #[test]
    fn the_node_that_is_off_knows_it_and_the_others_stay_healthy() {
        let now = Instant::now();
        let rtt = Duration::from_millis(2);
        let wall = 1_000_000;
        // Node 3 is 120 s behind nodes 1 and 2.
        let mut on3 = ClockMonitor::new(MAX);
        on3.handle_sample(now, NodeId(1), wall - 120_000, wall + 1, rtt);
        on3.handle_sample(now, NodeId(2), wall - 120_000, wall + 1, rtt);
        let h = on3.health(now);
        assert!(!h.healthy, "{h:?}");
        assert!((h.offset_ms + 120_000).abs() < 5, "{h:?}");
        let mut on1 = ClockMonitor::new(MAX);
        on1.handle_sample(now, NodeId(2), wall, wall + 1, rtt);
        on1.handle_sample(now, NodeId(3), wall, wall - 120_000 + 1, rtt);
        assert!(on1.health(now).healthy, "{:?}", on1.health(now));
    }

    #[test]
    fn one_peer_alone_never_marks_a_node_off_and_slow_round_trips_say_nothing() {
        let now = Instant::now();
        let mut m = ClockMonitor::new(MAX);
        m.handle_sample(now, NodeId(2), 0, 600_000, Duration::from_millis(1));
        assert!(m.health(now).healthy);
        let mut m = ClockMonitor::new(MAX);
        m.handle_sample(now, NodeId(2), 0, 600_000, Duration::from_secs(1));
        m.handle_sample(now, NodeId(3), 0, 600_000, Duration::from_secs(1));
        assert_eq!(m.health(now).peers, 0);
    }

    #[test]
    fn old_samples_are_forgotten() {
        let now = Instant::now();
        let mut m = ClockMonitor::new(MAX);
        m.handle_sample(now, NodeId(2), 0, 600_000, Duration::ZERO);
        m.handle_sample(now, NodeId(3), 0, 600_000, Duration::ZERO);
        assert!(!m.health(now).healthy);
        assert!(m.health(now + SAMPLE_TTL + Duration::from_secs(1)).healthy);
    }
}
