//! A store whose disk stops taking writes. The process's file-size limit (`RLIMIT_FSIZE`) makes
//! writes past it fail, as a full disk does: the store must refuse further writes with a clear
//! error instead of crashing, keep serving reads, and open with every write it acknowledged once
//! the disk takes writes again.
//!
//! Its own test binary, with one test: the limit applies to the whole process.

use nix::sys::resource::{getrlimit, setrlimit, Resource};
use nix::sys::signal::{SigSet, Signal};
use starling_node::storage::rocks::{RocksConfig, RocksStorage};
use starling_node::storage::{Storage, StorageError};
use starling_wire::NodeId;
use starling_wire::{Record, Version};

/// Each WAL file may grow to this much; the memtable (16 MiB) fills later, so the write-ahead
/// log is what hits the limit.
const FILE_LIMIT: u64 = 2 << 20;

fn record(i: u64) -> Record {
    Record {
        key: format!("key-{i:08}").into_bytes(),
        version: Version { ts: (1_700_000_000_000 << 16) + i, node: NodeId(1) },
        value: Some(vec![b'a' + (i % 26) as u8; 100]),
    }
}

#[test]
fn a_store_whose_disk_refuses_writes_fails_cleanly_and_keeps_what_it_acknowledged() {
    // Past the limit a write gets EFBIG instead of the signal that would end the process, while
    // the signal is blocked: here, and in the threads RocksDB starts from this one.
    let mut xfsz = SigSet::empty();
    xfsz.add(Signal::SIGXFSZ);
    xfsz.thread_block().expect("block SIGXFSZ");
    let (_, hard) = getrlimit(Resource::RLIMIT_FSIZE).expect("getrlimit");
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = RocksConfig::default();

    setrlimit(Resource::RLIMIT_FSIZE, FILE_LIMIT, hard).expect("limit file sizes");
    let st = RocksStorage::open(dir.path(), &cfg).expect("open");
    let mut acked: Vec<Record> = Vec::new();
    let mut failure = None;
    for batch in 0..10_000u64 {
        let records: Vec<Record> = (0..50).map(|j| record(batch * 50 + j)).collect();
        match st.apply(&records) {
            Ok(()) => acked.extend(records),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    let failure = failure.expect("the file-size limit must stop the writes");
    assert!(matches!(failure, StorageError::Failed(_)), "{failure}");
    let text = failure.to_string();
    assert!(text.contains("takes no more writes") && text.contains("restart"), "{text}");
    assert!(acked.len() > 1_000, "only {} writes before the limit", acked.len());
    let why = st.failure().expect("the store reports its failure");
    assert!(why.contains("write"), "{why}");

    // Every later write is refused at once, data, hints and metadata alike.
    match st.apply(&[record(99_999_999)]) {
        Err(StorageError::Failed(w)) => assert_eq!(w, why),
        other => panic!("a write after the failure: {other:?}"),
    }
    assert!(matches!(
        st.put_hints(&[(NodeId(7), record(99_999_998))]),
        Err(StorageError::Failed(_))
    ));
    assert!(matches!(st.put_meta("tokens", b"x"), Err(StorageError::Failed(_))));

    // Reads go on.
    for r in acked.iter().step_by(101) {
        assert_eq!(st.get(&r.key).expect("read after the failure").as_ref(), Some(r));
    }
    drop(st);

    // The disk takes writes again: a restart opens with every acknowledged write.
    setrlimit(Resource::RLIMIT_FSIZE, hard, hard).expect("lift the limit");
    let st = RocksStorage::open(dir.path(), &cfg).expect("reopen");
    assert_eq!(st.failure(), None);
    for r in &acked {
        let got = st.get(&r.key).expect("read after reopen");
        assert_eq!(got.as_ref(), Some(r), "acknowledged write of {:?} lost", r.key);
    }
    assert_eq!(st.get(b"key-99999999").expect("read"), None, "a refused write was stored");
    st.apply(&[record(99_999_999)]).expect("writes are taken again");
}
