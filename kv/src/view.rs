//! What the KV layer knows of the cluster: the ring computed from gossip, where each member is
//! reached, and which members are down. The gossip driver rebuilds it when membership or a
//! member's ring state changes and publishes it on a `watch` channel; requests read the latest.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use starling_gossip::state::keys as gossip_keys;
use starling_gossip::{Gossip, MemberState};
use starling_ring::{NodeId, NodeStatus, Placement, Ring, RingNode, Token};

/// Gossip keys the ring is built from.
pub mod keys {
    /// This node's tokens: comma-separated hex.
    pub const TOKENS: &str = "tokens";
    /// The digest of the ring this node computed (ring agreement is part of `converged`).
    pub const RING: &str = "ring";
    /// Nodes this node is removing (`starling removenode`): comma-separated ids. Every node
    /// treats them as leaving, so their ranges' new owners get the writes while they stream.
    pub const REMOVING: &str = "removing";
    /// Nodes removed for good, comma-separated ids: every node publishes every removal it has
    /// heard of (and keeps it on disk), so the fact outlives the node that removed them. Removed
    /// nodes are off the ring and count as left, even if one comes back.
    pub const REMOVED: &str = "removed";
    /// `1` once this node's KV layer coordinates (after a restart: once its ring is whole again)
    /// and its gossip has converged: its ring is the cluster's, and a restarted node that
    /// computes the same ring may trust it ([`RingView::vouched`]).
    pub const KV_READY: &str = "kv-ready";
}

/// One immutable snapshot.
#[derive(Debug, Clone)]
pub struct RingView {
    pub me: NodeId,
    pub rf: usize,
    pub ring: Arc<Ring>,
    pub placement: Arc<Placement>,
    pub addrs: HashMap<NodeId, SocketAddr>,
    /// Members gossip reports `down`, with when this node first saw them down.
    pub down: HashMap<NodeId, Instant>,
    /// Members that left for good (their hints are dropped), removed ones included.
    pub left: HashSet<NodeId>,
    /// Members removed with `starling removenode`, as any member publishes them.
    pub removed: HashSet<NodeId>,
    /// Members a `starling removenode` is removing (announced dead, on the ring as leaving
    /// until their ranges are copied back): a restarted node's recovery does not wait to
    /// compare with them.
    pub removing: HashSet<NodeId>,
    /// Fraction of the keyspace this node replicates (computed when the ring changes).
    pub my_ownership: f64,
    /// An up member whose KV layer is ready ([`keys::KV_READY`]) computed this same ring: it is
    /// the cluster's ring, whole, even if nodes this one knew before are gone from it (they
    /// left, and their departure was forgotten, while this node was down).
    pub vouched: bool,
}

/// A member as the view builder sees it.
#[derive(Debug, Clone)]
pub struct MemberRingState {
    pub id: NodeId,
    pub addr: SocketAddr,
    /// `alive`/`suspect` (false) or `down` (true).
    pub down: bool,
    pub left: bool,
    pub tokens: Option<String>,
    pub status: Option<String>,
    pub zone: Option<String>,
    /// Its [`keys::REMOVING`] and [`keys::REMOVED`].
    pub removing: Option<String>,
    pub removed: Option<String>,
    /// The digest of the ring it computed ([`keys::RING`]).
    pub ring_digest: Option<String>,
    /// Its KV layer is ready ([`keys::KV_READY`]).
    pub kv_ready: bool,
}

impl RingView {
    /// An empty view: no ring yet.
    pub fn empty(me: NodeId, rf: usize) -> Self {
        let ring = Ring::new([]);
        let placement = Arc::new(ring.placement(rf));
        RingView {
            me,
            rf,
            ring: Arc::new(ring),
            placement,
            addrs: HashMap::new(),
            down: HashMap::new(),
            left: HashSet::new(),
            removed: HashSet::new(),
            removing: HashSet::new(),
            my_ownership: 0.0,
            vouched: false,
        }
    }

    /// Builds the view from member states (this node included, with `down: false`). Members that
    /// left, or have not published tokens yet, are not on the ring. `now` dates members newly seen
    /// down.
    pub fn build(
        me: NodeId,
        rf: usize,
        members: &[MemberRingState],
        previous: Option<&RingView>,
        now: Instant,
    ) -> RingView {
        let mut nodes = Vec::new();
        let mut addrs = HashMap::new();
        let mut down = HashMap::new();
        let mut left = HashSet::new();
        let ids_of = |f: fn(&MemberRingState) -> &Option<String>| -> HashSet<NodeId> {
            members.iter().filter_map(|m| f(m).as_deref()).flat_map(parse_ids).collect()
        };
        let removed = ids_of(|m| &m.removed);
        let removing: HashSet<NodeId> =
            ids_of(|m| &m.removing).into_iter().filter(|id| !removed.contains(id)).collect();
        for m in members {
            addrs.insert(m.id, m.addr);
            if m.left || removed.contains(&m.id) {
                left.insert(m.id);
                continue;
            }
            if m.down {
                let since = previous.and_then(|p| p.down.get(&m.id).copied()).unwrap_or(now);
                down.insert(m.id, since);
            }
            let Some(tokens) = m.tokens.as_deref().and_then(parse_tokens) else {
                // A member restarting shows a new generation before its state arrives: until its
                // tokens are gossiped again it keeps its place (dropping it would move its ranges
                // to nodes that do not hold them, and send its writes there without a hint).
                // A node being removed is leaving whatever its place was.
                if let Some(kept) = previous.and_then(|p| p.ring.node(m.id)) {
                    let mut kept = kept.clone();
                    if removing.contains(&m.id) {
                        kept.status = NodeStatus::Leaving;
                    }
                    nodes.push(kept);
                }
                continue;
            };
            let status = match m.status.as_deref() {
                Some("left") => continue,
                _ if removing.contains(&m.id) => NodeStatus::Leaving,
                Some("joining") => NodeStatus::Joining,
                Some("leaving") => NodeStatus::Leaving,
                _ => NodeStatus::Normal,
            };
            nodes.push(RingNode { id: m.id, tokens, zone: m.zone.clone(), status });
        }
        let ring = Ring::new(nodes);
        let digest = ring.digest();
        let vouched = !ring.is_empty()
            && members.iter().any(|m| {
                m.id != me
                    && m.kv_ready
                    && !m.down
                    && !left.contains(&m.id)
                    && m.ring_digest.as_deref() == Some(digest.as_str())
            });
        if let Some(p) = previous {
            if p.ring.digest() == digest {
                return RingView {
                    ring: p.ring.clone(),
                    placement: p.placement.clone(),
                    addrs,
                    down,
                    left,
                    removed,
                    removing,
                    vouched,
                    ..p.clone()
                };
            }
        }
        let placement = Arc::new(ring.placement(rf));
        let my_ownership = ring.ownership(rf).get(&me).copied().unwrap_or(0.0);
        RingView {
            me,
            rf,
            ring: Arc::new(ring),
            placement,
            addrs,
            down,
            left,
            removed,
            removing,
            my_ownership,
            vouched,
        }
    }

    /// Members other than this node that gossip does not report down or left.
    pub fn others_up(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.addrs
            .keys()
            .copied()
            .filter(|id| *id != self.me && !self.down.contains_key(id) && !self.left.contains(id))
    }

    /// The ring's nodes whose id `prefix` names (see [`names`]), as operators type them
    /// (`starling repair --with`, `starling removenode`).
    pub fn ring_nodes_named(&self, prefix: &str) -> Vec<NodeId> {
        self.ring.nodes().map(|n| n.id).filter(|id| names(id, prefix)).collect()
    }

    /// Whether requests should be sent to `id` (this node always; others unless gossip says down).
    pub fn is_up(&self, id: NodeId) -> bool {
        id == self.me || (!self.down.contains_key(&id) && self.addrs.contains_key(&id))
    }

    /// How long `id` has been down at `now` (`None`: not down).
    pub fn down_for(&self, id: NodeId, now: Instant) -> Option<std::time::Duration> {
        self.down.get(&id).map(|since| now.saturating_duration_since(*since))
    }
}

/// Every member's ring-relevant state as `g` knows it, this node included: what
/// [`RingView::build`] takes. One place for `starlingd` and the simulator.
pub fn ring_members(g: &Gossip) -> Vec<MemberRingState> {
    let get = |s: &starling_gossip::NodeState, k: &str| s.get(k).map(str::to_owned);
    let mut out: Vec<MemberRingState> = g
        .members()
        .map(|m| MemberRingState {
            id: m.id,
            addr: m.addr,
            down: m.state == MemberState::Down,
            left: m.state == MemberState::Left
                || m.node_state.get(gossip_keys::STATUS) == Some("left"),
            tokens: get(m.node_state, keys::TOKENS),
            status: get(m.node_state, gossip_keys::STATUS),
            zone: get(m.node_state, gossip_keys::ZONE),
            removing: get(m.node_state, keys::REMOVING),
            removed: get(m.node_state, keys::REMOVED),
            ring_digest: get(m.node_state, keys::RING),
            kv_ready: m.node_state.get(keys::KV_READY) == Some("1"),
        })
        .collect();
    let local = g.local_state();
    out.push(MemberRingState {
        id: g.id(),
        addr: g.addr(),
        down: false,
        left: local.get(gossip_keys::STATUS) == Some("left"),
        tokens: get(local, keys::TOKENS),
        status: get(local, gossip_keys::STATUS),
        zone: get(local, gossip_keys::ZONE),
        removing: get(local, keys::REMOVING),
        removed: get(local, keys::REMOVED),
        ring_digest: get(local, keys::RING),
        kv_ready: local.get(keys::KV_READY) == Some("1"),
    });
    out
}

/// Encodes tokens for gossip.
pub fn format_tokens(tokens: &[Token]) -> String {
    tokens.iter().map(|t| format!("{t:x}")).collect::<Vec<_>>().join(",")
}

/// Whether `prefix` (hex, any case; at least one digit) names `id`: its full id or a prefix of it,
/// such as the 8 digits `starling status` shows.
pub fn names(id: &NodeId, prefix: &str) -> bool {
    !prefix.is_empty() && id.to_string().starts_with(&prefix.to_ascii_lowercase())
}

/// Encodes node ids for gossip ([`keys::REMOVING`], [`keys::REMOVED`]), sorted.
pub fn format_ids<'a>(ids: impl IntoIterator<Item = &'a NodeId>) -> String {
    let mut ids: Vec<&NodeId> = ids.into_iter().collect();
    ids.sort_unstable();
    ids.iter().map(|id| id.to_string()).collect::<Vec<_>>().join(",")
}

/// Decodes gossiped node ids; malformed ones are skipped.
pub fn parse_ids(s: &str) -> Vec<NodeId> {
    s.split(',').filter_map(|id| id.trim().parse().ok()).collect()
}

/// Decodes gossiped tokens; `None` if empty or malformed (the member is then left off the ring).
pub fn parse_tokens(s: &str) -> Option<Vec<Token>> {
    if s.is_empty() {
        return None;
    }
    s.split(',').map(|t| Token::from_str_radix(t, 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_refuse_garbage() {
        let t = vec![0, 1, u64::MAX, 0xdead_beef];
        assert_eq!(parse_tokens(&format_tokens(&t)), Some(t));
        assert_eq!(parse_tokens(""), None);
        assert_eq!(parse_tokens("12,zz"), None);
    }

    fn member(id: u128, removing: &[u128], removed: &[u128]) -> MemberRingState {
        let ids = |l: &[u128]| {
            (!l.is_empty()).then(|| format_ids(&l.iter().map(|i| NodeId(*i)).collect::<Vec<_>>()))
        };
        MemberRingState {
            id: NodeId(id),
            addr: std::net::SocketAddr::from(([127, 0, 0, id as u8], 7000)),
            down: id == 4,
            left: false,
            tokens: Some(format_tokens(&[id as u64 * 1000, id as u64 * 1000 + 7])),
            status: Some("normal".into()),
            zone: None,
            removing: ids(removing),
            removed: ids(removed),
            ring_digest: None,
            kv_ready: false,
        }
    }

    /// A node any member announces as removing is leaving (its ranges have pending replicas);
    /// one any member announces as removed is off the ring and counts as left, whoever said it.
    #[test]
    fn removing_is_leaving_and_removed_is_gone() {
        let now = Instant::now();
        let me = NodeId(1);
        let plain: Vec<_> = (1..=4).map(|i| member(i, &[], &[])).collect();
        let v = RingView::build(me, 3, &plain, None, now);
        assert_eq!(v.ring.nodes().count(), 4);
        let mut removing = plain.clone();
        removing[1] = member(2, &[4], &[]);
        let v = RingView::build(me, 3, &removing, None, now);
        assert_eq!(v.ring.node(NodeId(4)).map(|n| n.status), Some(NodeStatus::Leaving));
        assert!(
            !v.ring.pending_ranges(NodeId(1), 3).is_empty()
                || !v.ring.pending_ranges(NodeId(3), 3).is_empty()
        );
        // A member whose tokens this node no longer has (its state not gossiped again yet)
        // keeps its place, but as leaving once announced removing: otherwise this node's ring
        // differs from the others' and the removal never sees the ring agreed.
        let mut stateless = removing.clone();
        stateless[3].tokens = None;
        let before = RingView::build(me, 3, &plain, None, now);
        let v = RingView::build(me, 3, &stateless, Some(&before), now);
        assert_eq!(v.ring.node(NodeId(4)).map(|n| n.status), Some(NodeStatus::Leaving));
        assert_eq!(
            v.ring.digest(),
            RingView::build(me, 3, &removing, None, now).ring.digest(),
            "the same ring as a node that has the tokens"
        );
        let mut removed = plain.clone();
        removed[2] = member(3, &[], &[4]);
        let v = RingView::build(me, 3, &removed, None, now);
        assert!(v.ring.node(NodeId(4)).is_none());
        assert!(v.left.contains(&NodeId(4)) && v.removed.contains(&NodeId(4)));
        assert_eq!(v.ring.nodes().count(), 3);
    }

    /// Only an up member other than this node, ready, with the same ring digest vouches.
    #[test]
    fn a_ring_is_vouched_for_only_by_a_ready_up_member_that_computed_the_same_ring() {
        let now = Instant::now();
        let mut ms: Vec<MemberRingState> = (1..=3).map(|i| member(i, &[], &[])).collect();
        let digest = RingView::build(NodeId(1), 3, &ms, None, now).ring.digest();
        let vouched = |ms: &[MemberRingState]| RingView::build(NodeId(1), 3, ms, None, now).vouched;
        assert!(!vouched(&ms), "nobody ready");
        ms[0].kv_ready = true;
        ms[0].ring_digest = Some(digest.clone());
        assert!(!vouched(&ms), "this node's own word does not count");
        ms[1].kv_ready = true;
        ms[1].ring_digest = Some("other".into());
        assert!(!vouched(&ms), "a different ring");
        ms[1].ring_digest = Some(digest.clone());
        ms[1].down = true;
        assert!(!vouched(&ms), "a member seen down");
        ms[1].down = false;
        assert!(vouched(&ms));
        ms[1].kv_ready = false;
        assert!(!vouched(&ms), "not ready");
    }

    #[test]
    fn a_prefix_names_a_node_in_any_case() {
        let id = NodeId(0xab12 << 112);
        assert!(names(&id, "AB12") && names(&id, "ab1") && names(&id, &id.to_string()));
        assert!(!names(&id, "") && !names(&id, "ab13"));
    }

    #[test]
    fn ids_round_trip_and_skip_garbage() {
        let ids = [NodeId(7), NodeId(u128::MAX), NodeId(1 << 100)];
        let back = parse_ids(&format_ids(&ids));
        assert_eq!(back.len(), 3);
        assert!(ids.iter().all(|id| back.contains(id)));
        assert_eq!(parse_ids(""), Vec::<NodeId>::new());
        assert_eq!(parse_ids(&format!("zz,{}", NodeId(9))), vec![NodeId(9)]);
    }
}
