//! The replica side's rules, shared by `starlingd` and the simulator: what a replica refuses
//! before it stores records a coordinator, a hint holder or a stream sent, and when a stand-in
//! keeps records as hints for a replica that is down.

use std::time::{Duration, Instant};

use starling_wire::{check_key_value, Record, Version};

use crate::hlc::Hlc;
use crate::view::RingView;
use crate::NodeId;

/// Why a replica refused records.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Not valid (a key or value over its limit, an empty key).
    #[error("{0}")]
    Invalid(String),
    /// A version further ahead of this replica's clock than the maximum clock offset: a
    /// coordinator with a broken clock must not plant versions no later write can beat.
    #[error("{0}")]
    FromTheFuture(String),
    /// The hint's target left the cluster.
    #[error("{0} left the cluster")]
    TargetLeft(NodeId),
    /// The hint's target has been down longer than the hint window: the write is left to
    /// anti-entropy.
    #[error("{0} has been down longer than the hint window")]
    TargetDownTooLong(NodeId),
}

impl Refusal {
    /// Whether retrying elsewhere or later could succeed (an `unavailable` answer), rather than
    /// the request being wrong (`bad request`).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Refusal::TargetDownTooLong(_))
    }
}

/// Checks records before a replica stores them, and moves its clock past them: each must be
/// valid, and none may be more than `max_offset` ahead of `cluster_ms` (this node's estimate of
/// the cluster's time).
pub fn check_incoming(
    hlc: &Hlc,
    records: &[Record],
    cluster_ms: u64,
    max_offset: Duration,
) -> Result<(), Refusal> {
    for r in records {
        check_key_value(&r.key, r.value.as_deref()).map_err(Refusal::Invalid)?;
    }
    if let Some(max) = records.iter().map(|r| r.version.ts).max() {
        let bound = max_offset.as_millis() as u64;
        hlc.observe(max, cluster_ms, bound).map_err(|e| Refusal::FromTheFuture(e.to_string()))?;
    }
    Ok(())
}

/// Whether a stand-in keeps records for `target` as hints (checked after [`check_incoming`]).
pub fn admit_hints(
    view: &RingView,
    target: NodeId,
    now: Instant,
    hint_window: Duration,
) -> Result<(), Refusal> {
    if view.left.contains(&target) {
        return Err(Refusal::TargetLeft(target));
    }
    if view.down_for(target, now).is_some_and(|d| d > hint_window) {
        return Err(Refusal::TargetDownTooLong(target));
    }
    Ok(())
}

/// For each record, the newer version the replica already holds for its key, if any (the
/// record lost to it: the write is acknowledged but superseded).
pub fn newer_held(records: &[Record], held: &[Option<Version>]) -> Vec<Option<Version>> {
    records.iter().zip(held).map(|(r, h)| h.filter(|h| *h > r.version)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(ts: u64) -> Record {
        Record {
            key: b"k".to_vec(),
            version: Version { ts, node: NodeId(1) },
            value: Some(vec![1]),
        }
    }

    #[test]
    fn a_version_from_the_future_is_refused_and_the_clock_stays() {
        let hlc = Hlc::new();
        let wall = 1_700_000_000_000u64;
        let near = crate::hlc::from_millis(wall + 100);
        let far = crate::hlc::from_millis(wall + 10 * 365 * 24 * 3600 * 1000);
        assert!(check_incoming(&hlc, &[rec(near)], wall, Duration::from_millis(500)).is_ok());
        assert_eq!(hlc.last(), near);
        let e = check_incoming(&hlc, &[rec(far)], wall, Duration::from_millis(500)).unwrap_err();
        assert!(matches!(e, Refusal::FromTheFuture(_)));
        assert_eq!(hlc.last(), near);
        let bad = Record { key: Vec::new(), ..rec(near) };
        assert!(matches!(
            check_incoming(&hlc, &[bad], wall, Duration::from_millis(500)),
            Err(Refusal::Invalid(_))
        ));
    }

    #[test]
    fn newer_versions_held_are_reported() {
        let recs = [rec(5), rec(5), rec(5)];
        let v = |ts| Some(Version { ts, node: NodeId(1) });
        assert_eq!(newer_held(&recs, &[v(9), v(5), None]), vec![v(9), None, None]);
    }
}
