//! Gossip messages, alone and fed to running gossip cores.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use starling_gossip::{Command, Config, Gossip, Message, NodeId};
use starling_kv::view::{ring_members, RingView};

use crate::input::steps;

/// The size bound the gossip cores are configured with.
pub(crate) const MAX_MESSAGE: usize = 64 * 1024;

/// Fuzz target `gossip_message`: `data` is one received gossip message.
///
/// Checks: decoding never panics, and refuses input over the bound; what decodes encodes and
/// decodes back to the same message; no strict prefix of that encoding decodes (a truncated
/// message is always refused).
pub fn gossip_message(data: &[u8]) {
    if data.len() > 1 {
        assert!(Message::decode(data, data.len() - 1).is_err(), "a message over the bound decoded");
    }
    let Ok(msg) = Message::decode(data, MAX_MESSAGE) else { return };
    let bytes = msg.encode();
    let back = Message::decode(&bytes, usize::MAX).expect("the encoding of a message decodes");
    assert_eq!(back, msg, "round trip changed the message");
    assert_eq!(back.encode(), bytes, "not canonical");
    assert!(Message::decode(&bytes[..bytes.len() - 1], usize::MAX).is_err(), "a prefix decoded");
    for r in &msg.rumors {
        let _ = r.subject();
    }
}

/// The two nodes of [`gossip_core`]: `A` receives the fuzzer's messages, `B` is its peer.
pub(crate) fn addrs() -> (SocketAddr, SocketAddr) {
    (SocketAddr::from(([127, 0, 0, 1], 7001)), SocketAddr::from(([127, 0, 0, 1], 7002)))
}

/// The two cores of [`gossip_core`], as the seed generator makes them too.
pub(crate) fn cores(t0: Instant) -> (Gossip, Gossip) {
    let (a, b) = addrs();
    let cfg = Config { max_message_bytes: MAX_MESSAGE, ..Config::default() };
    (
        Gossip::new(cfg.clone(), NodeId(0xa), 1, a, vec![b], 1, t0),
        Gossip::new(cfg, NodeId(0xb), 1, b, vec![a], 2, t0),
    )
}

/// Step kinds of [`gossip_core`]'s input (`op % STEPS`).
pub(crate) mod op {
    /// The payload is a message to node A (from anyone).
    pub const MESSAGE: u8 = 0;
    /// Time passes (`payload[..2]` milliseconds, big-endian) and both nodes run their timers.
    pub const TICK: u8 = 1;
    /// Node A and B exchange what they have queued for each other, until quiet (bounded).
    pub const EXCHANGE: u8 = 2;
    /// Node A publishes a key and value (`key ‖ 0 ‖ value`).
    pub const SET: u8 = 3;
    /// Node A leaves (payload empty), or moves to the address in the payload's first bytes.
    pub const LEAVE_OR_MOVE: u8 = 4;
    /// How many kinds there are.
    pub const STEPS: u8 = 5;
}

/// Fuzz target `gossip_core`: `data` is a run of steps (`op (u8) ‖ len (u16) ‖ payload`, see
/// [`op`]) on two gossip cores A and B: messages from the network to A, time, exchanges between
/// A and B, commands to A.
///
/// Checks: no input panics either core; after every step both pass their own consistency check
/// ([`Gossip::check_invariants`]); everything either queues to send is a message that decodes and
/// fits its bound; the ring a node builds from what gossip told it (hostile tokens included)
/// builds without panicking and answers placement queries.
pub fn gossip_core(data: &[u8]) {
    let t0 = Instant::now();
    let (mut a, mut b) = cores(t0);
    let (a_addr, b_addr) = addrs();
    let mut now = t0;
    for (op, payload) in steps(data) {
        match op % op::STEPS {
            op::MESSAGE => {
                let _ = a.handle_message(now, payload);
            }
            op::TICK => {
                let ms = payload.first_chunk::<2>().map_or(100, |b| u16::from_be_bytes(*b));
                now += Duration::from_millis(u64::from(ms));
                a.handle_timeout(now);
                b.handle_timeout(now);
            }
            op::EXCHANGE => {
                for _ in 0..8 {
                    let mut moved = false;
                    while let Some(t) = a.poll_transmit() {
                        check_transmit(&t.payload);
                        if t.to == b_addr {
                            let _ = b.handle_message(now, &t.payload);
                            moved = true;
                        }
                    }
                    while let Some(t) = b.poll_transmit() {
                        check_transmit(&t.payload);
                        if t.to == a_addr {
                            let _ = a.handle_message(now, &t.payload);
                            moved = true;
                        }
                    }
                    if !moved {
                        break;
                    }
                }
            }
            op::SET => {
                let text = String::from_utf8_lossy(payload);
                let (key, value) = text.split_once('\0').unwrap_or((&text, ""));
                let cmd = Command::Set { key: key.to_owned(), value: value.to_owned() };
                a.handle_command(now, cmd);
            }
            _ => match payload.first_chunk::<6>() {
                None => a.handle_command(now, Command::Leave),
                Some(p) => {
                    let port = u16::from_be_bytes([p[4], p[5]]);
                    let addr = SocketAddr::from(([p[0], p[1], p[2], p[3]], port));
                    a.handle_command(now, Command::SetAddr(addr));
                }
            },
        }
        a.check_invariants().expect("node A is consistent");
        b.check_invariants().expect("node B is consistent");
        while a.poll_event().is_some() || b.poll_event().is_some() {}
    }
    for g in [&mut a, &mut b] {
        while let Some(t) = g.poll_transmit() {
            check_transmit(&t.payload);
        }
        let _ = (g.view_digest(), g.converged(), g.poll_timeout(), g.members().count());
        let view = RingView::build(g.id(), 3, &ring_members(g), None, now);
        for token in [0, u64::MAX / 3, u64::MAX] {
            let _ = view.ring.write_set(token, 3);
            let _ = view.placement.replicas(token);
        }
        let _ = view.ring.ownership(3);
    }
}

/// What a core sends decodes and respects its bound.
fn check_transmit(payload: &[u8]) {
    assert!(payload.len() <= MAX_MESSAGE, "a core sent {} bytes, over its bound", payload.len());
    Message::decode(payload, MAX_MESSAGE).expect("a core sent a message that does not decode");
}
