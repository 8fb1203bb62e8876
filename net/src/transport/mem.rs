//! The in-memory [`Transport`]: many nodes in one process, no sockets.
//!
//! A [`MemNetwork`] maps made-up addresses to nodes. Connecting creates an in-memory duplex pipe
//! and hands its other end to the target node's server half, so frames, size limits, pipelining
//! and coalescing run exactly the same code as over QUIC; only QUIC and TLS are left out. Closing a
//! node cuts every stream it serves, like a crash.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use starling_wire::{Request, Response, MAX_REQUEST_BODY};
use tokio::task::AbortHandle;
use tokio::time::{timeout_at, Instant};

use super::pipe::{serve_stream, ClientPipe};
use super::{PeerInfo, Service, Transport, TransportConfig, TransportError};

/// Capacity of each direction of an in-memory pipe: one maximum-size frame plus headroom, like a
/// QUIC stream window.
const PIPE_CAPACITY: usize = MAX_REQUEST_BODY + (64 << 10);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Accepts a new stream from `PeerInfo` for one node.
type Acceptor = Arc<dyn Fn(PeerInfo, tokio::io::DuplexStream) + Send + Sync>;

/// A set of in-memory nodes that can reach each other.
#[derive(Clone, Default)]
pub struct MemNetwork {
    nodes: Arc<Mutex<HashMap<SocketAddr, Acceptor>>>,
    next_port: Arc<AtomicU16>,
}

impl std::fmt::Debug for MemNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemNetwork").field("nodes", &lock(&self.nodes).len()).finish()
    }
}

impl MemNetwork {
    /// An empty network.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a node serving `service` at a fresh address (`127.0.0.1:<n>`, n counting from 1).
    /// Must be called inside a tokio runtime.
    pub fn bind<S: Service>(&self, service: S, config: TransportConfig) -> MemTransport {
        let port = self.next_port.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let service = Arc::new(service);
        let served: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let acceptor: Acceptor = {
            let served = served.clone();
            let config = config.clone();
            Arc::new(move |peer: PeerInfo, stream: tokio::io::DuplexStream| {
                let (r, w) = tokio::io::split(stream);
                let task = tokio::spawn(serve_stream(peer, r, w, service.clone(), config.clone()));
                let mut served = lock(&served);
                served.retain(|h| !h.is_finished());
                served.push(task.abort_handle());
            })
        };
        lock(&self.nodes).insert(addr, acceptor);
        MemTransport {
            addr,
            network: self.clone(),
            config,
            pipes: Mutex::new(HashMap::new()),
            served,
        }
    }
}

/// One node of a [`MemNetwork`].
#[derive(Debug)]
pub struct MemTransport {
    addr: SocketAddr,
    network: MemNetwork,
    config: TransportConfig,
    /// Our request stream to each peer.
    pipes: Mutex<HashMap<SocketAddr, Arc<ClientPipe>>>,
    /// Tasks serving streams other nodes opened to us; aborted on close.
    served: Arc<Mutex<Vec<AbortHandle>>>,
}

impl MemTransport {
    fn pipe(&self, peer: SocketAddr) -> Result<Arc<ClientPipe>, TransportError> {
        let mut pipes = lock(&self.pipes);
        if let Some(p) = pipes.get(&peer).filter(|p| p.is_alive()) {
            return Ok(p.clone());
        }
        if !pipes.contains_key(&peer) && pipes.len() >= self.config.max_connections {
            return Err(TransportError::TooManyConnections {
                peer,
                max: self.config.max_connections,
            });
        }
        let acceptor = lock(&self.network.nodes).get(&peer).cloned().ok_or_else(|| {
            TransportError::Connect { peer, reason: "no node listening at this address".into() }
        })?;
        let (ours, theirs) = tokio::io::duplex(PIPE_CAPACITY);
        acceptor(PeerInfo::new(self.addr), theirs);
        let (r, w) = tokio::io::split(ours);
        let pipe = ClientPipe::spawn(peer, r, w, &self.config);
        pipes.insert(peer, pipe.clone());
        Ok(pipe)
    }
}

impl Transport for MemTransport {
    fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    fn config(&self) -> &TransportConfig {
        &self.config
    }

    async fn request_within(
        &self,
        peer: SocketAddr,
        req: Request,
        timeout: Duration,
    ) -> Result<Response, TransportError> {
        let deadline = Instant::now() + timeout;
        let pipe = self.pipe(peer)?;
        // The pipe's own deadline handles the usual case; this one also covers a stalled pipe.
        timeout_at(deadline, pipe.request(&req, deadline, timeout))
            .await
            .unwrap_or(Err(TransportError::Timeout { peer, timeout }))
    }

    async fn send_one_way(&self, peer: SocketAddr, msg: Request) -> Result<(), TransportError> {
        self.pipe(peer)?.send_one_way(&msg)
    }

    async fn close(&self) {
        lock(&self.network.nodes).remove(&self.addr);
        lock(&self.pipes).clear();
        for task in lock(&self.served).drain(..) {
            task.abort();
        }
    }
}

impl Drop for MemTransport {
    fn drop(&mut self) {
        lock(&self.network.nodes).remove(&self.addr);
        for task in lock(&self.served).drain(..) {
            task.abort();
        }
    }
}
