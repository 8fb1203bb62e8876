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
        Ensemble::start_with(&[])
    }

    /// Three nodes, each started with `extra` in its environment (so are nodes added later).
    fn start_with(extra: &[(&str, &str)]) -> Ensemble {
        let dir = tempfile::tempdir().expect("tempdir");
        let names = ["node1", "node2", "node3", "node4", "node5", "operator", "client"];
        let certs = process::certs(&dir.path().join("certs"), &names);
        let listens: Vec<SocketAddr> =
            (0..3).map(|_| format!("127.0.0.1:{}", free_port()).parse().unwrap()).collect();
        let voters = listens.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(",");
        let mut env = vec![("STARLING_META_VOTERS".to_string(), voters)];
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
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

    /// Starts a fourth node (not a metadata voter), seeded with the first.
    fn add_node(&mut self) {
        let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        // The voters and whatever else the first nodes were started with.
        let env = self.nodes[0].env.clone();
        let dir = self.nodes[0].data.parent().expect("parent").to_owned();
        let bin = Path::new(env!("CARGO_BIN_EXE_starlingd"));
        let name = format!("node{}", self.nodes.len() + 1);
        self.nodes.push(process::Node::start_with_env(
            bin,
            &dir.join(&name),
            &self.certs.join(&name),
            &listen.to_string(),
            &[self.listens[0]],
            &env,
        ));
        self.listens.push(listen);
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

/// Produces with an idempotent producer (a produce whose leader died with it in flight is
/// sent again, and must not be written twice) until `stop`, round-robin over the partitions,
/// recording every outcome.
fn keep_producing(
    client: &Client,
    partitions: u32,
    history: Arc<Mutex<History>>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    let mut producer = IdempotentProducer::new(client);
    tokio::spawn(async move {
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let value = format!("v{i}");
            let p = (i % u64::from(partitions)) as u32;
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
}

/// Reads every partition through `reader` and checks it against the history: every
/// acknowledged record at the offset it was acknowledged with, no record twice, nothing in the
/// log that was never sent or was refused.
async fn check_history(e: &Ensemble, reader: &Client, partitions: u32, h: &History) {
    let mut logs = BTreeMap::new();
    for p in 0..partitions {
        logs.insert(p, read_all(reader, p).await);
    }
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_records_survive_leader_kills_and_a_restart() {
    leader_kills_and_a_restart(&[]).await;
}

/// The same with `--sync always`: every append counts only once fsynced, the produce calls
/// queued at a leader sharing one fsync (group commit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_records_survive_leader_kills_and_a_restart_in_always_mode() {
    leader_kills_and_a_restart(&[("STARLING_SYNC", "always")]).await;
}

/// Three nodes (`extra` in their environment) and the topic, every partition led with all
/// three in its ISR: the ensemble, a client of all three, the index of partition 0's leader and
/// of another node.
async fn kill_setup(extra: &[(&str, &str)]) -> (Ensemble, Client, usize, usize) {
    let e = tokio::task::block_in_place(|| Ensemble::start_with(extra));
    let admin = e.client(&[0, 1, 2]).await;
    e.create_topic(&admin, TOPIC, PARTITIONS).await;
    let t = wait_topic(&e, &admin, "every partition led", |t| {
        t.partition_info.iter().all(|p| p.leader.is_some() && p.isr.len() == 3)
    })
    .await;
    let victim = e.index_of(t.partition_info[0].leader.expect("leader"));
    let entry = (0..3).find(|&i| i != victim).expect("another node");
    (e, admin, victim, entry)
}

/// Kills node `victim` with -9, waits for partition 0's new leader, restarts it (seeded with
/// `entry`) 3 s later and waits until it is back in every ISR; the topic then.
async fn kill_and_restart(
    e: &mut Ensemble,
    admin: &Client,
    victim: usize,
    entry: usize,
) -> TopicInfo {
    tokio::task::block_in_place(|| e.nodes[victim].kill9());
    wait_topic(e, admin, "a new leader for partition 0", |t| {
        t.partition_info[0].leader.is_some_and(|l| l != e.nodes[victim].id())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let seeds = [e.listens[entry]];
    tokio::task::block_in_place(|| e.nodes[victim].restart(&seeds));
    let t = wait_topic(e, admin, "the restarted replica back in every ISR", |t| {
        t.partition_info.iter().all(|p| p.isr.len() == 3)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    t
}

/// An idempotent producer writes while the leader of partition 0 is killed with -9, then
/// restarted, then the next leader killed: every acknowledged record is in the log at its
/// offset, none twice, nothing that was refused or never sent.
async fn leader_kills_and_a_restart(extra: &[(&str, &str)]) {
    let (mut e, admin, victim, entry) = kill_setup(extra).await;
    // The producer talks to one node that stays up; it forwards to the leaders.
    let producer = e.client(&[entry]).await;

    let history = Arc::new(Mutex::new(History::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let task = keep_producing(&producer, PARTITIONS, history.clone(), stop.clone());

    tokio::time::sleep(Duration::from_secs(2)).await;
    let killed_at = Instant::now();
    let t = kill_and_restart(&mut e, &admin, victim, entry).await;
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

    let h = std::mem::take(&mut *history.lock().unwrap());
    check_history(&e, &reader, PARTITIONS, &h).await;
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

/// What a group member read while a partition leader was killed and restarted.
#[derive(Default)]
struct Consumed {
    /// value -> every (partition, offset) it was read at.
    reads: HashMap<String, Vec<(u32, i64)>>,
    /// Commits (or polls) that failed: the records read since the last good commit may come
    /// again after the member rejoins (at least once).
    failed: u64,
    /// Per partition, the next offset to read as of the last poll.
    positions: BTreeMap<u32, i64>,
}

/// A group member reads the topic while an idempotent producer writes it and the leader of
/// partition 0 is killed with -9, then restarted: every acknowledged record is read by the group,
/// at the offset it was acknowledged with; within a generation a partition's reads only go
/// forward; a record is read twice only if a commit failed in between (the at-least-once of
/// Kafka's consumers), and then at the same offset; nothing is read that was not sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_reads_every_acknowledged_record_while_a_leader_is_killed() {
    use starling_client::topic::{Assignor, GroupConsumer, StartFrom};
    let (mut e, admin, victim, entry) = kill_setup(&[]).await;
    // Producer and consumer talk to a node that stays up.
    let producer = e.client(&[entry]).await;
    let reader = e.client(&[entry]).await;
    let history = Arc::new(Mutex::new(History::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let task = keep_producing(&producer, PARTITIONS, history.clone(), stop.clone());

    let consumed = Arc::new(Mutex::new(Consumed::default()));
    let reading = Arc::new(AtomicBool::new(true));
    let mut member = GroupConsumer::join(
        &reader,
        "auditors",
        TOPIC,
        StartFrom::Beginning,
        Assignor::Range,
        Duration::from_secs(5),
    )
    .await
    .expect("join");
    let consumer = {
        let (consumed, reading) = (consumed.clone(), reading.clone());
        tokio::spawn(async move {
            // (generation, partition) -> last offset read
            let mut last: HashMap<(u64, u32), i64> = HashMap::new();
            while reading.load(Ordering::Relaxed) {
                let got = member.poll(Duration::from_millis(100)).await;
                let committed = member.commit().await;
                let mut c = consumed.lock().unwrap();
                let got = match got {
                    Ok(Ok(got)) => got,
                    _ => {
                        c.failed += 1;
                        continue;
                    }
                };
                let generation = member.generation();
                for (p, r) in got {
                    let v = String::from_utf8(r.value.expect("value").to_vec()).expect("utf-8");
                    if let Some(prev) = last.insert((generation, p), r.offset) {
                        assert!(
                            r.offset > prev,
                            "read {p}/{} after {prev} in generation {generation}",
                            r.offset
                        );
                    }
                    c.reads.entry(v).or_default().push((p, r.offset));
                }
                if !matches!(committed, Ok(Ok(()))) {
                    c.failed += 1;
                }
                c.positions =
                    (0..PARTITIONS).filter_map(|p| Some((p, member.position(p)?))).collect();
            }
            member.leave().await.ok();
        })
    };

    tokio::time::sleep(Duration::from_secs(2)).await;
    kill_and_restart(&mut e, &admin, victim, entry).await;
    stop.store(true, Ordering::Relaxed);
    task.await.expect("producer");

    // The member reads on until it has every partition up to its high watermark.
    let mut ends = BTreeMap::new();
    for p in 0..PARTITIONS {
        let o = reader.partition_offsets(TOPIC, p).await.expect("call").expect("offsets");
        ends.insert(p, o.high_watermark);
    }
    let deadline = Instant::now() + PATIENCE;
    loop {
        let caught_up = {
            let c = consumed.lock().unwrap();
            ends.iter().all(|(p, end)| c.positions.get(p).is_some_and(|at| at >= end))
        };
        if caught_up {
            break;
        }
        let at = consumed.lock().unwrap().positions.clone();
        assert!(Instant::now() < deadline, "the member reached {at:?} of {ends:?}\n{}", e.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    reading.store(false, Ordering::Relaxed);
    consumer.await.expect("consumer");

    let h = std::mem::take(&mut *history.lock().unwrap());
    let c = std::mem::take(&mut *consumed.lock().unwrap());
    let mut again = 0;
    for (v, at) in &c.reads {
        assert!(at.iter().all(|x| *x == at[0]), "{v} was read at two different offsets: {at:?}");
        if at.len() > 1 {
            assert!(c.failed > 0, "{v} was read {} times with every commit answered", at.len());
            again += 1;
        }
        assert!(
            h.acked.contains_key(v) || h.unknown.contains(v),
            "{v} was read but never acknowledged or left unknown"
        );
    }
    for (v, (p, off, _)) in &h.acked {
        let at = c.reads.get(v).map(|a| a[0]);
        assert_eq!(
            at,
            Some((*p, *off)),
            "acknowledged {v} at {p}/{off}, read at {at:?}\n{}",
            e.logs()
        );
    }
    println!(
        "acked {}, unknown {}; the group read {} records, {again} of them again after {} failed polls or commits",
        h.acked.len(),
        h.unknown.len(),
        c.reads.len(),
        c.failed
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

/// Every partition's replicas match, the ISR is all of them, and a leader leads.
fn settled(t: &TopicInfo) -> bool {
    t.partition_info.iter().all(|p| {
        p.leader.is_some()
            && p.replicas.len() == 3
            && p.isr.len() == 3
            && p.isr.iter().all(|n| p.replicas.contains(n))
    })
}

/// Partitions follow the ring. A fourth node joins: the partitions whose preference list now
/// names it move (it copies the log, joins the ISR, then the replica it replaces leaves the
/// list and deletes its copy). It leaves (`starling leave`): they move back before it exits.
/// A fifth node joins, takes partitions, is killed with -9 and removed with `starling
/// removenode`: its partitions move back to the three others. An idempotent producer at
/// `acks=all` runs throughout; nothing acknowledged is lost, nothing is written twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_follow_the_ring_through_joins_a_leave_and_a_removal() {
    const PARTS: u32 = 6;
    let mut e = tokio::task::block_in_place(Ensemble::start);
    let admin = e.client(&[0, 1, 2]).await;
    e.create_topic(&admin, TOPIC, PARTS).await;
    wait_topic(&e, &admin, "every partition led", settled).await;
    let producer = e.client(&[0]).await;
    let history = Arc::new(Mutex::new(History::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let task = keep_producing(&producer, PARTS, history.clone(), stop.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
    // A peer call (an operator's node certificate).
    let op_certs = e.certs.join("operator");
    let operator = |at: SocketAddr| {
        let certs = op_certs.clone();
        async move { Client::connect(&[at.to_string()], &Auth::certs(certs)).await.expect("op") }
    };
    let mut figures = Vec::new();

    let (moved_to_4, join4) = join_and_wait_for_partitions(&mut e, &admin).await;
    let node4 = e.nodes[3].id();
    let left_at = Instant::now();
    operator(e.listens[3]).await.call_node(0, starling_wire::Leave).await.expect("leave");
    let mut child = e.nodes[3].child.take().expect("node4 runs");
    let exited = tokio::task::block_in_place(|| {
        process::wait_for(PATIENCE, || child.try_wait().ok().flatten())
    });
    assert!(exited.is_some_and(|s| s.success()), "node4 did not stop after leave\n{}", e.logs());
    let t = admin.describe_topic(TOPIC, false).await.expect("call").expect("describe");
    assert!(
        t.partition_info.iter().all(|p| !p.replicas.contains(&node4)) && settled(&t),
        "node4 left before its partitions moved: {t:?}"
    );
    figures.push(format!(
        "node4 took {moved_to_4} partitions within {join4:.1} s of its start and handed them over in a leave of {:.1} s",
        left_at.elapsed().as_secs_f64()
    ));

    let (moved_to_5, join5) = join_and_wait_for_partitions(&mut e, &admin).await;
    let node5 = e.nodes[4].id();
    tokio::task::block_in_place(|| e.nodes[4].kill9());
    let removed_at = Instant::now();
    let op = operator(e.listens[0]).await;
    // Refused until gossip sees the node down.
    while let Err(err) =
        op.call_node(0, starling_wire::repair::RemoveNode { node: node5.to_string() }).await
    {
        assert!(removed_at.elapsed() < PATIENCE, "removenode: {err}\n{}", e.logs());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    wait_topic(&e, &admin, "the removed node in no replica list", |t| {
        t.partition_info.iter().all(|p| !p.replicas.contains(&node5)) && settled(t)
    })
    .await;
    figures.push(format!(
        "node5 took {moved_to_5} partitions within {join5:.1} s of its start; they were back on the others {:.1} s after its kill -9",
        removed_at.elapsed().as_secs_f64()
    ));
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    task.await.expect("producer");

    let h = std::mem::take(&mut *history.lock().unwrap());
    check_history(&e, &admin, PARTS, &h).await;
    println!(
        "acked {}, unknown {}, refused {}; {}",
        h.acked.len(),
        h.unknown.len(),
        h.refused.len(),
        figures.join("; ")
    );
}

/// Starts the next node and waits until some partitions moved to it and every partition is
/// settled again; then until, on every running node, a partition has a folder exactly when its
/// replica list names the node (each replaced replica deleted its copy). Other partitions may
/// still start their move after the first one settled (each leader sees the ring settle on its
/// own clock), so the folders are compared with a fresh description each time. Returns how many
/// partitions the new node holds and how long until the first one had moved.
async fn join_and_wait_for_partitions(e: &mut Ensemble, admin: &Client) -> (usize, f64) {
    let started = Instant::now();
    tokio::task::block_in_place(|| e.add_node());
    let new = e.nodes.last().expect("node").id();
    wait_topic(e, admin, "partitions moved to the new node", |t| {
        t.partition_info.iter().any(|p| p.replicas.contains(&new)) && settled(t)
    })
    .await;
    let secs = started.elapsed().as_secs_f64();
    let running: Vec<_> =
        e.nodes.iter().filter(|n| n.child.is_some()).map(|n| (n.id(), n.data.clone())).collect();
    let mut mismatch = String::new();
    let folders_match = |t: &TopicInfo, mismatch: &mut String| {
        mismatch.clear();
        for (id, data) in &running {
            for p in &t.partition_info {
                let dir = data.join(format!("topics/{TOPIC}-{}", p.partition));
                if dir.exists() != p.replicas.contains(id) {
                    let what = if dir.exists() { "kept after its replica left" } else { "missing" };
                    *mismatch = format!("{} {what} (replicas {:?})", dir.display(), p.replicas);
                    return false;
                }
            }
        }
        true
    };
    let start = Instant::now();
    let last = loop {
        if let Ok(Ok(t)) = admin.describe_topic(TOPIC, true).await {
            if settled(&t) && folders_match(&t, &mut mismatch) {
                break t;
            }
        }
        assert!(start.elapsed() < PATIENCE, "folders never matched the replica lists: {mismatch}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    (last.partition_info.iter().filter(|p| p.replicas.contains(&new)).count(), secs)
}

/// A partition move copies the log to the new replica no faster than `--topic-move-rate`
/// (here 256 KiB/s) allows each leader, and the leaders' status shows the move while it runs:
/// the replica being added, how far it has copied, and the one dropped after. Nothing
/// acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_copies_at_the_move_rate_and_the_leaders_status_shows_it() {
    const PARTS: u32 = 4;
    const RATE: f64 = 256.0 * 1024.0;
    let mut e = tokio::task::block_in_place(|| {
        Ensemble::start_with(&[("STARLING_TOPIC_MOVE_RATE", "256KiB")])
    });
    let admin = e.client(&[0, 1, 2]).await;
    e.create_topic(&admin, TOPIC, PARTS).await;
    wait_topic(&e, &admin, "every partition led", settled).await;
    // About 3.2 MiB: 800 records of 1 KiB per partition, 20 to a batch.
    let mut producer = IdempotentProducer::new(&admin);
    let value = "x".repeat(1024);
    for p in 0..PARTS {
        for _ in 0..40 {
            let batch: Vec<NewRecord> = (0..20).map(|_| record(&value)).collect();
            let r = producer.send(TOPIC, p, Acks::All, &batch).await.expect("call");
            r.expect("produce");
        }
    }
    tokio::task::block_in_place(|| e.add_node());
    let new = e.nodes[3].id();
    let https: Vec<SocketAddr> = e.nodes.iter().map(|n| n.addrs.http).collect();
    let start = Instant::now();
    let mut first_seen: Option<Instant> = None;
    let mut seen_copying = false;
    // Which node led each partition's move.
    let mut leader_of: HashMap<u32, usize> = HashMap::new();
    let moved = loop {
        for (i, &http) in https[..3].iter().enumerate() {
            let Some(st) = tokio::task::block_in_place(|| process::http_status(http)) else {
                continue;
            };
            for p in st.topics.iter().filter(|p| p.role == "leader") {
                let Some(m) = &p.moving else { continue };
                first_seen.get_or_insert_with(Instant::now);
                leader_of.insert(p.partition, i);
                assert!(
                    m.adding.iter().all(|r| r.node == new.to_string()),
                    "only the new node is added: {m:?}"
                );
                assert_eq!(m.removing.len(), 1, "one replica leaves: {m:?}");
                assert_eq!(p.replicas.len(), 4, "the new replica is listed: {p:?}");
                seen_copying |= m.adding.iter().any(|r| r.log_end.is_some_and(|e| e < p.log_end));
            }
        }
        if let Ok(Ok(t)) = admin.describe_topic(TOPIC, true).await {
            if t.partition_info.iter().any(|p| p.replicas.contains(&new)) && settled(&t) {
                break t;
            }
        }
        assert!(start.elapsed() < PATIENCE * 2, "the move did not finish\n{}", e.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let window = first_seen.expect("a leader showed the move").elapsed().as_secs_f64();
    assert!(seen_copying, "a leader showed the new replica partway through the log");
    // What the new node copied: the partitions it now replicates, as its own status sizes them.
    let mine: Vec<u32> = moved
        .partition_info
        .iter()
        .filter(|p| p.replicas.contains(&new))
        .map(|p| p.partition)
        .collect();
    let st = tokio::task::block_in_place(|| process::http_status(https[3])).expect("status");
    let sizes: HashMap<u32, u64> = st
        .topics
        .iter()
        .filter(|p| p.topic == TOPIC && mine.contains(&p.partition))
        .map(|p| (p.partition, p.size_bytes))
        .collect();
    let copied: u64 = sizes.values().sum();
    // The budget is each leader's: the leader that sent the most sets the least time.
    let mut sent_by: HashMap<usize, u64> = HashMap::new();
    for p in &mine {
        let leader = *leader_of.get(p).expect("a leader showed each partition's move");
        *sent_by.entry(leader).or_default() += sizes.get(p).copied().unwrap_or_default();
    }
    let most = sent_by.values().copied().max().unwrap_or_default();
    let least = most as f64 / RATE;
    println!(
        "node4 copied {copied} bytes of {} partitions from {} leaders in a move shown for {window:.1} s; the busiest leader sent {most} bytes, {least:.1} s at the rate",
        mine.len(),
        sent_by.len()
    );
    // The first fetch may take an eighth of a second's burst at once; polling may see the
    // move late by a fraction of a second. Without the throttle it takes well under a second.
    assert!(most > 700_000, "a leader sent a whole partition: {most} bytes");
    assert!(window >= least * 0.7, "the move took {window:.1} s, faster than the rate allows");
    for p in 0..PARTS {
        assert_eq!(read_all(&admin, p).await.len(), 800, "partition {p} lost records");
    }
}
