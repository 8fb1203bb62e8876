//! `starlingd`: the Starling node daemon. See `starlingd --help` and the README.

use std::process::ExitCode;

use clap::Parser;
use starling_node::config::{Args, NodeConfig};

/// mimalloc: the KV paths allocate per request, and glibc's malloc cost about 8% of CPU there.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // Transparent huge pages off for this process, before any thread starts. mimalloc asks for
    // them on its arenas, and memory it frees and takes again is then faulted back 2 MiB at a
    // time, each fault zeroing the whole huge page: `starling bench meta` (3 voters, 2 cores)
    // spent most of its snapshot encoding in the kernel's `clear_page`. Without them: committed
    // writes/s +20-27%, p99 22 ms -> 8-9 ms, node CPU per write -15%; the key-value paths
    // unchanged; topic reads +28-36% (two alternating runs each).
    #[cfg(target_os = "linux")]
    let thp = nix::sys::prctl::set_thp_disable(true);
    let args = Args::parse();
    let cfg = match NodeConfig::from_args(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("starlingd: {e:#}");
            return ExitCode::from(2);
        }
    };
    starling_node::logging::init(cfg.log_json);
    #[cfg(target_os = "linux")]
    if let Err(e) = thp {
        tracing::warn!("cannot turn transparent huge pages off for this process: {e}");
    }
    // One current-thread runtime: on 2 cores it costs about a quarter of the CPU per request of
    // a multi-threaded one (docs/CEILINGS.md); blocking work goes to the blocking pool.
    starling_node::storage::quiet_store_thread();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .on_thread_start(starling_node::storage::quiet_store_thread)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("starlingd: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(starling_node::node::run(cfg, starling_node::logging::shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("starlingd: {e:#}");
            ExitCode::FAILURE
        }
    }
}
