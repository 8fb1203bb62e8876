//! The bodies of Starling's fuzz targets: one function per decoder of bytes that come from the
//! network or the disk. Each takes arbitrary bytes, must never panic on them, and checks
//! properties beyond that (round trips, independence from how a stream is split, bounds); a
//! property that does not hold panics, which the fuzzer reports as a crash.
//!
//! `fuzz/` runs them under libFuzzer (`scripts/fuzz`); this crate's tests replay every input of
//! `fuzz/corpus/<target>/` and `fuzz/regressions/<target>/` through them on stable Rust, so the
//! corpus and the crashes fixed are checked by every test run. [`seeds`] writes the corpus's
//! starting inputs: real encodings made by the code under test.
//!
//! | target | decoder |
//! | --- | --- |
//! | [`frame`] | `starling_wire::FrameDecoder` and frame bodies ([`starling_wire::Request`], [`starling_wire::Response`]) |
//! | [`wire_message`] | request and response bodies alone (msgpack), the calls' answers |
//! | [`status_json`] | the status document a client reads ([`starling_wire::status::Status`], JSON) |
//! | [`gossip_message`] | `starling_gossip::Message::decode` |
//! | [`gossip_core`] | gossip messages fed to two gossip cores, and the ring built from what they learn |
//! | [`stored_record`] | stored records, data and hint keys, the last-write-wins merge |
//! | [`datadir`] | the node-id, generation, reset-key and addresses.json files |
//! | [`zab_message`] | `starling_zab::Msg::decode`, and a sequence of messages fed to a ZAB server |
//! | [`meta_txn`] | the metadata tree's transactions (`starling_meta::Txn`), applied in order |
//! | [`meta_snapshot`] | a metadata tree's snapshot, restored |
//! | [`meta_snapshot_file`] | a metadata snapshot file (`starling_store_format::snapshot_file`), both formats |
//! | [`meta_journal`] | a metadata journal segment and its records' operations (`starling_store_format::meta_journal`) |
//! | [`mq_batch`] | a record batch (`starling_mq::BatchView`) and its records (Kafka's codec) |
//! | [`mq_index`] | a segment's `.index` / `.timeindex` and the leader-epoch checkpoint |
//! | [`mq_message`] | replication messages between partition replicas, fed to a follower and a leader |
//! | [`group_record`] | a consumer group's record in the metadata service (`starling_mq::fence`), claimed and committed to |
//! | [`mq_segment`] | a partition directory opened, recovered, read and appended to (`starling_mq::Log`) |
//! | [`repair_message`] | anti-entropy requests and answers (`starling_wire::repair`), to a responder and an initiator |
//! | [`kafka_request`] | a Kafka client's stream: frames, requests (kafka-protocol), each answered (`starling_kafka`) and the answer encoded |
//! | [`tls_pem`] | the CA, certificate and key PEM files, and a peer's DER certificate (`starling-net`) |

mod datadir;
mod frame;
mod gossip;
mod input;
mod kafka;
mod message;
mod meta;
mod mq;
mod repair;
pub mod seeds;
mod snapshot_file;
mod store;
mod tls;

pub use datadir::datadir;
pub use frame::frame;
pub use gossip::{gossip_core, gossip_message};
pub use kafka::kafka_request;
pub use message::{status_json, wire_message};
pub use meta::{meta_snapshot, meta_txn, zab_message};
pub use mq::{group_record, mq_batch, mq_index, mq_message, mq_segment};
pub use repair::repair_message;
pub use snapshot_file::{meta_journal, meta_snapshot_file};
pub use store::stored_record;
pub use tls::tls_pem;

/// One fuzz target: its name (its `fuzz/fuzz_targets/<name>.rs` and corpus directory) and body.
pub type Target = (&'static str, fn(&[u8]));

/// Every target, by name.
pub const TARGETS: &[Target] = &[
    ("frame", frame),
    ("wire_message", wire_message),
    ("status_json", status_json),
    ("gossip_message", gossip_message),
    ("gossip_core", gossip_core),
    ("stored_record", stored_record),
    ("datadir", datadir),
    ("tls_pem", tls_pem),
    ("zab_message", zab_message),
    ("meta_txn", meta_txn),
    ("meta_snapshot", meta_snapshot),
    ("meta_snapshot_file", meta_snapshot_file),
    ("meta_journal", meta_journal),
    ("mq_batch", mq_batch),
    ("mq_index", mq_index),
    ("mq_segment", mq_segment),
    ("mq_message", mq_message),
    ("group_record", group_record),
    ("repair_message", repair_message),
    ("kafka_request", kafka_request),
];
