//! The topic log's decoders: record batches (from producers and followers), a partition's
//! files on disk (segments, indexes, the leader-epoch checkpoint).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use starling_mq::batch::{decode_records, encode_batch, BatchError, BatchView, Batches, NewRecord};
use starling_mq::epoch::EpochCache;
use starling_mq::fence::{
    Claimant, Committed, FenceError, GroupRecord, Job, MemRecords, OffsetKey, Outcome, Written,
};
use starling_mq::index::{decode_offset_index, decode_time_index};
use starling_mq::log::EPOCH_CHECKPOINT;
use starling_mq::mem::{MemLog, ReplicaLog};
use starling_mq::replica::{
    Acks, FetchAnswer, Msg, NodeId, PartitionState, Replica, ReplicaConfig,
};
use starling_mq::{Log, LogConfig};
use std::time::{Duration, Instant};

use crate::input::{chunk, chunks};

/// Fuzz target `mq_batch`: `data` is a record batch a producer sent.
///
/// The header's length and CRC are set to match the bytes first (so the fuzzer reaches what a
/// valid-CRC batch from a broken or hostile producer holds), then: the header view never panics
/// and its fields agree with the bytes; decoding the records (what a consumer does) never panics.
/// The same bytes untouched go through the batch iterator too.
pub fn mq_batch(data: &[u8]) {
    for v in Batches::new(data, 1 << 20) {
        if v.is_err() {
            break;
        }
    }
    if data.len() < 61 {
        return;
    }
    let mut b = data.to_vec();
    let len = (b.len() - 12) as i32;
    b[8..12].copy_from_slice(&len.to_be_bytes());
    let crc = crc32c(&b[21..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    match BatchView::parse(&b, usize::MAX) {
        Ok((v, rest)) => {
            assert!(rest.is_empty());
            assert_eq!(v.len(), b.len());
            assert!(v.last_offset() >= v.base_offset());
            assert!(i64::from(v.record_count()) <= i64::from(v.last_offset_delta()) + 1);
            let _ = decode_records(&b);
        }
        // Length and CRC are right by construction: only the magic or the offset arithmetic
        // can be refused.
        Err(e) => {
            assert!(matches!(e, BatchError::BadMagic(_) | BatchError::BadCount { .. }), "{e}")
        }
    }
}

fn crc32c(bytes: &[u8]) -> u32 {
    // The same CRC the log checks, computed independently (bitwise, Castagnoli polynomial), so a
    // wrong table in either would show.
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0x82F6_3B78 } else { crc >> 1 };
        }
    }
    !crc
}

/// Fuzz target `mq_index`: `data` is an `.index`, a `.timeindex` or a leader-epoch checkpoint.
///
/// Checks: decoders never panic; what they accept encodes back to the same bytes (the formats
/// have one encoding per content).
pub fn mq_index(data: &[u8]) {
    let Some((&log_len, rest)) = data.split_first() else { return };
    if let Ok(es) = decode_offset_index(rest, u64::from(log_len) * 1000) {
        let back: Vec<u8> = es.iter().flat_map(|e| e.encode()).collect();
        assert_eq!(back, rest);
    }
    if let Ok(es) = decode_time_index(rest, u32::from(log_len) * 1000) {
        let back: Vec<u8> = es.iter().flat_map(|e| e.encode()).collect();
        assert_eq!(back, rest);
    }
    if let Ok(c) = EpochCache::decode(rest) {
        let again = EpochCache::decode(c.encode().as_bytes()).expect("own encoding decodes");
        assert_eq!(again, c);
        // Answers are monotonic: a later epoch never ends earlier.
        let mut last = -1;
        for e in c.entries() {
            let (_, end) = c.end_offset_for(e.epoch, i64::MAX);
            assert!(end >= last);
            last = end;
        }
    }
}

fn scratch_dir() -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let d = std::env::temp_dir().join(format!(
        "starling-fuzz-mq-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// Fuzz target `mq_segment`: `data` is a partition directory: chunks for the first segment's
/// `.log`, `.index`, `.timeindex`, the leader-epoch checkpoint, and a second segment's `.log`.
///
/// Checks: opening never panics and never fails on damaged content (damage is cut, not
/// refused); the opened log reads back as valid batches from start to end with contiguous
/// offsets; a new append lands at the end; reopening finds the same log.
pub fn mq_segment(data: &[u8]) {
    let parts = chunks(data);
    let dir = scratch_dir();
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let names = [
        format!("{:020}.log", 0),
        format!("{:020}.index", 0),
        format!("{:020}.timeindex", 0),
        EPOCH_CHECKPOINT.to_string(),
    ];
    for (name, bytes) in names.iter().zip(parts.iter()) {
        std::fs::write(dir.join(name), bytes).expect("write");
    }
    if let Some(second) = parts.get(4) {
        let base = parts.get(5).map_or(1, |b| b.first().copied().unwrap_or(1)) as i64;
        std::fs::write(dir.join(format!("{base:020}.log")), second).expect("write");
    }
    let config =
        LogConfig { segment_bytes: 4096, index_interval_bytes: 64, ..LogConfig::default() };
    let (mut log, _) =
        Log::open(&dir, config.clone()).expect("a damaged log opens (damage is cut)");
    let (start, end) = (log.start_offset(), log.end_offset());
    assert!(start <= end);
    let mut at = start;
    let mut seen = 0;
    while at < end {
        let r = log.read(at, 1 << 16, i64::MAX);
        let Ok(r) = r else { break }; // a damaged closed segment is refused, not served
        assert!(r.next_offset > at, "read made no progress");
        let mut expect = None;
        for v in Batches::new(&r.bytes, usize::MAX) {
            let v = v.expect("only whole, valid batches are served");
            if let Some(e) = expect {
                assert_eq!(v.base_offset(), e, "offsets not contiguous");
            }
            expect = Some(v.last_offset() + 1);
            seen += 1;
        }
        at = r.next_offset;
        if seen > 10_000 {
            break;
        }
    }
    let mut b = encode_batch(
        &[NewRecord { key: None, value: Some(b"v".to_vec()), headers: vec![], timestamp_ms: 0 }],
        None,
    )
    .expect("encode");
    let info = log.append_as_leader(&mut b, log.epochs().latest_epoch().unwrap_or(0).max(0), 0);
    let info = info.expect("append after recovery");
    assert_eq!(info.base_offset, end);
    log.flush().expect("flush");
    drop(log);
    let (again, _) = Log::open(&dir, config).expect("reopen");
    assert_eq!(again.end_offset(), end + 1);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Seeds: a real partition directory (three batches, indexes, checkpoint) for `mq_segment`, real
/// batches for `mq_batch`, and real index files for `mq_index`.
pub(crate) fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let dir = scratch_dir();
    let config =
        LogConfig { segment_bytes: 4096, index_interval_bytes: 64, ..LogConfig::default() };
    let (mut log, _) = Log::open(&dir, config).expect("log");
    let mut out = Vec::new();
    for (i, epoch) in [(0, 1), (1, 1), (2, 3)] {
        let recs: Vec<NewRecord> = (0..=i)
            .map(|j| NewRecord {
                key: Some(format!("k{j}").into_bytes()),
                value: Some(format!("value {i}.{j}").into_bytes()),
                headers: vec![("h".into(), Some(b"1".to_vec()))],
                timestamp_ms: 1_700_000_000_000 + i64::from(j),
            })
            .collect();
        let mut b = encode_batch(&recs, None).expect("encode");
        out.push(("mq_batch", format!("batch-{i}"), b.clone()));
        log.append_as_leader(&mut b, epoch, 0).expect("append");
    }
    log.flush().expect("flush");
    let mut files = Vec::new();
    for name in [
        format!("{:020}.log", 0),
        format!("{:020}.index", 0),
        format!("{:020}.timeindex", 0),
        EPOCH_CHECKPOINT.to_string(),
    ] {
        let bytes = std::fs::read(dir.join(&name)).unwrap_or_default();
        if name.ends_with("index") || name == EPOCH_CHECKPOINT {
            let mut idx = vec![255u8];
            idx.extend_from_slice(&bytes);
            out.push(("mq_index", format!("file-{}", name.replace('.', "-")), idx));
        }
        chunk(&mut files, &bytes);
    }
    out.push(("mq_segment", "partition".into(), files));
    let _ = std::fs::remove_dir_all(&dir);
    out
}

/// The replica a message fuzz input is fed to, set up as a follower or as a leader.
fn fuzz_replica(lead: bool) -> (Replica<MemLog>, NodeId, Instant) {
    let (me, other) = (NodeId(1), NodeId(2));
    let now = Instant::now();
    let mut r = Replica::new(me, MemLog::new(), ReplicaConfig::default(), now);
    let state = |leader, leader_epoch| PartitionState {
        replicas: vec![me, other],
        leader,
        leader_epoch,
        isr: vec![me, other],
    };
    if lead {
        // Its own proposal for epoch 1, then the state that records it.
        r.handle_state(now, state(None, 0), 0);
        r.handle_state(now, state(Some(me), 1), 1);
        let rec = NewRecord {
            key: None,
            value: Some(b"v".to_vec()),
            headers: Vec::new(),
            timestamp_ms: 1,
        };
        let _ = r.produce(now, 1, encode_batch(&[rec], None).expect("encode"), Acks::Leader);
    } else {
        r.handle_state(now, state(Some(other), 1), 1);
    }
    while r.poll_output().is_some() {}
    (r, other, now)
}

/// Fuzz target `mq_message`: replication messages between partition replicas
/// (`starling_mq::replica::Msg`, msgpack, as `TopicPeerRequest::Replicate` carries them).
/// Decoding never panics and what decodes encodes back to an equal message; the messages, in
/// order, fed to a follower and to a leader (each step's first byte picks one, and how much time
/// passes) never make either panic, and the logs stay well formed.
pub fn mq_message(data: &[u8]) {
    let (mut follower, leader_id, t0) = fuzz_replica(false);
    let (mut leader, follower_id, _) = fuzz_replica(true);
    let mut now = t0;
    for (op, bytes) in crate::input::steps(data) {
        let Ok(msg) = rmp_serde::from_slice::<Msg>(bytes) else { continue };
        let again = rmp_serde::to_vec_named(&msg).expect("a decoded message encodes");
        assert_eq!(rmp_serde::from_slice::<Msg>(&again).expect("re-decodes"), msg);
        now += Duration::from_millis(u64::from(op >> 1));
        if op & 1 == 0 {
            follower.handle_message(now, leader_id, msg);
            follower.handle_timeout(now);
        } else {
            leader.handle_message(now, follower_id, msg);
            leader.handle_timeout(now);
        }
        while follower.poll_output().is_some() {}
        while leader.poll_output().is_some() {}
    }
    for r in [&follower, &leader] {
        let log = r.log();
        assert!(log.start_offset() <= log.end_offset());
        assert!(r.high_watermark() <= log.end_offset(), "high watermark past the log end");
        if log.end_offset() > log.start_offset() {
            let read =
                log.read(log.start_offset(), usize::MAX, log.end_offset()).expect("readable");
            decode_records(&read.bytes).expect("stored batches decode");
        }
    }
}

/// Seeds for `mq_message`: a fetch, a records answer carrying a real batch, a diverging answer.
pub(crate) fn message_seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let batch = encode_batch(
        &[NewRecord {
            key: Some(b"k".to_vec()),
            value: Some(b"v".to_vec()),
            headers: Vec::new(),
            timestamp_ms: 5,
        }],
        None,
    )
    .expect("encode");
    let msgs = [
        (1, Msg::Fetch { epoch: 1, offset: 0, last_epoch: -1, max_bytes: 1 << 20 }),
        (1, Msg::Fetch { epoch: 1, offset: 1, last_epoch: 1, max_bytes: 1 << 20 }),
        (
            0,
            Msg::Fetched {
                epoch: 1,
                offset: 0,
                last_epoch: -1,
                answer: FetchAnswer::Records { bytes: batch, high_watermark: 1, log_start: 0 },
            },
        ),
        (
            0,
            Msg::Fetched {
                epoch: 1,
                offset: 1,
                last_epoch: 1,
                answer: FetchAnswer::Diverging { epoch: 0, end_offset: 0 },
            },
        ),
    ];
    let mut all = Vec::new();
    let mut out = Vec::new();
    for (i, (op, m)) in msgs.iter().enumerate() {
        let bytes = rmp_serde::to_vec_named(m).expect("encode");
        let mut one = Vec::new();
        crate::input::step(&mut one, *op, &bytes);
        out.push(("mq_message", format!("message-{i}"), one));
        crate::input::step(&mut all, *op + 20, &bytes);
    }
    out.push(("mq_message", "sequence".into(), all));
    out
}

/// Fuzz target `group_record`: `data` is a consumer group's record as the metadata service
/// returns it (`starling_mq::fence`, JSON written by any node, or damaged).
///
/// Checks: decoding never panics, and a record that decodes encodes to one that decodes equal;
/// a coordinator's fetch and then its commit, run against the bytes stored as they are, never
/// panic; a record that does not decode is refused (never overwritten: the offsets in it are
/// not lost to a fresh claim), one that does is claimed, and the commit then reads back.
pub fn group_record(data: &[u8]) {
    let decoded = GroupRecord::decode(data);
    if let Ok(r) = &decoded {
        assert_eq!(GroupRecord::decode(&r.encode()).as_ref(), Ok(r), "round trip");
    }
    let mut records = MemRecords::default();
    assert_eq!(records.write("g", None, data.to_vec()), Written::Ok(0));
    let me = Claimant { node: 7, instance: 9 };
    let key = OffsetKey { topic: "t".into(), incarnation: 3, partition: 1 };
    let mut held = None;
    let fetched = records.run(Job::fetch("g", me, vec![key.clone()]), &mut held);
    match (&decoded, fetched) {
        (Ok(r), Ok(Outcome::Fetched(found))) => {
            assert_eq!(found, vec![r.committed(&key).cloned()]);
            let now = records.record("g").expect("the claim decodes");
            assert_eq!(now.claimant, Some(me));
            assert_eq!(now.claims, r.claims.saturating_add(1).max(now.claims));
        }
        (Err(_), Err(FenceError::Refused(_))) => {
            assert_eq!(records.read("g").map(|(_, d)| d), Some(data), "left as it was");
            return;
        }
        (d, f) => panic!("decoded {d:?}, fetched {f:?}"),
    }
    let at = Committed { offset: 42, leader_epoch: -1, metadata: String::new() };
    let committed = records.run(Job::commit("g", me, vec![(key.clone(), at.clone())]), &mut held);
    assert_eq!(committed, Ok(Outcome::Committed));
    assert_eq!(records.record("g").and_then(|r| r.committed(&key).cloned()), Some(at));
}

pub(crate) fn group_seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut r = GroupRecord {
        claimant: Some(Claimant { node: u128::MAX, instance: 1 }),
        claims: 4,
        ..GroupRecord::default()
    };
    let key = |p| OffsetKey { topic: "t".into(), incarnation: 3, partition: p };
    let plain = Committed { offset: 10, leader_epoch: -1, metadata: String::new() };
    let kafka = Committed { offset: 7, leader_epoch: 2, metadata: "m".into() };
    r.apply(&[(key(0), plain), (key(1), kafka)]);
    vec![
        ("group_record", "record".into(), r.encode()),
        ("group_record", "empty".into(), GroupRecord::default().encode()),
        ("group_record", "not-json".into(), b"{\"claims\":".to_vec()),
    ]
}
