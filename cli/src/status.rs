//! `starling status`: the members table, and a summary of the node's last minute.

use std::fmt::Write;

use starling_wire::status::{History, Status};

/// The window the summary of the history covers.
const SUMMARY_MS: u64 = 60_000;

/// Renders a status as the human table.
/// A duration in seconds for people: `42 s`, `7 min`, `3.5 h`, `2.1 d`.
fn age(secs: f64) -> String {
    match secs {
        s if s < 120.0 => format!("{s:.0} s"),
        s if s < 7200.0 => format!("{:.0} min", s / 60.0),
        s if s < 172_800.0 => format!("{:.1} h", s / 3600.0),
        s => format!("{:.1} d", s / 86400.0),
    }
}

pub fn render(s: &Status) -> String {
    let mut out = String::new();
    let conv = if s.converged { "converged" } else { "converging" };
    let _ = writeln!(
        out,
        "node {} at {}  generation {}  {}  digest {}{}",
        short(&s.node_id),
        s.addr,
        s.generation,
        conv,
        s.digest,
        if s.insecure { "  [INSECURE]" } else { "" }
    );
    let counts: Vec<String> = ["alive", "suspect", "down", "left", "removed"]
        .iter()
        .map(|st| (st, s.count(st)))
        .filter(|(_, n)| *n > 0)
        .map(|(st, n)| format!("{n} {st}"))
        .collect();
    let _ = writeln!(out, "members: {} ({})", s.members.len(), counts.join(", "));
    let r = &s.ring;
    let _ = writeln!(
        out,
        "ring: {} nodes, digest {}{}, this node {} with {} tokens, replicates {:.1}% of keys (N={})",
        r.nodes,
        r.digest.as_deref().unwrap_or("-"),
        if r.agreed { " (agreed)" } else { " (not agreed yet)" },
        r.status.as_deref().unwrap_or("not on the ring yet"),
        r.tokens,
        r.ownership * 100.0,
        r.replication
    );
    if !s.topics.is_empty() {
        let leads: Vec<String> = s
            .topics
            .iter()
            .filter(|p| p.role == "leader")
            .map(|p| format!("{}/{}", p.topic, p.partition))
            .collect();
        let follows = s.topics.iter().filter(|p| p.role == "follower").count();
        let _ = writeln!(
            out,
            "topics: {} partition replicas here, leads {} ({}), follows {}",
            s.topics.len(),
            leads.len(),
            leads.join(", "),
            follows
        );
        for p in s.topics.iter() {
            let Some(m) = &p.moving else { continue };
            let _ = writeln!(out, "  {}", describe_move(p, m));
        }
    }
    if let Some(kv) = &s.kv {
        let _ = writeln!(
            out,
            "kv: ~{} keys, {} hints pending, {} versions cached; since start {} writes, {} reads, {} failed, {} read repairs, {} hints replayed, {} writes handed to stand-ins",
            kv.keys_estimate,
            kv.hints_pending,
            kv.version_cache_keys,
            kv.writes,
            kv.reads,
            kv.write_failures + kv.read_failures,
            kv.read_repairs,
            kv.hints_replayed,
            kv.fallback_writes
        );
        if kv.max_clock_offset_ms > 0 && kv.clock_offset_ms.unsigned_abs() > kv.max_clock_offset_ms
        {
            let _ = writeln!(
                out,
                "CLOCK OFF by {} ms from {} peers (at most {} ms allowed): this node coordinates no writes until its clock is fixed",
                kv.clock_offset_ms, kv.clock_peers, kv.max_clock_offset_ms
            );
        } else if kv.clock_peers > 0 {
            let _ = writeln!(
                out,
                "clock: {:+} ms from the cluster ({} peers measured, at most {} ms allowed)",
                kv.clock_offset_ms, kv.clock_peers, kv.max_clock_offset_ms
            );
        }
        if kv.unreadable_records > 0 {
            let _ = writeln!(
                out,
                "UNREADABLE RECORDS: {} reads found a corrupt record on this node's disk (each repaired from other replicas); check the disk",
                kv.unreadable_records
            );
        }
        if let Some(why) = &kv.storage_failure {
            let _ = writeln!(out, "STORAGE FAILED, no writes taken until restarted: {why}");
        }
        if let Some(why) = &kv.recovering {
            let _ = writeln!(out, "RECOVERING, no replica reads answered yet: {why}");
        } else if kv.recovered_records > 0 {
            let _ = writeln!(
                out,
                "recovered {} records from other replicas after an unclean stop",
                kv.recovered_records
            );
        }
    }
    if let Some(k) = &s.kafka {
        let total: u64 = k.requests.values().sum();
        let _ = writeln!(
            out,
            "kafka: {} ({}); {} of {} connections open, {} accepted, {} refused at the limit, {} timed out, {} failed handshakes; {total} requests served, {} refused; {} groups coordinated ({} members)",
            k.advertise,
            if k.tls { "TLS" } else { "plain" },
            k.connections,
            k.max_connections,
            k.connections_accepted,
            k.connections_refused,
            k.connections_timed_out,
            k.handshakes_failed,
            k.requests_refused,
            k.groups,
            k.group_members,
        );
    }
    if let Some(r) = &s.repair {
        let never = r.ranges.iter().filter(|x| x.repaired_ms.is_none()).count();
        let oldest = match r.oldest_repair_age_secs {
            Some(a) => format!("oldest complete repair {} ago", age(a)),
            None => format!("{never} of {} ranges never completely repaired", r.ranges.len()),
        };
        let every = match r.interval_secs {
            Some(i) => format!("continuous, every {}", age(i as f64)),
            None => "continuous off".to_owned(),
        };
        let _ = writeln!(
            out,
            "repair: {every}; {oldest}; {} sessions ({} failed), {} ranges compared ({} differed), {} keys received, {} sent; tombstones past grace: {} purged, {} held for repair{}",
            r.sessions,
            r.sessions_failed,
            r.ranges_compared,
            r.ranges_differing,
            r.keys_received,
            r.keys_sent,
            r.tombstones_purged,
            r.tombstones_held,
            match &r.running {
                Some(p) => format!("; running ({}, {}/{} sessions)", p.kind, p.sessions_done, p.sessions_total),
                None => String::new(),
            }
        );
    }
    if let Some(h) = &s.history {
        out.push_str(&summarize(h));
    }
    let _ = writeln!(
        out,
        "{:<10} {:<22} {:<6} {:<8} {:>7} {:>5} {:>12}  DIGEST",
        "NODE", "ADDRESS", "ZONE", "STATE", "PHI", "INC", "GENERATION"
    );
    for m in &s.members {
        let digest = m.digest.as_deref().unwrap_or("-");
        let mark = if m.is_self { "*" } else { "" };
        let _ = writeln!(
            out,
            "{:<10} {:<22} {:<6} {:<8} {:>7.2} {:>5} {:>12}  {}{}",
            format!("{}{mark}", short(&m.node_id)),
            m.addr,
            m.zone.as_deref().unwrap_or("-"),
            m.state,
            m.phi,
            m.incarnation,
            m.generation,
            digest,
            if digest != s.digest && m.state == "alive" { " (differs)" } else { "" }
        );
    }
    out
}

/// Two lines on the last minute of `h` (or less, for a node up for less): the client requests
/// the node coordinated per second and their p99 latency, with minimum and maximum over the
/// samples, then how often it was converged and how often a member's view changed.
pub fn summarize(h: &History) -> String {
    let mut out = String::new();
    let Some(&end) = h.t.last() else {
        let _ = writeln!(out, "last minute: no samples yet");
        return out;
    };
    let from = end.saturating_sub(SUMMARY_MS);
    // Samples in the window; the arrays may be shorter than `t` from a damaged answer.
    let window: Vec<usize> = (0..h.t.len()).filter(|&i| h.t[i] > from).collect();
    let column = |c: &[Option<f64>]| -> Vec<f64> {
        window.iter().filter_map(|&i| c.get(i).copied().flatten()).collect()
    };
    let ops: Vec<f64> = window
        .iter()
        .filter_map(|&i| {
            let r = h.reads.get(i).copied().flatten()?;
            let w = h.writes.get(i).copied().flatten()?;
            Some(r + w)
        })
        .collect();
    let span_s = window
        .first()
        .map_or(0, |&i| end.saturating_sub(h.t[i]).saturating_add(h.interval_ms) / 1000);
    let _ = write!(out, "last {span_s} s: ");
    match Spread::of(&ops) {
        Some(o) => {
            let avg = |c: &[Option<f64>]| Spread::of(&column(c)).map_or(0.0, |s| s.avg);
            let _ = write!(
                out,
                "{:.1} ops/s (min {:.1}, max {:.1}; {:.1} reads, {:.1} writes, {:.1} failed)",
                o.avg,
                o.min,
                o.max,
                avg(&h.reads),
                avg(&h.writes),
                avg(&h.failures)
            );
        }
        None => out.push_str("no rates yet"),
    }
    for (what, c) in [("read", &h.read_p99_ms), ("write", &h.write_p99_ms)] {
        match Spread::of(&column(c)) {
            Some(p) => {
                let _ = write!(
                    out,
                    ", p99 {what} {:.2} ms (min {:.2}, max {:.2})",
                    p.avg, p.min, p.max
                );
            }
            None => {
                let _ = write!(out, ", no {what}s");
            }
        }
    }
    out.push('\n');
    let converged =
        window.iter().filter(|&&i| h.converged.get(i).copied().unwrap_or(false)).count();
    // A run that starts inside the window, after the first sample of all, is a change of view.
    let first = h.t.first().copied().unwrap_or(end);
    let changes = h
        .members
        .iter()
        .flat_map(|m| &m.runs)
        .filter(|&&(start, _, _)| start > from && start > first)
        .count();
    let _ = writeln!(
        out,
        "last {span_s} s: converged in {converged} of {} samples, {changes} change{} of a member's view",
        window.len(),
        if changes == 1 { "" } else { "s" }
    );
    out
}

/// Mean, minimum and maximum of some samples.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Spread {
    avg: f64,
    min: f64,
    max: f64,
}

impl Spread {
    fn of(xs: &[f64]) -> Option<Spread> {
        let xs: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
        if xs.is_empty() {
            return None;
        }
        Some(Spread {
            avg: xs.iter().sum::<f64>() / xs.len() as f64,
            min: xs.iter().copied().fold(f64::INFINITY, f64::min),
            max: xs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        })
    }
}

fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

/// One line for a partition move this node leads: who is added (and how far it has copied the
/// log), who is dropped once they are in sync.
fn describe_move(
    p: &starling_wire::status::PartitionStatus,
    m: &starling_wire::status::PartitionMove,
) -> String {
    let adding: Vec<String> = m
        .adding
        .iter()
        .map(|r| match r.log_end {
            Some(end) => format!("{} (at offset {end} of {})", short(&r.node), p.log_end),
            None => format!("{} (not fetching yet)", short(&r.node)),
        })
        .collect();
    let removing: Vec<String> = m.removing.iter().map(|n| short(n).to_string()).collect();
    format!(
        "moving {}/{}: adding {}; then dropping {}",
        p.topic,
        p.partition,
        if adding.is_empty() { "none (all in sync)".to_string() } else { adding.join(", ") },
        if removing.is_empty() { "none".to_string() } else { removing.join(", ") }
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use starling_wire::status::MemberStatus;

    #[test]
    fn table_shows_every_member_and_convergence() {
        let m = |id: &str, state: &str, me: bool| MemberStatus {
            node_id: id.into(),
            addr: "127.0.0.1:7400".into(),
            state: state.into(),
            phi: 0.5,
            incarnation: 1,
            generation: 9,
            zone: Some("z1".into()),
            digest: Some("d".into()),
            kafka: None,
            is_self: me,
        };
        let s = Status {
            node_id: "aaaaaaaa11".into(),
            digest: "d".into(),
            converged: true,
            members: vec![m("aaaaaaaa11", "alive", true), m("bbbbbbbb22", "down", false)],
            ..Status::default()
        };
        let t = render(&s);
        assert!(t.contains("converged"), "{t}");
        assert!(t.contains("aaaaaaaa*"), "{t}");
        assert!(t.contains("bbbbbbbb") && t.contains("down"), "{t}");
        assert!(t.contains("1 alive, 1 down"), "{t}");
        assert!(!t.contains("last "), "no history, no summary: {t}");
    }

    /// 90 samples a second apart: the summary covers the last 60 of them only.
    #[test]
    fn summary_covers_the_last_minute() {
        use starling_wire::status::HistoryMember;
        let n = 90u64;
        let t: Vec<u64> = (0..n).map(|i| 1_000_000 + 1_000 * i).collect();
        // Before the window: 1,000 reads/s and slow; in it, 10..=69 reads/s and 1 write/s.
        let reads = (0..n)
            .map(|i| match i {
                0 => None,
                1..30 => Some(1_000.0),
                _ => Some((i - 20) as f64),
            })
            .collect();
        let writes = (0..n).map(|i| (i > 0).then_some(1.0)).collect();
        let read_p99_ms =
            (0..n).map(|i| Some(if i < 30 { 99.0 } else { 1.0 + (i % 2) as f64 })).collect();
        let h = History {
            interval_ms: 1_000,
            capacity: 600,
            t: t.clone(),
            reads,
            writes,
            failures: vec![Some(0.0); n as usize],
            read_p99_ms,
            write_p99_ms: vec![None; n as usize],
            converged: (0..n).map(|i| i >= 50).collect(),
            views: Vec::new(),
            members: vec![HistoryMember {
                node_id: "a".into(),
                addr: "x".into(),
                // Its view changed before the window, and twice in it.
                runs: vec![
                    (t[0], t[9], 0),
                    (t[10], t[59], 1),
                    (t[60], t[69], 2),
                    (t[70], t[89], 1),
                ],
            }],
        };
        let s = summarize(&h);
        assert!(
            s.starts_with(
                "last 60 s: 40.5 ops/s (min 11.0, max 70.0; 39.5 reads, 1.0 writes, 0.0 failed)"
            ),
            "{s}"
        );
        assert!(s.contains("p99 read 1.50 ms (min 1.00, max 2.00)"), "{s}");
        assert!(s.contains("no writes"), "{s}");
        assert!(s.contains("converged in 40 of 60 samples, 2 changes of a member's view"), "{s}");
        // A status that carries it shows it.
        let status = Status { history: Some(h), ..Status::default() };
        assert!(render(&status).contains("converged in 40 of 60 samples"));
        // No samples, or arrays shorter than `t` (a damaged answer): no panic.
        assert!(summarize(&History::default()).contains("no samples yet"));
        let short = History { t: vec![1, 2, 3], reads: vec![Some(1.0)], ..History::default() };
        assert!(summarize(&short).contains("no rates yet"), "{}", summarize(&short));
        let unsorted =
            History { t: vec![5, u64::MAX, 3], interval_ms: u64::MAX, ..History::default() };
        assert!(summarize(&unsorted).contains("0 of 3 samples"), "{}", summarize(&unsorted));
    }

    #[test]
    fn a_move_reads_as_who_is_added_how_far_and_who_is_dropped() {
        use starling_wire::status::{MovingReplica, PartitionMove, PartitionStatus};
        let p = PartitionStatus {
            topic: "orders".into(),
            partition: 3,
            log_end: 900,
            ..Default::default()
        };
        let m = PartitionMove {
            adding: vec![
                MovingReplica { node: "aaaaaaaaaaaaaaaaaaaa".into(), log_end: Some(450) },
                MovingReplica { node: "bbbbbbbbbbbbbbbbbbbb".into(), log_end: None },
            ],
            removing: vec!["cccccccccccccccccccc".into()],
        };
        let line = describe_move(&p, &m);
        assert_eq!(
            line,
            format!(
                "moving orders/3: adding {} (at offset 450 of 900), {} (not fetching yet); then dropping {}",
                short("aaaaaaaaaaaaaaaaaaaa"),
                short("bbbbbbbbbbbbbbbbbbbb"),
                short("cccccccccccccccccccc")
            )
        );
    }
}
