//! The QUIC [`Transport`]: one quinn endpoint per node, one connection per peer, one pipelined
//! request stream per connection.
//!
//! Connections are symmetric: the endpoint both listens and dials from one UDP socket, so a peer's
//! incoming connection comes from its listen address and is cached under that address too. Either
//! side opens its own request stream on it and serves the other's; two nodes that dial each other
//! at once may keep two connections, which is harmless.
//!
//! Incoming handshakes are admitted in two stages, so clients that start handshakes and never
//! finish them (a flood of QUIC Initial packets, with or without a certificate) cannot lock real
//! clients out:
//! - a handshake in progress holds one of [`TransportConfig::max_pending_handshakes`] slots, for
//!   at most [`TransportConfig::connect_timeout`]; past that many, attempts are refused;
//! - above [`TransportConfig::retry_above_pending`] handshakes in progress, a client whose address
//!   is not validated gets a stateless QUIC Retry instead: the node keeps no state for it until it
//!   echoes the token from the address it claims, which a flooder that never reads its answers
//!   (or spoofs its source) never does;
//! - per IP address, at most [`TransportConfig::max_pending_handshakes_per_ip`] handshakes in
//!   progress without a Retry (past that, its clients get a Retry whatever the load) and as many
//!   after one (past that, its validated attempts are refused), so one address cannot take those
//!   slots from the others, even one that answers Retries; a source spoofing another's address
//!   never gets past its Retry, so it cannot use up that address's share;
//! - only a completed handshake takes one of [`TransportConfig::max_connections`] slots.
//!
//! Refusals are counted ([`QuicTransport::status`]) and logged at most once a second.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use quinn::{AckFrequencyConfig, Connection, Endpoint, EndpointConfig, IdleTimeout, VarInt};
use starling_wire::Request;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{timeout_at, Instant};

use super::pipe::{serve_stream, ClientPipe};
use super::{PeerInfo, Role, Service, Transport, TransportConfig, TransportError};
use crate::logging::RateLimitedLog;
use crate::tls::{TlsConfigs, SERVER_NAME};
use starling_wire::status::TransportStatus;

/// Application close code sent when the transport shuts down.
const CLOSE_SHUTDOWN: u32 = 0;
/// Application close code sent to a peer whose handshake completed while every connection slot
/// was taken.
const CLOSE_TOO_MANY: u32 = 1;

/// Connection attempts quinn holds for the accept loop to decide on (accept, retry or refuse).
/// The loop decides on each at once, so this only absorbs bursts; past it quinn refuses.
const MAX_INCOMING: usize = 4096;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A node's QUIC endpoint. Clone-free: share it in an `Arc`.
#[derive(Debug)]
pub struct QuicTransport {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    endpoint: Endpoint,
    local_addr: SocketAddr,
    config: TransportConfig,
    /// Live connections by remote address.
    conns: Mutex<HashMap<SocketAddr, Arc<PeerConn>>>,
    /// One dial at a time per address, so concurrent first requests share one connection.
    dialing: Mutex<HashMap<SocketAddr, Arc<tokio::sync::Mutex<()>>>>,
    /// A permit per open connection ([`TransportConfig::max_connections`]).
    conn_slots: Arc<Semaphore>,
    /// A permit per incoming handshake in progress
    /// ([`TransportConfig::max_pending_handshakes`]).
    pending: Arc<Semaphore>,
    /// Incoming handshakes in progress by source address
    /// ([`TransportConfig::max_pending_handshakes_per_ip`]).
    pending_by_ip: Arc<PendingByIp>,
    /// What the accept loop turned away.
    counters: Counters,
    /// Starts serving the streams a peer opens on a connection (the `Service`, type-erased).
    serve: ServeFn,
    /// `--insecure`: no peer presents a certificate, and every peer is a node.
    insecure: bool,
}

/// Incoming connection attempts turned away, since start.
#[derive(Debug, Default)]
struct Counters {
    refused: AtomicU64,
    /// Of `refused`, those refused because their address had too many handshakes in progress.
    refused_per_address: AtomicU64,
    retries: AtomicU64,
    handshake_timeouts: AtomicU64,
    /// Log lines about refused attempts, at most one a second.
    refused_log: RateLimitedLog,
    /// Log lines about failed incoming handshakes (a bad certificate, a timeout), likewise.
    failed_log: RateLimitedLog,
}

/// Incoming handshakes in progress per source IP address. An address is in the map only while it
/// has one, so the map holds at most [`TransportConfig::max_pending_handshakes`] entries.
#[derive(Debug, Default)]
struct PendingByIp(Mutex<HashMap<IpAddr, FromIp>>);

/// Handshakes in progress from one address: all of them, and those whose client had proved its
/// address with a Retry token.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct FromIp {
    all: usize,
    validated: usize,
}

impl PendingByIp {
    fn count(&self, ip: IpAddr) -> FromIp {
        lock(&self.0).get(&ip).copied().unwrap_or_default()
    }

    /// Counts one more handshake from `ip` until the returned slot is dropped.
    fn take(self: &Arc<Self>, ip: IpAddr, validated: bool) -> IpSlot {
        let mut map = lock(&self.0);
        let n = map.entry(ip).or_default();
        n.all += 1;
        n.validated += usize::from(validated);
        IpSlot { map: Arc::clone(self), ip, validated }
    }
}

/// One handshake in progress from `ip`, counted in [`PendingByIp`] while it lives.
#[derive(Debug)]
struct IpSlot {
    map: Arc<PendingByIp>,
    ip: IpAddr,
    validated: bool,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut map = lock(&self.map.0);
        if let Some(n) = map.get_mut(&self.ip) {
            n.all = n.all.saturating_sub(1);
            n.validated = n.validated.saturating_sub(usize::from(self.validated));
            if n.all == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// What the accept loop does with a connection attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Admission {
    /// Start the handshake.
    Accept,
    /// Answer with a stateless Retry (address validation).
    Retry,
    /// Refuse it, for this reason.
    Refuse(Refusal),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refusal {
    /// Every pending-handshake slot is taken.
    Pending,
    /// The attempt's address, proved, holds its share of them.
    PerAddress,
}

/// Decides on an attempt, given the handshakes in progress (`pending`), those from the attempt's
/// IP address (`from_ip`), and whether the client has proved its address with a Retry token.
///
/// A client that has not proved its address is asked to, when the node is busy or when its
/// address already has its share of handshakes in progress: that costs the node nothing, and a
/// source spoofing someone else's address never gets further. Only a proved address is refused
/// for holding its share, so a flood with a spoofed source cannot lock the real owner out.
fn admit(config: &TransportConfig, pending: usize, from_ip: FromIp, validated: bool) -> Admission {
    let share = config.max_pending_handshakes_per_ip;
    if !validated && (pending >= config.retry_above_pending || from_ip.all >= share) {
        return Admission::Retry;
    }
    if validated && from_ip.validated >= share {
        return Admission::Refuse(Refusal::PerAddress);
    }
    if pending >= config.max_pending_handshakes {
        return Admission::Refuse(Refusal::Pending);
    }
    Admission::Accept
}

/// Spawns [`serve_connection`] with the node's service; boxed so `Inner` is not generic.
struct ServeFn(Box<dyn Fn(Weak<Inner>, Arc<PeerConn>) + Send + Sync>);

impl std::fmt::Debug for ServeFn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServeFn")
    }
}

/// One connection and the request streams we opened on it (if any yet), one per [`Lane`].
#[derive(Debug)]
struct PeerConn {
    conn: Connection,
    pipes: [Mutex<Option<Arc<ClientPipe>>>; LANES],
    _slot: OwnedSemaphorePermit,
}

/// Request streams per connection.
const LANES: usize = 2;

/// Which of a connection's request streams carries a request. Gossip and clock probes have a
/// stream of their own, so requests piling up behind a peer's stalled disk (the data stream's
/// in-flight slots all taken, its flow-control window full) never hold up the probes that tell
/// whether the peer is alive. Cassandra keeps an "urgent" connection for gossip for the same
/// reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lane {
    Data = 0,
    Control = 1,
}

impl Lane {
    fn of(req: &starling_wire::Request) -> Lane {
        use starling_wire::{ClientRequest, PeerRequest, Request};
        match req {
            Request::Peer(PeerRequest::Gossip(_) | PeerRequest::Clock)
            | Request::Client(ClientRequest::Status) => Lane::Control,
            _ => Lane::Data,
        }
    }
}

impl PeerConn {
    fn is_alive(&self) -> bool {
        self.conn.close_reason().is_none()
    }

    fn new(conn: Connection, slot: OwnedSemaphorePermit) -> PeerConn {
        PeerConn { conn, pipes: Default::default(), _slot: slot }
    }

    fn live_pipe(&self, lane: Lane) -> Option<Arc<ClientPipe>> {
        if !self.is_alive() {
            return None;
        }
        lock(&self.pipes[lane as usize]).as_ref().filter(|p| p.is_alive()).cloned()
    }
}

/// Ack-eliciting packets a peer may receive before it must acknowledge them (QUIC's ACK
/// frequency extension; quinn's default is 1, an ACK for every other packet). Requests and
/// answers travel both ways on every connection, so most ACKs ride on packets that carry data;
/// fewer ACK-only packets save the kernel's per-datagram work on both ends.
const ACK_ELICITING_THRESHOLD: u32 = 4;

/// The smallest initial congestion window taken: quinn's own (RFC 9002's 10 datagrams of 1,200
/// bytes).
const MIN_INITIAL_WINDOW: u64 = 12_000;

/// quinn's transport settings, from `docs/CEILINGS.md`.
fn quinn_transport_config(config: &TransportConfig) -> Result<quinn::TransportConfig, String> {
    let mut t = quinn::TransportConfig::default();
    // Our single request stream, plus room for the dedicated streams of bulk transfers; at least
    // the in-flight depth so a stream-per-request client is not throttled either.
    let streams = config.max_in_flight_per_peer.clamp(64, 4096) as u32;
    t.max_concurrent_bidi_streams(VarInt::from_u32(streams));
    t.max_concurrent_uni_streams(VarInt::from_u32(16));
    t.max_idle_timeout(Some(
        IdleTimeout::try_from(config.idle_timeout).map_err(|e| e.to_string())?,
    ));
    t.keep_alive_interval(Some(config.keep_alive));
    // A whole maximum-size frame fits in one stream window, so a big frame does not stall on
    // flow-control round trips.
    t.stream_receive_window(VarInt::from_u32(8 << 20));
    t.receive_window(VarInt::from_u32(16 << 20));
    // ~10% less CPU per request when the peer supports it (docs/CEILINGS.md).
    let mut ack = AckFrequencyConfig::default();
    ack.ack_eliciting_threshold(VarInt::from_u32(ACK_ELICITING_THRESHOLD));
    t.ack_frequency_config(Some(ack));
    // Path MTU discovery up to the configured payload (from quinn's 1,200-byte start).
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(udp_payload(config));
    t.mtu_discovery_config(Some(mtu));
    // Cubic, starting from the configured window instead of quinn's ten 1,200-byte datagrams.
    let mut cubic = quinn::congestion::CubicConfig::default();
    cubic.initial_window(config.initial_congestion_window.max(MIN_INITIAL_WINDOW));
    t.congestion_controller_factory(Arc::new(cubic));
    Ok(t)
}

impl QuicTransport {
    /// Binds `addr` (port 0 for any), starts accepting connections and serves them with
    /// `service`. Must be called inside a tokio runtime (current_thread or multi_thread).
    pub async fn bind<S: Service>(
        addr: SocketAddr,
        tls: &TlsConfigs,
        config: TransportConfig,
        service: S,
    ) -> Result<Self, TransportError> {
        Self::open(addr, tls, config, service, true).await
    }

    /// A client-only endpoint on an ephemeral port of `addr`'s family: it dials nodes and
    /// accepts no connections (no server configuration, no accept loop). Requests the nodes send
    /// back on its connections are refused. For clients (`starling`, `starling-client`).
    pub async fn client(
        addr: SocketAddr,
        tls: &TlsConfigs,
        config: TransportConfig,
    ) -> Result<Self, TransportError> {
        let refuse = super::service_fn(|_, _| async {
            starling_wire::Response::error(
                starling_wire::ErrorCode::BadRequest,
                "this is a client, not a node",
            )
        });
        Self::open(addr, tls, config, refuse, false).await
    }

    async fn open<S: Service>(
        addr: SocketAddr,
        tls: &TlsConfigs,
        config: TransportConfig,
        service: S,
        listen: bool,
    ) -> Result<Self, TransportError> {
        let bind_err = |source| TransportError::Bind { addr, source };
        let socket = UdpSocket::bind(addr).map_err(bind_err)?;
        set_recv_buffer(&socket, config.socket_recv_buffer);

        let transport = Arc::new(quinn_transport_config(&config).map_err(TransportError::Tls)?);
        let server_crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls.server.clone())
            .map_err(|e| TransportError::Tls(e.to_string()))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
        server.transport_config(transport.clone());
        server.max_incoming(MAX_INCOMING);
        let client_crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls.client.clone())
            .map_err(|e| TransportError::Tls(e.to_string()))?;
        let mut client = quinn::ClientConfig::new(Arc::new(client_crypto));
        client.transport_config(transport);

        let runtime = quinn::default_runtime().ok_or_else(|| {
            bind_err(std::io::Error::other("no async runtime (call inside tokio)"))
        })?;
        let mut endpoint_config = match &config.reset_key {
            Some(key) => {
                // Both the reset tokens and the connection-id check derive from the kept secret:
                // a restarted process must accept its predecessor's connection ids as its own
                // (quinn drops packets with ids it did not sign) to answer them with a reset.
                let mut c = EndpointConfig::new(Arc::new(ring::hmac::Key::new(
                    ring::hmac::HMAC_SHA256,
                    key,
                )));
                let mut cid_key = [0u8; 8];
                cid_key.copy_from_slice(&key[..8]);
                let cid_key = u64::from_le_bytes(cid_key) ^ 0x5354_4152_4c49_4e47;
                c.cid_generator(move || {
                    Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
                });
                c
            }
            None => EndpointConfig::default(),
        };
        endpoint_config
            .max_udp_payload_size(udp_payload(&config))
            .map_err(|e| bind_err(std::io::Error::other(format!("max UDP payload: {e}"))))?;
        let mut endpoint =
            Endpoint::new(endpoint_config, listen.then_some(server), socket, runtime)
                .map_err(bind_err)?;
        endpoint.set_default_client_config(client);
        let local_addr = endpoint.local_addr().map_err(bind_err)?;

        let service = Arc::new(service);
        let serve = ServeFn(Box::new(move |inner: Weak<Inner>, pc: Arc<PeerConn>| {
            tokio::spawn(serve_connection(inner, pc, service.clone()));
        }));
        let inner = Arc::new(Inner {
            endpoint,
            local_addr,
            conn_slots: Arc::new(Semaphore::new(config.max_connections)),
            pending: Arc::new(Semaphore::new(config.max_pending_handshakes)),
            pending_by_ip: Arc::default(),
            counters: Counters::default(),
            config,
            conns: Mutex::new(HashMap::new()),
            dialing: Mutex::new(HashMap::new()),
            serve,
            insecure: tls.insecure,
        });
        if listen {
            tokio::spawn(accept_loop(Arc::downgrade(&inner), inner.endpoint.clone()));
            tracing::debug!(addr = %local_addr, insecure = tls.insecure, "QUIC transport listening");
        }
        Ok(QuicTransport { inner })
    }

    /// Connections open now, incoming and outgoing.
    pub fn open_connections(&self) -> usize {
        self.inner.endpoint.open_connections()
    }

    /// The largest UDP payload the connection to `peer` now uses (path MTU discovery's current
    /// size), if one is open.
    pub fn path_mtu(&self, peer: SocketAddr) -> Option<u16> {
        lock(&self.inner.conns).get(&peer).map(|c| c.conn.stats().path.current_mtu)
    }

    /// The congestion window of the connection to `peer` (bytes it may have in flight), if one
    /// is open.
    pub fn congestion_window(&self, peer: SocketAddr) -> Option<u64> {
        lock(&self.inner.conns).get(&peer).map(|c| c.conn.stats().path.cwnd)
    }

    /// Connections, handshakes in progress and what was turned away, for `/status` and
    /// `/metrics`.
    pub fn status(&self) -> TransportStatus {
        let i = &self.inner;
        let taken =
            |sem: &Semaphore, max: usize| max.saturating_sub(sem.available_permits()) as u64;
        TransportStatus {
            connections: taken(&i.conn_slots, i.config.max_connections),
            pending_handshakes: taken(&i.pending, i.config.max_pending_handshakes),
            refused: i.counters.refused.load(Ordering::Relaxed),
            refused_per_address: i.counters.refused_per_address.load(Ordering::Relaxed),
            retries: i.counters.retries.load(Ordering::Relaxed),
            handshake_timeouts: i.counters.handshake_timeouts.load(Ordering::Relaxed),
        }
    }
}

/// The configured largest UDP payload, within what QUIC and GSO allow.
fn udp_payload(config: &TransportConfig) -> u16 {
    config.max_udp_payload.clamp(1200, super::MAX_UDP_PAYLOAD)
}

/// Asks for a bigger UDP receive buffer; the kernel may cap it (`net.core.rmem_max`), which is
/// logged, not fatal.
fn set_recv_buffer(socket: &UdpSocket, bytes: usize) {
    let res = quinn::udp::UdpSocketState::new(socket.into())
        .and_then(|state| state.set_recv_buffer_size(socket.into(), bytes).map(|()| state))
        .and_then(|state| state.recv_buffer_size(socket.into()));
    match res {
        Ok(got) if got < bytes => {
            tracing::debug!(asked = bytes, got, "UDP receive buffer capped by the kernel")
        }
        Ok(_) => {}
        Err(e) => tracing::debug!(error = %e, "cannot set the UDP receive buffer"),
    }
}

async fn accept_loop(inner: Weak<Inner>, endpoint: Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        let Some(this) = inner.upgrade() else { break };
        let peer = incoming.remote_address();
        let ip = peer.ip().to_canonical();
        let pending =
            this.config.max_pending_handshakes.saturating_sub(this.pending.available_permits());
        let from_ip = this.pending_by_ip.count(ip);
        // Under load, a client must first prove it receives at the address it sends from. A
        // Retry costs the node no state, so a flood of Initials that are never followed up costs
        // nothing either; a real client answers it within a round trip.
        let mut incoming = incoming;
        let mut validated = incoming.remote_address_validated();
        let mut admission = admit(&this.config, pending, from_ip, validated);
        if admission == Admission::Retry {
            match incoming.retry() {
                Ok(()) => {
                    this.counters.retries.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                Err(e) => {
                    // Not retryable (it answered one already): decide as for a validated client.
                    incoming = e.into_incoming();
                    validated = true;
                    admission = admit(&this.config, pending, from_ip, validated);
                }
            }
        }
        let permit = match admission {
            Admission::Accept | Admission::Retry => this.pending.clone().try_acquire_owned().ok(),
            Admission::Refuse(_) => None,
        };
        let Some(permit) = permit else {
            if admission == Admission::Refuse(Refusal::PerAddress) {
                this.counters.refused_per_address.fetch_add(1, Ordering::Relaxed);
                this.refuse(peer, "too many handshakes in progress from this address");
            } else {
                this.refuse(peer, "too many handshakes in progress");
            }
            incoming.refuse();
            continue;
        };
        let pending = (permit, this.pending_by_ip.take(ip, validated));
        let inner = inner.clone();
        let handshake_timeout = this.config.connect_timeout;
        drop(this);
        tokio::spawn(async move {
            let conn = match incoming.accept() {
                // Dropping the handshake at the deadline closes it and frees its slot.
                Ok(connecting) => tokio::time::timeout(handshake_timeout, connecting).await,
                Err(e) => Ok(Err(e)),
            };
            drop(pending);
            let Some(this) = inner.upgrade() else { return };
            match conn {
                Ok(Ok(conn)) => {
                    let Ok(slot) = this.conn_slots.clone().try_acquire_owned() else {
                        this.refuse(peer, "too many connections");
                        conn.close(VarInt::from_u32(CLOSE_TOO_MANY), b"too many connections");
                        return;
                    };
                    let pc = Arc::new(PeerConn::new(conn, slot));
                    // The newest connection from an address wins: a peer that dials us again
                    // may have restarted, and the connection we hold may lead to a dead process
                    // (it would only be noticed at the idle timeout).
                    lock(&this.conns).insert(peer, pc.clone());
                    (this.serve.0)(inner, pc);
                }
                // A peer without a valid certificate ends here.
                Ok(Err(e)) => {
                    if let Some(suppressed) = this.counters.failed_log.allow() {
                        tracing::info!(%peer, error = %e, suppressed, "incoming handshake failed");
                    }
                }
                Err(_) => {
                    this.counters.handshake_timeouts.fetch_add(1, Ordering::Relaxed);
                    if let Some(suppressed) = this.counters.failed_log.allow() {
                        tracing::info!(
                            %peer,
                            timeout = ?handshake_timeout,
                            suppressed,
                            "incoming handshake not finished in time; dropped"
                        );
                    }
                }
            }
        });
    }
}

impl Inner {
    /// Counts a refused incoming connection and logs it, at most once a second.
    fn refuse(&self, peer: SocketAddr, reason: &'static str) {
        self.counters.refused.fetch_add(1, Ordering::Relaxed);
        if let Some(suppressed) = self.counters.refused_log.allow() {
            tracing::warn!(
                %peer,
                reason,
                suppressed,
                total = self.counters.refused.load(Ordering::Relaxed),
                "incoming connection refused (suppressed: refusals not logged since the last line)"
            );
        }
    }
}

/// Serves the streams the peer opens on `pc` until the connection closes, then forgets it.
async fn serve_connection<S: Service>(inner: Weak<Inner>, pc: Arc<PeerConn>, service: Arc<S>) {
    let peer = pc.conn.remote_address();
    let (config, role) = match inner.upgrade() {
        Some(i) => (i.config.clone(), role_of(&pc.conn, i.insecure)),
        None => return,
    };
    let reason = loop {
        match pc.conn.accept_bi().await {
            Ok((send, recv)) => {
                let svc = service.clone();
                let from = PeerInfo::with_role(peer, role);
                tokio::spawn(serve_stream(from, recv, send, svc, config.clone()));
            }
            Err(e) => break e,
        }
    };
    tracing::debug!(%peer, %reason, "connection closed");
    if let Some(this) = inner.upgrade() {
        let mut conns = lock(&this.conns);
        if conns.get(&peer).is_some_and(|c| Arc::ptr_eq(c, &pc)) {
            conns.remove(&peer);
        }
    }
}

/// The role of the certificate `conn`'s peer presented (verified against the cluster CA by the
/// handshake). Without one, a node only in `--insecure` mode; otherwise a client, the least
/// privilege (mutual TLS requires a certificate, so this does not happen).
fn role_of(conn: &Connection, insecure: bool) -> Role {
    let chain = conn
        .peer_identity()
        .and_then(|id| id.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>().ok());
    match chain.as_deref().and_then(|c| c.first()) {
        Some(_) if insecure => Role::Node,
        Some(leaf) => Role::of_der(leaf),
        None if insecure => Role::Node,
        None => Role::Client,
    }
}

impl Inner {
    /// The request stream to `peer`, dialling and opening it if needed.
    async fn pipe(
        self: &Arc<Self>,
        peer: SocketAddr,
        lane: Lane,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<Arc<ClientPipe>, TransportError> {
        if let Some(p) = lock(&self.conns).get(&peer).and_then(|c| c.live_pipe(lane)) {
            return Ok(p);
        }
        let timed_out = || TransportError::Timeout { peer, timeout };
        let dial_lock = lock(&self.dialing).entry(peer).or_default().clone();
        let _guard = timeout_at(deadline, dial_lock.lock()).await.map_err(|_| timed_out())?;
        let result = self.pipe_locked(peer, lane, deadline, timeout).await;
        lock(&self.dialing).remove(&peer);
        result
    }

    async fn pipe_locked(
        self: &Arc<Self>,
        peer: SocketAddr,
        lane: Lane,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<Arc<ClientPipe>, TransportError> {
        let existing = lock(&self.conns).get(&peer).filter(|c| c.is_alive()).cloned();
        let pc = match existing {
            Some(pc) => pc,
            None => {
                let pc = self.dial(peer, deadline, timeout).await?;
                lock(&self.conns).insert(peer, pc.clone());
                (self.serve.0)(Arc::downgrade(self), pc.clone());
                pc
            }
        };
        if let Some(p) = pc.live_pipe(lane) {
            return Ok(p);
        }
        let lost = |e: quinn::ConnectionError| TransportError::ConnectionLost {
            peer,
            reason: e.to_string(),
        };
        let (send, recv) = timeout_at(deadline, pc.conn.open_bi())
            .await
            .map_err(|_| TransportError::Timeout { peer, timeout })?
            .map_err(lost)?;
        let pipe = ClientPipe::spawn(peer, recv, send, &self.config);
        *lock(&pc.pipes[lane as usize]) = Some(pipe.clone());
        Ok(pipe)
    }

    async fn dial(
        &self,
        peer: SocketAddr,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<Arc<PeerConn>, TransportError> {
        let connect_err = |reason: String| TransportError::Connect { peer, reason };
        let slot = self.conn_slots.clone().try_acquire_owned().map_err(|_| {
            TransportError::TooManyConnections { peer, max: self.config.max_connections }
        })?;
        let connecting =
            self.endpoint.connect(peer, SERVER_NAME).map_err(|e| connect_err(e.to_string()))?;
        let handshake_deadline = deadline.min(Instant::now() + self.config.connect_timeout);
        let conn = match timeout_at(handshake_deadline, connecting).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => return Err(connect_err(e.to_string())),
            Err(_) if handshake_deadline < deadline => {
                let t = self.config.connect_timeout;
                return Err(connect_err(format!("no handshake within {t:?}")));
            }
            Err(_) => return Err(TransportError::Timeout { peer, timeout }),
        };
        tracing::debug!(%peer, "connected");
        Ok(Arc::new(PeerConn::new(conn, slot)))
    }
}

impl Transport for QuicTransport {
    fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    fn config(&self) -> &TransportConfig {
        &self.inner.config
    }

    async fn request_within(
        &self,
        peer: SocketAddr,
        req: Request,
        timeout: Duration,
    ) -> Result<starling_wire::Response, TransportError> {
        let deadline = Instant::now() + timeout;
        let pipe = self.inner.pipe(peer, Lane::of(&req), deadline, timeout).await?;
        pipe.request(&req, deadline, timeout).await
    }

    async fn send_one_way(&self, peer: SocketAddr, msg: Request) -> Result<(), TransportError> {
        let timeout = self.inner.config.request_timeout;
        let deadline = Instant::now() + timeout;
        self.inner.pipe(peer, Lane::of(&msg), deadline, timeout).await?.send_one_way(&msg)
    }

    async fn close(&self) {
        self.inner.endpoint.close(VarInt::from_u32(CLOSE_SHUTDOWN), b"shutdown");
        let conns: Vec<_> = lock(&self.inner.conns).drain().map(|(_, c)| c).collect();
        drop(conns);
        // Lets the peers see the close; bounded so a dead peer cannot hold shutdown up.
        let _ = tokio::time::timeout(Duration::from_secs(1), self.inner.endpoint.wait_idle()).await;
    }
}

impl Drop for QuicTransport {
    fn drop(&mut self) {
        self.inner.endpoint.close(VarInt::from_u32(CLOSE_SHUTDOWN), b"shutdown");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_address_holds_at_most_its_share_of_pending_handshakes() {
        let c = TransportConfig::default();
        let share = c.max_pending_handshakes_per_ip;
        assert!(share < c.retry_above_pending && c.retry_above_pending < c.max_pending_handshakes);
        let from = |all, validated| FromIp { all, validated };
        // Quiet: accepted at once up to the address's share, then asked for a Retry.
        assert_eq!(admit(&c, 0, from(0, 0), false), Admission::Accept);
        assert_eq!(admit(&c, share - 1, from(share - 1, 0), false), Admission::Accept);
        assert_eq!(admit(&c, share, from(share, 0), false), Admission::Retry);
        // Another address is still accepted at once.
        assert_eq!(admit(&c, share, from(0, 0), false), Admission::Accept);
        // After the Retry the address holds its share again, then it is refused.
        assert_eq!(admit(&c, share, from(share, 0), true), Admission::Accept);
        assert_eq!(admit(&c, 2 * share, from(2 * share, share - 1), true), Admission::Accept);
        assert_eq!(
            admit(&c, 2 * share, from(2 * share, share), true),
            Admission::Refuse(Refusal::PerAddress)
        );
        // ... while a proved client from another address is accepted, and an unproved one is
        // asked for a Retry once the node is busy.
        let busy = c.retry_above_pending;
        assert_eq!(admit(&c, busy, from(0, 0), true), Admission::Accept);
        assert_eq!(admit(&c, busy, from(0, 0), false), Admission::Retry);
        // Every slot taken: refused whatever the address.
        let full = c.max_pending_handshakes;
        assert_eq!(admit(&c, full, from(0, 0), true), Admission::Refuse(Refusal::Pending));
        assert_eq!(admit(&c, full, from(0, 0), false), Admission::Retry);
    }

    #[test]
    fn address_counts_follow_their_slots() {
        let map = Arc::new(PendingByIp::default());
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let a1 = map.take(a, false);
        let a2 = map.take(a, true);
        let b1 = map.take(b, true);
        assert_eq!(map.count(a), FromIp { all: 2, validated: 1 });
        assert_eq!(map.count(b), FromIp { all: 1, validated: 1 });
        drop(a2);
        assert_eq!(map.count(a), FromIp { all: 1, validated: 0 });
        drop((a1, b1));
        assert_eq!(map.count(a), FromIp::default());
        assert!(lock(&map.0).is_empty(), "addresses without handshakes are forgotten");
    }
}
