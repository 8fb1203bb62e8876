//! The partition log against a model, and against damage: torn tails, flipped bytes, lost
//! index and checkpoint files.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;

use proptest::prelude::*;
use starling_mq::batch::{decode_records, encode_batch, set_base_offset, NewRecord};
use starling_mq::log::EPOCH_CHECKPOINT;
use starling_mq::{Log, LogConfig, LogError};

fn rec(v: &str, ts: i64) -> NewRecord {
    NewRecord {
        key: Some(format!("key-{v}").into_bytes()),
        value: Some(v.as_bytes().to_vec()),
        headers: vec![],
        timestamp_ms: ts,
    }
}

fn small() -> LogConfig {
    LogConfig {
        segment_bytes: 1000,
        segment_ms: None,
        index_interval_bytes: 150,
        retention_bytes: None,
        retention_ms: None,
        ..LogConfig::default()
    }
}

/// Appends `n` one-record batches with values `prefix-i`, timestamps `ts0 + i`.
fn fill(log: &mut Log, prefix: &str, n: usize, epoch: i32, ts0: i64) {
    for i in 0..n {
        let mut b = encode_batch(&[rec(&format!("{prefix}-{i}"), ts0 + i as i64)], None).unwrap();
        log.append_as_leader(&mut b, epoch, ts0 + i as i64).unwrap();
    }
}

fn values(log: &Log, from: i64) -> Vec<(i64, String)> {
    let mut out = Vec::new();
    let mut at = from;
    loop {
        let r = log.read(at, 700, i64::MAX).unwrap();
        if r.bytes.is_empty() {
            break;
        }
        for rec in decode_records(&r.bytes).unwrap() {
            if rec.offset >= at {
                out.push((rec.offset, String::from_utf8(rec.value.unwrap().to_vec()).unwrap()));
            }
        }
        at = r.next_offset;
    }
    out
}

fn active_log_file(dir: &Path) -> std::path::PathBuf {
    let mut logs: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    logs.sort();
    logs.pop().unwrap()
}

#[test]
fn appends_read_back_across_segments_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, rec0) = Log::open(dir.path(), small()).unwrap();
    assert_eq!(rec0.segments, 0);
    // Several records per batch, and batches across several segments.
    let mut b = encode_batch(&[rec("a", 1), rec("b", 2), rec("c", 3)], None).unwrap();
    let info = log.append_as_leader(&mut b, 1, 3).unwrap();
    assert_eq!((info.base_offset, info.last_offset), (0, 2));
    fill(&mut log, "x", 40, 2, 100);
    assert!(log.segment_count() > 3, "{} segments", log.segment_count());
    assert_eq!(log.end_offset(), 43);
    let all = values(&log, 0);
    assert_eq!(all.len(), 43);
    assert_eq!(all[1], (1, "b".to_string()));
    assert_eq!(all[42], (42, "x-39".to_string()));
    // Reading from the middle of a three-record batch starts with that batch.
    assert_eq!(values(&log, 1)[0], (1, "b".to_string()));
    // The high watermark bounds what is returned.
    let r = log.read(3, 1 << 20, 10).unwrap();
    assert_eq!(r.next_offset, 10);
    assert_eq!(decode_records(&r.bytes).unwrap().last().unwrap().offset, 9);
    assert_eq!(log.read(10, 1 << 20, 10).unwrap().bytes.len(), 0);
    assert!(matches!(log.read(44, 100, i64::MAX), Err(LogError::OffsetOutOfRange { .. })));
    assert_eq!(log.epochs().end_offset_for(1, 43), (1, 3));
    assert_eq!(log.offset_for_time(120).unwrap(), Some(23));
    assert_eq!(log.offset_for_time(1000).unwrap(), None);
    // Inside a batch, the first record at or after the time (Kafka's answer), not the batch.
    assert_eq!(log.offset_for_time(2).unwrap(), Some(1));
    assert_eq!(log.offset_for_time(3).unwrap(), Some(2));
    assert_eq!(log.offset_for_time(i64::MIN).unwrap(), Some(0));
    log.flush().unwrap();
    let segs = log.segment_count();
    drop(log);

    let (log, rec1) = Log::open(dir.path(), small()).unwrap();
    assert_eq!(rec1.segments, segs);
    // Closed segments are opened from their index files; only the active one is scanned.
    assert_eq!(rec1.rebuilt_indexes, 1, "{rec1:?}");
    assert_eq!(rec1.truncated_bytes, 0);
    assert!(!rec1.rebuilt_epochs);
    assert_eq!(values(&log, 0), all);
    assert_eq!(log.offset_for_time(120).unwrap(), Some(23));
    assert_eq!(log.offset_for_time(2).unwrap(), Some(1));
    assert_eq!(log.end_offset_for_epoch(1), (1, 3));
    assert_eq!(log.end_offset_for_epoch(2), (2, 43));
}

#[test]
fn a_torn_tail_is_cut_and_appends_continue() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), small()).unwrap();
    fill(&mut log, "v", 5, 1, 0);
    drop(log);
    // Half of a sixth batch reached the disk.
    let mut half = encode_batch(&[rec("torn", 9)], None).unwrap();
    set_base_offset(&mut half, 5);
    let path = active_log_file(dir.path());
    OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(&half[..half.len() / 2])
        .unwrap();
    let (mut log, r) = Log::open(dir.path(), small()).unwrap();
    assert_eq!(r.truncated_bytes, (half.len() / 2) as u64);
    assert!(r.damage.is_some());
    assert_eq!(log.end_offset(), 5);
    fill(&mut log, "w", 1, 1, 10);
    assert_eq!(values(&log, 4), vec![(4, "v-4".into()), (5, "w-0".into())]);
}

#[test]
fn a_damaged_batch_in_the_tail_is_cut_with_everything_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) =
        Log::open(dir.path(), LogConfig { segment_bytes: 1 << 20, ..small() }).unwrap();
    fill(&mut log, "v", 10, 1, 0);
    drop(log);
    let path = active_log_file(dir.path());
    let mut bytes = fs::read(&path).unwrap();
    let batch_len = bytes.len() / 10;
    bytes[batch_len * 6 + 40] ^= 0x40; // inside batch 6's CRC-covered part
    fs::write(&path, &bytes).unwrap();
    let (log, r) = Log::open(dir.path(), small()).unwrap();
    assert_eq!(log.end_offset(), 6);
    assert!(r.damage.unwrap().contains("CRC"));
    assert_eq!(values(&log, 0).len(), 6);
}

#[test]
fn a_damaged_closed_segment_is_refused_on_read() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), small()).unwrap();
    fill(&mut log, "v", 30, 1, 0);
    drop(log);
    let first = dir.path().join(format!("{:020}.log", 0));
    let mut bytes = fs::read(&first).unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 1; // the last record of the first segment
    fs::write(&first, &bytes).unwrap();
    let (log, r) = Log::open(dir.path(), small()).unwrap();
    assert_eq!(r.truncated_bytes, 0, "closed segments are not rescanned at start");
    let last_in_first = log
        .headers_from(0)
        .unwrap()
        .into_iter()
        .take_while(|h| h.0 < 100)
        .filter(|h| h.1 < 30)
        .count();
    assert!(last_in_first > 0);
    let mut err = None;
    for off in 0..30 {
        if let Err(e) = log.read(off, 100_000, i64::MAX) {
            err = Some(e);
            break;
        }
    }
    assert!(matches!(err, Some(LogError::Corrupt { .. })), "{err:?}");
}

#[test]
fn lost_or_damaged_index_and_checkpoint_files_are_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), small()).unwrap();
    fill(&mut log, "a", 12, 1, 0);
    fill(&mut log, "b", 12, 4, 100);
    log.flush().unwrap();
    let want = values(&log, 0);
    drop(log);
    let idx = dir.path().join(format!("{:020}.index", 0));
    assert!(fs::metadata(&idx).unwrap().len() > 0);
    fs::write(&idx, [0xff; 13]).unwrap();
    fs::remove_file(dir.path().join(format!("{:020}.timeindex", 0))).unwrap();
    fs::write(dir.path().join(EPOCH_CHECKPOINT), "0\n7\nnonsense").unwrap();
    let (log, r) = Log::open(dir.path(), small()).unwrap();
    assert!(r.rebuilt_epochs);
    assert!(r.rebuilt_indexes >= 2);
    assert_eq!(values(&log, 0), want);
    assert_eq!(log.end_offset_for_epoch(1), (1, 12));
    assert_eq!(log.end_offset_for_epoch(3), (1, 12));
    assert_eq!(log.end_offset_for_epoch(4), (4, 24));
    // An index file left behind by an interrupted delete is removed.
    fs::write(dir.path().join(format!("{:020}.index", 99_999)), [0u8; 8]).unwrap();
    drop(log);
    Log::open(dir.path(), small()).unwrap();
    assert!(!dir.path().join(format!("{:020}.index", 99_999)).exists());
}

#[test]
fn truncation_by_epoch_and_follower_appends() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), small()).unwrap();
    fill(&mut log, "a", 20, 1, 0);
    fill(&mut log, "b", 20, 2, 100);
    // A new leader of epoch 3 says epoch 1 ended at 20 in its log, epoch 2 at 25.
    assert_eq!(log.truncate_to(25).unwrap(), 25);
    assert_eq!(log.end_offset_for_epoch(2), (2, 25));
    assert_eq!(values(&log, 0).len(), 25);
    assert_eq!(log.truncate_to(7).unwrap(), 7);
    assert_eq!(log.epochs().latest_epoch(), Some(1));
    assert_eq!(values(&log, 0).last().unwrap(), &(6, "a-6".to_string()));

    // Follower appends: batches from a leader log, offsets and epochs kept.
    let ldir = tempfile::tempdir().unwrap();
    let (mut leader, _) = Log::open(ldir.path(), small()).unwrap();
    fill(&mut leader, "a", 7, 1, 0);
    fill(&mut leader, "c", 5, 3, 200);
    let fetched = leader.read(7, 1 << 20, i64::MAX).unwrap();
    let info = log.append_as_follower(&fetched.bytes, 300).unwrap();
    assert_eq!((info.base_offset, info.last_offset), (7, 11));
    assert_eq!(log.end_offset_for_epoch(1), (1, 7));
    assert_eq!(log.end_offset_for_epoch(3), (3, 12));
    // Not contiguous, or an older epoch: refused, nothing written.
    let again = leader.read(9, 1 << 20, i64::MAX).unwrap();
    assert!(matches!(
        log.append_as_follower(&again.bytes, 0),
        Err(LogError::NotContiguous { expected: 12, got: 9 })
    ));
    let mut old = encode_batch(&[rec("old", 1)], None).unwrap();
    set_base_offset(&mut old, 12);
    starling_mq::batch::set_leader_epoch(&mut old, 2);
    assert!(matches!(
        log.append_as_follower(&old, 0),
        Err(LogError::EpochRegressed { latest: 3, got: 2 })
    ));
    assert_eq!(log.end_offset(), 12);
    // Truncating to the log start empties it.
    log.truncate_to(0).unwrap();
    assert_eq!((log.start_offset(), log.end_offset()), (0, 0));
    log.reset_to(500).unwrap();
    assert_eq!((log.start_offset(), log.end_offset()), (500, 500));
}

#[test]
fn producer_input_is_checked_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), small()).unwrap();
    let good = encode_batch(&[rec("ok", 1)], None).unwrap();
    let mut bad = good.clone();
    let n = bad.len();
    bad[n - 1] ^= 1;
    let mut two = [good.clone(), bad].concat();
    assert!(matches!(log.append_as_leader(&mut two, 1, 0), Err(LogError::Batch { index: 1, .. })));
    let mut torn = good[..good.len() - 2].to_vec();
    assert!(matches!(log.append_as_leader(&mut torn, 1, 0), Err(LogError::Batch { index: 0, .. })));
    let mut big =
        encode_batch(&[NewRecord { value: Some(vec![7; 2 << 20]), ..rec("x", 0) }], None).unwrap();
    assert!(matches!(log.append_as_leader(&mut big, 1, 0), Err(LogError::Batch { index: 0, .. })));
    assert!(matches!(log.append_as_leader(&mut [], 1, 0), Err(LogError::Empty)));
    assert_eq!(log.end_offset(), 0);
    assert_eq!(log.size_bytes(), 0);
}

#[test]
fn retention_by_size_and_time_stops_at_the_high_watermark() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig { retention_bytes: Some(3000), retention_ms: Some(1000), ..small() };
    let (mut log, _) = Log::open(dir.path(), cfg).unwrap();
    fill(&mut log, "v", 60, 1, 0);
    let segs = log.segment_count();
    // Nothing is replicated yet: nothing goes.
    assert!(log.apply_retention(0, 0).unwrap().is_empty());
    let deleted = log.apply_retention(0, 60).unwrap();
    assert!(!deleted.is_empty());
    assert!(log.size_bytes() <= 3000 + 1000);
    assert_eq!(log.start_offset(), *log.headers_from(0).unwrap().first().map(|h| &h.0).unwrap());
    assert!(matches!(log.read(0, 10, i64::MAX), Err(LogError::OffsetOutOfRange { .. })));
    assert_eq!(log.epochs().entries()[0].start_offset, log.start_offset());
    // By time: all closed segments are older than a second at t = 5000.
    log.apply_retention(5000, 60).unwrap();
    assert_eq!(log.segment_count(), 1);
    assert!(segs > 4);
    assert_eq!(log.end_offset(), 60);
    drop(log);
    let (log, _) = Log::open(dir.path(), small()).unwrap();
    assert_eq!(log.end_offset(), 60);
    assert_eq!(log.read(log.start_offset(), 1 << 20, i64::MAX).unwrap().next_offset, 60);
}

#[test]
fn rolling_by_time_uses_the_first_batch_timestamp() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig { segment_bytes: 1 << 20, segment_ms: Some(1000), ..small() };
    let (mut log, _) = Log::open(dir.path(), cfg).unwrap();
    fill(&mut log, "v", 3, 1, 0);
    assert_eq!(log.segment_count(), 1);
    let mut b = encode_batch(&[rec("late", 5000)], None).unwrap();
    log.append_as_leader(&mut b, 1, 5000).unwrap();
    assert_eq!(log.segment_count(), 2);
}

#[derive(Debug, Clone)]
enum Op {
    Append { records: usize, epoch_up: bool },
    Truncate(u8),
    Roll,
    Reopen,
    Retain(u8),
    Tear(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1usize..4, proptest::bool::weighted(0.2)).prop_map(|(records, epoch_up)| Op::Append { records, epoch_up }),
        1 => any::<u8>().prop_map(Op::Truncate),
        1 => Just(Op::Roll),
        1 => Just(Op::Reopen),
        1 => any::<u8>().prop_map(Op::Retain),
        1 => (1u8..60).prop_map(Op::Tear),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Any sequence of appends, truncations, rolls, restarts, retention and torn tails leaves a
    /// log that reads back exactly what the model kept.
    #[test]
    fn the_log_matches_a_model(ops in proptest::collection::vec(op(), 1..60)) {
        let dir = tempfile::tempdir().unwrap();
        let cfg = LogConfig { segment_bytes: 600, index_interval_bytes: 100, ..small() };
        let (mut log, _) = Log::open(dir.path(), cfg.clone()).unwrap();
        let mut model: Vec<(i64, String, i32)> = Vec::new();
        let mut start = 0i64;
        let mut epoch = 0;
        let mut n = 0;
        for op in ops {
            match op {
                Op::Append { records, epoch_up } => {
                    if epoch_up { epoch += 1; }
                    let recs: Vec<_> = (0..records).map(|_| { n += 1; rec(&format!("r{n}"), n) }).collect();
                    let mut b = encode_batch(&recs, None).unwrap();
                    let info = log.append_as_leader(&mut b, epoch, n).unwrap();
                    let end = model.last().map_or(start, |m| m.0 + 1);
                    prop_assert_eq!(info.base_offset, end);
                    for (i, r) in recs.iter().enumerate() {
                        model.push((end + i as i64, String::from_utf8(r.value.clone().unwrap()).unwrap(), epoch));
                    }
                }
                Op::Truncate(k) => {
                    let end = log.end_offset();
                    let to = start + (i64::from(k) % (end - start + 1));
                    let new_end = log.truncate_to(to).unwrap();
                    prop_assert!(new_end <= to);
                    model.retain(|m| m.0 < new_end);
                    if new_end == start { model.clear(); }
                }
                Op::Roll => log.roll().unwrap(),
                Op::Reopen => {
                    log.flush().unwrap();
                    drop(log);
                    log = Log::open(dir.path(), cfg.clone()).unwrap().0;
                }
                Op::Retain(k) => {
                    let hw = start + (i64::from(k) % (log.end_offset() - start + 1));
                    let retained = LogConfig { retention_bytes: Some(600), ..cfg.clone() };
                    drop(log);
                    log = Log::open(dir.path(), retained).unwrap().0;
                    log.apply_retention(n, hw).unwrap();
                    start = log.start_offset();
                    model.retain(|m| m.0 >= start);
                    drop(log);
                    log = Log::open(dir.path(), cfg.clone()).unwrap().0;
                }
                Op::Tear(k) => {
                    // A crash in the middle of writing the last batch: the tail is cut on restart.
                    let end_before = log.end_offset();
                    let mut b = encode_batch(&[rec("torn", 0)], None).unwrap();
                    set_base_offset(&mut b, end_before);
                    drop(log);
                    let path = active_log_file(dir.path());
                    let cut = (usize::from(k) % (b.len() - 1)).max(1);
                    OpenOptions::new().append(true).open(&path).unwrap().write_all(&b[..cut]).unwrap();
                    let (l, r) = Log::open(dir.path(), cfg.clone()).unwrap();
                    prop_assert_eq!(r.truncated_bytes, cut as u64);
                    log = l;
                    prop_assert_eq!(log.end_offset(), end_before);
                }
            }
            let got = values(&log, log.start_offset());
            let want: Vec<(i64, String)> = model.iter().map(|m| (m.0, m.1.clone())).collect();
            prop_assert_eq!(got, want);
            if let Some(last) = model.last() {
                // No epoch survives that has no batch left (a follower would otherwise be told
                // an epoch ends past where its records do).
                prop_assert_eq!(log.epochs().latest_epoch(), Some(last.2));
            }
            for m in &model {
                let (e, end) = log.end_offset_for_epoch(m.2);
                prop_assert_eq!(e, m.2);
                prop_assert!(end > m.0);
            }
        }
    }
}

#[test]
fn a_detached_flush_hands_the_fsync_to_the_caller_once() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), small()).unwrap();
    fill(&mut log, "a", 3, 1, 1_000);
    // Something was appended: the caller gets the active segment's file to fsync.
    let file = log.flush_detached().unwrap().expect("a file to fsync");
    std::thread::spawn(move || file.sync_data()).join().unwrap().unwrap();
    // Nothing new: nothing to fsync.
    assert!(log.flush_detached().unwrap().is_none());
    // The indexes were written: a reopen opens the closed segments from them, and every
    // record is there.
    let before = values(&log, 0);
    drop(log);
    let (log, recovery) = Log::open(dir.path(), small()).unwrap();
    assert_eq!(recovery.damage, None);
    assert_eq!(values(&log, 0), before);
    assert_eq!(before.len(), 3);
}

#[test]
fn the_recent_part_of_a_log_is_its_last_two_segments() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), small()).unwrap();
    assert_eq!(log.recent_base(), 0, "one segment: all of it");
    fill(&mut log, "r", 40, 1, 1_000);
    let bases: Vec<i64> = fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            name.strip_suffix(".log").and_then(|b| b.parse().ok())
        })
        .collect::<std::collections::BTreeSet<i64>>()
        .into_iter()
        .collect();
    assert!(bases.len() >= 3, "{bases:?}");
    assert_eq!(log.recent_base(), bases[bases.len() - 2]);
}

#[test]
fn a_time_look_up_names_the_first_record_at_or_after_the_time_even_inside_a_batch() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), small()).unwrap();
    fill(&mut log, "early", 2, 1, 5);
    // Producers' own timestamps need not rise within a batch (CreateTime).
    let mut b = encode_batch(&[rec("a", 10), rec("b", 30), rec("c", 20)], None).unwrap();
    log.append_as_leader(&mut b, 1, 30).unwrap();
    assert_eq!(log.offset_for_time(7).unwrap(), Some(2));
    assert_eq!(log.offset_for_time(10).unwrap(), Some(2));
    assert_eq!(log.offset_for_time(11).unwrap(), Some(3));
    assert_eq!(log.offset_for_time(25).unwrap(), Some(3));
    assert_eq!(log.offset_for_time(30).unwrap(), Some(3));
    assert_eq!(log.offset_for_time(31).unwrap(), None);
}
