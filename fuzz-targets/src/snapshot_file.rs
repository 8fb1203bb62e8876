//! The metadata service's snapshot files ([`starling_store_format::snapshot_file`]).

use starling_store_format::snapshot_file::{decode, encode};

/// Most bytes a fuzzed header may claim (a zstd frame expands up to thousands of times).
const LIMIT: u64 = 1 << 20;

/// Decodes a snapshot file; one that decodes encodes again to a file that decodes the same.
pub fn meta_snapshot_file(data: &[u8]) {
    match decode(data.to_vec(), LIMIT) {
        Ok((zxid, snap)) => {
            assert!(snap.len() as u64 <= LIMIT);
            let again = encode(zxid, &snap).expect("encodes");
            assert_eq!(decode(again, LIMIT).expect("decodes again"), (zxid, snap));
        }
        Err(e) => assert!(!e.is_empty()),
    }
}

/// A metadata journal segment ([`starling_store_format::meta_journal`]): the input read as a
/// segment's records, and as one record's operations (a fuzzed input seldom checks, so the
/// operations' decoder is fed directly too). Nothing panics; what decodes encodes back to the
/// same bytes; a record read back is the one written there, and no other segment or offset
/// reads it.
pub fn meta_journal(data: &[u8]) {
    use starling_store_format::meta_journal::{decode, encode, read_record, record, Op, HEADER};
    let ops_round_trip = |body: &[u8]| {
        if let Ok(ops) = decode(body) {
            assert_eq!(encode(&ops), body, "operations re-encode to other bytes");
        }
    };
    ops_round_trip(data);
    // As the journal reads a segment: the checkpoint with salt 0, then its salt.
    let (mut at, mut salt) = (0usize, 0u64);
    while let Some(body) = data.get(at..).and_then(|rest| read_record(rest, 1, salt, at as u64)) {
        ops_round_trip(body);
        let mut again = Vec::new();
        record(&mut again, 1, salt, at as u64, body).expect("a record read back is written again");
        assert_eq!(again, data[at..at + HEADER + body.len()]);
        assert!(read_record(&data[at..], 2, salt, at as u64).is_none());
        if at == 0 {
            if let Some(Op::Salt(s)) = decode(body)
                .ok()
                .and_then(|ops| ops.into_iter().find(|op| matches!(op, Op::Salt(_))))
            {
                salt = s;
            }
        }
        at += HEADER + body.len();
    }
}

/// A segment as the journal writes one: a checkpoint, a batch of proposals, its end.
pub(crate) fn meta_journal_seed() -> Vec<u8> {
    use starling_store_format::meta_journal::{record, Writer};
    let mut seg = Vec::new();
    let mut w = Writer::default();
    w.accepted(2, 7);
    w.current(2);
    w.compact_through(0x1_0000_0003);
    w.leader_snapshot(Some(0x1_0000_0003));
    w.voters(&[1, 2, 3]);
    w.salt(0x5a17);
    record(&mut seg, 1, 0, 0, &w.body).expect("record");
    let mut w = Writer::default();
    w.append(
        [(0x2_0000_0001u64, b"create /a".as_slice()), (0x2_0000_0002, b"set /a 1")].into_iter(),
    );
    w.truncate_after(0x2_0000_0001);
    w.reset_log(0x2_0000_0000);
    w.leader_snapshot(None);
    let at = seg.len() as u64;
    record(&mut seg, 1, 0x5a17, at, &w.body).expect("record");
    let mut w = Writer::default();
    w.end_of_segment();
    let at = seg.len() as u64;
    record(&mut seg, 1, 0x5a17, at, &w.body).expect("record");
    seg.extend_from_slice(&[0; 16]);
    seg
}
