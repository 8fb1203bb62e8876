//! A checker for **versioned registers**: ZooKeeper's `setData(path, data, version)` — a
//! conditional set — and its reads, as the metadata service offers them.
//!
//! Every successful write of a znode's data bumps its version by one, so the version names the
//! place of each write in the znode's one history: a linearizable history of conditional sets
//! is one in which the versions the service handed out form a single chain consistent with real
//! time. Clients record, per operation, when they invoked it and when they got its outcome (one
//! clock for all, as in [`crate::history`]), and what came back. [`check`] reports every way the
//! history breaks that chain:
//!
//! - **Lost update**: two acknowledged writes got the same version, or a conditional write on
//!   version `e` was acknowledged with a version other than `e + 1`.
//! - **Real-time order**: an acknowledged write that completed before another was invoked got a
//!   version that is not lower.
//! - **Phantom read**: a read (or the final state) returned data and version that no write
//!   produced together (every write writes unique data, so data names its write).
//! - **Read from the future**: a read returned the version of a write invoked after the read
//!   completed.
//! - **Stale read** (for reads the client made after a `sync`, or with the highest zxid it had
//!   seen): a read returned a version lower than that of an acknowledged write that completed
//!   before the read was invoked.
//! - **Bad refusal**: a conditional write was refused because the znode was at version `a`, but
//!   `a` is the version it expected, or no write that could have produced `a` was invoked
//!   before the refusal came back.
//! - **Lost write**: the final state's version is lower than an acknowledged write's.
//!
//! Writes whose outcome is unknown (the leader died with them in flight) may or may not have
//! happened: they produce versions others may observe, but promise nothing.

/// A time no operation completes by (an unknown outcome).
pub const NEVER: u64 = u64::MAX;

/// What a write came back with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Acknowledged: the znode is now at this version.
    Written { version: u32 },
    /// Refused: the znode was at `actual`, not the version the write expected.
    BadVersion { actual: u32 },
    /// No answer, or the service said the outcome is unknown.
    Unknown,
    /// Refused for another reason (nothing written).
    Failed,
}

/// One write of a versioned register.
#[derive(Clone, Debug)]
pub struct WriteOp {
    pub client: u64,
    pub invoked: u64,
    /// [`NEVER`] if the outcome is unknown.
    pub completed: u64,
    /// The version it required (`None`: any).
    pub expected: Option<u32>,
    /// Unique per write.
    pub data: Vec<u8>,
    pub outcome: WriteOutcome,
}

/// One read.
#[derive(Clone, Debug)]
pub struct ReadOp {
    pub client: u64,
    pub invoked: u64,
    pub completed: u64,
    pub version: u32,
    pub data: Vec<u8>,
    /// The client synchronized first (`sync`, or passed the highest zxid it had seen after an
    /// acknowledged write): recency is checked.
    pub synced: bool,
}

/// What [`check`] found wrong, with the operations that show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub kind: &'static str,
    pub detail: String,
}

fn v(kind: &'static str, detail: String) -> Violation {
    Violation { kind, detail }
}

/// Checks a register's history; `initial` is its data at version 0, `last` its final (version,
/// data), read after the cluster healed.
pub fn check(
    initial: &[u8],
    writes: &[WriteOp],
    reads: &[ReadOp],
    last: (u32, &[u8]),
) -> Vec<Violation> {
    let mut out = Vec::new();
    let acked: Vec<(&WriteOp, u32)> = writes
        .iter()
        .filter_map(|w| match w.outcome {
            WriteOutcome::Written { version } => Some((w, version)),
            _ => None,
        })
        .collect();
    // Which write's data is which version: acked ones for sure.
    let mut by_version: std::collections::BTreeMap<u32, &WriteOp> = Default::default();
    for (w, ver) in &acked {
        if let Some(other) = by_version.insert(*ver, w) {
            out.push(v(
                "lost update",
                format!("two acknowledged writes got version {ver}: {other:?} and {w:?}"),
            ));
        }
        if let Some(e) = w.expected {
            if *ver != e + 1 {
                out.push(v(
                    "lost update",
                    format!("a write conditional on version {e} was acknowledged as {ver}: {w:?}"),
                ));
            }
        }
    }
    for (a, va) in &acked {
        for (b, vb) in &acked {
            if a.completed < b.invoked && va >= vb {
                out.push(v(
                    "real-time order",
                    format!("{a:?} (version {va}) completed before {b:?} (version {vb}) began"),
                ));
            }
        }
    }
    let producer = |data: &[u8]| writes.iter().find(|w| w.data == data);
    // Each observed (version, data): produced by a write that did not fail, or the initial state.
    let observe = |what: &str, ver: u32, data: &[u8], before: u64, out: &mut Vec<Violation>| {
        if ver == 0 {
            if data != initial {
                out.push(v("phantom read", format!("{what}: version 0 with data {data:?}")));
            }
            return;
        }
        match producer(data) {
            None => out.push(v("phantom read", format!("{what}: data {data:?} no write wrote"))),
            Some(w)
                if matches!(w.outcome, WriteOutcome::Failed | WriteOutcome::BadVersion { .. }) =>
            {
                out.push(v("phantom read", format!("{what}: the data of a refused write {w:?}")))
            }
            Some(w) => {
                if let WriteOutcome::Written { version } = w.outcome {
                    if version != ver {
                        out.push(v(
                            "phantom read",
                            format!("{what}: version {ver} with the data of the write acknowledged as {version}"),
                        ));
                    }
                }
                if w.invoked > before {
                    out.push(v("read from the future", format!("{what}: saw {w:?}")));
                }
            }
        }
    };
    for r in reads {
        observe(&format!("read {r:?}"), r.version, &r.data, r.completed, &mut out);
        if r.synced {
            for (w, ver) in &acked {
                if w.completed < r.invoked && *ver > r.version {
                    out.push(v(
                        "stale read",
                        format!("{r:?} after {w:?} was acknowledged at version {ver}"),
                    ));
                }
            }
        }
    }
    for w in writes {
        if let (WriteOutcome::BadVersion { actual }, Some(e)) = (&w.outcome, w.expected) {
            if *actual == e {
                out.push(v("bad refusal", format!("refused at the version it expected: {w:?}")));
            }
            let possible = *actual == 0
                || writes.iter().any(|o| {
                    o.invoked <= w.completed
                        && match o.outcome {
                            WriteOutcome::Written { version } => version == *actual,
                            WriteOutcome::Unknown => true,
                            _ => false,
                        }
                });
            if !possible {
                out.push(v(
                    "bad refusal",
                    format!("no write could have made version {actual}: {w:?}"),
                ));
            }
        }
    }
    observe("the final state", last.0, last.1, NEVER - 1, &mut out);
    if let Some((w, ver)) = acked.iter().max_by_key(|(_, ver)| *ver) {
        if last.0 < *ver {
            out.push(v(
                "lost write",
                format!("the final version is {}, but {w:?} was acknowledged at {ver}", last.0),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(inv: u64, done: u64, expected: Option<u32>, data: &str, outcome: WriteOutcome) -> WriteOp {
        WriteOp { client: 1, invoked: inv, completed: done, expected, data: data.into(), outcome }
    }

    fn r(inv: u64, done: u64, version: u32, data: &str, synced: bool) -> ReadOp {
        ReadOp { client: 2, invoked: inv, completed: done, version, data: data.into(), synced }
    }

    use WriteOutcome::*;

    #[test]
    fn a_legal_history_passes() {
        let writes = [
            w(1, 3, Some(0), "a", Written { version: 1 }),
            w(2, 5, Some(0), "b", BadVersion { actual: 1 }),
            w(4, 6, Some(1), "c", Written { version: 2 }),
            w(7, NEVER, Some(2), "d", Unknown),
        ];
        let reads = [r(3, 4, 1, "a", true), r(6, 7, 2, "c", true), r(8, 9, 3, "d", false)];
        assert_eq!(check(b"", &writes, &reads, (3, b"d")), vec![]);
        // The unknown write may also not have happened.
        assert_eq!(check(b"", &writes, &reads[..2], (2, b"c")), vec![]);
    }

    #[test]
    fn each_violation_is_found() {
        let kinds =
            |writes: &[WriteOp], reads: &[ReadOp], last: (u32, &[u8])| -> Vec<&'static str> {
                check(b"", writes, reads, last).into_iter().map(|v| v.kind).collect()
            };
        // Two writes conditional on version 0 both acknowledged.
        let both = [
            w(1, 3, Some(0), "a", Written { version: 1 }),
            w(2, 4, Some(0), "b", Written { version: 1 }),
        ];
        assert!(kinds(&both, &[], (1, b"b")).contains(&"lost update"));
        // Real time: the later write got the lower version.
        let order = [
            w(1, 2, None, "a", Written { version: 2 }),
            w(3, 4, None, "b", Written { version: 1 }),
        ];
        assert!(kinds(&order, &[], (2, b"a")).contains(&"real-time order"));
        // A read of data nobody wrote, and of a version that does not match its write.
        let one = [w(1, 2, None, "a", Written { version: 1 })];
        assert!(kinds(&one, &[r(3, 4, 1, "zz", false)], (1, b"a")).contains(&"phantom read"));
        assert!(kinds(&one, &[r(3, 4, 5, "a", false)], (1, b"a")).contains(&"phantom read"));
        // A read of a write invoked after it completed.
        let late = [w(5, 6, None, "a", Written { version: 1 })];
        assert!(
            kinds(&late, &[r(1, 2, 1, "a", false)], (1, b"a")).contains(&"read from the future")
        );
        // A synchronized read behind an acknowledged write.
        assert!(kinds(&one, &[r(3, 4, 0, "", true)], (1, b"a")).contains(&"stale read"));
        // ... which an unsynchronized read may be (ZooKeeper's local reads).
        assert_eq!(kinds(&one, &[r(3, 4, 0, "", false)], (1, b"a")), Vec::<&str>::new());
        // A refusal at the version it expected, and at a version nobody made.
        let refused = [w(1, 2, Some(0), "a", BadVersion { actual: 0 })];
        assert!(kinds(&refused, &[], (0, b"")).contains(&"bad refusal"));
        let refused = [w(1, 2, Some(0), "a", BadVersion { actual: 3 })];
        assert!(kinds(&refused, &[], (0, b"")).contains(&"bad refusal"));
        // The final state lost an acknowledged write.
        assert!(kinds(&one, &[], (0, b"")).contains(&"lost write"));
    }
}
