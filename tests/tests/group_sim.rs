//! Kafka's consumer-group protocol, coordinator side, in the simulator: random runs with consumer
//! crashes, pauses past the session timeout, leaves, coordinator crashes, partitions, loss and
//! reordering, checked for partitions assigned twice in a generation, commits from members that
//! do not hold the partition, records committed twice or skipped, and groups that never settle.

use starling_tests::kgroup::{group_run, group_run_with};
use starling_tests::sim::seed_from_env;

#[test]
fn random_runs_commit_every_record_exactly_once() {
    let first = seed_from_env(0);
    let (mut records, mut generations, mut refused) = (0, 0, 0);
    for seed in first..first + 60 {
        let r = group_run(seed, 30);
        assert!(r.violations.is_empty(), "seed {seed}: {r:#?}");
        records += r.records;
        generations += r.generations;
        refused += r.commits_refused;
    }
    // The runs must exercise what they check: records committed, rebalances, fenced commits.
    assert!(records > 10_000, "only {records} records in 60 runs");
    assert!(generations > 300, "only {generations} generations in 60 runs");
    assert!(refused > 20, "only {refused} commits refused in 60 runs");
}

/// Two coordinators at once (ring views that disagree): each one's claim on the group's record
/// fences the other, so no commit moves an offset back or skips a record.
#[test]
fn two_coordinators_at_once_never_commit_a_record_twice() {
    let first = seed_from_env(0);
    let (mut records, mut fenced) = (0, 0);
    for seed in first..first + 40 {
        let r = group_run_with(seed, 30, true);
        assert!(r.violations.is_empty(), "seed {seed}: {r:#?}");
        records += r.records;
        fenced += r.fenced;
    }
    assert!(records > 5_000, "only {records} records in 40 runs");
    assert!(fenced > 20, "only {fenced} offsets calls fenced in 40 runs: the split never bit");
}
