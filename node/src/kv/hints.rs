//! Hinted handoff. A coordinator keeps a write for a replica that was down, failed or timed out
//! (in the `hints` column family, keyed by target) and replays it when gossip shows the target
//! up again. None are stored for a replica down longer than the hint window: past it,
//! anti-entropy repairs the replica (Cassandra's `max_hint_window`). A hint that cannot reach its
//! target any more (older than the window, its target down past it, or gone) is never just
//! dropped: it is handed to a real replica of its key first (applied here if this node is one),
//! so a write whose only other copies were hints on stand-ins of a sloppy quorum survives, and
//! anti-entropy carries it to the target later.
//!
//! Only the newest hint per target and key is kept: a newer write replaces the hint, an older
//! one is not stored, so a key overwritten many times while its replica is down is replayed
//! once. A delivered hint is deleted only if it still has the version delivered: a newer hint
//! that replaced it meanwhile stays for the next pass. Replay goes in key order, not by age
//! (each hint carries its own version, and the replica keeps the newest).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::Duration;

use starling_ring::{NodeId, NodeStatus};
use starling_wire::{Record, ReplicaHint, ReplicaWrite, Version};
use tracing::{debug, info, warn};

use super::{Kv, KvConfig};
use crate::storage::{Hint, HintPut, Storage};
use crate::transport::Transport;

/// Hints sent to a target per request (and at most about
/// [`SCAN_PAGE_BYTES`](crate::storage::SCAN_PAGE_BYTES) of them, so a request of 1 MiB values
/// stays under the 4 MiB frame limit: the storage reads pages by both).
const PAGE: usize = 256;
/// Attempts to hand one page of hints to a node that stays, during a leave.
const HANDOVER_ATTEMPTS: u32 = 20;
/// A leave waits for a hint being stored, so that it is handed over with the others: checking
/// this often ...
const STORE_WAIT: Duration = Duration::from_millis(10);
/// ... this many times (10 s) before the leave fails.
const STORE_WAITS: u32 = 1000;
/// How often targets with hints are checked.
const EVERY: Duration = Duration::from_millis(500);

/// Which targets have hints waiting, how many and how many bytes ([`hint_bytes`] each). Loaded
/// from storage, then kept in step with it: a hint is reserved before it is stored; if it
/// replaces the hint kept for its key and target, the replaced one is taken out, and if an
/// equal or newer one is kept, its own reservation is given back ([`HintPut`]); a delivered or
/// expired hint is taken out only if it was deleted (not when a newer one replaced it
/// meanwhile). So the counts match what is stored, except while a store is under way (its
/// reservation is counted whole). A target stays listed while a store for it is under way, even
/// when a pass found none of its hints stored yet: the next pass replays that hint, and a leave
/// waits for it before handing the hints over. The byte counts enforce the caps
/// (Cassandra's `max_hints_size_per_host`, [`KvConfig::max_hint_bytes_per_target`] and
/// [`KvConfig::max_hint_bytes`]): a hint past either is not kept; the write it carried is left to
/// read repair and anti-entropy, and counted.
#[derive(Debug, Default)]
pub struct HintIndex {
    targets: Mutex<BTreeMap<NodeId, Counts>>,
}

/// One target's entry in the [`HintIndex`].
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    /// Hints kept (and reserved).
    hints: u64,
    /// Their bytes.
    bytes: u64,
    /// Stores of hints under way.
    storing: u64,
}

impl Counts {
    fn take(&mut self, n: u64, bytes: u64) {
        self.hints = self.hints.saturating_sub(n);
        self.bytes = self.bytes.saturating_sub(bytes);
    }
}

/// Room reserved in the [`HintIndex`] for one store of hints.
pub(crate) struct Reservation<'a> {
    index: &'a HintIndex,
    target: NodeId,
    n: u64,
    bytes: u64,
    settled: bool,
}

impl Reservation<'_> {
    /// Settles the reservation of hints of `sizes` ([`hint_bytes`]) by what storing them did: a
    /// hint that replaced an older one takes that one out, a hint not stored (an equal or newer
    /// one is kept) gives back its own.
    pub(crate) fn stored(mut self, sizes: &[u64], puts: &[HintPut]) {
        let (mut n, mut bytes) = (0u64, 0u64);
        for (size, put) in sizes.iter().zip(puts) {
            match put {
                HintPut::Added => {}
                HintPut::Replaced { bytes: old } => {
                    n += 1;
                    bytes += old;
                }
                HintPut::Kept => {
                    n += 1;
                    bytes += size;
                }
            }
        }
        self.settled = true;
        self.index.settle(self.target, n, bytes);
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if !self.settled {
            self.index.settle(self.target, self.n, self.bytes);
        }
    }
}

/// What one hint of `record` counts toward the caps (as stored: key, version, value, target):
/// [`crate::storage::hint_size`], what [`Storage::hint_bytes`] sums too.
pub fn hint_bytes(record: &Record) -> u64 {
    crate::storage::hint_size(record)
}

/// A hint sent to a node: what deleting it needs once that node has it.
struct Sent {
    id: Vec<u8>,
    version: Version,
    bytes: u64,
}

impl Sent {
    fn of(h: &Hint) -> Sent {
        Sent { id: h.id.clone(), version: h.record.version, bytes: hint_bytes(&h.record) }
    }
}

impl HintIndex {
    /// Reads the targets from storage (once, at start).
    pub fn load<S: Storage + ?Sized>(storage: &S) -> Self {
        let mut targets: BTreeMap<NodeId, Counts> = BTreeMap::new();
        match (storage.hint_targets(), storage.hint_bytes()) {
            (Ok(counts), Ok(bytes)) => {
                for (t, n) in counts {
                    targets.entry(t).or_default().hints = n as u64;
                }
                for (t, b) in bytes {
                    targets.entry(t).or_default().bytes = b;
                }
            }
            (Err(e), _) | (_, Err(e)) => warn!(error = %e, "cannot list stored hints"),
        }
        HintIndex { targets: Mutex::new(targets) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<NodeId, Counts>> {
        self.targets.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reserves room for `n` hints of `bytes` for `target`, for one store: `None` (nothing
    /// reserved) if that would pass a cap. The store is then settled by
    /// [`Reservation::stored`]; a reservation dropped unsettled (the store failed or was given
    /// up) gives back what it took.
    pub(crate) fn reserve(
        &self,
        cfg: &KvConfig,
        target: NodeId,
        n: u64,
        bytes: u64,
    ) -> Option<Reservation<'_>> {
        let mut g = self.lock();
        let total: u64 = g.values().map(|c| c.bytes).sum();
        let mine = g.get(&target).map_or(0, |c| c.bytes);
        if mine + bytes > cfg.max_hint_bytes_per_target || total + bytes > cfg.max_hint_bytes {
            return None;
        }
        let c = g.entry(target).or_default();
        c.hints += n;
        c.bytes += bytes;
        c.storing += 1;
        Some(Reservation { index: self, target, n, bytes, settled: false })
    }

    /// Ends one store for `target`, taking out `n` hints of `bytes`.
    fn settle(&self, target: NodeId, n: u64, bytes: u64) {
        let mut g = self.lock();
        if let Some(c) = g.get_mut(&target) {
            c.storing = c.storing.saturating_sub(1);
            c.take(n, bytes);
        }
    }

    fn sub(&self, target: NodeId, n: u64, bytes: u64) {
        let mut g = self.lock();
        if let Some(c) = g.get_mut(&target) {
            c.take(n, bytes);
        }
    }

    /// Bytes of hints kept, all targets together.
    pub fn bytes(&self) -> u64 {
        self.lock().values().map(|c| c.bytes).sum()
    }

    /// Takes `target` out, once a pass found none of its hints stored: false (it stays) while
    /// a store of hints for it is under way.
    fn clear(&self, target: NodeId) -> bool {
        let mut g = self.lock();
        if g.get(&target).is_some_and(|c| c.storing > 0) {
            return false;
        }
        g.remove(&target);
        true
    }

    /// Hints waiting, all targets together.
    pub fn pending(&self) -> u64 {
        self.lock().values().map(|c| c.hints).sum()
    }

    fn targets(&self) -> Vec<NodeId> {
        self.lock().keys().copied().collect()
    }
}

impl<T: Transport, S: Storage> Kv<T, S> {
    /// Replays hints forever (spawn it).
    pub async fn replay_hints(self) {
        loop {
            tokio::time::sleep(EVERY).await;
            for target in self.inner.hints.targets() {
                self.replay_to(target).await;
            }
        }
    }

    /// The next page of `target`'s hints, read on a storage thread.
    async fn hint_page(&self, target: NodeId) -> anyhow::Result<Vec<crate::storage::Hint>> {
        let page = self.inner.io.read(move |s| s.hints_for(target, PAGE)).await;
        Ok(page.map_err(anyhow::Error::msg)??)
    }

    /// A leaving node's hints for other replicas, so that none is lost with it: each target's
    /// hints are delivered to the target if it is up; those still here (the target is down) are
    /// given to a node that stays, which keeps them for the target as a stand-in of a sloppy
    /// quorum would, and are deleted here only once it has them. Hints that have expired, or are
    /// for a member that left or has been down past the hint window, are dropped as in a replay.
    /// Returns how many hints were handed to other nodes; fails when some could not be (the
    /// leave is then aborted, and the hints stay here).
    pub async fn hand_over_hints(&self) -> anyhow::Result<u64> {
        let mut handed = 0u64;
        for target in self.inner.hints.targets() {
            self.replay_to(target).await;
            let (mut attempt, mut waited) = (0, 0);
            loop {
                let page = self.hint_page(target).await?;
                if page.is_empty() {
                    if self.inner.hints.clear(target) {
                        break;
                    }
                    // A hint for the target is being stored: it leaves with the others.
                    waited += 1;
                    if waited > STORE_WAITS {
                        anyhow::bail!("a hint for {target} is still being stored");
                    }
                    tokio::time::sleep(STORE_WAIT).await;
                    continue;
                }
                let view = self.view();
                // A stand-in: a node on the ring that stays (neither the target nor leaving).
                let keeper = view
                    .others_up()
                    .filter(|id| *id != target)
                    .find(|id| view.ring.node(*id).is_some_and(|n| n.status == NodeStatus::Normal));
                let n = page.len() as u64;
                let sent: Vec<Sent> = page.iter().map(Sent::of).collect();
                let records: Vec<Record> = page.into_iter().map(|h| h.record).collect();
                let answer = match keeper.and_then(|k| view.addrs.get(&k).copied()) {
                    Some(addr) => {
                        let hint = ReplicaHint { target, records };
                        Some(self.inner.transport.call(addr, hint).await)
                    }
                    None => None,
                };
                match answer {
                    Some(Ok(())) => {
                        // A hint replaced by a newer one meanwhile stays, and goes next.
                        self.forget(target, sent).await.map_err(anyhow::Error::msg)?;
                        handed += n;
                    }
                    other => {
                        attempt += 1;
                        if attempt >= HANDOVER_ATTEMPTS {
                            anyhow::bail!(
                                "no node that stays took the {n} hints kept for {target}: {other:?}"
                            );
                        }
                        warn!(target = %target, answer = ?other, attempt, "hint handover failed; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        }
        if handed > 0 {
            info!(hints = handed, "hints handed over to nodes that stay");
        }
        Ok(handed)
    }

    /// Retires hints that cannot reach `target` any more: each is deleted only once a real
    /// replica of its key holds its write — this node, if it is one (the write is applied here,
    /// merged by version), else another replica that is up (sent a replica write) — so the write
    /// is never lost with the hint: anti-entropy carries it to `target` when it is back. A hint no
    /// replica can take now stays. Returns how many were retired.
    async fn retire_hints(
        &self,
        target: NodeId,
        hints: Vec<crate::storage::Hint>,
        view: &crate::kv::view::RingView,
    ) -> Result<u64, String> {
        let me = self.inner.me;
        let mut local: Vec<crate::storage::Hint> = Vec::new();
        let mut remote: BTreeMap<NodeId, Vec<crate::storage::Hint>> = BTreeMap::new();
        for h in hints {
            let natural = view.placement.replicas(starling_ring::token_of(&h.record.key));
            if natural.contains(&me) {
                local.push(h);
            } else if let Some(p) = natural.iter().find(|p| {
                **p != target
                    && view.is_up(**p)
                    && !view.left.contains(p)
                    && view.addrs.contains_key(p)
            }) {
                remote.entry(*p).or_default().push(h);
            }
        }
        let mut retired = 0;
        if !local.is_empty() {
            let records: Vec<Record> = local.iter().map(|h| h.record.clone()).collect();
            self.inner.io.read(move |s| s.apply(&records)).await?.map_err(|e| e.to_string())?;
            retired += self.forget(target, local.iter().map(Sent::of).collect()).await?;
        }
        for (p, hs) in remote {
            let Some(addr) = view.addrs.get(&p).copied() else { continue };
            let records: Vec<Record> = hs.iter().map(|h| h.record.clone()).collect();
            if self.inner.transport.call(addr, ReplicaWrite(records)).await.is_ok() {
                retired += self.forget(target, hs.iter().map(Sent::of).collect()).await?;
            }
        }
        Ok(retired)
    }

    /// Deletes hints `sent` to a node (or expired), each only if it still has the version sent
    /// (not if a newer hint replaced it meanwhile), and takes those deleted out of the index.
    /// Returns how many were deleted.
    async fn forget(&self, target: NodeId, sent: Vec<Sent>) -> Result<u64, String> {
        let bytes: Vec<u64> = sent.iter().map(|s| s.bytes).collect();
        let removed = self
            .inner
            .io
            .delete_hints(sent.into_iter().map(|s| (s.id, s.version)).collect())
            .await?;
        let (mut n, mut b) = (0u64, 0u64);
        for (bytes, removed) in bytes.into_iter().zip(removed) {
            if removed {
                n += 1;
                b += bytes;
            }
        }
        self.inner.hints.sub(target, n, b);
        Ok(n)
    }

    /// Delivers `target`'s hints while it is up, however old. Hints that cannot reach it any
    /// more (it left, or has been down longer than the hint window) are retired
    /// ([`Kv::retire_hints`]), never just dropped. Hints for a target that is down, within the
    /// window, are not even read.
    async fn replay_to(&self, target: NodeId) {
        let mut delivered = 0u64;
        let gone = {
            let view = self.view();
            let up = target != self.inner.me && view.is_up(target);
            let left = view.left.contains(&target);
            let gone = !up
                && !left
                && view
                    .down_for(target, std::time::Instant::now())
                    .is_some_and(|d| d > self.inner.cfg.hint_window);
            if !up && !left && !gone {
                return;
            }
            gone
        };
        loop {
            let view = self.view();
            let hints = match self.hint_page(target).await {
                Ok(h) => h,
                Err(e) => {
                    warn!(error = %e, "cannot read hints");
                    return;
                }
            };
            if hints.is_empty() {
                // Kept while a hint for it is being stored: the next pass replays that one.
                self.inner.hints.clear(target);
                break;
            }
            // A target that is up gets every hint kept for it, however old (it is a replica of
            // their keys); one that left or stays down past the window gets none: they are
            // retired to another replica.
            let unreachable = view.left.contains(&target) || gone;
            // Older than the tombstone grace period: the write may be older than a tombstone
            // already purged, and would bring its key back. Dropped, never delivered.
            let grace_ms = self.inner.cfg.tombstone_grace.as_millis() as u64;
            let now_ms = super::wall_millis();
            let (stale, hints): (Vec<_>, Vec<_>) = hints
                .into_iter()
                .partition(|h| h.record.version.millis().saturating_add(grace_ms) < now_ms);
            if !stale.is_empty() {
                match self.forget(target, stale.iter().map(Sent::of).collect()).await {
                    Ok(n) => {
                        self.inner.stats.hints_past_grace.fetch_add(n, Ordering::Relaxed);
                        warn!(target = %target, dropped = n, "hints older than the tombstone grace period dropped");
                    }
                    Err(e) => {
                        warn!(error = %e, "cannot delete hints past the grace period");
                        return;
                    }
                }
                if hints.is_empty() {
                    continue;
                }
            }
            let (expired, live): (Vec<_>, Vec<_>) = hints.into_iter().partition(|_| unreachable);
            let no_live = live.is_empty();
            if !expired.is_empty() {
                let n = match self.retire_hints(target, expired, &view).await {
                    Ok(n) => n,
                    Err(e) => {
                        warn!(error = %e, "cannot retire hints");
                        return;
                    }
                };
                self.inner.stats.hints_dropped.fetch_add(n, Ordering::Relaxed);
                debug!(target = %target, retired = n, "hints retired");
                if n == 0 && no_live {
                    // No replica of these keys can take them now: they stay, and the next pass
                    // tries again.
                    break;
                }
            }
            if no_live {
                continue;
            }
            if target == self.inner.me || !view.is_up(target) {
                break;
            }
            let Some(addr) = view.addrs.get(&target).copied() else { break };
            let sent: Vec<Sent> = live.iter().map(Sent::of).collect();
            let records = live.into_iter().map(|h| h.record).collect();
            match self.inner.transport.call(addr, ReplicaWrite(records)).await {
                // Stored (a record older than what the replica holds is delivered just the
                // same).
                Ok(_) => {
                    let n = sent.len() as u64;
                    // A hint replaced by a newer one meanwhile stays, and goes next.
                    if let Err(e) = self.forget(target, sent).await {
                        warn!(error = %e, "cannot delete delivered hints");
                        return;
                    }
                    delivered += n;
                    self.inner.stats.hints_replayed.fetch_add(n, Ordering::Relaxed);
                }
                Err(e) => {
                    debug!(peer = %addr, error = %e, "hint replay failed");
                    break;
                }
            }
        }
        if delivered > 0 {
            info!(target = %target, delivered, "hints replayed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_stays_listed_while_a_hint_for_it_is_being_stored() {
        let index = HintIndex::default();
        let cfg = KvConfig::default();
        let t = NodeId(7);
        let r = index.reserve(&cfg, t, 1, 100).expect("room");
        assert_eq!((index.pending(), index.bytes()), (1, 100));
        // A pass that finds none of its hints stored yet keeps the target.
        assert!(!index.clear(t));
        assert_eq!(index.targets(), vec![t]);
        r.stored(&[100], &[HintPut::Added]);
        assert_eq!((index.pending(), index.bytes()), (1, 100), "the stored hint counts");
        assert!(index.clear(t));
        assert!(index.targets().is_empty());
    }

    #[test]
    fn a_reservation_given_up_gives_back_what_it_took() {
        let index = HintIndex::default();
        let cfg = KvConfig { max_hint_bytes_per_target: 150, ..KvConfig::default() };
        let t = NodeId(7);
        let kept = index.reserve(&cfg, t, 1, 100).expect("room");
        kept.stored(&[100], &[HintPut::Added]);
        assert!(index.reserve(&cfg, t, 1, 100).is_none(), "past the cap for the target");
        drop(index.reserve(&cfg, t, 1, 50).expect("room"));
        assert_eq!((index.pending(), index.bytes()), (1, 100));
        // A newer hint replacing the kept one takes the old one out.
        let r = index.reserve(&cfg, t, 1, 40).expect("room");
        r.stored(&[40], &[HintPut::Replaced { bytes: 100 }]);
        assert_eq!((index.pending(), index.bytes()), (1, 40));
        assert!(index.clear(t), "no store under way");
    }
}
