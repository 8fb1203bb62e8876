//! The Kafka listener's decoders: a client's byte stream cut into frames, each decoded into a
//! request, answered by the in-memory backend, and the answer encoded.

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::FutureExt;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, FetchRequest, GroupId, JoinGroupRequest, MetadataRequest,
    ProduceRequest, RequestHeader, RequestKind, TopicName,
};
use kafka_protocol::protocol::{Encodable, StrBytes};
use starling_kafka::codec::{decode_request, encode_response, unsupported_api_versions, Decoded};
use starling_kafka::fake::FakeBackend;
use starling_kafka::frame::FrameReader;
use starling_kafka::serve::{answer, Backend};
use starling_mq::batch::{encode_batch, NewRecord};
use starling_wire::topic::TopicCreate;
use starling_wire::Call;

use crate::input::{chunk, chunks};

/// Fuzz target `kafka_request`: `data` is a Kafka client's byte stream, in chunks (as reads
/// return it). Cutting it into frames never panics; a frame that decodes as a served request is
/// answered by the in-memory backend (topic `t`, two partitions), and the answer must encode at
/// the request's version (an answer that does not is a connection dropped for that client).
pub fn kafka_request(data: &[u8]) {
    let b = FakeBackend::new();
    let create = TopicCreate { name: "t".into(), partitions: 2, replication: 1, min_insync: 0 };
    let _ = b.call(create.into_request()).now_or_never();
    let mut reader = FrameReader::new();
    for piece in chunks(data) {
        reader.feed(piece);
        loop {
            match reader.next_frame() {
                Ok(Some(frame)) => serve(&b, frame),
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
}

fn serve(b: &FakeBackend, frame: Bytes) {
    match decode_request(frame) {
        Ok(Decoded::Request(h, req)) => {
            b.advance(100);
            if let Some(Ok(Some(body))) = answer(b, &h, "/fuzz", *req).now_or_never() {
                if let Err(e) = encode_response(&h, &body) {
                    panic!("{:?} v{}: the answer does not encode: {e}", h.api_key, h.version);
                }
            }
        }
        Ok(Decoded::ApiVersionsTooNew(h)) => {
            unsupported_api_versions(&h).expect("the version-0 ApiVersions answer encodes");
        }
        Err(_) => {}
    }
}

fn frame(key: ApiKey, version: i16, correlation: i32, body: &RequestKind) -> Vec<u8> {
    let mut buf = BytesMut::new();
    buf.put_i32(0);
    let mut h = RequestHeader::default();
    h.request_api_key = key as i16;
    h.request_api_version = version;
    h.correlation_id = correlation;
    h.client_id = Some(StrBytes::from_static_str("fuzz"));
    h.encode(&mut buf, key.request_header_version(version)).expect("header");
    body.encode(&mut buf, version).expect("body");
    let len = (buf.len() - 4) as i32;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    buf.to_vec()
}

/// Seeds: real requests (ApiVersions, Metadata, Produce, Fetch, JoinGroup) at old and new
/// versions, alone and pipelined in one stream, cut into chunks.
pub(crate) fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let t = || TopicName(StrBytes::from_static_str("t"));
    let mut meta = MetadataRequest::default();
    let mut mt = MetadataRequestTopic::default();
    mt.name = Some(t());
    meta.topics = Some(vec![mt]);
    let record = NewRecord {
        key: Some(b"k".to_vec()),
        value: Some(b"v".to_vec()),
        headers: vec![],
        timestamp_ms: 1_800_000_000_000,
    };
    let mut pd = PartitionProduceData::default();
    pd.records = Some(Bytes::from(encode_batch(&[record], None).expect("batch")));
    let mut td = TopicProduceData::default();
    td.name = t();
    td.partition_data = vec![pd];
    let mut produce = ProduceRequest::default();
    produce.acks = -1;
    produce.topic_data = vec![td];
    let mut fp = FetchPartition::default();
    fp.partition_max_bytes = 1 << 20;
    let mut ft = FetchTopic::default();
    ft.topic = t();
    ft.partitions = vec![fp];
    let mut fetch = FetchRequest::default();
    fetch.session_epoch = -1;
    fetch.topics = vec![ft];
    let mut p = JoinGroupRequestProtocol::default();
    p.name = StrBytes::from_static_str("range");
    let mut join = JoinGroupRequest::default();
    join.group_id = GroupId(StrBytes::from_static_str("g"));
    join.session_timeout_ms = 10_000;
    join.protocol_type = StrBytes::from_static_str("consumer");
    join.protocols = vec![p];
    let requests = [
        (ApiKey::ApiVersions, 3, RequestKind::ApiVersions(ApiVersionsRequest::default())),
        (ApiKey::Metadata, 1, RequestKind::Metadata(meta.clone())),
        (ApiKey::Metadata, 12, RequestKind::Metadata(meta)),
        (ApiKey::Produce, 3, RequestKind::Produce(produce.clone())),
        (ApiKey::Produce, 9, RequestKind::Produce(produce)),
        (ApiKey::Fetch, 4, RequestKind::Fetch(fetch.clone())),
        (ApiKey::Fetch, 12, RequestKind::Fetch(fetch)),
        (ApiKey::JoinGroup, 5, RequestKind::JoinGroup(join)),
    ];
    let mut out = Vec::new();
    let mut stream = Vec::new();
    for (i, (key, version, body)) in requests.iter().enumerate() {
        let f = frame(*key, *version, i as i32, body);
        let mut one = Vec::new();
        chunk(&mut one, &f);
        out.push(("kafka_request", format!("{key:?}-v{version}"), one));
        stream.extend_from_slice(&f);
    }
    let mut pipelined = Vec::new();
    for piece in stream.chunks(97) {
        chunk(&mut pipelined, piece);
    }
    out.push(("kafka_request", "pipelined".to_string(), pipelined));
    out
}
