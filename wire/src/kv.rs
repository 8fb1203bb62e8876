//! Key-value messages: what clients ask a coordinator, and what a coordinator asks replicas.

use serde::{Deserialize, Serialize};
pub use starling_id::NodeId;

/// Longest key accepted, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;
/// Longest value accepted, in bytes (1 MiB).
pub const MAX_VALUE_BYTES: usize = 1 << 20;

/// The version of a value: a hybrid-logical-clock timestamp and the node that assigned it.
/// Ordered by timestamp, then node id: the greater version wins (last write wins).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Version {
    /// Hybrid logical clock: milliseconds since the Unix epoch in the high 48 bits, a logical
    /// counter in the low 16.
    pub ts: u64,
    /// The coordinator that assigned `ts`; breaks ties.
    pub node: NodeId,
}

impl Version {
    /// The wall-clock part of the timestamp, in milliseconds since the Unix epoch.
    pub fn millis(&self) -> u64 {
        self.ts >> 16
    }
}

/// One versioned key: a value, or a tombstone (`value: None`) that records a delete.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    #[serde(with = "crate::bin")]
    pub key: Vec<u8>,
    pub version: Version,
    #[serde(with = "crate::bin::opt")]
    pub value: Option<Vec<u8>>,
}

impl Record {
    /// True for a delete marker.
    pub fn is_tombstone(&self) -> bool {
        self.value.is_none()
    }
}

/// A key as a msgpack `bin` (for lists of keys).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Key(#[serde(with = "crate::bin")] pub Vec<u8>);

/// One replica's answer for one key of a batched read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReadAnswer {
    /// The replica's record (a tombstone included).
    Found(Record),
    /// The replica has no record of the key.
    Missing,
    /// The record would not fit in this response; ask for it alone.
    TooLarge,
    /// The replica holds the key but cannot read it (a corrupt record on its disk): count this
    /// replica's answer as failed, and write the newest record back to it.
    Unreadable(String),
}

/// Bytes of records one batched replica request or response carries at most (the frame limit
/// is 4 MiB).
pub const MAX_BATCH_BYTES: usize = 2 << 20;

/// How many replicas must answer before the coordinator does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Consistency {
    /// One replica.
    One,
    /// A majority of the `N` replicas (plus one per replica that is joining or leaving).
    Quorum,
    /// Every replica.
    All,
    /// Writes only: one replica, or a hint stored for a replica that is down.
    Any,
}

impl Consistency {
    /// The lowercase name used by the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Consistency::One => "one",
            Consistency::Quorum => "quorum",
            Consistency::All => "all",
            Consistency::Any => "any",
        }
    }
}

impl std::fmt::Display for Consistency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Consistency {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "one" => Ok(Consistency::One),
            "quorum" => Ok(Consistency::Quorum),
            "all" => Ok(Consistency::All),
            "any" => Ok(Consistency::Any),
            _ => Err(format!("unknown consistency level {s:?} (one, quorum, all, any)")),
        }
    }
}

/// Why a key or value is refused, checked by clients and again by every node.
pub fn check_key_value(key: &[u8], value: Option<&[u8]>) -> Result<(), String> {
    if key.is_empty() {
        return Err("the key is empty".into());
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(format!("the key is {} bytes; the limit is {MAX_KEY_BYTES} bytes", key.len()));
    }
    if let Some(v) = value {
        if v.len() > MAX_VALUE_BYTES {
            return Err(format!(
                "the value is {} bytes; the limit is {MAX_VALUE_BYTES} bytes (1 MiB)",
                v.len()
            ));
        }
    }
    Ok(())
}
