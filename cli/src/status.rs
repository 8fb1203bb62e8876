//! `starling status`: the members table.

use std::fmt::Write;

use starling_wire::status::Status;

/// Renders a status as the human table.
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
    let counts: Vec<String> = ["alive", "suspect", "down", "left"]
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

fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
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
    }
}
