//! The Kafka listener (`--kafka HOST:PORT`): Kafka's wire protocol over TCP in front of this
//! node's topics, so Kafka clients work unchanged (`starling-kafka` decodes and answers each
//! request; this module owns the sockets).
//!
//! - **TLS** with the cluster's CA when the node has certificates: clients present a certificate
//!   the CA issued (a client's or a node's, as on the native API); plain TCP only with
//!   `--insecure`.
//! - **Pipelining**: a client may send up to [`MAX_IN_FLIGHT`] requests before reading answers;
//!   they are served one at a time and answered in the order they came, as Kafka does.
//! - **Limits** ([`Limits`]): `--kafka-max-connections` connections (default
//!   [`MAX_CONNECTIONS`]; more are closed at once, with a log line); a request larger than
//!   [`starling_kafka::frame::MAX_FRAME`] closes its connection; a connection idle for
//!   `--kafka-idle-timeout` (default [`IDLE_TIMEOUT`], Kafka's `connections.max.idle.ms`) is
//!   closed, and one that starts a request and does not finish it within [`REQUEST_TIMEOUT`] too.
//! - **Counters** ([`KafkaStats`]): connections, refusals, timeouts and requests per API, in
//!   `/status` (`kafka`), `/metrics` (`starling_kafka_*`) and `starling status`.
//! - **Bad requests** (an unknown API key, a version not served, a body that does not decode)
//!   close the connection, as Kafka closes it, after the answers already due are written; the
//!   reason is logged (at most a line a second).
//!
//! Each node publishes its listener's advertised address in gossip ([`GOSSIP_KEY`]), so any node
//! lists every live broker in Metadata.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use starling_kafka::codec::{self, Decoded};
use starling_kafka::frame::FrameReader;
use starling_kafka::serve::{self, Backend, Broker};
use starling_wire::status::{KafkaStatus, Status};
use starling_wire::topic::{TopicPeerRequest, TopicRequest};
use starling_wire::{ClientRequest, ErrorCode, NodeId, Request, Response};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Semaphore};
use tracing::{debug, info, warn};

use crate::logging::RateLimitedLog;
use crate::topics::Topics;
use crate::transport::quic::QuicTransport;
use starling_kafka::group::Coordinator;
use starling_kafka::serve::CommitCheck;
use starling_mq::fence::{Committed, FenceError, OffsetKey};

/// The gossip key under which a node publishes its Kafka listener's advertised `host:port`.
pub const GOSSIP_KEY: &str = "kafka";
/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 1024;
/// Requests of one connection served (and waiting to be answered) at once.
pub const MAX_IN_FLIGHT: usize = 64;
/// A connection with no request for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// A request begun must arrive whole within this.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// A TLS handshake must finish within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The listener's limits (`--kafka-max-connections`, `--kafka-idle-timeout`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub idle_timeout: Duration,
}

/// API keys counted one by one (Kafka's are below 100).
const API_SLOTS: usize = 128;

/// The listener's counters.
#[derive(Debug)]
pub struct KafkaStats {
    open: AtomicU64,
    accepted: AtomicU64,
    refused: AtomicU64,
    handshakes_failed: AtomicU64,
    timed_out: AtomicU64,
    requests_refused: AtomicU64,
    requests: [AtomicU64; API_SLOTS],
}

impl Default for KafkaStats {
    fn default() -> Self {
        KafkaStats {
            open: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            handshakes_failed: AtomicU64::new(0),
            timed_out: AtomicU64::new(0),
            requests_refused: AtomicU64::new(0),
            requests: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl KafkaStats {
    fn served(&self, api: codec::ApiKey) {
        if let Some(c) = self.requests.get(api as i16 as usize) {
            bump(c);
        }
    }

    /// The listener as `/status` shows it.
    pub fn status(
        &self,
        advertise: &str,
        tls: bool,
        limits: Limits,
        groups: &Coordinator,
    ) -> KafkaStatus {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let requests = starling_kafka::versions::SERVED
            .iter()
            .filter_map(|&(api, _, _)| {
                let n = self.requests.get(api as i16 as usize).map_or(0, get);
                (n > 0).then(|| (format!("{api:?}"), n))
            })
            .collect();
        let (g, members) = groups.counts();
        KafkaStatus {
            advertise: advertise.to_string(),
            tls,
            connections: get(&self.open),
            max_connections: limits.max_connections as u64,
            connections_accepted: get(&self.accepted),
            connections_refused: get(&self.refused),
            handshakes_failed: get(&self.handshakes_failed),
            connections_timed_out: get(&self.timed_out),
            requests,
            requests_refused: get(&self.requests_refused),
            groups: g as u64,
            group_members: members as u64,
        }
    }
}

/// An open connection: its slot, and its place in the `open` count.
struct Open {
    _slot: tokio::sync::OwnedSemaphorePermit,
    stats: Arc<KafkaStats>,
}

impl Drop for Open {
    fn drop(&mut self) {
        self.stats.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The node as the Kafka front sees it.
pub struct KafkaBackend {
    pub topics: Topics<QuicTransport>,
    pub status: watch::Receiver<Arc<Status>>,
    pub me: NodeId,
    /// The Kafka consumer groups this node coordinates.
    pub groups: Arc<Coordinator>,
    pub stats: Arc<KafkaStats>,
    pub limits: Limits,
    /// The groups' clock starts here.
    pub started: std::time::Instant,
}

impl std::fmt::Debug for KafkaBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaBackend").field("me", &self.me).finish()
    }
}

impl KafkaBackend {
    /// Expires silent group members and overdue rebalances, a few times a second, forever.
    pub async fn keep_groups(self: Arc<Self>) {
        let mut every = tokio::time::interval(Duration::from_millis(200));
        loop {
            every.tick().await;
            let (topics, me) = (&self.topics, self.me);
            self.groups.tick(self.now_ms(), |g| topics.group_coordinator(g) == Some(me));
        }
    }
}

impl Backend for KafkaBackend {
    fn call(&self, req: Request) -> BoxFuture<'static, Response> {
        let topics = self.topics.clone();
        Box::pin(async move {
            match req {
                // As a Kafka broker: a partition's produce, fetch and offsets are served by its
                // leader only; any other node answers NOT_LEADER_OR_FOLLOWER and the client
                // refreshes its metadata (no forwarding: the data would cross twice).
                Request::Client(ClientRequest::Topic(
                    t @ (TopicRequest::Produce(_)
                    | TopicRequest::Fetch(_)
                    | TopicRequest::Offsets(_)),
                )) => topics.handle_peer(TopicPeerRequest::Leader(t)).await,
                Request::Client(ClientRequest::Topic(t)) => topics.handle_client(t).await,
                other => Response::error(
                    ErrorCode::BadRequest,
                    format!("{} is not a topic call", other.kind()),
                ),
            }
        })
    }

    fn brokers(&self) -> Vec<Broker> {
        let status = self.status.borrow().clone();
        status
            .members
            .iter()
            .filter(|m| m.state == "alive" || m.state == "suspect")
            .filter_map(|m| {
                let id: NodeId = m.node_id.parse().ok()?;
                let (host, port) = split_host_port(m.kafka.as_deref()?)?;
                Some(Broker { id, host, port, rack: m.zone.clone() })
            })
            .collect()
    }

    fn me(&self) -> NodeId {
        self.me
    }

    fn cluster_id(&self) -> String {
        "starling".to_string()
    }

    fn new_producer_id(&self) -> i64 {
        (rand::random::<u64>() >> 1) as i64
    }

    fn coordinator_of(&self, group: &str) -> Option<NodeId> {
        self.topics.group_coordinator(group)
    }

    fn groups(&self) -> &Coordinator {
        &self.groups
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn topic_incarnation(&self, topic: &str) -> BoxFuture<'static, Result<Option<u64>, String>> {
        let (topics, topic) = (self.topics.clone(), topic.to_string());
        Box::pin(async move { topics.incarnation(&topic).await.map_err(|e| e.to_string()) })
    }

    fn offsets_fetch(
        &self,
        group: &str,
        keys: Vec<OffsetKey>,
    ) -> BoxFuture<'static, Result<Vec<Option<Committed>>, FenceError>> {
        let (offsets, group) = (self.topics.group_offsets().clone(), group.to_string());
        Box::pin(async move { offsets.fetch(&group, keys).await })
    }

    fn offsets_commit(
        &self,
        group: &str,
        commits: Vec<(OffsetKey, Committed)>,
        check: CommitCheck,
    ) -> BoxFuture<'static, Result<Result<(), FenceError>, i16>> {
        let (offsets, group) = (self.topics.group_offsets().clone(), group.to_string());
        let groups = self.groups.clone();
        Box::pin(async move {
            let check = move || match check(&groups) {
                0 => Ok(commits),
                refused => Err(refused),
            };
            offsets.commit(&group, check).await
        })
    }
}

/// `host:port` (an IPv6 host in brackets) into its parts.
fn split_host_port(s: &str) -> Option<(String, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some((host.to_string(), port.parse().ok()?))
}

/// Serves Kafka clients on `listener` until `stop` resolves.
pub async fn serve(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    backend: Arc<KafkaBackend>,
    stop: impl std::future::Future<Output = ()>,
) {
    let limits = backend.limits;
    let stats = backend.stats.clone();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let log = Arc::new(RateLimitedLog::default());
    tokio::pin!(stop);
    loop {
        let (sock, peer) = tokio::select! {
            _ = &mut stop => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    if let Some(suppressed) = log.allow() {
                        warn!(error = %e, suppressed, "cannot accept a Kafka connection");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            bump(&stats.refused);
            if let Some(suppressed) = log.allow() {
                warn!(%peer, limit = limits.max_connections, suppressed, "Kafka connection refused: at the connection limit (--kafka-max-connections)");
            }
            continue;
        };
        bump(&stats.accepted);
        stats.open.fetch_add(1, Ordering::Relaxed);
        let open = Open { _slot: slot, stats: stats.clone() };
        let _ = sock.set_nodelay(true);
        let (backend, tls, log) = (backend.clone(), tls.clone(), log.clone());
        tokio::spawn(async move {
            let _open = open;
            match tls {
                None => connection(sock, peer, backend, log).await,
                Some(acceptor) => {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(sock)).await {
                        Ok(Ok(stream)) => connection(stream, peer, backend, log).await,
                        Ok(Err(e)) => {
                            bump(&backend.stats.handshakes_failed);
                            if let Some(suppressed) = log.allow() {
                                warn!(%peer, error = %e, suppressed, "Kafka TLS handshake failed");
                            }
                        }
                        Err(_) => {
                            bump(&backend.stats.handshakes_failed);
                            debug!(%peer, "Kafka TLS handshake timed out");
                        }
                    }
                }
            }
        });
    }
    info!("Kafka listener stopped");
}

/// A request read from a connection, waiting its turn.
enum Job {
    Serve(codec::Header, Box<codec::RequestKind>),
    /// An answer made already (ApiVersions at a version not served).
    Ready(Bytes),
}

async fn connection<S>(
    stream: S,
    peer: SocketAddr,
    backend: Arc<KafkaBackend>,
    log: Arc<RateLimitedLog>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let stats = backend.stats.clone();
    let idle = backend.limits.idle_timeout;
    // Requests are served one at a time, in the order they came, as a Kafka broker serves a
    // connection (two produces of one partition must be appended in order; two commits must
    // land in order); reading runs ahead by up to MAX_IN_FLIGHT requests.
    let (tx, mut rx) = mpsc::channel::<Job>(MAX_IN_FLIGHT);
    let server = tokio::spawn(async move {
        let host = format!("/{}", peer.ip());
        while let Some(job) = rx.recv().await {
            let bytes = match job {
                Job::Ready(b) => {
                    backend.stats.served(codec::ApiKey::ApiVersions);
                    b
                }
                Job::Serve(h, req) => match serve::answer(&*backend, &h, &host, *req).await {
                    Ok(Some(body)) => match codec::encode_response(&h, &body) {
                        Ok(b) => {
                            backend.stats.served(h.api_key);
                            b
                        }
                        Err(e) => {
                            warn!(%peer, error = %e, "cannot encode a Kafka answer; closing the connection");
                            break;
                        }
                    },
                    Ok(None) => {
                        backend.stats.served(h.api_key);
                        continue;
                    }
                    Err(e) => {
                        debug!(%peer, reason = %e, "closing the Kafka connection");
                        break;
                    }
                },
            };
            if wr.write_all(&bytes).await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    });
    let mut frames = FrameReader::new();
    let refuse = |why: String| {
        bump(&stats.requests_refused);
        if let Some(suppressed) = log.allow() {
            warn!(%peer, reason = %why, suppressed, "Kafka connection closed: a request Starling does not serve");
        }
    };
    'conn: loop {
        let frame = loop {
            match frames.next_frame() {
                Ok(Some(f)) => break f,
                Ok(None) => {}
                Err(e) => {
                    refuse(e.to_string());
                    break 'conn;
                }
            }
            let limit = if frames.pending() == 0 { idle } else { REQUEST_TIMEOUT };
            match tokio::time::timeout(limit, rd.read_buf(frames.buffer())).await {
                Ok(Ok(n)) if n > 0 => {}
                Ok(_) => break 'conn,
                Err(_) => {
                    bump(&stats.timed_out);
                    debug!(%peer, pending = frames.pending(), "Kafka connection closed: idle, or a request not finished in time");
                    break 'conn;
                }
            }
        };
        let job = match codec::decode_request(frame) {
            Ok(Decoded::ApiVersionsTooNew(h)) => match codec::unsupported_api_versions(&h) {
                Ok(b) => Job::Ready(b),
                Err(e) => {
                    refuse(e);
                    break;
                }
            },
            Ok(Decoded::Request(h, req)) => Job::Serve(h, req),
            Err(e) => {
                refuse(e.to_string());
                break;
            }
        };
        if tx.send(job).await.is_err() {
            break;
        }
    }
    drop(tx);
    let _ = server.await;
}
