//! Each Kafka request answered through Starling's native topic calls ([`TopicRequest`]), so the
//! Kafka port and `starling topic` see one log: a record produced through either is fetched
//! through either, at the same offset.
//!
//! How Kafka's requests map (the choices Kafka leaves to a broker are written down here):
//! - **Metadata**: every live node with a Kafka listener is a broker ([`crate::broker_id`]); each
//!   partition's leader, leader epoch, replicas and in-sync replicas come from the metadata
//!   service. A partition whose leader has no Kafka listener up answers `LEADER_NOT_AVAILABLE`
//!   (retriable). The controller is the answering node: any node creates and deletes topics.
//!   Topics are never created by Metadata (Kafka's `auto.create.topics.enable=false`): create them
//!   with CreateTopics or `starling topic create`.
//! - **Produce**: the record batches go to the partition's log as they are, on its leader: a
//!   node that does not lead answers `NOT_LEADER_OR_FOLLOWER` (as do Fetch and ListOffsets), and
//!   the client asks Metadata for the new leader. `acks` 0, 1 and -1 are the native levels; `acks=0` gets no answer, as
//!   in Kafka. Idempotent producers' sequence checks are the partition leader's: a retried batch
//!   is answered with the offsets it got the first time. Transactions are not supported.
//! - **Fetch**: no fetch sessions (the answer's session id is 0, which tells the client to send
//!   full requests). Each partition is read below its high watermark, which is also the last
//!   stable offset (no transactions). When the first read finds fewer than `min_bytes`, every
//!   partition long-polls its leader until one has data or `max_wait_ms` (at most 30 s) passes.
//!   The answer stays within the request's `max_bytes` but for its first batch (KIP-74).
//! - **ListOffsets**: earliest (-2) is the log start, latest (-1) the high watermark, a
//!   timestamp the first offset whose batch's max timestamp is at or after it (the answer's
//!   timestamp is the one asked for: the time index keeps no per-record time).
//! - **InitProducerId**: a random 63-bit producer id with epoch 0; asked again with an id and
//!   epoch (KIP-360), the same id with the next epoch.

use std::collections::HashMap;

use bytes::Bytes;
use futures_util::future::{join_all, BoxFuture};
use futures_util::stream::{FuturesUnordered, StreamExt};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{
    BrokerId, CreateTopicsRequest, CreateTopicsResponse, DeleteTopicsRequest, DeleteTopicsResponse,
    FetchRequest, FetchResponse, InitProducerIdRequest, InitProducerIdResponse, ListOffsetsRequest,
    ListOffsetsResponse, MetadataRequest, MetadataResponse, OffsetForLeaderEpochRequest,
    OffsetForLeaderEpochResponse, ProduceRequest, ProduceResponse, ProducerId, RequestKind,
    ResponseKind, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use starling_id::NodeId;
use starling_wire::topic::{
    Acks, PartitionOffsets, TopicAlter, TopicCreate, TopicDelete, TopicDescribe, TopicError,
    TopicFetch, TopicInfo, TopicList, TopicOffsets, TopicProduce,
};
use starling_wire::{Call, ErrorCode, Request, Response};

use crate::broker_id;
use crate::codec::Header;
use crate::versions;
use starling_mq::fence::{Committed, FenceError, OffsetKey};

/// The largest record batches accepted for one partition in one Produce request (Kafka's
/// default `message.max.bytes`); larger ones are refused with `MESSAGE_TOO_LARGE`.
pub const MAX_MESSAGE_BYTES: usize = 1_048_588;

/// The longest a Fetch long-polls (a larger `max_wait_ms` is cut to it).
pub const MAX_FETCH_WAIT_MS: u32 = 30_000;

/// A node with a Kafka listener, as Metadata lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broker {
    pub id: NodeId,
    pub host: String,
    pub port: u16,
    pub rack: Option<String>,
}

/// Validates a commit against the group's state when its turn comes: 0, or Kafka's error code.
pub type CommitCheck = Box<dyn FnOnce(&crate::group::Coordinator) -> i16 + Send>;

/// What the Kafka front needs of the node it runs in.
pub trait Backend: Send + Sync {
    /// A native client call, answered as the node answers its clients.
    fn call(&self, req: Request) -> BoxFuture<'static, Response>;
    /// The live nodes with a Kafka listener, this one included.
    fn brokers(&self) -> Vec<Broker>;
    /// This node.
    fn me(&self) -> NodeId;
    /// The cluster's name for Metadata's cluster id.
    fn cluster_id(&self) -> String;
    /// A fresh producer id (random, non-negative).
    fn new_producer_id(&self) -> i64;
    /// The node that coordinates `group` (Kafka's group coordinator), as the native groups'.
    fn coordinator_of(&self, group: &str) -> Option<NodeId>;
    /// The consumer groups this node coordinates.
    fn groups(&self) -> &crate::group::Coordinator;
    /// Milliseconds of a monotonic clock (for group sessions).
    fn now_ms(&self) -> u64;
    /// A topic's incarnation (the zxid that created it; `None`: no such topic), which keys
    /// committed offsets; `Err` when the metadata service did not answer.
    fn topic_incarnation(&self, topic: &str) -> BoxFuture<'static, Result<Option<u64>, String>>;
    /// A group's committed offsets, in the order asked, fenced by this node's claim on the
    /// group ([`starling_mq::fence`]).
    fn offsets_fetch(
        &self,
        group: &str,
        keys: Vec<OffsetKey>,
    ) -> BoxFuture<'static, Result<Vec<Option<Committed>>, FenceError>>;
    /// Commits a group's offsets, all or none, fenced by this node's claim on the group, if
    /// `check` — run on [`Backend::groups`] once the group's earlier offsets calls are done —
    /// answers 0; else its error code, and nothing is written.
    fn offsets_commit(
        &self,
        group: &str,
        commits: Vec<(OffsetKey, Committed)>,
        check: CommitCheck,
    ) -> BoxFuture<'static, Result<Result<(), FenceError>, i16>>;
}

/// Answers one request; `Ok(None)` when Kafka sends no answer (a produce with `acks=0`), `Err`
/// for a request this crate does not serve (the caller closes the connection).
pub async fn answer<B: Backend + ?Sized>(
    b: &B,
    h: &Header,
    client_host: &str,
    req: RequestKind,
) -> Result<Option<ResponseKind>, String> {
    use crate::groups_api as g;
    Ok(Some(match req {
        RequestKind::ApiVersions(_) => ResponseKind::ApiVersions(versions::api_versions(0)),
        RequestKind::Metadata(r) => ResponseKind::Metadata(metadata(b, h.version, r).await),
        RequestKind::Produce(r) => {
            let silent = r.acks == 0;
            let resp = produce(b, r).await;
            if silent {
                // Kafka answers nothing to acks=0, and closes the connection when a partition
                // failed, so that the client refreshes its metadata (a moved leader).
                let failed = resp.responses.iter().flat_map(|t| &t.partition_responses);
                if let Some(p) = failed.into_iter().find(|p| p.error_code != 0) {
                    return Err(format!(
                        "an acks=0 produce failed (error {}): closing the connection",
                        p.error_code
                    ));
                }
                return Ok(None);
            }
            ResponseKind::Produce(resp)
        }
        RequestKind::Fetch(r) => ResponseKind::Fetch(fetch(b, r).await),
        RequestKind::ListOffsets(r) => {
            ResponseKind::ListOffsets(list_offsets(b, h.version, r).await)
        }
        RequestKind::OffsetForLeaderEpoch(r) => {
            ResponseKind::OffsetForLeaderEpoch(offset_for_leader_epoch(b, r).await)
        }
        RequestKind::CreateTopics(r) => ResponseKind::CreateTopics(create_topics(b, r).await),
        RequestKind::DeleteTopics(r) => ResponseKind::DeleteTopics(delete_topics(b, r).await),
        RequestKind::InitProducerId(r) => ResponseKind::InitProducerId(init_producer_id(b, r)),
        RequestKind::FindCoordinator(r) => {
            ResponseKind::FindCoordinator(g::find_coordinator(b, h.version, r))
        }
        RequestKind::JoinGroup(r) => {
            ResponseKind::JoinGroup(g::join_group(b, h, client_host, r).await)
        }
        RequestKind::SyncGroup(r) => ResponseKind::SyncGroup(g::sync_group(b, r).await),
        RequestKind::Heartbeat(r) => ResponseKind::Heartbeat(g::heartbeat(b, r)),
        RequestKind::LeaveGroup(r) => ResponseKind::LeaveGroup(g::leave_group(b, h.version, r)),
        RequestKind::OffsetCommit(r) => ResponseKind::OffsetCommit(g::offset_commit(b, r).await),
        RequestKind::OffsetFetch(r) => ResponseKind::OffsetFetch(g::offset_fetch(b, r).await),
        RequestKind::DescribeGroups(r) => ResponseKind::DescribeGroups(g::describe_groups(b, r)),
        RequestKind::ListGroups(r) => ResponseKind::ListGroups(g::list_groups(b, r)),
        _ => return Err(format!("{:?} v{} is not served", h.api_key, h.version)),
    }))
}

/// A native call's answer, with the node's own refusals (a node starting, a call timed out)
/// as topic errors.
pub(crate) async fn call<B, C, T>(b: &B, c: C) -> Result<T, TopicError>
where
    B: Backend + ?Sized,
    C: Call<Answer = Result<T, TopicError>>,
{
    match C::answer(b.call(c.into_request()).await) {
        Ok(r) => r,
        Err(Response::Error { code: ErrorCode::Unavailable, message }) => {
            Err(TopicError::Unavailable(message))
        }
        Err(Response::Error { code: ErrorCode::Timeout, message }) => {
            Err(TopicError::OutcomeUnknown(message))
        }
        Err(Response::Error { message, .. }) => Err(TopicError::Invalid(message)),
        Err(other) => Err(TopicError::Unavailable(format!("unexpected answer: {other:?}"))),
    }
}

/// The Kafka error code of a native topic error.
pub fn error_code(e: &TopicError) -> i16 {
    error_kind(e).code()
}

/// The Kafka error of a native topic error.
pub fn error_kind(e: &TopicError) -> ResponseError {
    match e {
        TopicError::NoTopic(_) | TopicError::NoPartition { .. } => {
            ResponseError::UnknownTopicOrPartition
        }
        TopicError::Exists(_) => ResponseError::TopicAlreadyExists,
        TopicError::Invalid(_) => ResponseError::InvalidRequest,
        TopicError::NotLeader { .. } => ResponseError::NotLeaderOrFollower,
        TopicError::NotEnoughReplicas { .. } => ResponseError::NotEnoughReplicas,
        TopicError::OffsetOutOfRange { .. } => ResponseError::OffsetOutOfRange,
        TopicError::Unavailable(_) => ResponseError::LeaderNotAvailable,
        // Retriable: an idempotent producer sends the same sequence again and is answered
        // with the first copy's offsets if it was written.
        TopicError::OutcomeUnknown(_) => ResponseError::RequestTimedOut,
        TopicError::Storage(_) => ResponseError::KafkaStorageError,
        TopicError::Fenced(_) => ResponseError::IllegalGeneration,
        TopicError::OutOfOrderSequence(_) => ResponseError::OutOfOrderSequenceNumber,
        TopicError::UnknownProducer(_) => ResponseError::UnknownProducerId,
        TopicError::ProducerFenced(_) => ResponseError::InvalidProducerEpoch,
    }
}

pub(crate) fn str_bytes(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}

pub(crate) fn topic_name(s: &str) -> TopicName {
    TopicName(str_bytes(s))
}

/// Groups per-partition answers by topic, topics in first-seen order.
pub(crate) fn by_topic<P>(items: Vec<(String, P)>) -> Vec<(String, Vec<P>)> {
    let mut out: Vec<(String, Vec<P>)> = Vec::new();
    let mut at: HashMap<String, usize> = HashMap::new();
    for (t, p) in items {
        match at.get(&t) {
            Some(&i) => out[i].1.push(p),
            None => {
                at.insert(t.clone(), out.len());
                out.push((t, vec![p]));
            }
        }
    }
    out
}

async fn metadata<B: Backend + ?Sized>(
    b: &B,
    version: i16,
    r: MetadataRequest,
) -> MetadataResponse {
    let brokers = b.brokers();
    let live: HashMap<NodeId, i32> = brokers.iter().map(|x| (x.id, broker_id(x.id))).collect();
    let mut resp = MetadataResponse::default();
    resp.brokers = brokers
        .iter()
        .map(|x| {
            let mut m = MetadataResponseBroker::default();
            m.node_id = BrokerId(broker_id(x.id));
            m.host = str_bytes(x.host.clone());
            m.port = i32::from(x.port);
            m.rack = x.rack.clone().map(str_bytes);
            m
        })
        .collect();
    resp.cluster_id = Some(str_bytes(b.cluster_id()));
    resp.controller_id = BrokerId(broker_id(b.me()));
    // `None` entries: topics asked for by id only (Starling's topics have no ids).
    let asked: Vec<Option<String>> = match r.topics {
        Some(t) if !(t.is_empty() && version == 0) => {
            t.into_iter().map(|t| t.name.map(|n| n.0.to_string())).collect()
        }
        // Every topic: `null`, or an empty list at version 0.
        _ => match call(b, TopicList).await {
            Ok(names) => names.into_iter().map(Some).collect(),
            Err(_) => Vec::new(),
        },
    };
    let live = &live;
    let described = join_all(asked.into_iter().map(|name| async move {
        match name {
            Some(n) => {
                let info = call(b, TopicDescribe { name: n.clone(), offsets: false }).await;
                topic_metadata(Some(n), info, live)
            }
            None => {
                let mut t = MetadataResponseTopic::default();
                t.error_code = ResponseError::UnknownTopicId.code();
                t
            }
        }
    }))
    .await;
    resp.topics = described;
    resp
}

fn topic_metadata(
    name: Option<String>,
    info: Result<TopicInfo, TopicError>,
    live: &HashMap<NodeId, i32>,
) -> MetadataResponseTopic {
    let mut t = MetadataResponseTopic::default();
    t.name = name.as_deref().map(topic_name);
    match info {
        Ok(info) => {
            t.partitions = info
                .partition_info
                .iter()
                .map(|p| {
                    let mut m = MetadataResponsePartition::default();
                    m.partition_index = p.partition as i32;
                    let leader = p.leader.and_then(|l| live.get(&l).copied());
                    m.leader_id = BrokerId(leader.unwrap_or(-1));
                    if leader.is_none() {
                        m.error_code = ResponseError::LeaderNotAvailable.code();
                    }
                    m.leader_epoch = p.leader_epoch;
                    m.replica_nodes = p.replicas.iter().map(|r| BrokerId(broker_id(*r))).collect();
                    m.isr_nodes = p.isr.iter().map(|r| BrokerId(broker_id(*r))).collect();
                    m.offline_replicas = p
                        .replicas
                        .iter()
                        .filter(|r| !live.contains_key(r))
                        .map(|r| BrokerId(broker_id(*r)))
                        .collect();
                    m
                })
                .collect();
        }
        Err(e) => t.error_code = error_code(&e),
    }
    t
}

async fn produce<B: Backend + ?Sized>(b: &B, r: ProduceRequest) -> ProduceResponse {
    let acks = match r.acks {
        0 => Some(Acks::None),
        1 => Some(Acks::Leader),
        -1 => Some(Acks::All),
        _ => None,
    };
    let transactional = r.transactional_id.is_some();
    let mut jobs = Vec::new();
    for td in r.topic_data {
        let name = td.name.0.to_string();
        for pd in td.partition_data {
            let name = name.clone();
            jobs.push(async move {
                let p =
                    produce_partition(b, &name, pd.index, pd.records, acks, transactional).await;
                (name, p)
            });
        }
    }
    let mut resp = ProduceResponse::default();
    resp.responses = by_topic(join_all(jobs).await)
        .into_iter()
        .map(|(name, parts)| {
            let mut t = TopicProduceResponse::default();
            t.name = topic_name(&name);
            t.partition_responses = parts;
            t
        })
        .collect();
    resp
}

async fn produce_partition<B: Backend + ?Sized>(
    b: &B,
    topic: &str,
    partition: i32,
    records: Option<Bytes>,
    acks: Option<Acks>,
    transactional: bool,
) -> PartitionProduceResponse {
    let mut p = PartitionProduceResponse::default();
    p.index = partition;
    p.base_offset = -1;
    p.log_append_time_ms = -1;
    p.log_start_offset = -1;
    let refuse = |mut p: PartitionProduceResponse, e: ResponseError, msg: String| {
        p.error_code = e.code();
        p.error_message = Some(str_bytes(msg));
        p
    };
    let Some(acks) = acks else {
        return refuse(p, ResponseError::InvalidRequiredAcks, "acks must be 0, 1 or -1".into());
    };
    if transactional {
        return refuse(
            p,
            ResponseError::InvalidRequest,
            "transactions are not supported by Starling (idempotent producers are)".into(),
        );
    }
    let Ok(partition) = u32::try_from(partition) else {
        return refuse(p, ResponseError::UnknownTopicOrPartition, "negative partition".into());
    };
    let records = records.unwrap_or_default();
    if records.is_empty() {
        return refuse(p, ResponseError::CorruptMessage, "no record batch".into());
    }
    if records.len() > MAX_MESSAGE_BYTES {
        return refuse(
            p,
            ResponseError::MessageTooLarge,
            format!(
                "{} bytes of batches, at most {MAX_MESSAGE_BYTES} per partition",
                records.len()
            ),
        );
    }
    let req = TopicProduce { topic: topic.to_string(), partition, acks, batches: records.to_vec() };
    match call(b, req).await {
        Ok(done) => {
            p.base_offset = done.base_offset;
            p
        }
        Err(TopicError::Invalid(m)) => refuse(p, ResponseError::InvalidRecord, m),
        Err(e) => {
            let code = error_code(&e);
            p.error_code = code;
            p.error_message = Some(str_bytes(e.to_string()));
            p
        }
    }
}

/// One partition of a fetch: topic, partition, offset, byte limit.
type FetchAsk = (String, i32, i64, u32);

async fn fetch<B: Backend + ?Sized>(b: &B, r: FetchRequest) -> FetchResponse {
    let mut resp = FetchResponse::default();
    if r.session_id != 0 {
        // This broker never hands out a fetch session.
        resp.error_code = ResponseError::FetchSessionIdNotFound.code();
        return resp;
    }
    let wait = u32::try_from(r.max_wait_ms).unwrap_or(0).min(MAX_FETCH_WAIT_MS);
    let min_bytes = usize::try_from(r.min_bytes).unwrap_or(0).max(1);
    let cap = u32::try_from(r.max_bytes).ok().filter(|m| *m > 0).unwrap_or(u32::MAX);
    let asks: Vec<FetchAsk> = r
        .topics
        .iter()
        .flat_map(|t| {
            let name = t.topic.0.to_string();
            t.partitions.iter().map(move |p| {
                let max = u32::try_from(p.partition_max_bytes).unwrap_or(0).clamp(1, cap);
                (name.clone(), p.partition, p.fetch_offset, max)
            })
        })
        .collect();
    let mut out: Vec<PartitionData> = join_all(asks.iter().map(|a| fetch_partition(b, a, 0))).await;
    let bytes: usize = out.iter().map(record_bytes).sum();
    let failed = out.iter().any(|p| p.error_code != 0);
    if wait > 0 && bytes < min_bytes && !failed && !asks.is_empty() {
        let mut polls: FuturesUnordered<_> = asks
            .iter()
            .enumerate()
            .map(|(i, a)| async move { (i, fetch_partition(b, a, wait).await) })
            .collect();
        while let Some((i, p)) = polls.next().await {
            let done = record_bytes(&p) > 0 || p.error_code != 0;
            out[i] = p;
            if done {
                break;
            }
        }
    }
    // The answer as a whole stays within the request's max_bytes, except its first batch (KIP-74):
    // partitions past the limit answer no records, and the client fetches them again.
    let mut total = 0usize;
    for p in &mut out {
        let n = record_bytes(p);
        if total > 0 && total + n > cap as usize {
            p.records = Some(Bytes::new());
        } else {
            total += n;
        }
    }
    let named: Vec<(String, PartitionData)> = asks.into_iter().map(|a| a.0).zip(out).collect();
    resp.responses = by_topic(named)
        .into_iter()
        .map(|(name, parts)| {
            let mut t = FetchableTopicResponse::default();
            t.topic = topic_name(&name);
            t.partitions = parts;
            t
        })
        .collect();
    resp
}

fn record_bytes(p: &PartitionData) -> usize {
    p.records.as_ref().map_or(0, Bytes::len)
}

async fn fetch_partition<B: Backend + ?Sized>(b: &B, ask: &FetchAsk, wait: u32) -> PartitionData {
    let (topic, partition, offset, max_bytes) = ask;
    let mut p = PartitionData::default();
    p.partition_index = *partition;
    p.high_watermark = -1;
    p.last_stable_offset = -1;
    p.log_start_offset = -1;
    p.preferred_read_replica = BrokerId(-1);
    p.records = Some(Bytes::new());
    let Ok(partition) = u32::try_from(*partition) else {
        p.error_code = ResponseError::UnknownTopicOrPartition.code();
        return p;
    };
    let req = TopicFetch {
        topic: topic.clone(),
        partition,
        offset: *offset,
        max_bytes: *max_bytes,
        max_wait_ms: wait,
    };
    match call(b, req).await {
        Ok(f) => {
            p.high_watermark = f.high_watermark;
            p.last_stable_offset = f.high_watermark;
            p.log_start_offset = f.log_start;
            p.records = Some(Bytes::from(f.batches));
        }
        Err(e) => p.error_code = error_code(&e),
    }
    p
}

async fn list_offsets<B: Backend + ?Sized>(
    b: &B,
    version: i16,
    r: ListOffsetsRequest,
) -> ListOffsetsResponse {
    let mut jobs = Vec::new();
    for t in r.topics {
        let name = t.name.0.to_string();
        for p in t.partitions {
            let name = name.clone();
            jobs.push(async move {
                let mut answer = list_partition(b, &name, p.partition_index, p.timestamp).await;
                if version < 4 {
                    // The leader epoch is in the answer from version 4 on.
                    answer.leader_epoch = -1;
                }
                (name, answer)
            });
        }
    }
    let mut resp = ListOffsetsResponse::default();
    resp.topics = by_topic(join_all(jobs).await)
        .into_iter()
        .map(|(name, parts)| {
            let mut t = ListOffsetsTopicResponse::default();
            t.name = topic_name(&name);
            t.partitions = parts;
            t
        })
        .collect();
    resp
}

/// Kafka's special timestamps in ListOffsets.
const LATEST: i64 = -1;
const EARLIEST: i64 = -2;

async fn list_partition<B: Backend + ?Sized>(
    b: &B,
    topic: &str,
    partition: i32,
    timestamp: i64,
) -> ListOffsetsPartitionResponse {
    let mut p = ListOffsetsPartitionResponse::default();
    p.partition_index = partition;
    p.timestamp = -1;
    p.offset = -1;
    p.leader_epoch = -1;
    let Ok(part) = u32::try_from(partition) else {
        p.error_code = ResponseError::UnknownTopicOrPartition.code();
        return p;
    };
    if timestamp < 0 && timestamp != LATEST && timestamp != EARLIEST {
        p.error_code = ResponseError::InvalidRequest.code();
        return p;
    }
    let req = TopicOffsets {
        topic: topic.to_string(),
        partition: part,
        timestamp_ms: (timestamp >= 0).then_some(timestamp),
        for_epoch: None,
    };
    match call(b, req).await {
        Ok(PartitionOffsets {
            log_start, high_watermark, leader_epoch, offset_for_time, ..
        }) => {
            p.leader_epoch = leader_epoch;
            match timestamp {
                EARLIEST => p.offset = log_start,
                LATEST => p.offset = high_watermark,
                ts => {
                    if let Some(o) = offset_for_time.filter(|o| *o < high_watermark) {
                        p.offset = o;
                        p.timestamp = ts;
                    }
                }
            }
        }
        Err(e) => p.error_code = error_code(&e),
    }
    p
}

async fn offset_for_leader_epoch<B: Backend + ?Sized>(
    b: &B,
    r: OffsetForLeaderEpochRequest,
) -> OffsetForLeaderEpochResponse {
    let mut jobs = Vec::new();
    for t in r.topics {
        let name = t.topic.0.to_string();
        for p in t.partitions {
            let name = name.clone();
            jobs.push(async move {
                let mut out = EpochEndOffset::default();
                out.partition = p.partition;
                out.leader_epoch = -1;
                out.end_offset = -1;
                let Ok(partition) = u32::try_from(p.partition) else {
                    out.error_code = ResponseError::UnknownTopicOrPartition.code();
                    return (name, out);
                };
                let req = TopicOffsets {
                    topic: name.clone(),
                    partition,
                    timestamp_ms: None,
                    for_epoch: Some(p.leader_epoch),
                };
                match call(b, req).await {
                    // KIP-320: a client that knows a newer leader epoch than this leader's is
                    // ahead of it; one that knows an older one is fenced.
                    Ok(o)
                        if p.current_leader_epoch >= 0
                            && p.current_leader_epoch > o.leader_epoch =>
                    {
                        out.error_code = ResponseError::UnknownLeaderEpoch.code();
                    }
                    Ok(o)
                        if p.current_leader_epoch >= 0
                            && p.current_leader_epoch < o.leader_epoch =>
                    {
                        out.error_code = ResponseError::FencedLeaderEpoch.code();
                    }
                    Ok(o) => {
                        let (epoch, end) = o.epoch_end.unwrap_or((-1, -1));
                        out.leader_epoch = epoch;
                        out.end_offset = end;
                    }
                    Err(e) => out.error_code = error_code(&e),
                }
                (name, out)
            });
        }
    }
    let mut resp = OffsetForLeaderEpochResponse::default();
    resp.topics = by_topic(join_all(jobs).await)
        .into_iter()
        .map(|(name, parts)| {
            let mut t = OffsetForLeaderTopicResult::default();
            t.topic = topic_name(&name);
            t.partitions = parts;
            t
        })
        .collect();
    resp
}

/// Topic settings CreateTopics accepts, as Kafka names them.
const MIN_INSYNC: &str = "min.insync.replicas";
const RETENTION_MS: &str = "retention.ms";
const RETENTION_BYTES: &str = "retention.bytes";

async fn create_topics<B: Backend + ?Sized>(b: &B, r: CreateTopicsRequest) -> CreateTopicsResponse {
    let validate_only = r.validate_only;
    let brokers = b.brokers().len().max(1);
    let mut resp = CreateTopicsResponse::default();
    resp.topics = join_all(r.topics.into_iter().map(|t| async move {
        let name = t.name.0.to_string();
        let mut res = CreatableTopicResult::default();
        res.name = t.name.clone();
        // Kafka's broker defaults: one partition; replication here as `starling topic create`.
        let partitions = if t.num_partitions == -1 { 1 } else { t.num_partitions };
        let replication =
            if t.replication_factor == -1 { brokers.min(3) as i16 } else { t.replication_factor };
        res.num_partitions = partitions;
        res.replication_factor = replication;
        let refuse = |mut res: CreatableTopicResult, e: ResponseError, m: String| {
            res.error_code = e.code();
            res.error_message = Some(str_bytes(m));
            res
        };
        if let Err(e) = starling_mq::topic::check_name(&name) {
            return refuse(res, ResponseError::InvalidTopicException, e.to_string());
        }
        if !t.assignments.is_empty() {
            return refuse(
                res,
                ResponseError::InvalidRequest,
                "replica assignments are chosen by the ring: leave them out".into(),
            );
        }
        let (Ok(partitions), Ok(replication)) =
            (u32::try_from(partitions), u32::try_from(replication))
        else {
            return refuse(
                res,
                ResponseError::InvalidRequest,
                format!("{partitions} partitions, replication {replication}: both must be positive"),
            );
        };
        if partitions == 0 {
            return refuse(res, ResponseError::InvalidPartitions, "no partitions".into());
        }
        if replication == 0 {
            return refuse(res, ResponseError::InvalidReplicationFactor, "replication 0".into());
        }
        let mut min_insync = 0;
        let mut alter = TopicAlter { name: name.clone(), ..TopicAlter::default() };
        for c in &t.configs {
            let value = c.value.as_deref().unwrap_or("");
            let bad = || format!("config {}={value:?} is not a number", c.name.as_str());
            match c.name.as_str() {
                MIN_INSYNC => match value.parse::<u32>() {
                    Ok(v) => min_insync = v,
                    Err(_) => return refuse(res, ResponseError::InvalidConfig, bad()),
                },
                RETENTION_MS => match value.parse::<i64>() {
                    Ok(v) => alter.retention_ms = Some((v >= 0).then_some(v)),
                    Err(_) => return refuse(res, ResponseError::InvalidConfig, bad()),
                },
                RETENTION_BYTES => match value.parse::<i64>() {
                    Ok(v) => alter.retention_bytes = Some(u64::try_from(v).ok()),
                    Err(_) => return refuse(res, ResponseError::InvalidConfig, bad()),
                },
                other => {
                    return refuse(
                        res,
                        ResponseError::InvalidConfig,
                        format!("config {other} is not supported (supported: {MIN_INSYNC}, {RETENTION_MS}, {RETENTION_BYTES})"),
                    )
                }
            }
        }
        if validate_only {
            return match call(b, TopicDescribe { name: name.clone(), offsets: false }).await {
                Ok(_) => refuse(res, ResponseError::TopicAlreadyExists, format!("topic {name} exists")),
                Err(TopicError::NoTopic(_)) => res,
                Err(e) => refuse(res, error_kind(&e), e.to_string()),
            };
        }
        let create = TopicCreate { name: name.clone(), partitions, replication, min_insync };
        if let Err(e) = call(b, create).await {
            let code = match &e {
                TopicError::Exists(_) => ResponseError::TopicAlreadyExists,
                _ => error_kind(&e),
            };
            return refuse(res, code, e.to_string());
        }
        if alter.retention_ms.is_some() || alter.retention_bytes.is_some() {
            if let Err(e) = call(b, alter).await {
                return refuse(
                    res,
                    ResponseError::InvalidConfig,
                    format!("created, but its retention could not be set: {e}"),
                );
            }
        }
        res
    }))
    .await;
    resp
}

async fn delete_topics<B: Backend + ?Sized>(b: &B, r: DeleteTopicsRequest) -> DeleteTopicsResponse {
    let mut resp = DeleteTopicsResponse::default();
    resp.responses = join_all(r.topic_names.into_iter().map(|n| async move {
        let mut res = DeletableTopicResult::default();
        let name = n.0.to_string();
        res.name = Some(n);
        if let Err(e) = call(b, TopicDelete { name }).await {
            res.error_code = error_code(&e);
            res.error_message = Some(str_bytes(e.to_string()));
        }
        res
    }))
    .await;
    resp
}

fn init_producer_id<B: Backend + ?Sized>(
    b: &B,
    r: InitProducerIdRequest,
) -> InitProducerIdResponse {
    let mut resp = InitProducerIdResponse::default();
    resp.producer_id = ProducerId(-1);
    resp.producer_epoch = -1;
    if r.transactional_id.is_some() {
        resp.error_code = ResponseError::InvalidRequest.code();
        return resp;
    }
    // KIP-360: a producer that knows its id asks for the next epoch of it.
    if r.producer_id.0 >= 0 && r.producer_epoch >= 0 && r.producer_epoch < i16::MAX - 1 {
        resp.producer_id = r.producer_id;
        resp.producer_epoch = r.producer_epoch + 1;
    } else {
        resp.producer_id = ProducerId(b.new_producer_id());
        resp.producer_epoch = 0;
    }
    resp
}
