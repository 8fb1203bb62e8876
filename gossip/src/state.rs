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
