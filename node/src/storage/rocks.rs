//! [`Storage`] on RocksDB (Debian's librocksdb 7.8 through the `rocksdb` 0.21 crate).
//!
//! - A data write is a plain **put** when the version cache ([`super::versions`]) shows it is newer
//!   than what is stored, is dropped when it is older, and is otherwise a RocksDB **merge** with a
//!   last-write-wins merge operator: RocksDB keeps the newest version when it reads or compacts.
//! - Tombstones older than the grace period are dropped by a **compaction filter** (RocksDB turns
//!   the removal into a deletion marker until the bottom level, so older copies underneath do not
//!   come back).
//! - Durability: every write goes to the write-ahead log before `apply` returns. With
//!   [`SyncMode::Periodic`] a background thread fsyncs the log every `sync_interval`, through
//!   handles of its own while writes go on ([`WalFiles`]); with
//!   [`SyncMode::Always`] each batch is fsynced before it returns (the writer thread batches
//!   concurrent writes, so they share one fsync: group commit).
//! - Hints: one per target and key. Storing one reads the hint kept for its key first and writes
//!   only a newer version; deleting a delivered one checks that it still has the version
//!   delivered. Both run under one lock, so neither can interleave with the other. A store whose
//!   hints are still in the format before that (`target ‖ hlc ‖ token ‖ key`, several per key) is
//!   rewritten when opened ([`RocksStorage::open`]).

use starling_wire::NodeId;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rocksdb::compaction_filter::Decision;
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, DBCompressionType,
    DBPinnableSlice, Direction, IteratorMode, LogLevel, MergeOperands, Options, ReadOptions,
    WriteBatch, WriteOptions, DB,
};
use starling_ring::Range;
use starling_store_format::record::{is_current_hint_key, lww_winner, old_hint_key};
use starling_wire::{Record, Version};

use super::versions::{key_hash, keyed, KeyHash, Known, VersionCache};
use super::{
    corrupt, data_key, decode_value, decode_version, encode_value, encode_value_into, hint_is,
    hint_key, hint_put, range_pieces, token_bounds, Hint, HintPut, ScanPage, Storage, StorageError,
};

const CF_DATA: &str = "data";
const CF_HINTS: &str = "hints";
const CF_META: &str = "meta";

/// Meta key: the format of the hint keys. `2`: `target ‖ token ‖ key`, one hint per target and
/// key. Absent: not yet known to be `2` (a store written before it may hold `target ‖ hlc ‖ token
/// ‖ key` hints, several per key); [`RocksStorage::open`] rewrites those, then sets it.
const HINT_FORMAT: &str = "hint_format";
const HINT_FORMAT_NOW: &[u8] = b"2";
/// The rewrite of old hints goes in write batches of this many hints, or about this many bytes.
const MIGRATE_BATCH: usize = 1024;
const MIGRATE_BATCH_BYTES: usize = 4 << 20;

/// When the write-ahead log reaches the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    /// Written at once, fsynced every `sync_interval` in the background: survives any process
    /// kill; a power loss can lose the last interval on that machine.
    Periodic(Duration),
    /// Fsynced before every acknowledgement (group commit).
    Always,
}

impl std::fmt::Display for SyncMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SyncMode::Periodic(d) => write!(f, "periodic ({} ms)", d.as_millis()),
            SyncMode::Always => f.write_str("always"),
        }
    }
}

/// Default size of the version cache, in keys (about 26 bytes each).
pub const DEFAULT_VERSION_CACHE: usize = 1_000_000;

/// Settings of the RocksDB store.
#[derive(Debug, Clone)]
pub struct RocksConfig {
    pub sync: SyncMode,
    /// How long a tombstone is kept before compaction may drop it.
    pub tombstone_grace: Duration,
    /// Keys whose stored version is kept in memory (the version cache); 0 turns it off.
    pub version_cache: usize,
    /// Anti-entropy grain: `2^segment_bits` segments (every node of a cluster uses the same).
    pub segment_bits: u8,
    /// With a gate, a tombstone past its grace period is dropped only once a complete repair
    /// of its range started after it was written ([`super::PurgeGate`]); without, at once.
    pub purge_gate: Option<Arc<super::PurgeGate>>,
}

impl Default for RocksConfig {
    fn default() -> Self {
        RocksConfig {
            sync: SyncMode::Periodic(Duration::from_millis(10)),
            tombstone_grace: Duration::from_secs(10 * 24 * 3600),
            version_cache: DEFAULT_VERSION_CACHE,
            segment_bits: starling_merkle::DEFAULT_SEGMENT_BITS,
            purge_gate: None,
        }
    }
}

/// The RocksDB store. Dropping it stops the sync thread and closes the database.
pub struct RocksStorage {
    db: Arc<DB>,
    write_opts: WriteOptions,
    syncer: Mutex<Option<(Arc<AtomicBool>, JoinHandle<()>)>>,
    dirty: Arc<AtomicBool>,
    /// Stored versions of recent keys; changed only under `apply_lock` (see [`super::versions`]).
    versions: Option<VersionCache>,
    apply_lock: Mutex<()>,
    /// Held by every change to the hints: a hint's check (what version is stored) and its write
    /// or deletion are one step.
    hints_lock: Mutex<()>,
    /// Set by the first failed write or WAL sync (see [`RocksStorage::write_with`]).
    failed: Arc<OnceLock<String>>,
    /// Held by every write, and by the last WAL sync when the store closes, across its check of
    /// `failed`, the call into RocksDB and the marking of a failure: once the log's writer has
    /// failed, RocksDB must not be asked to append to it or sync it again (Debian's build aborts
    /// on an assertion), and without the lock a second write could pass the check before the
    /// first failure is marked. The periodic WAL sync does not call into RocksDB ([`WalFiles`]).
    wal: Arc<Mutex<()>>,
    /// Anti-entropy segment hashes; rebuilt after every start (see `merkle/ALGORITHM.md`).
    segments: Arc<starling_merkle::Segments>,
}

impl std::fmt::Debug for RocksStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksStorage").field("path", &self.db.path()).finish()
    }
}

/// The write-ahead log files of a store, synced by the periodic WAL sync on handles of its own.
///
/// `periodic` mode used to ask RocksDB to sync its log (`FlushWAL(true)`), holding the store's
/// WAL lock for the whole fsync so that no write could fail the log in between (RocksDB must not
/// be called into a failed log): every write waited for each fsync, a tenth of the writes a
/// loaded node could take (`starling bench kv`, 10 ms against 200 ms intervals). An `fdatasync`
/// of the same files through another descriptor makes the same bytes durable without calling
/// into RocksDB, so writes go on while it runs: RocksDB hands each write's log record to the
/// kernel before the write returns (`manual_wal_flush` is off), and a new log file's directory
/// entry is synced once, the first time it is seen. A log RocksDB deleted meanwhile was
/// flushed to a table file first (synced by RocksDB): it needs nothing.
struct WalFiles {
    dir: PathBuf,
    /// Open log files by name, with the length each had when last synced (RocksDB appends to
    /// one log at a time: the older ones, kept for column families not yet flushed, are
    /// left alone).
    open: HashMap<std::ffi::OsString, (std::fs::File, u64)>,
}

impl WalFiles {
    fn new(dir: PathBuf) -> Self {
        WalFiles { dir, open: HashMap::new() }
    }

    /// Makes everything written to the store's log files so far durable. Fails if the store
    /// has no log file at all: RocksDB always has one, so the files are not where they are
    /// looked for, and nothing would be synced.
    fn sync(&mut self) -> std::io::Result<WalSynced> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let name = entry?.file_name();
            if std::path::Path::new(&name).extension().is_some_and(|e| e == "log") {
                names.push(name);
            }
        }
        if names.is_empty() {
            return Err(std::io::Error::other(format!(
                "no write-ahead log file in {}",
                self.dir.display()
            )));
        }
        self.open.retain(|name, _| names.contains(name));
        let mut done = WalSynced::default();
        for name in names {
            if let std::collections::hash_map::Entry::Vacant(slot) = self.open.entry(name) {
                match std::fs::File::open(self.dir.join(slot.key())) {
                    Ok(f) => {
                        slot.insert((f, u64::MAX));
                        done.directory = true;
                    }
                    // Deleted since the listing: flushed to a table file, nothing to sync.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
        }
        for (f, synced) in self.open.values_mut() {
            let len = f.metadata()?.len();
            if len != *synced {
                f.sync_data()?;
                *synced = len;
                done.files += 1;
            }
        }
        if done.directory {
            std::fs::File::open(&self.dir)?.sync_all()?;
        }
        Ok(done)
    }
}

/// What one [`WalFiles::sync`] synced.
#[derive(Debug, Default, PartialEq, Eq)]
struct WalSynced {
    files: usize,
    directory: bool,
}

/// Marks the store failed (the first reason stays) and says so once in the log.
fn fail(failed: &OnceLock<String>, why: String) {
    if failed.set(why.clone()).is_ok() {
        tracing::error!(
            error = %why,
            "storage failed: this node takes no more writes until it is restarted \
             (free disk space first if it is full); reads go on"
        );
    }
}

fn lock(m: &Mutex<()>) -> std::sync::MutexGuard<'_, ()> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn engine(e: rocksdb::Error) -> StorageError {
    StorageError::Engine(e.into_string())
}

/// Last write wins: the newest readable version among the stored value and the operands.
fn lww_merge(_key: &[u8], existing: Option<&[u8]>, operands: &MergeOperands) -> Option<Vec<u8>> {
    // Never fail a merge (that would make the key unreadable); with no input keep nothing valid.
    Some(lww_winner(existing, operands.iter()).map(<[u8]>::to_vec).unwrap_or_default())
}

fn now_millis() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl RocksStorage {
    /// Opens (creating if needed) the store in `path`; hints in the format before one per target
    /// and key are rewritten first (see `migrate_hints`).
    pub fn open(path: &Path, cfg: &RocksConfig) -> Result<RocksStorage, StorageError> {
        let mut db_opts = Options::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        db_opts.set_max_open_files(512);
        db_opts.set_keep_log_file_num(4);
        // RocksDB's own info LOG keeps fatal messages only. It lives on the data disk, and once
        // a write to it has failed (a full disk) the next log line aborts the process in the
        // assertion-enabled builds Linux distributions ship: on a full disk RocksDB logs its
        // own write error, which would take the node down. Starling logs storage errors itself.
        db_opts.set_log_level(LogLevel::Fatal);
        db_opts.increase_parallelism(2);
        // The small `hints` and `meta` families rarely fill a memtable, and a log file is kept
        // until every family has flushed what it holds: past this size RocksDB flushes them, so
        // the logs (and the replay after a restart) stay bounded.
        db_opts.set_max_total_wal_size(64 << 20);

        let mut data = Options::default();
        // Keys are token-prefixed, so inserts land at random places in the memtable's skip list;
        // a small memtable keeps that list in cache (64 MiB spent a fifth of all CPU there).
        let mb: usize =
            std::env::var("STARLING_MEMTABLE_MB").ok().and_then(|v| v.parse().ok()).unwrap_or(16);
        data.set_write_buffer_size(mb << 20);
        data.set_max_write_buffer_number(3);
        // Keys are random in token order, so every L0 file overlaps all of L1 and each L0 -> L1
        // compaction rewrites L1 whole: compacting 8 files at a time instead of 4 halves how often
        // (measured: sustained overwrites ~3% faster with a p99 0.4-0.7 ms lower, point reads ~6%
        // slower for the extra bloom probes).
        data.set_level_zero_file_num_compaction_trigger(8);
        // Bloom filters: a point read skips the files that cannot hold the key.
        let mut table = BlockBasedOptions::default();
        table.set_bloom_filter(10.0, false);
        table.set_block_cache(&Cache::new_lru_cache(64 << 20));
        table.set_cache_index_and_filter_blocks(true);
        table.set_pin_l0_filter_and_index_blocks_in_cache(true);
        data.set_block_based_table_factory(&table);
        // Values are small and random-looking; decompressing a block on every read cost more
        // than the disk it saved.
        data.set_compression_type(DBCompressionType::None);
        // A bloom filter on the memtables too: most point reads are of keys not in them.
        data.set_memtable_whole_key_filtering(true);
        data.set_memtable_prefix_bloom_ratio(0.1);
        data.set_merge_operator_associative("starling-lww", lww_merge);
        let grace_ms = cfg.tombstone_grace.as_millis() as u64;
        let gate = cfg.purge_gate.clone();
        data.set_compaction_filter("starling-tombstones", move |_level, key, value: &[u8]| {
            match decode_version(value) {
                Ok((v, true))
                    if v.millis().saturating_add(grace_ms) < now_millis()
                        && gate.as_ref().is_none_or(|g| {
                            super::key_token(key).is_some_and(|t| g.may_purge(t, v.millis()))
                        }) =>
                {
                    Decision::Remove
                }
                _ => Decision::Keep,
            }
        });
        // Storing a hint looks up the one kept for its key and target: bloom filters spare the
        // reads of files that cannot hold it.
        let mut hints = Options::default();
        let mut hint_table = BlockBasedOptions::default();
        hint_table.set_bloom_filter(10.0, false);
        hints.set_block_based_table_factory(&hint_table);
        let cfs = vec![
            ColumnFamilyDescriptor::new(CF_DATA, data),
            ColumnFamilyDescriptor::new(CF_HINTS, hints),
            ColumnFamilyDescriptor::new(CF_META, Options::default()),
        ];
        let db = DB::open_cf_descriptors(&db_opts, path, cfs).map_err(engine)?;
        let db = Arc::new(db);
        let mut write_opts = WriteOptions::default();
        write_opts.set_sync(cfg.sync == SyncMode::Always);
        let dirty = Arc::new(AtomicBool::new(false));
        let failed: Arc<OnceLock<String>> = Arc::new(OnceLock::new());
        let wal = Arc::new(Mutex::new(()));
        let syncer = match cfg.sync {
            SyncMode::Always => None,
            SyncMode::Periodic(every) => {
                let stop = Arc::new(AtomicBool::new(false));
                let (dirty, stop2, failed2) = (dirty.clone(), stop.clone(), failed.clone());
                let mut logs = WalFiles::new(path.to_path_buf());
                let handle = std::thread::Builder::new()
                    .name("wal-sync".into())
                    .spawn(move || {
                        while !stop2.load(Ordering::Relaxed) {
                            // Unparked early when the store closes (it syncs the log itself).
                            std::thread::park_timeout(every);
                            if stop2.load(Ordering::Relaxed) {
                                break;
                            }
                            if failed2.get().is_none() && dirty.swap(false, Ordering::AcqRel) {
                                if let Err(e) = logs.sync() {
                                    // What the failed fsync covered may be gone from the page
                                    // cache: nothing may be acknowledged on top of it.
                                    fail(&failed2, format!("WAL fsync: {e}"));
                                }
                            }
                        }
                    })
                    .map_err(|e| {
                        StorageError::Engine(format!("cannot start WAL sync thread: {e}"))
                    })?;
                Some((stop, handle))
            }
        };
        let versions = if cfg.version_cache == 0 {
            None
        } else {
            let cf =
                db.cf_handle(CF_DATA).ok_or_else(|| StorageError::Engine("no data CF".into()))?;
            let mut it = db.raw_iterator_cf(cf);
            it.seek_to_first();
            let empty = !it.valid();
            it.status().map_err(engine)?;
            Some(VersionCache::new(cfg.version_cache, empty, cfg.tombstone_grace))
        };
        let store = RocksStorage {
            db,
            write_opts,
            syncer: Mutex::new(syncer),
            dirty,
            versions,
            apply_lock: Mutex::new(()),
            hints_lock: Mutex::new(()),
            failed,
            wal,
            segments: Arc::new(starling_merkle::Segments::new(cfg.segment_bits)),
        };
        store.migrate_hints()?;
        Ok(store)
    }

    /// Rewrites hints stored in the format before [`HINT_FORMAT_NOW`] (`target ‖ hlc ‖ token ‖
    /// key`) as `target ‖ token ‖ key`, keeping the newest version per target and key, then
    /// records the format in `meta`. Runs once; a rewrite cut short (a crash) goes on at the next
    /// open: a key's form says which format it is in (its 8 bytes before the key are the key's
    /// token, a blake3 hash, at offset 16 in the current format and 24 in the old one). A hint
    /// whose key or value cannot be read is dropped and counted in the log. Returns how many old
    /// hints were rewritten and how many were dropped.
    fn migrate_hints(&self) -> Result<(u64, u64), StorageError> {
        match self.db.get_cf(self.cf(CF_META)?, HINT_FORMAT).map_err(engine)? {
            Some(f) if f == HINT_FORMAT_NOW => return Ok((0, 0)),
            Some(f) => {
                return Err(StorageError::Engine(format!(
                    "hints are stored in format {:?}, which this version of Starling cannot read",
                    String::from_utf8_lossy(&f)
                )))
            }
            None => {}
        }
        let cf = self.cf(CF_HINTS)?;
        let (mut rewritten, mut dropped) = (0u64, 0u64);
        let mut old_keys: Vec<Vec<u8>> = Vec::new();
        let mut hints: Vec<(NodeId, Record)> = Vec::new();
        let mut bytes = 0usize;
        // An iterator reads one snapshot: the hints rewritten meanwhile are not seen again.
        let mut it = self.db.raw_iterator_cf(cf);
        it.seek_to_first();
        while it.valid() {
            let (Some(k), Some(v)) = (it.key(), it.value()) else { break };
            if !is_current_hint_key(k) {
                old_keys.push(k.to_vec());
                bytes += k.len() + v.len();
                match old_hint_key(k).map(|(t, key)| decode_value(key, v).map(|r| (t, r))) {
                    Some(Ok(hint)) => hints.push(hint),
                    _ => dropped += 1,
                }
                if old_keys.len() >= MIGRATE_BATCH || bytes >= MIGRATE_BATCH_BYTES {
                    rewritten += hints.len() as u64;
                    self.rewrite_hints(cf, &mut old_keys, &mut hints)?;
                    bytes = 0;
                }
            }
            it.next();
        }
        it.status().map_err(engine)?;
        drop(it);
        rewritten += hints.len() as u64;
        self.rewrite_hints(cf, &mut old_keys, &mut hints)?;
        self.put_meta(HINT_FORMAT, HINT_FORMAT_NOW)?;
        if rewritten > 0 || dropped > 0 {
            tracing::info!(rewritten, dropped, "hints rewritten: one per target and key");
        }
        if dropped > 0 {
            tracing::warn!(
                dropped,
                "unreadable hints dropped; anti-entropy repairs their replicas"
            );
        }
        Ok((rewritten, dropped))
    }

    /// One write batch of the hint rewrite: deletes `old_keys`, stores `hints` (last write wins
    /// per target and key, against what earlier batches stored too), and empties both.
    fn rewrite_hints(
        &self,
        cf: &ColumnFamily,
        old_keys: &mut Vec<Vec<u8>>,
        hints: &mut Vec<(NodeId, Record)>,
    ) -> Result<(), StorageError> {
        if old_keys.is_empty() {
            return Ok(());
        }
        let mut batch = WriteBatch::default();
        // Deletions first: in one batch, a later put of the same key wins.
        for k in old_keys.drain(..) {
            batch.delete_cf(cf, k);
        }
        self.stage_hints(cf, hints, &mut batch)?;
        hints.clear();
        self.write(batch)
    }

    /// Adds to `batch` the puts of those `hints` newer than the hint kept for their target and
    /// key (stored, or earlier in `hints`), and says what each does. Call under `hints_lock`
    /// (or before the store is shared), and write the batch before letting it go.
    fn stage_hints(
        &self,
        cf: &ColumnFamily,
        hints: &[(NodeId, Record)],
        batch: &mut WriteBatch,
    ) -> Result<Vec<HintPut>, StorageError> {
        let keys: Vec<Vec<u8>> = hints.iter().map(|(t, r)| hint_key(*t, &r.key)).collect();
        let values: Vec<Vec<u8>> =
            hints.iter().map(|(_, r)| encode_value(r.version, r.value.as_deref())).collect();
        let stored: Vec<Option<DBPinnableSlice>> = self
            .db
            .batched_multi_get_cf(cf, &keys, false)
            .into_iter()
            .collect::<Result<_, _>>()
            .map_err(engine)?;
        // What each key holds once the puts staged so far are written.
        let mut staged: HashMap<&[u8], &[u8]> = HashMap::new();
        let mut out = Vec::with_capacity(hints.len());
        for ((k, v), stored) in keys.iter().zip(&values).zip(&stored) {
            let now = staged.get(k.as_slice()).copied().or(stored.as_deref());
            let put = hint_put(k, now, v);
            if put != HintPut::Kept {
                batch.put_cf(cf, k, v);
                staged.insert(k, v);
            }
            out.push(put);
        }
        Ok(out)
    }

    fn cf(&self, name: &str) -> Result<&ColumnFamily, StorageError> {
        self.db
            .cf_handle(name)
            .ok_or_else(|| StorageError::Engine(format!("no column family {name}")))
    }

    /// [`Storage::apply_checked`]; `check` empty checks nothing. Returns, besides, each record's
    /// token (its anti-entropy segment), from the one hash that also gives its storage key.
    fn apply_records(
        &self,
        records: &[Record],
        check: &[bool],
    ) -> Result<(Vec<Option<Version>>, Vec<starling_ring::Token>), StorageError> {
        let cf = self.cf(CF_DATA)?;
        let checks = |i: usize| check.get(i).copied().unwrap_or(false);
        let mut batch = WriteBatch::default();
        let mut tokens = Vec::with_capacity(records.len());
        let Some(cache) = &self.versions else {
            let newer = super::newer_held(self, records, check);
            for r in records {
                let (key, _, token) = keyed(&r.key);
                batch.merge_cf(cf, key, encode_value(r.version, r.value.as_deref()));
                tokens.push(token);
            }
            self.write(batch)?;
            return Ok((newer, tokens));
        };
        let _guard = lock(&self.apply_lock);
        // What each key of this batch will hold once it is written: `Some((version, tombstone))`,
        // or `None` when it was merged without knowing what was stored.
        let mut after: HashMap<KeyHash, Option<(Version, bool)>> =
            HashMap::with_capacity(records.len());
        let mut newer = Vec::with_capacity(records.len());
        // Every key's hash first, touching its cache set: the sets' memory arrives while the
        // next keys are hashed, instead of one fetch at a time in the loop below.
        let keys: Vec<(Vec<u8>, KeyHash)> = records
            .iter()
            .map(|r| {
                let (key, hash, token) = keyed(&r.key);
                cache.touch(hash);
                tokens.push(token);
                (key, hash)
            })
            .collect();
        let mut value = Vec::new();
        for (i, (r, (key, hash))) in records.iter().zip(keys).enumerate() {
            let known: Option<Known> = match after.get(&hash) {
                Some(k) => k.map(|(v, _)| Some(v)),
                None => cache
                    .get(hash)
                    .or_else(|| {
                        // Bloom filters and memtables only, no disk read: "surely absent" or "maybe".
                        (!self.db.key_may_exist_cf(cf, &key)).then_some(None)
                    })
                    // A write that asks what it lost to reads the stored version. Under the
                    // apply lock, with no record of this key earlier in the batch, that is what
                    // the key holds until this batch is written.
                    .or_else(|| checks(i).then(|| self.stored_version(cf, &key)).flatten()),
            };
            newer.push(match known {
                Some(Some(stored)) if checks(i) && stored > r.version => Some(stored),
                _ => None,
            });
            encode_value_into(&mut value, r.version, r.value.as_deref());
            match known {
                // The stored version is at least as new: last write wins, nothing to write.
                Some(Some(stored)) if stored >= r.version => {}
                Some(_) => {
                    batch.put_cf(cf, key, &value);
                    after.insert(hash, Some((r.version, r.value.is_none())));
                }
                None => {
                    batch.merge_cf(cf, key, &value);
                    after.insert(hash, None);
                }
            }
        }
        self.write(batch)?;
        for (hash, known) in after {
            match known {
                Some((v, tombstone)) => cache.set(hash, Some(v), tombstone),
                None => cache.forget(hash),
            }
            cache.bump(hash);
        }
        Ok((newer, tokens))
    }

    /// What the key stored at `data_key` holds, read from RocksDB: `Some(None)` nothing,
    /// `None` when it cannot be told (a read error, a record that does not decode: such a
    /// record holds nothing that can win, and a merge keeps whichever is readable).
    fn stored_version(&self, cf: &ColumnFamily, data_key: &[u8]) -> Option<Known> {
        match self.db.get_pinned_cf(cf, data_key) {
            Ok(None) => Some(None),
            Ok(Some(v)) => decode_version(&v).ok().map(|(version, _)| Some(version)),
            Err(_) => None,
        }
    }

    fn write(&self, batch: WriteBatch) -> Result<(), StorageError> {
        self.write_with(batch, &self.write_opts)
    }

    /// An iterator over the data of one piece of a range (`range_pieces`), at its first record.
    fn piece_iter(
        &self,
        cf: &ColumnFamily,
        start: Option<starling_ring::Token>,
        end: starling_ring::Token,
    ) -> rocksdb::DBRawIterator<'_> {
        let (lower, upper) = token_bounds(start, end);
        let mut opts = ReadOptions::default();
        if let Some(u) = upper {
            opts.set_iterate_upper_bound(u);
        }
        let mut it = self.db.raw_iterator_cf_opt(cf, opts);
        it.seek(&lower);
        it
    }

    /// Every write goes through here. The first failure (a full disk, an I/O error) fails the
    /// store: later writes are refused without touching RocksDB, whose log writer is not to be
    /// used again after an error, and the WAL is no longer synced. Reads go on. Cassandra's
    /// `disk_failure_policy: stop` does the same for the node as a whole.
    fn write_with(&self, batch: WriteBatch, opts: &WriteOptions) -> Result<(), StorageError> {
        let _wal = lock(&self.wal);
        if let Some(why) = self.failed.get() {
            return Err(StorageError::Failed(why.clone()));
        }
        match self.db.write_opt(batch, opts) {
            Ok(()) => {
                self.dirty.store(true, Ordering::Release);
                Ok(())
            }
            Err(e) => {
                let why = format!("write: {e}");
                fail(&self.failed, why.clone());
                Err(StorageError::Failed(why))
            }
        }
    }

    /// Compacts everything now (tests: tombstone expiry; benchmarks: steady-state memory).
    ///
    /// Data is compacted twice: writes are merge operands, and RocksDB does not run the
    /// compaction filter on the value a compaction merges them into, so an expired tombstone
    /// written as a merge is only dropped by the next compaction of its file.
    pub fn compact(&self) -> Result<(), StorageError> {
        for name in [CF_DATA, CF_DATA, CF_HINTS] {
            self.db.compact_range_cf(self.cf(name)?, None::<&[u8]>, None::<&[u8]>);
        }
        Ok(())
    }
}

impl Drop for RocksStorage {
    fn drop(&mut self) {
        let syncer = self.syncer.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some((stop, handle)) = syncer {
            stop.store(true, Ordering::Relaxed);
            handle.thread().unpark();
            let _ = handle.join();
        }
        let _wal = lock(&self.wal);
        if self.failed.get().is_none() {
            let _ = self.db.flush_wal(true);
        }
    }
}

impl Storage for RocksStorage {
    fn apply(&self, records: &[Record]) -> Result<(), StorageError> {
        self.apply_checked(records, &[]).map(drop)
    }

    fn apply_checked(
        &self,
        records: &[Record],
        check: &[bool],
    ) -> Result<Vec<Option<Version>>, StorageError> {
        let (newer, tokens) = self.apply_records(records, check)?;
        for token in tokens {
            self.segments.touched(token);
        }
        Ok(newer)
    }

    fn segments(&self) -> &Arc<starling_merkle::Segments> {
        &self.segments
    }

    fn get(&self, key: &[u8]) -> Result<Option<Record>, StorageError> {
        Ok(self.get_many(&[key])?.pop().flatten())
    }

    fn get_many(&self, keys: &[&[u8]]) -> Result<Vec<Option<Record>>, StorageError> {
        let cf = self.cf(CF_DATA)?;
        // Each key's storage key and, with a cache, its stripe epoch before the read: the cache is
        // filled with what was read only if no write to the stripe landed since (see
        // `versions.rs`). One blake3 hash per key gives both the storage key and the cache index.
        let mut data_keys: Vec<Vec<u8>> = Vec::with_capacity(keys.len());
        let mut before: Vec<(KeyHash, u64)> = Vec::new();
        for k in keys {
            match &self.versions {
                Some(cache) => {
                    let (data_key, hash, _) = keyed(k);
                    data_keys.push(data_key);
                    before.push((hash, cache.epoch(hash)));
                }
                None => data_keys.push(data_key(k)),
            }
        }
        let mut out = Vec::with_capacity(keys.len());
        if let ([key], [data_key]) = (keys, &data_keys[..]) {
            out.push(self.db.get_pinned_cf(cf, data_key).map_err(engine).and_then(|v| {
                v.map(|v| decode_value(key, &v).map_err(|e| corrupt(CF_DATA, key, e))).transpose()
            })?);
        } else {
            let found = self.db.batched_multi_get_cf(cf, &data_keys, false);
            for (k, r) in keys.iter().zip(found) {
                out.push(match r.map_err(engine)? {
                    None => None,
                    Some(v) => Some(decode_value(k, &v).map_err(|e| corrupt(CF_DATA, k, e))?),
                });
            }
        }
        #[cfg(test)]
        if let Some(hook) = race_tests::BETWEEN_READ_AND_FILL.with(|h| h.borrow_mut().take()) {
            hook();
        }
        if let Some(cache) = &self.versions {
            // Never wait for a writer (it may be in an fsync): no lock, no fill.
            let guard = match self.apply_lock.try_lock() {
                Ok(g) => Some(g),
                Err(std::sync::TryLockError::Poisoned(e)) => Some(e.into_inner()),
                Err(std::sync::TryLockError::WouldBlock) => None,
            };
            if guard.is_some() {
                for ((hash, epoch), record) in before.into_iter().zip(&out) {
                    if cache.epoch(hash) == epoch {
                        let tombstone = record.as_ref().is_some_and(|r| r.value.is_none());
                        cache.set(hash, record.as_ref().map(|r| r.version), tombstone);
                    }
                }
            }
        }
        Ok(out)
    }

    fn cached_versions(&self, keys: &[&[u8]]) -> Option<Vec<Option<Version>>> {
        let cache = self.versions.as_ref()?;
        keys.iter().map(|k| cache.get(key_hash(k))).collect()
    }

    fn versions(&self, keys: &[&[u8]]) -> Result<Vec<Option<Version>>, StorageError> {
        let Some(cache) = &self.versions else {
            return Ok(self.get_many(keys)?.into_iter().map(|r| r.map(|r| r.version)).collect());
        };
        let mut out = Vec::with_capacity(keys.len());
        let mut missing = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            out.push(cache.get(key_hash(k)).unwrap_or_else(|| {
                missing.push(i);
                None
            }));
        }
        if !missing.is_empty() {
            let ks: Vec<&[u8]> = missing.iter().map(|&i| keys[i]).collect();
            for (i, r) in missing.into_iter().zip(self.get_many(&ks)?) {
                out[i] = r.map(|r| r.version);
            }
        }
        Ok(out)
    }

    fn scan(
        &self,
        range: Range,
        cursor: Option<&[u8]>,
        limit: usize,
    ) -> Result<ScanPage, StorageError> {
        let cf = self.cf(CF_DATA)?;
        let mut page = ScanPage::default();
        let mut bytes = 0usize;
        for (start, end) in range_pieces(range) {
            let (lower, upper) = token_bounds(start, end);
            let mut opts = ReadOptions::default();
            if let Some(u) = &upper {
                if cursor.is_some_and(|c| c >= u.as_slice()) {
                    continue;
                }
                opts.set_iterate_upper_bound(u.clone());
            }
            let mut it = self.db.raw_iterator_cf_opt(cf, opts);
            match cursor {
                Some(c) if c >= lower.as_slice() => {
                    it.seek(c);
                    if it.key() == Some(c) {
                        it.next();
                    }
                }
                _ => it.seek(&lower),
            }
            while it.valid() {
                let (Some(k), Some(v)) = (it.key(), it.value()) else { break };
                if !super::page_push(&mut page, &mut bytes, limit, k, v)? {
                    return Ok(page);
                }
                it.next();
            }
            it.status().map_err(engine)?;
        }
        Ok(page)
    }

    fn put_hints(&self, hints: &[(NodeId, Record)]) -> Result<Vec<HintPut>, StorageError> {
        let cf = self.cf(CF_HINTS)?;
        let _guard = lock(&self.hints_lock);
        let mut batch = WriteBatch::default();
        let out = self.stage_hints(cf, hints, &mut batch)?;
        if !batch.is_empty() {
            self.write(batch)?;
        }
        Ok(out)
    }

    fn hints_for(&self, target: NodeId, limit: usize) -> Result<Vec<Hint>, StorageError> {
        let cf = self.cf(CF_HINTS)?;
        let prefix = target.to_be_bytes();
        let (mut out, mut bytes) = (Vec::new(), 0);
        let it = self.db.iterator_cf(cf, IteratorMode::From(&prefix, Direction::Forward));
        for item in it {
            let (k, v) = item.map_err(engine)?;
            if !k.starts_with(&prefix)
                || !super::hint_page_push(&mut out, &mut bytes, limit, target, &k, &v)?
            {
                break;
            }
        }
        Ok(out)
    }

    fn hint_targets(&self) -> Result<Vec<(NodeId, usize)>, StorageError> {
        let cf = self.cf(CF_HINTS)?;
        let keys = self.db.iterator_cf(cf, IteratorMode::Start).map(|item| item.map(|(k, _)| k));
        super::count_hint_targets(keys).map_err(engine)
    }

    fn hint_bytes(&self) -> Result<Vec<(NodeId, u64)>, StorageError> {
        let cf = self.cf(CF_HINTS)?;
        super::hint_bytes_of(self.db.iterator_cf(cf, IteratorMode::Start)).map_err(engine)
    }

    fn drop_range(&self, range: Range, go_on: &dyn Fn() -> bool) -> Result<u64, StorageError> {
        let cf = self.cf(CF_DATA)?;
        // A range already dropped (a cleanup run again) is found empty without the apply lock,
        // so writes do not wait while the iterator skips the deletes of the last run.
        let mut held = false;
        for (start, end) in range_pieces(range) {
            let it = self.piece_iter(cf, start, end);
            it.status().map_err(engine)?;
            if it.valid() {
                held = true;
                break;
            }
        }
        if !held {
            return Ok(0);
        }
        // Under the apply lock: the version cache forgets each key as it is deleted, so a later
        // write of an older version (the range streamed back one day) is stored, not dropped on
        // the word of a cache that remembers what was deleted.
        let _guard = lock(&self.apply_lock);
        let mut n = 0u64;
        for (start, end) in range_pieces(range) {
            let mut it = self.piece_iter(cf, start, end);
            let mut batch = WriteBatch::default();
            let mut in_batch = 0;
            while it.valid() {
                let Some(k) = it.key() else { break };
                batch.delete_cf(cf, k);
                if let (Some(cache), Some(user)) = (&self.versions, super::user_key(k)) {
                    let hash = key_hash(user);
                    cache.set(hash, None, false);
                    cache.bump(hash);
                }
                in_batch += 1;
                if in_batch == MIGRATE_BATCH {
                    if !go_on() {
                        return Ok(n);
                    }
                    self.write(std::mem::take(&mut batch))?;
                    n += in_batch as u64;
                    in_batch = 0;
                }
                it.next();
            }
            it.status().map_err(engine)?;
            if !go_on() {
                return Ok(n);
            }
            self.write(batch)?;
            n += in_batch as u64;
        }
        self.segments.touch_all();
        Ok(n)
    }

    fn drop_hints_for(&self, target: NodeId) -> Result<(), StorageError> {
        let cf = self.cf(CF_HINTS)?;
        let from = target.to_be_bytes().to_vec();
        let mut batch = WriteBatch::default();
        let _guard = lock(&self.hints_lock);
        match target.0.checked_add(1) {
            Some(next) => batch.delete_range_cf(cf, from, next.to_be_bytes().to_vec()),
            None => batch.delete_range_cf(cf, from, vec![0xff; 17]),
        }
        self.write(batch)
    }

    fn delete_hints(&self, hints: &[(Vec<u8>, Version)]) -> Result<Vec<bool>, StorageError> {
        let cf = self.cf(CF_HINTS)?;
        let _guard = lock(&self.hints_lock);
        let stored = self.db.batched_multi_get_cf(cf, hints.iter().map(|(id, _)| id), false);
        let mut removed: HashSet<&[u8]> = HashSet::new();
        let mut batch = WriteBatch::default();
        let mut out = Vec::with_capacity(hints.len());
        for ((id, version), stored) in hints.iter().zip(stored) {
            let delivered = stored.map_err(engine)?.is_some_and(|v| hint_is(&v, *version))
                && removed.insert(id);
            if delivered {
                batch.delete_cf(cf, id);
            }
            out.push(delivered);
        }
        if !batch.is_empty() {
            self.write(batch)?;
        }
        Ok(out)
    }

    fn get_meta(&self, name: &str) -> Result<Option<Vec<u8>>, StorageError> {
        self.db.get_cf(self.cf(CF_META)?, name).map_err(engine)
    }

    fn put_meta(&self, name: &str, value: &[u8]) -> Result<(), StorageError> {
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(CF_META)?, name, value);
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        self.write_with(batch, &opts)
    }

    fn version_cache(&self) -> Option<(u64, u64)> {
        self.versions.as_ref().map(VersionCache::usage)
    }

    fn failure(&self) -> Option<String> {
        self.failed.get().cloned()
    }

    fn sync_all(&self) -> Result<(), StorageError> {
        let _wal = lock(&self.wal);
        if let Some(why) = self.failed.get() {
            return Err(StorageError::Engine(format!("the store failed earlier: {why}")));
        }
        self.db.flush_wal(true).map_err(engine)
    }

    fn approximate_keys(&self) -> u64 {
        self.cf(CF_DATA)
            .ok()
            .and_then(|cf| self.db.property_int_value_cf(cf, "rocksdb.estimate-num-keys").ok())
            .flatten()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod wal_sync_tests {
    use super::*;
    use crate::storage::Storage;
    use std::io::Write;

    fn append(path: &Path, bytes: &[u8]) {
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
        f.write_all(bytes).unwrap();
    }

    #[test]
    fn the_wal_sync_syncs_the_logs_that_grew_and_each_new_directory_entry() {
        let dir = tempfile::tempdir().unwrap();
        let mut logs = WalFiles::new(dir.path().to_path_buf());
        assert!(logs.sync().is_err(), "no log file: nothing would be synced");
        append(&dir.path().join("000001.log"), b"one");
        append(&dir.path().join("MANIFEST-000002"), b"not a log");
        append(&dir.path().join("000003.sst"), b"not a log either");
        assert_eq!(logs.sync().unwrap(), WalSynced { files: 1, directory: true });
        assert_eq!(logs.sync().unwrap(), WalSynced { files: 0, directory: false });
        append(&dir.path().join("000001.log"), b"more");
        assert_eq!(logs.sync().unwrap(), WalSynced { files: 1, directory: false });
        append(&dir.path().join("000004.log"), b"next log");
        assert_eq!(logs.sync().unwrap(), WalSynced { files: 1, directory: true });
        std::fs::remove_file(dir.path().join("000001.log")).unwrap();
        assert_eq!(logs.sync().unwrap(), WalSynced { files: 0, directory: false });
        assert_eq!(logs.open.len(), 1);
    }

    #[test]
    fn the_wal_sync_finds_rocksdbs_own_log() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = RocksConfig {
            sync: SyncMode::Periodic(Duration::from_secs(3600)),
            ..RocksConfig::default()
        };
        let store = RocksStorage::open(dir.path(), &cfg).unwrap();
        let record = Record {
            key: b"k".to_vec(),
            version: Version { ts: 1 << 16, node: NodeId(1) },
            value: Some(b"v".to_vec()),
        };
        store.apply(&[record]).unwrap();
        let mut logs = WalFiles::new(dir.path().to_path_buf());
        let synced = logs.sync().unwrap();
        assert!(synced.files >= 1 && synced.directory, "{synced:?}");
    }
}

#[cfg(test)]
mod race_tests {
    use std::cell::RefCell;

    use super::*;
    use crate::storage::Storage;

    thread_local! {
        /// Runs once in `get_many`, between its RocksDB read and its cache fill.
        pub(super) static BETWEEN_READ_AND_FILL: RefCell<Option<Box<dyn FnOnce()>>> =
            const { RefCell::new(None) };
    }

    fn record(key: &[u8], ts: u64) -> Record {
        Record {
            key: key.to_vec(),
            version: Version { ts, node: NodeId(7) },
            value: Some(format!("v{ts}").into_bytes()),
        }
    }

    /// A read that finds an old version, while a newer write lands before it can fill the cache,
    /// must leave the cache describing the newer write: otherwise digests would report the old
    /// version, and a write older than the newer one would be stored over it as a put.
    #[test]
    fn a_read_overtaken_by_a_write_leaves_the_cache_describing_the_write() {
        let dir = tempfile::tempdir().expect("tempdir");
        let st = Arc::new(RocksStorage::open(dir.path(), &RocksConfig::default()).expect("open"));
        let key = b"raced";
        st.apply(&[record(key, 100)]).expect("first write");
        let writer = st.clone();
        BETWEEN_READ_AND_FILL.with(|h| {
            *h.borrow_mut() = Some(Box::new(move || {
                writer.apply(&[record(key, 300)]).expect("write during the read");
            }))
        });
        let read = st.get_many(&[&key[..]]).expect("read");
        assert_eq!(read[0].as_ref().map(|r| r.version.ts), Some(100), "read before the write");
        assert!(BETWEEN_READ_AND_FILL.with(|h| h.borrow().is_none()), "the hook ran");

        let versions = st.versions(&[&key[..]]).expect("versions");
        assert_eq!(versions[0].map(|v| v.ts), Some(300), "the cache must show the newer write");
        // Older than what is stored, newer than what the read saw: last write wins keeps 300.
        st.apply(&[record(key, 200)]).expect("older write");
        let now = st.get(key).expect("get").expect("stored");
        assert_eq!(now.version.ts, 300, "an older write replaced a newer one");
        assert_eq!(now.value.as_deref(), Some(&b"v300"[..]));
    }
}

#[cfg(test)]
mod hint_format_tests {
    use super::*;

    fn record(key: &[u8], ts: u64, value: Option<&[u8]>) -> Record {
        Record {
            key: key.to_vec(),
            version: Version { ts, node: NodeId(7) },
            value: value.map(<[u8]>::to_vec),
        }
    }

    /// A hint key as stores wrote them before one hint per target and key: `target ‖ hlc ‖
    /// token ‖ key`.
    fn old_key(target: NodeId, r: &Record) -> Vec<u8> {
        let mut k = target.to_be_bytes().to_vec();
        k.extend_from_slice(&r.version.ts.to_be_bytes());
        k.extend_from_slice(&data_key(&r.key));
        k
    }

    /// Writes hints in the old format, as a store written before it, with no format marker.
    fn put_old(st: &RocksStorage, hints: &[(NodeId, Record)], raw: &[(Vec<u8>, Vec<u8>)]) {
        let cf = st.cf(CF_HINTS).expect("cf");
        st.db.delete_cf(st.cf(CF_META).expect("meta"), HINT_FORMAT).expect("unmark");
        for (t, r) in hints {
            st.db
                .put_cf(cf, old_key(*t, r), encode_value(r.version, r.value.as_deref()))
                .expect("put");
        }
        for (k, v) in raw {
            st.db.put_cf(cf, k, v).expect("put raw");
        }
    }

    fn records(st: &RocksStorage, target: NodeId) -> Vec<Record> {
        st.hints_for(target, 100).expect("hints").into_iter().map(|h| h.record).collect()
    }

    /// Hints of the old format (several per key, keyed by time) are rewritten when the store is
    /// opened: one per target and key, the newest; unreadable ones are dropped without a panic;
    /// hints already in the new format (a rewrite cut short) are kept, newest version winning.
    #[test]
    fn old_format_hints_are_rewritten_one_per_target_and_key_on_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db");
        let cfg = RocksConfig::default();
        let (a, b) = (NodeId(1), NodeId(2));
        let hot = [30, 10, 50, 20].map(|ts| record(b"hot", ts, Some(format!("v{ts}").as_bytes())));
        let cold = record(b"cold", 5, None);
        let warm_new = record(b"warm", 70, Some(b"new format, older"));
        let warm_old = record(b"warm", 80, Some(b"old format, newer"));
        let for_b = record(b"hot", 15, Some(b"for b"));
        let for_b_new = record(b"hot", 40, Some(b"for b, new format, newer"));
        {
            let st = RocksStorage::open(&path, &cfg).expect("open");
            let marker = st.get_meta(HINT_FORMAT).expect("meta");
            assert_eq!(marker.as_deref(), Some(HINT_FORMAT_NOW), "a new store is current");
            // Already rewritten before a crash cut the rewrite short.
            st.put_hints(&[(a, warm_new.clone()), (b, for_b_new.clone())]).expect("put");
            let mut old: Vec<(NodeId, Record)> = hot.iter().map(|r| (a, r.clone())).collect();
            old.extend([(a, cold.clone()), (a, warm_old.clone()), (b, for_b)]);
            let wrong_token = [&a.to_be_bytes()[..], &[0; 8], &[1; 8], b"k"].concat();
            let garbage = old_key(a, &record(b"garbage", 1, None));
            let unreadable = vec![
                (b"short".to_vec(), encode_value(Version { ts: 1, node: NodeId(1) }, None)),
                (wrong_token, encode_value(Version { ts: 1, node: NodeId(1) }, Some(b"x"))),
                (garbage, vec![0xff; 3]),
            ];
            put_old(&st, &old, &unreadable);
            assert_eq!(st.get_meta(HINT_FORMAT).expect("meta"), None);
        }
        let st = RocksStorage::open(&path, &cfg).expect("reopen");
        let marker = st.get_meta(HINT_FORMAT).expect("meta");
        assert_eq!(marker.as_deref(), Some(HINT_FORMAT_NOW), "marked once rewritten");
        let mut for_a = vec![hot[2].clone(), cold.clone(), warm_old.clone()];
        for_a.sort_by_key(|r| data_key(&r.key));
        assert_eq!(records(&st, a), for_a, "the newest per key, old and new formats merged");
        assert_eq!(records(&st, b), vec![for_b_new.clone()]);
        assert_eq!(st.hint_targets().expect("targets"), vec![(a, 3), (b, 1)]);
        let size = |rs: &[Record]| rs.iter().map(super::super::hint_size).sum::<u64>();
        assert_eq!(
            st.hint_bytes().expect("bytes"),
            vec![(a, size(&for_a)), (b, size(&[for_b_new]))]
        );
        let cf = st.cf(CF_HINTS).expect("cf");
        for item in st.db.iterator_cf(cf, IteratorMode::Start) {
            let (k, _) = item.expect("read");
            assert!(is_current_hint_key(&k), "left in the old format: {k:02x?}");
        }
        // A newer hint replaces a rewritten one, and the delivered-version check applies to it.
        let newer = record(b"hot", 60, Some(b"v60"));
        let put = st.put_hints(&[(a, newer.clone())]).expect("put");
        assert_eq!(put, vec![HintPut::Replaced { bytes: super::super::hint_size(&hot[2]) }]);

        // The rewrite says what it did, and runs only while the marker is missing.
        put_old(&st, &[(a, record(b"hot", 55, Some(b"older")))], &[(b"tiny".to_vec(), vec![])]);
        assert_eq!(st.migrate_hints().expect("rewrite"), (1, 1));
        assert_eq!(st.migrate_hints().expect("again"), (0, 0));
        let hot_now: Vec<Record> =
            records(&st, a).into_iter().filter(|r| r.key == b"hot").collect();
        assert_eq!(hot_now, vec![newer], "an older rewritten hint replaced a newer one");
    }

    /// A marker of a format this version does not know fails the open with a clear error.
    #[test]
    fn an_unknown_hint_format_fails_the_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db");
        RocksStorage::open(&path, &RocksConfig::default())
            .expect("open")
            .put_meta(HINT_FORMAT, b"3")
            .expect("meta");
        let err = RocksStorage::open(&path, &RocksConfig::default()).expect_err("unknown format");
        assert!(err.to_string().contains("hints are stored in format \"3\""), "{err}");
    }
}
