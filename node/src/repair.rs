//! Anti-entropy: the driver of `starling-merkle`'s sync sessions over the peer API.
//!
//! - **Responder.** A [`RepairRequest`] from a peer is answered by [`starling_merkle::respond`]
//!   on a blocking thread, once the ranges it names are ranges this node replicates (in the
//!   agreed ring; a node whose view differs refuses, and the session is retried later) and every
//!   pushed record belongs to one.
//! - **Runs.** [`Repair::run`] compares ranges with their other replicas: one session per peer
//!   over every range they share, then a second pass with the peers compared before the last
//!   one that sent anything (so they get what later peers had). A range whose every replica took
//!   part is recorded as **repaired since** the run's start, on every replica
//!   ([`RepairRequest::Repaired`]), which lets compaction purge the tombstones written before it
//!   ([`crate::storage::PurgeGate`]).
//! - **Continuous.** Every range this node leads (first in its preference list) is repaired once
//!   per `--repair-interval`, one range at a time, paced evenly over the interval.
//! - **On demand.** `starling repair` runs every range this node replicates now
//!   ([`Repair::run_now`]); progress and the last summary are in the status.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use starling_merkle::{respond, ring_range, wire_range, Replica, Segments, Session};
use starling_ring::{token_of, NodeId, Range, Token};
use starling_wire::repair::{
    CleanupSummary, RepairRequest, RepairResponse, RepairStep, RepairStreamStep, RepairSummary,
    RunCleanup, RunRepair, TokenRange,
};
use starling_wire::status::{RangeRepair, RepairProgress, RepairStatus};
use starling_wire::{Call, ErrorCode, Record, Response};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::kv::view::RingView;
use crate::storage::{PurgeGate, Storage};
use crate::transport::Transport;

/// Local metadata: when each range was last repaired completely, and by which replicas
/// (`start:end:ms:id,id,...` lines).
const META_REPAIRED: &str = "repaired";
/// One request of a session waits at most this long.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);
/// Records per storage scan page.
const SCAN_PAGE: usize = 4096;
/// A complete run covers the writes stamped this long before it started, not up to its start:
/// a write still in flight to some replica when the run started (within its timeout), or stamped
/// by a clock up to the allowed offset ahead, may have missed the sessions. Well above the write
/// timeout (2 s) plus the clock bound (500 ms).
const SINCE_MARGIN_MS: u64 = 60_000;

/// Anti-entropy settings.
#[derive(Debug, Clone)]
pub struct RepairConfig {
    /// Continuous repair's period (`None`: off).
    pub interval: Option<Duration>,
    /// Automatic cleanup once the ring has not changed for this long (`None`: off).
    pub cleanup_after: Option<Duration>,
}

/// The node's anti-entropy (cheap to clone).
pub struct Repair<T: Transport, S: Storage> {
    inner: Arc<Inner<T, S>>,
}

impl<T: Transport, S: Storage> std::fmt::Debug for Repair<T, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repair").field("me", &self.inner.me).finish()
    }
}

impl<T: Transport, S: Storage> Clone for Repair<T, S> {
    fn clone(&self) -> Self {
        Repair { inner: self.inner.clone() }
    }
}

struct Inner<T, S> {
    me: NodeId,
    replica: Arc<StoreReplica<S>>,
    transport: Arc<T>,
    view: watch::Receiver<Arc<RingView>>,
    cfg: RepairConfig,
    gate: Arc<PurgeGate>,
    /// The node's status (whether the ring is agreed, for cleanup).
    status: watch::Receiver<Arc<crate::status::Status>>,
    /// One run at a time on this node (a manual run waits for a continuous step, and back).
    busy: tokio::sync::Mutex<()>,
    state: Mutex<State>,
    counters: Counters,
}

#[derive(Default)]
struct State {
    running: Option<RepairProgress>,
    last: Option<RepairSummary>,
    /// Range → what its last complete repair covered: writes before this wall ms, on these
    /// replicas. A record counts only while the range's replicas are still those (a node that
    /// joins or leaves changes the replica sets of ranges whose bounds stay the same).
    repaired: BTreeMap<TokenRange, Covered>,
}

#[derive(Default)]
struct Counters {
    sessions: AtomicU64,
    sessions_failed: AtomicU64,
    requests_answered: AtomicU64,
    ranges_compared: AtomicU64,
    ranges_differing: AtomicU64,
    keys_received: AtomicU64,
    keys_sent: AtomicU64,
    bytes_sent: AtomicU64,
    bytes_received: AtomicU64,
}

/// Moves the node's clock past versions repair stored ([`crate::kv::Kv::observe_versions`]).
pub type Observe = Arc<dyn Fn(&[Record]) + Send + Sync>;

/// The local store as a repair session sees it.
struct StoreReplica<S> {
    storage: Arc<S>,
    observe: Option<Observe>,
}

impl<S: Storage> Replica for StoreReplica<S> {
    fn scan(&self, lo: Token, hi: Token, visit: &mut dyn FnMut(&Record)) -> Result<(), String> {
        // `[lo, hi]` as the ring's `(lo - 1, hi]` (from token 0: `(MAX, hi]`, which wraps to
        // `[0, hi]`; the whole ring when `hi` is MAX too).
        let range = Range { start: lo.wrapping_sub(1), end: hi };
        let mut cursor: Option<Vec<u8>> = None;
        loop {
            let page = self
                .storage
                .scan(range, cursor.as_deref(), SCAN_PAGE)
                .map_err(|e| e.to_string())?;
            for r in &page.records {
                visit(r);
            }
            match page.cursor {
                Some(c) => cursor = Some(c),
                None => return Ok(()),
            }
        }
    }

    fn apply(&self, records: &[Record]) -> Result<(), String> {
        self.storage.apply(records).map_err(|e| e.to_string())?;
        // Durable before the session goes on: a pushed record is acknowledged to a sender that
        // may then drop its copy (a leave, a removal, a cleanup), and a range is recorded as
        // repaired (its tombstones then purgeable) once what it fetched is in. With `--sync
        // periodic` a power loss would otherwise take the last interval's repaired records.
        self.storage.sync_all().map_err(|e| e.to_string())?;
        if let Some(observe) = &self.observe {
            observe(records);
        }
        Ok(())
    }

    fn segments(&self) -> &Segments {
        self.storage.segments()
    }
}

/// What a complete repair of a range covered.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Covered {
    since_ms: u64,
    replicas: Vec<NodeId>,
}

/// The current replicas of each range of the ring, for [`Covered::replicas`].
fn replica_sets(view: &RingView) -> HashMap<TokenRange, Vec<NodeId>> {
    view.placement
        .segments()
        .map(|(r, natural, _)| {
            let mut set = natural.to_vec();
            set.sort();
            (wire_range(r), set)
        })
        .collect()
}

/// What one session with one peer did.
struct Outcome {
    stats: starling_merkle::SessionStats,
    bytes_sent: u64,
    bytes_received: u64,
}

impl<T: Transport, S: Storage> Repair<T, S> {
    /// The service over `storage`; loads when each range was last repaired.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        me: NodeId,
        storage: Arc<S>,
        transport: Arc<T>,
        view: watch::Receiver<Arc<RingView>>,
        cfg: RepairConfig,
        gate: Arc<PurgeGate>,
        status: watch::Receiver<Arc<crate::status::Status>>,
        observe: Option<Observe>,
    ) -> Self {
        let repaired = match storage.get_meta(META_REPAIRED) {
            Ok(Some(bytes)) => parse_repaired(&bytes),
            Ok(None) => BTreeMap::new(),
            Err(e) => {
                warn!(error = %e, "cannot read when ranges were last repaired; tombstones are kept until the next complete repair");
                BTreeMap::new()
            }
        };
        let repair = Repair {
            inner: Arc::new(Inner {
                me,
                replica: Arc::new(StoreReplica { storage, observe }),
                transport,
                view,
                cfg,
                gate,
                status,
                busy: tokio::sync::Mutex::new(()),
                state: Mutex::new(State { repaired, ..State::default() }),
                counters: Counters::default(),
            }),
        };
        repair.update_gate();
        repair
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Answers one request of a peer's session.
    pub async fn handle_peer(&self, req: RepairRequest) -> Response {
        let view = self.inner.view.borrow().clone();
        if let Err(why) = self.check_request(&view, &req) {
            return RepairStep::respond(RepairResponse::Refused(why));
        }
        let c = &self.inner.counters;
        c.requests_answered.fetch_add(1, Ordering::Relaxed);
        c.bytes_received.fetch_add(encoded_len(&req), Ordering::Relaxed);
        if let RepairRequest::Repaired { ranges, since_ms } = &req {
            self.record_repaired(ranges, *since_ms);
            return RepairStep::respond(RepairResponse::Done);
        }
        if let RepairRequest::Push(records) = &req {
            c.keys_received.fetch_add(records.len() as u64, Ordering::Relaxed);
        }
        let replica = self.inner.replica.clone();
        let answer = tokio::task::spawn_blocking(move || respond(&*replica, &req)).await;
        match answer {
            Ok(resp) => {
                if let RepairResponse::Entries(e) = &resp {
                    c.keys_sent.fetch_add(e.records.len() as u64, Ordering::Relaxed);
                }
                c.bytes_sent.fetch_add(encoded_len(&resp), Ordering::Relaxed);
                RepairStep::respond(resp)
            }
            Err(e) => Response::error(ErrorCode::Internal, format!("repair task: {e}")),
        }
    }

    /// Whether `req` names only ranges (and records of ranges) this node replicates.
    fn check_request(&self, view: &RingView, req: &RepairRequest) -> Result<(), String> {
        let me = self.inner.me;
        let ranges: &[TokenRange] = match req {
            RepairRequest::Roots { ranges, .. } | RepairRequest::Repaired { ranges, .. } => ranges,
            RepairRequest::Children { items, .. } => {
                return self.check_ranges(view, items.iter().map(|d| d.range));
            }
            RepairRequest::Entries { items, .. } => {
                return self.check_ranges(view, items.iter().map(|i| i.range));
            }
            RepairRequest::StreamPending => {
                return Err("a stream request is not part of a sync session".into());
            }
            RepairRequest::Push(records) => {
                return match records.iter().find(|r| {
                    let (natural, pending) = view.placement.write_set(token_of(&r.key));
                    !natural.contains(&me) && !pending.contains(&me)
                }) {
                    Some(_) => Err(format!(
                        "a pushed record is not in a range node {} replicates (ring views differ; \
                         the session is retried later)",
                        me.short()
                    )),
                    None => Ok(()),
                };
            }
        };
        self.check_ranges(view, ranges.iter().copied())
    }

    fn check_ranges(
        &self,
        view: &RingView,
        ranges: impl Iterator<Item = TokenRange>,
    ) -> Result<(), String> {
        let mine: HashSet<TokenRange> =
            my_ranges(view, self.inner.me, false).into_iter().map(|(r, _)| wire_range(r)).collect();
        for r in ranges {
            if !mine.contains(&r) {
                return Err(format!(
                    "range {} is not one node {} replicates (ring views differ; the session is \
                     retried later)",
                    ring_range(r),
                    self.inner.me.short()
                ));
            }
        }
        Ok(())
    }

    /// Records that a complete repair of `ranges` covered the writes before `since_ms` (never
    /// later than this node's own clock: an initiator whose clock runs ahead makes no tombstone
    /// purgeable early here).
    fn record_repaired(&self, ranges: &[TokenRange], since_ms: u64) {
        let since_ms = since_ms.min(crate::kv::wall_millis());
        let view = self.inner.view.borrow().clone();
        let current: HashSet<TokenRange> = my_ranges(&view, self.inner.me, false)
            .into_iter()
            .map(|(r, _)| wire_range(r))
            .collect();
        let sets = replica_sets(&view);
        let bytes = {
            let mut st = self.state();
            for r in ranges {
                let Some(replicas) = sets.get(r) else { continue };
                match st.repaired.get_mut(r) {
                    Some(c) if c.replicas == *replicas => c.since_ms = c.since_ms.max(since_ms),
                    _ => {
                        st.repaired.insert(*r, Covered { since_ms, replicas: replicas.clone() });
                    }
                }
            }
            // Ranges of an older ring are forgotten once the ring has moved on.
            if !current.is_empty() {
                st.repaired.retain(|r, _| current.contains(r));
            }
            format_repaired(&st.repaired)
        };
        if let Err(e) = self.inner.replica.storage.put_meta(META_REPAIRED, &bytes) {
            warn!(error = %e, "cannot record a completed repair (tombstones are kept longer)");
        }
        self.update_gate();
    }

    /// Hands compaction the ranges whose last complete repair was by their current replicas.
    fn update_gate(&self) {
        let sets = replica_sets(&self.inner.view.borrow().clone());
        let ranges = self
            .state()
            .repaired
            .iter()
            .filter(|(r, c)| sets.get(r) == Some(&c.replicas))
            .map(|(r, c)| (ring_range(*r), c.since_ms))
            .collect::<Vec<_>>();
        self.inner.gate.set(ranges);
    }

    /// Keeps compaction's view of repaired ranges in step with the ring: when a node joins or
    /// leaves, ranges whose replica set changed count as never repaired until their next
    /// complete repair.
    pub async fn keep_gate(self) {
        let mut last = String::new();
        loop {
            let digest = self.inner.view.borrow().ring.digest();
            if digest != last {
                self.update_gate();
                last = digest;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Repairs now every range this node replicates (only those shared with `peer`, if given),
    /// for `starling repair`.
    pub async fn run_now(&self, call: RunRepair) -> Response {
        let view = self.inner.view.borrow().clone();
        let peer = match call.peer.as_deref() {
            None => None,
            Some(p) => match view.ring_nodes_named(p).first().copied() {
                Some(id) if id == self.inner.me => {
                    return Response::error(
                        ErrorCode::BadRequest,
                        "--node names the node asked to repair: name one of its peers",
                    );
                }
                Some(id) => Some(id),
                None => {
                    return Response::error(
                        ErrorCode::BadRequest,
                        format!("no node {p} on the ring"),
                    )
                }
            },
        };
        let ranges: Vec<(Range, Vec<NodeId>)> = my_ranges(&view, self.inner.me, false)
            .into_iter()
            .filter(|(_, replicas)| peer.is_none_or(|p| replicas.contains(&p)))
            .filter(|(r, _)| call.range.is_none_or(|q| ring_range(q).overlaps(r)))
            .collect();
        if ranges.is_empty() {
            let why = match (&call.peer, &call.range) {
                (None, None) => "this node replicates no range yet (is it joining?)".to_owned(),
                _ => "no range this node replicates matches --with and --range".to_owned(),
            };
            return Response::error(ErrorCode::BadRequest, why);
        }
        let summary = self.run(ranges, peer, "manual").await;
        self.state().last = Some(summary.clone());
        RunRepair::respond(summary)
    }

    /// Compares `ranges` with their other replicas (only `only`, if given). See the module docs.
    pub async fn run(
        &self,
        ranges: Vec<(Range, Vec<NodeId>)>,
        only: Option<NodeId>,
        kind: &str,
    ) -> RepairSummary {
        self.run_ranges(ranges, only, kind).await.0
    }

    /// [`Repair::run`], and the ranges it completed (every replica took part).
    async fn run_ranges(
        &self,
        ranges: Vec<(Range, Vec<NodeId>)>,
        only: Option<NodeId>,
        kind: &str,
    ) -> (RepairSummary, Vec<TokenRange>) {
        let _busy = self.inner.busy.lock().await;
        let started = Instant::now();
        let started_ms = crate::kv::wall_millis();
        let me = self.inner.me;
        // Peer → the ranges shared with it, in ring order.
        let mut by_peer: BTreeMap<NodeId, Vec<TokenRange>> = BTreeMap::new();
        for (range, replicas) in &ranges {
            for p in replicas.iter().filter(|&&p| p != me && only.is_none_or(|o| o == p)) {
                by_peer.entry(*p).or_default().push(wire_range(*range));
            }
        }
        let peers: Vec<NodeId> = by_peer.keys().copied().collect();
        let mut summary = RepairSummary { started_ms, ..RepairSummary::default() };
        self.state().running = Some(RepairProgress {
            kind: kind.to_owned(),
            started_ms,
            sessions_total: peers.len() as u64,
            ..RepairProgress::default()
        });
        let mut differing: BTreeSet<TokenRange> = BTreeSet::new();
        let mut failed: BTreeSet<NodeId> = BTreeSet::new();
        // Records received in each peer's session, in order: a peer compared before one that
        // sent something is compared again.
        let mut received: Vec<u64> = Vec::with_capacity(peers.len());
        for p in &peers {
            match self.session_with(*p, by_peer[p].clone()).await {
                Ok(o) => {
                    received.push(o.stats.records_received);
                    self.account(&mut summary, &o);
                    if o.stats.ranges_differing > 0 {
                        differing.extend(by_peer[p].iter().copied());
                    }
                }
                Err(why) => {
                    received.push(0);
                    failed.insert(*p);
                    summary.failed.push((p.to_string(), why));
                }
            }
            self.progress(|pr| pr.sessions_done += 1);
        }
        let last_sender = received.iter().rposition(|&n| n > 0);
        if let Some(last) = last_sender {
            self.progress(|pr| pr.sessions_total += last as u64);
            let again: Vec<NodeId> =
                peers.iter().take(last).filter(|p| !failed.contains(p)).copied().collect();
            for p in &again {
                match self.session_with(*p, by_peer[p].clone()).await {
                    Ok(o) => self.account(&mut summary, &o),
                    Err(why) => {
                        failed.insert(*p);
                        summary.failed.push((p.to_string(), why));
                    }
                }
                self.progress(|pr| pr.sessions_done += 1);
            }
        }
        // Complete: every replica of the range took part (a run limited to one peer completes
        // nothing unless that peer is the only other replica).
        let complete: Vec<TokenRange> = ranges
            .iter()
            .filter(|(_, replicas)| {
                replicas
                    .iter()
                    .all(|p| *p == me || (by_peer.contains_key(p) && !failed.contains(p)))
            })
            .map(|(r, _)| wire_range(*r))
            .collect();
        if !complete.is_empty() {
            let since_ms = started_ms.saturating_sub(SINCE_MARGIN_MS);
            let view = self.inner.view.borrow().clone();
            let complete_set: BTreeSet<TokenRange> = complete.iter().copied().collect();
            // Each replica is told of the complete ranges it replicates (it refuses others).
            let mut per_peer: BTreeMap<NodeId, Vec<TokenRange>> = BTreeMap::new();
            for (r, replicas) in &ranges {
                if complete_set.contains(&wire_range(*r)) {
                    for p in replicas.iter().filter(|p| **p != me) {
                        per_peer.entry(*p).or_default().push(wire_range(*r));
                    }
                }
            }
            for (p, theirs) in per_peer {
                let Some(&addr) = view.addrs.get(&p) else { continue };
                let req = RepairRequest::Repaired { ranges: theirs, since_ms };
                let resp = self
                    .inner
                    .transport
                    .request_within(addr, RepairStep(req).into_request(), STEP_TIMEOUT)
                    .await;
                if !matches!(&resp, Ok(Response::Repair(r)) if matches!(**r, RepairResponse::Done))
                {
                    // That replica keeps its tombstones longer; nothing else depends on it.
                    warn!(peer = %p.short(), "could not tell a replica that its ranges were repaired");
                }
            }
            self.record_repaired(&complete, since_ms);
        }
        summary.ranges = ranges.len() as u64;
        summary.ranges_differing = differing.len() as u64;
        summary.ranges_completed = complete.len() as u64;
        summary.duration_ms = started.elapsed().as_millis() as u64;
        let c = &self.inner.counters;
        c.ranges_compared.fetch_add(summary.ranges, Ordering::Relaxed);
        c.ranges_differing.fetch_add(summary.ranges_differing, Ordering::Relaxed);
        self.state().running = None;
        if summary.keys_received + summary.keys_sent > 0 || !summary.failed.is_empty() {
            info!(
                kind,
                ranges = summary.ranges,
                differing = summary.ranges_differing,
                received = summary.keys_received,
                sent = summary.keys_sent,
                failed = summary.failed.len(),
                ms = summary.duration_ms,
                "repair"
            );
        }
        (summary, complete)
    }

    fn progress(&self, f: impl FnOnce(&mut RepairProgress)) {
        if let Some(p) = self.state().running.as_mut() {
            f(p);
        }
    }

    fn account(&self, summary: &mut RepairSummary, o: &Outcome) {
        summary.sessions += 1;
        summary.keys_received += o.stats.records_received;
        summary.keys_sent += o.stats.records_sent;
        summary.bytes_sent += o.bytes_sent;
        summary.bytes_received += o.bytes_received;
        self.progress(|p| {
            p.keys_received += o.stats.records_received;
            p.keys_sent += o.stats.records_sent;
            p.bytes += o.bytes_sent + o.bytes_received;
        });
    }

    /// Streams `ranges` from `peer` into this node's store (a join, a removal): one sync session,
    /// which moves only what this node lacks, so streaming again after an interruption resumes
    /// where it stopped. Returns the records received.
    pub async fn stream_from(&self, peer: NodeId, ranges: Vec<Range>) -> Result<u64, String> {
        let ranges = ranges.into_iter().map(wire_range).collect();
        self.session(peer, ranges, true).await.map(|o| o.stats.records_received)
    }

    /// One session with `peer` over `ranges`.
    async fn session_with(&self, peer: NodeId, ranges: Vec<TokenRange>) -> Result<Outcome, String> {
        self.session(peer, ranges, false).await
    }

    /// One session with `peer` over `ranges`; `stream`: to take the ranges over (a peer still
    /// recovering one of them refuses: it is no source).
    async fn session(
        &self,
        peer: NodeId,
        ranges: Vec<TokenRange>,
        stream: bool,
    ) -> Result<Outcome, String> {
        let c = &self.inner.counters;
        c.sessions.fetch_add(1, Ordering::Relaxed);
        let r = self.session_inner(peer, ranges, stream).await;
        match &r {
            Ok(o) => {
                c.keys_received.fetch_add(o.stats.records_received, Ordering::Relaxed);
                c.keys_sent.fetch_add(o.stats.records_sent, Ordering::Relaxed);
            }
            Err(why) => {
                c.sessions_failed.fetch_add(1, Ordering::Relaxed);
                warn!(peer = %peer.short(), error = %why, "repair session failed (retried on the next run)");
            }
        }
        r
    }

    async fn session_inner(
        &self,
        peer: NodeId,
        ranges: Vec<TokenRange>,
        stream: bool,
    ) -> Result<Outcome, String> {
        let addr = {
            let view = self.inner.view.borrow();
            if !view.is_up(peer) {
                return Err(format!("node {} is down", peer.short()));
            }
            *view.addrs.get(&peer).ok_or_else(|| format!("no address for node {}", peer.short()))?
        };
        let bits = self.inner.replica.segments().bits();
        let mut session = Session::new(bits, ranges);
        let mut out = Outcome { stats: Default::default(), bytes_sent: 0, bytes_received: 0 };
        let c = &self.inner.counters;
        loop {
            let replica = self.inner.replica.clone();
            let (s, next) = tokio::task::spawn_blocking(move || {
                let next = session.poll_request(&*replica);
                (session, next)
            })
            .await
            .map_err(|e| format!("repair task: {e}"))?;
            session = s;
            let Some(req) = next.map_err(|e| e.to_string())? else { break };
            let sent = encoded_len(&req);
            out.bytes_sent += sent;
            c.bytes_sent.fetch_add(sent, Ordering::Relaxed);
            let step = if stream {
                RepairStreamStep(req).into_request()
            } else {
                RepairStep(req).into_request()
            };
            let resp = self
                .inner
                .transport
                .request_within(addr, step, STEP_TIMEOUT)
                .await
                .map_err(|e| e.to_string())?;
            let resp = match resp {
                Response::Repair(r) => *r,
                Response::Error { message, .. } => return Err(message),
                other => return Err(format!("unexpected answer {}", other.kind())),
            };
            let got = encoded_len(&resp);
            out.bytes_received += got;
            c.bytes_received.fetch_add(got, Ordering::Relaxed);
            let replica = self.inner.replica.clone();
            let (s, r) = tokio::task::spawn_blocking(move || {
                let r = session.on_response(&*replica, resp);
                (session, r)
            })
            .await
            .map_err(|e| format!("repair task: {e}"))?;
            session = s;
            r.map_err(|e| e.to_string())?;
        }
        out.stats = session.stats();
        Ok(out)
    }

    /// Why cleanup may not run now (`None`: it may): every alive member must report the same
    /// ring, with no range moving, and this node must be `normal` on it.
    fn cleanup_blocked(&self, view: &RingView) -> Option<String> {
        let status = self.inner.status.borrow().clone();
        if !status.ring.agreed || !status.converged {
            return Some("the ring is not agreed by every alive member yet".into());
        }
        if status.ring.status.as_deref() != Some("normal") {
            return Some(format!(
                "this node is {} on the ring, not normal",
                status.ring.status.as_deref().unwrap_or("not yet")
            ));
        }
        if view.placement.segments().any(|(_, _, pending)| !pending.is_empty()) {
            return Some("a range is moving (a node is joining or leaving)".into());
        }
        None
    }

    /// Drops the records of every range this node no longer replicates (one run at a time with
    /// repairs). Refused while the ring is not settled ([`Repair::cleanup_blocked`]).
    pub async fn cleanup(&self) -> Result<CleanupSummary, String> {
        let _busy = self.inner.busy.lock().await;
        let view = self.inner.view.borrow().clone();
        if view.ring.is_empty() {
            return Err("this node has no ring yet".into());
        }
        if let Some(why) = self.cleanup_blocked(&view) {
            return Err(format!("cleanup refused: {why}; try again once it is"));
        }
        let ranges = foreign_ranges(&view, self.inner.me);
        let storage = self.inner.replica.storage.clone();
        let list = ranges.clone();
        // Asked before every batch of deletes: the ring this cleanup was planned on still
        // stands (a view rebuilt without a ring change shares its ring). Once it moved, a range
        // planned as foreign may be this node's again, and writes to it may arrive.
        let (now, planned) = (self.inner.view.clone(), view.ring.clone());
        let go_on = move || Arc::ptr_eq(&now.borrow().ring, &planned);
        let (records, stopped) = tokio::task::spawn_blocking(move || {
            let mut n = 0u64;
            for r in list {
                n += storage.drop_range(r, &go_on)?;
                if !go_on() {
                    return Ok((n, true));
                }
            }
            Ok((n, false))
        })
        .await
        .map_err(|e| format!("cleanup task: {e}"))?
        .map_err(|e: crate::storage::StorageError| e.to_string())?;
        if stopped {
            warn!(records, "cleanup stopped: the ring changed while it ran; it runs again once the ring settles");
            return Err(format!(
                "the ring changed during cleanup: stopped after dropping {records} records; \
                 what may be this node's again is kept (run it again once the ring settles)"
            ));
        }
        if records > 0 {
            info!(
                ranges = ranges.len(),
                records, "cleanup: dropped the records of ranges this node no longer replicates"
            );
        }
        Ok(CleanupSummary { ranges: ranges.len() as u64, records })
    }

    /// `starling cleanup`.
    pub async fn cleanup_now(&self) -> Response {
        match self.cleanup().await {
            Ok(s) => RunCleanup::respond(s),
            Err(why) => Response::error(ErrorCode::Unavailable, why),
        }
    }

    /// Automatic cleanup: once the ring has not changed for `--cleanup-after` (and is settled),
    /// the ranges this node no longer replicates are dropped, and again every `--cleanup-after`
    /// while the ring stays so: a record a coordinator with an older ring wrote here after the
    /// last cleanup (a write that lost its race with the ring change) goes with the next, before
    /// a later ring change could make this node a replica of it again. Returns at once when it
    /// is off.
    pub async fn auto_cleanup(self) {
        let Some(after) = self.inner.cfg.cleanup_after else { return };
        let mut last: Option<(String, Instant)> = None;
        let mut cleaned: Option<(String, Instant)> = None;
        loop {
            tokio::time::sleep(Duration::from_secs(1).min(after)).await;
            let view = self.inner.view.borrow().clone();
            let digest = view.ring.digest();
            match &last {
                Some((d, _)) if *d == digest => {}
                _ => last = Some((digest.clone(), Instant::now())),
            }
            let stable = last.as_ref().is_some_and(|(_, since)| since.elapsed() >= after);
            let due = cleaned.as_ref().is_none_or(|(d, at)| *d != digest || at.elapsed() >= after);
            if !stable || !due || view.ring.is_empty() {
                continue;
            }
            if self.cleanup_blocked(&view).is_some() {
                continue;
            }
            match self.cleanup().await {
                Ok(_) => cleaned = Some((digest, Instant::now())),
                Err(e) => warn!(error = %e, "automatic cleanup failed; tried again later"),
            }
        }
    }

    /// Continuous repair: each range this node leads, once per interval, paced evenly. Returns
    /// at once when it is off.
    pub async fn continuous(self) {
        let Some(interval) = self.inner.cfg.interval else { return };
        // Let the ring settle after a start before the first comparison.
        tokio::time::sleep(Duration::from_secs(5).min(interval)).await;
        loop {
            let view = self.inner.view.borrow().clone();
            let led: Vec<(Range, Vec<NodeId>)> = my_ranges(&view, self.inner.me, true);
            if led.is_empty() {
                tokio::time::sleep(Duration::from_secs(5).min(interval)).await;
                continue;
            }
            let pace = interval / led.len() as u32;
            for range in led {
                let next = Instant::now() + pace;
                // The ring may have moved since: repair the range only if it is still ours.
                let still = my_ranges(&self.inner.view.borrow().clone(), self.inner.me, true)
                    .into_iter()
                    .any(|(r, _)| r == range.0);
                if still {
                    self.run(vec![range], None, "continuous").await;
                }
                tokio::time::sleep_until(next.into()).await;
            }
        }
    }

    /// Recovery after an unclean stop (see `Kv::start_recovery`): once gossip has converged and
    /// this node is `normal` on the ring, compares every range it replicates with every other
    /// replica, and again every few seconds the ranges a replica was missing from (down, or
    /// unreachable), until each range has been compared with all of its replicas. `pending` is
    /// told the token ranges still to do after each pass (reads of the others are answered
    /// again). Returns the records received.
    pub async fn recover(
        &self,
        ring_known: impl Fn() -> bool,
        pending: impl Fn(Vec<Range>),
    ) -> u64 {
        let me = self.inner.me;
        let mut status = self.inner.status.clone();
        let mut received = 0;
        // Token ranges still to compare (`None`: all of this node's).
        let mut left: Option<Vec<Range>> = None;
        let mut warned: BTreeSet<String> = BTreeSet::new();
        loop {
            let converged = status.borrow_and_update().converged;
            let view = self.inner.view.borrow().clone();
            let normal =
                view.ring.node(me).is_some_and(|n| n.status == starling_ring::NodeStatus::Normal);
            // A ring learned only in part (some nodes it knew not heard of yet) places ranges on
            // the wrong replicas: comparing with those would complete nothing real.
            if !converged || !normal || !ring_known() {
                let _ = tokio::time::timeout(Duration::from_millis(200), status.changed()).await;
                continue;
            }
            // This node's ranges (as the ring is now) that overlap what is still to do, each
            // with the replicas to compare it with: not a node being removed (announced dead
            // by `starling removenode`: it will never answer, and the removal's streams need
            // this node as a source once it has compared with the others).
            let ranges: Vec<(Range, Vec<NodeId>)> = my_ranges(&view, me, false)
                .into_iter()
                .filter(|(r, _)| left.as_ref().is_none_or(|l| l.iter().any(|x| x.overlaps(r))))
                .map(|(r, replicas)| {
                    (r, replicas.into_iter().filter(|p| !view.removing.contains(p)).collect())
                })
                .collect();
            let (summary, complete) = self.run_ranges(ranges.clone(), None, "recovery").await;
            received += summary.keys_received;
            let done: BTreeSet<TokenRange> = complete.into_iter().collect();
            let rest: Vec<Range> = ranges
                .iter()
                .map(|(r, _)| *r)
                .filter(|r| !done.contains(&wire_range(*r)))
                .collect();
            if rest.is_empty() {
                return received;
            }
            for (p, why) in &summary.failed {
                if warned.insert(p.clone()) {
                    warn!(peer = %p, error = %why, ranges = rest.len(), "recovery could not compare some ranges with this replica: this node answers no reads of them until it can (a dead node is taken off the ring with `starling removenode`)");
                }
            }
            pending(rest.clone());
            left = Some(rest);
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }

    /// The status section.
    pub fn status(&self) -> RepairStatus {
        let view = self.inner.view.borrow().clone();
        let now = crate::kv::wall_millis();
        let sets = replica_sets(&view);
        let st = self.state();
        let ranges: Vec<RangeRepair> = my_ranges(&view, self.inner.me, false)
            .into_iter()
            .map(|(r, _)| {
                let r = wire_range(r);
                let covered = st.repaired.get(&r).filter(|c| sets.get(&r) == Some(&c.replicas));
                RangeRepair { start: r.start, end: r.end, repaired_ms: covered.map(|c| c.since_ms) }
            })
            .collect();
        let oldest = if ranges.is_empty() || ranges.iter().any(|r| r.repaired_ms.is_none()) {
            None
        } else {
            ranges
                .iter()
                .filter_map(|r| r.repaired_ms)
                .min()
                .map(|t| now.saturating_sub(t) as f64 / 1000.0)
        };
        let c = &self.inner.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let segments = self.inner.replica.segments();
        RepairStatus {
            interval_secs: self.inner.cfg.interval.map(|d| d.as_secs()),
            segment_bits: segments.bits(),
            segments_fresh: segments.fresh() as u64,
            sessions: load(&c.sessions),
            sessions_failed: load(&c.sessions_failed),
            requests_answered: load(&c.requests_answered),
            ranges_compared: load(&c.ranges_compared),
            ranges_differing: load(&c.ranges_differing),
            keys_received: load(&c.keys_received),
            keys_sent: load(&c.keys_sent),
            bytes_sent: load(&c.bytes_sent),
            bytes_received: load(&c.bytes_received),
            running: st.running.clone(),
            last: st.last.clone(),
            ranges,
            oldest_repair_age_secs: oldest,
            tombstones_purged: self.inner.gate.counts().0,
            tombstones_held: self.inner.gate.counts().1,
        }
    }
}

/// The ring's ranges `me` holds no replica of, now or pending: what cleanup drops.
fn foreign_ranges(view: &RingView, me: NodeId) -> Vec<Range> {
    view.placement
        .segments()
        .filter(|(_, natural, pending)| !natural.contains(&me) && !pending.contains(&me))
        .map(|(r, _, _)| r)
        .collect()
}

/// The ring's ranges (one per vnode position) that `me` replicates now, each with its replicas;
/// with `led`, only those `me` leads: it is the first replica in preference order that is up (so
/// a range whose first replica is down is still repaired among the others, if not completely).
fn my_ranges(view: &RingView, me: NodeId, led: bool) -> Vec<(Range, Vec<NodeId>)> {
    view.placement
        .segments()
        .filter(|(_, natural, _)| {
            if led {
                natural.iter().find(|p| **p == me || view.is_up(**p)) == Some(&me)
            } else {
                natural.contains(&me)
            }
        })
        .map(|(r, natural, _)| (r, natural.to_vec()))
        .collect()
}

fn encoded_len<T: serde::Serialize>(v: &T) -> u64 {
    rmp_serde::to_vec_named(v).map_or(0, |b| b.len() as u64)
}

fn format_repaired(m: &BTreeMap<TokenRange, Covered>) -> Vec<u8> {
    let mut out = String::new();
    for (r, c) in m {
        let ids: Vec<String> = c.replicas.iter().map(NodeId::to_string).collect();
        out.push_str(&format!("{}:{}:{}:{}\n", r.start, r.end, c.since_ms, ids.join(",")));
    }
    out.into_bytes()
}

/// Parses [`format_repaired`]'s lines; a line that does not parse is skipped (its range then
/// keeps its tombstones until the next complete repair: the safe side).
fn parse_repaired(bytes: &[u8]) -> BTreeMap<TokenRange, Covered> {
    let text = String::from_utf8_lossy(bytes);
    text.lines()
        .filter_map(|l| {
            let mut it = l.split(':');
            let start = it.next()?.parse().ok()?;
            let end = it.next()?.parse().ok()?;
            let since_ms = it.next()?.parse().ok()?;
            let replicas = it
                .next()?
                .split(',')
                .map(|s| s.parse::<NodeId>().ok())
                .collect::<Option<Vec<NodeId>>>()?;
            Some((TokenRange { start, end }, Covered { since_ms, replicas }))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_repair_applies_are_made_durable_before_it_goes_on() {
        let storage = Arc::new(crate::storage::mem::MemStorage::new());
        let replica = StoreReplica { storage: storage.clone(), observe: None };
        let record = Record {
            key: b"k".to_vec(),
            version: starling_wire::Version { ts: 7, node: NodeId(1) },
            value: Some(b"v".to_vec()),
        };
        replica.apply(std::slice::from_ref(&record)).expect("apply");
        assert_eq!(storage.syncs(), 1, "a pushed or fetched record is acknowledged unsynced");
        assert_eq!(storage.get(b"k").expect("get"), Some(record));
    }

    #[test]
    fn repaired_ranges_survive_a_round_trip_and_garbage_is_skipped() {
        let mut m = BTreeMap::new();
        let replicas = vec![NodeId(1), NodeId(u128::MAX)];
        m.insert(
            TokenRange { start: 5, end: 9 },
            Covered { since_ms: 1_700_000_000_000, replicas: replicas.clone() },
        );
        m.insert(TokenRange { start: u64::MAX, end: 0 }, Covered { since_ms: 3, replicas });
        assert_eq!(parse_repaired(&format_repaired(&m)), m);
        let mut bytes = format_repaired(&m);
        // Garbage, and a line without its replicas (as written before they were recorded): skipped.
        bytes.extend_from_slice(b"garbage\n1:2\n\xff\xfe:1:1\n7:8:9\n7:8:9:zz\n");
        assert_eq!(parse_repaired(&bytes), m);
    }
}
