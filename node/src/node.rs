//! Starting and stopping a node: open the data dir, bind QUIC and HTTP, start the gossip driver,
//! serve until shutdown or `leave`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use starling_gossip::{Config as GossipConfig, Gossip};
use starling_wire::{ErrorCode, Request, Response};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{info, warn};

use crate::config::{NodeConfig, Security};
use crate::datadir::{Addresses, DataDir};
use crate::driver::{self, DriverCommand, NodeInfo, INBOUND_QUEUE};
use crate::http::{self, HttpState, Metrics};
use crate::status::Status;
use crate::tls::{self, TlsMaterial};
use crate::transport::quic::QuicTransport;
use crate::transport::{PeerInfo, Service, Transport, TransportConfig};

/// Answers peers and clients over QUIC.
#[derive(Debug, Clone)]
pub struct NodeService {
    inbound: mpsc::Sender<Vec<u8>>,
    commands: mpsc::Sender<DriverCommand>,
    status: watch::Receiver<Arc<Status>>,
    metrics: Arc<Metrics>,
}

impl Service for NodeService {
    async fn call(&self, _peer: PeerInfo, req: Request) -> Response {
        let started = Instant::now();
        let (kind, resp) = match req {
            Request::Gossip(bytes) => {
                // Full queue: drop, as a lossy network would; gossip recovers.
                let _ = self.inbound.try_send(bytes);
                ("gossip", Response::Ok)
            }
            Request::Status => {
                let status = self.status.borrow().clone();
                let resp = match serde_json::to_vec(&*status) {
                    Ok(json) => Response::Status(json),
                    Err(e) => Response::error(ErrorCode::Internal, format!("encode status: {e}")),
                };
                ("status", resp)
            }
            Request::Leave => {
                let (tx, _rx) = oneshot::channel();
                let resp = match self.commands.send(DriverCommand::Leave(tx)).await {
                    Ok(()) => Response::Ok,
                    Err(_) => Response::error(ErrorCode::Unavailable, "node is shutting down"),
                };
                ("leave", resp)
            }
            Request::Echo(bytes) => ("echo", Response::Echo(bytes)),
        };
        self.metrics.observe_rpc(kind, started.elapsed());
        resp
    }
}

/// A running node's addresses, for callers that bound port 0.
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    pub listen: SocketAddr,
    pub advertise: SocketAddr,
    pub http: SocketAddr,
}

/// Runs a node until `shutdown` completes (SIGTERM, Ctrl-C) or it is told to leave.
pub async fn run(cfg: NodeConfig, shutdown: impl Future<Output = ()>) -> Result<()> {
    let started = Instant::now();
    let data = DataDir::open(&cfg.data_dir)?;
    let insecure = cfg.security == Security::Insecure;
    let tls = match &cfg.security {
        Security::Certs(dir) => {
            let material = TlsMaterial::load(dir)
                .with_context(|| format!("cannot load certificates from {}", dir.display()))?;
            tls::mutual(&material).context("invalid certificates")?
        }
        Security::Insecure => {
            warn!("INSECURE MODE: no authentication, no peer verification, anyone can join or read this node. Use --certs for anything but a throwaway run");
            tls::insecure().context("cannot build insecure TLS config")?
        }
    };

    let (inbound_tx, inbound_rx) = mpsc::channel(INBOUND_QUEUE);
    let (cmd_tx, cmd_rx) = mpsc::channel(16);
    let (status_tx, status_rx) = watch::channel(Arc::new(Status::default()));
    let metrics = Arc::new(Metrics::default());
    let service = NodeService {
        inbound: inbound_tx,
        commands: cmd_tx.clone(),
        status: status_rx.clone(),
        metrics: metrics.clone(),
    };
    let transport = QuicTransport::bind(cfg.listen, &tls, TransportConfig::default(), service)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot listen for QUIC on {}: {e} (is another node using this port?)",
                cfg.listen
            )
        })?;
    let transport = Arc::new(transport);
    let listen = transport.local_addr();
    let http_listener = tokio::net::TcpListener::bind(cfg.http).await.with_context(|| {
        format!("cannot listen for HTTP on {} (is another node using this port?)", cfg.http)
    })?;
    let http_addr = http_listener.local_addr().context("HTTP local address")?;
    let advertise = resolve_advertise(cfg.advertise.as_deref(), listen).await?;
    data.write_addresses(&Addresses {
        listen,
        advertise,
        http: http_addr,
        pid: std::process::id(),
    })?;

    let gossip = Gossip::new(
        GossipConfig::default(),
        data.node_id,
        data.generation,
        advertise,
        Vec::new(),
        rand::random(),
        Instant::now(),
    );
    info!(
        node = %data.node_id,
        generation = data.generation,
        listen = %listen,
        advertise = %advertise,
        http = %http_addr,
        seeds = ?cfg.seeds,
        insecure,
        "starlingd started"
    );
    let info = NodeInfo { insecure, zone: cfg.zone.clone(), started };
    let addressing =
        driver::Addressing { seeds: cfg.seeds.clone(), advertise: cfg.advertise.clone() };
    let channels =
        driver::DriverChannels { inbound: inbound_rx, commands: cmd_rx, status: status_tx };
    let mut driver =
        tokio::spawn(driver::run(gossip, transport.clone(), addressing, info, channels));
    let (http_stop_tx, http_stop_rx) = oneshot::channel::<()>();
    let http_state = HttpState { status: status_rx, metrics };
    let http_task = tokio::spawn(http::serve(http_listener, http_state, async move {
        let _ = http_stop_rx.await;
    }));

    tokio::select! {
        _ = shutdown => info!("shutting down"),
        r = &mut driver => {
            if let Err(e) = r {
                bail!("gossip driver failed: {e}");
            }
            info!("left the cluster; stopping");
        }
    }
    driver.abort();
    let _ = http_stop_tx.send(());
    let _ = http_task.await;
    transport.close().await;
    drop(cmd_tx);
    info!("stopped");
    Ok(())
}

/// The address peers use: `--advertise` resolved (DNS names allowed), else the bound address.
async fn resolve_advertise(advertise: Option<&str>, listen: SocketAddr) -> Result<SocketAddr> {
    let Some(a) = advertise else { return Ok(listen) };
    let mut addrs: Vec<SocketAddr> = tokio::net::lookup_host(a)
        .await
        .with_context(|| format!("--advertise {a}: cannot resolve"))?
        .collect();
    addrs.sort_by_key(|a| !a.is_ipv4());
    let mut addr = *addrs.first().with_context(|| format!("--advertise {a}: no address"))?;
    if addr.port() == 0 {
        addr.set_port(listen.port());
    }
    Ok(addr)
}
