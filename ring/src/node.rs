use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{NodeId, RingError, Token};

/// Where a node is in its life on the ring.
///
/// Reads are served by `Normal` and `Leaving` nodes; the future ring (after every move
/// completes) is made of `Normal` and `Joining` nodes. The variants sort in life order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeStatus {
    /// Streaming in its future ranges: receives writes as a pending replica, serves no reads.
    Joining,
    /// A full member.
    Normal,
    /// Streaming out before it goes: still a replica, its successors receive pending writes.
    Leaving,
}

impl NodeStatus {
    /// The gossip spelling: `joining`, `normal` or `leaving`.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeStatus::Joining => "joining",
            NodeStatus::Normal => "normal",
            NodeStatus::Leaving => "leaving",
        }
    }

    /// Whether the node replicates in the ring as it is now (serves reads).
    pub(crate) fn is_current(self) -> bool {
        matches!(self, NodeStatus::Normal | NodeStatus::Leaving)
    }

    /// Whether the node replicates once every join and leave has completed.
    pub(crate) fn is_future(self) -> bool {
        matches!(self, NodeStatus::Normal | NodeStatus::Joining)
    }

    fn code(self) -> u8 {
        match self {
            NodeStatus::Joining => 0,
            NodeStatus::Normal => 1,
            NodeStatus::Leaving => 2,
        }
    }
}

impl fmt::Display for NodeStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for NodeStatus {
    type Err = RingError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "joining" => Ok(NodeStatus::Joining),
            "normal" => Ok(NodeStatus::Normal),
            "leaving" => Ok(NodeStatus::Leaving),
            other => Err(RingError::UnknownStatus(other.to_owned())),
        }
    }
}

/// One member as the ring sees it: what it gossips about itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RingNode {
    pub id: NodeId,
    /// Its vnode tokens. [`crate::Ring::new`] keeps them sorted and without repeats.
    pub tokens: Vec<Token>,
    /// Its failure domain (rack, availability zone). All `None` nodes form one zone.
    pub zone: Option<String>,
    pub status: NodeStatus,
}

impl RingNode {
    /// Appends the canonical encoding the ring digest is computed over: fixed-width integers,
    /// length-prefixed strings, so no two different nodes encode alike.
    pub(crate) fn encode_canonical(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.id.to_be_bytes());
        out.push(self.status.code());
        match &self.zone {
            None => out.push(0),
            Some(zone) => {
                out.push(1);
                out.extend_from_slice(&(zone.len() as u64).to_be_bytes());
                out.extend_from_slice(zone.as_bytes());
            }
        }
        out.extend_from_slice(&(self.tokens.len() as u64).to_be_bytes());
        for token in &self.tokens {
            out.extend_from_slice(&token.to_be_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_round_trips_through_its_string() {
        for status in [NodeStatus::Joining, NodeStatus::Normal, NodeStatus::Leaving] {
            assert_eq!(status.as_str().parse::<NodeStatus>(), Ok(status));
            assert_eq!(status.to_string(), status.as_str());
        }
        assert_eq!("left".parse::<NodeStatus>(), Err(RingError::UnknownStatus("left".to_owned())));
    }

    #[test]
    fn only_joining_is_left_out_now_and_only_leaving_later() {
        assert!(!NodeStatus::Joining.is_current() && NodeStatus::Joining.is_future());
        assert!(NodeStatus::Normal.is_current() && NodeStatus::Normal.is_future());
        assert!(NodeStatus::Leaving.is_current() && !NodeStatus::Leaving.is_future());
    }
}
