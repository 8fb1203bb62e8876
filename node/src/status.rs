//! The node's self-description: what `GET /status`, `starling status` and the live page show.
//! Built by the gossip driver from its core; read by the HTTP server and the QUIC `Status` RPC.

use serde::{Deserialize, Serialize};

/// One member as this node sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MemberStatus {
    pub node_id: String,
    pub addr: String,
    /// `alive`, `suspect`, `down` or `left`.
    pub state: String,
    /// Phi-accrual suspicion level of this member's heartbeats (0 for this node itself).
    pub phi: f64,
    pub incarnation: u64,
    pub generation: u64,
    pub zone: Option<String>,
    /// The membership digest this member last reported.
    pub digest: Option<String>,
    /// True for the node answering.
    #[serde(rename = "self")]
    pub is_self: bool,
}

/// The ring as this node computes it from gossip.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RingStatus {
    /// Digest of the ring (`None` until some node has tokens).
    pub digest: Option<String>,
    /// Every alive member reports this same ring digest.
    pub agreed: bool,
    /// This node's place: `joining`, `normal`, `leaving`, or `None` before it has tokens.
    pub status: Option<String>,
    /// This node's virtual-node tokens.
    pub tokens: usize,
    /// Nodes on the ring (joining and leaving included).
    pub nodes: usize,
    /// Replicas per key (`N`).
    pub replication: usize,
    /// Fraction of the keyspace this node replicates (sums to `N` over the ring).
    pub ownership: f64,
}

/// Gossip counters since start.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GossipStatus {
    pub rounds: u64,
    pub messages_sent: u64,
    pub bytes_sent: u64,
    pub messages_received: u64,
    pub bytes_received: u64,
    pub refused: u64,
    pub probes: u64,
    pub probes_failed: u64,
    pub refutations: u64,
    /// Lifeguard local-health multiplier (0 = healthy).
    pub local_health: u32,
}

/// This node's certificate and what it refused for lack of one.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TlsStatus {
    /// The role this node's certificate carries (`node`).
    pub role: String,
    /// When this node's certificate expires (Unix seconds).
    pub not_after: i64,
    /// Days until then (negative once expired).
    pub expires_in_days: f64,
    /// Peer RPCs refused because the sender's certificate is a client's.
    pub refused_peer_rpcs: u64,
}

/// The QUIC endpoint's connections and what it turned away, since start.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TransportStatus {
    /// Connections open (handshake completed), incoming and outgoing.
    pub connections: u64,
    /// Incoming handshakes in progress.
    pub pending_handshakes: u64,
    /// Incoming connection attempts refused: too many handshakes in progress, or too many
    /// connections open when a handshake completed.
    pub refused: u64,
    /// Incoming connection attempts answered with a stateless Retry (address validation) while
    /// many handshakes were in progress.
    pub retries: u64,
    /// Incoming handshakes dropped because they did not finish within the handshake timeout.
    pub handshake_timeouts: u64,
}

/// `GET /status`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub node_id: String,
    pub generation: u64,
    pub incarnation: u64,
    /// Advertised QUIC address.
    pub addr: String,
    pub zone: Option<String>,
    /// Every member this node sees alive reports the same membership digest and the same ring
    /// digest as this node.
    pub converged: bool,
    /// Membership alone agrees (the ring may not yet).
    pub gossip_converged: bool,
    /// The membership digest of this node's view.
    pub digest: String,
    /// This node runs without authentication (`--insecure`).
    pub insecure: bool,
    /// This node's certificate (absent with `--insecure`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsStatus>,
    pub version: String,
    pub uptime_secs: f64,
    /// Members including this node (`self: true`), sorted by address.
    pub members: Vec<MemberStatus>,
    pub ring: RingStatus,
    pub gossip: GossipStatus,
    /// The key-value store's counters (absent on a node without storage).
    pub kv: Option<crate::kv::KvStatus>,
    /// The QUIC endpoint's counters (absent on a node without a QUIC endpoint, as in tests).
    #[serde(default)]
    pub transport: Option<TransportStatus>,
}

impl Status {
    /// Members in `state`.
    pub fn count(&self, state: &str) -> usize {
        self.members.iter().filter(|m| m.state == state).count()
    }
}
