//! Every API Starling serves, at every version it advertises, with a request that reaches the
//! interesting fields (a topic, a partition, a group with a member), answered by the in-memory
//! backend: the answer must encode at that version (kafka-protocol refuses to encode a field a
//! version does not have, which would otherwise surface as a dropped connection for clients of
//! that version) and decode back with Kafka's client-side decoder.

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
use kafka_protocol::messages::offset_for_leader_epoch_request::{
    OffsetForLeaderPartition, OffsetForLeaderTopic,
};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, StrBytes};
use starling_kafka::codec::{encode_response, Header};
use starling_kafka::fake::FakeBackend;
use starling_kafka::group::JoinArgs;
use starling_kafka::serve::{answer, Backend};
use starling_kafka::versions::SERVED;
use starling_mq::batch::{encode_batch, NewRecord};
use starling_wire::topic::{TopicCreate, TopicDelete, TopicProduce};
use starling_wire::{Call, Request as WireRequest};

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

fn topic(v: &str) -> TopicName {
    TopicName(s(v))
}

fn batch() -> Bytes {
    let r = NewRecord {
        key: Some(b"k".to_vec()),
        value: Some(b"v".to_vec()),
        headers: vec![],
        timestamp_ms: 1_800_000_000_000,
    };
    Bytes::from(encode_batch(&[r], None).expect("batch"))
}

/// A backend with topic "t" (2 partitions, one batch in partition 0) and group "g" with one
/// member in a stable generation; the member's id and generation.
fn backend() -> (FakeBackend, String, i32) {
    let b = FakeBackend::new();
    let call = |r: WireRequest| b.call(r).now_or_never().expect("the fake answers at once");
    let created = call(
        TopicCreate { name: "t".into(), partitions: 2, replication: 1, min_insync: 0 }
            .into_request(),
    );
    assert!(TopicCreate::answer(created).expect("answer").is_ok());
    let p = TopicProduce {
        topic: "t".into(),
        partition: 0,
        acks: starling_wire::topic::Acks::All,
        batches: batch().to_vec(),
    };
    assert!(TopicProduce::answer(call(p.into_request())).expect("answer").is_ok());
    let join = JoinArgs {
        group: "g".into(),
        member_id: String::new(),
        client_id: "c".into(),
        client_host: "/127.0.0.1".into(),
        session_timeout_ms: 10_000,
        rebalance_timeout_ms: 10_000,
        protocol_type: "consumer".into(),
        protocols: vec![("range".into(), Bytes::from_static(b"sub"))],
        require_known_member_id: false,
    };
    let a = b.groups().join(0, join).now_or_never().expect("a lone member's join completes");
    assert_eq!(a.error, 0);
    let sync = b
        .groups()
        .sync(
            0,
            "g",
            a.generation,
            &a.member_id,
            vec![(a.member_id.clone(), Bytes::from_static(b"asg"))],
        )
        .now_or_never()
        .expect("the leader's sync completes");
    assert_eq!(sync.error, 0);
    (b, a.member_id, a.generation)
}

fn request(api: ApiKey, version: i16, member: &str, generation: i32) -> RequestKind {
    match api {
        ApiKey::ApiVersions => RequestKind::ApiVersions(ApiVersionsRequest::default()),
        ApiKey::Metadata => {
            let mut t = MetadataRequestTopic::default();
            t.name = Some(topic("t"));
            let mut missing = MetadataRequestTopic::default();
            missing.name = Some(topic("nope"));
            let mut r = MetadataRequest::default();
            r.topics = Some(vec![t, missing]);
            RequestKind::Metadata(r)
        }
        ApiKey::Produce => {
            let mut pd = PartitionProduceData::default();
            pd.index = 1;
            pd.records = Some(batch());
            let mut td = TopicProduceData::default();
            td.name = topic("t");
            td.partition_data = vec![pd];
            let mut r = ProduceRequest::default();
            r.acks = -1;
            r.timeout_ms = 1000;
            r.topic_data = vec![td];
            RequestKind::Produce(r)
        }
        ApiKey::Fetch => {
            let mut p = FetchPartition::default();
            p.fetch_offset = 0;
            p.partition_max_bytes = 1 << 20;
            let mut missing = FetchPartition::default();
            missing.partition = 9;
            let mut t = FetchTopic::default();
            t.topic = topic("t");
            t.partitions = vec![p, missing];
            let mut r = FetchRequest::default();
            r.replica_id = BrokerId(-1);
            r.max_bytes = 1 << 20;
            r.session_epoch = -1;
            r.topics = vec![t];
            RequestKind::Fetch(r)
        }
        ApiKey::ListOffsets => {
            let parts = [-2i64, -1, 5]
                .iter()
                .map(|ts| {
                    let mut p = ListOffsetsPartition::default();
                    p.timestamp = *ts;
                    p
                })
                .collect();
            let mut t = ListOffsetsTopic::default();
            t.name = topic("t");
            t.partitions = parts;
            let mut r = ListOffsetsRequest::default();
            r.replica_id = BrokerId(-1);
            r.topics = vec![t];
            RequestKind::ListOffsets(r)
        }
        ApiKey::CreateTopics => {
            let mut a = CreatableTopic::default();
            a.name = topic("t2");
            a.num_partitions = 1;
            a.replication_factor = 1;
            let mut dup = CreatableTopic::default();
            dup.name = topic("t");
            dup.num_partitions = -1;
            dup.replication_factor = -1;
            let mut r = CreateTopicsRequest::default();
            r.topics = vec![a, dup];
            RequestKind::CreateTopics(r)
        }
        ApiKey::DeleteTopics => {
            let mut r = DeleteTopicsRequest::default();
            r.topic_names = vec![topic("t"), topic("nope")];
            RequestKind::DeleteTopics(r)
        }
        ApiKey::InitProducerId => {
            let mut r = InitProducerIdRequest::default();
            r.producer_id = ProducerId(-1);
            r.producer_epoch = -1;
            RequestKind::InitProducerId(r)
        }
        ApiKey::FindCoordinator => {
            let mut r = FindCoordinatorRequest::default();
            if version >= 4 {
                r.coordinator_keys = vec![s("g"), s("bad/id")];
            } else {
                r.key = s("g");
            }
            RequestKind::FindCoordinator(r)
        }
        ApiKey::JoinGroup => {
            let mut p = JoinGroupRequestProtocol::default();
            p.name = s("range");
            p.metadata = Bytes::from_static(b"sub");
            let mut r = JoinGroupRequest::default();
            r.group_id = GroupId(s("g2"));
            r.session_timeout_ms = 10_000;
            r.rebalance_timeout_ms = 10_000;
            r.protocol_type = s("consumer");
            r.protocols = vec![p];
            RequestKind::JoinGroup(r)
        }
        ApiKey::SyncGroup => {
            let mut a = SyncGroupRequestAssignment::default();
            a.member_id = s(member);
            a.assignment = Bytes::from_static(b"asg");
            let mut r = SyncGroupRequest::default();
            r.group_id = GroupId(s("g"));
            r.generation_id = generation;
            r.member_id = s(member);
            r.assignments = vec![a];
            RequestKind::SyncGroup(r)
        }
        ApiKey::Heartbeat => {
            let mut r = HeartbeatRequest::default();
            r.group_id = GroupId(s("g"));
            r.generation_id = generation;
            r.member_id = s(member);
            RequestKind::Heartbeat(r)
        }
        ApiKey::LeaveGroup => {
            let mut r = LeaveGroupRequest::default();
            r.group_id = GroupId(s("g"));
            if version >= 3 {
                let mut m = MemberIdentity::default();
                m.member_id = s(member);
                let mut unknown = MemberIdentity::default();
                unknown.member_id = s("nobody");
                r.members = vec![m, unknown];
            } else {
                r.member_id = s(member);
            }
            RequestKind::LeaveGroup(r)
        }
        ApiKey::OffsetCommit => {
            let mut p = OffsetCommitRequestPartition::default();
            p.committed_offset = 1;
            p.committed_leader_epoch = 3;
            p.committed_metadata = Some(s("meta"));
            let mut t = OffsetCommitRequestTopic::default();
            t.name = topic("t");
            t.partitions = vec![p];
            let mut r = OffsetCommitRequest::default();
            r.group_id = GroupId(s("g"));
            r.generation_id_or_member_epoch = generation;
            r.member_id = s(member);
            r.topics = vec![t];
            RequestKind::OffsetCommit(r)
        }
        ApiKey::OffsetFetch => {
            let mut t = OffsetFetchRequestTopic::default();
            t.name = topic("t");
            t.partition_indexes = vec![0, 1];
            let mut r = OffsetFetchRequest::default();
            r.group_id = GroupId(s("g"));
            r.topics = if version % 2 == 0 { Some(vec![t]) } else { None };
            RequestKind::OffsetFetch(r)
        }
        ApiKey::DescribeGroups => {
            let mut r = DescribeGroupsRequest::default();
            r.groups = vec![GroupId(s("g")), GroupId(s("unknown"))];
            RequestKind::DescribeGroups(r)
        }
        ApiKey::ListGroups => RequestKind::ListGroups(ListGroupsRequest::default()),
        ApiKey::OffsetForLeaderEpoch => {
            let parts = [(-1, 1), (3, 3), (2, 9), (5, 0)]
                .iter()
                .map(|(current, asked)| {
                    let mut p = OffsetForLeaderPartition::default();
                    p.current_leader_epoch = *current;
                    p.leader_epoch = *asked;
                    p
                })
                .collect();
            let mut t = OffsetForLeaderTopic::default();
            t.topic = topic("t");
            t.partitions = parts;
            let mut r = OffsetForLeaderEpochRequest::default();
            r.replica_id = BrokerId(-1);
            r.topics = vec![t];
            RequestKind::OffsetForLeaderEpoch(r)
        }
        other => panic!("no request written for {other:?}: add one"),
    }
}

#[test]
fn every_served_api_answers_encodably_at_every_advertised_version() {
    let mut checked = 0;
    for (api, lo, hi) in SERVED {
        for version in *lo..=*hi {
            let (b, member, generation) = backend();
            if *api == ApiKey::OffsetCommit || *api == ApiKey::OffsetFetch {
                // A commit first, so the fetch has something to return.
                let commit = request(ApiKey::OffsetCommit, 5, &member, generation);
                let h = Header {
                    api_key: ApiKey::OffsetCommit,
                    version: 5,
                    correlation_id: 1,
                    client_id: None,
                };
                answer(&b, &h, "/127.0.0.1", commit)
                    .now_or_never()
                    .expect("answers at once")
                    .expect("served");
            }
            let h =
                Header { api_key: *api, version, correlation_id: 42, client_id: Some("c".into()) };
            let req = request(*api, version, &member, generation);
            let body = answer(&b, &h, "/127.0.0.1", req)
                .now_or_never()
                .unwrap_or_else(|| panic!("{api:?} v{version} did not answer at once"))
                .unwrap_or_else(|e| panic!("{api:?} v{version}: {e}"))
                .unwrap_or_else(|| panic!("{api:?} v{version}: no answer"));
            let bytes = encode_response(&h, &body)
                .unwrap_or_else(|e| panic!("{api:?} v{version} answer does not encode: {e}"));
            // Kafka's client side reads it back.
            let mut frame = Bytes::copy_from_slice(&bytes[4..]);
            let rh = ResponseHeader::decode(&mut frame, api.response_header_version(version))
                .expect("response header");
            assert_eq!(rh.correlation_id, 42);
            let back =
                ResponseKind::decode(*api, &mut BytesMut::from(&frame[..]).freeze(), version)
                    .unwrap_or_else(|e| panic!("{api:?} v{version} answer does not decode: {e:#}"));
            assert_eq!(std::mem::discriminant(&back), std::mem::discriminant(&body));
            checked += 1;
        }
    }
    assert!(checked > 60, "{checked} API versions checked");
}

#[test]
fn produce_with_acks_zero_gets_no_answer_and_the_records_are_written() {
    let (b, _, _) = backend();
    let RequestKind::Produce(mut r) = request(ApiKey::Produce, 9, "", 0) else { unreachable!() };
    r.acks = 0;
    let h = Header { api_key: ApiKey::Produce, version: 9, correlation_id: 1, client_id: None };
    let a = answer(&b, &h, "", RequestKind::Produce(r)).now_or_never().expect("at once");
    assert_eq!(a, Ok(None));
    let mut p = ListOffsetsPartition::default();
    p.partition_index = 1;
    p.timestamp = -1;
    let mut t = ListOffsetsTopic::default();
    t.name = topic("t");
    t.partitions = vec![p];
    let mut r = ListOffsetsRequest::default();
    r.topics = vec![t];
    let h = Header { api_key: ApiKey::ListOffsets, version: 6, correlation_id: 2, client_id: None };
    let Ok(Some(ResponseKind::ListOffsets(o))) =
        answer(&b, &h, "", RequestKind::ListOffsets(r)).now_or_never().expect("at once")
    else {
        panic!("no offsets answer")
    };
    assert_eq!(o.topics[0].partitions[0].offset, 1, "the acks=0 batch is in partition 1");
}

#[test]
fn a_fetch_answer_stays_within_max_bytes_but_for_its_first_batch() {
    let (b, _, _) = backend();
    // A batch in partition 1 too: both partitions have one.
    let h = Header { api_key: ApiKey::Produce, version: 9, correlation_id: 1, client_id: None };
    let produced = answer(&b, &h, "", request(ApiKey::Produce, 9, "", 0)).now_or_never();
    assert!(matches!(produced, Some(Ok(Some(_)))));
    let fetch = |max_bytes: i32| {
        let RequestKind::Fetch(mut r) = request(ApiKey::Fetch, 12, "", 0) else { unreachable!() };
        let mut p1 = FetchPartition::default();
        p1.partition = 1;
        p1.partition_max_bytes = 1 << 20;
        r.topics[0].partitions = vec![r.topics[0].partitions[0].clone(), p1];
        r.max_bytes = max_bytes;
        let h = Header { api_key: ApiKey::Fetch, version: 12, correlation_id: 2, client_id: None };
        let Some(Ok(Some(ResponseKind::Fetch(f)))) =
            answer(&b, &h, "", RequestKind::Fetch(r)).now_or_never()
        else {
            panic!("no fetch answer")
        };
        f.responses[0]
            .partitions
            .iter()
            .map(|p| p.records.as_ref().map_or(0, Bytes::len))
            .collect::<Vec<_>>()
    };
    let both = fetch(1 << 20);
    assert!(both[0] > 0 && both[1] > 0, "{both:?}");
    let one = fetch(both[0] as i32 + 1);
    assert_eq!(one, vec![both[0], 0], "the second partition's batch would pass max_bytes");
    let tiny = fetch(1);
    assert_eq!(tiny, vec![both[0], 0], "the first batch is returned even past max_bytes");
}

#[test]
fn offset_for_leader_epoch_answers_where_an_epoch_ends_and_fences_stale_leader_epochs() {
    let (b, _, _) = backend();
    let h = Header {
        api_key: ApiKey::OffsetForLeaderEpoch,
        version: 4,
        correlation_id: 1,
        client_id: None,
    };
    let Some(Ok(Some(ResponseKind::OffsetForLeaderEpoch(r)))) =
        answer(&b, &h, "", request(ApiKey::OffsetForLeaderEpoch, 4, "", 0)).now_or_never()
    else {
        panic!("no answer")
    };
    let got: Vec<(i16, i32, i64)> = r.topics[0]
        .partitions
        .iter()
        .map(|p| (p.error_code, p.leader_epoch, p.end_offset))
        .collect();
    // The fake's partition 0 has epochs 1 (ending at 0) and 3 (the leader's, ending at the log
    // end, 1). Asked: epoch 1 with no current epoch; 3 as the current one; a client at epoch 2
    // (older than the leader's 3: fenced); at epoch 5 (newer: unknown to this leader).
    assert_eq!(
        got,
        vec![
            (0, 1, 0),
            (0, 3, 1),
            (ResponseError::FencedLeaderEpoch.code(), -1, -1),
            (ResponseError::UnknownLeaderEpoch.code(), -1, -1)
        ]
    );
}

/// The fake backend's answer to one request, which it gives at once.
fn serve(b: &FakeBackend, api: ApiKey, version: i16, req: RequestKind) -> ResponseKind {
    let h = Header { api_key: api, version, correlation_id: 1, client_id: None };
    answer(b, &h, "", req).now_or_never().expect("at once").expect("served").expect("answer")
}

#[test]
fn a_topic_deleted_and_created_again_starts_with_no_committed_offsets() {
    let (b, member, generation) = backend();
    let serve = |api: ApiKey, version: i16, req: RequestKind| serve(&b, api, version, req);
    let committed = || {
        let ResponseKind::OffsetFetch(f) =
            serve(ApiKey::OffsetFetch, 6, request(ApiKey::OffsetFetch, 6, &member, generation))
        else {
            panic!("not an OffsetFetch answer")
        };
        f.topics[0].partitions[0].committed_offset
    };
    serve(ApiKey::OffsetCommit, 5, request(ApiKey::OffsetCommit, 5, &member, generation));
    assert_eq!(committed(), 1, "the commit is read back");
    let call = |r: WireRequest| b.call(r).now_or_never().expect("the fake answers at once");
    let deleted = call(TopicDelete { name: "t".into() }.into_request());
    assert!(TopicDelete::answer(deleted).expect("answer").is_ok());
    // Committing to a topic that does not exist: UNKNOWN_TOPIC_OR_PARTITION, as Kafka.
    let ResponseKind::OffsetCommit(c) =
        serve(ApiKey::OffsetCommit, 5, request(ApiKey::OffsetCommit, 5, &member, generation))
    else {
        panic!("not an OffsetCommit answer")
    };
    assert_eq!(c.topics[0].partitions[0].error_code, ResponseError::UnknownTopicOrPartition.code());
    assert_eq!(committed(), -1, "no offsets for a topic that does not exist");
    let created = call(
        TopicCreate { name: "t".into(), partitions: 2, replication: 1, min_insync: 0 }
            .into_request(),
    );
    assert!(TopicCreate::answer(created).expect("answer").is_ok());
    assert_eq!(committed(), -1, "the new topic of the same name starts with no commits");
}

#[test]
fn a_coordinator_another_node_claimed_the_group_from_commits_nothing_and_drops_the_group() {
    let (b, member, generation) = backend();
    let serve = |api: ApiKey, version: i16, req: RequestKind| serve(&b, api, version, req);
    let commit = || {
        let ResponseKind::OffsetCommit(c) =
            serve(ApiKey::OffsetCommit, 5, request(ApiKey::OffsetCommit, 5, &member, generation))
        else {
            panic!("not an OffsetCommit answer")
        };
        c.topics[0].partitions[0].error_code
    };
    assert_eq!(commit(), 0);
    assert!(b.groups().with(|g| (g.describe("g").is_some(), Vec::new())));
    // Two ring views disagreed and another node claimed the group's offsets.
    b.claim_elsewhere("g");
    assert_eq!(commit(), ResponseError::NotCoordinator.code(), "the commit is fenced");
    assert!(
        b.groups().with(|g| (g.describe("g").is_none(), Vec::new())),
        "the fenced coordinator dropped the group: its members rejoin"
    );
    // The member's id means nothing here now: it must join again.
    assert_eq!(commit(), ResponseError::UnknownMemberId.code());
}
