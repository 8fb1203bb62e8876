//! An in-memory [`Backend`] for tests and the fuzz harness: one broker, topics whose partitions
//! hold whole produced batches, committed offsets in a map. Every call answers at once (no
//! waiting), so a request's answer can be taken with one poll.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use futures_util::future::BoxFuture;
use starling_id::NodeId;
use starling_wire::topic::{
    Fetched, PartitionInfo, PartitionOffsets, Produced, TopicAlter, TopicCreate, TopicDelete,
    TopicDescribe, TopicError, TopicFetch, TopicInfo, TopicList, TopicOffsets, TopicProduce,
    TopicRequest,
};
use starling_wire::{Call, ClientRequest, ErrorCode, Request, Response};

use starling_mq::fence::{
    Claimant, Committed, FenceError, Held, Job, MemRecords, OffsetKey, Outcome,
};

use crate::group::Coordinator;
use crate::serve::{Backend, Broker, CommitCheck};

/// One partition: its batches, each with the offset it starts at and its record count.
#[derive(Debug, Default)]
struct Part {
    batches: Vec<(i64, Vec<u8>)>,
    end: i64,
}

/// The stand-in node.
#[derive(Debug)]
pub struct FakeBackend {
    pub me: NodeId,
    topics: Mutex<BTreeMap<String, Vec<Part>>>,
    /// Each topic's incarnation (a counter of creations).
    incarnations: Mutex<HashMap<String, u64>>,
    /// The groups' records (the metadata service), and this node's claims on them.
    offsets: Mutex<(MemRecords, HashMap<String, Option<Held>>)>,
    groups: Coordinator,
    clock: AtomicU64,
    /// Topics created so far.
    created: AtomicU64,
}

impl Default for FakeBackend {
    fn default() -> Self {
        FakeBackend::new()
    }
}

impl FakeBackend {
    pub fn new() -> FakeBackend {
        FakeBackend {
            me: NodeId(0x0000_0042_0000_0000_0000_0000_0000_0001),
            topics: Mutex::new(BTreeMap::new()),
            incarnations: Mutex::new(HashMap::new()),
            offsets: Mutex::new((MemRecords::default(), HashMap::new())),
            groups: Coordinator::new(1),
            clock: AtomicU64::new(0),
            created: AtomicU64::new(0),
        }
    }

    /// Moves the clock on (group sessions).
    pub fn advance(&self, ms: u64) {
        self.clock.fetch_add(ms, Ordering::Relaxed);
    }

    fn info(&self, name: &str, parts: usize) -> TopicInfo {
        TopicInfo {
            name: name.to_string(),
            partitions: parts as u32,
            replication: 1,
            min_insync: 1,
            partition_info: (0..parts as u32)
                .map(|p| PartitionInfo {
                    partition: p,
                    replicas: vec![self.me],
                    leader: Some(self.me),
                    leader_addr: None,
                    leader_epoch: 3,
                    isr: vec![self.me],
                    offsets: None,
                })
                .collect(),
        }
    }

    fn topic_call(&self, req: TopicRequest) -> Response {
        let mut topics = self.topics.lock().unwrap_or_else(|e| e.into_inner());
        let no_part =
            |t: &str, p: u32| TopicError::NoPartition { topic: t.to_string(), partition: p };
        match req {
            TopicRequest::Create(c) => TopicCreate::respond(if topics.contains_key(&c.name) {
                Err(TopicError::Exists(c.name))
            } else if c.partitions == 0 || c.partitions > 64 || c.replication != 1 {
                Err(TopicError::Invalid("1 to 64 partitions, replication 1".into()))
            } else {
                topics.insert(c.name.clone(), (0..c.partitions).map(|_| Part::default()).collect());
                let created = self.created.fetch_add(1, Ordering::Relaxed) + 1;
                lock(&self.incarnations).insert(c.name.clone(), created);
                Ok(self.info(&c.name, c.partitions as usize))
            }),
            TopicRequest::List => TopicList::respond(Ok(topics.keys().cloned().collect())),
            TopicRequest::Describe(d) => TopicDescribe::respond(match topics.get(&d.name) {
                Some(parts) => Ok(self.info(&d.name, parts.len())),
                None => Err(TopicError::NoTopic(d.name)),
            }),
            TopicRequest::Delete(d) => TopicDelete::respond(match topics.remove(&d.name) {
                Some(_) => {
                    lock(&self.incarnations).remove(&d.name);
                    Ok(())
                }
                None => Err(TopicError::NoTopic(d.name)),
            }),
            TopicRequest::Alter(a) => TopicAlter::respond(match topics.get(&a.name) {
                Some(parts) => Ok(self.info(&a.name, parts.len())),
                None => Err(TopicError::NoTopic(a.name)),
            }),
            TopicRequest::Produce(p) => {
                let answer = match topics.get_mut(&p.topic) {
                    None => Err(TopicError::NoTopic(p.topic)),
                    Some(parts) => match parts.get_mut(p.partition as usize) {
                        None => Err(no_part(&p.topic, p.partition)),
                        Some(part) => {
                            let base = part.end;
                            part.batches.push((base, p.batches));
                            part.end += 1;
                            Ok(Produced { base_offset: base, last_offset: base })
                        }
                    },
                };
                TopicProduce::respond(answer)
            }
            TopicRequest::Fetch(f) => {
                let answer = match topics.get(&f.topic) {
                    None => Err(TopicError::NoTopic(f.topic)),
                    Some(parts) => match parts.get(f.partition as usize) {
                        None => Err(no_part(&f.topic, f.partition)),
                        Some(part) if f.offset < 0 || f.offset > part.end => {
                            Err(TopicError::OffsetOutOfRange {
                                offset: f.offset,
                                start: 0,
                                end: part.end,
                            })
                        }
                        Some(part) => Ok(Fetched {
                            batches: part
                                .batches
                                .iter()
                                .filter(|(at, _)| *at >= f.offset)
                                .flat_map(|(_, b)| b.clone())
                                .collect(),
                            next_offset: part.end,
                            high_watermark: part.end,
                            log_start: 0,
                        }),
                    },
                };
                TopicFetch::respond(answer)
            }
            TopicRequest::Offsets(o) => {
                let answer = match topics.get(&o.topic) {
                    None => Err(TopicError::NoTopic(o.topic)),
                    Some(parts) => match parts.get(o.partition as usize) {
                        None => Err(no_part(&o.topic, o.partition)),
                        Some(part) => Ok(PartitionOffsets {
                            log_start: 0,
                            log_end: part.end,
                            high_watermark: part.end,
                            leader_epoch: 3,
                            offset_for_time: o.timestamp_ms.map(|_| 0),
                            // Epochs 1 (offsets 0 to 0) and 3 (from 0): one epoch boundary.
                            epoch_end: o.for_epoch.map(|e| match e {
                                e if e < 1 => (-1, -1),
                                1 | 2 => (1, 0),
                                _ if e == 3 => (3, part.end),
                                _ => (-1, -1),
                            }),
                        }),
                    },
                };
                TopicOffsets::respond(answer)
            }
            other => Response::error(ErrorCode::BadRequest, format!("{} not faked", other.kind())),
        }
    }
}

impl Backend for FakeBackend {
    fn call(&self, req: Request) -> BoxFuture<'static, Response> {
        let resp = match req {
            Request::Client(ClientRequest::Topic(t)) => self.topic_call(t),
            other => Response::error(ErrorCode::BadRequest, format!("{} not faked", other.kind())),
        };
        Box::pin(async move { resp })
    }

    fn brokers(&self) -> Vec<Broker> {
        vec![Broker { id: self.me, host: "127.0.0.1".into(), port: 9092, rack: Some("z1".into()) }]
    }

    fn me(&self) -> NodeId {
        self.me
    }

    fn cluster_id(&self) -> String {
        "fake".into()
    }

    fn new_producer_id(&self) -> i64 {
        1000
    }

    fn coordinator_of(&self, _group: &str) -> Option<NodeId> {
        Some(self.me)
    }

    fn groups(&self) -> &Coordinator {
        &self.groups
    }

    fn now_ms(&self) -> u64 {
        self.clock.load(Ordering::Relaxed)
    }

    fn topic_incarnation(&self, topic: &str) -> BoxFuture<'static, Result<Option<u64>, String>> {
        let found = lock(&self.incarnations).get(topic).copied();
        Box::pin(async move { Ok(found) })
    }

    fn offsets_fetch(
        &self,
        group: &str,
        keys: Vec<OffsetKey>,
    ) -> BoxFuture<'static, Result<Vec<Option<Committed>>, FenceError>> {
        let r = self.run(group, Job::fetch(group, Self::ME, keys)).map(|o| match o {
            Outcome::Fetched(v) => v,
            Outcome::Committed => Vec::new(),
        });
        Box::pin(async move { r })
    }

    fn offsets_commit(
        &self,
        group: &str,
        commits: Vec<(OffsetKey, Committed)>,
        check: CommitCheck,
    ) -> BoxFuture<'static, Result<Result<(), FenceError>, i16>> {
        let r = match check(&self.groups) {
            0 => Ok(self.run(group, Job::commit(group, Self::ME, commits)).map(|_| ())),
            refused => Err(refused),
        };
        Box::pin(async move { r })
    }
}

impl FakeBackend {
    /// This node as a claimant of groups.
    const ME: Claimant = Claimant { node: 0x42, instance: 1 };

    fn run(&self, group: &str, job: Job) -> Result<Outcome, FenceError> {
        let mut o = lock(&self.offsets);
        let (records, held) = &mut *o;
        records.run(job, held.entry(group.to_string()).or_default())
    }

    /// Another node claims `group` (as when two ring views disagree): this one's next offsets
    /// call for it is fenced.
    pub fn claim_elsewhere(&self, group: &str) {
        let other = Claimant { node: 0x43, instance: 2 };
        let mut o = lock(&self.offsets);
        let mut theirs = None;
        let _ = o.0.run(Job::fetch(group, other, Vec::new()), &mut theirs);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
