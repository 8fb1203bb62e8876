//! A Jepsen/Elle-style **history checker** for a last-write-wins key-value store.
//!
//! Clients record every operation they *invoke* (a put, delete or get of one key, with the time
//! they sent it) and the *outcome* they got back (with the time they got it) in a [`History`].
//! After the run, [`check`] decides whether what the clients saw could have come from a correct
//! store, and reports every [`Violation`] with the shortest slice of the history that shows it.
//! The deterministic simulator records in simulated time; tests against real processes use the
//! thread-safe [`Recorder`], and can save a history as JSON lines ([`History::to_jsonl`]) to be
//! checked by another process ([`History::from_jsonl`]).
//!
//! # Why a history checker
//!
//! Asserting on single results ("this get returned that put") only finds the bugs a test author
//! thought of. A history of thousands of concurrent operations, with crashes, partitions and
//! timeouts in between, has far too many legal outcomes to list; but what is *illegal* can be
//! stated once, from real-time order alone, and checked in `O(n log n)`. That is what this module
//! does, for any protocol that offers last-write-wins registers keyed by string.
//!
//! # Model
//!
//! - Every put writes a **unique** value (the test harness guarantees it), so a value read names
//!   the put that wrote it. Two puts of one value on one key are reported
//!   ([`ViolationKind::DuplicateValue`]) instead of trusted.
//! - Deletes write tombstones. A read of "not found" may come from any delete that did not fail,
//!   or from the **initial state** — a pseudo-write invoked and completed at time 0.
//! - Time is `u64` nanoseconds from one clock for all clients (simulated time, or since the
//!   [`Recorder`] was made). `a` **precedes** `b` when `a` completed before `b` was invoked.
//!   An op whose outcome is [`Outcome::Unknown`], or that never completed, may still take effect
//!   at any later time: its completion counts as never ([`NEVER`]), so it precedes nothing.
//! - A write is **acked** when its outcome is `Written { superseded: false }`: the store promised
//!   it survives. A superseded write (the store answered that a newer version already existed)
//!   and an unknown one promise nothing, so they never *override* anything — but they may still be
//!   what a read or the final state shows.
//!
//! # What is checked
//!
//! For a value `x` observed (a read's result, or a key's final state), its **candidate writers**
//! `C(x)` are the ops that could have produced it: for a value `v`, the put of `v` (if a read saw
//! it, invoked before the read completed); for "not found", every delete that did not fail (for a
//! read: invoked before the read completed) plus the initial state. An acked write `w`
//! **overrides** `x` when every candidate writer of `x` completed before `w` was invoked: whatever
//! wrote `x` was over before `w` began, so under last-write-wins `w` must win over it.
//!
//! Always:
//! - **Reads return written values.** A value read or left in the final state must have been
//!   written to that key ([`ViolationKind::PhantomValue`]) by a put that did not fail
//!   ([`ViolationKind::FailedWriteVisible`]); a read cannot return a put invoked after the read
//!   completed ([`ViolationKind::ReadFromFuture`]).
//! - **No lost writes.** The final state of each key given to [`check`] (read after the cluster
//!   healed and hints were delivered) must not be overridden by an acked write
//!   ([`ViolationKind::LostWrite`], or [`ViolationKind::ResurrectedDelete`] when the write that
//!   lost was a delete and a value came back).
//!
//! With [`CheckOptions::recency`], which only holds for strict quorums with every replica up and
//! `R + W > N` (the caller knows when):
//! - **No stale reads.** A read must not return a value overridden by an acked write that
//!   completed before the read was invoked ([`ViolationKind::StaleRead`], or
//!   [`ViolationKind::ResurrectedDelete`]).
//! - **Reads never go back.** When read `g1` completed before read `g2` was invoked and returned a
//!   value whose every candidate writer was invoked after every candidate writer of `g2`'s value
//!   had completed, `g2` went back in time ([`ViolationKind::ReadWentBack`]). This is the
//!   difference between a *regular* register (stale-read freedom) and an *atomic* one; a
//!   Dynamo-style store only gets it from blocking read repair with `2R > N`.
//!
//! Every rule is **sound**: a history produced by a linearizable last-write-wins register, in
//! which unknown ops take effect at any time after their invocation or never, and superseded and
//! failed writes never take effect, is reported clean. (The unit tests check this on random
//! histories.) Rules are conservative where the history cannot tell: "not found" could always be
//! the initial state, so it never proves that a later read went back, and a superseded put's
//! place in time is the store's choice, so neither does a value it wrote.
//!
//! # Cost
//!
//! Ops are grouped by key; each key's checks sort its writes once and answer every question with
//! a binary search over prefix maxima ("the latest-invoked acked write among those completed
//! before `t`"), so a key with `n` ops costs `O(n log n)`.
//!
//! # Use
//!
//! ```rust,ignore
//! let mut h = History::new();
//! let put = h.invoke(1, 1_000, Call::Put { key: "k".into(), value: "c1-1".into() });
//! h.complete(put, 2_000, Outcome::Written { superseded: false });
//! let get = h.invoke(2, 3_000, Call::Get { key: "k".into() });
//! h.complete(get, 4_000, Outcome::Read(Some("c1-1".into())));
//! let final_state = BTreeMap::from([("k".to_string(), Some("c1-1".to_string()))]);
//! let report = check(&h, &final_state, CheckOptions { recency: true });
//! assert!(report.is_ok(), "{report}");
//! ```

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// The completion time of an op that may still take effect (unknown outcome, or never
/// completed): it precedes nothing.
pub const NEVER: u64 = u64::MAX;

/// A slice shows at most this many candidate writers of one value.
const MAX_SHOWN_WRITERS: usize = 3;

/// [`Report`]'s `Display` prints this many violations in full, then a count of the rest.
const PRINTED_VIOLATIONS: usize = 10;

/// What an op that was invoked but never completed counts as.
const NEVER_COMPLETED: &str = "never completed";

/// An op's index in its [`History`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct OpId(pub usize);

/// What a client asked the store to do.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Call {
    /// Write `value` (unique per key in a test) to `key`.
    Put { key: String, value: String },
    /// Write a tombstone to `key`.
    Delete { key: String },
    /// Read `key`.
    Get { key: String },
}

impl Call {
    /// The key the op is about.
    pub fn key(&self) -> &str {
        match self {
            Call::Put { key, .. } | Call::Delete { key } | Call::Get { key } => key,
        }
    }

    /// Whether the op writes (a put or a delete).
    pub fn is_write(&self) -> bool {
        !matches!(self, Call::Get { .. })
    }
}

/// What the client got back.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A put/delete was acknowledged. `superseded`: the store answered that a newer version of
    /// the key already existed, so this write is acknowledged but is not expected to survive.
    Written { superseded: bool },
    /// A get returned this value (`None`: not found / deleted).
    Read(Option<String>),
    /// Definitely did not take effect (refused before anything was written).
    Fail(String),
    /// May or may not have taken effect (timeout, connection lost, node crashed). Also what an
    /// op that never completed counts as.
    Unknown(String),
}

/// One op of a history: its call, when it was invoked and completed, and its outcome.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpRecord {
    pub id: OpId,
    pub client: u64,
    pub call: Call,
    /// When the client sent it (nanoseconds).
    pub invoke: u64,
    /// When the client got the outcome; `None` if it never did (the outcome is then
    /// `Unknown("never completed")`).
    pub complete: Option<u64>,
    pub outcome: Outcome,
}

impl OpRecord {
    /// The key the op is about.
    pub fn key(&self) -> &str {
        self.call.key()
    }

    /// The time by which the op had certainly taken effect or not: its completion, or [`NEVER`]
    /// for an op with an unknown outcome or that never completed.
    pub fn finished_by(&self) -> u64 {
        match (&self.outcome, self.complete) {
            (Outcome::Unknown(_), _) | (_, None) => NEVER,
            (_, Some(t)) => t,
        }
    }

    /// Whether `self` precedes `other` in real time (completed before `other` was invoked).
    pub fn precedes(&self, other: &OpRecord) -> bool {
        self.finished_by() < other.invoke
    }

    /// Whether this is a write the store acknowledged and promised to keep.
    pub fn is_acked_write(&self) -> bool {
        self.call.is_write() && self.outcome == Outcome::Written { superseded: false }
    }

    /// The value a completed get returned (`None` also when this is not a completed get).
    fn read_value(&self) -> Option<&str> {
        match &self.outcome {
            Outcome::Read(x) => x.as_deref(),
            _ => None,
        }
    }
}

/// The ops of a test run, in invocation order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    ops: Vec<OpRecord>,
}

/// One line of a JSON-lines history.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
enum Event {
    Invoke { id: u64, client: u64, at: u64, call: Call },
    Complete { id: u64, at: u64, outcome: Outcome },
}

impl History {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `client` sent `call` at `at`; the op counts as unknown and never completed
    /// until [`complete`](Self::complete) is called for it.
    pub fn invoke(&mut self, client: u64, at: u64, call: Call) -> OpId {
        let id = OpId(self.ops.len());
        self.ops.push(OpRecord {
            id,
            client,
            call,
            invoke: at,
            complete: None,
            outcome: Outcome::Unknown(NEVER_COMPLETED.to_string()),
        });
        id
    }

    /// Records the outcome of op `id`, which the client got at `at`.
    ///
    /// # Panics
    /// If `id` is not an op of this history, was already completed, or `at` is before its
    /// invocation: each is a bug in the harness.
    pub fn complete(&mut self, id: OpId, at: u64, outcome: Outcome) {
        let Some(op) = self.ops.get_mut(id.0) else {
            panic!("history: complete of op {} which was never invoked", id.0)
        };
        assert!(op.complete.is_none(), "history: op {} completed twice", id.0);
        assert!(
            at >= op.invoke,
            "history: op {} completed at {at} before it was invoked at {}",
            id.0,
            op.invoke
        );
        op.complete = Some(at);
        op.outcome = outcome;
    }

    /// Every op, in invocation order (`ops()[i].id == OpId(i)`).
    pub fn ops(&self) -> &[OpRecord] {
        &self.ops
    }

    /// # Panics
    /// If `id` is not an op of this history.
    pub fn op(&self, id: OpId) -> &OpRecord {
        &self.ops[id.0]
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The history as JSON lines, one event per line in time order: an invocation
    /// `{"event":"invoke","id":0,"client":3,"at":12345000,"call":{"op":"put","key":"k","value":"v"}}`
    /// or a completion `{"event":"complete","id":0,"at":13001000,"outcome":{"written":{"superseded":false}}}`.
    /// Ops that never completed have no completion line.
    pub fn to_jsonl(&self) -> String {
        let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * self.ops.len());
        for (i, op) in self.ops.iter().enumerate() {
            events.push((op.invoke, false, i));
            if let Some(t) = op.complete {
                events.push((t, true, i));
            }
        }
        // At equal times invocations come first, so an op's own invocation precedes its
        // completion.
        events.sort_unstable();
        let mut out = String::with_capacity(100 * events.len());
        for (at, is_completion, i) in events {
            let op = &self.ops[i];
            let id = i as u64;
            let event = if is_completion {
                Event::Complete { id, at, outcome: op.outcome.clone() }
            } else {
                Event::Invoke { id, client: op.client, at, call: op.call.clone() }
            };
            out.push_str(&serde_json::to_string(&event).expect("history events serialize"));
            out.push('\n');
        }
        out
    }

    /// Parses [`to_jsonl`](Self::to_jsonl)'s format. Lines may come in any order and blank lines
    /// are skipped; ids are labels (unique per file) and are renumbered densely in their order.
    pub fn from_jsonl(text: &str) -> Result<History, String> {
        let mut invokes: BTreeMap<u64, (u64, u64, Call)> = BTreeMap::new();
        let mut completes: Vec<(usize, u64, u64, Outcome)> = Vec::new();
        let mut completed: HashMap<u64, usize> = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line_no = n + 1;
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let event: Event =
                serde_json::from_str(line).map_err(|e| format!("line {line_no}: {e}"))?;
            match event {
                Event::Invoke { id, client, at, call } => {
                    if invokes.insert(id, (client, at, call)).is_some() {
                        return Err(format!("line {line_no}: op {id} invoked twice"));
                    }
                }
                Event::Complete { id, at, outcome } => {
                    if let Some(first) = completed.insert(id, line_no) {
                        return Err(format!(
                            "line {line_no}: op {id} completed twice (first on line {first})"
                        ));
                    }
                    completes.push((line_no, id, at, outcome));
                }
            }
        }
        let mut h = History::new();
        let mut ids: HashMap<u64, OpId> = HashMap::with_capacity(invokes.len());
        for (label, (client, at, call)) in invokes {
            ids.insert(label, h.invoke(client, at, call));
        }
        for (line_no, label, at, outcome) in completes {
            let Some(&id) = ids.get(&label) else {
                return Err(format!("line {line_no}: op {label} completed but never invoked"));
            };
            let invoked = h.ops[id.0].invoke;
            if at < invoked {
                return Err(format!(
                    "line {line_no}: op {label} completed at {at} before it was invoked at {invoked}"
                ));
            }
            h.complete(id, at, outcome);
        }
        Ok(h)
    }
}

/// A [`History`] that many threads record into, timed by a real clock: nanoseconds since the
/// recorder was made. For tests that drive real processes.
#[derive(Debug)]
pub struct Recorder {
    start: Instant,
    history: Mutex<History>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    /// A recorder whose time 0 is now.
    pub fn new() -> Self {
        Recorder { start: Instant::now(), history: Mutex::new(History::new()) }
    }

    /// The instant that is time 0.
    pub fn start(&self) -> Instant {
        self.start
    }

    /// Nanoseconds since [`start`](Self::start).
    pub fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(NEVER - 1)
    }

    /// Records that `client` is about to send `call`; call just before sending it.
    pub fn invoke(&self, client: u64, call: Call) -> OpId {
        let mut h = self.lock();
        // Read the clock under the lock, so ids and times are in the same order.
        let at = self.now();
        h.invoke(client, at, call)
    }

    /// Records the outcome of op `id`; call as soon as it is known.
    ///
    /// # Panics
    /// As [`History::complete`].
    pub fn complete(&self, id: OpId, outcome: Outcome) {
        let mut h = self.lock();
        let at = self.now();
        h.complete(id, at, outcome);
    }

    /// A copy of the history so far.
    pub fn snapshot(&self) -> History {
        self.lock().clone()
    }

    /// The history; ops still in flight count as never completed.
    pub fn into_history(self) -> History {
        self.history.into_inner().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock(&self) -> MutexGuard<'_, History> {
        // A client thread that panicked mid-record leaves a consistent history: keep going.
        self.history.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Which checks to run beyond those that always hold.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckOptions {
    /// Check that reads are recent: no stale reads, and reads never go back in time. Only holds
    /// for strict quorums with every replica up and `R + W > N` (and, for reads never going back,
    /// blocking read repair with `2R > N`).
    pub recency: bool,
}

/// The kinds of anomaly [`check`] reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ViolationKind {
    /// The final state lost an acked write: it holds a value (or "not found") whose every
    /// possible writer completed before the acked write was invoked.
    LostWrite,
    /// A value came back after an acked delete that was invoked once its put had completed (in
    /// the final state, or in a read with recency on).
    ResurrectedDelete,
    /// A read or the final state holds a value that no put of that key wrote.
    PhantomValue,
    /// A read or the final state holds a value whose put failed.
    FailedWriteVisible,
    /// A read returned a value whose put was invoked after the read completed.
    ReadFromFuture,
    /// A read returned a value overridden by an acked write that completed before the read was
    /// invoked (recency).
    StaleRead,
    /// A read returned a value older than one an earlier read had already returned (recency).
    ReadWentBack,
    /// Two puts of one key wrote the same value (a harness bug: values must be unique).
    DuplicateValue,
    /// An op's outcome does not fit its call (a get that was `Written`, a write that `Read`).
    MalformedOp,
}

impl fmt::Display for ViolationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// One anomaly, with the ops that show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    pub kind: ViolationKind,
    pub key: String,
    /// What is wrong, with the times that prove it.
    pub message: String,
    /// The shortest slice of the history that shows it: only the ops involved (the possible
    /// writers of the value seen, the write it should have lost to, the reads), in invocation
    /// order.
    pub slice: Vec<OpRecord>,
}

/// The result of [`check`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// Ops in the history.
    pub ops: usize,
    /// Keys checked (in the history or the final state).
    pub keys: usize,
    /// Every anomaly found, grouped by key.
    pub violations: Vec<Violation>,
}

impl Report {
    /// Whether no anomaly was found.
    pub fn is_ok(&self) -> bool {
        self.violations.is_empty()
    }

    /// How many violations of `kind` were found.
    pub fn count(&self, kind: ViolationKind) -> usize {
        self.violations.iter().filter(|v| v.kind == kind).count()
    }
}

/// Checks history `h` against the rules in the [module documentation](self). `final_state` is
/// what each key holds after the cluster healed and hints were delivered (read at consistency
/// `all`); keys it does not name are not checked for their final state.
pub fn check(
    h: &History,
    final_state: &BTreeMap<String, Option<String>>,
    opts: CheckOptions,
) -> Report {
    let ops = h.ops();
    let mut violations = Vec::new();
    let mut by_key: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    let mut puts_of_value: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, op) in ops.iter().enumerate() {
        if let Some(problem) = malformed(op) {
            violations.push(Violation {
                kind: ViolationKind::MalformedOp,
                key: op.key().to_string(),
                message: problem,
                slice: vec![op.clone()],
            });
            continue;
        }
        by_key.entry(op.key()).or_default().push(i);
        if let Call::Put { value, .. } = &op.call {
            puts_of_value.entry(value).or_default().push(i);
        }
    }
    for key in final_state.keys() {
        by_key.entry(key).or_default();
    }
    for (&key, idx) in &by_key {
        let final_value = final_state.get(key).map(|x| x.as_deref());
        KeyCheck::new(ops, key, idx, &puts_of_value).run(final_value, opts, &mut violations);
    }
    Report { ops: ops.len(), keys: by_key.len(), violations }
}

/// Why an op's outcome does not fit its call, if it does not.
fn malformed(op: &OpRecord) -> Option<String> {
    match (&op.call, &op.outcome) {
        (Call::Get { .. }, Outcome::Written { .. }) => {
            Some("a get cannot have been written".to_string())
        }
        (Call::Put { .. } | Call::Delete { .. }, Outcome::Read(_)) => {
            Some("a write cannot have read a value".to_string())
        }
        _ => None,
    }
}

/// Items sorted by a time, with the running maximum of a value over each prefix: answers "the
/// greatest value (and its item) among the items whose time is before `t`" in `O(log n)`.
#[derive(Debug)]
struct PrefixMax {
    times: Vec<u64>,
    best: Vec<(u64, usize)>,
}

impl PrefixMax {
    /// From `(time, value, item)` triples.
    fn new(mut items: Vec<(u64, u64, usize)>) -> Self {
        items.sort_unstable();
        let mut best = Vec::with_capacity(items.len());
        let mut current: Option<(u64, usize)> = None;
        for &(_, value, item) in &items {
            if current.is_none_or(|(v, _)| value > v) {
                current = Some((value, item));
            }
            best.extend(current);
        }
        PrefixMax { times: items.into_iter().map(|(t, _, _)| t).collect(), best }
    }

    /// The greatest value among items whose time is `< t`.
    fn before(&self, t: u64) -> Option<(u64, usize)> {
        self.prefix(self.times.partition_point(|&x| x < t))
    }

    /// The greatest value among items whose time is `<= t`, and how many items those are.
    fn up_to(&self, t: u64) -> (Option<(u64, usize)>, usize) {
        let n = self.times.partition_point(|&x| x <= t);
        (self.prefix(n), n)
    }

    /// The greatest value of all.
    fn all(&self) -> Option<(u64, usize)> {
        self.best.last().copied()
    }

    fn prefix(&self, n: usize) -> Option<(u64, usize)> {
        n.checked_sub(1).map(|i| self.best[i])
    }
}

/// What is known about the writers of a value observed.
#[derive(Debug)]
struct Observed {
    /// The latest completion of any candidate writer: 0 for the initial state, [`NEVER`] when
    /// one may still be in flight. An acked write invoked after this overrides the value.
    max_complete: u64,
    /// The earliest invocation of any candidate writer (0 when the initial state is one).
    min_invoke: u64,
    /// The candidate writers a slice shows: the puts of the value, or the latest-completing
    /// delete that could explain "not found".
    writers: Vec<usize>,
    /// For "not found": how many deletes could explain it.
    deletes: usize,
    /// Whether a later read returning something older than this value went back in time: only
    /// when every candidate writer has a real-time place the store promises (a put that was
    /// not superseded; never the initial state).
    ordered: bool,
}

/// A violation found, before it is turned into a [`Violation`].
#[derive(Debug)]
struct Found {
    kind: ViolationKind,
    message: String,
    ops: Vec<usize>,
}

/// The checks of one key.
#[derive(Debug)]
struct KeyCheck<'a> {
    ops: &'a [OpRecord],
    key: &'a str,
    /// Puts of this key by value (any outcome), in invocation order.
    puts: HashMap<&'a str, Vec<usize>>,
    /// Puts of every key by value, to tell where a phantom value came from.
    puts_of_value: &'a HashMap<&'a str, Vec<usize>>,
    /// Deletes that did not fail, by invocation, with the latest completion.
    deletes: PrefixMax,
    /// Acked writes by completion, with the latest invocation.
    acked: PrefixMax,
    /// Completed gets, in invocation order.
    reads: Vec<usize>,
}

impl<'a> KeyCheck<'a> {
    fn new(
        ops: &'a [OpRecord],
        key: &'a str,
        idx: &[usize],
        puts_of_value: &'a HashMap<&'a str, Vec<usize>>,
    ) -> Self {
        let mut puts: HashMap<&str, Vec<usize>> = HashMap::new();
        let mut deletes = Vec::new();
        let mut acked = Vec::new();
        let mut reads = Vec::new();
        for &i in idx {
            let op = &ops[i];
            match (&op.call, &op.outcome) {
                (Call::Put { value, .. }, _) => puts.entry(value.as_str()).or_default().push(i),
                (Call::Delete { .. }, Outcome::Fail(_)) => {}
                (Call::Delete { .. }, _) => deletes.push((op.invoke, op.finished_by(), i)),
                (Call::Get { .. }, Outcome::Read(_)) if op.complete.is_some() => reads.push(i),
                (Call::Get { .. }, _) => {}
            }
            if op.is_acked_write() {
                acked.push((op.finished_by(), op.invoke, i));
            }
        }
        KeyCheck {
            ops,
            key,
            puts,
            puts_of_value,
            deletes: PrefixMax::new(deletes),
            acked: PrefixMax::new(acked),
            reads,
        }
    }

    fn run(&self, final_value: Option<Option<&str>>, opts: CheckOptions, out: &mut Vec<Violation>) {
        self.check_duplicates(out);
        if let Some(x) = final_value {
            self.check_final(x, out);
        }
        self.check_reads(opts, out);
    }

    fn check_duplicates(&self, out: &mut Vec<Violation>) {
        let mut dups: Vec<&Vec<usize>> = self.puts.values().filter(|p| p.len() > 1).collect();
        dups.sort_unstable();
        for puts in dups {
            let value = match &self.ops[puts[0]].call {
                Call::Put { value, .. } => value.as_str(),
                _ => "",
            };
            let message = format!(
                "{} puts of this key wrote the same value {value:?}: values must be unique for \
                 the checker to tell writes apart",
                puts.len()
            );
            let shown = puts.iter().copied().take(MAX_SHOWN_WRITERS);
            out.push(self.violation(Found {
                kind: ViolationKind::DuplicateValue,
                message,
                ops: shown.collect(),
            }));
        }
    }

    /// Lost writes: no acked write may override the final value.
    fn check_final(&self, x: Option<&str>, out: &mut Vec<Violation>) {
        let subject = format!("final value is {}", show(x));
        let obs = match self.resolve(x, NEVER, &subject) {
            Ok(obs) => obs,
            Err(found) => return out.push(self.violation(found)),
        };
        let Some((w_invoke, w)) = self.acked.all() else { return };
        if w_invoke <= obs.max_complete {
            return;
        }
        let w_op = &self.ops[w];
        let (kind, what) = if x.is_some() && matches!(w_op.call, Call::Delete { .. }) {
            (ViolationKind::ResurrectedDelete, "the deleted value came back")
        } else {
            (ViolationKind::LostWrite, "that write was lost")
        };
        let message = format!(
            "{subject}, but the acknowledged {} was invoked at {} after {}: {what}",
            describe(w_op),
            exact_ms(w_invoke),
            self.writers_done(x, &obs),
        );
        let ops = obs.writers.iter().copied().chain([w]).collect();
        out.push(self.violation(Found { kind, message, ops }));
    }

    /// Reads return written values; with recency, no stale reads and no reads going back.
    fn check_reads(&self, opts: CheckOptions, out: &mut Vec<Violation>) {
        let mut seen: Vec<Option<Observed>> = Vec::with_capacity(self.reads.len());
        for &g in &self.reads {
            let g_op = &self.ops[g];
            let x = g_op.read_value();
            let subject = format!("read returned {}", show(x));
            let complete = g_op.complete.unwrap_or(NEVER);
            match self.resolve(x, complete, &subject) {
                Ok(obs) => seen.push(Some(obs)),
                Err(mut found) => {
                    found.ops.push(g);
                    out.push(self.violation(found));
                    seen.push(None);
                }
            }
        }
        if !opts.recency {
            return;
        }
        // Reads that returned a value with an ordered writer, by completion, with the latest
        // invocation of a writer of what they returned.
        let earlier = PrefixMax::new(
            self.reads
                .iter()
                .zip(&seen)
                .enumerate()
                .filter_map(|(pos, (&g, obs))| {
                    let obs = obs.as_ref().filter(|o| o.ordered)?;
                    Some((self.ops[g].complete?, obs.min_invoke, pos))
                })
                .collect(),
        );
        for (&g, obs) in self.reads.iter().zip(&seen) {
            let Some(obs) = obs else { continue };
            let found = self.stale(g, obs).or_else(|| {
                let (_, pos) = earlier.before(self.ops[g].invoke)?;
                self.went_back(self.reads[pos], seen[pos].as_ref()?, g, obs)
            });
            out.extend(found.map(|found| self.violation(found)));
        }
    }

    /// Read `g` of a value overridden by an acked write that completed before `g` was invoked.
    fn stale(&self, g: usize, obs: &Observed) -> Option<Found> {
        let g_op = &self.ops[g];
        let (w_invoke, w) = self.acked.before(g_op.invoke)?;
        if w_invoke <= obs.max_complete {
            return None;
        }
        let x = g_op.read_value();
        let w_op = &self.ops[w];
        let (kind, what) = if x.is_some() && matches!(w_op.call, Call::Delete { .. }) {
            (ViolationKind::ResurrectedDelete, ": the deleted value came back")
        } else {
            (ViolationKind::StaleRead, "")
        };
        let message = format!(
            "read returned {} (invoked at {}), but the acknowledged {}, invoked at {} after {}, \
             had completed at {} before the read started{what}",
            show(x),
            exact_ms(g_op.invoke),
            describe(w_op),
            exact_ms(w_invoke),
            self.writers_done(x, obs),
            exact_ms(w_op.finished_by()),
        );
        let ops = obs.writers.iter().copied().chain([w, g]).collect();
        Some(Found { kind, message, ops })
    }

    /// Read `g2` returned a value older than what read `g1`, which completed before `g2` was
    /// invoked, returned: every writer of `g1`'s value was invoked after every writer of `g2`'s
    /// had completed. (`g1` is the earlier read whose value's writers were invoked latest.)
    fn went_back(&self, g1: usize, obs1: &Observed, g2: usize, obs2: &Observed) -> Option<Found> {
        // Equal values never qualify: g2's candidates include g1's, so some candidate of g2's
        // value completed after it was invoked, at or after `obs1.min_invoke`.
        if obs1.min_invoke <= obs2.max_complete {
            return None;
        }
        let (g1_op, g2_op) = (&self.ops[g1], &self.ops[g2]);
        let x2 = g2_op.read_value();
        let message = format!(
            "read returned {} (invoked at {}), but an earlier read that completed at {} returned \
             {}, whose put was invoked at {} after {}: reads went back in time",
            show(x2),
            exact_ms(g2_op.invoke),
            exact_ms(g1_op.finished_by()),
            show(g1_op.read_value()),
            exact_ms(obs1.min_invoke),
            self.writers_done(x2, obs2),
        );
        let ops = obs2.writers.iter().chain(&obs1.writers).copied().chain([g1, g2]).collect();
        Some(Found { kind: ViolationKind::ReadWentBack, message, ops })
    }

    /// The candidate writers of `x`, observed by a read that completed at `cutoff` (or in the
    /// final state: [`NEVER`]), or why `x` cannot have been written at all.
    fn resolve(&self, x: Option<&str>, cutoff: u64, subject: &str) -> Result<Observed, Found> {
        let Some(v) = x else {
            let (latest, deletes) = self.deletes.up_to(cutoff);
            return Ok(Observed {
                max_complete: latest.map_or(0, |(t, _)| t),
                min_invoke: 0,
                writers: latest.map(|(_, d)| d).into_iter().collect(),
                deletes,
                ordered: false,
            });
        };
        let Some(puts) = self.puts.get(v) else {
            return Err(self.phantom(v, subject));
        };
        let live: Vec<usize> = puts
            .iter()
            .copied()
            .filter(|&i| !matches!(self.ops[i].outcome, Outcome::Fail(_)))
            .collect();
        if live.is_empty() {
            return Err(Found {
                kind: ViolationKind::FailedWriteVisible,
                message: format!("{subject}, but its put failed, so it must never be seen"),
                ops: puts.iter().copied().take(MAX_SHOWN_WRITERS).collect(),
            });
        }
        let candidates: Vec<usize> =
            live.iter().copied().filter(|&i| self.ops[i].invoke <= cutoff).collect();
        if candidates.is_empty() {
            let first = live[0];
            return Err(Found {
                kind: ViolationKind::ReadFromFuture,
                message: format!(
                    "{subject}, but its put was invoked at {}, after the read completed at {}",
                    exact_ms(self.ops[first].invoke),
                    exact_ms(cutoff),
                ),
                ops: vec![first],
            });
        }
        let cand = || candidates.iter().map(|&i| &self.ops[i]);
        Ok(Observed {
            max_complete: cand().map(OpRecord::finished_by).max().unwrap_or(0),
            min_invoke: cand().map(|op| op.invoke).min().unwrap_or(0),
            writers: candidates.iter().copied().take(MAX_SHOWN_WRITERS).collect(),
            deletes: 0,
            ordered: cand().all(|op| op.outcome != Outcome::Written { superseded: true }),
        })
    }

    /// A value that no put of this key wrote.
    fn phantom(&self, v: &str, subject: &str) -> Found {
        let elsewhere: Vec<usize> = self
            .puts_of_value
            .get(v)
            .map(|p| p.iter().copied().take(MAX_SHOWN_WRITERS - 1).collect())
            .unwrap_or_default();
        let hint = match elsewhere.first() {
            Some(&i) => format!(" (it was written to key {:?})", self.ops[i].key()),
            None => " (no put of any key wrote it)".to_string(),
        };
        Found {
            kind: ViolationKind::PhantomValue,
            message: format!("{subject}, but no put of this key wrote it{hint}"),
            ops: elsewhere,
        }
    }

    /// "every possible writer of x had completed", with the time that shows it.
    fn writers_done(&self, x: Option<&str>, obs: &Observed) -> String {
        let last = exact_ms(obs.max_complete);
        match (x, obs.deletes) {
            (Some(v), _) if obs.writers.len() == 1 => {
                format!("the put of {v:?} had completed at {last}")
            }
            (Some(v), _) => format!("every put of {v:?} had completed (the last at {last})"),
            (None, 0) => {
                "the initial state (no delete of the key could explain not found)".to_string()
            }
            (None, 1) => {
                format!("the only delete that could explain not found had completed at {last}")
            }
            (None, n) => {
                format!("all {n} deletes that could explain not found had completed (the last at {last})")
            }
        }
    }

    fn violation(&self, found: Found) -> Violation {
        let mut ops = found.ops;
        ops.sort_unstable_by_key(|&i| (self.ops[i].invoke, i));
        ops.dedup();
        Violation {
            kind: found.kind,
            key: self.key.to_string(),
            message: found.message,
            slice: ops.into_iter().map(|i| self.ops[i].clone()).collect(),
        }
    }
}

/// A value as messages show it.
fn show(x: Option<&str>) -> String {
    match x {
        Some(v) => format!("{v:?}"),
        None => "not found".to_string(),
    }
}

/// A write as messages name it.
fn describe(op: &OpRecord) -> String {
    match &op.call {
        Call::Put { value, .. } => format!("put of {value:?}"),
        Call::Delete { .. } => "delete".to_string(),
        Call::Get { .. } => "get".to_string(),
    }
}

/// Nanoseconds as milliseconds with 3 decimals.
fn ms(t: u64) -> String {
    format!("{}.{:03} ms", t / 1_000_000, t / 1_000 % 1_000)
}

/// Nanoseconds as milliseconds with 3 decimals, or 6 when there are nanoseconds: messages compare
/// times that may be one tick apart.
fn exact_ms(t: u64) -> String {
    match t % 1_000 {
        0 => ms(t),
        ns => format!("{}.{:03}{ns:03} ms", t / 1_000_000, t / 1_000 % 1_000),
    }
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Call::Put { key, value } => write!(f, "put {key} = {value:?}"),
            Call::Delete { key } => write!(f, "delete {key}"),
            Call::Get { key } => write!(f, "get {key}"),
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Written { superseded: false } => write!(f, "ok"),
            Outcome::Written { superseded: true } => write!(f, "ok (superseded)"),
            Outcome::Read(x) => write!(f, "{}", show(x.as_deref())),
            Outcome::Fail(why) => write!(f, "fail: {why}"),
            Outcome::Unknown(why) => write!(f, "unknown: {why}"),
        }
    }
}

/// One line: `[client 3] 12.345 ms .. 13.001 ms  put k7 = "c3-17" -> ok`; an op that may still
/// take effect ends at `?` (with the time the client gave up, if it did).
impl fmt::Display for OpRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let end = match self.finished_by() {
            NEVER => "?".to_string(),
            t => ms(t),
        };
        write!(
            f,
            "[client {}] {} .. {}  {} -> {}",
            self.client,
            ms(self.invoke),
            end,
            self.call,
            self.outcome
        )?;
        match (&self.outcome, self.complete) {
            (Outcome::Unknown(_), Some(t)) => write!(f, " (gave up at {})", ms(t)),
            _ => Ok(()),
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} on key {:?}: {}", self.kind, self.key, self.message)?;
        for op in &self.slice {
            write!(f, "\n  {op}")?;
        }
        Ok(())
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ops on {} keys: ", self.ops, self.keys)?;
        if self.is_ok() {
            return write!(f, "ok");
        }
        let mut kinds: BTreeMap<ViolationKind, usize> = BTreeMap::new();
        for v in &self.violations {
            *kinds.entry(v.kind).or_default() += 1;
        }
        let kinds: Vec<String> = kinds.iter().map(|(k, n)| format!("{k} x{n}")).collect();
        write!(f, "{} violations ({})", self.violations.len(), kinds.join(", "))?;
        for (i, v) in self.violations.iter().take(PRINTED_VIOLATIONS).enumerate() {
            write!(f, "\n{}. {v}", i + 1)?;
        }
        if self.violations.len() > PRINTED_VIOLATIONS {
            write!(f, "\n... and {} more", self.violations.len() - PRINTED_VIOLATIONS)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::ViolationKind::*;
    use super::*;

    const MS: u64 = 1_000_000;
    const RECENCY: CheckOptions = CheckOptions { recency: true };
    const NO_RECENCY: CheckOptions = CheckOptions { recency: false };

    fn put(key: &str, value: &str) -> Call {
        Call::Put { key: key.to_string(), value: value.to_string() }
    }

    fn del(key: &str) -> Call {
        Call::Delete { key: key.to_string() }
    }

    fn get(key: &str) -> Call {
        Call::Get { key: key.to_string() }
    }

    fn ok() -> Outcome {
        Outcome::Written { superseded: false }
    }

    fn superseded() -> Outcome {
        Outcome::Written { superseded: true }
    }

    fn read(x: Option<&str>) -> Outcome {
        Outcome::Read(x.map(str::to_string))
    }

    fn fail() -> Outcome {
        Outcome::Fail("unavailable".to_string())
    }

    fn unknown() -> Outcome {
        Outcome::Unknown("timeout".to_string())
    }

    /// Records an op invoked at `inv` ms and completed at `comp` ms, by a client of its own.
    fn op(h: &mut History, inv: u64, comp: u64, call: Call, outcome: Outcome) -> OpId {
        let id = h.invoke(h.len() as u64, inv * MS, call);
        h.complete(id, comp * MS, outcome);
        id
    }

    /// Records an op invoked at `inv` ms that never completes.
    fn pending(h: &mut History, inv: u64, call: Call) -> OpId {
        h.invoke(h.len() as u64, inv * MS, call)
    }

    fn finals(pairs: &[(&str, Option<&str>)]) -> BTreeMap<String, Option<String>> {
        pairs.iter().map(|(k, x)| (k.to_string(), x.map(str::to_string))).collect()
    }

    fn kinds(r: &Report) -> Vec<ViolationKind> {
        r.violations.iter().map(|v| v.kind).collect()
    }

    fn slice_ids(v: &Violation) -> Vec<OpId> {
        v.slice.iter().map(|op| op.id).collect()
    }

    #[test]
    fn clean_sequential_history_passes() {
        let mut h = History::new();
        op(&mut h, 1, 2, get("k"), read(None));
        op(&mut h, 3, 4, put("k", "a"), ok());
        op(&mut h, 5, 6, get("k"), read(Some("a")));
        op(&mut h, 7, 8, put("k", "b"), ok());
        op(&mut h, 9, 10, get("k"), read(Some("b")));
        op(&mut h, 11, 12, del("k"), ok());
        op(&mut h, 13, 14, get("k"), read(None));
        op(&mut h, 15, 16, put("j", "c"), ok());
        let r = check(&h, &finals(&[("k", None), ("j", Some("c")), ("untouched", None)]), RECENCY);
        assert!(r.is_ok(), "{r}");
        assert_eq!((r.ops, r.keys), (8, 3));
        assert_eq!(r.to_string(), "8 ops on 3 keys: ok");
        // The same history with a wrong final state fails.
        let r = check(&h, &finals(&[("k", Some("b"))]), RECENCY);
        assert_eq!(kinds(&r), [ResurrectedDelete], "{r}");
    }

    #[test]
    fn concurrent_puts_either_final_value_is_legal() {
        // a and b overlap; either may win, and reads may see either while both are in flight.
        for (first, second) in [("a", "b"), ("b", "a")] {
            let mut h = History::new();
            op(&mut h, 1, 10, put("k", "a"), ok());
            op(&mut h, 5, 15, put("k", "b"), ok());
            op(&mut h, 2, 3, get("k"), read(None));
            op(&mut h, 6, 7, get("k"), read(Some(first)));
            op(&mut h, 11, 12, get("k"), read(Some(first)));
            op(&mut h, 16, 17, get("k"), read(Some(second)));
            let r = check(&h, &finals(&[("k", Some(second))]), RECENCY);
            assert!(r.is_ok(), "{first} then {second}: {r}");
        }
        // Once a has completed before b starts, only b may win.
        let mut h = History::new();
        op(&mut h, 1, 4, put("k", "a"), ok());
        op(&mut h, 5, 15, put("k", "b"), ok());
        assert!(check(&h, &finals(&[("k", Some("b"))]), RECENCY).is_ok());
        assert_eq!(kinds(&check(&h, &finals(&[("k", Some("a"))]), RECENCY)), [LostWrite]);
    }

    #[test]
    fn lost_acked_write_is_detected() {
        let mut h = History::new();
        let a = op(&mut h, 1, 2, put("k", "a"), ok());
        let b = op(&mut h, 3, 4, put("k", "b"), ok());
        op(&mut h, 1, 2, put("other", "x"), ok());
        let r = check(&h, &finals(&[("k", Some("a")), ("other", Some("x"))]), NO_RECENCY);
        assert_eq!(kinds(&r), [LostWrite], "{r}");
        let v = &r.violations[0];
        assert_eq!(v.key, "k");
        assert_eq!(slice_ids(v), [a, b]);
        assert!(v.message.contains("put of \"b\" was invoked at 3.000 ms"), "{}", v.message);
        assert!(v.message.contains("the put of \"a\" had completed at 2.000 ms"), "{}", v.message);
    }

    #[test]
    fn superseded_and_unknown_writes_may_be_lost() {
        for outcome in [superseded(), unknown(), fail()] {
            let mut h = History::new();
            op(&mut h, 1, 2, put("k", "a"), ok());
            op(&mut h, 3, 4, put("k", "b"), outcome.clone());
            op(&mut h, 3, 4, del("k"), outcome.clone());
            let r = check(&h, &finals(&[("k", Some("a"))]), RECENCY);
            assert!(r.is_ok(), "{outcome:?}: {r}");
        }
        let mut h = History::new();
        op(&mut h, 1, 2, put("k", "a"), ok());
        pending(&mut h, 3, put("k", "b"));
        assert!(check(&h, &finals(&[("k", Some("a"))]), RECENCY).is_ok());
        // An acked one may not.
        op(&mut h, 5, 6, put("k", "c"), ok());
        assert_eq!(kinds(&check(&h, &finals(&[("k", Some("a"))]), RECENCY)), [LostWrite]);
    }

    #[test]
    fn unknown_write_may_become_the_final_value() {
        // An unknown write may take effect at any time after it was invoked, even after a later
        // acked write.
        let mut h = History::new();
        op(&mut h, 1, 2, put("k", "a"), ok());
        op(&mut h, 3, 4, put("k", "b"), unknown());
        op(&mut h, 5, 6, put("k", "c"), ok());
        let u = pending(&mut h, 7, del("k"));
        op(&mut h, 8, 9, get("k"), read(Some("b")));
        assert!(check(&h, &finals(&[("k", Some("b"))]), RECENCY).is_ok());
        assert!(check(&h, &finals(&[("k", None)]), RECENCY).is_ok());
        // Unless it failed for certain.
        h.ops[u.0].outcome = fail();
        h.ops[u.0].complete = Some(10 * MS);
        assert_eq!(kinds(&check(&h, &finals(&[("k", None)]), RECENCY)), [LostWrite]);
    }

    #[test]
    fn failed_write_visible_is_detected() {
        let mut h = History::new();
        let a = op(&mut h, 1, 2, put("k", "a"), fail());
        let g = op(&mut h, 3, 4, get("k"), read(Some("a")));
        let r = check(&h, &finals(&[("k", Some("a"))]), NO_RECENCY);
        assert_eq!(kinds(&r), [FailedWriteVisible, FailedWriteVisible], "{r}");
        assert_eq!(slice_ids(&r.violations[0]), [a]);
        assert_eq!(slice_ids(&r.violations[1]), [a, g]);
        assert!(r.violations[0].message.starts_with("final value is \"a\""));
    }

    #[test]
    fn resurrected_delete_is_detected() {
        let mut h = History::new();
        let a = op(&mut h, 1, 2, put("k", "a"), ok());
        let d = op(&mut h, 3, 4, del("k"), ok());
        let g = op(&mut h, 5, 6, get("k"), read(Some("a")));
        let r = check(&h, &finals(&[("k", Some("a"))]), NO_RECENCY);
        assert_eq!(kinds(&r), [ResurrectedDelete], "{r}");
        assert_eq!(slice_ids(&r.violations[0]), [a, d]);
        // With recency the read is one too.
        let r = check(&h, &finals(&[("k", Some("a"))]), RECENCY);
        assert_eq!(kinds(&r), [ResurrectedDelete, ResurrectedDelete], "{r}");
        assert_eq!(slice_ids(&r.violations[1]), [a, d, g]);
        // A delete concurrent with the put may lose.
        let mut h = History::new();
        op(&mut h, 1, 4, put("k", "a"), ok());
        op(&mut h, 3, 5, del("k"), ok());
        op(&mut h, 6, 7, get("k"), read(Some("a")));
        assert!(check(&h, &finals(&[("k", Some("a"))]), RECENCY).is_ok());
    }

    #[test]
    fn final_not_found_needs_a_delete_that_may_be_last() {
        // The last acked put started after every delete completed: it was lost.
        let mut h = History::new();
        let d1 = op(&mut h, 1, 2, del("k"), ok());
        op(&mut h, 1, 3, del("k"), superseded());
        let d3 = op(&mut h, 2, 4, del("k"), ok());
        op(&mut h, 2, 3, del("k"), fail());
        let b = op(&mut h, 5, 6, put("k", "b"), ok());
        let r = check(&h, &finals(&[("k", None)]), NO_RECENCY);
        assert_eq!(kinds(&r), [LostWrite], "{r}");
        assert_eq!(slice_ids(&r.violations[0]), [d3, b], "the latest delete only");
        assert!(r.violations[0].message.contains("all 3 deletes"), "{}", r.violations[0]);
        let _ = d1;
        // A delete concurrent with the last put may win.
        let mut h = History::new();
        op(&mut h, 1, 2, put("k", "a"), ok());
        op(&mut h, 3, 8, del("k"), ok());
        op(&mut h, 4, 6, put("k", "b"), ok());
        op(&mut h, 9, 10, get("k"), read(None));
        assert!(check(&h, &finals(&[("k", None)]), RECENCY).is_ok());
        // With no delete at all, "not found" is the initial state, which every put overrides.
        let mut h = History::new();
        let a = op(&mut h, 1, 2, put("k", "a"), ok());
        let r = check(&h, &finals(&[("k", None)]), NO_RECENCY);
        assert_eq!(kinds(&r), [LostWrite], "{r}");
        assert_eq!(slice_ids(&r.violations[0]), [a]);
        assert!(r.violations[0].message.contains("initial state"));
    }

    #[test]
    fn phantom_values_are_detected() {
        let mut h = History::new();
        let x = op(&mut h, 1, 2, put("other", "x"), ok());
        let g1 = op(&mut h, 3, 4, get("k"), read(Some("x")));
        let g2 = op(&mut h, 3, 4, get("k"), read(Some("zzz")));
        let r = check(&h, &finals(&[("k", Some("yyy")), ("other", Some("x"))]), NO_RECENCY);
        assert_eq!(kinds(&r), [PhantomValue, PhantomValue, PhantomValue], "{r}");
        assert_eq!(slice_ids(&r.violations[0]), [] as [OpId; 0]);
        assert!(r.violations[0].message.contains("no put of any key wrote it"));
        assert_eq!(slice_ids(&r.violations[1]), [x, g1], "shows where the value came from");
        assert!(r.violations[1].message.contains("written to key \"other\""));
        assert_eq!(slice_ids(&r.violations[2]), [g2]);
    }

    #[test]
    fn read_from_the_future_is_detected() {
        let mut h = History::new();
        let a = op(&mut h, 10, 11, put("k", "a"), ok());
        let g = op(&mut h, 1, 5, get("k"), read(Some("a")));
        // Reads concurrent with the put (invoked by the time the read completed) are fine.
        op(&mut h, 2, 10, get("k"), read(Some("a")));
        op(&mut h, 10, 10, get("k"), read(Some("a")));
        let r = check(&h, &finals(&[("k", Some("a"))]), RECENCY);
        assert_eq!(kinds(&r), [ReadFromFuture], "{r}");
        assert_eq!(slice_ids(&r.violations[0]), [g, a]);
    }

    #[test]
    fn stale_reads_are_detected_only_with_recency() {
        let mut h = History::new();
        let a = op(&mut h, 1, 2, put("k", "a"), ok());
        let b = op(&mut h, 3, 4, put("k", "b"), ok());
        let g = op(&mut h, 5, 6, get("k"), read(Some("a")));
        // A read concurrent with b may miss it.
        op(&mut h, 3, 6, get("k"), read(Some("a")));
        let fin = finals(&[("k", Some("b"))]);
        assert!(check(&h, &fin, NO_RECENCY).is_ok());
        let r = check(&h, &fin, RECENCY);
        assert_eq!(kinds(&r), [StaleRead], "{r}");
        assert_eq!(slice_ids(&r.violations[0]), [a, b, g]);

        // Not found is stale after an acked put that followed every delete, and after any put
        // when nothing was deleted.
        let mut h = History::new();
        op(&mut h, 1, 2, put("j", "a"), ok());
        op(&mut h, 3, 4, get("j"), read(None));
        op(&mut h, 1, 2, del("k"), ok());
        op(&mut h, 3, 4, put("k", "b"), ok());
        op(&mut h, 5, 6, get("k"), read(None));
        // A delete invoked after the read completed cannot explain it.
        op(&mut h, 7, 8, del("k"), ok());
        let fin = finals(&[("j", Some("a")), ("k", None)]);
        assert!(check(&h, &fin, NO_RECENCY).is_ok());
        assert_eq!(kinds(&check(&h, &fin, RECENCY)), [StaleRead, StaleRead]);
    }

    #[test]
    fn reads_going_back_are_detected() {
        // b is in flight when both reads run, so neither read is stale on its own; but once g1
        // has seen b, g2 may not see the older a.
        for b_outcome in [ok(), unknown()] {
            let mut h = History::new();
            let a = op(&mut h, 1, 2, put("k", "a"), ok());
            let b = op(&mut h, 3, 20, put("k", "b"), b_outcome.clone());
            let g1 = op(&mut h, 4, 5, get("k"), read(Some("b")));
            let g2 = op(&mut h, 6, 7, get("k"), read(Some("a")));
            let fin = finals(&[("k", Some("b"))]);
            assert!(check(&h, &fin, NO_RECENCY).is_ok());
            let r = check(&h, &fin, RECENCY);
            assert_eq!(kinds(&r), [ReadWentBack], "{b_outcome:?}: {r}");
            assert_eq!(slice_ids(&r.violations[0]), [a, b, g1, g2]);
        }
        // Back to not found, with several deletes that all completed before b.
        let mut h = History::new();
        op(&mut h, 1, 2, del("k"), ok());
        op(&mut h, 1, 3, del("k"), ok());
        op(&mut h, 4, 20, put("k", "b"), ok());
        op(&mut h, 5, 6, get("k"), read(Some("b")));
        op(&mut h, 7, 8, get("k"), read(None));
        let r = check(&h, &finals(&[("k", Some("b"))]), RECENCY);
        assert_eq!(kinds(&r), [ReadWentBack], "{r}");
        // A superseded put has no place in real time the store promises: seeing it proves nothing.
        let mut h = History::new();
        op(&mut h, 1, 2, put("k", "a"), ok());
        op(&mut h, 3, 20, put("k", "b"), superseded());
        op(&mut h, 4, 5, get("k"), read(Some("b")));
        op(&mut h, 6, 7, get("k"), read(Some("a")));
        assert!(check(&h, &finals(&[("k", Some("a"))]), RECENCY).is_ok());
    }

    #[test]
    fn valid_concurrent_reads_are_not_flagged() {
        let mut h = History::new();
        op(&mut h, 1, 2, put("k", "a"), ok());
        op(&mut h, 3, 10, put("k", "b"), ok());
        op(&mut h, 4, 5, get("k"), read(Some("a")));
        op(&mut h, 4, 5, get("k"), read(Some("b")));
        op(&mut h, 6, 7, get("k"), read(Some("b")));
        op(&mut h, 8, 9, get("k"), read(Some("b")));
        op(&mut h, 11, 12, get("k"), read(Some("b")));
        assert!(check(&h, &finals(&[("k", Some("b"))]), RECENCY).is_ok());

        // g1's "not found" may come from d1 (before a) rather than from the in-flight d2 (after
        // a), so g2 seeing a is not going back: every candidate of g1's value must be newer.
        let mut h = History::new();
        op(&mut h, 1, 2, del("k"), ok());
        op(&mut h, 3, 4, put("k", "a"), ok());
        op(&mut h, 5, 30, del("k"), ok());
        op(&mut h, 3, 7, get("k"), read(None));
        op(&mut h, 8, 9, get("k"), read(Some("a")));
        op(&mut h, 31, 32, get("k"), read(None));
        assert!(check(&h, &finals(&[("k", None)]), RECENCY).is_ok());
    }

    #[test]
    fn touching_intervals_are_concurrent() {
        // An op that completes at the very time another is invoked does not precede it: in
        // simulated time both happen in one tick, in either order.
        let mut h = History::new();
        op(&mut h, 1, 3, put("k", "a"), ok());
        op(&mut h, 3, 5, put("k", "b"), ok());
        op(&mut h, 5, 6, get("k"), read(Some("a")));
        op(&mut h, 1, 3, del("j"), ok());
        op(&mut h, 3, 5, put("j", "c"), ok());
        op(&mut h, 5, 6, get("j"), read(None));
        op(&mut h, 1, 2, put("i", "d"), ok());
        op(&mut h, 3, 10, put("i", "e"), ok());
        op(&mut h, 4, 5, get("i"), read(Some("e")));
        op(&mut h, 5, 6, get("i"), read(Some("d")));
        let fin = finals(&[("k", Some("a")), ("j", None), ("i", Some("e"))]);
        let r = check(&h, &fin, RECENCY);
        assert!(r.is_ok(), "{r}");
        // One tick later they do.
        for op in &mut h.ops {
            if op.call.is_write() && op.invoke == 3 * MS {
                op.invoke += 1;
            }
            if op.invoke == 5 * MS {
                op.invoke += 1;
            }
        }
        let r = check(&h, &fin, RECENCY);
        let expected = [ReadWentBack, LostWrite, StaleRead, LostWrite, StaleRead];
        assert_eq!(kinds(&r), expected, "{r}");
        // Messages show the nanosecond that makes the difference.
        let lost = &r.violations[3].message;
        assert!(
            lost.contains(
                "invoked at 3.000001 ms after the put of \"a\" had completed at 3.000 ms"
            ),
            "{lost}"
        );
    }

    #[test]
    fn duplicate_values_and_malformed_ops_are_reported() {
        let mut h = History::new();
        let a1 = op(&mut h, 1, 2, put("k", "a"), ok());
        let a2 = op(&mut h, 3, 4, put("k", "a"), ok());
        op(&mut h, 5, 6, get("k"), read(Some("a")));
        op(&mut h, 5, 6, put("j", "a"), ok());
        let bad = op(&mut h, 7, 8, get("k"), ok());
        let r = check(&h, &finals(&[("k", Some("a"))]), RECENCY);
        assert_eq!(kinds(&r), [MalformedOp, DuplicateValue], "{r}");
        assert_eq!(slice_ids(&r.violations[0]), [bad]);
        assert_eq!(slice_ids(&r.violations[1]), [a1, a2]);
    }

    #[test]
    fn ops_print_on_one_line() {
        let mut h = History::new();
        let id = h.invoke(3, 12_345_678, put("k7", "c3-17"));
        h.complete(id, 13_001_000, ok());
        assert_eq!(
            h.op(id).to_string(),
            "[client 3] 12.345 ms .. 13.001 ms  put k7 = \"c3-17\" -> ok"
        );
        let id = h.invoke(1, MS, get("k"));
        h.complete(id, 2 * MS, unknown());
        assert_eq!(
            h.op(id).to_string(),
            "[client 1] 1.000 ms .. ?  get k -> unknown: timeout (gave up at 2.000 ms)"
        );
        let id = h.invoke(2, 0, del("k"));
        assert_eq!(
            h.op(id).to_string(),
            "[client 2] 0.000 ms .. ?  delete k -> unknown: never completed"
        );
        let id = op(&mut h, 1, 2, get("k"), read(None));
        assert!(h.op(id).to_string().ends_with("get k -> not found"));

        // Reports print the first violations in full and count the rest.
        let mut h = History::new();
        let keys: Vec<String> = (0..15).map(|i| format!("k{i}")).collect();
        for k in &keys {
            op(&mut h, 1, 2, put(k, "a"), ok());
            op(&mut h, 3, 4, put(k, "b"), ok());
        }
        let fin = keys.iter().map(|k| (k.clone(), Some("a".to_string()))).collect();
        let text = check(&h, &fin, RECENCY).to_string();
        assert!(text.starts_with("30 ops on 15 keys: 15 violations (LostWrite x15)\n1. LostWrite"));
        assert!(text.contains("\n  [client 0] 1.000 ms .. 2.000 ms  put k0 = \"a\" -> ok\n"));
        assert!(text.contains("\n10. LostWrite"));
        assert!(!text.contains("\n11. "));
        assert!(text.ends_with("\n... and 5 more"), "{text}");
    }

    #[test]
    fn jsonl_round_trip_gives_the_same_report() {
        let mut rng = Rng::new(7);
        let mut g = generate(&mut rng, 5, 400, 3, true);
        corrupt(&mut rng, &mut g);
        let id = g.h.invoke(9, 1, get("k0"));
        g.h.complete(id, 1, read(Some("from the future")));
        let text = g.h.to_jsonl();
        assert_eq!(text.lines().count(), 2 * g.h.len() - pending_count(&g.h));
        assert!(text.lines().next().unwrap().starts_with("{\"event\":\"invoke\""), "{text}");
        let back = History::from_jsonl(&text).unwrap();
        assert_eq!(back, g.h);
        let before = check(&g.h, &g.final_state, RECENCY);
        assert!(!before.is_ok());
        assert_eq!(check(&back, &g.final_state, RECENCY), before);
        // Any order of lines and any unique labels will do.
        let shuffled: String = text.lines().rev().map(|l| format!("{l}\n\n")).collect();
        assert_eq!(History::from_jsonl(&shuffled).unwrap(), g.h);
        let relabelled = text.replace("\"id\":", "\"id\":1000");
        assert_eq!(
            check(&History::from_jsonl(&relabelled).unwrap(), &g.final_state, RECENCY),
            before
        );
    }

    #[test]
    fn jsonl_errors_name_the_line() {
        let inv = r#"{"event":"invoke","id":0,"client":1,"at":5,"call":{"op":"get","key":"k"}}"#;
        let done = r#"{"event":"complete","id":0,"at":6,"outcome":{"read":"v"}}"#;
        let early = r#"{"event":"complete","id":0,"at":4,"outcome":{"read":null}}"#;
        let h = History::from_jsonl(&format!("{inv}\n{done}\n")).unwrap();
        assert_eq!(h.op(OpId(0)).outcome, read(Some("v")));
        for (text, error) in [
            (format!("{inv}\nnot json"), "line 2:"),
            (format!("{inv}\n{inv}"), "line 2: op 0 invoked twice"),
            (format!("{inv}\n{done}\n{done}"), "line 3: op 0 completed twice (first on line 2)"),
            (done.to_string(), "line 1: op 0 completed but never invoked"),
            (format!("{inv}\n{early}"), "line 2: op 0 completed at 4 before it was invoked at 5"),
        ] {
            let e = History::from_jsonl(&text).unwrap_err();
            assert!(e.starts_with(error), "{e}");
        }
    }

    #[test]
    fn recorder_works_from_several_threads() {
        let rec = Recorder::new();
        std::thread::scope(|s| {
            for client in 0..4u64 {
                let rec = &rec;
                s.spawn(move || {
                    // One key per client: each reads its own last write, which is what a
                    // register would return only if no other client writes the key.
                    let key = format!("k{client}");
                    for n in 0..100 {
                        let value = format!("c{client}-{n}");
                        let id = rec.invoke(client, put(&key, &value));
                        rec.complete(id, ok());
                        let id = rec.invoke(client, get(&key));
                        rec.complete(id, read(Some(&value)));
                    }
                });
            }
        });
        let stuck = rec.invoke(9, get("k0"));
        assert_eq!(rec.snapshot().len(), 801);
        let h = rec.into_history();
        assert_eq!(h.op(stuck).outcome, Outcome::Unknown(NEVER_COMPLETED.to_string()));
        for client in 0..4 {
            let mine: Vec<&OpRecord> = h.ops().iter().filter(|op| op.client == client).collect();
            assert_eq!(mine.len(), 200);
            for pair in mine.windows(2) {
                assert!(pair[0].precedes(pair[1]) || pair[0].complete == Some(pair[1].invoke));
            }
        }
        // Each client reads its own write, so nothing is wrong (the final state is not checked).
        let r = check(&h, &BTreeMap::new(), RECENCY);
        assert!(r.is_ok(), "{r}");
        assert_eq!((r.ops, r.keys), (801, 4));
    }

    #[test]
    fn random_correct_histories_pass() {
        let (mut reads, mut not_found, mut overlapping) = (0, 0, 0);
        for seed in 0..150 {
            for concurrent in [false, true] {
                let mut rng = Rng::new(seed);
                let clients = 1 + rng.below(6);
                let keys = 1 + rng.below(3) as usize;
                let g = generate(&mut rng, clients, 200, keys, concurrent);
                let r = check(&g.h, &g.final_state, RECENCY);
                assert!(r.is_ok(), "seed {seed}, concurrent {concurrent}: {r}");
                let ops = g.h.ops();
                reads += ops.iter().filter(|op| matches!(op.outcome, Outcome::Read(_))).count();
                not_found += ops.iter().filter(|op| op.outcome == read(None)).count();
                overlapping += ops.windows(2).filter(|w| !w[0].precedes(&w[1])).count();
            }
        }
        // The generator makes what the checker must handle.
        assert!(reads > 10_000 && not_found > 1_000 && overlapping > 10_000);
    }

    #[test]
    fn corrupted_reads_are_caught() {
        for concurrent in [false, true] {
            let mut caught = 0;
            for seed in 0..50 {
                let mut rng = Rng::new(1000 + seed);
                let mut g = generate(&mut rng, 4, 200, 2, concurrent);
                let r = check(&g.h, &g.final_state, RECENCY);
                assert!(r.is_ok(), "seed {seed}: {r}");
                let corrupted = corrupt(&mut rng, &mut g);
                // An old value is what an eventually consistent read may return.
                let r = check(&g.h, &g.final_state, NO_RECENCY);
                assert!(r.is_ok(), "seed {seed}: {r}");
                let r = check(&g.h, &g.final_state, RECENCY);
                if !r.is_ok() {
                    caught += 1;
                    assert!(
                        r.violations.iter().all(|v| [StaleRead, ReadWentBack, ResurrectedDelete]
                            .contains(&v.kind)
                            && v.slice.len() <= 2 * MAX_SHOWN_WRITERS + 2),
                        "seed {seed}: {r}"
                    );
                    assert!(
                        r.violations.iter().any(|v| v.slice.iter().any(|op| op.id == corrupted)),
                        "seed {seed}: {r}"
                    );
                }
            }
            // Sequential ops leave little room: nearly every older value is overridden by then.
            let most = if concurrent { 30 } else { 45 };
            assert!(caught >= most, "concurrent {concurrent}: caught {caught} of 50");
        }
    }

    #[test]
    fn large_histories_check_quickly() {
        // One hot key with 100k ops would take hours if any check were quadratic.
        let mut rng = Rng::new(42);
        let g = generate(&mut rng, 50, 100_000, 1, true);
        let r = check(&g.h, &g.final_state, RECENCY);
        assert!(r.is_ok(), "{r}");
        let g = generate(&mut rng, 50, 100_000, 300, true);
        let r = check(&g.h, &g.final_state, RECENCY);
        assert!(r.is_ok() && r.keys == 300, "{r}");
    }

    /// A tiny deterministic xorshift generator.
    struct Rng(u64);

    impl Rng {
        fn new(seed: u64) -> Self {
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
            rng.next();
            rng
        }

        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// How a generated op ends. Only `Done` and applied `Unknown` ops take effect.
    #[derive(Clone, Copy, Debug, PartialEq)]
    enum Fate {
        Done,
        Fail,
        Superseded,
        Unknown { applied: bool, gave_up: bool },
    }

    /// A history made by a linearizable register, its final state, and for each read the older
    /// values it could be corrupted to.
    struct Generated {
        h: History,
        final_state: BTreeMap<String, Option<String>>,
        older: Vec<(OpId, Vec<Option<String>>)>,
    }

    /// Runs `ops` random ops of `clients` clients on `keys` keys against a linearizable
    /// last-write-wins register: each op takes effect at a random point of its interval (an
    /// unknown one at any point after its invocation, or never), in that order. `concurrent`:
    /// clients run side by side; otherwise ops never overlap.
    fn generate(
        rng: &mut Rng,
        clients: u64,
        ops: usize,
        keys: usize,
        concurrent: bool,
    ) -> Generated {
        const MAX_LATENCY: u64 = 100;
        let mut free: Vec<u64> = (0..clients).map(|_| rng.below(100)).collect();
        let mut now = 0;
        let mut specs = Vec::with_capacity(ops);
        for n in 0..ops {
            let client = rng.below(clients);
            let start = if concurrent { free[client as usize] } else { now };
            let invoke = start + rng.below(50);
            let complete = invoke + 1 + rng.below(MAX_LATENCY);
            free[client as usize] = complete;
            now = complete + 1;
            let key = format!("k{}", rng.below(keys as u64));
            let call = match rng.below(10) {
                0..=3 => put(&key, &format!("c{client}-{n}")),
                4 => del(&key),
                _ => get(&key),
            };
            let fate = match rng.below(100) {
                0..=4 => Fate::Fail,
                5..=7 if call.is_write() => Fate::Superseded,
                8..=13 => Fate::Unknown { applied: rng.below(2) == 0, gave_up: rng.below(4) > 0 },
                _ => Fate::Done,
            };
            let effect = match fate {
                Fate::Done => Some(invoke + rng.below(complete - invoke + 1)),
                Fate::Unknown { applied: true, .. } if call.is_write() => {
                    Some(invoke + rng.below(3 * MAX_LATENCY))
                }
                _ => None,
            };
            specs.push((invoke, complete, client, call, fate, effect));
        }
        specs.sort_by_key(|s| s.0);
        let mut order: Vec<usize> = (0..specs.len()).filter(|&i| specs[i].5.is_some()).collect();
        order.sort_by_key(|&i| (specs[i].5, i));
        let mut versions: BTreeMap<String, Vec<Option<String>>> =
            (0..keys).map(|k| (format!("k{k}"), vec![None])).collect();
        let mut results: Vec<Option<Option<String>>> = vec![None; specs.len()];
        let mut older = Vec::new();
        for i in order {
            let seen = versions.get_mut(specs[i].3.key()).unwrap();
            match &specs[i].3 {
                Call::Put { value, .. } => seen.push(Some(value.clone())),
                Call::Delete { .. } => seen.push(None),
                Call::Get { .. } => {
                    let now = seen.last().unwrap().clone();
                    let mut old: Vec<Option<String>> = Vec::new();
                    for x in seen.iter().rev() {
                        if *x != now && !old.contains(x) {
                            old.push(x.clone());
                            if old.len() == 4 {
                                break;
                            }
                        }
                    }
                    if !old.is_empty() {
                        older.push((OpId(i), old));
                    }
                    results[i] = Some(now);
                }
            }
        }
        older.sort_by_key(|(id, _)| *id);
        let mut h = History::new();
        for (i, (invoke, complete, client, call, fate, _)) in specs.into_iter().enumerate() {
            let is_write = call.is_write();
            let id = h.invoke(client, invoke * 1000, call);
            let outcome = match fate {
                Fate::Done if is_write => ok(),
                Fate::Done => Outcome::Read(results[i].take().unwrap()),
                Fate::Fail => fail(),
                Fate::Superseded => superseded(),
                Fate::Unknown { gave_up: false, .. } => continue,
                Fate::Unknown { gave_up: true, .. } => unknown(),
            };
            h.complete(id, complete * 1000, outcome);
        }
        let final_state =
            versions.into_iter().map(|(k, v)| (k, v.last().unwrap().clone())).collect();
        Generated { h, final_state, older }
    }

    /// Makes one read return an older value than it did; returns which.
    fn corrupt(rng: &mut Rng, g: &mut Generated) -> OpId {
        let (id, older) = &g.older[rng.below(g.older.len() as u64) as usize];
        let x = older[rng.below(older.len() as u64) as usize].clone();
        g.h.ops[id.0].outcome = Outcome::Read(x);
        *id
    }

    fn pending_count(h: &History) -> usize {
        h.ops().iter().filter(|op| op.complete.is_none()).count()
    }
}
