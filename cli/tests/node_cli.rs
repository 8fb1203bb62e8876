//! `starling status` against a real `starlingd`: the history the `Status` RPC carries, in
//! `--json` and summarized in the human output.
//!
//! `starlingd` comes from another package: see `common/mod.rs` for how these tests find it.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

mod common;

use common::{process, starlingd, STARLING};
use process::{certs, http_get, tail, wait_for, Node};

/// Runs `starling --node NODE --certs CERTS ARGS`, with no `STARLING_*` from the environment.
fn starling(node: &str, certs: &Path, args: &[&str]) -> Output {
    Command::new(STARLING)
        .args(["--node", node, "--certs"])
        .arg(certs)
        .args(args)
        .env_remove("STARLING_NODE")
        .env_remove("STARLING_CERTS")
        .env_remove("STARLING_INSECURE")
        .env_remove("STARLING_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run starling")
}

fn expect_success(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One node (N = 1) takes a few writes; then `starling status --json` carries the node's last
/// minutes (the samples `GET /history` serves) with those writes in them, and the human output
/// sums them up.
#[test]
fn status_carries_the_history() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = certs(&dir.path().join("certs"), &["node1", "client"]);
    let replication = [("STARLING_REPLICATION".to_owned(), "1".to_owned())];
    let data = dir.path().join("node1");
    let node = Node::start_with_env(
        starlingd(),
        &data,
        &certs.join("node1"),
        "127.0.0.1:0",
        &[],
        &replication,
    );
    let addr = node.addrs.listen.to_string();
    let client = certs.join("client");
    let ready = wait_for(Duration::from_secs(60), || {
        node.status().filter(|s| s.ring.status.as_deref() == Some("normal")).map(|_| ())
    });
    assert!(ready.is_some(), "node not ready; log:\n{}", tail(&data, 60));
    for i in 0..20 {
        expect_success(&starling(&addr, &client, &["kv", "put", &format!("k{i}"), "v"]), "kv put");
    }
    // Wait until a sample covers the writes.
    let sampled = wait_for(Duration::from_secs(10), || {
        let h: serde_json::Value =
            serde_json::from_str(&http_get(node.addrs.http, "/history")?).ok()?;
        let writes = h["writes"].as_array()?;
        writes.iter().any(|w| w.as_f64().is_some_and(|w| w > 0.0)).then_some(())
    });
    assert!(sampled.is_some(), "no sample with the writes");

    let out = starling(&addr, &client, &["status", "--json"]);
    expect_success(&out, "status --json");
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    let h = &status["history"];
    assert_eq!(h["interval_ms"], 1000, "{h}");
    let t = h["t"].as_array().expect("history.t");
    assert!(t.len() >= 2, "{h}");
    for column in ["reads", "writes", "failures", "read_p99_ms", "write_p99_ms", "converged"] {
        assert_eq!(h[column].as_array().map(Vec::len), Some(t.len()), "{column}: {h}");
    }
    let writes: f64 = h["writes"].as_array().unwrap().iter().filter_map(|w| w.as_f64()).sum();
    assert!(writes > 0.0, "the writes are not in the history: {h}");
    assert!(h["write_p99_ms"].as_array().unwrap().iter().any(|p| p.as_f64().is_some()), "{h}");
    // The member timeline: this node, with the view it reports.
    let members = h["members"].as_array().expect("history.members");
    assert_eq!(members.len(), 1, "{h}");
    assert_eq!(members[0]["node_id"], status["node_id"], "{h}");
    assert!(!h["views"].as_array().expect("views").is_empty(), "{h}");

    let out = starling(&addr, &client, &["status"]);
    expect_success(&out, "status");
    let text = String::from_utf8_lossy(&out.stdout);
    let load = text.lines().find(|l| l.contains("ops/s")).unwrap_or_else(|| panic!("{text}"));
    assert!(load.starts_with("last ") && load.contains("p99 write"), "{text}");
    assert!(text.contains("samples") && text.contains("of a member's view"), "{text}");
}
