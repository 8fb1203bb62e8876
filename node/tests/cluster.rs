//! Real `starlingd` processes on loopback: join through seeds, kill -9 and restart, leave, a
//! foreign certificate refused, garbage gossip refused while the node keeps serving.
//! Every node binds port 0; tests read the bound ports from `addresses.json`.

use starling_wire::NodeId;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use starling_node::tls::{self, TlsMaterial};
use starling_node::transport::quic::QuicTransport;
use starling_node::transport::{service_fn, Transport, TransportConfig};
use starling_wire::{
    Call, Clock, ErrorCode, Get, GetStatus, KvResponse, Leave, PeerRequest, Put, ReadAnswer,
    Record, ReplicaHint, ReplicaRead, ReplicaReadMany, ReplicaScan, ReplicaVersions, ReplicaWrite,
    Request, Response, Value, Version, Written,
};

#[path = "common/process.rs"]
mod process;

use process::{certs, tail, wait_for, Node};

const STARLINGD: &str = env!("CARGO_BIN_EXE_starlingd");

fn start(data: &Path, certs: &Path, listen: &str, seeds: &[SocketAddr]) -> Node {
    Node::start(Path::new(STARLINGD), data, certs, listen, seeds)
}

fn log_of(data: &Path) -> String {
    tail(data, usize::MAX)
}

fn cluster(dir: &Path, n: usize) -> Vec<Node> {
    let names: Vec<String> = (1..=n).map(|i| format!("node{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).chain(["client"]).collect();
    let certs = certs(&dir.join("certs"), &refs);
    let first = start(&dir.join("node1"), &certs.join("node1"), "127.0.0.1:0", &[]);
    let seed = first.addrs.listen;
    let mut nodes = vec![first];
    for name in &names[1..] {
        nodes.push(start(&dir.join(name), &certs.join(name), "127.0.0.1:0", &[seed]));
    }
    nodes
}

fn all_see(nodes: &[&Node], alive: usize) -> bool {
    nodes.iter().all(|n| n.status().is_some_and(|s| s.converged && s.count("alive") == alive))
}

/// [`all_see`], and every node's ring holds them all, `normal` (so a write finds its replicas).
fn ring_ready(nodes: &[&Node], n: usize) -> bool {
    all_see(nodes, n)
        && nodes.iter().all(|node| {
            node.status()
                .is_some_and(|s| s.ring.nodes == n && s.ring.status.as_deref() == Some("normal"))
        })
}

fn state_of(observer: &Node, subject: &Node) -> Option<String> {
    let s = observer.status()?;
    let addr = subject.addrs.advertise.to_string();
    s.members.into_iter().find(|m| m.addr == addr && !m.is_self).map(|m| m.state)
}

async fn client(certs: &Path) -> QuicTransport {
    let tls = tls::mutual(&TlsMaterial::load(certs).expect("client certs")).expect("tls");
    let cfg =
        TransportConfig { request_timeout: Duration::from_secs(3), ..TransportConfig::default() };
    QuicTransport::bind(
        "127.0.0.1:0".parse().expect("addr"),
        &tls,
        cfg,
        service_fn(|_, _| async { Response::Ok }),
    )
    .await
    .expect("client endpoint")
}

#[test]
fn nodes_join_through_a_seed_and_converge() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nodes = cluster(dir.path(), 3);
    let refs: Vec<&Node> = nodes.iter().collect();
    let ok = wait_for(Duration::from_secs(20), || all_see(&refs, 3).then_some(()));
    assert!(ok.is_some(), "3 nodes did not converge; node3 log:\n{}", log_of(&nodes[2].data));
    let s = nodes[0].status().expect("status");
    assert_eq!(s.members.len(), 3);
    assert!(s.members.iter().all(|m| m.state == "alive" && m.zone.is_none()));
    assert!(!s.insecure);
}

#[test]
fn killed_node_is_marked_down_and_rejoins_with_a_new_generation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut nodes = cluster(dir.path(), 3);
    let refs: Vec<&Node> = nodes.iter().collect();
    assert!(wait_for(Duration::from_secs(20), || all_see(&refs, 3).then_some(())).is_some());
    let old_gen = nodes[2].status().expect("status").generation;

    nodes[2].kill9();
    let down = wait_for(Duration::from_secs(20), || {
        (state_of(&nodes[0], &nodes[2]).as_deref() == Some("down")
            && state_of(&nodes[1], &nodes[2]).as_deref() == Some("down"))
        .then_some(())
    });
    assert!(down.is_some(), "killed node not marked down; node1 log:\n{}", log_of(&nodes[0].data));

    let seed = nodes[0].addrs.listen;
    nodes[2].restart(&[seed]);
    let refs: Vec<&Node> = nodes.iter().collect();
    let back = wait_for(Duration::from_secs(20), || all_see(&refs, 3).then_some(()));
    assert!(back.is_some(), "restarted node not alive again; its log:\n{}", log_of(&nodes[2].data));
    let s = nodes[2].status().expect("status");
    assert!(s.generation > old_gen, "generation must grow across restarts");
    let seen = nodes[0].status().expect("status");
    let m =
        seen.members.iter().find(|m| m.node_id == s.node_id).expect("same node id after restart");
    assert_eq!(m.generation, s.generation);
}

/// A node restarted after `kill -9` keeps its QUIC stateless-reset secret (`reset-key` in the
/// data dir), so a client still holding a connection to the old process is reset and reconnects
/// on its next request instead of waiting for the 10 s idle timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_connections_to_a_restarted_node_are_reset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut nodes = cluster(dir.path(), 1);
    let c = client(&dir.path().join("certs/client")).await;
    let addr = nodes[0].addrs.listen;
    assert!(matches!(c.request(addr, GetStatus.into_request()).await, Ok(Response::Status(_))));
    nodes[0].kill9();
    nodes[0].restart(&[]);
    assert_eq!(nodes[0].addrs.listen, addr, "restarted on the same port");
    // The first request may fail with the reset (the old connection is closed by it); one more
    // must then succeed, each within 3 s: without the reset both would wait out the idle timeout.
    let mut errors = Vec::new();
    for _ in 0..2 {
        match c.request(addr, GetStatus.into_request()).await {
            Ok(Response::Status(_)) => {
                c.close().await;
                return;
            }
            other => errors.push(format!("{other:?}")),
        }
    }
    panic!("no answer from the restarted node within two requests: {errors:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leave_is_gossiped_and_the_node_stops() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Four nodes: three stay, enough for N = 3 copies (a leave from three is refused). Each
    // node counts those on its ring, which a node joins a little after gossip shows it alive.
    let mut nodes = cluster(dir.path(), 4);
    let refs: Vec<&Node> = nodes.iter().collect();
    assert!(wait_for(Duration::from_secs(20), || ring_ready(&refs, 4).then_some(())).is_some());
    // Leave is an operator action: a client certificate may not ask for it; the node's own
    // certificate may.
    let client_cert = client(&dir.path().join("certs/client")).await;
    let resp =
        client_cert.request(nodes[2].addrs.listen, Leave.into_request()).await.expect("leave");
    assert!(
        matches!(&resp, Response::Error { code: ErrorCode::Forbidden, .. }),
        "a client certificate asked a node to leave: {resp:?}"
    );
    client_cert.close().await;
    let c = client(&nodes[2].certs).await;
    let resp = c.request(nodes[2].addrs.listen, Leave.into_request()).await.expect("leave");
    assert_eq!(resp, Response::Ok);
    let mut child = nodes[2].child.take().expect("child");
    let exited = wait_for(Duration::from_secs(10), || child.try_wait().ok().flatten());
    assert!(exited.is_some_and(|s| s.success()), "node did not stop after leave");
    let left = wait_for(Duration::from_secs(10), || {
        (state_of(&nodes[0], &nodes[2]).as_deref() == Some("left")
            && state_of(&nodes[1], &nodes[2]).as_deref() == Some("left"))
        .then_some(())
    });
    assert!(left.is_some(), "others do not show the node as left");
    c.close().await;
    // Its data is stale now: starting it again with the same data dir is refused.
    let data = nodes[2].data.to_str().expect("utf8").to_owned();
    let certs = nodes[2].certs.to_str().expect("utf8").to_owned();
    let (_, err) = refused(&["--data-dir", &data, "--certs", &certs, "--listen", "127.0.0.1:0"]);
    assert!(err.contains("left the cluster") && err.contains("empty --data-dir"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_certificates_are_refused_and_garbage_gossip_does_not_hurt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nodes = cluster(dir.path(), 2);
    let foreign = certs(&dir.path().join("foreign"), &["client"]);
    let intruder = client(&foreign.join("client")).await;
    let r = intruder.request(nodes[0].addrs.listen, GetStatus.into_request()).await;
    assert!(r.is_err(), "a client from another CA must be refused, got {r:?}");

    // Garbage from a node certificate reaches the gossip decoder (a client's is refused before).
    let c = client(&dir.path().join("certs/node2")).await;
    for garbage in [&b""[..], b"\x01", b"\x01\xff\xff\xff", b"\x09hello", &[0x01; 5000]] {
        c.send_one_way(nodes[0].addrs.listen, Request::Peer(PeerRequest::Gossip(garbage.to_vec())))
            .await
            .expect("send");
    }
    let refused = wait_for(Duration::from_secs(10), || {
        nodes[0].status().filter(|s| s.gossip.refused >= 5).map(|s| s.gossip.refused)
    });
    assert!(refused.is_some(), "garbage gossip should be counted as refused");
    // The node still answers a legitimate client and still gossips with its peer.
    let resp = c.request(nodes[0].addrs.listen, GetStatus.into_request()).await.expect("status");
    assert!(matches!(resp, Response::Status(_)));
    let refs: Vec<&Node> = nodes.iter().collect();
    assert!(wait_for(Duration::from_secs(20), || all_see(&refs, 2).then_some(())).is_some());
    intruder.close().await;
    c.close().await;
}

/// Runs starlingd on `data` with the certificates in `certs`, expecting it to refuse to start;
/// returns its stderr.
fn refused_with_certs(data: &Path, certs: &Path) -> String {
    let (data, certs) = (data.to_str().expect("utf8"), certs.to_str().expect("utf8"));
    refused(&["--data-dir", data, "--certs", certs, "--listen", "127.0.0.1:0"]).1
}

/// Runs starlingd expecting it to refuse to start; returns (exit code, stderr).
fn refused(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_starlingd"))
        .args(args)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .expect("run starlingd");
    assert!(!out.status.success(), "starlingd {args:?} should fail");
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn bad_configuration_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("d");
    let d = data.to_str().expect("utf8");
    let certs = certs(&dir.path().join("certs"), &["node1"]);
    let c = certs.join("node1");
    let c = c.to_str().expect("utf8");

    let (code, err) = refused(&["--data-dir", d, "--insecure", "--listen", "localhost"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--listen"), "{err}");

    let (code, err) =
        refused(&["--data-dir", d, "--certs", "/nonexistent/certs", "--http", "127.0.0.1:0"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("cannot load certificates from /nonexistent/certs"), "{err}");

    // A port in use (UDP for QUIC, TCP for HTTP).
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    let busy = udp.local_addr().expect("addr").to_string();
    let (_, err) =
        refused(&["--data-dir", d, "--certs", c, "--listen", &busy, "--http", "127.0.0.1:0"]);
    assert!(err.contains("cannot listen for QUIC on"), "{err}");
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").expect("tcp");
    let busy = tcp.local_addr().expect("addr").to_string();
    let (_, err) =
        refused(&["--data-dir", d, "--certs", c, "--listen", "127.0.0.1:0", "--http", &busy]);
    assert!(err.contains("cannot listen for HTTP on"), "{err}");

    // A data dir another starlingd holds.
    let running = start(&data, &certs.join("node1"), "127.0.0.1:0", &[]);
    let (_, err) = refused(&[
        "--data-dir",
        d,
        "--certs",
        c,
        "--listen",
        "127.0.0.1:0",
        "--http",
        "127.0.0.1:0",
    ]);
    assert!(err.contains("in use by another starlingd"), "{err}");
    drop(running);

    // An unusable data dir (a file where the directory should be).
    let file = dir.path().join("file");
    std::fs::write(&file, "x").expect("write");
    let (_, err) = refused(&[
        "--data-dir",
        file.to_str().expect("utf8"),
        "--insecure",
        "--http",
        "127.0.0.1:0",
    ]);
    assert!(err.contains("cannot create data dir"), "{err}");
}

/// A node whose seeds cannot be reached never takes tokens on a ring of its own (before, it
/// founded a one-node cluster after 3 s, split from the real one); once its seed comes up, it
/// joins that seed's ring.
#[test]
fn a_node_that_cannot_reach_its_seeds_never_starts_a_ring_of_its_own() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = certs(&dir.path().join("certs"), &["node1", "node2"]);
    // An address nobody listens on (yet).
    let seed = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp").local_addr().expect("addr");
    let lonely = start(&dir.path().join("node2"), &certs.join("node2"), "127.0.0.1:0", &[seed]);
    let waited = std::time::Instant::now();
    while waited.elapsed() < Duration::from_secs(6) {
        let s = lonely.status().expect("status");
        assert_eq!(
            (s.ring.tokens, s.ring.status.as_deref()),
            (0, None),
            "a node cut off from its seeds took tokens; log:\n{}",
            log_of(&lonely.data)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The seed comes up (it has no seeds itself, so it may found the cluster).
    let founder = start(&dir.path().join("node1"), &certs.join("node1"), &seed.to_string(), &[]);
    let joined = wait_for(Duration::from_secs(60), || {
        let s = lonely.status()?;
        (s.ring.nodes == 2 && s.ring.status.as_deref() == Some("normal") && s.converged)
            .then_some(s)
    });
    assert!(
        joined.is_some(),
        "the node did not join its seed's ring; logs:\n{}\n---\n{}",
        log_of(&lonely.data),
        log_of(&founder.data)
    );
}

/// A node started alone (no seeds) founds a one-node ring: it is `normal` with its tokens within
/// seconds. Before, nothing rebuilt a lone node's ring view after it took its tokens (no gossip
/// event came), so its ring stayed empty and every request was `unavailable`.
#[test]
fn a_node_started_alone_founds_its_ring() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = certs(&dir.path().join("certs"), &["node1"]);
    let alone = start(&dir.path().join("node1"), &certs.join("node1"), "127.0.0.1:0", &[]);
    let ready = wait_for(Duration::from_secs(10), || {
        let s = alone.status()?;
        (s.ring.nodes == 1 && s.ring.status.as_deref() == Some("normal") && s.ring.tokens > 0)
            .then_some(s)
    });
    assert!(ready.is_some(), "a lone node never founded its ring; log:\n{}", log_of(&alone.data));
}

/// Leaving a ring of N nodes (N = 3 copies of every key) would leave every key with fewer than
/// N copies: the leave is refused with the reason, and the node stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leave_that_would_leave_fewer_than_n_copies_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nodes = cluster(dir.path(), 3);
    let refs: Vec<&Node> = nodes.iter().collect();
    let ready = wait_for(Duration::from_secs(60), || {
        nodes
            .iter()
            .all(|n| {
                n.status().is_some_and(|s| {
                    s.ring.nodes == 3 && s.ring.status.as_deref() == Some("normal")
                })
            })
            .then_some(())
            .filter(|_| all_see(&refs, 3))
    });
    assert!(ready.is_some(), "cluster not ready");
    let client = client(&nodes[0].certs).await;
    match client.request(nodes[0].addrs.listen, Leave.into_request()).await {
        Ok(Response::Error { message, .. }) => {
            assert!(message.contains("fewer than the 3 copies"), "{message}")
        }
        other => panic!("the leave was not refused: {other:?}"),
    }
    std::thread::sleep(Duration::from_secs(1));
    let s = nodes[0].status().expect("still running");
    assert_eq!(s.ring.status.as_deref(), Some("normal"));
}

/// Every peer RPC, as an attacker holding a client certificate would send it: a replica write of
/// `victim` ten years ahead (read repair would spread it and no later write could beat it), a
/// hint for a made-up node, reads, scans, gossip, a clock probe, a leave, a removal, a stream.
fn peer_rpcs() -> Vec<Request> {
    let ten_years_ms = 10 * 365 * 86_400_000u64;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    let forged = Record {
        key: b"victim".to_vec(),
        value: Some(b"forged".to_vec()),
        version: Version { ts: (now_ms + ten_years_ms) << 16, node: NodeId(7) },
    };
    vec![
        ReplicaWrite(vec![forged.clone()]).into_request(),
        ReplicaHint { target: NodeId(0xdead_beef), records: vec![forged] }.into_request(),
        ReplicaRead(b"victim".to_vec()).into_request(),
        ReplicaReadMany(vec![starling_wire::Key(b"victim".to_vec())]).into_request(),
        ReplicaVersions(vec![starling_wire::Key(b"victim".to_vec())]).into_request(),
        ReplicaScan { start: 0, end: 0, after: None, limit: 10 }.into_request(),
        Request::Peer(PeerRequest::Gossip(vec![1, 2, 3])),
        Clock.into_request(),
        Leave.into_request(),
        starling_wire::repair::RemoveNode { node: "00".into() }.into_request(),
        starling_wire::repair::RepairStep(starling_wire::repair::RepairRequest::StreamPending)
            .into_request(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_gets_the_client_api_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nodes = cluster(dir.path(), 3);
    let refs: Vec<&Node> = nodes.iter().collect();
    assert!(wait_for(Duration::from_secs(20), || ring_ready(&refs, 3).then_some(())).is_some());
    let target = nodes[0].addrs.listen;
    let attacker = client(&dir.path().join("certs/client")).await;
    let rpcs = peer_rpcs();
    for req in &rpcs {
        assert!(req.is_peer_rpc(), "{req:?}");
        let resp = attacker.request(target, req.clone()).await.expect("answer");
        match &resp {
            Response::Error { code: ErrorCode::Forbidden, message } => {
                assert!(message.contains("node certificate"), "{message}")
            }
            other => panic!("{req:?} from a client certificate was answered {other:?}"),
        }
    }
    // The client API works for the same certificate, and the forged write did not land: a put
    // of victim now is the newest, and reads back.
    let put = Put {
        key: b"victim".to_vec(),
        value: Some(b"real".to_vec()),
        consistency: starling_wire::Consistency::Quorum,
    }
    .into_request();
    let resp = attacker.request(target, put).await.expect("put");
    assert!(
        matches!(resp, Response::Kv(KvResponse::Written(Written { superseded: None, .. }))),
        "{resp:?}"
    );
    let get = Get { key: b"victim".to_vec(), consistency: starling_wire::Consistency::All }
        .into_request();
    match attacker.request(target, get).await.expect("get") {
        Response::Kv(KvResponse::Value(Value { record: Some(r), .. })) => {
            assert_eq!(r.value.as_deref(), Some(&b"real"[..]))
        }
        other => panic!("victim reads back {other:?}"),
    }
    // Counted in /status (published with the next status snapshot) and /metrics.
    let n = rpcs.len() as u64;
    let tls = wait_for(Duration::from_secs(5), || {
        nodes[0].status().and_then(|s| s.tls).filter(|t| t.refused_peer_rpcs >= n)
    })
    .expect("refusals counted in /status");
    assert_eq!(tls.refused_peer_rpcs, n);
    assert_eq!(tls.role, "node");
    assert!(tls.expires_in_days > 20.0 && tls.expires_in_days <= 31.0, "{}", tls.expires_in_days);
    let metrics = process::http_get(nodes[0].addrs.http, "/metrics").expect("metrics");
    assert!(
        metrics.contains(&format!("starling_refused_peer_rpcs_total {}", rpcs.len())),
        "{metrics}"
    );
    // A node certificate gets the peer API.
    let peer = client(&nodes[1].certs).await;
    let answer = peer.call(target, ReplicaRead(b"victim".to_vec())).await.expect("read");
    assert!(matches!(answer, ReadAnswer::Found(_)), "{answer:?}");
    peer.close().await;
    attacker.close().await;

    // A node will not run with a client certificate.
    let data = dir.path().join("impostor");
    let client_certs = dir.path().join("certs/client");
    let err = refused_with_certs(&data, &client_certs);
    assert!(err.contains("not a node certificate"), "{err}");
}

/// Issues `name` into `dir/name` from the CA in `ca_dir`, valid from `from_day` to `to_day`
/// (days from today).
fn issue_valid(
    ca_dir: &Path,
    dir: &Path,
    name: &str,
    from_day: i64,
    to_day: i64,
) -> std::path::PathBuf {
    use starling_node::cert;
    let read = |f: &str| std::fs::read_to_string(ca_dir.join(f)).expect("ca file");
    let ca = cert::Ca::from_pem(&read(cert::CA_CERT_FILE), &read(cert::CA_KEY_FILE), ca_dir)
        .expect("ca");
    let today = cert::Validity::days_from_now(0).not_after_day;
    let validity =
        cert::Validity { not_before_day: today + from_day, not_after_day: today + to_day };
    let issued = ca.issue(name, &[], cert::Role::Node, validity).expect("issue");
    let out = dir.join(name);
    std::fs::create_dir_all(&out).expect("dir");
    std::fs::write(out.join(cert::CA_CERT_FILE), read(cert::CA_CERT_FILE)).expect("write");
    std::fs::write(out.join(cert::NODE_CERT_FILE), issued.cert_pem).expect("write");
    std::fs::write(out.join(cert::NODE_KEY_FILE), issued.key_pem).expect("write");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_and_not_yet_valid_certificates_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nodes = cluster(dir.path(), 1);
    let target = nodes[0].addrs.listen;
    let ca_dir = dir.path().join("certs/ca");
    let expired = issue_valid(&ca_dir, dir.path(), "expired", -30, -2);
    let future = issue_valid(&ca_dir, dir.path(), "future", 2, 30);
    let fine = issue_valid(&ca_dir, dir.path(), "fine", -1, 30);
    for (what, certs) in [("expired", &expired), ("not yet valid", &future)] {
        let c = client(certs).await;
        let r = c.request(target, GetStatus.into_request()).await;
        assert!(r.is_err(), "a client with an {what} certificate was served: {r:?}");
        c.close().await;
        // ... and a node will not start with one.
        let data = dir.path().join(format!("data-{}", what.replace(' ', "-")));
        let err = refused_with_certs(&data, certs);
        let expect = if what == "expired" { "expired" } else { "not valid yet" };
        assert!(err.contains(expect), "{what}: {err}");
    }
    let c = client(&fine).await;
    assert!(matches!(c.request(target, GetStatus.into_request()).await, Ok(Response::Status(_))));
    c.close().await;
}
