//! A replica in memory, for tests, the simulator, benchmarks and fuzzing.

use std::collections::BTreeMap;
use std::sync::Mutex;

use starling_ring::{token_of, Token};
use starling_wire::Record;

use crate::{Replica, Segments};

/// A replica's data in memory, merged by version (last write wins, ties by node id).
pub struct MemReplica {
    data: Mutex<BTreeMap<(Token, Vec<u8>), Record>>,
    segments: Segments,
}

impl std::fmt::Debug for MemReplica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemReplica").field("keys", &self.len()).finish()
    }
}

impl MemReplica {
    pub fn new(bits: u8) -> MemReplica {
        MemReplica { data: Mutex::new(BTreeMap::new()), segments: Segments::new(bits) }
    }

    /// Every record, in token order.
    pub fn snapshot(&self) -> Vec<Record> {
        self.lock().values().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes a key without a tombstone (a lost write).
    pub fn forget(&self, key: &[u8]) -> Option<Record> {
        let r = self.lock().remove(&(token_of(key), key.to_vec()));
        self.segments.touched(token_of(key));
        r
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(Token, Vec<u8>), Record>> {
        self.data.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Replica for MemReplica {
    fn scan(&self, lo: Token, hi: Token, visit: &mut dyn FnMut(&Record)) -> Result<(), String> {
        for ((t, _), r) in self.lock().range((lo, Vec::new())..) {
            if *t > hi {
                break;
            }
            visit(r);
        }
        Ok(())
    }

    fn apply(&self, records: &[Record]) -> Result<(), String> {
        let mut data = self.lock();
        for r in records {
            let slot = data.entry((token_of(&r.key), r.key.clone())).or_insert_with(|| r.clone());
            if (r.version.ts, r.version.node) > (slot.version.ts, slot.version.node) {
                *slot = r.clone();
            }
        }
        drop(data);
        for r in records {
            self.segments.touched(token_of(&r.key));
        }
        Ok(())
    }

    fn segments(&self) -> &Segments {
        &self.segments
    }
}
