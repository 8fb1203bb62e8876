//! The metadata service's decoders: ZAB messages (fed to a running server) and the znode
//! tree's transactions and snapshots.

use std::time::{Duration, Instant};

use starling_meta::{Tree, Txn};
use starling_zab::{Config, Msg, NodeId, Persisted, StateMachine, Zab, Zxid};

use crate::input::chunks;

/// Fuzz target `zab_message`: `data` is a sequence of messages (length-prefixed) received by a
/// voter of a 3-voter ensemble, from its two peers in turn, with time passing between them.
///
/// Checks: decoding never panics; what decodes encodes back to the same message; the server
/// handles any sequence without panicking, and its state stays coherent (its applied zxid never
/// passes its last zxid; its committed point never passes its log).
pub fn zab_message(data: &[u8]) {
    let t0 = Instant::now();
    let cfg = Config { voters: vec![NodeId(1), NodeId(2), NodeId(3)], ..Config::default() };
    let Ok(mut z) = Zab::new(cfg, NodeId(1), Tree::new(), Persisted::default(), 1, t0) else {
        panic!("a fresh server starts");
    };
    let mut now = t0;
    for (i, p) in chunks(data).into_iter().enumerate() {
        now += Duration::from_millis(7);
        if let Ok(msg) = Msg::decode(p) {
            let back = Msg::decode(&msg.encode()).expect("an encoded message decodes");
            assert_eq!(back, msg, "round trip changed the message");
            let from = if i % 2 == 0 { NodeId(2) } else { NodeId(3) };
            z.handle_message(now, from, msg);
        } else {
            z.handle_timeout(now);
        }
        let _ = z.ready();
        z.advance(now);
        let _ = z.ready();
        let s = z.status();
        assert!(z.applied() <= s.last_zxid, "applied past the log");
        assert!(s.committed <= s.last_zxid, "committed past the log");
    }
}

/// Fuzz target `meta_txn`: `data` is a sequence of committed transactions (length-prefixed),
/// applied to a znode tree in zxid order.
///
/// Checks: applying never panics (an undecodable transaction is a counted no-op); a decoded
/// transaction encodes back to itself; the tree's snapshot restores to a tree with the same
/// snapshot (deterministic, complete).
pub fn meta_txn(data: &[u8]) {
    let mut tree = Tree::new();
    let mut z = Zxid::ZERO;
    for (i, p) in chunks(data).into_iter().enumerate() {
        if let Ok(t) = Txn::decode(p) {
            assert_eq!(Txn::decode(&t.encode()).expect("re-decodes"), t, "round trip");
        }
        z = Zxid::new(1, i as u32 + 1);
        tree.apply(z, p);
        let _ = tree.take_fired();
        let _ = tree.take_outcome(z);
    }
    let snap = tree.snapshot();
    let mut copy = Tree::new();
    copy.restore(z, &snap).expect("a tree's own snapshot restores");
    assert_eq!(copy.snapshot(), snap, "snapshot round trip changed the tree");
}

/// Fuzz target `meta_snapshot`: `data` is a snapshot a leader sent (or this server stored).
///
/// Checks: restoring never panics and refuses what is not a coherent tree; a snapshot that
/// restores snapshots again to the same bytes.
pub fn meta_snapshot(data: &[u8]) {
    let mut tree = Tree::new();
    if tree.restore(Zxid::new(1, 1), data).is_ok() {
        let snap = tree.snapshot();
        let mut copy = Tree::new();
        copy.restore(Zxid::new(1, 1), &snap).expect("re-restores");
        assert_eq!(copy.snapshot(), snap, "not canonical");
    }
}
