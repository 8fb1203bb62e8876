//! Rumour dissemination queue (SWIM §4.1 infection-style dissemination; memberlist's
//! `TransmitLimitedQueue`): each rumour is sent `limit` times, least-sent first; a newer rumour
//! about a node replaces the older one.

use std::collections::HashMap;

use crate::message::{Rumor, RUMOR_COST};
use crate::NodeId;

#[derive(Debug, Default)]
pub(crate) struct Broadcasts {
    queue: HashMap<NodeId, (Rumor, u32)>,
}

impl Broadcasts {
    pub fn push(&mut self, rumor: Rumor) {
        self.queue.insert(rumor.subject(), (rumor, 0));
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Takes up to `budget` bytes of rumours, least-transmitted first, counting one
    /// transmission each and dropping those that reached `limit`. `skip` is the receiver: a
    /// rumour about the receiver is still sent (it is how a node learns it must refute).
    pub fn take(&mut self, budget: usize, limit: u32) -> Vec<Rumor> {
        let max = budget / RUMOR_COST;
        if max == 0 || self.queue.is_empty() {
            return Vec::new();
        }
        let mut picked: Vec<(u32, NodeId)> =
            self.queue.iter().map(|(id, (_, n))| (*n, *id)).collect();
        if picked.len() > max {
            picked.select_nth_unstable(max - 1);
            picked.truncate(max);
        }
        let mut out = Vec::with_capacity(picked.len());
        for (_, id) in picked {
            if let Some((rumor, sent)) = self.queue.get_mut(&id) {
                *sent += 1;
                out.push(rumor.clone());
                if *sent >= limit {
                    self.queue.remove(&id);
                }
            }
        }
        out
    }
}
