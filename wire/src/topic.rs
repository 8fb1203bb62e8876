//! Topics' calls: create, list, describe and delete topics (their metadata lives in the
//! metadata service), produce Kafka record batches to a partition leader, and fetch them back.
//!
//! Any node answers every call. Produce, fetch and offsets are served by the partition's leader:
//! a node that does not lead forwards the call to the leader it knows ([`TopicPeerRequest::Leader`])
//! and relays the answer, so a client needs no routing of its own (a client that wants to spare
//! the hop sends to the leader that [`TopicDescribe`] names). A forwarded call is never forwarded
//! again: a node that no longer leads answers [`TopicError::NotLeader`].
//!
//! Produce carries whole Kafka RecordBatch v2 bytes (built by the client); the leader checks and
//! stores them as they are, and fetch returns the stored bytes unchanged.

use serde::{Deserialize, Serialize};

use crate::message::{Call, ClientRequest, PeerRequest, Request, Response};
use crate::NodeId;

/// Topics' client calls.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TopicRequest {
    /// See [`TopicCreate`].
    Create(TopicCreate),
    /// See [`TopicList`].
    List,
    /// See [`TopicDescribe`].
    Describe(TopicDescribe),
    /// See [`TopicDelete`].
    Delete(TopicDelete),
    /// See [`TopicAlter`].
    Alter(TopicAlter),
    /// See [`TopicProduce`].
    Produce(TopicProduce),
    /// See [`TopicFetch`].
    Fetch(TopicFetch),
    /// See [`TopicOffsets`].
    Offsets(TopicOffsets),
    /// See [`GroupHeartbeat`].
    GroupHeartbeat(GroupHeartbeat),
    /// See [`GroupCommit`].
    GroupCommit(GroupCommit),
    /// See [`GroupCommitted`].
    GroupCommitted(GroupCommitted),
    /// See [`GroupLeave`].
    GroupLeave(GroupLeave),
    /// See [`GroupDescribe`].
    GroupDescribe(GroupDescribe),
}

/// Topics' peer messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TopicPeerRequest {
    /// A replication message (`starling_mq::replica::Msg`, encoded) from replica `from` of a
    /// partition. Answered with [`Response::Ok`] once queued.
    Replicate {
        topic: String,
        partition: u32,
        from: NodeId,
        #[serde(with = "crate::bin")]
        msg: Vec<u8>,
    },
    /// A produce, fetch or offsets call forwarded to the partition leader: answered as the
    /// client call, or [`TopicError::NotLeader`] (never forwarded again).
    Leader(TopicRequest),
    /// A group call forwarded to the group's coordinator: answered as the client call, or
    /// [`TopicError::Unavailable`] if the receiving node does not coordinate the group (never
    /// forwarded again). A [`GroupDescribe`] of every group is answered with this node's own.
    Coordinator(TopicRequest),
}

/// Client: create a topic. Each partition's replicas are the ring's preference list for
/// `"<name>/<partition>"`. Answered with the new topic's [`TopicInfo`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicCreate {
    pub name: String,
    pub partitions: u32,
    pub replication: u32,
    /// `acks=all` needs this many in-sync replicas (0: `min(2, replication)`).
    #[serde(default)]
    pub min_insync: u32,
}

/// Client: the topics' names, sorted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicList;

/// Client: a topic's settings and each partition's replicas, leader, epoch, ISR and offsets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicDescribe {
    pub name: String,
    /// Also ask each leader for its partition's offsets (one call per partition).
    #[serde(default)]
    pub offsets: bool,
}

/// Client: delete a topic and its data on every replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicDelete {
    pub name: String,
}

/// Client: change a topic's settings. Partitions can only be added (as Kafka: keys then map to
/// other partitions); retention applies to closed segments; `min_insync` at most the
/// replication. Answered with the topic's new [`TopicInfo`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct TopicAlter {
    pub name: String,
    #[serde(default)]
    pub partitions: Option<u32>,
    #[serde(default)]
    pub min_insync: Option<u32>,
    /// `Some(None)` keeps closed segments forever.
    #[serde(default)]
    pub retention_ms: Option<Option<i64>>,
    /// `Some(None)`: no size limit.
    #[serde(default)]
    pub retention_bytes: Option<Option<u64>>,
}

/// Producer acknowledgement levels (Kafka's `acks`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Acks {
    /// `acks=0`: answered once the call reached the leader's queue, nothing waited for.
    None,
    /// `acks=1`: once the leader has appended.
    Leader,
    /// `acks=all`: once every in-sync replica has the batches, and there are at least
    /// `min_insync` of them.
    All,
}

/// Client: append record batches (Kafka RecordBatch v2, any number, whole) to one partition.
/// Answered with the offsets they got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicProduce {
    pub topic: String,
    pub partition: u32,
    pub acks: Acks,
    #[serde(with = "crate::bin")]
    pub batches: Vec<u8>,
}

/// Where produced batches landed (`-1`, `-1` for `acks=0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Produced {
    pub base_offset: i64,
    pub last_offset: i64,
}

/// Client: read batches of a partition from `offset`, below its high watermark. With nothing to
/// return, wait up to `max_wait_ms` (at most 30 s) for more (long poll).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicFetch {
    pub topic: String,
    pub partition: u32,
    pub offset: i64,
    /// About this many bytes at most (at least one batch is returned if there is one).
    pub max_bytes: u32,
    pub max_wait_ms: u32,
}

/// A fetch's answer: whole batches as stored (the first may start before the offset asked for;
/// skip records below it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fetched {
    #[serde(with = "crate::bin")]
    pub batches: Vec<u8>,
    /// Where the next fetch continues.
    pub next_offset: i64,
    pub high_watermark: i64,
    pub log_start: i64,
}

/// Client: a partition's offsets, from its leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicOffsets {
    pub topic: String,
    pub partition: u32,
    /// Also find the first offset whose record timestamp is at or after this (milliseconds
    /// since the Unix epoch; Kafka's `ListOffsets` by time).
    #[serde(default)]
    pub timestamp_ms: Option<i64>,
    /// Also find where this leader epoch ends in the leader's log (Kafka's
    /// `OffsetForLeaderEpoch`, KIP-101/KIP-320).
    #[serde(default)]
    pub for_epoch: Option<i32>,
}

/// A partition's offsets as its leader has them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionOffsets {
    pub log_start: i64,
    pub log_end: i64,
    pub high_watermark: i64,
    pub leader_epoch: i32,
    /// For a call with a timestamp: the first offset at or after it (the high watermark if
    /// no record is that new).
    #[serde(default)]
    pub offset_for_time: Option<i64>,
    /// For a call with an epoch: the largest epoch at or below it in the leader's log and the
    /// offset where that epoch ends (the start of the next one, or the log end for the
    /// latest); `(-1, -1)` when the log has no such epoch.
    #[serde(default)]
    pub epoch_end: Option<(i32, i64)>,
}

/// How a group's partitions are spread over its members (Kafka's assignors).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Assignor {
    /// Each member a contiguous range of partitions (members and partitions in order).
    #[default]
    Range,
    /// Partition `p` to the `p mod n`-th member.
    RoundRobin,
}

/// Client: a group member's heartbeat, which is also how it joins (an unknown member is
/// added) and learns its partitions. `owned` is what it reads now (what the previous answer
/// gave it, less what it has stopped reading); the answer is what it may read from now on. A
/// partition moves to another member only once its previous reader has reported it no longer
/// owns it (or was expelled after `session_timeout_ms` without a heartbeat), so no partition
/// is ever held by two members at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupHeartbeat {
    pub group: String,
    pub member: String,
    pub topic: String,
    pub owned: Vec<u32>,
    pub session_timeout_ms: u32,
    #[serde(default)]
    pub assignor: Assignor,
    /// Grows with each heartbeat of this member: a late copy of an older one (a call that
    /// timed out on the client but was still being forwarded) changes nothing.
    #[serde(default)]
    pub seq: u64,
}

/// A heartbeat's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupAssignment {
    /// Bumped whenever a member joins, leaves or is expelled.
    pub generation: u64,
    /// The partitions this member may read now (a subset of its target while others still
    /// hold some of it).
    pub partitions: Vec<u32>,
    /// Members in the group.
    pub members: u32,
    /// The answer to a late copy of an older heartbeat (nothing changed): ignore it.
    #[serde(default)]
    pub stale: bool,
    /// Which incarnation of the group's state answered (random; a new one when a coordinator
    /// takes the group up: it restarted, the ring moved the group, or another node's claim
    /// fenced it). A member seeing a new one drops its positions and starts every partition
    /// it is granted from the committed offsets: what it read under the old coordinator may
    /// be behind what other members committed since.
    #[serde(default)]
    pub incarnation: u64,
}

/// Client: record where the member got to in its partitions (the offsets of the next records
/// to read). Refused with [`TopicError::Fenced`] for a partition the member does not hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupCommit {
    pub group: String,
    pub member: String,
    pub topic: String,
    pub offsets: Vec<(u32, i64)>,
}

/// Client: the group's committed offsets for a topic, per partition (`None`: never committed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupCommitted {
    pub group: String,
    pub topic: String,
}

/// Client: leave a group now (its partitions go to the others at once).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupLeave {
    pub group: String,
    pub member: String,
}

/// Client: a group's members and assignment (`None`: every group of the cluster).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupDescribe {
    pub group: Option<String>,
}

/// One group as its coordinator has it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupInfo {
    pub group: String,
    pub topic: String,
    pub generation: u64,
    pub assignor: Assignor,
    /// The coordinating node.
    pub coordinator: NodeId,
    /// Member id and the partitions it holds, sorted by member.
    pub members: Vec<(String, Vec<u32>)>,
}

/// A topic's settings and partitions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicInfo {
    pub name: String,
    pub partitions: u32,
    pub replication: u32,
    pub min_insync: u32,
    pub partition_info: Vec<PartitionInfo>,
}

/// One partition as the metadata service has it, with its leader's offsets if asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionInfo {
    pub partition: u32,
    pub replicas: Vec<NodeId>,
    pub leader: Option<NodeId>,
    /// The leader's address, if the answering node knows it.
    pub leader_addr: Option<String>,
    pub leader_epoch: i32,
    pub isr: Vec<NodeId>,
    pub offsets: Option<PartitionOffsets>,
}

/// Why a topic call failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum TopicError {
    #[error("no topic {0:?}")]
    NoTopic(String),
    #[error("topic {0:?} exists")]
    Exists(String),
    #[error("topic {topic:?} has no partition {partition}")]
    NoPartition { topic: String, partition: u32 },
    /// A bad name, setting or batch (nothing written).
    #[error("{0}")]
    Invalid(String),
    /// The node asked does not lead the partition (nothing written); the leader it knows.
    #[error("not the partition leader (leader {}, epoch {epoch}); retry", leader.map_or("unknown".to_string(), |l| l.short()))]
    NotLeader { leader: Option<NodeId>, epoch: i32 },
    /// `acks=all` with fewer in-sync replicas than the topic's minimum (nothing written).
    #[error("{isr} in-sync replicas, {min} required (nothing written)")]
    NotEnoughReplicas { isr: u32, min: u32 },
    #[error("offset {offset} is out of range: the partition holds offsets {start} to {end}")]
    OffsetOutOfRange { offset: i64, start: i64, end: i64 },
    /// Nothing was written; try again (no leader yet, an election in progress, a node starting).
    #[error("{0}")]
    Unavailable(String),
    /// The write may or may not have been applied (leadership moved, a timeout).
    #[error("outcome unknown: {0}")]
    OutcomeUnknown(String),
    /// The leader's log failed.
    #[error("storage: {0}")]
    Storage(String),
    /// A group call from a member that does not hold what it asked about (expelled, or the
    /// partition moved): re-join with a heartbeat.
    #[error("fenced: {0}")]
    Fenced(String),
    /// An idempotent producer's batch does not continue its sequence (a batch in between was
    /// lost; nothing written). Kafka's `OUT_OF_ORDER_SEQUENCE_NUMBER`.
    #[error("{0}")]
    OutOfOrderSequence(String),
    /// An idempotent producer's batch comes from an older epoch of its id than the partition
    /// has seen (that producer was replaced; nothing written). Kafka's `INVALID_PRODUCER_EPOCH`.
    #[error("{0}")]
    ProducerFenced(String),
    /// An idempotent producer's batch continues a sequence the partition has no state for
    /// (retention removed it, or the producer never wrote here; nothing written): start again at
    /// sequence 0 with a new epoch. Kafka's `UNKNOWN_PRODUCER_ID`.
    #[error("{0}")]
    UnknownProducer(String),
}

impl TopicError {
    /// Worth retrying (after refreshing the partition's leader): nothing was written.
    pub fn retriable(&self) -> bool {
        matches!(
            self,
            TopicError::NotLeader { .. }
                | TopicError::Unavailable(_)
                | TopicError::NotEnoughReplicas { .. }
        )
    }
}

/// Answers of the topic calls.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TopicResponse {
    Info(TopicInfo),
    Names(Vec<String>),
    Deleted,
    Produced(Produced),
    Fetched(Fetched),
    Offsets(PartitionOffsets),
    Assignment(GroupAssignment),
    Done,
    Committed(Vec<(u32, Option<i64>)>),
    Groups(Vec<GroupInfo>),
    Failed(TopicError),
}

impl TopicResponse {
    /// A short name of the answer's shape.
    pub fn kind(&self) -> &'static str {
        match self {
            TopicResponse::Info(_) => "topic info",
            TopicResponse::Names(_) => "topic names",
            TopicResponse::Deleted => "topic deleted",
            TopicResponse::Produced(_) => "topic produced",
            TopicResponse::Fetched(_) => "topic fetched",
            TopicResponse::Offsets(_) => "topic offsets",
            TopicResponse::Assignment(_) => "group assignment",
            TopicResponse::Done => "done",
            TopicResponse::Committed(_) => "group committed offsets",
            TopicResponse::Groups(_) => "groups",
            TopicResponse::Failed(_) => "topic failed",
        }
    }
}

impl TopicRequest {
    /// A short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            TopicRequest::Create(_) => "topic_create",
            TopicRequest::List => "topic_list",
            TopicRequest::Describe(_) => "topic_describe",
            TopicRequest::Delete(_) => "topic_delete",
            TopicRequest::Alter(_) => "topic_alter",
            TopicRequest::Produce(_) => "topic_produce",
            TopicRequest::Fetch(_) => "topic_fetch",
            TopicRequest::Offsets(_) => "topic_offsets",
            TopicRequest::GroupHeartbeat(_) => "group_heartbeat",
            TopicRequest::GroupCommit(_) => "group_commit",
            TopicRequest::GroupCommitted(_) => "group_committed",
            TopicRequest::GroupLeave(_) => "group_leave",
            TopicRequest::GroupDescribe(_) => "group_describe",
        }
    }
}

impl TopicPeerRequest {
    /// A short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            TopicPeerRequest::Replicate { .. } => "topic_replicate",
            TopicPeerRequest::Leader(_) => "topic_leader",
            TopicPeerRequest::Coordinator(_) => "group_coordinator",
        }
    }
}

macro_rules! topic_call {
    ($call:ty => $answer:ty, |$s:ident| $req:expr, $resp:ident $(($a:ident))?) => {
        impl Call for $call {
            type Answer = Result<$answer, TopicError>;
            const PEER: bool = false;
            fn into_request($s) -> Request {
                Request::Client(ClientRequest::Topic($req))
            }
            fn answer(response: Response) -> Result<Self::Answer, Response> {
                match response {
                    Response::Topic(t) => match *t {
                        TopicResponse::$resp $(($a))? => Ok(Ok(topic_call!(@out $($a)?))),
                        TopicResponse::Failed(e) => Ok(Err(e)),
                        other => Err(Response::Topic(Box::new(other))),
                    },
                    other => Err(other),
                }
            }
            #[allow(unused_variables)]
            fn respond(answer: Self::Answer) -> Response {
                Response::Topic(Box::new(match answer {
                    Ok(a) => topic_call!(@resp $resp, a $(, $a)?),
                    Err(e) => TopicResponse::Failed(e),
                }))
            }
        }
    };
    (@out $a:ident) => { $a };
    (@out) => { () };
    (@resp $resp:ident, $v:ident, $a:ident) => { TopicResponse::$resp($v) };
    (@resp $resp:ident, $v:ident) => { TopicResponse::$resp };
}

topic_call!(TopicCreate => TopicInfo, |self| TopicRequest::Create(self), Info(i));
topic_call!(TopicList => Vec<String>, |self| TopicRequest::List, Names(n));
topic_call!(TopicDescribe => TopicInfo, |self| TopicRequest::Describe(self), Info(i));
topic_call!(TopicDelete => (), |self| TopicRequest::Delete(self), Deleted);
topic_call!(TopicAlter => TopicInfo, |self| TopicRequest::Alter(self), Info(i));
topic_call!(TopicProduce => Produced, |self| TopicRequest::Produce(self), Produced(p));
topic_call!(TopicFetch => Fetched, |self| TopicRequest::Fetch(self), Fetched(f));
topic_call!(TopicOffsets => PartitionOffsets, |self| TopicRequest::Offsets(self), Offsets(o));
topic_call!(GroupHeartbeat => GroupAssignment, |self| TopicRequest::GroupHeartbeat(self), Assignment(a));
topic_call!(GroupCommit => (), |self| TopicRequest::GroupCommit(self), Done);
topic_call!(GroupCommitted => Vec<(u32, Option<i64>)>, |self| TopicRequest::GroupCommitted(self), Committed(c));
topic_call!(GroupLeave => (), |self| TopicRequest::GroupLeave(self), Done);
topic_call!(GroupDescribe => Vec<GroupInfo>, |self| TopicRequest::GroupDescribe(self), Groups(g));

/// Peer: one replication message for a partition replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicReplicate {
    pub topic: String,
    pub partition: u32,
    pub from: NodeId,
    pub msg: Vec<u8>,
}

impl Call for TopicReplicate {
    type Answer = ();
    const PEER: bool = true;
    fn into_request(self) -> Request {
        Request::Peer(PeerRequest::Topic(TopicPeerRequest::Replicate {
            topic: self.topic,
            partition: self.partition,
            from: self.from,
            msg: self.msg,
        }))
    }
    fn answer(response: Response) -> Result<(), Response> {
        match response {
            Response::Ok => Ok(()),
            other => Err(other),
        }
    }
    fn respond(_: ()) -> Response {
        Response::Ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{decode_body, encode_request, encode_response, FrameDecoder};

    fn round_trip_request(req: Request) -> Request {
        let mut out = Vec::new();
        encode_request(&mut out, 1, &req).unwrap();
        let mut dec = FrameDecoder::new();
        dec.feed(&out);
        dec.decode().unwrap().unwrap().request().unwrap()
    }

    fn round_trip_response(resp: Response) -> Response {
        let mut out = Vec::new();
        encode_response(&mut out, 1, &resp).unwrap();
        let mut dec = FrameDecoder::new();
        dec.feed(&out);
        decode_body(&dec.decode().unwrap().unwrap().body).unwrap()
    }

    #[test]
    fn calls_and_answers_round_trip() {
        let p = TopicProduce {
            topic: "t".into(),
            partition: 3,
            acks: Acks::All,
            batches: vec![0; 100],
        };
        let req = p.clone().into_request();
        assert_eq!(round_trip_request(req.clone()), req);
        let ok: Result<Produced, TopicError> = Ok(Produced { base_offset: 5, last_offset: 9 });
        let back = round_trip_response(TopicProduce::respond(ok.clone()));
        assert_eq!(TopicProduce::answer(back).unwrap(), ok);
        let err: Result<Produced, TopicError> =
            Err(TopicError::NotLeader { leader: Some(NodeId::from_be_bytes([1; 16])), epoch: 4 });
        let back = round_trip_response(TopicProduce::respond(err.clone()));
        assert_eq!(TopicProduce::answer(back).unwrap(), err);
        // Unit answers too.
        let back = round_trip_response(TopicDelete::respond(Ok(())));
        assert_eq!(TopicDelete::answer(back).unwrap(), Ok(()));
        // The wrong shape is an error, never a panic.
        assert!(TopicFetch::answer(Response::Ok).is_err());
        assert!(TopicFetch::answer(TopicDelete::respond(Ok(()))).is_err());
    }

    #[test]
    fn batches_travel_as_binary() {
        let req = TopicReplicate {
            topic: "t".into(),
            partition: 0,
            from: NodeId::from_be_bytes([2; 16]),
            msg: vec![7; 1000],
        }
        .into_request();
        let mut out = Vec::new();
        encode_request(&mut out, 1, &req).unwrap();
        assert!(out.len() < 1100, "{} bytes", out.len());
        assert_eq!(round_trip_request(req.clone()), req);
    }
}
