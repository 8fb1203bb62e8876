//! One replica of one partition, sans-IO: Kafka's replication protocol.
//!
//! The partition's state — replica list, leader, leader epoch, in-sync replicas (ISR) — lives in
//! the metadata service, which changes it only by compare-and-set on its version. The replica
//! reads it ([`Replica::handle_state`]), proposes changes ([`Output::ProposeState`]): a
//! replica takes leadership with a new epoch, a leader shrinks or grows the ISR), and moves data:
//! followers fetch from the leader ([`Msg::Fetch`]); the leader's high watermark is the lowest
//! log end over the ISR; producers with `acks=all` are answered once it passes their batch.
//!
//! Safety rests on four rules, each stated where it is enforced:
//! 1. one leader per epoch (the metadata service's compare-and-set);
//! 2. a follower's progress counts only once its log provably agrees with the leader's
//!    (the last-fetched-epoch check: KIP-101, KIP-279, KIP-320), so the high watermark marks a
//!    prefix every ISR member holds;
//! 3. the ISR used for the high watermark never shrinks before the metadata service has
//!    recorded the shrink (a fenced leader cannot commit with fewer replicas), and grows at once;
//! 4. only an ISR member can become leader (no unclean election), so a new leader holds every
//!    committed record.
//!
//! No clock is read: `now` comes with every input. See `ALGORITHM.md`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
pub use starling_id::NodeId;

use crate::batch::Batches;
use crate::log::{LogError, ReadResult};
use crate::mem::ReplicaLog;
use crate::producer::{self, BatchMeta, Producers, Verdict};

/// A partition's replicated state, as the metadata service keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionState {
    /// The replicas, in ring order (the preference order for leadership).
    pub replicas: Vec<NodeId>,
    /// The current leader, if any.
    pub leader: Option<NodeId>,
    /// Bumped by every leader change.
    pub leader_epoch: i32,
    /// In-sync replicas (the leader among them), in ring order.
    pub isr: Vec<NodeId>,
}

/// Messages between the replicas of a partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Msg {
    /// A follower asks for batches from `offset`; its newest local epoch is `last_epoch`.
    Fetch {
        /// The leader epoch the follower follows.
        epoch: i32,
        /// The follower's log end.
        offset: i64,
        /// The epoch of the follower's last batch (-1 if none).
        last_epoch: i32,
        /// Answer with at most about this many bytes.
        max_bytes: u32,
    },
    /// The leader's answer.
    Fetched {
        /// The epoch the answer is for.
        epoch: i32,
        /// The fetch offset and last epoch this answers (stale answers are ignored).
        offset: i64,
        /// Echo of the fetch's last epoch.
        last_epoch: i32,
        /// The answer.
        answer: FetchAnswer,
    },
}

/// How a leader answers a fetch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FetchAnswer {
    /// Whole batches from the offset asked for (possibly none, after a long poll).
    Records {
        /// The batches.
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
        /// The leader's high watermark.
        high_watermark: i64,
        /// The leader's log start.
        log_start: i64,
    },
    /// The follower's last epoch ends earlier in the leader's log (or is not there): the
    /// largest epoch at or below it that the leader has, and where it ends.
    Diverging {
        /// Epoch.
        epoch: i32,
        /// Where it ends in the leader's log.
        end_offset: i64,
    },
    /// The offset is outside the leader's log.
    OutOfRange {
        /// Leader's log start.
        log_start: i64,
        /// Leader's log end.
        log_end: i64,
    },
    /// The follower's epoch is older than the leader's: it must re-read the partition state.
    FencedEpoch,
    /// This replica does not lead that epoch.
    NotLeader,
}

/// Producer acknowledgement levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Acks {
    /// No answer.
    None,
    /// Once the leader has appended.
    Leader,
    /// Once every in-sync replica has the batch (and there are at least `min_insync`).
    All,
}

/// Why a produce failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum ProduceError {
    /// Not the leader (nothing written); the leader this replica knows, if any.
    #[error("not the partition leader (leader {leader:?}, epoch {epoch})")]
    NotLeader {
        /// Known leader.
        leader: Option<NodeId>,
        /// Known epoch.
        epoch: i32,
    },
    /// Fewer in-sync replicas than required (nothing written).
    #[error("{isr} in-sync replicas, {min} required (nothing written)")]
    NotEnoughReplicas {
        /// ISR size.
        isr: usize,
        /// `min_insync`.
        min: usize,
    },
    /// The batch was replicated to the ISR, but the ISR had shrunk below `min_insync` by then.
    #[error("written, but the in-sync replicas fell below the minimum before it was acknowledged")]
    NotEnoughReplicasAfterAppend,
    /// The batches were refused (nothing written).
    #[error("invalid batch: {0}")]
    Invalid(String),
    /// The log could not be written (nothing written).
    #[error("storage: {0}")]
    Storage(String),
    /// Leadership moved while the batch was being replicated: it may or may not survive.
    #[error("leadership changed before the write was replicated (outcome unknown)")]
    LeaderChanged,
    /// Not replicated within the produce timeout (outcome unknown).
    #[error("not replicated in time (outcome unknown)")]
    Timeout,
    /// An idempotent producer's batch does not continue its sequence, or comes from a fenced
    /// producer epoch (nothing written).
    #[error("{0}")]
    Sequence(producer::SequenceError),
}

impl ProduceError {
    /// The write may have survived (retry with an idempotent producer, or check).
    pub fn outcome_unknown(&self) -> bool {
        matches!(
            self,
            ProduceError::LeaderChanged
                | ProduceError::Timeout
                | ProduceError::NotEnoughReplicasAfterAppend
        )
    }
}

/// Whether two replica lists hold the same nodes (in any order).
fn same_members(a: &[NodeId], b: &[NodeId]) -> bool {
    a.len() == b.len() && a.iter().all(|n| b.contains(n))
}

/// A replica-list move in progress (see [`Replica::moving`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Move {
    /// Replicas being added, each with its log end as of its last fetch (`None` before one).
    pub adding: Vec<(NodeId, Option<i64>)>,
    /// Replicas the move drops once every added one is in sync.
    pub removing: Vec<NodeId>,
}

/// What the replica asks its driver to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Send a message to another replica.
    Send(NodeId, Msg),
    /// Compare-and-set the partition state in the metadata service: write `state` if the stored
    /// version is still `expected_version`. The driver reports the state that results (success
    /// or not) with [`Replica::handle_state`].
    ProposeState {
        /// Version the proposal is based on.
        expected_version: u64,
        /// The new state.
        state: PartitionState,
    },
    /// Read the partition state again (this replica saw signs it is stale).
    RefreshState,
    /// Something happened.
    Event(Event),
}

/// What happened.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A produce was acknowledged at its level.
    Produced {
        /// Caller's id.
        id: u64,
        /// First offset.
        base_offset: i64,
        /// Last offset.
        last_offset: i64,
    },
    /// A produce accepted earlier failed (see [`ProduceError::outcome_unknown`]).
    ProduceFailed {
        /// Caller's id.
        id: u64,
        /// Why.
        error: ProduceError,
    },
    /// This replica now leads, follows, or neither.
    Role {
        /// The role.
        role: Role,
        /// Epoch.
        epoch: i32,
    },
    /// The high watermark moved (consumers can read further).
    HighWatermark(i64),
    /// The log was cut to end at this offset (divergence from the leader).
    Truncated(i64),
    /// The ISR recorded in the metadata service changed.
    IsrChanged(Vec<NodeId>),
    /// The log failed; the replica stopped fetching until restarted.
    StorageFailed(String),
}

/// A replica's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// No state yet, or not a replica of the partition, or its log failed.
    None,
    /// Leads the epoch.
    Leader,
    /// Follows this leader.
    Follower(NodeId),
}

/// Timings and limits.
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    /// `acks=all` needs at least this many in-sync replicas (Kafka's `min.insync.replicas`).
    pub min_insync: usize,
    /// A follower that has not caught up for this long leaves the ISR
    /// (Kafka's `replica.lag.time.max.ms`).
    pub lag_time: Duration,
    /// A fetch with nothing to return waits this long for data (long poll).
    pub fetch_wait: Duration,
    /// A fetch unanswered for this long is sent again.
    pub fetch_timeout: Duration,
    /// Bytes per fetch answer (at least one batch).
    pub fetch_max_bytes: u32,
    /// `acks=all` produces not replicated within this fail with an unknown outcome.
    pub produce_timeout: Duration,
    /// Pause between proposals of the same state change, and between state refreshes.
    pub state_retry: Duration,
    /// Re-read the partition state at least this often (in case a notification was lost).
    pub refresh_every: Duration,
    /// Flush the log after every append, before it counts (durability mode `always`).
    pub flush_each_append: bool,
}

impl Default for ReplicaConfig {
    fn default() -> Self {
        ReplicaConfig {
            min_insync: 2,
            lag_time: Duration::from_secs(5),
            fetch_wait: Duration::from_millis(500),
            fetch_timeout: Duration::from_secs(2),
            fetch_max_bytes: 1 << 20,
            produce_timeout: Duration::from_secs(10),
            state_retry: Duration::from_millis(300),
            refresh_every: Duration::from_secs(1),
            flush_each_append: false,
        }
    }
}

#[derive(Debug, Clone)]
struct Progress {
    /// The follower's log end as of its last fetch that passed the epoch check.
    leo: Option<i64>,
    /// Last time it had everything the leader had (or the leader became leader).
    caught_up_at: Instant,
    /// The leader's log end and time when it last answered this follower.
    leo_at_answer: i64,
    answered_at: Instant,
}

#[derive(Debug, Clone)]
struct Parked {
    from: NodeId,
    offset: i64,
    last_epoch: i32,
    max_bytes: u32,
    deadline: Instant,
}

#[derive(Debug, Clone)]
struct Pending {
    id: u64,
    base: i64,
    deadline: Instant,
}

/// One partition replica.
#[derive(Debug)]
pub struct Replica<L: ReplicaLog> {
    me: NodeId,
    cfg: ReplicaConfig,
    log: L,
    state: Option<PartitionState>,
    version: u64,
    role: Role,
    epoch: i32,
    hw: i64,
    alive: BTreeSet<NodeId>,
    dead: BTreeSet<NodeId>,
    // Leader.
    progress: BTreeMap<NodeId, Progress>,
    epoch_start: i64,
    isr_proposal: Option<(Vec<NodeId>, u64)>,
    parked: Vec<Parked>,
    pending: BTreeMap<i64, Pending>,
    // Follower.
    fetch_sent: Option<Instant>,
    next_fetch: Option<Instant>,
    // Metadata.
    proposed_at: Option<Instant>,
    refreshed_at: Instant,
    failed: bool,
    wall_ms: i64,
    /// Time of the latest input (deadlines at or before it have been acted on).
    last_now: Instant,
    out: VecDeque<Output>,
    cur_fetch: (i64, i32),
    isr_adding: BTreeSet<NodeId>,
    proposed_leader: Option<i32>,
    unclean: bool,
    /// Idempotent producers' recent batches (leader and followers alike).
    producers: Producers,
    /// The replica list the partition should have (see [`Replica::handle_target`]).
    target: Option<Vec<NodeId>>,
    /// Group commit (see [`Replica::defer_flushes`]): appends count only once flushed.
    defer_flushes: bool,
    /// The log end that is durable, while flushes are deferred.
    flushed_end: i64,
    /// The log end a detached flush in flight makes durable (see [`Replica::start_flush`]).
    flushing: Option<i64>,
    /// `acks=1` answers waiting for the owed flush: (id, base, last).
    held: Vec<(u64, i64, i64)>,
}

impl<L: ReplicaLog> Replica<L> {
    /// A replica over `log`, knowing nothing of the partition state yet. Its high watermark
    /// starts at the log start (it learns the real one from the leader).
    pub fn new(me: NodeId, log: L, cfg: ReplicaConfig, now: Instant) -> Replica<L> {
        let hw = log.start_offset();
        let mut r = Replica {
            me,
            cfg,
            log,
            state: None,
            version: 0,
            role: Role::None,
            epoch: -1,
            hw,
            alive: BTreeSet::new(),
            dead: BTreeSet::new(),
            progress: BTreeMap::new(),
            epoch_start: 0,
            isr_proposal: None,
            parked: Vec::new(),
            pending: BTreeMap::new(),
            fetch_sent: None,
            next_fetch: None,
            proposed_at: None,
            refreshed_at: now,
            failed: false,
            wall_ms: 0,
            last_now: now,
            out: VecDeque::new(),
            cur_fetch: (0, -1),
            isr_adding: BTreeSet::new(),
            proposed_leader: None,
            unclean: false,
            producers: Producers::new(),
            target: None,
            defer_flushes: false,
            flushed_end: 0,
            flushing: None,
            held: Vec::new(),
        };
        r.rebuild_producers();
        r.out.push_back(Output::RefreshState);
        r
    }

    /// This replica's id.
    pub fn id(&self) -> NodeId {
        self.me
    }
    /// Its role.
    pub fn role(&self) -> Role {
        self.role
    }
    /// The epoch it leads or follows (-1 before it knows one).
    pub fn epoch(&self) -> i32 {
        self.epoch
    }
    /// Its high watermark (on the leader: what consumers may read).
    pub fn high_watermark(&self) -> i64 {
        self.hw
    }
    /// The partition state it knows, and its version.
    pub fn state(&self) -> Option<(&PartitionState, u64)> {
        self.state.as_ref().map(|s| (s, self.version))
    }
    /// The log.
    pub fn log(&self) -> &L {
        &self.log
    }
    /// The log, mutably (for the driver's periodic flush and retention).
    pub fn log_mut(&mut self) -> &mut L {
        &mut self.log
    }

    /// Wall-clock time in milliseconds since the Unix epoch, for the log's time-based rolling
    /// (the driver sets it; the core reads no clock).
    pub fn set_wall_ms(&mut self, ms: i64) {
        self.wall_ms = ms;
    }

    /// The next thing to do.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    fn event(&mut self, e: Event) {
        self.out.push_back(Output::Event(e));
    }

    fn is_alive(&self, n: NodeId) -> bool {
        n == self.me || !self.dead.contains(&n)
    }

    /// The failure detector's verdict on another node.
    pub fn handle_liveness(&mut self, now: Instant, node: NodeId, alive: bool) {
        self.last_now = self.last_now.max(now);
        if alive {
            self.dead.remove(&node);
            self.alive.insert(node);
        } else {
            self.alive.remove(&node);
            self.dead.insert(node);
        }
        if self.role == Role::Leader {
            self.maintain_isr(now);
        }
        self.maybe_elect(now);
    }

    /// The partition state as the metadata service has it (a notification, a refresh, or the
    /// result of a proposal), with its version.
    pub fn handle_state(&mut self, now: Instant, state: PartitionState, version: u64) {
        self.last_now = self.last_now.max(now);
        if version < self.version
            || (version == self.version && self.state.as_ref() == Some(&state))
        {
            return;
        }
        self.version = version;
        self.proposed_at = None;
        self.isr_proposal = None;
        self.isr_adding.clear();
        let isr_changed = self.state.as_ref().map(|s| &s.isr) != Some(&state.isr);
        self.state = Some(state.clone());
        if self.failed {
            self.step_aside(now);
            return;
        }
        if self.unclean && state.leader != Some(self.me) {
            self.step_aside(now);
        }
        if !state.replicas.contains(&self.me) {
            self.step_down(Role::None, state.leader_epoch);
            return;
        }
        if state.leader == Some(self.me) {
            if self.role == Role::Leader && self.epoch == state.leader_epoch {
                if isr_changed {
                    self.event(Event::IsrChanged(state.isr.clone()));
                }
                self.track_replicas(now);
                self.advance_hw(now);
                self.maybe_reassign(now);
            } else if self.proposed_leader == Some(state.leader_epoch)
                && self.log.latest_epoch() < Some(state.leader_epoch)
            {
                self.become_leader(now, state.leader_epoch);
            } else {
                // Leader of record without leading: stop following anyone (a stale leader
                // would only fence the fetches) and ask for the next epoch.
                if self.role != Role::None || self.epoch != state.leader_epoch {
                    self.step_down(Role::None, state.leader_epoch);
                }
                self.maybe_reclaim(now);
            }
        } else {
            match state.leader {
                Some(l) => {
                    if self.role != Role::Follower(l) || self.epoch != state.leader_epoch {
                        self.step_down(Role::Follower(l), state.leader_epoch);
                        self.fetch_sent = None;
                        self.next_fetch = Some(now);
                    }
                }
                None => self.step_down(Role::None, state.leader_epoch),
            }
        }
        self.maybe_elect(now);
        self.maybe_fetch(now);
    }

    /// This replica is leader of record for an epoch it already began — before a restart, so it
    /// lost the leader's in-memory state (follower progress, pending produces). It does not
    /// resume the epoch but asks for the next one (followers then check their logs against it
    /// afresh); repeated until the metadata service records it.
    fn maybe_reclaim(&mut self, now: Instant) {
        let Some(s) = self.state.clone() else { return };
        if self.failed
            || s.leader != Some(self.me)
            || self.role == Role::Leader
            || self.throttled(now)
        {
            return;
        }
        if self.step_aside(now) {
            return;
        }
        self.proposed_leader = Some(s.leader_epoch + 1);
        self.propose(now, PartitionState { leader_epoch: s.leader_epoch + 1, ..s });
    }

    /// A replica whose log may have lost acknowledged data (its storage failed, or it started
    /// after an unclean shutdown: see [`Replica::mark_unclean_start`]) leaves leadership and the
    /// ISR while another live ISR member can take over, so the partition is led from a log
    /// that has everything committed; it rejoins the ISR once caught up. Returns whether it
    /// proposed that.
    fn step_aside(&mut self, now: Instant) -> bool {
        let Some(s) = self.state.clone() else { return false };
        if !(self.failed || self.unclean) || !s.isr.contains(&self.me) {
            self.unclean = false;
            return false;
        }
        let others: Vec<NodeId> = s.isr.iter().copied().filter(|&n| n != self.me).collect();
        if !others.iter().any(|&n| self.is_alive(n)) {
            // Nobody better: keep what this log has (and serve again, if it can).
            self.unclean = false;
            return false;
        }
        if self.throttled(now) {
            return true;
        }
        let leads = s.leader == Some(self.me);
        let state = PartitionState {
            leader: if leads { None } else { s.leader },
            leader_epoch: if leads { s.leader_epoch + 1 } else { s.leader_epoch },
            isr: others,
            ..s
        };
        self.propose(now, state);
        true
    }

    /// Tells the replica its process did not stop cleanly (no clean-shutdown record): its log
    /// may lack what it had acknowledged (a power loss in `periodic` mode). While another ISR
    /// member is alive it will not lead, and leaves the ISR until it has caught up again.
    pub fn mark_unclean_start(&mut self) {
        self.unclean = true;
    }

    fn step_down(&mut self, role: Role, epoch: i32) {
        if self.role == Role::Leader {
            for (_, p) in std::mem::take(&mut self.pending) {
                self.out.push_back(Output::Event(Event::ProduceFailed {
                    id: p.id,
                    error: ProduceError::LeaderChanged,
                }));
            }
            for p in std::mem::take(&mut self.parked) {
                self.out.push_back(Output::Send(
                    p.from,
                    Msg::Fetched {
                        epoch: self.epoch,
                        offset: p.offset,
                        last_epoch: p.last_epoch,
                        answer: FetchAnswer::NotLeader,
                    },
                ));
            }
            self.progress.clear();
        }
        if self.role != role || self.epoch != epoch {
            self.role = role;
            self.epoch = epoch;
            self.event(Event::Role { role, epoch });
        }
    }

    fn become_leader(&mut self, now: Instant, epoch: i32) {
        if let Err(e) = self.log.begin_epoch(epoch) {
            self.storage_failed(e);
            return;
        }
        self.step_down(Role::Leader, epoch);
        self.epoch_start = self.log.end_offset();
        self.fetch_sent = None;
        self.next_fetch = None;
        self.progress.clear();
        self.track_replicas(now);
        // The high watermark carries over from following; it moves once the ISR reports.
        self.hw = self.hw.min(self.log.end_offset()).max(self.log.start_offset());
        self.advance_hw(now);
    }

    fn replicas(&self) -> Vec<NodeId> {
        self.state.as_ref().map(|s| s.replicas.clone()).unwrap_or_default()
    }

    /// The leader follows the recorded replica list: a replica added by a reassignment gets a
    /// progress entry (it fetches, and joins the ISR once caught up, like any follower coming
    /// back); a removed one loses its entry (its fetches are refused from then on).
    fn track_replicas(&mut self, now: Instant) {
        let replicas = self.replicas();
        self.progress.retain(|n, _| replicas.contains(n));
        for n in replicas {
            if n != self.me {
                self.progress.entry(n).or_insert(Progress {
                    leo: None,
                    caught_up_at: now,
                    leo_at_answer: -1,
                    answered_at: now,
                });
            }
        }
        self.parked.retain(|p| self.progress.contains_key(&p.from));
    }

    /// The replica list the partition should have: the ring's preference list for it, which
    /// changes when nodes join, leave or are removed. Only the leader acts on it
    /// ([`Replica::maybe_reassign`]); the driver passes it whatever the role, whenever it may
    /// have changed.
    pub fn handle_target(&mut self, now: Instant, target: Vec<NodeId>) {
        self.last_now = self.last_now.max(now);
        if target.is_empty() || self.target.as_ref() == Some(&target) {
            return;
        }
        self.target = Some(target);
        self.maybe_reassign(now);
    }

    /// The move this replica carries out as leader, if one is in progress: the target's
    /// members not yet in the recorded ISR (each with its log end as of its last fetch, `None`
    /// before one), and the listed replicas the target drops. `None` on a follower, without a
    /// target, or once the list is the target.
    pub fn moving(&self) -> Option<Move> {
        let (Some(s), Some(t)) = (self.state.as_ref(), self.target.as_ref()) else { return None };
        if self.role != Role::Leader || same_members(&s.replicas, t) {
            return None;
        }
        let adding = t
            .iter()
            .filter(|n| !s.isr.contains(n))
            .map(|&n| (n, self.progress.get(&n).and_then(|p| p.leo)))
            .collect();
        let removing = s.replicas.iter().copied().filter(|n| !t.contains(n)).collect();
        Some(Move { adding, removing })
    }

    /// A reassignment, as Kafka's (KIP-455) in two recorded steps, each a compare-and-set of
    /// the partition state by its leader:
    /// 1. the replicas the target adds join the replica list, outside the ISR: they fetch from
    ///    the leader like any follower;
    /// 2. once every target replica is in the recorded ISR, the list becomes the target and the
    ///    ISR its members (all of them in sync: rule 3 holds, the high watermark was computed
    ///    over a superset). If the leader itself is not in the target, the same write ends its
    ///    leadership (no leader, next epoch): the first live ISR member in ring order takes
    ///    over (rule 4: it holds every committed record).
    ///
    /// A target that changes midway (another node joins or leaves) is followed from where the
    /// list is: step 1 adds what is new, step 2 drops whatever the final target lacks.
    fn maybe_reassign(&mut self, now: Instant) {
        if self.role != Role::Leader || self.failed || self.throttled(now) {
            return;
        }
        let (Some(s), Some(t)) = (self.state.clone(), self.target.clone()) else { return };
        if s.leader != Some(self.me)
            || s.leader_epoch != self.epoch
            || same_members(&s.replicas, &t)
        {
            return;
        }
        let missing: Vec<NodeId> = t.iter().copied().filter(|n| !s.replicas.contains(n)).collect();
        if !missing.is_empty() {
            let mut replicas = s.replicas.clone();
            replicas.extend(missing);
            self.propose(now, PartitionState { replicas, ..s });
            return;
        }
        if !t.iter().all(|n| s.isr.contains(n)) {
            return;
        }
        let stays = t.contains(&self.me);
        self.propose(
            now,
            PartitionState {
                replicas: t.clone(),
                leader: if stays { Some(self.me) } else { None },
                leader_epoch: if stays { s.leader_epoch } else { s.leader_epoch + 1 },
                isr: t,
            },
        );
    }

    fn committed_isr(&self) -> Vec<NodeId> {
        self.state.as_ref().map(|s| s.isr.clone()).unwrap_or_default()
    }

    /// Rule 4: a replica takes leadership only from the ISR, and only when the leader is gone:
    /// the first live ISR member in ring order proposes itself with the next epoch.
    fn maybe_elect(&mut self, now: Instant) {
        let Some(s) = self.state.clone() else { return };
        if self.failed || !s.isr.contains(&self.me) {
            return;
        }
        if s.leader.is_some_and(|l| self.is_alive(l)) {
            return;
        }
        let first = s.replicas.iter().copied().find(|&n| s.isr.contains(&n) && self.is_alive(n));
        if first != Some(self.me) || self.throttled(now) {
            return;
        }
        let isr: Vec<NodeId> = s.isr.iter().copied().filter(|&n| self.is_alive(n)).collect();
        self.proposed_leader = Some(s.leader_epoch + 1);
        self.propose(
            now,
            PartitionState {
                replicas: s.replicas.clone(),
                leader: Some(self.me),
                leader_epoch: s.leader_epoch + 1,
                isr,
            },
        );
    }

    fn throttled(&self, now: Instant) -> bool {
        self.proposed_at.is_some_and(|t| now.saturating_duration_since(t) < self.cfg.state_retry)
    }

    fn propose(&mut self, now: Instant, state: PartitionState) {
        self.proposed_at = Some(now);
        self.out.push_back(Output::ProposeState { expected_version: self.version, state });
    }

    /// The set the high watermark is computed over: the recorded ISR, plus replicas a pending
    /// proposal adds (rule 3: growth counts at once, shrinking only once recorded).
    fn hw_set(&self) -> Vec<NodeId> {
        let mut set = self.committed_isr();
        for n in &self.isr_adding {
            if !set.contains(n) {
                set.push(*n);
            }
        }
        set
    }

    fn advance_hw(&mut self, _now: Instant) {
        if self.role != Role::Leader {
            return;
        }
        let end = self.durable_end();
        let mut candidate = end;
        for n in self.hw_set() {
            if n == self.me {
                continue;
            }
            match self.progress.get(&n).and_then(|p| p.leo) {
                Some(leo) => candidate = candidate.min(leo),
                None => return,
            }
        }
        if candidate > self.hw {
            self.hw = candidate;
            self.event(Event::HighWatermark(candidate));
        }
        let isr_len = self.committed_isr().len();
        while let Some((&last, _)) = self.pending.first_key_value() {
            if last >= self.hw {
                break;
            }
            let p = self.pending.remove(&last).expect("present");
            let e = if isr_len >= self.cfg.min_insync {
                Event::Produced { id: p.id, base_offset: p.base, last_offset: last }
            } else {
                Event::ProduceFailed { id: p.id, error: ProduceError::NotEnoughReplicasAfterAppend }
            };
            self.event(e);
        }
    }

    /// The leader's ISR upkeep: drop followers that lag or are down (once recorded), add those
    /// that caught up (from the start of this epoch on).
    fn maintain_isr(&mut self, now: Instant) {
        if self.role != Role::Leader {
            return;
        }
        let Some(s) = self.state.clone() else { return };
        let floor = self.hw.max(self.epoch_start);
        let mut want = Vec::new();
        for &n in &s.replicas {
            if n == self.me {
                want.push(n);
                continue;
            }
            let Some(p) = self.progress.get(&n) else { continue };
            let in_isr = s.isr.contains(&n);
            let alive = self.is_alive(n);
            let lagging = now.saturating_duration_since(p.caught_up_at) > self.cfg.lag_time;
            let caught_up = p.leo.is_some_and(|l| l >= floor);
            // Members stay while alive and not lagging; others join once caught up.
            if alive && !lagging && (in_isr || caught_up) {
                want.push(n);
            }
        }
        // Additions proposed but not recorded count for the high watermark until the version
        // moves; if the ISR wanted is the recorded one, an unchanged proposal moves it (and
        // fences the outstanding one), so a lost addition cannot hold the high watermark.
        let outstanding = self.isr_adding.iter().any(|n| !want.contains(n));
        if want == s.isr && !outstanding {
            return;
        }
        if let Some((p, v)) = &self.isr_proposal {
            if *p == want && *v == self.version && self.throttled(now) {
                return;
            }
        }
        if self.throttled(now) {
            return;
        }
        self.isr_proposal = Some((want.clone(), self.version));
        self.isr_adding.extend(want.iter().copied().filter(|n| !s.isr.contains(n)));
        self.propose(now, PartitionState { isr: want, ..s });
        self.advance_hw(now);
    }

    /// A producer's batches, on the leader.
    pub fn produce(
        &mut self,
        now: Instant,
        id: u64,
        mut bytes: Vec<u8>,
        acks: Acks,
    ) -> Result<(), ProduceError> {
        self.last_now = self.last_now.max(now);
        if self.role != Role::Leader || self.failed {
            return Err(ProduceError::NotLeader {
                leader: self.state.as_ref().and_then(|s| s.leader),
                epoch: self.epoch,
            });
        }
        let isr = self.committed_isr().len();
        // A retry of batches already appended is answered whatever the ISR is now (with
        // `acks=all`, once the high watermark passes them).
        let duplicate = self.check_producers(&bytes)?;
        if duplicate.is_none() && acks == Acks::All && isr < self.cfg.min_insync {
            return Err(ProduceError::NotEnoughReplicas { isr, min: self.cfg.min_insync });
        }
        if let Some((base, last)) = duplicate {
            // A retry of batches already appended: answered with the offsets they got, once
            // they are as replicated as `acks` asks; nothing appended again.
            match acks {
                Acks::All if self.hw <= last => {
                    let deadline = now + self.cfg.produce_timeout;
                    // An earlier copy of the same request still waiting is answered as timed
                    // out (its producer retries and gets this answer).
                    if let Some(old) = self.pending.insert(last, Pending { id, base, deadline }) {
                        self.event(Event::ProduceFailed {
                            id: old.id,
                            error: ProduceError::Timeout,
                        });
                    }
                }
                Acks::All => {
                    self.event(Event::Produced { id, base_offset: base, last_offset: last })
                }
                Acks::Leader => self.answer_leader_ack(id, base, last),
                Acks::None => {}
            }
            return Ok(());
        }
        let info = match self.log.append_as_leader(&mut bytes, self.epoch, self.wall_ms) {
            Ok(i) => i,
            Err(e @ LogError::Io { .. }) => {
                let msg = e.to_string();
                return Err(ProduceError::Storage(msg));
            }
            Err(e) => return Err(ProduceError::Invalid(e.to_string())),
        };
        self.record_producers(&bytes);
        if self.cfg.flush_each_append && !self.defer_flushes {
            if let Err(e) = self.log.flush() {
                // The batch is in the log but not durable: its outcome is unknown.
                self.storage_failed(e);
                return Err(ProduceError::LeaderChanged);
            }
        }
        match acks {
            Acks::All => {
                self.pending.insert(
                    info.last_offset,
                    Pending {
                        id,
                        base: info.base_offset,
                        deadline: now + self.cfg.produce_timeout,
                    },
                );
            }
            Acks::Leader => self.answer_leader_ack(id, info.base_offset, info.last_offset),
            Acks::None => {}
        }
        self.answer_parked(now, true);
        self.advance_hw(now);
        Ok(())
    }

    /// Checks idempotent producers' batches against their sequences: `Some` offsets if every
    /// batch is a retry of one already appended (the first's base and the last's last offset),
    /// `None` if they are all to be appended.
    fn check_producers(&self, bytes: &[u8]) -> Result<Option<(i64, i64)>, ProduceError> {
        // Most produces carry only new batches, which the append then checks whole: their
        // headers are read here without a CRC pass of their own. Any other verdict trusts the
        // producer fields of the headers, so it stands only if every batch's CRC is right
        // (else the append refuses the request with the reason).
        match self.producer_verdict(bytes) {
            Ok(None) => Ok(None),
            _ if Batches::new(bytes, usize::MAX).any(|v| v.is_err()) => Ok(None),
            verdict => verdict,
        }
    }

    fn producer_verdict(&self, bytes: &[u8]) -> Result<Option<(i64, i64)>, ProduceError> {
        let mut dup: Option<(i64, i64)> = None;
        let mut fresh = false;
        for view in Batches::checked(bytes) {
            let Ok(v) = view else { return Ok(None) }; // the append refuses it with the reason
            let id = v.producer_id();
            if id < 0 {
                fresh = true;
                continue;
            }
            let first = v.base_sequence();
            let last = producer::last_seq(first, v.last_offset_delta().saturating_add(1));
            match self.producers.check(id, v.producer_epoch(), first, last) {
                Ok(Verdict::Append) => fresh = true,
                Ok(Verdict::Duplicate { first_offset, last_offset }) => {
                    dup = Some((dup.map_or(first_offset, |d| d.0), last_offset));
                }
                Err(e) => return Err(ProduceError::Sequence(e)),
            }
        }
        match (dup, fresh) {
            (Some(_), true) => Err(ProduceError::Invalid(
                "a request mixes retried batches with new ones; send them separately".into(),
            )),
            (d, _) => Ok(d),
        }
    }

    /// Remembers the idempotent producers' batches just appended (`bytes` as stored, with
    /// their offsets).
    fn record_producers(&mut self, bytes: &[u8]) {
        // Always batches the log just appended or read back, so checked already.
        for v in Batches::checked(bytes).flatten() {
            if v.producer_id() < 0 {
                continue;
            }
            let first_seq = v.base_sequence();
            self.producers.record(
                v.producer_id(),
                BatchMeta {
                    epoch: v.producer_epoch(),
                    first_seq,
                    last_seq: producer::last_seq(
                        first_seq,
                        v.last_offset_delta().saturating_add(1),
                    ),
                    first_offset: v.base_offset(),
                    last_offset: v.last_offset(),
                },
            );
        }
    }

    /// Producer state from the log's recent batches (after a restart): what a leader needs to
    /// recognise a retry of a batch it appended before. Producers seen only before the
    /// scanned window start afresh (their next batch must start a new epoch or sequence 0).
    fn rebuild_producers(&mut self) {
        self.producers = Producers::new();
        let end = self.log.end_offset();
        let mut at = self.log.recent_start();
        while at < end {
            let Ok(r) = self.log.read(at, 1 << 20, end) else { break };
            if r.bytes.is_empty() || r.next_offset <= at {
                break;
            }
            let bytes = r.bytes;
            self.record_producers(&bytes);
            at = r.next_offset;
        }
    }

    /// Consumers read from the leader, below the high watermark.
    pub fn read(&self, offset: i64, max_bytes: usize) -> Result<ReadResult, ProduceError> {
        if self.role != Role::Leader {
            return Err(ProduceError::NotLeader {
                leader: self.state.as_ref().and_then(|s| s.leader),
                epoch: self.epoch,
            });
        }
        self.log.read(offset, max_bytes, self.hw).map_err(|e| ProduceError::Invalid(e.to_string()))
    }

    /// A message from another replica.
    pub fn handle_message(&mut self, now: Instant, from: NodeId, msg: Msg) {
        self.last_now = self.last_now.max(now);
        if self.failed {
            if let Msg::Fetch { epoch, offset, last_epoch, .. } = msg {
                self.cur_fetch = (offset, last_epoch);
                self.reply(from, epoch, FetchAnswer::NotLeader);
            }
            return;
        }
        match msg {
            Msg::Fetch { epoch, offset, last_epoch, max_bytes } => {
                self.on_fetch(now, from, epoch, offset, last_epoch, max_bytes)
            }
            Msg::Fetched { epoch, offset, last_epoch, answer } => {
                if offset != self.log.end_offset()
                    || last_epoch != self.log.latest_epoch().unwrap_or(-1)
                {
                    return;
                }
                self.on_fetched(now, from, epoch, answer)
            }
        }
    }

    /// Answers a fetch; the answer carries the epoch the fetch was for, so the follower can
    /// match it.
    fn reply(&mut self, to: NodeId, epoch: i32, answer: FetchAnswer) {
        let (offset, last_epoch) = self.cur_fetch;
        self.out.push_back(Output::Send(to, Msg::Fetched { epoch, offset, last_epoch, answer }));
    }

    fn on_fetch(
        &mut self,
        now: Instant,
        from: NodeId,
        epoch: i32,
        offset: i64,
        last_epoch: i32,
        max_bytes: u32,
    ) {
        self.cur_fetch = (offset, last_epoch);
        if self.role != Role::Leader || epoch > self.epoch {
            if epoch > self.epoch {
                // The follower knows a newer epoch than this leader: this leader is stale.
                self.out.push_back(Output::RefreshState);
            }
            self.reply(from, epoch, FetchAnswer::NotLeader);
            return;
        }
        if epoch < self.epoch {
            self.reply(from, epoch, FetchAnswer::FencedEpoch);
            return;
        }
        if !self.progress.contains_key(&from) {
            self.reply(from, epoch, FetchAnswer::NotLeader);
            return;
        }
        // Rule 2: the follower's last epoch must end, in this log, at or after its log end;
        // otherwise it holds batches this log does not, and learns where to cut.
        if last_epoch >= 0 {
            let (e, end) = self.log.end_offset_for_epoch(last_epoch);
            if e != last_epoch || end < offset {
                self.reply(from, epoch, FetchAnswer::Diverging { epoch: e, end_offset: end });
                return;
            }
        }
        let (start, end) = (self.log.start_offset(), self.log.end_offset());
        if offset < start || offset > end {
            self.reply(from, epoch, FetchAnswer::OutOfRange { log_start: start, log_end: end });
            return;
        }
        let hw = self.hw;
        let lag = self.cfg.lag_time + Duration::from_millis(1);
        if let Some(p) = self.progress.get_mut(&from) {
            if offset < hw {
                // Below the high watermark: this follower lost records it had (a power loss):
                // out of the ISR at once, until it has them again.
                p.caught_up_at = now.checked_sub(lag).unwrap_or(p.caught_up_at).min(p.caught_up_at);
            }
            p.leo = Some(offset);
            if offset >= end {
                p.caught_up_at = now;
            } else if offset >= p.leo_at_answer {
                p.caught_up_at = p.caught_up_at.max(p.answered_at);
            }
        }
        self.advance_hw(now);
        self.maintain_isr(now);
        self.parked.retain(|p| p.from != from);
        self.parked.push(Parked {
            from,
            offset,
            last_epoch,
            max_bytes,
            deadline: now + self.cfg.fetch_wait,
        });
        self.answer_parked(now, false);
    }

    /// Answers parked fetches that have data (or all of them when `timeout` passes them).
    fn answer_parked(&mut self, now: Instant, _appended: bool) {
        let end = self.log.end_offset();
        let parked = std::mem::take(&mut self.parked);
        for p in parked {
            let has_data = p.offset < end;
            if !has_data && now < p.deadline {
                self.parked.push(p);
                continue;
            }
            let answer = match self.log.read(p.offset, p.max_bytes as usize, end) {
                Ok(r) => FetchAnswer::Records {
                    bytes: r.bytes,
                    high_watermark: self.hw,
                    log_start: self.log.start_offset(),
                },
                Err(LogError::OffsetOutOfRange { start, end, .. }) => {
                    FetchAnswer::OutOfRange { log_start: start, log_end: end }
                }
                Err(e) => {
                    self.storage_failed(e);
                    return;
                }
            };
            if let Some(pr) = self.progress.get_mut(&p.from) {
                pr.leo_at_answer = end;
                pr.answered_at = now;
            }
            let epoch = self.epoch;
            self.cur_fetch = (p.offset, p.last_epoch);
            self.reply(p.from, epoch, answer);
        }
    }

    fn on_fetched(&mut self, now: Instant, from: NodeId, epoch: i32, answer: FetchAnswer) {
        if self.role != Role::Follower(from) || epoch != self.epoch {
            return;
        }
        self.fetch_sent = None;
        self.next_fetch = Some(now);
        match answer {
            FetchAnswer::Records { bytes, high_watermark, log_start: _ } => {
                if !bytes.is_empty() {
                    // A duplicated or late answer does not continue the log: ignore it.
                    // Only the first base offset is read here; the append checks it all.
                    let first =
                        crate::batch::BatchView::checked(&bytes).map(|(v, _)| v.base_offset());
                    if first.ok() != Some(self.log.end_offset()) {
                        self.maybe_fetch(now);
                        return;
                    }
                    let appended = self.log.append_as_follower(&bytes, self.wall_ms);
                    if appended.is_ok() {
                        self.record_producers(&bytes);
                    }
                    if let Err(e) = appended {
                        match e {
                            LogError::Io { .. } => {
                                self.storage_failed(e);
                                return;
                            }
                            // A leader's batches that do not fit are a protocol anomaly; fetch
                            // again after a pause rather than apply them.
                            _ => {
                                self.next_fetch = Some(now + self.cfg.state_retry);
                                self.maybe_fetch(now);
                                return;
                            }
                        }
                    }
                    if self.cfg.flush_each_append && !self.defer_flushes {
                        if let Err(e) = self.log.flush() {
                            self.storage_failed(e);
                            return;
                        }
                    }
                }
                self.hw = high_watermark.min(self.log.end_offset());
            }
            FetchAnswer::Diverging { epoch: e, end_offset } => {
                let target = if e < 0 {
                    self.hw
                } else {
                    let (_, mine) = self.log.end_offset_for_epoch(e);
                    if mine < 0 {
                        end_offset
                    } else {
                        end_offset.min(mine)
                    }
                };
                self.truncate(target);
            }
            FetchAnswer::OutOfRange { log_start, log_end } => {
                if self.log.end_offset() > log_end {
                    self.truncate(log_end);
                }
                if self.log.end_offset() < log_start || self.log.start_offset() > log_end {
                    if let Err(e) = self.log.reset_to(log_start) {
                        self.storage_failed(e);
                        return;
                    }
                    self.producers = Producers::new();
                    self.hw = log_start;
                    self.cut_unflushed(log_start);
                    // An empty log, durable at once: nothing owed.
                    self.flushed_end = log_start;
                    self.event(Event::Truncated(log_start));
                }
            }
            FetchAnswer::FencedEpoch | FetchAnswer::NotLeader => {
                self.out.push_back(Output::RefreshState);
                self.next_fetch = Some(now + self.cfg.state_retry);
            }
        }
        self.maybe_fetch(now);
    }

    fn truncate(&mut self, to: i64) {
        match self.log.truncate_to(to) {
            Ok(end) => {
                // The producers' windows hold only their newest batches: ones cut here may
                // have pushed out older ones that are still in the log, which a retry must
                // still find. Rebuilt from the log (a truncation follows a leader change).
                self.rebuild_producers();
                self.hw = self.hw.min(end);
                self.cut_unflushed(end);
                self.event(Event::Truncated(end));
            }
            Err(e) => self.storage_failed(e),
        }
    }

    /// Group commit, for `flush_each_append` mode: while on, an append does not flush at once;
    /// it counts (towards the high watermark, an `acks=1` answer, the follower's next fetch)
    /// only once a flush covers it. The driver makes those flushes: [`Replica::flush_owed`]
    /// on its own task, or [`Replica::start_flush`] and [`Replica::finish_flush`] with the
    /// disk's wait elsewhere, while later appends go on and wait for the next one. Either way
    /// one flush covers everything appended since the last. Turned on before the first append.
    pub fn defer_flushes(&mut self, on: bool) {
        if on && !self.defer_flushes {
            self.flushed_end = self.log.end_offset();
        }
        self.defer_flushes = on;
    }

    fn deferring(&self) -> bool {
        self.defer_flushes && self.cfg.flush_each_append
    }

    /// Whether something appended still waits for a flush (one in flight, or one to make).
    pub fn owes_flush(&self) -> bool {
        self.deferring() && self.log.end_offset() > self.flushed_end
    }

    /// Whether a flush is to be made now: something owed, none in flight, the log not failed.
    fn flush_due(&self) -> bool {
        self.owes_flush() && self.flushing.is_none() && !self.failed
    }

    /// Whether a detached flush is in flight.
    pub fn flush_in_flight(&self) -> bool {
        self.flushing.is_some()
    }

    /// Flushes what was appended since the last flush (see [`Replica::defer_flushes`]), on
    /// the caller's thread; then what waited for it counts. A failed flush fails the
    /// replica's log: the `acks=1` answers that waited get an unknown outcome. Does nothing
    /// while a detached flush is in flight: that one finishes first.
    pub fn flush_owed(&mut self, now: Instant) {
        self.last_now = self.last_now.max(now);
        if !self.flush_due() {
            return;
        }
        let end = self.log.end_offset();
        if let Err(e) = self.log.flush() {
            self.flush_failed(e);
            return;
        }
        self.flushed_end = end;
        self.flushed(now);
    }

    /// Starts a flush of what was appended since the last one without waiting for the disk
    /// (see [`ReplicaLog::flush_detached`]): the driver completes the handle it gets back
    /// away from this task and reports with [`Replica::finish_flush`]; appends made meanwhile
    /// wait for the next flush. `None` if nothing is owed, a flush is already in flight, or
    /// nothing needed the disk (what was owed counts at once).
    pub fn start_flush(&mut self, now: Instant) -> Option<L::Detached> {
        self.last_now = self.last_now.max(now);
        if !self.flush_due() {
            return None;
        }
        let end = self.log.end_offset();
        match self.log.flush_detached() {
            Ok(Some(handle)) => {
                self.flushing = Some(end);
                Some(handle)
            }
            Ok(None) => {
                self.flushed_end = end;
                self.flushed(now);
                None
            }
            Err(e) => {
                self.flush_failed(e);
                None
            }
        }
    }

    /// The detached flush in flight completed (`Ok`) or failed; what it covered counts, or
    /// the log fails as in [`Replica::flush_owed`].
    pub fn finish_flush(&mut self, now: Instant, result: Result<(), LogError>) {
        self.last_now = self.last_now.max(now);
        let Some(end) = self.flushing.take() else { return };
        if let Err(e) = result {
            self.flush_failed(e);
            return;
        }
        self.flushed_end = self.flushed_end.max(end);
        self.flushed(now);
    }

    fn flush_failed(&mut self, e: LogError) {
        for (id, _, _) in std::mem::take(&mut self.held) {
            self.event(Event::ProduceFailed { id, error: ProduceError::LeaderChanged });
        }
        self.storage_failed(e);
    }

    /// A flush moved the durable end: the `acks=1` answers it covers go out, the high
    /// watermark and a follower's next fetch may move.
    fn flushed(&mut self, now: Instant) {
        let durable = self.durable_end();
        let (done, wait): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.held).into_iter().partition(|h| h.2 < durable);
        self.held = wait;
        for (id, base, last) in done {
            self.event(Event::Produced { id, base_offset: base, last_offset: last });
        }
        self.advance_hw(now);
        self.maybe_fetch(now);
    }

    /// A truncation to `end`: what a later append adds past it is not durable, whatever was
    /// there before, nor covered by a flush in flight; `acks=1` answers waiting for a flush
    /// of records cut here fail.
    fn cut_unflushed(&mut self, end: i64) {
        self.flushed_end = self.flushed_end.min(end);
        self.flushing = self.flushing.map(|f| f.min(end));
        let (cut, keep): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.held).into_iter().partition(|h| h.2 >= end);
        self.held = keep;
        for (id, _, _) in cut {
            self.event(Event::ProduceFailed { id, error: ProduceError::LeaderChanged });
        }
    }

    /// The log end that counts: all of it, unless flushes are deferred.
    fn durable_end(&self) -> i64 {
        let end = self.log.end_offset();
        if self.deferring() {
            self.flushed_end.min(end)
        } else {
            end
        }
    }

    /// An `acks=1` answer: at once, or after a flush if the records are not durable yet.
    fn answer_leader_ack(&mut self, id: u64, base: i64, last: i64) {
        if last >= self.durable_end() {
            self.held.push((id, base, last));
        } else {
            self.event(Event::Produced { id, base_offset: base, last_offset: last });
        }
    }

    fn storage_failed(&mut self, e: LogError) {
        self.failed = true;
        let epoch = self.epoch;
        if self.role == Role::Leader {
            self.step_down(Role::None, epoch);
        } else {
            self.role = Role::None;
        }
        self.event(Event::StorageFailed(e.to_string()));
        // Leave leadership and the ISR so another in-sync replica takes over (retried from
        // `handle_timeout` until recorded).
        self.proposed_at = None;
        let now = self.last_now;
        self.step_aside(now);
    }

    fn maybe_fetch(&mut self, now: Instant) {
        let Role::Follower(leader) = self.role else { return };
        if self.fetch_sent.is_some() || self.next_fetch.is_none_or(|t| t > now) {
            return;
        }
        // The fetch's offset tells the leader this replica holds the log up to there, which
        // in `flush_each_append` mode means durably: not before the owed flush.
        if self.owes_flush() {
            return;
        }
        self.fetch_sent = Some(now);
        self.next_fetch = None;
        let msg = Msg::Fetch {
            epoch: self.epoch,
            offset: self.log.end_offset(),
            last_epoch: self.log.latest_epoch().unwrap_or(-1),
            max_bytes: self.cfg.fetch_max_bytes,
        };
        self.out.push_back(Output::Send(leader, msg));
    }

    /// Time passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.last_now = self.last_now.max(now);
        if now.saturating_duration_since(self.refreshed_at) >= self.cfg.refresh_every {
            self.refreshed_at = now;
            self.out.push_back(Output::RefreshState);
        }
        if self.failed || self.unclean {
            self.step_aside(now);
        }
        if self.failed {
            return;
        }
        if now.saturating_duration_since(self.refreshed_at) >= self.cfg.refresh_every {
            self.refreshed_at = now;
            self.out.push_back(Output::RefreshState);
        }
        match self.role {
            Role::Leader => {
                self.answer_parked(now, false);
                let expired: Vec<i64> = self
                    .pending
                    .iter()
                    .filter(|(_, p)| p.deadline <= now)
                    .map(|(&k, _)| k)
                    .collect();
                for k in expired {
                    let p = self.pending.remove(&k).expect("present");
                    self.event(Event::ProduceFailed { id: p.id, error: ProduceError::Timeout });
                }
                self.maintain_isr(now);
                self.maybe_reassign(now);
            }
            Role::Follower(_) => {
                if self
                    .fetch_sent
                    .is_some_and(|t| now.saturating_duration_since(t) >= self.cfg.fetch_timeout)
                {
                    self.fetch_sent = None;
                    self.next_fetch = Some(now);
                }
                self.maybe_fetch(now);
            }
            Role::None => {}
        }
        // Retried whatever the role: a leader of record not leading asks for the next epoch
        // until the metadata service records it.
        self.maybe_reclaim(now);
        self.maybe_elect(now);
    }

    /// When [`Replica::handle_timeout`] should be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t = (self.refreshed_at + self.cfg.refresh_every)
            .max(self.last_now + Duration::from_millis(1));
        let last = self.last_now;
        // Deadlines already acted on (a follower still lagging while its removal waits for
        // the metadata service) are not timers any more.
        let mut consider = |x: Instant| {
            if x > last && x < t {
                t = x;
            }
        };
        if let Some(p) = self.proposed_at {
            consider(p + self.cfg.state_retry);
        }
        match self.role {
            Role::Leader => {
                for p in &self.parked {
                    consider(p.deadline);
                }
                for p in self.pending.values() {
                    consider(p.deadline);
                }
                for p in self.progress.values() {
                    consider(p.caught_up_at + self.cfg.lag_time + Duration::from_millis(1));
                }
            }
            Role::Follower(_) => {
                if let Some(s) = self.fetch_sent {
                    consider(s + self.cfg.fetch_timeout);
                }
                if let (None, Some(n)) = (self.fetch_sent, self.next_fetch) {
                    consider(n.max(last + Duration::from_millis(1)));
                }
            }
            Role::None => {}
        }
        Some(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{encode_batch, NewRecord, ProducerStamp};
    use crate::mem::MemLog;

    fn produced(r: &mut Replica<MemLog>) -> Vec<(u64, i64, i64)> {
        let mut out = Vec::new();
        while let Some(o) = r.poll_output() {
            if let Output::Event(Event::Produced { id, base_offset, last_offset }) = o {
                out.push((id, base_offset, last_offset));
            }
        }
        out
    }

    #[test]
    fn a_retried_batch_is_answered_once_stored_but_a_damaged_copy_is_refused() {
        let (me, now) = (NodeId(1 << 96), Instant::now());
        let mut r = Replica::new(me, MemLog::new(), ReplicaConfig::default(), now);
        // No leader yet: the replica proposes itself, and the metadata service agrees.
        let state =
            PartitionState { replicas: vec![me], leader: None, leader_epoch: 0, isr: vec![me] };
        r.handle_state(now, state, 1);
        let mut proposed = None;
        while let Some(o) = r.poll_output() {
            if let Output::ProposeState { state, .. } = o {
                proposed = Some(state);
            }
        }
        let proposed = proposed.expect("a leadership proposal");
        assert_eq!(proposed.leader, Some(me));
        r.handle_state(now, proposed, 2);
        produced(&mut r);
        let record = NewRecord {
            key: None,
            value: Some(b"v".to_vec()),
            headers: Vec::new(),
            timestamp_ms: 1,
        };
        let stamp = ProducerStamp { id: 7, epoch: 0, base_sequence: 0 };
        let batch = encode_batch(&[record], Some(stamp)).expect("batch");
        r.produce(now, 1, batch.clone(), Acks::Leader).expect("first produce");
        assert_eq!(produced(&mut r), vec![(1, 0, 0)]);
        // The same batch again (a retry): the offsets it got, nothing appended.
        r.produce(now, 2, batch.clone(), Acks::Leader).expect("retry");
        assert_eq!(produced(&mut r), vec![(2, 0, 0)]);
        assert_eq!(r.log().end_offset(), 1);
        // A copy damaged past its header: its producer fields still read as a retry, but its
        // CRC is wrong, so it is refused rather than answered as stored.
        let mut damaged = batch;
        let last = damaged.len() - 1;
        damaged[last] ^= 0xff;
        let refused = r.produce(now, 3, damaged, Acks::Leader);
        assert!(
            matches!(&refused, Err(ProduceError::Invalid(why)) if why.contains("CRC")),
            "{refused:?}"
        );
        assert_eq!(produced(&mut r), vec![]);
        assert_eq!(r.log().end_offset(), 1);
    }
}
