//! The gossip driver: one task that owns the sans-IO [`Gossip`] core and connects it to the
//! transport, the clock and the rest of the node. It `select!`s over received messages, the
//! core's next deadline and commands; after every input it drains transmits (each sent on its own
//! task, so a slow peer never blocks the loop) and events, and publishes a fresh [`Status`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use starling_gossip::state::keys;
use starling_gossip::{Command, Event, Gossip, MemberState};
use starling_wire::PeerRequest;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};

use crate::kv::view::{self, RingView};
use crate::kv::KvStatus;
use crate::status::{GossipStatus, MemberStatus, RingStatus, Status, TransportStatus};
use crate::transport::Transport;

/// Messages queued for the driver beyond this are dropped (gossip tolerates loss; memory does
/// not tolerate unbounded queues).
pub const INBOUND_QUEUE: usize = 4096;
/// How often seed host names are resolved again (DNS may change, e.g. in containers).
const RESOLVE_EVERY: Duration = Duration::from_secs(30);

/// Requests to the driver.
#[derive(Debug)]
pub enum DriverCommand {
    /// Announce `left`, linger, then stop; the sender is told when the driver has stopped.
    Leave(oneshot::Sender<()>),
    /// Publish application state.
    Set { key: String, value: String },
}

/// Reads the KV layer's counters for the status snapshot.
#[derive(Clone)]
pub struct KvStatusFn(pub Arc<dyn Fn() -> KvStatus + Send + Sync>);

impl std::fmt::Debug for KvStatusFn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KvStatusFn")
    }
}

/// This node's certificate, for the status snapshot.
#[derive(Debug, Clone)]
pub struct TlsInfo {
    pub role: crate::cert::Role,
    /// Unix seconds.
    pub not_after: i64,
    /// Peer RPCs refused because the sender's certificate is a client's.
    pub refused_peer_rpcs: Arc<std::sync::atomic::AtomicU64>,
}

/// Reads the QUIC endpoint's counters for the status snapshot.
#[derive(Clone)]
pub struct TransportStatusFn(pub Arc<dyn Fn() -> TransportStatus + Send + Sync>);

impl std::fmt::Debug for TransportStatusFn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TransportStatusFn")
    }
}

/// What the status snapshot needs besides the core.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub insecure: bool,
    /// This node's certificate (`None` with `--insecure`).
    pub tls: Option<TlsInfo>,
    pub zone: Option<String>,
    pub started: Instant,
    /// Replicas per key.
    pub replication: usize,
    pub kv_status: Option<KvStatusFn>,
    pub transport_status: Option<TransportStatusFn>,
}

/// Channels to a running driver.
#[derive(Debug, Clone)]
pub struct DriverHandle {
    pub inbound: mpsc::Sender<Vec<u8>>,
    pub commands: mpsc::Sender<DriverCommand>,
    pub status: watch::Receiver<Arc<Status>>,
}

/// The driver's ends of its channels.
#[derive(Debug)]
pub struct DriverChannels {
    pub inbound: mpsc::Receiver<Vec<u8>>,
    pub commands: mpsc::Receiver<DriverCommand>,
    pub status: watch::Sender<Arc<Status>>,
    /// The ring view, rebuilt when membership or ring state changes.
    pub ring: watch::Sender<Arc<RingView>>,
}

/// Where the node finds its peers and how it is reached.
#[derive(Debug, Clone)]
pub struct Addressing {
    /// Seed `host:port` names, resolved now and every 30 s.
    pub seeds: Vec<String>,
    /// `--advertise` as given, re-resolved every 5 s (None: the bound address never changes).
    pub advertise: Option<String>,
}

/// Runs the driver until it is told to leave (returns) or the transport goes away.
pub async fn run<T: Transport>(
    mut gossip: Gossip,
    transport: Arc<T>,
    addressing: Addressing,
    info: NodeInfo,
    channels: DriverChannels,
) {
    let DriverChannels { mut inbound, mut commands, status, ring } = channels;
    let Addressing { seeds, advertise } = addressing;
    if let Some(zone) = &info.zone {
        gossip.handle_command(
            Instant::now(),
            Command::Set { key: keys::ZONE.into(), value: zone.clone() },
        );
    }
    let (seed_tx, mut seed_rx) = mpsc::channel::<Vec<SocketAddr>>(1);
    if !seeds.is_empty() {
        tokio::spawn(resolve_seeds(seeds, seed_tx));
    }
    let (addr_tx, mut addr_rx) = mpsc::channel::<SocketAddr>(1);
    if let Some(name) = advertise {
        tokio::spawn(resolve_advertise(name, gossip.addr(), addr_tx));
    }
    // After `leave`, the node keeps gossiping until the members confirm they heard it
    // (`Gossip::leave_done`), then exits.
    let mut leaving: Option<(Instant, oneshot::Sender<()>)> = None;
    let mut last_publish = Instant::now() - Duration::from_secs(1);
    let mut local_set = false;
    let mut first = true;
    loop {
        let deadline =
            gossip.poll_timeout().unwrap_or_else(|| Instant::now() + Duration::from_secs(1));

        tokio::select! {
            msg = inbound.recv() => {
                let Some(bytes) = msg else { break };
                if let Err(e) = gossip.handle_message(Instant::now(), &bytes) {
                    debug!(error = %e, "gossip message refused");
                }
            }
            cmd = commands.recv() => match cmd {
                Some(DriverCommand::Leave(done)) => {
                    info!("leaving the cluster");
                    gossip.handle_command(Instant::now(), Command::Leave);
                    leaving = Some((Instant::now(), done));
                }
                Some(DriverCommand::Set { key, value }) => {
                    gossip.handle_command(Instant::now(), Command::Set { key, value });
                    // This node's own tokens or status changed: no gossip event says so (a node
                    // alone would never see its ring), so rebuild the view now.
                    local_set = true;
                }
                None => break,
            },
            Some(addrs) = seed_rx.recv() => {
                gossip.handle_command(Instant::now(), Command::SetSeeds(addrs));
            }
            Some(addr) = addr_rx.recv() => {
                info!(advertise = %addr, "advertised address changed");
                gossip.handle_command(Instant::now(), Command::SetAddr(addr));
            }
            _ = tokio::time::sleep_until(deadline.into()) => {
                gossip.handle_timeout(Instant::now());
            }
        }
        while let Some(t) = gossip.poll_transmit() {
            let transport = transport.clone();
            tokio::spawn(async move {
                if let Err(e) =
                    transport.send_one_way(t.to, PeerRequest::Gossip(t.payload).into()).await
                {
                    debug!(peer = %t.to, error = %e, "gossip send failed");
                }
            });
        }
        let mut changed = false;
        let mut ring_changed = std::mem::take(&mut local_set);
        while let Some(e) = gossip.poll_event() {
            changed |= log_event(&gossip, &e);
            ring_changed = true;
        }
        if ring_changed || first {
            first = false;
            let previous = ring.borrow().clone();
            let next = Arc::new(RingView::build(
                gossip.id().0,
                info.replication,
                &view::ring_members(&gossip),
                Some(&previous),
                std::time::Instant::now(),
            ));
            let digest = next.ring.digest();
            if !Arc::ptr_eq(&previous.ring, &next.ring) {
                debug!(ring = %digest, nodes = next.ring.nodes().count(), "ring changed");
                changed = true;
            }
            let publish = !next.ring.is_empty()
                && gossip.local_state().get(view::keys::RING) != Some(digest.as_str());
            ring.send_replace(next);
            if publish {
                gossip.handle_command(
                    Instant::now(),
                    Command::Set { key: view::keys::RING.into(), value: digest },
                );
            }
        }
        if changed || last_publish.elapsed() >= Duration::from_millis(200) {
            last_publish = Instant::now();
            status.send_replace(Arc::new(snapshot(&gossip, &info, &ring.borrow())));
        }
        if leaving.is_some() && gossip.leave_done() {
            if let Some((since, done)) = leaving.take() {
                let unconfirmed = gossip.leave_unconfirmed();
                if unconfirmed > 0 {
                    warn!(
                        unconfirmed,
                        waited = ?since.elapsed(),
                        "leaving without every member's confirmation; the members that heard pass it on"
                    );
                } else {
                    info!(waited = ?since.elapsed(), "every reachable member confirmed the leave");
                }
                let _ = done.send(());
            }
            break;
        }
    }
    status.send_replace(Arc::new(snapshot(&gossip, &info, &ring.borrow())));
}

fn log_event(g: &Gossip, e: &Event) -> bool {
    let addr = |id| g.member(id).map(|m| m.addr.to_string()).unwrap_or_default();
    match e {
        Event::MemberUp { id, generation, incarnation } => {
            info!(member = %id, addr = %addr(*id), generation, incarnation, "member up")
        }
        Event::MemberSuspect { id, incarnation } => {
            info!(member = %id, addr = %addr(*id), incarnation, "member suspect")
        }
        Event::MemberDown { id, incarnation } => {
            warn!(member = %id, addr = %addr(*id), incarnation, "member down")
        }
        Event::MemberLeft { id } => info!(member = %id, addr = %addr(*id), "member left"),
        Event::MemberForgotten { id } => info!(member = %id, "member forgotten"),
        Event::StateChanged { .. } => return false,
    }
    true
}

/// Builds the status snapshot from the core and the ring view.
pub fn snapshot(g: &Gossip, info: &NodeInfo, rv: &RingView) -> Status {
    let mut members: Vec<MemberStatus> = g
        .members()
        .map(|m| MemberStatus {
            node_id: m.id.to_string(),
            addr: m.addr.to_string(),
            state: m.state.as_str().to_owned(),
            phi: (m.phi * 100.0).round() / 100.0,
            incarnation: m.incarnation,
            generation: m.generation,
            zone: m.node_state.get(keys::ZONE).map(str::to_owned),
            digest: m.node_state.get(keys::DIGEST).map(str::to_owned),
            is_self: false,
        })
        .collect();
    members.push(MemberStatus {
        node_id: g.id().to_string(),
        addr: g.addr().to_string(),
        state: if g.local_state().get(keys::STATUS) == Some("left") {
            MemberState::Left.as_str().into()
        } else {
            MemberState::Alive.as_str().into()
        },
        phi: 0.0,
        incarnation: g.incarnation(),
        generation: g.generation(),
        zone: info.zone.clone(),
        digest: g.local_state().get(keys::DIGEST).map(str::to_owned),
        is_self: true,
    });
    members.sort_by(|a, b| a.addr.cmp(&b.addr).then(a.node_id.cmp(&b.node_id)));
    let s = g.stats();
    let ring_digest = (!rv.ring.is_empty()).then(|| rv.ring.digest());
    let agreed = ring_digest.as_deref().is_some_and(|d| {
        g.members()
            .filter(|m| m.state == MemberState::Alive)
            .all(|m| m.node_state.get(view::keys::RING) == Some(d))
    });
    let me = rv.ring.node(g.id().0);
    let ring = RingStatus {
        digest: ring_digest,
        agreed,
        status: me.map(|n| n.status.as_str().to_owned()),
        tokens: me.map_or(0, |n| n.tokens.len()),
        nodes: rv.ring.nodes().count(),
        replication: info.replication,
        ownership: (rv.my_ownership * 1e4).round() / 1e4,
    };
    let gossip_converged = g.converged();
    Status {
        node_id: g.id().to_string(),
        generation: g.generation(),
        incarnation: g.incarnation(),
        addr: g.addr().to_string(),
        zone: info.zone.clone(),
        converged: gossip_converged && (agreed || rv.ring.is_empty()),
        gossip_converged,
        digest: g.view_digest(),
        insecure: info.insecure,
        tls: info.tls.as_ref().map(|t| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            crate::status::TlsStatus {
                role: t.role.to_string(),
                not_after: t.not_after,
                expires_in_days: ((t.not_after - now) as f64 / 86_400.0 * 10.0).round() / 10.0,
                refused_peer_rpcs: t.refused_peer_rpcs.load(std::sync::atomic::Ordering::Relaxed),
            }
        }),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        uptime_secs: (info.started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        members,
        ring,
        kv: info.kv_status.as_ref().map(|f| (f.0)()),
        transport: info.transport_status.as_ref().map(|f| (f.0)()),
        gossip: GossipStatus {
            rounds: s.rounds,
            messages_sent: s.messages_sent,
            bytes_sent: s.bytes_sent,
            messages_received: s.messages_received,
            bytes_received: s.bytes_received,
            refused: s.decode_errors,
            probes: s.probes,
            probes_failed: s.probes_failed,
            refutations: s.refutations,
            local_health: g.local_health(),
        },
    }
}

/// Re-resolves `--advertise` every [`RESOLVE_EVERY`]: a container that comes back with a new IP
/// tells its peers (they take the address from its messages).
async fn resolve_advertise(name: String, mut current: SocketAddr, tx: mpsc::Sender<SocketAddr>) {
    loop {
        tokio::time::sleep(RESOLVE_EVERY / 6).await;
        let Ok(it) = tokio::net::lookup_host(name.as_str()).await else { continue };
        let all: Vec<SocketAddr> = it.collect();
        let Some(mut addr) = all.iter().find(|a| a.is_ipv4()).or(all.first()).copied() else {
            continue;
        };
        if addr.port() == 0 {
            addr.set_port(current.port());
        }
        if addr != current && !all.contains(&current) {
            current = addr;
            if tx.send(addr).await.is_err() {
                return;
            }
        }
    }
}

/// Resolves seed `host:port` names now and every [`RESOLVE_EVERY`], sending the result when it
/// changes. Unresolvable names are logged, not fatal: a seed may come up later.
async fn resolve_seeds(seeds: Vec<String>, tx: mpsc::Sender<Vec<SocketAddr>>) {
    let mut last: Vec<SocketAddr> = Vec::new();
    let mut warned = std::collections::HashSet::new();
    loop {
        let mut addrs = Vec::new();
        for s in &seeds {
            match tokio::net::lookup_host(s.as_str()).await {
                Ok(it) => {
                    // One address per seed name: the first IPv4 if any (peers advertise IPv4).
                    let all: Vec<SocketAddr> = it.collect();
                    if let Some(a) = all.iter().find(|a| a.is_ipv4()).or(all.first()) {
                        addrs.push(*a);
                    }
                    warned.remove(s);
                }
                Err(e) => {
                    if warned.insert(s.clone()) {
                        warn!(seed = %s, error = %e, "cannot resolve seed; will retry");
                    }
                }
            }
        }
        addrs.sort();
        addrs.dedup();
        if addrs != last {
            last = addrs.clone();
            if tx.send(addrs).await.is_err() {
                return;
            }
        }
        // Retry soon while some seed is unresolved, otherwise rarely.
        let wait = if warned.is_empty() { RESOLVE_EVERY } else { Duration::from_secs(2) };
        tokio::time::sleep(wait).await;
    }
}
