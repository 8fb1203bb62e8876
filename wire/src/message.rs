//! The messages carried inside frames: a client API and a peer API, each a typed enum per
//! subsystem, and one struct per call that knows its answer's type ([`Call`]).
//!
//! ```text
//! Request ─┬─ Client(ClientRequest) ─┬─ Status | Echo
//!          │   (any certificate)      ├─ Kv(KvRequest): Put | Get
//!          │                          ├─ Meta(MetaRequest): OpenSession | Ping | CloseSession
//!          │                          │     | Write | Read | Sync | Watch
//!          │                          └─ Topic(TopicRequest): Create | List | Describe | Delete
//!          │                                | Produce | Fetch | Offsets
//!          └─ Peer(PeerRequest) ──────┬─ Gossip | Leave | Clock
//!              (node certificates)    ├─ Replica(ReplicaRequest): Write | Read | ReadMany
//!                                     │     | Versions | Scan | Hint
//!                                     ├─ Meta(MetaPeerRequest): Zab | Propose | Touch
//!                                     │     | LeaderZxid
//!                                     ├─ Topic(TopicPeerRequest): Replicate | Leader
//!                                     └─ Repair(RepairRequest): Roots | Children | Entries
//!                                           | Push | Repaired
//! Response ── Ok | Error | Status | Echo | Clock | Kv(KvResponse) | Replica(ReplicaResponse)
//!             | Meta(MetaResponse) | Topic(TopicResponse) | Repair(RepairResponse)
//! ```
//!
//! A node refuses every [`Request::Peer`] from a client certificate; the split is structural, so
//! a new peer RPC cannot be forgotten in an allow-list. The metadata service and topics add their
//! own subsystem variants to both sides.
//!
//! **Versions.** The frame header's version byte ([`crate::VERSION`]) names this message shape;
//! a node refuses frames of another version with a fatal error that says which version it speaks.
//! Within a version the enums evolve additively only: they are serde *externally tagged* and
//! encoded with field and variant **names** (`rmp_serde::encode::write_named`), so a new variant
//! or a new field with `#[serde(default)]` does not change how the existing ones look on the wire.
//! A node that receives a variant it does not know fails to decode that one body and answers
//! [`ErrorCode::BadRequest`] naming it; the stream and connection stay up. Anything else bumps the
//! version.
//!
//! **Typed calls.** Each call is a struct implementing [`Call`]: it turns itself into a
//! [`Request`] and takes its answer out of a [`Response`], so the shape of every answer is checked
//! in one place (here) and callers get `Result<Answer, CallError>`:
//!
//! ```
//! use starling_wire::{Call, Consistency, Get, Response, Value, KvResponse};
//!
//! let get = Get { key: b"k".to_vec(), consistency: Consistency::Quorum };
//! let _request = get.into_request();
//! let answer = Response::Kv(KvResponse::Value(Value { record: None, replicas: 2 }));
//! assert_eq!(Get::answer(answer).unwrap(), Value { record: None, replicas: 2 });
//! assert!(Get::answer(Response::Ok).is_err()); // the wrong shape is an error, never a panic
//! ```

use serde::{Deserialize, Serialize};

use crate::kv::{Consistency, Key, NodeId, ReadAnswer, Record, Version};
use crate::meta::{MetaPeerRequest, MetaRequest, MetaResponse};
use crate::repair::{RepairRequest, RepairResponse};
use crate::topic::{TopicPeerRequest, TopicRequest, TopicResponse};

/// What a client or a peer asks a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// The client API: any certificate of the cluster may call it.
    Client(ClientRequest),
    /// Node to node: only a node certificate may call it.
    Peer(PeerRequest),
}

impl Request {
    /// Whether this is a peer RPC, which only a node may send.
    pub fn is_peer_rpc(&self) -> bool {
        matches!(self, Request::Peer(_))
    }

    /// A short name for logs and metrics (`kv_put`, `replica_write`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            Request::Client(ClientRequest::Status) => "status",
            Request::Client(ClientRequest::Echo(_)) => "echo",
            Request::Client(ClientRequest::Kv(KvRequest::Put(Put { value: Some(_), .. }))) => {
                "kv_put"
            }
            Request::Client(ClientRequest::Kv(KvRequest::Put(Put { value: None, .. }))) => {
                "kv_delete"
            }
            Request::Client(ClientRequest::Kv(KvRequest::Get(_))) => "kv_get",
            Request::Client(ClientRequest::Meta(m)) => m.kind(),
            Request::Peer(PeerRequest::Meta(m)) => m.kind(),
            Request::Client(ClientRequest::Topic(t)) => t.kind(),
            Request::Peer(PeerRequest::Topic(t)) => t.kind(),
            Request::Client(ClientRequest::Repair(_)) => "repair",
            Request::Client(ClientRequest::Cleanup(_)) => "cleanup",
            Request::Peer(PeerRequest::RemoveNode(_)) => "removenode",
            Request::Peer(PeerRequest::Gossip(_)) => "gossip",
            Request::Peer(PeerRequest::Leave) => "leave",
            Request::Peer(PeerRequest::Clock) => "clock",
            Request::Peer(PeerRequest::Repair(r)) => match r {
                RepairRequest::Roots { .. } => "repair_roots",
                RepairRequest::Children { .. } => "repair_children",
                RepairRequest::Entries { .. } => "repair_entries",
                RepairRequest::Push(_) => "repair_push",
                RepairRequest::Repaired { .. } => "repair_repaired",
                RepairRequest::StreamPending => "repair_stream_pending",
            },
            Request::Peer(PeerRequest::RepairStream(_)) => "repair_stream",
            Request::Peer(PeerRequest::Replica(r)) => match r {
                ReplicaRequest::Write(_) => "replica_write",
                ReplicaRequest::Read(_) => "replica_read",
                ReplicaRequest::ReadMany(_) => "replica_read_many",
                ReplicaRequest::Versions(_) => "replica_versions",
                ReplicaRequest::Scan(_) => "replica_scan",
                ReplicaRequest::Hint(_) => "replica_hint",
            },
        }
    }
}

/// The client API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientRequest {
    /// The node's status (the same JSON the HTTP status endpoint serves).
    Status,
    /// Answered with the same bytes; for benchmarks and tests.
    Echo(#[serde(with = "crate::bin")] Vec<u8>),
    /// The key-value store, coordinated by the receiving node.
    Kv(KvRequest),
    /// The metadata service (znodes, sessions, watches).
    Meta(MetaRequest),
    /// Topics: create, describe, produce, fetch.
    Topic(TopicRequest),
    /// Anti-entropy now, from the receiving node ([`crate::repair::RunRepair`]).
    Repair(crate::repair::RunRepair),
    /// Drop the ranges the receiving node no longer replicates ([`crate::repair::RunCleanup`]).
    Cleanup(crate::repair::RunCleanup),
}

/// The key-value store's client calls.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvRequest {
    /// Write or delete one key.
    Put(Put),
    /// Read one key.
    Get(Get),
}

/// The peer API: only node certificates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerRequest {
    /// An opaque `starling-gossip` message. Always sent as a [`crate::FrameKind::OneWay`] frame:
    /// gossip answers with its own messages, never with a response.
    Gossip(#[serde(with = "crate::bin")] Vec<u8>),
    /// Leave the cluster gracefully (hand the data over first).
    Leave,
    /// Take a dead node off the ring ([`crate::repair::RemoveNode`]): an operator action.
    RemoveNode(crate::repair::RemoveNode),
    /// This node's wall clock (clock-offset monitoring: a node too far off the cluster refuses
    /// to coordinate writes).
    Clock,
    /// Coordinator to replica, hint replay, streaming.
    Replica(ReplicaRequest),
    /// The metadata service's replication (ZAB) and forwarding.
    Meta(MetaPeerRequest),
    /// Partition replication, and topic calls forwarded to a partition leader.
    Topic(TopicPeerRequest),
    /// Anti-entropy: one step of a Merkle-tree sync session.
    Repair(RepairRequest),
    /// One step of a sync session that streams ranges to a node taking them over (a join, a
    /// leave's hand-over, a removal): answered as [`PeerRequest::Repair`], except that a replica
    /// still recovering a range asked (after an unclean stop it may lack writes it
    /// acknowledged) refuses, so the streaming node does not count it as a source.
    RepairStream(RepairRequest),
}

/// What a coordinator (or a joining, leaving or hint-holding node) asks a replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplicaRequest {
    /// See [`ReplicaWrite`].
    Write(Vec<Record>),
    /// See [`ReplicaRead`].
    Read(#[serde(with = "crate::bin")] Vec<u8>),
    /// See [`ReplicaReadMany`].
    ReadMany(Vec<Key>),
    /// See [`ReplicaVersions`].
    Versions(Vec<Key>),
    /// See [`ReplicaScan`].
    Scan(ReplicaScan),
    /// See [`ReplicaHint`].
    Hint(ReplicaHint),
}

/// What a node answers to a [`Request`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Done, nothing to return ([`Leave`], [`ReplicaHint`], one-way gossip).
    Ok,
    /// The request failed; `code` is for programs, `message` for people.
    Error {
        /// Machine-readable category.
        code: ErrorCode,
        /// Human-readable detail.
        message: String,
    },
    /// The status document as UTF-8 JSON bytes ([`crate::status::Status`]).
    Status(#[serde(with = "crate::bin")] Vec<u8>),
    /// The bytes of an [`Echo`].
    Echo(#[serde(with = "crate::bin")] Vec<u8>),
    /// The answering node's wall clock, in milliseconds since the Unix epoch.
    Clock {
        /// Milliseconds since the Unix epoch.
        wall_ms: u64,
    },
    /// Answers of the key-value client calls.
    Kv(KvResponse),
    /// Answers of the replica calls.
    Replica(ReplicaResponse),
    /// Answers of the metadata calls (boxed: a read's stat makes it the largest answer).
    Meta(Box<MetaResponse>),
    /// Answers of the topic calls.
    Topic(Box<TopicResponse>),
    /// Answers of the repair calls (boxed: a summary makes it one of the largest answers).
    Repair(Box<RepairResponse>),
}

impl Response {
    /// Shorthand for [`Response::Error`].
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        Response::Error { code, message: message.into() }
    }

    /// A short name of the answer's shape, for "unexpected answer" errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Response::Ok => "ok",
            Response::Error { .. } => "error",
            Response::Status(_) => "status",
            Response::Echo(_) => "echo",
            Response::Clock { .. } => "clock",
            Response::Kv(KvResponse::Written(_)) => "kv written",
            Response::Kv(KvResponse::Value(_)) => "kv value",
            Response::Replica(ReplicaResponse::Written(_)) => "replica written",
            Response::Replica(ReplicaResponse::Record(_)) => "replica record",
            Response::Replica(ReplicaResponse::Records(_)) => "replica records",
            Response::Replica(ReplicaResponse::Versions(_)) => "replica versions",
            Response::Replica(ReplicaResponse::Page(_)) => "replica page",
            Response::Meta(m) => m.kind(),
            Response::Topic(t) => t.kind(),
            Response::Repair(_) => "repair",
        }
    }
}

/// Answers of [`KvRequest`]s.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvResponse {
    /// Answer to a [`Put`].
    Written(Written),
    /// Answer to a [`Get`].
    Value(Value),
}

/// Answers of [`ReplicaRequest`]s.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplicaResponse {
    /// Answer to a [`ReplicaWrite`].
    Written(Vec<Option<Version>>),
    /// Answer to a [`ReplicaRead`].
    Record(ReadAnswer),
    /// Answer to a [`ReplicaReadMany`].
    Records(Vec<ReadAnswer>),
    /// Answer to a [`ReplicaVersions`].
    Versions(Vec<Option<Version>>),
    /// Answer to a [`ReplicaScan`].
    Page(Page),
}

/// Client: write `value` under `key` (`None` deletes), coordinated by the receiving node.
/// Answered with [`Written`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Put {
    /// The key (1 to [`crate::MAX_KEY_BYTES`] bytes).
    #[serde(with = "crate::bin")]
    pub key: Vec<u8>,
    /// The value (at most [`crate::MAX_VALUE_BYTES`]); `None` deletes the key.
    #[serde(with = "crate::bin::opt")]
    pub value: Option<Vec<u8>>,
    /// How many replicas must acknowledge.
    pub consistency: Consistency,
}

/// A write acknowledged by `acked` replicas (at least as many as its level needs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Written {
    /// The version the coordinator gave the write.
    pub version: Version,
    /// Replicas (or hint-holding stand-ins) that acknowledged it.
    pub acked: u32,
    /// How many the consistency level needed.
    pub required: u32,
    /// A replica already held this newer version of the key, so the write lost to it (last
    /// write wins) and reads will not return it.
    #[serde(default)]
    pub superseded: Option<Version>,
}

/// Client: read `key`, coordinated by the receiving node. Answered with [`Value`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Get {
    /// The key.
    #[serde(with = "crate::bin")]
    pub key: Vec<u8>,
    /// How many replicas must answer ([`Consistency::Any`] is for writes only).
    pub consistency: Consistency,
}

/// The newest record among the `replicas` that answered a [`Get`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Value {
    /// `None`: no replica has the key; a tombstone means it was deleted.
    pub record: Option<Record>,
    /// Replicas that answered.
    pub replicas: u32,
}

/// Client: the node's status. Answered with the JSON of [`crate::status::Status`], with its
/// `history` (the node's last minutes); older nodes answer without it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GetStatus;

/// Client: answered with the same bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Echo(pub Vec<u8>);

/// Peer: leave the cluster gracefully. Answered once the leave has started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leave;

/// Peer: the node's wall clock in milliseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clock;

/// Coordinator to replica (and hint replay, streaming): store these records, keeping the newer
/// version of each key. Answered once they are in the replica's write-ahead log, with one entry
/// per record, in order: the newer version the replica already held for that key (the record
/// lost to it), or `None`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaWrite(pub Vec<Record>);

/// Coordinator to replica: this replica's record of one key (tombstones included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaRead(pub Vec<u8>);

/// Coordinator to replica: this replica's records of several keys, answered in order
/// (coordinators batch the reads bound for one peer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaReadMany(pub Vec<Key>);

/// Coordinator to replica, a digest read: only the stored version of each key, answered in
/// order (`None`: not stored). A quorum read fetches the record from one replica and versions
/// from the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaVersions(pub Vec<Key>);

/// Streaming (bootstrap, decommission): records whose token is in `(start, end]` (wrapping;
/// `start == end` is the whole ring), in storage order, after the `after` cursor, at most
/// `limit`. Answered with a [`Page`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaScan {
    /// Exclusive start token.
    pub start: u64,
    /// Inclusive end token.
    pub end: u64,
    /// Where the previous page stopped.
    #[serde(with = "crate::bin::opt")]
    pub after: Option<Vec<u8>>,
    /// Most records in the page.
    pub limit: u32,
}

/// One page of a [`ReplicaScan`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Page {
    /// The records, in storage order.
    pub records: Vec<Record>,
    /// Where the next page starts (`None`: the range is done).
    #[serde(with = "crate::bin::opt")]
    pub cursor: Option<Vec<u8>>,
}

/// Coordinator to a fallback node (sloppy quorum): keep these records as hints for `target`, a
/// replica that is down, and deliver them when it is back. Answered once they are in the
/// fallback's write-ahead log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaHint {
    /// The node id of the replica the hints are for.
    pub target: NodeId,
    /// The records.
    pub records: Vec<Record>,
}

/// One call of the client or peer API: how it travels as a [`Request`], and what its answer is.
pub trait Call: Sized {
    /// What a successful call returns.
    type Answer;
    /// True for a peer call (only node certificates may send it).
    const PEER: bool;
    /// The request that carries this call.
    fn into_request(self) -> Request;
    /// The answer out of a response of the right shape; any other response comes back as the
    /// error (a [`Response::Error`] from the node, or an answer of the wrong shape).
    fn answer(response: Response) -> Result<Self::Answer, Response>;
    /// The response that carries `answer` (the serving side).
    fn respond(answer: Self::Answer) -> Response;
}

/// Implements [`Call`] for a call struct from the request and response patterns.
macro_rules! call {
    ($api:ident $call:ty => $answer:ty,
     |$s:ident| $req:expr,
     |$a:ident| $resp:expr, $pat:pat => $out:expr) => {
        impl Call for $call {
            type Answer = $answer;
            const PEER: bool = call!(@peer $api);
            fn into_request($s) -> Request {
                $req
            }
            fn answer(response: Response) -> Result<$answer, Response> {
                match response {
                    $pat => Ok($out),
                    other => Err(other),
                }
            }
            fn respond($a: $answer) -> Response {
                $resp
            }
        }
    };
    (@peer client) => {
        false
    };
    (@peer peer) => {
        true
    };
}

call!(client Put => Written,
    |self| Request::Client(ClientRequest::Kv(KvRequest::Put(self))),
    |a| Response::Kv(KvResponse::Written(a)), Response::Kv(KvResponse::Written(w)) => w);
call!(client Get => Value,
    |self| Request::Client(ClientRequest::Kv(KvRequest::Get(self))),
    |a| Response::Kv(KvResponse::Value(a)), Response::Kv(KvResponse::Value(v)) => v);
call!(client GetStatus => Vec<u8>,
    |self| Request::Client(ClientRequest::Status),
    |a| Response::Status(a), Response::Status(json) => json);
call!(client Echo => Vec<u8>,
    |self| Request::Client(ClientRequest::Echo(self.0)),
    |a| Response::Echo(a), Response::Echo(b) => b);
call!(peer Leave => (),
    |self| Request::Peer(PeerRequest::Leave),
    |_a| Response::Ok, Response::Ok => ());
call!(peer Clock => u64,
    |self| Request::Peer(PeerRequest::Clock),
    |a| Response::Clock { wall_ms: a }, Response::Clock { wall_ms } => wall_ms);
call!(peer ReplicaWrite => Vec<Option<Version>>,
    |self| Request::Peer(PeerRequest::Replica(ReplicaRequest::Write(self.0))),
    |a| Response::Replica(ReplicaResponse::Written(a)),
    Response::Replica(ReplicaResponse::Written(newer)) => newer);
call!(peer ReplicaRead => ReadAnswer,
    |self| Request::Peer(PeerRequest::Replica(ReplicaRequest::Read(self.0))),
    |a| Response::Replica(ReplicaResponse::Record(a)),
    Response::Replica(ReplicaResponse::Record(r)) => r);
call!(peer ReplicaReadMany => Vec<ReadAnswer>,
    |self| Request::Peer(PeerRequest::Replica(ReplicaRequest::ReadMany(self.0))),
    |a| Response::Replica(ReplicaResponse::Records(a)),
    Response::Replica(ReplicaResponse::Records(list)) => list);
call!(peer ReplicaVersions => Vec<Option<Version>>,
    |self| Request::Peer(PeerRequest::Replica(ReplicaRequest::Versions(self.0))),
    |a| Response::Replica(ReplicaResponse::Versions(a)),
    Response::Replica(ReplicaResponse::Versions(list)) => list);
call!(peer ReplicaScan => Page,
    |self| Request::Peer(PeerRequest::Replica(ReplicaRequest::Scan(self))),
    |a| Response::Replica(ReplicaResponse::Page(a)),
    Response::Replica(ReplicaResponse::Page(p)) => p);
/// [`Call`] for a client or peer call answered with one [`RepairResponse`] variant (boxed in
/// [`Response::Repair`]).
macro_rules! repair_call {
    ($api:ident $request:ident($call:ident) => $answer:ident, $variant:ident) => {
        impl Call for crate::repair::$call {
            type Answer = crate::repair::$answer;
            const PEER: bool = call!(@peer $api);
            fn into_request(self) -> Request {
                repair_call!(@request $api $request self)
            }
            fn answer(response: Response) -> Result<Self::Answer, Response> {
                match response {
                    Response::Repair(r) => match *r {
                        RepairResponse::$variant(s) => Ok(s),
                        other => Err(Response::Repair(Box::new(other))),
                    },
                    other => Err(other),
                }
            }
            fn respond(answer: Self::Answer) -> Response {
                Response::Repair(Box::new(RepairResponse::$variant(answer)))
            }
        }
    };
    (@request client $request:ident $s:ident) => {
        Request::Client(ClientRequest::$request($s))
    };
    (@request peer $request:ident $s:ident) => {
        Request::Peer(PeerRequest::$request($s))
    };
}
repair_call!(client Cleanup(RunCleanup) => CleanupSummary, Cleaned);
repair_call!(client Repair(RunRepair) => RepairSummary, Summary);
// Destructive and for operators, as `Leave` is: a node certificate only.
repair_call!(peer RemoveNode(RemoveNode) => RemoveSummary, Removed);
call!(peer crate::repair::RepairStep => RepairResponse,
    |self| Request::Peer(PeerRequest::Repair(self.0)),
    |a| Response::Repair(Box::new(a)),
    Response::Repair(r) => *r);
call!(peer crate::repair::RepairStreamStep => RepairResponse,
    |self| Request::Peer(PeerRequest::RepairStream(self.0)),
    |a| Response::Repair(Box::new(a)),
    Response::Repair(r) => *r);
call!(peer ReplicaHint => (),
    |self| Request::Peer(PeerRequest::Replica(ReplicaRequest::Hint(self))),
    |_a| Response::Ok, Response::Ok => ());

impl From<PeerRequest> for Request {
    fn from(r: PeerRequest) -> Self {
        Request::Peer(r)
    }
}

impl From<ClientRequest> for Request {
    fn from(r: ClientRequest) -> Self {
        Request::Client(r)
    }
}

/// Why a typed call failed after its request was delivered: the node refused it, or it answered
/// with the wrong shape (a bug, or a node of another build).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    /// The node answered with [`Response::Error`].
    #[error("{code}: {message}")]
    Refused {
        /// Machine-readable category.
        code: ErrorCode,
        /// Human-readable detail.
        message: String,
    },
    /// The node answered, but not with this call's answer.
    #[error("unexpected answer to {call}: {got}")]
    Unexpected {
        /// The call's name.
        call: &'static str,
        /// The shape of what came back.
        got: &'static str,
    },
}

impl AnswerError {
    /// The node's error code, if the node refused the call.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            AnswerError::Refused { code, .. } => Some(*code),
            AnswerError::Unexpected { .. } => None,
        }
    }
}

/// The answer of call `C` out of `response`, with the error named.
pub fn answer_of<C: Call>(response: Response) -> Result<C::Answer, AnswerError> {
    C::answer(response).map_err(|other| match other {
        Response::Error { code, message } => AnswerError::Refused { code, message },
        other => AnswerError::Unexpected {
            call: std::any::type_name::<C>().rsplit("::").next().unwrap_or("call"),
            got: other.kind(),
        },
    })
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
