use std::collections::BTreeMap;
use std::fmt;

use crate::placement::Placement;
use crate::range::merge_arcs;
use crate::{NodeId, NodeStatus, Range, RingNode, Token};

/// The replicas a write goes to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteSet {
    /// The current owners, in preference order: [`Ring::replicas`].
    pub natural: Vec<NodeId>,
    /// Future owners that are not current ones (Cassandra's pending endpoints), in the future
    /// ring's preference order. A write counts toward its consistency level on `natural` only;
    /// `pending` copies make sure the new owners miss nothing while they stream.
    pub pending: Vec<NodeId>,
}

/// Which members a walk considers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum View {
    /// `Normal` and `Leaving`: who owns data now.
    Current,
    /// `Normal` and `Joining`: who owns data once every move completes.
    Future,
}

impl View {
    fn bit(self) -> u8 {
        match self {
            View::Current => 1,
            View::Future => 2,
        }
    }

    fn admits(self, status: NodeStatus) -> bool {
        match self {
            View::Current => status.is_current(),
            View::Future => status.is_future(),
        }
    }
}

/// One `(token, node)` pair of the ring.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Entry {
    pub(crate) token: Token,
    /// Index into `Ring::nodes`.
    pub(crate) node: u32,
    /// [`View::bit`]s of the views in which this entry holds its token: the node takes part in
    /// the view and no lower id of the view has the same token.
    pub(crate) views: u8,
}

/// What a walk needs to know about a view up front.
#[derive(Clone, Copy, Debug, Default)]
struct ViewInfo {
    /// Distinct nodes holding at least one token in the view.
    nodes: usize,
    /// Distinct zones among those nodes.
    zones: usize,
}

/// A consistent-hashing ring: an immutable value, cheap to share behind an `Arc`.
///
/// Built from the members' gossiped state by [`Ring::new`]; every question is answered for the
/// current ring (`Normal` and `Leaving` nodes) unless it says "future" (`Normal` and `Joining`).
#[derive(Clone)]
pub struct Ring {
    /// Sorted by id, one entry per id, tokens sorted and without repeats.
    nodes: Vec<RingNode>,
    /// Every `(token, node)` pair, sorted by token then node index (so by id).
    entries: Vec<Entry>,
    /// Zone number of each node (index-aligned with `nodes`); `None` is a zone of its own.
    zone_of: Vec<u32>,
    /// Indexed by `View as usize`.
    views: [ViewInfo; 2],
    digest: String,
}

impl Ring {
    /// Builds the ring of `nodes`.
    ///
    /// Deterministic: the same set of nodes in any order gives the same ring and digest. A node's
    /// tokens are sorted and repeats dropped. When two nodes of a view claim the same token, the
    /// lower id keeps it and the other's copy is ignored (checked per view, so a token claimed by
    /// a leaving node and a higher joining one goes to the joiner once the leaver is gone).
    /// Should an id appear twice, the copy with the greatest `(tokens, zone, status)` is kept.
    pub fn new(nodes: impl IntoIterator<Item = RingNode>) -> Ring {
        let mut nodes: Vec<RingNode> = nodes
            .into_iter()
            .map(|mut node| {
                node.tokens.sort_unstable();
                node.tokens.dedup();
                node
            })
            .collect();
        nodes.sort_by(|a, b| {
            a.id.cmp(&b.id)
                .then_with(|| b.tokens.cmp(&a.tokens))
                .then_with(|| b.zone.cmp(&a.zone))
                .then_with(|| b.status.cmp(&a.status))
        });
        nodes.dedup_by_key(|node| node.id);
        assert!(u32::try_from(nodes.len()).is_ok(), "more than 2^32 ring members");

        let mut zones: BTreeMap<Option<&str>, u32> = BTreeMap::new();
        for node in &nodes {
            let next = zones.len() as u32;
            zones.entry(node.zone.as_deref()).or_insert(next);
        }
        let zone_of: Vec<u32> = nodes.iter().map(|node| zones[&node.zone.as_deref()]).collect();

        let mut entries: Vec<Entry> = nodes
            .iter()
            .enumerate()
            .flat_map(|(index, node)| {
                node.tokens.iter().map(move |&token| Entry { token, node: index as u32, views: 0 })
            })
            .collect();
        entries.sort_unstable_by_key(|entry| (entry.token, entry.node));

        let mut views = [ViewInfo::default(); 2];
        for view in [View::Current, View::Future] {
            let mut holds = vec![false; nodes.len()];
            let mut previous: Option<Token> = None;
            for entry in &mut entries {
                if !view.admits(nodes[entry.node as usize].status) || previous == Some(entry.token)
                {
                    continue;
                }
                previous = Some(entry.token);
                entry.views |= view.bit();
                holds[entry.node as usize] = true;
            }
            let mut seen_zones: Vec<u32> =
                (0..nodes.len()).filter(|&i| holds[i]).map(|i| zone_of[i]).collect();
            seen_zones.sort_unstable();
            seen_zones.dedup();
            views[view as usize] =
                ViewInfo { nodes: holds.iter().filter(|&&h| h).count(), zones: seen_zones.len() };
        }

        let digest = digest_of(&nodes);
        Ring { nodes, entries, zone_of, views, digest }
    }

    /// 16 hex characters: the first 8 bytes of blake3 over the canonical encoding of every node
    /// (by id: id, status, zone, sorted tokens). Equal views give equal digests; see
    /// `ALGORITHM.md` for the exact bytes.
    pub fn digest(&self) -> String {
        self.digest.clone()
    }

    /// Whether no node holds any token (joining and leaving nodes included).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The members, sorted by id, with their tokens as given (sorted, without repeats).
    pub fn nodes(&self) -> impl Iterator<Item = &RingNode> {
        self.nodes.iter()
    }

    /// One member.
    pub fn node(&self, id: NodeId) -> Option<&RingNode> {
        self.index_of(id).map(|index| &self.nodes[index])
    }

    /// Every `(token, node)` pair of every member, whatever its status.
    pub fn vnode_count(&self) -> usize {
        self.entries.len()
    }

    /// The current owners of `token`, in preference order: the first `n` distinct `Normal` or
    /// `Leaving` nodes clockwise from the token's vnode, spread over zones first. Fewer than `n`
    /// when the ring has fewer such nodes.
    pub fn replicas(&self, token: Token, n: usize) -> Vec<NodeId> {
        self.ids(&self.walk(token, n, View::Current))
    }

    /// Where a write of `token` goes: its current owners and the future ones that are not
    /// current yet.
    pub fn write_set(&self, token: Token, n: usize) -> WriteSet {
        let natural = self.walk(token, n, View::Current);
        let future = self.walk(token, n, View::Future);
        let pending: Vec<u32> = future.into_iter().filter(|node| !natural.contains(node)).collect();
        WriteSet { natural: self.ids(&natural), pending: self.ids(&pending) }
    }

    /// The ring once every join and leave has completed: `Leaving` nodes gone, `Joining` ones
    /// `Normal`. Its `replicas` are the future owners `write_set` uses.
    pub fn future(&self) -> Ring {
        Ring::new(
            self.nodes
                .iter()
                .filter(|node| node.status != NodeStatus::Leaving)
                .map(|node| RingNode { status: NodeStatus::Normal, ..node.clone() }),
        )
    }

    /// The ranges for which `id` is currently one of the `n` replicas, merged where adjacent and
    /// sorted by start. A node that replicates everything gets `[Range::FULL]`.
    pub fn ranges_of(&self, id: NodeId, n: usize) -> Vec<Range> {
        let placement = self.placement(n);
        let (ends, labels): (Vec<Token>, Vec<Option<()>>) = placement
            .segments()
            .map(|(range, natural, _)| (range.end, natural.contains(&id).then_some(())))
            .unzip();
        merge_arcs(&ends, &labels).into_iter().map(|(range, ())| range).collect()
    }

    /// The ranges `id` will replicate in the future ring but does not now: what a joining node
    /// streams in (or a leaving node's successor). Each comes with its current replicas, in
    /// preference order, to stream from; adjacent ranges merge when their sources agree.
    pub fn pending_ranges(&self, id: NodeId, n: usize) -> Vec<(Range, Vec<NodeId>)> {
        let placement = self.placement(n);
        let (ends, labels): (Vec<Token>, Vec<Option<&[NodeId]>>) = placement
            .segments()
            .map(|(range, natural, pending)| (range.end, pending.contains(&id).then_some(natural)))
            .unzip();
        merge_arcs(&ends, &labels)
            .into_iter()
            .map(|(range, sources)| (range, sources.to_vec()))
            .collect()
    }

    /// The fraction of the token space each member currently replicates with `n` replicas
    /// (`n = 1`: primary ownership). Every member is listed, joining ones with 0. The values sum
    /// to `min(n, nodes holding tokens)`.
    pub fn ownership(&self, n: usize) -> BTreeMap<NodeId, f64> {
        let mut owned: Vec<u128> = vec![0; self.nodes.len()];
        let placement = self.placement(n);
        for (range, natural, _) in placement.segments() {
            for id in natural {
                if let Some(index) = self.index_of(*id) {
                    owned[index] += range.width();
                }
            }
        }
        let space = (1u128 << 64) as f64;
        self.nodes.iter().zip(owned).map(|(node, width)| (node.id, width as f64 / space)).collect()
    }

    /// Precomputes the replica and pending lists of every vnode for `n` replicas: the fast path
    /// for per-request placement.
    pub fn placement(&self, n: usize) -> Placement {
        let mut ends: Vec<Token> =
            self.entries.iter().filter(|entry| entry.views != 0).map(|entry| entry.token).collect();
        ends.dedup();
        let mut lists = Vec::with_capacity(ends.len() * n.min(self.nodes.len()));
        let mut bounds = Vec::with_capacity(ends.len() * 3 + 1);
        bounds.push(0);
        let id = |&node: &u32| self.nodes[node as usize].id;
        for &end in &ends {
            let natural = self.walk(end, n, View::Current);
            let future = self.walk(end, n, View::Future);
            // Natural, then pending (future, not natural), then dropping (natural, not future).
            lists.extend(natural.iter().map(id));
            bounds.push(lists.len());
            lists.extend(future.iter().filter(|node| !natural.contains(node)).map(id));
            bounds.push(lists.len());
            lists.extend(natural.iter().filter(|node| !future.contains(node)).map(id));
            bounds.push(lists.len());
        }
        Placement::from_parts(n, ends, bounds, lists)
    }

    /// The vnode entries, for allocation.
    pub(crate) fn entries(&self) -> &[Entry] {
        &self.entries
    }

    pub(crate) fn node_at(&self, index: u32) -> &RingNode {
        &self.nodes[index as usize]
    }

    pub(crate) fn future_bit() -> u8 {
        View::Future.bit()
    }

    fn index_of(&self, id: NodeId) -> Option<usize> {
        self.nodes.binary_search_by_key(&id, |node| node.id).ok()
    }

    fn ids(&self, nodes: &[u32]) -> Vec<NodeId> {
        nodes.iter().map(|&node| self.nodes[node as usize].id).collect()
    }

    /// The zone-aware preference walk (Cassandra `NetworkTopologyStrategy`, one datacenter):
    /// clockwise from the first token `>= token`, take a node whose zone is not used yet and
    /// remember a distinct node of a used zone as skipped; once every zone of the view is used,
    /// take the skipped ones first, in walk order, then any distinct node. Returns node indices.
    fn walk(&self, token: Token, n: usize, view: View) -> Vec<u32> {
        let info = self.views[view as usize];
        let want = n.min(info.nodes);
        let mut out: Vec<u32> = Vec::with_capacity(want);
        if want == 0 {
            return out;
        }
        let bit = view.bit();
        let len = self.entries.len();
        let start = self.entries.partition_point(|entry| entry.token < token);
        let mut skipped: Vec<u32> = Vec::new();
        let mut used_zones: Vec<u32> = Vec::new();
        let mut every_zone_used = false;
        for step in 0..len {
            let entry = self.entries[(start + step) % len];
            if entry.views & bit == 0 || out.contains(&entry.node) || skipped.contains(&entry.node)
            {
                continue;
            }
            if every_zone_used {
                out.push(entry.node);
            } else {
                let zone = self.zone_of[entry.node as usize];
                if used_zones.contains(&zone) {
                    skipped.push(entry.node);
                } else {
                    out.push(entry.node);
                    used_zones.push(zone);
                    if used_zones.len() == info.zones {
                        every_zone_used = true;
                        let room = want - out.len();
                        out.extend(skipped.drain(..).take(room));
                    }
                }
            }
            if out.len() == want {
                return out;
            }
        }
        // Unreachable while `info` is right (every zone of the view is met in one turn); kept so
        // that a wrong count degrades to "fill from skipped" instead of a short list.
        debug_assert!(false, "walk ended with {} of {want} replicas", out.len());
        let room = want - out.len();
        out.extend(skipped.into_iter().take(room));
        out
    }
}

impl PartialEq for Ring {
    /// Rings are equal when built from the same members; everything else is derived from them.
    fn eq(&self, other: &Ring) -> bool {
        self.nodes == other.nodes
    }
}

impl Eq for Ring {}

impl fmt::Debug for Ring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ring")
            .field("digest", &self.digest)
            .field("nodes", &self.nodes.len())
            .field("vnodes", &self.entries.len())
            .finish()
    }
}

fn digest_of(nodes: &[RingNode]) -> String {
    let mut bytes =
        Vec::with_capacity(64 + nodes.iter().map(|n| 64 + 8 * n.tokens.len()).sum::<usize>());
    bytes.extend_from_slice(b"starling-ring/1");
    bytes.extend_from_slice(&(nodes.len() as u64).to_be_bytes());
    for node in nodes {
        node.encode_canonical(&mut bytes);
    }
    let hash = blake3::hash(&bytes);
    hash.as_bytes()[..8].iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u128, tokens: &[Token], zone: Option<&str>, status: NodeStatus) -> RingNode {
        RingNode { id: NodeId(id), tokens: tokens.to_vec(), zone: zone.map(str::to_owned), status }
    }

    fn normal(id: u128, tokens: &[Token]) -> RingNode {
        node(id, tokens, None, NodeStatus::Normal)
    }

    fn ids(v: &[u128]) -> Vec<NodeId> {
        v.iter().copied().map(NodeId).collect()
    }

    #[test]
    fn empty_ring_has_no_owners() {
        let ring = Ring::new([]);
        assert!(ring.is_empty());
        assert!(ring.replicas(5, 3).is_empty());
        assert_eq!(ring.write_set(5, 3), WriteSet::default());
        assert!(ring.ranges_of(NodeId(1), 3).is_empty());
        assert!(ring.ownership(3).is_empty());
        assert_eq!(ring.digest().len(), 16);
    }

    #[test]
    fn key_belongs_to_first_token_at_or_after_it() {
        let ring = Ring::new([normal(1, &[100]), normal(2, &[200]), normal(3, &[300])]);
        assert_eq!(ring.replicas(100, 1), ids(&[1]));
        assert_eq!(ring.replicas(101, 1), ids(&[2]));
        assert_eq!(ring.replicas(300, 1), ids(&[3]));
        assert_eq!(ring.replicas(301, 1), ids(&[1]), "wraps to the smallest token");
        assert_eq!(ring.replicas(0, 2), ids(&[1, 2]));
        assert_eq!(ring.replicas(250, 5), ids(&[3, 1, 2]), "fewer nodes than n");
        assert_eq!(ring.placement(usize::MAX).replicas(250), &ids(&[3, 1, 2])[..]);
    }

    #[test]
    fn duplicate_token_goes_to_lower_id() {
        let ring = Ring::new([normal(2, &[100, 300]), normal(1, &[100])]);
        assert_eq!(ring.replicas(50, 2), ids(&[1, 2]));
        assert_eq!(ring.ranges_of(NodeId(2), 1), vec![Range { start: 100, end: 300 }]);
        // Once 1 leaves, 2 gets the token back in the future ring.
        let ring = Ring::new([normal(2, &[100, 300]), node(1, &[100], None, NodeStatus::Leaving)]);
        assert_eq!(ring.future().replicas(50, 1), ids(&[2]));
        assert_eq!(ring.write_set(50, 1), WriteSet { natural: ids(&[1]), pending: ids(&[2]) });
    }

    #[test]
    fn zones_are_spread_before_nodes_repeat_a_zone() {
        let ring = Ring::new([
            node(1, &[100], Some("a"), NodeStatus::Normal),
            node(2, &[200], Some("a"), NodeStatus::Normal),
            node(3, &[300], Some("b"), NodeStatus::Normal),
            node(4, &[400], Some("b"), NodeStatus::Normal),
        ]);
        // From 100: 1(a) taken, 2(a) skipped, 3(b) taken => all zones used, skipped 2 next.
        assert_eq!(ring.replicas(100, 3), ids(&[1, 3, 2]));
        assert_eq!(ring.replicas(100, 2), ids(&[1, 3]));
    }

    #[test]
    fn digest_covers_status_zone_and_tokens() {
        let base = Ring::new([normal(1, &[1, 2])]);
        let changed = [
            Ring::new([node(1, &[1, 2], None, NodeStatus::Leaving)]),
            Ring::new([node(1, &[1, 2], Some(""), NodeStatus::Normal)]),
            Ring::new([normal(1, &[1, 3])]),
            Ring::new([normal(2, &[1, 2])]),
        ];
        for ring in changed {
            assert_ne!(ring.digest(), base.digest(), "{ring:?}");
        }
        assert_eq!(Ring::new([normal(1, &[2, 1, 2])]).digest(), base.digest());
    }

    #[test]
    fn full_ring_ranges() {
        let ring = Ring::new([normal(1, &[10, 20]), normal(2, &[30])]);
        assert_eq!(ring.ranges_of(NodeId(1), 2), vec![Range::FULL]);
        assert_eq!(ring.ranges_of(NodeId(1), 1), vec![Range { start: 30, end: 20 }]);
        let ownership = ring.ownership(2);
        assert_eq!(ownership[&NodeId(1)], 1.0);
        assert_eq!(ownership[&NodeId(2)], 1.0);
    }
}
