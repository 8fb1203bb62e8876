//! The metadata service's journal (`<data-dir>/meta/journal/<seq>.log`): ZAB's durable state
//! as an append-only log of records, each one batch of operations written with one
//! `fdatasync` (group commit).
//!
//! A segment file is allocated (zero-filled, or a retired segment reused) before it is written,
//! so appending to it and `fdatasync` write the data blocks only, not the inode: no file size
//! changes, no journal commit in the file system. ZooKeeper pads its transaction log the same
//! way.
//!
//! A record is `len` (4, LE, not 0) ‖ `check` (8, LE) ‖ `len` bytes of operations. `check` is
//! the first 8 bytes of blake3 over the segment's number (8, LE), its salt (8, LE), the record's
//! offset in the segment (8, LE) and the operations. The first record of a segment, its
//! checkpoint, is checked with salt 0 and holds the segment's salt, drawn at random when the
//! segment was made; every later record is checked with it. So bytes left by an earlier use of
//! the file, or by a record cut short by a crash, never check — not even where a client chose
//! them (a transaction's data): nobody outside knows the salt. The first record that does not
//! check (or a `len` of 0: the zeros past the last record) ends the segment.
//!
//! Operations, one after another, each a tag byte then its fields (integers LE; node ids 16
//! bytes BE, as everywhere on disk):
//!
//! | tag | operation | fields |
//! |---|---|---|
//! | 1 | accepted epoch | epoch (4), leader (16) |
//! | 2 | current epoch | epoch (4) |
//! | 3 | append | count (4), then per entry zxid (8), length (4), the transaction |
//! | 4 | truncate after | zxid (8) |
//! | 5 | the leader's snapshot is the file for this zxid | zxid (8) |
//! | 6 | no leader's snapshot | |
//! | 7 | compact through | zxid (8) |
//! | 8 | reset the log | zxid (8) |
//! | 9 | voters | count (4), then node ids (16 each) |
//! | 10 | the segment ends here (writing moved on to the next) | |
//! | 11 | the segment's salt (in its checkpoint) | salt (8) |

/// Bytes before a record's operations.
pub const HEADER: usize = 12;
/// Most bytes one record may hold (a batch of proposals is far smaller).
pub const MAX_RECORD: usize = 1 << 30;

/// One operation of a record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Accepted { epoch: u32, leader: u128 },
    Current(u32),
    Append(Vec<(u64, Vec<u8>)>),
    TruncateAfter(u64),
    LeaderSnapshot(Option<u64>),
    CompactThrough(u64),
    ResetLog(u64),
    Voters(Vec<u128>),
    EndOfSegment,
    Salt(u64),
}

/// Appends operations to a record's body.
#[derive(Default, Debug)]
pub struct Writer {
    pub body: Vec<u8>,
}

impl Writer {
    pub fn accepted(&mut self, epoch: u32, leader: u128) {
        self.body.push(1);
        self.body.extend_from_slice(&epoch.to_le_bytes());
        self.body.extend_from_slice(&leader.to_be_bytes());
    }
    pub fn current(&mut self, epoch: u32) {
        self.body.push(2);
        self.body.extend_from_slice(&epoch.to_le_bytes());
    }
    /// An append of `entries` (zxid, transaction).
    pub fn append<'a>(&mut self, entries: impl ExactSizeIterator<Item = (u64, &'a [u8])>) {
        self.body.push(3);
        self.body.extend_from_slice(&(entries.len() as u32).to_le_bytes());
        for (zxid, txn) in entries {
            self.body.extend_from_slice(&zxid.to_le_bytes());
            self.body.extend_from_slice(&(txn.len() as u32).to_le_bytes());
            self.body.extend_from_slice(txn);
        }
    }
    pub fn truncate_after(&mut self, zxid: u64) {
        self.zxid(4, zxid);
    }
    pub fn leader_snapshot(&mut self, zxid: Option<u64>) {
        match zxid {
            Some(z) => self.zxid(5, z),
            None => self.body.push(6),
        }
    }
    pub fn compact_through(&mut self, zxid: u64) {
        self.zxid(7, zxid);
    }
    pub fn reset_log(&mut self, zxid: u64) {
        self.zxid(8, zxid);
    }
    pub fn voters(&mut self, voters: &[u128]) {
        self.body.push(9);
        self.body.extend_from_slice(&(voters.len() as u32).to_le_bytes());
        for v in voters {
            self.body.extend_from_slice(&v.to_be_bytes());
        }
    }
    pub fn end_of_segment(&mut self) {
        self.body.push(10);
    }
    pub fn salt(&mut self, salt: u64) {
        self.zxid(11, salt);
    }
    fn zxid(&mut self, tag: u8, zxid: u64) {
        self.body.push(tag);
        self.body.extend_from_slice(&zxid.to_le_bytes());
    }
}

fn check(seq: u64, salt: u64, offset: u64, body: &[u8]) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(&seq.to_le_bytes());
    h.update(&salt.to_le_bytes());
    h.update(&offset.to_le_bytes());
    h.update(body);
    let mut c = [0u8; 8];
    c.copy_from_slice(&h.finalize().as_bytes()[..8]);
    u64::from_le_bytes(c)
}

/// Appends to `out` the record holding `body`, at `offset` of segment `seq` with salt `salt`
/// (0 for the checkpoint at offset 0). `body` must not be empty nor over [`MAX_RECORD`] (an
/// error otherwise).
pub fn record(
    out: &mut Vec<u8>,
    seq: u64,
    salt: u64,
    offset: u64,
    body: &[u8],
) -> Result<(), String> {
    if body.is_empty() || body.len() > MAX_RECORD {
        return Err(format!("a journal record of {} bytes", body.len()));
    }
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&check(seq, salt, offset, body).to_le_bytes());
    out.extend_from_slice(body);
    Ok(())
}

/// The body of the record at `offset` of segment `seq` with salt `salt`, whose bytes from
/// `offset` on are `rest`; `None` where the segment ends (zeros, a record cut short, or bytes
/// that do not check).
pub fn read_record(rest: &[u8], seq: u64, salt: u64, offset: u64) -> Option<&[u8]> {
    let len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    if len == 0 || len > MAX_RECORD {
        return None;
    }
    let c = u64::from_le_bytes(rest.get(4..HEADER)?.try_into().ok()?);
    let body = rest.get(HEADER..HEADER.checked_add(len)?)?;
    (check(seq, salt, offset, body) == c).then_some(body)
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err(format!("a journal record ends inside {what}"));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u32(&mut self, what: &str) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4, what)?.try_into().map_err(|_| what.to_string())?))
    }
    fn u64(&mut self, what: &str) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8, what)?.try_into().map_err(|_| what.to_string())?))
    }
    fn id(&mut self, what: &str) -> Result<u128, String> {
        Ok(u128::from_be_bytes(self.take(16, what)?.try_into().map_err(|_| what.to_string())?))
    }
}

/// The operations of a record's body (checked: a record that checks but does not parse is an
/// error that names what is wrong, never a panic).
pub fn decode(body: &[u8]) -> Result<Vec<Op>, String> {
    let mut c = Cursor(body);
    let mut ops = Vec::new();
    while let Some((&tag, rest)) = c.0.split_first() {
        c.0 = rest;
        ops.push(match tag {
            1 => Op::Accepted { epoch: c.u32("an epoch")?, leader: c.id("a leader")? },
            2 => Op::Current(c.u32("an epoch")?),
            3 => {
                let n = c.u32("an entry count")? as usize;
                // Each entry takes at least 12 bytes: a count beyond what is left is damage.
                if n > c.0.len() / 12 {
                    return Err(format!(
                        "a journal append claims {n} entries in {} bytes",
                        c.0.len()
                    ));
                }
                let mut entries = Vec::with_capacity(n);
                for _ in 0..n {
                    let zxid = c.u64("a zxid")?;
                    let len = c.u32("a transaction length")? as usize;
                    entries.push((zxid, c.take(len, "a transaction")?.to_vec()));
                }
                Op::Append(entries)
            }
            4 => Op::TruncateAfter(c.u64("a zxid")?),
            5 => Op::LeaderSnapshot(Some(c.u64("a zxid")?)),
            6 => Op::LeaderSnapshot(None),
            7 => Op::CompactThrough(c.u64("a zxid")?),
            8 => Op::ResetLog(c.u64("a zxid")?),
            9 => {
                let n = c.u32("a voter count")? as usize;
                if n > c.0.len() / 16 {
                    return Err(format!(
                        "a journal voter list claims {n} ids in {} bytes",
                        c.0.len()
                    ));
                }
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(c.id("a voter")?);
                }
                Op::Voters(v)
            }
            10 => Op::EndOfSegment,
            11 => Op::Salt(c.u64("a salt")?),
            t => return Err(format!("unknown journal operation {t}")),
        });
    }
    Ok(ops)
}

/// The body holding `ops` (what [`decode`] reads back).
pub fn encode(ops: &[Op]) -> Vec<u8> {
    let mut w = Writer::default();
    for op in ops {
        match op {
            Op::Accepted { epoch, leader } => w.accepted(*epoch, *leader),
            Op::Current(e) => w.current(*e),
            Op::Append(entries) => w.append(entries.iter().map(|(z, t)| (*z, t.as_slice()))),
            Op::TruncateAfter(z) => w.truncate_after(*z),
            Op::LeaderSnapshot(z) => w.leader_snapshot(*z),
            Op::CompactThrough(z) => w.compact_through(*z),
            Op::ResetLog(z) => w.reset_log(*z),
            Op::Voters(v) => w.voters(v),
            Op::EndOfSegment => w.end_of_segment(),
            Op::Salt(salt) => w.salt(*salt),
        }
    }
    w.body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_read_back_only_where_they_were_written() {
        let ops = vec![
            Op::Accepted { epoch: 3, leader: 7 << 100 },
            Op::Current(3),
            Op::Append(vec![(1, b"a".to_vec()), (2, Vec::new()), (3, vec![9; 300])]),
            Op::TruncateAfter(2),
            Op::LeaderSnapshot(Some(5)),
            Op::LeaderSnapshot(None),
            Op::CompactThrough(1),
            Op::ResetLog(9),
            Op::Voters(vec![1, 2, u128::MAX]),
            Op::EndOfSegment,
            Op::Salt(u64::MAX - 1),
        ];
        let body = encode(&ops);
        assert_eq!(decode(&body).unwrap(), ops);
        let mut seg = Vec::new();
        record(&mut seg, 4, 0, 0, &body).unwrap();
        let second = seg.len() as u64;
        record(&mut seg, 4, 77, second, &body[..10]).unwrap();
        seg.extend_from_slice(&[0; 64]);
        assert_eq!(read_record(&seg, 4, 0, 0), Some(body.as_slice()));
        assert_eq!(read_record(&seg[second as usize..], 4, 77, second), Some(&body[..10]));
        // Another segment, salt or offset, a flipped bit, a record cut short, the zeros after.
        assert_eq!(read_record(&seg, 5, 0, 0), None);
        assert_eq!(read_record(&seg[second as usize..], 4, 78, second), None);
        assert_eq!(read_record(&seg[second as usize..], 4, 77, 0), None);
        let mut bad = seg.clone();
        bad[HEADER + 3] ^= 1;
        assert_eq!(read_record(&bad, 4, 0, 0), None);
        assert_eq!(read_record(&seg[..HEADER + body.len() - 1], 4, 0, 0), None);
        let end = second as usize + HEADER + 10;
        assert_eq!(read_record(&seg[end..], 4, 77, end as u64), None);
        assert!(record(&mut Vec::new(), 1, 0, 0, &[]).is_err());
        // Damage inside a record that checks is an error, not a panic.
        assert!(decode(&[3, 255, 255, 255, 255]).unwrap_err().contains("claims"));
        assert!(decode(&[1, 0]).unwrap_err().contains("ends inside"));
        assert!(decode(&[42]).unwrap_err().contains("unknown"));
    }
}
