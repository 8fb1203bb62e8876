//! The metadata service's durable ZAB state, in a RocksDB of its own (`<data-dir>/meta`): its
//! fsyncs follow ZAB's rule (every batch durable before its acknowledgements leave), whatever the
//! key-value store's `--sync` mode.
//!
//! Each [`ZabStore::apply`] — one [`Ready`](starling_zab::Ready) batch of [`Persist`]
//! operations, or every batch the log writer was handed during its last write — is one
//! `WriteBatch` written with `sync = true`: one fsync for every proposal and acknowledgement in
//! it (group commit), and atomic, so a crash leaves all of it or none of it. Keys:
//! - `s/accepted` → accepted epoch (4, BE) ‖ the leader it was accepted from (16);
//!   `s/current` → current epoch (4, BE); `s/log_base` → zxid (8, BE); `s/voters` → the
//!   voters' node ids (16 bytes each);
//! - `l/` ‖ zxid (8, BE) → a transaction (so the log reads back in zxid order);
//! - `p/zxid` → the snapshot's zxid; `p/n` → its chunk count (4, BE) ‖ blake3 of the whole
//!   snapshot (32); `p/c/` ‖ index (4, BE) → 1 MiB chunks: a snapshot sent by a leader (a
//!   SNAP), persisted with the log's reset in the same batch.
//!
//! The snapshots a server takes itself are files in `snapshots/` beside the database
//! ([`ZabStore::save_snapshot`], called off the ZAB loop: a large tree's snapshot does not hold
//! up the log's group commits behind it). `snap-<zxid, 16 hex digits>` holds the snapshot in
//! the format of [`starling_store_format::snapshot_file`] (zstd-compressed, with its zxid,
//! length and hash; the earlier uncompressed files are still read); written to a `.tmp`,
//! fsynced, renamed, the directory fsynced. The two newest are kept: if the newer is damaged,
//! the older still covers the log's start (the log is compacted only through the snapshot
//! before the newest). A restart loads the newest readable snapshot of either kind. A
//! leader's snapshot in the database older than both files covers nothing the files do not,
//! and is deleted when the second of them is saved (a node upgraded from a version that kept
//! its own snapshots in the database, or that got a SNAP long ago, would otherwise keep it for
//! good).
//!
//! [`ZabStore::load`] checks what it reads (field sizes, the snapshot's hash) and refuses a
//! damaged store with an error that names the damage: a voter that lost what it acknowledged
//! must not rejoin as if it had not (it could let a quorum forget a committed transaction).

use std::fs::File;
use std::io::Write;

use starling_store_format::snapshot_file;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

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
#[cfg(test)]
use starling_store_format::snapshot_file::{HEADER as SNAP_HEADER, MAGIC_RAW as SNAP_MAGIC_RAW};
/// Snapshot files kept.
const SNAP_FILES: usize = 2;

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
    /// Where the snapshots this server takes go.
    snap_dir: PathBuf,
    /// Bumped by every snapshot or log reset [`ZabStore::apply`] writes (a leader's SNAP), and
    /// held while a snapshot file is written: a snapshot taken before a SNAP is not saved after
    /// it.
    snap_gen: Mutex<u64>,
    /// `s/log_base` as last written (`None`: not read yet, or a write failed), so a batch of
    /// appends does not read it back each time.
    log_base: Mutex<Option<Zxid>>,
}

/// An I/O error as "cannot WHAT PATH: ERROR".
fn io(what: &'static str, p: &Path) -> impl FnOnce(std::io::Error) -> String + use<> {
    let p = p.display().to_string();
    move |e| format!("cannot {what} {p}: {e}")
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
        // Log entries live one or two snapshot intervals: compressing them on each flush costs
        // more than the disk it saves.
        opts.set_compression_type(rocksdb::DBCompressionType::None);
        let db = DB::open(&opts, dir)
            .map_err(|e| format!("cannot open the metadata store {}: {e}", dir.display()))?;
        let mut sync = WriteOptions::default();
        sync.set_sync(true);
        let snap_dir = dir.join("snapshots");
        std::fs::create_dir_all(&snap_dir).map_err(io("create", &snap_dir))?;
        // A snapshot file cut short by a crash is only ever a `.tmp`.
        for e in std::fs::read_dir(&snap_dir).map_err(io("list", &snap_dir))?.flatten() {
            if e.file_name().to_string_lossy().ends_with(".tmp") {
                let _ = std::fs::remove_file(e.path());
            }
        }
        Ok(ZabStore { db, sync, snap_dir, snap_gen: Mutex::new(0), log_base: Mutex::new(None) })
    }

    /// The generation a [`SnapshotJob`](starling_zab::SnapshotJob) is saved under: take it
    /// when the job is handed out.
    pub fn snapshot_gen(&self) -> u64 {
        self.snap_gen.lock().map_or(0, |g| *g)
    }

    /// Saves a snapshot this server took, unless a snapshot was persisted through
    /// [`ZabStore::apply`] since `gen` (then `Ok(false)`: it is stale), and keeps the two
    /// newest files.
    pub fn save_snapshot(&self, gen: u64, zxid: Zxid, data: &[u8]) -> Result<bool, String> {
        let g = self.snap_gen.lock().map_err(|_| "the snapshot lock is poisoned")?;
        if *g != gen {
            return Ok(false);
        }
        let name = format!("snap-{:016x}", zxid.0);
        let tmp = self.snap_dir.join(format!("{name}.tmp"));
        let file = snapshot_file::encode(zxid.0, data).map_err(io("compress", &tmp))?;
        let written = File::create(&tmp).and_then(|mut f| {
            f.write_all(&file)?;
            f.sync_all()
        });
        if let Err(e) = written {
            // A full disk: what was written of it goes now, not at the next restart.
            let _ = std::fs::remove_file(&tmp);
            return Err(io("write", &tmp)(e));
        }
        let path = self.snap_dir.join(&name);
        std::fs::rename(&tmp, &path).map_err(io("rename", &tmp))?;
        File::open(&self.snap_dir)
            .and_then(|d| d.sync_all())
            .map_err(io("sync", &self.snap_dir))?;
        let files = self.snapshot_files()?;
        let old = files.len().saturating_sub(SNAP_FILES);
        for (_, p) in files.iter().take(old) {
            let _ = std::fs::remove_file(p);
        }
        let dropped = files.len() >= SNAP_FILES && self.drop_superseded_snap(files[old].0)?;
        drop(g);
        if dropped {
            self.db.compact_range(Some(b"p/".as_slice()), Some(prefix_end(b"p/").as_slice()));
        }
        Ok(true)
    }

    /// Deletes the leader's snapshot kept in the database if it is older than `oldest_file`
    /// (the older of the two snapshot files kept): it covers nothing they do not. Says whether
    /// it did.
    fn drop_superseded_snap(&self, oldest_file: Zxid) -> Result<bool, String> {
        let Some(z) = self.get(SNAP_ZXID)? else { return Ok(false) };
        let Ok(z) = <[u8; 8]>::try_from(z.as_slice()) else { return Ok(false) };
        if Zxid(u64::from_be_bytes(z)) >= oldest_file {
            return Ok(false);
        }
        let mut b = WriteBatch::default();
        b.delete_range(SNAP_CHUNK.to_vec(), prefix_end(SNAP_CHUNK));
        b.delete(SNAP_META);
        b.delete(SNAP_ZXID);
        self.db.write_opt(b, &self.sync).map_err(|e| format!("cannot persist: {e}"))?;
        Ok(true)
    }

    /// The snapshot files, oldest first.
    fn snapshot_files(&self) -> Result<Vec<(Zxid, PathBuf)>, String> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(&self.snap_dir).map_err(io("list", &self.snap_dir))?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(z) = name.strip_prefix("snap-").filter(|z| z.len() == 16) {
                if let Ok(z) = u64::from_str_radix(z, 16) {
                    out.push((Zxid(z), e.path()));
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// A snapshot file's contents, checked against its header (see
    /// [`starling_store_format::snapshot_file`]).
    fn read_snapshot_file(zxid: Zxid, path: &Path) -> Result<Vec<u8>, String> {
        let file = std::fs::read(path).map_err(io("read", path))?;
        let (z, data) = snapshot_file::decode(file, u64::MAX)?;
        if z != zxid.0 {
            return Err(format!("holds the snapshot at {:?}", Zxid(z)));
        }
        Ok(data)
    }

    /// Writes one batch durably (one fsync).
    pub fn apply(&self, ops: &[Persist]) -> Result<(), String> {
        if ops.is_empty() {
            return Ok(());
        }
        // A leader's snapshot: no snapshot taken before it is saved after it.
        let mut gen =
            if ops.iter().any(|op| matches!(op, Persist::Snapshot { .. } | Persist::ResetLog(_))) {
                Some(self.snap_gen.lock().map_err(|_| "the snapshot lock is poisoned")?)
            } else {
                None
            };
        let mut b = WriteBatch::default();
        let mut cached = self.log_base.lock().map_err(|_| "the log base lock is poisoned")?;
        let mut base = match *cached {
            Some(z) => z,
            None => match self.get(LOG_BASE)? {
                Some(v) => Zxid(u64::from_be_bytes(v.as_slice().try_into().unwrap_or([0; 8]))),
                None => Zxid::ZERO,
            },
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
        // Unknown again if the write fails (it may or may not have reached the disk).
        *cached = None;
        self.db.write_opt(b, &self.sync).map_err(|e| format!("cannot persist: {e}"))?;
        *cached = Some(base);
        drop(cached);
        if let Some(g) = gen.as_mut() {
            **g += 1;
            // The leader's snapshot replaces this server's own (were one left by a crash
            // here, it would be committed history too, and loaded only if newer).
            for (_, p) in self.snapshot_files()? {
                let _ = std::fs::remove_file(p);
            }
        }
        Ok(())
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
        // The newest readable snapshot file, if newer.
        let held = p.snapshot.as_ref().map(|(z, _)| *z);
        for (zxid, path) in self.snapshot_files()?.into_iter().rev() {
            if held.is_some_and(|h| h >= zxid) {
                break;
            }
            match Self::read_snapshot_file(zxid, &path) {
                Ok(data) => {
                    p.snapshot = Some((zxid, Arc::new(data)));
                    break;
                }
                Err(e) => {
                    tracing::warn!(file = %path.display(), "metadata snapshot file skipped: {e}")
                }
            }
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

    /// Snapshots a server takes go to files: the newest readable one of either kind is loaded
    /// (as the model says), a damaged newest file falls back to the one before, a leader's SNAP
    /// replaces them and a snapshot taken before it is not saved after it, two files are kept,
    /// and a torn `.tmp` is cleared.
    #[test]
    fn snapshot_files_load_newest_first_and_fall_back() {
        let dir = tempfile::tempdir().unwrap();
        let s = ZabStore::open(dir.path()).unwrap();
        let mut model = MemDisk::default();
        let snap = |n: u8| Arc::new(vec![n; 3000]);
        let save = |s: &ZabStore, model: &mut MemDisk, gen: u64, c: u32, n: u8| {
            let a = s.save_snapshot(gen, Zxid::new(1, c), &snap(n)).unwrap();
            assert_eq!(a, model.save_snapshot(gen, Zxid::new(1, c), snap(n)));
            same(&s.load().unwrap(), &model.load());
            a
        };
        for (i, c) in [5u32, 9, 14].into_iter().enumerate() {
            assert_eq!(s.snapshot_gen(), model.snapshot_gen);
            assert!(save(&s, &mut model, s.snapshot_gen(), c, i as u8));
        }
        assert_eq!(s.snapshot_files().unwrap().len(), 2, "the two newest are kept");
        // The newest file damaged, or cut short: the one before it is loaded.
        let newest = s.snapshot_files().unwrap().last().unwrap().1.clone();
        let good = std::fs::read(&newest).unwrap();
        let mut bad = good.clone();
        bad[SNAP_HEADER + 10] ^= 1;
        std::fs::write(&newest, &bad).unwrap();
        assert_eq!(s.load().unwrap().snapshot.unwrap().0, Zxid::new(1, 9));
        std::fs::write(&newest, &good[..SNAP_HEADER + 5]).unwrap();
        assert_eq!(s.load().unwrap().snapshot.unwrap().0, Zxid::new(1, 9));
        std::fs::write(&newest, &good).unwrap();
        assert_eq!(s.load().unwrap().snapshot.unwrap().0, Zxid::new(1, 14));
        // A leader's SNAP replaces them; a snapshot taken before it is stale.
        let gen = s.snapshot_gen();
        let snap_op = [
            Persist::Snapshot { zxid: Zxid::new(1, 12), data: snap(7) },
            Persist::ResetLog(Zxid::new(1, 12)),
        ];
        s.apply(&snap_op).unwrap();
        model.apply_all(&snap_op);
        same(&s.load().unwrap(), &model.load());
        assert!(!save(&s, &mut model, gen, 20, 8), "a stale snapshot was saved");
        assert!(save(&s, &mut model, s.snapshot_gen(), 20, 9));
        assert_eq!(s.load().unwrap().snapshot.unwrap().0, Zxid::new(1, 20));
        // Its file damaged: the SNAP's snapshot is loaded.
        let newest = s.snapshot_files().unwrap().last().unwrap().1.clone();
        std::fs::write(&newest, b"STRLSNP1").unwrap();
        assert_eq!(s.load().unwrap().snapshot.unwrap().0, Zxid::new(1, 12));
        // A torn write is only ever a .tmp, and goes at the next open.
        let tmp = s.snap_dir.join("snap-0000000100000063.tmp");
        std::fs::write(&tmp, b"torn").unwrap();
        drop(s);
        let s = ZabStore::open(dir.path()).unwrap();
        assert!(!tmp.exists());
        assert_eq!(s.load().unwrap().snapshot.unwrap().0, Zxid::new(1, 12));
    }

    /// Snapshot files are compressed (a tree's snapshot repeats itself), files of the earlier
    /// uncompressed format still load, a file whose compressed body is damaged or decompresses
    /// to another length is skipped, and a leader's snapshot in the database is deleted once
    /// two newer files cover it (not before).
    #[test]
    fn snapshot_files_are_compressed_old_ones_read_and_a_superseded_snap_goes() {
        let dir = tempfile::tempdir().unwrap();
        let s = ZabStore::open(dir.path()).unwrap();
        let tree = |n: u32| -> Arc<Vec<u8>> {
            Arc::new(
                (0..20_000)
                    .flat_map(|i| format!("/app/config/{n}/node-{i:010}=v\n").into_bytes())
                    .collect(),
            )
        };
        // A leader's SNAP at (1, 3), then this server's own snapshots.
        s.apply(&[Persist::Snapshot { zxid: Zxid::new(1, 3), data: tree(3) }]).unwrap();
        assert!(s.save_snapshot(s.snapshot_gen(), Zxid::new(1, 5), &tree(5)).unwrap());
        let file = s.snapshot_files().unwrap()[0].1.clone();
        let size = std::fs::metadata(&file).unwrap().len();
        assert!(size * 5 < tree(5).len() as u64, "{size} bytes on disk for {}", tree(5).len());
        assert_eq!(s.load().unwrap().snapshot.unwrap(), (Zxid::new(1, 5), tree(5)));
        // One file only: the SNAP is still the fallback, and kept.
        assert!(s.get(SNAP_ZXID).unwrap().is_some());
        // A second file, newer than the SNAP: both files cover what the SNAP held.
        assert!(s.save_snapshot(s.snapshot_gen(), Zxid::new(1, 8), &tree(8)).unwrap());
        assert!(s.get(SNAP_ZXID).unwrap().is_none(), "the superseded SNAP was kept");
        assert!(s.get(&chunk_key(0)).unwrap().is_none());
        assert_eq!(s.load().unwrap().snapshot.unwrap(), (Zxid::new(1, 8), tree(8)));
        // A later SNAP replaces the files; it goes again once two newer files are saved.
        s.apply(&[Persist::Snapshot { zxid: Zxid::new(1, 9), data: tree(9) }]).unwrap();
        assert!(s.snapshot_files().unwrap().is_empty());
        assert!(s.save_snapshot(s.snapshot_gen(), Zxid::new(1, 10), &tree(10)).unwrap());
        assert!(s.get(SNAP_ZXID).unwrap().is_some(), "the SNAP went with one file to cover it");
        assert!(s.save_snapshot(s.snapshot_gen(), Zxid::new(1, 11), &tree(11)).unwrap());
        assert!(s.get(SNAP_ZXID).unwrap().is_none());
        // The earlier format, written by hand, still loads.
        let data = tree(12);
        let mut raw = SNAP_MAGIC_RAW.to_vec();
        raw.extend_from_slice(&Zxid::new(1, 12).0.to_be_bytes());
        raw.extend_from_slice(&(data.len() as u64).to_be_bytes());
        raw.extend_from_slice(blake3::hash(&data).as_bytes());
        raw.extend_from_slice(&data);
        let old = s.snap_dir.join(format!("snap-{:016x}", Zxid::new(1, 12).0));
        std::fs::write(&old, &raw).unwrap();
        assert_eq!(s.load().unwrap().snapshot.unwrap(), (Zxid::new(1, 12), tree(12)));
        // A compressed file whose header claims another length, or whose body is damaged, is
        // skipped for the one before it.
        std::fs::remove_file(&old).unwrap();
        let newest = s.snapshot_files().unwrap().last().unwrap().1.clone();
        let good = std::fs::read(&newest).unwrap();
        let mut longer = good.clone();
        longer[16..24].copy_from_slice(&(tree(11).len() as u64 + 1).to_be_bytes());
        std::fs::write(&newest, &longer).unwrap();
        let e = ZabStore::read_snapshot_file(Zxid::new(1, 11), &newest).unwrap_err();
        assert!(e.contains("decompresses to"), "{e}");
        assert_eq!(s.load().unwrap().snapshot.unwrap().0, Zxid::new(1, 10));
        let mut bad = good.clone();
        let mid = SNAP_HEADER + (good.len() - SNAP_HEADER) / 2;
        bad[mid] ^= 0x55;
        std::fs::write(&newest, &bad).unwrap();
        assert!(ZabStore::read_snapshot_file(Zxid::new(1, 11), &newest).is_err());
        assert_eq!(s.load().unwrap().snapshot.unwrap().0, Zxid::new(1, 10));
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
