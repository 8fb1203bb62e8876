//! What a node knows about one other member.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::phi::Phi;
use crate::state::NodeState;
use crate::NodeId;

/// Liveness as seen locally (the states `/status` shows).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    Alive,
    Suspect,
    Down,
    Left,
}

impl MemberState {
    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Alive => "alive",
            MemberState::Suspect => "suspect",
            MemberState::Down => "down",
            MemberState::Left => "left",
        }
    }
}

/// A running suspicion (Lifeguard §IV-B: the timeout shrinks as independent suspicions arrive).
#[derive(Clone, Debug)]
pub(crate) struct Suspicion {
    pub since: Instant,
    pub deadline: Instant,
    /// Distinct suspecters; the first is whoever started it.
    pub confirmations: Vec<NodeId>,
    /// Learned about indirectly and never heard from: not a failure suspicion, a confirmation
    /// pending. Such a member never raised `MemberUp`.
    pub unconfirmed: bool,
}

#[derive(Clone, Debug)]
pub(crate) enum Liveness {
    Alive,
    Suspect(Box<Suspicion>),
    Down { told: Option<Instant> },
    Left { until: Instant },
}

impl Liveness {
    pub fn state(&self) -> MemberState {
        match self {
            Liveness::Alive => MemberState::Alive,
            Liveness::Suspect(_) => MemberState::Suspect,
            Liveness::Down { .. } => MemberState::Down,
            Liveness::Left { .. } => MemberState::Left,
        }
    }

    /// Members we probe and gossip with.
    pub fn reachable(&self) -> bool {
        matches!(self, Liveness::Alive | Liveness::Suspect(_))
    }

    /// Has this member ever been confirmed alive in its current generation?
    pub fn confirmed_alive(&self) -> bool {
        match self {
            Liveness::Alive => true,
            Liveness::Suspect(s) => !s.unconfirmed,
            _ => false,
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Member {
    pub id: NodeId,
    pub addr: SocketAddr,
    pub generation: u64,
    pub incarnation: u64,
    pub liveness: Liveness,
    pub state: Arc<NodeState>,
    pub phi: Option<Box<Phi>>,
}

impl Member {
    pub fn heard(&self) -> Option<Instant> {
        self.phi.as_ref().and_then(|p| p.last())
    }
}

/// A read-only view of a member, for status pages and drivers.
#[derive(Debug)]
pub struct MemberView<'a> {
    pub id: NodeId,
    pub addr: SocketAddr,
    pub generation: u64,
    pub incarnation: u64,
    pub state: MemberState,
    /// Phi-accrual suspicion level of this member's heartbeats.
    pub phi: f64,
    pub node_state: &'a NodeState,
}
