//! Mutual TLS, certificate files, and a server that keeps serving through malformed frames.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use starling_node::cert::{self, CertError};
use starling_node::tls::{self, TlsConfigs, TlsMaterial, ALPN, SERVER_NAME};
use starling_node::transport::quic::QuicTransport;
use starling_node::transport::{Transport, TransportConfig, SERVICE_ERROR_ID};
use starling_wire::{
    encode_request, Call, Echo, ErrorCode, FrameDecoder, FrameKind, GetStatus, Leave, Response,
    MAX_REQUEST_BODY, VERSION,
};

async fn server(tls: &TlsConfigs) -> (QuicTransport, TestService) {
    let (svc, _) = TestService::new();
    let t = QuicTransport::bind(loopback(), tls, TransportConfig::default(), svc.clone());
    (t.await.unwrap(), svc)
}

async fn client(tls: &TlsConfigs) -> QuicTransport {
    let (svc, _) = TestService::new();
    QuicTransport::bind(loopback(), tls, TransportConfig::default(), svc).await.unwrap()
}

/// A client config that trusts the cluster CA (so the server side is what refuses) and presents
/// `cert` (or nothing).
fn client_trusting(
    ca_dir_of: &std::path::Path,
    cert: Option<&TlsMaterial>,
) -> rustls::ClientConfig {
    let material = TlsMaterial::load(ca_dir_of).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(material.ca.clone()).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots);
    let mut config = match cert {
        Some(m) => builder.with_client_auth_cert(m.chain.clone(), m.key.clone_key()).unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN.to_vec()];
    config
}

#[tokio::test]
async fn client_from_another_ca_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let tls = issued_configs(dir.path(), "server");
    let (srv, svc) = server(&tls).await;
    let ca = cert::Ca::generate().unwrap();
    let issued =
        ca.issue("stranger", &[], cert::Role::Node, cert::Validity::days_from_now(1)).unwrap();
    let foreign = TlsMaterial::from_pem(&ca.cert_pem(), &issued.cert_pem, &issued.key_pem).unwrap();
    let config = client_trusting(&dir.path().join("server"), Some(&foreign));
    let stranger = client(&TlsConfigs { client: Arc::new(config), ..tls.clone() }).await;
    let err = stranger
        .request_within(srv.local_addr(), GetStatus.into_request(), Duration::from_secs(3))
        .await
        .unwrap_err();
    eprintln!("foreign CA: {err}");
    assert!(err.to_string().contains("handshake failed"), "the TLS refusal is reported: {err}");
    assert_eq!(svc.calls.load(Ordering::Relaxed), 0, "no request reached the service");
    // A legitimate client is served meanwhile.
    let friend = client(&issued_configs(dir.path(), "friend")).await;
    assert_eq!(friend.request(srv.local_addr(), Leave.into_request()).await.unwrap(), Response::Ok);
}

#[tokio::test]
async fn server_from_another_ca_is_refused_by_the_client() {
    let dir = tempfile::tempdir().unwrap();
    let (srv, svc) = server(&foreign_configs()).await;
    // The client trusts only its own cluster CA.
    let c = client(&issued_configs(dir.path(), "client")).await;
    let err = c.request(srv.local_addr(), GetStatus.into_request()).await.unwrap_err();
    assert!(err.to_string().contains("cannot connect"), "{err}");
    assert_eq!(svc.calls.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn client_without_certificate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let tls = issued_configs(dir.path(), "server");
    let (srv, svc) = server(&tls).await;
    // Trusts the cluster CA but presents no certificate.
    let no_cert = client_trusting(&dir.path().join("server"), None);
    let anonymous = client(&TlsConfigs { client: Arc::new(no_cert), ..tls.clone() }).await;
    let err = anonymous
        .request_within(srv.local_addr(), GetStatus.into_request(), Duration::from_secs(3))
        .await
        .unwrap_err();
    eprintln!("no certificate: {err}");
    assert!(err.to_string().contains("handshake failed"), "the TLS refusal is reported: {err}");
    assert_eq!(svc.calls.load(Ordering::Relaxed), 0, "no request reached the service");
}

#[tokio::test]
async fn insecure_mode_talks_to_itself() {
    let tls = tls::insecure().unwrap();
    assert!(tls.insecure);
    let (srv, _) = server(&tls).await;
    let c = client(&tls::insecure().unwrap()).await;
    assert_eq!(c.request(srv.local_addr(), Leave.into_request()).await.unwrap(), Response::Ok);
}

#[test]
fn ca_is_never_overwritten_and_missing_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    cert::init_ca(&ca_dir).unwrap();
    let err = cert::init_ca(&ca_dir).unwrap_err();
    assert!(matches!(err, CertError::AlreadyExists { .. }), "{err}");
    assert!(err.to_string().contains("ca.pem"), "{err}");

    let out = dir.path().join("n1");
    cert::issue(
        &ca_dir,
        "n1",
        &out,
        &["10.0.0.7".into(), "n1.example".into()],
        cert::Role::Node,
        30,
    )
    .unwrap();
    for f in [cert::CA_CERT_FILE, cert::NODE_CERT_FILE, cert::NODE_KEY_FILE] {
        assert!(out.join(f).exists(), "{f}");
    }
    assert!(matches!(
        cert::issue(&ca_dir, "n1", &out, &[], cert::Role::Node, 30).unwrap_err(),
        CertError::AlreadyExists { .. }
    ));
    let missing = dir.path().join("nope");
    let err =
        cert::issue(&missing, "n2", &dir.path().join("n2"), &[], cert::Role::Node, 30).unwrap_err();
    assert!(err.to_string().contains("nope/ca.pem"), "{err}");
    let err = TlsMaterial::load(&missing).unwrap_err();
    assert!(err.to_string().contains("nope/ca.pem"), "{err}");

    // A ca.pem that does not match ca.key is refused.
    let other = dir.path().join("other");
    cert::init_ca(&other).unwrap();
    std::fs::copy(other.join(cert::CA_CERT_FILE), ca_dir.join("swapped.pem")).unwrap();
    std::fs::rename(ca_dir.join("swapped.pem"), ca_dir.join(cert::CA_CERT_FILE)).unwrap();
    let err =
        cert::issue(&ca_dir, "n3", &dir.path().join("n3"), &[], cert::Role::Node, 30).unwrap_err();
    assert!(err.to_string().contains("does not match"), "{err}");
}

/// Raw bytes over a real, authenticated QUIC connection: malformed and oversized frames are
/// answered with errors and the node keeps serving its other clients.
#[tokio::test]
async fn malformed_and_oversized_frames_get_errors_and_node_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let (srv, _) = server(&issued_configs(dir.path(), "server")).await;
    let to = srv.local_addr();
    let good = client(&issued_configs(dir.path(), "good")).await;
    let raw_tls = issued_configs(dir.path(), "raw");

    let mut ep = quinn::Endpoint::client(loopback()).unwrap();
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(raw_tls.client.clone()).unwrap();
    ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let conn = ep.connect(to, SERVER_NAME).unwrap().await.unwrap();

    // 1. Oversized request: answered TooLarge with its id, then the same stream goes on.
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let body_len = MAX_REQUEST_BODY + 1;
    let mut bytes = header(VERSION, 1, (body_len + 10) as u32, 77);
    bytes.extend(std::iter::repeat_n(0xEE, body_len));
    // 2. A valid header with a garbage body: BadRequest with its id.
    bytes.extend(header(VERSION, 1, 10 + 3, 78));
    bytes.extend([0xC1, 0xC1, 0xC1]);
    // 3. A good request on the same stream still works.
    encode_request(&mut bytes, 79, &Echo(b"still here".to_vec()).into_request()).unwrap();
    let write = async {
        send.write_all(&bytes).await.unwrap();
    };
    let mut dec = FrameDecoder::new();
    let read = read_frames(&mut recv, &mut dec, 3);
    let ((), frames) = tokio::join!(write, read);
    let by_id = |id| frames.iter().find(|(i, _)| *i == id).map(|(_, r)| r.clone()).unwrap();
    assert!(matches!(by_id(77), Response::Error { code: ErrorCode::TooLarge, .. }));
    assert!(matches!(by_id(78), Response::Error { code: ErrorCode::BadRequest, .. }));
    assert_eq!(by_id(79), Response::Echo(b"still here".to_vec()));

    // 4. A wrong version: an Error for the whole stream, then the stream is closed.
    let (mut send2, mut recv2) = conn.open_bi().await.unwrap();
    send2.write_all(&header(9, 1, 10, 5)).await.unwrap();
    let mut dec2 = FrameDecoder::new();
    let frames = read_frames(&mut recv2, &mut dec2, 1).await;
    assert_eq!(frames[0].0, SERVICE_ERROR_ID);
    assert!(
        matches!(&frames[0].1, Response::Error { code: ErrorCode::BadRequest, message }
        if message.contains("version 9")),
        "{:?}",
        frames[0].1
    );
    let mut rest = [0u8; 16];
    let eof = tokio::time::timeout(Duration::from_secs(5), recv2.read(&mut rest)).await.unwrap();
    assert!(matches!(eof, Ok(None)), "stream finished after the error: {eof:?}");

    // 5. Pure garbage on a third stream.
    let (mut send3, mut recv3) = conn.open_bi().await.unwrap();
    send3.write_all(&[0xFF; 64]).await.unwrap();
    let frames = read_frames(&mut recv3, &mut FrameDecoder::new(), 1).await;
    assert_eq!(frames[0].0, SERVICE_ERROR_ID);

    // The node still serves other clients and the raw connection's good stream.
    assert_eq!(
        good.request(to, Echo(vec![1, 2]).into_request()).await.unwrap(),
        Response::Echo(vec![1, 2])
    );
    let mut again = Vec::new();
    encode_request(&mut again, 80, &Leave.into_request()).unwrap();
    send.write_all(&again).await.unwrap();
    let frames = read_frames(&mut recv, &mut dec, 1).await;
    assert_eq!(frames[0], (80, Response::Ok));
}

fn header(version: u8, kind: u8, len: u32, id: u64) -> Vec<u8> {
    let mut v = len.to_be_bytes().to_vec();
    v.extend([version, kind]);
    v.extend(id.to_be_bytes());
    v
}

async fn read_frames(
    recv: &mut quinn::RecvStream,
    dec: &mut FrameDecoder,
    n: usize,
) -> Vec<(u64, Response)> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65536];
    while out.len() < n {
        while let Some(f) = dec.decode().unwrap() {
            assert_eq!(f.kind, FrameKind::Response);
            out.push((f.id, f.response().unwrap()));
        }
        if out.len() >= n {
            break;
        }
        let got = tokio::time::timeout(Duration::from_secs(5), recv.read(&mut buf))
            .await
            .expect("response within 5 s")
            .unwrap()
            .expect("stream open");
        dec.feed(&buf[..got]);
    }
    out
}

/// Handshakes that never finish must not lock real clients out. 1,500 QUIC Initial packets from
/// a client without a certificate that never reads the answers, four times over: between floods,
/// clients with certificates open fresh connections, and every one of their requests succeeds.
/// The flood holds at most the pending-handshake slots (never a connection slot), and past the
/// Retry threshold it gets stateless Retries it never answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_handshakes_do_not_lock_clients_out() {
    let dir = tempfile::tempdir().unwrap();
    let tls = issued_configs(dir.path(), "server");
    let (srv, _) = server(&tls).await;
    let addr = srv.local_addr();
    let client_tls = issued_configs(dir.path(), "client");
    let mut failures = Vec::new();
    for round in 0..4u8 {
        let sent =
            tokio::task::spawn_blocking(move || starling_node::bench::handshake_flood(addr, 1500))
                .await
                .unwrap()
                .unwrap();
        assert_eq!(sent, 1500);
        for i in 0..3u8 {
            // A fresh endpoint, so a new connection that must get through.
            let c = client(&client_tls).await;
            match c.request(addr, Echo(vec![round, i]).into_request()).await {
                Ok(Response::Echo(b)) if b == [round, i] => {}
                other => failures.push(format!("round {round}, client {i}: {other:?}")),
            }
            c.close().await;
        }
    }
    assert!(failures.is_empty(), "requests failed during the floods: {failures:#?}");
    let status = srv.status();
    let config = TransportConfig::default();
    assert!(status.retries > 0, "no Retry sent under the flood: {status:?}");
    assert!(status.pending_handshakes <= config.max_pending_handshakes as u64, "{status:?}");
}

/// One address cannot take the pending-handshake slots from the others, even when it proves
/// its address. 300 handshakes from 127.0.0.1 that answer the node's Retry and then never finish
/// hold 16 slots without a Retry and 16 after one; the rest are refused. While they are pending,
/// a real client from 127.0.0.1 is refused too, and one from 127.0.0.2 completes its handshake
/// and is answered. (Without the per-address bound they would take all 256 slots.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_take_the_pending_handshake_slots() {
    let dir = tempfile::tempdir().unwrap();
    let tls = issued_configs(dir.path(), "server");
    // The flood's handshakes stay pending for the whole test (the idle timeout, 10 s, ends
    // them first).
    let config = TransportConfig { connect_timeout: Duration::from_secs(30), ..Default::default() };
    let share = config.max_pending_handshakes_per_ip as u64;
    let (svc, _) = TestService::new();
    let srv = QuicTransport::bind(loopback(), &tls, config, svc).await.unwrap();
    let addr = srv.local_addr();
    let answered = tokio::task::spawn_blocking(move || {
        starling_node::bench::handshake_flood_answering_retries(addr, 300, Duration::from_secs(2))
    })
    .await
    .unwrap()
    .unwrap() as u64;
    // Retries lost on the way (a full socket buffer) only make the flood smaller.
    assert!(answered >= 100, "only {answered} Retries answered");
    // The accept loop has decided on every answer once each is pending or refused.
    let started = std::time::Instant::now();
    while srv.status().pending_handshakes + srv.status().refused < share + answered
        && started.elapsed() < Duration::from_secs(5)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = srv.status();
    assert_eq!(status.pending_handshakes, 2 * share, "{status:?}");
    assert_eq!(status.refused_per_address, answered - share, "{status:?}");
    assert_eq!(status.refused, status.refused_per_address, "{status:?}");
    let refused_before = status.refused_per_address;

    let client_tls = issued_configs(dir.path(), "client");
    let client_from = |ip: [u8; 4]| {
        let (svc, _) = TestService::new();
        let bind = std::net::SocketAddr::from((ip, 0));
        QuicTransport::bind(bind, &client_tls, TransportConfig::default(), svc)
    };
    let same = client_from([127, 0, 0, 1]).await.unwrap();
    let refused = same.request(addr, Echo(b"same address".to_vec()).into_request()).await;
    assert!(refused.is_err(), "a client from the flooding address got through: {refused:?}");
    same.close().await;
    assert!(srv.status().refused_per_address > refused_before, "{:?}", srv.status());

    let other = client_from([127, 0, 0, 2]).await.unwrap();
    match other.request(addr, Echo(b"other address".to_vec()).into_request()).await {
        Ok(Response::Echo(b)) if b == b"other address" => {}
        other => panic!("a client from 127.0.0.2 was not served during the flood: {other:?}"),
    }
    other.close().await;
}
