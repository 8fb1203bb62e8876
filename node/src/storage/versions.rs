//! The **version cache**: the stored version of recently used keys, kept in memory so that the
//! two hottest storage questions skip RocksDB:
//!
//! - *which version does this replica hold?* — a quorum read asks the other replicas only for
//!   their version (a digest read, [`super::Storage::versions`]), not for the record;
//! - *is this write newer than what is stored?* — when the cache knows, a newer write is a plain
//!   put (a later point read stops at it) and an older one is dropped, instead of a merge operand
//!   that every later read must resolve.
//!
//! The cache is **exact or silent**: an entry is the version RocksDB would return for that key
//! (or "absent"), never a guess. [`super::rocks::RocksStorage`] keeps it so:
//! - writes change it only under the store's apply lock, after the write batch it describes is in
//!   RocksDB, and bump the *epoch* of each key's stripe;
//! - reads never wait for that lock: a read notes its key's stripe epoch before reading RocksDB
//!   and fills the cache only if it then gets the lock at once and the epoch has not moved (no
//!   write of that stripe can have landed in between);
//! - a cached tombstone stops counting once the compaction filter may have dropped it (older than
//!   the grace period, less a minute for clock steps): the key is then looked up on disk.
//!
//! A key the cache does not hold falls back to RocksDB (a read) or to a merge (a write). A cache
//! opened over an empty store is **complete** until it first evicts a key: it holds every stored
//! key, so a key it does not hold is known to be absent.
//!
//! Entries are keyed by 128 bits of the key's blake3 hash (two keys sharing an entry would need a
//! 128-bit collision) and hold the timestamp and an index into a small table of node ids: about
//! 60 bytes each with the cache's own bookkeeping. Eviction is `quick_cache`'s (S3-FIFO).

use starling_wire::NodeId;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use quick_cache::sync::Cache;
use quick_cache::{DefaultHashBuilder, Lifecycle, UnitWeighter};
use starling_wire::Version;

/// What the cache knows of a key: its stored version, or `None` when nothing is stored.
pub(crate) type Known = Option<Version>;

/// 128 bits of the key's hash, as two words (8-byte alignment keeps entries small).
pub(crate) type KeyHash = (u64, u64);

/// The cache's index of a key.
pub(crate) fn key_hash(key: &[u8]) -> KeyHash {
    keyed(key).1
}

/// A key's storage key (`token ‖ key`), cache index and token, from one blake3 hash.
pub(crate) fn keyed(key: &[u8]) -> (Vec<u8>, KeyHash, starling_ring::Token) {
    let h = blake3::hash(key);
    let b = h.as_bytes();
    let word = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or_default());
    let token = starling_ring::token_of_hash(b);
    (super::data_key_with(token, key), (word(8), word(16)), token)
}

/// A stored version packed small: `node` indexes the node table; `ABSENT` marks a key with
/// nothing stored.
#[derive(Clone, Copy)]
struct Packed {
    ts: u64,
    node: u32,
    tombstone: bool,
}

const ABSENT: u32 = u32::MAX;
/// Distinct node ids the table holds; versions from further nodes are not cached.
const MAX_NODES: usize = 1 << 16;
/// Stripes of write epochs (a read's fill is dropped only if a write touched its stripe).
const STRIPES: usize = 256;
/// Margin for wall-clock steps when deciding that a tombstone may have been compacted away.
const CLOCK_MARGIN: Duration = Duration::from_secs(60);

/// What one insert may evict: the key it replaces does not count as an eviction.
#[derive(Default)]
struct Inserting(Option<KeyHash>);

/// Notes the first eviction of another key: from then on the cache is no longer complete.
#[derive(Clone)]
struct Evictions(Arc<AtomicBool>);

impl Lifecycle<KeyHash, Packed> for Evictions {
    type RequestState = Inserting;

    fn on_evict(&self, state: &mut Inserting, key: KeyHash, _: Packed) {
        // quick_cache reports a replaced value as evicted too.
        if state.0 != Some(key) {
            self.0.store(false, Ordering::Release);
        }
    }
}

/// Node ids seen in versions, by index.
#[derive(Default)]
struct NodeTable {
    ids: Vec<NodeId>,
    index: HashMap<NodeId, u32>,
}

/// Stored versions of up to `capacity` keys.
pub(crate) struct VersionCache {
    cache: Cache<KeyHash, Packed, UnitWeighter, DefaultHashBuilder, Evictions>,
    nodes: RwLock<NodeTable>,
    /// Every stored key is in the cache (it started empty over an empty store, and has evicted
    /// nothing since).
    complete: Arc<AtomicBool>,
    epochs: Vec<AtomicU64>,
    /// Tombstones older than this (ms) may be gone from the store.
    tombstone_grace_ms: u64,
}

fn now_millis() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl VersionCache {
    /// A cache of `capacity` keys; `complete` when the store it describes is empty.
    pub(crate) fn new(capacity: usize, complete: bool, tombstone_grace: Duration) -> Self {
        let complete = Arc::new(AtomicBool::new(complete));
        let capacity = capacity.max(1);
        let cache = Cache::with(
            capacity,
            capacity as u64,
            UnitWeighter,
            DefaultHashBuilder::default(),
            Evictions(complete.clone()),
        );
        // Sized once, up front: grown on demand, each shard's table doubles (a copy and a rehash
        // of the whole shard) under the store's apply lock, a pause of milliseconds for every
        // write behind it. Only the tables' control bytes are touched now; the rest of the
        // memory is touched as keys arrive.
        cache.reserve(capacity);
        VersionCache {
            cache,
            nodes: RwLock::new(NodeTable::default()),
            complete,
            epochs: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
            tombstone_grace_ms: tombstone_grace.saturating_sub(CLOCK_MARGIN).as_millis() as u64,
        }
    }

    /// Keys held, and the most it holds.
    pub(crate) fn usage(&self) -> (u64, u64) {
        (self.cache.len() as u64, self.cache.capacity())
    }

    /// What the cache knows of the key, if anything.
    pub(crate) fn get(&self, hash: KeyHash) -> Option<Known> {
        match self.cache.get(&hash) {
            Some(p) if p.node == ABSENT => Some(None),
            Some(p) => {
                if p.tombstone
                    && (p.ts >> 16).saturating_add(self.tombstone_grace_ms) < now_millis()
                {
                    // The compaction filter may have dropped it: ask the store.
                    return None;
                }
                let nodes = self.nodes.read().unwrap_or_else(|e| e.into_inner());
                Some(Some(Version { ts: p.ts, node: *nodes.ids.get(p.node as usize)? }))
            }
            None if self.complete.load(Ordering::Acquire) => Some(None),
            None => None,
        }
    }

    /// Records what the store now holds for the key (`tombstone`: the version is a delete).
    /// Callers hold the store's apply lock.
    pub(crate) fn set(&self, hash: KeyHash, known: Known, tombstone: bool) {
        let packed = match known {
            None => Packed { ts: 0, node: ABSENT, tombstone: false },
            Some(v) => match self.node_index(v.node) {
                Some(node) => Packed { ts: v.ts, node, tombstone },
                None => return self.forget(hash),
            },
        };
        self.cache.insert_with_lifecycle(hash, packed, &mut Inserting(Some(hash)));
    }

    /// Drops what the cache knew of the key (the store changed in a way it cannot describe).
    pub(crate) fn forget(&self, hash: KeyHash) {
        // The key is stored but no longer described: a miss no longer means "absent". Cleared
        // first, so no reader sees the miss while the cache still claims to be complete.
        self.complete.store(false, Ordering::Release);
        self.cache.remove(&hash);
    }

    /// The write epoch of the key's stripe: a read notes it before reading the store.
    pub(crate) fn epoch(&self, hash: KeyHash) -> u64 {
        self.epochs[Self::stripe(hash)].load(Ordering::Acquire)
    }

    /// A write to the key is in the store and described: reads that started before must not
    /// fill the cache.
    pub(crate) fn bump(&self, hash: KeyHash) {
        self.epochs[Self::stripe(hash)].fetch_add(1, Ordering::AcqRel);
    }

    fn stripe(hash: KeyHash) -> usize {
        (hash.0 as usize) % STRIPES
    }

    fn node_index(&self, node: NodeId) -> Option<u32> {
        if let Some(i) = self.nodes.read().unwrap_or_else(|e| e.into_inner()).index.get(&node) {
            return Some(*i);
        }
        let mut nodes = self.nodes.write().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = nodes.index.get(&node) {
            return Some(*i);
        }
        if nodes.ids.len() >= MAX_NODES {
            return None;
        }
        let i = nodes.ids.len() as u32;
        nodes.ids.push(node);
        nodes.index.insert(node, i);
        Some(i)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn one_hash_gives_the_same_storage_key_as_data_key() {
        for key in [&b""[..], b"a", b"some longer key \xff\x00"] {
            assert_eq!(super::keyed(key).0, super::super::data_key(key));
        }
    }
}
