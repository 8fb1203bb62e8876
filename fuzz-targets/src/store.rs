//! Stored records, data and hint keys, and the last-write-wins merge, on arbitrary stored bytes.

use starling_ring::token_of;
use starling_store_format::record::{
    data_key, decode_value, decode_version, encode_value, hint_is, hint_key, hint_put, hint_size,
    incoming_wins, is_current_hint_key, key_token, lww_winner, old_hint_key, parse_hint_key,
    stored_hint_size, user_key, HintPut,
};

use crate::input::chunks;

/// Fuzz target `stored_record`: `data` is chunks (`len (u16) ‖ bytes`): a storage key (a data key
/// or a hint key), then stored values, as RocksDB hands them back, corrupt or not.
///
/// Checks: nothing panics; a key parses as a data key or a current hint key exactly when it is
/// the key those functions build; a value that decodes encodes back to the same bytes (the
/// format has one encoding); a hint's size computed from its stored bytes equals the one
/// computed from its decoded record; the merge keeps the newest readable version whatever the
/// order of its operands, and storing a hint replaces the kept one exactly when the merge would.
pub fn stored_record(data: &[u8]) {
    let parts = chunks(data);
    let Some((&k, values)) = parts.split_first() else { return };
    check_key(k);
    let mut readable = Vec::new();
    for &v in values {
        match decode_version(v) {
            Ok((version, tombstone)) => {
                let key = user_key(k).unwrap_or(k);
                let record = decode_value(key, v).expect("decode_value agrees with decode_version");
                assert_eq!(record.version, version);
                assert_eq!(record.value.is_none(), tombstone);
                assert_eq!(encode_value(version, record.value.as_deref()), v, "not canonical");
                assert!(hint_is(v, version));
                if let Some((_, user)) = parse_hint_key(k) {
                    let hint = decode_value(user, v).expect("decodes");
                    assert_eq!(stored_hint_size(k, v), Some(hint_size(&hint)));
                }
                readable.push(version);
            }
            Err(why) => {
                assert!(!why.is_empty());
                assert!(decode_value(k, v).is_err());
            }
        }
    }
    // The merge operator, in the order given and reversed: the newest readable version wins.
    let newest = readable.iter().max().copied();
    let forward = lww_winner(None, values.iter().copied());
    let backward = lww_winner(None, values.iter().rev().copied());
    for winner in [forward, backward] {
        match (winner, newest) {
            (None, _) => assert!(values.is_empty()),
            (Some(w), Some(n)) => assert_eq!(decode_version(w).map(|(v, _)| v), Ok(n)),
            (Some(_), None) => {}
        }
    }
    // Storing a hint: replaced exactly when the incoming value wins.
    for pair in values.windows(2) {
        let (old, new) = (pair[0], pair[1]);
        match hint_put(k, Some(old), new) {
            HintPut::Replaced { bytes } => {
                assert!(incoming_wins(old, new));
                assert_eq!(bytes, stored_hint_size(k, old).unwrap_or(0));
            }
            HintPut::Kept => assert!(!incoming_wins(old, new)),
            HintPut::Added => panic!("a hint stored over another counted as added"),
        }
        assert_eq!(hint_put(k, None, new), HintPut::Added);
    }
}

/// A storage key read back: as a data key and as a hint key of either format.
fn check_key(k: &[u8]) {
    if let (Some(token), Some(user)) = (key_token(k), user_key(k)) {
        assert_eq!(data_key(user) == k, token == token_of(user));
    }
    match parse_hint_key(k) {
        Some((target, user)) => {
            assert_eq!(hint_key(target, user) == k, is_current_hint_key(k));
        }
        None => assert!(!is_current_hint_key(k) && k.len() < 24),
    }
    if let Some((target, user)) = old_hint_key(k) {
        assert_eq!(&k[..16], target.to_be_bytes());
        assert_eq!(&k[32..], user);
    }
}
