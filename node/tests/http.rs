//! The HTTP surface over a real loopback socket: `/status`, `/metrics`, `/ready`, `/history`, `/`,
//! 404s, live updates through the watch channel, and graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use starling_node::http::{self, HttpState, Metrics};
use starling_node::status::{GossipStatus, MemberStatus, RingMemberStatus, RingStatus, Status};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

fn member(n: u8, state: &str, is_self: bool) -> MemberStatus {
    MemberStatus {
        node_id: format!("{n:02x}{}", "ab".repeat(15)),
        addr: format!("127.0.0.1:{}", 7000 + u16::from(n)),
        state: state.to_owned(),
        phi: if is_self { 0.0 } else { 0.25 * f64::from(n) },
        incarnation: u64::from(n),
        generation: 1_700_000_000 + u64::from(n),
        zone: Some(format!("z{}", n % 2)),
        digest: Some("d1ge57".to_owned()),
        kafka: None,
        is_self,
    }
}

/// Three alive members, this node first.
fn three_alive() -> Status {
    Status {
        node_id: member(1, "alive", true).node_id,
        generation: 1_700_000_001,
        incarnation: 1,
        addr: "127.0.0.1:7001".to_owned(),
        zone: Some("z1".to_owned()),
        converged: true,
        gossip_converged: true,
        digest: "d1ge57".to_owned(),
        insecure: true,
        tls: None,
        version: "0.1.0".to_owned(),
        uptime_secs: 12.5,
        members: vec![
            member(1, "alive", true),
            member(2, "alive", false),
            member(3, "alive", false),
        ],
        ring: three_node_ring(),
        gossip: GossipStatus {
            rounds: 42,
            messages_sent: 84,
            bytes_sent: 9_000,
            messages_received: 80,
            bytes_received: 8_500,
            refused: 1,
            probes: 40,
            probes_failed: 2,
            refutations: 0,
            local_health: 0,
        },
        kv: Some(starling_node::kv::KvStatus {
            writes: 7,
            hints_pending: 2,
            fallback_writes: 3,
            version_cache_keys: 5,
            ..Default::default()
        }),
        transport: Some(starling_node::status::TransportStatus {
            connections: 2,
            pending_handshakes: 1,
            refused: 476,
            refused_per_address: 40,
            retries: 1468,
            handshake_timeouts: 32,
        }),
        meta: None,
        topics: vec![starling_wire::status::PartitionStatus {
            topic: "events".into(),
            partition: 0,
            role: "leader".into(),
            leader_epoch: 3,
            log_end: 10,
            high_watermark: 9,
            size_bytes: 4096,
            ..Default::default()
        }],
        repair: None,
        kafka: None,
        history: None,
    }
}

/// A ring of the three members with N = 3: each replicates everything and owns a third.
fn three_node_ring() -> RingStatus {
    let members: Vec<RingMemberStatus> = (1..=3)
        .map(|n| RingMemberStatus {
            node_id: member(n, "alive", false).node_id,
            status: "normal".to_owned(),
            zone: Some(format!("z{}", n % 2)),
            tokens: 16,
            owned_fraction: 0.3333,
            replicated_fraction: 1.0,
        })
        .collect();
    RingStatus {
        digest: Some("0123456789abcdef".to_owned()),
        agreed: true,
        status: Some("normal".to_owned()),
        tokens: 16,
        nodes: 3,
        replication: 3,
        ownership: 1.0,
        member_digests: members
            .iter()
            .map(|m| (m.node_id.clone(), "0123456789abcdef".to_owned()))
            .collect(),
        members,
        arc_bins: 720,
        arcs: vec![
            vec![(240, 0), (240, 1), (240, 2)],
            vec![(240, 1), (240, 2), (240, 0)],
            vec![(240, 2), (240, 0), (240, 1)],
        ],
    }
}

struct Server {
    base: String,
    publish: watch::Sender<Arc<Status>>,
    metrics: Arc<Metrics>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Server {
    async fn start(status: Status) -> Self {
        let (publish, rx) = watch::channel(Arc::new(status));
        let metrics = Arc::new(Metrics::new());
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let state = HttpState { status: rx, metrics: Arc::clone(&metrics) };
        let task = tokio::spawn(http::serve(listener, state, async move {
            let _ = stopped.await;
        }));
        Server { base: format!("http://{addr}"), publish, metrics, stop: Some(stop), task }
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        client().get(format!("{}{path}", self.base)).send().await.expect("GET")
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(5)).build().expect("client")
}

fn content_type(resp: &reqwest::Response) -> String {
    resp.headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn status_round_trips_as_json() {
    let server = Server::start(three_alive()).await;
    let resp = server.get("/status").await;
    assert_eq!(resp.status(), 200);
    assert!(content_type(&resp).starts_with("application/json"));
    let got: Status = resp.json().await.expect("status JSON");
    assert_eq!(got, three_alive());
}

#[tokio::test]
async fn status_json_uses_the_documented_field_names() {
    let server = Server::start(three_alive()).await;
    let raw: serde_json::Value = server.get("/status").await.json().await.expect("JSON");
    // The page and scripts read these names; `self` is renamed from `is_self`.
    assert_eq!(raw["members"][0]["self"], true);
    assert_eq!(raw["members"][1]["state"], "alive");
    assert_eq!(raw["converged"], true);
    assert_eq!(raw["gossip"]["rounds"], 42);
    // The ring picture: shares per ring member, arcs as `[slices, member]` runs per rank.
    let ring = &raw["ring"];
    assert_eq!(ring["members"].as_array().map(Vec::len), Some(3));
    assert_eq!(ring["members"][0]["owned_fraction"], 0.3333);
    assert_eq!(ring["members"][0]["replicated_fraction"], 1.0);
    assert_eq!(ring["members"][0]["tokens"], 16);
    assert_eq!(ring["arc_bins"], 720);
    assert_eq!(ring["arcs"][1][0], serde_json::json!([240, 1]));
    assert_eq!(ring["member_digests"][member(2, "alive", false).node_id], "0123456789abcdef");
}

/// A status from before the ring picture (no `members`, `arcs`, ... in `ring`) still decodes.
#[test]
fn status_without_the_ring_picture_decodes() {
    let mut old = serde_json::to_value(three_alive()).expect("encode");
    let ring = old["ring"].as_object_mut().expect("ring object");
    for field in ["members", "arc_bins", "arcs", "member_digests"] {
        ring.remove(field);
    }
    let got: Status = serde_json::from_value(old).expect("decode");
    assert!(got.ring.members.is_empty() && got.ring.arcs.is_empty());
    assert_eq!(got.ring.digest, three_alive().ring.digest);
}

/// `/history` is sampled every second from the node's own figures: the client requests it
/// coordinated (rate and p99 latency, replica traffic left out) and each member's view.
#[tokio::test]
async fn history_samples_operations_and_member_views() {
    let server = Server::start(three_alive()).await;
    let mut history = serde_json::Value::Null;
    for _ in 0..50 {
        for _ in 0..10 {
            server.metrics.observe_rpc("kv_get", Duration::from_millis(4));
            server.metrics.observe_rpc("kv_put", Duration::from_millis(2));
            server.metrics.observe_rpc("replica_write", Duration::from_secs(1));
        }
        let resp = server.get("/history").await;
        assert_eq!(resp.status(), 200);
        assert!(content_type(&resp).starts_with("application/json"));
        assert_eq!(resp.headers()[reqwest::header::CACHE_CONTROL], "no-store");
        history = resp.json().await.expect("history JSON");
        if history["t"].as_array().map_or(0, Vec::len) >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let samples = history["t"].as_array().map_or(0, Vec::len);
    assert!(samples >= 2, "fewer than 2 samples after 5 s: {history}");
    assert_eq!(history["interval_ms"], 1000);
    for column in ["reads", "writes", "failures", "read_p99_ms", "write_p99_ms", "converged"] {
        assert_eq!(history[column].as_array().map(Vec::len), Some(samples), "{column}");
    }
    // The first sample has no interval before it; the second has the requests above.
    assert!(history["reads"][0].is_null());
    assert!(history["reads"][1].as_f64().is_some_and(|r| r > 0.0), "{history}");
    assert!(history["writes"][1].as_f64().is_some_and(|w| w > 0.0), "{history}");
    let p99 = history["read_p99_ms"][1].as_f64().expect("read p99");
    assert!((3.9..=4.1).contains(&p99), "replica writes left out: {p99}");
    assert!(history["write_p99_ms"][1].as_f64().is_some_and(|l| l < 2.1));
    assert_eq!(history["failures"][1], 0.0);
    assert_eq!(history["converged"][1], true);
    // One row per member, each one run of the same view since the first sample.
    let members = history["members"].as_array().expect("members");
    assert_eq!(members.len(), 3);
    for m in members {
        let runs = m["runs"].as_array().expect("runs");
        assert_eq!(runs.len(), 1, "{m}");
        assert_eq!(runs[0][0], history["t"][0]);
        assert_eq!(runs[0][2], 0);
    }
    assert_eq!(
        history["views"][0],
        serde_json::json!({"state": "alive", "digest": "d1ge57", "ring": "0123456789abcdef"})
    );
}

#[tokio::test]
async fn status_follows_the_watch_channel() {
    let server = Server::start(three_alive()).await;
    let mut next = three_alive();
    next.members[2].state = "suspect".to_owned();
    next.converged = false;
    next.gossip.rounds = 43;
    server.publish.send_replace(Arc::new(next.clone()));

    let got: Status = server.get("/status").await.json().await.expect("JSON");
    assert_eq!(got, next);
    let metrics = server.get("/metrics").await.text().await.expect("text");
    assert!(metrics.contains("starling_members{state=\"alive\"} 2\n"), "{metrics}");
    assert!(metrics.contains("starling_members{state=\"suspect\"} 1\n"), "{metrics}");
    assert!(metrics.contains("starling_converged 0\n"), "{metrics}");
    assert!(metrics.contains("starling_gossip_rounds_total 43\n"), "{metrics}");
    assert!(metrics.contains("starling_kv_writes_total 7\n"), "{metrics}");
    assert!(metrics.contains("starling_kv_hints_pending 2\n"), "{metrics}");
    assert!(metrics.contains("starling_topic_partitions_leading 1\n"), "{metrics}");
    assert!(metrics.contains("starling_topic_log_bytes 4096\n"), "{metrics}");
    assert!(metrics.contains("starling_kv_fallback_writes_total 3\n"), "{metrics}");
    assert!(metrics.contains("starling_kv_version_cache_keys 5\n"), "{metrics}");
}

#[tokio::test]
async fn metrics_expose_the_snapshot_and_rpc_latency() {
    let server = Server::start(three_alive()).await;
    server.metrics.observe_rpc("echo", Duration::from_micros(150));
    server.metrics.observe_rpc("echo", Duration::from_millis(3));
    server.metrics.observe_rpc("gossip", Duration::from_millis(1));

    let resp = server.get("/metrics").await;
    assert_eq!(resp.status(), 200);
    assert!(content_type(&resp).starts_with("application/openmetrics-text"));
    let text = resp.text().await.expect("text");
    for line in [
        "starling_members{state=\"alive\"} 3",
        "starling_members{state=\"suspect\"} 0",
        "starling_members{state=\"down\"} 0",
        "starling_members{state=\"left\"} 0",
        "starling_gossip_rounds_total 42",
        "starling_gossip_messages_sent_total 84",
        "starling_gossip_bytes_sent_total 9000",
        "starling_gossip_messages_received_total 80",
        "starling_gossip_bytes_received_total 8500",
        "starling_gossip_refused_total 1",
        "starling_gossip_probes_total 40",
        "starling_gossip_probes_failed_total 2",
        "starling_gossip_refutations_total 0",
        "starling_gossip_local_health 0",
        "starling_converged 1",
        "starling_insecure 1",
        "starling_uptime_seconds 12.5",
        "starling_quic_connections 2",
        "starling_quic_pending_handshakes 1",
        "starling_quic_refused_total 476",
        "starling_quic_refused_per_address_total 40",
        "starling_quic_retries_total 1468",
        "starling_quic_handshake_timeouts_total 32",
        "# TYPE starling_gossip_rounds counter",
        "# TYPE starling_rpc_duration_seconds histogram",
        "starling_rpc_duration_seconds_count{kind=\"echo\"} 2",
        "starling_rpc_duration_seconds_count{kind=\"gossip\"} 1",
        "# EOF",
    ] {
        assert!(text.lines().any(|l| l == line), "missing line {line:?} in:\n{text}");
    }
}

#[tokio::test]
async fn ready_only_when_converged_and_normal_on_the_ring() {
    let normal = |mut s: Status| {
        s.ring.status = Some("normal".to_owned());
        s
    };
    let server = Server::start(normal(three_alive())).await;
    let resp = server.get("/ready").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()[reqwest::header::CACHE_CONTROL], "no-store");
    assert_eq!(resp.text().await.expect("text"), "ready (converged: true, ring: normal)\n");

    // Not converged, joining, leaving, no tokens yet: 503, and the body says why.
    for (converged, ring, body) in [
        (false, Some("normal"), "not ready (converged: false, ring: normal)\n"),
        (true, Some("joining"), "not ready (converged: true, ring: joining)\n"),
        (true, Some("leaving"), "not ready (converged: true, ring: leaving)\n"),
        (true, None, "not ready (converged: true, ring: none)\n"),
    ] {
        let mut s = three_alive();
        s.converged = converged;
        s.ring.status = ring.map(str::to_owned);
        server.publish.send_replace(Arc::new(s));
        let resp = server.get("/ready").await;
        assert_eq!(resp.status(), 503, "{body}");
        assert_eq!(resp.text().await.expect("text"), body);
    }

    server.publish.send_replace(Arc::new(normal(three_alive())));
    assert_eq!(server.get("/ready").await.status(), 200);
}

#[tokio::test]
async fn index_is_one_self_contained_page() {
    let server = Server::start(three_alive()).await;
    let resp = server.get("/").await;
    assert_eq!(resp.status(), 200);
    assert!(content_type(&resp).starts_with("text/html"));
    let html = resp.text().await.expect("text");
    assert!(html.contains("id=\"members\""));
    assert!(html.contains("data-state"));
    assert!(html.contains("fetch(\"status\""));
    assert!(html.contains("fetch(\"history\""));
    for id in ["id=\"ring\"", "id=\"spark-ops\"", "id=\"spark-latency\"", "id=\"timeline\""] {
        assert!(html.contains(id), "page has no {id}");
    }
    // Works offline: nothing is loaded from another host.
    for external in ["http://", "https://", "//cdn", "src=\""] {
        assert!(!html.contains(external), "page references {external:?}");
    }
}

#[tokio::test]
async fn unknown_paths_are_404_and_routes_are_read_only() {
    let server = Server::start(three_alive()).await;
    for path in ["/nope", "/status/extra", "/metrics.txt", "/index.html"] {
        assert_eq!(server.get(path).await.status(), 404, "{path}");
    }
    for path in ["/", "/status", "/metrics", "/ready", "/history"] {
        let resp =
            client().post(format!("{}{path}", server.base)).body("x").send().await.expect("POST");
        assert_eq!(resp.status(), 405, "POST {path}");
    }
}

#[tokio::test]
async fn serve_returns_after_shutdown() {
    let mut server = Server::start(three_alive()).await;
    assert_eq!(server.get("/status").await.status(), 200);
    let _ = server.stop.take().expect("stop").send(());
    let result = tokio::time::timeout(Duration::from_secs(5), server.task)
        .await
        .expect("serve stops within 5 s")
        .expect("serve task");
    assert!(result.is_ok(), "{result:?}");
}

/// Clients that connect and send nothing, or half a request head, hold a connection slot only
/// until the header-read timeout. More of them than the server serves at once, all kept open by
/// their side, do not stop `/status` and `/metrics` from answering, and the server closes them.
#[tokio::test]
async fn idle_and_half_sent_connections_do_not_block_status() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let server = Server::start(three_alive()).await;
    let addr = server.base.trim_start_matches("http://").to_owned();
    let mut held = Vec::new();
    for i in 0..http::MAX_HTTP_CONNECTIONS + 16 {
        let mut s = tokio::net::TcpStream::connect(&addr).await.expect("connect");
        if i % 4 == 0 {
            s.write_all(b"GET /status HTTP/1.1\r\nhost: x\r\nx-slow: ").await.expect("half a head");
        }
        held.push(s);
    }
    // Generous: a request waits at most for one header-read timeout to free a slot.
    let deadline = 3 * http::HEADER_READ_TIMEOUT;
    let patient = reqwest::Client::builder().no_proxy().timeout(deadline).build().expect("client");
    for path in ["/status", "/metrics", "/status"] {
        let resp = patient.get(format!("{}{path}", server.base)).send().await;
        match resp {
            Ok(r) => assert_eq!(r.status(), 200, "{path}"),
            Err(e) => panic!("{path} with {} idle connections open: {e}", held.len()),
        }
    }
    // The server closed the first idle ones (it answers nothing, or an error, then EOF).
    for s in held.iter_mut().take(8) {
        let mut buf = vec![0; 4096];
        let closed = tokio::time::timeout(deadline, async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "an idle connection was not closed by the server");
    }
}

/// At the connection cap, a new client takes the place of the connection idle longest instead of
/// waiting for the header-read timeout to free one: 64 keep-alive connections that each
/// completed a request stay open, `/status` on a new one answers at once, and the first of them
/// (idle longest) is the one closed.
#[tokio::test]
async fn a_new_connection_at_the_cap_closes_the_longest_idle_one() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Reads one response (head and `content-length` bytes of body) and returns its status line.
    async fn response(s: &mut tokio::net::TcpStream) -> String {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .expect("content-length");
                if got.len() >= end + 4 + len {
                    return head.lines().next().unwrap_or_default().to_owned();
                }
            }
            let n = s.read(&mut buf).await.expect("read a response");
            assert!(n > 0, "closed before the response was complete");
            got.extend_from_slice(&buf[..n]);
        }
    }

    let server = Server::start(three_alive()).await;
    let addr = server.base.trim_start_matches("http://").to_owned();
    let mut held = Vec::new();
    for _ in 0..http::MAX_HTTP_CONNECTIONS {
        let mut s = tokio::net::TcpStream::connect(&addr).await.expect("connect");
        s.write_all(b"GET /ready HTTP/1.1\r\nhost: x\r\n\r\n").await.expect("request");
        assert_eq!(response(&mut s).await, "http/1.1 200 ok");
        held.push(s);
    }
    // Well under the header-read timeout, which would otherwise free a slot.
    let prompt = http::HEADER_READ_TIMEOUT / 3;
    let started = std::time::Instant::now();
    let impatient = reqwest::Client::builder().no_proxy().timeout(prompt).build().expect("client");
    match impatient.get(format!("{}/status", server.base)).send().await {
        Ok(r) => assert_eq!(r.status(), 200),
        Err(e) => panic!("/status with {} idle connections open: {e}", held.len()),
    }
    assert!(started.elapsed() < prompt, "{:?}", started.elapsed());
    // The first connection, idle longest, was closed (EOF, or a reset)...
    let mut buf = [0u8; 64];
    let closed = tokio::time::timeout(Duration::from_secs(2), held[0].read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0) | Err(_))),
        "the longest-idle connection is still open: {closed:?}"
    );
    // ... and only it: the others are open and still served.
    for (i, s) in held.iter_mut().enumerate().skip(1) {
        match s.try_read(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            other => panic!("connection {i} was closed too: {other:?}"),
        }
    }
    let last = held.last_mut().expect("held");
    last.write_all(b"GET /ready HTTP/1.1\r\nhost: x\r\n\r\n").await.expect("request");
    assert_eq!(response(last).await, "http/1.1 200 ok");
}
