//! The coordinator's state machines driven by hand: every answer, failure and timer is chosen by
//! the test, so each rule of the protocol is pinned down by one case.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use starling_kv::view::{format_tokens, MemberRingState};
use starling_kv::{Answer, KvConfig, KvError, Outgoing, ReadOp, RingView, Send, WriteOp};
use starling_ring::{token_of, NodeId};
use starling_wire::{Consistency, Record, Version};

/// A view of `n` nodes with ids 1..=n, each with 16 spread tokens; `down` are marked down since
/// `now`.
fn view(me: u128, n: u128, down: &[u128], now: Instant) -> RingView {
    let members: Vec<MemberRingState> = (1..=n)
        .map(|id| {
            let tokens: Vec<u64> = (0..16u64)
                .map(|i| (i * n as u64 + id as u64) * (u64::MAX / (16 * n as u64)))
                .collect();
            MemberRingState {
                id: NodeId(id),
                addr: SocketAddr::from(([127, 0, 0, id as u8], 7000)),
                down: down.contains(&id),
                left: false,
                tokens: Some(format_tokens(&tokens)),
                status: Some("normal".into()),
                zone: None,
                removing: None,
                removed: None,
                ring_digest: None,
                kv_ready: false,
            }
        })
        .collect();
    RingView::build(NodeId(me), 3, &members, None, now)
}

fn record(key: &[u8], ts: u64, value: Option<&[u8]>) -> Record {
    Record {
        key: key.to_vec(),
        version: Version { ts, node: NodeId(1) },
        value: value.map(<[u8]>::to_vec),
    }
}

fn drain<O: starling_kv::Op>(op: &mut O) -> Vec<Outgoing> {
    std::iter::from_fn(|| op.poll_send()).collect()
}

fn cfg() -> KvConfig {
    KvConfig { sloppy_quorum: false, ..KvConfig::default() }
}

#[test]
fn a_quorum_write_answers_at_two_acks_and_hints_the_replica_that_fails_later() {
    let now = Instant::now();
    let v = view(1, 3, &[], now);
    let mut op =
        WriteOp::start(now, &cfg(), &v, Consistency::Quorum, record(b"k", 10, Some(b"x"))).unwrap();
    let sends = drain(&mut op);
    assert_eq!(sends.len(), 3, "one write per replica");
    op.handle_answer(now, sends[0].id, Answer::Stored { newer: None });
    assert!(op.poll_result().is_none(), "one ack is not a quorum");
    op.handle_answer(now, sends[1].id, Answer::Stored { newer: None });
    let w = op.poll_result().expect("decided").expect("ok");
    assert_eq!((w.acked, w.required, w.superseded), (2, 2, None));
    assert!(!op.is_finished(), "the third replica is still awaited");
    op.handle_answer(now, sends[2].id, Answer::Failed);
    let hint = drain(&mut op);
    assert!(
        matches!(&hint[..], [Outgoing { send: Send::Hint { .. }, .. }]),
        "a failed replica gets a hint: {hint:?}"
    );
    op.handle_answer(now, hint[0].id, Answer::Stored { newer: None });
    assert!(op.is_finished());
}

#[test]
fn a_write_that_lost_to_a_newer_version_is_acknowledged_as_superseded() {
    let now = Instant::now();
    let v = view(1, 3, &[], now);
    let mut op =
        WriteOp::start(now, &cfg(), &v, Consistency::Quorum, record(b"k", 10, Some(b"x"))).unwrap();
    let sends = drain(&mut op);
    let newer = Version { ts: 99, node: NodeId(2) };
    op.handle_answer(now, sends[0].id, Answer::Stored { newer: None });
    op.handle_answer(now, sends[1].id, Answer::Stored { newer: Some(newer) });
    let w = op.poll_result().unwrap().unwrap();
    assert_eq!(w.superseded, Some(newer));
}

#[test]
fn at_the_deadline_an_undecided_write_times_out_and_silent_replicas_get_hints() {
    let now = Instant::now();
    let v = view(1, 3, &[], now);
    let c = cfg();
    let mut op =
        WriteOp::start(now, &c, &v, Consistency::All, record(b"k", 10, Some(b"x"))).unwrap();
    let sends = drain(&mut op);
    op.handle_answer(now, sends[0].id, Answer::Stored { newer: None });
    assert_eq!(op.poll_timeout(), Some(now + c.write_timeout));
    op.handle_timeout(now + c.write_timeout);
    match op.poll_result() {
        Some(Err(KvError::Timeout(m))) => assert!(m.contains("1 of 3"), "{m}"),
        other => panic!("expected a timeout: {other:?}"),
    }
    let hints = drain(&mut op);
    let remote_silent =
        sends[1..].iter().filter(|s| !matches!(s.send, Send::Write { to: NodeId(1), .. }));
    assert_eq!(hints.len(), remote_silent.count(), "{hints:?}");
    // A late answer to an abandoned write changes nothing.
    op.handle_answer(now, sends[1].id, Answer::Stored { newer: None });
    for h in hints {
        op.handle_answer(now, h.id, Answer::Stored { newer: None });
    }
    assert!(op.is_finished());
    assert!(op.poll_result().is_none(), "the result is given once");
}

#[test]
fn a_write_that_cannot_reach_its_level_fails_as_soon_as_that_is_certain() {
    let now = Instant::now();
    let v = view(1, 3, &[], now);
    let mut op =
        WriteOp::start(now, &cfg(), &v, Consistency::Quorum, record(b"k", 10, Some(b"x"))).unwrap();
    let sends = drain(&mut op);
    op.handle_answer(now, sends[0].id, Answer::Failed);
    assert!(op.poll_result().is_none());
    op.handle_answer(now, sends[1].id, Answer::Failed);
    assert!(matches!(op.poll_result(), Some(Err(KvError::Timeout(_)))));
}

#[test]
fn too_few_replicas_up_is_refused_before_anything_is_sent() {
    let now = Instant::now();
    let v = view(1, 3, &[2, 3], now);
    let r = WriteOp::start(now, &cfg(), &v, Consistency::Quorum, record(b"k", 1, None));
    assert!(matches!(r, Err(KvError::Unavailable(m)) if m.contains("only 1 is up")));
    let r = ReadOp::start(now, &cfg(), &v, Consistency::Quorum, b"k".to_vec());
    assert!(matches!(r, Err(KvError::Unavailable(_))));
}

/// Starts a quorum read of `key` on node 1 of 3 and returns the op and its two first sends
/// (one record read, one digest read).
fn quorum_read(key: &[u8], now: Instant) -> (ReadOp, Vec<Outgoing>) {
    let v = view(1, 3, &[], now);
    let mut op = ReadOp::start(now, &cfg(), &v, Consistency::Quorum, key.to_vec()).unwrap();
    let sends = drain(&mut op);
    assert_eq!(sends.len(), 2);
    let digests: Vec<bool> = sends
        .iter()
        .map(|s| match s.send {
            Send::Read { digest, .. } => digest,
            _ => panic!("not a read: {s:?}"),
        })
        .collect();
    assert_eq!(digests, [false, true], "one record, one digest");
    (op, sends)
}

#[test]
fn a_stale_replica_is_repaired_before_the_read_answers() {
    let now = Instant::now();
    let newest = record(b"k", 20, Some(b"new"));
    let (mut op, sends) = quorum_read(b"k", now);
    op.handle_answer(now, sends[0].id, Answer::Record(Some(newest.clone())));
    op.handle_answer(now, sends[1].id, Answer::Digest(Some(Version { ts: 10, node: NodeId(1) })));
    assert!(op.poll_result().is_none(), "must repair first");
    let repair = drain(&mut op);
    assert!(
        matches!(&repair[..], [Outgoing { send: Send::Write { record, .. }, .. }] if *record == newest)
    );
    op.handle_answer(now, repair[0].id, Answer::Stored { newer: None });
    let read = op.poll_result().unwrap().unwrap();
    assert_eq!((read.record, read.repaired), (Some(newest), 1));
}

#[test]
fn a_quorum_read_whose_repair_fails_times_out_instead_of_answering() {
    // Issue path 2: answering here would let a later quorum read (of the stale replica and the
    // third one) go back in time.
    let now = Instant::now();
    let (mut op, sends) = quorum_read(b"k", now);
    op.handle_answer(now, sends[0].id, Answer::Record(Some(record(b"k", 20, Some(b"new")))));
    op.handle_answer(now, sends[1].id, Answer::Digest(None));
    let repair = drain(&mut op);
    op.handle_answer(now, repair[0].id, Answer::Failed);
    match op.poll_result() {
        Some(Err(KvError::Timeout(m))) => assert!(m.contains("read repair"), "{m}"),
        other => panic!("expected a timeout: {other:?}"),
    }
}

#[test]
fn a_quorum_read_whose_repair_is_not_answered_by_the_deadline_times_out() {
    let now = Instant::now();
    let c = cfg();
    let (mut op, sends) = quorum_read(b"k", now);
    op.handle_answer(now, sends[0].id, Answer::Digest(None)); // a wrong shape counts as failed
    let retry = drain(&mut op);
    assert_eq!(retry.len(), 1, "the failed replica is replaced by the third");
    op.handle_answer(now, sends[1].id, Answer::Digest(Some(Version { ts: 5, node: NodeId(3) })));
    op.handle_answer(now, retry[0].id, Answer::Record(Some(record(b"k", 20, Some(b"new")))));
    let repair = drain(&mut op);
    assert_eq!(repair.len(), 1);
    op.handle_timeout(now + c.read_timeout);
    assert!(matches!(op.poll_result(), Some(Err(KvError::Timeout(_)))));
}

#[test]
fn a_newer_digest_makes_the_read_fetch_that_record() {
    let now = Instant::now();
    let (mut op, sends) = quorum_read(b"k", now);
    let newest = record(b"k", 30, Some(b"newest"));
    op.handle_answer(now, sends[0].id, Answer::Record(Some(record(b"k", 10, Some(b"old")))));
    op.handle_answer(now, sends[1].id, Answer::Digest(Some(newest.version)));
    let fetch = drain(&mut op);
    assert!(matches!(&fetch[..], [Outgoing { send: Send::Read { digest: false, .. }, .. }]));
    op.handle_answer(now, fetch[0].id, Answer::Record(Some(newest.clone())));
    let repair = drain(&mut op);
    assert_eq!(repair.len(), 1, "the first replica is stale");
    op.handle_answer(now, repair[0].id, Answer::Stored { newer: None });
    assert_eq!(op.poll_result().unwrap().unwrap().record, Some(newest));
}

#[test]
fn a_slow_replica_gets_a_speculative_retry() {
    let now = Instant::now();
    let c = cfg();
    let (mut op, sends) = quorum_read(b"k", now);
    op.handle_answer(now, sends[0].id, Answer::Record(None));
    assert_eq!(op.poll_timeout(), Some(now + c.speculative_retry));
    op.handle_timeout(now + c.speculative_retry);
    let extra = drain(&mut op);
    assert_eq!(extra.len(), 1);
    op.handle_answer(now, extra[0].id, Answer::Digest(None));
    let read = op.poll_result().unwrap().unwrap();
    assert_eq!(read.record, None);
    // The slow replica's late answer is ignored.
    op.handle_answer(now, sends[1].id, Answer::Digest(None));
    assert!(op.is_finished());
}

#[test]
fn a_read_at_one_answers_without_waiting_for_repairs() {
    let now = Instant::now();
    let v = view(1, 3, &[], now);
    let mut op = ReadOp::start(now, &cfg(), &v, Consistency::One, b"k".to_vec()).unwrap();
    let sends = drain(&mut op);
    assert_eq!(sends.len(), 1);
    let newest = record(b"k", 1, Some(b"v"));
    op.handle_answer(now, sends[0].id, Answer::Record(Some(newest.clone())));
    assert_eq!(op.poll_result().unwrap().unwrap().record, Some(newest));
    assert!(op.is_finished());
}

#[test]
fn the_key_token_used_by_the_tests_has_three_replicas() {
    let v = view(1, 3, &[], Instant::now());
    assert_eq!(v.placement.replicas(token_of(b"k")).len(), 3);
    assert!(Duration::from_millis(1) > Duration::ZERO);
}

/// Three normal nodes (ids 1..=3) and node 4 joining, each with 16 spread tokens.
fn joining_view(me: u128, now: Instant) -> RingView {
    let n = 4u64;
    let members: Vec<MemberRingState> = (1..=4u128)
        .map(|id| {
            let tokens: Vec<u64> =
                (0..16u64).map(|i| (i * n + id as u64) * (u64::MAX / (16 * n))).collect();
            MemberRingState {
                id: NodeId(id),
                addr: SocketAddr::from(([127, 0, 0, id as u8], 7000)),
                down: false,
                left: false,
                tokens: Some(format_tokens(&tokens)),
                status: Some(if id == 4 { "joining" } else { "normal" }.into()),
                zone: None,
                removing: None,
                removed: None,
                ring_digest: None,
                kv_ready: false,
            }
        })
        .collect();
    RingView::build(NodeId(me), 3, &members, None, now)
}

/// While node 4 joins, a key's range moves from {a, b, c} to {a, b, 4} (c drops out). A coordinator
/// that already sees the join completed writes to a quorum of the future set only ({b, 4}, say),
/// so a quorum read of the current set ({c, a}) alone could miss it: the read also needs a quorum
/// of the future set. Before, it answered from {c, a}.
#[test]
fn a_read_while_a_node_joins_needs_a_quorum_of_the_future_replicas_too() {
    let now = Instant::now();
    let probe = joining_view(1, now);
    let key = (0..1000)
        .map(|i| format!("moving-{i}").into_bytes())
        .find(|k| !probe.placement.transition(token_of(k)).1.is_empty())
        .expect("a key whose range moves");
    let natural = probe.placement.replicas(token_of(&key)).to_vec();
    let (pending, dropping) = probe.placement.transition(token_of(&key));
    assert_eq!((pending, dropping.len()), (&[NodeId(4)][..], 1), "node 4 takes c's place");
    let dropped = dropping[0];
    // The coordinator is the replica that drops out, so it asks itself first.
    let v = joining_view(dropped.0, now);
    let mut op = ReadOp::start(now, &cfg(), &v, Consistency::Quorum, key.clone()).unwrap();
    let sends = drain(&mut op);
    let to = |s: &Outgoing| match &s.send {
        Send::Read { to, .. } => *to,
        other => panic!("a read sends reads: {other:?}"),
    };
    assert_eq!(to(&sends[0]), dropped, "this node first");
    assert!(sends.len() >= 3, "asks enough replicas to meet both sets: {sends:?}");
    let future_node = sends.iter().find(|s| to(s) != dropped && !natural[..].contains(&to(s)));
    // The current set's quorum answers first: the dropping replica and one that stays.
    let stays = sends.iter().position(|s| to(s) != dropped && natural.contains(&to(s))).unwrap();
    let answer = |s: &Outgoing| match &s.send {
        Send::Read { digest: true, .. } => Answer::Digest(None),
        _ => Answer::Record(None),
    };
    op.handle_answer(now, sends[0].id, answer(&sends[0]));
    op.handle_answer(now, sends[stays].id, answer(&sends[stays]));
    assert!(op.poll_result().is_none(), "a quorum of the current set alone is not enough");
    // One more replica of the future set (the other that stays, or node 4) answers.
    let next = sends
        .iter()
        .enumerate()
        .find(|(i, s)| *i != 0 && *i != stays && to(s) != dropped)
        .map(|(i, _)| i)
        .unwrap_or_else(|| {
            panic!("a third replica asked: {sends:?} (future node {future_node:?})")
        });
    op.handle_answer(now, sends[next].id, answer(&sends[next]));
    let read = op.poll_result().expect("decided").expect("ok");
    assert_eq!(read.record, None);
    assert_eq!(read.replicas, 3);
}
