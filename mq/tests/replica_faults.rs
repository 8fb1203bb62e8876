//! Fault sequences against the replica core, each built to break one rule of the protocol
//! (see `mq/ALGORITHM.md`): late and duplicated fetch answers, leaders that lost their epoch to
//! a power loss, empty epochs on the on-disk log, ISR proposals that land late or never,
//! storage failures while cut off from the metadata service. Each test asserts what the
//! protocol promises.

mod common;

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use starling_mq::batch::{encode_batch, NewRecord};
use starling_mq::log::{AppendInfo, LogError, ReadResult};
use starling_mq::mem::{MemLog, ReplicaLog};
use starling_mq::replica::{Acks, FetchAnswer, Msg, Replica, ReplicaConfig};
use starling_mq::{Log, LogConfig};

use common::*;

/// A duplicated (or late) `Diverging` answer must not be applied to the follower's current
/// log: it would cut batches the follower already reported and the high watermark counted,
/// leaving an ISR member without acknowledged writes. Answers echo the fetch they answer.
#[test]
fn a_duplicated_diverging_answer_cuts_nothing_acknowledged() {
    let mut c = Cluster::mem(3, cfg(2));
    c.produce_at(0, "m1", Acks::All).unwrap();
    c.run(Duration::from_millis(50));
    // A writes m2 alone (acks=1) and dies; B leads epoch 2 and commits m3.
    c.cut.insert(0);
    c.produce_at(0, "m2", Acks::Leader).unwrap();
    let a = c.crash(0);
    c.cut.clear();
    c.run(Duration::from_millis(300));
    assert_eq!(c.leader(), Some(1));
    let m3 = c.produce_at(1, "m3", Acks::All).unwrap();
    c.run(Duration::from_millis(50));
    // A returns: B answers its fetch with Diverging, A cuts m2, catches up, rejoins the ISR.
    c.restart(0, a);
    c.run(Duration::from_millis(500));
    assert_eq!(c.state.isr.len(), 3, "{:?}", c.state);
    let m4 = c.produce_at(1, "m4", Acks::All).unwrap();
    c.run(Duration::from_millis(50));
    assert!(c.is_acked(m3) && c.is_acked(m4));
    assert_eq!(c.values(0), vec!["m1", "m3", "m4"]);
    // The network delivers B's old Diverging answer to A a second time.
    let dup = c
        .delivered
        .iter()
        .find(|(f, t, m)| {
            *f == id(1)
                && *t == id(0)
                && matches!(m, Msg::Fetched { answer: FetchAnswer::Diverging { .. }, .. })
        })
        .cloned()
        .expect("B answered A's first fetch with Diverging");
    let now = c.now;
    c.nodes[0].as_mut().unwrap().handle_message(now, dup.0, dup.2);
    // ... and B dies before A fetched again: A (first in ring order, in the ISR) leads.
    c.crash(1);
    c.run(Duration::from_millis(500));
    assert_eq!(c.leader(), Some(0));
    assert_eq!(c.values(0), vec!["m1", "m3", "m4"], "A lost the acknowledged m3 and m4");
}

/// A restarted leader of record whose log no longer holds its epoch (a power loss in periodic
/// mode erased that epoch's batches, hence its checkpoint entry) must not resume the epoch:
/// (epoch, offset) would name two different batches and the last-epoch check would pass on a
/// follower holding the other one. It takes leadership only through a new epoch.
#[test]
fn a_leader_that_lost_its_epoch_to_a_power_loss_does_not_resume_it() {
    let mut c = Cluster::mem(2, cfg(2));
    assert_eq!(c.leader(), Some(0));
    // m1 at offset 0, epoch 1 (acks=1): B fetches it; A has not flushed it yet.
    c.produce_at(0, "m1", Acks::Leader).unwrap();
    assert_eq!(c.values(1), vec!["m1"]);
    // A loses power and restarts before anyone notices.
    let log = c.nodes[0].take().unwrap().log().after_power_loss();
    assert_eq!(log.end_offset(), 0);
    c.nodes[0] = Some(Replica::new(id(0), log, c.cfg.clone(), c.now));
    c.settle();
    assert_eq!(c.leader(), Some(0));
    // Unpatched: A resumed epoch 1 rather than taking epoch 2.
    eprintln!("A leads epoch {}", c.state.leader_epoch);
    // m2 goes to offset 0 with epoch 1 at A; B (holding m1 there, epoch 1) passes the check.
    let m2 = c.produce_at(0, "m2", Acks::All).unwrap();
    c.run(Duration::from_secs(3));
    eprintln!("m2 acknowledged: {}", c.is_acked(m2));
    assert_eq!(
        c.values(0),
        c.values(1),
        "two in-sync replicas differ below the high watermark {}",
        c.nodes[0].as_ref().unwrap().high_watermark()
    );
}

/// A leader that began an epoch and appended nothing, then follows: truncating to its log
/// end must drop the empty epoch's entry, on disk as in memory, or it sends that epoch forever
/// (Diverging, no-op truncation, fetch, Diverging ...) and never catches up.
fn empty_epoch_then_follow<L: ReplicaLog>(logs: Vec<L>) -> (bool, Vec<String>, Vec<String>) {
    let mut c = Cluster::new(logs, cfg(1));
    c.max_rounds = 2_000;
    c.produce_at(0, "m1", Acks::All).unwrap();
    c.run(Duration::from_millis(50));
    // A is cut off and declared dead: B leads epoch 2 and writes nothing.
    c.cut.insert(0);
    c.liveness(0, false);
    c.run(Duration::from_millis(300));
    assert_eq!(c.state.leader, Some(id(1)));
    assert_eq!(c.state.leader_epoch, 2);
    // B is cut off and declared dead too: C leads epoch 3 and writes m2.
    c.cut.insert(1);
    c.liveness(1, false);
    c.run(Duration::from_millis(300));
    assert_eq!(c.state.leader, Some(id(2)));
    c.produce_at(2, "m2", Acks::Leader).unwrap();
    // B returns and follows C.
    c.cut.remove(&1);
    let now = c.now;
    c.nodes[1].as_mut().unwrap().handle_liveness(now, id(0), true);
    c.liveness(1, true);
    let mut settled = true;
    for _ in 0..300 {
        c.now += Duration::from_millis(10);
        let now = c.now;
        for r in c.nodes.iter_mut().flatten() {
            if r.poll_timeout().is_some_and(|t| t <= now) {
                r.handle_timeout(now);
            }
        }
        if !c.try_settle() {
            settled = false;
            break;
        }
    }
    (settled, c.values(1), c.values(2))
}

#[test]
fn a_follower_with_an_empty_epoch_catches_up_memlog() {
    let (settled, b, cc) =
        empty_epoch_then_follow((0..3).map(|_| MemLog::new()).collect::<Vec<_>>());
    assert!(settled);
    assert_eq!(b, cc);
}

#[test]
fn a_follower_with_an_empty_epoch_catches_up_on_disk_log() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let logs: Vec<Log> =
        dirs.iter().map(|d| Log::open(d.path(), LogConfig::default()).unwrap().0).collect();
    let (settled, b, cc) = empty_epoch_then_follow(logs);
    assert!(settled, "B and C exchange Fetch/Diverging without end");
    assert_eq!(b, cc);
}

#[test]
fn log_truncate_to_end_keeps_an_empty_epoch() {
    let d = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(d.path(), LogConfig::default()).unwrap();
    let rec = NewRecord { key: None, value: Some(b"x".to_vec()), headers: vec![], timestamp_ms: 0 };
    log.append_as_leader(&mut encode_batch(&[rec], None).unwrap(), 1, 0).unwrap();
    log.begin_epoch(2).unwrap();
    let mut mem = MemLog::new();
    let rec = NewRecord { key: None, value: Some(b"x".to_vec()), headers: vec![], timestamp_ms: 0 };
    ReplicaLog::append_as_leader(&mut mem, &mut encode_batch(&[rec], None).unwrap(), 1, 0).unwrap();
    mem.begin_epoch(2).unwrap();
    log.truncate_to(1).unwrap();
    mem.truncate_to(1).unwrap();
    assert_eq!(ReplicaLog::latest_epoch(&mem), Some(1));
    assert_eq!(ReplicaLog::latest_epoch(&log), Some(1), "Log keeps epoch 2 with no batch");
}

/// An ISR expansion proposal still in flight must keep counting for the high watermark when the
/// leader makes another proposal at the same version: if the first is applied late, the
/// replica it adds must hold every committed write.
#[test]
fn a_replaced_isr_proposal_that_lands_late_admits_no_replica_missing_committed_writes() {
    let mut c = Cluster::mem(3, cfg(2));
    c.produce_at(0, "m1", Acks::All).unwrap();
    c.run(Duration::from_millis(50));
    let b = c.crash(1);
    c.run(Duration::from_millis(100));
    assert_eq!(c.state.isr, vec![id(0), id(2)]);
    // A's proposals are slow from now on. B returns and catches up: A proposes ISR {A,B,C}.
    c.hold.insert(0);
    c.restart(1, b);
    c.run(Duration::from_millis(50));
    assert_eq!(c.held.len(), 1);
    assert_eq!(c.held[0].1.isr, vec![id(0), id(1), id(2)]);
    // B and C stop fetching for longer than lag_time: A proposes ISR {A} (also slow).
    c.cut.insert(1);
    c.cut.insert(2);
    c.run(Duration::from_millis(2500));
    assert!(c.held.iter().any(|(_, s)| s.isr == vec![id(0)]));
    // C comes back and catches up; B stays away. m2 is committed by {A, C}.
    c.cut.remove(&2);
    c.run(Duration::from_millis(2500));
    let m2 = c.produce_at(0, "m2", Acks::All).unwrap();
    c.run(Duration::from_millis(50));
    // Unpatched, m2 is acknowledged here, by {A, C}.
    let acked = c.is_acked(m2);
    // The first proposal lands now: B is in the ISR without m2.
    c.release(0, 0);
    assert_eq!(c.state.isr, vec![id(0), id(1), id(2)]);
    c.hold.clear();
    // A dies; B, first live ISR member in ring order, leads.
    c.crash(0);
    c.cut.clear();
    c.run(Duration::from_millis(500));
    assert_eq!(c.leader(), Some(1));
    if acked {
        assert_eq!(c.values(1), vec!["m1", "m2"], "the acknowledged m2 is lost");
    }
}

/// A log whose storage can be made to fail.
#[derive(Debug, Clone)]
struct Flaky {
    inner: MemLog,
    fail: Rc<Cell<bool>>,
}

impl ReplicaLog for Flaky {
    fn start_offset(&self) -> i64 {
        self.inner.start_offset()
    }
    fn end_offset(&self) -> i64 {
        self.inner.end_offset()
    }
    fn append_as_leader(&mut self, b: &mut [u8], e: i32, now: i64) -> Result<AppendInfo, LogError> {
        self.inner.append_as_leader(b, e, now)
    }
    fn append_as_follower(&mut self, b: &[u8], now: i64) -> Result<AppendInfo, LogError> {
        self.inner.append_as_follower(b, now)
    }
    fn read(&self, o: i64, m: usize, u: i64) -> Result<ReadResult, LogError> {
        self.inner.read(o, m, u)
    }
    fn truncate_to(&mut self, o: i64) -> Result<i64, LogError> {
        self.inner.truncate_to(o)
    }
    fn reset_to(&mut self, o: i64) -> Result<(), LogError> {
        self.inner.reset_to(o)
    }
    fn begin_epoch(&mut self, e: i32) -> Result<(), LogError> {
        self.inner.begin_epoch(e)
    }
    fn end_offset_for_epoch(&self, e: i32) -> (i32, i64) {
        self.inner.end_offset_for_epoch(e)
    }
    fn latest_epoch(&self) -> Option<i32> {
        self.inner.latest_epoch()
    }
    fn flush(&mut self) -> Result<(), LogError> {
        if self.fail.get() {
            return Err(LogError::Io {
                what: "flush".into(),
                source: std::io::Error::other("disk gone"),
            });
        }
        self.inner.flush()
    }
    type Detached = starling_mq::mem::MemFlush;
    fn flush_detached(&mut self) -> Result<Option<Self::Detached>, LogError> {
        self.inner.flush_detached()
    }
}

/// A leader whose storage fails leaves leadership and the ISR, retrying until the metadata
/// service records it (the failure detector still sees the process alive, so nobody else
/// would take over).
#[test]
fn a_leader_whose_storage_failed_leaves_even_if_its_first_proposal_is_lost() {
    let fail = Rc::new(Cell::new(false));
    let logs: Vec<Flaky> = (0..3)
        .map(|i| Flaky {
            inner: MemLog::new(),
            fail: if i == 0 { fail.clone() } else { Rc::new(Cell::new(false)) },
        })
        .collect();
    let mut c = Cluster::new(logs, ReplicaConfig { flush_each_append: true, ..cfg(2) });
    c.produce_at(0, "m1", Acks::All).unwrap();
    c.run(Duration::from_millis(50));
    // The disk fails while A cannot reach the metadata service.
    fail.set(true);
    c.meta_cut.insert(0);
    assert!(c.produce_at(0, "m2", Acks::All).is_err());
    // Everything heals (A's process lives on with its failed log).
    c.meta_cut.clear();
    c.run(Duration::from_secs(10));
    assert!(c.leader().is_some(), "no leader 10 s after healing: {:?}", c.state);
}

/// Periodic mode: the power loss of one ISR member, the leader, that restarts before the
/// others' failure detector fires must not lose an acknowledged write: told it did not stop
/// cleanly, it steps aside for a live ISR member instead of leading from its shortened log.
#[test]
fn periodic_mode_one_power_loss_of_the_leader_loses_nothing_acknowledged() {
    let mut c = Cluster::mem(2, cfg(2));
    let m1 = c.produce_at(0, "m1", Acks::All).unwrap();
    c.run(Duration::from_millis(50));
    assert!(c.is_acked(m1));
    // B flushed (say); A had not. A loses power and comes back quickly.
    c.nodes[1].as_mut().unwrap().log_mut().flush().unwrap();
    let log = c.nodes[0].take().unwrap().log().after_power_loss();
    let mut a = Replica::new(id(0), log, c.cfg.clone(), c.now);
    // The driver knows the process did not stop cleanly.
    a.mark_unclean_start();
    c.nodes[0] = Some(a);
    c.run(Duration::from_secs(3));
    assert_eq!(c.values(1), vec!["m1"], "B (never lost power) dropped the acknowledged m1");
}

/// An ISR addition whose proposal was lost counts for the high watermark until the state's
/// version moves; if the added replica then dies, the leader moves the version itself (an
/// unchanged proposal), so the high watermark and acks=all produces do not stall while that
/// replica is down.
#[test]
fn a_lost_isr_addition_does_not_stall_the_high_watermark() {
    let mut c = Cluster::mem(3, cfg(2));
    c.produce_at(0, "m1", Acks::All).unwrap();
    c.run(Duration::from_millis(50));
    let b = c.crash(1);
    c.run(Duration::from_millis(100));
    assert_eq!(c.state.isr, vec![id(0), id(2)]);
    // B returns; A's proposal to add it is lost (A briefly cut from the metadata service).
    c.meta_cut.insert(0);
    c.restart(1, b);
    c.run(Duration::from_millis(50));
    c.meta_cut.clear();
    // B dies again right away.
    c.crash(1);
    c.run(Duration::from_millis(500));
    assert_eq!(c.state.isr, vec![id(0), id(2)]);
    let m2 = c.produce_at(0, "m2", Acks::All).unwrap();
    c.run(Duration::from_secs(5));
    c.run(Duration::from_secs(6));
    eprintln!(
        "failed: {:?}; A hw {}; C has {:?}",
        c.failed,
        c.nodes[0].as_ref().unwrap().high_watermark(),
        c.values(2)
    );
    assert!(c.is_acked(m2), "A and C (the whole ISR) have m2, yet it is not acknowledged");
}

/// Three replicas in `always` mode with group commit (flushes deferred to their driver).
fn group_commit_cluster() -> Cluster<MemLog> {
    let mut c = Cluster::mem(3, ReplicaConfig { flush_each_append: true, ..cfg(2) });
    for r in c.nodes.iter_mut().flatten() {
        r.defer_flushes(true);
    }
    c
}

/// Five rounds of the followers flushing what they owe and fetching again; the leader
/// flushes nothing.
fn flush_followers(c: &mut Cluster<MemLog>, leader: usize) {
    for _ in 0..5 {
        let now = c.now;
        for (i, r) in c.nodes.iter_mut().enumerate() {
            if i != leader {
                if let Some(r) = r.as_mut() {
                    r.flush_owed(now);
                }
            }
        }
        c.run(Duration::from_millis(50));
    }
}

/// `always` mode with group commit (flushes deferred to the driver's round): nothing counts
/// before the owed flush, neither an `acks=1` answer, nor the leader's own copy towards the high
/// watermark, nor a follower's copy (its next fetch waits); a power loss before the flush loses
/// only what nobody was told; after it, everything counts and survives a power loss.
#[test]
fn group_commit_counts_nothing_before_the_owed_flush() {
    let mut c = group_commit_cluster();
    let flush_all = |c: &mut Cluster<MemLog>| {
        let now = c.now;
        for r in c.nodes.iter_mut().flatten() {
            r.flush_owed(now);
        }
        c.settle();
    };
    let leader = c.leader().expect("a leader");
    let one = c.produce_at(leader, "one", Acks::Leader).unwrap();
    let all = c.produce_at(leader, "all", Acks::All).unwrap();
    c.run(Duration::from_millis(50));
    assert!(c.acked.is_empty(), "answered before any flush: {:?}", c.acked);
    assert!(c.nodes[leader].as_ref().unwrap().owes_flush());
    assert_eq!(c.nodes[leader].as_ref().unwrap().high_watermark(), 0);
    // Lost before the flush: the leader's log is empty again, and nobody was told.
    let lost = c.nodes[leader].as_ref().unwrap().log().after_power_loss();
    assert_eq!(lost.end_offset(), 0);

    // The followers flush and fetch again: they now hold both records durably, the leader
    // does not, so its own copy still does not count and nothing is answered.
    flush_followers(&mut c, leader);
    assert!(c.acked.is_empty(), "answered before the leader flushed: {:?}", c.acked);
    assert_eq!(c.nodes[leader].as_ref().unwrap().high_watermark(), 0);
    // The leader flushes: both are answered.
    let now = c.now;
    c.nodes[leader].as_mut().unwrap().flush_owed(now);
    c.run(Duration::from_millis(50));
    for _ in 0..3 {
        flush_all(&mut c);
        c.run(Duration::from_millis(50));
    }
    assert!(c.is_acked(one), "acks=1 never answered: {:?}", c.failed);
    assert!(c.is_acked(all), "acks=all never answered: {:?}", c.failed);
    for i in 0..3 {
        let after = c.nodes[i].as_ref().unwrap().log().after_power_loss();
        assert_eq!(after.end_offset(), 2, "replica {i} lost an acknowledged record");
    }
}

/// Group commit on a follower: a follower's fetch tells the leader what it holds, so it waits
/// for the follower's owed flush; until then the follower's copy does not count (a power loss
/// would take it), even with the leader's own copy durable.
#[test]
fn group_commit_a_follower_reports_only_what_it_flushed() {
    let mut c = group_commit_cluster();
    let leader = c.leader().expect("a leader");
    let all = c.produce_at(leader, "all", Acks::All).unwrap();
    for _ in 0..5 {
        let now = c.now;
        c.nodes[leader].as_mut().unwrap().flush_owed(now);
        c.run(Duration::from_millis(50));
    }
    for (i, r) in c.nodes.iter().enumerate() {
        if i != leader {
            let r = r.as_ref().unwrap();
            assert_eq!(r.log().end_offset(), 1, "follower {i} did not fetch the record");
            assert!(r.owes_flush(), "follower {i}");
        }
    }
    assert!(!c.is_acked(all), "acknowledged while only the leader's copy was durable");
    assert_eq!(c.nodes[leader].as_ref().unwrap().high_watermark(), 0);
    let now = c.now;
    for r in c.nodes.iter_mut().flatten() {
        r.flush_owed(now);
    }
    c.run(Duration::from_millis(100));
    assert!(c.is_acked(all), "never acknowledged: {:?}", c.failed);
}

/// Group commit with the disk's wait off the replica's task (a detached flush): appends made
/// while it is in flight are not covered by it. When it completes, only what it covered
/// counts (an `acks=1` answer, the leader's copy towards the high watermark); a power loss
/// while it is in flight keeps none of it.
#[test]
fn a_detached_flush_counts_only_what_it_covered() {
    let mut c = group_commit_cluster();
    let leader = c.leader().expect("a leader");
    let first = c.produce_at(leader, "first", Acks::Leader).unwrap();
    let all = c.produce_at(leader, "all", Acks::All).unwrap();
    let now = c.now;
    let flush = c.nodes[leader].as_mut().unwrap().start_flush(now).expect("a flush to make");
    let r = c.nodes[leader].as_mut().unwrap();
    assert!(r.flush_in_flight());
    assert!(r.start_flush(now).is_none(), "a second flush while one is in flight");
    // Appended while the flush is in flight: not covered by it.
    let late = c.produce_at(leader, "late", Acks::Leader).unwrap();
    // The followers fetch and flush everything meanwhile.
    flush_followers(&mut c, leader);
    assert!(c.acked.is_empty(), "answered before the leader's flush completed: {:?}", c.acked);
    let r = c.nodes[leader].as_ref().unwrap();
    assert_eq!(r.high_watermark(), 0);
    assert_eq!(r.log().after_power_loss().end_offset(), 0, "lost in flight");
    // The flush completes: it covered `first` and `all`, not `late`.
    let now = c.now;
    let r = c.nodes[leader].as_mut().unwrap();
    r.log_mut().complete_flush(flush);
    r.finish_flush(now, Ok(()));
    c.settle();
    c.run(Duration::from_millis(50));
    assert!(c.is_acked(first) && c.is_acked(all), "{:?} {:?}", c.acked, c.failed);
    assert!(!c.is_acked(late), "answered though no completed flush covered it");
    let r = c.nodes[leader].as_ref().unwrap();
    assert_eq!(r.high_watermark(), 2, "the high watermark counts the leader's unflushed copy");
    assert!(r.owes_flush());
    assert_eq!(r.log().after_power_loss().end_offset(), 2);
    // The next flush covers `late`.
    let now = c.now;
    let r = c.nodes[leader].as_mut().unwrap();
    let flush = r.start_flush(now).expect("`late` is owed");
    r.log_mut().complete_flush(flush);
    r.finish_flush(now, Ok(()));
    c.settle();
    assert!(c.is_acked(late));
    assert!(!c.nodes[leader].as_ref().unwrap().owes_flush());
}

/// A detached flush that fails fails the log as a flush on the task does: the `acks=1`
/// answers that waited for it get an unknown outcome, and the replica leaves leadership.
#[test]
fn a_failed_detached_flush_answers_unknown_and_the_leader_steps_aside() {
    let mut c = group_commit_cluster();
    let leader = c.leader().expect("a leader");
    let one = c.produce_at(leader, "one", Acks::Leader).unwrap();
    let now = c.now;
    let r = c.nodes[leader].as_mut().unwrap();
    let _flush = r.start_flush(now).expect("a flush to make");
    let failure = LogError::Io { what: "fsync".into(), source: std::io::Error::other("EIO") };
    r.finish_flush(now, Err(failure));
    c.settle();
    assert!(!c.is_acked(one));
    let (_, e) = c.failed.iter().find(|f| f.0 == one).expect("an answer for the write");
    assert!(e.outcome_unknown(), "{e:?}");
    assert_ne!(c.nodes[leader].as_ref().unwrap().role(), starling_mq::replica::Role::Leader);
}

/// The simulator's in-memory log: a flush in flight covers what was appended when it started,
/// nothing a truncation cut meanwhile, and nothing appended after the cut.
#[test]
fn a_mem_log_flush_in_flight_covers_nothing_cut_while_it_ran() {
    let mut log = MemLog::new();
    for v in ["a", "b", "c"] {
        log.append_as_leader(&mut batch_of(v, None), 1, 0).unwrap();
    }
    let flush = log.flush_detached().unwrap().expect("three records to flush");
    assert_eq!(log.after_power_loss().end_offset(), 0);
    log.truncate_to(1).unwrap();
    log.append_as_leader(&mut batch_of("d", None), 2, 0).unwrap();
    log.complete_flush(flush);
    assert_eq!(log.after_power_loss().end_offset(), 1);
    assert!(log.flush_detached().unwrap().is_some(), "d is still owed");
}
