//! Topics from a client: create, describe, produce records, fetch them back.
//!
//! ```no_run
//! use starling_client::{Auth, Client};
//! use starling_client::topic::{Acks, NewRecord};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let client = Client::connect(&["127.0.0.1:7400"], &Auth::Insecure).await?;
//! client.create_topic("events", 3, 3, 2).await??;
//! let record = NewRecord {
//!     key: None,
//!     value: Some(b"hello".to_vec()),
//!     headers: Vec::new(),
//!     timestamp_ms: 1_700_000_000_000,
//! };
//! let at = client.produce("events", 0, Acks::All, &[record]).await??;
//! let got = client.fetch("events", 0, at.base_offset, 1 << 20, std::time::Duration::ZERO).await??;
//! assert_eq!(got.records[0].value.as_deref(), Some(&b"hello"[..]));
//! # Ok(()) }
//! ```
//!
//! Records travel as Kafka RecordBatch v2, built here ([`starling_mq::batch::encode_batch`]) and
//! stored by the partition leader as they are. Any node takes any call (it forwards produce and
//! fetch to the partition's leader); the client sends them to the leader itself when it is one of
//! the nodes it was given (learned with a describe, refreshed every [`LEADERS_REFRESH`]), so the
//! records cross the network once. A produce refused without being written (no leader yet,
//! an election, too few in-sync replicas) is retried for up to [`PRODUCE_RETRY_FOR`]; one whose
//! outcome is unknown is not.

use std::collections::BTreeMap;
use std::time::Duration;

pub use starling_mq::batch::{NewRecord, StoredRecord};
pub use starling_mq::topic::{partition_for_key, MAX_PARTITIONS};
pub use starling_wire::topic::{
    Acks, Fetched, PartitionInfo, PartitionOffsets, Produced, TopicAlter, TopicCreate, TopicDelete,
    TopicDescribe, TopicError, TopicFetch, TopicInfo, TopicList, TopicOffsets, TopicProduce,
};

use starling_wire::Call;

use crate::{Client, Error};

/// How long a client trusts what it learned of a topic's partition leaders (calls go to the
/// leader directly; one that moved forwards them, so a stale answer costs only a hop).
pub const LEADERS_REFRESH: Duration = Duration::from_secs(10);

/// How long a produce refused without being written is retried.
pub const PRODUCE_RETRY_FOR: Duration = Duration::from_secs(10);

/// Records read from a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedRecords {
    /// The records at or after the offset asked for, in offset order.
    pub records: Vec<StoredRecord>,
    /// Where the next fetch continues.
    pub next_offset: i64,
    /// The partition's high watermark (the end of what consumers may read).
    pub high_watermark: i64,
    /// The partition's first offset.
    pub log_start: i64,
}

impl Client {
    /// Creates a topic (`min_insync` 0: `min(2, replication)`).
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        replication: u32,
        min_insync: u32,
    ) -> Result<Result<TopicInfo, TopicError>, Error> {
        let c = TopicCreate { name: name.to_string(), partitions, replication, min_insync };
        self.call(c).await
    }

    /// The topics' names, sorted.
    pub async fn list_topics(&self) -> Result<Result<Vec<String>, TopicError>, Error> {
        self.call(TopicList).await
    }

    /// A topic's settings and partitions; with `offsets`, each leader's offsets too.
    pub async fn describe_topic(
        &self,
        name: &str,
        offsets: bool,
    ) -> Result<Result<TopicInfo, TopicError>, Error> {
        self.call(TopicDescribe { name: name.to_string(), offsets }).await
    }

    /// Deletes a topic and its data.
    pub async fn delete_topic(&self, name: &str) -> Result<Result<(), TopicError>, Error> {
        self.call(TopicDelete { name: name.to_string() }).await
    }

    /// Appends `records` to one partition as one batch. Refusals that wrote nothing are retried
    /// for up to [`PRODUCE_RETRY_FOR`].
    pub async fn produce(
        &self,
        topic: &str,
        partition: u32,
        acks: Acks,
        records: &[NewRecord],
    ) -> Result<Result<Produced, TopicError>, Error> {
        let batches = starling_mq::batch::encode_batch(records, None).map_err(Error::BadInput)?;
        self.produce_batches(topic, partition, acks, batches).await
    }

    /// Appends ready-made RecordBatch v2 bytes to one partition (retried as [`Client::produce`]).
    pub async fn produce_batches(
        &self,
        topic: &str,
        partition: u32,
        acks: Acks,
        batches: Vec<u8>,
    ) -> Result<Result<Produced, TopicError>, Error> {
        let call = TopicProduce { topic: topic.to_string(), partition, acks, batches };
        retry_refusals(|| self.call_partition(topic, partition, call.clone())).await
    }

    /// A call about one partition, sent to the node that leads it when this client knows which
    /// of its nodes that is (learned with a describe, again at most every
    /// [`LEADERS_REFRESH`]), else to any node: any node serves it, forwarding to the leader,
    /// but the data then crosses twice. A leader that moved forwards too; one that cannot be
    /// reached is forgotten and the call goes to any node.
    pub(crate) async fn call_partition<C>(
        &self,
        topic: &str,
        partition: u32,
        c: C,
    ) -> Result<C::Answer, Error>
    where
        C: Call + Clone + Send,
        C::Answer: Send,
    {
        let leader = self.leader_of(topic, partition).await;
        self.call_preferring(leader, c, || self.forget_leaders(topic)).await
    }

    /// The index of the node leading `topic`/`partition`, learning the topic's leaders first
    /// if they were not learned within [`LEADERS_REFRESH`].
    async fn leader_of(&self, topic: &str, partition: u32) -> Option<usize> {
        let known = {
            let leaders = self.inner.leaders.lock().unwrap_or_else(|p| p.into_inner());
            leaders
                .get(topic)
                .filter(|(at, _)| at.elapsed() < LEADERS_REFRESH)
                .map(|(_, ps)| ps.get(partition as usize).copied().flatten())
        };
        if let Some(found) = known {
            return found;
        }
        // Learned once per period even when it fails (a topic being created, a node down):
        // until then calls go to any node.
        let mut found = Vec::new();
        if let Ok(Ok(info)) =
            self.call(TopicDescribe { name: topic.to_string(), offsets: false }).await
        {
            found = vec![None; info.partitions as usize];
            for p in &info.partition_info {
                if let Some(slot) = found.get_mut(p.partition as usize) {
                    *slot = self.node_at(p.leader_addr.as_deref());
                }
            }
        }
        let at = found.get(partition as usize).copied().flatten();
        let mut leaders = self.inner.leaders.lock().unwrap_or_else(|p| p.into_inner());
        leaders.insert(topic.to_string(), (tokio::time::Instant::now(), found));
        at
    }

    fn forget_leaders(&self, topic: &str) {
        let mut leaders = self.inner.leaders.lock().unwrap_or_else(|p| p.into_inner());
        leaders.remove(topic);
    }

    /// Reads records of one partition from `offset` (below its high watermark), waiting up to
    /// `max_wait` for some if there are none yet.
    pub async fn fetch(
        &self,
        topic: &str,
        partition: u32,
        offset: i64,
        max_bytes: u32,
        max_wait: Duration,
    ) -> Result<Result<FetchedRecords, TopicError>, Error> {
        // The long poll ends well within the call's deadline.
        let cap = self.inner.config.request_timeout.saturating_sub(Duration::from_secs(1));
        let max_wait_ms = max_wait.min(cap).as_millis() as u32;
        let call =
            TopicFetch { topic: topic.to_string(), partition, offset, max_bytes, max_wait_ms };
        let f = match retry_refusals(|| self.call_partition(topic, partition, call.clone())).await?
        {
            Ok(f) => f,
            Err(e) => return Ok(Err(e)),
        };
        let mut records = starling_mq::batch::decode_records(&f.batches).map_err(|e| {
            Error::Unexpected { node: "partition leader".into(), reason: format!("batch: {e}") }
        })?;
        records.retain(|r| r.offset >= offset);
        Ok(Ok(FetchedRecords {
            records,
            next_offset: f.next_offset,
            high_watermark: f.high_watermark,
            log_start: f.log_start,
        }))
    }

    /// A partition's offsets, from its leader.
    pub async fn partition_offsets(
        &self,
        topic: &str,
        partition: u32,
    ) -> Result<Result<PartitionOffsets, TopicError>, Error> {
        let call = TopicOffsets {
            topic: topic.to_string(),
            partition,
            timestamp_ms: None,
            for_epoch: None,
        };
        retry_refusals(|| self.call(call.clone())).await
    }

    /// The first offset of a partition whose record timestamp is at or after `timestamp_ms`
    /// (its high watermark if none is that new), from its leader.
    pub async fn offset_for_time(
        &self,
        topic: &str,
        partition: u32,
        timestamp_ms: i64,
    ) -> Result<Result<i64, TopicError>, Error> {
        let call = TopicOffsets {
            topic: topic.to_string(),
            partition,
            timestamp_ms: Some(timestamp_ms),
            for_epoch: None,
        };
        Ok(retry_refusals(|| self.call(call.clone()))
            .await?
            .map(|o| o.offset_for_time.unwrap_or(o.high_watermark)))
    }
}

/// Runs `f` again while it is refused with a retriable [`TopicError`] (nothing was written), for
/// up to [`PRODUCE_RETRY_FOR`].
async fn retry_refusals<A, F, Fut>(mut f: F) -> Result<Result<A, TopicError>, Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Result<A, TopicError>, Error>>,
{
    let deadline = tokio::time::Instant::now() + PRODUCE_RETRY_FOR;
    let mut pause = Duration::from_millis(20);
    loop {
        match f().await {
            Ok(Err(e)) if e.retriable() && tokio::time::Instant::now() < deadline => {}
            Err(Error::Unreachable { .. }) if tokio::time::Instant::now() < deadline => {}
            other => return other,
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}

pub use starling_wire::topic::{
    Assignor, GroupAssignment, GroupCommit, GroupCommitted, GroupDescribe, GroupHeartbeat,
    GroupInfo, GroupLeave,
};

/// Where a group member starts reading a partition the group has no committed offset for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    /// The partition's first offset (Kafka's `auto.offset.reset=earliest`).
    Beginning,
    /// Its high watermark: only records produced from now on (`latest`).
    End,
    /// This offset (clamped to the partition's range).
    Offset(i64),
    /// The first record at or after this time (milliseconds since the Unix epoch).
    Time(i64),
}

/// A member of a consumer group reading one topic: it heartbeats to the group's coordinator,
/// reads the partitions it is given from the group's committed offsets, and commits where it got
/// to.
///
/// Partitions move between members without overlap (see the node's `groups` module): when a
/// heartbeat's answer takes a partition away, the member commits its position there first, then
/// stops reading it, and its next heartbeat tells the coordinator, which only then gives the
/// partition to another member. A member that has not heard from the coordinator for its session
/// timeout stops reading everything (it may have been expelled). So in a group whose members
/// commit what they have processed, each record is processed once, barring crashes (after a
/// crash, the records since the last commit are read again: at least once).
#[derive(Debug)]
pub struct GroupConsumer {
    client: Client,
    group: String,
    topic: String,
    member: String,
    session: Duration,
    assignor: Assignor,
    start: StartFrom,
    /// Partition -> next offset to read.
    positions: BTreeMap<u32, i64>,
    generation: u64,
    /// The incarnation of the coordinator's group state this member last heard from (0: none).
    incarnation: u64,
    last_heartbeat: Option<tokio::time::Instant>,
    next_heartbeat: tokio::time::Instant,
    /// Heartbeats sent.
    seq: u64,
}

impl GroupConsumer {
    /// Joins `group` to read `topic` (member id: random), with a session timeout of `session`.
    pub async fn join(
        client: &Client,
        group: &str,
        topic: &str,
        start: StartFrom,
        assignor: Assignor,
        session: Duration,
    ) -> Result<GroupConsumer, Error> {
        let member = format!("{}-{:016x}", std::process::id(), rand_u64());
        // As the coordinator clamps it.
        let session = session.clamp(Duration::from_secs(1), Duration::from_secs(60));
        let mut c = GroupConsumer {
            client: client.clone(),
            group: group.to_string(),
            topic: topic.to_string(),
            member,
            session,
            assignor,
            start,
            positions: BTreeMap::new(),
            generation: 0,
            incarnation: 0,
            last_heartbeat: None,
            next_heartbeat: tokio::time::Instant::now(),
            seq: 0,
        };
        match c.heartbeat().await? {
            Ok(()) => Ok(c),
            Err(e) => Err(Error::BadInput(format!("cannot join group {group}: {e}"))),
        }
    }

    /// The member id.
    pub fn member(&self) -> &str {
        &self.member
    }

    /// The group's generation as of the last heartbeat.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The partitions this member reads now.
    pub fn assignment(&self) -> Vec<u32> {
        self.positions.keys().copied().collect()
    }

    /// Where this member will read next in `partition`.
    pub fn position(&self, partition: u32) -> Option<i64> {
        self.positions.get(&partition).copied()
    }

    /// Moves the position in a partition this member reads (e.g. back to just after the last
    /// record it processed, before [`GroupConsumer::commit`]).
    pub fn seek(&mut self, partition: u32, offset: i64) {
        if let Some(p) = self.positions.get_mut(&partition) {
            *p = offset;
        }
    }

    /// Heartbeats now: learns the assignment, commits and drops revoked partitions, and starts
    /// new ones at the group's committed offsets.
    pub async fn heartbeat(&mut self) -> Result<Result<(), TopicError>, Error> {
        let now = tokio::time::Instant::now();
        let hb = GroupHeartbeat {
            group: self.group.clone(),
            member: self.member.clone(),
            topic: self.topic.clone(),
            owned: self.assignment(),
            session_timeout_ms: self.session.as_millis() as u32,
            assignor: self.assignor,
            seq: self.seq + 1,
        };
        self.next_heartbeat = now + self.session / 3;
        self.seq += 1;
        let answer = match self.client.call(hb).await {
            Ok(Ok(a)) if !a.stale => a,
            Ok(Ok(_)) => {
                self.stop_if_silent();
                return Ok(Ok(()));
            }
            Ok(Err(e)) => {
                self.stop_if_silent();
                return Ok(Err(e));
            }
            Err(e) => {
                self.stop_if_silent();
                return Err(e);
            }
        };
        self.last_heartbeat = Some(now);
        self.generation = answer.generation;
        if answer.incarnation != self.incarnation {
            // Another coordinator took the group up: other members may have committed past
            // where this one got to, so every partition starts again from the committed offset.
            if self.incarnation != 0 {
                self.positions.clear();
            }
            self.incarnation = answer.incarnation;
        }
        let keep: std::collections::BTreeSet<u32> = answer.partitions.iter().copied().collect();
        let revoked: Vec<(u32, i64)> = self
            .positions
            .iter()
            .filter(|(p, _)| !keep.contains(p))
            .map(|(p, o)| (*p, *o))
            .collect();
        if !revoked.is_empty() {
            // Still held until the next heartbeat says otherwise: commit where it got to.
            let commit = GroupCommit {
                group: self.group.clone(),
                member: self.member.clone(),
                topic: self.topic.clone(),
                offsets: revoked.clone(),
            };
            let _ = self.client.call(commit).await;
            for (p, _) in revoked {
                self.positions.remove(&p);
            }
            // Tell the coordinator at once, so the partitions move without waiting a period.
            self.next_heartbeat = now;
        }
        let new: Vec<u32> =
            keep.iter().copied().filter(|p| !self.positions.contains_key(p)).collect();
        if !new.is_empty() {
            let committed: BTreeMap<u32, Option<i64>> = match self
                .client
                .call(GroupCommitted { group: self.group.clone(), topic: self.topic.clone() })
                .await?
            {
                Ok(c) => c.into_iter().collect(),
                Err(e) => return Ok(Err(e)),
            };
            for p in new {
                let at = match committed.get(&p).copied().flatten() {
                    Some(o) => o,
                    None => {
                        let o = match self.client.partition_offsets(&self.topic, p).await? {
                            Ok(o) => o,
                            Err(e) => return Ok(Err(e)),
                        };
                        match self.start {
                            StartFrom::Beginning => o.log_start,
                            StartFrom::End => o.high_watermark,
                            StartFrom::Offset(x) => x.clamp(o.log_start, o.high_watermark),
                            StartFrom::Time(ts) => {
                                match self.client.offset_for_time(&self.topic, p, ts).await? {
                                    Ok(at) => at,
                                    Err(e) => return Ok(Err(e)),
                                }
                            }
                        }
                    }
                };
                self.positions.insert(p, at);
            }
        }
        Ok(Ok(()))
    }

    /// Without an answer from the coordinator for a whole session, this member may have been
    /// expelled and its partitions given to others: it stops reading them.
    fn stop_if_silent(&mut self) {
        // Measured when the call ended: a heartbeat that hung for a while counts as silence.
        let now = tokio::time::Instant::now();
        if self.last_heartbeat.is_none_or(|t| now.duration_since(t) >= self.session) {
            self.positions.clear();
        }
    }

    /// Heartbeats if due, then reads the next records of this member's partitions (waiting up
    /// to `max_wait` when there are none). Positions move past what is returned; nothing is
    /// committed.
    pub async fn poll(
        &mut self,
        max_wait: Duration,
    ) -> Result<Result<Vec<(u32, StoredRecord)>, TopicError>, Error> {
        if tokio::time::Instant::now() >= self.next_heartbeat {
            if let Err(e) = self.heartbeat().await? {
                if !e.retriable() {
                    return Ok(Err(e));
                }
            }
        }
        self.stop_if_silent();
        let mut out = Vec::new();
        let parts: Vec<(u32, i64)> = self.positions.iter().map(|(p, o)| (*p, *o)).collect();
        let wait = if parts.len() == 1 { max_wait } else { Duration::ZERO };
        for (p, at) in parts {
            match self.client.fetch(&self.topic, p, at, 1 << 20, wait).await? {
                Ok(f) => {
                    if let Some(last) = f.records.last() {
                        self.positions.insert(p, last.offset + 1);
                    }
                    out.extend(f.records.into_iter().map(|r| (p, r)));
                }
                Err(TopicError::OffsetOutOfRange { start, .. }) if at < start => {
                    // Retention removed what was not read yet: continue at the start.
                    self.positions.insert(p, start);
                }
                Err(e) if e.retriable() => {}
                Err(e) => return Ok(Err(e)),
            }
        }
        if out.is_empty() && self.positions.len() != 1 && !max_wait.is_zero() {
            tokio::time::sleep(max_wait.min(Duration::from_millis(100))).await;
        }
        Ok(Ok(out))
    }

    /// Commits this member's positions in every partition it reads.
    pub async fn commit(&mut self) -> Result<Result<(), TopicError>, Error> {
        if self.positions.is_empty() {
            return Ok(Ok(()));
        }
        let commit = GroupCommit {
            group: self.group.clone(),
            member: self.member.clone(),
            topic: self.topic.clone(),
            offsets: self.positions.iter().map(|(p, o)| (*p, *o)).collect(),
        };
        let r = self.client.call(commit).await?;
        if let Err(TopicError::Fenced(_)) = &r {
            // Not this member's partitions any more (it was expelled, they moved, or another
            // coordinator took the group up): stop reading them; the next heartbeat rejoins.
            self.positions.clear();
            self.next_heartbeat = tokio::time::Instant::now();
        }
        Ok(r)
    }

    /// Commits, then leaves the group (its partitions go to the other members at once).
    pub async fn leave(mut self) -> Result<Result<(), TopicError>, Error> {
        if let Err(e) = self.commit().await? {
            return Ok(Err(e));
        }
        self.client
            .call(GroupLeave { group: self.group.clone(), member: self.member.clone() })
            .await
    }
}

/// A producer whose retries never write a record twice (Kafka's idempotent producer): every
/// batch carries this producer's id and epoch and a per-partition sequence number, and a
/// partition leader answers a batch it already has with the offsets it got the first time.
/// So a produce whose answer was lost, or whose outcome is unknown (its leader died), is sent
/// again, unchanged, until it is answered, for up to [`PRODUCE_RETRY_FOR`]. Calls for one
/// partition go one at a time (`&mut self`), which keeps them in order.
#[derive(Debug)]
pub struct IdempotentProducer {
    client: Client,
    id: i64,
    epoch: i16,
    next_seq: BTreeMap<(String, u32), i32>,
}

impl IdempotentProducer {
    /// A producer with a random 63-bit id.
    pub fn new(client: &Client) -> IdempotentProducer {
        IdempotentProducer {
            client: client.clone(),
            id: (rand_u64() >> 1) as i64,
            epoch: 0,
            next_seq: BTreeMap::new(),
        }
    }

    /// Appends `records` to one partition as one batch, retrying lost answers and unknown
    /// outcomes with the same sequence. If that still leaves the outcome unknown, the producer
    /// takes a new epoch (its sequences start again) and the error is returned.
    pub async fn send(
        &mut self,
        topic: &str,
        partition: u32,
        acks: Acks,
        records: &[NewRecord],
    ) -> Result<Result<Produced, TopicError>, Error> {
        let key = (topic.to_string(), partition);
        let seq = self.next_seq.get(&key).copied().unwrap_or(0);
        let stamp = starling_mq::batch::ProducerStamp {
            id: self.id,
            epoch: self.epoch,
            base_sequence: seq,
        };
        let batches =
            starling_mq::batch::encode_batch(records, Some(stamp)).map_err(Error::BadInput)?;
        let call = TopicProduce { topic: topic.to_string(), partition, acks, batches };
        let deadline = tokio::time::Instant::now() + PRODUCE_RETRY_FOR;
        let mut pause = Duration::from_millis(20);
        // Whether some attempt may have been written: then a later refusal does not mean
        // "nothing written" any more.
        let mut maybe_written = false;
        loop {
            let r = self.client.call_partition(topic, partition, call.clone()).await;
            maybe_written |=
                matches!(&r, Ok(Err(TopicError::OutcomeUnknown(_))) | Err(Error::NoAnswer { .. }));
            let again = match &r {
                Ok(Err(e)) => e.retriable() || matches!(e, TopicError::OutcomeUnknown(_)),
                Err(Error::Unreachable { .. } | Error::NoAnswer { .. }) => true,
                Err(Error::Refused { code, .. }) => {
                    matches!(
                        code,
                        starling_wire::ErrorCode::Unavailable | starling_wire::ErrorCode::Timeout
                    )
                }
                _ => false,
            };
            if !again || tokio::time::Instant::now() >= deadline {
                match &r {
                    Ok(Ok(_)) => {
                        let n = records.len() as i32;
                        self.next_seq.insert(
                            key,
                            starling_mq::producer::last_seq(seq, n).wrapping_add(1).max(0),
                        );
                    }
                    // Any other end: whether the batch is in the log may be unknown, and a
                    // refused sequence cannot be reused either, so the producer starts a new
                    // epoch (its sequences start again at 0).
                    _ => {
                        self.epoch = self.epoch.wrapping_add(1).max(0);
                        self.next_seq.clear();
                    }
                }
                if maybe_written && !matches!(r, Ok(Ok(_))) {
                    return Ok(Err(TopicError::OutcomeUnknown(format!(
                        "an earlier attempt may have been written, and retrying until the deadline did not tell ({})",
                        match &r {
                            Ok(Err(e)) => e.to_string(),
                            Err(e) => e.to_string(),
                            Ok(Ok(_)) => String::new(),
                        }
                    ))));
                }
                return r;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }
}

impl Client {
    /// Every group of the cluster (or one), as their coordinators have them.
    pub async fn describe_groups(
        &self,
        group: Option<&str>,
    ) -> Result<Result<Vec<GroupInfo>, TopicError>, Error> {
        self.call(GroupDescribe { group: group.map(str::to_string) }).await
    }

    /// Every group with a record of committed offsets (or only `only`), whether or not it has
    /// members now (Kafka lists such groups as `Empty`), and for each the topics it committed
    /// in; sorted. A group whose record cannot be read or decoded is listed with no topics.
    pub async fn committed_groups(
        &self,
        only: Option<&str>,
    ) -> Result<Result<Vec<(String, Vec<String>)>, starling_wire::meta::MetaError>, Error> {
        use starling_mq::fence::{group_of_znode, group_path, GroupRecord, GROUPS_PATH};
        use starling_wire::meta::{MetaError, ReadKind};
        let names = match only {
            Some(g) => vec![g.to_string()],
            None => match self.meta_read(GROUPS_PATH, ReadKind::Children).await? {
                Ok(a) => a.children.iter().filter_map(|c| group_of_znode(c)).collect(),
                // No group has committed yet.
                Err(MetaError::NoNode(_)) => return Ok(Ok(Vec::new())),
                Err(e) => return Ok(Err(e)),
            },
        };
        let mut out = Vec::new();
        for name in names {
            let topics = match self.meta_read(&group_path(&name), ReadKind::Data).await? {
                Ok(a) => GroupRecord::decode(&a.data)
                    .map(|r| r.topics.into_keys().collect())
                    .unwrap_or_default(),
                Err(MetaError::NoNode(_)) => continue,
                Err(_) => Vec::new(),
            };
            out.push((name, topics));
        }
        out.sort();
        Ok(Ok(out))
    }

    /// A group's committed offsets for a topic, per partition.
    pub async fn committed_offsets(
        &self,
        group: &str,
        topic: &str,
    ) -> Result<Result<Vec<(u32, Option<i64>)>, TopicError>, Error> {
        self.call(GroupCommitted { group: group.to_string(), topic: topic.to_string() }).await
    }
}

/// A random number for member ids (no extra dependency: the std hasher's random keys).
fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}
