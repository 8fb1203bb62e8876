//! Two in-memory replicas diverge at random; one session makes them equal, moving about what
//! differs.

use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use starling_merkle::mem::MemReplica;
use starling_merkle::{respond, Replica, Session};
use starling_wire::repair::{RepairRequest, RepairResponse, TokenRange};
use starling_wire::{NodeId, Record, Version};

type Mem = MemReplica;

trait Put {
    fn put(&self, r: Record);
}

impl Put for MemReplica {
    fn put(&self, r: Record) {
        self.apply(&[r]).unwrap();
    }
}

/// Runs a session from `a` to `b` over the wire encoding; returns (requests, bytes both ways).
fn sync(a: &Mem, b: &Mem, ranges: &[TokenRange]) -> (u64, usize) {
    let mut s = Session::new(a.segments().bits(), ranges.iter().copied());
    let mut bytes = 0;
    while let Some(req) = s.poll_request(a).unwrap() {
        let wire = rmp_serde::to_vec_named(&req).unwrap();
        bytes += wire.len();
        let req: RepairRequest = rmp_serde::from_slice(&wire).unwrap();
        let resp = respond(b, &req);
        let wire = rmp_serde::to_vec_named(&resp).unwrap();
        bytes += wire.len();
        let resp: RepairResponse = rmp_serde::from_slice(&wire).unwrap();
        s.on_response(a, resp).unwrap();
    }
    assert!(s.is_done());
    (s.stats().requests, bytes)
}

fn record(key: u32, ts: u64, node: u128, tombstone: bool) -> Record {
    Record {
        key: format!("key-{key}").into_bytes(),
        version: Version { ts, node: NodeId(node) },
        value: (!tombstone).then(|| vec![b'v'; 100]),
    }
}

#[derive(Debug, Clone)]
enum Change {
    OnlyA(u32),
    OnlyB(u32),
    Newer { key: u32, on_a: bool, tombstone: bool },
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        (0u32..5000).prop_map(Change::OnlyA),
        (0u32..5000).prop_map(Change::OnlyB),
        (0u32..5000, any::<bool>(), any::<bool>())
            .prop_map(|(key, on_a, tombstone)| Change::Newer { key, on_a, tombstone }),
    ]
}

fn ranges() -> impl Strategy<Value = Vec<TokenRange>> {
    prop_oneof![
        Just(vec![TokenRange { start: 0, end: 0 }]),
        prop::collection::vec(any::<u64>(), 1..12).prop_map(|mut ends| {
            ends.sort_unstable();
            ends.dedup();
            (0..ends.len())
                .map(|i| TokenRange {
                    start: ends[(i + ends.len() - 1) % ends.len()],
                    end: ends[i],
                })
                .map(|r| if ends.len() == 1 { TokenRange { start: r.end, end: r.end } } else { r })
                .collect()
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn one_session_makes_two_replicas_equal(
        common in 0u32..3000,
        changes in prop::collection::vec(change(), 0..200),
        bits in prop_oneof![Just(4u8), Just(8u8), Just(12u8)],
        ranges in ranges(),
    ) {
        let (a, b) = (Mem::new(bits), Mem::new(bits));
        for k in 0..common {
            a.put(record(k, 100, 1, false));
            b.put(record(k, 100, 1, false));
        }
        for (i, c) in changes.iter().enumerate() {
            let ts = 1000 + i as u64;
            match *c {
                Change::OnlyA(k) => a.put(record(k + 10_000, ts, 2, false)),
                Change::OnlyB(k) => b.put(record(k + 10_000, ts, 3, false)),
                Change::Newer { key, on_a, tombstone } => {
                    let side = if on_a { &a } else { &b };
                    side.put(record(key, ts, 4, tombstone));
                }
            }
        }
        // What both should hold: the newest version of every key either holds.
        let union = Mem::new(bits);
        union.apply(&a.snapshot()).unwrap();
        union.apply(&b.snapshot()).unwrap();
        sync(&a, &b, &ranges);
        prop_assert_eq!(a.snapshot(), union.snapshot());
        prop_assert_eq!(b.snapshot(), union.snapshot());
        // A second session finds nothing: equal roots, one request.
        let (requests, _) = sync(&a, &b, &ranges);
        prop_assert_eq!(requests, 1);
    }
}

fn filled(n: u32, bits: u8) -> (Mem, Mem) {
    let (a, b) = (Mem::new(bits), Mem::new(bits));
    for k in 0..n {
        a.put(record(k, 100, 1, false));
        b.put(record(k, 100, 1, false));
    }
    (a, b)
}

#[test]
fn one_differing_key_costs_a_few_hundred_bytes_not_a_leaf_of_records() {
    let (a, b) = filled(100_000, 12);
    b.put(record(77, 200, 2, false));
    let full = [TokenRange { start: 0, end: 0 }];
    let (requests, bytes) = sync(&a, &b, &full);
    assert_eq!(a.snapshot(), b.snapshot());
    // roots, 2 levels of children, entries, push-free: 4 requests; a few KiB at most.
    assert!(requests <= 5, "{requests} requests");
    assert!(bytes < 4096, "{bytes} bytes for one key");
}

#[test]
fn identical_replicas_exchange_one_root_per_range() {
    let (a, b) = filled(20_000, 12);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let mut ends: Vec<u64> = (0..48).map(|_| rng.gen()).collect();
    ends.sort_unstable();
    let ranges: Vec<TokenRange> =
        (0..48).map(|i| TokenRange { start: ends[(i + 47) % 48], end: ends[i] }).collect();
    let (requests, bytes) = sync(&a, &b, &ranges);
    assert_eq!(requests, 1);
    assert!(bytes < 48 * 40, "{bytes} bytes");
}

#[test]
fn a_refused_grain_fails_the_session_cleanly() {
    let (a, b) = (Mem::new(8), Mem::new(12));
    a.put(record(1, 1, 1, false));
    let mut s = Session::new(8, [TokenRange { start: 0, end: 0 }]);
    let req = s.poll_request(&a).unwrap().unwrap();
    let resp = respond(&b, &req);
    let err = s.on_response(&a, resp).unwrap_err();
    assert!(err.to_string().contains("segment grain differs"), "{err}");
}

#[test]
fn a_responder_refuses_nodes_that_do_not_exist() {
    let b = Mem::new(8);
    let req = RepairRequest::Children {
        segment_bits: 8,
        items: vec![starling_wire::repair::Descend {
            range: TokenRange { start: 0, end: 0 },
            level: 9,
            nodes: vec![0],
        }],
    };
    assert!(matches!(respond(&b, &req), RepairResponse::Refused(_)));
}

/// Records larger than an answer's budget: a leaf holding 12 MB is sent in pieces (each answer
/// under the 4 MiB frame limit), both ways, and the replicas converge.
#[test]
fn a_leaf_larger_than_an_answer_goes_in_pieces() {
    for initiator_has_them in [false, true] {
        // Two segments: about 6 MB of records in each leaf.
        let (a, b) = (Mem::new(1), Mem::new(1));
        let full = if initiator_has_them { &a } else { &b };
        for k in 0..40u32 {
            full.put(Record {
                key: format!("big-{k}").into_bytes(),
                version: Version { ts: 5 << 16, node: NodeId(1) },
                value: Some(vec![b'x'; 300 << 10]),
            });
        }
        let mut s = Session::new(1, [TokenRange { start: 0, end: 0 }]);
        let mut largest = 0;
        while let Some(req) = s.poll_request(&a).unwrap() {
            largest = largest.max(rmp_serde::to_vec_named(&req).unwrap().len());
            let resp = respond(&b, &req);
            largest = largest.max(rmp_serde::to_vec_named(&resp).unwrap().len());
            s.on_response(&a, resp).unwrap();
        }
        assert_eq!(a.snapshot(), b.snapshot());
        assert_eq!(a.snapshot().len(), 40);
        assert!(largest < 4 << 20, "a message of {largest} bytes");
    }
}
