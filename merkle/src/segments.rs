//! The token space in `2^bits` segments, each with a cached hash.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use starling_ring::Token;

/// Segments by default: 65,536 (about 15 keys each per million keys a node holds; 1.5 MiB).
pub const DEFAULT_SEGMENT_BITS: u8 = 16;
/// At most 2^20 segments (24 MiB of state).
pub const MAX_SEGMENT_BITS: u8 = 20;

/// The hash of each segment of the token space (the XOR of the entry hashes of the records in
/// it), cached, and a generation per segment that every write bumps.
///
/// A cached hash is fresh when it was computed at the segment's current generation. A write
/// bumps the generation **after** it is readable ([`Segments::touched`]); a recomputation reads
/// the generation **before** it scans ([`Segments::begin`]) and stores its hash with it
/// ([`Segments::store`]), keeping it only if no newer computation was stored. So a hash is never
/// taken for fresh while it misses a write: a write readable before the scan is in it, and one
/// that was not bumped the generation past it. No lock is held while scanning and writes never
/// wait.
pub struct Segments {
    bits: u8,
    generations: Vec<AtomicU64>,
    /// `(hash, generation it was computed at)`; generation 0: never computed.
    hashes: Mutex<Vec<(u64, u64)>>,
}

impl std::fmt::Debug for Segments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segments").field("bits", &self.bits).finish()
    }
}

impl Default for Segments {
    fn default() -> Self {
        Segments::new(DEFAULT_SEGMENT_BITS)
    }
}

impl Segments {
    /// `2^bits` segments, none computed yet (the first comparison of each computes it).
    /// `bits` is clamped to `1..=MAX_SEGMENT_BITS`.
    pub fn new(bits: u8) -> Segments {
        let bits = bits.clamp(1, MAX_SEGMENT_BITS);
        let n = 1usize << bits;
        Segments {
            bits,
            generations: (0..n).map(|_| AtomicU64::new(1)).collect(),
            hashes: Mutex::new(vec![(0, 0); n]),
        }
    }

    /// The grain: there are `2^bits` segments.
    pub fn bits(&self) -> u8 {
        self.bits
    }

    /// How many segments there are.
    pub fn len(&self) -> usize {
        self.generations.len()
    }

    /// Never true (there is at least two segments); for clippy's `len` rule.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The segment a token falls in.
    pub fn segment_of(&self, token: Token) -> u32 {
        segment_of(self.bits, token)
    }

    /// A record with this token changed: call once the change is readable by a scan.
    pub fn touched(&self, token: Token) {
        self.generations[self.segment_of(token) as usize].fetch_add(1, Ordering::AcqRel);
    }

    /// Every segment changed (the data was replaced wholesale).
    pub fn touch_all(&self) {
        for g in &self.generations {
            g.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// The cached hash of `segment`, if it is fresh.
    pub fn cached(&self, segment: u32) -> Option<u64> {
        let generation = self.generations.get(segment as usize)?.load(Ordering::Acquire);
        let (hash, at) =
            *self.hashes.lock().unwrap_or_else(|p| p.into_inner()).get(segment as usize)?;
        (at == generation).then_some(hash)
    }

    /// Starts recomputing `segment`: the generation to pass to [`Segments::store`] with the hash
    /// of a scan begun after this call.
    pub fn begin(&self, segment: u32) -> u64 {
        self.generations.get(segment as usize).map_or(0, |g| g.load(Ordering::Acquire))
    }

    /// Stores a recomputed hash, unless one computed at a later generation already is.
    pub fn store(&self, segment: u32, generation: u64, hash: u64) {
        let mut hashes = self.hashes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = hashes.get_mut(segment as usize) {
            if generation >= slot.1 {
                *slot = (hash, generation);
            }
        }
    }

    /// How many segments have a fresh hash (status: how much of the tree is built).
    pub fn fresh(&self) -> usize {
        let hashes = self.hashes.lock().unwrap_or_else(|p| p.into_inner());
        hashes
            .iter()
            .zip(&self.generations)
            .filter(|((_, at), g)| *at == g.load(Ordering::Acquire))
            .count()
    }

    /// Bytes of memory this takes.
    pub fn memory_bytes(&self) -> usize {
        self.len() * (8 + 16)
    }
}

/// The segment `token` falls in, with `2^bits` segments.
pub(crate) fn segment_of(bits: u8, token: Token) -> u32 {
    (token >> (64 - u32::from(bits))) as u32
}

/// The first and last token of `segment`.
pub(crate) fn segment_bounds(bits: u8, segment: u32) -> (Token, Token) {
    let shift = 64 - u32::from(bits);
    let lo = u64::from(segment) << shift;
    (lo, lo | ((1u64 << shift) - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_after_the_scan_began_leaves_the_hash_stale() {
        let s = Segments::new(4);
        assert_eq!(s.cached(3), None, "nothing computed at first");
        let g = s.begin(3);
        s.store(3, g, 42);
        assert_eq!(s.cached(3), Some(42));
        let g = s.begin(3);
        s.touched(segment_bounds(4, 3).0); // a write lands during the scan
        s.store(3, g, 7);
        assert_eq!(s.cached(3), None, "the write is not known to be in the hash");
        // An older computation stored late does not replace a newer one.
        let old = s.begin(3);
        s.touched(segment_bounds(4, 3).1);
        let new = s.begin(3);
        s.store(3, new, 9);
        s.store(3, old, 8);
        assert_eq!(s.cached(3), Some(9));
    }

    #[test]
    fn bounds_tile_the_token_space() {
        for bits in [1u8, 4, 16, 20] {
            let n = 1u32 << bits;
            assert_eq!(segment_bounds(bits, 0).0, 0);
            assert_eq!(segment_bounds(bits, n - 1).1, u64::MAX);
            for seg in [0, 1, n / 2, n - 1] {
                let (lo, hi) = segment_bounds(bits, seg);
                assert_eq!(segment_of(bits, lo), seg);
                assert_eq!(segment_of(bits, hi), seg);
            }
        }
    }
}
