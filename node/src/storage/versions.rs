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
//! opened over an empty store is **complete** where it has not dropped a stored key: a key it
//! does not hold is then known to be absent (see the sets below).
//!
//! Entries are keyed by 128 bits of the key's blake3 hash, and the table is **set-associative**:
//! the first word picks one set of [`WAYS`] entries (two cache lines, so a look-up costs one
//! memory fetch, and the insert after the write finds the same lines still cached), and the
//! entry keeps the rest: 32 bits of the first word and the whole second, so two keys sharing an
//! entry would need to agree on at least 96 bits of their hash. An entry holds the timestamp and an index
//! into a small table of node ids: 24 bytes, 128 per set with its header.
//!
//! - **Eviction** is first-in first-out within a set. A set that drops a key the store still
//!   holds (to make room, or by [`VersionCache::forget`]) is no longer complete; every other set
//!   stays complete, so a miss in it still means "absent". Entries that say "absent" go first.
//! - **Concurrency**: one writer at a time (the store's apply lock), readers never block. Each set
//!   is a sequence lock: the writer makes its counter odd, changes the entries, and makes it even
//!   again; a reader that saw it odd, or changed, reads again, and after a few tries answers
//!   "unknown" (the store is asked) rather than wait for a writer that may have been preempted.
//! - **Memory** is taken a chunk of sets at a time, as keys first land in it.

use starling_wire::NodeId;
use std::collections::HashMap;
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
use std::sync::{OnceLock, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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

/// Entries per set: with the set's 8-byte header, exactly two cache lines.
pub(crate) const WAYS: usize = 5;
/// Attempts at a consistent read of a set before the look-up answers "unknown".
const READ_TRIES: usize = 4;
/// Sets allocated together, on the first write that lands in one of them.
const CHUNK: usize = 1024;
/// Distinct node ids the table holds; versions from further nodes are not cached.
const MAX_NODES: usize = 1 << 16;
/// Stripes of write epochs (a read's fill is dropped only if a write touched its stripe).
const STRIPES: usize = 256;
/// Margin for wall-clock steps when deciding that a tombstone may have been compacted away.
const CLOCK_MARGIN: Duration = Duration::from_secs(60);

// An entry's `meta` word: the low 32 bits of the hash's first word (the tag), the node's index
// in the node table, and flags.
const TAG_MASK: u64 = 0xffff_ffff;
const NODE_SHIFT: u32 = 32;
const USED: u64 = 1 << 48;
const ABSENT: u64 = 1 << 49;
const TOMBSTONE: u64 = 1 << 50;

/// A set's `state`: it dropped a key the store holds; the next way to replace is above it.
const DROPPED: u32 = 1;
const HAND_SHIFT: u32 = 1;

#[derive(Default)]
struct Way {
    /// The hash's second word.
    h1: AtomicU64,
    ts: AtomicU64,
    meta: AtomicU64,
}

#[derive(Default)]
#[repr(align(64))]
struct Set {
    /// Sequence lock: odd while the writer changes the set.
    seq: AtomicU32,
    state: AtomicU32,
    ways: [Way; WAYS],
}

/// One entry as read: `meta` and `ts`.
type Entry = (u64, u64);

/// Node ids seen in versions, by index.
#[derive(Default)]
struct NodeTable {
    ids: Vec<NodeId>,
    index: HashMap<NodeId, u32>,
}

/// Stored versions of up to `capacity` keys.
pub(crate) struct VersionCache {
    chunks: Vec<OnceLock<Box<[Set]>>>,
    sets: u64,
    /// Entries in use.
    len: AtomicU64,
    nodes: RwLock<NodeTable>,
    /// Every stored key was in the cache when it started (the store was empty): a set that has
    /// dropped no stored key since holds every stored key that maps to it.
    complete: bool,
    epochs: Vec<AtomicU64>,
    /// Tombstones older than this (ms) may be gone from the store.
    tombstone_grace_ms: u64,
}

fn now_millis() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn tag(hash: KeyHash) -> u64 {
    hash.0 & TAG_MASK
}

/// Whether an entry (`meta`, `h1`) is the one for `hash`.
fn holds((meta, h1): (u64, u64), hash: KeyHash) -> bool {
    meta & USED != 0 && meta & TAG_MASK == tag(hash) && h1 == hash.1
}

impl Set {
    /// The entry for `hash` and the set's state, read consistently; `None` when the writer was
    /// changing the set (a reader never waits for it: the writer may have been preempted in the
    /// middle, and the caller can always ask the store instead).
    fn read(&self, hash: KeyHash) -> Option<(Option<Entry>, u32)> {
        for _ in 0..READ_TRIES {
            let before = self.seq.load(Ordering::Acquire);
            if before & 1 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let state = self.state.load(Ordering::Relaxed);
            let mut found = None;
            for w in &self.ways {
                let meta = w.meta.load(Ordering::Relaxed);
                if meta & USED != 0 && holds((meta, w.h1.load(Ordering::Relaxed)), hash) {
                    found = Some((meta, w.ts.load(Ordering::Relaxed)));
                    break;
                }
            }
            fence(Ordering::Acquire);
            if self.seq.load(Ordering::Relaxed) == before {
                return Some((found, state));
            }
        }
        None
    }

    /// Changes the set (the caller is the only writer): `f` gets the ways' `(meta, h1)` and the
    /// state, and says which way to write with what (`None`: leave the ways) and the new state.
    fn write(&self, f: impl FnOnce(&[(u64, u64); WAYS], u32) -> (Option<(usize, Way)>, u32)) {
        let ways = std::array::from_fn(|i| {
            (self.ways[i].meta.load(Ordering::Relaxed), self.ways[i].h1.load(Ordering::Relaxed))
        });
        let state = self.state.load(Ordering::Relaxed);
        let (change, new_state) = f(&ways, state);
        let seq = self.seq.load(Ordering::Relaxed);
        self.seq.store(seq.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        if let Some((i, w)) = change {
            let way = &self.ways[i];
            way.h1.store(w.h1.into_inner(), Ordering::Relaxed);
            way.ts.store(w.ts.into_inner(), Ordering::Relaxed);
            way.meta.store(w.meta.into_inner(), Ordering::Relaxed);
        }
        self.state.store(new_state, Ordering::Relaxed);
        self.seq.store(seq.wrapping_add(2), Ordering::Release);
    }
}

impl VersionCache {
    /// A cache of `capacity` keys; `complete` when the store it describes is empty.
    pub(crate) fn new(capacity: usize, complete: bool, tombstone_grace: Duration) -> Self {
        let sets = capacity.max(1).div_ceil(WAYS);
        VersionCache {
            chunks: (0..sets.div_ceil(CHUNK)).map(|_| OnceLock::new()).collect(),
            sets: sets as u64,
            len: AtomicU64::new(0),
            nodes: RwLock::new(NodeTable::default()),
            complete,
            epochs: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
            tombstone_grace_ms: tombstone_grace.saturating_sub(CLOCK_MARGIN).as_millis() as u64,
        }
    }

    /// Keys held, and the most it holds.
    pub(crate) fn usage(&self) -> (u64, u64) {
        (self.len.load(Ordering::Relaxed), self.sets * WAYS as u64)
    }

    /// The set of `hash` (its chunk and place in it); the high bits of the first word pick it.
    fn place(&self, hash: KeyHash) -> (usize, usize) {
        let set = ((u128::from(hash.0) * u128::from(self.sets)) >> 64) as usize;
        (set / CHUNK, set % CHUNK)
    }

    /// The set of `hash`, if a write has landed in its chunk.
    fn set_of(&self, hash: KeyHash) -> Option<&Set> {
        let (chunk, i) = self.place(hash);
        self.chunks.get(chunk)?.get()?.get(i)
    }

    /// The set of `hash`, its chunk allocated if need be (by the writer).
    fn set_for_write(&self, hash: KeyHash) -> Option<&Set> {
        let (chunk, i) = self.place(hash);
        let len = (self.sets as usize - chunk * CHUNK).min(CHUNK);
        self.chunks.get(chunk)?.get_or_init(|| (0..len).map(|_| Set::default()).collect()).get(i)
    }

    /// What the cache knows of the key, if anything.
    pub(crate) fn get(&self, hash: KeyHash) -> Option<Known> {
        let (found, state) = match self.set_of(hash) {
            Some(set) => set.read(hash)?,
            None => (None, 0),
        };
        match found {
            Some((meta, _)) if meta & ABSENT != 0 => Some(None),
            Some((meta, ts)) => {
                if meta & TOMBSTONE != 0
                    && (ts >> 16).saturating_add(self.tombstone_grace_ms) < now_millis()
                {
                    // The compaction filter may have dropped it: ask the store.
                    return None;
                }
                let index = ((meta >> NODE_SHIFT) & 0xffff) as usize;
                let nodes = self.nodes.read().unwrap_or_else(|e| e.into_inner());
                Some(Some(Version { ts, node: *nodes.ids.get(index)? }))
            }
            None if self.complete && state & DROPPED == 0 => Some(None),
            None => None,
        }
    }

    /// Starts fetching the memory of the key's set, so that a look-up soon after does not wait
    /// for it: a batch touches all its keys' sets first, and their fetches overlap.
    pub(crate) fn touch(&self, hash: KeyHash) {
        if let Some(set) = self.set_of(hash) {
            std::hint::black_box(set.seq.load(Ordering::Relaxed));
        }
    }

    /// Records what the store now holds for the key (`tombstone`: the version is a delete).
    /// Callers hold the store's apply lock.
    pub(crate) fn set(&self, hash: KeyHash, known: Known, tombstone: bool) {
        let meta = match known {
            None => USED | ABSENT | tag(hash),
            Some(v) => match self.node_index(v.node) {
                Some(node) => {
                    USED | tag(hash)
                        | (u64::from(node) << NODE_SHIFT)
                        | if tombstone { TOMBSTONE } else { 0 }
                }
                None => return self.forget(hash),
            },
        };
        let ts = known.map_or(0, |v| v.ts);
        let Some(set) = self.set_for_write(hash) else { return };
        set.write(|ways, state| {
            let way = Way {
                h1: AtomicU64::new(hash.1),
                ts: AtomicU64::new(ts),
                meta: AtomicU64::new(meta),
            };
            if let Some(i) = ways.iter().position(|w| holds(*w, hash)) {
                return (Some((i, way)), state);
            }
            if let Some(i) = ways.iter().position(|&(m, _)| m & USED == 0) {
                self.len.fetch_add(1, Ordering::Relaxed);
                return (Some((i, way)), state);
            }
            // Full: replace an "absent" entry if there is one (the set stays complete), else
            // the next in turn.
            if let Some(i) = ways.iter().position(|&(m, _)| m & ABSENT != 0) {
                return (Some((i, way)), state);
            }
            let hand = (state >> HAND_SHIFT) as usize % WAYS;
            let next = ((hand + 1) % WAYS) as u32;
            (Some((hand, way)), DROPPED | (next << HAND_SHIFT))
        });
    }

    /// Drops what the cache knew of the key (the store changed in a way it cannot describe).
    pub(crate) fn forget(&self, hash: KeyHash) {
        let Some(set) = self.set_for_write(hash) else { return };
        set.write(|ways, state| {
            // The key is stored but no longer described: a miss in its set no longer means
            // "absent" (the state changes with the entry, under the set's sequence lock).
            match ways.iter().position(|w| holds(*w, hash)) {
                Some(i) => {
                    self.len.fetch_sub(1, Ordering::Relaxed);
                    (Some((i, Way::default())), state | DROPPED)
                }
                None => (None, state | DROPPED),
            }
        });
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
    use super::*;

    const GRACE: Duration = Duration::from_secs(3600);

    /// A version `ts` steps after the test's start (recent: tombstones within their grace).
    fn v(ts: u64, node: u128) -> Version {
        static START: std::sync::LazyLock<u64> = std::sync::LazyLock::new(now_millis);
        Version { ts: (*START << 16) + ts, node: NodeId(node) }
    }

    /// A key hash that lands in set `set` of `cache` (the first word picks the set).
    fn in_set(cache: &VersionCache, set: u64, n: u64) -> KeyHash {
        let h0 = ((set as u128) << 64).div_ceil(u128::from(cache.sets)) as u64 | (n & 0xff);
        assert_eq!(cache.place((h0, 0)), ((set as usize) / CHUNK, (set as usize) % CHUNK));
        (h0, n.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    #[test]
    fn one_hash_gives_the_same_storage_key_as_data_key() {
        for key in [&b""[..], b"a", b"some longer key \xff\x00"] {
            assert_eq!(super::keyed(key).0, super::super::data_key(key));
        }
    }

    #[test]
    fn it_answers_exactly_what_was_set() {
        let cache = VersionCache::new(1000, true, GRACE);
        let (a, b, c) = (key_hash(b"a"), key_hash(b"b"), key_hash(b"c"));
        cache.set(a, Some(v(1, 7)), false);
        cache.set(b, None, false);
        assert_eq!(cache.get(a), Some(Some(v(1, 7))));
        assert_eq!(cache.get(b), Some(None));
        // Complete, never dropped: a key it does not hold is absent.
        assert_eq!(cache.get(c), Some(None));
        cache.set(a, Some(v(2, 9)), true);
        assert_eq!(cache.get(a), Some(Some(v(2, 9))));
        assert_eq!(cache.usage(), (2, 1000));
        // Over a store that was not empty, a miss says nothing.
        let partial = VersionCache::new(1000, false, GRACE);
        partial.set(a, Some(v(1, 7)), false);
        assert_eq!(partial.get(a), Some(Some(v(1, 7))));
        assert_eq!(partial.get(c), None);
    }

    #[test]
    fn a_set_that_drops_a_stored_key_stops_vouching_for_misses_and_no_other_does() {
        let cache = VersionCache::new(10 * WAYS, true, GRACE);
        let full: Vec<KeyHash> = (0..=WAYS as u64).map(|n| in_set(&cache, 3, n)).collect();
        let other = in_set(&cache, 4, 99);
        for (n, h) in full.iter().take(WAYS).enumerate() {
            cache.set(*h, Some(v(n as u64, 1)), false);
        }
        let unseen = in_set(&cache, 3, 200);
        assert_eq!(cache.get(unseen), Some(None), "nothing dropped yet");
        // One more key than the set holds: the oldest goes, and a miss there is unknown now.
        cache.set(full[WAYS], Some(v(50, 1)), false);
        assert_eq!(cache.get(full[0]), None, "the evicted key is not claimed absent");
        assert_eq!(cache.get(unseen), None);
        for (n, h) in full.iter().enumerate().skip(1).take(WAYS - 1) {
            assert_eq!(cache.get(*h), Some(Some(v(n as u64, 1))));
        }
        assert_eq!(cache.get(full[WAYS]), Some(Some(v(50, 1))));
        assert_eq!(cache.get(other), Some(None), "other sets stay complete");
        assert_eq!(cache.usage().0, WAYS as u64);
    }

    #[test]
    fn absent_entries_make_room_first_and_keep_the_set_complete() {
        let cache = VersionCache::new(10 * WAYS, true, GRACE);
        let keys: Vec<KeyHash> = (0..=WAYS as u64).map(|n| in_set(&cache, 5, n)).collect();
        cache.set(keys[0], None, false);
        for (n, h) in keys.iter().enumerate().skip(1).take(WAYS - 1) {
            cache.set(*h, Some(v(n as u64, 1)), false);
        }
        cache.set(keys[WAYS], Some(v(60, 1)), false);
        // keys[0] was replaced, but it held nothing: still absent, and misses still count.
        assert_eq!(cache.get(keys[0]), Some(None));
        assert_eq!(cache.get(in_set(&cache, 5, 300)), Some(None));
        for (n, h) in keys.iter().enumerate().skip(1).take(WAYS - 1) {
            assert_eq!(cache.get(*h), Some(Some(v(n as u64, 1))));
        }
    }

    #[test]
    fn forgetting_a_key_makes_its_set_unsure() {
        let cache = VersionCache::new(10 * WAYS, true, GRACE);
        let (a, b) = (in_set(&cache, 2, 1), in_set(&cache, 2, 2));
        cache.set(a, Some(v(1, 1)), false);
        cache.forget(a);
        assert_eq!(cache.get(a), None);
        assert_eq!(cache.get(b), None);
        assert_eq!(cache.get(in_set(&cache, 7, 1)), Some(None));
        assert_eq!(cache.usage().0, 0);
    }

    #[test]
    fn an_old_tombstone_is_not_vouched_for() {
        let cache = VersionCache::new(100, true, Duration::from_secs(61));
        let a = key_hash(b"a");
        let old = Version { ts: (now_millis() - 10_000) << 16, node: NodeId(3) };
        cache.set(a, Some(old), true);
        assert_eq!(cache.get(a), None);
        cache.set(a, Some(old), false);
        assert_eq!(cache.get(a), Some(Some(old)));
    }

    #[test]
    fn readers_never_see_half_a_write() {
        let cache = std::sync::Arc::new(VersionCache::new(10 * WAYS, true, GRACE));
        let keys: Vec<KeyHash> = (0..WAYS as u64 + 2).map(|n| in_set(&cache, 1, n)).collect();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let (cache, keys, stop) = (cache.clone(), keys.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut seen = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    for (n, h) in keys.iter().enumerate() {
                        // A key's entry is always written as (ts = n + round, node = ts): any
                        // mix of two writes would break that.
                        if let Some(Some(got)) = cache.get(*h) {
                            let ts = got.ts & 0xffff;
                            assert_eq!(got.node, NodeId(u128::from(ts % 7)), "key {n}: {got:?}");
                            assert_eq!(ts % 1000, n as u64, "key {n}: {got:?}");
                            seen += 1;
                        }
                    }
                }
                seen
            })
        };
        for round in 0..20_000u64 {
            for (n, h) in keys.iter().enumerate() {
                let ts = (round % 60) * 1000 + n as u64;
                cache.set(*h, Some(v(ts, u128::from(ts % 7))), false);
            }
        }
        stop.store(true, Ordering::Relaxed);
        assert!(reader.join().expect("reader") > 0);
    }
}
