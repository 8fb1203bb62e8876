//! `starling meta ...`: the metadata service (znodes, sessions, watches, locks) and
//! `starling bench meta`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use hdrhistogram::Histogram;
use starling_client::meta::{
    MetaError, MetaReadAnswer, MetaSessionHandle, MetaWritten, Op, OpResult, ReadKind, Stat,
    WatchKind, Zxid,
};

use crate::client::{self, Auth, Client, ClientError};

#[derive(clap::Subcommand, Debug)]
pub enum MetaCmd {
    /// Print a znode's data (raw bytes; --json for the data and its stat).
    Get {
        path: String,
        #[arg(long)]
        json: bool,
    },
    /// Set a znode's data (any version, or only at --version V).
    Set {
        path: String,
        value: String,
        /// Only if the znode is at this version (a conditional set).
        #[arg(long)]
        version: Option<u32>,
        #[arg(long)]
        json: bool,
    },
    /// Conditional set: only if the znode is at --version V.
    Cas {
        path: String,
        value: String,
        #[arg(long)]
        version: u32,
        #[arg(long)]
        json: bool,
    },
    /// Create a znode (its parent must exist).
    Create {
        path: String,
        #[arg(default_value = "")]
        value: String,
        /// Deleted when this command's session ends: the command holds the session open until
        /// Ctrl-C.
        #[arg(long)]
        ephemeral: bool,
        /// Append the parent's counter as `%010d` to the name.
        #[arg(long)]
        sequential: bool,
        #[arg(long)]
        json: bool,
    },
    /// Delete a znode (it must have no children).
    Del {
        path: String,
        #[arg(long)]
        version: Option<u32>,
        #[arg(long)]
        json: bool,
    },
    /// List a znode's children.
    Ls {
        #[arg(default_value = "/")]
        path: String,
        #[arg(long)]
        json: bool,
    },
    /// Print a znode's stat (exit 4 if it does not exist).
    Stat {
        path: String,
        #[arg(long)]
        json: bool,
    },
    /// Wait for the next change of a znode (its data, or with --children its children) and
    /// print it.
    Watch {
        path: String,
        #[arg(long)]
        children: bool,
        /// Keep watching: print every change until Ctrl-C.
        #[arg(long)]
        forever: bool,
        #[arg(long)]
        json: bool,
    },
    /// Run CMD while holding the lock PATH (ZooKeeper's lock recipe: an ephemeral sequential
    /// znode under PATH; wait for the one just before ours to go).
    Lock {
        path: String,
        /// Session timeout: if this command dies, the lock is free after this long.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        session_timeout: Duration,
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// The metadata service as the node sees it: role, leader, epoch, zxids, sizes.
    Status {
        #[arg(long)]
        json: bool,
    },
}

fn meta_err(e: MetaError) -> anyhow::Error {
    match e {
        MetaError::NoNode(_) => ClientError::NotFound(e.to_string()).into(),
        MetaError::BadPath { .. } | MetaError::TooLarge(_) | MetaError::Reserved(_) => {
            ClientError::BadInput(e.to_string()).into()
        }
        e => anyhow!("{e}"),
    }
}

fn stat_json(s: &Stat) -> serde_json::Value {
    serde_json::json!({
        "czxid": s.czxid.to_string(), "mzxid": s.mzxid.to_string(), "pzxid": s.pzxid.to_string(),
        "ctime_ms": s.ctime_ms, "mtime_ms": s.mtime_ms, "version": s.version,
        "cversion": s.cversion, "ephemeral_owner": format!("{:#x}", s.ephemeral_owner),
        "data_length": s.data_length, "num_children": s.num_children,
    })
}

fn print_stat(s: &Stat) {
    println!("czxid          {}", s.czxid);
    println!("mzxid          {}", s.mzxid);
    println!("pzxid          {}", s.pzxid);
    println!("ctime_ms       {}", s.ctime_ms);
    println!("mtime_ms       {}", s.mtime_ms);
    println!("version        {}", s.version);
    println!("cversion       {}", s.cversion);
    println!("ephemeralOwner {:#x}", s.ephemeral_owner);
    println!("dataLength     {}", s.data_length);
    println!("numChildren    {}", s.num_children);
}

async fn write(client: &Client, session: u64, op: Op) -> Result<MetaWritten> {
    let w = client
        .meta_write(session, vec![op], false)
        .await
        .map_err(ClientError::from)?
        .map_err(meta_err)?;
    match w.results.first() {
        Some(OpResult::Failed(e)) => Err(meta_err(e.clone())),
        _ => Ok(w),
    }
}

async fn read(client: &Client, path: &str, kind: ReadKind) -> Result<MetaReadAnswer> {
    client.meta_read(path, kind).await.map_err(ClientError::from)?.map_err(meta_err)
}

fn print_written(w: &MetaWritten, json: bool, what: &str) {
    let (path, stat) = match w.results.first() {
        Some(OpResult::Created { path, stat }) => (Some(path.clone()), Some(*stat)),
        Some(OpResult::Set(stat)) => (None, Some(*stat)),
        _ => (None, None),
    };
    if json {
        let mut j = serde_json::json!({ "zxid": w.zxid.to_string() });
        if let Some(p) = &path {
            j["path"] = p.clone().into();
        }
        if let Some(s) = &stat {
            j["stat"] = stat_json(s);
        }
        println!("{j}");
    } else {
        match (path, stat) {
            (Some(p), _) => println!("created {p} (zxid {})", w.zxid),
            (None, Some(s)) => println!("{what} (version {}, zxid {})", s.version, w.zxid),
            _ => println!("{what} (zxid {})", w.zxid),
        }
    }
}

pub async fn run(node: &str, auth: &Auth, cmd: &MetaCmd) -> Result<()> {
    let client = client::connect(node, auth).await?;
    let r = run_with(&client, cmd).await;
    client.close().await;
    r
}

async fn run_with(client: &Client, cmd: &MetaCmd) -> Result<()> {
    match cmd {
        MetaCmd::Get { path, json } => {
            let a = read(client, path, ReadKind::Data).await?;
            if *json {
                let mut j = serde_json::json!({ "path": path, "zxid": a.zxid.to_string() });
                if let Some(s) = &a.stat {
                    j["stat"] = stat_json(s);
                }
                match String::from_utf8(a.data) {
                    Ok(s) => j["data"] = s.into(),
                    Err(e) => {
                        j["data_hex"] = e
                            .as_bytes()
                            .iter()
                            .map(|b| format!("{b:02x}"))
                            .collect::<String>()
                            .into()
                    }
                }
                println!("{j}");
            } else {
                use std::io::Write as _;
                let mut out = std::io::stdout();
                out.write_all(&a.data).context("write to standard output")?;
                if !a.data.ends_with(b"\n") && !a.data.is_empty() {
                    out.write_all(b"\n").ok();
                }
            }
        }
        MetaCmd::Set { path, value, version, json } => {
            let op = Op::SetData {
                path: path.clone(),
                data: value.as_bytes().to_vec(),
                version: *version,
            };
            print_written(&write(client, 0, op).await?, *json, &format!("set {path}"));
        }
        MetaCmd::Cas { path, value, version, json } => {
            let op = Op::SetData {
                path: path.clone(),
                data: value.as_bytes().to_vec(),
                version: Some(*version),
            };
            print_written(&write(client, 0, op).await?, *json, &format!("set {path}"));
        }
        MetaCmd::Create { path, value, ephemeral, sequential, json } => {
            let session = if *ephemeral {
                Some(MetaSessionHandle::open(client, 10_000).await.map_err(ClientError::from)?)
            } else {
                None
            };
            let op = Op::Create {
                path: path.clone(),
                data: value.as_bytes().to_vec(),
                ephemeral: *ephemeral,
                sequential: *sequential,
            };
            let w = write(client, session.as_ref().map_or(0, |s| s.id()), op).await?;
            print_written(&w, *json, "created");
            if let Some(s) = session {
                if !*json {
                    println!(
                        "holding the session {:#x} open; Ctrl-C ends it and deletes the znode",
                        s.id()
                    );
                }
                let _ = tokio::signal::ctrl_c().await;
                s.close().await.map_err(ClientError::from)?;
            }
        }
        MetaCmd::Del { path, version, json } => {
            let w = write(client, 0, Op::Delete { path: path.clone(), version: *version }).await?;
            print_written(&w, *json, &format!("deleted {path}"));
        }
        MetaCmd::Ls { path, json } => {
            let a = read(client, path, ReadKind::Children).await?;
            if *json {
                println!(
                    "{}",
                    serde_json::json!({ "path": path, "children": a.children, "zxid": a.zxid.to_string() })
                );
            } else {
                for c in a.children {
                    println!("{c}");
                }
            }
        }
        MetaCmd::Stat { path, json } => {
            let a = read(client, path, ReadKind::Stat).await?;
            let Some(s) = a.stat else {
                return Err(ClientError::NotFound(format!("no znode {path}")).into());
            };
            if *json {
                println!(
                    "{}",
                    serde_json::json!({ "path": path, "stat": stat_json(&s), "zxid": a.zxid.to_string() })
                );
            } else {
                print_stat(&s);
            }
        }
        MetaCmd::Watch { path, children, forever, json } => {
            let kind = if *children { WatchKind::Children } else { WatchKind::Data };
            let a = read(client, path, ReadKind::Stat).await?;
            let (mut since, mut exists) = (a.zxid, a.stat.is_some());
            loop {
                let w = client
                    .meta_watch(path, kind, since, exists, Duration::from_secs(4))
                    .await
                    .map_err(ClientError::from)?
                    .map_err(meta_err)?;
                since = since.max(w.zxid);
                let Some(event) = w.event else { continue };
                if *json {
                    println!(
                        "{}",
                        serde_json::json!({ "path": path, "event": format!("{event:?}"), "zxid": w.zxid.to_string() })
                    );
                } else {
                    println!("{event:?} {path} (zxid {})", w.zxid);
                }
                if !*forever {
                    break;
                }
                let a = read(client, path, ReadKind::Stat).await?;
                since = since.max(a.zxid);
                exists = a.stat.is_some();
            }
        }
        MetaCmd::Lock { path, session_timeout, cmd } => {
            let timeout_ms = session_timeout.as_millis().min(u128::from(u32::MAX)) as u32;
            let session =
                MetaSessionHandle::open(client, timeout_ms).await.map_err(ClientError::from)?;
            let mine = acquire_lock(client, &session, path).await?;
            eprintln!("starling: holding lock {path} as {mine}");
            let status = tokio::process::Command::new(&cmd[0])
                .args(&cmd[1..])
                .status()
                .await
                .with_context(|| format!("cannot run {:?}", cmd[0]));
            session.close().await.map_err(ClientError::from)?;
            let status = status?;
            if !status.success() {
                bail!("{:?} exited with {status}", cmd[0]);
            }
        }
        MetaCmd::Status { json } => {
            let s = client.status().await.map_err(ClientError::from)?;
            let Some(m) = s.meta else {
                bail!("this node runs no metadata service");
            };
            if *json {
                println!("{}", serde_json::to_string_pretty(&m)?);
            } else {
                println!("role        {}{}", m.role, if m.synced { "" } else { " (not synced)" });
                println!("voter       {} ({} voters)", m.voter, m.voters.len());
                if !m.waiting_for.is_empty() {
                    println!("waiting for {}", m.waiting_for.join(", "));
                }
                println!("leader      {}", m.leader.as_deref().unwrap_or("none"));
                println!("epoch       {} (accepted {})", m.epoch, m.accepted_epoch);
                println!(
                    "zxid        last {}, committed {}, applied {}",
                    m.last_zxid, m.committed_zxid, m.applied_zxid
                );
                println!(
                    "log         {} entries; snapshot at {} ({} bytes)",
                    m.log_entries, m.snapshot_zxid, m.snapshot_bytes
                );
                println!(
                    "tree        {} znodes, {} sessions, {} ephemerals, {} watches",
                    m.znodes, m.sessions, m.ephemerals, m.watches
                );
            }
        }
    }
    Ok(())
}

/// ZooKeeper's lock recipe without the herd effect: create `PATH/lock-` ephemeral and
/// sequential; if it is the lowest child, the lock is ours; else wait for the child just before
/// it to go, and look again. Returns our znode.
async fn acquire_lock(client: &Client, session: &MetaSessionHandle, path: &str) -> Result<String> {
    // The lock's znode and its ancestors, created if missing (`mkdir -p`; another client may
    // create them first).
    let mut prefix = String::new();
    for seg in path.split('/').filter(|s| !s.is_empty()) {
        prefix.push('/');
        prefix.push_str(seg);
        let op = Op::Create {
            path: prefix.clone(),
            data: Vec::new(),
            ephemeral: false,
            sequential: false,
        };
        let w = client
            .meta_write(0, vec![op], false)
            .await
            .map_err(ClientError::from)?
            .map_err(meta_err)?;
        if let Some(OpResult::Failed(e)) = w.results.first() {
            if !matches!(e, MetaError::NodeExists(_)) {
                return Err(meta_err(e.clone()));
            }
        }
    }
    let op = Op::Create {
        path: format!("{path}/lock-"),
        data: Vec::new(),
        ephemeral: true,
        sequential: true,
    };
    let w = write(client, session.id(), op).await?;
    let Some(OpResult::Created { path: mine, .. }) = w.results.first().cloned() else {
        bail!("the node did not say which znode it created");
    };
    let my_name = mine.rsplit('/').next().unwrap_or_default().to_string();
    loop {
        let a = read(client, path, ReadKind::Children).await?;
        let mut kids: Vec<&String> = a.children.iter().filter(|c| c.starts_with("lock-")).collect();
        kids.sort();
        let Some(pos) = kids.iter().position(|c| **c == my_name) else {
            bail!("our lock znode {mine} is gone (the session expired?)");
        };
        if pos == 0 {
            return Ok(mine);
        }
        let before = format!("{path}/{}", kids[pos - 1]);
        let mut since: Zxid = a.zxid;
        loop {
            let w = client
                .meta_watch(&before, WatchKind::Data, since, true, Duration::from_secs(4))
                .await
                .map_err(ClientError::from)?
                .map_err(meta_err)?;
            since = since.max(w.zxid);
            if w.event.is_some() {
                break;
            }
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct BenchMetaArgs {
    /// Nodes to send requests to (rotating).
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:7400")]
    nodes: Vec<String>,
    /// Writes in total.
    #[arg(long, default_value_t = 20_000)]
    ops: u64,
    /// Clients writing at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Bytes of data per write.
    #[arg(long, default_value_t = 1024)]
    value_size: usize,
    /// Synchronous single-client writes measured after the concurrent run (0: none).
    #[arg(long, default_value_t = 1000)]
    sync_ops: u64,
    /// Every write creates a new znode (default: half creates, then sets of them).
    #[arg(long)]
    creates_only: bool,
    #[arg(long)]
    quiet: bool,
}

/// `starling bench meta`: committed writes/s with C concurrent clients (creates, then sets of
/// the znodes created), and single-client synchronous write latency.
pub async fn bench(auth: &Auth, a: &BenchMetaArgs) -> Result<()> {
    if a.concurrency == 0 || a.ops == 0 {
        return Err(
            ClientError::BadInput("--ops and --concurrency must be at least 1".into()).into()
        );
    }
    if a.value_size > starling_wire::meta::MAX_DATA {
        return Err(ClientError::BadInput(format!(
            "--value-size: the limit is {} bytes",
            starling_wire::meta::MAX_DATA
        ))
        .into());
    }
    let client = Client::connect(&a.nodes, auth).await.map_err(ClientError::from)?;
    client.connect_all().await.map_err(ClientError::from)?;
    let root = format!("/bench-{:08x}", rand_u32());
    write(
        &client,
        0,
        Op::Create { path: root.clone(), data: Vec::new(), ephemeral: false, sequential: false },
    )
    .await?;
    let value = Arc::new(vec![b'v'; a.value_size]);
    let next = Arc::new(AtomicU64::new(0));
    let (done, errors) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    // Half creates, half sets of the znodes created.
    let creates = if a.creates_only { a.ops } else { a.ops.div_ceil(2) };
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..a.concurrency {
        let (client, value, next, done, errors, root) = (
            client.clone(),
            value.clone(),
            next.clone(),
            done.clone(),
            errors.clone(),
            root.clone(),
        );
        let ops = a.ops;
        workers.push(tokio::spawn(async move {
            let mut hist = crate::bench::histogram();
            let mut first_error = None;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= ops {
                    break;
                }
                let op = if i < creates {
                    Op::Create {
                        path: format!("{root}/n{i:010}"),
                        data: value.to_vec(),
                        ephemeral: false,
                        sequential: false,
                    }
                } else {
                    Op::SetData {
                        path: format!("{root}/n{:010}", (i - creates) % creates),
                        data: value.to_vec(),
                        version: None,
                    }
                };
                let t = Instant::now();
                let r = write(&client, 0, op).await;
                let _ = hist.record((t.elapsed().as_micros() as u64).max(1));
                if let Err(e) = r {
                    errors.fetch_add(1, Ordering::Relaxed);
                    first_error.get_or_insert_with(|| e.to_string());
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            (hist, first_error)
        }));
    }
    let progress = crate::bench::Progress::start(a.ops, "writes", a.quiet, done.clone());
    let (hist, first_error) = crate::bench::join(workers).await?;
    let elapsed = started.elapsed();
    progress.finish();
    let n = done.load(Ordering::Relaxed);
    let errs = errors.load(Ordering::Relaxed);
    let us = |h: &Histogram<u64>, q: f64| Duration::from_micros(h.value_at_quantile(q));
    println!(
        "bench meta: {} nodes, {n} writes ({errs} errors), {} clients, {} B data",
        a.nodes.len(),
        a.concurrency,
        a.value_size
    );
    println!(
        "  {:.0} committed writes/s over {:.2} s; latency p50 {:?}, p99 {:?}, max {:?}",
        (n - errs) as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64(),
        us(&hist, 0.5),
        us(&hist, 0.99),
        Duration::from_micros(hist.max())
    );
    if let Some(e) = first_error {
        println!("  first error: {e}");
    }
    if a.sync_ops > 0 {
        let mut h = crate::bench::histogram();
        let mut errs = 0u64;
        let path = format!("{root}/n{:010}", 0);
        for _ in 0..a.sync_ops {
            let t = Instant::now();
            let op = Op::SetData { path: path.clone(), data: value.to_vec(), version: None };
            if write(&client, 0, op).await.is_err() {
                errs += 1;
            }
            let _ = h.record((t.elapsed().as_micros() as u64).max(1));
        }
        println!(
            "  single client, synchronous: {} writes ({errs} errors); latency p50 {:?}, p99 {:?}, max {:?}",
            a.sync_ops,
            us(&h, 0.5),
            us(&h, 0.99),
            Duration::from_micros(h.max())
        );
    }
    client.close().await;
    if errs == n {
        bail!("every write failed");
    }
    Ok(())
}

fn rand_u32() -> u32 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    (t.as_nanos() as u32) ^ std::process::id().rotate_left(16)
}
