//! Serves the node's HTTP surface with a made-up cluster that converges over a few seconds, for
//! working on the live page without running a cluster, and for trying
//! `scripts/test-status-page` by hand:
//!
//! ```text
//! cargo run -p starling-node --example fake_status -- 127.0.0.1:7480 5 [--insecure]
//! scripts/test-status-page http://127.0.0.1:7480/ 5 /tmp/page.png
//! ```
//!
//! Member `i` (of `N`) turns alive `i` seconds after start; until then it is suspect, and one is
//! down for a while. The view reports `converged` once all are alive. Runs until Ctrl-C.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use starling_node::http::{self, HttpState, Metrics};
use starling_node::status::{GossipStatus, MemberStatus, RingStatus, Status};
use tokio::sync::watch;

const DEFAULT_ADDR: &str = "127.0.0.1:7480";
const DEFAULT_MEMBERS: u64 = 5;
const ZONES: [&str; 3] = ["eu-1a", "eu-1b", "eu-1c"];

fn node_id(i: u64) -> String {
    // Spread the ids so their short forms differ in the first digits, as random ids would.
    starling_wire::NodeId(u128::from(i + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c834))
        .to_string()
}

fn snapshot(n: u64, elapsed: Duration, insecure: bool) -> Status {
    let secs = elapsed.as_secs_f64();
    let alive_by = |i: u64| i as f64 * 1.0;
    let members: Vec<MemberStatus> = (0..n)
        .map(|i| {
            let alive = secs >= alive_by(i);
            let state = match (alive, i) {
                (true, _) => "alive",
                (false, 2) => "down",
                (false, _) => "suspect",
            };
            MemberStatus {
                node_id: node_id(i),
                addr: format!("127.0.0.1:{}", 7400 + i),
                state: state.to_owned(),
                phi: if i == 0 {
                    0.0
                } else if alive {
                    0.2 + 0.1 * (secs + i as f64).sin().abs()
                } else {
                    3.0 + 2.0 * (alive_by(i) - secs)
                },
                incarnation: u64::from(!alive),
                generation: 1_763_000_000 + i,
                zone: Some(ZONES[i as usize % ZONES.len()].to_owned()),
                digest: Some(if i == 0 || (alive && secs >= alive_by(n - 1)) {
                    "5f1c9a2e7b".to_owned()
                } else {
                    format!("{:x}", 0xa0 + i)
                }),
                kafka: None,
                is_self: i == 0,
            }
        })
        .collect();
    let converged = members.iter().all(|m| m.state == "alive");
    let rounds = (secs * 5.0) as u64;
    Status {
        node_id: node_id(0),
        generation: 1_763_000_000,
        incarnation: 0,
        addr: "127.0.0.1:7400".to_owned(),
        zone: Some(ZONES[0].to_owned()),
        converged,
        gossip_converged: converged,
        digest: "5f1c9a2e7b".to_owned(),
        insecure,
        tls: None,
        version: env!("CARGO_PKG_VERSION").to_owned(),
        uptime_secs: 3_725.0 + secs,
        members,
        ring: RingStatus::default(),
        gossip: GossipStatus {
            rounds,
            messages_sent: rounds * 3,
            bytes_sent: rounds * 3 * 412,
            messages_received: rounds * 3 - rounds / 7,
            bytes_received: (rounds * 3 - rounds / 7) * 398,
            refused: rounds / 200,
            probes: rounds,
            probes_failed: (secs.min(n as f64)) as u64,
            refutations: u64::from(secs > 2.0),
            local_health: u32::from(!converged),
        },
        kv: None,
        transport: None,
        meta: None,
        topics: Vec::new(),
        repair: None,
        kafka: None,
        history: None,
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr: SocketAddr = args
        .next()
        .unwrap_or_else(|| DEFAULT_ADDR.to_owned())
        .parse()
        .context("first argument: listen address, e.g. 127.0.0.1:7480")?;
    let members: u64 = match args.next() {
        Some(n) => n.parse().context("second argument: member count")?,
        None => DEFAULT_MEMBERS,
    };
    anyhow::ensure!(members >= 1, "need at least one member (this node)");
    let insecure = args.next().as_deref() == Some("--insecure");

    let start = Instant::now();
    let (publish, status) = watch::channel(Arc::new(snapshot(members, Duration::ZERO, insecure)));
    let metrics = Arc::new(Metrics::new());
    let listener =
        tokio::net::TcpListener::bind(addr).await.with_context(|| format!("bind {addr}"))?;
    println!("serving a fake {members}-member status on http://{addr}/ (Ctrl-C stops)");

    let tick_metrics = Arc::clone(&metrics);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tick.tick().await;
            let elapsed = start.elapsed();
            tick_metrics.observe_rpc("gossip", Duration::from_micros(300));
            publish.send_replace(Arc::new(snapshot(members, elapsed, insecure)));
        }
    });

    let state = HttpState { status, metrics };
    http::serve(listener, state, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
    .context("serve")
}
