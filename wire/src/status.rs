//! The node's self-description: what `GET /status`, `starling status` and the live page show.
//! Built by the node's gossip driver; read by the HTTP server, the `Status` RPC and clients.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One member as this node sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MemberStatus {
    pub node_id: String,
    pub addr: String,
    /// `alive`, `suspect`, `down`, `left`, or `removed` (a dead node taken off the ring with `starling removenode`).
    pub state: String,
    /// Phi-accrual suspicion level of this member's heartbeats (0 for this node itself).
    pub phi: f64,
    pub incarnation: u64,
    pub generation: u64,
    pub zone: Option<String>,
    /// The membership digest this member last reported.
    pub digest: Option<String>,
    /// The address Kafka clients reach this member's Kafka listener at (`--kafka`), if it runs one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka: Option<String>,
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
    /// Every node on the ring (joining and leaving included), sorted by node id, with its shares
    /// of the keyspace. `arcs` refers to them by their index here.
    #[serde(default)]
    pub members: Vec<RingMemberStatus>,
    /// How many equal slices of the token space `arcs` draws the ring with (0 without arcs).
    #[serde(default)]
    pub arc_bins: u32,
    /// The ring as a picture, at `arc_bins` resolution: `arcs[r]` goes round the ring from
    /// token 0 in runs of `[slices, member]`, saying that the next `slices` slices have
    /// `members[member]` as their replica of rank `r` (0: the owner of the range, the node whose
    /// token ends it; 1 and on: the next replicas in preference order). One list per replica
    /// rank, `min(N, nodes serving reads)` of them. A slice shows the node holding most of it,
    /// so ranges narrower than a slice are not drawn; the shares in `members` are exact. The
    /// size is bounded by `arc_bins × N` whatever the number of tokens.
    #[serde(default)]
    pub arcs: Vec<Vec<(u32, u32)>>,
    /// The ring digest each member reports, by node id (this node's included; members that
    /// report none yet are missing). The ring agrees when every alive member's equals `digest`.
    #[serde(default)]
    pub member_digests: BTreeMap<String, String>,
}

/// One node on the ring and how much of the keyspace it holds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RingMemberStatus {
    pub node_id: String,
    /// `joining`, `normal` or `leaving`.
    pub status: String,
    pub zone: Option<String>,
    /// Its virtual-node tokens.
    pub tokens: usize,
    /// Fraction of the token space whose ranges end at one of its tokens: the keys it is the
    /// first replica of. Sums to 1 over the nodes serving reads (0 for a joining node).
    pub owned_fraction: f64,
    /// Fraction of the token space it is one of the `N` replicas of. Sums to
    /// `min(N, nodes serving reads)` over the ring.
    pub replicated_fraction: f64,
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
    /// Incoming connection attempts refused: too many handshakes in progress (in all, or from
    /// the attempt's IP address), or too many connections open when a handshake completed.
    pub refused: u64,
    /// Of `refused`, the attempts refused because their IP address already had as many
    /// handshakes in progress as one address may.
    #[serde(default)]
    pub refused_per_address: u64,
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
    pub kv: Option<KvStatus>,
    /// The QUIC endpoint's counters (absent on a node without a QUIC endpoint, as in tests).
    #[serde(default)]
    pub transport: Option<TransportStatus>,
    /// The metadata service (absent on a node without one, as in tests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<MetaStatus>,
    /// Anti-entropy on this node (absent on a node without storage).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repair: Option<RepairStatus>,
    /// The topic partitions this node replicates, sorted by topic and partition.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topics: Vec<PartitionStatus>,
    /// The Kafka listener (absent without `--kafka`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka: Option<KafkaStatus>,
    /// The last minutes of this node, as `GET /history` has them: in the `Status` RPC's answer
    /// (`starling status`), absent from `GET /status` and from nodes that predate it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<History>,
}

/// The last minutes of a node, sampled by the node itself every `interval_ms` (`GET /history`,
/// and `history` in the `Status` RPC's answer): the client requests it coordinated and the view
/// every member reported. Samples are columns, oldest first, each array aligned with `t`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct History {
    /// Time between samples.
    pub interval_ms: u64,
    /// Most samples kept.
    pub capacity: usize,
    /// When each sample was taken (Unix ms), oldest first; the other arrays are aligned with it.
    pub t: Vec<u64>,
    /// Reads this node coordinated per second over the interval before the sample (`null` for
    /// the first sample).
    pub reads: Vec<Option<f64>>,
    /// Writes and deletes this node coordinated per second.
    pub writes: Vec<Option<f64>>,
    /// Reads and writes that failed per second (`null` on a node without storage).
    pub failures: Vec<Option<f64>>,
    /// 99th percentile of those reads' latency, in ms (`null` when there were none).
    pub read_p99_ms: Vec<Option<f64>>,
    pub write_p99_ms: Vec<Option<f64>>,
    /// Whether this node was converged.
    pub converged: Vec<bool>,
    /// Each distinct view a member reported.
    pub views: Vec<HistoryView>,
    /// Every member seen during the samples, sorted by address, with its runs
    /// `[from_ms, to_ms, view]`: it reported `views[view]` in every sample from `from_ms` to
    /// `to_ms`.
    pub members: Vec<HistoryMember>,
}

/// What a member reports, as the sampling node sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryView {
    /// `alive`, `suspect`, `down` or `left`.
    pub state: String,
    /// Its membership digest.
    pub digest: Option<String>,
    /// Its ring digest.
    pub ring: Option<String>,
}

/// One member's runs of one view in a [`History`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryMember {
    pub node_id: String,
    pub addr: String,
    pub runs: Vec<(u64, u64, usize)>,
}

/// The Kafka listener of this node (`--kafka`): connections, requests, and the consumer groups
/// it coordinates.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct KafkaStatus {
    /// The address Kafka clients are told to reach this node at.
    pub advertise: String,
    pub tls: bool,
    /// Connections open now, and the most served at once.
    pub connections: u64,
    pub max_connections: u64,
    /// Connections accepted since the node started.
    pub connections_accepted: u64,
    /// Connections refused because `max_connections` were open.
    pub connections_refused: u64,
    /// TLS handshakes that failed or timed out.
    pub handshakes_failed: u64,
    /// Connections closed for having sent nothing for the idle timeout, or for a request not
    /// finished within the request timeout.
    pub connections_timed_out: u64,
    /// Requests answered (or, `acks=0`, served), by API name.
    pub requests: BTreeMap<String, u64>,
    /// Requests refused with the connection closed: malformed, oversized, an API or version not
    /// served.
    pub requests_refused: u64,
    /// Consumer groups this node coordinates, and their members.
    pub groups: u64,
    pub group_members: u64,
}

/// Anti-entropy (Merkle-tree repair) on this node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RepairStatus {
    /// Continuous repair's period (`None`: off; `starling repair` only).
    pub interval_secs: Option<u64>,
    /// The grain: `2^segment_bits` segments.
    pub segment_bits: u8,
    /// Segments whose hash is computed and current (the rest are recomputed when compared).
    pub segments_fresh: u64,
    /// Sessions this node started, and of them those that failed.
    pub sessions: u64,
    pub sessions_failed: u64,
    /// Requests of other nodes' sessions this node answered.
    pub requests_answered: u64,
    pub ranges_compared: u64,
    pub ranges_differing: u64,
    /// Records received (applied here) and sent, in sessions this node started or answered.
    pub keys_received: u64,
    pub keys_sent: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// A repair running now.
    pub running: Option<RepairProgress>,
    /// The last `starling repair` run on this node.
    pub last: Option<crate::repair::RepairSummary>,
    /// The ranges this node replicates, each with when its last complete repair started (every
    /// replica took part), in ms since the Unix epoch (`None`: never, since this node knows).
    pub ranges: Vec<RangeRepair>,
    /// Age of the least recently repaired range, in seconds (`None`: some range never was).
    pub oldest_repair_age_secs: Option<f64>,
    /// Tombstones past their grace period that compaction dropped since start (a complete
    /// repair of their range started after them), and those it kept because none had (each
    /// compaction that met one counts it).
    #[serde(default)]
    pub tombstones_purged: u64,
    #[serde(default)]
    pub tombstones_held: u64,
}

/// A repair in progress.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepairProgress {
    /// `manual` (`starling repair`) or `continuous`.
    pub kind: String,
    pub started_ms: u64,
    /// Sessions to run (one per peer) and done.
    pub sessions_total: u64,
    pub sessions_done: u64,
    pub keys_received: u64,
    pub keys_sent: u64,
    pub bytes: u64,
}

/// When a range was last repaired completely.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeRepair {
    pub start: u64,
    pub end: u64,
    pub repaired_ms: Option<u64>,
}

/// One topic partition replica on this node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionStatus {
    pub topic: String,
    pub partition: u32,
    /// `leader`, `follower` or `none` (not yet, or stepped aside).
    pub role: String,
    /// The partition's leader as this replica knows it (node id).
    pub leader: Option<String>,
    pub leader_epoch: i32,
    /// In-sync replicas (node ids).
    pub isr: Vec<String>,
    pub log_start: i64,
    pub log_end: i64,
    pub high_watermark: i64,
    pub size_bytes: u64,
    /// The replica list as recorded (node ids, ring order).
    #[serde(default)]
    pub replicas: Vec<String>,
    /// On the leader, a move to the ring's new preference list in progress: the replicas
    /// being added (catching up) and those dropped once they are in sync.
    #[serde(default)]
    pub moving: Option<PartitionMove>,
}

/// A partition's replica-list move, as its leader carries it out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionMove {
    /// Replicas being added, not yet in sync.
    pub adding: Vec<MovingReplica>,
    /// Replicas dropped once every added one is in sync (node ids).
    pub removing: Vec<String>,
}

/// A replica a move adds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MovingReplica {
    pub node: String,
    /// Its log end as of its last fetch (`None` before its first).
    pub log_end: Option<i64>,
}

/// The metadata service as this node runs it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MetaStatus {
    /// `starting` (resolving the voters), `looking`, `following`, `observing` or `leading`.
    pub role: String,
    /// Synchronized with the leader (or, leading, established by a quorum).
    pub synced: bool,
    /// Whether this node is a voter (else an observer).
    pub voter: bool,
    /// The voters' node ids (empty while starting).
    pub voters: Vec<String>,
    /// Voter addresses not yet resolved to node ids (while starting).
    #[serde(default)]
    pub waiting_for: Vec<String>,
    pub leader: Option<String>,
    pub epoch: u32,
    pub accepted_epoch: u32,
    /// Zxids as `0x` hex (`epoch << 32 | counter`).
    pub last_zxid: String,
    pub committed_zxid: String,
    pub applied_zxid: String,
    pub log_entries: u64,
    pub snapshot_zxid: String,
    pub snapshot_bytes: u64,
    /// Learners in sync with this leader.
    pub synced_learners: u64,
    pub znodes: u64,
    pub sessions: u64,
    pub ephemerals: u64,
    pub watches: u64,
    /// Transactions this node proposed as leader, and how many committed.
    pub proposed: u64,
    pub committed: u64,
    /// Client writes answered "outcome unknown" (their leader lost leadership).
    pub unknown: u64,
    /// Writes forwarded to the leader.
    pub forwarded: u64,
    /// Durable batches written (each one fsync) and the operations in them.
    pub persist_batches: u64,
    pub persist_ops: u64,
    pub messages_sent: u64,
    pub messages_received: u64,
    /// Messages dropped: a full queue to a peer, an unreachable peer, undecodable bytes.
    pub messages_dropped: u64,
    /// Sessions this node expired as leader.
    pub sessions_expired: u64,
    /// Protocol errors and anomalies (each made this node look for a leader again).
    pub errors: u64,
    pub anomalies: u64,
}

impl Status {
    /// Members in `state`.
    pub fn count(&self, state: &str) -> usize {
        self.members.iter().filter(|m| m.state == state).count()
    }
}

/// The key-value layer's counters (a snapshot of the node's `KvStats`) plus the store's size.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KvStatus {
    pub replication: usize,
    pub keys_estimate: u64,
    pub hints_pending: u64,
    pub writes: u64,
    pub reads: u64,
    pub write_failures: u64,
    pub read_failures: u64,
    pub hints_stored: u64,
    pub hints_replayed: u64,
    /// Hints that could not reach their replica (expired, replica down past the hint window, or
    /// gone): each handed to another replica of its key first, never just deleted, so
    /// anti-entropy carries its write on.
    pub hints_dropped: u64,
    /// Hints dropped undelivered: older than the tombstone grace period (their write could
    /// bring back a key whose tombstone was purged).
    #[serde(default)]
    pub hints_past_grace: u64,
    pub read_repairs: u64,
    pub replica_writes: u64,
    pub replica_reads: u64,
    /// Writes for a down replica that a fallback node acknowledged (sloppy quorum).
    #[serde(default)]
    pub fallback_writes: u64,
    /// Keys in the version cache (0 without one).
    #[serde(default)]
    pub version_cache_keys: u64,
    /// The version cache's capacity in keys (0: no cache).
    #[serde(default)]
    pub version_cache_capacity: u64,
    /// Writes acknowledged as superseded: a replica already held a newer version.
    #[serde(default)]
    pub superseded_writes: u64,
    /// Replica writes refused because their version was further ahead of this node's clock
    /// than the maximum clock offset.
    #[serde(default)]
    pub refused_ahead: u64,
    /// Writes this node refused to coordinate because its clock was off the cluster's.
    #[serde(default)]
    pub refused_clock: u64,
    /// Reads of this node's store that found a record it could not read (corrupt on disk); each
    /// failed only its own key, which the coordinator then repaired from other replicas.
    #[serde(default)]
    pub unreadable_records: u64,
    /// Hints not kept because the hint store was at its cap (left to read repair and
    /// anti-entropy).
    #[serde(default)]
    pub hints_over_cap: u64,
    /// Bytes of hints kept.
    #[serde(default)]
    pub hints_bytes: u64,
    /// This node's clock minus the cluster's (the median over its peers), in ms.
    #[serde(default)]
    pub clock_offset_ms: i64,
    /// Peers whose clocks were measured recently.
    #[serde(default)]
    pub clock_peers: u64,
    /// The bound (`--max-clock-offset`), in ms.
    #[serde(default)]
    pub max_clock_offset_ms: u64,
    /// Why the local store refuses writes (a failed write or WAL sync), if it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_failure: Option<String>,
    /// Why this node answers no replica reads yet (after an unclean stop its store may lack
    /// writes it had acknowledged: it first compares its ranges with their other replicas).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovering: Option<String>,
    /// Records the last recovery received from other replicas: writes this node had lost (or
    /// had not received before it stopped).
    #[serde(default)]
    pub recovered_records: u64,
}
