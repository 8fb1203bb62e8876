//! A node's identity: a random 128 bits, created on its first start and kept in its data dir.
//!
//! One type everywhere (gossip, the ring, versions on the wire, the node): [`NodeId`] prints as
//! 32 hex digits (`Display`), or 8 for people ([`NodeId::short`], `Debug`), and parses back from
//! the long form. On the wire and on disk it is 16 big-endian bytes.

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

    /// The first 8 hex digits: unique enough for a person reading logs or a status page.
    pub fn short(self) -> String {
        format!("{:08x}", (self.0 >> 96) as u32)
    }

    /// The 16 big-endian bytes (the on-disk and wire form).
    pub fn to_be_bytes(self) -> [u8; 16] {
        self.0.to_be_bytes()
    }

    /// From 16 big-endian bytes.
    pub fn from_be_bytes(b: [u8; 16]) -> NodeId {
        NodeId(u128::from_be_bytes(b))
    }
}

impl From<u128> for NodeId {
    fn from(v: u128) -> Self {
        NodeId(v)
    }
}

impl fmt::LowerHex for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::LowerHex::fmt(&self.0, f)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_parses_and_encodes() {
        let id = NodeId(0x0123_4567_89ab_cdef_0011_2233_4455_6677);
        assert_eq!(id.to_string(), "0123456789abcdef0011223344556677");
        assert_eq!(id.short(), "01234567");
        assert_eq!(format!("{id:?}"), "01234567");
        assert_eq!(id.to_string().parse::<NodeId>().unwrap(), id);
        assert!("not hex".parse::<NodeId>().is_err());
        let bytes = rmp_serde::to_vec(&id).unwrap();
        assert_eq!(rmp_serde::from_slice::<NodeId>(&bytes).unwrap(), id);
        assert!(rmp_serde::from_slice::<NodeId>(&rmp_serde::to_vec(&[1u8; 3]).unwrap()).is_err());
        assert_eq!(NodeId::from_be_bytes(id.to_be_bytes()), id);
    }
}
