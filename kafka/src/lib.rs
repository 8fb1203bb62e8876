//! Kafka's wire protocol in front of Starling's topic log, so that Kafka clients (librdkafka,
//! kafka-python, the Java client) work unchanged against any Starling node.
//!
//! This crate does no IO and reads no clock: [`frame::FrameReader`] cuts a byte stream into
//! request frames, [`codec`] decodes a frame into kafka-protocol's request types (refusing API keys
//! and versions Starling does not serve) and encodes answers, [`versions`] is the table of what is
//! served, and [`serve::answer`] answers one request through the native topic calls of a
//! [`serve::Backend`] (the node, or a test's stand-in). The node runs the TCP listener, TLS and
//! the connection limits (`node/src/kafka.rs`).
//!
//! Broker ids: Kafka names brokers by a 32-bit id, Starling nodes by a 128-bit [`NodeId`].
//! [`broker_id`] is the node's short id (the first 8 hex digits of its id, as `starling status`
//! shows them) read as a number with its top bit cleared, so it is stable for the node's life and
//! the same on every node.

pub mod codec;
pub mod fake;
pub mod frame;
pub mod group;
mod groups_api;
pub mod serve;
pub mod versions;

use starling_id::NodeId;

/// The Kafka broker id of a node: its short id (top 32 bits) with the sign bit cleared.
pub fn broker_id(id: NodeId) -> i32 {
    (((id.0 >> 96) as u32) & 0x7fff_ffff) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_ids_are_non_negative_and_follow_the_short_id() {
        let a = NodeId(0xffff_ffff_0000_0000_0000_0000_0000_0001);
        assert_eq!(broker_id(a), 0x7fff_ffff);
        let b = NodeId(0x1234_5678_9abc_def0_0000_0000_0000_0000);
        assert_eq!(broker_id(b), 0x1234_5678);
        assert_eq!(format!("{:08x}", broker_id(b)), b.short());
    }
}
