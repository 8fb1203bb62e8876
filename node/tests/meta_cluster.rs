//! The metadata service across real `starlingd` processes: three voters and an observer on
//! loopback with mutual TLS. kill -9 of the leader during a stream of writes (no acknowledged
//! write lost; the observer and the restarted leader see them all; a new leader commits within
//! seconds), and the ephemeral znode of a client that stopped pinging goes after its session
//! timeout while a live client's stays. The typed client sends its writes to the leader, and
//! finds the next one after a kill -9.

use std::collections::BTreeSet;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use starling_node::transport::quic::QuicTransport;
use starling_node::transport::Transport;
use starling_wire::meta::{
    MetaOpenSession, MetaPing, MetaRead, MetaSync, MetaWrite, MetaWritten, Op, OpResult, ReadKind,
};
use tokio::time::Instant;

#[path = "common/process.rs"]
mod process;

#[path = "common/kv_process.rs"]
mod kv_process;

use kv_process::{client, wait_until, Node, PATIENCE};

/// A free loopback UDP port (the node binds it a moment later).
fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

struct Ensemble {
    _dir: tempfile::TempDir,
    nodes: Vec<Node>,
    client: Arc<QuicTransport>,
}

impl Ensemble {
    /// Three voters and one observer.
    async fn start() -> Ensemble {
        Ensemble::start_with(&[]).await
    }

    /// The same, with more environment for every node.
    async fn start_with(extra: &[(&str, &str)]) -> Ensemble {
        let dir = tempfile::tempdir().expect("tempdir");
        let names = ["node1", "node2", "node3", "node4", "client"];
        let certs = process::certs(&dir.path().join("certs"), &names);
        let listens: Vec<SocketAddr> =
            (0..3).map(|_| format!("127.0.0.1:{}", free_port()).parse().unwrap()).collect();
        let voters = listens.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(",");
        let mut env = vec![("STARLING_META_VOTERS".to_string(), voters)];
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let mut nodes = Vec::new();
        for (i, name) in names[..4].iter().enumerate() {
            let listen = listens.get(i).map_or("127.0.0.1:0".to_string(), |a| a.to_string());
            let seeds: Vec<SocketAddr> = if i == 0 { vec![] } else { vec![listens[0]] };
            let bin = Path::new(env!("CARGO_BIN_EXE_starlingd"));
            let (data, c) = (dir.path().join(name), certs.join(name));
            let env = env.clone();
            nodes.push(Node(tokio::task::block_in_place(|| {
                process::Node::start_with_env(bin, &data, &c, &listen, &seeds, &env)
            })));
        }
        let client = client(&certs.join("client")).await;
        let e = Ensemble { _dir: dir, nodes, client };
        e.wait_synced(&[0, 1, 2, 3]).await;
        e
    }

    fn logs(&self) -> String {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| format!("--- node{} ---\n{}", i + 1, process::tail(&n.data, 30)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Every node in `which` synchronized with one same leader.
    async fn wait_synced(&self, which: &[usize]) {
        wait_until(
            PATIENCE,
            "the metadata service to elect a leader",
            || self.logs(),
            || async {
                let mut leaders = BTreeSet::new();
                for &i in which {
                    match self.nodes[i].status().await.and_then(|s| s.meta) {
                        Some(m) if m.synced && m.leader.is_some() => {
                            leaders.insert(m.leader);
                        }
                        _ => return false,
                    }
                }
                leaders.len() == 1
            },
        )
        .await;
    }

    async fn leader(&self) -> usize {
        for (i, n) in self.nodes.iter().enumerate() {
            if let Some(m) = n.status().await.and_then(|s| s.meta) {
                if m.role == "leading" && m.synced {
                    return i;
                }
            }
        }
        panic!("no leader\n{}", self.logs());
    }

    fn addr(&self, i: usize) -> SocketAddr {
        self.nodes[i].addrs.listen
    }

    async fn create(
        &self,
        i: usize,
        session: u64,
        path: &str,
        ephemeral: bool,
    ) -> Option<MetaWritten> {
        let op = Op::Create {
            path: path.into(),
            data: path.as_bytes().to_vec(),
            ephemeral,
            sequential: false,
        };
        match self
            .client
            .call(self.addr(i), MetaWrite { session, ops: vec![op], multi: false })
            .await
        {
            Ok(Ok(w)) if matches!(w.results.first(), Some(OpResult::Created { .. })) => Some(w),
            _ => None,
        }
    }

    /// Node `i`'s children of `path`, after a sync.
    async fn children(&self, i: usize, path: &str) -> BTreeSet<String> {
        let synced = self.client.call(self.addr(i), MetaSync).await.expect("sync").expect("sync");
        let read = MetaRead { path: path.into(), kind: ReadKind::Children, after: synced.zxid };
        let a = self.client.call(self.addr(i), read).await.expect("read").expect("read");
        a.children.into_iter().collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_of_the_leader_during_writes_loses_no_acknowledged_write() {
    // A snapshot every 200 transactions: several are encoded (off the ZAB loop) and written
    // during the writes, and the killed leader restarts from its latest.
    let mut e = Ensemble::start_with(&[("STARLING_META_SNAPSHOT_EVERY", "200")]).await;
    assert!(e.create(3, 0, "/t", false).await.is_some(), "create /t\n{}", e.logs());
    let leader = e.leader().await;
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let attempted = Arc::new(Mutex::new(0u64));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Four writers, each through one node (the observer included), until stopped.
    let mut writers = Vec::new();
    for w in 0..4usize {
        let (client, addr) = (e.client.clone(), e.addr(w));
        let (acked, attempted, stop) = (acked.clone(), attempted.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let name = format!("w{w}-{i:06}");
                let op = Op::Create {
                    path: format!("/t/{name}"),
                    data: vec![7; 100],
                    ephemeral: false,
                    sequential: false,
                };
                *attempted.lock().unwrap() += 1;
                let r =
                    client.call(addr, MetaWrite { session: 0, ops: vec![op], multi: false }).await;
                match r {
                    Ok(Ok(w)) if matches!(w.results.first(), Some(OpResult::Created { .. })) => {
                        acked.lock().unwrap().insert(name);
                    }
                    // A dead node or no leader: do not spin.
                    _ => tokio::time::sleep(Duration::from_millis(20)).await,
                }
                i += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before_kill = acked.lock().unwrap().len();
    assert!(
        before_kill > 20,
        "only {before_kill} writes acknowledged before the kill\n{}",
        e.logs()
    );
    let killed_at = Instant::now();
    e.nodes[leader].kill9();
    // A surviving node's writes commit again once a new leader is established.
    let survivor = (0..3).find(|i| *i != leader).unwrap();
    let mut k = 0;
    let recovered = loop {
        if e.create(survivor, 0, &format!("/t/probe-{k}"), false).await.is_some() {
            break killed_at.elapsed();
        }
        k += 1;
        assert!(
            killed_at.elapsed() < PATIENCE,
            "no write committed after the leader died\n{}",
            e.logs()
        );
    };
    eprintln!("a new leader committed {recovered:?} after kill -9 of the old one");
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.await.expect("writer");
    }
    let acked: BTreeSet<String> = acked.lock().unwrap().clone();
    eprintln!("{} writes attempted, {} acknowledged", attempted.lock().unwrap(), acked.len());
    // Every acknowledged write is on every live node, the observer included.
    for i in (0..4).filter(|i| *i != leader) {
        let have = e.children(i, "/t").await;
        let lost: Vec<&String> = acked.difference(&have).collect();
        assert!(
            lost.is_empty(),
            "node{} lost {} acknowledged writes: {:?}",
            i + 1,
            lost.len(),
            &lost[..lost.len().min(10)]
        );
    }
    // The old leader restarts from its disk, rejoins as a follower and has them all too.
    let seeds = [e.addr(survivor)];
    tokio::task::block_in_place(|| e.nodes[leader].0.restart(&seeds));
    e.wait_synced(&[0, 1, 2, 3]).await;
    let have = e.children(leader, "/t").await;
    let lost: Vec<&String> = acked.difference(&have).collect();
    assert!(
        lost.is_empty(),
        "the restarted leader lacks {} acknowledged writes: {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    // And every node holds the same znodes.
    let reference = e.children(0, "/t").await;
    for i in 1..4 {
        assert_eq!(e.children(i, "/t").await, reference, "node{} differs from node1", i + 1);
    }
    // Snapshots were taken along the way, the restarted leader's among them.
    let m = e.nodes[leader].status().await.and_then(|s| s.meta).expect("meta status");
    assert!(m.snapshot_bytes > 0, "the restarted leader has no snapshot: {m:?}\n{}", e.logs());
    assert!(
        process::tail(&e.nodes[leader].data, usize::MAX).contains("metadata snapshot written"),
        "no snapshot written by the old leader\n{}",
        e.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ephemeral_znode_of_a_silent_client_goes_after_its_session_timeout() {
    let e = Ensemble::start().await;
    let open = |timeout_ms| {
        let (c, a) = (e.client.clone(), e.addr(3));
        async move { c.call(a, MetaOpenSession { timeout_ms }).await.expect("open").expect("open") }
    };
    let silent = open(2_000).await;
    let live = open(2_000).await;
    assert_eq!(silent.timeout_ms, 2_000);
    // Through the observer: it forwards both the session and the creates to the leader.
    assert!(e.create(3, silent.session, "/silent", true).await.is_some(), "{}", e.logs());
    assert!(e.create(3, live.session, "/live", true).await.is_some(), "{}", e.logs());
    // An ephemeral znode needs an open session.
    assert!(e.create(1, 12345, "/orphan", true).await.is_none());
    let started = Instant::now();
    // The live client pings (through different nodes); the silent one, like a killed client,
    // does not.
    let mut gone_after = None;
    while started.elapsed() < Duration::from_secs(15) {
        for i in 0..4 {
            e.client
                .call(e.addr(i), MetaPing { session: live.session })
                .await
                .expect("ping")
                .expect("ping");
        }
        let root = e.children(1, "/").await;
        assert!(root.contains("live"), "the live session's znode went\n{}", e.logs());
        if gone_after.is_none() && !root.contains("silent") {
            gone_after = Some(started.elapsed());
        }
        if gone_after.is_some_and(|g| started.elapsed() > g + Duration::from_secs(3)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let gone_after = gone_after.unwrap_or_else(|| {
        panic!("the silent session's znode is still there after 15 s\n{}", e.logs())
    });
    eprintln!(
        "the silent client's ephemeral znode went after {gone_after:?} (session timeout 2 s)"
    );
    assert!(gone_after >= Duration::from_millis(1_500), "expired too early: {gone_after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_misses_no_change_when_its_client_moves_to_another_node_and_bad_input_is_refused() {
    use starling_wire::meta::{MetaError, MetaWatch, WatchKind, WatchedEvent};
    let e = Ensemble::start().await;
    let w = e.create(0, 0, "/w", false).await.expect("create /w");
    // The client saw /w at w.zxid on node1. The znode changes through node2 while the client is
    // away; it then watches through the observer with the zxid it saw: the change is reported
    // at once, not lost.
    let set = Op::SetData { path: "/w".into(), data: b"v2".to_vec(), version: None };
    let s = e.client.call(e.addr(1), MetaWrite { session: 0, ops: vec![set], multi: false }).await;
    assert!(matches!(s, Ok(Ok(_))), "{s:?}");
    let watch = MetaWatch {
        path: "/w".into(),
        kind: WatchKind::Data,
        since: w.zxid,
        exists: true,
        wait_ms: 3000,
    };
    let got = e.client.call(e.addr(3), watch.clone()).await.expect("watch").expect("watch");
    assert_eq!(got.event, Some(WatchedEvent::NodeDataChanged));
    // Watching from the latest zxid waits, and fires on the next change, made through another
    // node while the watch is pending.
    let pending = {
        let (c, a) = (e.client.clone(), e.addr(2));
        let w2 = MetaWatch { since: got.zxid, ..watch.clone() };
        tokio::spawn(async move { c.call(a, w2).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let del = Op::Delete { path: "/w".into(), version: None };
    let d = e.client.call(e.addr(0), MetaWrite { session: 0, ops: vec![del], multi: false }).await;
    assert!(matches!(d, Ok(Ok(_))), "{d:?}");
    let fired = pending.await.expect("task").expect("watch").expect("watch");
    assert_eq!(fired.event, Some(WatchedEvent::NodeDeleted));
    // Nothing changed: the watch comes back empty after its wait.
    let quiet = MetaWatch {
        path: "/".into(),
        kind: WatchKind::Data,
        since: fired.zxid,
        exists: true,
        wait_ms: 200,
    };
    let q = e.client.call(e.addr(1), quiet).await.expect("watch").expect("watch");
    assert_eq!(q.event, None);

    // Bad input: each a clear refusal, nothing written.
    let big = Op::Create {
        path: "/big".into(),
        data: vec![0; starling_wire::meta::MAX_DATA + 1],
        ephemeral: false,
        sequential: false,
    };
    let r = e.client.call(e.addr(3), MetaWrite { session: 0, ops: vec![big], multi: false }).await;
    assert!(matches!(r, Ok(Err(MetaError::TooLarge(_)))), "{r:?}");
    for bad in ["relative", "/a//b", "/a/", "/a/./b"] {
        let op =
            Op::Create { path: bad.into(), data: Vec::new(), ephemeral: false, sequential: false };
        let r =
            e.client.call(e.addr(0), MetaWrite { session: 0, ops: vec![op], multi: false }).await;
        let refused = match &r {
            Ok(Ok(w)) => {
                matches!(w.results.first(), Some(OpResult::Failed(MetaError::BadPath { .. })))
            }
            Ok(Err(MetaError::BadPath { .. })) => true,
            _ => false,
        };
        assert!(refused, "{bad}: {r:?}");
    }
    let root = e.children(2, "/").await;
    assert!(!root.contains("big") && !root.contains("relative") && !root.contains("a"), "{root:?}");
    // A watch storm: 500 watches pending on one node at once, all fired by one change.
    let created = e.create(0, 0, "/storm", false).await.expect("create /storm");
    let mut watches = Vec::new();
    for _ in 0..500 {
        let (c, a) = (e.client.clone(), e.addr(1));
        let w = MetaWatch {
            path: "/storm".into(),
            kind: WatchKind::Data,
            since: created.zxid,
            exists: true,
            wait_ms: 10_000,
        };
        watches.push(tokio::spawn(async move { c.call(a, w).await }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let set = Op::SetData { path: "/storm".into(), data: b"go".to_vec(), version: None };
    let s = e.client.call(e.addr(0), MetaWrite { session: 0, ops: vec![set], multi: false }).await;
    assert!(matches!(s, Ok(Ok(_))), "{s:?}");
    for w in watches {
        let got = w.await.expect("task").expect("watch").expect("watch");
        assert_eq!(got.event, Some(WatchedEvent::NodeDataChanged));
    }
}

/// A client's synchronized read of `/ctr`: (invoked, version, data, zxid), or `None`.
async fn synced_read(
    client: &QuicTransport,
    addr: SocketAddr,
    clock: Instant,
) -> Option<(u64, u32, Vec<u8>)> {
    let invoked = clock.elapsed().as_nanos() as u64;
    let synced = client.call(addr, MetaSync).await.ok()?.ok()?;
    let read = MetaRead { path: "/ctr".into(), kind: ReadKind::Data, after: synced.zxid };
    let a = client.call(addr, read).await.ok()?.ok()?;
    Some((invoked, a.stat?.version, a.data))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_sets_through_every_node_with_the_leader_killed_are_linearizable() {
    use starling_node::transport::{CallError, TransportError};
    use starling_tests::register::{check, ReadOp, WriteOp, WriteOutcome, NEVER};
    use starling_wire::meta::MetaError;

    let mut e = Ensemble::start().await;
    assert!(e.create(0, 0, "/ctr", false).await.is_some());
    // `create` writes the path as data.
    let initial = b"/ctr".to_vec();
    let clock = Instant::now();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..4u64 {
        let (client, addr, stop) = (e.client.clone(), e.addr(c as usize), stop.clone());
        clients.push(tokio::spawn(async move {
            let (mut writes, mut reads) = (Vec::new(), Vec::new());
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let Some((invoked, version, data)) = synced_read(&client, addr, clock).await else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                let completed = clock.elapsed().as_nanos() as u64;
                reads.push(ReadOp { client: c, invoked, completed, version, data, synced: true });
                let data = format!("c{c}-{i}").into_bytes();
                i += 1;
                let set =
                    Op::SetData { path: "/ctr".into(), data: data.clone(), version: Some(version) };
                let invoked = clock.elapsed().as_nanos() as u64;
                let r =
                    client.call(addr, MetaWrite { session: 0, ops: vec![set], multi: false }).await;
                let mut completed = clock.elapsed().as_nanos() as u64;
                let outcome = match r {
                    Ok(Ok(w)) => match w.results.first() {
                        Some(OpResult::Set(stat)) => {
                            WriteOutcome::Written { version: stat.version }
                        }
                        Some(OpResult::Failed(MetaError::BadVersion { actual, .. })) => {
                            WriteOutcome::BadVersion { actual: *actual }
                        }
                        _ => WriteOutcome::Failed,
                    },
                    Ok(Err(_)) => WriteOutcome::Failed,
                    // Never sent, or refused before any leader saw it.
                    Err(CallError::Transport(TransportError::Connect { .. })) => {
                        WriteOutcome::Failed
                    }
                    Err(CallError::Answer(a))
                        if a.code() == Some(starling_wire::ErrorCode::Unavailable) =>
                    {
                        WriteOutcome::Failed
                    }
                    Err(_) => {
                        completed = NEVER;
                        WriteOutcome::Unknown
                    }
                };
                writes.push(WriteOp {
                    client: c,
                    invoked,
                    completed,
                    expected: Some(version),
                    data,
                    outcome,
                });
            }
            (writes, reads)
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let leader = e.leader().await;
    e.nodes[leader].kill9();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut writes, mut reads) = (Vec::new(), Vec::new());
    for c in clients {
        let (w, r) = c.await.expect("client");
        writes.extend(w);
        reads.extend(r);
    }
    let survivor = (0..4).find(|i| *i != leader).unwrap();
    let (_, version, data) =
        synced_read(&e.client, e.addr(survivor), clock).await.expect("final read");
    let acked = writes.iter().filter(|w| matches!(w.outcome, WriteOutcome::Written { .. })).count();
    let refused =
        writes.iter().filter(|w| matches!(w.outcome, WriteOutcome::BadVersion { .. })).count();
    let unknown = writes.iter().filter(|w| matches!(w.outcome, WriteOutcome::Unknown)).count();
    eprintln!(
        "{} conditional sets ({acked} acknowledged, {refused} refused for their version, {unknown} unknown), {} synchronized reads; final version {version}",
        writes.len(),
        reads.len()
    );
    assert!(acked > 20, "too few acknowledged writes to judge\n{}", e.logs());
    assert!(refused > 0, "no two clients raced for a version");
    let violations = check(&initial, &writes, &reads, (version, &data));
    assert!(violations.is_empty(), "{violations:#?}");
}

/// Writes forwarded to the leader, summed over the live nodes.
async fn forwarded(e: &Ensemble, live: &[usize]) -> u64 {
    let mut n = 0;
    for &i in live {
        n += e.nodes[i].status().await.and_then(|s| s.meta).map_or(0, |m| m.forwarded);
    }
    n
}

/// Writes `/c/<prefix>-<i>` through the typed client until `count` are acknowledged, within
/// PATIENCE; returns their names.
async fn client_writes(
    e: &Ensemble,
    client: &starling_client::Client,
    prefix: &str,
    count: usize,
) -> BTreeSet<String> {
    let started = Instant::now();
    let mut acked = BTreeSet::new();
    let mut i = 0;
    while acked.len() < count {
        let name = format!("{prefix}-{i:04}");
        let op = Op::Create {
            path: format!("/c/{name}"),
            data: vec![1; 64],
            ephemeral: false,
            sequential: false,
        };
        match client.meta_write(0, vec![op], false).await {
            Ok(Ok(w)) if matches!(w.results.first(), Some(OpResult::Created { .. })) => {
                acked.insert(name);
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
        i += 1;
        assert!(
            started.elapsed() < PATIENCE,
            "only {} of {count} client writes acknowledged\n{}",
            acked.len(),
            e.logs()
        );
    }
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_writes_to_the_leader_and_finds_the_next_after_a_kill9() {
    let mut e = Ensemble::start().await;
    assert!(e.create(0, 0, "/c", false).await.is_some(), "create /c\n{}", e.logs());
    let auth = starling_client::Auth::certs(e._dir.path().join("certs").join("client"));
    let config = starling_client::ClientConfig {
        request_timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_millis(500),
        backoff_min: Duration::from_millis(200),
        ..starling_client::ClientConfig::default()
    };
    let nodes: Vec<String> = (0..4).map(|i| e.addr(i).to_string()).collect();
    let client = starling_client::Client::with_config(&nodes, &auth, config).await.expect("client");
    let all = [0, 1, 2, 3];

    // Requests rotate over four nodes, three of which do not lead: sent that way, about three
    // writes in four would be forwarded. Sent to the leader, none is.
    let before = forwarded(&e, &all).await;
    let mut acked = client_writes(&e, &client, "a", 40).await;
    let sent_on = forwarded(&e, &all).await - before;
    assert!(sent_on <= 3, "{sent_on} of 40 client writes were forwarded to the leader");

    // The leader dies: writes go on through the others and then to the new leader.
    let leader = e.leader().await;
    e.nodes[leader].kill9();
    let live: Vec<usize> = all.iter().copied().filter(|i| *i != leader).collect();
    acked.extend(client_writes(&e, &client, "b", 20).await);
    // Past the time a client waits before asking again who leads.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = forwarded(&e, &live).await;
    acked.extend(client_writes(&e, &client, "c", 40).await);
    let sent_on = forwarded(&e, &live).await - before;
    assert!(
        sent_on <= 3,
        "{sent_on} of 40 writes forwarded after the leader changed\n{}",
        e.logs()
    );

    // No acknowledged write is lost on any live node.
    for &i in &live {
        let have: BTreeSet<String> = e.children(i, "/c").await;
        let lost: Vec<&String> = acked.difference(&have).collect();
        assert!(lost.is_empty(), "node{} lost {} acknowledged writes: {lost:?}", i + 1, lost.len());
    }
    client.close().await;
}
