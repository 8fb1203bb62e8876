//! Runs the transport benchmark once on a `current_thread` runtime (or `multi_thread` with
//! `--multi-thread`): `cargo run --release -p starling-node --example transport_bench -- \
//! [requests] [in_flight] [payload]`.

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let multi = args.iter().any(|a| a == "--multi-thread");
    let nums: Vec<u64> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let requests = nums.first().copied().unwrap_or(1_000_000);
    let in_flight = nums.get(1).copied().unwrap_or(64) as usize;
    let payload = nums.get(2).copied().unwrap_or(100) as usize;
    let rt = if multi {
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?
    } else {
        tokio::runtime::Builder::new_current_thread().enable_all().build()?
    };
    let report =
        rt.block_on(starling_node::bench::transport_bench(requests, in_flight, payload))?;
    println!("{} runtime: {report}", if multi { "multi_thread" } else { "current_thread" });
    Ok(())
}
