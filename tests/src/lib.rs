//! Starling's deterministic cluster simulator ([`sim`]) and the protocol adapters that run in it:
//! [`gossip`] (the membership core alone) and [`kv`] (a whole KV node: gossip, ring view,
//! coordinator, replica, hints, store), plus the [`history`] checker that judges what the KV
//! clients saw, [`zab`] (the metadata service's ZAB core with its own checker), [`mq`] (a topic partition's replicas with the metadata service, producers, consumers and their checker), and [`kgroup`] (Kafka's consumer-group protocol as Starling coordinates it, with consumers and a checker). Tests live in `tests/`; the `gossip-sim` and `kv-sim` binaries print the figures.

pub mod gossip;
pub mod history;
pub mod kgroup;
pub mod kv;
pub mod mq;
pub mod register;
pub mod repair;
pub mod sim;
pub mod sweep;
pub mod zab;
