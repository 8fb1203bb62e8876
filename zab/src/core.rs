//! One ZAB server: election, discovery, synchronization and broadcast (see the crate docs and
//! `ALGORITHM.md`).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::link::Inbox;
use crate::message::{PeerState, ToLeader, ToLearner, Vote};
use crate::sync::{self, Plan, Summary};
use crate::{
    Config, Durable, Entry, Event, Msg, NodeId, NotLeader, Persist, Persisted, Ready, Role,
    SnapshotJob, StateMachine, Status, Zxid,
};

/// One server of a ZAB ensemble (see the crate docs for how to drive it).
#[derive(Debug)]
pub struct Zab<S: StateMachine> {
    s: Shared<S>,
    role: RoleState,
}

/// Everything but the role: the durable state as this server last persisted it, the state
/// machine, and the batch being built for the caller.
#[derive(Debug)]
struct Shared<S: StateMachine> {
    cfg: Config,
    me: NodeId,
    voter: bool,
    sm: S,
    rng: ChaCha8Rng,
    accepted_epoch: u32,
    accepted_leader: NodeId,
    current_epoch: u32,
    /// `current_epoch` as of the last [`Zab::advance`] (what is on disk).
    durable_epoch: u32,
    /// Entries after `log_base` (a few before the snapshot may be kept for DIFFs).
    log: VecDeque<Entry>,
    log_base: Zxid,
    snapshot: Option<(Zxid, Arc<Vec<u8>>)>,
    /// Last transaction applied to the state machine.
    applied: Zxid,
    since_snapshot: u64,
    /// Transactions after which the next snapshot is due: drawn anew for each snapshot, so the
    /// servers of an ensemble do not all encode theirs at once.
    snapshot_after: u64,
    /// Bytes of transactions applied since the last snapshot.
    bytes_since_snapshot: u64,
    /// Bytes after which the next snapshot is due (drawn with `snapshot_after`).
    snapshot_after_bytes: u64,
    /// The snapshot being encoded by the caller (ticket, zxid), and the last ticket given.
    snapshot_job: Option<(u64, Zxid)>,
    tickets: u64,
    /// A job not yet taken by the caller.
    job_out: JobOut<S>,
    /// Last log zxid on disk (as of the last [`Zab::advance`]).
    durable: Zxid,
    round: u64,
    out: Ready,
}

/// A snapshot job not yet taken (a type of its own: `derive(Debug)` would ask the image to be
/// `Debug`).
struct JobOut<S: StateMachine>(Option<SnapshotJob<S::Image>>);

impl<S: StateMachine> std::fmt::Debug for JobOut<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

#[derive(Debug)]
enum RoleState {
    Looking(Looking),
    Learner(Learner),
    Leader(Leader),
}

#[derive(Debug)]
struct Looking {
    vote: Vote,
    /// Votes of this round from voters (this server's own among them, if a voter).
    votes: BTreeMap<NodeId, Vote>,
    /// Votes of servers that follow or lead (any round): a quorum of them agreeing on a leader
    /// that says it leads is an ensemble to join.
    settled: BTreeMap<NodeId, Vote>,
    decide_at: Option<Instant>,
    resend_at: Instant,
}

#[derive(Debug, PartialEq, Eq)]
enum LearnerPhase {
    Connecting,
    Syncing,
    Synced,
}

#[derive(Debug)]
struct Learner {
    leader: NodeId,
    session: u64,
    epoch: u32,
    phase: LearnerPhase,
    inbox: Inbox<ToLearner>,
    seq: u64,
    started: Instant,
    last_heard: Instant,
    connect_at: Instant,
    /// Highest zxid the leader said is committed.
    commit_target: Zxid,
    /// A snapshot arriving in chunks: its zxid, total size, and the bytes so far.
    snap_buf: Option<(Zxid, u64, Vec<u8>)>,
    /// An ACK not sent yet: consecutive ACKs merge into the last (each covers everything before
    /// it), sent before any other message or at the end of the batch.
    ack_pending: Option<Zxid>,
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum LeaderPhase {
    /// Waiting for a quorum of voters to connect (to choose the new epoch).
    Gathering,
    /// The new epoch is proposed; waiting for a quorum to accept it.
    Discovering,
    /// NEWLEADER sent; waiting for a quorum to acknowledge it.
    Syncing,
    Broadcasting,
}

#[derive(Debug)]
enum PeerPhase {
    Connected,
    EpochAcked(Summary),
    /// Synchronization sent up to this zxid, NEWLEADER after it.
    Syncing(Zxid),
    Synced,
}

#[derive(Debug)]
struct Peer {
    session: u64,
    voter: bool,
    accepted_epoch: u32,
    phase: PeerPhase,
    inbox: Inbox<ToLeader>,
    seq: u64,
    last_heard: Instant,
    /// Every proposal up to this zxid is durable on it (once synced).
    acked: Zxid,
    /// A COMMIT not sent yet: consecutive COMMITs to one learner merge into the last (each
    /// covers everything before it), sent before any other message or at the end of the batch.
    commit_pending: Option<Zxid>,
}

#[derive(Debug)]
struct Leader {
    epoch: u32,
    phase: LeaderPhase,
    started: Instant,
    peers: BTreeMap<NodeId, Peer>,
    counter: u32,
    committed: Zxid,
    /// Tags of proposals made here, not yet committed.
    tags: BTreeMap<Zxid, u64>,
    /// Sessions each learner replaced (a late copy of their Connect is ignored).
    retired: BTreeMap<NodeId, Vec<u64>>,
    ping_at: Instant,
}

/// What a handler asks of the role machinery.
enum Next {
    Stay,
    Look(String),
    /// As `Look`, for what the protocol rules out.
    Anomaly(String),
    Lead,
    Follow(NodeId),
}

impl<S: StateMachine> Zab<S> {
    /// A server with identity `me`, its state machine `sm` (empty: the persisted snapshot is
    /// restored into it) and what it persisted before (`Persisted::default()` on first start).
    /// `seed` feeds its randomness (session ids, jitter).
    pub fn new(
        cfg: Config,
        me: NodeId,
        mut sm: S,
        persisted: Persisted,
        seed: u64,
        now: Instant,
    ) -> Result<Zab<S>, String> {
        if cfg.voters.is_empty() {
            return Err("no voters configured".into());
        }
        let mut applied = Zxid::ZERO;
        if let Some((z, data)) = &persisted.snapshot {
            sm.restore(*z, data).map_err(|e| format!("cannot restore the snapshot at {z}: {e}"))?;
            applied = *z;
        }
        if applied < persisted.log_base {
            return Err(format!(
                "the log starts after {}, but the snapshot is at {applied}: the transactions between are lost",
                persisted.log_base
            ));
        }
        let log: VecDeque<Entry> =
            persisted.log.into_iter().filter(|e| e.zxid > persisted.log_base).collect();
        if log.iter().zip(log.iter().skip(1)).any(|(a, b)| a.zxid >= b.zxid) {
            return Err("the log's zxids are not increasing".into());
        }
        let voter = cfg.voters.contains(&me);
        let mut s = Shared {
            voter,
            me,
            sm,
            rng: ChaCha8Rng::seed_from_u64(seed),
            accepted_epoch: persisted.accepted_epoch,
            accepted_leader: persisted.accepted_leader,
            current_epoch: persisted.current_epoch,
            durable_epoch: persisted.current_epoch,
            durable: Zxid::ZERO,
            log,
            log_base: persisted.log_base,
            snapshot: persisted.snapshot,
            applied,
            since_snapshot: 0,
            snapshot_after: 0,
            bytes_since_snapshot: 0,
            snapshot_after_bytes: 0,
            snapshot_job: None,
            tickets: 0,
            job_out: JobOut(None),
            round: 0,
            out: Ready::default(),
            cfg,
        };
        s.durable = s.last_zxid();
        s.draw_snapshot_after();
        let role = s.looking(now);
        Ok(Zab { s, role })
    }

    /// The state machine (read it; it changes only through committed transactions).
    pub fn state(&self) -> &S {
        &self.s.sm
    }

    /// The state machine, for what it keeps that is not replicated (a server's own watches,
    /// the outcomes it reads back). Changing replicated state through it breaks replication.
    pub fn state_mut(&mut self) -> &mut S {
        &mut self.s.sm
    }

    pub fn id(&self) -> NodeId {
        self.s.me
    }

    /// The batch to persist, send and act on. Persist `persist` durably first, then send
    /// `messages` (or send them first, or while persisting, when [`Ready::send_first`] says
    /// so), then call [`Zab::advance`]; no other input in between.
    pub fn ready(&mut self) -> Ready {
        // Merged ACKs and COMMITs leave at the end of the batch.
        let broadcasting = match &mut self.role {
            RoleState::Leader(l) => {
                l.flush(&mut self.s);
                l.phase == LeaderPhase::Broadcasting
            }
            RoleState::Learner(f) => {
                f.flush(&mut self.s);
                false
            }
            RoleState::Looking(_) => false,
        };
        let mut r = std::mem::take(&mut self.s.out);
        // The leader's own acknowledgement is `durable`, moved only by `advance`: what it sends
        // claims nothing about its own disk. A learner's ACK does, and an epoch change must be
        // on disk before anyone hears of it.
        r.send_first = broadcasting
            && r.persist
                .iter()
                .all(|p| matches!(p, Persist::Append(_) | Persist::CompactThrough(_)));
        r.durable = Durable { zxid: self.s.last_zxid(), epoch: self.s.current_epoch };
        r
    }

    /// A snapshot for the caller to encode, if one is due (see [`SnapshotJob`]); ask after
    /// each [`Zab::ready`].
    pub fn snapshot_job(&mut self) -> Option<SnapshotJob<S::Image>> {
        self.s.job_out.0.take()
    }

    /// A [`SnapshotJob`]'s snapshot is saved (`data`, its bytes, are what a learner that needs
    /// a SNAP is sent): the log before the previous snapshot is let go of with the next
    /// [`Zab::ready`]. A stale ticket is ignored.
    pub fn snapshot_saved(&mut self, ticket: u64, data: Vec<u8>) {
        self.s.finish_snapshot(ticket, data);
    }

    /// A [`SnapshotJob`] could not be saved (a full disk, or a leader's SNAP came first): the
    /// log is kept whole, and the next snapshot is taken after another interval.
    pub fn snapshot_failed(&mut self, ticket: u64) {
        if self.s.snapshot_job.is_some_and(|(t, _)| t == ticket) {
            self.s.snapshot_job = None;
        }
    }

    /// Everything in the batches taken so far is on disk (and their messages are sent).
    pub fn advance(&mut self, now: Instant) {
        let d = Durable { zxid: self.s.last_zxid(), epoch: self.s.current_epoch };
        self.advance_to(now, d);
    }

    /// A batch taken earlier is on disk, with every batch before it (pipelined, see [`Ready`]):
    /// `durable` is its [`Ready::durable`]. Marks come in the order the batches were taken; each
    /// says what the disk held at some moment, so the leader's own acknowledgement never runs
    /// ahead of its disk (it may lag behind it until the next mark).
    pub fn advance_to(&mut self, now: Instant, durable: Durable) {
        self.s.durable = durable.zxid;
        self.s.durable_epoch = durable.epoch;
        if let RoleState::Leader(l) = &mut self.role {
            let next = l.progress(&mut self.s);
            self.transition(now, next);
        }
    }

    pub fn handle_message(&mut self, now: Instant, from: NodeId, msg: Msg) {
        if from == self.s.me {
            return;
        }
        let msg = match msg {
            Msg::Vote(v) => {
                let next = self.on_vote(now, from, v);
                self.transition(now, next);
                return;
            }
            other => other,
        };
        let next = match (&mut self.role, msg) {
            (RoleState::Leader(l), Msg::Connect { session, accepted_epoch, accepted_leader }) => {
                l.on_connect(&mut self.s, now, from, session, (accepted_epoch, accepted_leader))
            }
            (RoleState::Leader(l), Msg::ToLeader { session, seq, body }) => {
                l.on_sequenced(&mut self.s, now, from, session, seq, body)
            }
            (RoleState::Learner(f), Msg::ToLearner { session, seq, body }) => {
                if from != f.leader || session != f.session {
                    Next::Stay
                } else {
                    f.on_sequenced(&mut self.s, now, seq, body)
                }
            }
            _ => Next::Stay,
        };
        self.transition(now, next);
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        let next = match &mut self.role {
            RoleState::Looking(l) => {
                if l.decide_at.is_some_and(|t| t <= now) {
                    l.decide_at = None;
                    match l.decision(&self.s) {
                        Some(leader) if leader == self.s.me => Next::Lead,
                        Some(leader) => Next::Follow(leader),
                        None => Next::Stay,
                    }
                } else {
                    if l.resend_at <= now {
                        self.s.broadcast_vote(&l.vote);
                        let jitter =
                            self.s.rng.gen_range(0..=self.s.cfg.vote_resend.as_micros() as u64 / 4);
                        l.resend_at =
                            now + self.s.cfg.vote_resend + std::time::Duration::from_micros(jitter);
                    }
                    Next::Stay
                }
            }
            RoleState::Learner(f) => f.on_timeout(&mut self.s, now),
            RoleState::Leader(l) => l.on_timeout(&mut self.s, now),
        };
        self.transition(now, next);
    }

    /// When [`Zab::handle_timeout`] wants to run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.role {
            RoleState::Looking(l) => Some(l.decide_at.map_or(l.resend_at, |d| d.min(l.resend_at))),
            RoleState::Learner(f) => Some(f.deadline(&self.s)),
            RoleState::Leader(l) => Some(l.deadline(&self.s)),
        }
    }

    /// Proposes a transaction (leader only, once established). `tag` comes back in
    /// [`Event::Committed`] or [`Event::Unknown`].
    pub fn propose(&mut self, now: Instant, tag: u64, txn: Vec<u8>) -> Result<Zxid, NotLeader> {
        match &mut self.role {
            RoleState::Leader(l) if l.phase == LeaderPhase::Broadcasting => {
                if l.counter == u32::MAX {
                    // The epoch's zxids are used up: a new election starts the next epoch.
                    self.transition(now, Next::Look("this epoch's zxids are used up".into()));
                    return Err(NotLeader::NoLeader);
                }
                l.counter += 1;
                let zxid = Zxid::new(l.epoch, l.counter);
                let entry = Entry { zxid, txn: Arc::new(txn) };
                self.s.append(vec![entry.clone()]);
                l.tags.insert(zxid, tag);
                let to: Vec<NodeId> = l
                    .peers
                    .iter()
                    .filter(|(_, p)| matches!(p.phase, PeerPhase::Syncing(_) | PeerPhase::Synced))
                    .map(|(id, _)| *id)
                    .collect();
                for id in to {
                    l.send(&mut self.s, id, ToLearner::Proposal(entry.clone()));
                }
                Ok(zxid)
            }
            RoleState::Learner(f) if f.phase == LearnerPhase::Synced => {
                Err(NotLeader::Follower(f.leader))
            }
            _ => Err(NotLeader::NoLeader),
        }
    }

    /// The established leader, if this server knows one (itself included).
    pub fn leader(&self) -> Option<NodeId> {
        match &self.role {
            RoleState::Leader(l) if l.phase == LeaderPhase::Broadcasting => Some(self.s.me),
            RoleState::Learner(f) if f.phase == LearnerPhase::Synced => Some(f.leader),
            _ => None,
        }
    }

    pub fn role(&self) -> Role {
        match &self.role {
            RoleState::Looking(_) => Role::Looking,
            RoleState::Leader(l) => {
                Role::Leading { epoch: l.epoch, established: l.phase == LeaderPhase::Broadcasting }
            }
            RoleState::Learner(f) => f.role(&self.s),
        }
    }

    pub fn status(&self) -> Status {
        let committed = match &self.role {
            RoleState::Leader(l) => l.committed.max(self.s.applied),
            _ => self.s.applied,
        };
        Status {
            role: self.role(),
            accepted_epoch: self.s.accepted_epoch,
            current_epoch: self.s.current_epoch,
            last_zxid: self.s.last_zxid(),
            committed,
            log_entries: self.s.log.len(),
            snapshot_zxid: self.s.snapshot.as_ref().map_or(Zxid::ZERO, |(z, _)| *z),
            snapshot_bytes: self.s.snapshot.as_ref().map_or(0, |(_, d)| d.len()),
            synced_learners: match &self.role {
                RoleState::Leader(l) => {
                    l.peers.values().filter(|p| matches!(p.phase, PeerPhase::Synced)).count()
                }
                _ => 0,
            },
        }
    }

    /// The last transaction applied to the state machine.
    pub fn applied(&self) -> Zxid {
        self.s.applied
    }

    pub fn last_zxid(&self) -> Zxid {
        self.s.last_zxid()
    }

    fn on_vote(&mut self, now: Instant, from: NodeId, v: Vote) -> Next {
        let from_voter = self.s.cfg.voters.contains(&from);
        match &mut self.role {
            RoleState::Looking(l) => {
                if v.state == PeerState::Looking {
                    if !from_voter || !self.s.voter {
                        return Next::Stay;
                    }
                    if v.round > l.vote.round {
                        self.s.round = v.round;
                        l.votes.clear();
                        let mine = self.s.own_vote();
                        l.vote = if v.beats(&mine) { Vote { round: v.round, ..v } } else { mine };
                        l.decide_at = None;
                        self.s.broadcast_vote(&l.vote);
                    } else if v.round < l.vote.round {
                        self.s.send(from, Msg::Vote(l.vote));
                        return Next::Stay;
                    } else if v.beats(&l.vote) {
                        l.vote = Vote { round: l.vote.round, ..v };
                        l.decide_at = None;
                        self.s.broadcast_vote(&l.vote);
                    }
                    l.vote.state = PeerState::Looking;
                    l.vote.round = self.s.round;
                    l.votes.insert(self.s.me, l.vote);
                    l.record(from, v);
                    if l.decide_at.is_none() && l.decision(&self.s).is_some() {
                        l.decide_at = Some(now + self.s.cfg.finalize_wait);
                    }
                    Next::Stay
                } else if from_voter {
                    // A server that already decided, in this round, counts toward this round's
                    // quorum (as in ZooKeeper): its vote is final.
                    if v.round == l.vote.round && self.s.voter {
                        l.record(from, v);
                        if l.decide_at.is_none() && l.decision(&self.s).is_some() {
                            l.decide_at = Some(now + self.s.cfg.finalize_wait);
                        }
                    }
                    l.settled.insert(from, v);
                    match l.joinable(&self.s) {
                        Some(leader) if leader != self.s.me => Next::Follow(leader),
                        _ => Next::Stay,
                    }
                } else {
                    Next::Stay
                }
            }
            RoleState::Learner(f) => {
                if v.state == PeerState::Leading
                    && from == f.leader
                    && f.phase == LearnerPhase::Connecting
                {
                    // Its leader has just taken the lead: connect now rather than at the next
                    // resend (the first Connect may have reached it while it was still looking).
                    let msg = self.s.connect(f.session);
                    self.s.send(from, msg);
                    f.connect_at = now + self.s.cfg.vote_resend;
                } else if v.state == PeerState::Looking {
                    let state =
                        if self.s.voter { PeerState::Following } else { PeerState::Observing };
                    let vote = Vote {
                        leader: f.leader,
                        zxid: self.s.last_zxid(),
                        epoch: self.s.current_epoch,
                        round: self.s.round,
                        state,
                    };
                    self.s.send(from, Msg::Vote(vote));
                }
                Next::Stay
            }
            RoleState::Leader(_) => {
                if v.state == PeerState::Looking {
                    let vote = Vote {
                        leader: self.s.me,
                        zxid: self.s.last_zxid(),
                        epoch: self.s.current_epoch,
                        round: self.s.round,
                        state: PeerState::Leading,
                    };
                    self.s.send(from, Msg::Vote(vote));
                }
                Next::Stay
            }
        }
    }

    fn transition(&mut self, now: Instant, next: Next) {
        match next {
            Next::Stay => {}
            Next::Anomaly(why) => {
                self.s.out.events.push(Event::Anomaly(why));
                self.transition(now, Next::Look(String::new()));
            }
            Next::Look(why) => {
                if let RoleState::Leader(l) = &mut self.role {
                    for (zxid, tag) in std::mem::take(&mut l.tags) {
                        self.s.out.events.push(Event::Unknown { tag, zxid });
                    }
                }
                if !why.is_empty() {
                    self.s.out.events.push(Event::Error(why));
                }
                self.role = self.s.looking(now);
            }
            Next::Lead => {
                let l = Leader {
                    epoch: self.s.accepted_epoch,
                    phase: LeaderPhase::Gathering,
                    started: now,
                    peers: BTreeMap::new(),
                    counter: 0,
                    committed: self.s.applied,
                    tags: BTreeMap::new(),
                    retired: BTreeMap::new(),
                    ping_at: now + self.s.cfg.heartbeat,
                };
                self.role = RoleState::Leader(l);
                self.s.out.events.push(Event::Role(self.role()));
                // Tell the voters at once, so those that decided to follow connect now.
                let vote = Vote { state: PeerState::Leading, ..self.s.own_vote() };
                self.s.broadcast_vote(&vote);
                // A single voter is its own quorum.
                let next = match &mut self.role {
                    RoleState::Leader(l) => l.progress(&mut self.s),
                    _ => Next::Stay,
                };
                self.transition(now, next);
            }
            Next::Follow(leader) => {
                let session = self.s.rng.gen::<u64>();
                let f = Learner {
                    leader,
                    session,
                    epoch: self.s.accepted_epoch,
                    phase: LearnerPhase::Connecting,
                    inbox: Inbox::default(),
                    seq: 0,
                    started: now,
                    last_heard: now,
                    connect_at: now + self.s.cfg.vote_resend,
                    commit_target: self.s.applied,
                    snap_buf: None,
                    ack_pending: None,
                };
                self.s.send(leader, self.s.connect(session));
                self.role = RoleState::Learner(f);
                self.s.out.events.push(Event::Role(self.role()));
            }
        }
    }
}

impl Looking {
    /// Records `from`'s vote of this round. Within a round a server's vote only ever moves to a
    /// better candidate, so of two votes of one round the better is the later: a vote that
    /// arrives after a newer one (the network reordered them) changes nothing.
    fn record(&mut self, from: NodeId, v: Vote) {
        match self.votes.get(&from) {
            Some(old) if old.round == v.round && old.beats(&v) => {}
            _ => {
                self.votes.insert(from, v);
            }
        }
    }

    /// The leader a quorum of this round's votes agrees on, if any.
    fn decision<S: StateMachine>(&self, s: &Shared<S>) -> Option<NodeId> {
        if !s.voter {
            return None;
        }
        let agree = self
            .votes
            .iter()
            .filter(|(id, v)| s.cfg.voters.contains(id) && v.same_candidate(&self.vote))
            .count();
        (agree >= s.cfg.quorum()).then_some(self.vote.leader)
    }

    /// A leader that says it leads and that a quorum of voters follows (ZooKeeper's
    /// out-of-election check: a server that restarts joins the ensemble that formed without it).
    fn joinable<S: StateMachine>(&self, s: &Shared<S>) -> Option<NodeId> {
        let (leader, _) = self.settled.iter().find(|(id, v)| {
            v.state == PeerState::Leading && v.leader == **id && s.cfg.voters.contains(id)
        })?;
        let agree = self
            .settled
            .iter()
            .filter(|(id, v)| {
                s.cfg.voters.contains(id)
                    && v.leader == *leader
                    && matches!(v.state, PeerState::Leading | PeerState::Following)
            })
            .count();
        (agree >= s.cfg.quorum()).then_some(*leader)
    }
}

impl Learner {
    fn role<S: StateMachine>(&self, s: &Shared<S>) -> Role {
        let synced = self.phase == LearnerPhase::Synced;
        if s.voter {
            Role::Following { leader: self.leader, epoch: self.epoch, synced }
        } else {
            Role::Observing { leader: self.leader, epoch: self.epoch, synced }
        }
    }

    fn send<S: StateMachine>(&mut self, s: &mut Shared<S>, body: ToLeader) {
        if let ToLeader::Ack(z) = body {
            self.ack_pending = Some(self.ack_pending.map_or(z, |p| p.max(z)));
            return;
        }
        self.flush(s);
        self.send_now(s, body);
    }

    /// Sends the pending ACK, if any.
    fn flush<S: StateMachine>(&mut self, s: &mut Shared<S>) {
        if let Some(z) = self.ack_pending.take() {
            self.send_now(s, ToLeader::Ack(z));
        }
    }

    fn send_now<S: StateMachine>(&mut self, s: &mut Shared<S>, body: ToLeader) {
        let seq = self.seq;
        self.seq += 1;
        s.send(self.leader, Msg::ToLeader { session: self.session, seq, body });
    }

    fn deadline<S: StateMachine>(&self, s: &Shared<S>) -> Instant {
        match self.phase {
            LearnerPhase::Connecting => self.connect_at.min(self.started + s.cfg.leader_timeout),
            LearnerPhase::Syncing => self.started + s.cfg.init_limit,
            LearnerPhase::Synced => self.last_heard + s.cfg.leader_timeout,
        }
    }

    fn on_timeout<S: StateMachine>(&mut self, s: &mut Shared<S>, now: Instant) -> Next {
        match self.phase {
            LearnerPhase::Connecting | LearnerPhase::Syncing => {
                // A leader that does not answer within the leader timeout is not there (a vote
                // for a server that has since died); synchronization may take up to the init
                // limit (a large snapshot).
                let limit = if self.phase == LearnerPhase::Connecting {
                    s.cfg.leader_timeout
                } else {
                    s.cfg.init_limit
                };
                if now >= self.started + limit {
                    return Next::Look(String::new());
                }
                if self.phase == LearnerPhase::Connecting && now >= self.connect_at {
                    let msg = s.connect(self.session);
                    s.send(self.leader, msg);
                    self.connect_at = now + s.cfg.vote_resend;
                }
                Next::Stay
            }
            LearnerPhase::Synced => {
                if now >= self.last_heard + s.cfg.leader_timeout {
                    Next::Look(String::new())
                } else {
                    Next::Stay
                }
            }
        }
    }

    fn on_sequenced<S: StateMachine>(
        &mut self,
        s: &mut Shared<S>,
        now: Instant,
        seq: u64,
        body: ToLearner,
    ) -> Next {
        let Ok(ready) = self.inbox.accept(seq, body) else {
            return Next::Look("the session with the leader lost messages".into());
        };
        for body in ready {
            self.last_heard = now;
            let next = self.on_message(s, body);
            if !matches!(next, Next::Stay) {
                return next;
            }
        }
        Next::Stay
    }

    fn on_message<S: StateMachine>(&mut self, s: &mut Shared<S>, body: ToLearner) -> Next {
        match body {
            ToLearner::NewEpoch(e) => {
                if self.phase != LearnerPhase::Connecting {
                    return Next::Stay;
                }
                let same_leader = e == s.accepted_epoch && s.accepted_leader == self.leader;
                // An observer's promise counts in no quorum: it follows whichever leader the
                // voters established (it only ever applies what that leader commits).
                if s.voter && (e < s.accepted_epoch || (e == s.accepted_epoch && !same_leader)) {
                    return Next::Look(format!(
                        "leader {} proposed epoch {e}, but this server accepted epoch {} from {}",
                        self.leader, s.accepted_epoch, s.accepted_leader
                    ));
                }
                if !same_leader {
                    s.accepted_epoch = e;
                    s.accepted_leader = self.leader;
                    s.persist(Persist::AcceptedEpoch { epoch: e, leader: self.leader });
                }
                self.epoch = e;
                self.phase = LearnerPhase::Syncing;
                let summary = s.summary();
                self.send(
                    s,
                    ToLeader::AckEpoch {
                        current_epoch: s.current_epoch,
                        last: summary.last,
                        spans: summary.spans,
                        snapshot: summary.snapshot,
                    },
                );
                s.out.events.push(Event::Role(self.role(s)));
            }
            ToLearner::SnapChunk { zxid, total, offset, data } => {
                if self.phase != LearnerPhase::Syncing {
                    return Next::Look("a snapshot outside synchronization".into());
                }
                let buf = match self.snap_buf.take() {
                    None if offset == 0 => (zxid, total, Vec::new()),
                    Some(b) if b.0 == zxid && b.1 == total && b.2.len() as u64 == offset => b,
                    _ => {
                        return Next::Look(
                            "the leader's snapshot chunks do not follow each other".into(),
                        )
                    }
                };
                let (zxid, total, mut bytes) = buf;
                bytes.extend_from_slice(&data);
                return match (bytes.len() as u64).cmp(&total) {
                    std::cmp::Ordering::Less => {
                        self.snap_buf = Some((zxid, total, bytes));
                        Next::Stay
                    }
                    std::cmp::Ordering::Greater => {
                        Next::Look("the leader's snapshot is longer than it said".into())
                    }
                    std::cmp::Ordering::Equal => {
                        self.on_message(s, ToLearner::Snap { zxid, data: bytes })
                    }
                };
            }
            ToLearner::Snap { zxid, data } => {
                if self.phase != LearnerPhase::Syncing {
                    return Next::Look("a snapshot outside synchronization".into());
                }
                if let Err(e) = s.sm.restore(zxid, &data) {
                    return Next::Look(format!("the leader's snapshot at {zxid} is unusable: {e}"));
                }
                let data = Arc::new(data);
                s.applied = zxid;
                s.since_snapshot = 0;
                s.bytes_since_snapshot = 0;
                s.draw_snapshot_after();
                s.drop_snapshot_job();
                s.log.clear();
                s.log_base = zxid;
                s.snapshot = Some((zxid, data.clone()));
                s.persist(Persist::Snapshot { zxid, data });
                s.persist(Persist::ResetLog(zxid));
                self.commit_target = self.commit_target.max(zxid);
                s.out.events.push(Event::Restored { zxid });
            }
            ToLearner::Trunc(z) => {
                if self.phase != LearnerPhase::Syncing {
                    return Next::Look("a truncation outside synchronization".into());
                }
                if z < s.applied {
                    return Next::Anomaly(format!(
                        "the leader asked to truncate to {z:?}, before transactions applied here \
                         (up to {:?})",
                        s.applied
                    ));
                }
                while s.log.back().is_some_and(|e| e.zxid > z) {
                    s.log.pop_back();
                }
                s.persist(Persist::TruncateAfter(z));
            }
            ToLearner::Diff(entries) => {
                if self.phase != LearnerPhase::Syncing {
                    return Next::Look("a DIFF outside synchronization".into());
                }
                let last = s.last_zxid();
                let new: Vec<Entry> = entries.into_iter().filter(|e| e.zxid > last).collect();
                if new.windows(2).any(|w| w[0].zxid >= w[1].zxid) {
                    return Next::Look("a DIFF out of order".into());
                }
                s.append(new);
            }
            ToLearner::NewLeader { epoch } => {
                if self.phase != LearnerPhase::Syncing || epoch != self.epoch {
                    return Next::Look(format!("NEWLEADER for epoch {epoch} out of turn"));
                }
                s.current_epoch = epoch;
                s.persist(Persist::CurrentEpoch(epoch));
                // Sent after the batch is persisted: the DIFF, TRUNC or SNAP and the epoch are
                // on disk before the leader counts this acknowledgement.
                self.send(s, ToLeader::AckNewLeader { epoch });
            }
            ToLearner::UpToDate { committed } => {
                if self.phase != LearnerPhase::Syncing || s.current_epoch != self.epoch {
                    return Next::Look("UPTODATE out of turn".into());
                }
                self.phase = LearnerPhase::Synced;
                self.commit_target = self.commit_target.max(committed);
                s.apply_through(self.commit_target, None);
                s.out.events.push(Event::Role(self.role(s)));
            }
            ToLearner::Proposal(entry) => {
                if self.phase == LearnerPhase::Connecting
                    || s.current_epoch != self.epoch
                    || entry.zxid.epoch() != self.epoch
                {
                    return Next::Look(format!("a proposal {:?} out of turn", entry.zxid));
                }
                let last = s.last_zxid();
                if entry.zxid <= last {
                    return Next::Stay;
                }
                let follows = if entry.zxid.epoch() == last.epoch() {
                    last.counter().checked_add(1) == Some(entry.zxid.counter())
                } else {
                    entry.zxid.counter() == 1
                };
                if !follows {
                    return Next::Anomaly(format!(
                        "proposal {:?} does not follow {last:?}",
                        entry.zxid
                    ));
                }
                let zxid = entry.zxid;
                s.append(vec![entry]);
                if s.voter {
                    self.send(s, ToLeader::Ack(zxid));
                }
            }
            ToLearner::Commit(z) => {
                self.commit_target = self.commit_target.max(z);
                if self.phase == LearnerPhase::Synced {
                    s.apply_through(self.commit_target, None);
                }
            }
            ToLearner::Ping => self.send(s, ToLeader::Ping),
        }
        Next::Stay
    }
}

impl Leader {
    fn send<S: StateMachine>(&mut self, s: &mut Shared<S>, to: NodeId, body: ToLearner) {
        if let Some(p) = self.peers.get_mut(&to) {
            if let ToLearner::Commit(z) = body {
                p.commit_pending = Some(p.commit_pending.map_or(z, |c| c.max(z)));
                return;
            }
            if let Some(z) = p.commit_pending.take() {
                Leader::send_now(s, to, p, ToLearner::Commit(z));
            }
            Leader::send_now(s, to, p, body);
        }
    }

    fn send_now<S: StateMachine>(s: &mut Shared<S>, to: NodeId, p: &mut Peer, body: ToLearner) {
        let seq = p.seq;
        p.seq += 1;
        s.send(to, Msg::ToLearner { session: p.session, seq, body });
    }

    /// Sends every pending COMMIT.
    fn flush<S: StateMachine>(&mut self, s: &mut Shared<S>) {
        for (to, p) in self.peers.iter_mut() {
            if let Some(z) = p.commit_pending.take() {
                Leader::send_now(s, *to, p, ToLearner::Commit(z));
            }
        }
    }

    fn deadline<S: StateMachine>(&self, s: &Shared<S>) -> Instant {
        let t = self.ping_at;
        if self.phase == LeaderPhase::Broadcasting {
            t
        } else {
            t.min(self.started + s.cfg.init_limit)
        }
    }

    fn on_connect<S: StateMachine>(
        &mut self,
        s: &mut Shared<S>,
        now: Instant,
        from: NodeId,
        session: u64,
        (accepted_epoch, accepted_leader): (u32, NodeId),
    ) -> Next {
        if self.retired.get(&from).is_some_and(|r| r.contains(&session)) {
            // A late copy of a Connect of a session this peer has since replaced.
            return Next::Stay;
        }
        if let Some(p) = self.peers.get_mut(&from) {
            if p.session == session {
                p.last_heard = now;
                // A repeated Connect: the NEWEPOCH may have been lost; send it again (same seq).
                if matches!(p.phase, PeerPhase::Connected) && self.phase != LeaderPhase::Gathering {
                    s.send(
                        from,
                        Msg::ToLearner { session, seq: 0, body: ToLearner::NewEpoch(self.epoch) },
                    );
                }
                return Next::Stay;
            }
        }
        let voter = s.cfg.voters.contains(&from);
        if voter
            && self.phase != LeaderPhase::Gathering
            && (accepted_epoch > self.epoch
                || (accepted_epoch == self.epoch && accepted_leader != s.me))
        {
            // Another leader proposed this epoch or a newer one to this voter, which will
            // never accept this leader's: elect again, so the next epoch is above every promise.
            return Next::Look(format!(
                "voter {from} promised epoch {accepted_epoch} to {accepted_leader}; this leader \
                 leads epoch {}: electing again",
                self.epoch
            ));
        }
        if let Some(old) = self.peers.get(&from) {
            let r = self.retired.entry(from).or_default();
            r.push(old.session);
            if r.len() > 8 {
                r.remove(0);
            }
        }
        self.peers.insert(
            from,
            Peer {
                session,
                voter,
                accepted_epoch,
                phase: PeerPhase::Connected,
                inbox: Inbox::default(),
                seq: 0,
                last_heard: now,
                acked: Zxid::ZERO,
                commit_pending: None,
            },
        );
        if self.phase == LeaderPhase::Gathering {
            self.progress(s)
        } else {
            self.send(s, from, ToLearner::NewEpoch(self.epoch));
            Next::Stay
        }
    }

    fn on_sequenced<S: StateMachine>(
        &mut self,
        s: &mut Shared<S>,
        now: Instant,
        from: NodeId,
        session: u64,
        seq: u64,
        body: ToLeader,
    ) -> Next {
        let Some(p) = self.peers.get_mut(&from) else { return Next::Stay };
        if p.session != session {
            return Next::Stay;
        }
        let Ok(ready) = p.inbox.accept(seq, body) else {
            self.peers.remove(&from);
            return Next::Stay;
        };
        for body in ready {
            if let Some(p) = self.peers.get_mut(&from) {
                p.last_heard = now;
            }
            let next = self.on_message(s, from, body);
            if !matches!(next, Next::Stay) {
                return next;
            }
        }
        Next::Stay
    }

    fn on_message<S: StateMachine>(
        &mut self,
        s: &mut Shared<S>,
        from: NodeId,
        body: ToLeader,
    ) -> Next {
        let Some(p) = self.peers.get_mut(&from) else { return Next::Stay };
        match body {
            ToLeader::AckEpoch { current_epoch, last, spans, snapshot } => {
                if !matches!(p.phase, PeerPhase::Connected) {
                    return Next::Stay;
                }
                p.phase = PeerPhase::EpochAcked(Summary { spans, snapshot, last });
                // Observers promise nothing: an uncommitted tail of theirs is truncated by the
                // sync plan, not a reason to elect again.
                if self.phase == LeaderPhase::Discovering && !p.voter {
                    self.progress(s)
                } else if self.phase == LeaderPhase::Discovering {
                    // The new leader's history must be the most up to date of its quorum:
                    // a follower ahead of it means the election chose badly.
                    if (current_epoch, last) > (s.current_epoch, s.last_zxid()) {
                        return Next::Look(format!(
                            "follower {from} is ahead of this leader ({current_epoch}, {last:?} \
                             against {}, {:?}): electing again",
                            s.current_epoch,
                            s.last_zxid()
                        ));
                    }
                    self.progress(s)
                } else {
                    self.sync_peer(s, from)
                }
            }
            ToLeader::AckNewLeader { epoch } => {
                if epoch != self.epoch {
                    return Next::Stay;
                }
                let PeerPhase::Syncing(upto) = p.phase else { return Next::Stay };
                p.phase = PeerPhase::Synced;
                p.acked = upto;
                if self.phase == LeaderPhase::Broadcasting {
                    let committed = self.committed;
                    self.send(s, from, ToLearner::UpToDate { committed });
                    self.try_commit(s);
                    Next::Stay
                } else {
                    self.progress(s)
                }
            }
            ToLeader::Ack(z) => {
                if matches!(p.phase, PeerPhase::Synced) && p.voter && z.epoch() == self.epoch {
                    p.acked = p.acked.max(z);
                    self.try_commit(s);
                }
                Next::Stay
            }
            ToLeader::Ping => Next::Stay,
        }
    }

    /// Moves the leader's phases forward once their quorums are met.
    fn progress<S: StateMachine>(&mut self, s: &mut Shared<S>) -> Next {
        let quorum = s.cfg.quorum();
        if self.phase == LeaderPhase::Gathering {
            let connected: Vec<u32> =
                self.peers.values().filter(|p| p.voter).map(|p| p.accepted_epoch).collect();
            if connected.len() + 1 < quorum {
                return Next::Stay;
            }
            let max = connected.into_iter().chain([s.accepted_epoch]).max().unwrap_or(0);
            let Some(epoch) = max.checked_add(1) else {
                return Next::Look("epochs exhausted".into());
            };
            self.epoch = epoch;
            s.accepted_epoch = epoch;
            s.accepted_leader = s.me;
            s.persist(Persist::AcceptedEpoch { epoch, leader: s.me });
            self.phase = LeaderPhase::Discovering;
            let ids: Vec<NodeId> = self.peers.keys().copied().collect();
            for id in ids {
                self.send(s, id, ToLearner::NewEpoch(epoch));
            }
        }
        if self.phase == LeaderPhase::Discovering {
            let acked = self
                .peers
                .values()
                .filter(|p| p.voter && matches!(p.phase, PeerPhase::EpochAcked(..)))
                .count();
            if acked + 1 < quorum {
                return Next::Stay;
            }
            s.current_epoch = self.epoch;
            s.persist(Persist::CurrentEpoch(self.epoch));
            self.phase = LeaderPhase::Syncing;
            let ids: Vec<NodeId> = self
                .peers
                .iter()
                .filter(|(_, p)| matches!(p.phase, PeerPhase::EpochAcked(..)))
                .map(|(id, _)| *id)
                .collect();
            for id in ids {
                if let Next::Anomaly(why) = self.sync_peer(s, id) {
                    s.out.events.push(Event::Anomaly(why));
                }
            }
        }
        if self.phase == LeaderPhase::Syncing {
            // This leader's own NEWLEADER counts once its epoch is on disk.
            if s.durable_epoch != self.epoch {
                return Next::Stay;
            }
            let acked = self
                .peers
                .values()
                .filter(|p| p.voter && matches!(p.phase, PeerPhase::Synced))
                .count();
            if acked + 1 < quorum {
                return Next::Stay;
            }
            // Established: the leader's whole history is committed.
            self.phase = LeaderPhase::Broadcasting;
            self.committed = s.last_zxid();
            s.apply_through(self.committed, Some(&mut self.tags));
            let committed = self.committed;
            let ids: Vec<NodeId> = self
                .peers
                .iter()
                .filter(|(_, p)| matches!(p.phase, PeerPhase::Synced))
                .map(|(id, _)| *id)
                .collect();
            for id in ids {
                self.send(s, id, ToLearner::UpToDate { committed });
            }
            s.out.events.push(Event::Role(Role::Leading { epoch: self.epoch, established: true }));
        }
        if self.phase == LeaderPhase::Broadcasting {
            self.try_commit(s);
        }
        Next::Stay
    }

    /// Sends a learner that acknowledged the epoch what it needs to hold this leader's history,
    /// then NEWLEADER.
    fn sync_peer<S: StateMachine>(&mut self, s: &mut Shared<S>, id: NodeId) -> Next {
        let Some(p) = self.peers.get(&id) else { return Next::Stay };
        let PeerPhase::EpochAcked(summary) = &p.phase else { return Next::Stay };
        let zxids: Vec<Zxid> = s.log.iter().map(|e| e.zxid).collect();
        let last = s.last_zxid();
        let plan = sync::plan(&zxids, s.log_base, last, summary);
        let after = match plan {
            Plan::LearnerAhead => {
                self.peers.remove(&id);
                return Next::Anomaly(format!(
                    "learner {id} holds a snapshot past this leader's history"
                ));
            }
            Plan::Snap => {
                let Some((zxid, data)) = s.snapshot.clone() else {
                    self.peers.remove(&id);
                    return Next::Anomaly(format!("learner {id} needs a snapshot; there is none"));
                };
                let step = s.cfg.chunk_bytes.max(1);
                if data.len() <= step {
                    self.send(s, id, ToLearner::Snap { zxid, data: data.to_vec() });
                } else {
                    let total = data.len() as u64;
                    for (i, piece) in data.chunks(step).enumerate() {
                        let offset = (i * step) as u64;
                        let data = piece.to_vec();
                        self.send(s, id, ToLearner::SnapChunk { zxid, total, offset, data });
                    }
                }
                zxid
            }
            Plan::Trunc { to } => {
                self.send(s, id, ToLearner::Trunc(to));
                to
            }
            Plan::Diff { after } => after,
        };
        let entries: Vec<Entry> = s.log.iter().filter(|e| e.zxid > after).cloned().collect();
        // At most `diff_chunk` entries and about `chunk_bytes` of transactions per message.
        let mut chunk: Vec<Entry> = Vec::new();
        let mut bytes = 0;
        for e in entries {
            if !chunk.is_empty()
                && (chunk.len() >= s.cfg.diff_chunk.max(1)
                    || bytes + e.txn.len() > s.cfg.chunk_bytes)
            {
                self.send(s, id, ToLearner::Diff(std::mem::take(&mut chunk)));
                bytes = 0;
            }
            bytes += e.txn.len();
            chunk.push(e);
        }
        if !chunk.is_empty() {
            self.send(s, id, ToLearner::Diff(chunk));
        }
        let epoch = self.epoch;
        self.send(s, id, ToLearner::NewLeader { epoch });
        if let Some(p) = self.peers.get_mut(&id) {
            p.phase = PeerPhase::Syncing(last);
        }
        Next::Stay
    }

    /// Commits the longest prefix a quorum has on disk.
    fn try_commit<S: StateMachine>(&mut self, s: &mut Shared<S>) {
        if self.phase != LeaderPhase::Broadcasting {
            return;
        }
        let mut acks: Vec<Zxid> = self
            .peers
            .values()
            .filter(|p| p.voter && matches!(p.phase, PeerPhase::Synced))
            .map(|p| p.acked)
            .collect();
        acks.push(s.durable);
        let quorum = s.cfg.quorum();
        if acks.len() < quorum {
            return;
        }
        acks.sort_unstable_by(|a, b| b.cmp(a));
        let z = acks[quorum - 1].min(s.last_zxid());
        if z <= self.committed {
            return;
        }
        self.committed = z;
        let ids: Vec<NodeId> = self
            .peers
            .iter()
            .filter(|(_, p)| matches!(p.phase, PeerPhase::Syncing(_) | PeerPhase::Synced))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.send(s, id, ToLearner::Commit(z));
        }
        s.apply_through(z, Some(&mut self.tags));
    }

    fn on_timeout<S: StateMachine>(&mut self, s: &mut Shared<S>, now: Instant) -> Next {
        if self.phase != LeaderPhase::Broadcasting && now >= self.started + s.cfg.init_limit {
            return Next::Look(String::new());
        }
        if now < self.ping_at {
            return Next::Stay;
        }
        self.ping_at = now + s.cfg.heartbeat;
        let timeout = s.cfg.leader_timeout;
        self.peers.retain(|_, p| now < p.last_heard + timeout);
        if self.phase == LeaderPhase::Broadcasting {
            let synced = self
                .peers
                .values()
                .filter(|p| p.voter && matches!(p.phase, PeerPhase::Synced))
                .count();
            if synced + 1 < s.cfg.quorum() {
                return Next::Look(String::new());
            }
        }
        let ids: Vec<NodeId> = self
            .peers
            .iter()
            .filter(|(_, p)| !matches!(p.phase, PeerPhase::Connected))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.send(s, id, ToLearner::Ping);
        }
        Next::Stay
    }
}

impl<S: StateMachine> Shared<S> {
    fn last_zxid(&self) -> Zxid {
        let snap = self.snapshot.as_ref().map_or(Zxid::ZERO, |(z, _)| *z);
        self.log.back().map_or(Zxid::ZERO, |e| e.zxid).max(snap).max(self.log_base)
    }

    fn connect(&self, session: u64) -> Msg {
        Msg::Connect {
            session,
            accepted_epoch: self.accepted_epoch,
            accepted_leader: self.accepted_leader,
        }
    }

    fn own_vote(&self) -> Vote {
        Vote {
            leader: self.me,
            zxid: self.last_zxid(),
            epoch: self.current_epoch,
            round: self.round,
            state: PeerState::Looking,
        }
    }

    fn send(&mut self, to: NodeId, msg: Msg) {
        self.out.messages.push((to, msg));
    }

    fn broadcast_vote(&mut self, v: &Vote) {
        let voters: Vec<NodeId> =
            self.cfg.voters.iter().copied().filter(|id| *id != self.me).collect();
        for id in voters {
            self.send(id, Msg::Vote(*v));
        }
    }

    /// Queues a durable change; consecutive appends form one (group commit).
    fn persist(&mut self, op: Persist) {
        if let (Persist::Append(new), Some(Persist::Append(last))) =
            (&op, self.out.persist.last_mut())
        {
            last.extend(new.iter().cloned());
            return;
        }
        self.out.persist.push(op);
    }

    fn append(&mut self, entries: Vec<Entry>) {
        if entries.is_empty() {
            return;
        }
        self.log.extend(entries.iter().cloned());
        self.persist(Persist::Append(entries));
    }

    fn summary(&self) -> Summary {
        Summary {
            spans: sync::spans(self.log.iter().map(|e| e.zxid)),
            snapshot: self.snapshot.as_ref().map_or(Zxid::ZERO, |(z, _)| *z).max(self.log_base),
            last: self.last_zxid(),
        }
    }

    /// A new election round, voting for itself.
    fn looking(&mut self, now: Instant) -> RoleState {
        self.round = self.round.saturating_add(1);
        let vote = self.own_vote();
        let mut votes = BTreeMap::new();
        if self.voter {
            votes.insert(self.me, vote);
        }
        self.broadcast_vote(&vote);
        self.out.events.push(Event::Role(Role::Looking));
        let mut l = Looking {
            vote,
            votes,
            settled: BTreeMap::new(),
            decide_at: None,
            resend_at: now + self.cfg.vote_resend,
        };
        if l.decision(self).is_some() {
            l.decide_at = Some(now);
        }
        RoleState::Looking(l)
    }
}

impl<S: StateMachine> Shared<S> {
    /// Applies the log's entries up to `z` (committed); reports the tags of those proposed here.
    fn apply_through(&mut self, z: Zxid, mut tags: Option<&mut BTreeMap<Zxid, u64>>) {
        loop {
            let next = self.log.partition_point(|e| e.zxid <= self.applied);
            let Some(e) = self.log.get(next) else { break };
            if e.zxid > z {
                break;
            }
            let (zxid, txn) = (e.zxid, e.txn.clone());
            self.sm.apply(zxid, &txn);
            self.applied = zxid;
            self.since_snapshot += 1;
            self.bytes_since_snapshot += txn.len() as u64;
            if let Some(tag) = tags.as_deref_mut().and_then(|t| t.remove(&zxid)) {
                self.out.events.push(Event::Committed { tag, zxid });
            }
            if self.snapshot_due() {
                self.start_snapshot();
            }
        }
    }

    /// Every `snapshot_every` transactions or `snapshot_log_bytes` bytes of them on average,
    /// whichever comes first (each time after a number drawn between half and one and a half
    /// times it), and not before the log since the last snapshot is half its size: writing a
    /// snapshot costs its whole size, so a large state is snapshotted less often (at most two
    /// bytes of snapshot per byte logged). One at a time.
    fn snapshot_due(&self) -> bool {
        let last_size = self.snapshot.as_ref().map_or(0, |(_, d)| d.len() as u64);
        (self.since_snapshot >= self.snapshot_after
            || self.bytes_since_snapshot >= self.snapshot_after_bytes)
            && self.bytes_since_snapshot >= last_size / 2
            && self.snapshot_job.is_none()
    }

    /// Takes an image of the state machine for the caller to encode (a [`SnapshotJob`]).
    fn start_snapshot(&mut self) {
        self.tickets += 1;
        self.snapshot_job = Some((self.tickets, self.applied));
        self.job_out.0 = Some(SnapshotJob {
            ticket: self.tickets,
            zxid: self.applied,
            image: self.sm.image(),
            size_hint: self.snapshot.as_ref().map_or(0, |(_, d)| d.len()),
        });
        self.since_snapshot = 0;
        self.bytes_since_snapshot = 0;
        self.draw_snapshot_after();
    }

    /// Draws the count of transactions, and of their bytes, after which the next snapshot is
    /// due: uniform between half and one and a half times `snapshot_every` (and
    /// `snapshot_log_bytes`). Servers that applied the same
    /// transactions then encode their snapshots at different times, so a quorum is never slowed
    /// by all of its members encoding at once (ZooKeeper randomizes `snapCount` the same way).
    fn draw_snapshot_after(&mut self) {
        let every = self.cfg.snapshot_every.max(1);
        self.snapshot_after = (every / 2 + self.rng.gen_range(0..=every)).max(1);
        let bytes = self.cfg.snapshot_log_bytes.max(1);
        self.snapshot_after_bytes = (bytes / 2 + self.rng.gen_range(0..=bytes)).max(1);
    }

    /// Forgets the snapshot being encoded: the state it was taken from was replaced.
    fn drop_snapshot_job(&mut self) {
        self.snapshot_job = None;
        self.job_out.0 = None;
    }

    /// Keeps a saved snapshot and lets go of the log before the previous snapshot (one
    /// interval of log stays, so a learner a little behind still gets a DIFF).
    fn finish_snapshot(&mut self, ticket: u64, data: Vec<u8>) {
        let Some((t, zxid)) = self.snapshot_job else { return };
        if t != ticket {
            return;
        }
        self.snapshot_job = None;
        let prev = self.snapshot.as_ref().map(|(z, _)| *z);
        self.snapshot = Some((zxid, Arc::new(data)));
        if let Some(prev) = prev.filter(|p| *p > self.log_base) {
            while self.log.front().is_some_and(|e| e.zxid <= prev) {
                self.log.pop_front();
            }
            self.log_base = prev;
            self.persist(Persist::CompactThrough(prev));
        }
        // Transactions applied while it was encoded may already call for the next one.
        if self.snapshot_due() {
            self.start_snapshot();
        }
    }
}
