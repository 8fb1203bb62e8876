//! Kafka's RecordBatch v2, the unit the log stores and moves.
//!
//! The log keeps batches byte for byte as a Kafka producer sends them and a Kafka consumer reads
//! them. The broker side never needs the records inside a batch: it checks the header and the
//! CRC, assigns the base offset and the partition leader epoch (both outside the CRC), and stores.
//! [`BatchView`] is that zero-copy header view. Building and reading the records themselves
//! (the native producer and consumer) goes through the `kafka-protocol` crate's codec:
//! [`encode_batch`] and [`decode_records`].
//!
//! ```text
//! offset  field                 type     in CRC
//!      0  baseOffset            int64    no   (set by the leader)
//!      8  batchLength           int32    no   (bytes after this field)
//!     12  partitionLeaderEpoch  int32    no   (set by the leader)
//!     16  magic                 int8     no   (2)
//!     17  crc                   uint32   -    (CRC-32C of bytes 21..end)
//!     21  attributes            int16    yes  (bits 0-2 compression, 3 timestamp type,
//!                                              4 transactional, 5 control)
//!     23  lastOffsetDelta       int32    yes
//!     27  baseTimestamp         int64    yes
//!     35  maxTimestamp          int64    yes
//!     43  producerId            int64    yes
//!     51  producerEpoch         int16    yes
//!     53  baseSequence          int32    yes
//!     57  recordCount           int32    yes
//!     61  records ...                    yes
//! ```

use bytes::{Bytes, BytesMut};
use kafka_protocol::records::{
    Compression, Record as KafkaRecord, RecordBatchDecoder, RecordBatchEncoder,
    RecordEncodeOptions, TimestampType,
};

/// Bytes before `batchLength`'s count starts (`baseOffset` + `batchLength`).
pub const LOG_OVERHEAD: usize = 12;
/// The fixed header, up to and including `recordCount`.
pub const HEADER_LEN: usize = 61;
/// The magic byte of RecordBatch v2, the only format stored.
pub const MAGIC_V2: i8 = 2;
/// Largest batch accepted by default (Kafka's `message.max.bytes` is 1 MiB; the same here).
pub const DEFAULT_MAX_BATCH_BYTES: usize = 1 << 20;

/// Fewest bytes an uncompressed record can take.
pub const MIN_RECORD_LEN: usize = 7;
/// Most records a compressed batch may claim (its records are not counted before it is
/// stored; a consumer decoding it allocates for this many at most).
pub const MAX_RECORDS_PER_BATCH: i64 = 1_000_000;

const OFF_BATCH_LENGTH: usize = 8;
const OFF_LEADER_EPOCH: usize = 12;
const OFF_MAGIC: usize = 16;
const OFF_CRC: usize = 17;
const OFF_ATTRIBUTES: usize = 21;
const OFF_LAST_OFFSET_DELTA: usize = 23;
const OFF_BASE_TIMESTAMP: usize = 27;
const OFF_MAX_TIMESTAMP: usize = 35;
const OFF_PRODUCER_ID: usize = 43;
const OFF_PRODUCER_EPOCH: usize = 51;
const OFF_BASE_SEQUENCE: usize = 53;
const OFF_RECORD_COUNT: usize = 57;

/// Why bytes are not a valid batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// The bytes end inside a batch (a torn write at a log's tail, or a short network read).
    #[error("batch truncated: {have} of {need} bytes")]
    Truncated {
        /// Bytes present.
        have: usize,
        /// Bytes the header says the batch has (or the header's own length).
        need: usize,
    },
    /// `batchLength` smaller than a header or negative.
    #[error("batch length {0} is impossible")]
    BadLength(i32),
    /// Larger than the limit the caller set.
    #[error("batch of {len} bytes is larger than the {max}-byte limit")]
    TooLarge {
        /// Whole batch size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Not RecordBatch v2 (message sets v0/v1 are not stored).
    #[error("record batch magic {0} is not supported (only v2)")]
    BadMagic(i8),
    /// The stored CRC does not match the bytes.
    #[error("record batch CRC mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    BadCrc {
        /// The CRC in the header.
        stored: u32,
        /// The CRC of the bytes.
        computed: u32,
    },
    /// `lastOffsetDelta` negative, or the record count out of range for it or for the bytes.
    #[error("record batch offsets are inconsistent (last offset delta {last_offset_delta}, {count} records)")]
    BadCount {
        /// `lastOffsetDelta`.
        last_offset_delta: i32,
        /// `recordCount`.
        count: i32,
    },
}

/// A validated RecordBatch v2 within a byte slice: header fields read in place.
#[derive(Debug, Clone, Copy)]
pub struct BatchView<'a> {
    bytes: &'a [u8],
}

fn i16_at(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}
fn i32_at(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn i64_at(b: &[u8], at: usize) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(a)
}

/// The total size of the batch starting at `bytes`, from its first 12 bytes, without validating
/// the rest. `Err(Truncated)` when fewer than 12 bytes are present.
pub fn batch_size(bytes: &[u8]) -> Result<usize, BatchError> {
    if bytes.len() < LOG_OVERHEAD {
        return Err(BatchError::Truncated { have: bytes.len(), need: LOG_OVERHEAD });
    }
    let len = i32_at(bytes, OFF_BATCH_LENGTH);
    if len < (HEADER_LEN - LOG_OVERHEAD) as i32 {
        return Err(BatchError::BadLength(len));
    }
    Ok(LOG_OVERHEAD + len as usize)
}

impl<'a> BatchView<'a> {
    /// Validates the batch at the start of `bytes` (length, magic, CRC, offset arithmetic) and
    /// returns it with the bytes after it. `max` bounds the batch size.
    pub fn parse(bytes: &'a [u8], max: usize) -> Result<(BatchView<'a>, &'a [u8]), BatchError> {
        let size = batch_size(bytes)?;
        if size > max {
            return Err(BatchError::TooLarge { len: size, max });
        }
        if bytes.len() < size {
            return Err(BatchError::Truncated { have: bytes.len(), need: size });
        }
        let (this, rest) = bytes.split_at(size);
        let magic = this[OFF_MAGIC] as i8;
        if magic != MAGIC_V2 {
            return Err(BatchError::BadMagic(magic));
        }
        let stored = u32::from_be_bytes([
            this[OFF_CRC],
            this[OFF_CRC + 1],
            this[OFF_CRC + 2],
            this[OFF_CRC + 3],
        ]);
        let computed = crc32c::crc32c(&this[OFF_ATTRIBUTES..]);
        if stored != computed {
            return Err(BatchError::BadCrc { stored, computed });
        }
        let view = BatchView { bytes: this };
        let (delta, count) = (view.last_offset_delta(), view.record_count());
        // A record takes at least 7 bytes uncompressed (length, attributes, timestamp delta,
        // offset delta, key length, value length, header count): a count the bytes cannot hold
        // is refused, so no decoder is asked to reserve room for billions of records.
        let room = if view.compression() == 0 {
            ((size - HEADER_LEN) / MIN_RECORD_LEN) as i64
        } else {
            MAX_RECORDS_PER_BATCH
        };
        if delta < 0
            || count < 0
            || i64::from(count) > i64::from(delta) + 1
            || i64::from(count) > room
        {
            return Err(BatchError::BadCount { last_offset_delta: delta, count });
        }
        Ok((view, rest))
    }

    /// The batch at the start of `bytes` whose checks (CRC included) already passed in this
    /// process: only its length is read, so walking the batches of a request once more costs
    /// no second CRC pass over their bytes. Lengths are still bounds-checked (never a panic).
    pub fn checked(bytes: &'a [u8]) -> Result<(BatchView<'a>, &'a [u8]), BatchError> {
        let size = batch_size(bytes)?;
        if bytes.len() < size {
            return Err(BatchError::Truncated { have: bytes.len(), need: size });
        }
        let (this, rest) = bytes.split_at(size);
        Ok((BatchView { bytes: this }, rest))
    }

    /// The whole batch.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }
    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }
    /// Never true for a parsed batch (kept for clippy's `len_without_is_empty`).
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
    /// The offset of the first record.
    pub fn base_offset(&self) -> i64 {
        i64_at(self.bytes, 0)
    }
    /// The offset of the last record (`baseOffset + lastOffsetDelta`).
    pub fn last_offset(&self) -> i64 {
        self.base_offset().saturating_add(i64::from(self.last_offset_delta()))
    }
    /// The epoch of the leader that appended the batch.
    pub fn leader_epoch(&self) -> i32 {
        i32_at(self.bytes, OFF_LEADER_EPOCH)
    }
    /// Attribute bits.
    pub fn attributes(&self) -> i16 {
        i16_at(self.bytes, OFF_ATTRIBUTES)
    }
    /// Compression codec (attribute bits 0-2): 0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd.
    pub fn compression(&self) -> u8 {
        (self.attributes() & 0x7) as u8
    }
    /// Transactional batch (attribute bit 4).
    pub fn is_transactional(&self) -> bool {
        self.attributes() & (1 << 4) != 0
    }
    /// Control batch (attribute bit 5): transaction markers, never shown to consumers.
    pub fn is_control(&self) -> bool {
        self.attributes() & (1 << 5) != 0
    }
    /// `lastOffsetDelta`.
    pub fn last_offset_delta(&self) -> i32 {
        i32_at(self.bytes, OFF_LAST_OFFSET_DELTA)
    }
    /// Timestamp of the first record.
    pub fn base_timestamp(&self) -> i64 {
        i64_at(self.bytes, OFF_BASE_TIMESTAMP)
    }
    /// Largest timestamp in the batch.
    pub fn max_timestamp(&self) -> i64 {
        i64_at(self.bytes, OFF_MAX_TIMESTAMP)
    }
    /// Producer id (-1 when not idempotent).
    pub fn producer_id(&self) -> i64 {
        i64_at(self.bytes, OFF_PRODUCER_ID)
    }
    /// Producer epoch.
    pub fn producer_epoch(&self) -> i16 {
        i16_at(self.bytes, OFF_PRODUCER_EPOCH)
    }
    /// Sequence number of the first record (-1 when not idempotent).
    pub fn base_sequence(&self) -> i32 {
        i32_at(self.bytes, OFF_BASE_SEQUENCE)
    }
    /// Number of records.
    pub fn record_count(&self) -> i32 {
        i32_at(self.bytes, OFF_RECORD_COUNT)
    }
}

/// Iterates the batches of a buffer of whole batches, each validated. Stops at the first error.
#[derive(Debug, Clone)]
pub struct Batches<'a> {
    rest: &'a [u8],
    max: usize,
    failed: bool,
    /// Read lengths only ([`BatchView::checked`]).
    checked: bool,
}

impl<'a> Batches<'a> {
    /// Batches of `bytes`, each at most `max` bytes, each validated ([`BatchView::parse`]).
    pub fn new(bytes: &'a [u8], max: usize) -> Self {
        Batches { rest: bytes, max, failed: false, checked: false }
    }

    /// Batches of `bytes` that were validated earlier in this process (by [`Batches::new`]),
    /// walked by their lengths alone ([`BatchView::checked`]).
    pub fn checked(bytes: &'a [u8]) -> Self {
        Batches { rest: bytes, max: usize::MAX, failed: false, checked: true }
    }
}

impl<'a> Iterator for Batches<'a> {
    type Item = Result<BatchView<'a>, BatchError>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() || self.failed {
            return None;
        }
        let parsed = if self.checked {
            BatchView::checked(self.rest)
        } else {
            BatchView::parse(self.rest, self.max)
        };
        match parsed {
            Ok((view, rest)) => {
                self.rest = rest;
                Some(Ok(view))
            }
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

/// Overwrites the base offset of the batch at the start of `batch` (outside the CRC).
pub fn set_base_offset(batch: &mut [u8], offset: i64) {
    batch[0..8].copy_from_slice(&offset.to_be_bytes());
}

/// Overwrites the partition leader epoch of the batch at the start of `batch` (outside the CRC).
pub fn set_leader_epoch(batch: &mut [u8], epoch: i32) {
    batch[OFF_LEADER_EPOCH..OFF_LEADER_EPOCH + 4].copy_from_slice(&epoch.to_be_bytes());
}

/// One record to produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRecord {
    /// Key (partitioning and compaction), if any.
    pub key: Option<Vec<u8>>,
    /// Value (None is a null value: a tombstone for compacted topics).
    pub value: Option<Vec<u8>>,
    /// Header name/value pairs.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    /// Creation time, milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
}

/// The producer identity of an idempotent batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerStamp {
    /// Producer id.
    pub id: i64,
    /// Producer epoch.
    pub epoch: i16,
    /// Sequence of the batch's first record.
    pub base_sequence: i32,
}

/// A record read back from a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    /// Its offset in the partition.
    pub offset: i64,
    /// Timestamp, milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// Key.
    pub key: Option<Bytes>,
    /// Value.
    pub value: Option<Bytes>,
    /// Headers.
    pub headers: Vec<(String, Option<Bytes>)>,
    /// The leader epoch of the batch that holds it.
    pub leader_epoch: i32,
}

/// Encodes `records` as one uncompressed RecordBatch v2 with base offset 0 (the leader assigns
/// offsets) with Kafka's codec. `records` must not be empty.
pub fn encode_batch(
    records: &[NewRecord],
    producer: Option<ProducerStamp>,
) -> Result<Vec<u8>, String> {
    if records.is_empty() {
        return Err("a batch needs at least one record".into());
    }
    let (pid, pepoch, seq) = match producer {
        Some(p) => (p.id, p.epoch, p.base_sequence),
        None => (-1, -1, -1),
    };
    let krecords: Vec<KafkaRecord> = records
        .iter()
        .enumerate()
        .map(|(i, r)| KafkaRecord {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: pid,
            producer_epoch: pepoch,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            // The codec splits batches where `offset - sequence` changes, and derives the
            // header's base sequence from the first record: -1 + i keeps a non-idempotent batch
            // whole with base sequence -1.
            sequence: seq.wrapping_add(i as i32),
            timestamp: r.timestamp_ms,
            key: r.key.clone().map(Bytes::from),
            value: r.value.clone().map(Bytes::from),
            headers: r
                .headers
                .iter()
                .map(|(k, v)| (k.clone().into(), v.clone().map(Bytes::from)))
                .collect(),
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        krecords.iter(),
        &RecordEncodeOptions { version: 2, compression: Compression::None },
    )
    .map_err(|e| e.to_string())?;
    Ok(buf.to_vec())
}

fn varint(b: &[u8], at: &mut usize, max_bytes: usize) -> Result<i64, String> {
    let mut v: u64 = 0;
    for i in 0..max_bytes {
        let byte = *b.get(*at).ok_or("record ends inside a varint")?;
        *at += 1;
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(((v >> 1) as i64) ^ -((v & 1) as i64));
        }
    }
    Err("varint too long".into())
}

/// Walks the records of an uncompressed batch's payload checking only lengths and counts
/// (not a codec: the records are read by Kafka's), so that no count or length claims more than
/// the bytes hold — Kafka's decoder reserves room for a record or header count before reading.
fn check_records(
    payload: &[u8],
    count: i32,
    base_timestamp: i64,
    base_offset: i64,
) -> Result<(), String> {
    let mut at = 0usize;
    for _ in 0..count {
        let len = varint(payload, &mut at, 5)?;
        if len < 0 || len as usize > payload.len() - at {
            return Err(format!("record length {len} runs past the batch"));
        }
        let end = at + len as usize;
        let rec = &payload[..end];
        at += 1; // attributes
                 // Deltas that overflow their base (the decoder adds them unchecked).
        let ts = varint(rec, &mut at, 10)?;
        if base_timestamp.checked_add(ts).is_none() {
            return Err(format!("record timestamp delta {ts} overflows"));
        }
        let od = varint(rec, &mut at, 5)?;
        if i32::try_from(od).is_err() || base_offset.checked_add(od).is_none() {
            return Err(format!("record offset delta {od} overflows"));
        }
        for what in ["key", "value"] {
            let n = varint(rec, &mut at, 5)?;
            if n < -1 || (n > 0 && n as usize > end.saturating_sub(at)) {
                return Err(format!("record {what} length {n} runs past the record"));
            }
            at += n.max(0) as usize;
        }
        let headers = varint(rec, &mut at, 5)?;
        if headers < 0 || headers as usize > end.saturating_sub(at) / 2 {
            return Err(format!("record header count {headers} is more than the record holds"));
        }
        at = end;
    }
    Ok(())
}

/// Decodes every record of a buffer of whole batches with Kafka's codec, skipping control
/// batches. Compressed batches whose codec this build lacks are an error.
pub fn decode_records(bytes: &[u8]) -> Result<Vec<StoredRecord>, String> {
    let mut out = Vec::new();
    for view in Batches::new(bytes, usize::MAX) {
        let view = view.map_err(|e| e.to_string())?;
        if view.is_control() {
            continue;
        }
        if view.compression() == 0 {
            check_records(
                &view.bytes()[HEADER_LEN..],
                view.record_count(),
                view.base_timestamp(),
                view.base_offset(),
            )?;
        }
        let mut buf = Bytes::copy_from_slice(view.bytes());
        let set = RecordBatchDecoder::decode(&mut buf).map_err(|e| e.to_string())?;
        for r in set.records {
            out.push(StoredRecord {
                offset: r.offset,
                timestamp_ms: r.timestamp,
                key: r.key,
                value: r.value,
                headers: r.headers.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
                leader_epoch: view.leader_epoch(),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(v: &str, ts: i64) -> NewRecord {
        NewRecord {
            key: Some(b"k".to_vec()),
            value: Some(v.as_bytes().to_vec()),
            headers: vec![("h".into(), Some(b"x".to_vec()))],
            timestamp_ms: ts,
        }
    }

    #[test]
    fn encoded_batch_parses_and_round_trips() {
        let mut b = encode_batch(&[rec("a", 10), rec("bb", 12), rec("c", 11)], None).unwrap();
        let (v, rest) = BatchView::parse(&b, DEFAULT_MAX_BATCH_BYTES).unwrap();
        assert!(rest.is_empty());
        assert_eq!(v.record_count(), 3);
        assert_eq!(v.last_offset_delta(), 2);
        assert_eq!(v.base_timestamp(), 10);
        assert_eq!(v.max_timestamp(), 12);
        assert_eq!(v.producer_id(), -1);
        set_base_offset(&mut b, 40);
        set_leader_epoch(&mut b, 7);
        let (v, _) = BatchView::parse(&b, DEFAULT_MAX_BATCH_BYTES).unwrap();
        assert_eq!((v.base_offset(), v.last_offset(), v.leader_epoch()), (40, 42, 7));
        let recs = decode_records(&b).unwrap();
        assert_eq!(recs.len(), 3);
        assert_eq!(recs[1].offset, 41);
        assert_eq!(recs[1].value.as_deref(), Some(&b"bb"[..]));
        assert_eq!(recs[2].timestamp_ms, 11);
        assert_eq!(recs[0].headers, vec![("h".to_string(), Some(Bytes::from_static(b"x")))]);
        assert_eq!(recs[0].leader_epoch, 7);
    }

    #[test]
    fn every_damage_is_named() {
        let b = encode_batch(
            &[rec("value", 1)],
            Some(ProducerStamp { id: 5, epoch: 1, base_sequence: 9 }),
        )
        .unwrap();
        let (v, _) = BatchView::parse(&b, usize::MAX).unwrap();
        assert_eq!((v.producer_id(), v.producer_epoch(), v.base_sequence()), (5, 1, 9));
        assert!(matches!(
            BatchView::parse(&b[..b.len() - 1], usize::MAX),
            Err(BatchError::Truncated { .. })
        ));
        assert!(matches!(BatchView::parse(&b[..5], usize::MAX), Err(BatchError::Truncated { .. })));
        assert!(matches!(BatchView::parse(&b, 10), Err(BatchError::TooLarge { .. })));
        let mut flipped = b.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(matches!(BatchView::parse(&flipped, usize::MAX), Err(BatchError::BadCrc { .. })));
        let mut magic = b.clone();
        magic[16] = 1;
        assert_eq!(BatchView::parse(&magic, usize::MAX).unwrap_err(), BatchError::BadMagic(1));
        let mut short = b.clone();
        short[8..12].copy_from_slice(&3i32.to_be_bytes());
        assert_eq!(BatchView::parse(&short, usize::MAX).unwrap_err(), BatchError::BadLength(3));
        // A CRC-valid batch claiming more records than its bytes can hold (a consumer's
        // decoder would reserve room for all of them).
        let mut bomb = b.clone();
        bomb[23..27].copy_from_slice(&(i32::MAX - 1).to_be_bytes());
        bomb[57..61].copy_from_slice(&i32::MAX.to_be_bytes());
        let crc = crc32c::crc32c(&bomb[21..]);
        bomb[17..21].copy_from_slice(&crc.to_be_bytes());
        assert!(matches!(BatchView::parse(&bomb, usize::MAX), Err(BatchError::BadCount { .. })));
        assert!(decode_records(&bomb).is_err());
        // A header count the record cannot hold (its last byte is the header count).
        let plain = encode_batch(&[NewRecord { headers: vec![], ..rec("v", 1) }], None).unwrap();
        let mut headers = plain.clone();
        *headers.last_mut().unwrap() = 0x7e; // zigzag 63
        let crc = crc32c::crc32c(&headers[21..]);
        headers[17..21].copy_from_slice(&crc.to_be_bytes());
        BatchView::parse(&headers, usize::MAX).unwrap();
        assert!(decode_records(&headers).unwrap_err().contains("header count"));
        assert_eq!(decode_records(&plain).unwrap().len(), 1);
        // Offsets outside the CRC may change; the batch stays valid.
        let mut moved = b.clone();
        set_base_offset(&mut moved, i64::MAX);
        assert_eq!(BatchView::parse(&moved, usize::MAX).unwrap().0.last_offset(), i64::MAX);
    }
}
