//! The metadata service's durable ZAB state (`<data-dir>/meta`): its fsyncs follow ZAB's rule
//! (every batch durable before its acknowledgements leave), whatever the key-value store's
//! `--sync` mode.
//!
//! **The journal** (`journal/<seq, 16 hex digits>.log`, the format in
//! [`starling_store_format::meta_journal`]). Each [`ZabStore::apply`] — one
//! [`Ready`](starling_zab::Ready) batch of [`Persist`] operations, or every batch the log writer
//! was handed during its last write — is one record written with one `fdatasync` (group
//! commit). A record either checks whole or ends the journal, so a crash leaves all of a batch
//! or none of it. Segments are [`SEGMENT_BYTES`] and written into space allocated before (zeros,
//! or a retired segment renamed; the next one is allocated on a thread of its own while the
//! current one fills): an `fdatasync` then writes the data blocks alone, never the
//! inode nor a file-system journal commit — on this kind of disk about half the time of an
//! `fdatasync` that grows the file, which is what a RocksDB write-ahead log does. Every segment
//! opens with a checkpoint record (the epochs, the log's base, the leader's snapshot, the
//! voters, and the salt its records are checked with, drawn at random) so that once every log
//! entry of the segments before it is compacted away, they are retired: the two newest retired
//! are kept for reuse, the others deleted. Moving on to a new segment: its checkpoint is written
//! and synced, then the segment before is ended (an end record, synced), then the directory is
//! synced.
//!
//! A restart first syncs every segment and the directories (a process that stopped may have
//! left writes in the page cache only), then replays the segments in order. The first record
//! that does not check ends the last segment (a write cut short by a crash: never
//! acknowledged) and writing goes on from there; a last segment whose segment before was not
//! ended was being made (nothing was written to it) and is set aside. Everything else is damage,
//! and the store refuses to open, naming the file and the byte: a record that does not check in
//! a segment before the last, or in the last with a record that checks after it, a checkpoint
//! that does not check, a segment missing. A voter that lost what it acknowledged must not
//! rejoin as if it had not (it could let a quorum forget a committed transaction).
//!
//! **Snapshots** are files in `snapshots/`, written to a `.tmp`, fsynced, renamed, the
//! directory fsynced, in the format of [`starling_store_format::snapshot_file`]
//! (zstd-compressed, with its zxid, length and hash; the earlier uncompressed files are still
//! read). `snap-<zxid>`: those this server takes itself ([`ZabStore::save_snapshot`], called off
//! the ZAB loop: a large tree's snapshot does not hold up the log's group commits behind it);
//! the two newest are kept (if the newer is damaged, the older still covers the log's start: the
//! log is compacted only through the snapshot before the newest). `leader-<zxid>`: a snapshot
//! sent by a leader (a SNAP), written before the journal record that names it and resets the
//! log, so the two take effect together. A restart loads the newest readable snapshot of either
//! kind. A leader's snapshot older than both `snap-` files covers nothing they do not, and is
//! dropped when the second of them is saved.
//!
//! A data directory from a version that kept this state in a RocksDB database (`meta/CURRENT`
//! and its files) is moved into the journal the first time it opens, then the database's files
//! are deleted.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use starling_store_format::meta_journal::{self as journal, Op, Writer};
use starling_store_format::snapshot_file;
use starling_zab::{Entry, NodeId, Persist, Persisted, Zxid};

/// Bytes a journal segment is allocated with (a batch larger than this gets a segment of its
/// own, as large as it needs).
pub const SEGMENT_BYTES: u64 = 4 << 20;
/// Snapshot files kept.
const SNAP_FILES: usize = 2;
/// Retired segments kept for reuse.
const SPARES: usize = 2;
/// The record that ends a segment.
const END_RECORD: u64 = journal::HEADER as u64 + 1;

/// A server's durable ZAB state.
pub struct ZabStore {
    journal_dir: PathBuf,
    /// Where the snapshot files go.
    snap_dir: PathBuf,
    /// Bumped by every snapshot or log reset [`ZabStore::apply`] writes (a leader's SNAP), and
    /// held while a snapshot file is written: a snapshot taken before a SNAP is not saved after
    /// it.
    snap_gen: Mutex<u64>,
    journal: Mutex<Journal>,
    /// The thread allocating a spare segment, if one was started (joined on drop).
    allocator: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// What `open` replayed, for the first [`ZabStore::load`] (dropped by the first write).
    opened: Mutex<Option<Persisted>>,
}

impl Drop for ZabStore {
    fn drop(&mut self) {
        if let Some(h) = self.allocator.get_mut().ok().and_then(|a| a.take()) {
            let _ = h.join();
        }
    }
}

/// One operation of the journal: a [`Persist`] (never a `Snapshot`: its data goes to a file,
/// and the journal names it), the leader's snapshot file, or the voters.
#[derive(Clone, Debug)]
enum JOp {
    P(Persist),
    LeaderSnapshot(Option<Zxid>),
    Voters(Vec<NodeId>),
}

/// What the journal's records add up to, but the log entries (a restart's replay keeps those).
#[derive(Clone, Debug, Default)]
struct State {
    accepted: (u32, NodeId),
    current: u32,
    base: Zxid,
    leader_snapshot: Option<Zxid>,
    voters: Option<Vec<NodeId>>,
}

/// A segment in use.
#[derive(Debug)]
struct Segment {
    seq: u64,
    /// The highest zxid appended to it that may still be in the log.
    top: Zxid,
}

/// The segment being written, and those before it still needed.
struct Journal {
    segments: VecDeque<Segment>,
    file: File,
    /// The current segment's size, its salt, and where its next record goes.
    size: u64,
    salt: u64,
    at: u64,
    state: State,
    segment_bytes: u64,
    /// Set by the first failed write: what the journal holds past its last good record is then
    /// unknown, and nothing more is written.
    failed: Option<String>,
}

/// An I/O error as "cannot WHAT PATH: ERROR".
fn io(what: &'static str, p: &Path) -> impl FnOnce(std::io::Error) -> String + use<> {
    let p = p.display().to_string();
    move |e| format!("cannot {what} {p}: {e}")
}

fn sync_dir(dir: &Path) -> Result<(), String> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io("sync", dir))
}

fn lock<T>(m: &Mutex<T>) -> Result<MutexGuard<'_, T>, String> {
    m.lock().map_err(|_| "the metadata store's lock is poisoned".to_string())
}

impl std::fmt::Debug for ZabStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ZabStore")
    }
}

fn segment_name(seq: u64) -> String {
    format!("{seq:016x}.log")
}

/// The files of `dir` named `<prefix><16 hex digits><suffix>`, by that number, ascending.
fn numbered(dir: &Path, prefix: &str, suffix: &str) -> Result<Vec<(u64, PathBuf)>, String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(io("list", dir))?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let n = name.strip_prefix(prefix).and_then(|n| n.strip_suffix(suffix));
        if let Some(n) = n.filter(|n| n.len() == 16) {
            if let Ok(n) = u64::from_str_radix(n, 16) {
                out.push((n, e.path()));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Writes `bytes` to `dir/name` durably: a `.tmp` written and fsynced, renamed, the directory
/// fsynced. A failed write leaves nothing behind.
fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), String> {
    let tmp = dir.join(format!("{name}.tmp"));
    let written = File::create(&tmp).and_then(|mut f| {
        f.write_all(bytes)?;
        f.sync_all()
    });
    if let Err(e) = written {
        // A full disk: what was written of it goes now, not at the next restart.
        let _ = std::fs::remove_file(&tmp);
        return Err(io("write", &tmp)(e));
    }
    std::fs::rename(&tmp, dir.join(name)).map_err(io("rename", &tmp))?;
    sync_dir(dir)
}

/// Writes `dir/name` as `size` zeros, durably: the blocks are allocated and initialized, so
/// later writes into it and their fdatasync leave the inode alone. (Through a `.tmp`: a
/// crash leaves no file of that name half allocated.)
fn zeros(dir: &Path, name: &str, size: u64) -> Result<(), String> {
    let tmp = dir.join(format!("{name}.tmp"));
    // Synced a piece at a time: the log's own syncs, queued behind, never wait for a whole
    // segment's worth of zeros to reach the disk.
    let zeros = vec![0u8; 256 << 10];
    let filled = File::create(&tmp).and_then(|mut f| {
        let mut left = size;
        while left > 0 {
            let n = left.min(zeros.len() as u64) as usize;
            f.write_all(&zeros[..n])?;
            f.sync_data()?;
            left -= n as u64;
        }
        f.sync_all()
    });
    if let Err(e) = filled {
        let _ = std::fs::remove_file(&tmp);
        return Err(io("allocate", &tmp)(e));
    }
    std::fs::rename(&tmp, dir.join(name)).map_err(io("rename", &tmp))
}

/// A record's body holding `ops`.
fn encode(ops: &[JOp]) -> Vec<u8> {
    let mut w = Writer::default();
    for op in ops {
        match op {
            JOp::P(Persist::AcceptedEpoch { epoch, leader }) => w.accepted(*epoch, leader.0),
            JOp::P(Persist::CurrentEpoch(e)) => w.current(*e),
            JOp::P(Persist::Append(entries)) => {
                w.append(entries.iter().map(|e| (e.zxid.0, e.txn.as_slice())))
            }
            JOp::P(Persist::TruncateAfter(z)) => w.truncate_after(z.0),
            JOp::P(Persist::CompactThrough(z)) => w.compact_through(z.0),
            JOp::P(Persist::ResetLog(z)) => w.reset_log(z.0),
            // Never built (`ZabStore::apply` writes the data to a file, and names it).
            JOp::P(Persist::Snapshot { zxid, .. }) => w.leader_snapshot(Some(zxid.0)),
            JOp::LeaderSnapshot(z) => w.leader_snapshot(z.map(|z| z.0)),
            JOp::Voters(v) => w.voters(&v.iter().map(|n| n.0).collect::<Vec<_>>()),
        }
    }
    w.body
}

/// What a decoded operation is (`None`: one about the segment itself, not the state).
fn jop(op: Op) -> Option<JOp> {
    Some(match op {
        Op::Accepted { epoch, leader } => {
            JOp::P(Persist::AcceptedEpoch { epoch, leader: NodeId(leader) })
        }
        Op::Current(e) => JOp::P(Persist::CurrentEpoch(e)),
        Op::Append(entries) => JOp::P(Persist::Append(
            entries.into_iter().map(|(z, t)| Entry { zxid: Zxid(z), txn: Arc::new(t) }).collect(),
        )),
        Op::TruncateAfter(z) => JOp::P(Persist::TruncateAfter(Zxid(z))),
        Op::CompactThrough(z) => JOp::P(Persist::CompactThrough(Zxid(z))),
        Op::ResetLog(z) => JOp::P(Persist::ResetLog(Zxid(z))),
        Op::LeaderSnapshot(z) => JOp::LeaderSnapshot(z.map(Zxid)),
        Op::Voters(v) => JOp::Voters(v.into_iter().map(NodeId).collect()),
        // Read by `read_segment` itself.
        Op::EndOfSegment | Op::Salt(_) => return None,
    })
}

impl State {
    /// The checkpoint that opens a segment: this state as operations.
    fn checkpoint(&self) -> Vec<JOp> {
        let mut ops = vec![
            JOp::P(Persist::AcceptedEpoch { epoch: self.accepted.0, leader: self.accepted.1 }),
            JOp::P(Persist::CurrentEpoch(self.current)),
            JOp::P(Persist::CompactThrough(self.base)),
            JOp::LeaderSnapshot(self.leader_snapshot),
        ];
        if let Some(v) = &self.voters {
            ops.push(JOp::Voters(v.clone()));
        }
        ops
    }

    /// Takes in one operation written (`segments`' last is the one it went to).
    fn note(&mut self, op: &JOp, segments: &mut VecDeque<Segment>) {
        match op {
            JOp::P(Persist::AcceptedEpoch { epoch, leader }) => self.accepted = (*epoch, *leader),
            JOp::P(Persist::CurrentEpoch(e)) => self.current = *e,
            JOp::P(Persist::Append(entries)) => {
                if let (Some(last), Some(seg)) = (entries.last(), segments.back_mut()) {
                    seg.top = seg.top.max(last.zxid);
                }
            }
            JOp::P(Persist::TruncateAfter(_)) => {}
            JOp::P(Persist::CompactThrough(z)) => self.base = self.base.max(*z),
            JOp::P(Persist::ResetLog(z)) => {
                self.base = *z;
                for s in segments.iter_mut() {
                    s.top = Zxid::ZERO;
                }
            }
            JOp::P(Persist::Snapshot { zxid, .. }) => self.leader_snapshot = Some(*zxid),
            JOp::LeaderSnapshot(z) => self.leader_snapshot = *z,
            JOp::Voters(v) => self.voters = Some(v.clone()),
        }
    }
}

/// What replaying the journal gives.
struct Replayed {
    state: State,
    /// The log and the epochs, as the model holds them.
    log: Persisted,
    segments: VecDeque<Segment>,
    /// The last segment's salt, where its next record goes, and whether it was ended (writing
    /// moves on to a new segment).
    salt: u64,
    tail: u64,
    sealed: bool,
    /// A segment being made when the process stopped: nothing in it was acknowledged.
    half_made: Option<PathBuf>,
}

/// One segment's records, read.
struct Read {
    ops: Vec<JOp>,
    salt: u64,
    /// Past its last record; whether that was the end record.
    at: usize,
    sealed: bool,
}

/// Reads the records of segment `seq`, `bytes`.
fn read_segment(seq: u64, bytes: &[u8], path: &Path) -> Result<Read, String> {
    let mut r = Read { ops: Vec::new(), salt: 0, at: 0, sealed: false };
    while let Some(body) =
        bytes.get(r.at..).and_then(|rest| journal::read_record(rest, seq, r.salt, r.at as u64))
    {
        let ops = journal::decode(body)
            .map_err(|e| format!("{} at byte {}: {e}", path.display(), r.at))?;
        let first = r.at == 0;
        r.at += journal::HEADER + body.len();
        for op in ops {
            match op {
                Op::EndOfSegment => {
                    r.sealed = true;
                    return Ok(r);
                }
                Op::Salt(salt) if first => r.salt = salt,
                op => r.ops.extend(jop(op)),
            }
        }
    }
    // A crash cuts short only the last record written. One that does not check but is followed
    // by one that does was damaged after it was written (and acknowledged).
    let len = bytes
        .get(r.at..r.at + 4)
        .map_or(0, |l| u32::from_le_bytes([l[0], l[1], l[2], l[3]]) as usize);
    let next = r.at + journal::HEADER + len;
    if r.at > 0
        && len > 0
        && bytes
            .get(next..)
            .and_then(|rest| journal::read_record(rest, seq, r.salt, next as u64))
            .is_some()
    {
        return Err(format!(
            "{}: the record at byte {} is damaged and records follow it; the metadata journal's acknowledged history would be lost",
            path.display(),
            r.at
        ));
    }
    Ok(r)
}

/// Reads every segment of `dir` in order.
fn replay(dir: &Path) -> Result<Replayed, String> {
    let mut files = numbered(dir, "", ".log")?;
    let mut reads = Vec::with_capacity(files.len());
    for (seq, path) in &files {
        let bytes = std::fs::read(path).map_err(io("read", path))?;
        reads.push(read_segment(*seq, &bytes, path)?);
    }
    // A segment is made (checkpoint synced) before the one before it is ended: while that end
    // is not on disk, nothing was written to the new one.
    let mut half_made = None;
    if reads.len() >= 2 && !reads[reads.len() - 2].sealed {
        reads.pop();
        half_made = files.pop().map(|(_, p)| p);
    }
    let mut r = Replayed {
        state: State::default(),
        log: Persisted::default(),
        segments: VecDeque::new(),
        salt: 0,
        tail: 0,
        sealed: false,
        half_made,
    };
    let last = files.len().saturating_sub(1);
    for (i, ((seq, path), read)) in files.iter().zip(reads).enumerate() {
        if let Some(prev) = r.segments.back() {
            if prev.seq.checked_add(1) != Some(*seq) {
                return Err(format!(
                    "the metadata journal lacks segment {} (before {})",
                    segment_name(prev.seq.wrapping_add(1)),
                    path.display()
                ));
            }
        }
        if i != last && !read.sealed {
            // Writing moved on to the next segment only once this one was ended, durably: a
            // record here that does not check is damage, and what followed it is lost.
            return Err(format!(
                "{}: the record at byte {} is damaged; the metadata journal's acknowledged history after it would be lost",
                path.display(),
                read.at
            ));
        }
        if read.at == 0 && (i > 0 || *seq != 1) {
            // Its checkpoint was synced before the segment before it was ended (or, with the
            // segments before it retired, before anything after it was written).
            return Err(format!(
                "{}: its checkpoint is damaged; the metadata journal's state would be lost",
                path.display()
            ));
        }
        r.segments.push_back(Segment { seq: *seq, top: Zxid::ZERO });
        for op in read.ops {
            r.state.note(&op, &mut r.segments);
            if let JOp::P(p) = &op {
                // The model the simulator checks the core against: replay means what it means
                // there.
                starling_zab::disk::apply(&mut r.log, p);
            }
        }
        (r.salt, r.tail, r.sealed) = (read.salt, read.at as u64, read.sealed);
    }
    Ok(r)
}

/// Where a leader's snapshot (a SNAP) is kept.
fn leader_file(zxid: Zxid) -> String {
    format!("leader-{:016x}", zxid.0)
}

impl ZabStore {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<ZabStore, String> {
        Self::open_with(dir, SEGMENT_BYTES)
    }

    fn open_with(dir: &Path, segment_bytes: u64) -> Result<ZabStore, String> {
        let journal_dir = dir.join("journal");
        let snap_dir = dir.join("snapshots");
        for d in [&journal_dir, &snap_dir] {
            std::fs::create_dir_all(d).map_err(io("create", d))?;
            // A file cut short by a crash is only ever a `.tmp`.
            for e in std::fs::read_dir(d).map_err(io("list", d))?.flatten() {
                if e.file_name().to_string_lossy().ends_with(".tmp") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        // While the database of an earlier version is there, it is the truth: the journal is
        // made from it anew (a crash may have cut the last try short), and the database goes
        // only once the journal holds its state, durably.
        let legacy = dir.join("CURRENT").exists();
        if legacy {
            for e in std::fs::read_dir(&journal_dir).map_err(io("list", &journal_dir))?.flatten() {
                std::fs::remove_file(e.path()).map_err(io("remove", &e.path()))?;
            }
        }
        // What a process that stopped left may still be in the page cache only: on disk before
        // anything is built on it.
        for (_, p) in numbered(&journal_dir, "", ".log")? {
            File::open(&p).and_then(|f| f.sync_all()).map_err(io("sync", &p))?;
        }
        sync_dir(&journal_dir)?;
        sync_dir(&snap_dir)?;
        let r = replay(&journal_dir)?;
        if let Some(p) = &r.half_made {
            let spare = journal_dir.join(format!("spare-{:016x}", u64::MAX));
            std::fs::rename(p, &spare).map_err(io("rename", p))?;
            sync_dir(&journal_dir)?;
        }
        let fresh = r.segments.is_empty() || (r.segments.len() == 1 && r.tail == 0);
        let file = match r.segments.back() {
            Some(s) if !fresh => {
                let p = journal_dir.join(segment_name(s.seq));
                std::fs::OpenOptions::new().write(true).open(&p).map_err(io("open", &p))?
            }
            // Replaced by the first segment, below.
            _ => File::open(&journal_dir).map_err(io("open", &journal_dir))?,
        };
        let size = if fresh { 0 } else { file.metadata().map_err(io("read", &journal_dir))?.len() };
        let journal = Journal {
            segments: if fresh { VecDeque::new() } else { r.segments },
            file,
            size,
            salt: r.salt,
            at: r.tail,
            state: r.state.clone(),
            segment_bytes,
            failed: None,
        };
        let store = ZabStore {
            journal_dir,
            snap_dir,
            snap_gen: Mutex::new(0),
            journal: Mutex::new(journal),
            allocator: Mutex::new(None),
            opened: Mutex::new(None),
        };
        {
            let mut j = lock(&store.journal)?;
            if fresh || r.sealed {
                // (A sealed segment already ends in its end record.)
                store.roll(&mut j, 0, false)?;
            }
            if fresh && legacy {
                let ops = legacy::load(dir, &store.snap_dir)?;
                store.write(&mut j, &ops)?;
            } else {
                *lock(&store.opened)? = Some(r.log);
            }
        }
        if legacy {
            // Its state is in the journal (synced above): the database goes.
            legacy::remove(dir)?;
        }
        // A leader's snapshot no record names (a crash between the file and its record).
        store.drop_unnamed_leader_files()?;
        if numbered(&store.journal_dir, "spare-", "")?.is_empty() {
            let next = lock(&store.journal)?.segments.back().map_or(1, |s| s.seq.wrapping_add(1));
            store.prepare_spare(next, segment_bytes);
        }
        Ok(store)
    }

    fn drop_unnamed_leader_files(&self) -> Result<(), String> {
        let named = lock(&self.journal)?.state.leader_snapshot;
        for (z, p) in numbered(&self.snap_dir, "leader-", "")? {
            if named != Some(Zxid(z)) {
                let _ = std::fs::remove_file(p);
            }
        }
        Ok(())
    }

    /// Moves writing on to a new segment with room for a record of `need` bytes after its
    /// checkpoint: a retired segment if one is large enough, else a new file of zeros. The new
    /// segment's checkpoint is synced before the segment before it is ended (`seal`), so a
    /// restart tells a segment half made (the one before not ended: nothing was written to
    /// it) from one whose checkpoint was damaged.
    fn roll(&self, j: &mut Journal, need: u64, seal: bool) -> Result<(), String> {
        let r = self.try_roll(j, need, seal);
        if let Err(e) = &r {
            j.failed.get_or_insert_with(|| e.clone());
        }
        r
    }

    fn try_roll(&self, j: &mut Journal, need: u64, seal: bool) -> Result<(), String> {
        let dir = &self.journal_dir;
        let seq = match j.segments.back() {
            Some(s) => {
                s.seq.checked_add(1).ok_or("the metadata journal ran out of segment numbers")?
            }
            None => 1,
        };
        let salt: u64 = rand::random();
        let mut w = Writer::default();
        w.salt(salt);
        w.body.extend_from_slice(&encode(&j.state.checkpoint()));
        let size =
            j.segment_bytes.max(journal::HEADER as u64 + w.body.len() as u64 + need + END_RECORD);
        let path = dir.join(segment_name(seq));
        let spare = numbered(dir, "spare-", "")?
            .into_iter()
            .find(|(_, p)| std::fs::metadata(p).is_ok_and(|m| m.len() >= size));
        let size = match spare {
            Some((_, p)) => {
                std::fs::rename(&p, &path).map_err(io("rename", &p))?;
                std::fs::metadata(&path).map_err(io("read", &path))?.len()
            }
            None => {
                zeros(dir, &segment_name(seq), size)?;
                size
            }
        };
        let file =
            std::fs::OpenOptions::new().write(true).open(&path).map_err(io("open", &path))?;
        let mut cp = Vec::new();
        journal::record(&mut cp, seq, 0, 0, &w.body)?;
        file.write_all_at(&cp, 0).and_then(|()| file.sync_data()).map_err(io("write", &path))?;
        if let (true, Some(s)) = (seal, j.segments.back()) {
            let mut w = Writer::default();
            w.end_of_segment();
            let mut buf = Vec::new();
            journal::record(&mut buf, s.seq, j.salt, j.at, &w.body)?;
            j.file
                .write_all_at(&buf, j.at)
                .and_then(|()| j.file.sync_data())
                .map_err(io("write", dir))?;
        }
        sync_dir(dir)?;
        j.file = file;
        j.size = size;
        j.salt = salt;
        j.at = cp.len() as u64;
        j.segments.push_back(Segment { seq, top: Zxid::ZERO });
        // The next segment is allocated while this one fills, not when writing reaches it.
        if numbered(dir, "spare-", "")?.is_empty() {
            self.prepare_spare(seq.wrapping_add(1), j.segment_bytes);
        }
        Ok(())
    }

    /// Allocates a spare segment on a thread of its own (one at a time; a failure, a full disk,
    /// only means the next segment is allocated when writing reaches it).
    fn prepare_spare(&self, name: u64, size: u64) {
        let Ok(mut allocator) = self.allocator.lock() else { return };
        if allocator.as_ref().is_some_and(|h| !h.is_finished()) {
            return;
        }
        let dir = self.journal_dir.clone();
        let spawned =
            std::thread::Builder::new().name("meta-journal-alloc".into()).spawn(move || {
                if let Err(e) = zeros(&dir, &format!("spare-{name:016x}"), size) {
                    tracing::warn!(
                        "the metadata journal's next segment was not allocated ahead: {e}"
                    );
                }
            });
        if let Ok(h) = spawned {
            if let Some(done) = allocator.replace(h) {
                let _ = done.join();
            }
        }
    }

    /// Writes `ops` as one record, durably (one fdatasync), then retires the segments nothing
    /// needs any more.
    fn write(&self, j: &mut Journal, ops: &[JOp]) -> Result<(), String> {
        if let Some(why) = &j.failed {
            return Err(format!("an earlier write failed: {why}"));
        }
        // What `open` replayed is no longer what a load would read.
        if let Ok(mut opened) = self.opened.lock() {
            opened.take();
        }
        let body = encode(ops);
        let len = journal::HEADER as u64 + body.len() as u64;
        if j.at + len + END_RECORD > j.size {
            self.roll(j, len, true)?;
        }
        let seq = j.segments.back().map_or(0, |s| s.seq);
        let mut buf = Vec::with_capacity(len as usize);
        journal::record(&mut buf, seq, j.salt, j.at, &body)?;
        let written = j.file.write_all_at(&buf, j.at).and_then(|()| j.file.sync_data());
        if let Err(e) = written {
            let e = io("write", &self.journal_dir.join(segment_name(seq)))(e);
            j.failed = Some(e.clone());
            return Err(e);
        }
        j.at += len;
        for op in ops {
            j.state.note(op, &mut j.segments);
        }
        // A segment whose entries are all compacted away goes (the checkpoints after it hold
        // the rest of what it said); the newest retired are kept to be reused. Best effort:
        // the batch is durable whatever happens here.
        while j.segments.len() > 1 && j.segments.front().is_some_and(|s| s.top <= j.state.base) {
            let Some(s) = j.segments.pop_front() else { break };
            let p = self.journal_dir.join(segment_name(s.seq));
            let spares = numbered(&self.journal_dir, "spare-", "").map_or(SPARES, |s| s.len());
            if spares < SPARES {
                let _ = std::fs::rename(&p, self.journal_dir.join(format!("spare-{:016x}", s.seq)));
            } else {
                let _ = std::fs::remove_file(&p);
            }
        }
        Ok(())
    }

    /// The generation a [`SnapshotJob`](starling_zab::SnapshotJob) is saved under: take it
    /// when the job is handed out.
    pub fn snapshot_gen(&self) -> u64 {
        self.snap_gen.lock().map_or(0, |g| *g)
    }

    /// Saves a snapshot this server took, unless a snapshot was persisted through
    /// [`ZabStore::apply`] since `gen` (then `Ok(false)`: it is stale), and keeps the two
    /// newest files.
    pub fn save_snapshot(&self, gen: u64, zxid: Zxid, data: &[u8]) -> Result<bool, String> {
        let g = lock(&self.snap_gen)?;
        if *g != gen {
            return Ok(false);
        }
        let name = format!("snap-{:016x}", zxid.0);
        let file = snapshot_file::encode(zxid.0, data).map_err(io("compress", &self.snap_dir))?;
        write_file(&self.snap_dir, &name, &file)?;
        let files = self.snapshot_files()?;
        let old = files.len().saturating_sub(SNAP_FILES);
        for (_, p) in files.iter().take(old) {
            let _ = std::fs::remove_file(p);
        }
        if files.len() >= SNAP_FILES {
            // A leader's snapshot older than both files covers nothing they do not.
            let mut j = lock(&self.journal)?;
            if let Some(z) = j.state.leader_snapshot.filter(|z| *z < files[old].0) {
                self.write(&mut j, &[JOp::LeaderSnapshot(None)])?;
                let _ = std::fs::remove_file(self.snap_dir.join(leader_file(z)));
            }
        }
        drop(g);
        Ok(true)
    }

    /// The snapshot files this server took, oldest first.
    fn snapshot_files(&self) -> Result<Vec<(Zxid, PathBuf)>, String> {
        Ok(numbered(&self.snap_dir, "snap-", "")?.into_iter().map(|(z, p)| (Zxid(z), p)).collect())
    }

    /// A snapshot file's contents, checked against its header (see
    /// [`starling_store_format::snapshot_file`]).
    fn read_snapshot_file(zxid: Zxid, path: &Path) -> Result<Vec<u8>, String> {
        let file = std::fs::read(path).map_err(io("read", path))?;
        let (z, data) = snapshot_file::decode(file, u64::MAX)?;
        if z != zxid.0 {
            return Err(format!("holds the snapshot at {:?}", Zxid(z)));
        }
        Ok(data)
    }

    /// Writes one batch durably (one fsync).
    pub fn apply(&self, ops: &[Persist]) -> Result<(), String> {
        if ops.is_empty() {
            return Ok(());
        }
        // A leader's snapshot: no snapshot taken before it is saved after it.
        let snap =
            ops.iter().any(|op| matches!(op, Persist::Snapshot { .. } | Persist::ResetLog(_)));
        let mut gen = if snap { Some(lock(&self.snap_gen)?) } else { None };
        let mut jops = Vec::with_capacity(ops.len());
        for op in ops {
            match op {
                // Its file first: the record that names it makes it the leader's snapshot.
                Persist::Snapshot { zxid, data } => {
                    let file = snapshot_file::encode(zxid.0, data)
                        .map_err(io("compress", &self.snap_dir))?;
                    write_file(&self.snap_dir, &leader_file(*zxid), &file)?;
                    jops.push(JOp::LeaderSnapshot(Some(*zxid)));
                }
                op => jops.push(JOp::P(op.clone())),
            }
        }
        self.write(&mut *lock(&self.journal)?, &jops)?;
        if let Some(g) = gen.as_mut() {
            **g += 1;
            // The leader's snapshot replaces this server's own (were one left by a crash
            // here, it would be committed history too, and loaded only if newer).
            for (_, p) in self.snapshot_files()? {
                let _ = std::fs::remove_file(p);
            }
            self.drop_unnamed_leader_files()?;
        }
        Ok(())
    }

    /// The voters this server was started with the first time (`None`: not yet recorded).
    /// Kept, so a restarted voter rejoins the same ensemble without waiting for gossip.
    pub fn voters(&self) -> Result<Option<Vec<NodeId>>, String> {
        Ok(lock(&self.journal)?.state.voters.clone())
    }

    /// Records the voters (durably).
    pub fn set_voters(&self, voters: &[NodeId]) -> Result<(), String> {
        self.write(&mut *lock(&self.journal)?, &[JOp::Voters(voters.to_vec())])
    }

    /// What a server restarts from.
    pub fn load(&self) -> Result<Persisted, String> {
        let (mut p, leader_snapshot) = {
            let j = lock(&self.journal)?;
            match lock(&self.opened)?.take() {
                Some(p) => (p, j.state.leader_snapshot),
                None => {
                    let r = replay(&self.journal_dir)?;
                    (r.log, r.state.leader_snapshot)
                }
            }
        };
        p.snapshot = None;
        if let Some(z) = leader_snapshot {
            let path = self.snap_dir.join(leader_file(z));
            let data = Self::read_snapshot_file(z, &path).map_err(|e| {
                format!("the leader's snapshot at {z:?} ({}) is corrupt: {e}", path.display())
            })?;
            p.snapshot = Some((z, Arc::new(data)));
        }
        // The newest readable snapshot file, if newer.
        let held = p.snapshot.as_ref().map(|(z, _)| *z);
        for (zxid, path) in self.snapshot_files()?.into_iter().rev() {
            if held.is_some_and(|h| h >= zxid) {
                break;
            }
            match Self::read_snapshot_file(zxid, &path) {
                Ok(data) => {
                    p.snapshot = Some((zxid, Arc::new(data)));
                    break;
                }
                Err(e) => {
                    tracing::warn!(file = %path.display(), "metadata snapshot file skipped: {e}")
                }
            }
        }
        Ok(p)
    }
}

/// A metadata store of an earlier version: ZAB's state in a RocksDB database in `meta/`,
/// read once to move it into the journal.
mod legacy {
    use super::*;
    use rocksdb::{Direction, IteratorMode, Options, DB};

    const ACCEPTED: &[u8] = b"s/accepted";
    const CURRENT: &[u8] = b"s/current";
    const LOG_BASE: &[u8] = b"s/log_base";
    const VOTERS: &[u8] = b"s/voters";
    const LOG: &[u8] = b"l/";
    const SNAP_ZXID: &[u8] = b"p/zxid";
    const SNAP_META: &[u8] = b"p/n";
    const SNAP_CHUNK: &[u8] = b"p/c/";

    fn chunk_key(i: u32) -> Vec<u8> {
        let mut k = SNAP_CHUNK.to_vec();
        k.extend_from_slice(&i.to_be_bytes());
        k
    }

    fn get(db: &DB, k: &[u8]) -> Result<Option<Vec<u8>>, String> {
        db.get(k).map_err(|e| format!("cannot read the metadata database: {e}"))
    }

    fn be<const N: usize>(v: &[u8], what: &str) -> Result<[u8; N], String> {
        v.try_into().map_err(|_| format!("the metadata database's {what} is not {N} bytes"))
    }

    /// The database's state as journal operations (a leader's snapshot it holds is written to
    /// its file first).
    pub(super) fn load(dir: &Path, snap_dir: &Path) -> Result<Vec<JOp>, String> {
        let db = DB::open(&Options::default(), dir)
            .map_err(|e| format!("cannot open the metadata database {}: {e}", dir.display()))?;
        let mut ops = Vec::new();
        if let Some(v) = get(&db, ACCEPTED)? {
            let (e, l) = v.split_at_checked(4).ok_or("accepted epoch record too short")?;
            ops.push(JOp::P(Persist::AcceptedEpoch {
                epoch: u32::from_be_bytes(be(e, "accepted epoch")?),
                leader: NodeId::from_be_bytes(be(l, "accepted epoch's leader")?),
            }));
        }
        if let Some(v) = get(&db, CURRENT)? {
            ops.push(JOp::P(Persist::CurrentEpoch(u32::from_be_bytes(be(&v, "current epoch")?))));
        }
        let base = match get(&db, LOG_BASE)? {
            Some(v) => Zxid(u64::from_be_bytes(be(&v, "log base")?)),
            None => Zxid::ZERO,
        };
        ops.push(JOp::P(Persist::ResetLog(base)));
        if let Some(v) = get(&db, VOTERS)? {
            if v.is_empty() || v.len() % 16 != 0 {
                return Err(format!("the voter list is {} bytes, not a multiple of 16", v.len()));
            }
            let ids = v.chunks_exact(16).map(|c| be(c, "voter").map(NodeId::from_be_bytes));
            ops.push(JOp::Voters(ids.collect::<Result<_, _>>()?));
        }
        if let Some(z) = get(&db, SNAP_ZXID)? {
            let zxid = Zxid(u64::from_be_bytes(be(&z, "snapshot zxid")?));
            let meta = get(&db, SNAP_META)?.ok_or("snapshot without its chunk count")?;
            if meta.len() != 36 {
                return Err("snapshot chunk record is not 36 bytes".into());
            }
            let n = u32::from_be_bytes(be(&meta[..4], "chunk count")?);
            let mut data = Vec::new();
            for i in 0..n {
                let c = get(&db, &chunk_key(i))?
                    .ok_or_else(|| format!("snapshot chunk {i} of {n} is missing"))?;
                data.extend_from_slice(&c);
            }
            if blake3::hash(&data).as_bytes() != &meta[4..] {
                return Err(format!(
                    "the snapshot at {zxid:?} is corrupt (its hash does not match)"
                ));
            }
            let file = snapshot_file::encode(zxid.0, &data).map_err(io("compress", snap_dir))?;
            write_file(snap_dir, &leader_file(zxid), &file)?;
            ops.push(JOp::LeaderSnapshot(Some(zxid)));
        }
        let mut log = Vec::new();
        for item in db.iterator(IteratorMode::From(LOG, Direction::Forward)) {
            let (k, v) = item.map_err(|e| format!("cannot read the log: {e}"))?;
            if !k.starts_with(LOG) {
                break;
            }
            let z = u64::from_be_bytes(be(&k[LOG.len()..], "log key")?);
            log.push(Entry { zxid: Zxid(z), txn: Arc::new(v.to_vec()) });
        }
        if !log.is_empty() {
            ops.push(JOp::P(Persist::Append(log)));
        }
        Ok(ops)
    }

    /// Deletes the database's files (`CURRENT` first: without it the directory is no longer
    /// a database).
    pub(super) fn remove(dir: &Path) -> Result<(), String> {
        let current = dir.join("CURRENT");
        std::fs::remove_file(&current).map_err(io("remove", &current))?;
        sync_dir(dir)?;
        for e in std::fs::read_dir(dir).map_err(io("list", dir))?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let rocks = ["IDENTITY", "LOCK"].contains(&name.as_str())
                || ["LOG", "MANIFEST-", "OPTIONS-"].iter().any(|p| name.starts_with(p))
                || [".log", ".sst", ".blob", ".dbtmp"].iter().any(|s| name.ends_with(s));
            if rocks && e.file_type().is_ok_and(|t| t.is_file()) {
                let _ = std::fs::remove_file(e.path());
            }
        }
        Ok(())
    }

    /// A database as the earlier version wrote it (tests).
    #[cfg(test)]
    pub(super) fn write(dir: &Path, p: &Persisted, voters: &[NodeId]) {
        let mut o = Options::default();
        o.create_if_missing(true);
        let db = DB::open(&o, dir).unwrap();
        let mut acc = p.accepted_epoch.to_be_bytes().to_vec();
        acc.extend_from_slice(&p.accepted_leader.to_be_bytes());
        db.put(ACCEPTED, acc).unwrap();
        db.put(CURRENT, p.current_epoch.to_be_bytes()).unwrap();
        db.put(LOG_BASE, p.log_base.0.to_be_bytes()).unwrap();
        db.put(VOTERS, voters.iter().flat_map(|n| n.to_be_bytes()).collect::<Vec<u8>>()).unwrap();
        for e in &p.log {
            let mut k = LOG.to_vec();
            k.extend_from_slice(&e.zxid.0.to_be_bytes());
            db.put(k, e.txn.as_slice()).unwrap();
        }
        if let Some((z, data)) = &p.snapshot {
            let chunks: Vec<&[u8]> = data.chunks(1 << 20).collect();
            for (i, c) in chunks.iter().enumerate() {
                db.put(chunk_key(i as u32), c).unwrap();
            }
            let mut meta = (chunks.len() as u32).to_be_bytes().to_vec();
            meta.extend_from_slice(blake3::hash(data).as_bytes());
            db.put(SNAP_META, meta).unwrap();
            db.put(SNAP_ZXID, z.0.to_be_bytes()).unwrap();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use starling_store_format::snapshot_file::{
        HEADER as SNAP_HEADER, MAGIC_RAW as SNAP_MAGIC_RAW,
    };
    use starling_zab::disk::MemDisk;

    fn same(a: &Persisted, b: &Persisted) {
        assert_eq!((a.accepted_epoch, a.accepted_leader), (b.accepted_epoch, b.accepted_leader));
        assert_eq!(a.current_epoch, b.current_epoch);
        assert_eq!(a.log_base, b.log_base);
        assert_eq!(a.snapshot, b.snapshot);
        assert_eq!(a.log, b.log);
    }

    fn op() -> impl Strategy<Value = Persist> {
        prop_oneof![
            (1u32..5, 1u128..4)
                .prop_map(|(epoch, l)| Persist::AcceptedEpoch { epoch, leader: NodeId(l) }),
            (1u32..5).prop_map(Persist::CurrentEpoch),
            (1u32..60, 1usize..4).prop_map(|(c, n)| Persist::Append(
                (0..n as u32)
                    .map(|i| Entry { zxid: Zxid::new(1, c + i), txn: Arc::new(vec![c as u8; 3]) })
                    .collect()
            )),
            (0u32..60).prop_map(|c| Persist::TruncateAfter(Zxid::new(1, c))),
            (0u32..60, 0usize..3000).prop_map(|(c, n)| Persist::Snapshot {
                zxid: Zxid::new(1, c),
                data: Arc::new((0..n).map(|i| i as u8).collect())
            }),
            (0u32..60).prop_map(|c| Persist::CompactThrough(Zxid::new(1, c))),
            (0u32..60).prop_map(|c| Persist::ResetLog(Zxid::new(1, c))),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(40))]
        /// Whatever batches it is given, the store reads back what the reference model holds,
        /// also after a reopen (a restart).
        #[test]
        fn the_store_reads_back_what_the_model_holds(batches in proptest::collection::vec(proptest::collection::vec(op(), 0..5), 1..12)) {
          // Segments of the default size, and so small that most batches start a new one
          // (checkpoints, ends, retiring and reusing segments all run).
          for segment in [SEGMENT_BYTES, 200] {
            let dir = tempfile::tempdir().unwrap();
            let mut model = MemDisk::default();
            {
                let s = ZabStore::open_with(dir.path(), segment).unwrap();
                for b in &batches {
                    // Appends only ever extend the log, past its base (the core's rules: the
                    // history up to the base is in snapshots only): drop the others.
                    let mut scratch = model.clone();
                    let mut kept = Vec::new();
                    for op in b {
                        if let Persist::Append(e) = op {
                            let end = scratch.state.log.last().map(|e| e.zxid);
                            let first = e.first().map(|e| e.zxid);
                            if first <= end || first <= Some(scratch.state.log_base) {
                                continue;
                            }
                        }
                        scratch.apply_all(std::slice::from_ref(op));
                        kept.push(op.clone());
                    }
                    model.apply_all(&kept);
                    s.apply(&kept).unwrap();
                }
                same(&s.load().unwrap(), &model.load());
            }
            let s = ZabStore::open_with(dir.path(), segment).unwrap();
            same(&s.load().unwrap(), &model.load());
            // The retired kept, and one allocated ahead.
            let spares = numbered(&s.journal_dir, "spare-", "").unwrap().len();
            prop_assert!(spares <= SPARES + 1, "{spares} spare segments");
          }
        }
    }

    /// Snapshots a server takes go to files: the newest readable one of either kind is loaded
    /// (as the model says), a damaged newest file falls back to the one before, a leader's SNAP
    /// replaces them and a snapshot taken before it is not saved after it, two files are kept,
    /// and a torn `.tmp` is cleared.
    #[test]
    fn snapshot_files_load_newest_first_and_fall_back() {
        let dir = tempfile::tempdir().unwrap();
        let s = ZabStore::open(dir.path()).unwrap();
        let mut model = MemDisk::default();
        let snap = |n: u8| Arc::new(vec![n; 3000]);
        let save = |s: &ZabStore, model: &mut MemDisk, gen: u64, c: u32, n: u8| {
            let a = s.save_snapshot(gen, Zxid::new(1, c), &snap(n)).unwrap();
            assert_eq!(a, model.save_snapshot(gen, Zxid::new(1, c), snap(n)));
            same(&s.load().unwrap(), &model.load());
            a
        };
        for (i, c) in [5u32, 9, 14].into_iter().enumerate() {
            assert_eq!(s.snapshot_gen(), model.snapshot_gen);
            assert!(save(&s, &mut model, s.snapshot_gen(), c, i as u8));
        }
        assert_eq!(s.snapshot_files().unwrap().len(), 2, "the two newest are kept");
        // The newest file damaged, or cut short: the one before it is loaded.
        let newest = s.snapshot_files().unwrap().last().unwrap().1.clone();
        let good = std::fs::read(&newest).unwrap();
        let mut bad = good.clone();
        bad[SNAP_HEADER + 10] ^= 1;
        std::fs::write(&newest, &bad).unwrap();
        assert_eq!(s.load().unwrap().snapshot.unwrap().0, Zxid::new(1, 9));
        std::fs::write(&newest, &good[..SNAP_HEADER + 5]).unwrap();
        assert_eq!(s.load().unwrap().snapshot.unwrap().0, Zxid::new(1, 9));
        std::fs::write(&newest, &good).unwrap();
        assert_eq!(s.load().unwrap().snapshot.unwrap().0, Zxid::new(1, 14));
        // A leader's SNAP replaces them; a snapshot taken before it is stale.
        let gen = s.snapshot_gen();
        let snap_op = [
            Persist::Snapshot { zxid: Zxid::new(1, 12), data: snap(7) },
            Persist::ResetLog(Zxid::new(1, 12)),
        ];
        s.apply(&snap_op).unwrap();
        model.apply_all(&snap_op);
        same(&s.load().unwrap(), &model.load());
        assert!(!save(&s, &mut model, gen, 20, 8), "a stale snapshot was saved");
        assert!(save(&s, &mut model, s.snapshot_gen(), 20, 9));
        assert_eq!(s.load().unwrap().snapshot.unwrap().0, Zxid::new(1, 20));
        // Its file damaged: the SNAP's snapshot is loaded.
        let newest = s.snapshot_files().unwrap().last().unwrap().1.clone();
        std::fs::write(&newest, b"STRLSNP1").unwrap();
        assert_eq!(s.load().unwrap().snapshot.unwrap().0, Zxid::new(1, 12));
        // A torn write is only ever a .tmp, and goes at the next open.
        let tmp = s.snap_dir.join("snap-0000000100000063.tmp");
        std::fs::write(&tmp, b"torn").unwrap();
        drop(s);
        let s = ZabStore::open(dir.path()).unwrap();
        assert!(!tmp.exists());
        assert_eq!(s.load().unwrap().snapshot.unwrap().0, Zxid::new(1, 12));
    }

    /// Snapshot files are compressed (a tree's snapshot repeats itself), files of the earlier
    /// uncompressed format still load, a file whose compressed body is damaged or decompresses
    /// to another length is skipped, and a leader's snapshot in the database is deleted once
    /// two newer files cover it (not before).
    #[test]
    fn snapshot_files_are_compressed_old_ones_read_and_a_superseded_snap_goes() {
        let dir = tempfile::tempdir().unwrap();
        let s = ZabStore::open(dir.path()).unwrap();
        let tree = |n: u32| -> Arc<Vec<u8>> {
            Arc::new(
                (0..20_000)
                    .flat_map(|i| format!("/app/config/{n}/node-{i:010}=v\n").into_bytes())
                    .collect(),
            )
        };
        let leader_files = |s: &ZabStore| -> Vec<u32> {
            let files = numbered(&s.snap_dir, "leader-", "").unwrap();
            files.into_iter().map(|(z, _)| z as u32).collect()
        };
        // A leader's SNAP at (1, 3), then this server's own snapshots.
        s.apply(&[Persist::Snapshot { zxid: Zxid::new(1, 3), data: tree(3) }]).unwrap();
        assert!(s.save_snapshot(s.snapshot_gen(), Zxid::new(1, 5), &tree(5)).unwrap());
        let file = s.snapshot_files().unwrap()[0].1.clone();
        let size = std::fs::metadata(&file).unwrap().len();
        assert!(size * 5 < tree(5).len() as u64, "{size} bytes on disk for {}", tree(5).len());
        assert_eq!(s.load().unwrap().snapshot.unwrap(), (Zxid::new(1, 5), tree(5)));
        // One file only: the SNAP is still the fallback, and kept.
        assert_eq!(leader_files(&s), [3]);
        // A second file, newer than the SNAP: both files cover what the SNAP held.
        assert!(s.save_snapshot(s.snapshot_gen(), Zxid::new(1, 8), &tree(8)).unwrap());
        assert!(leader_files(&s).is_empty(), "the superseded SNAP was kept");
        assert_eq!(
            ZabStore::open(dir.path()).unwrap().load().unwrap().snapshot.unwrap().0,
            Zxid::new(1, 8)
        );
        assert_eq!(s.load().unwrap().snapshot.unwrap(), (Zxid::new(1, 8), tree(8)));
        // A later SNAP replaces the files; it goes again once two newer files are saved.
        s.apply(&[Persist::Snapshot { zxid: Zxid::new(1, 9), data: tree(9) }]).unwrap();
        assert!(s.snapshot_files().unwrap().is_empty());
        assert!(s.save_snapshot(s.snapshot_gen(), Zxid::new(1, 10), &tree(10)).unwrap());
        assert_eq!(leader_files(&s), [9], "the SNAP went with one file to cover it");
        assert!(s.save_snapshot(s.snapshot_gen(), Zxid::new(1, 11), &tree(11)).unwrap());
        assert!(leader_files(&s).is_empty());
        // The earlier format, written by hand, still loads.
        let data = tree(12);
        let mut raw = SNAP_MAGIC_RAW.to_vec();
        raw.extend_from_slice(&Zxid::new(1, 12).0.to_be_bytes());
        raw.extend_from_slice(&(data.len() as u64).to_be_bytes());
        raw.extend_from_slice(blake3::hash(&data).as_bytes());
        raw.extend_from_slice(&data);
        let old = s.snap_dir.join(format!("snap-{:016x}", Zxid::new(1, 12).0));
        std::fs::write(&old, &raw).unwrap();
        assert_eq!(s.load().unwrap().snapshot.unwrap(), (Zxid::new(1, 12), tree(12)));
        // A compressed file whose header claims another length, or whose body is damaged, is
        // skipped for the one before it.
        std::fs::remove_file(&old).unwrap();
        let newest = s.snapshot_files().unwrap().last().unwrap().1.clone();
        let good = std::fs::read(&newest).unwrap();
        let mut longer = good.clone();
        longer[16..24].copy_from_slice(&(tree(11).len() as u64 + 1).to_be_bytes());
        std::fs::write(&newest, &longer).unwrap();
        let e = ZabStore::read_snapshot_file(Zxid::new(1, 11), &newest).unwrap_err();
        assert!(e.contains("decompresses to"), "{e}");
        assert_eq!(s.load().unwrap().snapshot.unwrap().0, Zxid::new(1, 10));
        let mut bad = good.clone();
        let mid = SNAP_HEADER + (good.len() - SNAP_HEADER) / 2;
        bad[mid] ^= 0x55;
        std::fs::write(&newest, &bad).unwrap();
        assert!(ZabStore::read_snapshot_file(Zxid::new(1, 11), &newest).is_err());
        assert_eq!(s.load().unwrap().snapshot.unwrap().0, Zxid::new(1, 10));
    }

    #[test]
    fn a_damaged_snapshot_is_refused_with_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let s = ZabStore::open(dir.path()).unwrap();
        let data = Arc::new(vec![7u8; (1 << 20) + 10]);
        s.apply(&[Persist::Snapshot { zxid: Zxid::new(2, 9), data }]).unwrap();
        assert_eq!(s.load().unwrap().snapshot.unwrap().1.len(), (1 << 20) + 10);
        let file = s.snap_dir.join(leader_file(Zxid::new(2, 9)));
        let mut bytes = std::fs::read(&file).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x40;
        std::fs::write(&file, &bytes).unwrap();
        let e = s.load().unwrap_err();
        assert!(e.contains("corrupt"), "{e}");
        std::fs::remove_file(&file).unwrap();
        let e = s.load().unwrap_err();
        assert!(e.contains("cannot read"), "{e}");
    }

    fn entries(from: u32, n: u32, size: usize) -> Persist {
        Persist::Append(
            (from..from + n)
                .map(|c| Entry { zxid: Zxid::new(1, c), txn: Arc::new(vec![c as u8; size]) })
                .collect(),
        )
    }

    /// A record cut short by a crash (never acknowledged: its fdatasync did not return) ends
    /// the journal; writing goes on from there, and what follows reads back.
    #[test]
    fn a_torn_last_record_is_dropped_and_writing_goes_on_from_there() {
        let dir = tempfile::tempdir().unwrap();
        let mut model = MemDisk::default();
        let at;
        {
            let s = ZabStore::open(dir.path()).unwrap();
            for b in [
                vec![Persist::AcceptedEpoch { epoch: 1, leader: NodeId(5) }],
                vec![entries(1, 3, 100)],
            ] {
                s.apply(&b).unwrap();
                model.apply_all(&b);
            }
            at = lock(&s.journal).unwrap().at;
            s.apply(&[entries(4, 2, 100)]).unwrap();
        }
        // The last record half written: its second half is what the file held before.
        let seg = numbered(&dir.path().join("journal"), "", ".log").unwrap()[0].1.clone();
        let mut bytes = std::fs::read(&seg).unwrap();
        bytes[at as usize + 100..at as usize + 300].fill(0);
        std::fs::write(&seg, &bytes).unwrap();
        let s = ZabStore::open(dir.path()).unwrap();
        same(&s.load().unwrap(), &model.load());
        let b = [entries(4, 1, 10), Persist::CurrentEpoch(1)];
        s.apply(&b).unwrap();
        model.apply_all(&b);
        drop(s);
        same(&ZabStore::open(dir.path()).unwrap().load().unwrap(), &model.load());
    }

    /// Damage in a segment the journal had moved on from is refused (what it held was
    /// acknowledged), with the file and the byte named.
    #[test]
    fn damage_before_the_last_segment_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = ZabStore::open_with(dir.path(), 4096).unwrap();
            for c in 0..20 {
                s.apply(&[entries(1 + c * 10, 10, 50)]).unwrap();
            }
            assert!(lock(&s.journal).unwrap().segments.len() > 2);
        }
        let segs = numbered(&dir.path().join("journal"), "", ".log").unwrap();
        let mut bytes = std::fs::read(&segs[0].1).unwrap();
        bytes[600] ^= 1;
        std::fs::write(&segs[0].1, &bytes).unwrap();
        let e = ZabStore::open_with(dir.path(), 4096).unwrap_err();
        assert!(e.contains("damaged") && e.contains(&segment_name(segs[0].0)), "{e}");
    }

    /// A crash while a segment was being made (its checkpoint synced, the segment before not
    /// yet ended: nothing was written to the new one) leaves it aside; writing goes on where it
    /// was. Once the segment before was ended, a new segment's checkpoint that does not check is
    /// damage, refused; so is a damaged record with records after it in the last segment.
    #[test]
    fn a_half_made_segment_is_set_aside_and_damage_in_the_last_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let jdir = dir.path().join("journal");
        let mut model = MemDisk::default();
        let (last, salt) = {
            let s = ZabStore::open(dir.path()).unwrap();
            for c in 0..3 {
                let b = [entries(1 + c * 10, 10, 50)];
                s.apply(&b).unwrap();
                model.apply_all(&b);
            }
            let j = lock(&s.journal).unwrap();
            (j.segments.back().unwrap().seq, j.salt)
        };
        // The next segment, its checkpoint written and synced, a batch in it not yet.
        let mut w = Writer::default();
        w.salt(42);
        w.current(9);
        let mut cp = Vec::new();
        journal::record(&mut cp, last + 1, 0, 0, &w.body).unwrap();
        cp.resize(8192, 0);
        std::fs::write(jdir.join(segment_name(last + 1)), &cp).unwrap();
        {
            let s = ZabStore::open(dir.path()).unwrap();
            same(&s.load().unwrap(), &model.load());
            assert!(!jdir.join(segment_name(last + 1)).exists());
            let b = [entries(31, 2, 50)];
            s.apply(&b).unwrap();
            model.apply_all(&b);
            assert_eq!(lock(&s.journal).unwrap().segments.back().unwrap().seq, last);
        }
        same(&ZabStore::open(dir.path()).unwrap().load().unwrap(), &model.load());
        // A damaged record with records after it.
        let seg = jdir.join(segment_name(last));
        let good = std::fs::read(&seg).unwrap();
        let mut bad = good.clone();
        let second = journal::HEADER + journal::read_record(&good, last, 0, 0).unwrap().len();
        let first = journal::read_record(&good[second..], last, salt, second as u64).unwrap();
        bad[second + journal::HEADER + first.len() / 2] ^= 1;
        std::fs::write(&seg, &bad).unwrap();
        let e = ZabStore::open(dir.path()).unwrap_err();
        assert!(e.contains("records follow it"), "{e}");
        // The segment before ended, the new one's checkpoint damaged.
        std::fs::write(&seg, &good).unwrap();
        let s = ZabStore::open(dir.path()).unwrap();
        // Larger than the room left: a new segment.
        s.apply(&[entries(40, 60, 80_000)]).unwrap();
        assert_eq!(lock(&s.journal).unwrap().segments.back().unwrap().seq, last + 1);
        let newest = lock(&s.journal).unwrap().segments.back().unwrap().seq;
        drop(s);
        let newest = jdir.join(segment_name(newest));
        let mut bytes = std::fs::read(&newest).unwrap();
        bytes[journal::HEADER + 2] ^= 1;
        std::fs::write(&newest, &bytes).unwrap();
        let e = ZabStore::open(dir.path()).unwrap_err();
        assert!(e.contains("checkpoint is damaged"), "{e}");
    }

    /// Once a snapshot covers a segment's entries it is retired: the newest two retired are
    /// reused (renamed: no new file is allocated), the rest deleted; the state survives in the
    /// checkpoints of the segments after.
    #[test]
    fn compacted_segments_are_retired_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let jdir = dir.path().join("journal");
        let mut model = MemDisk::default();
        let s = ZabStore::open_with(dir.path(), 4096).unwrap();
        let first =
            [Persist::AcceptedEpoch { epoch: 3, leader: NodeId(9) }, Persist::CurrentEpoch(3)];
        s.apply(&first).unwrap();
        model.apply_all(&first);
        s.set_voters(&[NodeId(1), NodeId(2)]).unwrap();
        for c in 0..60u32 {
            let mut b = vec![entries(1 + c * 10, 10, 60)];
            if c % 5 == 4 {
                b.push(Persist::CompactThrough(Zxid::new(1, c * 10)));
            }
            s.apply(&b).unwrap();
            model.apply_all(&b);
            let spares = numbered(&jdir, "spare-", "").unwrap().len();
            assert!(spares <= SPARES + 1);
        }
        let segs = numbered(&jdir, "", ".log").unwrap();
        assert!(segs.len() <= 6, "{} segments in use", segs.len());
        assert!(segs[0].0 >= 10, "the first segments were never retired: {segs:?}");
        let spares = numbered(&jdir, "spare-", "").unwrap().len();
        assert!((1..=SPARES + 1).contains(&spares), "{spares} spare segments");
        same(&s.load().unwrap(), &model.load());
        drop(s);
        let s = ZabStore::open_with(dir.path(), 4096).unwrap();
        same(&s.load().unwrap(), &model.load());
        assert_eq!(s.voters().unwrap(), Some(vec![NodeId(1), NodeId(2)]));
    }

    /// A metadata store of the earlier kind (a RocksDB database) is moved into the journal on
    /// its first open, its leader's snapshot to its file, and the database's files go.
    #[test]
    fn a_database_of_the_earlier_version_moves_into_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let mut model = MemDisk::default();
        model.apply_all(&[
            Persist::AcceptedEpoch { epoch: 4, leader: NodeId(7) },
            Persist::CurrentEpoch(3),
            Persist::Snapshot { zxid: Zxid::new(1, 10), data: Arc::new(vec![1; 5000]) },
            Persist::ResetLog(Zxid::new(1, 10)),
            entries(11, 5, 20),
        ]);
        legacy::write(dir.path(), &model.load(), &[NodeId(1), NodeId(2), NodeId(3)]);
        // A first try cut short by a crash left a journal behind: it is made again.
        std::fs::create_dir_all(dir.path().join("journal")).unwrap();
        std::fs::write(dir.path().join("journal").join(segment_name(1)), vec![0; 100]).unwrap();
        let s = ZabStore::open(dir.path()).unwrap();
        same(&s.load().unwrap(), &model.load());
        assert_eq!(s.voters().unwrap(), Some(vec![NodeId(1), NodeId(2), NodeId(3)]));
        assert!(!dir.path().join("CURRENT").exists());
        let left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(left.iter().all(|n| n == "journal" || n == "snapshots"), "{left:?}");
        drop(s);
        let s = ZabStore::open(dir.path()).unwrap();
        same(&s.load().unwrap(), &model.load());
    }
}
