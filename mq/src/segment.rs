//! One segment of a partition's log: `<base offset, 20 digits>.log` with its `.index` and
//! `.timeindex`. Appends go to the end of the `.log` (positional reads elsewhere, so readers
//! never move a cursor); index entries are kept in memory and written out when the segment is
//! flushed or closed.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::batch::{self, BatchError, BatchView, HEADER_LEN};
use crate::index::{self, OffsetEntry, TimeEntry};

/// File name stem of a segment: the base offset as 20 digits, as Kafka names them.
pub fn file_stem(base: i64) -> String {
    format!("{base:020}")
}

/// Paths of a segment's three files.
pub fn paths(dir: &Path, base: i64) -> (PathBuf, PathBuf, PathBuf) {
    let stem = file_stem(base);
    (
        dir.join(format!("{stem}.log")),
        dir.join(format!("{stem}.index")),
        dir.join(format!("{stem}.timeindex")),
    )
}

/// A batch header read back from a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderAt {
    /// Byte position in the `.log`.
    pub position: u64,
    /// Whole batch size.
    pub size: u64,
    /// Base offset.
    pub base_offset: i64,
    /// Last offset.
    pub last_offset: i64,
    /// Largest timestamp.
    pub max_timestamp: i64,
    /// Leader epoch.
    pub leader_epoch: i32,
}

impl HeaderAt {
    /// The header of a parsed batch found at `position`.
    fn of(view: &BatchView<'_>, position: u64) -> HeaderAt {
        HeaderAt {
            position,
            size: view.len() as u64,
            base_offset: view.base_offset(),
            last_offset: view.last_offset(),
            max_timestamp: view.max_timestamp(),
            leader_epoch: view.leader_epoch(),
        }
    }
}

/// What a recovery scan found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanEnd {
    /// Bytes of whole, valid, contiguous batches from the start.
    pub valid_len: u64,
    /// Why the scan stopped before the end of the file, if it did.
    pub damage: Option<String>,
}

#[derive(Debug)]
pub(crate) struct Segment {
    pub base: i64,
    pub log: File,
    pub size: u64,
    pub index: Vec<OffsetEntry>,
    pub time_index: Vec<TimeEntry>,
    /// Entries already in the index files.
    pub index_written: usize,
    pub time_written: usize,
    pub bytes_since_index: u64,
    /// Largest timestamp in the segment, and the base offset of the batch that holds it.
    pub max_timestamp: i64,
    pub max_timestamp_offset: i64,
    /// Timestamp of the first batch (for rolling by time), `None` while empty.
    pub first_timestamp: Option<i64>,
    /// Offset after the last batch.
    pub next_offset: i64,
    /// Appended since the last fsync.
    pub dirty: bool,
    pub dir: PathBuf,
}

impl Segment {
    pub fn create(dir: &Path, base: i64) -> io::Result<Segment> {
        let (log, idx, tidx) = paths(dir, base);
        let file =
            OpenOptions::new().create(true).truncate(true).read(true).write(true).open(&log)?;
        // Index files start empty; stale ones from a segment of the same name go.
        File::create(&idx)?;
        File::create(&tidx)?;
        Ok(Segment::empty(dir, base, file))
    }

    fn empty(dir: &Path, base: i64, log: File) -> Segment {
        Segment {
            base,
            log,
            size: 0,
            index: Vec::new(),
            time_index: Vec::new(),
            index_written: 0,
            time_written: 0,
            bytes_since_index: 0,
            max_timestamp: -1,
            max_timestamp_offset: base,
            first_timestamp: None,
            next_offset: base,
            dirty: false,
            dir: dir.to_path_buf(),
        }
    }

    /// Opens an existing segment. With `verify`, every batch is read and checked (CRC,
    /// contiguity) and the file is cut after the last good one; the indexes are rebuilt from the
    /// scan. Without, the index files are loaded if they are sound, and rebuilt otherwise.
    /// `next_base` is the next segment's base offset, when there is one.
    pub fn open(
        dir: &Path,
        base: i64,
        verify: bool,
        next_base: Option<i64>,
        interval: u64,
        max_batch: usize,
        on_batch: &mut dyn FnMut(&HeaderAt),
    ) -> io::Result<(Segment, ScanEnd, bool)> {
        let (log, idx, tidx) = paths(dir, base);
        let file = OpenOptions::new().read(true).write(true).open(&log)?;
        let len = file.metadata()?.len();
        let mut seg = Segment::empty(dir, base, file);
        seg.size = len;
        if !verify {
            if let (Some(next), Ok(i), Ok(t)) =
                (next_base, std::fs::read(&idx), std::fs::read(&tidx))
            {
                let max_rel = u32::try_from(next - base - 1).unwrap_or(u32::MAX);
                if let (Ok(i), Ok(t)) =
                    (index::decode_offset_index(&i, len), index::decode_time_index(&t, max_rel))
                {
                    if i.last().is_none_or(|e| e.relative_offset <= max_rel) && len > 0 {
                        seg.index_written = i.len();
                        seg.time_written = t.len();
                        seg.index = i;
                        if let Some(last) = t.last() {
                            seg.max_timestamp = last.timestamp;
                            seg.max_timestamp_offset = base + i64::from(last.relative_offset);
                        }
                        seg.time_index = t;
                        seg.next_offset = next;
                        return Ok((seg, ScanEnd { valid_len: len, damage: None }, false));
                    }
                }
            }
        }
        // Scan and rebuild.
        let end = seg.scan(interval, max_batch, on_batch)?;
        Ok((seg, end, true))
    }

    /// Reads every batch from the start, rebuilding the indexes and the segment's summary,
    /// and stops at the first damaged, torn or out-of-sequence batch.
    fn scan(
        &mut self,
        interval: u64,
        max_batch: usize,
        on_batch: &mut dyn FnMut(&HeaderAt),
    ) -> io::Result<ScanEnd> {
        const CHUNK: usize = 8 << 20;
        let len = self.size;
        self.index.clear();
        self.time_index.clear();
        self.bytes_since_index = 0;
        self.max_timestamp = -1;
        self.max_timestamp_offset = self.base;
        self.first_timestamp = None;
        self.next_offset = self.base;
        let mut pos = 0u64;
        let mut buf: Vec<u8> = Vec::new();
        let mut damage = None;
        'outer: while pos < len {
            let want = (len - pos).min(CHUNK.max(max_batch) as u64) as usize;
            buf.resize(want, 0);
            self.log.read_exact_at(&mut buf, pos)?;
            let mut at = 0usize;
            while at < buf.len() {
                match BatchView::parse(&buf[at..], max_batch) {
                    Ok((view, _)) => {
                        if view.base_offset() != self.next_offset {
                            damage = Some(format!(
                                "batch at byte {} has offset {} where {} was expected",
                                pos + at as u64,
                                view.base_offset(),
                                self.next_offset
                            ));
                            pos += at as u64;
                            break 'outer;
                        }
                        let h = HeaderAt::of(&view, pos + at as u64);
                        self.note_batch(&h, interval);
                        on_batch(&h);
                        at += view.len();
                    }
                    Err(BatchError::Truncated { .. })
                        if pos + (at as u64) < len && buf.len() < (len - pos) as usize =>
                    {
                        // The batch continues past this chunk: read again from its start.
                        break;
                    }
                    Err(e) => {
                        damage = Some(format!("batch at byte {}: {e}", pos + at as u64));
                        pos += at as u64;
                        break 'outer;
                    }
                }
            }
            if at == 0 {
                // Not even one batch fits the chunk although more bytes follow: a batch larger
                // than the limit.
                damage = Some(format!("batch at byte {pos} is larger than the chunk"));
                break;
            }
            pos += at as u64;
        }
        Ok(ScanEnd { valid_len: pos.min(len), damage })
    }

    /// Updates the summary and the in-memory indexes for a batch written at `h.position`.
    pub fn note_batch(&mut self, h: &HeaderAt, interval: u64) {
        let rel = (h.base_offset - self.base) as u32;
        if self.bytes_since_index >= interval {
            self.index.push(OffsetEntry { relative_offset: rel, position: h.position as u32 });
            if h.max_timestamp > self.max_timestamp {
                self.time_index
                    .push(TimeEntry { timestamp: h.max_timestamp, relative_offset: rel });
            }
            self.bytes_since_index = 0;
        }
        self.bytes_since_index += h.size;
        if h.max_timestamp > self.max_timestamp {
            self.max_timestamp = h.max_timestamp;
            self.max_timestamp_offset = h.base_offset;
        }
        if self.first_timestamp.is_none() {
            self.first_timestamp = Some(h.max_timestamp);
        }
        self.next_offset = h.last_offset + 1;
    }

    /// Appends whole, already validated batches. On a failed write the file is cut back to
    /// where it was, so a full disk leaves no torn batch behind.
    pub fn append(&mut self, bytes: &[u8], interval: u64) -> io::Result<()> {
        let start = self.size;
        if let Err(e) = self.log.write_all_at(bytes, start) {
            let _ = self.log.set_len(start);
            return Err(e);
        }
        let mut at = 0usize;
        for view in batch::Batches::checked(bytes) {
            let Ok(view) = view else { break };
            let h = HeaderAt::of(&view, start + at as u64);
            self.note_batch(&h, interval);
            at += view.len();
        }
        self.size += bytes.len() as u64;
        self.dirty = true;
        Ok(())
    }

    /// Reads the batch header at `position` (None at the end of the segment).
    pub fn header_at(&self, position: u64) -> io::Result<Option<HeaderAt>> {
        if position >= self.size {
            return Ok(None);
        }
        let mut h = [0u8; HEADER_LEN];
        let n = (self.size - position).min(HEADER_LEN as u64) as usize;
        self.log.read_exact_at(&mut h[..n], position)?;
        let size = batch::batch_size(&h[..n])
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        if n < HEADER_LEN || position + size as u64 > self.size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "batch header past the segment end",
            ));
        }
        let i64_at = |at: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&h[at..at + 8]);
            i64::from_be_bytes(a)
        };
        let base = i64_at(0);
        let delta = i32::from_be_bytes([h[23], h[24], h[25], h[26]]);
        Ok(Some(HeaderAt {
            position,
            size: size as u64,
            base_offset: base,
            last_offset: base.saturating_add(i64::from(delta)),
            max_timestamp: i64_at(35),
            leader_epoch: i32::from_be_bytes([h[12], h[13], h[14], h[15]]),
        }))
    }

    /// The position of the first batch whose last offset is at or after `offset`, with its header.
    pub fn find(&self, offset: i64) -> io::Result<Option<HeaderAt>> {
        let rel = u32::try_from((offset - self.base).max(0)).unwrap_or(u32::MAX);
        let mut pos = index::lookup_offset(&self.index, rel).map_or(0, |e| u64::from(e.position));
        while let Some(h) = self.header_at(pos)? {
            if h.last_offset >= offset {
                return Ok(Some(h));
            }
            pos += h.size;
        }
        Ok(None)
    }

    /// The first batch whose largest timestamp is at or after `ts`.
    pub fn find_time(&self, ts: i64) -> io::Result<Option<HeaderAt>> {
        let mut pos = match index::lookup_time(&self.time_index, ts) {
            Some(e) => self
                .find(self.base + i64::from(e.relative_offset))?
                .map_or(self.size, |h| h.position),
            None => 0,
        };
        while let Some(h) = self.header_at(pos)? {
            if h.max_timestamp >= ts {
                return Ok(Some(h));
            }
            pos += h.size;
        }
        Ok(None)
    }

    /// Cuts the segment at `position` (a batch boundary) and rebuilds its summary by scanning.
    pub fn truncate(&mut self, position: u64, interval: u64, max_batch: usize) -> io::Result<()> {
        self.log.set_len(position)?;
        self.log.sync_all()?;
        self.size = position;
        self.scan(interval, max_batch, &mut |_| {})?;
        // The index files are rewritten whole at the next flush.
        self.index_written = 0;
        self.time_written = 0;
        let (_, idx, tidx) = paths(&self.dir, self.base);
        File::create(idx)?;
        File::create(tidx)?;
        Ok(())
    }

    /// Makes the `.log` durable and writes out index entries not yet in the index files.
    pub fn flush(&mut self) -> io::Result<()> {
        if self.dirty {
            self.log.sync_data()?;
            self.dirty = false;
        }
        self.write_indexes()
    }

    /// Writes out index entries not yet in the index files, and hands back a handle to the
    /// `.log` for the caller to fsync on another thread if anything was appended since the last
    /// flush (the segment counts as flushed from here on: the caller owns that fsync).
    pub fn flush_detached(&mut self) -> io::Result<Option<File>> {
        let handle = if self.dirty { Some(self.log.try_clone()?) } else { None };
        self.dirty = false;
        self.write_indexes()?;
        Ok(handle)
    }

    fn write_indexes(&mut self) -> io::Result<()> {
        let (_, idx, tidx) = paths(&self.dir, self.base);
        if self.index_written < self.index.len() {
            let bytes: Vec<u8> =
                self.index[self.index_written..].iter().flat_map(|e| e.encode()).collect();
            OpenOptions::new().append(true).create(true).open(idx)?.write_all(&bytes)?;
            self.index_written = self.index.len();
        }
        if self.time_written < self.time_index.len() {
            let bytes: Vec<u8> =
                self.time_index[self.time_written..].iter().flat_map(|e| e.encode()).collect();
            OpenOptions::new().append(true).create(true).open(tidx)?.write_all(&bytes)?;
            self.time_written = self.time_index.len();
        }
        Ok(())
    }

    /// Closes the segment for appends: the time index ends with the segment's largest
    /// timestamp (so a restart knows it without a scan), and everything is made durable.
    pub fn seal(&mut self) -> io::Result<()> {
        if self.max_timestamp >= 0
            && self.time_index.last().is_none_or(|e| e.timestamp < self.max_timestamp)
        {
            let rel = (self.max_timestamp_offset - self.base) as u32;
            if self.time_index.last().is_none_or(|e| e.relative_offset < rel) {
                self.time_index
                    .push(TimeEntry { timestamp: self.max_timestamp, relative_offset: rel });
            }
        }
        // Always synced: a detached flush may have marked the log clean before its fsync
        // finished.
        self.log.sync_data()?;
        self.flush()?;
        let (_, idx, tidx) = paths(&self.dir, self.base);
        File::open(idx)?.sync_all()?;
        File::open(tidx)?.sync_all()?;
        Ok(())
    }

    /// Deletes the segment's files (`.log` last, so a crash leaves no log without its name).
    pub fn delete(self) -> io::Result<()> {
        let (log, idx, tidx) = paths(&self.dir, self.base);
        for p in [idx, tidx, log] {
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}
