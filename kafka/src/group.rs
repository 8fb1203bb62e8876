//! Kafka's classic consumer-group protocol, coordinator side, as a state machine with no IO and
//! no clock (the caller passes `now` in milliseconds of any monotonic clock): JoinGroup,
//! SyncGroup, Heartbeat, LeaveGroup, and the fencing of offset commits.
//!
//! Kafka's group states and transitions (`GroupCoordinator.scala`):
//! - **Empty**: no members. A join starts a rebalance.
//! - **PreparingRebalance**: joins are parked until every known member has rejoined, or until
//!   the longest rebalance timeout of the members passes (members that did not rejoin are
//!   dropped). Then the generation grows by one, a protocol every member supports is chosen, and
//!   every parked join is answered: the leader (the previous one if it stayed, else the first
//!   member) gets every member's subscription.
//! - **CompletingRebalance**: syncs are parked until the leader's sync brings the assignment;
//!   then every member gets its part.
//! - **Stable**: heartbeats keep members in; a member silent for its session timeout is
//!   dropped, and a join, a leave or a drop starts a rebalance. Members learn of a rebalance from
//!   their heartbeat's `REBALANCE_IN_PROGRESS` and rejoin.
//!
//! A join with an empty member id (JoinGroup v4 and later) is answered `MEMBER_ID_REQUIRED` with
//! the id to use, which the member must join with within its session timeout (KIP-394).
//!
//! What Starling does not do: static membership (JoinGroup is served up to version 4, so a
//! client configured with `group.instance.id` says the broker does not support it), the
//! initial rebalance delay (the first join completes as soon as
//! every member known has joined), and the incremental protocol of KIP-848. Group state lives
//! in the coordinating node's memory; committed offsets are in the key-value store (see
//! [`crate::serve`]), so a group whose coordinator moves rejoins at the new one and continues
//! from its commits.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use kafka_protocol::error::ResponseError;

/// Identifies a parked request (the caller's handle for answering it later).
pub type Token = u64;

/// A group member's subscription, as it joined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinArgs {
    pub group: String,
    pub member_id: String,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: u64,
    pub rebalance_timeout_ms: u64,
    pub protocol_type: String,
    /// `(name, metadata)` in the member's order of preference.
    pub protocols: Vec<(String, Bytes)>,
    /// JoinGroup v4 and later: an empty member id is answered with one to use.
    pub require_known_member_id: bool,
}

/// The answer to a join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinAnswer {
    pub error: i16,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub leader: String,
    pub member_id: String,
    /// Every member's id and subscription, for the leader only.
    pub members: Vec<(String, Bytes)>,
}

/// The answer to a sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncAnswer {
    pub error: i16,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub assignment: Bytes,
}

/// An answer to a parked request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Join(Token, JoinAnswer),
    Sync(Token, SyncAnswer),
}

/// A group as DescribeGroups and ListGroups show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupView {
    pub group: String,
    pub state: &'static str,
    pub protocol_type: String,
    pub protocol: String,
    pub generation: i32,
    /// `(member id, client id, client host, subscription, assignment)`.
    pub members: Vec<(String, String, String, Bytes, Bytes)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
}

impl State {
    fn name(self) -> &'static str {
        match self {
            State::Empty => "Empty",
            State::PreparingRebalance => "PreparingRebalance",
            State::CompletingRebalance => "CompletingRebalance",
            State::Stable => "Stable",
        }
    }
}

#[derive(Debug)]
struct Member {
    client_id: String,
    client_host: String,
    session_timeout_ms: u64,
    rebalance_timeout_ms: u64,
    protocols: Vec<(String, Bytes)>,
    last_seen: u64,
    join_waiter: Option<Token>,
    sync_waiter: Option<Token>,
    assignment: Bytes,
}

#[derive(Debug)]
struct Group {
    state: State,
    generation: i32,
    protocol_type: String,
    protocol: Option<String>,
    leader: Option<String>,
    members: BTreeMap<String, Member>,
    /// Member ids handed out with `MEMBER_ID_REQUIRED`, and until when they may join.
    pending: HashMap<String, u64>,
    /// When a rebalance stops waiting for members to rejoin.
    rebalance_deadline: u64,
}

impl Group {
    fn new() -> Group {
        Group {
            state: State::Empty,
            generation: 0,
            protocol_type: String::new(),
            protocol: None,
            leader: None,
            members: BTreeMap::new(),
            pending: HashMap::new(),
            rebalance_deadline: 0,
        }
    }

    /// Protocols every member but `except` supports (`None`: no such member).
    fn common_protocols(&self, except: Option<&str>) -> Option<Vec<String>> {
        let mut it =
            self.members.iter().filter(|(id, _)| Some(id.as_str()) != except).map(|(_, m)| m);
        let first = it.next()?;
        let mut common: Vec<String> = first.protocols.iter().map(|(n, _)| n.clone()).collect();
        for m in it {
            common.retain(|n| m.protocols.iter().any(|(p, _)| p == n));
        }
        Some(common)
    }
}

/// Every group this node coordinates.
#[derive(Debug, Default)]
pub struct Groups {
    groups: HashMap<String, Group>,
    /// Part of every member id this coordinator hands out, so ids from another coordinator, or
    /// from this one before a restart, never match one of its members (Kafka uses a UUID).
    instance: u64,
    next_member: u64,
}

fn code(e: ResponseError) -> i16 {
    e.code()
}

fn join_error(e: ResponseError, member_id: &str) -> JoinAnswer {
    JoinAnswer {
        error: code(e),
        generation: -1,
        protocol_type: None,
        protocol: None,
        leader: String::new(),
        member_id: member_id.to_string(),
        members: Vec::new(),
    }
}

fn sync_error(e: ResponseError) -> SyncAnswer {
    SyncAnswer { error: code(e), protocol_type: None, protocol: None, assignment: Bytes::new() }
}

impl Groups {
    /// `instance` must differ between coordinators and between restarts of one (a random
    /// number): it is part of every member id handed out.
    pub fn new(instance: u64) -> Groups {
        Groups { instance, ..Groups::default() }
    }

    /// A join. The answer is in the replies, now (an error, a rebalance that completes with
    /// it) or from a later call.
    pub fn join(&mut self, now: u64, token: Token, a: JoinArgs) -> Vec<Reply> {
        let mut out = Vec::new();
        if a.protocols.is_empty() || a.protocol_type.is_empty() {
            let e = join_error(ResponseError::InconsistentGroupProtocol, &a.member_id);
            return vec![Reply::Join(token, e)];
        }
        let fresh = a.member_id.is_empty();
        let member_id = if fresh {
            self.next_member += 1;
            let id = format!("{}-{:016x}-{}", a.client_id, self.instance, self.next_member);
            if a.require_known_member_id {
                let g = self.groups.entry(a.group.clone()).or_insert_with(Group::new);
                g.pending.insert(id.clone(), now + a.session_timeout_ms);
                let e = join_error(ResponseError::MemberIdRequired, &id);
                return vec![Reply::Join(token, e)];
            }
            id
        } else {
            a.member_id.clone()
        };
        let g = self.groups.entry(a.group.clone()).or_insert_with(Group::new);
        let known = g.members.contains_key(&member_id);
        if !known && !fresh && g.pending.remove(&member_id).is_none() {
            return vec![Reply::Join(
                token,
                join_error(ResponseError::UnknownMemberId, &member_id),
            )];
        }
        // The group's protocol type and a protocol in common must hold with this member.
        if let Some(common) = g.common_protocols(Some(&member_id)) {
            let shares = a.protocols.iter().any(|(n, _)| common.contains(n));
            if a.protocol_type != g.protocol_type || !shares {
                let e = join_error(ResponseError::InconsistentGroupProtocol, &member_id);
                return vec![Reply::Join(token, e)];
            }
        }
        g.protocol_type = a.protocol_type.clone();
        let m = g.members.entry(member_id.clone()).or_insert_with(|| Member {
            client_id: a.client_id.clone(),
            client_host: a.client_host.clone(),
            session_timeout_ms: a.session_timeout_ms,
            rebalance_timeout_ms: a.rebalance_timeout_ms,
            protocols: Vec::new(),
            last_seen: now,
            join_waiter: None,
            sync_waiter: None,
            assignment: Bytes::new(),
        });
        m.protocols = a.protocols;
        m.session_timeout_ms = a.session_timeout_ms;
        m.rebalance_timeout_ms = a.rebalance_timeout_ms;
        m.last_seen = now;
        if let Some(old) = m.join_waiter.replace(token) {
            // The member sent its join again: the earlier copy gets no assignment.
            out.push(Reply::Join(old, join_error(ResponseError::RebalanceInProgress, &member_id)));
        }
        if g.state != State::PreparingRebalance {
            prepare_rebalance(g, now, &mut out);
        }
        maybe_complete_join(g, now, false, &mut out);
        out
    }

    /// A sync.
    pub fn sync(
        &mut self,
        now: u64,
        token: Token,
        group: &str,
        generation: i32,
        member_id: &str,
        assignments: Vec<(String, Bytes)>,
    ) -> Vec<Reply> {
        let Some(g) = self.groups.get_mut(group) else {
            return vec![Reply::Sync(token, sync_error(ResponseError::UnknownMemberId))];
        };
        let Some(m) = g.members.get_mut(member_id) else {
            return vec![Reply::Sync(token, sync_error(ResponseError::UnknownMemberId))];
        };
        m.last_seen = now;
        if generation != g.generation {
            return vec![Reply::Sync(token, sync_error(ResponseError::IllegalGeneration))];
        }
        match g.state {
            State::Empty => vec![Reply::Sync(token, sync_error(ResponseError::UnknownMemberId))],
            State::PreparingRebalance => {
                vec![Reply::Sync(token, sync_error(ResponseError::RebalanceInProgress))]
            }
            State::Stable => {
                let answer = SyncAnswer {
                    error: 0,
                    protocol_type: Some(g.protocol_type.clone()),
                    protocol: g.protocol.clone(),
                    assignment: m.assignment.clone(),
                };
                vec![Reply::Sync(token, answer)]
            }
            State::CompletingRebalance => {
                let mut out = Vec::new();
                if let Some(old) = m.sync_waiter.replace(token) {
                    out.push(Reply::Sync(old, sync_error(ResponseError::RebalanceInProgress)));
                }
                if g.leader.as_deref() == Some(member_id) {
                    let mut given: HashMap<String, Bytes> = assignments.into_iter().collect();
                    for (id, m) in g.members.iter_mut() {
                        m.assignment = given.remove(id).unwrap_or_default();
                    }
                    g.state = State::Stable;
                    for m in g.members.values_mut() {
                        if let Some(t) = m.sync_waiter.take() {
                            out.push(Reply::Sync(
                                t,
                                SyncAnswer {
                                    error: 0,
                                    protocol_type: Some(g.protocol_type.clone()),
                                    protocol: g.protocol.clone(),
                                    assignment: m.assignment.clone(),
                                },
                            ));
                        }
                    }
                }
                out
            }
        }
    }

    /// A heartbeat's error code (0: carry on).
    pub fn heartbeat(&mut self, now: u64, group: &str, generation: i32, member_id: &str) -> i16 {
        let Some(g) = self.groups.get_mut(group) else {
            return code(ResponseError::UnknownMemberId);
        };
        let Some(m) = g.members.get_mut(member_id) else {
            return code(ResponseError::UnknownMemberId);
        };
        m.last_seen = now;
        if generation != g.generation {
            return code(ResponseError::IllegalGeneration);
        }
        if g.state == State::PreparingRebalance {
            return code(ResponseError::RebalanceInProgress);
        }
        0
    }

    /// Members leave; each member's error code (0: it was in the group), and the replies the
    /// change releases.
    pub fn leave(&mut self, now: u64, group: &str, members: &[String]) -> (Vec<i16>, Vec<Reply>) {
        let mut out = Vec::new();
        let Some(g) = self.groups.get_mut(group) else {
            return (vec![code(ResponseError::UnknownMemberId); members.len()], out);
        };
        let mut codes = Vec::new();
        let mut changed = false;
        for id in members {
            match g.members.remove(id) {
                Some(m) => {
                    changed = true;
                    release(m, &mut out);
                    codes.push(0);
                }
                None => codes.push(code(ResponseError::UnknownMemberId)),
            }
        }
        if changed {
            membership_changed(g, now, &mut out);
        }
        (codes, out)
    }

    /// Whether a commit from `member_id` at `generation` may be stored (0), or its error. A
    /// commit also counts as a heartbeat. Generation -1 with no member id is a consumer outside
    /// any group (assigned partitions): allowed while the group has no members.
    pub fn check_commit(&mut self, now: u64, group: &str, generation: i32, member_id: &str) -> i16 {
        let g = self.groups.get_mut(group);
        if generation < 0 && member_id.is_empty() {
            return match g {
                Some(g) if !g.members.is_empty() => code(ResponseError::UnknownMemberId),
                _ => 0,
            };
        }
        let Some(g) = g else { return code(ResponseError::UnknownMemberId) };
        let Some(m) = g.members.get_mut(member_id) else {
            return code(ResponseError::UnknownMemberId);
        };
        m.last_seen = now;
        if generation != g.generation {
            return code(ResponseError::IllegalGeneration);
        }
        // Kafka takes commits while a rebalance is being prepared (members commit what they
        // read before they rejoin) and refuses them only while the new assignment is pending.
        if g.state == State::CompletingRebalance {
            return code(ResponseError::RebalanceInProgress);
        }
        0
    }

    /// Time passes: members silent past their session timeout are dropped, rebalances whose
    /// timeout passed complete without the members that did not rejoin, unused member ids and
    /// empty groups are forgotten, and so are groups `coordinated` says this node no longer
    /// coordinates (their waiting members are told `NOT_COORDINATOR` and look it up again).
    pub fn tick(&mut self, now: u64, coordinated: impl Fn(&str) -> bool) -> Vec<Reply> {
        let mut out = Vec::new();
        let moved: Vec<String> =
            self.groups.keys().filter(|name| !coordinated(name)).cloned().collect();
        for name in moved {
            out.extend(self.forget(&name));
        }
        for g in self.groups.values_mut() {
            g.pending.retain(|_, until| *until > now);
            let expired: Vec<String> = g
                .members
                .iter()
                .filter(|(_, m)| {
                    // Members waiting for a join or a sync answer are not expired (Kafka's
                    // `hasSatisfiedHeartbeat`): the rebalance timeout bounds those waits.
                    m.join_waiter.is_none()
                        && m.sync_waiter.is_none()
                        && g.state != State::PreparingRebalance
                        && now.saturating_sub(m.last_seen) > m.session_timeout_ms
                })
                .map(|(id, _)| id.clone())
                .collect();
            for id in &expired {
                if let Some(m) = g.members.remove(id) {
                    release(m, &mut out);
                }
            }
            if !expired.is_empty() {
                membership_changed(g, now, &mut out);
            }
            if g.state == State::PreparingRebalance {
                maybe_complete_join(g, now, now >= g.rebalance_deadline, &mut out);
            }
        }
        self.groups.retain(|_, g| g.state != State::Empty || !g.pending.is_empty());
        out
    }

    /// Drops a group this node no longer coordinates (the ring moved it, or another node's
    /// claim on its offsets fenced this one): members waiting for a join or sync answer are
    /// told `NOT_COORDINATOR`; the others learn it from their next call (an unknown member id)
    /// and look the coordinator up again.
    pub fn forget(&mut self, group: &str) -> Vec<Reply> {
        let mut out = Vec::new();
        if let Some(g) = self.groups.remove(group) {
            for (id, m) in g.members {
                if let Some(t) = m.join_waiter {
                    out.push(Reply::Join(t, join_error(ResponseError::NotCoordinator, &id)));
                }
                if let Some(t) = m.sync_waiter {
                    out.push(Reply::Sync(t, sync_error(ResponseError::NotCoordinator)));
                }
            }
        }
        out
    }

    /// One group, if this node coordinates it and it has ever had a member.
    pub fn describe(&self, group: &str) -> Option<GroupView> {
        self.groups.get(group).map(|g| view(group, g))
    }

    /// Groups coordinated here, and their members.
    pub fn counts(&self) -> (usize, usize) {
        (self.groups.len(), self.groups.values().map(|g| g.members.len()).sum())
    }

    /// Every group this node coordinates.
    pub fn list(&self) -> Vec<GroupView> {
        let mut v: Vec<GroupView> = self.groups.iter().map(|(n, g)| view(n, g)).collect();
        v.sort_by(|a, b| a.group.cmp(&b.group));
        v
    }
}

fn view(name: &str, g: &Group) -> GroupView {
    let protocol = g.protocol.clone().unwrap_or_default();
    GroupView {
        group: name.to_string(),
        state: g.state.name(),
        protocol_type: g.protocol_type.clone(),
        generation: g.generation,
        members: g
            .members
            .iter()
            .map(|(id, m)| {
                let sub = m
                    .protocols
                    .iter()
                    .find(|(n, _)| *n == protocol)
                    .map(|(_, b)| b.clone())
                    .unwrap_or_default();
                (id.clone(), m.client_id.clone(), m.client_host.clone(), sub, m.assignment.clone())
            })
            .collect(),
        protocol,
    }
}

/// A member gone: its parked requests are answered with an error.
fn release(m: Member, out: &mut Vec<Reply>) {
    if let Some(t) = m.join_waiter {
        out.push(Reply::Join(t, join_error(ResponseError::UnknownMemberId, "")));
    }
    if let Some(t) = m.sync_waiter {
        out.push(Reply::Sync(t, sync_error(ResponseError::UnknownMemberId)));
    }
}

/// Members came or went: a rebalance (or the end of the group's generation if none is left).
fn membership_changed(g: &mut Group, now: u64, out: &mut Vec<Reply>) {
    if g.members.is_empty() {
        g.generation += 1;
        g.state = State::Empty;
        g.leader = None;
        g.protocol = None;
        return;
    }
    if g.state != State::PreparingRebalance {
        prepare_rebalance(g, now, out);
    }
    maybe_complete_join(g, now, false, out);
}

fn prepare_rebalance(g: &mut Group, now: u64, out: &mut Vec<Reply>) {
    // Syncs parked in the generation that ends get REBALANCE_IN_PROGRESS: their members rejoin.
    for m in g.members.values_mut() {
        if let Some(t) = m.sync_waiter.take() {
            out.push(Reply::Sync(t, sync_error(ResponseError::RebalanceInProgress)));
        }
    }
    let wait = g.members.values().map(|m| m.rebalance_timeout_ms).max().unwrap_or(0);
    g.rebalance_deadline = now + wait;
    g.state = State::PreparingRebalance;
}

/// Completes the join phase once every member has rejoined, or (`timed_out`) drops those that
/// have not.
fn maybe_complete_join(g: &mut Group, now: u64, timed_out: bool, out: &mut Vec<Reply>) {
    if g.state != State::PreparingRebalance {
        return;
    }
    let all_in = g.members.values().all(|m| m.join_waiter.is_some());
    if !all_in && !timed_out {
        return;
    }
    if !all_in {
        let late: Vec<String> = g
            .members
            .iter()
            .filter(|(_, m)| m.join_waiter.is_none())
            .map(|(k, _)| k.clone())
            .collect();
        for id in late {
            if let Some(m) = g.members.remove(&id) {
                release(m, out);
            }
        }
    }
    g.generation += 1;
    if g.members.is_empty() {
        g.state = State::Empty;
        g.leader = None;
        g.protocol = None;
        return;
    }
    if g.leader.as_ref().is_none_or(|l| !g.members.contains_key(l)) {
        g.leader = g.members.keys().next().cloned();
    }
    let leader = g.leader.clone().unwrap_or_default();
    let common = g.common_protocols(None).unwrap_or_default();
    // The leader's most preferred protocol that every member supports.
    g.protocol = g
        .members
        .get(&leader)
        .and_then(|m| m.protocols.iter().map(|(n, _)| n.clone()).find(|n| common.contains(n)));
    g.state = State::CompletingRebalance;
    let protocol = g.protocol.clone().unwrap_or_default();
    let subscriptions: Vec<(String, Bytes)> = g
        .members
        .iter()
        .map(|(id, m)| {
            let meta = m.protocols.iter().find(|(n, _)| *n == protocol).map(|(_, b)| b.clone());
            (id.clone(), meta.unwrap_or_default())
        })
        .collect();
    for (id, m) in g.members.iter_mut() {
        m.last_seen = now;
        if let Some(t) = m.join_waiter.take() {
            out.push(Reply::Join(
                t,
                JoinAnswer {
                    error: 0,
                    generation: g.generation,
                    protocol_type: Some(g.protocol_type.clone()),
                    protocol: g.protocol.clone(),
                    leader: leader.clone(),
                    member_id: id.clone(),
                    members: if *id == leader { subscriptions.clone() } else { Vec::new() },
                },
            ));
        }
    }
}

/// [`Groups`] shared by the connections of a node: a request that must wait (a join, a sync)
/// waits on a channel its answer is sent on.
#[derive(Debug, Default)]
pub struct Coordinator {
    groups: std::sync::Mutex<Groups>,
    waiters: std::sync::Mutex<HashMap<Token, futures_channel::oneshot::Sender<Reply>>>,
    next: std::sync::atomic::AtomicU64,
}

impl Coordinator {
    /// See [`Groups::new`] for `instance`.
    pub fn new(instance: u64) -> Coordinator {
        Coordinator {
            groups: std::sync::Mutex::new(Groups::new(instance)),
            ..Coordinator::default()
        }
    }

    /// Runs `f` on the groups; the replies it returns are sent to their waiters.
    pub fn with<R>(&self, f: impl FnOnce(&mut Groups) -> (R, Vec<Reply>)) -> R {
        let (r, replies) = f(&mut lock(&self.groups));
        self.dispatch(replies);
        r
    }

    /// A join, answered when its rebalance completes.
    pub async fn join(&self, now: u64, args: JoinArgs) -> JoinAnswer {
        let member = args.member_id.clone();
        let (token, rx) = self.park();
        self.with(|g| ((), g.join(now, token, args)));
        match rx.await {
            Ok(Reply::Join(_, a)) => a,
            _ => join_error(ResponseError::CoordinatorNotAvailable, &member),
        }
    }

    /// A sync, answered once the leader's assignment is in.
    pub async fn sync(
        &self,
        now: u64,
        group: &str,
        generation: i32,
        member_id: &str,
        assignments: Vec<(String, Bytes)>,
    ) -> SyncAnswer {
        let (token, rx) = self.park();
        self.with(|g| ((), g.sync(now, token, group, generation, member_id, assignments)));
        match rx.await {
            Ok(Reply::Sync(_, a)) => a,
            _ => sync_error(ResponseError::CoordinatorNotAvailable),
        }
    }

    /// Groups coordinated here, and their members.
    pub fn counts(&self) -> (usize, usize) {
        lock(&self.groups).counts()
    }

    /// Time passes (see [`Groups::tick`]); call it a few times a second.
    pub fn tick(&self, now: u64, coordinated: impl Fn(&str) -> bool) {
        self.with(|g| ((), g.tick(now, coordinated)));
    }

    fn park(&self) -> (Token, futures_channel::oneshot::Receiver<Reply>) {
        let token = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = futures_channel::oneshot::channel();
        lock(&self.waiters).insert(token, tx);
        (token, rx)
    }

    fn dispatch(&self, replies: Vec<Reply>) {
        if replies.is_empty() {
            return;
        }
        let mut waiters = lock(&self.waiters);
        for r in replies {
            let token = match &r {
                Reply::Join(t, _) | Reply::Sync(t, _) => *t,
            };
            if let Some(tx) = waiters.remove(&token) {
                let _ = tx.send(r);
            }
        }
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(member: &str) -> JoinArgs {
        JoinArgs {
            group: "g".into(),
            member_id: member.into(),
            client_id: "c".into(),
            client_host: "/127.0.0.1".into(),
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 5_000,
            protocol_type: "consumer".into(),
            protocols: vec![("range".into(), Bytes::from_static(b"sub"))],
            require_known_member_id: true,
        }
    }

    fn join_of(r: &[Reply], token: Token) -> JoinAnswer {
        r.iter()
            .find_map(|x| match x {
                Reply::Join(t, a) if *t == token => Some(a.clone()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no join answer for {token} in {r:?}"))
    }

    fn sync_of(r: &[Reply], token: Token) -> SyncAnswer {
        r.iter()
            .find_map(|x| match x {
                Reply::Sync(t, a) if *t == token => Some(a.clone()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no sync answer for {token} in {r:?}"))
    }

    /// Joins with an empty id, then with the id handed out: the member's id.
    fn join_new(g: &mut Groups, now: u64, token: Token) -> (String, Vec<Reply>) {
        let r = g.join(now, token, args(""));
        let a = join_of(&r, token);
        assert_eq!(a.error, code(ResponseError::MemberIdRequired));
        let id = a.member_id;
        let r = g.join(now, token + 1, args(&id));
        (id, r)
    }

    #[test]
    fn two_members_join_sync_and_a_leave_rebalances_the_other() {
        let mut g = Groups::new(7);
        let (a, r) = join_new(&mut g, 0, 10);
        // Alone: the join completes at once, generation 1, it leads.
        let ja = join_of(&r, 11);
        assert_eq!((ja.error, ja.generation, ja.leader.as_str()), (0, 1, a.as_str()));
        let r = g.sync(1, 12, "g", 1, &a, vec![(a.clone(), Bytes::from_static(b"all"))]);
        assert_eq!(sync_of(&r, 12).assignment, Bytes::from_static(b"all"));
        // A second member joins: the first learns of the rebalance by heartbeat and rejoins.
        let (b, r) = join_new(&mut g, 2, 20);
        assert!(r.is_empty(), "parked until the first member rejoins: {r:?}");
        assert_eq!(g.heartbeat(3, "g", 1, &a), code(ResponseError::RebalanceInProgress));
        let r = g.join(4, 13, args(&a));
        let (ja, jb) = (join_of(&r, 13), join_of(&r, 21));
        assert_eq!((ja.generation, jb.generation), (2, 2));
        assert_eq!(ja.leader, a, "the leader stays");
        assert_eq!(ja.members.len(), 2, "the leader gets every subscription");
        assert!(jb.members.is_empty());
        // The follower's sync waits for the leader's.
        let r = g.sync(5, 22, "g", 2, &b, vec![]);
        assert!(r.is_empty());
        let plan =
            vec![(a.clone(), Bytes::from_static(b"p0")), (b.clone(), Bytes::from_static(b"p1"))];
        let r = g.sync(6, 14, "g", 2, &a, plan);
        assert_eq!(sync_of(&r, 14).assignment, Bytes::from_static(b"p0"));
        assert_eq!(sync_of(&r, 22).assignment, Bytes::from_static(b"p1"));
        assert_eq!(g.heartbeat(7, "g", 2, &b), 0);
        assert_eq!(g.check_commit(7, "g", 2, &b), 0);
        assert_eq!(g.check_commit(7, "g", 1, &b), code(ResponseError::IllegalGeneration));
        // The leader leaves: the other rejoins alone and leads generation 3.
        let (codes, _) = g.leave(8, "g", std::slice::from_ref(&a));
        assert_eq!(codes, vec![0]);
        assert_eq!(g.heartbeat(9, "g", 2, &b), code(ResponseError::RebalanceInProgress));
        let r = g.join(10, 23, args(&b));
        let jb = join_of(&r, 23);
        assert_eq!((jb.generation, jb.leader.as_str()), (3, b.as_str()));
        assert_eq!(g.check_commit(11, "g", 2, &a), code(ResponseError::UnknownMemberId));
    }

    #[test]
    fn a_silent_member_is_dropped_and_a_late_rejoiner_misses_the_generation() {
        let mut g = Groups::new(7);
        let (a, _) = join_new(&mut g, 0, 10);
        g.sync(0, 12, "g", 1, &a, vec![]);
        let (b, _) = join_new(&mut g, 100, 20);
        // `a` never rejoins: after its rebalance timeout (5 s) the join completes without it.
        assert!(g.tick(4_000, |_| true).is_empty());
        let r = g.tick(5_200, |_| true);
        let jb = join_of(&r, 21);
        assert_eq!((jb.error, jb.generation, jb.leader.as_str()), (0, 2, b.as_str()));
        assert_eq!(g.heartbeat(5_300, "g", 1, &a), code(ResponseError::UnknownMemberId));
        let r = g.join(5_400, 30, args(&a));
        assert_eq!(join_of(&r, 30).error, code(ResponseError::UnknownMemberId));
        // `b` goes silent past its session timeout: dropped, the group is empty.
        g.sync(5_500, 22, "g", 2, &b, vec![]);
        assert!(g.tick(16_000, |_| true).is_empty());
        assert_eq!(g.heartbeat(16_001, "g", 2, &b), code(ResponseError::UnknownMemberId));
        assert_eq!(g.check_commit(16_002, "g", -1, ""), 0, "an empty group takes simple commits");
    }

    #[test]
    fn members_with_no_protocol_in_common_are_refused() {
        let mut g = Groups::new(7);
        let (_a, _) = join_new(&mut g, 0, 10);
        let mut other = args("");
        other.require_known_member_id = false;
        other.protocols = vec![("roundrobin".into(), Bytes::new())];
        let r = g.join(1, 20, other);
        assert_eq!(join_of(&r, 20).error, code(ResponseError::InconsistentGroupProtocol));
        // A simple consumer cannot commit into a group with members.
        assert_eq!(g.check_commit(2, "g", -1, ""), code(ResponseError::UnknownMemberId));
    }

    #[test]
    fn member_ids_of_two_coordinators_never_match() {
        // Two coordinators (or one before and after a restart) see the same join at the same
        // time: the ids they hand out differ, so a member of one is unknown to the other.
        let (mut one, mut two) = (Groups::new(1), Groups::new(2));
        let a = join_of(&one.join(5, 1, args("")), 1).member_id;
        let b = join_of(&two.join(5, 1, args("")), 1).member_id;
        assert_ne!(a, b);
        let r = two.join(6, 2, args(&a));
        assert_eq!(join_of(&r, 2).error, code(ResponseError::UnknownMemberId));
    }

    #[test]
    fn an_unknown_member_id_is_refused_and_handed_out_ids_expire() {
        let mut g = Groups::new(7);
        let r = g.join(0, 1, args("made-up"));
        assert_eq!(join_of(&r, 1).error, code(ResponseError::UnknownMemberId));
        let r = g.join(0, 2, args(""));
        let id = join_of(&r, 2).member_id;
        g.tick(20_000, |_| true);
        let r = g.join(20_001, 3, args(&id));
        assert_eq!(join_of(&r, 3).error, code(ResponseError::UnknownMemberId));
    }
}
