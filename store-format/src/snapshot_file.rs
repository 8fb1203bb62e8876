//! The metadata service's snapshot files (`<data-dir>/meta/snapshots/snap-<zxid>`): the
//! snapshots a server takes itself of its znode tree.
//!
//! A file holds `STRLSNP2`, the zxid (8, BE), the snapshot's length (8, BE), blake3 of the
//! snapshot (32), then the snapshot as one zstd frame (a tree's paths and values repeat, so the
//! file is a fraction of the snapshot). Files of the earlier format, `STRLSNP1`, hold the
//! snapshot as is after the same header; they are still read.

use std::io::{Read, Write};

/// The current format's magic.
pub const MAGIC: &[u8; 8] = b"STRLSNP2";
/// The earlier format's magic: the snapshot uncompressed.
pub const MAGIC_RAW: &[u8; 8] = b"STRLSNP1";
/// Bytes before the snapshot.
pub const HEADER: usize = 56;
/// zstd level (fast: the file is written on a thread while the service runs).
const LEVEL: i32 = 1;

/// The file for the snapshot `snapshot` taken at `zxid`.
pub fn encode(zxid: u64, snapshot: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(HEADER + snapshot.len() / 4);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&zxid.to_be_bytes());
    out.extend_from_slice(&(snapshot.len() as u64).to_be_bytes());
    out.extend_from_slice(blake3::hash(snapshot).as_bytes());
    let mut z = zstd::stream::write::Encoder::new(out, LEVEL)?;
    z.write_all(snapshot)?;
    z.finish()
}

/// The zxid and snapshot a file holds, checked against its header: magic, a length of at most
/// `limit` that the body has exactly, and the hash. Refuses anything else with an error that
/// says what is wrong.
pub fn decode(mut file: Vec<u8>, limit: u64) -> Result<(u64, Vec<u8>), String> {
    if file.len() < HEADER {
        return Err("shorter than its header".into());
    }
    let compressed = match &file[..8] {
        m if m == MAGIC => true,
        m if m == MAGIC_RAW => false,
        _ => return Err("not a snapshot file (bad magic)".into()),
    };
    let word = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&file[at..at + 8]);
        u64::from_be_bytes(b)
    };
    let (zxid, len) = (word(8), word(16));
    if len > limit {
        return Err(format!("its header says {len} bytes, more than the {limit} allowed"));
    }
    let mut hash = [0u8; 32];
    hash.copy_from_slice(&file[24..HEADER]);
    let data = if compressed {
        let body = &file[HEADER..];
        // Room for what the body could plausibly hold up front; the header's length is
        // believed only once the body decompresses to it.
        let mut data = Vec::with_capacity(len.min(body.len() as u64 * 16) as usize);
        let z = zstd::stream::read::Decoder::new(body).map_err(|e| format!("bad zstd: {e}"))?;
        z.take(len.saturating_add(1))
            .read_to_end(&mut data)
            .map_err(|e| format!("cannot be decompressed: {e}"))?;
        if data.len() as u64 != len {
            return Err(format!("decompresses to {} bytes, its header says {len}", data.len()));
        }
        data
    } else {
        if file.len() as u64 != HEADER as u64 + len {
            return Err(format!("{} bytes, its header says {}", file.len(), HEADER as u64 + len));
        }
        file.drain(..HEADER);
        file
    };
    if blake3::hash(&data).as_bytes() != &hash {
        return Err("corrupt (its hash does not match)".into());
    }
    Ok((zxid, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_reads_back_smaller_and_both_formats_are_checked() {
        let snap: Vec<u8> =
            (0..5000).flat_map(|i| format!("/app/node-{i:010}=v\n").into_bytes()).collect();
        let file = encode(7, &snap).unwrap();
        assert!(file.len() * 5 < snap.len(), "{} bytes for {}", file.len(), snap.len());
        assert_eq!(decode(file.clone(), u64::MAX).unwrap(), (7, snap.clone()));
        // The limit, a damaged body, a length that is not the body's, a short file.
        assert!(decode(file.clone(), 100).unwrap_err().contains("more than"));
        let mut bad = file.clone();
        let mid = HEADER + (file.len() - HEADER) / 2;
        bad[mid] ^= 0x55;
        assert!(decode(bad, u64::MAX).is_err());
        let mut longer = file.clone();
        longer[16..24].copy_from_slice(&(snap.len() as u64 + 1).to_be_bytes());
        assert!(decode(longer, u64::MAX).unwrap_err().contains("decompresses to"));
        assert!(decode(file[..HEADER - 1].to_vec(), u64::MAX).unwrap_err().contains("shorter"));
        assert!(decode(file[..HEADER + 3].to_vec(), u64::MAX).is_err());
        // The earlier, uncompressed format.
        let mut raw = MAGIC_RAW.to_vec();
        raw.extend_from_slice(&9u64.to_be_bytes());
        raw.extend_from_slice(&(snap.len() as u64).to_be_bytes());
        raw.extend_from_slice(blake3::hash(&snap).as_bytes());
        raw.extend_from_slice(&snap);
        assert_eq!(decode(raw.clone(), u64::MAX).unwrap(), (9, snap.clone()));
        let mut flipped = raw.clone();
        flipped[HEADER + 3] ^= 1;
        assert!(decode(flipped, u64::MAX).unwrap_err().contains("hash"));
        raw.push(0);
        assert!(decode(raw, u64::MAX).unwrap_err().contains("header says"));
        let mut magic = file;
        magic[0] = b'X';
        assert!(decode(magic, u64::MAX).unwrap_err().contains("magic"));
    }
}
