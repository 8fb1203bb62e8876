//! Idempotent producers (Kafka's producer id, epoch and sequence): the per-partition state a
//! replica keeps so that a producer's retry is never appended twice.
//!
//! Every batch of an idempotent producer carries its producer id, producer epoch and the
//! sequence of its first record (the header fields `producerId`, `producerEpoch`,
//! `baseSequence`). Per producer id the partition remembers the epoch and its last five batches
//! (Kafka keeps five: a producer has at most five batches in flight). A batch is
//! - appended if it continues the sequence (`base = last + 1`, wrapping after `i32::MAX`), or
//!   starts at 0 with a newer epoch (a producer restarted with a bumped epoch);
//! - a duplicate if it is one of the five remembered batches: it is not appended again, and the
//!   producer is told the offsets it got the first time;
//! - refused otherwise: `OutOfOrderSequence` (a gap: a batch was lost in between), or
//!   `InvalidProducerEpoch` (an older epoch: that producer was fenced).
//!
//! Leaders and followers both record every batch they append, so a new leader has the state; a
//! truncation forgets the batches it removed.

use std::collections::{BTreeMap, VecDeque};

/// Batches remembered per producer (Kafka's `max.in.flight.requests.per.connection` bound).
pub const REMEMBERED_BATCHES: usize = 5;
/// Producers remembered per partition; beyond it the one whose newest batch is oldest is
/// forgotten (its next batch must start a new epoch or sequence 0), so producers that come
/// and go cannot grow the state without bound.
pub const MAX_PRODUCERS: usize = 10_000;

/// One appended batch of a producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchMeta {
    /// Producer epoch.
    pub epoch: i16,
    /// Sequence of the first record.
    pub first_seq: i32,
    /// Sequence of the last record.
    pub last_seq: i32,
    /// Offset of the first record.
    pub first_offset: i64,
    /// Offset of the last record.
    pub last_offset: i64,
}

/// What to do with an incoming batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Append it.
    Append,
    /// Already appended: answer with these offsets, append nothing.
    Duplicate {
        /// Offset of its first record.
        first_offset: i64,
        /// Offset of its last record.
        last_offset: i64,
    },
}

/// Why a batch is refused (Kafka's error names).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize,
)]
pub enum SequenceError {
    /// The sequence does not continue the producer's last batch.
    #[error("out of order sequence: expected {expected}, got {got}")]
    OutOfOrderSequence {
        /// The sequence that would continue.
        expected: i32,
        /// The batch's.
        got: i32,
    },
    /// The partition has no state for this producer id (never seen here, or its batches were
    /// removed by retention) and the batch does not start a sequence: Kafka's
    /// `UNKNOWN_PRODUCER_ID`, after which a producer bumps its epoch and starts again at 0.
    #[error("unknown producer id: no state for it here (retention removed it, or it never wrote here); start again at sequence 0 (got {got})")]
    UnknownProducer {
        /// The batch's first sequence.
        got: i32,
    },
    /// The producer epoch is older than the one this partition has seen: that producer was
    /// replaced (fenced).
    #[error("producer epoch {got} is older than {current} (fenced)")]
    InvalidProducerEpoch {
        /// The partition's.
        current: i16,
        /// The batch's.
        got: i16,
    },
}

/// The last sequence of a batch of `count` records starting at `first` (wrapping as Kafka does).
pub fn last_seq(first: i32, count: i32) -> i32 {
    let last = i64::from(first) + i64::from(count) - 1;
    if last > i64::from(i32::MAX) {
        (last - i64::from(i32::MAX) - 1) as i32
    } else {
        last as i32
    }
}

fn next_seq(last: i32) -> i32 {
    if last == i32::MAX {
        0
    } else {
        last + 1
    }
}

/// Producer state of one partition.
#[derive(Debug, Clone, Default)]
pub struct Producers {
    by_id: BTreeMap<i64, VecDeque<BatchMeta>>,
}

impl Producers {
    /// Empty state.
    pub fn new() -> Producers {
        Producers::default()
    }

    /// Number of producers known.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// No producer known.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// The verdict for a batch of producer `id` at `epoch` whose records have sequences
    /// `first_seq ..= last_seq`.
    pub fn check(
        &self,
        id: i64,
        epoch: i16,
        first_seq: i32,
        last_seq: i32,
    ) -> Result<Verdict, SequenceError> {
        let Some(batches) = self.by_id.get(&id) else {
            // An unknown producer starts at 0 (a known one whose state was forgotten, e.g.
            // truncated away, starts again at 0 with a new epoch).
            return if first_seq == 0 {
                Ok(Verdict::Append)
            } else {
                Err(SequenceError::UnknownProducer { got: first_seq })
            };
        };
        let last = batches.back().expect("no producer is kept without a batch");
        if epoch < last.epoch {
            return Err(SequenceError::InvalidProducerEpoch { current: last.epoch, got: epoch });
        }
        if epoch > last.epoch {
            return if first_seq == 0 {
                Ok(Verdict::Append)
            } else {
                Err(SequenceError::OutOfOrderSequence { expected: 0, got: first_seq })
            };
        }
        if let Some(b) = batches
            .iter()
            .find(|b| b.epoch == epoch && b.first_seq == first_seq && b.last_seq == last_seq)
        {
            return Ok(Verdict::Duplicate {
                first_offset: b.first_offset,
                last_offset: b.last_offset,
            });
        }
        let expected = next_seq(last.last_seq);
        if first_seq == expected {
            Ok(Verdict::Append)
        } else {
            Err(SequenceError::OutOfOrderSequence { expected, got: first_seq })
        }
    }

    /// Records an appended batch (leader and follower alike).
    pub fn record(&mut self, id: i64, meta: BatchMeta) {
        if !self.by_id.contains_key(&id) && self.by_id.len() >= MAX_PRODUCERS {
            let oldest = self
                .by_id
                .iter()
                .min_by_key(|(_, b)| b.back().map_or(i64::MIN, |b| b.last_offset))
                .map(|(id, _)| *id);
            if let Some(oldest) = oldest {
                self.by_id.remove(&oldest);
            }
        }
        let batches = self.by_id.entry(id).or_default();
        if batches.back().is_some_and(|b| b.epoch < meta.epoch) {
            batches.clear();
        }
        batches.push_back(meta);
        while batches.len() > REMEMBERED_BATCHES {
            batches.pop_front();
        }
    }

    /// The log was cut to end at `end`: batches at or after it are forgotten.
    pub fn truncate(&mut self, end: i64) {
        for batches in self.by_id.values_mut() {
            batches.retain(|b| b.first_offset < end);
        }
        self.by_id.retain(|_, b| !b.is_empty());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(epoch: i16, first_seq: i32, n: i32, first_offset: i64) -> BatchMeta {
        BatchMeta {
            epoch,
            first_seq,
            last_seq: last_seq(first_seq, n),
            first_offset,
            last_offset: first_offset + i64::from(n) - 1,
        }
    }

    #[test]
    fn sequences_continue_retries_are_duplicates_gaps_and_old_epochs_are_refused() {
        let mut p = Producers::new();
        assert_eq!(p.check(7, 0, 0, 2), Ok(Verdict::Append));
        assert_eq!(
            p.check(7, 0, 3, 5),
            Err(SequenceError::UnknownProducer { got: 3 }),
            "an unknown producer starts at 0"
        );
        p.record(7, meta(0, 0, 3, 100));
        assert_eq!(p.check(7, 0, 3, 4), Ok(Verdict::Append));
        p.record(7, meta(0, 3, 2, 103));
        // A retry of either batch: its first offsets, nothing appended.
        assert_eq!(
            p.check(7, 0, 0, 2),
            Ok(Verdict::Duplicate { first_offset: 100, last_offset: 102 })
        );
        assert_eq!(
            p.check(7, 0, 3, 4),
            Ok(Verdict::Duplicate { first_offset: 103, last_offset: 104 })
        );
        // A gap.
        assert_eq!(
            p.check(7, 0, 9, 9),
            Err(SequenceError::OutOfOrderSequence { expected: 5, got: 9 })
        );
        // A new epoch starts at 0; then the old epoch is fenced.
        assert!(p.check(7, 1, 5, 5).is_err());
        assert_eq!(p.check(7, 1, 0, 0), Ok(Verdict::Append));
        p.record(7, meta(1, 0, 1, 105));
        assert_eq!(
            p.check(7, 0, 5, 5),
            Err(SequenceError::InvalidProducerEpoch { current: 1, got: 0 })
        );
        // Other producers are independent.
        assert_eq!(p.check(8, 0, 0, 0), Ok(Verdict::Append));
    }

    #[test]
    fn only_five_batches_are_remembered_and_truncation_forgets() {
        let mut p = Producers::new();
        for i in 0..7 {
            p.record(1, meta(0, i, 1, 10 + i64::from(i)));
        }
        assert!(p.check(1, 0, 0, 0).is_err(), "the oldest batches are forgotten");
        assert_eq!(
            p.check(1, 0, 2, 2),
            Ok(Verdict::Duplicate { first_offset: 12, last_offset: 12 })
        );
        // A truncation to 15 forgets batches 5 and 6: sequence 5 is next again.
        p.truncate(15);
        assert_eq!(p.check(1, 0, 5, 5), Ok(Verdict::Append));
        p.truncate(0);
        assert!(p.is_empty());
    }

    #[test]
    fn sequences_wrap_after_i32_max() {
        assert_eq!(last_seq(i32::MAX - 1, 3), 0);
        let mut p = Producers::new();
        p.record(
            1,
            BatchMeta {
                epoch: 0,
                first_seq: i32::MAX - 1,
                last_seq: i32::MAX,
                first_offset: 0,
                last_offset: 1,
            },
        );
        assert_eq!(p.check(1, 0, 0, 4), Ok(Verdict::Append));
    }
}
