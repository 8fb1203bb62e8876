//! Stored records and the keys they are stored under.
//!
//! - **data**: `token (8 bytes, big-endian) ‖ key` → [`encode_value`] of the record. Keys sorted
//!   by token make one token range one contiguous scan.
//! - **hints**: `target node (16) ‖ data key` → [`encode_value`] of the record: one hint per target
//!   and key ([`hint_key`]). Stores written before that keyed hints `target ‖ hlc (8) ‖ data key`
//!   ([`old_hint_key`]); `starlingd` rewrites them when it opens such a store.
//!
//! Writes merge by version (last write wins, ties by node id): [`incoming_wins`] decides, for the
//! memory store and the RocksDB merge operator alike. A value that does not decode loses to one
//! that does, so a corrupt record is replaced by the next write of its key.

use starling_ring::{token_of, Token};
use starling_wire::{NodeId, Record, Version};

/// On-disk value format, version 1:
/// `format (1) ‖ flags (1: bit 0 = tombstone) ‖ ts (8, BE) ‖ node (16, BE) ‖ value bytes`.
pub const FORMAT: u8 = 1;
/// Bytes before the value in the stored form.
pub const HEADER: usize = 26;

/// What storing a hint does, given the hint kept for its key and target ([`hint_put`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HintPut {
    /// Stored; no hint was kept for its key and target.
    Added,
    /// Stored in place of the older hint kept for its key and target, which counted `bytes`
    /// (as [`hint_size`] measures).
    Replaced { bytes: u64 },
    /// Not stored: the hint kept for its key and target has this version or a newer one.
    Kept,
}

/// Encodes the stored form of a record (the key is stored separately).
pub fn encode_value(version: Version, value: Option<&[u8]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + value.map_or(0, <[u8]>::len));
    encode_value_into(&mut out, version, value);
    out
}

/// [`encode_value`] into `out` (cleared first), so that a batch of writes reuses one buffer.
pub fn encode_value_into(out: &mut Vec<u8>, version: Version, value: Option<&[u8]>) {
    out.clear();
    out.push(FORMAT);
    out.push(u8::from(value.is_none()));
    out.extend_from_slice(&version.ts.to_be_bytes());
    out.extend_from_slice(&version.node.to_be_bytes());
    if let Some(v) = value {
        out.extend_from_slice(v);
    }
}

/// The version of a stored value and whether it is a tombstone, without copying the value.
pub fn decode_version(bytes: &[u8]) -> Result<(Version, bool), String> {
    let Some((head, _)) = bytes.split_first_chunk::<HEADER>() else {
        return Err(format!("{} bytes, shorter than the {HEADER}-byte header", bytes.len()));
    };
    if head[0] != FORMAT {
        return Err(format!("unknown value format {}", head[0]));
    }
    if head[1] > 1 {
        return Err(format!("unknown flags {:#x}", head[1]));
    }
    let tombstone = head[1] == 1;
    if tombstone && bytes.len() != HEADER {
        return Err("tombstone with a value".into());
    }
    let mut ts = [0; 8];
    ts.copy_from_slice(&head[2..10]);
    let mut node = [0; 16];
    node.copy_from_slice(&head[10..26]);
    Ok((Version { ts: u64::from_be_bytes(ts), node: NodeId::from_be_bytes(node) }, tombstone))
}

/// Decodes a stored value into a record for `key`.
pub fn decode_value(key: &[u8], bytes: &[u8]) -> Result<Record, String> {
    let (version, tombstone) = decode_version(bytes)?;
    let value = if tombstone { None } else { bytes.get(HEADER..).map(<[u8]>::to_vec) };
    Ok(Record { key: key.to_vec(), version, value })
}

/// Whether the incoming encoded value replaces the stored one: it has the greater version. An
/// unreadable stored value loses to a readable one; an unreadable incoming one never wins.
pub fn incoming_wins(old: &[u8], new: &[u8]) -> bool {
    match (decode_version(old), decode_version(new)) {
        (Ok((a, _)), Ok((b, _))) => b > a,
        (Err(_), _) => true,
        (_, Err(_)) => false,
    }
}

/// Last write wins over a stored value and merge operands, in the order given: what the
/// RocksDB merge operator keeps (`None`: no input at all).
pub fn lww_winner<'a>(
    existing: Option<&'a [u8]>,
    operands: impl IntoIterator<Item = &'a [u8]>,
) -> Option<&'a [u8]> {
    let mut best = existing;
    for op in operands {
        best = Some(match best {
            Some(b) if !incoming_wins(b, op) => b,
            _ => op,
        });
    }
    best
}

/// `token ‖ key`.
pub fn data_key(key: &[u8]) -> Vec<u8> {
    data_key_with(token_of(key), key)
}

/// `token ‖ key` with the token already computed.
pub fn data_key_with(token: Token, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + key.len());
    k.extend_from_slice(&token.to_be_bytes());
    k.extend_from_slice(key);
    k
}

/// The user key of a data key (`None`: shorter than a token).
pub fn user_key(data_key: &[u8]) -> Option<&[u8]> {
    data_key.get(8..)
}

/// The token prefix of a data key.
pub fn key_token(data_key: &[u8]) -> Option<Token> {
    Some(u64::from_be_bytes(*data_key.first_chunk::<8>()?))
}

/// What one hint counts toward the hint caps: its key, its value and 64 bytes for the target,
/// the version and the encoding.
pub fn hint_size(record: &Record) -> u64 {
    (record.key.len() + record.value.as_ref().map_or(0, Vec::len) + 64) as u64
}

/// [`hint_size`] of a stored hint entry, without decoding it (`None`: not a hint key).
pub fn stored_hint_size(k: &[u8], v: &[u8]) -> Option<u64> {
    let (_, key) = parse_hint_key(k)?;
    Some((key.len() + v.len().saturating_sub(HEADER) + 64) as u64)
}

/// `target ‖ data key` (`target ‖ token ‖ key`): one hint per target and key.
pub fn hint_key(target: NodeId, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(16 + 8 + key.len());
    k.extend_from_slice(&target.to_be_bytes());
    k.extend_from_slice(&data_key(key));
    k
}

/// Parses a hint key back into its target and user key (`None`: shorter than target and token).
pub fn parse_hint_key(k: &[u8]) -> Option<(NodeId, &[u8])> {
    let target = NodeId::from_be_bytes(*k.first_chunk::<16>()?);
    Some((target, k.get(24..)?))
}

/// Whether `k` is a hint key of the current format: `target ‖ token ‖ key`, the token being the
/// key's.
pub fn is_current_hint_key(k: &[u8]) -> bool {
    parse_hint_key(k).is_some_and(|(_, key)| k[16..24] == token_of(key).to_be_bytes())
}

/// The target and user key of a hint key of the format before the current one, `target ‖ hlc ‖
/// token ‖ key`; `None` if `k` is not one.
pub fn old_hint_key(k: &[u8]) -> Option<(NodeId, &[u8])> {
    let target = NodeId::from_be_bytes(*k.first_chunk::<16>()?);
    let key = k.get(32..)?;
    (k[24..32] == token_of(key).to_be_bytes()).then_some((target, key))
}

/// What storing the encoded hint `new` under hint key `k` does, given what is stored there.
pub fn hint_put(k: &[u8], stored: Option<&[u8]>, new: &[u8]) -> HintPut {
    match stored {
        None => HintPut::Added,
        Some(old) if incoming_wins(old, new) => {
            HintPut::Replaced { bytes: stored_hint_size(k, old).unwrap_or(0) }
        }
        Some(_) => HintPut::Kept,
    }
}

/// Whether the stored hint value `stored` has version `version` (a delivered hint that no newer
/// one has replaced since).
pub fn hint_is(stored: &[u8], version: Version) -> bool {
    decode_version(stored).is_ok_and(|(v, _)| v == version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_and_keys_round_trip() {
        let v = Version { ts: 7 << 16, node: NodeId(9) };
        let stored = encode_value(v, Some(b"value"));
        let r = decode_value(b"k", &stored).unwrap();
        assert_eq!((r.version, r.value.as_deref()), (v, Some(&b"value"[..])));
        let tomb = encode_value(v, None);
        assert_eq!(decode_version(&tomb), Ok((v, true)));
        assert!(decode_version(&[tomb.as_slice(), b"x"].concat()).is_err());
        assert!(decode_version(&[0xff; 3]).is_err());
        let hk = hint_key(NodeId(5), b"key");
        assert_eq!(parse_hint_key(&hk), Some((NodeId(5), &b"key"[..])));
        assert!(is_current_hint_key(&hk));
        assert_eq!(old_hint_key(&hk), None);
        assert_eq!(user_key(&data_key(b"key")), Some(&b"key"[..]));
        assert_eq!(key_token(&data_key(b"key")), Some(token_of(b"key")));
    }

    #[test]
    fn the_newest_readable_value_wins_a_merge() {
        let at = |ts| encode_value(Version { ts, node: NodeId(1) }, Some(b"v"));
        let (a, b, junk) = (at(1), at(2), vec![0xff; 3]);
        assert_eq!(lww_winner(Some(&junk), [a.as_slice(), b.as_slice()]), Some(b.as_slice()));
        assert_eq!(lww_winner(Some(&b), [junk.as_slice(), a.as_slice()]), Some(b.as_slice()));
        assert_eq!(lww_winner(None, []), None);
        assert_eq!(hint_put(b"k", Some(&a), &b), HintPut::Replaced { bytes: 0 });
        assert_eq!(hint_put(b"k", Some(&b), &a), HintPut::Kept);
    }
}
