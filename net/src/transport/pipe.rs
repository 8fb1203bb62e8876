//! Pipelined frames on one byte stream, independent of QUIC: a client half ([`ClientPipe`]) and
//! a server half ([`serve_stream`]). Both transports use them, QUIC streams and in-memory duplex
//! pipes alike, so the in-memory transport exercises the same framing, limits and coalescing.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use starling_wire::{
    encode_one_way, encode_request, encode_response, ErrorCode, FrameDecoder, FrameError,
    FrameKind, Request, Response,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{oneshot, Notify, Semaphore};
use tokio::time::{timeout_at, Instant};

use super::{PeerInfo, Service, TransportConfig, TransportError};

/// Request id of a response that concerns the whole stream rather than one request: the server
/// sends an `Error` with this id before closing a stream it cannot parse. Clients never use it.
pub const SERVICE_ERROR_ID: u64 = 0;

/// Bytes asked of the stream per read; a read returns whatever has arrived, up to this.
const READ_CHUNK: usize = 64 * 1024;

/// An error and its sources, `": "`-joined: quinn's `connection lost` is only useful with the
/// reason beneath it (a TLS alert, an idle timeout, the peer closing).
fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// Locks a mutex, ignoring poisoning: every critical section here leaves the data consistent.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Frames waiting for the stream's writer. Producers append encoded frames; the writer takes the
/// whole buffer at once, which is what coalesces many frames into one write.
#[derive(Debug, Default)]
struct WriteQueue {
    state: Mutex<QueueState>,
    /// Wakes the writer after a push or a close (`notify_one` keeps a permit if it is busy).
    wake_writer: Notify,
    /// Wakes a reader that paused because the queue was over its limit.
    drained: Notify,
}

#[derive(Debug, Default)]
struct QueueState {
    buf: Vec<u8>,
    closed: bool,
}

impl WriteQueue {
    /// Appends one frame via `encode`; returns false if the queue is closed.
    fn push(
        &self,
        encode: impl FnOnce(&mut Vec<u8>) -> Result<(), FrameError>,
    ) -> Result<bool, FrameError> {
        let mut st = lock(&self.state);
        if st.closed {
            return Ok(false);
        }
        encode(&mut st.buf)?;
        drop(st);
        self.wake_writer.notify_one();
        Ok(true)
    }

    fn queued(&self) -> usize {
        lock(&self.state).buf.len()
    }

    /// No more frames; the writer sends what is queued, then shuts the stream down.
    fn close(&self) {
        lock(&self.state).closed = true;
        self.wake_writer.notify_one();
    }

    /// Writes until closed and empty; `Err` carries the write error.
    async fn run_writer<W: AsyncWrite + Unpin>(&self, w: &mut W) -> Result<(), std::io::Error> {
        let mut out = Vec::new();
        loop {
            let closed = {
                let mut st = lock(&self.state);
                std::mem::swap(&mut st.buf, &mut out);
                st.closed
            };
            if out.is_empty() {
                if closed {
                    return w.shutdown().await;
                }
                self.wake_writer.notified().await;
                continue;
            }
            w.write_all(&out).await?;
            out.clear();
            self.drained.notify_one();
        }
    }
}

type Waiter = oneshot::Sender<Result<Response, TransportError>>;

/// State shared by a [`ClientPipe`] handle and its task.
#[derive(Debug)]
struct PipeShared {
    peer: SocketAddr,
    queue: WriteQueue,
    /// Requests waiting for a response, by id. `None` once the pipe is dead; the check and the
    /// insert happen under this lock so no waiter is added after the pipe failed them all.
    pending: Mutex<Option<HashMap<u64, Waiter>>>,
    dead: AtomicBool,
}

impl PipeShared {
    fn fail_all(&self, reason: &str) {
        self.dead.store(true, Ordering::Release);
        self.queue.close();
        let waiters = lock(&self.pending).take();
        for (_, tx) in waiters.into_iter().flatten() {
            let _ = tx.send(Err(TransportError::ConnectionLost {
                peer: self.peer,
                reason: reason.to_string(),
            }));
        }
    }

    fn complete(&self, id: u64, result: Result<Response, TransportError>) {
        let waiter = lock(&self.pending).as_mut().and_then(|p| p.remove(&id));
        // None: the request timed out and its waiter left; the late response is dropped.
        if let Some(tx) = waiter {
            let _ = tx.send(result);
        }
    }
}

/// The client half of a pipelined stream: sends requests, matches responses by id.
/// Dropping the last handle closes the stream.
#[derive(Debug)]
pub(crate) struct ClientPipe {
    shared: Arc<PipeShared>,
    next_id: AtomicU64,
    in_flight: Semaphore,
    max_queued_bytes: usize,
}

impl Drop for ClientPipe {
    fn drop(&mut self) {
        self.shared.queue.close();
    }
}

impl ClientPipe {
    /// Starts the pipe's task (reader and writer of `r`/`w`) on the current runtime.
    pub(crate) fn spawn<R, W>(peer: SocketAddr, r: R, w: W, config: &TransportConfig) -> Arc<Self>
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let shared = Arc::new(PipeShared {
            peer,
            queue: WriteQueue::default(),
            pending: Mutex::new(Some(HashMap::new())),
            dead: AtomicBool::new(false),
        });
        tokio::spawn(client_task(shared.clone(), r, w));
        Arc::new(ClientPipe {
            shared,
            next_id: AtomicU64::new(SERVICE_ERROR_ID + 1),
            in_flight: Semaphore::new(config.max_in_flight_per_peer.max(1)),
            max_queued_bytes: config.max_queued_bytes,
        })
    }

    pub(crate) fn is_alive(&self) -> bool {
        !self.shared.dead.load(Ordering::Acquire)
    }

    /// Sends a request and waits for its response until `deadline`.
    pub(crate) async fn request(
        &self,
        req: &Request,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<Response, TransportError> {
        let peer = self.shared.peer;
        let timed_out = || TransportError::Timeout { peer, timeout };
        let _permit = match timeout_at(deadline, self.in_flight.acquire()).await {
            Ok(Ok(p)) => p,
            Ok(Err(_)) => return Err(TransportError::Closed),
            Err(_) => return Err(timed_out()),
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        match lock(&self.shared.pending).as_mut() {
            Some(p) => p.insert(id, tx),
            None => return Err(self.lost()),
        };
        let pushed = self.shared.queue.push(|buf| encode_request(buf, id, req));
        if !matches!(pushed, Ok(true)) {
            self.forget(id);
            return Err(match pushed {
                Err(source) => TransportError::Frame { peer, source },
                _ => self.lost(),
            });
        }
        match timeout_at(deadline, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(self.lost()),
            Err(_) => {
                self.forget(id);
                Err(timed_out())
            }
        }
    }

    /// Queues a one-way frame.
    pub(crate) fn send_one_way(&self, msg: &Request) -> Result<(), TransportError> {
        let peer = self.shared.peer;
        if self.shared.queue.queued() > self.max_queued_bytes {
            return Err(TransportError::Overloaded { peer });
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        match self.shared.queue.push(|buf| encode_one_way(buf, id, msg)) {
            Ok(true) => Ok(()),
            Ok(false) => Err(self.lost()),
            Err(source) => Err(TransportError::Frame { peer, source }),
        }
    }

    fn forget(&self, id: u64) {
        if let Some(p) = lock(&self.shared.pending).as_mut() {
            p.remove(&id);
        }
    }

    fn lost(&self) -> TransportError {
        TransportError::ConnectionLost { peer: self.shared.peer, reason: "stream closed".into() }
    }
}

/// Reader and writer of one client stream, in one task so that ending one ends both.
async fn client_task<R, W>(shared: Arc<PipeShared>, mut r: R, mut w: W)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let reason = tokio::select! {
        // Reading first: each wake-up handles all that arrived before the writer runs.
        biased;
        reason = client_read(&shared, &mut r) => reason,
        res = shared.queue.run_writer(&mut w) => match res {
            Ok(()) => "closed locally".to_string(),
            Err(e) => format!("write failed: {}", describe(&e)),
        },
    };
    tracing::debug!(peer = %shared.peer, %reason, "request stream ended");
    shared.fail_all(&reason);
}

/// Reads responses until the stream ends or breaks; returns why it stopped.
async fn client_read<R: AsyncRead + Unpin>(shared: &PipeShared, r: &mut R) -> String {
    let peer = shared.peer;
    let mut dec = FrameDecoder::new();
    let mut chunk = vec![0u8; READ_CHUNK];
    loop {
        let n = match r.read(&mut chunk).await {
            Ok(0) => {
                return match dec.finish() {
                    Ok(()) => "stream closed by the peer".into(),
                    Err(e) => e.to_string(),
                }
            }
            Ok(n) => n,
            Err(e) => return format!("read failed: {}", describe(&e)),
        };
        dec.feed(&chunk[..n]);
        loop {
            match dec.decode() {
                Ok(None) => break,
                Ok(Some(frame)) if frame.kind != FrameKind::Response => {
                    return format!(
                        "unexpected {:?} frame {} from the server",
                        frame.kind, frame.id
                    );
                }
                Ok(Some(frame)) => {
                    let result = frame.response();
                    if frame.id == SERVICE_ERROR_ID {
                        return match result {
                            Ok(Response::Error { message, .. }) => {
                                format!("refused by the peer: {message}")
                            }
                            _ => "refused by the peer".into(),
                        };
                    }
                    let result = result.map_err(|source| TransportError::Frame { peer, source });
                    shared.complete(frame.id, result);
                }
                Err(e) if e.is_fatal() => return e.to_string(),
                Err(e) => {
                    if let Some(id) = e.id() {
                        shared.complete(id, Err(TransportError::Frame { peer, source: e }));
                    }
                }
            }
        }
    }
}

/// Serves one incoming stream until the client closes it or sends something unparseable.
///
/// Requests are answered in completion order (ids tell them apart). A frame with a readable
/// header but a bad body gets an `Error` response with its id and the stream goes on; a frame
/// whose header is bad gets an `Error` with [`SERVICE_ERROR_ID`] and the stream is closed.
pub(crate) async fn serve_stream<S, R, W>(
    peer: PeerInfo,
    mut r: R,
    mut w: W,
    service: Arc<S>,
    config: TransportConfig,
) where
    S: Service,
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let queue = WriteQueue::default();
    let outcome = {
        let reading = serve_read(peer, &mut r, &queue, &service, &config);
        let writing = queue.run_writer(&mut w);
        tokio::pin!(reading, writing);
        tokio::select! {
            // Reading first, so every response the input produced is queued before the writer
            // takes the queue: one write per wake-up.
            biased;
            // Reading is done (all responses queued): let the writer flush and shut down.
            reason = &mut reading => {
                queue.close();
                match writing.await {
                    Ok(()) => reason,
                    Err(e) => format!("{reason}; then write failed: {}", describe(&e)),
                }
            }
            res = &mut writing => match res {
                Ok(()) => "closed".to_string(),
                Err(e) => format!("write failed: {}", describe(&e)),
            },
        }
    };
    tracing::debug!(peer = %peer.addr, reason = %outcome, "served stream ended");
}

/// Reads and dispatches requests; returns once no more responses will be queued, and why.
async fn serve_read<S, R>(
    peer: PeerInfo,
    r: &mut R,
    queue: &WriteQueue,
    service: &Arc<S>,
    config: &TransportConfig,
) -> String
where
    S: Service,
    R: AsyncRead + Unpin,
{
    let respond = |id: u64, resp: &Response| {
        let pushed = queue.push(|buf| encode_response(buf, id, resp));
        if let Err(e) = pushed {
            // The handler's response cannot be sent (too large): tell the client why instead.
            let msg = Response::error(ErrorCode::Internal, format!("response not sendable: {e}"));
            let _ = queue.push(|buf| encode_response(buf, id, &msg));
        }
    };
    let mut dec = FrameDecoder::new();
    let mut chunk = vec![0u8; READ_CHUNK];
    let mut handlers = FuturesUnordered::new();
    let mut eof = false;
    loop {
        let full = handlers.len() >= config.max_concurrent_requests_per_stream
            || queue.queued() > config.max_queued_bytes;
        if eof && handlers.is_empty() {
            return match dec.finish() {
                Ok(()) => "finished by the client".into(),
                Err(e) => e.to_string(),
            };
        }
        tokio::select! {
            biased;
            Some(done) = handlers.next(), if !handlers.is_empty() => {
                if let Some((id, resp)) = done {
                    respond(id, &resp);
                }
            }
            _ = queue.drained.notified(), if full && handlers.is_empty() => {}
            read = r.read(&mut chunk), if !eof && !full => {
                let n = match read {
                    Ok(0) => { eof = true; continue; }
                    Ok(n) => n,
                    Err(e) => return format!("read failed: {}", describe(&e)),
                };
                dec.feed(&chunk[..n]);
                loop {
                    let frame = match dec.decode() {
                        Ok(Some(frame)) => frame,
                        Ok(None) => break,
                        Err(e) if e.is_fatal() => {
                            let msg = Response::error(ErrorCode::BadRequest, e.to_string());
                            respond(SERVICE_ERROR_ID, &msg);
                            return format!("unparseable frame: {e}");
                        }
                        Err(e) => {
                            let code = match e {
                                FrameError::TooLarge { .. } => ErrorCode::TooLarge,
                                _ => ErrorCode::BadRequest,
                            };
                            if let Some(id) = e.id() {
                                respond(id, &Response::error(code, e.to_string()));
                            }
                            continue;
                        }
                    };
                    let one_way = frame.kind == FrameKind::OneWay;
                    match frame.request() {
                        Ok(req) => handlers.push(dispatch(service.clone(), peer, frame.id, req, one_way)),
                        Err(e) if one_way => {
                            tracing::debug!(peer = %peer.addr, error = %e, "dropped one-way frame");
                        }
                        Err(e) => respond(frame.id, &Response::error(ErrorCode::BadRequest, e.to_string())),
                    }
                }
            }
        }
    }
}

/// Runs one handler; `None` for one-way messages, which get no response.
async fn dispatch<S: Service>(
    service: Arc<S>,
    peer: PeerInfo,
    id: u64,
    req: Request,
    one_way: bool,
) -> Option<(u64, Response)> {
    if one_way {
        service.one_way(peer, req).await;
        None
    } else {
        Some((id, service.call(peer, req).await))
    }
}
