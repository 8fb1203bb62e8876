//! Request/response and one-way messaging between nodes.
//!
//! [`Transport`] is the seam: the node's drivers (gossip, KV coordinator, ...) are written against
//! it, [`quic::QuicTransport`] runs it over the network and [`mem::MemNetwork`] runs many nodes in
//! one process. Both pass the same conformance suite (`node/tests/transport.rs`).
//!
//! The shape follows `docs/CEILINGS.md`: each peer connection carries one long-lived bidirectional
//! stream on which requests are **pipelined**, up to [`TransportConfig::max_in_flight_per_peer`]
//! at once. One writer per stream sends everything queued since its last write in one write
//! (coalescing), a reader hands responses to waiters by request id. The server side decodes every
//! frame a read brings, runs the handlers concurrently within the stream's task and queues the
//! responses for one coalesced write. Depth amortises the 20–25 µs each wake-up costs.
//!
//! One-way messages ([`Transport::send_one_way`], used for gossip) travel as
//! [`starling_wire::FrameKind::OneWay`] frames on the same stream and go to
//! [`Service::one_way`], whose default calls [`Service::call`] and drops the response.

pub mod mem;
mod pipe;
pub mod quic;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use starling_wire::{answer_of, AnswerError, Call, ErrorCode, FrameError, Request, Response};

pub use crate::cert::Role;

pub use pipe::SERVICE_ERROR_ID;

/// Who sent a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct PeerInfo {
    /// The remote address of the connection (for a peer node, its listen address: a node's
    /// endpoint dials from the socket it listens on).
    pub addr: SocketAddr,
    /// What the sender's certificate lets it do ([`Role::Node`] for every peer in `--insecure`
    /// mode and in memory).
    pub role: Role,
}

impl PeerInfo {
    /// A node seen at `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        PeerInfo { addr, role: Role::Node }
    }

    /// A peer at `addr` whose certificate carries `role`.
    pub fn with_role(addr: SocketAddr, role: Role) -> Self {
        PeerInfo { addr, role }
    }
}

/// What a node does with the requests it receives.
///
/// Handlers of one stream run concurrently inside that stream's task: a handler that blocks
/// (fsync, a long RocksDB scan) must move that work to `spawn_blocking` or its own thread, or it
/// stalls every request behind it on that connection.
pub trait Service: Send + Sync + 'static {
    /// Answers one request.
    fn call(&self, peer: PeerInfo, req: Request) -> impl Future<Output = Response> + Send;

    /// Receives one one-way message. The default calls [`Service::call`] and drops the response.
    /// (A combinator, not an `async` block around the call's future: such a block stores that
    /// future twice, and every request's future is moved into a task.)
    fn one_way(&self, peer: PeerInfo, req: Request) -> impl Future<Output = ()> + Send {
        futures_util::FutureExt::map(self.call(peer, req), drop)
    }
}

/// A [`Service`] made of an async closure; see [`service_fn`].
#[derive(Debug, Clone)]
pub struct ServiceFn<F>(F);

/// Makes a [`Service`] from `Fn(PeerInfo, Request) -> impl Future<Output = Response>`.
pub fn service_fn<F, Fut>(f: F) -> ServiceFn<F>
where
    F: Fn(PeerInfo, Request) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response> + Send + 'static,
{
    ServiceFn(f)
}

impl<F, Fut> Service for ServiceFn<F>
where
    F: Fn(PeerInfo, Request) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response> + Send + 'static,
{
    fn call(&self, peer: PeerInfo, req: Request) -> impl Future<Output = Response> + Send {
        (self.0)(peer, req)
    }
}

/// The largest [`TransportConfig::max_udp_payload`] that works: quinn sends up to 10 datagrams
/// in one GSO call, and the kernel refuses a call larger than one UDP datagram may be (65,507
/// bytes over IPv4), so ten of them must fit. Past it every full-size send fails with EMSGSIZE,
/// which quinn takes for a lost probe: bulk transfers then crawl through losses and
/// retransmissions (`docs/CEILINGS.md`).
pub const MAX_UDP_PAYLOAD: u16 = 6_500;

/// Limits and timers of a transport. Every queue and every wait is bounded by one of these.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// Deadline of [`Transport::request`], connecting included.
    pub request_timeout: Duration,
    /// Deadline of a QUIC handshake, dialled or accepted: an incoming handshake not finished by
    /// then is dropped and its slot among [`TransportConfig::max_pending_handshakes`] freed.
    pub connect_timeout: Duration,
    /// Requests in flight to one peer; more wait for a slot (within their deadline).
    pub max_in_flight_per_peer: usize,
    /// Requests of one incoming stream whose handlers run at once; past it the stream is not read
    /// until one finishes, so QUIC flow control pushes back on the sender.
    pub max_concurrent_requests_per_stream: usize,
    /// Open connections, incoming and outgoing together. An incoming connection counts once its
    /// handshake has completed (the peer proved its certificate), never while it is pending.
    pub max_connections: usize,
    /// Incoming handshakes in progress at once; past it new attempts are refused. Separate from
    /// `max_connections` and smaller, so clients that start handshakes and never finish them
    /// can hold these slots (each for at most `connect_timeout`) but never a connection slot.
    pub max_pending_handshakes: usize,
    /// Incoming handshakes in progress above which a client whose address is not yet validated
    /// is answered with a QUIC Retry (stateless: the node keeps nothing until the client echoes
    /// the token from its real address). Below it clients are accepted at once, saving the
    /// round trip.
    pub retry_above_pending: usize,
    /// Incoming handshakes in progress from one IP address: past this many, a client from that
    /// address must prove it with a Retry whatever the load, and an address that proved it may
    /// hold this many more, after which its attempts are refused. So one address holds at most
    /// twice this of the [`TransportConfig::max_pending_handshakes`] slots, and a source that
    /// spoofs another's address cannot use up that address's share.
    pub max_pending_handshakes_per_ip: usize,
    /// Bytes queued for one stream's writer: past it one-way sends fail with
    /// [`TransportError::Overloaded`] and a server stream stops reading.
    pub max_queued_bytes: usize,
    /// A connection with no traffic for this long is closed.
    pub idle_timeout: Duration,
    /// Keep-alive interval; below `idle_timeout` so idle peer connections stay up.
    pub keep_alive: Duration,
    /// UDP socket receive buffer; 4 MiB removed bulk packet loss in `docs/CEILINGS.md`.
    pub socket_recv_buffer: usize,
    /// Largest UDP payload a connection may grow to: the upper bound of QUIC's path MTU discovery
    /// and the `max_udp_payload_size` this endpoint advertises. Connections start at 1,200 bytes
    /// and probe upwards, so a path that carries only Ethernet's 1,500-byte frames settles at
    /// 1,452 whatever this says; loopback and jumbo-frame networks use the larger size, and
    /// bulk transfers cost fewer datagrams. Clamped to 1,200 ..= [`MAX_UDP_PAYLOAD`].
    pub max_udp_payload: u16,
    /// Bytes a new connection may have in flight before its first acknowledgements (Cubic's
    /// initial window; at least quinn's 12,000). Nodes of a cluster share a fast network, and a
    /// client's first requests to a node (a produce batch of 64 KiB, say) would otherwise wait
    /// for several round trips of slow start; the window is paced over the round trip and
    /// shrinks at the first loss as before. On loopback TCP's own initial window is ten 64 KiB
    /// segments.
    pub initial_congestion_window: u64,
    /// Stateless-reset secret (QUIC): the same across restarts lets a restarted node reset peers'
    /// connections to its previous process. `None`: a random one per endpoint.
    pub reset_key: Option<[u8; 32]>,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(3),
            max_in_flight_per_peer: 256,
            max_concurrent_requests_per_stream: 1024,
            max_connections: 1024,
            max_pending_handshakes: 256,
            retry_above_pending: 32,
            max_pending_handshakes_per_ip: 16,
            max_queued_bytes: 16 << 20,
            idle_timeout: Duration::from_secs(10),
            keep_alive: Duration::from_secs(2),
            socket_recv_buffer: 4 << 20,
            max_udp_payload: 4096,
            initial_congestion_window: 256 << 10,
            reset_key: None,
        }
    }
}

/// Why a request or a send failed. Every variant names the peer concerned.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// No response within the deadline.
    #[error("request to {peer} timed out after {timeout:?}")]
    Timeout {
        /// The peer.
        peer: SocketAddr,
        /// The deadline that passed.
        timeout: Duration,
    },
    /// The peer could not be reached.
    #[error("cannot connect to {peer}: {reason}")]
    Connect {
        /// The peer.
        peer: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The connection or stream broke while the request was in flight.
    #[error("connection to {peer} lost: {reason}")]
    ConnectionLost {
        /// The peer.
        peer: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The request could not be encoded, or the response not decoded.
    #[error("frame to or from {peer}: {source}")]
    Frame {
        /// The peer.
        peer: SocketAddr,
        /// The codec's error.
        source: FrameError,
    },
    /// The write queue to the peer is full (see [`TransportConfig::max_queued_bytes`]).
    #[error("too much data queued for {peer}; message dropped")]
    Overloaded {
        /// The peer.
        peer: SocketAddr,
    },
    /// [`TransportConfig::max_connections`] connections are open.
    #[error("cannot connect to {peer}: {max} connections already open")]
    TooManyConnections {
        /// The peer.
        peer: SocketAddr,
        /// The limit.
        max: usize,
    },
    /// The transport was closed.
    #[error("transport closed")]
    Closed,
    /// The local socket could not be set up.
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The TLS configuration was refused by QUIC.
    #[error("TLS configuration not usable for QUIC: {0}")]
    Tls(String),
}

/// Why a typed call ([`Transport::call`]) failed: the request did not get an answer, or the
/// answer was a refusal or of the wrong shape.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No answer: timeout, connection failure, a frame that could not be sent or read.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The node answered with an error, or with something other than this call's answer.
    #[error(transparent)]
    Answer(#[from] AnswerError),
}

impl CallError {
    /// The node's error code, when the node refused the call.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            CallError::Answer(a) => a.code(),
            CallError::Transport(_) => None,
        }
    }
}

/// Sends requests and one-way messages to peers by address. Cheap to share (`Arc`).
pub trait Transport: Send + Sync + 'static {
    /// The address peers reach this node at.
    fn local_addr(&self) -> SocketAddr;

    /// The limits this transport runs with.
    fn config(&self) -> &TransportConfig;

    /// Sends `req` to `peer` and waits for the response, at most `timeout` (connecting included).
    fn request_within(
        &self,
        peer: SocketAddr,
        req: Request,
        timeout: Duration,
    ) -> impl Future<Output = Result<Response, TransportError>> + Send;

    /// Sends `req` to `peer` and waits for the response, at most
    /// [`TransportConfig::request_timeout`].
    fn request(
        &self,
        peer: SocketAddr,
        req: Request,
    ) -> impl Future<Output = Result<Response, TransportError>> + Send {
        self.request_within(peer, req, self.config().request_timeout)
    }

    /// Sends the typed call `c` to `peer` and returns its answer, at most `timeout`: the node's
    /// refusal and an answer of the wrong shape are errors ([`CallError`]), checked in one place.
    fn call_within<C>(
        &self,
        peer: SocketAddr,
        c: C,
        timeout: Duration,
    ) -> impl Future<Output = Result<C::Answer, CallError>> + Send
    where
        C: Call + Send,
        C::Answer: Send,
    {
        let fut = self.request_within(peer, c.into_request(), timeout);
        async move { Ok(answer_of::<C>(fut.await?)?) }
    }

    /// [`Transport::call_within`] with [`TransportConfig::request_timeout`].
    fn call<C>(
        &self,
        peer: SocketAddr,
        c: C,
    ) -> impl Future<Output = Result<C::Answer, CallError>> + Send
    where
        C: Call + Send,
        C::Answer: Send,
    {
        self.call_within(peer, c, self.config().request_timeout)
    }

    /// Queues a one-way message (gossip) to `peer`. Returns once the message is queued for the
    /// writer (connecting first if needed); delivery is not confirmed.
    fn send_one_way(
        &self,
        peer: SocketAddr,
        msg: Request,
    ) -> impl Future<Output = Result<(), TransportError>> + Send;

    /// Stops accepting, closes every connection, and fails requests still in flight.
    fn close(&self) -> impl Future<Output = ()> + Send;
}
