//! Consumer groups' committed offsets in the metadata service, fenced by the group's claim:
//! the driver of [`starling_mq::fence`] (the protocol and why it is safe are there). Native and
//! Kafka groups of one name share one record.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use starling_meta::{MetaError, Op, OpResult};
use starling_mq::fence::{
    group_path, Claimant, Committed, FenceError, Held, Job, Next, OffsetKey, Outcome, Written,
    GROUPS_PATH,
};
use starling_wire::meta::ReadKind;

use crate::meta::Meta;
use crate::transport::Transport;

/// The groups' records this node holds a claim on.
pub struct GroupOffsets<T> {
    meta: Meta<T>,
    me: Claimant,
    /// Per group: the record held (`None`: not claimed), behind a lock held across a whole job
    /// (one fetch or commit of a group at a time, in order).
    held: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<Held>>>>>,
}

impl<T> std::fmt::Debug for GroupOffsets<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupOffsets").field("me", &self.me).finish()
    }
}

impl<T: Transport> GroupOffsets<T> {
    /// `instance`: this process's random instance (a restarted node claims anew).
    pub fn new(meta: Meta<T>, node: u128, instance: u64) -> GroupOffsets<T> {
        GroupOffsets { meta, me: Claimant { node, instance }, held: Mutex::new(HashMap::new()) }
    }

    /// The committed offsets of `keys`, in order (`None`: nothing committed).
    pub async fn fetch(
        &self,
        group: &str,
        keys: Vec<OffsetKey>,
    ) -> Result<Vec<Option<Committed>>, FenceError> {
        let slot = self.slot(group);
        let mut held = slot.lock().await;
        match self.run(group, &mut held, Job::fetch(group, self.me, keys)).await? {
            Outcome::Fetched(v) => Ok(v),
            Outcome::Committed => Err(FenceError::Unavailable("a commit answered a fetch".into())),
        }
    }

    /// Commits offsets, all or none. `check` runs once this group's earlier fetches and commits
    /// are done (under the group's lock): it validates the committing member against the
    /// group's state as it is then (not as it was when the request came in, which a fence in
    /// between may have dropped) and gives the commits, or refuses.
    pub async fn commit<E>(
        &self,
        group: &str,
        check: impl FnOnce() -> Result<Vec<(OffsetKey, Committed)>, E>,
    ) -> Result<Result<(), FenceError>, E> {
        let slot = self.slot(group);
        let mut held = slot.lock().await;
        let commits = check()?;
        let job = Job::commit(group, self.me, commits);
        Ok(self.run(group, &mut held, job).await.map(|_| ()))
    }

    fn slot(&self, group: &str) -> Arc<tokio::sync::Mutex<Option<Held>>> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.entry(group.to_string()).or_default().clone()
    }

    async fn run(
        &self,
        group: &str,
        held: &mut Option<Held>,
        mut job: Job,
    ) -> Result<Outcome, FenceError> {
        let path = group_path(group);
        let mut next = job.start(held);
        loop {
            next = match next {
                Next::Read { again } => {
                    if again {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    let found = match self.meta.read_local(&path, ReadKind::Data).await {
                        Ok(Ok(a)) => Some((a.stat.map_or(0, |s| s.version), a.data)),
                        Ok(Err(MetaError::NoNode(_))) => None,
                        Ok(Err(e)) => return Err(FenceError::Unavailable(e.to_string())),
                        Err(e) => return Err(FenceError::Unavailable(e.message)),
                    };
                    job.on_read(held, found.as_ref().map(|(v, d)| (*v, d.as_slice())))
                }
                Next::Write { version, data } => {
                    let w = self.write(&path, version, data).await;
                    job.on_written(held, w)
                }
                Next::Done(r) => return r,
            };
        }
    }

    /// A conditional set (`Some(version)`) or a create with its parents (`None`).
    async fn write(&self, path: &str, version: Option<u32>, data: Vec<u8>) -> Written {
        let op = match version {
            Some(v) => Op::SetData { path: path.to_string(), data, version: Some(v) },
            None => {
                let parents = [starling_meta::RESERVED, GROUPS_PATH];
                if let Err(e) = self.meta.create_parents(&parents).await {
                    return Written::Unavailable(e.message);
                }
                Op::Create { path: path.to_string(), data, ephemeral: false, sequential: false }
            }
        };
        let w = match self.meta.write_internal(vec![op], false).await {
            Ok(w) => w,
            Err(e) if e.unknown => return Written::Unknown(e.message),
            Err(e) => return Written::Unavailable(e.message),
        };
        match w.results.into_iter().next() {
            Some(OpResult::Set(stat)) | Some(OpResult::Created { stat, .. }) => {
                Written::Ok(stat.version)
            }
            Some(OpResult::Failed(
                MetaError::BadVersion { .. } | MetaError::NodeExists(_) | MetaError::NoNode(_),
            )) => Written::Conflict,
            Some(OpResult::Failed(e)) => Written::Refused(e.to_string()),
            other => Written::Refused(format!("unexpected answer {other:?}")),
        }
    }
}
