//! Round trips and refusals of the key-value messages: every KV request and response through
//! the frame codec, damaged KV frames, consistency level names and the key/value limits.

use proptest::prelude::*;
use starling_wire::*;

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> + Clone {
    proptest::collection::vec(any::<u8>(), 0..max)
}

/// Timestamps and node ids with their edge values (0, 1, MAX) well represented.
fn arb_version() -> impl Strategy<Value = Version> {
    let ts = prop_oneof![Just(0u64), Just(1), Just(u64::MAX), Just(u64::MAX - 1), any::<u64>()];
    let node =
        prop_oneof![Just(0u128), Just(1), Just(u128::MAX), Just(u128::MAX - 1), any::<u128>()];
    (ts, node).prop_map(|(ts, node)| Version { ts, node: NodeId(node) })
}

fn arb_record() -> impl Strategy<Value = Record> {
    (bytes(64), arb_version(), proptest::option::of(bytes(256)))
        .prop_map(|(key, version, value)| Record { key, version, value })
}

fn arb_consistency() -> impl Strategy<Value = Consistency> {
    prop_oneof![
        Just(Consistency::One),
        Just(Consistency::Quorum),
        Just(Consistency::All),
        Just(Consistency::Any),
    ]
}

fn arb_kv_request() -> impl Strategy<Value = Request> {
    prop_oneof![
        (bytes(64), proptest::option::of(bytes(256)), arb_consistency())
            .prop_map(|(key, value, consistency)| Put { key, value, consistency }.into_request()),
        (bytes(64), arb_consistency())
            .prop_map(|(key, consistency)| Get { key, consistency }.into_request()),
        proptest::collection::vec(arb_record(), 0..8).prop_map(|x| ReplicaWrite(x).into_request()),
        bytes(64).prop_map(|x| ReplicaRead(x).into_request()),
        proptest::collection::vec(bytes(64).prop_map(Key), 0..8)
            .prop_map(|x| ReplicaReadMany(x).into_request()),
        proptest::collection::vec(bytes(64).prop_map(Key), 0..8)
            .prop_map(|x| ReplicaVersions(x).into_request()),
        (any::<u128>(), proptest::collection::vec(arb_record(), 0..8)).prop_map(
            |(target, records)| ReplicaHint { target: NodeId(target), records }.into_request()
        ),
        (any::<u64>(), any::<u64>(), proptest::option::of(bytes(64)), any::<u32>())
            .prop_map(|(start, end, after, limit)| ReplicaScan { start, end, after, limit }
                .into_request()),
    ]
}

fn arb_read_answer() -> impl Strategy<Value = ReadAnswer> {
    prop_oneof![
        arb_record().prop_map(ReadAnswer::Found),
        Just(ReadAnswer::Missing),
        Just(ReadAnswer::TooLarge),
        ".{0,40}".prop_map(ReadAnswer::Unreadable),
    ]
}

fn arb_kv_response() -> impl Strategy<Value = Response> {
    prop_oneof![
        (arb_version(), any::<u32>(), any::<u32>(), proptest::option::of(arb_version())).prop_map(
            |(version, acked, required, superseded)| Response::Kv(KvResponse::Written(Written {
                version,
                acked,
                required,
                superseded
            }))
        ),
        proptest::collection::vec(proptest::option::of(arb_version()), 0..8)
            .prop_map(|x| Response::Replica(ReplicaResponse::Written(x))),
        // Tombstones come from arb_record's `value: None`.
        (proptest::option::of(arb_record()), any::<u32>()).prop_map(|(record, replicas)| {
            Response::Kv(KvResponse::Value(Value { record, replicas }))
        }),
        arb_read_answer().prop_map(|x| Response::Replica(ReplicaResponse::Record(x))),
        proptest::collection::vec(arb_read_answer(), 0..8)
            .prop_map(|x| Response::Replica(ReplicaResponse::Records(x))),
        proptest::collection::vec(proptest::option::of(arb_version()), 0..8)
            .prop_map(|x| Response::Replica(ReplicaResponse::Versions(x))),
        (proptest::collection::vec(arb_record(), 0..8), proptest::option::of(bytes(64))).prop_map(
            |(records, cursor)| Response::Replica(ReplicaResponse::Page(Page { records, cursor }))
        ),
        ".{0,64}".prop_map(|message| Response::Error { code: ErrorCode::Timeout, message }),
    ]
}

/// A KV request or response, encoded as one frame.
#[derive(Debug, Clone)]
enum Msg {
    Req(Request),
    Resp(Response),
}

fn arb_msg() -> impl Strategy<Value = Msg> {
    prop_oneof![arb_kv_request().prop_map(Msg::Req), arb_kv_response().prop_map(Msg::Resp)]
}

fn encode_msg(out: &mut Vec<u8>, id: u64, m: &Msg) {
    match m {
        Msg::Req(r) => encode_request(out, id, r).expect("encode request"),
        Msg::Resp(r) => encode_response(out, id, r).expect("encode response"),
    }
}

/// Decodes every frame of `bytes` fed `chunk` bytes at a time; the stream must end clean.
fn decode_all(bytes: &[u8], chunk: usize) -> Vec<Frame> {
    let mut dec = FrameDecoder::new();
    let mut frames = Vec::new();
    for piece in bytes.chunks(chunk.max(1)) {
        dec.feed(piece);
        while let Some(f) = dec.decode().expect("valid frames decode") {
            frames.push(f);
        }
    }
    dec.finish().expect("nothing left over");
    frames
}

/// Drives a decoder over `bytes` the way a server does; must never panic.
fn decode_whatever(bytes: &[u8]) {
    let mut dec = FrameDecoder::new();
    dec.feed(bytes);
    for _ in 0..64 {
        match dec.decode() {
            Ok(Some(f)) => {
                let _ = f.request();
                let _ = f.response();
            }
            Ok(None) => break,
            Err(e) if e.is_fatal() => break,
            Err(_) => {}
        }
    }
    let _ = dec.finish();
}

fn raw_frame(kind: FrameKind, id: u64, body: &[u8]) -> Vec<u8> {
    let mut v = ((body.len() + HEADER_LEN - 4) as u32).to_be_bytes().to_vec();
    v.push(VERSION);
    v.push(kind as u8);
    v.extend_from_slice(&id.to_be_bytes());
    v.extend_from_slice(body);
    v
}

proptest! {
    #[test]
    fn kv_requests_round_trip(
        reqs in proptest::collection::vec((any::<u64>(), arb_kv_request()), 1..12),
        chunk in 1usize..200,
    ) {
        let mut out = Vec::new();
        for (id, r) in &reqs {
            encode_request(&mut out, *id, r).unwrap();
        }
        let frames = decode_all(&out, chunk);
        prop_assert_eq!(frames.len(), reqs.len());
        for (f, (id, r)) in frames.iter().zip(&reqs) {
            prop_assert_eq!(f.kind, FrameKind::Request);
            prop_assert_eq!(f.id, *id);
            prop_assert_eq!(&f.request().unwrap(), r);
        }
    }

    #[test]
    fn kv_responses_round_trip(
        resps in proptest::collection::vec((any::<u64>(), arb_kv_response()), 1..12),
        chunk in 1usize..200,
    ) {
        let mut out = Vec::new();
        for (id, r) in &resps {
            encode_response(&mut out, *id, r).unwrap();
        }
        let frames = decode_all(&out, chunk);
        prop_assert_eq!(frames.len(), resps.len());
        for (f, (id, r)) in frames.iter().zip(&resps) {
            prop_assert_eq!(f.kind, FrameKind::Response);
            prop_assert_eq!(f.id, *id);
            prop_assert_eq!(&f.response().unwrap(), r);
        }
    }

    /// Flipping bits anywhere in a stream of KV frames (header or body) gives frames or errors,
    /// never a panic.
    #[test]
    fn bit_flipped_kv_frames_never_panic(
        msgs in proptest::collection::vec(arb_msg(), 1..4),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), 0u8..8), 1..6),
    ) {
        let mut out = Vec::new();
        for (id, m) in msgs.iter().enumerate() {
            encode_msg(&mut out, id as u64, m);
        }
        for (at, bit) in &flips {
            let i = at.index(out.len());
            out[i] ^= 1 << bit;
        }
        decode_whatever(&out);
    }

    /// Bit flips confined to the body keep the frame boundary: the frame decodes and its body
    /// is a message or a non-fatal decode error naming the frame's id.
    #[test]
    fn bit_flipped_kv_bodies_are_decode_errors_or_messages(
        m in arb_msg(),
        id in any::<u64>(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), 0u8..8), 1..6),
    ) {
        let mut out = Vec::new();
        encode_msg(&mut out, id, &m);
        let body_len = out.len() - HEADER_LEN;
        for (at, bit) in &flips {
            out[HEADER_LEN + at.index(body_len)] ^= 1 << bit;
        }
        let mut dec = FrameDecoder::new();
        dec.feed(&out);
        let f = dec.decode().unwrap().expect("one whole frame");
        prop_assert_eq!(f.id, id);
        let err = match m {
            Msg::Req(_) => f.request().err(),
            Msg::Resp(_) => f.response().err(),
        };
        if let Some(e) = err {
            let named = matches!(e, FrameError::Decode { id: i, .. } if i == id);
            prop_assert!(named, "{}", e);
            prop_assert!(!e.is_fatal());
        }
        prop_assert_eq!(dec.decode().unwrap(), None);
        dec.finish().unwrap();
    }

    /// A KV frame cut anywhere waits for more bytes, and the end of the stream reports it
    /// truncated.
    #[test]
    fn truncated_kv_frames_wait_then_report_truncation(m in arb_msg(), at in any::<prop::sample::Index>()) {
        let mut out = Vec::new();
        encode_msg(&mut out, 7, &m);
        let cut = 1 + at.index(out.len() - 1);
        let mut dec = FrameDecoder::new();
        dec.feed(&out[..cut]);
        prop_assert_eq!(dec.decode().unwrap(), None);
        let err = dec.finish().unwrap_err();
        let ok = matches!(err, FrameError::Truncated { buffered, .. } if buffered == cut);
        prop_assert!(ok, "{}", err);
        // The rest arrives: the frame is whole again.
        dec.feed(&out[cut..]);
        let f = dec.decode().unwrap().expect("whole frame");
        match &m {
            Msg::Req(r) => prop_assert_eq!(&f.request().unwrap(), r),
            Msg::Resp(r) => prop_assert_eq!(&f.response().unwrap(), r),
        }
    }

    /// A well-framed body that is a strict prefix of a KV message is a decode error.
    #[test]
    fn truncated_kv_bodies_are_decode_errors(m in arb_msg(), at in any::<prop::sample::Index>()) {
        let mut out = Vec::new();
        encode_msg(&mut out, 3, &m);
        let body = &out[HEADER_LEN..];
        let keep = at.index(body.len());
        let (kind, decoded) = match m {
            Msg::Req(_) => {
                let frame = raw_frame(FrameKind::Request, 3, &body[..keep]);
                let mut dec = FrameDecoder::new();
                dec.feed(&frame);
                let f = dec.decode().unwrap().expect("frame");
                (FrameKind::Request, f.request().map(|_| ()))
            }
            Msg::Resp(_) => {
                let frame = raw_frame(FrameKind::Response, 3, &body[..keep]);
                let mut dec = FrameDecoder::new();
                dec.feed(&frame);
                let f = dec.decode().unwrap().expect("frame");
                (FrameKind::Response, f.response().map(|_| ()))
            }
        };
        let err = decoded.expect_err("a strict prefix is not a message");
        let ok = matches!(err, FrameError::Decode { id: 3, kind: k, .. } if k == kind);
        prop_assert!(ok, "{}", err);
        prop_assert!(!err.is_fatal());
    }

    /// Any string either names a level (in any case) or is refused with the list of levels.
    #[test]
    fn consistency_parses_only_level_names(s in "[a-zA-Z]{0,8}") {
        match s.parse::<Consistency>() {
            Ok(level) => prop_assert_eq!(level.as_str(), s.to_ascii_lowercase()),
            Err(e) => {
                prop_assert!(e.contains("one, quorum, all, any"), "{}", e);
                prop_assert!(e.contains(&format!("{s:?}")), "{}", e);
            }
        }
    }
}

#[test]
fn extreme_versions_round_trip() {
    let extremes = [
        Version { ts: u64::MAX, node: NodeId(u128::MAX) },
        Version { ts: 0, node: NodeId(0) },
        Version { ts: u64::MAX, node: NodeId(0) },
        Version { ts: 0, node: NodeId(u128::MAX) },
        Version { ts: 1 << 63, node: NodeId(1 << 127) },
    ];
    for version in extremes {
        let rec = Record { key: b"k".to_vec(), version, value: None };
        let msgs = [
            Msg::Req(ReplicaWrite(vec![rec.clone()]).into_request()),
            Msg::Resp(Response::Kv(KvResponse::Written(Written {
                version,
                acked: u32::MAX,
                required: 0,
                superseded: Some(version),
            }))),
            Msg::Resp(Response::Kv(KvResponse::Value(Value {
                record: Some(rec.clone()),
                replicas: 3,
            }))),
            Msg::Resp(Response::Replica(ReplicaResponse::Records(vec![
                ReadAnswer::Found(rec.clone()),
                ReadAnswer::Missing,
                ReadAnswer::TooLarge,
            ]))),
        ];
        for m in msgs {
            let mut out = Vec::new();
            encode_msg(&mut out, u64::MAX, &m);
            let f = decode_all(&out, out.len()).pop().expect("frame");
            assert_eq!(f.id, u64::MAX);
            match m {
                Msg::Req(r) => assert_eq!(f.request().unwrap(), r),
                Msg::Resp(r) => assert_eq!(f.response().unwrap(), r),
            }
        }
    }
}

#[test]
fn largest_allowed_put_and_batch_fit_in_one_frame() {
    let key = vec![0xAB; MAX_KEY_BYTES];
    let value = vec![0xCD; MAX_VALUE_BYTES];
    check_key_value(&key, Some(&value)).unwrap();
    let put = Put { key: key.clone(), value: Some(value.clone()), consistency: Consistency::All }
        .into_request();
    let mut out = Vec::new();
    encode_request(&mut out, 1, &put).unwrap();
    assert_eq!(decode_all(&out, 64 * 1024)[0].request().unwrap(), put);

    // A replica batch of MAX_BATCH_BYTES of records fits in a request and in a response.
    let version = Version { ts: u64::MAX, node: NodeId(u128::MAX) };
    let rec = Record { key, version, value: Some(value) };
    let n = MAX_BATCH_BYTES / (MAX_KEY_BYTES + MAX_VALUE_BYTES);
    let records = vec![rec.clone(); n];
    let mut out = Vec::new();
    encode_request(&mut out, 2, &ReplicaWrite(records.clone()).into_request()).unwrap();
    encode_response(
        &mut out,
        2,
        &Response::Replica(ReplicaResponse::Page(Page { records, cursor: Some(rec.key) })),
    )
    .unwrap();
    assert_eq!(decode_all(&out, 1 << 20).len(), 2);
}

#[test]
fn consistency_names_round_trip() {
    for level in [Consistency::One, Consistency::Quorum, Consistency::All, Consistency::Any] {
        let name = level.to_string();
        assert_eq!(name, level.as_str());
        assert_eq!(name.parse::<Consistency>(), Ok(level));
        assert_eq!(name.to_uppercase().parse::<Consistency>(), Ok(level));
    }
    assert_eq!(
        ["one", "quorum", "all", "any"].map(|s| s.parse::<Consistency>().unwrap().to_string()),
        ["one", "quorum", "all", "any"]
    );
}

#[test]
fn unknown_consistency_levels_are_refused_with_the_list() {
    for bad in ["", "two", "quorom", "local_quorum", "each_quorum", " one", "one ", "ALL!"] {
        let err = bad.parse::<Consistency>().expect_err(bad);
        assert!(err.contains(&format!("{bad:?}")), "names the input: {err}");
        for level in ["one", "quorum", "all", "any"] {
            assert!(err.contains(level), "lists {level}: {err}");
        }
    }
}

#[test]
fn key_limits() {
    let err = check_key_value(b"", Some(b"v")).unwrap_err();
    assert!(err.contains("empty"), "{err}");
    // A delete checks the key too.
    let err = check_key_value(b"", None).unwrap_err();
    assert!(err.contains("empty"), "{err}");

    check_key_value(b"k", Some(b"v")).unwrap();
    check_key_value(&[0; MAX_KEY_BYTES], Some(b"v")).unwrap();
    check_key_value(&[0; MAX_KEY_BYTES], None).unwrap();
    assert_eq!(MAX_KEY_BYTES, 1024);
    let err = check_key_value(&[0; MAX_KEY_BYTES + 1], Some(b"v")).unwrap_err();
    assert!(err.contains("1025 bytes") && err.contains("limit is 1024 bytes"), "{err}");
    let err = check_key_value(&[0; MAX_KEY_BYTES + 1], None).unwrap_err();
    assert!(err.contains("limit is 1024 bytes"), "{err}");
}

#[test]
fn value_limits() {
    assert_eq!(MAX_VALUE_BYTES, 1 << 20);
    check_key_value(b"k", Some(&[])).unwrap();
    check_key_value(b"k", Some(&vec![0; MAX_VALUE_BYTES])).unwrap();
    let err = check_key_value(b"k", Some(&vec![0; MAX_VALUE_BYTES + 1])).unwrap_err();
    assert!(err.contains("1048577 bytes"), "{err}");
    assert!(err.contains("limit is 1048576 bytes") && err.contains("1 MiB"), "{err}");
    // The key is checked first.
    let err = check_key_value(b"", Some(&vec![0; MAX_VALUE_BYTES + 1])).unwrap_err();
    assert!(err.contains("empty"), "{err}");
}
