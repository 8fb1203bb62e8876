//! The corpus's starting inputs: real encodings made by the code under test (frames, messages,
//! stored records, data-dir files), written by `cargo run -p starling-fuzz-targets --bin
//! fuzz-seeds -- fuzz/corpus`. The fuzzer mutates them from there.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use starling_gossip::message::{Body, Delta, Digest, Header, Rumor, Summary};
use starling_gossip::state::Entry;
use starling_gossip::{Message, NodeId};
use starling_net::cert::{Ca, Role, Validity};
use starling_store_format::datadir::{
    format_addresses, format_node_id, format_reset_key, Addresses,
};
use starling_store_format::record::{data_key, encode_value, hint_key};
use starling_wire::meta;
use starling_wire::status::{
    History, HistoryMember, HistoryView, MemberStatus, RingMemberStatus, RingStatus, Status,
    TlsStatus,
};
use starling_wire::{
    encode, encode_one_way, encode_request, encode_response, Call, Clock, Consistency, Echo,
    ErrorCode, FrameKind, Get, GetStatus, Key, KvResponse, Leave, Page, PeerRequest, Put,
    ReadAnswer, Record, ReplicaHint, ReplicaRead, ReplicaReadMany, ReplicaResponse, ReplicaScan,
    ReplicaVersions, ReplicaWrite, Request, Response, Value, Version, Written, VERSION,
};

use crate::gossip::{cores, op};
use crate::input::{chunk, step};

/// One seed: the target it is for, a file name, its bytes.
pub type Seed = (&'static str, String, Vec<u8>);

/// Every seed of every target.
pub fn all() -> Vec<Seed> {
    let mut out = Vec::new();
    let mut add = |target: &'static str, name: &str, bytes: Vec<u8>| {
        out.push((target, format!("seed-{}", name.replace(' ', "-")), bytes));
    };
    let gossip = gossip_messages();
    let (requests, responses) = (requests(gossip[0].clone()), responses());
    for (i, r) in requests.iter().enumerate() {
        add("wire_message", &format!("request-{i}-{}", r.kind()), named(r));
        let mut frame = Vec::new();
        encode_request(&mut frame, i as u64, r).expect("encode");
        add("frame", &format!("request-{i}-{}", r.kind()), frame);
    }
    for (i, r) in responses.iter().enumerate() {
        add("wire_message", &format!("response-{i}-{}", r.kind()), named(r));
        let mut frame = Vec::new();
        encode_response(&mut frame, i as u64, r).expect("encode");
        add("frame", &format!("response-{i}-{}", r.kind()), frame);
    }
    // A pipelined stream, a one-way gossip frame, and the decoder's error paths.
    let mut stream = Vec::new();
    for (i, r) in requests.iter().enumerate().take(4) {
        encode_request(&mut stream, i as u64, r).expect("encode");
    }
    encode_response(&mut stream, 9, &responses[0]).expect("encode");
    add("frame", "pipelined", stream.clone());
    add("frame", "truncated", stream[..stream.len() - 3].to_vec());
    let mut one_way = Vec::new();
    let gossip_req = Request::Peer(PeerRequest::Gossip(gossip[0].clone()));
    encode_one_way(&mut one_way, 1, &gossip_req).expect("encode");
    add("frame", "one-way-gossip", one_way);
    let header = |len: u32, version: u8, kind: u8| {
        let mut h = len.to_be_bytes().to_vec();
        h.extend_from_slice(&[version, kind]);
        h.extend_from_slice(&7u64.to_be_bytes());
        h
    };
    let mut oversized = header(10 + (1 << 20) + 1, VERSION, FrameKind::OneWay as u8);
    oversized.extend_from_slice(&[0; 32]);
    add("frame", "oversized-one-way", oversized);
    let mut then_next = header(10 + 5, VERSION, FrameKind::Request as u8);
    then_next.extend_from_slice(b"\x81\xa1x\xc0\x00");
    encode(&mut then_next, FrameKind::Request, 2, &Request::Peer(PeerRequest::Clock))
        .expect("encode");
    add("frame", "bad-body-then-frame", then_next);
    add("frame", "bad-version", header(10, 1, 1));
    add("frame", "bad-kind", header(10, VERSION, 9));
    add("frame", "short-length", header(3, VERSION, 1));

    add("status_json", "status", serde_json::to_vec_pretty(&status()).expect("json"));
    add("status_json", "default", serde_json::to_vec(&Status::default()).expect("json"));
    let with_history = Status { history: Some(history()), ..status() };
    add("status_json", "status with history", serde_json::to_vec(&with_history).expect("json"));

    for (i, m) in gossip.iter().enumerate() {
        add("gossip_message", &format!("message-{i}"), m.clone());
    }
    for (i, run) in gossip_runs(&gossip).into_iter().enumerate() {
        add("gossip_core", &format!("run-{i}"), run);
    }

    for (i, s) in stored().into_iter().enumerate() {
        add("stored_record", &format!("record-{i}"), s);
    }

    let addrs = Addresses {
        listen: addr(7000),
        advertise: "[::1]:7000".parse().expect("addr"),
        http: addr(8080),
        pid: 4242,
    };
    add(
        "datadir",
        "node-id",
        format_node_id(NodeId(0x0123_4567_89ab_cdef_0011_2233_4455_6677)).into(),
    );
    add("datadir", "generation", b"1750000000\n".to_vec());
    add("datadir", "reset-key", format_reset_key(&[0x5a; 32]).into());
    add("datadir", "addresses", format_addresses(&addrs));
    for (i, s) in zab_sequences().into_iter().enumerate() {
        add("zab_message", &format!("sequence-{i}"), s);
    }
    let (txns, snapshot) = meta_seeds();
    add("meta_txn", "recipe", txns);
    let file = starling_store_format::snapshot_file::encode(0x1_0000_0009, &snapshot)
        .expect("a snapshot file encodes");
    add("meta_snapshot_file", "tree", file);
    let mut raw = starling_store_format::snapshot_file::MAGIC_RAW.to_vec();
    raw.extend_from_slice(&0x1_0000_0009u64.to_be_bytes());
    raw.extend_from_slice(&(snapshot.len() as u64).to_be_bytes());
    raw.extend_from_slice(blake3::hash(&snapshot).as_bytes());
    raw.extend_from_slice(&snapshot);
    add("meta_snapshot_file", "tree-uncompressed", raw);
    add("meta_snapshot", "tree", snapshot);
    add("meta_journal", "segment", crate::snapshot_file::meta_journal_seed());

    for (target, name, bytes) in crate::mq::seeds()
        .into_iter()
        .chain(crate::mq::message_seeds())
        .chain(crate::mq::group_seeds())
        .chain(crate::repair::seeds())
        .chain(crate::kafka::seeds())
    {
        add(target, &name, bytes);
    }

    for (i, pem) in tls_files().into_iter().enumerate() {
        add("tls_pem", &format!("files-{i}"), pem);
    }
    out
}

/// Certificate directories as `starling cert` writes them: a CA, a node's and a client's
/// certificate and key, and the node certificate's DER as a peer presents it.
fn tls_files() -> Vec<Vec<u8>> {
    let ca = Ca::generate().expect("a CA");
    let validity = Validity::days_from_now(30);
    let mut out = Vec::new();
    for role in [Role::Node, Role::Client] {
        let issued = ca.issue("node-1", &["10.1.2.3".into()], role, validity).expect("issue");
        let der = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).expect("pem");
        let mut files = Vec::new();
        for part in [&ca.cert_pem(), &issued.cert_pem, &issued.key_pem, &ca.key_pem()] {
            chunk(&mut files, part.as_bytes());
        }
        chunk(&mut files, &der);
        out.push(files);
    }
    out
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A message body as frames carry it (named fields).
fn named<T: serde::Serialize>(msg: &T) -> Vec<u8> {
    rmp_serde::to_vec_named(msg).expect("encode")
}

fn record(key: &[u8], ts: u64, value: Option<&[u8]>) -> Record {
    let version = Version { ts: ts << 16, node: NodeId(0xabcd) };
    Record { key: key.to_vec(), version, value: value.map(<[u8]>::to_vec) }
}

/// One request of each kind.
fn requests(gossip: Vec<u8>) -> Vec<Request> {
    let key = |k: &[u8]| Key(k.to_vec());
    vec![
        GetStatus.into_request(),
        Echo(b"ping".to_vec()).into_request(),
        Put {
            key: b"user/1".to_vec(),
            value: Some(b"alice".to_vec()),
            consistency: Consistency::Quorum,
        }
        .into_request(),
        Put { key: b"user/2".to_vec(), value: None, consistency: Consistency::Any }.into_request(),
        Get { key: b"user/1".to_vec(), consistency: Consistency::One }.into_request(),
        Request::Peer(PeerRequest::Gossip(gossip)),
        Leave.into_request(),
        Clock.into_request(),
        ReplicaWrite(vec![record(b"a", 1, Some(b"x")), record(b"b", 2, None)]).into_request(),
        ReplicaRead(b"a".to_vec()).into_request(),
        ReplicaReadMany(vec![key(b"a"), key(b"b")]).into_request(),
        ReplicaVersions(vec![key(b"a")]).into_request(),
        ReplicaScan { start: 5, end: u64::MAX - 5, after: Some(b"cursor".to_vec()), limit: 100 }
            .into_request(),
        ReplicaHint { target: NodeId(0x77), records: vec![record(b"h", 3, Some(b"v"))] }
            .into_request(),
        meta::MetaOpenSession { timeout_ms: 10_000 }.into_request(),
        meta::MetaPing { session: 7 }.into_request(),
        meta::MetaWrite {
            session: 7,
            ops: vec![
                meta::Op::Create {
                    path: "/a".into(),
                    data: b"x".to_vec(),
                    ephemeral: true,
                    sequential: true,
                },
                meta::Op::SetData { path: "/b".into(), data: b"y".to_vec(), version: Some(3) },
                meta::Op::Check { path: "/c".into(), version: None },
                meta::Op::Delete { path: "/d".into(), version: Some(1) },
            ],
            multi: true,
        }
        .into_request(),
        meta::MetaRead { path: "/a".into(), kind: meta::ReadKind::Children, after: meta::Zxid(9) }
            .into_request(),
        meta::MetaSync.into_request(),
        meta::MetaWatch {
            path: "/a".into(),
            kind: meta::WatchKind::Data,
            since: meta::Zxid(5),
            exists: true,
            wait_ms: 4000,
        }
        .into_request(),
        Request::Peer(PeerRequest::Meta(meta::MetaPeerRequest::Zab {
            from: NodeId(3),
            msgs: vec![vec![0x91, 0x01], Vec::new()],
        })),
        meta::MetaPropose(meta::TxnOp::CloseSession { session: 7 }).into_request(),
        meta::MetaLeaderZxid.into_request(),
    ]
    .into_iter()
    .chain(repair_requests())
    .collect()
}

/// One request of each anti-entropy kind.
fn repair_requests() -> Vec<Request> {
    use starling_wire::repair::{
        Descend, Hashes, LeafEntries, RepairRequest, RepairStep, RepairStreamStep, RunRepair,
    };
    let range = starling_wire::repair::TokenRange { start: u64::MAX - 9, end: 77 };
    vec![
        RepairStep(RepairRequest::Roots { segment_bits: 16, ranges: vec![range] }).into_request(),
        RepairStreamStep(RepairRequest::Roots { segment_bits: 16, ranges: vec![range] })
            .into_request(),
        RepairStep(RepairRequest::Children {
            segment_bits: 16,
            items: vec![Descend { range, level: 2, nodes: vec![0, 3] }],
        })
        .into_request(),
        RepairStep(RepairRequest::Entries {
            segment_bits: 16,
            items: vec![LeafEntries { range, leaves: vec![(5, Hashes(vec![1, u64::MAX]))] }],
        })
        .into_request(),
        RepairStep(RepairRequest::Push(vec![record(b"p", 4, Some(b"v"))])).into_request(),
        RepairStep(RepairRequest::Repaired { ranges: vec![range], since_ms: 1_750_000_000_000 })
            .into_request(),
        RunRepair { peer: Some("4a2bec66".into()), range: Some(range) }.into_request(),
        starling_wire::repair::RunCleanup {}.into_request(),
        RepairStep(RepairRequest::StreamPending).into_request(),
        starling_wire::repair::RemoveNode { node: "4a2bec66".into() }.into_request(),
    ]
}

/// One response of each kind.
fn responses() -> Vec<Response> {
    let r = record(b"a", 1, Some(b"x"));
    vec![
        Response::Ok,
        Response::error(ErrorCode::Unavailable, "shutting down"),
        Response::Status(serde_json::to_vec(&status()).expect("json")),
        Response::Echo(b"ping".to_vec()),
        Response::Clock { wall_ms: 1_750_000_000_000 },
        Response::Kv(KvResponse::Written(Written {
            version: r.version,
            acked: 2,
            required: 2,
            superseded: Some(Version { ts: 9 << 16, node: NodeId(3) }),
        })),
        Response::Kv(KvResponse::Value(Value { record: Some(r.clone()), replicas: 3 })),
        Response::Replica(ReplicaResponse::Written(vec![None, Some(r.version)])),
        Response::Replica(ReplicaResponse::Record(ReadAnswer::Found(r.clone()))),
        Response::Replica(ReplicaResponse::Records(vec![
            ReadAnswer::Missing,
            ReadAnswer::TooLarge,
            ReadAnswer::Unreadable("corrupt record".into()),
        ])),
        Response::Replica(ReplicaResponse::Versions(vec![Some(r.version), None])),
        Response::Replica(ReplicaResponse::Page(Page {
            records: vec![r],
            cursor: Some(b"next".to_vec()),
        })),
        meta::MetaRead::respond(Ok(meta::MetaReadAnswer {
            stat: Some(meta::Stat::default()),
            data: b"x".to_vec(),
            children: vec!["c".into()],
            zxid: meta::Zxid(4),
        })),
        meta::MetaWrite::respond(Err(meta::MetaError::BadVersion {
            path: "/a".into(),
            expected: 1,
            actual: 2,
        })),
        meta::MetaWatch::respond(Ok(meta::MetaWatched {
            event: Some(meta::WatchedEvent::NodeDeleted),
            zxid: meta::Zxid(8),
        })),
    ]
    .into_iter()
    .chain(repair_responses())
    .collect()
}

/// One answer of each anti-entropy kind.
fn repair_responses() -> Vec<Response> {
    use starling_wire::repair::{
        EntriesAnswer, Hashes, LeafEntries, RepairResponse, RepairStep, RepairSummary, RunRepair,
    };
    let range = starling_wire::repair::TokenRange { start: 3, end: 9 };
    vec![
        RepairStep::respond(RepairResponse::Roots(Hashes(vec![7, 8]))),
        RepairStep::respond(RepairResponse::Children(vec![vec![Hashes(vec![1; 16])]])),
        RepairStep::respond(RepairResponse::Entries(EntriesAnswer {
            records: vec![record(b"e", 5, None)],
            want: vec![LeafEntries { range, leaves: vec![(2, Hashes(vec![9]))] }],
            unfinished: vec![(range, 4)],
        })),
        RepairStep::respond(RepairResponse::Refused("segment grain differs".into())),
        RepairStep::respond(RepairResponse::Done),
        RunRepair::respond(RepairSummary {
            ranges: 48,
            failed: vec![("4a2bec66".into(), "down".into())],
            ..RepairSummary::default()
        }),
        starling_wire::repair::RunCleanup::respond(starling_wire::repair::CleanupSummary {
            ranges: 16,
            records: 1234,
        }),
        RepairStep::respond(RepairResponse::Streamed(4321)),
        starling_wire::repair::RemoveNode::respond(starling_wire::repair::RemoveSummary {
            node: "4a2bec66".into(),
            streamed: vec![("77aa0b1c".into(), 300)],
            duration_ms: 5210,
        }),
    ]
}

/// A status document with every part filled in.
fn status() -> Status {
    let member = |id: u128, port, is_self| MemberStatus {
        node_id: NodeId(id).to_string(),
        addr: addr(port).to_string(),
        state: "alive".into(),
        phi: 0.75,
        incarnation: 2,
        generation: 1_750_000_000,
        zone: Some("zone-a".into()),
        digest: Some("0f0f".into()),
        kafka: None,
        is_self,
    };
    Status {
        node_id: NodeId(1).to_string(),
        generation: 1_750_000_000,
        addr: addr(7001).to_string(),
        converged: true,
        gossip_converged: true,
        digest: "0f0f".into(),
        tls: Some(TlsStatus::default()),
        version: "0.1.0".into(),
        uptime_secs: 12.5,
        members: vec![member(1, 7001, true), member(2, 7002, false)],
        ring: RingStatus {
            digest: Some("abcd".into()),
            agreed: true,
            tokens: 16,
            nodes: 2,
            replication: 3,
            ownership: 0.5,
            members: vec![RingMemberStatus {
                node_id: NodeId(2).to_string(),
                status: "normal".into(),
                tokens: 8,
                owned_fraction: 0.5,
                replicated_fraction: 1.0,
                ..RingMemberStatus::default()
            }],
            arc_bins: 4,
            arcs: vec![vec![(0, 1), (2, 3)]],
            ..RingStatus::default()
        },
        kv: Some(starling_wire::status::KvStatus {
            storage_failure: Some("WAL fsync: No space left on device".into()),
            recovering: Some("the store did not stop cleanly".into()),
            recovered_records: 19,
            ..Default::default()
        }),
        transport: Some(Default::default()),
        ..Status::default()
    }
}

/// The last seconds of a node, as the `Status` RPC carries them: three samples, two members,
/// one of which changed its view.
fn history() -> History {
    let view = |state: &str, digest: &str| HistoryView {
        state: state.into(),
        digest: Some(digest.into()),
        ring: Some("abcd".into()),
    };
    History {
        interval_ms: 1_000,
        capacity: 600,
        t: vec![1_750_000_000_000, 1_750_000_001_000, 1_750_000_002_000],
        reads: vec![None, Some(120.5), Some(98.0)],
        writes: vec![None, Some(40.0), Some(0.0)],
        failures: vec![None, Some(0.0), Some(1.5)],
        read_p99_ms: vec![None, Some(1.25), None],
        write_p99_ms: vec![None, Some(3.5), None],
        converged: vec![false, true, true],
        views: vec![view("suspect", "0e0e"), view("alive", "0f0f")],
        members: vec![
            HistoryMember {
                node_id: NodeId(1).to_string(),
                addr: addr(7001).to_string(),
                runs: vec![(1_750_000_000_000, 1_750_000_002_000, 1)],
            },
            HistoryMember {
                node_id: NodeId(2).to_string(),
                addr: addr(7002).to_string(),
                runs: vec![
                    (1_750_000_000_000, 1_750_000_000_000, 0),
                    (1_750_000_001_000, 1_750_000_002_000, 1),
                ],
            },
        ],
    }
}

/// Gossip messages: what two cores send each other in a short run, and one of each body and
/// rumour made by hand.
fn gossip_messages() -> Vec<Vec<u8>> {
    let t0 = Instant::now();
    let (mut a, mut b) = cores(t0);
    let mut out: Vec<Vec<u8>> = Vec::new();
    let mut now = t0;
    for _ in 0..12 {
        a.handle_timeout(now);
        b.handle_timeout(now);
        for _ in 0..4 {
            while let Some(t) = b.poll_transmit() {
                let _ = a.handle_message(now, &t.payload);
                out.push(t.payload);
            }
            while let Some(t) = a.poll_transmit() {
                let _ = b.handle_message(now, &t.payload);
            }
        }
        now += Duration::from_millis(150);
    }
    out.sort();
    out.dedup();
    out.truncate(8);
    let from = Header { id: NodeId(0xb), generation: 1, incarnation: 3, addr: addr(7002) };
    let c = NodeId(0xc);
    let rumors = vec![
        Rumor::Alive { id: c, generation: 2, incarnation: 1, addr: addr(7003) },
        Rumor::Suspect { id: c, generation: 2, incarnation: 1, from: NodeId(0xb) },
        Rumor::Down { id: c, generation: 2, incarnation: 2, from: NodeId(0xb) },
        Rumor::Left { id: c, generation: 2, incarnation: 3 },
    ];
    let delta = Delta {
        id: c,
        generation: 2,
        addr: addr(7003),
        from_version: 0,
        entries: vec![
            ("status".into(), Entry { value: "normal".into(), version: 1 }),
            ("tokens".into(), Entry { value: "10,ff00,ffffffffffffffff".into(), version: 2 }),
        ],
    };
    let digest = Digest { id: c, generation: 2, max_version: 2 };
    let bodies = vec![
        Body::Syn { summary: Summary::Buckets(vec![0; 64]), recent: vec![delta.clone()] },
        Body::Syn {
            summary: Summary::Digests { mask: 1 << 12, digests: vec![digest] },
            recent: vec![],
        },
        Body::Ack { deltas: vec![delta.clone()], requests: vec![digest], truncated: true },
        Body::Ack2 { deltas: vec![delta] },
        Body::Ping { seq: 1, target: NodeId(0xa) },
        Body::PingAck { seq: 1, target: NodeId(0xa) },
        Body::PingReq { seq: 2, target: c, target_addr: addr(7003) },
        Body::Nack { seq: 2, target: c },
        Body::Rumors,
    ];
    for (i, body) in bodies.into_iter().enumerate() {
        let rumors = if i == 8 { rumors.clone() } else { vec![rumors[i % 4].clone()] };
        out.push(Message { from: from.clone(), rumors, body }.encode());
    }
    // B suspects A, the node the fuzzer's messages go to: A refutes it.
    let suspect_a =
        Rumor::Suspect { id: NodeId(0xa), generation: 1, incarnation: 0, from: from.id };
    out.push(Message { from, rumors: vec![suspect_a], body: Body::Rumors }.encode());
    out
}

/// Runs of [`crate::gossip_core`]: a quiet cluster, then each message delivered to a running
/// node, then a node publishing tokens and leaving.
fn gossip_runs(messages: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let tick = |out: &mut Vec<u8>, ms: u16| step(out, op::TICK, &ms.to_be_bytes());
    let mut runs = Vec::new();
    let mut quiet = Vec::new();
    for _ in 0..6 {
        tick(&mut quiet, 200);
        step(&mut quiet, op::EXCHANGE, &[]);
    }
    runs.push(quiet.clone());
    for m in messages {
        let mut run = quiet.clone();
        step(&mut run, op::MESSAGE, m);
        tick(&mut run, 500);
        step(&mut run, op::EXCHANGE, &[]);
        runs.push(run);
    }
    let mut tokens = quiet;
    step(&mut tokens, op::SET, b"tokens\x0010,8000000000000000,ffffffffffffff00");
    step(&mut tokens, op::EXCHANGE, &[]);
    tick(&mut tokens, 3000);
    step(&mut tokens, op::LEAVE_OR_MOVE, &[127, 0, 0, 1, 0x1b, 0x5b]);
    step(&mut tokens, op::EXCHANGE, &[]);
    step(&mut tokens, op::LEAVE_OR_MOVE, &[]);
    step(&mut tokens, op::EXCHANGE, &[]);
    runs.push(tokens);
    runs
}

/// Storage keys with stored values: a data key, current and old hint keys, corrupt values.
fn stored() -> Vec<Vec<u8>> {
    let v = |ts: u64, value: Option<&[u8]>| {
        encode_value(Version { ts: ts << 16, node: NodeId(9) }, value)
    };
    let mut old_hint = NodeId(5).to_be_bytes().to_vec();
    old_hint.extend_from_slice(&(7u64 << 16).to_be_bytes());
    old_hint.extend_from_slice(&data_key(b"key"));
    let cases: Vec<(Vec<u8>, Vec<Vec<u8>>)> = vec![
        (data_key(b"user/1"), vec![v(1, Some(b"alice")), v(3, None), v(2, Some(b"bob"))]),
        (hint_key(NodeId(5), b"key"), vec![v(2, Some(b"value")), v(2, None), vec![0xff; 3]]),
        (old_hint, vec![v(7, Some(b"old"))]),
        (data_key(b""), vec![v(0, Some(b"")), v(u64::MAX >> 16, None)]),
    ];
    cases
        .into_iter()
        .map(|(k, values)| {
            let mut out = Vec::new();
            chunk(&mut out, &k);
            for value in values {
                chunk(&mut out, &value);
            }
            out
        })
        .collect()
}

/// Message sequences a follower of a 3-voter ensemble receives: votes, then a leader's
/// discovery, synchronization and broadcast.
fn zab_sequences() -> Vec<Vec<u8>> {
    use std::sync::Arc;

    use starling_zab::message::{EpochSpan, PeerState};
    use starling_zab::{Entry, Msg, ToLeader, ToLearner, Vote, Zxid};

    let vote = |leader: u128, state| {
        Msg::Vote(Vote { leader: NodeId(leader), zxid: Zxid::ZERO, epoch: 0, round: 1, state })
    };
    let learner = |seq, body| Msg::ToLearner { session: 0, seq, body };
    let entry = |c| Entry { zxid: Zxid::new(1, c), txn: Arc::new(vec![c as u8; 4]) };
    let follow = vec![
        vote(2, PeerState::Looking),
        vote(3, PeerState::Looking),
        vote(2, PeerState::Leading),
        learner(0, ToLearner::NewEpoch(1)),
        learner(1, ToLearner::Diff(vec![entry(1), entry(2)])),
        learner(2, ToLearner::NewLeader { epoch: 1 }),
        learner(3, ToLearner::UpToDate { committed: Zxid::new(1, 2) }),
        learner(4, ToLearner::Proposal(entry(3))),
        learner(5, ToLearner::Commit(Zxid::new(1, 3))),
        learner(6, ToLearner::Snap { zxid: Zxid::new(1, 3), data: vec![1, 2, 3] }),
        learner(7, ToLearner::Trunc(Zxid::new(1, 1))),
        learner(8, ToLearner::Ping),
        learner(
            9,
            ToLearner::SnapChunk {
                zxid: Zxid::new(1, 3),
                total: 5,
                offset: 2,
                data: vec![3, 4, 5],
            },
        ),
    ];
    let lead = vec![
        vote(1, PeerState::Looking),
        Msg::Connect { session: 7, accepted_epoch: 0, accepted_leader: NodeId(0) },
        Msg::ToLeader {
            session: 7,
            seq: 0,
            body: ToLeader::AckEpoch {
                current_epoch: 0,
                last: Zxid::ZERO,
                spans: vec![EpochSpan { epoch: 1, first: 1, last: 2 }],
                snapshot: Zxid::ZERO,
            },
        },
        Msg::ToLeader { session: 7, seq: 1, body: ToLeader::AckNewLeader { epoch: 1 } },
        Msg::ToLeader { session: 7, seq: 2, body: ToLeader::Ack(Zxid::new(1, 1)) },
    ];
    [follow, lead]
        .into_iter()
        .map(|msgs| {
            let mut out = Vec::new();
            for m in msgs {
                chunk(&mut out, &m.encode());
            }
            out
        })
        .collect()
}

/// A sequence of metadata transactions (sessions, creates of every kind, a multi, a close) and
/// the snapshot of the tree they make.
fn meta_seeds() -> (Vec<u8>, Vec<u8>) {
    use starling_meta::{Op, Tree, Txn, TxnOp};
    use starling_zab::{StateMachine, Zxid};

    let create = |path: &str, ephemeral, sequential| Op::Create {
        path: path.into(),
        data: b"data".to_vec(),
        ephemeral,
        sequential,
    };
    let ops = |ops: Vec<Op>, multi| TxnOp::Ops { session: 5, ops, multi, internal: false };
    let txns = vec![
        TxnOp::CreateSession { session: 5, timeout_ms: 3000 },
        ops(vec![create("/lock", false, false)], false),
        ops(vec![create("/lock/n-", true, true)], false),
        ops(
            vec![
                Op::Check { path: "/lock".into(), version: Some(0) },
                Op::SetData { path: "/lock".into(), data: b"x".to_vec(), version: Some(0) },
                create("/q", false, false),
            ],
            true,
        ),
        ops(vec![Op::Delete { path: "/q".into(), version: None }], false),
        TxnOp::CloseSession { session: 5 },
    ];
    let mut out = Vec::new();
    let mut tree = Tree::new();
    for (i, op) in txns.into_iter().enumerate() {
        let t = Txn { time_ms: 1_750_000_000_000, op }.encode();
        chunk(&mut out, &t);
        tree.apply(Zxid::new(1, i as u32 + 1), &t);
    }
    (out, tree.snapshot())
}
