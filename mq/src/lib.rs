//! Starling's topic log.
//!
//! - [`batch`]: Kafka's RecordBatch v2, validated in place; records built and read with the
//!   `kafka-protocol` codec.
//! - [`index`], [`epoch`]: the sparse `.index`/`.timeindex` and the leader-epoch checkpoint, in
//!   Kafka's layouts, with decoders that refuse damaged files.
//! - [`log`]: a partition's segments: append as leader or follower, read by offset or time,
//!   truncate (by leader epoch, KIP-101), roll, retention, recovery of a torn tail.
//! - [`replica`]: one partition replica, sans-IO: leadership through the metadata service,
//!   follower fetching with the leader-epoch check, ISR and high watermark, produce acks.
//! - [`producer`]: idempotent producers' sequence state (duplicates and gaps by producer id,
//!   epoch and sequence); not yet consulted by the replica's produce path.
//! - [`topic`]: topics and partition states as the metadata service keeps them; Kafka's key
//!   partitioner (murmur2).
//! - [`fence`]: consumer groups' committed offsets, fenced by the group's record in the
//!   metadata service (a coordinator claims a group; a second claim fences the first).
//! - [`mem`]: the log interface the replica uses, and an in-memory log for the simulator.
//!
//! Nothing here reads a clock or touches the network: time is an argument, and the caller
//! decides when to fsync. See `ALGORITHM.md`.

pub mod batch;
pub mod epoch;
pub mod fence;
pub mod index;
pub mod log;
pub mod mem;
pub mod producer;
pub mod replica;
mod segment;
pub mod topic;

pub use batch::{BatchError, BatchView, NewRecord, ProducerStamp, StoredRecord};
pub use epoch::EpochCache;
pub use log::{AppendInfo, Log, LogConfig, LogError, ReadResult, Recovery};
pub use segment::ScanEnd;
