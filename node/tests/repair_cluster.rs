//! Anti-entropy across real `starlingd` processes: a replica that missed writes for longer than
//! the hint window (values, overwrites and deletes) gets every one of them from `starling
//! repair`; a peer killed with -9 fails its part of a repair without harming the rest, and a
//! repair after its restart completes; a node whose write-ahead log lost its tail gets the lost
//! writes back before it answers reads; a dead node is removed and every range is back to three
//! copies; a node whose data dir was wiped joins again and serves every key at `one`; a join
//! followed by deletes and a leave brings no deleted value back.

use std::collections::BTreeMap;
use std::time::Duration;

use nix::sys::signal::Signal;
use starling_node::transport::Transport;
use starling_wire::repair::{
    RemoveNode, RepairRequest, RepairResponse, RepairStep, RepairStreamStep, RunCleanup, RunRepair,
};
use starling_wire::{Consistency, Leave, NodeId, Record, ReplicaWrite, Version};

#[path = "common/process.rs"]
mod process;

#[path = "common/kv_process.rs"]
mod kv_process;

use kv_process::{wait_until, Cluster, PATIENCE};

fn keys(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i:04}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_brings_back_what_a_replica_missed_past_the_hint_window() {
    let mut c = Cluster::start_with_env(
        3,
        &[("STARLING_HINT_WINDOW", "1s"), ("STARLING_REPAIR_INTERVAL", "off")],
    )
    .await;
    let mut acked: BTreeMap<Vec<u8>, Record> = BTreeMap::new();
    c.write_all(&[0, 1, 2], keys("before", 200), &mut acked).await;

    // node3 stops for longer than the hint window: nobody keeps its writes for it.
    c.nodes[2].signal(Signal::SIGSTOP);
    c.wait_seen_down(&[0, 1], &[2]).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    c.write_all(&[0, 1], keys("while-down", 300), &mut acked).await;
    // Overwrites and deletes of keys node3 holds.
    c.write_all(&[0, 1], keys("before", 50), &mut acked).await;
    for k in keys("before", 200).into_iter().skip(150) {
        let r = c.put(0, k.as_bytes(), None, Consistency::Quorum).await.expect("delete");
        acked.insert(r.key.clone(), r);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    c.nodes[2].signal(Signal::SIGCONT);
    c.wait_ready(3).await;
    let missing = c.replica_read(2, b"while-down-0000").await.expect("replica read");
    assert_eq!(missing, None, "node3 should have missed the writes (no hint kept)");

    let summary = c.call(2, RunRepair { peer: None, range: None }).await.expect("repair");
    assert!(summary.failed.is_empty(), "{summary:?}");
    assert_eq!(summary.ranges_completed, summary.ranges, "{summary:?}");
    assert!(summary.ranges_differing > 0, "{summary:?}");
    // 300 new keys, 50 overwrites, 50 deletes; nothing else differed.
    assert_eq!(summary.keys_received, 400, "{summary:?}");
    let all: Vec<&Record> = acked.values().collect();
    c.check_replica(2, &all).await;

    // Nothing left to do: one root per range per peer.
    let again = c.call(2, RunRepair { peer: None, range: None }).await.expect("repair");
    assert_eq!((again.ranges_differing, again.keys_received, again.keys_sent), (0, 0, 0));

    // A peer killed with -9: its sessions fail, the other's still run, nothing completes.
    c.nodes[0].kill9();
    c.wait_seen_down(&[1, 2], &[0]).await;
    c.write_all(&[1, 2], keys("after-kill", 40), &mut acked).await;
    let partial = c.call(2, RunRepair { peer: None, range: None }).await.expect("repair");
    assert_eq!(partial.failed.len(), 1, "{partial:?}");
    assert_eq!(partial.ranges_completed, 0, "{partial:?}");
    c.restart(0).await;
    wait_until(
        PATIENCE,
        "a complete repair after the restart",
        || c.logs(),
        || async {
            c.call(2, RunRepair { peer: None, range: None })
                .await
                .is_ok_and(|s| s.failed.is_empty() && s.ranges_completed == s.ranges)
        },
    )
    .await;
    let all: Vec<&Record> = acked.values().collect();
    for i in 0..3 {
        c.check_replica(i, &all).await;
    }
    let status = c.nodes[2].status().await.expect("status");
    let repair = status.repair.expect("repair status");
    assert!(repair.ranges.iter().all(|r| r.repaired_ms.is_some()), "{:?}", repair.ranges);
}

/// After a node joins, the nodes whose ranges moved to it drop their old copies once the ring
/// has been stable for `--cleanup-after` (here 2 s), and `starling cleanup` finds nothing left;
/// a write that reaches an old owner later goes with its next automatic cleanup; every
/// acknowledged write is still read back at `all`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_that_moved_away_are_cleaned_up_and_nothing_is_lost() {
    let mut c = Cluster::start_with_env(
        3,
        &[("STARLING_REPAIR_INTERVAL", "off"), ("STARLING_CLEANUP_AFTER", "2s")],
    )
    .await;
    let mut acked: BTreeMap<Vec<u8>, Record> = BTreeMap::new();
    let all_keys = keys("moved", 300);
    c.write_all(&[0, 1, 2], all_keys.clone(), &mut acked).await;
    c.add_node().await;
    c.wait_ready(4).await;
    // Every old node gave ranges to the new one: some of its keys go away by themselves.
    wait_until(
        PATIENCE,
        "node1 dropped the keys it no longer replicates",
        || c.logs(),
        || async {
            for k in &all_keys {
                if c.replica_read(0, k.as_bytes()).await.ok() == Some(None) {
                    return true;
                }
            }
            false
        },
    )
    .await;
    let again = c.call(0, RunCleanup {}).await.expect("cleanup");
    assert_eq!(again.records, 0, "nothing left to drop: {again:?}");
    assert!(again.ranges > 0, "{again:?}");
    let mut dropped = 0;
    for k in &all_keys {
        if c.replica_read(0, k.as_bytes()).await.expect("replica read").is_none() {
            dropped += 1;
        }
    }
    assert!(dropped > 0 && dropped < all_keys.len(), "node1 dropped {dropped} keys");

    // A write that reaches node1 after its cleanup, from a coordinator that had not seen the
    // ring change yet (never acknowledged: too few replicas took it): node1 stores it, out of
    // every read's reach, and the next automatic cleanup drops it though the ring has not
    // changed since, before a later ring change could make node1 a replica of it again.
    let mut foreign = None;
    for k in &all_keys {
        if c.replica_read(0, k.as_bytes()).await.expect("replica read").is_none() {
            foreign = Some(k.as_bytes().to_vec());
            break;
        }
    }
    let key = foreign.expect("a key node1 dropped");
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    let late = Record {
        key: key.clone(),
        version: Version { ts: now_ms << 16, node: NodeId(7) },
        value: Some(b"late".to_vec()),
    };
    c.call(0, ReplicaWrite(vec![late.clone()])).await.expect("the late write");
    assert_eq!(c.replica_read(0, &key).await.expect("replica read"), Some(late));
    wait_until(
        PATIENCE,
        "node1 dropped the late write with its next cleanup",
        || c.logs(),
        || async { c.replica_read(0, &key).await.ok() == Some(None) },
    )
    .await;
    c.check_reads(&[0, 1, 2, 3], &acked, Consistency::All).await;
}

/// Waits until every running node has `n` nodes on its ring.
async fn wait_ring_of(c: &Cluster, n: usize) {
    let what = format!("{n} nodes on the ring");
    wait_until(
        PATIENCE,
        &what,
        || c.logs(),
        || async {
            c.statuses().await.iter().all(|s| s.as_ref().is_some_and(|s| s.ring.nodes == n))
        },
    )
    .await;
}

/// The newest write-ahead log file of a node's store.
fn newest_wal(data: &std::path::Path) -> std::path::PathBuf {
    let mut logs: Vec<std::path::PathBuf> = std::fs::read_dir(data.join("db"))
        .expect("read the store dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    logs.sort();
    logs.pop().expect("a write-ahead log")
}

/// kill -9, then the newest write-ahead log loses its tail, cut 7 bytes into the first record
/// after the early writes (a torn log: RocksDB drops the torn record and everything after it
/// without a word), restart: the node sees it did not stop cleanly, answers no replica read
/// until it has compared its ranges with the other replicas, and then holds every write
/// acknowledged at `all`, read back through it at `one`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_log_tail_is_recovered_from_the_replicas_before_reads() {
    let mut c = Cluster::start_with_env(3, &[("STARLING_REPAIR_INTERVAL", "off")]).await;
    let mut acked: BTreeMap<Vec<u8>, Record> = BTreeMap::new();
    c.write_all(&[0, 1, 2], keys("early", 100), &mut acked).await;
    let wal = newest_wal(&c.nodes[2].data);
    let kept = std::fs::metadata(&wal).expect("wal").len();
    for k in keys("last", 19) {
        let r = c.put(0, k.as_bytes(), Some(b"at all"), Consistency::All).await.expect("write");
        acked.insert(r.key.clone(), r);
    }
    c.nodes[2].kill9();
    assert_eq!(newest_wal(&c.nodes[2].data), wal, "the log rolled over");
    let len = std::fs::metadata(&wal).expect("wal").len();
    assert!(len > kept + 7, "{} is {len} bytes, {kept} before the last writes", wal.display());
    std::fs::OpenOptions::new()
        .write(true)
        .open(&wal)
        .and_then(|f| f.set_len(kept + 7))
        .expect("truncate the log");
    c.restart(2).await;
    c.check_reads(&[2], &acked, Consistency::One).await;
    c.check_replica(2, &acked.values().collect::<Vec<_>>()).await;
    let kv = c.nodes[2].status().await.and_then(|s| s.kv).expect("kv status");
    assert!(kv.recovering.is_none(), "{kv:?}");
    // The 19 writes after the cut (and early ones that reached node3 late, if any).
    assert!(kv.recovered_records >= 19, "{kv:?}\n{}", c.logs());
    assert!(c.logs().contains("recovered"), "{}", c.logs());

    // Killed again while another replica is stopped: it cannot compare its ranges with that one,
    // so it answers no replica read of them (reads through it go to the replica that is up)
    // until that replica is back.
    c.nodes[0].signal(Signal::SIGSTOP);
    c.nodes[2].kill9();
    let old = c.respawn(2).await;
    old.close().await;
    wait_until(
        PATIENCE,
        "node3 normal and recovering",
        || c.logs(),
        || async {
            c.nodes[2].status().await.is_some_and(|s| {
                s.ring.status.as_deref() == Some("normal")
                    && s.kv.as_ref().is_some_and(|k| k.recovering.is_some())
                    && s.count("down") == 1
            })
        },
    )
    .await;
    let refused = c.replica_read(2, b"last-0001").await;
    assert!(refused.as_ref().is_err_and(|e| e.contains("recovering")), "{refused:?}");
    // Nor is it a source for a node taking its ranges over (a join, a removal): a streaming
    // session's steps are refused, while repair sessions (which need it, and which another
    // recovering node runs too) are answered.
    let roots = RepairRequest::Roots {
        segment_bits: 16,
        ranges: vec![starling_wire::repair::TokenRange { start: 0, end: 0 }],
    };
    let streamed = c.call(2, RepairStreamStep(roots.clone())).await;
    assert!(
        matches!(&streamed, Ok(RepairResponse::Refused(m)) if m.contains("recovering")),
        "{streamed:?}"
    );
    let repaired = c.call(2, RepairStep(roots)).await;
    assert!(
        !matches!(&repaired, Ok(RepairResponse::Refused(m)) if m.contains("recovering")),
        "{repaired:?}"
    );
    let some: BTreeMap<Vec<u8>, Record> =
        acked.iter().take(20).map(|(k, r)| (k.clone(), r.clone())).collect();
    c.check_reads(&[2], &some, Consistency::One).await;
    c.nodes[0].signal(Signal::SIGCONT);
    c.wait_ready(3).await;
    c.check_replica(2, &acked.values().collect::<Vec<_>>()).await;
}

/// A node killed for good is removed with `starling removenode` (refused while a node is up):
/// the three nodes left each hold every key again (three copies, read from each one's store),
/// and reads at `all` answer. The dead node's machine then comes back with an empty data dir:
/// it joins as a new node and answers every key at `one`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_node_is_removed_and_its_ranges_are_copied_back() {
    let mut c = Cluster::start_with_env(4, &[("STARLING_REPAIR_INTERVAL", "off")]).await;
    let mut acked: BTreeMap<Vec<u8>, Record> = BTreeMap::new();
    c.write_all(&[0, 1, 2, 3], keys("kept", 300), &mut acked).await;
    let dead = c.nodes[3].status().await.expect("status").node_id;
    let up = c.nodes[1].status().await.expect("status").node_id;
    let refused = c.call(0, RemoveNode { node: up[..8].to_string() }).await;
    assert!(refused.as_ref().is_err_and(|e| e.contains("is up")), "{refused:?}");

    c.nodes[3].kill9();
    c.wait_seen_down(&[0, 1, 2], &[3]).await;
    let summary = c.call(0, RemoveNode { node: dead.clone() }).await.expect("removenode");
    assert_eq!(summary.node, dead);
    let streamed: u64 = summary.streamed.iter().map(|(_, n)| n).sum();
    assert!(streamed > 0, "{summary:?}");
    wait_ring_of(&c, 3).await;
    wait_until(
        PATIENCE,
        "the dead node shown as removed",
        || c.logs(),
        || async {
            c.statuses().await.iter().all(|s| {
                s.as_ref().is_some_and(|s| {
                    s.members.iter().any(|m| m.node_id == dead && m.state == "removed")
                })
            })
        },
    )
    .await;
    let again = c.call(1, RemoveNode { node: dead.clone() }).await;
    assert!(again.as_ref().is_err_and(|e| e.contains("removed already")), "{again:?}");
    // Three nodes, three copies: each holds every key.
    let all: Vec<&Record> = acked.values().collect();
    for i in 0..3 {
        c.check_replica(i, &all).await;
    }
    c.check_reads(&[0, 1, 2], &acked, Consistency::All).await;

    // The machine comes back with an empty disk: a new node, which joins.
    let data = c.nodes[3].data.clone();
    std::fs::remove_dir_all(&data).expect("wipe the data dir");
    std::fs::create_dir_all(&data).expect("data dir");
    c.restart(3).await;
    let fresh = c.nodes[3].status().await.expect("status").node_id;
    assert_ne!(fresh, dead);
    c.check_reads(&[3], &acked, Consistency::One).await;
}

/// A node joins (the old owners keep their copies of the ranges it took: cleanup is off), keys
/// are deleted (the tombstones go to the new owners, not to the old copies), the node leaves (its
/// ranges go back to the old owners, still holding the values): no deleted value comes back,
/// read at `all` or from any node's store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_then_deletes_then_a_leave_brings_nothing_back() {
    let mut c = Cluster::start_with_env(
        3,
        &[("STARLING_REPAIR_INTERVAL", "off"), ("STARLING_CLEANUP_AFTER", "off")],
    )
    .await;
    let mut acked: BTreeMap<Vec<u8>, Record> = BTreeMap::new();
    let all_keys = keys("doomed", 200);
    c.write_all(&[0, 1, 2], all_keys.clone(), &mut acked).await;
    let joined = c.add_node().await;
    c.wait_ready(4).await;
    for k in &all_keys {
        let r = c.put(0, k.as_bytes(), None, Consistency::Quorum).await.expect("delete");
        acked.insert(r.key.clone(), r);
    }
    // Some old copy of a deleted value is still there (the ranges node4 took).
    let mut stale = 0;
    for k in &all_keys {
        for i in 0..3 {
            if c.replica_read(i, k.as_bytes())
                .await
                .ok()
                .flatten()
                .is_some_and(|r| r.value.is_some())
            {
                stale += 1;
            }
        }
    }
    assert!(stale > 0, "no old copy left behind: the test shows nothing");
    c.call(joined, Leave).await.expect("leave");
    let exit = c.nodes[joined].wait_exit(PATIENCE).await;
    assert!(exit.success(), "node4 exited with {exit}\n{}", c.logs());
    wait_ring_of(&c, 3).await;
    let all: Vec<&Record> = acked.values().collect();
    for i in 0..3 {
        c.check_replica(i, &all).await;
    }
    c.check_reads(&[0, 1, 2], &acked, Consistency::All).await;
}
