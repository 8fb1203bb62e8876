//! The gossip wire codec: every message round-trips, and no byte string a peer can send makes
//! the decoder (or the state machine behind it) panic or change state when refused.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use starling_gossip::message::{Body, Delta, Digest, Rumor, Summary, PROTOCOL_VERSION};
use starling_gossip::state::Entry;
use starling_gossip::{Config, Error, Gossip, Header, Message, NodeId, BUCKETS};

// ----- strategies ------------------------------------------------------------------------

/// Ids from a small pool (so rumours and deltas collide with known members, and with the
/// receiver itself: id 1) or anywhere in the 128-bit space.
fn node_id() -> impl Strategy<Value = NodeId> {
    prop_oneof![3 => (1u128..=6).prop_map(NodeId), 1 => any::<u128>().prop_map(NodeId)]
}

fn addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port)),
        (any::<[u8; 16]>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port)),
    ]
}

/// Small counters most of the time (so they compare with real state), extremes sometimes.
fn counter() -> impl Strategy<Value = u64> {
    prop_oneof![4 => 0u64..8, 1 => any::<u64>()]
}

fn header() -> impl Strategy<Value = Header> {
    (node_id(), counter(), counter(), addr()).prop_map(|(id, generation, incarnation, addr)| {
        Header { id, generation, incarnation, addr }
    })
}

fn digest() -> impl Strategy<Value = Digest> {
    (node_id(), counter(), counter()).prop_map(|(id, generation, max_version)| Digest {
        id,
        generation,
        max_version,
    })
}

fn entries() -> impl Strategy<Value = Vec<(String, Entry)>> {
    let key = prop_oneof![
        Just("status".to_string()),
        Just("inc".to_string()),
        Just("digest".to_string()),
        "[a-z]{1,6}",
        ".{0,12}",
    ];
    let value = prop_oneof![Just("left".to_string()), "[0-9]{1,3}", ".{0,16}"];
    prop::collection::vec((key, value, counter()), 0..6).prop_map(|v| {
        v.into_iter().map(|(k, value, version)| (k, Entry { value, version })).collect()
    })
}

fn delta() -> impl Strategy<Value = Delta> {
    (node_id(), counter(), addr(), counter(), entries()).prop_map(
        |(id, generation, addr, from_version, entries)| Delta {
            id,
            generation,
            addr,
            from_version,
            entries,
        },
    )
}

fn rumor() -> impl Strategy<Value = Rumor> {
    prop_oneof![
        (node_id(), counter(), counter(), addr()).prop_map(
            |(id, generation, incarnation, addr)| {
                Rumor::Alive { id, generation, incarnation, addr }
            }
        ),
        (node_id(), counter(), counter(), node_id()).prop_map(
            |(id, generation, incarnation, from)| Rumor::Suspect {
                id,
                generation,
                incarnation,
                from
            }
        ),
        (node_id(), counter(), counter(), node_id()).prop_map(
            |(id, generation, incarnation, from)| Rumor::Down { id, generation, incarnation, from }
        ),
        (node_id(), counter(), counter()).prop_map(|(id, generation, incarnation)| Rumor::Left {
            id,
            generation,
            incarnation
        }),
    ]
}

fn summary() -> impl Strategy<Value = Summary> {
    prop_oneof![
        // Mostly the right length; wrong lengths must survive the codec too (the state machine
        // refuses them).
        prop_oneof![
            3 => prop::collection::vec(any::<u64>(), BUCKETS..=BUCKETS),
            1 => prop::collection::vec(any::<u64>(), 0..80),
        ]
        .prop_map(Summary::Buckets),
        (any::<u64>(), prop::collection::vec(digest(), 0..8))
            .prop_map(|(mask, digests)| Summary::Digests { mask, digests }),
    ]
}

fn body() -> impl Strategy<Value = Body> {
    let deltas = || prop::collection::vec(delta(), 0..4);
    prop_oneof![
        (summary(), deltas()).prop_map(|(summary, recent)| Body::Syn { summary, recent }),
        (deltas(), prop::collection::vec(digest(), 0..6), any::<bool>())
            .prop_map(|(deltas, requests, truncated)| Body::Ack { deltas, requests, truncated }),
        deltas().prop_map(|deltas| Body::Ack2 { deltas }),
        (counter(), node_id()).prop_map(|(seq, target)| Body::Ping { seq, target }),
        (counter(), node_id()).prop_map(|(seq, target)| Body::PingAck { seq, target }),
        (counter(), node_id(), addr()).prop_map(|(seq, target, target_addr)| Body::PingReq {
            seq,
            target,
            target_addr
        }),
        (counter(), node_id()).prop_map(|(seq, target)| Body::Nack { seq, target }),
        Just(Body::Rumors),
    ]
}

fn message() -> impl Strategy<Value = Message> {
    (header(), prop::collection::vec(rumor(), 0..5), body())
        .prop_map(|(from, rumors, body)| Message { from, rumors, body })
}

const MAX: usize = 64 * 1024;

fn sample() -> Message {
    Message {
        from: Header {
            id: NodeId(7),
            generation: 3,
            incarnation: 2,
            addr: "10.0.0.7:7000".parse().expect("addr"),
        },
        rumors: vec![Rumor::Suspect {
            id: NodeId(9),
            generation: 1,
            incarnation: 0,
            from: NodeId(7),
        }],
        body: Body::Ack2 {
            deltas: vec![Delta {
                id: NodeId(7),
                generation: 3,
                addr: "10.0.0.7:7000".parse().expect("addr"),
                from_version: 0,
                entries: vec![("status".into(), Entry { value: "normal".into(), version: 1 })],
            }],
        },
    }
}

// ----- codec ---------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn every_message_round_trips(msg in message()) {
        let bytes = msg.encode();
        prop_assert_eq!(bytes[0], PROTOCOL_VERSION);
        prop_assert_eq!(Message::decode(&bytes, MAX), Ok(msg));
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = Message::decode(&bytes, MAX);
        // With the right version byte the msgpack decoder itself gets the garbage.
        let mut v = bytes;
        v.insert(0, PROTOCOL_VERSION);
        if let Ok(m) = Message::decode(&v, MAX) {
            // Whatever was accepted is a message like any other.
            prop_assert_eq!(Message::decode(&m.encode(), MAX), Ok(m));
        }
    }

    /// A valid encoding cut short anywhere is refused: msgpack is prefix-free, so no proper
    /// prefix of one message is another message.
    #[test]
    fn every_truncation_is_refused(msg in message()) {
        let bytes = msg.encode();
        for k in 0..bytes.len() {
            let r = Message::decode(&bytes[..k], MAX);
            match k {
                0 => prop_assert_eq!(r, Err(Error::Empty)),
                _ => prop_assert!(matches!(r, Err(Error::Malformed(_))), "prefix {k}: {r:?}"),
            }
        }
    }

    #[test]
    fn bit_flips_never_panic(msg in message(), flips in prop::collection::vec((any::<prop::sample::Index>(), 0u8..8), 1..4)) {
        let mut bytes = msg.encode();
        for (at, bit) in flips {
            let i = at.index(bytes.len());
            bytes[i] ^= 1 << bit;
        }
        match Message::decode(&bytes, MAX) {
            Ok(m) => prop_assert_eq!(Message::decode(&m.encode(), MAX), Ok(m)),
            Err(Error::Version { got, want }) => {
                prop_assert_eq!(want, PROTOCOL_VERSION);
                prop_assert_eq!(got, bytes[0]);
                prop_assert_ne!(got, PROTOCOL_VERSION);
            }
            Err(Error::Malformed(_)) => {}
            Err(e) => prop_assert!(false, "unexpected error {e:?}"),
        }
    }

    /// Bytes spliced from two messages (a plausible framing bug) never panic either.
    #[test]
    fn splices_never_panic(a in message(), b in message(), cut_a in any::<prop::sample::Index>(), cut_b in any::<prop::sample::Index>()) {
        let (ea, eb) = (a.encode(), b.encode());
        let mut v = ea[..cut_a.index(ea.len())].to_vec();
        v.extend_from_slice(&eb[cut_b.index(eb.len())..]);
        let _ = Message::decode(&v, MAX);
    }
}

#[test]
fn oversized_input_is_too_large() {
    let bytes = sample().encode();
    let max = bytes.len() - 1;
    assert_eq!(Message::decode(&bytes, max), Err(Error::TooLarge { len: bytes.len(), max }));
    // The bound is inclusive.
    assert_eq!(Message::decode(&bytes, bytes.len()), Ok(sample()));
    // The size check comes first: even garbage is refused for its size alone.
    let junk = vec![0xffu8; MAX + 1];
    assert_eq!(Message::decode(&junk, MAX), Err(Error::TooLarge { len: MAX + 1, max: MAX }));
}

#[test]
fn empty_input_is_empty() {
    assert_eq!(Message::decode(&[], MAX), Err(Error::Empty));
    assert_eq!(Message::decode(&[], 0), Err(Error::Empty));
}

#[test]
fn wrong_version_is_refused() {
    let mut bytes = sample().encode();
    for v in [0u8, PROTOCOL_VERSION + 1, 0xff] {
        bytes[0] = v;
        assert_eq!(
            Message::decode(&bytes, MAX),
            Err(Error::Version { got: v, want: PROTOCOL_VERSION })
        );
    }
    // Just a version byte, even the right one, is not a message.
    assert!(matches!(Message::decode(&[PROTOCOL_VERSION], MAX), Err(Error::Malformed(_))));
}

#[test]
fn trailing_bytes_are_malformed() {
    let mut bytes = sample().encode();
    bytes.push(0);
    match Message::decode(&bytes, MAX) {
        Err(Error::Malformed(why)) => assert!(why.contains("1 trailing"), "{why}"),
        other => panic!("trailing byte accepted: {other:?}"),
    }
    // Two messages back to back are not one message.
    let mut two = sample().encode();
    two.extend_from_slice(&sample().encode()[1..]);
    assert!(matches!(Message::decode(&two, MAX), Err(Error::Malformed(_))));
}

// ----- refused input changes nothing -------------------------------------------------------

fn addr_of(i: u8) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, i)), 7000)
}

/// A node that already knows a few members (so there is state to corrupt).
fn populated(t0: Instant) -> Gossip {
    let mut g = Gossip::new(Config::default(), NodeId(1), 1, addr_of(1), vec![addr_of(2)], 7, t0);
    for i in 2..=4u8 {
        let hello = Message {
            from: Header { id: NodeId(i.into()), generation: 1, incarnation: 0, addr: addr_of(i) },
            rumors: vec![],
            body: Body::Ping { seq: 1, target: NodeId(1) },
        };
        g.handle_message(t0, &hello.encode()).expect("hello accepted");
    }
    while g.poll_transmit().is_some() {}
    while g.poll_event().is_some() {}
    g
}

/// Everything observable about a node, for before/after comparisons.
fn snapshot(g: &Gossip) -> String {
    let mut members: Vec<String> = g
        .members()
        .map(|m| {
            format!(
                "{:?} {} {} {:?} {} {:?}",
                m.id,
                m.generation,
                m.incarnation,
                m.state,
                m.node_state.max_version(),
                m.addr
            )
        })
        .collect();
    members.sort();
    format!(
        "{:?} | {} | inc {} | lhm {} | rumors {} | timeout {:?} | {}",
        g.stats(),
        g.view_digest(),
        g.incarnation(),
        g.local_health(),
        g.pending_rumors(),
        g.poll_timeout(),
        members.join("; ")
    )
}

#[test]
fn syn_with_wrong_bucket_count_is_refused_and_changes_nothing() {
    let t0 = Instant::now();
    let mut g = populated(t0);
    g.check_invariants().expect("invariants before");
    let before = snapshot(&g);
    let members = g.members().count();
    assert_eq!(members, 3);
    for len in [0, 1, BUCKETS - 1, BUCKETS + 1, 1000] {
        // From a stranger (who must not be added), with a rumour and a recent delta (which must
        // not be applied) riding along.
        let msg = Message {
            from: Header { id: NodeId(99), generation: 1, incarnation: 0, addr: addr_of(99) },
            rumors: vec![Rumor::Down {
                id: NodeId(2),
                generation: 1,
                incarnation: 5,
                from: NodeId(99),
            }],
            body: Body::Syn {
                summary: Summary::Buckets(vec![0xabcd; len]),
                recent: vec![Delta {
                    id: NodeId(3),
                    generation: 1,
                    addr: addr_of(3),
                    from_version: 0,
                    entries: vec![("x".into(), Entry { value: "1".into(), version: 9 })],
                }],
            },
        };
        let r = g.handle_message(t0 + Duration::from_millis(1), &msg.encode());
        assert!(matches!(r, Err(Error::Malformed(_))), "{len} buckets: {r:?}");
        g.check_invariants().expect("invariants after");
        assert_eq!(g.members().count(), members);
        assert_eq!(snapshot(&g), before, "{len} buckets changed state");
        assert!(g.poll_transmit().is_none(), "{len} buckets: a reply was sent");
        assert!(g.poll_event().is_none(), "{len} buckets: an event was raised");
    }
    // The right length from the same stranger is accepted (the refusal was about the length).
    let ok = Message {
        from: Header { id: NodeId(99), generation: 1, incarnation: 0, addr: addr_of(99) },
        rumors: vec![],
        body: Body::Syn { summary: Summary::Buckets(vec![0; BUCKETS]), recent: vec![] },
    };
    g.handle_message(t0 + Duration::from_millis(2), &ok.encode()).expect("accepted");
    assert_eq!(g.members().count(), members + 1);
    g.check_invariants().expect("invariants");
}

#[test]
fn undecodable_and_self_messages_change_nothing_but_the_error_count() {
    let t0 = Instant::now();
    let mut g = populated(t0);
    let before = snapshot(&g);
    let mut bad = sample().encode();
    bad.truncate(bad.len() - 1);
    assert!(g.handle_message(t0, &bad).is_err());
    assert_eq!(g.stats().decode_errors, 1);
    assert!(g.poll_transmit().is_none() && g.poll_event().is_none());
    // From ourselves (a reflected or spoofed message): refused.
    let mut me = sample();
    me.from.id = NodeId(1);
    me.rumors = vec![Rumor::Down { id: NodeId(2), generation: 1, incarnation: 9, from: NodeId(1) }];
    assert_eq!(g.handle_message(t0, &me.encode()), Err(Error::FromSelf));
    assert!(g.poll_transmit().is_none() && g.poll_event().is_none());
    let after = snapshot(&g).replace("decode_errors: 1", "decode_errors: 0");
    assert_eq!(after, before);
    g.check_invariants().expect("invariants");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Any sequence of well-formed but hostile messages, interleaved with timers: no panic, and
    /// the derived state (bucket hashes, view hash, counts, index) stays consistent.
    #[test]
    fn hostile_messages_keep_invariants(msgs in prop::collection::vec((message(), 0u64..3000), 1..24)) {
        let t0 = Instant::now();
        let mut g = populated(t0);
        let mut now = t0;
        for (m, dt) in msgs {
            now += Duration::from_millis(dt);
            g.handle_timeout(now);
            let _ = g.handle_message(now, &m.encode());
            g.check_invariants().map_err(TestCaseError::fail)?;
            while g.poll_transmit().is_some() {}
            while g.poll_event().is_some() {}
        }
        now += Duration::from_secs(30);
        g.handle_timeout(now);
        g.check_invariants().map_err(TestCaseError::fail)?;
    }
}

/// Found by review with the `gossip_core` fuzz target's harness: a suspicion of the receiver at
/// the last incarnation made its refutation overflow (a panic in debug builds; in release its
/// incarnation wrapped to 0, below every rumour about it).
#[test]
fn a_suspicion_at_the_last_incarnation_is_not_refuted_by_wrapping() {
    let t0 = Instant::now();
    let me = "127.0.0.1:7001".parse().unwrap();
    let mut g = Gossip::new(Config::default(), NodeId(1), 1, me, vec![], 1, t0);
    let from = Header {
        id: NodeId(2),
        generation: 1,
        incarnation: 0,
        addr: "127.0.0.1:7002".parse().unwrap(),
    };
    let suspect = |incarnation| Message {
        from: from.clone(),
        rumors: vec![Rumor::Suspect { id: NodeId(1), generation: 1, incarnation, from: NodeId(2) }],
        body: Body::Rumors,
    };
    g.handle_message(t0, &suspect(u64::MAX).encode()).unwrap();
    assert_eq!(g.incarnation(), 0, "no incarnation is above the last one");
    g.check_invariants().unwrap();
    g.handle_message(t0, &suspect(5).encode()).unwrap();
    assert_eq!(g.incarnation(), 6, "a suspicion is refuted with the next incarnation");
}
