//! Anti-entropy across real `starlingd` processes: a replica that missed writes for longer than
//! the hint window (values, overwrites and deletes) gets every one of them from `starling
//! repair`; a peer killed with -9 fails its part of a repair without harming the rest, and a
//! repair after its restart completes.

use std::collections::BTreeMap;
use std::time::Duration;

use nix::sys::signal::Signal;
use starling_wire::repair::{RunCleanup, RunRepair};
use starling_wire::{Consistency, Record};

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
/// every acknowledged write is still read back at `all`.
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
    c.check_reads(&[0, 1, 2, 3], &acked, Consistency::All).await;
}
