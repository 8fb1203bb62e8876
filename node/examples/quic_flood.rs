//! Floods a node with QUIC handshakes that never finish (see
//! `starling_node::bench::handshake_flood`), in bursts:
//! `cargo run --release -p starling-node --example quic_flood -- ADDR [PER_BURST] [BURSTS] [INTERVAL_MS]`
//! (defaults: 1500 handshakes a burst, 1 burst, 2000 ms apart). Used by `scripts/test-quic-flood`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: quic_flood ADDR [PER_BURST] [BURSTS] [INTERVAL_MS]";
    let target: SocketAddr = args.first().context(usage)?.parse().context(usage)?;
    let num = |i: usize, default: u64| -> anyhow::Result<u64> {
        args.get(i).map_or(Ok(default), |a| a.parse().context(usage))
    };
    let per_burst = num(1, 1500)? as usize;
    let bursts = num(2, 1)?;
    let interval = Duration::from_millis(num(3, 2000)?);
    for burst in 0..bursts {
        let started = Instant::now();
        let sent = starling_node::bench::handshake_flood(target, per_burst)?;
        println!("burst {}: {sent} handshakes started, none finished", burst + 1);
        if burst + 1 < bursts {
            std::thread::sleep(interval.saturating_sub(started.elapsed()));
        }
    }
    Ok(())
}
