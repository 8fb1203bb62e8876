//! Anti-entropy on in-memory replicas ([`MemReplica`]): a session run
//! over the wire encoding that counts the bytes both ways ([`run_session`]). The `repair-bench`
//! binary prints the figures.

pub use starling_merkle::mem::MemReplica;
use starling_merkle::{respond, RepairError, Replica, Session, SessionStats};
use starling_wire::repair::{RepairRequest, RepairResponse, TokenRange};

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
