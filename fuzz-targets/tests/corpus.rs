//! Replays every fuzz input kept in the repository through its target's body, on stable Rust:
//! the corpus (`fuzz/corpus/<target>/`), the crashes fixed (`fuzz/regressions/<target>/`) and the
//! seeds as the code makes them today. A property that no longer holds fails here, without the
//! fuzzer.

use std::path::{Path, PathBuf};

use starling_fuzz_targets::{seeds, TARGETS};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut out: Vec<PathBuf> =
        entries.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_file()).collect();
    out.sort();
    out
}

#[test]
fn every_corpus_and_regression_input_passes_its_target() {
    for (name, body) in TARGETS {
        let corpus = files(&fuzz_dir().join("corpus").join(name));
        assert!(!corpus.is_empty(), "fuzz/corpus/{name} is empty or missing");
        for path in corpus.iter().chain(&files(&fuzz_dir().join("regressions").join(name))) {
            let data = std::fs::read(path).expect("read corpus file");
            let run = std::panic::catch_unwind(|| body(&data));
            assert!(run.is_ok(), "fuzz target {name} fails on {}", path.display());
        }
    }
}

#[test]
fn every_target_has_a_fuzz_target_file() {
    for (name, _) in TARGETS {
        let file = fuzz_dir().join("fuzz_targets").join(format!("{name}.rs"));
        assert!(file.is_file(), "{} is missing", file.display());
    }
}

#[test]
fn the_seeds_pass_their_targets() {
    let seeds = seeds::all();
    for (name, _) in TARGETS {
        assert!(seeds.iter().any(|(t, _, _)| t == name), "no seed for {name}");
    }
    for (target, name, bytes) in seeds {
        let (_, body) = TARGETS.iter().find(|(t, _)| *t == target).expect("a known target");
        let run = std::panic::catch_unwind(|| body(&bytes));
        assert!(run.is_ok(), "fuzz target {target} fails on its seed {name}");
    }
}
