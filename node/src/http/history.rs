//! The last minutes of this node, kept in memory for the live page (`GET /history`, README
//! "The status endpoint"): once a [`SAMPLE_EVERY`], the key-value operations this node
//! coordinated (reads and writes per second, failures per second, p99 latency) and the view every
//! member reports (its state, membership digest and ring digest), so a page loaded now shows
//! what happened before it was opened, the moment the cluster converged included.
//!
//! Bounded: [`SAMPLES`] samples, and per member at most [`MAX_RUNS`] runs of one view (a view
//! that does not change is one run however long it lasts) for at most [`MAX_MEMBERS`] members.
//! Nothing here comes from outside the node: latencies are measured by [`OpWindow::observe`],
//! counts and views are read from the node's own status snapshot.

use std::collections::{HashSet, VecDeque};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;

use crate::status::Status;

/// How often a sample is taken.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// Samples kept: ten minutes at one a second.
pub const SAMPLES: usize = 600;
/// Runs of one view kept per member; older ones are dropped first (a member whose view flaps
/// every second shows only its last minute).
pub const MAX_RUNS: usize = 64;
/// Members with a timeline. A new member beyond this replaces the one not seen for longest; when
/// all of them are still there, it gets no row.
pub const MAX_MEMBERS: usize = 256;

/// Latencies above this (60 s) are recorded as this.
const MAX_LATENCY_MICROS: u64 = 60_000_000;

/// The coordinator latencies of the current interval, fed by every key-value request this node
/// answers and emptied by each sample.
#[derive(Debug)]
pub struct OpWindow {
    inner: Mutex<Latencies>,
}

#[derive(Debug)]
struct Latencies {
    reads: Histogram<u64>,
    writes: Histogram<u64>,
}

impl Latencies {
    fn new() -> Self {
        // 2 significant figures from 1 µs to 60 s: a few KiB each, and an O(1) record.
        let histogram = || {
            Histogram::new_with_bounds(1, MAX_LATENCY_MICROS, 2)
                .expect("static histogram bounds are valid")
        };
        Latencies { reads: histogram(), writes: histogram() }
    }
}

/// One interval's operations: how many and their 99th percentile, in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct OpCounts {
    pub reads: u64,
    pub writes: u64,
    pub read_p99_micros: Option<u64>,
    pub write_p99_micros: Option<u64>,
}

impl Default for OpWindow {
    fn default() -> Self {
        OpWindow { inner: Mutex::new(Latencies::new()) }
    }
}

impl OpWindow {
    /// Records one RPC of `kind` that took `elapsed`; only the client API's key-value requests
    /// (`kv_get` a read, `kv_put` and `kv_delete` writes) count, replica traffic does not.
    pub fn observe(&self, kind: &str, elapsed: Duration) {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let micros = micros.clamp(1, MAX_LATENCY_MICROS);
        let mut l = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let h = match kind {
            "kv_get" => &mut l.reads,
            "kv_put" | "kv_delete" => &mut l.writes,
            _ => return,
        };
        // Cannot fail: the value is clamped into the bounds.
        let _ = h.record(micros);
    }

    /// What was observed since the last call, and starts a new interval.
    pub fn take(&self) -> OpCounts {
        let mut l = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let p99 = |h: &Histogram<u64>| (!h.is_empty()).then(|| h.value_at_quantile(0.99));
        let counts = OpCounts {
            reads: l.reads.len(),
            writes: l.writes.len(),
            read_p99_micros: p99(&l.reads),
            write_p99_micros: p99(&l.writes),
        };
        l.reads.reset();
        l.writes.reset();
        counts
    }
}

/// One sample: the rates of the interval that ends at `t_ms`.
#[derive(Clone, Debug, PartialEq)]
struct Sample {
    t_ms: u64,
    /// `None` for the first sample, which has no interval before it.
    rates: Option<Rates>,
    converged: bool,
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct Rates {
    reads: f64,
    writes: f64,
    /// `None` on a node without storage.
    failures: Option<f64>,
    read_p99_ms: Option<f64>,
    write_p99_ms: Option<f64>,
}

/// `GET /history`.
pub use starling_wire::status::History as HistoryJson;
/// One member's runs in [`HistoryJson`].
pub use starling_wire::status::HistoryMember as MemberJson;
/// What a member reports, as this node sees it.
pub use starling_wire::status::HistoryView as View;

/// A member that kept one view from the sample at `from_ms` to the one at `to_ms`.
#[derive(Clone, Debug, PartialEq)]
struct Run {
    from_ms: u64,
    to_ms: u64,
    view: View,
}

#[derive(Clone, Debug, PartialEq)]
struct Timeline {
    node_id: String,
    addr: String,
    runs: VecDeque<Run>,
}

/// The samples and the members' timelines. [`History::record`] adds a sample;
/// [`History::to_json`] is what `GET /history` answers.
#[derive(Debug, Default)]
pub struct History {
    samples: VecDeque<Sample>,
    members: Vec<Timeline>,
    /// When the last sample was taken and the failure count then, for the next rates.
    last: Option<(Instant, Option<u64>)>,
}

impl History {
    /// Adds the sample of `now` (wall clock `t_ms`): `ops` are the operations observed since the
    /// previous sample, `status` the node's snapshot now.
    pub fn record(&mut self, now: Instant, t_ms: u64, ops: OpCounts, status: &Status) {
        let failures = status.kv.as_ref().map(|kv| kv.read_failures + kv.write_failures);
        let rates = self.last.and_then(|(then, failures_then)| {
            let secs = now.checked_duration_since(then)?.as_secs_f64();
            if secs <= 0.0 {
                return None;
            }
            let per_sec = |n: u64| round(n as f64 / secs, 10.0);
            let ms = |micros: Option<u64>| micros.map(|m| round(m as f64 / 1000.0, 100.0));
            Some(Rates {
                reads: per_sec(ops.reads),
                writes: per_sec(ops.writes),
                failures: match (failures, failures_then) {
                    (Some(now), Some(then)) => Some(per_sec(now.saturating_sub(then))),
                    _ => None,
                },
                read_p99_ms: ms(ops.read_p99_micros),
                write_p99_ms: ms(ops.write_p99_micros),
            })
        });
        self.last = Some((now, failures));
        if self.samples.len() == SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back(Sample { t_ms, rates, converged: status.converged });

        let present: HashSet<&str> = status.members.iter().map(|m| m.node_id.as_str()).collect();
        for m in &status.members {
            let view = View {
                state: m.state.clone(),
                digest: m.digest.clone(),
                ring: status.ring.member_digests.get(&m.node_id).cloned(),
            };
            let timeline = match self.members.iter_mut().position(|t| t.node_id == m.node_id) {
                Some(i) => &mut self.members[i],
                None => {
                    if self.members.len() >= MAX_MEMBERS {
                        // Make room by forgetting whoever was seen last longest ago, unless
                        // every one of them is in this sample.
                        let stalest = self
                            .members
                            .iter()
                            .enumerate()
                            .filter(|(_, t)| !present.contains(t.node_id.as_str()))
                            .filter_map(|(i, t)| Some((i, t.runs.back()?.to_ms)))
                            .min_by_key(|&(_, seen)| seen);
                        match stalest {
                            Some((i, _)) => {
                                self.members.swap_remove(i);
                            }
                            None => continue,
                        }
                    }
                    self.members.push(Timeline {
                        node_id: m.node_id.clone(),
                        addr: m.addr.clone(),
                        runs: VecDeque::new(),
                    });
                    self.members.last_mut().expect("just pushed")
                }
            };
            timeline.addr.clone_from(&m.addr);
            match timeline.runs.back_mut() {
                Some(run) if run.view == view => run.to_ms = t_ms,
                _ => {
                    if timeline.runs.len() == MAX_RUNS {
                        timeline.runs.pop_front();
                    }
                    timeline.runs.push_back(Run { from_ms: t_ms, to_ms: t_ms, view });
                }
            }
        }
        // Forget what ended before the oldest sample.
        let oldest = self.samples.front().map_or(0, |s| s.t_ms);
        for t in &mut self.members {
            while t.runs.front().is_some_and(|r| r.to_ms < oldest) {
                t.runs.pop_front();
            }
        }
        self.members.retain(|t| !t.runs.is_empty());
        self.members.sort_by(|a, b| a.addr.cmp(&b.addr).then(a.node_id.cmp(&b.node_id)));
    }

    /// The JSON `GET /history` answers: samples as columns (one array per figure, oldest first)
    /// and every member's runs of views, the views listed once and referred to by index.
    pub fn to_json(&self) -> HistoryJson {
        let rates = |f: fn(&Rates) -> Option<f64>| -> Vec<Option<f64>> {
            self.samples.iter().map(|s| s.rates.as_ref().and_then(f)).collect()
        };
        let mut views: Vec<View> = Vec::new();
        let members = self
            .members
            .iter()
            .map(|t| MemberJson {
                node_id: t.node_id.clone(),
                addr: t.addr.clone(),
                runs: t
                    .runs
                    .iter()
                    .map(|r| {
                        let i = match views.iter().position(|v| *v == r.view) {
                            Some(i) => i,
                            None => {
                                views.push(r.view.clone());
                                views.len() - 1
                            }
                        };
                        (r.from_ms, r.to_ms, i)
                    })
                    .collect(),
            })
            .collect();
        HistoryJson {
            interval_ms: SAMPLE_EVERY.as_millis() as u64,
            capacity: SAMPLES,
            t: self.samples.iter().map(|s| s.t_ms).collect(),
            reads: rates(|r| Some(r.reads)),
            writes: rates(|r| Some(r.writes)),
            failures: rates(|r| r.failures),
            read_p99_ms: rates(|r| r.read_p99_ms),
            write_p99_ms: rates(|r| r.write_p99_ms),
            converged: self.samples.iter().map(|s| s.converged).collect(),
            views,
            members,
        }
    }
}

/// [`History`] behind a lock, with the latencies that feed it.
#[derive(Debug, Default)]
pub struct Recorder {
    pub ops: OpWindow,
    history: Mutex<History>,
}

impl Recorder {
    /// Takes a sample now.
    pub fn sample(&self, status: &Status) {
        let ops = self.ops.take();
        let t_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let mut h = self.history.lock().unwrap_or_else(PoisonError::into_inner);
        h.record(Instant::now(), t_ms, ops, status);
    }

    pub fn to_json(&self) -> HistoryJson {
        self.history.lock().unwrap_or_else(PoisonError::into_inner).to_json()
    }
}

fn round(x: f64, scale: f64) -> f64 {
    (x * scale).round() / scale
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::MemberStatus;

    fn member(n: u8, state: &str, digest: &str) -> MemberStatus {
        MemberStatus {
            node_id: format!("{n:032x}"),
            addr: format!("127.0.0.1:{}", 7000 + u16::from(n)),
            state: state.to_owned(),
            phi: 0.0,
            incarnation: 0,
            generation: 1,
            zone: None,
            digest: Some(digest.to_owned()),
            kafka: None,
            is_self: n == 1,
        }
    }

    fn status(members: Vec<MemberStatus>, converged: bool) -> Status {
        let mut s = Status { members, converged, ..Status::default() };
        for m in &s.members {
            s.ring.member_digests.insert(m.node_id.clone(), "r1".to_owned());
        }
        s
    }

    #[test]
    fn window_counts_client_requests_and_their_p99() {
        let w = OpWindow::default();
        for i in 1..=100 {
            w.observe("kv_get", Duration::from_micros(i * 100));
        }
        w.observe("kv_put", Duration::from_millis(3));
        w.observe("kv_delete", Duration::from_millis(5));
        w.observe("replica_write", Duration::from_secs(1));
        w.observe("gossip", Duration::from_secs(1));
        let c = w.take();
        assert_eq!((c.reads, c.writes), (100, 2));
        let p99 = c.read_p99_micros.expect("reads were seen");
        assert!((9_800..=10_000).contains(&p99), "{p99}");
        assert!(c.write_p99_micros.expect("writes were seen") >= 4_900);
        assert_eq!(w.take(), OpCounts::default(), "each interval starts empty");
        // Out of range values are clamped, not lost.
        w.observe("kv_put", Duration::from_secs(3600));
        w.observe("kv_put", Duration::ZERO);
        assert_eq!(w.take().writes, 2);
    }

    #[test]
    fn rates_are_per_second_of_the_interval() {
        let mut h = History::default();
        let t0 = Instant::now();
        let mut s = status(vec![member(1, "alive", "d")], true);
        s.kv = Some(crate::status::KvStatus { read_failures: 5, ..Default::default() });
        h.record(t0, 1_000, OpCounts::default(), &s);
        s.kv = Some(crate::status::KvStatus {
            read_failures: 9,
            write_failures: 2,
            ..Default::default()
        });
        let ops =
            OpCounts { reads: 30, writes: 4, read_p99_micros: Some(1_234), write_p99_micros: None };
        h.record(t0 + Duration::from_secs(2), 3_000, ops, &s);
        let j = h.to_json();
        assert_eq!(j.t, vec![1_000, 3_000]);
        assert_eq!(j.reads, vec![None, Some(15.0)]);
        assert_eq!(j.writes, vec![None, Some(2.0)]);
        assert_eq!(j.failures, vec![None, Some(3.0)]);
        assert_eq!(j.read_p99_ms, vec![None, Some(1.23)]);
        assert_eq!(j.write_p99_ms, vec![None, None]);
        assert_eq!(j.converged, vec![true, true]);
    }

    #[test]
    fn samples_are_bounded_and_the_oldest_go_first() {
        let mut h = History::default();
        let t0 = Instant::now();
        let s = status(vec![member(1, "alive", "d")], true);
        for i in 0..SAMPLES as u64 + 50 {
            h.record(t0 + Duration::from_secs(i), 1_000 * i, OpCounts::default(), &s);
        }
        let j = h.to_json();
        assert_eq!(j.t.len(), SAMPLES);
        assert_eq!(j.t[0], 50_000);
        assert_eq!(j.reads.len(), SAMPLES);
        // A view that never changed is one run, however long.
        assert_eq!(j.members.len(), 1);
        assert_eq!(j.members[0].runs, vec![(0, 1_000 * (SAMPLES as u64 + 49), 0)]);
    }

    /// Three members start with different views and agree at the third sample: each gets two
    /// runs, and their last runs share one view.
    #[test]
    fn timelines_show_when_the_views_agree() {
        let mut h = History::default();
        let t0 = Instant::now();
        let apart = status(
            vec![member(1, "alive", "a"), member(2, "alive", "b"), member(3, "suspect", "c")],
            false,
        );
        let agreed = status(
            vec![member(1, "alive", "x"), member(2, "alive", "x"), member(3, "alive", "x")],
            true,
        );
        for (i, s) in [&apart, &apart, &agreed, &agreed].into_iter().enumerate() {
            h.record(t0 + Duration::from_secs(i as u64), 1_000 * i as u64, OpCounts::default(), s);
        }
        let j = h.to_json();
        assert_eq!(j.converged, vec![false, false, true, true]);
        assert_eq!(j.members.len(), 3);
        let last: Vec<usize> = j.members.iter().map(|m| m.runs.last().expect("runs").2).collect();
        assert!(last.iter().all(|&v| v == last[0]));
        assert_eq!(
            j.views[last[0]],
            View { state: "alive".into(), digest: Some("x".into()), ring: Some("r1".into()) }
        );
        for m in &j.members {
            assert_eq!(m.runs.len(), 2, "{m:?}");
            assert_eq!((m.runs[0].0, m.runs[0].1), (0, 1_000));
            assert_eq!((m.runs[1].0, m.runs[1].1), (2_000, 3_000));
        }
        assert_eq!(j.views[j.members[2].runs[0].2].state, "suspect");
        assert_eq!(j.views.len(), 4, "three views apart, one agreed");
    }

    #[test]
    fn runs_and_members_are_bounded() {
        let mut h = History::default();
        let t0 = Instant::now();
        // One member flapping every sample keeps only its last MAX_RUNS runs.
        for i in 0..200u64 {
            let s = status(vec![member(1, "alive", &format!("d{i}"))], false);
            h.record(t0 + Duration::from_secs(i), 1_000 * i, OpCounts::default(), &s);
        }
        let j = h.to_json();
        assert_eq!(j.members[0].runs.len(), MAX_RUNS);
        assert_eq!(j.members[0].runs[0].0, 1_000 * (200 - MAX_RUNS as u64));

        // Members beyond the cap are not tracked while all the others are still there...
        let mut h = History::default();
        let many = |from: usize| -> Vec<MemberStatus> {
            (from..from + MAX_MEMBERS + 10)
                .map(|i| MemberStatus { node_id: format!("{i:032x}"), ..member(2, "alive", "d") })
                .collect()
        };
        h.record(t0, 0, OpCounts::default(), &status(many(1000), false));
        assert_eq!(h.to_json().members.len(), MAX_MEMBERS);
        // ... but take the place of members no longer seen.
        let one = status(vec![member(1, "alive", "d")], true);
        h.record(t0 + Duration::from_secs(1), 1_000, OpCounts::default(), &one);
        let j = h.to_json();
        assert_eq!(j.members.len(), MAX_MEMBERS);
        assert!(j.members.iter().any(|m| m.node_id == member(1, "alive", "d").node_id));
        // Members gone for the whole window are dropped.
        for i in 2..=SAMPLES as u64 {
            h.record(t0 + Duration::from_secs(i), 1_000 * i, OpCounts::default(), &one);
        }
        let j = h.to_json();
        assert_eq!(j.members.len(), 1);
        assert_eq!(j.members[0].node_id, member(1, "alive", "d").node_id);
    }
}
