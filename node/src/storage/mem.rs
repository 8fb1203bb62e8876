//! [`Storage`] in memory: sorted maps behind a mutex. For tests and in-process clusters; it
//! forgets everything when dropped, so a "restart" keeps the same value.

use starling_wire::NodeId;
use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Mutex, MutexGuard};

use starling_ring::Range;
use starling_wire::{Record, Version};

use super::{
    corrupt, data_key, decode_value, encode_value, hint_is, hint_key, hint_put, incoming_wins,
    range_pieces, token_bounds, Hint, HintPut, ScanPage, Storage, StorageError,
};

#[derive(Debug, Default)]
struct Inner {
    data: BTreeMap<Vec<u8>, Vec<u8>>,
    hints: BTreeMap<Vec<u8>, Vec<u8>>,
    meta: BTreeMap<String, Vec<u8>>,
}

/// An in-memory store.
#[derive(Debug, Default)]
pub struct MemStorage {
    inner: Mutex<Inner>,
    segments: std::sync::Arc<starling_merkle::Segments>,
    /// [`Storage::sync_all`] calls (nothing to sync in memory; tests check who asks).
    syncs: std::sync::atomic::AtomicU64,
}

impl MemStorage {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces the stored bytes of `key` with bytes no record decodes from, as a flipped byte on
    /// a disk would (for tests of how corruption is handled). False if `key` is not stored.
    pub fn corrupt(&self, key: &[u8]) -> bool {
        match self.lock().data.get_mut(&data_key(key)) {
            Some(v) => {
                *v = vec![0xff; 3];
                true
            }
            None => false,
        }
    }

    /// How many times [`Storage::sync_all`] was called.
    pub fn syncs(&self) -> u64 {
        self.syncs.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Storage for MemStorage {
    fn apply(&self, records: &[Record]) -> Result<(), StorageError> {
        let mut g = self.lock();
        for r in records {
            let k = data_key(&r.key);
            let v = encode_value(r.version, r.value.as_deref());
            match g.data.get_mut(&k) {
                Some(old) => {
                    if incoming_wins(old, &v) {
                        *old = v;
                    }
                }
                None => {
                    g.data.insert(k, v);
                }
            }
        }
        drop(g);
        super::touch_segments(&self.segments, records);
        Ok(())
    }

    fn segments(&self) -> &std::sync::Arc<starling_merkle::Segments> {
        &self.segments
    }

    fn get(&self, key: &[u8]) -> Result<Option<Record>, StorageError> {
        let g = self.lock();
        match g.data.get(&data_key(key)) {
            None => Ok(None),
            Some(v) => decode_value(key, v).map(Some).map_err(|e| corrupt("data", key, e)),
        }
    }

    fn scan(
        &self,
        range: Range,
        cursor: Option<&[u8]>,
        limit: usize,
    ) -> Result<ScanPage, StorageError> {
        let g = self.lock();
        let mut page = ScanPage::default();
        let mut bytes = 0usize;
        for (start, end) in range_pieces(range) {
            let (lower, upper) = token_bounds(start, end);
            let lo = match cursor {
                Some(c) if c >= lower.as_slice() => Bound::Excluded(c.to_vec()),
                _ => Bound::Included(lower),
            };
            let hi = match upper {
                Some(u) => Bound::Excluded(u),
                None => Bound::Unbounded,
            };
            if let (Bound::Excluded(l), Bound::Excluded(h)) = (&lo, &hi) {
                if l >= h {
                    continue;
                }
            }
            for (k, v) in g.data.range((lo, hi)) {
                if !super::page_push(&mut page, &mut bytes, limit, k, v)? {
                    return Ok(page);
                }
            }
        }
        Ok(page)
    }

    fn put_hints(&self, hints: &[(NodeId, Record)]) -> Result<Vec<HintPut>, StorageError> {
        // One lock for the batch: the comparison and the write are one step.
        let mut g = self.lock();
        let mut out = Vec::with_capacity(hints.len());
        for (target, r) in hints {
            let k = hint_key(*target, &r.key);
            let v = encode_value(r.version, r.value.as_deref());
            let put = hint_put(&k, g.hints.get(&k).map(Vec::as_slice), &v);
            if put != HintPut::Kept {
                g.hints.insert(k, v);
            }
            out.push(put);
        }
        Ok(out)
    }

    fn hints_for(&self, target: NodeId, limit: usize) -> Result<Vec<Hint>, StorageError> {
        let g = self.lock();
        let prefix = target.to_be_bytes();
        let (mut out, mut bytes) = (Vec::new(), 0);
        for (k, v) in g.hints.range(prefix.to_vec()..) {
            if !k.starts_with(&prefix)
                || !super::hint_page_push(&mut out, &mut bytes, limit, target, k, v)?
            {
                break;
            }
        }
        Ok(out)
    }

    fn hint_targets(&self) -> Result<Vec<(NodeId, usize)>, StorageError> {
        let g = self.lock();
        super::count_hint_targets(g.hints.keys().map(Ok::<_, StorageError>))
    }

    fn hint_bytes(&self) -> Result<Vec<(NodeId, u64)>, StorageError> {
        let g = self.lock();
        super::hint_bytes_of(g.hints.iter().map(Ok::<_, StorageError>))
    }

    fn drop_range(&self, range: Range, go_on: &dyn Fn() -> bool) -> Result<u64, StorageError> {
        let mut g = self.lock();
        if !go_on() {
            return Ok(0);
        }
        let before = g.data.len();
        g.data.retain(|k, _| !super::key_token(k).is_some_and(|t| range.contains(t)));
        let n = (before - g.data.len()) as u64;
        drop(g);
        self.segments.touch_all();
        Ok(n)
    }

    fn drop_hints_for(&self, target: NodeId) -> Result<(), StorageError> {
        let prefix = target.to_be_bytes();
        self.lock().hints.retain(|k, _| !k.starts_with(&prefix));
        Ok(())
    }

    fn delete_hints(&self, hints: &[(Vec<u8>, Version)]) -> Result<Vec<bool>, StorageError> {
        // One lock for the batch: a newer hint cannot replace one between its check and removal.
        let mut g = self.lock();
        let mut out = Vec::with_capacity(hints.len());
        for (id, version) in hints {
            let delivered = g.hints.get(id).is_some_and(|v| hint_is(v, *version));
            if delivered {
                g.hints.remove(id);
            }
            out.push(delivered);
        }
        Ok(out)
    }

    fn get_meta(&self, name: &str) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.lock().meta.get(name).cloned())
    }

    fn put_meta(&self, name: &str, value: &[u8]) -> Result<(), StorageError> {
        self.lock().meta.insert(name.to_owned(), value.to_vec());
        Ok(())
    }

    fn approximate_keys(&self) -> u64 {
        self.lock().data.len() as u64
    }

    fn sync_all(&self) -> Result<(), StorageError> {
        self.syncs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
}
