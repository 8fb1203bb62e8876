//! One write (a put or a delete), from placement to its result.

use std::time::{Duration, Instant};

use starling_ring::{token_of, NodeId, Token};
use starling_wire::{check_key_value, Consistency, Record, Version};

use crate::{
    required_for_write, up_count, Answer, KvConfig, KvError, Outgoing, RingView, Send, SendId,
    Sends,
};

/// A successful write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    pub version: Version,
    pub acked: u32,
    pub required: u32,
    /// A replica that acknowledged already held this newer version: the write is durable but lost
    /// to a write that is newer by version (last write wins), so a read will not return it.
    pub superseded: Option<Version>,
}

/// What one send of a write stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    /// The replica's own copy.
    Direct(NodeId),
    /// A stand-in keeps the copy for this down replica.
    HandOff(NodeId),
    /// This node keeps the copy for this replica.
    Hint(NodeId),
}

/// Sloppy quorum (Dynamo §4.6): for each write target gossip shows down, a stand-in: the next up
/// ring node clockwise (in preference-list order past the replicas) that is not a target itself.
/// Pairs `(down target, stand-in)`; fewer when the ring has no more healthy nodes. A replica
/// down longer than the hint window gets no hints, so no stand-in either.
fn fallbacks(
    view: &RingView,
    token: Token,
    targets: &[NodeId],
    hint_window: Duration,
    now: Instant,
) -> Vec<(NodeId, NodeId)> {
    let down: Vec<NodeId> = targets
        .iter()
        .filter(|t| !view.is_up(**t))
        .filter(|t| view.down_for(**t, now).is_none_or(|d| d <= hint_window))
        .copied()
        .collect();
    if down.is_empty() {
        return Vec::new();
    }
    let everyone = view.ring.replicas(token, view.ring.nodes().count());
    let spare = everyone
        .into_iter()
        .filter(|id| !targets.contains(id) && view.is_up(*id) && !view.left.contains(id));
    down.into_iter().zip(spare).collect()
}

/// One write in flight: a state machine that sends the record to the key's replicas (or their
/// stand-ins), tallies the acknowledgements against the level, keeps hints for the replicas that
/// fail, and gives its result once the level is met, cannot be met, or the deadline passes.
///
/// The op stays alive after its result until every send is answered or abandoned
/// ([`WriteOp::is_finished`]): replicas that answer late still turn into hints.
#[derive(Debug)]
pub struct WriteOp {
    me: NodeId,
    level: Consistency,
    required: usize,
    targets: usize,
    record: Record,
    deadline: Instant,
    write_timeout: Duration,
    /// Targets down longer than the hint window: no hint is kept for them.
    unhintable: Vec<NodeId>,
    sends: Sends<Part>,
    stored: usize,
    handed: usize,
    hinted: usize,
    newer: Option<Version>,
    result: Option<Result<Written, KvError>>,
    decided: bool,
    expired: bool,
}

impl WriteOp {
    /// Plans the write of `record` (its version already assigned) at `level`, and queues its
    /// sends. Fails at once, with nothing sent, if the key or value is not valid, or gossip shows
    /// too few replicas (and stand-ins) up for the level.
    pub fn start(
        now: Instant,
        cfg: &KvConfig,
        view: &RingView,
        level: Consistency,
        record: Record,
    ) -> Result<WriteOp, KvError> {
        check_key_value(&record.key, record.value.as_deref()).map_err(KvError::BadRequest)?;
        if view.ring.is_empty() {
            return Err(KvError::Unavailable(
                "no node owns any token yet (the cluster is still starting)".into(),
            ));
        }
        let token = token_of(&record.key);
        let (natural, pending) = view.placement.write_set(token);
        let required = required_for_write(level, natural.len(), pending.len());
        let targets: Vec<NodeId> = natural.iter().chain(pending).copied().collect();
        let up = targets.iter().filter(|t| view.is_up(**t)).count();
        // Stand-ins count toward `one` and `quorum`; `all` means every replica, and `any` counts
        // this node's own hints already.
        let sloppy = cfg.sloppy_quorum && matches!(level, Consistency::One | Consistency::Quorum);
        let fallbacks = if sloppy {
            fallbacks(view, token, &targets, cfg.hint_window, now)
        } else {
            Vec::new()
        };
        if level != Consistency::Any && up + fallbacks.len() < required {
            return Err(KvError::Unavailable(format!(
                "{level} write needs {required} of {} replicas, but only {}{}",
                targets.len(),
                up_count(up),
                if sloppy {
                    match fallbacks.len() {
                        1 => " and 1 other node can stand in".to_string(),
                        n => format!(" and {n} other nodes can stand in"),
                    }
                } else {
                    String::new()
                }
            )));
        }
        let unhintable = targets
            .iter()
            .filter(|t| view.down_for(**t, now).is_some_and(|d| d > cfg.hint_window))
            .copied()
            .collect();
        let mut op = WriteOp {
            me: view.me,
            level,
            required,
            targets: targets.len(),
            record,
            deadline: now + cfg.write_timeout,
            write_timeout: cfg.write_timeout,
            unhintable,
            sends: Sends::default(),
            stored: 0,
            handed: 0,
            hinted: 0,
            newer: None,
            result: None,
            decided: false,
            expired: false,
        };
        for &t in &targets {
            if let Some(&(_, via)) = fallbacks.iter().find(|(down, _)| *down == t) {
                let send = Send::HandOff { via, target: t, record: op.record.clone() };
                op.sends.push(send, Part::HandOff(t));
            } else if view.is_up(t) && (t == op.me || view.addrs.contains_key(&t)) {
                op.sends.push(Send::Write { to: t, record: op.record.clone() }, Part::Direct(t));
            } else {
                op.hint(t);
            }
        }
        op.decide();
        Ok(op)
    }

    /// The version being written.
    pub fn version(&self) -> Version {
        self.record.version
    }

    /// The next thing to send.
    pub fn poll_send(&mut self) -> Option<Outgoing> {
        self.sends.poll()
    }

    /// When [`WriteOp::handle_timeout`] must be called next (`None`: nothing to wait for).
    pub fn poll_timeout(&self) -> Option<Instant> {
        (!self.expired && !self.sends.is_empty()).then_some(self.deadline)
    }

    /// The result, once: `Ok` when the level is met; `Timeout` when it no longer can be or the
    /// deadline passed (the write may exist on the replicas that stored it).
    pub fn poll_result(&mut self) -> Option<Result<Written, KvError>> {
        self.result.take()
    }

    /// True once nothing is awaited any more: the caller may drop the op.
    pub fn is_finished(&self) -> bool {
        self.decided && self.result.is_none() && self.sends.is_empty()
    }

    /// The answer to send `id`. Answers to abandoned sends are ignored.
    pub fn handle_answer(&mut self, _now: Instant, id: SendId, answer: Answer) {
        let Some(part) = self.sends.take(id) else { return };
        let ok = matches!(answer, Answer::Stored { .. });
        match (part, ok) {
            (Part::Direct(_), true) => {
                self.stored += 1;
                if let Answer::Stored { newer: Some(v) } = answer {
                    if v > self.record.version && self.newer.is_none_or(|n| v > n) {
                        self.newer = Some(v);
                    }
                }
            }
            (Part::HandOff(_), true) => self.handed += 1,
            (Part::Hint(_), true) => self.hinted += 1,
            // This node's own store failed: a hint would go to the same store.
            (Part::Direct(t), false) if t == self.me => {}
            (Part::Direct(t) | Part::HandOff(t), false) => self.hint(t),
            (Part::Hint(_), false) => {}
        }
        self.decide();
    }

    /// Time passed. At the deadline an undecided write fails with `timeout`, and the replicas
    /// and stand-ins that have not answered get hints kept on this node instead.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.expired || now < self.deadline {
            return;
        }
        self.expired = true;
        let late = self.sends.abandon(|p| matches!(p, Part::Direct(_) | Part::HandOff(_)));
        for part in late {
            if let Part::Direct(t) | Part::HandOff(t) = part {
                if t != self.me {
                    self.hint(t);
                }
            }
        }
        if !self.decided {
            self.fail();
        }
    }

    fn hint(&mut self, target: NodeId) {
        if !self.unhintable.contains(&target) {
            self.sends.push(Send::Hint { target, record: self.record.clone() }, Part::Hint(target));
        }
    }

    fn counted(&self) -> usize {
        if self.level == Consistency::Any {
            self.stored + self.handed + self.hinted
        } else {
            self.stored + self.handed
        }
    }

    /// Acknowledgements still possible from the sends awaited.
    fn possible(&self) -> usize {
        let any = self.level == Consistency::Any;
        self.sends.iter().filter(|p| any || !matches!(p, Part::Hint(_))).count()
    }

    fn decide(&mut self) {
        if self.decided {
            return;
        }
        let got = self.counted();
        if got >= self.required {
            self.decided = true;
            self.result = Some(Ok(Written {
                version: self.record.version,
                acked: got as u32,
                required: self.required as u32,
                superseded: self.newer,
            }));
        } else if got + self.possible() < self.required {
            self.fail();
        }
    }

    fn fail(&mut self) {
        self.decided = true;
        let (level, required, handed, hinted) =
            (self.level, self.required, self.handed, self.hinted);
        self.result = Some(Err(KvError::Timeout(format!(
            "{level} write: {} of {} replicas acknowledged within {} ms{}, {required} needed{}",
            self.stored + handed,
            self.targets,
            self.write_timeout.as_millis(),
            if handed > 0 { format!(" ({handed} through fallback nodes)") } else { String::new() },
            if hinted > 0 {
                format!(" ({hinted} hinted for later delivery)")
            } else {
                String::new()
            }
        ))));
    }
}
