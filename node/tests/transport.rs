//! One conformance suite, run against the QUIC and the in-memory transport, on both runtime
//! flavours.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use starling_node::tls::TlsConfigs;
use starling_node::transport::mem::MemNetwork;
use starling_node::transport::quic::QuicTransport;
use starling_node::transport::{Transport, TransportConfig, TransportError};
use starling_wire::{
    Call, Echo, ErrorCode, GetStatus, Leave, PeerRequest, Request, Response, MAX_ONEWAY_BODY,
    MAX_REQUEST_BODY, MAX_RESPONSE_BODY,
};
use tokio::sync::mpsc;

/// Makes nodes of one transport kind.
trait Harness {
    type T: Transport;
    async fn node(&mut self, svc: TestService, config: TransportConfig) -> Self::T;
    /// An address where no node listens.
    fn nobody(&self) -> SocketAddr;
}

struct Quic {
    dir: tempfile::TempDir,
    n: usize,
}

impl Harness for Quic {
    type T = QuicTransport;
    async fn node(&mut self, svc: TestService, config: TransportConfig) -> QuicTransport {
        self.n += 1;
        let tls: TlsConfigs = issued_configs(self.dir.path(), &format!("node{}", self.n));
        QuicTransport::bind(loopback(), &tls, config, svc).await.unwrap()
    }
    fn nobody(&self) -> SocketAddr {
        // Bound then released: nothing listens there now.
        let s = std::net::UdpSocket::bind(loopback()).unwrap();
        s.local_addr().unwrap()
    }
}

struct Mem(MemNetwork);

impl Harness for Mem {
    type T = starling_node::transport::mem::MemTransport;
    async fn node(&mut self, svc: TestService, config: TransportConfig) -> Self::T {
        self.0.bind(svc, config)
    }
    fn nobody(&self) -> SocketAddr {
        "127.0.0.1:65000".parse().unwrap()
    }
}

fn config() -> TransportConfig {
    TransportConfig {
        request_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(1),
        ..Default::default()
    }
}

struct Pair<T> {
    client: Arc<T>,
    server: Arc<T>,
    server_calls: Arc<std::sync::atomic::AtomicUsize>,
    gossip: mpsc::UnboundedReceiver<(starling_node::transport::PeerInfo, Vec<u8>)>,
}

async fn pair<H: Harness>(h: &mut H) -> Pair<H::T> {
    let (svc, gossip) = TestService::new();
    let server_calls = svc.calls.clone();
    let server = Arc::new(h.node(svc, config()).await);
    let (svc, _) = TestService::new();
    let client = Arc::new(h.node(svc, config()).await);
    Pair { client, server, server_calls, gossip }
}

async fn request_response<H: Harness>(h: &mut H) {
    let p = pair(h).await;
    let to = p.server.local_addr();
    let resp = p.client.request(to, Echo(b"hello".to_vec()).into_request()).await.unwrap();
    assert_eq!(resp, Response::Echo(b"hello".to_vec()));
    // The server sees the client's own address (a node dials from its listen socket).
    let resp = p.client.request(to, GetStatus.into_request()).await.unwrap();
    assert_eq!(resp, Response::Status(p.client.local_addr().to_string().into_bytes()));
    assert_eq!(p.client.request(to, Leave.into_request()).await.unwrap(), Response::Ok);
    // And the other way round, over whichever connection the transport picks.
    let back =
        p.server.request(p.client.local_addr(), Echo(vec![7; 3]).into_request()).await.unwrap();
    assert_eq!(back, Response::Echo(vec![7; 3]));
}

async fn many_pipelined<H: Harness>(h: &mut H) {
    let p = pair(h).await;
    let to = p.server.local_addr();
    let calls = (0..2000u32).map(|i| {
        let client = p.client.clone();
        async move { (i, client.request(to, Echo(i.to_be_bytes().to_vec()).into_request()).await) }
    });
    let results = futures_util::future::join_all(calls).await;
    for (i, r) in results {
        assert_eq!(r.unwrap(), Response::Echo(i.to_be_bytes().to_vec()), "request {i}");
    }
    // Large frames pipelined with small ones.
    let big = vec![3u8; MAX_RESPONSE_BODY - 64];
    let (a, b) = tokio::join!(
        p.client.request(to, Echo(big.clone()).into_request()),
        p.client.request(to, Echo(vec![1]).into_request())
    );
    assert_eq!(a.unwrap(), Response::Echo(big));
    assert_eq!(b.unwrap(), Response::Echo(vec![1]));
}

async fn one_way_delivery<H: Harness>(h: &mut H) {
    let mut p = pair(h).await;
    let to = p.server.local_addr();
    for i in 0..500u32 {
        p.client
            .send_one_way(to, Request::Peer(PeerRequest::Gossip(i.to_be_bytes().to_vec())))
            .await
            .unwrap();
    }
    for i in 0..500u32 {
        let (from, body) =
            tokio::time::timeout(Duration::from_secs(5), p.gossip.recv()).await.unwrap().unwrap();
        assert_eq!(from.addr, p.client.local_addr());
        assert_eq!(body, i.to_be_bytes().to_vec(), "one-way messages arrive in order");
    }
    // Over the one-way limit: refused locally, nothing sent, the stream stays usable.
    let err = p
        .client
        .send_one_way(to, Request::Peer(PeerRequest::Gossip(vec![0; MAX_ONEWAY_BODY])))
        .await;
    assert!(matches!(err, Err(TransportError::Frame { .. })), "{err:?}");
    p.client.send_one_way(to, Request::Peer(PeerRequest::Gossip(vec![9]))).await.unwrap();
    let (_, body) = p.gossip.recv().await.unwrap();
    assert_eq!(body, vec![9]);
}

async fn timeouts<H: Harness>(h: &mut H) {
    let p = pair(h).await;
    let to = p.server.local_addr();
    p.client.request(to, Leave.into_request()).await.unwrap();
    let started = tokio::time::Instant::now();
    let err = p
        .client
        .request_within(to, Echo(SLOW.to_vec()).into_request(), Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(started.elapsed() < SLOW_FOR, "gave up at the deadline, not after the handler");
    assert!(matches!(err, TransportError::Timeout { peer, .. } if peer == to), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&to.to_string()) && msg.contains("200ms"), "{msg}");
    // A slow request does not hold up the ones behind it on the same stream.
    let slow = p.client.request(to, Echo(SLOW.to_vec()).into_request());
    let fast = async {
        let t = tokio::time::Instant::now();
        let r = p.client.request(to, Echo(vec![1]).into_request()).await;
        (r, t.elapsed())
    };
    let (slow, (fast, fast_took)) = tokio::join!(slow, fast);
    assert_eq!(fast.unwrap(), Response::Echo(vec![1]));
    assert!(fast_took < SLOW_FOR, "fast request waited {fast_took:?}");
    assert_eq!(slow.unwrap(), Response::Echo(SLOW.to_vec()));
    assert!(p.server_calls.load(std::sync::atomic::Ordering::Relaxed) >= 4);
}

async fn unreachable_peer<H: Harness>(h: &mut H) {
    let p = pair(h).await;
    let nobody = h.nobody();
    let started = tokio::time::Instant::now();
    let err = p
        .client
        .request_within(nobody, GetStatus.into_request(), Duration::from_secs(3))
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(4));
    match &err {
        TransportError::Connect { peer, .. } | TransportError::Timeout { peer, .. } => {
            assert_eq!(*peer, nobody)
        }
        other => panic!("unexpected error {other:?}"),
    }
    eprintln!("unreachable peer: {err}");
    assert!(err.to_string().contains(&nobody.to_string()), "{err}");
    // The transport still works for reachable peers.
    let to = p.server.local_addr();
    assert_eq!(p.client.request(to, Leave.into_request()).await.unwrap(), Response::Ok);
}

async fn peer_restart<H: Harness>(h: &mut H) {
    let p = pair(h).await;
    let to = p.server.local_addr();
    p.client.request(to, Leave.into_request()).await.unwrap();
    p.server.close().await;
    let err = p.client.request_within(to, Leave.into_request(), Duration::from_secs(2)).await;
    assert!(err.is_err(), "a closed node does not answer");
    // A response too large to send becomes an error response, not a hang or a broken stream.
    let p2 = pair(h).await;
    let to2 = p2.server.local_addr();
    let resp = p2.client.request(to2, Echo(HUGE.to_vec()).into_request()).await.unwrap();
    assert!(
        matches!(&resp, Response::Error { code: ErrorCode::Internal, message } if message.contains("limit")),
        "{resp:?}"
    );
    assert_eq!(p2.client.request(to2, Leave.into_request()).await.unwrap(), Response::Ok);
    // A request over the limit is refused before it is sent.
    let err =
        p2.client.request(to2, Echo(vec![0; MAX_REQUEST_BODY]).into_request()).await.unwrap_err();
    assert!(matches!(err, TransportError::Frame { .. }), "{err:?}");
}

async fn suite<H: Harness>(mut h: H) {
    request_response(&mut h).await;
    many_pipelined(&mut h).await;
    one_way_delivery(&mut h).await;
    timeouts(&mut h).await;
    unreachable_peer(&mut h).await;
    peer_restart(&mut h).await;
}

/// A new connection starts with the configured congestion window; path MTU discovery grows a
/// loopback connection's datagrams past Ethernet's 1,452 bytes, up to the configured payload, and
/// a large transfer works at that size (ten datagrams of it fit in one GSO send); a transport
/// told to stay at 1,452 does.
async fn datagrams_grow_on_loopback(max_udp_payload: u16, expect: std::ops::RangeInclusive<u16>) {
    let mut h = quic();
    let (svc, _) = TestService::new();
    let cfg = TransportConfig { max_udp_payload, ..config() };
    let server = h.node(svc, cfg.clone()).await;
    let (svc, _) = TestService::new();
    let client = h.node(svc, cfg).await;
    let to = server.local_addr();
    // A new connection starts with the configured congestion window.
    let hello = client.request(to, Echo(b"hello".to_vec()).into_request()).await.unwrap();
    assert_eq!(hello, Response::Echo(b"hello".to_vec()));
    let window = client.congestion_window(to).unwrap();
    assert!(window >= config().initial_congestion_window, "congestion window {window}");
    let big = vec![5u8; (1 << 20).min(MAX_RESPONSE_BODY - 64)];
    let mut mtu = 0;
    for _ in 0..50 {
        let back = client.request(to, Echo(big.clone()).into_request()).await.unwrap();
        assert_eq!(back, Response::Echo(big.clone()));
        mtu = client.path_mtu(to).unwrap();
        if mtu >= *expect.start() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(expect.contains(&mtu), "path MTU {mtu}, expected within {expect:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn quic_datagrams_grow_to_the_configured_payload() {
    assert!(config().initial_congestion_window > 12_000);
    let default = TransportConfig::default().max_udp_payload;
    assert!(default > 1452 && default <= starling_node::transport::MAX_UDP_PAYLOAD);
    datagrams_grow_on_loopback(default, default - 100..=default).await;
    datagrams_grow_on_loopback(1452, 1400..=1452).await;
}

fn quic() -> Quic {
    Quic { dir: tempfile::tempdir().unwrap(), n: 0 }
}

#[tokio::test(flavor = "current_thread")]
async fn quic_current_thread() {
    suite(quic()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_multi_thread() {
    suite(quic()).await;
}

#[tokio::test(flavor = "current_thread")]
async fn mem_current_thread() {
    suite(Mem(MemNetwork::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mem_multi_thread() {
    suite(Mem(MemNetwork::new())).await;
}
