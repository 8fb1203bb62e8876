//! Helpers shared by the transport tests.
#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use starling_node::cert;
use starling_node::tls::{self, TlsConfigs, TlsMaterial};
use starling_node::transport::{PeerInfo, Service};
use starling_wire::{ClientRequest, PeerRequest, Request, Response};
use tokio::sync::mpsc;

/// `127.0.0.1:0`: tests only ever bind loopback, any port.
pub fn loopback() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
}

/// Echo payload that makes [`TestService`] sleep before answering.
pub const SLOW: &[u8] = b"slow";
/// How long a [`SLOW`] request sleeps.
pub const SLOW_FOR: Duration = Duration::from_secs(2);

/// Echo payload that makes [`TestService`] answer with a body over the response limit.
pub const HUGE: &[u8] = b"huge";

/// Echoes, reports the caller's address on `Status`, forwards gossip to a channel, counts calls.
#[derive(Clone)]
pub struct TestService {
    pub gossip: mpsc::UnboundedSender<(PeerInfo, Vec<u8>)>,
    pub calls: Arc<AtomicUsize>,
}

impl TestService {
    pub fn new() -> (Self, mpsc::UnboundedReceiver<(PeerInfo, Vec<u8>)>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (TestService { gossip: tx, calls: Arc::default() }, rx)
    }
}

impl Service for TestService {
    async fn call(&self, peer: PeerInfo, req: Request) -> Response {
        self.calls.fetch_add(1, Ordering::Relaxed);
        match req {
            Request::Client(ClientRequest::Echo(b)) if b == SLOW => {
                tokio::time::sleep(SLOW_FOR).await;
                Response::Echo(b)
            }
            Request::Client(ClientRequest::Echo(b)) if b == HUGE => {
                Response::Echo(vec![0; starling_wire::MAX_RESPONSE_BODY + 1])
            }
            Request::Client(ClientRequest::Echo(b)) => Response::Echo(b),
            Request::Client(ClientRequest::Status) => {
                Response::Status(peer.addr.to_string().into_bytes())
            }
            Request::Peer(PeerRequest::Gossip(b)) => {
                let _ = self.gossip.send((peer, b));
                Response::Ok
            }
            Request::Peer(PeerRequest::Leave) => Response::Ok,
            _ => Response::error(starling_wire::ErrorCode::BadRequest, "not served here"),
        }
    }
}

/// Creates a CA in `dir/ca` and issues `name` into `dir/<name>`; returns the mutual-TLS configs.
pub fn issued_configs(dir: &Path, name: &str) -> TlsConfigs {
    let ca_dir = dir.join("ca");
    if !ca_dir.join(cert::CA_CERT_FILE).exists() {
        cert::init_ca(&ca_dir).unwrap();
    }
    let out = dir.join(name);
    cert::issue(&ca_dir, name, &out, &[], role_of_name(name), cert::LEAF_VALIDITY_DAYS).unwrap();
    tls::mutual(&TlsMaterial::load(&out).unwrap()).unwrap()
}

/// The role tests give a certificate named `name`: names starting with `client` are clients.
pub fn role_of_name(name: &str) -> cert::Role {
    if name.starts_with("client") {
        cert::Role::Client
    } else {
        cert::Role::Node
    }
}

/// Mutual-TLS configs from a fresh in-memory CA (a different CA on every call).
pub fn foreign_configs() -> TlsConfigs {
    let ca = cert::Ca::generate().unwrap();
    let issued =
        ca.issue("stranger", &[], cert::Role::Node, cert::Validity::days_from_now(1)).unwrap();
    let material =
        TlsMaterial::from_pem(&ca.cert_pem(), &issued.cert_pem, &issued.key_pem).unwrap();
    tls::mutual(&material).unwrap()
}
