//! A cap on concurrent HTTP connections.
//!
//! This listener takes a semaphore permit *before* it accepts, so at the cap further clients wait
//! in the kernel's backlog rather than each costing the node a task and buffers. The permit rides
//! along with the connection and is returned when hyper drops it, which the header-read timeout
//! ([`super::HEADER_READ_TIMEOUT`]) bounds for a client that sends nothing.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Debug)]
pub(super) struct LimitedListener {
    inner: TcpListener,
    permits: Arc<Semaphore>,
}

impl LimitedListener {
    pub(super) fn new(inner: TcpListener, max_connections: usize) -> Self {
        Self { inner, permits: Arc::new(Semaphore::new(max_connections)) }
    }
}

impl axum::serve::Listener for LimitedListener {
    type Io = LimitedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .expect("the connection semaphore is owned here and never closed");
        // TcpListener's own impl retries (with a pause) on accept errors such as EMFILE.
        let (stream, addr) = axum::serve::Listener::accept(&mut self.inner).await;
        (LimitedStream { stream, _permit: permit }, addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A connection holding one of the listener's permits until it is dropped.
#[derive(Debug)]
pub(super) struct LimitedStream {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
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

    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn request(stream: &mut TcpStream) -> io::Result<String> {
        stream.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await?;
        let mut buf = vec![0; 1024];
        let n = stream.read(&mut buf).await?;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    /// At the cap a new client is not served until a connection closes, then it is.
    #[tokio::test]
    async fn a_connection_over_the_cap_waits_for_a_permit() {
        let inner = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = inner.local_addr().expect("addr");
        let router = axum::Router::new().route("/", get(|| async { "ok" }));
        let server =
            tokio::spawn(async move { axum::serve(LimitedListener::new(inner, 1), router).await });

        let mut first = TcpStream::connect(addr).await.expect("connect first");
        assert!(request(&mut first).await.expect("first").ends_with("ok"));

        let mut second = TcpStream::connect(addr).await.expect("connect second");
        let waiting = tokio::time::timeout(Duration::from_millis(300), request(&mut second)).await;
        assert!(waiting.is_err(), "served over the cap: {waiting:?}");

        drop(first);
        let served = tokio::time::timeout(Duration::from_secs(5), async {
            let mut buf = vec![0; 1024];
            let n = second.read(&mut buf).await?;
            io::Result::Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
        })
        .await
        .expect("served once a permit is free")
        .expect("read");
        assert!(served.ends_with("ok"), "{served}");
        server.abort();
    }
}
