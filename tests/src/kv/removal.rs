//! `starling removenode` in the simulator, as `node/src/kv/bootstrap.rs` does it
//! (`remove_node`, `gainers_stream`, `stream_pending`, `keep_removals`).
//!
//! **The remover** (any normal, ready node asked to remove a dead one) refuses unless the node
//! is on the ring, is not itself, gossip reports it down, and at least `N` other nodes stay. It
//! adds the node to its `removing` list (stored, gossiped): every node then treats it as
//! leaving, so its ranges' new owners get the writes from then on. Once its own view shows the
//! node leaving and the ring is agreed, and one write timeout later (writes coordinated before
//! every node saw the move have finished), it asks each node that gains ranges, one after the
//! other and itself included, to stream them. Then it moves the node from `removing` to
//! `removed` (stored, gossiped). A gainer that is down or fails ends the attempt: the node stays
//! announced as leaving, and asking again resumes (records are applied by version, so a second
//! stream moves only what is missing).
//!
//! **A gainer** streams each pending range from every up natural replica, at least a quorum of
//! them per range, merging by version, and answers with the records it received.
//!
//! **Every node** keeps every removal it heard of, stored and in its own gossip state, so the
//! fact outlives the remover; a node that finds itself removed records `left`.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use starling_gossip::Command;
use starling_kv::view;
use starling_ring::{NodeId, NodeStatus};

use super::membership::Streams;
use super::{ErrCode, KvProc, Msg, Pending, Req, Resp};

/// How long a remover waits for one gainer's streams (`bootstrap::REMOVE_STREAM` is 2 min over
/// QUIC, which retransmits; the simulator's network loses messages for good, and its streams
/// are small, so a lost ask is given up sooner and the removal asked again).
pub const REMOVE_STREAM: Duration = Duration::from_secs(15);
/// How long a remover waits for the ring to show the removal agreed (`REMOVE_AGREEMENT`).
pub const REMOVE_AGREEMENT: Duration = Duration::from_secs(60);

/// Why a removal was refused at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoveRefused {
    NotReady,
    Busy,
    NotOnRing,
    IsSelf,
    Up,
    TooFew { staying: usize },
}

/// A removal this node runs.
#[derive(Debug, Clone)]
pub struct Removal {
    target: NodeId,
    step: Step,
}

#[derive(Debug, Clone)]
enum Step {
    /// Waiting for the ring to show the node leaving, agreed; then one write timeout.
    Agree { give_up: Instant, settled_at: Option<Instant> },
    /// Asking the gainers one by one.
    Asking(GainerAsk),
}

/// `gainers_stream`: each node that gains ranges (in the ring as it is now) is asked in turn to
/// stream them (`StreamPending`), this node included. A removal and a leave both run it.
#[derive(Debug, Clone)]
pub struct GainerAsk {
    gainers: Vec<NodeId>,
    /// The gainer asked now (or next).
    next: usize,
    asked: bool,
    /// Records the gainers received.
    pub streamed: u64,
    /// Failed asks still allowed before giving up, and when the next ask may go (all gainers
    /// are asked again then, from the ring as it is).
    retries: u32,
    not_before: Option<Instant>,
}

/// Pause before a failed gainer is asked again (a leave: `bootstrap::decommission`).
pub const ASK_RETRY: Duration = Duration::from_secs(1);

/// Where a [`GainerAsk`] is.
#[derive(Debug)]
pub enum AskState {
    Running,
    Done(u64),
    Failed(&'static str),
}

impl GainerAsk {
    /// The gainers of the ring `view` has now; a failed ask is repeated `retries` times.
    pub fn new(view: &starling_kv::RingView, retries: u32) -> GainerAsk {
        let gainers = view
            .ring
            .nodes()
            .map(|n| n.id)
            .filter(|id| !view.ring.pending_ranges(*id, view.rf).is_empty())
            .collect();
        GainerAsk { gainers, next: 0, asked: false, streamed: 0, retries, not_before: None }
    }

    /// An ask failed: asked again after [`ASK_RETRY`] while retries are left.
    fn failed(&mut self, now: Instant, why: &'static str) -> AskState {
        if self.retries == 0 {
            return AskState::Failed(why);
        }
        self.retries -= 1;
        self.asked = false;
        self.not_before = Some(now + ASK_RETRY);
        AskState::Running
    }
}

/// The streams a gainer runs for leaves and removals, and who waits for their outcome.
#[derive(Debug, Clone, Default)]
pub struct GainerStreams {
    pub streams: Streams,
    pub waiting: Vec<(SocketAddr, u64)>,
}

impl KvProc {
    /// `starling removenode NODE` asked of this node.
    pub fn remove_node(&mut self, target: NodeId, now: Instant) -> Result<(), RemoveRefused> {
        if !self.ready || !matches!(self.phase().name(), "normal") {
            return Err(RemoveRefused::NotReady);
        }
        if self.removal.is_some() {
            return Err(RemoveRefused::Busy);
        }
        if target == self.spec.id {
            return Err(RemoveRefused::IsSelf);
        }
        let view = self.view.clone();
        if view.ring.node(target).is_none() {
            return Err(RemoveRefused::NotOnRing);
        }
        if !view.down.contains_key(&target) {
            return Err(RemoveRefused::Up);
        }
        let staying =
            view.ring.nodes().filter(|n| n.id != target && n.status != NodeStatus::Leaving).count();
        if staying < view.rf {
            return Err(RemoveRefused::TooFew { staying });
        }
        self.disk.removing.insert(target);
        self.publish_ids(view::keys::REMOVING, &self.disk.removing.clone(), now);
        self.removal = Some(Removal {
            target,
            step: Step::Agree { give_up: now + REMOVE_AGREEMENT, settled_at: None },
        });
        self.stats.removals_started += 1;
        self.next_change = now;
        Ok(())
    }

    /// The removal this node runs, for diagnostics.
    pub fn removal_state(&self) -> String {
        let streams = self.gainer_streams.as_ref().map(|g| (g.streams.outcome(), g.waiting.len()));
        let mine = self.view.ring.digest();
        let disagree: Vec<String> = self
            .g
            .members()
            .filter(|m| m.state == starling_gossip::MemberState::Alive)
            .filter(|m| m.node_state.get(view::keys::RING) != Some(mine.as_str()))
            .map(|m| m.id.to_string())
            .collect();
        format!(
            "{:?} / gainer streams {streams:?} / converged {} / alive members on another ring {disagree:?}",
            self.removal,
            self.g.converged()
        )
    }

    /// Whether this node runs a removal.
    pub fn removing(&self) -> Option<NodeId> {
        self.removal.as_ref().map(|r| r.target)
    }

    fn publish_ids(&mut self, key: &str, ids: &BTreeSet<NodeId>, now: Instant) {
        let value = view::format_ids(ids);
        self.g.handle_command(now, Command::Set { key: key.into(), value });
        self.rebuild_view(now);
        self.after_gossip(now);
    }

    /// Publishes the removals stored on disk again (a restart), as `keep_removals` does.
    pub(super) fn republish_removals(&mut self, now: Instant) {
        for (key, ids) in [
            (view::keys::REMOVED, self.disk.removed.clone()),
            (view::keys::REMOVING, self.disk.removing.clone()),
        ] {
            if !ids.is_empty() {
                let value = view::format_ids(&ids);
                self.g.handle_command(now, Command::Set { key: key.into(), value });
            }
        }
    }

    /// `keep_removals`: every removal heard of is kept (stored, gossiped by this node too); a
    /// node that finds itself removed (it was down when the removal ran) records `left`.
    pub(super) fn keep_removals(&mut self, now: Instant) {
        let fresh: Vec<NodeId> = self
            .view
            .removed
            .iter()
            .filter(|id| !self.disk.removed.contains(id))
            .copied()
            .collect();
        if !fresh.is_empty() {
            self.disk.removed.extend(fresh);
            let value = view::format_ids(&self.disk.removed);
            self.g.handle_command(now, Command::Set { key: view::keys::REMOVED.into(), value });
        }
        if self.view.removed.contains(&self.spec.id)
            && self.disk.ring_status.as_deref() != Some("left")
        {
            self.disk.ring_status = Some("left".into());
            let set = Command::Set {
                key: starling_gossip::state::keys::STATUS.into(),
                value: "left".into(),
            };
            self.g.handle_command(now, set);
        }
    }

    /// Moves this node's removal on (called from the ring-change timer).
    pub(super) fn removal_progress(&mut self, now: Instant) {
        let Some(mut r) = self.removal.take() else { return };
        match &mut r.step {
            Step::Agree { give_up, settled_at } => {
                let leaving =
                    self.view.ring.node(r.target).map(|n| n.status) == Some(NodeStatus::Leaving);
                match settled_at {
                    None if leaving && self.ring_agreed() => {
                        *settled_at = Some(now + self.spec.kv.write_timeout)
                    }
                    None if now >= *give_up => return self.removal_failed("ring not agreed"),
                    Some(at) if now >= *at => {
                        r.step = Step::Asking(GainerAsk::new(&self.view, 0));
                        self.removal = Some(r);
                        return self.removal_progress(now);
                    }
                    _ => {}
                }
            }
            Step::Asking(ask) => {
                let mut ask = ask.clone();
                let state = self.ask_gainers(&mut ask, now);
                match state {
                    AskState::Running => r.step = Step::Asking(ask),
                    AskState::Done(n) => return self.removal_done(r.target, n, now),
                    AskState::Failed(why) => return self.removal_failed(why),
                }
            }
        }
        self.removal = Some(r);
    }

    /// Asks the next gainer, unless one is being asked; says where the asking is.
    pub(super) fn ask_gainers(&mut self, ask: &mut GainerAsk, now: Instant) -> AskState {
        if ask.asked || ask.not_before.is_some_and(|t| now < t) {
            return AskState::Running;
        }
        if ask.not_before.take().is_some() {
            // Asked again from the start, with the gainers of the ring as it is now (one may
            // have left since); those that have their ranges already stream nothing.
            let fresh = GainerAsk::new(&self.view, ask.retries);
            ask.gainers = fresh.gainers;
            ask.next = 0;
        }
        let Some(&g) = ask.gainers.get(ask.next) else {
            return AskState::Done(ask.streamed);
        };
        ask.asked = true;
        // This node too is asked over the network (`starlingd` calls `stream_pending` itself;
        // an answer that comes back later keeps the steps in order here).
        match self.view.addrs.get(&g).copied().filter(|_| self.view.is_up(g)) {
            Some(addr) => {
                let deadline = now + REMOVE_STREAM;
                self.send_request(
                    addr,
                    Req::StreamPending,
                    Pending::GainerAsk { gainer: g },
                    deadline,
                );
                AskState::Running
            }
            None => ask.failed(now, "a gainer is down"),
        }
    }

    /// Records a gainer's answer (`None`: it failed or timed out) in `ask`.
    fn gainer_answered(
        ask: &mut GainerAsk,
        gainer: NodeId,
        result: Option<u64>,
        now: Instant,
    ) -> Option<AskState> {
        if ask.gainers.get(ask.next) != Some(&gainer) || !ask.asked {
            return None; // a late answer
        }
        Some(match result {
            Some(n) => {
                ask.streamed += n;
                ask.next += 1;
                ask.asked = false;
                AskState::Running
            }
            None => ask.failed(now, "a gainer's streams failed"),
        })
    }

    /// A gainer's answer (or its failure) for this node's leave or removal.
    pub(super) fn on_gainer_done(&mut self, gainer: NodeId, result: Option<u64>, now: Instant) {
        if let Some(state) =
            self.leave_ask_mut().and_then(|a| Self::gainer_answered(a, gainer, result, now))
        {
            self.next_change = now;
            return self.leave_ask_progress(state, now);
        }
        let Some(r) = self.removal.as_mut() else { return };
        let Step::Asking(ask) = &mut r.step else { return };
        match Self::gainer_answered(ask, gainer, result, now) {
            None => {}
            Some(AskState::Failed(why)) => self.removal_failed(why),
            Some(_) => {
                self.next_change = now;
                self.removal_progress(now);
            }
        }
    }

    fn removal_failed(&mut self, why: &'static str) {
        // The node stays announced as leaving (`removing` kept): asking again resumes.
        self.removal = None;
        self.stats.removals_failed += 1;
        *self.stats.removal_failures.entry(why).or_default() += 1;
    }

    fn removal_done(&mut self, target: NodeId, streamed: u64, now: Instant) {
        self.disk.removed.insert(target);
        self.disk.removing.remove(&target);
        self.stats.removals_done += 1;
        self.stats.records_streamed_for_removals += streamed;
        let (removed, removing) = (self.disk.removed.clone(), self.disk.removing.clone());
        self.g.handle_command(
            now,
            Command::Set { key: view::keys::REMOVED.into(), value: view::format_ids(&removed) },
        );
        self.publish_ids(view::keys::REMOVING, &removing, now);
    }

    /// `StreamPending` (from a leaving or removing node, this one included): streams this
    /// node's pending ranges; the answer goes out when they finish.
    pub(super) fn start_gainer_streams(&mut self, reply: (SocketAddr, u64), now: Instant) {
        if let Some(g) = self.gainer_streams.as_mut() {
            g.waiting.push(reply);
            return;
        }
        let streams = self.new_streams(true, now);
        self.gainer_streams = Some(GainerStreams { streams, waiting: vec![reply] });
        self.gainer_progress();
    }

    /// Finishes the gainer's streams once every task is done.
    pub(super) fn gainer_progress(&mut self) {
        let Some(g) = self.gainer_streams.as_ref() else { return };
        let Some(ok) = g.streams.outcome() else { return };
        let g = self.gainer_streams.take().expect("present");
        let n = g.streams.received;
        for reply in g.waiting {
            self.answer_gainer(reply, ok.then_some(n));
        }
    }

    fn answer_gainer(&mut self, (to, id): (SocketAddr, u64), result: Option<u64>) {
        let body = match result {
            Some(n) => Resp::Streamed(n),
            None => Resp::Error {
                code: ErrCode::Unavailable,
                message: "too few replicas streamed a pending range".into(),
            },
        };
        self.outbox.push_back((to, Msg::Response { id, body }.encode()));
    }
}
