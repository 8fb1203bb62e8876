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
//! fetch to the partition's leader). A produce refused without being written (no leader yet,
//! an election, too few in-sync replicas) is retried for up to [`PRODUCE_RETRY_FOR`]; one whose
//! outcome is unknown is not.

use std::time::Duration;

pub use starling_mq::batch::{NewRecord, StoredRecord};
pub use starling_mq::topic::{partition_for_key, MAX_PARTITIONS};
pub use starling_wire::topic::{
    Acks, Fetched, PartitionInfo, PartitionOffsets, Produced, TopicCreate, TopicDelete,
    TopicDescribe, TopicError, TopicFetch, TopicInfo, TopicList, TopicOffsets, TopicProduce,
};

use crate::{Client, Error};

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
        retry_refusals(|| self.call(call.clone())).await
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
        let f = match retry_refusals(|| self.call(call.clone())).await? {
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
        let call = TopicOffsets { topic: topic.to_string(), partition };
        retry_refusals(|| self.call(call.clone())).await
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
