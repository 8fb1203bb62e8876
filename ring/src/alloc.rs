//! Token allocation for a joining node: balanced primary ownership, in the spirit of Cassandra 4's
//! `allocate_tokens_for_local_replication_factor` but greedy and much smaller (`ALGORITHM.md` §5).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::{NodeKey, Ring, Token};

/// The token space, `2^64`, as a float for share arithmetic.
const SPACE: f64 = 18_446_744_073_709_551_616.0;

/// A new token takes at most this fraction of the range it splits, so the node it splits keeps
/// a piece and later allocations still have room there.
const MAX_SPLIT: f64 = 0.9;

/// Relative jitter on each share, so two nodes that join at once from the same view (different
/// ids) pick different tokens.
const JITTER: f64 = 0.02;

/// Marks the joining node among the owner indices during allocation.
const NEW: u32 = u32::MAX;

impl Ring {
    /// Chooses `v` tokens for node `id` about to join this ring, sorted.
    ///
    /// Deterministic in `(ring, id, seed)`; never returns a token already in the ring (any
    /// status) and never the same token twice. Allocation works on the future ring (joining
    /// nodes count as present, leaving ones as gone), so sequential joiners do not collide, and
    /// ignores any tokens `id` itself already has.
    ///
    /// - Empty ring: `v` evenly spaced tokens at a random offset.
    /// - Otherwise, for each token in turn: take the node with the largest primary ownership (as
    ///   updated by the tokens placed so far), split its largest range `(a, b]` at `a + share`,
    ///   so the new node takes `(a, a + share]`, where `share` is the new node's remaining need
    ///   toward `1 / (nodes + 1)` divided by its remaining tokens, at most 90% of the range, with
    ///   ±2% jitter.
    pub fn allocate_tokens(&self, id: NodeKey, v: usize, seed: u64) -> Vec<Token> {
        if v == 0 {
            return Vec::new();
        }
        let mut rng = rng_for(seed, id);
        let mut taken: Vec<Token> = self.entries().iter().map(|entry| entry.token).collect();
        taken.dedup();
        let future = Ring::future_bit();
        let mut points: Vec<(Token, u32)> = self
            .entries()
            .iter()
            .filter(|entry| entry.views & future != 0 && self.node_at(entry.node).id != id)
            .map(|entry| (entry.token, entry.node))
            .collect();
        if points.is_empty() {
            return evenly_spaced(v, &mut rng, &taken);
        }

        let owners = self.nodes().count();
        let mut load: Vec<f64> = vec![0.0; owners];
        for j in 0..points.len() {
            load[points[j].1 as usize] += width(&points, j);
        }
        let present = load.iter().filter(|&&share| share > 0.0).count();
        let target = SPACE / (present + 1) as f64;
        let mut own = 0.0;
        let mut chosen = Vec::with_capacity(v);
        for placed in 0..v {
            let Some(heaviest) = argmax(&load) else { break };
            let Some(j) = largest_range(&points, |owner| owner == heaviest as u32)
                .or_else(|| largest_range(&points, |_| true))
            else {
                break;
            };
            let range = width(&points, j);
            let start = points[(j + points.len() - 1) % points.len()].0;
            let per_token = ((target - own) / (v - placed) as f64).max(0.0);
            let share = per_token.min(MAX_SPLIT * range) * (1.0 + rng.gen_range(-JITTER..=JITTER));
            let Some(token) = free_token(start, range, share, &taken, &points) else {
                break;
            };
            let took = token.wrapping_sub(start) as f64;
            let victim = points[j].1;
            if victim != NEW {
                load[victim as usize] -= took;
            }
            own += took;
            let at = points.partition_point(|&(t, _)| t < token);
            points.insert(at, (token, NEW));
            chosen.push(token);
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

/// The allocation RNG: ChaCha8 keyed by the caller's seed and the node id.
fn rng_for(seed: u64, id: NodeKey) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..24].copy_from_slice(&id.to_le_bytes());
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

/// Width of point `j`'s range `(points[j - 1], points[j]]`, wrapping; the whole space for a
/// single point.
fn width(points: &[(Token, u32)], j: usize) -> f64 {
    let previous = points[(j + points.len() - 1) % points.len()].0;
    match points[j].0.wrapping_sub(previous) {
        0 => SPACE,
        w => w as f64,
    }
}

/// The index of the largest value, the lowest index on ties; `None` if all are zero.
fn argmax(load: &[f64]) -> Option<usize> {
    let mut best: Option<usize> = None;
    for (i, &share) in load.iter().enumerate() {
        if share > 0.0 && best.is_none_or(|b| share > load[b]) {
            best = Some(i);
        }
    }
    best
}

/// The point with the widest range among owners accepted by `owned`, if any is wider than one
/// token (a narrower one cannot be split).
fn largest_range(points: &[(Token, u32)], owned: impl Fn(u32) -> bool) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    for (j, &(_, owner)) in points.iter().enumerate() {
        if !owned(owner) {
            continue;
        }
        let w = width(points, j);
        if w >= 2.0 && best.is_none_or(|(_, bw)| w > bw) {
            best = Some((j, w));
        }
    }
    best.map(|(j, _)| j)
}

/// A token strictly inside `(start, start + range)`, as close to `start + share` as possible,
/// that is neither in the ring nor already chosen.
fn free_token(
    start: Token,
    range: f64,
    share: f64,
    taken: &[Token],
    points: &[(Token, u32)],
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

    fn join(ring: &Ring, id: NodeKey, v: usize, seed: u64) -> Ring {
        let tokens = ring.allocate_tokens(id, v, seed);
        assert_eq!(tokens.len(), v);
        let node = RingNode { id, tokens, zone: None, status: NodeStatus::Normal };
        Ring::new(ring.nodes().cloned().chain([node]))
    }

    #[test]
    fn empty_ring_gets_evenly_spaced_tokens() {
        let tokens = Ring::new([]).allocate_tokens(1, 4, 9);
        let step = 1u64 << 62;
        assert!(tokens[0] < step);
        for pair in tokens.windows(2) {
            assert_eq!(pair[1] - pair[0], step);
        }
    }

    #[test]
    fn second_node_halves_every_range() {
        let ring = join(&Ring::new([]), 1, 16, 1);
        let ring = join(&ring, 2, 16, 1);
        let ownership = ring.ownership(1);
        assert!((ownership[&1] - 0.5).abs() < 0.02, "{ownership:?}");
    }

    #[test]
    fn deterministic_and_seed_dependent() {
        let ring = join(&join(&Ring::new([]), 1, 16, 1), 2, 16, 1);
        assert_eq!(ring.allocate_tokens(3, 16, 5), ring.allocate_tokens(3, 16, 5));
        assert_ne!(ring.allocate_tokens(3, 16, 5), ring.allocate_tokens(3, 16, 6));
        assert_ne!(ring.allocate_tokens(3, 16, 5), ring.allocate_tokens(4, 16, 5));
    }

    #[test]
    fn crowded_ring_still_returns_fresh_tokens() {
        let ring = Ring::new([RingNode {
            id: 1,
            tokens: vec![1, 2, 3, 5],
            zone: None,
            status: NodeStatus::Normal,
        }]);
        let tokens = ring.allocate_tokens(2, 3, 0);
        assert_eq!(tokens.len(), 3);
        for token in &tokens {
            assert!(![1, 2, 3, 5].contains(token));
        }
    }
}
