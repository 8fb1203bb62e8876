//! The znode tree's semantics, transaction by transaction, as ZooKeeper defines them.

use starling_meta::{
    MetaError, Op, OpResult, Outcome, Tree, Txn, TxnOp, WatchKind, WatchedEvent, MAX_DATA,
};
use starling_zab::{StateMachine, Zxid};

/// Applies transactions with increasing zxids and returns outcomes.
struct T {
    tree: Tree,
    n: u32,
}

impl T {
    fn new() -> T {
        T { tree: Tree::new(), n: 0 }
    }

    fn txn(&mut self, op: TxnOp) -> Outcome {
        self.n += 1;
        let z = Zxid::new(1, self.n);
        self.tree.apply(z, &Txn { time_ms: 1000 + u64::from(self.n), op }.encode());
        self.tree.take_outcome(z).expect("outcome")
    }

    fn ops(&mut self, session: u64, ops: Vec<Op>, multi: bool) -> Vec<OpResult> {
        match self.txn(TxnOp::Ops { session, ops, multi, internal: false }) {
            Outcome::Ops(r) => r,
            other => panic!("{other:?}"),
        }
    }

    fn one(&mut self, session: u64, op: Op) -> OpResult {
        self.ops(session, vec![op], false).remove(0)
    }

    fn create(&mut self, path: &str, data: &[u8]) -> OpResult {
        self.one(0, create(path, data, false, false))
    }
}

fn create(path: &str, data: &[u8], ephemeral: bool, sequential: bool) -> Op {
    Op::Create { path: path.into(), data: data.to_vec(), ephemeral, sequential }
}

fn created(r: &OpResult) -> String {
    match r {
        OpResult::Created { path, .. } => path.clone(),
        other => panic!("{other:?}"),
    }
}

fn failed(r: &OpResult) -> MetaError {
    match r {
        OpResult::Failed(e) => e.clone(),
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[test]
fn create_get_set_delete_with_versions() {
    let mut t = T::new();
    assert_eq!(created(&t.create("/a", b"1")), "/a");
    assert!(matches!(failed(&t.create("/a", b"2")), MetaError::NodeExists(_)));
    assert!(matches!(failed(&t.create("/x/y", b"")), MetaError::NoNode(p) if p == "/x"));
    let (data, stat) = t.tree.get("/a").unwrap();
    assert_eq!((data, stat.version, stat.czxid), (&b"1"[..], 0, Zxid::new(1, 1)));
    // Conditional set: the right version wins once; a stale one loses.
    let set = |v| Op::SetData { path: "/a".into(), data: b"2".to_vec(), version: v };
    assert!(matches!(t.one(0, set(Some(0))), OpResult::Set(s) if s.version == 1));
    assert!(matches!(failed(&t.one(0, set(Some(0)))), MetaError::BadVersion { actual: 1, .. }));
    assert!(matches!(t.one(0, set(None)), OpResult::Set(s) if s.version == 2));
    t.create("/a/b", b"");
    let del = |p: &str, v| Op::Delete { path: p.into(), version: v };
    assert!(matches!(failed(&t.one(0, del("/a", None))), MetaError::NotEmpty(_)));
    assert!(matches!(failed(&t.one(0, del("/a/b", Some(3)))), MetaError::BadVersion { .. }));
    assert_eq!(t.one(0, del("/a/b", Some(0))), OpResult::Deleted);
    assert_eq!(t.one(0, del("/a", Some(2))), OpResult::Deleted);
    assert!(t.tree.get("/a").is_err());
    let root = t.tree.stat("/").unwrap();
    assert_eq!((root.num_children, root.cversion), (0, 2));
}

#[test]
fn sequential_names_use_the_parents_counter() {
    let mut t = T::new();
    t.create("/q", b"");
    let names: Vec<String> =
        (0..3).map(|_| created(&t.one(0, create("/q/item-", b"", false, true)))).collect();
    assert_eq!(names, ["/q/item-0000000000", "/q/item-0000000001", "/q/item-0000000002"]);
    // A sequential node under a trailing slash is named by the number alone.
    assert_eq!(created(&t.one(0, create("/q/", b"", false, true))), "/q/0000000003");
    assert_eq!(t.tree.children("/q").unwrap().len(), 4);
}

#[test]
fn ephemerals_go_with_their_session_and_have_no_children() {
    let mut t = T::new();
    assert!(matches!(
        failed(&t.one(7, create("/e", b"", true, false))),
        MetaError::SessionExpired(7)
    ));
    assert_eq!(
        t.txn(TxnOp::CreateSession { session: 7, timeout_ms: 3000 }),
        Outcome::Session(Ok(()))
    );
    t.one(7, create("/e", b"", true, false));
    assert_eq!(t.tree.stat("/e").unwrap().ephemeral_owner, 7);
    assert!(matches!(
        failed(&t.one(7, create("/e/child", b"", false, false))),
        MetaError::NoChildrenForEphemerals(_)
    ));
    t.tree.watch("/e", WatchKind::Data, 1);
    assert_eq!(t.txn(TxnOp::CloseSession { session: 7 }), Outcome::Session(Ok(())));
    assert!(t.tree.stat("/e").is_none());
    assert_eq!(t.tree.counts().1, 0);
    let fired = t.tree.take_fired();
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0].event, WatchedEvent::NodeDeleted);
    // A closed session cannot close again or own new ephemerals.
    assert_eq!(
        t.txn(TxnOp::CloseSession { session: 7 }),
        Outcome::Session(Err(MetaError::SessionExpired(7)))
    );
}

#[test]
fn multi_is_all_or_nothing() {
    let mut t = T::new();
    t.create("/m", b"0");
    t.tree.watch("/m", WatchKind::Data, 1);
    t.tree.watch("/", WatchKind::Children, 2);
    let r = t.ops(
        0,
        vec![
            Op::SetData { path: "/m".into(), data: b"1".to_vec(), version: Some(0) },
            create("/n", b"", false, false),
            Op::Check { path: "/m".into(), version: Some(0) }, // now at 1: fails
        ],
        true,
    );
    assert_eq!(r[0], OpResult::Failed(MetaError::RolledBack));
    assert_eq!(r[1], OpResult::Failed(MetaError::RolledBack));
    assert!(matches!(r[2], OpResult::Failed(MetaError::BadVersion { .. })));
    assert_eq!(t.tree.get("/m").unwrap().0, b"0");
    assert!(t.tree.stat("/n").is_none());
    assert_eq!(t.tree.stat("/").unwrap().num_children, 1);
    assert!(t.tree.take_fired().is_empty(), "a rolled-back multi fires no watch");
    let r = t.ops(
        0,
        vec![
            Op::Check { path: "/m".into(), version: Some(0) },
            Op::SetData { path: "/m".into(), data: b"1".to_vec(), version: Some(0) },
            create("/n", b"", false, false),
        ],
        true,
    );
    assert!(r.iter().all(|r| !matches!(r, OpResult::Failed(_))), "{r:?}");
    let fired = t.tree.take_fired();
    assert_eq!(fired.len(), 2);
    // A Check alone is refused.
    let c = t.one(0, Op::Check { path: "/m".into(), version: None });
    assert_eq!(failed(&c), MetaError::CheckOutsideMulti);
}

#[test]
fn watches_are_one_shot_and_fire_in_order() {
    let mut t = T::new();
    t.tree.watch("/w", WatchKind::Data, 1); // exists-watch on a missing znode
    t.create("/w", b"");
    t.tree.watch("/w", WatchKind::Data, 1);
    t.tree.watch("/w", WatchKind::Children, 2);
    t.one(0, Op::SetData { path: "/w".into(), data: b"x".to_vec(), version: None });
    t.one(0, Op::SetData { path: "/w".into(), data: b"y".to_vec(), version: None });
    t.create("/w/c", b"");
    let fired = t.tree.take_fired();
    let seen: Vec<(u64, WatchedEvent)> = fired.iter().map(|f| (f.watcher, f.event)).collect();
    assert_eq!(
        seen,
        [
            (1, WatchedEvent::NodeCreated),
            (1, WatchedEvent::NodeDataChanged),
            (2, WatchedEvent::NodeChildrenChanged)
        ]
    );
    assert!(fired.windows(2).all(|w| w[0].zxid < w[1].zxid));
    // A client that reconnects elsewhere asks what changed since the zxid it last saw.
    let z = t.tree.stat("/w").unwrap().mzxid;
    assert_eq!(t.tree.changed_since("/w", WatchKind::Data, z), None);
    assert_eq!(
        t.tree.changed_since("/w", WatchKind::Children, z),
        Some(WatchedEvent::NodeChildrenChanged)
    );
    assert_eq!(t.tree.changed_since("/gone", WatchKind::Data, z), Some(WatchedEvent::NodeDeleted));
}

#[test]
fn bad_input_is_refused_and_nothing_changes() {
    let mut t = T::new();
    for p in ["a", "/a/", "//a", "/a/../b", "/\u{1}"] {
        assert!(matches!(failed(&t.create(p, b"")), MetaError::BadPath { .. }), "{p:?}");
    }
    assert!(matches!(failed(&t.create("/big", &vec![0; MAX_DATA + 1])), MetaError::TooLarge(_)));
    assert!(matches!(failed(&t.create("/starling/topics", b"")), MetaError::Reserved(_)));
    let internal = TxnOp::Ops {
        session: 0,
        ops: vec![create("/starling", b"", false, false)],
        multi: false,
        internal: true,
    };
    assert!(
        matches!(&t.txn(internal), Outcome::Ops(r) if matches!(r[0], OpResult::Created { .. }))
    );
    assert!(matches!(
        failed(&t.one(0, Op::Delete { path: "/".into(), version: None })),
        MetaError::BadPath { .. }
    ));
    // Undecodable bytes are counted and applied as nothing.
    let before = t.tree.counts();
    t.tree.apply(Zxid::new(2, 1), b"\xc1garbage");
    assert_eq!(t.tree.bad_txns, 1);
    assert_eq!(t.tree.counts(), before);
    assert!(matches!(t.tree.take_outcome(Zxid::new(2, 1)), Some(Outcome::Invalid(_))));
}

#[test]
fn snapshots_round_trip_and_corrupt_ones_are_refused() {
    let mut t = T::new();
    t.txn(TxnOp::CreateSession { session: 9, timeout_ms: 1000 });
    t.create("/s", b"data");
    t.one(9, create("/s/e-", b"", true, true));
    let snap = t.tree.snapshot();
    let mut u = Tree::new();
    u.restore(Zxid::new(1, 3), &snap).unwrap();
    assert_eq!(u.counts(), t.tree.counts());
    assert_eq!(u.get("/s").unwrap(), t.tree.get("/s").unwrap());
    assert_eq!(u.snapshot(), snap, "snapshots are deterministic");
    // Closing the session on the restored copy removes the ephemeral there too.
    u.apply(Zxid::new(1, 4), &Txn { time_ms: 0, op: TxnOp::CloseSession { session: 9 } }.encode());
    assert!(u.children("/s").unwrap().is_empty());
    let mut v = Tree::new();
    assert!(v.restore(Zxid::new(1, 3), &snap[..snap.len() / 2]).is_err());
    assert!(v.restore(Zxid::new(1, 3), b"").is_err());
    assert_eq!(v.counts().0, 1, "a refused snapshot leaves the tree as it was");
    // Collections that claim billions of entries and hold none are an error, not an attempt to
    // allocate for them: the nodes map, a znode's children, a session's ephemerals.
    let nodes =
        [&[0x83, 0xa6][..], b"format", &[0x01, 0xa5], b"nodes", &[0xdf, 0xff, 0xff, 0xff, 0xff]];
    assert!(v.restore(Zxid::new(1, 3), &nodes.concat()).is_err());
    let children = [
        &[0x83, 0xa6][..],
        b"format",
        &[0x01, 0xa5],
        b"nodes",
        &[0x81, 0xa1],
        b"/",
        &[0x83, 0xa4],
        b"data",
        &[0xc4, 0x00, 0xa4],
        b"stat",
        &[0x9a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xa8],
        b"children",
        &[0xdd, 0xff, 0xff, 0xff, 0xff],
    ];
    assert!(v.restore(Zxid::new(1, 3), &children.concat()).is_err());
    assert_eq!(v.counts().0, 1);
}

/// The seeds' lock recipe: ephemeral sequential children; each waiter watches only its
/// predecessor, so a release wakes exactly one waiter (no herd effect).
#[test]
fn lock_recipe_wakes_only_the_next_waiter() {
    let mut t = T::new();
    t.create("/lock", b"");
    let mut nodes = Vec::new();
    for s in 1..=5u64 {
        t.txn(TxnOp::CreateSession { session: s, timeout_ms: 1000 });
        nodes.push(created(&t.one(s, create("/lock/n-", b"", true, true))));
    }
    // Waiter i watches node i-1.
    for i in 1..nodes.len() {
        t.tree.watch(&nodes[i - 1], WatchKind::Data, i as u64 + 1);
    }
    let holder = |t: &T| t.tree.children("/lock").unwrap().first().cloned();
    assert_eq!(holder(&t).as_deref(), Some("n-0000000000"));
    // The holder's session ends (it crashed): only session 2 is woken, and it holds the lock.
    t.txn(TxnOp::CloseSession { session: 1 });
    let fired = t.tree.take_fired();
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0].watcher, 2);
    assert_eq!(holder(&t).as_deref(), Some("n-0000000001"));
    // A waiter in the middle leaves: only its successor is woken, and finds it must wait on.
    t.txn(TxnOp::CloseSession { session: 4 });
    let fired = t.tree.take_fired();
    assert_eq!(fired.iter().map(|f| f.watcher).collect::<Vec<_>>(), [5]);
    assert_eq!(holder(&t).as_deref(), Some("n-0000000001"));
}
