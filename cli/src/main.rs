//! `starling`: the Starling command line. See `starling --help` and the README.

mod bench;
mod cert_cmd;
mod client;
mod dev;
mod k8s;
mod kv;
mod meta;
mod repair;
mod status;
mod topic;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand};
use client::{Auth, Client, ClientError};
use starling_wire::Leave;

/// mimalloc: the KV paths allocate per request, and glibc's malloc cost about 8% of CPU there.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(name = "starling", version, about = "Command line of the Starling data store")]
struct Cli {
    /// Node to talk to (QUIC address).
    #[arg(long, global = true, env = "STARLING_NODE", default_value = "127.0.0.1:7400")]
    node: String,
    /// Client certificate dir (ca.pem, node.pem, node.key from `starling cert issue --name client`).
    #[arg(long, global = true, env = "STARLING_CERTS")]
    certs: Option<PathBuf>,
    /// Talk to a node started with --insecure.
    #[arg(long, global = true, env = "STARLING_INSECURE")]
    insecure: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Members, their state and phi, and whether the node has converged.
    Status {
        /// Refresh every second until Ctrl-C.
        #[arg(long)]
        watch: bool,
        /// Print the status JSON.
        #[arg(long)]
        json: bool,
    },
    /// Ask the node to leave the cluster gracefully and stop (an operator action: needs a node
    /// certificate, e.g. `--certs` with that node's own certificate dir).
    Leave {
        /// Return only once the node has handed its data over and stopped (exit 1 if the leave
        /// was aborted or did not finish within --timeout).
        #[arg(long)]
        wait: bool,
        /// How long --wait waits, e.g. 30m.
        #[arg(long, default_value = "1h", requires = "wait", value_parser = humantime::parse_duration)]
        timeout: Duration,
        /// For a Kubernetes `preStop` hook: leave only if this pod's StatefulSet was scaled down
        /// below it (its ordinal is at or above `spec.replicas`, read from the API server with
        /// the pod's service account). Otherwise, or if the API server cannot tell, do nothing
        /// and exit 0.
        #[arg(long, requires = "wait")]
        if_scaled_down: bool,
        #[command(flatten)]
        k8s: k8s::K8sArgs,
    },
    /// Create the cluster CA and node/client certificates.
    #[command(subcommand)]
    Cert(CertCmd),
    /// Start a local N-node cluster in the foreground (Ctrl-C stops it).
    Dev {
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Folder for certificates, data and logs.
        #[arg(long, default_value = ".starling-dev")]
        dir: PathBuf,
        #[arg(long, default_value_t = 7400)]
        base_port: u16,
        #[arg(long, default_value_t = 7480)]
        http_base_port: u16,
        /// First node's Kafka port (node i listens on this + i - 1); 0 turns Kafka off.
        #[arg(long, default_value_t = 9092)]
        kafka_base_port: u16,
    },
    /// Read and write the key-value store.
    #[command(subcommand)]
    Kv(kv::KvCmd),
    /// The metadata service: znodes, sessions, watches, locks (ZooKeeper's data model).
    #[command(subcommand)]
    Meta(meta::MetaCmd),
    /// Topics: Kafka-style replicated partition logs.
    #[command(subcommand)]
    Topic(topic::TopicCmd),
    /// Anti-entropy now: compare every range this node replicates with its other replicas
    /// (Merkle trees) and copy what differs both ways; prints a summary.
    Repair {
        /// Only the ranges shared with this peer (a node id or its first 8 hex digits).
        #[arg(long = "with")]
        with: Option<String>,
        /// Only the ranges that overlap the tokens `(START, END]`, e.g. `--range 0:4611686018427387904`.
        #[arg(long)]
        range: Option<String>,
        /// Give up waiting after this long, e.g. 2h.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        timeout: Duration,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Drop the records of ranges this node no longer replicates (they moved to nodes that
    /// joined); nodes also do it by themselves once the ring is stable (`--cleanup-after`).
    Cleanup {
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Take a dead node off the ring for good (its disk is gone, it will not come back): the
    /// nodes that take over its ranges stream them from the surviving replicas, so every key is
    /// back to its full number of copies. Refused while the node is up (a live node leaves with
    /// `starling leave`). Run again to resume a removal that failed. An operator action: run it
    /// with a node certificate, as `starling leave`.
    Removenode {
        /// The dead node's id (or its first 8 hex digits), as `starling status` lists it.
        node_id: String,
        /// Give up waiting after this long, e.g. 2h.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        timeout: Duration,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Benchmarks that print figures.
    #[command(subcommand)]
    Bench(BenchCmd),
}

#[derive(Subcommand, Debug)]
enum CertCmd {
    /// Create the cluster CA (ca.pem, ca.key) in --out.
    Init {
        #[arg(long)]
        out: PathBuf,
        /// Keep an existing CA instead of failing.
        #[arg(long)]
        if_missing: bool,
    },
    /// Issue a node or client certificate signed by the CA in --ca.
    Issue {
        #[arg(long)]
        ca: PathBuf,
        #[arg(long)]
        name: String,
        #[arg(long)]
        out: PathBuf,
        /// Extra DNS names or IP addresses for the certificate (node certificates).
        #[arg(long)]
        san: Vec<String>,
        /// `node` (runs starlingd, sends peer RPCs) or `client` (kv, status: the client API only).
        #[arg(long, default_value = "node")]
        role: starling_net::cert::Role,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = starling_net::cert::LEAF_VALIDITY_DAYS)]
        days: i64,
        /// Keep an existing certificate in --out instead of failing.
        #[arg(long)]
        if_missing: bool,
    },
    /// Idempotently create OUT/ca, OUT/<name> (a node certificate) for each of --names and
    /// OUT/<name> (a client certificate) for each of --clients.
    Bootstrap {
        #[arg(long)]
        out: PathBuf,
        /// Node names (e.g. node1,node2,node3).
        #[arg(long, value_delimiter = ',', required = true)]
        names: Vec<String>,
        /// Client names (e.g. client).
        #[arg(long, value_delimiter = ',')]
        clients: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
enum BenchCmd {
    /// RPCs/s and CPU per RPC between two local QUIC endpoints with mutual TLS.
    Transport {
        #[arg(long, default_value_t = 1_000_000)]
        requests: u64,
        #[arg(long, default_value_t = 64)]
        in_flight: usize,
        #[arg(long, default_value_t = 100)]
        payload: usize,
    },
    /// Ops/s and latency of KV requests against running nodes.
    Kv(kv::BenchKvArgs),
    /// Committed metadata writes/s with concurrent clients, and synchronous write latency.
    Meta(meta::BenchMetaArgs),
    /// Produce and consume msgs/s, MB/s and produce latency against running nodes.
    Topic(topic::BenchTopicArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if std::env::var_os("STARLING_LOG").is_some() {
        starling_net::logging::init(false);
    }
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("starling: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("starling: {e:#}");
            match e.downcast_ref::<ClientError>() {
                Some(c) => ExitCode::from(c.exit_code()),
                None => ExitCode::FAILURE,
            }
        }
    }
}

/// After a `leave`: polls the node's status until it stops answering (it has handed its data over
/// and exited). Fails if its ring status goes back to `normal` (the leave was aborted: the node
/// logs why) or after `limit`.
async fn wait_until_stopped(client: &Client, node: &str, limit: Duration) -> Result<()> {
    let started = tokio::time::Instant::now();
    let mut seen_leaving = false;
    let mut unreachable = 0;
    loop {
        match client.status().await {
            Ok(s) => {
                unreachable = 0;
                match s.ring.status.as_deref() {
                    Some("leaving") => seen_leaving = true,
                    Some("normal") if seen_leaving => anyhow::bail!(
                        "{node} aborted its leave and stays in the cluster (its log says why)"
                    ),
                    Some("normal") if started.elapsed() > Duration::from_secs(30) => {
                        anyhow::bail!("{node} did not start leaving within 30 s (its log says why)")
                    }
                    _ => {}
                }
            }
            Err(
                starling_client::Error::Unreachable { .. }
                | starling_client::Error::NoAnswer { .. },
            ) => {
                // Twice in a row, so one lost request is not taken for a stopped node.
                unreachable += 1;
                if unreachable == 2 {
                    println!("{node} has left the cluster and stopped");
                    return Ok(());
                }
            }
            Err(e) => return Err(ClientError::from(e).into()),
        }
        if started.elapsed() > limit {
            anyhow::bail!("{node} is still leaving after {limit:?} (--timeout)");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn auth(cli: &Cli) -> Result<Auth> {
    match (&cli.certs, cli.insecure) {
        (Some(_), true) => anyhow::bail!("--certs and --insecure exclude each other"),
        (Some(d), false) => Ok(Auth::Certs(d.clone())),
        (None, true) => Ok(Auth::Insecure),
        (None, false) => anyhow::bail!(
            "no client certificate: pass --certs DIR (or STARLING_CERTS) from `starling cert issue --name client`, or --insecure for a node started with --insecure"
        ),
    }
}

async fn run(cli: Cli) -> Result<()> {
    match &cli.cmd {
        Cmd::Status { watch, json } => {
            let client = client::connect(&cli.node, &auth(&cli)?).await?;
            loop {
                let s = client.status().await.map_err(ClientError::from)?;
                if *json {
                    println!("{}", serde_json::to_string_pretty(&s)?);
                } else {
                    if *watch {
                        print!("\x1b[2J\x1b[H");
                    }
                    print!("{}", status::render(&s));
                }
                if !*watch {
                    break;
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = tokio::signal::ctrl_c() => break,
                }
            }
            client.close().await;
        }
        Cmd::Leave { wait, timeout, if_scaled_down, k8s } => {
            let limit = *timeout;
            if *if_scaled_down {
                let args = k8s.clone();
                let asked = tokio::task::spawn_blocking(move || k8s::scaled_down(&args)).await;
                match asked {
                    Ok(Ok(s)) => println!(
                        "pod {} has ordinal {} and statefulset {}/{} wants {} replicas: scaled down, leaving the cluster",
                        s.pod, s.ordinal, s.namespace, s.statefulset, s.replicas
                    ),
                    Ok(Err(why)) => {
                        println!("not leaving: {why}");
                        return Ok(());
                    }
                    Err(e) => {
                        println!("not leaving: the API server lookup failed: {e}");
                        return Ok(());
                    }
                }
            }
            let client = client::connect(&cli.node, &auth(&cli)?).await?;
            client.call_node(0, Leave).await.map_err(ClientError::from)?;
            println!("{} is leaving the cluster and will stop", cli.node);
            if *wait {
                wait_until_stopped(&client, &cli.node, limit).await?;
            }
            client.close().await;
        }
        Cmd::Cleanup { json } => repair::cleanup(&cli.node, &auth(&cli)?, *json).await?,
        Cmd::Removenode { node_id, timeout, json } => {
            repair::remove_node(&cli.node, &auth(&cli)?, node_id, *timeout, *json).await?
        }
        Cmd::Repair { with, range, timeout, json } => {
            let (with, range) = (with.clone(), range.clone());
            repair::run(&cli.node, &auth(&cli)?, with, range, *timeout, *json).await?;
        }
        Cmd::Cert(c) => match c {
            CertCmd::Init { out, if_missing } => cert_cmd::init(out, *if_missing)?,
            CertCmd::Issue { ca, name, out, san, role, days, if_missing } => {
                cert_cmd::issue(&cert_cmd::IssueOptions {
                    ca,
                    name,
                    out,
                    sans: san,
                    role: *role,
                    days: *days,
                    if_missing: *if_missing,
                })?
            }
            CertCmd::Bootstrap { out, names, clients } => cert_cmd::bootstrap(out, names, clients)?,
        },
        Cmd::Dev { nodes, dir, base_port, http_base_port, kafka_base_port } => {
            dev::run(dev::DevOptions {
                nodes: *nodes,
                dir: dir.clone(),
                base_port: *base_port,
                http_base_port: *http_base_port,
                kafka_base_port: *kafka_base_port,
                insecure: cli.insecure,
            })
            .await?
        }
        Cmd::Kv(c) => kv::run(&cli.node, &auth(&cli)?, c).await?,
        Cmd::Bench(BenchCmd::Kv(args)) => kv::bench(&auth(&cli)?, args).await?,
        Cmd::Meta(c) => meta::run(&cli.node, &auth(&cli)?, c).await?,
        Cmd::Bench(BenchCmd::Meta(args)) => meta::bench(&auth(&cli)?, args).await?,
        Cmd::Topic(c) => topic::run(&cli.node, &auth(&cli)?, c).await?,
        Cmd::Bench(BenchCmd::Topic(args)) => topic::bench(&auth(&cli)?, args).await?,
        Cmd::Bench(BenchCmd::Transport { requests, in_flight, payload }) => {
            let report = starling_net::bench::transport_bench(*requests, *in_flight, *payload)
                .await
                .map_err(|e| anyhow::anyhow!("transport bench: {e}"))?;
            println!("{report}");
            // The reference measured on a machine like this one (2 cores, loopback, quinn 0.11,
            // rustls 0.23, mutual TLS, 100-byte request and response, pipelined).
            println!(
                "ceiling (docs/CEILINGS.md): 64 in flight ~487,000 req/s at 2.4 µs CPU/request; 16: ~166,000 at 7 µs; 4: ~42,000 at 21 µs; 1: ~11,000 at 81 µs"
            );
        }
    }
    Ok(())
}
