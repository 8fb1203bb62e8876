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

/// Exit code when the node cannot be reached (documented in the README).
pub const EXIT_UNREACHABLE: u8 = 3;

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
}

/// A connected client.
#[derive(Debug)]
pub struct Client {
    transport: QuicTransport,
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
        Ok(Client { transport, node: node_addr, node_name: node.to_owned() })
    }

    /// Sends one request; transport failures become [`ClientError::Unreachable`].
    pub async fn call(&self, req: Request) -> Result<Response> {
        match self.transport.request(self.node, req).await {
            Ok(Response::Error { code, message }) => {
                bail!("node refused the request ({code:?}): {message}")
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

    pub async fn close(self) {
        self.transport.close().await;
    }
}
