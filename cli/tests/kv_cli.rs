//! `starling kv put|get|del` against a real 3-node cluster: output, exit codes (0 ok, 2 bad
//! input, 3 unreachable, 4 not found, 5 unavailable) and messages.
//!
//! `starlingd` comes from another package: see `common/mod.rs` for how these tests find it.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

mod common;

use common::{process, starlingd, STARLING};
use process::{certs, http_status, tail, wait_for, Node};

fn log_of(data: &Path) -> String {
    tail(data, usize::MAX)
}

struct Cluster {
    dir: tempfile::TempDir,
    nodes: Vec<Node>,
}

impl Cluster {
    /// Three nodes, converged, each `normal` on a ring of three.
    fn start() -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let certs = certs(&dir.path().join("certs"), &["node1", "node2", "node3", "client"]);
        let mut nodes: Vec<Node> = Vec::new();
        for name in ["node1", "node2", "node3"] {
            let seeds: Vec<SocketAddr> =
                nodes.first().map(|n| n.addrs.listen).into_iter().collect();
            let data = dir.path().join(name);
            nodes.push(Node::start(starlingd(), &data, &certs.join(name), "127.0.0.1:0", &seeds));
        }
        let ready = wait_for(Duration::from_secs(60), || {
            nodes
                .iter()
                .all(|n| {
                    http_status(n.addrs.http).is_some_and(|s| {
                        s.converged
                            && s.count("alive") == 3
                            && s.ring.nodes == 3
                            && s.ring.status.as_deref() == Some("normal")
                    })
                })
                .then_some(())
        });
        assert!(ready.is_some(), "cluster not ready; node1 log:\n{}", log_of(&nodes[0].data));
        Cluster { dir, nodes }
    }

    /// Runs `starling --node <node i> --certs <client> ARGS`, with `stdin` if given.
    fn starling(&self, i: usize, args: &[&str], stdin: Option<&[u8]>) -> Output {
        self.starling_at(&self.nodes[i].addrs.listen.to_string(), args, stdin)
    }

    fn starling_at(&self, node: &str, args: &[&str], stdin: Option<&[u8]>) -> Output {
        let mut cmd = Command::new(STARLING);
        cmd.args(["--node", node, "--certs"])
            .arg(self.dir.path().join("certs/client"))
            .args(args)
            .env("NO_COLOR", "1")
            .env_remove("STARLING_NODE")
            .env_remove("STARLING_CERTS")
            .env_remove("STARLING_INSECURE")
            .env_remove("STARLING_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
        let mut child = cmd.spawn().expect("run starling");
        if let Some(bytes) = stdin {
            let mut pipe = child.stdin.take().expect("stdin");
            pipe.write_all(bytes).expect("write stdin");
        }
        child.wait_with_output().expect("starling output")
    }
}

/// Asserts the exit code, showing the output otherwise.
fn expect_exit(out: &Output, code: i32, what: &str) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "{what}: expected exit {code}\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn kv_put_get_del_print_values_and_exit_with_documented_codes() {
    let c = Cluster::start();

    let out = c.starling(0, &["kv", "put", "greeting", "hello"], None);
    expect_exit(&out, 0, "kv put");
    assert!(out.stdout.is_empty(), "put prints to stderr only");
    assert!(stderr(&out).contains("stored"), "{}", stderr(&out));
    // Read back through every node: exactly the value, nothing else on stdout.
    for i in 0..3 {
        let out = c.starling(i, &["kv", "get", "greeting"], None);
        expect_exit(&out, 0, "kv get");
        assert_eq!(out.stdout, b"hello", "node{}", i + 1);
    }

    let out = c.starling(1, &["kv", "get", "no-such-key"], None);
    expect_exit(&out, 4, "kv get of a missing key");
    assert!(stderr(&out).contains("not found"), "{}", stderr(&out));
    assert!(out.stdout.is_empty());

    // Values from standard input are taken byte for byte.
    let piped = b"from stdin\n\x00\xff binary too";
    let out = c.starling(2, &["kv", "put", "piped"], Some(piped));
    expect_exit(&out, 0, "kv put from stdin");
    let out = c.starling(0, &["kv", "get", "piped"], None);
    expect_exit(&out, 0, "kv get");
    assert_eq!(out.stdout, piped);
    let out = c.starling(0, &["kv", "get", "greeting", "--json", "-c", "all"], None);
    expect_exit(&out, 0, "kv get --json");
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(j["value"], "hello");
    assert_eq!(j["replicas"], 3);
    assert!(j["version"]["ts"].as_u64().is_some_and(|ts| ts > 0), "{j}");

    // Value size limit: exactly 1 MiB is accepted (and read back whole), one byte more is not.
    let max = c.dir.path().join("max.bin");
    let over = c.dir.path().join("over.bin");
    let value: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(&max, &value).expect("write");
    std::fs::write(&over, vec![b'x'; (1 << 20) + 1]).expect("write");
    let out = c.starling(0, &["kv", "put", "max", "--file", max.to_str().expect("utf8")], None);
    expect_exit(&out, 0, "kv put of a 1 MiB value");
    let out = c.starling(1, &["kv", "get", "max"], None);
    expect_exit(&out, 0, "kv get of a 1 MiB value");
    assert!(out.stdout == value, "the 1 MiB value read back differs");
    let out = c.starling(0, &["kv", "put", "over", "--file", over.to_str().expect("utf8")], None);
    expect_exit(&out, 2, "kv put of a value over 1 MiB");
    let err = stderr(&out);
    assert!(
        err.contains("1048577") && err.contains("1048576"),
        "names the size and the limit: {err}"
    );
    let out = c.starling(0, &["kv", "put", "over"], Some(&vec![b'x'; (1 << 20) + 1]));
    expect_exit(&out, 2, "kv put of a value over 1 MiB from stdin");
    let out = c.starling(0, &["kv", "get", "over"], None);
    expect_exit(&out, 4, "a refused put writes nothing");

    // Bad keys and levels.
    let out = c.starling(0, &["kv", "put", "", "v"], None);
    expect_exit(&out, 2, "kv put with an empty key");
    assert!(stderr(&out).contains("empty"), "{}", stderr(&out));
    let long_key = "k".repeat(1025);
    let out = c.starling(0, &["kv", "get", &long_key], None);
    expect_exit(&out, 2, "kv get with a key over 1 KiB");
    assert!(stderr(&out).contains("1024"), "{}", stderr(&out));
    let out = c.starling(0, &["kv", "get", "greeting", "-c", "any"], None);
    expect_exit(&out, 2, "kv get at consistency any");
    let out = c.starling(0, &["kv", "get", "greeting", "-c", "most"], None);
    expect_exit(&out, 2, "an unknown consistency level");

    // Delete: gone for every node.
    let out = c.starling(1, &["kv", "del", "greeting"], None);
    expect_exit(&out, 0, "kv del");
    assert!(stderr(&out).contains("deleted"), "{}", stderr(&out));
    for i in 0..3 {
        let out = c.starling(i, &["kv", "get", "greeting"], None);
        expect_exit(&out, 4, "kv get after kv del");
    }
    // Deleting again is fine (a delete is a write).
    expect_exit(&c.starling(2, &["kv", "del", "greeting"], None), 0, "kv del twice");

    // Nobody listening.
    let free = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp").local_addr().expect("addr");
    let out = c.starling_at(&free.to_string(), &["kv", "get", "piped"], None);
    expect_exit(&out, 3, "kv get from an unreachable node");
}

#[test]
fn quorum_with_two_of_three_nodes_down_exits_5_and_says_how_many_are_up() {
    let mut c = Cluster::start();
    expect_exit(&c.starling(0, &["kv", "put", "k", "v"], None), 0, "kv put");
    c.nodes[1].kill9();
    c.nodes[2].kill9();
    let ids: Vec<String> = c.nodes[1..]
        .iter()
        .map(|n| {
            std::fs::read_to_string(n.data.join("node-id")).expect("node id").trim().to_owned()
        })
        .collect();
    let down = wait_for(Duration::from_secs(60), || {
        let s = http_status(c.nodes[0].addrs.http)?;
        ids.iter()
            .all(|id| s.members.iter().any(|m| &m.node_id == id && m.state == "down"))
            .then_some(())
    });
    assert!(
        down.is_some(),
        "node1 does not see the others down; log:\n{}",
        log_of(&c.nodes[0].data)
    );

    let out = c.starling(0, &["kv", "put", "k2", "v2"], None);
    expect_exit(&out, 5, "quorum put with 1 of 3 replicas up");
    let err = stderr(&out);
    assert!(err.contains("needs 2 of 3") && err.contains("only 1 is up"), "{err}");
    let out = c.starling(0, &["kv", "get", "k"], None);
    expect_exit(&out, 5, "quorum get with 1 of 3 replicas up");
    assert!(stderr(&out).contains("only 1 is up"), "{}", stderr(&out));
    let out = c.starling(0, &["kv", "del", "k", "-c", "all"], None);
    expect_exit(&out, 5, "all delete with 1 of 3 replicas up");
    // The levels that can be met still work.
    let out = c.starling(0, &["kv", "get", "k", "-c", "one"], None);
    expect_exit(&out, 0, "one get");
    assert_eq!(out.stdout, b"v");
    expect_exit(&c.starling(0, &["kv", "put", "k3", "v3", "-c", "one"], None), 0, "one put");
    expect_exit(&c.starling(0, &["kv", "put", "k4", "v4", "-c", "any"], None), 0, "any put");
    let out = c.starling(0, &["kv", "get", "k3", "-c", "one"], None);
    expect_exit(&out, 0, "one get");
    assert_eq!(out.stdout, b"v3");
}

#[test]
fn meta_commands_print_znodes_and_exit_with_documented_codes() {
    let c = Cluster::start();
    // node1 is the only voter (the seed); node2 and node3 observe and forward writes.
    let synced = wait_for(Duration::from_secs(30), || {
        c.nodes
            .iter()
            .all(|n| http_status(n.addrs.http).and_then(|s| s.meta).is_some_and(|m| m.synced))
            .then_some(())
    });
    assert!(
        synced.is_some(),
        "metadata service not synced; node2 log:\n{}",
        log_of(&c.nodes[1].data)
    );
    let out = c.starling(1, &["meta", "create", "/cfg", "v1"], None);
    expect_exit(&out, 0, "meta create through an observer");
    assert!(String::from_utf8_lossy(&out.stdout).contains("created /cfg"));
    let out = c.starling(2, &["meta", "get", "/cfg"], None);
    expect_exit(&out, 0, "meta get");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "v1\n");
    let out = c.starling(0, &["meta", "set", "/cfg", "v2", "--version", "0", "--json"], None);
    expect_exit(&out, 0, "meta set --version 0");
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(j["stat"]["version"], 1);
    // A stale version is refused and changes nothing.
    let out = c.starling(1, &["meta", "cas", "/cfg", "v3", "--version", "0"], None);
    expect_exit(&out, 1, "meta cas with a stale version");
    assert!(stderr(&out).contains("version 1, not 0"), "{}", stderr(&out));
    let out = c.starling(2, &["meta", "get", "/cfg", "--json"], None);
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(j["data"], "v2");
    for _ in 0..2 {
        expect_exit(&c.starling(1, &["meta", "create", "/cfg/s-", "--sequential"], None), 0, "seq");
    }
    let out = c.starling(2, &["meta", "ls", "/cfg", "--json"], None);
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(j["children"], serde_json::json!(["s-0000000000", "s-0000000001"]));
    // Documented exit codes: 4 for no such znode, 2 for a bad path, 1 for a non-empty delete.
    expect_exit(&c.starling(0, &["meta", "get", "/nope"], None), 4, "get of a missing znode");
    expect_exit(&c.starling(0, &["meta", "stat", "/nope"], None), 4, "stat of a missing znode");
    let out = c.starling(0, &["meta", "create", "relative"], None);
    expect_exit(&out, 2, "a relative path");
    assert!(stderr(&out).contains("not absolute"), "{}", stderr(&out));
    expect_exit(&c.starling(0, &["meta", "del", "/cfg"], None), 1, "delete with children");
    let out = c.starling(0, &["meta", "create", "/starling/x"], None);
    expect_exit(&out, 2, "the reserved path");
    // The lock runs the command while held, and frees it after.
    let out = c.starling(1, &["meta", "lock", "/locks/a", "--", "echo", "held"], None);
    expect_exit(&out, 0, "meta lock");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "held\n");
    let out = c.starling(2, &["meta", "ls", "/locks/a"], None);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "", "the lock znode was released");
    let out = c.starling(0, &["meta", "status", "--json"], None);
    expect_exit(&out, 0, "meta status");
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(j["role"], "leading");
}

/// Lines of stdout parsed as JSON objects.
fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[test]
fn topic_commands_produce_consume_and_exit_with_documented_codes() {
    let c = Cluster::start();

    let out = c.starling(0, &["topic", "create", "orders", "--partitions", "2", "--json"], None);
    expect_exit(&out, 0, "topic create");
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(created["partitions"], 2);
    assert_eq!(created["replication"], 3);
    assert_eq!(created["min_insync"], 2);
    let out = c.starling(1, &["topic", "create", "orders"], None);
    expect_exit(&out, 2, "topic create of an existing topic");
    assert!(stderr(&out).contains("exists"), "{}", stderr(&out));
    let out = c.starling(0, &["topic", "create", "no/slash"], None);
    expect_exit(&out, 2, "topic create with a bad name");
    let out = c.starling(0, &["topic", "create", "big", "--replication", "4"], None);
    expect_exit(&out, 2, "replication over the node count");
    assert!(stderr(&out).contains("replication"), "{}", stderr(&out));

    // Produce through any node (it forwards to the leaders); values and stdin lines.
    let out = c.starling(1, &["topic", "produce", "orders", "a", "b", "c", "--json"], None);
    expect_exit(&out, 0, "topic produce");
    let produced: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(produced["records"], 3);
    std::thread::sleep(Duration::from_millis(50));
    let between = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        .to_string();
    std::thread::sleep(Duration::from_millis(50));
    let out = c.starling(2, &["topic", "produce", "orders", "--key", "alice"], Some(b"d\ne\n"));
    expect_exit(&out, 0, "topic produce from stdin");
    let out = c.starling(0, &["topic", "produce", "missing", "x"], None);
    expect_exit(&out, 4, "topic produce to a missing topic");

    // Everything back, with partition and offset; keyed records share a partition, in order.
    let out = c.starling(2, &["topic", "consume", "orders", "--from-beginning", "--json"], None);
    expect_exit(&out, 0, "topic consume");
    let records = json_lines(&out);
    let mut values: Vec<&str> = records.iter().map(|r| r["value"].as_str().unwrap()).collect();
    values.sort();
    assert_eq!(values, ["a", "b", "c", "d", "e"]);
    let keyed: Vec<&serde_json::Value> = records.iter().filter(|r| r["key"] == "alice").collect();
    assert_eq!(keyed.len(), 2);
    assert_eq!(keyed[0]["partition"], keyed[1]["partition"]);
    assert!(keyed[0]["offset"].as_i64() < keyed[1]["offset"].as_i64());
    // From a time: only what was produced after it.
    let out =
        c.starling(1, &["topic", "consume", "orders", "--from-time", &between, "--json"], None);
    expect_exit(&out, 0, "topic consume --from-time");
    let mut later: Vec<String> =
        json_lines(&out).iter().map(|r| r["value"].as_str().unwrap().to_string()).collect();
    later.sort();
    assert_eq!(later, ["d", "e"]);
    let out = c.starling(1, &["topic", "consume", "orders", "--from-time", "yesterday"], None);
    expect_exit(&out, 2, "a bad --from-time");
    // Without --from-beginning a consumer starts at the end: nothing to print.
    let out = c.starling(0, &["topic", "consume", "orders"], None);
    expect_exit(&out, 0, "topic consume from the end");
    assert!(out.stdout.is_empty(), "{}", String::from_utf8_lossy(&out.stdout));

    // A group reads each record once across two runs (committed offsets).
    let first = c.starling(
        0,
        &[
            "topic",
            "consume",
            "orders",
            "--group",
            "billing",
            "--from-beginning",
            "--max",
            "2",
            "--json",
        ],
        None,
    );
    expect_exit(&first, 0, "group consume, first run");
    let rest = c.starling(
        1,
        &["topic", "consume", "orders", "--group", "billing", "--from-beginning", "--json"],
        None,
    );
    expect_exit(&rest, 0, "group consume, second run");
    let mut seen: Vec<String> = json_lines(&first)
        .iter()
        .chain(json_lines(&rest).iter())
        .map(|r| r["value"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(json_lines(&first).len(), 2);
    seen.sort();
    assert_eq!(seen, ["a", "b", "c", "d", "e"]);

    let out = c.starling(0, &["topic", "describe", "orders", "--json"], None);
    expect_exit(&out, 0, "topic describe");
    let d: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let parts = d["partition_info"].as_array().expect("partitions");
    assert_eq!(parts.len(), 2);
    let mut end = 0;
    for p in parts {
        assert!(p["leader"].is_string(), "{p}");
        assert_eq!(p["isr"].as_array().map(Vec::len), Some(3), "{p}");
        end += p["high_watermark"].as_i64().expect("high watermark");
    }
    assert_eq!(end, 5);
    let out = c.starling(0, &["topic", "describe", "orders"], None);
    expect_exit(&out, 0, "topic describe, human");
    assert!(String::from_utf8_lossy(&out.stdout).contains("high wm"));

    // Partitions can be added, never removed; a new partition takes records at once.
    let out = c.starling(0, &["topic", "alter", "orders", "--partitions", "3", "--json"], None);
    expect_exit(&out, 0, "topic alter --partitions");
    let altered: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(altered["partitions"], 3);
    let out = c.starling(0, &["topic", "alter", "orders", "--partitions", "1"], None);
    expect_exit(&out, 2, "removing partitions");
    let out = c.starling(1, &["topic", "alter", "orders", "--min-insync", "4"], None);
    expect_exit(&out, 2, "min in-sync over the replication");
    let out =
        c.starling(2, &["topic", "produce", "orders", "--partition", "2", "f", "--json"], None);
    expect_exit(&out, 0, "produce to the new partition");
    let p: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(p["batches"][0]["partition"], 2);
    assert_eq!(p["batches"][0]["base_offset"], 0);

    // The group has no members any more, yet it is listed with its committed offsets and lag
    // (Kafka's `Empty` groups): 5 records committed, the one in the new partition owed.
    let out = c.starling(1, &["topic", "groups", "--json"], None);
    expect_exit(&out, 0, "topic groups");
    let groups: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let billing = groups
        .as_array()
        .expect("a list")
        .iter()
        .find(|g| g["group"] == "billing" && g["topic"] == "orders")
        .unwrap_or_else(|| panic!("billing is not listed: {groups}"));
    assert_eq!(billing["state"], "empty", "{billing}");
    let parts = billing["partitions"].as_array().expect("partitions");
    assert_eq!(parts.len(), 3, "{billing}");
    let sum = |k: &str| parts.iter().map(|p| p[k].as_i64().unwrap_or(0)).sum::<i64>();
    assert_eq!((sum("committed"), sum("lag")), (5, 1), "{billing}");
    let out = c.starling(2, &["topic", "groups", "billing"], None);
    expect_exit(&out, 0, "topic groups billing");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("billing") && text.contains("no members"), "{text}");
    let out = c.starling(2, &["topic", "groups", "nobody", "--json"], None);
    expect_exit(&out, 4, "topic groups of a group that never committed");

    let out = c.starling(2, &["topic", "list"], None);
    expect_exit(&out, 0, "topic list");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "orders");
    let out = c.starling(1, &["topic", "delete", "orders"], None);
    expect_exit(&out, 0, "topic delete");
    let out = c.starling(0, &["topic", "describe", "orders"], None);
    expect_exit(&out, 4, "describe a deleted topic");
    let out = c.starling(0, &["topic", "groups", "billing"], None);
    expect_exit(&out, 4, "the groups of a deleted topic");
}
