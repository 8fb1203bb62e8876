//! Starting and stopping a node: open the data dir, bind QUIC and HTTP, start the gossip driver,
//! serve until shutdown or `leave`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use starling_gossip::{Config as GossipConfig, Gossip};
use starling_wire::repair::{RemoveNode, RepairRequest, RepairResponse};
use starling_wire::{
    Call, ClientRequest, Clock, Echo, ErrorCode, GetStatus, PeerRequest, ReplicaRequest, Request,
    Response,
};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{error, info, warn};

use crate::config::{NodeConfig, Security};
use crate::datadir::{Addresses, DataDir};
use crate::driver::{
    self, DriverCommand, KafkaStatusFn, KvStatusFn, MetaStatusFn, NodeInfo, RepairStatusFn,
    TopicsStatusFn, TransportStatusFn, INBOUND_QUEUE,
};
use crate::http::{self, HttpState, Metrics};
use crate::kv::view::RingView;
use crate::kv::{self, bootstrap, Kv, KvConfig};
use crate::logging::RateLimitedLog;
use crate::meta::{Meta, MetaOptions};
use crate::status::Status;
use crate::storage::rocks::{RocksConfig, RocksStorage};
use crate::storage::Storage;
use crate::tls::{self, TlsMaterial};
use crate::topics::Topics;
use crate::transport::quic::QuicTransport;
use crate::transport::{PeerInfo, Role, Service, Transport, TransportConfig};
use crate::zab_store::ZabStore;

/// The node's KV layer over QUIC and RocksDB.
pub type NodeKv = Kv<QuicTransport, RocksStorage>;

/// The node's anti-entropy over QUIC and RocksDB.
pub type NodeRepair = crate::repair::Repair<QuicTransport, RocksStorage>;

/// Answers peers and clients over QUIC.
#[derive(Debug, Clone)]
pub struct NodeService {
    inbound: mpsc::Sender<Vec<u8>>,
    commands: mpsc::Sender<DriverCommand>,
    status: watch::Receiver<Arc<Status>>,
    metrics: Arc<Metrics>,
    /// Set once the transport exists (the KV layer needs the transport, which needs the service).
    kv: Arc<std::sync::OnceLock<NodeKv>>,
    /// Set once the transport exists, like `kv`.
    meta: Arc<std::sync::OnceLock<Meta<QuicTransport>>>,
    /// Set once the metadata service runs.
    topics: Arc<std::sync::OnceLock<Topics<QuicTransport>>>,
    /// Set once the store is open, like `kv`.
    repair: Arc<std::sync::OnceLock<NodeRepair>>,
    /// Peer RPCs refused because the sender's certificate is a client's.
    refused_peer_rpcs: Arc<std::sync::atomic::AtomicU64>,
    /// Log lines about those refusals, at most one a second.
    refusal_log: Arc<RateLimitedLog>,
}

impl NodeService {
    /// Refuses a peer RPC from a client certificate: counted, logged at most once a second.
    fn refuse_peer_rpc(&self, peer: PeerInfo, kind: &'static str) -> Response {
        let n = self.refused_peer_rpcs.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        if let Some(suppressed) = self.refusal_log.allow() {
            warn!(peer = %peer.addr, kind, refused_total = n, suppressed, "refused a peer RPC from a client certificate");
        }
        Response::error(
            ErrorCode::Forbidden,
            format!("{kind} is a peer RPC and needs a node certificate; this connection presented a client certificate"),
        )
    }
}

impl Service for NodeService {
    async fn call(&self, peer: PeerInfo, req: Request) -> Response {
        let started = Instant::now();
        let kind = req.kind();
        let resp = match req {
            Request::Client(c) => self.client_call(c).await,
            Request::Peer(_) if peer.role != Role::Node => self.refuse_peer_rpc(peer, kind),
            // A replica's requests are the data path's; every other peer RPC is boxed, so that
            // the future of each request this node serves stays small (it is moved into a
            // task per request).
            Request::Peer(PeerRequest::Replica(r)) => self.replica_call(r).await,
            Request::Peer(p) => Box::pin(self.peer_call(p)).await,
        };
        self.metrics.observe_rpc(kind, started.elapsed());
        resp
    }
}

impl NodeService {
    async fn client_call(&self, req: ClientRequest) -> Response {
        // The key-value calls run unboxed, the other services' boxed (see `call`).
        match req {
            ClientRequest::Status => {
                let mut status = Status::clone(&self.status.borrow());
                status.history = Some(self.metrics.recent.to_json());
                match status_json(&mut status) {
                    Ok(json) => GetStatus::respond(json),
                    Err(e) => Response::error(ErrorCode::Internal, format!("encode status: {e}")),
                }
            }
            ClientRequest::Echo(bytes) => Echo::respond(bytes),
            ClientRequest::Kv(kv_req) => match self.kv.get() {
                Some(kv) => kv.handle_client(kv_req).await,
                None => Response::error(ErrorCode::Unavailable, "node is starting"),
            },
            ClientRequest::Meta(m) => match self.meta.get() {
                Some(meta) => Box::pin(meta.handle_client(m)).await,
                None => Response::error(ErrorCode::Unavailable, "node is starting"),
            },
            ClientRequest::Topic(t) => match self.topics.get() {
                Some(topics) => Box::pin(topics.handle_client(t)).await,
                None => Response::error(ErrorCode::Unavailable, "node is starting"),
            },
            ClientRequest::Repair(r) => match self.repair.get() {
                Some(repair) => Box::pin(repair.run_now(r)).await,
                None => Response::error(ErrorCode::Unavailable, "node is starting"),
            },
            ClientRequest::Cleanup(_) => match self.repair.get() {
                Some(repair) => Box::pin(repair.cleanup_now()).await,
                None => Response::error(ErrorCode::Unavailable, "node is starting"),
            },
        }
    }

    async fn replica_call(&self, req: ReplicaRequest) -> Response {
        match self.kv.get() {
            Some(kv) => kv.handle_replica(req).await,
            None => Response::error(ErrorCode::Unavailable, "node is starting"),
        }
    }

    async fn peer_call(&self, req: PeerRequest) -> Response {
        match req {
            PeerRequest::Gossip(bytes) => {
                // Full queue: drop, as a lossy network would; gossip recovers.
                let _ = self.inbound.try_send(bytes);
                Response::Ok
            }
            PeerRequest::Clock => Clock::respond(crate::kv::wall_millis()),
            PeerRequest::Replica(r) => self.replica_call(r).await,
            PeerRequest::Meta(m) => match self.meta.get() {
                Some(meta) => meta.handle_peer(m).await,
                None => Response::error(ErrorCode::Unavailable, "node is starting"),
            },
            PeerRequest::Topic(t) => match self.topics.get() {
                Some(topics) => topics.handle_peer(t).await,
                None => Response::error(ErrorCode::Unavailable, "node is starting"),
            },
            PeerRequest::RemoveNode(r) => match self.kv.get() {
                Some(kv) => {
                    let (commands, status) = (self.commands.clone(), self.status.clone());
                    match bootstrap::remove_node(kv.clone(), &r.node, commands, status).await {
                        Ok(summary) => RemoveNode::respond(summary),
                        Err(e) => e,
                    }
                }
                None => Response::error(ErrorCode::Unavailable, "node is starting"),
            },
            PeerRequest::Repair(RepairRequest::StreamPending) => match self.kv.get() {
                Some(kv) => match bootstrap::stream_pending(kv).await {
                    Ok(n) => Response::Repair(Box::new(RepairResponse::Streamed(n))),
                    Err(e) => Response::error(ErrorCode::Unavailable, format!("{e:#}")),
                },
                None => Response::error(ErrorCode::Unavailable, "node is starting"),
            },
            PeerRequest::Repair(r) => match self.repair.get() {
                Some(repair) => repair.handle_peer(r).await,
                None => Response::error(ErrorCode::Unavailable, "node is starting"),
            },
            PeerRequest::RepairStream(r) => match (self.repair.get(), self.kv.get()) {
                (Some(repair), Some(kv)) => {
                    let ranges: Vec<starling_ring::Range> =
                        r.ranges().into_iter().map(starling_merkle::ring_range).collect();
                    if kv.recovering_any(&ranges) {
                        let why = format!(
                            "node {} is recovering its store after an unclean stop (it may lack \
                             writes it acknowledged in this range): stream from another replica",
                            kv.view().me.short()
                        );
                        return Response::Repair(Box::new(RepairResponse::Refused(why)));
                    }
                    repair.handle_peer(r).await
                }
                _ => Response::error(ErrorCode::Unavailable, "node is starting"),
            },
            PeerRequest::Leave => {
                match self.kv.get() {
                    Some(kv) if leave_would_lose_copies(&kv.view()).is_some() => {
                        let why = leave_would_lose_copies(&kv.view()).unwrap_or_default();
                        Response::error(ErrorCode::BadRequest, why)
                    }
                    Some(kv) => {
                        // Hand the data over first, then leave the gossip cluster.
                        let (kv, commands, status, topics) = (
                            kv.clone(),
                            self.commands.clone(),
                            self.status.clone(),
                            self.topics.clone(),
                        );
                        tokio::spawn(async move {
                            let storage = kv.storage().clone();
                            let left = async {
                                let n =
                                    bootstrap::decommission(kv, commands.clone(), status).await?;
                                // The ring without this node is agreed (status `leaving`): each
                                // partition's leader moves it to its new replicas.
                                if let Some(topics) = topics.get() {
                                    topics
                                        .hand_over(LEAVE_TOPICS_TIMEOUT)
                                        .await
                                        .map_err(|why| anyhow::anyhow!("topics: {why}"))?;
                                }
                                anyhow::Ok(n)
                            };
                            match left.await {
                                Ok(n) => info!(records = n, "decommissioned"),
                                Err(e) => {
                                    // Leaving now could leave ranges with fewer than N copies:
                                    // stay, as a normal member.
                                    error!(
                                        error = %format!("{e:#}"),
                                        "leave aborted: handing the data over failed; this node stays in the cluster as normal (run `starling leave` again once the nodes taking over are up)"
                                    );
                                    if let Err(e) =
                                        storage.put_meta(bootstrap::META_STATUS, b"normal")
                                    {
                                        warn!(error = %e, "cannot record the aborted leave");
                                    }
                                    let _ = commands
                                        .send(DriverCommand::Set {
                                            key: "status".into(),
                                            value: "normal".into(),
                                        })
                                        .await;
                                    return;
                                }
                            }
                            if let Err(e) = storage.put_meta(bootstrap::META_STATUS, b"left") {
                                warn!(error = %e, "cannot record the leave");
                            }
                            let (tx, _rx) = oneshot::channel();
                            let _ = commands.send(DriverCommand::Leave(tx)).await;
                        });
                        Response::Ok
                    }
                    None => {
                        let (tx, _rx) = oneshot::channel();
                        match self.commands.send(DriverCommand::Leave(tx)).await {
                            Ok(()) => Response::Ok,
                            Err(_) => {
                                Response::error(ErrorCode::Unavailable, "node is shutting down")
                            }
                        }
                    }
                }
            }
        }
    }
}

/// How long a leave waits for the topic partitions this node replicates to move to other
/// nodes (each new replica copies the partition's log) before it gives up and stays.
const LEAVE_TOPICS_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Most bytes of the `Status` RPC's answer: half a response frame, a wide margin over any status
/// document without a history.
const STATUS_ANSWER_BUDGET: usize = starling_wire::MAX_RESPONSE_BODY / 2;

/// `status` as the `Status` RPC answers it, in JSON. A history too large for
/// [`STATUS_ANSWER_BUDGET`] (hundreds of members whose views kept changing) loses its member
/// timelines first, then the rest of it.
fn status_json(status: &mut Status) -> serde_json::Result<Vec<u8>> {
    let json = serde_json::to_vec(&*status)?;
    if json.len() <= STATUS_ANSWER_BUDGET {
        return Ok(json);
    }
    if let Some(h) = status.history.as_mut() {
        h.members.clear();
        h.views.clear();
    }
    let json = serde_json::to_vec(&*status)?;
    if json.len() <= STATUS_ANSWER_BUDGET {
        return Ok(json);
    }
    status.history = None;
    serde_json::to_vec(&*status)
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
    let purge_gate = Arc::new(crate::storage::PurgeGate::default());
    let rocks_cfg = RocksConfig {
        purge_gate: Some(purge_gate.clone()),
        sync: cfg.sync,
        tombstone_grace: cfg.tombstone_grace,
        version_cache: cfg.version_cache,
        segment_bits: cfg.repair_segment_bits,
    };
    let db_path = cfg.data_dir.join("db");
    let clean_stop = crate::datadir::take_clean_stop(&cfg.data_dir, &db_path)?;
    let storage = Arc::new(
        tokio::task::spawn_blocking(move || RocksStorage::open(&db_path, &rocks_cfg))
            .await
            .context("storage open task")?
            .with_context(|| {
                format!("cannot open the store in {}", cfg.data_dir.join("db").display())
            })?,
    );
    let insecure = cfg.security == Security::Insecure;
    let refused_peer_rpcs = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tls_info = None;
    let tls = match &cfg.security {
        Security::Certs(dir) => {
            let material = TlsMaterial::load(dir)
                .with_context(|| format!("cannot load certificates from {}", dir.display()))?;
            let own = check_own_certificate(&material, dir)?;
            tls_info = Some(driver::TlsInfo {
                role: Role::Node,
                not_after: own.not_after,
                refused_peer_rpcs: refused_peer_rpcs.clone(),
            });
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
        kv: Arc::default(),
        meta: Arc::default(),
        topics: Arc::default(),
        repair: Arc::default(),
        refused_peer_rpcs,
        refusal_log: Arc::default(),
    };
    let kv_cell = service.kv.clone();
    let meta_cell = service.meta.clone();
    let topics_cell = service.topics.clone();
    let repair_cell = service.repair.clone();
    if storage.get_meta(bootstrap::META_STATUS)?.as_deref() == Some(b"left".as_slice()) {
        bail!(
            "this node left the cluster (`starling leave`) and its data in {} is stale: it must not rejoin. To join again as a new node, start with an empty --data-dir",
            cfg.data_dir.display()
        );
    }
    let transport_cfg =
        TransportConfig { reset_key: Some(data.reset_key), ..TransportConfig::default() };
    let transport =
        QuicTransport::bind(cfg.listen, &tls, transport_cfg, service).await.map_err(|e| {
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
    let kafka_listener = match cfg.kafka {
        Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.with_context(|| {
            format!(
                "cannot listen for Kafka clients on {addr} (is another process using this port?)"
            )
        })?),
        None => None,
    };
    // What Kafka clients are told: --kafka-advertise, else the listener's address, else (a
    // wildcard listener) the node's advertised host with the listener's port.
    let kafka_advertise = match &kafka_listener {
        Some(l) => {
            let bound = l.local_addr().context("Kafka local address")?;
            Some(match &cfg.kafka_advertise {
                Some(a) => a.clone(),
                None if bound.ip().is_unspecified() => {
                    SocketAddr::new(advertise.ip(), bound.port()).to_string()
                }
                None => bound.to_string(),
            })
        }
        None => None,
    };
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
    let (ring_tx, ring_rx) =
        watch::channel(Arc::new(RingView::empty(data.node_id, cfg.replication)));
    let kv_cfg = KvConfig {
        replication: cfg.replication,
        hint_window: cfg.hint_window,
        tombstone_grace: cfg.tombstone_grace,
        sloppy_quorum: cfg.sloppy_quorum,
        max_clock_offset: cfg.max_clock_offset,
        max_hint_bytes_per_target: cfg.max_hints_per_node,
        max_hint_bytes: cfg.max_hints,
        ..KvConfig::default()
    };
    // The clock's high mark from before the restart runs ahead of the wall clock by design: wait
    // it out (CockroachDB does the same), so this node's first versions are greater than every
    // version it issued before, and not ahead of its peers' clocks.
    let mark_ms = kv::hlc::millis(kv::hlc_high_mark(&*storage));
    let wall_ms = kv::wall_millis();
    if mark_ms > wall_ms {
        let ahead = mark_ms - wall_ms;
        if ahead <= 2 * kv::HLC_MARK_AHEAD_MS {
            tokio::time::sleep(std::time::Duration::from_millis(ahead)).await;
        } else {
            warn!(
                behind_ms = ahead,
                "this node's clock is behind the versions it issued before it restarted (was it set back?): its versions continue above them, and it coordinates no writes until its clock agrees with the cluster's"
            );
        }
    }
    let meta_view = ring_rx.clone();
    let topics_view = ring_rx.clone();
    let repair_view = ring_rx.clone();
    let kv = Kv::new(data.node_id, kv_cfg, storage, transport.clone(), ring_rx)
        .context("cannot start the storage threads")?;
    if clean_stop == Some(false) {
        warn!("the store did not stop cleanly (killed, or a power loss): writes it acknowledged may be missing from it, so it answers no replica reads until it has compared its ranges with their other replicas");
        kv.start_recovery(
            "the store did not stop cleanly: comparing its ranges with the other replicas".into(),
        );
    }
    let _ = kv_cell.set(kv.clone());
    let repair = crate::repair::Repair::new(
        data.node_id,
        kv.storage().clone(),
        transport.clone(),
        repair_view,
        crate::repair::RepairConfig {
            interval: cfg.repair_interval,
            cleanup_after: cfg.cleanup_after,
        },
        purge_gate,
        status_rx.clone(),
        Some({
            let kv = kv.clone();
            Arc::new(move |records: &[starling_wire::Record]| kv.observe_versions(records))
        }),
    );
    let _ = repair_cell.set(repair.clone());
    {
        let repair = repair.clone();
        kv.set_streamer(Arc::new(move |peer, ranges| {
            let repair = repair.clone();
            Box::pin(async move { repair.stream_from(peer, ranges).await })
        }));
    }
    if kv.is_recovering() {
        let (kv, repair) = (kv.clone(), repair.clone());
        tokio::spawn(async move {
            let records =
                repair.recover(|| kv.ring_known(), |left| kv.still_recovering(left)).await;
            if records > 0 {
                warn!(records, "recovered: records this node's store lacked (lost in the unclean stop, or written while it was down) came back from other replicas; it answers reads again");
            } else {
                info!("recovered: nothing was missing from the store; it answers reads again");
            }
            kv.recovered(records);
        });
    }
    let meta_path = cfg.data_dir.join("meta");
    let meta_store = Arc::new(
        tokio::task::spawn_blocking(move || ZabStore::open(&meta_path))
            .await
            .context("metadata store open task")?
            .map_err(|e| anyhow::anyhow!(e))?,
    );
    let meta = Meta::start(
        data.node_id,
        MetaOptions {
            voters: cfg.meta_voters.clone(),
            own_addrs: vec![listen, advertise],
            // A follower gives its leader 1 s (the core's default, 300 ms, suits the
            // simulator's LAN): a voter snapshotting a tree of a million znodes stalls for a few
            // hundred milliseconds, and must not set off an election each time.
            zab: starling_zab::Config {
                leader_timeout: std::time::Duration::from_secs(1),
                snapshot_every: cfg.meta_snapshot_every,
                ..starling_zab::Config::default()
            },
        },
        meta_store,
        transport.clone(),
        meta_view,
    );
    let _ = meta_cell.set(meta.clone());
    let topics = Topics::start(
        data.node_id,
        cfg.data_dir.join("topics"),
        transport.clone(),
        meta.clone(),
        topics_view,
        crate::topics::TopicsSettings { sync: cfg.sync, move_rate: cfg.topic_move_rate },
        rand::random(),
    );
    let _ = topics_cell.set(topics.clone());
    let kv_status = {
        let kv = kv.clone();
        KvStatusFn(Arc::new(move || kv.status()))
    };
    info!(sync = %cfg.sync, replication = cfg.replication, "store open");
    let kafka_limits = crate::kafka::Limits {
        max_connections: cfg.kafka_max_connections,
        idle_timeout: cfg.kafka_idle_timeout,
    };
    let kafka_stats = Arc::new(crate::kafka::KafkaStats::default());
    let kafka_groups = Arc::new(starling_kafka::group::Coordinator::new(rand::random()));
    let kafka_status = kafka_advertise.clone().map(|advertise| {
        let (stats, groups) = (kafka_stats.clone(), kafka_groups.clone());
        KafkaStatusFn(Arc::new(move || stats.status(&advertise, !insecure, kafka_limits, &groups)))
    });
    let info = NodeInfo {
        insecure,
        tls: tls_info,
        zone: cfg.zone.clone(),
        kafka: kafka_advertise.clone(),
        started,
        replication: cfg.replication,
        kv_status: Some(kv_status),
        meta_status: Some(MetaStatusFn(Arc::new(move || meta.status()))),
        topics_status: Some({
            let topics = topics.clone();
            TopicsStatusFn(Arc::new(move || topics.status()))
        }),
        repair_status: Some({
            let repair = repair.clone();
            RepairStatusFn(Arc::new(move || repair.status()))
        }),
        transport_status: Some({
            let transport = transport.clone();
            TransportStatusFn(Arc::new(move || transport.status()))
        }),
        kafka_status,
    };
    let addressing =
        driver::Addressing { seeds: cfg.seeds.clone(), advertise: cfg.advertise.clone() };
    let channels = driver::DriverChannels {
        inbound: inbound_rx,
        commands: cmd_rx,
        status: status_tx,
        ring: ring_tx,
    };
    let mut driver =
        tokio::spawn(driver::run(gossip, transport.clone(), addressing, info, channels));
    let founder = founders(&cfg.seeds, listen, advertise).await;
    let join = tokio::spawn(bootstrap::join(
        kv.clone(),
        cfg.vnodes,
        founder,
        cmd_tx.clone(),
        status_rx.clone(),
    ));
    let replay = tokio::spawn(kv.clone().replay_hints());
    let clocks = tokio::spawn(kv.clone().monitor_clocks());
    let ring_keeper = {
        let (commands, status) = (cmd_tx.clone(), status_rx.clone());
        let publish = move |key: &'static str, value: String| {
            commands.try_send(DriverCommand::Set { key: key.into(), value }).is_ok()
        };
        let converged = move || {
            let s = status.borrow();
            s.converged && s.ring.agreed
        };
        tokio::spawn(kv.clone().remember_ring(publish, converged))
    };
    let removals = tokio::spawn(bootstrap::keep_removals(kv.clone(), cmd_tx.clone()));
    let continuous_repair = tokio::spawn(repair.clone().continuous());
    let auto_cleanup = tokio::spawn(repair.clone().auto_cleanup());
    let gate_keeper = tokio::spawn(repair.clone().keep_gate());
    tokio::spawn(async move {
        match join.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %format!("{e:#}"), "cannot join the ring"),
            Err(e) => tracing::error!(error = %e, "join task failed"),
        }
    });
    let (kafka_stop_tx, kafka_stop_rx) = oneshot::channel::<()>();
    let kafka_task = kafka_listener.map(|listener| {
        let acceptor = (!insecure).then(|| {
            // Kafka clients offer no ALPN protocol: the same certificates, without Starling's.
            let mut server = (*tls.server).clone();
            server.alpn_protocols.clear();
            tokio_rustls::TlsAcceptor::from(Arc::new(server))
        });
        let backend = Arc::new(crate::kafka::KafkaBackend {
            topics: topics.clone(),
            status: status_rx.clone(),
            me: data.node_id,
            groups: kafka_groups,
            stats: kafka_stats,
            limits: kafka_limits,
            started: Instant::now(),
        });
        let keeper = tokio::spawn(backend.clone().keep_groups());
        info!(advertise = ?kafka_advertise, tls = acceptor.is_some(), "serving Kafka clients");
        tokio::spawn(crate::kafka::serve(listener, acceptor, backend, async move {
            let _ = kafka_stop_rx.await;
            keeper.abort();
        }))
    });
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
    replay.abort();
    clocks.abort();
    ring_keeper.abort();
    removals.abort();
    continuous_repair.abort();
    auto_cleanup.abort();
    gate_keeper.abort();
    let _ = http_stop_tx.send(());
    let _ = http_task.await;
    let _ = kafka_stop_tx.send(());
    if let Some(task) = kafka_task {
        let _ = task.await;
    }
    topics.shutdown().await;
    transport.close().await;
    let store = kv.storage().clone();
    let synced = tokio::task::spawn_blocking(move || store.sync_all()).await;
    match synced {
        Ok(Ok(())) => {
            if let Err(e) = crate::datadir::write_atomic(
                &cfg.data_dir.join(crate::datadir::CLEAN_STOP),
                b"the store was synced at a clean stop\n",
            ) {
                warn!(error = %format!("{e:#}"), "cannot mark the stop clean: the next start compares the store with its replicas first");
            }
        }
        Ok(Err(e)) => {
            warn!(error = %e, "cannot sync the store at stop: the next start compares it with its replicas first")
        }
        Err(e) => warn!(error = %e, "store sync task failed"),
    }
    drop(cmd_tx);
    info!("stopped");
    Ok(())
}

/// Why this node may not leave now (`None`: it may): every key it replicates must keep `N`
/// copies on the nodes that stay.
fn leave_would_lose_copies(view: &kv::RingView) -> Option<String> {
    view.ring.node(view.me)?;
    let staying = view
        .ring
        .nodes()
        .filter(|n| n.id != view.me && n.status != starling_ring::NodeStatus::Leaving)
        .count();
    (staying < view.rf).then(|| {
        format!(
            "cannot leave: {staying} other node{} would stay on the ring, fewer than the {} copies \
             of every key (--replication); add a node first",
            if staying == 1 { "" } else { "s" },
            view.rf
        )
    })
}

/// Whether this node may start a cluster (take tokens on an empty ring): it has no seeds, or it is
/// one of its own seeds (Cassandra's rule). Any other node only ever joins an existing ring.
/// Who may found a cluster: this node if it has no seeds or is one of its own seeds (Cassandra's
/// rule), and the addresses of its seeds (the other nodes that may).
async fn founders(
    seeds: &[String],
    listen: SocketAddr,
    advertise: SocketAddr,
) -> bootstrap::Founders {
    let mut seed_addrs = std::collections::HashSet::new();
    for s in seeds {
        if let Ok(addrs) = tokio::net::lookup_host(s.as_str()).await {
            seed_addrs.extend(addrs);
        }
    }
    let me = seeds.is_empty() || seed_addrs.contains(&advertise) || seed_addrs.contains(&listen);
    bootstrap::Founders { me, seeds: seed_addrs }
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

/// A node must hold a node certificate that is valid now: a client certificate (or one issued
/// before roles existed) would be refused by every peer, and an expired one by every handshake.
fn check_own_certificate(
    material: &TlsMaterial,
    dir: &std::path::Path,
) -> Result<crate::cert::CertInfo> {
    let leaf = material.chain.first().context("no certificate")?;
    let path = dir.join(crate::cert::NODE_CERT_FILE);
    let info = crate::cert::CertInfo::of_der(leaf)
        .with_context(|| format!("{}: not a readable X.509 certificate", path.display()))?;
    if Role::of_der(leaf) != Role::Node {
        bail!(
            "{} is not a node certificate (it lacks the role name {}): a node needs one issued with `starling cert issue --role node`; client certificates may only make client requests",
            path.display(),
            crate::cert::NODE_ROLE_SAN
        );
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    if now > info.not_after {
        bail!(
            "{} expired {} days ago: issue a new one with `starling cert issue --role node`",
            path.display(),
            (now - info.not_after) / 86_400
        );
    }
    if now < info.not_before {
        bail!(
            "{} is not valid yet (valid from {} s from now): check this machine's clock",
            path.display(),
            info.not_before - now
        );
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{History, HistoryMember, HistoryView};

    #[test]
    fn status_answer_keeps_its_history_within_the_budget() {
        let history = History { t: vec![1, 2], reads: vec![None, Some(3.0)], ..History::default() };
        let mut small = Status { history: Some(history.clone()), ..Status::default() };
        let json = status_json(&mut small).unwrap();
        let back: Status = serde_json::from_slice(&json).unwrap();
        assert_eq!(back.history, Some(history.clone()));

        // Timelines past the budget are dropped, the samples kept.
        let member = |i: usize| HistoryMember {
            node_id: format!("{i:032x}"),
            addr: format!("10.0.{}.{}:7400", i / 256, i % 256),
            runs: (0..64).map(|r| (r, r + 1, r as usize)).collect(),
        };
        let view = |i: usize| HistoryView {
            state: "alive".into(),
            digest: Some(format!("{i:064x}")),
            ring: Some(format!("{i:064x}")),
        };
        let big = History {
            members: (0..2_000).map(member).collect(),
            views: (0..20_000).map(view).collect(),
            ..history.clone()
        };
        let mut large = Status { history: Some(big), ..Status::default() };
        let json = status_json(&mut large).unwrap();
        assert!(json.len() <= STATUS_ANSWER_BUDGET, "{}", json.len());
        let back: Status = serde_json::from_slice(&json).unwrap();
        assert_eq!(back.history, Some(history));
    }
}
