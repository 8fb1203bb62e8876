//! Length-prefixed frames on a QUIC stream.
//!
//! ```text
//! +----------------+---------+------+----------------+------------------------+
//! | length: u32 BE | version | kind | request id: u64 BE | body (rmp-serde)    |
//! +----------------+---------+------+----------------+------------------------+
//!                  |<------------------ `length` bytes ------------------------>|
//! ```
//!
//! The decoder checks the version, the kind and the kind's body limit from the first
//! [`HEADER_LEN`] bytes, before it reserves room for the body, so a peer cannot make it allocate
//! more than the limit. Errors say whether the stream can go on ([`FrameError::is_fatal`]): an
//! oversized frame is skipped without buffering and reported with its id so the server can answer
//! `TooLarge`; a bad version, kind or length leaves no trustworthy frame boundary, so the stream
//! must be closed.

use bytes::{Buf, Bytes, BytesMut};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::{Request, Response};

/// The frame format and message shape version this build writes and accepts (2: the client and
/// peer APIs split into typed enums per subsystem; 1 had one flat enum).
pub const VERSION: u8 = 2;

/// Bytes before the body: length (4), version (1), kind (1), request id (8).
pub const HEADER_LEN: usize = 14;

/// Header bytes counted by the length field (all but the length itself).
const LENGTH_COVERED_HEADER: usize = HEADER_LEN - 4;

/// Body limit of request and response frames. Big enough for a KV value batch; bulk data
/// (anti-entropy, log replication) goes on dedicated streams, never in one frame.
pub const MAX_REQUEST_BODY: usize = 4 << 20;

/// Body limit of response frames; see [`MAX_REQUEST_BODY`].
pub const MAX_RESPONSE_BODY: usize = 4 << 20;

/// Body limit of one-way frames. Gossip deltas are bounded per message by the gossip core and are
/// far below this; anything larger is a bug or an attack.
pub const MAX_ONEWAY_BODY: usize = 1 << 20;

/// What a frame is for; the byte after the version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameKind {
    /// Expects a [`FrameKind::Response`] with the same id.
    Request = 1,
    /// Answers the request with the same id.
    Response = 2,
    /// Expects no answer (gossip). The id is informational only.
    OneWay = 3,
}

impl FrameKind {
    /// The largest body accepted for this kind.
    pub fn max_body_len(self) -> usize {
        match self {
            FrameKind::Request => MAX_REQUEST_BODY,
            FrameKind::Response => MAX_RESPONSE_BODY,
            FrameKind::OneWay => MAX_ONEWAY_BODY,
        }
    }

    fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(FrameKind::Request),
            2 => Some(FrameKind::Response),
            3 => Some(FrameKind::OneWay),
            _ => None,
        }
    }
}

/// Everything that can be wrong with a frame, going out or coming in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The version byte is not [`VERSION`].
    #[error("unsupported frame version {found} (this build speaks version {VERSION})")]
    UnsupportedVersion {
        /// The version byte received.
        found: u8,
    },
    /// The kind byte is not a known [`FrameKind`].
    #[error("unknown frame kind {found} (expected 1=request, 2=response, 3=one-way)")]
    UnknownKind {
        /// The kind byte received.
        found: u8,
    },
    /// The length field is smaller than the header it must cover.
    #[error(
        "frame length {len} is shorter than the {LENGTH_COVERED_HEADER}-byte header it covers"
    )]
    LengthTooShort {
        /// The length field received.
        len: u32,
    },
    /// The body is over the limit for its kind.
    #[error("{kind:?} frame {id} has a {len}-byte body, over the {limit}-byte limit")]
    TooLarge {
        /// The frame's kind.
        kind: FrameKind,
        /// The frame's request id.
        id: u64,
        /// The body length.
        len: usize,
        /// The limit for `kind`.
        limit: usize,
    },
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame: {buffered} bytes buffered, {needed} needed")]
    Truncated {
        /// Bytes of the partial frame received.
        buffered: usize,
        /// Bytes the frame needs (the header, if its length is not yet known).
        needed: usize,
    },
    /// A frame of one kind came where another was expected.
    #[error("expected a {expected:?} frame, got {found:?} frame {id}")]
    UnexpectedKind {
        /// The kind expected here.
        expected: FrameKind,
        /// The kind received.
        found: FrameKind,
        /// The frame's request id.
        id: u64,
    },
    /// The body could not be serialized.
    #[error("cannot encode {kind:?} frame {id}: {reason}")]
    Encode {
        /// The frame's kind.
        kind: FrameKind,
        /// The frame's request id.
        id: u64,
        /// What the serializer said.
        reason: String,
    },
    /// The body is not a valid message for its kind.
    #[error("cannot decode {kind:?} frame {id}: {reason}")]
    Decode {
        /// The frame's kind.
        kind: FrameKind,
        /// The frame's request id.
        id: u64,
        /// What the deserializer said.
        reason: String,
    },
}

impl FrameError {
    /// True when the byte stream has no trustworthy frame boundary any more and must be closed.
    /// Non-fatal errors concern one frame; the following frames can still be read.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            FrameError::UnsupportedVersion { .. }
                | FrameError::UnknownKind { .. }
                | FrameError::LengthTooShort { .. }
                | FrameError::Truncated { .. }
        )
    }

    /// The request id of the frame concerned, when the header was readable.
    pub fn id(&self) -> Option<u64> {
        match self {
            FrameError::TooLarge { id, .. }
            | FrameError::UnexpectedKind { id, .. }
            | FrameError::Encode { id, .. }
            | FrameError::Decode { id, .. } => Some(*id),
            _ => None,
        }
    }
}

/// One decoded frame; the body is still msgpack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// What the frame is for.
    pub kind: FrameKind,
    /// The request id (echoed by the response).
    pub id: u64,
    /// The msgpack body, shared with the decoder's buffer (no copy).
    pub body: Bytes,
}

impl Frame {
    /// Decodes the body of a request or one-way frame.
    pub fn request(&self) -> Result<Request, FrameError> {
        match self.kind {
            FrameKind::Request | FrameKind::OneWay => self.body_as(),
            found => {
                Err(FrameError::UnexpectedKind { expected: FrameKind::Request, found, id: self.id })
            }
        }
    }

    /// Decodes the body of a response frame.
    pub fn response(&self) -> Result<Response, FrameError> {
        match self.kind {
            FrameKind::Response => self.body_as(),
            found => Err(FrameError::UnexpectedKind {
                expected: FrameKind::Response,
                found,
                id: self.id,
            }),
        }
    }

    fn body_as<T: DeserializeOwned>(&self) -> Result<T, FrameError> {
        decode_body(&self.body).map_err(|e| FrameError::Decode {
            kind: self.kind,
            id: self.id,
            reason: e.to_string(),
        })
    }
}

/// Deepest nesting of msgpack arrays and maps a body may have. The messages of this version nest
/// about six deep; rmp-serde's own limit (1024) let a 2 KB body of nested arrays in a field the
/// receiver ignores recurse a thousand calls deep: about 100 KB of stack in a release build, more
/// than a thread's 2 MiB in a debug build.
pub const MAX_BODY_DEPTH: usize = 32;

/// Decodes a request or response body, as [`Frame::request`] and [`Frame::response`] do.
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, rmp_serde::decode::Error> {
    let mut de = rmp_serde::Deserializer::from_read_ref(body);
    de.set_max_depth(MAX_BODY_DEPTH);
    T::deserialize(&mut de)
}

/// Appends one frame to `out`. On error `out` is left as it was, so a shared write buffer stays
/// well-formed; a body over the kind's limit is refused here rather than by the peer.
pub fn encode<T: Serialize>(
    out: &mut Vec<u8>,
    kind: FrameKind,
    id: u64,
    body: &T,
) -> Result<(), FrameError> {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    out.push(VERSION);
    out.push(kind as u8);
    out.extend_from_slice(&id.to_be_bytes());
    if let Err(e) = rmp_serde::encode::write_named(out, body) {
        out.truncate(start);
        return Err(FrameError::Encode { kind, id, reason: e.to_string() });
    }
    let body_len = out.len() - start - HEADER_LEN;
    if body_len > kind.max_body_len() {
        out.truncate(start);
        return Err(FrameError::TooLarge { kind, id, len: body_len, limit: kind.max_body_len() });
    }
    // Fits: body_len <= 4 MiB, so the sum is far below u32::MAX.
    let len = (body_len + LENGTH_COVERED_HEADER) as u32;
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

/// Appends a [`FrameKind::Request`] frame.
pub fn encode_request(out: &mut Vec<u8>, id: u64, req: &Request) -> Result<(), FrameError> {
    encode(out, FrameKind::Request, id, req)
}

/// Appends a [`FrameKind::OneWay`] frame.
pub fn encode_one_way(out: &mut Vec<u8>, id: u64, req: &Request) -> Result<(), FrameError> {
    encode(out, FrameKind::OneWay, id, req)
}

/// Appends a [`FrameKind::Response`] frame.
pub fn encode_response(out: &mut Vec<u8>, id: u64, resp: &Response) -> Result<(), FrameError> {
    encode(out, FrameKind::Response, id, resp)
}

/// Incremental decoder: feed it bytes as they arrive, pop every complete frame.
///
/// Memory is bounded by the largest body limit plus what one `feed` brings: an oversized frame is
/// skipped as its bytes arrive, never buffered.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: BytesMut,
    /// Body bytes of an oversized frame still to be thrown away.
    skip: usize,
    /// The whole length of that frame (header included), for [`FrameDecoder::finish`].
    skipped_frame: usize,
}

impl FrameDecoder {
    /// An empty decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds received bytes.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        if self.skip > 0 {
            let n = self.skip.min(bytes.len());
            self.skip -= n;
            bytes = &bytes[n..];
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Pops the next complete frame, `Ok(None)` if more bytes are needed.
    ///
    /// After a non-fatal error, call again for the next frame; after a fatal one
    /// ([`FrameError::is_fatal`]) the decoder keeps returning it and the stream must be closed.
    pub fn decode(&mut self) -> Result<Option<Frame>, FrameError> {
        if self.skip > 0 || self.buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let head = &self.buf[..HEADER_LEN];
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        if head[4] != VERSION {
            return Err(FrameError::UnsupportedVersion { found: head[4] });
        }
        let kind =
            FrameKind::from_byte(head[5]).ok_or(FrameError::UnknownKind { found: head[5] })?;
        let body_len = (len as usize)
            .checked_sub(LENGTH_COVERED_HEADER)
            .ok_or(FrameError::LengthTooShort { len })?;
        let mut id_bytes = [0; 8];
        id_bytes.copy_from_slice(&head[6..HEADER_LEN]);
        let id = u64::from_be_bytes(id_bytes);
        if body_len > kind.max_body_len() {
            self.buf.advance(HEADER_LEN);
            let drop_now = body_len.min(self.buf.len());
            self.buf.advance(drop_now);
            self.skip = body_len - drop_now;
            self.skipped_frame = HEADER_LEN + body_len;
            return Err(FrameError::TooLarge {
                kind,
                id,
                len: body_len,
                limit: kind.max_body_len(),
            });
        }
        let total = HEADER_LEN + body_len;
        if self.buf.len() < total {
            // Bounded by the kind's limit, checked above.
            self.buf.reserve(total - self.buf.len());
            return Ok(None);
        }
        let mut frame = self.buf.split_to(total);
        frame.advance(HEADER_LEN);
        Ok(Some(Frame { kind, id, body: frame.freeze() }))
    }

    /// Call at the end of the stream: an error if a frame was left half-received (an oversized
    /// one being skipped included).
    pub fn finish(&self) -> Result<(), FrameError> {
        if self.skip > 0 {
            let needed = self.skipped_frame;
            return Err(FrameError::Truncated { buffered: needed - self.skip, needed });
        }
        if self.buf.is_empty() {
            return Ok(());
        }
        let needed = if self.buf.len() >= 4 {
            let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
            4 + len as usize
        } else {
            HEADER_LEN
        };
        Err(FrameError::Truncated { buffered: self.buf.len(), needed })
    }
}
