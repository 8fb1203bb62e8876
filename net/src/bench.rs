//! `starling bench transport`: two QUIC endpoints with mutual TLS on loopback, `Echo` requests
//! pipelined at a fixed depth. The figures compare with `docs/CEILINGS.md`'s transport table
//! (~487,000 requests/s and 2.4 µs of CPU per request, both ends, at 64 in flight, 100 bytes, on a
//! `current_thread` runtime).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use starling_wire::{Call, ClientRequest, Echo, Request, Response};

use crate::cert::Ca;
use crate::tls::{self, TlsMaterial};
use crate::transport::quic::QuicTransport;
use crate::transport::{service_fn, PeerInfo, Transport, TransportConfig, TransportError};

/// Clock ticks per second of `/proc/self/stat` (`USER_HZ`, 100 on every Linux we run on).
const USER_HZ: u64 = 100;

/// What one benchmark run measured.
#[derive(Debug, Clone)]
pub struct BenchReport {
    /// Requests answered.
    pub requests: u64,
    /// Requests that failed.
    pub errors: u64,
    /// Requests kept in flight.
    pub in_flight: usize,
    /// Payload bytes of each request and response.
    pub payload: usize,
    /// Wall time of the measured part.
    pub elapsed: Duration,
    /// Answered requests per second.
    pub requests_per_sec: f64,
    /// Median latency.
    pub p50: Duration,
    /// 99th-percentile latency.
    pub p99: Duration,
    /// Process CPU time (user + system, all threads, both endpoints) of the measured part.
    pub cpu: Duration,
    /// `cpu / requests`: CPU per request for both ends together.
    pub cpu_per_request: Duration,
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} requests ({} errors), {} in flight, {} B payload: {:.0} req/s, p50 {:?}, p99 {:?}, \
             CPU {:.2} µs/request (both ends)",
            self.requests,
            self.errors,
            self.in_flight,
            self.payload,
            self.requests_per_sec,
            self.p50,
            self.p99,
            self.cpu_per_request.as_nanos() as f64 / 1000.0,
        )
    }
}

/// Runs `requests` echo requests of `payload` bytes with `in_flight` outstanding at once, between
/// two endpoints of this process, on the caller's runtime (both ends share it: run it on a
/// `current_thread` runtime to compare with `docs/CEILINGS.md`).
pub async fn transport_bench(
    requests: u64,
    in_flight: usize,
    payload: usize,
) -> Result<BenchReport, TransportError> {
    let in_flight = in_flight.max(1);
    let tls_err = |e: &dyn std::fmt::Display| TransportError::Tls(e.to_string());
    let ca = Ca::generate().map_err(|e| tls_err(&e))?;
    let configs = |name: &str| -> Result<_, TransportError> {
        let issued = ca
            .issue(name, &[], crate::cert::Role::Node, crate::cert::Validity::days_from_now(1))
            .map_err(|e| tls_err(&e))?;
        let material = TlsMaterial::from_pem(&ca.cert_pem(), &issued.cert_pem, &issued.key_pem)
            .map_err(|e| tls_err(&e))?;
        tls::mutual(&material).map_err(|e| tls_err(&e))
    };
    let config = TransportConfig { max_in_flight_per_peer: in_flight, ..Default::default() };
    let localhost = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let echo = service_fn(|_: PeerInfo, req: Request| async move {
        match req {
            Request::Client(ClientRequest::Echo(b)) => Response::Echo(b),
            _ => Response::Ok,
        }
    });
    let server =
        QuicTransport::bind(localhost, &configs("bench-server")?, config.clone(), echo).await?;
    let client = Arc::new(
        QuicTransport::bind(
            localhost,
            &configs("bench-client")?,
            config,
            service_fn(|_, _| async { Response::Ok }),
        )
        .await?,
    );
    let target = server.local_addr();
    let body = vec![0x5a; payload];

    // Warm up: connect, open the stream, let the congestion window grow.
    for _ in 0..(in_flight as u64 * 20).min(requests) {
        client.request(target, Echo(body.clone()).into_request()).await?;
    }

    let next = Arc::new(AtomicU64::new(0));
    let cpu_start = process_cpu();
    let start = Instant::now();
    let mut workers = Vec::with_capacity(in_flight);
    for _ in 0..in_flight {
        let (client, next, body) = (client.clone(), next.clone(), body.clone());
        workers.push(tokio::spawn(async move {
            let mut hist = new_histogram();
            let mut errors = 0u64;
            while next.fetch_add(1, Ordering::Relaxed) < requests {
                let t = Instant::now();
                match client.request(target, Echo(body.clone()).into_request()).await {
                    Ok(_) => {
                        let _ = hist.record(t.elapsed().as_nanos() as u64);
                    }
                    Err(_) => errors += 1,
                }
            }
            (hist, errors)
        }));
    }
    let mut hist = new_histogram();
    let mut errors = 0;
    for w in workers {
        if let Ok((h, e)) = w.await {
            let _ = hist.add(&h);
            errors += e;
        }
    }
    let elapsed = start.elapsed();
    let cpu = process_cpu().saturating_sub(cpu_start);
    client.close().await;
    server.close().await;

    let answered = hist.len();
    Ok(BenchReport {
        requests: answered,
        errors,
        in_flight,
        payload,
        elapsed,
        requests_per_sec: answered as f64 / elapsed.as_secs_f64().max(1e-9),
        p50: Duration::from_nanos(hist.value_at_quantile(0.5)),
        p99: Duration::from_nanos(hist.value_at_quantile(0.99)),
        cpu,
        cpu_per_request: cpu / u32::try_from(answered.max(1)).unwrap_or(u32::MAX),
    })
}

fn new_histogram() -> Histogram<u64> {
    // 1 ns .. 60 s, 3 significant digits: constant, valid bounds.
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds")
}

/// User + system CPU time of the whole process (all threads), from `/proc/self/stat`.
/// Zero where that file does not exist.
pub fn process_cpu() -> Duration {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return Duration::ZERO };
    // Field 2 (comm) may contain spaces; fields are counted from the last ')'. After it come
    // field 3 (state) .. field 14 (utime) and 15 (stime).
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { return Duration::ZERO };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    let total = ticks(14 - 3) + ticks(15 - 3);
    Duration::from_millis(total * 1000 / USER_HZ)
}

/// Starts `count` QUIC handshakes with `target` and never finishes any: one Initial packet each
/// (a ClientHello without a client certificate), sent from one UDP socket that is never read, so
/// the node's answers (its half of each handshake, or a Retry) go unanswered. Each attempt has a
/// connection id of its own, so the node sees `count` clients. Returns the packets sent.
///
/// The load of `scripts/test-quic-flood` and of the transport's flood tests: a node must keep
/// serving real clients through it.
pub fn handshake_flood(target: SocketAddr, count: usize) -> anyhow::Result<usize> {
    let tls = tls::insecure()?;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls.client)?;
    let client = quinn::ClientConfig::new(Arc::new(crypto));
    let bind: SocketAddr = if target.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = std::net::UdpSocket::bind(bind)?;
    let mut endpoint = quinn_proto::Endpoint::new(
        Arc::new(quinn_proto::EndpointConfig::default()),
        None,
        false,
        None,
    );
    let mut buf = Vec::with_capacity(2048);
    let mut sent = 0;
    for _ in 0..count {
        let now = Instant::now();
        let (_, mut conn) = endpoint.connect(now, client.clone(), target, tls::SERVER_NAME)?;
        buf.clear();
        if let Some(t) = conn.poll_transmit(now, 1, &mut buf) {
            socket.send_to(&buf[..t.size], t.destination)?;
            sent += 1;
        }
    }
    Ok(sent)
}

/// Like [`handshake_flood`], except that each attempt answers the node's stateless Retry (once,
/// with the token, from the address it claimed) and then goes silent: a client that proves its
/// address and still never finishes a handshake. Waits up to `within` for the Retries; returns
/// how many it answered. Attempts the node accepts without a Retry stay unanswered.
pub fn handshake_flood_answering_retries(
    target: SocketAddr,
    count: usize,
    within: Duration,
) -> anyhow::Result<usize> {
    let tls = tls::insecure()?;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls.client)?;
    let client = quinn::ClientConfig::new(Arc::new(crypto));
    let bind: SocketAddr = if target.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = std::net::UdpSocket::bind(bind)?;
    socket.set_nonblocking(true)?;
    let mut endpoint = quinn_proto::Endpoint::new(
        Arc::new(quinn_proto::EndpointConfig::default()),
        None,
        false,
        None,
    );
    let mut conns = std::collections::HashMap::new();
    let mut buf = Vec::with_capacity(2048);
    let mut datagram = vec![0u8; 65_536];
    let mut answered = 0;
    let mut started = 0;
    let deadline = Instant::now() + within;
    // Starts the attempts one by one and reads the answers in between, so the Retries do not
    // pile up past the socket's receive buffer.
    while answered < count && Instant::now() < deadline {
        if started < count {
            let now = Instant::now();
            let (handle, mut conn) =
                endpoint.connect(now, client.clone(), target, tls::SERVER_NAME)?;
            buf.clear();
            if let Some(t) = conn.poll_transmit(now, 1, &mut buf) {
                socket.send_to(&buf[..t.size], t.destination)?;
            }
            conns.insert(handle, conn);
            started += 1;
        }
        loop {
            let (n, from) = match socket.recv_from(&mut datagram) {
                Ok(got) => got,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if started == count {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    break;
                }
                Err(e) => return Err(e.into()),
            };
            // Only Retry packets (QUIC v1 long header, type 3) are answered; the node's half of
            // an accepted handshake is left unanswered.
            if datagram.first().is_none_or(|b| b & 0xf0 != 0xf0) {
                continue;
            }
            let now = Instant::now();
            let data = bytes::BytesMut::from(&datagram[..n]);
            buf.clear();
            let Some(quinn_proto::DatagramEvent::ConnectionEvent(handle, event)) =
                endpoint.handle(now, from, None, None, data, &mut buf)
            else {
                continue;
            };
            // Each connection answers one Retry, then is forgotten.
            let Some(mut conn) = conns.remove(&handle) else { continue };
            conn.handle_event(event);
            buf.clear();
            if let Some(t) = conn.poll_transmit(now, 1, &mut buf) {
                socket.send_to(&buf[..t.size], t.destination)?;
                answered += 1;
            }
        }
    }
    Ok(answered)
}
