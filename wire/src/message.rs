//! The messages carried inside frames.
//!
//! Both enums are serde *externally tagged* and encoded with field and variant **names**
//! (`rmp_serde::encode::write_named`), so adding a variant (the KV store's `Put`/`Get`/`Delete`,
//! the metadata service's calls) or a field with `#[serde(default)]` later does not change how the
//! existing ones look on the wire. An old peer that receives a variant it does not know fails to
//! decode that one body and answers `ErrorCode::BadRequest`; the stream and connection stay up.

use serde::{Deserialize, Serialize};

/// What one peer (or a client) asks another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// An opaque `starling-gossip` message. Always sent as a [`crate::FrameKind::OneWay`] frame:
    /// gossip answers with its own messages, never with a response.
    Gossip(#[serde(with = "crate::bin")] Vec<u8>),
    /// Ask for the node's status (the same JSON the HTTP status endpoint serves).
    Status,
    /// Ask the node to leave the cluster gracefully.
    Leave,
    /// Answered with [`Response::Echo`] carrying the same bytes; for benchmarks and tests.
    Echo(#[serde(with = "crate::bin")] Vec<u8>),
}

/// What a node answers to a [`Request`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// The status document as UTF-8 JSON bytes. Kept as bytes so this crate does not pin the
    /// status schema, which belongs to `node`.
    Status(#[serde(with = "crate::bin")] Vec<u8>),
    /// The request was carried out and has nothing to return.
    Ok,
    /// The bytes of a [`Request::Echo`].
    Echo(#[serde(with = "crate::bin")] Vec<u8>),
    /// The request failed; `code` is for programs, `message` for people.
    Error {
        /// Machine-readable category.
        code: ErrorCode,
        /// Human-readable detail.
        message: String,
    },
}

impl Response {
    /// Shorthand for [`Response::Error`].
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        Response::Error { code, message: message.into() }
    }
}

/// Why a request failed.
///
/// `#[non_exhaustive]` because new codes will come with new request kinds; a peer that receives a
/// code it does not know fails to decode the response, which the caller sees as a decode error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ErrorCode {
    /// The frame or its body could not be decoded, or the request is not valid here.
    BadRequest,
    /// The frame was over the size limit for its kind.
    TooLarge,
    /// The node cannot serve this now (shutting down, overloaded, not ready); try another.
    Unavailable,
    /// A bug or an unexpected failure on the serving node.
    Internal,
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            ErrorCode::BadRequest => "bad request",
            ErrorCode::TooLarge => "too large",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal error",
        };
        f.write_str(s)
    }
}
