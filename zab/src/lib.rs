//! Sans-IO ZAB — ZooKeeper's atomic broadcast — for Starling's metadata service.
//!
//! One [`Zab`] value is one server of the ensemble: a **voter** (it elects leaders and its
//! acknowledgements count toward quorums) or an **observer** (it learns every committed
//! transaction and counts toward nothing). It owns no socket, reads no clock and uses no global
//! randomness, like the gossip core: the caller passes `now` with every input, feeds it received
//! messages ([`Zab::handle_message`]), timer expiries ([`Zab::handle_timeout`]) and client
//! proposals ([`Zab::propose`]), and drains a [`Ready`] batch after each input.
//!
//! A [`Ready`] says "persist this, then send that" (raft-rs's shape): the caller writes
//! [`Ready::persist`] durably (one fsync for the whole batch: group commit), then sends
//! [`Ready::messages`], then calls [`Zab::advance`] — which may queue more (a commit the
//! leader's own durable write completed), so the caller takes [`Zab::ready`] again until it is
//! empty. Every acknowledgement a server sends — of a
//! new epoch, of NEWLEADER, of a proposal — therefore means what it acknowledges is on disk.
//!
//! The protocol is the one of Junqueira, Reed and Serafini, *Zab: High-performance broadcast for
//! primary-backup systems* (DSN 2011), with ZooKeeper's fast leader election; `ALGORITHM.md`
//! maps each phase to the code and names, for each ZooKeeper bug of the same family, the test
//! that shows this implementation is immune:
//! 0. **Election** ([`Vote`]s ordered by `(epoch, zxid, id)`): a server that finds no leader
//!    votes for the most up-to-date server it has heard of, until a quorum agrees.
//! 1. **Discovery**: the elected leader collects a quorum's `acceptedEpoch`, proposes a larger
//!    one (persisted by each before it acknowledges), and learns each follower's history.
//! 2. **Synchronization**: each follower gets DIFF, TRUNC+DIFF or SNAP, decided on
//!    epoch-qualified history ([`sync::plan`]), then NEWLEADER; a quorum's acknowledgement of
//!    NEWLEADER establishes the epoch and commits the leader's whole history.
//! 3. **Broadcast**: PROPOSAL, ACK, COMMIT with a majority quorum; `zxid = epoch << 32 | counter`.
//!
//! The replicated state is any [`StateMachine`]: the core applies committed transactions to it in
//! zxid order, snapshots it every [`Config::snapshot_every`] transactions (so the log does not
//! grow forever) and restores it from a snapshot sent by a leader. A snapshot is a
//! [`SnapshotJob`]: the core takes a frozen image of the state between two transactions, the
//! caller encodes and saves it wherever it likes (a thread and a file of its own) and says so;
//! the core then compacts the log, while transactions went on being applied.

mod core;
pub mod disk;
mod link;
pub mod message;
pub mod pipeline;
pub mod sync;

pub use crate::core::Zab;
pub use message::{Msg, ToLeader, ToLearner, Vote};
pub use pipeline::Pipeline;
pub use starling_id::NodeId;

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A transaction id: `epoch << 32 | counter`. Counters start at 1 in each epoch, so
/// `Zxid::new(e, 0)` is "before the first transaction of epoch `e`".
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct Zxid(pub u64);

impl Zxid {
    /// Nothing: before every transaction.
    pub const ZERO: Zxid = Zxid(0);

    pub fn new(epoch: u32, counter: u32) -> Zxid {
        Zxid((u64::from(epoch) << 32) | u64::from(counter))
    }

    pub fn epoch(self) -> u32 {
        (self.0 >> 32) as u32
    }

    pub fn counter(self) -> u32 {
        self.0 as u32
    }
}

impl std::fmt::Debug for Zxid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.epoch(), self.counter())
    }
}

impl std::fmt::Display for Zxid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// One transaction of the log.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Entry {
    pub zxid: Zxid,
    /// The transaction, opaque to ZAB (the state machine decodes it).
    #[serde(with = "serde_bytes_compat")]
    pub txn: Arc<Vec<u8>>,
}

/// `Arc<Vec<u8>>` as a msgpack binary (not an array of integers).
mod serde_bytes_compat {
    use std::sync::Arc;

    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Arc<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        serde_bytes::serialize(v.as_slice(), s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Arc<Vec<u8>>, D::Error> {
        serde_bytes::deserialize::<Vec<u8>, D>(d).map(Arc::new)
    }
}

/// The replicated state. The core applies committed transactions in zxid order, exactly once
/// each between snapshots.
pub trait StateMachine {
    /// Applies a committed transaction. It must be deterministic: every server applies the same
    /// transactions in the same order and must reach the same state. A transaction the state
    /// machine cannot decode must be applied as a no-op (it is committed: refusing it would make
    /// this server diverge), and reported by the state machine its own way.
    fn apply(&mut self, zxid: Zxid, txn: &[u8]);
    /// A frozen copy of the state as of the last transaction applied, encoded later with
    /// [`StateMachine::encode`] away from the core's loop (see [`SnapshotJob`]). Taking it must
    /// be cheap: the core takes it between two transactions (a persistent map's O(1) clone,
    /// not a deep copy).
    type Image: Send + 'static;
    fn image(&self) -> Self::Image;
    /// Serializes an image; `size_hint` is the size of the last snapshot (to allocate once).
    fn encode(image: Self::Image, size_hint: usize) -> Vec<u8>;
    /// The state, serialized, as of the last transaction applied.
    fn snapshot(&self) -> Vec<u8> {
        Self::encode(self.image(), 0)
    }
    /// Replaces the state with a snapshot taken at `zxid` (by this server or sent by a leader).
    fn restore(&mut self, zxid: Zxid, snapshot: &[u8]) -> Result<(), String>;
}

/// Timing and sizes. The defaults suit a LAN (a leader killed is replaced in well under a second).
#[derive(Clone, Debug)]
pub struct Config {
    /// The voters of the ensemble (this server among them, or it is an observer).
    pub voters: Vec<NodeId>,
    /// How often a leader pings its learners, and a learner answers.
    pub heartbeat: Duration,
    /// A follower that hears nothing from its leader this long looks for a new one; a leader
    /// that hears from less than a quorum this long steps down (ZooKeeper's `syncLimit`).
    pub leader_timeout: Duration,
    /// Discovery and synchronization must complete within this (ZooKeeper's `initLimit`).
    pub init_limit: Duration,
    /// How often a server looking for a leader resends its vote.
    pub vote_resend: Duration,
    /// Once a quorum agrees on a vote, how long to wait for a better one before deciding
    /// (ZooKeeper's `finalizeWait`).
    pub finalize_wait: Duration,
    /// Committed transactions between snapshots, on average (each interval is drawn between
    /// half and one and a half times this; and not before the transactions
    /// since the last snapshot add up to half its size); the log keeps one interval more for
    /// DIFFs.
    pub snapshot_every: u64,
    /// Bytes of committed transactions after which a snapshot is due even before
    /// `snapshot_every` transactions (drawn the same way; ZooKeeper's `snapSizeLimitInKb`). The
    /// core keeps its log since the snapshot before the last in memory, so this bounds that
    /// memory whatever the transactions' size (to this, or half the state's size when that is
    /// larger: see `snapshot_every`).
    pub snapshot_log_bytes: u64,
    /// Most entries per DIFF message.
    pub diff_chunk: usize,
    /// Most bytes of snapshot or of DIFF transactions per message (a DIFF holds at least one
    /// entry; a larger snapshot travels as [`ToLearner::SnapChunk`]s).
    pub chunk_bytes: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            voters: Vec::new(),
            heartbeat: Duration::from_millis(50),
            leader_timeout: Duration::from_millis(300),
            init_limit: Duration::from_secs(2),
            vote_resend: Duration::from_millis(100),
            finalize_wait: Duration::from_millis(30),
            snapshot_every: 100_000,
            snapshot_log_bytes: 64 << 20,
            diff_chunk: 256,
            chunk_bytes: 1 << 20,
        }
    }
}

impl Config {
    /// Voters needed for a quorum: a strict majority.
    pub fn quorum(&self) -> usize {
        self.voters.len() / 2 + 1
    }
}

/// What must survive a crash. Apply them in order, durably, before sending the batch's messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Persist {
    /// The epoch this server has promised to follow, and the one leader it accepted it from
    /// (it acknowledges no older epoch after, and no other leader of this one).
    AcceptedEpoch { epoch: u32, leader: NodeId },
    /// The epoch of the last leader whose history this server took (NEWLEADER).
    CurrentEpoch(u32),
    /// Append entries to the log (zxids increasing, after every entry kept).
    Append(Vec<Entry>),
    /// Remove every log entry after this zxid.
    TruncateAfter(Zxid),
    /// A snapshot of the state at `zxid` (replaces the previous one).
    Snapshot { zxid: Zxid, data: Arc<Vec<u8>> },
    /// Log entries up to and including this zxid are no longer needed (a snapshot covers them).
    CompactThrough(Zxid),
    /// Every log entry is dropped: the log now starts after `zxid` (a SNAP from the leader).
    ResetLog(Zxid),
}

/// Something the caller may act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// This server's role changed.
    Role(Role),
    /// A transaction proposed here with this tag was committed (and applied) at `zxid`.
    Committed { tag: u64, zxid: Zxid },
    /// A transaction proposed here with this tag may or may not commit: its leader lost
    /// leadership before a quorum acknowledged it (a later leader may still commit it).
    Unknown { tag: u64, zxid: Zxid },
    /// The state machine was replaced by a snapshot from the leader.
    Restored { zxid: Zxid },
    /// A protocol error that made this server look for a leader again (logged by the caller).
    Error(String),
    /// Something the protocol rules out happened (a leader asking to truncate committed
    /// history, a learner ahead of its leader's committed history, a gap in a leader's
    /// proposals): this server looks for a leader again. The simulator counts each as a
    /// violation.
    Anomaly(String),
}

/// A server's part in the ensemble.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// Electing a leader (or, for an observer, finding one).
    Looking,
    /// Following `leader` (synchronizing until `synced`).
    Following { leader: NodeId, epoch: u32, synced: bool },
    /// An observer learning from `leader`.
    Observing { leader: NodeId, epoch: u32, synced: bool },
    /// Leading `epoch` (`established` once a quorum acknowledged NEWLEADER).
    Leading { epoch: u32, established: bool },
}

/// A snapshot to take, from [`Zab::snapshot_job`]: encode `image` with
/// [`StateMachine::encode`] and save it durably, both off the loop that drives the core, then
/// tell the core with [`Zab::snapshot_saved`] (or [`Zab::snapshot_failed`]) and this `ticket`.
/// The snapshot is of the state after `zxid`. It is saved beside what [`Persist`] writes, never
/// over a snapshot persisted after the job was handed out (a leader's SNAP): what a restart
/// loads is the newest snapshot saved either way ([`disk::MemDisk`] is the model). Until the
/// job comes back the core takes no other; one that comes back after a SNAP replaced the state
/// is ignored. A job never handed back only means no snapshot: the log keeps everything since
/// the last one.
pub struct SnapshotJob<I> {
    pub ticket: u64,
    pub zxid: Zxid,
    pub image: I,
    /// The size of the last snapshot (to allocate once).
    pub size_hint: usize,
}

impl<I> std::fmt::Debug for SnapshotJob<I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotJob")
            .field("ticket", &self.ticket)
            .field("zxid", &self.zxid)
            .field("size_hint", &self.size_hint)
            .finish_non_exhaustive()
    }
}

/// One input's worth of work for the caller: persist, then send, then [`Zab::advance`]. When
/// `send_first` is set, the messages may leave before `persist` is durable (and the two may
/// overlap); [`Zab::advance`] still waits for it.
///
/// **Pipelined**, the caller need not wait for a batch's write before it feeds the core more
/// input and takes the next batch (one disk write in flight while the next batch gathers, as
/// ZooKeeper's `SyncRequestProcessor` runs beside its leader and learners), provided that:
/// - batches are written in the order they were taken (a crash keeps a prefix of them);
/// - a batch's messages leave once it and every batch before it are durable, and after every
///   message of an earlier batch (`send_first` messages leave at once when no earlier batch's
///   messages are still held);
/// - [`Zab::advance_to`] is called with each batch's [`Ready::durable`], in order, once that
///   batch is durable (or with the last of several finished at once). [`Pipeline`] keeps these
///   rules for the caller. Events may be acted on when the batch is taken: what they report
///   (a commit, a role) does not depend on this server's disk.
#[derive(Debug, Default)]
pub struct Ready {
    pub persist: Vec<Persist>,
    pub messages: Vec<(NodeId, Msg)>,
    pub events: Vec<Event>,
    /// An established leader's batch that only appends to its log (and lets go of what a
    /// snapshot covers): its proposals may be sent while it writes them, as ZooKeeper's leader
    /// does and Raft allows (§10.2.1), since it counts its own acknowledgement only at
    /// [`Zab::advance`]. The write then costs one disk write on the way to a quorum, not two.
    pub send_first: bool,
    /// What is on this server's disk once this batch and every one before it are: pass it to
    /// [`Zab::advance_to`] then.
    pub durable: Durable,
}

/// How far this server's disk goes: its last log zxid and its current epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Durable {
    pub zxid: Zxid,
    pub epoch: u32,
}

impl Ready {
    pub fn is_empty(&self) -> bool {
        self.persist.is_empty() && self.messages.is_empty() && self.events.is_empty()
    }
}

/// Why a proposal was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotLeader {
    #[error("not the leader (the leader is {0})")]
    Follower(NodeId),
    #[error("no leader yet (an election or a synchronization is in progress)")]
    NoLeader,
}

/// What a server's status page shows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub role: Role,
    pub accepted_epoch: u32,
    pub current_epoch: u32,
    pub last_zxid: Zxid,
    pub committed: Zxid,
    pub log_entries: usize,
    pub snapshot_zxid: Zxid,
    pub snapshot_bytes: usize,
    /// Learners in sync with this leader (0 unless leading).
    pub synced_learners: usize,
}

/// What a server loads from disk at start.
#[derive(Clone, Debug, Default)]
pub struct Persisted {
    pub accepted_epoch: u32,
    /// The leader `accepted_epoch` was accepted from.
    pub accepted_leader: NodeId,
    pub current_epoch: u32,
    /// The last snapshot, if any.
    pub snapshot: Option<(Zxid, Arc<Vec<u8>>)>,
    /// The history before the first log entry is only in snapshots up to here.
    pub log_base: Zxid,
    pub log: Vec<Entry>,
}
