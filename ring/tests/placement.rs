//! Placement cases from `testdata/*.txt`, every expectation worked out by hand from the rules in
//! `ALGORITHM.md` (raft-rs keeps its quorum cases the same way).
//!
//! Format, one directive per line, `#` starts a comment:
//!
//! ```text
//! node <id> tokens=<t>,<t>... [zone=<z>] [status=joining|normal|leaving]
//! replicas n=<n> token=<t> -> <id>...            (- for none)
//! write n=<n> token=<t> -> <natural id>... | <pending id>...
//! ranges n=<n> id=<id> -> (<start>,<end>]... | full | none
//! pending n=<n> id=<id> -> (<start>,<end>] from <id>...; ... | none
//! ```
//!
//! All `node` lines come first; the ring is built at the first query. `replicas` and `write`
//! are checked against both `Ring` and `Placement`.

use std::collections::BTreeMap;
use std::path::Path;

use starling_ring::{NodeId, NodeStatus, Range, Ring, RingNode, Token};

#[test]
fn testdata_cases() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("testdata dir")
        .map(|entry| entry.expect("dir entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "txt"))
        .collect();
    files.sort();
    assert!(files.len() >= 7, "expected the placement case files in {}", dir.display());
    let mut failures = Vec::new();
    let mut checked = 0;
    for file in &files {
        let text = std::fs::read_to_string(file).expect("read case file");
        let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        checked += run_file(&name, &text, &mut failures);
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} checks failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(checked > 50, "only {checked} checks ran");
}

fn run_file(name: &str, text: &str, failures: &mut Vec<String>) -> usize {
    let mut nodes = Vec::new();
    let mut ring: Option<Ring> = None;
    let mut placements: BTreeMap<usize, starling_ring::Placement> = BTreeMap::new();
    let mut checked = 0;
    for (number, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let at = format!("{name}:{}: {line}", number + 1);
        let (verb, rest) = line.split_once(' ').unwrap_or((line, ""));
        if verb == "node" {
            assert!(ring.is_none(), "{at}: node after the first query");
            nodes.push(parse_node(rest, &at));
            continue;
        }
        let ring = ring.get_or_insert_with(|| Ring::new(nodes.clone()));
        let (args, expected) = rest.split_once("->").unwrap_or_else(|| panic!("{at}: missing ->"));
        let args = parse_args(args, &at);
        let n: usize = number_arg(&args, "n", &at);
        let placement = placements.entry(n).or_insert_with(|| ring.placement(n));
        let mut check = |ok: bool, got: String| {
            checked += 1;
            if !ok {
                failures.push(format!("{at}\n    got: {got}"));
            }
        };
        match verb {
            "replicas" => {
                let token: Token = number_arg(&args, "token", &at);
                let want = parse_ids(expected, &at);
                let got = ring.replicas(token, n);
                check(got == want, format!("{got:?}"));
                let fast = placement.replicas(token);
                check(fast == want.as_slice(), format!("placement {fast:?}"));
            }
            "write" => {
                let token: Token = number_arg(&args, "token", &at);
                let (natural, pending) =
                    expected.split_once('|').unwrap_or_else(|| panic!("{at}: write needs |"));
                let (natural, pending) = (parse_ids(natural, &at), parse_ids(pending, &at));
                let got = ring.write_set(token, n);
                check(got.natural == natural && got.pending == pending, format!("{got:?}"));
                let fast = placement.write_set(token);
                check(
                    fast.0 == natural.as_slice() && fast.1 == pending.as_slice(),
                    format!("placement {fast:?}"),
                );
            }
            "ranges" => {
                let id: NodeId = number_arg(&args, "id", &at);
                let want = parse_ranges(expected, &at);
                let got = ring.ranges_of(id, n);
                check(got == want, format!("{got:?}"));
            }
            "pending" => {
                let id: NodeId = number_arg(&args, "id", &at);
                let want: Vec<(Range, Vec<NodeId>)> = match expected.trim() {
                    "none" => Vec::new(),
                    list => list
                        .split(';')
                        .map(|item| {
                            let (range, from) = item
                                .split_once("from")
                                .unwrap_or_else(|| panic!("{at}: pending item needs `from`"));
                            (parse_range(range.trim(), &at), parse_ids(from, &at))
                        })
                        .collect(),
                };
                let got = ring.pending_ranges(id, n);
                check(got == want, format!("{got:?}"));
            }
            other => panic!("{at}: unknown directive {other:?}"),
        }
    }
    checked
}

fn parse_node(rest: &str, at: &str) -> RingNode {
    let mut words = rest.split_whitespace();
    let id = words.next().and_then(|w| w.parse().ok()).unwrap_or_else(|| panic!("{at}: node id"));
    let mut node = RingNode { id, tokens: Vec::new(), zone: None, status: NodeStatus::Normal };
    for word in words {
        match word.split_once('=') {
            Some(("tokens", list)) => {
                node.tokens = list
                    .split(',')
                    .map(|t| t.parse().unwrap_or_else(|_| panic!("{at}: token {t:?}")))
                    .collect();
            }
            Some(("zone", zone)) => node.zone = Some(zone.to_owned()),
            Some(("status", status)) => {
                node.status = status.parse().unwrap_or_else(|e| panic!("{at}: {e}"));
            }
            _ => panic!("{at}: unknown node attribute {word:?}"),
        }
    }
    node
}

fn parse_args<'a>(args: &'a str, at: &str) -> BTreeMap<&'a str, &'a str> {
    args.split_whitespace()
        .map(|word| word.split_once('=').unwrap_or_else(|| panic!("{at}: argument {word:?}")))
        .collect()
}

fn number_arg<T: std::str::FromStr>(args: &BTreeMap<&str, &str>, key: &str, at: &str) -> T {
    args.get(key)
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("{at}: missing or bad {key}="))
}

fn parse_ids(list: &str, at: &str) -> Vec<NodeId> {
    list.split_whitespace()
        .filter(|word| *word != "-")
        .map(|word| word.parse().unwrap_or_else(|_| panic!("{at}: node id {word:?}")))
        .collect()
}

fn parse_ranges(list: &str, at: &str) -> Vec<Range> {
    match list.trim() {
        "none" => Vec::new(),
        "full" => vec![Range::FULL],
        list => list.split_whitespace().map(|word| parse_range(word, at)).collect(),
    }
}

/// `(start,end]` or `full`.
fn parse_range(text: &str, at: &str) -> Range {
    if text == "full" {
        return Range::FULL;
    }
    let inner = text
        .strip_prefix('(')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or_else(|| panic!("{at}: range {text:?}"));
    let (start, end) = inner.split_once(',').unwrap_or_else(|| panic!("{at}: range {text:?}"));
    let parse = |t: &str| -> Token {
        t.trim().parse().unwrap_or_else(|_| panic!("{at}: range bound {t:?}"))
    };
    Range { start: parse(start), end: parse(end) }
}
