//! One conformance suite for every [`Storage`]: `MemStorage` and `RocksStorage` must behave the
//! same (last write wins by version, tombstones, range scans with paging, hints kept one per target and
//! key, metadata).
//! RocksDB-only: data survives close and reopen, and compaction drops tombstones past the grace
//! period but keeps fresh ones. Plus: decoding garbage bytes is an error, never a panic.

use starling_wire::NodeId;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proptest::prelude::*;
use starling_node::storage::mem::MemStorage;
use starling_node::storage::rocks::{RocksConfig, RocksStorage};
use starling_node::storage::{
    data_key, decode_value, decode_version, encode_value, hint_size, Hint, HintPut, Storage,
    SCAN_PAGE_BYTES,
};
use starling_ring::{token_of, Range, Token};
use starling_wire::{Record, Version};

// ---------------------------------------------------------------------------------------------
// Helpers

fn rec(key: &[u8], ts: u64, node: u128, value: Option<&[u8]>) -> Record {
    Record {
        key: key.to_vec(),
        version: Version { ts, node: NodeId(node) },
        value: value.map(<[u8]>::to_vec),
    }
}

fn now_millis() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_millis() as u64
}

/// An HLC timestamp `ago` before now.
fn hlc_ago(ago: Duration) -> u64 {
    (now_millis() - ago.as_millis() as u64) << 16
}

/// A store and whatever must live as long as it (the RocksDB temp dir).
struct Fixture<S> {
    store: S,
    _dir: Option<tempfile::TempDir>,
}

fn mem() -> Fixture<MemStorage> {
    Fixture { store: MemStorage::new(), _dir: None }
}

fn rocks() -> Fixture<RocksStorage> {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = RocksStorage::open(&dir.path().join("db"), &RocksConfig::default()).expect("open");
    Fixture { store, _dir: Some(dir) }
}

fn rocks_without_version_cache() -> Fixture<RocksStorage> {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = RocksConfig { version_cache: 0, ..RocksConfig::default() };
    let store = RocksStorage::open(&dir.path().join("db"), &cfg).expect("open");
    Fixture { store, _dir: Some(dir) }
}

fn get<S: Storage>(s: &S, key: &[u8]) -> Option<Record> {
    s.get(key).expect("get")
}

/// Every record of `range`, following the cursor with pages of `limit`; panics on a cursor that
/// does not advance (an endless scan).
fn scan_all<S: Storage>(s: &S, range: Range, limit: usize) -> Vec<Record> {
    let mut out = Vec::new();
    let mut cursor: Option<Vec<u8>> = None;
    for _ in 0..100_000 {
        let page = s.scan(range, cursor.as_deref(), limit).expect("scan");
        assert!(page.records.len() <= limit, "page of {} over limit {limit}", page.records.len());
        if page.cursor.is_some() {
            assert!(!page.records.is_empty(), "an empty page must end the scan");
            assert_eq!(
                page.cursor.as_deref(),
                page.records.last().map(|r| data_key(&r.key)).as_deref(),
                "the cursor continues after the last record returned"
            );
        }
        out.extend(page.records);
        match page.cursor {
            Some(c) => {
                if let Some(prev) = &cursor {
                    assert!(c > *prev, "cursor did not advance");
                }
                cursor = Some(c);
            }
            None => return out,
        }
    }
    panic!("scan of {range:?} with limit {limit} never ended");
}

// ---------------------------------------------------------------------------------------------
// The suite, generic over the store.

fn apply_then_get<S: Storage>(s: &S) {
    assert_eq!(get(s, b"absent"), None);
    let a = rec(b"a", 10, 1, Some(b"alpha"));
    let b = rec(b"a-much-longer-key-than-eight-bytes", 11, 2, Some(b""));
    s.apply(&[a.clone(), b.clone()]).expect("apply");
    assert_eq!(get(s, b"a"), Some(a));
    // An empty value is a value, not a tombstone.
    assert_eq!(get(s, &b.key), Some(b.clone()));
    assert!(!get(s, &b.key).expect("present").is_tombstone());
    // Binary keys and values, including a key at the maximum size.
    let big_key = vec![0xffu8; starling_wire::MAX_KEY_BYTES];
    let bin = rec(&big_key, 12, 3, Some(&[0, 1, 2, 255]));
    s.apply(std::slice::from_ref(&bin)).expect("apply");
    assert_eq!(get(s, &big_key), Some(bin));
    assert_eq!(get(s, b"absent"), None);
}

fn last_write_wins_in_both_orders<S: Storage>(s: &S) {
    let old = |k: &[u8]| rec(k, 100, 9, Some(b"old"));
    let new = |k: &[u8]| rec(k, 200, 1, Some(b"new"));
    // Old then new.
    s.apply(&[old(b"k1")]).expect("apply");
    s.apply(&[new(b"k1")]).expect("apply");
    assert_eq!(get(s, b"k1"), Some(new(b"k1")));
    // New then old: the older write arriving later changes nothing.
    s.apply(&[new(b"k2")]).expect("apply");
    s.apply(&[old(b"k2")]).expect("apply");
    assert_eq!(get(s, b"k2"), Some(new(b"k2")));
    // Both in one batch, in either order.
    s.apply(&[old(b"k3"), new(b"k3")]).expect("apply");
    assert_eq!(get(s, b"k3"), Some(new(b"k3")));
    s.apply(&[new(b"k4"), old(b"k4")]).expect("apply");
    assert_eq!(get(s, b"k4"), Some(new(b"k4")));
    // The same version again (a replay) is harmless.
    s.apply(&[new(b"k4")]).expect("apply");
    assert_eq!(get(s, b"k4"), Some(new(b"k4")));
}

fn equal_timestamps_are_broken_by_node_id<S: Storage>(s: &S) {
    let low = |k: &[u8]| rec(k, 500, 1, Some(b"from node 1"));
    let high = |k: &[u8]| rec(k, 500, 2, Some(b"from node 2"));
    s.apply(&[low(b"t1")]).expect("apply");
    s.apply(&[high(b"t1")]).expect("apply");
    assert_eq!(get(s, b"t1"), Some(high(b"t1")));
    s.apply(&[high(b"t2")]).expect("apply");
    s.apply(&[low(b"t2")]).expect("apply");
    assert_eq!(get(s, b"t2"), Some(high(b"t2")));
    // Node ids compare as full 128-bit numbers, not by a prefix.
    let a = rec(b"t3", 500, u128::MAX - 1, Some(b"a"));
    let b = rec(b"t3", 500, u128::MAX, Some(b"b"));
    s.apply(std::slice::from_ref(&b)).expect("apply");
    s.apply(&[a]).expect("apply");
    assert_eq!(get(s, b"t3"), Some(b));
    // The timestamp dominates the node id.
    let c = rec(b"t4", 501, 0, Some(b"c"));
    s.apply(&[rec(b"t4", 500, u128::MAX, Some(b"d")), c.clone()]).expect("apply");
    assert_eq!(get(s, b"t4"), Some(c));
}

fn tombstones_are_stored_and_win_by_version<S: Storage>(s: &S) {
    let value = rec(b"d1", 100, 1, Some(b"v"));
    let tomb = rec(b"d1", 200, 1, None);
    s.apply(std::slice::from_ref(&value)).expect("apply");
    s.apply(std::slice::from_ref(&tomb)).expect("apply");
    let got = get(s, b"d1").expect("the tombstone is stored");
    assert!(got.is_tombstone());
    assert_eq!(got, tomb);
    // An older value replayed after the delete does not resurrect the key.
    s.apply(std::slice::from_ref(&value)).expect("apply");
    assert_eq!(get(s, b"d1"), Some(tomb.clone()));
    // A tombstone for a key never written is stored too.
    let lone = rec(b"d2", 300, 2, None);
    s.apply(std::slice::from_ref(&lone)).expect("apply");
    assert_eq!(get(s, b"d2"), Some(lone));
    // An older tombstone does not delete a newer value.
    let newer = rec(b"d3", 400, 1, Some(b"alive"));
    s.apply(std::slice::from_ref(&newer)).expect("apply");
    s.apply(&[rec(b"d3", 399, 7, None)]).expect("apply");
    assert_eq!(get(s, b"d3"), Some(newer));
    // A newer write after the delete brings the key back.
    let again = rec(b"d1", 201, 1, Some(b"again"));
    s.apply(std::slice::from_ref(&again)).expect("apply");
    assert_eq!(get(s, b"d1"), Some(again));
}

/// 400 keys, every fifth a tombstone; returns them sorted by storage key.
fn fill<S: Storage>(s: &S) -> Vec<Record> {
    let mut records: Vec<Record> = (0..400u32)
        .map(|i| {
            let key = format!("scan-{i}");
            let value = (i % 5 != 0).then(|| format!("value-{i}"));
            rec(key.as_bytes(), 1000 + u64::from(i), 1, value.as_deref().map(str::as_bytes))
        })
        .collect();
    for chunk in records.chunks(64) {
        s.apply(chunk).expect("apply");
    }
    records.sort_by_key(|r| data_key(&r.key));
    records
}

fn check_scan<S: Storage>(s: &S, all: &[Record], range: Range) {
    let expected: Vec<&Record> = all.iter().filter(|r| range.contains(token_of(&r.key))).collect();
    for limit in [1usize, 3, 64, 1000] {
        let got = scan_all(s, range, limit);
        // Exactly once each, in storage order (wrapping ranges too: [0, end] comes first).
        let keys: Vec<Vec<u8>> = got.iter().map(|r| data_key(&r.key)).collect();
        assert!(
            keys.windows(2).all(|w| w[0] < w[1]),
            "{range:?} limit {limit}: records out of order or repeated"
        );
        for r in &got {
            assert!(
                range.contains(token_of(&r.key)),
                "{range:?} limit {limit}: {:?} is outside the range",
                String::from_utf8_lossy(&r.key)
            );
        }
        let got_refs: Vec<&Record> = got.iter().collect();
        assert_eq!(
            got_refs.len(),
            expected.len(),
            "{range:?} limit {limit}: {} records, expected {}",
            got_refs.len(),
            expected.len()
        );
        assert_eq!(got_refs, expected, "{range:?} limit {limit}: wrong records");
    }
}

fn scans_cover_ranges_exactly_once<S: Storage>(s: &S) {
    let all = fill(s);
    let tokens: Vec<Token> = all.iter().map(|r| token_of(&r.key)).collect();
    assert!(tokens.windows(2).all(|w| w[0] < w[1]), "test keys must have distinct tokens");
    // Boundaries on key tokens check that start is exclusive and end inclusive.
    let normal = Range { start: tokens[100], end: tokens[300] };
    let wrapping = Range { start: tokens[350], end: tokens[40] };
    let full = Range { start: tokens[200], end: tokens[200] };
    let ranges = [
        normal,
        wrapping,
        full,
        Range::FULL,
        Range { start: tokens[100] - 1, end: tokens[101] },
        Range { start: 0, end: tokens[10] },
        Range { start: tokens[390], end: Token::MAX },
        Range { start: Token::MAX, end: tokens[20] },
        Range { start: tokens[399], end: tokens[0] },
        Range { start: tokens[5], end: tokens[5] + 1 },
    ];
    for range in ranges {
        check_scan(s, &all, range);
    }
    // Spot checks of the boundaries themselves.
    let n = scan_all(s, normal, 1000);
    assert_eq!(n.len(), 200, "(t100, t300] holds keys 101..=300");
    assert_eq!(token_of(&n[0].key), tokens[101]);
    assert_eq!(token_of(&n[199].key), tokens[300]);
    assert_eq!(scan_all(s, wrapping, 1000).len(), 49 + 41);
    assert_eq!(scan_all(s, full, 7).len(), 400);
    // Tombstones are part of a scan (streaming must carry deletes).
    let full_scan = scan_all(s, Range::FULL, 1000);
    assert_eq!(full_scan.iter().filter(|r| r.is_tombstone()).count(), 80);
    // A range with no keys in it.
    let empty = Range { start: tokens[7], end: tokens[8] - 1 };
    if tokens[8] - 1 > tokens[7] {
        assert!(scan_all(s, empty, 10).is_empty());
    }
}

fn scan_sees_only_the_newest_version<S: Storage>(s: &S) {
    s.apply(&[rec(b"sv", 1, 1, Some(b"one"))]).expect("apply");
    s.apply(&[rec(b"sv", 3, 1, None)]).expect("apply");
    s.apply(&[rec(b"sv", 2, 1, Some(b"two"))]).expect("apply");
    let t = token_of(b"sv");
    let got = scan_all(s, Range { start: t - 1, end: t }, 10);
    assert_eq!(got, vec![rec(b"sv", 3, 1, None)]);
}

/// Pages stay a bounded size (they travel as one response when a node streams a range), and
/// paging still returns every record once.
fn scan_pages_are_bounded_in_bytes<S: Storage>(s: &S) {
    let big = vec![9u8; starling_wire::MAX_VALUE_BYTES];
    let mut all: Vec<Record> = (0..7u64)
        .map(|i| rec(format!("big-{i}").as_bytes(), 10 + i, 1, Some(&big)))
        .chain((0..20u64).map(|i| rec(format!("small-{i}").as_bytes(), 10 + i, 1, Some(b"s"))))
        .collect();
    for r in &all {
        s.apply(std::slice::from_ref(r)).expect("apply");
    }
    all.sort_by_key(|r| data_key(&r.key));
    let mut got = Vec::new();
    let mut cursor: Option<Vec<u8>> = None;
    let mut pages = 0;
    loop {
        let page = s.scan(Range::FULL, cursor.as_deref(), 4096).expect("scan");
        pages += 1;
        assert!(!page.records.is_empty() || page.cursor.is_none());
        let bytes: usize =
            page.records.iter().map(|r| r.key.len() + r.value.as_ref().map_or(0, Vec::len)).sum();
        assert!(
            bytes
                <= SCAN_PAGE_BYTES + starling_wire::MAX_VALUE_BYTES + starling_wire::MAX_KEY_BYTES,
            "a page of {bytes} bytes"
        );
        got.extend(page.records);
        match page.cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
        assert!(pages < 100, "endless scan");
    }
    assert!(pages >= 3, "7 MiB of values need several pages, got {pages}");
    assert_eq!(got, all);
}

/// A page of hints read for replay stays near `SCAN_PAGE_BYTES` (it goes out as one request),
/// whatever the count asked for, and always holds at least one hint; paging on (deleting each
/// page as delivered) reads them all.
fn hint_pages_are_bounded_in_bytes<S: Storage>(s: &S) {
    let target = NodeId(9);
    let big = vec![7u8; 700 << 10];
    let hints: Vec<(NodeId, Record)> =
        (0..10u8).map(|i| (target, rec(&[b'k', i], 10 + u64::from(i), 1, Some(&big)))).collect();
    s.put_hints(&hints).expect("put hints");
    let mut seen = 0;
    let mut pages = 0;
    loop {
        let page = s.hints_for(target, 256).expect("hints");
        if page.is_empty() {
            break;
        }
        let bytes: u64 = page.iter().map(|h| hint_size(&h.record)).sum();
        assert!(
            page.len() == 1 || bytes <= SCAN_PAGE_BYTES as u64,
            "{} hints of {bytes} bytes in one page",
            page.len()
        );
        seen += page.len();
        pages += 1;
        let delivered: Vec<_> = page.iter().map(Hint::delivered).collect();
        s.delete_hints(&delivered).expect("delete");
    }
    assert_eq!(seen, 10);
    assert!(pages >= 4, "7 MiB of hints need several pages, got {pages}");
    // A single hint larger than a page still comes out, alone.
    let huge = vec![1u8; SCAN_PAGE_BYTES + 1];
    s.put_hints(&[(target, rec(b"huge", 50, 1, Some(&huge)))]).expect("put");
    assert_eq!(s.hints_for(target, 256).expect("hints").len(), 1);
}

fn hints_round_trip<S: Storage>(s: &S) {
    let (a, b, c) = (NodeId(1), NodeId(2), NodeId(u128::MAX));
    assert!(s.hint_targets().expect("targets").is_empty());
    assert!(s.hints_for(a, 10).expect("hints").is_empty());
    // Keys shorter and longer than 8 bytes, a binary key, a tombstone.
    let for_a = vec![
        rec(b"x", 30, 5, Some(b"3")),
        rec(b"a-long-key-for-hints", 10, 5, Some(b"1")),
        rec(&[0, 0xff, 7], 20, 5, None),
        rec(b"other", 40, 6, Some(b"4")),
    ];
    let for_b = [rec(b"bkey-0123456789", 15, 5, Some(b"b"))];
    let for_c = [rec(b"c", 16, 5, Some(b"c"))];
    let mut batch: Vec<(NodeId, Record)> = Vec::new();
    batch.extend(for_a.iter().cloned().map(|r| (a, r)));
    batch.extend(for_b.iter().cloned().map(|r| (b, r)));
    batch.extend(for_c.iter().cloned().map(|r| (c, r)));
    assert_eq!(s.put_hints(&batch).expect("put hints"), vec![HintPut::Added; 6]);

    // Hints are not data.
    assert_eq!(get(s, b"x"), None);
    assert!(scan_all(s, Range::FULL, 100).is_empty());

    assert_eq!(s.hint_targets().expect("targets"), vec![(a, 4), (b, 1), (c, 1)]);
    let got = s.hints_for(a, 100).expect("hints");
    let records: Vec<Record> = got.iter().map(|h| h.record.clone()).collect();
    let mut in_key_order = for_a.clone();
    in_key_order.sort_by_key(|r| data_key(&r.key));
    assert_eq!(records, in_key_order, "hints for a, by token and key, keys and values intact");
    assert!(got.iter().all(|h| h.target == a));
    let size = |rs: &[Record]| rs.iter().map(hint_size).sum::<u64>();
    assert_eq!(
        s.hint_bytes().expect("bytes"),
        vec![(a, size(&for_a)), (b, size(&for_b)), (c, size(&for_c))],
        "hint bytes are what the hint caps count"
    );
    let limited = s.hints_for(a, 2).expect("hints");
    assert_eq!(limited, got[..2].to_vec());
    let hb: Vec<Hint> = s.hints_for(b, 100).expect("hints");
    assert_eq!(hb.len(), 1);
    assert_eq!(hb[0].record, for_b[0]);
    assert_eq!(s.hints_for(c, 100).expect("hints")[0].record, for_c[0]);
    assert!(s.hints_for(NodeId(3), 100).expect("hints").is_empty());

    // Deleting some leaves the rest.
    let removed = s.delete_hints(&[got[0].delivered(), got[1].delivered()]).expect("delete");
    assert_eq!(removed, vec![true, true]);
    let left = s.hints_for(a, 100).expect("hints");
    assert_eq!(left, got[2..].to_vec());
    assert_eq!(s.hint_targets().expect("targets"), vec![(a, 2), (b, 1), (c, 1)]);
    // Deleting an id twice, or one that never existed, is harmless (and removes nothing).
    let nonsense = (b"nonsense".to_vec(), got[0].record.version);
    let removed = s.delete_hints(&[got[0].delivered(), nonsense]).expect("delete");
    assert_eq!(removed, vec![false, false]);
    assert_eq!(s.delete_hints(&[hb[0].delivered()]).expect("delete"), vec![true]);
    assert_eq!(s.hint_targets().expect("targets"), vec![(a, 2), (c, 1)]);
    let delivered: Vec<_> = left.iter().map(Hint::delivered).collect();
    assert_eq!(s.delete_hints(&delivered).expect("delete"), vec![true, true]);
    assert_eq!(s.hint_targets().expect("targets"), vec![(c, 1)]);
    assert!(s.hints_for(a, 100).expect("hints").is_empty());
    assert_eq!(s.hint_bytes().expect("bytes"), vec![(c, size(&for_c))]);
}

/// One hint per target and key: the newest version is kept whatever order hints arrive in (an
/// older one stored later does not replace it), each put says what it did, and the same key for
/// another target is a hint of its own.
fn hints_keep_only_the_newest_per_target_and_key<S: Storage>(s: &S) {
    let (a, b) = (NodeId(1), NodeId(2));
    let key = b"hot-key";
    let mut kept: Option<Record> = None;
    for i in 1..=100u64 {
        let r = rec(key, i * 10, 5, Some(format!("value {i}").as_bytes()));
        let put = s.put_hints(&[(a, r.clone())]).expect("put");
        let expected = match &kept {
            None => HintPut::Added,
            Some(old) => HintPut::Replaced { bytes: hint_size(old) },
        };
        assert_eq!(put, vec![expected], "overwrite {i}");
        kept = Some(r);
    }
    let newest = kept.expect("kept");
    let records = |t: NodeId| -> Vec<Record> {
        s.hints_for(t, 1000).expect("hints").into_iter().map(|h| h.record).collect()
    };
    assert_eq!(s.hint_targets().expect("targets"), vec![(a, 1)], "100 overwrites, one hint");
    assert_eq!(records(a), vec![newest.clone()]);
    assert_eq!(s.hint_bytes().expect("bytes"), vec![(a, hint_size(&newest))]);

    // Older, or the same version again, arriving later: not stored.
    let older = rec(key, 500, 9, Some(b"late and older"));
    assert_eq!(s.put_hints(&[(a, older)]).expect("put"), vec![HintPut::Kept]);
    assert_eq!(s.put_hints(&[(a, newest.clone())]).expect("put"), vec![HintPut::Kept]);
    assert_eq!(records(a), vec![newest.clone()], "an older hint replaced a newer one");

    // Equal timestamps: the higher node id wins, as for data; a newer tombstone replaces a value.
    let tie = rec(key, newest.version.ts, 6, Some(b"tie"));
    let put = s.put_hints(&[(a, tie.clone())]).expect("put");
    assert_eq!(put, vec![HintPut::Replaced { bytes: hint_size(&newest) }]);
    let tomb = rec(key, 2_000, 5, None);
    let put = s.put_hints(&[(a, tomb.clone())]).expect("put");
    assert_eq!(put, vec![HintPut::Replaced { bytes: hint_size(&tie) }]);
    assert_eq!(records(a), vec![tomb.clone()]);

    // Several versions in one batch, in any order: the newest stays, each replaced one once.
    let (v1, v3, v2) = (
        rec(key, 3_000, 5, Some(b"batch 1")),
        rec(key, 3_300, 5, Some(b"batch 3")),
        rec(key, 3_200, 5, Some(b"batch 2, older than 3")),
    );
    let put = s.put_hints(&[(a, v1.clone()), (a, v3.clone()), (a, v2)]).expect("put");
    assert_eq!(
        put,
        vec![
            HintPut::Replaced { bytes: hint_size(&tomb) },
            HintPut::Replaced { bytes: hint_size(&v1) },
            HintPut::Kept,
        ]
    );
    assert_eq!(records(a), vec![v3.clone()]);

    // The same key for another target is its own hint, even when older.
    let for_b = rec(key, 50, 5, Some(b"for b"));
    assert_eq!(s.put_hints(&[(b, for_b.clone())]).expect("put"), vec![HintPut::Added]);
    assert_eq!(s.hint_targets().expect("targets"), vec![(a, 1), (b, 1)]);
    assert_eq!(records(a), vec![v3.clone()]);
    assert_eq!(records(b), vec![for_b.clone()]);
    assert_eq!(
        s.hint_bytes().expect("bytes"),
        vec![(a, hint_size(&v3)), (b, hint_size(&for_b))],
        "a replaced hint counts no more"
    );
}

/// A replay reads a hint, sends it, and deletes it once delivered; if a newer hint for the same
/// target and key replaced it meanwhile, the deletion must leave the newer one (it has not been
/// delivered).
fn deleting_a_delivered_hint_spares_a_newer_one<S: Storage>(s: &S) {
    let t = NodeId(9);
    let v1 = rec(b"k", 10, 1, Some(b"v1"));
    let other = rec(b"other", 10, 1, Some(b"o"));
    s.put_hints(&[(t, v1.clone()), (t, other.clone())]).expect("put");
    let page = s.hints_for(t, 10).expect("read by the replay");
    assert_eq!(page.len(), 2);
    // Meanwhile, a newer write for `k` is hinted: it replaces the hint being delivered.
    let v2 = rec(b"k", 20, 1, Some(b"v2"));
    let put = s.put_hints(&[(t, v2.clone())]).expect("put");
    assert_eq!(put, vec![HintPut::Replaced { bytes: hint_size(&v1) }]);
    // The replay deletes what it delivered: `other`, but not v2.
    let delivered: Vec<_> = page.iter().map(Hint::delivered).collect();
    let removed = s.delete_hints(&delivered).expect("delete");
    let expected: Vec<bool> = page.iter().map(|h| h.record.key != b"k").collect();
    assert_eq!(removed, expected, "only the hint still at the version delivered is removed");
    let left = s.hints_for(t, 10).expect("hints");
    assert_eq!(left.len(), 1, "the newer hint was deleted with the one it replaced: {left:?}");
    assert_eq!(left[0].record, v2);
    assert_eq!(s.hint_targets().expect("targets"), vec![(t, 1)]);
    assert_eq!(s.hint_bytes().expect("bytes"), vec![(t, hint_size(&v2))]);
    // The next pass delivers v2 and deletes it; given twice, it is removed once.
    let removed = s.delete_hints(&[left[0].delivered(), left[0].delivered()]).expect("delete");
    assert_eq!(removed, vec![true, false]);
    assert!(s.hint_targets().expect("targets").is_empty());
}

/// `apply_checked` names, for each record that asks, the newer version the store held (the write
/// lost to it and is not applied); a newer write is applied; records that do not ask get `None`.
fn apply_checked_names_the_newer_version_held<S: Storage>(s: &S) {
    let v = |ts: u64, node: u128| Some(Version { ts, node: NodeId(node) });
    s.apply(&[rec(b"a", 50, 1, Some(b"a50")), rec(b"b", 50, 1, Some(b"b50"))]).expect("apply");
    let newer = s
        .apply_checked(
            &[
                rec(b"a", 40, 1, Some(b"a40")),
                rec(b"b", 40, 1, Some(b"b40")),
                rec(b"c", 40, 1, Some(b"c40")),
                rec(b"a", 60, 1, Some(b"a60")),
            ],
            &[true, false, true, true],
        )
        .expect("apply_checked");
    assert_eq!(newer, vec![v(50, 1), None, None, None]);
    assert_eq!(get(s, b"a"), Some(rec(b"a", 60, 1, Some(b"a60"))));
    assert_eq!(get(s, b"b"), Some(rec(b"b", 50, 1, Some(b"b50"))));
    assert_eq!(get(s, b"c"), Some(rec(b"c", 40, 1, Some(b"c40"))));
    // A tombstone held is a newer version too.
    s.apply(&[rec(b"d", 70, 2, None)]).expect("apply");
    let newer = s.apply_checked(&[rec(b"d", 65, 1, Some(b"late"))], &[true]).expect("checked");
    assert_eq!(newer, vec![v(70, 2)]);
    assert_eq!(get(s, b"d"), Some(rec(b"d", 70, 2, None)));
}

fn meta_get_put<S: Storage>(s: &S) {
    assert_eq!(s.get_meta("tokens").expect("meta"), None);
    s.put_meta("tokens", b"1,2,3").expect("put");
    s.put_meta("ring-status", b"joining").expect("put");
    assert_eq!(s.get_meta("tokens").expect("meta").as_deref(), Some(&b"1,2,3"[..]));
    s.put_meta("ring-status", b"normal").expect("put");
    assert_eq!(s.get_meta("ring-status").expect("meta").as_deref(), Some(&b"normal"[..]));
    // Metadata is not data.
    assert_eq!(get(s, b"tokens"), None);
    assert!(scan_all(s, Range::FULL, 10).is_empty());
}

macro_rules! conformance {
    ($backend:ident, $make:expr) => {
        mod $backend {
            use super::*;

            #[test]
            fn apply_then_get() {
                super::apply_then_get(&$make.store);
            }
            #[test]
            fn last_write_wins_in_both_orders() {
                super::last_write_wins_in_both_orders(&$make.store);
            }
            #[test]
            fn equal_timestamps_are_broken_by_node_id() {
                super::equal_timestamps_are_broken_by_node_id(&$make.store);
            }
            #[test]
            fn tombstones_are_stored_and_win_by_version() {
                super::tombstones_are_stored_and_win_by_version(&$make.store);
            }
            #[test]
            fn scans_cover_ranges_exactly_once() {
                super::scans_cover_ranges_exactly_once(&$make.store);
            }
            #[test]
            fn scan_sees_only_the_newest_version() {
                super::scan_sees_only_the_newest_version(&$make.store);
            }
            #[test]
            fn scan_pages_are_bounded_in_bytes() {
                super::scan_pages_are_bounded_in_bytes(&$make.store);
            }
            #[test]
            fn hint_pages_are_bounded_in_bytes() {
                super::hint_pages_are_bounded_in_bytes(&$make.store);
            }
            #[test]
            fn hints_round_trip() {
                super::hints_round_trip(&$make.store);
            }
            #[test]
            fn hints_keep_only_the_newest_per_target_and_key() {
                super::hints_keep_only_the_newest_per_target_and_key(&$make.store);
            }
            #[test]
            fn deleting_a_delivered_hint_spares_a_newer_one() {
                super::deleting_a_delivered_hint_spares_a_newer_one(&$make.store);
            }
            #[test]
            fn apply_checked_names_the_newer_version_held() {
                super::apply_checked_names_the_newer_version_held(&$make.store);
            }
            #[test]
            fn meta_get_put() {
                super::meta_get_put(&$make.store);
            }
        }
    };
}

conformance!(mem_storage, mem());
conformance!(rocks_storage, rocks());
conformance!(rocks_storage_without_version_cache, rocks_without_version_cache());

// ---------------------------------------------------------------------------------------------
// RocksDB only.

#[test]
fn rocks_data_hints_and_meta_survive_close_and_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("db");
    // Current timestamps: a tombstone from 1970 would be past the grace period.
    let ts = hlc_ago(Duration::ZERO);
    let value = rec(b"kept", ts, 1, Some(b"v"));
    let tomb = rec(b"gone", ts, 1, None);
    let hint = rec(b"hinted-key-xyz", ts, 1, Some(b"h"));
    {
        let s = RocksStorage::open(&path, &RocksConfig::default()).expect("open");
        s.apply(&[value.clone(), tomb.clone(), rec(b"gone", ts - 1, 1, Some(b"old"))])
            .expect("apply");
        s.put_hints(&[(NodeId(42), hint.clone())]).expect("hints");
        s.put_meta("tokens", b"abc").expect("meta");
    }
    {
        let s = RocksStorage::open(&path, &RocksConfig::default()).expect("reopen");
        assert_eq!(get(&s, b"kept"), Some(value.clone()));
        assert_eq!(get(&s, b"gone"), Some(tomb.clone()));
        assert_eq!(s.hint_targets().expect("targets"), vec![(NodeId(42), 1)]);
        assert_eq!(s.hints_for(NodeId(42), 10).expect("hints")[0].record, hint);
        assert_eq!(s.get_meta("tokens").expect("meta").as_deref(), Some(&b"abc"[..]));
        // The merge operator still applies to what was written before the reopen.
        s.apply(&[rec(b"kept", ts - 1, 9, Some(b"older"))]).expect("apply");
        assert_eq!(get(&s, b"kept"), Some(value.clone()));
        s.compact().expect("compact");
        assert_eq!(get(&s, b"kept"), Some(value.clone()));
        assert_eq!(get(&s, b"gone"), Some(tomb.clone()));
    }
    let s = RocksStorage::open(&path, &RocksConfig::default()).expect("reopen twice");
    assert_eq!(scan_all(&s, Range::FULL, 10), {
        let mut v = vec![value, tomb];
        v.sort_by_key(|r| data_key(&r.key));
        v
    });
}

/// The version cache never answers for a store it does not describe: reopened over existing
/// data it starts empty and incomplete, so versions come from disk, older writes still lose
/// (merged, or dropped once the cache knows the key), and digests match full reads.
#[test]
fn rocks_version_cache_stays_exact_across_reopen_and_eviction() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("db");
    let ts = hlc_ago(Duration::ZERO);
    let cfg = RocksConfig { version_cache: 4, ..RocksConfig::default() };
    let keys: Vec<Vec<u8>> = (0..20).map(|i| format!("key-{i}").into_bytes()).collect();
    {
        let s = RocksStorage::open(&path, &cfg).expect("open");
        for (i, k) in keys.iter().enumerate() {
            s.apply(&[rec(k, ts + 10, i as u128, Some(b"first"))]).expect("apply");
        }
        // More keys than the cache holds: the evicted ones are answered from disk.
        let want: Vec<Option<Version>> = (0..keys.len())
            .map(|i| Some(Version { ts: ts + 10, node: NodeId(i as u128) }))
            .collect();
        let refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
        assert_eq!(s.versions(&refs).expect("versions"), want);
        assert_eq!(s.versions(&[b"never-written"]).expect("versions"), vec![None]);
        let (held, capacity) = s.version_cache().expect("a version cache");
        // Rounded up to whole sets of 5 keys.
        assert_eq!(capacity, 5);
        assert!((1..=5).contains(&held), "{held} keys cached");
    }
    let off = RocksConfig { version_cache: 0, ..RocksConfig::default() };
    assert_eq!(RocksStorage::open(&path, &off).expect("reopen").version_cache(), None);
    let s = RocksStorage::open(&path, &cfg).expect("reopen");
    let k = keys[0].as_slice();
    // Cold cache: an older write is merged and loses; a newer one wins.
    s.apply(&[rec(k, ts + 5, 99, Some(b"older"))]).expect("apply");
    assert_eq!(
        s.versions(&[k]).expect("versions"),
        vec![Some(Version { ts: ts + 10, node: NodeId(0) })]
    );
    assert_eq!(get(&s, k).and_then(|r| r.value).as_deref(), Some(&b"first"[..]));
    // Now cached: older writes are dropped, newer ones put, tombstones too.
    s.apply(&[rec(k, ts + 1, 99, Some(b"older again"))]).expect("apply");
    s.apply(&[rec(k, ts + 20, 1, Some(b"newer"))]).expect("apply");
    assert_eq!(get(&s, k), Some(rec(k, ts + 20, 1, Some(b"newer"))));
    s.apply(&[rec(k, ts + 30, 1, None), rec(k, ts + 25, 2, Some(b"in the same batch"))])
        .expect("apply");
    assert_eq!(get(&s, k), Some(rec(k, ts + 30, 1, None)));
    assert_eq!(
        s.versions(&[k]).expect("versions"),
        vec![Some(Version { ts: ts + 30, node: NodeId(1) })]
    );
    // A key never written, after the reopen: absent, then written.
    assert_eq!(s.versions(&[b"fresh"]).expect("versions"), vec![None]);
    s.apply(&[rec(b"fresh", ts, 3, Some(b"x"))]).expect("apply");
    assert_eq!(get(&s, b"fresh"), Some(rec(b"fresh", ts, 3, Some(b"x"))));
    // Everything still right after compaction (puts and merges folded together).
    s.compact().expect("compact");
    assert_eq!(get(&s, k), Some(rec(k, ts + 30, 1, None)));
    for (i, key) in keys.iter().enumerate().skip(1) {
        assert_eq!(get(&s, key), Some(rec(key, ts + 10, i as u128, Some(b"first"))));
    }
}

/// With a cold version cache (reopened), a write that asks what it lost to reads the stored
/// version: an older one is named and not applied, a newer one replaces what is stored; a key
/// written earlier in the same batch is never overwritten by a later, older record of it.
#[test]
fn rocks_apply_checked_with_a_cold_cache() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("db");
    let ts = hlc_ago(Duration::ZERO);
    let v = |ts: u64, node: u128| Some(Version { ts, node: NodeId(node) });
    {
        let s = RocksStorage::open(&path, &RocksConfig::default()).expect("open");
        let keys: [&[u8]; 4] = [b"k1", b"k2", b"k3", b"k4"];
        for k in keys {
            s.apply(&[rec(k, ts + 10, 1, Some(b"stored"))]).expect("apply");
        }
    }
    let s = RocksStorage::open(&path, &RocksConfig::default()).expect("reopen");
    let newer = s
        .apply_checked(
            &[rec(b"k1", ts + 5, 2, Some(b"older")), rec(b"k2", ts + 20, 2, Some(b"newer"))],
            &[true, true],
        )
        .expect("apply_checked");
    assert_eq!(newer, vec![v(ts + 10, 1), None]);
    assert_eq!(get(&s, b"k1"), Some(rec(b"k1", ts + 10, 1, Some(b"stored"))));
    assert_eq!(get(&s, b"k2"), Some(rec(b"k2", ts + 20, 2, Some(b"newer"))));
    // Same key twice in one batch, the first not asking (merged unread), the second older and
    // asking: the newer first one stays. And the other order.
    let newer = s
        .apply_checked(
            &[
                rec(b"k3", ts + 50, 3, Some(b"k3 newest")),
                rec(b"k3", ts + 40, 3, Some(b"k3 older")),
                rec(b"k4", ts + 40, 3, Some(b"k4 newer")),
                rec(b"k4", ts + 50, 3, Some(b"k4 newest")),
            ],
            &[false, true, true, false],
        )
        .expect("apply_checked");
    assert_eq!(newer[2], None);
    assert_eq!(get(&s, b"k3"), Some(rec(b"k3", ts + 50, 3, Some(b"k3 newest"))));
    assert_eq!(get(&s, b"k4"), Some(rec(b"k4", ts + 50, 3, Some(b"k4 newest"))));
    s.compact().expect("compact");
    assert_eq!(get(&s, b"k1"), Some(rec(b"k1", ts + 10, 1, Some(b"stored"))));
    assert_eq!(get(&s, b"k3"), Some(rec(b"k3", ts + 50, 3, Some(b"k3 newest"))));
}

#[test]
fn rocks_compaction_drops_tombstones_past_the_grace_period() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = RocksConfig { tombstone_grace: Duration::ZERO, ..RocksConfig::default() };
    let s = RocksStorage::open(&dir.path().join("db"), &cfg).expect("open");
    let old_ts = hlc_ago(Duration::from_secs(3600));
    // A plain tombstone, and one over an older value (merged with it in the same compaction).
    let tomb = rec(b"expired", old_ts, 1, None);
    s.apply(std::slice::from_ref(&tomb)).expect("apply");
    s.apply(&[rec(b"expired-over-value", old_ts - (10 << 16), 1, Some(b"v"))]).expect("apply");
    s.apply(&[rec(b"expired-over-value", old_ts, 1, None)]).expect("apply");
    // Old values are never dropped: only tombstones expire.
    let old_value = rec(b"old-value", old_ts, 1, Some(b"still here"));
    s.apply(std::slice::from_ref(&old_value)).expect("apply");
    assert_eq!(get(&s, b"expired"), Some(tomb));
    s.compact().expect("compact");
    // The version cache knew the tombstones; once they may have been compacted away it must not
    // answer for them (digests before any full read).
    assert_eq!(s.versions(&[b"expired", b"expired-over-value"]).expect("versions"), vec![None; 2]);
    assert_eq!(get(&s, b"expired"), None, "an expired tombstone must be dropped by compaction");
    assert_eq!(get(&s, b"expired-over-value"), None, "the value under it must not come back");
    assert_eq!(get(&s, b"old-value"), Some(old_value));
    assert_eq!(scan_all(&s, Range::FULL, 10).len(), 1);
    // The store and its cache agree that the key is gone: a write older than the dropped
    // tombstone is stored like any write to an absent key (the grace period is what keeps such
    // late writes from undoing a delete), not dropped on the cache's word.
    let late = rec(b"expired", old_ts - 1, 1, Some(b"late"));
    s.apply(std::slice::from_ref(&late)).expect("apply");
    assert_eq!(s.versions(&[b"expired"]).expect("versions"), vec![Some(late.version)]);
    assert_eq!(get(&s, b"expired"), Some(late));
}

#[test]
fn rocks_compaction_keeps_tombstones_within_the_grace_period() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = RocksStorage::open(&dir.path().join("db"), &RocksConfig::default()).expect("open");
    let fresh = rec(b"fresh", hlc_ago(Duration::ZERO), 1, None);
    let day_old = rec(b"day-old", hlc_ago(Duration::from_secs(24 * 3600)), 1, None);
    s.apply(&[rec(b"fresh", 1 << 16, 1, Some(b"v")), fresh.clone(), day_old.clone()])
        .expect("apply");
    s.compact().expect("compact");
    assert_eq!(get(&s, b"fresh"), Some(fresh.clone()));
    assert_eq!(get(&s, b"day-old"), Some(day_old));
    // Still there, and still winning, after another compaction and a late older value.
    s.apply(&[rec(b"fresh", 2 << 16, 1, Some(b"late"))]).expect("apply");
    s.compact().expect("compact");
    assert_eq!(get(&s, b"fresh"), Some(fresh));
}

// ---------------------------------------------------------------------------------------------
// The value codec.

#[test]
fn decode_refuses_truncated_and_malformed_values() {
    let v = Version { ts: 0x0102_0304_0506_0708, node: NodeId(0xaabb) };
    let value = encode_value(v, Some(b"payload"));
    let tomb = encode_value(v, None);
    assert_eq!(decode_version(&value), Ok((v, false)));
    assert_eq!(decode_version(&tomb), Ok((v, true)));
    assert_eq!(decode_value(b"k", &value), Ok(rec(b"k", v.ts, v.node.0, Some(b"payload"))));
    assert_eq!(decode_value(b"k", &tomb), Ok(rec(b"k", v.ts, v.node.0, None)));
    for cut in 0..tomb.len() {
        assert!(decode_version(&tomb[..cut]).is_err(), "{cut}-byte prefix accepted");
        assert!(decode_value(b"k", &value[..cut]).is_err(), "{cut}-byte prefix accepted");
    }
    let mut bad_format = value.clone();
    bad_format[0] = 2;
    assert!(decode_value(b"k", &bad_format).is_err());
    let mut bad_flags = value.clone();
    bad_flags[1] = 2;
    assert!(decode_value(b"k", &bad_flags).is_err());
    let mut tomb_with_value = tomb.clone();
    tomb_with_value.push(0);
    assert!(decode_value(b"k", &tomb_with_value).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn decode_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        let version = decode_version(&bytes);
        let record = decode_value(b"key", &bytes);
        prop_assert_eq!(version.is_ok(), record.is_ok());
        if let Ok(r) = record {
            // Whatever decodes re-encodes to the same bytes.
            prop_assert_eq!(encode_value(r.version, r.value.as_deref()), bytes);
        }
    }

    #[test]
    fn decode_never_panics_on_mutated_values(
        ts in any::<u64>(),
        node in any::<u128>(),
        value in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..32)),
        cut in any::<proptest::sample::Index>(),
        flip in any::<proptest::sample::Index>(),
        xor in 1u8..,
    ) {
        let v = Version { ts, node: NodeId(node) };
        let mut bytes = encode_value(v, value.as_deref());
        prop_assert_eq!(decode_value(b"k", &bytes), Ok(Record { key: b"k".to_vec(), version: v, value: value.clone() }));
        let i = flip.index(bytes.len());
        bytes[i] ^= xor;
        let _ = decode_value(b"k", &bytes);
        let _ = decode_version(&bytes);
        let n = cut.index(bytes.len());
        let _ = decode_value(b"k", &bytes[..n]);
        prop_assert!(decode_version(&bytes[..n.min(25)]).is_err());
    }

}

/// Whatever order (and batching) versions of a key arrive in, the store keeps the greatest: the
/// in-memory comparison and RocksDB's merge operator agree. One RocksDB store serves every case
/// (each case its own key) and is closed before the test returns: a process exiting with RocksDB
/// open can crash in its background threads.
#[test]
fn any_arrival_order_keeps_the_greatest_version() {
    use proptest::test_runner::{Config, TestRunner};

    let dir = tempfile::tempdir().expect("tempdir");
    // Three RocksDB stores: with the default version cache (complete: it opened empty), without
    // one (every write a merge), and with a cache of 3 keys (evicting at once: puts, skips and
    // merges mixed).
    let open = |name: &str, version_cache: usize| {
        let cfg = RocksConfig { version_cache, ..RocksConfig::default() };
        RocksStorage::open(&dir.path().join(name), &cfg).expect("open")
    };
    let stores =
        [open("cached", RocksConfig::default().version_cache), open("plain", 0), open("tiny", 3)];
    // Current timestamps, so no tombstone is old enough for compaction to drop.
    let base = hlc_ago(Duration::ZERO);
    let strategy = (
        proptest::collection::btree_set((0u64..6, 0u128..3), 1..8),
        proptest::collection::vec(any::<bool>(), 8),
        any::<u64>(),
        1usize..4,
        proptest::collection::vec(any::<bool>(), 8),
    );
    let case = std::cell::Cell::new(0u64);
    let mut runner = TestRunner::new(Config::with_cases(300));
    let result = runner.run(&strategy, |(versions, dels, order, batch, reads)| {
        case.set(case.get() + 1);
        let key = format!("case-{}", case.get());
        let mut records: Vec<Record> = versions
            .iter()
            .zip(&dels)
            .map(|(&(ts, node), &del)| {
                let v = format!("{ts}-{node}");
                rec(key.as_bytes(), base + ts, node, (!del).then_some(v.as_bytes()))
            })
            .collect();
        let newest = records.iter().max_by_key(|r| r.version).cloned().expect("non-empty");
        // A deterministic shuffle from the generated seed.
        let mut seed = order | 1;
        for i in (1..records.len()).rev() {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            records.swap(i, (seed % (i as u64 + 1)) as usize);
        }
        let m = MemStorage::new();
        let k = key.as_bytes();
        for (chunk, read) in records.chunks(batch).zip(reads.iter().cycle()) {
            m.apply(chunk).expect("apply");
            for rocks in &stores {
                rocks.apply(chunk).expect("apply");
                // A read in between puts the key's version in the cache (or refreshes it).
                if *read {
                    prop_assert_eq!(rocks.get(k).expect("get"), m.get(k).expect("get"));
                }
            }
        }
        prop_assert_eq!(m.get(k).expect("get"), Some(newest.clone()));
        for rocks in &stores {
            prop_assert_eq!(rocks.versions(&[k]).expect("versions"), vec![Some(newest.version)]);
            prop_assert_eq!(rocks.get(k).expect("get"), Some(newest.clone()));
        }
        Ok(())
    });
    drop(stores);
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// The version cache under concurrency: writer threads apply random versions of a few keys while
/// reader threads fill the cache through `get`, `get_many` and `versions`, with a cache small
/// enough to evict all the time. Afterwards every key holds its greatest version, and digests
/// agree with full reads.
#[test]
fn version_cache_stays_exact_under_concurrent_writers_and_readers() {
    use rand::{Rng, SeedableRng};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = RocksConfig { version_cache: 8, ..RocksConfig::default() };
    let s = Arc::new(RocksStorage::open(&dir.path().join("db"), &cfg).expect("open"));
    let base = hlc_ago(Duration::ZERO);
    let keys: Arc<Vec<Vec<u8>>> = Arc::new((0..6).map(|i| format!("k{i}").into_bytes()).collect());
    // The record of a version is a function of it, so repeats are identical.
    let record = |key: &[u8], ts: u64, node: u128| {
        let tomb = (ts + node as u64).is_multiple_of(5);
        let value = format!("{ts}-{node}");
        rec(key, ts, node, (!tomb).then_some(value.as_bytes()))
    };
    let done = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..3u64)
        .map(|t| {
            let (s, keys, done) = (s.clone(), keys.clone(), done.clone());
            std::thread::spawn(move || {
                let mut rng = rand::rngs::StdRng::seed_from_u64(100 + t);
                while !done.load(Ordering::Relaxed) {
                    let a = &keys[rng.gen_range(0..keys.len())];
                    let b = &keys[rng.gen_range(0..keys.len())];
                    match rng.gen_range(0..3) {
                        0 => drop(s.get(a).expect("get")),
                        1 => drop(s.get_many(&[a, b]).expect("get_many")),
                        _ => drop(s.versions(&[a, b]).expect("versions")),
                    }
                }
            })
        })
        .collect();
    let writers: Vec<_> = (1..=3u128)
        .map(|node| {
            let (s, keys) = (s.clone(), keys.clone());
            std::thread::spawn(move || {
                let mut rng = rand::rngs::StdRng::seed_from_u64(node as u64);
                let mut newest: Vec<Option<Version>> = vec![None; keys.len()];
                for _ in 0..4000 {
                    let batch: Vec<Record> = (0..rng.gen_range(1..4))
                        .map(|_| {
                            let i = rng.gen_range(0..keys.len());
                            let ts = base + rng.gen_range(0..400u64);
                            let v = Version { ts, node: NodeId(node) };
                            newest[i] = newest[i].max(Some(v));
                            record(&keys[i], ts, node)
                        })
                        .collect();
                    s.apply(&batch).expect("apply");
                }
                newest
            })
        })
        .collect();
    let mut newest: Vec<Option<Version>> = vec![None; keys.len()];
    for w in writers {
        for (n, v) in newest.iter_mut().zip(w.join().expect("writer")) {
            *n = (*n).max(v);
        }
    }
    done.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().expect("reader");
    }
    for (key, want) in keys.iter().zip(&newest) {
        let want = want.map(|v| record(key, v.ts, v.node.0));
        assert_eq!(s.versions(&[key]).expect("versions"), vec![want.as_ref().map(|r| r.version)]);
        assert_eq!(get(&*s, key), want);
        // And once more after the full read has refreshed the cache.
        assert_eq!(s.versions(&[key]).expect("versions"), vec![want.as_ref().map(|r| r.version)]);
    }
}

#[test]
fn rocks_compaction_keeps_tombstones_until_a_complete_repair_covered_them() {
    use starling_node::storage::PurgeGate;
    let dir = tempfile::tempdir().expect("tempdir");
    let gate = std::sync::Arc::new(PurgeGate::default());
    let cfg = RocksConfig {
        tombstone_grace: Duration::ZERO,
        purge_gate: Some(gate.clone()),
        ..RocksConfig::default()
    };
    let s = RocksStorage::open(&dir.path().join("db"), &cfg).expect("open");
    let old_ts = hlc_ago(Duration::from_secs(3600));
    let tomb = rec(b"deleted", old_ts, 1, None);
    s.apply(std::slice::from_ref(&tomb)).expect("apply");
    // Past the grace period, but no repair yet: kept, however old.
    s.compact().expect("compact");
    assert_eq!(get(&s, b"deleted"), Some(tomb.clone()));
    // A complete repair that started before the delete covers nothing.
    let t = token_of(b"deleted");
    let around = Range { start: t.wrapping_sub(10), end: t.wrapping_add(10) };
    gate.set(vec![(around, (old_ts >> 16) - 1)]);
    s.compact().expect("compact");
    assert_eq!(get(&s, b"deleted"), Some(tomb.clone()));
    // One of another range neither.
    let elsewhere = Range { start: t.wrapping_add(10), end: t.wrapping_add(20) };
    gate.set(vec![(elsewhere, (old_ts >> 16) + 1000)]);
    s.compact().expect("compact");
    assert_eq!(get(&s, b"deleted"), Some(tomb));
    let (purged, held) = gate.counts();
    assert_eq!(purged, 0);
    assert!(held >= 3, "held {held}: each compaction that kept it counts it");
    // A complete repair of its range that started after it: purged.
    gate.set(vec![(around, (old_ts >> 16) + 1)]);
    s.compact().expect("compact");
    assert_eq!(get(&s, b"deleted"), None);
    assert_eq!(gate.counts(), (1, held), "one tombstone purged");
}

#[test]
fn drop_range_deletes_only_that_range_and_an_older_write_is_stored_after_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rocks = RocksStorage::open(&dir.path().join("db"), &RocksConfig::default()).expect("open");
    let mem = MemStorage::new();
    let stores: [&dyn Storage; 2] = [&rocks, &mem];
    for s in stores {
        let keys: Vec<Vec<u8>> = (0..200).map(|i| format!("key-{i}").into_bytes()).collect();
        let records: Vec<Record> = keys.iter().map(|k| rec(k, 50 << 16, 1, Some(b"v"))).collect();
        s.apply(&records).expect("apply");
        let range = Range { start: u64::MAX / 4, end: u64::MAX / 2 };
        let inside = keys.iter().filter(|k| range.contains(token_of(k))).count() as u64;
        assert!(inside > 0);
        assert_eq!(s.drop_range(range, &|| true).expect("drop"), inside);
        for k in &keys {
            let held = s.get(k).expect("get");
            assert_eq!(held.is_none(), range.contains(token_of(k)), "{k:?}");
        }
        // A key of the dropped range written again with an older version (streamed back one day)
        // is stored: nothing remembers the version that was deleted.
        let k = keys.iter().find(|k| range.contains(token_of(k))).expect("a key inside");
        let older = rec(k, 10 << 16, 1, Some(b"older"));
        s.apply(std::slice::from_ref(&older)).expect("apply");
        assert_eq!(s.get(k).expect("get"), Some(older));
    }
}

/// A cleanup whose ring moves while it runs stops between batches: what was not yet deleted is
/// kept (the range may be this node's again, and writes to it may be arriving).
#[test]
fn drop_range_stops_between_batches_once_told_to() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rocks = RocksStorage::open(&dir.path().join("db"), &RocksConfig::default()).expect("open");
    let mem = MemStorage::new();
    // RocksDB deletes in batches of 1,024; the in-memory store in one step.
    let stores: [(&dyn Storage, bool); 2] = [(&rocks, true), (&mem, false)];
    for (s, batched) in stores {
        let keys: Vec<Vec<u8>> = (0..3000).map(|i| format!("k-{i}").into_bytes()).collect();
        let records: Vec<Record> = keys.iter().map(|k| rec(k, 50 << 16, 1, Some(b"v"))).collect();
        s.apply(&records).expect("apply");
        // Told to stop at once: nothing is deleted.
        assert_eq!(s.drop_range(Range::FULL, &|| false).expect("drop"), 0);
        assert!(keys.iter().all(|k| s.get(k).expect("get").is_some()));
        // Told to stop after the first batch: the store keeps the rest.
        let asked = std::cell::Cell::new(0);
        let go_on = || {
            asked.set(asked.get() + 1);
            asked.get() == 1
        };
        let dropped = s.drop_range(Range::FULL, &go_on).expect("drop");
        let left = keys.iter().filter(|k| s.get(k).expect("get").is_some()).count() as u64;
        assert_eq!(dropped + left, keys.len() as u64, "every key deleted and counted, or kept");
        if batched {
            assert_eq!(dropped, 1024, "one batch");
        } else {
            assert_eq!(left, 0);
        }
    }
}
