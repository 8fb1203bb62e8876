//! The gossip driver: one task that owns the sans-IO [`Gossip`] core and connects it to the
//! transport, the clock and the rest of the node. It `select!`s over received messages, the
//! core's next deadline and commands; after every input it drains transmits (each sent on its own
//! task, so a slow peer never blocks the loop) and events, and publishes a fresh [`Status`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use starling_gossip::state::keys;
use starling_gossip::{Command, Event, Gossip, MemberState};
use starling_ring::{Placement, Ring};
use starling_wire::PeerRequest;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};

use crate::kv::view::{self, RingView};
use crate::kv::KvStatus;
use crate::status::{
    GossipStatus, MemberStatus, RingMemberStatus, RingStatus, Status, TransportStatus,
};
use crate::transport::Transport;

/// Messages queued for the driver beyond this are dropped (gossip tolerates loss; memory does
/// not tolerate unbounded queues).
pub const INBOUND_QUEUE: usize = 4096;
/// How often seed host names are resolved again (DNS may change, e.g. in containers).
const RESOLVE_EVERY: Duration = Duration::from_secs(30);
/// How many equal slices of the token space the status's `ring.arcs` draws the ring with:
/// half-degree slices are finer than a picture of the ring shows, and keep the status small
/// whatever the number of tokens (README, "The status endpoint").
pub const ARC_BINS: u32 = 720;

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

/// Reads the metadata service's state for the status snapshot.
#[derive(Clone)]
pub struct MetaStatusFn(
    pub Arc<dyn Fn() -> Option<starling_wire::status::MetaStatus> + Send + Sync>,
);

impl std::fmt::Debug for MetaStatusFn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MetaStatusFn")
    }
}

/// Reads the topic partitions this node replicates for the status snapshot.
#[derive(Clone)]
pub struct TopicsStatusFn(
    pub Arc<dyn Fn() -> Vec<starling_wire::status::PartitionStatus> + Send + Sync>,
);

impl std::fmt::Debug for TopicsStatusFn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TopicsStatusFn")
    }
}

/// Reads anti-entropy's state for the status snapshot.
#[derive(Clone)]
pub struct RepairStatusFn(pub Arc<dyn Fn() -> starling_wire::status::RepairStatus + Send + Sync>);

impl std::fmt::Debug for RepairStatusFn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RepairStatusFn")
    }
}

/// Reads the Kafka listener's counters for the status snapshot.
#[derive(Clone)]
pub struct KafkaStatusFn(pub Arc<dyn Fn() -> starling_wire::status::KafkaStatus + Send + Sync>);

impl std::fmt::Debug for KafkaStatusFn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KafkaStatusFn")
    }
}

/// What the status snapshot needs besides the core.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub insecure: bool,
    /// This node's certificate (`None` with `--insecure`).
    pub tls: Option<TlsInfo>,
    pub zone: Option<String>,
    /// The Kafka listener's advertised address (`--kafka`), published in gossip.
    pub kafka: Option<String>,
    pub started: Instant,
    /// Replicas per key.
    pub replication: usize,
    pub kv_status: Option<KvStatusFn>,
    pub transport_status: Option<TransportStatusFn>,
    pub meta_status: Option<MetaStatusFn>,
    pub topics_status: Option<TopicsStatusFn>,
    pub repair_status: Option<RepairStatusFn>,
    pub kafka_status: Option<KafkaStatusFn>,
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
    if let Some(kafka) = &info.kafka {
        gossip.handle_command(
            Instant::now(),
            Command::Set { key: crate::kafka::GOSSIP_KEY.into(), value: kafka.clone() },
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
    let mut picture = RingPicture::default();
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
                gossip.id(),
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
            let rv = ring.borrow().clone();
            picture.update(&rv);
            status.send_replace(Arc::new(snapshot(&gossip, &info, &rv, &picture)));
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
    let rv = ring.borrow().clone();
    picture.update(&rv);
    status.send_replace(Arc::new(snapshot(&gossip, &info, &rv, &picture)));
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

/// The ring's members with their shares of the keyspace and the ring drawn at [`ARC_BINS`]
/// resolution, for the status: recomputed only when the ring view's placement changes, not
/// for every snapshot.
#[derive(Debug, Default)]
pub struct RingPicture {
    /// The placement these were computed from.
    placement: Option<Arc<Placement>>,
    members: Vec<RingMemberStatus>,
    arcs: Vec<Vec<(u32, u32)>>,
}

impl RingPicture {
    /// Recomputes the picture if `rv` has another placement than the last one.
    pub fn update(&mut self, rv: &RingView) {
        if self.placement.as_ref().is_some_and(|p| Arc::ptr_eq(p, &rv.placement)) {
            return;
        }
        let (members, arcs) = ring_picture(&rv.ring, &rv.placement, ARC_BINS);
        *self = RingPicture { placement: Some(rv.placement.clone()), members, arcs };
    }
}

/// Each node of `ring` with its shares of the keyspace, and the ring drawn in `bins` equal
/// slices of the token space: for each replica rank, runs of `(slices, node index)` from token 0
/// (the status's `ring.members` and `ring.arcs`). `placement` is `ring.placement(N)`.
///
/// A slice goes to the node that holds most of it at that rank (the lower index on a tie), so the
/// picture is exact to a slice; the fractions are exact (to 4 decimals).
pub fn ring_picture(
    ring: &Ring,
    placement: &Placement,
    bins: u32,
) -> (Vec<RingMemberStatus>, Vec<Vec<(u32, u32)>>) {
    const SPACE: u128 = 1 << 64;
    let nodes: Vec<_> = ring.nodes().collect();
    let index = |id| nodes.binary_search_by_key(&id, |n| n.id).ok();
    let ranks = placement.segments().map(|(_, natural, _)| natural.len()).max().unwrap_or(0);
    let bins = bins.max(1);
    let mut owned = vec![0u128; nodes.len()];
    let mut replicated = vec![0u128; nodes.len()];
    // Per rank and slice, how much of the slice each node holds: a few entries per slice.
    let mut held: Vec<Vec<Vec<(u32, u128)>>> = vec![vec![Vec::new(); bins as usize]; ranks];
    // Slice `k` is `[bound(k), bound(k + 1))`, the tokens `x` with `x * bins / 2^64 == k`.
    let bound = |k: u128| (k * SPACE).div_ceil(u128::from(bins));
    for (range, natural, _) in placement.segments() {
        // `(start, end]` as half-open pieces of `[0, 2^64)`: two when it wraps past the top.
        let (start, end) = (u128::from(range.start) + 1, u128::from(range.end) + 1);
        let pieces = if range.is_full() {
            [(0, SPACE), (0, 0)]
        } else if start < end {
            [(start, end), (0, 0)]
        } else {
            [(start, SPACE), (0, end)]
        };
        for (rank, id) in natural.iter().enumerate() {
            let Some(i) = index(*id) else { continue };
            if rank == 0 {
                owned[i] += range.width();
            }
            replicated[i] += range.width();
            for &(mut a, b) in &pieces {
                while a < b {
                    let k = a * u128::from(bins) / SPACE;
                    let upto = b.min(bound(k + 1));
                    let slice = &mut held[rank][k as usize];
                    match slice.iter_mut().find(|(node, _)| *node == i as u32) {
                        Some((_, w)) => *w += upto - a,
                        None => slice.push((i as u32, upto - a)),
                    }
                    a = upto;
                }
            }
        }
    }
    let fraction = |w: u128| ((w as f64 / SPACE as f64) * 1e4).round() / 1e4;
    let members = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| RingMemberStatus {
            node_id: n.id.to_string(),
            status: n.status.as_str().to_owned(),
            zone: n.zone.clone(),
            tokens: n.tokens.len(),
            owned_fraction: fraction(owned[i]),
            replicated_fraction: fraction(replicated[i]),
        })
        .collect();
    let arcs = held
        .into_iter()
        .map(|slices| {
            let mut runs: Vec<(u32, u32)> = Vec::new();
            for slice in slices {
                // Every slice is covered at every rank (the segments cover the ring once, each
                // with `ranks` replicas); an uncovered one would continue the run before it.
                let winner = slice
                    .iter()
                    .max_by(|x, y| x.1.cmp(&y.1).then(y.0.cmp(&x.0)))
                    .map(|&(node, _)| node)
                    .or(runs.last().map(|r| r.1));
                match (runs.last_mut(), winner) {
                    (Some(run), Some(node)) if run.1 == node => run.0 += 1,
                    (_, Some(node)) => runs.push((1, node)),
                    (_, None) => {}
                }
            }
            runs
        })
        .collect();
    (members, arcs)
}

/// Builds the status snapshot from the core, the ring view and its picture.
pub fn snapshot(g: &Gossip, info: &NodeInfo, rv: &RingView, picture: &RingPicture) -> Status {
    let mut members: Vec<MemberStatus> = g
        .members()
        .map(|m| MemberStatus {
            node_id: m.id.to_string(),
            addr: m.addr.to_string(),
            // A dead node taken off the ring with `starling removenode` stays a gossip member
            // that never answers: say what it is.
            state: if rv.removed.contains(&m.id) && m.state != MemberState::Alive {
                "removed".to_owned()
            } else {
                m.state.as_str().to_owned()
            },
            phi: (m.phi * 100.0).round() / 100.0,
            incarnation: m.incarnation,
            generation: m.generation,
            zone: m.node_state.get(keys::ZONE).map(str::to_owned),
            digest: m.node_state.get(keys::DIGEST).map(str::to_owned),
            kafka: m.node_state.get(crate::kafka::GOSSIP_KEY).map(str::to_owned),
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
        kafka: info.kafka.clone(),
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
    let me = rv.ring.node(g.id());
    let member_digests = g
        .members()
        .filter_map(|m| Some((m.id.to_string(), m.node_state.get(view::keys::RING)?.to_owned())))
        .chain(g.local_state().get(view::keys::RING).map(|d| (g.id().to_string(), d.to_owned())))
        .collect();
    let ring = RingStatus {
        digest: ring_digest,
        agreed,
        status: me.map(|n| n.status.as_str().to_owned()),
        tokens: me.map_or(0, |n| n.tokens.len()),
        nodes: rv.ring.nodes().count(),
        replication: info.replication,
        ownership: (rv.my_ownership * 1e4).round() / 1e4,
        members: picture.members.clone(),
        arc_bins: if picture.arcs.is_empty() { 0 } else { ARC_BINS },
        arcs: picture.arcs.clone(),
        member_digests,
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
        meta: info.meta_status.as_ref().and_then(|f| (f.0)()),
        topics: info.topics_status.as_ref().map(|f| (f.0)()).unwrap_or_default(),
        repair: info.repair_status.as_ref().map(|f| (f.0)()),
        kafka: info.kafka_status.as_ref().map(|f| (f.0)()),
        // Added to the `Status` RPC's answer only; `GET /history` serves it over HTTP.
        history: None,
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

#[cfg(test)]
mod tests {
    use starling_gossip::NodeId;
    use starling_ring::{NodeStatus, RingNode, DEFAULT_VNODES};

    use super::*;

    /// A ring of `zones.len()` nodes (ids 1, 2, ...) that joined one after the other, each with
    /// balanced tokens; `status` of the last one.
    fn ring_of(zones: &[Option<&str>], vnodes: usize, last: NodeStatus) -> Ring {
        let mut ring = Ring::new([]);
        for (i, zone) in zones.iter().enumerate() {
            let id = NodeId(i as u128 + 1);
            let tokens = ring.allocate_tokens(id, vnodes, 7);
            let status = if i + 1 == zones.len() { last } else { NodeStatus::Normal };
            let node = RingNode { id, tokens, zone: zone.map(str::to_owned), status };
            ring = Ring::new(ring.nodes().cloned().chain([node]));
        }
        ring
    }

    fn sum(members: &[RingMemberStatus], f: fn(&RingMemberStatus) -> f64) -> f64 {
        members.iter().map(f).sum()
    }

    #[test]
    fn shares_sum_to_one_owner_and_n_replicas() {
        for (nodes, rf, vnodes) in [(3, 3, DEFAULT_VNODES), (5, 3, DEFAULT_VNODES), (7, 2, 64)] {
            let zones = vec![None; nodes];
            let ring = ring_of(&zones, vnodes, NodeStatus::Normal);
            let (members, arcs) = ring_picture(&ring, &ring.placement(rf), ARC_BINS);
            assert_eq!(members.len(), nodes);
            let owned = sum(&members, |m| m.owned_fraction);
            let replicated = sum(&members, |m| m.replicated_fraction);
            assert!((owned - 1.0).abs() < 1e-3, "{nodes} nodes: owned shares sum to {owned}");
            assert!(
                (replicated - rf as f64).abs() < 1e-3,
                "{nodes} nodes, N={rf}: replicated shares sum to {replicated}"
            );
            let exact = ring.ownership(rf);
            for (m, (id, share)) in members.iter().zip(&exact) {
                assert_eq!(m.node_id, id.to_string());
                assert!((m.replicated_fraction - share).abs() < 1e-4, "{m:?} vs {share}");
                assert!(m.owned_fraction <= m.replicated_fraction);
                assert_eq!(m.tokens, vnodes);
                assert_eq!(m.status, "normal");
            }
            assert_eq!(arcs.len(), rf, "one list of runs per replica rank");
            for runs in &arcs {
                assert_eq!(runs.iter().map(|r| r.0).sum::<u32>(), ARC_BINS);
                assert!(runs.iter().all(|r| (r.1 as usize) < nodes));
                assert!(runs.windows(2).all(|w| w[0].1 != w[1].1), "runs merge: {runs:?}");
            }
        }
    }

    /// The picture agrees with the exact shares to within the slices' resolution, and every node
    /// appears in it.
    #[test]
    fn arcs_draw_each_node_in_proportion_to_its_share() {
        let ring = ring_of(&[None, None, None, None], DEFAULT_VNODES, NodeStatus::Normal);
        let (members, arcs) = ring_picture(&ring, &ring.placement(2), ARC_BINS);
        for (rank, runs) in arcs.iter().enumerate() {
            for (i, m) in members.iter().enumerate() {
                let slices: u32 = runs.iter().filter(|r| r.1 as usize == i).map(|r| r.0).sum();
                assert!(slices > 0, "node {i} missing at rank {rank}");
                if rank == 0 {
                    let drawn = f64::from(slices) / f64::from(ARC_BINS);
                    // Each of its ranges may gain or lose up to a slice at either end.
                    let slack = 2.0 * (m.tokens as f64) / f64::from(ARC_BINS);
                    assert!(
                        (drawn - m.owned_fraction).abs() <= slack,
                        "node {i}: drawn {drawn}, owns {}",
                        m.owned_fraction
                    );
                }
            }
        }
        // With few tokens the slices show the ranges exactly where they are.
        let two = Ring::new([
            RingNode {
                id: NodeId(1),
                tokens: vec![u64::MAX / 4],
                zone: None,
                status: NodeStatus::Normal,
            },
            RingNode {
                id: NodeId(2),
                tokens: vec![u64::MAX / 4 * 3],
                zone: None,
                status: NodeStatus::Normal,
            },
        ]);
        let (members, arcs) = ring_picture(&two, &two.placement(1), 8);
        assert_eq!(arcs, vec![vec![(2, 0), (4, 1), (2, 0)]]);
        assert_eq!(members[0].owned_fraction, 0.5);
        assert_eq!(members[1].owned_fraction, 0.5);
    }

    #[test]
    fn a_joining_node_owns_nothing_yet_and_few_nodes_replicate_everything() {
        let ring = ring_of(&[Some("a"), Some("b"), Some("a")], DEFAULT_VNODES, NodeStatus::Joining);
        let (members, arcs) = ring_picture(&ring, &ring.placement(3), ARC_BINS);
        assert_eq!(members[2].status, "joining");
        assert_eq!(members[2].owned_fraction, 0.0);
        assert_eq!(members[2].replicated_fraction, 0.0);
        // Two nodes serve reads: each holds a copy of everything, in two ranks.
        assert_eq!(members[0].replicated_fraction, 1.0);
        assert_eq!(members[1].replicated_fraction, 1.0);
        assert_eq!(arcs.len(), 2);

        // One node with one token: the whole ring, one run.
        let one = Ring::new([RingNode {
            id: NodeId(9),
            tokens: vec![42],
            zone: None,
            status: NodeStatus::Normal,
        }]);
        let (members, arcs) = ring_picture(&one, &one.placement(3), ARC_BINS);
        assert_eq!(members[0].owned_fraction, 1.0);
        assert_eq!(arcs, vec![vec![(ARC_BINS, 0)]]);

        let (members, arcs) = ring_picture(&Ring::new([]), &Ring::new([]).placement(3), ARC_BINS);
        assert!(members.is_empty() && arcs.is_empty());
    }
}
