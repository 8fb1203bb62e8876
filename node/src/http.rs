//! The node's HTTP surface for operators (README, "The status endpoint"): `GET /status` (JSON), `GET /metrics`
//! (Prometheus / OpenMetrics text), `GET /ready` (200 once the node is converged and `normal` on
//! the ring, 503 before: a readiness probe), `GET /history` (the last minutes: operations,
//! latency and every member's view, sampled every second) and `GET /`, a self-contained page
//! that polls `/status` and `/history` and shows the ring, the load and the cluster converging
//! live.
//!
//! Read-only by construction: every route is a `GET` that reads the latest [`Status`] snapshot
//! from a `watch` channel the gossip driver publishes to, or the history a task of [`serve`]
//! samples from it, so a slow or hostile HTTP client can neither change the node nor hold a lock
//! the driver needs.
//!
//! ```
//! use std::sync::Arc;
//! use starling_node::http::{self, HttpState, Metrics};
//! use starling_node::status::Status;
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let (_publish, status) = tokio::sync::watch::channel(Arc::new(Status::default()));
//! let state = HttpState { status, metrics: Arc::new(Metrics::new()) };
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
//! // Resolves at once because the shutdown future is ready.
//! http::serve(listener, state, async {}).await.unwrap();
//! # });
//! ```

pub mod history;
mod limit;
mod metrics;

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

pub use self::metrics::{Metrics, CONTENT_TYPE as METRICS_CONTENT_TYPE, MEMBER_STATES};
use crate::status::Status;

/// Most HTTP connections served at once. The page keeps one keep-alive connection per open
/// browser tab and a scraper one more. A new connection at the cap closes the connection that has
/// been idle longest (no request in flight, longest since its last request finished) and takes
/// its place; if every connection has a request in flight, it waits until one closes or becomes
/// idle, and connections after it wait in the kernel backlog instead of costing the node memory
/// and tasks.
pub const MAX_HTTP_CONNECTIONS: usize = 64;

/// How long a connection may take to send a whole request head, counted from when it was
/// accepted or from the end of its previous response. A client that connects and sends nothing,
/// an idle keep-alive connection, and one that sends half a header and stops are all closed then,
/// so clients that hold connections open cannot keep the [`MAX_HTTP_CONNECTIONS`] slots from
/// real ones for longer than this. The live page polls every second, well within it.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The live page: one file with its CSS and JS inline, so it works offline and needs no build.
const INDEX_HTML: &str = include_str!("http/index.html");

/// What the handlers read. Cloned per request; both fields are shared handles.
#[derive(Clone, Debug)]
pub struct HttpState {
    /// The latest snapshot, published by the gossip driver.
    pub status: watch::Receiver<Arc<Status>>,
    /// The node's own measurements, exported next to the snapshot's figures.
    pub metrics: Arc<Metrics>,
}

impl HttpState {
    /// The current snapshot. Clones the `Arc` so the channel's read lock is released at once and
    /// never held while a response is written.
    fn snapshot(&self) -> Arc<Status> {
        Arc::clone(&self.status.borrow())
    }
}

/// The routes; anything else answers 404 (and a non-`GET` on a known path 405).
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/status", get(status))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/history", get(history))
        .with_state(state)
}

/// Serves [`router`] on an already-bound `listener` (tests bind port 0) until `shutdown`
/// resolves, then finishes the requests in flight and returns.
///
/// At most [`MAX_HTTP_CONNECTIONS`] connections are served at once, each closed if it does not
/// send a request head within [`HEADER_READ_TIMEOUT`]; at the cap the longest-idle one is closed
/// to make room for a new one. While it serves, the history of
/// `GET /history` is sampled every [`history::SAMPLE_EVERY`].
pub async fn serve(
    listener: TcpListener,
    state: HttpState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let _sampler = AbortOnDrop(tokio::spawn(sample(state.clone())));
    let mut listener = limit::LimitedListener::new(listener, MAX_HTTP_CONNECTIONS);
    let router = router(state);
    let (stop_tx, stop_rx) = watch::channel(());
    let mut shutdown = pin!(shutdown);
    let mut connections = JoinSet::new();
    loop {
        let io = tokio::select! {
            (io, _) = axum::serve::Listener::accept(&mut listener) => io,
            () = &mut shutdown => break,
        };
        let conn_slot = io.conn();
        let service = {
            let inner = TowerToHyperService::new(router.clone());
            let conn_slot = conn_slot.clone();
            hyper::service::service_fn(move |req| {
                // In flight from the parsed head until the response is ready; hyper then writes
                // it out even if the connection is asked to close.
                let in_flight = conn_slot.request();
                let answer = hyper::service::Service::call(&inner, req);
                async move {
                    let resp = answer.await;
                    drop(in_flight);
                    resp
                }
            })
        };
        let mut stop = stop_rx.clone();
        connections.spawn(async move {
            let mut builder = http1::Builder::new();
            builder.timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
            let mut conn = pin!(builder.serve_connection(TokioIo::new(io), service));
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "http: connection closed");
                    }
                }
                _ = stop.changed() => {
                    // Finishes the response in flight, if any. A connection that has not sent a
                    // request yet waits for one, so the wait is bounded like a header read.
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(HEADER_READ_TIMEOUT, conn).await;
                }
                () = conn_slot.evicted() => {
                    // Idle when chosen: closed at once. A request that arrived since is
                    // answered first (`conn` is not polled here, so none can start meanwhile).
                    if conn_slot.busy() {
                        conn.as_mut().graceful_shutdown();
                        let _ = tokio::time::timeout(HEADER_READ_TIMEOUT, conn).await;
                    }
                }
            }
        });
        // Forget the connections that have ended, so the set holds only open ones.
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    drop(stop_tx);
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// Stops a task when dropped, so the sampler ends with `serve` even if its future is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Adds a sample to the history now and every [`history::SAMPLE_EVERY`], until aborted.
async fn sample(state: HttpState) {
    let mut tick = tokio::time::interval(history::SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        state.metrics.recent.sample(&state.snapshot());
    }
}

async fn index() -> impl IntoResponse {
    ([(header::CACHE_CONTROL, "no-cache")], Html(INDEX_HTML))
}

async fn status(State(state): State<HttpState>) -> Response {
    let snapshot = state.snapshot();
    match serde_json::to_vec(&*snapshot) {
        Ok(body) => fresh(body, "application/json"),
        Err(e) => internal_error(format!("cannot encode status: {e}")),
    }
}

async fn history(State(state): State<HttpState>) -> Response {
    match serde_json::to_vec(&state.metrics.recent.to_json()) {
        Ok(body) => fresh(body, "application/json"),
        Err(e) => internal_error(format!("cannot encode history: {e}")),
    }
}

/// 200 when this node is converged (every member it sees alive agrees on membership and ring)
/// and `normal` on the ring (not joining, leaving, or without tokens); 503 otherwise. The body
/// says which, in one line.
async fn ready(State(state): State<HttpState>) -> Response {
    let snapshot = state.snapshot();
    let ring = snapshot.ring.status.as_deref().unwrap_or("none");
    let ready = snapshot.converged && ring == "normal";
    let body = format!(
        "{} (converged: {}, ring: {ring})\n",
        if ready { "ready" } else { "not ready" },
        snapshot.converged
    );
    let mut resp = fresh(body, "text/plain; charset=utf-8");
    if !ready {
        *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    }
    resp
}

async fn metrics(State(state): State<HttpState>) -> Response {
    match state.metrics.encode(state.snapshot()) {
        Ok(body) => fresh(body, metrics::CONTENT_TYPE),
        Err(e) => internal_error(format!("cannot encode metrics: {e}")),
    }
}

/// A 200 that no cache may keep: both endpoints describe this instant.
fn fresh(body: impl Into<axum::body::Body>, content_type: &'static str) -> Response {
    let mut resp = Response::new(body.into());
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn internal_error(message: String) -> Response {
    tracing::warn!(error = %message, "http: cannot answer");
    (StatusCode::INTERNAL_SERVER_ERROR, message).into_response()
}
