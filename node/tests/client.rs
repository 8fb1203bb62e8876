//! The typed client crate (`starling-client`) against real `starlingd` processes: put, get,
//! delete and status; input refused before it is sent; a peer call refused for a client
//! certificate; and a node killed with -9: calls rotate to the nodes that are up, no write is
//! lost, and a client of the dead node alone gets `Unreachable` (then backs off).

#[path = "common/process.rs"]
mod process;

#[path = "common/kv_process.rs"]
mod kv_process;

use kv_process::Cluster;
use starling_client::{Auth, Client, ClientConfig, Error};
use starling_wire::{Consistency, ErrorCode, Leave};
use std::time::Duration;

fn client_certs(c: &Cluster) -> Auth {
    Auth::certs(c.dir.path().join("certs").join("client"))
}

fn addrs(c: &Cluster, which: &[usize]) -> Vec<String> {
    which.iter().map(|i| c.nodes[*i].addrs.listen.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_calls_put_get_delete_and_status() {
    let c = Cluster::start(3).await;
    let client = Client::connect(&addrs(&c, &[0, 1, 2]), &client_certs(&c)).await.expect("client");

    let w = client.put("fruit", "apple", Consistency::Quorum).await.expect("put");
    assert!(w.acked >= w.required && w.required == 2, "{w:?}");
    assert_eq!(w.superseded, None);
    // Every node answers for the key (requests rotate over the three).
    for _ in 0..3 {
        let v = client.get("fruit", Consistency::Quorum).await.expect("get");
        assert!(v.replicas >= 2, "{v:?}");
        let r = v.record.expect("a record");
        assert_eq!((r.value.as_deref(), r.version), (Some(&b"apple"[..]), w.version));
    }
    let d = client.delete("fruit", Consistency::All).await.expect("delete");
    assert!(d.version > w.version);
    let v = client.get("fruit", Consistency::All).await.expect("get after delete");
    assert!(v.record.as_ref().is_some_and(|r| r.is_tombstone()), "{v:?}");
    let missing = client.get("never-written", Consistency::One).await.expect("get missing");
    assert_eq!(missing.record, None);

    let s = client.status().await.expect("status");
    assert_eq!(s.count("alive"), 3, "{s:?}");
    let s2 = client.status_of(2).await.expect("status of the third node");
    assert_ne!(s.node_id, s2.node_id);

    // Refused before anything is sent.
    assert!(matches!(client.put("", "x", Consistency::One).await, Err(Error::BadInput(_))));
    let big = vec![0u8; starling_wire::MAX_VALUE_BYTES + 1];
    assert!(matches!(client.put("k", big, Consistency::One).await, Err(Error::BadInput(_))));
    assert!(matches!(client.get("k", Consistency::Any).await, Err(Error::BadInput(_))));

    // A client certificate gets the client API only.
    match client.call_node(0, Leave).await {
        Err(Error::Refused { code: ErrorCode::Forbidden, message, .. }) => {
            assert!(message.contains("node certificate"), "{message}")
        }
        other => panic!("leave with a client certificate: {other:?}"),
    }
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_node_is_skipped_and_no_write_is_lost() {
    let mut c = Cluster::start(3).await;
    c.nodes[2].kill9();
    let config = ClientConfig {
        connect_timeout: Duration::from_millis(500),
        backoff_min: Duration::from_millis(200),
        ..ClientConfig::default()
    };
    let all = Client::with_config(&addrs(&c, &[0, 1, 2]), &client_certs(&c), config.clone())
        .await
        .expect("client");
    let mut written = Vec::new();
    for i in 0..30 {
        let key = format!("k{i}");
        let w = all
            .put(key.clone(), format!("v{i}"), Consistency::Quorum)
            .await
            .unwrap_or_else(|e| panic!("put {key} with a node down: {e}"));
        written.push((key, w.version));
    }
    for (key, version) in &written {
        let v = all.get(key.clone(), Consistency::Quorum).await.expect("get");
        assert_eq!(v.record.map(|r| r.version), Some(*version), "{key}");
    }
    all.close().await;

    // A client of the dead node alone: nothing was sent, so Unreachable (not NoAnswer); the
    // next call is still attempted (a single node is always tried) and says the same.
    let dead =
        Client::with_config(&addrs(&c, &[2]), &client_certs(&c), config).await.expect("client");
    for _ in 0..2 {
        match dead.put("k", "v", Consistency::One).await {
            Err(Error::Unreachable { node, .. }) => {
                assert_eq!(node, c.nodes[2].addrs.listen.to_string())
            }
            other => panic!("put to a dead node: {other:?}"),
        }
    }
    dead.close().await;

    // Restarted, it has every acknowledged write (hints and the quorum copies).
    c.restart(2).await;
    c.wait_hints_delivered().await;
    let client = Client::connect(&addrs(&c, &[2]), &client_certs(&c)).await.expect("client");
    for (key, version) in &written {
        let v = client.get(key.clone(), Consistency::All).await.expect("get at all");
        assert_eq!(v.record.map(|r| r.version), Some(*version), "{key}");
    }
    client.close().await;
}
