//! `starlingd`'s library: everything the daemon and the `starling` command share.
//!
//! - [`cert`]: the cluster CA and the certificates it issues (`starling cert`).
//! - [`tls`]: rustls configurations for mutual TLS (or `--insecure`).
//! - [`transport`]: pipelined request/response and one-way messages over QUIC, or in memory.
//! - [`storage`]: the local store (RocksDB, or memory) behind one trait.
//! - [`kv`]: the replicated key-value store: coordinator, replica, hints, read repair, join.
//! - [`bench`]: the benchmarks behind `starling bench transport` and `starling bench kv`.
//!
//! IO contract: this crate owns every socket, timer and task (on a tokio runtime of either
//! flavour); the protocol cores it drives (gossip, ...) own none. A node answers requests through a
//! [`transport::Service`] and reaches peers through a [`transport::Transport`]:
//!
//! ```
//! use starling_node::transport::{mem::MemNetwork, service_fn, Transport, TransportConfig};
//! use starling_wire::{Request, Response};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let net = MemNetwork::new();
//! let echo = service_fn(|_peer, req| async move {
//!     match req {
//!         Request::Echo(bytes) => Response::Echo(bytes),
//!         _ => Response::Ok,
//!     }
//! });
//! let server = net.bind(echo, TransportConfig::default());
//! let client = net.bind(service_fn(|_, _| async { Response::Ok }), TransportConfig::default());
//! let resp = client.request(server.local_addr(), Request::Echo(b"hi".to_vec())).await.unwrap();
//! assert_eq!(resp, Response::Echo(b"hi".to_vec()));
//! # });
//! ```
//!
//! The same code runs over QUIC with [`transport::quic::QuicTransport::bind`] and a
//! [`tls::TlsConfigs`] from [`tls::mutual`].

pub mod bench;
pub mod cert;
pub mod config;
pub mod datadir;
pub mod driver;
pub mod http;
pub mod kv;
pub mod logging;
pub mod node;
pub mod status;
pub mod storage;
pub mod tls;
pub mod transport;
