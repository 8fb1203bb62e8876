//! A model of what a server keeps on disk, built by applying [`Persist`] operations in order.
//! The simulator keeps one per server across crashes; `starlingd`'s files follow the same rules.

use std::sync::Arc;

use crate::{Entry, Persist, Persisted, Zxid};

/// The durable state of one server.
#[derive(Clone, Debug, Default)]
pub struct MemDisk {
    pub state: Persisted,
    /// Operations applied, and `fsync`s (one per [`MemDisk::apply_all`] with anything in it).
    pub writes: u64,
    pub syncs: u64,
    /// Bumped by every batch that persists a snapshot or resets the log (a leader's SNAP).
    pub snapshot_gen: u64,
}

impl MemDisk {
    /// Applies one batch durably (one fsync).
    pub fn apply_all(&mut self, ops: &[Persist]) {
        if ops.is_empty() {
            return;
        }
        for op in ops {
            apply(&mut self.state, op);
            self.writes += 1;
        }
        if ops.iter().any(|op| matches!(op, Persist::Snapshot { .. } | Persist::ResetLog(_))) {
            self.snapshot_gen += 1;
        }
        self.syncs += 1;
    }

    /// Saves the snapshot of a [`SnapshotJob`](crate::SnapshotJob) taken when the generation
    /// was `gen`: not if a SNAP was persisted since (false); kept if it is newer than the
    /// snapshot held (a restart loads the newest snapshot saved either way).
    pub fn save_snapshot(&mut self, gen: u64, zxid: Zxid, data: Arc<Vec<u8>>) -> bool {
        if gen != self.snapshot_gen {
            return false;
        }
        if self.state.snapshot.as_ref().is_none_or(|(z, _)| *z < zxid) {
            self.state.snapshot = Some((zxid, data));
        }
        self.syncs += 1;
        true
    }

    /// What a server restarted on this disk loads.
    pub fn load(&self) -> Persisted {
        self.state.clone()
    }
}

/// Applies one operation to a persisted state.
pub fn apply(s: &mut Persisted, op: &Persist) {
    match op {
        Persist::AcceptedEpoch { epoch, leader } => {
            s.accepted_epoch = *epoch;
            s.accepted_leader = *leader;
        }
        Persist::CurrentEpoch(e) => s.current_epoch = *e,
        Persist::Append(entries) => s.log.extend(entries.iter().cloned()),
        Persist::TruncateAfter(z) => s.log.retain(|e| e.zxid <= *z),
        Persist::Snapshot { zxid, data } => s.snapshot = Some((*zxid, data.clone())),
        Persist::CompactThrough(z) => {
            s.log.retain(|e| e.zxid > *z);
            s.log_base = s.log_base.max(*z);
        }
        Persist::ResetLog(z) => {
            s.log.clear();
            s.log_base = *z;
        }
    }
}

/// The last zxid of a persisted history.
pub fn last_zxid(s: &Persisted) -> Zxid {
    let snap = s.snapshot.as_ref().map_or(Zxid::ZERO, |(z, _)| *z);
    s.log.last().map_or(Zxid::ZERO, |e: &Entry| e.zxid).max(snap).max(s.log_base)
}
