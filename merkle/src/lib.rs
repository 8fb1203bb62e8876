//! Anti-entropy for the key-value store: Merkle trees over token ranges, and the sync session
//! that compares two replicas and moves only what differs. Sans-IO: no sockets, clocks or
//! threads; data is reached through the [`Replica`] trait, and the caller carries the messages.
//!
//! - [`Segments`]: the token space cut into `2^bits` equal segments, each with a cached hash (the
//!   XOR of its entries' hashes) that a write invalidates in O(1) and the next comparison
//!   recomputes from one small scan.
//! - [`RangeTree`]: the tree of one replicated range, built from its segments (clipped at the
//!   range's ends), 16 children per node.
//! - [`Session`] (the initiator) and [`respond`] (the responder, stateless): roots, then only
//!   the subtrees that differ, then the differing leaves' entry hashes, then the records each side
//!   lacks. See `ALGORITHM.md` for the exchange and why it is safe while writes continue.

pub mod mem;
mod segments;
mod session;
mod tree;

pub use segments::{Segments, DEFAULT_SEGMENT_BITS, MAX_SEGMENT_BITS};
pub use session::{respond, RepairError, Session, SessionStats};
pub use tree::{piece_count, pieces, Piece, RangeTree, FANOUT};

use starling_ring::Token;
use starling_wire::repair::TokenRange;
use starling_wire::{Record, Version};

/// The hash of one entry: a key at a version. Two replicas hold the same entry exactly when they
/// hold the same write of the key (a version names one write: its timestamp and coordinator).
pub fn entry_hash(key: &[u8], version: &Version) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(&(key.len() as u32).to_le_bytes());
    h.update(key);
    h.update(&version.ts.to_le_bytes());
    h.update(&version.node.0.to_le_bytes());
    let out = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&out.as_bytes()[..8]);
    u64::from_le_bytes(first)
}

/// A replica's local data, as a repair session needs it. Calls may block on disk: a driver runs
/// the session off its network threads.
pub trait Replica {
    /// Calls `visit` with every record whose token lies in `[lo, hi]` (both inclusive), in
    /// storage order.
    fn scan(&self, lo: Token, hi: Token, visit: &mut dyn FnMut(&Record)) -> Result<(), String>;
    /// Stores records, each merged by version (last write wins) with what is stored, and marks
    /// their segments changed ([`Segments::touched`]) once they are readable.
    fn apply(&self, records: &[Record]) -> Result<(), String>;
    /// This replica's segment hashes.
    fn segments(&self) -> &Segments;
    /// Whether a record takes part in repair. A replica leaves out tombstones it may purge, so a
    /// purged tombstone is not copied back from a replica that has not purged it yet.
    fn counts(&self, _record: &Record) -> bool {
        true
    }
}

/// Converts between the ring's range and the wire's.
pub fn wire_range(r: starling_ring::Range) -> TokenRange {
    TokenRange { start: r.start, end: r.end }
}

/// Converts between the wire's range and the ring's.
pub fn ring_range(r: TokenRange) -> starling_ring::Range {
    starling_ring::Range { start: r.start, end: r.end }
}
