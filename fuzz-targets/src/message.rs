//! Request and response bodies (msgpack) and the status document (JSON).

use serde::de::DeserializeOwned;
use serde::Serialize;
use starling_wire::status::Status;
use starling_wire::{
    answer_of, check_key_value, decode_body, ClientRequest, Clock, Echo, Get, GetStatus, KvRequest,
    Leave, PeerRequest, Put, ReplicaHint, ReplicaRead, ReplicaReadMany, ReplicaRequest,
    ReplicaScan, ReplicaVersions, ReplicaWrite, Request, Response,
};

/// Fuzz target `wire_message`: `data` is the body of a request or response frame.
///
/// Checks: decoding as a [`Request`] and as a [`Response`] ([`decode_body`], as frames are
/// decoded) never panics, nor overflows the stack of a debug build's thread; what decodes encodes
/// (with field names, as frames are written) and decodes back to the same message, canonically;
/// naming it, checking its key and value, and taking each call's answer out of it never panic; a
/// gossip payload inside goes through the gossip decoder.
pub fn wire_message(data: &[u8]) {
    if let Ok(req) = decode_body::<Request>(data) {
        round_trip(&req);
        check_request(&req);
    }
    if let Ok(resp) = decode_body::<Response>(data) {
        round_trip(&resp);
        check_response(&resp);
    }
}

/// What a node does with a request before serving it: name it, check who may send it, check
/// keys and values; a gossip payload is decoded by the gossip core.
pub(crate) fn check_request(req: &Request) {
    assert!(!req.kind().is_empty());
    assert_eq!(req.is_peer_rpc(), matches!(req, Request::Peer(_)));
    match req {
        Request::Client(ClientRequest::Kv(KvRequest::Put(p))) => {
            let _ = check_key_value(&p.key, p.value.as_deref());
        }
        Request::Client(ClientRequest::Kv(KvRequest::Get(g))) => {
            let _ = check_key_value(&g.key, None);
        }
        Request::Peer(PeerRequest::Gossip(payload)) => crate::gossip_message(payload),
        Request::Peer(PeerRequest::Replica(ReplicaRequest::Write(records)))
        | Request::Peer(PeerRequest::Replica(ReplicaRequest::Hint(ReplicaHint {
            records, ..
        }))) => {
            for r in records {
                let _ = check_key_value(&r.key, r.value.as_deref());
                let _ = r.version.millis();
            }
        }
        _ => {}
    }
}

/// What a caller does with a response: take each call's answer out of it (the wrong shape is an
/// error, never a panic) and name it.
pub(crate) fn check_response(resp: &Response) {
    assert!(!resp.kind().is_empty());
    let r = || resp.clone();
    let answers = [
        answer_of::<Put>(r()).is_ok(),
        answer_of::<Get>(r()).is_ok(),
        answer_of::<GetStatus>(r()).is_ok(),
        answer_of::<Echo>(r()).is_ok(),
        answer_of::<Leave>(r()).is_ok(),
        answer_of::<Clock>(r()).is_ok(),
        answer_of::<ReplicaWrite>(r()).is_ok(),
        answer_of::<ReplicaRead>(r()).is_ok(),
        answer_of::<ReplicaReadMany>(r()).is_ok(),
        answer_of::<ReplicaVersions>(r()).is_ok(),
        answer_of::<ReplicaScan>(r()).is_ok(),
        answer_of::<ReplicaHint>(r()).is_ok(),
    ];
    // `Response::Ok` answers both `Leave` and `ReplicaHint`; `Response::Echo` only `Echo`, ...
    assert!(answers.iter().filter(|ok| **ok).count() <= 2);
    if let Err(e) = answer_of::<Put>(r()) {
        assert!(!e.to_string().is_empty());
    }
    if let Response::Status(json) = resp {
        status_json(json);
    }
}

/// Encodes as frames do (named fields), decodes, and checks nothing changed and the encoding is
/// canonical.
fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(msg: &T) {
    let bytes = rmp_serde::to_vec_named(msg).expect("a decoded message encodes");
    let back: T = decode_body(&bytes).expect("its encoding decodes");
    assert_eq!(&back, msg, "round trip changed the message");
    assert_eq!(rmp_serde::to_vec_named(&back).expect("encodes"), bytes, "not canonical");
}

/// Fuzz target `status_json`: `data` is the JSON status document a node sends a client
/// (`starling status`, the status page's data).
///
/// Checks: decoding never panics; what decodes encodes and decodes back to the same document.
pub fn status_json(data: &[u8]) {
    let Ok(status) = serde_json::from_slice::<Status>(data) else { return };
    let json = serde_json::to_vec(&status).expect("a decoded status encodes");
    let back: Status = serde_json::from_slice(&json).expect("its encoding decodes");
    assert_eq!(back, status, "round trip changed the status");
    for state in ["alive", "suspect", "down", "left"] {
        let _ = status.count(state);
    }
}
