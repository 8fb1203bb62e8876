//! Starling's deterministic cluster simulator ([`sim`]) and the protocol adapters that run in it
//! ([`gossip`]). Tests live in `tests/`; the `gossip-sim` binary prints the figures.

pub mod gossip;
pub mod sim;
