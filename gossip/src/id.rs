//! Hashes of node identities for the gossip digests.

use starling_id::NodeId;

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
