//! Sans-IO gossip membership and failure detection for Starling.
//!
//! One [`Gossip`] value is one node's view of the cluster. It owns no socket, reads no clock and
//! uses no global randomness: the caller passes `now` with every input, feeds it received bytes
//! ([`Gossip::handle_message`]), timer expiries ([`Gossip::handle_timeout`]) and commands
//! ([`Gossip::handle_command`]), and drains what it wants sent ([`Gossip::poll_transmit`]),
//! membership facts ([`Gossip::poll_event`]) and its next deadline ([`Gossip::poll_timeout`]).
//! The same code runs in `starlingd` over QUIC and thousands of times in the simulator.
//!
//! Three mechanisms, each from its paper (see `ALGORITHM.md`):
//! - **Scuttlebutt push-pull** (van Renesse et al.) spreads each node's versioned state; a Syn
//!   carries 64 bucket hashes, so views that agree cost O(1) bytes per round.
//! - **SWIM** (Das et al.) probes one member per period, directly then through `k` helpers;
//!   a silent member is suspected, and only it can refute, with a higher incarnation.
//! - **Lifeguard** (Dadgar et al.) scales timeouts by local health and shortens suspicions as
//!   independent confirmations arrive; a **phi-accrual** detector rates every member's
//!   heartbeats (every message is one).
//!
//! ```
//! use std::time::{Duration, Instant};
//! use starling_gossip::{Config, Gossip, NodeId};
//!
//! let t0 = Instant::now();
//! let (a_addr, b_addr) = ("127.0.0.1:7001".parse().unwrap(), "127.0.0.1:7002".parse().unwrap());
//! let mut a = Gossip::new(Config::default(), NodeId(1), 1, a_addr, vec![], 1, t0);
//! let mut b = Gossip::new(Config::default(), NodeId(2), 1, b_addr, vec![a_addr], 2, t0);
//! // Drive both until b's join reached a: deliver every transmit, fire every timer.
//! let mut now = t0;
//! for _ in 0..20 {
//!     a.handle_timeout(now);
//!     b.handle_timeout(now);
//!     loop {
//!         let mut moved = false;
//!         while let Some(t) = b.poll_transmit() { a.handle_message(now, &t.payload).unwrap(); moved = true; }
//!         while let Some(t) = a.poll_transmit() { b.handle_message(now, &t.payload).unwrap(); moved = true; }
//!         if !moved { break; }
//!     }
//!     now += Duration::from_millis(100);
//! }
//! assert_eq!(a.members().count(), 1);
//! assert!(a.converged() && b.converged());
//! ```
#![warn(clippy::unwrap_used)]

mod broadcast;
mod config;
mod core;
mod id;
mod member;
pub mod message;
pub mod phi;
pub mod state;

pub use crate::config::Config;
pub use crate::core::{Command, Event, Gossip, Stats, Transmit, BUCKETS};
pub use crate::member::{MemberState, MemberView};
pub use crate::message::{Header, Message};
pub use crate::state::NodeState;
pub use starling_id::NodeId;

/// Why an input was refused. Refused input changes nothing.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("gossip message of {len} bytes exceeds the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
    #[error("empty gossip message")]
    Empty,
    #[error("gossip protocol version {got}, this node speaks {want}")]
    Version { got: u8, want: u8 },
    #[error("malformed gossip message: {0}")]
    Malformed(String),
    #[error("gossip message claims to come from this node itself")]
    FromSelf,
}
