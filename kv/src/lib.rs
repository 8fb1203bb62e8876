//! Starling's key-value coordinator as sans-IO state machines, in the shape of `quinn-proto` and
//! `raft-rs`: a request is a [`WriteOp`] or a [`ReadOp`] that takes inputs with the current time
//! and queues what to send; the caller (the `starlingd` driver, or the deterministic simulator)
//! carries the sends out and feeds the answers back. No socket, no clock, no thread, no runtime:
//! the same code runs in `starlingd` and in a seeded simulation of a whole cluster.
//!
//! What an op decides: placement (the key's natural and pending replicas from a [`RingView`]),
//! the level's arithmetic ([`required_for_write`], [`required_for_read`]), sloppy-quorum
//! stand-ins, the acknowledgement tally, hints for replicas that failed, digest reads, the
//! speculative retry, blocking read repair and the deadline. What it leaves to the caller: the
//! wall clock and the [`hlc::Hlc`] (the caller assigns the version), storage, and the network.
//!
//! # Driving an op
//!
//! ```
//! use std::time::Instant;
//! use starling_kv::{Answer, KvConfig, RingView, Send, WriteOp};
//! use starling_ring::{NodeStatus, RingNode};
//! use starling_wire::{Consistency, NodeId, Record, Version};
//!
//! // A one-node ring: this node (id 1) replicates every key.
//! let now = Instant::now();
//! let node = RingNode { id: NodeId(1), tokens: vec![0], zone: None, status: NodeStatus::Normal };
//! let mut view = RingView::empty(NodeId(1), 1);
//! view.ring = std::sync::Arc::new(starling_ring::Ring::new([node]));
//! view.placement = std::sync::Arc::new(view.ring.placement(1));
//!
//! let record = Record { key: b"k".to_vec(), version: Version { ts: 1, node: NodeId(1) }, value: None };
//! let cfg = KvConfig::default();
//! let mut op = WriteOp::start(now, &cfg, &view, Consistency::One, record).unwrap();
//! while let Some(out) = op.poll_send() {
//!     // Carry `out.send` out (here: this node's own store), then hand the answer back.
//!     assert!(matches!(out.send, Send::Write { to: NodeId(1), .. }));
//!     op.handle_answer(now, out.id, Answer::Stored { newer: None });
//! }
//! let written = op.poll_result().unwrap().unwrap();
//! assert_eq!((written.acked, written.required), (1, 1));
//! assert!(op.is_finished());
//! ```

pub mod clock;
pub mod hlc;
mod read;
pub mod replica;
pub mod view;
mod write;

use std::time::{Duration, Instant};

use starling_wire::{Consistency, ErrorCode, Record, Response, Version};

pub use read::{Read, ReadOp};
pub use view::RingView;
pub use write::{WriteOp, Written};

/// Replica ids (the ring's node keys).
pub use starling_ring::NodeId;

/// Settings of the KV layer.
#[derive(Debug, Clone)]
pub struct KvConfig {
    /// Replicas per key (`N`).
    pub replication: usize,
    /// How long a coordinator waits for write acknowledgements.
    pub write_timeout: Duration,
    /// How long a coordinator waits for read answers (read repair included).
    pub read_timeout: Duration,
    /// No hints are stored for a replica down longer than this.
    pub hint_window: Duration,
    /// Deletes are kept at least this long. A hint older than it is dropped, never delivered: its
    /// write may be older than a tombstone already purged, and would bring the key back.
    pub tombstone_grace: Duration,
    /// A read that lacks answers this long after it was sent also asks the next replica.
    pub speculative_retry: Duration,
    /// Sloppy quorum: a write whose replicas gossip shows down is handed to the next healthy
    /// nodes on the ring instead, which keep it as a hint for the replica; their acknowledgements
    /// count toward the write's level.
    pub sloppy_quorum: bool,
    /// A version whose clock is further ahead of a replica's own clock than this is refused
    /// (CockroachDB's `max-offset`).
    pub max_clock_offset: Duration,
    /// Bytes of hints a node keeps for one replica (Cassandra's `max_hints_size_per_host`).
    pub max_hint_bytes_per_target: u64,
    /// Bytes of hints a node keeps for all replicas together.
    pub max_hint_bytes: u64,
}

impl Default for KvConfig {
    fn default() -> Self {
        KvConfig {
            replication: 3,
            write_timeout: Duration::from_secs(2),
            read_timeout: Duration::from_secs(2),
            hint_window: Duration::from_secs(3 * 3600),
            tombstone_grace: Duration::from_secs(10 * 86400),
            speculative_retry: Duration::from_millis(100),
            sloppy_quorum: true,
            max_clock_offset: Duration::from_millis(500),
            max_hint_bytes_per_target: 256 << 20,
            max_hint_bytes: 1 << 30,
        }
    }
}

/// Why a KV request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    /// The request is not valid (nothing was written).
    #[error("{0}")]
    BadRequest(String),
    /// Refused before anything was sent (too few replicas up, a clock out of bounds): nothing
    /// was written.
    #[error("{0}")]
    Unavailable(String),
    /// Sent, but not confirmed in time: a write may exist on some replicas.
    #[error("{0}")]
    Timeout(String),
    /// A failure on the coordinator.
    #[error("{0}")]
    Internal(String),
}

impl KvError {
    /// The wire form.
    pub fn to_response(&self) -> Response {
        let code = match self {
            KvError::BadRequest(_) => ErrorCode::BadRequest,
            KvError::Unavailable(_) => ErrorCode::Unavailable,
            KvError::Timeout(_) => ErrorCode::Timeout,
            KvError::Internal(_) => ErrorCode::Internal,
        };
        Response::error(code, self.to_string())
    }
}

/// Names one send of one op; hand it back with the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SendId(pub u32);

/// What an op asks the caller to do. `to`, `via` may be this node: the caller then uses its own
/// store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Send {
    /// Store `record` on replica `to` (merged by version). Answer: [`Answer::Stored`] once it is
    /// in the replica's write-ahead log (with the newer version the replica already held, if
    /// any), or [`Answer::Failed`].
    Write { to: NodeId, record: Record },
    /// Sloppy quorum: ask the stand-in `via` to keep `record` as a hint for `target`.
    HandOff { via: NodeId, target: NodeId, record: Record },
    /// Keep `record` in this node's hint store, for `target`.
    Hint { target: NodeId, record: Record },
    /// Read `key` on replica `to`: its whole record, or only its version when `digest`. Answer:
    /// [`Answer::Record`] or [`Answer::Digest`], or [`Answer::Failed`].
    Read { to: NodeId, key: Vec<u8>, digest: bool },
}

/// One queued send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub id: SendId,
    pub send: Send,
}

/// What came back for a [`Send`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Stored durably. `newer`: the replica already held this newer version of the key, so the
    /// write lost to it (it is acknowledged, but superseded).
    Stored { newer: Option<Version> },
    /// A replica's record (`None`: it stores nothing for the key).
    Record(Option<Record>),
    /// A replica's version only (a digest read).
    Digest(Option<Version>),
    /// The replica holds the key but cannot read it (a corrupt record): its answer counts as
    /// failed, and it gets the newest record written back.
    Unreadable,
    /// Refused, failed, or no answer in time.
    Failed,
}

/// `quorum` of `n`: a majority.
pub fn quorum(n: usize) -> usize {
    n / 2 + 1
}

/// Acknowledgements a write at `level` needs with `n` natural and `pending` pending replicas:
/// one more per pending replica (a quorum in the old and the new placement, Cassandra's rule).
pub fn required_for_write(level: Consistency, n: usize, pending: usize) -> usize {
    match level {
        Consistency::Any => 1,
        Consistency::One => 1 + pending,
        Consistency::Quorum => quorum(n) + pending,
        Consistency::All => n + pending,
    }
}

/// Answers a read at `level` needs from `n` replicas (`None`: `any` is for writes only).
pub fn required_for_read(level: Consistency, n: usize) -> Option<usize> {
    match level {
        Consistency::Any => None,
        Consistency::One => Some(1),
        Consistency::Quorum => Some(quorum(n)),
        Consistency::All => Some(n),
    }
}

/// "1 is up", "2 are up": for `unavailable` messages.
pub(crate) fn up_count(n: usize) -> String {
    if n == 1 {
        "1 is up".to_string()
    } else {
        format!("{n} are up")
    }
}

/// The sends an op has queued and those it still waits for.
#[derive(Debug)]
pub(crate) struct Sends<P> {
    queue: std::collections::VecDeque<Outgoing>,
    inflight: Vec<(SendId, P)>,
    next: u32,
}

impl<P> Default for Sends<P> {
    fn default() -> Self {
        Sends { queue: Default::default(), inflight: Vec::new(), next: 0 }
    }
}

impl<P> Sends<P> {
    pub(crate) fn push(&mut self, send: Send, part: P) {
        let id = SendId(self.next);
        self.next += 1;
        self.queue.push_back(Outgoing { id, send });
        self.inflight.push((id, part));
    }

    pub(crate) fn poll(&mut self) -> Option<Outgoing> {
        self.queue.pop_front()
    }

    /// The part `id` stood for, if it is still awaited.
    pub(crate) fn take(&mut self, id: SendId) -> Option<P> {
        let i = self.inflight.iter().position(|(s, _)| *s == id)?;
        Some(self.inflight.swap_remove(i).1)
    }

    /// Stops waiting for every part `abandon` says yes to, and returns them.
    pub(crate) fn abandon(&mut self, mut abandon: impl FnMut(&P) -> bool) -> Vec<P> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < self.inflight.len() {
            if abandon(&self.inflight[i].1) {
                out.push(self.inflight.swap_remove(i).1);
            } else {
                i += 1;
            }
        }
        out
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &P> {
        self.inflight.iter().map(|(_, p)| p)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.inflight.is_empty()
    }
}

/// What a driver needs of an op, whichever kind it is: the loop that runs a [`WriteOp`] or a
/// [`ReadOp`] over a real network or the simulator's is written once against this.
pub trait Op {
    /// What a successful op gives.
    type Output;
    /// The next thing to send.
    fn poll_send(&mut self) -> Option<Outgoing>;
    /// When [`Op::handle_timeout`] must be called next.
    fn poll_timeout(&self) -> Option<Instant>;
    /// The result, once.
    fn poll_result(&mut self) -> Option<Result<Self::Output, KvError>>;
    /// True once nothing is awaited any more.
    fn is_finished(&self) -> bool;
    /// The answer to send `id`.
    fn handle_answer(&mut self, now: Instant, id: SendId, answer: Answer);
    /// Time passed.
    fn handle_timeout(&mut self, now: Instant);
}

macro_rules! impl_op {
    ($op:ty, $out:ty) => {
        impl Op for $op {
            type Output = $out;
            fn poll_send(&mut self) -> Option<Outgoing> {
                <$op>::poll_send(self)
            }
            fn poll_timeout(&self) -> Option<Instant> {
                <$op>::poll_timeout(self)
            }
            fn poll_result(&mut self) -> Option<Result<$out, KvError>> {
                <$op>::poll_result(self)
            }
            fn is_finished(&self) -> bool {
                <$op>::is_finished(self)
            }
            fn handle_answer(&mut self, now: Instant, id: SendId, answer: Answer) {
                <$op>::handle_answer(self, now, id, answer)
            }
            fn handle_timeout(&mut self, now: Instant) {
                <$op>::handle_timeout(self, now)
            }
        }
    };
}

impl_op!(WriteOp, Written);
impl_op!(ReadOp, Read);
