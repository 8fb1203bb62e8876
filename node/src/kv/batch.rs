//! Per-peer batching of replica requests. A coordinator handles many client requests at once; the
//! replica writes, reads and digest reads they send to one peer during one scheduler pass travel
//! as **one** `ReplicaWrite` / `ReplicaReadMany` / `ReplicaVersions` request, so the peer decodes
//! one frame, applies one write batch (or makes one multi-get) and answers once. The first request queued for a peer spawns a flush task that yields
//! once (letting every request ready in this pass queue its part) and then sends the batch.
//! Batches are cut at [`MAX_BATCH_BYTES`] so a frame never nears its size limit.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use starling_wire::{
    Key, ReadAnswer, Record, ReplicaRead, ReplicaReadMany, ReplicaVersions, ReplicaWrite, Version,
    MAX_BATCH_BYTES,
};
use tokio::sync::oneshot;
use tracing::debug;

use crate::transport::{CallError, Transport};

/// `None`: the write failed; `Some(newer)`: stored, `newer` the version the replica already held
/// if it was newer.
type WriteItem = (Record, oneshot::Sender<Option<Option<Version>>>);
type WriteQueue = Vec<WriteItem>;
/// What a replica answered for one key of a read.
#[derive(Debug, Clone)]
pub(crate) enum Got {
    /// Its record (`None`: it stores nothing for the key).
    Record(Option<Record>),
    /// It holds the key but cannot read it (a corrupt record).
    Unreadable,
}

/// `None`: the read failed; `Some(answer)` otherwise.
type ReadItem = (Vec<u8>, oneshot::Sender<Option<Got>>);
type ReadQueue = Vec<ReadItem>;
/// `None`: the digest read failed; `Some(version or None)` otherwise.
type VersionItem = (Vec<u8>, oneshot::Sender<Option<Option<Version>>>);
type VersionQueue = Vec<VersionItem>;
/// Keys per read request (keys are at most 1 KiB, so far from any frame limit; the replica cuts
/// a read answer itself when the values would be too large).
const READ_CHUNK: usize = 256;

/// One kind of queued request, per peer.
struct Queues<Q>(Mutex<HashMap<SocketAddr, Vec<Q>>>);

impl<Q> Queues<Q> {
    fn new() -> Self {
        Queues(Mutex::new(HashMap::new()))
    }

    /// Queues `item` for `addr`; true if it is the first one (the caller schedules the flush).
    fn push(&self, addr: SocketAddr, item: Q) -> bool {
        let mut q = lock(&self.0);
        let v = q.entry(addr).or_default();
        v.push(item);
        v.len() == 1
    }

    fn take(&self, addr: SocketAddr) -> Vec<Q> {
        lock(&self.0).remove(&addr).unwrap_or_default()
    }
}

/// Queues of replica requests per peer.
pub(crate) struct PeerBatcher<T> {
    transport: Arc<T>,
    timeout: Duration,
    writes: Queues<WriteItem>,
    reads: Queues<ReadItem>,
    versions: Queues<VersionItem>,
}

fn lock<V>(m: &Mutex<V>) -> MutexGuard<'_, V> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn record_bytes(r: &Record) -> usize {
    r.key.len() + r.value.as_ref().map_or(0, Vec::len) + 48
}

impl<T: Transport> PeerBatcher<T> {
    pub(crate) fn new(transport: Arc<T>, timeout: Duration) -> Self {
        PeerBatcher {
            transport,
            timeout,
            writes: Queues::new(),
            reads: Queues::new(),
            versions: Queues::new(),
        }
    }

    /// Runs `flush` after every request ready in this scheduler pass has queued its part.
    fn schedule<F, Fut>(self: &Arc<Self>, flush: F)
    where
        F: FnOnce(Arc<Self>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let me = self.clone();
        tokio::spawn(async move {
            tokio::task::yield_now().await;
            flush(me).await;
        });
    }

    /// Sends `record` to the replica at `addr` in the next batch: `Some(newer)` once it
    /// acknowledged (`newer`: the newer version it already held, if so), `None` if it failed.
    pub(crate) async fn write(
        self: &Arc<Self>,
        addr: SocketAddr,
        record: Record,
    ) -> Option<Option<Version>> {
        let (tx, rx) = oneshot::channel();
        if self.writes.push(addr, (record, tx)) {
            self.schedule(move |me| async move {
                let batch = me.writes.take(addr);
                me.flush_writes(addr, batch).await;
            });
        }
        rx.await.ok().flatten()
    }

    async fn flush_writes(&self, addr: SocketAddr, mut batch: WriteQueue) {
        while !batch.is_empty() {
            let mut bytes = 0;
            let mut n = 0;
            while n < batch.len()
                && (n == 0 || bytes + record_bytes(&batch[n].0) <= MAX_BATCH_BYTES)
            {
                bytes += record_bytes(&batch[n].0);
                n += 1;
            }
            let rest = batch.split_off(n);
            let (records, waiters): (Vec<Record>, Vec<_>) = batch.into_iter().unzip();
            let n = records.len();
            let answered = self.transport.call_within(addr, ReplicaWrite(records), self.timeout);
            let answers = per_key(addr, "writes", n, answered.await);
            for (w, a) in waiters.into_iter().zip(answers) {
                let _ = w.send(a);
            }
            batch = rest;
        }
    }

    /// The replica at `addr`'s record of `key` (`None` if the read failed).
    pub(crate) async fn read(self: &Arc<Self>, addr: SocketAddr, key: Vec<u8>) -> Option<Got> {
        let (tx, rx) = oneshot::channel();
        if self.reads.push(addr, (key, tx)) {
            self.schedule(move |me| async move {
                let batch = me.reads.take(addr);
                me.flush_reads(addr, batch).await;
            });
        }
        rx.await.ok().flatten()
    }

    /// The version the replica at `addr` stores for `key` (`None` if the digest read failed).
    pub(crate) async fn version(
        self: &Arc<Self>,
        addr: SocketAddr,
        key: Vec<u8>,
    ) -> Option<Option<Version>> {
        let (tx, rx) = oneshot::channel();
        if self.versions.push(addr, (key, tx)) {
            self.schedule(move |me| async move {
                let batch = me.versions.take(addr);
                me.flush_versions(addr, batch).await;
            });
        }
        rx.await.ok().flatten()
    }

    async fn flush_versions(&self, addr: SocketAddr, batch: VersionQueue) {
        let mut batch = batch.into_iter().peekable();
        while batch.peek().is_some() {
            let chunk: VersionQueue = batch.by_ref().take(READ_CHUNK).collect();
            let (keys, waiters): (Vec<Vec<u8>>, Vec<_>) = chunk.into_iter().unzip();
            let n = keys.len();
            let req = ReplicaVersions(keys.into_iter().map(Key).collect());
            let answered = self.transport.call_within(addr, req, self.timeout).await;
            let answers = per_key(addr, "digest reads", n, answered);
            for (w, a) in waiters.into_iter().zip(answers) {
                let _ = w.send(a);
            }
        }
    }

    async fn flush_reads(&self, addr: SocketAddr, batch: ReadQueue) {
        let mut batch = batch.into_iter().peekable();
        while batch.peek().is_some() {
            let chunk: ReadQueue = batch.by_ref().take(READ_CHUNK).collect();
            let (keys, waiters): (Vec<Vec<u8>>, Vec<_>) = chunk.into_iter().unzip();
            let answered = if keys.len() == 1 {
                let one = ReplicaRead(keys[0].clone());
                self.transport.call_within(addr, one, self.timeout).await.map(|a| vec![a])
            } else {
                let many = ReplicaReadMany(keys.iter().cloned().map(Key).collect());
                self.transport.call_within(addr, many, self.timeout).await
            };
            let answers: Vec<Option<Got>> = match answered {
                Ok(list) if list.len() == keys.len() => {
                    let mut out = Vec::with_capacity(list.len());
                    for (answer, key) in list.into_iter().zip(&keys) {
                        out.push(match answer {
                            ReadAnswer::TooLarge => self.read_one(addr, key.clone()).await,
                            other => got(addr, key, other),
                        });
                    }
                    out
                }
                Ok(list) => {
                    debug!(peer = %addr, sent = keys.len(), answers = list.len(), "replica answered reads with the wrong count");
                    vec![None; keys.len()]
                }
                Err(e) => {
                    debug!(peer = %addr, error = %e, "replica reads failed");
                    vec![None; keys.len()]
                }
            };
            for (w, a) in waiters.into_iter().zip(answers) {
                let _ = w.send(a);
            }
        }
    }

    async fn read_one(&self, addr: SocketAddr, key: Vec<u8>) -> Option<Got> {
        match self.transport.call_within(addr, ReplicaRead(key.clone()), self.timeout).await {
            Ok(ReadAnswer::TooLarge) => None,
            Ok(answer) => got(addr, &key, answer),
            Err(_) => None,
        }
    }
}

/// One answer per key of a batched call of `n` keys, `None` for each when the call failed or
/// answered with the wrong count.
fn per_key<T: Clone>(
    addr: SocketAddr,
    what: &str,
    n: usize,
    answered: Result<Vec<T>, CallError>,
) -> Vec<Option<T>> {
    match answered {
        Ok(list) if list.len() == n => list.into_iter().map(Some).collect(),
        Ok(list) => {
            debug!(peer = %addr, sent = n, answers = list.len(), "replica answered {what} with the wrong count");
            vec![None; n]
        }
        Err(e) => {
            debug!(peer = %addr, error = %e, "replica {what} failed");
            vec![None; n]
        }
    }
}

/// A replica's answer for `key` (`None`: a failed read, such as a record of another key).
fn got(addr: SocketAddr, key: &[u8], answer: ReadAnswer) -> Option<Got> {
    match answer {
        ReadAnswer::Found(r) if r.key != key => {
            debug!(peer = %addr, "replica answered a read with another key's record");
            None
        }
        ReadAnswer::Found(r) => Some(Got::Record(Some(r))),
        ReadAnswer::Missing => Some(Got::Record(None)),
        ReadAnswer::TooLarge => None,
        ReadAnswer::Unreadable(why) => {
            debug!(peer = %addr, why = %why, "replica cannot read a key");
            Some(Got::Unreadable)
        }
    }
}

/// The replica side of [`ReplicaReadMany`]: answers in order, cutting values once the
/// answer reaches [`MAX_BATCH_BYTES`].
pub(crate) fn answer_reads(records: Vec<Option<Record>>) -> Vec<ReadAnswer> {
    let mut bytes = 0;
    records
        .into_iter()
        .map(|r| match r {
            None => ReadAnswer::Missing,
            Some(r) => {
                let size = record_bytes(&r);
                if bytes + size > MAX_BATCH_BYTES && bytes > 0 {
                    ReadAnswer::TooLarge
                } else {
                    bytes += size;
                    ReadAnswer::Found(r)
                }
            }
        })
        .collect()
}
