//! A typed client of a Starling cluster.
//!
//! ```no_run
//! use starling_client::{Auth, Client};
//! use starling_wire::Consistency;
//!
//! # async fn demo() -> Result<(), starling_client::Error> {
//! let client = Client::connect(&["127.0.0.1:7400", "127.0.0.1:7401"], &Auth::certs("certs/client")).await?;
//! let written = client.put("greeting", "hello", Consistency::Quorum).await?;
//! let value = client.get("greeting", Consistency::Quorum).await?;
//! assert_eq!(value.record.and_then(|r| r.value).as_deref(), Some(&b"hello"[..]));
//! client.delete("greeting", Consistency::Quorum).await?;
//! println!("{} replicas acknowledged", written.acked);
//! client.close().await;
//! # Ok(()) }
//! ```
//!
//! - **Connections are reused**: one QUIC connection per node, opened on first use, with requests
//!   pipelined on one long-lived stream (many calls may be in flight at once from clones of one
//!   [`Client`]).
//! - **Requests rotate over the nodes given**, and a node that could not be connected to is left
//!   alone for a while (exponential backoff from [`ClientConfig::backoff_min`] to
//!   [`ClientConfig::backoff_max`], reset by the next success). A call whose connection could not
//!   be opened was never sent, so it goes to the next node at once; a call that was sent and got
//!   no answer is not retried (the write may have been applied) and comes back as
//!   [`Error::NoAnswer`].
//! - **Only a client endpoint**: the client opens no listening socket; it dials nodes from an
//!   ephemeral port.
//! - Every call of the wire's client API ([`starling_wire::Call`]) can be sent with
//!   [`Client::call`]; peer calls (such as [`starling_wire::Leave`]) need a node certificate.

pub mod meta;
pub mod topic;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use starling_net::tls::{self, TlsConfigs, TlsMaterial};
use starling_net::transport::quic::QuicTransport;
use starling_net::transport::{CallError, Transport, TransportConfig, TransportError};
use starling_wire::status::Status;
use starling_wire::{
    check_key_value, AnswerError, Call, Consistency, Echo, ErrorCode, Get, GetStatus, Put, Value,
    Written,
};
use tokio::time::Instant;

/// How a client authenticates to nodes.
#[derive(Debug, Clone)]
pub enum Auth {
    /// A certificates directory: `ca.pem`, `node.pem`, `node.key` (from `starling cert issue
    /// --role client` or `starling cert bootstrap`).
    Certs(PathBuf),
    /// Ready-made TLS configurations.
    Tls(TlsConfigs),
    /// No certificates (nodes started with `--insecure`).
    Insecure,
}

impl Auth {
    /// [`Auth::Certs`] from a directory.
    pub fn certs(dir: impl AsRef<Path>) -> Auth {
        Auth::Certs(dir.as_ref().to_path_buf())
    }
}

/// Limits and timers of a [`Client`].
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Deadline of one call, connecting included.
    pub request_timeout: Duration,
    /// Deadline of a QUIC handshake with a node.
    pub connect_timeout: Duration,
    /// First pause after a node could not be connected to.
    pub backoff_min: Duration,
    /// Longest pause; each failed connect doubles the pause up to this.
    pub backoff_max: Duration,
    /// Calls in flight to one node at once; more wait for a slot (within their deadline).
    pub max_in_flight_per_node: usize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(3),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            max_in_flight_per_node: 256,
        }
    }
}

/// Why a call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The input was refused before anything was sent: a key or value over the limits, an empty
    /// node list, a name that does not resolve.
    #[error("{0}")]
    BadInput(String),
    /// The client could not be set up (certificates, socket).
    #[error("{0}")]
    Setup(String),
    /// No connection to the node: nothing was sent.
    #[error("cannot reach node {node}: {reason}")]
    Unreachable {
        /// The node, as given to [`Client::connect`].
        node: String,
        /// Why.
        reason: String,
    },
    /// The request was sent but no answer came back in time (or the connection broke): its
    /// outcome is unknown, a write may have been applied.
    #[error("no answer from node {node}: {reason}")]
    NoAnswer {
        /// The node.
        node: String,
        /// Why.
        reason: String,
    },
    /// The node answered with an error.
    #[error("{code}: {message}")]
    Refused {
        /// The node.
        node: String,
        /// Machine-readable category.
        code: ErrorCode,
        /// What the node said.
        message: String,
    },
    /// The node answered with something other than this call's answer (a node of another
    /// build, or a bug).
    #[error("node {node}: {reason}")]
    Unexpected {
        /// The node.
        node: String,
        /// What came back.
        reason: String,
    },
}

impl Error {
    /// The node's error code, when the node refused the call.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Refused { code, .. } => Some(*code),
            _ => None,
        }
    }

    fn from_call(node: &str, e: CallError) -> Error {
        let node = node.to_owned();
        match e {
            CallError::Answer(AnswerError::Refused { code, message }) => {
                Error::Refused { node, code, message }
            }
            CallError::Answer(a @ AnswerError::Unexpected { .. }) => {
                Error::Unexpected { node, reason: a.to_string() }
            }
            CallError::Transport(t) if not_sent(&t) => {
                Error::Unreachable { node, reason: t.to_string() }
            }
            CallError::Transport(t) => Error::NoAnswer { node, reason: t.to_string() },
        }
    }
}

/// Whether a transport error means the request never left (no connection could be opened).
fn not_sent(e: &TransportError) -> bool {
    matches!(
        e,
        TransportError::Connect { .. }
            | TransportError::TooManyConnections { .. }
            | TransportError::Closed
            | TransportError::Bind { .. }
            | TransportError::Tls(_)
    )
}

/// One node the client talks to.
#[derive(Debug)]
struct Node {
    name: String,
    addr: SocketAddr,
    backoff: Mutex<Backoff>,
}

#[derive(Debug, Default)]
struct Backoff {
    /// No connect attempts before this.
    until: Option<Instant>,
    /// The pause after the next failure.
    next: Duration,
    /// Why the last connect failed.
    reason: String,
}

#[derive(Debug)]
struct Inner {
    transport: QuicTransport,
    nodes: Vec<Node>,
    next: AtomicUsize,
    config: ClientConfig,
    /// The highest metadata zxid this client has seen.
    meta_seen: std::sync::atomic::AtomicU64,
    /// Per topic: when its partitions' leaders were learned, and for each partition the index
    /// of the node (of those given) that leads it, if known.
    leaders: Mutex<std::collections::HashMap<String, Leaders>>,
    /// Until when what this client learned of the metadata service's leader holds, and the
    /// index of the node (of those given) that leads it, if known.
    meta_leader: Mutex<Option<(Instant, Option<usize>)>>,
}

/// When a topic's partition leaders were learned, and per partition the index of the node (of
/// those given) that leads it, if known.
type Leaders = (Instant, Vec<Option<usize>>);

/// A connection-reusing client of one or more nodes. Cheap to clone; clones share connections.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl Client {
    /// A client of `nodes` (`host:port`, the nodes' QUIC addresses) with the default
    /// [`ClientConfig`]. Resolves the names and opens a client endpoint; connects to a node on
    /// its first call.
    pub async fn connect(nodes: &[impl AsRef<str>], auth: &Auth) -> Result<Client, Error> {
        Self::with_config(nodes, auth, ClientConfig::default()).await
    }

    /// [`Client::connect`] with explicit limits.
    pub async fn with_config(
        nodes: &[impl AsRef<str>],
        auth: &Auth,
        config: ClientConfig,
    ) -> Result<Client, Error> {
        if nodes.is_empty() {
            return Err(Error::BadInput("no node to connect to".into()));
        }
        let mut resolved = Vec::with_capacity(nodes.len());
        for n in nodes {
            let name = n.as_ref();
            let addr = tokio::net::lookup_host(name)
                .await
                .map_err(|e| Error::BadInput(format!("node {name}: cannot resolve: {e}")))?
                .next()
                .ok_or_else(|| Error::BadInput(format!("node {name}: no address")))?;
            resolved.push(Node {
                name: name.to_owned(),
                addr,
                backoff: Mutex::new(Backoff { next: config.backoff_min, ..Backoff::default() }),
            });
        }
        let tls = match auth {
            Auth::Certs(dir) => {
                let m = TlsMaterial::load(dir).map_err(|e| {
                    Error::Setup(format!(
                        "cannot load client certificates from {}: {e} (create them with `starling cert issue --name client --role client`)",
                        dir.display()
                    ))
                })?;
                tls::mutual(&m)
                    .map_err(|e| Error::Setup(format!("invalid client certificates: {e}")))?
            }
            Auth::Tls(t) => t.clone(),
            Auth::Insecure => {
                tls::insecure().map_err(|e| Error::Setup(format!("insecure TLS: {e}")))?
            }
        };
        let any: SocketAddr = if resolved[0].addr.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            ([0u16; 8], 0).into()
        };
        let tc = TransportConfig {
            request_timeout: config.request_timeout,
            connect_timeout: config.connect_timeout,
            max_in_flight_per_peer: config.max_in_flight_per_node,
            ..TransportConfig::default()
        };
        let transport = QuicTransport::client(any, &tls, tc)
            .await
            .map_err(|e| Error::Setup(format!("cannot open a QUIC endpoint: {e}")))?;
        Ok(Client {
            inner: Arc::new(Inner {
                transport,
                nodes: resolved,
                next: AtomicUsize::new(0),
                config,
                meta_seen: Default::default(),
                leaders: Mutex::default(),
                meta_leader: Mutex::default(),
            }),
        })
    }

    /// The nodes this client talks to, as given.
    pub fn nodes(&self) -> impl Iterator<Item = &str> {
        self.inner.nodes.iter().map(|n| n.name.as_str())
    }

    /// Writes `value` under `key`.
    pub async fn put(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
        consistency: Consistency,
    ) -> Result<Written, Error> {
        let (key, value) = (key.into(), value.into());
        check_key_value(&key, Some(&value)).map_err(Error::BadInput)?;
        self.call(Put { key, value: Some(value), consistency }).await
    }

    /// Deletes `key` (writes a tombstone).
    pub async fn delete(
        &self,
        key: impl Into<Vec<u8>>,
        consistency: Consistency,
    ) -> Result<Written, Error> {
        let key = key.into();
        check_key_value(&key, None).map_err(Error::BadInput)?;
        self.call(Put { key, value: None, consistency }).await
    }

    /// Reads `key`: the newest record among the replicas that answered (`record: None` if none
    /// has it; a tombstone if it was deleted).
    pub async fn get(
        &self,
        key: impl Into<Vec<u8>>,
        consistency: Consistency,
    ) -> Result<Value, Error> {
        let key = key.into();
        check_key_value(&key, None).map_err(Error::BadInput)?;
        if consistency == Consistency::Any {
            return Err(Error::BadInput("consistency any is for writes only".into()));
        }
        self.call(Get { key, consistency }).await
    }

    /// The status of the first node given.
    pub async fn status(&self) -> Result<Status, Error> {
        self.status_of(0).await
    }

    /// The status of node `i` (in the order given to [`Client::connect`]).
    pub async fn status_of(&self, i: usize) -> Result<Status, Error> {
        let json = self.call_node(i, GetStatus).await?;
        serde_json::from_slice(&json).map_err(|e| Error::Unexpected {
            node: self.node(i).name.clone(),
            reason: format!("unreadable status: {e}"),
        })
    }

    /// Connects to every node (an echo round trip each), so that later calls find their
    /// connections open. Fails on the first node that cannot be reached.
    pub async fn connect_all(&self) -> Result<(), Error> {
        for i in 0..self.inner.nodes.len() {
            self.call_node(i, Echo(Vec::new())).await?;
        }
        Ok(())
    }

    /// Sends `c` to the next node in rotation that is not backing off; if its connection cannot
    /// be opened, to the next one (the call was not sent).
    pub async fn call<C>(&self, c: C) -> Result<C::Answer, Error>
    where
        C: Call + Clone + Send,
        C::Answer: Send,
    {
        let n = self.inner.nodes.len();
        let start = self.inner.next.fetch_add(1, Ordering::Relaxed);
        let mut last = None;
        for k in 0..n {
            let i = (start + k) % n;
            if let Some(reason) = self.backing_off(i) {
                last.get_or_insert(Error::Unreachable { node: self.node(i).name.clone(), reason });
                continue;
            }
            match self.call_node(i, c.clone()).await {
                Err(e @ Error::Unreachable { .. }) => last = Some(e),
                other => return other,
            }
        }
        // Every node is backing off or unreachable: try the one given first once more, so a
        // single-node client always makes an attempt.
        match last {
            Some(Error::Unreachable { .. }) | None => self.call_node(start % n, c).await,
            Some(e) => Err(e),
        }
    }

    /// Sends `c` to node `preferred` when given (the node that leads what `c` is about), else to
    /// any node ([`Client::call`]). Any node serves such a call by forwarding it, so going to
    /// the leader directly saves a hop, and a leader learned stale costs one. When `preferred`
    /// does not answer, `forget` is called (the next call learns the leader again); if it
    /// could not be reached at all the call goes to any node (it was not sent), else the error
    /// is returned (it may have been carried out).
    pub(crate) async fn call_preferring<C>(
        &self,
        preferred: Option<usize>,
        c: C,
        forget: impl FnOnce(),
    ) -> Result<C::Answer, Error>
    where
        C: Call + Clone + Send,
        C::Answer: Send,
    {
        if let Some(i) = preferred {
            match self.call_node(i, c.clone()).await {
                Err(Error::Unreachable { .. }) => forget(),
                Err(e @ Error::NoAnswer { .. }) => {
                    forget();
                    return Err(e);
                }
                other => return other,
            }
        }
        self.call(c).await
    }

    /// The index of the node (of those given) at `addr`, if it is one of them.
    pub(crate) fn node_at(&self, addr: Option<&str>) -> Option<usize> {
        let addr = addr?.parse::<SocketAddr>().ok()?;
        self.inner.nodes.iter().position(|n| n.addr == addr)
    }

    /// Sends `c` to node `i` (in the order given to [`Client::connect`]), whether or not it is
    /// backing off.
    pub async fn call_node<C>(&self, i: usize, c: C) -> Result<C::Answer, Error>
    where
        C: Call + Send,
        C::Answer: Send,
    {
        let node = self.node(i);
        let result = self.inner.transport.call(node.addr, c).await;
        let mut b = node.backoff.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(a) => {
                if b.until.is_some() {
                    *b = Backoff { next: self.inner.config.backoff_min, ..Backoff::default() };
                }
                Ok(a)
            }
            Err(e) => {
                let e = Error::from_call(&node.name, e);
                if let Error::Unreachable { reason, .. } = &e {
                    b.until = Some(Instant::now() + b.next);
                    b.next = (b.next * 2).min(self.inner.config.backoff_max);
                    b.reason = reason.clone();
                }
                Err(e)
            }
        }
    }

    /// Why node `i` is being left alone, if it is.
    fn backing_off(&self, i: usize) -> Option<String> {
        let b = self.node(i).backoff.lock().unwrap_or_else(|p| p.into_inner());
        let until = b.until?;
        let left = until.checked_duration_since(Instant::now())?;
        Some(format!("{} (next attempt in {} ms)", b.reason, left.as_millis()))
    }

    fn node(&self, i: usize) -> &Node {
        &self.inner.nodes[i % self.inner.nodes.len()]
    }

    /// Closes every connection (in-flight calls fail).
    pub async fn close(&self) {
        self.inner.transport.close().await;
    }
}
