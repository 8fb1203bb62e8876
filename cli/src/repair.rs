//! `starling repair`: anti-entropy now, from one node, with a progress bar and a summary.

use std::time::Duration;

use anyhow::Result;
use starling_client::ClientConfig;
use starling_wire::repair::{RepairSummary, RunRepair};

use crate::client::{self, Auth, Client, ClientError};

/// Runs a repair of every range `node` replicates (only those shared with `peer`, if given).
/// Fails (exit 1) if a peer could not be repaired with.
pub async fn run(
    node: &str,
    auth: &Auth,
    peer: Option<String>,
    range: Option<String>,
    timeout: Duration,
    json: bool,
) -> Result<()> {
    let range = match range.as_deref() {
        None => None,
        Some(s) => Some(parse_range(s)?),
    };
    let config = ClientConfig { request_timeout: timeout, ..ClientConfig::default() };
    let caller = Client::with_config(&[node], auth, config).await.map_err(ClientError::from)?;
    let watcher = client::connect(node, auth).await?;
    let bar = if json || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(0)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {bar:30} {pos}/{len} sessions  {elapsed}  {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let call = caller.call_node(0, RunRepair { peer, range });
    tokio::pin!(call);
    let summary = loop {
        tokio::select! {
            r = &mut call => break r.map_err(ClientError::from)?,
            _ = tokio::time::sleep(Duration::from_millis(300)) => {
                if let Ok(s) = watcher.status().await {
                    if let Some(p) = s.repair.and_then(|r| r.running) {
                        bar.set_length(p.sessions_total);
                        bar.set_position(p.sessions_done);
                        bar.set_message(format!(
                            "{} keys received, {} sent, {}",
                            p.keys_received, p.keys_sent, bytes(p.bytes)
                        ));
                    }
                }
            }
        }
    };
    bar.finish_and_clear();
    caller.close().await;
    watcher.close().await;
    if json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print!("{}", render(node, &summary));
    }
    if !summary.failed.is_empty() {
        anyhow::bail!(
            "{} peer(s) could not be repaired with; run `starling repair` again once they are up",
            summary.failed.len()
        );
    }
    Ok(())
}

/// `starling cleanup`: the node drops the records of ranges it no longer replicates.
pub async fn cleanup(node: &str, auth: &Auth, json: bool) -> Result<()> {
    let client = client::connect(node, auth).await?;
    let s = client
        .call_node(0, starling_wire::repair::RunCleanup {})
        .await
        .map_err(ClientError::from)?;
    client.close().await;
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        println!(
            "{node} dropped {} records of the {} ranges it no longer replicates",
            s.records, s.ranges
        );
    }
    Ok(())
}

/// `starling removenode`: takes a dead node off the ring; its ranges are streamed from the
/// surviving replicas to the nodes that take them over. A spinner runs while it does.
pub async fn remove_node(
    node: &str,
    auth: &Auth,
    target: &str,
    timeout: Duration,
    json: bool,
) -> Result<()> {
    let config = ClientConfig { request_timeout: timeout, ..ClientConfig::default() };
    let client = Client::with_config(&[node], auth, config).await.map_err(ClientError::from)?;
    let bar = if json || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new_spinner()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {elapsed} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    bar.set_message(format!("removing {target}: its ranges stream to their new replicas"));
    bar.enable_steady_tick(Duration::from_millis(200));
    let r = client
        .call_node(0, starling_wire::repair::RemoveNode { node: target.to_owned() })
        .await
        .map_err(ClientError::from);
    bar.finish_and_clear();
    client.close().await;
    let s = r?;
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        let records: u64 = s.streamed.iter().map(|(_, n)| n).sum();
        println!(
            "removed {} in {:.1} s: {} node(s) took over its ranges, {records} records streamed",
            s.node,
            s.duration_ms as f64 / 1000.0,
            s.streamed.len()
        );
        for (id, n) in &s.streamed {
            println!("  {}: {n} records", &id[..id.len().min(8)]);
        }
    }
    Ok(())
}

/// `START:END`, tokens in decimal: the ring's `(START, END]`.
fn parse_range(s: &str) -> Result<starling_wire::repair::TokenRange> {
    let bad = || {
        ClientError::BadInput(format!(
            "--range {s:?}: expected START:END, tokens from 0 to {} (the range (START, END])",
            u64::MAX
        ))
    };
    let (a, b) = s.split_once(':').ok_or_else(bad)?;
    let start = a.trim().parse().map_err(|_| bad())?;
    let end = b.trim().parse().map_err(|_| bad())?;
    Ok(starling_wire::repair::TokenRange { start, end })
}

fn bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

/// The human summary of a run.
pub fn render(node: &str, s: &RepairSummary) -> String {
    let mut out = format!(
        "repaired {} range(s) of {node} in {:.1} s: {} differed, {} complete (every replica took part)\n",
        s.ranges,
        s.duration_ms as f64 / 1000.0,
        s.ranges_differing,
        s.ranges_completed
    );
    out.push_str(&format!(
        "  {} session(s); keys received {}, sent {}; {} sent, {} received\n",
        s.sessions,
        s.keys_received,
        s.keys_sent,
        bytes(s.bytes_sent),
        bytes(s.bytes_received)
    ));
    for (peer, why) in &s.failed {
        out.push_str(&format!("  failed with {}: {why}\n", &peer[..peer.len().min(8)]));
    }
    out
}
