//! The metadata service's calls: ZooKeeper's data model (znodes, sessions, `multi`, watches)
//! served by every node, replicated with ZAB among the voters.
//!
//! Writes go to the ZAB leader (a node that does not lead forwards them) and are answered once
//! the receiving node has applied them, so a client reads its own writes on the node it asked.
//! Reads are served from the receiving node's copy, which may lag the leader; [`MetaSync`] first
//! waits until the node has applied everything the leader had committed (ZooKeeper's `sync`).
//! Every answer carries the zxid of the node's state it was read from: a client that moves to
//! another node passes the highest zxid it has seen (`after`) and that node waits until it has
//! applied as much, so what a client has seen never goes back in time.

use serde::{Deserialize, Serialize};
pub use starling_meta::{
    MetaError, Op, OpResult, Stat, TxnOp, WatchKind, WatchedEvent, MAX_DATA, MAX_PATH,
};
pub use starling_zab::Zxid;

use crate::message::{Call, ClientRequest, PeerRequest, Request, Response};
use crate::NodeId;

/// The metadata service's client calls.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaRequest {
    /// See [`MetaOpenSession`].
    OpenSession(MetaOpenSession),
    /// See [`MetaPing`].
    Ping(MetaPing),
    /// See [`MetaCloseSession`].
    CloseSession(MetaCloseSession),
    /// See [`MetaWrite`].
    Write(MetaWrite),
    /// See [`MetaRead`].
    Read(MetaRead),
    /// See [`MetaSync`].
    Sync(MetaSync),
    /// See [`MetaWatch`].
    Watch(MetaWatch),
}

/// Peer messages of the metadata service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaPeerRequest {
    /// ZAB messages (`starling_zab::Msg`, encoded) from node `from`, in order. Answered with
    /// [`Response::Ok`] once queued.
    Zab {
        from: NodeId,
        #[serde(with = "crate::bin::list")]
        msgs: Vec<Vec<u8>>,
    },
    /// A write forwarded to the leader. Answered with [`MetaWritten`] once committed.
    Propose(TxnOp),
    /// Client sessions heard from on the sending node (the leader expires the silent ones).
    /// Answered with [`Response::Ok`].
    Touch(Vec<u64>),
    /// The leader's committed zxid (for [`MetaSync`]). Answered with [`MetaSynced`].
    LeaderZxid,
}

/// Answers of the metadata calls.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaResponse {
    Session(MetaSession),
    Written(MetaWritten),
    Read(MetaReadAnswer),
    Synced(MetaSynced),
    Watched(MetaWatched),
    /// The operation was refused by the data model (no such znode, bad version, bad path ...).
    Failed(MetaError),
}

/// Client: open a session with this timeout (the node clamps it to 1 s ..= 60 s). Ephemeral
/// znodes belong to a session and go when it ends: closed, or expired by the leader after the
/// timeout without a [`MetaPing`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaOpenSession {
    pub timeout_ms: u32,
}

/// An open session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaSession {
    pub session: u64,
    /// The negotiated timeout.
    pub timeout_ms: u32,
    pub zxid: Zxid,
}

/// Client: keep a session alive (send at least every third of its timeout, to any node).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaPing {
    pub session: u64,
}

/// Client: end a session now (its ephemeral znodes go).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaCloseSession {
    pub session: u64,
}

/// Client: one operation, or a `multi` (all or nothing), on behalf of `session` (0: none;
/// ephemeral creates need one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaWrite {
    pub session: u64,
    pub ops: Vec<Op>,
    pub multi: bool,
}

/// A committed write: the result of each operation, and its zxid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaWritten {
    pub zxid: Zxid,
    pub results: Vec<OpResult>,
}

/// What to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReadKind {
    /// Data and stat (`getData`).
    Data,
    /// Children names and stat (`getChildren`).
    Children,
    /// Stat only, `None` if absent (`exists`).
    Stat,
}

/// Client: read a znode from this node's copy, once it has applied `after`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaRead {
    pub path: String,
    pub kind: ReadKind,
    /// The highest zxid the client has seen (read-your-writes across nodes).
    #[serde(default)]
    pub after: Zxid,
}

/// What a [`MetaRead`] found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaReadAnswer {
    /// `None`: no such znode (only for [`ReadKind::Stat`]; the others fail with `NoNode`).
    pub stat: Option<Stat>,
    #[serde(with = "crate::bin")]
    pub data: Vec<u8>,
    pub children: Vec<String>,
    /// The node's applied zxid when it read.
    pub zxid: Zxid,
}

/// Client: wait until this node has applied everything the leader had committed when the sync
/// reached it (ZooKeeper's `sync`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaSync;

/// The zxid a node has applied (after a sync: at least the leader's committed zxid).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaSynced {
    pub zxid: Zxid,
}

/// Client: wait (at most `wait_ms`, up to 60 s) for the znode at `path` to change after `since`
/// (a zxid from an earlier answer): a one-shot watch that cannot miss an event, whichever node
/// it is sent to, because the node compares the znode's zxids with `since` before it waits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaWatch {
    pub path: String,
    pub kind: WatchKind,
    pub since: Zxid,
    /// Whether the znode existed when the client read it at `since`: a watch on a znode that
    /// did not exist waits for its creation.
    pub exists: bool,
    pub wait_ms: u32,
}

/// What a [`MetaWatch`] saw: the event, or `None` if nothing changed within `wait_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaWatched {
    pub event: Option<WatchedEvent>,
    /// The node's applied zxid when it answered (pass it as `since` to watch again).
    pub zxid: Zxid,
}

/// The answer of a metadata call, or the data model's refusal.
macro_rules! meta_call {
    ($call:ident => $answer:ident, $variant:ident, $resp:ident) => {
        meta_call!($call => $answer, $resp, false,
            |c| Request::Client(ClientRequest::Meta(MetaRequest::$variant(c))));
    };
    ($call:ident => $answer:ident, $resp:ident, $peer:expr, |$c:ident| $req:expr) => {
        impl Call for $call {
            type Answer = Result<$answer, MetaError>;
            const PEER: bool = $peer;
            fn into_request(self) -> Request {
                let $c = self;
                $req
            }
            fn answer(response: Response) -> Result<Self::Answer, Response> {
                match response {
                    Response::Meta(m) => match *m {
                        MetaResponse::$resp(a) => Ok(Ok(a)),
                        MetaResponse::Failed(e) => Ok(Err(e)),
                        other => Err(Response::Meta(Box::new(other))),
                    },
                    other => Err(other),
                }
            }
            fn respond(answer: Self::Answer) -> Response {
                Response::Meta(Box::new(match answer {
                    Ok(a) => MetaResponse::$resp(a),
                    Err(e) => MetaResponse::Failed(e),
                }))
            }
        }
    };
}

meta_call!(MetaOpenSession => MetaSession, OpenSession, Session);
meta_call!(MetaPing => MetaSynced, Ping, Synced);
meta_call!(MetaCloseSession => MetaWritten, CloseSession, Written);
meta_call!(MetaWrite => MetaWritten, Write, Written);
meta_call!(MetaRead => MetaReadAnswer, Read, Read);
meta_call!(MetaSync => MetaSynced, Sync, Synced);
meta_call!(MetaWatch => MetaWatched, Watch, Watched);

/// Peer: a write forwarded to the leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaPropose(pub TxnOp);

meta_call!(MetaPropose => MetaWritten, Written, true,
    |c| Request::Peer(PeerRequest::Meta(MetaPeerRequest::Propose(c.0))));

/// Peer: the leader's committed zxid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetaLeaderZxid;

impl Call for MetaLeaderZxid {
    type Answer = Zxid;
    const PEER: bool = true;
    fn into_request(self) -> Request {
        Request::Peer(PeerRequest::Meta(MetaPeerRequest::LeaderZxid))
    }
    fn answer(response: Response) -> Result<Zxid, Response> {
        match response {
            Response::Meta(m) => match *m {
                MetaResponse::Synced(MetaSynced { zxid }) => Ok(zxid),
                other => Err(Response::Meta(Box::new(other))),
            },
            other => Err(other),
        }
    }
    fn respond(zxid: Zxid) -> Response {
        Response::Meta(Box::new(MetaResponse::Synced(MetaSynced { zxid })))
    }
}

impl MetaResponse {
    /// A short name of the answer's shape.
    pub fn kind(&self) -> &'static str {
        match self {
            MetaResponse::Session(_) => "meta session",
            MetaResponse::Written(_) => "meta written",
            MetaResponse::Read(_) => "meta read",
            MetaResponse::Synced(_) => "meta synced",
            MetaResponse::Watched(_) => "meta watched",
            MetaResponse::Failed(_) => "meta failed",
        }
    }
}

impl MetaRequest {
    /// A short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            MetaRequest::OpenSession(_) => "meta_open_session",
            MetaRequest::Ping(_) => "meta_ping",
            MetaRequest::CloseSession(_) => "meta_close_session",
            MetaRequest::Write(_) => "meta_write",
            MetaRequest::Read(_) => "meta_read",
            MetaRequest::Sync(_) => "meta_sync",
            MetaRequest::Watch(_) => "meta_watch",
        }
    }
}

impl MetaPeerRequest {
    /// A short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            MetaPeerRequest::Zab { .. } => "meta_zab",
            MetaPeerRequest::Propose(_) => "meta_propose",
            MetaPeerRequest::Touch(_) => "meta_touch",
            MetaPeerRequest::LeaderZxid => "meta_leader_zxid",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{decode_body, encode_request, encode_response, FrameDecoder};

    #[test]
    fn calls_round_trip_through_frames() {
        let w = MetaWrite {
            session: 7,
            ops: vec![Op::Create {
                path: "/a".into(),
                data: b"x".to_vec(),
                ephemeral: true,
                sequential: false,
            }],
            multi: false,
        };
        let mut out = Vec::new();
        encode_request(&mut out, 1, &w.clone().into_request()).unwrap();
        let mut dec = FrameDecoder::new();
        dec.feed(&out);
        let f = dec.decode().unwrap().unwrap();
        assert_eq!(f.request().unwrap(), w.into_request());

        let answer: Result<MetaWritten, MetaError> = Err(MetaError::NoNode("/a".into()));
        let mut back = Vec::new();
        encode_response(&mut back, 1, &MetaWrite::respond(answer.clone())).unwrap();
        let mut dec = FrameDecoder::new();
        dec.feed(&back);
        let f = dec.decode().unwrap().unwrap();
        let resp: Response = decode_body(&f.body).unwrap();
        assert_eq!(MetaWrite::answer(resp).unwrap(), answer);
        // The wrong shape is an error, never a panic.
        assert!(MetaRead::answer(Response::Ok).is_err());
    }

    #[test]
    fn zab_batches_keep_bytes_as_binary() {
        let req = Request::Peer(PeerRequest::Meta(MetaPeerRequest::Zab {
            from: NodeId::from_be_bytes([3; 16]),
            msgs: vec![vec![1, 2, 3], vec![]],
        }));
        let mut out = Vec::new();
        encode_request(&mut out, 9, &req).unwrap();
        // Three bytes and an empty message cost a few bytes each, not one per element.
        assert!(out.len() < 80, "{} bytes", out.len());
        let mut dec = FrameDecoder::new();
        dec.feed(&out);
        assert_eq!(dec.decode().unwrap().unwrap().request().unwrap(), req);
    }
}
