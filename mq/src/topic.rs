//! Topics as the metadata service keeps them, and Kafka's key partitioner.
//!
//! Layout under the reserved `/starling` path of the metadata tree (JSON, like Kafka's
//! ZooKeeper-era znodes, so `starling meta get` shows them readably):
//!
//! ```text
//! /starling/topics/<name>                    TopicConfig
//! /starling/topics/<name>/<partition>        PartitionState (replicas, leader, epoch, ISR)
//! ```
//!
//! A partition's state znode changes only by conditional set on its version: the znode version
//! is the replica core's state version (`replica::Replica::handle_state`).

use serde::{Deserialize, Serialize};

use crate::replica::PartitionState;

/// Root of the topic metadata.
pub const TOPICS_PATH: &str = "/starling/topics";
/// Longest topic name (Kafka's limit).
pub const MAX_TOPIC_NAME: usize = 249;
/// Most partitions per topic.
pub const MAX_PARTITIONS: u32 = 10_000;

/// A topic's settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicConfig {
    /// Number of partitions.
    pub partitions: u32,
    /// Replicas per partition.
    pub replication: u32,
    /// `acks=all` needs this many in-sync replicas.
    pub min_insync: u32,
    /// Delete closed segments older than this (ms); `None` keeps them.
    #[serde(default)]
    pub retention_ms: Option<i64>,
    /// Delete the oldest closed segments while a partition is larger than this; `None`: no limit.
    #[serde(default)]
    pub retention_bytes: Option<u64>,
}

/// Why a topic name or setting is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// Kafka's rules: 1–249 characters of `[a-zA-Z0-9._-]`, not `.` or `..`.
    #[error("topic name {0:?} is not valid: 1 to 249 characters of letters, digits, '.', '_' and '-', and not '.' or '..'")]
    BadName(String),
    /// Partition count or replication out of range.
    #[error("{0}")]
    BadSetting(String),
}

/// Checks a topic name.
pub fn check_name(name: &str) -> Result<(), TopicError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_TOPIC_NAME
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(TopicError::BadName(name.to_string()))
    }
}

impl TopicConfig {
    /// Checks the settings against a cluster of `nodes` nodes.
    pub fn check(&self, nodes: usize) -> Result<(), TopicError> {
        let bad = |s: String| Err(TopicError::BadSetting(s));
        if self.partitions == 0 || self.partitions > MAX_PARTITIONS {
            return bad(format!(
                "partitions must be 1 to {MAX_PARTITIONS}, not {}",
                self.partitions
            ));
        }
        if self.replication == 0 || self.replication as usize > nodes {
            return bad(format!(
                "replication must be 1 to the number of nodes ({nodes}), not {}",
                self.replication
            ));
        }
        if self.min_insync == 0 || self.min_insync > self.replication {
            return bad(format!(
                "min in-sync replicas must be 1 to the replication ({}), not {}",
                self.replication, self.min_insync
            ));
        }
        Ok(())
    }
}

/// The topic's znode path.
pub fn topic_path(name: &str) -> String {
    format!("{TOPICS_PATH}/{name}")
}

/// A partition's state znode path.
pub fn partition_path(name: &str, partition: u32) -> String {
    format!("{TOPICS_PATH}/{name}/{partition}")
}

/// The ring key whose preference list places a partition (`"<topic>/<partition>"`).
pub fn placement_key(name: &str, partition: u32) -> String {
    format!("{name}/{partition}")
}

/// JSON bytes of a topic config.
pub fn encode_config(c: &TopicConfig) -> Vec<u8> {
    serde_json::to_vec(c).expect("a config serializes")
}

/// A topic config from its znode.
pub fn decode_config(b: &[u8]) -> Result<TopicConfig, String> {
    serde_json::from_slice(b).map_err(|e| format!("topic config: {e}"))
}

/// JSON bytes of a partition state.
pub fn encode_state(s: &PartitionState) -> Vec<u8> {
    serde_json::to_vec(s).expect("a state serializes")
}

/// A partition state from its znode.
pub fn decode_state(b: &[u8]) -> Result<PartitionState, String> {
    serde_json::from_slice(b).map_err(|e| format!("partition state: {e}"))
}

/// Kafka's murmur2 (the Java client's `Utils.murmur2`, seed `0x9747b28c`).
pub fn murmur2(data: &[u8]) -> i32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len();
    let mut h: u32 = 0x9747_b28c ^ (len as u32);
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition Kafka's default partitioner picks for a key: `toPositive(murmur2(key)) % n`.
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    (murmur2(key) as u32 & 0x7fff_ffff) % partitions.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafka() {
        // Kafka's UtilsTest vectors.
        for (s, h) in [
            ("21", -973_932_308),
            ("foobar", -790_332_482),
            ("a-little-bit-long-string", -985_981_536),
            ("a-little-bit-longer-string", -1_486_304_829),
            ("lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58_897_971),
            ("abc", 479_470_107),
        ] {
            assert_eq!(murmur2(s.as_bytes()), h, "{s}");
        }
        assert!(partition_for_key(b"foobar", 7) < 7);
    }

    #[test]
    fn names_and_settings() {
        for good in ["orders", "a.b_c-D9", &"x".repeat(249)] {
            check_name(good).unwrap();
        }
        for bad in ["", ".", "..", "a/b", "a b", "ü", &"x".repeat(250)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        let c = TopicConfig {
            partitions: 3,
            replication: 3,
            min_insync: 2,
            retention_ms: None,
            retention_bytes: None,
        };
        c.check(3).unwrap();
        assert!(c.check(2).is_err());
        assert!(TopicConfig { partitions: 0, ..c.clone() }.check(3).is_err());
        assert!(TopicConfig { min_insync: 4, ..c.clone() }.check(5).is_err());
        assert_eq!(decode_config(&encode_config(&c)).unwrap(), c);
        assert!(decode_config(b"{").is_err());
    }
}
