//! Starling's wire protocol: the one place where client and peer messages are defined.
//!
//! Peers and clients exchange length-prefixed [`frame`]s on long-lived QUIC streams. Each frame
//! carries a version, a [`FrameKind`], a request id (responses echo it, which is what lets many
//! requests be in flight on one stream) and an `rmp-serde` body: a [`Request`] or a [`Response`].
//! Requests are split into a client API and a peer API, each typed per subsystem, with one struct
//! per call that knows its answer's type ([`Call`]); see [`message`](crate::Call).
//!
//! IO contract: this crate does no IO. Senders append frames to a buffer ([`encode_request`] and
//! friends) and write the buffer however they like; receivers [`FrameDecoder::feed`] whatever bytes
//! arrived and pop frames. Every input from the network is checked and refused with a
//! [`FrameError`] that names what was wrong; nothing here panics on received bytes.
//!
//! ```
//! use starling_wire::{encode_request, encode_response, Call, Echo, FrameDecoder, FrameKind, GetStatus, Response};
//!
//! // The client pipelines two requests in one write.
//! let mut out = Vec::new();
//! encode_request(&mut out, 1, &GetStatus.into_request()).unwrap();
//! encode_request(&mut out, 2, &Echo(b"hi".to_vec()).into_request()).unwrap();
//!
//! // The server may receive them split anywhere.
//! let mut dec = FrameDecoder::new();
//! dec.feed(&out[..5]);
//! assert!(dec.decode().unwrap().is_none());
//! dec.feed(&out[5..]);
//! let first = dec.decode().unwrap().unwrap();
//! assert_eq!((first.kind, first.id), (FrameKind::Request, 1));
//! assert_eq!(first.request().unwrap(), GetStatus.into_request());
//! let second = dec.decode().unwrap().unwrap();
//! assert_eq!(second.request().unwrap(), Echo(b"hi".to_vec()).into_request());
//!
//! // And answers by id.
//! let mut back = Vec::new();
//! encode_response(&mut back, second.id, &Echo::respond(b"hi".to_vec())).unwrap();
//! ```

mod bin;
pub mod frame;
pub mod kv;
mod message;
pub mod meta;
pub mod repair;
pub mod status;
pub mod topic;

pub use frame::{
    decode_body, encode, encode_one_way, encode_request, encode_response, Frame, FrameDecoder,
    FrameError, FrameKind, HEADER_LEN, MAX_BODY_DEPTH, MAX_ONEWAY_BODY, MAX_REQUEST_BODY,
    MAX_RESPONSE_BODY, VERSION,
};
pub use kv::{
    check_key_value, Consistency, Key, NodeId, ReadAnswer, Record, Version, MAX_BATCH_BYTES,
    MAX_KEY_BYTES, MAX_VALUE_BYTES,
};
pub use message::{
    answer_of, AnswerError, Call, ClientRequest, Clock, Echo, ErrorCode, Get, GetStatus, KvRequest,
    KvResponse, Leave, Page, PeerRequest, Put, ReplicaHint, ReplicaRead, ReplicaReadMany,
    ReplicaRequest, ReplicaResponse, ReplicaScan, ReplicaVersions, ReplicaWrite, Request, Response,
    Value, Written,
};
