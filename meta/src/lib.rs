//! ZooKeeper's data model as a [`StateMachine`](starling_zab::StateMachine) for Starling's
//! metadata service: a tree of znodes (persistent, ephemeral, sequential) with ZooKeeper's
//! per-znode versions and zxids, client sessions whose ephemeral nodes go when they end,
//! conditional set and delete, all-or-nothing `multi`, and one-shot watches on data and on
//! children, fired in zxid order.
//!
//! Every change is a [`Txn`] decided by the leader (which stamps its time) and applied by every
//! server in zxid order ([`Tree`]'s `apply`); a transaction's outcome (created path, new stat,
//! or error) is the same on every server, and the server that proposed it reads it back with
//! [`Tree::take_outcome`]. Watches are not replicated: each server keeps those of its own
//! clients ([`Tree::watch`]) and hands out what fired ([`Tree::take_fired`]).
//!
//! Limits, as ZooKeeper's: data up to [`MAX_DATA`] (1 MiB) per znode, paths up to [`MAX_PATH`]
//! bytes. Paths under [`RESERVED`] hold Starling's own cluster metadata (topics, partitions,
//! leader epochs, ISR): only the node itself writes there.

pub mod path;
mod tree;

pub use tree::{Stat, Tree, WatchEvent, WatchKind, WatchedEvent, WatcherId};

use serde::{Deserialize, Serialize};

/// Largest znode data (ZooKeeper's default `jute.maxbuffer` is about the same).
pub const MAX_DATA: usize = 1 << 20;
/// Longest path, in bytes.
pub const MAX_PATH: usize = 4096;
/// Deepest msgpack nesting a transaction or snapshot may have.
pub(crate) const MAX_DEPTH: usize = 32;
/// Starling's own metadata lives under this path.
pub const RESERVED: &str = "/starling";

/// A replicated change, as the leader decided it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Txn {
    /// The leader's clock when it proposed it (znodes' `ctime` and `mtime`).
    pub time_ms: u64,
    pub op: TxnOp,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnOp {
    /// A client session opens, with its negotiated timeout.
    CreateSession { session: u64, timeout_ms: u32 },
    /// A session ends (closed by its client, or expired by the leader): its ephemeral znodes go.
    CloseSession { session: u64 },
    /// One operation, or a `multi` (all or nothing), on behalf of `session` (0: none). `internal`
    /// marks Starling's own writes, the only ones allowed under [`RESERVED`].
    Ops { session: u64, ops: Vec<Op>, multi: bool, internal: bool },
}

/// One change to the tree. `version: None` means any version (ZooKeeper's `-1`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    Create {
        path: String,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
        ephemeral: bool,
        sequential: bool,
    },
    Delete {
        path: String,
        version: Option<u32>,
    },
    SetData {
        path: String,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
        version: Option<u32>,
    },
    /// Only in a `multi`: fails the whole `multi` unless the znode has this version.
    Check {
        path: String,
        version: Option<u32>,
    },
}

/// Why an operation failed (ZooKeeper's error codes, by name).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum MetaError {
    #[error("no znode {0}")]
    NoNode(String),
    #[error("znode {0} exists")]
    NodeExists(String),
    #[error("znode {path} is at version {actual}, not {expected}")]
    BadVersion { path: String, expected: u32, actual: u32 },
    #[error("znode {0} has children")]
    NotEmpty(String),
    #[error("znode {0} is ephemeral and cannot have children")]
    NoChildrenForEphemerals(String),
    #[error("bad path {path:?}: {why}")]
    BadPath { path: String, why: String },
    #[error("data of {0} bytes is larger than the {MAX_DATA}-byte limit")]
    TooLarge(usize),
    #[error("session {0:#x} is not open (expired or closed)")]
    SessionExpired(u64),
    #[error("the sequence counter of {0} is exhausted")]
    SequenceOverflow(String),
    #[error("{0} is reserved for Starling's own metadata")]
    Reserved(String),
    #[error("not applied: another operation of the multi failed")]
    RolledBack,
    #[error("a Check is only allowed inside a multi")]
    CheckOutsideMulti,
    #[error("undecodable transaction: {0}")]
    BadTxn(String),
}

/// What one operation did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpResult {
    /// The znode created (its full name, with the sequence number if sequential).
    Created {
        path: String,
        stat: Stat,
    },
    Deleted,
    Set(Stat),
    Checked,
    Failed(MetaError),
}

/// What a transaction did: the result of each operation, or of the session change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Session(Result<(), MetaError>),
    Ops(Vec<OpResult>),
    Invalid(MetaError),
}

impl Txn {
    pub fn encode(&self) -> Vec<u8> {
        rmp_serde::to_vec_named(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Txn, MetaError> {
        let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
        // Transactions nest a few levels; deeper nesting would only recurse.
        de.set_max_depth(MAX_DEPTH);
        Txn::deserialize(&mut de).map_err(|e| MetaError::BadTxn(e.to_string()))
    }
}
