//! Anti-entropy in the simulated node: `starling-merkle` sessions between replicas, as
//! `node/src/repair.rs` runs them. Every [`REPAIR_EVERY`] a node that is not in a session starts
//! one with its next peer (round-robin over the nodes it shares ranges with), over every range
//! they share; the peer answers each step with `starling_merkle::respond` over its store. A lost
//! message, a timeout or a restart fails the session; the next one starts over.

use std::cell::RefCell;
use std::collections::BTreeMap;

use starling_merkle::{respond, wire_range, Replica, Segments, Session};
use starling_ring::token_of;
use starling_wire::repair::{RepairRequest, RepairResponse, TokenRange};

use super::*;

/// How often a node starts a session (with the next of its peers).
pub const REPAIR_EVERY: Duration = Duration::from_secs(2);
/// One step of a session waits this long for its answer.
pub const REPAIR_STEP_TIMEOUT: Duration = Duration::from_secs(2);
/// The simulated nodes' grain: 256 segments (a few keys each: every leaf path exercised).
pub const REPAIR_SEGMENT_BITS: u8 = 8;

/// A session this node runs.
#[derive(Debug)]
pub(crate) struct RepairRun {
    /// The peer, and its address (a machine that came back wiped has a new id at the old
    /// address: the session is the new id's).
    peer: NodeId,
    addr: SocketAddr,
    session: Session,
}

/// The simulated store as a repair session sees it; writes go to the store's WAL like any
/// replica write (durable at `synced_at`).
struct SimReplica<'a> {
    disk: RefCell<&'a mut Disk>,
    /// The store's records by token (the real store's order), kept in step with `apply`.
    by_token: RefCell<BTreeMap<(u64, Vec<u8>), ()>>,
    segments: &'a Segments,
    synced_at: Instant,
}

impl<'a> SimReplica<'a> {
    fn new(disk: &'a mut Disk, segments: &'a Segments, synced_at: Instant) -> Self {
        let by_token = disk.data.keys().map(|k| ((token_of(k), k.clone()), ())).collect();
        SimReplica {
            disk: RefCell::new(disk),
            by_token: RefCell::new(by_token),
            segments,
            synced_at,
        }
    }
}

impl Replica for SimReplica<'_> {
    fn scan(&self, lo: u64, hi: u64, visit: &mut dyn FnMut(&Record)) -> Result<(), String> {
        let disk = self.disk.borrow();
        for ((t, k), ()) in self.by_token.borrow().range((lo, Vec::new())..) {
            if *t > hi {
                break;
            }
            if let Some(r) = disk.data.get(k) {
                visit(r);
            }
        }
        Ok(())
    }

    fn apply(&self, records: &[Record]) -> Result<(), String> {
        let mut disk = self.disk.borrow_mut();
        for r in records {
            disk.put(self.synced_at, r.clone());
            self.by_token.borrow_mut().insert((token_of(&r.key), r.key.clone()), ());
            self.segments.touched(token_of(&r.key));
        }
        Ok(())
    }

    fn segments(&self) -> &Segments {
        self.segments
    }
}

impl KvProc {
    /// A session with `peer` completed: while recovering, it counts as compared;
    /// once every other replica of this node's ranges is, the recovery is over.
    fn compared(&mut self, peer: NodeId) {
        let me = self.spec.id;
        let view = self.view.clone();
        let Some(compared) = self.recovering.as_mut() else { return };
        compared.insert(peer);
        let all = view.placement.segments().filter(|(_, natural, _)| natural.contains(&me)).all(
            |(_, natural, _)| {
                natural
                    .iter()
                    .all(|p| *p == me || compared.contains(p) || view.removing.contains(p))
            },
        );
        if all {
            self.recovering = None;
            self.stats.recoveries += 1;
        }
    }

    /// Starts a session with the next peer, if one is due.
    pub(crate) fn maybe_start_repair(&mut self, now: Instant) {
        if !self.spec.repair || now < self.next_repair {
            return;
        }
        // Due: the next one is due an interval later, whether this one starts or not.
        self.next_repair = now + REPAIR_EVERY;
        if self.repair.is_some() || !self.ready || self.store.full || self.stalled(now).is_some() {
            return;
        }
        let me = self.spec.id;
        let view = self.view.clone();
        let mut shared: BTreeMap<NodeId, Vec<TokenRange>> = BTreeMap::new();
        for (range, natural, _) in view.placement.segments() {
            if !natural.contains(&me) {
                continue;
            }
            for p in natural.iter().filter(|p| **p != me && view.is_up(**p)) {
                shared.entry(*p).or_default().push(wire_range(range));
            }
        }
        if shared.is_empty() {
            return;
        }
        let n = shared.len();
        let Some((peer, ranges)) = shared.into_iter().nth(self.repair_cursor % n) else { return };
        self.repair_cursor += 1;
        let Some(addr) = view.addrs.get(&peer).copied() else { return };
        self.stats.repair_sessions += 1;
        let session = Session::new(REPAIR_SEGMENT_BITS, ranges);
        self.repair = Some(RepairRun { peer, addr, session });
        self.repair_step(now);
    }

    /// Sends the running session's next request, or finishes it.
    fn repair_step(&mut self, now: Instant) {
        let Some(mut run) = self.repair.take() else { return };
        let at = self.synced_at(now);
        let next = {
            let replica = SimReplica::new(&mut self.disk, &self.segments, at);
            run.session.poll_request(&replica)
        };
        match next {
            Ok(Some(req)) => {
                let deadline = now + REPAIR_STEP_TIMEOUT;
                self.send_request(run.addr, Req::Repair(req), Pending::Repair, deadline);
                self.repair = Some(run);
            }
            Ok(None) => {
                let s = run.session.stats();
                self.stats.repair_sessions_done += 1;
                self.compared(run.peer);
                self.stats.repair_keys_received += s.records_received;
                self.stats.repair_keys_sent += s.records_sent;
            }
            Err(_) => self.stats.repair_sessions_failed += 1,
        }
    }

    /// The peer's answer to the session's last request (`None`: it timed out).
    pub(crate) fn on_repair_answer(&mut self, body: Option<Resp>, now: Instant) {
        let Some(mut run) = self.repair.take() else { return };
        let Some(Resp::Repair(answer)) = body else {
            self.stats.repair_sessions_failed += 1;
            return;
        };
        let at = self.synced_at(now);
        let r = {
            let replica = SimReplica::new(&mut self.disk, &self.segments, at);
            run.session.on_response(&replica, answer)
        };
        match r {
            Ok(()) => {
                self.repair = Some(run);
                self.repair_step(now);
            }
            Err(_) => self.stats.repair_sessions_failed += 1,
        }
    }

    /// Answers one step of a peer's session (`Repair::handle_peer`).
    pub(crate) fn serve_repair(&mut self, req: RepairRequest, now: Instant) -> Resp {
        let me = self.spec.id;
        let view = self.view.clone();
        let mine: HashSet<TokenRange> = view
            .placement
            .segments()
            .filter(|(_, natural, _)| natural.contains(&me))
            .map(|(r, _, _)| wire_range(r))
            .collect();
        let owned = |rs: &mut dyn Iterator<Item = TokenRange>| {
            for r in rs {
                if !mine.contains(&r) {
                    return false;
                }
            }
            true
        };
        let ok = match &req {
            RepairRequest::Roots { ranges, .. } | RepairRequest::Repaired { ranges, .. } => {
                owned(&mut ranges.iter().copied())
            }
            RepairRequest::Children { items, .. } => owned(&mut items.iter().map(|d| d.range)),
            RepairRequest::Entries { items, .. } => owned(&mut items.iter().map(|i| i.range)),
            RepairRequest::StreamPending => false,
            RepairRequest::Push(records) => records.iter().all(|r| {
                let (natural, pending) = view.placement.write_set(token_of(&r.key));
                natural.contains(&me) || pending.contains(&me)
            }),
        };
        if !ok {
            return Resp::Repair(RepairResponse::Refused("ring views differ".into()));
        }
        if self.store.full && matches!(req, RepairRequest::Push(_) | RepairRequest::Entries { .. })
        {
            return Resp::Repair(RepairResponse::Refused("disk full".into()));
        }
        if let RepairRequest::Push(records) = &req {
            self.stats.repair_keys_received += records.len() as u64;
        }
        let at = self.synced_at(now);
        let replica = SimReplica::new(&mut self.disk, &self.segments, at);
        let answer = respond(&replica, &req);
        if let RepairResponse::Entries(e) = &answer {
            self.stats.repair_keys_sent += e.records.len() as u64;
        }
        Resp::Repair(answer)
    }
}
