//! Tunables. Defaults suit a LAN; every duration is simulated or real time alike.

use std::time::Duration;

/// Gossip and failure-detector settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// Period of one push-pull round (and of rumour fan-out). One round = one of these.
    pub gossip_interval: Duration,
    /// SWIM protocol period: one member is probed per period.
    pub probe_interval: Duration,
    /// How long a direct ping may take before indirect probes are sent.
    pub probe_timeout: Duration,
    /// Members asked to ping a silent target on our behalf (SWIM's `k`).
    pub indirect_probes: usize,
    /// Lifeguard: lower bound of the suspicion timeout is
    /// `suspicion_min_mult * max(1, log10(n)) * probe_interval`.
    pub suspicion_min_mult: f64,
    /// Lifeguard: upper bound = `suspicion_max_mult * lower bound`.
    pub suspicion_max_mult: f64,
    /// Lifeguard: independent suspicions that bring the timeout down to its lower bound.
    pub suspicion_confirmations: u32,
    /// Lifeguard: cap of the local-health multiplier (timeouts scale by `1 + lhm`).
    pub max_local_health: u32,
    /// Rumours (alive/suspect/down/left) are retransmitted `mult * ceil(log10(n + 1))` times.
    pub retransmit_mult: u32,
    /// Members a node sends pending rumours to each gossip interval.
    pub rumor_fanout: usize,
    /// Bytes of rumours piggybacked on any message.
    pub piggyback_bytes: usize,
    /// Hard bound on one encoded gossip message; deltas and digests are cut to fit.
    pub max_message_bytes: usize,
    /// Up to this many known nodes a Syn carries full digests; above it, bucket hashes.
    pub full_digest_nodes: usize,
    /// Phi above which a member is probed out of turn.
    pub phi_probe_threshold: f64,
    /// A subject that changed locally is pushed in every Syn for this many gossip rounds.
    pub recent_rounds: u32,
    /// How long `left` members are remembered before they are forgotten.
    pub left_ttl: Duration,
    /// Newly learned members that are pinged directly per gossip interval.
    pub new_member_pings: usize,
    /// A leaving node waits this long for every reachable member to confirm its leave (it stops
    /// earlier once they all have); past it, one confirmation is enough.
    pub leave_linger: Duration,
    /// A leaving node that no member confirmed stops after this long anyway.
    pub leave_give_up: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            gossip_interval: Duration::from_millis(200),
            probe_interval: Duration::from_millis(400),
            probe_timeout: Duration::from_millis(150),
            indirect_probes: 3,
            suspicion_min_mult: 1.0,
            suspicion_max_mult: 2.5,
            suspicion_confirmations: 3,
            max_local_health: 8,
            retransmit_mult: 4,
            rumor_fanout: 3,
            piggyback_bytes: 1024,
            max_message_bytes: 64 * 1024,
            full_digest_nodes: 32,
            phi_probe_threshold: 8.0,
            recent_rounds: 10,
            left_ttl: Duration::from_secs(3600),
            new_member_pings: 128,
            leave_linger: Duration::from_secs(30),
            leave_give_up: Duration::from_secs(300),
        }
    }
}
