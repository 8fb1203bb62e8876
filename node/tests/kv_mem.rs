//! The KV layer in one process: `Kv<MemTransport, MemStorage>` nodes over one `MemNetwork`, with
//! the ring built by hand and "gossip" played by the test (views republished with members marked
//! down or moved to a new address). Covers consistency levels, hinted handoff (down, refusing and
//! hanging replicas), read repair, deletes that must not come back, concurrent writers, and
//! request validation.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use starling_node::kv::view::{format_tokens, MemberRingState, RingView};
use starling_node::kv::{Kv, KvConfig, KvError, Written};
use starling_node::storage::mem::MemStorage;
use starling_node::storage::{data_key, hint_size, Storage};
use starling_node::transport::mem::{MemNetwork, MemTransport};
use starling_node::transport::{PeerInfo, Service, Transport, TransportConfig};
use starling_ring::{token_of, NodeId, NodeStatus, Range, Ring, RingNode};
use starling_wire::{
    Call, ClientRequest, Clock, Consistency, ErrorCode, Get, Key, Page, PeerRequest, ReadAnswer,
    Record, ReplicaRead, ReplicaReadMany, ReplicaResponse, ReplicaScan, ReplicaWrite, Request,
    Response, Version, MAX_KEY_BYTES, MAX_VALUE_BYTES,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;

type MemKv = Kv<MemTransport, MemStorage>;

const SERVE: u8 = 0;
/// Answer every request with an error (a replica that cannot write).
const REFUSE: u8 = 1;
/// Hold every request until the mode changes (a stopped process: requests queue up and are
/// carried out late).
const HANG: u8 = 2;

/// Routes requests to the node's `Kv` (set once the transport exists, as `node.rs` does).
struct KvService {
    kv: Arc<OnceLock<MemKv>>,
    mode: Arc<AtomicU8>,
}

impl Service for KvService {
    async fn call(&self, _peer: PeerInfo, req: Request) -> Response {
        loop {
            match self.mode.load(Ordering::Acquire) {
                REFUSE => return Response::error(ErrorCode::Unavailable, "refusing (test)"),
                HANG => tokio::time::sleep(Duration::from_millis(20)).await,
                _ => break,
            }
        }
        let Some(kv) = self.kv.get() else {
            return Response::error(ErrorCode::Unavailable, "starting");
        };
        match req {
            Request::Client(ClientRequest::Kv(r)) => kv.handle_client(r).await,
            Request::Peer(PeerRequest::Replica(r)) => kv.handle_replica(r).await,
            Request::Peer(PeerRequest::Clock) => Clock::respond(starling_node::kv::wall_millis()),
            _ => Response::error(ErrorCode::BadRequest, "not a KV request"),
        }
    }
}

struct TestNode {
    id: NodeId,
    storage: Arc<MemStorage>,
    kv: MemKv,
    transport: Arc<MemTransport>,
    mode: Arc<AtomicU8>,
    view: watch::Sender<Arc<RingView>>,
    replay: Option<JoinHandle<()>>,
    alive: bool,
}

impl TestNode {
    fn stop_replay(&mut self) {
        if let Some(h) = self.replay.take() {
            h.abort();
        }
    }

    fn start_replay(&mut self) {
        if self.replay.is_none() {
            self.replay = Some(tokio::spawn(self.kv.clone().replay_hints()));
        }
    }

    fn hints_pending(&self) -> u64 {
        self.kv.status().hints_pending
    }
}

struct Cluster {
    net: MemNetwork,
    cfg: KvConfig,
    members: Vec<MemberRingState>,
    nodes: Vec<TestNode>,
    /// Per observer: the members it sees down.
    down: Vec<HashSet<NodeId>>,
}

fn node_id(i: usize) -> NodeId {
    NodeId((i as u128 + 1) * 0x1111_1111_1111_1111_1111_1111_1111_1111)
}

fn test_cfg() -> KvConfig {
    KvConfig {
        replication: 3,
        write_timeout: Duration::from_millis(1500),
        read_timeout: Duration::from_millis(1500),
        ..KvConfig::default()
    }
}

impl Cluster {
    /// `ring` nodes with tokens, then `extra` nodes that coordinate but own nothing.
    async fn new(ring: usize, extra: usize) -> Cluster {
        Cluster::with_config(ring, extra, test_cfg()).await
    }

    async fn with_config(ring: usize, extra: usize, cfg: KvConfig) -> Cluster {
        let net = MemNetwork::new();
        let mut cluster =
            Cluster { net, cfg, members: Vec::new(), nodes: Vec::new(), down: Vec::new() };
        let mut placed: Vec<RingNode> = Vec::new();
        for i in 0..ring + extra {
            let id = node_id(i);
            let tokens = if i < ring {
                let tokens = Ring::new(placed.clone()).allocate_tokens(id, 16, 7 + i as u64);
                placed.push(RingNode {
                    id,
                    tokens: tokens.clone(),
                    zone: None,
                    status: NodeStatus::Normal,
                });
                Some(format_tokens(&tokens))
            } else {
                None
            };
            let node = cluster.spawn_node(id, Arc::new(MemStorage::new()));
            cluster.members.push(MemberRingState {
                id,
                addr: node.transport.local_addr(),
                down: false,
                left: false,
                tokens,
                status: Some("normal".into()),
                zone: None,
                removing: None,
                removed: None,
                ring_digest: None,
                kv_ready: false,
            });
            cluster.nodes.push(node);
            cluster.down.push(HashSet::new());
        }
        cluster.publish();
        for n in &cluster.nodes {
            assert_eq!(n.kv.view().ring.nodes().count(), ring);
        }
        for i in 0..cluster.nodes.len() {
            cluster.wait_clock_measured(i).await;
        }
        cluster
    }

    /// Waits until node `i` has measured its peers' clocks (it coordinates no writes before).
    async fn wait_clock_measured(&self, i: usize) {
        let kv = &self.nodes[i].kv;
        eventually(PATIENCE, "clocks measured", || async {
            kv.clock_health().peers >= kv.clock_peers_needed(&kv.view())
        })
        .await;
    }

    fn spawn_node(&self, id: NodeId, storage: Arc<MemStorage>) -> TestNode {
        let cell: Arc<OnceLock<MemKv>> = Arc::default();
        let mode = Arc::new(AtomicU8::new(SERVE));
        let tcfg = TransportConfig {
            request_timeout: Duration::from_secs(2),
            ..TransportConfig::default()
        };
        let transport =
            Arc::new(self.net.bind(KvService { kv: cell.clone(), mode: mode.clone() }, tcfg));
        let (view, rx) = watch::channel(Arc::new(RingView::empty(id, self.cfg.replication)));
        let kv = Kv::new(id, self.cfg.clone(), storage.clone(), transport.clone(), rx)
            .expect("kv starts");
        assert!(cell.set(kv.clone()).is_ok());
        let replay = Some(tokio::spawn(kv.clone().replay_hints()));
        tokio::spawn(kv.clone().monitor_clocks());
        TestNode { id, storage, kv, transport, mode, view, replay, alive: true }
    }

    /// Plays gossip: every live node gets a view built from the members as it sees them.
    fn publish(&self) {
        for (i, n) in self.nodes.iter().enumerate() {
            if !n.alive {
                continue;
            }
            let members: Vec<MemberRingState> = self
                .members
                .iter()
                .map(|m| MemberRingState { down: self.down[i].contains(&m.id), ..m.clone() })
                .collect();
            let prev = n.view.borrow().clone();
            let next = RingView::build(
                n.id,
                self.cfg.replication,
                &members,
                Some(&prev),
                std::time::Instant::now(),
            );
            n.view.send_replace(Arc::new(next));
        }
    }

    /// Every other node sees `i` down.
    fn mark_down(&mut self, i: usize) {
        let id = self.nodes[i].id;
        for (o, set) in self.down.iter_mut().enumerate() {
            if o != i {
                set.insert(id);
            }
        }
        self.publish();
    }

    fn mark_up(&mut self, i: usize) {
        let id = self.nodes[i].id;
        for set in &mut self.down {
            set.remove(&id);
        }
        self.publish();
    }

    /// A crash: the node stops answering and stops replaying (gossip has not noticed yet).
    async fn kill(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        n.stop_replay();
        n.transport.close().await;
        n.alive = false;
    }

    /// The same node (id and store) back at a new address; gossip sees it up.
    async fn restart(&mut self, i: usize) {
        if self.nodes[i].alive {
            self.kill(i).await;
        }
        let (id, storage) = (self.nodes[i].id, self.nodes[i].storage.clone());
        let node = self.spawn_node(id, storage);
        self.members[i].addr = node.transport.local_addr();
        self.nodes[i] = node;
        self.mark_up(i);
        self.wait_clock_measured(i).await;
    }

    fn kv(&self, i: usize) -> &MemKv {
        &self.nodes[i].kv
    }

    /// The replicas of `key` in preference order, as node indexes.
    fn replicas(&self, key: &[u8]) -> Vec<usize> {
        let view = self.nodes[0].kv.view();
        view.placement
            .replicas(token_of(key))
            .iter()
            .map(|id| self.nodes.iter().position(|n| n.id == *id).expect("known node"))
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.stop_replay();
        }
    }
}

/// Polls `f` until it holds; panics with `what` after `limit`.
async fn eventually<F, Fut>(limit: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = tokio::time::Instant::now();
    loop {
        if f().await {
            return;
        }
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

const PATIENCE: Duration = Duration::from_secs(30);

fn record(key: &[u8], w: &Written, value: Option<&[u8]>) -> Record {
    Record { key: key.to_vec(), version: w.version, value: value.map(<[u8]>::to_vec) }
}

async fn put(kv: &MemKv, key: &[u8], value: &[u8], level: Consistency) -> Record {
    let w = kv.put(key.to_vec(), Some(value.to_vec()), level).await.unwrap_or_else(|e| {
        panic!("{level} put of {:?} failed: {e}", String::from_utf8_lossy(key))
    });
    assert!(w.acked >= w.required, "{w:?}");
    record(key, &w, Some(value))
}

fn stored(n: &TestNode, key: &[u8]) -> Option<Record> {
    n.storage.get(key).expect("storage get")
}

async fn replica_read(from: &TestNode, to: &TestNode, key: &[u8]) -> Option<Record> {
    let addr = to.transport.local_addr();
    match from.transport.call(addr, ReplicaRead(key.to_vec())).await {
        Ok(ReadAnswer::Found(r)) => Some(r),
        Ok(ReadAnswer::Missing) => None,
        other => panic!("ReplicaRead from {addr}: {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_writes_are_read_back_from_every_coordinator() {
    let c = Cluster::new(3, 0).await;
    let mut acked = Vec::new();
    for i in 0..60usize {
        let key = format!("key-{i}");
        let value = format!("value-{i}");
        let kv = c.kv(i % 3);
        let w = kv
            .put(key.clone().into_bytes(), Some(value.clone().into_bytes()), Consistency::Quorum)
            .await
            .expect("quorum put");
        assert_eq!(w.required, 2);
        assert!(w.acked >= 2);
        assert_eq!(w.version.node, c.nodes[i % 3].id, "the coordinator stamps the version");
        acked.push(record(key.as_bytes(), &w, Some(value.as_bytes())));
    }
    for r in &acked {
        for (j, n) in c.nodes.iter().enumerate() {
            let got = n.kv.get(r.key.clone(), Consistency::Quorum).await.expect("quorum get");
            assert_eq!(got.record.as_ref(), Some(r), "coordinator {j}");
            assert_eq!(got.replicas, 2);
        }
    }
    // The third copy of every write lands in the background.
    eventually(PATIENCE, "every replica holds every write", || async {
        acked.iter().all(|r| c.nodes.iter().all(|n| stored(n, &r.key).as_ref() == Some(r)))
    })
    .await;
    for n in &c.nodes {
        let got = n.kv.get(b"key-7".to_vec(), Consistency::One).await.expect("one");
        assert_eq!(got.record.as_ref(), Some(&acked[7]));
        let got = n.kv.get(b"key-8".to_vec(), Consistency::All).await.expect("all");
        assert_eq!((got.record.as_ref(), got.replicas), (Some(&acked[8]), 3));
        let missing = n.kv.get(b"never-written".to_vec(), Consistency::Quorum).await.expect("get");
        assert_eq!(missing.record, None);
    }
    // An overwrite is seen everywhere, and versions grow.
    let again = put(c.kv(2), b"key-0", b"second", Consistency::All).await;
    assert!(again.version > acked[0].version);
    for n in &c.nodes {
        assert_eq!(stored(n, b"key-0"), Some(again.clone()), "`all` waits for every replica");
    }
    for n in &c.nodes {
        let s = n.kv.status();
        assert_eq!(s.hints_pending, 0);
        assert_eq!(s.write_failures, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_was_down_gets_every_acknowledged_write_through_hints() {
    let mut c = Cluster::new(3, 0).await;
    let mut acked: Vec<Record> = Vec::new();
    // Crashed, and nobody has noticed yet: its writes fail and become hints.
    c.kill(2).await;
    for i in 0..20 {
        let key = format!("unnoticed-{i}");
        acked.push(put(c.kv(i % 2), key.as_bytes(), b"v1", Consistency::Quorum).await);
    }
    // Gossip marks it down: hints at once, and levels it cannot meet fail without writing.
    c.mark_down(2);
    for i in 0..20 {
        let key = format!("down-{i}");
        acked.push(put(c.kv(i % 2), key.as_bytes(), b"v2", Consistency::Quorum).await);
    }
    let err = c.kv(0).put(b"needs-all".to_vec(), Some(b"x".to_vec()), Consistency::All).await;
    match err {
        Err(KvError::Unavailable(m)) => assert!(m.contains("only 2 are up"), "{m}"),
        other => panic!("`all` with a replica down must be unavailable, got {other:?}"),
    }
    assert_eq!(stored(&c.nodes[0], b"needs-all"), None, "an unavailable write writes nothing");
    assert_eq!(stored(&c.nodes[1], b"needs-all"), None, "an unavailable write writes nothing");
    // Reads keep working at quorum.
    for r in &acked {
        let got = c.kv(1).get(r.key.clone(), Consistency::Quorum).await.expect("quorum get");
        assert_eq!(got.record.as_ref(), Some(r));
    }
    eventually(PATIENCE, "one hint per write for the down replica", || async {
        c.nodes[0].kv.status().hints_stored + c.nodes[1].kv.status().hints_stored == 40
    })
    .await;
    assert_eq!(c.nodes[0].hints_pending() + c.nodes[1].hints_pending(), 40);
    for n in &c.nodes[..2] {
        let targets = n.storage.hint_targets().expect("targets");
        assert!(targets.iter().all(|(t, _)| *t == c.nodes[2].id), "{targets:?}");
    }

    c.restart(2).await;
    eventually(PATIENCE, "hints delivered", || async {
        c.nodes[0].hints_pending() == 0 && c.nodes[1].hints_pending() == 0
    })
    .await;
    let replayed: u64 = c.nodes.iter().map(|n| n.kv.status().hints_replayed).sum();
    assert_eq!(replayed, 40);
    for n in &c.nodes[..2] {
        assert!(n.storage.hint_targets().expect("targets").is_empty(), "delivered hints deleted");
    }
    for r in &acked {
        assert_eq!(stored(&c.nodes[2], &r.key).as_ref(), Some(r), "restarted replica's copy");
        assert_eq!(replica_read(&c.nodes[0], &c.nodes[2], &r.key).await.as_ref(), Some(r));
    }
    // It serves `all` again.
    put(c.kv(2), b"needs-all", b"x", Consistency::All).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusing_and_hanging_replicas_get_hints_and_late_writes_converge() {
    let c = Cluster::new(3, 0).await;
    let mut acked: Vec<Record> = Vec::new();

    // A replica that answers with errors.
    c.nodes[2].mode.store(REFUSE, Ordering::Release);
    for i in 0..10 {
        acked.push(
            put(c.kv(i % 2), format!("refused-{i}").as_bytes(), b"r", Consistency::Quorum).await,
        );
    }
    eventually(PATIENCE, "hints for the refusing replica", || async {
        c.nodes[0].kv.status().hints_stored + c.nodes[1].kv.status().hints_stored >= 10
    })
    .await;

    // A replica that stops answering (SIGSTOP): quorum writes succeed, `all` times out.
    c.nodes[2].mode.store(HANG, Ordering::Release);
    for i in 0..10 {
        acked.push(
            put(c.kv(i % 2), format!("hung-{i}").as_bytes(), b"h", Consistency::Quorum).await,
        );
    }
    let t = tokio::time::Instant::now();
    match c.kv(0).put(b"all-timeout".to_vec(), Some(b"t".to_vec()), Consistency::All).await {
        Err(KvError::Timeout(m)) => assert!(m.contains("2 of 3"), "{m}"),
        other => panic!("`all` with a hung replica must time out, got {other:?}"),
    }
    assert!(t.elapsed() >= c.cfg.write_timeout, "a timeout comes after the write timeout");
    // The timed-out write was applied by the two live replicas and hinted for the third.
    assert!(stored(&c.nodes[0], b"all-timeout").is_some());
    eventually(PATIENCE, "timed-out writes become hints", || async {
        c.nodes[0].kv.status().hints_stored + c.nodes[1].kv.status().hints_stored >= 21
    })
    .await;

    // Resumed: the queued requests are carried out late, the hints are replayed on top; every
    // acknowledged write ends up on the replica with its own version.
    c.nodes[2].mode.store(SERVE, Ordering::Release);
    eventually(PATIENCE, "hints delivered", || async {
        c.nodes.iter().all(|n| n.hints_pending() == 0)
    })
    .await;
    for r in &acked {
        assert_eq!(stored(&c.nodes[2], &r.key).as_ref(), Some(r));
    }
    let timed_out = stored(&c.nodes[0], b"all-timeout").expect("on the coordinator");
    assert_eq!(stored(&c.nodes[2], b"all-timeout"), Some(timed_out));
}

/// A key whose preference list puts `second` right after `coordinator` among the others, so a
/// quorum read on `coordinator` asks exactly those two.
fn key_read_by(c: &Cluster, coordinator: usize, second: usize, tag: &str) -> Vec<u8> {
    (0..10_000)
        .map(|i| format!("{tag}-{i}").into_bytes())
        .find(|k| {
            let others: Vec<usize> =
                c.replicas(k).into_iter().filter(|r| *r != coordinator).collect();
            others.first() == Some(&second)
        })
        .expect("some key has that preference list")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_reads_return_the_newest_version_and_repair_stale_replicas() {
    let c = Cluster::new(3, 0).await;
    let (a, b, third) = (0, 1, 2);
    let v = |ts: u64, node: u128| Version { ts: ts << 16, node: NodeId(node) };
    let rec = |key: &[u8], version: Version, value: Option<&[u8]>| Record {
        key: key.to_vec(),
        version,
        value: value.map(<[u8]>::to_vec),
    };
    let now_ms = (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH))
        .expect("clock")
        .as_millis() as u64;

    // The coordinator holds the older copy: it repairs itself.
    let k1 = key_read_by(&c, a, b, "repair-local");
    let old = rec(&k1, v(now_ms - 1000, 9), Some(b"old"));
    let new = rec(&k1, v(now_ms - 500, 1), Some(b"new"));
    c.nodes[a].storage.apply(std::slice::from_ref(&old)).expect("apply");
    c.nodes[b].storage.apply(std::slice::from_ref(&new)).expect("apply");
    let got = c.kv(a).get(k1.clone(), Consistency::Quorum).await.expect("get");
    assert_eq!(got.record, Some(new.clone()));
    assert_eq!(
        stored(&c.nodes[a], &k1),
        Some(new.clone()),
        "coordinator repaired before answering"
    );
    assert_eq!(stored(&c.nodes[b], &k1), Some(new.clone()));
    assert_eq!(stored(&c.nodes[third], &k1), None, "a quorum read asks two replicas");

    // The other replica holds the older copy: repaired over the network before the answer.
    let k2 = key_read_by(&c, a, b, "repair-remote");
    let old = rec(&k2, v(now_ms - 1000, 1), Some(b"old"));
    let new = rec(&k2, v(now_ms - 1000, 2), Some(b"new, tie broken by node id"));
    c.nodes[a].storage.apply(std::slice::from_ref(&new)).expect("apply");
    c.nodes[b].storage.apply(std::slice::from_ref(&old)).expect("apply");
    let repairs = c.kv(a).status().read_repairs;
    let got = c.kv(a).get(k2.clone(), Consistency::Quorum).await.expect("get");
    assert_eq!(got.record, Some(new.clone()));
    assert_eq!(stored(&c.nodes[b], &k2), Some(new.clone()));
    assert_eq!(c.kv(a).status().read_repairs, repairs + 1);

    // A replica that has nothing gets the record; a newer tombstone wins over a value.
    let k3 = key_read_by(&c, b, a, "repair-missing");
    let tomb = rec(&k3, v(now_ms - 100, 3), None);
    c.nodes[b].storage.apply(std::slice::from_ref(&tomb)).expect("apply");
    c.nodes[third].storage.apply(&[rec(&k3, v(now_ms - 200, 3), Some(b"deleted"))]).expect("apply");
    let got = c.kv(b).get(k3.clone(), Consistency::All).await.expect("get");
    assert_eq!(got.record, Some(tomb.clone()));
    for n in &c.nodes {
        assert_eq!(stored(n, &k3), Some(tomb.clone()), "`all` read repairs every replica");
    }

    // The next reads find nothing to repair.
    let repairs = c.kv(a).status().read_repairs;
    c.kv(a).get(k1.clone(), Consistency::Quorum).await.expect("get");
    c.kv(a).get(k2.clone(), Consistency::Quorum).await.expect("get");
    assert_eq!(c.kv(a).status().read_repairs, repairs);
}

/// Sloppy quorum: with two of a key's three replicas down, a quorum write is handed to the next
/// healthy ring nodes, which keep it as hints (not as data) and deliver it when the replicas are
/// back. With `strict` quorums the same write is refused.
/// A 5-node cluster with `cfg` where `key`'s second and third replicas are dead and seen down;
/// returns it, the key's replicas and its first replica (a live coordinator).
async fn two_replicas_down(cfg: KvConfig, key: &[u8]) -> (Cluster, Vec<usize>, usize) {
    let mut c = Cluster::with_config(5, 0, cfg).await;
    let r = c.replicas(key);
    for &i in &r[1..] {
        c.kill(i).await;
        c.mark_down(i);
    }
    let coordinator = r[0];
    (c, r, coordinator)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sloppy_quorum_hands_writes_for_down_replicas_to_fallback_nodes() {
    let key = b"sloppy-key".to_vec();
    let (mut c, r, coordinator) = two_replicas_down(test_cfg(), &key).await;
    let others: Vec<usize> = (0..5).filter(|i| !r.contains(i)).collect();

    let w = put(c.kv(coordinator), &key, b"while two replicas are down", Consistency::Quorum).await;
    eventually(Duration::from_secs(5), "both fallbacks acknowledged", || async {
        c.kv(coordinator).status().fallback_writes == 2
    })
    .await;
    for &o in &others {
        assert_eq!(stored(&c.nodes[o], &key), None, "a fallback keeps a hint, not the data");
        assert_eq!(c.nodes[o].hints_pending(), 1, "node {o} keeps the write for a replica");
    }
    assert_eq!(c.nodes[coordinator].hints_pending(), 0, "the stand-ins took the hints");
    let all = c.kv(coordinator).put(key.clone(), Some(b"x".to_vec()), Consistency::All).await;
    assert!(matches!(all, Err(KvError::Unavailable(_))), "`all` needs the replicas: {all:?}");

    // A strict node refuses the same write.
    let strict = KvConfig { sloppy_quorum: false, ..c.cfg.clone() };
    let (strict_cluster, _, sc) = two_replicas_down(strict, &key).await;
    let refused =
        strict_cluster.kv(sc).put(key.clone(), Some(b"x".to_vec()), Consistency::Quorum).await;
    assert!(matches!(refused, Err(KvError::Unavailable(_))), "strict: {refused:?}");

    // Replicas down longer than the hint window get no hints, so no stand-ins either: the write
    // is refused up front rather than half done.
    let short = KvConfig { hint_window: Duration::ZERO, ..c.cfg.clone() };
    let (expired, _, ec) = two_replicas_down(short, &key).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let refused = expired.kv(ec).put(key.clone(), Some(b"x".to_vec()), Consistency::Quorum).await;
    assert!(
        matches!(&refused, Err(KvError::Unavailable(m)) if m.contains("0 other nodes can stand in")),
        "past the hint window: {refused:?}"
    );
    assert_eq!(stored(&expired.nodes[ec], &key), None, "nothing written");

    // The replicas come back: the fallbacks deliver, and every replica holds the write.
    c.restart(r[1]).await;
    c.restart(r[2]).await;
    eventually(Duration::from_secs(10), "fallback hints delivered", || async {
        others.iter().all(|&o| c.nodes[o].hints_pending() == 0)
    })
    .await;
    for &i in &r {
        assert_eq!(stored(&c.nodes[i], &key), Some(w.clone()), "replica {i} has the write");
    }
    let got = c.kv(others[0]).get(key.clone(), Consistency::All).await.expect("get");
    assert_eq!(got.record, Some(w));
}

/// A leaving node hands the hints it keeps for a replica that is down to a node that stays, and
/// that node delivers them once the replica is back: no acknowledged write is lost with the node
/// that leaves. Before, the hints were dropped with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaving_node_hands_its_hints_to_a_node_that_stays() {
    let key = b"hinted-by-a-leaver".to_vec();
    let mut c = Cluster::new(5, 0).await;
    let r = c.replicas(&key);
    let (leaver, down) = (r[0], r[2]);
    // The replica crashes before gossip notices: the write to it fails, and the coordinator
    // keeps it as a hint (a replica already seen down would get a stand-in instead).
    c.kill(down).await;
    let w = put(c.kv(leaver), &key, b"kept as a hint", Consistency::Quorum).await;
    eventually(Duration::from_secs(5), "the coordinator keeps a hint for the replica", || async {
        c.nodes[leaver].hints_pending() == 1
    })
    .await;
    c.mark_down(down);

    let handed = c.kv(leaver).hand_over_hints().await.expect("hint handover");
    assert_eq!(handed, 1);
    assert_eq!(c.nodes[leaver].hints_pending(), 0, "the hint left with the handover");
    let keepers: Vec<usize> =
        (0..5).filter(|&i| i != leaver && c.nodes[i].hints_pending() == 1).collect();
    assert_eq!(keepers.len(), 1, "exactly one node that stays keeps it");
    assert_ne!(keepers[0], down);

    // The leaver is gone for good; the replica comes back and gets the write from the keeper.
    c.kill(leaver).await;
    c.mark_down(leaver);
    c.restart(down).await;
    eventually(Duration::from_secs(10), "the kept hint delivered", || async {
        c.nodes[keepers[0]].hints_pending() == 0
    })
    .await;
    assert_eq!(stored(&c.nodes[down], &key), Some(w), "the replica holds the write");
}

/// Quorum reads send one replica a data read and the others digest reads. A coordinator outside
/// the preference list reads the record from the first replica; when a digest shows a newer
/// version, the record is fetched from the replica that has it; when the data replica hangs, the
/// speculative retry asks another replica for the record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digest_reads_fetch_the_newest_record_from_whichever_replica_has_it() {
    let c = Cluster::new(3, 1).await;
    let coordinator = 3;
    let now_ms = (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH))
        .expect("clock")
        .as_millis() as u64;
    let rec = |key: &[u8], ms: u64, value: &[u8]| Record {
        key: key.to_vec(),
        version: Version { ts: ms << 16, node: NodeId(7) },
        value: Some(value.to_vec()),
    };

    // The data replica (first in ring order) is stale; the digest replica has the newer version.
    let k = b"digest-newer-on-second".to_vec();
    let r = c.replicas(&k);
    assert!(!r.contains(&coordinator), "the extra node owns nothing");
    let (old, new) = (rec(&k, now_ms - 900, b"old"), rec(&k, now_ms - 400, b"new"));
    c.nodes[r[0]].storage.apply(std::slice::from_ref(&old)).expect("apply");
    c.nodes[r[1]].storage.apply(std::slice::from_ref(&new)).expect("apply");
    let got = c.kv(coordinator).get(k.clone(), Consistency::Quorum).await.expect("get");
    assert_eq!(got.record, Some(new.clone()), "the newer record, fetched after its digest");
    assert_eq!(got.replicas, 2);
    assert_eq!(stored(&c.nodes[r[0]], &k), Some(new.clone()), "the data replica is repaired");
    assert_eq!(stored(&c.nodes[r[2]], &k), None, "a quorum read asks two replicas");

    // A digest replica with nothing is stale too, and is repaired.
    let k = b"digest-missing-on-second".to_vec();
    let r = c.replicas(&k);
    let only = rec(&k, now_ms - 300, b"only copy");
    c.nodes[r[0]].storage.apply(std::slice::from_ref(&only)).expect("apply");
    let got = c.kv(coordinator).get(k.clone(), Consistency::Quorum).await.expect("get");
    assert_eq!(got.record, Some(only.clone()));
    assert_eq!(stored(&c.nodes[r[1]], &k), Some(only.clone()));

    // The data replica hangs (gossip has not noticed): after the speculative-retry delay another
    // replica is asked for the record, and the read still returns the newest version.
    let k = b"digest-data-replica-hangs".to_vec();
    let r = c.replicas(&k);
    let (old, new) = (rec(&k, now_ms - 800, b"old"), rec(&k, now_ms - 200, b"new"));
    c.nodes[r[1]].storage.apply(std::slice::from_ref(&old)).expect("apply");
    c.nodes[r[2]].storage.apply(std::slice::from_ref(&new)).expect("apply");
    c.nodes[r[0]].mode.store(HANG, Ordering::Release);
    let got = c.kv(coordinator).get(k.clone(), Consistency::Quorum).await;
    c.nodes[r[0]].mode.store(SERVE, Ordering::Release);
    let got = got.expect("read with the data replica hanging");
    assert_eq!(got.record, Some(new.clone()));
    assert_eq!(stored(&c.nodes[r[1]], &k), Some(new), "the stale replica is repaired");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_is_not_resurrected_by_an_older_copy() {
    let mut c = Cluster::new(3, 0).await;
    let before = put(c.kv(0), b"doomed", b"alive", Consistency::All).await;
    let before2 = put(c.kv(0), b"doomed-2", b"alive", Consistency::All).await;
    c.kill(2).await;
    c.mark_down(2);
    let del = c.kv(0).put(b"doomed".to_vec(), None, Consistency::Quorum).await.expect("delete");
    let del2 = c.kv(1).put(b"doomed-2".to_vec(), None, Consistency::Quorum).await.expect("delete");
    let tomb = record(b"doomed", &del, None);
    let tomb2 = record(b"doomed-2", &del2, None);
    assert!(tomb.version > before.version);
    eventually(PATIENCE, "delete hinted", || async {
        c.nodes[0].hints_pending() + c.nodes[1].hints_pending() == 2
    })
    .await;

    // Back with its old copies, before any hint is replayed.
    for n in &mut c.nodes[..2] {
        n.stop_replay();
    }
    c.restart(2).await;
    assert_eq!(stored(&c.nodes[2], b"doomed"), Some(before.clone()));
    // A quorum read through the stale replica: the tombstone wins and is written back.
    let key_first_on_2 = c.kv(2).get(b"doomed".to_vec(), Consistency::Quorum).await.expect("get");
    assert_eq!(key_first_on_2.record, Some(tomb.clone()));
    assert_eq!(stored(&c.nodes[2], b"doomed"), Some(tomb.clone()));
    // The old value delivered late (a stale hint, a slow stream) changes nothing anywhere, and
    // each replica says which newer version it already held.
    for (i, n) in c.nodes.iter().enumerate() {
        let addr = n.transport.local_addr();
        let resp = c.nodes[0]
            .transport
            .request(addr, ReplicaWrite(vec![before.clone(), before2.clone()]).into_request())
            .await
            .expect("replica write");
        // Node 2 has the first tombstone (read repair), not yet the second (a hint).
        let second = (i != 2).then_some(tomb2.version);
        assert_eq!(
            resp,
            Response::Replica(ReplicaResponse::Written(vec![Some(tomb.version), second])),
            "node {i}"
        );
    }
    for n in &c.nodes[..2] {
        assert_eq!(stored(n, b"doomed"), Some(tomb.clone()));
        assert_eq!(stored(n, b"doomed-2"), Some(tomb2.clone()));
    }
    // Hints replayed: the restarted replica gets the second tombstone too.
    for n in &mut c.nodes[..2] {
        n.start_replay();
    }
    eventually(PATIENCE, "hints delivered", || async {
        c.nodes.iter().all(|n| n.hints_pending() == 0)
    })
    .await;
    // Every copy checked before any read (an `all` read would repair them).
    for n in &c.nodes {
        assert_eq!(stored(n, b"doomed"), Some(tomb.clone()));
        assert_eq!(stored(n, b"doomed-2"), Some(tomb2.clone()), "the hint carried the delete");
    }
    for n in &c.nodes {
        let got = n.kv.get(b"doomed-2".to_vec(), Consistency::All).await.expect("get");
        assert!(got.record.as_ref().is_some_and(Record::is_tombstone), "{got:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_writes_are_hinted_when_every_replica_is_down() {
    // Node 3 owns no tokens: it coordinates, but replicates nothing.
    let mut c = Cluster::new(3, 1).await;
    let d = 3;
    for i in 0..3 {
        c.down[d].insert(c.nodes[i].id);
    }
    c.publish();
    for level in [Consistency::One, Consistency::Quorum, Consistency::All] {
        match c.kv(d).put(b"k".to_vec(), Some(b"v".to_vec()), level).await {
            Err(KvError::Unavailable(m)) => assert!(m.contains("only 0 are up"), "{level}: {m}"),
            other => panic!("{level} with every replica down: {other:?}"),
        }
    }
    assert_eq!(c.kv(d).status().hints_stored, 0, "an unavailable write stores no hint");
    let w = c.kv(d).put(b"k".to_vec(), Some(b"v".to_vec()), Consistency::Any).await.expect("any");
    assert_eq!((w.acked, w.required), (1, 1));
    let acked = record(b"k", &w, Some(b"v"));
    assert_eq!(stored(&c.nodes[d], b"k"), None, "not a replica: nothing in its data");
    eventually(PATIENCE, "a hint for each replica", || async { c.nodes[d].hints_pending() == 3 })
        .await;
    match c.kv(d).get(b"k".to_vec(), Consistency::One).await {
        Err(KvError::Unavailable(_)) => {}
        other => panic!("read with every replica down: {other:?}"),
    }
    for i in 0..3 {
        assert_eq!(stored(&c.nodes[i], b"k"), None);
    }
    // They come back (for node 3): the write reaches all three.
    c.down[d].clear();
    c.publish();
    eventually(PATIENCE, "hints delivered", || async { c.nodes[d].hints_pending() == 0 }).await;
    for i in 0..3 {
        assert_eq!(stored(&c.nodes[i], b"k"), Some(acked.clone()));
    }
    let got = c.kv(d).get(b"k".to_vec(), Consistency::All).await.expect("all");
    assert_eq!(got.record, Some(acked));
}

/// A stand-in's hints whose replicas stay down past the hint window are not dropped: once a
/// replica of the key is up, they are handed to it (the write then lives on a real replica, and
/// anti-entropy carries it to the others). Before, they were dropped unread, and a write acked at
/// `any` whose only copies were those hints was gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hints_past_the_window_are_handed_to_a_replica_not_dropped() {
    let cfg = KvConfig { hint_window: Duration::from_millis(600), ..test_cfg() };
    let mut c = Cluster::with_config(3, 1, cfg).await;
    let d = 3;
    for i in 0..3 {
        c.down[d].insert(c.nodes[i].id);
    }
    c.publish();
    let w = c.kv(d).put(b"k".to_vec(), Some(b"v".to_vec()), Consistency::Any).await.expect("any");
    let acked = record(b"k", &w, Some(b"v"));
    eventually(PATIENCE, "a hint for each replica", || async { c.nodes[d].hints_pending() == 3 })
        .await;
    // Past the window with every replica down: nobody can take them, so they stay.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(c.nodes[d].hints_pending(), 3, "no replica is up: the hints stay");
    assert_eq!(c.kv(d).status().hints_dropped, 0);
    // One replica comes back: its own hint is delivered, the two others' are handed to it.
    c.down[d].remove(&c.nodes[0].id.clone());
    c.publish();
    eventually(PATIENCE, "every hint delivered or handed over", || async {
        c.nodes[d].hints_pending() == 0
    })
    .await;
    assert_eq!(stored(&c.nodes[0], b"k"), Some(acked));
    assert_eq!(c.kv(d).status().hints_dropped, 2, "two hints retired through a replica");
    for i in 1..3 {
        assert_eq!(stored(&c.nodes[i], b"k"), None, "left to anti-entropy");
    }
}

/// A hint older than the tombstone grace period is dropped, never delivered: its write may be
/// older than a tombstone already purged, and would bring the key back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hints_older_than_the_tombstone_grace_are_dropped_not_delivered() {
    let cfg = KvConfig { tombstone_grace: Duration::from_millis(800), ..test_cfg() };
    let mut c = Cluster::with_config(3, 1, cfg).await;
    let d = 3;
    for i in 0..3 {
        c.down[d].insert(c.nodes[i].id);
    }
    c.publish();
    c.kv(d).put(b"k".to_vec(), Some(b"v".to_vec()), Consistency::Any).await.expect("any");
    eventually(PATIENCE, "a hint for each replica", || async { c.nodes[d].hints_pending() == 3 })
        .await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    c.down[d].clear();
    c.publish();
    eventually(PATIENCE, "the hints gone", || async { c.nodes[d].hints_pending() == 0 }).await;
    assert_eq!(c.kv(d).status().hints_past_grace, 3);
    assert_eq!(c.kv(d).status().hints_replayed, 0);
    for i in 0..3 {
        assert_eq!(stored(&c.nodes[i], b"k"), None, "not delivered");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_to_one_key_converge_on_every_replica() {
    let c = Cluster::new(3, 0).await;
    let key = b"contended".to_vec();
    let mut winners = Vec::new();
    for round in 0..40 {
        let writes: Vec<_> = (0..3)
            .map(|i| {
                let kv = c.kv(i).clone();
                let key = key.clone();
                let value = format!("node{i}-round{round}").into_bytes();
                tokio::spawn(async move {
                    let w = kv.put(key.clone(), Some(value.clone()), Consistency::Quorum).await;
                    (w, value)
                })
            })
            .collect();
        let mut results = Vec::new();
        for w in writes {
            let (w, value) = w.await.expect("task");
            let w = w.expect("concurrent quorum put");
            results.push(record(&key, &w, Some(&value)));
        }
        let versions: HashSet<Version> = results.iter().map(|r| r.version).collect();
        assert_eq!(versions.len(), 3, "every write gets its own version");
        let newest = results.iter().max_by_key(|r| r.version).cloned().expect("3 results");
        if let Some(prev) = winners.last() {
            assert!(newest.version > *prev, "later rounds win over earlier ones");
        }
        winners.push(newest.version);
        eventually(PATIENCE, "replicas agree on the newest write", || async {
            c.nodes.iter().all(|n| stored(n, &key).as_ref() == Some(&newest))
        })
        .await;
        // Every coordinator reads the same.
        for n in &c.nodes {
            let got = n.kv.get(key.clone(), Consistency::Quorum).await.expect("get");
            assert_eq!(got.record.as_ref(), Some(&newest), "round {round}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_keys_values_and_levels_are_refused() {
    let c = Cluster::new(3, 0).await;
    let kv = c.kv(0);
    fn bad<T>(r: Result<T, KvError>) -> bool {
        matches!(r, Err(KvError::BadRequest(_)))
    }
    let long_key = vec![b'k'; MAX_KEY_BYTES + 1];
    let big_value = vec![0u8; MAX_VALUE_BYTES + 1];
    assert!(bad(kv.put(Vec::new(), Some(b"v".to_vec()), Consistency::Quorum).await));
    assert!(bad(kv.put(Vec::new(), None, Consistency::Quorum).await));
    assert!(bad(kv.put(long_key.clone(), Some(b"v".to_vec()), Consistency::One).await));
    assert!(bad(kv.put(b"k".to_vec(), Some(big_value.clone()), Consistency::Any).await));
    assert!(bad(kv.get(Vec::new(), Consistency::One).await));
    assert!(bad(kv.get(long_key.clone(), Consistency::One).await));
    match kv.get(b"k".to_vec(), Consistency::Any).await {
        Err(KvError::BadRequest(m)) => assert!(m.contains("writes only"), "{m}"),
        other => panic!("`any` read: {other:?}"),
    }
    // The limits themselves are accepted.
    let max_key = vec![b'k'; MAX_KEY_BYTES];
    let max_value = vec![7u8; MAX_VALUE_BYTES];
    let w = put(kv, &max_key, &max_value, Consistency::All).await;
    for n in &c.nodes {
        assert_eq!(stored(n, &max_key), Some(w.clone()));
    }
    // The same over the wire, and replicas check too.
    let resp = c.nodes[1]
        .transport
        .request(
            c.nodes[0].transport.local_addr(),
            Get { key: b"k".to_vec(), consistency: Consistency::Any }.into_request(),
        )
        .await
        .expect("request");
    assert!(matches!(resp, Response::Error { code: ErrorCode::BadRequest, .. }), "{resp:?}");
    let bad_record = Record {
        key: Vec::new(),
        version: Version { ts: 1, node: NodeId(1) },
        value: Some(b"v".to_vec()),
    };
    let resp = c.nodes[1]
        .transport
        .request(c.nodes[0].transport.local_addr(), ReplicaWrite(vec![bad_record]).into_request())
        .await
        .expect("request");
    assert!(matches!(resp, Response::Error { code: ErrorCode::BadRequest, .. }), "{resp:?}");
    // Nothing was written by the refused requests.
    assert_eq!(stored(&c.nodes[0], b"k"), None);
    assert_eq!(c.nodes[0].storage.approximate_keys(), 1);
    assert_eq!(kv.status().writes, 1);
    assert_eq!(kv.status().hints_stored, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_before_the_ring_exists_are_unavailable() {
    let net = MemNetwork::new();
    let transport =
        Arc::new(net.bind(
            KvService { kv: Arc::default(), mode: Arc::default() },
            TransportConfig::default(),
        ));
    let (_tx, rx) = watch::channel(Arc::new(RingView::empty(NodeId(1), 3)));
    let kv: MemKv =
        Kv::new(NodeId(1), test_cfg(), Arc::new(MemStorage::new()), transport, rx).expect("kv");
    assert!(matches!(
        kv.put(b"k".to_vec(), Some(b"v".to_vec()), Consistency::Any).await,
        Err(KvError::Unavailable(_))
    ));
    assert!(matches!(kv.get(b"k".to_vec(), Consistency::One).await, Err(KvError::Unavailable(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hints_of_large_values_are_delivered() {
    // Hint replay batches records; a batch must still fit in one request frame.
    let mut c = Cluster::new(3, 0).await;
    c.kill(2).await;
    c.mark_down(2);
    let mut acked = Vec::new();
    for i in 0..8u8 {
        let value = vec![i; MAX_VALUE_BYTES];
        acked.push(put(c.kv(0), format!("big-{i}").as_bytes(), &value, Consistency::Quorum).await);
    }
    acked.push(put(c.kv(0), b"small-after", b"s", Consistency::Quorum).await);
    eventually(PATIENCE, "hints stored", || async { c.nodes[0].hints_pending() == 9 }).await;
    c.restart(2).await;
    eventually(PATIENCE, "large hints delivered", || async { c.nodes[0].hints_pending() == 0 })
        .await;
    for r in &acked {
        assert_eq!(stored(&c.nodes[2], &r.key).as_ref(), Some(r));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_large_writes_all_succeed() {
    // Writes to one replica may travel together; together they must still fit in a frame.
    let c = Cluster::new(3, 0).await;
    let tasks: Vec<_> = (0..8u8)
        .map(|i| {
            let kv = c.kv(0).clone();
            tokio::spawn(async move {
                let key = format!("big-{i}").into_bytes();
                let value = vec![i; MAX_VALUE_BYTES];
                let w = kv.put(key.clone(), Some(value.clone()), Consistency::All).await;
                (key, value, w)
            })
        })
        .collect();
    for t in tasks {
        let (key, value, w) = t.await.expect("task");
        let w = w.unwrap_or_else(|e| panic!("a concurrent 1 MiB `all` write failed: {e}"));
        let r = record(&key, &w, Some(&value));
        for n in &c.nodes {
            assert_eq!(stored(n, &key).as_ref(), Some(&r));
        }
    }
    for n in &c.nodes {
        assert_eq!(n.kv.status().hints_stored, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_scans_page_large_values_within_the_frame_limit() {
    // What a joining node streams: every record of a range, page by page, whatever the sizes.
    let c = Cluster::new(3, 0).await;
    let mut expected = BTreeMap::new();
    for i in 0..8u8 {
        let r = put(
            c.kv(0),
            format!("big-{i}").as_bytes(),
            &vec![i; MAX_VALUE_BYTES],
            Consistency::All,
        )
        .await;
        expected.insert(data_key(&r.key), r);
    }
    for i in 0..50 {
        let r = put(c.kv(0), format!("small-{i}").as_bytes(), b"s", Consistency::All).await;
        expected.insert(data_key(&r.key), r);
    }
    let del = c.kv(0).put(b"small-3".to_vec(), None, Consistency::All).await.expect("delete");
    expected.insert(data_key(b"small-3"), record(b"small-3", &del, None));
    let to = c.nodes[1].transport.local_addr();
    let mut got = BTreeMap::new();
    let mut after = None;
    for _ in 0..1000 {
        let req =
            ReplicaScan { start: 0, end: 0, after: after.clone(), limit: 1024 }.into_request();
        match c.nodes[0].transport.request(to, req).await {
            Ok(Response::Replica(ReplicaResponse::Page(Page { records, cursor }))) => {
                for r in records {
                    assert!(got.insert(data_key(&r.key), r).is_none(), "a record came twice");
                }
                match cursor {
                    Some(cur) => after = Some(cur),
                    None => break,
                }
            }
            other => panic!("ReplicaScan: {other:?}"),
        }
    }
    assert_eq!(got.len(), expected.len());
    assert!(got == expected, "the scan returns every record, tombstones included");
    // And a partial range holds exactly its keys.
    let tokens: Vec<u64> = expected.values().map(|r| token_of(&r.key)).collect();
    let range = Range { start: tokens[10], end: tokens[40] };
    let req =
        ReplicaScan { start: range.start, end: range.end, after: None, limit: 4096 }.into_request();
    match c.nodes[0].transport.request(to, req).await {
        Ok(Response::Replica(ReplicaResponse::Page(Page { records, .. }))) => {
            assert!(records.iter().all(|r| range.contains(token_of(&r.key))));
        }
        other => panic!("ReplicaScan: {other:?}"),
    }
}

/// A record this replica cannot read (a corrupt value) fails only that key's answer: a batched
/// read of it and a healthy key answers the healthy one, the coordinator answers from the other
/// replicas and writes the newest record back over the corrupt one, and the replica counts it.
#[tokio::test(flavor = "current_thread")]
async fn a_corrupt_record_fails_only_its_own_key_and_is_repaired() {
    let c = Cluster::new(3, 0).await;
    let bad = put(c.kv(0), b"flipped", b"v1", Consistency::All).await;
    let good = put(c.kv(0), b"healthy", b"v2", Consistency::All).await;
    assert!(c.nodes[1].storage.corrupt(b"flipped"));
    assert!(c.nodes[1].storage.get(b"flipped").is_err(), "the record must be unreadable");

    let addr = c.nodes[1].transport.local_addr();
    let keys = vec![Key(b"flipped".to_vec()), Key(b"healthy".to_vec())];
    match c.nodes[0].transport.request(addr, ReplicaReadMany(keys).into_request()).await {
        Ok(Response::Replica(ReplicaResponse::Records(answers))) => {
            assert!(
                matches!(&answers[0], ReadAnswer::Unreadable(why) if !why.contains('/')),
                "{answers:?}"
            );
            assert_eq!(answers[1], ReadAnswer::Found(good.clone()));
        }
        other => panic!("batched read: {other:?}"),
    }
    assert!(c.nodes[1].kv.status().unreadable_records >= 1);

    // The corrupt replica coordinates: its own copy fails, the other replicas answer, and the
    // newest record is written back over the corrupt one.
    let read = c.kv(1).get(b"flipped".to_vec(), Consistency::Quorum).await.expect("quorum read");
    assert_eq!(read.record, Some(bad.clone()));
    // The read answers once a quorum holds the value; the repair lands right after.
    eventually(PATIENCE, "the corrupt copy repaired", || async {
        c.nodes[1].storage.get(b"flipped").ok().flatten().as_ref() == Some(&bad)
    })
    .await;
    for i in 0..3 {
        let read = c.kv(i).get(b"flipped".to_vec(), Consistency::All).await;
        let read = read.unwrap_or_else(|e| panic!("read through node {i}: {e}"));
        assert_eq!(read.record, Some(bad.clone()), "through node {i}");
    }
}

/// A hint whose replica has meanwhile stored a newer version is delivered all the same (the
/// replica answers that it held a newer one) and leaves the hint store, instead of being retried
/// forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hint_older_than_the_replicas_copy_is_delivered_and_dropped() {
    let mut c = Cluster::new(3, 0).await;
    c.kill(2).await;
    c.mark_down(2);
    put(c.kv(0), b"overtaken", b"old", Consistency::Quorum).await;
    eventually(PATIENCE, "a hint kept for node 2", || async {
        c.nodes.iter().map(TestNode::hints_pending).sum::<u64>() == 1
    })
    .await;
    for n in &mut c.nodes[..2] {
        n.stop_replay();
    }
    c.restart(2).await;
    let new = put(c.kv(0), b"overtaken", b"new", Consistency::All).await;
    for n in &mut c.nodes[..2] {
        n.start_replay();
    }
    eventually(PATIENCE, "the stale hint delivered and dropped", || async {
        c.nodes.iter().all(|n| n.hints_pending() == 0)
    })
    .await;
    assert_eq!(stored(&c.nodes[2], b"overtaken"), Some(new));
}

/// A key written again and again while a replica is down keeps one hint for that replica (the
/// newest write), counted once in the hint store's size, and the replica gets the newest value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overwrites_of_a_key_for_a_down_replica_keep_one_hint() {
    let mut c = Cluster::new(3, 0).await;
    c.kill(2).await;
    c.mark_down(2);
    let mut last = None;
    for i in 0..200 {
        last =
            Some(put(c.kv(0), b"hot", format!("value {i}").as_bytes(), Consistency::Quorum).await);
    }
    let last = last.expect("written");
    // Every hint stored (some may land after a newer one: those are not kept).
    eventually(PATIENCE, "each write handed to the hint store", || async {
        c.nodes[0].kv.status().hints_stored == 200
    })
    .await;
    let s = c.nodes[0].kv.status();
    assert_eq!(s.hints_pending, 1, "one hint for the key: {s:?}");
    assert_eq!(s.hints_bytes, hint_size(&last), "counted once: {s:?}");
    assert_eq!(c.nodes[0].storage.hint_targets().expect("targets"), vec![(c.nodes[2].id, 1)]);

    c.restart(2).await;
    eventually(PATIENCE, "the hint delivered", || async { c.nodes[0].hints_pending() == 0 }).await;
    assert_eq!(c.nodes[0].kv.status().hints_replayed, 1, "one hint replayed, not 200");
    assert!(c.nodes[0].storage.hint_targets().expect("targets").is_empty());
    assert_eq!(stored(&c.nodes[2], b"hot"), Some(last));
}

/// The hint store is bounded: past the per-replica cap, a write for a down replica keeps no
/// hint (it is counted, and left to read repair and anti-entropy), and the writes themselves are
/// still acknowledged by the replicas that are up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hints_past_the_cap_are_not_kept_and_are_counted() {
    let cfg = KvConfig { max_hint_bytes_per_target: 2_000, ..test_cfg() };
    let mut c = Cluster::with_config(3, 0, cfg).await;
    c.kill(2).await;
    c.mark_down(2);
    for i in 0..100 {
        put(c.kv(0), format!("capped-{i}").as_bytes(), &[b'x'; 100], Consistency::Quorum).await;
    }
    let s = c.nodes[0].kv.status();
    assert!(s.hints_bytes <= 2_000, "{s:?}");
    assert!(s.hints_pending >= 5 && s.hints_pending < 100, "{s:?}");
    assert_eq!(s.hints_pending + s.hints_over_cap, 100, "every hint kept or counted: {s:?}");
}

/// A node restarted after a member it knew left for good (and gossip forgot the departure):
/// it must not wait forever for that member. It trusts the ring once a ready member (its KV
/// layer coordinating, its ring whole) computed the same ring; not before, and not on the word
/// of a member whose ring differs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_whose_old_member_left_for_good_coordinates_once_a_ready_member_agrees() {
    let mut c = Cluster::new(4, 0).await;
    let gone = NodeId(0xdead_0000_0000_0000_0000_0000_0000_0001);
    let mut ids: Vec<NodeId> = c.nodes.iter().map(|n| n.id).collect();
    ids.push(gone);
    let bytes: Vec<u8> = ids.iter().flat_map(|id| id.to_be_bytes()).collect();
    c.nodes[0].storage.put_meta(starling_node::kv::META_RING_MEMBERS, &bytes).expect("meta");
    c.restart(0).await;
    let gated = c.kv(0).get(b"k".to_vec(), Consistency::One).await;
    assert!(
        matches!(&gated, Err(KvError::Unavailable(m)) if m.contains("not yet learned the ring")),
        "{gated:?}"
    );
    // A ready member whose ring differs (it still has a node this one does not) vouches for
    // nothing.
    c.members[1].kv_ready = true;
    c.members[1].ring_digest = Some("another ring".into());
    c.publish();
    assert!(c.kv(0).get(b"k".to_vec(), Consistency::One).await.is_err());
    // A member with the same ring that is not ready yet (restarted too) vouches for nothing.
    let digest = c.kv(1).view().ring.digest();
    c.members[1].kv_ready = false;
    c.members[1].ring_digest = Some(digest.clone());
    c.publish();
    assert!(c.kv(0).get(b"k".to_vec(), Consistency::One).await.is_err());
    // Ready, and the same ring: the gone member left; node 0 coordinates.
    c.members[1].kv_ready = true;
    c.publish();
    assert!(c.kv(0).view().vouched);
    // (`starlingd` waits out its persisted clock high mark at start; a bare `Kv` restarted this
    // quickly issues versions a moment ahead, which replicas refuse until their clocks pass.)
    eventually(PATIENCE, "a quorum write through node 0", || async {
        c.kv(0).put(b"w".to_vec(), Some(b"v".to_vec()), Consistency::Quorum).await.is_ok()
    })
    .await;
    let written = put(c.kv(0), b"k", b"v", Consistency::Quorum).await;
    let r = c.kv(0).get(b"k".to_vec(), Consistency::Quorum).await.expect("read");
    assert_eq!(r.record, Some(written));
}
