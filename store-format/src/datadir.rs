//! The small files of a node's data directory, as text and bytes: `starlingd` reads and writes
//! them (atomically: temp file, fsync, rename) and hands their contents here.
//!
//! - `node-id`: the 128-bit node id in hex ([`format_node_id`], [`parse_node_id`]).
//! - `generation`: the last generation used ([`parse_generation`]); each start takes
//!   [`next_generation`], so a generation grows across restarts even if the clock steps back.
//! - `reset-key`: the QUIC stateless-reset secret in hex ([`format_reset_key`],
//!   [`parse_reset_key`]).
//! - `addresses.json`: the addresses actually bound ([`Addresses`], [`parse_addresses`]).

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use starling_id::NodeId;

/// The contents of a `node-id` file for `id`.
pub fn format_node_id(id: NodeId) -> String {
    format!("{id}\n")
}

/// The node id in the text of a `node-id` file.
pub fn parse_node_id(text: &str) -> Result<NodeId, std::num::ParseIntError> {
    text.trim().parse::<NodeId>()
}

/// The last generation in the text of a `generation` file.
pub fn parse_generation(text: &str) -> Result<u64, std::num::ParseIntError> {
    text.trim().parse::<u64>()
}

/// The generation a node takes when it starts at `now_secs` (Unix seconds), `last` being the one
/// it took before: greater than `last` even if the clock stepped back. `None` when `last` is the
/// greatest generation there is (a corrupt file: generations are Unix seconds).
pub fn next_generation(last: u64, now_secs: u64) -> Option<u64> {
    Some(now_secs.max(last.checked_add(1)?))
}

/// The contents of a `reset-key` file for `key`.
pub fn format_reset_key(key: &[u8; 32]) -> String {
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    format!("{hex}\n")
}

/// The key in the text of a `reset-key` file; `None` if it does not hold one (64 hex digits), in
/// which case the node makes a new one (the cost is only one restart's fast reconnect).
pub fn parse_reset_key(text: &str) -> Option<[u8; 32]> {
    let s = text.trim();
    if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut key = [0u8; 32];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(key)
}

/// What `addresses.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Addresses {
    pub listen: SocketAddr,
    pub advertise: SocketAddr,
    pub http: SocketAddr,
    pub pid: u32,
}

/// The contents of an `addresses.json` file.
pub fn format_addresses(a: &Addresses) -> Vec<u8> {
    // A struct of addresses and a number always serializes.
    serde_json::to_vec_pretty(a).unwrap_or_default()
}

/// The addresses in the bytes of an `addresses.json` file.
pub fn parse_addresses(bytes: &[u8]) -> Result<Addresses, serde_json::Error> {
    serde_json::from_slice(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_round_trip() {
        let id = NodeId(0x0123_4567_89ab_cdef_0011_2233_4455_6677);
        assert_eq!(parse_node_id(&format_node_id(id)), Ok(id));
        assert!(parse_node_id("not hex").is_err());
        let key = [0xa5; 32];
        assert_eq!(parse_reset_key(&format_reset_key(&key)), Some(key));
        assert_eq!(parse_reset_key("abc"), None);
        assert_eq!(parse_generation(" 42\n"), Ok(42));
        assert_eq!(next_generation(42, 10), Some(43));
        assert_eq!(next_generation(42, 100), Some(100));
        assert_eq!(next_generation(u64::MAX, 100), None);
        let a = Addresses {
            listen: "127.0.0.1:7000".parse().unwrap(),
            advertise: "[::1]:7000".parse().unwrap(),
            http: "0.0.0.0:8080".parse().unwrap(),
            pid: 7,
        };
        assert_eq!(parse_addresses(&format_addresses(&a)).unwrap(), a);
    }
}
