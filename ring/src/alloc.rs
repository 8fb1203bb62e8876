//! Token allocation for a joining node: primary and replicated ownership evened out together,
//! in the spirit of Cassandra 4's `allocate_tokens_for_local_replication_factor` but greedy with
//! a local-search polish and much smaller (`ALGORITHM.md` §5).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::{NodeId, Ring, Token};

/// The token space, `2^64`, as a float for share arithmetic.
const SPACE: f64 = 18_446_744_073_709_551_616.0;

/// A new token takes at most this fraction of the range it splits (before jitter), so the node
/// it splits keeps a piece and later allocations still have room there.
const MAX_SPLIT: f64 = 0.9;

/// A new token takes at least this fraction of the range it splits (before jitter), so jitter
/// still separates the tokens of nodes that join at once.
const MIN_SPLIT: f64 = 0.01;

/// Relative jitter on the split points of each step, so two nodes that join at once from the
/// same view (different ids) pick different tokens.
const JITTER: f64 = 0.02;

/// The replication factor whose ownership allocation evens out alongside primary ownership.
/// Starling's default.
const REPLICATION_HINT: usize = 3;

/// Weight of the replicated term of the score against the primary one.
const REPLICATED_WEIGHT: f64 = 1.0;

/// Weight of the range-width term of the score, which keeps ranges near their mean width.
const WIDTH_WEIGHT: f64 = 0.1;

/// Rounds of taking each placed token out and putting it back where it scores best.
const POLISH_ROUNDS: usize = 2;

/// In a ring of more nodes than this, only the ranges that relieve one of this many most-loaded
/// nodes (primary or replicated), or are among the widest, are tried; in smaller rings, all.
const CANDIDATE_NODES: usize = 16;

impl Ring {
    /// Chooses `v` tokens for node `id` about to join this ring, sorted.
    ///
    /// Deterministic in `(ring, id, seed)`; never returns a token already in the ring (any
    /// status) and never the same token twice. Allocation works on the future ring (joining
    /// nodes count as present, leaving ones as gone), so sequential joiners do not collide, and
    /// ignores any tokens `id` itself already has.
    ///
    /// - Empty ring: `v` evenly spaced tokens at a random offset.
    /// - Otherwise, each token in turn splits the range that scores best: every range in small
    ///   rings, those that relieve the most-loaded nodes (or are widest) in large ones. The score
    ///   is the squared relative distance of each node's primary and replicated (`n = 3`)
    ///   ownership from its goal, plus a small term for range widths far from the mean; it is
    ///   quadratic in the split point, so each range is split at its own optimum (±2% seeded
    ///   jitter). Then each token is taken out again and put back where it scores best, for up
    ///   to two rounds.
    pub fn allocate_tokens(&self, id: NodeId, v: usize, seed: u64) -> Vec<Token> {
        if v == 0 {
            return Vec::new();
        }
        let mut rng = rng_for(seed, id);
        let mut taken: Vec<Token> = self.entries().iter().map(|entry| entry.token).collect();
        taken.dedup();
        let future = Ring::future_bit();
        let points: Vec<(Token, usize)> = self
            .entries()
            .iter()
            .filter(|entry| entry.views & future != 0 && self.node_at(entry.node).id != id)
            .map(|entry| (entry.token, entry.node as usize))
            .collect();
        if points.is_empty() {
            return evenly_spaced(v, &mut rng, &taken);
        }

        let mut state = Allocation::new(points, self.nodes().count(), v);
        let mut chosen = Vec::with_capacity(v);
        // Greedy: the new node's goals grow with the tokens it has placed.
        for placed in 0..v {
            let progress = (placed + 1) as f64 / v as f64;
            let jitter = 1.0 + rng.gen_range(-JITTER..=JITTER);
            let Some(token) = state
                .best_split(jitter, progress, None)
                .and_then(|split| state.token_for(split, &taken))
            else {
                break;
            };
            state.insert(token);
            chosen.push(token);
        }
        // Polish: move each token to where it serves the final goals best, if that is better.
        for _ in 0..POLISH_ROUNDS {
            let mut moved = false;
            for token in chosen.iter_mut() {
                state.remove(*token);
                let jitter = 1.0 + rng.gen_range(-JITTER..=JITTER);
                let here = state.split_at(*token);
                let better = state
                    .best_split(jitter, 1.0, Some(here))
                    .filter(|split| split.token.is_none())
                    .and_then(|split| state.token_for(split, &taken));
                if let Some(better) = better {
                    moved = true;
                    *token = better;
                }
                state.insert(*token);
            }
            if !moved {
                break;
            }
        }
        // Only a ring whose every range is one token wide runs out of room; fill from anywhere.
        while chosen.len() < v {
            let base = chosen.last().copied().unwrap_or(0);
            let Some(token) = (1..=u64::MAX)
                .map(|step| base.wrapping_add(step))
                .find(|t| taken.binary_search(t).is_err() && !chosen.contains(t))
            else {
                break;
            };
            chosen.push(token);
        }
        chosen.sort_unstable();
        chosen
    }
}

/// A candidate token for the new node: split point `j`'s range `(a, b]` at `a + take`.
#[derive(Debug, Clone, Copy)]
struct Split {
    j: usize,
    take: f64,
    /// The exact token, when the candidate is a token the new node already had.
    token: Option<Token>,
}

/// One node's change under a candidate split: `(owner, primary, replicated)`, in tokens.
type Change = (usize, f64, f64);

/// The future ring as allocation reshapes it. Owners are node indices of the ring; the new node
/// is owner `new`, one past the last.
#[derive(Debug, Clone)]
struct Allocation {
    /// Sorted `(token, owner)`; point `j` owns `(points[j - 1], points[j]]`.
    points: Vec<(Token, usize)>,
    /// Primary ownership in tokens, per owner.
    primary: Vec<f64>,
    /// Replicated ownership in tokens for `REPLICATION_HINT` replicas, per owner (only kept
    /// when `replicates`).
    replicated: Vec<f64>,
    /// Per point: the `REPLICATION_HINT`-th distinct owner clockwise from it, the one a new
    /// replica in front of it displaces.
    last: Vec<usize>,
    /// Per point: whether the new node is already among its replicas.
    has_new: Vec<bool>,
    /// The number of existing nodes holding tokens.
    present: usize,
    new: usize,
    /// Primary share each node should end with: the space over (nodes + 1).
    target: f64,
    /// Replicated share each node should end with: `min(3, nodes + 1)` targets.
    replicated_goal: f64,
    /// The mean range width once the new node's tokens are in.
    mean_width: f64,
    /// Whether replicated ownership can differ between nodes at all: with at most
    /// `REPLICATION_HINT` nodes after the join, every node replicates everything.
    replicates: bool,
}

impl Allocation {
    fn new(points: Vec<(Token, usize)>, nodes: usize, v: usize) -> Allocation {
        let mut state = Allocation {
            points,
            primary: vec![0.0; nodes + 1],
            replicated: Vec::new(),
            last: Vec::new(),
            has_new: Vec::new(),
            present: 0,
            new: nodes,
            target: 0.0,
            replicated_goal: 0.0,
            mean_width: 0.0,
            replicates: false,
        };
        for j in 0..state.points.len() {
            state.primary[state.points[j].1] += state.width(j);
        }
        state.present = state.primary.iter().filter(|&&share| share > 0.0).count();
        state.target = SPACE / (state.present + 1) as f64;
        state.replicated_goal = REPLICATION_HINT.min(state.present + 1) as f64 * state.target;
        state.replicates = state.present >= REPLICATION_HINT;
        state.mean_width = SPACE / (state.points.len() + v) as f64;
        state.refresh();
        state
    }

    /// Width of point `j`'s range, wrapping; the whole space for a single point.
    fn width(&self, j: usize) -> f64 {
        match self.points[j].0.wrapping_sub(self.start(j)) {
            0 => SPACE,
            w => w as f64,
        }
    }

    /// The exclusive start of point `j`'s range: the previous point.
    fn start(&self, j: usize) -> Token {
        self.points[(j + self.points.len() - 1) % self.points.len()].0
    }

    /// Recomputes replicated ownership and the per-point replica facts after the points changed.
    fn refresh(&mut self) {
        if !self.replicates {
            return;
        }
        let m = self.points.len();
        self.replicated.clear();
        self.replicated.resize(self.primary.len(), 0.0);
        self.last.resize(m, 0);
        self.has_new.resize(m, false);
        for j in 0..m {
            let mut owners = [usize::MAX; REPLICATION_HINT];
            let mut count = 0;
            let mut at = j;
            // At least REPLICATION_HINT nodes hold points, so the walk fills the list.
            while count < REPLICATION_HINT {
                let owner = self.points[at].1;
                if !owners[..count].contains(&owner) {
                    owners[count] = owner;
                    count += 1;
                }
                at = if at + 1 == m { 0 } else { at + 1 };
            }
            let width = self.width(j);
            for &owner in &owners {
                self.replicated[owner] += width;
            }
            self.last[j] = owners[REPLICATION_HINT - 1];
            self.has_new[j] = owners.contains(&self.new);
        }
    }

    /// Which ranges are worth scoring in a large ring: those that take from one of the
    /// `CANDIDATE_NODES` most-loaded nodes, in primary (from the range's owner) or replicated
    /// (from its `last`), and the `4 · CANDIDATE_NODES` widest. `None` in a small ring: all are.
    fn candidates(&self) -> Option<(Vec<bool>, f64)> {
        let limit = CANDIDATE_NODES;
        if self.present <= limit {
            return None;
        }
        let mut heavy = vec![false; self.primary.len()];
        let mut existing: Vec<usize> =
            (0..self.new).filter(|&owner| self.primary[owner] > 0.0).collect();
        let mut mark = |values: &[f64]| {
            existing.select_nth_unstable_by(limit - 1, |&a, &b| {
                values[b].total_cmp(&values[a]).then(a.cmp(&b))
            });
            for &owner in &existing[..limit] {
                heavy[owner] = true;
            }
        };
        mark(&self.primary);
        if self.replicates {
            mark(&self.replicated);
        }
        let m = self.points.len();
        let mut widths: Vec<f64> = (0..m).map(|j| self.width(j)).collect();
        let widest = (4 * limit - 1).min(m - 1);
        widths.select_nth_unstable_by(widest, |a, b| b.total_cmp(a));
        Some((heavy, widths[widest]))
    }

    /// The replicated changes of splitting point `j`'s range that do not depend on where it is
    /// split, merged per owner into `back`.
    ///
    /// With distinct owners `P2 P1 | victim N1 N2` around `(a, b]` and 3 replicas, the ranges
    /// owned by P1 and P2 take the new node in place of N1 and the victim. In general, every
    /// range before `a` whose replica walk reaches the new token before filling up, and that
    /// does not have the new node yet, takes it in place of its last replica (`last`).
    fn preceding_changes(&self, j: usize, back: &mut Vec<Change>) {
        back.clear();
        if !self.replicates {
            return;
        }
        let m = self.points.len();
        let mut seen = [usize::MAX; REPLICATION_HINT];
        let mut distinct = 0;
        let mut p = j;
        for _ in 1..m {
            p = (p + m - 1) % m;
            let owner = self.points[p].1;
            if owner == self.new {
                break;
            }
            if !seen[..distinct].contains(&owner) {
                seen[distinct] = owner;
                distinct += 1;
                if distinct == REPLICATION_HINT {
                    break;
                }
            }
            if !self.has_new[p] {
                let width = self.width(p);
                add(back, (self.new, 0.0, width));
                add(back, (self.last[p], 0.0, -width));
            }
        }
    }

    /// All changes of splitting point `j`'s range with a new-node token `take` tokens after its
    /// start, given its `preceding_changes`: the new node gains `(a, a + take]` from the owner,
    /// and that range's replicas become the new node and the first ones of `(a, b]`'s.
    fn changes(&self, j: usize, take: f64, back: &[Change], changes: &mut Vec<Change>) {
        changes.clear();
        changes.extend_from_slice(back);
        add(changes, (self.new, take, 0.0));
        add(changes, (self.points[j].1, -take, 0.0));
        if self.replicates && !self.has_new[j] {
            add(changes, (self.new, 0.0, take));
            add(changes, (self.last[j], 0.0, -take));
        }
    }

    /// The score change of `changes` to the ownership: the squared distance of each node's
    /// primary and replicated ownership from its goal, relative to the goal. The new node's
    /// goals are scaled by `progress`.
    fn score(&self, changes: &[Change], progress: f64) -> f64 {
        let mut score = 0.0;
        for &(owner, primary, replicated) in changes {
            let scale = if owner == self.new { progress } else { 1.0 };
            let off = self.primary[owner] / self.target - scale;
            let moved = primary / self.target;
            score += moved * (2.0 * off + moved);
            if self.replicates {
                let off = self.replicated[owner] / self.replicated_goal - scale;
                let moved = replicated / self.replicated_goal;
                score += REPLICATED_WEIGHT * moved * (2.0 * off + moved);
            }
        }
        score
    }

    /// The score change of splitting a range of `width` into `take` and the rest: the squared
    /// distance of range widths from the mean width, relative to the primary target.
    fn width_score(&self, width: f64, take: f64) -> f64 {
        let off = |w: f64| (w - self.mean_width) / self.target;
        let (a, b, whole) = (off(take), off(width - take), off(width));
        WIDTH_WEIGHT * (a * a + b * b - whole * whole)
    }

    /// The take that minimises the score of splitting point `j`'s range, at most `MAX_SPLIT` of
    /// its `width`. The score is a quadratic `a·take² + b·take + c` in the take: the new node
    /// gains `take` primary (and replicated, unless it already replicates the range), the owner
    /// loses it in primary and `last` in replicated, and the range widths change.
    fn best_take(&self, j: usize, width: f64, back: &[Change], progress: f64) -> f64 {
        let (rw, tok) = (REPLICATED_WEIGHT, WIDTH_WEIGHT);
        let (t, g) = (self.target, self.replicated_goal);
        let owner = self.points[j].1;
        let mut a = 2.0 / (t * t) + 2.0 * tok / (t * t);
        let mut b = 2.0 * (self.primary[self.new] / t - progress) / t
            - 2.0 * (self.primary[owner] / t - 1.0) / t
            - 2.0 * tok * width / (t * t);
        if self.replicates && !self.has_new[j] {
            let last = self.last[j];
            let before = |node: usize| {
                back.iter().find(|c| c.0 == node).map_or(0.0, |c| c.2) + self.replicated[node]
            };
            a += 2.0 * rw / (g * g);
            b += 2.0 * rw * ((before(self.new) / g - progress) - (before(last) / g - 1.0)) / g;
        }
        (-b / (2.0 * a)).clamp(MIN_SPLIT * width, MAX_SPLIT * width)
    }

    /// The candidate that puts the new node's token back at `token`, which is free again.
    fn split_at(&self, token: Token) -> Split {
        let j = self.points.partition_point(|&(t, _)| t < token) % self.points.len();
        Split { j, take: token.wrapping_sub(self.start(j)) as f64, token: Some(token) }
    }

    /// The best-scoring split: every range worth trying that an existing node owns, split at its
    /// `best_take` scaled by `jitter`. `keep`, when given, is scored first and wins ties.
    fn best_split(&self, jitter: f64, progress: f64, keep: Option<Split>) -> Option<Split> {
        let mut back = Vec::new();
        let mut changes = Vec::new();
        let mut best: Option<(Split, f64)> = keep.map(|split| {
            self.preceding_changes(split.j, &mut back);
            self.changes(split.j, split.take, &back, &mut changes);
            let width = self.width(split.j);
            (split, self.score(&changes, progress) + self.width_score(width, split.take))
        });
        let candidates = self.candidates();
        for j in 0..self.points.len() {
            let width = self.width(j);
            if self.points[j].1 == self.new || width < 2.0 {
                continue;
            }
            if let Some((heavy, wide)) = &candidates {
                let owner = self.points[j].1;
                let relieves = heavy[owner] || (self.replicates && heavy[self.last[j]]);
                if !relieves && width < *wide {
                    continue;
                }
            }
            self.preceding_changes(j, &mut back);
            let take = (self.best_take(j, width, &back, progress) * jitter).clamp(1.0, width - 1.0);
            self.changes(j, take, &back, &mut changes);
            let score = self.score(&changes, progress) + self.width_score(width, take);
            if best.is_none_or(|(_, s)| score < s) {
                best = Some((Split { j, take, token: None }, score));
            }
        }
        best.map(|(split, _)| split)
    }

    /// A free token for `split`: its own token if it has one, else the nearest free token to
    /// `a + take` inside the range.
    fn token_for(&self, split: Split, taken: &[Token]) -> Option<Token> {
        if split.token.is_some() {
            return split.token;
        }
        free_token(self.start(split.j), self.width(split.j), split.take, taken, &self.points)
    }

    /// Places a new-node `token`, which is free.
    fn insert(&mut self, token: Token) {
        let at = self.points.partition_point(|&(t, _)| t < token);
        let j = at % self.points.len();
        let took = token.wrapping_sub(self.start(j)) as f64;
        self.primary[self.points[j].1] -= took;
        self.primary[self.new] += took;
        self.points.insert(at, (token, self.new));
        self.refresh();
    }

    /// Takes a new-node `token` out again; its range goes back to the next point's owner.
    fn remove(&mut self, token: Token) {
        let Ok(at) = self.points.binary_search_by_key(&token, |&(t, _)| t) else {
            return;
        };
        let width = self.width(at);
        self.points.remove(at);
        let next = at % self.points.len();
        self.primary[self.new] -= width;
        self.primary[self.points[next].1] += width;
        self.refresh();
    }
}

/// Adds `change` to `changes`, merged with the same owner's.
fn add(changes: &mut Vec<Change>, change: Change) {
    match changes.iter_mut().find(|c| c.0 == change.0) {
        Some(c) => {
            c.1 += change.1;
            c.2 += change.2;
        }
        None => changes.push(change),
    }
}

/// The allocation RNG: ChaCha8 keyed by the caller's seed and the node id.
fn rng_for(seed: u64, id: NodeId) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..24].copy_from_slice(&id.0.to_le_bytes());
    key[24..].copy_from_slice(b"ringallc");
    ChaCha8Rng::from_seed(key)
}

/// `v` tokens `step` apart from a random offset below `step`; a token already taken moves up to
/// the next free one.
fn evenly_spaced(v: usize, rng: &mut ChaCha8Rng, taken: &[Token]) -> Vec<Token> {
    let step = (1u128 << 64) / v as u128;
    let offset = rng.gen_range(0..step.max(1));
    let mut tokens: Vec<Token> = Vec::with_capacity(v);
    for i in 0..v as u128 {
        let mut token = (offset + i * step) as Token;
        while taken.binary_search(&token).is_ok() || tokens.contains(&token) {
            token = token.wrapping_add(1);
        }
        tokens.push(token);
    }
    tokens.sort_unstable();
    tokens
}

/// A token strictly inside `(start, start + range)`, as close to `start + share` as possible,
/// that is neither in the ring nor already chosen.
fn free_token(
    start: Token,
    range: f64,
    share: f64,
    taken: &[Token],
    points: &[(Token, usize)],
) -> Option<Token> {
    // `range` is exact below 2^53 and within a few ulps above, far inside the 10% kept free.
    let limit = (range as u128).min(1 << 64).saturating_sub(1).max(1) as u64;
    let want = (share as u64).clamp(1, limit);
    let free = |offset: u64| {
        let token = start.wrapping_add(offset);
        let busy = taken.binary_search(&token).is_ok()
            || points.binary_search_by_key(&token, |&(t, _)| t).is_ok();
        (!busy).then_some(token)
    };
    (want..=limit).find_map(free).or_else(|| (1..want).rev().find_map(free))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{NodeStatus, RingNode};

    fn join(ring: &Ring, id: NodeId, v: usize, seed: u64) -> Ring {
        let tokens = ring.allocate_tokens(id, v, seed);
        assert_eq!(tokens.len(), v);
        let node = RingNode { id, tokens, zone: None, status: NodeStatus::Normal };
        Ring::new(ring.nodes().cloned().chain([node]))
    }

    fn spread(ownership: impl IntoIterator<Item = f64>) -> f64 {
        let shares: Vec<f64> = ownership.into_iter().collect();
        let max = shares.iter().copied().fold(f64::MIN, f64::max);
        let min = shares.iter().copied().fold(f64::MAX, f64::min);
        max / min
    }

    #[test]
    fn empty_ring_gets_evenly_spaced_tokens() {
        let tokens = Ring::new([]).allocate_tokens(NodeId(1), 4, 9);
        let step = 1u64 << 62;
        assert!(tokens[0] < step);
        for pair in tokens.windows(2) {
            assert_eq!(pair[1] - pair[0], step);
        }
    }

    #[test]
    fn second_node_halves_every_range() {
        let ring = join(&Ring::new([]), NodeId(1), 16, 1);
        let ring = join(&ring, NodeId(2), 16, 1);
        let ownership = ring.ownership(1);
        assert!((ownership[&NodeId(1)] - 0.5).abs() < 0.02, "{ownership:?}");
    }

    #[test]
    fn thirty_sequential_joins_stay_balanced() {
        let mut ring = Ring::new([]);
        for id in 1..=30 {
            ring = join(&ring, NodeId(id), crate::DEFAULT_VNODES, 3);
        }
        // ALGORITHM.md §6 measures ~1.06 and ~1.04; these bounds leave room for tuning.
        assert!(spread(ring.ownership(1).into_values()) < 1.15);
        assert!(spread(ring.ownership(3).into_values()) < 1.3);
    }

    #[test]
    fn small_clusters_balance_replicated_ownership() {
        // ALGORITHM.md §6 measures at most ~1.09 (worst seed) at 4 to 10 nodes; random tokens
        // give 1.2 to 1.6, and the allocation before replicated scoring gave up to 1.77.
        for seed in 1..=4 {
            let mut ring = Ring::new([]);
            for id in 1..=8 {
                ring = join(&ring, NodeId(id), crate::DEFAULT_VNODES, seed);
                if id < 4 {
                    continue;
                }
                let replicated = spread(ring.ownership(3).into_values());
                assert!(replicated < 1.3, "seed {seed}, {id} nodes: n=3 max/min {replicated:.3}");
                let primary = spread(ring.ownership(1).into_values());
                assert!(primary < 1.15, "seed {seed}, {id} nodes: n=1 max/min {primary:.3}");
            }
        }
    }

    #[test]
    fn joining_and_leaving_members_are_the_future_ring() {
        let ring = join(&join(&Ring::new([]), NodeId(1), 8, 1), NodeId(2), 8, 1);
        let joining = ring.allocate_tokens(NodeId(3), 8, 1);
        let ring = Ring::new(ring.nodes().cloned().chain([RingNode {
            id: NodeId(3),
            tokens: joining.clone(),
            zone: None,
            status: NodeStatus::Joining,
        }]));
        // A fourth node sees the third as present: it takes ~1/4, some of it from node 3.
        let fourth = ring.allocate_tokens(NodeId(4), 8, 1);
        assert!(fourth.iter().all(|t| !joining.contains(t)));
        let future = Ring::new(ring.future().nodes().cloned().chain([RingNode {
            id: NodeId(4),
            tokens: fourth,
            zone: None,
            status: NodeStatus::Normal,
        }]));
        assert!(spread(future.ownership(1).into_values()) < 1.2, "{:?}", future.ownership(1));
    }

    #[test]
    fn deterministic_and_seed_dependent() {
        let ring = join(&join(&Ring::new([]), NodeId(1), 16, 1), NodeId(2), 16, 1);
        assert_eq!(ring.allocate_tokens(NodeId(3), 16, 5), ring.allocate_tokens(NodeId(3), 16, 5));
        assert_ne!(ring.allocate_tokens(NodeId(3), 16, 5), ring.allocate_tokens(NodeId(3), 16, 6));
        assert_ne!(ring.allocate_tokens(NodeId(3), 16, 5), ring.allocate_tokens(NodeId(4), 16, 5));
    }

    #[test]
    fn crowded_ring_still_returns_fresh_tokens() {
        let ring = Ring::new([RingNode {
            id: NodeId(1),
            tokens: vec![1, 2, 3, 5],
            zone: None,
            status: NodeStatus::Normal,
        }]);
        let tokens = ring.allocate_tokens(NodeId(2), 3, 0);
        assert_eq!(tokens.len(), 3);
        for token in &tokens {
            assert!(![1, 2, 3, 5].contains(token));
        }
    }

    /// The incremental changes a split is scored by are what inserting the token really does.
    #[test]
    fn split_changes_match_recomputation() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for case in 0..200 {
            let nodes = 3 + case % 6;
            let per = 1 + case % 5;
            let mut points: Vec<(Token, usize)> =
                (0..nodes * per).map(|i| (rng.gen(), i % nodes)).collect();
            points.sort_unstable();
            points.dedup_by_key(|p| p.0);
            let mut state = Allocation::new(points, nodes, 4);
            for _ in 0..case % 3 {
                let j = rng.gen_range(0..state.points.len());
                if state.points[j].1 != state.new && state.width(j) >= 4.0 {
                    let token = state.start(j).wrapping_add((state.width(j) / 2.0) as u64);
                    state.insert(token);
                }
            }
            let (mut back, mut changes) = (Vec::new(), Vec::new());
            for j in 0..state.points.len() {
                if state.points[j].1 == state.new || state.width(j) < 4.0 {
                    continue;
                }
                let take = (state.width(j) / 3.0).floor();
                state.preceding_changes(j, &mut back);
                state.changes(j, take, &back, &mut changes);
                let mut expected = (state.primary.clone(), state.replicated.clone());
                for &(owner, primary, replicated) in &changes {
                    expected.0[owner] += primary;
                    expected.1[owner] += replicated;
                }
                let mut after = state.clone();
                after.insert(state.start(j).wrapping_add(take as u64));
                for owner in 0..=nodes {
                    assert!((after.primary[owner] - expected.0[owner]).abs() < 1e6);
                    assert!((after.replicated[owner] - expected.1[owner]).abs() < 1e6);
                }

                // `best_take` is the minimum of the score over the allowed takes.
                let width = state.width(j);
                let best = state.best_take(j, width, &back, 0.5);
                let score = |take: f64| {
                    let mut changes = Vec::new();
                    state.changes(j, take, &back, &mut changes);
                    state.score(&changes, 0.5) + state.width_score(width, take)
                };
                for near in [0.9, 0.99, 1.01, 1.1] {
                    let other = (best * near).clamp(MIN_SPLIT * width, MAX_SPLIT * width);
                    assert!(score(best) <= score(other) + 1e-9, "case {case} j {j}");
                }
            }
        }
    }
}
