//! A cap on concurrent HTTP connections, and room made at the cap by closing the connection that
//! has been idle longest.
//!
//! Each connection holds a semaphore permit, returned when hyper drops it. At the cap, the
//! listener still accepts the next connection (one, not more: it accepts no other until that one
//! has a permit, so further clients wait in the kernel's backlog rather than each costing the node
//! a task and buffers), and asks the connection with no request in flight whose last request
//! finished longest ago (or that was accepted longest ago, if it has sent none) to close. A page
//! left open in a browser tab or a scraper's kept-alive connection thus never makes a new client
//! wait. If every connection has a request in flight, the new one waits for the first to close or
//! to become idle; the header-read timeout ([`super::HEADER_READ_TIMEOUT`]) bounds how long a
//! client that sends nothing holds a permit anyway.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

#[derive(Debug)]
pub(super) struct LimitedListener {
    inner: TcpListener,
    permits: Arc<Semaphore>,
    table: Arc<Table>,
}

impl LimitedListener {
    pub(super) fn new(inner: TcpListener, max_connections: usize) -> Self {
        Self {
            inner,
            permits: Arc::new(Semaphore::new(max_connections)),
            table: Arc::new(Table::default()),
        }
    }

    /// A permit for a connection just accepted: a free one, else the one the longest-idle
    /// connection returns when it closes, else the first one returned.
    async fn permit(&self) -> OwnedSemaphorePermit {
        loop {
            if let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() {
                return permit;
            }
            // Registered before looking, so a connection that becomes idle after the look
            // still wakes this loop.
            let mut became_idle = pin!(self.table.became_idle.notified());
            became_idle.as_mut().enable();
            self.table.evict_longest_idle();
            tokio::select! {
                permit = Arc::clone(&self.permits).acquire_owned() => {
                    return permit.expect("the connection semaphore is owned here and never closed");
                }
                () = became_idle => {}
            }
        }
    }
}

impl axum::serve::Listener for LimitedListener {
    type Io = LimitedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        // TcpListener's own impl retries (with a pause) on accept errors such as EMFILE.
        let (stream, addr) = axum::serve::Listener::accept(&mut self.inner).await;
        let permit = self.permit().await;
        let conn = self.table.register();
        (LimitedStream { stream, conn, _permit: permit }, addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The open connections: whether each has a request in flight and since when it is idle.
#[derive(Debug, Default)]
struct Table {
    conns: Mutex<HashMap<u64, Entry>>,
    next_id: AtomicU64,
    /// Woken whenever a connection's last request in flight finishes.
    became_idle: Notify,
}

#[derive(Debug)]
struct Entry {
    in_flight: usize,
    /// When its last request finished, or when it was accepted.
    idle_since: Instant,
    /// Asked to close (once).
    evict: Arc<Notify>,
    evicting: bool,
}

impl Table {
    fn register(self: &Arc<Self>) -> Conn {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let evict = Arc::new(Notify::new());
        let entry = Entry {
            in_flight: 0,
            idle_since: Instant::now(),
            evict: evict.clone(),
            evicting: false,
        };
        lock(&self.conns).insert(id, entry);
        Conn { table: Arc::clone(self), id, evict }
    }

    /// Asks the idle connection idle longest to close, unless one is closing already (its
    /// permit is on its way). Returns whether one was asked now.
    fn evict_longest_idle(&self) -> bool {
        let mut conns = lock(&self.conns);
        if conns.values().any(|e| e.evicting) {
            return false;
        }
        let Some(entry) =
            conns.values_mut().filter(|e| e.in_flight == 0).min_by_key(|e| e.idle_since)
        else {
            return false;
        };
        entry.evicting = true;
        // Stored if the connection is not waiting on it right now.
        entry.evict.notify_one();
        tracing::debug!(
            idle_for = ?entry.idle_since.elapsed(),
            "http: at the connection cap; closing the connection idle longest"
        );
        true
    }
}

/// One connection's place in the [`Table`]; cloned into its service to mark requests in flight.
#[derive(Clone, Debug)]
pub(super) struct Conn {
    table: Arc<Table>,
    id: u64,
    evict: Arc<Notify>,
}

impl Conn {
    /// Marks a request in flight until the guard is dropped.
    pub(super) fn request(&self) -> InFlight {
        if let Some(e) = lock(&self.table.conns).get_mut(&self.id) {
            e.in_flight += 1;
        }
        InFlight(self.clone())
    }

    /// Resolves when the listener wants this connection closed to make room.
    pub(super) async fn evicted(&self) {
        self.evict.notified().await;
    }

    /// Whether a request is in flight on this connection now.
    pub(super) fn busy(&self) -> bool {
        lock(&self.table.conns).get(&self.id).is_some_and(|e| e.in_flight > 0)
    }
}

/// A request in flight on a connection ([`Conn::request`]).
#[derive(Debug)]
pub(super) struct InFlight(Conn);

impl Drop for InFlight {
    fn drop(&mut self) {
        let table = &self.0.table;
        let idle = match lock(&table.conns).get_mut(&self.0.id) {
            Some(e) => {
                e.in_flight = e.in_flight.saturating_sub(1);
                if e.in_flight == 0 {
                    e.idle_since = Instant::now();
                }
                e.in_flight == 0
            }
            None => false,
        };
        if idle {
            table.became_idle.notify_waiters();
        }
    }
}

/// A connection holding one of the listener's permits until it is dropped.
#[derive(Debug)]
pub(super) struct LimitedStream {
    stream: TcpStream,
    conn: Conn,
    _permit: OwnedSemaphorePermit,
}

impl LimitedStream {
    /// This connection's place in the listener's table.
    pub(super) fn conn(&self) -> Conn {
        self.conn.clone()
    }
}

impl Drop for LimitedStream {
    fn drop(&mut self) {
        lock(&self.conn.table.conns).remove(&self.conn.id);
    }
}

impl AsyncRead for LimitedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for LimitedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// At the cap a new connection takes the place of the one idle longest; while every
    /// connection has a request in flight it waits, until one becomes idle.
    #[tokio::test]
    async fn a_connection_at_the_cap_closes_the_longest_idle_one() {
        let inner = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = inner.local_addr().expect("addr");
        let mut listener = LimitedListener::new(inner, 2);
        let table = Arc::clone(&listener.table);
        let (accepted, mut next) = tokio::sync::mpsc::unbounded_channel();
        let acceptor = tokio::spawn(async move {
            loop {
                let (stream, _) = axum::serve::Listener::accept(&mut listener).await;
                if accepted.send(stream).is_err() {
                    break;
                }
            }
        });
        let _c1 = TcpStream::connect(addr).await.expect("connect");
        let s1 = next.recv().await.expect("first");
        let _c2 = TcpStream::connect(addr).await.expect("connect");
        let s2 = next.recv().await.expect("second");
        let (conn1, conn2) = (s1.conn(), s2.conn());
        // Both busy: a third connection waits.
        let busy1 = conn1.request();
        let busy2 = conn2.request();
        let _c3 = TcpStream::connect(addr).await.expect("connect");
        let waiting = tokio::time::timeout(Duration::from_millis(300), next.recv()).await;
        assert!(waiting.is_err(), "a connection over the cap while all are busy was served");
        // The second finishes its request first, so it is the one idle longest once the first
        // finishes too: the second is asked to close, not the first.
        drop(busy2);
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(busy1);
        tokio::time::timeout(Duration::from_secs(5), conn2.evicted())
            .await
            .expect("the longest-idle connection is asked to close");
        assert!(
            tokio::time::timeout(Duration::from_millis(100), conn1.evicted()).await.is_err(),
            "only one connection is closed"
        );
        assert!(!table.evict_longest_idle(), "one eviction at a time");
        drop(s2);
        let s3 = tokio::time::timeout(Duration::from_secs(5), next.recv())
            .await
            .expect("the new connection takes the closed one's place")
            .expect("third");
        assert_eq!(lock(&table.conns).len(), 2);
        drop((s1, s3));
        assert!(lock(&table.conns).is_empty());
        acceptor.abort();
    }
}
