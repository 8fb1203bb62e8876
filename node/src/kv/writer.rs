//! The storage writer: it folds every write queued since its last batch into one storage batch
//! (one RocksDB `WriteBatch`), so concurrent requests share one write (and, in `sync = always`,
//! one fsync: group commit).
//!
//! Two modes, chosen by [`Storage::slow_writes`]:
//! - **Inline** (writes that only reach the write-ahead log): requests queue their records and the
//!   first one schedules a flush task on the same runtime; the task runs after every request that
//!   became ready in the same scheduler pass has queued, then writes them all. No thread hop:
//!   on this machine a cross-thread wake-up per batch cost more than the write itself.
//! - **Thread** (writes that fsync): a dedicated thread drains the queue, so the async runtime
//!   never waits for the disk.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use starling_wire::Record;
use tokio::sync::{mpsc, oneshot};

use crate::storage::Storage;

/// Jobs queued beyond this wait (backpressure on the writers).
const QUEUE: usize = 8192;
/// Most jobs folded into one batch.
const MAX_BATCH: usize = 1024;

type Done = oneshot::Sender<Result<(), String>>;

enum Job {
    Apply(Vec<Record>, Done),
    Hints(Vec<(u128, Record)>, Done),
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Job::Apply(r, _) => write!(f, "Apply({})", r.len()),
            Job::Hints(h, _) => write!(f, "Hints({})", h.len()),
        }
    }
}

struct Inline {
    storage: Arc<dyn Storage>,
    queue: Mutex<Vec<Job>>,
    scheduled: AtomicBool,
}

#[derive(Clone)]
enum Mode {
    Inline(Arc<Inline>),
    Thread(mpsc::Sender<Job>),
}

/// Handle to the writer; cheap to clone.
#[derive(Clone)]
pub struct Writer {
    mode: Mode,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.mode {
            Mode::Inline(_) => "Writer(inline)",
            Mode::Thread(_) => "Writer(thread)",
        })
    }
}

impl Writer {
    /// A writer over `storage`: inline, or on its own thread if the storage's writes are slow.
    /// The thread stops when every handle is dropped.
    pub fn start<S: Storage>(storage: Arc<S>) -> std::io::Result<Writer> {
        if !storage.slow_writes() {
            let storage: Arc<dyn Storage> = storage;
            return Ok(Writer {
                mode: Mode::Inline(Arc::new(Inline {
                    storage,
                    queue: Mutex::new(Vec::new()),
                    scheduled: AtomicBool::new(false),
                })),
            });
        }
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
        Ok(Writer { mode: Mode::Thread(tx) })
    }

    async fn submit(
        &self,
        job: Job,
        rx: oneshot::Receiver<Result<(), String>>,
    ) -> Result<(), String> {
        match &self.mode {
            Mode::Thread(tx) => {
                tx.send(job).await.map_err(|_| "storage writer stopped")?;
            }
            Mode::Inline(inline) => {
                inline.queue.lock().unwrap_or_else(|e| e.into_inner()).push(job);
                if !inline.scheduled.swap(true, Ordering::AcqRel) {
                    let inline = inline.clone();
                    tokio::spawn(async move {
                        // Let every request that is ready in this pass queue its records first.
                        tokio::task::yield_now().await;
                        inline.scheduled.store(false, Ordering::Release);
                        let mut jobs = std::mem::take(
                            &mut *inline.queue.lock().unwrap_or_else(|e| e.into_inner()),
                        );
                        run_batch(&*inline.storage, &mut jobs);
                    });
                }
            }
        }
        rx.await.map_err(|_| "storage writer stopped".to_string())?
    }

    /// Applies records (merged by version); returns once they are in the write-ahead log.
    pub async fn apply(&self, records: Vec<Record>) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        self.submit(Job::Apply(records, tx), rx).await
    }

    /// Stores hints for replicas that did not acknowledge.
    pub async fn put_hints(&self, hints: Vec<(u128, Record)>) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        self.submit(Job::Hints(hints, tx), rx).await
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
