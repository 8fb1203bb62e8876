//! Anti-entropy (Merkle-tree repair) between two replicas: the messages of one sync session.
//!
//! The initiator asks, the responder answers; the responder keeps no session state, so a lost
//! message or a restart costs one session, never a wrong result. The exchange, and why it follows
//! the divergence rather than the data size, is in `merkle/ALGORITHM.md`:
//!
//! ```text
//! Roots    (ranges)                     -> roots                 equal roots: range done
//! Children (range, level, nodes)        -> children's hashes     descend only where they differ
//! Entries  (range, leaf, entry hashes)  -> records it has that the initiator lacks,
//!                                          entry hashes it wants
//! Push     (records)                    -> ok                    the records the responder wanted
//! Repaired (ranges, since)              -> ok                    a round covered these ranges
//! ```
//!
//! Also here: `starling repair`, `starling cleanup` and `starling removenode`, and the stream a
//! removal asks of each node that takes over some of the removed node's ranges.

use serde::{Deserialize, Serialize};

use crate::kv::Record;

/// A token range `(start, end]` (wrapping past `u64::MAX`; `start == end` is the whole ring).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TokenRange {
    pub start: u64,
    pub end: u64,
}

/// 64-bit hashes packed as 8 little-endian bytes each (one msgpack `bin`, 8 bytes a hash).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Hashes(pub Vec<u64>);

impl Serialize for Hashes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut bytes = Vec::with_capacity(self.0.len() * 8);
        for h in &self.0 {
            bytes.extend_from_slice(&h.to_le_bytes());
        }
        s.serialize_bytes(&bytes)
    }
}

impl<'de> Deserialize<'de> for Hashes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bytes = crate::bin::deserialize(d)?;
        if bytes.len() % 8 != 0 {
            return Err(serde::de::Error::custom(format!(
                "hashes: {} bytes is not a multiple of 8",
                bytes.len()
            )));
        }
        Ok(Hashes(
            bytes
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                .collect(),
        ))
    }
}

/// What a repair initiator asks a replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RepairRequest {
    /// The root hash of each range (answered with [`RepairResponse::Roots`]). `segment_bits`
    /// is the initiator's segment grain: trees compare only when both sides use the same one.
    Roots { segment_bits: u8, ranges: Vec<TokenRange> },
    /// The children's hashes of tree nodes (answered with [`RepairResponse::Children`]).
    Children { segment_bits: u8, items: Vec<Descend> },
    /// The initiator's entry hashes of leaves whose hashes differ (answered with
    /// [`RepairResponse::Entries`]).
    Entries { segment_bits: u8, items: Vec<LeafEntries> },
    /// Records the responder asked for; applied by version (last write wins).
    Push(Vec<Record>),
    /// A repair round completed over `ranges`: every replica of each held, when the round ended,
    /// every write any of them held at `since_ms` (wall clock, ms since the Unix epoch). Tombstones
    /// older than that may be purged once their grace period has passed too.
    Repaired { ranges: Vec<TokenRange>, since_ms: u64 },
    /// From the node running a [`RemoveNode`]: stream now every range the receiver gains (its
    /// pending ranges, the removed node's share) from their current replicas. Answered with
    /// [`RepairResponse::Streamed`] once done.
    StreamPending,
}

/// Nodes of one range's tree whose children the initiator wants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Descend {
    pub range: TokenRange,
    /// The nodes' level (leaves are level 0, so this is at least 1).
    pub level: u8,
    /// Node indices within the level.
    pub nodes: Vec<u32>,
}

/// Entry hashes of leaves of one range: in a [`RepairRequest::Entries`], the initiator's; in an
/// [`EntriesAnswer`], those the responder wants the records of. Each leaf is `(index, hashes)`
/// (a pair, so a leaf costs about ten bytes besides its hashes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeafEntries {
    pub range: TokenRange,
    pub leaves: Vec<(u32, Hashes)>,
}

/// What a replica answers to a [`RepairRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RepairResponse {
    /// One root hash per range asked, in order.
    Roots(Hashes),
    /// Per item, per node asked, its children's hashes (one [`Hashes`] per node, in order).
    Children(Vec<Vec<Hashes>>),
    /// The responder's side of the leaves asked.
    Entries(EntriesAnswer),
    /// Refused: the grain differs, or a range is not (or no longer) one this replica holds.
    Refused(String),
    /// Done: a [`RepairRequest::Push`] applied, a [`RepairRequest::Repaired`] recorded.
    Done,
    /// What a [`RunRepair`] did.
    Summary(RepairSummary),
    /// What a [`RunCleanup`] did.
    Cleaned(CleanupSummary),
    /// Records a [`RepairRequest::StreamPending`] received.
    Streamed(u64),
    /// What a [`RemoveNode`] did.
    Removed(RemoveSummary),
}

/// Client: take a dead node off the ring (`starling removenode`): its ranges move to the nodes
/// next on the ring, which stream them from the surviving replicas, so every range is back to
/// `N` copies. Refused while the node is up. Answered when done.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoveNode {
    /// The node's id, or a prefix of it.
    pub node: String,
}

/// What a [`RemoveNode`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoveSummary {
    /// The removed node's id.
    pub node: String,
    /// Each node that took over some of its ranges, with the records it streamed.
    pub streamed: Vec<(String, u64)>,
    pub duration_ms: u64,
}

/// Client: drop now the records of ranges the receiving node no longer replicates (they moved
/// to other nodes); refused while the ring is not agreed or a range is moving.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunCleanup {}

/// What a cleanup dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CleanupSummary {
    /// Ranges of the ring this node holds no replica of.
    pub ranges: u64,
    /// Records deleted from them.
    pub records: u64,
}

/// Client: repair every range the receiving node replicates, with each of its other replicas
/// (or only with `peer`), now; answered when done, with what it did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRepair {
    /// Only the ranges shared with this node (a node id, or a prefix of one).
    #[serde(default)]
    pub peer: Option<String>,
    /// Only the ranges that overlap these tokens.
    #[serde(default)]
    pub range: Option<TokenRange>,
}

/// One peer RPC of a repair session (the initiator's request; the answer is the responder's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepairStep(pub RepairRequest);

/// One peer RPC of a session that streams ranges to a node taking them over
/// ([`crate::PeerRequest::RepairStream`]): a replica still recovering a range asked refuses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepairStreamStep(pub RepairRequest);

impl RepairRequest {
    /// The ranges a step reads or records (none for a push, whose records are checked one by
    /// one, or a stream request).
    pub fn ranges(&self) -> Vec<TokenRange> {
        match self {
            RepairRequest::Roots { ranges, .. } | RepairRequest::Repaired { ranges, .. } => {
                ranges.clone()
            }
            RepairRequest::Children { items, .. } => items.iter().map(|d| d.range).collect(),
            RepairRequest::Entries { items, .. } => items.iter().map(|i| i.range).collect(),
            RepairRequest::Push(_) | RepairRequest::StreamPending => Vec::new(),
        }
    }
}

/// What one repair run did (a `starling repair`, or one step of continuous repair).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepairSummary {
    /// Wall clock at the start, ms since the Unix epoch.
    pub started_ms: u64,
    pub duration_ms: u64,
    /// Ranges compared (a range shared with two peers counts once).
    pub ranges: u64,
    /// Of them, those that differed on at least one replica.
    pub ranges_differing: u64,
    /// Ranges whose every replica took part: recorded as repaired (tombstones older than the
    /// start may be purged once their grace period has passed).
    pub ranges_completed: u64,
    /// Sessions run (one per peer and pass).
    pub sessions: u64,
    pub keys_received: u64,
    pub keys_sent: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Peers that could not be repaired with, and why.
    pub failed: Vec<(String, String)>,
}

/// The responder's side of the leaves of a [`RepairRequest::Entries`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct EntriesAnswer {
    /// Its records whose entry hashes the initiator did not list.
    pub records: Vec<Record>,
    /// The initiator's entry hashes it does not hold: send those records with a
    /// [`RepairRequest::Push`].
    pub want: Vec<LeafEntries>,
    /// Leaves it did not get to (the answer reached its size budget): ask again.
    pub unfinished: Vec<(TokenRange, u32)>,
}
