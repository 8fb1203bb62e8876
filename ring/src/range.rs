use std::fmt;

use serde::{Deserialize, Serialize};

use crate::Token;

/// The tokens `(start, end]`, wrapping past `u64::MAX` to 0 when `start > end`.
///
/// `start == end` means the whole ring (every token); [`Range::FULL`] is the canonical one, and
/// the ring returns it whenever a node holds everything. An empty range cannot be expressed and
/// is never returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Range {
    /// Exclusive.
    pub start: Token,
    /// Inclusive.
    pub end: Token,
}

impl Range {
    /// The whole ring.
    pub const FULL: Range = Range { start: 0, end: 0 };

    /// Whether this is the whole ring.
    pub fn is_full(&self) -> bool {
        self.start == self.end
    }

    /// Whether `token` lies in `(start, end]`.
    pub fn contains(&self, token: Token) -> bool {
        match self.start.cmp(&self.end) {
            std::cmp::Ordering::Equal => true,
            std::cmp::Ordering::Less => self.start < token && token <= self.end,
            std::cmp::Ordering::Greater => token > self.start || token <= self.end,
        }
    }

    /// Whether some token lies in both (on the circle, two arcs share a token exactly when one
    /// holds the other's last token).
    pub fn overlaps(&self, other: &Range) -> bool {
        self.contains(other.end) || other.contains(self.end)
    }

    /// How many tokens it holds: `2^64` for the whole ring.
    pub fn width(&self) -> u128 {
        match self.end.wrapping_sub(self.start) {
            0 => 1u128 << 64,
            w => u128::from(w),
        }
    }
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_full() {
            write!(f, "(full ring)")
        } else {
            write!(f, "({}, {}]", self.start, self.end)
        }
    }
}

/// Merges a cyclic run of segments into maximal labelled arcs.
///
/// Segment `i` is `(ends[i - 1], ends[i]]` (the first one starts at the last end); `labels[i]`
/// says whether it is wanted and with what. Neighbouring segments with equal labels merge, also
/// across the wrap. Arcs come out sorted by start, so the result does not depend on where the
/// segment list began.
pub(crate) fn merge_arcs<L: PartialEq + Clone>(
    ends: &[Token],
    labels: &[Option<L>],
) -> Vec<(Range, L)> {
    debug_assert_eq!(ends.len(), labels.len());
    let m = ends.len();
    // A boundary: a segment whose label differs from its predecessor's.
    let Some(first) = (0..m).find(|&i| labels[i] != labels[(i + m - 1) % m]) else {
        // One label all around: everything or nothing.
        return match labels.first() {
            Some(Some(label)) => vec![(Range::FULL, label.clone())],
            _ => Vec::new(),
        };
    };
    let mut arcs = Vec::new();
    let mut i = 0;
    while i < m {
        let run_start = (first + i) % m;
        let mut len = 1;
        while i + len < m && labels[(first + i + len) % m] == labels[run_start] {
            len += 1;
        }
        if let Some(label) = &labels[run_start] {
            let start = ends[(run_start + m - 1) % m];
            let end = ends[(run_start + len - 1) % m];
            arcs.push((Range { start, end }, label.clone()));
        }
        i += len;
    }
    arcs.sort_by_key(|(range, _)| range.start);
    arcs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contains_plain_wrapping_and_full() {
        let plain = Range { start: 10, end: 20 };
        assert!(!plain.contains(10) && plain.contains(11) && plain.contains(20));
        assert!(!plain.contains(21));
        let wrap = Range { start: 20, end: 10 };
        assert!(wrap.contains(u64::MAX) && wrap.contains(0) && wrap.contains(10));
        assert!(!wrap.contains(15) && !wrap.contains(20) && wrap.contains(21));
        let full = Range { start: 7, end: 7 };
        assert!(full.contains(7) && full.contains(0) && full.is_full());
        assert_eq!(full.width(), 1 << 64);
        assert_eq!(wrap.width(), u128::from(u64::MAX) - 9);
    }

    #[test]
    fn ranges_overlap_when_they_share_a_token() {
        let r = |start, end| Range { start, end };
        assert!(r(0, 10).overlaps(&r(5, 20)) && r(5, 20).overlaps(&r(0, 10)));
        assert!(r(0, 10).overlaps(&r(2, 8)) && r(2, 8).overlaps(&r(0, 10)));
        assert!(!r(0, 10).overlaps(&r(10, 20)) && !r(10, 20).overlaps(&r(0, 10)));
        // Wrapping past the top, and the whole ring.
        assert!(r(u64::MAX - 5, 3).overlaps(&r(1, 2)));
        assert!(r(u64::MAX - 5, 3).overlaps(&r(u64::MAX - 2, u64::MAX)));
        assert!(!r(u64::MAX - 5, 3).overlaps(&r(3, 100)));
        assert!(Range::FULL.overlaps(&r(7, 8)) && r(7, 8).overlaps(&Range::FULL));
    }

    #[test]
    fn merge_joins_neighbours_and_wraps() {
        let ends = [10, 20, 30, 40];
        let labels = [Some('a'), None, Some('a'), Some('a')];
        // (40,10] a, (10,20] -, (20,30] a, (30,40] a => one arc (20, 10].
        assert_eq!(merge_arcs(&ends, &labels), vec![(Range { start: 20, end: 10 }, 'a')]);
        let labels = [Some('a'), Some('b'), Some('b'), None];
        assert_eq!(
            merge_arcs(&ends, &labels),
            vec![(Range { start: 10, end: 30 }, 'b'), (Range { start: 40, end: 10 }, 'a')]
        );
        assert_eq!(merge_arcs(&ends, &[Some(1); 4]), vec![(Range::FULL, 1)]);
        assert!(merge_arcs::<u8>(&ends, &[None; 4]).is_empty());
        assert!(merge_arcs::<u8>(&[], &[]).is_empty());
    }
}
