//! ALGORITHM.md L2: a member this node has never heard from is not made alive by news relayed by
//! others (the news may predate its crash); it becomes an unconfirmed suspect that is pinged,
//! alive only if it answers and down if it does not.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use starling_gossip::message::{Body, Rumor};
use starling_gossip::{Config, Event, Gossip, Header, MemberState, Message, NodeId};

fn addr(i: u8) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, i], 7000))
}

#[test]
fn relayed_alive_about_a_stranger_does_not_make_it_alive() {
    let now = Instant::now();
    let mut c = Gossip::new(Config::default(), NodeId(3), 1, addr(3), vec![], 7, now);
    // Node 2 tells node 3 that node 4 is alive; node 3 never heard from node 4 itself.
    let relayed = Message {
        from: Header { id: NodeId(2), generation: 1, incarnation: 0, addr: addr(2) },
        rumors: vec![Rumor::Alive { id: NodeId(4), generation: 1, incarnation: 0, addr: addr(4) }],
        body: Body::Rumors,
    };
    c.handle_message(now, &relayed.encode()).expect("valid message");
    let events: Vec<Event> = std::iter::from_fn(|| c.poll_event()).collect();
    assert!(
        !events.iter().any(|e| matches!(e, Event::MemberUp { id, .. } if *id == NodeId(4))),
        "relayed news made a stranger alive: {events:?}"
    );
    assert!(
        events.iter().any(|e| matches!(e, Event::MemberUp { id, .. } if *id == NodeId(2))),
        "the sender itself spoke, so it is alive: {events:?}"
    );
    let state = |c: &Gossip| c.members().find(|m| m.id == NodeId(4)).map(|m| m.state);
    assert_eq!(state(&c), Some(MemberState::Suspect));

    // Node 3 asks node 4 directly...
    let mut t = now;
    let mut pinged = false;
    for _ in 0..200 {
        t += Duration::from_millis(100);
        c.handle_timeout(t);
        while let Some(tx) = c.poll_transmit() {
            pinged |= tx.to == addr(4);
        }
        if state(&c) == Some(MemberState::Down) {
            break;
        }
    }
    // ... and since it never answers, it is down, never having been up.
    assert!(pinged, "the stranger was never asked directly");
    assert_eq!(state(&c), Some(MemberState::Down));
    let events: Vec<Event> = std::iter::from_fn(|| c.poll_event()).collect();
    assert!(!events.iter().any(|e| matches!(e, Event::MemberUp { id, .. } if *id == NodeId(4))));
}
