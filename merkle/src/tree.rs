//! The Merkle tree of one token range.

use starling_ring::Token;
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
/// segment cache when the piece is a whole segment (recomputed and cached if stale).
pub(crate) fn piece_hash<R: Replica + ?Sized>(replica: &R, piece: &Piece) -> Result<u64, String> {
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
    pub fn build<R: Replica + ?Sized>(replica: &R, range: TokenRange) -> Result<RangeTree, String> {
        let pieces = pieces(range, replica.segments().bits());
        let leaves =
            pieces.iter().map(|p| piece_hash(replica, p)).collect::<Result<Vec<_>, _>>()?;
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
