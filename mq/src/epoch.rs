//! The leader-epoch cache of a partition (Kafka's `leader-epoch-checkpoint`): for each leader
//! epoch that appended to this log, the offset of its first batch.
//!
//! It answers KIP-101's question "where does epoch E end in your log?" ([`EpochCache::end_offset_for`],
//! the `OffsetForLeaderEpoch` answer), which a follower uses after a leader change to truncate
//! exactly the entries the new leader does not have — never by its own high watermark. The file
//! is Kafka's text format:
//!
//! ```text
//! 0              version
//! 2              number of entries
//! 0 0            epoch start-offset
//! 3 1200
//! ```

/// One epoch and where it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochEntry {
    /// Leader epoch.
    pub epoch: i32,
    /// Offset of the first batch appended in this epoch.
    pub start_offset: i64,
}

/// Why a checkpoint file cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    /// Not the text format above.
    #[error("leader-epoch checkpoint line {line}: {what}")]
    Format {
        /// 1-based line.
        line: usize,
        /// What was wrong.
        what: &'static str,
    },
}

/// Epoch -> start offset, epochs and offsets increasing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EpochCache {
    entries: Vec<EpochEntry>,
}

/// `OffsetForLeaderEpoch`'s answer when the epoch is unknown.
pub const UNDEFINED_EPOCH: i32 = -1;
/// `OffsetForLeaderEpoch`'s offset when the epoch is unknown.
pub const UNDEFINED_OFFSET: i64 = -1;

impl EpochCache {
    /// The entries, oldest first.
    pub fn entries(&self) -> &[EpochEntry] {
        &self.entries
    }

    /// The newest epoch, if any batch was appended with one.
    pub fn latest_epoch(&self) -> Option<i32> {
        self.entries.last().map(|e| e.epoch)
    }

    /// Records that `epoch` starts at `start_offset`. Repeating the latest epoch does nothing;
    /// entries that conflict (an epoch not older, or a start not earlier) are replaced — they can
    /// only be left from a log tail that was truncated.
    pub fn assign(&mut self, epoch: i32, start_offset: i64) -> bool {
        if let Some(last) = self.entries.last() {
            if last.epoch == epoch && last.start_offset <= start_offset {
                return false;
            }
        }
        self.entries.retain(|e| e.epoch < epoch && e.start_offset < start_offset);
        self.entries.push(EpochEntry { epoch, start_offset });
        true
    }

    /// The log was truncated to end at `end_offset` (exclusive): epochs that start at or after
    /// it are gone.
    pub fn truncate_from_end(&mut self, end_offset: i64) {
        self.entries.retain(|e| e.start_offset < end_offset);
    }

    /// The log now starts at `start_offset` (retention): older epochs go, and the epoch that
    /// covers the new start begins there.
    pub fn truncate_from_start(&mut self, start_offset: i64) {
        let keep_from =
            self.entries.partition_point(|e| e.start_offset <= start_offset).saturating_sub(1);
        self.entries.drain(..keep_from);
        if let Some(first) = self.entries.first_mut() {
            if first.start_offset < start_offset {
                first.start_offset = start_offset;
            }
        }
    }

    /// KIP-101/KIP-279: the largest epoch at or below `requested` and the offset where it ends
    /// (the start of the next epoch, or `log_end` for the latest). `(UNDEFINED_EPOCH,
    /// UNDEFINED_OFFSET)` when `requested` is newer than every epoch here or undefined.
    pub fn end_offset_for(&self, requested: i32, log_end: i64) -> (i32, i64) {
        if requested == UNDEFINED_EPOCH {
            return (UNDEFINED_EPOCH, UNDEFINED_OFFSET);
        }
        if self.latest_epoch() == Some(requested) {
            return (requested, log_end);
        }
        let higher = self.entries.iter().find(|e| e.epoch > requested);
        let Some(higher) = higher else {
            return (UNDEFINED_EPOCH, UNDEFINED_OFFSET);
        };
        match self.entries.iter().rev().find(|e| e.epoch <= requested) {
            Some(floor) => (floor.epoch, higher.start_offset),
            None => (requested, higher.start_offset),
        }
    }

    /// The checkpoint file's text.
    pub fn encode(&self) -> String {
        let mut s = format!("0\n{}\n", self.entries.len());
        for e in &self.entries {
            s.push_str(&format!("{} {}\n", e.epoch, e.start_offset));
        }
        s
    }

    /// Parses a checkpoint file; refuses anything not exactly well formed (then the caller
    /// rebuilds the cache from the log's batch headers).
    pub fn decode(bytes: &[u8]) -> Result<EpochCache, CheckpointError> {
        let bad = |line, what| CheckpointError::Format { line, what };
        let text = std::str::from_utf8(bytes).map_err(|_| bad(1, "not UTF-8"))?;
        let mut lines = text.lines();
        if lines.next() != Some("0") {
            return Err(bad(1, "version is not 0"));
        }
        let count: usize = lines
            .next()
            .and_then(|l| l.parse().ok())
            .ok_or(bad(2, "entry count is not a number"))?;
        let mut cache = EpochCache::default();
        for i in 0..count {
            let line = i + 3;
            let l = lines.next().ok_or(bad(line, "fewer entries than counted"))?;
            let mut parts = l.split(' ');
            let epoch: i32 = parts
                .next()
                .and_then(|p| p.parse().ok())
                .ok_or(bad(line, "epoch is not a number"))?;
            let start_offset: i64 = parts
                .next()
                .and_then(|p| p.parse().ok())
                .ok_or(bad(line, "start offset is not a number"))?;
            if parts.next().is_some() {
                return Err(bad(line, "more than two fields"));
            }
            if epoch < 0 || start_offset < 0 {
                return Err(bad(line, "negative epoch or offset"));
            }
            if let Some(p) = cache.entries.last() {
                if epoch <= p.epoch || start_offset < p.start_offset {
                    return Err(bad(line, "entries out of order"));
                }
            }
            cache.entries.push(EpochEntry { epoch, start_offset });
        }
        if lines.next().is_some() {
            return Err(bad(count + 3, "more entries than counted"));
        }
        Ok(cache)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(es: &[(i32, i64)]) -> EpochCache {
        let mut c = EpochCache::default();
        for &(e, o) in es {
            c.assign(e, o);
        }
        c
    }

    #[test]
    fn end_offsets_follow_kafka() {
        let c = cache(&[(1, 0), (3, 100), (4, 250)]);
        assert_eq!(c.end_offset_for(4, 300), (4, 300));
        assert_eq!(c.end_offset_for(3, 300), (3, 250));
        // Epoch 2 never appended here: the floor epoch 1 ends where 3 starts (KIP-279).
        assert_eq!(c.end_offset_for(2, 300), (1, 100));
        assert_eq!(c.end_offset_for(0, 300), (0, 0));
        assert_eq!(c.end_offset_for(5, 300), (UNDEFINED_EPOCH, UNDEFINED_OFFSET));
        assert_eq!(c.end_offset_for(UNDEFINED_EPOCH, 300), (UNDEFINED_EPOCH, UNDEFINED_OFFSET));
    }

    #[test]
    fn truncation_and_conflicts() {
        let mut c = cache(&[(1, 0), (3, 100), (4, 250)]);
        assert!(!c.assign(4, 260));
        c.truncate_from_end(250);
        assert_eq!(c.latest_epoch(), Some(3));
        c.truncate_from_end(100);
        assert_eq!(c.entries(), &[EpochEntry { epoch: 1, start_offset: 0 }]);
        // A stale higher entry is replaced by a new assignment at an earlier offset.
        let mut c = cache(&[(1, 0), (5, 100)]);
        c.assign(6, 50);
        assert_eq!(c.entries().len(), 2);
        assert_eq!(c.latest_epoch(), Some(6));
        let mut c = cache(&[(1, 0), (3, 100), (4, 250)]);
        c.truncate_from_start(120);
        assert_eq!(c.entries()[0], EpochEntry { epoch: 3, start_offset: 120 });
        assert_eq!(c.entries().len(), 2);
    }

    #[test]
    fn checkpoint_round_trip_and_refusals() {
        let c = cache(&[(1, 0), (3, 100)]);
        assert_eq!(EpochCache::decode(c.encode().as_bytes()).unwrap(), c);
        for bad in [
            "",
            "1\n0\n",
            "0\n2\n1 0\n",
            "0\n1\n1 0\n2 5\n",
            "0\n2\n3 0\n1 5\n",
            "0\n1\n1 -4\n",
            "0\n1\n1 2 3\n",
            "0\nx\n",
        ] {
            assert!(EpochCache::decode(bad.as_bytes()).is_err(), "{bad:?} accepted");
        }
        assert_eq!(EpochCache::decode(b"0\n0\n").unwrap(), EpochCache::default());
    }
}
