//! The sparse indexes of a segment: `.index` (offset -> file position) and `.timeindex`
//! (timestamp -> offset), in Kafka's on-disk layout.
//!
//! `.index`: 8-byte entries, the batch's base offset relative to the segment's base offset
//! (u32, big-endian) and the batch's byte position in the `.log` (u32). An entry is added when
//! at least `index_interval_bytes` were appended since the previous one, so a lookup reads at
//! most that many bytes past the entry it finds.
//!
//! `.timeindex`: 12-byte entries, the largest timestamp seen so far in the segment (i64) and the
//! relative base offset of the batch that raised it (u32). Added at the same interval, and only
//! when the largest timestamp grew, so both columns only increase.
//!
//! Decoding checks everything a damaged or foreign file could get wrong (length, order, range);
//! a file that fails is rebuilt from the `.log`, never trusted.

/// One `.index` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetEntry {
    /// Batch base offset minus the segment's base offset.
    pub relative_offset: u32,
    /// Byte position of the batch in the `.log`.
    pub position: u32,
}

/// One `.timeindex` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeEntry {
    /// Largest timestamp in the segment up to and including this batch.
    pub timestamp: i64,
    /// Relative base offset of the batch.
    pub relative_offset: u32,
}

/// Why an index file is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IndexError {
    /// Not a whole number of entries.
    #[error("index file of {0} bytes is not a whole number of entries")]
    Length(usize),
    /// Entries not in increasing order.
    #[error("index entry {0} is out of order")]
    Order(usize),
    /// An entry points past the end of the log or its offsets.
    #[error("index entry {0} points outside the segment")]
    Range(usize),
}

/// Size of an `.index` entry.
pub const OFFSET_ENTRY_LEN: usize = 8;
/// Size of a `.timeindex` entry.
pub const TIME_ENTRY_LEN: usize = 12;

impl OffsetEntry {
    /// The entry's bytes.
    pub fn encode(&self) -> [u8; OFFSET_ENTRY_LEN] {
        let mut b = [0u8; OFFSET_ENTRY_LEN];
        b[..4].copy_from_slice(&self.relative_offset.to_be_bytes());
        b[4..].copy_from_slice(&self.position.to_be_bytes());
        b
    }
}

impl TimeEntry {
    /// The entry's bytes.
    pub fn encode(&self) -> [u8; TIME_ENTRY_LEN] {
        let mut b = [0u8; TIME_ENTRY_LEN];
        b[..8].copy_from_slice(&self.timestamp.to_be_bytes());
        b[8..].copy_from_slice(&self.relative_offset.to_be_bytes());
        b
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Decodes an `.index` file of a segment whose `.log` is `log_len` bytes long. Entries must
/// increase strictly in both columns and point inside the log.
pub fn decode_offset_index(bytes: &[u8], log_len: u64) -> Result<Vec<OffsetEntry>, IndexError> {
    if !bytes.len().is_multiple_of(OFFSET_ENTRY_LEN) {
        return Err(IndexError::Length(bytes.len()));
    }
    let mut out: Vec<OffsetEntry> = Vec::with_capacity(bytes.len() / OFFSET_ENTRY_LEN);
    for (i, c) in bytes.chunks_exact(OFFSET_ENTRY_LEN).enumerate() {
        let e = OffsetEntry { relative_offset: u32_at(c, 0), position: u32_at(c, 4) };
        if u64::from(e.position) >= log_len {
            return Err(IndexError::Range(i));
        }
        if let Some(p) = out.last() {
            if e.relative_offset <= p.relative_offset || e.position <= p.position {
                return Err(IndexError::Order(i));
            }
        }
        out.push(e);
    }
    Ok(out)
}

/// Decodes a `.timeindex` file. Timestamps must not decrease, offsets must increase strictly and
/// stay at or below `max_relative_offset`.
pub fn decode_time_index(
    bytes: &[u8],
    max_relative_offset: u32,
) -> Result<Vec<TimeEntry>, IndexError> {
    if !bytes.len().is_multiple_of(TIME_ENTRY_LEN) {
        return Err(IndexError::Length(bytes.len()));
    }
    let mut out: Vec<TimeEntry> = Vec::with_capacity(bytes.len() / TIME_ENTRY_LEN);
    for (i, c) in bytes.chunks_exact(TIME_ENTRY_LEN).enumerate() {
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&c[..8]);
        let e = TimeEntry { timestamp: i64::from_be_bytes(ts), relative_offset: u32_at(c, 8) };
        if e.relative_offset > max_relative_offset {
            return Err(IndexError::Range(i));
        }
        if let Some(p) = out.last() {
            if e.timestamp <= p.timestamp || e.relative_offset <= p.relative_offset {
                return Err(IndexError::Order(i));
            }
        }
        out.push(e);
    }
    Ok(out)
}

/// The entry to start a scan from for `relative_offset`: the last one at or below it.
pub fn lookup_offset(entries: &[OffsetEntry], relative_offset: u32) -> Option<OffsetEntry> {
    let i = entries.partition_point(|e| e.relative_offset <= relative_offset);
    i.checked_sub(1).map(|i| entries[i])
}

/// The entry to start a scan from for the first batch with a timestamp at or after `ts`: the
/// last entry whose largest-timestamp-so-far is still below `ts`.
pub fn lookup_time(entries: &[TimeEntry], ts: i64) -> Option<TimeEntry> {
    let i = entries.partition_point(|e| e.timestamp < ts);
    i.checked_sub(1).map(|i| entries[i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let es = [
            OffsetEntry { relative_offset: 0, position: 0 },
            OffsetEntry { relative_offset: 10, position: 4200 },
            OffsetEntry { relative_offset: 25, position: 9000 },
        ];
        let bytes: Vec<u8> = es.iter().flat_map(|e| e.encode()).collect();
        assert_eq!(decode_offset_index(&bytes, 9001).unwrap(), es);
        assert_eq!(decode_offset_index(&bytes, 9000), Err(IndexError::Range(2)));
        assert_eq!(decode_offset_index(&bytes[..7], 9001), Err(IndexError::Length(7)));
        let swapped: Vec<u8> = [es[0], es[2], es[1]].iter().flat_map(|e| e.encode()).collect();
        assert_eq!(decode_offset_index(&swapped, 9001), Err(IndexError::Order(2)));
        assert_eq!(lookup_offset(&es, 9).unwrap().relative_offset, 0);
        assert_eq!(lookup_offset(&es, 10).unwrap().relative_offset, 10);
        assert_eq!(lookup_offset(&es, 1000).unwrap().relative_offset, 25);
        assert_eq!(lookup_offset(&es[1..], 3), None);

        let ts = [
            TimeEntry { timestamp: 100, relative_offset: 0 },
            TimeEntry { timestamp: 150, relative_offset: 10 },
        ];
        let bytes: Vec<u8> = ts.iter().flat_map(|e| e.encode()).collect();
        assert_eq!(decode_time_index(&bytes, 10).unwrap(), ts);
        assert_eq!(decode_time_index(&bytes, 9), Err(IndexError::Range(1)));
        assert_eq!(lookup_time(&ts, 100), None);
        assert_eq!(lookup_time(&ts, 101).unwrap().relative_offset, 0);
        assert_eq!(lookup_time(&ts, 151).unwrap().relative_offset, 10);
    }
}
