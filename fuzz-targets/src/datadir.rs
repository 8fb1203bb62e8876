//! The files of a node's data directory, read back corrupt or torn.

use starling_store_format::datadir::{
    format_addresses, format_node_id, format_reset_key, next_generation, parse_addresses,
    parse_generation, parse_node_id, parse_reset_key,
};

/// Clock readings a node may start at (Unix seconds): a clock at the epoch, a realistic one, and
/// one far in the future.
const NOWS: [u64; 3] = [0, 1_750_000_000, u64::MAX / 2];

/// Fuzz target `datadir`: `data` is the contents of a data-dir file, given to the reader of each
/// (`node-id`, `generation`, `reset-key`, `addresses.json`).
///
/// Checks: nothing panics; a refused file gets an error that says something; what is read back
/// is written again as a file that reads back the same; the generation a node takes after the
/// one in the file is greater than it, at any clock (or refused, after the last one).
pub fn datadir(data: &[u8]) {
    // `starlingd` reads the text files as UTF-8: other bytes are an error before parsing.
    if let Ok(text) = std::str::from_utf8(data) {
        match parse_node_id(text) {
            Ok(id) => assert_eq!(parse_node_id(&format_node_id(id)), Ok(id)),
            Err(e) => assert!(!e.to_string().is_empty()),
        }
        match parse_generation(text) {
            Ok(last) => {
                for now in NOWS {
                    match next_generation(last, now) {
                        Some(next) => assert!(next > last, "the generation did not grow"),
                        None => assert_eq!(last, u64::MAX, "no next generation after {last}"),
                    }
                }
            }
            Err(e) => assert!(!e.to_string().is_empty()),
        }
        if let Some(key) = parse_reset_key(text) {
            assert_eq!(parse_reset_key(&format_reset_key(&key)), Some(key));
        }
    }
    match parse_addresses(data) {
        Ok(a) => assert_eq!(parse_addresses(&format_addresses(&a)).expect("reads back"), a),
        Err(e) => assert!(!e.to_string().is_empty()),
    }
}
