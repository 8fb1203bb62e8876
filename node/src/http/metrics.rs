//! Prometheus metrics for `GET /metrics`.
//!
//! Two kinds of figures, kept apart on purpose:
//! - what the node measures as it works (RPC latency) lives in [`Metrics`] and is updated by the
//!   code that does the work;
//! - what the gossip core already counts is read from the [`Status`] snapshot at scrape time by a
//!   collector, so the same numbers never live in two places that could drift apart. The snapshot
//!   totals only grow, which keeps the exported counters monotonic as Prometheus requires.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use super::history::Recorder;
use crate::status::Status;

/// Every exported name starts with this, so one node's figures are easy to select.
const PREFIX: &str = "starling";

/// Smallest RPC latency bucket: a request answered in memory takes tens of microseconds.
const RPC_BUCKET_START_SECS: f64 = 0.000_1;
/// Buckets double: 100 µs .. ~3.3 s in 16 steps covers a local echo up to a stalled peer.
const RPC_BUCKET_FACTOR: f64 = 2.0;
const RPC_BUCKET_COUNT: u16 = 16;

/// The member states the page and the `starling_members` gauge always show, even at 0, so a
/// dashboard sees a state drop to zero instead of the series vanishing.
pub const MEMBER_STATES: [&str; 4] = ["alive", "suspect", "down", "left"];

/// The `Content-Type` of what [`Metrics::encode`] returns (prometheus-client speaks OpenMetrics).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    kind: &'static str,
}

type HistogramFamily = Family<RpcLabels, Histogram, fn() -> Histogram>;

/// The node's own measurements, shared by every task that handles requests.
///
/// Cheap to update from many tasks at once: each observation touches one atomic histogram.
#[derive(Debug)]
pub struct Metrics {
    rpc_duration: HistogramFamily,
    /// The last minutes, for the live page (`GET /history`).
    pub(crate) recent: Recorder,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        fn rpc_histogram() -> Histogram {
            Histogram::new(exponential_buckets(
                RPC_BUCKET_START_SECS,
                RPC_BUCKET_FACTOR,
                RPC_BUCKET_COUNT,
            ))
        }
        Self {
            rpc_duration: Family::new_with_constructor(rpc_histogram as fn() -> Histogram),
            recent: Recorder::default(),
        }
    }

    /// Records how long handling one RPC of `kind` (`"status"`, `"gossip"`, ...) took.
    ///
    /// `kind` is `'static` so that label values come from code, never from a peer: a peer that
    /// could choose the label could grow the series without bound.
    /// The client API's key-value requests also feed the latency of the page's history.
    pub fn observe_rpc(&self, kind: &'static str, elapsed: Duration) {
        self.rpc_duration.get_or_create(&RpcLabels { kind }).observe(elapsed.as_secs_f64());
        self.recent.ops.observe(kind, elapsed);
    }

    /// The OpenMetrics text exposition of these measurements and of `status`.
    ///
    /// The registry is built per scrape: it only borrows the long-lived histogram family (an
    /// `Arc` clone) and wraps this scrape's snapshot, which keeps [`Metrics`] free of any link
    /// to where status snapshots come from.
    pub fn encode(&self, status: Arc<Status>) -> Result<String, fmt::Error> {
        let mut registry = Registry::with_prefix(PREFIX);
        registry.register_with_unit(
            "rpc_duration",
            "Time to handle one RPC, by request kind",
            Unit::Seconds,
            self.rpc_duration.clone(),
        );
        registry.register_collector(Box::new(StatusCollector(status)));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry)?;
        Ok(out)
    }
}

/// Encodes `(name, help, value)` counters.
fn encode_counters(
    enc: &mut DescriptorEncoder,
    list: &[(&str, &str, u64)],
) -> Result<(), fmt::Error> {
    for &(name, help, value) in list {
        let metric = ConstCounter::new(value);
        metric.encode(enc.encode_descriptor(name, help, None, metric.metric_type())?)?;
    }
    Ok(())
}

/// Encodes `(name, help, value)` gauges.
fn encode_gauges(
    enc: &mut DescriptorEncoder,
    list: &[(&str, &str, i64)],
) -> Result<(), fmt::Error> {
    for &(name, help, value) in list {
        let metric = ConstGauge::new(value);
        metric.encode(enc.encode_descriptor(name, help, None, metric.metric_type())?)?;
    }
    Ok(())
}

/// Exposes one [`Status`] snapshot; lives for a single scrape.
#[derive(Debug)]
struct StatusCollector(Arc<Status>);

impl Collector for StatusCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let s = &*self.0;
        let g = &s.gossip;
        let counters: [(&str, &str, u64); 9] = [
            ("gossip_rounds", "Gossip rounds started", g.rounds),
            ("gossip_messages_sent", "Gossip messages sent", g.messages_sent),
            ("gossip_bytes_sent", "Gossip payload bytes sent", g.bytes_sent),
            ("gossip_messages_received", "Gossip messages received", g.messages_received),
            ("gossip_bytes_received", "Gossip payload bytes received", g.bytes_received),
            ("gossip_refused", "Gossip messages refused as malformed or unexpected", g.refused),
            ("gossip_probes", "SWIM probes sent", g.probes),
            ("gossip_probes_failed", "SWIM probes that got no ack in time", g.probes_failed),
            ("gossip_refutations", "Suspicions of this node it refuted", g.refutations),
        ];
        encode_counters(&mut encoder, &counters)?;
        if let Some(tls) = &s.tls {
            encode_counters(
                &mut encoder,
                &[(
                    "refused_peer_rpcs",
                    "Peer RPCs refused because the sender presented a client certificate",
                    tls.refused_peer_rpcs,
                )],
            )?;
            encode_gauges(
                &mut encoder,
                &[(
                    "certificate_expiry_timestamp_seconds",
                    "When this node's certificate expires (Unix time)",
                    tls.not_after,
                )],
            )?;
        }
        if let Some(kv) = &s.kv {
            let kv_counters: [(&str, &str, u64); 16] = [
                ("kv_writes", "Writes coordinated by this node that succeeded", kv.writes),
                ("kv_reads", "Reads coordinated by this node that succeeded", kv.reads),
                (
                    "kv_write_failures",
                    "Writes that failed (unavailable, timeout)",
                    kv.write_failures,
                ),
                ("kv_read_failures", "Reads that failed (unavailable, timeout)", kv.read_failures),
                (
                    "kv_hints_stored",
                    "Hints stored for replicas that did not acknowledge",
                    kv.hints_stored,
                ),
                ("kv_hints_replayed", "Hints delivered to their replica", kv.hints_replayed),
                ("kv_hints_dropped", "Hints that could not reach their replica (replica down past the hint window, or gone), handed to another replica of their key instead: anti-entropy carries them on", kv.hints_dropped),
                ("kv_hints_past_grace", "Hints dropped undelivered because they were older than the tombstone grace period", kv.hints_past_grace),
                ("kv_read_repairs", "Stale replicas repaired by reads", kv.read_repairs),
                ("kv_replica_writes", "Records stored as a replica", kv.replica_writes),
                (
                    "kv_fallback_writes",
                    "Writes for a down replica acknowledged by a fallback node (sloppy quorum)",
                    kv.fallback_writes,
                ),
                (
                    "kv_superseded_writes",
                    "Writes acknowledged as superseded: a replica already held a newer version",
                    kv.superseded_writes,
                ),
                (
                    "kv_refused_ahead",
                    "Replica writes refused: their version was further ahead of this node's clock than the maximum clock offset",
                    kv.refused_ahead,
                ),
                (
                    "kv_hints_over_cap",
                    "Hints not kept because the hint store was at its cap (left to read repair and anti-entropy)",
                    kv.hints_over_cap,
                ),
                (
                    "kv_unreadable_records",
                    "Records this node's store could not read (corrupt): each failed only its own key and was repaired from other replicas",
                    kv.unreadable_records,
                ),
                (
                    "kv_refused_clock",
                    "Writes this node refused to coordinate because its clock was off the cluster's",
                    kv.refused_clock,
                ),
            ];
            encode_counters(&mut encoder, &kv_counters)?;
            let kv_gauges: [(&str, &str, i64); 10] = [
                ("kv_hints_bytes", "Bytes of hints kept for other replicas", kv.hints_bytes as i64),
                (
                    "clock_offset_ms",
                    "This node's clock minus the cluster's (median over its peers), in ms",
                    kv.clock_offset_ms,
                ),
                (
                    "clock_offset_too_large",
                    "1 while this node's clock is further off the cluster's than --max-clock-offset (it coordinates no writes)",
                    i64::from(kv.clock_offset_ms.unsigned_abs() > kv.max_clock_offset_ms),
                ),
                ("kv_hints_pending", "Hints waiting for their replica", kv.hints_pending as i64),
                (
                    "kv_keys_estimate",
                    "Keys in the local store (RocksDB estimate)",
                    kv.keys_estimate as i64,
                ),
                (
                    "kv_version_cache_keys",
                    "Keys whose stored version is cached in memory",
                    kv.version_cache_keys as i64,
                ),
                (
                    "kv_version_cache_capacity",
                    "Most keys the version cache holds (0: off)",
                    kv.version_cache_capacity as i64,
                ),
                (
                    "kv_storage_failed",
                    "1 once a write or WAL sync failed: the node takes no more writes until restarted",
                    i64::from(kv.storage_failure.is_some()),
                ),
                (
                    "kv_recovering",
                    "1 while the store, after an unclean stop, is compared with its replicas (no replica reads answered)",
                    i64::from(kv.recovering.is_some()),
                ),
                (
                    "kv_recovered_records",
                    "Records the last recovery after an unclean stop received from other replicas",
                    kv.recovered_records as i64,
                ),
            ];
            encode_gauges(&mut encoder, &kv_gauges)?;
        }
        if let Some(m) = &s.meta {
            let zxid = |z: &str| i64::from_str_radix(z.trim_start_matches("0x"), 16).unwrap_or(0);
            let meta_counters: [(&str, &str, u64); 11] = [
                (
                    "meta_proposed",
                    "Transactions this node proposed as the metadata leader",
                    m.proposed,
                ),
                ("meta_committed", "Of those, transactions committed", m.committed),
                (
                    "meta_unknown",
                    "Writes answered with an unknown outcome (their leader lost its quorum)",
                    m.unknown,
                ),
                ("meta_forwarded", "Metadata writes forwarded to the leader", m.forwarded),
                (
                    "meta_persist_batches",
                    "Durable batches of the metadata log (one fsync each)",
                    m.persist_batches,
                ),
                ("meta_persist_ops", "Operations in those batches", m.persist_ops),
                ("meta_messages_sent", "ZAB messages sent to peers", m.messages_sent),
                ("meta_messages_received", "ZAB messages received from peers", m.messages_received),
                (
                    "meta_messages_dropped",
                    "ZAB messages dropped (full queue, unreachable peer, undecodable)",
                    m.messages_dropped,
                ),
                (
                    "meta_sessions_expired",
                    "Client sessions this node expired as leader",
                    m.sessions_expired,
                ),
                (
                    "meta_errors",
                    "Protocol errors and anomalies that made this node look for a leader again",
                    m.errors + m.anomalies,
                ),
            ];
            encode_counters(&mut encoder, &meta_counters)?;
            let role = |r: &str| i64::from(m.role == r);
            let meta_gauges: [(&str, &str, i64); 12] = [
                ("meta_leading", "1 while this node leads the metadata service", role("leading")),
                (
                    "meta_synced",
                    "1 while this node is synchronized with an established leader",
                    i64::from(m.synced),
                ),
                (
                    "meta_voter",
                    "1 if this node is a metadata voter (else an observer)",
                    i64::from(m.voter),
                ),
                ("meta_epoch", "The metadata service's current epoch here", i64::from(m.epoch)),
                ("meta_last_zxid", "Last zxid in this node's metadata log", zxid(&m.last_zxid)),
                (
                    "meta_applied_zxid",
                    "Last zxid applied to this node's tree",
                    zxid(&m.applied_zxid),
                ),
                (
                    "meta_log_entries",
                    "Entries in the metadata log (since the snapshot's interval)",
                    m.log_entries as i64,
                ),
                (
                    "meta_snapshot_bytes",
                    "Size of the last metadata snapshot",
                    m.snapshot_bytes as i64,
                ),
                ("meta_znodes", "Znodes in the tree", m.znodes as i64),
                ("meta_sessions", "Open client sessions", m.sessions as i64),
                ("meta_ephemerals", "Ephemeral znodes", m.ephemerals as i64),
                ("meta_watches", "Watches registered on this node", m.watches as i64),
            ];
            encode_gauges(&mut encoder, &meta_gauges)?;
        }
        if !s.topics.is_empty() {
            let count = |r: &str| s.topics.iter().filter(|p| p.role == r).count() as i64;
            let topic_gauges: [(&str, &str, i64); 5] = [
                ("topic_partitions_leading", "Topic partitions this node leads", count("leader")),
                (
                    "topic_partitions_following",
                    "Topic partitions this node follows",
                    count("follower"),
                ),
                (
                    "topic_partitions_idle",
                    "Topic partition replicas on this node that neither lead nor follow (starting, or stepped aside)",
                    count("none"),
                ),
                (
                    "topic_log_bytes",
                    "Bytes of topic partition logs on this node",
                    s.topics.iter().map(|p| p.size_bytes as i64).sum(),
                ),
                (
                    "topic_partitions_moving",
                    "Partitions this node leads that are moving to a new replica list (a node joined, left or was removed)",
                    s.topics.iter().filter(|p| p.moving.is_some()).count() as i64,
                ),
            ];
            encode_gauges(&mut encoder, &topic_gauges)?;
        }
        if let Some(r) = &s.repair {
            let repair_counters: [(&str, &str, u64); 11] = [
                (
                    "repair_tombstones_purged",
                    "Tombstones past their grace period that compaction dropped (a complete repair of their range started after them)",
                    r.tombstones_purged,
                ),
                (
                    "repair_tombstones_held",
                    "Tombstones past their grace period that compaction kept because no complete repair of their range started after them (counted per compaction)",
                    r.tombstones_held,
                ),
                ("repair_sessions", "Anti-entropy sessions this node started", r.sessions),
                (
                    "repair_sessions_failed",
                    "Of those, sessions that failed (peer down, refused, timed out)",
                    r.sessions_failed,
                ),
                (
                    "repair_requests_answered",
                    "Anti-entropy requests of other nodes' sessions answered",
                    r.requests_answered,
                ),
                (
                    "repair_ranges_compared",
                    "Token ranges compared with their replicas",
                    r.ranges_compared,
                ),
                (
                    "repair_ranges_differing",
                    "Of those, ranges that differed on some replica",
                    r.ranges_differing,
                ),
                (
                    "repair_keys_received",
                    "Records anti-entropy copied to this node",
                    r.keys_received,
                ),
                ("repair_keys_sent", "Records anti-entropy copied from this node", r.keys_sent),
                ("repair_bytes_sent", "Bytes of anti-entropy messages sent", r.bytes_sent),
                (
                    "repair_bytes_received",
                    "Bytes of anti-entropy messages received",
                    r.bytes_received,
                ),
            ];
            encode_counters(&mut encoder, &repair_counters)?;
            let never = r.ranges.iter().filter(|x| x.repaired_ms.is_none()).count() as i64;
            let repair_gauges: [(&str, &str, i64); 4] = [
                ("repair_running", "1 while a repair runs on this node", i64::from(r.running.is_some())),
                ("repair_segments_fresh", "Anti-entropy segments whose hash is current", r.segments_fresh as i64),
                ("repair_ranges_never_repaired", "Ranges this node replicates that no complete repair has covered (their tombstones are kept)", never),
                (
                    "repair_oldest_age_seconds",
                    "Age of the least recently completed repair of a range this node replicates (-1: some range never was)",
                    r.oldest_repair_age_secs.map_or(-1, |a| a as i64),
                ),
            ];
            encode_gauges(&mut encoder, &repair_gauges)?;
        }
        if let Some(t) = &s.transport {
            let transport_counters: [(&str, &str, u64); 4] = [
                (
                    "quic_refused",
                    "Incoming QUIC connections refused: too many handshakes in progress (in all or from one address), or too many connections open",
                    t.refused,
                ),
                (
                    "quic_refused_per_address",
                    "Incoming QUIC connections refused because their IP address had too many handshakes in progress (counted in quic_refused too)",
                    t.refused_per_address,
                ),
                (
                    "quic_retries",
                    "Incoming QUIC connection attempts answered with a stateless Retry (address validation) under load",
                    t.retries,
                ),
                (
                    "quic_handshake_timeouts",
                    "Incoming QUIC handshakes dropped because they did not finish in time",
                    t.handshake_timeouts,
                ),
            ];
            encode_counters(&mut encoder, &transport_counters)?;
            let transport_gauges: [(&str, &str, i64); 2] = [
                (
                    "quic_connections",
                    "QUIC connections open (handshake completed), incoming and outgoing",
                    i64::try_from(t.connections).unwrap_or(i64::MAX),
                ),
                (
                    "quic_pending_handshakes",
                    "Incoming QUIC handshakes in progress",
                    i64::try_from(t.pending_handshakes).unwrap_or(i64::MAX),
                ),
            ];
            encode_gauges(&mut encoder, &transport_gauges)?;
        }
        if let Some(k) = &s.kafka {
            let kafka_counters: [(&str, &str, u64); 5] = [
                ("kafka_connections_accepted", "Kafka client connections accepted", k.connections_accepted),
                (
                    "kafka_connections_refused",
                    "Kafka client connections closed at once because --kafka-max-connections were open",
                    k.connections_refused,
                ),
                ("kafka_handshakes_failed", "Kafka client TLS handshakes that failed or timed out", k.handshakes_failed),
                (
                    "kafka_connections_timed_out",
                    "Kafka client connections closed idle (--kafka-idle-timeout) or with a request not finished in time",
                    k.connections_timed_out,
                ),
                (
                    "kafka_requests_refused",
                    "Kafka requests refused with their connection closed: malformed, oversized, or an API or version not served",
                    k.requests_refused,
                ),
            ];
            encode_counters(&mut encoder, &kafka_counters)?;
            let requests = ConstCounter::new(0u64);
            let mut family = encoder.encode_descriptor(
                "kafka_requests",
                "Kafka requests served, by API",
                None,
                requests.metric_type(),
            )?;
            for (api, n) in &k.requests {
                ConstCounter::new(*n).encode(family.encode_family(&[("api", api.as_str())])?)?;
            }
            let kafka_gauges: [(&str, &str, i64); 3] = [
                ("kafka_connections", "Kafka client connections open", k.connections as i64),
                ("kafka_groups", "Kafka consumer groups this node coordinates", k.groups as i64),
                (
                    "kafka_group_members",
                    "Members of the Kafka consumer groups this node coordinates",
                    k.group_members as i64,
                ),
            ];
            encode_gauges(&mut encoder, &kafka_gauges)?;
        }
        let ring_agreed = ConstGauge::new(i64::from(s.ring.agreed));
        ring_agreed.encode(encoder.encode_descriptor(
            "ring_agreed",
            "1 when every alive member reports this node's ring digest",
            None,
            ring_agreed.metric_type(),
        )?)?;

        let gauges: [(&str, &str, i64); 3] = [
            (
                "gossip_local_health",
                "Lifeguard local-health multiplier (0 = healthy)",
                i64::from(g.local_health),
            ),
            (
                "converged",
                "1 when every alive member reports this node's membership and ring digests",
                i64::from(s.converged),
            ),
            (
                "insecure",
                "1 when this node runs without authentication (--insecure)",
                i64::from(s.insecure),
            ),
        ];
        encode_gauges(&mut encoder, &gauges)?;

        let uptime = ConstGauge::new(s.uptime_secs);
        uptime.encode(encoder.encode_descriptor(
            "uptime",
            "Time since this node started",
            Some(&Unit::Seconds),
            uptime.metric_type(),
        )?)?;

        let mut members = encoder.encode_descriptor(
            "members",
            "Members this node sees, by state (including itself)",
            None,
            MetricType::Gauge,
        )?;
        for state in MEMBER_STATES {
            // A member count fits i64 on any machine this runs on; saturate rather than wrap.
            let count = i64::try_from(s.count(state)).unwrap_or(i64::MAX);
            ConstGauge::new(count).encode(members.encode_family(&[("state", state)])?)?;
        }
        Ok(())
    }
}
