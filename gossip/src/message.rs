//! Gossip wire messages and their codec.
//!
//! A message is one version byte followed by the msgpack encoding of [`Message`]. Decoding checks
//! the size bound first and never panics on hostile input.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::state::Entry;
use crate::{Error, NodeId};

/// Wire version of the gossip protocol; bumped on any incompatible change.
pub const PROTOCOL_VERSION: u8 = 1;

/// Deepest nesting of msgpack arrays and maps a message may have. Messages nest about eight deep;
/// rmp-serde's own limit (1024) let a small message of nested arrays recurse a thousand calls
/// deep (more than a thread's 2 MiB of stack in a debug build).
pub const MAX_DEPTH: usize = 32;

/// Who sent a message: every message is also a heartbeat and a statement of the sender's
/// liveness in its own words.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub id: NodeId,
    pub generation: u64,
    pub incarnation: u64,
    pub addr: SocketAddr,
}

/// A Scuttlebutt digest: what a node knows of one subject.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digest {
    pub id: NodeId,
    pub generation: u64,
    pub max_version: u64,
}

/// State of one subject newer than `from_version`, entries in ascending version order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delta {
    pub id: NodeId,
    pub generation: u64,
    pub addr: SocketAddr,
    pub from_version: u64,
    pub entries: Vec<(String, Entry)>,
}

/// What a Syn summarises.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Summary {
    /// One XOR hash per bucket of subjects (bucket = id mod 64): O(1) bytes when views agree.
    Buckets(Vec<u64>),
    /// Full digests of every subject in the buckets set in `mask`.
    Digests { mask: u64, digests: Vec<Digest> },
}

/// SWIM liveness rumours, ordered by `(generation, incarnation)`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Rumor {
    Alive { id: NodeId, generation: u64, incarnation: u64, addr: SocketAddr },
    Suspect { id: NodeId, generation: u64, incarnation: u64, from: NodeId },
    Down { id: NodeId, generation: u64, incarnation: u64, from: NodeId },
    Left { id: NodeId, generation: u64, incarnation: u64 },
}

impl Rumor {
    /// The node the rumour is about.
    pub fn subject(&self) -> NodeId {
        match self {
            Rumor::Alive { id, .. }
            | Rumor::Suspect { id, .. }
            | Rumor::Down { id, .. }
            | Rumor::Left { id, .. } => *id,
        }
    }
}

/// Message bodies. Names mirror the protocols: Scuttlebutt's Syn/Ack/Ack2, SWIM's
/// Ping/PingReq/PingAck, Lifeguard's Nack.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Body {
    /// Push-pull opener (or, with `Summary::Digests`, the reply to a bucket summary).
    /// `recent` pushes what changed lately at the sender (deltas from the version before the
    /// change), so fresh news crosses in one message even when most messages are lost; the
    /// summary is the backstop that finds everything else.
    Syn { summary: Summary, recent: Vec<Delta> },
    /// Deltas the Syn's sender lacks, and digests of what we lack (`requests`).
    /// `truncated` says more was left out for the size bound: the receiver goes again at once.
    Ack { deltas: Vec<Delta>, requests: Vec<Digest>, truncated: bool },
    /// Deltas answering an Ack's requests.
    Ack2 { deltas: Vec<Delta> },
    /// Direct probe. `target` guards against a new node answering on a reused address.
    Ping { seq: u64, target: NodeId },
    /// Probe answer, direct or relayed by a helper (`target` answered).
    PingAck { seq: u64, target: NodeId },
    /// Ask the receiver to probe `target` for us.
    PingReq { seq: u64, target: NodeId, target_addr: SocketAddr },
    /// Lifeguard: a helper tells the requester it is alive but got no answer from the target.
    Nack { seq: u64, target: NodeId },
    /// Only the piggybacked rumours.
    Rumors,
}

/// One gossip message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub from: Header,
    pub rumors: Vec<Rumor>,
    pub body: Body,
}

impl Message {
    /// Version byte + msgpack.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        out.push(PROTOCOL_VERSION);
        // Encoding plain data into a Vec cannot fail.
        rmp_serde::encode::write(&mut out, self).expect("encode gossip message");
        out
    }

    /// Refuses oversized, truncated, wrong-version and malformed input with an [`Error`].
    pub fn decode(bytes: &[u8], max_bytes: usize) -> Result<Message, Error> {
        if bytes.len() > max_bytes {
            return Err(Error::TooLarge { len: bytes.len(), max: max_bytes });
        }
        let (&version, body) = bytes.split_first().ok_or(Error::Empty)?;
        if version != PROTOCOL_VERSION {
            return Err(Error::Version { got: version, want: PROTOCOL_VERSION });
        }
        let mut de = rmp_serde::Deserializer::new(body);
        de.set_max_depth(MAX_DEPTH);
        let msg = Message::deserialize(&mut de).map_err(|e| Error::Malformed(e.to_string()))?;
        let rest = de.into_inner();
        if !rest.is_empty() {
            return Err(Error::Malformed(format!("{} trailing bytes", rest.len())));
        }
        Ok(msg)
    }
}

/// Approximate encoded sizes, for filling messages up to a byte budget without encoding twice.
pub(crate) const DIGEST_COST: usize = 32;
pub(crate) const RUMOR_COST: usize = 56;
pub(crate) const DELTA_OVERHEAD: usize = 56;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deeply_nested_messages_are_refused_without_deep_recursion() {
        // A message as a map whose unknown field (skipped) holds nested arrays: refused at
        // `MAX_DEPTH`, not after a thousand levels of recursion (rmp-serde's own limit).
        let mut bytes = vec![PROTOCOL_VERSION, 0x81, 0xa1, b'x'];
        bytes.extend(std::iter::repeat_n(0x91, 1000));
        bytes.push(0xc0);
        let err = Message::decode(&bytes, usize::MAX).unwrap_err();
        assert!(matches!(&err, Error::Malformed(why) if why.contains("depth")), "{err}");
    }
}
