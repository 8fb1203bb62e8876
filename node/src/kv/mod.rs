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

mod batch;
pub mod bootstrap;
pub mod hints;
pub mod hlc;
pub mod view;
pub mod writer;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use serde::{Deserialize, Serialize};
use starling_ring::{token_of, NodeKey};
use starling_wire::{check_key_value, Consistency, ErrorCode, Record, Request, Response, Version};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::storage::Storage;
use crate::transport::Transport;
use hlc::Hlc;
use view::RingView;
use writer::Writer;

/// Settings of the KV layer.
#[derive(Debug, Clone)]
pub struct KvConfig {
    /// Replicas per key (`N`).
    pub replication: usize,
    /// How long a coordinator waits for write acknowledgements.
    pub write_timeout: Duration,
    /// How long a coordinator waits for read answers.
    pub read_timeout: Duration,
    /// Hints are kept for a replica down at most this long, and dropped when older.
    pub hint_window: Duration,
    /// A read that lacks answers this long after it was sent also asks the next replica.
    pub speculative_retry: Duration,
    /// Sloppy quorum: a write whose replicas gossip shows down is handed to the next healthy
    /// nodes on the ring instead, which keep it as a hint for the replica; their acknowledgements
    /// count toward the write's level.
    pub sloppy_quorum: bool,
}

impl Default for KvConfig {
    fn default() -> Self {
        KvConfig {
            replication: 3,
            write_timeout: Duration::from_secs(2),
            read_timeout: Duration::from_secs(2),
            hint_window: Duration::from_secs(3 * 3600),
            speculative_retry: Duration::from_millis(100),
            sloppy_quorum: true,
        }
    }
}

/// Why a KV request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Timeout(String),
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
    pub read_repairs: AtomicU64,
    pub replica_writes: AtomicU64,
    pub replica_reads: AtomicU64,
    pub fallback_writes: AtomicU64,
}

/// A snapshot of [`KvStats`] plus the store's size.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KvStatus {
    pub replication: usize,
    pub keys_estimate: u64,
    pub hints_pending: u64,
    pub writes: u64,
    pub reads: u64,
    pub write_failures: u64,
    pub read_failures: u64,
    pub hints_stored: u64,
    pub hints_replayed: u64,
    pub hints_dropped: u64,
    pub read_repairs: u64,
    pub replica_writes: u64,
    pub replica_reads: u64,
    /// Writes for a down replica that a fallback node acknowledged (sloppy quorum).
    #[serde(default)]
    pub fallback_writes: u64,
    /// Keys in the version cache (0 without one).
    #[serde(default)]
    pub version_cache_keys: u64,
    /// The version cache's capacity in keys (0: no cache).
    #[serde(default)]
    pub version_cache_capacity: u64,
    /// Why the local store refuses writes (a failed write or WAL sync), if it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_failure: Option<String>,
}

/// A successful write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    pub version: Version,
    pub acked: u32,
    pub required: u32,
}

/// A successful read: the newest record among `replicas` answers (`None`: no replica has it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    pub record: Option<Record>,
    pub replicas: u32,
}

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
    me: NodeKey,
    cfg: KvConfig,
    hlc: Hlc,
    storage: Arc<S>,
    writer: Writer,
    transport: Arc<T>,
    view: watch::Receiver<Arc<RingView>>,
    stats: KvStats,
    hints: hints::HintIndex,
    batcher: Arc<batch::PeerBatcher<T>>,
}

/// One replica's answer to a read.
enum Answer {
    /// Its whole record (`None`: it stores nothing for the key).
    Record(Option<Record>),
    /// Only its version (a digest read).
    Digest(Option<Version>),
}

impl Answer {
    fn version(&self) -> Option<Version> {
        match self {
            Answer::Record(r) => r.as_ref().map(|r| r.version),
            Answer::Digest(v) => *v,
        }
    }
}

/// How one replica's part of a write ended.
enum Ack {
    Stored,
    /// A fallback node keeps it as a hint for the replica (sloppy quorum).
    HandedOff,
    /// This node keeps it as a hint.
    Hinted,
    Failed,
}

fn quorum(n: usize) -> usize {
    n / 2 + 1
}

/// Sloppy quorum (Dynamo §4.6): for each write target gossip shows down, a stand-in: the next
/// up ring node clockwise (in preference-list order past the replicas) that is not a target
/// itself. Pairs `(down target, fallback)`; fewer when the ring has no more healthy nodes.
/// "1 is up", "2 are up": for `unavailable` messages.
fn up_count(n: usize) -> String {
    if n == 1 {
        "1 is up".to_string()
    } else {
        format!("{n} are up")
    }
}

fn fallbacks(
    view: &RingView,
    token: starling_ring::Token,
    targets: &[NodeKey],
    hint_window: Duration,
) -> Vec<(NodeKey, NodeKey)> {
    // A replica down longer than the hint window gets no hints, so no stand-in either.
    let down: Vec<NodeKey> = targets
        .iter()
        .filter(|t| !view.is_up(**t))
        .filter(|t| view.down.get(t).is_none_or(|since| since.elapsed() <= hint_window))
        .copied()
        .collect();
    if down.is_empty() {
        return Vec::new();
    }
    let everyone = view.ring.replicas(token, view.ring.nodes().count());
    let spare = everyone
        .into_iter()
        .filter(|id| !targets.contains(id) && view.is_up(*id) && !view.left.contains(id));
    down.into_iter().zip(spare).collect()
}

impl<T: Transport, S: Storage> Kv<T, S> {
    /// The KV layer over `storage`, reaching peers through `transport`, placing by `view`.
    pub fn new(
        me: NodeKey,
        cfg: KvConfig,
        storage: Arc<S>,
        transport: Arc<T>,
        view: watch::Receiver<Arc<RingView>>,
    ) -> std::io::Result<Self> {
        let writer = Writer::start(storage.clone())?;
        let hints = hints::HintIndex::load(&*storage);
        let batcher = Arc::new(batch::PeerBatcher::new(
            transport.clone(),
            cfg.write_timeout.max(cfg.read_timeout),
        ));
        Ok(Kv {
            inner: Arc::new(Inner {
                me,
                cfg,
                hlc: Hlc::new(),
                storage,
                writer,
                transport,
                view,
                stats: KvStats::default(),
                hints,
                batcher,
            }),
        })
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
            read_repairs: l(&s.read_repairs),
            replica_writes: l(&s.replica_writes),
            replica_reads: l(&s.replica_reads),
            fallback_writes: l(&s.fallback_writes),
            version_cache_keys: cache.0,
            version_cache_capacity: cache.1,
            storage_failure: self.inner.storage.failure(),
        }
    }

    /// Answers the KV requests; `None` for requests that are not KV requests.
    pub async fn handle(&self, req: Request) -> Option<Response> {
        Some(match req {
            Request::KvPut { key, value, consistency } => {
                match self.put(key, value, consistency).await {
                    Ok(w) => Response::KvWritten {
                        version: w.version,
                        acked: w.acked,
                        required: w.required,
                    },
                    Err(e) => e.to_response(),
                }
            }
            Request::KvGet { key, consistency } => match self.get(key, consistency).await {
                Ok(r) => Response::KvValue { record: r.record, replicas: r.replicas },
                Err(e) => e.to_response(),
            },
            Request::ReplicaWrite(records) => self.replica_write(records).await,
            Request::ReplicaHint { target, records } => self.keep_for(target, records).await,
            Request::ReplicaRead(key) => {
                self.inner.stats.replica_reads.fetch_add(1, Ordering::Relaxed);
                match self.inner.storage.get(&key) {
                    Ok(r) => Response::ReplicaRecord(r),
                    Err(e) => Response::error(ErrorCode::Internal, e.to_string()),
                }
            }
            Request::ReplicaReadMany(keys) => {
                self.inner.stats.replica_reads.fetch_add(keys.len() as u64, Ordering::Relaxed);
                let keys: Vec<&[u8]> = keys.iter().map(|k| k.0.as_slice()).collect();
                match self.inner.storage.get_many(&keys) {
                    Ok(records) => Response::ReplicaRecordMany(batch::answer_reads(records)),
                    Err(e) => Response::error(ErrorCode::Internal, e.to_string()),
                }
            }
            Request::ReplicaVersions(keys) => {
                self.inner.stats.replica_reads.fetch_add(keys.len() as u64, Ordering::Relaxed);
                let keys: Vec<&[u8]> = keys.iter().map(|k| k.0.as_slice()).collect();
                match self.inner.storage.versions(&keys) {
                    Ok(versions) => Response::ReplicaVersions(versions),
                    Err(e) => Response::error(ErrorCode::Internal, e.to_string()),
                }
            }
            Request::ReplicaScan { start, end, after, limit } => {
                let storage = self.inner.storage.clone();
                let range = starling_ring::Range { start, end };
                let limit = (limit as usize).clamp(1, 4096);
                let page = tokio::task::spawn_blocking(move || {
                    storage.scan(range, after.as_deref(), limit)
                })
                .await;
                match page {
                    Ok(Ok(p)) => Response::ReplicaRecords { records: p.records, cursor: p.cursor },
                    Ok(Err(e)) => Response::error(ErrorCode::Internal, e.to_string()),
                    Err(e) => Response::error(ErrorCode::Internal, format!("scan task: {e}")),
                }
            }
            _ => return None,
        })
    }

    /// A replica stores records sent by a coordinator, a hint replay, read repair or a stream.
    async fn replica_write(&self, records: Vec<Record>) -> Response {
        for r in &records {
            if let Err(e) = check_key_value(&r.key, r.value.as_deref()) {
                return Response::error(ErrorCode::BadRequest, e);
            }
        }
        if let Some(max) = records.iter().map(|r| r.version.ts).max() {
            self.inner.hlc.observe(max);
        }
        let n = records.len() as u64;
        match self.inner.writer.apply(records).await {
            Ok(()) => {
                self.inner.stats.replica_writes.fetch_add(n, Ordering::Relaxed);
                Response::Ok
            }
            Err(e) => Response::error(ErrorCode::Unavailable, format!("replica cannot write: {e}")),
        }
    }

    /// A fallback node (sloppy quorum) keeps records for `target` as hints.
    async fn keep_for(&self, target: NodeKey, records: Vec<Record>) -> Response {
        if target == self.inner.me {
            return self.replica_write(records).await;
        }
        for r in &records {
            if let Err(e) = check_key_value(&r.key, r.value.as_deref()) {
                return Response::error(ErrorCode::BadRequest, e);
            }
        }
        let view = self.view();
        if view.left.contains(&target) {
            return Response::error(
                ErrorCode::BadRequest,
                format!("{target:032x} left the cluster"),
            );
        }
        if view.down.get(&target).is_some_and(|since| since.elapsed() > self.inner.cfg.hint_window)
        {
            return Response::error(
                ErrorCode::Unavailable,
                format!("{target:032x} has been down longer than the hint window"),
            );
        }
        if let Some(max) = records.iter().map(|r| r.version.ts).max() {
            self.inner.hlc.observe(max);
        }
        let n = records.len() as u64;
        match self.inner.writer.put_hints(records.into_iter().map(|r| (target, r)).collect()).await
        {
            Ok(()) => {
                self.inner.hints.add(target, n);
                self.inner.stats.hints_stored.fetch_add(n, Ordering::Relaxed);
                Response::Ok
            }
            Err(e) => Response::error(ErrorCode::Unavailable, format!("cannot keep hints: {e}")),
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
            Ok(_) => s.writes.fetch_add(1, Ordering::Relaxed),
            Err(_) => s.write_failures.fetch_add(1, Ordering::Relaxed),
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
        let view = self.view();
        if view.ring.is_empty() {
            return Err(KvError::Unavailable(
                "no node owns any token yet (the cluster is still starting)".into(),
            ));
        }
        let token = token_of(&key);
        let (natural, pending) = view.placement.write_set(token);
        let n = natural.len();
        let required = match level {
            Consistency::Any => 1,
            Consistency::One => 1 + pending.len(),
            Consistency::Quorum => quorum(n) + pending.len(),
            Consistency::All => n + pending.len(),
        };
        let targets: Vec<NodeKey> = natural.iter().chain(pending).copied().collect();
        let up = targets.iter().filter(|t| view.is_up(**t)).count();
        // Stand-ins count toward `one` and `quorum`; `all` means every replica, and `any` counts
        // this node's own hints already.
        let sloppy =
            self.inner.cfg.sloppy_quorum && matches!(level, Consistency::One | Consistency::Quorum);
        let fallbacks = if sloppy {
            fallbacks(&view, token, &targets, self.inner.cfg.hint_window)
        } else {
            Vec::new()
        };
        if level != Consistency::Any && up + fallbacks.len() < required {
            return Err(KvError::Unavailable(format!(
                "{level} write needs {required} of {} replicas, but only {}{}",
                targets.len(),
                up_count(up),
                if sloppy {
                    match fallbacks.len() {
                        1 => " and 1 other node can stand in".to_string(),
                        n => format!(" and {n} other nodes can stand in"),
                    }
                } else {
                    String::new()
                }
            )));
        }
        let record = Record {
            key,
            version: Version { ts: self.inner.hlc.now(), node: self.inner.me },
            value,
        };
        let version = record.version;
        let deadline = Instant::now() + self.inner.cfg.write_timeout;
        let mut acks: FuturesUnordered<_> = targets
            .iter()
            .map(|&t| {
                let kv = self.clone();
                let view = view.clone();
                let record = record.clone();
                let fallback = fallbacks.iter().find(|(down, _)| *down == t).map(|(_, f)| *f);
                async move {
                    match fallback {
                        Some(f) => kv.hand_off(&view, f, t, record, deadline).await,
                        None => kv.write_replica(&view, t, record, deadline).await,
                    }
                }
            })
            .collect();
        let (mut stored, mut handed, mut hinted) = (0usize, 0usize, 0usize);
        let counted = |stored: usize, handed: usize, hinted: usize| {
            if level == Consistency::Any {
                stored + handed + hinted
            } else {
                stored + handed
            }
        };
        while counted(stored, handed, hinted) < required {
            match acks.next().await {
                Some(Ack::Stored) => stored += 1,
                Some(Ack::HandedOff) => handed += 1,
                Some(Ack::Hinted) => hinted += 1,
                Some(Ack::Failed) => {}
                None => break,
            }
        }
        if !acks.is_empty() {
            // The rest finish in the background (their failures become hints).
            tokio::spawn(async move { while acks.next().await.is_some() {} });
        }
        let got = counted(stored, handed, hinted);
        if got < required {
            return Err(KvError::Timeout(format!(
                "{level} write: {} of {} replicas acknowledged within {} ms{}, {required} needed{}",
                stored + handed,
                targets.len(),
                self.inner.cfg.write_timeout.as_millis(),
                if handed > 0 {
                    format!(" ({handed} through fallback nodes)")
                } else {
                    String::new()
                },
                if hinted > 0 {
                    format!(" ({hinted} hinted for later delivery)")
                } else {
                    String::new()
                }
            )));
        }
        Ok(Written { version, acked: got as u32, required: required as u32 })
    }

    /// Sends one replica its copy; on failure stores a hint. Never takes longer than `deadline`
    /// (plus the local hint write).
    async fn write_replica(
        &self,
        view: &RingView,
        target: NodeKey,
        record: Record,
        deadline: Instant,
    ) -> Ack {
        if target == self.inner.me {
            return match self.inner.writer.apply(vec![record]).await {
                Ok(()) => Ack::Stored,
                Err(e) => {
                    tracing::error!(error = %e, "local write failed");
                    Ack::Failed
                }
            };
        }
        if view.is_up(target) {
            if let Some(addr) = view.addrs.get(&target) {
                let send = self.inner.batcher.write(*addr, record.clone());
                if let Ok(true) = tokio::time::timeout_at(deadline, send).await {
                    return Ack::Stored;
                }
            }
        }
        self.hint(view, target, record).await
    }

    /// Sloppy quorum: hands `record` for the down replica `target` to the fallback node, which
    /// keeps it as a hint. If the fallback does not take it, this node keeps the hint (which then
    /// does not count toward the quorum).
    async fn hand_off(
        &self,
        view: &RingView,
        fallback: NodeKey,
        target: NodeKey,
        record: Record,
        deadline: Instant,
    ) -> Ack {
        if fallback == self.inner.me {
            return match self.hint(view, target, record).await {
                Ack::Hinted => {
                    self.inner.stats.fallback_writes.fetch_add(1, Ordering::Relaxed);
                    Ack::HandedOff
                }
                other => other,
            };
        }
        if let Some(addr) = view.addrs.get(&fallback) {
            let req = Request::ReplicaHint { target, records: vec![record.clone()] };
            let timeout = deadline.saturating_duration_since(Instant::now());
            match self.inner.transport.request_within(*addr, req, timeout).await {
                Ok(Response::Ok) => {
                    self.inner.stats.fallback_writes.fetch_add(1, Ordering::Relaxed);
                    return Ack::HandedOff;
                }
                other => tracing::debug!(
                    fallback = %format!("{fallback:032x}"),
                    answer = ?other,
                    "fallback node did not take the write"
                ),
            }
        }
        self.hint(view, target, record).await
    }

    /// Keeps `record` for `target` unless it has been down longer than the hint window.
    async fn hint(&self, view: &RingView, target: NodeKey, record: Record) -> Ack {
        if let Some(since) = view.down.get(&target) {
            if since.elapsed() > self.inner.cfg.hint_window {
                return Ack::Failed;
            }
        }
        match self.inner.writer.put_hints(vec![(target, record)]).await {
            Ok(()) => {
                self.inner.hints.add(target, 1);
                self.inner.stats.hints_stored.fetch_add(1, Ordering::Relaxed);
                Ack::Hinted
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot store hint");
                Ack::Failed
            }
        }
    }

    /// Reads `key` at `level`.
    pub async fn get(&self, key: Vec<u8>, level: Consistency) -> Result<Read, KvError> {
        let r = self.get_inner(key, level).await;
        let s = &self.inner.stats;
        match &r {
            Ok(_) => s.reads.fetch_add(1, Ordering::Relaxed),
            Err(_) => s.read_failures.fetch_add(1, Ordering::Relaxed),
        };
        r
    }

    async fn get_inner(&self, key: Vec<u8>, level: Consistency) -> Result<Read, KvError> {
        check_key_value(&key, None).map_err(KvError::BadRequest)?;
        let view = self.view();
        if view.ring.is_empty() {
            return Err(KvError::Unavailable(
                "no node owns any token yet (the cluster is still starting)".into(),
            ));
        }
        let natural = view.placement.replicas(token_of(&key));
        let n = natural.len();
        let required = match level {
            Consistency::Any => {
                return Err(KvError::BadRequest("consistency `any` is for writes only".into()))
            }
            Consistency::One => 1,
            Consistency::Quorum => quorum(n),
            Consistency::All => n,
        };
        // This node first (no network hop), then the others in ring order.
        let mut candidates: Vec<NodeKey> =
            natural.iter().copied().filter(|t| view.is_up(*t)).collect();
        if candidates.len() < required {
            return Err(KvError::Unavailable(format!(
                "{level} read needs {required} of {n} replicas, but only {}",
                up_count(candidates.len())
            )));
        }
        if let Some(i) = candidates.iter().position(|t| *t == self.inner.me) {
            candidates[..=i].rotate_right(1);
        }
        // Digest reads (Cassandra's): the first replica (this node when it is one) returns the
        // record, the others only their version; the record travels once unless versions differ.
        let deadline = Instant::now() + self.inner.cfg.read_timeout;
        let mut asks = FuturesUnordered::new();
        let (mut next, mut data_in_flight, mut have_record) = (0, 0usize, false);
        while next < required {
            let digest = next > 0;
            data_in_flight += usize::from(!digest);
            asks.push(self.read_replica(&view, candidates[next], key.clone(), deadline, digest));
            next += 1;
        }
        let mut answers: Vec<(NodeKey, Answer)> = Vec::with_capacity(required);
        // Speculative retry: replicas that have not answered by then may have failed without
        // gossip knowing yet; ask one more (Cassandra's `speculative_retry`).
        let speculate = tokio::time::sleep(self.inner.cfg.speculative_retry);
        tokio::pin!(speculate);
        let mut speculated = false;
        while answers.len() < required {
            let spare = next < candidates.len();
            let answer = tokio::select! {
                // Answers first: the local one is usually ready at once, and the timer need not
                // be armed for it.
                biased;
                a = asks.next() => a,
                _ = &mut speculate, if !speculated && spare => {
                    speculated = true;
                    data_in_flight += usize::from(!have_record);
                    asks.push(self.read_replica(
                        &view, candidates[next], key.clone(), deadline, have_record,
                    ));
                    next += 1;
                    continue;
                }
            };
            let Some((from, digest, answer)) = answer else { break };
            data_in_flight -= usize::from(!digest);
            match answer {
                Some(a) => {
                    have_record |= !digest;
                    answers.push((from, a));
                }
                None => {
                    // That replica failed: ask the next one, if any is left; for the record if
                    // no other replica is sending it.
                    if next < candidates.len() && Instant::now() < deadline {
                        let digest = have_record || data_in_flight > 0;
                        data_in_flight += usize::from(!digest);
                        asks.push(self.read_replica(
                            &view,
                            candidates[next],
                            key.clone(),
                            deadline,
                            digest,
                        ));
                        next += 1;
                    }
                }
            }
        }
        drop(asks);
        if answers.len() < required {
            return Err(KvError::Timeout(format!(
                "{level} read: {} of {n} replicas answered within {} ms, {required} needed",
                answers.len(),
                self.inner.cfg.read_timeout.as_millis()
            )));
        }
        let newest = self.newest_record(&view, &key, &answers, deadline).await?;
        if let Some(newest) = &newest {
            let stale: Vec<NodeKey> = answers
                .iter()
                .filter(|(_, a)| a.version().is_none_or(|v| v < newest.version))
                .map(|(id, _)| *id)
                .collect();
            if !stale.is_empty() {
                self.repair(&view, &stale, newest, deadline).await;
            }
        }
        Ok(Read { record: newest, replicas: answers.len() as u32 })
    }

    /// The newest record among `answers`. When only a digest shows the newest version, the
    /// record is fetched from a replica that reported it.
    async fn newest_record(
        &self,
        view: &RingView,
        key: &[u8],
        answers: &[(NodeKey, Answer)],
        deadline: Instant,
    ) -> Result<Option<Record>, KvError> {
        let mut best: Option<Record> = answers
            .iter()
            .filter_map(|(_, a)| match a {
                Answer::Record(r) => r.as_ref(),
                Answer::Digest(_) => None,
            })
            .max_by_key(|r| r.version)
            .cloned();
        // Digests newer than every record at hand, newest first: fetch the record from them
        // until one is at least as new as every claim left.
        let mut claims: Vec<(NodeKey, Version)> = answers
            .iter()
            .filter_map(|(id, a)| match a {
                Answer::Digest(Some(v)) => Some((*id, *v)),
                _ => None,
            })
            .collect();
        claims.sort_by_key(|c| std::cmp::Reverse(c.1));
        let mut failed: Option<(NodeKey, Version)> = None;
        for (holder, claim) in claims {
            if best.as_ref().is_some_and(|b| b.version >= claim) {
                break;
            }
            match self.read_replica(view, holder, key.to_vec(), deadline, false).await {
                (_, _, Some(Answer::Record(Some(r)))) => {
                    if best.as_ref().is_none_or(|b| r.version > b.version) {
                        best = Some(r);
                    }
                }
                // It no longer holds that version (a tombstone compacted away since): the next
                // claim decides.
                (_, _, Some(_)) => {}
                (_, _, None) => {
                    failed.get_or_insert((holder, claim));
                }
            }
        }
        match failed {
            Some((id, claim)) if best.as_ref().is_none_or(|b| b.version < claim) => {
                Err(KvError::Timeout(format!(
                    "read: replica {id:032x} reported a newer version but did not send it within {} ms",
                    self.inner.cfg.read_timeout.as_millis()
                )))
            }
            _ => Ok(best),
        }
    }

    /// One replica's answer for `key`: its record, or only its version when `digest`.
    /// `(id, digest, None)` if it failed.
    async fn read_replica(
        &self,
        view: &RingView,
        target: NodeKey,
        key: Vec<u8>,
        deadline: Instant,
        digest: bool,
    ) -> (NodeKey, bool, Option<Answer>) {
        let answer = if target == self.inner.me {
            let local = if digest {
                self.inner.storage.versions(&[&key]).map(|v| Answer::Digest(v[0]))
            } else {
                self.inner.storage.get(&key).map(Answer::Record)
            };
            local.map_err(|e| tracing::error!(error = %e, "local read failed")).ok()
        } else if let Some(addr) = view.addrs.get(&target) {
            let read = async {
                if digest {
                    self.inner.batcher.version(*addr, key).await.map(Answer::Digest)
                } else {
                    self.inner.batcher.read(*addr, key).await.map(Answer::Record)
                }
            };
            tokio::time::timeout_at(deadline, read).await.ok().flatten()
        } else {
            None
        };
        if let Some(v) = answer.as_ref().and_then(Answer::version) {
            self.inner.hlc.observe(v.ts);
        }
        (target, digest, answer)
    }

    /// Writes the newest record back to replicas that answered with an older one, and waits for
    /// them (until the read deadline), so the next quorum read sees at least this version.
    async fn repair(&self, view: &RingView, stale: &[NodeKey], newest: &Record, deadline: Instant) {
        self.inner.stats.read_repairs.fetch_add(stale.len() as u64, Ordering::Relaxed);
        let mut repairs: FuturesUnordered<_> =
            stale.iter().map(|&t| self.write_replica(view, t, newest.clone(), deadline)).collect();
        while repairs.next().await.is_some() {}
    }
}
