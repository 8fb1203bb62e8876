//! Topics on a node: the partition replicas it hosts, and the topic calls it answers.
//!
//! - **Metadata** lives in the metadata service (`starling_mq::topic`'s layout under
//!   `/starling/topics`): a topic's settings, and per partition its replicas, leader, leader
//!   epoch and ISR. `create` places each partition on the ring's preference list for
//!   `"<topic>/<partition>"` and writes every znode in one `multi`.
//! - **Replicas**: a manager task reads the topic tree every [`SCAN_EVERY`] and runs one driver
//!   task per partition this node replicates. The driver owns the partition's sans-IO core
//!   ([`Replica`] over a [`Log`] in `<data-dir>/topics/<topic>-<partition>`) and is the only
//!   one to touch it: produce and fetch calls, replication messages from the other replicas,
//!   partition states from the metadata service and the gossip failure detector's verdicts reach
//!   it through a channel, and it carries out what the core asks (send a message, compare-and-set
//!   the partition state, refresh it).
//! - **Calls**: produce, fetch and offsets are served by the partition's leader; another node
//!   forwards them to the leader once ([`TopicPeerRequest::Leader`]).
//! - **Durability**: `--sync periodic` flushes every log every sync interval; `always` flushes
//!   each append before it counts (leader and followers). A clean stop leaves a marker in the
//!   partition's folder; a replica that starts without it (kill -9, power loss) may lack what it
//!   acknowledged, so it stays out of leadership while another in-sync replica can lead
//!   ([`Replica::mark_unclean_start`]).
//! - A topic's data is removed from a node only after the node saw the topic's znode exist and
//!   then disappear (a node whose metadata copy is still catching up never deletes anything).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::join_all;
use serde::Serialize;
use starling_meta::{MetaError, Op, OpResult};
use starling_mq::log::{Log, LogConfig, LogError};
use starling_mq::producer::SequenceError;
use starling_mq::replica::{
    self, Event, FetchAnswer, Move, Msg, Output, PartitionState, ProduceError, Replica,
    ReplicaConfig, Role,
};
use starling_mq::topic::{
    check_name, decode_config, decode_state, encode_config, encode_state, partition_path,
    placement_key, topic_path, TopicConfig, TOPICS_PATH,
};
use starling_wire::meta::{MetaReadAnswer, ReadKind};
use starling_wire::topic::{
    Acks, Fetched, GroupCommit, GroupCommitted, GroupDescribe, GroupHeartbeat, GroupLeave,
    PartitionInfo, PartitionOffsets, Produced, TopicAlter, TopicCreate, TopicDelete, TopicDescribe,
    TopicError, TopicFetch, TopicInfo, TopicList, TopicOffsets, TopicPeerRequest, TopicProduce,
    TopicReplicate, TopicRequest,
};
use starling_wire::{Call, NodeId, PeerRequest, Request, Response};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::group_offsets::GroupOffsets;
use crate::groups::Groups;
use crate::kv::RingView;
use crate::meta::{Meta, MetaUnavailable};
use crate::storage::rocks::SyncMode;
use crate::transport::{Transport, TransportError};
use starling_mq::fence::{Committed, FenceError, OffsetKey};

/// How often the manager reads the topic tree (new partitions start within this).
pub const SCAN_EVERY: Duration = Duration::from_millis(250);
/// Longest fetch long poll.
const FETCH_WAIT_MAX: Duration = Duration::from_secs(30);
/// Commands queued to one partition driver; replication messages beyond it are dropped (the
/// protocol re-sends), calls wait.
const PART_QUEUE: usize = 4096;
/// Name of the clean-stop marker in a partition's folder.
const CLEAN_MARKER: &str = ".clean-shutdown";
/// Name of the file holding the topic's incarnation in a partition's folder.
const TOPIC_ID_FILE: &str = "topic-id";
/// How long a forwarded call may take.
/// How long a forwarded call may take (within a client's default 5 s deadline; a long poll
/// adds its wait).
const FORWARD_TIMEOUT: Duration = Duration::from_millis(4500);

type PartKey = (String, u32);

/// Longest a fetch from a replica a move adds waits for the move budget (below the follower's
/// 2 s fetch timeout, so a throttled fetch is not sent again).
const MOVE_WAIT_MAX: Duration = Duration::from_secs(1);

/// The node's budget for partition moves (`--topic-move-rate`): a token bucket of bytes shared
/// by every partition this node leads, filled at the rate, holding at most an eighth of a
/// second of it. A fetch from a replica a move adds reserves the bytes it may be answered
/// with and waits until the bucket covers them; its answer gives back what it did not use.
/// So a new replica copies the log at the rate, however many partitions move at once (up to
/// eight waiting at a time; beyond, each still gets an answer every [`MOVE_WAIT_MAX`]), while
/// followers in the ISR are never held back. Nothing is reserved further ahead than
/// [`MOVE_WAIT_MAX`]: a burst of more moving partitions than the rate serves leaves no debt
/// that would slow the moves after it.
#[derive(Debug)]
struct MoveBudget {
    /// Bytes per second.
    rate: f64,
    /// Most tokens held.
    burst: f64,
    /// Tokens (negative: reserved ahead) and when last filled.
    state: Mutex<(f64, Option<std::time::Instant>)>,
}

impl MoveBudget {
    fn new(rate: u64) -> MoveBudget {
        let rate = rate.max(1) as f64;
        MoveBudget { rate, burst: rate / 8.0, state: Mutex::new((rate / 8.0, None)) }
    }

    /// Most bytes one throttled fetch may ask for: an eighth of a second's worth (at least
    /// 16 KiB, so a batch of ordinary size fits).
    fn per_fetch(&self) -> u32 {
        (self.rate / 8.0).clamp(16384.0, f64::from(u32::MAX)) as u32
    }

    /// Takes `bytes`; says how long until the bucket covers them.
    fn reserve(&self, now: std::time::Instant, bytes: u64) -> Duration {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (tokens, at) = &mut *st;
        if let Some(at) = at {
            *tokens += now.saturating_duration_since(*at).as_secs_f64() * self.rate;
        }
        let most_debt = -self.rate * MOVE_WAIT_MAX.as_secs_f64();
        *tokens = (tokens.min(self.burst) - bytes as f64).max(most_debt);
        *at = Some((*at).map_or(now, |a| a.max(now)));
        if *tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-*tokens / self.rate)
        }
    }

    /// Gives back reserved bytes that were not sent.
    fn refund(&self, bytes: u64) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.0 = (st.0 + bytes as f64).min(self.burst);
    }
}

/// What a partition driver publishes about its replica.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PartView {
    pub topic: String,
    pub partition: u32,
    pub role: &'static str,
    pub leader: Option<NodeId>,
    pub leader_epoch: i32,
    pub isr: Vec<NodeId>,
    pub log_start: i64,
    pub log_end: i64,
    pub high_watermark: i64,
    pub size_bytes: u64,
    /// The recorded replica list.
    pub replicas: Vec<NodeId>,
    /// The move this replica carries out as leader, if any.
    #[serde(skip)]
    pub moving: Option<Move>,
}

impl PartView {
    fn leads(&self) -> bool {
        self.role == "leader"
    }
}

enum PCmd {
    Msg(NodeId, Msg),
    /// A fetch from a replica a move adds, with the bytes it reserved of the node's move
    /// budget (what its answer does not use goes back).
    MoveFetch(NodeId, Msg, u64),
    State(PartitionState, u64),
    Produce {
        batches: Vec<u8>,
        acks: Acks,
        reply: oneshot::Sender<Result<Produced, TopicError>>,
    },
    Read {
        offset: i64,
        max_bytes: usize,
        reply: oneshot::Sender<Result<Fetched, TopicError>>,
    },
    OffsetForTime {
        ts: i64,
        reply: oneshot::Sender<Result<i64, TopicError>>,
    },
    /// Where a leader epoch ends in this (leading) replica's log.
    EpochEnd {
        epoch: i32,
        reply: oneshot::Sender<Result<(i32, i64), TopicError>>,
    },
    /// The partition's target replica list (the ring's preference list for it).
    Target(Vec<NodeId>),
    /// Stop; the answer says whether the partition state the driver knows still lists this
    /// node (if not, its folder may go).
    Stop(oneshot::Sender<bool>),
}

#[derive(Clone)]
struct Part {
    cmds: mpsc::Sender<PCmd>,
    /// The topic's incarnation (see [`Topics::scan`]).
    incarnation: u64,
    /// The settings it runs with (a change restarts it).
    cfg: TopicConfig,
    view: watch::Receiver<PartView>,
}

struct Inner<T> {
    me: NodeId,
    groups: Groups,
    /// Committed offsets, in the metadata service, fenced by each group's claim.
    offsets: Arc<GroupOffsets<T>>,
    dir: PathBuf,
    transport: Arc<T>,
    meta: Meta<T>,
    view: watch::Receiver<Arc<RingView>>,
    sync: SyncMode,
    parts: Mutex<HashMap<PartKey, Part>>,
    /// What moves may send (`--topic-move-rate`; `None`: no limit).
    move_budget: Option<MoveBudget>,
    /// Set by [`Topics::shutdown`]: no partition starts any more.
    stopping: std::sync::atomic::AtomicBool,
}

/// The node's settings for its partitions.
#[derive(Debug, Clone, Copy)]
pub struct TopicsSettings {
    /// When appends reach the disk (`--sync`).
    pub sync: SyncMode,
    /// Bytes per second a leader sends to the replicas moves add (`--topic-move-rate`;
    /// `None`: no limit).
    pub move_rate: Option<u64>,
}

/// The node's topics: cheap to clone.
pub struct Topics<T> {
    inner: Arc<Inner<T>>,
}

impl<T> Clone for Topics<T> {
    fn clone(&self) -> Self {
        Topics { inner: self.inner.clone() }
    }
}

impl<T> std::fmt::Debug for Topics<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Topics").field("me", &self.inner.me).finish()
    }
}

fn unavailable(e: MetaUnavailable) -> TopicError {
    if e.unknown {
        TopicError::OutcomeUnknown(format!("metadata service: {}", e.message))
    } else {
        TopicError::Unavailable(format!("metadata service: {}", e.message))
    }
}

fn produce_error(e: ProduceError) -> TopicError {
    match e {
        ProduceError::NotLeader { leader, epoch } => TopicError::NotLeader { leader, epoch },
        ProduceError::NotEnoughReplicas { isr, min } => {
            TopicError::NotEnoughReplicas { isr: isr as u32, min: min as u32 }
        }
        ProduceError::Invalid(m) => TopicError::Invalid(m),
        ProduceError::Sequence(e @ SequenceError::InvalidProducerEpoch { .. }) => {
            TopicError::ProducerFenced(e.to_string())
        }
        ProduceError::Sequence(e @ SequenceError::OutOfOrderSequence { .. }) => {
            TopicError::OutOfOrderSequence(e.to_string())
        }
        ProduceError::Sequence(e @ SequenceError::UnknownProducer { .. }) => {
            TopicError::UnknownProducer(e.to_string())
        }
        ProduceError::Storage(m) => TopicError::Storage(m),
        e @ (ProduceError::NotEnoughReplicasAfterAppend
        | ProduceError::LeaderChanged
        | ProduceError::Timeout) => TopicError::OutcomeUnknown(e.to_string()),
    }
}

impl<T: Transport> Topics<T> {
    /// Starts the manager task; partition logs live under `dir`.
    pub fn start(
        me: NodeId,
        dir: PathBuf,
        transport: Arc<T>,
        meta: Meta<T>,
        view: watch::Receiver<Arc<RingView>>,
        settings: TopicsSettings,
        instance: u64,
    ) -> Topics<T> {
        let offsets = Arc::new(GroupOffsets::new(meta.clone(), me.0, instance));
        let inner = Arc::new(Inner {
            me,
            groups: Groups::default(),
            offsets,
            dir,
            transport,
            meta,
            view,
            sync: settings.sync,
            parts: Mutex::default(),
            move_budget: settings.move_rate.map(MoveBudget::new),
            stopping: Default::default(),
        });
        let topics = Topics { inner };
        tokio::spawn(topics.clone().manage());
        tokio::spawn(topics.clone().watch_ring());
        topics
    }

    /// Marks the group coordinator unsettled at start and whenever the ring or a member's
    /// liveness changes (groups may move to this node, whose members it has not heard yet).
    async fn watch_ring(self) {
        let mut view = self.inner.view.clone();
        let key = |v: &RingView| {
            let mut down: Vec<NodeId> = v.down.keys().copied().collect();
            down.sort();
            (v.ring.digest(), down)
        };
        let mut last = key(&view.borrow());
        self.inner.groups.unsettled(std::time::Instant::now() + crate::groups::SESSION_MAX);
        while view.changed().await.is_ok() {
            let now = key(&view.borrow());
            if now != last {
                last = now;
                self.inner.groups.unsettled(std::time::Instant::now() + crate::groups::SESSION_MAX);
            }
        }
    }

    /// The partitions this node replicates, for `/status`.
    pub fn partitions(&self) -> Vec<PartView> {
        let parts = self.inner.parts.lock().map(|p| p.clone()).unwrap_or_default();
        let mut out: Vec<PartView> = parts.values().map(|p| p.view.borrow().clone()).collect();
        out.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        out
    }

    /// The partitions this node replicates, as `/status` shows them.
    pub fn status(&self) -> Vec<starling_wire::status::PartitionStatus> {
        self.partitions()
            .into_iter()
            .map(|v| starling_wire::status::PartitionStatus {
                topic: v.topic,
                partition: v.partition,
                role: v.role.to_string(),
                leader: v.leader.map(|l| l.to_string()),
                leader_epoch: v.leader_epoch,
                isr: v.isr.iter().map(ToString::to_string).collect(),
                log_start: v.log_start,
                log_end: v.log_end,
                high_watermark: v.high_watermark,
                size_bytes: v.size_bytes,
                replicas: v.replicas.iter().map(ToString::to_string).collect(),
                moving: v.moving.map(|m| starling_wire::status::PartitionMove {
                    adding: m
                        .adding
                        .into_iter()
                        .map(|(n, log_end)| starling_wire::status::MovingReplica {
                            node: n.to_string(),
                            log_end,
                        })
                        .collect(),
                    removing: m.removing.iter().map(ToString::to_string).collect(),
                }),
            })
            .collect()
    }

    /// Stops every partition driver cleanly (flushed, marked clean).
    pub async fn shutdown(&self) {
        self.inner.stopping.store(true, std::sync::atomic::Ordering::SeqCst);
        let parts: Vec<Part> = match self.inner.parts.lock() {
            Ok(mut p) => p.drain().map(|(_, v)| v).collect(),
            Err(_) => return,
        };
        let stops = parts.into_iter().map(|p| async move {
            let (tx, rx) = oneshot::channel::<bool>();
            if p.cmds.send(PCmd::Stop(tx)).await.is_ok() {
                let _ = rx.await;
            }
        });
        join_all(stops).await;
    }

    fn part(&self, key: &PartKey) -> Option<Part> {
        self.inner.parts.lock().ok().and_then(|p| p.get(key).cloned())
    }

    /// Answers a client call.
    pub async fn handle_client(&self, req: TopicRequest) -> Response {
        match req {
            TopicRequest::Create(c) => TopicCreate::respond(self.create(c).await),
            TopicRequest::List => TopicList::respond(self.list().await),
            TopicRequest::Describe(d) => {
                TopicDescribe::respond(self.describe(&d.name, d.offsets).await)
            }
            TopicRequest::Delete(d) => TopicDelete::respond(self.delete(&d.name).await),
            TopicRequest::Alter(a) => TopicAlter::respond(self.alter(a).await),
            req
            @ (TopicRequest::Produce(_) | TopicRequest::Fetch(_) | TopicRequest::Offsets(_)) => {
                self.at_leader(req, false).await
            }
            req => self.at_coordinator(req, false).await,
        }
    }

    /// Answers a peer call.
    pub async fn handle_peer(&self, req: TopicPeerRequest) -> Response {
        match req {
            TopicPeerRequest::Replicate { topic, partition, from, msg } => {
                let Ok(mut msg) = rmp_serde::from_slice::<Msg>(&msg) else {
                    return Response::error(
                        starling_wire::ErrorCode::BadRequest,
                        "undecodable replication message",
                    );
                };
                if let Msg::Fetch { max_bytes, .. } = &mut msg {
                    // A fetch answer is at most a quarter of a request body (one batch more
                    // if it is larger: batches are whole).
                    *max_bytes = (*max_bytes).min(starling_wire::MAX_REQUEST_BODY as u32 / 4);
                }
                if let Some(p) = self.part(&(topic, partition)) {
                    self.deliver(&p, from, msg);
                }
                Response::Ok
            }
            TopicPeerRequest::Leader(req) => self.at_leader(req, true).await,
            TopicPeerRequest::Coordinator(req) => self.at_coordinator(req, true).await,
        }
    }

    /// Hands a replication message to its partition's driver. A fetch from a replica that a
    /// move adds asks for at most an eighth of a second of the move budget, reserves it, and
    /// reaches the driver once the budget covers it (at most [`MOVE_WAIT_MAX`] later, within
    /// the follower's fetch timeout). A full queue drops the message, as a lossy network
    /// would; the follower fetches again.
    fn deliver(&self, p: &Part, from: NodeId, mut msg: Msg) {
        let adding = || {
            p.view
                .borrow()
                .moving
                .as_ref()
                .is_some_and(|m| m.adding.iter().any(|(n, _)| *n == from))
        };
        let budget = self
            .inner
            .move_budget
            .as_ref()
            .filter(|_| matches!(msg, Msg::Fetch { .. }) && adding());
        let (Some(budget), Msg::Fetch { max_bytes, .. }) = (budget, &mut msg) else {
            let _ = p.cmds.try_send(PCmd::Msg(from, msg));
            return;
        };
        *max_bytes = (*max_bytes).min(budget.per_fetch());
        let reserved = u64::from(*max_bytes);
        let wait = budget.reserve(std::time::Instant::now(), reserved).min(MOVE_WAIT_MAX);
        let cmds = p.cmds.clone();
        let inner = self.inner.clone();
        let send = move || {
            if cmds.try_send(PCmd::MoveFetch(from, msg, reserved)).is_err() {
                if let Some(b) = &inner.move_budget {
                    b.refund(reserved);
                }
            }
        };
        if wait.is_zero() {
            send();
        } else {
            tokio::spawn(async move {
                tokio::time::sleep(wait).await;
                send();
            });
        }
    }

    /// The node coordinating `group` (native groups here, Kafka consumer groups in
    /// `crate::kafka`).
    pub fn group_coordinator(&self, group: &str) -> Option<NodeId> {
        self.coordinator_of(group).map(|(id, _)| id)
    }

    /// The node coordinating `group`: the first live node of the ring's preference list for
    /// `"group/<name>"`.
    fn coordinator_of(&self, group: &str) -> Option<(NodeId, Option<std::net::SocketAddr>)> {
        let v = self.inner.view.borrow();
        let token = starling_ring::token_of(format!("group/{group}").as_bytes());
        let n = v.ring.nodes().count();
        v.ring
            .replicas(token, n)
            .into_iter()
            .find(|id| *id == self.inner.me || (!v.down.contains_key(id) && !v.left.contains(id)))
            .map(|id| (id, v.addrs.get(&id).copied()))
    }

    /// Serves a group call if this node coordinates the group, else forwards it to the
    /// coordinator (unless it was forwarded already).
    async fn at_coordinator(&self, req: TopicRequest, forwarded: bool) -> Response {
        let group = match &req {
            TopicRequest::GroupHeartbeat(h) => h.group.clone(),
            TopicRequest::GroupCommit(c) => c.group.clone(),
            TopicRequest::GroupCommitted(c) => c.group.clone(),
            TopicRequest::GroupLeave(l) => l.group.clone(),
            TopicRequest::GroupDescribe(GroupDescribe { group: Some(g) }) => g.clone(),
            TopicRequest::GroupDescribe(GroupDescribe { group: None }) => {
                return self.describe_all_groups(forwarded).await
            }
            _ => return Response::error(starling_wire::ErrorCode::BadRequest, "not a group call"),
        };
        let fail = |e: TopicError| group_failed(&req, e);
        if let Err(e) = check_name(&group) {
            return fail(TopicError::Invalid(format!("group name: {e}")));
        }
        let Some((coordinator, addr)) = self.coordinator_of(&group) else {
            return fail(TopicError::Unavailable("the ring is empty; retry".into()));
        };
        if coordinator == self.inner.me {
            return self.coordinate(req).await;
        }
        if forwarded {
            return fail(TopicError::Unavailable(format!(
                "this node does not coordinate group {group} (its view of the ring differs); retry"
            )));
        }
        let Some(addr) = addr else {
            return fail(TopicError::Unavailable(
                "the coordinator's address is unknown; retry".into(),
            ));
        };
        let fwd = Request::Peer(PeerRequest::Topic(TopicPeerRequest::Coordinator(req.clone())));
        match self.inner.transport.request_within(addr, fwd, FORWARD_TIMEOUT).await {
            Ok(resp) => resp,
            Err(TransportError::Connect { .. }) => fail(TopicError::Unavailable(format!(
                "cannot reach the coordinator of group {group}; retry"
            ))),
            Err(e) => fail(TopicError::OutcomeUnknown(format!(
                "the coordinator of group {group} did not answer: {e}"
            ))),
        }
    }

    /// Every group of the cluster: this node's, and every live node's.
    async fn describe_all_groups(&self, forwarded: bool) -> Response {
        let mut all = self.inner.groups.describe(None, self.inner.me, std::time::Instant::now());
        if !forwarded {
            let addrs: Vec<std::net::SocketAddr> = {
                let v = self.inner.view.borrow();
                v.addrs
                    .iter()
                    .filter(|(id, _)| **id != self.inner.me && !v.down.contains_key(*id))
                    .map(|(_, a)| *a)
                    .collect()
            };
            let asks = addrs.into_iter().map(|a| {
                let req = Request::Peer(PeerRequest::Topic(TopicPeerRequest::Coordinator(
                    TopicRequest::GroupDescribe(GroupDescribe { group: None }),
                )));
                self.inner.transport.request_within(a, req, FORWARD_TIMEOUT)
            });
            for resp in join_all(asks).await.into_iter().flatten() {
                if let Ok(Ok(groups)) = GroupDescribe::answer(resp) {
                    all.extend(groups);
                }
            }
            all.sort_by(|a, b| a.group.cmp(&b.group));
        }
        GroupDescribe::respond(Ok(all))
    }

    /// A group call on its coordinator.
    async fn coordinate(&self, req: TopicRequest) -> Response {
        let now = std::time::Instant::now();
        let groups = &self.inner.groups;
        match req {
            TopicRequest::GroupHeartbeat(h) => {
                let answer = match self.topic_config(&h.topic).await {
                    Ok(cfg) => groups.heartbeat(&h, cfg.partitions, now),
                    Err(e) => Err(e),
                };
                GroupHeartbeat::respond(answer)
            }
            TopicRequest::GroupCommit(c) => {
                let incarnation = match self.topic_config_and_id(&c.topic).await {
                    Ok((_, id)) => id,
                    Err(e) => return GroupCommit::respond(Err(e)),
                };
                let check = || {
                    let parts: Vec<u32> = c.offsets.iter().map(|(p, _)| *p).collect();
                    groups.check_commit(&c.group, &c.member, &c.topic, &parts, now)?;
                    Ok(c.offsets
                        .iter()
                        .map(|(p, off)| {
                            let key =
                                OffsetKey { topic: c.topic.clone(), incarnation, partition: *p };
                            let at = Committed {
                                offset: *off,
                                leader_epoch: -1,
                                metadata: String::new(),
                            };
                            (key, at)
                        })
                        .collect())
                };
                GroupCommit::respond(match self.inner.offsets.commit(&c.group, check).await {
                    Ok(done) => done.map_err(|e| self.fenced(&c.group, e)),
                    Err(refused) => Err(refused),
                })
            }
            TopicRequest::GroupCommitted(c) => {
                let (cfg, incarnation) = match self.topic_config_and_id(&c.topic).await {
                    Ok(found) => found,
                    Err(e) => return GroupCommitted::respond(Err(e)),
                };
                let keys = (0..cfg.partitions)
                    .map(|p| OffsetKey { topic: c.topic.clone(), incarnation, partition: p })
                    .collect();
                let found = self.inner.offsets.fetch(&c.group, keys).await;
                GroupCommitted::respond(
                    found
                        .map(|v| {
                            v.into_iter()
                                .enumerate()
                                .map(|(p, c)| (p as u32, c.map(|c| c.offset)))
                                .collect()
                        })
                        .map_err(|e| self.fenced(&c.group, e)),
                )
            }
            TopicRequest::GroupLeave(l) => {
                groups.leave(&l.group, &l.member);
                GroupLeave::respond(Ok(()))
            }
            TopicRequest::GroupDescribe(d) => {
                GroupDescribe::respond(Ok(groups.describe(d.group.as_deref(), self.inner.me, now)))
            }
            _ => Response::error(starling_wire::ErrorCode::BadRequest, "not a group call"),
        }
    }

    /// A group's offsets call failed: if another node claimed the group, this node drops it
    /// (its members must rejoin, wherever the ring sends them).
    fn fenced(&self, group: &str, e: FenceError) -> TopicError {
        match e {
            FenceError::Fenced { .. } => {
                self.inner.groups.forget(group);
                TopicError::Fenced(e.to_string())
            }
            FenceError::Unavailable(m) => TopicError::Unavailable(format!("group offsets: {m}")),
            FenceError::Unknown(m) => TopicError::OutcomeUnknown(format!("group offsets: {m}")),
            FenceError::Refused(m) => TopicError::Invalid(m),
        }
    }

    /// Serves a produce, fetch or offsets call if this node leads the partition, else forwards
    /// it to the leader (unless it was forwarded already).
    async fn at_leader(&self, req: TopicRequest, forwarded: bool) -> Response {
        let (topic, partition) = match &req {
            TopicRequest::Produce(p) => (p.topic.clone(), p.partition),
            TopicRequest::Fetch(f) => (f.topic.clone(), f.partition),
            TopicRequest::Offsets(o) => (o.topic.clone(), o.partition),
            _ => {
                return Response::error(
                    starling_wire::ErrorCode::BadRequest,
                    "not a partition call",
                )
            }
        };
        let key = (topic.clone(), partition);
        let local = self.part(&key);
        if let Some(p) = local.as_ref().filter(|p| p.view.borrow().leads()) {
            return serve(p, req).await;
        }
        let fail = |e: TopicError| failed(&req, e);
        let (leader, epoch) = match &local {
            Some(p) => {
                let v = p.view.borrow();
                (v.leader, v.leader_epoch)
            }
            None => match self.partition_state(&topic, partition).await {
                Ok((s, _, _)) => (s.leader, s.leader_epoch),
                Err(e) => return fail(e),
            },
        };
        if forwarded {
            return fail(TopicError::NotLeader { leader, epoch });
        }
        let Some(leader) = leader else {
            return fail(TopicError::Unavailable(format!(
                "{topic}/{partition} has no leader yet (epoch {epoch}); retry"
            )));
        };
        if leader == self.inner.me {
            return fail(TopicError::Unavailable(format!(
                "{topic}/{partition}: this node is becoming its leader; retry"
            )));
        }
        let (addr, down) = {
            let v = self.inner.view.borrow();
            (
                v.addrs.get(&leader).copied(),
                v.down.contains_key(&leader) || v.left.contains(&leader),
            )
        };
        if down {
            return fail(TopicError::Unavailable(format!(
                "the leader of {topic}/{partition} ({}) is down; an election is in progress, retry",
                leader.short()
            )));
        }
        let Some(addr) = addr else {
            return fail(TopicError::NotLeader { leader: Some(leader), epoch });
        };
        let is_produce = matches!(req, TopicRequest::Produce(_));
        let wait = match &req {
            TopicRequest::Fetch(f) => {
                Duration::from_millis(u64::from(f.max_wait_ms)).min(FETCH_WAIT_MAX)
            }
            _ => Duration::ZERO,
        };
        let fwd = Request::Peer(PeerRequest::Topic(TopicPeerRequest::Leader(req.clone())));
        let call = self.inner.transport.request_within(addr, fwd, FORWARD_TIMEOUT + wait);
        // A leader that dies with the call in flight does not answer: stop waiting for it once
        // the failure detector says it is down.
        let mut ring = self.inner.view.clone();
        let deposed = async move {
            let _ =
                ring.wait_for(|v| v.down.contains_key(&leader) || v.left.contains(&leader)).await;
        };
        let answer = tokio::select! {
            a = call => a,
            _ = deposed => {
                let why = format!(
                    "the leader of {topic}/{partition} ({}) went down with the call in flight",
                    leader.short()
                );
                return fail(if is_produce {
                    TopicError::OutcomeUnknown(format!("{why}: the write may or may not have been applied"))
                } else {
                    TopicError::Unavailable(format!("{why}; retry"))
                });
            }
        };
        match answer {
            Ok(resp) => resp,
            Err(TransportError::Connect { .. }) => fail(TopicError::Unavailable(format!(
                "cannot reach the leader of {topic}/{partition} ({}); retry",
                leader.short()
            ))),
            Err(e) if is_produce => fail(TopicError::OutcomeUnknown(format!(
                "the leader of {topic}/{partition} did not answer: {e}"
            ))),
            Err(e) => fail(TopicError::Unavailable(format!(
                "the leader of {topic}/{partition} did not answer: {e}"
            ))),
        }
    }

    async fn read_meta(
        &self,
        path: &str,
        kind: ReadKind,
    ) -> Result<Result<MetaReadAnswer, MetaError>, TopicError> {
        self.inner.meta.read_local(path, kind).await.map_err(unavailable)
    }

    async fn topic_config(&self, name: &str) -> Result<TopicConfig, TopicError> {
        Ok(self.topic_config_and_id(name).await?.0)
    }

    /// Consumer groups' committed offsets (the Kafka groups use them too).
    pub fn group_offsets(&self) -> &Arc<GroupOffsets<T>> {
        &self.inner.offsets
    }

    /// A topic's incarnation (the zxid that created it), `None` for no such topic.
    pub async fn incarnation(&self, name: &str) -> Result<Option<u64>, TopicError> {
        match self.topic_config_and_id(name).await {
            Ok((_, id)) => Ok(Some(id)),
            Err(TopicError::NoTopic(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A topic's settings and incarnation (the zxid that created it).
    async fn topic_config_and_id(&self, name: &str) -> Result<(TopicConfig, u64), TopicError> {
        match self.read_meta(&topic_path(name), ReadKind::Data).await? {
            Ok(a) => {
                let cfg = decode_config(&a.data).map_err(TopicError::Invalid)?;
                Ok((cfg, a.stat.map_or(0, |s| s.czxid.0)))
            }
            Err(MetaError::NoNode(_)) => Err(TopicError::NoTopic(name.to_string())),
            Err(e) => Err(TopicError::Unavailable(e.to_string())),
        }
    }

    async fn partition_state(
        &self,
        name: &str,
        partition: u32,
    ) -> Result<(PartitionState, u32, u64), TopicError> {
        match self.read_meta(&partition_path(name, partition), ReadKind::Data).await? {
            Ok(a) => {
                let s = decode_state(&a.data).map_err(TopicError::Invalid)?;
                Ok((s, a.stat.map_or(0, |s| s.version), a.stat.map_or(0, |s| s.czxid.0)))
            }
            Err(MetaError::NoNode(_)) => {
                // Which is missing: the topic or the partition?
                self.topic_config(name).await?;
                Err(TopicError::NoPartition { topic: name.to_string(), partition })
            }
            Err(e) => Err(TopicError::Unavailable(e.to_string())),
        }
    }

    async fn create(&self, c: TopicCreate) -> Result<TopicInfo, TopicError> {
        check_name(&c.name).map_err(|e| TopicError::Invalid(e.to_string()))?;
        let view = self.inner.view.borrow().clone();
        let nodes = view.ring.nodes().count();
        let cfg = TopicConfig {
            partitions: c.partitions,
            replication: c.replication,
            min_insync: if c.min_insync == 0 { c.replication.min(2) } else { c.min_insync },
            retention_ms: None,
            retention_bytes: None,
        };
        cfg.check(nodes).map_err(|e| TopicError::Invalid(e.to_string()))?;
        self.inner
            .meta
            .create_parents(&[starling_meta::RESERVED, TOPICS_PATH])
            .await
            .map_err(unavailable)?;
        let mut ops = vec![Op::Create {
            path: topic_path(&c.name),
            data: encode_config(&cfg),
            ephemeral: false,
            sequential: false,
        }];
        for p in 0..cfg.partitions {
            ops.push(self.new_partition(&view, &c.name, p, cfg.replication)?);
        }
        let w = self.inner.meta.write_internal(ops, true).await.map_err(unavailable)?;
        for r in &w.results {
            match r {
                OpResult::Failed(MetaError::NodeExists(p)) if *p == topic_path(&c.name) => {
                    return Err(TopicError::Exists(c.name.clone()))
                }
                OpResult::Failed(MetaError::RolledBack) | OpResult::Created { .. } => {}
                OpResult::Failed(e) => {
                    return Err(TopicError::Invalid(format!("cannot record the topic: {e}")))
                }
                _ => {}
            }
        }
        info!(topic = %c.name, partitions = cfg.partitions, replication = cfg.replication, "topic created");
        self.describe(&c.name, false).await
    }

    async fn alter(&self, a: TopicAlter) -> Result<TopicInfo, TopicError> {
        check_name(&a.name).map_err(|e| TopicError::Invalid(e.to_string()))?;
        let (old, version) = match self.read_meta(&topic_path(&a.name), ReadKind::Data).await? {
            Ok(r) => (
                decode_config(&r.data).map_err(TopicError::Invalid)?,
                r.stat.map_or(0, |s| s.version),
            ),
            Err(MetaError::NoNode(_)) => return Err(TopicError::NoTopic(a.name.clone())),
            Err(e) => return Err(TopicError::Unavailable(e.to_string())),
        };
        let mut cfg = old.clone();
        if let Some(p) = a.partitions {
            if p < old.partitions {
                return Err(TopicError::Invalid(format!(
                    "partitions can only be added: {} has {}, not fewer",
                    a.name, old.partitions
                )));
            }
            cfg.partitions = p;
        }
        if let Some(m) = a.min_insync {
            cfg.min_insync = m;
        }
        if let Some(r) = a.retention_ms {
            cfg.retention_ms = r;
        }
        if let Some(r) = a.retention_bytes {
            cfg.retention_bytes = r;
        }
        let view = self.inner.view.borrow().clone();
        // The replication is unchanged: check against what the topic already has.
        cfg.check(view.ring.nodes().count().max(cfg.replication as usize))
            .map_err(|e| TopicError::Invalid(e.to_string()))?;
        let mut ops = vec![Op::SetData {
            path: topic_path(&a.name),
            data: encode_config(&cfg),
            version: Some(version),
        }];
        for p in old.partitions..cfg.partitions {
            ops.push(self.new_partition(&view, &a.name, p, cfg.replication)?);
        }
        let w = self.inner.meta.write_internal(ops, true).await.map_err(unavailable)?;
        for r in &w.results {
            match r {
                OpResult::Failed(MetaError::BadVersion { .. }) => {
                    return Err(TopicError::Unavailable(
                        "the topic changed while it was being altered; retry".into(),
                    ))
                }
                OpResult::Failed(MetaError::RolledBack)
                | OpResult::Created { .. }
                | OpResult::Set(_) => {}
                OpResult::Failed(e) => return Err(TopicError::Invalid(e.to_string())),
                _ => {}
            }
        }
        info!(topic = %a.name, partitions = cfg.partitions, min_insync = cfg.min_insync, "topic altered");
        self.describe(&a.name, false).await
    }

    /// The znode of a new partition: its replicas are the ring's preference list.
    fn new_partition(
        &self,
        view: &RingView,
        name: &str,
        p: u32,
        replication: u32,
    ) -> Result<Op, TopicError> {
        let token = starling_ring::token_of(placement_key(name, p).as_bytes());
        let replicas = view.ring.replicas(token, replication as usize);
        if replicas.len() < replication as usize {
            return Err(TopicError::Invalid(format!(
                "the ring has {} nodes for partition {p}, fewer than the replication {replication}",
                replicas.len()
            )));
        }
        let state =
            PartitionState { isr: replicas.clone(), replicas, leader: None, leader_epoch: 0 };
        Ok(Op::Create {
            path: partition_path(name, p),
            data: encode_state(&state),
            ephemeral: false,
            sequential: false,
        })
    }

    async fn list(&self) -> Result<Vec<String>, TopicError> {
        match self.read_meta(TOPICS_PATH, ReadKind::Children).await? {
            Ok(a) => {
                let mut names = a.children;
                names.sort();
                Ok(names)
            }
            Err(MetaError::NoNode(_)) => Ok(Vec::new()),
            Err(e) => Err(TopicError::Unavailable(e.to_string())),
        }
    }

    async fn describe(&self, name: &str, offsets: bool) -> Result<TopicInfo, TopicError> {
        let cfg = self.topic_config(name).await?;
        let mut parts = Vec::with_capacity(cfg.partitions as usize);
        let addrs = self.inner.view.borrow().addrs.clone();
        for p in 0..cfg.partitions {
            let (s, _, _) = self.partition_state(name, p).await?;
            parts.push(PartitionInfo {
                partition: p,
                leader_addr: s.leader.and_then(|l| addrs.get(&l)).map(|a| a.to_string()),
                replicas: s.replicas,
                leader: s.leader,
                leader_epoch: s.leader_epoch,
                isr: s.isr,
                offsets: None,
            });
        }
        if offsets {
            let asks: Vec<_> = parts
                .iter()
                .map(|p| {
                    let req = TopicRequest::Offsets(TopicOffsets {
                        topic: name.to_string(),
                        partition: p.partition,
                        timestamp_ms: None,
                        for_epoch: None,
                    });
                    self.at_leader(req, false)
                })
                .collect();
            let answers = join_all(asks).await;
            for (p, resp) in parts.iter_mut().zip(answers) {
                p.offsets = TopicOffsets::answer(resp).ok().and_then(Result::ok);
            }
        }
        Ok(TopicInfo {
            name: name.to_string(),
            partitions: cfg.partitions,
            replication: cfg.replication,
            min_insync: cfg.min_insync,
            partition_info: parts,
        })
    }

    async fn delete(&self, name: &str) -> Result<(), TopicError> {
        check_name(name).map_err(|e| TopicError::Invalid(e.to_string()))?;
        let children = match self.read_meta(&topic_path(name), ReadKind::Children).await? {
            Ok(a) => a.children,
            Err(MetaError::NoNode(_)) => return Err(TopicError::NoTopic(name.to_string())),
            Err(e) => return Err(TopicError::Unavailable(e.to_string())),
        };
        let mut ops: Vec<Op> = children
            .iter()
            .map(|c| Op::Delete { path: format!("{}/{c}", topic_path(name)), version: None })
            .collect();
        ops.push(Op::Delete { path: topic_path(name), version: None });
        let w = self.inner.meta.write_internal(ops, true).await.map_err(unavailable)?;
        for r in &w.results {
            match r {
                OpResult::Failed(MetaError::NoNode(_)) => {
                    return Err(TopicError::NoTopic(name.to_string()))
                }
                OpResult::Failed(MetaError::NotEmpty(_)) => {
                    return Err(TopicError::Unavailable(
                        "the topic changed while it was being deleted; retry".into(),
                    ))
                }
                OpResult::Failed(MetaError::RolledBack) | OpResult::Deleted => {}
                OpResult::Failed(e) => return Err(TopicError::Invalid(e.to_string())),
                _ => {}
            }
        }
        info!(topic = %name, "topic deleted");
        Ok(())
    }

    /// Every [`SCAN_EVERY`]: start drivers for the partitions this node replicates, hand every
    /// driver its partition's latest state and target replica list, stop the ones no longer
    /// wanted, and remove the data of partitions moved away from this node.
    async fn manage(self) {
        let mut st = ScanState::default();
        loop {
            if let Err(e) = self.scan(&mut st).await {
                tracing::debug!(error = %e, "topic scan skipped");
            }
            tokio::time::sleep(SCAN_EVERY).await;
        }
    }

    /// One pass of [`Topics::manage`]. A topic is known by its name and its incarnation (the
    /// zxid that created its znode, as Kafka's topic ids): a topic deleted and created again
    /// under the same name is a new topic, whose replicas start from empty logs.
    async fn scan(&self, st: &mut ScanState) -> Result<(), TopicError> {
        if self.inner.stopping.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(());
        }
        let names = self.list().await?;
        let mut current: HashMap<String, u64> = HashMap::new();
        let mut wanted: BTreeMap<PartKey, (PartitionState, u32, TopicConfig, u64)> =
            BTreeMap::new();
        // Partitions whose recorded replicas do not include this node.
        let mut not_mine: Vec<(PartKey, u64)> = Vec::new();
        for name in &names {
            let (cfg, topic_id) = match self.topic_config_and_id(name).await {
                Ok(c) => c,
                Err(TopicError::NoTopic(_)) => continue,
                Err(e) => return Err(e),
            };
            current.insert(name.clone(), topic_id);
            for p in 0..cfg.partitions {
                match self.partition_state(name, p).await {
                    // A partition is known by the zxid that created its znode (so one of a
                    // topic deleted and created again is a new one).
                    Ok((s, v, incarnation)) if s.replicas.contains(&self.inner.me) => {
                        wanted.insert((name.clone(), p), (s, v, cfg.clone(), incarnation));
                    }
                    Ok((_, _, incarnation)) => not_mine.push(((name.clone(), p), incarnation)),
                    Err(TopicError::NoTopic(_) | TopicError::NoPartition { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        // Topics seen before that are gone now (or were created again).
        let gone: Vec<String> = st
            .seen_topics
            .iter()
            .filter(|(t, id)| current.get(*t) != Some(*id))
            .map(|(t, _)| t.clone())
            .collect();
        // Stop drivers no longer wanted, or of an earlier incarnation.
        let stale: Vec<(PartKey, Part)> = match self.inner.parts.lock() {
            Ok(mut parts) => {
                let keys: Vec<PartKey> = parts
                    .iter()
                    .filter(|(k, p)| {
                        wanted.get(*k).is_none_or(|w| {
                            w.3 != p.incarnation
                                || driver_settings(&w.2) != driver_settings(&p.cfg)
                                || p.cmds.is_closed()
                        })
                    })
                    .map(|(k, _)| k.clone())
                    .collect();
                keys.into_iter().filter_map(|k| parts.remove(&k).map(|p| (k, p))).collect()
            }
            Err(_) => Vec::new(),
        };
        // Drivers that stopped still listed in the state they knew (a newer state than the
        // one read here may have added this node back): their data stays.
        let mut still_member: Vec<PartKey> = Vec::new();
        for ((topic, p), part) in stale {
            let (tx, rx) = oneshot::channel();
            if part.cmds.send(PCmd::Stop(tx)).await.is_ok() && rx.await.unwrap_or(true) {
                still_member.push((topic.clone(), p));
            }
            info!(topic = %topic, partition = p, "stopped replicating the partition");
        }
        for t in gone {
            st.seen_topics.remove(&t);
            st.cleaned.retain(|(k, _)| k.0 != t);
            let this = self.clone();
            let _ = tokio::task::spawn_blocking(move || this.remove_topic_data(&t)).await;
        }
        st.seen_topics.extend(current);
        // A partition moved away (a reassignment dropped this node, or it was dropped while
        // this node was down): its folder goes. No driver runs for it, and none knew of a
        // state listing this node, so this copy is in no ISR.
        for (key, incarnation) in not_mine {
            if still_member.contains(&key) || !st.cleaned.insert((key.clone(), incarnation)) {
                continue;
            }
            let dir = self.inner.dir.join(format!("{}-{}", key.0, key.1));
            let removed =
                tokio::task::spawn_blocking(move || match std::fs::remove_dir_all(&dir) {
                    Ok(()) => Ok(true),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
                    Err(e) => Err(e),
                })
                .await;
            match removed {
                Ok(Ok(true)) => {
                    info!(topic = %key.0, partition = key.1, "removed the data of a partition this node no longer replicates")
                }
                Ok(Ok(false)) => {}
                Ok(Err(e)) => {
                    st.cleaned.remove(&(key.clone(), incarnation));
                    warn!(topic = %key.0, partition = key.1, error = %e, "cannot remove the data of a partition moved away")
                }
                Err(e) => warn!(error = %e, "partition removal task failed"),
            }
        }
        let targets = st.targets(&self.inner.view.borrow());
        for (key, (state, version, cfg, incarnation)) in wanted {
            st.cleaned.remove(&(key.clone(), incarnation));
            match self.part(&key) {
                Some(p) => {
                    let _ = p.cmds.try_send(PCmd::State(state, u64::from(version)));
                    if let Some(t) = targets.as_ref().and_then(|t| t.target(&key, cfg.replication))
                    {
                        let _ = p.cmds.try_send(PCmd::Target(t));
                    }
                }
                None => self.start_partition(key, state, version, &cfg, incarnation).await,
            }
        }
        Ok(())
    }

    /// Waits until this node replicates no partition (a leave: each partition's leader moves it
    /// to the ring without this node, see [`Replica::handle_target`]). Fails at once if a
    /// partition cannot move (the ring would have fewer nodes than its replication), or after
    /// `timeout`.
    pub async fn hand_over(&self, timeout: Duration) -> Result<(), String> {
        let give_up = Instant::now() + timeout;
        let mut said = Instant::now();
        loop {
            let keys: Vec<PartKey> = match self.inner.parts.lock() {
                Ok(p) => p.keys().cloned().collect(),
                Err(_) => return Err("the topic manager failed".into()),
            };
            if keys.is_empty() {
                return Ok(());
            }
            let future = self.inner.view.borrow().ring.future();
            let nodes = future.nodes().count();
            for key in &keys {
                if let Ok(Ok(a)) = self.read_meta(&topic_path(&key.0), ReadKind::Data).await {
                    if let Ok(cfg) = decode_config(&a.data) {
                        if (cfg.replication as usize) > nodes {
                            return Err(format!(
                                "topic {} has {} replicas per partition; {nodes} nodes would stay on the ring",
                                key.0, cfg.replication
                            ));
                        }
                    }
                }
            }
            if Instant::now() >= give_up {
                return Err(format!(
                    "{} partitions did not move off this node within {}s (their new replicas must catch up and join the ISR)",
                    keys.len(),
                    timeout.as_secs()
                ));
            }
            if said.elapsed() >= Duration::from_secs(10) {
                said = Instant::now();
                info!(
                    partitions = keys.len(),
                    "leave: waiting for the partitions to move off this node"
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Removes a deleted topic's partition folders.
    fn remove_topic_data(&self, topic: &str) {
        let Ok(entries) = std::fs::read_dir(&self.inner.dir) else { return };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let is_part = name
                .strip_prefix(topic)
                .and_then(|rest| rest.strip_prefix('-'))
                .is_some_and(|n| n.parse::<u32>().is_ok());
            if is_part {
                match std::fs::remove_dir_all(e.path()) {
                    Ok(()) => {
                        info!(topic, dir = %e.path().display(), "removed a deleted topic's data")
                    }
                    Err(err) => warn!(topic, error = %err, "cannot remove a deleted topic's data"),
                }
            }
        }
    }

    async fn start_partition(
        &self,
        key: PartKey,
        state: PartitionState,
        version: u32,
        cfg: &TopicConfig,
        incarnation: u64,
    ) {
        let dir = self.inner.dir.join(format!("{}-{}", key.0, key.1));
        let log_cfg = LogConfig {
            retention_ms: cfg.retention_ms,
            retention_bytes: cfg.retention_bytes,
            ..LogConfig::default()
        };
        if self.inner.stopping.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let marker = dir.join(CLEAN_MARKER);
        let open_dir = dir.clone();
        let opened = tokio::task::spawn_blocking(move || {
            // A folder left by an earlier topic of the same name (deleted while this node was
            // down) is not this topic's.
            let id_file = open_dir.join(TOPIC_ID_FILE);
            let id = std::fs::read_to_string(&id_file).ok();
            if id.as_deref().is_some_and(|id| id.trim() != incarnation.to_string()) {
                std::fs::remove_dir_all(&open_dir).map_err(|e| LogError::Io {
                    what: format!("remove {} of an earlier topic", open_dir.display()),
                    source: e,
                })?;
            }
            let existed = open_dir.exists();
            let clean = marker.exists();
            let r = Log::open(&open_dir, log_cfg)?;
            if !id_file.exists() {
                std::fs::write(&id_file, incarnation.to_string())
                    .map_err(|e| LogError::Io { what: "write the topic id".into(), source: e })?;
            }
            if clean {
                std::fs::remove_file(&marker).map_err(|e| LogError::Io {
                    what: "remove the clean-stop marker".into(),
                    source: e,
                })?;
            }
            Ok::<_, LogError>((r, existed && !clean))
        })
        .await;
        let ((log, recovery), unclean) = match opened {
            Ok(Ok(x)) => x,
            Ok(Err(e)) => {
                error!(topic = %key.0, partition = key.1, error = %e, "cannot open the partition's log");
                return;
            }
            Err(e) => {
                error!(error = %e, "partition open task failed");
                return;
            }
        };
        if let Some(damage) = &recovery.damage {
            warn!(topic = %key.0, partition = key.1, damage, truncated_bytes = recovery.truncated_bytes, "the partition's log was repaired on open");
        }
        let (tx, rx) = mpsc::channel(PART_QUEUE);
        let view = PartView {
            topic: key.0.clone(),
            partition: key.1,
            role: "none",
            leader: state.leader,
            leader_epoch: state.leader_epoch,
            isr: state.isr.clone(),
            log_start: log.start_offset(),
            log_end: log.end_offset(),
            high_watermark: log.start_offset(),
            size_bytes: log.size_bytes(),
            replicas: state.replicas.clone(),
            moving: None,
        };
        let (view_tx, view_rx) = watch::channel(view);
        let rcfg = ReplicaConfig {
            min_insync: cfg.min_insync as usize,
            // Within a client's default 5 s request deadline.
            produce_timeout: Duration::from_secs(4),
            flush_each_append: matches!(self.inner.sync, SyncMode::Always),
            // The manager hands every driver its partition's state every SCAN_EVERY already;
            // the core's own periodic re-read is only a backstop.
            refresh_every: Duration::from_secs(5),
            ..ReplicaConfig::default()
        };
        // Starting a replica reads its log's newest segment (producer state): off the runtime.
        let me = self.inner.me;
        let core = tokio::task::spawn_blocking(move || {
            Replica::new(me, log, rcfg, std::time::Instant::now())
        })
        .await;
        let Ok(mut core) = core else {
            error!(topic = %key.0, partition = key.1, "partition start task failed");
            return;
        };
        // `always`: group commit. The driver hands the core every request queued up, then
        // flushes once for all of them before any answer goes out (`Driver::run`).
        core.defer_flushes(matches!(self.inner.sync, SyncMode::Always));
        if unclean {
            warn!(topic = %key.0, partition = key.1, "the partition's replica did not stop cleanly: it stays out of leadership until it has caught up");
            core.mark_unclean_start();
        }
        core.handle_state(std::time::Instant::now(), state, u64::from(version));
        match self.inner.parts.lock() {
            Ok(mut parts) if !self.inner.stopping.load(std::sync::atomic::Ordering::SeqCst) => {
                parts.insert(
                    key.clone(),
                    Part { cmds: tx.clone(), view: view_rx, incarnation, cfg: cfg.clone() },
                );
            }
            // Shutting down: leave the log as it is (its next start counts as unclean).
            _ => {
                drop(core);
                return;
            }
        }
        info!(topic = %key.0, partition = key.1, "replicating the partition");
        let driver = Driver {
            inner: self.inner.clone(),
            key,
            core,
            cmds: tx,
            view_tx,
            waiting: HashMap::new(),
            next_id: 0,
            liveness: HashMap::new(),
            sync_failed: false,
            incarnation,
            move_reserved: HashMap::new(),
        };
        tokio::spawn(driver.run(rx));
    }
}

/// What the topic manager keeps between scans.
#[derive(Default)]
struct ScanState {
    /// Topics seen, with their incarnation.
    seen_topics: HashMap<String, u64>,
    /// Partitions not on this node whose folder is known gone.
    cleaned: std::collections::HashSet<(PartKey, u64)>,
    /// The ring the targets come from (the future ring: joining nodes in, leaving ones out),
    /// by the current ring's digest, and since when the ring has had that digest.
    future: Option<(String, Arc<starling_ring::Ring>, Instant)>,
}

/// How long the ring must stay unchanged before partitions move to match it (a node coming
/// and going within it moves nothing).
const RING_SETTLE: Duration = Duration::from_secs(5);

struct Targets {
    future: Arc<starling_ring::Ring>,
}

impl Targets {
    /// A partition's target replicas: the future ring's preference list for it, if the ring
    /// has enough nodes.
    fn target(&self, key: &PartKey, replication: u32) -> Option<Vec<NodeId>> {
        let token = starling_ring::token_of(placement_key(&key.0, key.1).as_bytes());
        let t = self.future.replicas(token, replication as usize);
        (t.len() == replication as usize).then_some(t)
    }
}

impl ScanState {
    /// The targets of this scan: only from a ring another up node computed too (a node that
    /// just started and sees part of the cluster moves nothing), unchanged for [`RING_SETTLE`].
    fn targets(&mut self, view: &RingView) -> Option<Targets> {
        let digest = view.ring.digest();
        if self.future.as_ref().is_none_or(|(d, _, _)| *d != digest) {
            self.future = Some((digest, Arc::new(view.ring.future()), Instant::now()));
        }
        let (_, future, since) = self.future.as_ref()?;
        if !view.vouched || since.elapsed() < RING_SETTLE {
            return None;
        }
        Some(Targets { future: future.clone() })
    }
}

/// The settings a partition driver runs with (a change restarts it; a new partition count
/// does not concern existing partitions).
fn driver_settings(c: &TopicConfig) -> (u32, Option<i64>, Option<u64>) {
    (c.min_insync, c.retention_ms, c.retention_bytes)
}

fn group_failed(req: &TopicRequest, e: TopicError) -> Response {
    match req {
        TopicRequest::GroupHeartbeat(_) => GroupHeartbeat::respond(Err(e)),
        TopicRequest::GroupCommit(_) => GroupCommit::respond(Err(e)),
        TopicRequest::GroupCommitted(_) => GroupCommitted::respond(Err(e)),
        TopicRequest::GroupLeave(_) => GroupLeave::respond(Err(e)),
        _ => GroupDescribe::respond(Err(e)),
    }
}

fn failed(req: &TopicRequest, e: TopicError) -> Response {
    match req {
        TopicRequest::Produce(_) => TopicProduce::respond(Err(e)),
        TopicRequest::Fetch(_) => TopicFetch::respond(Err(e)),
        _ => TopicOffsets::respond(Err(e)),
    }
}

/// Serves a partition call on the leader's driver.
/// Sends the partition's task a command carrying a reply channel, and waits for the reply.
async fn ask<T>(
    p: &Part,
    cmd: impl FnOnce(oneshot::Sender<Result<T, TopicError>>) -> PCmd,
) -> Result<T, TopicError> {
    let (tx, rx) = oneshot::channel();
    if p.cmds.send(cmd(tx)).await.is_err() {
        return Err(stopped());
    }
    rx.await.unwrap_or_else(|_| Err(stopped()))
}

fn stopped() -> TopicError {
    TopicError::Unavailable("the partition's replica stopped; retry".into())
}

async fn serve(p: &Part, req: TopicRequest) -> Response {
    match req {
        TopicRequest::Produce(pr) => {
            let (tx, rx) = oneshot::channel();
            let cmd = PCmd::Produce { batches: pr.batches, acks: pr.acks, reply: tx };
            if p.cmds.send(cmd).await.is_err() {
                return TopicProduce::respond(Err(stopped()));
            }
            let answer = rx.await.unwrap_or_else(|_| {
                Err(TopicError::OutcomeUnknown("the partition's replica stopped".into()))
            });
            TopicProduce::respond(answer)
        }
        TopicRequest::Fetch(f) => {
            let wait = Duration::from_millis(u64::from(f.max_wait_ms)).min(FETCH_WAIT_MAX);
            let deadline = Instant::now() + wait;
            let mut view = p.view.clone();
            loop {
                let max_bytes =
                    (f.max_bytes as usize).clamp(1, starling_wire::MAX_RESPONSE_BODY / 2);
                let answer =
                    ask(p, |reply| PCmd::Read { offset: f.offset, max_bytes, reply }).await;
                let empty = matches!(&answer, Ok(a) if a.batches.is_empty());
                if !empty || Instant::now() >= deadline {
                    return TopicFetch::respond(answer);
                }
                view.borrow_and_update();
                let moved = view.wait_for(|v| v.high_watermark > f.offset || !v.leads());
                if tokio::time::timeout_at(deadline, moved).await.is_err() {
                    return TopicFetch::respond(answer);
                }
            }
        }
        TopicRequest::Offsets(o) => {
            let v = p.view.borrow().clone();
            let offset_for_time = match o.timestamp_ms {
                None => None,
                Some(ts) => match ask(p, |reply| PCmd::OffsetForTime { ts, reply }).await {
                    Ok(o) => Some(o),
                    Err(e) => return TopicOffsets::respond(Err(e)),
                },
            };
            let epoch_end = match o.for_epoch {
                None => None,
                Some(epoch) => match ask(p, |reply| PCmd::EpochEnd { epoch, reply }).await {
                    Ok(e) => Some(e),
                    Err(e) => return TopicOffsets::respond(Err(e)),
                },
            };
            TopicOffsets::respond(Ok(PartitionOffsets {
                log_start: v.log_start,
                log_end: v.log_end,
                high_watermark: v.high_watermark,
                leader_epoch: v.leader_epoch,
                offset_for_time,
                epoch_end,
            }))
        }
        _ => Response::error(starling_wire::ErrorCode::BadRequest, "not a partition call"),
    }
}

/// One partition replica's task.
struct Driver<T> {
    inner: Arc<Inner<T>>,
    key: PartKey,
    core: Replica<Log>,
    cmds: mpsc::Sender<PCmd>,
    view_tx: watch::Sender<PartView>,
    waiting: HashMap<u64, oneshot::Sender<Result<Produced, TopicError>>>,
    next_id: u64,
    /// The liveness last reported to the core.
    liveness: HashMap<NodeId, bool>,
    /// A detached fsync failed: no clean-stop marker.
    sync_failed: bool,
    /// The zxid that created the partition's znode (states of another znode are not its).
    incarnation: u64,
    /// Move budget reserved by each added replica's pending fetch.
    move_reserved: HashMap<NodeId, u64>,
}

impl<T: Transport> Driver<T> {
    async fn run(mut self, mut rx: mpsc::Receiver<PCmd>) {
        let mut ring = self.inner.view.clone();
        let flush_every = match self.inner.sync {
            SyncMode::Periodic(d) => d.max(Duration::from_millis(10)),
            SyncMode::Always => Duration::from_secs(1),
        };
        let mut flush = tokio::time::interval(flush_every);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut retention = tokio::time::interval(Duration::from_secs(60));
        // The fsync in flight, on a blocking thread (one at a time), and whether the core
        // started it (`always` mode's group commit) or the periodic timer did.
        let always = matches!(self.inner.sync, SyncMode::Always);
        let mut syncing: Option<(tokio::task::JoinHandle<std::io::Result<()>>, bool)> = None;
        self.report_liveness();
        let stop = loop {
            // `always`: group commit. Everything appended since the last flush waits for the
            // next one; it starts as soon as none is in flight, and requests arriving while it
            // runs are appended meanwhile and wait for the one after.
            if always && syncing.is_none() {
                if let Some(file) = self.core.start_flush(std::time::Instant::now()) {
                    syncing = Some((tokio::task::spawn_blocking(move || file.sync_data()), true));
                }
            }
            self.pump();
            let deadline = self
                .core
                .poll_timeout()
                .map(Instant::from_std)
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
            tokio::select! {
                cmd = rx.recv() => {
                    let Some(cmd) = cmd else { break None };
                    if let Some(stop) = self.handle(cmd) {
                        break Some(stop);
                    }
                    // Everything queued meanwhile joins this round (one pump for all of it).
                    let mut n = 0;
                    let mut stop = None;
                    while n < 256 {
                        let Ok(cmd) = rx.try_recv() else { break };
                        n += 1;
                        if let Some(s) = self.handle(cmd) {
                            stop = Some(s);
                            break;
                        }
                    }
                    if stop.is_some() {
                        break stop;
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    self.core.handle_timeout(std::time::Instant::now());
                }
                changed = ring.changed() => {
                    if changed.is_err() {
                        break None;
                    }
                    self.report_liveness();
                }
                done = async { (&mut syncing.as_mut().expect("guarded").0).await }, if syncing.is_some() => {
                    let core_flush = syncing.take().is_some_and(|(_, core)| core);
                    self.synced(done, core_flush);
                }
                _ = flush.tick() => {
                    self.core.set_wall_ms(crate::kv::wall_millis() as i64);
                    // `periodic`: the fsync runs on a blocking thread, so appends and fetches
                    // never wait for the disk (acknowledged before it anyway).
                    if !always && syncing.is_none() {
                        match self.core.log_mut().flush_detached() {
                            Ok(Some(file)) => {
                                syncing = Some((tokio::task::spawn_blocking(move || file.sync_data()), false));
                            }
                            Ok(None) => {}
                            Err(e) => error!(topic = %self.key.0, partition = self.key.1, error = %e, "cannot flush the partition's log"),
                        }
                    }
                }
                _ = retention.tick() => {
                    let hw = self.core.high_watermark();
                    match self.core.log_mut().apply_retention(crate::kv::wall_millis() as i64, hw) {
                        Ok(removed) if !removed.is_empty() => {
                            info!(topic = %self.key.0, partition = self.key.1, segments = removed.len(), "retention removed old segments");
                        }
                        Ok(_) => {}
                        Err(e) => warn!(topic = %self.key.0, partition = self.key.1, error = %e, "retention failed"),
                    }
                }
            }
        };
        if let Some((done, core_flush)) = syncing.take() {
            self.synced(done.await, core_flush);
        }
        self.flush_owed();
        self.pump();
        for (_, w) in self.waiting.drain() {
            let _ = w.send(Err(TopicError::OutcomeUnknown(
                "the partition's replica stopped before the write was replicated".into(),
            )));
        }
        let flushed = self.core.log_mut().flush();
        if let Some(done) = stop {
            match flushed {
                Ok(()) if !self.sync_failed => {
                    let marker = self.core.log().dir().join(CLEAN_MARKER);
                    if let Err(e) = std::fs::write(&marker, b"") {
                        warn!(error = %e, "cannot record the partition's clean stop");
                    }
                }
                Ok(()) => {
                    warn!(topic = %self.key.0, partition = self.key.1, "an fsync of the partition's log failed earlier: its next start counts as unclean")
                }
                Err(e) => error!(error = %e, "cannot flush the partition's log on stop"),
            }
            let me = self.inner.me;
            let member = self.core.state().is_none_or(|(s, _)| s.replicas.contains(&me));
            let _ = done.send(member);
        }
    }

    /// `always` mode on stop: what is still owed, flushed on this thread.
    fn flush_owed(&mut self) {
        if self.core.owes_flush() {
            self.core.flush_owed(std::time::Instant::now());
        }
    }

    /// An fsync on a blocking thread finished: reported to the core if it started it (what it
    /// covered counts now, or the log failed), else logged.
    fn synced(&mut self, r: Result<std::io::Result<()>, tokio::task::JoinError>, core_flush: bool) {
        if !matches!(r, Ok(Ok(()))) {
            // What was appended may not be on disk: the next start is not a clean one.
            self.sync_failed = true;
        }
        if core_flush {
            let result = match r {
                Ok(Ok(())) => Ok(()),
                Ok(Err(source)) => Err(source),
                Err(e) => Err(std::io::Error::other(e.to_string())),
            };
            let result = result.map_err(|source| LogError::Io {
                what: "syncing the partition's log".into(),
                source,
            });
            self.core.finish_flush(std::time::Instant::now(), result);
            return;
        }
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                error!(topic = %self.key.0, partition = self.key.1, error = %e, "cannot fsync the partition's log: what it acknowledged recently may not survive a power loss")
            }
            Err(e) => error!(error = %e, "partition fsync task failed"),
        }
    }

    /// Returns the stop's reply channel when told to stop.
    fn handle(&mut self, cmd: PCmd) -> Option<oneshot::Sender<bool>> {
        let now = std::time::Instant::now();
        match cmd {
            PCmd::Msg(from, msg) => self.core.handle_message(now, from, msg),
            PCmd::MoveFetch(from, msg, reserved) => {
                // A fetch sent again (the first timed out) replaces the one reserved before.
                if let Some(old) = self.move_reserved.insert(from, reserved) {
                    self.refund_move(old);
                }
                self.core.handle_message(now, from, msg);
            }
            PCmd::State(s, v) => self.core.handle_state(now, s, v),
            PCmd::Produce { batches, acks, reply } => {
                let id = self.next_id;
                self.next_id += 1;
                let core_acks = match acks {
                    Acks::None => replica::Acks::None,
                    Acks::Leader => replica::Acks::Leader,
                    Acks::All => replica::Acks::All,
                };
                match self.core.produce(now, id, batches, core_acks) {
                    Err(e) => {
                        let _ = reply.send(Err(produce_error(e)));
                    }
                    Ok(()) if acks == Acks::None => {
                        let _ = reply.send(Ok(Produced { base_offset: -1, last_offset: -1 }));
                    }
                    Ok(()) => {
                        self.waiting.insert(id, reply);
                    }
                }
            }
            PCmd::Read { offset, max_bytes, reply } => {
                let answer = self.read(offset, max_bytes);
                let _ = reply.send(answer);
            }
            PCmd::OffsetForTime { ts, reply } => {
                let hw = self.core.high_watermark();
                let answer = if self.core.role() != Role::Leader {
                    let leader = self.core.state().and_then(|(s, _)| s.leader);
                    Err(TopicError::NotLeader { leader, epoch: self.core.epoch() })
                } else {
                    match self.core.log().offset_for_time(ts) {
                        Ok(Some(o)) => Ok(o.min(hw)),
                        Ok(None) => Ok(hw),
                        Err(e) => Err(TopicError::Storage(e.to_string())),
                    }
                };
                let _ = reply.send(answer);
            }
            PCmd::EpochEnd { epoch, reply } => {
                let answer = if self.core.role() != Role::Leader {
                    let leader = self.core.state().and_then(|(s, _)| s.leader);
                    Err(TopicError::NotLeader { leader, epoch: self.core.epoch() })
                } else {
                    Ok(self.core.log().end_offset_for_epoch(epoch))
                };
                let _ = reply.send(answer);
            }
            PCmd::Target(t) => self.core.handle_target(now, t),
            PCmd::Stop(done) => return Some(done),
        }
        None
    }

    fn read(&self, offset: i64, max_bytes: usize) -> Result<Fetched, TopicError> {
        if self.core.role() != Role::Leader {
            let leader = self.core.state().and_then(|(s, _)| s.leader);
            return Err(TopicError::NotLeader { leader, epoch: self.core.epoch() });
        }
        let hw = self.core.high_watermark();
        let log = self.core.log();
        match log.read(offset, max_bytes, hw) {
            Ok(r) => Ok(Fetched {
                batches: r.bytes,
                next_offset: r.next_offset,
                high_watermark: hw,
                log_start: log.start_offset(),
            }),
            Err(LogError::OffsetOutOfRange { offset, start, end }) => {
                Err(TopicError::OffsetOutOfRange { offset, start, end })
            }
            Err(e) => Err(TopicError::Storage(e.to_string())),
        }
    }

    fn report_liveness(&mut self) {
        let now = std::time::Instant::now();
        let view = self.inner.view.borrow().clone();
        for n in view.ring.nodes().map(|n| n.id).chain(view.left.iter().copied()) {
            if n == self.inner.me {
                continue;
            }
            let alive = !view.down.contains_key(&n) && !view.left.contains(&n);
            if self.liveness.insert(n, alive) != Some(alive) {
                self.core.handle_liveness(now, n, alive);
            }
        }
    }

    /// Carries out what the core asks, and publishes its state.
    fn pump(&mut self) {
        while let Some(out) = self.core.poll_output() {
            match out {
                Output::Send(to, msg) => {
                    if let Some(reserved) = self.move_reserved.remove(&to) {
                        let used = match &msg {
                            Msg::Fetched { answer: FetchAnswer::Records { bytes, .. }, .. } => {
                                bytes.len() as u64
                            }
                            _ => 0,
                        };
                        self.refund_move(reserved.saturating_sub(used));
                    }
                    self.send(to, msg)
                }
                Output::ProposeState { expected_version, state } => {
                    self.propose(expected_version, state)
                }
                Output::RefreshState => self.refresh(),
                Output::Event(e) => self.event(e),
            }
        }
        let (state, _) = match self.core.state() {
            Some((s, v)) => (Some(s.clone()), v),
            None => (None, 0),
        };
        let log = self.core.log();
        let role = self.core.role();
        let next = PartView {
            topic: self.key.0.clone(),
            partition: self.key.1,
            role: match role {
                Role::Leader => "leader",
                Role::Follower(_) => "follower",
                Role::None => "none",
            },
            leader: state.as_ref().and_then(|s| s.leader),
            leader_epoch: self.core.epoch(),
            isr: state.as_ref().map(|s| s.isr.clone()).unwrap_or_default(),
            log_start: log.start_offset(),
            log_end: log.end_offset(),
            high_watermark: self.core.high_watermark(),
            size_bytes: log.size_bytes(),
            replicas: state.map(|s| s.replicas).unwrap_or_default(),
            moving: self.core.moving(),
        };
        self.view_tx.send_if_modified(|v| {
            let changed = *v != next;
            if changed {
                *v = next;
            }
            changed
        });
    }

    fn refund_move(&self, bytes: u64) {
        if let Some(b) = &self.inner.move_budget {
            b.refund(bytes);
        }
    }

    fn send(&self, to: NodeId, msg: Msg) {
        let Some(addr) = self.inner.view.borrow().addrs.get(&to).copied() else { return };
        // Sized for the batches it carries: growing the buffer would copy them again.
        let hint = match &msg {
            Msg::Fetched { answer: FetchAnswer::Records { bytes, .. }, .. } => bytes.len() + 64,
            _ => 64,
        };
        let mut bytes = Vec::with_capacity(hint);
        if rmp_serde::encode::write(&mut bytes, &msg).is_err() {
            return;
        }
        let call = TopicReplicate {
            topic: self.key.0.clone(),
            partition: self.key.1,
            from: self.inner.me,
            msg: bytes,
        };
        let transport = self.inner.transport.clone();
        tokio::spawn(async move {
            // Lost messages are re-sent by the protocol (fetch timeouts).
            let _ = transport.call(addr, call).await;
        });
    }

    fn propose(&self, expected: u64, state: PartitionState) {
        let inner = self.inner.clone();
        let cmds = self.cmds.clone();
        let (topic, p) = self.key.clone();
        let incarnation = self.incarnation;
        tokio::spawn(async move {
            let path = partition_path(&topic, p);
            // Only onto this partition's znode, not one of a topic created again under the
            // same name (the versions of the two could match).
            match inner.meta.read_local(&path, ReadKind::Stat).await {
                Ok(Ok(a)) if a.stat.is_some_and(|s| s.czxid.0 == incarnation) => {}
                _ => return,
            }
            let op = Op::SetData {
                path: path.clone(),
                data: encode_state(&state),
                version: Some(expected as u32),
            };
            match inner.meta.write_internal(vec![op], false).await {
                Ok(w) => {
                    if let Some(OpResult::Failed(e)) = w.results.first() {
                        tracing::debug!(topic, partition = p, error = %e, "partition state proposal refused");
                    }
                }
                Err(e) => {
                    warn!(topic, partition = p, error = %e, "partition state proposal failed")
                }
            }
            refresh_state(&inner, &cmds, &topic, p, incarnation).await;
        });
    }

    fn refresh(&self) {
        let inner = self.inner.clone();
        let cmds = self.cmds.clone();
        let (topic, p) = self.key.clone();
        let incarnation = self.incarnation;
        tokio::spawn(async move { refresh_state(&inner, &cmds, &topic, p, incarnation).await });
    }

    fn event(&mut self, e: Event) {
        match e {
            Event::Produced { id, base_offset, last_offset } => {
                if let Some(w) = self.waiting.remove(&id) {
                    let _ = w.send(Ok(Produced { base_offset, last_offset }));
                }
            }
            Event::ProduceFailed { id, error } => {
                if let Some(w) = self.waiting.remove(&id) {
                    let _ = w.send(Err(produce_error(error)));
                }
            }
            Event::Role { role, epoch } => {
                info!(topic = %self.key.0, partition = self.key.1, role = ?role, epoch, "partition role");
            }
            Event::Truncated(offset) => {
                info!(topic = %self.key.0, partition = self.key.1, offset, "partition log truncated to the leader's");
            }
            Event::IsrChanged(isr) => {
                info!(topic = %self.key.0, partition = self.key.1, isr = isr.len(), "partition ISR changed");
            }
            Event::StorageFailed(m) => {
                error!(topic = %self.key.0, partition = self.key.1, error = %m, "the partition's log failed; this replica stopped serving it");
            }
            Event::HighWatermark(_) => {}
        }
    }
}

async fn refresh_state<T: Transport>(
    inner: &Inner<T>,
    cmds: &mpsc::Sender<PCmd>,
    topic: &str,
    p: u32,
    incarnation: u64,
) {
    if let Ok(Ok(a)) = inner.meta.read_local(&partition_path(topic, p), ReadKind::Data).await {
        if let (Ok(s), Some(stat)) = (decode_state(&a.data), a.stat) {
            if stat.czxid.0 != incarnation {
                // A partition of the same name created again: not this replica's (the
                // manager stops it).
                return;
            }
            let _ = cmds.send(PCmd::State(s, u64::from(stat.version))).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn the_move_budget_paces_reservations_at_its_rate_and_takes_back_what_was_not_sent() {
        // 8 MiB/s: 1 MiB of burst, fetches of at most 1 MiB.
        let b = MoveBudget::new(8 << 20);
        assert_eq!(b.per_fetch(), 1 << 20);
        let t0 = Instant::now();
        assert_eq!(b.reserve(t0, 1 << 20), Duration::ZERO, "the burst covers the first");
        // The next three wait their turn: an eighth of a second each.
        for i in 1..4u32 {
            let wait = b.reserve(t0, 1 << 20);
            assert_eq!(wait, Duration::from_millis(125) * i, "fetch {i}");
        }
        // An answer that sent nothing gives its bytes back: the next waits one turn less.
        b.refund(1 << 20);
        assert_eq!(b.reserve(t0, 1 << 20), Duration::from_millis(375));
        // Time fills the bucket; it never holds more than the burst.
        let later = t0 + Duration::from_secs(10);
        assert_eq!(b.reserve(later, 1 << 20), Duration::ZERO);
        assert_eq!(b.reserve(later, 1 << 20), Duration::from_millis(125));
        b.refund(u64::MAX >> 1);
        assert_eq!(b.reserve(later, 2 << 20), Duration::from_millis(125), "burst capped");
        // Many more fetches than the rate serves: none waits past the cap, and no debt is
        // left behind once the cap's worth of time has passed.
        for _ in 0..100 {
            assert!(b.reserve(later, 1 << 20) <= MOVE_WAIT_MAX);
        }
        let after = later + MOVE_WAIT_MAX + Duration::from_millis(125);
        assert_eq!(b.reserve(after, 1 << 20), Duration::ZERO);
        // A slow rate still lets a 16 KiB batch through.
        assert_eq!(MoveBudget::new(64 << 10).per_fetch(), 16384);
    }
}
