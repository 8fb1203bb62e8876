//! One read, from the choice of replicas to blocking read repair.

use std::time::{Duration, Instant};

use starling_ring::{token_of, NodeId};
use starling_wire::{check_key_value, Consistency, Record, Version};

use crate::{
    required_for_read, up_count, Answer, KvConfig, KvError, Outgoing, RingView, Send, SendId, Sends,
};

/// A successful read: the newest record among `replicas` answers (`None`: no replica has it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    pub record: Option<Record>,
    pub replicas: u32,
    /// Replicas the newest record was written back to (read repair).
    pub repaired: u32,
}

/// What one send of a read stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    /// A read of the replica's record (`digest: false`) or version.
    Ask { from: NodeId, digest: bool },
    /// Fetching the record from a replica whose digest claimed a newer version.
    Fetch { from: NodeId },
    /// Writing the newest record back to a replica that answered with an older one.
    Repair { to: NodeId },
    /// A hint for a replica whose repair failed.
    Hint,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for `required` answers.
    Gather,
    /// Fetching the newest record from the replicas whose digests claim it, newest first.
    Resolve,
    /// Waiting until `required` replicas hold the newest version.
    Repair,
    Done,
}

/// One read in flight.
///
/// Digest reads (Cassandra's): the first replica asked (this node when it is one) returns its
/// record, the others only their version, so the record travels once unless versions differ. A
/// replica that fails is replaced by the next one; replicas that have not answered after the
/// speculative-retry delay get one more replica asked beside them. Once `required` replicas have
/// answered, the newest record wins; if only a digest shows the newest version, the record is
/// fetched from that replica.
///
/// **Blocking read repair.** The newest record is written back to the replicas that answered
/// with an older one, and the read answers only once `required` replicas are known to hold it
/// (those that had it plus those repaired). A repair that does not reach enough replicas before
/// the deadline fails the read with `timeout`: answering would let a later read at the same level
/// miss a value this one returned.
///
/// **While the key's range moves** (a node joining or leaving: the placement has pending
/// replicas), the level must be met in the current replica set *and* in the future one: writes
/// go to both (one more acknowledgement per pending replica), but a coordinator that already
/// sees the move completed writes to a quorum of the future set only, and gossip tells the
/// nodes at different times. Counting both sets (joint quorums, as Raft's joint consensus does)
/// makes a read overlap every acknowledged write under either placement; the same goes for the
/// replicas a blocking read repair must reach.
#[derive(Debug)]
pub struct ReadOp {
    me: NodeId,
    key: Vec<u8>,
    level: Consistency,
    required: usize,
    n: usize,
    /// The current replicas.
    natural: Vec<NodeId>,
    /// The future replicas and the level's count among them, while the range moves.
    future: Option<(Vec<NodeId>, usize)>,
    read_timeout: Duration,
    hint_window: Duration,
    down: Vec<(NodeId, Duration)>,
    candidates: Vec<NodeId>,
    next: usize,
    deadline: Instant,
    speculate_at: Option<Instant>,
    data_in_flight: usize,
    have_record: bool,
    /// `(replica, the version it holds)`, for every replica that answered.
    answers: Vec<(NodeId, Option<Version>)>,
    best: Option<Record>,
    /// Digest claims newer than `best`, newest first, not yet fetched.
    claims: Vec<(NodeId, Version)>,
    failed_claim: Option<(NodeId, Version)>,
    /// Replicas that could not read their record: repaired with the newest one.
    unreadable: Vec<NodeId>,
    /// Replicas known to hold the newest version (during the repair phase).
    holders: Vec<NodeId>,
    repaired: u32,
    phase: Phase,
    sends: Sends<Part>,
    result: Option<Result<Read, KvError>>,
    expired: bool,
}

impl ReadOp {
    /// Plans the read of `key` at `level` and queues its first sends. Fails at once if the key is
    /// not valid, the level is `any`, or gossip shows too few replicas up.
    pub fn start(
        now: Instant,
        cfg: &KvConfig,
        view: &RingView,
        level: Consistency,
        key: Vec<u8>,
    ) -> Result<ReadOp, KvError> {
        check_key_value(&key, None).map_err(KvError::BadRequest)?;
        if view.ring.is_empty() {
            return Err(KvError::Unavailable(
                "no node owns any token yet (the cluster is still starting)".into(),
            ));
        }
        let token = token_of(&key);
        let natural = view.placement.replicas(token);
        let (pending, dropping) = view.placement.transition(token);
        let n = natural.len();
        let Some(required) = required_for_read(level, n) else {
            return Err(KvError::BadRequest("consistency `any` is for writes only".into()));
        };
        let reachable =
            |t: &NodeId| view.is_up(*t) && (*t == view.me || view.addrs.contains_key(t));
        // This node first (no network hop), then the others in ring order, then the pending ones.
        let mut candidates: Vec<NodeId> = natural.iter().copied().filter(reachable).collect();
        if candidates.len() < required {
            return Err(KvError::Unavailable(format!(
                "{level} read needs {required} of {n} replicas, but only {}",
                up_count(candidates.len())
            )));
        }
        if let Some(i) = candidates.iter().position(|t| *t == view.me) {
            candidates[..=i].rotate_right(1);
        }
        let future = if pending.is_empty() && dropping.is_empty() {
            None
        } else {
            let future: Vec<NodeId> =
                natural.iter().filter(|t| !dropping.contains(t)).chain(pending).copied().collect();
            let needed = required_for_read(level, future.len()).unwrap_or(required);
            let up = future.iter().filter(|t| reachable(t)).count();
            if up < needed {
                return Err(KvError::Unavailable(format!(
                    "{level} read while its range moves needs {needed} of the {} future replicas \
                     too, but only {}",
                    future.len(),
                    up_count(up)
                )));
            }
            candidates.extend(pending.iter().copied().filter(reachable));
            Some((future, needed))
        };
        let down = natural.iter().filter_map(|t| Some((*t, view.down_for(*t, now)?))).collect();
        let mut op = ReadOp {
            me: view.me,
            key,
            level,
            required,
            n,
            natural: natural.to_vec(),
            future,
            read_timeout: cfg.read_timeout,
            hint_window: cfg.hint_window,
            down,
            candidates,
            next: 0,
            deadline: now + cfg.read_timeout,
            speculate_at: Some(now + cfg.speculative_retry),
            data_in_flight: 0,
            have_record: false,
            answers: Vec::with_capacity(required),
            best: None,
            claims: Vec::new(),
            failed_claim: None,
            unreadable: Vec::new(),
            holders: Vec::new(),
            repaired: 0,
            phase: Phase::Gather,
            sends: Sends::default(),
            result: None,
            expired: false,
        };
        for i in 0..required {
            op.ask(i > 0);
        }
        op.top_up();
        Ok(op)
    }

    /// The next thing to send.
    pub fn poll_send(&mut self) -> Option<Outgoing> {
        self.sends.poll()
    }

    /// When [`ReadOp::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.expired || self.sends.is_empty() {
            return None;
        }
        match self.speculate_at {
            Some(at) if self.phase == Phase::Gather && self.spare() => Some(at.min(self.deadline)),
            _ => Some(self.deadline),
        }
    }

    /// The result, once.
    pub fn poll_result(&mut self) -> Option<Result<Read, KvError>> {
        self.result.take()
    }

    /// True once nothing is awaited any more.
    pub fn is_finished(&self) -> bool {
        self.phase == Phase::Done && self.result.is_none() && self.sends.is_empty()
    }

    /// The answer to send `id`. Answers to abandoned sends are ignored.
    pub fn handle_answer(&mut self, now: Instant, id: SendId, answer: Answer) {
        let Some(part) = self.sends.take(id) else { return };
        match part {
            Part::Ask { from, digest } => {
                self.data_in_flight -= usize::from(!digest);
                if answer == Answer::Unreadable && !self.unreadable.contains(&from) {
                    self.unreadable.push(from);
                }
                if self.phase != Phase::Gather {
                    // A speculative extra answer after the level was met: not needed.
                    return;
                }
                match answer {
                    Answer::Record(r) if !digest => {
                        self.have_record = true;
                        self.answers.push((from, r.as_ref().map(|r| r.version)));
                        if r.as_ref().is_some_and(|r| {
                            self.best.as_ref().is_none_or(|b| r.version > b.version)
                        }) {
                            self.best = r;
                        }
                    }
                    Answer::Digest(v) if digest => self.answers.push((from, v)),
                    // Failed, or an answer of the wrong shape: ask the next replica, if any is
                    // left; for the record if no other replica is sending it.
                    _ => {
                        if self.spare() && now < self.deadline {
                            let digest = self.have_record || self.data_in_flight > 0;
                            self.ask(digest);
                            self.top_up();
                        }
                    }
                }
                if self.answered_enough() {
                    self.resolve();
                } else if self.sends.iter().all(|p| !matches!(p, Part::Ask { .. })) {
                    self.fail_gather();
                }
            }
            Part::Fetch { from } => {
                match answer {
                    Answer::Record(Some(r)) => {
                        self.set_answer(from, Some(r.version));
                        if self.best.as_ref().is_none_or(|b| r.version > b.version) {
                            self.best = Some(r);
                        }
                    }
                    // It no longer holds that version (a tombstone compacted away since): the
                    // next claim decides.
                    Answer::Record(None) => self.set_answer(from, None),
                    _ => {
                        if answer == Answer::Unreadable && !self.unreadable.contains(&from) {
                            self.unreadable.push(from);
                        }
                        let claim = self.answers.iter().find(|a| a.0 == from).and_then(|a| a.1);
                        if let Some(v) = claim {
                            self.failed_claim.get_or_insert((from, v));
                        }
                    }
                }
                self.resolve();
            }
            Part::Repair { to } => {
                match answer {
                    Answer::Stored { .. } => self.holders.push(to),
                    _ => {
                        if to != self.me && self.hintable(to) {
                            if let Some(best) = self.best.clone() {
                                self.sends
                                    .push(Send::Hint { target: to, record: best }, Part::Hint);
                            }
                        }
                    }
                }
                self.check_repaired();
            }
            Part::Hint => {}
        }
    }

    /// Time passed: the speculative retry, then the deadline.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.expired {
            return;
        }
        if now >= self.deadline {
            self.expire();
            return;
        }
        if let Some(at) = self.speculate_at {
            if now >= at && self.phase == Phase::Gather && self.spare() {
                self.speculate_at = None;
                let digest = self.have_record;
                self.ask(digest);
            }
        }
    }

    fn spare(&self) -> bool {
        self.next < self.candidates.len()
    }

    /// Whether `replicas` meet the level: in the current set, and in the future one while the
    /// range moves.
    fn enough(&self, replicas: &[NodeId]) -> bool {
        let count = |set: &[NodeId]| replicas.iter().filter(|r| set.contains(r)).count();
        count(&self.natural) >= self.required
            && self.future.as_ref().is_none_or(|(future, needed)| count(future) >= *needed)
    }

    fn answered_enough(&self) -> bool {
        if self.future.is_none() {
            // The common case, without collecting.
            return self.answers.len() >= self.required;
        }
        let answered: Vec<NodeId> = self.answers.iter().map(|a| a.0).collect();
        self.enough(&answered)
    }

    /// Asks more replicas (digests) until those answered and asked could meet the level in
    /// both sets, while any is left.
    fn top_up(&mut self) {
        if self.future.is_none() {
            return;
        }
        loop {
            let asked: Vec<NodeId> = self
                .answers
                .iter()
                .map(|a| a.0)
                .chain(self.sends.iter().filter_map(|p| match p {
                    Part::Ask { from, .. } => Some(*from),
                    _ => None,
                }))
                .collect();
            if self.enough(&asked) || !self.spare() {
                return;
            }
            self.ask(true);
        }
    }

    fn hintable(&self, id: NodeId) -> bool {
        self.down.iter().find(|d| d.0 == id).is_none_or(|d| d.1 <= self.hint_window)
    }

    fn ask(&mut self, digest: bool) {
        let from = self.candidates[self.next];
        self.next += 1;
        self.data_in_flight += usize::from(!digest);
        let send = Send::Read { to: from, key: self.key.clone(), digest };
        self.sends.push(send, Part::Ask { from, digest });
    }

    fn set_answer(&mut self, from: NodeId, v: Option<Version>) {
        if let Some(a) = self.answers.iter_mut().find(|a| a.0 == from) {
            a.1 = v;
        }
    }

    /// Enough answers: fetch the newest record if only a digest has it, else repair.
    fn resolve(&mut self) {
        if self.phase == Phase::Gather {
            self.phase = Phase::Resolve;
            self.claims = self
                .answers
                .iter()
                .filter(|(_, v)| {
                    v.is_some_and(|v| self.best.as_ref().is_none_or(|b| v > b.version))
                })
                .map(|(id, v)| (*id, v.unwrap_or_default()))
                .collect();
            self.claims.sort_by_key(|c| std::cmp::Reverse(c.1));
            self.claims.reverse(); // popped from the back: newest first
        }
        if self.sends.iter().any(|p| matches!(p, Part::Fetch { .. })) {
            return;
        }
        if let Some((holder, claim)) = self.claims.pop() {
            if self.best.as_ref().is_some_and(|b| b.version >= claim) {
                // Every claim left is older still.
                self.claims.clear();
            } else {
                let send = Send::Read { to: holder, key: self.key.clone(), digest: false };
                self.sends.push(send, Part::Fetch { from: holder });
                return;
            }
        }
        if let Some((id, claim)) = self.failed_claim {
            if self.best.as_ref().is_none_or(|b| b.version < claim) {
                return self.finish(Err(KvError::Timeout(format!(
                    "read: replica {id} reported a newer version but did not send it within \
                     {} ms",
                    self.read_timeout.as_millis()
                ))));
            }
        }
        self.repair();
    }

    fn repair(&mut self) {
        self.phase = Phase::Repair;
        let Some(best) = self.best.clone() else {
            // No replica has the key: nothing to repair.
            self.holders = self.answers.iter().map(|a| a.0).collect();
            return self.check_repaired();
        };
        self.holders = self
            .answers
            .iter()
            .filter(|(_, v)| v.is_some_and(|v| v >= best.version))
            .map(|a| a.0)
            .collect();
        let mut stale: Vec<NodeId> = self
            .answers
            .iter()
            .filter(|(_, v)| v.is_none_or(|v| v < best.version))
            .map(|(id, _)| *id)
            .collect();
        for id in &self.unreadable {
            if !stale.contains(id) && !self.answers.iter().any(|a| a.0 == *id) {
                stale.push(*id);
            }
        }
        for to in stale {
            self.repaired += 1;
            self.sends.push(Send::Write { to, record: best.clone() }, Part::Repair { to });
        }
        self.check_repaired();
    }

    fn check_repaired(&mut self) {
        if self.phase != Phase::Repair {
            return;
        }
        if self.enough(&self.holders) {
            let read = Read {
                record: self.best.clone(),
                replicas: self.answers.len() as u32,
                repaired: self.repaired,
            };
            self.finish(Ok(read));
        } else if !self.sends.iter().any(|p| matches!(p, Part::Repair { .. })) {
            self.fail_repair();
        }
    }

    fn fail_gather(&mut self) {
        let (level, n, required) = (self.level, self.n, self.required);
        self.finish(Err(KvError::Timeout(format!(
            "{level} read: {} of {n} replicas answered within {} ms, {required} needed",
            self.answers.len(),
            self.read_timeout.as_millis()
        ))));
    }

    fn fail_repair(&mut self) {
        let (level, required) = (self.level, self.required);
        self.finish(Err(KvError::Timeout(format!(
            "{level} read: read repair brought the newest version to {} of the {required} \
             replicas needed within {} ms",
            self.holders.len(),
            self.read_timeout.as_millis()
        ))));
    }

    fn finish(&mut self, r: Result<Read, KvError>) {
        if self.phase != Phase::Done {
            self.phase = Phase::Done;
            self.result = Some(r);
        }
    }

    fn expire(&mut self) {
        self.expired = true;
        match self.phase {
            Phase::Gather => self.fail_gather(),
            Phase::Resolve => {
                let claim = self.claims.last().copied().or(self.failed_claim);
                let who = claim.map_or(String::new(), |(id, _)| format!(" {id}"));
                self.finish(Err(KvError::Timeout(format!(
                    "read: replica{who} reported a newer version but did not send it within {} ms",
                    self.read_timeout.as_millis()
                ))));
            }
            Phase::Repair => self.fail_repair(),
            Phase::Done => {}
        }
        // Replicas that were being repaired and did not answer get hints instead.
        let late = self.sends.abandon(|p| !matches!(p, Part::Hint));
        for part in late {
            if let Part::Repair { to } = part {
                if to != self.me && self.hintable(to) {
                    if let Some(best) = self.best.clone() {
                        self.sends.push(Send::Hint { target: to, record: best }, Part::Hint);
                    }
                }
            }
        }
    }
}
