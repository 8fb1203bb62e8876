//! One sync session between two replicas: [`Session`] on the initiator, [`respond`] on the
//! responder.

use std::collections::{HashMap, HashSet, VecDeque};

use starling_ring::{token_of, Token};
use starling_wire::repair::{
    Descend, EntriesAnswer, Hashes, LeafEntries, RepairRequest, RepairResponse, TokenRange,
};
use starling_wire::Record;

use crate::tree::{piece_count, pieces, Piece, RangeTree};
use crate::{entry_hash, Replica};

/// Ranges in one [`RepairRequest::Roots`].
const MAX_RANGES: usize = 4096;
/// Nodes in one [`RepairRequest::Children`] (its answer: at most 2,048 × 16 hashes, 256 KiB).
const MAX_DESCEND_NODES: usize = 2048;
/// Leaves in one [`RepairRequest::Entries`].
const MAX_LEAVES: usize = 1024;
/// Entry hashes in one [`RepairRequest::Entries`] (512 KiB).
const MAX_ENTRY_HASHES: usize = 65_536;
/// Bytes of records in one answer or push (at least one record always goes).
pub const RECORD_BUDGET: usize = 2 << 20;
/// An `Entries` request covers leaves holding at most this many bytes of the initiator's own
/// records (at least one leaf): what it may have to push back, held in memory meanwhile.
const ENTRIES_OWN_BYTES: usize = 8 << 20;
/// Answers in a row that moved nothing, before a session gives up.
const MAX_STALLED_ROUNDS: u32 = 100;

/// Why a session failed. A failed session changed nothing it should not have (records applied
/// are merged by version); the next one starts over.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RepairError {
    /// Local storage failed.
    #[error("storage: {0}")]
    Storage(String),
    /// The peer refused (another grain, a range it does not hold).
    #[error("refused by the peer: {0}")]
    Refused(String),
    /// The peer answered something that does not fit the question.
    #[error("protocol: {0}")]
    Protocol(String),
}

/// What a session did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Ranges whose roots were compared.
    pub ranges: u64,
    /// Of them, those whose roots differed.
    pub ranges_differing: u64,
    /// Tree nodes compared below the roots.
    pub nodes_compared: u64,
    /// Leaves whose hashes differed.
    pub leaves_differing: u64,
    /// Records the peer sent that were applied here.
    pub records_received: u64,
    /// Records sent to the peer.
    pub records_sent: u64,
    /// Requests sent.
    pub requests: u64,
}

#[derive(Debug)]
enum InFlight {
    Roots(Vec<TokenRange>),
    Children(Vec<Descend>),
    Entries(Vec<(TokenRange, u32)>),
    Push(u64),
}

/// The initiator's side of one session with one peer over a list of ranges both replicate.
///
/// Drive it with [`Session::poll_request`] (send what it returns) and [`Session::on_response`]
/// (the peer's answer), one request at a time, until [`Session::is_done`]. Both may read or write
/// the local replica (run them where blocking is fine).
#[derive(Debug)]
pub struct Session {
    bits: u8,
    roots_todo: VecDeque<TokenRange>,
    trees: HashMap<TokenRange, RangeTree>,
    descend: VecDeque<Descend>,
    leaves: VecDeque<(TokenRange, u32)>,
    outbox: VecDeque<Record>,
    in_flight: Option<InFlight>,
    stalled_rounds: u32,
    stats: SessionStats,
}

impl Session {
    /// A session over `ranges` (each compared once; duplicates are dropped), with `bits` the
    /// local replica's segment grain.
    pub fn new(bits: u8, ranges: impl IntoIterator<Item = TokenRange>) -> Session {
        let mut seen = HashSet::new();
        Session {
            bits,
            roots_todo: ranges.into_iter().filter(|r| seen.insert(*r)).collect(),
            trees: HashMap::new(),
            descend: VecDeque::new(),
            leaves: VecDeque::new(),
            outbox: VecDeque::new(),
            in_flight: None,
            stalled_rounds: 0,
            stats: SessionStats::default(),
        }
    }

    /// What the session did so far.
    pub fn stats(&self) -> SessionStats {
        self.stats
    }

    /// Whether nothing is left to compare or send.
    pub fn is_done(&self) -> bool {
        self.in_flight.is_none()
            && self.roots_todo.is_empty()
            && self.descend.is_empty()
            && self.leaves.is_empty()
            && self.outbox.is_empty()
    }

    /// Ranges whose comparison has not started (progress: of the ranges given).
    pub fn ranges_left(&self) -> usize {
        self.roots_todo.len()
    }

    /// The next request to send, if one is due (`None` while an answer is awaited, or when done).
    pub fn poll_request<R: Replica + ?Sized>(
        &mut self,
        replica: &R,
    ) -> Result<Option<RepairRequest>, RepairError> {
        if self.in_flight.is_some() {
            return Ok(None);
        }
        let bits = self.bits;
        let (req, in_flight) = if !self.outbox.is_empty() {
            let mut records = Vec::new();
            let mut bytes = 0;
            while let Some(r) = self.outbox.front() {
                let b = record_bytes(r);
                if !records.is_empty() && bytes + b > RECORD_BUDGET {
                    break;
                }
                bytes += b;
                records.extend(self.outbox.pop_front());
            }
            let n = records.len() as u64;
            (RepairRequest::Push(records), InFlight::Push(n))
        } else if !self.leaves.is_empty() {
            let mut items: Vec<LeafEntries> = Vec::new();
            let mut asked = Vec::new();
            let mut hashes = 0;
            let mut own_bytes = 0;
            while let Some(&(range, leaf)) = self.leaves.front() {
                let tree = self.tree(range)?;
                let piece = *tree.pieces.get(leaf as usize).ok_or_else(|| {
                    RepairError::Protocol(format!("no leaf {leaf} in range {range:?}"))
                })?;
                let (mine, bytes) = entries(replica, &piece)?;
                if !asked.is_empty()
                    && (asked.len() >= MAX_LEAVES
                        || hashes + mine.len() > MAX_ENTRY_HASHES
                        || own_bytes + bytes > ENTRIES_OWN_BYTES)
                {
                    break;
                }
                self.leaves.pop_front();
                hashes += mine.len();
                own_bytes += bytes;
                asked.push((range, leaf));
                let leaf_hashes = (leaf, Hashes(mine));
                match items.last_mut() {
                    Some(last) if last.range == range => last.leaves.push(leaf_hashes),
                    _ => items.push(LeafEntries { range, leaves: vec![leaf_hashes] }),
                }
            }
            (RepairRequest::Entries { segment_bits: bits, items }, InFlight::Entries(asked))
        } else if !self.descend.is_empty() {
            let mut items: Vec<Descend> = Vec::new();
            let mut nodes = 0;
            while let Some(mut d) = self.descend.pop_front() {
                let room = MAX_DESCEND_NODES - nodes;
                if d.nodes.len() > room {
                    let rest = d.nodes.split_off(room);
                    self.descend.push_front(Descend { nodes: rest, ..d.clone() });
                }
                nodes += d.nodes.len();
                items.push(d);
                if nodes >= MAX_DESCEND_NODES {
                    break;
                }
            }
            let req = RepairRequest::Children { segment_bits: bits, items: items.clone() };
            (req, InFlight::Children(items))
        } else if !self.roots_todo.is_empty() {
            let n = self.roots_todo.len().min(MAX_RANGES);
            let ranges: Vec<TokenRange> = self.roots_todo.drain(..n).collect();
            for r in &ranges {
                let tree = RangeTree::build(replica, *r).map_err(RepairError::Storage)?;
                self.trees.insert(*r, tree);
            }
            let req = RepairRequest::Roots { segment_bits: bits, ranges: ranges.clone() };
            (req, InFlight::Roots(ranges))
        } else {
            return Ok(None);
        };
        self.stats.requests += 1;
        self.in_flight = Some(in_flight);
        Ok(Some(req))
    }

    /// The peer's answer to the last request.
    pub fn on_response<R: Replica + ?Sized>(
        &mut self,
        replica: &R,
        resp: RepairResponse,
    ) -> Result<(), RepairError> {
        let Some(asked) = self.in_flight.take() else {
            return Err(RepairError::Protocol("an answer to no question".into()));
        };
        if let RepairResponse::Refused(why) = resp {
            return Err(RepairError::Refused(why));
        }
        match (asked, resp) {
            (InFlight::Roots(ranges), RepairResponse::Roots(Hashes(roots))) => {
                if roots.len() != ranges.len() {
                    return Err(mismatch("roots", ranges.len(), roots.len()));
                }
                for (range, theirs) in ranges.into_iter().zip(roots) {
                    self.stats.ranges += 1;
                    let (root, top) = {
                        let tree = self.tree(range)?;
                        (tree.root(), tree.top())
                    };
                    if root == theirs {
                        self.trees.remove(&range);
                        continue;
                    }
                    self.stats.ranges_differing += 1;
                    match top {
                        0 => self.differing_leaf(range, 0),
                        top => {
                            self.descend.push_back(Descend { range, level: top, nodes: vec![0] })
                        }
                    }
                }
            }
            (InFlight::Children(items), RepairResponse::Children(answers)) => {
                if answers.len() != items.len() {
                    return Err(mismatch("children items", items.len(), answers.len()));
                }
                for (item, per_node) in items.into_iter().zip(answers) {
                    if per_node.len() != item.nodes.len() {
                        return Err(mismatch("children nodes", item.nodes.len(), per_node.len()));
                    }
                    let tree = self.tree(item.range)?;
                    let mut differing = Vec::new();
                    let mut compared = 0;
                    for (&node, Hashes(theirs)) in item.nodes.iter().zip(per_node) {
                        let mine = tree.children(item.level, node).ok_or_else(|| {
                            RepairError::Protocol(format!("no node {node} at level {}", item.level))
                        })?;
                        if mine.len() != theirs.len() {
                            return Err(mismatch("children", mine.len(), theirs.len()));
                        }
                        let first = node * crate::FANOUT as u32;
                        differing.extend(
                            mine.iter()
                                .zip(&theirs)
                                .enumerate()
                                .filter(|(_, (a, b))| a != b)
                                .map(|(i, _)| first + i as u32),
                        );
                        compared += mine.len() as u64;
                    }
                    self.stats.nodes_compared += compared;
                    if item.level == 1 {
                        for leaf in differing {
                            self.differing_leaf(item.range, leaf);
                        }
                    } else if !differing.is_empty() {
                        self.descend.push_back(Descend {
                            range: item.range,
                            level: item.level - 1,
                            nodes: differing,
                        });
                    }
                }
            }
            (InFlight::Entries(asked), RepairResponse::Entries(answer)) => {
                self.on_entries(replica, asked, answer)?;
            }
            (InFlight::Push(n), RepairResponse::Done) => self.stats.records_sent += n,
            (_, other) => {
                return Err(RepairError::Protocol(format!("unexpected answer {other:?}")));
            }
        }
        Ok(())
    }

    fn on_entries<R: Replica + ?Sized>(
        &mut self,
        replica: &R,
        asked: Vec<(TokenRange, u32)>,
        answer: EntriesAnswer,
    ) -> Result<(), RepairError> {
        let mut asked_pieces: Vec<Piece> = Vec::with_capacity(asked.len());
        let mut asked_set = HashSet::with_capacity(asked.len());
        for &(range, leaf) in &asked {
            asked_pieces.push(self.tree(range)?.pieces[leaf as usize]);
            asked_set.insert((range, leaf));
        }
        asked_pieces.sort_by_key(|p| p.lo);
        let inside = |t: Token| {
            let i = asked_pieces.partition_point(|p| p.lo <= t);
            i > 0 && asked_pieces[i - 1].hi >= t
        };
        if let Some(r) = answer.records.iter().find(|r| !inside(token_of(&r.key))) {
            return Err(RepairError::Protocol(format!(
                "a record outside the leaves asked ({} bytes of key)",
                r.key.len()
            )));
        }
        if !answer.records.is_empty() {
            replica.apply(&answer.records).map_err(RepairError::Storage)?;
            self.stats.records_received += answer.records.len() as u64;
        }
        let wants =
            answer.want.into_iter().flat_map(|w| w.leaves.into_iter().map(move |l| (w.range, l)));
        for (range, (leaf, hashes)) in wants {
            if !asked_set.contains(&(range, leaf)) {
                return Err(RepairError::Protocol(format!("wants leaf {leaf} not asked")));
            }
            let piece = self.tree(range)?.pieces[leaf as usize];
            let wanted: HashSet<u64> = hashes.0.into_iter().collect();
            // Read again after applying the answer: a wanted record that lost to one just received
            // is gone, and not sent.
            for (h, r) in entry_records(replica, &piece, true)? {
                if wanted.contains(&h) {
                    self.outbox.extend(r);
                }
            }
        }
        // Progress: some record moved, or some leaf was answered in full.
        let moved = !answer.records.is_empty() || answer.unfinished.len() < asked.len();
        if moved {
            self.stalled_rounds = 0;
        } else {
            self.stalled_rounds += 1;
            if self.stalled_rounds > MAX_STALLED_ROUNDS {
                return Err(RepairError::Protocol("the peer makes no progress".into()));
            }
        }
        for (range, leaf) in answer.unfinished {
            if !asked_set.contains(&(range, leaf)) {
                return Err(RepairError::Protocol(format!("leaf {leaf} unfinished but not asked")));
            }
            self.leaves.push_back((range, leaf));
        }
        // A leaf was compared entry by entry: its cached hash is recomputed next time (a tombstone
        // purged by compaction changes a segment without a write; this heals such a cache).
        for p in &asked_pieces {
            if p.segment.is_some() {
                replica.segments().touched(p.lo);
            }
        }
        for (range, leaf) in asked {
            if self.leaves.iter().all(|&(r, l)| (r, l) != (range, leaf)) {
                // Nothing below this leaf is asked any more; drop the tree once its range is done.
                let busy = self.leaves.iter().any(|&(r, _)| r == range)
                    || self.descend.iter().any(|d| d.range == range);
                if !busy {
                    self.trees.remove(&range);
                }
            }
        }
        Ok(())
    }

    fn differing_leaf(&mut self, range: TokenRange, leaf: u32) {
        self.stats.leaves_differing += 1;
        self.leaves.push_back((range, leaf));
    }

    fn tree(&self, range: TokenRange) -> Result<&RangeTree, RepairError> {
        self.trees
            .get(&range)
            .ok_or_else(|| RepairError::Protocol(format!("range {range:?} not in this session")))
    }
}

fn mismatch(what: &str, asked: usize, got: usize) -> RepairError {
    RepairError::Protocol(format!("{what}: asked {asked}, answered {got}"))
}

/// What a record counts toward [`RECORD_BUDGET`].
fn record_bytes(r: &Record) -> usize {
    r.key.len() + r.value.as_ref().map_or(0, Vec::len) + 48
}

/// The entry hashes of `piece` (of the records that take part in repair), in storage order, and
/// what those records count toward [`RECORD_BUDGET`].
fn entries<R: Replica + ?Sized>(
    replica: &R,
    piece: &Piece,
) -> Result<(Vec<u64>, usize), RepairError> {
    let mut out = Vec::new();
    let mut bytes = 0;
    replica
        .scan(piece.lo, piece.hi, &mut |r| {
            if replica.counts(r) {
                out.push(entry_hash(&r.key, &r.version));
                bytes += record_bytes(r);
            }
        })
        .map_err(RepairError::Storage)?;
    Ok((out, bytes))
}

/// Like [`entries`], with each record when `keep`.
fn entry_records<R: Replica + ?Sized>(
    replica: &R,
    piece: &Piece,
    keep: bool,
) -> Result<Vec<(u64, Option<Record>)>, RepairError> {
    let mut out = Vec::new();
    replica
        .scan(piece.lo, piece.hi, &mut |r| {
            if replica.counts(r) {
                out.push((entry_hash(&r.key, &r.version), keep.then(|| r.clone())));
            }
        })
        .map_err(RepairError::Storage)?;
    Ok(out)
}

/// The responder's answer to one request of a session. Stateless: every answer is computed from
/// the request and the local data, so a responder restart or a lost message costs nothing but
/// the session. The caller checks first that it replicates the ranges named, and answers
/// [`RepairRequest::Repaired`] itself (this answers it [`RepairResponse::Done`] and records
/// nothing).
pub fn respond<R: Replica + ?Sized>(replica: &R, req: &RepairRequest) -> RepairResponse {
    match respond_inner(replica, req) {
        Ok(resp) => resp,
        Err(why) => RepairResponse::Refused(why),
    }
}

/// Refuses a request whose distinct ranges would make the responder build trees of more leaves
/// than the whole ring has twice over (ranges of one ring never do: they tile it once).
fn check_work(ranges: impl Iterator<Item = TokenRange>, bits: u8) -> Result<(), String> {
    let distinct: HashSet<TokenRange> = ranges.collect();
    let leaves: usize = distinct.iter().map(|r| piece_count(*r, bits)).sum();
    let limit = 2 * (1usize << bits) + 2 * distinct.len();
    if leaves > limit {
        return Err(format!(
            "the ranges asked span {leaves} leaves, more than the ring's {} (do they overlap?)",
            1usize << bits
        ));
    }
    Ok(())
}

fn respond_inner<R: Replica + ?Sized>(
    replica: &R,
    req: &RepairRequest,
) -> Result<RepairResponse, String> {
    let bits = replica.segments().bits();
    let check_bits = |theirs: u8| {
        if theirs == bits {
            Ok(())
        } else {
            Err(format!(
                "segment grain differs: the initiator uses 2^{theirs} segments, this node 2^{bits} \
                 (start every node with the same --repair-segment-bits)"
            ))
        }
    };
    match req {
        RepairRequest::Roots { segment_bits, ranges } => {
            check_bits(*segment_bits)?;
            if ranges.len() > MAX_RANGES {
                return Err(format!(
                    "{} ranges in one request (at most {MAX_RANGES})",
                    ranges.len()
                ));
            }
            check_work(ranges.iter().copied(), bits)?;
            let roots = ranges
                .iter()
                .map(|r| RangeTree::build(replica, *r).map(|t| t.root()))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(RepairResponse::Roots(Hashes(roots)))
        }
        RepairRequest::Children { segment_bits, items } => {
            check_bits(*segment_bits)?;
            let nodes: usize = items.iter().map(|d| d.nodes.len()).sum();
            if nodes > MAX_DESCEND_NODES {
                return Err(format!("{nodes} nodes in one request (at most {MAX_DESCEND_NODES})"));
            }
            check_work(items.iter().map(|d| d.range), bits)?;
            let mut trees: HashMap<TokenRange, RangeTree> = HashMap::new();
            let mut out = Vec::with_capacity(items.len());
            for d in items {
                let tree = match trees.entry(d.range) {
                    std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::hash_map::Entry::Vacant(e) => {
                        e.insert(RangeTree::build(replica, d.range)?)
                    }
                };
                let per_node = d
                    .nodes
                    .iter()
                    .map(|&n| {
                        tree.children(d.level, n).map(|c| Hashes(c.to_vec())).ok_or_else(|| {
                            format!("no node {n} at level {} of {:?}", d.level, d.range)
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                out.push(per_node);
            }
            Ok(RepairResponse::Children(out))
        }
        RepairRequest::Entries { segment_bits, items } => {
            check_bits(*segment_bits)?;
            let leaves: usize = items.iter().map(|i| i.leaves.len()).sum();
            let hashes: usize = items.iter().flat_map(|i| &i.leaves).map(|(_, h)| h.0.len()).sum();
            if leaves > MAX_LEAVES || hashes > MAX_ENTRY_HASHES {
                return Err(format!(
                    "{leaves} leaves and {hashes} hashes in one request (at most {MAX_LEAVES} and \
                     {MAX_ENTRY_HASHES})"
                ));
            }
            check_work(items.iter().map(|i| i.range), bits)?;
            let mut range_pieces: HashMap<TokenRange, Vec<Piece>> = HashMap::new();
            let mut answer = EntriesAnswer::default();
            let mut bytes = 0;
            let mut full = false;
            let leaves =
                items.iter().flat_map(|i| i.leaves.iter().map(move |(l, h)| (i.range, *l, h)));
            for (range, leaf, their_hashes) in leaves {
                let ps = range_pieces.entry(range).or_insert_with(|| pieces(range, bits));
                let piece =
                    *ps.get(leaf as usize).ok_or_else(|| format!("no leaf {leaf} in {range:?}"))?;
                if full {
                    answer.unfinished.push((range, leaf));
                    continue;
                }
                if piece.segment.is_some() {
                    replica.segments().touched(piece.lo); // see `Session::on_entries`
                }
                let theirs: HashSet<u64> = their_hashes.0.iter().copied().collect();
                let mine = entry_records(replica, &piece, true).map_err(|e| e.to_string())?;
                let mine_set: HashSet<u64> = mine.iter().map(|(h, _)| *h).collect();
                // Record by record within the budget (the first record of an answer always
                // goes, so every answer moves something): a leaf whose records do not all fit
                // sends what fits and is asked again; its wants wait for then.
                let mut complete = true;
                for r in
                    mine.into_iter().filter(|(h, _)| !theirs.contains(h)).filter_map(|(_, r)| r)
                {
                    let b = record_bytes(&r);
                    if !answer.records.is_empty() && bytes + b > RECORD_BUDGET {
                        complete = false;
                        break;
                    }
                    bytes += b;
                    answer.records.push(r);
                }
                if !complete {
                    full = true;
                    answer.unfinished.push((range, leaf));
                    continue;
                }
                let want: Vec<u64> =
                    their_hashes.0.iter().copied().filter(|h| !mine_set.contains(h)).collect();
                if !want.is_empty() {
                    let leaf_want = (leaf, Hashes(want));
                    match answer.want.last_mut() {
                        Some(last) if last.range == range => last.leaves.push(leaf_want),
                        _ => answer.want.push(LeafEntries { range, leaves: vec![leaf_want] }),
                    }
                }
            }
            Ok(RepairResponse::Entries(answer))
        }
        RepairRequest::Push(records) => {
            replica.apply(records)?;
            Ok(RepairResponse::Done)
        }
        RepairRequest::Repaired { .. } => Ok(RepairResponse::Done),
        RepairRequest::StreamPending => {
            Ok(RepairResponse::Refused("a stream request is not part of a sync session".into()))
        }
    }
}
