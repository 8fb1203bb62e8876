//! The storage threads: no RocksDB work runs on the runtime thread that answers the network.
//!
//! A node answers gossip probes, clock probes and every QUIC packet on one runtime thread. If a
//! write waited there for a stalled disk (a RocksDB write stall, a WAL `write()` on a frozen or
//! throttled file system, a cold-cache read), the node would stop answering probes and its
//! peers would mark a healthy node down. So every storage call of the request paths goes to a
//! thread of its own, and the runtime only waits for the answer:
//! - **the writer thread** folds every write queued since its last batch into one storage batch
//!   (one RocksDB `WriteBatch`), so concurrent requests share one write and, in `sync = always`,
//!   one fsync (group commit). Before writing it looks up, for the writes that ask, which keys
//!   already hold a newer version (the answer a replica gives when a write lost to a newer one).
//!   Every hint it is asked to store or delete goes through it too, so those changes, which
//!   compare versions with what is stored (one hint per target and key), run one at a time.
//! - **reader threads** ([`READERS`] of them) run point reads and version look-ups; a read slow
//!   on a cold cache holds up one of them, not the node. Version look-ups that the version cache
//!   answers (memory only, never the disk) are answered at once, without the hop.
//!
//! The hop costs a wake-up per batch, not per request, once requests arrive faster than the
//! threads drain them.

use starling_wire::NodeId;
use std::sync::Arc;

use starling_wire::{Record, Version};
use tokio::sync::{mpsc, oneshot};

use crate::storage::{HintPut, Storage, StorageError};

/// Write jobs queued beyond this wait (backpressure on the writers).
const QUEUE: usize = 8192;
/// Most write jobs folded into one batch.
const MAX_BATCH: usize = 1024;
/// Threads serving reads.
pub const READERS: usize = 2;

type Done<T> = oneshot::Sender<Result<T, String>>;

/// Why a storage call did not run: the storage threads have stopped (the node is stopping).
pub const STOPPED: &str = "storage threads stopped";

enum Job {
    /// Records to apply; with `check`, the answer says for each record the newer version this
    /// node already held for its key, if any.
    Apply { records: Vec<Record>, check: bool, done: Done<Vec<Option<Version>>> },
    /// Hints to store; the answer says what each did ([`Storage::put_hints`]).
    Hints(Vec<(NodeId, Record)>, Done<Vec<HintPut>>),
    /// Delivered hints `(id, version)`; the answer says which were removed
    /// ([`Storage::delete_hints`]).
    DeleteHints(Vec<(Vec<u8>, Version)>, Done<Vec<bool>>),
}

type ReadJob = Box<dyn FnOnce() + Send>;

/// Handle to the storage threads; cheap to clone. The threads stop when every handle is dropped.
pub struct StorageIo<S> {
    storage: Arc<S>,
    writes: mpsc::Sender<Job>,
    reads: crossbeam_channel::Sender<ReadJob>,
}

impl<S> Clone for StorageIo<S> {
    fn clone(&self) -> Self {
        StorageIo {
            storage: self.storage.clone(),
            writes: self.writes.clone(),
            reads: self.reads.clone(),
        }
    }
}

impl<S> std::fmt::Debug for StorageIo<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StorageIo")
    }
}

impl<S: Storage> StorageIo<S> {
    /// Starts the writer and reader threads over `storage`.
    pub fn start(storage: Arc<S>) -> std::io::Result<StorageIo<S>> {
        let (tx, mut rx) = mpsc::channel::<Job>(QUEUE);
        let writer = storage.clone();
        std::thread::Builder::new().name("storage-writer".into()).spawn(move || {
            crate::storage::quiet_store_thread();
            let mut jobs = Vec::with_capacity(MAX_BATCH);
            while let Some(first) = rx.blocking_recv() {
                jobs.push(first);
                while jobs.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(j) => jobs.push(j),
                        Err(_) => break,
                    }
                }
                run_batch(&*writer, &mut jobs);
            }
        })?;
        let (reads, read_rx) = crossbeam_channel::unbounded::<ReadJob>();
        for i in 0..READERS {
            let rx = read_rx.clone();
            std::thread::Builder::new().name(format!("storage-reader-{i}")).spawn(move || {
                crate::storage::quiet_store_thread();
                while let Ok(job) = rx.recv() {
                    job();
                }
            })?;
        }
        Ok(StorageIo { storage, writes: tx, reads })
    }

    /// Runs `f` on the store on a reader thread and returns what it returns.
    pub async fn read<R: Send + 'static>(
        &self,
        f: impl FnOnce(&S) -> R + Send + 'static,
    ) -> Result<R, String> {
        let (tx, rx) = oneshot::channel();
        let storage = self.storage.clone();
        self.reads
            .send(Box::new(move || {
                let _ = tx.send(f(&storage));
            }))
            .map_err(|_| STOPPED.to_string())?;
        rx.await.map_err(|_| STOPPED.to_string())
    }

    /// Point reads of `keys` on a reader thread, each succeeding or failing on its own.
    pub async fn get_each(
        &self,
        keys: Vec<Vec<u8>>,
    ) -> Result<Vec<Result<Option<Record>, StorageError>>, String> {
        self.read(move |s| {
            let keys: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
            s.get_each(&keys)
        })
        .await
    }

    /// The stored version of each key: at once when the version cache knows them all, else
    /// looked up on a reader thread.
    pub async fn versions(
        &self,
        keys: Vec<Vec<u8>>,
    ) -> Result<Result<Vec<Option<Version>>, StorageError>, String> {
        let refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
        if let Some(known) = self.storage.cached_versions(&refs) {
            return Ok(Ok(known));
        }
        self.read(move |s| {
            let keys: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
            s.versions(&keys)
        })
        .await
    }

    async fn submit<T>(
        &self,
        job: Job,
        rx: oneshot::Receiver<Result<T, String>>,
    ) -> Result<T, String> {
        self.writes.send(job).await.map_err(|_| STOPPED.to_string())?;
        rx.await.map_err(|_| STOPPED.to_string())?
    }

    /// Applies records (merged by version); returns once they are in the write-ahead log.
    pub async fn apply(&self, records: Vec<Record>) -> Result<(), String> {
        let (done, rx) = oneshot::channel();
        self.submit(Job::Apply { records, check: false, done }, rx).await.map(drop)
    }

    /// Like [`StorageIo::apply`], and says for each record the newer version this node already
    /// held for its key (the record lost to it), if any.
    pub async fn apply_checked(
        &self,
        records: Vec<Record>,
    ) -> Result<Vec<Option<Version>>, String> {
        let (done, rx) = oneshot::channel();
        self.submit(Job::Apply { records, check: true, done }, rx).await
    }

    /// Stores hints for replicas that did not acknowledge (one per target and key: see
    /// [`Storage::put_hints`]); says what each did.
    pub async fn put_hints(&self, hints: Vec<(NodeId, Record)>) -> Result<Vec<HintPut>, String> {
        let (done, rx) = oneshot::channel();
        self.submit(Job::Hints(hints, done), rx).await
    }

    /// Removes delivered or expired hints, each only if it still has the version given (see
    /// [`Storage::delete_hints`]); says for each whether it was removed.
    pub async fn delete_hints(&self, hints: Vec<(Vec<u8>, Version)>) -> Result<Vec<bool>, String> {
        let (done, rx) = oneshot::channel();
        self.submit(Job::DeleteHints(hints, done), rx).await
    }
}

fn run_batch<S: Storage + ?Sized>(storage: &S, jobs: &mut Vec<Job>) {
    let mut records = Vec::new();
    let mut checks = Vec::new();
    let mut hints = Vec::new();
    let mut deletes = Vec::new();
    // How many records, hints or deletions each job brought, to split the answers.
    let mut counts = Vec::new();
    for j in jobs.iter_mut() {
        match j {
            Job::Apply { records: r, check, .. } => {
                counts.push(r.len());
                checks.resize(checks.len() + r.len(), *check);
                records.append(r);
            }
            Job::Hints(h, _) => {
                counts.push(h.len());
                hints.append(h);
            }
            Job::DeleteHints(d, _) => {
                counts.push(d.len());
                deletes.append(d);
            }
        }
    }
    let data =
        if records.is_empty() { Ok(Vec::new()) } else { storage.apply_checked(&records, &checks) };
    let mut data = data.map(Vec::into_iter).map_err(|e| e.to_string());
    let hinted = if hints.is_empty() { Ok(Vec::new()) } else { storage.put_hints(&hints) };
    let deleted = if deletes.is_empty() { Ok(Vec::new()) } else { storage.delete_hints(&deletes) };
    let mut hinted = hinted.map(Vec::into_iter).map_err(|e| e.to_string());
    let mut deleted = deleted.map(Vec::into_iter).map_err(|e| e.to_string());
    let mut counts = counts.into_iter();
    for j in jobs.drain(..) {
        match j {
            Job::Apply { done, .. } => {
                let n = counts.next().unwrap_or_default();
                let _ = done.send(take(&mut data, n));
            }
            Job::Hints(_, done) => {
                let n = counts.next().unwrap_or_default();
                let _ = done.send(take(&mut hinted, n));
            }
            Job::DeleteHints(_, done) => {
                let n = counts.next().unwrap_or_default();
                let _ = done.send(take(&mut deleted, n));
            }
        }
    }
}

/// The next `n` answers of a batch's (the answers of one job), or the batch's error.
fn take<T>(
    answers: &mut Result<std::vec::IntoIter<T>, String>,
    n: usize,
) -> Result<Vec<T>, String> {
    match answers {
        Ok(it) => Ok(it.by_ref().take(n).collect()),
        Err(e) => Err(e.clone()),
    }
}
