//! Fuzz target `repair_message`: anti-entropy's messages, to both sides of a session.

use starling_merkle::mem::MemReplica;
use starling_merkle::{respond, Replica, Session};
use starling_wire::repair::{RepairRequest, RepairResponse, TokenRange};
use starling_wire::{NodeId, Record, Version};

/// The fuzz replicas' grain (1,024 segments: small trees, every level exercised).
const BITS: u8 = 10;

fn replica(n: u32, newer_every: u32) -> MemReplica {
    let r = MemReplica::new(BITS);
    let records: Vec<Record> = (0..n)
        .map(|k| Record {
            key: format!("key-{k}").into_bytes(),
            version: Version {
                ts: if newer_every > 0 && k % newer_every == 0 { 9 << 16 } else { 1 << 16 },
                node: NodeId(1),
            },
            value: (k % 7 != 0).then(|| vec![b'v'; 16]),
        })
        .collect();
    r.apply(&records).expect("memory");
    r
}

/// Fuzz target `repair_message`: repair requests and answers (msgpack, as `PeerRequest::Repair`
/// and `Response::Repair` carry them). Decoding never panics and what decodes encodes back to an
/// equal message. Each step's first byte picks a side: even, a request answered by a responder
/// holding 300 records (bounds refused, never a panic); odd, an answer fed to an initiator in the
/// middle of comparing a replica that differs (a wrong answer fails its session, never panics).
pub fn repair_message(data: &[u8]) {
    let responder = replica(300, 0);
    let initiator = replica(280, 9);
    let mut session = Some(Session::new(BITS, [TokenRange { start: 0, end: 0 }]));
    if let Some(s) = session.as_mut() {
        let _ = s.poll_request(&initiator);
    }
    for (op, bytes) in crate::input::steps(data) {
        if op & 1 == 0 {
            let Ok(req) = rmp_serde::from_slice::<RepairRequest>(bytes) else { continue };
            let again = rmp_serde::to_vec_named(&req).expect("a decoded request encodes");
            assert_eq!(rmp_serde::from_slice::<RepairRequest>(&again).expect("re-decodes"), req);
            let _ = respond(&responder, &req);
        } else if let Some(s) = session.as_mut() {
            let Ok(resp) = rmp_serde::from_slice::<RepairResponse>(bytes) else { continue };
            let again = rmp_serde::to_vec_named(&resp).expect("a decoded answer encodes");
            assert_eq!(rmp_serde::from_slice::<RepairResponse>(&again).expect("re-decodes"), resp);
            let ok = s.on_response(&initiator, resp).is_ok()
                && matches!(s.poll_request(&initiator), Ok(Some(_)));
            if !ok {
                session = None;
            }
        }
    }
}

/// Seeds for `repair_message`: a real session's requests and answers, in order.
pub(crate) fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let (a, b) = (replica(280, 9), replica(300, 0));
    let mut s = Session::new(BITS, [TokenRange { start: 0, end: 0 }]);
    let mut all = Vec::new();
    let mut out = Vec::new();
    let mut i = 0;
    while let Ok(Some(req)) = s.poll_request(&a) {
        let resp = respond(&b, &req);
        for (op, bytes) in [
            (0u8, rmp_serde::to_vec_named(&req).expect("encode")),
            (1u8, rmp_serde::to_vec_named(&resp).expect("encode")),
        ] {
            let mut one = Vec::new();
            crate::input::step(&mut one, op, &bytes);
            out.push(("repair_message", format!("message-{i}"), one));
            crate::input::step(&mut all, op, &bytes);
            i += 1;
        }
        if s.on_response(&a, resp).is_err() {
            break;
        }
    }
    out.push(("repair_message", "session".into(), all));
    out
}
