//! How a node takes its place on the ring, and gives it up.
//!
//! **Join.** A node with no tokens waits until gossip has converged, then until every alive token-less member with a lower id has
//! taken its tokens (so nodes started together choose one at a time, each seeing the others'
//! choice). Only a node that may **found** a cluster (it was started with no seeds, or it is one of
//! its own seeds: Cassandra's rule) takes tokens on an empty ring, and it does so once it has heard
//! of nobody for a second; any other node waits, however long, for a ring to exist, and says that
//! it cannot reach its seeds: a node cut off from its seeds never starts a cluster of its own.
//! It allocates `V` tokens against the future ring ([`starling_ring::Ring::allocate_tokens`]),
//! stores them, and publishes them with status `joining` (`normal` directly for the first node).
//! From then on coordinators send it the writes of the ranges it will own (pending ranges). Once
//! every alive member reports the same ring digest, and one write timeout later (writes that were
//! in flight before have finished), it streams each pending range from the current replicas — all
//! that are up, at least a quorum, merged by version, so every acknowledged write is among them —
//! and then announces `normal`. The streams are anti-entropy sessions, which move only what this
//! node lacks: a restart during the join (the status is stored) or a failed source resumes it.
//!
//! **Removal** (`starling removenode`, [`remove_node`]): a dead node is announced leaving by
//! another, the nodes that gain its ranges stream them the same way, then it is announced
//! removed; every node keeps and gossips the removals ([`keep_removals`]).
//!
//! **Leave** (`starling leave`): refused if fewer than `N` other nodes would stay. Status
//! `leaving`; once the ring is agreed, the node counts again (other nodes may have been told to
//! leave at the same time) and aborts if fewer than `N` others stay; otherwise it pushes every
//! record of its ranges to the replicas that gain them (in `starlingd`, each of them pulls its
//! share over sync sessions instead, so a leave asked again after a failure resumes), then
//! announces `left` through gossip; if that handover fails the leave is aborted and the node
//! stays `normal`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use starling_ring::{token_of, NodeId, NodeStatus, Range};
use starling_wire::repair::{RemoveSummary, RepairRequest, RepairResponse, RepairStep};
use starling_wire::{Call, ErrorCode, Page, Record, ReplicaScan, ReplicaWrite, Response};
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

use super::view::{format_ids, format_tokens, keys, parse_ids};
use super::Kv;
use crate::driver::DriverCommand;
use crate::status::Status;
use crate::storage::Storage;
use crate::transport::Transport;

const META_TOKENS: &str = "tokens";
/// Local metadata: the nodes removed with `starling removenode` this node knows of (ids).
const META_REMOVED: &str = "removed";
/// Local metadata: the nodes this node is removing (a removal cut short goes on being announced
/// after a restart, until `starling removenode` is run again).
const META_REMOVING: &str = "removing";
/// How long a removal waits for every live node to agree on the ring.
const REMOVE_AGREEMENT: Duration = Duration::from_secs(60);
/// How long a removal waits for one node to stream the ranges it takes over.
const REMOVE_STREAM: Duration = Duration::from_secs(3600);
/// Local metadata: this node's ring status (`joining`, `normal`, `leaving`, `left`).
pub const META_STATUS: &str = "ring-status";
/// Attempts to hand one batch over to a new replica during a leave.
const HANDOVER_ATTEMPTS: u32 = 20;
/// Records per stream page.
const PAGE: u32 = 1024;
/// A node that may found a cluster and hears of no other member for this long starts the ring.
const ALONE_AFTER: Duration = Duration::from_secs(1);
/// A founder facing an empty ring stops waiting for lower ids (which may not be founders) after
/// this.
const FOUNDER_TURN: Duration = Duration::from_secs(3);
/// How often a node that cannot join says why.
const WAITING_LOG_EVERY: Duration = Duration::from_secs(10);

/// Who may found a cluster, as this node can tell from its configuration.
#[derive(Debug, Clone, Default)]
pub struct Founders {
    /// This node may: it has no seeds, or it is one of them.
    pub me: bool,
    /// The seeds' addresses: the other nodes that may (nodes list the same seeds).
    pub seeds: std::collections::HashSet<std::net::SocketAddr>,
}

/// Takes this node's place on the ring (see the module docs); returns once it is `normal`.
pub async fn join<T: Transport, S: Storage>(
    kv: Kv<T, S>,
    vnodes: usize,
    founders: Founders,
    commands: mpsc::Sender<DriverCommand>,
    mut status: watch::Receiver<Arc<Status>>,
) -> anyhow::Result<()> {
    let storage = kv.storage().clone();
    let me = kv.view().me;
    let may_found = founders.me;
    let stored_tokens = storage.get_meta(META_TOKENS)?;
    let stored_status = storage.get_meta(META_STATUS)?;
    let set = |key: &str, value: String| {
        let commands = commands.clone();
        let key = key.to_owned();
        async move {
            commands
                .send(DriverCommand::Set { key, value })
                .await
                .map_err(|_| anyhow::anyhow!("gossip driver stopped"))
        }
    };
    let joining = match (stored_tokens, stored_status.as_deref()) {
        (Some(tokens), st) => {
            let tokens = String::from_utf8(tokens)?;
            let joining = st == Some(b"joining".as_slice());
            if st == Some(b"leaving".as_slice()) {
                warn!("this node stopped while leaving; it rejoins as normal (run `starling leave` again to finish leaving)");
                storage.put_meta(META_STATUS, b"normal")?;
            }
            set("status", if joining { "joining" } else { "normal" }.into()).await?;
            set(keys::TOKENS, tokens).await?;
            info!(joining, "tokens loaded");
            joining
        }
        (None, _) => {
            let started = tokio::time::Instant::now();
            let mut said = started;
            loop {
                let s = status.borrow_and_update().clone();
                let view = kv.view();
                let others_alive: Vec<NodeId> = view.others_up().collect();
                let heard = !others_alive.is_empty();
                let ready = if view.ring.is_empty() && !may_found {
                    // Only a founder starts the ring.
                    false
                } else if heard {
                    // Joining a ring: only one a ready member computed too (`vouched`). A seed
                    // that restarted and knows part of the cluster hands a partial ring; tokens
                    // taken against it place keys where no replica is, and writes this node
                    // acknowledged there would be lost.
                    s.gossip_converged && (view.ring.is_empty() || view.vouched)
                } else {
                    may_found && started.elapsed() >= ALONE_AFTER
                };
                // Nodes take tokens one at a time, lowest id first. On an empty ring only
                // founders take turns: a lower id that is not among the seeds never founds, so a
                // founder does not wait for it; and a founder facing an empty ring goes after a
                // while in any case (another founder may have a different seed list).
                let may_precede = |id: &NodeId| {
                    !view.ring.is_empty()
                        || view.addrs.get(id).is_some_and(|a| founders.seeds.contains(a))
                };
                let my_turn = others_alive
                    .iter()
                    .all(|id| *id > me || view.ring.node(*id).is_some() || !may_precede(id))
                    || (view.ring.is_empty() && may_found && started.elapsed() >= FOUNDER_TURN);
                if ready && my_turn && started.elapsed() >= Duration::from_millis(500) {
                    break;
                }
                if view.ring.is_empty() && !may_found && said.elapsed() >= WAITING_LOG_EVERY {
                    said = tokio::time::Instant::now();
                    warn!(
                        waited_secs = started.elapsed().as_secs(),
                        members_heard = others_alive.len(),
                        "Unable to contact any seeds that own tokens: waiting for a ring to exist (only a node started without --seeds, or listed among its own seeds, starts a cluster)"
                    );
                }
                let _ = tokio::time::timeout(Duration::from_millis(200), status.changed()).await;
            }
            let view = kv.view();
            let future = view.ring.future();
            let tokens = future.allocate_tokens(me, vnodes, rand::random());
            let first = future.is_empty();
            let st = if first { "normal" } else { "joining" };
            if !status_unless_left(&*storage, st)? {
                return Ok(());
            }
            storage.put_meta(META_TOKENS, format_tokens(&tokens).as_bytes())?;
            set("status", st.into()).await?;
            set(keys::TOKENS, format_tokens(&tokens)).await?;
            info!(vnodes, status = st, "tokens allocated");
            !first
        }
    };
    if !joining {
        return Ok(());
    }
    wait_for_agreement(&kv, &mut status).await;
    tokio::time::sleep(kv.inner.cfg.write_timeout).await;
    loop {
        match stream_pending(&kv).await {
            Ok(n) => {
                info!(records = n, "bootstrap streaming done");
                break;
            }
            Err(e) => {
                warn!(error = %e, "bootstrap streaming failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    if !status_unless_left(&*storage, "normal")? {
        return Ok(());
    }
    set("status", "normal".into()).await?;
    info!("joined the ring");
    Ok(())
}

/// Stores this node's ring status unless it has left meanwhile (`starling leave` during a join):
/// a node that left never takes its place again. No `.await` between the check and the write, so
/// on the node's runtime it cannot interleave with the leave.
fn status_unless_left<S: Storage + ?Sized>(storage: &S, st: &str) -> anyhow::Result<bool> {
    if storage.get_meta(META_STATUS)?.as_deref() == Some(b"left".as_slice()) {
        info!("left the cluster during the join; not taking a place on the ring");
        return Ok(false);
    }
    storage.put_meta(META_STATUS, st.as_bytes())?;
    Ok(true)
}

/// Waits until this node's ring is published and every alive member reports the same digest.
async fn wait_for_agreement<T: Transport, S: Storage>(
    kv: &Kv<T, S>,
    status: &mut watch::Receiver<Arc<Status>>,
) {
    loop {
        let s = status.borrow_and_update().clone();
        let mine = kv.view().ring.digest();
        if s.converged && s.ring.digest.as_deref() == Some(mine.as_str()) {
            return;
        }
        let _ = tokio::time::timeout(Duration::from_millis(200), status.changed()).await;
    }
}

/// Streams every pending range of this node from the current replicas into local storage.
///
/// With the node's [`super::Streamer`] (anti-entropy sessions), one session per source over the
/// ring segments it shares with this node's pending ones: a session moves only what this node
/// lacks, so a join (or removal) interrupted by a restart or a failed source resumes where it
/// stopped. Without it (tests of the KV layer alone), pages of a scan.
pub async fn stream_pending<T: Transport, S: Storage>(kv: &Kv<T, S>) -> anyhow::Result<u64> {
    let view = kv.view();
    if let Some(streamer) = kv.inner.streamer.get() {
        let me = view.me;
        let segments: Vec<(Range, Vec<NodeId>)> = view
            .placement
            .segments()
            .filter(|(_, _, pending)| pending.contains(&me))
            .map(|(r, natural, _)| (r, natural.to_vec()))
            .collect();
        let mut by_source: std::collections::BTreeMap<NodeId, Vec<Range>> = Default::default();
        for (r, natural) in &segments {
            for s in natural.iter().filter(|s| **s != me && view.is_up(**s)) {
                by_source.entry(*s).or_default().push(*r);
            }
        }
        let mut total = 0;
        let mut streamed = std::collections::HashSet::new();
        for (src, ranges) in by_source {
            match streamer(src, ranges).await {
                Ok(n) => {
                    total += n;
                    streamed.insert(src);
                }
                Err(e) => warn!(source = %src, error = %e, "range stream failed"),
            }
        }
        for (r, natural) in &segments {
            let need = starling_kv::quorum(natural.len()).min(natural.len());
            let ok = natural.iter().filter(|s| streamed.contains(*s)).count();
            if ok < need {
                anyhow::bail!(
                    "range {r:?}: {ok} of {} replicas streamed, {need} needed",
                    natural.len()
                );
            }
        }
        return Ok(total);
    }
    let mut total = 0;
    for (range, sources) in view.ring.pending_ranges(view.me, view.rf) {
        let up: Vec<NodeId> =
            sources.iter().copied().filter(|s| view.is_up(*s) && *s != view.me).collect();
        let need = starling_kv::quorum(sources.len()).min(sources.len());
        let mut ok = 0;
        for src in &up {
            match stream_range(kv, *src, range).await {
                Ok(n) => {
                    ok += 1;
                    total += n;
                }
                Err(e) => warn!(source = %src, error = %e, "range stream failed"),
            }
        }
        if ok < need {
            anyhow::bail!(
                "range {range:?}: {ok} of {} replicas streamed, {need} needed",
                sources.len()
            );
        }
    }
    Ok(total)
}

async fn stream_range<T: Transport, S: Storage>(
    kv: &Kv<T, S>,
    source: NodeId,
    range: Range,
) -> anyhow::Result<u64> {
    let view = kv.view();
    let addr = *view.addrs.get(&source).ok_or_else(|| anyhow::anyhow!("no address"))?;
    let mut cursor = None;
    let mut n = 0u64;
    loop {
        let scan = ReplicaScan { start: range.start, end: range.end, after: cursor, limit: PAGE };
        let Page { records, cursor: next } = kv.inner.transport.call(addr, scan).await?;
        n += records.len() as u64;
        if !records.is_empty() {
            kv.inner.io.apply(records).await.map_err(anyhow::Error::msg)?;
        }
        match next {
            Some(c) => cursor = Some(c),
            None => return Ok(n),
        }
    }
}

/// How many times a leave asks the nodes taking over its ranges to stream them before it gives
/// up (1 s apart).
pub const LEAVE_STREAM_ATTEMPTS: u32 = 10;

/// Fails a leave that would leave fewer than `rf` nodes on the ring (counting every node
/// leaving, this one too).
fn enough_stay(view: &starling_kv::view::RingView) -> anyhow::Result<()> {
    let staying =
        view.ring.nodes().filter(|n| n.id != view.me && n.status != NodeStatus::Leaving).count();
    if staying < view.rf {
        anyhow::bail!(
            "only {staying} other nodes would stay on the ring (other nodes are leaving at the \
             same time), fewer than the {} copies of every key",
            view.rf
        );
    }
    Ok(())
}

/// Hands this node's data to the nodes that take over its ranges (status `leaving` first).
pub async fn decommission<T: Transport, S: Storage>(
    kv: Kv<T, S>,
    commands: mpsc::Sender<DriverCommand>,
    mut status: watch::Receiver<Arc<Status>>,
) -> anyhow::Result<u64> {
    let storage = kv.storage().clone();
    let me = kv.view().me;
    if kv.view().ring.node(me).is_none() {
        return Ok(0);
    }
    storage.put_meta(META_STATUS, b"leaving")?;
    commands
        .send(DriverCommand::Set { key: "status".into(), value: "leaving".into() })
        .await
        .map_err(|_| anyhow::anyhow!("gossip driver stopped"))?;
    // Wait until our own view shows us leaving, then until everyone agrees.
    while kv.view().ring.node(me).map(|n| n.status) != Some(NodeStatus::Leaving) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_for_agreement(&kv, &mut status).await;
    // Nodes told to leave at about the same time each saw enough others stay when they were
    // asked; once the ring is agreed, every leave announced before is on it. Count again: three
    // of five nodes leaving at once would leave their keys on two.
    enough_stay(&kv.view())?;
    tokio::time::sleep(kv.inner.cfg.write_timeout).await;
    // And once more: a leave announced just before the agreement may not have reached this node
    // then (the other's old ring digest matched this one's), so two nodes leaving together could
    // each count the other as staying. One write timeout later each sees the other leaving.
    enough_stay(&kv.view())?;
    if kv.inner.streamer.get().is_some() {
        // Each node that gains ranges pulls them over sync sessions, from every replica up
        // (this one included): a leave asked again after a failure moves only what is missing.
        // Asked again (all gainers, from the ring as it is then: one may have left meanwhile)
        // after a failure: a source recovering a range, a gainer restarting.
        let mut attempt = 1;
        let streamed = loop {
            match gainers_stream(&kv).await {
                Ok(s) => break s,
                Err((g, why)) if attempt < LEAVE_STREAM_ATTEMPTS => {
                    warn!(gainer = %g, error = %why, attempt, "decommission: a node taking over ranges could not stream them; asking again");
                    attempt += 1;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err((g, why)) => {
                    anyhow::bail!("{g} did not take its share of the ranges: {why}")
                }
            }
        };
        let sent = streamed.iter().map(|(_, n)| n).sum();
        info!(
            records = sent,
            nodes = streamed.len(),
            "decommission: data handed over (each node taking over pulled its ranges)"
        );
        kv.hand_over_hints().await.context("handing over the hints kept for other nodes")?;
        return Ok(sent);
    }
    let view = kv.view();
    let future = view.ring.future().placement(view.rf);
    let mut sent = 0u64;
    for range in view.ring.ranges_of(me, view.rf) {
        let mut cursor: Option<Vec<u8>> = None;
        loop {
            let st = storage.clone();
            let c = cursor.clone();
            let page =
                tokio::task::spawn_blocking(move || st.scan(range, c.as_deref(), PAGE as usize))
                    .await??;
            let mut by_target: std::collections::BTreeMap<NodeId, Vec<Record>> = Default::default();
            for r in &page.records {
                let token = token_of(&r.key);
                let now = view.placement.replicas(token);
                for t in future.replicas(token) {
                    if !now.contains(t) {
                        by_target.entry(*t).or_default().push(r.clone());
                    }
                }
            }
            for (t, records) in by_target {
                let n = records.len() as u64;
                let addr =
                    *view.addrs.get(&t).ok_or_else(|| anyhow::anyhow!("no address for {t}"))?;
                let mut attempt = 0;
                loop {
                    match kv.inner.transport.call(addr, ReplicaWrite(records.clone())).await {
                        Ok(_) => {
                            sent += n;
                            break;
                        }
                        Err(e) => {
                            attempt += 1;
                            if attempt >= HANDOVER_ATTEMPTS {
                                anyhow::bail!("{t} did not take {n} records: {e}");
                            }
                            warn!(replica = %t, error = %e, attempt, "handover failed; retrying");
                            tokio::time::sleep(Duration::from_millis(500)).await;
                        }
                    }
                }
            }
            match page.cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
    }
    info!(records = sent, "decommission: data handed over");
    kv.hand_over_hints().await.context("handing over the hints kept for other nodes")?;
    Ok(sent)
}

/// Asks every node that gains ranges in the ring as this node sees it (a leave or a removal in
/// progress) to stream them from their current replicas ([`RepairRequest::StreamPending`]; this
/// node streams its own directly). Each node's records streamed, or the first node that could
/// not, and why.
async fn gainers_stream<T: Transport, S: Storage>(
    kv: &Kv<T, S>,
) -> Result<Vec<(String, u64)>, (NodeId, String)> {
    let view = kv.view();
    let gainers: Vec<NodeId> = view
        .ring
        .nodes()
        .map(|n| n.id)
        .filter(|id| !view.ring.pending_ranges(*id, view.rf).is_empty())
        .collect();
    let mut streamed = Vec::new();
    for g in gainers {
        let n = if g == view.me {
            stream_pending(kv).await.map_err(|e| format!("{e:#}"))
        } else if let (true, Some(addr)) = (view.is_up(g), view.addrs.get(&g)) {
            let req = RepairStep(RepairRequest::StreamPending).into_request();
            match kv.inner.transport.request_within(*addr, req, REMOVE_STREAM).await {
                Ok(Response::Repair(r)) => match *r {
                    RepairResponse::Streamed(n) => Ok(n),
                    other => Err(format!("unexpected answer {other:?}")),
                },
                Ok(Response::Error { message, .. }) => Err(message),
                Ok(other) => Err(format!("unexpected answer {}", other.kind())),
                Err(e) => Err(e.to_string()),
            }
        } else {
            Err("it is down".to_string())
        };
        match n {
            Ok(n) => streamed.push((g.to_string(), n)),
            Err(why) => return Err((g, why)),
        }
    }
    Ok(streamed)
}

fn load_ids<S: Storage + ?Sized>(storage: &S, name: &str) -> std::collections::BTreeSet<NodeId> {
    match storage.get_meta(name) {
        Ok(Some(b)) => parse_ids(&String::from_utf8_lossy(&b)).into_iter().collect(),
        _ => Default::default(),
    }
}

/// Stores `ids` under `name` in the local metadata and publishes them under `key` in gossip.
async fn keep_ids<S: Storage + ?Sized>(
    storage: &S,
    commands: &mpsc::Sender<DriverCommand>,
    name: &str,
    key: &str,
    ids: &std::collections::BTreeSet<NodeId>,
) -> anyhow::Result<()> {
    let value = format_ids(ids);
    storage.put_meta(name, value.as_bytes())?;
    commands
        .send(DriverCommand::Set { key: key.into(), value })
        .await
        .map_err(|_| anyhow::anyhow!("gossip driver stopped"))
}

/// Forever (spawn it): keeps every removal this node has heard of, on disk and in its own gossip
/// state ([`keys::REMOVED`]), so it outlives the node that made it; and takes this node off the
/// ring for good if it finds itself removed (it was down when `starling removenode` ran).
pub async fn keep_removals<T: Transport, S: Storage>(
    kv: Kv<T, S>,
    commands: mpsc::Sender<DriverCommand>,
) {
    let storage = kv.storage().clone();
    let me = kv.view().me;
    let mut removed = load_ids(&*storage, META_REMOVED);
    let removing = load_ids(&*storage, META_REMOVING);
    if !removed.is_empty() {
        let _ = keep_ids(&*storage, &commands, META_REMOVED, keys::REMOVED, &removed).await;
    }
    if !removing.is_empty() {
        warn!(nodes = %format_ids(&removing), "a removal this node started did not finish: the nodes stay announced as leaving; run `starling removenode` again");
        let _ = keep_ids(&*storage, &commands, META_REMOVING, keys::REMOVING, &removing).await;
    }
    let mut view = kv.inner.view.clone();
    let mut said = false;
    loop {
        let v = view.borrow_and_update().clone();
        let fresh: Vec<NodeId> =
            v.removed.iter().filter(|id| !removed.contains(id)).copied().collect();
        if !fresh.is_empty() {
            removed.extend(fresh);
            if let Err(e) =
                keep_ids(&*storage, &commands, META_REMOVED, keys::REMOVED, &removed).await
            {
                warn!(error = %e, "cannot keep the removed nodes");
            }
        }
        if v.removed.contains(&me) && !said {
            said = true;
            error!("this node was removed from the cluster with `starling removenode` while it was down: it takes no place on the ring and serves no data; stop it, remove its data dir, and start it again to join as a new node");
            if let Err(e) = storage.put_meta(META_STATUS, b"left") {
                warn!(error = %e, "cannot record the removal");
            }
            let _ = commands
                .send(DriverCommand::Set { key: "status".into(), value: "left".into() })
                .await;
        }
        if view.changed().await.is_err() {
            return;
        }
    }
}

/// `starling removenode`: takes the dead node `node` (an id or a prefix of one) off the ring.
/// It is announced as leaving (its ranges' new owners get the writes from then on), every node
/// that takes over some of its ranges streams them from the surviving replicas, and only then is
/// it announced removed. An error leaves it announced as leaving; running the removal again
/// resumes it (streaming again moves only what is missing: records are applied by version).
pub async fn remove_node<T: Transport, S: Storage>(
    kv: Kv<T, S>,
    node: &str,
    commands: mpsc::Sender<DriverCommand>,
    mut status: watch::Receiver<Arc<Status>>,
) -> Result<RemoveSummary, Response> {
    let started = tokio::time::Instant::now();
    let bad = |why: String| Response::error(ErrorCode::BadRequest, why);
    let failed = |why: String| Response::error(ErrorCode::Unavailable, why);
    let view = kv.view();
    let me = view.me;
    let matches = view.ring_nodes_named(node);
    let target = match matches.as_slice() {
        [one] => *one,
        [] if view.removed.iter().any(|id| super::view::names(id, node)) => {
            return Err(bad(format!("node {node} was removed already")))
        }
        [] => return Err(bad(format!("no node {node} on the ring"))),
        _ => return Err(bad(format!("{node} names {} nodes: give more of the id", matches.len()))),
    };
    if target == me {
        return Err(bad(format!(
            "{target} is the node asked to remove it, and it is up: ask another node, or make it leave with `starling leave`"
        )));
    }
    if !view.down.contains_key(&target) {
        return Err(bad(format!(
            "{target} is up (gossip does not report it down): only a dead node is removed; a live one leaves with `starling leave`"
        )));
    }
    let staying =
        view.ring.nodes().filter(|n| n.id != target && n.status != NodeStatus::Leaving).count();
    if staying < view.rf {
        return Err(bad(format!(
            "only {staying} nodes would stay on the ring, fewer than the {} copies of every key",
            view.rf
        )));
    }
    let storage = kv.storage().clone();
    let mut removing = load_ids(&*storage, META_REMOVING);
    removing.insert(target);
    keep_ids(&*storage, &commands, META_REMOVING, keys::REMOVING, &removing)
        .await
        .map_err(|e| failed(format!("cannot announce the removal: {e}")))?;
    info!(node = %target, "removing a dead node: its ranges move to the next nodes on the ring");
    let announced = async {
        while kv.view().ring.node(target).map(|n| n.status) != Some(NodeStatus::Leaving) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        wait_for_agreement(&kv, &mut status).await;
    };
    if tokio::time::timeout(REMOVE_AGREEMENT, announced).await.is_err() {
        return Err(failed(format!(
            "the live nodes did not agree on the ring within {} s (is one of them unreachable?); {target} stays announced as leaving: run the removal again",
            REMOVE_AGREEMENT.as_secs()
        )));
    }
    // Writes coordinated before every node saw the move have finished.
    tokio::time::sleep(kv.inner.cfg.write_timeout).await;
    let streamed = match gainers_stream(&kv).await {
        Ok(s) => s,
        Err((g, why)) => {
            return Err(failed(format!(
                "{g} could not take over its share of {target}'s ranges ({why}); {target} stays announced as leaving: run the removal again once {g} is up"
            )))
        }
    };
    let mut removed = load_ids(&*storage, META_REMOVED);
    removed.insert(target);
    keep_ids(&*storage, &commands, META_REMOVED, keys::REMOVED, &removed)
        .await
        .map_err(|e| failed(format!("cannot announce the removal: {e}")))?;
    removing.remove(&target);
    keep_ids(&*storage, &commands, META_REMOVING, keys::REMOVING, &removing)
        .await
        .map_err(|e| failed(format!("cannot announce the removal: {e}")))?;
    let records: u64 = streamed.iter().map(|(_, n)| n).sum();
    info!(node = %target, records, "removed: every range it held is back to its full copies");
    Ok(RemoveSummary {
        node: target.to_string(),
        streamed,
        duration_ms: started.elapsed().as_millis() as u64,
    })
}
