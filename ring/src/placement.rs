use std::fmt;

use crate::{NodeId, Range, Token};

/// Every vnode's replica and pending lists for one replication factor, precomputed by
/// [`crate::Ring::placement`]: a lookup is a binary search and two slices, no allocation.
///
/// The vnode positions are the tokens of the current and the future ring together, so within
/// one position's range `(previous, end]` both the current and the future owners are constant.
/// It answers exactly what [`crate::Ring::replicas`] and [`crate::Ring::write_set`] answer.
#[derive(Clone, PartialEq, Eq)]
pub struct Placement {
    n: usize,
    /// Sorted vnode positions; position `i` covers `(ends[i - 1], ends[i]]`, wrapping.
    ends: Vec<Token>,
    /// `lists[bounds[3i]..bounds[3i + 1]]` is position `i`'s natural list,
    /// `lists[bounds[3i + 1]..bounds[3i + 2]]` its pending list (future owners not current yet)
    /// and `lists[bounds[3i + 2]..bounds[3i + 3]]` its dropping list (current owners that are
    /// not future ones).
    bounds: Vec<usize>,
    lists: Vec<NodeId>,
}

impl Placement {
    pub(crate) fn from_parts(
        n: usize,
        ends: Vec<Token>,
        bounds: Vec<usize>,
        lists: Vec<NodeId>,
    ) -> Placement {
        debug_assert_eq!(bounds.len(), 3 * ends.len() + 1);
        debug_assert_eq!(bounds.last().copied(), Some(lists.len()));
        Placement { n, ends, bounds, lists }
    }

    /// The replication factor this was computed for.
    pub fn n(&self) -> usize {
        self.n
    }

    /// The number of vnode positions.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether the ring had no tokens (every lookup answers an empty list).
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The current owners of `token`, in preference order: [`crate::Ring::replicas`].
    pub fn replicas(&self, token: Token) -> &[NodeId] {
        self.write_set(token).0
    }

    /// `(natural, pending)` for a write of `token`: [`crate::Ring::write_set`].
    pub fn write_set(&self, token: Token) -> (&[NodeId], &[NodeId]) {
        match self.position(token) {
            Some(i) => {
                let l = self.lists_at(i);
                (l.0, l.1)
            }
            None => (&[], &[]),
        }
    }

    /// `(pending, dropping)` for `token`: the future owners that are not current yet, and the
    /// current owners that are not future ones. Both empty unless a range that holds `token` is
    /// moving (a node joining or leaving). The future owners are the natural ones less
    /// `dropping`, plus `pending`.
    pub fn transition(&self, token: Token) -> (&[NodeId], &[NodeId]) {
        match self.position(token) {
            Some(i) => {
                let l = self.lists_at(i);
                (l.1, l.2)
            }
            None => (&[], &[]),
        }
    }

    /// Every position as `(range, natural, pending)`, in token order. The ranges cover the ring
    /// exactly once; a ring with one position yields [`Range::FULL`].
    pub fn segments(&self) -> impl Iterator<Item = (Range, &[NodeId], &[NodeId])> {
        let m = self.ends.len();
        (0..m).map(move |i| {
            let end = self.ends[i];
            let range =
                if m == 1 { Range::FULL } else { Range { start: self.ends[(i + m - 1) % m], end } };
            let (natural, pending, _) = self.lists_at(i);
            (range, natural, pending)
        })
    }

    /// The position owning `token`: the first end `>= token`, wrapping to the first.
    fn position(&self, token: Token) -> Option<usize> {
        if self.ends.is_empty() {
            return None;
        }
        let i = self.ends.partition_point(|&end| end < token);
        Some(if i == self.ends.len() { 0 } else { i })
    }

    fn lists_at(&self, i: usize) -> (&[NodeId], &[NodeId], &[NodeId]) {
        let b = &self.bounds[3 * i..3 * i + 4];
        (&self.lists[b[0]..b[1]], &self.lists[b[1]..b[2]], &self.lists[b[2]..b[3]])
    }
}

impl fmt::Debug for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Placement")
            .field("n", &self.n)
            .field("positions", &self.ends.len())
            .field("entries", &self.lists.len())
            .finish()
    }
}
