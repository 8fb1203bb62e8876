//! The messages carried inside frames.
//!
//! Both enums are serde *externally tagged* and encoded with field and variant **names**
//! (`rmp_serde::encode::write_named`), so adding a variant (the KV store's `Put`/`Get`/`Delete`,
//! the metadata service's calls) or a field with `#[serde(default)]` later does not change how the
//! existing ones look on the wire. An old peer that receives a variant it does not know fails to
//! decode that one body and answers `ErrorCode::BadRequest`; the stream and connection stay up.

use serde::{Deserialize, Serialize};

use crate::kv::{Consistency, Record, Version};

/// What one peer (or a client) asks another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// An opaque `starling-gossip` message. Always sent as a [`crate::FrameKind::OneWay`] frame:
    /// gossip answers with its own messages, never with a response.
    Gossip(#[serde(with = "crate::bin")] Vec<u8>),
    /// Ask for the node's status (the same JSON the HTTP status endpoint serves).
    Status,
    /// Ask the node to leave the cluster gracefully.
    Leave,
    /// Answered with [`Response::Echo`] carrying the same bytes; for benchmarks and tests.
    Echo(#[serde(with = "crate::bin")] Vec<u8>),
    /// Client: write `value` under `key` (`None` deletes), coordinated by the receiving node.
    KvPut {
        #[serde(with = "crate::bin")]
        key: Vec<u8>,
        #[serde(with = "crate::bin::opt")]
        value: Option<Vec<u8>>,
        consistency: Consistency,
    },
    /// Client: read `key`, coordinated by the receiving node.
    KvGet {
        #[serde(with = "crate::bin")]
        key: Vec<u8>,
        consistency: Consistency,
    },
    /// Coordinator to replica (and hint replay): store these records, keeping the newer version
    /// of each key. Answered once they are in the replica's write-ahead log.
    ReplicaWrite(Vec<Record>),
    /// Coordinator to replica: this replica's record of `key` (tombstones included).
    ReplicaRead(#[serde(with = "crate::bin")] Vec<u8>),
    /// Coordinator to replica: this replica's records of several keys, answered in order with
    /// [`Response::ReplicaRecordMany`] (coordinators batch the reads bound for one peer).
    ReplicaReadMany(Vec<crate::kv::Key>),
    /// Streaming (bootstrap): records whose token is in `(start, end]` (wrapping; `start == end`
    /// is the whole ring), in storage order, after the `after` cursor, at most `limit`.
    ReplicaScan {
        start: u64,
        end: u64,
        #[serde(with = "crate::bin::opt")]
        after: Option<Vec<u8>>,
        limit: u32,
    },
    /// Coordinator to replica, a digest read: only the stored version of each key, answered in
    /// order with [`Response::ReplicaVersions`]. A quorum read fetches the record from one
    /// replica and versions from the others.
    ReplicaVersions(Vec<crate::kv::Key>),
    /// Coordinator to a fallback node (sloppy quorum): keep these records as hints for `target`,
    /// a replica that is down, and deliver them when it is back. Answered once they are in the
    /// fallback's write-ahead log.
    ReplicaHint { target: u128, records: Vec<Record> },
    /// Peer to peer: this node's wall clock, answered with [`Response::Clock`] (clock-offset
    /// monitoring: a node too far off the cluster refuses to coordinate writes).
    Clock,
}

impl Request {
    /// Whether this is a peer RPC, which only a node may send (replica reads and writes, hints,
    /// scans, gossip, clock probes, leave), as opposed to the client API (`KvPut`, `KvGet`,
    /// `Status`, `Echo`).
    pub fn is_peer_rpc(&self) -> bool {
        match self {
            Request::Status | Request::Echo(_) | Request::KvPut { .. } | Request::KvGet { .. } => {
                false
            }
            Request::Gossip(_)
            | Request::Leave
            | Request::ReplicaWrite(_)
            | Request::ReplicaRead(_)
            | Request::ReplicaReadMany(_)
            | Request::ReplicaScan { .. }
            | Request::ReplicaVersions(_)
            | Request::ReplicaHint { .. }
            | Request::Clock => true,
        }
    }
}

/// What a node answers to a [`Request`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// The status document as UTF-8 JSON bytes. Kept as bytes so this crate does not pin the
    /// status schema, which belongs to `node`.
    Status(#[serde(with = "crate::bin")] Vec<u8>),
    /// The request was carried out and has nothing to return.
    Ok,
    /// The bytes of a [`Request::Echo`].
    Echo(#[serde(with = "crate::bin")] Vec<u8>),
    /// A write was acknowledged by `acked` replicas (at least as many as its level needs).
    /// `superseded`: a replica already held this newer version of the key, so the write lost to
    /// it (last write wins) and reads will not return it.
    KvWritten {
        version: Version,
        acked: u32,
        required: u32,
        #[serde(default)]
        superseded: Option<Version>,
    },
    /// The newest record among the `replicas` that answered (`None`: no replica has the key; a
    /// tombstone means it was deleted).
    KvValue { record: Option<Record>, replicas: u32 },
    /// A replica's record of one key.
    ReplicaRecord(Option<Record>),
    /// Answers to a [`Request::ReplicaReadMany`], one per key, in order.
    ReplicaRecordMany(Vec<crate::kv::ReadAnswer>),
    /// One page of a [`Request::ReplicaScan`]: `cursor` is where the next page starts (`None`:
    /// the range is done).
    ReplicaRecords {
        records: Vec<Record>,
        #[serde(with = "crate::bin::opt")]
        cursor: Option<Vec<u8>>,
    },
    /// Answers to a [`Request::ReplicaVersions`], one per key, in order (`None`: not stored).
    ReplicaVersions(Vec<Option<Version>>),
    /// Answer to a [`Request::ReplicaWrite`]: the records are in the replica's write-ahead log.
    /// One entry per record, in order: the newer version the replica already held for that key
    /// (the record lost to it), or `None`.
    ReplicaWritten(Vec<Option<Version>>),
    /// The answering node's wall clock, in milliseconds since the Unix epoch.
    Clock { wall_ms: u64 },
    /// The request failed; `code` is for programs, `message` for people.
    Error {
        /// Machine-readable category.
        code: ErrorCode,
        /// Human-readable detail.
        message: String,
    },
}

impl Response {
    /// Shorthand for [`Response::Error`].
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        Response::Error { code, message: message.into() }
    }
}

/// Why a request failed.
///
/// `#[non_exhaustive]` because new codes will come with new request kinds; a peer that receives a
/// code it does not know fails to decode the response, which the caller sees as a decode error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ErrorCode {
    /// The frame or its body could not be decoded, or the request is not valid here.
    BadRequest,
    /// The frame was over the size limit for its kind.
    TooLarge,
    /// The node cannot serve this now (shutting down, overloaded, not ready); try another.
    Unavailable,
    /// A bug or an unexpected failure on the serving node.
    Internal,
    /// Sent, but too few replicas answered in time; the write may still have been applied by
    /// some of them.
    Timeout,
    /// The sender's certificate does not allow this request (a peer RPC from a client
    /// certificate).
    Forbidden,
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            ErrorCode::BadRequest => "bad request",
            ErrorCode::TooLarge => "too large",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal error",
            ErrorCode::Timeout => "timed out",
            ErrorCode::Forbidden => "forbidden",
        };
        f.write_str(s)
    }
}
