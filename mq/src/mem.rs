//! The replica's view of its log ([`ReplicaLog`]), implemented by the on-disk [`Log`] and by
//! [`MemLog`], an in-memory log for the simulator that knows which of its batches are durable:
//! a simulated power loss keeps exactly the flushed prefix.

use crate::batch::{self, BatchView};
use crate::epoch::EpochCache;
use crate::log::{AppendInfo, Log, LogError, ReadResult};

/// What the replica state machine needs from a log.
pub trait ReplicaLog {
    /// First offset held.
    fn start_offset(&self) -> i64;
    /// Offset the next record gets.
    fn end_offset(&self) -> i64;
    /// Appends producer batches as leader of `epoch` (see [`Log::append_as_leader`]).
    fn append_as_leader(
        &mut self,
        bytes: &mut [u8],
        epoch: i32,
        now_ms: i64,
    ) -> Result<AppendInfo, LogError>;
    /// Appends replicated batches (see [`Log::append_as_follower`]).
    fn append_as_follower(&mut self, bytes: &[u8], now_ms: i64) -> Result<AppendInfo, LogError>;
    /// Whole batches from `offset` (see [`Log::read`]).
    fn read(&self, offset: i64, max_bytes: usize, upper: i64) -> Result<ReadResult, LogError>;
    /// Removes everything at or after `offset`; returns the new end.
    fn truncate_to(&mut self, offset: i64) -> Result<i64, LogError>;
    /// Empties the log and restarts it at `offset`.
    fn reset_to(&mut self, offset: i64) -> Result<(), LogError>;
    /// Records that `epoch` starts at the log end.
    fn begin_epoch(&mut self, epoch: i32) -> Result<(), LogError>;
    /// KIP-101's answer for `epoch`.
    fn end_offset_for_epoch(&self, epoch: i32) -> (i32, i64);
    /// Newest epoch in the log.
    fn latest_epoch(&self) -> Option<i32>;
    /// Where the recent part of the log starts (the segment before the active one), which a
    /// replica scans to rebuild its idempotent producers' state on start and after a
    /// truncation.
    fn recent_start(&self) -> i64 {
        self.start_offset()
    }
    /// Makes everything appended durable.
    fn flush(&mut self) -> Result<(), LogError>;
    /// What completes a detached flush, away from the replica's task.
    type Detached;
    /// Starts making everything appended so far durable without waiting for the disk: the
    /// caller completes it with the handle it gets back (none if nothing needs syncing), and
    /// until then what it covers may not survive a power loss. Appends may go on meanwhile;
    /// they are not covered. One at a time.
    fn flush_detached(&mut self) -> Result<Option<Self::Detached>, LogError>;
}

impl ReplicaLog for Log {
    fn start_offset(&self) -> i64 {
        Log::start_offset(self)
    }
    fn end_offset(&self) -> i64 {
        Log::end_offset(self)
    }
    fn append_as_leader(
        &mut self,
        bytes: &mut [u8],
        epoch: i32,
        now_ms: i64,
    ) -> Result<AppendInfo, LogError> {
        Log::append_as_leader(self, bytes, epoch, now_ms)
    }
    fn append_as_follower(&mut self, bytes: &[u8], now_ms: i64) -> Result<AppendInfo, LogError> {
        Log::append_as_follower(self, bytes, now_ms)
    }
    fn read(&self, offset: i64, max_bytes: usize, upper: i64) -> Result<ReadResult, LogError> {
        Log::read(self, offset, max_bytes, upper)
    }
    fn truncate_to(&mut self, offset: i64) -> Result<i64, LogError> {
        Log::truncate_to(self, offset)
    }
    fn reset_to(&mut self, offset: i64) -> Result<(), LogError> {
        Log::reset_to(self, offset)
    }
    fn begin_epoch(&mut self, epoch: i32) -> Result<(), LogError> {
        Log::begin_epoch(self, epoch)
    }
    fn end_offset_for_epoch(&self, epoch: i32) -> (i32, i64) {
        Log::end_offset_for_epoch(self, epoch)
    }
    fn latest_epoch(&self) -> Option<i32> {
        self.epochs().latest_epoch()
    }
    fn recent_start(&self) -> i64 {
        Log::recent_base(self).max(Log::start_offset(self))
    }
    fn flush(&mut self) -> Result<(), LogError> {
        Log::flush(self)
    }
    /// The active segment's file, to `sync_data` on a blocking thread.
    type Detached = std::fs::File;
    fn flush_detached(&mut self) -> Result<Option<std::fs::File>, LogError> {
        Log::flush_detached(self)
    }
}

/// An in-memory log with the on-disk log's rules, for the simulator.
#[derive(Debug, Clone, Default)]
pub struct MemLog {
    start: i64,
    /// (base offset, last offset, bytes) per batch.
    batches: Vec<(i64, i64, Vec<u8>)>,
    epochs: EpochCache,
    /// Offsets below this were flushed (what survives a power loss). Truncations and epoch
    /// changes are durable at once, as the on-disk log makes them.
    durable_end: i64,
    /// The end a detached flush in flight makes durable when it completes (lowered by a
    /// truncation meanwhile: what a later append adds past the cut is not covered).
    syncing: Option<i64>,
}

/// A [`MemLog`]'s detached flush: complete it with [`MemLog::complete_flush`].
#[derive(Debug)]
pub struct MemFlush;

impl MemLog {
    /// An empty log.
    pub fn new() -> MemLog {
        MemLog::default()
    }

    /// What a power loss leaves: the log as of its last flush.
    pub fn after_power_loss(&self) -> MemLog {
        let mut copy = self.clone();
        copy.syncing = None;
        let i = copy.batches.partition_point(|b| b.1 < copy.durable_end);
        copy.batches.truncate(i);
        let end = copy.end_offset();
        copy.epochs.truncate_from_end(end);
        copy
    }

    /// The detached flush in flight reached the disk (see [`ReplicaLog::flush_detached`]).
    pub fn complete_flush(&mut self, _flush: MemFlush) {
        if let Some(end) = self.syncing.take() {
            self.durable_end = self.durable_end.max(end);
        }
    }

    fn check(&self, bytes: &[u8]) -> Result<Vec<(i64, i64, i32, usize)>, LogError> {
        let mut out = Vec::new();
        let mut at = 0;
        for (index, v) in batch::Batches::new(bytes, batch::DEFAULT_MAX_BATCH_BYTES).enumerate() {
            let v: BatchView<'_> = v.map_err(|error| LogError::Batch { index, error })?;
            out.push((v.base_offset(), v.last_offset(), v.leader_epoch(), at));
            at += v.len();
        }
        if out.is_empty() {
            return Err(LogError::Empty);
        }
        Ok(out)
    }
}

impl ReplicaLog for MemLog {
    fn start_offset(&self) -> i64 {
        self.start
    }
    fn end_offset(&self) -> i64 {
        self.batches.last().map_or(self.start, |b| b.1 + 1)
    }
    fn append_as_leader(
        &mut self,
        bytes: &mut [u8],
        epoch: i32,
        _now_ms: i64,
    ) -> Result<AppendInfo, LogError> {
        let spans = self.check(bytes)?;
        for (index, (_, _, _, at)) in spans.iter().enumerate() {
            let v = BatchView::parse(&bytes[*at..], usize::MAX).expect("checked").0;
            if v.is_control() {
                return Err(LogError::Control(index));
            }
            if v.record_count() < 1
                || i64::from(v.record_count()) != i64::from(v.last_offset_delta()) + 1
            {
                return Err(LogError::RecordCount {
                    index,
                    count: v.record_count(),
                    last_offset_delta: v.last_offset_delta(),
                });
            }
        }
        self.begin_epoch(epoch)?;
        let base_offset = self.end_offset();
        let mut next = base_offset;
        let mut max_timestamp = -1;
        let mut ends: Vec<usize> = spans.iter().map(|s| s.3).skip(1).collect();
        ends.push(bytes.len());
        for ((_, _, _, at), end) in spans.iter().zip(ends) {
            let b = &mut bytes[*at..end];
            batch::set_base_offset(b, next);
            batch::set_leader_epoch(b, epoch);
            let v = BatchView::parse(b, usize::MAX).expect("checked").0;
            max_timestamp = max_timestamp.max(v.max_timestamp());
            self.batches.push((next, v.last_offset(), b.to_vec()));
            next = v.last_offset() + 1;
        }
        Ok(AppendInfo {
            base_offset,
            last_offset: next - 1,
            max_timestamp,
            batches: spans.len(),
            bytes: bytes.len(),
        })
    }
    fn append_as_follower(&mut self, bytes: &[u8], _now_ms: i64) -> Result<AppendInfo, LogError> {
        let spans = self.check(bytes)?;
        let mut expected = self.end_offset();
        let mut latest = self.epochs.latest_epoch();
        for &(base, last, epoch, _) in &spans {
            if base != expected {
                return Err(LogError::NotContiguous { expected, got: base });
            }
            if let Some(l) = latest {
                if epoch < l {
                    return Err(LogError::EpochRegressed { latest: l, got: epoch });
                }
            }
            latest = Some(epoch);
            expected = last + 1;
        }
        let base_offset = self.end_offset();
        let mut ends: Vec<usize> = spans.iter().map(|s| s.3).skip(1).collect();
        ends.push(bytes.len());
        for (&(base, last, epoch, at), end) in spans.iter().zip(ends) {
            if self.epochs.latest_epoch() != Some(epoch) {
                self.epochs.assign(epoch, base);
            }
            self.batches.push((base, last, bytes[at..end].to_vec()));
        }
        Ok(AppendInfo {
            base_offset,
            last_offset: expected - 1,
            max_timestamp: -1,
            batches: spans.len(),
            bytes: bytes.len(),
        })
    }
    fn read(&self, offset: i64, max_bytes: usize, upper: i64) -> Result<ReadResult, LogError> {
        let (start, end) = (self.start, self.end_offset());
        if offset < start || offset > end {
            return Err(LogError::OffsetOutOfRange { offset, start, end });
        }
        let i = self.batches.partition_point(|b| b.1 < offset);
        let mut out = Vec::new();
        let mut next_offset = offset;
        for (base, last, bytes) in &self.batches[i..] {
            if *base >= upper || (!out.is_empty() && out.len() + bytes.len() > max_bytes) {
                break;
            }
            out.extend_from_slice(bytes);
            next_offset = last + 1;
        }
        Ok(ReadResult { bytes: out, next_offset })
    }
    fn truncate_to(&mut self, offset: i64) -> Result<i64, LogError> {
        if offset <= self.start {
            let s = self.start;
            self.reset_to(s)?;
            return Ok(s);
        }
        let i = self.batches.partition_point(|b| b.1 < offset);
        self.batches.truncate(i);
        let end = self.end_offset();
        self.epochs.truncate_from_end(end);
        self.durable_end = self.durable_end.min(end);
        self.syncing = self.syncing.map(|s| s.min(end));
        Ok(end)
    }
    fn reset_to(&mut self, offset: i64) -> Result<(), LogError> {
        self.batches.clear();
        self.start = offset;
        self.durable_end = offset;
        self.syncing = self.syncing.map(|_| offset);
        self.epochs = EpochCache::default();
        Ok(())
    }
    fn begin_epoch(&mut self, epoch: i32) -> Result<(), LogError> {
        if self.epochs.latest_epoch().is_none_or(|e| epoch > e) {
            let end = self.end_offset();
            self.epochs.assign(epoch, end);
        }
        Ok(())
    }
    fn end_offset_for_epoch(&self, epoch: i32) -> (i32, i64) {
        self.epochs.end_offset_for(epoch, self.end_offset())
    }
    fn latest_epoch(&self) -> Option<i32> {
        self.epochs.latest_epoch()
    }
    fn flush(&mut self) -> Result<(), LogError> {
        self.durable_end = self.end_offset();
        Ok(())
    }
    type Detached = MemFlush;
    fn flush_detached(&mut self) -> Result<Option<MemFlush>, LogError> {
        if self.end_offset() <= self.durable_end {
            return Ok(None);
        }
        self.syncing = Some(self.end_offset());
        Ok(Some(MemFlush))
    }
}
