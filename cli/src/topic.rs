//! `starling topic ...`: create, list, describe and delete topics, produce and consume records;
//! and `starling bench topic`.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use starling_client::topic::{
    partition_for_key, Acks, Assignor, GroupConsumer, IdempotentProducer, NewRecord, StartFrom,
    StoredRecord, TopicError, TopicInfo,
};

use crate::bench::{self, Progress};
use crate::client::{self, Auth, Client, ClientError};

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcksArg {
    /// Wait for nothing.
    #[value(name = "0")]
    Zero,
    /// Wait for the leader's append.
    #[value(name = "1")]
    One,
    /// Wait for every in-sync replica (at least the topic's min in-sync).
    All,
}

impl From<AcksArg> for Acks {
    fn from(a: AcksArg) -> Acks {
        match a {
            AcksArg::Zero => Acks::None,
            AcksArg::One => Acks::Leader,
            AcksArg::All => Acks::All,
        }
    }
}

#[derive(clap::Subcommand, Debug)]
pub enum TopicCmd {
    /// Create a topic. Each partition's replicas are the ring's preference list for
    /// "<name>/<partition>"; its first live in-sync replica leads.
    Create {
        name: String,
        #[arg(long, default_value_t = 1)]
        partitions: u32,
        #[arg(long, default_value_t = 3)]
        replication: u32,
        /// `acks=all` needs this many in-sync replicas [default: min(2, replication)].
        #[arg(long)]
        min_insync: Option<u32>,
        #[arg(long)]
        json: bool,
    },
    /// List the topics.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Each partition's replicas, leader, epoch, in-sync replicas, log start and end, and high
    /// watermark.
    Describe {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Delete a topic and its data on every replica.
    Delete {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Change a topic: add partitions (never remove: keys would move), its min in-sync
    /// replicas, or retention (closed segments older than --retention, e.g. 7d, or beyond
    /// --retention-bytes per partition; "none" for no limit).
    Alter {
        name: String,
        #[arg(long)]
        partitions: Option<u32>,
        #[arg(long)]
        min_insync: Option<u32>,
        #[arg(long, value_parser = parse_limit_duration)]
        retention: Option<Limit>,
        #[arg(long, value_parser = parse_limit_bytes)]
        retention_bytes: Option<Limit>,
        #[arg(long)]
        json: bool,
    },
    /// Append records: the VALUES given, or one per line of stdin. With --key, the partition
    /// is Kafka's default partitioner's (murmur2 of the key); without, round-robin.
    Produce {
        name: String,
        values: Vec<String>,
        #[arg(long)]
        key: Option<String>,
        /// Write to this partition.
        #[arg(long, conflicts_with = "key")]
        partition: Option<u32>,
        #[arg(long, value_enum, default_value = "all")]
        acks: AcksArg,
        #[arg(long)]
        json: bool,
    },
    /// Print records (partition@offset key=value; --json: one object per line). Starts at
    /// the end of each partition (Kafka's `latest`) unless --from-beginning or --from-offset;
    /// without --follow, stops at the high watermark seen when it started. With --group, reads
    /// the partitions the group gives this member, from the group's committed offsets (the
    /// --from-* flags apply where there is none), commits after printing, and without
    /// --follow stops once nothing new arrives for a second.
    Consume {
        name: String,
        /// Consume as a member of this consumer group.
        #[arg(long)]
        group: Option<String>,
        /// How the group spreads partitions over its members.
        #[arg(long, value_enum, default_value = "range", requires = "group")]
        assignor: AssignorArg,
        /// Only this partition.
        #[arg(long)]
        partition: Option<u32>,
        #[arg(long)]
        from_beginning: bool,
        /// Start at this offset in every partition read.
        #[arg(long, conflicts_with = "from_beginning")]
        from_offset: Option<i64>,
        /// Start at the first record at or after this time: RFC 3339 (2026-12-04T17:00:00Z)
        /// or milliseconds since the Unix epoch.
        #[arg(long, conflicts_with_all = ["from_beginning", "from_offset"], value_parser = parse_time)]
        from_time: Option<i64>,
        /// Stop after this many records.
        #[arg(long)]
        max: Option<u64>,
        /// Keep waiting for new records (until Ctrl-C or --max).
        #[arg(long)]
        follow: bool,
        #[arg(long)]
        json: bool,
    },
    /// Consumer groups: members, the partitions each reads, committed offsets and lag.
    Groups {
        group: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

/// A retention limit: a number, or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit(Option<i64>);

fn parse_limit_duration(s: &str) -> Result<Limit, String> {
    if s == "none" {
        return Ok(Limit(None));
    }
    humantime::parse_duration(s)
        .map(|d| Limit(Some(d.as_millis() as i64)))
        .map_err(|e| format!("{s:?}: {e} (e.g. 7d, 12h, or none)"))
}

fn parse_limit_bytes(s: &str) -> Result<Limit, String> {
    if s == "none" {
        return Ok(Limit(None));
    }
    s.parse::<i64>()
        .ok()
        .filter(|b| *b > 0)
        .map(|b| Limit(Some(b)))
        .ok_or_else(|| format!("{s:?}: a number of bytes, or none"))
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum AssignorArg {
    Range,
    RoundRobin,
}

fn topic_err(e: TopicError) -> anyhow::Error {
    match e {
        TopicError::NoTopic(_) | TopicError::NoPartition { .. } => {
            ClientError::NotFound(e.to_string()).into()
        }
        TopicError::Invalid(_) | TopicError::Exists(_) | TopicError::OffsetOutOfRange { .. } => {
            ClientError::BadInput(e.to_string()).into()
        }
        TopicError::NotLeader { .. }
        | TopicError::Unavailable(_)
        | TopicError::NotEnoughReplicas { .. }
        | TopicError::OutcomeUnknown(_) => ClientError::Unavailable(e.to_string()).into(),
        e => anyhow!("{e}"),
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn text(b: Option<&[u8]>) -> Option<String> {
    b.map(|b| String::from_utf8_lossy(b).into_owned())
}

pub async fn run(node: &str, auth: &Auth, cmd: &TopicCmd) -> Result<()> {
    let client = client::connect(node, auth).await?;
    let r = run_with(&client, cmd).await;
    client.close().await;
    r
}

fn short(id: &starling_wire::NodeId) -> String {
    id.short()
}

fn describe_json(t: &TopicInfo) -> serde_json::Value {
    serde_json::json!({
        "name": t.name,
        "partitions": t.partitions,
        "replication": t.replication,
        "min_insync": t.min_insync,
        "partition_info": t.partition_info.iter().map(|p| serde_json::json!({
            "partition": p.partition,
            "replicas": p.replicas.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "leader": p.leader.map(|l| l.to_string()),
            "leader_addr": p.leader_addr,
            "leader_epoch": p.leader_epoch,
            "isr": p.isr.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "log_start": p.offsets.map(|o| o.log_start),
            "log_end": p.offsets.map(|o| o.log_end),
            "high_watermark": p.offsets.map(|o| o.high_watermark),
        })).collect::<Vec<_>>(),
    })
}

fn describe_human(t: &TopicInfo) -> String {
    let mut out = format!(
        "topic {}: {} partitions, replication {}, min in-sync {}\n",
        t.name, t.partitions, t.replication, t.min_insync
    );
    out.push_str(&format!(
        "{:>9}  {:<8}  {:>5}  {:<26}  {:<26}  {:>10}  {:>10}  {:>10}\n",
        "partition", "leader", "epoch", "replicas", "isr", "log start", "log end", "high wm"
    ));
    for p in &t.partition_info {
        let ids = |v: &[starling_wire::NodeId]| v.iter().map(short).collect::<Vec<_>>().join(",");
        let num = |x: Option<i64>| x.map_or("-".to_string(), |x| x.to_string());
        out.push_str(&format!(
            "{:>9}  {:<8}  {:>5}  {:<26}  {:<26}  {:>10}  {:>10}  {:>10}\n",
            p.partition,
            p.leader.as_ref().map_or("none".to_string(), short),
            p.leader_epoch,
            ids(&p.replicas),
            ids(&p.isr),
            num(p.offsets.map(|o| o.log_start)),
            num(p.offsets.map(|o| o.log_end)),
            num(p.offsets.map(|o| o.high_watermark)),
        ));
    }
    out
}

/// What `create` and `alter` print: the topic's settings (`--json`: as `describe --json`).
fn print_topic(verb: &str, t: &TopicInfo, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(&describe_json(t))?);
    } else {
        println!(
            "{verb} topic {}: {} partitions, replication {}, min in-sync {}",
            t.name, t.partitions, t.replication, t.min_insync
        );
    }
    Ok(())
}

async fn run_with(client: &Client, cmd: &TopicCmd) -> Result<()> {
    match cmd {
        TopicCmd::Create { name, partitions, replication, min_insync, json } => {
            let t = client
                .create_topic(name, *partitions, *replication, min_insync.unwrap_or(0))
                .await
                .map_err(ClientError::from)?
                .map_err(topic_err)?;
            print_topic("created", &t, *json)?;
        }
        TopicCmd::List { json } => {
            let names =
                client.list_topics().await.map_err(ClientError::from)?.map_err(topic_err)?;
            if *json {
                println!("{}", serde_json::to_string(&names)?);
            } else {
                for n in names {
                    println!("{n}");
                }
            }
        }
        TopicCmd::Describe { name, json } => {
            let t = client
                .describe_topic(name, true)
                .await
                .map_err(ClientError::from)?
                .map_err(topic_err)?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&describe_json(&t))?);
            } else {
                print!("{}", describe_human(&t));
            }
        }
        TopicCmd::Delete { name, json } => {
            client.delete_topic(name).await.map_err(ClientError::from)?.map_err(topic_err)?;
            if *json {
                println!("{}", serde_json::json!({ "deleted": name }));
            } else {
                println!("deleted topic {name}");
            }
        }
        TopicCmd::Alter { name, partitions, min_insync, retention, retention_bytes, json } => {
            let alter = starling_client::topic::TopicAlter {
                name: name.clone(),
                partitions: *partitions,
                min_insync: *min_insync,
                retention_ms: retention.map(|l| l.0),
                retention_bytes: retention_bytes.map(|l| l.0.map(|b| b as u64)),
            };
            let t = client.call(alter).await.map_err(ClientError::from)?.map_err(topic_err)?;
            print_topic("altered", &t, *json)?;
        }
        TopicCmd::Produce { name, values, key, partition, acks, json } => {
            produce(client, name, values, key.as_deref(), *partition, (*acks).into(), *json).await?
        }
        TopicCmd::Consume {
            name,
            group,
            assignor,
            partition,
            from_beginning,
            from_offset,
            from_time,
            max,
            follow,
            json,
        } => {
            let start = match (from_beginning, from_offset, from_time) {
                (true, _, _) => Start::Beginning,
                (_, Some(o), _) => Start::Offset(*o),
                (_, _, Some(t)) => Start::Time(*t),
                _ => Start::End,
            };
            match group {
                Some(g) => {
                    if partition.is_some() {
                        return Err(ClientError::BadInput(
                            "--partition and --group exclude each other: the group assigns partitions".into(),
                        )
                        .into());
                    }
                    consume_group(client, name, g, *assignor, start, *max, *follow, *json).await?
                }
                None => consume(client, name, *partition, start, *max, *follow, *json).await?,
            }
        }
        TopicCmd::Groups { group, json } => groups(client, group.as_deref(), *json).await?,
    }
    Ok(())
}

/// `--partition P` must be one of the topic's.
fn check_partition(name: &str, p: u32, partitions: u32) -> Result<()> {
    if p >= partitions {
        return Err(ClientError::BadInput(format!(
            "topic {name} has partitions 0 to {}, not {p}",
            partitions.saturating_sub(1)
        ))
        .into());
    }
    Ok(())
}

/// Records per produce call when reading stdin.
const STDIN_BATCH: usize = 1000;

async fn produce(
    client: &Client,
    name: &str,
    values: &[String],
    key: Option<&str>,
    partition: Option<u32>,
    acks: Acks,
    json: bool,
) -> Result<()> {
    let info =
        client.describe_topic(name, false).await.map_err(ClientError::from)?.map_err(topic_err)?;
    let partitions = info.partitions;
    if let Some(p) = partition {
        check_partition(name, p, partitions)?;
    }
    let mut next_rr = (now_ms() as u64 % u64::from(partitions)) as u32;
    let mut pick = |k: Option<&str>| match (partition, k) {
        (Some(p), _) => p,
        (None, Some(k)) => partition_for_key(k.as_bytes(), partitions),
        (None, None) => {
            next_rr = (next_rr + 1) % partitions;
            next_rr
        }
    };
    let mut out = ProduceReport::default();
    // Retries of a produce whose answer was lost never write it twice.
    let mut producer = IdempotentProducer::new(client);
    let record = |v: &str| NewRecord {
        key: key.map(|k| k.as_bytes().to_vec()),
        value: Some(v.as_bytes().to_vec()),
        headers: Vec::new(),
        timestamp_ms: now_ms(),
    };
    if !values.is_empty() {
        let mut batch: BTreeMap<u32, Vec<NewRecord>> = BTreeMap::new();
        for v in values {
            batch.entry(pick(key)).or_default().push(record(v));
        }
        send(&mut producer, name, acks, json, batch, &mut out).await?;
    } else {
        let stdin = std::io::stdin();
        let mut lines = stdin.lock().lines();
        loop {
            let mut batch: BTreeMap<u32, Vec<NewRecord>> = BTreeMap::new();
            let mut n = 0;
            for line in lines.by_ref() {
                let line = line.map_err(|e| anyhow!("reading stdin: {e}"))?;
                batch.entry(pick(key)).or_default().push(record(&line));
                n += 1;
                if n == STDIN_BATCH {
                    break;
                }
            }
            if n == 0 {
                break;
            }
            send(&mut producer, name, acks, json, batch, &mut out).await?;
        }
    }
    if json {
        println!(
            "{}",
            serde_json::json!({ "topic": name, "records": out.total, "batches": out.batches })
        );
    }
    Ok(())
}

#[derive(Default)]
struct ProduceReport {
    total: u64,
    batches: Vec<serde_json::Value>,
}

/// Produces each partition's records as one batch.
async fn send(
    producer: &mut IdempotentProducer,
    name: &str,
    acks: Acks,
    json: bool,
    batch: BTreeMap<u32, Vec<NewRecord>>,
    out: &mut ProduceReport,
) -> Result<()> {
    for (p, recs) in batch {
        let n = recs.len();
        let at = producer
            .send(name, p, acks, &recs)
            .await
            .map_err(ClientError::from)?
            .map_err(topic_err)?;
        out.total += n as u64;
        if json {
            out.batches.push(serde_json::json!({
                "partition": p, "base_offset": at.base_offset,
                "last_offset": at.last_offset, "records": n,
            }));
        } else if acks == Acks::None {
            println!("sent {n} record(s) to {name} partition {p} (acks=0: not confirmed)");
        } else {
            println!(
                "produced {n} record(s) to {name} partition {p} at offsets {}..={}",
                at.base_offset, at.last_offset
            );
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Copy)]
enum Start {
    Beginning,
    End,
    Offset(i64),
    Time(i64),
}

/// `--from-time`: RFC 3339, or milliseconds since the Unix epoch.
fn parse_time(s: &str) -> Result<i64, String> {
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    humantime::parse_rfc3339_weak(s)
        .map_err(|e| format!("{s:?}: {e} (give RFC 3339, e.g. 2026-12-04T17:00:00Z, or milliseconds since the Unix epoch)"))
        .and_then(|t| {
            t.duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .map_err(|_| format!("{s:?} is before 1970"))
        })
}

fn print_record(p: u32, r: &StoredRecord, json: bool) {
    let key = text(r.key.as_deref());
    let value = text(r.value.as_deref());
    if json {
        println!(
            "{}",
            serde_json::json!({
                "partition": p, "offset": r.offset, "timestamp_ms": r.timestamp_ms,
                "key": key, "value": value,
            })
        );
    } else {
        match key {
            Some(k) => println!("{p}@{} {k}={}", r.offset, value.unwrap_or_default()),
            None => println!("{p}@{} {}", r.offset, value.unwrap_or_default()),
        }
    }
}

async fn consume(
    client: &Client,
    name: &str,
    only: Option<u32>,
    start: Start,
    max: Option<u64>,
    follow: bool,
    json: bool,
) -> Result<()> {
    let info =
        client.describe_topic(name, false).await.map_err(ClientError::from)?.map_err(topic_err)?;
    let parts: Vec<u32> = match only {
        Some(p) => {
            check_partition(name, p, info.partitions)?;
            vec![p]
        }
        None => (0..info.partitions).collect(),
    };
    // Where each partition starts, and (without --follow) where it stops.
    let mut pos: BTreeMap<u32, (i64, i64)> = BTreeMap::new();
    for &p in &parts {
        let o = client
            .partition_offsets(name, p)
            .await
            .map_err(ClientError::from)?
            .map_err(topic_err)?;
        let from = match start {
            Start::Beginning => o.log_start,
            Start::End => o.high_watermark,
            Start::Offset(x) => x.clamp(o.log_start, o.high_watermark.max(o.log_start)),
            Start::Time(ts) => client
                .offset_for_time(name, p, ts)
                .await
                .map_err(ClientError::from)?
                .map_err(topic_err)?,
        };
        pos.insert(p, (from, o.high_watermark));
    }
    let mut printed = 0u64;
    loop {
        let mut progressed = false;
        let mut all_done = true;
        for (&p, (at, stop)) in pos.iter_mut() {
            if !follow && *at >= *stop {
                continue;
            }
            all_done = false;
            let wait =
                if follow && parts.len() == 1 { Duration::from_secs(2) } else { Duration::ZERO };
            let got = client
                .fetch(name, p, *at, 1 << 20, wait)
                .await
                .map_err(ClientError::from)?
                .map_err(topic_err)?;
            for r in &got.records {
                if !follow && r.offset >= *stop {
                    break;
                }
                print_record(p, r, json);
                printed += 1;
                if max.is_some_and(|m| printed >= m) {
                    return Ok(());
                }
            }
            if got.next_offset > *at {
                progressed = true;
                *at = got.next_offset;
            }
        }
        if all_done {
            return Ok(());
        }
        if !progressed {
            if !follow {
                // The high watermark seen at the start moved back (a leader change): stop.
                return Ok(());
            }
            if parts.len() > 1 {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    _ = tokio::signal::ctrl_c() => return Ok(()),
                }
            }
        }
    }
}

/// One client per partition, connected to its leader (waits until every partition has one).
async fn leader_clients(client: &Client, auth: &Auth, topic: &str) -> Result<Vec<Client>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let t = client
            .describe_topic(topic, false)
            .await
            .map_err(ClientError::from)?
            .map_err(topic_err)?;
        let addrs: Option<Vec<String>> =
            t.partition_info.iter().map(|p| p.leader_addr.clone()).collect();
        if let Some(addrs) = addrs {
            let mut out = Vec::with_capacity(addrs.len());
            for a in addrs {
                out.push(Client::connect(&[a], auth).await.map_err(ClientError::from)?);
            }
            return Ok(out);
        }
        if Instant::now() > deadline {
            bail!("some partitions of {topic} still have no leader after 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[allow(clippy::too_many_arguments)]
async fn consume_group(
    client: &Client,
    name: &str,
    group: &str,
    assignor: AssignorArg,
    start: Start,
    max: Option<u64>,
    follow: bool,
    json: bool,
) -> Result<()> {
    let start = match start {
        Start::Beginning => StartFrom::Beginning,
        Start::End => StartFrom::End,
        Start::Offset(o) => StartFrom::Offset(o),
        Start::Time(t) => StartFrom::Time(t),
    };
    let assignor = match assignor {
        AssignorArg::Range => Assignor::Range,
        AssignorArg::RoundRobin => Assignor::RoundRobin,
    };
    let mut c = GroupConsumer::join(client, group, name, start, assignor, Duration::from_secs(10))
        .await
        .map_err(ClientError::from)?;
    let mut printed = 0u64;
    let mut idle = 0;
    loop {
        let polled = tokio::select! {
            r = c.poll(Duration::from_millis(500)) => r.map_err(ClientError::from)?.map_err(topic_err)?,
            _ = tokio::signal::ctrl_c() => break,
        };
        if polled.is_empty() {
            idle += 1;
            if !follow && idle >= 2 && !c.assignment().is_empty() {
                break;
            }
            continue;
        }
        idle = 0;
        let mut rewind: BTreeMap<u32, i64> = BTreeMap::new();
        for (p, r) in &polled {
            if max.is_some_and(|m| printed >= m) {
                rewind.entry(*p).or_insert(r.offset);
                continue;
            }
            print_record(*p, r, json);
            printed += 1;
        }
        // What was not printed is read again by whoever reads the partition next.
        for (p, off) in rewind {
            c.seek(p, off);
        }
        c.commit().await.map_err(ClientError::from)?.map_err(topic_err)?;
        if max.is_some_and(|m| printed >= m) {
            break;
        }
    }
    c.leave().await.map_err(ClientError::from)?.map_err(topic_err)?;
    Ok(())
}

async fn groups(client: &Client, group: Option<&str>, json: bool) -> Result<()> {
    let list =
        client.describe_groups(group).await.map_err(ClientError::from)?.map_err(topic_err)?;
    // Groups with committed offsets but no members now (Kafka's `Empty` groups): their lag
    // still counts.
    let committed = client
        .committed_groups(group)
        .await
        .map_err(ClientError::from)?
        .map_err(|e| anyhow!("reading the groups' committed offsets: {e}"))?;
    let mut entries: Vec<(String, String, Option<&starling_client::topic::GroupInfo>)> =
        list.iter().map(|g| (g.group.clone(), g.topic.clone(), Some(g))).collect();
    for (name, topics) in committed {
        for topic in topics {
            if !entries.iter().any(|(g, t, _)| *g == name && *t == topic) {
                entries.push((name.clone(), topic, None));
            }
        }
    }
    entries.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    let mut out = Vec::new();
    for (name, topic, live) in &entries {
        let committed =
            match client.committed_offsets(name, topic).await.map_err(ClientError::from)? {
                Ok(c) => c,
                // A topic deleted since the group committed in it.
                Err(TopicError::NoTopic(_)) if live.is_none() => continue,
                Err(e) => return Err(topic_err(e)),
            };
        let mut parts = Vec::new();
        for (p, c) in committed {
            let hw = match client.partition_offsets(topic, p).await.map_err(ClientError::from)? {
                Ok(o) => Some(o.high_watermark),
                Err(_) => None,
            };
            let member = live
                .and_then(|g| g.members.iter().find(|(_, ps)| ps.contains(&p)))
                .map(|(m, _)| m.clone());
            let lag = match (c, hw) {
                (Some(c), Some(hw)) => Some((hw - c).max(0)),
                (None, Some(hw)) => Some(hw),
                _ => None,
            };
            parts.push(serde_json::json!({
                "partition": p, "member": member, "committed": c, "high_watermark": hw, "lag": lag,
            }));
        }
        out.push(match live {
            Some(g) => serde_json::json!({
                "group": g.group, "topic": g.topic, "state": "active", "generation": g.generation,
                "assignor": format!("{:?}", g.assignor), "coordinator": g.coordinator.to_string(),
                "members": g.members.iter().map(|(m, ps)| serde_json::json!({"member": m, "partitions": ps})).collect::<Vec<_>>(),
                "partitions": parts,
            }),
            None => serde_json::json!({
                "group": name, "topic": topic, "state": "empty", "generation": null,
                "assignor": null, "coordinator": null, "members": [], "partitions": parts,
            }),
        });
    }
    if let (Some(g), true) = (group, out.is_empty()) {
        return Err(ClientError::NotFound(format!(
            "group {g} has no members and no committed offsets in a topic that exists"
        ))
        .into());
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    if out.is_empty() {
        println!("no consumer groups");
    }
    for g in &out {
        let coordinator = g["coordinator"].as_str().unwrap_or("-");
        if g["state"] == "empty" {
            println!(
                "group {}  topic {}  no members (committed offsets only)",
                g["group"].as_str().unwrap_or(""),
                g["topic"].as_str().unwrap_or(""),
            );
        } else {
            println!(
                "group {}  topic {}  generation {}  {} member(s)  coordinator {}",
                g["group"].as_str().unwrap_or(""),
                g["topic"].as_str().unwrap_or(""),
                g["generation"],
                g["members"].as_array().map_or(0, Vec::len),
                &coordinator[..8.min(coordinator.len())],
            );
        }
        println!(
            "  {:>9}  {:<28}  {:>10}  {:>10}  {:>8}",
            "partition", "member", "committed", "high wm", "lag"
        );
        for p in g["partitions"].as_array().into_iter().flatten() {
            let show = |v: &serde_json::Value| {
                if v.is_null() {
                    "-".to_string()
                } else {
                    v.to_string().trim_matches('"').to_string()
                }
            };
            println!(
                "  {:>9}  {:<28}  {:>10}  {:>10}  {:>8}",
                p["partition"],
                show(&p["member"]),
                show(&p["committed"]),
                show(&p["high_watermark"]),
                show(&p["lag"])
            );
        }
    }
    Ok(())
}

/// `starling bench topic`.
#[derive(clap::Args, Debug)]
pub struct BenchTopicArgs {
    /// Nodes to connect to (comma-separated); each partition's batches then go to its leader
    /// directly.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:7400")]
    pub nodes: Vec<String>,
    /// Topic to create for the run (deleted at the end).
    #[arg(long, default_value = "bench")]
    pub topic: String,
    #[arg(long, default_value_t = 3)]
    pub partitions: u32,
    #[arg(long, default_value_t = 3)]
    pub replication: u32,
    #[arg(long, value_enum, default_value = "all")]
    pub acks: AcksArg,
    /// Bytes per message.
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    #[arg(long, default_value_t = 200_000)]
    pub messages: u64,
    /// Messages per produce call (client-side batching).
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Produce calls in flight at once.
    #[arg(long, default_value_t = 4)]
    pub in_flight: usize,
    /// Target rate in messages per second (0: as fast as possible), for latency at a set load.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    #[arg(long)]
    pub quiet: bool,
    #[arg(long)]
    pub json: bool,
}

pub async fn bench(auth: &Auth, a: &BenchTopicArgs) -> Result<()> {
    if a.batch == 0 || a.in_flight == 0 || a.size == 0 || a.messages == 0 {
        bail!("--batch, --in-flight, --size and --messages must be at least 1");
    }
    let client = Client::connect(&a.nodes, auth).await.map_err(ClientError::from)?;
    match client.create_topic(&a.topic, a.partitions, a.replication, 0).await {
        Ok(Ok(_)) => {}
        Ok(Err(TopicError::Exists(_))) => {
            bail!("topic {} exists: delete it or pass --topic", a.topic)
        }
        Ok(Err(e)) => return Err(topic_err(e)),
        Err(e) => return Err(ClientError::from(e).into()),
    }
    let leaders = Arc::new(leader_clients(&client, auth, &a.topic).await?);
    // One small write to each partition first, so the timed run starts with every follower
    // fetching.
    for (p, leader) in leaders.iter().enumerate() {
        let warm = NewRecord {
            key: None,
            value: Some(b"warm-up".to_vec()),
            headers: Vec::new(),
            timestamp_ms: now_ms(),
        };
        leader
            .produce(&a.topic, p as u32, Acks::All, &[warm])
            .await
            .map_err(ClientError::from)?
            .map_err(topic_err)?;
    }
    let acks: Acks = a.acks.into();
    let calls = a.messages.div_ceil(a.batch as u64);
    let done = Arc::new(AtomicU64::new(0));
    let next = Arc::new(AtomicU64::new(0));
    let progress = Progress::start(a.messages, "msgs", a.quiet, done.clone());
    let started = Instant::now();
    let mut workers = Vec::new();
    let value = vec![b'x'; a.size];
    for _ in 0..a.in_flight {
        let (done, next, topic, value) =
            (done.clone(), next.clone(), a.topic.clone(), value.clone());
        let leaders = leaders.clone();
        let (batch, partitions, messages, rate) = (a.batch, a.partitions, a.messages, a.rate);
        workers.push(tokio::spawn(async move {
            let mut hist = bench::histogram();
            let mut first_error = None;
            let t0 = Instant::now();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= calls {
                    break;
                }
                let n = batch.min((messages - i * batch as u64) as usize);
                if rate > 0 {
                    // Open loop: call i is due at i * batch / rate.
                    let due = t0 + Duration::from_secs_f64((i * batch as u64) as f64 / rate as f64);
                    tokio::time::sleep_until(due.into()).await;
                }
                let p = (i % u64::from(partitions)) as u32;
                let client = &leaders[p as usize];
                let ts = now_ms();
                let recs: Vec<NewRecord> = (0..n)
                    .map(|_| NewRecord {
                        key: None,
                        value: Some(value.clone()),
                        headers: Vec::new(),
                        timestamp_ms: ts,
                    })
                    .collect();
                let t = Instant::now();
                match client.produce(&topic, p, acks, &recs).await {
                    Ok(Ok(_)) => {
                        let _ = hist.record(t.elapsed().as_micros().max(1) as u64);
                        done.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    Ok(Err(e)) => {
                        first_error.get_or_insert(e.to_string());
                    }
                    Err(e) => {
                        first_error.get_or_insert(e.to_string());
                    }
                }
            }
            (hist, first_error)
        }));
    }
    let (hist, first_error) = bench::join(workers).await?;
    let produce_secs = started.elapsed().as_secs_f64();
    progress.finish();
    let produced = done.load(Ordering::Relaxed);
    // Consume everything back, partitions in parallel.
    let consumed = Arc::new(AtomicU64::new(0));
    let cstart = Instant::now();
    let mut readers = Vec::new();
    for p in 0..a.partitions {
        let (client, topic, consumed) = (client.clone(), a.topic.clone(), consumed.clone());
        readers.push(tokio::spawn(async move {
            let o = match client.partition_offsets(&topic, p).await {
                Ok(Ok(o)) => o,
                Ok(Err(e)) => return Err(e.to_string()),
                Err(e) => return Err(e.to_string()),
            };
            let mut at = o.log_start;
            while at < o.high_watermark {
                match client.fetch(&topic, p, at, 4 << 20, Duration::ZERO).await {
                    Ok(Ok(f)) => {
                        consumed.fetch_add(f.records.len() as u64, Ordering::Relaxed);
                        if f.next_offset <= at {
                            break;
                        }
                        at = f.next_offset;
                    }
                    Ok(Err(e)) => return Err(e.to_string()),
                    Err(e) => return Err(e.to_string()),
                }
            }
            Ok(())
        }));
    }
    let mut consume_error = None;
    for r in readers {
        if let Ok(Err(e)) = r.await {
            consume_error.get_or_insert(e);
        }
    }
    let consume_secs = cstart.elapsed().as_secs_f64();
    let consumed = consumed.load(Ordering::Relaxed);
    let _ = client.delete_topic(&a.topic).await;
    for l in leaders.iter() {
        l.close().await;
    }
    client.close().await;
    let mb = |msgs: u64, secs: f64| msgs as f64 * a.size as f64 / secs / 1e6;
    let q = |x: f64| hist.value_at_quantile(x) as f64 / 1000.0;
    let report = serde_json::json!({
        "partitions": a.partitions, "replication": a.replication,
        "acks": format!("{:?}", a.acks), "size": a.size, "batch": a.batch,
        "in_flight": a.in_flight, "rate": a.rate,
        "produced": produced, "produce_msgs_per_s": produced as f64 / produce_secs,
        "produce_mb_per_s": mb(produced, produce_secs),
        "produce_call_ms": { "p50": q(0.5), "p99": q(0.99), "p999": q(0.999), "max": hist.max() as f64 / 1000.0 },
        "consumed": consumed, "consume_msgs_per_s": consumed as f64 / consume_secs,
        "consume_mb_per_s": mb(consumed, consume_secs),
        "first_error": first_error, "consume_error": consume_error,
    });
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "produce: {produced} msgs of {} B in {:.2} s = {:.0} msgs/s, {:.1} MB/s ({} partitions, RF {}, acks {:?}, {} msgs per call, {} calls in flight)",
            a.size, produce_secs, produced as f64 / produce_secs, mb(produced, produce_secs),
            a.partitions, a.replication, a.acks, a.batch, a.in_flight
        );
        println!(
            "produce call latency: p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
            q(0.5),
            q(0.99),
            q(0.999),
            hist.max() as f64 / 1000.0
        );
        println!(
            "consume: {consumed} msgs in {:.2} s = {:.0} msgs/s, {:.1} MB/s",
            consume_secs,
            consumed as f64 / consume_secs,
            mb(consumed, consume_secs)
        );
        if let Some(e) = &first_error {
            println!("first produce error: {e}");
        }
        if let Some(e) = &consume_error {
            println!("first consume error: {e}");
        }
    }
    if produced < a.messages {
        bail!("{} of {} messages were not acknowledged", a.messages - produced, a.messages);
    }
    Ok(())
}
