//! Topics across real `starlingd` processes (three nodes, each a metadata voter, mutual TLS):
//! a produce stream with `acks=all` while a partition leader is killed with -9 and restarted,
//! then the new leader killed too, by an idempotent producer that sends again whatever it got no
//! answer for; every acknowledged record must be in the log at the offset it was acknowledged
//! with, no offset may hold two records, and no record may appear twice.
//!
//! The figures it prints (longest pause between acknowledgements around the kill) are for
//! reading, not asserted: machines are noisy.

use std::collections::{BTreeMap, HashMap};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use starling_client::topic::{Acks, IdempotentProducer, NewRecord, TopicError, TopicInfo};
use starling_client::{Auth, Client};
use tokio::time::Instant;

#[path = "common/process.rs"]
mod process;

const PATIENCE: Duration = Duration::from_secs(60);
const TOPIC: &str = "orders";
const PARTITIONS: u32 = 2;

fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

struct Ensemble {
    _dir: tempfile::TempDir,
    certs: PathBuf,
    nodes: Vec<process::Node>,
    listens: Vec<SocketAddr>,
}

impl Ensemble {
    fn start() -> Ensemble {
        let dir = tempfile::tempdir().expect("tempdir");
        let names = ["node1", "node2", "node3", "client"];
        let certs = process::certs(&dir.path().join("certs"), &names);
        let listens: Vec<SocketAddr> =
            (0..3).map(|_| format!("127.0.0.1:{}", free_port()).parse().unwrap()).collect();
        let voters = listens.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(",");
        let env = vec![("STARLING_META_VOTERS".to_string(), voters)];
        let bin = Path::new(env!("CARGO_BIN_EXE_starlingd"));
        let nodes = names[..3]
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let seeds: Vec<SocketAddr> = if i == 0 { vec![] } else { vec![listens[0]] };
                process::Node::start_with_env(
                    bin,
                    &dir.path().join(name),
                    &certs.join(name),
                    &listens[i].to_string(),
                    &seeds,
                    &env,
                )
            })
            .collect();
        Ensemble { _dir: dir, certs, nodes, listens }
    }

    /// Creates a topic (RF 3, min in-sync 2), retrying while the cluster settles; a retry that
    /// finds the topic made by an earlier attempt counts.
    async fn create_topic(&self, c: &Client, name: &str, partitions: u32) {
        let start = Instant::now();
        loop {
            match c.create_topic(name, partitions, 3, 2).await {
                Ok(Ok(_)) | Ok(Err(TopicError::Exists(_))) => return,
                other => {
                    assert!(
                        start.elapsed() < PATIENCE,
                        "cannot create {name}: {other:?}\n{}",
                        self.logs()
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    fn logs(&self) -> String {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| format!("--- node{} ---\n{}", i + 1, process::tail(&n.data, 40)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    async fn client(&self, which: &[usize]) -> Client {
        let nodes: Vec<String> = which.iter().map(|&i| self.listens[i].to_string()).collect();
        Client::connect(&nodes, &Auth::certs(self.certs.join("client"))).await.expect("client")
    }

    fn index_of(&self, id: starling_wire::NodeId) -> usize {
        self.nodes.iter().position(|n| n.id() == id).expect("a node of the ensemble")
    }
}

/// Describes the topic until `ok` holds for it (panics with the logs after [`PATIENCE`]).
async fn wait_topic(
    e: &Ensemble,
    c: &Client,
    what: &str,
    ok: impl Fn(&TopicInfo) -> bool,
) -> TopicInfo {
    let start = Instant::now();
    loop {
        if let Ok(Ok(t)) = c.describe_topic(TOPIC, true).await {
            if ok(&t) {
                return t;
            }
        }
        assert!(start.elapsed() < PATIENCE, "timed out waiting for {what}\n{}", e.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[derive(Default)]
struct History {
    /// value -> (partition, offset, when acknowledged)
    acked: HashMap<String, (u32, i64, Instant)>,
    unknown: Vec<String>,
    refused: Vec<(String, String)>,
}

fn record(value: &str) -> NewRecord {
    NewRecord {
        key: None,
        value: Some(value.as_bytes().to_vec()),
        headers: Vec::new(),
        timestamp_ms: 1_800_000_000_000,
    }
}

/// Reads a partition from its start to its high watermark: offset -> value.
async fn read_all(c: &Client, p: u32) -> BTreeMap<i64, String> {
    let o = c.partition_offsets(TOPIC, p).await.expect("call").expect("offsets");
    let mut out = BTreeMap::new();
    let mut at = o.log_start;
    while at < o.high_watermark {
        let f = c.fetch(TOPIC, p, at, 1 << 20, Duration::ZERO).await.expect("call").expect("fetch");
        for r in f.records {
            let v = String::from_utf8(r.value.expect("value").to_vec()).expect("utf-8");
            assert!(out.insert(r.offset, v).is_none(), "offset {} returned twice", r.offset);
        }
        assert!(f.next_offset > at, "fetch at {at} made no progress");
        at = f.next_offset;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_records_survive_leader_kills_and_a_restart() {
    let mut e = tokio::task::block_in_place(Ensemble::start);
    let admin = e.client(&[0, 1, 2]).await;
    e.create_topic(&admin, TOPIC, PARTITIONS).await;
    let t = wait_topic(&e, &admin, "every partition led", |t| {
        t.partition_info.iter().all(|p| p.leader.is_some() && p.isr.len() == 3)
    })
    .await;
    let victim = e.index_of(t.partition_info[0].leader.expect("leader"));
    // The producer talks to one node that stays up; it forwards to the leaders.
    let entry = (0..3).find(|&i| i != victim).expect("another node");
    let producer = e.client(&[entry]).await;

    let history = Arc::new(Mutex::new(History::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let task = {
        let (history, stop) = (history.clone(), stop.clone());
        // Idempotent: a produce whose leader died with it in flight is sent again, and must
        // not be written twice.
        let mut producer = IdempotentProducer::new(&producer);
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let value = format!("v{i}");
                let p = (i % u64::from(PARTITIONS)) as u32;
                i += 1;
                let r = producer.send(TOPIC, p, Acks::All, &[record(&value)]).await;
                let mut h = history.lock().unwrap();
                match r {
                    Ok(Ok(at)) => {
                        h.acked.insert(value, (p, at.base_offset, Instant::now()));
                    }
                    Ok(Err(TopicError::OutcomeUnknown(_))) | Err(_) => h.unknown.push(value),
                    Ok(Err(e)) => h.refused.push((value, e.to_string())),
                }
            }
        })
    };

    tokio::time::sleep(Duration::from_secs(2)).await;
    let killed_at = Instant::now();
    tokio::task::block_in_place(|| e.nodes[victim].kill9());
    wait_topic(&e, &admin, "a new leader for partition 0", |t| {
        t.partition_info[0].leader.is_some_and(|l| l != e.nodes[victim].id())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let seeds = [e.listens[entry]];
    tokio::task::block_in_place(|| e.nodes[victim].restart(&seeds));
    let t = wait_topic(&e, &admin, "the restarted replica back in every ISR", |t| {
        t.partition_info.iter().all(|p| p.isr.len() == 3)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    task.await.expect("producer");

    // Then the leader of partition 0 (if it is not the producer's node) dies too: the restarted
    // replica must hold everything acknowledged.
    let second = e.index_of(t.partition_info[0].leader.expect("leader"));
    if second != entry {
        tokio::task::block_in_place(|| e.nodes[second].kill9());
    }
    let reader = e.client(&[entry]).await;
    wait_topic(&e, &reader, "every partition led by a live node", |t| {
        t.partition_info
            .iter()
            .all(|p| p.leader.is_some_and(|l| second == entry || l != e.nodes[second].id()))
    })
    .await;

    let mut logs = BTreeMap::new();
    for p in 0..PARTITIONS {
        logs.insert(p, read_all(&reader, p).await);
    }
    let h = std::mem::take(&mut *history.lock().unwrap());
    let mut seen: HashMap<&str, (u32, i64)> = HashMap::new();
    for (p, log) in &logs {
        for (off, v) in log {
            if let Some(first) = seen.insert(v.as_str(), (*p, *off)) {
                panic!("{v} is in the log twice: {first:?} and {:?}", (p, off));
            }
        }
    }
    for (v, (p, off, _)) in &h.acked {
        assert_eq!(
            logs[p].get(off).map(String::as_str),
            Some(v.as_str()),
            "acknowledged {v} at {p}/{off} is not there\n{}",
            e.logs()
        );
    }
    let sent: std::collections::HashSet<&str> = h
        .acked
        .keys()
        .map(String::as_str)
        .chain(h.unknown.iter().map(String::as_str))
        .chain(h.refused.iter().map(|(v, _)| v.as_str()))
        .collect();
    for v in seen.keys() {
        assert!(sent.contains(v), "{v} is in the log but was never sent");
    }
    for (v, why) in &h.refused {
        assert!(!seen.contains_key(v.as_str()), "{v} was refused ({why}) yet is in the log");
    }
    let after: Vec<Instant> = h
        .acked
        .values()
        .filter(|(p, _, t)| *p == 0 && *t > killed_at)
        .map(|(_, _, t)| *t)
        .collect();
    assert!(!after.is_empty(), "partition 0 acknowledged nothing after the kill\n{}", e.logs());
    let first_after = after.iter().min().expect("some");
    println!(
        "acked {}, unknown {}, refused {}; partition 0's first acknowledgement {} ms after the kill -9 of its leader",
        h.acked.len(),
        h.unknown.len(),
        h.refused.len(),
        first_after.duration_since(killed_at).as_millis()
    );
}

/// Two members of a group read a topic while records keep coming; one joins late (a
/// rebalance), the first leaves (another). Each record is read exactly once by the group, no
/// partition is ever read by both members at once, and each member reads a partition in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_reads_each_record_once_across_rebalances() {
    use starling_client::topic::{Assignor, GroupConsumer, StartFrom};
    const GROUP_TOPIC: &str = "clicks";
    const PARTS: u32 = 4;
    let e = tokio::task::block_in_place(Ensemble::start);
    let c = e.client(&[0, 1, 2]).await;
    e.create_topic(&c, GROUP_TOPIC, PARTS).await;
    let mut produced: Vec<String> = Vec::new();
    let produce = |c: Client, from: usize, to: usize| async move {
        let mut out = Vec::new();
        for i in from..to {
            let v = format!("c{i}");
            let p = (i as u32) % PARTS;
            c.produce(GROUP_TOPIC, p, Acks::All, &[record(&v)]).await.expect("call").expect("ack");
            out.push(v);
        }
        out
    };
    produced.extend(produce(c.clone(), 0, 200).await);

    let session = Duration::from_secs(5);
    async fn join(c: &Client, session: Duration) -> GroupConsumer {
        GroupConsumer::join(c, "readers", "clicks", StartFrom::Beginning, Assignor::Range, session)
            .await
            .expect("join")
    }
    let mut members = vec![Some(join(&c, session).await)];
    // value -> (member, partition, offset)
    let mut read: HashMap<String, (usize, u32, i64)> = HashMap::new();
    let mut last: HashMap<(usize, u32), i64> = HashMap::new();
    let deadline = Instant::now() + PATIENCE;
    let mut round = 0;
    // Phases: a alone; b joins (until b reads a share); more records; a leaves; more records.
    let mut phase = 0;
    while read.len() < 500 {
        assert!(Instant::now() < deadline, "only {} of 500 read\n{}", read.len(), e.logs());
        round += 1;
        let b_has =
            members.get(1).and_then(|b| b.as_ref()).is_some_and(|b| !b.assignment().is_empty());
        if phase == 0 && read.len() >= 200 {
            members.push(Some(join(&c, session).await));
            phase = 1;
        } else if phase == 1 && b_has {
            produced.extend(produce(c.clone(), 200, 400).await);
            phase = 2;
        } else if phase == 2 && read.len() >= 400 {
            let a = members[0].take().expect("a");
            a.leave().await.expect("call").expect("leave");
            produced.extend(produce(c.clone(), 400, 500).await);
            phase = 3;
        }
        for (m, slot) in members.iter_mut().enumerate() {
            let Some(consumer) = slot.as_mut() else { continue };
            let got = consumer.poll(Duration::from_millis(100)).await.expect("call").expect("poll");
            for (p, r) in got {
                let v = String::from_utf8(r.value.expect("value").to_vec()).expect("utf-8");
                if let Some(prev) = last.insert((m, p), r.offset) {
                    assert!(r.offset > prev, "member {m} read {p}/{} after {prev}", r.offset);
                }
                if let Some(first) = read.insert(v.clone(), (m, p, r.offset)) {
                    panic!("{v} read twice: {first:?} and {:?}", (m, p, r.offset));
                }
            }
            consumer.commit().await.expect("call").expect("commit");
        }
        // No partition is held by both members at once.
        let held: Vec<Vec<u32>> = members
            .iter()
            .map(|s| s.as_ref().map(|c| c.assignment()).unwrap_or_default())
            .collect();
        for p in 0..PARTS {
            let holders = held.iter().filter(|h| h.contains(&p)).count();
            assert!(holders <= 1, "partition {p} held by {holders} members: {held:?}");
        }
    }
    let readers: std::collections::HashSet<usize> = read.values().map(|(m, _, _)| *m).collect();
    assert_eq!(readers.len(), 2, "both members read something: {readers:?}");
    for v in &produced {
        assert!(read.contains_key(v), "{v} was never read");
    }
    println!("read {} records once each, over {round} rounds", read.len());

    // The group's commits belong to this topic: deleted and created again under the same name,
    // it starts with none (the offsets are keyed by the topic's incarnation, as in Kafka).
    let before = c.committed_offsets("readers", GROUP_TOPIC).await.expect("call").expect("read");
    assert!(before.iter().any(|(_, o)| o.is_some()), "the group committed: {before:?}");
    for m in members.into_iter().flatten() {
        m.leave().await.expect("call").expect("leave");
    }
    c.delete_topic(GROUP_TOPIC).await.expect("call").expect("delete");
    e.create_topic(&c, GROUP_TOPIC, PARTS).await;
    let after = c.committed_offsets("readers", GROUP_TOPIC).await.expect("call").expect("read");
    assert!(after.iter().all(|(_, o)| o.is_none()), "the new topic has old commits: {after:?}");
}
