//! Rumour dissemination queue (SWIM §4.1 infection-style dissemination; memberlist's
//! `TransmitLimitedQueue`): each rumour is sent `limit` times, least-sent (then newest) first; a
//! newer rumour about a node replaces the older one. Taking `k` rumours costs O(k log n).

use std::collections::{BTreeSet, HashMap};
use std::hash::BuildHasherDefault;

use crate::message::{Rumor, RUMOR_COST};
use crate::NodeId;

type DetMap<K, V> = HashMap<K, V, BuildHasherDefault<std::collections::hash_map::DefaultHasher>>;

#[derive(Debug, Default)]
pub(crate) struct Broadcasts {
    by_id: DetMap<NodeId, (Rumor, u32, u64)>,
    /// `(times sent, age key, subject)`: the front is what goes out next.
    order: BTreeSet<(u32, u64, NodeId)>,
    pushed: u64,
}

impl Broadcasts {
    pub fn push(&mut self, rumor: Rumor) {
        let id = rumor.subject();
        if let Some((_, sent, age)) = self.by_id.remove(&id) {
            self.order.remove(&(sent, age, id));
        }
        self.pushed += 1;
        // Newest first among equally-sent rumours.
        let age = u64::MAX - self.pushed;
        self.order.insert((0, age, id));
        self.by_id.insert(id, (rumor, 0, age));
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Takes up to `budget` bytes of rumours, counting one transmission each and dropping those
    /// that reached `limit`. A rumour about the receiver is sent too: it is how a node learns it
    /// must refute.
    pub fn take(&mut self, budget: usize, limit: u32) -> Vec<Rumor> {
        let max = budget / RUMOR_COST;
        let keys: Vec<(u32, u64, NodeId)> = self.order.iter().take(max).copied().collect();
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            self.order.remove(&key);
            let (_, age, id) = key;
            let Some((rumor, sent, _)) = self.by_id.get_mut(&id) else { continue };
            *sent += 1;
            out.push(rumor.clone());
            if *sent >= limit {
                self.by_id.remove(&id);
            } else {
                self.order.insert((*sent, age, id));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alive(id: u128, incarnation: u64) -> Rumor {
        Rumor::Alive {
            id: NodeId(id),
            generation: 1,
            incarnation,
            addr: "127.0.0.1:1".parse().expect("addr"),
        }
    }

    #[test]
    fn least_sent_first_newer_replaces_and_limit_drops() {
        let mut b = Broadcasts::default();
        b.push(alive(1, 0));
        b.push(alive(2, 0));
        assert_eq!(b.take(RUMOR_COST, 3), vec![alive(2, 0)]);
        assert_eq!(b.take(RUMOR_COST, 3), vec![alive(1, 0)]);
        b.push(alive(1, 5));
        assert_eq!(b.len(), 2);
        assert_eq!(b.take(10 * RUMOR_COST, 3), vec![alive(1, 5), alive(2, 0)]);
        b.take(10 * RUMOR_COST, 3);
        assert_eq!(b.take(10 * RUMOR_COST, 3), vec![alive(1, 5)]);
        assert!(b.is_empty());
    }
}
