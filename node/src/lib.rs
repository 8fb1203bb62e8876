//! `starlingd`'s library: the daemon's drivers, storage and services.
//!
//! - [`storage`]: the local store (RocksDB, or memory) behind one trait.
//! - [`kv`]: the replicated key-value store: coordinator, replica, hints, read repair, join.
//! - [`driver`]: the gossip driver; [`http`]: `/status`, `/metrics`, `/ready` and the live page.
//! - [`transport`], [`tls`], [`cert`]: the network layer, from `starling-net` (shared with the
//!   client crate and the `starling` command, which link neither RocksDB nor the HTTP server).
//!
//! IO contract: this crate owns every socket, timer and task (on a tokio runtime of either
//! flavour); the protocol cores it drives (gossip, ...) own none. A node answers requests through a
//! [`transport::Service`] and reaches peers through a [`transport::Transport`]:
//!
//! ```
//! use starling_node::transport::{mem::MemNetwork, service_fn, Transport, TransportConfig};
//! use starling_wire::{ClientRequest, Echo, Request, Response};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let net = MemNetwork::new();
//! let echo = service_fn(|_peer, req| async move {
//!     match req {
//!         Request::Client(ClientRequest::Echo(bytes)) => Response::Echo(bytes),
//!         _ => Response::Ok,
//!     }
//! });
//! let server = net.bind(echo, TransportConfig::default());
//! let client = net.bind(service_fn(|_, _| async { Response::Ok }), TransportConfig::default());
//! let answer = client.call(server.local_addr(), Echo(b"hi".to_vec())).await.unwrap();
//! assert_eq!(answer, b"hi".to_vec());
//! # });
//! ```
//!
//! The same code runs over QUIC with [`transport::quic::QuicTransport::bind`] and a
//! [`tls::TlsConfigs`] from [`tls::mutual`].

pub mod config;
pub mod datadir;
pub mod driver;
pub mod group_offsets;
pub mod groups;
pub mod http;
pub mod kafka;
pub mod kv;
pub mod meta;
pub mod node;
pub mod repair;
pub mod status;
pub mod storage;
pub mod topics;
pub mod zab_store;

/// The network layer lives in `starling-net` (clients share it); re-exported under the names the
/// node's code and tests use.
pub use starling_net::{bench, cert, logging, tls, transport};
