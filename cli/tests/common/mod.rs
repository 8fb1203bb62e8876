//! What the CLI's process tests share: the `starling` binary under test, a `starlingd` to run it
//! against, and the node tests' process harness.
//!
//! `starlingd` belongs to another package, so cargo does not build it for these tests. A
//! workspace run (`cargo nextest run --workspace`, as `scripts/test` does) builds it; when it is
//! missing, the first test that needs it runs `cargo build -p starling-node --bin starlingd` into
//! the same target directory. Run the workspace tests after changing `node/`, or `starlingd` here
//! may be an older build.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

pub const STARLING: &str = env!("CARGO_BIN_EXE_starling");

/// The `starlingd` next to `starling`, built (or brought up to date) once per test process.
pub fn starlingd() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let bin = Path::new(STARLING).with_file_name("starlingd");
        // <target>/debug/starling -> <target>
        let target = Path::new(STARLING).parent().and_then(Path::parent).expect("target dir");
        // A workspace test run (`scripts/test`) has just built it; building it again with `-p`
        // could resolve other features and rewrite the binary other tests are running.
        if bin.exists() {
            return bin;
        }
        let built = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "-p", "starling-node", "--bin", "starlingd"])
            .env("CARGO_TARGET_DIR", target)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status();
        match built {
            Ok(s) if s.success() => {}
            other => {
                assert!(bin.exists(), "cannot build starlingd ({other:?}) and none is there");
                eprintln!("note: `cargo build -p starling-node` failed ({other:?}); using the existing {}", bin.display());
            }
        }
        bin
    })
}

#[path = "../../../node/tests/common/process.rs"]
pub mod process;
