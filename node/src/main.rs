//! `starlingd`: the Starling node daemon. See `starlingd --help` and the README.

use std::process::ExitCode;

use clap::Parser;
use starling_node::config::{Args, NodeConfig};

/// mimalloc: the KV paths allocate per request, and glibc's malloc cost about 8% of CPU there.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = Args::parse();
    let cfg = match NodeConfig::from_args(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("starlingd: {e:#}");
            return ExitCode::from(2);
        }
    };
    starling_node::logging::init(cfg.log_json);
    // One current-thread runtime: on 2 cores it costs about a quarter of the CPU per request of
    // a multi-threaded one (docs/CEILINGS.md); blocking work goes to the blocking pool.
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
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
