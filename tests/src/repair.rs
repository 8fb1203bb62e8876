//! Anti-entropy on in-memory replicas: a [`MemReplica`] for the `merkle` core, and a session run
//! over the wire encoding that counts the bytes both ways ([`run_session`]). The `repair-bench`
//! binary prints the figures.

use std::collections::BTreeMap;
use std::sync::Mutex;

use starling_merkle::{respond, RepairError, Replica, Segments, Session, SessionStats};
use starling_ring::{token_of, Token};
use starling_wire::repair::{RepairRequest, RepairResponse, TokenRange};
use starling_wire::Record;

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

/// What one session cost.
#[derive(Debug, Clone, Copy, Default)]
pub struct SessionReport {
    pub stats: SessionStats,
    /// Encoded bytes of the requests (initiator to responder) and of the answers.
    pub bytes_out: usize,
    pub bytes_in: usize,
}

/// Runs one session from `initiator` to `responder` over `ranges`, every message through its
/// wire encoding (as `starlingd` sends it), `lose` deciding for each message whether it is lost
/// (a lost message fails the session, as a timeout does).
pub fn run_session(
    initiator: &dyn Replica,
    responder: &dyn Replica,
    ranges: &[TokenRange],
    mut lose: impl FnMut() -> bool,
) -> Result<SessionReport, RepairError> {
    let mut s = Session::new(initiator.segments().bits(), ranges.iter().copied());
    let mut report = SessionReport::default();
    while let Some(req) = s.poll_request(initiator)? {
        let wire =
            rmp_serde::to_vec_named(&req).map_err(|e| RepairError::Protocol(e.to_string()))?;
        report.bytes_out += wire.len();
        if lose() {
            return Err(RepairError::Protocol("request lost".into()));
        }
        let req: RepairRequest =
            rmp_serde::from_slice(&wire).map_err(|e| RepairError::Protocol(e.to_string()))?;
        let resp = respond(responder, &req);
        let wire =
            rmp_serde::to_vec_named(&resp).map_err(|e| RepairError::Protocol(e.to_string()))?;
        report.bytes_in += wire.len();
        if lose() {
            return Err(RepairError::Protocol("answer lost".into()));
        }
        let resp: RepairResponse =
            rmp_serde::from_slice(&wire).map_err(|e| RepairError::Protocol(e.to_string()))?;
        s.on_response(initiator, resp)?;
    }
    report.stats = s.stats();
    Ok(report)
}

/// `n` ranges that tile the ring, from `n` random tokens (a ring of `n` vnodes).
pub fn random_ranges(rng: &mut impl rand::Rng, n: usize) -> Vec<TokenRange> {
    let mut ends: Vec<u64> = (0..n.max(1)).map(|_| rng.gen()).collect();
    ends.sort_unstable();
    ends.dedup();
    let m = ends.len();
    if m == 1 {
        return vec![TokenRange { start: ends[0], end: ends[0] }];
    }
    (0..m).map(|i| TokenRange { start: ends[(i + m - 1) % m], end: ends[i] }).collect()
}
