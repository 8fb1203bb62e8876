//! The messages servers exchange, and their encoding (msgpack, size-limited).
//!
//! Election messages ([`Vote`]) stand alone. Everything between a learner and its leader travels
//! in a **session** the learner opens with [`Msg::Connect`]: each direction numbers its messages
//! from 0, and the receiver processes them in that order exactly once, so ZAB's assumption of
//! FIFO channels holds over a network that reorders and duplicates (and over reconnects of the
//! real transport). A message lost for good leaves a gap the session never fills: the learner
//! times out, looks for its leader again and opens a new session.

use serde::{Deserialize, Serialize};

use crate::{Entry, NodeId, Zxid};

/// Largest encoded message accepted (a SNAP carries the whole state).
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;
/// Deepest msgpack nesting accepted (messages nest at most 5 levels).
const MAX_DEPTH: usize = 32;

/// A server's state as it announces it in an election message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerState {
    Looking,
    Following,
    Leading,
    Observing,
}

/// An election notification: whom the sender votes for, in which round, and the sender's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vote {
    /// The server voted for.
    pub leader: NodeId,
    /// Its last zxid.
    pub zxid: Zxid,
    /// Its current epoch.
    pub epoch: u32,
    /// The sender's election round (ZooKeeper's logical clock).
    pub round: u64,
    pub state: PeerState,
}

impl Vote {
    /// ZooKeeper's total order on votes: a higher epoch, then a higher zxid, then a higher id.
    pub fn beats(&self, other: &Vote) -> bool {
        (self.epoch, self.zxid, self.leader) > (other.epoch, other.zxid, other.leader)
    }

    /// Whether both name the same candidate with the same history.
    pub fn same_candidate(&self, other: &Vote) -> bool {
        (self.leader, self.zxid, self.epoch) == (other.leader, other.zxid, other.epoch)
    }
}

/// The log entries of one epoch a learner holds: counters `first..=last`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochSpan {
    pub epoch: u32,
    pub first: u32,
    pub last: u32,
}

/// From a learner to its leader, within a session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToLeader {
    /// The learner accepted the new epoch (persisted) and describes its history.
    AckEpoch {
        current_epoch: u32,
        last: Zxid,
        /// Its log, epoch by epoch, oldest first.
        spans: Vec<EpochSpan>,
        /// Its snapshot's zxid: everything up to it is committed history.
        snapshot: Zxid,
    },
    /// Everything the leader sent before NEWLEADER is durable here, and `epoch` is its current
    /// epoch.
    AckNewLeader {
        epoch: u32,
    },
    /// Every proposal up to this zxid is durable here.
    Ack(Zxid),
    Ping,
}

/// From a leader to a learner, within a session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToLearner {
    /// Discovery: the epoch this leader leads (new, or the one it is already leading).
    NewEpoch(u32),
    /// Synchronization: replace the state and the log with this snapshot.
    Snap {
        zxid: Zxid,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// Synchronization: one piece of a snapshot too large for one message (`offset` bytes of
    /// the `total` came before it); once all have arrived, as [`ToLearner::Snap`].
    SnapChunk {
        zxid: Zxid,
        total: u64,
        offset: u64,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// Synchronization: drop every log entry after this zxid (they are not in the leader's
    /// history).
    Trunc(Zxid),
    /// Synchronization: the leader's entries after the learner's last common one.
    Diff(Vec<Entry>),
    /// Synchronization is complete: the learner's history is the leader's.
    NewLeader {
        epoch: u32,
    },
    /// Start serving: everything up to `committed` is committed.
    UpToDate {
        committed: Zxid,
    },
    Proposal(Entry),
    Commit(Zxid),
    Ping,
}

/// Everything servers send each other.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Msg {
    Vote(Vote),
    /// A learner opens a session with the server it believes leads (repeated until answered).
    Connect {
        session: u64,
        accepted_epoch: u32,
        /// The leader `accepted_epoch` was accepted from.
        accepted_leader: NodeId,
    },
    ToLeader {
        session: u64,
        seq: u64,
        body: ToLeader,
    },
    ToLearner {
        session: u64,
        seq: u64,
        body: ToLearner,
    },
}

/// Why bytes are not a message.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("message of {0} bytes is larger than the {MAX_MESSAGE_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("malformed message: {0}")]
    Malformed(String),
}

impl Msg {
    pub fn encode(&self) -> Vec<u8> {
        rmp_serde::to_vec_named(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Msg, DecodeError> {
        if bytes.len() > MAX_MESSAGE_BYTES {
            return Err(DecodeError::TooLarge(bytes.len()));
        }
        let mut de = rmp_serde::Deserializer::new(bytes);
        // Messages nest a few levels; deep nesting in a skipped field would recurse once per
        // level (a stack overflow on a small thread).
        de.set_max_depth(MAX_DEPTH);
        let msg = Msg::deserialize(&mut de).map_err(|e| DecodeError::Malformed(e.to_string()))?;
        let rest = de.into_inner();
        if !rest.is_empty() {
            return Err(DecodeError::Malformed(format!("{} trailing bytes", rest.len())));
        }
        Ok(msg)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn messages_round_trip() {
        let e = Entry { zxid: Zxid::new(3, 7), txn: Arc::new(vec![1, 2, 3]) };
        let msgs = vec![
            Msg::Vote(Vote {
                leader: NodeId(9),
                zxid: Zxid::new(1, 2),
                epoch: 1,
                round: 4,
                state: PeerState::Looking,
            }),
            Msg::Connect { session: 5, accepted_epoch: 2, accepted_leader: NodeId(3) },
            Msg::ToLeader {
                session: 5,
                seq: 0,
                body: ToLeader::AckEpoch {
                    current_epoch: 2,
                    last: Zxid::new(2, 9),
                    spans: vec![EpochSpan { epoch: 2, first: 1, last: 9 }],
                    snapshot: Zxid::new(1, 4),
                },
            },
            Msg::ToLearner { session: 5, seq: 1, body: ToLearner::Diff(vec![e.clone()]) },
            Msg::ToLearner {
                session: 5,
                seq: 2,
                body: ToLearner::Snap { zxid: e.zxid, data: vec![7; 10] },
            },
            Msg::ToLearner { session: 5, seq: 3, body: ToLearner::Proposal(e) },
        ];
        for m in msgs {
            assert_eq!(Msg::decode(&m.encode()).unwrap(), m);
        }
        // Transactions travel as binary, not as arrays of integers.
        let big = Entry { zxid: Zxid::new(1, 1), txn: Arc::new(vec![200; 1000]) };
        let bytes = Msg::ToLearner { session: 1, seq: 0, body: ToLearner::Proposal(big) }.encode();
        assert!(bytes.len() < 1100, "{} bytes", bytes.len());
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(Msg::decode(&[0xc1, 0xff, 0x00]).is_err());
        assert!(Msg::decode(&[]).is_err());
        // Deep nesting is refused, not recursed into.
        let mut deep = vec![0x91u8; 5000];
        deep.push(0xc0);
        assert!(Msg::decode(&deep).is_err());
        let mut trailing = Msg::Vote(Vote {
            leader: NodeId(1),
            zxid: Zxid::ZERO,
            epoch: 0,
            round: 0,
            state: PeerState::Looking,
        })
        .encode();
        trailing.push(0);
        assert!(Msg::decode(&trailing).is_err());
    }

    #[test]
    fn votes_order_by_epoch_then_zxid_then_id() {
        let v = |epoch, zxid, id| Vote {
            leader: NodeId(id),
            zxid: Zxid(zxid),
            epoch,
            round: 0,
            state: PeerState::Looking,
        };
        assert!(v(2, 0, 1).beats(&v(1, 99, 9)));
        assert!(v(1, 5, 1).beats(&v(1, 4, 9)));
        assert!(v(1, 5, 2).beats(&v(1, 5, 1)));
        assert!(!v(1, 5, 1).beats(&v(1, 5, 1)));
    }
}
