//! The key-value store across real `starlingd` processes on loopback, driven by a QUIC client
//! with a client certificate: kill -9 and restart, a delete that must stay deleted, a stopped
//! (SIGSTOP) replica, concurrent writers of one key, a node joining under write load, a node
//! killed mid-join and restarted, and a node leaving under write load.
//!
//! The standard: no acknowledged write is ever lost. Every test records each write the cluster
//! acknowledged (key, version, value) and checks it afterwards on the coordinators and, through
//! `ReplicaRead`, on the replica that missed it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::join_all;
use nix::sys::signal::Signal;
use starling_node::kv::view::parse_tokens;
use starling_node::transport::quic::QuicTransport;
use starling_node::transport::Transport;
use starling_ring::{token_of, NodeId, NodeStatus, Ring, RingNode};
use starling_wire::{
    Call, Consistency, KvResponse, Leave, Put, Record, ReplicaWrite, Response, Version, Written,
};
use tokio::time::Instant;

// ---------------------------------------------------------------------------------------------
// Harness

#[path = "common/process.rs"]
mod process;

#[path = "common/kv_process.rs"]
mod kv_process;

use kv_process::{wait_until, Cluster, PATIENCE};
use process::tail;

fn keys(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i:04}")).collect()
}

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_of_a_replica_loses_no_acknowledged_write() {
    let mut c = Cluster::start(3).await;
    let mut acked = BTreeMap::new();
    c.write_all(&[0, 1, 2], keys("before", 40), &mut acked).await;

    c.nodes[2].kill9();
    // Before gossip notices: writes to the dead replica time out and become hints; quorum
    // writes are acknowledged by the two others all along.
    c.write_all(&[0, 1], keys("unnoticed", 100), &mut acked).await;
    // Reads may time out while the dead node is still thought up (it is asked and does not
    // answer), but never return anything but the acknowledged value.
    let mut timeouts = 0;
    for r in acked.values().take(60) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            match c.get(0, &r.key, Consistency::Quorum).await {
                Ok(Some(got)) if got == *r => break,
                Ok(other) => panic!("read of {r:?} returned {other:?}"),
                Err(e) => {
                    assert!(e.contains("timed out") || e.contains("unavailable"), "{e}");
                    timeouts += 1;
                    assert!(Instant::now() < deadline, "reads keep failing: {e}");
                }
            }
        }
    }
    c.wait_seen_down(&[0, 1], &[2]).await;
    c.write_all(&[0, 1], keys("down", 100), &mut acked).await;
    // With the dead node known down, quorum reads work at once, through both coordinators.
    c.check_reads(&[0, 1], &acked, Consistency::Quorum).await;
    wait_until(
        PATIENCE,
        "a hint stored for each of the 200 writes node3 missed",
        || c.logs(),
        || async { c.kv_sum(&[0, 1], |k| k.hints_stored).await.is_some_and(|n| n >= 200) },
    )
    .await;

    c.restart(2).await;
    c.wait_hints_delivered().await;
    let replayed = c.kv_sum(&[0, 1], |k| k.hints_replayed).await.expect("status");
    assert!(replayed >= 200, "{replayed} hints replayed, 200 expected");
    // Checked before any read, which would repair it: the hints alone brought these.
    let missed: Vec<&Record> = acked.values().filter(|r| !r.key.starts_with(b"before")).collect();
    c.check_replica(2, &missed).await;
    c.check_reads(&[0, 1, 2], &acked, Consistency::All).await;
    eprintln!(
        "kill9: {} writes acknowledged, {timeouts} reads timed out before detection",
        acked.len()
    );
}

/// Sloppy quorum across processes: five nodes, two killed with -9. Keys with both dead nodes
/// among their three replicas are still written at quorum: the next healthy nodes on the ring
/// stand in and keep the writes as hints, and deliver them once the dead nodes are back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_killed_writes_go_to_fallback_nodes_and_reach_them_later() {
    let mut c = Cluster::start(5).await;
    let ring = ring_from_disk(&c);
    let dead = [3usize, 4];
    let dead_ids: Vec<NodeId> = dead.iter().map(|&i| c.nodes[i].id()).collect();
    // Keys whose replicas include both dead nodes: only fallbacks can make their quorum.
    let both: Vec<String> = (0..5000)
        .map(|i| format!("sloppy-{i:04}"))
        .filter(|k| {
            let r = ring.replicas(token_of(k.as_bytes()), 3);
            dead_ids.iter().all(|d| r.contains(d))
        })
        .take(40)
        .collect();
    assert_eq!(both.len(), 40, "enough keys with both dead nodes as replicas");

    for &i in &dead {
        c.nodes[i].kill9();
    }
    c.wait_seen_down(&[0, 1, 2], &dead).await;
    let mut acked = BTreeMap::new();
    c.write_all(&[0, 1, 2], both, &mut acked).await;
    c.write_all(&[0, 1, 2], keys("mixed", 60), &mut acked).await;
    // Each of the 40 keys had two writes handed to fallbacks (status counters lag a little).
    wait_until(
        PATIENCE,
        "at least 80 writes acknowledged by fallback nodes",
        || c.logs(),
        || async { c.kv_sum(&[0, 1, 2], |k| k.fallback_writes).await.is_some_and(|n| n >= 80) },
    )
    .await;
    let handed = c.kv_sum(&[0, 1, 2], |k| k.fallback_writes).await.expect("status");

    // Both back before waiting: a restarted node answers replica reads of a range only once it
    // has compared it with every other replica (after a kill -9 it recovers first).
    for &i in &dead {
        let old = c.respawn(i).await;
        old.close().await;
    }
    c.wait_ready(5).await;
    c.wait_hints_delivered().await;
    // Checked before any read could repair them: the fallbacks' hints alone brought these.
    for (&i, id) in dead.iter().zip(&dead_ids) {
        let theirs: Vec<&Record> =
            acked.values().filter(|r| ring.replicas(token_of(&r.key), 3).contains(id)).collect();
        assert!(!theirs.is_empty());
        c.check_replica(i, &theirs).await;
    }
    c.check_reads(&[0, 3, 4], &acked, Consistency::All).await;
    eprintln!("sloppy quorum: {} writes acknowledged, {handed} through fallbacks", acked.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_missed_by_a_killed_replica_does_not_come_back() {
    let mut c = Cluster::start(3).await;
    let old = c.put(0, b"victim", Some(b"old value"), Consistency::All).await.expect("put");
    let old2 = c.put(1, b"victim-2", Some(b"old value"), Consistency::All).await.expect("put");
    let other = c.put(1, b"bystander", Some(b"stays"), Consistency::All).await.expect("put");
    c.check_replica(2, &[&old, &old2, &other]).await;

    c.nodes[2].kill9();
    let del = c.put(0, b"victim", None, Consistency::Quorum).await.expect("delete at quorum");
    let del2 = c.put(1, b"victim-2", None, Consistency::Quorum).await.expect("delete at quorum");
    assert!(del.version > old.version && del2.version > old2.version);
    wait_until(
        PATIENCE,
        "both deletes hinted for node3",
        || c.logs(),
        || async { c.kv_sum(&[0, 1], |k| k.hints_stored).await.is_some_and(|n| n >= 2) },
    )
    .await;
    c.restart(2).await;
    // Even before the hint arrives, a quorum read through the stale replica sees the delete
    // (and repairs it).
    match c.get(2, b"victim", Consistency::Quorum).await {
        Ok(r) => {
            assert!(r.as_ref().is_none_or(Record::is_tombstone), "deleted key read back: {r:?}")
        }
        Err(e) => panic!("quorum read through the restarted node: {e}"),
    }
    c.wait_hints_delivered().await;
    // The second delete reached it through its hint alone (nobody read that key).
    c.check_replica(2, &[&del, &del2, &other]).await;
    for i in 0..3 {
        for key in [&b"victim"[..], b"victim-2"] {
            let r = c.get(i, key, Consistency::All).await.expect("get at all");
            assert!(r.as_ref().is_none_or(Record::is_tombstone), "node{} reads {r:?}", i + 1);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_replica_gets_every_write_after_it_resumes() {
    let c = Cluster::start(3).await;
    let mut acked = BTreeMap::new();
    c.nodes[2].signal(Signal::SIGSTOP);
    // Stopped, not yet suspected: its copies time out and become hints.
    c.write_all(&[0, 1], keys("stopped", 40), &mut acked).await;
    c.wait_seen_down(&[0, 1], &[2]).await;
    c.write_all(&[0, 1], keys("stopped-down", 40), &mut acked).await;
    c.check_reads(&[0, 1], &acked, Consistency::Quorum).await;
    wait_until(
        PATIENCE,
        "hints stored for the stopped node",
        || c.logs(),
        || async { c.kv_sum(&[0, 1], |k| k.hints_stored).await.is_some_and(|n| n >= 80) },
    )
    .await;

    c.nodes[2].signal(Signal::SIGCONT);
    c.wait_ready(3).await;
    c.wait_hints_delivered().await;
    let all: Vec<&Record> = acked.values().collect();
    c.check_replica(2, &all).await;
    c.check_reads(&[2, 0, 1], &acked, Consistency::All).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_of_one_key_converge_on_every_replica() {
    let c = Cluster::start(3).await;
    let key = b"contended".to_vec();
    let mut newest: Option<Record> = None;
    for round in 0..40 {
        let writes = (0..3).map(|i| {
            let value = format!("node{}-round{round}", i + 1).into_bytes();
            let key = key.clone();
            let c = &c;
            async move { c.put(i, &key, Some(&value), Consistency::Quorum).await }
        });
        let results = join_all(writes).await;
        let mut versions: Vec<Version> = Vec::new();
        for r in results {
            let r = r.unwrap_or_else(|e| panic!("round {round}: {e}"));
            versions.push(r.version);
            if newest.as_ref().is_none_or(|n| r.version > n.version) {
                newest = Some(r);
            }
        }
        versions.sort();
        versions.dedup();
        assert_eq!(versions.len(), 3, "round {round}: each write its own version");
    }
    let newest = newest.expect("writes");
    // Every replica ends with the newest acknowledged version (the third copies land in the
    // background), and every coordinator reads it.
    wait_until(
        PATIENCE,
        "every replica holds the newest version",
        || c.logs(),
        || async {
            let reads = join_all((0..3).map(|i| c.replica_read(i, &key))).await;
            reads.iter().all(|r| r.as_ref().is_ok_and(|r| r.as_ref() == Some(&newest)))
        },
    )
    .await;
    c.wait_hints_delivered().await;
    for i in 0..3 {
        let got = c.get(i, &key, Consistency::All).await.expect("get at all");
        assert_eq!(got.as_ref(), Some(&newest), "node{}", i + 1);
    }
}

/// One entry of a node's `meta` column family (RocksDB opened read-only, which works while the
/// node runs).
fn stored_meta(data: &Path, key: &str) -> Option<String> {
    let path = data.join("db");
    let db =
        rocksdb::DB::open_cf_for_read_only(&rocksdb::Options::default(), &path, ["meta"], false)
            .unwrap_or_else(|e| panic!("open {} read-only: {e}", path.display()));
    let cf = db.cf_handle("meta").expect("meta column family");
    let value = db.get_cf(cf, key).expect("read meta")?;
    Some(String::from_utf8(value).expect("utf8 meta"))
}

/// The ring as the nodes compute it, from each node's stored tokens.
fn ring_from_disk(c: &Cluster) -> Ring {
    let nodes = c.nodes.iter().map(|n| {
        let tokens = stored_meta(&n.data, "tokens").expect("tokens stored");
        let tokens = parse_tokens(&tokens).expect("tokens");
        RingNode { id: n.id(), tokens, zone: None, status: NodeStatus::Normal }
    });
    Ring::new(nodes.collect::<Vec<_>>())
}

/// Writes `<prefix>-<n>` keys at quorum through `coordinators` in turn until `stop`; returns the
/// acknowledged records and the failures.
async fn keep_writing(
    prefix: &'static str,
    client: Arc<QuicTransport>,
    coordinators: Vec<SocketAddr>,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<BTreeMap<Vec<u8>, Record>>>,
) -> Vec<String> {
    let mut failures = Vec::new();
    let mut n = 0usize;
    while !stop.load(Ordering::Relaxed) {
        // A few at once, like several clients.
        let writes = (0..4).map(|j| {
            let key = format!("{prefix}-{:05}", n + j).into_bytes();
            let addr = coordinators[(n + j) % coordinators.len()];
            let client = client.clone();
            async move {
                let req = Put {
                    key: key.clone(),
                    value: Some(key.clone()),
                    consistency: Consistency::Quorum,
                }
                .into_request();
                (key, client.request(addr, req).await)
            }
        });
        for (key, r) in join_all(writes).await {
            match r {
                Ok(Response::Kv(KvResponse::Written(Written { version, .. }))) => {
                    let rec = Record { key: key.clone(), version, value: Some(key.clone()) };
                    acked.lock().expect("lock").insert(key, rec);
                }
                other => failures.push(format!("{}: {other:?}", String::from_utf8_lossy(&key))),
            }
        }
        n += 4;
        // Paced (at most ~800 writes/s), so checking them all afterwards stays quick.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    failures
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joining_under_write_load_gets_its_data_and_nothing_is_lost() {
    let mut c = Cluster::start(3).await;
    let mut acked = BTreeMap::new();
    c.write_all(&[0, 1, 2], keys("before", 150), &mut acked).await;

    let during = Arc::new(Mutex::new(BTreeMap::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let coordinators: Vec<SocketAddr> = c.nodes.iter().map(|n| n.addrs.listen).collect();
    let writer = tokio::spawn(keep_writing(
        "join",
        c.client.clone(),
        coordinators,
        stop.clone(),
        during.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let new = c.add_node().await;
    c.wait_ready(4).await;
    // Some more writes once it is normal, through it too.
    c.write_all(&[new, 0, 1, 2], keys("after", 60), &mut acked).await;
    stop.store(true, Ordering::Relaxed);
    let failures = writer.await.expect("writer");
    let during = std::mem::take(&mut *during.lock().expect("lock"));
    assert!(
        during.len() >= 20,
        "the writer should have written through the join: {}",
        during.len()
    );
    let during_count = during.len();
    acked.extend(during);
    c.wait_hints_delivered().await;

    // The new node holds everything the ring gives it: checked before any read, which would
    // repair it, so streaming and the writes it got while joining alone brought these.
    let ring = ring_from_disk(&c);
    let status = c.nodes[0].status().await.expect("status");
    assert_eq!(
        status.ring.digest.as_deref(),
        Some(ring.digest().as_str()),
        "the ring rebuilt from the nodes' stored tokens is the one they use"
    );
    let new_id = c.nodes[new].id();
    let mine: Vec<&Record> =
        acked.values().filter(|r| ring.replicas(token_of(&r.key), 3).contains(&new_id)).collect();
    assert!(!mine.is_empty(), "the new node replicates some keys");
    c.check_replica(new, &mine).await;

    // Every acknowledged write, before, during and after the join, reads back.
    c.check_reads(&[new, 0, 1, 2], &acked, Consistency::Quorum).await;
    c.check_reads(&[0, 1, 2, new], &acked, Consistency::All).await;
    eprintln!(
        "join: {} writes acknowledged ({during_count} during the join, {} failed: {:?}); the new node replicates {}",
        acked.len(),
        failures.len(),
        failures.iter().take(3).collect::<Vec<_>>(),
        mine.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_during_join_resumes() {
    let mut c = Cluster::start(3).await;
    let mut acked = BTreeMap::new();
    c.write_all(&[0, 1, 2], keys("before", 300), &mut acked).await;

    let new = c.add_node().await;
    // A joining node waits for agreement and a write timeout (2 s) before it streams, so polling
    // quickly catches it joining; if it is somehow normal already, the kill is skipped.
    let started = Instant::now();
    let caught_joining = loop {
        match c.nodes[new].status().await.and_then(|s| s.ring.status) {
            Some(s) if s == "joining" => break true,
            Some(s) if s == "normal" => break false,
            _ => {}
        }
        assert!(started.elapsed() < PATIENCE, "node4 never reported joining\n{}", c.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    if caught_joining {
        c.nodes[new].kill9();
        let tokens = stored_meta(&c.nodes[new].data, "tokens").expect("tokens stored");
        assert_eq!(
            stored_meta(&c.nodes[new].data, "ring-status").as_deref(),
            Some("joining"),
            "killed mid-join"
        );
        // Written while the joiner is dead (it is a pending replica of some of them: its copies
        // become hints, and its streaming brings them too).
        c.write_all(&[0, 1, 2], keys("while-dead", 100), &mut acked).await;
        c.restart(new).await;
        assert_eq!(
            stored_meta(&c.nodes[new].data, "tokens").as_deref(),
            Some(tokens.as_str()),
            "the restarted node keeps the tokens it had chosen"
        );
        let log = std::fs::read_to_string(c.nodes[new].data.with_extension("log")).expect("log");
        assert!(
            log.lines().any(|l| l.contains("tokens loaded") && l.contains("joining=true")),
            "the restarted node resumed its join from the stored state\n{}",
            tail(&c.nodes[new].data, 40)
        );
    } else {
        eprintln!("restart_during_join: node4 was already normal when first polled; kill skipped");
        c.wait_ready(4).await;
    }
    assert_eq!(stored_meta(&c.nodes[new].data, "ring-status").as_deref(), Some("normal"));
    c.write_all(&[new, 0, 1, 2], keys("after", 60), &mut acked).await;
    c.wait_hints_delivered().await;

    // Checked before any read, which would repair it.
    let ring = ring_from_disk(&c);
    let status = c.nodes[0].status().await.expect("status");
    assert_eq!(status.ring.digest.as_deref(), Some(ring.digest().as_str()));
    let new_id = c.nodes[new].id();
    let mine: Vec<&Record> =
        acked.values().filter(|r| ring.replicas(token_of(&r.key), 3).contains(&new_id)).collect();
    assert!(!mine.is_empty(), "the new node replicates some keys");
    c.check_replica(new, &mine).await;
    c.check_reads(&[new, 0, 1, 2], &acked, Consistency::All).await;
    eprintln!(
        "restart_during_join: killed while joining: {caught_joining}; {} writes acknowledged, the new node replicates {}",
        acked.len(),
        mine.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leave_hands_data_over() {
    let started = Instant::now();
    let mut c = Cluster::start(4).await;
    let mut acked = BTreeMap::new();
    c.write_all(&[0, 1, 2, 3], keys("before", 500), &mut acked).await;

    let leaver = 3;
    let stay = [0, 1, 2];
    let leaver_id = c.nodes[leaver].id().to_string();
    // Each key node4 replicates gains one replica when it leaves (with 4 nodes and N = 3 the
    // survivors replicate everything): at least that many records must be handed over.
    let ring = ring_from_disk(&c);
    let handed_min = acked
        .keys()
        .filter(|k| ring.replicas(token_of(k), 3).contains(&c.nodes[leaver].id()))
        .count();
    assert!(handed_min > 0);
    // Writes through the nodes that stay, all through the leave.
    let during = Arc::new(Mutex::new(BTreeMap::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let coordinators: Vec<SocketAddr> = stay.iter().map(|i| c.nodes[*i].addrs.listen).collect();
    let writer = tokio::spawn(keep_writing(
        "leave",
        c.client.clone(),
        coordinators,
        stop.clone(),
        during.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;

    let leave_at = Instant::now();
    c.call(leaver, Leave).await.expect("leave");
    // It hands its data over, announces `left` and stops by itself.
    let exit = c.nodes[leaver].wait_exit(PATIENCE).await;
    assert!(exit.success(), "node4 exited with {exit}\n{}", tail(&c.nodes[leaver].data, 40));
    let exited_after = leave_at.elapsed();
    let left_everywhere = || async {
        join_all(stay.iter().map(|i| c.nodes[*i].status())).await.iter().all(|s| {
            s.as_ref().is_some_and(|s| {
                s.members.iter().any(|m| m.node_id == leaver_id && m.state == "left")
            })
        })
    };
    wait_until(
        PATIENCE,
        "the 3 others converged on a normal ring of 3, node4 `left`",
        || c.logs(),
        || async { c.ready(3).await && left_everywhere().await },
    )
    .await;
    // A little more writing on the 3-node ring, then stop; one write timeout later every copy
    // has landed or is a hint.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let failures = writer.await.expect("writer");
    let during = std::mem::take(&mut *during.lock().expect("lock"));
    assert!(
        during.len() >= 20,
        "the writer should have written through the leave: {}",
        during.len()
    );
    let during_count = during.len();
    acked.extend(during);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    c.wait_hints_delivered().await;

    let log = std::fs::read_to_string(c.nodes[leaver].data.with_extension("log")).expect("log");
    let handed: Option<usize> = log
        .lines()
        .find(|l| l.contains("decommission: data handed over"))
        .and_then(|l| l.split("records=").nth(1))
        .and_then(|n| n.split_whitespace().next())
        .and_then(|n| n.parse().ok());
    assert!(
        handed.is_some_and(|n| n >= handed_min) && !log.contains("decommission failed"),
        "node4 should hand over at least {handed_min} records, handed {handed:?}\n{}",
        tail(&c.nodes[leaver].data, 40)
    );
    // With N = 3 and 3 nodes left, each holds every key: checked before any read, which would
    // repair it, so the handover and the writes alone brought these.
    let all: Vec<&Record> = acked.values().collect();
    for i in stay {
        c.check_replica(i, &all).await;
    }
    c.check_reads(&stay, &acked, Consistency::All).await;
    eprintln!(
        "leave: {} writes acknowledged ({during_count} during the leave, {} failed: {:?}); node4 handed over {} records (>= {handed_min}) and exited {:.1} s after `leave`; test took {:.1} s",
        acked.len(),
        failures.len(),
        failures.iter().take(3).collect::<Vec<_>>(),
        handed.unwrap_or(0),
        exited_after.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

/// libfaketime's preload library, if installed (`scripts/test` installs Debian's `faketime`).
fn faketime_lib() -> Option<std::path::PathBuf> {
    ["x86_64", "aarch64"]
        .iter()
        .map(|a| {
            std::path::PathBuf::from(format!("/usr/lib/{a}-linux-gnu/faketime/libfaketime.so.1"))
        })
        .find(|p| p.exists())
}

/// The environment that sets a process's wall clock `offset` seconds off (e.g. "-120"), leaving
/// its monotonic clock (timers, timeouts) alone.
fn skewed_clock(lib: &Path, offset: &str) -> Vec<(String, String)> {
    [
        ("LD_PRELOAD", lib.display().to_string()),
        ("FAKETIME", offset.to_string()),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1".to_string()),
        ("FAKETIME_NO_CACHE", "1".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// A node whose wall clock is two minutes slow, then two minutes fast (libfaketime), among two
/// correct ones. Before: with node3 slow, a put through node3 after one through node1 was
/// acknowledged and silently lost (every replica kept the older-stamped v1); with node3 fast,
/// its writes planted versions two minutes ahead and every later put and delete through the
/// correct nodes was acknowledged and lost. Now node3 measures its clock against its peers',
/// refuses to coordinate writes while it is off, and replicas refuse versions too far ahead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_clock_is_two_minutes_off_coordinates_no_write_and_none_is_lost() {
    let Some(lib) = faketime_lib() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "libfaketime is missing (apt-get install faketime): this test must run in CI"
        );
        eprintln!("skipped: libfaketime is not installed (apt-get install faketime)");
        return;
    };
    for skew in ["-120", "+120"] {
        let mut c = Cluster::start(2).await;
        c.add_node_with_env(&skewed_clock(&lib, skew)).await;
        c.wait_ready(3).await;
        let off = |k: &starling_node::kv::KvStatus| {
            k.clock_peers >= 2 && k.clock_offset_ms.unsigned_abs() > k.max_clock_offset_ms
        };
        wait_until(
            PATIENCE,
            &format!("node3 ({skew} s) sees its clock off the cluster's"),
            || c.logs(),
            || async { c.nodes[2].status().await.and_then(|s| s.kv).is_some_and(|k| off(&k)) },
        )
        .await;
        for i in 0..2 {
            let k = c.nodes[i].status().await.and_then(|s| s.kv).expect("status");
            assert!(!off(&k) && k.clock_offset_ms.abs() < 500, "node{} ({skew}): {k:?}", i + 1);
        }
        let key = format!("skewed{skew}");
        let key = key.as_bytes();
        let v1 = c.put(0, key, Some(b"v1"), Consistency::Quorum).await.expect("v1 through node1");
        let refused = c.put(2, key, Some(b"v2"), Consistency::Quorum).await;
        match &refused {
            Err(e) => assert!(e.contains("unavailable") && e.contains("clock"), "{skew}: {e}"),
            Ok(r) => panic!("{skew}: a write through the skewed node was acknowledged: {r:?}"),
        }
        // A replica refuses a version planted far ahead of its clock.
        let planted = Record {
            key: key.to_vec(),
            version: Version {
                ts: (v1.version.millis() + 10 * 365 * 86_400_000) << 16,
                node: NodeId(7),
            },
            value: Some(b"from the future".to_vec()),
        };
        match c.call(0, ReplicaWrite(vec![planted])).await {
            Err(e) => assert!(e.contains("ahead"), "{e}"),
            Ok(r) => panic!("a version ten years ahead was stored: {r:?}"),
        }
        // Later writes through the correct nodes are not lost.
        let v3 = c.put(1, key, Some(b"v3"), Consistency::Quorum).await.expect("v3 through node2");
        assert!(v3.version > v1.version);
        let del = c.put(0, b"deleted", None, Consistency::Quorum).await.expect("delete");
        for i in 0..2 {
            let got = c.get(i, key, Consistency::All).await.expect("read at all");
            assert_eq!(
                got.and_then(|r| r.value),
                Some(b"v3".to_vec()),
                "{skew}: read via node{}",
                i + 1
            );
            let gone = c.get(i, b"deleted", Consistency::All).await.expect("read at all");
            assert_eq!(gone.map(|r| r.version), Some(del.version), "{skew}");
        }
    }
}
