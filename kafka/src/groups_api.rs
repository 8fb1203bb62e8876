//! Kafka's group requests: FindCoordinator, JoinGroup, SyncGroup, Heartbeat, LeaveGroup,
//! OffsetCommit, OffsetFetch, DescribeGroups and ListGroups, served by the group's coordinator
//! (the node the native groups use: the first live node of the ring for `group/<name>`). Any
//! other node answers `NOT_COORDINATOR`, and the client asks FindCoordinator again.
//!
//! Committed offsets are kept in the group's record in the metadata service, as the native
//! groups' are ([`starling_mq::fence`]: keyed by the topic's incarnation, so a topic deleted and
//! created again starts with none), so a group's progress is one whether Kafka consumers or
//! `starling topic consume --group` made it. Every commit and fetch is fenced by this node's
//! claim on the group: if another node claimed it (two ring views disagreed), this one answers
//! `NOT_COORDINATOR` and drops the group, and its members look the coordinator up again. Membership is not shared: a
//! group is used either by Kafka consumers or by native ones at a time (each kind has its own
//! coordinator state; running both at once under one name would let each read the partitions
//! the other holds).

use std::collections::HashMap;

use futures_util::future::join_all;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::find_coordinator_response::Coordinator as FoundCoordinator;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponsePartition, OffsetFetchResponseTopic,
};
use kafka_protocol::messages::{
    BrokerId, DescribeGroupsRequest, DescribeGroupsResponse, FindCoordinatorRequest,
    FindCoordinatorResponse, GroupId, HeartbeatRequest, HeartbeatResponse, JoinGroupRequest,
    JoinGroupResponse, LeaveGroupRequest, LeaveGroupResponse, ListGroupsRequest,
    ListGroupsResponse, OffsetCommitRequest, OffsetCommitResponse, OffsetFetchRequest,
    OffsetFetchResponse, SyncGroupRequest, SyncGroupResponse,
};
use starling_mq::fence::{Committed, FenceError, OffsetKey};
use starling_wire::topic::{TopicDescribe, TopicList};

use crate::broker_id;
use crate::codec::Header;
use crate::group::Coordinator;
use crate::group::JoinArgs;
use crate::serve::{by_topic, call, str_bytes, topic_name, Backend, CommitCheck};

/// Kafka's bounds on a member's session timeout (`group.min.session.timeout.ms`,
/// `group.max.session.timeout.ms`).
pub const SESSION_MIN_MS: i32 = 6_000;
pub const SESSION_MAX_MS: i32 = 1_800_000;

/// The longest group id taken (Kafka takes any non-empty string).
pub const MAX_GROUP_ID: usize = 255;

/// The incarnation of each topic named (see [`Backend::topic_incarnation`]), looked up once.
async fn incarnations<B: Backend + ?Sized>(
    b: &B,
    names: impl Iterator<Item = String>,
) -> HashMap<String, Result<Option<u64>, String>> {
    let mut names: Vec<String> = names.collect();
    names.sort();
    names.dedup();
    let found = join_all(names.iter().map(|n| b.topic_incarnation(n))).await;
    names.into_iter().zip(found).collect()
}

fn valid_group(group: &str) -> bool {
    !group.is_empty() && group.len() <= MAX_GROUP_ID
}

/// Whether this node coordinates `group` (else the error to answer).
fn coordinates<B: Backend + ?Sized>(b: &B, group: &str) -> Result<(), ResponseError> {
    if !valid_group(group) {
        return Err(ResponseError::InvalidGroupId);
    }
    match b.coordinator_of(group) {
        Some(c) if c == b.me() => Ok(()),
        Some(_) => Err(ResponseError::NotCoordinator),
        None => Err(ResponseError::CoordinatorNotAvailable),
    }
}

pub(crate) fn find_coordinator<B: Backend + ?Sized>(
    b: &B,
    version: i16,
    r: FindCoordinatorRequest,
) -> FindCoordinatorResponse {
    let keys: Vec<String> = if version >= 4 {
        r.coordinator_keys.iter().map(|k| k.to_string()).collect()
    } else {
        vec![r.key.to_string()]
    };
    let brokers = b.brokers();
    let found: Vec<FoundCoordinator> = keys
        .into_iter()
        .map(|key| {
            let mut c = FoundCoordinator::default();
            c.key = str_bytes(key.clone());
            c.node_id = BrokerId(-1);
            c.port = -1;
            let fail = |mut c: FoundCoordinator, e: ResponseError, m: &str| {
                c.error_code = e.code();
                c.error_message = Some(str_bytes(m));
                c
            };
            if r.key_type != 0 {
                // Not retriable: a transactional producer stops at once with the reason.
                return fail(
                    c,
                    ResponseError::InvalidRequest,
                    "transactions are not supported by Starling",
                );
            }
            if !valid_group(&key) {
                return fail(c, ResponseError::InvalidGroupId, "a group id is 1 to 255 bytes");
            }
            let node = b.coordinator_of(&key);
            match node.and_then(|n| brokers.iter().find(|x| x.id == n)) {
                Some(x) => {
                    c.node_id = BrokerId(broker_id(x.id));
                    c.host = str_bytes(x.host.clone());
                    c.port = i32::from(x.port);
                    c
                }
                None => fail(
                    c,
                    ResponseError::CoordinatorNotAvailable,
                    "the group's coordinator has no Kafka listener up; retry",
                ),
            }
        })
        .collect();
    let mut resp = FindCoordinatorResponse::default();
    if version < 4 {
        if let Some(c) = found.into_iter().next() {
            resp.error_code = c.error_code;
            resp.error_message = c.error_message;
            resp.node_id = c.node_id;
            resp.host = c.host;
            resp.port = c.port;
        }
    } else {
        resp.coordinators = found;
    }
    resp
}

pub(crate) async fn join_group<B: Backend + ?Sized>(
    b: &B,
    h: &Header,
    client_host: &str,
    r: JoinGroupRequest,
) -> JoinGroupResponse {
    let mut resp = JoinGroupResponse::default();
    resp.generation_id = -1;
    resp.member_id = r.member_id.clone();
    let group = r.group_id.0.to_string();
    if let Err(e) = coordinates(b, &group) {
        resp.error_code = e.code();
        return resp;
    }
    if !(SESSION_MIN_MS..=SESSION_MAX_MS).contains(&r.session_timeout_ms) {
        resp.error_code = ResponseError::InvalidSessionTimeout.code();
        return resp;
    }
    // Version 0 has no rebalance timeout: the session timeout is used.
    let rebalance = if h.version == 0 || r.rebalance_timeout_ms <= 0 {
        r.session_timeout_ms
    } else {
        r.rebalance_timeout_ms.min(SESSION_MAX_MS)
    };
    let args = JoinArgs {
        group,
        member_id: r.member_id.to_string(),
        client_id: h.client_id.clone().unwrap_or_default(),
        client_host: client_host.to_string(),
        session_timeout_ms: r.session_timeout_ms as u64,
        rebalance_timeout_ms: rebalance as u64,
        protocol_type: r.protocol_type.to_string(),
        protocols: r.protocols.iter().map(|p| (p.name.to_string(), p.metadata.clone())).collect(),
        require_known_member_id: h.version >= 4,
    };
    let a = b.groups().join(b.now_ms(), args).await;
    resp.error_code = a.error;
    resp.generation_id = a.generation;
    resp.protocol_type = a.protocol_type.map(str_bytes);
    // The protocol name may be null only from version 7 on (Java's parser refuses it before).
    resp.protocol_name = match a.protocol {
        Some(p) => Some(str_bytes(p)),
        None if h.version < 7 => Some(str_bytes("")),
        None => None,
    };
    resp.leader = str_bytes(a.leader);
    resp.member_id = str_bytes(a.member_id);
    resp.members = a
        .members
        .into_iter()
        .map(|(id, meta)| {
            let mut m = JoinGroupResponseMember::default();
            m.member_id = str_bytes(id);
            m.metadata = meta;
            m
        })
        .collect();
    resp
}

pub(crate) async fn sync_group<B: Backend + ?Sized>(
    b: &B,
    r: SyncGroupRequest,
) -> SyncGroupResponse {
    let mut resp = SyncGroupResponse::default();
    let group = r.group_id.0.to_string();
    if let Err(e) = coordinates(b, &group) {
        resp.error_code = e.code();
        return resp;
    }
    let assignments =
        r.assignments.into_iter().map(|a| (a.member_id.to_string(), a.assignment)).collect();
    let a = b
        .groups()
        .sync(b.now_ms(), &group, r.generation_id, r.member_id.as_str(), assignments)
        .await;
    resp.error_code = a.error;
    resp.protocol_type = a.protocol_type.map(str_bytes);
    resp.protocol_name = a.protocol.map(str_bytes);
    resp.assignment = a.assignment;
    resp
}

pub(crate) fn heartbeat<B: Backend + ?Sized>(b: &B, r: HeartbeatRequest) -> HeartbeatResponse {
    let mut resp = HeartbeatResponse::default();
    let group = r.group_id.0.to_string();
    resp.error_code = match coordinates(b, &group) {
        Err(e) => e.code(),
        Ok(()) => {
            let now = b.now_ms();
            b.groups().with(|g| {
                (g.heartbeat(now, &group, r.generation_id, r.member_id.as_str()), Vec::new())
            })
        }
    };
    resp
}

pub(crate) fn leave_group<B: Backend + ?Sized>(
    b: &B,
    version: i16,
    r: LeaveGroupRequest,
) -> LeaveGroupResponse {
    let mut resp = LeaveGroupResponse::default();
    let group = r.group_id.0.to_string();
    if let Err(e) = coordinates(b, &group) {
        resp.error_code = e.code();
        return resp;
    }
    let ids: Vec<String> = if version >= 3 {
        r.members.iter().map(|m| m.member_id.to_string()).collect()
    } else {
        vec![r.member_id.to_string()]
    };
    let now = b.now_ms();
    let codes = b.groups().with(|g| g.leave(now, &group, &ids));
    if version >= 3 {
        resp.members = ids
            .into_iter()
            .zip(codes)
            .map(|(id, code)| {
                let mut m = MemberResponse::default();
                m.member_id = str_bytes(id);
                m.error_code = code;
                m
            })
            .collect();
    } else {
        resp.error_code = codes.first().copied().unwrap_or(0);
    }
    resp
}

/// Kafka's `offset.metadata.max.bytes` default: a commit's metadata string longer than this is
/// refused with `OFFSET_METADATA_TOO_LARGE`.
pub const MAX_OFFSET_METADATA: usize = 4096;

/// The Kafka error for a failed offsets call; a fenced coordinator drops the group first (its
/// members look the coordinator up again and rejoin).
fn offsets_error<B: Backend + ?Sized>(b: &B, group: &str, e: &FenceError) -> ResponseError {
    match e {
        FenceError::Fenced { .. } => {
            b.groups().with(|g| ((), g.forget(group)));
            ResponseError::NotCoordinator
        }
        FenceError::Unavailable(_) | FenceError::Unknown(_) => {
            ResponseError::CoordinatorNotAvailable
        }
        FenceError::Refused(_) => ResponseError::UnknownServerError,
    }
}

pub(crate) async fn offset_commit<B: Backend + ?Sized>(
    b: &B,
    r: OffsetCommitRequest,
) -> OffsetCommitResponse {
    let group = r.group_id.0.to_string();
    let (now, generation) = (b.now_ms(), r.generation_id_or_member_epoch);
    let member = r.member_id.to_string();
    let check = move |g: &Coordinator, group: &str| {
        g.with(|g| (g.check_commit(now, group, generation, &member), Vec::new()))
    };
    // Checked now, and again when the commit's turn comes (a fence in between drops the group).
    let verdict = match coordinates(b, &group) {
        Err(e) => e.code(),
        Ok(()) => check(b.groups(), &group),
    };
    let found = if verdict == 0 {
        incarnations(b, r.topics.iter().map(|t| t.name.0.to_string())).await
    } else {
        HashMap::new()
    };
    // Each partition's answer, and the commits that go into the one fenced write.
    let mut answers: Vec<(String, OffsetCommitResponsePartition, bool)> = Vec::new();
    let mut commits = Vec::new();
    for t in r.topics {
        let name = t.name.0.to_string();
        for p in t.partitions {
            let mut out = OffsetCommitResponsePartition::default();
            out.partition_index = p.partition_index;
            out.error_code = verdict;
            let metadata = p.committed_metadata.as_deref().unwrap_or("").to_string();
            let mut written = false;
            if verdict == 0 {
                let incarnation = found.get(&name).cloned().unwrap_or(Ok(None));
                match (u32::try_from(p.partition_index), incarnation) {
                    (Err(_), _) | (_, Ok(None)) => {
                        out.error_code = ResponseError::UnknownTopicOrPartition.code()
                    }
                    // The metadata service did not answer: retriable.
                    (_, Err(_)) => out.error_code = ResponseError::CoordinatorNotAvailable.code(),
                    _ if metadata.len() > MAX_OFFSET_METADATA => {
                        out.error_code = ResponseError::OffsetMetadataTooLarge.code()
                    }
                    (Ok(part), Ok(Some(inc))) => {
                        let key =
                            OffsetKey { topic: name.clone(), incarnation: inc, partition: part };
                        let value = Committed {
                            offset: p.committed_offset,
                            leader_epoch: p.committed_leader_epoch,
                            metadata,
                        };
                        commits.push((key, value));
                        written = true;
                    }
                }
            }
            answers.push((name.clone(), out, written));
        }
    }
    let code = if commits.is_empty() {
        0
    } else {
        let name = group.clone();
        let check: CommitCheck = Box::new(move |g| check(g, &name));
        match b.offsets_commit(&group, commits, check).await {
            Ok(Ok(())) => 0,
            Ok(Err(e)) => offsets_error(b, &group, &e).code(),
            Err(refused) => refused,
        }
    };
    let parts = answers.into_iter().map(|(name, mut out, written)| {
        if written {
            out.error_code = code;
        }
        (name, out)
    });
    let mut resp = OffsetCommitResponse::default();
    resp.topics = by_topic(parts.collect())
        .into_iter()
        .map(|(name, parts)| {
            let mut t = OffsetCommitResponseTopic::default();
            t.name = topic_name(&name);
            t.partitions = parts;
            t
        })
        .collect();
    resp
}

pub(crate) async fn offset_fetch<B: Backend + ?Sized>(
    b: &B,
    r: OffsetFetchRequest,
) -> OffsetFetchResponse {
    let mut resp = OffsetFetchResponse::default();
    let group = r.group_id.0.to_string();
    if let Err(e) = coordinates(b, &group) {
        resp.error_code = e.code();
        return resp;
    }
    // Which partitions: the ones asked for, or every partition of every topic (only those with
    // a commit are answered then).
    let (asked, all): (Vec<(String, i32)>, bool) = match r.topics {
        Some(topics) => (
            topics
                .into_iter()
                .flat_map(|t| {
                    let name = t.name.0.to_string();
                    t.partition_indexes.into_iter().map(move |p| (name.clone(), p))
                })
                .collect(),
            false,
        ),
        None => {
            let names = call(b, TopicList).await.unwrap_or_default();
            let infos = join_all(
                names.iter().map(|n| call(b, TopicDescribe { name: n.clone(), offsets: false })),
            )
            .await;
            let mut v = Vec::new();
            for (n, info) in names.iter().zip(infos) {
                if let Ok(info) = info {
                    v.extend((0..info.partitions).map(|p| (n.clone(), p as i32)));
                }
            }
            (v, true)
        }
    };
    let found = incarnations(b, asked.iter().map(|(n, _)| n.clone())).await;
    // Each partition's answer so far, and the index into the fetch of those it reads.
    let mut answers: Vec<(String, Option<OffsetFetchResponsePartition>, Option<usize>)> =
        Vec::new();
    let mut keys = Vec::new();
    for (name, p) in asked {
        let mut out = OffsetFetchResponsePartition::default();
        out.partition_index = p;
        out.committed_offset = -1;
        out.committed_leader_epoch = -1;
        out.metadata = Some(str_bytes(""));
        let Ok(part) = u32::try_from(p) else {
            out.error_code = ResponseError::UnknownTopicOrPartition.code();
            answers.push((name, Some(out), None));
            continue;
        };
        match found.get(&name).cloned().unwrap_or(Ok(None)) {
            Ok(Some(inc)) => {
                keys.push(OffsetKey { topic: name.clone(), incarnation: inc, partition: part });
                answers.push((name, Some(out), Some(keys.len() - 1)));
            }
            // No such topic: nothing committed.
            Ok(None) if all => {}
            Ok(None) => answers.push((name, Some(out), None)),
            Err(_) => {
                out.error_code = ResponseError::CoordinatorNotAvailable.code();
                answers.push((name, Some(out), None));
            }
        }
    }
    let fetched = if keys.is_empty() {
        Ok(Vec::new())
    } else {
        b.offsets_fetch(&group, keys).await.map_err(|e| offsets_error(b, &group, &e))
    };
    if let Err(e) = &fetched {
        resp.error_code = e.code();
    }
    let kept: Vec<(String, OffsetFetchResponsePartition)> = answers
        .into_iter()
        .filter_map(|(name, out, at)| {
            let mut out = out?;
            if let Some(i) = at {
                match &fetched {
                    Ok(v) => match v.get(i).cloned().flatten() {
                        Some(c) => {
                            out.committed_offset = c.offset;
                            out.committed_leader_epoch = c.leader_epoch;
                            out.metadata = Some(str_bytes(c.metadata));
                        }
                        None if all => return None,
                        None => {}
                    },
                    Err(e) => out.error_code = e.code(),
                }
            }
            Some((name, out))
        })
        .collect();
    resp.topics = by_topic(kept)
        .into_iter()
        .map(|(name, parts)| {
            let mut t = OffsetFetchResponseTopic::default();
            t.name = topic_name(&name);
            t.partitions = parts;
            t
        })
        .collect();
    resp
}

pub(crate) fn describe_groups<B: Backend + ?Sized>(
    b: &B,
    r: DescribeGroupsRequest,
) -> DescribeGroupsResponse {
    let mut resp = DescribeGroupsResponse::default();
    resp.groups = r
        .groups
        .into_iter()
        .map(|gid| {
            let group = gid.0.to_string();
            let mut d = DescribedGroup::default();
            d.group_id = gid;
            if let Err(e) = coordinates(b, &group) {
                d.error_code = e.code();
                return d;
            }
            match b.groups().with(|g| (g.describe(&group), Vec::new())) {
                None => d.group_state = str_bytes("Dead"),
                Some(v) => {
                    d.group_state = str_bytes(v.state);
                    d.protocol_type = str_bytes(v.protocol_type);
                    d.protocol_data = str_bytes(v.protocol);
                    d.members = v
                        .members
                        .into_iter()
                        .map(|(id, client, host, sub, assignment)| {
                            let mut m = DescribedGroupMember::default();
                            m.member_id = str_bytes(id);
                            m.client_id = str_bytes(client);
                            m.client_host = str_bytes(host);
                            m.member_metadata = sub;
                            m.member_assignment = assignment;
                            m
                        })
                        .collect();
                }
            }
            d
        })
        .collect();
    resp
}

pub(crate) fn list_groups<B: Backend + ?Sized>(b: &B, r: ListGroupsRequest) -> ListGroupsResponse {
    let mut resp = ListGroupsResponse::default();
    let states: Vec<String> = r.states_filter.iter().map(|s| s.to_string()).collect();
    resp.groups = b
        .groups()
        .with(|g| (g.list(), Vec::new()))
        .into_iter()
        .filter(|v| states.is_empty() || states.iter().any(|s| s == v.state))
        .map(|v| {
            let mut l = ListedGroup::default();
            l.group_id = GroupId(str_bytes(v.group));
            l.protocol_type = str_bytes(v.protocol_type);
            l.group_state = str_bytes(v.state);
            l.group_type = str_bytes("classic");
            l
        })
        .collect();
    resp
}
