//! Versioned per-node application state (Scuttlebutt).
//!
//! Each node owns one [`NodeState`]: a map of keys to values, every entry stamped with a version
//! from the owner's counter. Only the owner writes it; everyone else holds a copy that is complete
//! up to `max_version` (the watermark invariant): a copy at watermark `v` has every entry the
//! owner had written with version `<= v` and not since overwritten. Deltas therefore always carry
//! entries in ascending version order, so a delta cut short by the message bound still leaves a
//! valid watermark.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Reserved keys every node publishes.
pub mod keys {
    /// Lifecycle status: `joining`, `normal`, `leaving`, `left`.
    pub const STATUS: &str = "status";
    /// The node's SWIM incarnation, so refutations also travel by push-pull.
    pub const INCARNATION: &str = "inc";
    /// The digest of the membership view this node holds (see [`crate::Gossip::view_digest`]).
    pub const DIGEST: &str = "digest";
    /// Failure zone (rack / availability zone).
    pub const ZONE: &str = "zone";
}

/// One versioned value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub value: String,
    pub version: u64,
}

/// The state a node owns, as known locally.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeState {
    pub(crate) entries: BTreeMap<String, Entry>,
    pub(crate) max_version: u64,
}

impl NodeState {
    /// Highest version known; every entry up to it is present.
    pub fn max_version(&self) -> u64 {
        self.max_version
    }

    /// Value of `key`, if known.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries.get(key).map(|e| e.value.as_str())
    }

    /// All entries, by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Entry)> {
        self.entries.iter().map(|(k, e)| (k.as_str(), e))
    }

    /// Owner-side write: bumps the version counter. Returns the new version.
    pub(crate) fn set_local(&mut self, key: &str, value: String) -> u64 {
        self.max_version += 1;
        self.entries.insert(key.to_owned(), Entry { value, version: self.max_version });
        self.max_version
    }

    /// Entries newer than `after`, oldest first, as long as they fit in `budget` bytes (at least
    /// one entry is always taken if `budget` allows any, so progress is guaranteed).
    pub(crate) fn entries_after(&self, after: u64, budget: usize) -> (Vec<(String, Entry)>, usize) {
        let mut newer: Vec<(&String, &Entry)> =
            self.entries.iter().filter(|(_, e)| e.version > after).collect();
        newer.sort_by_key(|(_, e)| e.version);
        let mut used = 0;
        let mut out = Vec::with_capacity(newer.len());
        for (k, e) in newer {
            let cost = entry_cost(k, &e.value);
            if used + cost > budget {
                break;
            }
            used += cost;
            out.push((k.clone(), e.clone()));
        }
        (out, used)
    }

    /// Replica-side merge of a delta computed against watermark `from` (entries in ascending
    /// versions). Returns the keys whose value changed, or `None` if the delta would leave a gap
    /// (it starts above our watermark), in which case nothing is applied.
    pub(crate) fn apply(
        &mut self,
        from: u64,
        entries: Vec<(String, Entry)>,
    ) -> Option<Vec<String>> {
        if from > self.max_version {
            return None;
        }
        let mut changed = Vec::new();
        for (k, e) in entries {
            // Entries at or below the watermark are already known (or superseded): skip, so a
            // duplicated or reordered delta can never move a value backwards.
            if e.version <= self.max_version {
                continue;
            }
            self.max_version = e.version;
            let newer = self.entries.get(&k).is_none_or(|old| old.version < e.version);
            if newer {
                if self.entries.get(&k).map(|o| &o.value) != Some(&e.value) {
                    changed.push(k.clone());
                }
                self.entries.insert(k, e);
            }
        }
        Some(changed)
    }
}

/// Approximate encoded size of one entry (msgpack framing is a few bytes per field).
pub(crate) fn entry_cost(key: &str, value: &str) -> usize {
    key.len() + value.len() + 16
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// One step of a run: the owner writes, a delta is cut (from the owner's state or from a
    /// replica's copy, as relays do), or a cut delta is delivered (again: duplicates).
    #[derive(Clone, Debug)]
    enum Step {
        Write {
            key: u8,
            value: u8,
        },
        /// Owner -> replica 0, from a watermark in `0..=owner max`, cut to `budget` bytes.
        CutFromOwner {
            from: prop::sample::Index,
            budget: usize,
        },
        /// Replica 0 -> replica 1 (second-hand state).
        CutFromReplica {
            from: prop::sample::Index,
            budget: usize,
        },
        Deliver {
            which: prop::sample::Index,
        },
    }

    type InFlight = (usize, u64, Vec<(String, Entry)>);

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            3 => (0u8..4, any::<u8>()).prop_map(|(key, value)| Step::Write { key, value }),
            2 => (any::<prop::sample::Index>(), 0usize..80)
                .prop_map(|(from, budget)| Step::CutFromOwner { from, budget }),
            1 => (any::<prop::sample::Index>(), 0usize..80)
                .prop_map(|(from, budget)| Step::CutFromReplica { from, budget }),
            4 => any::<prop::sample::Index>().prop_map(|which| Step::Deliver { which }),
        ]
    }

    /// The watermark invariant of `copy` against the owner's current state and its history of
    /// writes (`written[v]` = the `(key, value)` written at version `v`).
    fn check_watermark(
        copy: &NodeState,
        owner: &NodeState,
        written: &[(String, String)],
    ) -> Result<(), TestCaseError> {
        let w = copy.max_version();
        // Complete up to the watermark: every entry the owner holds at or below it is there.
        for (k, e) in owner.iter() {
            if e.version <= w {
                prop_assert_eq!(
                    copy.entries.get(k),
                    Some(e),
                    "gap: {} missing at watermark {}",
                    k,
                    w
                );
            }
        }
        // Nothing invented, nothing above the watermark, nothing newer than the owner has.
        for (k, e) in copy.iter() {
            prop_assert!(e.version >= 1 && e.version <= w, "{k}@{} above watermark {w}", e.version);
            let (wk, wv) = &written[e.version as usize];
            prop_assert_eq!((wk.as_str(), wv.as_str()), (k, e.value.as_str()));
            let cur = owner.entries.get(k).map_or(0, |o| o.version);
            prop_assert!(cur >= e.version);
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// Deltas applied in any order, any number of times, cut short anywhere, first- or
        /// second-hand: the watermark never goes down and never covers a gap.
        #[test]
        fn watermark_is_monotone_and_gap_free(steps in prop::collection::vec(step(), 1..80)) {
            let mut owner = NodeState::default();
            let mut written = vec![(String::new(), String::new())]; // version 0: nothing
            let mut replicas = [NodeState::default(), NodeState::default()];
            // (to which replica, from watermark, entries)
            let mut in_flight: Vec<InFlight> = Vec::new();
            for s in steps {
                match s {
                    Step::Write { key, value } => {
                        let (k, v) = (format!("k{key}"), value.to_string());
                        let ver = owner.set_local(&k, v.clone());
                        prop_assert_eq!(ver as usize, written.len());
                        written.push((k, v));
                    }
                    Step::CutFromOwner { from, budget } => {
                        let from = from.index(owner.max_version() as usize + 1) as u64;
                        let (entries, _) = owner.entries_after(from, budget);
                        in_flight.push((0, from, entries));
                    }
                    Step::CutFromReplica { from, budget } => {
                        let src = &replicas[0];
                        let from = from.index(src.max_version() as usize + 1) as u64;
                        let (entries, _) = src.entries_after(from, budget);
                        in_flight.push((1, from, entries));
                    }
                    Step::Deliver { which } => {
                        if in_flight.is_empty() {
                            continue;
                        }
                        let (to, from, entries) = in_flight[which.index(in_flight.len())].clone();
                        // Cut deltas come oldest first.
                        prop_assert!(entries.windows(2).all(|p| p[0].1.version < p[1].1.version));
                        let r = &mut replicas[to];
                        let before = r.clone();
                        match r.apply(from, entries) {
                            None => {
                                prop_assert!(from > before.max_version());
                                prop_assert_eq!(&*r, &before, "refused delta changed state");
                            }
                            Some(_) => prop_assert!(r.max_version() >= before.max_version()),
                        }
                    }
                }
                for r in &replicas {
                    check_watermark(r, &owner, &written)?;
                }
            }
            // Whatever happened, one full delta from the owner brings a replica level with it.
            for r in replicas.iter_mut() {
                let (entries, _) = owner.entries_after(r.max_version(), usize::MAX);
                prop_assert!(r.apply(r.max_version(), entries).is_some());
                prop_assert_eq!(&*r, &owner);
            }
        }
    }

    #[test]
    fn budget_takes_a_prefix_in_version_order() {
        let mut s = NodeState::default();
        s.set_local("b", "1".into()); // v1, overwritten at v3
        s.set_local("a", "2".into()); // v2
        s.set_local("b", "3".into()); // v3
        let cost = entry_cost("a", "2");
        let (all, used) = s.entries_after(0, usize::MAX);
        assert_eq!(all.iter().map(|(_, e)| e.version).collect::<Vec<_>>(), vec![2, 3]);
        assert_eq!(used, 2 * cost);
        let (one, used) = s.entries_after(0, cost);
        assert_eq!((one.len(), used), (1, cost));
        assert_eq!(one[0].0, "a");
        assert!(s.entries_after(0, cost - 1).0.is_empty());
        assert!(s.entries_after(3, usize::MAX).0.is_empty());
    }
}
