//! The metadata service: ZooKeeper's data model ([`starling_meta::Tree`]) replicated with ZAB
//! ([`starling_zab::Zab`]) among the voters of `--meta-voters`; every other node is an observer.
//!
//! One task (the driver) owns the ZAB core and is the only one that touches it: received ZAB
//! messages, client proposals, reads and watches reach it through a channel, and it runs the
//! core's "persist, then send" loop, pipelined: a thread of its own (the log writer) writes the
//! batches to the durable store ([`ZabStore`]) in order while the driver goes on. Every batch
//! handed over while one is being written joins the next write: one fsync for all of it (group
//! commit), and always before the acknowledgements those batches carry leave the node.
//!
//! - **Writes** are proposed by the leader. A node that does not lead forwards the write to the
//!   leader ([`MetaPropose`]) and answers its client once it has applied the write itself, so
//!   the client reads its own write on the node it asked.
//! - **Reads** are served from this node's tree, once it has applied the zxid the client says
//!   it has seen; `sync` first asks the leader for its committed zxid.
//! - **Sessions**: any node takes a client's pings and reports them to the leader every
//!   [`TOUCH_EVERY`]; the leader expires a session silent for its timeout by proposing its close,
//!   and a new leader gives every session a full timeout from when it took over (ZooKeeper's
//!   rule: a leader change does not expire sessions).
//! - **Watches** are long polls ([`MetaWatch`]) compared against zxids, so a client that moves
//!   to another node misses no event.
//! - ZAB messages travel as [`MetaPeerRequest::Zab`] requests, one sender task per peer, a few
//!   requests in flight, each carrying everything queued meanwhile (the receiving core puts each
//!   session's messages back in order).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use starling_meta::{MetaError, Outcome, Tree, Txn, TxnOp, WatchKind, WatchedEvent};
use starling_wire::meta::{
    MetaLeaderZxid, MetaPeerRequest, MetaPropose, MetaReadAnswer, MetaRequest, MetaSession,
    MetaSynced, MetaWatched, MetaWritten, ReadKind,
};
use starling_wire::status::MetaStatus;
use starling_wire::{Call, ErrorCode, NodeId, Response, MAX_REQUEST_BODY};
use starling_zab::{Config as ZabConfig, Event, Msg, Role, StateMachine, Zab, Zxid};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{error, info, warn};

use crate::kv::RingView;
use crate::transport::{CallError, Transport, TransportError};
use crate::zab_store::ZabStore;

/// How often nodes report their clients' session pings to the leader.
pub const TOUCH_EVERY: Duration = Duration::from_millis(250);
/// Session timeouts are clamped to this range.
pub const SESSION_TIMEOUT_MIN_MS: u32 = 1_000;
pub const SESSION_TIMEOUT_MAX_MS: u32 = 60_000;
/// How long a client call waits for a leader, the commit, or this node to catch up.
const CALL_DEADLINE: Duration = Duration::from_secs(10);
/// The longest watch long poll.
const WATCH_MAX: Duration = Duration::from_secs(60);
/// Messages queued to one peer; beyond this they are dropped (ZAB recovers).
const PEER_QUEUE: usize = 8192;
/// Bytes of ZAB messages per request to a peer.
const PEER_BATCH_BYTES: usize = MAX_REQUEST_BODY / 2;
/// Requests of ZAB messages in flight to one peer.
const PEER_IN_FLIGHT: usize = 8;

/// Why a call could not be served.
#[derive(Debug)]
enum Fail {
    Meta(MetaError),
    NotLeader(Option<NodeId>),
    Unavailable(String),
    /// The write may or may not have been applied.
    Unknown(String),
}

impl Fail {
    fn response<C: Call<Answer = Result<A, MetaError>>, A>(self) -> Response {
        match self {
            Fail::Meta(e) => C::respond(Err(e)),
            Fail::NotLeader(_) => Response::error(
                ErrorCode::Unavailable,
                "the metadata service has no leader right now (an election is in progress); retry",
            ),
            Fail::Unavailable(m) => Response::error(ErrorCode::Unavailable, m),
            Fail::Unknown(m) => Response::error(ErrorCode::Timeout, m),
        }
    }
}

type ReadFn = Box<dyn FnOnce(Result<(&mut Tree, Zxid), Fail>) + Send>;

enum Cmd {
    Zab {
        from: NodeId,
        msgs: Vec<Vec<u8>>,
    },
    Propose {
        op: TxnOp,
        reply: oneshot::Sender<Result<MetaWritten, Fail>>,
    },
    /// Run `f` on the tree once `after` is applied (or with an error at the deadline).
    Read {
        after: Zxid,
        deadline: Instant,
        f: ReadFn,
    },
    Watch {
        req: WatchReq,
        reply: oneshot::Sender<Result<MetaWatched, Fail>>,
    },
    Touch(Vec<u64>),
    LeaderZxid {
        reply: oneshot::Sender<Result<Zxid, Fail>>,
    },
}

struct WatchReq {
    path: String,
    kind: WatchKind,
    since: Zxid,
    exists: bool,
    deadline: Instant,
}

#[derive(Default)]
struct Counters {
    forwarded: AtomicU64,
    messages_sent: AtomicU64,
    messages_dropped: AtomicU64,
}

/// The metadata service's handle: cheap to clone, used by the request handlers.
pub struct Meta<T> {
    me: NodeId,
    cmds: mpsc::Sender<Cmd>,
    transport: Arc<T>,
    view: watch::Receiver<Arc<RingView>>,
    status: Arc<Mutex<Option<MetaStatus>>>,
    counters: Arc<Counters>,
    /// The leader this node follows (or itself), as of the driver's last batch.
    leader: watch::Receiver<Option<NodeId>>,
    leader_tx: Arc<watch::Sender<Option<NodeId>>>,
}

impl<T> Clone for Meta<T> {
    fn clone(&self) -> Self {
        Meta {
            me: self.me,
            cmds: self.cmds.clone(),
            transport: self.transport.clone(),
            view: self.view.clone(),
            status: self.status.clone(),
            counters: self.counters.clone(),
            leader: self.leader.clone(),
            leader_tx: self.leader_tx.clone(),
        }
    }
}

impl<T> std::fmt::Debug for Meta<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Meta").field("me", &self.me).finish()
    }
}

/// Where the voters come from.
#[derive(Debug, Clone)]
pub struct MetaOptions {
    /// `--meta-voters` as given (empty: this node alone).
    pub voters: Vec<String>,
    /// This node's bound and advertised QUIC addresses (to recognise itself in the list).
    pub own_addrs: Vec<SocketAddr>,
    /// ZAB's timers (the defaults suit a LAN).
    pub zab: ZabConfig,
}

impl<T: Transport> Meta<T> {
    /// Starts the service's driver on the current runtime. The driver resolves the voters
    /// (recorded in `store` the first time), loads the durable state and serves until the
    /// returned handle and every clone are dropped.
    pub fn start(
        me: NodeId,
        opts: MetaOptions,
        store: Arc<ZabStore>,
        transport: Arc<T>,
        view: watch::Receiver<Arc<RingView>>,
    ) -> Meta<T> {
        let (tx, rx) = mpsc::channel(4096);
        let (leader_tx, leader) = watch::channel(None);
        let meta = Meta {
            leader,
            leader_tx: Arc::new(leader_tx),
            me,
            cmds: tx,
            transport,
            view,
            status: Arc::new(Mutex::new(Some(MetaStatus {
                role: "starting".into(),
                ..MetaStatus::default()
            }))),
            counters: Arc::default(),
        };
        let m = meta.clone();
        tokio::spawn(async move {
            if let Err(e) = drive(m, opts, store, rx).await {
                error!(error = %e, "the metadata service stopped");
            }
        });
        meta
    }

    /// The service's state for `/status`.
    pub fn status(&self) -> Option<MetaStatus> {
        self.status.lock().ok().and_then(|s| s.clone())
    }

    /// Answers a client call.
    pub async fn handle_client(&self, req: MetaRequest) -> Response {
        use starling_wire::meta as w;
        match req {
            MetaRequest::OpenSession(o) => {
                let timeout_ms = o.timeout_ms.clamp(SESSION_TIMEOUT_MIN_MS, SESSION_TIMEOUT_MAX_MS);
                let session = loop {
                    let s: u64 = rand::random();
                    if s != 0 {
                        break s;
                    }
                };
                match self.write(TxnOp::CreateSession { session, timeout_ms }).await {
                    Ok(written) => w::MetaOpenSession::respond(Ok(MetaSession {
                        session,
                        timeout_ms,
                        zxid: written.zxid,
                    })),
                    Err(f) => f.response::<w::MetaOpenSession, _>(),
                }
            }
            MetaRequest::CloseSession(c) => {
                match self.write(TxnOp::CloseSession { session: c.session }).await {
                    Ok(written) => w::MetaCloseSession::respond(Ok(written)),
                    Err(f) => f.response::<w::MetaCloseSession, _>(),
                }
            }
            MetaRequest::Ping(p) => {
                let _ = self.cmds.send(Cmd::Touch(vec![p.session])).await;
                let applied = self.read(Zxid::ZERO, |_, z| MetaSynced { zxid: z }).await;
                match applied {
                    Ok(s) => w::MetaPing::respond(Ok(s)),
                    Err(f) => f.response::<w::MetaPing, _>(),
                }
            }
            MetaRequest::Write(wr) => {
                for op in &wr.ops {
                    if let Some(e) = refuse_early(op) {
                        return w::MetaWrite::respond(Err(e));
                    }
                }
                let op = TxnOp::Ops {
                    session: wr.session,
                    ops: wr.ops,
                    multi: wr.multi,
                    internal: false,
                };
                match self.write(op).await {
                    Ok(written) => w::MetaWrite::respond(Ok(written)),
                    Err(f) => f.response::<w::MetaWrite, _>(),
                }
            }
            MetaRequest::Read(r) => {
                let (path, kind) = (r.path, r.kind);
                let answer =
                    self.read(r.after, move |tree, zxid| read_tree(tree, &path, kind, zxid)).await;
                match answer {
                    Ok(a) => w::MetaRead::respond(a),
                    Err(f) => f.response::<w::MetaRead, _>(),
                }
            }
            MetaRequest::Sync(_) => match self.sync().await {
                Ok(z) => w::MetaSync::respond(Ok(MetaSynced { zxid: z })),
                Err(f) => f.response::<w::MetaSync, _>(),
            },
            MetaRequest::Watch(wt) => {
                if let Err(e) = starling_meta::path::validate(&wt.path) {
                    return w::MetaWatch::respond(Err(e));
                }
                let wait = Duration::from_millis(u64::from(wt.wait_ms)).min(WATCH_MAX);
                let req = WatchReq {
                    path: wt.path,
                    kind: wt.kind,
                    since: wt.since,
                    exists: wt.exists,
                    deadline: Instant::now() + wait,
                };
                let (tx, rx) = oneshot::channel();
                if self.cmds.send(Cmd::Watch { req, reply: tx }).await.is_err() {
                    return stopped().response::<w::MetaWatch, _>();
                }
                match rx.await.unwrap_or_else(|_| Err(stopped())) {
                    Ok(a) => w::MetaWatch::respond(Ok(a)),
                    Err(f) => f.response::<w::MetaWatch, _>(),
                }
            }
        }
    }

    /// Answers a peer call.
    pub async fn handle_peer(&self, req: MetaPeerRequest) -> Response {
        match req {
            MetaPeerRequest::Zab { from, msgs } => {
                match self.cmds.send(Cmd::Zab { from, msgs }).await {
                    Ok(()) => Response::Ok,
                    Err(_) => Response::error(ErrorCode::Unavailable, "metadata service stopped"),
                }
            }
            MetaPeerRequest::Touch(sessions) => {
                let _ = self.cmds.send(Cmd::Touch(sessions)).await;
                Response::Ok
            }
            // Refused as a client write would be: `Unavailable` tells the forwarding node
            // that nothing was proposed, so it may try again.
            MetaPeerRequest::Propose(op) => match self.propose_here(op).await {
                Ok(written) => MetaPropose::respond(Ok(written)),
                Err(f) => f.response::<MetaPropose, _>(),
            },
            MetaPeerRequest::LeaderZxid => {
                let (tx, rx) = oneshot::channel();
                if self.cmds.send(Cmd::LeaderZxid { reply: tx }).await.is_err() {
                    return Response::error(ErrorCode::Unavailable, "metadata service stopped");
                }
                match rx.await.unwrap_or_else(|_| Err(stopped())) {
                    Ok(z) => MetaLeaderZxid::respond(z),
                    Err(_) => Response::error(
                        ErrorCode::Unavailable,
                        "this node does not lead the metadata service",
                    ),
                }
            }
        }
    }

    async fn propose_here(&self, op: TxnOp) -> Result<MetaWritten, Fail> {
        let (tx, rx) = oneshot::channel();
        self.cmds.send(Cmd::Propose { op, reply: tx }).await.map_err(|_| stopped())?;
        rx.await.unwrap_or_else(|_| Err(stopped()))
    }

    /// A write: proposed here if this node leads, else forwarded to the leader; answered once
    /// this node has applied it. Retried while there is no leader or the leader cannot be
    /// reached (nothing was sent), never after a send whose answer was lost.
    async fn write(&self, op: TxnOp) -> Result<MetaWritten, Fail> {
        let deadline = Instant::now() + CALL_DEADLINE;
        loop {
            // A node that knows another leader forwards at once (that leader refuses, and the
            // write is tried again, if it no longer leads).
            let known = (*self.leader.borrow()).filter(|l| *l != self.me);
            let leader = match known {
                Some(l) => Some(l),
                None => match self.propose_here(op.clone()).await {
                    Err(Fail::NotLeader(l)) => l,
                    other => return other,
                },
            };
            if let Some(leader) = leader {
                let addr = self.view.borrow().addrs.get(&leader).copied();
                if let Some(addr) = addr {
                    self.counters.forwarded.fetch_add(1, Ordering::Relaxed);
                    let left = deadline.saturating_duration_since(Instant::now());
                    let call = self.transport.call_within(addr, MetaPropose(op.clone()), left);
                    // A leader that dies with the write in flight does not answer; once this
                    // node follows another leader, stop waiting for it.
                    let mut view = self.leader.clone();
                    let deposed = async move {
                        let _ = view.wait_for(|l| l.is_some() && *l != Some(leader)).await;
                    };
                    let answer = tokio::select! {
                        a = call => a,
                        _ = deposed => {
                            return Err(Fail::Unknown(format!(
                                "the leader {} was replaced while the write was in flight: it may or may not have been applied",
                                leader.short()
                            )))
                        }
                    };
                    match answer {
                        Ok(Ok(written)) => {
                            let z = written.zxid;
                            return self.read(z, move |_, _| written).await;
                        }
                        Ok(Err(e)) => return Err(Fail::Meta(e)),
                        Err(CallError::Answer(starling_wire::AnswerError::Refused {
                            code: ErrorCode::Timeout,
                            message,
                        })) => return Err(Fail::Unknown(message)),
                        Err(CallError::Transport(TransportError::Connect { .. }))
                        | Err(CallError::Answer(starling_wire::AnswerError::Refused {
                            code: ErrorCode::Unavailable,
                            ..
                        })) => {}
                        Err(e) => {
                            return Err(Fail::Unknown(format!(
                                "the leader did not answer ({e}): the write may or may not have been applied"
                            )))
                        }
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err(Fail::Unavailable(
                    "the metadata service has had no reachable leader for 10 s".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Runs `f` on this node's tree once it has applied `after`.
    async fn read<R: Send + 'static>(
        &self,
        after: Zxid,
        f: impl FnOnce(&mut Tree, Zxid) -> R + Send + 'static,
    ) -> Result<R, Fail> {
        let (tx, rx) = oneshot::channel();
        let run: ReadFn = Box::new(move |t| {
            let _ = tx.send(t.map(|(tree, z)| f(tree, z)));
        });
        let deadline = Instant::now() + CALL_DEADLINE;
        self.cmds.send(Cmd::Read { after, deadline, f: run }).await.map_err(|_| stopped())?;
        rx.await.unwrap_or_else(|_| Err(stopped()))
    }

    /// ZooKeeper's `sync`: this node's applied zxid once it has caught up with what the leader
    /// had committed.
    async fn sync(&self) -> Result<Zxid, Fail> {
        let deadline = Instant::now() + CALL_DEADLINE;
        loop {
            let (tx, rx) = oneshot::channel();
            self.cmds.send(Cmd::LeaderZxid { reply: tx }).await.map_err(|_| stopped())?;
            let target = match rx.await.unwrap_or_else(|_| Err(stopped())) {
                Ok(z) => Some(z),
                Err(Fail::NotLeader(Some(leader))) => {
                    let addr = self.view.borrow().addrs.get(&leader).copied();
                    match addr {
                        Some(a) => {
                            self.transport.call_within(a, MetaLeaderZxid, CALL_DEADLINE).await.ok()
                        }
                        None => None,
                    }
                }
                Err(Fail::NotLeader(None)) => None,
                Err(e) => return Err(e),
            };
            if let Some(z) = target {
                return self.read(z, |_, applied| applied).await;
            }
            if Instant::now() >= deadline {
                return Err(Fail::Unavailable(
                    "the metadata service has had no reachable leader for 10 s".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Why one of Starling's own metadata calls got no answer from the data model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaUnavailable {
    /// For people.
    pub message: String,
    /// A write that may or may not have been applied.
    pub unknown: bool,
}

impl std::fmt::Display for MetaUnavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl Fail {
    fn unavailable(self) -> MetaUnavailable {
        match self {
            Fail::Meta(e) => MetaUnavailable { message: e.to_string(), unknown: false },
            Fail::NotLeader(_) => MetaUnavailable {
                message:
                    "the metadata service has no leader right now (an election is in progress)"
                        .into(),
                unknown: false,
            },
            Fail::Unavailable(m) => MetaUnavailable { message: m, unknown: false },
            Fail::Unknown(m) => MetaUnavailable { message: m, unknown: true },
        }
    }
}

impl<T: Transport> Meta<T> {
    /// Starling's own write (the only kind allowed under [`starling_meta::RESERVED`]): one
    /// operation or a `multi`, without a session. The data model's refusals are in the
    /// answer's `results`.
    pub async fn write_internal(
        &self,
        ops: Vec<starling_meta::Op>,
        multi: bool,
    ) -> Result<MetaWritten, MetaUnavailable> {
        let op = TxnOp::Ops { session: 0, ops, multi, internal: true };
        self.write(op).await.map_err(Fail::unavailable)
    }

    /// Creates each of `paths` (empty, persistent) that does not exist yet, in order: the
    /// parents of Starling's own znodes. `Err` names what failed; an outcome in doubt is an
    /// error too (creating it again later is harmless).
    pub async fn create_parents(&self, paths: &[&str]) -> Result<(), MetaUnavailable> {
        for path in paths {
            let op = starling_meta::Op::Create {
                path: path.to_string(),
                data: Vec::new(),
                ephemeral: false,
                sequential: false,
            };
            let w = self.write_internal(vec![op], false).await?;
            match w.results.first() {
                Some(starling_meta::OpResult::Created { .. })
                | Some(starling_meta::OpResult::Failed(MetaError::NodeExists(_))) => {}
                other => {
                    return Err(MetaUnavailable {
                        message: format!("cannot create {path}: {other:?}"),
                        unknown: false,
                    })
                }
            }
        }
        Ok(())
    }

    /// Reads a znode from this node's copy (which may lag the leader by a few milliseconds).
    pub async fn read_local(
        &self,
        path: &str,
        kind: ReadKind,
    ) -> Result<Result<MetaReadAnswer, MetaError>, MetaUnavailable> {
        let path = path.to_string();
        let r = self.read(Zxid::ZERO, move |tree, zxid| read_tree(tree, &path, kind, zxid)).await;
        r.map_err(Fail::unavailable)
    }
}

fn stopped() -> Fail {
    Fail::Unavailable("the metadata service is not running on this node".into())
}

/// What the tree would refuse anyway, refused before it costs a transaction: data over the
/// limit, a path that is not valid (a sequential create's path is checked with its suffix, by
/// the tree).
fn refuse_early(op: &starling_meta::Op) -> Option<MetaError> {
    use starling_meta::Op;
    match op {
        Op::Create { data, .. } | Op::SetData { data, .. }
            if data.len() > starling_meta::MAX_DATA =>
        {
            Some(MetaError::TooLarge(data.len()))
        }
        Op::Create { sequential: true, .. } => None,
        Op::Create { path, .. }
        | Op::SetData { path, .. }
        | Op::Delete { path, .. }
        | Op::Check { path, .. } => starling_meta::path::validate(path).err(),
    }
}

fn read_tree(
    tree: &Tree,
    path: &str,
    kind: ReadKind,
    zxid: Zxid,
) -> Result<MetaReadAnswer, MetaError> {
    starling_meta::path::validate(path)?;
    let mut a = MetaReadAnswer { stat: None, data: Vec::new(), children: Vec::new(), zxid };
    match kind {
        ReadKind::Stat => a.stat = tree.stat(path),
        ReadKind::Data => {
            let (data, stat) = tree.get(path)?;
            a.data = data.to_vec();
            a.stat = Some(stat);
        }
        ReadKind::Children => {
            a.children = tree.children(path)?;
            a.stat = tree.stat(path);
        }
    }
    Ok(a)
}

fn role_name(r: Role) -> (&'static str, bool) {
    match r {
        Role::Looking => ("looking", false),
        Role::Following { synced, .. } => ("following", synced),
        Role::Observing { synced, .. } => ("observing", synced),
        Role::Leading { established, .. } => ("leading", established),
    }
}

/// The voters' node ids, once gossip knows every address of the list (`Err`: the addresses
/// not known yet).
async fn resolve_voters(
    me: NodeId,
    opts: &MetaOptions,
    view: &RingView,
) -> Result<Vec<NodeId>, Vec<String>> {
    if opts.voters.is_empty() {
        return Ok(vec![me]);
    }
    let mut ids = Vec::new();
    let mut missing = Vec::new();
    for spec in &opts.voters {
        let addrs: Vec<SocketAddr> = match tokio::net::lookup_host(spec.as_str()).await {
            Ok(a) => a.collect(),
            Err(_) => Vec::new(),
        };
        if addrs.iter().any(|a| opts.own_addrs.contains(a)) {
            ids.push(me);
        } else if let Some((id, _)) = view.addrs.iter().find(|(_, a)| addrs.contains(a)) {
            ids.push(*id);
        } else {
            missing.push(spec.clone());
        }
    }
    if !missing.is_empty() {
        return Err(missing);
    }
    ids.sort();
    ids.dedup();
    Ok(ids)
}

/// The driver's state.
struct Driver<T> {
    handle: Meta<T>,
    zab: Zab<Tree>,
    store: Arc<ZabStore>,
    voters: Vec<NodeId>,
    next_tag: u64,
    pending: HashMap<u64, oneshot::Sender<Result<MetaWritten, Fail>>>,
    /// Reads waiting for their zxid, in arrival order.
    waiting: Vec<(Zxid, Instant, ReadFn)>,
    /// Watches registered in the tree, by watcher id.
    watches: HashMap<u64, (Instant, oneshot::Sender<Result<MetaWatched, Fail>>)>,
    /// Watches waiting for this node to apply their `since`.
    watch_waiting: Vec<(WatchReq, oneshot::Sender<Result<MetaWatched, Fail>>)>,
    next_watcher: u64,
    peers: HashMap<NodeId, mpsc::Sender<Vec<u8>>>,
    /// Leading: when each session was last heard of; sessions being closed.
    last_seen: HashMap<u64, Instant>,
    expiring: HashSet<u64>,
    was_leading: bool,
    /// Not leading: sessions pinged here since the last report to the leader.
    touched: HashSet<u64>,
    next_touch: Instant,
    next_status: Instant,
    stats: MetaStatus,
    /// The last round of work took longer than `stall_grace` (a stall of this node's own).
    stalled: bool,
    stall_grace: Duration,
    /// Snapshots taken on a blocking thread report here (ticket, the bytes if saved).
    encoded_tx: mpsc::UnboundedSender<(u64, Option<Vec<u8>>)>,
    /// The log writer's thread: batches to write, in order ([`log_writer`]).
    writer: std::sync::mpsc::Sender<(u64, Vec<starling_zab::Persist>)>,
    /// Which messages wait for which write.
    pipeline: starling_zab::Pipeline,
    /// Joined when the driver ends: the store is closed before the process exits, never
    /// by a thread the exit races with.
    writer_thread: Option<std::thread::JoinHandle<()>>,
}

impl<T> Drop for Driver<T> {
    fn drop(&mut self) {
        // The writer ends once its channel closes, after the write in progress.
        self.writer = std::sync::mpsc::channel().0;
        if let Some(t) = self.writer_thread.take() {
            let _ = t.join();
        }
    }
}

/// What the log writer reports: every batch up to `seq` is durable.
struct Written {
    seq: u64,
    /// Operations in that one write (one fsync).
    ops: u64,
}

/// The log writer: writes the batches it is handed in order, each group of those waiting at
/// once in one `WriteBatch` with one fsync (group commit), and reports each group done. It
/// runs beside the driver (ZooKeeper's `SyncRequestProcessor`): the driver goes on taking
/// messages and proposals while a write is on its way to the disk.
fn log_writer(
    store: Arc<ZabStore>,
    rx: std::sync::mpsc::Receiver<(u64, Vec<starling_zab::Persist>)>,
    done: mpsc::UnboundedSender<Result<Written, String>>,
) {
    while let Ok((mut seq, mut ops)) = rx.recv() {
        while let Ok((s, more)) = rx.try_recv() {
            seq = s;
            ops.extend(more);
        }
        let snapshot_bytes: usize = ops
            .iter()
            .map(|p| match p {
                starling_zab::Persist::Snapshot { data, .. } => data.len(),
                _ => 0,
            })
            .sum();
        let started = Instant::now();
        let r = store.apply(&ops).map_err(|e| format!("cannot write the metadata log, stopping the service (ZAB must not acknowledge what is not durable): {e}"));
        if snapshot_bytes > 0 {
            info!(
                bytes = snapshot_bytes,
                write_ms = started.elapsed().as_millis() as u64,
                "the leader's metadata snapshot written"
            );
        }
        let failed = r.is_err();
        if done.send(r.map(|()| Written { seq, ops: ops.len() as u64 })).is_err() || failed {
            return;
        }
    }
}

async fn drive<T: Transport>(
    handle: Meta<T>,
    opts: MetaOptions,
    store: Arc<ZabStore>,
    mut rx: mpsc::Receiver<Cmd>,
) -> Result<(), String> {
    // 1. The voters: recorded at the first start, else resolved through gossip.
    let recorded = {
        let s = store.clone();
        tokio::task::spawn_blocking(move || s.voters()).await.map_err(|e| e.to_string())??
    };
    let voters = match recorded {
        Some(v) => v,
        None => loop {
            let view = handle.view.borrow().clone();
            match resolve_voters(handle.me, &opts, &view).await {
                Ok(v) => {
                    let s = store.clone();
                    let ids = v.clone();
                    tokio::task::spawn_blocking(move || s.set_voters(&ids))
                        .await
                        .map_err(|e| e.to_string())??;
                    info!(voters = ?v.iter().map(|n| n.short()).collect::<Vec<_>>(), "metadata service voters resolved");
                    break v;
                }
                Err(missing) => {
                    if let Ok(mut s) = handle.status.lock() {
                        if let Some(s) = s.as_mut() {
                            s.waiting_for = missing;
                        }
                    }
                    // Refuse calls meanwhile.
                    let pause = tokio::time::sleep(Duration::from_millis(300));
                    tokio::pin!(pause);
                    loop {
                        tokio::select! {
                            _ = &mut pause => break,
                            c = rx.recv() => match c {
                                None => return Ok(()),
                                Some(c) => refuse_starting(c),
                            },
                        }
                    }
                }
            }
        },
    };
    if !voters.contains(&handle.me) && opts.voters.is_empty() {
        return Err("no voters".into());
    }
    // 2. The durable state.
    let persisted = {
        let s = store.clone();
        tokio::task::spawn_blocking(move || s.load()).await.map_err(|e| e.to_string())??
    };
    let cfg = ZabConfig { voters: voters.clone(), ..opts.zab.clone() };
    let now = Instant::now();
    let zab = Zab::new(cfg, handle.me, Tree::new(), persisted, rand::random(), now)
        .map_err(|e| format!("cannot start the metadata service from its disk: {e}"))?;
    info!(
        voter = voters.contains(&handle.me),
        applied = %zab.applied(),
        "metadata service started"
    );
    let (encoded_tx, mut encoded_rx) = mpsc::unbounded_channel();
    let (writer, writer_rx) = std::sync::mpsc::channel();
    let (written_tx, mut written_rx) = mpsc::unbounded_channel();
    let writer_thread = {
        let store = store.clone();
        std::thread::Builder::new()
            .name("meta-log".into())
            .spawn(move || log_writer(store, writer_rx, written_tx))
            .map_err(|e| format!("cannot start the metadata log writer: {e}"))?
    };
    let mut d = Driver {
        handle,
        zab,
        store,
        voters,
        next_tag: 1,
        pending: HashMap::new(),
        waiting: Vec::new(),
        watches: HashMap::new(),
        watch_waiting: Vec::new(),
        next_watcher: 1,
        peers: HashMap::new(),
        last_seen: HashMap::new(),
        expiring: HashSet::new(),
        was_leading: false,
        touched: HashSet::new(),
        next_touch: now + TOUCH_EVERY,
        next_status: now,
        stats: MetaStatus::default(),
        stalled: false,
        stall_grace: opts.zab.heartbeat,
        encoded_tx,
        writer,
        pipeline: starling_zab::Pipeline::default(),
        writer_thread: Some(writer_thread),
    };
    d.pump();
    loop {
        let wake = d.zab.poll_timeout().map_or(d.next_touch, |t| t.min(d.next_touch));
        tokio::select! {
            c = rx.recv() => match c {
                None => return Ok(()),
                Some(c) => d.handle(c),
            },
            Some((ticket, saved)) = encoded_rx.recv() => match saved {
                Some(data) => d.zab.snapshot_saved(ticket, data),
                None => d.zab.snapshot_failed(ticket),
            },
            w = written_rx.recv() => match w {
                Some(w) => d.written(w?),
                None => return Err("the metadata log writer stopped".into()),
            },
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => {}
        }
        let round = Instant::now();
        // Everything else already queued joins this batch.
        for _ in 0..1024 {
            match rx.try_recv() {
                Ok(c) => d.handle(c),
                Err(_) => break,
            }
        }
        let mut now = Instant::now();
        if d.zab.poll_timeout().is_some_and(|t| t <= now) {
            // After a stall of this node's own (a large snapshot, a slow disk), what its peers
            // sent meanwhile may still sit in the network tasks: let them deliver it before
            // judging anyone silent (a stalled node must not accuse the others of its stall).
            if d.stalled {
                for _ in 0..4 {
                    tokio::task::yield_now().await;
                }
                while let Ok(c) = rx.try_recv() {
                    d.handle(c);
                }
                now = Instant::now();
            }
            d.zab.handle_timeout(now);
        }
        if now >= d.next_touch {
            d.tick(now);
        }
        // Writes finished meanwhile release their messages first.
        while let Ok(w) = written_rx.try_recv() {
            d.written(w?);
        }
        d.pump();
        if round.elapsed() > Duration::from_millis(200) {
            warn!(
                ms = round.elapsed().as_millis() as u64,
                "the metadata service stalled (a large snapshot or a slow disk)"
            );
        }
        // A round of work that took longer than the grace is a stall.
        d.stalled = round.elapsed() > d.stall_grace;
    }
}

fn refuse_starting(c: Cmd) {
    let f = || {
        Fail::Unavailable(
            "the metadata service is starting: its voters are not all known yet".into(),
        )
    };
    match c {
        Cmd::Propose { reply, .. } => {
            let _ = reply.send(Err(f()));
        }
        Cmd::Read { f: run, .. } => run(Err(f())),
        Cmd::Watch { reply, .. } => {
            let _ = reply.send(Err(f()));
        }
        Cmd::LeaderZxid { reply } => {
            let _ = reply.send(Err(f()));
        }
        Cmd::Zab { .. } | Cmd::Touch(_) => {}
    }
}

impl<T: Transport> Driver<T> {
    fn handle(&mut self, c: Cmd) {
        let now = Instant::now();
        match c {
            Cmd::Zab { from, msgs } => {
                for m in msgs {
                    self.stats.messages_received += 1;
                    match Msg::decode(&m) {
                        Ok(msg) => self.zab.handle_message(now, from, msg),
                        Err(e) => {
                            self.handle.counters.messages_dropped.fetch_add(1, Ordering::Relaxed);
                            warn!(from = %from.short(), error = %e, "undecodable ZAB message");
                        }
                    }
                }
            }
            Cmd::Propose { op, reply } => {
                let tag = self.next_tag;
                self.next_tag += 1;
                let txn = Txn { time_ms: crate::kv::wall_millis(), op };
                match self.zab.propose(now, tag, txn.encode()) {
                    Ok(_) => {
                        self.stats.proposed += 1;
                        self.pending.insert(tag, reply);
                    }
                    Err(starling_zab::NotLeader::Follower(l)) => {
                        let _ = reply.send(Err(Fail::NotLeader(Some(l))));
                    }
                    Err(starling_zab::NotLeader::NoLeader) => {
                        let _ = reply.send(Err(Fail::NotLeader(self.zab.leader())));
                    }
                }
            }
            Cmd::Read { after, deadline, f } => {
                if self.zab.applied() >= after {
                    let z = self.zab.applied();
                    f(Ok((self.zab.state_mut(), z)));
                } else {
                    self.waiting.push((after, deadline, f));
                }
            }
            Cmd::Watch { req, reply } => {
                if self.zab.applied() >= req.since {
                    self.start_watch(req, reply);
                } else {
                    self.watch_waiting.push((req, reply));
                }
            }
            Cmd::Touch(sessions) => {
                if self.leading() {
                    for s in sessions {
                        self.last_seen.insert(s, now);
                    }
                } else {
                    self.touched.extend(sessions);
                }
            }
            Cmd::LeaderZxid { reply } => {
                let r = if self.leading() {
                    Ok(self.zab.status().committed)
                } else {
                    Err(Fail::NotLeader(self.zab.leader()))
                };
                let _ = reply.send(r);
            }
        }
    }

    fn leading(&self) -> bool {
        matches!(self.zab.role(), Role::Leading { established: true, .. })
    }

    fn start_watch(&mut self, req: WatchReq, reply: oneshot::Sender<Result<MetaWatched, Fail>>) {
        let applied = self.zab.applied();
        let tree = self.zab.state_mut();
        let present = tree.stat(&req.path).is_some();
        let seen = match (req.exists, present) {
            // Absent then and now: wait for its creation.
            (false, false) => None,
            (false, true) => Some(WatchedEvent::NodeCreated),
            (true, _) => tree.changed_since(&req.path, req.kind, req.since),
        };
        if let Some(event) = seen {
            let _ = reply.send(Ok(MetaWatched { event: Some(event), zxid: applied }));
            return;
        }
        let id = self.next_watcher;
        self.next_watcher += 1;
        tree.watch(&req.path, req.kind, id);
        self.watches.insert(id, (req.deadline, reply));
    }

    /// Timers: session expiry (leading) or session reports (not leading), deadlines of reads
    /// and watches, the status.
    fn tick(&mut self, now: Instant) {
        self.next_touch = now + TOUCH_EVERY;
        let leading = self.leading();
        if leading {
            if !self.was_leading {
                // A new leader gives every session a full timeout from now.
                self.last_seen.clear();
                self.expiring.clear();
            }
            let sessions: Vec<(u64, u32)> = self.zab.state().sessions().collect();
            let open: HashSet<u64> = sessions.iter().map(|(s, _)| *s).collect();
            self.last_seen.retain(|s, _| open.contains(s));
            self.expiring.retain(|s| open.contains(s));
            for (s, timeout_ms) in sessions {
                let seen = *self.last_seen.entry(s).or_insert(now);
                if now.duration_since(seen) > Duration::from_millis(u64::from(timeout_ms))
                    && self.expiring.insert(s)
                {
                    let txn = Txn {
                        time_ms: crate::kv::wall_millis(),
                        op: TxnOp::CloseSession { session: s },
                    };
                    if self.zab.propose(now, 0, txn.encode()).is_ok() {
                        self.stats.sessions_expired += 1;
                        info!(session = format!("{s:#x}"), "session expired");
                    }
                }
            }
        } else if !self.touched.is_empty() {
            if let Some(leader) = self.zab.leader() {
                let sessions: Vec<u64> = self.touched.drain().collect();
                let addr = self.handle.view.borrow().addrs.get(&leader).copied();
                if let Some(addr) = addr {
                    let t = self.handle.transport.clone();
                    tokio::spawn(async move {
                        let req =
                            starling_wire::PeerRequest::Meta(MetaPeerRequest::Touch(sessions));
                        let _ = t.request_within(addr, req.into(), TOUCH_EVERY * 4).await;
                    });
                }
            }
        }
        self.was_leading = leading;
        // Deadlines.
        let mut i = 0;
        while i < self.waiting.len() {
            if self.waiting[i].1 <= now {
                let (after, _, f) = self.waiting.swap_remove(i);
                f(Err(Fail::Unavailable(format!(
                    "this node has not caught up to zxid {after} within 10 s (it is applying {})",
                    self.zab.applied()
                ))));
            } else {
                i += 1;
            }
        }
        let expired: Vec<u64> =
            self.watches.iter().filter(|(_, (d, _))| *d <= now).map(|(id, _)| *id).collect();
        let applied = self.zab.applied();
        for id in expired {
            if let Some((_, reply)) = self.watches.remove(&id) {
                let _ = reply.send(Ok(MetaWatched { event: None, zxid: applied }));
            }
            self.zab.state_mut().unwatch_all(id);
        }
        // A client that went away: drop its watch.
        let gone: Vec<u64> =
            self.watches.iter().filter(|(_, (_, r))| r.is_closed()).map(|(id, _)| *id).collect();
        for id in gone {
            self.watches.remove(&id);
            self.zab.state_mut().unwatch_all(id);
        }
        let mut i = 0;
        while i < self.watch_waiting.len() {
            if self.watch_waiting[i].0.deadline <= now {
                let (_, reply) = self.watch_waiting.swap_remove(i);
                let _ = reply.send(Ok(MetaWatched { event: None, zxid: applied }));
            } else {
                i += 1;
            }
        }
        if now >= self.next_status {
            self.next_status = now + Duration::from_millis(500);
            self.publish();
        }
    }

    fn publish(&mut self) {
        let st = self.zab.status();
        let (role, synced) = role_name(st.role);
        let (znodes, sessions, ephemerals, watches) = self.zab.state().counts();
        let c = &self.handle.counters;
        let s = MetaStatus {
            role: role.into(),
            synced,
            voter: self.voters.contains(&self.handle.me),
            voters: self.voters.iter().map(|v| v.to_string()).collect(),
            waiting_for: Vec::new(),
            leader: self.zab.leader().map(|l| l.to_string()),
            epoch: st.current_epoch,
            accepted_epoch: st.accepted_epoch,
            last_zxid: st.last_zxid.to_string(),
            committed_zxid: st.committed.to_string(),
            applied_zxid: self.zab.applied().to_string(),
            log_entries: st.log_entries as u64,
            snapshot_zxid: st.snapshot_zxid.to_string(),
            snapshot_bytes: st.snapshot_bytes as u64,
            synced_learners: st.synced_learners as u64,
            znodes: znodes as u64,
            sessions: sessions as u64,
            ephemerals: ephemerals as u64,
            watches: watches as u64,
            forwarded: c.forwarded.load(Ordering::Relaxed),
            messages_sent: c.messages_sent.load(Ordering::Relaxed),
            messages_dropped: c.messages_dropped.load(Ordering::Relaxed),
            ..self.stats.clone()
        };
        if let Ok(mut g) = self.handle.status.lock() {
            *g = Some(s);
        }
    }

    /// Takes the core's batches until it has nothing more to say — reports their events, sends
    /// what may leave now, hands their writes to the log writer (pipelined: see
    /// [`starling_zab::Ready`]) — then answers the reads and watches that became possible.
    fn pump(&mut self) {
        loop {
            if let Some(job) = self.zab.snapshot_job() {
                // Encoded and written to a file of its own on a blocking thread while
                // transactions go on (the image is a frozen copy); the outcome comes back
                // through `encoded_tx`.
                let (tx, store) = (self.encoded_tx.clone(), self.store.clone());
                let gen = store.snapshot_gen();
                tokio::task::spawn_blocking(move || {
                    let started = Instant::now();
                    let data = Tree::encode(job.image, job.size_hint);
                    let encode_ms = started.elapsed().as_millis() as u64;
                    let saved = match store.save_snapshot(gen, job.zxid, &data) {
                        Ok(true) => {
                            info!(
                                bytes = data.len(),
                                zxid = %job.zxid,
                                encode_ms,
                                write_ms = started.elapsed().as_millis() as u64 - encode_ms,
                                "metadata snapshot written"
                            );
                            Some(data)
                        }
                        Ok(false) => None,
                        Err(e) => {
                            error!("cannot save a metadata snapshot (the log is kept whole): {e}");
                            None
                        }
                    };
                    let _ = tx.send((job.ticket, saved));
                });
            }
            let r = self.zab.ready();
            if r.is_empty() {
                break;
            }
            let t = self.pipeline.take(r);
            for e in t.events {
                self.event(e);
            }
            for (to, msg) in t.send {
                self.send(to, msg.encode());
            }
            if let Some(write) = t.write {
                if self.writer.send(write).is_err() {
                    // The writer stopped on an error, reported through `written`.
                    return;
                }
            }
            if let Some(d) = t.durable {
                self.zab.advance_to(Instant::now(), d);
            }
        }
        let leader = self.zab.leader();
        self.handle.leader_tx.send_if_modified(|l| {
            let changed = *l != leader;
            *l = leader;
            changed
        });
        let applied = self.zab.applied();
        if self.waiting.iter().any(|(z, _, _)| *z <= applied) {
            let (ready, rest): (Vec<_>, Vec<_>) =
                std::mem::take(&mut self.waiting).into_iter().partition(|(z, _, _)| *z <= applied);
            self.waiting = rest;
            for (_, _, f) in ready {
                f(Ok((self.zab.state_mut(), applied)));
            }
        }
        if self.watch_waiting.iter().any(|(w, _)| w.since <= applied) {
            let (ready, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.watch_waiting)
                .into_iter()
                .partition(|(w, _)| w.since <= applied);
            self.watch_waiting = rest;
            for (req, reply) in ready {
                self.start_watch(req, reply);
            }
        }
        for fired in self.zab.state_mut().take_fired() {
            if let Some((_, reply)) = self.watches.remove(&fired.watcher) {
                let _ = reply.send(Ok(MetaWatched { event: Some(fired.event), zxid: fired.zxid }));
            }
        }
    }

    /// The log writer finished every batch up to `w.seq`: their messages leave, in order, and
    /// the core learns what its disk holds.
    fn written(&mut self, w: Written) {
        self.stats.persist_batches += 1;
        self.stats.persist_ops += w.ops;
        let r = self.pipeline.written(w.seq);
        for (to, msg) in r.send {
            self.send(to, msg.encode());
        }
        if let Some(d) = r.durable {
            self.zab.advance_to(Instant::now(), d);
        }
    }

    fn event(&mut self, e: Event) {
        match e {
            Event::Committed { tag, zxid } => {
                self.stats.committed += 1;
                let outcome = self.zab.state_mut().take_outcome(zxid);
                if let Some(reply) = self.pending.remove(&tag) {
                    let r = match outcome {
                        Some(Outcome::Ops(results)) => Ok(MetaWritten { zxid, results }),
                        Some(Outcome::Session(Ok(()))) => {
                            Ok(MetaWritten { zxid, results: Vec::new() })
                        }
                        Some(Outcome::Session(Err(e))) | Some(Outcome::Invalid(e)) => {
                            Err(Fail::Meta(e))
                        }
                        None => Err(Fail::Unknown(format!(
                            "committed at {zxid}, but its outcome was not kept"
                        ))),
                    };
                    let _ = reply.send(r);
                }
            }
            Event::Unknown { tag, zxid } => {
                self.stats.unknown += 1;
                if let Some(reply) = self.pending.remove(&tag) {
                    let _ = reply.send(Err(Fail::Unknown(format!(
                        "the leader lost its quorum before the write ({zxid}) committed: it may or may not be applied"
                    ))));
                }
            }
            Event::Role(r) => {
                info!(role = ?r, "metadata service role");
                self.publish();
            }
            Event::Restored { zxid } => {
                info!(%zxid, "metadata state replaced by the leader's snapshot")
            }
            Event::Error(why) => {
                self.stats.errors += 1;
                warn!(%why, "metadata service: looking for a leader again");
            }
            Event::Anomaly(why) => {
                self.stats.anomalies += 1;
                error!(%why, "metadata service anomaly: looking for a leader again");
            }
        }
    }

    /// Queues a ZAB message to a peer's sender task.
    fn send(&mut self, to: NodeId, bytes: Vec<u8>) {
        let tx = self.peers.entry(to).or_insert_with(|| {
            let (tx, rx) = mpsc::channel(PEER_QUEUE);
            tokio::spawn(peer_sender(self.handle.clone(), to, rx));
            tx
        });
        match tx.try_send(bytes) {
            Ok(()) => {}
            Err(_) => {
                self.handle.counters.messages_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Sends one peer its ZAB messages: up to [`PEER_IN_FLIGHT`] requests at a time, each carrying
/// everything queued meanwhile. Requests may overtake each other on the way; the receiver puts
/// a session's messages back in order (ZAB's sessions are FIFO over any network), so a message
/// never waits for the answer to the one before it.
async fn peer_sender<T: Transport>(meta: Meta<T>, to: NodeId, mut rx: mpsc::Receiver<Vec<u8>>) {
    let mut failures = 0u32;
    let mut flying = futures_util::stream::FuturesUnordered::new();
    loop {
        tokio::select! {
            biased;
            Some((n, answer)) = flying.next(), if !flying.is_empty() => {
                let answer: Result<Response, TransportError> = answer;
                match answer {
                    Ok(Response::Ok) => {
                        failures = 0;
                        meta.counters.messages_sent.fetch_add(n, Ordering::Relaxed);
                    }
                    other => {
                        meta.counters.messages_dropped.fetch_add(n, Ordering::Relaxed);
                        failures += 1;
                        if failures == 1 || failures.is_multiple_of(100) {
                            let addr = meta.view.borrow().addrs.get(&to).copied();
                            warn!(peer = %to.short(), ?addr, failures, answer = ?other.map(|r| r.kind()), "cannot send ZAB messages");
                        }
                        // Do not spin on a peer that is down; ZAB resends what matters.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
            first = rx.recv(), if flying.len() < PEER_IN_FLIGHT => {
                let Some(first) = first else { return };
                let mut bytes = first.len();
                let mut msgs = vec![first];
                while bytes < PEER_BATCH_BYTES {
                    match rx.try_recv() {
                        Ok(m) => {
                            bytes += m.len();
                            msgs.push(m);
                        }
                        Err(_) => break,
                    }
                }
                let n = msgs.len() as u64;
                let addr = meta.view.borrow().addrs.get(&to).copied();
                let Some(addr) = addr else {
                    meta.counters.messages_dropped.fetch_add(n, Ordering::Relaxed);
                    continue;
                };
                let req = starling_wire::PeerRequest::Meta(MetaPeerRequest::Zab { from: meta.me, msgs });
                let transport = meta.transport.clone();
                flying.push(async move {
                    (n, transport.request_within(addr, req.into(), Duration::from_secs(2)).await)
                });
            }
        }
    }
}
