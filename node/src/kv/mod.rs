//! The key-value store: any node coordinates a request, data lives on the `N` replicas the ring
//! assigns to the key's token.
//!
//! - **Writes** get a [`hlc::Hlc`] version, go to every natural and pending replica at once, and
//!   are acknowledged when the consistency level's count of replicas have them in their
//!   write-ahead log. A replica that is down, fails or times out gets a **hint** stored on the
//!   coordinator, replayed when gossip sees it back ([`hints`]).
//! - **Reads** ask as many replicas as the level needs (this node first when it is one), return
//!   the newest version, and write it back to the replicas that answered with an older one
//!   before answering (blocking read repair: a quorum read never goes back in time).
//! - **Deletes** are writes of a tombstone.
//!
//! Levels count replicas of the key's preference list (`N`, default 3): `one` = 1,
//! `quorum` = N/2 + 1, `all` = N; while a range moves, writes also need one more acknowledgement
//! per pending replica (Cassandra's rule). `any` (writes only) also counts a stored hint. A level
//! that cannot be met by the replicas gossip sees up fails at once (`unavailable`) without
//! writing anything; one that is sent but not met in time fails with `timeout`, and then the
//! write may exist on some replicas (as in Cassandra, a retry is safe: last write wins).

//!
//! The protocol of each request (placement, levels, stand-ins, the tally, digest reads,
//! speculative retry, read repair, deadlines) is the sans-IO state machines of `starling-kv`
//! ([`WriteOp`], [`ReadOp`]); this module drives them: it carries their sends out over the
//! transport and the local store, and feeds the answers and the time back.

mod batch;
pub mod bootstrap;
pub mod hints;
pub mod io;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use starling_kv::clock::{ClockHealth, ClockMonitor};
use starling_kv::{hlc::Hlc, replica, Answer, Op, Outgoing, ReadOp, Send, SendId, WriteOp};
use starling_ring::NodeId;
use starling_wire::{
    check_key_value, Call, Clock, Consistency, ErrorCode, Get, KvRequest, Page, Put, ReadAnswer,
    Record, ReplicaHint, ReplicaRead, ReplicaReadMany, ReplicaRequest, ReplicaScan,
    ReplicaVersions, ReplicaWrite, Response, Value, Version,
};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::storage::Storage;
use crate::transport::Transport;
use io::StorageIo;

pub use starling_kv::{hlc, view, KvConfig, KvError, Read, RingView, Written};

/// Local metadata key of the HLC's persisted high mark (8 bytes, big-endian): the node's versions
/// after a restart are greater than it.
pub const META_HLC: &str = "hlc_high_mark";
/// The high mark persisted runs this far ahead of the wall clock, so a restart within it issues
/// no version at or below one issued before (the node waits out the rest at start).
pub const HLC_MARK_AHEAD_MS: u64 = 1_000;
/// How often the high mark is persisted.
const HLC_PERSIST_EVERY: std::time::Duration = std::time::Duration::from_millis(500);
/// How often peers' clocks are sampled.
const CLOCK_PROBE_EVERY: std::time::Duration = std::time::Duration::from_secs(2);
/// ... and while this node has not measured enough of them.
const CLOCK_EARLY_PROBE_EVERY: std::time::Duration = std::time::Duration::from_millis(200);

/// Local metadata key of the ring's members (16-byte node ids), kept so that a restarted node
/// coordinates only once they are all back on its ring.
pub const META_RING_MEMBERS: &str = "ring-members";

/// The ring members persisted in `storage` (`None` if none).
fn ring_members<S: Storage + ?Sized>(storage: &S) -> Option<std::collections::HashSet<NodeId>> {
    let bytes = storage.get_meta(META_RING_MEMBERS).ok()??;
    let ids: std::collections::HashSet<NodeId> = bytes
        .chunks_exact(16)
        .filter_map(|c| c.try_into().ok().map(NodeId::from_be_bytes))
        .collect();
    (!ids.is_empty()).then_some(ids)
}

/// The persisted HLC high mark in `storage` (0 if none).
pub fn hlc_high_mark<S: Storage + ?Sized>(storage: &S) -> u64 {
    match storage.get_meta(META_HLC) {
        Ok(Some(b)) if b.len() == 8 => u64::from_be_bytes(b.try_into().unwrap_or([0; 8])),
        _ => 0,
    }
}

/// Milliseconds since the Unix epoch, now: the wall clock the HLC and the hint window read.
pub fn wall_millis() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Streams token ranges from a peer into the local store, returning the records received: the
/// node sets anti-entropy sessions ([`Kv::set_streamer`]); without one, joins scan.
pub type Streamer = Arc<
    dyn Fn(
            NodeId,
            Vec<starling_ring::Range>,
        ) -> futures_util::future::BoxFuture<'static, Result<u64, String>>
        + std::marker::Send
        + Sync,
>;

/// A recovery in progress (see [`Kv::start_recovery`]).
#[derive(Debug, Clone)]
struct Recovery {
    why: String,
    /// The token ranges not yet compared with every replica (`None`: all of them).
    pending: Option<Vec<starling_ring::Range>>,
}

/// Counters since start (shown in `/status` and `/metrics`).
#[derive(Debug, Default)]
pub struct KvStats {
    pub writes: AtomicU64,
    pub reads: AtomicU64,
    pub write_failures: AtomicU64,
    pub read_failures: AtomicU64,
    pub hints_stored: AtomicU64,
    pub hints_replayed: AtomicU64,
    pub hints_dropped: AtomicU64,
    /// Hints dropped undelivered because they were older than the tombstone grace period.
    pub hints_past_grace: AtomicU64,
    pub read_repairs: AtomicU64,
    pub replica_writes: AtomicU64,
    pub replica_reads: AtomicU64,
    pub fallback_writes: AtomicU64,
    pub superseded_writes: AtomicU64,
    pub refused_ahead: AtomicU64,
    pub refused_clock: AtomicU64,
    pub unreadable_records: AtomicU64,
    pub hints_over_cap: AtomicU64,
}

pub use starling_wire::status::KvStatus;

/// The KV layer of one node: coordinator and replica. Cheap to clone.
pub struct Kv<T, S> {
    inner: Arc<Inner<T, S>>,
}

impl<T, S> Clone for Kv<T, S> {
    fn clone(&self) -> Self {
        Kv { inner: self.inner.clone() }
    }
}

impl<T, S> std::fmt::Debug for Kv<T, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kv").field("me", &self.inner.me).finish()
    }
}

struct Inner<T, S> {
    me: NodeId,
    cfg: KvConfig,
    hlc: Hlc,
    storage: Arc<S>,
    io: StorageIo<S>,
    transport: Arc<T>,
    view: watch::Receiver<Arc<RingView>>,
    stats: KvStats,
    hints: hints::HintIndex,
    batcher: Arc<batch::PeerBatcher<T>>,
    clock: std::sync::Mutex<ClockMonitor>,
    /// The monitor's verdict after the last probe round.
    clock_health: std::sync::Mutex<ClockHealth>,
    /// This node's clock minus the cluster's, in ms, as last measured (read on every replica
    /// write, so kept apart from the monitor's lock).
    clock_offset_ms: std::sync::atomic::AtomicI64,
    /// After a restart: the ring members to wait for before coordinating (`None`: ready).
    ring_gate: std::sync::Mutex<Option<std::collections::HashSet<NodeId>>>,
    /// Set once the gate is open, so requests skip its lock.
    ring_ready: std::sync::atomic::AtomicBool,
    /// Why replica reads are refused (see [`Kv::start_recovery`]), and a flag to check it fast.
    recovering: std::sync::Mutex<Option<Recovery>>,
    recovering_now: std::sync::atomic::AtomicBool,
    recovered_records: AtomicU64,
    streamer: std::sync::OnceLock<Streamer>,
}

impl<T: Transport, S: Storage> Kv<T, S> {
    /// The KV layer over `storage`, reaching peers through `transport`, placing by `view`.
    pub fn new(
        me: NodeId,
        cfg: KvConfig,
        storage: Arc<S>,
        transport: Arc<T>,
        view: watch::Receiver<Arc<RingView>>,
    ) -> std::io::Result<Self> {
        let io = StorageIo::start(storage.clone())?;
        let gate = ring_members(&*storage);
        let hints = hints::HintIndex::load(&*storage);
        let batcher = Arc::new(batch::PeerBatcher::new(
            transport.clone(),
            cfg.write_timeout.max(cfg.read_timeout),
        ));
        Ok(Kv {
            inner: Arc::new(Inner {
                me,
                clock: std::sync::Mutex::new(ClockMonitor::new(cfg.max_clock_offset)),
                clock_health: std::sync::Mutex::new(ClockHealth {
                    offset_ms: 0,
                    peers: 0,
                    healthy: true,
                }),
                clock_offset_ms: std::sync::atomic::AtomicI64::new(0),
                ring_ready: std::sync::atomic::AtomicBool::new(gate.is_none()),
                ring_gate: std::sync::Mutex::new(gate),
                cfg,
                hlc: Hlc::starting_after(hlc_high_mark(&*storage)),
                storage,
                io,
                transport,
                view,
                stats: KvStats::default(),
                hints,
                batcher,
                recovering: std::sync::Mutex::new(None),
                recovering_now: std::sync::atomic::AtomicBool::new(false),
                recovered_records: AtomicU64::new(0),
                streamer: std::sync::OnceLock::new(),
            }),
        })
    }

    /// How a join or a removal streams ranges from a replica (see [`Streamer`]).
    pub fn set_streamer(&self, streamer: Streamer) {
        let _ = self.inner.streamer.set(streamer);
    }

    /// From now until [`Kv::recovered`], this node answers no replica reads, digests or scans
    /// (coordinators ask other replicas; its own reads go to them too) of the ranges it has not
    /// yet compared with every other replica ([`Kv::still_recovering`]); it still takes writes.
    /// For a store that may lack writes it acknowledged: after an unclean stop, the newest part
    /// of its write-ahead log may be gone (a power loss inside the sync interval, a torn log).
    pub fn start_recovery(&self, why: String) {
        *self.recovery() = Some(Recovery { why, pending: None });
        self.inner.recovering_now.store(true, Ordering::SeqCst);
    }

    /// The ranges still to compare: reads of the others are answered again.
    pub fn still_recovering(&self, pending: Vec<starling_ring::Range>) {
        if let Some(r) = self.recovery().as_mut() {
            r.pending = Some(pending);
        }
    }

    /// Ends [`Kv::start_recovery`]: `records` came back from other replicas.
    pub fn recovered(&self, records: u64) {
        self.inner.recovered_records.fetch_add(records, Ordering::Relaxed);
        *self.recovery() = None;
        self.inner.recovering_now.store(false, Ordering::SeqCst);
    }

    /// Whether a recovery is in progress.
    pub fn is_recovering(&self) -> bool {
        self.inner.recovering_now.load(Ordering::SeqCst)
    }

    /// Whether this node knows the ring again after a restart (every node it had on its ring is
    /// back on it, or left): until then it coordinates nothing, and does not recover.
    pub fn ring_known(&self) -> bool {
        self.ready_view().is_ok()
    }

    /// Whether this node is still recovering any of `ranges` (see [`Kv::start_recovery`]): it
    /// is then no source for a node streaming them.
    pub fn recovering_any(&self, ranges: &[starling_ring::Range]) -> bool {
        if !self.is_recovering() {
            return false;
        }
        self.recovery().as_ref().is_some_and(|r| match &r.pending {
            None => true,
            Some(p) => ranges.iter().any(|a| p.iter().any(|b| a.overlaps(b))),
        })
    }

    /// Whether replica reads of `key` are refused now (see [`Kv::start_recovery`]).
    fn unrecovered(&self, key: &[u8]) -> bool {
        let token = starling_ring::token_of(key);
        self.recovering_any(&[starling_ring::Range { start: token.wrapping_sub(1), end: token }])
    }

    fn recovery(&self) -> std::sync::MutexGuard<'_, Option<Recovery>> {
        self.inner.recovering.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn refuse_recovering(&self) -> Response {
        Response::error(
            ErrorCode::Unavailable,
            "this replica is recovering its store after an unclean stop (it may lack recent writes): ask another replica",
        )
    }

    /// The local store.
    pub fn storage(&self) -> &Arc<S> {
        &self.inner.storage
    }

    /// The current ring view.
    pub fn view(&self) -> Arc<RingView> {
        self.inner.view.borrow().clone()
    }

    /// Counters and sizes.
    pub fn status(&self) -> KvStatus {
        let s = &self.inner.stats;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let cache = self.inner.storage.version_cache().unwrap_or_default();
        let clock = self.clock_health();
        KvStatus {
            replication: self.inner.cfg.replication,
            keys_estimate: self.inner.storage.approximate_keys(),
            hints_pending: self.inner.hints.pending(),
            writes: l(&s.writes),
            reads: l(&s.reads),
            write_failures: l(&s.write_failures),
            read_failures: l(&s.read_failures),
            hints_stored: l(&s.hints_stored),
            hints_replayed: l(&s.hints_replayed),
            hints_dropped: l(&s.hints_dropped),
            hints_past_grace: l(&s.hints_past_grace),
            read_repairs: l(&s.read_repairs),
            replica_writes: l(&s.replica_writes),
            replica_reads: l(&s.replica_reads),
            fallback_writes: l(&s.fallback_writes),
            superseded_writes: l(&s.superseded_writes),
            refused_ahead: l(&s.refused_ahead),
            refused_clock: l(&s.refused_clock),
            unreadable_records: l(&s.unreadable_records),
            hints_over_cap: l(&s.hints_over_cap),
            hints_bytes: self.inner.hints.bytes(),
            clock_offset_ms: clock.offset_ms,
            clock_peers: clock.peers as u64,
            max_clock_offset_ms: self.inner.cfg.max_clock_offset.as_millis() as u64,
            version_cache_keys: cache.0,
            version_cache_capacity: cache.1,
            storage_failure: self.inner.storage.failure(),
            recovering: self.recovery().as_ref().map(|r| match &r.pending {
                None => r.why.clone(),
                Some(p) => format!("{} ({} ranges left)", r.why, p.len()),
            }),
            recovered_records: l(&self.inner.recovered_records),
        }
    }

    /// Answers the key-value client calls.
    pub async fn handle_client(&self, req: KvRequest) -> Response {
        match req {
            KvRequest::Put(Put { key, value, consistency }) => {
                match self.put(key, value, consistency).await {
                    Ok(w) => Put::respond(starling_wire::Written {
                        version: w.version,
                        acked: w.acked,
                        required: w.required,
                        superseded: w.superseded,
                    }),
                    Err(e) => e.to_response(),
                }
            }
            KvRequest::Get(Get { key, consistency }) => match self.get(key, consistency).await {
                Ok(r) => Get::respond(Value { record: r.record, replicas: r.replicas }),
                Err(e) => e.to_response(),
            },
        }
    }

    /// Answers the replica calls of coordinators, hint holders and streams.
    pub async fn handle_replica(&self, req: ReplicaRequest) -> Response {
        match req {
            ReplicaRequest::Write(records) => self.replica_write(records).await,
            ReplicaRequest::Hint(ReplicaHint { target, records }) => {
                Box::pin(self.keep_for(target, records)).await
            }
            ReplicaRequest::Read(key) if self.unrecovered(&key) => self.refuse_recovering(),
            ReplicaRequest::ReadMany(keys) if keys.iter().any(|k| self.unrecovered(&k.0)) => {
                self.refuse_recovering()
            }
            ReplicaRequest::Versions(keys) if keys.iter().any(|k| self.unrecovered(&k.0)) => {
                self.refuse_recovering()
            }
            // A scan streams a whole range to a joining node: none while recovering.
            ReplicaRequest::Scan(_) if self.is_recovering() => self.refuse_recovering(),
            ReplicaRequest::Read(key) => {
                self.inner.stats.replica_reads.fetch_add(1, Ordering::Relaxed);
                match self.inner.io.get_each(vec![key]).await.map(|mut r| r.pop()) {
                    Ok(Some(Ok(r))) => {
                        ReplicaRead::respond(r.map_or(ReadAnswer::Missing, ReadAnswer::Found))
                    }
                    Ok(Some(Err(e))) => {
                        ReplicaRead::respond(ReadAnswer::Unreadable(self.unreadable(&e)))
                    }
                    Ok(None) => Response::error(ErrorCode::Internal, "no answer from storage"),
                    Err(e) => Response::error(ErrorCode::Unavailable, e),
                }
            }
            ReplicaRequest::ReadMany(keys) => {
                self.inner.stats.replica_reads.fetch_add(keys.len() as u64, Ordering::Relaxed);
                let keys: Vec<Vec<u8>> = keys.into_iter().map(|k| k.0).collect();
                let each = match self.inner.io.get_each(keys).await {
                    Ok(each) => each,
                    Err(e) => return Response::error(ErrorCode::Unavailable, e),
                };
                let mut records = Vec::with_capacity(each.len());
                let mut failed = Vec::new();
                for (i, r) in each.into_iter().enumerate() {
                    match r {
                        Ok(r) => records.push(r),
                        Err(e) => {
                            records.push(None);
                            failed.push((i, self.unreadable(&e)));
                        }
                    }
                }
                let mut answers = batch::answer_reads(records);
                for (i, why) in failed {
                    answers[i] = ReadAnswer::Unreadable(why);
                }
                ReplicaReadMany::respond(answers)
            }
            ReplicaRequest::Versions(keys) => {
                self.inner.stats.replica_reads.fetch_add(keys.len() as u64, Ordering::Relaxed);
                let keys: Vec<Vec<u8>> = keys.into_iter().map(|k| k.0).collect();
                match self.inner.io.versions(keys).await {
                    Ok(Ok(versions)) => ReplicaVersions::respond(versions),
                    Ok(Err(e)) => Response::error(ErrorCode::Internal, e.to_string()),
                    Err(e) => Response::error(ErrorCode::Unavailable, e),
                }
            }
            ReplicaRequest::Scan(ReplicaScan { start, end, after, limit }) => {
                let storage = self.inner.storage.clone();
                let range = starling_ring::Range { start, end };
                let limit = (limit as usize).clamp(1, 4096);
                let page = tokio::task::spawn_blocking(move || {
                    storage.scan(range, after.as_deref(), limit)
                })
                .await;
                match page {
                    Ok(Ok(p)) => {
                        ReplicaScan::respond(Page { records: p.records, cursor: p.cursor })
                    }
                    Ok(Err(e)) => Response::error(ErrorCode::Internal, e.to_string()),
                    Err(e) => Response::error(ErrorCode::Internal, format!("scan task: {e}")),
                }
            }
        }
    }

    /// A replica stores records sent by a coordinator, a hint replay, read repair or a stream,
    /// and says for each whether it already held a newer version (the record lost to it).
    async fn replica_write(&self, records: Vec<Record>) -> Response {
        if let Err(refused) = self.check_incoming(&records) {
            return refused;
        }
        let n = records.len() as u64;
        match self.inner.io.apply_checked(records).await {
            Ok(newer) => {
                self.inner.stats.replica_writes.fetch_add(n, Ordering::Relaxed);
                ReplicaWrite::respond(newer)
            }
            Err(e) => Response::error(ErrorCode::Unavailable, format!("replica cannot write: {e}")),
        }
    }

    /// Moves this node's clock past the versions of records it stored by other means than a
    /// coordinator's write (anti-entropy), as reads do: a later write it coordinates then gets a
    /// newer version than every record it holds. A version from a clock further ahead than the
    /// maximum offset is not followed (its value still wins by version).
    pub fn observe_versions(&self, records: &[Record]) {
        let bound = self.inner.cfg.max_clock_offset.as_millis() as u64;
        let now = self.cluster_millis();
        if let Some(newest) = records.iter().map(|r| r.version.ts).max() {
            let _ = self.inner.hlc.observe(newest, now, bound);
        }
    }

    /// Refuses records that are not valid, or whose version is further ahead of this node's
    /// clock than the maximum clock offset (a coordinator with a broken clock must not plant
    /// versions no later write can beat); otherwise moves this node's clock past them.
    fn check_incoming(&self, records: &[Record]) -> Result<(), Response> {
        let cfg = &self.inner.cfg;
        replica::check_incoming(
            &self.inner.hlc,
            records,
            self.cluster_millis(),
            cfg.max_clock_offset,
        )
        .map_err(|e| {
            if matches!(e, replica::Refusal::FromTheFuture(_)) {
                self.inner.stats.refused_ahead.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "refused a write from the future");
            }
            refusal(e)
        })
    }

    /// A fallback node (sloppy quorum) keeps records for `target` as hints.
    async fn keep_for(&self, target: NodeId, records: Vec<Record>) -> Response {
        if target == self.inner.me {
            return self.replica_write(records).await;
        }
        if let Err(refused) = self.check_incoming(&records) {
            return refused;
        }
        let view = self.view();
        let now = std::time::Instant::now();
        if let Err(e) = replica::admit_hints(&view, target, now, self.inner.cfg.hint_window) {
            return refusal(e);
        }
        match self.store_hints(target, records).await {
            Ok(()) => Response::Ok,
            Err(e) => Response::error(ErrorCode::Unavailable, e),
        }
    }

    /// Keeps `records` as hints for `target`, within the hint store's caps.
    async fn store_hints(&self, target: NodeId, records: Vec<Record>) -> Result<(), String> {
        let n = records.len() as u64;
        let sizes: Vec<u64> = records.iter().map(hints::hint_bytes).collect();
        let bytes: u64 = sizes.iter().sum();
        let Some(reserved) = self.inner.hints.reserve(&self.inner.cfg, target, n, bytes) else {
            self.inner.stats.hints_over_cap.fetch_add(n, Ordering::Relaxed);
            return Err(format!(
                "the hint store is full ({} bytes for {target} at most, {} in all): the \
                 write is left to read repair and anti-entropy",
                self.inner.cfg.max_hint_bytes_per_target, self.inner.cfg.max_hint_bytes
            ));
        };
        match self.inner.io.put_hints(records.into_iter().map(|r| (target, r)).collect()).await {
            Ok(puts) => {
                // One hint per key and target: a hint that replaced one, or lost to one, is
                // counted once in the index. Every write kept counts as stored, including one a
                // newer hint for its key already covers.
                reserved.stored(&sizes, &puts);
                self.inner.stats.hints_stored.fetch_add(n, Ordering::Relaxed);
                Ok(())
            }
            // The reservation is given back as it is dropped.
            Err(e) => Err(format!("cannot keep hints: {e}")),
        }
    }

    /// Writes `value` under `key` (`None` deletes) at `level`.
    pub async fn put(
        &self,
        key: Vec<u8>,
        value: Option<Vec<u8>>,
        level: Consistency,
    ) -> Result<Written, KvError> {
        let r = self.put_inner(key, value, level).await;
        let s = &self.inner.stats;
        match &r {
            Ok(w) => {
                s.writes.fetch_add(1, Ordering::Relaxed);
                if w.superseded.is_some() {
                    s.superseded_writes.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(_) => {
                s.write_failures.fetch_add(1, Ordering::Relaxed);
            }
        };
        r
    }

    async fn put_inner(
        &self,
        key: Vec<u8>,
        value: Option<Vec<u8>>,
        level: Consistency,
    ) -> Result<Written, KvError> {
        check_key_value(&key, value.as_deref()).map_err(KvError::BadRequest)?;
        let view = self.ready_view()?;
        let clock = self.clock_health();
        let needed = self.clock_peers_needed(&view);
        if clock.peers < needed {
            self.inner.stats.refused_clock.fetch_add(1, Ordering::Relaxed);
            return Err(KvError::Unavailable(format!(
                "this node has measured its clock against {} of the {needed} peers it needs \
                 before it coordinates writes (it just started, or cannot reach them); try \
                 again in a moment or send the write to another node",
                clock.peers
            )));
        }
        if !clock.healthy {
            self.inner.stats.refused_clock.fetch_add(1, Ordering::Relaxed);
            return Err(KvError::Unavailable(format!(
                "this node's clock is {} ms {} the cluster's (the median of {} peers), more than \
                 the {} ms allowed (--max-clock-offset): it coordinates no writes until its \
                 clock is fixed (NTP); send the write to another node",
                clock.offset_ms.unsigned_abs(),
                if clock.offset_ms < 0 { "behind" } else { "ahead of" },
                clock.peers,
                self.inner.cfg.max_clock_offset.as_millis()
            )));
        }
        let version = Version { ts: self.inner.hlc.now(wall_millis()), node: self.inner.me };
        let record = Record { key, version, value };
        let op = WriteOp::start(std::time::Instant::now(), &self.inner.cfg, &view, level, record)?;
        self.drive(view, op).await
    }

    /// Reads `key` at `level`.
    pub async fn get(&self, key: Vec<u8>, level: Consistency) -> Result<Read, KvError> {
        let r = self.get_inner(key, level).await;
        let s = &self.inner.stats;
        match &r {
            Ok(read) => {
                s.reads.fetch_add(1, Ordering::Relaxed);
                s.read_repairs.fetch_add(u64::from(read.repaired), Ordering::Relaxed);
            }
            Err(_) => {
                s.read_failures.fetch_add(1, Ordering::Relaxed);
            }
        };
        r
    }

    async fn get_inner(&self, key: Vec<u8>, level: Consistency) -> Result<Read, KvError> {
        let view = self.ready_view()?;
        let op = ReadOp::start(std::time::Instant::now(), &self.inner.cfg, &view, level, key)?;
        self.drive(view, op).await
    }

    /// The ring view to coordinate with, once this node knows the ring again after a restart:
    /// every node that was on its ring before (persisted in [`META_RING_MEMBERS`]) must be back
    /// on it (or known to have left). Until then a restarted node would place keys on the few
    /// nodes it has heard of so far (itself alone, at first) and acknowledge writes that no real
    /// replica holds.
    fn ready_view(&self) -> Result<Arc<RingView>, KvError> {
        let view = self.view();
        if self.inner.ring_ready.load(Ordering::Acquire) {
            return Ok(view);
        }
        let mut gate = self.inner.ring_gate.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(expected) = gate.as_ref() {
            let missing = expected
                .iter()
                .filter(|id| view.ring.node(**id).is_none() && !view.left.contains(id))
                .count();
            if missing > 0 && !view.vouched {
                return Err(KvError::Unavailable(format!(
                    "this node restarted and has not yet learned the ring again ({missing} of \
                     the {} nodes it knew are not back on it); try again in a moment",
                    expected.len()
                )));
            }
            if missing > 0 {
                // A ready member computed the same ring: the missing nodes left while this one
                // was down, and their departure was forgotten since (after gossip's left TTL).
                tracing::warn!(
                    missing,
                    "ring whole again: a ready member agrees on it; the nodes this one knew \
                     before and cannot find left the cluster while it was down"
                );
            }
            *gate = None;
        }
        // A node not yet normal on the ring (joining, or restarted during its join) has no ring
        // of its own to wait for: it coordinates only on a ring a ready member vouches for (a
        // restarted seed that knows part of the cluster hands out a partial one, and a write
        // acknowledged on it can miss every real replica; the simulator found it).
        let normal =
            view.ring.node(view.me).is_some_and(|n| n.status == starling_ring::NodeStatus::Normal);
        if !normal && !view.vouched {
            return Err(KvError::Unavailable(
                "this node is joining the ring and has not yet seen a ring a ready member agrees \
                 on; try again in a moment"
                    .into(),
            ));
        }
        self.inner.ring_ready.store(true, Ordering::Release);
        Ok(view)
    }

    /// Forever (spawn it): keeps the ring's members in the local metadata, so a restart knows
    /// whom to wait for before it coordinates ([`Kv::ready_view`]); and once the gate is open
    /// and `converged` (gossip converged and the ring agreed) says so, publishes
    /// [`starling_kv::view::keys::KV_READY`] through `publish` (which says whether it could;
    /// if not, it is tried again), so that a restarted node that computes the same ring may
    /// trust it.
    pub async fn remember_ring(
        self,
        publish: impl Fn(&'static str, String) -> bool + std::marker::Send,
        converged: impl Fn() -> bool + std::marker::Send,
    ) {
        let mut view = self.inner.view.clone();
        let mut stored: Vec<NodeId> = Vec::new();
        let mut published = false;
        loop {
            let ids: Vec<NodeId> = {
                let v = view.borrow_and_update();
                let mut ids: Vec<NodeId> = v.ring.nodes().map(|n| n.id).collect();
                ids.sort_unstable();
                ids
            };
            // Opens the gate once the ring is whole again, even with no request to coordinate.
            let gated = self.ready_view().is_err();
            if !gated && !published && !ids.is_empty() && converged() {
                published = publish(starling_kv::view::keys::KV_READY, "1".into());
            }
            if !ids.is_empty() && !gated && ids != stored {
                let bytes: Vec<u8> = ids.iter().flat_map(|id| id.to_be_bytes()).collect();
                let storage = self.inner.storage.clone();
                let r = tokio::task::spawn_blocking(move || {
                    storage.put_meta(META_RING_MEMBERS, &bytes)
                })
                .await;
                match r {
                    Ok(Ok(())) => stored = ids,
                    _ => tracing::debug!("cannot persist the ring's members"),
                }
            }
            let wait = tokio::time::timeout(std::time::Duration::from_secs(1), view.changed());
            if let Ok(Err(_)) = wait.await {
                return;
            }
        }
    }

    /// Counts and logs a record this node could not read; what the coordinator is told.
    fn unreadable(&self, e: &crate::storage::StorageError) -> String {
        self.inner.stats.unreadable_records.fetch_add(1, Ordering::Relaxed);
        tracing::error!(error = %e, "unreadable record: the coordinator repairs it from other replicas");
        match e {
            crate::storage::StorageError::Corrupt { .. } => "corrupt record".to_string(),
            _ => "the replica's store cannot read this key".to_string(),
        }
    }

    /// The cluster's time as this node estimates it: its wall clock corrected by its measured
    /// offset. Versions are checked against this, so a replica whose own clock is off still
    /// takes the cluster's writes (it coordinates none itself until its clock is fixed).
    fn cluster_millis(&self) -> u64 {
        let offset = self.inner.clock_offset_ms.load(Ordering::Relaxed);
        (wall_millis() as i64).saturating_sub(offset).max(0) as u64
    }

    /// Peers whose clocks must be measured before this node coordinates writes.
    pub fn clock_peers_needed(&self, view: &RingView) -> usize {
        let me = self.inner.me;
        let up = view.ring.nodes().filter(|n| n.id != me && view.is_up(n.id)).count();
        starling_kv::clock::peers_needed(up)
    }

    /// This node's clock against its peers', as of the last probe round (every write reads it,
    /// so it is computed once per round, not per write).
    pub fn clock_health(&self) -> ClockHealth {
        *self.inner.clock_health.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forever (spawn it): samples every peer's clock and persists the HLC's high mark.
    pub async fn monitor_clocks(self) {
        let mut persist = tokio::time::interval(HLC_PERSIST_EVERY);
        let mut probe = tokio::time::interval(CLOCK_EARLY_PROBE_EVERY);
        let mut warned = false;
        loop {
            tokio::select! {
                _ = persist.tick() => {
                    let mark = self.inner.hlc.last().max(hlc::from_millis(wall_millis() + HLC_MARK_AHEAD_MS));
                    let storage = self.inner.storage.clone();
                    let r = tokio::task::spawn_blocking(move || storage.put_meta(META_HLC, &mark.to_be_bytes())).await;
                    if let Ok(Err(e)) = r {
                        tracing::debug!(error = %e, "cannot persist the clock's high mark");
                    }
                }
                _ = probe.tick() => {
                    self.probe_clocks().await;
                    let h = {
                        let m = self.inner.clock.lock().unwrap_or_else(|e| e.into_inner());
                        m.health(std::time::Instant::now())
                    };
                    *self.inner.clock_health.lock().unwrap_or_else(|e| e.into_inner()) = h;
                    self.inner.clock_offset_ms.store(h.offset_ms, Ordering::Relaxed);
                    // Until it has measured enough peers, it probes often (it coordinates no
                    // writes until then).
                    let needed = self.clock_peers_needed(&self.view());
                    let every = if h.peers < needed || needed == 0 { CLOCK_EARLY_PROBE_EVERY } else { CLOCK_PROBE_EVERY };
                    if probe.period() != every {
                        probe = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
                    }
                    if !h.healthy && !warned {
                        tracing::error!(offset_ms = h.offset_ms, peers = h.peers, max_ms = self.inner.cfg.max_clock_offset.as_millis() as u64, "this node's clock is off the cluster's: it refuses to coordinate writes until it is fixed");
                    } else if h.healthy && warned {
                        tracing::info!(offset_ms = h.offset_ms, "this node's clock is back within the bound");
                    }
                    warned = !h.healthy;
                }
            }
        }
    }

    async fn probe_clocks(&self) {
        let view = self.view();
        let peers: Vec<(NodeId, std::net::SocketAddr)> =
            view.others_up().filter_map(|id| Some((id, *view.addrs.get(&id)?))).collect();
        let probes = peers.into_iter().map(|(id, addr)| async move {
            let sent_ms = wall_millis();
            let started = std::time::Instant::now();
            let r = self.inner.transport.call_within(addr, Clock, CLOCK_PROBE_EVERY).await;
            (id, sent_ms, started.elapsed(), r)
        });
        let answers = futures_util::future::join_all(probes).await;
        let now = std::time::Instant::now();
        let mut m = self.inner.clock.lock().unwrap_or_else(|e| e.into_inner());
        for (id, sent_ms, rtt, r) in answers {
            if let Ok(wall_ms) = r {
                m.handle_sample(now, id, sent_ms, wall_ms, rtt);
            }
        }
    }

    /// Runs `op` until its result; whatever it still awaits then (late replicas turning into
    /// hints, read repairs past the level) finishes in a background task.
    async fn drive<O>(&self, view: Arc<RingView>, mut op: O) -> Result<O::Output, KvError>
    where
        O: Op + std::marker::Send + 'static,
    {
        let mut inflight = InFlight::default();
        let mut timer = Timer::default();
        loop {
            while let Some(out) = op.poll_send() {
                inflight.push(self.clone().carry(view.clone(), out));
            }
            if let Some(result) = op.poll_result() {
                if !op.is_finished() {
                    let kv = self.clone();
                    tokio::spawn(async move {
                        while !op.is_finished() {
                            while let Some(out) = op.poll_send() {
                                inflight.push(kv.clone().carry(view.clone(), out));
                            }
                            if !step(&mut op, &mut inflight, &mut timer).await {
                                break;
                            }
                        }
                    });
                }
                return result;
            }
            if !step(&mut op, &mut inflight, &mut timer).await {
                return Err(KvError::Internal("request ended without a result".into()));
            }
        }
    }

    /// Carries one send out: over the network, or to this node's own store.
    async fn carry(self, view: Arc<RingView>, out: Outgoing) -> (SendId, Answer) {
        let me = self.inner.me;
        let answer = match out.send {
            Send::Write { to, record } if to == me => self.store_local(record).await,
            Send::Write { to, record } => match view.addrs.get(&to) {
                Some(addr) => match self.inner.batcher.write(*addr, record).await {
                    Some(newer) => Answer::Stored { newer },
                    None => Answer::Failed,
                },
                None => Answer::Failed,
            },
            // Stand-ins and hints are off the common path: boxed, so that every send's
            // future stays as small as a replica write's (each is moved into a task).
            Send::HandOff { via, target, record } => {
                let answer = if via == me {
                    Box::pin(self.keep_hint(&view, target, record)).await
                } else {
                    Box::pin(self.hand_off(&view, via, target, record)).await
                };
                if matches!(answer, Answer::Stored { .. }) {
                    self.inner.stats.fallback_writes.fetch_add(1, Ordering::Relaxed);
                }
                answer
            }
            Send::Hint { target, record } => Box::pin(self.keep_hint(&view, target, record)).await,
            Send::Read { to, key, digest } => {
                let answer = if to == me && self.unrecovered(&key) {
                    Answer::Failed
                } else if to == me {
                    let local = if digest {
                        self.inner
                            .io
                            .versions(vec![key])
                            .await
                            .map(|v| v.map(|v| Answer::Digest(v.first().copied().flatten())))
                    } else {
                        self.inner
                            .io
                            .get_each(vec![key])
                            .await
                            .map(|mut r| r.pop().unwrap_or(Ok(None)).map(Answer::Record))
                    };
                    let local = match local {
                        Ok(local) => local,
                        Err(_) => return (out.id, Answer::Failed),
                    };
                    local.unwrap_or_else(|e| {
                        self.unreadable(&e);
                        if digest {
                            Answer::Failed
                        } else {
                            Answer::Unreadable
                        }
                    })
                } else if let Some(addr) = view.addrs.get(&to) {
                    let read = if digest {
                        self.inner.batcher.version(*addr, key).await.map(Answer::Digest)
                    } else {
                        self.inner.batcher.read(*addr, key).await.map(|r| match r {
                            batch::Got::Record(r) => Answer::Record(r),
                            batch::Got::Unreadable => Answer::Unreadable,
                        })
                    };
                    read.unwrap_or(Answer::Failed)
                } else {
                    Answer::Failed
                };
                let seen = match &answer {
                    Answer::Record(Some(r)) => Some(r.version),
                    Answer::Digest(v) => *v,
                    _ => None,
                };
                if let Some(v) = seen {
                    // A version from a clock too far ahead is not followed (its value still
                    // wins by version).
                    let bound = self.inner.cfg.max_clock_offset.as_millis() as u64;
                    let _ = self.inner.hlc.observe(v.ts, self.cluster_millis(), bound);
                }
                answer
            }
        };
        (out.id, answer)
    }

    /// This node's own replica write; says whether it already held a newer version.
    async fn store_local(&self, record: Record) -> Answer {
        match self.inner.io.apply_checked(vec![record]).await {
            Ok(mut newer) => Answer::Stored { newer: newer.pop().flatten() },
            Err(e) => {
                tracing::error!(error = %e, "local write failed");
                Answer::Failed
            }
        }
    }

    /// Sloppy quorum: asks the stand-in `via` to keep `record` as a hint for `target`.
    async fn hand_off(
        &self,
        view: &RingView,
        via: NodeId,
        target: NodeId,
        record: Record,
    ) -> Answer {
        let Some(addr) = view.addrs.get(&via) else { return Answer::Failed };
        let hint = ReplicaHint { target, records: vec![record] };
        match self.inner.transport.call_within(*addr, hint, self.inner.cfg.write_timeout).await {
            Ok(()) => Answer::Stored { newer: None },
            Err(e) => {
                tracing::debug!(
                    fallback = %via,
                    error = %e,
                    "fallback node did not take the write"
                );
                Answer::Failed
            }
        }
    }

    /// Keeps `record` for `target` in this node's hint store.
    async fn keep_hint(&self, view: &RingView, target: NodeId, record: Record) -> Answer {
        if view.left.contains(&target) {
            return Answer::Failed;
        }
        match self.store_hints(target, vec![record]).await {
            Ok(()) => Answer::Stored { newer: None },
            Err(e) => {
                tracing::debug!(error = %e, "hint not kept");
                Answer::Failed
            }
        }
    }
}

/// The sends of one op in flight. An op has a handful (its replicas, perhaps a stand-in or a
/// repair), so every wake-up polls each of them: cheaper, for so few, than `FuturesUnordered`,
/// which allocates a ready queue per op and a waker per send.
struct InFlight<F> {
    sends: Vec<std::pin::Pin<Box<F>>>,
}

impl<F> Default for InFlight<F> {
    fn default() -> Self {
        InFlight { sends: Vec::new() }
    }
}

impl<F: std::future::Future> InFlight<F> {
    fn push(&mut self, send: F) {
        self.sends.push(Box::pin(send));
    }

    /// The next send to finish; `None` when none is in flight.
    async fn next(&mut self) -> Option<F::Output> {
        std::future::poll_fn(|cx| {
            if self.sends.is_empty() {
                return std::task::Poll::Ready(None);
            }
            for i in 0..self.sends.len() {
                if let std::task::Poll::Ready(out) = self.sends[i].as_mut().poll(cx) {
                    drop(self.sends.swap_remove(i));
                    return std::task::Poll::Ready(Some(out));
                }
            }
            std::task::Poll::Pending
        })
        .await
    }
}

/// A replica's refusal as the answer to its caller.
fn refusal(e: replica::Refusal) -> Response {
    let code = if e.is_unavailable() { ErrorCode::Unavailable } else { ErrorCode::BadRequest };
    Response::error(code, e.to_string())
}

/// An op's timer: one `Sleep` for the whole op, reset only when the op's deadline moves (each
/// new `Sleep` is a registration in the runtime's timer wheel, measurable per request).
#[derive(Default)]
struct Timer {
    sleep: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    at: Option<std::time::Instant>,
}

/// One turn of a driven op: the next answer (answers first), or its timer. False if the op
/// awaits nothing and has no timer (it cannot make progress).
async fn step<O: Op>(
    op: &mut O,
    inflight: &mut InFlight<impl std::future::Future<Output = (SendId, Answer)>>,
    timer: &mut Timer,
) -> bool {
    let at = op.poll_timeout();
    if at != timer.at {
        timer.at = at;
        if let Some(at) = at {
            let at = Instant::from_std(at);
            match timer.sleep.as_mut() {
                Some(s) => s.as_mut().reset(at),
                None => timer.sleep = Some(Box::pin(tokio::time::sleep_until(at))),
            }
        }
    }
    let armed = at.is_some() && timer.sleep.is_some();
    tokio::select! {
        biased;
        Some((id, answer)) = inflight.next() => {
            op.handle_answer(std::time::Instant::now(), id, answer);
        }
        _ = async { if let Some(s) = timer.sleep.as_mut() { s.as_mut().await } }, if armed => {
            timer.at = None;
            op.handle_timeout(std::time::Instant::now());
        }
        else => return false,
    }
    true
}
