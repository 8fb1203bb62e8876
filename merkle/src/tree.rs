//! The Merkle tree of one token range.

use starling_ring::{token_of, Token};
use starling_wire::repair::TokenRange;

use crate::segments::{segment_bounds, segment_of};
use crate::{entry_hash, Replica};

/// Children per node.
pub const FANOUT: usize = 16;

/// A leaf of a range's tree: the tokens `[lo, hi]`, a whole segment or the part of one that lies
/// in the range (at the range's two ends).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    pub lo: Token,
    pub hi: Token,
    /// The segment, when the piece is all of it (its cached hash serves).
    pub segment: Option<u32>,
}

/// The leaves of `range`'s tree with `2^bits` segments, in range order (from just after `start`,
/// wrapping past the largest token; the whole ring from token 0). Both replicas of a range compute
/// the same list, so their trees have the same shape.
pub fn pieces(range: TokenRange, bits: u8) -> Vec<Piece> {
    let intervals: Vec<(Token, Token)> = if range.start == range.end {
        vec![(0, Token::MAX)]
    } else if range.start < range.end {
        vec![(range.start + 1, range.end)]
    } else if range.start == Token::MAX {
        vec![(0, range.end)]
    } else {
        vec![(range.start + 1, Token::MAX), (0, range.end)]
    };
    let mut out = Vec::new();
    for (a, b) in intervals {
        for seg in segment_of(bits, a)..=segment_of(bits, b) {
            let (slo, shi) = segment_bounds(bits, seg);
            let (lo, hi) = (a.max(slo), b.min(shi));
            out.push(Piece { lo, hi, segment: (lo == slo && hi == shi).then_some(seg) });
        }
    }
    out
}

/// How many leaves `range`'s tree has with `2^bits` segments ([`pieces`]'s length), without
/// listing them.
pub fn piece_count(range: TokenRange, bits: u8) -> usize {
    let count = |a: Token, b: Token| (segment_of(bits, b) - segment_of(bits, a)) as usize + 1;
    if range.start == range.end {
        1 << bits
    } else if range.start < range.end {
        count(range.start + 1, range.end)
    } else if range.start == Token::MAX {
        count(0, range.end)
    } else {
        count(range.start + 1, Token::MAX) + count(0, range.end)
    }
}

/// The XOR of the entry hashes of the records in `piece` that take part in repair, from the
/// segment cache when the piece is a whole segment (recomputed and cached if stale): what
/// [`RangeTree::build`]'s scans per run must agree with.
#[cfg(test)]
fn piece_hash<R: Replica + ?Sized>(replica: &R, piece: &Piece) -> Result<u64, String> {
    if let Some(seg) = piece.segment {
        let segments = replica.segments();
        if let Some(h) = segments.cached(seg) {
            return Ok(h);
        }
        let generation = segments.begin(seg);
        let h = scan_hash(replica, piece)?;
        segments.store(seg, generation, h);
        return Ok(h);
    }
    scan_hash(replica, piece)
}

#[cfg(test)]
fn scan_hash<R: Replica + ?Sized>(replica: &R, piece: &Piece) -> Result<u64, String> {
    let mut h = 0u64;
    replica.scan(piece.lo, piece.hi, &mut |r| {
        if replica.counts(r) {
            h ^= entry_hash(&r.key, &r.version);
        }
    })?;
    Ok(h)
}

/// The tree of one range: level 0 holds one hash per [`Piece`]; each level above holds one hash
/// per [`FANOUT`] nodes of the one below (the XOR of them), up to a single root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeTree {
    pub range: TokenRange,
    pub pieces: Vec<Piece>,
    /// `levels[0]`: the leaves; the last level has one node, the root.
    pub levels: Vec<Vec<u64>>,
}

impl RangeTree {
    /// Builds the tree of `range` from `replica`'s data (cached segment hashes where fresh).
    ///
    /// Each run of adjacent pieces without a fresh hash is read in one scan, its records binned
    /// by token: a store opens one iterator per run instead of one per piece (on a fresh node,
    /// 2^16 segments cost as many iterators, most over nothing).
    pub fn build<R: Replica + ?Sized>(replica: &R, range: TokenRange) -> Result<RangeTree, String> {
        let pieces = pieces(range, replica.segments().bits());
        let segments = replica.segments();
        let fresh = |p: &Piece| p.segment.and_then(|s| segments.cached(s));
        let mut leaves = vec![0u64; pieces.len()];
        let mut i = 0;
        while i < pieces.len() {
            if let Some(h) = fresh(&pieces[i]) {
                leaves[i] = h;
                i += 1;
                continue;
            }
            let start = i;
            i += 1;
            while i < pieces.len()
                && pieces[i - 1].hi.checked_add(1) == Some(pieces[i].lo)
                && fresh(&pieces[i]).is_none()
            {
                i += 1;
            }
            let run = &pieces[start..i];
            // Begun before the scan: a write meanwhile makes the hash stored below stale.
            let begun: Vec<Option<(u32, u64)>> =
                run.iter().map(|p| p.segment.map(|s| (s, segments.begin(s)))).collect();
            let out = &mut leaves[start..i];
            let (lo, hi) = (run[0].lo, run[run.len() - 1].hi);
            replica.scan(lo, hi, &mut |r| {
                if replica.counts(r) {
                    // A run of one piece needs no token to place a record.
                    let at = if run.len() == 1 {
                        0
                    } else {
                        let t = token_of(&r.key);
                        run.partition_point(|p| p.hi < t)
                    };
                    if let Some(h) = out.get_mut(at) {
                        *h ^= entry_hash(&r.key, &r.version);
                    }
                }
            })?;
            for (b, h) in begun.iter().zip(out.iter()) {
                if let Some((seg, generation)) = b {
                    segments.store(*seg, *generation, *h);
                }
            }
        }
        Ok(RangeTree::from_leaves(range, pieces, leaves))
    }

    /// A tree over given leaf hashes.
    pub fn from_leaves(range: TokenRange, pieces: Vec<Piece>, leaves: Vec<u64>) -> RangeTree {
        let mut levels = vec![leaves];
        while levels.last().map_or(0, Vec::len) > 1 {
            let below = levels.last().map(Vec::as_slice).unwrap_or(&[]);
            let up = below.chunks(FANOUT).map(|c| c.iter().fold(0, |a, h| a ^ h)).collect();
            levels.push(up);
        }
        RangeTree { range, pieces, levels }
    }

    /// The root hash.
    pub fn root(&self) -> u64 {
        self.levels.last().and_then(|l| l.first()).copied().unwrap_or(0)
    }

    /// The level of the root (0 when the range is one leaf).
    pub fn top(&self) -> u8 {
        (self.levels.len() - 1) as u8
    }

    /// The children's hashes of node `node` at `level` (`None`: no such node, or a leaf).
    pub fn children(&self, level: u8, node: u32) -> Option<&[u64]> {
        let level = usize::from(level);
        if level == 0 || level >= self.levels.len() || node as usize >= self.levels[level].len() {
            return None;
        }
        let below = &self.levels[level - 1];
        let first = node as usize * FANOUT;
        Some(&below[first..(first + FANOUT).min(below.len())])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn covered(range: TokenRange, bits: u8) -> u128 {
        pieces(range, bits).iter().map(|p| u128::from(p.hi - p.lo) + 1).sum()
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// Built with one scan per run of pieces without a fresh hash, a tree has the leaves
        /// that hashing each piece on its own gives, whichever segments were fresh (also for
        /// ranges that wrap past the largest token), and caches what it scanned.
        #[test]
        fn one_scan_per_run_gives_each_piece_its_own_hash(
            keys in proptest::collection::vec(0u32..5000, 0..300),
            start in proptest::prelude::any::<u64>(),
            end in proptest::prelude::any::<u64>(),
            cached in proptest::collection::vec(proptest::prelude::any::<bool>(), 16),
        ) {
            let bits = 10;
            let replica = crate::mem::MemReplica::new(bits);
            let records: Vec<starling_wire::Record> = keys
                .iter()
                .map(|k| starling_wire::Record {
                    key: format!("k{k}").into_bytes(),
                    version: starling_wire::Version { ts: u64::from(*k) * 7, node: Default::default() },
                    value: Some(vec![1]),
                })
                .collect();
            crate::Replica::apply(&replica, &records).unwrap();
            let range = TokenRange { start, end };
            let ps = pieces(range, bits);
            // Some segments already hashed (fresh), the others not.
            for (i, p) in ps.iter().enumerate() {
                if cached[i % cached.len()] {
                    piece_hash(&replica, p).unwrap();
                }
            }
            let tree = RangeTree::build(&replica, range).unwrap();
            let each: Vec<u64> = ps.iter().map(|p| scan_hash(&replica, p).unwrap()).collect();
            proptest::prop_assert_eq!(&tree.levels[0], &each);
            let segments = crate::Replica::segments(&replica);
            for (p, h) in ps.iter().zip(&each) {
                if let Some(seg) = p.segment {
                    proptest::prop_assert_eq!(segments.cached(seg), Some(*h));
                }
            }
        }
    }

    #[test]
    fn pieces_cover_exactly_the_range() {
        let bits = 4;
        let seg = 1u64 << 60;
        for (start, end) in [
            (0u64, 0u64),
            (5, 5),
            (0, seg - 1),
            (seg - 1, 3 * seg + 7),
            (u64::MAX - 3, 10),
            (u64::MAX, 10),
            (10, u64::MAX),
            (3 * seg, 2 * seg),
        ] {
            let r = TokenRange { start, end };
            let width = match end.wrapping_sub(start) {
                0 => 1u128 << 64,
                w => u128::from(w),
            };
            assert_eq!(covered(r, bits), width, "{r:?}");
            let ring = starling_ring::Range { start, end };
            for p in pieces(r, bits) {
                assert!(ring.contains(p.lo) && ring.contains(p.hi), "{r:?} {p:?}");
                if let Some(s) = p.segment {
                    assert_eq!(segment_bounds(bits, s), (p.lo, p.hi));
                }
            }
        }
        assert_eq!(pieces(TokenRange { start: 0, end: 0 }, 16).len(), 1 << 16);
        for (start, end) in
            [(0u64, 0u64), (seg - 1, 3 * seg + 7), (u64::MAX - 3, 10), (u64::MAX, 10)]
        {
            let r = TokenRange { start, end };
            assert_eq!(piece_count(r, bits), pieces(r, bits).len(), "{r:?}");
        }
    }

    #[test]
    fn the_tree_xors_upwards() {
        let r = TokenRange { start: 0, end: 0 };
        let ps = pieces(r, 8);
        let leaves: Vec<u64> =
            (0..ps.len() as u64).map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15)).collect();
        let t = RangeTree::from_leaves(r, ps, leaves.clone());
        assert_eq!(t.levels.iter().map(Vec::len).collect::<Vec<_>>(), vec![256, 16, 1]);
        assert_eq!(t.root(), leaves.iter().fold(0, |a, h| a ^ h));
        assert_eq!(t.children(2, 0).map(<[u64]>::len), Some(16));
        assert_eq!(t.children(1, 15), Some(&leaves[240..256]));
        assert_eq!(t.children(1, 16), None);
        assert_eq!(t.children(0, 0), None);
        assert_eq!(t.children(3, 0), None);
    }
}
