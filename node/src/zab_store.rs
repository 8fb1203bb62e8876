//! The metadata service's durable ZAB state, in a RocksDB of its own (`<data-dir>/meta`): its
//! fsyncs follow ZAB's rule (every batch durable before its acknowledgements leave), whatever the
//! key-value store's `--sync` mode.
//!
//! Each [`Ready`](starling_zab::Ready) batch of [`Persist`] operations is one `WriteBatch`
//! written with `sync = true`: one fsync for every proposal and acknowledgement in it (group
//! commit), and atomic, so a crash leaves the whole batch or none of it. Keys:
//! - `s/accepted` → accepted epoch (4, BE) ‖ the leader it was accepted from (16);
//!   `s/current` → current epoch (4, BE); `s/log_base` → zxid (8, BE); `s/voters` → the
//!   voters' node ids (16 bytes each);
//! - `l/` ‖ zxid (8, BE) → a transaction (so the log reads back in zxid order);
//! - `p/zxid` → the snapshot's zxid; `p/n` → its chunk count (4, BE) ‖ blake3 of the whole
//!   snapshot (32); `p/c/` ‖ index (4, BE) → 1 MiB chunks.
//!
//! [`ZabStore::load`] checks what it reads (field sizes, the snapshot's hash) and refuses a
//! damaged store with an error that names the damage: a voter that lost what it acknowledged
//! must not rejoin as if it had not (it could let a quorum forget a committed transaction).

use std::path::Path;
use std::sync::Arc;

use rocksdb::{Direction, IteratorMode, Options, WriteBatch, WriteOptions, DB};
use starling_zab::{Entry, NodeId, Persist, Persisted, Zxid};

const ACCEPTED: &[u8] = b"s/accepted";
const CURRENT: &[u8] = b"s/current";
const LOG_BASE: &[u8] = b"s/log_base";
const VOTERS: &[u8] = b"s/voters";
const LOG: &[u8] = b"l/";
const SNAP_ZXID: &[u8] = b"p/zxid";
const SNAP_META: &[u8] = b"p/n";
const SNAP_CHUNK: &[u8] = b"p/c/";
const CHUNK: usize = 1 << 20;

fn log_key(z: Zxid) -> Vec<u8> {
    let mut k = LOG.to_vec();
    k.extend_from_slice(&z.0.to_be_bytes());
    k
}

fn chunk_key(i: u32) -> Vec<u8> {
    let mut k = SNAP_CHUNK.to_vec();
    k.extend_from_slice(&i.to_be_bytes());
    k
}

/// Past every key of a prefix (the prefix with its last byte incremented).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut e = prefix.to_vec();
    if let Some(last) = e.last_mut() {
        *last += 1;
    }
    e
}

/// A server's durable ZAB state.
pub struct ZabStore {
    db: DB,
    sync: WriteOptions,
}

impl std::fmt::Debug for ZabStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ZabStore")
    }
}

impl ZabStore {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<ZabStore, String> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.set_max_total_wal_size(64 << 20);
        let db = DB::open(&opts, dir)
            .map_err(|e| format!("cannot open the metadata store {}: {e}", dir.display()))?;
        let mut sync = WriteOptions::default();
        sync.set_sync(true);
        Ok(ZabStore { db, sync })
    }

    /// Writes one batch durably (one fsync).
    pub fn apply(&self, ops: &[Persist]) -> Result<(), String> {
        if ops.is_empty() {
            return Ok(());
        }
        let mut b = WriteBatch::default();
        let mut base = match self.get(LOG_BASE)? {
            Some(v) => Zxid(u64::from_be_bytes(v.as_slice().try_into().unwrap_or([0; 8]))),
            None => Zxid::ZERO,
        };
        for op in ops {
            match op {
                Persist::AcceptedEpoch { epoch, leader } => {
                    let mut v = epoch.to_be_bytes().to_vec();
                    v.extend_from_slice(&leader.to_be_bytes());
                    b.put(ACCEPTED, v);
                }
                Persist::CurrentEpoch(e) => b.put(CURRENT, e.to_be_bytes()),
                Persist::Append(entries) => {
                    for e in entries {
                        b.put(log_key(e.zxid), e.txn.as_slice());
                    }
                }
                Persist::TruncateAfter(z) => {
                    if let Some(next) = z.0.checked_add(1) {
                        b.delete_range(log_key(Zxid(next)), prefix_end(LOG));
                    }
                }
                Persist::Snapshot { zxid, data } => {
                    b.delete_range(SNAP_CHUNK.to_vec(), prefix_end(SNAP_CHUNK));
                    let mut n = 0u32;
                    for (i, c) in data.chunks(CHUNK).enumerate() {
                        b.put(chunk_key(i as u32), c);
                        n += 1;
                    }
                    let mut meta = n.to_be_bytes().to_vec();
                    meta.extend_from_slice(blake3::hash(data).as_bytes());
                    b.put(SNAP_META, meta);
                    b.put(SNAP_ZXID, zxid.0.to_be_bytes());
                }
                Persist::CompactThrough(z) => {
                    if let Some(next) = z.0.checked_add(1) {
                        b.delete_range(log_key(Zxid::ZERO), log_key(Zxid(next)));
                    }
                    base = base.max(*z);
                    b.put(LOG_BASE, base.0.to_be_bytes());
                }
                Persist::ResetLog(z) => {
                    b.delete_range(LOG.to_vec(), prefix_end(LOG));
                    base = *z;
                    b.put(LOG_BASE, base.0.to_be_bytes());
                }
            }
        }
        self.db.write_opt(b, &self.sync).map_err(|e| format!("cannot persist: {e}"))
    }

    /// The voters this server was started with the first time (`None`: not yet recorded).
    /// Kept, so a restarted voter rejoins the same ensemble without waiting for gossip.
    pub fn voters(&self) -> Result<Option<Vec<NodeId>>, String> {
        let Some(v) = self.get(VOTERS)? else { return Ok(None) };
        if v.is_empty() || v.len() % 16 != 0 {
            return Err(format!("the voter list is {} bytes, not a multiple of 16", v.len()));
        }
        Ok(Some(
            v.chunks_exact(16)
                .map(|c| NodeId::from_be_bytes(c.try_into().unwrap_or([0; 16])))
                .collect(),
        ))
    }

    /// Records the voters (durably).
    pub fn set_voters(&self, voters: &[NodeId]) -> Result<(), String> {
        let v: Vec<u8> = voters.iter().flat_map(|n| n.to_be_bytes()).collect();
        self.db.put_opt(VOTERS, v, &self.sync).map_err(|e| format!("cannot persist: {e}"))
    }

    fn get(&self, k: &[u8]) -> Result<Option<Vec<u8>>, String> {
        self.db.get(k).map_err(|e| format!("cannot read the metadata store: {e}"))
    }

    /// What a server restarts from.
    pub fn load(&self) -> Result<Persisted, String> {
        let mut p = Persisted::default();
        if let Some(v) = self.get(ACCEPTED)? {
            let (e, l) = v.split_at_checked(4).ok_or("accepted epoch record too short")?;
            p.accepted_epoch = u32::from_be_bytes(e.try_into().map_err(|_| "accepted epoch")?);
            let l: [u8; 16] =
                l.try_into().map_err(|_| "accepted epoch's leader is not 16 bytes")?;
            p.accepted_leader = NodeId::from_be_bytes(l);
        }
        if let Some(v) = self.get(CURRENT)? {
            p.current_epoch = u32::from_be_bytes(
                v.as_slice().try_into().map_err(|_| "current epoch is not 4 bytes")?,
            );
        }
        if let Some(v) = self.get(LOG_BASE)? {
            p.log_base = Zxid(u64::from_be_bytes(
                v.as_slice().try_into().map_err(|_| "log base is not 8 bytes")?,
            ));
        }
        if let Some(z) = self.get(SNAP_ZXID)? {
            let zxid = Zxid(u64::from_be_bytes(
                z.as_slice().try_into().map_err(|_| "snapshot zxid is not 8 bytes")?,
            ));
            let meta = self.get(SNAP_META)?.ok_or("snapshot without its chunk count")?;
            if meta.len() != 36 {
                return Err("snapshot chunk record is not 36 bytes".into());
            }
            let n = u32::from_be_bytes(meta[..4].try_into().map_err(|_| "chunk count")?);
            let mut data = Vec::new();
            for i in 0..n {
                let c = self
                    .get(&chunk_key(i))?
                    .ok_or_else(|| format!("snapshot chunk {i} of {n} is missing"))?;
                data.extend_from_slice(&c);
            }
            if blake3::hash(&data).as_bytes() != &meta[4..] {
                return Err(format!(
                    "the snapshot at {zxid:?} is corrupt (its hash does not match)"
                ));
            }
            p.snapshot = Some((zxid, Arc::new(data)));
        }
        let iter = self.db.iterator(IteratorMode::From(LOG, Direction::Forward));
        for item in iter {
            let (k, v) = item.map_err(|e| format!("cannot read the log: {e}"))?;
            if !k.starts_with(LOG) {
                break;
            }
            let z: [u8; 8] = k[LOG.len()..].try_into().map_err(|_| "a log key is not 8 bytes")?;
            p.log.push(Entry { zxid: Zxid(u64::from_be_bytes(z)), txn: Arc::new(v.to_vec()) });
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use starling_zab::disk::MemDisk;

    fn same(a: &Persisted, b: &Persisted) {
        assert_eq!((a.accepted_epoch, a.accepted_leader), (b.accepted_epoch, b.accepted_leader));
        assert_eq!(a.current_epoch, b.current_epoch);
        assert_eq!(a.log_base, b.log_base);
        assert_eq!(a.snapshot, b.snapshot);
        assert_eq!(a.log, b.log);
    }

    fn op() -> impl Strategy<Value = Persist> {
        prop_oneof![
            (1u32..5, 1u128..4)
                .prop_map(|(epoch, l)| Persist::AcceptedEpoch { epoch, leader: NodeId(l) }),
            (1u32..5).prop_map(Persist::CurrentEpoch),
            (1u32..60, 1usize..4).prop_map(|(c, n)| Persist::Append(
                (0..n as u32)
                    .map(|i| Entry { zxid: Zxid::new(1, c + i), txn: Arc::new(vec![c as u8; 3]) })
                    .collect()
            )),
            (0u32..60).prop_map(|c| Persist::TruncateAfter(Zxid::new(1, c))),
            (0u32..60, 0usize..3000).prop_map(|(c, n)| Persist::Snapshot {
                zxid: Zxid::new(1, c),
                data: Arc::new((0..n).map(|i| i as u8).collect())
            }),
            (0u32..60).prop_map(|c| Persist::CompactThrough(Zxid::new(1, c))),
            (0u32..60).prop_map(|c| Persist::ResetLog(Zxid::new(1, c))),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(40))]
        /// Whatever batches it is given, the store reads back what the reference model holds,
        /// also after a reopen (a restart).
        #[test]
        fn the_store_reads_back_what_the_model_holds(batches in proptest::collection::vec(proptest::collection::vec(op(), 0..5), 1..12)) {
            let dir = tempfile::tempdir().unwrap();
            let mut model = MemDisk::default();
            {
                let s = ZabStore::open(dir.path()).unwrap();
                for b in &batches {
                    // Appends only ever extend the log (the core's rule): drop the others.
                    let mut scratch = model.clone();
                    let mut kept = Vec::new();
                    for op in b {
                        if let Persist::Append(e) = op {
                            if e.first().map(|e| e.zxid) <= scratch.state.log.last().map(|e| e.zxid) {
                                continue;
                            }
                        }
                        scratch.apply_all(std::slice::from_ref(op));
                        kept.push(op.clone());
                    }
                    model.apply_all(&kept);
                    s.apply(&kept).unwrap();
                }
                same(&s.load().unwrap(), &model.load());
            }
            let s = ZabStore::open(dir.path()).unwrap();
            same(&s.load().unwrap(), &model.load());
        }
    }

    #[test]
    fn a_damaged_snapshot_is_refused_with_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let s = ZabStore::open(dir.path()).unwrap();
        let data = Arc::new(vec![7u8; CHUNK + 10]);
        s.apply(&[Persist::Snapshot { zxid: Zxid::new(2, 9), data }]).unwrap();
        assert_eq!(s.load().unwrap().snapshot.unwrap().1.len(), CHUNK + 10);
        s.db.put(chunk_key(1), b"flipped").unwrap();
        let e = s.load().unwrap_err();
        assert!(e.contains("corrupt"), "{e}");
        s.db.delete(chunk_key(1)).unwrap();
        let e = s.load().unwrap_err();
        assert!(e.contains("chunk 1 of 2 is missing"), "{e}");
        s.db.put(ACCEPTED, b"xy").unwrap();
        assert!(s.load().unwrap_err().contains("too short"));
    }
}
