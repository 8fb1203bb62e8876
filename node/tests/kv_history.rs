//! A history of concurrent clients against real `starlingd` processes under kill -9, restart and
//! SIGSTOP, judged by the same checker as the simulator's histories
//! (`starling_tests::history`).
//!
//! Three nodes (N = 3, strict quorums), four clients doing random puts, deletes and gets at
//! `quorum` on twelve keys through random coordinators, every op recorded in one [`Recorder`]
//! (invoked just before it is sent, completed as soon as its answer or error is back). Meanwhile
//! a nemesis kills one node with -9 and restarts it, then stops another with SIGSTOP for 3 s and
//! resumes it, twice over. Then the cluster heals, hints are delivered, every key is read at
//! `all` (the final state, recorded too), and the history is checked.
//!
//! What the checker holds the run to is what the simulator holds its `durable` runs to (strict
//! quorums, `quorum` writes, crashes and pauses but no power loss): every violation is a failure,
//! lost acknowledged writes and resurrected deletes included. Recency (no stale read, reads never
//! going back) is not checked: the simulator checks it only on calm runs, with no crash and no
//! pause over 400 ms.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::sys::signal::Signal;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use starling_node::transport::quic::QuicTransport;
use starling_node::transport::{Transport, TransportError};
use starling_tests::history::{check, Call, CheckOptions, History, Outcome, Recorder};
use starling_wire::{
    Call as _, Consistency, ErrorCode, Get, KvResponse, Put, Record, Request, Response, Value,
    Written,
};
use tokio::time::{sleep, Instant};

#[path = "common/process.rs"]
mod process;

#[path = "common/kv_process.rs"]
mod kv_process;

use kv_process::{Cluster, PATIENCE};

const NODES: usize = 3;
const CLIENTS: u64 = 4;
/// Few keys, so that clients contend for them.
const KEYS: usize = 12;
/// A client's pause between two ops: uniform in this range (ms), as the simulator's clients.
const THINK_MS: (u64, u64) = (2, 60);
/// The client id of the final reads.
const FINAL_READER: u64 = CLIENTS;

/// What the clients share with the nemesis.
struct Shared {
    rec: Recorder,
    /// Each node's QUIC address (a restarted node keeps its own).
    addrs: Vec<SocketAddr>,
    /// Which nodes run (a killed one is not sent anything until it restarts).
    up: Vec<AtomicBool>,
    /// The client transport; replaced when a node restarts (a connection to the killed process
    /// would only be dropped at the idle timeout).
    transport: Mutex<Arc<QuicTransport>>,
    stop: AtomicBool,
}

impl Shared {
    fn transport(&self) -> Arc<QuicTransport> {
        self.transport.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The request that carries `call` at `level`.
fn request_of(call: &Call, level: Consistency) -> Request {
    match call {
        Call::Put { key, value } => Put {
            key: key.clone().into_bytes(),
            value: Some(value.clone().into_bytes()),
            consistency: level,
        }
        .into_request(),
        Call::Delete { key } => {
            Put { key: key.clone().into_bytes(), value: None, consistency: level }.into_request()
        }
        Call::Get { key } => {
            Get { key: key.clone().into_bytes(), consistency: level }.into_request()
        }
    }
}

/// The value a read returned, as the history writes it (a tombstone reads as not found).
fn value_of(record: Option<Record>) -> Option<String> {
    record.and_then(|r| r.value).map(|v| String::from_utf8_lossy(&v).into_owned())
}

/// The history outcome of an answer, as the simulator maps its results: `unavailable` and bad
/// requests were refused before anything was sent to a replica; timeouts and internal errors
/// may have taken effect. A transport error is unknown too (the request may have reached the
/// coordinator), except a failed connection: nothing was sent. An answer that does not fit the
/// call is recorded as it is, for the checker to report.
fn outcome_of(answer: Result<Response, TransportError>) -> Outcome {
    match answer {
        Ok(Response::Kv(KvResponse::Written(Written { superseded, .. }))) => {
            Outcome::Written { superseded: superseded.is_some() }
        }
        Ok(Response::Kv(KvResponse::Value(Value { record, .. }))) => {
            Outcome::Read(value_of(record))
        }
        Ok(Response::Error {
            code: code @ (ErrorCode::Unavailable | ErrorCode::BadRequest | ErrorCode::TooLarge),
            message,
        }) => Outcome::Fail(format!("{code}: {message}")),
        Ok(Response::Error { code, message }) => Outcome::Unknown(format!("{code}: {message}")),
        Ok(other) => Outcome::Unknown(format!("unexpected answer {other:?}")),
        Err(e @ TransportError::Connect { .. }) => Outcome::Fail(format!("transport: {e}")),
        Err(e) => Outcome::Unknown(format!("transport: {e}")),
    }
}

/// One client: random ops on random keys through random running coordinators until `stop`,
/// one at a time. Every put writes a value of its own (`c<client>-<n>`).
async fn client(id: u64, seed: u64, s: Arc<Shared>) {
    let mut rng = StdRng::seed_from_u64(seed ^ id.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut n = 0u64;
    while !s.stop.load(Ordering::Relaxed) {
        let up: Vec<usize> =
            (0..s.addrs.len()).filter(|&i| s.up[i].load(Ordering::Relaxed)).collect();
        let Some(&node) = up.choose(&mut rng) else {
            sleep(Duration::from_millis(10)).await;
            continue;
        };
        let key = format!("k{}", rng.gen_range(0..KEYS));
        let call = match rng.gen_range(0..100) {
            0..=44 => {
                n += 1;
                Call::Put { key, value: format!("c{id}-{n}") }
            }
            45..=54 => Call::Delete { key },
            _ => Call::Get { key },
        };
        let req = request_of(&call, Consistency::Quorum);
        let transport = s.transport();
        let op = s.rec.invoke(id, call);
        let answer = transport.request(s.addrs[node], req).await;
        s.rec.complete(op, outcome_of(answer));
        sleep(Duration::from_millis(rng.gen_range(THINK_MS.0..=THINK_MS.1))).await;
    }
}

/// Seconds since the recorder's time 0, for the fault log.
fn at(s: &Shared) -> String {
    format!("{:.1} s", s.rec.now() as f64 / 1e9)
}

/// kill -9 node `i`, restart it `down` later (clients switch to a fresh transport), and wait
/// until the cluster is ready again.
async fn kill_and_restart(c: &mut Cluster, s: &Shared, i: usize, down: Duration) -> String {
    s.up[i].store(false, Ordering::Relaxed);
    c.nodes[i].kill9();
    let killed = at(s);
    sleep(down).await;
    let old = c.respawn(i).await;
    *s.transport.lock().unwrap_or_else(|e| e.into_inner()) = c.client.clone();
    s.up[i].store(true, Ordering::Relaxed);
    let restarted = at(s);
    // Ops still in flight on the old transport finish (or time out) on their own.
    drop(old);
    c.wait_ready(NODES).await;
    format!("kill -9 node{} at {killed}, restarted at {restarted}, ready at {}", i + 1, at(s))
}

/// SIGSTOP node `i` for `stopped`, then SIGCONT, and wait until the cluster is ready again.
async fn stop_and_resume(c: &Cluster, s: &Shared, i: usize, stopped: Duration) -> String {
    c.nodes[i].signal(Signal::SIGSTOP);
    let from = at(s);
    sleep(stopped).await;
    c.nodes[i].signal(Signal::SIGCONT);
    let to = at(s);
    c.wait_ready(NODES).await;
    format!("SIGSTOP node{} from {from} to {to}, ready at {}", i + 1, at(s))
}

/// Reads every key at `all` (coordinators in turn, retried until it succeeds), recording each
/// read in the history; the values read are the final state.
async fn final_reads(c: &Cluster, s: &Shared) -> BTreeMap<String, Option<String>> {
    let mut state = BTreeMap::new();
    for k in 0..KEYS {
        let key = format!("k{k}");
        let deadline = Instant::now() + PATIENCE;
        let mut attempt = 0;
        loop {
            let node = (k + attempt) % NODES;
            attempt += 1;
            let call = Call::Get { key: key.clone() };
            let req = request_of(&call, Consistency::All);
            let op = s.rec.invoke(FINAL_READER, call);
            let outcome = outcome_of(c.client.request(s.addrs[node], req).await);
            s.rec.complete(op, outcome.clone());
            match outcome {
                Outcome::Read(x) => {
                    state.insert(key, x);
                    break;
                }
                other => assert!(
                    Instant::now() < deadline,
                    "final read of {key} at all keeps failing: {other}\n{}",
                    c.logs()
                ),
            }
            sleep(Duration::from_millis(200)).await;
        }
    }
    state
}

/// Outcomes by kind, and the first words of why ops failed or timed out, counted.
fn tally(h: &History) -> (BTreeMap<&'static str, usize>, BTreeMap<String, usize>) {
    let mut outcomes = BTreeMap::new();
    let mut reasons = BTreeMap::new();
    for op in h.ops() {
        let kind = match &op.outcome {
            Outcome::Written { superseded: false } => "written",
            Outcome::Written { superseded: true } => "superseded",
            Outcome::Read(_) => "read",
            Outcome::Fail(_) => "fail",
            Outcome::Unknown(_) => "unknown",
        };
        *outcomes.entry(kind).or_default() += 1;
        if let Outcome::Fail(m) | Outcome::Unknown(m) = &op.outcome {
            let gist: Vec<&str> = m.split_whitespace().take(7).collect();
            *reasons.entry(gist.join(" ")).or_default() += 1;
        }
    }
    (outcomes, reasons)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_history_under_kill9_sigstop_and_restart_passes_the_checker() {
    let started = Instant::now();
    let mut c = Cluster::start_with_env(NODES, &[("STARLING_QUORUM", "strict")]).await;
    let seed = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let s = Arc::new(Shared {
        rec: Recorder::new(),
        addrs: c.nodes.iter().map(|n| n.addrs.listen).collect(),
        up: (0..NODES).map(|_| AtomicBool::new(true)).collect(),
        transport: Mutex::new(c.client.clone()),
        stop: AtomicBool::new(false),
    });
    let clients: Vec<_> =
        (0..CLIENTS).map(|id| tokio::spawn(client(id, seed, s.clone()))).collect();

    // The nemesis: each fault on its own, so the two other nodes always make a quorum, though
    // ops through or waiting on the faulty node fail or time out.
    let mut faults = Vec::new();
    sleep(Duration::from_millis(1500)).await;
    faults.push(kill_and_restart(&mut c, &s, 2, Duration::from_secs(3)).await);
    sleep(Duration::from_secs(1)).await;
    faults.push(stop_and_resume(&c, &s, 1, Duration::from_secs(3)).await);
    sleep(Duration::from_secs(1)).await;
    faults.push(kill_and_restart(&mut c, &s, 0, Duration::from_secs(3)).await);
    sleep(Duration::from_secs(1)).await;
    faults.push(stop_and_resume(&c, &s, 2, Duration::from_secs(3)).await);
    sleep(Duration::from_secs(1)).await;
    s.stop.store(true, Ordering::Relaxed);
    for t in clients {
        t.await.expect("client task");
    }
    let ops_end = at(&s);

    // Heal: every node runs and is ready. One write timeout later every late copy has landed or
    // is a hint; then the hints go out, and the final state is read at `all`.
    c.wait_ready(NODES).await;
    sleep(Duration::from_millis(2500)).await;
    c.wait_hints_delivered().await;
    let final_state = final_reads(&c, &s).await;

    let Ok(shared) = Arc::try_unwrap(s) else { panic!("a client still holds the recorder") };
    let history = shared.rec.into_history();
    let report = check(&history, &final_state, CheckOptions { recency: false });
    let path = c.dir.path().join("history.jsonl");
    std::fs::write(&path, history.to_jsonl()).expect("write the history");
    let (outcomes, reasons) = tally(&history);
    let summary = report.to_string();
    eprintln!(
        "kv_history: {CLIENTS} clients on {KEYS} keys until {ops_end} (seed {seed}), test took \
         {:.1} s\n  faults: {}\n  outcomes: {outcomes:?}\n  fail/unknown: {reasons:?}\n  \
         checked: {}\n  history: {}",
        started.elapsed().as_secs_f64(),
        faults.join("; "),
        summary.lines().next().unwrap_or_default(),
        path.display()
    );
    if !report.is_ok() {
        // Keep the history and the nodes' logs for a look.
        c.dir.disable_cleanup(true);
    }
    assert!(
        report.is_ok(),
        "the history has violations (history and node logs kept in {}):\n{report}",
        c.dir.path().display()
    );
    let count = |k: &str| outcomes.get(k).copied().unwrap_or(0);
    assert!(
        count("written") >= 20 && count("read") >= 20,
        "too few ops completed to judge the run: {outcomes:?}\n{}",
        c.logs()
    );
}
