//! A partition's log: a directory of segments, the leader-epoch checkpoint, and the rules for
//! appending, reading, truncating, rolling and retention. Time comes in as arguments (`now_ms`);
//! the caller decides when to flush (the durability mode).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::batch::{self, BatchError, DEFAULT_MAX_BATCH_BYTES};
use crate::epoch::EpochCache;
use crate::segment::{HeaderAt, Segment};

/// Name of the leader-epoch checkpoint file.
pub const EPOCH_CHECKPOINT: &str = "leader-epoch-checkpoint";

/// Segment and retention settings of one log (Kafka's names in brackets).
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// Roll to a new segment past this size [`segment.bytes`, 1 GiB]. At most 2 GiB (positions
    /// in the index are 32-bit).
    pub segment_bytes: u64,
    /// Roll when the active segment's first batch is older than this [`segment.ms`, 7 days].
    pub segment_ms: Option<i64>,
    /// Bytes between index entries [`index.interval.bytes`, 4096].
    pub index_interval_bytes: u64,
    /// Delete the oldest closed segments while the log is larger than this
    /// [`retention.bytes`, unlimited].
    pub retention_bytes: Option<u64>,
    /// Delete closed segments whose newest record is older than this [`retention.ms`, 7 days].
    pub retention_ms: Option<i64>,
    /// Largest batch accepted [`message.max.bytes`, 1 MiB].
    pub max_batch_bytes: usize,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 1 << 30,
            segment_ms: Some(7 * 24 * 3600 * 1000),
            index_interval_bytes: 4096,
            retention_bytes: None,
            retention_ms: Some(7 * 24 * 3600 * 1000),
            max_batch_bytes: DEFAULT_MAX_BATCH_BYTES,
        }
    }
}

/// What can go wrong with a log operation.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The file system failed (the log is unchanged).
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: io::Error,
    },
    /// A batch in a request is not valid (nothing was appended).
    #[error("batch {index} of the request: {error}")]
    Batch {
        /// Which batch (0-based).
        index: usize,
        /// Why.
        error: BatchError,
    },
    /// A producer batch must hold as many records as its offsets span, and at least one.
    #[error("batch {index}: {count} records for last offset delta {last_offset_delta}")]
    RecordCount {
        /// Which batch.
        index: usize,
        /// `recordCount`.
        count: i32,
        /// `lastOffsetDelta`.
        last_offset_delta: i32,
    },
    /// Producers may not write control batches.
    #[error("batch {0} is a control batch; only the log itself writes those")]
    Control(usize),
    /// An empty append.
    #[error("no batches to append")]
    Empty,
    /// A replicated batch does not continue the log.
    #[error("batch at offset {got} does not follow the log end {expected}")]
    NotContiguous {
        /// The log end.
        expected: i64,
        /// The batch's base offset.
        got: i64,
    },
    /// A replicated batch's leader epoch is older than one already in the log.
    #[error("batch of leader epoch {got} after epoch {latest}")]
    EpochRegressed {
        /// Newest epoch in the log.
        latest: i32,
        /// The batch's.
        got: i32,
    },
    /// A read outside `[log start, log end]`.
    #[error("offset {offset} is outside the log [{start}, {end}]")]
    OffsetOutOfRange {
        /// Requested.
        offset: i64,
        /// Log start offset.
        start: i64,
        /// Log end offset.
        end: i64,
    },
    /// A stored batch failed its check on read: refused rather than served.
    #[error("stored batch at offset {offset} in segment {segment} is damaged: {error}")]
    Corrupt {
        /// Offset being read.
        offset: i64,
        /// The segment's base offset.
        segment: i64,
        /// Why.
        error: BatchError,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> LogError {
    let what = what.into();
    move |source| LogError::Io { what, source }
}

/// What opening a log found and repaired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Segments opened.
    pub segments: usize,
    /// Bytes cut from the end (a torn or damaged tail).
    pub truncated_bytes: u64,
    /// Segments removed because an earlier one was damaged.
    pub removed_segments: usize,
    /// Segments whose indexes were rebuilt from the log.
    pub rebuilt_indexes: usize,
    /// The leader-epoch checkpoint was missing or damaged and rebuilt from batch headers.
    pub rebuilt_epochs: bool,
    /// What was damaged, if anything.
    pub damage: Option<String>,
}

/// The result of an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    /// Offset of the first record appended.
    pub base_offset: i64,
    /// Offset of the last record appended.
    pub last_offset: i64,
    /// Largest timestamp appended.
    pub max_timestamp: i64,
    /// Batches appended.
    pub batches: usize,
    /// Bytes appended.
    pub bytes: usize,
}

/// Whole batches read from the log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadResult {
    /// The batches' bytes, as stored (the first may start before the offset asked for).
    pub bytes: Vec<u8>,
    /// Offset after the last batch returned (where the next read continues).
    pub next_offset: i64,
}

/// One partition's log.
#[derive(Debug)]
pub struct Log {
    dir: PathBuf,
    config: LogConfig,
    segments: BTreeMap<i64, Segment>,
    epochs: EpochCache,
    epochs_dirty: bool,
}

fn checked_config(mut c: LogConfig) -> LogConfig {
    c.segment_bytes = c.segment_bytes.clamp(1, i32::MAX as u64);
    c.max_batch_bytes = c.max_batch_bytes.clamp(batch::HEADER_LEN, i32::MAX as usize);
    c
}

impl Log {
    /// Opens the log in `dir` (creating it, empty from offset 0, if it does not exist).
    /// The last segment is read whole and cut after its last good batch; closed segments are
    /// trusted with their index files when those are sound and rescanned otherwise.
    pub fn open(dir: &Path, config: LogConfig) -> Result<(Log, Recovery), LogError> {
        let config = checked_config(config);
        fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
        let mut bases = Vec::new();
        for entry in fs::read_dir(dir).map_err(io_err(format!("listing {}", dir.display())))? {
            let entry = entry.map_err(io_err("listing the log directory"))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(stem) = name.strip_suffix(".log") {
                if stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit()) {
                    if let Ok(base) = stem.parse::<i64>() {
                        bases.push(base);
                    }
                }
            }
        }
        bases.sort_unstable();
        let mut rec = Recovery::default();
        let checkpoint =
            fs::read(dir.join(EPOCH_CHECKPOINT)).ok().and_then(|b| EpochCache::decode(&b).ok());
        rec.rebuilt_epochs = checkpoint.is_none() && !bases.is_empty();
        let mut epochs = checkpoint.unwrap_or_default();
        let rebuild_epochs = rec.rebuilt_epochs;
        let mut segments = BTreeMap::new();
        let mut i = 0;
        while i < bases.len() {
            let base = bases[i];
            let last = i + 1 == bases.len();
            let next = bases.get(i + 1).copied();
            let mut note = |h: &HeaderAt| {
                if (rebuild_epochs || last)
                    && epochs.latest_epoch().is_none_or(|e| h.leader_epoch > e)
                    && h.leader_epoch >= 0
                {
                    epochs.assign(h.leader_epoch, h.base_offset);
                }
            };
            let (mut seg, end, rebuilt) = Segment::open(
                dir,
                base,
                last || rebuild_epochs,
                next,
                config.index_interval_bytes,
                config.max_batch_bytes,
                &mut note,
            )
            .map_err(io_err(format!("opening segment {base}")))?;
            rec.segments += 1;
            if rebuilt {
                rec.rebuilt_indexes += 1;
            }
            let bad_gap = !last && next.is_some_and(|n| seg.next_offset != n) && rebuilt;
            if end.damage.is_some() || end.valid_len < seg.size || bad_gap {
                rec.damage = Some(match end.damage {
                    Some(d) => format!("segment {base}: {d}"),
                    None => format!(
                        "segment {base} ends at offset {} but the next starts at {}",
                        seg.next_offset,
                        next.unwrap_or(-1)
                    ),
                });
                rec.truncated_bytes += seg.size - end.valid_len;
                seg.truncate(end.valid_len, config.index_interval_bytes, config.max_batch_bytes)
                    .map_err(io_err(format!("truncating segment {base}")))?;
                // Everything after a damaged batch goes (newest first): a log has no holes.
                for &later in bases[i + 1..].iter().rev() {
                    let (l, x, t) = crate::segment::paths(dir, later);
                    for p in [x, t, l] {
                        let _ = fs::remove_file(p);
                    }
                    rec.removed_segments += 1;
                }
                segments.insert(base, seg);
                break;
            }
            segments.insert(base, seg);
            i += 1;
        }
        // Remove index files whose log is gone (a crash in the middle of deleting a segment).
        if let Ok(rd) = fs::read_dir(dir) {
            for entry in rd.flatten() {
                let name = entry.file_name();
                let Some(name) = name.to_str() else { continue };
                let stem = name.strip_suffix(".index").or_else(|| name.strip_suffix(".timeindex"));
                if let Some(stem) = stem {
                    if stem.parse::<i64>().is_ok_and(|b| !segments.contains_key(&b)) {
                        let _ = fs::remove_file(entry.path());
                    }
                }
            }
        }
        if segments.is_empty() {
            segments
                .insert(0, Segment::create(dir, 0).map_err(io_err("creating the first segment"))?);
        }
        let mut log = Log { dir: dir.to_path_buf(), config, segments, epochs, epochs_dirty: true };
        let end = log.end_offset();
        let start = log.start_offset();
        log.epochs.truncate_from_end(end);
        log.epochs.truncate_from_start(start);
        log.write_epochs()?;
        Ok((log, rec))
    }

    /// The log's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Its settings.
    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    /// The first offset still in the log.
    pub fn start_offset(&self) -> i64 {
        self.segments.keys().next().copied().unwrap_or(0)
    }

    /// The offset the next record will get (log end offset).
    pub fn end_offset(&self) -> i64 {
        self.active().next_offset
    }

    /// Bytes in all segments.
    pub fn size_bytes(&self) -> u64 {
        self.segments.values().map(|s| s.size).sum()
    }

    /// Number of segments.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// The leader-epoch cache.
    pub fn epochs(&self) -> &EpochCache {
        &self.epochs
    }

    /// KIP-101/KIP-279: where `epoch` ends in this log (see [`EpochCache::end_offset_for`]).
    pub fn end_offset_for_epoch(&self, epoch: i32) -> (i32, i64) {
        self.epochs.end_offset_for(epoch, self.end_offset())
    }

    /// Base offset of the segment before the active one (of the active one if it is the only
    /// one): the newest batches, at least a whole segment of them.
    pub fn recent_base(&self) -> i64 {
        self.segments.keys().rev().nth(1).or(self.segments.keys().next_back()).copied().unwrap_or(0)
    }

    fn active(&self) -> &Segment {
        self.segments.values().next_back().expect("a log always has a segment")
    }

    fn active_mut(&mut self) -> &mut Segment {
        self.segments.values_mut().next_back().expect("a log always has a segment")
    }

    /// Records that `epoch` starts at the log end: a new leader does this before it appends
    /// (so `OffsetForLeaderEpoch` answers for it at once).
    pub fn begin_epoch(&mut self, epoch: i32) -> Result<(), LogError> {
        let end = self.end_offset();
        if self.epochs.latest_epoch().is_none_or(|e| epoch > e) {
            self.epochs.assign(epoch, end);
            self.epochs_dirty = true;
            self.write_epochs()?;
        }
        Ok(())
    }

    /// Appends producer batches as the leader of `epoch`: each is checked (length, magic, CRC,
    /// record count, no control batches), then given its offsets and the epoch. All or nothing.
    pub fn append_as_leader(
        &mut self,
        bytes: &mut [u8],
        epoch: i32,
        now_ms: i64,
    ) -> Result<AppendInfo, LogError> {
        let mut spans = Vec::new();
        {
            let mut at = 0usize;
            for (index, view) in batch::Batches::new(bytes, self.config.max_batch_bytes).enumerate()
            {
                let view = view.map_err(|error| LogError::Batch { index, error })?;
                if view.is_control() {
                    return Err(LogError::Control(index));
                }
                let (count, delta) = (view.record_count(), view.last_offset_delta());
                if count < 1 || i64::from(count) != i64::from(delta) + 1 {
                    return Err(LogError::RecordCount { index, count, last_offset_delta: delta });
                }
                spans.push((at, view.len(), delta));
                at += view.len();
            }
        }
        if spans.is_empty() {
            return Err(LogError::Empty);
        }
        self.begin_epoch(epoch)?;
        let mut next = self.end_offset();
        for &(at, len, delta) in &spans {
            let b = &mut bytes[at..at + len];
            batch::set_base_offset(b, next);
            batch::set_leader_epoch(b, epoch);
            next += i64::from(delta) + 1;
        }
        self.write(bytes, spans.len(), now_ms)
    }

    /// Appends batches fetched from the leader, offsets and epochs as they are. They must
    /// continue the log exactly and never go back in epoch.
    pub fn append_as_follower(
        &mut self,
        bytes: &[u8],
        now_ms: i64,
    ) -> Result<AppendInfo, LogError> {
        let mut expected = self.end_offset();
        let mut latest = self.epochs.latest_epoch();
        let mut new_epochs = Vec::new();
        let mut n = 0;
        for (index, view) in batch::Batches::new(bytes, self.config.max_batch_bytes).enumerate() {
            let view = view.map_err(|error| LogError::Batch { index, error })?;
            if view.base_offset() != expected {
                return Err(LogError::NotContiguous { expected, got: view.base_offset() });
            }
            let e = view.leader_epoch();
            if let Some(l) = latest {
                if e < l {
                    return Err(LogError::EpochRegressed { latest: l, got: e });
                }
            }
            if latest != Some(e) {
                new_epochs.push((e, view.base_offset()));
                latest = Some(e);
            }
            expected = view.last_offset() + 1;
            n += 1;
        }
        if n == 0 {
            return Err(LogError::Empty);
        }
        let info = self.write(bytes, n, now_ms)?;
        if !new_epochs.is_empty() {
            for (e, o) in new_epochs {
                self.epochs.assign(e, o);
            }
            self.epochs_dirty = true;
            self.write_epochs()?;
        }
        Ok(info)
    }

    fn write(&mut self, bytes: &[u8], batches: usize, now_ms: i64) -> Result<AppendInfo, LogError> {
        let base_offset = self.end_offset();
        let mut last_offset = base_offset;
        let mut max_timestamp = -1;
        // Checked by the append that called this.
        for v in batch::Batches::checked(bytes).flatten() {
            last_offset = v.last_offset();
            max_timestamp = max_timestamp.max(v.max_timestamp());
        }
        self.maybe_roll(bytes.len() as u64, last_offset, now_ms)?;
        let interval = self.config.index_interval_bytes;
        let seg = self.active_mut();
        let base = seg.base;
        seg.append(bytes, interval).map_err(io_err(format!("appending to segment {base}")))?;
        Ok(AppendInfo { base_offset, last_offset, max_timestamp, batches, bytes: bytes.len() })
    }

    fn maybe_roll(&mut self, len: u64, last_offset: i64, now_ms: i64) -> Result<(), LogError> {
        let seg_bytes = self.config.segment_bytes;
        let seg_ms = self.config.segment_ms;
        let a = self.active();
        if a.size == 0 {
            return Ok(());
        }
        let full = a.size + len > seg_bytes;
        let old = seg_ms
            .is_some_and(|ms| a.first_timestamp.is_some_and(|t| now_ms.saturating_sub(t) >= ms));
        let offsets = last_offset - a.base > i64::from(i32::MAX);
        if full || old || offsets {
            self.roll()?;
        }
        Ok(())
    }

    /// Closes the active segment (durably, with its indexes) and starts a new one at the log end.
    pub fn roll(&mut self) -> Result<(), LogError> {
        let end = self.end_offset();
        let seg = self.active_mut();
        if seg.size == 0 {
            return Ok(());
        }
        let base = seg.base;
        seg.seal().map_err(io_err(format!("closing segment {base}")))?;
        let new =
            Segment::create(&self.dir, end).map_err(io_err(format!("creating segment {end}")))?;
        self.segments.insert(end, new);
        sync_dir(&self.dir)?;
        self.write_epochs()
    }

    /// Makes everything appended durable (the `.log` fsynced; indexes and the epoch checkpoint
    /// written).
    pub fn flush(&mut self) -> Result<(), LogError> {
        let seg = self.active_mut();
        let base = seg.base;
        seg.flush().map_err(io_err(format!("flushing segment {base}")))?;
        self.write_epochs()
    }

    /// [`Log::flush`] without waiting for the disk: indexes and the epoch checkpoint are
    /// written here, and the active segment's file comes back (if anything was appended since
    /// the last flush) for the caller to `sync_data` on another thread, so appends and reads
    /// need not wait for an fsync. What was appended is durable once that returns.
    pub fn flush_detached(&mut self) -> Result<Option<File>, LogError> {
        let seg = self.active_mut();
        let base = seg.base;
        let handle = seg.flush_detached().map_err(io_err(format!("flushing segment {base}")))?;
        self.write_epochs()?;
        Ok(handle)
    }

    fn write_epochs(&mut self) -> Result<(), LogError> {
        if !self.epochs_dirty {
            return Ok(());
        }
        let tmp = self.dir.join(format!("{EPOCH_CHECKPOINT}.tmp"));
        let fin = self.dir.join(EPOCH_CHECKPOINT);
        (|| -> io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(self.epochs.encode().as_bytes())?;
            f.sync_all()?;
            fs::rename(&tmp, &fin)
        })()
        .map_err(io_err("writing the leader-epoch checkpoint"))?;
        sync_dir(&self.dir)?;
        self.epochs_dirty = false;
        Ok(())
    }

    /// Reads whole batches starting with the one that holds `offset`, up to `max_bytes` (at
    /// least one batch, however large, as Kafka does), and none at or past `upper` (the high
    /// watermark for consumers, the log end for followers). Every batch's CRC is checked; a
    /// damaged one is refused with [`LogError::Corrupt`].
    pub fn read(&self, offset: i64, max_bytes: usize, upper: i64) -> Result<ReadResult, LogError> {
        let (start, end) = (self.start_offset(), self.end_offset());
        if offset < start || offset > end {
            return Err(LogError::OffsetOutOfRange { offset, start, end });
        }
        let upper = upper.min(end);
        if offset >= upper {
            return Ok(ReadResult { bytes: Vec::new(), next_offset: offset });
        }
        for (&base, seg) in self
            .segments
            .range(..=offset)
            .next_back()
            .into_iter()
            .chain(self.segments.range(offset + 1..))
        {
            let first = seg.find(offset).map_err(io_err(format!("reading segment {base}")))?;
            let Some(first) = first else { continue };
            if first.base_offset >= upper {
                break;
            }
            // One positional read of up to max_bytes, then cut at the last whole batch below
            // `upper`.
            let want = (seg.size - first.position).min((max_bytes as u64).max(first.size)) as usize;
            let mut buf = vec![0u8; want];
            seg.log
                .read_exact_at(&mut buf, first.position)
                .map_err(io_err(format!("reading segment {base}")))?;
            let mut cut = 0usize;
            let mut next_offset = first.base_offset;
            for v in batch::Batches::new(&buf, usize::MAX) {
                let v = match v {
                    Ok(v) => v,
                    Err(BatchError::Truncated { .. }) if cut > 0 => break,
                    Err(error) => {
                        return Err(LogError::Corrupt { offset: next_offset, segment: base, error })
                    }
                };
                if v.base_offset() >= upper {
                    break;
                }
                cut += v.len();
                next_offset = v.last_offset() + 1;
            }
            buf.truncate(cut);
            return Ok(ReadResult { bytes: buf, next_offset });
        }
        Ok(ReadResult { bytes: Vec::new(), next_offset: offset })
    }

    /// The offset of the first record whose timestamp is at or after `ts`, if any (`ListOffsets`
    /// by time, `--from-time`), as Kafka answers it: the time index finds the first batch whose
    /// largest timestamp is at or after `ts`, then the batch's records are looked through. A
    /// batch this build cannot decode (a compression codec it lacks) answers its base offset.
    pub fn offset_for_time(&self, ts: i64) -> Result<Option<i64>, LogError> {
        for (&base, seg) in &self.segments {
            if seg.max_timestamp < ts {
                continue;
            }
            let reading = || format!("reading segment {base}");
            if let Some(h) = seg.find_time(ts).map_err(io_err(reading()))? {
                // The header was read and checked; its size is bounded by the batch limit.
                let mut buf = vec![0u8; h.size as usize];
                seg.log.read_exact_at(&mut buf, h.position).map_err(io_err(reading()))?;
                let first = batch::decode_records(&buf)
                    .ok()
                    .and_then(|records| records.into_iter().find(|r| r.timestamp_ms >= ts))
                    .map(|r| r.offset);
                return Ok(Some(first.unwrap_or(h.base_offset)));
            }
        }
        Ok(None)
    }

    /// Removes every batch at or after `offset` (a follower diverged from its new leader).
    /// A batch that holds `offset` goes whole. Returns the new log end.
    pub fn truncate_to(&mut self, offset: i64) -> Result<i64, LogError> {
        if offset >= self.end_offset() {
            let end = self.end_offset();
            if self.epochs.entries().last().is_some_and(|e| e.start_offset >= end) {
                self.epochs.truncate_from_end(end);
                self.epochs_dirty = true;
                self.write_epochs()?;
            }
            return Ok(end);
        }
        if offset <= self.start_offset() {
            let start = self.start_offset();
            self.reset_to(start)?;
            return Ok(start);
        }
        // Later segments go, newest first.
        let later: Vec<i64> = self.segments.range(offset..).map(|(&b, _)| b).rev().collect();
        for b in later {
            if let Some(seg) = self.segments.remove(&b) {
                seg.delete().map_err(io_err(format!("deleting segment {b}")))?;
            }
        }
        let (interval, max_batch) = (self.config.index_interval_bytes, self.config.max_batch_bytes);
        let seg = self.active_mut();
        let base = seg.base;
        let pos = match seg.find(offset).map_err(io_err(format!("reading segment {base}")))? {
            Some(h) => h.position,
            None => seg.size,
        };
        seg.truncate(pos, interval, max_batch)
            .map_err(io_err(format!("truncating segment {base}")))?;
        let end = self.end_offset();
        self.epochs.truncate_from_end(end);
        self.epochs_dirty = true;
        self.write_epochs()?;
        Ok(end)
    }

    /// Empties the log and restarts it at `offset` (a follower whose log is entirely behind
    /// the leader's start).
    pub fn reset_to(&mut self, offset: i64) -> Result<(), LogError> {
        let all: Vec<i64> = self.segments.keys().rev().copied().collect();
        for b in all {
            if let Some(seg) = self.segments.remove(&b) {
                seg.delete().map_err(io_err(format!("deleting segment {b}")))?;
            }
        }
        let seg = Segment::create(&self.dir, offset)
            .map_err(io_err(format!("creating segment {offset}")))?;
        self.segments.insert(offset, seg);
        sync_dir(&self.dir)?;
        self.epochs = EpochCache::default();
        self.epochs_dirty = true;
        self.write_epochs()
    }

    /// Deletes closed segments past the retention time or beyond the retention size, never one
    /// holding offsets at or above `upper` (the high watermark: nothing unreplicated goes).
    /// Returns the base offsets of the segments deleted.
    pub fn apply_retention(&mut self, now_ms: i64, upper: i64) -> Result<Vec<i64>, LogError> {
        let mut deleted = Vec::new();
        let mut total = self.size_bytes();
        loop {
            if self.segments.len() < 2 {
                break;
            }
            let mut it = self.segments.iter();
            let (&base, seg) = it.next().expect("two segments");
            let (&next_base, _) = it.next().expect("two segments");
            if next_base > upper {
                break;
            }
            let by_time = self.config.retention_ms.is_some_and(|ms| {
                seg.max_timestamp >= 0 && now_ms.saturating_sub(seg.max_timestamp) > ms
            });
            let by_size =
                self.config.retention_bytes.is_some_and(|b| total.saturating_sub(seg.size) >= b);
            if !(by_time || by_size) {
                break;
            }
            let seg = self.segments.remove(&base).expect("present");
            total -= seg.size;
            seg.delete().map_err(io_err(format!("deleting segment {base}")))?;
            deleted.push(base);
        }
        if !deleted.is_empty() {
            let start = self.start_offset();
            self.epochs.truncate_from_start(start);
            self.epochs_dirty = true;
            self.write_epochs()?;
        }
        Ok(deleted)
    }

    /// The header of every batch from `offset` on, for tests and tools (reads headers only).
    pub fn headers_from(&self, offset: i64) -> Result<Vec<(i64, i64, i32)>, LogError> {
        let mut out = Vec::new();
        for (&base, seg) in self
            .segments
            .range(..=offset)
            .next_back()
            .into_iter()
            .chain(self.segments.range(offset + 1..))
        {
            let mut pos = match seg.find(offset).map_err(io_err("reading"))? {
                Some(h) => h.position,
                None => continue,
            };
            while let Some(h) =
                seg.header_at(pos).map_err(io_err(format!("reading segment {base}")))?
            {
                out.push((h.base_offset, h.last_offset, h.leader_epoch));
                pos += h.size;
            }
        }
        Ok(out)
    }
}

fn sync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(format!("syncing {}", dir.display())))
}
