//! The Kafka listener of real `starlingd` processes (three nodes, mutual TLS on the Kafka port
//! as on QUIC), spoken to with kafka-protocol's client side: the answers Kafka clients act on
//! (UNKNOWN_TOPIC_OR_PARTITION, NOT_LEADER_OR_FOLLOWER with the new leader after a failover,
//! NOT_ENOUGH_REPLICAS, MESSAGE_TOO_LARGE, TOPIC_ALREADY_EXISTS, UNSUPPORTED_VERSION), pipelined
//! requests answered in order, and hostile frames (unknown API key, a version not served, a
//! truncated body, an oversized or negative length) closing their connection and nothing else.
//! The Python clients (confluent-kafka, kafka-python) are driven by `scripts/test-kafka`.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::offset_for_leader_epoch_request::{
    OffsetForLeaderPartition, OffsetForLeaderTopic,
};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, BrokerId, CreateTopicsRequest, FetchRequest,
    ListOffsetsRequest, MetadataRequest, MetadataResponse, OffsetForLeaderEpochRequest,
    ProduceRequest, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use starling_mq::batch::{encode_batch, NewRecord, ProducerStamp};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

#[path = "common/process.rs"]
mod process;

const PATIENCE: Duration = Duration::from_secs(60);
const CALL: Duration = Duration::from_secs(20);

fn free_udp() -> u16 {
    UdpSocket::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

fn free_tcp() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

struct Ensemble {
    _dir: tempfile::TempDir,
    certs: PathBuf,
    nodes: Vec<process::Node>,
    listens: Vec<SocketAddr>,
    kafka: Vec<SocketAddr>,
}

impl Ensemble {
    fn start() -> Ensemble {
        let dir = tempfile::tempdir().expect("tempdir");
        let names = ["node1", "node2", "node3", "client"];
        let certs = process::certs(&dir.path().join("certs"), &names);
        let listens: Vec<SocketAddr> =
            (0..3).map(|_| format!("127.0.0.1:{}", free_udp()).parse().unwrap()).collect();
        let kafka: Vec<SocketAddr> =
            (0..3).map(|_| format!("127.0.0.1:{}", free_tcp()).parse().unwrap()).collect();
        let voters = listens.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(",");
        let bin = Path::new(env!("CARGO_BIN_EXE_starlingd"));
        let nodes = names[..3]
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let env = vec![
                    ("STARLING_META_VOTERS".to_string(), voters.clone()),
                    ("STARLING_KAFKA".to_string(), kafka[i].to_string()),
                ];
                let seeds: Vec<SocketAddr> = if i == 0 { vec![] } else { vec![listens[0]] };
                process::Node::start_with_env(
                    bin,
                    &dir.path().join(name),
                    &certs.join(name),
                    &listens[i].to_string(),
                    &seeds,
                    &env,
                )
            })
            .collect();
        Ensemble { _dir: dir, certs, nodes, listens, kafka }
    }

    fn logs(&self) -> String {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| format!("--- node{} ---\n{}", i + 1, process::tail(&n.data, 30)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The node whose Kafka broker id is `id`.
    fn by_broker(&self, id: BrokerId) -> usize {
        self.nodes
            .iter()
            .position(|n| starling_kafka::broker_id(n.id()) == id.0)
            .unwrap_or_else(|| panic!("no node has broker id {id:?}"))
    }
}

/// A TLS connection to a Kafka listener, with the client certificate.
struct Conn {
    stream: TlsStream<TcpStream>,
    next: i32,
}

impl Conn {
    async fn open(addr: SocketAddr, certs: &Path) -> Conn {
        Conn::try_open(addr, certs).await.expect("TLS handshake")
    }

    /// A connection, or the handshake's error (the node closed it at once).
    async fn try_open(addr: SocketAddr, certs: &Path) -> std::io::Result<Conn> {
        let material = starling_net::tls::TlsMaterial::load(&certs.join("client")).expect("certs");
        let configs = starling_net::tls::mutual(&material).expect("tls");
        let connector = tokio_rustls::TlsConnector::from(configs.client);
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
        // TLS 1.3: a close by the server may only show after the client's handshake is done;
        // a request then shows whether the connection is served.
        let stream = connector.connect(name, tcp).await?;
        Ok(Conn { stream, next: 1 })
    }

    /// Sends a request without reading its answer; its correlation id.
    async fn send<R: Request>(&mut self, version: i16, req: &R) -> i32 {
        let (id, buf) = self.encode(version, req);
        self.write_raw(&buf).await;
        id
    }

    /// A request's frame, and its correlation id.
    fn encode<R: Request>(&mut self, version: i16, req: &R) -> (i32, BytesMut) {
        let id = self.next;
        self.next += 1;
        let mut buf = BytesMut::new();
        buf.put_i32(0);
        let mut h = RequestHeader::default();
        h.request_api_key = R::KEY;
        h.request_api_version = version;
        h.correlation_id = id;
        h.client_id = Some(StrBytes::from_static_str("starling-test"));
        h.encode(&mut buf, R::header_version(version)).expect("header");
        req.encode(&mut buf, version).expect("body");
        let len = (buf.len() - 4) as i32;
        buf[..4].copy_from_slice(&len.to_be_bytes());
        (id, buf)
    }

    async fn write_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
        self.stream.flush().await.expect("flush");
    }

    /// The next answer frame (`None`: the node closed the connection).
    async fn read_frame(&mut self) -> Option<Bytes> {
        let mut len = [0u8; 4];
        match tokio::time::timeout(CALL, self.stream.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return None,
            Err(_) => panic!("no answer within {CALL:?}"),
        }
        let mut body = vec![0u8; i32::from_be_bytes(len) as usize];
        self.stream.read_exact(&mut body).await.ok()?;
        Some(Bytes::from(body))
    }

    async fn recv<R: Request>(&mut self, version: i16, id: i32) -> R::Response {
        let mut frame = self.read_frame().await.expect("an answer, not a closed connection");
        let h = ResponseHeader::decode(&mut frame, R::Response::header_version(version))
            .expect("response header");
        assert_eq!(h.correlation_id, id, "answers come in request order");
        R::Response::decode(&mut frame, version).expect("response body")
    }

    async fn call<R: Request>(&mut self, version: i16, req: &R) -> R::Response {
        let id = self.send(version, req).await;
        self.recv::<R>(version, id).await
    }

    /// Whether an ApiVersions request is answered (not: the connection is closed).
    async fn served(&mut self) -> bool {
        let (id, buf) = self.encode(3, &ApiVersionsRequest::default());
        if self.stream.write_all(&buf).await.is_err() || self.stream.flush().await.is_err() {
            return false;
        }
        match self.read_frame().await {
            Some(mut f) => ResponseHeader::decode(&mut f, 0).expect("header").correlation_id == id,
            None => false,
        }
    }

    /// True once the node has closed the connection (reads EOF or an error).
    async fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(tokio::time::timeout(CALL, self.stream.read(&mut b)).await, Ok(Ok(0)) | Ok(Err(_)))
    }
}

fn metadata_request(topics: &[&str]) -> MetadataRequest {
    let mut r = MetadataRequest::default();
    r.topics = Some(
        topics
            .iter()
            .map(|t| {
                let mut m = MetadataRequestTopic::default();
                m.name = Some(TopicName(StrBytes::from_string(t.to_string())));
                m
            })
            .collect(),
    );
    r
}

fn batch(values: &[&str]) -> Bytes {
    let records: Vec<NewRecord> = values
        .iter()
        .map(|v| NewRecord {
            key: None,
            value: Some(v.as_bytes().to_vec()),
            headers: Vec::new(),
            timestamp_ms: 1_800_000_000_000,
        })
        .collect();
    Bytes::from(encode_batch(&records, None).expect("batch"))
}

fn produce_request(topic: &str, partition: i32, acks: i16, records: Bytes) -> ProduceRequest {
    let mut pd = PartitionProduceData::default();
    pd.index = partition;
    pd.records = Some(records);
    let mut td = TopicProduceData::default();
    td.name = TopicName(StrBytes::from_string(topic.to_string()));
    td.partition_data = vec![pd];
    let mut r = ProduceRequest::default();
    r.acks = acks;
    r.timeout_ms = 10_000;
    r.topic_data = vec![td];
    r
}

/// Produce v9 to one partition: (error code, base offset).
async fn produce(
    c: &mut Conn,
    topic: &str,
    partition: i32,
    acks: i16,
    records: Bytes,
) -> (i16, i64) {
    let resp = c.call(9, &produce_request(topic, partition, acks, records)).await;
    let p = &resp.responses[0].partition_responses[0];
    (p.error_code, p.base_offset)
}

/// Partition `p`'s leader broker in a Metadata answer for `topic`.
fn leader_of(m: &MetadataResponse, topic: &str, p: i32) -> Option<BrokerId> {
    let t = m.topics.iter().find(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == topic))?;
    let part = t.partitions.iter().find(|x| x.partition_index == p)?;
    (part.error_code == 0 && part.leader_id.0 >= 0).then_some(part.leader_id)
}

async fn metadata(e: &Ensemble, node: usize, topics: &[&str]) -> MetadataResponse {
    let mut c = Conn::open(e.kafka[node], &e.certs).await;
    c.call(12, &metadata_request(topics)).await
}

/// Asks `node` for Metadata until `ok` holds.
async fn wait_metadata(
    e: &Ensemble,
    node: usize,
    topics: &[&str],
    what: &str,
    ok: impl Fn(&MetadataResponse) -> bool,
) -> MetadataResponse {
    let start = tokio::time::Instant::now();
    loop {
        let m = metadata(e, node, topics).await;
        if ok(&m) {
            return m;
        }
        assert!(start.elapsed() < PATIENCE, "timed out waiting for {what}: {m:?}\n{}", e.logs());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A frame: its length, then `body`.
fn frame(body: &[u8]) -> Vec<u8> {
    let mut v = (body.len() as i32).to_be_bytes().to_vec();
    v.extend_from_slice(body);
    v
}

/// A version-1 request header by hand (correlation id 7, null client id), for requests
/// kafka-protocol will not encode.
fn header(key: i16, version: i16) -> Vec<u8> {
    let mut v = key.to_be_bytes().to_vec();
    v.extend_from_slice(&version.to_be_bytes());
    v.extend_from_slice(&7i32.to_be_bytes());
    v.extend_from_slice(&(-1i16).to_be_bytes());
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_clients_get_the_answers_they_act_on_and_bad_frames_close_only_their_connection() {
    let mut e = tokio::task::block_in_place(Ensemble::start);
    let all: Vec<usize> = (0..3).collect();

    // ApiVersions lists what is served; a newer version than served is answered at version 0
    // with UNSUPPORTED_VERSION and the same list.
    let mut c = Conn::open(e.kafka[0], &e.certs).await;
    let v: ApiVersionsResponse = c.call(3, &ApiVersionsRequest::default()).await;
    assert_eq!(v.error_code, 0);
    let produce_range =
        v.api_keys.iter().find(|k| k.api_key == ApiKey::Produce as i16).expect("Produce listed");
    assert_eq!((produce_range.min_version, produce_range.max_version), (3, 9));
    c.write_raw(&frame(&header(ApiKey::ApiVersions as i16, 9))).await;
    let v0: ApiVersionsResponse = c.recv::<ApiVersionsRequest>(0, 7).await;
    assert_eq!(v0.error_code, 35, "UNSUPPORTED_VERSION");
    assert_eq!(v0.api_keys.len(), v.api_keys.len());

    // Every live node is a broker once gossip has spread the Kafka addresses.
    let m = wait_metadata(&e, 0, &[], "three brokers", |m| m.brokers.len() == 3).await;
    for n in &e.nodes {
        assert!(m.brokers.iter().any(|b| b.node_id.0 == starling_kafka::broker_id(n.id())));
    }

    let ready = process::wait_for(PATIENCE, || {
        e.nodes
            .iter()
            .all(|n| n.status().is_some_and(|s| s.converged && s.ring.nodes == 3))
            .then_some(())
    });
    assert!(ready.is_some(), "the ring never held the three nodes\n{}", e.logs());

    // CreateTopics: created; again: TOPIC_ALREADY_EXISTS; a bad name: INVALID_TOPIC_EXCEPTION.
    let create = |name: &str, min_insync: Option<&str>| {
        let mut t = CreatableTopic::default();
        t.name = TopicName(StrBytes::from_string(name.to_string()));
        t.num_partitions = 3;
        t.replication_factor = 3;
        if let Some(v) = min_insync {
            let mut cfg = CreatableTopicConfig::default();
            cfg.name = StrBytes::from_static_str("min.insync.replicas");
            cfg.value = Some(StrBytes::from_string(v.to_string()));
            t.configs = vec![cfg];
        }
        let mut r = CreateTopicsRequest::default();
        r.topics = vec![t];
        r.timeout_ms = 10_000;
        r
    };
    // (Retried while the node's view of the ring is still filling up.)
    let start = tokio::time::Instant::now();
    loop {
        let r = c.call(7, &create("orders", Some("3"))).await;
        if r.topics[0].error_code == 0 {
            break;
        }
        assert!(start.elapsed() < PATIENCE, "cannot create: {:?}\n{}", r.topics[0], e.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let r = c.call(7, &create("orders", None)).await;
    assert_eq!(r.topics[0].error_code, 36, "TOPIC_ALREADY_EXISTS");
    let r = c.call(7, &create("bad/name", None)).await;
    assert_eq!(r.topics[0].error_code, 17, "INVALID_TOPIC_EXCEPTION");

    // Metadata: each partition's leader is a listed broker; an unknown topic is
    // UNKNOWN_TOPIC_OR_PARTITION.
    let m = wait_metadata(&e, 1, &["orders", "missing"], "orders' leaders", |m| {
        (0..3).all(|p| leader_of(m, "orders", p).is_some())
    })
    .await;
    let missing = m.topics.iter().find(|t| t.name.as_ref().unwrap().0.as_str() == "missing");
    assert_eq!(missing.expect("answered").error_code, 3);
    let leader = e.by_broker(leader_of(&m, "orders", 0).unwrap());
    let follower = all.iter().copied().find(|i| *i != leader).unwrap();
    let first_epoch = m
        .topics
        .iter()
        .find(|t| t.name.as_ref().unwrap().0.as_str() == "orders")
        .unwrap()
        .partitions
        .iter()
        .find(|p| p.partition_index == 0)
        .unwrap()
        .leader_epoch;

    // Produce: at the leader it is written; at a follower NOT_LEADER_OR_FOLLOWER (nothing
    // written); to an unknown topic UNKNOWN_TOPIC_OR_PARTITION; over 1 MiB MESSAGE_TOO_LARGE.
    let mut at_leader = Conn::open(e.kafka[leader], &e.certs).await;
    let (err, base) = produce(&mut at_leader, "orders", 0, -1, batch(&["a", "b"])).await;
    assert_eq!((err, base), (0, 0));
    let mut at_follower = Conn::open(e.kafka[follower], &e.certs).await;
    let (err, _) = produce(&mut at_follower, "orders", 0, -1, batch(&["x"])).await;
    assert_eq!(err, 6, "NOT_LEADER_OR_FOLLOWER");
    let (err, _) = produce(&mut at_leader, "missing", 0, -1, batch(&["x"])).await;
    assert_eq!(err, 3, "UNKNOWN_TOPIC_OR_PARTITION");
    let big = "z".repeat(1_200_000);
    let (err, _) = produce(&mut at_leader, "orders", 0, -1, batch(&[big.as_str()])).await;
    assert_eq!(err, 10, "MESSAGE_TOO_LARGE");
    // Fetch and ListOffsets read it back at the leader.
    let mut f = FetchRequest::default();
    f.max_wait_ms = 100;
    f.min_bytes = 1;
    f.max_bytes = 1 << 20;
    f.session_epoch = -1;
    let mut fp = FetchPartition::default();
    fp.partition = 0;
    fp.fetch_offset = 0;
    fp.partition_max_bytes = 1 << 20;
    let mut ft = FetchTopic::default();
    ft.topic = TopicName(StrBytes::from_static_str("orders"));
    ft.partitions = vec![fp];
    f.topics = vec![ft];
    let fetched = at_leader.call(12, &f).await;
    let part = &fetched.responses[0].partitions[0];
    assert_eq!(part.error_code, 0);
    assert_eq!(part.high_watermark, 2);
    let records = part.records.clone().expect("records");
    let mut records_buf = records.clone();
    let decoded = kafka_protocol::records::RecordBatchDecoder::decode(&mut records_buf)
        .expect("the stored batch decodes as Kafka's");
    let values: Vec<Bytes> = decoded.records.iter().filter_map(|r| r.value.clone()).collect();
    assert_eq!(values, vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")]);
    let list = |ts: i64| {
        let mut p = ListOffsetsPartition::default();
        p.partition_index = 0;
        p.timestamp = ts;
        let mut t = ListOffsetsTopic::default();
        t.name = TopicName(StrBytes::from_static_str("orders"));
        t.partitions = vec![p];
        let mut r = ListOffsetsRequest::default();
        r.replica_id = BrokerId(-1);
        r.topics = vec![t];
        r
    };
    let earliest = at_leader.call(6, &list(-2)).await;
    let latest = at_leader.call(6, &list(-1)).await;
    assert_eq!(earliest.topics[0].partitions[0].offset, 0);
    assert_eq!(latest.topics[0].partitions[0].offset, 2);

    // An idempotent batch continuing a sequence this partition never saw: UNKNOWN_PRODUCER_ID
    // (the producer starts again at 0); at sequence 0 it is written, then a gap is
    // OUT_OF_ORDER_SEQUENCE_NUMBER.
    let stamped = |seq: i32| {
        let r = NewRecord {
            key: None,
            value: Some(b"i".to_vec()),
            headers: Vec::new(),
            timestamp_ms: 1_800_000_000_000,
        };
        let stamp = ProducerStamp { id: 4242, epoch: 0, base_sequence: seq };
        Bytes::from(encode_batch(&[r], Some(stamp)).expect("batch"))
    };
    let (err, _) = produce(&mut at_leader, "orders", 0, -1, stamped(5)).await;
    assert_eq!(err, 59, "UNKNOWN_PRODUCER_ID");
    let (err, base) = produce(&mut at_leader, "orders", 0, -1, stamped(0)).await;
    assert_eq!((err, base), (0, 2));
    let (err, _) = produce(&mut at_leader, "orders", 0, -1, stamped(7)).await;
    assert_eq!(err, 45, "OUT_OF_ORDER_SEQUENCE_NUMBER");

    // Pipelining: ten requests sent before any answer is read come back in order.
    let mut p = Conn::open(e.kafka[2], &e.certs).await;
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(if i % 2 == 0 {
            p.send(3, &ApiVersionsRequest::default()).await
        } else {
            p.send(12, &metadata_request(&["orders"])).await
        });
    }
    for (i, id) in ids.into_iter().enumerate() {
        if i % 2 == 0 {
            let _ = p.recv::<ApiVersionsRequest>(3, id).await;
        } else {
            let _ = p.recv::<MetadataRequest>(12, id).await;
        }
    }

    // Pipelined produces to one partition are appended in the order they were sent: their base
    // offsets grow with the request order.
    let leader1 = e.by_broker(leader_of(&m, "orders", 1).unwrap());
    let mut at_leader1 = Conn::open(e.kafka[leader1], &e.certs).await;
    let mut sent = Vec::new();
    for i in 0..30 {
        let value = format!("p{i}");
        let req = produce_request("orders", 1, 1, batch(&[value.as_str()]));
        sent.push(at_leader1.send(9, &req).await);
    }
    let mut bases = Vec::new();
    for id in sent {
        let r = at_leader1.recv::<ProduceRequest>(9, id).await;
        let p = &r.responses[0].partition_responses[0];
        assert_eq!(p.error_code, 0);
        bases.push(p.base_offset);
    }
    assert!(bases.windows(2).all(|w| w[1] == w[0] + 1), "appended out of request order: {bases:?}");

    // Hostile frames: each closes its own connection; the node goes on serving.
    let mut truncated = header(ApiKey::Metadata as i16, 4);
    truncated.extend_from_slice(&1000i32.to_be_bytes()); // 1000 topics, none sent
    let mut huge_count = header(ApiKey::Metadata as i16, 4);
    huge_count.extend_from_slice(&i32::MAX.to_be_bytes()); // 2^31 topics claimed
    let hostile: Vec<(&str, Vec<u8>)> = vec![
        ("unknown API key", frame(&header(999, 0))),
        ("Produce v1 (not served)", frame(&header(ApiKey::Produce as i16, 1))),
        ("a truncated Metadata body", frame(&truncated)),
        ("a Metadata request claiming 2^31 topics", frame(&huge_count)),
        ("a 100 MB length", (100i32 << 20).to_be_bytes().to_vec()),
        ("a negative length", (-1i32).to_be_bytes().to_vec()),
        ("a header shorter than a header", frame(&[0, 18])),
    ];
    for (what, bytes) in hostile {
        let mut h = Conn::open(e.kafka[0], &e.certs).await;
        // A good request first: it is answered before the bad one closes the connection.
        let id = h.send(3, &ApiVersionsRequest::default()).await;
        h.write_raw(&bytes).await;
        let ok = h.recv::<ApiVersionsRequest>(3, id).await;
        assert_eq!(ok.error_code, 0, "{what}");
        assert!(h.closed().await, "{what}: the connection should be closed");
        let mut again = Conn::open(e.kafka[0], &e.certs).await;
        let v: ApiVersionsResponse = again.call(3, &ApiVersionsRequest::default()).await;
        assert_eq!(v.error_code, 0, "the node serves after {what}");
    }

    // NOT_ENOUGH_REPLICAS: "orders" needs 3 in-sync replicas for acks=all; with a follower of
    // partition 0 killed, once the leader drops it from the ISR, acks=all is refused and
    // acks=1 still written.
    e.nodes[follower].kill9();
    let start = tokio::time::Instant::now();
    loop {
        let (err, _) = produce(&mut at_leader, "orders", 0, -1, batch(&["n"])).await;
        if err == 19 {
            break;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "acks=all never refused NOT_ENOUGH_REPLICAS (last {err})\n{}",
            e.logs()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let (err, _) = produce(&mut at_leader, "orders", 0, 1, batch(&["one"])).await;
    assert_eq!(err, 0, "acks=1 needs only the leader");
    let seeds = [e.listens[leader]];
    e.nodes[follower].restart(&seeds);

    // Failover: the leader of partition 0 is killed; Metadata names another; a live node that
    // does not lead answers NOT_LEADER_OR_FOLLOWER; the new leader takes writes and still
    // holds the first acknowledged batch at offset 0.
    drop(at_leader);
    e.nodes[leader].kill9();
    let live = all.iter().copied().find(|i| *i != leader).unwrap();
    let m = wait_metadata(&e, live, &["orders"], "a new leader of orders/0", |m| {
        leader_of(m, "orders", 0).is_some_and(|l| e.by_broker(l) != leader)
    })
    .await;
    let new_leader = e.by_broker(leader_of(&m, "orders", 0).unwrap());
    let other = all.iter().copied().find(|i| *i != leader && *i != new_leader).unwrap();
    let mut at_other = Conn::open(e.kafka[other], &e.certs).await;
    let (err, _) = produce(&mut at_other, "orders", 0, 1, batch(&["x"])).await;
    assert_eq!(err, 6, "NOT_LEADER_OR_FOLLOWER from a node that does not lead");
    let mut at_new = Conn::open(e.kafka[new_leader], &e.certs).await;
    let start = tokio::time::Instant::now();
    let after = loop {
        let (err, base) = produce(&mut at_new, "orders", 0, 1, batch(&["after"])).await;
        if err == 0 {
            assert!(base >= 2, "the new leader continues the log (base {base})");
            break base;
        }
        assert!(start.elapsed() < PATIENCE, "the new leader never took a write ({err})");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // OffsetForLeaderEpoch (KIP-320): the first leader's epoch ends where the new leader's first
    // write went; a consumer still at the first epoch is fenced.
    let epoch_end = |current: i32, asked: i32| {
        let mut p = OffsetForLeaderPartition::default();
        p.partition = 0;
        p.current_leader_epoch = current;
        p.leader_epoch = asked;
        let mut t = OffsetForLeaderTopic::default();
        t.topic = TopicName(StrBytes::from_static_str("orders"));
        t.partitions = vec![p];
        let mut r = OffsetForLeaderEpochRequest::default();
        r.replica_id = BrokerId(-1);
        r.topics = vec![t];
        r
    };
    let r = at_new.call(4, &epoch_end(-1, first_epoch)).await;
    let p = &r.topics[0].partitions[0];
    assert_eq!((p.error_code, p.leader_epoch, p.end_offset), (0, first_epoch, after));
    let r = at_new.call(4, &epoch_end(first_epoch, first_epoch)).await;
    assert_eq!(r.topics[0].partitions[0].error_code, 74, "FENCED_LEADER_EPOCH");
    let fetched = at_new.call(12, &f).await;
    let mut first = fetched.responses[0].partitions[0].records.clone().expect("records");
    let decoded = kafka_protocol::records::RecordBatchDecoder::decode(&mut first).expect("batch");
    assert_eq!(decoded.records[0].value, Some(Bytes::from_static(b"a")), "offset 0 survived");
}

/// The listener's limits and counters, on one node started with `--kafka-max-connections 2`
/// and `--kafka-idle-timeout 2s`: a third connection is closed at once and counted; once one
/// closes, a new one is served; connections idle past the timeout are closed and counted; and
/// `/status` and `/metrics` show it all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_limit_and_the_idle_timeout_hold_and_are_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = process::certs(&dir.path().join("certs"), &["node1", "client"]);
    let listen: SocketAddr = format!("127.0.0.1:{}", free_udp()).parse().unwrap();
    let kafka: SocketAddr = format!("127.0.0.1:{}", free_tcp()).parse().unwrap();
    let env: Vec<(String, String)> = [
        ("STARLING_META_VOTERS", listen.to_string()),
        ("STARLING_KAFKA", kafka.to_string()),
        ("STARLING_KAFKA_MAX_CONNECTIONS", "2".to_string()),
        ("STARLING_KAFKA_IDLE_TIMEOUT", "2s".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let bin = Path::new(env!("CARGO_BIN_EXE_starlingd"));
    let node = tokio::task::block_in_place(|| {
        let data = dir.path().join("node1");
        process::Node::start_with_env(
            bin,
            &data,
            &certs.join("node1"),
            &listen.to_string(),
            &[],
            &env,
        )
    });
    let mut a = Conn::open(kafka, &certs).await;
    let mut b = Conn::open(kafka, &certs).await;
    assert!(a.served().await && b.served().await, "two connections are served");
    // A third is closed as it comes: its handshake fails, or its first request finds the
    // connection closed.
    let third = match Conn::try_open(kafka, &certs).await {
        Ok(mut c) => c.served().await,
        Err(_) => false,
    };
    assert!(!third, "a third connection was served with --kafka-max-connections 2");
    // One closes: a new one is served again.
    drop(b);
    let mut again = None;
    for _ in 0..50 {
        if let Ok(mut c) = Conn::try_open(kafka, &certs).await {
            if c.served().await {
                again = Some(c);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut c = again.expect("no connection served after one of the two closed");
    // Idle past 2 s: closed by the node.
    assert!(a.closed().await, "an idle connection stayed open past --kafka-idle-timeout");
    assert!(c.closed().await, "an idle connection stayed open past --kafka-idle-timeout");
    let status = process::wait_for(PATIENCE, || {
        node.status().and_then(|s| s.kafka).filter(|k| k.connections == 0)
    })
    .expect("the node's status never showed its Kafka connections all closed");
    assert_eq!(status.max_connections, 2);
    assert!(status.connections_refused >= 1, "{status:?}");
    assert!(status.connections_timed_out >= 2, "{status:?}");
    assert!(status.connections_accepted >= 3, "{status:?}");
    assert!(status.requests.get("ApiVersions").is_some_and(|n| *n >= 3), "{status:?}");
    assert!(status.tls, "{status:?}");
    let metrics = process::http_get(node.addrs.http, "/metrics").expect("metrics");
    for line in [
        "starling_kafka_connections_refused_total ",
        "starling_kafka_connections_timed_out_total ",
        "starling_kafka_requests_total{api=\"ApiVersions\"} ",
        "starling_kafka_connections 0",
    ] {
        assert!(metrics.contains(line), "no {line:?} in /metrics:\n{metrics}");
    }
}
