//! `starling dev --nodes N --dir DIR`: a local cluster in the foreground, for trying Starling.
//! Certificates, data and logs all live under DIR; Ctrl-C stops every node cleanly (SIGTERM).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::client::{self, Auth};

/// Options of `starling dev`.
#[derive(Debug, Clone)]
pub struct DevOptions {
    pub nodes: usize,
    pub dir: PathBuf,
    pub base_port: u16,
    pub http_base_port: u16,
    /// 0: no Kafka listeners.
    pub kafka_base_port: u16,
    pub insecure: bool,
}

struct Node {
    child: Child,
    listen: String,
    http: String,
    kafka: Option<String>,
    exited: bool,
}

/// Runs the cluster until Ctrl-C.
pub async fn run(opts: DevOptions) -> Result<()> {
    if opts.nodes == 0 || opts.nodes > 50 {
        bail!("--nodes {}: choose 1 to 50", opts.nodes);
    }
    std::fs::create_dir_all(&opts.dir)
        .with_context(|| format!("cannot create {}", opts.dir.display()))?;
    let dir = opts.dir.canonicalize().context("dev dir")?;
    let starlingd = find_starlingd()?;
    // Listen for Ctrl-C / SIGTERM from the very start: a signal that arrives while the nodes are
    // still starting must stop them too (a listener created later would miss it).
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot listen for SIGTERM")?;
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("cannot listen for SIGINT")?;
    let stop = async move {
        tokio::select! {
            _ = sigterm.recv() => {}
            _ = sigint.recv() => {}
        }
    };
    tokio::pin!(stop);
    let names: Vec<String> = (1..=opts.nodes).map(|i| format!("node{i}")).collect();
    let certs = dir.join("certs");
    if !opts.insecure {
        crate::cert_cmd::bootstrap(&certs, &names, &["client".to_string()])?;
    }
    let seeds: Vec<String> = (0..opts.nodes.min(3))
        .map(|i| format!("127.0.0.1:{}", opts.base_port + i as u16))
        .collect();
    let mut nodes = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let data = dir.join(name);
        std::fs::create_dir_all(&data)?;
        let log = std::fs::File::create(data.join("starlingd.log"))
            .with_context(|| format!("cannot create log in {}", data.display()))?;
        let listen = format!("127.0.0.1:{}", opts.base_port + i as u16);
        let http = format!("127.0.0.1:{}", opts.http_base_port + i as u16);
        let kafka = (opts.kafka_base_port != 0)
            .then(|| format!("127.0.0.1:{}", opts.kafka_base_port + i as u16));
        let mut cmd = Command::new(&starlingd);
        cmd.arg("--data-dir")
            .arg(&data)
            .args(["--listen", &listen, "--http", &http, "--seeds", &seeds.join(",")])
            .args(["--zone", &format!("z{}", i % 3 + 1)])
            .args(kafka.iter().flat_map(|k| ["--kafka", k.as_str()]))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if opts.insecure {
            cmd.arg("--insecure");
        } else {
            cmd.arg("--certs").arg(certs.join(name));
        }
        // Each node in its own process group: a terminal Ctrl-C reaches only `starling dev`,
        // which then stops the nodes in order.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd.spawn().with_context(|| format!("cannot start {}", starlingd.display()))?;
        nodes.push(Node { child, listen, http, kafka, exited: false });
    }
    let auth = if opts.insecure { Auth::Insecure } else { Auth::Certs(certs.join("client")) };
    let started = Instant::now();
    let converged = tokio::select! {
        r = wait_converged(&nodes[0].listen, &auth, opts.nodes, Duration::from_secs(30)) => r,
        _ = &mut stop => {
            stop_nodes(&mut nodes).await;
            return Ok(());
        }
    };
    println!();
    match converged {
        Ok(()) => println!(
            "Starling dev cluster: {} nodes converged in {:.1} s. Data, logs and certificates in {}",
            opts.nodes,
            started.elapsed().as_secs_f64(),
            dir.display()
        ),
        Err(e) => println!("warning: the cluster has not converged yet ({e:#}); see the logs in {}", dir.display()),
    }
    println!();
    for (i, n) in nodes.iter().enumerate() {
        println!(
            "  node{}  quic {}  status http://{}/{}  (pid {})",
            i + 1,
            n.listen,
            n.http,
            n.kafka.as_ref().map_or(String::new(), |k| format!("  kafka {k}")),
            n.child.id()
        );
    }
    println!();
    println!("Try, in another terminal:");
    if opts.insecure {
        println!("  export STARLING_NODE={} STARLING_INSECURE=true", nodes[0].listen);
    } else {
        println!(
            "  export STARLING_NODE={} STARLING_CERTS={}",
            nodes[0].listen,
            certs.join("client").display()
        );
    }
    println!("  starling status --watch                  # members, states, phi, convergence");
    println!("  curl -s http://{}/status                # the same as JSON", nodes[0].http);
    println!(
        "  starling kv put greeting hello           # stored on 3 replicas, quorum acknowledged"
    );
    println!("  starling kv get greeting --json          # value, version, replicas that answered");
    println!("  starling kv del greeting");
    println!(
        "  starling bench kv --nodes {}   # ops/s and latency",
        nodes.iter().map(|n| n.listen.as_str()).collect::<Vec<_>>().join(",")
    );
    if let Some(k) = &nodes[0].kafka {
        println!(
            "  starling topic create events --partitions 3 --replication {}",
            opts.nodes.min(3)
        );
        println!(
            "  # Kafka clients: bootstrap.servers={k}{}",
            if opts.insecure {
                String::new()
            } else {
                let c = certs.join("client");
                format!(
                    " security.protocol=ssl ssl.ca.location={0}/ca.pem ssl.certificate.location={0}/node.pem ssl.key.location={0}/node.key",
                    c.display()
                )
            }
        );
    }
    if let Some(last) = nodes.last() {
        println!(
            "  kill -9 {}                            # watch the others mark it down",
            last.child.id()
        );
        let leave_auth = if opts.insecure {
            String::new()
        } else {
            format!(" --certs {}", certs.join(names.last().map_or("", String::as_str)).display())
        };
        println!(
            "  starling --node {}{leave_auth} leave   # a graceful leave (with the node's own certificate)",
            last.listen
        );
    }
    println!();
    println!("Ctrl-C stops the cluster.");

    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = tick.tick() => {
                for (i, n) in nodes.iter_mut().enumerate() {
                    if !n.exited {
                        if let Ok(Some(status)) = n.child.try_wait() {
                            n.exited = true;
                            println!("node{} exited ({status}); its log: {}", i + 1, dir.join(format!("node{}", i + 1)).join("starlingd.log").display());
                        }
                    }
                }
            }
        }
    }
    stop_nodes(&mut nodes).await;
    println!(
        "stopped. Start again with the same command: nodes keep their identity in {}",
        dir.display()
    );
    Ok(())
}

/// SIGTERM to every node still running, then SIGKILL to those not gone within 10 s.
async fn stop_nodes(nodes: &mut [Node]) {
    println!("stopping {} nodes ...", nodes.len());
    for n in nodes.iter_mut().filter(|n| !n.exited) {
        let _ = kill(Pid::from_raw(n.child.id() as i32), Signal::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for n in nodes.iter_mut() {
        while n.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if n.child.try_wait().ok().flatten().is_none() {
            let _ = n.child.kill();
            let _ = n.child.wait();
        }
    }
}

async fn wait_converged(node: &str, auth: &Auth, n: usize, limit: Duration) -> Result<()> {
    let start = Instant::now();
    let client = client::connect(node, auth).await?;
    let mut last_err = None;
    while start.elapsed() < limit {
        match client.status().await {
            Ok(s) if s.converged && s.count("alive") == n && s.ring.nodes == n => {
                client.close().await;
                return Ok(());
            }
            Ok(s) => {
                last_err = Some(anyhow::anyhow!(
                    "{} of {n} alive, {} of {n} on the ring",
                    s.count("alive"),
                    s.ring.nodes
                ))
            }
            Err(e) => last_err = Some(e.into()),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    client.close().await;
    Err(last_err.unwrap_or_else(|| anyhow::anyhow!("timed out")))
}

/// `starlingd` next to this executable (as cargo and the install script place them), else PATH.
fn find_starlingd() -> Result<PathBuf> {
    if let Ok(me) = std::env::current_exe() {
        if let Some(dir) = me.parent() {
            let p = dir.join("starlingd");
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for d in std::env::split_paths(&path) {
        let p: PathBuf = Path::new(&d).join("starlingd");
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!("cannot find the starlingd binary next to starling or on PATH (build it: cargo build --release -p starling-node)")
}
