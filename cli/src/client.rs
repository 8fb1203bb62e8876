//! A QUIC client of one node, authenticated like a node (mutual TLS with a client certificate).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use starling_node::status::Status;
use starling_node::tls::{self, TlsMaterial};
use starling_node::transport::quic::QuicTransport;
use starling_node::transport::{service_fn, Transport, TransportConfig};
use starling_wire::{ErrorCode, Request, Response};

/// Exit code for bad input: flags, or a key or value over the limits (documented in the README).
pub const EXIT_USAGE: u8 = 2;
/// Exit code when the node cannot be reached.
pub const EXIT_UNREACHABLE: u8 = 3;
/// Exit code of `kv get` for a key that does not exist (or was deleted).
pub const EXIT_NOT_FOUND: u8 = 4;
/// Exit code when the consistency level could not be met (too few replicas up, or answering).
pub const EXIT_UNAVAILABLE: u8 = 5;

/// How the CLI authenticates to nodes.
#[derive(Debug, Clone)]
pub enum Auth {
    Certs(PathBuf),
    Insecure,
}

/// Errors that map to distinct exit codes.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach node {node}: {reason}")]
    Unreachable { node: String, reason: String },
    #[error("{message}")]
    Refused { code: ErrorCode, message: String },
    #[error("{0}")]
    BadInput(String),
    #[error("{0}")]
    NotFound(String),
}

impl ClientError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::Unreachable { .. } => EXIT_UNREACHABLE,
            ClientError::BadInput(_) => EXIT_USAGE,
            ClientError::NotFound(_) => EXIT_NOT_FOUND,
            ClientError::Refused { code: ErrorCode::BadRequest | ErrorCode::TooLarge, .. } => {
                EXIT_USAGE
            }
            ClientError::Refused { code: ErrorCode::Unavailable | ErrorCode::Timeout, .. } => {
                EXIT_UNAVAILABLE
            }
            ClientError::Refused { .. } => 1,
        }
    }
}

/// A connected client.
#[derive(Debug)]
pub struct Client {
    transport: std::sync::Arc<QuicTransport>,
    node: SocketAddr,
    node_name: String,
}

impl Client {
    /// Resolves `node` (host:port) and prepares a QUIC endpoint; connects on first request.
    pub async fn connect(node: &str, auth: &Auth) -> Result<Client> {
        let node_addr = tokio::net::lookup_host(node)
            .await
            .with_context(|| format!("--node {node}: cannot resolve"))?
            .next()
            .ok_or_else(|| anyhow!("--node {node}: no address"))?;
        let tls = match auth {
            Auth::Certs(dir) => {
                let m = TlsMaterial::load(dir).with_context(|| {
                    format!("cannot load client certificates from {} (create them with `starling cert issue --name client`)", dir.display())
                })?;
                tls::mutual(&m).context("invalid client certificates")?
            }
            Auth::Insecure => tls::insecure().context("insecure TLS")?,
        };
        let bind: SocketAddr = if node_addr.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse()?;
        let cfg = TransportConfig {
            request_timeout: Duration::from_secs(5),
            ..TransportConfig::default()
        };
        let refuse = service_fn(|_, _| async {
            Response::error(ErrorCode::BadRequest, "this is a client, not a node")
        });
        let transport = QuicTransport::bind(bind, &tls, cfg, refuse)
            .await
            .map_err(|e| anyhow!("cannot open a QUIC endpoint: {e}"))?;
        Ok(Client {
            transport: std::sync::Arc::new(transport),
            node: node_addr,
            node_name: node.to_owned(),
        })
    }

    /// Sends one request; transport failures become [`ClientError::Unreachable`].
    pub async fn call(&self, req: Request) -> Result<Response> {
        match self.transport.request(self.node, req).await {
            Ok(Response::Error { code, message }) => {
                Err(ClientError::Refused { code, message: format!("{code}: {message}") }.into())
            }
            Ok(r) => Ok(r),
            Err(e) => Err(ClientError::Unreachable {
                node: self.node_name.clone(),
                reason: e.to_string(),
            }
            .into()),
        }
    }

    /// The node's status.
    pub async fn status(&self) -> Result<Status> {
        match self.call(Request::Status).await? {
            Response::Status(json) => {
                serde_json::from_slice(&json).context("node sent an unreadable status")
            }
            other => bail!("unexpected answer to status: {other:?}"),
        }
    }

    /// The transport, for callers that pipeline many requests (benchmarks).
    pub fn transport(&self) -> std::sync::Arc<QuicTransport> {
        self.transport.clone()
    }

    pub async fn close(self) {
        self.transport.close().await;
    }
}
