//! Property tests of the ring arithmetic (`ALGORITHM.md` §7 lists the invariants).

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use starling_ring::{token_of, NodeId, NodeStatus, Ring, RingNode, Token, DEFAULT_VNODES};

fn status() -> impl Strategy<Value = NodeStatus> {
    prop_oneof![
        6 => Just(NodeStatus::Normal),
        2 => Just(NodeStatus::Joining),
        2 => Just(NodeStatus::Leaving),
    ]
}

fn zone() -> impl Strategy<Value = Option<String>> {
    prop::sample::select(vec![None, Some("a"), Some("b"), Some("c"), Some("d")])
        .prop_map(|zone| zone.map(str::to_owned))
}

/// Tokens either anywhere or crowded into a few values, so duplicates and ties get exercised.
fn tokens() -> impl Strategy<Value = Vec<Token>> {
    prop_oneof![
        prop::collection::vec(any::<Token>(), 0..6),
        prop::collection::vec(0..40u64, 0..6),
        prop::collection::vec(prop_oneof![0..8u64, (u64::MAX - 8)..=u64::MAX], 0..4),
    ]
}

/// Up to 9 members with distinct ids, any statuses and zones.
fn nodes() -> impl Strategy<Value = Vec<RingNode>> {
    prop::collection::btree_map(1..200u128, (tokens(), zone(), status()), 0..9).prop_map(|map| {
        map.into_iter()
            .map(|(id, (tokens, zone, status))| RingNode { id: NodeId(id), tokens, zone, status })
            .collect()
    })
}

/// Who holds tokens in a view, computed straight from the definition: per token, the lowest id
/// among the view's nodes claiming it.
fn holders(nodes: &[RingNode], admits: impl Fn(NodeStatus) -> bool) -> BTreeMap<NodeId, &RingNode> {
    let mut winner: BTreeMap<Token, &RingNode> = BTreeMap::new();
    for node in nodes.iter().filter(|node| admits(node.status)) {
        for &token in &node.tokens {
            let slot = winner.entry(token).or_insert(node);
            if node.id < slot.id {
                *slot = node;
            }
        }
    }
    winner.into_values().map(|node| (node.id, node)).collect()
}

/// Members and the same members in another order, with a second copy of the first member (other
/// tokens), which must resolve the same way whichever copy comes first.
fn orderings() -> impl Strategy<Value = (Vec<RingNode>, Vec<RingNode>)> {
    nodes()
        .prop_map(|mut nodes| {
            if let Some(first) = nodes.first().cloned() {
                nodes.push(RingNode { tokens: vec![7, 8], ..first });
            }
            nodes
        })
        .prop_flat_map(|nodes| (Just(nodes.clone()), Just(nodes).prop_shuffle()))
}

fn current(status: NodeStatus) -> bool {
    status != NodeStatus::Joining
}

/// Tokens worth probing: random ones plus every ring token and its neighbours (range edges).
fn probes(nodes: &[RingNode], random: &[Token]) -> Vec<Token> {
    let mut probes: Vec<Token> = random.to_vec();
    for node in nodes {
        for &t in &node.tokens {
            probes.extend([t.wrapping_sub(1), t, t.wrapping_add(1)]);
        }
    }
    probes.extend([0, u64::MAX]);
    probes
}

fn join(ring: &Ring, id: NodeId, seed: u64, status: NodeStatus) -> Ring {
    let tokens = ring.allocate_tokens(id, DEFAULT_VNODES, seed);
    Ring::new(ring.nodes().cloned().chain([RingNode { id, tokens, zone: None, status }]))
}

proptest! {
    #[test]
    fn replicas_are_min_n_distinct_current_nodes_over_min_n_zones(
        nodes in nodes(),
        n in 0..6usize,
        random in prop::collection::vec(any::<Token>(), 8),
    ) {
        let ring = Ring::new(nodes.clone());
        let held = holders(&nodes, current);
        let zones: BTreeSet<&Option<String>> = held.values().map(|node| &node.zone).collect();
        for token in probes(&nodes, &random) {
            let replicas = ring.replicas(token, n);
            let distinct: BTreeSet<NodeId> = replicas.iter().copied().collect();
            prop_assert_eq!(distinct.len(), replicas.len(), "repeat in {:?}", replicas);
            prop_assert_eq!(replicas.len(), n.min(held.len()));
            prop_assert!(replicas.iter().all(|id| held.contains_key(id)));
            let used: BTreeSet<&Option<String>> =
                replicas.iter().map(|id| &held[id].zone).collect();
            prop_assert_eq!(used.len(), n.min(zones.len()), "zones of {:?}", replicas);
        }
    }

    #[test]
    fn first_replica_owns_the_first_token_at_or_after_the_key(
        nodes in nodes(),
        random in prop::collection::vec(any::<Token>(), 8),
    ) {
        let ring = Ring::new(nodes.clone());
        let mut owners: BTreeMap<Token, NodeId> = BTreeMap::new();
        for (&id, node) in &holders(&nodes, current) {
            for &t in &node.tokens {
                let owner = owners.entry(t).or_insert(id);
                *owner = (*owner).min(id);
            }
        }
        for token in probes(&nodes, &random) {
            let expected = owners.range(token..).next().or_else(|| owners.iter().next());
            prop_assert_eq!(ring.replicas(token, 1).first().copied(), expected.map(|(_, id)| *id));
        }
    }

    #[test]
    fn placement_agrees_with_ring(
        nodes in nodes(),
        n in 0..6usize,
        random in prop::collection::vec(any::<Token>(), 8),
    ) {
        let ring = Ring::new(nodes.clone());
        let placement = ring.placement(n);
        for token in probes(&nodes, &random) {
            let slow = ring.write_set(token, n);
            let (natural, pending) = placement.write_set(token);
            prop_assert_eq!(natural, slow.natural.as_slice());
            prop_assert_eq!(pending, slow.pending.as_slice());
            let slow = ring.replicas(token, n);
            prop_assert_eq!(placement.replicas(token), slow.as_slice());
        }
    }

    #[test]
    fn ring_and_digest_do_not_depend_on_member_order(
        (input, shuffled) in orderings(),
        n in 1..4usize,
        random in prop::collection::vec(any::<Token>(), 8),
    ) {
        let (a, b) = (Ring::new(input.clone()), Ring::new(shuffled));
        prop_assert_eq!(&a, &b);
        prop_assert_eq!(a.digest(), b.digest());
        prop_assert_eq!(a.digest().len(), 16);
        for token in probes(&input, &random) {
            prop_assert_eq!(a.write_set(token, n), b.write_set(token, n));
            prop_assert_eq!(a.ranges_of(input.first().map_or(NodeId(0), |node| node.id), n),
                b.ranges_of(input.first().map_or(NodeId(0), |node| node.id), n));
        }
    }

    #[test]
    fn write_set_holds_every_future_replica(
        nodes in nodes(),
        n in 0..6usize,
        random in prop::collection::vec(any::<Token>(), 8),
    ) {
        let ring = Ring::new(nodes.clone());
        let future = ring.future();
        for token in probes(&nodes, &random) {
            let set = ring.write_set(token, n);
            let will = future.replicas(token, n);
            prop_assert_eq!(&set.natural, &ring.replicas(token, n));
            let expected: Vec<NodeId> =
                will.iter().copied().filter(|id| !set.natural.contains(id)).collect();
            prop_assert_eq!(&set.pending, &expected);
            for id in &will {
                prop_assert!(set.natural.contains(id) || set.pending.contains(id));
            }
        }
    }

    #[test]
    fn ranges_of_is_exactly_where_the_node_replicates(
        nodes in nodes(),
        n in 1..5usize,
        random in prop::collection::vec(any::<Token>(), 8),
    ) {
        let ring = Ring::new(nodes.clone());
        for node in &nodes {
            let ranges = ring.ranges_of(node.id, n);
            for token in probes(&nodes, &random) {
                let hits = ranges.iter().filter(|range| range.contains(token)).count();
                prop_assert!(hits <= 1, "overlapping ranges {:?}", ranges);
                prop_assert_eq!(hits == 1, ring.replicas(token, n).contains(&node.id),
                    "token {} ranges {:?}", token, ranges);
            }
        }
    }

    #[test]
    fn pending_ranges_are_exactly_future_but_not_current(
        nodes in nodes(),
        n in 1..5usize,
        random in prop::collection::vec(any::<Token>(), 8),
    ) {
        let ring = Ring::new(nodes.clone());
        let future = ring.future();
        for node in &nodes {
            let pending = ring.pending_ranges(node.id, n);
            for token in probes(&nodes, &random) {
                let hits: Vec<_> = pending.iter().filter(|(range, _)| range.contains(token)).collect();
                prop_assert!(hits.len() <= 1, "overlapping ranges {:?}", pending);
                let now = ring.replicas(token, n);
                let expected = future.replicas(token, n).contains(&node.id) && !now.contains(&node.id);
                prop_assert_eq!(hits.len() == 1, expected, "token {} pending {:?}", token, pending);
                if let Some((_, sources)) = hits.first() {
                    prop_assert_eq!(sources, &now, "stream sources for token {}", token);
                }
            }
        }
    }

    #[test]
    fn ownership_sums_to_min_n_nodes(nodes in nodes(), n in 1..5usize) {
        let ring = Ring::new(nodes.clone());
        let ownership = ring.ownership(n);
        prop_assert_eq!(ownership.len(), nodes.len());
        let total: f64 = ownership.values().sum();
        let expected = n.min(holders(&nodes, current).len()) as f64;
        prop_assert!((total - expected).abs() < 1e-9, "{} vs {}", total, expected);
    }

    #[test]
    fn allocated_tokens_are_fresh_sorted_and_deterministic(
        nodes in nodes(),
        v in 0..20usize,
        seed in any::<u64>(),
    ) {
        let ring = Ring::new(nodes.clone());
        let tokens = ring.allocate_tokens(NodeId(1000), v, seed);
        prop_assert_eq!(tokens.len(), v);
        prop_assert!(tokens.windows(2).all(|pair| pair[0] < pair[1]), "{:?}", tokens);
        let existing: BTreeSet<Token> = nodes.iter().flat_map(|node| node.tokens.clone()).collect();
        prop_assert!(tokens.iter().all(|t| !existing.contains(t)));
        prop_assert_eq!(&tokens, &ring.allocate_tokens(NodeId(1000), v, seed));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Consistent hashing's promise: a new node takes about its share and nothing else moves.
    #[test]
    fn adding_a_node_moves_about_its_share_to_it(
        size in 1..=20usize,
        seed in any::<u64>(),
        ids in prop::collection::btree_set(any::<u128>(), 21),
    ) {
        let ids: Vec<NodeId> = ids.into_iter().map(NodeId).collect();
        let mut ring = Ring::new([]);
        for &id in &ids[..size] {
            ring = join(&ring, id, seed, NodeStatus::Normal);
        }
        let newcomer = ids[size];
        let grown = join(&ring, newcomer, seed, NodeStatus::Normal);
        let keys: Vec<Token> =
            (0..2000u32).map(|i| token_of(&[&seed.to_le_bytes()[..], &i.to_le_bytes()].concat())).collect();
        let bound = 2.5 / (size + 1) as f64;

        let mut moved = 0;
        for &key in &keys {
            let (before, after) = (ring.replicas(key, 1), grown.replicas(key, 1));
            if before != after {
                moved += 1;
                prop_assert_eq!(&after, &vec![newcomer], "key {} moved elsewhere", key);
            }
        }
        let fraction = moved as f64 / keys.len() as f64;
        prop_assert!(fraction <= bound, "n=1: {} of keys moved, bound {}", fraction, bound);

        // n = 3, one zone: a changed list gains the newcomer and loses exactly one node.
        let mut changed_slots = 0;
        for &key in &keys {
            let (before, after) = (ring.replicas(key, 3), grown.replicas(key, 3));
            if before != after {
                changed_slots += 1;
                prop_assert!(after.contains(&newcomer));
                let lost = before.iter().filter(|id| !after.contains(id)).count();
                prop_assert_eq!(lost, usize::from(before.len() == 3));
            }
        }
        let slots = keys.len() * 3.min(size + 1);
        let fraction = changed_slots as f64 / slots as f64;
        prop_assert!(fraction <= bound, "n=3: {} of replica slots moved, bound {}", fraction, bound);
    }

    /// While a node joins, its pending ranges cover what it will own, and the write sets reach
    /// the future owners.
    #[test]
    fn joining_node_streams_what_it_will_own(
        size in 1..=12usize,
        seed in any::<u64>(),
        n in 1..4usize,
        ids in prop::collection::btree_set(any::<u128>(), 13),
    ) {
        let ids: Vec<NodeId> = ids.into_iter().map(NodeId).collect();
        let mut ring = Ring::new([]);
        for &id in &ids[..size] {
            ring = join(&ring, id, seed, NodeStatus::Normal);
        }
        let joiner = ids[size];
        let joining = join(&ring, joiner, seed, NodeStatus::Joining);
        prop_assert!(joining.ranges_of(joiner, n).is_empty());
        let done = joining.future();
        prop_assert_eq!(done.ranges_of(joiner, n), {
            // Everything it will own is pending now (it owns nothing yet).
            let pending = joining.pending_ranges(joiner, n);
            let ends: Vec<_> = pending.iter().map(|(range, _)| *range).collect();
            merge_adjacent(ends)
        });
    }
}

/// Joins ranges that touch (`a.end == b.start`), as `ranges_of` reports them.
fn merge_adjacent(mut ranges: Vec<starling_ring::Range>) -> Vec<starling_ring::Range> {
    use starling_ring::Range;
    ranges.sort_by_key(|range| range.start);
    let mut merged: Vec<Range> = Vec::new();
    for range in ranges {
        match merged.last_mut() {
            Some(last) if last.end == range.start => last.end = range.end,
            _ => merged.push(range),
        }
    }
    if merged.len() > 1 {
        let (first, last) = (merged[0], merged[merged.len() - 1]);
        if last.end == first.start {
            merged.pop();
            merged[0].start = last.start;
            merged.sort_by_key(|range| range.start);
        }
    }
    if merged.len() == 1 && merged[0].start == merged[0].end {
        merged[0] = Range::FULL;
    }
    merged
}
