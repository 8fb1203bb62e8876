//! The metadata service from a client: typed calls, and a session kept alive in the background.
//!
//! ```no_run
//! use starling_client::{Auth, Client};
//! use starling_client::meta::{MetaSessionHandle, Op};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let client = Client::connect(&["127.0.0.1:7400"], &Auth::Insecure).await?;
//! let session = MetaSessionHandle::open(&client, 10_000).await?;
//! let created = client.meta_write(session.id(), vec![Op::Create {
//!     path: "/workers/w-".into(), data: b"up".to_vec(), ephemeral: true, sequential: true,
//! }], false).await??;
//! println!("{:?}", created.results);
//! session.close().await?; // the ephemeral znode goes with it
//! # Ok(()) }
//! ```

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub use starling_wire::meta::{
    MetaCloseSession, MetaError, MetaOpenSession, MetaPing, MetaRead, MetaReadAnswer, MetaSync,
    MetaWatch, MetaWatched, MetaWrite, MetaWritten, Op, OpResult, ReadKind, Stat, WatchKind,
    WatchedEvent, Zxid,
};

use crate::{Client, Error};

/// How long a client trusts what it learned of the metadata service's leader (writes go to the
/// leader directly; a node that no longer leads forwards them, so a stale answer costs a hop).
pub const META_LEADER_REFRESH: Duration = Duration::from_secs(10);
/// How soon a client asks again when no node it was given was known to lead.
const META_LEADER_RETRY: Duration = Duration::from_secs(1);

impl Client {
    /// One operation, or a `multi` (all or nothing), on behalf of `session` (0: none). Sent to
    /// the leader when it is one of this client's nodes (learned from a node's status, again at
    /// most every [`META_LEADER_REFRESH`]), else to any node, which forwards it to the leader:
    /// either way it is answered once the node asked has applied it. Reads still go to any
    /// node, and see the write ([`Client::meta_read`] waits for the zxid the write returned).
    pub async fn meta_write(
        &self,
        session: u64,
        ops: Vec<Op>,
        multi: bool,
    ) -> Result<Result<MetaWritten, MetaError>, Error> {
        let leader = self.meta_leader().await;
        let call = MetaWrite { session, ops, multi };
        let w = self.call_preferring(leader, call, || self.forget_meta_leader()).await?;
        if let Ok(w) = &w {
            self.saw(w.zxid);
        }
        Ok(w)
    }

    /// The index of the node leading the metadata service, if it is one of this client's nodes,
    /// learned from a node's status when what was learned has expired. One caller learns at a
    /// time: the others meanwhile keep to the leader learned before, if any, else send to any
    /// node.
    async fn meta_leader(&self) -> Option<usize> {
        {
            let mut known = self.inner.meta_leader.lock().unwrap_or_else(|p| p.into_inner());
            let now = tokio::time::Instant::now();
            match *known {
                Some((until, at)) if now < until => return at,
                before => *known = Some((now + META_LEADER_RETRY, before.and_then(|(_, at)| at))),
            }
        }
        let at = match self.call(crate::GetStatus).await {
            Ok(json) => serde_json::from_slice::<crate::Status>(&json).ok().and_then(|s| {
                let leader = s.meta?.leader?;
                let m = s.members.iter().find(|m| m.node_id == leader)?;
                self.node_at(Some(&m.addr))
            }),
            Err(_) => None,
        };
        let good_for = if at.is_some() { META_LEADER_REFRESH } else { META_LEADER_RETRY };
        let mut known = self.inner.meta_leader.lock().unwrap_or_else(|p| p.into_inner());
        *known = Some((tokio::time::Instant::now() + good_for, at));
        at
    }

    fn forget_meta_leader(&self) {
        *self.inner.meta_leader.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Reads a znode from the node asked, once that node has applied everything this client
    /// has seen (so a client never reads back in time, whichever node answers).
    pub async fn meta_read(
        &self,
        path: &str,
        kind: ReadKind,
    ) -> Result<Result<MetaReadAnswer, MetaError>, Error> {
        let after = Zxid(self.inner.meta_seen.load(Ordering::Relaxed));
        let r = self.call(MetaRead { path: path.to_string(), kind, after }).await?;
        if let Ok(a) = &r {
            self.saw(a.zxid);
        }
        Ok(r)
    }

    /// Waits for a change of the znode at `path` after `since` (at most `wait`, up to 4 s per
    /// call: call again with the zxid returned).
    pub async fn meta_watch(
        &self,
        path: &str,
        kind: WatchKind,
        since: Zxid,
        exists: bool,
        wait: Duration,
    ) -> Result<Result<MetaWatched, MetaError>, Error> {
        let wait_ms = wait.min(Duration::from_secs(4)).as_millis() as u32;
        self.call(MetaWatch { path: path.to_string(), kind, since, exists, wait_ms }).await
    }

    /// The highest zxid this client has seen.
    pub fn meta_seen(&self) -> Zxid {
        Zxid(self.inner.meta_seen.load(Ordering::Relaxed))
    }

    fn saw(&self, z: Zxid) {
        self.inner.meta_seen.fetch_max(z.0, Ordering::Relaxed);
    }
}

/// A metadata session pinged in the background every third of its timeout until closed or
/// dropped (then the leader expires it, and its ephemeral znodes go).
#[derive(Debug)]
pub struct MetaSessionHandle {
    client: Client,
    id: u64,
    timeout_ms: u32,
    alive: Arc<AtomicBool>,
    pings_failed: Arc<AtomicU64>,
    pinger: tokio::task::JoinHandle<()>,
}

impl MetaSessionHandle {
    /// Opens a session with this timeout (the node clamps it to 1–60 s).
    pub async fn open(client: &Client, timeout_ms: u32) -> Result<MetaSessionHandle, Error> {
        let s = client
            .call(MetaOpenSession { timeout_ms })
            .await?
            .map_err(|e| Error::BadInput(e.to_string()))?;
        client.saw(s.zxid);
        let alive = Arc::new(AtomicBool::new(true));
        let pings_failed = Arc::new(AtomicU64::new(0));
        let pinger = {
            let (c, alive, failed) = (client.clone(), alive.clone(), pings_failed.clone());
            let (id, every) = (s.session, Duration::from_millis(u64::from(s.timeout_ms) / 3));
            tokio::spawn(async move {
                while alive.load(Ordering::Relaxed) {
                    tokio::time::sleep(every).await;
                    match c.call(MetaPing { session: id }).await {
                        Ok(Ok(_)) => {}
                        _ => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        };
        Ok(MetaSessionHandle {
            client: client.clone(),
            id: s.session,
            timeout_ms: s.timeout_ms,
            alive,
            pings_failed,
            pinger,
        })
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// The negotiated timeout.
    pub fn timeout_ms(&self) -> u32 {
        self.timeout_ms
    }

    /// Pings that failed so far.
    pub fn pings_failed(&self) -> u64 {
        self.pings_failed.load(Ordering::Relaxed)
    }

    /// Closes the session now: its ephemeral znodes go.
    pub async fn close(self) -> Result<(), Error> {
        self.alive.store(false, Ordering::Relaxed);
        self.pinger.abort();
        self.client
            .call(MetaCloseSession { session: self.id })
            .await?
            .map(|w| self.client.saw(w.zxid))
            .map_err(|e| Error::BadInput(e.to_string()))
    }
}

impl Drop for MetaSessionHandle {
    fn drop(&mut self) {
        self.pinger.abort();
    }
}
