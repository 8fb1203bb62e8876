//! The storage writer: one thread that drains every write queued since its last batch and
//! applies them as one storage batch (one RocksDB `WriteBatch`, one fsync in `sync = always`).
//! Async callers queue a job and await its result; the runtime thread never blocks on disk, and
//! concurrent writers share one batch (group commit).

use std::sync::Arc;

use starling_wire::Record;
use tokio::sync::{mpsc, oneshot};

use crate::storage::Storage;

/// Jobs queued beyond this wait (backpressure on the writers).
const QUEUE: usize = 8192;
/// Most jobs folded into one batch.
const MAX_BATCH: usize = 1024;

enum Job {
    Apply(Vec<Record>, oneshot::Sender<Result<(), String>>),
    Hints(Vec<(u128, Record)>, oneshot::Sender<Result<(), String>>),
}

/// Handle to the writer thread; cheap to clone. The thread stops when every handle is dropped.
#[derive(Debug, Clone)]
pub struct Writer {
    tx: mpsc::Sender<Job>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Job::Apply(r, _) => write!(f, "Apply({})", r.len()),
            Job::Hints(h, _) => write!(f, "Hints({})", h.len()),
        }
    }
}

impl Writer {
    /// Starts the writer thread over `storage`.
    pub fn start<S: Storage>(storage: Arc<S>) -> std::io::Result<Writer> {
        let (tx, mut rx) = mpsc::channel::<Job>(QUEUE);
        std::thread::Builder::new().name("storage-writer".into()).spawn(move || {
            let mut jobs = Vec::with_capacity(MAX_BATCH);
            while let Some(first) = rx.blocking_recv() {
                jobs.push(first);
                while jobs.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(j) => jobs.push(j),
                        Err(_) => break,
                    }
                }
                run_batch(&*storage, &mut jobs);
            }
        })?;
        Ok(Writer { tx })
    }

    /// Applies records (merged by version); returns once they are in the write-ahead log.
    pub async fn apply(&self, records: Vec<Record>) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Job::Apply(records, tx)).await.map_err(|_| "storage writer stopped")?;
        rx.await.map_err(|_| "storage writer stopped".to_string())?
    }

    /// Stores hints for replicas that did not acknowledge.
    pub async fn put_hints(&self, hints: Vec<(u128, Record)>) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Job::Hints(hints, tx)).await.map_err(|_| "storage writer stopped")?;
        rx.await.map_err(|_| "storage writer stopped".to_string())?
    }
}

fn run_batch<S: Storage + ?Sized>(storage: &S, jobs: &mut Vec<Job>) {
    let mut records = Vec::new();
    let mut hints = Vec::new();
    for j in jobs.iter_mut() {
        match j {
            Job::Apply(r, _) => records.append(r),
            Job::Hints(h, _) => hints.append(h),
        }
    }
    let data = if records.is_empty() { Ok(()) } else { storage.apply(&records) };
    let hinted = if hints.is_empty() { Ok(()) } else { storage.put_hints(&hints) };
    for j in jobs.drain(..) {
        match j {
            Job::Apply(_, done) => {
                let _ = done.send(data.as_ref().map_err(ToString::to_string).copied());
            }
            Job::Hints(_, done) => {
                let _ = done.send(hinted.as_ref().map_err(ToString::to_string).copied());
            }
        }
    }
}
