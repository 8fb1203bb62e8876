//! Starling's network layer, shared by the node (`starlingd`) and clients (`starling`,
//! `starling-client`): no storage, no HTTP.
//!
//! - [`transport`]: request/response and one-way messages over QUIC ([`transport::quic`]) or in
//!   memory ([`transport::mem`]), pipelined on one long-lived stream per peer, with typed calls
//!   ([`transport::Transport::call`]).
//! - [`tls`] and [`cert`]: mutual TLS from a cluster CA, certificates marked `node` or `client`.
//! - [`logging`]: the tracing subscriber and rate-limited log lines.
//! - [`bench`]: the transport benchmark behind `starling bench transport`.

pub mod bench;
pub mod cert;
pub mod logging;
pub mod tls;
pub mod transport;
