//! The znode tree: applying transactions, reads, watches, snapshots.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use imbl::{OrdMap, OrdSet};
use serde::{Deserialize, Serialize};
use starling_zab::{StateMachine, Zxid};

use crate::path;
use crate::{MetaError, Op, OpResult, Outcome, Txn, TxnOp, MAX_DATA, RESERVED};

/// Outcomes kept for the proposing server to read back.
const OUTCOMES_KEPT: usize = 4096;
/// Snapshot format.
const FORMAT: u8 = 1;

/// A znode's metadata, as ZooKeeper's `Stat`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Stat {
    /// The transaction that created it.
    pub czxid: Zxid,
    /// The transaction that last changed its data.
    pub mzxid: Zxid,
    /// The transaction that last changed its children.
    pub pzxid: Zxid,
    pub ctime_ms: u64,
    pub mtime_ms: u64,
    /// Changes to its data.
    pub version: u32,
    /// Changes to its children (the next sequential child's number).
    pub cversion: u32,
    /// The session owning it if ephemeral, else 0.
    pub ephemeral_owner: u64,
    pub data_length: u32,
    pub num_children: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Znode {
    #[serde(with = "serde_bytes")]
    data: Vec<u8>,
    stat: Stat,
    #[serde(deserialize_with = "de_set")]
    children: OrdSet<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Session {
    timeout_ms: u32,
    #[serde(deserialize_with = "de_set")]
    ephemerals: OrdSet<String>,
}

/// The tree as a snapshot holds it (also the frozen copy a snapshot is encoded from).
#[derive(Debug, Serialize, Deserialize)]
pub struct Image {
    format: u8,
    #[serde(deserialize_with = "de_map")]
    nodes: OrdMap<String, Znode>,
    #[serde(deserialize_with = "de_map")]
    sessions: OrdMap<u64, Session>,
}

// imbl's own deserializers size a vector by the length the input claims (a snapshot from the
// network or a damaged disk claiming billions of entries would abort the process): read into
// the standard collections, which grow as entries actually arrive, then convert.
fn de_set<'de, D: serde::Deserializer<'de>>(d: D) -> Result<OrdSet<String>, D::Error> {
    Ok(BTreeSet::<String>::deserialize(d)?.into_iter().collect())
}

fn de_map<'de, D, K, V>(d: D) -> Result<OrdMap<K, V>, D::Error>
where
    D: serde::Deserializer<'de>,
    K: Deserialize<'de> + Ord + Clone,
    V: Deserialize<'de> + Clone,
{
    Ok(BTreeMap::<K, V>::deserialize(d)?.into_iter().collect())
}

/// Who registered a watch (a client connection of this server).
pub type WatcherId = u64;

/// What a watch is on: a znode's data and existence (`getData`, `exists`), or its children
/// (`getChildren`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum WatchKind {
    Data,
    Children,
}

/// What happened to a watched znode (ZooKeeper's event types).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WatchedEvent {
    NodeCreated,
    NodeDeleted,
    NodeDataChanged,
    NodeChildrenChanged,
}

/// A watch that fired: deliver it to `watcher` (it is gone: watches are one-shot).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchEvent {
    pub watcher: WatcherId,
    pub path: String,
    pub event: WatchedEvent,
    pub zxid: Zxid,
}

enum Undo {
    Node(String, Option<Znode>),
    Session(u64, Option<Session>),
}

/// ZooKeeper's data tree (see the crate docs).
#[derive(Debug)]
pub struct Tree {
    // Persistent maps: a snapshot takes a copy in O(1) and encodes it off the ZAB loop while
    // transactions go on being applied here (a write copies only the path it changes).
    nodes: OrdMap<String, Znode>,
    sessions: OrdMap<u64, Session>,
    last: Zxid,
    outcomes: VecDeque<(Zxid, Outcome)>,
    watches: BTreeMap<(WatchKind, String), BTreeSet<WatcherId>>,
    fired: Vec<WatchEvent>,
    /// Watch triggers of the transaction being applied (fired once it succeeds).
    pending: Vec<(String, WatchedEvent)>,
    /// While a `multi` is applied: how to undo what it did so far.
    undo: Option<Vec<Undo>>,
    /// Transactions that could not be decoded (applied as no-ops).
    pub bad_txns: u64,
}

impl std::fmt::Debug for Undo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Undo")
    }
}

impl Default for Tree {
    fn default() -> Self {
        Tree::new()
    }
}

fn root() -> Znode {
    Znode { data: Vec::new(), stat: Stat::default(), children: OrdSet::new() }
}

fn check_version(path: &str, stat: &Stat, version: Option<u32>) -> Result<(), MetaError> {
    match version {
        Some(v) if v != stat.version => {
            Err(MetaError::BadVersion { path: path.to_string(), expected: v, actual: stat.version })
        }
        _ => Ok(()),
    }
}

impl Tree {
    /// A tree with only the root.
    pub fn new() -> Tree {
        let mut nodes = OrdMap::new();
        nodes.insert("/".to_string(), root());
        Tree {
            nodes,
            sessions: OrdMap::new(),
            last: Zxid::ZERO,
            outcomes: VecDeque::new(),
            watches: BTreeMap::new(),
            fired: Vec::new(),
            pending: Vec::new(),
            undo: None,
            bad_txns: 0,
        }
    }

    /// The last transaction applied.
    pub fn last_zxid(&self) -> Zxid {
        self.last
    }

    /// A znode's data and stat.
    pub fn get(&self, path: &str) -> Result<(&[u8], Stat), MetaError> {
        path::validate(path)?;
        let n = self.nodes.get(path).ok_or_else(|| MetaError::NoNode(path.to_string()))?;
        Ok((&n.data, n.stat))
    }

    /// A znode's stat, if it exists.
    pub fn stat(&self, path: &str) -> Option<Stat> {
        self.nodes.get(path).map(|n| n.stat)
    }

    /// A znode's children's names, sorted.
    pub fn children(&self, path: &str) -> Result<Vec<String>, MetaError> {
        path::validate(path)?;
        let n = self.nodes.get(path).ok_or_else(|| MetaError::NoNode(path.to_string()))?;
        Ok(n.children.iter().cloned().collect())
    }

    /// Znodes (the root included), open sessions, ephemeral znodes, registered watches.
    pub fn counts(&self) -> (usize, usize, usize, usize) {
        let eph = self.sessions.values().map(|s| s.ephemerals.len()).sum();
        let w = self.watches.values().map(BTreeSet::len).sum();
        (self.nodes.len(), self.sessions.len(), eph, w)
    }

    /// Open sessions and their timeouts (a new leader restarts their clocks).
    pub fn sessions(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        self.sessions.iter().map(|(id, s)| (*id, s.timeout_ms))
    }

    /// The outcome of the transaction at `zxid`, once (kept for the last few thousand).
    pub fn take_outcome(&mut self, zxid: Zxid) -> Option<Outcome> {
        let i = self.outcomes.iter().position(|(z, _)| *z == zxid)?;
        self.outcomes.remove(i).map(|(_, o)| o)
    }

    /// Registers a one-shot watch. A data watch on a missing znode fires when it is created.
    pub fn watch(&mut self, path: &str, kind: WatchKind, watcher: WatcherId) {
        self.watches.entry((kind, path.to_string())).or_default().insert(watcher);
    }

    /// Drops every watch of `watcher` (its client went away).
    pub fn unwatch_all(&mut self, watcher: WatcherId) {
        self.watches.retain(|_, w| {
            w.remove(&watcher);
            !w.is_empty()
        });
    }

    /// Watches that fired, in zxid order.
    pub fn take_fired(&mut self) -> Vec<WatchEvent> {
        std::mem::take(&mut self.fired)
    }

    /// What a watch set at `zxid` would have seen by now (ZooKeeper's `setWatches`, so a client
    /// that reconnects to another server loses no event): `None` if nothing happened.
    pub fn changed_since(&self, path: &str, kind: WatchKind, zxid: Zxid) -> Option<WatchedEvent> {
        match (self.nodes.get(path), kind) {
            (None, _) => Some(WatchedEvent::NodeDeleted),
            (Some(n), WatchKind::Data) if n.stat.czxid > zxid => Some(WatchedEvent::NodeCreated),
            (Some(n), WatchKind::Data) if n.stat.mzxid > zxid => {
                Some(WatchedEvent::NodeDataChanged)
            }
            (Some(n), WatchKind::Children) if n.stat.pzxid > zxid => {
                Some(WatchedEvent::NodeChildrenChanged)
            }
            _ => None,
        }
    }

    fn save_node(&mut self, path: &str) {
        if let Some(u) = self.undo.as_mut() {
            u.push(Undo::Node(path.to_string(), self.nodes.get(path).cloned()));
        }
    }

    fn save_session(&mut self, id: u64) {
        if let Some(u) = self.undo.as_mut() {
            u.push(Undo::Session(id, self.sessions.get(&id).cloned()));
        }
    }

    fn rollback(&mut self, undo: Vec<Undo>) {
        for u in undo.into_iter().rev() {
            match u {
                Undo::Node(p, Some(n)) => {
                    self.nodes.insert(p, n);
                }
                Undo::Node(p, None) => {
                    self.nodes.remove(&p);
                }
                Undo::Session(id, Some(s)) => {
                    self.sessions.insert(id, s);
                }
                Undo::Session(id, None) => {
                    self.sessions.remove(&id);
                }
            }
        }
    }

    fn reserved(path: &str, internal: bool) -> Result<(), MetaError> {
        if !internal && path::is_under(path, RESERVED) {
            return Err(MetaError::Reserved(path.to_string()));
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn create(
        &mut self,
        zxid: Zxid,
        time_ms: u64,
        session: u64,
        path: &str,
        data: &[u8],
        (ephemeral, sequential): (bool, bool),
        internal: bool,
    ) -> Result<OpResult, MetaError> {
        if data.len() > MAX_DATA {
            return Err(MetaError::TooLarge(data.len()));
        }
        let probe = if sequential { format!("{path}0000000000") } else { path.to_string() };
        path::validate(&probe)?;
        if probe == "/" {
            return Err(MetaError::NodeExists(probe));
        }
        Self::reserved(&probe, internal)?;
        let parent_path = path::parent(&probe).to_string();
        let parent =
            self.nodes.get(&parent_path).ok_or_else(|| MetaError::NoNode(parent_path.clone()))?;
        if parent.stat.ephemeral_owner != 0 {
            return Err(MetaError::NoChildrenForEphemerals(parent_path));
        }
        let full = if sequential {
            if parent.stat.cversion == u32::MAX {
                return Err(MetaError::SequenceOverflow(parent_path));
            }
            format!("{path}{:010}", parent.stat.cversion)
        } else {
            probe
        };
        if self.nodes.contains_key(&full) {
            return Err(MetaError::NodeExists(full));
        }
        if ephemeral && (session == 0 || !self.sessions.contains_key(&session)) {
            return Err(MetaError::SessionExpired(session));
        }
        let stat = Stat {
            czxid: zxid,
            mzxid: zxid,
            pzxid: zxid,
            ctime_ms: time_ms,
            mtime_ms: time_ms,
            version: 0,
            cversion: 0,
            ephemeral_owner: if ephemeral { session } else { 0 },
            data_length: data.len() as u32,
            num_children: 0,
        };
        self.save_node(&full);
        self.save_node(&parent_path);
        self.nodes
            .insert(full.clone(), Znode { data: data.to_vec(), stat, children: OrdSet::new() });
        if let Some(p) = self.nodes.get_mut(&parent_path) {
            p.children.insert(path::name(&full).to_string());
            p.stat.cversion = p.stat.cversion.wrapping_add(1);
            p.stat.pzxid = zxid;
            p.stat.num_children = p.children.len() as u32;
        }
        if ephemeral {
            self.save_session(session);
            if let Some(s) = self.sessions.get_mut(&session) {
                s.ephemerals.insert(full.clone());
            }
        }
        self.pending.push((full.clone(), WatchedEvent::NodeCreated));
        self.pending.push((parent_path, WatchedEvent::NodeChildrenChanged));
        Ok(OpResult::Created { path: full, stat })
    }

    fn remove(&mut self, zxid: Zxid, path: &str) {
        let parent_path = path::parent(path).to_string();
        self.save_node(path);
        self.save_node(&parent_path);
        let Some(n) = self.nodes.remove(path) else { return };
        if let Some(p) = self.nodes.get_mut(&parent_path) {
            p.children.remove(path::name(path));
            p.stat.cversion = p.stat.cversion.wrapping_add(1);
            p.stat.pzxid = zxid;
            p.stat.num_children = p.children.len() as u32;
        }
        let owner = n.stat.ephemeral_owner;
        if owner != 0 {
            self.save_session(owner);
            if let Some(s) = self.sessions.get_mut(&owner) {
                s.ephemerals.remove(path);
            }
        }
        self.pending.push((path.to_string(), WatchedEvent::NodeDeleted));
        self.pending.push((parent_path, WatchedEvent::NodeChildrenChanged));
    }

    fn delete(
        &mut self,
        zxid: Zxid,
        path: &str,
        version: Option<u32>,
        internal: bool,
    ) -> Result<OpResult, MetaError> {
        path::validate(path)?;
        if path == "/" {
            return Err(MetaError::BadPath { path: "/".into(), why: "the root stays".into() });
        }
        Self::reserved(path, internal)?;
        let n = self.nodes.get(path).ok_or_else(|| MetaError::NoNode(path.to_string()))?;
        check_version(path, &n.stat, version)?;
        if !n.children.is_empty() {
            return Err(MetaError::NotEmpty(path.to_string()));
        }
        self.remove(zxid, path);
        Ok(OpResult::Deleted)
    }

    fn set_data(
        &mut self,
        zxid: Zxid,
        time_ms: u64,
        path: &str,
        data: &[u8],
        version: Option<u32>,
        internal: bool,
    ) -> Result<OpResult, MetaError> {
        path::validate(path)?;
        Self::reserved(path, internal)?;
        if data.len() > MAX_DATA {
            return Err(MetaError::TooLarge(data.len()));
        }
        let n = self.nodes.get(path).ok_or_else(|| MetaError::NoNode(path.to_string()))?;
        check_version(path, &n.stat, version)?;
        self.save_node(path);
        let Some(n) = self.nodes.get_mut(path) else { return Err(MetaError::NoNode(path.into())) };
        n.data = data.to_vec();
        n.stat.version = n.stat.version.wrapping_add(1);
        n.stat.mzxid = zxid;
        n.stat.mtime_ms = time_ms;
        n.stat.data_length = data.len() as u32;
        let stat = n.stat;
        self.pending.push((path.to_string(), WatchedEvent::NodeDataChanged));
        Ok(OpResult::Set(stat))
    }

    fn op(
        &mut self,
        zxid: Zxid,
        t: &Txn,
        session: u64,
        op: &Op,
        multi: bool,
        internal: bool,
    ) -> Result<OpResult, MetaError> {
        match op {
            Op::Create { path, data, ephemeral, sequential } => self.create(
                zxid,
                t.time_ms,
                session,
                path,
                data,
                (*ephemeral, *sequential),
                internal,
            ),
            Op::Delete { path, version } => self.delete(zxid, path, *version, internal),
            Op::SetData { path, data, version } => {
                self.set_data(zxid, t.time_ms, path, data, *version, internal)
            }
            Op::Check { path, version } => {
                if !multi {
                    return Err(MetaError::CheckOutsideMulti);
                }
                path::validate(path)?;
                let n = self.nodes.get(path).ok_or_else(|| MetaError::NoNode(path.clone()))?;
                check_version(path, &n.stat, *version)?;
                Ok(OpResult::Checked)
            }
        }
    }

    /// Fires the watches the transaction's changes trigger (one-shot: each fires once).
    fn fire(&mut self, zxid: Zxid) {
        for (path, event) in std::mem::take(&mut self.pending) {
            let kinds: &[WatchKind] = match event {
                WatchedEvent::NodeCreated | WatchedEvent::NodeDataChanged => &[WatchKind::Data],
                WatchedEvent::NodeDeleted => &[WatchKind::Data, WatchKind::Children],
                WatchedEvent::NodeChildrenChanged => &[WatchKind::Children],
            };
            for kind in kinds {
                if let Some(ws) = self.watches.remove(&(*kind, path.clone())) {
                    for watcher in ws {
                        self.fired.push(WatchEvent { watcher, path: path.clone(), event, zxid });
                    }
                }
            }
        }
    }

    fn apply_txn(&mut self, zxid: Zxid, t: &Txn) -> Outcome {
        match &t.op {
            TxnOp::CreateSession { session, timeout_ms } => {
                if *session == 0 || self.sessions.contains_key(session) {
                    return Outcome::Session(Err(MetaError::BadTxn(format!(
                        "session {session:#x} cannot be created twice"
                    ))));
                }
                self.sessions
                    .insert(*session, Session { timeout_ms: *timeout_ms, ..Session::default() });
                Outcome::Session(Ok(()))
            }
            TxnOp::CloseSession { session } => {
                let Some(s) = self.sessions.remove(session) else {
                    return Outcome::Session(Err(MetaError::SessionExpired(*session)));
                };
                for path in s.ephemerals {
                    self.remove(zxid, &path);
                }
                self.fire(zxid);
                Outcome::Session(Ok(()))
            }
            TxnOp::Ops { session, ops, multi, internal } => {
                if *multi {
                    self.undo = Some(Vec::new());
                    let mut results = Vec::with_capacity(ops.len());
                    let mut failed = None;
                    for (i, op) in ops.iter().enumerate() {
                        match self.op(zxid, t, *session, op, true, *internal) {
                            Ok(r) => results.push(r),
                            Err(e) => {
                                failed = Some((i, e));
                                break;
                            }
                        }
                    }
                    let undo = self.undo.take().unwrap_or_default();
                    if let Some((i, e)) = failed {
                        self.rollback(undo);
                        self.pending.clear();
                        let results = (0..ops.len())
                            .map(|j| {
                                OpResult::Failed(if j == i {
                                    e.clone()
                                } else {
                                    MetaError::RolledBack
                                })
                            })
                            .collect();
                        return Outcome::Ops(results);
                    }
                    self.fire(zxid);
                    Outcome::Ops(results)
                } else {
                    let mut results = Vec::with_capacity(ops.len());
                    for op in ops {
                        let r = self.op(zxid, t, *session, op, false, *internal);
                        self.fire(zxid);
                        results.push(r.unwrap_or_else(OpResult::Failed));
                    }
                    Outcome::Ops(results)
                }
            }
        }
    }
}

impl StateMachine for Tree {
    fn apply(&mut self, zxid: Zxid, txn: &[u8]) {
        let outcome = match Txn::decode(txn) {
            Ok(t) => self.apply_txn(zxid, &t),
            Err(e) => {
                self.bad_txns += 1;
                Outcome::Invalid(e)
            }
        };
        self.last = zxid;
        self.outcomes.push_back((zxid, outcome));
        while self.outcomes.len() > OUTCOMES_KEPT {
            self.outcomes.pop_front();
        }
    }

    type Image = Image;

    fn image(&self) -> Image {
        Image { format: FORMAT, nodes: self.nodes.clone(), sessions: self.sessions.clone() }
    }

    fn encode(image: Image, size_hint: usize) -> Vec<u8> {
        // Room for a little growth over the last snapshot: one allocation, no copies.
        let mut out = Vec::with_capacity(size_hint + size_hint / 8);
        match rmp_serde::encode::write_named(&mut out, &image) {
            Ok(()) => out,
            Err(_) => Vec::new(),
        }
    }

    /// Replaces the tree. Watches registered here stay, but what changed between the old state
    /// and the snapshot fires none of them: after a restore (`Event::Restored`) the server
    /// re-checks each watch with [`Tree::changed_since`].
    fn restore(&mut self, zxid: Zxid, snapshot: &[u8]) -> Result<(), String> {
        let mut de = rmp_serde::Deserializer::from_read_ref(snapshot);
        de.set_max_depth(crate::MAX_DEPTH);
        let image = Image::deserialize(&mut de).map_err(|e| e.to_string())?;
        if image.format != FORMAT {
            return Err(format!("snapshot format {} (this server reads {FORMAT})", image.format));
        }
        if !image.nodes.contains_key("/") {
            return Err("no root znode".into());
        }
        for (p, n) in &image.nodes {
            if p != "/" {
                let parent = image.nodes.get(path::parent(p));
                if !parent.is_some_and(|q| q.children.contains(path::name(p))) {
                    return Err(format!("znode {p} is not its parent's child"));
                }
            }
            if n.children.iter().any(|c| {
                let child = if p == "/" { format!("/{c}") } else { format!("{p}/{c}") };
                !image.nodes.contains_key(&child)
            }) {
                return Err(format!("znode {p} lists a child that does not exist"));
            }
        }
        self.nodes = image.nodes;
        self.sessions = image.sessions;
        self.last = zxid;
        self.pending.clear();
        self.undo = None;
        Ok(())
    }
}
