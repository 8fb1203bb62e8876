//! Where a node keeps its data: the [`Storage`] trait, its RocksDB implementation
//! ([`rocks::RocksStorage`]) and an in-memory one ([`mem::MemStorage`]) for tests and simulation.
//! Both pass one conformance suite (`node/tests/storage.rs`).
//!
//! Three keyspaces (RocksDB column families):
//! - **data**: `token (8 bytes, big-endian) ‖ key` → encoded [`Record`] (version, tombstone flag,
//!   value). Keys sorted by token make one token range one contiguous scan.
//! - **hints**: `target node (16) ‖ data key` → encoded record: writes kept for a replica that was
//!   down, replayed when it is back ([`crate::kv::hints`]). One hint per key and target: a newer
//!   version replaces the hint kept, an older one is not stored.
//! - **meta**: small local facts (this node's tokens and ring status).
//!
//! Writes merge by version (last write wins, ties by node id): applying an older version of a key
//! than the stored one changes nothing, so replays, read repair and streaming are idempotent and
//! can arrive in any order.

pub mod mem;
pub mod rocks;
mod versions;

use starling_ring::{Range, Token};
use starling_wire::NodeId;
use starling_wire::{Record, Version};

/// Called first on every thread that works the store: RocksDB counts every operation of a
/// thread in a thread-local perf context by default (`kEnableCount`), a cost on every write
/// that nothing here reads.
pub fn quiet_store_thread() {
    rocksdb::perf::set_perf_stats(rocksdb::perf::PerfStatsLevel::Disable);
}

/// The stored form of records and the layout of data and hint keys live in
/// `starling-store-format`, with no IO, so they can be fuzzed on their own.
pub use starling_store_format::record::{
    data_key, decode_value, decode_version, encode_value, encode_value_into, hint_key, hint_size,
    key_token, parse_hint_key, user_key, HintPut,
};
pub(crate) use starling_store_format::record::{
    data_key_with, hint_is, hint_put, incoming_wins, stored_hint_size,
};

/// What a storage operation failed with.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The engine refused or failed the operation (disk full, I/O error, ...).
    #[error("storage: {0}")]
    Engine(String),
    /// Bytes read from disk are not a valid record: the file is corrupt.
    #[error("corrupt record in {cf} at key {key}: {why}")]
    Corrupt { cf: &'static str, key: String, why: String },
    /// A write or a WAL sync failed earlier; the store takes no more writes until a restart.
    #[error(
        "storage failed and takes no more writes: {0}; free disk space if it is full, then \
         restart the node (its acknowledged writes are kept)"
    )]
    Failed(String),
}

/// A hint: a record to deliver to `target` when it is reachable again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hint {
    /// The storage key of the hint: one per target and key (pass it back, with the record's
    /// version, to [`Storage::delete_hints`]).
    pub id: Vec<u8>,
    pub target: NodeId,
    pub record: Record,
}

impl Hint {
    /// What [`Storage::delete_hints`] takes to remove this hint once it is delivered.
    pub fn delivered(&self) -> (Vec<u8>, Version) {
        (self.id.clone(), self.record.version)
    }
}

/// One page of a range scan.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ScanPage {
    pub records: Vec<Record>,
    /// Storage key to continue after; `None` when the range is exhausted.
    pub cursor: Option<Vec<u8>>,
}

/// A node's local store. Implementations are internally synchronised; calls may block on disk,
/// so async callers go through the storage threads of [`crate::kv::io`].
pub trait Storage: Send + Sync + 'static {
    /// Applies `records` atomically (one write batch), each merged by version with what is
    /// stored. Durable in the write-ahead log when it returns (fsynced too in `sync = always`).
    /// Then marks their anti-entropy segments changed ([`Storage::segments`]).
    fn apply(&self, records: &[Record]) -> Result<(), StorageError>;
    /// [`Storage::apply`], and for each record whose `check` is set, the newer version the store
    /// already held for its key if there was one (the record lost to it: acknowledged but
    /// superseded); `None` for the others. A key whose stored record cannot be read holds
    /// nothing that can win: the record replaces it.
    fn apply_checked(
        &self,
        records: &[Record],
        check: &[bool],
    ) -> Result<Vec<Option<Version>>, StorageError> {
        let newer = newer_held(self, records, check);
        self.apply(records)?;
        Ok(newer)
    }
    /// The stored record of `key` (a tombstone included), if any.
    fn get(&self, key: &[u8]) -> Result<Option<Record>, StorageError>;
    /// The stored records of several keys, in order (one batched lookup where the engine has one).
    fn get_many(&self, keys: &[&[u8]]) -> Result<Vec<Option<Record>>, StorageError> {
        keys.iter().map(|k| self.get(k)).collect()
    }
    /// Like [`Storage::get_many`], but each key succeeds or fails on its own: one corrupt record
    /// fails only its own key's answer.
    fn get_each(&self, keys: &[&[u8]]) -> Vec<Result<Option<Record>, StorageError>> {
        match self.get_many(keys) {
            Ok(records) => records.into_iter().map(Ok).collect(),
            Err(_) => keys.iter().map(|k| self.get(k)).collect(),
        }
    }
    /// The stored version of each key if an in-memory cache knows every one of them (`None`
    /// otherwise): never touches the disk, so it may run on the thread that answers the network.
    fn cached_versions(&self, _keys: &[&[u8]]) -> Option<Vec<Option<Version>>> {
        None
    }
    /// The stored version of each key (`None`: nothing stored), in order: what a replica answers
    /// to a digest read. Engines that keep versions in memory answer without reading records.
    fn versions(&self, keys: &[&[u8]]) -> Result<Vec<Option<Version>>, StorageError> {
        Ok(self.get_many(keys)?.into_iter().map(|r| r.map(|r| r.version)).collect())
    }
    /// Records whose token is in `range`, in storage order, after `cursor`, at most `limit`, and
    /// at most about [`SCAN_PAGE_BYTES`] of them (always at least one record).
    fn scan(
        &self,
        range: Range,
        cursor: Option<&[u8]>,
        limit: usize,
    ) -> Result<ScanPage, StorageError>;
    /// Deletes every record whose token is in `range` (one this node no longer replicates:
    /// cleanup after its ranges moved), durably; returns how many. Hints are kept. `go_on` is
    /// asked before each batch of deletes is written: once it says no (the ring moved, and the
    /// range may be this node's again), the rest is kept.
    fn drop_range(&self, range: Range, go_on: &dyn Fn() -> bool) -> Result<u64, StorageError>;
    /// Stores hints (one batch, durable like [`Storage::apply`]), at most one per target and key:
    /// a hint replaces the one kept for its target and key only if its version is newer (last
    /// write wins, as for data; within `hints` too). Says for each hint what it did, in order.
    fn put_hints(&self, hints: &[(NodeId, Record)]) -> Result<Vec<HintPut>, StorageError>;
    /// Up to `limit` hints for `target`, in storage order (by token, then key; not by age: each
    /// hint carries its own version), and at most about [`SCAN_PAGE_BYTES`] of them by
    /// [`hint_size`] (always at least one): a page is sent as one request.
    fn hints_for(&self, target: NodeId, limit: usize) -> Result<Vec<Hint>, StorageError>;
    /// Every node that has hints waiting, with their count.
    fn hint_targets(&self) -> Result<Vec<(NodeId, usize)>, StorageError>;
    /// Every node that has hints waiting, with the bytes their hints count toward the hint caps
    /// (the sum of [`hint_size`] over them).
    fn hint_bytes(&self) -> Result<Vec<(NodeId, u64)>, StorageError>;
    /// Removes delivered or expired hints, given as `(id, version)` ([`Hint::delivered`]): each
    /// only if the hint stored under `id` still has that version, so a newer hint that replaced
    /// the one delivered stays. Says for each whether it removed a hint (an id given twice
    /// removes once).
    fn delete_hints(&self, hints: &[(Vec<u8>, Version)]) -> Result<Vec<bool>, StorageError>;
    /// Removes every hint kept for `target`, without reading them (a replica down past the hint
    /// window, or gone).
    fn drop_hints_for(&self, target: NodeId) -> Result<(), StorageError>;
    /// A local metadata value.
    fn get_meta(&self, name: &str) -> Result<Option<Vec<u8>>, StorageError>;
    /// Sets a local metadata value (synced to disk before returning).
    fn put_meta(&self, name: &str, value: &[u8]) -> Result<(), StorageError>;
    /// Number of data keys (estimate for RocksDB), for status and metrics.
    fn approximate_keys(&self) -> u64;
    /// Keys in the version cache and its capacity, if the engine has one.
    fn version_cache(&self) -> Option<(u64, u64)> {
        None
    }
    /// The anti-entropy segment hashes of the data ([`starling_merkle::Segments`]): every
    /// [`Storage::apply`] marks the segments of its records changed once they are readable.
    fn segments(&self) -> &std::sync::Arc<starling_merkle::Segments>;
    /// Why the store refuses writes, once a write or a WAL sync has failed (a full disk, an I/O
    /// error): from then on every write fails with this, until the node is restarted.
    fn failure(&self) -> Option<String> {
        None
    }
    /// Makes every write so far durable (the write-ahead log synced), for a clean stop.
    fn sync_all(&self) -> Result<(), StorageError> {
        Ok(())
    }
}

/// A scan page ends once its keys and values reach this size (plus one record), so a page sent
/// as one response (streaming) stays well under the 4 MiB frame limit even with 1 MiB values.
pub const SCAN_PAGE_BYTES: usize = 2 << 20;

/// What a stored record counts toward [`SCAN_PAGE_BYTES`]: its storage key, stored value, and
/// a margin for the record's encoding.
pub(crate) fn scan_bytes(key: &[u8], value: &[u8]) -> usize {
    key.len() + value.len() + 64
}

/// Hint targets with their counts, from hint keys in storage order (grouped by target).
pub(crate) fn count_hint_targets<K: AsRef<[u8]>, E>(
    keys: impl IntoIterator<Item = Result<K, E>>,
) -> Result<Vec<(NodeId, usize)>, E> {
    let mut out: Vec<(NodeId, usize)> = Vec::new();
    for k in keys {
        let Some((t, _)) = parse_hint_key(k?.as_ref()) else { continue };
        match out.last_mut() {
            Some((last, n)) if *last == t => *n += 1,
            _ => out.push((t, 1)),
        }
    }
    Ok(out)
}

/// Hint targets with the bytes of their hints ([`hint_size`]), from hint entries in storage
/// order (grouped by target).
pub(crate) fn hint_bytes_of<K: AsRef<[u8]>, V: AsRef<[u8]>, E>(
    entries: impl IntoIterator<Item = Result<(K, V), E>>,
) -> Result<Vec<(NodeId, u64)>, E> {
    let mut out: Vec<(NodeId, u64)> = Vec::new();
    for e in entries {
        let (k, v) = e?;
        let Some(b) = stored_hint_size(k.as_ref(), v.as_ref()) else { continue };
        let Some((t, _)) = parse_hint_key(k.as_ref()) else { continue };
        match out.last_mut() {
            Some((last, n)) if *last == t => *n += b,
            _ => out.push((t, b)),
        }
    }
    Ok(out)
}

/// Which tombstones compaction may drop (ScyllaDB's `tombstone_gc: repair` mode): those past the
/// grace period **and** written before the start of the last complete repair of their range, one
/// every replica took part in. Until then a tombstone stays, however old, so a replica that was
/// down longer than the grace period gets it from repair instead of bringing the value back.
#[derive(Debug, Default)]
pub struct PurgeGate {
    /// `(range, wall ms the last complete repair of it started)`.
    repaired: std::sync::RwLock<Vec<(Range, u64)>>,
    /// Tombstones compaction dropped (grace past, a complete repair since), and those past
    /// their grace that it kept because no complete repair of their range started after them.
    purged: std::sync::atomic::AtomicU64,
    held: std::sync::atomic::AtomicU64,
}

impl PurgeGate {
    /// Replaces what is known (the ranges this node replicates, with their last repair).
    pub fn set(&self, ranges: Vec<(Range, u64)>) {
        *self.repaired.write().unwrap_or_else(|p| p.into_inner()) = ranges;
    }

    /// When the last complete repair of the range holding `token` started (`None`: never).
    pub fn repaired_since(&self, token: Token) -> Option<u64> {
        let ranges = self.repaired.read().unwrap_or_else(|p| p.into_inner());
        ranges.iter().filter(|(r, _)| r.contains(token)).map(|(_, t)| *t).max()
    }

    /// Whether a tombstone of `token` written at `millis` may be dropped, its grace period past
    /// (counted: see [`PurgeGate::counts`]).
    pub fn may_purge(&self, token: Token, millis: u64) -> bool {
        let ok = self.repaired_since(token).is_some_and(|since| millis < since);
        let n = if ok { &self.purged } else { &self.held };
        n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        ok
    }

    /// `(purged, held)` since start: tombstones past their grace that compaction dropped, and
    /// those it kept because no complete repair of their range started after them (each time
    /// a compaction met one: a tombstone kept through several compactions counts several times).
    pub fn counts(&self) -> (u64, u64) {
        let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        (load(&self.purged), load(&self.held))
    }
}

/// For each record whose `check` is set, the newer version `storage` holds for its key now, if
/// any (`None` for the others): one batched look-up, key by key if one unreadable record fails
/// it (such a key holds nothing that can win).
pub(crate) fn newer_held<S: Storage + ?Sized>(
    storage: &S,
    records: &[Record],
    check: &[bool],
) -> Vec<Option<Version>> {
    let asked = |i: usize| check.get(i).copied().unwrap_or(false);
    let keys: Vec<&[u8]> = records
        .iter()
        .enumerate()
        .filter(|(i, _)| asked(*i))
        .map(|(_, r)| r.key.as_slice())
        .collect();
    if keys.is_empty() {
        return vec![None; records.len()];
    }
    let held = storage.versions(&keys).unwrap_or_else(|_| {
        keys.iter()
            .map(|k| storage.versions(&[k]).ok().and_then(|v| v.first().copied().flatten()))
            .collect()
    });
    let mut held = held.into_iter();
    let held: Vec<Option<Version>> =
        (0..records.len()).map(|i| if asked(i) { held.next().flatten() } else { None }).collect();
    starling_kv::replica::newer_held(records, &held)
}

/// Marks the anti-entropy segments of `records` changed: called by [`Storage::apply`] once they
/// are readable.
pub(crate) fn touch_segments(segments: &starling_merkle::Segments, records: &[Record]) {
    for r in records {
        segments.touched(starling_ring::token_of(&r.key));
    }
}

/// A decoding failure of bytes read from `cf` at `key`.
pub(crate) fn corrupt(cf: &'static str, key: &[u8], why: impl Into<String>) -> StorageError {
    StorageError::Corrupt { cf, key: format!("{key:02x?}"), why: why.into() }
}

/// Adds one stored hint entry of `target` to `page`. Returns `false` when the page is already
/// full (by count, or by [`SCAN_PAGE_BYTES`] of [`hint_size`]); the entry then starts the next.
pub(crate) fn hint_page_push(
    page: &mut Vec<Hint>,
    bytes: &mut usize,
    limit: usize,
    target: NodeId,
    k: &[u8],
    v: &[u8],
) -> Result<bool, StorageError> {
    let size = stored_hint_size(k, v).ok_or_else(|| corrupt("hints", k, "short key"))? as usize;
    if page.len() >= limit || (*bytes > 0 && *bytes + size > SCAN_PAGE_BYTES) {
        return Ok(false);
    }
    *bytes += size;
    // `parse_hint_key` already skips the data key's token: this is the user key.
    let (_, key) = parse_hint_key(k).ok_or_else(|| corrupt("hints", k, "short key"))?;
    let record = decode_value(key, v).map_err(|e| corrupt("hints", k, e))?;
    page.push(Hint { id: k.to_vec(), target, record });
    Ok(true)
}

/// Adds one scanned data entry to `page`. Returns `false`, with the page's cursor set, when the
/// page is already full (by count or by [`SCAN_PAGE_BYTES`]); the entry then starts the next one.
pub(crate) fn page_push(
    page: &mut ScanPage,
    bytes: &mut usize,
    limit: usize,
    k: &[u8],
    v: &[u8],
) -> Result<bool, StorageError> {
    let size = scan_bytes(k, v);
    if page.records.len() >= limit || (*bytes > 0 && *bytes + size > SCAN_PAGE_BYTES) {
        page.cursor = page.records.last().map(|r| data_key(&r.key));
        return Ok(false);
    }
    *bytes += size;
    let key = user_key(k).ok_or_else(|| corrupt("data", k, "short key"))?;
    page.records.push(decode_value(key, v).map_err(|e| corrupt("data", k, e))?);
    Ok(true)
}

/// Storage-key bounds `[lower, upper)` of the token interval `(start, end]` that does not wrap;
/// `upper = None` means "to the end of the keyspace".
pub(crate) fn token_bounds(start: Option<Token>, end: Token) -> (Vec<u8>, Option<Vec<u8>>) {
    let lower = match start {
        None => 0u64,
        Some(s) => s.saturating_add(1),
    };
    let upper = end.checked_add(1).map(|u| u.to_be_bytes().to_vec());
    (lower.to_be_bytes().to_vec(), upper)
}

/// The non-wrapping pieces of `range`, in storage order: `(exclusive start or None for the
/// keyspace start, inclusive end)`.
pub(crate) fn range_pieces(range: Range) -> Vec<(Option<Token>, Token)> {
    if range.start == range.end {
        return vec![(None, Token::MAX)];
    }
    if range.start < range.end {
        vec![(Some(range.start), range.end)]
    } else if range.start == Token::MAX {
        vec![(None, range.end)]
    } else {
        // Wraps: (start, MAX] then [0, end]; storage order puts [0, end] first.
        vec![(None, range.end), (Some(range.start), Token::MAX)]
    }
}
