//! The harness of the key-value tests across real `starlingd` processes (`kv_cluster.rs`,
//! `kv_history.rs`, which include this file by path next to `process.rs`): a [`Cluster`] of
//! [`Node`]s on loopback, driven by a QUIC client with a client certificate, with kill -9,
//! restart, signals (SIGSTOP/SIGCONT), and waits for readiness and for hints to be delivered.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use starling_node::cert;
use starling_node::status::Status;
use starling_node::tls::{self, TlsMaterial};
use starling_node::transport::quic::QuicTransport;
use starling_node::transport::{Transport, TransportConfig};
use starling_wire::{Call, Consistency, Get, Put, ReadAnswer, Record, ReplicaRead, Written};
use tokio::time::Instant;

use crate::process::{self, tail};

/// Deadline for anything the cluster does on its own (start, join, detect, replay).
pub const PATIENCE: Duration = Duration::from_secs(60);

/// A `starlingd` process ([`process::Node`]) with what these async tests add: start and restart
/// off the runtime's threads, status fetched without blocking, signals, waiting for an exit.
pub struct Node(pub process::Node);

impl std::ops::Deref for Node {
    type Target = process::Node;
    fn deref(&self) -> &process::Node {
        &self.0
    }
}

impl std::ops::DerefMut for Node {
    fn deref_mut(&mut self) -> &mut process::Node {
        &mut self.0
    }
}

impl Node {
    pub async fn start(data: &Path, certs: &Path, listen: &str, seeds: &[SocketAddr]) -> Node {
        let bin = Path::new(env!("CARGO_BIN_EXE_starlingd"));
        Node(tokio::task::block_in_place(|| process::Node::start(bin, data, certs, listen, seeds)))
    }

    pub async fn restart(&mut self, seeds: &[SocketAddr]) {
        tokio::task::block_in_place(|| self.0.restart(seeds));
    }

    pub async fn start_with_env(
        data: &Path,
        certs: &Path,
        seeds: &[SocketAddr],
        env: &[(String, String)],
    ) -> Node {
        let bin = Path::new(env!("CARGO_BIN_EXE_starlingd"));
        Node(tokio::task::block_in_place(|| {
            process::Node::start_with_env(bin, data, certs, "127.0.0.1:0", seeds, env)
        }))
    }

    pub fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.pid() as i32), sig).expect("signal");
    }

    pub async fn status(&self) -> Option<Status> {
        let addr = self.addrs.http;
        tokio::task::spawn_blocking(move || process::http_status(addr)).await.ok().flatten()
    }

    /// Waits until the process exits by itself (within `limit`); its exit status.
    pub async fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            let child = self.child.as_mut().expect("running");
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return status;
            }
            assert!(
                start.elapsed() < limit,
                "{} did not exit within {limit:?}; log:\n{}",
                self.data.display(),
                tail(&self.data, 40)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Polls `f` until it holds; panics with `what` (and `context()`) after `limit`.
pub async fn wait_until<F, Fut>(limit: Duration, what: &str, context: impl Fn() -> String, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if f().await {
            return;
        }
        if start.elapsed() > limit {
            panic!("timed out after {limit:?} waiting for: {what}\n{}", context());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub nodes: Vec<Node>,
    /// Sends the client API, with a client certificate.
    pub client: Arc<QuicTransport>,
    /// Sends peer RPCs (replica reads to inspect a node, leave), with a node certificate of its
    /// own, as an operator on a node's machine would.
    pub operator: Arc<QuicTransport>,
    /// Environment every node starts (and restarts) with, e.g. `STARLING_QUORUM=strict`.
    pub env: Vec<(String, String)>,
}

pub const NAMES: [&str; 5] = ["node1", "node2", "node3", "node4", "node5"];

pub async fn client(certs: &Path) -> Arc<QuicTransport> {
    let tls = tls::mutual(&TlsMaterial::load(certs).expect("client certs")).expect("tls");
    let cfg =
        TransportConfig { request_timeout: Duration::from_secs(10), ..TransportConfig::default() };
    let t = QuicTransport::client("127.0.0.1:0".parse().expect("addr"), &tls, cfg)
        .await
        .expect("client endpoint");
    Arc::new(t)
}

impl Cluster {
    pub async fn start(n: usize) -> Cluster {
        Cluster::start_with_env(n, &[]).await
    }

    /// [`Cluster::start`] with environment variables for every node (options of `starlingd`
    /// such as `STARLING_QUORUM`), kept across restarts.
    pub async fn start_with_env(n: usize, env: &[(&str, &str)]) -> Cluster {
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let dir = tempfile::tempdir().expect("tempdir");
        let certs = dir.path().join("certs");
        cert::init_ca(&certs.join("ca")).expect("ca");
        for name in NAMES.iter().chain(&["client", "operator"]) {
            let role = if *name == "client" { cert::Role::Client } else { cert::Role::Node };
            cert::issue(&certs.join("ca"), name, &certs.join(name), &[], role, 30).expect("issue");
        }
        let operator = client(&certs.join("operator")).await;
        let client = client(&certs.join("client")).await;
        let mut c = Cluster { dir, nodes: Vec::new(), client, operator, env };
        for _ in 0..n {
            c.add_node().await;
        }
        c.wait_ready(n).await;
        c
    }

    /// Starts the next node, seeded with the first one.
    pub async fn add_node(&mut self) -> usize {
        let i = self.nodes.len();
        let seeds: Vec<SocketAddr> =
            self.nodes.first().map(|n| n.addrs.listen).into_iter().collect();
        let data = self.dir.path().join(NAMES[i]);
        let certs = self.dir.path().join("certs").join(NAMES[i]);
        self.nodes.push(Node::start_with_env(&data, &certs, &seeds, &self.env).await);
        i
    }

    /// Starts the next node with extra environment variables (a skewed clock), seeded with the
    /// first one.
    pub async fn add_node_with_env(&mut self, env: &[(String, String)]) -> usize {
        let i = self.nodes.len();
        let seeds = [self.nodes[0].addrs.listen];
        let data = self.dir.path().join(NAMES[i]);
        let certs = self.dir.path().join("certs").join(NAMES[i]);
        let env: Vec<(String, String)> = self.env.iter().chain(env).cloned().collect();
        self.nodes.push(Node::start_with_env(&data, &certs, &seeds, &env).await);
        i
    }

    /// Restarts node `i` (kill -9 first if running) and waits until the cluster is ready. The
    /// client starts afresh, like a new client process: its connection to the old process is
    /// dead, and a restarted node cannot reset it (QUIC stateless-reset keys are per process),
    /// so it would only be dropped at the idle timeout.
    pub async fn restart(&mut self, i: usize) {
        let old = self.respawn(i).await;
        old.close().await;
        let ring = self.nodes.len();
        self.wait_ready(ring).await;
    }

    /// The first half of [`Cluster::restart`]: kill -9 node `i` (if running), start it again on
    /// its data dir and address, and a fresh client; returns the previous client, which other
    /// tasks may still be using. Does not wait for the cluster.
    pub async fn respawn(&mut self, i: usize) -> Arc<QuicTransport> {
        let seed = self.nodes[if i == 0 { 1 } else { 0 }].addrs.listen;
        self.nodes[i].restart(&[seed]).await;
        let fresh = client(&self.dir.path().join("certs/client")).await;
        let operator = client(&self.dir.path().join("certs/operator")).await;
        std::mem::replace(&mut self.operator, operator).close().await;
        std::mem::replace(&mut self.client, fresh)
    }

    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| format!("--- node{} log (tail) ---\n{}", i + 1, tail(&n.data, 25)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub fn live(&self) -> Vec<usize> {
        (0..self.nodes.len()).filter(|i| self.nodes[*i].child.is_some()).collect()
    }

    pub async fn statuses(&self) -> Vec<Option<Status>> {
        join_all(self.live().into_iter().map(|i| self.nodes[i].status())).await
    }

    /// Every running node: converged, sees every running node alive, `ring` nodes on the ring,
    /// itself `normal`, and not recovering its store (after a kill -9 it first compares its
    /// ranges with their other replicas, answering no replica reads).
    pub async fn ready(&self, ring: usize) -> bool {
        let live = self.live().len();
        self.statuses().await.iter().all(|s| {
            s.as_ref().is_some_and(|s| {
                s.converged
                    && s.count("alive") == live
                    && s.ring.nodes == ring
                    && s.ring.status.as_deref() == Some("normal")
                    && s.kv.as_ref().is_none_or(|k| k.recovering.is_none())
            })
        })
    }

    pub async fn wait_ready(&self, ring: usize) {
        let what = format!("{} nodes converged with a normal ring of {ring}", self.live().len());
        wait_until(PATIENCE, &what, || self.logs(), || self.ready(ring)).await;
    }

    /// Sum of one KV counter over `nodes` (`None` if one does not answer).
    pub async fn kv_sum(
        &self,
        nodes: &[usize],
        f: impl Fn(&starling_node::kv::KvStatus) -> u64,
    ) -> Option<u64> {
        let mut sum = 0;
        for s in join_all(nodes.iter().map(|i| self.nodes[*i].status())).await {
            sum += f(s?.kv.as_ref()?);
        }
        Some(sum)
    }

    pub async fn wait_hints_delivered(&self) {
        wait_until(
            PATIENCE,
            "every hint delivered (hints_pending == 0 on every node)",
            || self.logs(),
            || async { self.kv_sum(&self.live(), |k| k.hints_pending).await == Some(0) },
        )
        .await;
    }

    pub async fn sees_down(&self, observer: usize, subject: usize) -> bool {
        let id = self.nodes[subject].id().to_string();
        self.nodes[observer]
            .status()
            .await
            .is_some_and(|s| s.members.iter().any(|m| m.node_id == id && m.state == "down"))
    }

    /// Waits until every observer's gossip shows every subject `down`.
    pub async fn wait_seen_down(&self, observers: &[usize], subjects: &[usize]) {
        let name = |i: &usize| format!("node{}", i + 1);
        let what = format!(
            "{} seen down by {}",
            subjects.iter().map(name).collect::<Vec<_>>().join(" and "),
            observers.iter().map(name).collect::<Vec<_>>().join(" and ")
        );
        wait_until(
            PATIENCE,
            &what,
            || self.logs(),
            || async {
                for o in observers {
                    for s in subjects {
                        if !self.sees_down(*o, *s).await {
                            return false;
                        }
                    }
                }
                true
            },
        )
        .await;
    }

    /// Sends `req` to node `i`: the client API with the client certificate, peer RPCs with the
    /// operator's node certificate.
    pub async fn call<C>(&self, i: usize, c: C) -> Result<C::Answer, String>
    where
        C: Call + Send,
        C::Answer: Send,
    {
        let addr = self.nodes[i].addrs.listen;
        let via = if C::PEER { &self.operator } else { &self.client };
        via.call(addr, c).await.map_err(|e| e.to_string())
    }

    /// Writes through node `i`; the record the cluster acknowledged.
    pub async fn put(
        &self,
        i: usize,
        key: &[u8],
        value: Option<&[u8]>,
        consistency: Consistency,
    ) -> Result<Record, String> {
        let put = Put { key: key.to_vec(), value: value.map(<[u8]>::to_vec), consistency };
        let Written { version, acked, required, .. } = self.call(i, put).await?;
        assert!(acked >= required, "acked {acked} < required {required}");
        Ok(Record { key: key.to_vec(), version, value: value.map(<[u8]>::to_vec) })
    }

    pub async fn get(
        &self,
        i: usize,
        key: &[u8],
        consistency: Consistency,
    ) -> Result<Option<Record>, String> {
        Ok(self.call(i, Get { key: key.to_vec(), consistency }).await?.record)
    }

    pub async fn replica_read(&self, i: usize, key: &[u8]) -> Result<Option<Record>, String> {
        match self.call(i, ReplicaRead(key.to_vec())).await? {
            ReadAnswer::Found(r) => Ok(Some(r)),
            ReadAnswer::Missing => Ok(None),
            other => Err(format!("unexpected answer {other:?}")),
        }
    }

    /// Writes `keys` at quorum, `in_flight` at a time, coordinators in turn; every write must be
    /// acknowledged. Records them in `acked`.
    pub async fn write_all(
        &self,
        coordinators: &[usize],
        keys: Vec<String>,
        acked: &mut BTreeMap<Vec<u8>, Record>,
    ) {
        for (chunk_no, chunk) in keys.chunks(8).enumerate() {
            let writes = chunk.iter().enumerate().map(|(j, k)| {
                let i = coordinators[(chunk_no * 8 + j) % coordinators.len()];
                let value = format!("value of {k}");
                async move {
                    let r = self
                        .put(i, k.as_bytes(), Some(value.as_bytes()), Consistency::Quorum)
                        .await;
                    (i, k, r)
                }
            });
            for (i, k, r) in join_all(writes).await {
                match r {
                    Ok(rec) => {
                        acked.insert(rec.key.clone(), rec);
                    }
                    Err(e) => panic!(
                        "quorum write of {k} through node{} failed: {e}\n{}",
                        i + 1,
                        self.logs()
                    ),
                }
            }
        }
    }

    /// Every acknowledged write reads back at `level` (coordinators in turn) with its version.
    pub async fn check_reads(
        &self,
        coordinators: &[usize],
        acked: &BTreeMap<Vec<u8>, Record>,
        level: Consistency,
    ) {
        let list: Vec<&Record> = acked.values().collect();
        for (n, chunk) in list.chunks(16).enumerate() {
            let reads = chunk.iter().enumerate().map(|(j, r)| {
                let i = coordinators[(n * 16 + j) % coordinators.len()];
                async move { (i, *r, self.get(i, &r.key, level).await) }
            });
            for (i, want, got) in join_all(reads).await {
                match got {
                    Ok(Some(r)) if r == *want => {}
                    other => panic!(
                        "{level} read of {:?} through node{}: expected {want:?}, got {other:?}\n{}",
                        String::from_utf8_lossy(&want.key),
                        i + 1,
                        self.logs()
                    ),
                }
            }
        }
    }

    /// Node `i` holds each record (`ReplicaRead`), with exactly the acknowledged version.
    pub async fn check_replica(&self, i: usize, records: &[&Record]) {
        for chunk in records.chunks(32) {
            let reads =
                chunk.iter().map(|r| async move { (*r, self.replica_read(i, &r.key).await) });
            for (want, got) in join_all(reads).await {
                match got {
                    Ok(Some(r)) if r == *want => {}
                    other => {
                        panic!("node{} should hold {want:?}, has {other:?}\n{}", i + 1, self.logs())
                    }
                }
            }
        }
    }
}
