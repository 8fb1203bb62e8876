//! Ring changes of a simulated node, as `node/src/kv/bootstrap.rs` and the `leave` handler of
//! `node/src/node.rs` do them.
//!
//! **Join.** A node started without tokens waits until it has heard of another member, gossip has
//! converged, the ring exists and a ready member computed the same ring (`vouched`), every
//! alive member with a lower id is on it, and half a second has passed; then it allocates its tokens against the future ring, stores them with status
//! `joining` (fsynced), and announces both. Coordinators then send it the writes of its pending
//! ranges. Once every alive member reports its ring digest, and one write timeout later, it
//! streams each pending range from every up current replica (`ReplicaScan` pages), at least a
//! quorum of them per range, merging by version; if too few answer it tries again a second
//! later. Then it stores and announces `normal`. A restart during the join resumes it.
//!
//! **Leave.** Refused unless at least `N` other nodes stay on the ring (not leaving). Status
//! `leaving` (stored, announced); once the ring is agreed and one write timeout has passed, each
//! node that gains ranges is asked in turn to stream them from their current replicas (this one
//! included), as `bootstrap::decommission` does over sync sessions (the removal's
//! [`super::removal::GainerAsk`]); then its hints go to their target if it is up, otherwise to a
//! node that stays and is `normal`, which keeps them as a stand-in would. Then it stores `left`,
//! announces it, leaves the gossip cluster and stops once the members confirmed they heard
//! (`Gossip::leave_done`, as `starlingd`'s driver). If a gainer is down or its streams fail, or a page of hints finds no taker,
//! the leave is aborted: status `normal` again, stored and announced. A restart while leaving comes back `normal`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use starling_gossip::state::keys as gossip_keys;
use starling_gossip::{Command, MemberState};
use starling_kv::view;
use starling_ring::{token_of, NodeId, NodeStatus, Range, Token};
use starling_wire::Record;

use super::removal::{AskState, GainerAsk};
use super::{HintKey, KvProc, Pending, Req, Resp, HINT_PAGE, TOKENS_PER_NODE};

/// Records per scan page (`bootstrap::PAGE`).
pub const SCAN_PAGE: usize = 1024;
/// Attempts to hand one batch (of records or hints) over during a leave.
pub const HANDOVER_ATTEMPTS: u32 = 20;
/// Pause between two handover attempts.
pub const HANDOVER_RETRY: Duration = Duration::from_millis(500);
/// A leave asks a gainer whose streams failed again this many times, [`super::removal::ASK_RETRY`] apart,
/// before it gives up (`bootstrap::LEAVE_STREAM_ATTEMPTS`).
pub const LEAVE_ASK_RETRIES: u32 = 9;
/// A join whose streams fell short tries again after this.
pub const STREAM_RETRY: Duration = Duration::from_secs(1);
/// How often the ring-change state machine looks at the view when it waits.
const TICK: Duration = Duration::from_millis(50);

/// Where a node is in its life on the ring.
#[derive(Debug, Clone, Default)]
pub enum Phase {
    /// A member with its tokens (or the join finished).
    #[default]
    Normal,
    /// Started without tokens: waiting for its turn to take them.
    Waiting { since: Instant },
    /// Announced `joining`; waits for the ring to be agreed, then one write timeout.
    JoinAgree { settled_at: Option<Instant> },
    /// Streaming its pending ranges in.
    Streaming(Streams),
    /// The streams fell short: starts them again then.
    JoinRetry { at: Instant },
    /// Announced `leaving`; waits for the ring to be agreed, then one write timeout.
    LeaveAgree { settled_at: Option<Instant> },
    /// Asking the nodes that gain its ranges to stream them.
    LeaveAsk(GainerAsk),
    /// Handing its hints over.
    Hints(HintHandover),
    /// Recorded `left` then: it stops once the members confirmed it.
    Left { at: Instant },
}

impl Phase {
    pub fn name(&self) -> &'static str {
        match self {
            Phase::Normal => "normal",
            Phase::Waiting { .. } => "waiting",
            Phase::JoinAgree { .. } | Phase::Streaming(_) | Phase::JoinRetry { .. } => "joining",
            Phase::LeaveAgree { .. } | Phase::LeaveAsk(_) | Phase::Hints(_) => "leaving",
            Phase::Left { .. } => "left",
        }
    }
}

/// A scan cursor: the last `(token, key)` sent.
pub type Cursor = (Token, Vec<u8>);

#[derive(Debug, Clone)]
pub struct StreamTask {
    range: usize,
    source: NodeId,
    cursor: Option<Cursor>,
    /// `None`: running; `Some(ok)`: finished.
    done: Option<bool>,
}

#[derive(Debug, Clone, Default)]
pub struct Streams {
    /// Each pending range with the number of its current replicas that must stream it.
    ranges: Vec<(Range, usize)>,
    tasks: Vec<StreamTask>,
    /// For a removal's streams (answered to the remover) rather than this node's join.
    removal: bool,
    /// Records received.
    pub received: u64,
}

impl Streams {
    /// `None` while a task runs; then whether every range was streamed by enough replicas.
    pub fn outcome(&self) -> Option<bool> {
        if self.tasks.iter().any(|t| t.done.is_none()) {
            return None;
        }
        Some(self.ranges.iter().enumerate().all(|(r, (_, need))| {
            self.tasks.iter().filter(|t| t.range == r && t.done == Some(true)).count() >= *need
        }))
    }
}

#[derive(Debug, Clone, Default)]
pub struct HintHandover {
    /// Targets with a page in flight.
    in_flight: Vec<NodeId>,
    attempts: BTreeMap<NodeId, u32>,
    next_at: BTreeMap<NodeId, Instant>,
}

/// What a leave request got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaveRefused {
    NotReady,
    NotNormal(&'static str),
    /// Fewer than `N` other nodes would stay.
    TooFew {
        staying: usize,
    },
}

/// Records in `range` held by `data`, in `(token, key)` order, after `after`, at most `limit`;
/// with the cursor to continue from if there may be more (`Storage::scan`).
pub fn scan(
    data: &BTreeMap<Vec<u8>, Record>,
    range: Range,
    after: Option<&Cursor>,
    limit: usize,
) -> (Vec<Record>, Option<Cursor>) {
    let mut all: Vec<(Token, &Record)> = data
        .values()
        .map(|r| (token_of(&r.key), r))
        .filter(|(t, _)| range.contains(*t))
        .filter(|(t, r)| after.is_none_or(|(at, ak)| (*t, &r.key) > (*at, ak)))
        .collect();
    all.sort_by(|a, b| (a.0, &a.1.key).cmp(&(b.0, &b.1.key)));
    let more = all.len() > limit;
    all.truncate(limit.max(1));
    let cursor = more.then(|| all.last().map(|(t, r)| (*t, r.key.clone()))).flatten();
    (all.into_iter().map(|(_, r)| r.clone()).collect(), cursor)
}

impl KvProc {
    /// Where this node is in its life on the ring.
    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    /// When this node recorded `left` (the cluster stops it once its leave is done).
    pub fn left_at(&self) -> Option<Instant> {
        match self.phase {
            Phase::Left { at } => Some(at),
            _ => None,
        }
    }

    /// Stores and announces this node's ring status.
    fn announce(&mut self, status: &str, now: Instant) {
        self.disk.ring_status = Some(status.to_string());
        self.g.handle_command(
            now,
            Command::Set { key: gossip_keys::STATUS.into(), value: status.into() },
        );
        // No gossip event tells a node of its own change: rebuild now, as the driver does.
        self.rebuild_view(now);
        self.after_gossip(now);
    }

    /// Every alive member reports the ring digest this node computed, and gossip converged
    /// (`status.converged` with the ring part, as `bootstrap::wait_for_agreement` waits for).
    pub(super) fn ring_agreed(&self) -> bool {
        if self.view.ring.is_empty() || !self.g.converged() {
            return false;
        }
        let mine = self.view.ring.digest();
        self.g.local_state().get(view::keys::RING) == Some(mine.as_str())
            && self
                .g
                .members()
                .filter(|m| m.state == MemberState::Alive)
                .all(|m| m.node_state.get(view::keys::RING) == Some(mine.as_str()))
    }

    /// `starling leave`: refused (with the reason) unless this node is a normal, ready member
    /// and at least `N` other nodes stay on the ring.
    pub fn leave(&mut self, now: Instant) -> Result<(), LeaveRefused> {
        if !self.ready {
            return Err(LeaveRefused::NotReady);
        }
        if !matches!(self.phase, Phase::Normal) {
            return Err(LeaveRefused::NotNormal(self.phase.name()));
        }
        if self.view.ring.node(self.spec.id).is_none() {
            return Err(LeaveRefused::NotNormal("off the ring"));
        }
        let staying = self.staying();
        if staying < self.view.rf {
            return Err(LeaveRefused::TooFew { staying });
        }
        self.announce("leaving", now);
        self.phase = Phase::LeaveAgree { settled_at: None };
        self.next_change = now;
        Ok(())
    }

    /// Nodes that stay on the ring if this one leaves: neither this node nor leaving.
    fn staying(&self) -> usize {
        let me = self.spec.id;
        self.view.ring.nodes().filter(|n| n.id != me && n.status != NodeStatus::Leaving).count()
    }

    fn abort_leave(&mut self, now: Instant) {
        self.stats.leaves_aborted += 1;
        self.announce("normal", now);
        self.phase = Phase::Normal;
    }

    /// The ring-change state machine's timer.
    pub(super) fn change_timeout(&self) -> Option<Instant> {
        match self.phase {
            _ if self.removal.is_some() => Some(self.next_change),
            Phase::Normal | Phase::Left { .. } => None,
            _ => Some(self.next_change),
        }
    }

    /// Moves the join or leave on (called on every timeout and answer).
    pub(super) fn advance(&mut self, now: Instant) {
        if now < self.next_change {
            return;
        }
        self.next_change = now + TICK;
        match std::mem::take(&mut self.phase) {
            Phase::Normal => {}
            Phase::Left { at } => self.phase = Phase::Left { at },
            Phase::Waiting { since } => {
                self.phase = Phase::Waiting { since };
                self.maybe_take_tokens(since, now);
            }
            Phase::JoinAgree { settled_at } => {
                self.phase = match settled_at {
                    None if self.ring_agreed() => {
                        Phase::JoinAgree { settled_at: Some(now + self.spec.kv.write_timeout) }
                    }
                    Some(at) if now >= at => self.start_streams(now),
                    s => Phase::JoinAgree { settled_at: s },
                };
            }
            Phase::JoinRetry { at } if now >= at => self.phase = self.start_streams(now),
            p @ Phase::JoinRetry { .. } => self.phase = p,
            Phase::Streaming(s) => self.phase = self.streams_progress(s, now),
            Phase::LeaveAgree { settled_at } => {
                self.phase = match settled_at {
                    // Nodes asked to leave at about the same time each saw enough others stay;
                    // once the ring is agreed, every leave announced before is on it: count
                    // again, or three of five nodes could leave, and their keys on two.
                    None if self.ring_agreed() && self.staying() < self.view.rf => {
                        self.phase = Phase::LeaveAgree { settled_at: None };
                        return self.abort_leave(now);
                    }
                    None if self.ring_agreed() => {
                        Phase::LeaveAgree { settled_at: Some(now + self.spec.kv.write_timeout) }
                    }
                    // And once more one write timeout later: a leave announced just before the
                    // agreement may not have reached this node then (its old ring digest
                    // matched), and two nodes leaving together would each count the other.
                    Some(at) if now >= at && self.staying() < self.view.rf => {
                        self.phase = Phase::LeaveAgree { settled_at: Some(at) };
                        return self.abort_leave(now);
                    }
                    Some(at) if now >= at => {
                        Phase::LeaveAsk(GainerAsk::new(&self.view, LEAVE_ASK_RETRIES))
                    }
                    s => Phase::LeaveAgree { settled_at: s },
                };
                if matches!(self.phase, Phase::LeaveAsk(_)) {
                    self.next_change = now;
                    self.advance(now);
                }
            }
            Phase::LeaveAsk(ask) => {
                self.phase = Phase::LeaveAsk(ask);
                self.leave_ask_progress(AskState::Running, now);
            }
            Phase::Hints(h) => self.hints_progress(h, now),
        }
        self.removal_progress(now);
    }

    fn maybe_take_tokens(&mut self, since: Instant, now: Instant) {
        let view = self.view.clone();
        let me = self.spec.id;
        let others: Vec<NodeId> = view.others_up().collect();
        // The ring must be one a ready member computed too (`vouched`): a seed that restarted
        // and knows only part of the cluster would hand a partial ring, and tokens taken
        // against it place keys where no replica is (writes acknowledged there are lost).
        let ready = !others.is_empty()
            && !view.ring.is_empty()
            && view.vouched
            && self.g.converged()
            && others.iter().all(|id| *id > me || view.ring.node(*id).is_some())
            && now.saturating_duration_since(since) >= Duration::from_millis(500);
        if !ready {
            return;
        }
        let future = view.ring.future();
        let tokens = future.allocate_tokens(me, TOKENS_PER_NODE, self.spec.rng_seed);
        self.disk.tokens = Some(tokens.clone());
        self.g.handle_command(
            now,
            Command::Set { key: view::keys::TOKENS.into(), value: view::format_tokens(&tokens) },
        );
        self.announce("joining", now);
        self.phase = Phase::JoinAgree { settled_at: None };
    }

    fn start_streams(&mut self, now: Instant) -> Phase {
        let s = self.new_streams(false, now);
        self.streams_progress(s, now)
    }

    /// Streams of this node's pending ranges, each from every up current replica (at least a
    /// quorum of them must finish), with their first scans sent.
    pub(super) fn new_streams(&mut self, removal: bool, now: Instant) -> Streams {
        let view = self.view.clone();
        let mut s = Streams { removal, ..Streams::default() };
        for (range, sources) in view.ring.pending_ranges(view.me, view.rf) {
            let need = (sources.len() / 2 + 1).min(sources.len());
            let r = s.ranges.len();
            s.ranges.push((range, need));
            for src in sources.iter().copied().filter(|x| view.is_up(*x) && *x != view.me) {
                s.tasks.push(StreamTask { range: r, source: src, cursor: None, done: None });
            }
        }
        for t in 0..s.tasks.len() {
            self.send_scan(&mut s, t, now);
        }
        s
    }

    fn send_scan(&mut self, s: &mut Streams, t: usize, now: Instant) {
        let task = &mut s.tasks[t];
        let Some(addr) = self.view.addrs.get(&task.source).copied() else {
            task.done = Some(false);
            return;
        };
        let req = Req::Scan {
            range: s.ranges[task.range].0,
            after: task.cursor.clone(),
            limit: SCAN_PAGE,
        };
        let deadline = now + self.spec.kv.read_timeout;
        self.send_request(addr, req, Pending::Scan { task: t, removal: s.removal }, deadline);
    }

    /// A scan page (or its failure) for stream task `task` (of a join, or of a removal's
    /// streams).
    pub(super) fn on_scan(&mut self, task: usize, removal: bool, body: Option<Resp>, now: Instant) {
        let s = if removal {
            match self.gainer_streams.as_mut() {
                Some(g) => std::mem::take(&mut g.streams),
                None => return, // given up since
            }
        } else {
            match std::mem::take(&mut self.phase) {
                Phase::Streaming(s) => s,
                other => {
                    self.phase = other;
                    return; // a page of streams given up since
                }
            }
        };
        let mut s = s;
        if task < s.tasks.len() && s.tasks[task].done.is_none() {
            match body {
                Some(Resp::Records { records, cursor }) if !self.store.full => {
                    let at = self.synced_at(now);
                    self.stats.records_streamed += records.len() as u64;
                    s.received += records.len() as u64;
                    for r in records {
                        let token = starling_ring::token_of(&r.key);
                        self.disk.put(at, r);
                        self.segments.touched(token);
                    }
                    match cursor {
                        Some(c) => {
                            s.tasks[task].cursor = Some(c);
                            self.send_scan(&mut s, task, now);
                        }
                        None => s.tasks[task].done = Some(true),
                    }
                }
                _ => s.tasks[task].done = Some(false),
            }
        }
        if removal {
            if let Some(g) = self.gainer_streams.as_mut() {
                g.streams = s;
            }
            self.gainer_progress();
        } else {
            self.phase = self.streams_progress(s, now);
        }
    }

    fn streams_progress(&mut self, s: Streams, now: Instant) -> Phase {
        match s.outcome() {
            None => Phase::Streaming(s),
            Some(false) => {
                self.stats.stream_retries += 1;
                Phase::JoinRetry { at: now + STREAM_RETRY }
            }
            Some(true) => {
                self.stats.joins_done += 1;
                self.announce("normal", now);
                Phase::Normal
            }
        }
    }

    /// The leave's gainer asking, if it is there.
    pub(super) fn leave_ask_mut(&mut self) -> Option<&mut GainerAsk> {
        match &mut self.phase {
            Phase::LeaveAsk(a) => Some(a),
            _ => None,
        }
    }

    /// Moves the leave on from where its gainer asking is: after an answer the next gainer is
    /// asked.
    pub(super) fn leave_ask_progress(&mut self, state: AskState, now: Instant) {
        let state = match state {
            AskState::Running => {
                let Phase::LeaveAsk(mut ask) = std::mem::take(&mut self.phase) else { return };
                let s = self.ask_gainers(&mut ask, now);
                self.phase = Phase::LeaveAsk(ask);
                s
            }
            s => s,
        };
        match state {
            AskState::Running => {}
            AskState::Done(n) => {
                self.stats.records_handed += n;
                self.phase = Phase::Hints(HintHandover::default());
                self.hints_progress(HintHandover::default(), now);
            }
            AskState::Failed(_) => self.abort_leave(now),
        }
    }

    /// `Kv::hand_over_hints`: each target's hints to the target if it is up, otherwise to a node
    /// that stays and is normal; expired hints and those of members that left are dropped.
    fn hints_progress(&mut self, mut h: HintHandover, now: Instant) {
        let window_ms = self.spec.kv.hint_window.as_millis() as u64;
        let wall = self.wall_ms(now);
        let at = self.synced_at(now);
        let view = self.view.clone();
        let mut by_target: BTreeMap<NodeId, Vec<HintKey>> = BTreeMap::new();
        for k in self.disk.hints.keys() {
            by_target.entry(k.0).or_default().push(k.clone());
        }
        let dead: Vec<HintKey> = by_target
            .values()
            .flatten()
            .filter(|k| view.left.contains(&k.0) || k.1.millis().saturating_add(window_ms) < wall)
            .cloned()
            .collect();
        for k in &dead {
            self.disk.del_hint(at, k);
        }
        self.stats.hints_dropped += dead.len() as u64;
        by_target.retain(|_, ks| {
            ks.retain(|k| !dead.contains(k));
            !ks.is_empty()
        });
        if by_target.is_empty() && h.in_flight.is_empty() {
            return self.record_left(now);
        }
        for (target, keys) in by_target {
            if h.in_flight.contains(&target) || h.next_at.get(&target).is_some_and(|t| *t > now) {
                continue;
            }
            if h.attempts.get(&target).copied().unwrap_or(0) >= HANDOVER_ATTEMPTS {
                self.phase = Phase::Hints(h);
                return self.abort_leave(now);
            }
            let page: Vec<HintKey> = keys.into_iter().take(HINT_PAGE).collect();
            let records: Vec<Record> =
                page.iter().filter_map(|k| self.disk.hints.get(k).cloned()).collect();
            // The lowest id among them (the address map's order would make runs differ).
            let keeper = view
                .others_up()
                .filter(|id| *id != target)
                .filter(|id| view.ring.node(*id).is_some_and(|n| n.status == NodeStatus::Normal))
                .min();
            let (to, req) = if target != self.spec.id && view.is_up(target) {
                (Some(target), Req::Write(records))
            } else {
                (keeper, Req::Hint { target, records })
            };
            match to.and_then(|t| view.addrs.get(&t).copied()) {
                Some(addr) => {
                    h.in_flight.push(target);
                    let deadline = now + self.spec.kv.write_timeout;
                    let pending = Pending::HintHandover { target, hints: page };
                    self.send_request(addr, req, pending, deadline);
                }
                None => {
                    *h.attempts.entry(target).or_default() += 1;
                    h.next_at.insert(target, now + HANDOVER_RETRY);
                }
            }
        }
        self.phase = Phase::Hints(h);
    }

    /// The answer to a page of hints handed over.
    pub(super) fn on_hint_handover(
        &mut self,
        target: NodeId,
        hints: Vec<HintKey>,
        body: Option<Resp>,
        now: Instant,
    ) {
        let Phase::Hints(mut h) = std::mem::take(&mut self.phase) else { return };
        h.in_flight.retain(|t| *t != target);
        match body {
            Some(Resp::Ok | Resp::Written(_)) => {
                let at = self.synced_at(now);
                for k in &hints {
                    self.disk.del_hint(at, k);
                }
                self.stats.hints_handed += hints.len() as u64;
            }
            _ => {
                *h.attempts.entry(target).or_default() += 1;
                h.next_at.insert(target, now + HANDOVER_RETRY);
            }
        }
        self.next_change = now;
        self.hints_progress(h, now);
    }

    fn record_left(&mut self, now: Instant) {
        self.stats.leaves_done += 1;
        self.announce("left", now);
        self.g.handle_command(now, Command::Leave);
        self.after_gossip(now);
        self.phase = Phase::Left { at: now };
    }
}
