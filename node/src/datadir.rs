//! The data directory: node identity, generation, and an exclusive lock so two daemons never
//! share one directory.
//!
//! Files (all small, written atomically: temp file, fsync, rename, fsync dir):
//! - `node-id`: the 128-bit node id in hex, created on first start and never changed.
//! - `generation`: the last generation used; each start takes `max(unix seconds, last + 1)`, so a
//!   generation grows across restarts even if the clock steps back.
//! - `addresses.json`: the addresses actually bound (useful with port 0), rewritten each start.
//! - `reset-key`: the QUIC stateless-reset secret, so a restarted node resets peers' stale
//!   connections to its previous process.
//! - `LOCK`: held with an exclusive file lock while the daemon runs.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use starling_gossip::NodeId;
/// The files' formats live in `starling-store-format`, with no IO, so they can be fuzzed.
pub use starling_store_format::datadir::Addresses;
use starling_store_format::datadir::{
    format_addresses, format_node_id, format_reset_key, next_generation, parse_addresses,
    parse_generation, parse_node_id, parse_reset_key,
};

/// The QUIC stateless-reset secret: peers still holding a connection to this node's previous
/// process get a stateless reset from the new one (it can compute the same reset tokens) and
/// reconnect at once, instead of waiting for the idle timeout. A missing or unreadable file is
/// replaced by a fresh secret (the cost is only that one restart's fast reconnect).
fn load_reset_key(p: &Path) -> Result<[u8; 32]> {
    if let Some(key) = fs::read_to_string(p).ok().as_deref().and_then(parse_reset_key) {
        return Ok(key);
    }
    let key: [u8; 32] = rand::random();
    write_atomic(p, format_reset_key(&key).as_bytes())?;
    Ok(key)
}

/// An opened, locked data directory.
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    _lock: File,
    pub node_id: NodeId,
    pub generation: u64,
    /// Secret for QUIC stateless resets, kept across restarts (see [`DataDir::open`]).
    pub reset_key: [u8; 32],
}

impl DataDir {
    /// Opens (creating if needed) and locks `path`, loads or creates the node id and takes the
    /// next generation.
    pub fn open(path: &Path) -> Result<DataDir> {
        fs::create_dir_all(path)
            .with_context(|| format!("cannot create data dir {}", path.display()))?;
        let lock_path = path.join("LOCK");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("data dir {} is not writable", path.display()))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => bail!(
                "data dir {} is in use by another starlingd (lock {} is held)",
                path.display(),
                lock_path.display()
            ),
            Err(fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("cannot lock {}", lock_path.display()))
            }
        }
        let id_path = path.join("node-id");
        let node_id = match fs::read_to_string(&id_path) {
            Ok(s) => parse_node_id(&s).map_err(|e| {
                anyhow::anyhow!(
                    "{} is corrupt ({e}); it must hold the node's 32-hex-digit id. Restore it, or remove the data dir to start as a new node",
                    id_path.display()
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let id = NodeId(rand::random::<u128>() | 1);
                write_atomic(&id_path, format_node_id(id).as_bytes())?;
                id
            }
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", id_path.display())),
        };
        let gen_path = path.join("generation");
        let last = match fs::read_to_string(&gen_path) {
            Ok(s) => parse_generation(&s).with_context(|| {
                format!("{} is corrupt: it must hold a number", gen_path.display())
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", gen_path.display())),
        };
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let generation = next_generation(last, now).with_context(|| {
            format!(
                "{} is corrupt: it holds {last}, the last possible generation. Set it to the \
                 current Unix time, or remove it",
                gen_path.display()
            )
        })?;
        write_atomic(&gen_path, format!("{generation}\n").as_bytes())?;
        let reset_key = load_reset_key(&path.join("reset-key"))?;
        Ok(DataDir { path: path.to_owned(), _lock: lock, node_id, generation, reset_key })
    }

    /// The data dir's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records the bound addresses (tests and scripts read them when ports were 0).
    pub fn write_addresses(&self, a: &Addresses) -> Result<()> {
        write_atomic(&self.path.join("addresses.json"), &format_addresses(a))
    }

    /// Reads `addresses.json` of a data dir.
    pub fn read_addresses(path: &Path) -> Result<Addresses> {
        let p = path.join("addresses.json");
        let bytes = fs::read(&p).with_context(|| format!("cannot read {}", p.display()))?;
        parse_addresses(&bytes).with_context(|| format!("{} is corrupt", p.display()))
    }
}

/// The file a clean stop leaves beside the store (see [`take_clean_stop`]).
pub const CLEAN_STOP: &str = "kv-clean-stop";

/// Whether the store in `dir` stopped cleanly: `Some(true)` if the marker a clean stop writes
/// (once the store is synced) was there, `Some(false)` if the store exists without it (the
/// process was killed, or the machine lost power: the store may lack writes it acknowledged),
/// `None` for a new store. The marker is removed (durably) before anything is written.
pub fn take_clean_stop(dir: &Path, store: &Path) -> Result<Option<bool>> {
    let marker = dir.join(CLEAN_STOP);
    let clean = marker.exists();
    if clean {
        fs::remove_file(&marker).with_context(|| format!("cannot remove {}", marker.display()))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("cannot sync {}", dir.display()))?;
    }
    Ok(store.join("CURRENT").exists().then_some(clean))
}

/// Write-then-rename so a crash leaves either the old or the new file, never a torn one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("cannot rename to {}", path.display()))?;
    if let Some(dir) = path.parent() {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_persists_and_generation_grows() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = DataDir::open(dir.path()).expect("open");
        let (id, g1) = (a.node_id, a.generation);
        // A second daemon on the same dir is refused while the first holds it.
        let e = DataDir::open(dir.path()).unwrap_err().to_string();
        assert!(e.contains("in use"), "{e}");
        drop(a);
        let b = DataDir::open(dir.path()).expect("reopen");
        assert_eq!(b.node_id, id);
        assert!(b.generation > g1);
    }

    #[test]
    fn a_generation_file_at_the_last_generation_is_refused() {
        // Found by the `datadir` fuzz target's property: taking the next generation overflowed.
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("generation"), format!("{}\n", u64::MAX)).expect("write");
        let e = format!("{:#}", DataDir::open(dir.path()).unwrap_err());
        assert!(e.contains("corrupt") && e.contains("last possible generation"), "{e}");
    }

    #[test]
    fn corrupt_identity_is_refused_not_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("node-id"), "not hex").expect("write");
        let e = DataDir::open(dir.path()).unwrap_err().to_string();
        assert!(e.contains("corrupt"), "{e}");
        assert_eq!(fs::read_to_string(dir.path().join("node-id")).expect("read"), "not hex");
    }
}
