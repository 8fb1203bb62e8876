//! Consistent-hashing placement for Starling: tokens, virtual nodes, zone-aware preference lists,
//! pending ranges for joins and leaves, a ring digest and balanced token allocation.
//!
//! The crate is pure. It owns no socket, clock or thread, and its only randomness is a ChaCha RNG
//! seeded by the caller ([`Ring::allocate_tokens`]). A [`Ring`] is a value computed from the
//! gossiped state of every member (id, tokens, zone, status): nodes with the same view build the
//! same ring and report the same [`Ring::digest`], whatever order they list the members in.
//!
//! - A key hashes to a 64-bit [`Token`] ([`token_of`]). A vnode with token `t` owns
//!   `(previous token, t]`, so a key belongs to the first vnode token `>= key token`, wrapping.
//! - [`Ring::replicas`] walks clockwise from that vnode and picks `n` distinct nodes, spreading
//!   them over zones first (Cassandra's `NetworkTopologyStrategy` rack rule).
//! - Joining nodes do not serve reads yet and leaving nodes still do; while ranges move,
//!   [`Ring::write_set`] adds the future owners as `pending`, so no write is lost in the hand-over.
//! - [`Ring::placement`] precomputes every vnode's lists for the per-request fast path: a binary
//!   search and two slices, no allocation.
//!
//! `ALGORITHM.md` beside this crate states the conventions, the zone walk, the allocation
//! algorithm, the digest and the invariants the tests check.
//!
//! ```
//! use starling_ring::{token_of, NodeId, NodeStatus, Ring, RingNode, DEFAULT_VNODES};
//!
//! // Three nodes join one after the other; each asks the ring it sees for balanced tokens.
//! let mut ring = Ring::new([]);
//! for id in (1..=3u128).map(NodeId) {
//!     let tokens = ring.allocate_tokens(id, DEFAULT_VNODES, 7);
//!     let node = RingNode { id, tokens, zone: None, status: NodeStatus::Normal };
//!     ring = Ring::new(ring.nodes().cloned().chain([node]));
//! }
//! let token = token_of(b"user/42");
//! let owners = ring.replicas(token, 2);
//! assert_eq!(owners.len(), 2);
//! assert_ne!(owners[0], owners[1]);
//!
//! // The fast path agrees with the slow one.
//! let placement = ring.placement(2);
//! assert_eq!(placement.replicas(token), &owners[..]);
//!
//! // A fourth node starts joining: it gets writes for what it will own, reads stay where they were.
//! let tokens = ring.allocate_tokens(NodeId(4), DEFAULT_VNODES, 7);
//! let joiner = RingNode { id: NodeId(4), tokens, zone: None, status: NodeStatus::Joining };
//! let ring = Ring::new(ring.nodes().cloned().chain([joiner]));
//! assert_eq!(ring.replicas(token, 2), owners);
//! let streams = ring.pending_ranges(NodeId(4), 2);
//! assert!(!streams.is_empty());
//! ```
#![warn(clippy::unwrap_used)]

mod alloc;
mod node;
mod placement;
mod range;
mod ring;

pub use node::{NodeStatus, RingNode};
pub use placement::Placement;
pub use range::Range;
pub use ring::{Ring, WriteSet};

/// A position on the ring, and the hash of a key.
pub type Token = u64;

/// A node's identity on the ring: the one node identity type, also gossip's and the wire's.
pub use starling_id::NodeId;

/// Virtual nodes per physical node: Cassandra 4's default, enough with [`Ring::allocate_tokens`]
/// to keep the primary-ownership spread within a few percent (see `ALGORITHM.md`).
pub const DEFAULT_VNODES: usize = 16;

/// The token of a key: the first 8 bytes of its blake3 hash, read as a big-endian `u64`.
pub fn token_of(key: &[u8]) -> Token {
    token_of_hash(blake3::hash(key).as_bytes())
}

/// The token of a key from its blake3 hash, for callers that use the hash for more than this.
pub fn token_of_hash(hash: &[u8; 32]) -> Token {
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash[..8]);
    Token::from_be_bytes(first)
}

/// Everything this crate refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// A status string that is none of `joining`, `normal`, `leaving`.
    #[error("unknown node status {0:?} (expected joining, normal or leaving)")]
    UnknownStatus(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_of_is_blake3_prefix_big_endian() {
        // blake3("") = af1349b9f5f9a1a6 a0404dea36dcc949...
        assert_eq!(token_of(b""), 0xaf13_49b9_f5f9_a1a6);
    }
}
