//! How a leader brings a learner's history in line with its own: DIFF, TRUNC+DIFF or SNAP.
//!
//! The decision is made on **epoch-qualified history**, never on a bare zxid comparison. A
//! learner describes its log epoch by epoch ([`EpochSpan`]) and names its snapshot. Two servers
//! that both hold a zxid of epoch `e` got it from the one leader of epoch `e` (a server accepts
//! an epoch from one leader only), and ZAB's sync makes their histories before it equal; so the
//! **last common entry** is the highest zxid that both logs hold, found epoch by epoch. Entries
//! of the learner after it are not in the leader's history: they are truncated (they were never
//! committed, since the leader holds every committed transaction). Comparing bare zxids instead
//! is how ZooKeeper kept phantom transactions (ZOOKEEPER-1154, -2832): a learner whose last zxid
//! `2:1` is higher than the leader's `1:2` got a DIFF, keeping `2:1`, or a TRUNC to `1:2`, which
//! it never had.

use crate::message::EpochSpan;
use crate::Zxid;

/// What a leader sends a learner before NEWLEADER.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// The learner's history is a prefix of the leader's: send the entries after `after`.
    Diff { after: Zxid },
    /// The learner holds entries after `to` that the leader's history lacks: it drops them,
    /// then gets the entries after `to`.
    Trunc { to: Zxid },
    /// The leader's log no longer reaches back to the last common entry: send the snapshot,
    /// then the entries after it.
    Snap,
    /// The learner's snapshot is ahead of the leader's history: committed transactions the
    /// leader lacks. The leader must not sync it (it would erase them).
    LearnerAhead,
}

/// What a learner says of its history ([`crate::ToLeader::AckEpoch`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    pub spans: Vec<EpochSpan>,
    pub snapshot: Zxid,
    pub last: Zxid,
}

/// The spans of a log (zxids ascending), oldest first.
pub fn spans(log: impl IntoIterator<Item = Zxid>) -> Vec<EpochSpan> {
    let mut out: Vec<EpochSpan> = Vec::new();
    for z in log {
        match out.last_mut() {
            Some(s) if s.epoch == z.epoch() => s.last = z.counter(),
            _ => out.push(EpochSpan { epoch: z.epoch(), first: z.counter(), last: z.counter() }),
        }
    }
    out
}

/// The plan for a learner, given the leader's log (`log`, zxids ascending), the zxid its log
/// starts after (`base`: older history is only in its snapshot) and its last zxid.
pub fn plan(log: &[Zxid], base: Zxid, leader_last: Zxid, learner: &Summary) -> Plan {
    if learner.snapshot > leader_last {
        return Plan::LearnerAhead;
    }
    // A snapshot holds committed transactions only: the leader's history has them all.
    let mut common = learner.snapshot;
    for s in learner.spans.iter().rev() {
        let lo = log.partition_point(|z| *z < Zxid::new(s.epoch, 0));
        let hi = log.partition_point(|z| z.epoch() <= s.epoch);
        let (Some(first), Some(last)) = (log[lo..hi].first(), log[lo..hi].last()) else {
            continue;
        };
        let start = s.first.max(first.counter());
        let end = s.last.min(last.counter());
        if start <= end {
            common = common.max(Zxid::new(s.epoch, end));
            break;
        }
    }
    if common < base {
        Plan::Snap
    } else if common < learner.last {
        Plan::Trunc { to: common }
    } else {
        Plan::Diff { after: common }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn z(e: u32, c: u32) -> Zxid {
        Zxid::new(e, c)
    }

    fn learner(log: &[Zxid], snapshot: Zxid) -> Summary {
        Summary {
            spans: spans(log.iter().copied()),
            snapshot,
            last: log.last().copied().unwrap_or(snapshot).max(snapshot),
        }
    }

    fn leader_plan(log: &[Zxid], base: Zxid, l: &Summary) -> Plan {
        plan(log, base, log.last().copied().unwrap_or(base), l)
    }

    #[test]
    fn an_uncommitted_higher_zxid_is_truncated_zookeeper_1154() {
        let leader = [z(1, 1), z(1, 2), z(2, 1)];
        let l = learner(&[z(1, 1), z(1, 2), z(1, 3)], Zxid::ZERO);
        assert_eq!(leader_plan(&leader, Zxid::ZERO, &l), Plan::Trunc { to: z(1, 2) });
    }

    #[test]
    fn an_uncommitted_txn_past_a_lower_leader_is_truncated_zookeeper_2832() {
        let leader = [z(1, 1), z(1, 2)];
        let l = learner(&[z(1, 1), z(1, 2), z(1, 3)], Zxid::ZERO);
        assert_eq!(leader_plan(&leader, Zxid::ZERO, &l), Plan::Trunc { to: z(1, 2) });
    }

    #[test]
    fn a_higher_epoch_the_leader_never_had_is_not_mistaken_for_common_history() {
        // The learner's 2:1 is above the leader's last zxid 1:2, but the learner never had 1:2:
        // the last common entry is 1:1.
        let leader = [z(1, 1), z(1, 2)];
        let l = learner(&[z(1, 1), z(2, 1)], Zxid::ZERO);
        assert_eq!(leader_plan(&leader, Zxid::ZERO, &l), Plan::Trunc { to: z(1, 1) });
    }

    #[test]
    fn a_learner_behind_gets_a_diff() {
        let leader = [z(1, 1), z(1, 2), z(2, 1)];
        assert_eq!(
            leader_plan(&leader, Zxid::ZERO, &learner(&[z(1, 1)], Zxid::ZERO)),
            Plan::Diff { after: z(1, 1) }
        );
        assert_eq!(
            leader_plan(&leader, Zxid::ZERO, &learner(&[], Zxid::ZERO)),
            Plan::Diff { after: Zxid::ZERO }
        );
        assert_eq!(
            leader_plan(&leader, Zxid::ZERO, &learner(&leader, Zxid::ZERO)),
            Plan::Diff { after: z(2, 1) }
        );
    }

    #[test]
    fn a_learner_older_than_the_leaders_log_gets_a_snapshot() {
        let leader = [z(1, 6), z(1, 7)];
        let l = learner(&[z(1, 1), z(1, 2), z(1, 3)], Zxid::ZERO);
        assert_eq!(leader_plan(&leader, z(1, 5), &l), Plan::Snap);
        // Entries only in the leader's snapshot cannot be compared: a learner whose log is
        // older than the leader's gets the snapshot even if its entries might be common.
        let l = learner(&[z(1, 4)], Zxid::ZERO);
        assert_eq!(leader_plan(&leader, z(1, 5), &l), Plan::Snap);
    }

    #[test]
    fn a_learner_snapshot_counts_as_common_history() {
        let leader = [z(1, 4), z(1, 5), z(1, 6)];
        assert_eq!(
            leader_plan(&leader, z(1, 3), &learner(&[], z(1, 5))),
            Plan::Diff { after: z(1, 5) }
        );
        // Its log past the snapshot, from an abandoned epoch, goes.
        assert_eq!(
            leader_plan(&leader, z(1, 3), &learner(&[z(1, 5), z(2, 1)], z(1, 5))),
            Plan::Trunc { to: z(1, 5) }
        );
    }

    #[test]
    fn a_learner_with_a_snapshot_past_the_leader_is_refused() {
        let leader = [z(1, 1)];
        assert_eq!(leader_plan(&leader, Zxid::ZERO, &learner(&[], z(1, 3))), Plan::LearnerAhead);
    }
}
