//! `starling leave --wait --if-scaled-down`, the Kubernetes `preStop` hook, against a stand-in
//! API server (HTTPS with a self-signed certificate given as the service account's CA) that
//! serves a StatefulSet with 3 replicas, and two real `starlingd` nodes (N = 1, so either may
//! leave): pod ordinal 1 stays, an unreachable or refusing API server means staying, ordinal 3
//! leaves and its node stops.
//!
//! `starlingd` comes from another package: see `common/mod.rs` for how these tests find it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod common;

use common::{process, starlingd, STARLING};
use process::{certs, tail, wait_for, Node};

const NAMESPACE: &str = "starling-test";
const TOKEN: &str = "sa-token-for-tests";

/// What the stand-in API server was asked: request line and `Authorization` header.
type Seen = Arc<Mutex<Vec<(String, String)>>>;

/// An HTTPS server on 127.0.0.1 answering `GET` of the StatefulSet `starling` in [`NAMESPACE`]
/// with `replicas`, 403 for another token, 404 for anything else. Returns its URL, its
/// certificate (PEM) and what it was asked.
fn fake_api_server(replicas: u32) -> (String, String, Seen) {
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
        .expect("self-signed certificate");
    let pem = cert.cert.pem();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_no_client_auth()
    .with_single_cert(vec![cert.cert.der().clone()], key)
    .expect("server config");
    let config = Arc::new(config);
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr: SocketAddr = listener.local_addr().expect("addr");
    let seen: Seen = Arc::default();
    let log = seen.clone();
    std::thread::spawn(move || {
        for tcp in listener.incoming() {
            let Ok(tcp) = tcp else { continue };
            let _ = tcp.set_read_timeout(Some(Duration::from_secs(5)));
            let Ok(conn) = rustls::ServerConnection::new(config.clone()) else { continue };
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && head.len() < 16_384 {
                match tls.read(&mut byte) {
                    Ok(1) => head.push(byte[0]),
                    _ => break,
                }
            }
            let head = String::from_utf8_lossy(&head).into_owned();
            let line = head.lines().next().unwrap_or_default().to_owned();
            let auth = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("authorization").then(|| value.trim().to_owned())
                })
                .unwrap_or_default();
            log.lock().unwrap().push((line.clone(), auth.clone()));
            let path = format!("/apis/apps/v1/namespaces/{NAMESPACE}/statefulsets/starling");
            let (status, body) = if auth != format!("Bearer {TOKEN}") {
                (
                    "403 Forbidden",
                    r#"{"kind":"Status","message":"statefulsets.apps \"starling\" is forbidden"}"#
                        .to_owned(),
                )
            } else if line == format!("GET {path} HTTP/1.1") {
                (
                    "200 OK",
                    format!(
                        r#"{{"kind":"StatefulSet","apiVersion":"apps/v1","metadata":{{"name":"starling","namespace":"{NAMESPACE}"}},"spec":{{"replicas":{replicas},"serviceName":"starling"}},"status":{{"replicas":{replicas}}}}}"#
                    ),
                )
            } else {
                ("404 Not Found", r#"{"kind":"Status","message":"not found"}"#.to_owned())
            };
            let _ = write!(
                tls,
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            tls.conn.send_close_notify();
            let _ = tls.flush();
        }
    });
    (format!("https://{addr}"), pem, seen)
}

/// A service-account dir: `token`, `ca.crt`, `namespace`.
fn service_account(dir: &Path, ca_pem: &str, token: &str) {
    std::fs::create_dir_all(dir).expect("service account dir");
    std::fs::write(dir.join("token"), token).expect("token");
    std::fs::write(dir.join("ca.crt"), ca_pem).expect("ca.crt");
    std::fs::write(dir.join("namespace"), format!("{NAMESPACE}\n")).expect("namespace");
}

/// `starling --node NODE --certs CERTS leave --wait --if-scaled-down --pod POD ...`, with no
/// Kubernetes or `STARLING_*` variables from the environment.
fn pre_stop(node: &Node, pod: &str, api: &str, sa: &Path) -> Output {
    Command::new(STARLING)
        .args(["--node", &node.addrs.listen.to_string(), "--certs"])
        .arg(&node.certs)
        .args(["leave", "--wait", "--timeout", "2m", "--if-scaled-down", "--pod", pod])
        .args(["--k8s-api", api, "--k8s-service-account"])
        .arg(sa)
        .env_remove("STARLING_NODE")
        .env_remove("STARLING_CERTS")
        .env_remove("STARLING_INSECURE")
        .env_remove("STARLING_LOG")
        .env_remove("STARLING_POD_NAME")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .stdin(Stdio::null())
        .output()
        .expect("run starling")
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The node is still running and `normal` on the ring.
fn assert_stays(node: &mut Node, what: &str) {
    let running = node.child.as_mut().expect("child").try_wait().expect("try_wait").is_none();
    assert!(running, "{what}: the node stopped; log:\n{}", tail(&node.data, 40));
    let status = node.status().expect("status page");
    assert_eq!(status.ring.status.as_deref(), Some("normal"), "{what}");
}

#[test]
fn pre_stop_leaves_only_when_the_statefulset_was_scaled_below_the_pod() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = certs(&dir.path().join("certs"), &["node1", "node2"]);
    let env = [("STARLING_REPLICATION".to_owned(), "1".to_owned())];
    let start = |name: &str, seeds: &[SocketAddr]| {
        let data = dir.path().join(name);
        Node::start_with_env(starlingd(), &data, &certs.join(name), "127.0.0.1:0", seeds, &env)
    };
    let node1 = start("node1", &[]);
    let mut node2 = start("node2", &[node1.addrs.listen]);
    let ready = wait_for(Duration::from_secs(60), || {
        [&node1, &node2]
            .iter()
            .all(|n| {
                n.status().is_some_and(|s| {
                    s.converged && s.ring.nodes == 2 && s.ring.status.as_deref() == Some("normal")
                })
            })
            .then_some(())
    });
    assert!(ready.is_some(), "nodes not ready; node2 log:\n{}", tail(&node2.data, 60));

    let (api, ca, seen) = fake_api_server(3);
    let sa = dir.path().join("serviceaccount");
    service_account(&sa, &ca, TOKEN);

    // Ordinal 1 of 3 replicas: a restart or an update, not a scale-down.
    let out = pre_stop(&node2, "starling-1", &api, &sa);
    assert!(out.status.success(), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("not leaving") && said.contains("not scaled down"), "{}", text(&out));
    {
        let seen = seen.lock().unwrap();
        let path = format!("/apis/apps/v1/namespaces/{NAMESPACE}/statefulsets/starling");
        assert_eq!(
            seen.last(),
            Some(&(format!("GET {path} HTTP/1.1"), format!("Bearer {TOKEN}"))),
            "{seen:?}"
        );
    }
    assert_stays(&mut node2, "ordinal 1");

    // The API server cannot be reached: stay, and exit 0 so the pod still stops.
    let closed = TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr");
    let out = pre_stop(&node2, "starling-3", &format!("https://{closed}"), &sa);
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("not leaving"), "{}", text(&out));
    assert_stays(&mut node2, "unreachable API server");

    // The API server refuses (a token without the Role): stay.
    let refused = dir.path().join("other-serviceaccount");
    service_account(&refused, &ca, "another-token");
    let out = pre_stop(&node2, "starling-3", &api, &refused);
    assert!(out.status.success(), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("not leaving") && said.contains("forbidden"), "{}", text(&out));
    assert_stays(&mut node2, "refused by the API server");

    // A server certificate the CA does not vouch for: stay.
    let (other_api, _, _) = fake_api_server(0);
    let out = pre_stop(&node2, "starling-3", &other_api, &sa);
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("not leaving"), "{}", text(&out));
    assert_stays(&mut node2, "unknown server certificate");

    // Ordinal 3 of 3 replicas: scaled down. The node hands its data over and stops.
    let out = pre_stop(&node2, "starling-3", &api, &sa);
    assert!(out.status.success(), "{}\nnode2 log:\n{}", text(&out), tail(&node2.data, 40));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("scaled down, leaving"), "{}", text(&out));
    assert!(said.contains("has left the cluster and stopped"), "{}", text(&out));
    let exited = wait_for(Duration::from_secs(30), || {
        node2.child.as_mut().expect("child").try_wait().expect("try_wait")
    });
    assert!(exited.is_some(), "node2 still running after leaving");
    let left = wait_for(Duration::from_secs(30), || {
        let s = node1.status()?;
        let gone = s.members.iter().any(|m| m.state == "left") && s.ring.nodes == 1;
        gone.then_some(())
    });
    assert!(left.is_some(), "node1 does not see node2 as left: {:?}", node1.status());
}
