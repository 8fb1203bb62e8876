//! Node identity.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A random 128-bit node identity, created on a node's first start and kept in its data dir.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct NodeId(pub u128);

impl NodeId {
    /// The low 64 bits, used for bucketing and hashing (ids are uniformly random).
    pub fn low64(self) -> u64 {
        self.0 as u64
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Short form keeps logs readable; 8 hex digits are unique enough for a human.
        write!(f, "{:08x}", (self.0 >> 96) as u32)
    }
}

impl FromStr for NodeId {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        u128::from_str_radix(s.trim(), 16).map(NodeId)
    }
}

impl Serialize for NodeId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0.to_be_bytes())
    }
}

impl<'de> Deserialize<'de> for NodeId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = NodeId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("16 bytes of node id")
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<NodeId, E> {
                let b: [u8; 16] = v.try_into().map_err(|_| E::invalid_length(v.len(), &self))?;
                Ok(NodeId(u128::from_be_bytes(b)))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<NodeId, A::Error> {
                let mut b = [0u8; 16];
                for (i, x) in b.iter_mut().enumerate() {
                    *x = seq.next_element()?.ok_or_else(|| de::Error::invalid_length(i, &self))?;
                }
                Ok(NodeId(u128::from_be_bytes(b)))
            }
        }
        d.deserialize_bytes(V)
    }
}

/// A 64-bit mix (splitmix64 finaliser): cheap, well-distributed, deterministic across platforms.
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Hash of a node's identity plus two counters; XOR-combinable into bucket and view hashes.
pub(crate) fn subject_hash(id: NodeId, a: u64, b: u64) -> u64 {
    let h = mix64(id.low64() ^ mix64((id.0 >> 64) as u64));
    mix64(h ^ mix64(a.wrapping_add(0x9e37_79b9_7f4a_7c15)) ^ mix64(b).rotate_left(17))
}
